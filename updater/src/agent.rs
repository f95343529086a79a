//! The per-node agent: watches its Node and the policy ConfigMaps, decides when the node is
//! due, takes a slot, and drives the patch cycle ([`crate::cycle::Step`]) step by step,
//! recording each step on the Node (annotation, Event, metric) before moving on, so that an
//! agent killed at any point resumes where it was. It never uncordons a node it did not
//! cordon, and never runs apt itself (the host actions do, through bootpatch).

use crate::cycle::Step;
use crate::drain::{self, DrainObserver};
use crate::host::{Check, HostActions};
use crate::kube_util::{spawn_watch, AbortOnDrop, Kube, Snapshot};
use crate::metrics::Metrics;
use crate::node::{self as nodeann, annotate, annotation, event, now_rfc3339};
use crate::policy::DrainPolicy;
use crate::policy::{self, AgentConfig, Due, PatchPolicy};
use crate::slots::{self, Acquired, Slots};
use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// Everything an agent is told at start.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub node: String,
    /// Where the Leases and the patch policy live.
    pub namespace: String,
    pub drain_policy_name: String,
    pub drain_policy_namespace: String,
    pub patch_policy_name: String,
    /// A slot not renewed for this long is taken over.
    pub lease_duration: Duration,
    /// Server-side timeout of the long watches.
    pub watch_timeout: Duration,
    pub timing: drain::Timing,
    /// How long to wait for the node to be Ready after the reboot before going on anyway.
    pub node_ready_timeout: Duration,
    /// How long a reboot may take (the agent killed meanwhile) before another node may take
    /// the slot over and mark this one failed. Published on the Node with the step.
    pub reboot_deadline: Duration,
    /// How long any other step of a run may go without its agent renewing the slot before
    /// another node may take it over (also the deadline assumed for a holder that wrote none).
    pub step_deadline: Duration,
    /// How long `bootpatch apply` may run before the run gives up on it (uncordons, releases
    /// the slot, `last-result` `patch-timeout`).
    pub apply_deadline: Duration,
    /// The drain's deadline when the drain policy's `timeout` is 0 ("no timeout"): a drain
    /// never holds the slot forever.
    pub drain_deadline: Duration,
    /// How often a waiting agent looks at every slot, not only its preferred one.
    pub steal_interval: Duration,
    /// How often the window check runs while a due node waits for its window (local only).
    pub window_check: Duration,
    /// Tests only: after recording this step the agent stops doing anything (as if it
    /// crashed right there), so a test can kill it at an exact step.
    pub freeze_after_step: Option<Step>,
}

impl AgentOptions {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            namespace: "bootpatch-system".into(),
            drain_policy_name: policy::DRAIN_POLICY_CONFIGMAP.into(),
            drain_policy_namespace: "bootpatch-system".into(),
            patch_policy_name: policy::PATCH_POLICY_CONFIGMAP.into(),
            lease_duration: Duration::from_secs(60),
            watch_timeout: Duration::from_secs(1800),
            timing: drain::Timing::default(),
            node_ready_timeout: Duration::from_secs(900),
            reboot_deadline: Duration::from_secs(1800),
            step_deadline: Duration::from_secs(3600),
            apply_deadline: Duration::from_secs(2 * 3600),
            drain_deadline: Duration::from_secs(3600),
            steal_interval: Duration::from_secs(30),
            window_check: Duration::from_secs(60),
            freeze_after_step: None,
        }
    }
}

struct Observer {
    metrics: Arc<Metrics>,
    node: String,
}

impl DrainObserver for Observer {
    fn line(&self, text: &str) {
        info!(node = %self.node, "{text}");
    }
    fn pdb_blocked(&self, blocked: bool) {
        self.metrics.pdb_blocked.store(blocked, Ordering::Relaxed);
    }
}

/// Why a run ended early.
#[derive(Debug)]
enum Stop {
    /// The slot was taken over while we ran: the node is someone else's problem now.
    SlotLost,
    Api(kube::Error),
    Other(anyhow::Error),
}

impl From<kube::Error> for Stop {
    fn from(e: kube::Error) -> Self {
        Stop::Api(e)
    }
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Stop::Other(e)
    }
}

impl From<crate::cycle::TransitionError> for Stop {
    fn from(e: crate::cycle::TransitionError) -> Self {
        Stop::Other(e.into())
    }
}

pub struct Agent {
    opts: AgentOptions,
    kube: Kube,
    host: Arc<dyn HostActions>,
    pub metrics: Arc<Metrics>,
    pub healthy: Arc<AtomicBool>,
    slots: Slots,
    config: Option<AgentConfig>,
    patch: Option<PatchPolicy>,
    seen_drain_cm: Option<String>,
    seen_patch_cm: Option<String>,
    node_rx: Option<watch::Receiver<Option<Snapshot<Node>>>>,
    reboot_issued: bool,
    profiling: watch::Sender<bool>,
    /// The cluster's node names, sorted, and when they were listed (for the slot count and
    /// this node's preferred slot; refreshed when older than an hour, only when needed).
    members: Option<(std::time::Instant, Vec<String>)>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.opts.node)
            .finish()
    }
}

type CmRx = watch::Receiver<Option<Snapshot<ConfigMap>>>;

impl Agent {
    pub fn new(opts: AgentOptions, kube: Kube, host: Arc<dyn HostActions>) -> Self {
        let slots = Slots::new(
            kube.client.clone(),
            &opts.namespace,
            &opts.node,
            opts.lease_duration,
        );
        Self {
            metrics: Arc::new(Metrics::new(&opts.node)),
            healthy: Arc::new(AtomicBool::new(false)),
            slots,
            opts,
            kube,
            host,
            config: None,
            patch: None,
            seen_drain_cm: None,
            seen_patch_cm: None,
            node_rx: None,
            reboot_issued: false,
            profiling: watch::channel(false).0,
            members: None,
        }
    }

    /// Follows `profiling: enable|disable` in the drain policy ConfigMap.
    pub fn profiling_switch(&self) -> watch::Receiver<bool> {
        self.profiling.subscribe()
    }

    fn client(&self) -> &kube::Client {
        &self.kube.client
    }

    fn node_now(&self) -> Option<Node> {
        self.node_rx
            .as_ref()?
            .borrow()
            .as_ref()?
            .get(&self.opts.node)
            .cloned()
    }

    async fn fresh_node(&self) -> Result<Node, kube::Error> {
        Api::<Node>::all(self.client().clone())
            .get(&self.opts.node)
            .await
    }

    /// Merge-patches this node on condition that it is still as `read` (its resourceVersion):
    /// `Ok(false)` when it changed meanwhile (409 Conflict), for the caller to read it again.
    async fn patch_node_if_unchanged(
        &self,
        read: &Node,
        mut patch: serde_json::Value,
    ) -> Result<bool, kube::Error> {
        patch["metadata"]["resourceVersion"] = read.metadata.resource_version.clone().into();
        match Api::<Node>::all(self.client().clone())
            .patch(
                &self.opts.node,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn note(&self, warning: bool, reason: &str, message: &str) {
        if warning {
            warn!(node = %self.opts.node, reason, "{message}");
        } else {
            info!(node = %self.opts.node, reason, "{message}");
        }
        if let Err(e) = event(self.client(), &self.opts.node, warning, reason, message).await {
            warn!(error = %e, "posting event");
        }
    }

    /// Records a step on the node (annotation + Event + metric), with extra annotations.
    async fn record(
        &self,
        step: Step,
        extra: &[(&str, Option<String>)],
        message: &str,
    ) -> Result<(), Stop> {
        let mut pairs: Vec<(&str, Option<String>)> = vec![
            (nodeann::STEP, Some(step.as_str().to_string())),
            (nodeann::STEP_SINCE, Some(now_rfc3339())),
        ];
        pairs.push((
            nodeann::STEP_DEADLINE,
            step.in_run().then(|| {
                let d = chrono::Duration::from_std(self.step_deadline(step)).unwrap_or_default();
                (Utc::now() + d).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            }),
        ));
        pairs.extend(extra.iter().cloned());
        // Never write over a `failed` mark (another node took our slot over while we were
        // slow): stop instead. The write is conditional on the version read.
        loop {
            let node = self.fresh_node().await?;
            if step != Step::Failed && nodeann::step_of(&node) == Step::Failed {
                return Err(Stop::SlotLost);
            }
            let map: serde_json::Map<String, serde_json::Value> = pairs
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        v.clone().map_or(serde_json::Value::Null, Into::into),
                    )
                })
                .collect();
            let patch = serde_json::json!({"metadata": {"annotations": map}});
            if self.patch_node_if_unchanged(&node, patch).await? {
                break;
            }
        }
        self.metrics.set_step(step.as_str());
        let reason = format!(
            "OSPatch{}",
            step.as_str()
                .split('-')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                        .unwrap_or_default()
                })
                .collect::<String>()
        );
        self.note(step == Step::Failed, &reason, message).await;
        if self.opts.freeze_after_step == Some(step) {
            warn!(node = %self.opts.node, step = %step, "frozen after this step (test hook)");
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// How long `step` may last without this agent renewing its slot before another node may
    /// take the slot over (published on the Node as the step's deadline).
    fn step_deadline(&self, step: Step) -> Duration {
        match step {
            Step::Rebooting => self.opts.reboot_deadline,
            Step::Cordoned => self.drain_timeout() + self.opts.lease_duration,
            Step::Patching => self.opts.apply_deadline + self.opts.lease_duration,
            _ => self.opts.step_deadline,
        }
    }

    /// The drain policy's timeout, or the agent's drain deadline where the policy says 0.
    fn drain_timeout(&self) -> Duration {
        match self.config.as_ref().map(|c| c.drain.timeout) {
            Some(t) if !t.is_zero() => t,
            _ => self.opts.drain_deadline,
        }
    }

    /// Whether this node may take slot `name` (as `lease` shows it) now, from the holder
    /// Node's own state: `Ok(None)` free or stale, `Ok(Some(t))` taken from a holder as `t`
    /// says (abandoned or reclaimed); `Err(t)`: not before `t`.
    async fn may_take(
        &self,
        name: &str,
        lease: Option<&Lease>,
    ) -> Result<Result<Option<nodeann::Takeover>, Option<DateTime<Utc>>>, kube::Error> {
        let Some(l) = lease else { return Ok(Ok(None)) };
        let Some(h) = slots::holder(l) else {
            return Ok(Ok(None));
        };
        if h == self.opts.node {
            return Ok(Ok(None));
        }
        if !slots::expired(l, Utc::now()) {
            return Ok(Err(slots::expires_at(l)));
        }
        let holder = Api::<Node>::all(self.client().clone()).get_opt(h).await?;
        match nodeann::takeover(holder.as_ref(), name, Utc::now(), self.opts.step_deadline) {
            nodeann::Takeover::Wait(t) => Ok(Err(Some(t))),
            nodeann::Takeover::Stale => Ok(Ok(None)),
            t => Ok(Ok(Some(t))),
        }
    }

    /// Takes slot `name` if [`Self::may_take`] allows it, marking an abandoning holder failed.
    /// `Err(t)`: not now (look again at `t`); `Ok(None)`: lost a race.
    async fn claim(
        &self,
        name: &str,
        lease: Option<Lease>,
    ) -> Result<Result<Option<Acquired>, Option<DateTime<Utc>>>, kube::Error> {
        let lease = match lease {
            Some(l) => Some(l),
            None => self.slots.get(name).await?,
        };
        let why = match self.may_take(name, lease.as_ref()).await? {
            Ok(why) => why,
            Err(t) => return Ok(Err(t)),
        };
        let got = self.slots.try_slot(name, lease).await?;
        if let Some(Acquired::TakenOver { from, name }) = &got {
            match why {
                Some(nodeann::Takeover::Abandoned(why)) if from != &self.opts.node => {
                    self.record_takeover(from, name, &why, false).await
                }
                Some(nodeann::Takeover::Reclaimed(why)) if from != &self.opts.node => {
                    self.record_takeover(from, name, &why, true).await
                }
                _ => {
                    info!(node = %self.opts.node, slot = %name, from = %from, "took over a stale slot (its holder is not in a run on it)")
                }
            }
        }
        Ok(Ok(got))
    }

    /// Publishes bootpatch's state file (first-boot result, patched version, last applied
    /// patch time, reboot pending) on the node.
    #[instrument(skip(self), fields(node = %self.opts.node))]
    async fn publish_host_state(&self, first: bool) -> anyhow::Result<()> {
        let Some(state) = self.host.state()? else {
            return Ok(());
        };
        let mut pairs: Vec<(&str, Option<String>)> = Vec::new();
        if let Some(v) = &state.patched_version {
            pairs.push((nodeann::PATCHED_VERSION, Some(v.clone())));
        }
        if let Some(t) = &state.last_applied_patch_time {
            pairs.push((nodeann::LAST_APPLIED_PATCH_TIME, Some(t.clone())));
        }
        // Live, as `bootpatch status` computes it: the state file's reboot_pending outlives
        // the reboot until bootpatch's next run.
        match self.host.reboot_required() {
            Ok(r) => pairs.push((nodeann::REBOOT_REQUIRED, Some(r.to_string()))),
            Err(e) => warn!(error = %format!("{e:#}"), "reading whether a reboot is required"),
        }
        let first_boot = state.first_boot.as_ref().map(|f| match &f.error {
            Some(e) => format!("{} ({}: {})", f.result, e.kind, e.message),
            None => format!("{} at {}", f.result, f.at),
        });
        if let Some(fb) = &first_boot {
            pairs.push((nodeann::FIRST_BOOT_RESULT, Some(fb.clone())));
        }
        let before = self.node_now();
        annotate(self.client(), &self.opts.node, &pairs).await?;
        if first {
            if let Some(fb) = first_boot {
                let known = before
                    .as_ref()
                    .and_then(|n| annotation(n, nodeann::FIRST_BOOT_RESULT))
                    == Some(fb.as_str());
                if !known {
                    let failed = fb.starts_with("failed");
                    self.note(
                        failed,
                        "OSPatchFirstBoot",
                        &format!("first-boot patch: {fb}"),
                    )
                    .await;
                }
            }
        }
        Ok(())
    }

    /// Reparses the policy ConfigMaps when they change; a policy that does not parse is
    /// reported and the last good one stays in force.
    async fn load_policies(&mut self, cms: &Snapshot<ConfigMap>, drain_cms: &Snapshot<ConfigMap>) {
        let drain_cm = drain_cms.get(&self.opts.drain_policy_name);
        let key = drain_cm.map(|c| c.metadata.resource_version.clone().unwrap_or_default());
        let key = key.unwrap_or_else(|| "absent".into());
        if self.seen_drain_cm.as_deref() != Some(key.as_str()) {
            self.seen_drain_cm = Some(key);
            let data = drain_cm.and_then(|c| c.data.clone()).unwrap_or_default();
            match policy::parse_agent_config(&data) {
                Ok((cfg, warnings)) => {
                    for w in warnings {
                        self.note(true, "DrainPolicyWarning", &w).await;
                    }
                    if self.config.as_ref() != Some(&cfg) {
                        info!(node = %self.opts.node, policy = ?cfg, "drain policy in force");
                    }
                    self.profiling.send_replace(cfg.profiling);
                    self.config = Some(cfg);
                    self.metrics
                        .drain_policy_valid
                        .store(true, Ordering::Relaxed);
                    let _ = annotate(
                        self.client(),
                        &self.opts.node,
                        &[("ospatch.bootpatch.io/policy-error", None)],
                    )
                    .await;
                }
                Err(e) => {
                    self.metrics
                        .drain_policy_valid
                        .store(false, Ordering::Relaxed);
                    let kept = if self.config.is_some() {
                        "the last good policy stays in force"
                    } else {
                        "no drain policy has parsed yet: nothing will be drained until one does"
                    };
                    let msg = format!(
                        "drain policy ConfigMap {}/{} does not parse: {e}; {kept}",
                        self.opts.drain_policy_namespace, self.opts.drain_policy_name
                    );
                    self.note(true, "DrainPolicyInvalid", &msg).await;
                    let _ = annotate(
                        self.client(),
                        &self.opts.node,
                        &[("ospatch.bootpatch.io/policy-error", Some(msg))],
                    )
                    .await;
                }
            }
        }
        let patch_cm = cms.get(&self.opts.patch_policy_name);
        let key = patch_cm
            .map(|c| c.metadata.resource_version.clone().unwrap_or_default())
            .unwrap_or_else(|| "absent".into());
        if self.seen_patch_cm.as_deref() != Some(key.as_str()) {
            self.seen_patch_cm = Some(key);
            let data = patch_cm.and_then(|c| c.data.clone()).unwrap_or_default();
            match policy::parse_patch_policy(&data) {
                Ok(p) => {
                    self.patch = Some(p);
                    self.metrics
                        .patch_policy_valid
                        .store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    self.metrics
                        .patch_policy_valid
                        .store(false, Ordering::Relaxed);
                    let msg = format!(
                        "patch policy ConfigMap {}/{} does not parse: {e}; the last good policy stays in force",
                        self.opts.namespace, self.opts.patch_policy_name
                    );
                    self.note(true, "PatchPolicyInvalid", &msg).await;
                }
            }
        }
    }

    /// Runs until cancelled (drop the future, or abort its task).
    pub async fn run(mut self) -> anyhow::Result<()> {
        let client = self.client().clone();
        let t = self.opts.watch_timeout;
        let (node_rx, _n) = spawn_watch::<Node>(
            client.clone(),
            None,
            Some(format!("metadata.name={}", self.opts.node)),
            None,
            t,
        );
        let (mut cm_rx, _c) = spawn_watch::<ConfigMap>(
            client.clone(),
            Some(self.opts.namespace.clone()),
            None,
            None,
            t,
        );
        let (mut dcm_rx, _d): (CmRx, Option<AbortOnDrop>) =
            if self.opts.drain_policy_namespace == self.opts.namespace {
                (cm_rx.clone(), None)
            } else {
                let (rx, h) = spawn_watch::<ConfigMap>(
                    client.clone(),
                    Some(self.opts.drain_policy_namespace.clone()),
                    Some(format!("metadata.name={}", self.opts.drain_policy_name)),
                    None,
                    t,
                );
                (rx, Some(h))
            };
        self.node_rx = Some(node_rx.clone());
        let mut node_rx = node_rx;
        for rx in [&mut cm_rx, &mut dcm_rx] {
            rx.wait_for(Option::is_some).await?;
        }
        node_rx
            .wait_for(|s| s.as_ref().is_some_and(|m| !m.is_empty()))
            .await?;
        // Node names for the slot count, ahead of any run (so a fleet that becomes due at
        // once does not list them all at once).
        if let Err(e) = self.members().await {
            warn!(error = %e, "listing nodes");
        }
        // The policies as first listed, before the node's state is published (which tells
        // the cluster the agent is up): a policy changed right after that is then a change
        // from a good one, not the first one this agent sees.
        {
            let cms = cm_rx.borrow().clone().unwrap_or_default();
            let dcms = dcm_rx.borrow().clone().unwrap_or_default();
            self.load_policies(&cms, &dcms).await;
        }
        if let Err(e) = self.publish_host_state(true).await {
            warn!(error = %format!("{e:#}"), "publishing the host's patch state");
        }
        self.healthy.store(true, Ordering::Relaxed);
        loop {
            let cms = cm_rx.borrow_and_update().clone().unwrap_or_default();
            let dcms = dcm_rx.borrow_and_update().clone().unwrap_or_default();
            self.load_policies(&cms, &dcms).await;
            let Some(node) = node_rx
                .borrow_and_update()
                .as_ref()
                .and_then(|m| m.get(&self.opts.node).cloned())
            else {
                node_rx.changed().await?;
                continue;
            };
            // The watch cache may not have caught up with this agent's own writes: a cache
            // still showing the node as it was before a run that just ended (idle, the old
            // last-run-start, or a step of that run) would run it again. Waiting may go by
            // the cache; acting (resuming or starting a run) goes by the node read afresh.
            let node = if self.would_act_on(&node) {
                match self.fresh_node().await {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "reading the node; will retry");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            } else {
                node
            };
            let step = nodeann::step_of(&node);
            let wake: Option<DateTime<Utc>> = if step == Step::Failed {
                None
            } else if step.in_run() {
                if let Err(e) = self.resume(step, &mut cm_rx, &mut dcm_rx).await {
                    self.report_stop(e).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            } else {
                match self.consider(&node).await {
                    Ok(Consider::Wait(w)) => w,
                    Ok(Consider::Run(reason)) => {
                        if let Err(e) = self.start_run(reason, &mut cm_rx, &mut dcm_rx).await {
                            self.report_stop(e).await;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        continue;
                    }
                    Err(e) => {
                        warn!(error = %e, "deciding");
                        Some(Utc::now() + chrono::Duration::seconds(5))
                    }
                }
            };
            let sleep = match wake {
                Some(w) => (w - Utc::now()).to_std().unwrap_or(Duration::ZERO),
                None => Duration::from_secs(365 * 86_400),
            };
            tokio::select! {
                r = node_rx.changed() => r?,
                r = cm_rx.changed() => r?,
                r = dcm_rx.changed() => r?,
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    async fn report_stop(&self, e: Stop) {
        match e {
            Stop::SlotLost => {
                warn!(node = %self.opts.node, "slot lost while running; stopping");
            }
            Stop::Api(e) => warn!(node = %self.opts.node, error = %e, "API error; will retry"),
            Stop::Other(e) => {
                warn!(node = %self.opts.node, error = %format!("{e:#}"), "run stopped; will retry")
            }
        }
        self.metrics.slot_held.store(false, Ordering::Relaxed);
        self.metrics.draining.store(false, Ordering::Relaxed);
    }

    /// Whether the node, as the watch cache shows it, would have this agent resume a run or
    /// start one.
    fn would_act_on(&self, node: &Node) -> bool {
        nodeann::step_of(node).in_run()
            || self.patch.as_ref().is_some_and(|p| {
                matches!(
                    policy::due(p, &nodeann::record_of(node), Utc::now()),
                    Due::Now(_)
                )
            })
    }

    /// Whether the idle node should run now, or when to look again.
    async fn consider(&mut self, node: &Node) -> Result<Consider, kube::Error> {
        let Some(patch) = self.patch.clone() else {
            return Ok(Consider::Wait(None));
        };
        let rec = nodeann::record_of(node);
        let due = policy::due(&patch, &rec, Utc::now());
        if let Some(msg) = nodeann::refusal(node, patch.imported_cluster) {
            if matches!(due, Due::Now(_))
                || annotation(node, nodeann::LAST_RESULT) != Some("refused")
            {
                if annotation(node, nodeann::LAST_MESSAGE) != Some(msg.as_str()) {
                    self.note(true, "OSPatchRefused", &msg).await;
                }
                annotate(
                    self.client(),
                    &self.opts.node,
                    &[
                        (nodeann::LAST_RESULT, Some("refused".into())),
                        (nodeann::LAST_MESSAGE, Some(msg)),
                        (
                            nodeann::LAST_RUN_START,
                            Some(nodeann::run_start_stamp(chrono::Utc::now())),
                        ),
                        (nodeann::REQUEST_SERVED, nodeann::served_mark(node)),
                    ],
                )
                .await?;
                self.metrics.record_result("refused");
            }
            return Ok(Consider::Wait(None));
        }
        if patch.paused || self.config.is_none() {
            return Ok(Consider::Wait(None));
        }
        match due {
            Due::Later(t) => Ok(Consider::Wait(t)),
            Due::Now(reason) if patch.in_window(Utc::now()) => Ok(Consider::Run(reason)),
            Due::Now(_) => Ok(Consider::Wait(Some(
                Utc::now() + chrono::Duration::from_std(self.opts.window_check).unwrap_or_default(),
            ))),
        }
    }

    /// The sorted node names (metadata-only list, cached for an hour).
    async fn members(&mut self) -> Result<Vec<String>, kube::Error> {
        if let Some((at, names)) = &self.members {
            if at.elapsed() < Duration::from_secs(3600) {
                return Ok(names.clone());
            }
        }
        let nodes = Api::<Node>::all(self.client().clone())
            .list_metadata(&ListParams::default())
            .await?;
        let mut names: Vec<String> = nodes
            .items
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.sort();
        self.members = Some((std::time::Instant::now(), names.clone()));
        Ok(names)
    }

    /// Waits for a slot (its preferred one by watching it, the others now and then), marks the
    /// previous holder of a taken-over slot failed. `None` if the node stopped being due.
    #[instrument(skip_all, fields(node = %self.opts.node))]
    async fn wait_for_slot(
        &mut self,
        cm_rx: &mut CmRx,
        dcm_rx: &mut CmRx,
    ) -> Result<Option<Acquired>, Stop> {
        if let Some(name) = self.slots.mine().await? {
            if let Ok(Some(a)) = self.claim(&name, None).await? {
                return Ok(Some(a));
            }
        }
        let names = self.members().await?;
        let rank = names.iter().position(|n| *n == self.opts.node).unwrap_or(0) as u32;
        let n = self
            .patch
            .as_ref()
            .map_or(1, |p| p.max_concurrency.slots(names.len()));
        let preferred = slots::slot_name(rank % n);
        let (mut lease_rx, _w) = spawn_watch::<Lease>(
            self.client().clone(),
            Some(self.opts.namespace.clone()),
            Some(format!("metadata.name={preferred}")),
            None,
            self.opts.watch_timeout,
        );
        let mut next_steal = tokio::time::Instant::now();
        // The lease version last tried, so a lost race is not retried on the same stale view.
        let mut tried: Option<Option<String>> = None;
        // Slots whose holder keeps them for now: not looked at again until then or a change.
        let mut not_yet = slots::NotYet::default();
        loop {
            // Everything free, expired, or ours, now and then.
            if tokio::time::Instant::now() >= next_steal {
                // One slot is the preferred one, which the watch already follows: after this
                // first look there is nothing else to look at (and a fleet of waiters would
                // list it for nothing).
                let every = if n > 1 {
                    self.opts.steal_interval
                } else {
                    Duration::from_secs(365 * 86_400)
                };
                next_steal = tokio::time::Instant::now() + every;
                let leases = self.slots.list().await?;
                let mut candidates: Vec<(u32, Option<Lease>)> = (0..n).map(|i| (i, None)).collect();
                for l in leases {
                    if let Some(i) = l.metadata.name.as_deref().and_then(slots::slot_index) {
                        if i < n {
                            candidates[i as usize].1 = Some(l);
                        }
                    }
                }
                // Preferred first, then the rest.
                candidates.rotate_left((rank % n) as usize);
                for (i, l) in candidates {
                    let free = match &l {
                        None => true,
                        Some(l) => {
                            slots::holder(l).is_none()
                                || slots::holder(l) == Some(self.opts.node.as_str())
                                || slots::expired(l, Utc::now())
                        }
                    };
                    let name = slots::slot_name(i);
                    if free && not_yet.until(&name, l.as_ref(), Utc::now()).is_none() {
                        match self.claim(&name, l.clone()).await? {
                            Ok(Some(a)) => return Ok(Some(a)),
                            Err(Some(t)) => not_yet.note(&name, l.as_ref(), t),
                            Ok(None) | Err(None) => {}
                        }
                    }
                }
            }
            let snapshot = lease_rx.borrow_and_update().clone();
            let mut wake = next_steal;
            if let Some(snap) = snapshot {
                let lease = snap.get(&preferred).cloned();
                let free = match &lease {
                    None => true,
                    Some(l) => slots::holder(l).is_none() || slots::expired(l, Utc::now()),
                };
                let rv = lease
                    .as_ref()
                    .and_then(|l| l.metadata.resource_version.clone());
                let mut not_before = lease.as_ref().and_then(slots::expires_at);
                let later = not_yet.until(&preferred, lease.as_ref(), Utc::now());
                if later.is_some() {
                    not_before = later;
                } else if free && tried != Some(rv.clone()) {
                    match self.claim(&preferred, lease.clone()).await? {
                        Ok(Some(a)) => return Ok(Some(a)),
                        Ok(None) => {
                            // Lost the race: wait for the watch to show the winner (or a timer).
                            tried = Some(rv);
                            continue;
                        }
                        // Its holder keeps it for now (rebooting, slow, or the API was away).
                        Err(t) => {
                            if let Some(t) = t {
                                not_yet.note(&preferred, lease.as_ref(), t);
                            }
                            not_before = t;
                        }
                    }
                }
                if let Some(exp) = not_before {
                    let d = (exp - Utc::now()).to_std().unwrap_or(Duration::ZERO)
                        + Duration::from_millis(50);
                    wake = wake.min(tokio::time::Instant::now() + d);
                }
            }
            tokio::select! {
                r = lease_rx.changed() => { if r.is_err() { return Ok(None); } }
                r = cm_rx.changed() => {
                    r.map_err(|e| Stop::Other(e.into()))?;
                    let cms = cm_rx.borrow_and_update().clone().unwrap_or_default();
                    let dcms = dcm_rx.borrow().clone().unwrap_or_default();
                    self.load_policies(&cms, &dcms).await;
                    if self.patch.as_ref().is_none_or(|p| p.paused) {
                        return Ok(None);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Writes what a takeover did to the holder it took the slot from. A holder gone at
    /// `slot-held` (it had not cordoned) goes back to idle with its run not counted
    /// (`last-run-start` removed), so it starts again when its agent is back. A holder gone
    /// later in its run is marked failed and left as it was, for a human to check.
    async fn record_takeover(&self, from: &str, slot: &str, why: &str, reclaimed: bool) {
        let by = &self.opts.node;
        let (msg, reason, step) = if reclaimed {
            (
                format!("patch slot {slot} taken over by {by}: this node was {why}; it had not cordoned, so nothing was done to it, and its run starts again when its agent is back"),
                "OSPatchSlotReclaimed",
                Step::SlotHeld.abort().unwrap_or(Step::Idle),
            )
        } else {
            (
                format!("patch slot {slot} taken over by {by}: this node was {why}; the node is left as it was (possibly cordoned) for a human to check; `kubectl ospatch now {from}` clears it"),
                "OSPatchFailed",
                Step::Failed,
            )
        };
        warn!(node = %from, "{msg}");
        let mut keys = vec![
            (nodeann::STEP, Some(step.as_str().to_string())),
            (nodeann::STEP_SINCE, Some(now_rfc3339())),
            (nodeann::LAST_MESSAGE, Some(msg.clone())),
            (nodeann::SLOT, None),
        ];
        if reclaimed {
            keys.extend([
                (nodeann::STEP_DEADLINE, None),
                (nodeann::LAST_RUN_START, None),
                (nodeann::REQUEST_SERVED, None),
            ]);
        } else {
            keys.push((nodeann::LAST_RESULT, Some("failed".into())));
        }
        if let Err(e) = annotate(self.client(), from, &keys).await {
            warn!(error = %e, node = %from, "recording the takeover on the node");
        }
        let _ = event(self.client(), from, true, reason, &msg).await;
    }

    async fn start_run(
        &mut self,
        reason: &str,
        cm_rx: &mut CmRx,
        dcm_rx: &mut CmRx,
    ) -> Result<(), Stop> {
        // The run starts from the node as it is now: its start time and the request it
        // serves are those from before the check, so a request made while the check runs
        // (which may have seen the sources before the request's packages) is not lost.
        let begun = chrono::Utc::now();
        let node = self.fresh_node().await?;
        let serves = nodeann::served_mark(&node);
        if let Some((result, why)) = self.ends_before_the_slot(&node).await? {
            let msg = format!("{reason} patch run: {why}; the node was not cordoned or drained");
            annotate(
                self.client(),
                &self.opts.node,
                &[
                    (
                        nodeann::LAST_RUN_START,
                        Some(nodeann::run_start_stamp(begun)),
                    ),
                    (nodeann::REQUEST_SERVED, serves),
                    (nodeann::LAST_RESULT, Some(result.into())),
                    (nodeann::LAST_MESSAGE, Some(msg.clone())),
                ],
            )
            .await?;
            self.metrics.record_result(result);
            let (warning, event) = match result {
                "up-to-date" => (false, "OSPatchUpToDate"),
                _ => (true, "OSPatchCheckFailed"),
            };
            self.note(warning, event, &msg).await;
            return Ok(());
        }
        let Some(acquired) = self.wait_for_slot(cm_rx, dcm_rx).await? else {
            return Ok(());
        };
        let slot = acquired.name().to_string();
        let renewer = self.renewer(&slot);
        let started = std::time::Instant::now();
        // The agent's own cordon, left by a run that failed (and was reset by a human), is
        // still the agent's: the run uncordons it. Any other mark is from an older run.
        let node = self.fresh_node().await?;
        let own_cordon = nodeann::unschedulable(&node)
            && annotation(&node, nodeann::CORDONED_BY_AGENT) == Some("true");
        // The apply, after the slot, refreshes the sources: it serves the requests made
        // until now.
        self.record(
            Step::Idle.take_slot()?,
            &[
                (
                    nodeann::LAST_RUN_START,
                    Some(nodeann::run_start_stamp(chrono::Utc::now())),
                ),
                (nodeann::REQUEST_SERVED, nodeann::served_mark(&node)),
                (nodeann::SLOT, Some(slot.clone())),
                (
                    nodeann::CORDONED_BY_AGENT,
                    own_cordon.then(|| "true".to_string()),
                ),
                (nodeann::BOOT_ID, None),
            ],
            &format!("{reason} patch run: took slot {slot}"),
        )
        .await?;
        self.drive(Step::SlotHeld, slot, started, renewer).await
    }

    /// Whether a run that is due ends before it takes a slot, with its result and why; `None`
    /// runs the cycle. It ends when `bootpatch check` on the host finds nothing to install and
    /// no reboot is due (or reboots are not allowed): `up-to-date`; or when the check fails in
    /// a way the apply would too (sources unreachable, a bad signature, a bad config):
    /// `patch-failed`, without draining for it. Never while a cordon of the agent's own is left
    /// to undo. Any other doubt (the check cannot run, fails otherwise, or outlasts the apply
    /// deadline) runs the whole cycle, whose apply then says what is wrong. The check runs
    /// outside the slot, so nodes with nothing to do never queue for one.
    async fn ends_before_the_slot(
        &self,
        node: &Node,
    ) -> Result<Option<(&'static str, String)>, Stop> {
        if nodeann::unschedulable(node)
            && annotation(node, nodeann::CORDONED_BY_AGENT) == Some("true")
        {
            return Ok(None);
        }
        let reboot_allowed = self.patch.as_ref().is_none_or(|p| p.reboot_if_required);
        let reboot_due = match self.host.reboot_required() {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "reading reboot-required; running the whole cycle");
                return Ok(None);
            }
        };
        if reboot_due && reboot_allowed {
            return Ok(None);
        }
        let deadline = self.opts.apply_deadline;
        let check = match tokio::time::timeout(deadline, self.host.check()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                warn!(node = %self.opts.node, error = %format!("{e:#}"), "running bootpatch check; running the whole cycle");
                return Ok(None);
            }
            Err(_) => {
                self.metrics.record_deadline("check");
                warn!(node = %self.opts.node, "bootpatch check did not finish within {deadline:?}; running the whole cycle");
                return Ok(None);
            }
        };
        let the_apply_would_fail = check.fails_the_apply_too();
        Ok(match check {
            Check::Pending => None,
            Check::UpToDate if reboot_due => Some((
                "up-to-date",
                "bootpatch check: nothing to install (a reboot is pending, but rebootIfRequired is false)".into(),
            )),
            Check::UpToDate => Some((
                "up-to-date",
                "bootpatch check: nothing to install, no reboot required".into(),
            )),
            Check::Failed { message, .. } if the_apply_would_fail => Some(("patch-failed", message)),
            Check::Failed { message, .. } => {
                warn!(node = %self.opts.node, "{message}; running the whole cycle");
                None
            }
        })
    }

    /// Picks up a run after a restart.
    #[instrument(skip_all, fields(node = %self.opts.node, step = %step))]
    async fn resume(
        &mut self,
        step: Step,
        cm_rx: &mut CmRx,
        dcm_rx: &mut CmRx,
    ) -> Result<(), Stop> {
        let node = self.fresh_node().await?;
        let step_now = nodeann::step_of(&node);
        if step_now != step {
            return Ok(());
        }
        info!(node = %self.opts.node, step = %step, "resuming the patch run");
        let started = std::time::Instant::now();
        if let Some(name) = annotation(&node, nodeann::SLOT).map(str::to_string) {
            if let Ok(Some(a)) = self.claim(&name, None).await? {
                let renewer = self.renewer(a.name());
                return self
                    .drive(step, a.name().to_string(), started, renewer)
                    .await;
            }
            // Someone else holds it: we were taken over (they mark us failed) unless we
            // had finished.
            if step == Step::Uncordoned {
                return self.finish(started, None).await;
            }
            let lease = Api::<Lease>::namespaced(self.client().clone(), &self.opts.namespace)
                .get_opt(&name)
                .await?;
            if step == Step::SlotHeld && lease.as_ref().and_then(slots::holder).is_some() {
                // Taken before this node cordoned: nothing was done, so nothing for a human.
                let msg = format!("this node's patch slot {name} was taken while its agent was away, before it cordoned; nothing was done to the node, and the run starts again");
                self.record(
                    step.abort()?,
                    &[
                        (nodeann::SLOT, None),
                        (nodeann::LAST_RUN_START, None),
                        (nodeann::REQUEST_SERVED, None),
                        (nodeann::LAST_MESSAGE, Some(msg.clone())),
                    ],
                    &msg,
                )
                .await?;
                return Ok(());
            }
            if lease.as_ref().and_then(slots::holder).is_some() {
                let msg = format!("this node's patch slot {name} was taken over while its agent was away, at step {step}; the node is left as it is for a human: `kubectl ospatch now {}` clears it", self.opts.node);
                self.record(
                    step.abandon()?,
                    &[
                        (nodeann::LAST_RESULT, Some("failed".into())),
                        (nodeann::LAST_MESSAGE, Some(msg.clone())),
                    ],
                    &msg,
                )
                .await?;
                return Ok(());
            }
        }
        if step == Step::Uncordoned {
            return self.finish(started, None).await;
        }
        match self.wait_for_slot(cm_rx, dcm_rx).await? {
            Some(a) => {
                let renewer = self.renewer(a.name());
                annotate(
                    self.client(),
                    &self.opts.node,
                    &[(nodeann::SLOT, Some(a.name().to_string()))],
                )
                .await?;
                self.drive(step, a.name().to_string(), started, renewer)
                    .await
            }
            None => Ok(()),
        }
    }

    /// Renews a held slot every third of its duration as written on the Lease from now on; the
    /// flag turns true if the slot turns out to be someone else's. Started as soon as a slot is
    /// got, before anything else is written, so a slow API cannot let a fresh slot expire.
    fn renewer(&self, slot: &str) -> (Arc<AtomicBool>, AbortOnDrop) {
        let lost = Arc::new(AtomicBool::new(false));
        let slots = self.slots.clone();
        let flag = lost.clone();
        let slot = slot.to_string();
        let every = slots::renew_every(self.opts.lease_duration);
        let task = AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match slots.renew(&slot).await {
                    Ok(true) => {}
                    Ok(false) => {
                        flag.store(true, Ordering::SeqCst);
                        return;
                    }
                    Err(e) => warn!(error = %e, "renewing the slot"),
                }
            }
        }));
        (lost, task)
    }

    /// Drives the cycle from `step` with `slot` held, renewing it meanwhile.
    async fn drive(
        &mut self,
        mut step: Step,
        slot: String,
        started: std::time::Instant,
        renewer: (Arc<AtomicBool>, AbortOnDrop),
    ) -> Result<(), Stop> {
        let (lost, _renewer) = renewer;
        self.metrics.slot_held.store(true, Ordering::Relaxed);
        loop {
            if lost.load(Ordering::SeqCst) {
                self.metrics.slot_held.store(false, Ordering::Relaxed);
                return Err(Stop::SlotLost);
            }
            step = match step {
                Step::SlotHeld => self.cordon(step).await?,
                Step::Cordoned => match self.drain(step).await? {
                    Some(s) => s,
                    None => return self.abort_run(&slot, started).await,
                },
                Step::Drained => {
                    let s = step.patch()?;
                    self.record(s, &[], "patching: running bootpatch apply on the host")
                        .await?;
                    s
                }
                Step::Patching => self.apply(step, &slot, started).await?,
                Step::Rebooting => self.after_reboot(step, &slot, started).await?,
                Step::Uncordoned => return self.finish(started, Some(&slot)).await,
                Step::Idle | Step::Failed => return Ok(()),
            };
        }
    }

    /// Cordons the node unless an admin already did (then it is left cordoned at the end).
    /// The write is conditional on the Node as read: a node whose slot was reclaimed meanwhile
    /// (sent back to idle by the node that took it) is not cordoned.
    #[instrument(skip_all, fields(node = %self.opts.node))]
    async fn cordon(&self, step: Step) -> Result<Step, Stop> {
        let next = step.cordon()?;
        let msg = loop {
            let node = self.fresh_node().await?;
            if nodeann::step_of(&node) != step {
                return Err(Stop::SlotLost);
            }
            let ours = annotation(&node, nodeann::CORDONED_BY_AGENT) == Some("true");
            let (patch, msg) = if nodeann::unschedulable(&node) && !ours {
                (
                    serde_json::json!({"metadata": {"annotations": {nodeann::CORDONED_BY_AGENT: "false"}}}),
                    "node was already cordoned by someone else: it stays cordoned after the run",
                )
            } else {
                (
                    serde_json::json!({
                        "metadata": {"annotations": {nodeann::CORDONED_BY_AGENT: "true"}},
                        "spec": {"unschedulable": true}
                    }),
                    "cordoned",
                )
            };
            if self.patch_node_if_unchanged(&node, patch).await? {
                break msg;
            }
        };
        self.record(next, &[], msg).await?;
        Ok(next)
    }

    async fn uncordon_if_ours(&self) -> Result<bool, kube::Error> {
        let node = self.fresh_node().await?;
        if annotation(&node, nodeann::CORDONED_BY_AGENT) != Some("true") {
            return Ok(false);
        }
        let api: Api<Node> = Api::all(self.client().clone());
        api.patch(
            &self.opts.node,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({
                "metadata": {"annotations": {nodeann::CORDONED_BY_AGENT: null}},
                "spec": {"unschedulable": null}
            })),
        )
        .await?;
        Ok(true)
    }

    /// Drains; `None` if the drain failed (the caller aborts the run).
    #[instrument(skip_all, fields(node = %self.opts.node))]
    async fn drain(&mut self, step: Step) -> Result<Option<Step>, Stop> {
        let Some(cfg) = self.config.clone() else {
            return Err(Stop::Other(anyhow::anyhow!("no drain policy has parsed")));
        };
        let mut policy: DrainPolicy = cfg.drain.clone();
        let unbounded = policy.timeout.is_zero();
        if unbounded {
            // "No timeout" per the reference page, but a drain must not hold the slot forever.
            policy.timeout = self.opts.drain_deadline;
        }
        self.metrics.draining.store(true, Ordering::Relaxed);
        let drain_started = Utc::now();
        let observer = Arc::new(Observer {
            metrics: self.metrics.clone(),
            node: self.opts.node.clone(),
        });
        let r = drain::drain_node(
            self.client(),
            &self.opts.node,
            &policy,
            &self.opts.timing,
            observer,
        )
        .await;
        self.metrics.draining.store(false, Ordering::Relaxed);
        self.metrics.pdb_blocked.store(false, Ordering::Relaxed);
        match r {
            Ok(report) => {
                let mut extra = vec![];
                if cfg.workloads {
                    let moved = self.workloads_moved(&report, drain_started).await;
                    if !moved.is_empty() {
                        self.note(
                            false,
                            "OSPatchWorkloadsMoved",
                            &format!("moved: {}", moved.join(", ")),
                        )
                        .await;
                    }
                    extra.push((
                        nodeann::WORKLOADS_MOVED,
                        Some(serde_json::to_string(&moved).unwrap_or_default()),
                    ));
                }
                let next = step.drained()?;
                self.record(
                    next,
                    &extra,
                    &format!("drained: {} pods evicted", report.evicted.len()),
                )
                .await?;
                Ok(Some(next))
            }
            Err(e) => {
                let label = e.label();
                let mut msg = format!("drain failed ({label}): {e}");
                if unbounded && label == "timeout" {
                    self.metrics.record_deadline("drain");
                    msg.push_str(&format!(
                        " (the drain policy's timeout is 0, \"no timeout\": the agent's drain deadline of {:?} applies)",
                        self.opts.drain_deadline
                    ));
                }
                self.note(true, "OSPatchDrainFailed", &msg).await;
                annotate(
                    self.client(),
                    &self.opts.node,
                    &[
                        (nodeann::LAST_RESULT, Some(format!("drain-{label}"))),
                        (nodeann::LAST_MESSAGE, Some(msg)),
                    ],
                )
                .await?;
                Ok(None)
            }
        }
    }

    /// For `feature.workloads: enable`: which evicted pod went where (its controller's new pod).
    async fn workloads_moved(
        &self,
        report: &drain::DrainReport,
        since: DateTime<Utc>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let mut namespaces: Vec<&str> = report.moved.iter().map(|m| m.0.as_str()).collect();
        namespaces.sort();
        namespaces.dedup();
        for ns in namespaces.into_iter().take(20) {
            let Ok(pods) = Api::<Pod>::namespaced(self.client().clone(), ns)
                .list(&ListParams::default())
                .await
            else {
                continue;
            };
            let mut used = std::collections::HashSet::new();
            for (_, name, kind, owner) in report.moved.iter().filter(|m| m.0 == ns) {
                let to = pods.items.iter().find(|p| {
                    let pname = p.metadata.name.clone().unwrap_or_default();
                    !used.contains(&pname)
                        && pname != *name
                        && !owner.is_empty()
                        && drain::controller_of(p) == Some((kind.as_str(), owner.as_str()))
                        && p.metadata
                            .creation_timestamp
                            .as_ref()
                            .is_some_and(|t| t.0 >= since - chrono::Duration::seconds(1))
                        && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            != Some(self.opts.node.as_str())
                });
                let dest = match to {
                    Some(p) => {
                        let pname = p.metadata.name.clone().unwrap_or_default();
                        used.insert(pname.clone());
                        let on = p
                            .spec
                            .as_ref()
                            .and_then(|s| s.node_name.clone())
                            .unwrap_or_else(|| "(pending)".into());
                        format!("{ns}/{pname} on {on}")
                    }
                    None => "(not replaced)".into(),
                };
                out.push(format!("{ns}/{name} -> {dest}"));
            }
        }
        out.truncate(50);
        out
    }

    /// Runs bootpatch; reboots if required and allowed, else goes on to uncordon.
    #[instrument(skip_all, fields(node = %self.opts.node))]
    async fn apply(
        &mut self,
        step: Step,
        slot: &str,
        started: std::time::Instant,
    ) -> Result<Step, Stop> {
        let deadline = self.opts.apply_deadline;
        let failure = match tokio::time::timeout(deadline, self.host.apply()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(("patch-failed", format!("bootpatch apply failed: {e:#}"))),
            Err(_) => {
                self.metrics.record_deadline("apply");
                Err(("patch-timeout", format!(
                    "bootpatch apply did not finish within its deadline of {deadline:?}: the run gives up on it (the unit may still be running on the host) so the slot is not held forever"
                )))
            }
        };
        let report = match failure {
            Ok(r) => r,
            Err((result, msg)) => {
                self.note(true, "OSPatchApplyFailed", &msg).await;
                let next = step.uncordon()?;
                self.uncordon_if_ours().await?;
                self.record(
                    next,
                    &[
                        (nodeann::LAST_RESULT, Some(result.into())),
                        (nodeann::LAST_MESSAGE, Some(msg.clone())),
                    ],
                    "uncordoned after a failed patch",
                )
                .await?;
                self.release_and_idle(slot, started, result, Some(msg))
                    .await?;
                return Ok(Step::Idle);
            }
        };
        if let Err(e) = self.publish_host_state(false).await {
            warn!(error = %format!("{e:#}"), "publishing the host's patch state");
        }
        let allowed = self.patch.as_ref().is_none_or(|p| p.reboot_if_required);
        // What bootpatch did (patched, up-to-date...), kept as the run's last message: a run
        // with nothing to install must not read "patched".
        let mut extra = vec![
            (
                nodeann::REBOOT_REQUIRED,
                Some(report.reboot_required.to_string()),
            ),
            (
                nodeann::LAST_MESSAGE,
                Some(format!("bootpatch: {}", report.result)),
            ),
        ];
        if !report.patched_version_after.is_empty() {
            extra.push((
                nodeann::PATCHED_VERSION,
                Some(report.patched_version_after.clone()),
            ));
        }
        if report.reboot_required && allowed {
            let boot = self.host.boot_id()?;
            extra.push((nodeann::BOOT_ID, Some(boot)));
            let next = step.reboot()?;
            self.record(
                next,
                &extra,
                &format!(
                    "bootpatch: {}; rebooting (required by {})",
                    report.result,
                    report.reboot_packages.join(", ")
                ),
            )
            .await?;
            self.host.reboot().await?;
            self.reboot_issued = true;
            Ok(next)
        } else {
            if report.reboot_required {
                self.note(true, "OSPatchRebootRequired", "a reboot is required but rebootIfRequired is false: the patch may not be complete until the node reboots").await;
            }
            let next = step.uncordon()?;
            self.uncordon_if_ours().await?;
            self.record(
                next,
                &extra,
                &format!("bootpatch: {}; uncordoned", report.result),
            )
            .await?;
            Ok(next)
        }
    }

    /// After the reboot: a new boot id, the node Ready again, then uncordon.
    #[instrument(skip_all, fields(node = %self.opts.node))]
    async fn after_reboot(
        &mut self,
        step: Step,
        slot: &str,
        started: std::time::Instant,
    ) -> Result<Step, Stop> {
        let node = self.fresh_node().await?;
        let before = annotation(&node, nodeann::BOOT_ID)
            .unwrap_or("")
            .to_string();
        // The reboot's deadline counts from when the reboot was recorded (an agent that
        // restarts does not start it again).
        let since = annotation(&node, nodeann::STEP_SINCE)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map_or_else(Utc::now, |t| t.with_timezone(&Utc));
        let reboot_by =
            since + chrono::Duration::from_std(self.opts.reboot_deadline).unwrap_or_default();
        let mut asked = std::time::Instant::now();
        while self.host.boot_id()? == before {
            if Utc::now() >= reboot_by {
                // The host did not reboot (or this agent cannot see that it did): the patch is
                // on disk but not running; give the slot back rather than hold it forever.
                self.metrics.record_deadline("reboot");
                let msg = format!(
                    "the host did not reboot within the reboot deadline of {:?} (boot id still {before}): uncordoned and the slot released; the patch takes effect at the next reboot",
                    self.opts.reboot_deadline
                );
                self.note(true, "OSPatchRebootTimeout", &msg).await;
                let next = step.uncordon()?;
                self.uncordon_if_ours().await?;
                self.record(
                    next,
                    &[
                        (nodeann::LAST_RESULT, Some("reboot-timeout".into())),
                        (nodeann::LAST_MESSAGE, Some(msg.clone())),
                    ],
                    "uncordoned: the reboot did not happen in time",
                )
                .await?;
                self.reboot_issued = false;
                self.release_and_idle(slot, started, "reboot-timeout", Some(msg))
                    .await?;
                return Ok(Step::Idle);
            }
            // Still the boot that asked: the reboot has not happened (or an agent died before
            // asking). Ask (again) now and then.
            if !self.reboot_issued || asked.elapsed() > Duration::from_secs(300) {
                self.host.reboot().await?;
                self.reboot_issued = true;
                asked = std::time::Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.reboot_issued = false;
        let deadline = tokio::time::Instant::now() + self.opts.node_ready_timeout;
        if let Some(mut rx) = self.node_rx.clone() {
            let name = self.opts.node.clone();
            let waited = tokio::time::timeout_at(
                deadline,
                rx.wait_for(|s| {
                    s.as_ref()
                        .and_then(|m| m.get(&name))
                        .is_some_and(nodeann::ready)
                }),
            )
            .await
            .map(|_| ());
            if waited.is_err() {
                self.metrics.record_deadline("node-ready");
                let msg = format!(
                    "the node was not Ready within {:?} of booting again: going on (uncordoning) anyway",
                    self.opts.node_ready_timeout
                );
                self.note(true, "OSPatchNodeNotReady", &msg).await;
                annotate(
                    self.client(),
                    &self.opts.node,
                    &[(nodeann::LAST_MESSAGE, Some(msg))],
                )
                .await?;
            }
        }
        if let Err(e) = self.publish_host_state(false).await {
            warn!(error = %format!("{e:#}"), "publishing the host's patch state");
        }
        let next = step.uncordon()?;
        self.uncordon_if_ours().await?;
        let live = self.host.reboot_required().unwrap_or(false);
        self.record(
            next,
            &[(nodeann::REBOOT_REQUIRED, Some(live.to_string()))],
            "rebooted; uncordoned",
        )
        .await?;
        Ok(next)
    }

    async fn release_and_idle(
        &self,
        slot: &str,
        started: std::time::Instant,
        result: &str,
        message: Option<String>,
    ) -> Result<(), Stop> {
        if !slot.is_empty() {
            self.slots.release(slot).await?;
        }
        self.metrics.slot_held.store(false, Ordering::Relaxed);
        self.metrics
            .patch_duration_ms
            .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.metrics.record_result(result);
        let mut extra = vec![
            (nodeann::SLOT, None),
            (nodeann::LAST_RESULT, Some(result.to_string())),
        ];
        if let Some(m) = message {
            extra.push((nodeann::LAST_MESSAGE, Some(m)));
        }
        annotate(self.client(), &self.opts.node, &extra).await?;
        let node = self.fresh_node().await?;
        if nodeann::step_of(&node) != Step::Idle {
            self.record(Step::Idle, &[], &format!("slot {slot} released ({result})"))
                .await?;
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        started: std::time::Instant,
        slot: Option<&str>,
    ) -> Result<(), Stop> {
        let slot = match slot {
            Some(s) => s.to_string(),
            None => annotation(&self.fresh_node().await?, nodeann::SLOT)
                .unwrap_or("")
                .to_string(),
        };
        Step::Uncordoned.release()?;
        // The last message is bootpatch's result, written by `apply` (or a later note).
        self.release_and_idle(&slot, started, "success", None).await
    }

    /// A failed drain: uncordon if we cordoned, release the slot, back to idle (retried at the
    /// next schedule occurrence or request).
    async fn abort_run(&mut self, slot: &str, started: std::time::Instant) -> Result<(), Stop> {
        let node = self.fresh_node().await?;
        let step = nodeann::step_of(&node);
        step.abort()?;
        let uncordoned = self.uncordon_if_ours().await?;
        let result = annotation(&node, nodeann::LAST_RESULT)
            .unwrap_or("drain-failed")
            .to_string();
        let msg = annotation(&node, nodeann::LAST_MESSAGE).map(str::to_string);
        info!(node = %self.opts.node, uncordoned, "run aborted after a failed drain");
        self.release_and_idle(slot, started, &result, msg).await
    }
}

/// What the agent records when it is told to stop (SIGTERM from a rollout, an eviction, a
/// node shutdown): the step it was at, on the Node (annotation + Event). It does nothing to
/// the host: a `bootpatch apply` in progress goes on as its own systemd unit, and the next
/// agent resumes from the recorded step and reattaches to the run. Bounded in time, so the
/// agent exits well within the pod's grace period.
pub async fn record_stop(client: &kube::Client, node: &str, signal: &str) -> anyhow::Result<Step> {
    let work = async {
        let n = Api::<Node>::all(client.clone()).get(node).await?;
        let step = nodeann::step_of(&n);
        let msg = format!(
            "agent stopped by {signal} at step {step}; the host is left alone (a bootpatch run in progress goes on as {}.service) and the next agent resumes from this step",
            crate::host::UNIT
        );
        annotate(
            client,
            node,
            &[(
                nodeann::AGENT_STOPPED,
                Some(format!("{} {signal} at step {step}", now_rfc3339())),
            )],
        )
        .await?;
        info!(node, step = %step, "{msg}");
        event(client, node, false, "OSPatchAgentStopped", &msg).await?;
        Ok::<Step, anyhow::Error>(step)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow::anyhow!("recording the stop on node {node} timed out"))?
}

/// Leaves a readable reason on the Node when the agent cannot start (no host root, no
/// bootpatch on the host): `last-result` `agent-error` and the message in `last-message`.
pub async fn record_startup_error(
    client: &kube::Client,
    node: &str,
    message: &str,
) -> anyhow::Result<()> {
    let work = async {
        annotate(
            client,
            node,
            &[
                (nodeann::LAST_RESULT, Some("agent-error".into())),
                (nodeann::LAST_MESSAGE, Some(message.to_string())),
            ],
        )
        .await?;
        event(client, node, true, "OSPatchAgentError", message).await?;
        Ok::<(), anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| anyhow::anyhow!("recording the error on node {node} timed out"))?
}

enum Consider {
    Wait(Option<DateTime<Utc>>),
    Run(&'static str),
}
