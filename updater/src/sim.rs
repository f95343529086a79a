//! Simulated host actions for tests and the fleet benchmark (named as simulated wherever they
//! are used): `bootpatch apply` takes a set duration and reports a set result, the reboot takes
//! a set duration and calls a hook (tests make the test API server take the node down), and
//! the boot id changes when the simulated reboot is over. Nothing here touches a real host.

use crate::host::{ApplyReport, BoxFuture, HostActions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type RebootHook = Arc<dyn Fn(&str, Duration) + Send + Sync>;

/// A simulated node.
pub struct SimulatedHost {
    pub node: String,
    pub apply_duration: Duration,
    pub reboot_duration: Duration,
    /// Whether the simulated patch needs a reboot.
    pub reboot_required: bool,
    /// A simulated reboot that never comes back (the node is lost).
    pub never_returns: AtomicBool,
    /// Fail `apply` with this message.
    pub apply_error: Mutex<Option<String>>,
    pub on_reboot: Option<RebootHook>,
    boot: Arc<AtomicU64>,
    rebooting: Arc<AtomicBool>,
    pub applies: AtomicU64,
    pub reboots: AtomicU64,
    state: Mutex<bootpatch::state::State>,
}

impl std::fmt::Debug for SimulatedHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedHost")
            .field("node", &self.node)
            .finish()
    }
}

impl SimulatedHost {
    pub fn new(node: &str, apply: Duration, reboot: Duration, reboot_required: bool) -> Self {
        let mut state = bootpatch::state::State::new();
        state.patched_version = Some("12.10".into());
        state.last_applied_patch_time = Some("2026-01-01T00:00:00Z".into());
        state.first_boot = Some(bootpatch::state::FirstBoot {
            result: "patched".into(),
            at: "2026-01-01T00:00:00Z".into(),
            error: None,
        });
        Self {
            node: node.to_string(),
            apply_duration: apply,
            reboot_duration: reboot,
            reboot_required,
            never_returns: AtomicBool::new(false),
            apply_error: Mutex::new(None),
            on_reboot: None,
            boot: Arc::new(AtomicU64::new(1)),
            rebooting: Arc::new(AtomicBool::new(false)),
            applies: AtomicU64::new(0),
            reboots: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    pub fn with_reboot_hook(mut self, hook: RebootHook) -> Self {
        self.on_reboot = Some(hook);
        self
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, bootpatch::state::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HostActions for SimulatedHost {
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>> {
        Box::pin(async move {
            tokio::time::sleep(self.apply_duration).await;
            self.applies.fetch_add(1, Ordering::SeqCst);
            if let Some(e) = self
                .apply_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                anyhow::bail!("simulated bootpatch apply failure: {e}");
            }
            let mut s = self.lock_state();
            let before = s.patched_version.clone();
            let after = "12.11".to_string();
            s.patched_version = Some(after.clone());
            s.last_applied_patch_time = Some(bootpatch::time::rfc3339(bootpatch::time::now_unix()));
            if self.reboot_required {
                s.reboot_pending = Some(bootpatch::state::RebootPending {
                    packages: vec!["linux-image-amd64".into()],
                    reason: "--no-reboot given".into(),
                    since: s.last_applied_patch_time.clone().unwrap_or_default(),
                });
            }
            Ok(ApplyReport {
                result: "patched".into(),
                os: bootpatch::os::OsInfo {
                    family: bootpatch::os::Family::Debian,
                    id: "debian".into(),
                    stream: "12".into(),
                    patched_version: after.clone(),
                    name: "Debian GNU/Linux 12 (bookworm)".into(),
                },
                patched_version_before: before.unwrap_or_default(),
                patched_version_after: after,
                packages: vec![],
                kept_back: vec![],
                reboot_required: self.reboot_required,
                reboot_packages: if self.reboot_required {
                    vec!["linux-image-amd64".into()]
                } else {
                    vec![]
                },
                rebooted: false,
                reboot_pending_reason: None,
                notes: vec![],
            })
        })
    }

    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if self.rebooting.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            self.reboots.fetch_add(1, Ordering::SeqCst);
            if let Some(h) = &self.on_reboot {
                h(&self.node, self.reboot_duration);
            }
            if self.never_returns.load(Ordering::SeqCst) {
                return Ok(());
            }
            let boot = self.boot.clone();
            let rebooting = self.rebooting.clone();
            let d = self.reboot_duration;
            self.lock_state().reboot_pending = None;
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                boot.fetch_add(1, Ordering::SeqCst);
                rebooting.store(false, Ordering::SeqCst);
            });
            Ok(())
        })
    }

    fn boot_id(&self) -> anyhow::Result<String> {
        Ok(format!("sim-boot-{}", self.boot.load(Ordering::SeqCst)))
    }

    fn state(&self) -> anyhow::Result<Option<bootpatch::state::State>> {
        Ok(Some(self.lock_state().clone()))
    }
}
