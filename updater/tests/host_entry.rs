//! The agent on its host: `RealHost` runs a real `bootpatch apply` (real apt and dpkg, a
//! signed fixture repository) through the agent's own `host-exec` entry, as the transient unit
//! `bootpatch-apply`, in a stand-in host (bootpatch_e2e::standin: new mount + PID namespaces
//! whose root is a Debian root, its PID 1 standing in for systemd; `systemd-run` and
//! `systemctl show` there are stand-in scripts). What these tests prove: the agent enters the
//! target's namespaces and root with a clean environment, bootpatch's report comes back
//! through the host file, a run in progress is reattached to and never started twice, and a
//! maintainer script's `systemctl restart` is not swallowed by systemctl's chroot check (it
//! goes on to look for systemd, which the stand-in host does not run), where the old `chroot
//! /host` path gets "Running in chroot, ignoring request". What they cannot prove here: the
//! restart itself, the unit's own cgroup and its survival of the pod under a real systemd;
//! the VM tests (issue 14) do. Also here: SIGTERM and bad input, with the agent binary against
//! the test API server. Needs root (CI is).

mod common;

use bootpatch_e2e::fixtures::Pkg;
use bootpatch_e2e::repo::Key;
use bootpatch_e2e::root::{self, Root};
use bootpatch_e2e::standin::{self, StandInHost};
use common::Cluster;
use kube_testserver::resources::{EVENTS, NODES};
use kube_testserver::store::PatchType;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use updater::host::{HostActions, RealHost, REPORT_FILE, STARTED_FILE};
use updater::node as ann;

const DAEMON: &str = "bootpatch-fixture-daemon";
const RESTART_LOG: &str = "var/log/fixture-daemon-restart.log";

/// Version 2's postinst restarts its service on upgrade, as a daemon package's does
/// (dh_installsystemd; deb-systemd-invoke ends in the same `systemctl restart`), and keeps
/// what systemctl said. The real systemctl by its path, not the stand-in's. With
/// /var/tmp/hold-daemon present it waits until the file is gone (a run in progress).
const DAEMON_POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  if [ -e /var/tmp/hold-daemon ]; then touch /var/tmp/daemon-held; while [ -e /var/tmp/hold-daemon ]; do sleep 0.1; done; fi\n  env > /var/log/fixture-daemon-env\n  /usr/bin/systemctl restart bootpatch-fixture-daemon.service > /var/log/fixture-daemon-restart.log 2>&1 || echo \"systemctl exit $?\" >> /var/log/fixture-daemon-restart.log\nfi\n";

/// A root with real systemd's systemctl, the daemon fixture at 1.0, a signed repository
/// offering 2.0, and the stand-in systemd-run/systemctl.
fn node() -> Root {
    let out = tempfile::tempdir().unwrap();
    let v1 = Pkg::new(DAEMON, "1.0")
        .file("/usr/share/bootpatch-fixture/daemon", "1\n")
        .build(out.path());
    let v2 = Pkg::new(DAEMON, "2.0")
        .file("/usr/share/bootpatch-fixture/daemon", "2\n")
        .postinst(DAEMON_POSTINST)
        .build(out.path());
    let key = Key::generate("fixtures");
    let root = root::fixture_node_on(Root::with_systemd(), &[v2], &key);
    let deb = root.put(&v1, "var/tmp/v1");
    root.ok(&["dpkg", "-i", &deb]);
    standin::install(&root);
    root
}

fn real_host(root: &Root, host: &StandInHost) -> RealHost {
    RealHost {
        root: root.dir().to_path_buf(),
        bootpatch: "/usr/local/sbin/bootpatch".into(),
        target_pid: host.pid,
        entry: env!("CARGO_BIN_EXE_bootpatch-updater").into(),
        poll: Duration::from_millis(200),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn starts(root: &Root) -> usize {
    root.read(standin::SYSTEMD_RUN_LOG)
        .lines()
        .filter(|l| l.starts_with("start "))
        .count()
}

#[test]
fn apply_runs_on_the_host_as_a_unit_and_its_restart_is_not_swallowed() {
    let root = node();
    let host = StandInHost::start(&root);
    let rh = real_host(&root, &host);
    let rt = rt();

    // The entry: the target's root and a clean environment, nothing of ours.
    let (code, out, err) = rt
        .block_on(rh.host_run(&["sh", "-c", "env; stat -L -c '%d:%i' / /proc/1/root"]))
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{out}"
    );
    assert!(!out.contains("CARGO") && !out.contains("RUST"), "{out}");
    let ids: Vec<&str> = out.lines().rev().take(2).collect();
    assert_eq!(ids[0], ids[1], "/ is PID 1's root: {out}");
    let outer = std::fs::metadata(root.dir()).unwrap();
    assert_eq!(
        ids[0],
        format!(
            "{}:{}",
            std::os::unix::fs::MetadataExt::dev(&outer),
            std::os::unix::fs::MetadataExt::ino(&outer)
        ),
        "/ is the stand-in host's root"
    );

    let report = rt
        .block_on(rh.apply())
        .expect("apply through the host entry");
    assert_eq!(report.result, "patched");
    assert!(
        report
            .packages
            .iter()
            .any(|p| p.name == DAEMON && p.from.as_deref() == Some("1.0") && p.to == "2.0"),
        "{report:?}"
    );
    assert_eq!(root.version_of(DAEMON).as_deref(), Some("2.0"));

    // As a transient unit, through (the stand-in) systemd-run, once.
    let log = root.read(standin::SYSTEMD_RUN_LOG);
    assert_eq!(starts(&root), 1, "{log}");
    for want in [
        "unit=bootpatch-apply ",
        "|--wait",
        "|--collect",
        "|--service-type=exec",
        "env= BOOTPATCH_RUN_ID=",
        "argv=/usr/local/sbin/bootpatch apply --json --no-reboot --report-file /run/bootpatch/apply-report.json",
    ] {
        assert!(log.contains(want), "{want:?} not in {log}");
    }
    // The report came through the host file, with the run's id; the started mark is gone.
    let rec: Value = serde_json::from_str(&root.read(REPORT_FILE)).unwrap();
    assert!(
        log.contains(&format!(
            "BOOTPATCH_RUN_ID={}",
            rec["run_id"].as_str().unwrap()
        )),
        "{rec}"
    );
    assert_eq!(rec["exit_code"], 0);
    assert!(!root.path(STARTED_FILE).exists());
    // dpkg and its scripts had the clean host environment.
    let env = root.read("var/log/fixture-daemon-env");
    assert!(!env.contains("CARGO"), "{env}");

    // The restart request reached systemctl's next step (finding systemd, which the stand-in
    // host does not run) instead of being dropped as coming from a chroot.
    let said = root.read(RESTART_LOG);
    assert!(!said.contains("Running in chroot"), "{said}");
    assert!(
        said.contains("System has not been booted with systemd"),
        "{said}"
    );

    // The old path, a chroot into the host root from a process whose PID 1 lives in another
    // root: the same request is dropped by the same systemctl.
    let old = old_chroot_path(
        &root,
        "/usr/bin/systemctl restart bootpatch-fixture-daemon.service",
    );
    assert!(old.contains("Running in chroot, ignoring"), "{old}");

    // reboot goes the same way: `systemctl reboot` on the host.
    rt.block_on(rh.reboot()).unwrap();
    assert!(root.read(standin::SYSTEMCTL_LOG).contains("reboot"));
}

/// Runs `cmd` as the old `chroot /host ...` did: chrooted into the root, with /proc showing a
/// PID 1 whose root is another directory (here the machine's /, in a PID namespace of our own
/// so that its /proc/1/root is readable: the machine's own PID 1's is not, in this sandbox,
/// and systemctl then cannot tell either way). Returns stdout and stderr.
fn old_chroot_path(root: &Root, cmd: &str) -> String {
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            "r=\"$1\"; mount -t proc proc \"$r/proc\"; chroot \"$r\" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin sh -c \"$2\" 2>&1",
            "oldpath",
        ])
        .arg(root.dir())
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn a_run_in_progress_is_reattached_to_not_started_twice() {
    let root = node();
    let host = StandInHost::start(&root);
    let rh = real_host(&root, &host);
    let rt = rt();
    root.write("var/tmp/hold-daemon", "");
    // The first agent starts the run, then goes away while dpkg is in the postinst.
    let first = {
        let rh = rh.clone();
        rt.spawn(async move { rh.apply().await })
    };
    let t = Instant::now();
    while !root.path("var/tmp/daemon-held").exists() {
        assert!(t.elapsed() < Duration::from_secs(180), "never held");
        std::thread::sleep(Duration::from_millis(100));
    }
    first.abort();
    assert_eq!(starts(&root), 1);
    // The next agent finds the unit active and waits for it.
    let second = {
        let rh = rh.clone();
        rt.spawn(async move { rh.apply().await })
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(!second.is_finished(), "waits for the run in progress");
    assert_eq!(starts(&root), 1, "no second start");
    assert!(root
        .read(standin::SYSTEMCTL_LOG)
        .contains("show bootpatch-apply.service"));
    std::fs::remove_file(root.path("var/tmp/hold-daemon")).unwrap();
    let report = rt
        .block_on(second)
        .unwrap()
        .expect("the reattached run's report");
    assert_eq!(report.result, "patched");
    assert_eq!(starts(&root), 1, "{}", root.read(standin::SYSTEMD_RUN_LOG));
    assert_eq!(root.version_of(DAEMON).as_deref(), Some("2.0"));
    // A later apply is a new run (the old report is not taken for it): up to date now.
    let again = rt.block_on(rh.apply()).unwrap();
    assert_eq!(again.result, "up-to-date");
    assert_eq!(starts(&root), 2);
}

#[test]
fn a_failed_run_is_reported_with_bootpatchs_exit_code() {
    let root = node();
    // The repository's signature no longer verifies: bootpatch exits 6.
    let host = StandInHost::start(&root);
    let rh = real_host(&root, &host);
    let cfg = root.read("etc/bootpatch/config.yaml");
    let other = Key::generate("other");
    let indented: String = other
        .armored
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    let at = cfg.find("    signedBy: |\n").unwrap();
    root.write(
        "etc/bootpatch/config.yaml",
        &format!("{}    signedBy: |\n{indented}", &cfg[..at]),
    );
    let e = rt().block_on(rh.apply()).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("bootpatch apply (unit bootpatch-apply) failed with exit code 6"),
        "{e}"
    );
    assert_eq!(root.version_of(DAEMON).as_deref(), Some("1.0"));
}

// --- the agent binary: bad input and SIGTERM -------------------------------------------------

fn agent(c: &Cluster, host_root: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bootpatch-updater"));
    cmd.args([
        "--node",
        "node-1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--profiling-addr",
        "127.0.0.1:0",
    ])
    .arg("--host-root")
    .arg(host_root)
    .env("KUBECONFIG", &c.kubeconfig)
    .env_remove("KUBERNETES_SERVICE_HOST")
    .env_remove("KUBERNETES_SERVICE_PORT")
    .stdin(Stdio::null());
    cmd
}

fn node_annotation(c: &Cluster, key: &str) -> String {
    c.server
        .get(&NODES, "", "node-1")
        .and_then(|n| n["metadata"]["annotations"][key].as_str().map(String::from))
        .unwrap_or_default()
}

fn run_bounded(mut cmd: Command, timeout: Duration) -> (i32, String) {
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.code().unwrap_or(-1), err);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            panic!("the agent did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_missing_host_root_or_bootpatch_is_named_on_the_node() {
    let c = Cluster::start();
    c.server.add_node("node-1").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("host");
    let (code, err) = run_bounded(agent(&c, &missing), Duration::from_secs(30));
    assert_eq!(code, 1, "{err}");
    let want = format!("the host root {} does not exist", missing.display());
    assert!(err.contains(&want), "{err}");
    assert!(node_annotation(&c, ann::LAST_MESSAGE).contains(&want));
    assert_eq!(node_annotation(&c, ann::LAST_RESULT), "agent-error");

    let (code, err) = run_bounded(agent(&c, dir.path()), Duration::from_secs(30));
    assert_eq!(code, 1, "{err}");
    let want = "bootpatch is not installed on the host: /usr/local/sbin/bootpatch does not exist";
    assert!(err.contains(want), "{err}");
    assert!(node_annotation(&c, ann::LAST_MESSAGE).contains(want));
}

#[test]
fn sigterm_records_the_step_and_exits_cleanly() {
    let c = Cluster::start();
    c.server.add_node("node-1").unwrap();
    // A step other than idle, so the record shows it is the node's own.
    c.server
        .with_store(|s| {
            s.patch(
                &NODES,
                "",
                "node-1",
                PatchType::Merge,
                &serde_json::json!({"metadata": {"annotations": {ann::STEP: "failed"}}}),
                false,
                false,
            )
        })
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("usr/local/sbin")).unwrap();
    std::fs::write(dir.path().join("usr/local/sbin/bootpatch"), "").unwrap();
    let mut cmd = agent(&c, dir.path());
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it start and settle (its SIGTERM handler is in place before it first watches).
    std::thread::sleep(Duration::from_secs(2));
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let t = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(st.code(), Some(0), "{err}");
    let stopped = node_annotation(&c, ann::AGENT_STOPPED);
    assert!(
        stopped.ends_with(" SIGTERM at step failed"),
        "{stopped:?}\n{err}"
    );
    let events = c.server.list(&EVENTS, None);
    let ev = events
        .iter()
        .find(|e| e["reason"] == "OSPatchAgentStopped")
        .unwrap_or_else(|| panic!("no OSPatchAgentStopped event in {events:?}"));
    let msg = ev["message"].as_str().unwrap();
    assert!(
        msg.contains("at step failed") && msg.contains("the host is left alone"),
        "{msg}"
    );
}
