//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for with
//! `Accept: application/json;as=Table;...`. Columns follow kubectl's printers for the types
//! the tests show (`-o wide` adds the priority-1 columns). Formatting only.

use crate::controllers::{condition_true, pod_ready};
use crate::resources::ResourceDef;
use crate::store::Obj;
use crate::util;
use serde_json::{json, Value};

/// kubectl's `HumanDuration` for an AGE column.
pub fn human_duration(secs: f64) -> String {
    if secs < -1.0 {
        return "<invalid>".into();
    }
    let s = secs.max(0.0) as i64;
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    format!("{}y", h / 24 / 365)
}

fn age(o: &Value) -> String {
    match util::parse_rfc3339(util::str_at(o, "metadata.creationTimestamp")) {
        Some(t) => human_duration(util::now_secs() - t),
        None => "<unknown>".into(),
    }
}

fn col(name: &str, ty: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "<none>".into(),
    }
}

fn num(o: &Value, p: &str) -> i64 {
    util::path(o, p).and_then(Value::as_i64).unwrap_or(0)
}

fn pod_row(p: &Value) -> Vec<Value> {
    let statuses: Vec<Value> = util::path(p, "status.containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = util::path(p, "spec.containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let mut reason = util::str_at(p, "status.phase").to_string();
    for c in &statuses {
        if let Some(r) = util::path(c, "state.waiting.reason").and_then(Value::as_str) {
            reason = r.to_string();
        }
    }
    if util::path(p, "metadata.deletionTimestamp").is_some() {
        reason = "Terminating".into();
    } else if reason == "Running" && !pod_ready(p) && ready < total {
        reason = "Running".into();
    }
    let ip = util::str_at(p, "status.podIP");
    let node = util::str_at(p, "spec.nodeName");
    vec![
        json!(util::str_at(p, "metadata.name")),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        json!(age(p)),
        json!(if ip.is_empty() { "<none>" } else { ip }),
        json!(if node.is_empty() { "<none>" } else { node }),
        json!("<none>"),
        json!("<none>"),
    ]
}

fn node_row(n: &Value) -> Vec<Value> {
    let mut status = if condition_true(n, "Ready") {
        "Ready".to_string()
    } else if util::path(n, "status.conditions").is_some() {
        "NotReady".to_string()
    } else {
        "Unknown".to_string()
    };
    if util::path(n, "spec.unschedulable") == Some(&json!(true)) {
        status.push_str(",SchedulingDisabled");
    }
    let mut roles: Vec<String> = util::path(n, "metadata.labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .collect();
    roles.sort();
    let addr = |kind: &str| {
        util::path(n, "status.addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == kind))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    vec![
        json!(util::str_at(n, "metadata.name")),
        json!(status),
        json!(if roles.is_empty() {
            "<none>".into()
        } else {
            roles.join(",")
        }),
        json!(age(n)),
        json!(s(util::path(n, "status.nodeInfo.kubeletVersion"))),
        json!(addr("InternalIP")),
        json!(addr("ExternalIP")),
        json!(s(util::path(n, "status.nodeInfo.osImage"))),
        json!(s(util::path(n, "status.nodeInfo.kernelVersion"))),
        json!(s(util::path(n, "status.nodeInfo.containerRuntimeVersion"))),
    ]
}

type RowFn = fn(&Value) -> Vec<Value>;

fn columns_and_row(def: &ResourceDef) -> (Vec<Value>, RowFn) {
    match def.plural {
        "pods" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Status", "string", 0),
                col("Restarts", "string", 0),
                col("Age", "string", 0),
                col("IP", "string", 1),
                col("Node", "string", 1),
                col("Nominated Node", "string", 1),
                col("Readiness Gates", "string", 1),
            ],
            pod_row,
        ),
        "nodes" => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Roles", "string", 0),
                col("Age", "string", 0),
                col("Version", "string", 0),
                col("Internal-IP", "string", 1),
                col("External-IP", "string", 1),
                col("OS-Image", "string", 1),
                col("Kernel-Version", "string", 1),
                col("Container-Runtime", "string", 1),
            ],
            node_row,
        ),
        "deployments" => (
            vec![
                col("Name", "string", 0),
                col("Ready", "string", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            |d| {
                vec![
                    json!(util::str_at(d, "metadata.name")),
                    json!(format!(
                        "{}/{}",
                        num(d, "status.readyReplicas"),
                        num(d, "spec.replicas")
                    )),
                    json!(num(d, "status.updatedReplicas")),
                    json!(num(d, "status.availableReplicas")),
                    json!(age(d)),
                ]
            },
        ),
        "replicasets" => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Age", "string", 0),
            ],
            |r| {
                vec![
                    json!(util::str_at(r, "metadata.name")),
                    json!(num(r, "spec.replicas")),
                    json!(num(r, "status.replicas")),
                    json!(num(r, "status.readyReplicas")),
                    json!(age(r)),
                ]
            },
        ),
        "daemonsets" => (
            vec![
                col("Name", "string", 0),
                col("Desired", "integer", 0),
                col("Current", "integer", 0),
                col("Ready", "integer", 0),
                col("Up-to-date", "integer", 0),
                col("Available", "integer", 0),
                col("Age", "string", 0),
            ],
            |d| {
                vec![
                    json!(util::str_at(d, "metadata.name")),
                    json!(num(d, "status.desiredNumberScheduled")),
                    json!(num(d, "status.currentNumberScheduled")),
                    json!(num(d, "status.numberReady")),
                    json!(num(d, "status.updatedNumberScheduled")),
                    json!(num(d, "status.numberAvailable")),
                    json!(age(d)),
                ]
            },
        ),
        "poddisruptionbudgets" => (
            vec![
                col("Name", "string", 0),
                col("Min Available", "string", 0),
                col("Max Unavailable", "string", 0),
                col("Allowed Disruptions", "integer", 0),
                col("Age", "string", 0),
            ],
            |p| {
                let v = |f: &str| match util::path(p, f) {
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::String(s)) => s.clone(),
                    _ => "N/A".into(),
                };
                vec![
                    json!(util::str_at(p, "metadata.name")),
                    json!(v("spec.minAvailable")),
                    json!(v("spec.maxUnavailable")),
                    json!(num(p, "status.disruptionsAllowed")),
                    json!(age(p)),
                ]
            },
        ),
        "configmaps" => (
            vec![
                col("Name", "string", 0),
                col("Data", "integer", 0),
                col("Age", "string", 0),
            ],
            |c| {
                let n = c
                    .get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
                    + c.get("binaryData")
                        .and_then(Value::as_object)
                        .map_or(0, |m| m.len());
                vec![
                    json!(util::str_at(c, "metadata.name")),
                    json!(n),
                    json!(age(c)),
                ]
            },
        ),
        "namespaces" => (
            vec![
                col("Name", "string", 0),
                col("Status", "string", 0),
                col("Age", "string", 0),
            ],
            |n| {
                vec![
                    json!(util::str_at(n, "metadata.name")),
                    json!(util::str_at(n, "status.phase")),
                    json!(age(n)),
                ]
            },
        ),
        "leases" => (
            vec![
                col("Name", "string", 0),
                col("Holder", "string", 0),
                col("Age", "string", 0),
            ],
            |l| {
                vec![
                    json!(util::str_at(l, "metadata.name")),
                    json!(util::str_at(l, "spec.holderIdentity")),
                    json!(age(l)),
                ]
            },
        ),
        _ => (
            vec![col("Name", "string", 0), col("Age", "string", 0)],
            |o| vec![json!(util::str_at(o, "metadata.name")), json!(age(o))],
        ),
    }
}

/// How much of each object a row carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

/// Renders objects as a Table.
pub fn render(def: &ResourceDef, items: &[Obj], rv: u64, include: Include) -> Value {
    let (columns, row) = columns_and_row(def);
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut r = json!({"cells": row(o)});
            match include {
                Include::None => {}
                Include::Metadata => {
                    r["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
                Include::Object => r["object"] = (**o).clone(),
            }
            r
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(human_duration(5.0), "5s");
        assert_eq!(human_duration(130.0), "2m10s");
        assert_eq!(human_duration(3600.0 * 5.0), "5h");
        assert_eq!(human_duration(86_400.0 * 3.0), "3d");
    }
}
