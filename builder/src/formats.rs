//! Output formats made from `disk.raw`, concurrently, each hashed while it
//! is written: fixed VHD (raw + footer, its hash continues the raw hash),
//! qcow2 (qemu-img), and, from one more read of the raw image
//! ([`crate::packed`]), the OVA (.ovf, .mf and a streamOptimized VMDK in a
//! tar written here) and the GCP tarball (GNU sparse tar, gzip'd), whose
//! data is deflated once, on every core, for both. Holes of the raw image
//! are never read.

use crate::cmd;
use crate::hash::{data_extents, hash_zeros, hex, HashWriter};
use crate::spec::Format;
use anyhow::{bail, Context, Result};
use flate2::{Compress, Compression, FlushCompress};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub file: String,
    pub format: String,
    pub size: u64,
    pub sha256: String,
}

/// What the formats need to know about the image.
pub struct Meta<'a> {
    pub image: &'a str,
    pub title: &'a str,
    pub epoch: u64,
    pub vhd_uuid: [u8; 16],
    /// Declared in the OVF, so vSphere turns UEFI Secure Boot on.
    pub secure_boot: bool,
}

/// Makes every requested format next to `raw` in `dir`, concurrently.
/// `disk.raw` itself is always hashed (the VHD hash continues it).
pub fn produce_all(
    dir: &Path,
    formats: &[Format],
    meta: &Meta,
    progress: &crate::progress::Progress,
) -> Result<Vec<Artifact>> {
    let raw = dir.join(Format::Raw.file_name());
    let want = |f: Format| formats.contains(&f);
    let done: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mark = |what: &str| {
        if let Ok(mut d) = done.lock() {
            d.push(what.to_string());
            progress.status(&format!("done: {}", d.join(", ")));
        }
    };
    let results: Vec<Result<Vec<Artifact>>> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        handles.push(s.spawn(|| -> Result<Vec<Artifact>> {
            let (h, len) = crate::hash::sparse_sha256(&raw)?;
            let mut out = vec![Artifact {
                file: Format::Raw.file_name().into(),
                format: "raw".into(),
                size: len,
                sha256: hex(&h.clone().finalize()),
            }];
            mark("raw");
            if want(Format::Vhd) {
                out.push(write_vhd(
                    &raw,
                    &dir.join(Format::Vhd.file_name()),
                    h,
                    len,
                    meta,
                )?);
                mark("vhd");
            }
            Ok(out)
        }));
        if want(Format::Gcp) || want(Format::Ova) {
            handles.push(s.spawn(|| -> Result<Vec<Artifact>> {
                let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
                let (a, _) = write_ova_gcp(
                    &raw,
                    dir,
                    meta,
                    want(Format::Ova),
                    want(Format::Gcp),
                    threads,
                    &mark,
                )?;
                Ok(a)
            }));
        }
        if want(Format::Qcow2) {
            handles.push(s.spawn(|| -> Result<Vec<Artifact>> {
                let out = dir.join(Format::Qcow2.file_name());
                cmd::run(
                    Command::new("qemu-img")
                        .args([
                            "convert",
                            "-q",
                            "-f",
                            "raw",
                            "-O",
                            "qcow2",
                            "-o",
                            "cluster_size=65536",
                        ])
                        .arg(&raw)
                        .arg(&out),
                )?;
                let a = artifact_of(&out, Format::Qcow2)?;
                mark("qcow2");
                Ok(vec![a])
            }));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| bail!("a format thread panicked"))
            })
            .collect()
    });
    let mut all = Vec::new();
    for r in results {
        all.extend(r?);
    }
    let order = |a: &Artifact| Format::ALL.iter().position(|f| f.name() == a.format);
    all.sort_by_key(order);
    if !want(Format::Raw) {
        all.retain(|a| a.format != "raw");
    }
    Ok(all)
}

fn artifact_of(path: &Path, f: Format) -> Result<Artifact> {
    let (h, len) = crate::hash::sparse_sha256(path)?;
    Ok(Artifact {
        file: f.file_name().into(),
        format: f.name().into(),
        size: len,
        sha256: hex(&h.finalize()),
    })
}

// ---------------------------------------------------------------- VHD

/// Cylinders, heads, sectors per track for a VHD footer (the algorithm of
/// the VHD specification, appendix "CHS calculation").
pub fn vhd_chs(size: u64) -> (u16, u8, u8) {
    let mut total = size / 512;
    if total > 65535 * 16 * 255 {
        total = 65535 * 16 * 255;
    }
    let (spt, heads, cth);
    if total >= 65535 * 16 * 63 {
        spt = 255u64;
        heads = 16u64;
        cth = total / spt;
    } else {
        let mut s = 17u64;
        let mut c = total / s;
        let mut h = c.div_ceil(1024).max(4);
        if c >= h * 1024 || h > 16 {
            s = 31;
            h = 16;
            c = total / s;
        }
        if c >= h * 1024 {
            s = 63;
            h = 16;
            c = total / s;
        }
        spt = s;
        heads = h;
        cth = c;
    }
    ((cth / heads) as u16, heads as u8, spt as u8)
}

/// The 512-byte footer of a fixed VHD of `size` bytes.
pub fn vhd_footer(size: u64, epoch: u64, uuid: [u8; 16]) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes());
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes());
    let vhd_epoch = 946_684_800u64;
    f[24..28].copy_from_slice(&(epoch.saturating_sub(vhd_epoch) as u32).to_be_bytes());
    f[28..32].copy_from_slice(b"bptc");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    let (c, h, s) = vhd_chs(size);
    f[56..58].copy_from_slice(&c.to_be_bytes());
    f[58] = h;
    f[59] = s;
    f[60..64].copy_from_slice(&2u32.to_be_bytes());
    f[68..84].copy_from_slice(&uuid);
    let sum: u32 = f.iter().map(|&b| b as u32).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

/// Copies the data extents of `raw` (holes stay holes) and appends the
/// footer. The hash continues the raw image's hasher: no second read.
fn write_vhd(raw: &Path, out: &Path, raw_hash: Sha256, len: u64, meta: &Meta) -> Result<Artifact> {
    if len & (crate::spec::MIB - 1) != 0 {
        bail!("a fixed VHD needs a size aligned to 1 MiB, disk.raw has {len} bytes");
    }
    let src = File::open(raw)?;
    let dst = File::create_new(out).with_context(|| format!("creating {}", out.display()))?;
    dst.set_len(len)?;
    for (off, n) in data_extents(&src)? {
        let (mut o_in, mut o_out) = (off, off);
        let mut left = n as usize;
        while left > 0 {
            let k =
                rustix::fs::copy_file_range(&src, Some(&mut o_in), &dst, Some(&mut o_out), left)
                    .context("copying disk.raw into disk.vhd")?;
            if k == 0 {
                bail!("disk.raw shrank while copying");
            }
            left -= k;
        }
    }
    let footer = vhd_footer(len, meta.epoch, meta.vhd_uuid);
    dst.write_all_at(&footer, len)?;
    let mut h = raw_hash;
    h.update(footer);
    Ok(Artifact {
        file: Format::Vhd.file_name().into(),
        format: "vhd".into(),
        size: len + 512,
        sha256: hex(&h.finalize()),
    })
}

// ---------------------------------------------------------------- tar

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if v < 1u64 << (3 * digits) {
        let s = format!("{v:0digits$o}");
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
    } else {
        // GNU base-256 for values that do not fit the octal field.
        field.fill(0);
        field[0] = 0x80;
        let b = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&b);
    }
}

fn tar_checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// A ustar header for a plain file.
pub fn ustar_header(name: &str, size: u64, mtime: u64) -> Result<[u8; 512]> {
    tar_header(name, size, mtime, 0o644, b'0')
}

/// A ustar header owned by root: `kind` b'0' for a file, b'5' for a directory.
pub fn tar_header(name: &str, size: u64, mtime: u64, mode: u32, kind: u8) -> Result<[u8; 512]> {
    if name.len() > 100 {
        bail!("tar member name too long: {name}");
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    tar_checksum(&mut h);
    Ok(h)
}

/// The headers of a GNU (oldgnu) sparse member: the main header with up to
/// four map entries and as many extension blocks (21 entries each) as needed.
pub fn gnu_sparse_headers(name: &str, real_size: u64, map: &[(u64, u64)], mtime: u64) -> Vec<u8> {
    let stored: u64 = map.iter().map(|e| e.1).sum();
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], stored);
    octal(&mut h[136..148], mtime);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    for (i, (off, n)) in map.iter().take(4).enumerate() {
        let b = 386 + i * 24;
        octal(&mut h[b..b + 12], *off);
        octal(&mut h[b + 12..b + 24], *n);
    }
    h[482] = u8::from(map.len() > 4);
    octal(&mut h[483..495], real_size);
    tar_checksum(&mut h);
    let mut out = h.to_vec();
    let rest: Vec<_> = map.iter().skip(4).collect();
    let chunks: Vec<_> = rest.chunks(21).collect();
    for (ci, chunk) in chunks.iter().enumerate() {
        let mut x = [0u8; 512];
        for (i, (off, n)) in chunk.iter().enumerate() {
            octal(&mut x[i * 24..i * 24 + 12], *off);
            octal(&mut x[i * 24 + 12..i * 24 + 24], *n);
        }
        x[504] = u8::from(ci + 1 < chunks.len());
        out.extend_from_slice(&x);
    }
    out
}

pub(crate) fn pad512(n: u64) -> usize {
    ((512 - n % 512) % 512) as usize
}

// ---------------------------------------------------------------- GCP

/// `gcp.tar.gz` on its own: `disk.raw` alone in a GNU sparse tar of its
/// data extents, gzip'd in parallel. The builder makes it with the OVA in
/// one pass ([`write_ova_gcp`]); this is the reference it is measured and
/// checked against (examples/formats_bench.rs, tests).
pub fn write_gcp(raw: &Path, out: &Path, epoch: u64, threads: usize) -> Result<Artifact> {
    let src = File::open(raw)?;
    let len = src.metadata()?.len();
    if len % crate::spec::GIB != 0 {
        bail!("GCP needs a disk size of whole GiB, disk.raw has {len} bytes");
    }
    let mut map = data_extents(&src)?;
    if map.iter().any(|(o, n)| o % 512 != 0 || n % 512 != 0) {
        bail!("disk.raw data extents are not 512-byte aligned");
    }
    // GNU tar ends the map of a file that ends in a hole with an empty chunk.
    if map.last().map(|(o, n)| o + n) != Some(len) {
        map.push((len, 0));
    }
    let file = File::create_new(out).with_context(|| format!("creating {}", out.display()))?;
    let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
    let map_for_reader = map.clone();
    parallel_gzip(
        move |tx: &dyn Fn(Vec<u8>) -> bool| -> Result<()> {
            const BLOCK: usize = 1 << 20;
            let mut buf = gnu_sparse_headers("disk.raw", len, &map_for_reader, epoch);
            let mut stored = 0u64;
            for &(off, n) in &map_for_reader {
                let mut done = 0u64;
                while done < n {
                    let room = BLOCK - buf.len().min(BLOCK - 1);
                    let k = (n - done).min(room as u64) as usize;
                    let at = buf.len();
                    buf.resize(at + k, 0);
                    src.read_exact_at(&mut buf[at..], off + done)?;
                    done += k as u64;
                    if buf.len() >= BLOCK
                        && !tx(std::mem::replace(&mut buf, Vec::with_capacity(BLOCK)))
                    {
                        return Ok(());
                    }
                }
                stored += n;
            }
            buf.resize(buf.len() + pad512(stored) + 1024, 0);
            // GNU tar writes whole records of 20 blocks.
            let total = 512 * (1 + (map_for_reader.len().saturating_sub(4)).div_ceil(21)) as u64
                + stored
                + pad512(stored) as u64
                + 1024;
            let rec = 10240u64;
            buf.resize(buf.len() + ((rec - total % rec) % rec) as usize, 0);
            tx(buf);
            Ok(())
        },
        &mut w,
        threads,
        Compression::new(6),
        epoch,
    )?;
    let (inner, sha, size) = w.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(Artifact {
        file: Format::Gcp.file_name().into(),
        format: "gcp".into(),
        size,
        sha256: sha,
    })
}

type Job = (usize, Vec<u8>);

/// Gzip (one member, like pigz) on `threads` workers: each block is deflated
/// on its own and ends with a sync flush, so the blocks concatenate into one
/// deflate stream; an empty final block and the combined CRC close it.
pub fn parallel_gzip<W: Write>(
    produce: impl FnOnce(&dyn Fn(Vec<u8>) -> bool) -> Result<()> + Send,
    out: &mut W,
    threads: usize,
    level: Compression,
    mtime: u64,
) -> Result<()> {
    let mut header = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    header[4..8].copy_from_slice(&(mtime as u32).to_le_bytes());
    out.write_all(&header)?;
    let threads = threads.max(1);
    let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
    let job_rx: Arc<Mutex<Receiver<Job>>> = Arc::new(Mutex::new(job_rx));
    let (res_tx, res_rx) = sync_channel::<(usize, Vec<u8>, crc32fast::Hasher, usize)>(threads * 2);
    std::thread::scope(|s| -> Result<()> {
        let producer = s.spawn(move || {
            let next = std::cell::Cell::new(0usize);
            let send = |b: Vec<u8>| {
                let i = next.get();
                next.set(i + 1);
                job_tx.send((i, b)).is_ok()
            };
            produce(&send)
        });
        for _ in 0..threads {
            let rx = job_rx.clone();
            let tx = res_tx.clone();
            s.spawn(move || loop {
                let job = match rx.lock() {
                    Ok(r) => r.recv(),
                    Err(_) => return,
                };
                let Ok((i, block)) = job else { return };
                let mut crc = crc32fast::Hasher::new();
                crc.update(&block);
                let z = deflate_block(&block, level);
                if tx.send((i, z, crc, block.len())).is_err() {
                    return;
                }
            });
        }
        drop(res_tx);
        let mut pending = BTreeMap::new();
        let mut next = 0usize;
        let mut crc = crc32fast::Hasher::new();
        let mut total: u64 = 0;
        for (i, z, c, n) in res_rx.iter() {
            pending.insert(i, (z, c, n));
            while let Some((z, c, n)) = pending.remove(&next) {
                out.write_all(&z)?;
                crc.combine(&c);
                total += n as u64;
                next += 1;
            }
        }
        producer
            .join()
            .unwrap_or_else(|_| bail!("the tar writer panicked"))?;
        if !pending.is_empty() {
            bail!("compressed blocks went missing");
        }
        // Empty final fixed-Huffman block, then CRC-32 and size mod 2^32.
        out.write_all(&[0x03, 0x00])?;
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.write_all(&(total as u32).to_le_bytes())?;
        out.flush()?;
        Ok(())
    })
}

pub(crate) fn deflate_block(input: &[u8], level: Compression) -> Vec<u8> {
    let mut c = Compress::new(level, false);
    let mut out = Vec::with_capacity(input.len() / 2 + 4096);
    loop {
        if out.capacity() - out.len() < 4096 {
            out.reserve(out.capacity().max(64 * 1024));
        }
        let consumed = c.total_in() as usize;
        c.compress_vec(&input[consumed..], &mut out, FlushCompress::Sync)
            .expect("deflate of an in-memory buffer");
        // A sync flush is complete once deflate returns with output room left.
        if c.total_in() as usize == input.len() && out.len() < out.capacity() {
            return out;
        }
    }
}

// ---------------------------------------------------------------- OVA

/// The OVF descriptor: one VM, UEFI firmware (with Secure Boot when the
/// image supports it, in the `bootOptions` key vSphere reads), one disk.
pub fn ovf_descriptor(meta: &Meta, vmdk_name: &str, vmdk_size: u64, capacity: u64) -> String {
    let name = meta.image;
    let title = meta.title;
    let secure_boot = meta.secure_boot;
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="bootpatch-builder" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{vmdk_name}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A Kubernetes node image</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian10_64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>{title}</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="{secure_boot}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

/// The OVA and/or the GCP tarball from one read of `raw`, each piece of it
/// deflated once by `threads` workers ([`crate::packed`]): the pass writes
/// the streamOptimized VMDK to a temporary file in `dir`, then the OVA (whose
/// .mf, before the VMDK, holds the VMDK's SHA-256) and the GCP tarball (made
/// of the VMDK's compressed grains) are written from it, concurrently, and
/// it is removed. `done` is told "gcp" and "ova" as each is finished.
pub fn write_ova_gcp(
    raw: &Path,
    dir: &Path,
    meta: &Meta,
    ova: bool,
    gcp: bool,
    threads: usize,
    done: &(dyn Fn(&str) + Sync),
) -> Result<(Vec<Artifact>, crate::packed::Pass)> {
    use crate::packed::{self, VmdkTarget};
    let vmdk_name = format!("{}-disk1.vmdk", meta.image);
    let tmp = dir.join(format!(".{vmdk_name}.tmp"));
    let gcp_out = dir.join(Format::Gcp.file_name());
    let _ = fs::remove_file(&tmp);
    // A content ID that is the same for the same image and epoch.
    let cid = {
        let h = crate::hash::sha256_bytes(format!("vmdk {} {}", meta.image, meta.epoch).as_bytes());
        u32::from_le_bytes([h[0], h[1], h[2], h[3]])
    };
    let level = Compression::new(6);
    let target = VmdkTarget {
        path: &tmp,
        extent_name: &vmdk_name,
        cid,
    };
    let pass = packed::pass(raw, &target, threads, level)?;
    let (g, o) = std::thread::scope(|s| {
        let g = gcp.then(|| {
            s.spawn(|| {
                let r = packed::write_gcp(&pass, &tmp, &gcp_out, meta.epoch, level);
                if r.is_ok() {
                    done("gcp");
                }
                r
            })
        });
        let o = ova.then(|| {
            let r = assemble_ova(
                dir,
                meta,
                &tmp,
                &vmdk_name,
                &pass.vmdk,
                pass.stats.disk_size,
            );
            if r.is_ok() {
                done("ova");
            }
            r
        });
        let g = g.map(|h| {
            h.join()
                .unwrap_or_else(|_| bail!("the GCP tarball writer panicked"))
        });
        (g, o)
    });
    let _ = fs::remove_file(&tmp);
    let mut out = Vec::new();
    if let Some(g) = g {
        let g = g?;
        out.push(Artifact {
            file: Format::Gcp.file_name().into(),
            format: "gcp".into(),
            size: g.size,
            sha256: g.sha256,
        });
    }
    if let Some(o) = o {
        out.push(o?);
    }
    Ok((out, pass))
}

/// `disk.ova`: the .ovf first, then the .mf (SHA-256 lines), then the
/// streamOptimized VMDK at `vmdk` (whose size and SHA-256 are known), in a
/// ustar archive. The VMDK is copied in the kernel (`copy_file_range`) while
/// another thread hashes the archive from the page cache: the OVA's SHA-256
/// needs the VMDK's bytes after the .mf, which needs the VMDK's hash. The OVA
/// is removed if anything fails.
pub fn assemble_ova(
    dir: &Path,
    meta: &Meta,
    vmdk: &Path,
    vmdk_name: &str,
    written: &crate::packed::Written,
    capacity: u64,
) -> Result<Artifact> {
    let out = dir.join(Format::Ova.file_name());
    let file = File::create_new(&out).with_context(|| format!("creating {}", out.display()))?;
    let r = (|| -> Result<Artifact> {
        let vmdk_size = written.size;
        let ovf_name = format!("{}.ovf", meta.image);
        let mf_name = format!("{}.mf", meta.image);
        let ovf = ovf_descriptor(meta, vmdk_name, vmdk_size, capacity);
        let ovf_sha = hex(&crate::hash::sha256_bytes(ovf.as_bytes()));
        let mf = format!(
            "SHA256({ovf_name})= {ovf_sha}\nSHA256({vmdk_name})= {}\n",
            written.sha256
        );
        let mut head = Vec::new();
        for (name, body) in [(&ovf_name, ovf.as_bytes()), (&mf_name, mf.as_bytes())] {
            head.extend_from_slice(&ustar_header(name, body.len() as u64, meta.epoch)?);
            head.extend_from_slice(body);
            head.resize(head.len() + pad512(body.len() as u64), 0);
        }
        head.extend_from_slice(&ustar_header(vmdk_name, vmdk_size, meta.epoch)?);
        let tail = vec![0u8; pad512(vmdk_size) + 1024];
        let mut src = File::open(vmdk).with_context(|| format!("opening {}", vmdk.display()))?;
        if src.metadata()?.len() != vmdk_size {
            bail!("{} is not the size it was written with", vmdk.display());
        }
        let mut dst = &file;
        dst.write_all(&head)?;
        let (copied, sha) = std::thread::scope(|s| {
            let hasher = s.spawn(|| -> Result<String> {
                let mut h = Sha256::new();
                h.update(&head);
                let f = File::open(vmdk)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut at = 0u64;
                while at < vmdk_size {
                    let k = (vmdk_size - at).min(buf.len() as u64) as usize;
                    f.read_exact_at(&mut buf[..k], at)?;
                    h.update(&buf[..k]);
                    at += k as u64;
                }
                h.update(&tail);
                Ok(hex(&h.finalize()))
            });
            let copied = std::io::copy(&mut src, &mut dst);
            let sha = hasher
                .join()
                .unwrap_or_else(|_| bail!("the OVA hasher panicked"));
            (copied, sha)
        });
        let copied = copied.with_context(|| format!("copying the VMDK into {}", out.display()))?;
        let sha = sha.with_context(|| format!("hashing {}", vmdk.display()))?;
        if copied != vmdk_size {
            bail!("copied {copied} of {vmdk_size} bytes of the VMDK");
        }
        dst.write_all(&tail)?;
        file.sync_all()?;
        Ok(Artifact {
            file: Format::Ova.file_name().into(),
            format: "ova".into(),
            size: head.len() as u64 + vmdk_size + tail.len() as u64,
            sha256: sha,
        })
    })();
    if r.is_err() {
        let _ = fs::remove_file(&out);
    }
    r.with_context(|| format!("writing {}", out.display()))
}

/// Hashes `n` zero bytes onto a hasher (re-exported for tests).
pub fn zeros_into(h: &mut Sha256, n: u64) {
    hash_zeros(h, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn chs_examples() {
        // 3 GiB: 63 sectors per track, 16 heads (VHD spec algorithm).
        assert_eq!(vhd_chs(3 << 30), (6241, 16, 63));
        // Small disks use 17 sectors per track and at least 4 heads.
        assert_eq!(vhd_chs(10 << 20), (301, 4, 17));
        // Capped at 65535 x 16 x 255.
        assert_eq!(vhd_chs(4 << 40), (65535, 16, 255));
    }

    #[test]
    fn footer_checksum() {
        let f = vhd_footer(3 << 30, 1_700_000_000, [1; 16]);
        let stored = u32::from_be_bytes(f[64..68].try_into().unwrap());
        let mut z = f;
        z[64..68].fill(0);
        let sum: u32 = z.iter().map(|&b| b as u32).sum();
        assert_eq!(stored, !sum);
        assert_eq!(&f[0..8], b"conectix");
        assert_eq!(u64::from_be_bytes(f[48..56].try_into().unwrap()), 3 << 30);
    }

    #[test]
    fn parallel_gzip_round_trips() {
        let data: Vec<u8> = (0..5_000_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        let mut out = Vec::new();
        let d2 = data.clone();
        parallel_gzip(
            move |tx: &dyn Fn(Vec<u8>) -> bool| {
                for c in d2.chunks(1 << 20) {
                    tx(c.to_vec());
                }
                Ok(())
            },
            &mut out,
            2,
            Compression::new(6),
            0,
        )
        .unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // One member, and gzip itself agrees (CRC and size trailer).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gz");
        fs::write(&p, &out).unwrap();
        cmd::run(Command::new("gzip").arg("-t").arg(&p)).unwrap();
    }

    #[test]
    fn sparse_tar_extracts_with_gnu_tar() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(1 << 30).unwrap();
        for i in 0..30u64 {
            f.write_all_at(&[i as u8 + 1; 4096], i * (30 << 20))
                .unwrap();
        }
        drop(f);
        let out = dir.path().join("gcp.tar.gz");
        let a = write_gcp(&raw, &out, 1_700_000_000, 2).unwrap();
        assert_eq!(a.sha256, crate::hash::file_sha256(&out).unwrap());
        let list = cmd::run(Command::new("tar").arg("-tvzf").arg(&out)).unwrap();
        assert!(
            list.contains("disk.raw") && list.contains("1073741824"),
            "{list}"
        );
        let x = dir.path().join("x");
        fs::create_dir(&x).unwrap();
        cmd::run(Command::new("tar").arg("-xSzf").arg(&out).arg("-C").arg(&x)).unwrap();
        assert_eq!(
            crate::hash::file_sha256(&x.join("disk.raw")).unwrap(),
            crate::hash::file_sha256(&raw).unwrap()
        );
    }
}
