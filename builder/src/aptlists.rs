//! A cache of apt's package indexes between builds.
//!
//! Every build runs `apt-get update` in a fresh root, which downloads the
//! same indexes again while the mirror's `Release` is unchanged. The lists
//! of the last successful build are kept below the cache folder and seeded
//! into the next root before mmdebstrap's update runs.
//!
//! What apt checks again and what it does not decides what is seeded. apt
//! verifies a cached `InRelease` against the source's key on every update
//! (a tampered one fails the update), but it keeps an index file that the
//! new `InRelease` lists with the same hashes without reading it again. So
//! an index is seeded only when its size and SHA-256 are those that the
//! seeded `InRelease` lists for it; anything else is left for apt to fetch.

use anyhow::{Context, Result};
use sha2::Digest;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

const RELEASE_SUFFIX: &str = "InRelease";

/// The `SHA256:` section of a Release file: path → (size, hex digest).
pub fn sha256_entries(release: &str) -> BTreeMap<String, (u64, String)> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in release.lines() {
        if !line.starts_with(' ') {
            inside = line.trim_end() == "SHA256:";
            continue;
        }
        if !inside {
            continue;
        }
        let mut f = line.split_whitespace();
        if let (Some(hash), Some(size), Some(path), None) = (f.next(), f.next(), f.next(), f.next())
        {
            if let Ok(size) = size.parse() {
                out.insert(path.to_string(), (size, hash.to_ascii_lowercase()));
            }
        }
    }
    out
}

fn file_sha256(p: &Path) -> Result<(u64, String)> {
    let (h, n) = crate::hash::sparse_sha256(p)?;
    Ok((n, crate::hash::hex(&h.finalize())))
}

/// The lists apt wrote for one `InRelease`: `<prefix>InRelease` and every
/// `<prefix><path with / as _>` for the paths it lists.
fn release_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(String, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let prefix = name.strip_suffix(RELEASE_SUFFIX)?.to_string();
            e.file_type().ok()?.is_file().then(|| (prefix, e.path()))
        })
        .collect();
    v.sort();
    v
}

/// Copies into `dest` (created) the cached lists that may be seeded: each
/// `InRelease`, and the index files whose size and SHA-256 match its
/// listing. Returns how many index files were seeded. A cache that is
/// missing or unreadable seeds nothing: apt then downloads everything.
pub fn seed(cache: &Path, dest: &Path) -> Result<usize> {
    fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
    let mut seeded = 0;
    for (prefix, release) in release_files(cache) {
        let Ok(text) = fs::read_to_string(&release) else {
            continue;
        };
        let mut picked = Vec::new();
        for (path, (size, hash)) in sha256_entries(&text) {
            let name = format!("{prefix}{}", path.replace('/', "_"));
            let p = cache.join(&name);
            if !p.is_file() {
                continue;
            }
            match file_sha256(&p) {
                Ok((n, h)) if n == size && h == hash => picked.push(name),
                _ => {}
            }
        }
        if picked.is_empty() {
            continue;
        }
        let rel_name = format!("{prefix}{RELEASE_SUFFIX}");
        for name in picked.iter().chain(std::iter::once(&rel_name)) {
            fs::copy(cache.join(name), dest.join(name))
                .with_context(|| format!("seeding {name} into {}", dest.display()))?;
        }
        seeded += picked.len();
    }
    Ok(seeded)
}

/// Keeps the lists of a successful build (`from`, as apt left them) in the
/// cache: per `InRelease`, its old files are replaced by the new ones, each
/// written to a temporary name and renamed, so a build reading the cache at
/// the same time sees whole files (a mismatch only means no seeding).
/// Lists of other sources stay for the builds that use them.
pub fn store(from: &Path, cache: &Path) -> Result<()> {
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let cached: Vec<String> = fs::read_dir(cache)
        .with_context(|| format!("reading {}", cache.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for (prefix, _) in release_files(from) {
        let mut fresh = Vec::new();
        for e in fs::read_dir(from)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && e.file_type()?.is_file() {
                fresh.push(name);
            }
        }
        for name in cached.iter().filter(|n| n.starts_with(&prefix)) {
            if !fresh.contains(name) {
                let _ = fs::remove_file(cache.join(name));
            }
        }
        for name in &fresh {
            let tmp = cache.join(format!(".{name}.{}", std::process::id()));
            fs::copy(from.join(name), &tmp)
                .with_context(|| format!("copying {name} into {}", cache.display()))?;
            fs::rename(&tmp, cache.join(name))
                .with_context(|| format!("renaming {} into place", tmp.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(entries: &[(&str, &[u8])]) -> String {
        let mut s = String::from("Origin: Test\nSuite: t\nMD5Sum:\n 0 0 ignored\nSHA256:\n");
        for (path, body) in entries {
            let h = crate::hash::hex(&sha2::Sha256::digest(body));
            s.push_str(&format!(" {h} {:>8} {path}\n", body.len()));
        }
        s
    }

    #[test]
    fn parses_only_the_sha256_section() {
        let r = release(&[("main/binary-amd64/Packages", b"abc")]);
        let e = sha256_entries(&r);
        assert_eq!(e.len(), 1);
        assert_eq!(e["main/binary-amd64/Packages"].0, 3);
    }

    #[test]
    fn seeds_only_indexes_that_match_their_release() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        fs::create_dir(&cache).unwrap();
        let p = "m_debian_dists_bookworm_";
        let good = b"Package: a\n".as_slice();
        let tampered = b"Package: evil\n".as_slice();
        fs::write(
            cache.join(format!("{p}InRelease")),
            release(&[
                ("main/binary-amd64/Packages", good),
                ("main/i18n/Translation-en", b"x"),
                ("contrib/binary-amd64/Packages", b"Package: b\n"),
            ]),
        )
        .unwrap();
        fs::write(cache.join(format!("{p}main_binary-amd64_Packages")), good).unwrap();
        fs::write(
            cache.join(format!("{p}contrib_binary-amd64_Packages")),
            tampered,
        )
        .unwrap();
        fs::write(cache.join("lock"), b"").unwrap();
        let dest = d.path().join("dest");
        assert_eq!(seed(&cache, &dest).unwrap(), 1);
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                format!("{p}InRelease"),
                format!("{p}main_binary-amd64_Packages")
            ]
        );
    }

    #[test]
    fn a_missing_cache_seeds_nothing() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            seed(&d.path().join("none"), &d.path().join("dest")).unwrap(),
            0
        );
    }

    #[test]
    fn store_replaces_one_sources_lists_and_keeps_the_others() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        fs::create_dir(&cache).unwrap();
        fs::write(cache.join("a_InRelease"), "old").unwrap();
        fs::write(cache.join("a_main_Packages"), "old").unwrap();
        fs::write(cache.join("a_gone_Packages"), "old").unwrap();
        fs::write(cache.join("b_InRelease"), "other").unwrap();
        let from = d.path().join("from");
        fs::create_dir(&from).unwrap();
        fs::write(from.join("a_InRelease"), "new").unwrap();
        fs::write(from.join("a_main_Packages"), "new").unwrap();
        fs::write(from.join("lock"), "").unwrap();
        store(&from, &cache).unwrap();
        let read = |n: &str| fs::read_to_string(cache.join(n)).ok();
        assert_eq!(read("a_InRelease").as_deref(), Some("new"));
        assert_eq!(read("a_main_Packages").as_deref(), Some("new"));
        assert_eq!(read("a_gone_Packages"), None);
        assert_eq!(read("b_InRelease").as_deref(), Some("other"));
        assert_eq!(read("lock"), None);
    }
}
