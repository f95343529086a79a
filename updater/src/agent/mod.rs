//! The per-node agent: watches its Node and the policy ConfigMaps, decides when the node is
//! due, takes a slot, and drives the patch cycle ([`crate::cycle::Step`]) step by step,
//! recording each step on the Node (annotation, Event, metric) before moving on, so that an
//! agent killed at any point resumes where it was. It never uncordons a node it did not
//! cordon, and never runs apt itself (the host actions do, through bootpatch).

use crate::cycle::{Step, Transition};
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

mod driver;
mod policy_watch;
mod scheduler;
mod slot_queue;

use scheduler::Consider;

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
    /// The step of the waiters' turns at a released slot ([`slots::claim_delay`]): the node
    /// next in line claims at once, the ones behind it after one more step per doubling.
    pub claim_stagger: Duration,
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
            claim_stagger: Duration::from_secs(2),
            window_check: Duration::from_secs(60),
            freeze_after_step: None,
        }
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
        patch: serde_json::Value,
    ) -> Result<bool, kube::Error> {
        self.patch_if_unchanged(&self.opts.node, read, patch).await
    }

    /// [`Self::patch_node_if_unchanged`] for any node (a takeover writes on its holder).
    async fn patch_if_unchanged(
        &self,
        name: &str,
        read: &Node,
        mut patch: serde_json::Value,
    ) -> Result<bool, kube::Error> {
        patch["metadata"]["resourceVersion"] = read.metadata.resource_version.clone().into();
        match Api::<Node>::all(self.client().clone())
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
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
                nodeann::stamp(Utc::now() + d)
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
            let patch = nodeann::annotations_patch(&pairs);
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
