//! What the agent does on its host, behind one trait: run `bootpatch apply`, reboot, read the
//! boot id and bootpatch's state file. [`RealHost`] does it on the node: in PID 1's namespaces
//! through the host's systemd (see [`crate::hostns`]), with host files read under /host;
//! simulations implement the trait with set durations. The agent never runs apt itself.

use anyhow::Context as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

/// `bootpatch apply --json`'s report: bootpatch's own type, so the two cannot drift apart.
pub use bootpatch::engine::ApplyReport;

/// bootpatch's exit codes (README) as stable labels: bootpatch's own table.
pub use bootpatch::error::exit::label as exit_code_label;

/// Parses `bootpatch apply --json` output: the last JSON object on stdout that starts at the
/// beginning of a line (bootpatch pretty-prints it over many lines; anything before it, such
/// as a wrapper's own output, is skipped).
pub fn parse_apply_report(stdout: &str) -> anyhow::Result<ApplyReport> {
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    for line in stdout.split_inclusive('\n') {
        if line.starts_with('{') {
            starts.push(at);
        }
        at += line.len();
    }
    let mut last_err = None;
    for &start in starts.iter().rev() {
        let mut values = serde_json::Deserializer::from_str(&stdout[start..]).into_iter();
        match values.next() {
            Some(Ok(report)) => return Ok(report),
            Some(Err(e)) => last_err = Some(e),
            None => {}
        }
    }
    let shown = crate::kube_util::tail_chars(stdout.trim(), 2000);
    match last_err {
        Some(e) => Err(e).with_context(|| format!("parsing bootpatch's JSON report {shown:?}")),
        None => anyhow::bail!("bootpatch printed no JSON report: {shown:?}"),
    }
}

/// What `bootpatch check` said, by its exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Exit code 0: nothing to install.
    UpToDate,
    /// Exit code 100: patches are available.
    Pending,
    /// Any other exit code: bootpatch's failure, with what it printed.
    Failed { exit_code: i32, message: String },
}

impl Check {
    /// From `bootpatch check`'s exit code and standard error.
    pub fn from_exit(code: i32, stderr: &str) -> Check {
        use bootpatch::error::exit;
        match code {
            exit::OK => Check::UpToDate,
            exit::PATCHES_AVAILABLE => Check::Pending,
            c => Check::Failed {
                exit_code: c,
                message: format!(
                    "bootpatch check failed with exit code {c} ({}): {}",
                    exit_code_label(c),
                    crate::kube_util::tail_chars(stderr.trim(), 500)
                ),
            },
        }
    }

    /// A failure in the sources or the configuration, which an apply would meet too: the
    /// sources unreachable, a signature that does not verify, a bad config.
    pub fn fails_the_apply_too(&self) -> bool {
        use bootpatch::error::exit;
        matches!(self, Check::Failed { exit_code, .. }
            if [exit::MIRROR_UNREACHABLE, exit::VERIFICATION, exit::CONFIG].contains(exit_code))
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Host actions. Implementations must be idempotent enough to be repeated after a crash.
pub trait HostActions: Send + Sync {
    /// Runs `bootpatch apply` without letting it reboot (the agent reboots, after recording).
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>>;
    /// Runs `bootpatch check`: whether anything would be installed, or how the check failed.
    /// An `Err` means the check could not be run at all.
    fn check(&self) -> BoxFuture<'_, anyhow::Result<Check>>;
    /// Asks the host to reboot. May return before the reboot happens.
    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// This boot's id (changes with every boot).
    fn boot_id(&self) -> anyhow::Result<String>;
    /// bootpatch's state file, if there is one.
    fn state(&self) -> anyhow::Result<Option<bootpatch::state::State>>;
    /// Whether a reboot is required now, by `bootpatch status`'s rule: the live flag
    /// `/run/reboot-required` (gone after a reboot), or on the dnf family the recorded state.
    /// Never the state file's `reboot_pending` alone: bootpatch clears that only on its next
    /// run, so it still says "pending" after the reboot has happened.
    fn reboot_required(&self) -> anyhow::Result<bool>;
}

/// The transient unit `bootpatch apply` runs as on the host.
pub const UNIT: &str = "bootpatch-apply";
/// The transient unit `bootpatch check` runs as on the host (apt's index refresh then runs in
/// the host's cgroup tree, not under the pod's memory limit).
pub const CHECK_UNIT: &str = "bootpatch-check";
/// Where (on the host) bootpatch leaves its run's record ([`ApplyRecord`]).
pub const REPORT_FILE: &str = "/run/bootpatch/apply-report.json";
/// The run id of a run the agent started and has not read the end of yet (on the host).
pub const STARTED_FILE: &str = "/run/bootpatch/apply-started";

pub use bootpatch::cli::ApplyRecord;

/// The node itself. Host files are read under `root`, the host's / as mounted in the pod
/// (/host); bootpatch's run record and the started-run mark under the host's /run through
/// `/proc/PID/root` ([`RealHost::run_path`]). Host programs run in the host's namespaces through
/// the agent's own `host-exec` mode ([`crate::hostns`]): `bootpatch apply` as the transient
/// systemd unit [`UNIT`] (`systemd-run --wait --collect`), so dpkg runs in the host's cgroup
/// tree, outlives the pod and its memory limit, and maintainer scripts restart services as a
/// host service's would; the reboot as `systemctl reboot`. The agent ships no tools.
#[derive(Debug, Clone)]
pub struct RealHost {
    pub root: PathBuf,
    /// bootpatch's path on the host.
    pub bootpatch: String,
    /// Whose namespaces and root are the host's (1; tests point it at a stand-in host).
    pub target_pid: u32,
    /// The agent binary that has the `host-exec` mode (itself).
    pub entry: PathBuf,
    /// How often to look at a run in progress that this agent did not start.
    pub poll: Duration,
}

impl Default for RealHost {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/host"),
            bootpatch: "/usr/local/sbin/bootpatch".into(),
            target_pid: 1,
            entry: PathBuf::from("/proc/self/exe"),
            poll: Duration::from_secs(5),
        }
    }
}

/// The unit's state as `systemctl show` tells it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub exec_main_status: String,
    /// `BOOTPATCH_RUN_ID` from the unit's environment.
    pub run_id: Option<String>,
}

impl UnitState {
    /// Parses `systemctl show -p ActiveState -p SubState -p Result -p ExecMainStatus -p
    /// Environment` output.
    pub fn parse(text: &str) -> UnitState {
        let mut u = UnitState::default();
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "ActiveState" => u.active_state = v.to_string(),
                "SubState" => u.sub_state = v.to_string(),
                "Result" => u.result = v.to_string(),
                "ExecMainStatus" => u.exec_main_status = v.to_string(),
                "Environment" => {
                    u.run_id = v
                        .split_whitespace()
                        .map(|w| w.trim_matches('"'))
                        .find_map(|w| w.strip_prefix("BOOTPATCH_RUN_ID="))
                        .map(str::to_string)
                }
                _ => {}
            }
        }
        u
    }

    /// Whether a run is in progress (or stopping): then it is waited for, never started twice.
    pub fn running(&self) -> bool {
        matches!(
            self.active_state.as_str(),
            "active" | "activating" | "deactivating" | "reloading" | "refreshing"
        )
    }
}

impl RealHost {
    pub fn new(root: impl Into<PathBuf>, bootpatch: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            bootpatch: bootpatch.into(),
            ..Self::default()
        }
    }

    /// A host path as seen here, under `root`.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// A file under the host's /run as seen here: through `/proc/PID/root`, which walks the
    /// host's own mount tree, so the host's /run tmpfs is there even where the /host bind
    /// is not recursive.
    pub fn run_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.target_pid)).join(path.trim_start_matches('/'))
    }

    /// The host root is mounted and bootpatch is installed there: errors name the path.
    pub fn check_layout(&self) -> anyhow::Result<()> {
        if !self.root.is_dir() {
            anyhow::bail!(
                "the host root {} does not exist: mount the host's / there (hostPath /, as the DaemonSet manifest does) or pass --host-root",
                self.root.display()
            );
        }
        let bp = self.host_path(&self.bootpatch);
        if std::fs::symlink_metadata(&bp).is_err() {
            anyhow::bail!(
                "bootpatch is not installed on the host: {} does not exist (seen here as {}); install it there or pass --bootpatch",
                self.bootpatch,
                bp.display()
            );
        }
        Ok(())
    }

    /// Runs `argv` on the host (its namespaces, root and a clean environment).
    pub async fn host_run(&self, argv: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = tokio::process::Command::new(&self.entry)
            .args(crate::hostns::command_line(self.target_pid, argv))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| {
                format!(
                    "running {} {} on the host",
                    self.entry.display(),
                    argv.join(" ")
                )
            })?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub async fn unit_state(&self) -> anyhow::Result<UnitState> {
        let unit = format!("{UNIT}.service");
        let argv = [
            "systemctl",
            "show",
            unit.as_str(),
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            "-p",
            "Result",
            "-p",
            "ExecMainStatus",
            "-p",
            "Environment",
        ];
        let (code, out, err) = self.host_run(&argv).await?;
        if code != 0 {
            anyhow::bail!(
                "`{}` on the host failed with exit code {code}: {}",
                argv.join(" "),
                err.trim()
            );
        }
        Ok(UnitState::parse(&out))
    }

    fn read_record(&self) -> anyhow::Result<Option<(ApplyRecord, std::time::SystemTime)>> {
        let p = self.run_path(REPORT_FILE);
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let mtime = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        let rec = serde_json::from_str(&text)
            .with_context(|| format!("parsing bootpatch's report file {}", p.display()))?;
        Ok(Some((rec, mtime)))
    }

    fn started_run(&self) -> Option<String> {
        std::fs::read_to_string(self.run_path(STARTED_FILE))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// The end of the run `id` (or, without an id, of a run that ended after `since`).
    fn finish(
        &self,
        id: Option<&str>,
        since: std::time::SystemTime,
        how: &str,
    ) -> anyhow::Result<ApplyReport> {
        let file = self.run_path(REPORT_FILE);
        let rec = match self.read_record()? {
            Some((rec, mtime))
                if id.map_or(mtime >= since, |id| rec.run_id.as_deref() == Some(id)) =>
            {
                rec
            }
            Some((rec, _)) => anyhow::bail!(
                "{how}, but {} is from another run ({:?}, not {:?})",
                file.display(),
                rec.run_id,
                id
            ),
            None => anyhow::bail!("{how}, but bootpatch left no report at {}", file.display()),
        };
        let _ = std::fs::remove_file(self.run_path(STARTED_FILE));
        if rec.exit_code != 0 {
            anyhow::bail!(
                "bootpatch apply (unit {UNIT}) failed with exit code {} ({}): {}",
                rec.exit_code,
                rec.exit_label,
                rec.error.as_ref().map_or("", |e| e.message.as_str())
            );
        }
        rec.report
            .with_context(|| format!("{how}, but {} holds no report", file.display()))
    }

    async fn apply_now(&self) -> anyhow::Result<ApplyReport> {
        self.check_layout()?;
        let unit = self.unit_state().await?;
        if unit.running() {
            // A run started by an agent that is gone (pod deleted, evicted, OOM-killed,
            // SIGTERM): wait for it rather than start a second one.
            let id = unit.run_id.clone().or_else(|| self.started_run());
            tracing::info!(unit = UNIT, run_id = ?id, "reattaching to the bootpatch run in progress on the host");
            let since = std::time::SystemTime::now();
            loop {
                tokio::time::sleep(self.poll).await;
                let u = self.unit_state().await?;
                if !u.running() {
                    break;
                }
            }
            return self.finish(id.as_deref(), since, "the run in progress ended");
        }
        if let Some(id) = self.started_run() {
            if let Ok(Some((rec, _))) = self.read_record() {
                if rec.run_id.as_deref() == Some(id.as_str()) {
                    tracing::info!(unit = UNIT, run_id = %id, "the run started by an earlier agent ended meanwhile; reading its report");
                    return self.finish(Some(&id), std::time::UNIX_EPOCH, "an earlier run ended");
                }
            }
            // Started, not running, no record: it died with the host (/run is gone on a
            // reboot anyway) or before bootpatch could write. A new run repairs (bootpatch
            // finishes an interrupted dpkg run first); the state file keeps the history.
            tracing::warn!(unit = UNIT, run_id = %id, "an earlier run left no report; starting a new one");
        }
        let id = format!(
            "{}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            std::process::id()
        );
        let started = self.run_path(STARTED_FILE);
        bootpatch::state::write_atomic(&started, id.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", started.display()))?;
        let env = format!("--setenv=BOOTPATCH_RUN_ID={id}");
        let argv = [
            "systemd-run",
            "--unit",
            UNIT,
            "--wait",
            "--collect",
            "--quiet",
            "--service-type=exec",
            "-p",
            "Description=bootpatch apply, started by the bootpatch-updater agent",
            env.as_str(),
            "--",
            self.bootpatch.as_str(),
            "apply",
            "--json",
            "--no-reboot",
            "--report-file",
            REPORT_FILE,
        ];
        let (code, _out, err) = self.host_run(&argv).await?;
        let how = format!("systemd-run exited with {code} ({})", err.trim());
        self.finish(Some(&id), std::time::UNIX_EPOCH, &how)
    }
}

impl HostActions for RealHost {
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>> {
        Box::pin(self.apply_now())
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<Check>> {
        Box::pin(async move {
            self.check_layout()?;
            let argv = [
                "systemd-run",
                "--unit",
                CHECK_UNIT,
                "--wait",
                "--pipe",
                "--collect",
                "--quiet",
                "--service-type=exec",
                "-p",
                "Description=bootpatch check, started by the bootpatch-updater agent",
                "--",
                self.bootpatch.as_str(),
                "check",
            ];
            // `systemd-run --wait` exits with the unit's own exit code; `--pipe` hands back what
            // bootpatch printed (its error, on failure).
            let (code, _out, err) = self.host_run(&argv).await?;
            Ok(Check::from_exit(code, &err))
        })
    }

    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // The host's systemd does the reboot.
            let (code, _, stderr) = self.host_run(&["systemctl", "reboot"]).await?;
            if code != 0 {
                anyhow::bail!(
                    "`systemctl reboot` on the host failed with exit code {code}: {}",
                    stderr.trim()
                );
            }
            Ok(())
        })
    }

    fn boot_id(&self) -> anyhow::Result<String> {
        let p = self.root.join("proc/sys/kernel/random/boot_id");
        let p = if p.exists() {
            p
        } else {
            PathBuf::from("/proc/sys/kernel/random/boot_id")
        };
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("reading {}", p.display()))?
            .trim()
            .to_string())
    }

    fn state(&self) -> anyhow::Result<Option<bootpatch::state::State>> {
        read_state_file(&self.root.join("var/lib/bootpatch/state.json"))
    }

    fn reboot_required(&self) -> anyhow::Result<bool> {
        // bootpatch's own function, on the host's files as seen from here.
        let paths = bootpatch::engine::Paths {
            state: self.root.join("var/lib/bootpatch/state.json"),
            run: self.run_path("/run"),
            ..bootpatch::engine::Paths::default()
        };
        Ok(bootpatch::engine::status(&paths)
            .map_err(|e| anyhow::anyhow!("bootpatch status on the host: {e}"))?
            .reboot_required)
    }
}

/// Reads bootpatch's state file without touching it (bootpatch owns it: a file that does
/// not parse is reported, never moved aside from here).
pub fn read_state_file(path: &std::path::Path) -> anyhow::Result<Option<bootpatch::state::State>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let state: bootpatch::state::State =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if state.schema_version > bootpatch::state::SCHEMA_VERSION {
        anyhow::bail!(
            "{}: schema version {} is newer than this updater understands",
            path.display(),
            state.schema_version
        );
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bootpatch_report() {
        let out = r#"{"result":"patched","os":{"family":"debian","id":"debian","stream":"12","patched_version":"12.10","name":"Debian GNU/Linux 12 (bookworm)"},"patched_version_before":"12.10","patched_version_after":"12.11","packages":[{"name":"base-files","from":"12.4+deb12u10","to":"12.4+deb12u11"}],"kept_back":[],"reboot_required":true,"reboot_packages":["linux-image-amd64"],"rebooted":false,"reboot_pending_reason":"--no-reboot given"}"#;
        let r = parse_apply_report(out).unwrap();
        assert_eq!(r.result, "patched");
        assert_eq!(r.patched_version_after, "12.11");
        // A renamed field is an error, not a silent default.
        let renamed = out.replace("\"reboot_required\"", "\"needs_reboot\"");
        assert!(parse_apply_report(&renamed).is_err());
        assert_eq!(exit_code_label(5), "mirror-unreachable");
        assert!(r.reboot_required && !r.rebooted);
        assert_eq!(r.reboot_packages, ["linux-image-amd64"]);
        assert!(parse_apply_report("not json").is_err());
        // As bootpatch prints it: pretty, over many lines, maybe after other output.
        let pretty = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(parse_apply_report(&pretty).unwrap(), r);
        assert_eq!(
            parse_apply_report(&format!(
                "Running as unit: bootpatch-apply.service\n{pretty}\n"
            ))
            .unwrap(),
            r
        );
    }

    #[test]
    fn reads_the_units_state() {
        let u = UnitState::parse(
            "ActiveState=active\nSubState=running\nResult=success\nExecMainStatus=0\nEnvironment=LANG=C.UTF-8 BOOTPATCH_RUN_ID=17-4\n",
        );
        assert!(u.running());
        assert_eq!(u.run_id.as_deref(), Some("17-4"));
        assert_eq!(
            (u.sub_state.as_str(), u.result.as_str()),
            ("running", "success")
        );
        // A unit systemd does not know (collected after its run) shows as inactive.
        let gone = UnitState::parse(
            "ActiveState=inactive\nSubState=dead\nResult=success\nExecMainStatus=0\nEnvironment=\n",
        );
        assert!(!gone.running());
        assert_eq!(gone.run_id, None);
    }

    #[test]
    fn a_missing_host_root_or_bootpatch_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("host");
        let e = RealHost::new(&missing, "/usr/local/sbin/bootpatch")
            .check_layout()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "the host root {} does not exist",
                missing.display()
            )),
            "{e}"
        );
        let e = RealHost::new(dir.path(), "/usr/local/sbin/bootpatch")
            .check_layout()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "bootpatch is not installed on the host: /usr/local/sbin/bootpatch does not exist"
            ),
            "{e}"
        );
        std::fs::create_dir_all(dir.path().join("usr/local/sbin")).unwrap();
        std::fs::write(dir.path().join("usr/local/sbin/bootpatch"), "").unwrap();
        RealHost::new(dir.path(), "/usr/local/sbin/bootpatch")
            .check_layout()
            .unwrap();
    }

    #[test]
    fn bootpatch_checks_exit_code_says_what_is_pending() {
        assert_eq!(Check::from_exit(0, ""), Check::UpToDate);
        assert_eq!(Check::from_exit(100, ""), Check::Pending);
        let unreachable = Check::from_exit(5, "E: Failed to fetch InRelease\n");
        match &unreachable {
            Check::Failed {
                exit_code: 5,
                message,
            } => assert!(
                message.contains("exit code 5 (mirror-unreachable)")
                    && message.ends_with("Failed to fetch InRelease"),
                "{message}"
            ),
            other => panic!("{other:?}"),
        }
        assert!(unreachable.fails_the_apply_too());
        assert!(!Check::from_exit(4, "lock").fails_the_apply_too());
        assert!(!Check::Pending.fails_the_apply_too());
    }

    #[test]
    fn reads_the_documented_state_example() {
        let doc = include_str!("../../docs/state-schema.md");
        let start = doc.find("```json").unwrap() + 7;
        let end = start + doc[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, &doc[start..end]).unwrap();
        let s = read_state_file(&p).unwrap().unwrap();
        assert_eq!(s.patched_version.as_deref(), Some("12.11"));
        assert!(read_state_file(&dir.path().join("missing"))
            .unwrap()
            .is_none());
        std::fs::write(&p, "{").unwrap();
        assert!(read_state_file(&p).is_err());
        assert!(p.exists(), "never moved aside by the updater");
    }
}
