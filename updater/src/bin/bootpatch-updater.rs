//! `bootpatch-updater`: the per-node agent (a DaemonSet). Thin main: flags, logging, the
//! metrics server, then `updater::agent::Agent::run`.

use anyhow::Context as _;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "bootpatch-updater",
    version,
    about = "Drain-aware OS patching agent, one per node"
)]
struct Args {
    /// This node's name (the DaemonSet passes spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Namespace of the Leases and the patch policy.
    #[arg(long, default_value = "bootpatch-system", env = "POD_NAMESPACE")]
    namespace: String,
    /// Drain policy ConfigMap name (the reference page's by default).
    #[arg(long, default_value = updater::policy::DRAIN_POLICY_CONFIGMAP)]
    drain_policy: String,
    /// Drain policy ConfigMap namespace (default: --namespace).
    #[arg(long)]
    drain_policy_namespace: Option<String>,
    /// Patch policy ConfigMap name.
    #[arg(long, default_value = updater::policy::PATCH_POLICY_CONFIGMAP)]
    patch_policy: String,
    /// Host root mount.
    #[arg(long, default_value = "/host")]
    host_root: std::path::PathBuf,
    /// bootpatch's path on the host.
    #[arg(long, default_value = "/usr/local/sbin/bootpatch")]
    bootpatch: String,
    /// The process whose namespaces and root are the host's (hostPID: true makes PID 1 the
    /// host's systemd).
    #[arg(long, default_value_t = 1, hide = true)]
    host_pid: u32,
    /// Seconds a slot lives without renewal before another node may take it over.
    #[arg(long, default_value_t = 60)]
    lease_seconds: u64,
    /// /metrics and /healthz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Profiling endpoint, served while the drain policy says `profiling: enable`.
    #[arg(long, default_value = "0.0.0.0:8082")]
    profiling_addr: SocketAddr,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() {
    // `host-exec` (the way onto the host, see updater::hostns) must run before any thread
    // exists: a multi-threaded process cannot join a mount namespace.
    updater::hostns::main_if_host_exec();
    let args = Args::parse();
    updater::telemetry::init(args.log_format == "json");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime");
    if let Err(e) = rt.block_on(run(args)) {
        tracing::error!("{e:#}");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let mut opts = updater::agent::AgentOptions::new(&args.node);
    opts.namespace = args.namespace.clone();
    opts.drain_policy_name = args.drain_policy;
    opts.drain_policy_namespace = args.drain_policy_namespace.unwrap_or(args.namespace);
    opts.patch_policy_name = args.patch_policy;
    opts.lease_duration = Duration::from_secs(args.lease_seconds.max(5));
    let kube = updater::kube_util::client_for_agent(opts.watch_timeout).await?;
    let host = updater::host::RealHost {
        root: args.host_root,
        bootpatch: args.bootpatch,
        target_pid: args.host_pid,
        ..updater::host::RealHost::default()
    };
    let client = kube.client.clone();
    let node = args.node.clone();
    if let Err(e) = host.check_layout() {
        let msg = format!("{e:#}");
        if let Err(e2) = updater::agent::record_startup_error(&client, &node, &msg).await {
            tracing::warn!(error = %format!("{e2:#}"), "recording the error on the node");
        }
        return Err(e);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("handling SIGTERM")?;
    let agent = updater::agent::Agent::new(opts, kube, Arc::new(host));
    let _metrics = updater::metrics::serve(
        args.metrics_addr,
        updater::metrics::metrics_handler(agent.metrics.clone(), agent.healthy.clone()),
    )
    .await
    .with_context(|| format!("serving metrics on {}", args.metrics_addr))?;
    let profiling = agent.profiling_switch();
    let addr = args.profiling_addr;
    let _prof = tokio::spawn(async move {
        let mut rx = profiling;
        let mut server = None;
        loop {
            let on = *rx.borrow_and_update();
            if on && server.is_none() {
                match updater::metrics::serve(addr, updater::metrics::profiling_handler()).await {
                    Ok(s) => server = Some(s),
                    Err(e) => tracing::warn!(error = %e, "serving profiling on {addr}"),
                }
            } else if !on {
                server = None;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let signal = tokio::select! {
        r = agent.run() => return r,
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    };
    // The agent's work is dropped here; the host's run, if any, is not touched (it is its
    // own systemd unit, and the host-exec child is not killed).
    match updater::agent::record_stop(&client, &node, signal).await {
        Ok(step) => tracing::info!(step = %step, "stopped by {signal}"),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "recording the stop on the node"),
    }
    Ok(())
}
