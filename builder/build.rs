//! Records the commit the builder is built from, for `builder --version`.
use std::process::Command;

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // HEAD moves on checkout; logs/HEAD on every commit.
    for f in [".git/HEAD", ".git/logs/HEAD"] {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=BUILDER_COMMIT={commit}");
}
