//! The node configuration, `/etc/bootpatch/config.yaml`, in the product's own
//! words (`patchOnBoot`, `rebootIfRequired`, `schedule`). Parsing is strict:
//! an unknown key, a wrong type or a bad value is an error that names the key
//! and the value. This module only reads and checks; it never touches the
//! system.

use crate::cron::Schedule;
use crate::duration::Duration;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Where the config lives on a node.
pub const DEFAULT_PATH: &str = "/etc/bootpatch/config.yaml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Patch the node on its first boot.
    #[serde(default = "yes")]
    pub patch_on_boot: bool,
    /// Reboot when a patch requires it. Without it a required reboot stays
    /// pending and the status says so.
    #[serde(default)]
    pub reboot_if_required: bool,
    /// Cron schedule (5 fields) for later patch runs; the in-cluster updater
    /// acts on it. Kept here so one file describes the node's patch policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Extra package sources, each with its own signing key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Source>,
    /// `add`: the extra sources come on top of the system's own; `only`: a
    /// patch run reads only the extra sources (the system's stay as they are).
    #[serde(default)]
    pub sources_mode: SourcesMode,
    /// How long to wait for the dpkg/apt lock held by another process.
    #[serde(default = "default_lock_wait")]
    pub lock_wait_timeout: Duration,
    /// How long to keep retrying while the package mirror is unreachable.
    #[serde(default = "default_retry_deadline")]
    pub retry_deadline: Duration,
    /// The command that reboots the node (argv, no shell).
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// Short name, used for the file names (`[a-z0-9][a-z0-9-]*`).
    pub name: String,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// An ASCII-armored public key block, or the absolute path of a key file.
    pub signed_by: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourcesMode {
    #[default]
    Add,
    Only,
}

fn yes() -> bool {
    true
}
fn default_lock_wait() -> Duration {
    Duration::from_secs(600)
}
fn default_retry_deadline() -> Duration {
    Duration::from_secs(900)
}
fn default_reboot_command() -> Vec<String> {
    vec!["systemctl".into(), "reboot".into()]
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}

impl Default for Config {
    fn default() -> Self {
        Config {
            patch_on_boot: true,
            reboot_if_required: false,
            schedule: None,
            sources: Vec::new(),
            sources_mode: SourcesMode::Add,
            lock_wait_timeout: default_lock_wait(),
            retry_deadline: default_retry_deadline(),
            reboot_command: default_reboot_command(),
        }
    }
}

/// A config that could not be read or is not valid. `origin` is the file name
/// (or `<string>`), `key` the offending key when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: String,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: {}: {}", self.origin, k, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Parses and validates a config held in a string.
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        Self::parse(text, "<string>")
    }

    /// Reads, parses and validates a config file. A missing file is an error
    /// here; callers that accept defaults check for existence first.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            key: None,
            message: format!("reading: {e}"),
        })?;
        Self::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let err = |key: Option<String>, message: String| ConfigError {
            origin: origin.to_string(),
            key,
            message,
        };
        // An empty file (or one with only comments) means all defaults.
        if text.lines().all(|l| {
            let t = l.trim();
            t.is_empty() || t.starts_with('#') || t == "---"
        }) {
            return Ok(Config::default());
        }
        let cfg: Config = serde_norway::from_str(text).map_err(|e| {
            let msg = e.to_string();
            // serde's messages name the key either as a path prefix
            // ("sources[0].name: ...") or inside backquotes (unknown field);
            // pull it out so the error names it in one place.
            let key = error_key(&msg);
            err(key, msg)
        })?;
        cfg.validate().map_err(|(k, m)| err(Some(k), m))?;
        Ok(cfg)
    }

    /// Checks what types alone cannot: returns the key and a message.
    fn validate(&self) -> Result<(), (String, String)> {
        if let Some(s) = &self.schedule {
            Schedule::parse(s).map_err(|e| ("schedule".into(), format!("{e} (value {s:?})")))?;
        }
        if self.reboot_command.is_empty() || self.reboot_command[0].is_empty() {
            return Err(("rebootCommand".into(), "must name a command".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.sources.iter().enumerate() {
            let key = |f: &str| format!("sources[{i}].{f}");
            let valid_name = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid_name {
                return Err((
                    key("name"),
                    format!("{:?} is not a valid name (use a-z, 0-9 and -)", s.name),
                ));
            }
            if !seen.insert(s.name.as_str()) {
                return Err((key("name"), format!("{:?} is used twice", s.name)));
            }
            if s.uris.is_empty() {
                return Err((key("uris"), "needs at least one URI".into()));
            }
            for u in &s.uris {
                let scheme_ok = ["http://", "https://", "file:", "cdrom:", "mirror+"]
                    .iter()
                    .any(|p| u.starts_with(p));
                if !scheme_ok || u.chars().any(|c| c.is_whitespace()) {
                    return Err((key("uris"), format!("{u:?} is not an apt URI")));
                }
            }
            if s.suites.is_empty() {
                return Err((key("suites"), "needs at least one suite".into()));
            }
            for v in s.suites.iter().chain(&s.components) {
                if v.is_empty() || v.chars().any(|c| c.is_whitespace()) {
                    return Err((key("suites"), format!("{v:?} is not a suite or component")));
                }
            }
            let k = s.signed_by.trim();
            if !(k.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----") || k.starts_with('/')) {
                return Err((
                    key("signedBy"),
                    "must be an ASCII-armored public key block or an absolute path; \
                     unsigned sources are not accepted"
                        .into(),
                ));
            }
        }
        Ok(())
    }

    /// The config as YAML, in the same format [`Config::parse`] reads.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("config serializes")
    }
}

fn error_key(msg: &str) -> Option<String> {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        return rest.split('`').next().map(str::to_string);
    }
    let (head, _) = msg.split_once(": ")?;
    let plausible = !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "[]._".contains(c));
    if !plausible {
        return None;
    }
    // Unknown field inside a nested map: "sources[0]: unknown field `x`".
    if let Some(i) = msg.find("unknown field `") {
        let field = msg[i + 15..].split('`').next()?;
        return Some(format!("{head}.{field}"));
    }
    Some(head.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_in_repo_parses() {
        let text = include_str!("../config.sample.yaml");
        let cfg = Config::from_yaml_str(text).unwrap();
        assert!(cfg.patch_on_boot);
        assert!(cfg.reboot_if_required);
        assert_eq!(cfg.schedule.as_deref(), Some("0 2 * * 0"));
        assert_eq!(cfg.sources.len(), 1);
        assert_eq!(cfg.lock_wait_timeout, Duration::from_secs(600));
        assert_eq!(cfg.retry_deadline, Duration::from_secs(15 * 60));
    }

    #[test]
    fn empty_means_defaults() {
        assert_eq!(
            Config::from_yaml_str("# nothing\n").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn round_trips_through_yaml() {
        let mut cfg = Config {
            schedule: Some("30 1 * * 1-5".into()),
            ..Config::default()
        };
        cfg.sources.push(Source {
            name: "extra".into(),
            uris: vec!["file:/srv/repo".into()],
            suites: vec!["bookworm-updates".into()],
            components: vec!["main".into()],
            signed_by:
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nabc\n-----END PGP PUBLIC KEY BLOCK-----\n"
                    .into(),
        });
        let again = Config::from_yaml_str(&cfg.to_yaml()).unwrap();
        assert_eq!(cfg, again);
    }

    fn bad(text: &str) -> ConfigError {
        Config::parse(text, "config.yaml").unwrap_err()
    }

    #[test]
    fn unknown_key_is_named() {
        let e = bad("patchOnBoot: true\nrebootIfRequierd: true\n");
        assert_eq!(e.key.as_deref(), Some("rebootIfRequierd"), "{e}");
        assert!(
            e.to_string().starts_with("config.yaml: rebootIfRequierd:"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_key_and_value() {
        let e = bad("patchOnBoot: sometimes\n");
        assert_eq!(e.key.as_deref(), Some("patchOnBoot"), "{e}");
        assert!(e.message.contains("sometimes"), "{e}");
    }

    #[test]
    fn bad_schedule_names_key_and_value() {
        let e = bad("schedule: \"61 * * * *\"\n");
        assert_eq!(e.key.as_deref(), Some("schedule"));
        assert!(e.message.contains("61"), "{e}");
    }

    #[test]
    fn bad_duration_names_key() {
        let e = bad("lockWaitTimeout: 10 parsecs\n");
        assert_eq!(e.key.as_deref(), Some("lockWaitTimeout"), "{e}");
        assert!(e.message.contains("10 parsecs"), "{e}");
    }

    #[test]
    fn nested_unknown_key_is_named() {
        let e = bad("sources:\n  - name: a\n    uris: [\"file:/x\"]\n    suites: [s]\n    signedBy: /k.asc\n    trusted: yes\n");
        assert_eq!(e.key.as_deref(), Some("sources[0].trusted"), "{e}");
    }

    #[test]
    fn unsigned_source_is_refused() {
        let e = bad(
            "sources:\n  - name: a\n    uris: [\"file:/x\"]\n    suites: [s]\n    signedBy: \"\"\n",
        );
        assert_eq!(e.key.as_deref(), Some("sources[0].signedBy"), "{e}");
    }

    #[test]
    fn empty_reboot_command_is_refused() {
        let e = bad("rebootCommand: []\n");
        assert_eq!(e.key.as_deref(), Some("rebootCommand"));
    }
}
