//! Builders for the objects tests seed: nodes, bare and owned pods, Deployments, DaemonSets and
//! PodDisruptionBudgets, as JSON ready for [`crate::TestServer::apply`]. Pods default to a 1 s
//! termination grace period so drains in tests finish quickly; everything else is as a user
//! would write it.

use serde_json::{json, Value};

/// A node (the server marks it Ready and fills addresses and nodeInfo).
pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
        "spec": {},
    })
}

/// A bare pod (no controller) bound to `node`, already Running and Ready.
pub fn pod(ns: &str, name: &str, node: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "registry.invalid/test:1"}],
        },
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ],
            "containerStatuses": [{"name": "main", "ready": true, "started": true,
                "restartCount": 0, "image": "registry.invalid/test:1",
                "state": {"running": {}}}],
        },
    })
}

/// Adds labels to an object.
pub fn with_labels(mut obj: Value, labels: &[(&str, &str)]) -> Value {
    for (k, v) in labels {
        obj["metadata"]["labels"][*k] = json!(v);
    }
    obj
}

/// Gives a pod an emptyDir volume (local storage for drain).
pub fn with_empty_dir(mut pod: Value) -> Value {
    pod["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    pod
}

/// Sets a pod's controller owner reference.
pub fn with_owner(mut obj: Value, api_version: &str, kind: &str, name: &str, uid: &str) -> Value {
    obj["metadata"]["ownerReferences"] = json!([{
        "apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true}]);
    obj
}

/// Marks a pod as a mirror (static) pod.
pub fn as_mirror(mut pod: Value) -> Value {
    pod["metadata"]["annotations"]["kubernetes.io/config.mirror"] = json!("mirror");
    pod
}

fn pod_template(app: &str) -> Value {
    json!({
        "metadata": {"labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "registry.invalid/test:1"}],
        },
    })
}

/// A Deployment of `replicas` pods labelled `app=<name>`.
pub fn deployment(ns: &str, name: &str, replicas: i64) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name),
        },
    })
}

/// A DaemonSet labelled `app=<name>` (one pod per node).
pub fn daemonset(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": pod_template(name),
        },
    })
}

/// A PodDisruptionBudget over `app=<app>` with `minAvailable` (an int or a "50%" string).
pub fn pdb_min_available(ns: &str, name: &str, app: &str, min_available: Value) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"minAvailable": min_available, "selector": {"matchLabels": {"app": app}}},
    })
}

/// A PodDisruptionBudget over `app=<app>` with `maxUnavailable` (an int or a "50%" string).
pub fn pdb_max_unavailable(ns: &str, name: &str, app: &str, max_unavailable: Value) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"maxUnavailable": max_unavailable, "selector": {"matchLabels": {"app": app}}},
    })
}
