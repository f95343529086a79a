//! Render throughput: user-data documents per second on one core, with the
//! templates loaded once, for a fleet whose nodes differ by host name.
//!
//!     CARGO_TARGET_DIR=target-render cargo run --release -p builder --example render_bench [-- N]
//!
//! Prints one line per scenario; the goal is >= 20,000 documents/s/core.

use builder::render::{BootpatchSource, Provider, Renderer, Values};
use std::hint::black_box;
use std::time::Instant;

const VALUES: &str = include_str!("../../templates/cloud-init/values.sample.yaml");

/// Time this thread has spent on a CPU, from the kernel's scheduler stats:
/// on a shared machine wall time also counts other jobs' turns.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("N is a count"))
        .unwrap_or(20_000);
    let t0 = Instant::now();
    let renderer = Renderer::new();
    let load = t0.elapsed();
    println!(
        "templates loaded and compiled once in {:.2} ms",
        load.as_secs_f64() * 1e3
    );

    let base = Values::from_yaml_str(VALUES).expect("sample values");
    let fleet: Vec<Values> = (0..n)
        .map(|i| Values {
            hostname: Some(format!("node-{i:05}")),
            ..base.clone()
        })
        .collect();
    // Worst case: every node has its own policy, so bootpatch's parser
    // checks every config (the renderer skips it for a repeated config).
    let distinct: Vec<Values> = (0..n)
        .map(|i| Values {
            hostname: Some(format!("node-{i:05}")),
            schedule: Some(format!("{} {} * * *", i % 60, (i / 60) % 24)),
            ..base.clone()
        })
        .collect();
    let url =
        BootpatchSource::url("https://dl.example.internal/bootpatch", &"ab".repeat(32)).unwrap();

    for (label, provider, bp, fleet) in [
        (
            "aws, baked image, shared policy",
            Provider::Aws,
            &BootpatchSource::Baked,
            &fleet,
        ),
        (
            "gcp, stock image (download + verify), shared policy",
            Provider::Gcp,
            &url,
            &fleet,
        ),
        (
            "nocloud, baked image, shared policy",
            Provider::Nocloud,
            &BootpatchSource::Baked,
            &fleet,
        ),
        (
            "aws, baked image, a distinct policy per node",
            Provider::Aws,
            &BootpatchSource::Baked,
            &distinct,
        ),
    ] {
        // Warm up, then time.
        for v in fleet.iter().take(200) {
            black_box(renderer.render(provider, v, bp).unwrap());
        }
        let start = Instant::now();
        let cpu0 = thread_cpu_ns();
        let mut bytes = 0usize;
        for v in fleet {
            bytes += black_box(renderer.render(provider, v, bp).unwrap()).len();
        }
        let wall = start.elapsed().as_secs_f64();
        let cpu = (thread_cpu_ns() - cpu0) as f64 / 1e9;
        println!(
            "{label}: {n} documents, {:.0} documents/s per core by CPU time ({:.1} us each; \
             wall {:.3} s = {:.0}/s), {} bytes avg",
            n as f64 / cpu,
            cpu * 1e6 / n as f64,
            wall,
            n as f64 / wall,
            bytes / n
        );
    }
}
