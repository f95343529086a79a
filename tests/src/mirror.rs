//! The Debian mirror the build host itself uses, read from its apt sources,
//! so that no mirror host name is ever written into the repository.

use std::path::Path;

/// One `deb` source of the host: URI and suites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses one-line (`sources.list`) and deb822 (`.sources`) entries.
pub fn parse_sources(text: &str, deb822: bool) -> Vec<HostSource> {
    let mut out = Vec::new();
    if deb822 {
        for stanza in text.split("\n\n") {
            let mut f = std::collections::HashMap::new();
            for line in stanza.lines().filter(|l| !l.trim_start().starts_with('#')) {
                if let Some((k, v)) = line.split_once(':') {
                    f.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let types = f.get("types").cloned().unwrap_or_default();
            if !types.split_whitespace().any(|t| t == "deb")
                || f.get("enabled").is_some_and(|e| e == "no")
            {
                continue;
            }
            let split = |k: &str| {
                f.get(k)
                    .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            for uri in split("uris") {
                out.push(HostSource {
                    uri,
                    suites: split("suites"),
                    components: split("components"),
                });
            }
        }
    } else {
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("deb ") else {
                continue;
            };
            let mut words = rest.split_whitespace().skip_while(|w| w.starts_with('['));
            let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
                continue;
            };
            out.push(HostSource {
                uri: uri.into(),
                suites: vec![suite.into()],
                components: words.map(String::from).collect(),
            });
        }
    }
    out
}

/// Every enabled `deb` source of the host.
pub fn host_sources() -> Vec<HostSource> {
    let mut all = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        all.extend(parse_sources(&t, false));
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy().to_string();
            let Ok(t) = std::fs::read_to_string(&p) else {
                continue;
            };
            if name.ends_with(".sources") {
                all.extend(parse_sources(&t, true));
            } else if name.ends_with(".list") {
                all.extend(parse_sources(&t, false));
            }
        }
    }
    all
}

/// The URI of the host's Debian archive: the source that carries `suite`
/// (e.g. bookworm) with the main component.
pub fn debian_mirror(suite: &str) -> Option<String> {
    if let Ok(m) = std::env::var("BOOTPATCH_MIRROR") {
        return Some(m);
    }
    host_sources()
        .into_iter()
        .find(|s| s.suites.iter().any(|x| x == suite) && s.components.iter().any(|c| c == "main"))
        .map(|s| s.uri)
}

/// The host's codename (`bookworm`), from os-release.
pub fn host_codename() -> String {
    let t = std::fs::read_to_string(Path::new("/etc/os-release")).unwrap_or_default();
    t.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .unwrap_or("bookworm")
        .trim_matches('"')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        let d = "Types: deb\nURIs: http://example.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\nTypes: deb-src\nURIs: http://src.invalid/\nSuites: bookworm\nComponents: main\n";
        let s = parse_sources(d, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].uri, "http://example.invalid/debian");
        assert_eq!(s[0].suites, ["bookworm", "bookworm-updates"]);
        let l = "# c\ndeb [signed-by=/k.gpg] http://example.invalid/debian bookworm main contrib\ndeb-src http://x bookworm main\n";
        let s = parse_sources(l, false);
        assert_eq!(
            s,
            [HostSource {
                uri: "http://example.invalid/debian".into(),
                suites: vec!["bookworm".into()],
                components: vec!["main".into(), "contrib".into()]
            }]
        );
    }
}
