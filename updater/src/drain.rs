//! Draining a node with `kubectl drain`'s semantics, exactly: the same pod filters in the same
//! order (a warning from an earlier filter is dropped when a later one passes, as in kubectl),
//! the same refusal and warning texts, refusal before anything is evicted, eviction in parallel
//! with a 5 s retry while a PodDisruptionBudget says 429, one global timeout, the grace period,
//! skip-wait for long-terminating pods, and plain DELETE with `disableEviction`. The filter
//! decisions are pure ([`plan`]); [`drain_node`] talks to the API. Cordoning is not done here.

use crate::policy::DrainPolicy;
use chrono::{DateTime, Utc};
use futures::future::join_all;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::Client;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const DAEMONSET_FATAL: &str = "DaemonSet-managed Pods (use --ignore-daemonsets to ignore)";
pub const DAEMONSET_WARNING: &str = "ignoring DaemonSet-managed Pods";
pub const LOCAL_STORAGE_FATAL: &str =
    "Pods with local storage (use --delete-emptydir-data to override)";
pub const LOCAL_STORAGE_WARNING: &str = "deleting Pods with local storage";
/// kubectl's text really starts with "cannot delete", so its message reads "cannot delete
/// cannot delete Pods that declare no controller ...": kept as kubectl prints it.
pub const UNMANAGED_FATAL: &str =
    "cannot delete Pods that declare no controller (use --force to override)";
pub const UNMANAGED_WARNING: &str = "deleting Pods that declare no controller";

/// What a filter says about one pod (kubectl's PodDeleteStatus).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub delete: bool,
    pub reason: Reason,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Okay,
    Skip,
    Warning,
    Error,
}

impl Status {
    fn okay() -> Self {
        Self {
            delete: true,
            reason: Reason::Okay,
            message: String::new(),
        }
    }
    fn skip() -> Self {
        Self {
            delete: false,
            reason: Reason::Skip,
            message: String::new(),
        }
    }
    fn warning(delete: bool, message: &str) -> Self {
        Self {
            delete,
            reason: Reason::Warning,
            message: message.to_string(),
        }
    }
    fn error(message: &str) -> Self {
        Self {
            delete: false,
            reason: Reason::Error,
            message: message.to_string(),
        }
    }
}

/// What the API said about a pod's DaemonSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DaemonSetLookup {
    Exists,
    /// 404, with the server's message (`daemonsets.apps "x" not found`).
    NotFound(String),
    /// Any other error, with its message.
    Failed(String),
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's controller owner reference: (kind, name).
pub fn controller_of(pod: &Pod) -> Option<(&str, &str)> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| (o.kind.as_str(), o.name.as_str()))
}

fn has_local_storage(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()))
}

/// kubectl's `shouldSkipPod`: terminating for longer than skipWaitForDeleteTimeout seconds.
pub fn should_skip(pod: &Pod, skip_wait_secs: u64, now: DateTime<Utc>) -> bool {
    if skip_wait_secs == 0 {
        return false;
    }
    match &pod.metadata.deletion_timestamp {
        Some(t) => (now - t.0).num_seconds() > skip_wait_secs as i64,
        None => false,
    }
}

/// Runs kubectl's filters in kubectl's order on one pod. The last status wins while filters
/// say delete; the first that says not to delete decides.
pub fn filter_pod(
    pod: &Pod,
    policy: &DrainPolicy,
    daemonset: &dyn Fn(&str, &str) -> DaemonSetLookup,
    now: DateTime<Utc>,
) -> Status {
    let filters: [&dyn Fn() -> Status; 5] = [
        // 1. skip pods deleted long ago
        &|| {
            if should_skip(pod, policy.skip_wait_for_delete_timeout, now) {
                Status::skip()
            } else {
                Status::okay()
            }
        },
        // 2. DaemonSet pods
        &|| match controller_of(pod) {
            Some(("DaemonSet", name)) if !finished(pod) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("");
                match daemonset(ns, name) {
                    DaemonSetLookup::NotFound(msg) if policy.force => Status::warning(true, &msg),
                    DaemonSetLookup::NotFound(msg) | DaemonSetLookup::Failed(msg) => {
                        Status::error(&msg)
                    }
                    DaemonSetLookup::Exists if !policy.ignore_daemon_sets => {
                        Status::error(DAEMONSET_FATAL)
                    }
                    DaemonSetLookup::Exists => Status::warning(false, DAEMONSET_WARNING),
                }
            }
            _ => Status::okay(),
        },
        // 3. mirror pods
        &|| {
            let mirror = pod
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"));
            if mirror {
                Status::skip()
            } else {
                Status::okay()
            }
        },
        // 4. local storage (emptyDir)
        &|| {
            if !has_local_storage(pod) || finished(pod) {
                Status::okay()
            } else if !policy.delete_local_data {
                Status::error(LOCAL_STORAGE_FATAL)
            } else {
                Status::warning(true, LOCAL_STORAGE_WARNING)
            }
        },
        // 5. unreplicated
        &|| {
            if finished(pod) || controller_of(pod).is_some() {
                Status::okay()
            } else if policy.force {
                Status::warning(true, UNMANAGED_WARNING)
            } else {
                Status::error(UNMANAGED_FATAL)
            }
        },
    ];
    let mut status = Status::okay();
    for f in filters {
        status = f();
        if !status.delete {
            break;
        }
    }
    status
}

/// One pod and what drain will do with it.
#[derive(Debug, Clone)]
pub struct PodDelete {
    pub pod: Pod,
    pub status: Status,
}

impl PodDelete {
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.pod.metadata.namespace.as_deref().unwrap_or(""),
            self.pod.metadata.name.as_deref().unwrap_or("")
        )
    }
}

/// kubectl's PodDeleteList: every pod on the node with its status.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub items: Vec<PodDelete>,
}

fn grouped(items: &[PodDelete], reason: Reason) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for i in items.iter().filter(|i| i.status.reason == reason) {
        let msg = if i.status.message.is_empty() && reason == Reason::Error {
            "unexpected error".to_string()
        } else {
            i.status.message.clone()
        };
        match out.iter_mut().find(|(m, _)| *m == msg) {
            Some((_, pods)) => pods.push(i.key()),
            None => out.push((msg, vec![i.key()])),
        }
    }
    out
}

impl Plan {
    /// Pods to evict (or delete).
    pub fn pods(&self) -> Vec<&Pod> {
        self.items
            .iter()
            .filter(|i| i.status.delete)
            .map(|i| &i.pod)
            .collect()
    }

    /// `cannot delete <message>: <ns/pod>, <ns/pod>`, one per message.
    pub fn errors(&self) -> Vec<String> {
        grouped(&self.items, Reason::Error)
            .into_iter()
            .map(|(m, p)| format!("cannot delete {m}: {}", p.join(", ")))
            .collect()
    }

    /// `<message>: <ns/pod>, ...`, one per message (kubectl joins them with "; ").
    pub fn warnings(&self) -> Vec<String> {
        grouped(&self.items, Reason::Warning)
            .into_iter()
            .map(|(m, p)| format!("{m}: {}", p.join(", ")))
            .collect()
    }
}

/// Builds the plan for a node's pods.
pub fn plan(
    pods: Vec<Pod>,
    policy: &DrainPolicy,
    daemonset: &dyn Fn(&str, &str) -> DaemonSetLookup,
    now: DateTime<Utc>,
) -> Plan {
    Plan {
        items: pods
            .into_iter()
            .map(|pod| {
                let status = filter_pod(&pod, policy, daemonset, now);
                PodDelete { pod, status }
            })
            .collect(),
    }
}

/// Why a drain did not finish. Each variant has a stable label for metrics and status.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Evicting(String),
    #[error("listing pods on the node: {0}")]
    Api(#[from] kube::Error),
}

impl DrainError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Refused(_) => "refused",
            Self::Timeout(_) => "timeout",
            Self::Evicting(_) => "evicting",
            Self::Api(_) => "api",
        }
    }
}

/// Receives what kubectl would print, and the PDB-blocked signal for metrics.
pub trait DrainObserver: Send + Sync {
    fn line(&self, text: &str);
    fn pdb_blocked(&self, _blocked: bool) {}
}

/// Collects lines (tests, the fleet benchmark).
#[derive(Debug, Default)]
pub struct Lines(pub std::sync::Mutex<Vec<String>>);

impl DrainObserver for Lines {
    fn line(&self, text: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(text.to_string());
    }
}

/// What a finished drain did.
#[derive(Debug, Clone, Default)]
pub struct DrainReport {
    /// `ns/name` of every pod evicted or deleted.
    pub evicted: Vec<String>,
    pub warnings: Vec<String>,
    /// Pods that were evicted: (namespace, name, controller kind, controller name).
    pub moved: Vec<(String, String, String, String)>,
}

/// Knobs that are kubectl constants, adjustable only for simulations.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Wait after a 429 before trying the eviction again (kubectl: 5 s).
    pub eviction_retry: Duration,
    /// Poll interval while waiting for pods to go (kubectl: 1 s).
    pub delete_poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            eviction_retry: Duration::from_secs(5),
            delete_poll: Duration::from_secs(1),
        }
    }
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == code)
}

fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(r) => r.message.clone(),
        other => other.to_string(),
    }
}

/// Lists the node's pods and decides, like `kubectl drain --dry-run`.
pub async fn plan_node(
    client: &Client,
    node: &str,
    policy: &DrainPolicy,
) -> Result<Plan, kube::Error> {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let mut lookups: HashMap<(String, String), DaemonSetLookup> = HashMap::new();
    for p in &list.items {
        if let Some(("DaemonSet", name)) = controller_of(p) {
            if finished(p) {
                continue;
            }
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let key = (ns.clone(), name.to_string());
            if lookups.contains_key(&key) {
                continue;
            }
            let dss: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);
            let r = match dss.get(name).await {
                Ok(_) => DaemonSetLookup::Exists,
                Err(e) if is_code(&e, 404) => DaemonSetLookup::NotFound(api_message(&e)),
                Err(e) => DaemonSetLookup::Failed(api_message(&e)),
            };
            lookups.insert(key, r);
        }
    }
    let lookup = |ns: &str, name: &str| {
        lookups
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
            .unwrap_or(DaemonSetLookup::Exists)
    };
    Ok(plan(list.items, policy, &lookup, Utc::now()))
}

/// Go's `time.Duration` formatting for the timeout message (`1m0s`, `600ms`).
pub fn go_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        return "0s".into();
    }
    if ns < 1_000_000_000 {
        return if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1000) {
            format!("{}µs", ns / 1000)
        } else {
            format!("{ns}ns")
        };
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{:09}", frac);
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{s}")
    } else if m > 0 {
        format!("{m}m{s}")
    } else {
        s
    }
}

/// Evicts a pod through its `eviction` subresource, as kubectl does: a policy/v1 Eviction
/// whose `deleteOptions.gracePeriodSeconds` is the drain's grace period, if it sets one.
/// (kube's `Api::evict` puts the options under `delete_options`, a field the API server does
/// not know and drops, so the pod's own grace period would apply instead of the policy's.)
async fn evict(api: &Api<Pod>, ns: &str, name: &str, grace: Option<u32>) -> kube::Result<()> {
    let mut body = serde_json::json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
    });
    if let Some(g) = grace {
        body["deleteOptions"] = serde_json::json!({"gracePeriodSeconds": g});
    }
    api.create_subresource::<serde_json::Value>(
        "eviction",
        name,
        &PostParams::default(),
        body.to_string().into_bytes(),
    )
    .await
    .map(drop)
}

/// Drains a (cordoned) node: plan, refuse if any pod is refused, then evict or delete every
/// pod the plan lets go and wait until they are gone, all within the policy's timeout.
pub async fn drain_node(
    client: &Client,
    node: &str,
    policy: &DrainPolicy,
    timing: &Timing,
    out: Arc<dyn DrainObserver>,
) -> Result<DrainReport, DrainError> {
    let plan = plan_node(client, node, policy).await?;
    let errors = plan.errors();
    if !errors.is_empty() {
        return Err(DrainError::Refused(errors));
    }
    let warnings = plan.warnings();
    if !warnings.is_empty() {
        out.line(&format!("Warning: {}", warnings.join("; ")));
    }
    let deadline = (!policy.timeout.is_zero()).then(|| Instant::now() + policy.timeout);
    let pods: Vec<Pod> = plan.pods().into_iter().cloned().collect();
    let grace = (policy.grace_period >= 0).then_some(policy.grace_period as u32);
    let blocked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results = join_all(pods.iter().map(|pod| {
        let out = out.clone();
        let blocked = blocked.clone();
        async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let dp = DeleteParams {
                grace_period_seconds: grace,
                ..DeleteParams::default()
            };
            if policy.disable_eviction {
                out.line(&format!("deleting pod {ns}/{name}"));
                match api.delete(&name, &dp).await {
                    Ok(_) => {}
                    Err(e) if is_code(&e, 404) => return Ok(None),
                    Err(e) => {
                        return Err(format!(
                            "error when deleting pods/{name:?} -n {ns:?}: {}",
                            api_message(&e)
                        ))
                    }
                }
            } else {
                out.line(&format!("evicting pod {ns}/{name}"));
                let mut was_blocked = false;
                loop {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        if was_blocked
                            && blocked.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1
                        {
                            out.pdb_blocked(false);
                        }
                        return Err(format!(
                            "error when evicting pods/{name:?} -n {ns:?}: global timeout reached: {}",
                            go_duration(policy.timeout)
                        ));
                    }
                    match evict(&api, &ns, &name, grace).await {
                        Ok(_) => break,
                        Err(e) if is_code(&e, 404) => {
                            if was_blocked
                                && blocked.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1
                            {
                                out.pdb_blocked(false);
                            }
                            return Ok(None);
                        }
                        Err(e) if is_code(&e, 429) => {
                            out.line(&format!(
                                "error when evicting pods/{name:?} -n {ns:?} (will retry after {}): {}",
                                go_duration(timing.eviction_retry),
                                api_message(&e)
                            ));
                            if !was_blocked {
                                was_blocked = true;
                                if blocked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                                    out.pdb_blocked(true);
                                }
                            }
                            let sleep_until = Instant::now() + timing.eviction_retry;
                            let sleep_until = deadline.map_or(sleep_until, |d| d.min(sleep_until));
                            tokio::time::sleep_until(sleep_until).await;
                            if let Ok(None) = api.get_opt(&name).await {
                                if blocked.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                                    out.pdb_blocked(false);
                                }
                                return Ok(None);
                            }
                        }
                        Err(e) => {
                            return Err(format!(
                                "error when evicting pods/{name:?} -n {ns:?}: {}",
                                api_message(&e)
                            ))
                        }
                    }
                }
                if was_blocked && blocked.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    out.pdb_blocked(false);
                }
            }
            // Wait until it is gone (or replaced by a new pod of the same name).
            let uid = pod.metadata.uid.clone();
            loop {
                match api.get_opt(&name).await {
                    Ok(None) => break,
                    Ok(Some(p)) if p.metadata.uid != uid => break,
                    Ok(Some(p)) if should_skip(&p, policy.skip_wait_for_delete_timeout, Utc::now()) => {
                        break
                    }
                    _ => {}
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(format!(
                        "drain did not complete within {}",
                        go_duration(policy.timeout)
                    ));
                }
                tokio::time::sleep(timing.delete_poll).await;
            }
            let verb = if policy.disable_eviction { "deleted" } else { "evicted" };
            out.line(&format!("pod/{name} {verb}"));
            let (kind, owner) = controller_of(pod)
                .map(|(k, n)| (k.to_string(), n.to_string()))
                .unwrap_or_default();
            Ok(Some((ns, name, kind, owner)))
        }
    }))
    .await;
    let mut report = DrainReport {
        warnings,
        ..DrainReport::default()
    };
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(Some(m)) => {
                report.evicted.push(format!("{}/{}", m.0, m.1));
                report.moved.push(m);
            }
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(report)
    } else if errors
        .iter()
        .any(|e| e.contains("timeout") || e.contains("did not complete"))
    {
        Err(DrainError::Timeout(errors.join("; ")))
    } else {
        Err(DrainError::Evicting(errors.join("; ")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    /// Builder fixtures for pods, as in the house style: `pod("a").daemonset_owned("ds")`.
    #[derive(Clone)]
    pub struct P(pub Pod);

    pub fn pod(name: &str) -> P {
        P(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        })
    }

    impl P {
        pub fn owned(mut self, kind: &str, name: &str) -> Self {
            self.0.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: kind.into(),
                name: name.into(),
                uid: format!("uid-{name}"),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]);
            self
        }
        pub fn daemonset_owned(self, ds: &str) -> Self {
            self.owned("DaemonSet", ds)
        }
        pub fn replicaset_owned(self, rs: &str) -> Self {
            self.owned("ReplicaSet", rs)
        }
        pub fn with_empty_dir(mut self) -> Self {
            self.0.spec.as_mut().unwrap().volumes = Some(vec![Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }]);
            self
        }
        pub fn mirror(mut self) -> Self {
            self.0.metadata.annotations =
                Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
            self
        }
        pub fn phase(mut self, phase: &str) -> Self {
            self.0.status.as_mut().unwrap().phase = Some(phase.into());
            self
        }
        pub fn deleted_secs_ago(mut self, now: DateTime<Utc>, secs: i64) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(now - chrono::Duration::seconds(secs)));
            self
        }
    }

    fn lookup(ns: &str, name: &str) -> DaemonSetLookup {
        let _ = ns;
        if name.starts_with("gone") {
            DaemonSetLookup::NotFound(format!("daemonsets.apps {name:?} not found"))
        } else {
            DaemonSetLookup::Exists
        }
    }

    fn policy(f: &str) -> DrainPolicy {
        DrainPolicy {
            force: f.contains('f'),
            ignore_daemon_sets: f.contains('i'),
            delete_local_data: f.contains('d'),
            skip_wait_for_delete_timeout: if f.contains('s') { 10 } else { 0 },
            ..DrainPolicy::default()
        }
    }

    fn decide(p: P, flags: &str) -> Status {
        filter_pod(&p.0, &policy(flags), &lookup, Utc::now())
    }

    #[test]
    fn daemonset_pods() {
        let ds = pod("a").daemonset_owned("agent");
        assert_eq!(decide(ds.clone(), ""), Status::error(DAEMONSET_FATAL));
        assert_eq!(
            decide(ds.clone(), "i"),
            Status::warning(false, DAEMONSET_WARNING)
        );
        assert_eq!(
            decide(ds.clone(), "fi"),
            Status::warning(false, DAEMONSET_WARNING)
        );
        assert!(decide(ds.phase("Succeeded"), "").delete);
        let orphan = pod("b").daemonset_owned("gone-agent");
        assert_eq!(
            decide(orphan.clone(), "i"),
            Status::error("daemonsets.apps \"gone-agent\" not found")
        );
        // With force: deleted; the warning is dropped by the later filters that pass.
        assert_eq!(decide(orphan.clone(), "f"), Status::okay());
        // The local-storage warning is dropped too (the unreplicated filter passes after it).
        assert_eq!(decide(orphan.with_empty_dir(), "fd"), Status::okay());
    }

    #[test]
    fn mirror_local_storage_unreplicated() {
        assert_eq!(decide(pod("m").mirror(), ""), Status::skip());
        // A mirror pod with no controller is skipped before the unreplicated filter refuses.
        assert_eq!(
            decide(pod("m").mirror().with_empty_dir(), ""),
            Status::skip()
        );
        let ed = pod("e").replicaset_owned("rs").with_empty_dir();
        assert_eq!(decide(ed.clone(), ""), Status::error(LOCAL_STORAGE_FATAL));
        assert_eq!(decide(ed.clone(), "d"), Status::okay());
        assert!(decide(ed.phase("Failed"), "").delete);
        assert_eq!(decide(pod("bare"), ""), Status::error(UNMANAGED_FATAL));
        assert_eq!(
            decide(pod("bare"), "f"),
            Status::warning(true, UNMANAGED_WARNING)
        );
        assert_eq!(decide(pod("bare").phase("Succeeded"), ""), Status::okay());
        // Local storage refuses before unreplicated gets a say.
        assert_eq!(
            decide(pod("bare").with_empty_dir(), ""),
            Status::error(LOCAL_STORAGE_FATAL)
        );
        assert_eq!(
            decide(pod("bare").with_empty_dir(), "d"),
            Status::error(UNMANAGED_FATAL)
        );
        assert_eq!(decide(pod("ok").replicaset_owned("rs"), ""), Status::okay());
    }

    #[test]
    fn terminating_pods_are_skipped_only_past_skip_wait() {
        let now = Utc::now();
        let old = pod("t").deleted_secs_ago(now, 60);
        assert_eq!(decide(old.clone(), "s"), Status::skip());
        // Without skip-wait the pod goes through the other filters (bare: refused).
        assert_eq!(decide(old, ""), Status::error(UNMANAGED_FATAL));
        let young = pod("t").replicaset_owned("rs").deleted_secs_ago(now, 5);
        assert_eq!(decide(young, "s"), Status::okay());
    }

    #[test]
    fn plan_groups_errors_and_warnings_like_kubectl() {
        let pods = vec![
            pod("a").daemonset_owned("ds").0,
            pod("b").daemonset_owned("ds").0,
            pod("c").0,
            pod("d").replicaset_owned("rs").with_empty_dir().0,
            pod("e").replicaset_owned("rs").0,
        ];
        let p = plan(pods.clone(), &policy(""), &lookup, Utc::now());
        assert_eq!(
            p.errors(),
            vec![
                format!("cannot delete {DAEMONSET_FATAL}: default/a, default/b"),
                format!("cannot delete {UNMANAGED_FATAL}: default/c"),
                format!("cannot delete {LOCAL_STORAGE_FATAL}: default/d"),
            ]
        );
        let p = plan(pods, &policy("ifd"), &lookup, Utc::now());
        assert!(p.errors().is_empty());
        assert_eq!(
            p.warnings(),
            vec![
                format!("{DAEMONSET_WARNING}: default/a, default/b"),
                format!("{UNMANAGED_WARNING}: default/c"),
            ]
        );
        let names: Vec<_> = p
            .pods()
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["c", "d", "e"]);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_millis(600)), "600ms");
        assert_eq!(go_duration(Duration::from_secs(60)), "1m0s");
        assert_eq!(go_duration(Duration::from_secs(5)), "5s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(3661)), "1h1m1s");
    }
}
