//! The dnf backend for the RHEL family (RHEL, Rocky, Alma, CentOS Stream).
//! No RHEL root can run on the build machines, so the command lines and the
//! parsing of dnf's output are what is tested, on saved output
//! (tests/fixtures/dnf/). dnf stays within the installed release's major
//! version by itself; bootpatch never passes `--releasever`.

use crate::backend::{Backend, Failure, Plan};
use crate::cmd;
use crate::error::{Error, Result};
use crate::state::PackageChange;
use std::collections::BTreeMap;
use std::process::Command;

pub struct Dnf;

fn dnf(args: &[&str]) -> Command {
    let mut c = Command::new("dnf");
    c.env("LC_ALL", "C");
    // gpgcheck forced on whatever a .repo file says.
    c.args(["-y", "--setopt=gpgcheck=1", "--setopt=localpkg_gpgcheck=1"]);
    c.args(args);
    c
}

/// The command lines, by step, as they are run (tests compare these).
pub fn command_line(step: &str) -> String {
    cmd::display(&match step {
        "refresh" => dnf(&["makecache", "--refresh"]),
        "plan" => dnf(&["-q", "check-update"]),
        "download" => dnf(&["upgrade", "--downloadonly"]),
        "install" => dnf(&["upgrade", "--cacheonly"]),
        "reboot" => needs_restarting(),
        other => panic!("no dnf step {other}"),
    })
}

fn needs_restarting() -> Command {
    let mut c = Command::new("dnf");
    c.env("LC_ALL", "C").args(["needs-restarting", "-r"]);
    c
}

/// Parses `dnf check-update`: `name.arch  [epoch:]version-release  repo`
/// rows (a long name wraps onto its own line), stopping at "Obsoleting
/// Packages". Installed versions are not in this output; `from` stays None
/// unless `installed` knows them.
pub fn parse_check_update(text: &str, installed: &BTreeMap<String, String>) -> Plan {
    let mut plan = Plan::default();
    let mut pending: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.starts_with("Obsoleting Packages") || line.starts_with("Security:") {
            break;
        }
        if line.starts_with("Last metadata expiration check") || line.trim().is_empty() {
            pending.clear();
            continue;
        }
        pending.extend(line.split_whitespace());
        if pending.len() < 3 {
            continue;
        }
        let (name_arch, version) = (pending[0], pending[1]);
        let name = name_arch.rsplit_once('.').map_or(name_arch, |(n, _)| n);
        plan.changes.push(PackageChange {
            name: name.to_string(),
            from: installed.get(name).cloned(),
            to: version.to_string(),
        });
        pending.clear();
    }
    plan
}

/// Parses `dnf needs-restarting -r`: exit 1 means a reboot is needed and the
/// `  * name` lines say for which packages.
pub fn parse_needs_restarting(
    code: Option<i32>,
    text: &str,
) -> Result<Option<Vec<String>>, String> {
    match code {
        Some(0) => Ok(None),
        Some(1) => Ok(Some(
            text.lines()
                .filter_map(|l| l.trim_start().strip_prefix("* "))
                .map(|s| s.trim().to_string())
                .collect(),
        )),
        other => Err(format!(
            "dnf needs-restarting -r ended with {other:?}: {}",
            cmd::tail(text, 3)
        )),
    }
}

/// Sorts dnf's failure output into unreachable (retry) and the rest.
pub fn classify(output: &str) -> Result<(), Failure> {
    let detail = || cmd::tail(output, 4);
    const VERIFY: [&str; 5] = [
        "GPG check FAILED",
        "is not installed. Failing package",
        "signature could not be verified",
        "Bad GPG signature",
        "Checksum doesn't match",
    ];
    const UNREACHABLE: [&str; 5] = [
        "Curl error",
        "Cannot download repomd.xml",
        "Failed to download metadata",
        "All mirrors were tried",
        "Could not resolve host",
    ];
    crate::backend::classify_by(output, &VERIFY, &UNREACHABLE, detail)
}

fn run_step(step: &str, c: Command) -> Result<cmd::Output, Failure> {
    crate::backend::run_classified(step, c, classify)
}

impl Backend for Dnf {
    fn repair(&mut self) -> Result<Option<String>, Failure> {
        // dnf has no half-configured state to finish; an interrupted
        // transaction is rolled back by rpm. Nothing to do.
        Ok(None)
    }

    fn refresh(&mut self) -> Result<(), Failure> {
        run_step(
            "refreshing package metadata",
            dnf(&["makecache", "--refresh"]),
        )
        .map(drop)
    }

    fn plan(&mut self) -> Result<Plan> {
        let mut c = dnf(&["-q", "check-update"]);
        let out = cmd::run(&mut c)?;
        // 100 = updates available, 0 = none; anything else is a failure.
        match out.code {
            Some(0) => Ok(Plan::default()),
            Some(100) => {
                let q = cmd::run(Command::new("rpm").args([
                    "-qa",
                    "--qf",
                    "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n",
                ]))?;
                let installed = q
                    .stdout
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(n, v)| (n.to_string(), v.trim_start_matches("0:").to_string()))
                    .collect();
                Ok(parse_check_update(&out.stdout, &installed))
            }
            _ => Err(Error::Package {
                step: "planning the upgrade".into(),
                command: cmd::display(&c),
                detail: cmd::tail(&out.combined(), 15),
            }),
        }
    }

    fn download(&mut self) -> Result<(), Failure> {
        run_step("downloading packages", dnf(&["upgrade", "--downloadonly"])).map(drop)
    }

    fn install(&mut self) -> Result<()> {
        match run_step("installing the upgrade", dnf(&["upgrade", "--cacheonly"])) {
            Ok(_) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Unreachable(d)) => Err(Error::MirrorUnreachable {
                detail: d,
                waited_secs: 0,
            }),
        }
    }

    fn reboot_required(&mut self) -> Result<Option<Vec<String>>> {
        let mut c = needs_restarting();
        let out = cmd::run(&mut c)?;
        parse_needs_restarting(out.code, &out.stdout).map_err(|d| Error::Package {
            step: "checking whether a reboot is required".into(),
            command: cmd::display(&c),
            detail: d,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_check_update() {
        let text = include_str!("../tests/fixtures/dnf/check-update-available.txt");
        let installed =
            BTreeMap::from([("kernel".to_string(), "5.14.0-427.13.1.el9_4".to_string())]);
        let plan = parse_check_update(text, &installed);
        let names: Vec<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "NetworkManager",
                "kernel",
                "kernel-core",
                "openssl-libs",
                "python3-dnf-plugin-versionlock-and-a-very-long-name",
                "rocky-release"
            ]
        );
        assert_eq!(
            plan.changes[1].from.as_deref(),
            Some("5.14.0-427.13.1.el9_4")
        );
        assert_eq!(plan.changes[1].to, "5.14.0-427.42.1.el9_4");
        assert_eq!(plan.changes[4].to, "4.3.0-16.el9");
        let none = parse_check_update(
            include_str!("../tests/fixtures/dnf/check-update-none.txt"),
            &installed,
        );
        assert!(none.changes.is_empty());
    }

    #[test]
    fn parses_needs_restarting() {
        let yes = include_str!("../tests/fixtures/dnf/needs-restarting-reboot.txt");
        assert_eq!(
            parse_needs_restarting(Some(1), yes).unwrap().unwrap(),
            ["kernel", "openssl-libs", "systemd"]
        );
        let no = include_str!("../tests/fixtures/dnf/needs-restarting-none.txt");
        assert_eq!(parse_needs_restarting(Some(0), no).unwrap(), None);
        assert!(parse_needs_restarting(Some(2), "No such command: needs-restarting").is_err());
    }

    #[test]
    fn classifies_failures() {
        let gpg = include_str!("../tests/fixtures/dnf/upgrade-gpg-failure.txt");
        assert!(matches!(
            classify(gpg),
            Err(Failure::Fatal(Error::Verification { .. }))
        ));
        let net = include_str!("../tests/fixtures/dnf/upgrade-unreachable.txt");
        assert!(matches!(classify(net), Err(Failure::Unreachable(_))));
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            command_line("plan"),
            "dnf -y --setopt=gpgcheck=1 --setopt=localpkg_gpgcheck=1 -q check-update"
        );
        assert_eq!(
            command_line("install"),
            "dnf -y --setopt=gpgcheck=1 --setopt=localpkg_gpgcheck=1 upgrade --cacheonly"
        );
        assert_eq!(command_line("reboot"), "dnf needs-restarting -r");
    }
}
