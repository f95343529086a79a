//! Fixture packages built with `dpkg-deb`: version 1 to install into a test
//! root, version 2 to publish in the signed test repository. One raises the
//! Debian point release (a repacked base-files), one asks for a reboot from
//! its postinst like a kernel does, one changes a conffile and pulls in a new
//! dependency, one can be held in its postinst so a test can kill dpkg
//! mid-install, and one
//! whose upgrade would need a removal, so it is kept back.

use crate::sh;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A package to build.
#[derive(Debug, Clone, Default)]
pub struct Pkg {
    pub name: String,
    pub version: String,
    pub depends: Option<String>,
    pub conflicts: Option<String>,
    pub files: Vec<(String, String)>,
    pub conffiles: Vec<String>,
    pub preinst: Option<String>,
    pub postinst: Option<String>,
}

impl Pkg {
    pub fn new(name: &str, version: &str) -> Pkg {
        Pkg {
            name: name.into(),
            version: version.into(),
            ..Pkg::default()
        }
    }
    pub fn file(mut self, path: &str, content: &str) -> Pkg {
        self.files.push((path.into(), content.into()));
        self
    }
    pub fn conffile(mut self, path: &str, content: &str) -> Pkg {
        self.conffiles.push(path.into());
        self.file(path, content)
    }
    pub fn depends(mut self, d: &str) -> Pkg {
        self.depends = Some(d.into());
        self
    }
    pub fn conflicts(mut self, c: &str) -> Pkg {
        self.conflicts = Some(c.into());
        self
    }
    pub fn preinst(mut self, script: &str) -> Pkg {
        self.preinst = Some(script.into());
        self
    }
    pub fn postinst(mut self, script: &str) -> Pkg {
        self.postinst = Some(script.into());
        self
    }

    /// Builds `name_version_all.deb` in `out`.
    pub fn build(&self, out: &Path) -> PathBuf {
        let work = tempfile::tempdir().unwrap();
        let d = work.path();
        std::fs::create_dir_all(d.join("DEBIAN")).unwrap();
        for (p, c) in &self.files {
            let f = d.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, c).unwrap();
        }
        let mut control = format!(
            "Package: {}\nVersion: {}\nArchitecture: all\nMaintainer: bootpatch tests <tests@bootpatch.invalid>\nSection: misc\nPriority: optional\n",
            self.name, self.version
        );
        if let Some(dep) = &self.depends {
            control += &format!("Depends: {dep}\n");
        }
        if let Some(c) = &self.conflicts {
            control += &format!("Conflicts: {c}\n");
        }
        control += &format!(
            "Description: bootpatch test fixture {}\n Built by the bootpatch test suite.\n",
            self.name
        );
        std::fs::write(d.join("DEBIAN/control"), control).unwrap();
        if !self.conffiles.is_empty() {
            std::fs::write(d.join("DEBIAN/conffiles"), self.conffiles.join("\n") + "\n").unwrap();
        }
        for (name, script) in [("preinst", &self.preinst), ("postinst", &self.postinst)] {
            if let Some(s) = script {
                let p = d.join("DEBIAN").join(name);
                std::fs::write(&p, s).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        let deb = out.join(format!("{}_{}_all.deb", self.name, self.version));
        let mut c = Command::new("dpkg-deb");
        c.args(["--root-owner-group", "-Zgzip", "--build"])
            .arg(d)
            .arg(&deb);
        sh(c);
        deb
    }
}

/// The reboot-required fixture's postinst, as a kernel package's hook does it.
pub const REBOOT_POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  touch /run/reboot-required\n  grep -qx bootpatch-fixture-kernel /run/reboot-required.pkgs 2>/dev/null || echo bootpatch-fixture-kernel >> /run/reboot-required.pkgs\nfi\n";

/// The slow fixture's preinst: when /var/tmp/hold-unpack exists it signals
/// /var/tmp/unpack-held and sleeps. dpkg has by then marked the package
/// half-installed and to be reinstalled, as a power cut mid-unpack leaves it.
pub const HOLD_PREINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = upgrade ] && [ -e /var/tmp/hold-unpack ]; then\n  rm -f /var/tmp/hold-unpack\n  touch /var/tmp/unpack-held\n  sleep 120\nfi\n";

/// The slow fixture's postinst: when /var/tmp/hold-install exists it signals
/// /var/tmp/install-held and sleeps, so a test can kill dpkg right there.
pub const HOLD_POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -e /var/tmp/hold-install ]; then\n  rm -f /var/tmp/hold-install\n  touch /var/tmp/install-held\n  sleep 120\nfi\n";

/// The fixture set: what the root starts with and what the repository offers.
pub struct Fixtures {
    pub dir: PathBuf,
    pub v1: Vec<PathBuf>,
    pub v2: Vec<PathBuf>,
    /// The Patched Version base-files v2 leads to (`12.99`).
    pub new_point_release: String,
    pub base_files_v2_version: String,
}

/// Repacks a real package with a new version (from its old one) after
/// `edit` has changed its unpacked tree. Returns the .deb and the version.
pub fn repack(
    orig: &Path,
    out: &Path,
    new_version: impl FnOnce(&str) -> String,
    edit: impl FnOnce(&Path, &str),
) -> (PathBuf, String) {
    let work = tempfile::tempdir().unwrap();
    let d = work.path().join("pkg");
    let mut c = Command::new("dpkg-deb");
    c.arg("-R").arg(orig).arg(&d);
    sh(c);
    let control = std::fs::read_to_string(d.join("DEBIAN/control")).unwrap();
    let field = |k: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_string()
    };
    let (name, old, arch) = (field("Package"), field("Version"), field("Architecture"));
    let new = new_version(&old);
    std::fs::write(
        d.join("DEBIAN/control"),
        control.replace(&format!("Version: {old}"), &format!("Version: {new}")),
    )
    .unwrap();
    edit(&d, &name);
    // Keep the package's own checksums true to its contents.
    let md5 = d.join("DEBIAN/md5sums");
    if md5.exists() {
        let text = std::fs::read_to_string(&md5).unwrap();
        let mut fixed = String::new();
        for line in text.lines() {
            let Some((_, file)) = line.split_once("  ") else {
                continue;
            };
            let mut c = Command::new("md5sum");
            c.arg(file).current_dir(&d);
            fixed += sh(c).trim();
            fixed += "\n";
        }
        std::fs::write(&md5, fixed).unwrap();
    }
    let deb = out.join(format!("{name}_{}_{arch}.deb", new.replace(':', "%3a")));
    let mut c = Command::new("dpkg-deb");
    c.args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&d)
        .arg(&deb);
    sh(c);
    (deb, new)
}

/// Repacks the real base-files with a higher version whose
/// /etc/debian_version is `<major>.99`, as a point release does. Returns the
/// .deb, its version and the new Patched Version.
pub fn point_release(orig: &Path, out: &Path) -> (PathBuf, String, String) {
    point_release_n(orig, out, 99)
}

/// [`point_release`] to point release `n` (`MAJOR.n`, version `+debMAJORun`):
/// a later `n` is a newer point release.
pub fn point_release_n(orig: &Path, out: &Path, n: u32) -> (PathBuf, String, String) {
    let mut c = Command::new("dpkg-deb");
    c.arg("-f").arg(orig).arg("Version");
    let old = sh(c).trim().to_string();
    let major = old.split('.').next().unwrap().to_string();
    let point = format!("{major}.{n}");
    let (deb, version) = repack(
        orig,
        out,
        |old| format!("{}+deb{major}u{n}", old.split('+').next().unwrap()),
        |d, _| std::fs::write(d.join("etc/debian_version"), format!("{point}\n")).unwrap(),
    );
    (deb, version, point)
}

/// Repacks a real installed package (a kernel metapackage, say) with a
/// higher version whose postinst asks for a reboot, as kernel hooks do.
pub fn reboot_requiring(orig: &Path, out: &Path) -> (PathBuf, String) {
    reboot_requiring_edited(orig, out, |_| {})
}

/// [`reboot_requiring`], with a further edit of the unpacked package.
pub fn reboot_requiring_edited(
    orig: &Path,
    out: &Path,
    edit: impl FnOnce(&Path),
) -> (PathBuf, String) {
    repack(
        orig,
        out,
        |old| format!("{old}+bootpatch1"),
        |d, name| {
            edit(d);
            let p = d.join("DEBIAN/postinst");
            let mut script =
                std::fs::read_to_string(&p).unwrap_or_else(|_| "#!/bin/sh\nset -e\n".into());
            script += &format!(
                "if [ \"$1\" = configure ]; then\n  touch /run/reboot-required\n  grep -qx {name} /run/reboot-required.pkgs 2>/dev/null || echo {name} >> /run/reboot-required.pkgs\nfi\n"
            );
            std::fs::write(&p, script).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        },
    )
}

/// The next kernel ABI after `release` (6.1.0-57-cloud-amd64 gives
/// 6.1.0-58-cloud-amd64): the name a kernel update would install.
pub fn next_kernel_abi(release: &str) -> String {
    let mut parts: Vec<String> = release.split('-').map(str::to_string).collect();
    let abi: u32 = parts
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no ABI number in kernel release {release:?}"));
    parts[1] = (abi + 1).to_string();
    parts.join("-")
}

fn rename_below(dir: &Path, old: &str, new: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            rename_below(&p, old, new);
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if name.contains(old) {
            std::fs::rename(&p, dir.join(name.replace(old, new))).unwrap();
        }
    }
}

/// A kernel update as the archive ships one: a new ABI's image package and
/// the metapackage raised to depend on it (and, as before, asking for a
/// reboot). The new package is the image's real, signed kernel package
/// with its package name, version and file names raised: the kernel's bytes
/// are unchanged, so its Secure Boot signature stays valid, but GRUB must
/// find and boot a new file (`/boot/vmlinuz-NEW`) that update-grub listed.
///
/// One stand-in part: the kernel still reports its original release
/// (`uname -r`), so the new initrd also answers to that name (a hook in
/// the package links the modules there); without it the initrd could not
/// load the disk driver. Returns the two .debs and the new release.
pub fn kernel_update(image_deb: &Path, meta_deb: &Path, out: &Path) -> (Vec<PathBuf>, String) {
    let mut c = Command::new("dpkg-deb");
    c.args(["-f"]).arg(image_deb).arg("Package");
    let package = sh(c).trim().to_string();
    let old = package
        .strip_prefix("linux-image-")
        .unwrap_or_else(|| panic!("{package} is not a kernel image package"))
        .to_string();
    let new = next_kernel_abi(&old);
    // The version stays: the metapackage depends on this exact one, and the
    // new name alone makes it a new package.
    let (image, _) = repack(
        image_deb,
        out,
        |v| v.to_string(),
        |d, _| {
            for entry in std::fs::read_dir(d).unwrap().flatten() {
                if entry.file_name() != "DEBIAN" && entry.path().is_dir() {
                    rename_below(&entry.path(), &old, &new);
                }
            }
            for f in std::fs::read_dir(d.join("DEBIAN")).unwrap().flatten() {
                let mut text = std::fs::read_to_string(f.path())
                    .unwrap()
                    .replace(&old, &new);
                if f.file_name() == "control" {
                    // The test repository holds none of the recommended
                    // packages (firmware, apparmor); `apt-get upgrade` keeps
                    // back an upgrade whose new package's Recommends cannot
                    // be met, where the archive would offer them.
                    text = text
                        .lines()
                        .filter(|l| !l.starts_with("Recommends:"))
                        .map(|l| format!("{l}\n"))
                        .collect();
                }
                std::fs::write(f.path(), text).unwrap();
            }
            let hook = "usr/share/initramfs-tools/hooks/zz-bootpatch-fixture-release";
            let p = d.join(hook);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(
                &p,
                format!(
                    "#!/bin/sh\n# Test fixture: this kernel reports release {old}; let its initrd's modules answer to it.\n\
                     [ \"$1\" = prereqs ] && exit 0\n\
                     [ \"$version\" = {new} ] || exit 0\n\
                     ln -sfn {new} \"$DESTDIR/lib/modules/{old}\"\n"
                ),
            )
            .unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            let md5 = d.join("DEBIAN/md5sums");
            let mut sums = std::fs::read_to_string(&md5).unwrap();
            sums += &format!("0  {hook}\n");
            std::fs::write(&md5, sums).unwrap();
        },
    );
    let (old_dep, new_dep) = (format!("linux-image-{old}"), format!("linux-image-{new}"));
    let (meta, _) = reboot_requiring_edited(meta_deb, out, |d| {
        let p = d.join("DEBIAN/control");
        let control = std::fs::read_to_string(&p).unwrap();
        assert!(control.contains(&old_dep), "{control}");
        std::fs::write(&p, control.replace(&old_dep, &new_dep)).unwrap();
    });
    (vec![image, meta], new)
}

/// Builds (once per test process) the fixture packages.
pub fn fixtures() -> &'static Fixtures {
    static F: std::sync::OnceLock<Fixtures> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let cached = crate::root::cached_root();
        // Fixtures live as long as the test process; clear what earlier
        // processes left (a static is never dropped).
        if let Ok(entries) = std::fs::read_dir(crate::cache_dir()) {
            for e in entries.flatten() {
                let stale = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| t.elapsed().unwrap_or_default().as_secs() > 3600)
                    .unwrap_or(false);
                if stale
                    && e.file_name()
                        .to_string_lossy()
                        .starts_with("bootpatch-fixtures-")
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("bootpatch-fixtures-")
            .tempdir_in(crate::cache_dir())
            .unwrap()
            .keep();
        let v1dir = dir.join("v1");
        let v2dir = dir.join("v2");
        std::fs::create_dir_all(&v1dir).unwrap();
        std::fs::create_dir_all(&v2dir).unwrap();
        let v1 = vec![
            Pkg::new("bootpatch-fixture-kernel", "1.0")
                .file("/usr/share/bootpatch-fixture/kernel", "1\n")
                .build(&v1dir),
            Pkg::new("bootpatch-fixture-tool", "1.0")
                .conffile("/etc/bootpatch-fixture/tool.conf", "setting=1\n")
                .build(&v1dir),
            Pkg::new("bootpatch-fixture-slow", "1.0")
                .file("/usr/share/bootpatch-fixture/slow", "1\n")
                .build(&v1dir),
            Pkg::new("bootpatch-fixture-held", "1.0").build(&v1dir),
            Pkg::new("bootpatch-fixture-oldpeer", "1.0").build(&v1dir),
        ];
        let (bf, bf_version, point) = point_release(&cached.base_files_deb, &v2dir);
        let v2 = vec![
            bf,
            Pkg::new("bootpatch-fixture-kernel", "2.0")
                .file("/usr/share/bootpatch-fixture/kernel", "2\n")
                .postinst(REBOOT_POSTINST)
                .build(&v2dir),
            Pkg::new("bootpatch-fixture-tool", "2.0")
                .conffile("/etc/bootpatch-fixture/tool.conf", "setting=2\n")
                .depends("bootpatch-fixture-newdep")
                .build(&v2dir),
            Pkg::new("bootpatch-fixture-newdep", "2.0")
                .file("/usr/share/bootpatch-fixture/newdep", "2\n")
                .build(&v2dir),
            Pkg::new("bootpatch-fixture-slow", "2.0")
                .file("/usr/share/bootpatch-fixture/slow", "2\n")
                .preinst(HOLD_PREINST)
                .postinst(HOLD_POSTINST)
                .build(&v2dir),
            // Its upgrade would remove an installed package: an upgrade
            // within the stream keeps it back rather than remove anything.
            Pkg::new("bootpatch-fixture-held", "2.0")
                .conflicts("bootpatch-fixture-oldpeer")
                .build(&v2dir),
        ];
        Fixtures {
            dir,
            v1,
            v2,
            new_point_release: point,
            base_files_v2_version: bf_version,
        }
    })
}
