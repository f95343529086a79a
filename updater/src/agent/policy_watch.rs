//! The policy watch: the drain policy and patch policy ConfigMaps, reparsed when they change.
//! A policy that does not parse is reported (Event, metric, node annotation) and the last good
//! one stays in force.

use super::*;

impl Agent {
    /// Reparses the policy ConfigMaps when they change; a policy that does not parse is
    /// reported and the last good one stays in force.
    pub(super) async fn load_policies(
        &mut self,
        cms: &Snapshot<ConfigMap>,
        drain_cms: &Snapshot<ConfigMap>,
    ) {
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
}
