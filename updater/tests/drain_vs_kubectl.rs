//! Our drain decides exactly what the real `kubectl drain` decides. Each generated cluster
//! state (DaemonSet pods with and without their DaemonSet, mirror pods, emptyDir, bare pods,
//! finished pods, PDB-protected deployments, pods already terminating) is judged by kubectl
//! (`--dry-run=client`, which runs the same filters without evicting) and by our plan, under
//! every combination of the policy flags: same pods evicted, same pods refused, same messages.
//! Then real drains (evictions, PDB 429 retries, timeouts, disableEviction) are compared on
//! twin clusters seeded the same way.

mod common;

use common::{Cluster, Rng};
use kube_testserver::fixtures::{self, as_mirror, pod, with_empty_dir, with_owner};
use kube_testserver::resources::{NODES, PDBS, PODS};
use kube_testserver::store::PatchType;
use kube_testserver::util;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use updater::drain::{self, Lines, Timing};
use updater::policy::DrainPolicy;

fn set_unschedulable(c: &Cluster, node: &str, on: bool) {
    let patch = if on {
        json!({"spec": {"unschedulable": true}})
    } else {
        json!({"spec": {"unschedulable": null}})
    };
    c.server
        .with_store(|s| s.patch(&NODES, "", node, PatchType::Merge, &patch, false, false))
        .expect("patching node");
}

fn with_phase(mut p: Value, phase: &str) -> Value {
    p["status"]["phase"] = json!(phase);
    p
}

/// Makes a pod that has been terminating for `secs` seconds (held by a finalizer).
fn terminating(c: &Cluster, p: Value, secs: i64) {
    let created = c.server.apply(p).expect("creating pod");
    let mut p = created.clone();
    let when = chrono::Utc::now() - chrono::Duration::seconds(secs);
    p["metadata"]["deletionTimestamp"] =
        json!(when.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    p["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    p["metadata"]["finalizers"] = json!(["test.bootpatch.io/hold"]);
    c.server.with_store(|s| {
        s.commit(&PODS, p);
    });
}

fn pods_on(c: &Cluster, node: &str, prefix: &str) -> usize {
    c.server
        .pods_on_node(node)
        .iter()
        .filter(|p| util::str_at(p, "metadata.name").starts_with(prefix))
        .count()
}

/// Seeds cluster state number `seed` on `node-1` (with `node-2` beside it).
fn seed_state(c: &Cluster, seed: u64) -> String {
    let mut r = Rng(seed * 7919 + 17);
    let nodes = c.server.add_nodes("node", 2);
    let mut what = Vec::new();
    let ns = "default";
    // Make sure every kind shows up across the states: state k always has kind k % 8.
    let forced = seed % 8;
    let want = |r: &mut Rng, k: u64| forced == k || r.chance(45);
    if want(&mut r, 0) {
        c.server.apply(fixtures::daemonset(ns, "agent")).unwrap();
        assert!(c.server.wait_until(Duration::from_secs(10), |_| true));
        let ok = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            pods_on(c, "node-1", "agent") == 1
        });
        assert!(ok, "daemonset pod scheduled");
        what.push("ds");
    }
    if want(&mut r, 1) {
        for i in 0..=r.below(2) {
            let mut p = with_owner(
                pod(ns, &format!("orphan-{i}"), "node-1"),
                "apps/v1",
                "DaemonSet",
                &format!("gone-{i}"),
                &format!("uid-gone-{i}"),
            );
            if r.chance(30) {
                p = with_empty_dir(p);
            }
            c.server.apply(p).unwrap();
        }
        what.push("orphan-ds");
    }
    if want(&mut r, 2) {
        let mut p = as_mirror(pod(ns, "static-etcd", "node-1"));
        if r.chance(50) {
            p = with_empty_dir(p);
        }
        c.server.apply(p).unwrap();
        what.push("mirror");
    }
    if want(&mut r, 3) {
        for i in 0..=r.below(2) {
            let p = with_owner(
                with_empty_dir(pod(ns, &format!("cache-{i}"), "node-1")),
                "apps/v1",
                "ReplicaSet",
                "cache-rs",
                "uid-cache-rs",
            );
            c.server.apply(p).unwrap();
        }
        what.push("emptydir");
    }
    if want(&mut r, 4) {
        for i in 0..=r.below(2) {
            let mut p = pod(ns, &format!("bare-{i}"), "node-1");
            if r.chance(40) {
                p = with_empty_dir(p);
            }
            c.server.apply(p).unwrap();
        }
        what.push("bare");
    }
    if want(&mut r, 5) {
        let phase = if r.chance(50) { "Succeeded" } else { "Failed" };
        let mut p = with_phase(pod(ns, "job-done", "node-1"), phase);
        if r.chance(50) {
            p = with_empty_dir(p);
        }
        c.server.apply(p).unwrap();
        if r.chance(50) {
            let p = with_phase(
                with_owner(
                    pod(ns, "ds-done", "node-1"),
                    "apps/v1",
                    "DaemonSet",
                    "gone-x",
                    "uid-x",
                ),
                phase,
            );
            c.server.apply(p).unwrap();
        }
        what.push("finished");
    }
    if want(&mut r, 6) {
        set_unschedulable(c, "node-2", true);
        c.server.apply(fixtures::deployment(ns, "web", 2)).unwrap();
        let ok = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(25));
            pods_on(c, "node-1", "web") == 2
        });
        assert!(ok, "deployment pods on node-1");
        set_unschedulable(c, "node-2", false);
        let pdb = if r.chance(50) {
            fixtures::pdb_min_available(ns, "web", "web", json!(2))
        } else {
            fixtures::pdb_max_unavailable(ns, "web", "web", json!(1))
        };
        c.server.apply(pdb).unwrap();
        what.push("pdb-deployment");
    }
    if want(&mut r, 7) {
        let age = if r.chance(50) { 120 } else { 5 };
        let p = if r.chance(50) {
            pod(ns, "dying", "node-1")
        } else {
            with_owner(
                pod(ns, "dying", "node-1"),
                "apps/v1",
                "ReplicaSet",
                "x",
                "uid-rs-x",
            )
        };
        terminating(c, p, age);
        what.push("terminating");
    }
    let _ = nodes;
    what.join("+")
}

fn flags_of(bits: u32) -> (DrainPolicy, Vec<String>) {
    let p = DrainPolicy {
        force: bits & 1 != 0,
        ignore_daemon_sets: bits & 2 != 0,
        delete_local_data: bits & 4 != 0,
        disable_eviction: bits & 8 != 0,
        skip_wait_for_delete_timeout: if bits & 16 != 0 { 30 } else { 0 },
        // The fixtures' pods say 1 s of their own.
        grace_period: if bits & 32 != 0 { 2 } else { -1 },
        ..DrainPolicy::default()
    };
    let mut args = Vec::new();
    if p.force {
        args.push("--force".to_string());
    }
    if p.ignore_daemon_sets {
        args.push("--ignore-daemonsets".into());
    }
    if p.delete_local_data {
        args.push("--delete-emptydir-data".into());
    }
    if p.disable_eviction {
        args.push("--disable-eviction".into());
    }
    if p.grace_period >= 0 {
        args.push(format!("--grace-period={}", p.grace_period));
    }
    if p.skip_wait_for_delete_timeout > 0 {
        args.push(format!(
            "--skip-wait-for-delete-timeout={}",
            p.skip_wait_for_delete_timeout
        ));
    }
    (p, args)
}

/// The `Warning: a; b` line's parts.
fn kubectl_warnings(stderr: &str) -> BTreeSet<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Warning: "))
        .flat_map(|w| w.split("; ").map(str::to_string).collect::<Vec<_>>())
        .collect()
}

fn kubectl_evicted(stdout: &str) -> BTreeSet<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("evicting pod "))
        .map(|l| l.trim_end_matches(" (dry run)").to_string())
        .collect()
}

#[test]
fn decisions_equal_kubectl_drain_on_generated_states_under_every_flag_combination() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut compared = 0;
    let mut kinds = BTreeSet::new();
    for seed in 0..22u64 {
        let c = Cluster::start();
        let what = seed_state(&c, seed);
        for k in what.split('+') {
            kinds.insert(k.to_string());
        }
        let _g = rt.enter();
        let kube = c.kube();
        for bits in 0..32u32 {
            let (policy, args) = flags_of(bits);
            let mut kargs = vec!["drain", "node-1", "--dry-run=client"];
            kargs.extend(args.iter().map(String::as_str));
            let o = c.kubectl(&kargs);
            let plan = rt
                .block_on(drain::plan_node(&kube.client, "node-1", &policy))
                .expect("planning");
            let ctx = format!(
                "state {seed} ({what}), kubectl {}\nstdout:\n{}\nstderr:\n{}",
                kargs.join(" "),
                o.stdout,
                o.stderr
            );
            let errors = plan.errors();
            if errors.is_empty() {
                assert_eq!(o.code, 0, "we would drain, kubectl refused: {ctx}");
                let ours: BTreeSet<String> = plan
                    .pods()
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p.metadata.namespace.as_deref().unwrap_or(""),
                            p.metadata.name.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                assert_eq!(
                    ours,
                    kubectl_evicted(&o.stdout),
                    "evicted pods differ: {ctx}"
                );
                let ours_w: BTreeSet<String> = plan.warnings().into_iter().collect();
                assert_eq!(
                    ours_w,
                    kubectl_warnings(&o.stderr),
                    "warnings differ: {ctx}"
                );
            } else {
                assert_ne!(o.code, 0, "we refused ({errors:?}), kubectl drained: {ctx}");
                assert!(kubectl_evicted(&o.stdout).is_empty(), "{ctx}");
                for e in &errors {
                    assert!(
                        o.stderr.contains(e.as_str()),
                        "kubectl did not say {e:?}: {ctx}"
                    );
                }
                // Exactly kubectl's refusals: the lines after its list of pending nodes.
                let theirs: BTreeSet<String> = o
                    .stderr
                    .lines()
                    .skip_while(|l| !l.starts_with("There are pending nodes"))
                    .filter(|l| l.starts_with("cannot delete "))
                    .map(str::to_string)
                    .collect();
                let ours: BTreeSet<String> = errors.iter().cloned().collect();
                assert_eq!(ours, theirs, "refusals differ: {ctx}");
            }
            compared += 1;
        }
    }
    for k in [
        "ds",
        "orphan-ds",
        "mirror",
        "emptydir",
        "bare",
        "finished",
        "pdb-deployment",
        "terminating",
    ] {
        assert!(kinds.contains(k), "no state had {k}");
    }
    assert!(compared >= 20 * 32);
}

/// Replaces generated pod names (`web-<hash>-<id>`, `agent-<id>`) with `web-*`, `agent-*`.
fn norm(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = ["web-", "agent-"]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (i, len) = i;
        out.push_str(&rest[..i + len]);
        out.push('*');
        rest = rest[i + len..].trim_start_matches(|c: char| c.is_ascii_alphanumeric() || c == '-');
    }
    out.push_str(rest);
    out
}

/// Twin clusters, seeded alike: kubectl drains one for real, we drain the other.
/// The grace periods pods were deleted with after resourceVersion `since`, sorted: the
/// `deletionGracePeriodSeconds` a pod got when it started terminating, 0 for a pod removed at
/// once. (Pod names differ between twins; the multiset of grace periods must not.)
fn graces(c: &Cluster, since: u64) -> Vec<i64> {
    let (changes, complete) = c.server.with_store(|s| s.changes(&PODS));
    assert!(complete, "the server's history dropped changes");
    let terminating = |o: &Value| util::path(o, "metadata.deletionTimestamp").is_some();
    let mut g: Vec<i64> = changes
        .iter()
        .filter(|e| e.rv > since)
        .filter_map(|e| {
            let old = e.old.as_ref()?;
            if terminating(old) {
                return None;
            }
            if e.deleted {
                Some(0)
            } else if terminating(&e.obj) {
                util::path(&e.obj, "metadata.deletionGracePeriodSeconds").and_then(Value::as_i64)
            } else {
                None
            }
        })
        .collect();
    g.sort();
    g
}

#[test]
fn real_drains_match_kubectl_on_twin_clusters() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // (seed, policy bits, timeout seconds)
    let cases = [
        (6u64, 2 | 1 | 4, 8u64),
        (14, 2 | 1 | 4 | 8, 20),
        (3, 4, 20),
        (7, 1 | 16, 20),
        // The policy's grace period, not the pod's, on evictions.
        (22, 2 | 1 | 4 | 32, 20),
    ];
    for (seed, bits, timeout) in cases {
        let a = Cluster::start();
        let b = Cluster::start();
        let what_a = seed_state(&a, seed);
        let what_b = seed_state(&b, seed);
        assert_eq!(what_a, what_b);
        let (mut policy, args) = flags_of(bits);
        policy.timeout = Duration::from_secs(timeout);
        for c in [&a, &b] {
            // Let PDB status settle before draining.
            c.server.wait_until(Duration::from_secs(5), |s| {
                s.get(&PDBS, "default", "web").is_err()
                    || s.get(&PDBS, "default", "web")
                        .is_ok_and(|p| p["status"]["currentHealthy"].as_i64() == Some(2))
            });
        }
        let since = [&a, &b].map(|c| c.server.with_store(|s| s.current_rv()));
        let mut kargs = vec![
            "drain".to_string(),
            "node-1".into(),
            format!("--timeout={timeout}s"),
        ];
        kargs.extend(args);
        let kargs: Vec<&str> = kargs.iter().map(String::as_str).collect();
        let o = a.kubectl_for(&kargs, Duration::from_secs(timeout + 30));
        let _g = rt.enter();
        let kube = b.kube();
        // kubectl cordons first; so do we (the agent does it before draining).
        set_unschedulable(&b, "node-1", true);
        let lines = Arc::new(Lines::default());
        let r = rt.block_on(drain::drain_node(
            &kube.client,
            "node-1",
            &policy,
            &Timing::default(),
            lines.clone(),
        ));
        let ours = lines.0.lock().unwrap().join("\n");
        let ctx = format!(
            "state {seed} ({what_a}) {}\nkubectl code {}:\n{}\n{}\nours: {r:?}\n{ours}",
            kargs.join(" "),
            o.code,
            o.stdout,
            o.stderr
        );
        assert_eq!(o.code == 0, r.is_ok(), "{ctx}");
        let left = |c: &Cluster| -> BTreeSet<String> {
            c.server
                .pods_on_node("node-1")
                .iter()
                .filter(|p| util::path(p, "metadata.deletionTimestamp").is_none())
                .map(|p| util::str_at(p, "metadata.name").to_string())
                .collect()
        };
        // Generated names of replacement pods differ; compare the seeded names that stayed.
        let seeded = |s: BTreeSet<String>| -> BTreeSet<String> {
            s.into_iter()
                .filter(|n| !n.starts_with("web-") && !n.starts_with("agent-"))
                .collect()
        };
        assert_eq!(
            seeded(left(&a)),
            seeded(left(&b)),
            "pods left on node-1 differ: {ctx}"
        );
        assert_eq!(
            pods_on(&a, "node-1", "web"),
            pods_on(&b, "node-1", "web"),
            "web pods on node-1 differ: {ctx}"
        );
        // The grace period each pod was given, as the server applied it.
        assert_eq!(
            graces(&a, since[0]),
            graces(&b, since[1]),
            "grace periods given differ (kubectl's first): {ctx}"
        );
        let kall = format!("{}\n{}", o.stdout, o.stderr);
        for needle in [
            "global timeout reached",
            "will retry after 5s",
            "Cannot evict pod as it would violate",
        ] {
            assert_eq!(
                kall.contains(needle),
                ours.contains(needle) || format!("{r:?}").contains(needle),
                "{needle}: {ctx}"
            );
        }
        let kall = norm(&kall);
        for l in norm(&ours)
            .lines()
            .filter(|l| l.starts_with("evicting pod ") || l.starts_with("Warning: "))
        {
            assert!(kall.contains(l), "kubectl did not print {l:?}: {ctx}");
        }
    }
}
