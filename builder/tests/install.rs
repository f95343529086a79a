//! The builder as users run it: installed with `cargo install` and run from
//! a folder outside any checkout. Help, version, render and seed work there;
//! a build with no bootpatch to bake in is refused before any work, with
//! the ways to give one. (The image tests build their images from outside
//! the tree too, by shipped spec name.)
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

/// `cargo install --path builder` into a temporary root, reusing the
/// workspace's build folder (the release builder is built already).
fn installed(root: &Path) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let o = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["install", "--quiet", "--locked", "--offline", "--path"])
        .arg(workspace().join("builder"))
        .arg("--root")
        .arg(root)
        .arg("--target-dir")
        .arg(target)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cargo install: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bin = root.join("bin/builder");
    assert!(bin.is_file());
    bin
}

fn run(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn installed_builder_works_outside_the_tree() {
    let root = tempfile::tempdir().unwrap();
    let bin = installed(root.path());
    let away = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let here = away.path().canonicalize().unwrap();
    assert!(
        !here.starts_with(workspace()),
        "{} is in the tree",
        here.display()
    );

    let v = run(&bin, &here, &["--version"]);
    let version = text(&v);
    assert!(
        v.status.success() && version.contains("(commit "),
        "{version}"
    );

    // Every flag of every subcommand has a help line.
    for sub in ["build", "verify", "boot", "render", "seed", "agent-image"] {
        let h = run(&bin, &here, &[sub, "--help"]);
        assert!(h.status.success(), "{sub} --help: {}", text(&h));
        let help = text(&h);
        let options = help.split("Options:").nth(1).unwrap();
        let lines: Vec<&str> = options.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            // Flags, not the "- value: ..." lines of a value list.
            let t = line.trim_start();
            if !t.starts_with('-') || t.starts_with("- ") {
                continue;
            }
            // "  -x, --flag <VALUE>  What it does", or (when clap puts help
            // on the next line) the description indented below the flag; a
            // bare "[default: ...]" is not a description.
            let same_line = line
                .trim_start()
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty() && !d.trim().starts_with('['));
            let next_line = lines.get(n + 1).is_some_and(|l| {
                let t = l.trim_start();
                !t.is_empty()
                    && !t.starts_with("--")
                    && !t.starts_with('[')
                    && l.len() - t.len() > 6
            });
            assert!(
                same_line || next_line,
                "builder {sub}: option without a help line: {line:?}"
            );
        }
    }

    let r = run(
        &bin,
        &here,
        &["render", "--provider", "nocloud", "--out", "user-data"],
    );
    assert!(r.status.success(), "{}", text(&r));
    let ud = fs::read_to_string(here.join("user-data")).unwrap();
    assert!(ud.starts_with("#cloud-config"), "{ud}");
    let s = run(
        &bin,
        &here,
        &["seed", "--user-data", "user-data", "--out", "seed.iso"],
    );
    assert!(s.status.success(), "{}", text(&s));
    assert!(fs::metadata(here.join("seed.iso")).unwrap().len() > 0);

    // No bootpatch beside the installed builder and no source tree: refused
    // before any work, naming the ways out; nothing is left behind.
    let before: Vec<_> = fs::read_dir(&here)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let b = run(
        &bin,
        &here,
        &["build", "debian-12", "--out", "out/debian-12"],
    );
    let msg = text(&b);
    assert_eq!(b.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains("no bootpatch binary")
            && msg.contains("--bootpatch")
            && msg.contains("beside this builder"),
        "{msg}"
    );
    let after: Vec<_> = fs::read_dir(&here)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(before, after, "the refused build left files behind");

    let b = run(&bin, &here, &["build", "debian-11"]);
    let msg = text(&b);
    assert!(
        !b.status.success() && msg.contains("debian-11") && msg.contains("debian-12, debian-13"),
        "{msg}"
    );
    let b = run(
        &bin,
        &here,
        &["build", "debian-12", "--bootpatch", "/bin/sh"],
    );
    let msg = text(&b);
    assert!(
        !b.status.success() && msg.contains("/bin/sh") && msg.contains("dynamically linked"),
        "{msg}"
    );
    fs::write(here.join("not-elf"), "#!/bin/sh\n").unwrap();
    let b = run(
        &bin,
        &here,
        &["build", "debian-12", "--bootpatch", "not-elf"],
    );
    let msg = text(&b);
    assert!(
        !b.status.success() && msg.contains("not-elf") && msg.contains("not an ELF"),
        "{msg}"
    );
}
