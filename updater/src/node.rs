//! What the agent records on its Node: the annotation keys (the reference page's Last Applied
//! Patch Time and Patched Version among them), reading them back into a record, the refusals
//! for managed node pools, and Events. The plugin reads the same keys.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Event, EventSource, Node, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use std::collections::BTreeMap;

use crate::cycle::Step;
use crate::policy::NodeRecord;

pub const PREFIX: &str = "ospatch.bootpatch.io/";
pub const LAST_APPLIED_PATCH_TIME: &str = "ospatch.bootpatch.io/last-applied-patch-time";
pub const PATCHED_VERSION: &str = "ospatch.bootpatch.io/patched-version";
pub const STEP: &str = "ospatch.bootpatch.io/step";
pub const STEP_SINCE: &str = "ospatch.bootpatch.io/step-since";
pub const REBOOT_REQUIRED: &str = "ospatch.bootpatch.io/reboot-required";
pub const CORDONED_BY_AGENT: &str = "ospatch.bootpatch.io/cordoned-by-agent";
pub const LAST_RUN_START: &str = "ospatch.bootpatch.io/last-run-start";
pub const LAST_RESULT: &str = "ospatch.bootpatch.io/last-result";
pub const LAST_MESSAGE: &str = "ospatch.bootpatch.io/last-message";
pub const PATCH_REQUESTED: &str = "ospatch.bootpatch.io/patch-requested";
pub const BOOT_ID: &str = "ospatch.bootpatch.io/boot-id";
pub const FIRST_BOOT_RESULT: &str = "ospatch.bootpatch.io/first-boot-result";
pub const WORKLOADS_MOVED: &str = "ospatch.bootpatch.io/workloads-moved";
pub const SLOT: &str = "ospatch.bootpatch.io/slot";
/// When and at which step the agent last stopped on a signal (SIGTERM: rollout, eviction).
pub const AGENT_STOPPED: &str = "ospatch.bootpatch.io/agent-stopped";

/// Node labels of managed node pools, where in-place patching is not offered.
pub const MANAGED_POOL_LABELS: [(&str, &str); 3] = [
    ("eks.amazonaws.com/nodegroup", "an EKS managed node group"),
    ("kubernetes.azure.com/agentpool", "an AKS node pool"),
    ("kubernetes.azure.com/cluster", "an AKS cluster"),
];

pub fn annotations(node: &Node) -> BTreeMap<String, String> {
    node.metadata.annotations.clone().unwrap_or_default()
}

pub fn annotation<'a>(node: &'a Node, key: &str) -> Option<&'a str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn time_at(node: &Node, key: &str) -> Option<DateTime<Utc>> {
    annotation(node, key)
        .and_then(|v| DateTime::parse_from_rfc3339(v).ok())
        .map(|t| t.with_timezone(&Utc))
}

pub fn step_of(node: &Node) -> Step {
    annotation(node, STEP)
        .and_then(Step::parse)
        .unwrap_or(Step::Idle)
}

pub fn record_of(node: &Node) -> NodeRecord {
    NodeRecord {
        last_applied_patch_time: time_at(node, LAST_APPLIED_PATCH_TIME),
        last_run_start: time_at(node, LAST_RUN_START),
        patch_requested: time_at(node, PATCH_REQUESTED),
    }
}

pub fn unschedulable(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

pub fn ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Why in-place patching is refused on this node, if it is.
pub fn refusal(node: &Node, imported_cluster: bool) -> Option<String> {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    for (label, what) in MANAGED_POOL_LABELS {
        if let Some(v) = labels.get(label) {
            return Some(format!(
                "in-place OS patching is not available on managed Kubernetes node pools: this node belongs to {what} ({label}={v}); update the node pool through the provider instead (for EKS, request a node group update to the latest patch version)"
            ));
        }
    }
    if imported_cluster {
        return Some("in-place OS patching is not available for imported clusters (importedCluster: true in the patch policy)".into());
    }
    None
}

pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Merge-patches annotations on a node (`None` removes a key).
pub async fn annotate(
    client: &Client,
    node: &str,
    pairs: &[(&str, Option<String>)],
) -> Result<Node, kube::Error> {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.clone().map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    let api: Api<Node> = Api::all(client.clone());
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"metadata": {"annotations": map}})),
    )
    .await
}

/// Posts a core/v1 Event about a node (`kubectl describe node` shows them).
pub async fn event(
    client: &Client,
    node: &str,
    warning: bool,
    reason: &str,
    message: &str,
) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), "default");
    let now = Utc::now();
    let ev = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{node}.{:x}",
                now.timestamp_nanos_opt().unwrap_or_default()
            )),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            uid: Some(node.to_string()),
            ..ObjectReference::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message.chars().take(1024).collect()),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("bootpatch-updater".into()),
            host: Some(node.to_string()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some("bootpatch-updater".into()),
        reporting_instance: Some(node.to_string()),
        ..Event::default()
    };
    api.create(&PostParams::default(), &ev).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    #[test]
    fn managed_pools_and_imported_clusters_are_refused() {
        assert!(refusal(&node(&[]), false).is_none());
        let m = refusal(&node(&[("eks.amazonaws.com/nodegroup", "ng-1")]), false).unwrap();
        assert!(m.contains("EKS") && m.contains("ng-1"), "{m}");
        let m = refusal(&node(&[("kubernetes.azure.com/agentpool", "pool1")]), false).unwrap();
        assert!(m.contains("AKS"), "{m}");
        assert!(refusal(&node(&[("kubernetes.azure.com/cluster", "c")]), false).is_some());
        assert!(refusal(&node(&[]), true).unwrap().contains("imported"));
    }
}
