//! SHA-256 of artifacts, fast: the `sha2` crate picks the CPU's SHA
//! extensions at run time, holes of sparse files are never read (their zeros
//! are hashed from memory), and writers hash what they write so no artifact
//! is read twice.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub fn sha256_bytes(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write as _;
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// The data (non-hole) extents of a file as (offset, length), by
/// SEEK_DATA/SEEK_HOLE. A file system without hole support reports one extent.
pub fn data_extents(f: &File) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom};
    let len = f.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).context("seeking to data"),
        };
        let end = seek(f, SeekFrom::Hole(start)).context("seeking to a hole")?;
        if end > start {
            out.push((start, end - start));
        }
        pos = end;
    }
    Ok(out)
}

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// Feeds `n` zero bytes to a hasher without touching the disk.
pub fn hash_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZEROS.len() as u64) as usize;
        h.update(&ZEROS[..k]);
        n -= k as u64;
    }
}

/// Hashes a (sparse) file: data extents are read, holes are hashed as zeros.
/// Returns the hasher so callers can continue it (VHD = raw + footer).
pub fn sparse_sha256(path: &Path) -> Result<(Sha256, u64)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = f.metadata()?.len();
    let extents = data_extents(&f)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    for (off, n) in extents {
        hash_zeros(&mut h, off - pos);
        let mut done = 0u64;
        while done < n {
            let k = (n - done).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..k], off + done)
                .with_context(|| format!("reading {}", path.display()))?;
            h.update(&buf[..k]);
            done += k as u64;
        }
        pos = off + n;
    }
    hash_zeros(&mut h, len - pos);
    Ok((h, len))
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let (h, _) = sparse_sha256(path)?;
    Ok(hex(&h.finalize()))
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W: Write> {
    pub inner: W,
    pub hasher: Sha256,
    pub written: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.written)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_hash_equals_plain_hash() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.img");
        let f = File::create(&p).unwrap();
        f.set_len(10 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(&[7u8; 9000], (5 << 20) + 17).unwrap();
        drop(f);
        let plain = hex(&sha256_bytes(&std::fs::read(&p).unwrap()));
        assert_eq!(file_sha256(&p).unwrap(), plain);
        let ext = data_extents(&File::open(&p).unwrap()).unwrap();
        let data: u64 = ext.iter().map(|e| e.1).sum();
        assert!(data < 1 << 20, "holes were not found: {ext:?}");
    }

    #[test]
    fn known_vector() {
        assert_eq!(
            hex(&sha256_bytes(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
