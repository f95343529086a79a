//! A SIMULATED host, a stand-in for tests and the fleet benchmark (named as simulated wherever
//! it is used; nothing here touches a real host). What each node does comes from a
//! [`Behaviour`] the test chooses, per node ([`Behaviours`]): how long `bootpatch check` and
//! `bootpatch apply` take
//! and what it ends with (patched, nothing to do, or a bootpatch failure by its exit code),
//! whether the patch needs a reboot, how long the reboot takes, and whether the reboot kills
//! the agent (as a real one does: [`SimulatedHost::supervise`] drops the agent when the power
//! goes and starts a fresh one when the host is back, as the DaemonSet would). The reboot calls
//! a hook (tests make the test API server take the node down), and the boot id changes when
//! the simulated reboot is over.
//!
//! Reboot-required follows bootpatch's real rule (`bootpatch status`): the live flag
//! `/run/reboot-required`, which a reboot clears because /run is a tmpfs. The state file's
//! `reboot_pending` is left as bootpatch leaves it: only bootpatch's next run clears it.

use crate::host::{ApplyReport, BoxFuture, Check, HostActions};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type RebootHook = Arc<dyn Fn(&str, Duration) + Send + Sync>;

/// How a simulated `bootpatch apply` ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Packages upgraded (the version moves to [`Behaviour::version_after`]).
    Patched,
    /// Nothing to do.
    UpToDate,
    /// bootpatch failed with this exit code (bootpatch's own table names the kind).
    Fails { exit_code: i32 },
    /// The apply never ends (a hung unit).
    Hangs,
}

/// What one simulated node does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// How long `bootpatch check` takes (an index refresh, before any slot is taken).
    pub check_duration: Duration,
    pub apply_duration: Duration,
    pub outcome: ApplyOutcome,
    /// Whether a patch that upgraded something needs a reboot.
    pub reboot_required: bool,
    pub reboot_duration: Duration,
    /// The reboot kills the agent (a restart from scratch when the host is back).
    pub reboot_kills_agent: bool,
    pub version_before: String,
    pub version_after: String,
}

impl Behaviour {
    /// Patched, a reboot needed, the agent survives: set every field that matters to a test.
    pub fn patched(
        apply: Duration,
        reboot: Duration,
        version_before: &str,
        version_after: &str,
    ) -> Self {
        Self {
            check_duration: apply / 10,
            apply_duration: apply,
            outcome: ApplyOutcome::Patched,
            reboot_required: true,
            reboot_duration: reboot,
            reboot_kills_agent: false,
            version_before: version_before.into(),
            version_after: version_after.into(),
        }
    }
}

/// The behaviour table: one default, and the nodes that differ.
#[derive(Debug, Clone)]
pub struct Behaviours {
    pub default: Behaviour,
    pub nodes: HashMap<String, Behaviour>,
}

impl Behaviours {
    pub fn new(default: Behaviour) -> Self {
        Self {
            default,
            nodes: HashMap::new(),
        }
    }

    pub fn with(mut self, node: &str, b: Behaviour) -> Self {
        self.nodes.insert(node.to_string(), b);
        self
    }

    pub fn for_node(&self, node: &str) -> Behaviour {
        self.nodes
            .get(node)
            .cloned()
            .unwrap_or_else(|| self.default.clone())
    }
}

/// A simulated node.
pub struct SimulatedHost {
    pub node: String,
    behaviour: Mutex<Behaviour>,
    /// A simulated reboot that never comes back (the node is lost).
    pub never_returns: AtomicBool,
    pub on_reboot: Option<RebootHook>,
    boot: Arc<AtomicU64>,
    rebooting: Arc<AtomicBool>,
    /// The host's power: false while a reboot that kills the agent is under way.
    power: Arc<tokio::sync::watch::Sender<bool>>,
    /// `/run/reboot-required` (a tmpfs file: gone after a reboot).
    run_flag: Arc<AtomicBool>,
    /// `bootpatch check` runs (one at the start of every run the agent considers).
    pub checks: AtomicU64,
    pub applies: AtomicU64,
    pub reboots: AtomicU64,
    /// Agents started by [`SimulatedHost::supervise`] (1 + restarts after reboots).
    pub agent_starts: AtomicU64,
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
    /// Patched (or not) with a reboot needed or not; versions 12.10 → 12.11.
    pub fn new(node: &str, apply: Duration, reboot: Duration, reboot_required: bool) -> Self {
        let mut b = Behaviour::patched(apply, reboot, "12.10", "12.11");
        b.reboot_required = reboot_required;
        Self::with_behaviour(node, b)
    }

    pub fn with_behaviour(node: &str, b: Behaviour) -> Self {
        let mut state = bootpatch::state::State::new();
        state.patched_version = Some(b.version_before.clone());
        state.last_applied_patch_time = Some("2026-01-01T00:00:00Z".into());
        state.first_boot = Some(bootpatch::state::FirstBoot {
            result: "patched".into(),
            at: "2026-01-01T00:00:00Z".into(),
            error: None,
        });
        Self {
            node: node.to_string(),
            behaviour: Mutex::new(b),
            never_returns: AtomicBool::new(false),
            on_reboot: None,
            boot: Arc::new(AtomicU64::new(1)),
            rebooting: Arc::new(AtomicBool::new(false)),
            power: Arc::new(tokio::sync::watch::channel(true).0),
            run_flag: Arc::new(AtomicBool::new(false)),
            checks: AtomicU64::new(0),
            applies: AtomicU64::new(0),
            reboots: AtomicU64::new(0),
            agent_starts: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    pub fn with_reboot_hook(mut self, hook: RebootHook) -> Self {
        self.on_reboot = Some(hook);
        self
    }

    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap_or_else(|p| p.into_inner()) = b;
    }

    /// Changes the behaviour in place.
    pub fn change(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Whether the host is up (not in a reboot that kills the agent).
    pub fn powered(&self) -> bool {
        *self.power.borrow()
    }

    /// Sets the state file as a previous bootpatch run left it (a stand-in for the file).
    pub fn edit_state(&self, f: impl FnOnce(&mut bootpatch::state::State)) {
        f(&mut self.lock_state());
    }

    /// The state file as it is now.
    pub fn state_now(&self) -> bootpatch::state::State {
        self.lock_state().clone()
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, bootpatch::state::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs an agent on this host the way the DaemonSet would: `start` makes a fresh agent,
    /// which is dropped (killed) when a reboot that kills the agent begins and started again
    /// from scratch when the host is back. An agent that ends on its own is started again
    /// after a second. Runs until the returned future is dropped.
    pub async fn supervise<F, Fut>(self: Arc<Self>, start: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut power = self.power.subscribe();
        loop {
            if power.wait_for(|up| *up).await.map(|_| ()).is_err() {
                return;
            }
            self.agent_starts.fetch_add(1, Ordering::SeqCst);
            tokio::select! {
                _ = start() => tokio::time::sleep(Duration::from_secs(1)).await,
                _ = async { power.wait_for(|up| !*up).await.map(|_| ()) } => {}
            }
        }
    }
}

impl HostActions for SimulatedHost {
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>> {
        Box::pin(async move {
            let b = self.behaviour();
            if b.outcome == ApplyOutcome::Hangs {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(b.apply_duration).await;
            self.applies.fetch_add(1, Ordering::SeqCst);
            if let ApplyOutcome::Fails { exit_code } = b.outcome {
                anyhow::bail!(
                    "simulated bootpatch apply failed with exit code {exit_code} ({}): simulated failure",
                    crate::host::exit_code_label(exit_code)
                );
            }
            let patched = b.outcome == ApplyOutcome::Patched;
            let reboot = patched && b.reboot_required;
            let mut s = self.lock_state();
            let before = s.patched_version.clone().unwrap_or_default();
            let after = if patched {
                b.version_after.clone()
            } else {
                before.clone()
            };
            s.patched_version = Some(after.clone());
            s.last_applied_patch_time = Some(bootpatch::time::rfc3339(bootpatch::time::now_unix()));
            // As bootpatch does: each run records what is pending now, or nothing.
            s.reboot_pending = None;
            if reboot {
                self.run_flag.store(true, Ordering::SeqCst);
            }
            if self.run_flag.load(Ordering::SeqCst) {
                s.reboot_pending = Some(bootpatch::state::RebootPending {
                    packages: vec!["linux-image-amd64".into()],
                    reason: "--no-reboot given".into(),
                    since: s.last_applied_patch_time.clone().unwrap_or_default(),
                });
            }
            let required = self.run_flag.load(Ordering::SeqCst);
            Ok(ApplyReport {
                result: if patched { "patched" } else { "up-to-date" }.into(),
                os: bootpatch::os::OsInfo {
                    family: bootpatch::os::Family::Debian,
                    id: "debian".into(),
                    stream: "12".into(),
                    patched_version: after.clone(),
                    name: "Debian GNU/Linux 12 (bookworm)".into(),
                },
                patched_version_before: before,
                patched_version_after: after,
                packages: vec![],
                kept_back: vec![],
                reboot_required: required,
                reboot_packages: if required {
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

    /// As bootpatch's check would: a node already at the behaviour's new version has nothing
    /// to install; a failure of the sources (unreachable, bad signature, bad config) fails the
    /// check as it fails the apply; other failures show only when installing.
    fn check(&self) -> BoxFuture<'_, anyhow::Result<Check>> {
        Box::pin(async move {
            let b = self.behaviour();
            tokio::time::sleep(b.check_duration).await;
            self.checks.fetch_add(1, Ordering::SeqCst);
            Ok(match b.outcome {
                ApplyOutcome::UpToDate => Check::UpToDate,
                ApplyOutcome::Patched
                    if self.lock_state().patched_version.as_deref()
                        == Some(b.version_after.as_str()) =>
                {
                    Check::UpToDate
                }
                ApplyOutcome::Fails { exit_code } => {
                    let c = Check::from_exit(exit_code, "simulated failure");
                    if c.fails_the_apply_too() {
                        c
                    } else {
                        Check::Pending
                    }
                }
                ApplyOutcome::Patched | ApplyOutcome::Hangs => Check::Pending,
            })
        })
    }

    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            if self.rebooting.swap(true, Ordering::SeqCst) {
                return Ok(());
            }
            let b = self.behaviour();
            self.reboots.fetch_add(1, Ordering::SeqCst);
            if let Some(h) = &self.on_reboot {
                h(&self.node, b.reboot_duration);
            }
            if b.reboot_kills_agent {
                self.power.send_replace(false);
            }
            if self.never_returns.load(Ordering::SeqCst) {
                return Ok(());
            }
            let boot = self.boot.clone();
            let rebooting = self.rebooting.clone();
            let flag = self.run_flag.clone();
            let power = self.power.clone();
            tokio::spawn(async move {
                tokio::time::sleep(b.reboot_duration).await;
                // A new boot: /run is empty again; the state file is as bootpatch left it.
                flag.store(false, Ordering::SeqCst);
                boot.fetch_add(1, Ordering::SeqCst);
                rebooting.store(false, Ordering::SeqCst);
                power.send_replace(true);
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

    /// bootpatch's rule on Debian: the live flag only.
    fn reboot_required(&self) -> anyhow::Result<bool> {
        Ok(self.run_flag.load(Ordering::SeqCst))
    }
}
