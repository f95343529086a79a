//! The apt backend for Debian and Ubuntu: real apt-get and dpkg, driven
//! non-interactively. Signature checks stay on whatever local apt config
//! says; local config files are kept (a conffile prompt must never hang a
//! node); the dpkg lock held by apt-daily or unattended-upgrades is waited
//! for; an interrupted dpkg is repaired before patching. The upgrade is
//! `upgrade --with-new-pkgs`: new dependencies (a new kernel ABI) come in,
//! nothing is removed, and the suites in the sources are never rewritten.

use crate::backend::{Backend, Failure, Plan};
use crate::cmd;
use crate::config::{Config, SourcesMode};
use crate::error::{Error, Result};
use crate::lock;
use crate::state::PackageChange;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Apt {
    /// `-o` options every apt-get call gets.
    options: Vec<String>,
    lock_timeout: Duration,
    /// Where `reboot-required` lives (`/run`).
    run_dir: PathBuf,
    /// apt's package lists (`Dir::State::Lists`).
    lists_dir: PathBuf,
    log: fn(&str),
}

/// Environment that keeps every tool in the apt chain from asking questions.
const QUIET_ENV: [(&str, &str); 8] = [
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
    ("APT_LISTCHANGES_FRONTEND", "none"),
    ("APT_LISTBUGS_FRONTEND", "none"),
    ("UCF_FORCE_CONFFOLD", "1"),
    ("NEEDRESTART_SUSPEND", "1"),
    ("LC_ALL", "C"),
    ("LANGUAGE", ""),
];

impl Apt {
    /// Sets apt up for a run: writes the configured extra sources and their
    /// keys under `work_dir` (never into /etc/apt) and points apt at them.
    pub fn new(config: &Config, work_dir: &Path, run_dir: &Path, log: fn(&str)) -> Result<Apt> {
        let mut options = vec![
            "Dpkg::Options::=--force-confdef".to_string(),
            "Dpkg::Options::=--force-confold".into(),
            "Dpkg::Use-Pty=0".into(),
            // Whatever a local apt.conf says, nothing unsigned gets in.
            "APT::Get::AllowUnauthenticated=false".into(),
            "Acquire::AllowInsecureRepositories=false".into(),
            "Acquire::AllowDowngradeToInsecureRepositories=false".into(),
            "APT::Get::Upgrade-Allow-New=true".into(),
            format!("DPkg::Lock::Timeout={}", config.lock_wait_timeout.as_secs()),
        ];
        if !config.sources.is_empty() || config.sources_mode == SourcesMode::Only {
            options.extend(write_sources(config, work_dir)?);
        }
        let lists_dir = options
            .iter()
            .find_map(|o| o.strip_prefix("Dir::State::Lists="))
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/apt/lists"));
        Ok(Apt {
            options,
            lock_timeout: config.lock_wait_timeout.as_std(),
            run_dir: run_dir.to_path_buf(),
            lists_dir,
            log,
        })
    }

    fn apt_get(&self, args: &[&str]) -> Command {
        let mut c = Command::new("apt-get");
        c.envs(QUIET_ENV);
        c.arg("-q");
        for o in &self.options {
            c.arg("-o").arg(o);
        }
        c.args(args);
        c
    }

    fn wait_locks(&self) -> Result<()> {
        let log = self.log;
        let waited = lock::wait_free(
            &lock::APT_LOCKS,
            Instant::now(),
            self.lock_timeout,
            |p, who| {
                log(&format!(
                    "waiting for {p}{}",
                    who.map(|w| format!(" held by {w}")).unwrap_or_default()
                ))
            },
        )?;
        if waited > Duration::from_secs(1) {
            (self.log)(&format!("package locks free after {}s", waited.as_secs()));
        }
        Ok(())
    }

    /// The argv apt-get gets for a step, for tests and for error messages.
    pub fn command_line(&self, args: &[&str]) -> String {
        cmd::display(&self.apt_get(args))
    }
}

/// Writes deb822 source files and keys for the configured sources, and
/// returns the apt options that make apt read them (with the system's own
/// sources in `add` mode, instead of them in `only` mode).
fn write_sources(config: &Config, work_dir: &Path) -> Result<Vec<String>> {
    let parts = work_dir.join("sources.list.d");
    let keys = work_dir.join("keyrings");
    for d in [&parts, &keys] {
        if d.exists() {
            std::fs::remove_dir_all(d)
                .map_err(|e| Error::io(format!("clearing {}", d.display()), e))?;
        }
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("creating {}", d.display()), e))?;
    }
    let mut options = Vec::new();
    if config.sources_mode == SourcesMode::Add {
        // The system's own parts come along, unchanged.
        if let Ok(entries) = std::fs::read_dir("/etc/apt/sources.list.d") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".list") || name.ends_with(".sources") {
                    std::fs::copy(e.path(), parts.join(&name))
                        .map_err(|err| Error::io(format!("copying {}", e.path().display()), err))?;
                }
            }
        }
    } else {
        options.push("Dir::Etc::SourceList=/dev/null".into());
        // Separate lists, so the system's own package lists stay as they are.
        let lists = work_dir.join("lists");
        std::fs::create_dir_all(lists.join("partial"))
            .map_err(|e| Error::io(format!("creating {}", lists.display()), e))?;
        options.push(format!("Dir::State::Lists={}", lists.display()));
    }
    for s in &config.sources {
        let key_path = if s.signed_by.trim_start().starts_with('/') {
            PathBuf::from(s.signed_by.trim())
        } else {
            let p = keys.join(format!("bootpatch-{}.asc", s.name));
            std::fs::write(&p, &s.signed_by)
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            p
        };
        let text = deb822(&s.uris, &s.suites, &s.components, &key_path);
        let p = parts.join(format!("bootpatch-{}.sources", s.name));
        std::fs::write(&p, text).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    options.push(format!("Dir::Etc::SourceParts={}", parts.display()));
    Ok(options)
}

/// Removes apt's cached package lists (keeping its lock file and the
/// `partial` folder apt expects).
fn clear_lists(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        if name == "lock" || name == "partial" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p)?
        } else {
            std::fs::remove_file(&p)?
        }
    }
    let partial = dir.join("partial");
    if partial.exists() {
        for e in std::fs::read_dir(&partial)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}

/// One deb822 source stanza.
pub fn deb822(uris: &[String], suites: &[String], components: &[String], key: &Path) -> String {
    format!(
        "# Written by bootpatch from /etc/bootpatch/config.yaml; regenerated on every run.\nTypes: deb\nURIs: {}\nSuites: {}\nComponents: {}\nSigned-By: {}\n",
        uris.join(" "),
        suites.join(" "),
        components.join(" "),
        key.display()
    )
}

/// Sorts apt's failure output into unreachable (retry) and the rest.
pub fn classify(output: &str) -> Result<(), Failure> {
    let detail = || {
        let lines: Vec<&str> = output
            .lines()
            .filter(|l| {
                l.starts_with("E:")
                    || l.starts_with("W:")
                    || l.starts_with("Err:")
                    || l.contains("NO_PUBKEY")
            })
            .collect();
        if lines.is_empty() {
            cmd::tail(output, 5)
        } else {
            lines.join("\n")
        }
    };
    const VERIFY: [&str; 11] = [
        "NO_PUBKEY",
        "BADSIG",
        "EXPKEYSIG",
        "is not signed",
        "signatures were invalid",
        "signatures couldn't be verified",
        "OpenPGP signature verification failed",
        "Hash Sum mismatch",
        "Hashes of expected file",
        "File has unexpected size",
        "Signed-By",
    ];
    const UNREACHABLE: [&str; 11] = [
        "Could not resolve",
        "Temporary failure resolving",
        "Failed to fetch",
        "Could not connect",
        "Unable to connect",
        "Connection failed",
        "Connection timed out",
        "No route to host",
        "does not have a Release file",
        "File not found",
        "Some index files failed to download",
    ];
    crate::backend::classify_by(output, &VERIFY, &UNREACHABLE, detail)
}

/// Parses `apt-get -s upgrade` output: `Inst name [old] (new release [arch])`
/// lines, and the "kept back" list.
pub fn parse_simulation(text: &str) -> Plan {
    let mut plan = Plan::default();
    let mut in_kept = false;
    for line in text.lines() {
        if in_kept {
            if line.starts_with(' ') {
                plan.kept_back
                    .extend(line.split_whitespace().map(str::to_string));
                continue;
            }
            in_kept = false;
        }
        if line.starts_with("The following packages have been kept back") {
            in_kept = true;
            continue;
        }
        let Some(rest) = line.strip_prefix("Inst ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(' ') else {
            continue;
        };
        let (from, rest) = match rest.strip_prefix('[') {
            Some(r) => match r.split_once("] ") {
                Some((old, r)) => (Some(old.to_string()), r),
                None => continue,
            },
            None => (None, rest),
        };
        let Some(to) = rest
            .strip_prefix('(')
            .and_then(|r| r.split([' ', ')']).next())
        else {
            continue;
        };
        plan.changes.push(PackageChange {
            name: name.to_string(),
            from,
            to: to.to_string(),
        });
    }
    plan
}

/// The Debian point release a `base-files` version ships: `12.4+deb12u11`
/// gives `12.11`. None when the version does not say.
pub fn point_release_of_base_files(version: &str) -> Option<String> {
    let (_, suffix) = version.split_once("+deb")?;
    let (major, update) = suffix.split_once('u')?;
    let all_digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    (all_digits(major) && all_digits(update))
        .then(|| format!("{major}.{}", update.trim_start_matches('0').max("0")))
}

impl Apt {
    /// Packages dpkg has marked as needing a reinstall (its "reinstreq" flag;
    /// `dpkg --audit` says they are "in a mess"), with the versions dpkg
    /// records for them: `name=version`.
    fn marked_for_reinstall(&self) -> Result<Vec<String>, Failure> {
        let out = cmd::run_ok(
            "listing packages dpkg marked for reinstallation",
            Command::new("dpkg-query").envs(QUIET_ENV).args([
                "-W",
                "-f",
                "${db:Status-Eflag} ${binary:Package} ${Version}\n",
            ]),
        )?;
        Ok(out
            .stdout
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                match (f.next(), f.next(), f.next()) {
                    (Some("reinstreq"), Some(name), Some(version)) => {
                        Some(format!("{name}={version}"))
                    }
                    _ => None,
                }
            })
            .collect())
    }
}

fn run_classified(step: &str, c: Command) -> Result<cmd::Output, Failure> {
    crate::backend::run_classified(step, c, classify)
}

impl Backend for Apt {
    fn repair(&mut self) -> Result<Option<String>, Failure> {
        self.wait_locks()?;
        let audit = cmd::run(Command::new("dpkg").envs(QUIET_ENV).arg("--audit"))?;
        let pending = std::fs::read_dir("/var/lib/dpkg/updates")
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if audit.stdout.trim().is_empty() && !pending {
            return Ok(None);
        }
        (self.log)("dpkg was interrupted: finishing the interrupted operation");
        // Finishes what was unpacked but not configured. A package killed
        // while unpacking is marked for reinstallation, which this cannot
        // fix (dpkg refuses to configure it): apt does that below.
        let configure = cmd::run(Command::new("dpkg").envs(QUIET_ENV).args([
            "--force-confdef",
            "--force-confold",
            "--configure",
            "-a",
        ]))?;
        if !configure.success() {
            (self.log)("dpkg --configure -a could not finish everything; reinstalling with apt");
        }
        // dpkg marks a package for reinstallation from the start of its
        // unpack until the old files' backups are gone, which is after it
        // records the new version. Cut in that last part, dpkg's record
        // names the new version, and `apt-get -f install` then only tries
        // to configure it, which dpkg refuses. apt reinstalls it when asked
        // by name. (A package whose record still names the old version,
        // which the sources may no longer have, is upgraded by -f install.)
        let reinstall = self.marked_for_reinstall()?;
        if !reinstall.is_empty() {
            self.wait_locks()?;
            let mut args = vec!["-y", "--reinstall", "install"];
            args.extend(reinstall.iter().map(String::as_str));
            if run_classified("reinstalling interrupted packages", self.apt_get(&args)).is_err() {
                (self.log)(&format!(
                    "could not reinstall {} as recorded; trying apt-get -f install",
                    reinstall.join(", ")
                ));
            }
        }
        self.wait_locks()?;
        run_classified(
            "repairing interrupted packages",
            self.apt_get(&["-y", "-f", "install"]),
        )?;
        let after = cmd::run(Command::new("dpkg").envs(QUIET_ENV).arg("--audit"))?;
        if !after.stdout.trim().is_empty() {
            return Err(Failure::Fatal(Error::Package {
                step: "repairing dpkg".into(),
                command: "dpkg --audit".into(),
                detail: format!(
                    "problems remain after the repair: {}",
                    cmd::tail(&after.stdout, 10)
                ),
            }));
        }
        Ok(Some(format!(
            "repaired an interrupted dpkg run: {}",
            cmd::tail(&audit.stdout, 3).replace('\n', " ")
        )))
    }

    fn refresh(&mut self) -> Result<(), Failure> {
        self.wait_locks()?;
        let update = || {
            run_classified(
                "refreshing package lists",
                self.apt_get(&["--error-on=any", "update"]),
            )
            .map(drop)
        };
        match update() {
            // apt does not sync its list files: after a power cut they can
            // be truncated, and then every update fails on its own cache
            // ("Splitting of clearsigned file ... failed", a hash mismatch
            // on a local file). Dropping the cached lists and fetching them
            // again, still verified, tells that apart from a bad source.
            Err(Failure::Fatal(Error::Verification { detail })) if self.lists_dir.exists() => {
                (self.log)(&format!(
                    "package lists did not verify; fetching them again from scratch ({})",
                    detail.lines().last().unwrap_or("")
                ));
                clear_lists(&self.lists_dir)
                    .map_err(|e| Error::io(format!("clearing {}", self.lists_dir.display()), e))?;
                update()
            }
            other => other,
        }
    }

    fn plan(&mut self) -> Result<Plan> {
        let out = cmd::run_ok(
            "planning the upgrade",
            &mut self.apt_get(&["-s", "-o", "Debug::NoLocking=1", "upgrade"]),
        )?;
        Ok(parse_simulation(&out.stdout))
    }

    fn download(&mut self) -> Result<(), Failure> {
        self.wait_locks()?;
        run_classified(
            "downloading packages",
            self.apt_get(&["-y", "--download-only", "upgrade"]),
        )
        .map(drop)
    }

    fn install(&mut self) -> Result<()> {
        self.wait_locks()?;
        // Everything was downloaded already, so this step finds it all in
        // the cache. (`--no-download` would be stricter, but apt refuses it
        // for file: sources, which air-gapped nodes use.)
        match run_classified("installing the upgrade", self.apt_get(&["-y", "upgrade"])) {
            Ok(_) => Ok(()),
            Err(Failure::Fatal(e)) => Err(e),
            Err(Failure::Unreachable(d)) => Err(Error::MirrorUnreachable {
                detail: d,
                waited_secs: 0,
            }),
        }
    }

    fn reboot_required(&mut self) -> Result<Option<Vec<String>>> {
        let flag = self.run_dir.join("reboot-required");
        if !flag.exists() {
            return Ok(None);
        }
        let pkgs =
            std::fs::read_to_string(self.run_dir.join("reboot-required.pkgs")).unwrap_or_default();
        let mut list: Vec<String> = pkgs
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        list.sort();
        list.dedup();
        Ok(Some(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_simulation() {
        let text = include_str!("../tests/fixtures/apt/upgrade-simulate.txt");
        let plan = parse_simulation(text);
        let names: Vec<&str> = plan.changes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "base-files",
                "bootpatch-fixture-kernel",
                "bootpatch-fixture-newdep",
                "bootpatch-fixture-slow",
                "bootpatch-fixture-tool"
            ]
        );
        assert_eq!(plan.changes[0].from.as_deref(), Some("12.4+deb12u15"));
        assert_eq!(plan.changes[0].to, "12.4+deb12u99");
        assert_eq!(plan.changes[2].from, None);
        assert_eq!(plan.changes[2].to, "2.0");
        assert_eq!(plan.kept_back, ["bootpatch-fixture-held"]);
    }

    #[test]
    fn point_release_from_base_files() {
        assert_eq!(
            point_release_of_base_files("12.4+deb12u11").as_deref(),
            Some("12.11")
        );
        assert_eq!(
            point_release_of_base_files("13.8+deb13u1").as_deref(),
            Some("13.1")
        );
        assert_eq!(point_release_of_base_files("12.4"), None);
        assert_eq!(point_release_of_base_files("12ubuntu4.6"), None);
    }

    #[test]
    fn classifies_failures() {
        let unsigned = "Err:1 file:/srv/repo ./ InRelease\nE: The repository 'file:/srv/repo ./ InRelease' is not signed.\n";
        assert!(matches!(
            classify(unsigned),
            Err(Failure::Fatal(Error::Verification { .. }))
        ));
        let badsig = "W: GPG error: file:/srv/repo ./ InRelease: The following signatures were invalid: BADSIG 1234\n";
        assert!(matches!(
            classify(badsig),
            Err(Failure::Fatal(Error::Verification { .. }))
        ));
        let tampered = "E: Failed to fetch file:/srv/repo/./Packages.xz  Hash Sum mismatch\n";
        assert!(matches!(
            classify(tampered),
            Err(Failure::Fatal(Error::Verification { .. }))
        ));
        let gone = "Err:1 file:/mnt/patches ./ InRelease\n  File not found - /mnt/patches/./InRelease (2: No such file or directory)\nE: The repository 'file:/mnt/patches ./ Release' does not have a Release file.\n";
        assert!(matches!(classify(gone), Err(Failure::Unreachable(_))));
        let dns = "Err:1 http://mirror.invalid/debian bookworm InRelease\n  Temporary failure resolving 'mirror.invalid'\n";
        assert!(matches!(classify(dns), Err(Failure::Unreachable(_))));
        assert!(classify("Hit:1 file:/srv/repo ./ InRelease\nReading package lists...\n").is_ok());
    }

    #[test]
    fn command_lines_keep_verification_on_and_never_prompt() {
        let cfg = Config::default();
        let d = tempfile::tempdir().unwrap();
        let apt = Apt::new(&cfg, d.path(), d.path(), |_| {}).unwrap();
        let line = apt.command_line(&["-y", "upgrade"]);
        for want in [
            "--force-confold",
            "--force-confdef",
            "AllowUnauthenticated=false",
            "AllowInsecureRepositories=false",
            "DPkg::Lock::Timeout=600",
        ] {
            assert!(line.contains(want), "{line}");
        }
        assert!(
            !line.contains("allow-unauthenticated") && !line.contains("trusted=yes"),
            "{line}"
        );
    }

    #[test]
    fn only_mode_reads_only_the_configured_sources() {
        let mut cfg = Config {
            sources_mode: SourcesMode::Only,
            ..Config::default()
        };
        cfg.sources.push(crate::config::Source {
            name: "patches".into(),
            uris: vec!["file:/mnt/patches".into()],
            suites: vec!["bookworm-updates".into()],
            components: vec!["main".into()],
            signed_by:
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\nxx\n-----END PGP PUBLIC KEY BLOCK-----\n"
                    .into(),
        });
        let d = tempfile::tempdir().unwrap();
        let apt = Apt::new(&cfg, d.path(), d.path(), |_| {}).unwrap();
        let line = apt.command_line(&["update"]);
        assert!(line.contains("Dir::Etc::SourceList=/dev/null"), "{line}");
        let src =
            std::fs::read_to_string(d.path().join("sources.list.d/bootpatch-patches.sources"))
                .unwrap();
        assert!(
            src.contains("URIs: file:/mnt/patches\nSuites: bookworm-updates\nComponents: main\n"),
            "{src}"
        );
        let key = d.path().join("keyrings/bootpatch-patches.asc");
        assert!(
            src.contains(&format!("Signed-By: {}", key.display())),
            "{src}"
        );
        assert!(std::fs::read_to_string(key)
            .unwrap()
            .starts_with("-----BEGIN PGP"));
    }
}
