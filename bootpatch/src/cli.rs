//! Command-line parsing and output for the `bootpatch` binary. Argument
//! shapes and the text people read live here; the work is in [`crate::engine`].

use crate::config::{Config, DEFAULT_PATH};
use crate::engine::{self, ApplyReport, CheckReport, Paths, RebootPolicy, StatusReport};
use crate::error::{exit, Error, Result};
use crate::log;
use std::path::{Path, PathBuf};

pub const HELP: &str = "\
bootpatch: patch this node to the latest patch release of its OS stream

Usage:
  bootpatch apply [--config FILE] [--reboot-if-required | --no-reboot] [--dry-run] [--json]
                [--report-file PATH]
      Upgrade every package within the pinned stream, then reboot if a
      package requires it and rebooting is allowed (rebootIfRequired in the
      config, or the flags). --dry-run shows the plan and changes nothing.
      --report-file also writes the run's record (run id from
      $BOOTPATCH_RUN_ID or systemd's $INVOCATION_ID, exit code, the report or
      the error) to PATH, atomically, so a caller that was not there when
      the run ended can still read how it ended.
  bootpatch check [--config FILE] [--json]
      Show what would change (package, installed, candidate) and the
      Patched Version it would lead to.
  bootpatch status [--json]
      Last Applied Patch Time, Patched Version, pending reboot (and for
      which packages), and the last run's result and error.
  bootpatch firstboot [--config FILE]
      Entry point of bootpatch-firstboot.service: patch once on first boot,
      or record a skipped run when patchOnBoot is false.

Options:
  --config FILE   config file (default /etc/bootpatch/config.yaml; missing = defaults)
  -v, --verbose   more detail; -q, --quiet: warnings and errors only
  -h, --help      this help;  -V, --version

Exit codes:
    0  success; `check`: the node is up to date
    1  internal error (a file or command that could not be used)
    2  bad command line
    3  invalid config (the message names the key and the value)
    4  the dpkg/apt lock stayed held past lockWaitTimeout
    5  package sources unreachable until retryDeadline
    6  signature or checksum verification failed (nothing installed)
    7  a package manager command failed
    8  unsupported OS, or the run would leave the pinned stream
    9  the state file could not be read or written
  100  `check`: patches are available
";

#[derive(Debug, Default)]
struct Args {
    command: String,
    config: Option<PathBuf>,
    reboot: Option<bool>,
    dry_run: bool,
    json: bool,
    report_file: Option<PathBuf>,
    verbosity: u8,
}

fn parse(argv: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Option<Args>> {
    use lexopt::prelude::*;
    let usage = |e: lexopt::Error| Error::Usage(format!("{e} (see bootpatch --help)"));
    let mut p = lexopt::Parser::from_args(argv);
    let mut a = Args {
        verbosity: 1,
        ..Args::default()
    };
    while let Some(arg) = p.next().map_err(usage)? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Short('V') | Long("version") => {
                println!("bootpatch {}", env!("CARGO_PKG_VERSION"));
                return Ok(Some(Args {
                    command: "version".into(),
                    ..a
                }));
            }
            Short('v') | Long("verbose") => a.verbosity = 2,
            Short('q') | Long("quiet") => a.verbosity = 0,
            Long("config") => a.config = Some(p.value().map_err(usage)?.into()),
            Long("reboot-if-required") if a.reboot == Some(false) => {
                return Err(Error::Usage(
                    "--reboot-if-required and --no-reboot exclude each other".into(),
                ))
            }
            Long("no-reboot") if a.reboot == Some(true) => {
                return Err(Error::Usage(
                    "--reboot-if-required and --no-reboot exclude each other".into(),
                ))
            }
            Long("reboot-if-required") => a.reboot = Some(true),
            Long("no-reboot") => a.reboot = Some(false),
            Long("dry-run") => a.dry_run = true,
            Long("json") => a.json = true,
            Long("report-file") => a.report_file = Some(p.value().map_err(usage)?.into()),
            Value(v) if a.command.is_empty() => a.command = v.string().map_err(usage)?,
            other => return Err(usage(other.unexpected())),
        }
    }
    let allowed: &[&str] = match a.command.as_str() {
        "apply" => &["config", "reboot", "dry-run", "json", "report-file"],
        "check" => &["config", "json"],
        "status" => &["json"],
        "firstboot" => &["config"],
        "" => {
            return Err(Error::Usage(
                "a command is needed: apply, check, status or firstboot (see bootpatch --help)"
                    .into(),
            ))
        }
        c => {
            return Err(Error::Usage(format!(
                "unknown command {c:?} (see bootpatch --help)"
            )))
        }
    };
    for (name, given) in [
        ("config", a.config.is_some()),
        ("reboot", a.reboot.is_some()),
        ("dry-run", a.dry_run),
        ("json", a.json),
        ("report-file", a.report_file.is_some()),
    ] {
        if given && !allowed.contains(&name) {
            return Err(Error::Usage(format!(
                "`bootpatch {}` takes no --{name} option",
                a.command
            )));
        }
    }
    Ok(Some(a))
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new(DEFAULT_PATH).exists() => Ok(Config::load(Path::new(DEFAULT_PATH))?),
        None => Ok(Config::default()),
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("report serializes")
    );
}

fn changes_table(pkgs: &[crate::state::PackageChange]) -> String {
    let w = pkgs.iter().map(|p| p.name.len()).max().unwrap_or(7).max(7);
    let v = pkgs
        .iter()
        .map(|p| p.from.as_deref().unwrap_or("(new)").len())
        .max()
        .unwrap_or(9)
        .max(9);
    let mut s = format!("{:w$}  {:v$}  CANDIDATE\n", "PACKAGE", "INSTALLED");
    for p in pkgs {
        s += &format!(
            "{:w$}  {:v$}  {}\n",
            p.name,
            p.from.as_deref().unwrap_or("(new)"),
            p.to
        );
    }
    s
}

fn print_apply(r: &ApplyReport) {
    match r.result.as_str() {
        "up-to-date" => println!("up to date: Patched Version {}", r.patched_version_after),
        "dry-run" => {
            print!("{}", changes_table(&r.packages));
            println!(
                "dry run: {} package(s) would change; Patched Version {} -> {}",
                r.packages.len(),
                r.patched_version_before,
                r.patched_version_after
            );
        }
        _ => {
            print!("{}", changes_table(&r.packages));
            println!(
                "patched: {} package(s); Patched Version {} -> {}",
                r.packages.len(),
                r.patched_version_before,
                r.patched_version_after
            );
        }
    }
    if !r.kept_back.is_empty() {
        println!(
            "kept back (need a removal or are held): {}",
            r.kept_back.join(" ")
        );
    }
    if r.reboot_required {
        let who = r.reboot_packages.join(", ");
        match (&r.reboot_pending_reason, r.rebooted) {
            (_, true) => println!("reboot required by {who}: rebooting"),
            (Some(why), _) => println!("reboot required by {who}: pending ({why})"),
            (None, _) => println!("reboot required by {who}"),
        }
    }
}

fn print_check(r: &CheckReport) {
    if r.packages.is_empty() {
        println!("up to date: Patched Version {}", r.patched_version);
        return;
    }
    print!("{}", changes_table(&r.packages));
    println!(
        "{} package(s) can be patched; Patched Version {} -> {}",
        r.packages.len(),
        r.patched_version,
        r.patched_version_after
    );
    if !r.kept_back.is_empty() {
        println!("kept back: {}", r.kept_back.join(" "));
    }
}

fn print_status(s: &StatusReport) {
    let or_never = |v: &Option<String>| v.clone().unwrap_or_else(|| "never".into());
    println!(
        "Last Applied Patch Time: {}",
        or_never(&s.last_applied_patch_time)
    );
    println!(
        "Patched Version:         {}",
        s.patched_version
            .clone()
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(k) = &s.kernel {
        println!("Kernel:                  {k}");
    }
    if s.reboot_required {
        let why = s
            .reboot_pending_reason
            .as_deref()
            .map(|w| format!(": {w}"))
            .unwrap_or_default();
        println!(
            "Reboot required:         yes, by {}{why}",
            s.reboot_packages.join(", ")
        );
    } else {
        println!("Reboot required:         no");
    }
    if let Some(f) = &s.first_boot {
        let err = f
            .error
            .as_ref()
            .map(|e| format!(" ({}: {})", e.kind, e.message))
            .unwrap_or_default();
        println!("First boot:              {} at {}{err}", f.result, f.at);
    }
    match &s.last_run {
        Some(r) => {
            let err = r
                .error
                .as_ref()
                .map(|e| format!(" ({}: {})", e.kind, e.message))
                .unwrap_or_default();
            println!(
                "Last run:                {} {} at {}{err}",
                r.command, r.result, r.finished_at
            );
        }
        None => println!("Last run:                none"),
    }
}

/// Runs the command line and returns the exit code.
pub fn main_with(argv: impl IntoIterator<Item = std::ffi::OsString>, paths: &Paths) -> i32 {
    let args = match parse(argv) {
        Ok(Some(a)) if a.command == "version" => return exit::OK,
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{HELP}");
            return exit::OK;
        }
        Err(e) => {
            eprintln!("bootpatch: {e}");
            return e.exit_code();
        }
    };
    log::init(args.verbosity);
    let mut report = None;
    let result = dispatch(&args, paths, &mut report);
    log::debug(&self_usage());
    let code = match &result {
        Ok(code) => *code,
        Err(e) => {
            log::error(&e.to_string());
            if args.json {
                print_json(
                    &serde_json::json!({"result": "failed", "error": {"kind": e.kind(), "message": e.to_string()}}),
                );
            }
            e.exit_code()
        }
    };
    if let Some(path) = &args.report_file {
        let record = ApplyRecord {
            run_id: ApplyRecord::run_id_from_env(),
            finished_at: crate::time::rfc3339(crate::time::now_unix()),
            exit_code: code,
            exit_label: exit::label(code).to_string(),
            report,
            error: result.as_ref().err().map(|e| RecordError {
                kind: e.kind().to_string(),
                message: e.to_string(),
            }),
        };
        if let Err(e) = record.write(path) {
            log::error(&format!("writing the report file {}: {e}", path.display()));
            if code == exit::OK {
                return exit::INTERNAL;
            }
        }
    }
    code
}

/// What `apply --report-file PATH` leaves at PATH: how the run ended, for a caller that may
/// not have been there to see it (the updater agent, whose pod can die while the run goes
/// on as a systemd unit). Written atomically (temporary file + rename), after the run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyRecord {
    /// `$BOOTPATCH_RUN_ID`, else systemd's `$INVOCATION_ID`: tells this run's record from an
    /// earlier run's.
    pub run_id: Option<String>,
    pub finished_at: String,
    pub exit_code: i32,
    /// [`exit::label`] of `exit_code`.
    pub exit_label: String,
    /// The report `--json` prints, when the run got that far.
    pub report: Option<ApplyReport>,
    pub error: Option<RecordError>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordError {
    pub kind: String,
    pub message: String,
}

impl ApplyRecord {
    pub fn run_id_from_env() -> Option<String> {
        ["BOOTPATCH_RUN_ID", "INVOCATION_ID"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("record serializes") + "\n";
        crate::state::write_atomic(path, text.as_bytes(), 0o644)
    }
}

/// bootpatch's own CPU time and peak memory so far, children excluded:
/// `/proc/self/schedstat` (nanoseconds on a CPU) and `VmHWM`. Shown with
/// `-v`; the benchmark reads it.
pub fn self_usage() -> String {
    let cpu_ns = std::fs::read_to_string("/proc/self/schedstat")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
        });
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").trim().to_string())
            })
        });
    format!(
        "self usage: cpu_us={} peak_rss_kib={}",
        cpu_ns
            .map(|n| (n / 1000).to_string())
            .unwrap_or_else(|| "?".into()),
        hwm.unwrap_or_else(|| "?".into())
    )
}

fn dispatch(a: &Args, paths: &Paths, report: &mut Option<ApplyReport>) -> Result<i32> {
    match a.command.as_str() {
        "apply" => {
            let cfg = load_config(a.config.as_deref())?;
            let policy = match a.reboot {
                Some(true) => RebootPolicy::Allowed,
                Some(false) => RebootPolicy::Denied("--no-reboot given".into()),
                None => RebootPolicy::from_config(&cfg),
            };
            let r = engine::apply(paths, &cfg, &policy, a.dry_run, "apply")?;
            if a.json {
                print_json(&r)
            } else {
                print_apply(&r)
            }
            *report = Some(r);
            Ok(exit::OK)
        }
        "check" => {
            let cfg = load_config(a.config.as_deref())?;
            let r = engine::check(paths, &cfg)?;
            if a.json {
                print_json(&r)
            } else {
                print_check(&r)
            }
            Ok(if r.packages.is_empty() {
                exit::OK
            } else {
                exit::PATCHES_AVAILABLE
            })
        }
        "status" => {
            let s = engine::status(paths)?;
            if a.json {
                print_json(&s)
            } else {
                print_status(&s)
            }
            Ok(exit::OK)
        }
        "firstboot" => engine::firstboot(
            paths,
            a.config.as_deref().unwrap_or(Path::new(DEFAULT_PATH)),
        ),
        _ => unreachable!("parse() only returns known commands"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Option<Args>> {
        parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn parses_commands() {
        let a = p(&[
            "apply",
            "--config",
            "/x.yaml",
            "--no-reboot",
            "--dry-run",
            "--json",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (a.command.as_str(), a.reboot, a.dry_run, a.json),
            ("apply", Some(false), true, true)
        );
        assert_eq!(a.config.as_deref(), Some(Path::new("/x.yaml")));
        assert!(p(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn refuses_bad_command_lines() {
        for bad in [
            &["apply", "--no-reboot", "--reboot-if-required"][..],
            &["status", "--dry-run"],
            &["frobnicate"],
            &[],
            &["check", "--bogus"],
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.exit_code(), exit::USAGE, "{bad:?}: {e}");
        }
    }

    #[test]
    fn report_file_records_how_the_run_ended() {
        assert_eq!(
            p(&["apply", "--report-file", "/r.json"])
                .unwrap()
                .unwrap()
                .report_file
                .as_deref(),
            Some(Path::new("/r.json"))
        );
        assert_eq!(
            p(&["check", "--report-file", "/r.json"])
                .unwrap_err()
                .exit_code(),
            exit::USAGE
        );
        // A run that fails before any package is touched (its config is missing) still leaves
        // a record: exit code, label, error, no report; written whole, no temporary left.
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("run/apply-report.json");
        std::fs::create_dir_all(report.parent().unwrap()).unwrap();
        std::fs::write(&report, "stale").unwrap();
        let missing = dir.path().join("missing.yaml");
        let argv = [
            "apply".as_ref(),
            "--no-reboot".as_ref(),
            "--config".as_ref(),
            missing.as_os_str(),
            "--report-file".as_ref(),
            report.as_os_str(),
        ];
        let code = main_with(argv.iter().map(std::ffi::OsString::from), &Paths::default());
        assert_eq!(code, exit::CONFIG);
        let rec: ApplyRecord =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(rec.exit_code, exit::CONFIG);
        assert_eq!(rec.exit_label, exit::label(exit::CONFIG));
        assert!(rec.report.is_none());
        let err = rec.error.unwrap();
        assert_eq!(err.kind, "config");
        assert!(err.message.contains("missing.yaml"), "{}", err.message);
        assert_eq!(
            std::fs::read_dir(report.parent().unwrap()).unwrap().count(),
            1
        );
        // A renamed field is an error, not a default.
        let text = std::fs::read_to_string(&report).unwrap();
        assert!(serde_json::from_str::<ApplyRecord>(&text.replace("exit_code", "code")).is_err());
    }

    #[test]
    fn help_lists_every_exit_code() {
        for code in [
            exit::OK,
            exit::INTERNAL,
            exit::USAGE,
            exit::CONFIG,
            exit::LOCK_TIMEOUT,
            exit::MIRROR_UNREACHABLE,
            exit::VERIFICATION,
            exit::PACKAGE,
            exit::UNSUPPORTED,
            exit::STATE,
            exit::PATCHES_AVAILABLE,
        ] {
            assert!(
                HELP.contains(&format!("{code:>5}  ")),
                "exit code {code} missing from --help"
            );
        }
    }
}
