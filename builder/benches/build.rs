//! Benchmark of `builder build` against its floor, in one run on the same
//! machine (run it with `scripts/bench-builder.sh`, which warms the package
//! cache first):
//!
//! 1. the floor: `mmdebstrap` of the same package set (same invocation the
//!    builder uses) + `mkfs.ext4 -d` into a sparse file of the same size;
//! 2. `builder build` of the spec: raw only, all formats (per phase), and
//!    all formats again with `--locked` from the first one's lock;
//! 3. on the built sparse `disk.raw`: our SHA-256 vs `sha256sum`, our
//!    `gcp.tar.gz` vs `tar --format=oldgnu -Sczf`, our OVA vs the
//!    streamOptimized VMDK by `qemu-img` alone, and all formats made
//!    concurrently.
//!
//! Each of 1 and 2 runs `BENCH_ROUNDS` times (default 3), in alternating
//! order; medians are printed. Prints a table and writes `bench.json` into
//! the output folder.

use builder::progress::{Mode, Progress};
use builder::spec::Format;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn secs<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().expect("running a command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--bench"))
        .collect();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec_path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("images/debian-12.yaml"));
    let out = PathBuf::from(
        args.get(1)
            .cloned()
            .unwrap_or_else(|| "/var/tmp/bootpatch-bench".into()),
    );
    let bootpatch = args.get(2).map(PathBuf::from);
    std::fs::create_dir_all(&out)?;
    let loaded = builder::spec::load(&spec_path)?;
    let spec = &loaded.spec;
    let quiet = Progress::new(Mode::Quiet);
    let epoch = 1_767_225_600;

    let host = builder::hostapt::read_host(Path::new("/"));
    let sources = builder::rootfs::resolve_sources(spec, &host)?;
    let cache = builder::lock::default_cache().join("debs");
    // 1. The floor: mmdebstrap as anyone would run it, then mkfs.ext4 -d.
    let floor_once = || -> anyhow::Result<(f64, f64)> {
        let floor_dir = PathBuf::from("/dev/shm/bootpatch-bench-floor");
        let _ = std::fs::remove_dir_all(&floor_dir);
        let (r, t_mmdebstrap) = secs(|| {
            builder::rootfs::mmdebstrap(
                spec,
                &sources,
                &builder::rootfs::Origin::Network { cache: &cache },
                builder::rootfs::Tuning::default(),
                &floor_dir,
                epoch,
                &quiet,
            )
        });
        r?;
        let floor_img = out.join("floor-root.ext4");
        let _ = std::fs::remove_file(&floor_img);
        let size_k = (spec.disk.size.0 - spec.disk.esp_size.0 - (2 << 20)) / 1024;
        let ((), t_mkfs) = secs(|| {
            sh(Command::new("mkfs.ext4")
                .args(["-q", "-F", "-d"])
                .arg(&floor_dir)
                .arg(&floor_img)
                .arg(format!("{size_k}k")))
        });
        let _ = std::fs::remove_dir_all(&floor_dir);
        let _ = std::fs::remove_file(&floor_img);
        Ok((t_mmdebstrap, t_mkfs))
    };
    // 2. The builder: raw only, all formats, and all formats again from the
    // all-formats build's packages.lock (--locked, unchanged inputs).
    let build_once = |dir: &str, formats: &[Format], lock: Option<PathBuf>| {
        let build_out = out.join(dir);
        let _ = std::fs::remove_dir_all(&build_out);
        let bargs = builder::cli::BuildArgs {
            spec: Some(spec_path.clone()),
            out: Some(build_out),
            formats: Some(formats.iter().map(|f| f.name().to_string()).collect()),
            locked: lock.is_some(),
            quiet: true,
            json: false,
            bootpatch: bootpatch.clone(),
            cache: None,
            lock,
            workdir: None,
        };
        let (built, t) = secs(|| builder::build::build(&bargs, &quiet));
        built.map(|b| (b, t))
    };
    let all_lock = out.join("all-lock").join(builder::lock::FILE_NAME);
    // Rounds alternate their order, so that a slow stretch of the machine
    // does not always land on the same contender; medians are reported.
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(3);
    let (mut floors, mut raws, mut alls, mut lockeds) = (vec![], vec![], vec![], vec![]);
    let mut built = None;
    for round in 0..rounds {
        let mut run = |what: &str| -> anyhow::Result<()> {
            match what {
                "floor" => floors.push(floor_once()?),
                "raw" => raws.push(build_once("raw", &[Format::Raw], None)?.1),
                "all" => {
                    let (b, t) = build_once(&spec.name, &Format::ALL, None)?;
                    std::fs::create_dir_all(all_lock.parent().unwrap())?;
                    std::fs::copy(
                        out.join(&spec.name).join(builder::lock::FILE_NAME),
                        &all_lock,
                    )?;
                    alls.push(t);
                    built = Some(b);
                }
                _ => lockeds.push(build_once("locked", &Format::ALL, Some(all_lock.clone()))?.1),
            }
            eprintln!("bench-builder: round {}: {what} done", round + 1);
            Ok(())
        };
        let order: &[&str] = if round % 2 == 0 {
            &["floor", "raw", "all", "locked"]
        } else {
            &["all", "locked", "raw", "floor"]
        };
        for what in order {
            run(what)?;
        }
    }
    let _ = std::fs::remove_dir_all(out.join("raw"));
    let _ = std::fs::remove_dir_all(out.join("locked"));
    let t_mmdebstrap = median(floors.iter().map(|f| f.0).collect());
    let t_mkfs = median(floors.iter().map(|f| f.1).collect());
    let floor = median(floors.iter().map(|f| f.0 + f.1).collect());
    let t_raw = median(raws.clone());
    let t_build = median(alls.clone());
    let t_locked = median(lockeds.clone());
    let built = built.expect("at least one round");
    let build_out = out.join(&spec.name);

    // 3. Format and hashing figures on the same sparse disk.raw.
    let raw = build_out.join("disk.raw");
    let scratch = out.join("scratch");
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let (ours, t_sha_ours) = secs(|| builder::hash::file_sha256(&raw));
    let (theirs, t_sha_tool) = secs(|| {
        let o = Command::new("sha256sum")
            .arg(&raw)
            .output()
            .expect("sha256sum");
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    });
    assert_eq!(ours?, theirs, "the two SHA-256 disagree");
    let meta = builder::formats::Meta {
        image: &spec.name,
        title: &spec.name,
        epoch,
        vhd_uuid: [0; 16],
        secure_boot: false,
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // The GCP tarball alone, as the builder makes it (one pass, every core).
    let (r, t_gcp_ours) = secs(|| {
        builder::formats::write_ova_gcp(&raw, &scratch, &meta, false, true, threads, &|_| {})
    });
    r?;
    // The OVA alone, its VMDK by the same pass, against qemu-img's VMDK.
    let (r, t_ova_ours) = secs(|| {
        builder::formats::write_ova_gcp(&raw, &scratch, &meta, true, false, threads, &|_| {})
    });
    r?;
    let ((), t_gcp_tar) = secs(|| {
        sh(Command::new("tar")
            .args(["--format=oldgnu", "-Sczf"])
            .arg(scratch.join("gnu.tar.gz"))
            .arg("-C")
            .arg(&build_out)
            .arg("disk.raw"))
    });
    let ((), t_vmdk) = secs(|| {
        sh(Command::new("qemu-img")
            .args([
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                "vmdk",
                "-o",
                "subformat=streamOptimized",
            ])
            .arg(&raw)
            .arg(scratch.join("d.vmdk")))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let data: u64 = builder::hash::data_extents(&std::fs::File::open(&raw)?)?
        .iter()
        .map(|e| e.1)
        .sum();

    let phases: Vec<_> = built.manifest.timings.clone();
    println!(
        "bootpatch builder benchmark: {} ({} MiB data in a {} GiB sparse disk.raw)",
        spec.name,
        data >> 20,
        spec.disk.size.0 >> 30
    );
    println!(
        "  floor: mmdebstrap {t_mmdebstrap:.1}s + mkfs.ext4 -d {t_mkfs:.1}s = {floor:.1}s (median of {rounds})"
    );
    println!(
        "  builder build, raw only: {t_raw:.1}s = {:.2} x floor",
        t_raw / floor
    );
    println!(
        "  builder build (all formats): {t_build:.1}s = {:.2} x floor",
        t_build / floor
    );
    println!(
        "  builder build --locked (all formats, unchanged inputs): {t_locked:.1}s = {:.2} x the first",
        t_locked / t_build
    );
    println!("  phases of the last all-formats build:");
    for (p, s) in &phases {
        println!("    {p:<32} {s:>6.1}s");
    }
    println!(
        "  SHA-256 of disk.raw: ours {t_sha_ours:.2}s, sha256sum {t_sha_tool:.2}s ({:.1}x)",
        t_sha_tool / t_sha_ours
    );
    println!(
        "  gcp.tar.gz: ours {t_gcp_ours:.2}s, tar --format=oldgnu -Sczf {t_gcp_tar:.2}s ({:.1}x)",
        t_gcp_tar / t_gcp_ours
    );
    println!(
        "  OVA: ours (its VMDK in one pass) {t_ova_ours:.2}s, the streamOptimized VMDK by qemu-img alone {t_vmdk:.2}s"
    );
    let report = json!({
        "spec": spec.name,
        "dataMiB": data >> 20,
        "rounds": rounds,
        "floor": {"mmdebstrap": t_mmdebstrap, "mkfsExt4": t_mkfs, "total": floor, "runs": floors},
        "raw": {"total": t_raw, "ratioToFloor": t_raw / floor, "runs": raws},
        "build": {"total": t_build, "phases": phases, "ratioToFloor": t_build / floor, "runs": alls},
        "locked": {"total": t_locked, "ratioToFirst": t_locked / t_build, "runs": lockeds},
        "sha256": {"ours": t_sha_ours, "sha256sum": t_sha_tool},
        "gcp": {"ours": t_gcp_ours, "gnuTar": t_gcp_tar},
        "ovaOurs": t_ova_ours,
        "vmdkQemuImg": t_vmdk,
    });
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}
