//! `builder seed` makes a NoCloud `cidata` volume; read it back with tools
//! other than the one that wrote it (isoinfo for ISO 9660, mtools for FAT).

use std::path::Path;
use std::process::Command;

fn builder() -> Command {
    Command::new(env!("CARGO_BIN_EXE_builder"))
}

fn require(tool: &str) {
    let ok = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{tool} is not installed: run scripts/deps/templates.sh (as root) first"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iso_file(iso: &Path, name: &str) -> String {
    run(Command::new("isoinfo")
        .arg("-R")
        .arg("-i")
        .arg(iso)
        .args(["-x", &format!("/{name}")]))
}

const USER_DATA: &str = "#cloud-config\nhostname: \"seed-test\"\n";

#[test]
fn iso_seed_has_label_files_and_generated_instance_id() {
    require("isoinfo");
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("user-data.yaml");
    let nc = dir.path().join("net.yaml");
    std::fs::write(&ud, USER_DATA).unwrap();
    std::fs::write(&nc, "version: 2\nethernets: {}\n").unwrap();
    let iso = dir.path().join("seed.iso");
    run(builder()
        .args(["seed", "--user-data"])
        .arg(&ud)
        .arg("--network-config")
        .arg(&nc)
        .arg("--out")
        .arg(&iso));
    let info = run(Command::new("isoinfo").arg("-d").arg("-i").arg(&iso));
    assert!(info.contains("Volume id: cidata"), "{info}");
    let listing = run(Command::new("isoinfo")
        .arg("-R")
        .arg("-f")
        .arg("-i")
        .arg(&iso));
    let mut names: Vec<_> = listing.lines().collect();
    names.sort();
    assert_eq!(names, ["/meta-data", "/network-config", "/user-data"]);
    assert_eq!(iso_file(&iso, "user-data"), USER_DATA);
    assert_eq!(
        iso_file(&iso, "network-config"),
        "version: 2\nethernets: {}\n"
    );
    let meta = iso_file(&iso, "meta-data");
    assert!(meta.starts_with("instance-id: iid-bootpatch-"), "{meta}");

    // Same content, same instance; new content, new instance.
    let again = dir.path().join("again.iso");
    run(builder()
        .args(["seed", "--user-data"])
        .arg(&ud)
        .arg("--network-config")
        .arg(&nc)
        .arg("--out")
        .arg(&again));
    assert_eq!(iso_file(&again, "meta-data"), meta);
    std::fs::write(&ud, "#cloud-config\nhostname: \"other\"\n").unwrap();
    run(builder()
        .args(["seed", "--user-data"])
        .arg(&ud)
        .arg("--network-config")
        .arg(&nc)
        .arg("--out")
        .arg(&again));
    assert_ne!(iso_file(&again, "meta-data"), meta);
}

#[test]
fn given_meta_data_is_used_as_is() {
    require("isoinfo");
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("ud");
    let md = dir.path().join("md");
    std::fs::write(&ud, USER_DATA).unwrap();
    std::fs::write(&md, "instance-id: vm-test-42\nlocal-hostname: vm42\n").unwrap();
    let iso = dir.path().join("seed.iso");
    run(builder()
        .args(["seed", "--user-data"])
        .arg(&ud)
        .arg("--meta-data")
        .arg(&md)
        .arg("--out")
        .arg(&iso));
    assert_eq!(
        iso_file(&iso, "meta-data"),
        "instance-id: vm-test-42\nlocal-hostname: vm42\n"
    );
    let listing = run(Command::new("isoinfo")
        .arg("-R")
        .arg("-f")
        .arg("-i")
        .arg(&iso));
    assert!(!listing.contains("network-config"), "{listing}");
}

#[test]
fn vfat_seed_has_label_and_files() {
    require("mdir");
    let dir = tempfile::tempdir().unwrap();
    let ud = dir.path().join("ud");
    std::fs::write(&ud, USER_DATA).unwrap();
    let img = dir.path().join("seed.img");
    run(builder()
        .args(["seed", "--user-data"])
        .arg(&ud)
        .arg("--out")
        .arg(&img));
    let label = run(Command::new("mlabel")
        .arg("-i")
        .arg(&img)
        .args(["-s", "::"]));
    assert!(label.contains("CIDATA"), "{label}");
    let listing = run(Command::new("mdir").arg("-i").arg(&img).args(["-b", "::"]));
    let mut names: Vec<_> = listing.lines().map(str::trim).collect();
    names.sort();
    assert_eq!(names, ["::/meta-data", "::/user-data"]);
    let content = run(Command::new("mtype").arg("-i").arg(&img).arg("::user-data"));
    assert_eq!(content, USER_DATA);
    let meta = run(Command::new("mtype").arg("-i").arg(&img).arg("::meta-data"));
    assert!(meta.starts_with("instance-id: iid-bootpatch-"), "{meta}");
}

#[test]
fn missing_user_data_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = builder()
        .args(["seed", "--user-data", "/nonexistent/ud", "--out"])
        .arg(dir.path().join("s.iso"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ud"));
}
