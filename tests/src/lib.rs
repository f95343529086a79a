//! Support for the end-to-end tests: a cached Debian root made by
//! `mmdebstrap`, fixture `.deb` packages built with `dpkg-deb`, a local apt
//! repository signed with a key generated for the test, and a way to run a
//! command inside a root (a private mount namespace with /proc and /dev,
//! then chroot). Everything here is real apt, dpkg and gpg; nothing is
//! mocked. The tests need root, as CI has.

pub mod fixtures;
pub mod images;
pub mod mirror;
pub mod repo;
pub mod root;
pub mod standin;
pub mod vm;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's top directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Where tests keep what is slow to make (the Debian root tarball).
pub fn cache_dir() -> PathBuf {
    let d = std::env::var_os("BOOTPATCH_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".cache/tests"));
    std::fs::create_dir_all(&d).expect("creating the test cache");
    d
}

/// The static bootpatch binary the images ship: `BOOTPATCH_BIN`, or built
/// by scripts/build-bootpatch.
pub fn bootpatch_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BOOTPATCH_BIN") {
            return PathBuf::from(p);
        }
        let out = sh(Command::new(workspace().join("scripts/build-bootpatch")));
        PathBuf::from(out.trim())
    })
    .clone()
}

/// Runs a command, panicking with its command line and stderr on failure.
pub fn sh(mut c: Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("starting {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Holds an exclusive flock on a file for the life of the value: makes slow
/// cache builds happen once even when test binaries run in parallel.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    pub fn take(path: &Path) -> FileLock {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .expect("opening lock file");
        let st = Command::new("flock")
            .arg("-x")
            .arg("0")
            .stdin(f.try_clone().unwrap())
            .status();
        // flock(1) on fd 0 takes the lock on the open file description we
        // share, so it stays held after flock exits.
        assert!(
            st.map(|s| s.success()).unwrap_or(false),
            "flock {}",
            path.display()
        );
        FileLock(f)
    }
}

/// Sends SIGKILL to a whole process group (a power cut for that group):
/// the child must have been started with `process_group(0)`.
pub fn kill_group(child: &std::process::Child) {
    let pid =
        rustix::process::Pid::from_raw(child.id() as i32).expect("a child has a positive pid");
    // ESRCH: the group is already gone.
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Checks a state file against its documented JSON Schema
/// (docs/state.schema.json); panics naming every violation.
pub fn assert_state_matches_schema(state: &serde_json::Value) {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let v = SCHEMA.get_or_init(|| {
        let text = std::fs::read_to_string(workspace().join("docs/state.schema.json"))
            .expect("reading docs/state.schema.json");
        let schema: serde_json::Value =
            serde_json::from_str(&text).expect("docs/state.schema.json parses");
        jsonschema::validator_for(&schema).expect("docs/state.schema.json is a valid schema")
    });
    let errors: Vec<String> = v
        .iter_errors(state)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "state file does not match docs/state.schema.json:\n{}\n{state:#}",
        errors.join("\n")
    );
}
