//! The cycle driver: a run from its slot to idle again, one [`Step`] at a time. Every step
//! change goes through the state machine's transitions ([`crate::cycle`]) and is recorded on
//! the Node before the work of the next step starts, so a restarted agent resumes from it.

use super::*;

/// Drain progress, to the log and the metrics.
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

impl Agent {
    pub(super) async fn start_run(
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
                    (nodeann::LAST_RUN_START, Some(nodeann::stamp(begun))),
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
                (nodeann::LAST_RUN_START, Some(nodeann::now_rfc3339())),
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

    /// Picks up a run after a restart.
    #[instrument(skip_all, fields(node = %self.opts.node, step = %step))]
    pub(super) async fn resume(
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

    /// Drives the cycle from `step` with `slot` held, renewing it meanwhile.
    pub(super) async fn drive(
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
    pub(super) async fn cordon(&self, step: Step) -> Result<Step, Stop> {
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

    pub(super) async fn uncordon_if_ours(&self) -> Result<bool, kube::Error> {
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
    pub(super) async fn drain(&mut self, step: Step) -> Result<Option<Step>, Stop> {
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
    pub(super) async fn workloads_moved(
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
    pub(super) async fn apply(
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
                self.release_and_idle(slot, started, Step::release, result, Some(msg))
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
    pub(super) async fn after_reboot(
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
                self.release_and_idle(slot, started, Step::release, "reboot-timeout", Some(msg))
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

    /// Ends a run: records the result and moves the node to idle by `end` (the state
    /// machine's `release` after an uncordon, or its `abort` before one) from the step the
    /// node is at now, then releases the slot. In that order, a node shown in a run always
    /// holds its slot, so the nodes in a run never outnumber the slots. (An agent killed
    /// between the two leaves an idle node holding its Lease: the Lease expires unrenewed and
    /// the next node takes it as stale.)
    pub(super) async fn release_and_idle(
        &self,
        slot: &str,
        started: std::time::Instant,
        end: Transition,
        result: &str,
        message: Option<String>,
    ) -> Result<(), Stop> {
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
        let step = nodeann::step_of(&self.fresh_node().await?);
        if step == Step::Idle {
            annotate(self.client(), &self.opts.node, &extra).await?;
        } else {
            let msg = if slot.is_empty() {
                format!("run ended ({result})")
            } else {
                format!("run ended ({result}); releasing slot {slot}")
            };
            self.record(end(step)?, &extra, &msg).await?;
        }
        if !slot.is_empty() {
            self.slots.release(slot).await?;
        }
        self.metrics.slot_held.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// The end of a run that uncordoned: the slot released, `success`.
    pub(super) async fn finish(
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
        // The last message is bootpatch's result, written by `apply` (or a later note).
        self.release_and_idle(&slot, started, Step::release, "success", None)
            .await
    }

    /// A failed drain: uncordon if we cordoned, release the slot, back to idle (retried at the
    /// next schedule occurrence or request).
    pub(super) async fn abort_run(
        &mut self,
        slot: &str,
        started: std::time::Instant,
    ) -> Result<(), Stop> {
        let node = self.fresh_node().await?;
        let step = nodeann::step_of(&node);
        step.abort()?;
        let uncordoned = self.uncordon_if_ours().await?;
        let result = annotation(&node, nodeann::LAST_RESULT)
            .unwrap_or("drain-failed")
            .to_string();
        let msg = annotation(&node, nodeann::LAST_MESSAGE).map(str::to_string);
        info!(node = %self.opts.node, uncordoned, "run aborted after a failed drain");
        self.release_and_idle(slot, started, Step::abort, &result, msg)
            .await
    }
}
