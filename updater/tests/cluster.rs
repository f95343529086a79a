//! Agents against the test API server, one agent per node in this process, with SIMULATED host
//! actions (`updater::sim::SimulatedHost`: bootpatch apply and the reboot take set durations;
//! the reboot takes the node NotReady on the test server). 3-node and 20-node clusters:
//! scheduled and on-demand runs, a drain blocked by a PDB until its timeout, agents killed at
//! every step and restarted, a node that never returns, an admin-cordoned node, a malformed
//! ConfigMap, a managed node pool. Every wait has a timeout.

mod common;

use chrono::SubsecRound;
use common::Cluster;
use kube_testserver::fixtures;
use kube_testserver::resources::{CONFIGMAPS, EVENTS, LEASES, NODES, PODS};
use kube_testserver::store::{PatchType, Store};
use kube_testserver::{util, Filter, Options};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use updater::agent::{Agent, AgentOptions};
use updater::cycle::Step;
use updater::kube_util::client_for_kubeconfig;
use updater::node as ann;
use updater::sim::{ApplyOutcome, Behaviour, Behaviours, SimulatedHost};

const NS: &str = "bootpatch-system";

struct Fleet {
    c: Arc<Cluster>,
    rt: tokio::runtime::Runtime,
    hosts: HashMap<String, Arc<SimulatedHost>>,
    agents: HashMap<String, tokio::task::JoinHandle<()>>,
    nodes: Vec<String>,
    /// Step changes up to this resourceVersion are the test's own setup, not judged.
    setup_rv: u64,
}

fn drain_policy(json: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "palette-agent-config", "namespace": NS},
        "data": {"profiling": "disable", "feature.workloads": "enable", "drain": json}})
}

fn patch_policy(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "bootpatch-patch-policy", "namespace": NS}, "data": data})
}

fn fast_opts(node: &str) -> AgentOptions {
    let mut o = AgentOptions::new(node);
    // Long enough that a loaded CI machine does not delay a renewal past it.
    o.lease_duration = Duration::from_secs(5);
    o.watch_timeout = Duration::from_secs(60);
    o.node_ready_timeout = Duration::from_secs(10);
    o.steal_interval = Duration::from_secs(1);
    o.window_check = Duration::from_secs(1);
    // A lost node (one that never comes back) is given up on quickly.
    o.reboot_deadline = Duration::from_secs(10);
    o.step_deadline = Duration::from_secs(20);
    // Applies take 300 ms here: one that hangs is given up on after 5 s.
    o.apply_deadline = Duration::from_secs(5);
    o.drain_deadline = Duration::from_secs(20);
    o
}

/// The simulated fleet's behaviour unless a test says otherwise: the versions are the
/// scenario's, and the assertions read them from here.
const BEFORE: &str = "12.7";
const AFTER: &str = "12.8";

fn default_behaviour() -> Behaviour {
    Behaviour::patched(
        Duration::from_millis(300),
        Duration::from_millis(700),
        BEFORE,
        AFTER,
    )
}

impl Fleet {
    fn new(n: usize, drain_json: &str, patch: Value) -> Self {
        Self::with_behaviours(n, drain_json, patch, Behaviours::new(default_behaviour()))
    }

    fn with_behaviours(n: usize, drain_json: &str, patch: Value, table: Behaviours) -> Self {
        let c = Arc::new(Cluster::start_with(Options {
            pod_start_delay: Duration::from_millis(200),
            // The agents must not take their watch cache for a read of their own writes.
            watch_latency: Duration::from_millis(100),
            // Every change kept: the step changes are checked against the machine at the end.
            history_size: 1_000_000,
            ..Options::default()
        }));
        c.server
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
            .unwrap();
        let nodes = c.server.add_nodes("node", n);
        c.server.apply(drain_policy(drain_json)).unwrap();
        c.server.apply(patch_policy(patch)).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut hosts = HashMap::new();
        for name in &nodes {
            let cc = c.clone();
            let h = SimulatedHost::with_behaviour(name, table.for_node(name)).with_reboot_hook(
                Arc::new(move |node, down| {
                    cc.server.simulate_node_reboot(node, down);
                }),
            );
            hosts.insert(name.clone(), Arc::new(h));
        }
        Self {
            c,
            rt,
            hosts,
            agents: HashMap::new(),
            nodes,
            setup_rv: 0,
        }
    }

    fn start(&mut self, node: &str) {
        self.start_with(node, fast_opts(node));
    }

    /// Starts the node's agent under its simulated host's supervision: a reboot that kills
    /// the agent drops it, and a fresh one starts when the host is back.
    fn start_with(&mut self, node: &str, opts: AgentOptions) {
        let kubeconfig = self.c.server.kubeconfig();
        self.spawn_agent(node, opts, &kubeconfig);
    }

    fn spawn_agent(&mut self, node: &str, opts: AgentOptions, kubeconfig: &str) {
        let _g = self.rt.enter();
        let kube = client_for_kubeconfig(kubeconfig, opts.watch_timeout).unwrap();
        let host = self.hosts[node].clone();
        let h = self.rt.spawn(host.clone().supervise(move || {
            let agent = Agent::new(opts.clone(), kube.clone(), host.clone());
            async move {
                if let Err(e) = agent.run().await {
                    eprintln!("agent ended: {e:#}");
                }
            }
        }));
        if let Some(old) = self.agents.insert(node.to_string(), h) {
            old.abort();
        }
    }

    /// Starts the node's agent behind an API outage switch: while `down` is true, its
    /// connections to the API server are cut and new ones refused (the other agents are
    /// not affected). A stand-in for a network or API server outage seen by one node.
    fn start_behind_outage_switch(
        &mut self,
        node: &str,
        opts: AgentOptions,
        down: Arc<tokio::sync::watch::Sender<bool>>,
    ) {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let proxy = format!("{}", listener.local_addr().unwrap());
        let target = self.c.server.addr();
        let d = down.clone();
        self.rt.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *d.borrow() {
                    continue;
                }
                let mut cut = d.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { cut.wait_for(|down| *down).await.map(|_| ()) } => {}
                    }
                });
            }
        });
        let kubeconfig = self
            .c
            .server
            .kubeconfig()
            .replace(&self.c.server.addr().to_string(), &proxy);
        self.spawn_agent(node, opts, &kubeconfig);
    }

    fn start_all(&mut self) {
        for n in self.nodes.clone() {
            self.start(&n);
        }
    }

    /// Kills an agent (in-process task cancellation: everything it was doing stops).
    fn kill(&mut self, node: &str) {
        if let Some(h) = self.agents.remove(node) {
            h.abort();
            let _ = self.rt.block_on(h);
        }
    }

    fn node(&self, n: &str) -> Value {
        self.c.server.get(&NODES, "", n).unwrap()
    }

    fn ann(&self, n: &str, key: &str) -> String {
        annotation(&self.node(n), key)
    }

    fn ospatch(&self, args: &[&str]) -> common::Out {
        self.c.run_for(
            env!("CARGO_BIN_EXE_kubectl-ospatch"),
            args,
            Duration::from_secs(30),
        )
    }

    /// Waits for every slot to be free: a node releases its slot just after it is back at
    /// idle with its result, so a test that waited for the result waits for this too.
    fn slots_released(&self) {
        self.wait("every slot released", 10, |s| held_leases(s) == 0);
    }

    fn wait(&self, what: &str, secs: u64, cond: impl FnMut(&Store) -> bool) {
        assert!(
            self.c.server.wait_until(Duration::from_secs(secs), cond),
            "timed out after {secs}s waiting for {what}; nodes: {:#?}",
            self.nodes
                .iter()
                .map(|n| (
                    n.clone(),
                    self.ann(n, ann::STEP),
                    self.ann(n, ann::LAST_RESULT),
                    self.ann(n, ann::LAST_MESSAGE),
                    unschedulable(&self.node(n))
                ))
                .collect::<Vec<_>>()
        );
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (_, h) in self.agents.drain() {
            h.abort();
        }
        // Whatever the test did, every step change it caused must be a transition.
        if !std::thread::panicking() {
            common::assert_step_changes_allowed(&self.c.server, self.setup_rv);
        }
    }
}

fn annotation(node: &Value, key: &str) -> String {
    node["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn unschedulable(node: &Value) -> bool {
    node["spec"]["unschedulable"].as_bool().unwrap_or(false)
}

fn nodes_of(s: &Store) -> Vec<Value> {
    s.list(&NODES, &Filter::default())
        .into_iter()
        .map(|o| (*o).clone())
        .collect()
}

/// Whether every one of `nodes` is idle, and `also` holds for it.
fn all_idle_and(s: &Store, nodes: &[String], also: impl Fn(&Value) -> bool) -> bool {
    let all = nodes_of(s);
    nodes.iter().all(|n| {
        all.iter().any(|o| {
            util::str_at(o, "metadata.name") == n && annotation(o, ann::STEP) == "idle" && also(o)
        })
    })
}

fn all_results(s: &Store, nodes: &[String], result: &str) -> bool {
    all_idle_and(s, nodes, |o| annotation(o, ann::LAST_RESULT) == result)
}

fn held_leases(s: &Store) -> usize {
    s.list(
        &LEASES,
        &Filter {
            namespace: Some(NS.into()),
            ..Filter::default()
        },
    )
    .iter()
    .filter(|l| !util::str_at(l, "spec.holderIdentity").is_empty())
    .count()
}

/// The nodes that took slot `slot`, in the order they took it (from the server's history).
fn slot_holders(s: &Store, slot: &str) -> Vec<String> {
    let (changes, complete) = s.changes(&LEASES);
    assert!(complete, "the server's history dropped changes");
    let holder = |o: &Value| util::str_at(o, "spec.holderIdentity").to_string();
    changes
        .iter()
        .filter(|e| util::str_at(&e.obj, "metadata.name") == slot && !e.deleted)
        .filter(|e| {
            let h = holder(&e.obj);
            !h.is_empty() && e.old.as_ref().is_none_or(|o| holder(o) != h)
        })
        .map(|e| holder(&e.obj))
        .collect()
}

fn events_with_reason(s: &Store, reason: &str) -> Vec<Value> {
    s.list(&EVENTS, &Filter::default())
        .into_iter()
        .filter(|e| util::str_at(e, "reason") == reason)
        .map(|e| (*e).clone())
        .collect()
}

fn ready_pods(s: &Store, app: &str) -> usize {
    s.list(&PODS, &Filter::default())
        .iter()
        .filter(|p| util::str_at(p, "metadata.labels.app") == app)
        .filter(|p| util::path(p, "metadata.deletionTimestamp").is_none())
        .filter(|p| kube_testserver::controllers::pod_ready(p))
        .count()
}

/// Samples the cluster in the background: the most slots held and nodes cordoned by the
/// agents at once, and the fewest ready pods of `app`.
struct Monitor {
    stop: Arc<AtomicBool>,
    max_held: Arc<AtomicUsize>,
    max_cordoned: Arc<AtomicUsize>,
    min_ready: Arc<AtomicUsize>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(c: &Arc<Cluster>, app: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max_held = Arc::new(AtomicUsize::new(0));
        let max_cordoned = Arc::new(AtomicUsize::new(0));
        let min_ready = Arc::new(AtomicUsize::new(usize::MAX));
        let (s, h, cd, r, c) = (
            stop.clone(),
            max_held.clone(),
            max_cordoned.clone(),
            min_ready.clone(),
            c.clone(),
        );
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                c.server.with_store(|st| {
                    h.fetch_max(held_leases(st), Ordering::Relaxed);
                    let cordoned = nodes_of(st)
                        .iter()
                        .filter(|n| {
                            annotation(n, ann::CORDONED_BY_AGENT) == "true" && unschedulable(n)
                        })
                        .count();
                    cd.fetch_max(cordoned, Ordering::Relaxed);
                    r.fetch_min(ready_pods(st, app), Ordering::Relaxed);
                });
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Self {
            stop,
            max_held,
            max_cordoned,
            min_ready,
            t: Some(t),
        }
    }

    fn finish(mut self) -> (usize, usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
        (
            self.max_held.load(Ordering::Relaxed),
            self.max_cordoned.load(Ordering::Relaxed),
            self.min_ready.load(Ordering::Relaxed),
        )
    }
}

const DRAIN_OK: &str = r#"{"timeout": "60s", "gracePeriod": 0, "deleteLocalData": true, "ignoreDaemonSets": true, "force": false}"#;

fn seed_workloads(f: &Fleet, replicas: i64) {
    f.c.server
        .apply(fixtures::daemonset("default", "node-agent"))
        .unwrap();
    f.c.server
        .apply(fixtures::deployment("default", "web", replicas))
        .unwrap();
    f.c.server
        .apply(fixtures::pdb_max_unavailable(
            "default",
            "web",
            "web",
            json!(1),
        ))
        .unwrap();
    f.wait("web ready", 20, |s| {
        ready_pods(s, "web") == replicas as usize
    });
}

#[test]
fn three_nodes_first_boot_status_then_on_demand_run_one_at_a_time() {
    let mut f = Fleet::new(3, DRAIN_OK, json!({"maxConcurrency": "1"}));
    seed_workloads(&f, 3);
    f.start_all();
    let nodes = f.nodes.clone();
    // The first-boot result is published from the host's state file.
    f.wait("first-boot state published", 10, |s| {
        nodes_of(s).iter().all(|n| {
            annotation(n, ann::PATCHED_VERSION) == BEFORE
                && annotation(n, ann::FIRST_BOOT_RESULT).starts_with("patched")
        })
    });
    let o = f.ospatch(&["status"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.starts_with("NODE"), "{}", o.stdout);
    assert!(
        o.stdout.contains("PATCHED VERSION")
            && o.stdout.contains("LAST APPLIED PATCH TIME")
            && o.stdout.contains("REBOOT REQUIRED")
    );
    assert!(
        o.stdout.lines().any(|l| l.starts_with("node-1")
            && l.contains(BEFORE)
            && l.contains("2026-01-01T00:00:00Z")
            && l.contains("idle")),
        "{}",
        o.stdout
    );

    let mon = Monitor::start(&f.c, "web");
    let o = f.ospatch(&["now"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(o.stdout.lines().count(), 3);
    f.wait("all nodes patched", 90, |s| {
        all_results(s, &nodes, "success")
    });
    let (held, cordoned, min_ready) = mon.finish();
    assert_eq!(held, 1, "at most one slot held");
    assert_eq!(cordoned, 1, "at most one node cordoned at a time");
    assert!(
        min_ready >= 2,
        "PDB (maxUnavailable 1) violated: {min_ready} ready"
    );
    for n in &nodes {
        let node = f.node(n);
        assert!(!unschedulable(&node), "{n} left cordoned");
        assert_eq!(annotation(&node, ann::PATCHED_VERSION), AFTER);
        assert_eq!(annotation(&node, ann::REBOOT_REQUIRED), "false");
        assert!(annotation(&node, ann::LAST_APPLIED_PATCH_TIME).starts_with("20"));
        assert_eq!(
            f.hosts[n].reboots.load(Ordering::SeqCst),
            1,
            "{n} rebooted once"
        );
        assert!(annotation(&node, ann::WORKLOADS_MOVED).starts_with('['));
    }
    f.slots_released();
    // Turns: every node waited from the start, so each release went to the next node in
    // name order after the one that released it (not to whichever claimed first).
    let mut sorted = nodes.clone();
    sorted.sort();
    let holders = f.c.server.with_store(|s| slot_holders(s, "ospatch-slot-0"));
    assert_eq!(holders.len(), 3, "{holders:?}");
    for w in holders.windows(2) {
        let i = sorted.iter().position(|n| *n == w[0]).unwrap();
        assert_eq!(w[1], sorted[(i + 1) % 3], "out of turn: {holders:?}");
    }
    // Each step's Event is posted just after its annotation is written: the last node's
    // OSPatchIdle may still be on its way when the wait above sees the annotation.
    f.wait("an event of every step for every node", 10, |s| {
        [
            "OSPatchSlotHeld",
            "OSPatchCordoned",
            "OSPatchDrained",
            "OSPatchPatching",
            "OSPatchRebooting",
            "OSPatchUncordoned",
            "OSPatchIdle",
            "OSPatchFirstBoot",
        ]
        .iter()
        .all(|r| events_with_reason(s, r).len() >= 3)
    });
    let o = f.ospatch(&["status"]);
    assert!(
        o.stdout
            .lines()
            .filter(|l| l.contains(AFTER) && l.contains("success"))
            .count()
            == 3,
        "{}",
        o.stdout
    );
    // Once is once: nothing more happens.
    std::thread::sleep(Duration::from_secs(2));
    assert!(nodes
        .iter()
        .all(|n| f.hosts[n].applies.load(Ordering::SeqCst) == 1));
}

#[test]
fn twenty_nodes_scheduled_run_respects_concurrency_pdb_and_an_admin_cordon() {
    let mut f = Fleet::new(
        20,
        DRAIN_OK,
        json!({"maxConcurrency": "25%", "schedule": "* * * * *", "paused": "true"}),
    );
    seed_workloads(&f, 10);
    // An admin cordons node-7 before the run: it must stay cordoned.
    let o = f.c.kubectl(&["cordon", "node-7"]);
    assert_eq!(o.code, 0, "{o:?}");
    f.start_all();
    let nodes = f.nodes.clone();
    f.wait("agents up", 20, |s| {
        nodes_of(s)
            .iter()
            .all(|n| annotation(n, ann::PATCHED_VERSION) == BEFORE)
    });
    let mon = Monitor::start(&f.c, "web");
    let o = f.ospatch(&["resume"]);
    assert_eq!(o.code, 0, "{o:?}");
    // The schedule fires every minute: on a loaded machine a node patched in the first
    // minute runs again in the next, finds nothing and records `up-to-date`. Being on the
    // new version and idle is what "patched on schedule" means here.
    f.wait("all 20 patched on schedule", 240, |s| {
        all_idle_and(s, &nodes, |o| {
            annotation(o, ann::PATCHED_VERSION) == AFTER
                && ["success", "up-to-date"].contains(&annotation(o, ann::LAST_RESULT).as_str())
        })
    });
    let (held, cordoned, min_ready) = mon.finish();
    assert!(held <= 5, "more than 25% of 20 slots held: {held}");
    assert!(cordoned <= 5, "{cordoned} cordoned at once");
    assert!(min_ready >= 9, "PDB violated: {min_ready} of 10 ready");
    assert!(
        unschedulable(&f.node("node-7")),
        "the admin's cordon was undone"
    );
    assert_eq!(
        annotation(&f.node("node-7"), ann::CORDONED_BY_AGENT),
        "false"
    );
    for n in nodes.iter().filter(|n| *n != "node-7") {
        assert!(!unschedulable(&f.node(n)), "{n} left cordoned");
    }
    f.slots_released();
}

#[test]
fn drain_blocked_by_a_pdb_until_timeout_uncordons_releases_and_records_why() {
    drain_blocked_by_a_pdb(r#"{"timeout": "3s", "ignoreDaemonSets": true}"#, &[]);
}

/// `timeout: 0` is "no timeout" on the reference page: the agent's own drain deadline applies.
#[test]
fn a_drain_without_a_timeout_meets_the_agents_drain_deadline() {
    drain_blocked_by_a_pdb(
        r#"{"timeout": 0, "ignoreDaemonSets": true}"#,
        &["no timeout", "drain deadline of 3s"],
    );
}

fn drain_blocked_by_a_pdb(drain_json: &str, also_in_message: &[&str]) {
    let mut f = Fleet::new(3, drain_json, json!({"maxConcurrency": "1"}));
    // Two web pods, both on node-1, and a PDB that allows no disruption.
    for n in ["node-2", "node-3"] {
        f.c.server
            .with_store(|s| {
                s.patch(
                    &NODES,
                    "",
                    n,
                    PatchType::Merge,
                    &json!({"spec": {"unschedulable": true}}),
                    false,
                    false,
                )
            })
            .unwrap();
    }
    f.c.server
        .apply(fixtures::deployment("default", "web", 2))
        .unwrap();
    f.wait("web ready", 20, |s| ready_pods(s, "web") == 2);
    for n in ["node-2", "node-3"] {
        f.c.server
            .with_store(|s| {
                s.patch(
                    &NODES,
                    "",
                    n,
                    PatchType::Merge,
                    &json!({"spec": {"unschedulable": null}}),
                    false,
                    false,
                )
            })
            .unwrap();
    }
    f.c.server
        .apply(fixtures::pdb_min_available(
            "default",
            "web",
            "web",
            json!(2),
        ))
        .unwrap();
    let mut o = fast_opts("node-1");
    o.drain_deadline = Duration::from_secs(3);
    f.start_with("node-1", o);
    let o = f.ospatch(&["now", "node-1"]);
    assert_eq!(o.code, 0, "{o:?}");
    // The node goes back to idle, then releases its slot.
    f.wait("drain timed out, slot released", 30, |s| {
        held_leases(s) == 0
            && nodes_of(s).iter().any(|n| {
                util::str_at(n, "metadata.name") == "node-1"
                    && annotation(n, ann::LAST_RESULT) == "drain-timeout"
                    && annotation(n, ann::STEP) == "idle"
            })
    });
    let node = f.node("node-1");
    assert!(!unschedulable(&node), "uncordoned after the failed drain");
    let msg = annotation(&node, ann::LAST_MESSAGE);
    assert!(msg.contains("global timeout reached: 3s"), "{msg}");
    for part in also_in_message {
        assert!(msg.contains(part), "{part:?} not in {msg}");
    }
    assert_eq!(
        f.hosts["node-1"].applies.load(Ordering::SeqCst),
        0,
        "not patched"
    );
    f.c.server.with_store(|s| {
        assert_eq!(held_leases(s), 0, "slot released");
        assert!(!events_with_reason(s, "OSPatchDrainFailed").is_empty());
        assert_eq!(ready_pods(s, "web"), 2, "nothing evicted past the PDB");
    });
    // Not retried until the next window / request.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        annotation(&f.node("node-1"), ann::LAST_RESULT),
        "drain-timeout"
    );
}

#[test]
fn agent_killed_at_every_step_resumes_and_finishes() {
    for step in [
        Step::SlotHeld,
        Step::Cordoned,
        Step::Drained,
        Step::Patching,
        Step::Rebooting,
        Step::Uncordoned,
    ] {
        let mut f = Fleet::new(3, DRAIN_OK, json!({"maxConcurrency": "1"}));
        seed_workloads(&f, 3);
        let mut o = fast_opts("node-1");
        o.freeze_after_step = Some(step);
        f.start_with("node-1", o);
        let o = f.ospatch(&["now", "node-1"]);
        assert_eq!(o.code, 0);
        f.wait(&format!("step {step}"), 30, |s| {
            nodes_of(s).iter().any(|n| {
                util::str_at(n, "metadata.name") == "node-1"
                    && annotation(n, ann::STEP) == step.as_str()
            })
        });
        f.kill("node-1");
        f.start("node-1");
        let nodes = vec!["node-1".to_string()];
        f.wait(&format!("finish after a kill at {step}"), 60, |s| {
            all_results(s, &nodes, "success")
        });
        let node = f.node("node-1");
        assert!(!unschedulable(&node), "killed at {step}: left cordoned");
        assert_eq!(
            annotation(&node, ann::PATCHED_VERSION),
            AFTER,
            "killed at {step}"
        );
        f.slots_released();
        let reboots = f.hosts["node-1"].reboots.load(Ordering::SeqCst);
        assert_eq!(reboots, 1, "killed at {step}: {reboots} reboots");
    }
}

#[test]
fn agent_killed_mid_drain_resumes() {
    // Evicted pods take 3 s to terminate, and the drain waits for them: killed while they do.
    let drain = r#"{"timeout": "60s", "gracePeriod": 3, "deleteLocalData": true, "ignoreDaemonSets": true}"#;
    let mut f = Fleet::new(3, drain, json!({"maxConcurrency": "1"}));
    seed_workloads(&f, 3);
    f.start("node-1");
    f.ospatch(&["now", "node-1"]);
    f.wait("cordoned, a pod terminating", 30, |s| {
        let terminating = s.list(&PODS, &Filter::default()).iter().any(|p| {
            util::str_at(p, "spec.nodeName") == "node-1"
                && util::path(p, "metadata.deletionTimestamp").is_some()
        });
        terminating
            && nodes_of(s).iter().any(|n| {
                util::str_at(n, "metadata.name") == "node-1"
                    && annotation(n, ann::STEP) == "cordoned"
            })
    });
    f.kill("node-1");
    std::thread::sleep(Duration::from_millis(300));
    f.start("node-1");
    let nodes = vec!["node-1".to_string()];
    f.wait("finish", 60, |s| all_results(s, &nodes, "success"));
    assert!(!unschedulable(&f.node("node-1")));
}

#[test]
fn a_node_that_never_returns_is_taken_over_left_cordoned_and_marked_failed() {
    let mut f = Fleet::new(3, DRAIN_OK, json!({"maxConcurrency": "1"}));
    seed_workloads(&f, 3);
    f.hosts["node-1"]
        .never_returns
        .store(true, Ordering::SeqCst);
    // node-1 goes first: the others start after it has the slot.
    f.start("node-1");
    f.ospatch(&["now"]);
    f.wait("node-1 rebooting", 30, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1" && annotation(n, ann::STEP) == "rebooting"
        })
    });
    // The host is gone for good, and its agent with it.
    f.kill("node-1");
    f.start("node-2");
    f.start("node-3");
    let others = vec!["node-2".to_string(), "node-3".to_string()];
    f.wait("the others patched", 90, |s| {
        all_results(s, &others, "success")
    });
    let n1 = f.node("node-1");
    assert_eq!(annotation(&n1, ann::STEP), "failed");
    assert!(unschedulable(&n1), "a lost node stays cordoned for a human");
    assert!(
        annotation(&n1, ann::LAST_MESSAGE).contains("taken over"),
        "{}",
        annotation(&n1, ann::LAST_MESSAGE)
    );
    let o = f.ospatch(&["status"]);
    assert!(
        o.stdout
            .lines()
            .any(|l| l.starts_with("node-1") && l.contains("failed")),
        "{}",
        o.stdout
    );
    f.c.server
        .with_store(|s| assert!(!events_with_reason(s, "OSPatchFailed").is_empty()));
}

#[test]
fn an_agent_gone_before_it_cordoned_is_sent_back_to_idle_not_failed() {
    let mut f = Fleet::new(2, DRAIN_OK, json!({"maxConcurrency": "1"}));
    seed_workloads(&f, 2);
    let mut o = fast_opts("node-1");
    o.freeze_after_step = Some(Step::SlotHeld);
    f.start_with("node-1", o);
    assert_eq!(f.ospatch(&["now"]).code, 0);
    f.wait("node-1 slot-held", 30, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1" && annotation(n, ann::STEP) == "slot-held"
        })
    });
    // Its agent is gone after taking the slot and before cordoning.
    f.kill("node-1");
    let (stop, t) = watch_overlap(&f.c, "node-1", "node-2");
    let monitor = Monitor::start(&f.c, "web");
    f.start("node-2");
    let node2 = vec!["node-2".to_string()];
    f.wait("node-2 patched", 90, |s| all_results(s, &node2, "success"));
    let n1 = f.node("node-1");
    assert_eq!(annotation(&n1, ann::STEP), "idle");
    assert!(!unschedulable(&n1), "node-1 was never cordoned");
    let msg = annotation(&n1, ann::LAST_MESSAGE);
    assert!(
        msg.contains("taken over by node-2") && msg.contains("nothing was done"),
        "{msg}"
    );
    f.c.server.with_store(|s| {
        assert_eq!(events_with_reason(s, "OSPatchSlotReclaimed").len(), 1);
        assert!(events_with_reason(s, "OSPatchFailed").is_empty());
    });
    // Back, its run starts again and finishes.
    f.start("node-1");
    let node1 = vec!["node-1".to_string()];
    f.wait("node-1 patched once back", 60, |s| {
        all_results(s, &node1, "success")
    });
    stop.store(true, Ordering::Relaxed);
    let (_, a_failed) = t.join().unwrap();
    assert!(!a_failed, "node-1 was marked failed");
    let (max_held, max_cordoned, _) = monitor.finish();
    assert_eq!((max_held, max_cordoned), (1, 1));
    assert_eq!(f.ann("node-1", ann::PATCHED_VERSION), AFTER);
}

#[test]
fn malformed_configmaps_are_reported_and_the_last_good_policy_stays() {
    let mut f = Fleet::new(
        3,
        DRAIN_OK,
        json!({"maxConcurrency": "1", "paused": "true"}),
    );
    seed_workloads(&f, 3);
    f.start_all();
    f.wait("agents up", 10, |s| {
        nodes_of(s)
            .iter()
            .all(|n| annotation(n, ann::PATCHED_VERSION) == BEFORE)
    });
    // Break the drain policy: the defaults would refuse the DaemonSet pods, the last good one
    // ignores them, so a successful run shows which one is in force.
    let mut cm =
        f.c.server
            .get(&CONFIGMAPS, NS, "palette-agent-config")
            .unwrap();
    cm["data"]["drain"] = json!(r#"{"timeout": "soon", "ignoreDaemonSets": true}"#);
    f.c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "palette-agent-config", cm, false, false))
        .unwrap();
    f.wait("malformed policy reported", 10, |s| {
        events_with_reason(s, "DrainPolicyInvalid").len() >= 3
    });
    f.wait("status shows it", 10, |s| {
        nodes_of(s)
            .iter()
            .all(|n| annotation(n, "ospatch.bootpatch.io/policy-error").contains("soon"))
    });
    let o = f.ospatch(&["drain-policy"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("does not parse") && o.stderr.contains("soon"),
        "{o:?}"
    );
    // A malformed patch policy is reported too, and pause (the last good value) holds.
    let mut pp =
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap();
    pp["data"]["maxConcurrency"] = json!("lots");
    f.c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "bootpatch-patch-policy", pp, false, false))
        .unwrap();
    f.wait("malformed patch policy reported", 10, |s| {
        events_with_reason(s, "PatchPolicyInvalid").len() >= 3
    });
    f.ospatch(&["now", "node-2"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        annotation(&f.node("node-2"), ann::STEP),
        "",
        "paused (last good patch policy)"
    );
    // Fix the patch policy (unpaused); the drain policy stays broken: the last good one drains.
    let mut pp =
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap();
    pp["data"] = json!({"maxConcurrency": "1"});
    f.c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "bootpatch-patch-policy", pp, false, false))
        .unwrap();
    let nodes = vec!["node-2".to_string()];
    f.wait("node-2 patched under the last good drain policy", 60, |s| {
        all_results(s, &nodes, "success")
    });

    // An agent that never saw a good drain policy drains nothing.
    let mut g = Fleet::new(2, r#"{"force": maybe}"#, json!({"maxConcurrency": "1"}));
    g.start_all();
    g.wait("reported", 10, |s| {
        events_with_reason(s, "DrainPolicyInvalid").len() >= 2
    });
    g.ospatch(&["now"]);
    std::thread::sleep(Duration::from_secs(3));
    for n in ["node-1", "node-2"] {
        let node = g.node(n);
        assert!(!unschedulable(&node));
        assert_eq!(
            annotation(&node, ann::LAST_RUN_START),
            "",
            "a run started under a policy that did not parse"
        );
    }
}

#[test]
fn managed_node_pools_and_imported_clusters_are_refused() {
    let mut f = Fleet::new(2, DRAIN_OK, json!({"maxConcurrency": "1"}));
    f.c.server
        .with_store(|s| {
            s.patch(
                &NODES,
                "",
                "node-1",
                PatchType::Merge,
                &json!({"metadata": {"labels": {"eks.amazonaws.com/nodegroup": "ng-1"}}}),
                false,
                false,
            )
        })
        .unwrap();
    f.start_all();
    f.ospatch(&["now", "node-1"]);
    f.wait("refused", 15, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1"
                && annotation(n, ann::LAST_RESULT) == "refused"
        })
    });
    let n1 = f.node("node-1");
    assert!(annotation(&n1, ann::LAST_MESSAGE).contains("EKS"));
    assert!(!unschedulable(&n1));
    assert_eq!(f.hosts["node-1"].applies.load(Ordering::SeqCst), 0);
    // Imported cluster: every node refuses.
    let mut pp =
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap();
    pp["data"]["importedCluster"] = json!("true");
    f.c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "bootpatch-patch-policy", pp, false, false))
        .unwrap();
    f.ospatch(&["now", "node-2"]);
    f.wait("refused", 15, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-2"
                && annotation(n, ann::LAST_MESSAGE).contains("imported")
        })
    });
    assert_eq!(f.hosts["node-2"].applies.load(Ordering::SeqCst), 0);
    f.c.server
        .with_store(|s| assert!(!events_with_reason(s, "OSPatchRefused").is_empty()));
}

#[test]
fn plugin_schedule_pause_resume_and_drain_policy() {
    let f = Fleet::new(
        1,
        r#"{"timeout": 600000000, "gracePeriod": 600, "deleteLocalData": true, "ignoreDaemonSets": true, "force": true, "disableEviction": false, "skipWaitForDeleteTimeout": 600}"#,
        json!({}),
    );
    let o = f.ospatch(&["schedule", "0 2 * * 6", "--time-zone", "Europe/Berlin"]);
    assert_eq!(o.code, 0, "{o:?}");
    let cm =
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap();
    assert_eq!(cm["data"]["schedule"], "0 2 * * 6");
    assert_eq!(cm["data"]["timeZone"], "Europe/Berlin");
    let o = f.ospatch(&["schedule", "61 * * * *"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("61"), "{o:?}");
    assert_eq!(f.ospatch(&["pause"]).code, 0);
    assert_eq!(
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap()["data"]["paused"],
        "true"
    );
    assert_eq!(f.ospatch(&["resume"]).code, 0);
    assert_eq!(
        f.c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap()["data"]["paused"],
        "false"
    );
    let o = f.ospatch(&["drain-policy"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout
            .contains("timeout:                  600ms (600000000 ns)"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("gracePeriod:              600s"));
    assert!(
        o.stdout.contains("Warning: drain.timeout is 600000000 ns"),
        "{}",
        o.stdout
    );
    let o = f.ospatch(&["now", "--selector", "kubernetes.io/hostname=node-1"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(!annotation(&f.node("node-1"), ann::PATCH_REQUESTED).is_empty());
}

#[test]
fn on_demand_patch_after_patches_each_stale_node_once_inside_its_window_and_wakes_for_the_future() {
    let now = chrono::Utc::now();
    let hhmm = |d: chrono::Duration| (now + d).format("%H:%M").to_string();
    let open = format!(
        r#"[{{"start": "{}", "end": "{}", "timeZone": "UTC"}}]"#,
        hhmm(chrono::Duration::hours(-1)),
        hhmm(chrono::Duration::hours(1))
    );
    let cutoff = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut f = Fleet::new(
        3,
        DRAIN_OK,
        json!({"maxConcurrency": "2", "onDemandPatchAfter": cutoff, "maintenanceWindows": open}),
    );
    seed_workloads(&f, 3);
    f.start_all();
    let nodes = f.nodes.clone();
    f.wait("stale nodes patched", 60, |s| {
        all_results(s, &nodes, "success")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        nodes
            .iter()
            .all(|n| f.hosts[n].applies.load(Ordering::SeqCst) == 1),
        "once"
    );
    let set_policy = |data: Value| {
        let mut pp =
            f.c.server
                .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
                .unwrap();
        pp["data"] = data;
        f.c.server
            .with_store(|s| s.update(&CONFIGMAPS, NS, "bootpatch-patch-policy", pp, false, false))
            .unwrap();
    };
    let runs_since = |t: chrono::DateTime<chrono::Utc>| {
        // Whole seconds: the run may start in the same second as `t`.
        let t = t.trunc_subsecs(0);
        move |s: &Store| {
            nodes_of(s).iter().all(|o| {
                chrono::DateTime::parse_from_rfc3339(&annotation(o, ann::LAST_RUN_START))
                    .is_ok_and(|r| r >= t)
                    && annotation(o, ann::LAST_RESULT) == "up-to-date"
                    && annotation(o, ann::STEP) == "idle"
            })
        }
    };
    // Every later run starts with `bootpatch check` and, the nodes being patched already, ends
    // there ("up-to-date"): a run is counted by its check.
    let runs = |n: &String| f.hosts[n].checks.load(Ordering::SeqCst);
    // A cut-off a few seconds ahead, the window open: nothing else happens, yet every node
    // runs once the cut-off has passed, not before.
    let ahead = chrono::Utc::now() + chrono::Duration::seconds(3);
    let ahead = ahead
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    set_policy(json!({"maxConcurrency": "2",
        "onDemandPatchAfter": ahead.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "maintenanceWindows": open}));
    std::thread::sleep(Duration::from_secs(1));
    assert!(nodes.iter().all(|n| runs(n) == 1), "ran before the cut-off");
    f.wait(
        "a run once the future cut-off passed",
        30,
        runs_since(ahead),
    );
    // A cut-off that passes while the window is closed: nothing starts until the window
    // opens (at the next whole minute), then every node runs, with no other event.
    let opens = chrono::Utc::now() + chrono::Duration::seconds(60);
    let opens = opens
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    let window = format!(
        r#"[{{"start": "{}", "end": "{}", "timeZone": "UTC"}}]"#,
        opens.format("%H:%M"),
        (opens + chrono::Duration::hours(1)).format("%H:%M")
    );
    let later = (chrono::Utc::now() + chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    set_policy(
        json!({"maxConcurrency": "2", "onDemandPatchAfter": later, "maintenanceWindows": window}),
    );
    while chrono::Utc::now() + chrono::Duration::milliseconds(500) < opens {
        assert!(nodes.iter().all(|n| runs(n) == 2), "ran outside its window");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.wait("a run once the window opened", 30, runs_since(opens));
    assert!(nodes.iter().all(|n| runs(n) == 3));
    assert!(nodes
        .iter()
        .all(|n| f.hosts[n].applies.load(Ordering::SeqCst) == 1));
    assert!(nodes.iter().all(|n| !unschedulable(&f.node(n))));
}

/// Samples the store until stopped: how often `b` was in a run while `a` was not yet back
/// (not idle, or still cordoned), and whether `a` was ever marked failed.
fn watch_overlap(
    c: &Arc<Cluster>,
    a: &'static str,
    b: &'static str,
) -> (Arc<AtomicBool>, std::thread::JoinHandle<(usize, bool)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let (s, c) = (stop.clone(), c.clone());
    let t = std::thread::spawn(move || {
        let (mut overlaps, mut a_failed) = (0, false);
        while !s.load(Ordering::Relaxed) {
            c.server.with_store(|st| {
                let all = nodes_of(st);
                let get = |n: &str| {
                    all.iter()
                        .find(|o| util::str_at(o, "metadata.name") == n)
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                let (na, nb) = (get(a), get(b));
                let step_b = Step::parse(&annotation(&nb, ann::STEP)).unwrap_or(Step::Idle);
                // Back: uncordoned after its reboot. The agent releases the slot before it
                // records idle, so the other may take it while this one reads "uncordoned".
                let a_back = matches!(annotation(&na, ann::STEP).as_str(), "uncordoned" | "idle")
                    && !unschedulable(&na);
                if step_b.in_run() && !a_back {
                    overlaps += 1;
                }
                a_failed |= annotation(&na, ann::STEP) == "failed";
            });
            std::thread::sleep(Duration::from_millis(10));
        }
        (overlaps, a_failed)
    });
    (stop, t)
}

#[test]
fn a_reboot_that_outlasts_the_lease_keeps_the_slot_and_kills_the_agent() {
    // node-1's reboot lasts four times the Lease (5 s) and kills its agent, as a real one does.
    let mut long = default_behaviour();
    long.reboot_duration = Duration::from_secs(20);
    long.reboot_kills_agent = true;
    let table = Behaviours::new(default_behaviour()).with("node-1", long);
    let mut f = Fleet::with_behaviours(2, DRAIN_OK, json!({"maxConcurrency": "1"}), table);
    seed_workloads(&f, 2);
    let mut o = fast_opts("node-1");
    o.reboot_deadline = Duration::from_secs(60);
    f.start_with("node-1", o);
    assert_eq!(f.ospatch(&["now", "node-1"]).code, 0);
    f.wait("node-1 rebooting", 30, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1" && annotation(n, ann::STEP) == "rebooting"
        })
    });
    // node-2 queues behind it.
    let (stop, t) = watch_overlap(&f.c, "node-1", "node-2");
    f.start("node-2");
    assert_eq!(f.ospatch(&["now", "node-2"]).code, 0);
    let nodes = f.nodes.clone();
    f.wait("both patched, or node-1 failed", 90, |s| {
        all_results(s, &nodes, "success")
            || nodes_of(s)
                .iter()
                .any(|n| annotation(n, ann::STEP) == "failed")
    });
    stop.store(true, Ordering::Relaxed);
    let (overlaps, a_failed) = t.join().unwrap();
    let n1 = f.node("node-1");
    assert!(
        !a_failed,
        "node-1 was marked failed while it rebooted: {}",
        annotation(&n1, ann::LAST_MESSAGE)
    );
    assert_eq!(overlaps, 0, "node-2 ran while node-1 was not back");
    assert!(
        f.hosts["node-1"].agent_starts.load(Ordering::SeqCst) >= 2,
        "the reboot did not kill node-1's agent"
    );
    for n in &nodes {
        assert!(!unschedulable(&f.node(n)), "{n} left cordoned");
        assert_eq!(f.ann(n, ann::PATCHED_VERSION), AFTER);
    }
    f.slots_released();
}

#[test]
fn a_failed_node_reset_with_ospatch_now_ends_uncordoned() {
    let mut f = Fleet::new(2, DRAIN_OK, json!({"maxConcurrency": "1"}));
    seed_workloads(&f, 2);
    // As a takeover leaves it: failed, cordoned by the agent.
    f.c.server
        .with_store(|s| {
            s.patch(
                &NODES,
                "",
                "node-1",
                PatchType::Merge,
                &json!({"metadata": {"annotations": {
                    ann::STEP: "failed", ann::LAST_RESULT: "failed",
                    ann::CORDONED_BY_AGENT: "true"}},
                    "spec": {"unschedulable": true}}),
                false,
                false,
            )
        })
        .unwrap();
    f.setup_rv = f.c.server.with_store(|s| s.current_rv());
    f.start_all();
    let o = f.ospatch(&["now", "node-1"]);
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("failed state cleared"), "{}", o.stdout);
    let nodes = vec!["node-1".to_string()];
    f.wait("node-1 patched after the reset", 60, |s| {
        all_results(s, &nodes, "success")
    });
    let n1 = f.node("node-1");
    assert!(
        !unschedulable(&n1),
        "the agent's own cordon from the failed run was kept as an admin's"
    );
    assert_eq!(annotation(&n1, ann::PATCHED_VERSION), AFTER);
}

#[test]
fn reboot_required_is_live_after_the_reboot_and_an_agent_restart() {
    let mut f = Fleet::new(1, DRAIN_OK, json!({"maxConcurrency": "1"}));
    f.start("node-1");
    assert_eq!(f.ospatch(&["now", "node-1"]).code, 0);
    let nodes = f.nodes.clone();
    f.wait("patched and rebooted", 60, |s| {
        all_results(s, &nodes, "success")
    });
    assert_eq!(f.hosts["node-1"].reboots.load(Ordering::SeqCst), 1);
    // bootpatch's state file still records the pending reboot (only its next run clears it).
    assert!(f.hosts["node-1"].state_now().reboot_pending.is_some());
    assert_eq!(f.ann("node-1", ann::REBOOT_REQUIRED), "false");
    // A restarted agent publishes the host's state again: the reboot has happened.
    f.c.server
        .with_store(|s| {
            s.patch(
                &NODES,
                "",
                "node-1",
                PatchType::Merge,
                &json!({"metadata": {"annotations": {ann::PATCHED_VERSION: null}}}),
                false,
                false,
            )
        })
        .unwrap();
    f.kill("node-1");
    f.start("node-1");
    f.wait("state published again", 20, |s| {
        nodes_of(s)
            .iter()
            .all(|n| annotation(n, ann::PATCHED_VERSION) == AFTER)
    });
    assert_eq!(
        f.ann("node-1", ann::REBOOT_REQUIRED),
        "false",
        "a stale reboot-required republished from the state file"
    );
}

#[test]
fn an_apply_that_hangs_meets_its_deadline_and_frees_the_slot() {
    let mut hung = default_behaviour();
    hung.outcome = ApplyOutcome::Hangs;
    let table = Behaviours::new(default_behaviour()).with("node-1", hung);
    let mut f = Fleet::with_behaviours(2, DRAIN_OK, json!({"maxConcurrency": "1"}), table);
    f.start("node-1");
    assert_eq!(f.ospatch(&["now", "node-1"]).code, 0);
    f.wait("node-1 patching", 30, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1" && annotation(n, ann::STEP) == "patching"
        })
    });
    f.start("node-2");
    assert_eq!(f.ospatch(&["now", "node-2"]).code, 0);
    f.wait("node-1 given up on, node-2 patched", 60, |s| {
        let all = nodes_of(s);
        let get = |n: &str| all.iter().find(|o| util::str_at(o, "metadata.name") == n);
        get("node-1").is_some_and(|o| {
            annotation(o, ann::STEP) == "idle" && annotation(o, ann::LAST_RESULT) == "patch-timeout"
        }) && get("node-2").is_some_and(|o| annotation(o, ann::LAST_RESULT) == "success")
    });
    let n1 = f.node("node-1");
    assert!(
        annotation(&n1, ann::LAST_MESSAGE).contains("deadline"),
        "{}",
        annotation(&n1, ann::LAST_MESSAGE)
    );
    assert!(
        !unschedulable(&n1),
        "left cordoned after the apply deadline"
    );
    assert_eq!(annotation(&n1, ann::PATCHED_VERSION), BEFORE);
    f.slots_released();
}

#[test]
fn a_reboot_that_never_happens_meets_its_deadline_and_frees_the_slot() {
    let mut f = Fleet::new(2, DRAIN_OK, json!({"maxConcurrency": "1"}));
    // The host is asked to reboot and never does; its agent lives on and waits.
    f.hosts["node-1"]
        .never_returns
        .store(true, Ordering::SeqCst);
    f.start_all();
    assert_eq!(f.ospatch(&["now", "node-1"]).code, 0);
    f.wait("node-1 given up on", 60, |s| {
        nodes_of(s).iter().any(|o| {
            util::str_at(o, "metadata.name") == "node-1"
                && annotation(o, ann::STEP) == "idle"
                && annotation(o, ann::LAST_RESULT) == "reboot-timeout"
        })
    });
    let n1 = f.node("node-1");
    assert!(
        annotation(&n1, ann::LAST_MESSAGE).contains("reboot deadline"),
        "{}",
        annotation(&n1, ann::LAST_MESSAGE)
    );
    assert!(
        !unschedulable(&n1),
        "left cordoned after the reboot deadline"
    );
    f.slots_released();
    // The slot is free again: the next node runs.
    assert_eq!(f.ospatch(&["now", "node-2"]).code, 0);
    let n2 = vec!["node-2".to_string()];
    f.wait("node-2 patched", 60, |s| all_results(s, &n2, "success"));
}

#[test]
fn apply_outcomes_from_the_behaviour_table() {
    let with = |f: &dyn Fn(&mut Behaviour)| {
        let mut b = default_behaviour();
        f(&mut b);
        b
    };
    let table = Behaviours::new(default_behaviour())
        .with(
            "node-1",
            with(&|b| b.outcome = ApplyOutcome::Fails { exit_code: 5 }),
        )
        .with(
            "node-2",
            with(&|b| b.outcome = ApplyOutcome::Fails { exit_code: 7 }),
        )
        .with("node-3", with(&|b| b.outcome = ApplyOutcome::UpToDate))
        .with("node-4", with(&|b| b.reboot_required = false));
    let mut f = Fleet::with_behaviours(4, DRAIN_OK, json!({"maxConcurrency": "4"}), table);
    f.start_all();
    assert_eq!(f.ospatch(&["now"]).code, 0);
    let nodes = f.nodes.clone();
    // (A node whose run ended before the slot never had a step: none is idle.)
    f.wait("every run over", 60, |s| {
        nodes_of(s).iter().all(|o| {
            matches!(annotation(o, ann::STEP).as_str(), "idle" | "")
                && !annotation(o, ann::LAST_RESULT).is_empty()
        })
    });
    // node-1's sources are unreachable: `bootpatch check` fails as the apply would, and the
    // run ends there. node-2's package fails only when installed: the whole cycle runs.
    for (n, label, applies) in [
        ("node-1", "mirror-unreachable", 0),
        ("node-2", "package", 1),
    ] {
        let node = f.node(n);
        assert_eq!(annotation(&node, ann::LAST_RESULT), "patch-failed", "{n}");
        let msg = annotation(&node, ann::LAST_MESSAGE);
        assert!(msg.contains(label), "{n}: {msg}");
        assert!(!unschedulable(&node), "{n} left cordoned");
        assert_eq!(annotation(&node, ann::PATCHED_VERSION), BEFORE, "{n}");
        assert_eq!(f.hosts[n].applies.load(Ordering::SeqCst), applies, "{n}");
    }
    // node-3 has nothing to install: `bootpatch check` says so before any slot, and the run
    // ends there, never cordoned, drained or applied.
    let expect = [
        ("node-3", "up-to-date", BEFORE, 0),
        ("node-4", "success", AFTER, 1),
    ];
    for (n, result, version, applies) in expect {
        let node = f.node(n);
        assert_eq!(annotation(&node, ann::LAST_RESULT), result, "{n}");
        assert_eq!(annotation(&node, ann::PATCHED_VERSION), version, "{n}");
        assert_eq!(f.hosts[n].reboots.load(Ordering::SeqCst), 0, "{n} rebooted");
        assert_eq!(f.hosts[n].applies.load(Ordering::SeqCst), applies, "{n}");
        assert!(!unschedulable(&node), "{n} left cordoned");
    }
    assert_eq!(f.ann("node-4", ann::REBOOT_REQUIRED), "false");
    assert!(
        f.ann("node-3", ann::LAST_MESSAGE)
            .contains("nothing to install, no reboot required; the node was not cordoned"),
        "{}",
        f.ann("node-3", ann::LAST_MESSAGE)
    );
    f.slots_released();
    f.c.server.with_store(|s| {
        let cordoned: Vec<String> = events_with_reason(s, "OSPatchCordoned")
            .iter()
            .map(|e| util::str_at(e, "involvedObject.name").to_string())
            .collect();
        let mut cordoned = cordoned;
        cordoned.sort();
        assert_eq!(cordoned, ["node-2", "node-4"]);
    });
    assert!(nodes
        .iter()
        .all(|n| f.hosts[n].checks.load(Ordering::SeqCst) == 1));
}

#[test]
fn an_api_outage_longer_than_the_lease_does_not_fail_the_holder() {
    // node-1's apply is slow; while it runs, node-1 loses the API for twice the Lease (5 s).
    let mut slow = default_behaviour();
    slow.apply_duration = Duration::from_secs(14);
    let table = Behaviours::new(default_behaviour()).with("node-1", slow);
    let mut f = Fleet::with_behaviours(2, DRAIN_OK, json!({"maxConcurrency": "1"}), table);
    seed_workloads(&f, 2);
    let down = Arc::new(tokio::sync::watch::channel(false).0);
    let mut o = fast_opts("node-1");
    o.apply_deadline = Duration::from_secs(60);
    f.start_behind_outage_switch("node-1", o, down.clone());
    assert_eq!(f.ospatch(&["now", "node-1"]).code, 0);
    f.wait("node-1 patching", 30, |s| {
        nodes_of(s).iter().any(|n| {
            util::str_at(n, "metadata.name") == "node-1" && annotation(n, ann::STEP) == "patching"
        })
    });
    let (stop, t) = watch_overlap(&f.c, "node-1", "node-2");
    down.send_replace(true);
    f.start("node-2");
    assert_eq!(f.ospatch(&["now", "node-2"]).code, 0);
    std::thread::sleep(Duration::from_secs(10));
    down.send_replace(false);
    let nodes = f.nodes.clone();
    f.wait("both patched, or node-1 failed", 90, |s| {
        all_results(s, &nodes, "success")
            || nodes_of(s)
                .iter()
                .any(|n| annotation(n, ann::STEP) == "failed")
    });
    stop.store(true, Ordering::Relaxed);
    let (overlaps, a_failed) = t.join().unwrap();
    assert!(
        !a_failed,
        "node-1 was marked failed during its API outage: {}",
        f.ann("node-1", ann::LAST_MESSAGE)
    );
    assert_eq!(overlaps, 0, "node-2 ran while node-1 held the slot");
    for n in &nodes {
        assert!(!unschedulable(&f.node(n)), "{n} left cordoned");
        assert_eq!(f.ann(n, ann::PATCHED_VERSION), AFTER);
    }
}
