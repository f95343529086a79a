//! One build of each shipped image per test run, shared by every test
//! binary that boots or inspects it: builder's image tests, the first-boot
//! VM tests and the benchmarks. An image costs about a minute of mmdebstrap
//! and formats; building the same one in several binaries was most of the
//! suite's time.
//!
//! The build is the release `builder` (`BUILDER_BIN`, or built on demand)
//! writing every format of `images/NAME.yaml` into
//! `.cache/tests/images/NAME-KEY/`. KEY hashes every input the image is made
//! from: the spec, the bootpatch binary, the builder binary itself, every
//! file under `templates/` (the first-boot unit and what the builder embeds)
//! and the day (UTC). The package set is whatever the mirror serves that
//! day; the day in the key keeps a warm cache from booting last week's
//! packages. A cache entry counts only once its build finished and its event
//! log was written, so a build killed half-way is redone, never used. Older
//! entries of the same image are removed, so the cache holds one of each.
//!
//! Tests must not change a shared image: boots go through `builder boot`
//! (snapshot) or a qcow2 overlay (`vm::overlay`).

use crate::{cache_dir, sh, workspace, FileLock};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A built image: its output folder, the package cache it was built from
/// (`--cache`; the .debs are in its `debs/`) and the build's `--json` events.
#[derive(Debug, Clone)]
pub struct Built {
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub events: String,
}

impl Built {
    pub fn raw(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }
}

/// The `builder` binary every test drives: `BUILDER_BIN`, or the release
/// build of this workspace (built on demand).
pub fn builder_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BUILDER_BIN") {
            return PathBuf::from(p);
        }
        let mut c = Command::new("cargo");
        c.args(["build", "--quiet", "--locked", "--release", "-p", "builder"])
            .current_dir(workspace());
        sh(c);
        workspace().join("target/release/builder")
    })
    .clone()
}

/// A short SHA-256 over the files, named by their paths relative to the
/// workspace (so the key does not depend on where the clone lives).
pub fn inputs_key(paths: &[PathBuf], extra: &str) -> String {
    let ws = workspace();
    let mut c = Command::new("sha256sum");
    c.current_dir(&ws);
    for p in paths {
        c.arg(p.strip_prefix(&ws).unwrap_or(p));
    }
    let listing = sh(c) + extra;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting sha256sum");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), listing.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout)[..16].to_string()
}

fn files_below(d: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("reading {}: {e}", d.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_below(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every input of `images/NAME.yaml`'s image, in a fixed order.
pub fn image_inputs(name: &str) -> Vec<PathBuf> {
    let ws = workspace();
    let mut inputs = vec![
        ws.join(format!("images/{name}.yaml")),
        crate::bootpatch_bin(),
        builder_bin(),
    ];
    files_below(&ws.join("templates"), &mut inputs);
    inputs
}

/// `images/NAME.yaml` built with every format it lists, once per set of
/// inputs. Takes a lock, so binaries and threads that ask at once build it
/// once.
pub fn built(name: &str) -> Built {
    // Once per process: a binary keeps booting the image it started with
    // even if an input (the builder binary, say) is rebuilt while it runs.
    static DONE: std::sync::Mutex<Vec<(String, Built)>> = std::sync::Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, b)) = done.iter().find(|(n, _)| n == name) {
        return b.clone();
    }
    let b = build_once(name);
    done.push((name.to_string(), b.clone()));
    b
}

fn build_once(name: &str) -> Built {
    let base = cache_dir().join("images");
    std::fs::create_dir_all(&base).unwrap();
    let day = bootpatch::time::now_unix().div_euclid(86_400);
    let key = inputs_key(&image_inputs(name), &format!("day {day}\n"));
    let _lock = FileLock::take(&base.join(format!("{name}.lock")));
    let dir = base.join(format!("{name}-{key}"));
    let events_file = base.join(format!("{name}-{key}.events.jsonl"));
    let cache = base.join(format!("{name}-packages"));
    if let (true, Ok(events)) = (dir.is_dir(), std::fs::read_to_string(&events_file)) {
        return Built { dir, cache, events };
    }
    remove_other_entries(&base, name);
    let bin = crate::bootpatch_bin();
    // As an installed builder runs: the shipped spec by name, from a folder
    // outside the source tree (the spec file is still in the cache key).
    let mut c = Command::new(builder_bin());
    c.arg("build")
        .arg(name)
        .arg("--out")
        .arg(&dir)
        .arg("--cache")
        .arg(&cache)
        .arg("--bootpatch")
        .arg(&bin)
        .arg("--json")
        .current_dir(std::env::temp_dir());
    let events = run_build(name, c, &dir, &events_file);
    Built { dir, cache, events }
}

/// Removes the cache entries of `name` with other keys (and a half-made one
/// with this key): each holds several GiB.
fn remove_other_entries(base: &Path, name: &str) {
    let prefix = format!("{name}-");
    for e in std::fs::read_dir(base).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = n.strip_prefix(&prefix) else {
            continue;
        };
        // Only NAME-KEY and NAME-KEY.events.jsonl: not the package cache,
        // nor another image whose name starts with this one's.
        let key = rest.strip_suffix(".events.jsonl").unwrap_or(rest);
        if key.len() != 16 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
}

/// A variant of the shipped debian-12 image: its spec renamed to `name`,
/// with `packages` added and `extra` YAML appended, built raw only from the
/// shared image's package cache, once per set of inputs (the shared image's
/// key and the variant's own text), in `.cache/tests/images/NAME-KEY/`.
/// Returns the raw disk. Tests boot overlays of it, never the disk itself.
pub fn variant(name: &str, packages: &[&str], extra: &str) -> PathBuf {
    let shared = built("debian-12");
    let base = cache_dir().join("images");
    let spec_text = std::fs::read_to_string(workspace().join("images/debian-12.yaml")).unwrap();
    let added: String = packages.iter().map(|p| format!("  - {p}\n")).collect();
    assert!(spec_text.contains("name: debian-12\n") && spec_text.contains("\npackages:\n"));
    let text = spec_text
        .replace("name: debian-12\n", &format!("name: {name}\n"))
        .replace("\npackages:\n", &format!("\npackages:\n{added}"))
        + extra;
    let day = bootpatch::time::now_unix().div_euclid(86_400);
    let key = inputs_key(&image_inputs("debian-12"), &format!("day {day}\n{text}"));
    let _lock = FileLock::take(&base.join(format!("{name}.lock")));
    let dir = base.join(format!("{name}-{key}"));
    let done = base.join(format!("{name}-{key}.events.jsonl"));
    if dir.is_dir() && done.is_file() {
        return dir.join("disk.raw");
    }
    remove_other_entries(&base, name);
    let work = base.join(format!("{name}.spec"));
    std::fs::create_dir_all(&work).unwrap();
    let spec = work.join(format!("{name}.yaml"));
    std::fs::write(&spec, &text).unwrap();
    let mut c = Command::new(builder_bin());
    c.args(["build", "--json", "--formats", "raw", "--cache"])
        .arg(&shared.cache)
        .arg("--out")
        .arg(&dir)
        .arg("--bootpatch")
        .arg(crate::bootpatch_bin())
        .arg(&spec)
        .current_dir(std::env::temp_dir());
    run_build(name, c, &dir, &done);
    dir.join("disk.raw")
}

/// Runs a `builder build --json` into `dir`, then writes its events to
/// `events_file` (through a temporary file: the entry counts only once the
/// build finished). Returns the events.
fn run_build(name: &str, c: Command, dir: &Path, events_file: &Path) -> String {
    let t = std::time::Instant::now();
    let events = sh(c);
    eprintln!(
        "images: built {name} in {:.1}s into {}",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    let tmp = events_file.with_extension("tmp");
    std::fs::write(&tmp, &events).unwrap();
    std::fs::rename(&tmp, events_file).unwrap();
    events
}
