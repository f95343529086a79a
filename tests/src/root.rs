//! A real Debian root for the patch-engine tests: made once by `mmdebstrap`
//! from the host's own mirror and kept as a tarball in the test cache, then
//! unpacked afresh for each test. Commands run inside it in a private mount
//! namespace (its own /proc, the host's /dev) under chroot, so dpkg,
//! maintainer scripts and apt all act on the test root only.

use crate::{cache_dir, mirror, sh, FileLock};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The cached tarball of a minimal bookworm root (apt variant), and the
/// original `base-files` .deb it was made with (fixtures repack it).
pub struct CachedRoot {
    pub tarball: PathBuf,
    pub base_files_deb: PathBuf,
}

pub fn cached_root() -> CachedRoot {
    let dir = cache_dir();
    let suite = mirror::host_codename();
    let tarball = dir.join(format!("{suite}-root.tar"));
    let debs = dir.join(format!("{suite}-debs"));
    let _lock = FileLock::take(&dir.join("root.lock"));
    if !tarball.exists() {
        let mirror = mirror::debian_mirror(&suite).unwrap_or_else(|| {
            panic!("no Debian source for {suite} in the host's apt sources; set BOOTPATCH_MIRROR")
        });
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::create_dir_all(&debs).unwrap();
        let tmp = dir.join(format!("{suite}-root.tar.partial"));
        let mut c = Command::new("mmdebstrap");
        c.args([
            "--quiet",
            "--variant=apt",
            "--mode=root",
            "--format=tar",
            "--skip=download/empty",
            "--skip=essential/unlink",
        ])
        .arg(format!(
            "--customize-hook=cp \"$1\"/var/cache/apt/archives/base-files_*.deb {}/",
            debs.display()
        ))
        .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb")
        .arg(&suite)
        .arg(&tmp)
        .arg(format!("deb {mirror} {suite} main"));
        sh(c);
        std::fs::rename(&tmp, &tarball).unwrap();
    }
    let base_files_deb = std::fs::read_dir(&debs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("base-files_")
        })
        .expect("base-files .deb kept from mmdebstrap");
    CachedRoot {
        tarball,
        base_files_deb,
    }
}

/// The cached tarball of the same minimal root with the real `systemd` and `dbus` packages in
/// it, for the host-entry tests: systemctl's own chroot check, and a real systemd booted as
/// PID 1 of a private PID namespace ([`crate::standin::StandInHost::boot_systemd`]).
pub fn cached_systemd_root() -> PathBuf {
    let dir = cache_dir();
    let suite = mirror::host_codename();
    let tarball = dir.join(format!("{suite}-root-systemd-dbus.tar"));
    let _lock = FileLock::take(&dir.join("root-systemd.lock"));
    if !tarball.exists() {
        let mirror = mirror::debian_mirror(&suite).unwrap_or_else(|| {
            panic!("no Debian source for {suite} in the host's apt sources; set BOOTPATCH_MIRROR")
        });
        let tmp = dir.join(format!("{suite}-root-systemd-dbus.tar.partial"));
        let mut c = Command::new("mmdebstrap");
        c.args([
            "--quiet",
            "--variant=apt",
            "--mode=root",
            "--format=tar",
            "--include=systemd,dbus",
            "--skip=download/empty",
            "--skip=essential/unlink",
        ])
        .arg("--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb")
        .arg(&suite)
        .arg(&tmp)
        .arg(format!("deb {mirror} {suite} main"));
        sh(c);
        std::fs::rename(&tmp, &tarball).unwrap();
    }
    tarball
}

/// A fresh Debian root in a temporary directory.
pub struct Root {
    dir: tempfile::TempDir,
}

impl Default for Root {
    fn default() -> Self {
        Self::new()
    }
}

impl Root {
    /// Unpacks the cached root and installs bootpatch at /usr/local/sbin.
    pub fn new() -> Root {
        Self::from_tarball(&cached_root().tarball)
    }

    /// The same with the real systemd and dbus packages installed (not running unless booted
    /// by [`crate::standin::StandInHost::boot_systemd`]).
    pub fn with_systemd() -> Root {
        Self::from_tarball(&cached_systemd_root())
    }

    fn from_tarball(tarball: &Path) -> Root {
        let dir = tempfile::Builder::new()
            .prefix("bootpatch-root-")
            .tempdir_in(cache_dir())
            .unwrap();
        sh({
            let mut c = Command::new("tar");
            c.arg("-xf").arg(tarball).arg("-C").arg(dir.path());
            c
        });
        let root = Root { dir };
        let bin = root.path("usr/local/sbin/bootpatch");
        std::fs::copy(crate::bootpatch_bin(), &bin).unwrap();
        // The root must not reach the network: only the test's repository.
        let _ = std::fs::remove_file(root.path("etc/apt/sources.list"));
        std::fs::create_dir_all(root.path("run")).unwrap();
        root
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the root, from a path relative to its top.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }

    /// The command that runs `argv` inside the root.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "--fork", "--", "sh", "-c"])
            .arg(
                "set -e; r=\"$1\"; shift; mount -t proc proc \"$r/proc\"; mount --rbind /dev \"$r/dev\"; \
                 exec chroot \"$r\" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \"$@\"",
            )
            .arg("inroot")
            .arg(self.dir.path())
            .args(argv)
            .stdin(Stdio::null());
        c
    }

    /// Runs `argv` inside the root and returns its output.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv).output().expect("running unshare")
    }

    /// Runs `argv` inside the root and panics on failure.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} in root failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The installed version of a package, or None.
    pub fn version_of(&self, pkg: &str) -> Option<String> {
        let out = self.run(&["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", pkg]);
        let s = String::from_utf8_lossy(&out.stdout).into_owned();
        s.strip_prefix("ii  ").map(|v| v.trim().to_string())
    }

    /// Copies files into the root (e.g. fixture .debs to install).
    pub fn put(&self, src: &Path, rel_dir: &str) -> String {
        let d = self.path(rel_dir);
        std::fs::create_dir_all(&d).unwrap();
        let name = src.file_name().unwrap();
        std::fs::copy(src, d.join(name)).unwrap();
        format!("/{}/{}", rel_dir.trim_matches('/'), name.to_string_lossy())
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_default()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
}

/// A root with the version-1 fixtures installed and a repository of `repo_debs`
/// at /srv/bootpatch-repo (bookworm-updates), signed by `key`, which the
/// root's bootpatch config uses alone (`sourcesMode: only`).
pub fn fixture_node(repo_debs: &[PathBuf], key: &crate::repo::Key) -> Root {
    fixture_node_on(Root::new(), repo_debs, key)
}

/// [`fixture_node`] on a given root (e.g. [`Root::with_systemd`]).
pub fn fixture_node_on(root: Root, repo_debs: &[PathBuf], key: &crate::repo::Key) -> Root {
    let mut args = vec!["dpkg".to_string(), "-i".into()];
    for deb in &crate::fixtures::fixtures().v1 {
        args.push(root.put(deb, "var/tmp/v1"));
    }
    root.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    crate::repo::build(
        &root.path("/srv/bootpatch-repo"),
        "bookworm-updates",
        repo_debs,
        Some(key),
    );
    let indented: String = key
        .armored
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    root.write(
        "etc/bootpatch/config.yaml",
        &format!(
            "sourcesMode: only\nsources:\n  - name: fixtures\n    uris: [\"file:/srv/bootpatch-repo\"]\n    suites: [bookworm-updates]\n    signedBy: |\n{indented}"
        ),
    );
    root
}
