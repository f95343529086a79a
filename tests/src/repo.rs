//! A local apt repository signed with a key generated for the test, laid
//! out as a real suite (`dists/<suite>/main/binary-amd64`), made with
//! `apt-ftparchive` and signed with `gpg` (InRelease and Release.gpg).

use crate::sh;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A signing key in its own GnuPG home.
pub struct Key {
    pub home: PathBuf,
    pub armored: String,
    _dir: tempfile::TempDir,
}

impl Key {
    pub fn generate(name: &str) -> Key {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("gnupg");
        std::fs::create_dir_all(&home).unwrap();
        let gpg = |args: &[&str]| {
            let mut c = Command::new("gpg");
            c.arg("--homedir")
                .arg(&home)
                .args([
                    "--batch",
                    "--quiet",
                    "--pinentry-mode",
                    "loopback",
                    "--passphrase",
                    "",
                ])
                .args(args);
            sh(c)
        };
        gpg(&[
            "--quick-gen-key",
            &format!("{name} <{name}@bootpatch.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]);
        let armored = gpg(&["--armor", "--export"]);
        assert!(
            armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
            "{armored}"
        );
        Key {
            home,
            armored,
            _dir: dir,
        }
    }

    fn sign(&self, args: &[&str]) {
        let mut c = Command::new("gpg");
        c.arg("--homedir")
            .arg(&self.home)
            .args([
                "--batch",
                "--yes",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args);
        sh(c);
    }
}

/// Builds a repository at `dir` for `suite` holding `debs`, signed by `key`
/// (unsigned when None).
pub fn build(dir: &Path, suite: &str, debs: &[PathBuf], key: Option<&Key>) {
    let pool = dir.join("pool/main");
    let bin = dir.join(format!("dists/{suite}/main/binary-amd64"));
    std::fs::create_dir_all(&pool).unwrap();
    std::fs::create_dir_all(&bin).unwrap();
    for d in debs {
        std::fs::copy(d, pool.join(d.file_name().unwrap())).unwrap();
    }
    let packages = sh({
        let mut c = Command::new("apt-ftparchive");
        c.args(["packages", "pool"]).current_dir(dir);
        c
    });
    std::fs::write(bin.join("Packages"), &packages).unwrap();
    sh({
        let mut c = Command::new("gzip");
        c.args(["-kf9n"]).arg(bin.join("Packages"));
        c
    });
    let release = sh({
        let mut c = Command::new("apt-ftparchive");
        for (k, v) in [
            ("Origin", "bootpatch-tests"),
            ("Label", "bootpatch-tests"),
            ("Suite", suite),
            ("Codename", suite),
            ("Components", "main"),
            ("Architectures", "amd64"),
        ] {
            c.arg("-o")
                .arg(format!("APT::FTPArchive::Release::{k}={v}"));
        }
        c.arg("release")
            .arg(format!("dists/{suite}"))
            .current_dir(dir);
        c
    });
    let dists = dir.join(format!("dists/{suite}"));
    std::fs::write(dists.join("Release"), release).unwrap();
    if let Some(k) = key {
        let r = dists.join("Release");
        let (r, inr, gpg) = (
            r.to_str().unwrap().to_string(),
            dists.join("InRelease"),
            dists.join("Release.gpg"),
        );
        k.sign(&["--clearsign", "-o", inr.to_str().unwrap(), &r]);
        k.sign(&["--armor", "--detach-sign", "-o", gpg.to_str().unwrap(), &r]);
    }
}
