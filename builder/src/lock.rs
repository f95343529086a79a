//! `packages.lock` and the local package cache.
//!
//! A build from the mirrors records every installed package with its exact
//! version and the SHA-256 of its `.deb` (kept in the cache). A `--locked`
//! build checks each cached `.deb` against the lock and serves exactly those
//! files to mmdebstrap from a local repository: no network, same packages.
//! This module never downloads anything.

use crate::cmd;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const FILE_NAME: &str = "packages.lock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lock {
    pub lock_version: u32,
    /// The spec name the lock was made for.
    pub image: String,
    pub suite: String,
    pub architecture: String,
    /// The SOURCE_DATE_EPOCH of the build that made the lock; a `--locked`
    /// build uses it unless the environment sets another.
    pub source_date_epoch: u64,
    /// The package sources the image was built from (written into the image).
    pub sources: Vec<crate::rootfs::Source>,
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    pub sha256: String,
    /// apt's mark for a package pulled in as a dependency rather than asked
    /// for (`apt autoremove` may take it once nothing needs it). A locked
    /// build asks for every package by name, so it restores these marks to
    /// give the same root; a lock without them marks nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_installed: bool,
}

impl LockedPackage {
    /// The file name apt gives the package in its archive cache.
    pub fn deb_file(&self) -> String {
        deb_file(&self.name, &self.version, &self.architecture)
    }
}

pub fn deb_file(name: &str, version: &str, arch: &str) -> String {
    format!("{name}_{}_{arch}.deb", version.replace(':', "%3a"))
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The (package, architecture) pairs apt marked as auto-installed.
    pub fn auto_installed(&self) -> std::collections::BTreeSet<(String, String)> {
        self.packages
            .iter()
            .filter(|p| p.auto_installed)
            .map(|p| (p.name.clone(), p.architecture.clone()))
            .collect()
    }

    /// Records apt's auto-installed marks, given as (package, architecture).
    pub fn with_auto_installed(
        mut self,
        auto: &std::collections::BTreeSet<(String, String)>,
    ) -> Lock {
        for p in &mut self.packages {
            p.auto_installed = auto.contains(&(p.name.clone(), p.architecture.clone()));
        }
        self
    }

    pub fn to_text(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("lock serializes");
        s.push('\n');
        s
    }
}

/// Makes the lock from the installed packages and the cached .debs.
pub fn make(
    installed: &[(String, String, String)],
    cache: &Path,
    image: &str,
    suite: &str,
    architecture: &str,
    epoch: u64,
    sources: &[crate::rootfs::Source],
) -> Result<Lock> {
    let mut packages = Vec::new();
    let mut missing = Vec::new();
    for (name, version, arch) in installed {
        let f = cache.join(deb_file(name, version, arch));
        if !f.exists() {
            missing.push(f.display().to_string());
            continue;
        }
        packages.push(LockedPackage {
            name: name.clone(),
            version: version.clone(),
            architecture: arch.clone(),
            sha256: crate::hash::file_sha256(&f)?,
            auto_installed: false,
        });
    }
    if !missing.is_empty() {
        bail!(
            "installed packages missing from the package cache: {}",
            missing.join(", ")
        );
    }
    Ok(Lock {
        lock_version: 1,
        image: image.to_string(),
        suite: suite.to_string(),
        architecture: architecture.to_string(),
        source_date_epoch: epoch,
        sources: sources.to_vec(),
        packages,
    })
}

/// Checks every locked .deb in the cache and links them into a fresh local
/// repository (`Packages` + `Release`) at `repo`.
pub fn make_local_repo(lock: &Lock, cache: &Path, repo: &Path) -> Result<()> {
    cmd::require("apt-ftparchive", "apt-utils")?;
    fs::create_dir_all(repo)?;
    let mut problems = Vec::new();
    for p in &lock.packages {
        let src = cache.join(p.deb_file());
        if !src.exists() {
            problems.push(format!(
                "{} {}: not in the package cache {}",
                p.name,
                p.version,
                cache.display()
            ));
            continue;
        }
        let sum = crate::hash::file_sha256(&src)?;
        if sum != p.sha256 {
            problems.push(format!(
                "{} {}: cached {} has SHA-256 {sum}, the lock says {}",
                p.name,
                p.version,
                src.display(),
                p.sha256
            ));
            continue;
        }
        let dst = repo.join(p.deb_file());
        if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
        }
    }
    if !problems.is_empty() {
        bail!(
            "the package cache does not match packages.lock:\n  {}",
            problems.join("\n  ")
        );
    }
    let packages = cmd::run(
        Command::new("apt-ftparchive")
            .arg("packages")
            .arg(".")
            .current_dir(repo),
    )?;
    fs::write(repo.join("Packages"), packages)?;
    let release = cmd::run(
        Command::new("apt-ftparchive")
            .args([
                "-o",
                &format!("APT::FTPArchive::Release::Suite={}", lock.suite),
            ])
            .arg("release")
            .arg(".")
            .current_dir(repo),
    )?;
    fs::write(repo.join("Release"), release)?;
    sign_local_repo(repo)?;
    Ok(())
}

/// The key a locked build's local repository is signed with, inside the
/// repository folder so the same absolute path works outside the root and
/// inside it (mmdebstrap mounts the folder at the same place).
pub const LOCAL_REPO_KEY: &str = "local-repo-key.gpg";

/// Signs the local repository with a key made for this build alone, so apt
/// verifies it like any other source (no `trusted=yes`). The secret key
/// lives in a temporary GnuPG home and is gone with it.
fn sign_local_repo(repo: &Path) -> Result<()> {
    cmd::require("gpg", "gnupg")?;
    let home = tempfile::tempdir().context("making a GnuPG home")?;
    let gpg = |args: &[&str]| -> Result<String> {
        cmd::run(
            Command::new("gpg")
                .arg("--homedir")
                .arg(home.path())
                .args([
                    "--batch",
                    "--quiet",
                    "--yes",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args)
                .current_dir(repo),
        )
    };
    gpg(&[
        "--quick-gen-key",
        "bootpatch builder local repository",
        "ed25519",
        "sign",
        "1d",
    ])?;
    gpg(&["--clearsign", "-o", "InRelease", "Release"])?;
    let key = Command::new("gpg")
        .arg("--homedir")
        .arg(home.path())
        .args(["--batch", "--export"])
        .output()
        .context("exporting the local repository key")?;
    if !key.status.success() || key.stdout.is_empty() {
        bail!(
            "exporting the local repository key failed: {}",
            String::from_utf8_lossy(&key.stderr)
        );
    }
    fs::write(repo.join(LOCAL_REPO_KEY), key.stdout)?;
    Ok(())
}

/// The default package cache folder.
pub fn default_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("BUILDER_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("bootpatch-builder")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_file_names_follow_apt() {
        assert_eq!(
            deb_file("zlib1g", "1:1.2.13.dfsg-1", "amd64"),
            "zlib1g_1%3a1.2.13.dfsg-1_amd64.deb"
        );
    }

    #[test]
    fn lock_round_trip_and_cache_check() {
        let d = tempfile::tempdir().unwrap();
        let cache = d.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        fs::write(cache.join("a_1.0_all.deb"), b"pretend deb").unwrap();
        let installed = vec![("a".to_string(), "1.0".to_string(), "all".to_string())];
        let auto = [("a".to_string(), "all".to_string())].into_iter().collect();
        let lock = make(&installed, &cache, "t", "bookworm", "amd64", 1, &[])
            .unwrap()
            .with_auto_installed(&auto);
        assert!(lock.packages[0].auto_installed);
        assert_eq!(lock.auto_installed(), auto);
        let back: Lock = serde_json::from_str(&lock.to_text()).unwrap();
        assert_eq!(back, lock);
        // A lock written before the marks existed still reads: nothing marked.
        let old = lock
            .to_text()
            .replace(",\n      \"autoInstalled\": true", "");
        assert!(!old.contains("autoInstalled"), "{old}");
        let old: Lock = serde_json::from_str(&old).unwrap();
        assert!(old.auto_installed().is_empty());
        let missing = vec![("b".to_string(), "2".to_string(), "all".to_string())];
        assert!(make(&missing, &cache, "t", "bookworm", "amd64", 1, &[]).is_err());
        // A changed byte in the cache is caught before anything is served.
        fs::write(cache.join("a_1.0_all.deb"), b"pretend deb!").unwrap();
        let e = format!(
            "{:#}",
            make_local_repo(&lock, &cache, &d.path().join("repo")).unwrap_err()
        );
        assert!(e.contains("a 1.0") && e.contains("SHA-256"), "{e}");
    }
}
