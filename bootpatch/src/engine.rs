//! The patch run itself, the same for the first boot and for every later
//! run the updater starts: detect the OS, finish an interrupted package
//! operation, refresh, plan, download (retrying while the sources are
//! unreachable, up to the deadline), install, then reboot if required and
//! allowed, never twice for the same pending set. Every run, good or bad, is
//! recorded in the state file before bootpatch exits or reboots.

use crate::apt::{self, Apt};
use crate::backend::{Backend, Failure, Plan};
use crate::config::Config;
use crate::dnf::Dnf;
use crate::error::{Error, Result};
use crate::lock;
use crate::log;
use crate::os::{self, Family, OsInfo};
use crate::state::{
    self, FirstBoot, PackageChange, RebootPending, RebootRecord, Run, RunError, State,
};
use crate::time::{now_unix, rfc3339};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where bootpatch keeps and finds things on a node.
#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
    pub state: PathBuf,
    pub work: PathBuf,
    pub run: PathBuf,
    pub own_lock: PathBuf,
    pub firstboot_done: PathBuf,
    pub boot_id: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            root: "/".into(),
            state: "/var/lib/bootpatch/state.json".into(),
            work: "/var/lib/bootpatch/apt".into(),
            run: "/run".into(),
            own_lock: "/run/bootpatch/lock".into(),
            firstboot_done: "/var/lib/bootpatch/firstboot.done".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
        }
    }
}

/// Whether a required reboot may happen, and if not, why not.
#[derive(Debug, Clone)]
pub enum RebootPolicy {
    Allowed,
    Denied(String),
}

impl RebootPolicy {
    pub fn from_config(cfg: &Config) -> RebootPolicy {
        if cfg.reboot_if_required {
            RebootPolicy::Allowed
        } else {
            RebootPolicy::Denied("rebootIfRequired is false".into())
        }
    }
}

/// What `apply` reports (and prints with `--json`). The updater reads it with this same
/// type, strictly: a field renamed here fails there loudly instead of reading as empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyReport {
    /// `patched`, `up-to-date`, `dry-run`.
    pub result: String,
    pub os: OsInfo,
    pub patched_version_before: String,
    pub patched_version_after: String,
    pub packages: Vec<PackageChange>,
    pub kept_back: Vec<String>,
    pub reboot_required: bool,
    pub reboot_packages: Vec<String>,
    pub rebooted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What `check` reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub os: OsInfo,
    pub patched_version: String,
    /// The Patched Version the upgrade would lead to, when it can be told
    /// before installing.
    pub patched_version_after: String,
    pub packages: Vec<PackageChange>,
    pub kept_back: Vec<String>,
}

fn backend(family: Family, cfg: &Config, paths: &Paths) -> Result<Box<dyn Backend>> {
    Ok(match family {
        Family::Debian | Family::Ubuntu => {
            Box::new(Apt::new(cfg, &paths.work, &paths.run, log::info)?)
        }
        Family::Rhel => Box::new(Dnf),
    })
}

/// Runs a network step again while the sources are unreachable, backing off,
/// until the deadline.
fn retry(
    deadline: Duration,
    what: &str,
    mut step: impl FnMut() -> Result<(), Failure>,
) -> Result<()> {
    let start = Instant::now();
    let mut delay = Duration::from_secs(1);
    loop {
        match step() {
            Ok(()) => return Ok(()),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Unreachable(detail)) => {
                let left = deadline.saturating_sub(start.elapsed());
                if left.is_zero() {
                    return Err(Error::MirrorUnreachable {
                        detail,
                        waited_secs: start.elapsed().as_secs(),
                    });
                }
                let wait = delay.min(left);
                log::warn(&format!(
                    "{what}: sources unreachable, retrying in {}s ({}s left): {}",
                    wait.as_secs_f32().ceil(),
                    left.as_secs(),
                    detail.lines().last().unwrap_or("")
                ));
                std::thread::sleep(wait);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Refuses a plan that would move the node to another stream (a base-files
/// from another major release means the sources point at another suite).
fn guard_stream(os: &OsInfo, plan: &Plan) -> Result<String> {
    if os.family != Family::Debian {
        return Ok(os.patched_version.clone());
    }
    let Some(bf) = plan.changes.iter().find(|c| c.name == "base-files") else {
        return Ok(os.patched_version.clone());
    };
    match apt::point_release_of_base_files(&bf.to) {
        Some(next) if next.split('.').next() == Some(os.stream.as_str()) => Ok(next),
        Some(next) => Err(Error::Unsupported(format!(
            "refusing to leave stream {}: base-files {} belongs to Debian {next}; check the package sources",
            os.stream, bf.to
        ))),
        None => Ok(os.patched_version.clone()),
    }
}

pub fn check(paths: &Paths, cfg: &Config) -> Result<CheckReport> {
    let os = os::detect(&paths.root)?;
    let mut b = backend(os.family, cfg, paths)?;
    retry(
        cfg.retry_deadline.as_std(),
        "refreshing package lists",
        || b.refresh(),
    )?;
    let plan = b.plan()?;
    let after = guard_stream(&os, &plan)?;
    Ok(CheckReport {
        patched_version: os.patched_version.clone(),
        patched_version_after: after,
        packages: plan.changes,
        kept_back: plan.kept_back,
        os,
    })
}

fn boot_id(paths: &Paths) -> String {
    std::fs::read_to_string(&paths.boot_id)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// One patch run. `command` is `apply` or `firstboot` (for the history).
pub fn apply(
    paths: &Paths,
    cfg: &Config,
    reboot: &RebootPolicy,
    dry_run: bool,
    command: &str,
) -> Result<ApplyReport> {
    let _own = lock::take_own_lock(&paths.own_lock)?;
    let (mut st, note) = State::load(&paths.state)?;
    if let Some(n) = note {
        log::warn(&n);
    }
    let started = rfc3339(now_unix());
    let before = os::detect(&paths.root);
    let outcome = before.and_then(|os| run_patch(paths, cfg, reboot, dry_run, &os, &mut st));
    if dry_run {
        return outcome;
    }
    let finished = rfc3339(now_unix());
    let mut run = Run {
        command: command.into(),
        started_at: started,
        finished_at: finished.clone(),
        result: "failed".into(),
        error: None,
        packages: vec![],
        patched_version_before: None,
        patched_version_after: None,
        reboot_required: false,
        rebooted: false,
    };
    match &outcome {
        Ok(r) => {
            run.result = r.result.clone();
            run.packages = r.packages.clone();
            run.patched_version_before = Some(r.patched_version_before.clone());
            run.patched_version_after = Some(r.patched_version_after.clone());
            run.reboot_required = r.reboot_required;
            run.rebooted = r.rebooted;
            st.os = Some(r.os.clone());
            st.patched_version = Some(r.patched_version_after.clone());
            st.last_applied_patch_time = Some(finished.clone());
            if !r.packages.is_empty() {
                st.last_package_change_time = Some(finished);
            }
        }
        Err(e) => {
            run.error = Some(RunError {
                kind: e.kind().into(),
                message: e.to_string(),
            })
        }
    }
    st.kernel = Some(kernel());
    st.push_run(run);
    st.save(&paths.state)?;
    // The state is on disk before the reboot starts.
    if let Ok(r) = &outcome {
        if r.rebooted {
            reboot_now(cfg)?;
        }
    }
    outcome
}

fn reboot_now(cfg: &Config) -> Result<()> {
    log::info(&format!("rebooting: {}", cfg.reboot_command.join(" ")));
    let mut c = std::process::Command::new(&cfg.reboot_command[0]);
    c.args(&cfg.reboot_command[1..]);
    crate::cmd::run_ok("rebooting", &mut c).map(drop)
}

fn run_patch(
    paths: &Paths,
    cfg: &Config,
    reboot: &RebootPolicy,
    dry_run: bool,
    os: &OsInfo,
    st: &mut State,
) -> Result<ApplyReport> {
    log::info(&format!(
        "{} (stream {}, Patched Version {})",
        os.name, os.stream, os.patched_version
    ));
    let mut b = backend(os.family, cfg, paths)?;
    let mut notes = Vec::new();
    let deadline = cfg.retry_deadline.as_std();
    retry(deadline, "refreshing package lists", || b.refresh())?;
    if !dry_run {
        let mut repaired = None;
        retry(deadline, "repairing", || b.repair().map(|n| repaired = n))?;
        if let Some(n) = repaired {
            log::warn(&n);
            notes.push(n);
        }
    }
    let plan = b.plan()?;
    let predicted = guard_stream(os, &plan)?;
    let mut report = ApplyReport {
        result: "up-to-date".into(),
        os: os.clone(),
        patched_version_before: os.patched_version.clone(),
        patched_version_after: os.patched_version.clone(),
        packages: plan.changes.clone(),
        kept_back: plan.kept_back.clone(),
        reboot_required: false,
        reboot_packages: vec![],
        rebooted: false,
        reboot_pending_reason: None,
        notes,
    };
    if dry_run {
        report.result = "dry-run".into();
        report.patched_version_after = predicted;
        return Ok(report);
    }
    if !plan.changes.is_empty() {
        // Nothing syncs what cloud-init wrote in this boot (the config, the
        // join script, its own markers) nor apt's fresh lists; a power cut
        // during the install would lose them and, with them, the join.
        // Flush them before the long, risky part.
        rustix::fs::sync();
        log::info(&format!("upgrading {} package(s)", plan.changes.len()));
        retry(deadline, "downloading packages", || b.download())?;
        b.install()?;
        report.result = "patched".into();
        let after = os::detect(&paths.root)?;
        report.patched_version_after = after.patched_version.clone();
        report.os = after;
    }
    let required = b.reboot_required()?;
    let now = rfc3339(now_unix());
    match required {
        None => st.reboot_pending = None,
        Some(pkgs) => {
            report.reboot_required = true;
            report.reboot_packages = pkgs.clone();
            let boot = boot_id(paths);
            let installed = !plan.changes.is_empty();
            let again = st
                .last_reboot
                .as_ref()
                .filter(|last| last.packages == pkgs && (last.boot_id == boot || !installed));
            let refusal = match (reboot, again) {
                (RebootPolicy::Denied(why), _) => Some(why.clone()),
                (RebootPolicy::Allowed, Some(last)) => Some(format!(
                    "a reboot for these packages was already requested at {} (boot {}); not rebooting again",
                    last.requested_at, last.boot_id
                )),
                (RebootPolicy::Allowed, None) => None,
            };
            match refusal {
                Some(reason) => {
                    log::warn(&format!(
                        "reboot required by {} but not done: {reason}",
                        pkgs.join(", ")
                    ));
                    let since = st
                        .reboot_pending
                        .as_ref()
                        .filter(|p| p.packages == pkgs)
                        .map(|p| p.since.clone())
                        .unwrap_or(now);
                    st.reboot_pending = Some(RebootPending {
                        packages: pkgs,
                        reason: reason.clone(),
                        since,
                    });
                    report.reboot_pending_reason = Some(reason);
                }
                None => {
                    st.last_reboot = Some(RebootRecord {
                        requested_at: now.clone(),
                        boot_id: boot,
                        packages: pkgs.clone(),
                    });
                    st.reboot_pending = Some(RebootPending {
                        packages: pkgs,
                        reason: "rebooting".into(),
                        since: now,
                    });
                    report.rebooted = true;
                }
            }
        }
    }
    Ok(report)
}

/// The first-boot entry point. Returns the exit code.
pub fn firstboot(paths: &Paths, config_path: &Path) -> Result<i32> {
    if paths.firstboot_done.exists() {
        log::info("first-boot patch already done");
        return Ok(0);
    }
    let cfg = if config_path.exists() {
        Config::load(config_path)?
    } else {
        Config::default()
    };
    let mark_done = |st: &mut State, fb: FirstBoot| -> Result<()> {
        st.first_boot = Some(fb);
        st.save(&paths.state)?;
        state::write_atomic(
            &paths.firstboot_done,
            format!("{}\n", rfc3339(now_unix())).as_bytes(),
            0o644,
        )
        .map_err(|e| Error::io(format!("writing {}", paths.firstboot_done.display()), e))
    };
    if !cfg.patch_on_boot {
        let _own = lock::take_own_lock(&paths.own_lock)?;
        let (mut st, _) = State::load(&paths.state)?;
        let now = rfc3339(now_unix());
        st.push_run(Run {
            command: "firstboot".into(),
            started_at: now.clone(),
            finished_at: now.clone(),
            result: "skipped".into(),
            error: None,
            packages: vec![],
            patched_version_before: None,
            patched_version_after: None,
            reboot_required: false,
            rebooted: false,
        });
        if let Ok(os) = os::detect(&paths.root) {
            st.patched_version.get_or_insert(os.patched_version.clone());
            st.os = Some(os);
        }
        log::info("patchOnBoot is false: first-boot patch skipped");
        mark_done(
            &mut st,
            FirstBoot {
                result: "skipped".into(),
                at: now,
                error: None,
            },
        )?;
        return Ok(0);
    }
    let outcome = apply(
        paths,
        &cfg,
        &RebootPolicy::from_config(&cfg),
        false,
        "firstboot",
    );
    let (mut st, _) = State::load(&paths.state)?;
    let now = rfc3339(now_unix());
    let earlier = st.first_boot.as_ref().map(|f| f.result.clone());
    match outcome {
        Ok(r) if r.rebooted => {
            st.first_boot = Some(FirstBoot {
                result: "rebooting".into(),
                at: now,
                error: None,
            });
            st.save(&paths.state)?;
            Ok(0)
        }
        Ok(r) => {
            let result = if r.result == "up-to-date" && earlier.as_deref() == Some("rebooting") {
                "patched".to_string()
            } else {
                r.result
            };
            mark_done(
                &mut st,
                FirstBoot {
                    result,
                    at: now,
                    error: None,
                },
            )?;
            Ok(0)
        }
        Err(e) => {
            log::error(&format!("first-boot patch failed: {e}; the boot continues"));
            let err = RunError {
                kind: e.kind().into(),
                message: e.to_string(),
            };
            mark_done(
                &mut st,
                FirstBoot {
                    result: "failed".into(),
                    at: now,
                    error: Some(err),
                },
            )?;
            Ok(e.exit_code())
        }
    }
}

/// What `status` shows: the recorded state, plus whether a reboot is
/// required right now (read live, since the flag lives in /run).
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub last_applied_patch_time: Option<String>,
    pub patched_version: Option<String>,
    pub kernel: Option<String>,
    pub reboot_required: bool,
    pub reboot_packages: Vec<String>,
    pub reboot_pending_reason: Option<String>,
    pub first_boot: Option<FirstBoot>,
    pub last_run: Option<Run>,
}

pub fn status(paths: &Paths) -> Result<StatusReport> {
    let st = match std::fs::read_to_string(&paths.state) {
        Ok(t) => serde_json::from_str::<State>(&t).map_err(|e| Error::State {
            path: paths.state.display().to_string(),
            detail: format!("does not parse: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::new(),
        Err(e) => {
            return Err(Error::State {
                path: paths.state.display().to_string(),
                detail: e.to_string(),
            })
        }
    };
    let flag = paths.run.join("reboot-required");
    let live = if flag.exists() {
        let pkgs =
            std::fs::read_to_string(paths.run.join("reboot-required.pkgs")).unwrap_or_default();
        let mut v: Vec<String> = pkgs
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        v.sort();
        v.dedup();
        Some(v)
    } else {
        None
    };
    // On the dnf family there is no flag file: the recorded state stands.
    let is_rhel = st
        .os
        .as_ref()
        .map(|o| o.family == Family::Rhel)
        .unwrap_or(false);
    let (required, pkgs, reason) = match (live, &st.reboot_pending) {
        (Some(p), rec) => (true, p, rec.as_ref().map(|r| r.reason.clone())),
        (None, Some(rec)) if is_rhel => (true, rec.packages.clone(), Some(rec.reason.clone())),
        (None, _) => (false, vec![], None),
    };
    Ok(StatusReport {
        last_applied_patch_time: st.last_applied_patch_time.clone(),
        patched_version: st.patched_version.clone(),
        kernel: st.kernel.clone(),
        reboot_required: required,
        reboot_packages: pkgs,
        reboot_pending_reason: reason,
        first_boot: st.first_boot.clone(),
        last_run: st.last_run().cloned(),
    })
}
