//! Test hosts for the updater's host-entry tests. [`StandInHost::boot_systemd`] boots the
//! root's real systemd as PID 1 of new PID and mount namespaces: real systemd-run, units,
//! cgroups and restarts. [`StandInHost::start`] is the stand-in: a process started in new mount and PID
//! namespaces whose root is a test Debian root, acting as that host's PID 1. The agent's
//! `host-exec` targets its PID as it targets the real host's PID 1 (systemd) on a node, so
//! what runs there sees / equal to /proc/1/root, as a host service does.
//!
//! What is real here: the namespaces and root the agent enters, apt, dpkg, the maintainer
//! scripts and Debian's own `systemctl` (its chroot check). What is a stand-in: PID 1 is a
//! shell loop, not systemd (no systemd can run as PID 1 in this sandbox), and so
//! `systemd-run` and `systemctl show`/`reboot` are shell scripts at /usr/local/bin that record
//! what they were asked and run the unit's command detached from the caller, as systemd would
//! run a transient unit. The VM tests (issue 14) run the same agent against a real systemd:
//! there the unit's cgroup, its survival of the pod and the service restart itself are proven.

use crate::root::Root;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the stand-in `systemd-run` logs each start (in the root).
pub const SYSTEMD_RUN_LOG: &str = "var/log/standin-systemd-run.log";
/// Where the stand-in `systemctl` logs what it was asked (in the root).
pub const SYSTEMCTL_LOG: &str = "var/log/standin-systemctl.log";

/// STAND-IN for systemd-run: `--unit U [--wait] [-p PROP] [--setenv=K=V] [--flag] -- ARGV`.
/// Refuses a second start of a unit that is active, as systemd does; the command runs in its
/// own session (setsid), not as the caller's child, and outlives the caller; `--wait` waits
/// for it and exits with its status.
const SYSTEMD_RUN: &str = r#"#!/bin/sh
# STAND-IN for systemd-run (bootpatch tests; no systemd PID 1 runs here).
set -eu
unit=; wait=; props=; envs=
while [ $# -gt 0 ]; do
  case "$1" in
    --unit) unit=$2; shift 2 ;;
    --unit=*) unit=${1#--unit=}; shift ;;
    -p) props="$props|$2"; shift 2 ;;
    --setenv=*) envs="$envs ${1#--setenv=}"; shift ;;
    --wait) wait=1; props="$props|--wait"; shift ;;
    --) shift; break ;;
    -*) props="$props|$1"; shift ;;
    *) break ;;
  esac
done
d=/run/standin-units/$unit.service
mkdir -p "$d"
if [ -e "$d/active" ]; then
  echo "Failed to start transient service unit: Unit $unit.service was already loaded or has a fragment file." >&2
  exit 1
fi
echo "start unit=$unit props=$props env=$envs argv=$*" >> /var/log/standin-systemd-run.log
printf '%s\n' "$envs" > "$d/env"
rm -f "$d/status"
touch "$d/active"
setsid /bin/sh -c 'd=$1; shift; env $(cat "$d/env") "$@"; echo $? > "$d/status"; rm -f "$d/active"' unit "$d" "$@" </dev/null >"$d/output" 2>&1 &
if [ -n "$wait" ]; then
  while [ -e "$d/active" ]; do sleep 0.1; done
  exit "$(cat "$d/status")"
fi
"#;

/// STAND-IN for `systemctl show UNIT -p ...` (from the stand-in units' files) and `systemctl
/// reboot` (recorded). Anything else goes to Debian's real systemctl.
const SYSTEMCTL: &str = r#"#!/bin/sh
# STAND-IN for systemctl show/reboot (bootpatch tests); the rest is the real systemctl.
case "$1" in
  show)
    d=/run/standin-units/$2
    echo "show $2" >> /var/log/standin-systemctl.log
    if [ -e "$d/active" ]; then echo ActiveState=active; echo SubState=running
    else echo ActiveState=inactive; echo SubState=dead; fi
    echo Result=success
    echo "ExecMainStatus=$(cat "$d/status" 2>/dev/null || echo 0)"
    if [ -e "$d/active" ]; then echo "Environment=$(cat "$d/env")"; else echo Environment=; fi
    ;;
  reboot) echo reboot >> /var/log/standin-systemctl.log ;;
  *) exec /usr/bin/systemctl "$@" ;;
esac
"#;

/// Puts the stand-in `systemd-run` and `systemctl` at /usr/local/bin in the root (ahead of
/// /usr/bin in the host PATH the agent gives host programs).
pub fn install(root: &Root) {
    for (name, text) in [("systemd-run", SYSTEMD_RUN), ("systemctl", SYSTEMCTL)] {
        let rel = format!("usr/local/bin/{name}");
        root.write(&rel, text);
        std::fs::set_permissions(root.path(&rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The stand-in host: its PID 1 as seen from here is [`StandInHost::pid`].
pub struct StandInHost {
    pub pid: u32,
    unshare: Child,
}

impl StandInHost {
    /// Starts PID 1 of a new PID namespace, in a new mount namespace with its own /proc and
    /// the machine's /dev, chrooted into the root. Waits until it runs.
    pub fn start(root: &Root) -> StandInHost {
        let _ = std::fs::remove_file(root.path("run/standin-init"));
        let unshare = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "set -e; r=\"$1\"; mount -t proc proc \"$r/proc\"; mount --rbind /dev \"$r/dev\"; \
                 exec chroot \"$r\" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -c \
                 'trap \"exit 0\" TERM; echo $$ > /run/standin-init; while :; do sleep 1 & wait $!; done'",
                "standin",
            ])
            .arg(root.dir())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting unshare");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let start = Instant::now();
        let mut unshare = unshare;
        loop {
            let pid = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
            if let Some(pid) = pid {
                if root.read("run/standin-init").trim() == "1" {
                    return StandInHost { pid, unshare };
                }
            }
            if start.elapsed() > Duration::from_secs(20)
                || unshare.try_wait().ok().flatten().is_some()
            {
                let _ = unshare.kill();
                let _ = unshare.wait();
                panic!("the stand-in host did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl StandInHost {
    /// Boots the root's real systemd as PID 1 of new PID and mount namespaces (the root
    /// pivoted to, its own /proc, /run a tmpfs, the machine's /dev and /sys), the nearest
    /// this sandbox gets to a node. Waits until `systemctl is-system-running` says running or
    /// degraded, asked through `entry host-exec` (the agent's own way in). Panics, naming
    /// what it saw, if systemd does not come up in 90 s.
    pub fn boot_systemd(root: &Root, entry: &std::path::Path) -> StandInHost {
        let mut unshare = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                "set -e; r=\"$1\"; mount --bind \"$r\" \"$r\"; mount -t proc proc \"$r/proc\"; \
                 mount --rbind /dev \"$r/dev\"; mount --rbind /sys \"$r/sys\"; mount -t tmpfs tmpfs \"$r/run\"; \
                 cd \"$r\"; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot; \
                 exec /usr/bin/env -i container=bootpatch-test /lib/systemd/systemd --system",
                "systemd-host",
            ])
            .arg(root.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting unshare");
        let children = format!("/proc/{0}/task/{0}/children", unshare.id());
        let start = Instant::now();
        let mut said = String::new();
        loop {
            let pid: Option<u32> = std::fs::read_to_string(&children)
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()));
            if let Some(pid) = pid {
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                if exe.ends_with("systemd") {
                    let out = Command::new(entry)
                        .args(["host-exec", "--target-pid", &pid.to_string(), "--"])
                        .args(["systemctl", "is-system-running"])
                        .stdin(Stdio::null())
                        .output()
                        .expect("running the host entry");
                    said = String::from_utf8_lossy(&out.stdout).trim().to_string()
                        + &String::from_utf8_lossy(&out.stderr);
                    if said == "running" || said == "degraded" {
                        return StandInHost { pid, unshare };
                    }
                }
            }
            if start.elapsed() > Duration::from_secs(90)
                || unshare.try_wait().ok().flatten().is_some()
            {
                if let Some(p) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
                let _ = unshare.kill();
                let _ = unshare.wait();
                panic!("systemd did not come up as PID 1 of the test host: {said:?}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for StandInHost {
    fn drop(&mut self) {
        // Killing a PID namespace's init kills everything in it.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
        let _ = self.unshare.wait();
    }
}
