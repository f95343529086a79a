//! The small controllers that make a drain behave as on a real cluster: a scheduler that binds
//! pods to schedulable Ready nodes, a kubelet that starts pods after a delay and removes
//! terminating pods after their grace period, Deployment → ReplicaSet → Pod, DaemonSet → one pod
//! per node, the disruption controller that keeps PodDisruptionBudget status, pod garbage
//! collection for vanished nodes, namespace deletion, and simulated node reboots. All of it runs
//! under the store lock from [`tick`]; nothing here talks HTTP.

use crate::resources::{DAEMONSETS, DEPLOYMENTS, NODES, PDBS, PODS, REPLICASETS};
use crate::store::{Key, Obj, Store, Timer};
use crate::util;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Whether an object's status condition of a type is "True".
pub fn condition_true(obj: &Value, kind: &str) -> bool {
    util::path(obj, "status.conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == kind))
        .is_some_and(|c| c["status"] == "True")
}

/// A pod's Ready condition, as `podutil.IsPodReady` reads it.
pub fn pod_ready(pod: &Value) -> bool {
    condition_true(pod, "Ready")
}

fn deleting(o: &Value) -> bool {
    util::path(o, "metadata.deletionTimestamp").is_some()
}

fn uid(o: &Value) -> &str {
    util::str_at(o, "metadata.uid")
}

fn name(o: &Value) -> &str {
    util::str_at(o, "metadata.name")
}

fn ns(o: &Value) -> &str {
    util::str_at(o, "metadata.namespace")
}

/// The controller owner reference of an object: (kind, name, uid).
pub fn controller_of(o: &Value) -> Option<(&str, &str, &str)> {
    util::path(o, "metadata.ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .map(|r| {
            (
                r["kind"].as_str().unwrap_or(""),
                r["name"].as_str().unwrap_or(""),
                r["uid"].as_str().unwrap_or(""),
            )
        })
}

fn set_condition(obj: &mut Value, kind: &str, status: bool, reason: &str, message: &str) {
    let now = util::now_rfc3339();
    let st = if status { "True" } else { "False" };
    let status_obj = util::obj_mut(obj, "status");
    if !status_obj.get("conditions").is_some_and(Value::is_array) {
        status_obj["conditions"] = json!([]);
    }
    let conds = status_obj["conditions"].as_array_mut().expect("array");
    match conds.iter_mut().find(|c| c["type"] == kind) {
        Some(c) => {
            if c["status"] != st {
                c["lastTransitionTime"] = json!(now);
            }
            c["status"] = json!(st);
            c["reason"] = json!(reason);
            if message.is_empty() {
                if let Some(m) = c.as_object_mut() {
                    m.remove("message");
                }
            } else {
                c["message"] = json!(message);
            }
        }
        None => {
            let mut c = json!({"type": kind, "status": st, "lastTransitionTime": now});
            if !reason.is_empty() {
                c["reason"] = json!(reason);
            }
            if !message.is_empty() {
                c["message"] = json!(message);
            }
            conds.push(c);
        }
    }
}

/// Runs due timers and, when something changed and `may_reconcile`, one reconcile pass of
/// every controller. Returns whether it reconciled.
pub fn tick(store: &mut Store, now: Instant, may_reconcile: bool) -> bool {
    for t in store.due_timers(now) {
        fire(store, t);
    }
    if store.dirty && may_reconcile {
        store.dirty = false;
        reconcile(store);
        return true;
    }
    false
}

fn fire(store: &mut Store, t: Timer) {
    match t {
        Timer::PodStart(key, want_uid) => {
            let Some(pod) = store.get_obj(&PODS, &key.0, &key.1).cloned() else {
                return;
            };
            if uid(&pod) != want_uid || deleting(&pod) {
                return;
            }
            let node = util::str_at(&pod, "spec.nodeName");
            if node.is_empty() {
                return;
            }
            if !store.node_ready(node) {
                let delay = store.opts.pod_start_delay;
                store.schedule(delay, Timer::PodStart(key, want_uid));
                return;
            }
            let mut p = (*pod).clone();
            start_pod(&mut p, store.get_obj(&NODES, "", node));
            store.commit(&PODS, p);
        }
        Timer::PodRemove(key, want_uid) => {
            let Some(pod) = store.get_obj(&PODS, &key.0, &key.1) else {
                return;
            };
            let finalizers = util::path(pod, "metadata.finalizers")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
            if uid(pod) == want_uid && deleting(pod) && !finalizers {
                store.remove(&PODS, &key);
            }
        }
        Timer::NodeUp(node) => {
            let Some(n) = store.get_obj(&NODES, "", &node).cloned() else {
                return;
            };
            let mut n = (*n).clone();
            set_condition(
                &mut n,
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            );
            store.commit(&NODES, n);
            let delay = store.opts.pod_start_delay;
            for key in store.pods_on_node(&node) {
                let Some(p) = store.get_obj(&PODS, &key.0, &key.1) else {
                    continue;
                };
                if deleting(p) {
                    continue;
                }
                let mut p = (**p).clone();
                if let Some(cs) = util::path_mut(&mut p, "status.containerStatuses") {
                    for c in cs.as_array_mut().into_iter().flatten() {
                        let n = c["restartCount"].as_i64().unwrap_or(0);
                        c["restartCount"] = json!(n + 1);
                    }
                }
                let u = uid(&p).to_string();
                store.commit(&PODS, p);
                store.schedule(delay, Timer::PodStart(key, u));
            }
        }
    }
}

/// Marks a pod Running with every container ready (the kubelet's view after start-up).
fn start_pod(p: &mut Value, node: Option<&Obj>) {
    let now = util::now_rfc3339();
    let host_ip = node
        .and_then(|n| util::path(n, "status.addresses"))
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| a["address"].as_str())
        .unwrap_or("")
        .to_string();
    let containers: Vec<Value> = util::path(p, "spec.containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old_restarts: HashMap<String, i64> = util::path(p, "status.containerStatuses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["restartCount"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    let status = util::obj_mut(p, "status");
    status["phase"] = json!("Running");
    if status.get("startTime").is_none() {
        status["startTime"] = json!(now);
    }
    if status.get("podIP").is_none() {
        let ip = crate::store::fake_ip();
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status["hostIP"] = json!(host_ip);
    status["qosClass"] = json!("BestEffort");
    status["containerStatuses"] = Value::Array(
        containers
            .iter()
            .map(|c| {
                let n = c["name"].as_str().unwrap_or("");
                json!({
                    "name": n,
                    "image": c["image"],
                    "imageID": "",
                    "ready": true,
                    "started": true,
                    "restartCount": old_restarts.get(n).copied().unwrap_or(0),
                    "state": {"running": {"startedAt": now}},
                })
            })
            .collect(),
    );
    for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        set_condition(p, c, true, "", "");
    }
}

/// Takes a node down (NotReady) for `down`; its pods lose readiness and come back after it.
pub fn reboot_node(store: &mut Store, node: &str, down: Duration) -> bool {
    let Some(n) = store.get_obj(&NODES, "", node).cloned() else {
        return false;
    };
    let mut n = (*n).clone();
    set_condition(
        &mut n,
        "Ready",
        false,
        "KubeletNotReady",
        "node is rebooting (simulated)",
    );
    store.commit(&NODES, n);
    for key in store.pods_on_node(node) {
        let Some(p) = store.get_obj(&PODS, &key.0, &key.1) else {
            continue;
        };
        if deleting(p) || !pod_ready(p) {
            continue;
        }
        let mut p = (**p).clone();
        set_condition(
            &mut p,
            "Ready",
            false,
            "ContainersNotReady",
            "node rebooting",
        );
        set_condition(
            &mut p,
            "ContainersReady",
            false,
            "ContainersNotReady",
            "node rebooting",
        );
        if let Some(cs) = util::path_mut(&mut p, "status.containerStatuses") {
            for c in cs.as_array_mut().into_iter().flatten() {
                c["ready"] = json!(false);
            }
        }
        store.commit(&PODS, p);
    }
    store.schedule(down, Timer::NodeUp(node.to_string()));
    true
}

fn reconcile(store: &mut Store) {
    store.finish_namespace_deletions();
    schedule_pending(store);
    collect_orphans(store);
    collect_garbage(store);
    deployments(store);
    replicasets(store);
    daemonsets(store);
    disruption_budgets(store);
}

/// Nodes a new pod may go to, by name.
fn schedulable_nodes(store: &Store) -> Vec<(String, Value)> {
    store
        .all(&NODES)
        .filter(|n| {
            util::path(n, "spec.unschedulable") != Some(&json!(true))
                && condition_true(n, "Ready")
                && !deleting(n)
        })
        .map(|n| {
            (
                name(n).to_string(),
                util::path(n, "metadata.labels")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn node_selector_ok(pod_spec: &Value, node_labels: &Value) -> bool {
    match pod_spec.get("nodeSelector").and_then(Value::as_object) {
        None => true,
        Some(sel) => sel.iter().all(|(k, v)| node_labels.get(k) == Some(v)),
    }
}

/// The least loaded schedulable node for a pod spec.
fn pick_node(store: &Store, nodes: &[(String, Value)], pod_spec: &Value) -> Option<String> {
    nodes
        .iter()
        .filter(|(_, labels)| node_selector_ok(pod_spec, labels))
        .min_by_key(|(n, _)| (store.pod_count_on_node(n), n.clone()))
        .map(|(n, _)| n.clone())
}

fn schedule_pending(store: &mut Store) {
    let pending: Vec<Obj> = store
        .unbound_pods
        .iter()
        .filter_map(|(ns, n)| store.get_obj(&PODS, ns, n))
        .filter(|p| matches!(util::str_at(p, "status.phase"), "" | "Pending"))
        .cloned()
        .collect();
    if pending.is_empty() {
        return;
    }
    let nodes = schedulable_nodes(store);
    for p in pending {
        let spec = p.get("spec").cloned().unwrap_or(json!({}));
        if let Some(node) = pick_node(store, &nodes, &spec) {
            let mut p = (*p).clone();
            p["spec"]["nodeName"] = json!(node);
            set_condition(&mut p, "PodScheduled", true, "", "");
            store.commit(&PODS, p);
        }
    }
}

/// The pod garbage collector: pods bound to nodes that no longer exist are removed.
fn collect_orphans(store: &mut Store) {
    if !std::mem::take(&mut store.nodes_removed) {
        return;
    }
    let nodes: HashSet<String> = store.all(&NODES).map(|n| name(n).to_string()).collect();
    let orphans: Vec<Key> = store
        .all(&PODS)
        .filter(|p| {
            let n = util::str_at(p, "spec.nodeName");
            !n.is_empty() && !nodes.contains(n)
        })
        .map(|p| (ns(p).to_string(), name(p).to_string()))
        .collect();
    for k in orphans {
        store.remove(&PODS, &k);
    }
}

/// The garbage collector (background propagation): ReplicaSets whose Deployment and pods whose
/// ReplicaSet or DaemonSet are gone are deleted.
fn collect_garbage(store: &mut Store) {
    if !std::mem::take(&mut store.owners_removed) {
        return;
    }
    let owners: HashSet<String> = [&DEPLOYMENTS, &REPLICASETS, &DAEMONSETS]
        .iter()
        .flat_map(|d| store.all(d).map(|o| uid(o).to_string()))
        .collect();
    let orphaned = |o: &Value| {
        controller_of(o).is_some_and(|(kind, _, u)| {
            matches!(kind, "Deployment" | "ReplicaSet" | "DaemonSet") && !owners.contains(u)
        })
    };
    let sets: Vec<Key> = store
        .all(&REPLICASETS)
        .filter(|r| orphaned(r))
        .map(|r| (ns(r).to_string(), name(r).to_string()))
        .collect();
    let pods: Vec<Key> = store
        .all(&PODS)
        .filter(|p| orphaned(p) && !deleting(p))
        .map(|p| (ns(p).to_string(), name(p).to_string()))
        .collect();
    for k in sets {
        let _ = store.delete(&REPLICASETS, &k.0, &k.1, &Default::default());
    }
    for k in pods {
        let _ = store.delete(&PODS, &k.0, &k.1, &Default::default());
    }
}

fn owner_ref(kind: &str, owner: &Value) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Active pods (not terminating, not finished) by the uid of their controller.
fn pods_by_owner(store: &Store) -> HashMap<String, Vec<Obj>> {
    let mut m: HashMap<String, Vec<Obj>> = HashMap::new();
    for p in store.all(&PODS) {
        if deleting(p) || matches!(util::str_at(p, "status.phase"), "Succeeded" | "Failed") {
            continue;
        }
        if let Some((_, _, u)) = controller_of(p) {
            m.entry(u.to_string()).or_default().push(p.clone());
        }
    }
    m
}

fn new_pod(owner_kind: &str, owner: &Value, node: Option<&str>, extra_tolerations: bool) -> Value {
    let template = util::path(owner, "spec.template")
        .cloned()
        .unwrap_or(json!({}));
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    let base = name(owner);
    meta["name"] = json!(format!("{base}-{}", util::rand_suffix(5)));
    meta["generateName"] = json!(format!("{base}-"));
    meta["namespace"] = json!(ns(owner));
    meta["ownerReferences"] = json!([owner_ref(owner_kind, owner)]);
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    if let Some(n) = node {
        spec["nodeName"] = json!(n);
    }
    if extra_tolerations {
        let mut tol = spec
            .get("tolerations")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (key, effect) in [
            ("node.kubernetes.io/not-ready", "NoExecute"),
            ("node.kubernetes.io/unreachable", "NoExecute"),
            ("node.kubernetes.io/unschedulable", "NoSchedule"),
        ] {
            tol.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
        spec["tolerations"] = Value::Array(tol);
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

fn replicas(o: &Value) -> i64 {
    util::path(o, "spec.replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

fn generation(o: &Value) -> i64 {
    util::path(o, "metadata.generation")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Replaces an object's status if it differs.
fn write_status(store: &mut Store, def: &crate::resources::ResourceDef, obj: &Obj, status: Value) {
    if obj.get("status") != Some(&status) {
        let mut o = (**obj).clone();
        o["status"] = status;
        store.commit(def, o);
    }
}

fn deployments(store: &mut Store) {
    let deps: Vec<Obj> = store
        .all(&DEPLOYMENTS)
        .filter(|d| !deleting(d))
        .cloned()
        .collect();
    for d in deps {
        let template = util::path(&d, "spec.template")
            .cloned()
            .unwrap_or(json!({}));
        let hash = util::template_hash(&template);
        let rs_name = format!("{}-{hash}", name(&d));
        let owned: Vec<Obj> = store
            .in_namespace(&REPLICASETS, ns(&d))
            .filter(|rs| controller_of(rs).is_some_and(|(_, _, u)| u == uid(&d)))
            .cloned()
            .collect();
        let want = replicas(&d);
        if !owned.iter().any(|rs| name(rs) == rs_name) {
            let mut tmpl = template.clone();
            util::obj_mut(util::obj_mut(&mut tmpl, "metadata"), "labels")["pod-template-hash"] =
                json!(hash);
            let mut selector = util::path(&d, "spec.selector")
                .cloned()
                .unwrap_or(json!({}));
            util::obj_mut(&mut selector, "matchLabels")["pod-template-hash"] = json!(hash);
            let rs = json!({
                "metadata": {
                    "name": rs_name,
                    "labels": tmpl["metadata"]["labels"],
                    "annotations": {"deployment.kubernetes.io/revision": (owned.len() + 1).to_string()},
                    "ownerReferences": [owner_ref("Deployment", &d)],
                },
                "spec": {"replicas": want, "selector": selector, "template": tmpl},
            });
            if let Err(e) = store.create(&REPLICASETS, ns(&d), rs, false) {
                eprintln!("kube-testserver: deployment controller: {e}");
            }
        }
        for rs in &owned {
            let desired = if name(rs) == rs_name { want } else { 0 };
            if replicas(rs) != desired {
                let mut r = (**rs).clone();
                r["spec"]["replicas"] = json!(desired);
                store.commit(&REPLICASETS, r);
            }
        }
        // Status from the ReplicaSets as they are now.
        let owned: Vec<Obj> = store
            .in_namespace(&REPLICASETS, ns(&d))
            .filter(|rs| controller_of(rs).is_some_and(|(_, _, u)| u == uid(&d)))
            .cloned()
            .collect();
        let sum = |f: &str| -> i64 {
            owned
                .iter()
                .map(|rs| {
                    util::path(rs, &format!("status.{f}"))
                        .and_then(Value::as_i64)
                        .unwrap_or(0)
                })
                .sum()
        };
        let updated = owned
            .iter()
            .find(|rs| name(rs) == rs_name)
            .and_then(|rs| util::path(rs, "status.replicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (total, ready, available) = (
            sum("replicas"),
            sum("readyReplicas"),
            sum("availableReplicas"),
        );
        let mut status = d.get("status").cloned().unwrap_or(json!({}));
        status["observedGeneration"] = json!(generation(&d));
        status["replicas"] = json!(total);
        status["updatedReplicas"] = json!(updated);
        status["readyReplicas"] = json!(ready);
        status["availableReplicas"] = json!(available);
        status["unavailableReplicas"] = json!((want - available).max(0));
        let mut holder = json!({"status": status});
        let avail = available >= want;
        set_condition(
            &mut holder,
            "Available",
            avail,
            if avail {
                "MinimumReplicasAvailable"
            } else {
                "MinimumReplicasUnavailable"
            },
            if avail {
                "Deployment has minimum availability."
            } else {
                "Deployment does not have minimum availability."
            },
        );
        set_condition(
            &mut holder,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            "",
        );
        for t in [&d.get("status")] {
            // Keep condition timestamps stable when nothing changed.
            if let Some(old) = t
                .and_then(|s| s.get("conditions"))
                .and_then(Value::as_array)
            {
                for c in holder["status"]["conditions"]
                    .as_array_mut()
                    .into_iter()
                    .flatten()
                {
                    if let Some(o) = old
                        .iter()
                        .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                    {
                        c["lastTransitionTime"] = o["lastTransitionTime"].clone();
                    }
                }
            }
        }
        write_status(store, &DEPLOYMENTS, &d, holder["status"].take());
    }
}

fn replicasets(store: &mut Store) {
    let sets: Vec<Obj> = store
        .all(&REPLICASETS)
        .filter(|r| !deleting(r))
        .cloned()
        .collect();
    if sets.is_empty() {
        return;
    }
    let mut by_owner = pods_by_owner(store);
    let mut nodes: Option<Vec<(String, Value)>> = None;
    for rs in sets {
        let mut active = by_owner.remove(uid(&rs)).unwrap_or_default();
        let want = replicas(&rs);
        let have = active.len() as i64;
        if have < want {
            let nodes = nodes.get_or_insert_with(|| schedulable_nodes(store));
            let spec = util::path(&rs, "spec.template.spec")
                .cloned()
                .unwrap_or(json!({}));
            for _ in have..want {
                let node = pick_node(store, nodes, &spec);
                let pod = new_pod("ReplicaSet", &rs, node.as_deref(), false);
                match store.create(&PODS, ns(&rs), pod, false) {
                    Ok(p) => active.push(p),
                    Err(e) => eprintln!("kube-testserver: replicaset controller: {e}"),
                }
            }
        } else if have > want {
            // Unbound, then not ready, then newest go first, as the real controller prefers.
            active.sort_by_key(|p| {
                (
                    !util::str_at(p, "spec.nodeName").is_empty(),
                    pod_ready(p),
                    std::cmp::Reverse(util::str_at(p, "metadata.creationTimestamp").to_string()),
                )
            });
            let extra: Vec<Obj> = active.drain(..(have - want) as usize).collect();
            for p in extra {
                let _ = store.delete(&PODS, ns(&p), name(&p), &Default::default());
            }
        }
        let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;
        let mut status = json!({
            "replicas": active.len(),
            "fullyLabeledReplicas": active.len(),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": generation(&rs),
        });
        if ready == 0 {
            if let Some(m) = status.as_object_mut() {
                m.remove("readyReplicas");
                m.remove("availableReplicas");
            }
        }
        let rs = store
            .get_obj(&REPLICASETS, ns(&rs), name(&rs))
            .cloned()
            .unwrap_or(rs);
        write_status(store, &REPLICASETS, &rs, status);
    }
}

fn daemonsets(store: &mut Store) {
    let sets: Vec<Obj> = store
        .all(&DAEMONSETS)
        .filter(|d| !deleting(d))
        .cloned()
        .collect();
    if sets.is_empty() {
        return;
    }
    let mut by_owner = pods_by_owner(store);
    let nodes: Vec<(String, Value)> = store
        .all(&NODES)
        .filter(|n| !deleting(n))
        .map(|n| {
            (
                name(n).to_string(),
                util::path(n, "metadata.labels")
                    .cloned()
                    .unwrap_or(Value::Null),
            )
        })
        .collect();
    for ds in sets {
        let spec = util::path(&ds, "spec.template.spec")
            .cloned()
            .unwrap_or(json!({}));
        let wanted: HashSet<&str> = nodes
            .iter()
            .filter(|(_, l)| node_selector_ok(&spec, l))
            .map(|(n, _)| n.as_str())
            .collect();
        let mut per_node: HashMap<String, Vec<Obj>> = HashMap::new();
        for p in by_owner.remove(uid(&ds)).unwrap_or_default() {
            per_node
                .entry(util::str_at(&p, "spec.nodeName").to_string())
                .or_default()
                .push(p);
        }
        for (node, pods) in &per_node {
            let keep = usize::from(wanted.contains(node.as_str()));
            for p in pods.iter().skip(keep) {
                let _ = store.delete(&PODS, ns(p), name(p), &Default::default());
            }
        }
        let mut ready = 0;
        for node in &wanted {
            match per_node.get(*node).and_then(|v| v.first()) {
                Some(p) => ready += i64::from(pod_ready(p)),
                None => {
                    let pod = new_pod("DaemonSet", &ds, Some(node), true);
                    if let Err(e) = store.create(&PODS, ns(&ds), pod, false) {
                        eprintln!("kube-testserver: daemonset controller: {e}");
                    }
                }
            }
        }
        let desired = wanted.len() as i64;
        let status = json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": desired,
            "updatedNumberScheduled": desired,
            "numberMisscheduled": 0,
            "numberReady": ready,
            "numberAvailable": ready,
            "numberUnavailable": desired - ready,
            "observedGeneration": generation(&ds),
        });
        write_status(store, &DAEMONSETS, &ds, status);
    }
}

/// An IntOrString budget value against a count: ints as they are, percentages rounded up.
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let p: i64 = s.strip_suffix('%')?.trim().parse().ok()?;
            Some((p * total + 99) / 100)
        }
        _ => None,
    }
}

/// The scale of the controllers of a PDB's pods (the disruption controller's expected count).
fn expected_pods(store: &Store, pods: &[Obj]) -> i64 {
    let mut seen = HashSet::new();
    let mut total = 0;
    for p in pods {
        match controller_of(p) {
            Some(("ReplicaSet", rs_name, u)) => {
                if !seen.insert(u.to_string()) {
                    continue;
                }
                let Some(rs) = store.get_obj(&REPLICASETS, ns(p), rs_name) else {
                    total += 1;
                    continue;
                };
                match controller_of(rs) {
                    Some(("Deployment", dn, du)) => {
                        if seen.insert(du.to_string()) {
                            total += store
                                .get_obj(&DEPLOYMENTS, ns(p), dn)
                                .map_or(1, |d| replicas(d));
                        }
                    }
                    _ => total += replicas(rs),
                }
            }
            _ => total += 1,
        }
    }
    total
}

fn disruption_budgets(store: &mut Store) {
    let dirty = std::mem::take(&mut store.dirty_pdbs);
    let pdbs: Vec<Obj> = dirty
        .iter()
        .filter_map(|(ns, n)| store.get_obj(&PDBS, ns, n))
        .cloned()
        .collect();
    let now = util::now_secs();
    for pdb in pdbs {
        let pods: Vec<Obj> = match util::path(&pdb, "spec.selector") {
            Some(sel) => store.pods_matching(ns(&pdb), sel),
            None => Vec::new(),
        };
        let old_status = pdb.get("status").cloned().unwrap_or(json!({}));
        let mut disrupted = serde_json::Map::new();
        if let Some(m) = old_status.get("disruptedPods").and_then(Value::as_object) {
            for (pod_name, at) in m {
                let alive = pods.iter().any(|p| name(p) == pod_name && !deleting(p));
                let fresh = at
                    .as_str()
                    .and_then(util::parse_rfc3339)
                    .is_some_and(|t| now - t < 120.0);
                if alive && fresh {
                    disrupted.insert(pod_name.clone(), at.clone());
                }
            }
        }
        let healthy = pods
            .iter()
            .filter(|p| !deleting(p) && pod_ready(p) && !disrupted.contains_key(name(p)))
            .count() as i64;
        let spec = pdb.get("spec").cloned().unwrap_or(json!({}));
        let (expected, desired) = if let Some(max_un) = spec.get("maxUnavailable") {
            let expected = expected_pods(store, &pods);
            (
                expected,
                (expected - scaled(max_un, expected).unwrap_or(0)).max(0),
            )
        } else if let Some(min) = spec.get("minAvailable") {
            if min.is_number() {
                (pods.len() as i64, min.as_i64().unwrap_or(0))
            } else {
                let expected = expected_pods(store, &pods);
                (expected, scaled(min, expected).unwrap_or(0))
            }
        } else {
            let expected = pods.len() as i64;
            (expected, expected)
        };
        let allowed = (healthy - desired).max(0);
        let mut holder = json!({"status": {
            "observedGeneration": generation(&pdb),
            "disruptionsAllowed": allowed,
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
        }});
        if !disrupted.is_empty() {
            holder["status"]["disruptedPods"] = Value::Object(disrupted);
        }
        holder["status"]["conditions"] = old_status.get("conditions").cloned().unwrap_or(json!([]));
        let ok = allowed > 0;
        set_condition(
            &mut holder,
            "DisruptionAllowed",
            ok,
            if ok {
                "SufficientPods"
            } else {
                "InsufficientPods"
            },
            "",
        );
        if let Some(c) = holder["status"]["conditions"].as_array_mut() {
            for c in c {
                c["observedGeneration"] = json!(generation(&pdb));
                // metav1.Condition always carries a message (typed clients require it).
                if c.get("message").is_none() {
                    c["message"] = json!("");
                }
            }
        }
        write_status(store, &PDBS, &pdb, holder["status"].take());
    }
}
