//! Which OS this is, which stream it is pinned to, and its Patched Version,
//! read from the files each family keeps them in. Reading only: bootpatch
//! never changes the stream (no release upgrade, no rewriting of sources).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Ubuntu,
    Rhel,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Debian => "debian",
            Family::Ubuntu => "ubuntu",
            Family::Rhel => "rhel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsInfo {
    pub family: Family,
    /// `ID` from os-release (debian, ubuntu, rocky, almalinux, rhel, ...).
    pub id: String,
    /// The pinned stream: Debian `12`, Ubuntu `22.04`, RHEL family `9`.
    pub stream: String,
    /// The Patched Version: Debian `12.11`, Ubuntu `22.04.5`, RHEL `9.4`.
    pub patched_version: String,
    /// `PRETTY_NAME`, for people.
    pub name: String,
}

/// Parses os-release: `KEY=value` lines, values optionally quoted.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim();
        let v = if v.len() >= 2
            && (v.starts_with('"') && v.ends_with('"') || v.starts_with('\'') && v.ends_with('\''))
        {
            let inner = &v[1..v.len() - 1];
            if v.starts_with('"') {
                let mut out = String::new();
                let mut chars = inner.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    } else {
                        out.push(c);
                    }
                }
                out
            } else {
                inner.to_string()
            }
        } else {
            v.to_string()
        };
        map.insert(k.trim().to_string(), v);
    }
    map
}

fn read(root: &Path, rel: &str) -> Result<Option<String>> {
    let p = root.join(rel.trim_start_matches('/'));
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

/// The Debian Patched Version from `/etc/debian_version` (`12.11`).
pub fn debian_patched_version(text: &str) -> Option<String> {
    let v = text.trim();
    let major = v.split('.').next()?;
    if v.is_empty() || major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some(v.to_string())
}

/// The Ubuntu Patched Version from os-release `VERSION` (`22.04.5 LTS (Jammy
/// Jellyfish)` gives `22.04.5`).
pub fn ubuntu_patched_version(version: &str) -> Option<String> {
    let first = version.split_whitespace().next()?;
    let ok = first.split('.').count() >= 2
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    ok.then(|| first.to_string())
}

/// Detects the OS under `root` (`/` on a node).
pub fn detect(root: &Path) -> Result<OsInfo> {
    let rel = match read(root, "etc/os-release")? {
        Some(t) => t,
        None => read(root, "usr/lib/os-release")?.ok_or_else(|| {
            Error::Unsupported("no /etc/os-release: cannot tell which OS this is".into())
        })?,
    };
    let osr = parse_os_release(&rel);
    let get = |k: &str| osr.get(k).cloned().unwrap_or_default();
    let id = get("ID");
    let like = get("ID_LIKE");
    let name = if osr.contains_key("PRETTY_NAME") {
        get("PRETTY_NAME")
    } else {
        get("NAME")
    };
    let is = |x: &str| id == x || like.split_whitespace().any(|l| l == x);
    if id == "ubuntu" {
        let version = get("VERSION");
        let patched = ubuntu_patched_version(&version).ok_or_else(|| {
            Error::Unsupported(format!(
                "os-release VERSION {version:?} does not hold a version number"
            ))
        })?;
        return Ok(OsInfo {
            family: Family::Ubuntu,
            id,
            stream: get("VERSION_ID"),
            patched_version: patched,
            name,
        });
    }
    if id == "debian" || (is("debian") && !is("ubuntu")) {
        let dv = read(root, "etc/debian_version")?
            .ok_or_else(|| Error::Unsupported("Debian without /etc/debian_version".into()))?;
        let patched = debian_patched_version(&dv).ok_or_else(|| {
            Error::Unsupported(format!(
                "/etc/debian_version is {:?}: not a stable release, which has no patch stream",
                dv.trim()
            ))
        })?;
        let stream = patched.split('.').next().unwrap_or_default().to_string();
        return Ok(OsInfo {
            family: Family::Debian,
            id,
            stream,
            patched_version: patched,
            name,
        });
    }
    if is("rhel") || is("fedora") || is("centos") {
        let version_id = get("VERSION_ID");
        let stream = version_id.split('.').next().unwrap_or_default().to_string();
        if stream.is_empty() {
            return Err(Error::Unsupported("os-release has no VERSION_ID".into()));
        }
        return Ok(OsInfo {
            family: Family::Rhel,
            id,
            stream,
            patched_version: version_id,
            name,
        });
    }
    Err(Error::Unsupported(format!(
        "OS {id:?} ({name}) is not supported: bootpatch handles Debian, Ubuntu and the RHEL family"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, c) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, c).unwrap();
        }
        d
    }

    #[test]
    fn debian() {
        let r = root_with(&[
            ("etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\nID=debian\n"),
            ("etc/debian_version", "12.11\n"),
        ]);
        let os = detect(r.path()).unwrap();
        assert_eq!(
            (os.family, os.stream.as_str(), os.patched_version.as_str()),
            (Family::Debian, "12", "12.11")
        );
        assert_eq!(os.name, "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn debian_testing_is_refused() {
        let r = root_with(&[
            ("etc/os-release", "ID=debian\n"),
            ("etc/debian_version", "trixie/sid\n"),
        ]);
        let e = detect(r.path()).unwrap_err().to_string();
        assert!(e.contains("trixie/sid"), "{e}");
    }

    #[test]
    fn ubuntu() {
        let r = root_with(&[("etc/os-release", "NAME=\"Ubuntu\"\nVERSION=\"22.04.5 LTS (Jammy Jellyfish)\"\nID=ubuntu\nID_LIKE=debian\nVERSION_ID=\"22.04\"\n")]);
        let os = detect(r.path()).unwrap();
        assert_eq!(
            (os.family, os.stream.as_str(), os.patched_version.as_str()),
            (Family::Ubuntu, "22.04", "22.04.5")
        );
    }

    #[test]
    fn rhel_family() {
        let r = root_with(&[("usr/lib/os-release", "NAME=\"Rocky Linux\"\nVERSION=\"9.4 (Blue Onyx)\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\nVERSION_ID=\"9.4\"\n")]);
        let os = detect(r.path()).unwrap();
        assert_eq!(
            (os.family, os.stream.as_str(), os.patched_version.as_str()),
            (Family::Rhel, "9", "9.4")
        );
        assert_eq!(os.id, "rocky");
    }

    #[test]
    fn unknown_os() {
        let r = root_with(&[("etc/os-release", "ID=alpine\nVERSION_ID=3.20.1\n")]);
        assert!(matches!(detect(r.path()), Err(Error::Unsupported(_))));
    }
}
