//! The agent's way onto its host without programs of its own (the agent's image holds only
//! the agent): `bootpatch-updater host-exec --target-pid PID -- PROG ARGS...`. The agent runs
//! itself (`/proc/self/exe`) in that mode; the child, still single-threaded, joins PID's
//! cgroup, ipc, uts, net, pid and mount namespaces with setns(2), takes PID's root directory
//! (`/proc/PID/root`: fchdir + chroot("."), as `nsenter -r` does) and `/` as its directory,
//! drops the container's environment for a clean host one ([`HOST_ENV`]), then runs PROG.
//! setns into a PID namespace applies to children only, so PROG is started as a child (fork +
//! exec) and its exit status is passed on. With PID 1 (the default) PROG runs exactly where
//! a host service would see itself: / is PID 1's root, so systemctl's chroot check passes and
//! `systemd-run`/`systemctl` reach the host's systemd.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;

/// The hidden subcommand.
pub const HOST_EXEC: &str = "host-exec";

/// The environment host programs get: nothing of the container's.
pub const HOST_ENV: [(&str, &str); 2] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("LANG", "C.UTF-8"),
];

/// The namespaces joined, in nsenter's order (mount last: after it, /proc is the target's).
const NAMESPACES: [(&str, rustix::thread::LinkNameSpaceType); 6] = {
    use rustix::thread::LinkNameSpaceType as T;
    [
        ("cgroup", T::ControlGroup),
        ("ipc", T::InterProcessCommunication),
        ("uts", T::HostNameAndNISDomainName),
        ("net", T::Network),
        ("pid", T::ProcessID),
        ("mnt", T::Mount),
    ]
};

/// The command line that runs `argv` on the host of `target_pid` through `exe` (the agent).
pub fn command_line(target_pid: u32, argv: &[&str]) -> Vec<String> {
    let mut v = vec![
        HOST_EXEC.to_string(),
        "--target-pid".into(),
        target_pid.to_string(),
        "--".into(),
    ];
    v.extend(argv.iter().map(|s| s.to_string()));
    v
}

/// If the process was started as `host-exec ...`, does it and exits; otherwise returns. Call
/// first thing in `main`, before any thread exists (setns into a mount namespace refuses a
/// process whose threads share their filesystem attributes).
pub fn main_if_host_exec() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a == HOST_EXEC) != Some(true) {
        return;
    }
    let code = match parse(&args[2..]) {
        Ok((pid, argv)) => match enter(pid).and_then(|()| run(&argv)) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bootpatch-updater host-exec: {e}");
                126
            }
        },
        Err(e) => {
            eprintln!("bootpatch-updater host-exec: {e} (usage: host-exec [--target-pid PID] -- PROG [ARGS...])");
            2
        }
    };
    std::process::exit(code);
}

fn parse(args: &[OsString]) -> Result<(u32, Vec<OsString>), String> {
    let mut pid = 1u32;
    let mut i = 0;
    while i < args.len() {
        match args[i].to_str() {
            Some("--target-pid") => {
                let v = args.get(i + 1).and_then(|v| v.to_str()).unwrap_or("");
                pid = v
                    .parse()
                    .map_err(|_| format!("--target-pid takes a process id, not {v:?}"))?;
                i += 2;
            }
            Some("--") => {
                let argv = args[i + 1..].to_vec();
                if argv.is_empty() {
                    return Err("no program given".into());
                }
                return Ok((pid, argv));
            }
            _ => return Err(format!("unexpected argument {:?}", args[i])),
        }
    }
    Err("no program given".into())
}

/// Joins `pid`'s namespaces and root. Namespaces we already share are left alone; one the
/// kernel lacks (no `/proc/PID/ns/NAME`) is skipped.
pub fn enter(pid: u32) -> Result<(), String> {
    let proc_dir = format!("/proc/{pid}");
    if !std::path::Path::new(&proc_dir).exists() {
        return Err(format!(
            "{proc_dir} does not exist: no process {pid} to take the host's namespaces from (the pod needs hostPID: true)"
        ));
    }
    let mut fds = Vec::new();
    for (name, kind) in NAMESPACES {
        let theirs = format!("{proc_dir}/ns/{name}");
        let their_meta = match std::fs::metadata(&theirs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{theirs}: {e}")),
        };
        let same = std::fs::metadata(format!("/proc/self/ns/{name}"))
            .map(|m| (m.dev(), m.ino()) == (their_meta.dev(), their_meta.ino()))
            .unwrap_or(false);
        if !same {
            let f = File::open(&theirs).map_err(|e| format!("opening {theirs}: {e}"))?;
            fds.push((name, kind, theirs, f));
        }
    }
    // Opened before the mount namespace changes: it names the target's root either way.
    let root_path = format!("{proc_dir}/root");
    let root = File::open(&root_path).map_err(|e| format!("opening {root_path}: {e}"))?;
    for (name, kind, path, f) in &fds {
        rustix::thread::move_into_link_name_space(std::os::fd::AsFd::as_fd(f), Some(*kind))
            .map_err(|e| format!("setns into {path} ({name} namespace of process {pid}): {e}"))?;
    }
    rustix::process::fchdir(&root).map_err(|e| format!("fchdir to {root_path}: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("chroot to {root_path}: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    Ok(())
}

/// Runs `argv` (looked up in [`HOST_ENV`]'s PATH) as a child, in a clean environment, and
/// returns its exit code (128 + signal for a signalled child, as a shell does).
fn run(argv: &[OsString]) -> Result<i32, String> {
    let mut c = std::process::Command::new(&argv[0]);
    c.args(&argv[1..]).env_clear().current_dir("/");
    for (k, v) in HOST_ENV {
        c.env(k, v);
    }
    let st = c
        .status()
        .map_err(|e| format!("running {:?} on the host: {e}", argv[0]))?;
    Ok(st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_its_command_line() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        let (pid, argv) = parse(&a(&["--target-pid", "42", "--", "systemctl", "reboot"])).unwrap();
        assert_eq!((pid, argv), (42, a(&["systemctl", "reboot"])));
        assert_eq!(parse(&a(&["--", "true"])).unwrap().0, 1);
        assert!(parse(&a(&["--target-pid", "x", "--", "true"])).is_err());
        assert!(parse(&a(&["--"])).is_err());
        assert!(parse(&a(&["true"])).is_err());
        assert_eq!(
            command_line(7, &["systemctl", "reboot"]),
            [
                "host-exec",
                "--target-pid",
                "7",
                "--",
                "systemctl",
                "reboot"
            ]
        );
    }

    #[test]
    fn a_missing_target_is_named() {
        let e = enter(u32::MAX - 1).unwrap_err();
        assert!(e.contains("/proc/4294967294 does not exist"), "{e}");
    }
}
