//! The agent on its host: `RealHost` runs a real `bootpatch apply` (real apt and dpkg, a
//! signed fixture repository) through the agent's own `host-exec` entry, as the transient unit
//! `bootpatch-apply`, on a test host made of a Debian root with the real systemd and dbus
//! packages, entered as the agent enters a node: by the PID of that host's PID 1.
//!
//! Two kinds of test host (bootpatch_e2e::standin):
//! - a REAL systemd booted as PID 1 of new PID and mount namespaces (this sandbox allows it):
//!   real systemd-run, unit, cgroup and restart. It proves the unit outlives its killed
//!   client, the next agent reattaches without a second start, dpkg ran in the unit's cgroup,
//!   and the postinst's `systemctl restart` restarted the service on the new code.
//! - a STAND-IN host, PID 1 a shell loop, `systemd-run` and `systemctl show`/`reboot` shell
//!   scripts that record what they are asked: fast, and it shows the difference at the chroot
//!   check itself. Through the host entry, Debian's real systemctl passes its chroot check (/
//!   is PID 1's root) and goes on to look for systemd; through a chroot into a root other than
//!   PID 1's, the same request gets "Running in chroot, ignoring command".
//!
//! What only the VM tests (issue 14) prove: all this on a booted node, with the agent in a
//! real pod (its cgroup, memory limit and SIGTERM from the kubelet). Also here: SIGTERM and bad
//! input with the agent binary against the test API server. Needs root (CI is).

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
use updater::host::{Check, HostActions, RealHost, REPORT_FILE, STARTED_FILE};
use updater::node as ann;

const DAEMON: &str = "bootpatch-fixture-daemon";
const RESTART_LOG: &str = "var/log/fixture-daemon-restart.log";

/// Version 2's postinst restarts its service on upgrade, as a daemon package's does
/// (dh_installsystemd; deb-systemd-invoke ends in the same `systemctl restart`), and keeps
/// what systemctl said. The real systemctl by its path, not the stand-in's. With
/// /var/tmp/hold-daemon present it waits until the file is gone (a run in progress).
const DAEMON_POSTINST: &str = "#!/bin/sh\nset -e\nif [ \"$1\" = configure ]; then\n  if [ -e /var/tmp/hold-daemon ]; then touch /var/tmp/daemon-held; while [ -e /var/tmp/hold-daemon ]; do sleep 0.1; done; fi\n  env > /var/log/fixture-daemon-env\n  cat /proc/self/cgroup > /var/log/fixture-postinst-cgroup\n  /usr/bin/systemctl restart bootpatch-fixture-daemon.service > /var/log/fixture-daemon-restart.log 2>&1 || echo \"systemctl exit $?\" >> /var/log/fixture-daemon-restart.log\nfi\n";

/// The daemon: logs which version started, then idles.
const DAEMON_UNIT: &str = "[Unit]\nDescription=bootpatch test fixture daemon\n[Service]\nExecStart=/bin/sh /usr/lib/bootpatch-fixture/daemon\n";
const DAEMON_SCRIPT: &str = "echo \"started $(cat /usr/share/bootpatch-fixture/daemon)\" >> /var/log/fixture-daemon.log\nexec sleep infinity\n";

fn daemon(version: &str, data: &str) -> Pkg {
    Pkg::new(DAEMON, version)
        .file("/usr/share/bootpatch-fixture/daemon", data)
        .file("/usr/lib/bootpatch-fixture/daemon", DAEMON_SCRIPT)
        .file(
            "/usr/lib/systemd/system/bootpatch-fixture-daemon.service",
            DAEMON_UNIT,
        )
}

/// A root with real systemd's systemctl, the daemon fixture at 1.0, a signed repository
/// offering 2.0, and the stand-in systemd-run/systemctl.
fn node() -> Root {
    let root = node_without_stand_ins();
    standin::install(&root);
    root
}

/// The same without the stand-ins: for a real systemd.
fn node_without_stand_ins() -> Root {
    let out = tempfile::tempdir().unwrap();
    let v1 = daemon("1.0", "1\n").build(out.path());
    let v2 = daemon("2.0", "2\n")
        .postinst(DAEMON_POSTINST)
        .build(out.path());
    let key = Key::generate("fixtures");
    let root = root::fixture_node_on(Root::with_systemd(), &[v2], &key);
    let deb = root.put(&v1, "var/tmp/v1");
    root.ok(&["dpkg", "-i", &deb]);
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

/// Kills this process's `host-exec ... systemd-run` children and what they started, as a
/// pod's death would (SIGKILL to everything in the pod's cgroup): the systemd-run client
/// goes, the unit must not.
fn kill_apply_clients() -> usize {
    let mut killed = 0;
    let children = |pid: &str| -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| {
                d.flatten()
                    .flat_map(|t| {
                        std::fs::read_to_string(t.path().join("children"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(String::from)
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let kill = |pid: &str| {
        if let Some(p) = pid.parse().ok().and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    };
    for child in children("self") {
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("host-exec") && cmdline.contains("systemd-run") {
            for grandchild in children(&child) {
                kill(&grandchild);
            }
            kill(&child);
            killed += 1;
        }
    }
    killed
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(180), "waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The same agent code against a real systemd (booted as PID 1 of the test host's PID
/// namespace): the unit outlives its client, the next agent reattaches, dpkg ran in the
/// unit's cgroup, and the postinst's restart really restarted the service on the new code.
#[test]
fn under_real_systemd_the_unit_outlives_its_client_and_restarts_the_service() {
    let root = node_without_stand_ins();
    root.write("var/tmp/hold-daemon", "");
    let entry = std::path::Path::new(env!("CARGO_BIN_EXE_bootpatch-updater"));
    let host = StandInHost::boot_systemd(&root, entry);
    let rh = real_host(&root, &host);
    let rt = rt();
    let (code, _, err) = rt
        .block_on(rh.host_run(&["systemctl", "start", "bootpatch-fixture-daemon.service"]))
        .unwrap();
    assert_eq!(code, 0, "{err}");
    wait_for("the daemon's first start", || {
        root.read("var/log/fixture-daemon.log") == "started 1\n"
    });
    // `bootpatch check` as the unit bootpatch-check: real systemd-run hands back its exit
    // code (100: patches available), which is what lets the agent skip a run with nothing.
    assert_eq!(rt.block_on(rh.check()).unwrap(), Check::Pending);

    let first = {
        let rh = rh.clone();
        rt.spawn(async move { rh.apply().await })
    };
    wait_for("dpkg in the postinst", || {
        root.path("var/tmp/daemon-held").exists()
    });
    // The pod dies: its agent and the systemd-run client with it.
    first.abort();
    assert_eq!(kill_apply_clients(), 1);
    std::thread::sleep(Duration::from_millis(500));
    let unit = rt.block_on(rh.unit_state()).unwrap();
    assert!(
        unit.running(),
        "the unit goes on without its client: {unit:?}"
    );
    assert!(unit.run_id.is_some(), "{unit:?}");

    let second = {
        let rh = rh.clone();
        rt.spawn(async move { rh.apply().await })
    };
    std::thread::sleep(Duration::from_secs(1));
    assert!(!second.is_finished(), "waits for the run in progress");
    std::fs::remove_file(root.path("var/tmp/hold-daemon")).unwrap();
    let report = rt
        .block_on(second)
        .unwrap()
        .expect("the reattached run's report");
    assert_eq!(report.result, "patched");
    assert_eq!(root.version_of(DAEMON).as_deref(), Some("2.0"));
    // (/run is the host's own tmpfs here: seen through /proc/PID/root, as the agent reads it.)
    let rec: Value =
        serde_json::from_str(&std::fs::read_to_string(rh.run_path(REPORT_FILE)).unwrap()).unwrap();
    assert_eq!(rec["run_id"].as_str(), unit.run_id.as_deref());

    // dpkg and its scripts ran in the unit's cgroup, not the caller's.
    let cgroup = root.read("var/log/fixture-postinst-cgroup");
    assert!(
        cgroup.contains("/system.slice/bootpatch-apply.service"),
        "{cgroup}"
    );
    // The restart was done, on the new code.
    let said = root.read(RESTART_LOG);
    assert!(!said.contains("Running in chroot"), "{said}");
    wait_for("the daemon's restart on version 2", || {
        root.read("var/log/fixture-daemon.log") == "started 1\nstarted 2\n"
    });
    // Collected after its run.
    assert!(!rt.block_on(rh.unit_state()).unwrap().running());
    // Patched: the check now exits 0.
    assert_eq!(rt.block_on(rh.check()).unwrap(), Check::UpToDate);
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
    let doc = include_str!("../../docs/state-schema.md");
    let json = &doc[doc.find("```json").unwrap() + 7..];
    std::fs::create_dir_all(dir.path().join("var/lib/bootpatch")).unwrap();
    std::fs::write(
        dir.path().join("var/lib/bootpatch/state.json"),
        &json[..json.find("```").unwrap()],
    )
    .unwrap();
    let mut cmd = agent(&c, dir.path());
    let mut child = cmd
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Running: it publishes the host's state file on the Node once it has started (its
    // SIGTERM handler is in place before that).
    let t = Instant::now();
    while node_annotation(&c, ann::REBOOT_REQUIRED).is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the agent never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
