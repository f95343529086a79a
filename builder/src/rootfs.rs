//! The image's root file system: `mmdebstrap` into a directory, then the
//! node's own files (bootpatch, its first-boot unit and config, apt sources,
//! fstab, for systemd-boot the ESP kernel hook), then image hygiene and time clamping.
//!
//! This module writes only below the target directory it is given; it never
//! mounts anything and never touches the build host's own configuration.

use crate::cmd;
use crate::lock::Lock;
use crate::progress::Progress;
use crate::spec::{SourceSpec, Spec};
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A package source with its mirror resolved to URIs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    pub name: String,
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    pub signed_by: String,
}

/// Resolves each spec source against the host's apt sources.
pub fn resolve_sources(spec: &Spec, host: &[crate::hostapt::HostSource]) -> Result<Vec<Source>> {
    let keyring = match spec.os.family {
        crate::spec::Family::Ubuntu => "/usr/share/keyrings/ubuntu-archive-keyring.gpg",
        _ => "/usr/share/keyrings/debian-archive-keyring.gpg",
    };
    spec.sources
        .iter()
        .map(|s: &SourceSpec| {
            let uris = match &s.mirror {
                Some(m) => vec![crate::hostapt::resolve(m, host)
                    .with_context(|| format!("resolving mirror `{m}` of source `{}`", s.name))?],
                None => s.uris.clone(),
            };
            Ok(Source {
                name: s.name.clone(),
                uris,
                suites: s.suites.clone(),
                components: s.components.clone(),
                signed_by: s.signed_by.clone().unwrap_or_else(|| keyring.to_string()),
            })
        })
        .collect()
}

/// The deb822 text of one source, as written into the image.
pub fn deb822(s: &Source) -> String {
    format!(
        "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\nSigned-By: {}\n",
        s.uris.join(" "),
        s.suites.join(" "),
        s.components.join(" "),
        s.signed_by
    )
}

/// Where packages come from for this build.
#[derive(Debug)]
pub enum Origin<'a> {
    /// The mirrors; downloaded .debs are kept in the cache folder.
    Network { cache: &'a Path },
    /// A local repository made from packages.lock and the cache only; every
    /// locked package is asked for by name (the repository's index carries
    /// no priorities, so the variant alone would not pick the same set).
    Locked {
        repo: &'a Path,
        packages: Vec<String>,
    },
}

/// What the builder adds to a plain mmdebstrap run (the benchmark's floor
/// runs it plain).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tuning<'a> {
    /// Generate each kernel's initramfs once, at the end. A plain run makes
    /// it twice: the kernel's postinst hook, then initramfs-tools' trigger
    /// when later packages (udev, systemd, ...) add initramfs hooks.
    pub initramfs_once: bool,
    /// The apt-lists cache folder ([`crate::aptlists`]): seeded into the
    /// root before `apt-get update`, stored again after a successful run.
    pub apt_lists: Option<&'a Path>,
}

/// The customize hook of [`Tuning::initramfs_once`]: one `update-initramfs
/// -c` per installed kernel that has no initramfs yet.
const INITRAMFS_ONCE_HOOK: &str = r#"for k in "$1"/boot/vmlinuz-*; do [ -e "$k" ] || continue; v=${k##*/vmlinuz-}; [ -e "$1/boot/initrd.img-$v" ] || chroot "$1" update-initramfs -c -k "$v" || exit 1; done"#;

/// Runs mmdebstrap into `target` (which must not exist).
pub fn mmdebstrap(
    spec: &Spec,
    sources: &[Source],
    origin: &Origin,
    tuning: Tuning,
    target: &Path,
    epoch: u64,
    progress: &Progress,
) -> Result<()> {
    cmd::require("mmdebstrap", "mmdebstrap")?;
    let mut include = vec![spec.kernel.clone()];
    include.extend(spec.packages.iter().cloned());
    for p in spec.boot.loader.packages(spec.os.family) {
        if !include.iter().any(|i| i == p) {
            include.push(p.to_string());
        }
    }
    if let Origin::Locked { packages, .. } = origin {
        include = packages.clone();
    }
    let mut c = Command::new("mmdebstrap");
    c.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("LC_ALL", "C.UTF-8")
        .arg("--mode=root")
        .arg("--format=directory")
        .arg(format!("--variant={}", spec.rootfs.variant))
        .arg(format!("--architectures={}", spec.architecture))
        .arg(format!("--include={}", include.join(",")))
        .arg("--aptopt=Acquire::Languages \"none\"");
    if spec.rootfs.exclude_docs {
        for o in [
            "path-exclude=/usr/share/doc/*",
            "path-include=/usr/share/doc/*/copyright",
            "path-exclude=/usr/share/man/*",
            "path-exclude=/usr/share/info/*",
            "path-exclude=/usr/share/lintian/*",
            "path-exclude=/usr/share/locale/*",
            "path-include=/usr/share/locale/locale.alias",
        ] {
            c.arg(format!("--dpkgopt={o}"));
        }
    }
    if tuning.initramfs_once {
        // Debian's kernel postinst hook (/etc/kernel/postinst.d/initramfs-tools)
        // skips the initramfs when INITRD=No; with no initramfs yet, the
        // initramfs-tools trigger has nothing to update.
        c.env("INITRD", "No")
            .arg(format!("--customize-hook={INITRAMFS_ONCE_HOOK}"));
    }
    // The seeded and the saved lists live beside the target, in the work folder.
    let lists = match (origin, tuning.apt_lists) {
        (Origin::Network { .. }, Some(cache)) => {
            let base = target.parent().unwrap_or(Path::new("/"));
            let (seed, out) = (base.join("apt-lists-in"), base.join("apt-lists-out"));
            let _ = fs::remove_dir_all(&seed);
            let _ = fs::remove_dir_all(&out);
            let n = crate::aptlists::seed(cache, &seed)?;
            progress.status(&format!("apt lists: {n} index files from the cache"));
            fs::create_dir_all(&out)?;
            c.arg(format!(
                "--setup-hook=sync-in {} /var/lib/apt/lists/",
                seed.display()
            ))
            .arg(format!(
                "--customize-hook=sync-out /var/lib/apt/lists {}",
                out.display()
            ));
            Some((cache, seed, out))
        }
        _ => None,
    };
    match origin {
        Origin::Network { cache } => {
            fs::create_dir_all(cache)?;
            let cache = cache.display().to_string();
            // Keep the essential .debs too (mmdebstrap unlinks them by default):
            // the lock needs every installed package's file.
            c.arg("--skip=essential/unlink")
                .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives")
                .arg(format!(
                    "--setup-hook=sync-in {cache} /var/cache/apt/archives/"
                ))
                .arg(format!(
                    "--customize-hook=sync-out /var/cache/apt/archives {cache}"
                ));
            c.arg(&spec.os.suite).arg(target);
            for s in sources {
                for u in &s.uris {
                    for suite in &s.suites {
                        // apt checks the lists against the spec's key, not
                        // whatever the build host trusts.
                        c.arg(format!(
                            "deb [signed-by={}] {u} {suite} {}",
                            key_file(s, target)?.display(),
                            s.components.join(" ")
                        ));
                    }
                }
            }
        }
        Origin::Locked { repo, .. } => {
            c.arg("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount");
            c.arg(&spec.os.suite).arg(target);
            c.arg(format!(
                "deb [signed-by={}] file://{} ./",
                repo.join(crate::lock::LOCAL_REPO_KEY).display(),
                repo.display()
            ));
        }
    }
    cmd::run_streaming(&mut c, |line| {
        if let Some(msg) = line.strip_prefix("I: ") {
            progress.status(msg);
        }
    })?;
    if let Some((cache, seed, out)) = lists {
        crate::aptlists::store(&out, cache)?;
        let _ = fs::remove_dir_all(seed);
        let _ = fs::remove_dir_all(out);
    }
    Ok(())
}

/// The keyring file of a source on the build host: its `signedBy` path, or
/// an inline (armored) key written beside the target as `<name>.asc`.
fn key_file(s: &Source, target: &Path) -> Result<PathBuf> {
    if !s.signed_by.contains('\n') {
        return Ok(PathBuf::from(&s.signed_by));
    }
    let p = target
        .parent()
        .unwrap_or(Path::new("/"))
        .join(format!("{}.asc", s.name));
    fs::write(&p, &s.signed_by).with_context(|| format!("writing {}", p.display()))?;
    Ok(p)
}

/// Everything the node needs beyond its packages.
pub struct NodeFiles<'a> {
    /// None: bootpatch is not baked in (no binary, unit or config).
    pub bootpatch_binary: Option<&'a Path>,
    /// The first-boot unit: its file name and text.
    pub firstboot_unit: (&'a str, &'a str),
    pub bootpatch_config: &'a str,
    pub sources: &'a [Source],
    pub root_partuuid: &'a str,
    pub esp_partuuid: &'a str,
    pub loader: crate::spec::Loader,
}

/// Writes a file into the root, replacing (never following) what is there.
pub(crate) fn write(root: &Path, rel: &str, content: &[u8], mode: u32) -> Result<()> {
    let p = root.join(rel.trim_start_matches('/'));
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    // Never write through a symlink left by a package (it could point out of the root).
    if p.symlink_metadata().is_ok() {
        fs::remove_file(&p).with_context(|| format!("replacing {}", p.display()))?;
    }
    fs::write(&p, content).with_context(|| format!("writing {}", p.display()))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Keeps the kernel and initrd that systemd-boot loads from the ESP in step
/// with the newest ones in /boot, so a kernel update by bootpatch boots.
const ESP_HOOK: &str = r#"#!/bin/sh
# Installed by bootpatch's image builder: systemd-boot loads /vmlinuz and
# /initrd.img from the ESP (/boot/efi); copy the given (or newest) kernel there.
set -e
esp=/boot/efi
[ -d "$esp/loader" ] || exit 0
v=${1:-}
[ -n "$v" ] || v=$(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V | tail -n 1)
[ -n "$v" ] && [ -f "/boot/vmlinuz-$v" ] && [ -f "/boot/initrd.img-$v" ] || exit 0
cp "/boot/vmlinuz-$v" "$esp/vmlinuz.new" && mv "$esp/vmlinuz.new" "$esp/vmlinuz"
cp "/boot/initrd.img-$v" "$esp/initrd.img.new" && mv "$esp/initrd.img.new" "$esp/initrd.img"
"#;

/// bootpatch, its first-boot unit (enabled) and its config.
fn install_bootpatch(root: &Path, f: &NodeFiles, binary: &Path) -> Result<()> {
    let bin = fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    write(root, "/usr/local/sbin/bootpatch", &bin, 0o755)?;
    let (unit_name, unit) = f.firstboot_unit;
    let unit_path = format!("/etc/systemd/system/{unit_name}");
    write(root, &unit_path, unit.as_bytes(), 0o644)?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    let link = wants.join(unit_name);
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link)?;
    }
    symlink(&unit_path, &link).with_context(|| format!("enabling {unit_name}"))?;
    write(
        root,
        "/etc/bootpatch/config.yaml",
        f.bootpatch_config.as_bytes(),
        0o644,
    )?;
    fs::create_dir_all(root.join("var/lib/bootpatch"))?;
    Ok(())
}

/// Installs bootpatch (unless not baked), its unit, config, apt sources
/// and the boot plumbing.
pub fn install_node_files(root: &Path, f: &NodeFiles) -> Result<()> {
    if let Some(binary) = f.bootpatch_binary {
        install_bootpatch(root, f, binary)?;
    }

    let _ = fs::remove_file(root.join("etc/apt/sources.list"));
    for s in f.sources {
        write(
            root,
            &format!("/etc/apt/sources.list.d/{}.sources", s.name),
            deb822(s).as_bytes(),
            0o644,
        )?;
    }

    let fstab = format!(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         PARTUUID={} / ext4 defaults,discard,errors=remount-ro 0 1\n\
         PARTUUID={} /boot/efi vfat defaults,umask=0077,nofail 0 2\n",
        f.root_partuuid, f.esp_partuuid
    );
    write(root, "/etc/fstab", fstab.as_bytes(), 0o644)?;
    fs::create_dir_all(root.join("boot/efi"))?;
    if root.join("usr/sbin/sshd").exists() {
        // Host keys are removed from the image; make them on the first start
        // even when no cloud datasource does (sshd -t fails without keys).
        write(
            root,
            "/etc/systemd/system/ssh.service.d/10-bootpatch-host-keys.conf",
            b"[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n",
            0o644,
        )?;
    }
    // GRUB reads kernels from /boot (update-grub's own kernel hook lists
    // them); systemd-boot needs them copied to the ESP.
    if f.loader == crate::spec::Loader::SystemdBoot {
        write(
            root,
            "/etc/kernel/postinst.d/zz-bootpatch-esp",
            ESP_HOOK.as_bytes(),
            0o755,
        )?;
        write(
            root,
            "/etc/initramfs/post-update.d/zz-bootpatch-esp",
            ESP_HOOK.as_bytes(),
            0o755,
        )?;
    }
    Ok(())
}

/// What hygiene removed or reset, for the build log.
pub fn hygiene(root: &Path, h: &crate::spec::Hygiene) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let rm = |rel: &str, done: &mut Vec<String>| -> Result<()> {
        let p = root.join(rel);
        if p.symlink_metadata().is_ok() {
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
            done.push(format!("removed /{rel}"));
        }
        Ok(())
    };
    let empty_dir = |rel: &str, keep: &[&str], done: &mut Vec<String>| -> Result<()> {
        let d = root.join(rel);
        let Ok(rd) = fs::read_dir(&d) else {
            return Ok(());
        };
        for e in rd {
            let e = e?;
            let name = e.file_name();
            if keep.iter().any(|k| name == *k) {
                continue;
            }
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
            done.push(format!("removed /{rel}/{}", name.to_string_lossy()));
        }
        Ok(())
    };
    if h.empty_machine_id {
        write(root, "/etc/machine-id", b"", 0o444)?;
        let dbus = root.join("var/lib/dbus/machine-id");
        if dbus.symlink_metadata().is_ok_and(|m| m.is_file()) {
            fs::remove_file(&dbus)?;
        }
        done.push("emptied /etc/machine-id".into());
    }
    if h.remove_ssh_host_keys {
        if let Ok(rd) = fs::read_dir(root.join("etc/ssh")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                    fs::remove_file(e.path())?;
                    done.push(format!(
                        "removed /etc/ssh/{}",
                        e.file_name().to_string_lossy()
                    ));
                }
            }
        }
    }
    if h.remove_apt_lists {
        empty_dir("var/lib/apt/lists", &["partial", "lock"], &mut done)?;
        empty_dir("var/lib/apt/lists/partial", &[], &mut done)?;
        empty_dir("var/cache/apt/archives", &["partial", "lock"], &mut done)?;
        empty_dir("var/cache/apt/archives/partial", &[], &mut done)?;
        // mmdebstrap's sync-in copied these from the host's package cache with their times:
        // without this, the image would carry the cache's age, and a build with a warm
        // cache would differ from a locked rebuild of it.
        for kept in [
            "var/cache/apt/archives/partial",
            "var/cache/apt/archives/lock",
        ] {
            touch_now(&root.join(kept))?;
        }
        for f in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
        ] {
            rm(f, &mut done)?;
        }
    }
    if h.remove_logs {
        remove_files_keep_dirs(&root.join("var/log"), &mut done)?;
    }
    if h.remove_random_seed {
        rm("var/lib/systemd/random-seed", &mut done)?;
        rm("var/lib/urandom/random-seed", &mut done)?;
    }
    // Always: the build host must not leak in, and these differ build to build.
    write(root, "/etc/hostname", b"localhost\n", 0o644)?;
    write(
        root,
        "/etc/hosts",
        b"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n",
        0o644,
    )?;
    rm("etc/resolv.conf", &mut done)?;
    rm("var/cache/ldconfig/aux-cache", &mut done)?;
    empty_dir("tmp", &[], &mut done)?;
    empty_dir("var/tmp", &[], &mut done)?;
    for d in ["var/lib/dpkg", "var/cache/debconf"] {
        if let Ok(rd) = fs::read_dir(root.join(d)) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().ends_with("-old") {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    Ok(done)
}

fn remove_files_keep_dirs(dir: &Path, done: &mut Vec<String>) -> Result<()> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            remove_files_keep_dirs(&p, done)?;
        } else {
            fs::remove_file(&p)?;
            done.push(format!("removed {}", p.display()));
        }
    }
    Ok(())
}

/// Every path below `root` (root itself included as ""), sorted, no following
/// of symlinks.
pub fn walk(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![PathBuf::new()];
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(root.join(&rel))
            .with_context(|| format!("reading {}", root.join(&rel).display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort();
    Ok(out)
}

/// Gives an entry the current time (then clamped to the epoch like everything the build
/// made). A missing entry is fine.
fn touch_now(p: &Path) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    if p.symlink_metadata().is_err() {
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let t = Timespec {
        tv_sec: now.as_secs() as i64,
        tv_nsec: 0,
    };
    utimensat(
        CWD,
        p,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("setting times of {}", p.display()))
}

/// Sets access and modification times of every entry to min(mtime, epoch),
/// so file times do not depend on when the build ran.
pub fn clamp_times(root: &Path, paths: &[PathBuf], epoch: u64) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    for rel in paths {
        let p = root.join(rel);
        let md = p
            .symlink_metadata()
            .with_context(|| format!("stat {}", p.display()))?;
        let m = {
            use std::os::unix::fs::MetadataExt;
            (md.mtime().max(0) as u64).min(epoch)
        };
        let t = Timespec {
            tv_sec: m as i64,
            tv_nsec: 0,
        };
        utimensat(
            CWD,
            &p,
            &Timestamps {
                last_access: t,
                last_modification: t,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .with_context(|| format!("setting times of {}", p.display()))?;
    }
    Ok(())
}

/// Whether the kernel has a driver, built in or as a module.
pub fn kernel_has_driver(root: &Path, kernel: &str, name: &str) -> Result<bool> {
    let dir = root.join("lib/modules").join(kernel);
    let file = format!("/{name}.ko");
    for list in ["modules.builtin", "modules.order", "modules.dep"] {
        let p = dir.join(list);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        };
        let found = text.lines().any(|l| {
            let path = l.split(':').next().unwrap_or("");
            path.ends_with(&file)
                || [".xz", ".zst", ".gz"]
                    .iter()
                    .any(|z| path.ends_with(&format!("{file}{z}")))
        });
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Installed packages (name, version, architecture) from the root's dpkg status.
pub fn installed_packages(root: &Path) -> Result<Vec<(String, String, String)>> {
    let out = cmd::run(
        Command::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args([
                "-W",
                "-f",
                "${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
            ]),
    )?;
    Ok(parse_dpkg_query(&out))
}

/// Parses `dpkg-query -W -f '${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n'`,
/// keeping installed packages only.
pub fn parse_dpkg_query(out: &str) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status = f.next()?;
            let (name, ver, arch) = (f.next()?, f.next()?, f.next()?);
            status
                .starts_with("ii")
                .then(|| (name.to_string(), ver.to_string(), arch.to_string()))
        })
        .collect();
    v.sort();
    v
}

const EXTENDED_STATES: &str = "var/lib/apt/extended_states";

/// apt's auto-installed marks in a root, as (package, architecture).
pub fn auto_installed(root: &Path) -> Result<BTreeSet<(String, String)>> {
    let p = root.join(EXTENDED_STATES);
    match fs::read_to_string(&p) {
        Ok(text) => Ok(parse_extended_states(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The packages marked `Auto-Installed: 1` in an `extended_states` file.
pub fn parse_extended_states(text: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for stanza in text.split("\n\n") {
        let field = |k: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
        };
        if let (Some(name), Some(arch), Some(auto)) = (
            field("Package:"),
            field("Architecture:"),
            field("Auto-Installed:"),
        ) {
            if auto == "1" {
                out.insert((name, arch));
            }
        }
    }
    out
}

/// Writes apt's auto-installed marks in one canonical order (by package),
/// so a build from the mirrors and a locked rebuild, whose apt runs resolve
/// in different orders, leave the same bytes.
pub fn write_auto_installed(root: &Path, auto: &BTreeSet<(String, String)>) -> Result<()> {
    let text: String = auto
        .iter()
        .map(|(name, arch)| format!("Package: {name}\nArchitecture: {arch}\nAuto-Installed: 1\n\n"))
        .collect();
    write(root, EXTENDED_STATES, text.as_bytes(), 0o644)
}

/// The point release of a Debian root (`/etc/debian_version`), and the
/// newest kernel version in /boot.
pub fn point_release(root: &Path) -> Result<String> {
    Ok(fs::read_to_string(root.join("etc/debian_version"))
        .context("reading /etc/debian_version")?
        .trim()
        .to_string())
}

pub fn newest_kernel(root: &Path) -> Result<String> {
    let mut versions: Vec<String> = fs::read_dir(root.join("boot"))?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_string)
        })
        .filter(|v| root.join(format!("boot/initrd.img-{v}")).exists())
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    match versions.pop() {
        Some(v) => Ok(v),
        None => bail!("no kernel with an initrd in /boot of the root file system"),
    }
}

/// Orders kernel versions like `sort -V` for the usual shapes (6.1.0-28-cloud-amd64).
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |s: &str| -> Vec<(u64, String)> {
        s.split(['.', '-'])
            .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string()))
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Checks a lock against what was installed.
pub fn check_against_lock(installed: &[(String, String, String)], lock: &Lock) -> Result<()> {
    let locked: Vec<(String, String, String)> = lock
        .packages
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.architecture.clone()))
        .collect();
    if installed != locked.as_slice() {
        let extra: Vec<_> = installed.iter().filter(|p| !locked.contains(p)).collect();
        let missing: Vec<_> = locked.iter().filter(|p| !installed.contains(p)).collect();
        bail!("installed packages differ from packages.lock: not in the lock {extra:?}, not installed {missing:?}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_query_output() {
        let out = "ii \tzlib1g\t1:1.2.13.dfsg-1\tamd64\nrc \told\t1.0\tamd64\nii \tbase-files\t12.4+deb12u12\tamd64\n";
        let v = parse_dpkg_query(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, "base-files");
        assert_eq!(v[1].1, "1:1.2.13.dfsg-1");
    }

    #[test]
    fn extended_states_round_trip() {
        let text = "Package: lsb-release\nArchitecture: amd64\nAuto-Installed: 1\n\n\
                    Package: kept\nArchitecture: amd64\nAuto-Installed: 0\n\n\
                    Package: libwrap0\nArchitecture: amd64\nAuto-Installed: 1\n";
        let set = parse_extended_states(text);
        let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["libwrap0", "lsb-release"]);
        let d = tempfile::tempdir().unwrap();
        write_auto_installed(d.path(), &set).unwrap();
        assert_eq!(auto_installed(d.path()).unwrap(), set);
        let written = fs::read_to_string(d.path().join(EXTENDED_STATES)).unwrap();
        assert!(written.starts_with("Package: libwrap0\n"), "{written}");
        assert!(auto_installed(&d.path().join("nowhere"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn kernel_versions_sort() {
        let mut v = [
            "6.1.0-9-cloud-amd64",
            "6.1.0-28-cloud-amd64",
            "6.1.0-10-cloud-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(v[2], "6.1.0-28-cloud-amd64");
    }

    #[test]
    fn deb822_text() {
        let s = Source {
            name: "debian".into(),
            uris: vec!["http://m.example/debian".into()],
            suites: vec!["bookworm".into(), "bookworm-updates".into()],
            components: vec!["main".into()],
            signed_by: "/usr/share/keyrings/debian-archive-keyring.gpg".into(),
        };
        assert_eq!(
            deb822(&s),
            "Types: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn hygiene_cleans_a_root() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for f in [
            "etc/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/sshd_config",
            "var/lib/apt/lists/x_Packages",
            "var/log/apt/history.log",
            "var/lib/systemd/random-seed",
            "etc/resolv.conf",
            "var/cache/apt/pkgcache.bin",
        ] {
            let p = r.join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "x").unwrap();
        }
        hygiene(r, &crate::spec::Hygiene::default()).unwrap();
        assert_eq!(fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert!(!r.join("var/lib/apt/lists/x_Packages").exists());
        assert!(!r.join("var/log/apt/history.log").exists());
        assert!(r.join("var/log/apt").is_dir());
        assert!(!r.join("var/lib/systemd/random-seed").exists());
        assert!(!r.join("etc/resolv.conf").exists());
        assert_eq!(
            fs::read_to_string(r.join("etc/hostname")).unwrap(),
            "localhost\n"
        );
    }
}
