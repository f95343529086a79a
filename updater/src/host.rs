//! What the agent does on its host, behind one trait: run `bootpatch apply`, reboot, read the
//! boot id and bootpatch's state file. [`RealHost`] does it on the node (host root at /host,
//! via chroot); simulations implement the trait with set durations. The agent never runs apt
//! itself.

use anyhow::Context as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

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

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Host actions. Implementations must be idempotent enough to be repeated after a crash.
pub trait HostActions: Send + Sync {
    /// Runs `bootpatch apply` without letting it reboot (the agent reboots, after recording).
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>>;
    /// Asks the host to reboot. May return before the reboot happens.
    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>>;
    /// This boot's id (changes with every boot).
    fn boot_id(&self) -> anyhow::Result<String>;
    /// bootpatch's state file, if there is one.
    fn state(&self) -> anyhow::Result<Option<bootpatch::state::State>>;
}

/// The node itself: host root mounted at `root` (/host).
#[derive(Debug, Clone)]
pub struct RealHost {
    pub root: PathBuf,
    pub bootpatch: String,
}

impl Default for RealHost {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/host"),
            bootpatch: "/usr/local/sbin/bootpatch".into(),
        }
    }
}

async fn run_cmd(program: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {program} {}", args.join(" ")))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

impl HostActions for RealHost {
    fn apply(&self) -> BoxFuture<'_, anyhow::Result<ApplyReport>> {
        Box::pin(async move {
            let root = self.root.display().to_string();
            let args = [
                root.as_str(),
                self.bootpatch.as_str(),
                "apply",
                "--json",
                "--no-reboot",
            ];
            let (code, stdout, stderr) = run_cmd("chroot", &args).await?;
            if code != 0 {
                anyhow::bail!(
                    "chroot {} failed with exit code {code} ({}): {}",
                    args.join(" "),
                    exit_code_label(code),
                    stderr.trim()
                );
            }
            parse_apply_report(&stdout)
        })
    }

    fn reboot(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // Into PID 1's namespaces so systemd on the host does the reboot.
            let args = [
                "-t",
                "1",
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
                "systemctl",
                "reboot",
            ];
            let (code, _, stderr) = run_cmd("nsenter", &args).await?;
            if code != 0 {
                anyhow::bail!(
                    "nsenter {} failed with exit code {code}: {}",
                    args.join(" "),
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
