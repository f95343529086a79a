//! `kube-testserver`: runs the test API server until interrupted. Test infrastructure only.

use anyhow::{bail, Context as _};
use kube_testserver::{Options, TestServer};
use std::time::Duration;

const USAGE: &str = "usage: kube-testserver --listen 127.0.0.1:PORT --kubeconfig-out FILE \
[--pod-start-delay-ms N] [--seed-nodes N] [--seed-pods-per-node N] [--extra-san NAME]... \
[--plain-http]

Serves HTTPS with a CA made for this run; the kubeconfig holds the CA and an admin token.
--extra-san adds a name or IP address to the serving certificate; --plain-http serves plain
HTTP without authentication (benchmarks only).";

fn main() {
    if let Err(e) = run() {
        eprintln!("kube-testserver: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> anyhow::Result<()> {
    let mut opts = Options::default();
    let mut kubeconfig = None;
    let (mut nodes, mut pods_per_node) = (0usize, 0usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => opts.listen = val()?.parse().context("parsing --listen")?,
            "--kubeconfig-out" => kubeconfig = Some(val()?),
            "--pod-start-delay-ms" => {
                opts.pod_start_delay = Duration::from_millis(val()?.parse()?);
            }
            "--seed-nodes" => nodes = val()?.parse()?,
            "--seed-pods-per-node" => pods_per_node = val()?.parse()?,
            "--extra-san" => opts.extra_sans.push(val()?),
            "--plain-http" => opts.plain_http = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    let server = TestServer::start(opts).context("starting the server")?;
    for n in server.add_nodes("node", nodes) {
        for i in 0..pods_per_node {
            let pod = kube_testserver::fixtures::pod("default", &format!("{n}-pod-{i}"), &n);
            server.apply(pod).context("seeding pods")?;
        }
    }
    if let Some(path) = kubeconfig {
        server.write_kubeconfig(&path)?;
    }
    println!(
        "kube-testserver (test infrastructure) listening on {}",
        server.url()
    );
    // Runs until killed; the server thread does the work.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
