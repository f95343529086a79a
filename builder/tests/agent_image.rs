//! `builder agent-image`, judged by two tools that share no code with it: skopeo reads the
//! archive as a registry client would (entrypoint, architecture, digest), umoci unpacks it as a
//! runtime bundle (exactly the expected files). The payload is the static agent from
//! scripts/build-agent (`AGENT_BIN`, as `make test` passes it), or, when that is not given,
//! the static bootpatch binary, which exercises the same packing. Needs skopeo and umoci
//! (scripts/deps/builder.sh).

use std::path::{Path, PathBuf};
use std::process::Command;

fn payload() -> PathBuf {
    std::env::var_os("AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(bootpatch_e2e::bootpatch_bin)
}

/// Runs a command; panics with its command line and stderr when it fails.
fn run(cmd: &mut Command) -> String {
    let mut c = Command::new(cmd.get_program());
    c.args(cmd.get_args());
    bootpatch_e2e::sh(c)
}

fn agent_image(bin: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_builder"))
        .args(["agent-image", "--tag", "test", "--agent"])
        .arg(bin)
        .arg("--out")
        .arg(out)
        .env("SOURCE_DATE_EPOCH", "1767225600")
        .output()
        .unwrap()
}

#[test]
fn agent_image_reads_back_with_skopeo_and_umoci() {
    let t = tempfile::tempdir().unwrap();
    let bin = payload();
    let archive = t.path().join("bootpatch-updater.oci.tar");
    let o = agent_image(&bin, &archive);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let digest = std::fs::read_to_string(t.path().join("bootpatch-updater.oci.tar.digest"))
        .unwrap()
        .trim()
        .to_string();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );

    let inspect: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))))
    .unwrap();
    assert_eq!(inspect["architecture"], "amd64");
    assert_eq!(inspect["os"], "linux");
    assert_eq!(
        inspect["config"]["Entrypoint"],
        serde_json::json!(["/bootpatch-updater"])
    );
    let summary: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))))
    .unwrap();
    assert_eq!(summary["Digest"], digest.as_str(), "{summary}");
    assert_eq!(summary["Layers"].as_array().unwrap().len(), 1);

    // umoci unpacks an OCI layout (a folder), so untar the archive first.
    let layout = t.path().join("layout");
    std::fs::create_dir(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout));
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    let mut files = Vec::new();
    for e in walk(&bundle.join("rootfs")) {
        files.push(
            e.strip_prefix(bundle.join("rootfs"))
                .unwrap()
                .display()
                .to_string(),
        );
    }
    assert_eq!(files, ["bootpatch-updater"], "exactly the agent");
    let unpacked = bundle.join("rootfs/bootpatch-updater");
    assert_eq!(
        std::fs::read(&unpacked).unwrap(),
        std::fs::read(&bin).unwrap()
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&unpacked).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/bootpatch-updater"])
    );

    // The same inputs give the same archive.
    let again = t.path().join("again.oci.tar");
    assert!(agent_image(&bin, &again).status.success());
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&archive).unwrap()
    );
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn agent_image_refuses_a_dynamic_binary_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.oci.tar");
    // Any binary of the host's own: dynamically linked.
    let o = agent_image(Path::new("/bin/true"), &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/bin/true is dynamically linked") && err.contains("scripts/build-agent"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(t.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
