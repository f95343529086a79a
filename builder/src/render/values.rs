//! The values a user sets for `builder render`: one strict struct, read from
//! a YAML (or JSON) file and `--set key=value` overrides. Unknown keys and
//! wrong types are errors that name the key. The bootpatch policy keys carry
//! bootpatch's own names and are checked again, after rendering, by
//! bootpatch's own config parser (see `Renderer::render`), so the two can
//! never disagree. This module only reads and checks values; it renders
//! nothing.

use bootpatch::config::{Source, SourcesMode};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::RenderError;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// bootpatch: patch the node on its first boot (bootpatch's default: true).
    #[serde(default)]
    pub patch_on_boot: Option<bool>,
    /// bootpatch: reboot when a patch requires it (bootpatch's default: false).
    #[serde(default)]
    pub reboot_if_required: Option<bool>,
    /// bootpatch: five-field cron schedule for later patch runs.
    #[serde(default)]
    pub schedule: Option<String>,
    /// bootpatch: extra package sources, each with its signing key.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// bootpatch: `add` (default) or `only`.
    #[serde(default)]
    pub sources_mode: Option<SourcesMode>,
    /// bootpatch: e.g. `10m`.
    #[serde(default)]
    pub lock_wait_timeout: Option<String>,
    /// bootpatch: e.g. `15m`.
    #[serde(default)]
    pub retry_deadline: Option<String>,
    /// bootpatch: argv of the reboot command, no shell.
    #[serde(default)]
    pub reboot_command: Option<Vec<String>>,
    /// Proxy for apt (and for the bootpatch download on stock images).
    #[serde(default)]
    pub http_proxy: Option<String>,
    /// Proxy for https URLs; defaults to `httpProxy`.
    #[serde(default)]
    pub https_proxy: Option<String>,
    /// Comma-separated hosts that bypass the proxy (the download only; apt
    /// has no such list).
    #[serde(default)]
    pub no_proxy: Option<String>,
    /// Host name; with dots it is the FQDN and its first label the host name.
    #[serde(default)]
    pub hostname: Option<String>,
    /// Public keys for the image's default user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    /// The command that joins the node to its cluster, run once after the
    /// first-boot patch: a list is argv (no shell), a string is a shell
    /// command line run by `sh -c`.
    #[serde(default)]
    pub join_command: Option<JoinCommand>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a shell command line (string) or an argv list of strings"
)]
pub enum JoinCommand {
    Argv(Vec<String>),
    Shell(String),
}

/// What kind of value a `--set` path takes: how its text is read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `true` or `false`.
    Bool,
    /// The text as it is, never reinterpreted (`--set hostname=no` is "no").
    Str,
    /// A YAML/JSON flow value: `[a, b]`, `[{name: x, ...}]`.
    Yaml,
    /// A list given as `[a, b]`, or a string taken as it is.
    StrOrYaml,
}

/// Kind of a `--set` path with list indexes erased (`sources[].name`).
fn kind_of(path: &str) -> Option<Kind> {
    use Kind::*;
    Some(match path {
        "patchOnBoot" | "rebootIfRequired" => Bool,
        "schedule" | "sourcesMode" | "lockWaitTimeout" | "retryDeadline" | "httpProxy"
        | "httpsProxy" | "noProxy" | "hostname" => Str,
        "sources" | "rebootCommand" | "sshAuthorizedKeys" => Yaml,
        "sources[]" => Yaml,
        "sources[].name" | "sources[].signedBy" => Str,
        "sources[].uris" | "sources[].suites" | "sources[].components" => Yaml,
        "sources[].uris[]" | "sources[].suites[]" | "sources[].components[]" => Str,
        "rebootCommand[]" | "sshAuthorizedKeys[]" | "joinCommand[]" => Str,
        "joinCommand" => StrOrYaml,
        _ => return None,
    })
}

#[derive(Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Seg>> {
    let mut segs = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(p) => part.split_at(p),
            None => (part, ""),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        segs.push(Seg::Key(name.to_string()));
        while !rest.is_empty() {
            if !rest.starts_with('[') {
                return None;
            }
            let close = rest.find(']')?;
            let n: usize = rest.get(1..close)?.parse().ok()?;
            segs.push(Seg::Index(n));
            rest = &rest[close + 1..];
        }
    }
    Some(segs)
}

fn erased(segs: &[Seg]) -> String {
    let mut s = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(_) => s.push_str("[]"),
        }
    }
    s
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> RenderError {
    RenderError::InvalidValue {
        key: key.into(),
        message: message.into(),
    }
}

impl Values {
    /// Reads values from YAML (JSON is YAML too). Strict: unknown keys and
    /// wrong types are errors naming the key.
    pub fn from_yaml_str(text: &str) -> Result<Values, RenderError> {
        let tree = yaml_tree(text)?;
        Self::from_tree(tree)
    }

    /// Reads values from an optional YAML text and `key=value` overrides,
    /// then checks them.
    pub fn load(text: Option<&str>, sets: &[String]) -> Result<Values, RenderError> {
        let mut tree = match text {
            Some(t) => yaml_tree(t)?,
            None => Json::Object(Default::default()),
        };
        for set in sets {
            apply_set(&mut tree, set)?;
        }
        Self::from_tree(tree)
    }

    fn from_tree(tree: Json) -> Result<Values, RenderError> {
        let values: Values = serde_path_to_error::deserialize(tree).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // The path of an unknown key ends in that key; at the top level
            // serde_path_to_error says ".", so name the key from the message.
            let key = match inner.strip_prefix("unknown field `") {
                Some(rest) if path == "." => rest.split('`').next().unwrap_or_default().to_string(),
                _ => path,
            };
            invalid(key, inner)
        })?;
        values.validate()?;
        Ok(values)
    }

    /// Checks what types cannot. The bootpatch keys are checked in full by
    /// bootpatch's parser when the config is rendered; here only what lands
    /// outside bootpatch's config.
    pub fn validate(&self) -> Result<(), RenderError> {
        if let Some(h) = &self.hostname {
            if !valid_hostname(h) {
                return Err(invalid(
                    "hostname",
                    format!("{h:?} is not a host name (letters, digits and -, labels of 1-63, dots between)"),
                ));
            }
        }
        for (key, p) in [
            ("httpProxy", &self.http_proxy),
            ("httpsProxy", &self.https_proxy),
        ] {
            if let Some(p) = p {
                let scheme = p.starts_with("http://") || p.starts_with("https://");
                if !scheme || !url_chars_ok(p) || p.len() <= "http://".len() {
                    return Err(invalid(
                        key,
                        format!("{p:?} is not a proxy URL (http:// or https://, no spaces, quotes, backslashes or ;)"),
                    ));
                }
            }
        }
        if let Some(n) = &self.no_proxy {
            if n.is_empty() || !url_chars_ok(n) {
                return Err(invalid(
                    "noProxy",
                    format!("{n:?} is not a comma-separated host list"),
                ));
            }
        }
        for (i, k) in self.ssh_authorized_keys.iter().enumerate() {
            if k.trim().is_empty() || k.chars().any(char::is_control) {
                return Err(invalid(
                    format!("sshAuthorizedKeys[{i}]"),
                    "must be one non-empty line (a line break would add another key)",
                ));
            }
        }
        match &self.join_command {
            Some(JoinCommand::Argv(argv)) if argv.first().is_none_or(|a| a.is_empty()) => {
                return Err(invalid("joinCommand", "must name a command"));
            }
            Some(JoinCommand::Shell(s)) if s.trim().is_empty() => {
                return Err(invalid("joinCommand", "must name a command"));
            }
            _ => {}
        }
        self.check_no_nul()
    }

    /// No value may hold a NUL: neither a shell word nor an argv element can.
    fn check_no_nul(&self) -> Result<(), RenderError> {
        // Fast path for the common case; the slow walk below only names the key.
        if !self.strings().any(|s| s.contains('\0')) {
            return Ok(());
        }
        let tree = serde_json::to_value(self).expect("values serialize");
        fn walk(v: &Json, path: &str) -> Result<(), RenderError> {
            match v {
                Json::String(s) if s.contains('\0') => {
                    Err(invalid(path, "must not contain a NUL character"))
                }
                Json::Array(a) => a
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, x)| walk(x, &format!("{path}[{i}]"))),
                Json::Object(m) => m.iter().try_for_each(|(k, x)| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(x, &p)
                }),
                _ => Ok(()),
            }
        }
        walk(&tree, "")
    }

    /// Every string value, in no particular order.
    fn strings(&self) -> impl Iterator<Item = &str> {
        let opt = [
            &self.schedule,
            &self.lock_wait_timeout,
            &self.retry_deadline,
            &self.http_proxy,
            &self.https_proxy,
            &self.no_proxy,
            &self.hostname,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str);
        let sources = self.sources.iter().flat_map(|s| {
            [&s.name, &s.signed_by]
                .into_iter()
                .chain(&s.uris)
                .chain(&s.suites)
                .chain(&s.components)
                .map(String::as_str)
        });
        let join: Box<dyn Iterator<Item = &str>> = match &self.join_command {
            Some(JoinCommand::Argv(a)) => Box::new(a.iter().map(String::as_str)),
            Some(JoinCommand::Shell(s)) => Box::new(std::iter::once(s.as_str())),
            None => Box::new(std::iter::empty()),
        };
        opt.chain(sources)
            .chain(self.reboot_command.iter().flatten().map(String::as_str))
            .chain(self.ssh_authorized_keys.iter().map(String::as_str))
            .chain(join)
    }

    /// Host name and FQDN for cloud-init: a dotted name is the FQDN.
    pub fn hostname_fqdn(&self) -> (Option<&str>, Option<&str>) {
        match &self.hostname {
            None => (None, None),
            Some(h) => match h.split_once('.') {
                Some((short, _)) => (Some(short), Some(h.as_str())),
                None => (Some(h.as_str()), None),
            },
        }
    }
}

fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Safe inside apt.conf double quotes, env files and shell: printable ASCII
/// without quotes, backslash, `;` or white space.
fn url_chars_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | ';' | '`'))
}

fn yaml_tree(text: &str) -> Result<Json, RenderError> {
    if text.trim().is_empty() {
        return Ok(Json::Object(Default::default()));
    }
    let tree: Json =
        serde_norway::from_str(text).map_err(|e| invalid(".", format!("reading values: {e}")))?;
    match tree {
        Json::Object(_) => Ok(tree),
        Json::Null => Ok(Json::Object(Default::default())),
        _ => Err(invalid(".", "values must be a map of keys")),
    }
}

fn apply_set(tree: &mut Json, set: &str) -> Result<(), RenderError> {
    let (path, text) = set
        .split_once('=')
        .ok_or_else(|| invalid(set, "--set takes key=value"))?;
    let segs = parse_path(path)
        .ok_or_else(|| invalid(path, "not a key path (e.g. hostname, sources[0].name)"))?;
    let kind = kind_of(&erased(&segs)).ok_or_else(|| invalid(path, "unknown key"))?;
    let value = match kind {
        Kind::Bool => match text {
            "true" => Json::Bool(true),
            "false" => Json::Bool(false),
            _ => return Err(invalid(path, format!("{text:?} is not true or false"))),
        },
        Kind::Str => Json::String(text.to_string()),
        Kind::StrOrYaml if !text.trim_start().starts_with('[') => Json::String(text.to_string()),
        Kind::Yaml | Kind::StrOrYaml => serde_norway::from_str(text)
            .map_err(|e| invalid(path, format!("{text:?} is not a YAML value: {e}")))?,
    };
    let mut slot = tree;
    for seg in &segs {
        slot = match seg {
            Seg::Key(k) => {
                if !slot.is_object() {
                    *slot = Json::Object(Default::default());
                }
                slot.as_object_mut()
                    .expect("made an object")
                    .entry(k.clone())
                    .or_insert(Json::Null)
            }
            Seg::Index(n) => {
                if !slot.is_array() {
                    *slot = Json::Array(Vec::new());
                }
                let arr = slot.as_array_mut().expect("made an array");
                if *n > arr.len() {
                    return Err(invalid(
                        path,
                        format!("index {n} skips entries (the list has {})", arr.len()),
                    ));
                }
                if *n == arr.len() {
                    arr.push(Json::Null);
                }
                &mut arr[*n]
            }
        };
    }
    *slot = value;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(e: RenderError) -> String {
        match e {
            RenderError::InvalidValue { key, .. } => key,
            other => panic!("not a value error: {other}"),
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Values::from_yaml_str("patchOnBoot: true\nrebootIfRequierd: true\n").unwrap_err();
        assert_eq!(key_of(e), "rebootIfRequierd");
        let e = Values::from_yaml_str(
            "sources:\n  - name: a\n    uris: [x]\n    suites: [s]\n    signedBy: /k\n    trusted: true\n",
        )
        .unwrap_err();
        assert_eq!(key_of(e), "sources[0].trusted");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = Values::from_yaml_str("hostname: 5\n").unwrap_err();
        assert_eq!(key_of(e), "hostname");
        let e = Values::from_yaml_str("rebootCommand: [systemctl, [reboot]]\n").unwrap_err();
        assert_eq!(key_of(e), "rebootCommand[1]");
        let e = Values::from_yaml_str("patchOnBoot: sometimes\n").unwrap_err();
        assert_eq!(key_of(e), "patchOnBoot");
    }

    #[test]
    fn set_reads_text_by_the_key_kind() {
        let v = Values::load(
            Some("hostname: a\n"),
            &[
                "hostname=no".into(),
                "patchOnBoot=false".into(),
                "rebootCommand=[systemctl, reboot, --force]".into(),
                "joinCommand=kubeadm join x:6443 --token a.b".into(),
                "sshAuthorizedKeys[0]=ssh-ed25519 AAAA a@b".into(),
                "sources[0].name=extra".into(),
                "sources[0].uris[0]=file:/srv/repo".into(),
                "sources[0].suites=[bookworm]".into(),
                "sources[0].signedBy=/etc/k.asc".into(),
            ],
        )
        .unwrap();
        assert_eq!(v.hostname.as_deref(), Some("no"));
        assert_eq!(v.patch_on_boot, Some(false));
        assert_eq!(v.reboot_command.as_ref().unwrap().len(), 3);
        assert_eq!(
            v.join_command,
            Some(JoinCommand::Shell("kubeadm join x:6443 --token a.b".into()))
        );
        assert_eq!(v.sources[0].uris, vec!["file:/srv/repo".to_string()]);
    }

    #[test]
    fn set_errors_name_the_key() {
        assert_eq!(
            key_of(Values::load(None, &["nope=1".into()]).unwrap_err()),
            "nope"
        );
        assert_eq!(
            key_of(Values::load(None, &["patchOnBoot=yes".into()]).unwrap_err()),
            "patchOnBoot"
        );
        assert_eq!(
            key_of(Values::load(None, &["sshAuthorizedKeys[3]=x".into()]).unwrap_err()),
            "sshAuthorizedKeys[3]"
        );
    }

    #[test]
    fn checks_outside_bootpatch() {
        let e = Values::load(None, &["hostname=bad host".into()]).unwrap_err();
        assert_eq!(key_of(e), "hostname");
        let e = Values::load(None, &["httpProxy=http://p:3128\";".into()]).unwrap_err();
        assert_eq!(key_of(e), "httpProxy");
        let e = Values::from_yaml_str("sshAuthorizedKeys: [\"a\\nb\"]\n").unwrap_err();
        assert_eq!(key_of(e), "sshAuthorizedKeys[0]");
        let e = Values::from_yaml_str("joinCommand: [\"a\\u0000\"]\n").unwrap_err();
        assert_eq!(key_of(e), "joinCommand[0]");
    }
}
