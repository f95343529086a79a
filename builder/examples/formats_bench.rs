//! The OVA and GCP formats of one `disk.raw`, made the former way and the
//! one-pass way, timed on the same machine:
//!
//! - before: qemu-img's streamOptimized VMDK (single-threaded deflate),
//!   hashed, then copied into the OVA through a hashing writer; and,
//!   concurrently, `formats::write_gcp` (its own read and deflate, 2 threads),
//!   as `produce_all` ran them;
//! - after: `formats::write_ova_gcp`, one read, each grain deflated once on
//!   every core, both outputs from it (what `produce_all` runs now), then
//!   its parts alone (the pass, the GCP tarball, the OVA).
//!
//! ```text
//! cargo run --release -p builder --example formats_bench -- DISK.RAW [SCRATCH] [THREADS] [LEVEL]
//! ```
//!
//! LEVEL (default 6, what the builder uses) is the deflate level of the
//! part-by-part run, to weigh time against size.
//!
//! SCRATCH (default /var/tmp/bootpatch-formats-bench) is emptied and removed.

use anyhow::{bail, Context, Result};
use builder::formats::{self, Meta};
use builder::hash::HashWriter;
use builder::packed;
use flate2::Compression;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

/// The OVA as `write_ova` made it before: qemu-img, a hash of the VMDK, a
/// copy through a hashing writer.
fn ova_before(raw: &Path, dir: &Path, meta: &Meta) -> Result<(u64, u64)> {
    let vmdk_name = format!("{}-disk1.vmdk", meta.image);
    let tmp = dir.join(format!(".{vmdk_name}.tmp"));
    builder::cmd::run(
        Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw", "-O", "vmdk"])
            .args(["-o", "subformat=streamOptimized"])
            .arg(raw)
            .arg(&tmp),
    )?;
    let capacity = fs::metadata(raw)?.len();
    let vmdk_size = fs::metadata(&tmp)?.len();
    let vmdk_sha = builder::hash::file_sha256(&tmp)?;
    let ovf_name = format!("{}.ovf", meta.image);
    let mf_name = format!("{}.mf", meta.image);
    let ovf = formats::ovf_descriptor(meta, &vmdk_name, vmdk_size, capacity);
    let ovf_sha = builder::hash::hex(&builder::hash::sha256_bytes(ovf.as_bytes()));
    let mf = format!("SHA256({ovf_name})= {ovf_sha}\nSHA256({vmdk_name})= {vmdk_sha}\n");
    let out = dir.join("disk.ova");
    let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, File::create_new(&out)?));
    let pad = |n: u64| vec![0u8; ((512 - n % 512) % 512) as usize];
    for (name, body) in [(&ovf_name, ovf.as_bytes()), (&mf_name, mf.as_bytes())] {
        w.write_all(&formats::ustar_header(name, body.len() as u64, meta.epoch)?)?;
        w.write_all(body)?;
        w.write_all(&pad(body.len() as u64))?;
    }
    w.write_all(&formats::ustar_header(&vmdk_name, vmdk_size, meta.epoch)?)?;
    let mut f = File::open(&tmp)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])?;
    }
    w.write_all(&pad(vmdk_size))?;
    w.write_all(&[0u8; 1024])?;
    let (inner, _sha, size) = w.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::remove_file(&tmp)?;
    Ok((vmdk_size, size))
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(raw) = args.first().map(PathBuf::from) else {
        bail!("usage: formats_bench DISK.RAW [SCRATCH] [THREADS] [LEVEL]");
    };
    let scratch = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/bootpatch-formats-bench".into()),
    );
    let threads = match args.get(2) {
        Some(t) => t.parse().context("THREADS")?,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let meta = Meta {
        image: "bench",
        title: "Benchmark image",
        epoch: 1_767_225_600,
        vhd_uuid: [7; 16],
        secure_boot: true,
    };
    let len = fs::metadata(&raw)
        .with_context(|| format!("opening {}", raw.display()))?
        .len();
    let data: u64 = builder::hash::data_extents(&File::open(&raw)?)?
        .iter()
        .map(|e| e.1)
        .sum();
    println!(
        "{}: {} GiB, {} of data extents; {threads} compression threads, {} cores",
        raw.display(),
        len >> 30,
        mib(data),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let fresh = |name: &str| -> Result<PathBuf> {
        let d = scratch.join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d)?;
        Ok(d)
    };

    // Before: qemu-img VMDK + OVA, and write_gcp, concurrently.
    let before = fresh("before")?;
    let ((ova_b, gcp_b), t_before) = secs(|| {
        std::thread::scope(|s| {
            let g = s.spawn(|| {
                secs(|| formats::write_gcp(&raw, &before.join("gcp.tar.gz"), meta.epoch, 2))
            });
            let o = secs(|| ova_before(&raw, &before, &meta));
            (o, g.join().expect("write_gcp thread"))
        })
    });
    let ((vmdk_b, ova_size_b), t_ova_b) = (ova_b.0?, ova_b.1);
    let (gcp_size_b, t_gcp_b) = (gcp_b.0?.size, gcp_b.1);

    // After: the one-pass writer, as produce_all calls it.
    let after = fresh("after")?;
    let t0 = Instant::now();
    let marks = Mutex::new(Vec::new());
    let (r, t_after) = secs(|| {
        formats::write_ova_gcp(&raw, &after, &meta, true, true, threads, &|w: &str| {
            if let Ok(mut m) = marks.lock() {
                m.push((w.to_string(), t0.elapsed().as_secs_f64()));
            }
        })
    });
    let (arts, p) = r?;
    let size_of = |f: &str| arts.iter().find(|a| a.file == f).map_or(0, |a| a.size);
    let (ova_size_a, gcp_size_a) = (size_of("disk.ova"), size_of("gcp.tar.gz"));

    // After, part by part.
    let parts = fresh("parts")?;
    let vmdk = parts.join("d.vmdk");
    let target = packed::VmdkTarget {
        path: &vmdk,
        extent_name: "bench-disk1.vmdk",
        cid: 1,
    };
    let level = Compression::new(match args.get(3) {
        Some(l) => l.parse().context("LEVEL")?,
        None => 6,
    });
    let (p2, t_pass) = secs(|| packed::pass(&raw, &target, threads, level));
    let p2 = p2?;
    let (vmdk_l, gcp_l) = (p2.vmdk.size, 0u64);
    let (g2, t_gcp_only) =
        secs(|| packed::write_gcp(&p2, &vmdk, &parts.join("gcp.tar.gz"), meta.epoch, level));
    let gcp_l = gcp_l + g2?.size;
    let (o2, t_ova_only) =
        secs(|| formats::assemble_ova(&parts, &meta, &vmdk, "bench-disk1.vmdk", &p2.vmdk, len));
    o2?;
    fs::remove_dir_all(&scratch)?;

    let st = &p.stats;
    println!(
        "  grains read {} ({}), all-zero {} ; non-zero data {}",
        st.grains,
        mib(st.grains * packed::GRAIN),
        st.zero_grains,
        mib(st.data_bytes)
    );
    println!("before (qemu-img VMDK + OVA || write_gcp): {t_before:.2}s");
    println!("    OVA thread {t_ova_b:.2}s, GCP thread {t_gcp_b:.2}s");
    println!(
        "after (formats::write_ova_gcp): {t_after:.2}s = {:.2}x faster",
        t_before / t_after
    );
    for (w, t) in marks.into_inner().unwrap_or_default() {
        println!("    {w} done at {t:.2}s");
    }
    println!(
        "    parts alone, level {}: pass (read + deflate + VMDK) {t_pass:.2}s, GCP tarball {t_gcp_only:.2}s, OVA {t_ova_only:.2}s; VMDK {}, GCP {}",
        level.level(),
        mib(vmdk_l),
        mib(gcp_l)
    );
    let ratio = |n: u64| data as f64 / n as f64;
    println!("sizes (data extents {} / size = ratio):", mib(data));
    println!(
        "    VMDK   qemu-img {} ({:.2}), ours {} ({:.2}), ours/qemu-img {:.3}",
        mib(vmdk_b),
        ratio(vmdk_b),
        mib(p.vmdk.size),
        ratio(p.vmdk.size),
        p.vmdk.size as f64 / vmdk_b as f64
    );
    println!(
        "    OVA    before {} , after {}",
        mib(ova_size_b),
        mib(ova_size_a)
    );
    println!(
        "    GCP    before {} ({:.2}), after {} ({:.2}), after/before {:.3}",
        mib(gcp_size_b),
        ratio(gcp_size_b),
        mib(gcp_size_a),
        ratio(gcp_size_a),
        gcp_size_a as f64 / gcp_size_b as f64
    );
    Ok(())
}
