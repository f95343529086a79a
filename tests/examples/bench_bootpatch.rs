//! Benchmark of the node binary: its size (stripped and gzip'd, next to the
//! floor of a static hello-world built the same way) and, on a real Debian
//! root that is up to date, bootpatch's own CPU time and peak RSS on
//! `check` (children excluded, read by bootpatch from /proc/self at exit),
//! plus the whole command with apt included, by GNU time and hyperfine.
//!
//! Run: `make bench-bootpatch` (needs root, like the tests).

use bootpatch_e2e::fixtures::fixtures;
use bootpatch_e2e::repo::Key;
use bootpatch_e2e::root::fixture_node;
use std::process::Command;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn gz_size(path: &std::path::Path) -> u64 {
    let out = Command::new("sh")
        .arg("-c")
        .arg("gzip -9c \"$1\" | wc -c")
        .arg("sh")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn hello_floor() -> (u64, u64) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("hello.rs");
    std::fs::write(
        &src,
        "fn main() { let a: Vec<String> = std::env::args().collect(); println!(\"{a:?}\"); }\n",
    )
    .unwrap();
    let bin = d.path().join("hello");
    let st = Command::new("rustc")
        .args([
            "--edition=2021",
            "-C",
            "opt-level=z",
            "-C",
            "lto=fat",
            "-C",
            "codegen-units=1",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
            "--target",
            "x86_64-unknown-linux-gnu",
            "-o",
        ])
        .arg(&bin)
        .arg(&src)
        .status()
        .unwrap();
    assert!(st.success());
    (std::fs::metadata(&bin).unwrap().len(), gz_size(&bin))
}

fn main() {
    let bin = bootpatch_e2e::bootpatch_bin();
    let size = std::fs::metadata(&bin).unwrap().len();
    let gz = gz_size(&bin);
    let (floor, floor_gz) = hello_floor();
    println!("== size ==");
    println!(
        "bootpatch (static, stripped): {size} bytes ({:.2} MiB); gzip -9: {gz} bytes ({:.1} KiB)",
        size as f64 / 1048576.0,
        gz as f64 / 1024.0
    );
    println!(
        "floor, static hello-world with the same profile: {floor} bytes; gzip -9: {floor_gz} bytes"
    );

    // An up-to-date node: the repository offers only what is installed.
    let key = Key::generate("bench");
    let root = fixture_node(&fixtures().v1, &key);

    let runs = 20;
    let (mut cpu, mut rss, mut wall) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let t = std::time::Instant::now();
        let out = root.run(&["bootpatch", "-v", "check"]);
        wall.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("self usage:"))
            .expect("self usage line");
        let field = |k: &str| -> f64 {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap()
                .parse()
                .unwrap()
        };
        cpu.push(field("cpu_us=") / 1000.0);
        rss.push(field("peak_rss_kib=") / 1024.0);
    }
    let max_cpu = cpu.iter().cloned().fold(0.0, f64::max);
    let max_rss = rss.iter().cloned().fold(0.0, f64::max);
    println!("== check, nothing to do ({runs} runs) ==");
    println!(
        "bootpatch own CPU time (children excluded): median {:.2} ms, max {:.2} ms",
        median(&mut cpu),
        max_cpu
    );
    println!(
        "bootpatch own peak RSS: median {:.2} MiB, max {:.2} MiB",
        median(&mut rss),
        max_rss
    );
    println!(
        "whole command wall time incl. apt-get update + simulate: median {:.0} ms",
        median(&mut wall)
    );

    // The whole command tree (apt included) by public tools.
    let mut time = root.command(&["bootpatch", "check"]);
    let argv: Vec<String> = std::iter::once(time.get_program().to_string_lossy().into_owned())
        .chain(time.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .args(&argv)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    for k in [
        "User time",
        "System time",
        "Maximum resident set size",
        "Elapsed (wall clock)",
    ] {
        if let Some(l) = err.lines().find(|l| l.contains(k)) {
            println!("/usr/bin/time -v, whole tree: {}", l.trim());
        }
    }
    let _ = time.output();
    let quoted: Vec<String> = argv
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let st = Command::new("hyperfine")
        .args(["--warmup", "2", "--runs", "10", "-N", "--style", "basic"])
        .arg(quoted.join(" "))
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        println!("(hyperfine not available)");
    }
}
