//! The patch engine against a real Debian root: real apt, real dpkg, a
//! repository signed with a key made for the test. Needs root (CI is).

use bootpatch_e2e::fixtures::fixtures;
use bootpatch_e2e::repo::{self, Key};
use bootpatch_e2e::root::Root;
use serde_json::Value;
use std::process::Output;
use std::time::{Duration, Instant};

const REPO: &str = "/srv/bootpatch-repo";
const SUITE: &str = "bookworm-updates";

/// A root with the v1 fixtures installed and the v2 repository in place.
struct Node {
    root: Root,
    key: Key,
}

fn config_yaml(key: &str, extra: &str) -> String {
    let indented: String = key.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "patchOnBoot: true\nrebootIfRequired: false\nsourcesMode: only\nretryDeadline: 3s\nlockWaitTimeout: 5s\n\
         rebootCommand: [\"/bin/sh\", \"-c\", \"echo reboot >> /var/log/reboot-calls\"]\n\
         sources:\n  - name: fixtures\n    uris: [\"file:{REPO}\"]\n    suites: [\"{SUITE}\"]\n    components: [main]\n    signedBy: |\n{indented}{extra}"
    )
}

impl Node {
    fn new() -> Node {
        Self::with_repo(|root, key| repo::build(&root.path(REPO), SUITE, &fixtures().v2, Some(key)))
    }

    fn with_repo(make: impl FnOnce(&Root, &Key)) -> Node {
        let f = fixtures();
        let root = Root::new();
        let mut args = vec!["dpkg".to_string(), "-i".into()];
        for deb in &f.v1 {
            args.push(root.put(deb, "var/tmp/v1"));
        }
        root.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let key = Key::generate("fixtures");
        make(&root, &key);
        let node = Node { root, key };
        node.set_config("");
        node
    }

    fn set_config(&self, extra: &str) {
        self.root.write(
            "etc/bootpatch/config.yaml",
            &config_yaml(&self.key.armored, extra),
        );
    }

    fn bootpatch(&self, args: &[&str]) -> Output {
        let mut argv = vec!["bootpatch"];
        argv.extend_from_slice(args);
        self.root.run(&argv)
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.root.read("var/lib/bootpatch/state.json"))
            .expect("state.json parses")
    }

    fn status(&self) -> Value {
        let out = self.bootpatch(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn reboot_calls(&self) -> usize {
        self.root.read("var/log/reboot-calls").lines().count()
    }
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn assert_still_v1(n: &Node) {
    for p in [
        "bootpatch-fixture-kernel",
        "bootpatch-fixture-tool",
        "bootpatch-fixture-slow",
        "bootpatch-fixture-held",
    ] {
        assert_eq!(n.root.version_of(p).as_deref(), Some("1.0"), "{p}");
    }
    assert_eq!(n.root.version_of("bootpatch-fixture-newdep"), None);
}

#[test]
fn patches_available_are_applied_and_recorded() {
    let n = Node::new();
    let before = n.root.read("etc/debian_version").trim().to_string();

    let check = n.bootpatch(&["check", "--json"]);
    assert_eq!(code(&check), 100, "{}", text(&check));
    let plan: Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(plan["patched_version"], before.as_str());
    assert_eq!(
        plan["patched_version_after"],
        fixtures().new_point_release.as_str()
    );
    let names: Vec<&str> = plan["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for want in [
        "base-files",
        "bootpatch-fixture-kernel",
        "bootpatch-fixture-tool",
        "bootpatch-fixture-newdep",
        "bootpatch-fixture-slow",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    assert_eq!(
        plan["kept_back"],
        serde_json::json!(["bootpatch-fixture-held"])
    );
    // check changes nothing.
    assert_still_v1(&n);

    // The admin changed the conffile; the upgrade must keep it, without a prompt.
    n.root
        .write("etc/bootpatch-fixture/tool.conf", "setting=local\n");
    let out = n.bootpatch(&["apply", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["result"], "patched");
    // The updater reads this very report with bootpatch's own type, strictly.
    let typed = updater::host::parse_apply_report(&String::from_utf8_lossy(&out.stdout))
        .expect("the updater parses a real report");
    assert_eq!(typed.result, "patched");
    assert_eq!(
        typed.patched_version_after,
        r["patched_version_after"].as_str().unwrap()
    );
    assert_eq!(
        n.root.version_of("bootpatch-fixture-tool").as_deref(),
        Some("2.0")
    );
    assert_eq!(
        n.root.version_of("bootpatch-fixture-newdep").as_deref(),
        Some("2.0")
    );
    assert_eq!(
        n.root.version_of("base-files").as_deref(),
        Some(fixtures().base_files_v2_version.as_str())
    );
    assert_eq!(
        n.root.read("etc/bootpatch-fixture/tool.conf"),
        "setting=local\n"
    );
    // Nothing is removed to upgrade: the conflicting upgrade stays back.
    assert_eq!(
        n.root.version_of("bootpatch-fixture-held").as_deref(),
        Some("1.0")
    );
    assert_eq!(
        n.root.version_of("bootpatch-fixture-oldpeer").as_deref(),
        Some("1.0")
    );
    assert!(n
        .root
        .path("etc/bootpatch-fixture/tool.conf.dpkg-dist")
        .exists());

    let st = n.state();
    assert_eq!(st["schema_version"], 1);
    assert_eq!(st["patched_version"], fixtures().new_point_release.as_str());
    let t = st["last_applied_patch_time"].as_str().unwrap();
    let secs = bootpatch::time::parse_rfc3339(t).expect("RFC 3339");
    assert!((bootpatch::time::now_unix() - secs).abs() < 600, "{t}");
    let run = st["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(run["result"], "patched");
    assert_eq!(run["patched_version_before"], before.as_str());
    // Reboot required but not allowed by this config: pending, with why.
    let s = n.status();
    assert_eq!(s["reboot_required"], true);
    assert_eq!(
        s["reboot_packages"],
        serde_json::json!(["bootpatch-fixture-kernel"])
    );
    assert_eq!(s["reboot_pending_reason"], "rebootIfRequired is false");
    assert_eq!(n.reboot_calls(), 0);

    // Now up to date: exit 0 and nothing changes.
    let again = n.bootpatch(&["check"]);
    assert_eq!(code(&again), 0, "{}", text(&again));
    let again = n.bootpatch(&["apply", "--json"]);
    assert_eq!(code(&again), 0, "{}", text(&again));
    let r: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(r["result"], "up-to-date");
    assert_eq!(n.reboot_calls(), 0);
}

#[test]
fn up_to_date_changes_nothing() {
    // A repository that offers only what is installed.
    let n = Node::with_repo(|root, key| {
        repo::build(&root.path(REPO), SUITE, &fixtures().v1, Some(key))
    });
    let dpkg_before = n.root.read("var/lib/dpkg/status");
    let out = n.bootpatch(&["check", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = n.bootpatch(&["apply"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("up to date"),
        "{}",
        text(&out)
    );
    assert_eq!(n.root.read("var/lib/dpkg/status"), dpkg_before);
    assert_eq!(n.state()["history"][0]["result"], "up-to-date");
}

#[test]
fn reboot_required_and_allowed_reboots_exactly_once() {
    let n = Node::new();
    let out = n.bootpatch(&["apply", "--reboot-if-required", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rebooted"], true, "{r}");
    assert_eq!(n.reboot_calls(), 1);
    let st = n.state();
    assert_eq!(
        st["last_reboot"]["packages"],
        serde_json::json!(["bootpatch-fixture-kernel"])
    );
    // The reboot "did not happen" (same boot, flag still there): a second
    // run must not reboot again for the same pending set.
    let out = n.bootpatch(&["apply", "--reboot-if-required", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["rebooted"], false);
    assert!(
        r["reboot_pending_reason"]
            .as_str()
            .unwrap()
            .contains("already requested"),
        "{r}"
    );
    assert_eq!(n.reboot_calls(), 1);
}

#[test]
fn reboot_allowed_by_config_and_denied_by_flag() {
    let n = Node::new();
    n.set_config("");
    let yaml = n
        .root
        .read("etc/bootpatch/config.yaml")
        .replace("rebootIfRequired: false", "rebootIfRequired: true");
    n.root.write("etc/bootpatch/config.yaml", &yaml);
    let out = n.bootpatch(&["apply", "--no-reboot"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(n.reboot_calls(), 0);
    assert_eq!(n.status()["reboot_pending_reason"], "--no-reboot given");
    let out = n.bootpatch(&["apply"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(n.reboot_calls(), 1, "{}", text(&out));
}

fn assert_refused(n: &Node, what: &str) {
    let out = n.bootpatch(&["apply", "--json"]);
    assert_eq!(code(&out), 6, "{what}: {}", text(&out));
    assert_still_v1(n);
    let st = n.state();
    let run = st["history"].as_array().unwrap().last().unwrap();
    assert_eq!(run["result"], "failed");
    assert_eq!(run["error"]["kind"], "verification", "{what}: {run}");
    let status = n.status();
    assert_eq!(status["last_run"]["error"]["kind"], "verification");
}

#[test]
fn repository_signed_by_another_key_is_refused() {
    let n = Node::with_repo(|root, _trusted| {
        let stranger = Key::generate("stranger");
        repo::build(&root.path(REPO), SUITE, &fixtures().v2, Some(&stranger));
    });
    assert_refused(&n, "foreign key");
    let out = n.bootpatch(&["check"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("NO_PUBKEY"),
        "{}",
        text(&out)
    );
}

#[test]
fn unsigned_repository_is_refused() {
    let n = Node::with_repo(|root, _| repo::build(&root.path(REPO), SUITE, &fixtures().v2, None));
    assert_refused(&n, "unsigned");
}

#[test]
fn tampered_package_is_refused() {
    let n = Node::new();
    // Flip bytes in a signed-for package after signing.
    let pool = n.root.path(&format!("{REPO}/pool/main"));
    let victim = std::fs::read_dir(&pool)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("fixture-tool"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    assert_refused(&n, "tampered .deb");
}

#[test]
fn unreachable_mirror_retries_until_the_deadline() {
    let n = Node::new();
    std::fs::remove_dir_all(n.root.path(REPO)).unwrap();
    let t = Instant::now();
    let out = n.bootpatch(&["apply"]);
    let took = t.elapsed();
    assert_eq!(code(&out), 5, "{}", text(&out));
    assert!(
        took >= Duration::from_secs(3),
        "gave up after {took:?}, before the 3s deadline"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retrying"),
        "{}",
        text(&out)
    );
    assert_eq!(
        n.state()["history"][0]["error"]["kind"],
        "mirror-unreachable"
    );
    assert_eq!(n.reboot_calls(), 0);
}

#[test]
fn interrupted_dpkg_is_repaired_by_the_next_run() {
    let n = Node::new();
    cut_power_at_hold(&n, "hold-install", "install-held");
    assert_repaired_and_upgraded(&n);
}

/// A power cut while dpkg unpacks leaves the package half-installed and
/// marked for reinstallation ("in a mess", says `dpkg --audit`), which
/// `dpkg --configure -a` cannot finish.
#[test]
fn dpkg_killed_mid_unpack_is_repaired_by_the_next_run() {
    let n = Node::new();
    cut_power_at_hold(&n, "hold-unpack", "unpack-held");
    let status = n.root.ok(&[
        "dpkg-query",
        "-W",
        "-f",
        "${Status}",
        "bootpatch-fixture-slow",
    ]);
    assert_eq!(status, "install reinstreq half-installed");
    assert_repaired_and_upgraded(&n);
}

/// dpkg records the new version and "unpacked" before it removes the old
/// files' backups, and clears the reinstall mark only after that. A cut in
/// between leaves `install reinstreq unpacked` with the new version, which
/// `apt-get -f install` only tries to configure and dpkg refuses. No
/// maintainer script runs there to hold dpkg at, so the test unpacks the
/// new version with dpkg and then sets the mark in dpkg's record itself, as
/// dpkg leaves it at that moment.
#[test]
fn dpkg_cut_before_it_clears_the_reinstall_mark_is_repaired() {
    let n = Node::new();
    let v2 = fixtures()
        .v2
        .iter()
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("bootpatch-fixture-slow_")
        })
        .unwrap();
    let deb = n.root.put(v2, "var/tmp/v2");
    n.root.ok(&["dpkg", "--unpack", &deb]);
    set_dpkg_status(&n, "bootpatch-fixture-slow", "install reinstreq unpacked");
    let audit = n.root.ok(&["dpkg", "--audit"]);
    assert!(audit.contains("in a mess"), "{audit}");
    assert_repaired_and_upgraded(&n);
}

/// Rewrites the Status field of `package` in dpkg's status file.
fn set_dpkg_status(n: &Node, package: &str, status: &str) {
    let path = n.root.path("var/lib/dpkg/status");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut out = String::new();
    for stanza in text.split_inclusive("\n\n") {
        if stanza.starts_with(&format!("Package: {package}\n")) {
            let fields: Vec<String> = stanza
                .lines()
                .map(|l| match l.strip_prefix("Status: ") {
                    Some(_) => format!("Status: {status}"),
                    None => l.to_string(),
                })
                .collect();
            out += &(fields.join("\n") + "\n\n");
        } else {
            out += stanza;
        }
    }
    assert_ne!(out, text, "{package} is not in dpkg's status file");
    std::fs::write(&path, out).unwrap();
}

/// Starts `bootpatch apply` with the flag file `hold` set, waits for the
/// fixture's maintainer script to signal `held`, then kills bootpatch, apt
/// and dpkg at once, as a power cut does. dpkg is left mid-operation.
fn cut_power_at_hold(n: &Node, hold: &str, held: &str) {
    n.root.write(&format!("var/tmp/{hold}"), "");
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut c = n.root.command(&["bootpatch", "apply"]);
        c.process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let t = Instant::now();
    while !n.root.path(&format!("var/tmp/{held}")).exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the install never reached the maintainer script's hold ({hold})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    bootpatch_e2e::kill_group(&child);
    child.wait().unwrap();
    let audit = n.root.ok(&["dpkg", "--audit"]);
    assert!(!audit.trim().is_empty(), "dpkg should be left mid-install");
}

/// The next run repairs dpkg, says so, and finishes the upgrade.
fn assert_repaired_and_upgraded(n: &Node) {
    let out = n.bootpatch(&["apply", "--json"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r["notes"][0]
            .as_str()
            .unwrap_or_default()
            .contains("repaired"),
        "{r}"
    );
    assert_eq!(n.root.ok(&["dpkg", "--audit"]).trim(), "");
    for p in [
        "bootpatch-fixture-kernel",
        "bootpatch-fixture-tool",
        "bootpatch-fixture-slow",
        "bootpatch-fixture-newdep",
    ] {
        assert_eq!(n.root.version_of(p).as_deref(), Some("2.0"), "{p}");
    }
}

/// Holds an fcntl lock on a file the way dpkg does, from outside the root.
fn hold_lock(path: &std::path::Path, secs: u32) -> std::process::Child {
    let mut c = std::process::Command::new("python3")
        .args(["-c", "import fcntl,sys,time; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(float(sys.argv[2]))"])
        .arg(path)
        .arg(secs.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(c.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "held");
    c
}

#[test]
fn dpkg_lock_held_waits_then_proceeds() {
    let n = Node::new();
    let mut holder = hold_lock(&n.root.path("var/lib/dpkg/lock-frontend"), 2);
    let t = Instant::now();
    let out = n.bootpatch(&["apply"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "did not wait for the lock"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("waiting for /var/lib/dpkg/lock-frontend"),
        "{}",
        text(&out)
    );
    holder.wait().unwrap();
    assert_eq!(
        n.root.version_of("bootpatch-fixture-tool").as_deref(),
        Some("2.0")
    );
}

#[test]
fn dpkg_lock_held_past_the_timeout_fails_clearly() {
    let n = Node::new();
    let mut holder = hold_lock(&n.root.path("var/lib/dpkg/lock"), 30);
    let out = n.bootpatch(&["apply"]);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(code(&out), 4, "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/var/lib/dpkg/lock") && err.contains(&format!("pid {}", holder.id())),
        "{}",
        text(&out)
    );
    assert_eq!(n.state()["history"][0]["error"]["kind"], "lock-timeout");
    assert_still_v1(&n);
}

#[test]
fn bad_config_is_refused_with_the_key_named() {
    let n = Node::new();
    for (yaml, key) in [
        ("rebootIfRequired: maybe\n", "rebootIfRequired"),
        ("patchOnBoot: true\nrebootAfter: 5m\n", "rebootAfter"),
        ("schedule: \"0 25 * * *\"\n", "schedule"),
        ("lockWaitTimeout: soon\n", "lockWaitTimeout"),
    ] {
        n.root.write("etc/bootpatch/bad.yaml", yaml);
        let out = n.bootpatch(&["apply", "--config", "/etc/bootpatch/bad.yaml"]);
        assert_eq!(code(&out), 3, "{yaml}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("/etc/bootpatch/bad.yaml") && err.contains(key),
            "{yaml}: {err}"
        );
    }
    assert_still_v1(&n);
}

#[test]
fn state_file_is_never_half_written() {
    let n = Node::new();
    let state = n.root.path("var/lib/bootpatch/state.json");
    // Kill runs at delays spread over a whole run, including its final write.
    let mut finished = false;
    for i in 0..12u64 {
        let mut child = {
            use std::os::unix::process::CommandExt;
            let mut c = n.root.command(&["bootpatch", "apply"]);
            c.process_group(0)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            c.spawn().unwrap()
        };
        std::thread::sleep(Duration::from_millis(150 + i * 170));
        bootpatch_e2e::kill_group(&child);
        let st = child.wait().unwrap();
        finished |= st.success();
        if state.exists() {
            let text = std::fs::read_to_string(&state).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("kill #{i} left a broken state file ({e}):\n{text}"));
            assert_eq!(v["schema_version"], 1);
        }
    }
    // Whatever was killed where, a last run completes the job.
    let out = n.bootpatch(&["apply"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(n.root.ok(&["dpkg", "--audit"]).trim(), "");
    let _ = finished;
}

#[test]
fn firstboot_skipped_when_patch_on_boot_is_false() {
    let n = Node::new();
    let yaml = n
        .root
        .read("etc/bootpatch/config.yaml")
        .replace("patchOnBoot: true", "patchOnBoot: false");
    n.root.write("etc/bootpatch/config.yaml", &yaml);
    let out = n.bootpatch(&["firstboot"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_still_v1(&n);
    let st = n.state();
    assert_eq!(st["first_boot"]["result"], "skipped");
    assert_eq!(st["history"][0]["result"], "skipped");
    assert!(n.root.path("var/lib/bootpatch/firstboot.done").exists());
    // A second start does nothing.
    let out = n.bootpatch(&["firstboot"]);
    assert_eq!(code(&out), 0);
    assert_eq!(n.state()["history"].as_array().unwrap().len(), 1);
}

#[test]
fn firstboot_patches_and_records() {
    let n = Node::new();
    let out = n.bootpatch(&["firstboot"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let st = n.state();
    assert_eq!(st["first_boot"]["result"], "patched", "{st}");
    assert_eq!(st["history"][0]["command"], "firstboot");
    assert_eq!(
        n.root.version_of("bootpatch-fixture-kernel").as_deref(),
        Some("2.0")
    );
    assert_eq!(n.reboot_calls(), 0);
}

#[test]
fn package_lists_truncated_by_a_power_cut_are_fetched_again() {
    let n = Node::new();
    let out = n.bootpatch(&["check"]);
    assert_eq!(code(&out), 100, "{}", text(&out));
    // What ext4 leaves of unsynced files after a power cut: zero-length or
    // zero-filled. apt fails on its own cache from then on.
    let lists = n.root.path("var/lib/bootpatch/apt/lists");
    for e in std::fs::read_dir(&lists).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with("InRelease") {
            std::fs::write(e.path(), "").unwrap();
        } else if name.ends_with("_Packages") {
            let len = std::fs::metadata(e.path()).unwrap().len() as usize;
            std::fs::write(e.path(), vec![0u8; len]).unwrap();
        }
    }
    // Whether apt trips over the damaged copy or quietly replaces it
    // depends on timestamps (same second or not); either way the run must
    // get through. The VM power-cut test is where the trip was seen.
    let out = n.bootpatch(&["apply"]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert_eq!(
        n.root.version_of("bootpatch-fixture-tool").as_deref(),
        Some("2.0")
    );
}
