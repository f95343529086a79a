//! The whole formats step, `formats::produce_all` with every format (raw
//! hash + VHD, qcow2, OVA, GCP, concurrently) or some, timed on a `disk.raw`:
//!
//! ```text
//! cargo run --release -p builder --example formats_step -- DISK.RAW [SCRATCH] [FORMATS]
//! ```
//!
//! FORMATS is a comma-separated list (default: all).
//!
//! DISK.RAW is hard-linked into SCRATCH (default
//! /var/tmp/bootpatch-formats-step, same file system), which is removed
//! afterwards. It uses only `produce_all`, whose signature does not change,
//! so the same file builds against an older tree to compare.

use anyhow::{bail, Context, Result};
use builder::formats::{self, Meta};
use builder::progress::{Mode, Progress};
use builder::spec::Format;
use std::fs;
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(raw) = args.first().map(PathBuf::from) else {
        bail!("usage: formats_step DISK.RAW [SCRATCH] [FORMATS]");
    };
    let dir = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/bootpatch-formats-step".into()),
    );
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::hard_link(&raw, dir.join("disk.raw"))
        .with_context(|| format!("linking {} into {}", raw.display(), dir.display()))?;
    let meta = Meta {
        image: "bench",
        title: "Benchmark image",
        epoch: 1_767_225_600,
        vhd_uuid: [7; 16],
        secure_boot: true,
    };
    let wanted = match args.get(2) {
        Some(l) => l
            .split(',')
            .map(Format::parse)
            .collect::<Result<Vec<_>>>()?,
        None => Format::ALL.to_vec(),
    };
    let t = Instant::now();
    let arts = formats::produce_all(&dir, &wanted, &meta, &Progress::new(Mode::Quiet));
    let secs = t.elapsed().as_secs_f64();
    fs::remove_dir_all(&dir)?;
    let arts = arts?;
    let names: Vec<_> = wanted.iter().map(|f| f.name()).collect();
    println!("formats step ({}): {secs:.2}s", names.join(","));
    for a in arts {
        println!("    {:<12} {:>14} bytes  {}", a.file, a.size, a.sha256);
    }
    Ok(())
}
