//! The two compressed formats from one read of `disk.raw`: the
//! streamOptimized VMDK (inside the OVA) and the GCP `disk.tar.gz`.
//!
//! Both are deflate of the same disk data, so each piece is compressed once.
//! The raw image is read in 64 KiB grains (the VMDK grain size), over its
//! data extents only, and each grain that is not all zeros is deflated, on
//! a pool of workers, as a zlib stream whose deflate part ends in a sync
//! flush:
//!
//! ```text
//! 78 9c | deflate blocks ... sync flush | final empty block | adler32
//!       '--------- shared with the gzip -'
//! ```
//!
//! [`pass`] writes the VMDK: the whole zlib stream is a compressed grain.
//! It keeps, per grain, where that sync-flushed middle lies in the VMDK and
//! the CRC-32 of all grains, combined in order. The middles are byte-aligned
//! and end no stream, so [`write_gcp`] then concatenates them, after the
//! deflated tar headers, into the deflate stream of the gzip (as
//! `formats::parallel_gzip` does with its blocks): the tar's GNU sparse map
//! is the list of non-zero grains, so the tarball depends on the disk's
//! content only, not on how the file system happens to report its extents.
//!
//! VMDK layout (VMware "Virtual Disk Format 5.0", stream-optimized sparse
//! extent): header (gdOffset = GD_AT_END), embedded descriptor, grains from
//! sector 128, each a grain marker + zlib stream padded to a sector; after
//! the grains of each grain table its GT marker and table; then the grain
//! directory with its marker, the footer marker, the footer (the header with
//! the real gdOffset) and the end-of-stream marker.

use crate::formats::{deflate_block, gnu_sparse_headers, pad512};
use crate::hash::{data_extents, HashWriter};
use anyhow::{bail, Context, Result};
use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Bytes per grain (VMDK grainSize 128 sectors).
pub const GRAIN: u64 = 64 * 1024;
const SECTOR: u64 = 512;
const GRAIN_SECTORS: u64 = GRAIN / SECTOR;
const GTES_PER_GT: u64 = 512;
/// Sectors before the first grain: header, descriptor, padding.
const OVERHEAD_SECTORS: u64 = 128;
const DESCRIPTOR_SECTORS: u64 = 20;
const GD_AT_END: u64 = u64::MAX;
/// Grains per job handed to a worker (1 MiB of disk).
const BATCH: u64 = 16;
/// Bytes of a grain marker before the zlib stream: lba u64, size u32.
const GRAIN_MARKER: u64 = 12;
/// Bytes of the zlib header before the deflate data.
const ZLIB_HEADER: u64 = 2;

const MARKER_EOS: u32 = 0;
const MARKER_GT: u32 = 1;
const MARKER_GD: u32 = 2;
const MARKER_FOOTER: u32 = 3;

/// The streamOptimized VMDK the pass writes.
pub struct VmdkTarget<'a> {
    pub path: &'a Path,
    /// The file name in the descriptor's extent line (its name in the OVA).
    pub extent_name: &'a str,
    /// The descriptor's content ID.
    pub cid: u32,
}

/// A written file: its size and SHA-256, hashed while it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
}

/// What the pass saw of the disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub disk_size: u64,
    /// Grains touched by a data extent (read).
    pub grains: u64,
    /// Of those, the ones that were all zeros (in neither output).
    pub zero_grains: u64,
    /// Bytes read from the disk.
    pub read_bytes: u64,
    /// Bytes of the non-zero grains (the tar's data).
    pub data_bytes: u64,
}

/// The result of [`pass`]: the VMDK, and what [`write_gcp`] needs of it.
#[derive(Debug)]
pub struct Pass {
    pub vmdk: Written,
    pub stats: Stats,
    /// Runs of non-zero grains: (first grain, count).
    runs: Vec<(u64, u64)>,
    /// Per non-zero grain, in disk order: the VMDK sector of its grain
    /// marker and the length of its sync-flushed deflate.
    grains: Vec<(u32, u32)>,
    /// CRC-32 of the non-zero grains, in order.
    crc: crc32fast::Hasher,
}

/// Reads `raw` once and writes its streamOptimized VMDK, deflating with
/// `threads` workers. The VMDK is not synced (it is an intermediate file).
/// On error the VMDK is removed.
pub fn pass(raw: &Path, t: &VmdkTarget, threads: usize, level: Compression) -> Result<Pass> {
    let f = File::create_new(t.path).with_context(|| format!("creating {}", t.path.display()))?;
    let r = pass_into(raw, f, t, threads, level);
    if r.is_err() {
        let _ = fs::remove_file(t.path);
    }
    r.with_context(|| format!("writing {}", t.path.display()))
}

fn pass_into(
    raw: &Path,
    out: File,
    t: &VmdkTarget,
    threads: usize,
    level: Compression,
) -> Result<Pass> {
    let src = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let len = src.metadata()?.len();
    if !len.is_multiple_of(SECTOR) {
        bail!(
            "{}: size {len} is not a whole number of 512-byte sectors",
            raw.display()
        );
    }
    let extents =
        data_extents(&src).with_context(|| format!("listing data of {}", raw.display()))?;
    let touched = grain_runs(&extents, len);
    let batches: Vec<(u64, u64)> = touched
        .iter()
        .flat_map(|&(first, n)| {
            (0..n.div_ceil(BATCH)).map(move |i| (first + i * BATCH, (n - i * BATCH).min(BATCH)))
        })
        .collect();
    let mut sink = Sink {
        vmdk: VmdkStream::begin(
            HashWriter::new(BufWriter::with_capacity(1 << 20, out)),
            t,
            len,
        )?,
        runs: Vec::new(),
        grains: Vec::new(),
        crc: crc32fast::Hasher::new(),
        stats: Stats {
            disk_size: len,
            grains: touched.iter().map(|r| r.1).sum(),
            read_bytes: extents.iter().map(|e| e.1).sum(),
            ..Stats::default()
        },
    };

    let threads = threads.max(1);
    std::thread::scope(|s| -> Result<()> {
        let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (res_tx, res_rx) = sync_channel::<Packed>(threads * 2);
        let (free_tx, free_rx) = sync_channel::<Vec<u8>>(threads * 4);
        let (src, extents, batches) = (&src, &extents, &batches);
        let reader =
            s.spawn(move || read_batches(src, raw, extents, batches, len, job_tx, free_rx));
        let mut workers = Vec::new();
        for _ in 0..threads {
            let (rx, tx, free) = (job_rx.clone(), res_tx.clone(), free_tx.clone());
            workers.push(s.spawn(move || compress_jobs(rx, tx, free, level)));
        }
        drop((job_rx, res_tx, free_tx));
        // The receiver goes with `consume`: if writing fails, the workers'
        // sends fail, they stop, and so does the reader.
        let written = consume(res_rx, batches.len(), &mut sink);
        let read = reader
            .join()
            .unwrap_or_else(|_| bail!("the reader of {} panicked", raw.display()));
        let mut panicked = false;
        for w in workers {
            panicked |= w.join().is_err();
        }
        read?;
        if panicked {
            bail!("a compression worker panicked");
        }
        written
    })?;
    let Sink {
        vmdk,
        runs,
        grains,
        crc,
        stats,
    } = sink;
    Ok(Pass {
        vmdk: vmdk.finish()?,
        stats,
        runs,
        grains,
        crc,
    })
}

/// Runs of grains touched by the data extents: (first grain, count), merged
/// when adjacent.
pub fn grain_runs(extents: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &(off, n) in extents {
        let end = (off + n).min(len);
        if end <= off {
            continue;
        }
        let (a, b) = (off / GRAIN, end.div_ceil(GRAIN));
        match runs.last_mut() {
            Some((s, c)) if *s + *c >= a => *c = (*c).max(b - *s),
            _ => runs.push((a, b - a)),
        }
    }
    runs
}

/// The GNU sparse map of runs of grains, in bytes, closed by an empty entry
/// at the end when the disk ends in a hole (as GNU tar does).
pub fn sparse_map(runs: &[(u64, u64)], len: u64) -> Vec<(u64, u64)> {
    let mut map: Vec<(u64, u64)> = runs
        .iter()
        .map(|&(a, n)| (a * GRAIN, ((a + n) * GRAIN).min(len) - a * GRAIN))
        .collect();
    if map.last().map(|&(o, n)| o + n) != Some(len) {
        map.push((len, 0));
    }
    map
}

// ---------------------------------------------------------------- pipeline

/// Consecutive grains of the disk, `first` on.
struct Job {
    seq: usize,
    first: u64,
    data: Vec<u8>,
}

/// One grain's result; offsets into `Packed::out`.
enum Grain {
    Zero,
    Data {
        len: usize,
        /// The zlib stream (the VMDK grain).
        zlib: (usize, usize),
        /// Length of the sync-flushed deflate after the zlib header.
        deflate: usize,
        crc: crc32fast::Hasher,
    },
}

struct Packed {
    seq: usize,
    first: u64,
    grains: Vec<Grain>,
    out: Vec<u8>,
}

fn read_batches(
    src: &File,
    raw: &Path,
    extents: &[(u64, u64)],
    batches: &[(u64, u64)],
    len: u64,
    tx: SyncSender<Job>,
    free: Receiver<Vec<u8>>,
) -> Result<()> {
    let mut cursor = 0usize;
    for (seq, &(first, n)) in batches.iter().enumerate() {
        let start = first * GRAIN;
        let end = ((first + n) * GRAIN).min(len);
        let mut data = free.try_recv().unwrap_or_default();
        data.clear();
        data.resize((end - start) as usize, 0);
        // Only the data extents are read; the rest of the grains are holes.
        while cursor < extents.len() && extents[cursor].0 + extents[cursor].1 <= start {
            cursor += 1;
        }
        let mut i = cursor;
        while i < extents.len() && extents[i].0 < end {
            let (off, k) = extents[i];
            let (a, b) = (off.max(start), (off + k).min(end));
            if a < b {
                src.read_exact_at(&mut data[(a - start) as usize..(b - start) as usize], a)
                    .with_context(|| format!("reading {} at {a}", raw.display()))?;
            }
            i += 1;
        }
        if tx.send(Job { seq, first, data }).is_err() {
            // The writer stopped; its error is the one reported.
            return Ok(());
        }
    }
    Ok(())
}

fn compress_jobs(
    rx: Arc<Mutex<Receiver<Job>>>,
    tx: SyncSender<Packed>,
    free: SyncSender<Vec<u8>>,
    level: Compression,
) {
    let mut c = Compress::new(level, true);
    loop {
        let job = match rx.lock() {
            Ok(r) => r.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let mut out = Vec::with_capacity(job.data.len() + 1024);
        let mut grains = Vec::with_capacity(BATCH as usize);
        for g in job.data.chunks(GRAIN as usize) {
            if is_zero(g) {
                grains.push(Grain::Zero);
                continue;
            }
            let start = out.len();
            let sync_end = zlib_grain(&mut c, g, &mut out);
            let mut crc = crc32fast::Hasher::new();
            crc.update(g);
            grains.push(Grain::Data {
                len: g.len(),
                zlib: (start, out.len()),
                deflate: sync_end - start - ZLIB_HEADER as usize,
                crc,
            });
        }
        let _ = free.try_send(job.data);
        let packed = Packed {
            seq: job.seq,
            first: job.first,
            grains,
            out,
        };
        if tx.send(packed).is_err() {
            return;
        }
    }
}

fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        && chunks.remainder().iter().all(|&x| x == 0)
}

/// Appends `input` to `out` as one zlib stream (level of `c`) whose deflate
/// data ends in a sync flush before the final empty block; returns where
/// the sync-flushed deflate ends.
fn zlib_grain(c: &mut Compress, input: &[u8], out: &mut Vec<u8>) -> usize {
    c.reset();
    let start = out.len();
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(input.len() + 1024);
        }
        let done = c.total_in() as usize;
        c.compress_vec(&input[done..], out, FlushCompress::Sync)
            .expect("deflate of an in-memory buffer");
        // A sync flush is complete once deflate returns with output room left.
        if c.total_in() as usize == input.len() && out.len() < out.capacity() {
            break;
        }
    }
    let sync_end = out.len();
    debug_assert!(out[start] == 0x78 && sync_end - start > ZLIB_HEADER as usize);
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(64);
        }
        let st = c
            .compress_vec(&[], out, FlushCompress::Finish)
            .expect("deflate of an in-memory buffer");
        if st == Status::StreamEnd {
            return sync_end;
        }
    }
}

struct Sink {
    vmdk: VmdkStream,
    runs: Vec<(u64, u64)>,
    grains: Vec<(u32, u32)>,
    crc: crc32fast::Hasher,
    stats: Stats,
}

fn consume(rx: Receiver<Packed>, expected: usize, sink: &mut Sink) -> Result<()> {
    let mut pending = BTreeMap::new();
    let mut next = 0usize;
    for p in rx.iter() {
        pending.insert(p.seq, p);
        while let Some(p) = pending.remove(&next) {
            for (i, g) in p.grains.iter().enumerate() {
                let index = p.first + i as u64;
                let Grain::Data {
                    len,
                    zlib,
                    deflate,
                    crc,
                } = g
                else {
                    sink.stats.zero_grains += 1;
                    continue;
                };
                let sector = sink.vmdk.grain(index, &p.out[zlib.0..zlib.1])?;
                sink.grains.push((sector, *deflate as u32));
                sink.crc.combine(crc);
                sink.stats.data_bytes += *len as u64;
                match sink.runs.last_mut() {
                    Some((a, n)) if *a + *n == index => *n += 1,
                    _ => sink.runs.push((index, 1)),
                }
            }
            next += 1;
        }
    }
    if next != expected {
        bail!("the image pass stopped after {next} of {expected} blocks");
    }
    Ok(())
}

// ---------------------------------------------------------------- VMDK

type Out = HashWriter<BufWriter<File>>;

struct VmdkStream {
    w: Out,
    capacity: u64,
    /// Sector of each grain table (0: none, all its grains unallocated).
    gd: Vec<u32>,
    gt: Vec<u32>,
    gt_index: Option<u64>,
}

/// The SparseExtentHeader (also the footer, with the real `gd_offset`).
pub fn vmdk_header(capacity_sectors: u64, gd_offset: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&3u32.to_le_bytes());
    // valid newline test | compressed grains | markers
    let flags: u32 = 1 | (1 << 16) | (1 << 17);
    h[8..12].copy_from_slice(&flags.to_le_bytes());
    h[12..20].copy_from_slice(&capacity_sectors.to_le_bytes());
    h[20..28].copy_from_slice(&GRAIN_SECTORS.to_le_bytes());
    h[28..36].copy_from_slice(&1u64.to_le_bytes());
    h[36..44].copy_from_slice(&DESCRIPTOR_SECTORS.to_le_bytes());
    h[44..48].copy_from_slice(&(GTES_PER_GT as u32).to_le_bytes());
    // rgdOffset 0: no redundant grain directory in a stream.
    h[56..64].copy_from_slice(&gd_offset.to_le_bytes());
    h[64..72].copy_from_slice(&OVERHEAD_SECTORS.to_le_bytes());
    // uncleanShutdown 0, then the newline-detection characters.
    h[73..77].copy_from_slice(b"\n \r\n");
    h[77..79].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// The embedded descriptor, with the fields `qemu-img` writes for a
/// streamOptimized disk on an LSI Logic adapter (255 heads, 63 sectors).
pub fn vmdk_descriptor(cid: u32, capacity_sectors: u64, extent_name: &str) -> String {
    let cylinders = capacity_sectors / (255 * 63);
    format!(
        "# Disk DescriptorFile\n\
         version=1\n\
         CID={cid:08x}\n\
         parentCID=ffffffff\n\
         createType=\"streamOptimized\"\n\
         \n\
         # Extent description\n\
         RW {capacity_sectors} SPARSE \"{extent_name}\"\n\
         \n\
         # The Disk Data Base\n\
         #DDB\n\
         \n\
         ddb.virtualHWVersion = \"4\"\n\
         ddb.geometry.cylinders = \"{cylinders}\"\n\
         ddb.geometry.heads = \"255\"\n\
         ddb.geometry.sectors = \"63\"\n\
         ddb.adapterType = \"lsilogic\"\n\
         ddb.toolsVersion = \"2147483647\"\n"
    )
}

fn marker(num_sectors: u64, kind: u32) -> [u8; 512] {
    let mut m = [0u8; 512];
    m[0..8].copy_from_slice(&num_sectors.to_le_bytes());
    m[12..16].copy_from_slice(&kind.to_le_bytes());
    m
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl VmdkStream {
    fn begin(mut w: Out, t: &VmdkTarget, len: u64) -> Result<VmdkStream> {
        let capacity = len / SECTOR;
        let desc = vmdk_descriptor(t.cid, capacity, t.extent_name);
        if desc.len() as u64 > DESCRIPTOR_SECTORS * SECTOR {
            bail!("VMDK descriptor too long ({} bytes)", desc.len());
        }
        w.write_all(&vmdk_header(capacity, GD_AT_END))?;
        w.write_all(desc.as_bytes())?;
        let pad = (OVERHEAD_SECTORS - 1) * SECTOR - desc.len() as u64;
        w.write_all(&ZEROS[..pad as usize])?;
        let gts = capacity.div_ceil(GRAIN_SECTORS).div_ceil(GTES_PER_GT);
        Ok(VmdkStream {
            w,
            capacity,
            gd: vec![0; gts as usize],
            gt: vec![0; GTES_PER_GT as usize],
            gt_index: None,
        })
    }

    fn sector(&self) -> Result<u32> {
        let s = self.w.written / SECTOR;
        u32::try_from(s).map_err(|_| anyhow::anyhow!("the VMDK outgrew 2 TiB"))
    }

    /// Appends a compressed grain; returns the sector of its marker.
    fn grain(&mut self, index: u64, zlib: &[u8]) -> Result<u32> {
        let t = index / GTES_PER_GT;
        if self.gt_index != Some(t) {
            self.flush_gt()?;
            self.gt_index = Some(t);
        }
        let sector = self.sector()?;
        self.gt[(index % GTES_PER_GT) as usize] = sector;
        let mut m = [0u8; GRAIN_MARKER as usize];
        m[0..8].copy_from_slice(&(index * GRAIN_SECTORS).to_le_bytes());
        m[8..12].copy_from_slice(&(zlib.len() as u32).to_le_bytes());
        self.w.write_all(&m)?;
        self.w.write_all(zlib)?;
        self.w
            .write_all(&ZEROS[..pad512(GRAIN_MARKER + zlib.len() as u64)])?;
        Ok(sector)
    }

    /// The grain table of the grains just written, after its marker.
    fn flush_gt(&mut self) -> Result<()> {
        let Some(t) = self.gt_index.take() else {
            return Ok(());
        };
        let gt_sectors = GTES_PER_GT * 4 / SECTOR;
        self.w.write_all(&marker(gt_sectors, MARKER_GT))?;
        self.gd[t as usize] = self.sector()?;
        let mut b = Vec::with_capacity((GTES_PER_GT * 4) as usize);
        for e in &self.gt {
            b.extend_from_slice(&e.to_le_bytes());
        }
        self.w.write_all(&b)?;
        self.gt.fill(0);
        Ok(())
    }

    fn finish(mut self) -> Result<Written> {
        self.flush_gt()?;
        let gd_sectors = (self.gd.len() as u64 * 4).div_ceil(SECTOR);
        self.w.write_all(&marker(gd_sectors, MARKER_GD))?;
        let gd_offset = self.w.written / SECTOR;
        let mut b = Vec::with_capacity((gd_sectors * SECTOR) as usize);
        for e in &self.gd {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b.resize((gd_sectors * SECTOR) as usize, 0);
        self.w.write_all(&b)?;
        self.w.write_all(&marker(1, MARKER_FOOTER))?;
        self.w.write_all(&vmdk_header(self.capacity, gd_offset))?;
        self.w.write_all(&marker(0, MARKER_EOS))?;
        let (inner, sha256, size) = self.w.finish();
        inner.into_inner().map_err(|e| e.into_error())?;
        Ok(Written { size, sha256 })
    }
}

// ---------------------------------------------------------------- GCP

/// `disk.tar.gz` from the compressed grains of the VMDK [`pass`] wrote:
/// `disk.raw` alone in a GNU sparse tar whose map is the non-zero grains,
/// in one gzip member. Nothing is compressed again but the tar headers and
/// the end blocks. GCP wants a disk of whole GiB. On error `out` is removed.
pub fn write_gcp(
    p: &Pass,
    vmdk: &Path,
    out: &Path,
    epoch: u64,
    level: Compression,
) -> Result<Written> {
    let len = p.stats.disk_size;
    if !len.is_multiple_of(crate::spec::GIB) {
        bail!("GCP needs a disk size of whole GiB, disk.raw has {len} bytes");
    }
    let f = File::create_new(out).with_context(|| format!("creating {}", out.display()))?;
    let r = gcp_into(p, vmdk, f, epoch, level);
    if r.is_err() {
        let _ = fs::remove_file(out);
    }
    r.with_context(|| format!("writing {}", out.display()))
}

fn gcp_into(p: &Pass, vmdk: &Path, f: File, epoch: u64, level: Compression) -> Result<Written> {
    let len = p.stats.disk_size;
    let src = File::open(vmdk).with_context(|| format!("opening {}", vmdk.display()))?;
    if src.metadata()?.len() != p.vmdk.size {
        bail!("{} is not the size it was written with", vmdk.display());
    }
    let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, f));
    let map = sparse_map(&p.runs, len);
    let headers = gnu_sparse_headers("disk.raw", len, &map, epoch);
    let mut gz = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz[4..8].copy_from_slice(&(epoch as u32).to_le_bytes());
    w.write_all(&gz)?;
    w.write_all(&deflate_block(&headers, level))?;

    // The grains' deflate, read from the VMDK in windows of a few MiB.
    const WINDOW: u64 = 8 << 20;
    let mut buf = vec![0u8; WINDOW as usize];
    let (mut win_start, mut win_len) = (0u64, 0u64);
    let vmdk_size = p.vmdk.size;
    for &(sector, n) in &p.grains {
        let at = sector as u64 * SECTOR + GRAIN_MARKER + ZLIB_HEADER;
        let end = at + n as u64;
        if at < win_start || end > win_start + win_len {
            win_start = sector as u64 * SECTOR;
            win_len = WINDOW.min(vmdk_size - win_start);
            if end > win_start + win_len {
                bail!("a grain of {} runs past its end", vmdk.display());
            }
            src.read_exact_at(&mut buf[..win_len as usize], win_start)
                .with_context(|| format!("reading {}", vmdk.display()))?;
        }
        w.write_all(&buf[(at - win_start) as usize..(end - win_start) as usize])?;
    }

    // Member padding, the two end blocks, and whole 20-block records as
    // GNU tar writes them.
    let stored = p.stats.data_bytes;
    let rec = 10240u64;
    let body = headers.len() as u64 + stored + pad512(stored) as u64 + 1024;
    let tail =
        vec![0u8; (body - stored - headers.len() as u64 + (rec - body % rec) % rec) as usize];
    w.write_all(&deflate_block(&tail, level))?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&headers);
    crc.combine(&p.crc);
    crc.update(&tail);
    let total = headers.len() as u64 + stored + tail.len() as u64;
    // Empty final fixed-Huffman block, then CRC-32 and size mod 2^32.
    w.write_all(&[0x03, 0x00])?;
    w.write_all(&crc.finalize().to_le_bytes())?;
    w.write_all(&(total as u32).to_le_bytes())?;
    let (inner, sha256, size) = w.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(Written { size, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd;
    use std::io::Read;
    use std::path::PathBuf;
    use std::process::Command;

    fn run(c: &mut Command) -> String {
        cmd::run(c).unwrap()
    }

    fn sha256sum(p: &Path) -> String {
        let out = run(Command::new("sha256sum").arg(p));
        out.split_whitespace().next().unwrap().to_string()
    }

    /// Deterministic pseudo-random bytes (xorshift).
    fn noise(n: usize, mut x: u64) -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A sparse 1 GiB raw: an 800 MiB ext4 made by `mkfs.ext4 -d` of random
    /// and compressible files, then data at odd offsets after it, a grain of
    /// explicit zeros, a partial grain ending an extent and data in the
    /// disk's last grain, and many small pieces of data.
    fn realistic_raw(dir: &Path) -> PathBuf {
        let tree = dir.join("tree");
        fs::create_dir_all(tree.join("etc/deep/er")).unwrap();
        fs::write(tree.join("random.bin"), noise(3 << 20, 0x9e37_79b9)).unwrap();
        let text: String = (0..200_000)
            .map(|i| format!("line {i} of a compressible file\n"))
            .collect();
        fs::write(tree.join("etc/text.txt"), &text).unwrap();
        fs::write(tree.join("etc/deep/er/small"), b"hello\n").unwrap();
        let mut mixed = noise(700_001, 7);
        mixed.extend(std::iter::repeat_n(0u8, 300_000));
        mixed.extend(noise(12_345, 8));
        fs::write(tree.join("mixed.bin"), mixed).unwrap();
        let raw = dir.join("disk.raw");
        File::create(&raw).unwrap().set_len(1 << 30).unwrap();
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
            .arg(&tree)
            .arg(&raw)
            .arg("800M"));
        let f = fs::OpenOptions::new().write(true).open(&raw).unwrap();
        let mib = 1u64 << 20;
        f.write_all_at(&noise(5000, 1), 900 * mib + 12_345).unwrap();
        // Across a grain boundary.
        f.write_all_at(&noise(300, 2), 901 * mib - 100).unwrap();
        // A data extent of zeros: read, then found to be zero.
        f.write_all_at(&[0u8; 1 << 17], 910 * mib).unwrap();
        // A 4 KiB extent: a partial grain.
        f.write_all_at(&[0xa5; 4096], 920 * mib).unwrap();
        // Scattered small writes: a sparse map of several extension blocks.
        for i in 0..60u64 {
            f.write_all_at(&noise(100, i + 10), 930 * mib + i * (mib + 7_777))
                .unwrap();
        }
        f.write_all_at(b"the end", (1 << 30) - 7).unwrap();
        raw
    }

    fn target(path: &Path) -> VmdkTarget<'_> {
        VmdkTarget {
            path,
            extent_name: "disk1.vmdk",
            cid: 0x1234_abcd,
        }
    }

    const L6: Compression = Compression::new(6);
    const EPOCH: u64 = 1_700_000_000;

    fn check_vmdk(raw: &Path, vmdk: &Path) {
        run(Command::new("qemu-img")
            .args(["check", "-f", "vmdk"])
            .arg(vmdk));
        let info = run(Command::new("qemu-img")
            .args(["info", "-f", "vmdk"])
            .arg(vmdk));
        assert!(
            info.contains("file format: vmdk") && info.contains("create type: streamOptimized"),
            "{info}"
        );
        let same = run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "vmdk"])
            .arg(raw)
            .arg(vmdk));
        assert!(same.contains("identical"), "{same}");
    }

    fn check_gcp(dir: &Path, raw: &Path, gcp: &Path) {
        run(Command::new("gzip").arg("-t").arg(gcp));
        let len = fs::metadata(raw).unwrap().len();
        let list = run(Command::new("tar").arg("-tvzf").arg(gcp));
        assert_eq!(list.lines().count(), 1, "{list}");
        assert!(
            list.contains("disk.raw") && list.contains(&len.to_string()),
            "{list}"
        );
        let x = dir.join("x");
        let _ = fs::remove_dir_all(&x);
        fs::create_dir(&x).unwrap();
        run(Command::new("tar").arg("-xSzf").arg(gcp).arg("-C").arg(&x));
        run(Command::new("cmp").arg(raw).arg(x.join("disk.raw")));
        fs::remove_dir_all(&x).unwrap();
    }

    #[test]
    fn one_pass_makes_a_vmdk_and_a_gcp_tarball_of_the_raw() {
        let dir = tempfile::tempdir().unwrap();
        let raw = realistic_raw(dir.path());
        let (vmdk, gcp) = (dir.path().join("d.vmdk"), dir.path().join("gcp.tar.gz"));
        let p = pass(&raw, &target(&vmdk), 3, L6).unwrap();
        let g = write_gcp(&p, &vmdk, &gcp, EPOCH, L6).unwrap();
        check_vmdk(&raw, &vmdk);
        check_gcp(dir.path(), &raw, &gcp);
        assert_eq!(p.vmdk.sha256, sha256sum(&vmdk));
        assert_eq!(p.vmdk.size, fs::metadata(&vmdk).unwrap().len());
        assert_eq!(g.sha256, sha256sum(&gcp));
        assert_eq!(g.size, fs::metadata(&gcp).unwrap().len());
        let st = &p.stats;
        assert_eq!(st.disk_size, 1 << 30);
        assert!(st.zero_grains >= 2, "{st:?}");
        assert_eq!(st.data_bytes, (st.grains - st.zero_grains) * GRAIN);
        // Holes were not read.
        assert!(st.read_bytes < 200 << 20, "{st:?}");
        // Enough runs of grains for several GNU sparse extension headers.
        assert!(p.runs.len() > 2 * 21 + 4, "{}", p.runs.len());
        // The tar's data is the non-zero grains, nothing else.
        let mut h = [0u8; 512];
        flate2::read::GzDecoder::new(File::open(&gcp).unwrap())
            .read_exact(&mut h)
            .unwrap();
        let size = std::str::from_utf8(&h[124..135]).unwrap();
        assert_eq!(u64::from_str_radix(size, 8).unwrap(), st.data_bytes);
    }

    #[test]
    fn outputs_depend_on_the_content_only() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1u64 << 20;
        let make = |name: &str, zeros: bool| {
            let raw = dir.path().join(name);
            let f = File::create(&raw).unwrap();
            f.set_len(1 << 30).unwrap();
            if zeros {
                // The same content, with zeros written where the other has
                // holes: other data extents, same bytes.
                f.write_all_at(&vec![0u8; 8 << 20], 3 * mib).unwrap();
                f.write_all_at(&vec![0u8; 1 << 20], 500 * mib).unwrap();
            }
            f.write_all_at(&noise(3 << 20, 11), 4 * mib + 777).unwrap();
            f.write_all_at(&[1u8; 10_000], 500 * mib + 4096).unwrap();
            raw
        };
        let (a, b) = (make("a.raw", false), make("b.raw", true));
        let out = |raw: &Path, tag: &str| {
            let v = dir.path().join(format!("{tag}.vmdk"));
            let g = dir.path().join(format!("{tag}.tar.gz"));
            let p = pass(raw, &target(&v), 2, L6).unwrap();
            let gw = write_gcp(&p, &v, &g, EPOCH, L6).unwrap();
            (p, gw)
        };
        let (pa, ga) = out(&a, "a");
        let (pb, gb) = out(&b, "b");
        assert!(pb.stats.read_bytes > pa.stats.read_bytes + (5 << 20));
        assert_eq!(pa.vmdk, pb.vmdk);
        assert_eq!(ga, gb);
        check_gcp(dir.path(), &b, &dir.path().join("b.tar.gz"));
    }

    #[test]
    fn vmdk_of_a_disk_not_a_whole_number_of_grains() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        let len = (5 << 20) + 3 * 512;
        f.set_len(len).unwrap();
        f.write_all_at(&noise(70_000, 3), 1 << 20).unwrap();
        f.write_all_at(&noise(1000, 4), len - 1000).unwrap();
        drop(f);
        let vmdk = dir.path().join("d.vmdk");
        let p = pass(&raw, &target(&vmdk), 2, L6).unwrap();
        check_vmdk(&raw, &vmdk);
        // GCP wants whole GiB; the error says so and leaves nothing.
        let gcp = dir.path().join("gcp.tar.gz");
        let e = format!("{:#}", write_gcp(&p, &vmdk, &gcp, EPOCH, L6).unwrap_err());
        assert!(e.contains("whole GiB"), "{e}");
        assert!(!gcp.exists());
        // A size that is not whole sectors is refused, naming the file.
        File::options()
            .write(true)
            .open(&raw)
            .unwrap()
            .set_len(len + 1)
            .unwrap();
        let v2 = dir.path().join("v2.vmdk");
        let e = format!("{:#}", pass(&raw, &target(&v2), 2, L6).unwrap_err());
        assert!(e.contains("sectors") && e.contains("disk.raw"), "{e}");
        assert!(!v2.exists());
    }

    #[test]
    fn all_zero_disks() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let (vmdk, gcp) = (dir.path().join("d.vmdk"), dir.path().join("gcp.tar.gz"));
        let both = || {
            let p = pass(&raw, &target(&vmdk), 2, L6).unwrap();
            write_gcp(&p, &vmdk, &gcp, EPOCH, L6).unwrap();
            check_vmdk(&raw, &vmdk);
            check_gcp(dir.path(), &raw, &gcp);
            fs::remove_file(&vmdk).unwrap();
            fs::remove_file(&gcp).unwrap();
            p
        };
        // No data at all.
        File::create(&raw).unwrap().set_len(1 << 30).unwrap();
        let p = both();
        assert_eq!(p.stats.grains, 0);
        // Data extents that hold only zeros: no grain in either output.
        let f = File::options().write(true).open(&raw).unwrap();
        f.write_all_at(&vec![0u8; 3 << 20], 0).unwrap();
        f.write_all_at(&[0u8; 512], (1 << 30) - 512).unwrap();
        drop(f);
        let q = both();
        assert_eq!(q.stats.zero_grains, q.stats.grains);
        assert!(q.stats.grains >= 49, "{:?}", q.stats);
        assert_eq!(q.vmdk, p.vmdk);
        // Header, descriptor and padding, GD marker, GD, footer marker,
        // footer, end-of-stream marker: nothing else.
        assert_eq!(p.vmdk.size, (128 + 5) * 512);
    }

    #[test]
    fn failures_name_the_file_and_leave_nothing_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(b"data", 1 << 20).unwrap();
        drop(f);
        let missing = dir.path().join("missing/d.vmdk");
        let e = format!("{:#}", pass(&raw, &target(&missing), 2, L6).unwrap_err());
        assert!(e.contains("missing/d.vmdk"), "{e}");
        let e = format!(
            "{:#}",
            pass(
                &dir.path().join("nope.raw"),
                &target(&dir.path().join("v")),
                2,
                L6
            )
            .unwrap_err()
        );
        assert!(e.contains("nope.raw"), "{e}");
        assert!(!dir.path().join("v").exists());
        // An output that already exists is neither overwritten nor removed.
        let vmdk = dir.path().join("d.vmdk");
        fs::write(&vmdk, b"keep").unwrap();
        assert!(pass(&raw, &target(&vmdk), 2, L6).is_err());
        assert_eq!(fs::read(&vmdk).unwrap(), b"keep");
        // A VMDK that changed under the GCP writer is refused.
        fs::remove_file(&vmdk).unwrap();
        let p = pass(&raw, &target(&vmdk), 2, L6).unwrap();
        File::options()
            .append(true)
            .open(&vmdk)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let gcp = dir.path().join("gcp.tar.gz");
        let e = format!("{:#}", write_gcp(&p, &vmdk, &gcp, EPOCH, L6).unwrap_err());
        assert!(e.contains("gcp.tar.gz") && e.contains("d.vmdk"), "{e}");
        assert!(!gcp.exists());
    }

    #[test]
    fn the_ova_holds_the_ovf_the_manifest_and_the_vmdk() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let f = File::create(&raw).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(&noise(2 << 20, 21), 1 << 20).unwrap();
        drop(f);
        let meta = crate::formats::Meta {
            image: "img",
            title: "Image",
            epoch: EPOCH,
            vhd_uuid: [3; 16],
            secure_boot: true,
        };
        let done = Mutex::new(Vec::new());
        let (arts, p) =
            crate::formats::write_ova_gcp(&raw, dir.path(), &meta, true, true, 2, &|w: &str| {
                done.lock().unwrap().push(w.to_string())
            })
            .unwrap();
        let mut done = done.into_inner().unwrap();
        done.sort();
        assert_eq!(done, ["gcp", "ova"]);
        assert_eq!(arts.len(), 2);
        for a in &arts {
            assert_eq!(a.sha256, sha256sum(&dir.path().join(&a.file)), "{}", a.file);
        }
        // Nothing left behind but the outputs.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["disk.ova", "disk.raw", "gcp.tar.gz"]);
        let ova = dir.path().join("disk.ova");
        let list = run(Command::new("tar").arg("-tf").arg(&ova));
        assert_eq!(list, "img.ovf\nimg.mf\nimg-disk1.vmdk\n");
        let x = dir.path().join("x");
        fs::create_dir(&x).unwrap();
        run(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
        let vmdk = x.join("img-disk1.vmdk");
        check_vmdk(&raw, &vmdk);
        let mf = fs::read_to_string(x.join("img.mf")).unwrap();
        assert!(
            mf.contains(&format!("SHA256(img-disk1.vmdk)= {}\n", sha256sum(&vmdk))),
            "{mf}"
        );
        assert!(mf.contains(&sha256sum(&x.join("img.ovf"))), "{mf}");
        assert_eq!(p.vmdk.sha256, sha256sum(&vmdk));
        let ovf = fs::read_to_string(x.join("img.ovf")).unwrap();
        assert!(
            ovf.contains(&format!("ovf:size=\"{}\"", p.vmdk.size)),
            "{ovf}"
        );
        assert!(ovf.contains("ovf:capacity=\"1073741824\""), "{ovf}");
        let desc = run(Command::new("qemu-img")
            .args(["info", "-f", "vmdk"])
            .arg(&vmdk));
        assert!(desc.contains("img-disk1.vmdk"), "{desc}");
    }

    #[test]
    fn a_grain_is_a_zlib_stream_around_a_sync_flushed_deflate() {
        let mut c = Compress::new(L6, true);
        let mut out = Vec::new();
        let inputs = [noise(GRAIN as usize, 5), vec![7u8; 1000], noise(10, 6)];
        let mut spans = Vec::new();
        for input in &inputs {
            let start = out.len();
            let sync = zlib_grain(&mut c, input, &mut out);
            spans.push((start, sync, out.len()));
        }
        let mut joined = Vec::new();
        for (input, &(start, sync, end)) in inputs.iter().zip(&spans) {
            let mut back = Vec::new();
            flate2::read::ZlibDecoder::new(&out[start..end])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(&back, input);
            assert_eq!(&out[sync - 4..sync], &[0, 0, 0xff, 0xff]);
            joined.extend_from_slice(&out[start + 2..sync]);
            // The same bytes from a fresh compressor: the reset is complete.
            let mut again = Vec::new();
            zlib_grain(&mut Compress::new(L6, true), input, &mut again);
            assert_eq!(again, &out[start..end]);
        }
        // The middles concatenate into one raw deflate stream.
        joined.extend_from_slice(&[0x03, 0x00]);
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&joined[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, inputs.concat());
    }

    #[test]
    fn runs_and_map() {
        let g = GRAIN;
        let ext = [(0, 4096), (g + 512, 512), (2 * g, 3 * g), (10 * g + 1, 1)];
        let runs = grain_runs(&ext, 20 * g);
        assert_eq!(runs, vec![(0, 5), (10, 1)]);
        assert_eq!(
            sparse_map(&runs, 20 * g),
            vec![(0, 5 * g), (10 * g, g), (20 * g, 0)]
        );
        assert_eq!(sparse_map(&runs, 11 * g), vec![(0, 5 * g), (10 * g, g)]);
        assert_eq!(sparse_map(&[], 4 * g), vec![(4 * g, 0)]);
        // A short last grain.
        assert_eq!(grain_runs(&[(g, 100)], g + 100), vec![(1, 1)]);
        assert_eq!(sparse_map(&[(1, 1)], g + 100), vec![(g, 100)]);
    }

    #[test]
    fn header_fields() {
        let h = vmdk_header(6 << 21, GD_AT_END);
        assert_eq!(&h[0..4], b"KDMV");
        assert_eq!(u32::from_le_bytes(h[8..12].try_into().unwrap()), 0x30001);
        assert_eq!(u64::from_le_bytes(h[56..64].try_into().unwrap()), u64::MAX);
        assert_eq!(&h[73..79], b"\n \r\n\x01\x00");
        let d = vmdk_descriptor(0xab, 6291456, "x-disk1.vmdk");
        assert!(d.contains("CID=000000ab\n"), "{d}");
        assert!(d.contains("RW 6291456 SPARSE \"x-disk1.vmdk\"\n"), "{d}");
        assert!(d.contains("ddb.geometry.cylinders = \"391\""), "{d}");
    }
}
