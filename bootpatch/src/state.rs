//! The state file, `/var/lib/bootpatch/state.json`: what the node's last
//! patch runs did. The updater reads it, so its schema is versioned and
//! documented (docs/state-schema.md). It is only ever replaced whole: written
//! to a temporary file in the same directory, synced, then renamed over the
//! old one, so a power cut leaves the old file or the new one, never half.

use crate::error::{Error, Result};
use crate::os::OsInfo;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::Path;

pub const SCHEMA_VERSION: u32 = 1;
/// How many runs the history keeps (oldest dropped first).
pub const HISTORY_LEN: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<OsInfo>,
    /// The Patched Version after the last successful run (`12.11`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_version: Option<String>,
    /// Last Applied Patch Time: when a run last brought the node to the
    /// latest release of its stream (RFC 3339, UTC). Set by every successful
    /// apply, including one that found nothing newer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_patch_time: Option<String>,
    /// When packages last actually changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_package_change_time: Option<String>,
    /// The running kernel at the last run (`uname -r`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// A required reboot that has not happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_pending: Option<RebootPending>,
    /// The last reboot bootpatch asked for: a second run does not reboot
    /// again for the same pending set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reboot: Option<RebootRecord>,
    /// The result of the first-boot patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_boot: Option<FirstBoot>,
    /// The last runs, oldest first, at most [`HISTORY_LEN`].
    #[serde(default)]
    pub history: Vec<Run>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootPending {
    /// Packages that asked for the reboot (`/run/reboot-required.pkgs`).
    pub packages: Vec<String>,
    /// Why bootpatch did not reboot.
    pub reason: String,
    pub since: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebootRecord {
    pub requested_at: String,
    /// `/proc/sys/kernel/random/boot_id` of the boot that asked.
    pub boot_id: String,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstBoot {
    /// `patched`, `up-to-date`, `skipped`, `failed`, or `rebooting` while the
    /// reboot it asked for is under way.
    pub result: String,
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Run {
    /// `apply` or `firstboot`.
    pub command: String,
    pub started_at: String,
    pub finished_at: String,
    /// `patched`, `up-to-date`, `skipped`, `failed`.
    pub result: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_version_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patched_version_after: Option<String>,
    pub reboot_required: bool,
    pub rebooted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunError {
    /// Stable label: `lock-timeout`, `mirror-unreachable`, `verification`, ...
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageChange {
    pub name: String,
    /// None for a package new to the system.
    pub from: Option<String>,
    pub to: String,
}

impl State {
    pub fn new() -> State {
        State {
            schema_version: SCHEMA_VERSION,
            ..State::default()
        }
    }

    pub fn last_run(&self) -> Option<&Run> {
        self.history.last()
    }

    pub fn push_run(&mut self, run: Run) {
        self.history.push(run);
        let extra = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..extra);
    }

    /// Reads the state file. A missing file is a fresh state. A file that
    /// does not parse is moved aside (and reported) rather than blocking
    /// patching forever; a newer schema is refused so it is never clobbered.
    pub fn load(path: &Path) -> Result<(State, Option<String>)> {
        remove_stale_temporaries(path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((State::new(), None)),
            Err(e) => {
                return Err(Error::State {
                    path: path.display().to_string(),
                    detail: format!("reading: {e}"),
                })
            }
        };
        #[derive(Deserialize)]
        struct Version {
            schema_version: u32,
        }
        if let Ok(v) = serde_json::from_str::<Version>(&text) {
            if v.schema_version > SCHEMA_VERSION {
                return Err(Error::State {
                    path: path.display().to_string(),
                    detail: format!(
                        "schema version {} is newer than this bootpatch understands ({SCHEMA_VERSION}); refusing to overwrite it",
                        v.schema_version
                    ),
                });
            }
        }
        match serde_json::from_str::<State>(&text) {
            Ok(s) => Ok((s, None)),
            Err(e) => {
                let aside =
                    path.with_extension(format!("json.corrupt-{}", crate::time::now_unix()));
                std::fs::rename(path, &aside).map_err(|re| Error::State {
                    path: path.display().to_string(),
                    detail: format!("unreadable ({e}) and could not be moved aside: {re}"),
                })?;
                Ok((
                    State::new(),
                    Some(format!(
                        "state file did not parse ({e}); moved aside to {}",
                        aside.display()
                    )),
                ))
            }
        }
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("state serializes");
        s.push('\n');
        s
    }

    /// Replaces the state file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json().as_bytes(), 0o644).map_err(|e| Error::State {
            path: path.display().to_string(),
            detail: format!("writing: {e}"),
        })
    }
}

/// Removes temporary files a killed writer left beside `path` (the file
/// itself is whole either way; these are only litter).
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `data` to `path` so that readers (and a power cut) see either the
/// old file or the complete new one: temporary file in the same directory,
/// fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(result: &str) -> Run {
        Run {
            command: "apply".into(),
            started_at: "2026-11-24T19:00:00Z".into(),
            finished_at: "2026-11-24T19:01:00Z".into(),
            result: result.into(),
            error: None,
            packages: vec![PackageChange {
                name: "base-files".into(),
                from: Some("12.4+deb12u10".into()),
                to: "12.4+deb12u11".into(),
            }],
            patched_version_before: Some("12.10".into()),
            patched_version_after: Some("12.11".into()),
            reboot_required: false,
            rebooted: false,
        }
    }

    #[test]
    fn round_trip_and_bounded_history() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        let mut s = State::new();
        for _ in 0..(HISTORY_LEN + 5) {
            s.push_run(run("patched"));
        }
        assert_eq!(s.history.len(), HISTORY_LEN);
        s.save(&p).unwrap();
        let (back, note) = State::load(&p).unwrap();
        assert_eq!(back, s);
        assert!(note.is_none());
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn litter_of_a_killed_writer_is_removed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        State::new().save(&p).unwrap();
        std::fs::write(d.path().join(".state.json.tmp-4242"), "{\"schema_ver").unwrap();
        State::load(&p).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(&p, "{\"schema_version\": 1, \"hist").unwrap();
        let (s, note) = State::load(&p).unwrap();
        assert_eq!(s, State::new());
        assert!(note.unwrap().contains("moved aside"));
        assert!(!p.exists());
    }

    #[test]
    fn newer_schema_is_not_clobbered() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        std::fs::write(
            &p,
            "{\"schema_version\": 2, \"history\": [], \"new_field\": 1}",
        )
        .unwrap();
        assert!(matches!(State::load(&p), Err(Error::State { .. })));
        assert!(p.exists());
    }
}
