//! Fleet benchmark: many agents in one process against the test API server, with SIMULATED host
//! actions (`updater::sim::SimulatedHost`, driven by its behaviour table).
//!
//! ```text
//! make bench-fleet        # the four cases of issue 13, one after the other
//! cargo run --locked --release -p updater --example fleet -- \
//!     --nodes 100 --concurrency 1 [--time-factor 60] [--seed 1] [--idle-hour true]
//! ```
//!
//! The scenario (a per-node table, drawn from `--seed`): `bootpatch apply` takes 30–120 s and
//! patches (versions from the scenario), the patch needs a reboot, the reboot lasts 3–10 x the
//! agent's Lease duration and kills the agent (the simulated host drops it and starts a fresh
//! one from scratch when it is back, as the DaemonSet would), and takes the Node NotReady on the
//! test server meanwhile. One PDB-protected Deployment (3 pods, maxUnavailable 1) per 10 nodes.
//!
//! Time runs faster by `--time-factor F`: every duration of the scenario, and every duration of
//! the agent's own options (the Lease, each deadline, the watch timeout, the steal interval,
//! kubectl's drain retry and poll, the drain policy's timeout), is the real one divided by F,
//! all by the same F, with two floors in wall time: polling intervals no shorter than
//! `MIN_POLL`, deadlines no shorter than `MIN_DEADLINE` (the API server's latency is not
//! scaled). A Lease's duration is whole seconds on the API (`leaseDurationSeconds`), so above
//! F = 60 the Lease object says 1 s and the holder renews at a third of that; the reboots are
//! drawn against the agent's (scaled) duration.
//!
//! Measured from observed state (the test server's store, sampled every `--sample-ms`):
//! - nodes wrongly marked failed: the table says every node succeeds, so any node ever seen at
//!   step `failed`, or ending with a `last-result` other than `success`, or a patched version
//!   other than the table's;
//! - PDB violations: a PDB whose ready, not-terminating pods are fewer than it requires
//!   (`minAvailable`, or the Deployment's replicas minus `maxUnavailable`), counted per
//!   transition into violation;
//! - the cap: Leases with a holder, nodes in a run (any step from `slot-held` to
//!   `uncordoned`: a node releases its slot only once it is back at idle) and nodes cordoned,
//!   each at most maxConcurrency's slots at every sample;
//! - makespan: from the on-demand request to every node back at idle with a result;
//! - the lower bound: each node's minimal cycle is its table's apply plus reboot duration
//!   (drain, API calls and the agent's restart are left out, so the bound is never too high).
//!   No schedule of `cap` parallel slots finishes before max(sum of cycles / cap, longest
//!   cycle): that is the bound (with equal cycles c it is N x c / cap, i.e. ceil(N / cap) x c
//!   when cap divides N).
//!
//! The exit status is 1 if a correctness goal is missed (a node wrongly failed, a PDB
//! violation, the cap exceeded, a wrong version, or the fleet not finished in `--timeout`);
//! the makespan ratio is reported, not judged.

use kube_testserver::resources::{DEPLOYMENTS, LEASES, NODES, PDBS, PODS};
use kube_testserver::{fixtures, util, Filter, Options, Store, TestServer};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use updater::agent::{Agent, AgentOptions};
use updater::drain::Timing;
use updater::kube_util::client_for_kubeconfig;
use updater::node as ann;
use updater::policy::MaxConcurrency;
use updater::sim::{ApplyOutcome, Behaviour, SimulatedHost};

const NS: &str = "bootpatch-system";
const MIN_POLL: Duration = Duration::from_millis(20);
/// Deadlines (and the drain policy's timeout) no shorter than this, in wall time: the API
/// server's latency is not scaled, and at a high time factor a deadline of a few scaled
/// milliseconds would measure it instead of the host. Up to a factor of 300 no deadline of
/// the agent's defaults is this short; the 1,000-node case at maxConcurrency 1 (factor 1200)
/// runs with them floored, and prints them.
const MIN_DEADLINE: Duration = Duration::from_secs(1);
/// How long a real pod takes to start and become Ready (scaled like everything else).
const POD_START: Duration = Duration::from_secs(6);
/// How often the test server's controllers (scheduler, Deployment, node lifecycle) act, real.
const CONTROLLERS: Duration = Duration::from_secs(3);

struct Args {
    nodes: usize,
    concurrency: String,
    factor: f64,
    seed: u64,
    replicas: i64,
    idle_hour: bool,
    timeout: Duration,
    sample: Duration,
}

fn args() -> Args {
    let mut a = Args {
        nodes: 100,
        concurrency: "1".into(),
        factor: 60.0,
        seed: 1,
        replicas: 3,
        idle_hour: true,
        timeout: Duration::from_secs(3600),
        sample: Duration::from_millis(50),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let val = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--nodes" => a.nodes = val.parse().expect("--nodes N"),
            "--concurrency" => a.concurrency = val,
            "--time-factor" => a.factor = val.parse().expect("--time-factor F"),
            "--seed" => a.seed = val.parse().expect("--seed N"),
            "--replicas" => a.replicas = val.parse().expect("--replicas N"),
            "--idle-hour" => a.idle_hour = val.parse().expect("--idle-hour true|false"),
            "--timeout" => a.timeout = Duration::from_secs(val.parse().expect("--timeout SECONDS")),
            "--sample-ms" => a.sample = Duration::from_millis(val.parse().expect("--sample-ms MS")),
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    assert!(a.factor >= 1.0, "--time-factor must be at least 1");
    a
}

/// xorshift64*: the scenario is the same for the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi].
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo).mul_f64(u)
    }
}

/// The agent's options with every duration divided by the time factor.
fn scaled_options(node: &str, f: f64) -> AgentOptions {
    let mut o = AgentOptions::new(node);
    let s = |d: Duration| d.div_f64(f);
    // Polling intervals (not deadlines) no shorter than this: below it they only load the
    // server (the test server's own controllers run every 50 ms).
    let poll = |d: Duration| s(d).max(MIN_POLL);
    o.lease_duration = s(o.lease_duration);
    // The watches' server-side timeout sets the idle cost only: scaled up to F = 60, no
    // shorter than 30 s above (1,000 agents re-watching every second would be the load).
    o.watch_timeout = s(o.watch_timeout).max(Duration::from_secs(30));
    let deadline = |d: Duration| s(d).max(MIN_DEADLINE);
    o.node_ready_timeout = deadline(o.node_ready_timeout);
    o.reboot_deadline = deadline(o.reboot_deadline);
    o.step_deadline = deadline(o.step_deadline);
    o.apply_deadline = deadline(o.apply_deadline);
    o.drain_deadline = deadline(o.drain_deadline);
    o.steal_interval = poll(o.steal_interval);
    o.claim_stagger = poll(o.claim_stagger);
    o.window_check = poll(o.window_check);
    let t = Timing::default();
    o.timing = Timing {
        eviction_retry: poll(t.eviction_retry),
        delete_poll: poll(t.delete_poll),
    };
    o
}

/// The scenario: one behaviour per node, real durations divided by the factor.
fn scenario(nodes: &[String], lease: Duration, f: f64, seed: u64) -> HashMap<String, Behaviour> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let minor = 5 + rng.next() % 10;
    let (before, after) = (format!("12.{minor}"), format!("12.{}", minor + 1));
    nodes
        .iter()
        .map(|n| {
            let apply = rng.between(Duration::from_secs(30), Duration::from_secs(120));
            // The lease is already scaled: the reboot is drawn against it.
            let reboot = rng.between(lease * 3, lease * 10);
            let b = Behaviour {
                // An index refresh, before the slot.
                check_duration: Duration::from_secs(5).div_f64(f),
                apply_duration: apply.div_f64(f),
                outcome: ApplyOutcome::Patched,
                reboot_required: true,
                reboot_duration: reboot,
                reboot_kills_agent: true,
                version_before: before.clone(),
                version_after: after.clone(),
            };
            (n.clone(), b)
        })
        .collect()
}

fn annotation(n: &Value, k: &str) -> String {
    n["metadata"]["annotations"][k]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn name_of(v: &Value) -> String {
    util::str_at(v, "metadata.name").to_string()
}

/// PDB name → (pods it requires available, pods ready and not terminating now).
fn pdb_state(s: &Store) -> Vec<(String, i64, i64)> {
    let mut ready: HashMap<String, i64> = HashMap::new();
    for p in s.list(&PODS, &Filter::default()) {
        if util::path(&p, "metadata.deletionTimestamp").is_none()
            && kube_testserver::controllers::pod_ready(&p)
        {
            *ready
                .entry(util::str_at(&p, "metadata.labels.app").to_string())
                .or_default() += 1;
        }
    }
    let replicas: HashMap<String, i64> = s
        .list(&DEPLOYMENTS, &Filter::default())
        .iter()
        .map(|d| (name_of(d), d["spec"]["replicas"].as_i64().unwrap_or(1)))
        .collect();
    s.list(&PDBS, &Filter::default())
        .iter()
        .map(|p| {
            let app = p["spec"]["selector"]["matchLabels"]["app"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let want = replicas.get(&app).copied().unwrap_or(0);
            let min = match (
                p["spec"]["minAvailable"].as_i64(),
                p["spec"]["maxUnavailable"].as_i64(),
            ) {
                (Some(m), _) => m,
                (None, Some(u)) => want - u,
                _ => panic!("the benchmark's PDBs use integers"),
            };
            (name_of(p), min, ready.get(&app).copied().unwrap_or(0))
        })
        .collect()
}

#[derive(Default)]
struct Seen {
    max_held: usize,
    max_in_run: usize,
    max_cordoned: usize,
    pdb_violations: usize,
    pdb_violation_samples: usize,
    ever_failed: HashSet<String>,
    /// Node → (first sample in a run, last sample back at idle with a result).
    cycle: HashMap<String, (Option<Instant>, Option<Instant>)>,
    samples: usize,
}

fn main() -> anyhow::Result<()> {
    let a = args();
    // The agents' own logs, only when asked for (`RUST_LOG=info`): 1,000 agents are loud.
    if std::env::var_os("RUST_LOG").is_some() {
        updater::telemetry::init(false);
    }
    let f = a.factor;
    let cap = MaxConcurrency::parse(&a.concurrency)?.slots(a.nodes) as usize;
    let setup = Instant::now();
    let server = Arc::new(TestServer::start(Options {
        pod_start_delay: POD_START.div_f64(f),
        controller_interval: CONTROLLERS.div_f64(f).max(Duration::from_millis(10)),
        worker_threads: 1,
        history_size: 200_000,
        ..Options::default()
    })?);
    server.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))?;
    let nodes = server.add_nodes("node", a.nodes);
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
    let want = deployments as i64 * a.replicas;
    let ok = server.wait_until(Duration::from_secs(120), |s| {
        pdb_state(s).iter().map(|p| p.2).sum::<i64>() == want
    });
    assert!(ok, "workloads did not come up");
    let drain_timeout = Duration::from_secs(300).div_f64(f).max(MIN_DEADLINE);
    let drain_timeout_ns = drain_timeout.as_nanos() as u64;
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "palette-agent-config", "namespace": NS},
        "data": {"profiling": "disable", "feature.workloads": "disable",
                 "drain": json!({"timeout": drain_timeout_ns, "gracePeriod": 0,
                                 "ignoreDaemonSets": true, "deleteLocalData": true}).to_string()}}))?;
    server.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bootpatch-patch-policy", "namespace": NS},
        "data": {"maxConcurrency": a.concurrency}}))?;

    let opts_of = |n: &str| scaled_options(n, f);
    let probe = opts_of("probe");
    let table = scenario(&nodes, probe.lease_duration, f, a.seed);
    let cycles: Vec<Duration> = nodes
        .iter()
        .map(|n| table[n].apply_duration + table[n].reboot_duration)
        .collect();
    let sum: Duration = cycles.iter().sum();
    let longest = cycles.iter().max().copied().unwrap_or_default();
    let lower = (sum / cap as u32).max(longest);
    let (rmin, rmax) = (
        table.values().map(|b| b.reboot_duration).min().unwrap(),
        table.values().map(|b| b.reboot_duration).max().unwrap(),
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // For a look from outside while it runs (`kubectl --kubeconfig …`).
    server.write_kubeconfig("/tmp/fleet-kubeconfig")?;
    let kube = {
        let _g = rt.enter();
        client_for_kubeconfig(&server.kubeconfig(), probe.watch_timeout)?
    };
    let mut hosts: HashMap<String, Arc<SimulatedHost>> = HashMap::new();
    for n in &nodes {
        let s = server.clone();
        let h = SimulatedHost::with_behaviour(n, table[n].clone()).with_reboot_hook(Arc::new(
            move |node, down| {
                s.simulate_node_reboot(node, down);
            },
        ));
        hosts.insert(n.clone(), Arc::new(h));
    }
    for n in &nodes {
        let host = hosts[n].clone();
        let (kube, opts) = (kube.clone(), opts_of(n));
        rt.spawn(host.clone().supervise(move || {
            let agent = Agent::new(opts.clone(), kube.clone(), host.clone());
            async move {
                if let Err(e) = agent.run().await {
                    eprintln!("agent ended: {e:#}");
                }
            }
        }));
    }
    let before = table[&nodes[0]].version_before.clone();
    let ok = server.wait_until(Duration::from_secs(600), |s| {
        s.list(&NODES, &Filter::default())
            .iter()
            .all(|n| annotation(n, ann::PATCHED_VERSION) == before)
    });
    assert!(ok, "agents did not come up");
    eprintln!(
        "{} agents up in {:.1} s; requests so far {}",
        a.nodes,
        setup.elapsed().as_secs_f64(),
        kube.requests.load(Ordering::Relaxed)
    );

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let mon = {
        let (s, stop, seen, every) = (server.clone(), stop.clone(), seen.clone(), a.sample);
        std::thread::spawn(move || {
            let mut violated: HashSet<String> = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                s.with_store(|st| {
                    let mut v = seen.lock().unwrap();
                    v.samples += 1;
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
                    v.max_held = v.max_held.max(held);
                    let (mut in_run, mut cordoned) = (0, 0);
                    for n in st.list(&NODES, &Filter::default()) {
                        let step = annotation(&n, ann::STEP);
                        let name = name_of(&n);
                        if n["spec"]["unschedulable"] == json!(true) {
                            cordoned += 1;
                        }
                        if step == "failed" {
                            v.ever_failed.insert(name.clone());
                        }
                        let c = v.cycle.entry(name).or_default();
                        if !matches!(step.as_str(), "" | "idle" | "failed") {
                            // A node releases its slot only after it is back at idle.
                            in_run += 1;
                            c.0.get_or_insert(now);
                        } else if c.0.is_some() && !annotation(&n, ann::LAST_RESULT).is_empty() {
                            c.1.get_or_insert(now);
                        }
                    }
                    v.max_in_run = v.max_in_run.max(in_run);
                    v.max_cordoned = v.max_cordoned.max(cordoned);
                    for (pdb, min, ready) in pdb_state(st) {
                        if ready < min {
                            v.pdb_violation_samples += 1;
                            if violated.insert(pdb) {
                                v.pdb_violations += 1;
                            }
                        } else {
                            violated.remove(&pdb);
                        }
                    }
                });
                std::thread::sleep(every.saturating_sub(now.elapsed()));
            }
        })
    };

    // Everyone, on demand, now.
    let requests_before = kube.requests.load(Ordering::Relaxed);
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
    let done = |s: &Store| {
        s.list(&NODES, &Filter::default()).iter().all(|n| {
            annotation(n, ann::STEP) == "idle" && !annotation(n, ann::LAST_RESULT).is_empty()
                || annotation(n, ann::STEP) == "failed"
        })
    };
    let mut last_report = Instant::now();
    let finished = server.wait_until(a.timeout, |s| {
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            let mut steps: BTreeMap<String, usize> = Default::default();
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
    let run_requests = kube.requests.load(Ordering::Relaxed) - requests_before;
    stop.store(true, Ordering::Relaxed);
    let _ = mon.join();
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    let all = server.list(&NODES, None);
    let mut results: BTreeMap<String, usize> = BTreeMap::new();
    let mut wrongly_failed: HashSet<String> = seen.ever_failed.clone();
    let mut wrong_version = 0;
    let mut not_patched = 0;
    for n in &all {
        let name = name_of(n);
        let result = annotation(n, ann::LAST_RESULT);
        *results.entry(result.clone()).or_default() += 1;
        if result == "failed" || annotation(n, ann::STEP) == "failed" {
            wrongly_failed.insert(name.clone());
        } else if result != "success" {
            not_patched += 1;
        }
        if annotation(n, ann::PATCHED_VERSION) != table[&name].version_after {
            wrong_version += 1;
        }
    }
    // Why nodes failed, the most common messages first (the node's own last-message).
    let mut why: BTreeMap<String, usize> = BTreeMap::new();
    for n in &all {
        if wrongly_failed.contains(&name_of(n)) {
            let m = annotation(n, ann::LAST_MESSAGE);
            // Node and slot names vary: keep the message's shape.
            let shape: String = m
                .split_whitespace()
                .map(|w| {
                    if w.chars().any(|c| c.is_ascii_digit()) {
                        "#"
                    } else {
                        w
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            *why.entry(shape).or_default() += 1;
        }
    }
    let mut why: Vec<(String, usize)> = why.into_iter().collect();
    why.sort_by_key(|w| std::cmp::Reverse(w.1));
    for (m, k) in why.iter().take(5) {
        eprintln!("failed x{k}: {m}");
    }
    let left_cordoned = all
        .iter()
        .filter(|n| n["spec"]["unschedulable"] == json!(true))
        .count();
    let restarts: u64 = hosts
        .values()
        .map(|h| h.agent_starts.load(Ordering::SeqCst).saturating_sub(1))
        .sum();
    let reboots: u64 = hosts
        .values()
        .map(|h| h.reboots.load(Ordering::SeqCst))
        .sum();
    let observed: Vec<f64> = nodes
        .iter()
        .filter_map(|n| match seen.cycle.get(n) {
            Some((Some(s), Some(e))) => Some((*e - *s).as_secs_f64()),
            _ => None,
        })
        .collect();
    let mean_observed = observed.iter().sum::<f64>() / observed.len().max(1) as f64;
    let mean_minimal = sum.as_secs_f64() / nodes.len() as f64;

    // An idle hour, scaled. The watches' timeout is floored (30 s), so an hour shorter than a
    // few of them would count the watches' reconnects at the wrong rate: not measured then.
    let hour = Duration::from_secs(3600).div_f64(f);
    let idle = if a.idle_hour && hour >= probe.watch_timeout * 4 {
        std::thread::sleep(Duration::from_secs(2));
        let before = kube.requests.load(Ordering::Relaxed);
        std::thread::sleep(hour);
        Some((kube.requests.load(Ordering::Relaxed) - before) as f64 / a.nodes as f64)
    } else {
        None
    };

    let ratio = makespan.as_secs_f64() / lower.as_secs_f64().max(1e-9);
    let cap_ok = seen.max_held <= cap && seen.max_in_run <= cap && seen.max_cordoned <= cap;
    let correct = finished
        && wrongly_failed.is_empty()
        && seen.pdb_violations == 0
        && cap_ok
        && wrong_version == 0
        && not_patched == 0
        && left_cordoned == 0;

    println!(
        "fleet benchmark: SIMULATED hosts, time factor {f} (1 real s = {:.1} ms here)",
        1000.0 / f
    );
    println!(
        "  nodes {}, maxConcurrency {} ({cap} slots), {deployments} PDB-protected deployments x {} pods (maxUnavailable 1), seed {}",
        a.nodes, a.concurrency, a.replicas, a.seed
    );
    println!(
        "  agent Lease {:?} (the API object says {} s), reboot deadline {:?}; reboots {:?}..{:?} (3-10 x Lease), killing the agent",
        probe.lease_duration,
        probe.lease_duration.as_secs().max(1),
        probe.reboot_deadline,
        rmin,
        rmax
    );
    println!(
        "  deadlines (no shorter than {MIN_DEADLINE:?} of wall time): drain timeout {drain_timeout:?}, step {:?}, apply {:?}; claim stagger {:?}",
        probe.step_deadline, probe.apply_deadline, probe.claim_stagger
    );
    println!("  finished                      {finished}");
    println!("  results                       {results:?}");
    println!("  reboots / agent restarts      {reboots} / {restarts}");
    println!(
        "  nodes wrongly failed          {} (ever seen failed: {})",
        wrongly_failed.len(),
        seen.ever_failed.len()
    );
    println!("  wrong patched-version         {wrong_version}");
    println!(
        "  other results than success    {not_patched} (not failed: e.g. a drain that timed out)"
    );
    println!(
        "  PDB violations                {} ({} samples of {})",
        seen.pdb_violations, seen.pdb_violation_samples, seen.samples
    );
    println!(
        "  most slots held / in a run / cordoned at once   {} / {} / {} (cap {cap})",
        seen.max_held, seen.max_in_run, seen.max_cordoned
    );
    println!("  nodes left cordoned           {left_cordoned}");
    println!(
        "  makespan                      {:.1} s",
        makespan.as_secs_f64()
    );
    println!(
        "  lower bound                   {:.1} s = max(sum of minimal cycles {:.1} s / {cap}, longest {:.1} s)",
        lower.as_secs_f64(),
        sum.as_secs_f64(),
        longest.as_secs_f64()
    );
    println!("  makespan / lower bound        {ratio:.3}");
    let rate = run_requests as f64 / makespan.as_secs_f64().max(1e-9);
    println!(
        "  API requests during the run   {rate:.0}/s ({:.0} per node per real hour: time runs {f} x faster)",
        rate * 3600.0 / f / a.nodes as f64
    );
    println!(
        "  per-node cycle: minimal {mean_minimal:.2} s (apply + reboot), observed {mean_observed:.2} s (first sample in a run to back at idle; {} nodes)",
        observed.len()
    );
    match idle {
        Some(r) => println!(
            "  API requests/node/idle hour   {r:.2} (an hour at factor {f}; watches time out after {:?})",
            probe.watch_timeout
        ),
        None if a.idle_hour => println!(
            "  API requests/node/idle hour   not measured: the hour at factor {f} ({hour:?}) is shorter than 4 of the watches' {:?} timeouts",
            probe.watch_timeout
        ),
        None => {}
    }
    println!();
    println!("| nodes | maxConcurrency | time factor | makespan | lower bound | ratio | wrongly failed | PDB violations | max slots / in run / cordoned (cap) | left cordoned | restarts | idle req/node/h |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {f} | {:.1} s | {:.1} s | {ratio:.2} | {} | {} | {} / {} / {} ({cap}) | {left_cordoned} | {restarts} | {} |",
        a.nodes,
        a.concurrency,
        makespan.as_secs_f64(),
        lower.as_secs_f64(),
        wrongly_failed.len(),
        seen.pdb_violations,
        seen.max_held,
        seen.max_in_run,
        seen.max_cordoned,
        idle.map_or_else(|| "-".to_string(), |r| format!("{r:.2}"))
    );
    drop(rt);
    if !correct {
        eprintln!("FAIL: a correctness goal was missed (see above)");
        std::process::exit(1);
    }
    Ok(())
}
