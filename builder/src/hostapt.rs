//! The build host's own apt sources, read to find the default package mirror.
//!
//! The repository never names a mirror host: a spec says `mirror: debian` and
//! this module finds the URI the host itself uses for that archive, in
//! `/etc/apt/sources.list.d/*.sources` (deb822) and `/etc/apt/sources.list`
//! (one-line format). Parsing is pure and tested on sample text; only
//! [`read_host`] touches the file system.

use anyhow::{bail, Result};
use std::path::Path;

/// Symbolic mirror names a spec may use.
pub const KNOWN_MIRRORS: [&str; 4] = ["debian", "debian-security", "ubuntu", "ubuntu-security"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSource {
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: Option<String>,
}

/// Parses deb822 `.sources` text. Disabled stanzas (`Enabled: no`) and
/// non-`deb` types are skipped.
pub fn parse_deb822(text: &str) -> Vec<HostSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let words = |k: &str| -> Vec<String> {
            get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if get("enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
            continue;
        }
        if !words("types").iter().any(|t| t == "deb") {
            continue;
        }
        let s = HostSource {
            uris: words("uris"),
            suites: words("suites"),
            components: words("components"),
            signed_by: get("signed-by").filter(|v| v.starts_with('/')),
        };
        if !s.uris.is_empty() && !s.suites.is_empty() {
            out.push(s);
        }
    }
    out
}

/// Parses one-line `sources.list` text (`deb [opts] uri suite comp...`).
pub fn parse_one_line(text: &str) -> Vec<HostSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ") {
            Some(r) => r.trim_start(),
            None => continue,
        };
        let mut signed_by = None;
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, after)) = r.split_once(']') else {
                continue;
            };
            for o in opts.split_whitespace() {
                if let Some(v) = o.strip_prefix("signed-by=") {
                    signed_by = Some(v.to_string());
                }
            }
            rest = after.trim_start();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(HostSource {
            uris: vec![uri.to_string()],
            suites: vec![suite.to_string()],
            components: words.map(str::to_string).collect(),
            signed_by,
        });
    }
    out
}

/// Reads every enabled `deb` source of the host.
pub fn read_host(root: &Path) -> Vec<HostSource> {
    let mut out = Vec::new();
    let dir = root.join("etc/apt/sources.list.d");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        match f.extension().and_then(|e| e.to_str()) {
            Some("sources") => out.extend(parse_deb822(&text)),
            Some("list") => out.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    if let Ok(text) = std::fs::read_to_string(root.join("etc/apt/sources.list")) {
        out.extend(parse_one_line(&text));
    }
    out
}

/// Finds the URI the host uses for a symbolic mirror. `debian-security` is
/// the host source carrying a `*-security` suite of a Debian archive; `debian`
/// is one carrying a plain or `-updates` suite.
pub fn resolve(mirror: &str, host: &[HostSource]) -> Result<String> {
    let security = mirror.ends_with("-security");
    let family = mirror.trim_end_matches("-security");
    let looks_like = |s: &HostSource| {
        let uri = s.uris[0].as_str();
        match family {
            "ubuntu" => uri.contains("ubuntu"),
            _ => !uri.contains("ubuntu"),
        }
    };
    for s in host.iter().filter(|s| looks_like(s)) {
        let has_security = s.suites.iter().any(|x| x.ends_with("-security"));
        let has_main = s.suites.iter().any(|x| !x.ends_with("-security"));
        if (security && has_security) || (!security && has_main) {
            return Ok(s.uris[0].trim_end_matches('/').to_string());
        }
    }
    bail!(
        "no {mirror} mirror in the build host's apt sources (/etc/apt/sources.list.d/*.sources, \
         /etc/apt/sources.list); name one with `uris:` in the spec"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The shape of a stock Debian 12 host file, with made-up host names.
    const DEB822: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
        Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\nComponents: main\n\n\
        Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: sid\nComponents: main\n";

    #[test]
    fn deb822() {
        let s = parse_deb822(DEB822);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            s[0].signed_by.as_deref(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(
            resolve("debian", &s).unwrap(),
            "http://mirror.example/debian"
        );
        assert_eq!(
            resolve("debian-security", &s).unwrap(),
            "http://mirror.example/debian-security"
        );
        assert!(resolve("ubuntu", &s).is_err());
    }

    #[test]
    fn one_line() {
        let s = parse_one_line(
            "# deb http://old.example/debian buster main\n\
             deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main contrib\n\
             deb-src http://m.example/debian bookworm main\n\
             deb http://m.example/debian-security bookworm-security main # trailing\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].components, ["main", "contrib"]);
        assert_eq!(s[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(resolve("debian", &s).unwrap(), "http://m.example/debian");
        assert_eq!(
            resolve("debian-security", &s).unwrap(),
            "http://m.example/debian-security"
        );
    }
}
