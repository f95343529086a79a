//! The scheduler: whether the idle node is due now (a request, a cut-off, a schedule
//! occurrence, inside a maintenance window), when to look again otherwise, and whether a due
//! run ends before it takes a slot (`bootpatch check` finds nothing to do, or fails as the
//! apply would).

use super::*;

/// What the scheduler decided for an idle node.
pub(super) enum Consider {
    /// Not due: look again at this time (or when something changes).
    Wait(Option<DateTime<Utc>>),
    /// Due now, for this reason ("on-demand", "scheduled").
    Run(&'static str),
}

impl Agent {
    /// Whether the node, as the watch cache shows it, would have this agent resume a run or
    /// start one.
    pub(super) fn would_act_on(&self, node: &Node) -> bool {
        nodeann::step_of(node).in_run()
            || self.patch.as_ref().is_some_and(|p| {
                matches!(
                    policy::due(p, &nodeann::record_of(node), Utc::now()),
                    Due::Now(_)
                )
            })
    }

    /// Whether the idle node should run now, or when to look again.
    pub(super) async fn consider(&mut self, node: &Node) -> Result<Consider, kube::Error> {
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
                        (nodeann::LAST_RUN_START, Some(nodeann::now_rfc3339())),
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

    /// Whether a run that is due ends before it takes a slot, with its result and why; `None`
    /// runs the cycle. It ends when `bootpatch check` on the host finds nothing to install and
    /// no reboot is due (or reboots are not allowed): `up-to-date`; or when the check fails in
    /// a way the apply would too (sources unreachable, a bad signature, a bad config):
    /// `patch-failed`, without draining for it. Never while a cordon of the agent's own is left
    /// to undo. Any other doubt (the check cannot run, fails otherwise, or outlasts the apply
    /// deadline) runs the whole cycle, whose apply then says what is wrong. The check runs
    /// outside the slot, so nodes with nothing to do never queue for one.
    pub(super) async fn ends_before_the_slot(
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
}
