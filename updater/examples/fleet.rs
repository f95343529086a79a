//! Fleet benchmark: many agents in one process against the test API server, with SIMULATED host
//! actions (`updater::sim::SimulatedHost`: bootpatch apply and the reboot take set durations;
//! the reboot takes the node NotReady on the server) and random agent crashes.
//!
//! ```text
//! CARGO_TARGET_DIR=target-updater cargo run --release -p updater --example fleet -- \
//!     --nodes 100 --concurrency 1
//! CARGO_TARGET_DIR=target-updater cargo run --release -p updater --example fleet -- \
//!     --nodes 1000 --concurrency 10%
//! ```
//!
//! Reports: makespan against the lower bound (nodes / slots x mean per-node run time), PDB
//! violations (a Deployment with fewer ready pods than its PDB allows, sampled every 50 ms),
//! the most slots held and nodes cordoned at once against the cap, nodes left cordoned, and
//! API requests per node per idle hour. The idle hour is simulated at a time scale: watches
//! time out after `1800 s / scale` and the idle window is `3600 s / scale`, so requests in
//! the window equal requests in a real idle hour with 30-minute watches.
//!
//! Simulation timings (set, not measured on hosts): apply 200 ms, reboot 300 ms; drain with
//! gracePeriod 0, the eviction retry after a 429 shortened from kubectl's 5 s to 500 ms and the
//! delete poll from 1 s to 100 ms (so a run takes about a second, not minutes). Slots are Leases
//! of 30 s (the agent's default is 60 s): the whole fleet and the server share two cores here,
//! and a shorter lease lets an overloaded holder's renewal arrive late and its slot be taken over
//! (which is then reported as failed nodes, as it should be).

use kube_testserver::resources::{LEASES, NODES, PODS};
use kube_testserver::{fixtures, util, Filter, Options, TestServer};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updater::agent::{Agent, AgentOptions};
use updater::drain::Timing;
use updater::kube_util::client_for_kubeconfig;
use updater::metrics::Metrics;
use updater::node as ann;
use updater::policy::MaxConcurrency;
use updater::sim::SimulatedHost;

const NS: &str = "bootpatch-system";

struct Args {
    nodes: usize,
    concurrency: String,
    crash_every_ms: u64,
    scale: u64,
    replicas: i64,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 100,
        concurrency: "1".into(),
        crash_every_ms: 700,
        scale: 60,
        replicas: 3,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < v.len() {
        match v[i].as_str() {
            "--nodes" => a.nodes = v[i + 1].parse().expect("--nodes N"),
            "--concurrency" => a.concurrency = v[i + 1].clone(),
            "--crash-every-ms" => {
                a.crash_every_ms = v[i + 1].parse().expect("--crash-every-ms MS (0 = none)")
            }
            "--time-scale" => a.scale = v[i + 1].parse().expect("--time-scale N"),
            "--replicas" => a.replicas = v[i + 1].parse().expect("--replicas N"),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn annotation(n: &serde_json::Value, k: &str) -> String {
    n["metadata"]["annotations"][k]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn main() -> anyhow::Result<()> {
    let a = args();
    let slots = MaxConcurrency::parse(&a.concurrency)?.slots(a.nodes) as usize;
    let server = Arc::new(TestServer::start(Options {
        pod_start_delay: Duration::from_millis(100),
        controller_interval: Duration::from_millis(50),
        worker_threads: 1,
        history_size: 200_000,
        ..Options::default()
    })?);
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))?;
    let nodes = server.add_nodes("node", a.nodes);
    // PDB-protected deployments: one per 10 nodes, each 3 pods, maxUnavailable 1.
    let deployments = (a.nodes / 10).max(1);
    for d in 0..deployments {
        let name = format!("app-{d}");
        server.apply(fixtures::deployment("default", &name, a.replicas))?;
        server.apply(fixtures::pdb_max_unavailable(
            "default",
            &name,
            &name,
            json!(1),
        ))?;
    }
    let ready_of = |s: &kube_testserver::Store| -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for p in s.list(&PODS, &Filter::default()) {
            if util::path(&p, "metadata.deletionTimestamp").is_none()
                && kube_testserver::controllers::pod_ready(&p)
            {
                *m.entry(util::str_at(&p, "metadata.labels.app").to_string())
                    .or_default() += 1;
            }
        }
        m
    };
    let want = deployments * a.replicas as usize;
    let ok = server.wait_until(Duration::from_secs(120), |s| {
        ready_of(s).values().sum::<usize>() == want
    });
    assert!(ok, "workloads did not come up");
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "palette-agent-config", "namespace": NS},
        "data": {"profiling": "disable", "feature.workloads": "disable",
                 "drain": "{\"timeout\": \"300s\", \"gracePeriod\": 0, \"ignoreDaemonSets\": true, \"deleteLocalData\": true}"}}))?;
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bootpatch-patch-policy", "namespace": NS},
        "data": {"maxConcurrency": a.concurrency}}))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let watch_timeout = Duration::from_secs(1800 / a.scale.max(1));
    server.write_kubeconfig("/tmp/fleet-kubeconfig")?;
    let kube = {
        let _g = rt.enter();
        client_for_kubeconfig(&server.kubeconfig(), watch_timeout)?
    };
    let mut hosts = HashMap::new();
    for n in &nodes {
        let s = server.clone();
        let h = SimulatedHost::new(
            n,
            Duration::from_millis(200),
            Duration::from_millis(300),
            true,
        )
        .with_reboot_hook(Arc::new(move |node, down| {
            s.simulate_node_reboot(node, down);
        }));
        hosts.insert(n.clone(), Arc::new(h));
    }
    let metrics: Arc<Mutex<HashMap<String, Arc<Metrics>>>> = Arc::default();
    let handles: Arc<Mutex<HashMap<String, tokio::task::JoinHandle<()>>>> = Arc::default();
    let start_agent = {
        let kube = kube.clone();
        let hosts = hosts.clone();
        let metrics = metrics.clone();
        let handles = handles.clone();
        let rt = rt.handle().clone();
        move |n: &str| {
            let mut o = AgentOptions::new(n);
            o.lease_duration = Duration::from_secs(30);
            o.watch_timeout = watch_timeout;
            o.timing = Timing {
                eviction_retry: Duration::from_millis(500),
                delete_poll: Duration::from_millis(100),
            };
            o.node_ready_timeout = Duration::from_secs(10);
            o.steal_interval = Duration::from_secs(5);
            let agent = Agent::new(o, kube.clone(), hosts[n].clone());
            metrics
                .lock()
                .unwrap()
                .insert(n.to_string(), agent.metrics.clone());
            let h = rt.spawn(async move {
                let _ = agent.run().await;
            });
            if let Some(old) = handles.lock().unwrap().insert(n.to_string(), h) {
                old.abort();
            }
        }
    };
    for n in &nodes {
        start_agent(n);
    }
    let ok = server.wait_until(Duration::from_secs(300), |s| {
        s.list(&NODES, &Filter::default())
            .iter()
            .all(|n| annotation(n, ann::PATCHED_VERSION) == "12.10")
    });
    assert!(ok, "agents did not come up");
    eprintln!(
        "{} agents up; requests so far {}",
        a.nodes,
        kube.requests.load(Ordering::Relaxed)
    );

    // Monitor: slots held, nodes cordoned, PDB violations.
    let stop = Arc::new(AtomicBool::new(false));
    let max_held = Arc::new(AtomicUsize::new(0));
    let max_cordoned = Arc::new(AtomicUsize::new(0));
    let violations = Arc::new(AtomicUsize::new(0));
    let mon = {
        let (s, stop, mh, mc, v) = (
            server.clone(),
            stop.clone(),
            max_held.clone(),
            max_cordoned.clone(),
            violations.clone(),
        );
        let replicas = a.replicas as usize;
        std::thread::spawn(move || {
            let mut violated: HashMap<String, bool> = HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                s.with_store(|st| {
                    let held = st
                        .list(
                            &LEASES,
                            &Filter {
                                namespace: Some(NS.into()),
                                ..Filter::default()
                            },
                        )
                        .iter()
                        .filter(|l| !util::str_at(l, "spec.holderIdentity").is_empty())
                        .count();
                    mh.fetch_max(held, Ordering::Relaxed);
                    let cordoned = st
                        .list(&NODES, &Filter::default())
                        .iter()
                        .filter(|n| n["spec"]["unschedulable"] == json!(true))
                        .count();
                    mc.fetch_max(cordoned, Ordering::Relaxed);
                    let ready = ready_of(st);
                    for d in 0..deployments {
                        let name = format!("app-{d}");
                        let bad = ready.get(&name).copied().unwrap_or(0) + 1 < replicas;
                        let was = violated.insert(name, bad).unwrap_or(false);
                        if bad && !was {
                            v.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    // Crash injector: every `--crash-every-ms`, kills a random agent that is mid-run and restarts
    // it 300 ms later (within the lease duration, so it resumes its own slot).
    let crashes = Arc::new(AtomicUsize::new(0));
    let crasher = {
        let (stop, crashes, s) = (stop.clone(), crashes.clone(), server.clone());
        let handles = handles.clone();
        let start_agent = start_agent.clone();
        let every = a.crash_every_ms;
        std::thread::spawn(move || {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            while every > 0 && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(every));
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let running: Vec<String> = s
                    .list(&NODES, None)
                    .iter()
                    .filter(|n| {
                        !matches!(annotation(n, ann::STEP).as_str(), "" | "idle" | "failed")
                    })
                    .map(|n| util::str_at(n, "metadata.name").to_string())
                    .collect();
                if running.is_empty() {
                    continue;
                }
                let n = &running[(x % running.len() as u64) as usize];
                if let Some(h) = handles.lock().unwrap().remove(n) {
                    h.abort();
                }
                crashes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(300));
                start_agent(n);
            }
        })
    };

    // Everyone, on demand, now.
    let t0 = Instant::now();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for n in &nodes {
        server.with_store(|s| {
            s.patch(
                &NODES,
                "",
                n,
                kube_testserver::store::PatchType::Merge,
                &json!({"metadata": {"annotations": {ann::PATCH_REQUESTED: now}}}),
                false,
                false,
            )
        })?;
    }
    let done = |s: &kube_testserver::Store| {
        s.list(&NODES, &Filter::default()).iter().all(|n| {
            annotation(n, ann::STEP) == "idle" && !annotation(n, ann::LAST_RESULT).is_empty()
                || annotation(n, ann::STEP) == "failed"
        })
    };
    let mut last_report = Instant::now();
    let finished = server.wait_until(Duration::from_secs(3600), |s| {
        if last_report.elapsed() > Duration::from_secs(10) {
            last_report = Instant::now();
            let mut steps: std::collections::BTreeMap<String, usize> = Default::default();
            for n in s.list(&NODES, &Filter::default()) {
                *steps
                    .entry(format!(
                        "{}/{}",
                        annotation(&n, ann::STEP),
                        annotation(&n, ann::LAST_RESULT)
                    ))
                    .or_default() += 1;
            }
            eprintln!("{:>6.1} s: {steps:?}", t0.elapsed().as_secs_f64());
        }
        done(s)
    });
    let makespan = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = mon.join();
    let _ = crasher.join();

    let all = server.list(&NODES, None);
    let results: HashMap<String, usize> = all.iter().fold(HashMap::new(), |mut m, n| {
        *m.entry(annotation(n, ann::LAST_RESULT)).or_default() += 1;
        m
    });
    let left_cordoned = all
        .iter()
        .filter(|n| n["spec"]["unschedulable"] == json!(true))
        .count();
    let durations: Vec<f64> = metrics
        .lock()
        .unwrap()
        .values()
        .map(|m| m.patch_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0)
        .filter(|d| *d > 0.0)
        .collect();
    let mean = durations.iter().sum::<f64>() / durations.len().max(1) as f64;
    let lower = (a.nodes as f64 / slots as f64).ceil() * mean;

    // Idle: every node patched; count requests over a (scaled) idle hour.
    std::thread::sleep(Duration::from_secs(2));
    let before = kube.requests.load(Ordering::Relaxed);
    let idle = Duration::from_secs(3600 / a.scale.max(1));
    std::thread::sleep(idle);
    let idle_requests = kube.requests.load(Ordering::Relaxed) - before;

    println!("fleet benchmark (SIMULATED bootpatch apply 200 ms and reboot 300 ms; drain retry 500 ms, poll 100 ms)");
    println!("  nodes                         {}", a.nodes);
    println!(
        "  maxConcurrency                {} ({} slots)",
        a.concurrency, slots
    );
    println!(
        "  PDB-protected deployments     {} x {} pods (maxUnavailable 1)",
        deployments, a.replicas
    );
    println!("  finished                      {finished}");
    println!("  results                       {results:?}");
    println!(
        "  agent crashes injected        {}",
        crashes.load(Ordering::Relaxed)
    );
    println!(
        "  makespan                      {:.1} s",
        makespan.as_secs_f64()
    );
    println!(
        "  mean per-node run time        {:.2} s (slot taken to released)",
        mean
    );
    println!(
        "  lower bound                   {:.1} s (ceil(nodes/slots) x per-node)",
        lower
    );
    println!(
        "  makespan / lower bound        {:.2}",
        makespan.as_secs_f64() / lower.max(1e-9)
    );
    println!(
        "  PDB violations                {}",
        violations.load(Ordering::Relaxed)
    );
    println!(
        "  most slots held at once       {} (cap {slots})",
        max_held.load(Ordering::Relaxed)
    );
    println!(
        "  most nodes cordoned at once   {} (cap {slots})",
        max_cordoned.load(Ordering::Relaxed)
    );
    println!("  nodes left cordoned           {left_cordoned}");
    println!(
        "  API requests/node/idle hour   {:.2} (time scale {}: {} s window, watches time out after {} s)",
        idle_requests as f64 / a.nodes as f64,
        a.scale,
        idle.as_secs(),
        watch_timeout.as_secs()
    );
    drop(rt);
    Ok(())
}
