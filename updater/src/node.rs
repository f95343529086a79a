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
/// The `patch-requested` value the node's last run started from. A request is served when
/// this mark equals it: the two strings are compared, not the times, so a client whose clock
/// differs from the node's (a laptop running `kubectl ospatch now`) is never ignored.
pub const REQUEST_SERVED: &str = "ospatch.bootpatch.io/request-served";
pub const BOOT_ID: &str = "ospatch.bootpatch.io/boot-id";
pub const FIRST_BOOT_RESULT: &str = "ospatch.bootpatch.io/first-boot-result";
pub const WORKLOADS_MOVED: &str = "ospatch.bootpatch.io/workloads-moved";
pub const SLOT: &str = "ospatch.bootpatch.io/slot";
/// Until when the node's current step may last before another node may take its slot over
/// (RFC 3339; written with every step of a run: the reboot deadline while rebooting).
pub const STEP_DEADLINE: &str = "ospatch.bootpatch.io/step-deadline";
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
        request_served: annotation(node, REQUEST_SERVED)
            .map(|served| Some(served) == annotation(node, PATCH_REQUESTED)),
    }
}

/// The `request-served` mark a run that starts from this node records: its request as it
/// stands (none when there is none).
pub fn served_mark(node: &Node) -> Option<String> {
    annotation(node, PATCH_REQUESTED).map(str::to_string)
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

/// The boot id the kubelet reports.
pub fn kubelet_boot_id(node: &Node) -> Option<&str> {
    node.status
        .as_ref()?
        .node_info
        .as_ref()
        .map(|i| i.boot_id.as_str())
        .filter(|b| !b.is_empty())
}

/// What a waiting node may do with a slot whose holder stopped renewing its Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// The holder is still within its step's deadline (a reboot, a slow apply, an API
    /// outage): the slot stays its own; look again at this time.
    Wait(DateTime<Utc>),
    /// The holder is not in a run on this slot (it finished, or the Node is gone): the Lease
    /// is stale and may be taken without blaming anyone.
    Stale,
    /// The holder overran its step's deadline: take the slot, mark the holder failed.
    Abandoned(String),
    /// The holder overran its deadline at `slot-held`, before it cordoned: nothing was done to
    /// the node, so nothing needs a human. Take the slot and send the holder back to idle; its
    /// run starts again when its agent is back.
    Reclaimed(String),
}

/// Decides on an expired slot from its holder Node's own state: its step and the step's
/// deadline, its slot annotation, Ready condition and boot id. Never on Lease expiry alone:
/// a node rebooting on purpose keeps its slot until its reboot deadline passes.
/// `fallback` is the deadline counted from `step-since` when the holder wrote none.
pub fn takeover(
    holder: Option<&Node>,
    slot: &str,
    now: DateTime<Utc>,
    fallback: std::time::Duration,
) -> Takeover {
    let Some(node) = holder else {
        return Takeover::Stale;
    };
    let step = step_of(node);
    if !step.in_run() || annotation(node, SLOT).is_some_and(|s| s != slot) {
        return Takeover::Stale;
    }
    let since = time_at(node, STEP_SINCE);
    let deadline = time_at(node, STEP_DEADLINE)
        .or_else(|| since.map(|t| t + chrono::Duration::from_std(fallback).unwrap_or_default()));
    let Some(deadline) = deadline else {
        // Nothing to go by: count from now, so the next look decides.
        return Takeover::Wait(now + chrono::Duration::from_std(fallback).unwrap_or_default());
    };
    if now < deadline {
        return Takeover::Wait(deadline);
    }
    let ready = if ready(node) { "Ready" } else { "not Ready" };
    let boot = match (annotation(node, BOOT_ID), kubelet_boot_id(node)) {
        (Some(a), Some(k)) if a != k => ", booted again",
        (Some(_), Some(_)) => ", same boot",
        _ => "",
    };
    let why = format!(
        "at step {step} since {}, past its deadline {} ({ready}{boot}), and its agent did not renew the slot",
        since.map_or_else(|| "?".into(), stamp),
        stamp(deadline)
    );
    if step == Step::SlotHeld {
        Takeover::Reclaimed(why)
    } else {
        Takeover::Abandoned(why)
    }
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

/// Now, as the agent and the plugin write times on Nodes: RFC 3339 in UTC, to the
/// millisecond. Whole seconds would move a deadline written a fraction of a second ahead
/// into the past, and a step's time since would read up to a second long.
pub fn now_rfc3339() -> String {
    stamp(Utc::now())
}

/// `t` as [`now_rfc3339`] writes it.
pub fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The merge patch that sets these annotations (`None` removes a key).
pub fn annotations_patch(pairs: &[(&str, Option<String>)]) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.clone().map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    serde_json::json!({"metadata": {"annotations": map}})
}

/// Merge-patches annotations on a node (`None` removes a key).
pub async fn annotate(
    client: &Client,
    node: &str,
    pairs: &[(&str, Option<String>)],
) -> Result<Node, kube::Error> {
    let api: Api<Node> = Api::all(client.clone());
    api.patch(
        node,
        &PatchParams::default(),
        &Patch::Merge(&annotations_patch(pairs)),
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
    fn a_run_started_in_the_requests_second_serves_the_request() {
        let req = DateTime::parse_from_rfc3339("2026-12-03T07:22:10.403Z")
            .unwrap()
            .with_timezone(&Utc);
        let started = req + chrono::Duration::milliseconds(300);
        let mut n = node(&[]);
        n.metadata.annotations = Some(BTreeMap::from([
            (
                PATCH_REQUESTED.to_string(),
                "2026-12-03T07:22:10.403Z".to_string(),
            ),
            (LAST_RUN_START.to_string(), stamp(started)),
        ]));
        let policy = crate::policy::PatchPolicy::default();
        let due = crate::policy::due(&policy, &record_of(&n), started);
        assert!(
            !matches!(due, crate::policy::Due::Now(_)),
            "the request was served by the run that started after it: {due:?}"
        );
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

    fn holder(ann: &[(&str, &str)]) -> Node {
        let mut n = node(&[]);
        n.metadata.annotations = Some(
            ann.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        n
    }

    #[test]
    fn an_expired_slot_is_taken_over_only_past_its_holders_deadline() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let now = t("2026-01-01T00:10:00Z");
        let d = std::time::Duration::from_secs(600);
        let rebooting = |deadline: &str| {
            holder(&[
                (STEP, "rebooting"),
                (STEP_SINCE, "2026-01-01T00:00:00Z"),
                (STEP_DEADLINE, deadline),
                (SLOT, "ospatch-slot-0"),
            ])
        };
        // Rebooting on purpose, within its deadline: the slot stays its own.
        let n = rebooting("2026-01-01T00:30:00Z");
        assert_eq!(
            takeover(Some(&n), "ospatch-slot-0", now, d),
            Takeover::Wait(t("2026-01-01T00:30:00Z"))
        );
        // Past it: abandoned, with the node's state in the message.
        let n = rebooting("2026-01-01T00:05:00Z");
        match takeover(Some(&n), "ospatch-slot-0", now, d) {
            Takeover::Abandoned(m) => {
                assert!(m.contains("rebooting") && m.contains("not Ready"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        // No deadline written: step-since + the fallback.
        let n = holder(&[(STEP, "patching"), (STEP_SINCE, "2026-01-01T00:00:00Z")]);
        let long = std::time::Duration::from_secs(1200);
        assert_eq!(
            takeover(Some(&n), "ospatch-slot-0", now, long),
            Takeover::Wait(t("2026-01-01T00:20:00Z"))
        );
        assert!(matches!(
            takeover(Some(&n), "ospatch-slot-0", now, d),
            Takeover::Abandoned(_)
        ));
        // Gone before it cordoned: reclaimed, not abandoned (nothing for a human to undo).
        let n = holder(&[
            (STEP, "slot-held"),
            (STEP_SINCE, "2026-01-01T00:00:00Z"),
            (STEP_DEADLINE, "2026-01-01T00:05:00Z"),
            (SLOT, "ospatch-slot-0"),
        ]);
        match takeover(Some(&n), "ospatch-slot-0", now, d) {
            Takeover::Reclaimed(m) => assert!(m.contains("slot-held"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Finished, in another slot, or gone: a stale Lease, nobody to blame.
        let idle = holder(&[(STEP, "idle")]);
        assert_eq!(
            takeover(Some(&idle), "ospatch-slot-0", now, d),
            Takeover::Stale
        );
        let other = holder(&[(STEP, "rebooting"), (SLOT, "ospatch-slot-1")]);
        assert_eq!(
            takeover(Some(&other), "ospatch-slot-0", now, d),
            Takeover::Stale
        );
        assert_eq!(takeover(None, "ospatch-slot-0", now, d), Takeover::Stale);
    }
}
