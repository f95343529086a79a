//! `builder boot DISK`: boots an image under QEMU (TCG) with the serial
//! console captured, under the firmware `--firmware` names (UEFI by
//! default, SeaBIOS, or OVMF with Secure Boot enforced and Microsoft's keys
//! enrolled, as the clouds' Trusted Launch / Shielded VM firmware has them), until the guest powers off, the
//! `--until` text shows on the console, or the timeout passes. The disk is
//! opened with `snapshot=on` (booting never changes a built artifact) unless
//! `--writable` asks to keep the guest's writes, as tests that boot a node
//! twice do (on an overlay of the image).
//!
//! `--save-state DIR` pauses a writable guest when the `--until` text shows
//! and saves its running state there (QMP `migrate` to a file, plus the
//! firmware's variable store); `--resume DIR` starts from that state instead
//! of booting. A test that needs many runs from one moment of a boot (power
//! cuts during an install) boots to that moment once.

use crate::cli::BootArgs;
use crate::cmd;
use crate::qmp::Qmp;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Variables with Microsoft's KEK and db enrolled, Secure Boot on.
const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// The firmware a guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// Legacy BIOS (SeaBIOS, QEMU's default).
    Bios,
    /// UEFI (OVMF) without Secure Boot.
    Uefi,
    /// UEFI with Secure Boot enforced and Microsoft's keys enrolled.
    Secureboot,
}

impl Firmware {
    pub fn name(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
            Firmware::Secureboot => "secureboot",
        }
    }

    /// OVMF's code and variable template, for UEFI firmwares.
    fn ovmf(self) -> Option<(&'static str, &'static str)> {
        match self {
            Firmware::Bios => None,
            Firmware::Uefi => Some((OVMF_CODE, OVMF_VARS)),
            Firmware::Secureboot => Some((OVMF_CODE_SECBOOT, OVMF_VARS_MS)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    PoweredOff,
    MarkerSeen,
    TimedOut,
}

/// The QEMU block format for a disk file, from its name.
pub fn drive_format(p: &Path) -> Result<&'static str> {
    let name = p.to_string_lossy();
    Ok(match p.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "qcow2" => "qcow2",
        "vhd" => "vpc",
        "vmdk" => "vmdk",
        "ova" | "gz" | "tar" => {
            bail!("{name} is an archive; boot the disk inside it (or disk.raw)")
        }
        _ => "raw",
    })
}

pub fn run(a: BootArgs) -> Result<i32> {
    let to_stdout = a.serial.is_none();
    match boot(&a, to_stdout)? {
        Outcome::PoweredOff => {
            eprintln!("builder boot: the guest powered off");
            Ok(0)
        }
        Outcome::MarkerSeen => {
            eprintln!(
                "builder boot: {:?} seen on the serial console",
                a.until.as_deref().unwrap_or("")
            );
            Ok(0)
        }
        Outcome::TimedOut => {
            eprintln!("builder boot: timed out after {} s", a.timeout);
            Ok(124)
        }
    }
}

/// Boots and waits; `echo` copies the serial console to stdout as it comes.
pub fn boot(a: &BootArgs, echo: bool) -> Result<Outcome> {
    cmd::require(
        "qemu-system-x86_64",
        "qemu-system-x86 (scripts/deps/builder.sh)",
    )?;
    let ovmf = a.firmware.ovmf();
    if let Some((code, vars)) = ovmf {
        for f in [code, vars] {
            if !Path::new(f).exists() {
                bail!("{f} not found: install ovmf (scripts/deps/builder.sh)");
            }
        }
    }
    if !a.disk.exists() {
        bail!("{} does not exist", a.disk.display());
    }
    let scratch = tempfile::tempdir().context("making a scratch folder")?;
    let vars = scratch.path().join("OVMF_VARS.fd");
    if let Some(dir) = &a.resume {
        if !dir.join(STATE_FILE).is_file() {
            bail!(
                "{} has no {STATE_FILE}: not a state saved by builder boot --save-state",
                dir.display()
            );
        }
        let saved = fs::read_to_string(dir.join(FIRMWARE_FILE)).unwrap_or_default();
        if saved.trim() != a.firmware.name() {
            bail!(
                "{} was saved under firmware {:?}; resume it with --firmware {}",
                dir.display(),
                saved.trim(),
                saved.trim()
            );
        }
    }
    if let Some((_, template)) = ovmf {
        let vars_from = match &a.resume {
            Some(dir) => dir.join(VARS_FILE),
            None => PathBuf::from(template),
        };
        fs::copy(&vars_from, &vars)
            .with_context(|| format!("copying the variable store {}", vars_from.display()))?;
    }
    let serial: PathBuf = a
        .serial
        .clone()
        .unwrap_or_else(|| scratch.path().join("serial.log"));
    fs::write(&serial, b"").with_context(|| format!("creating {}", serial.display()))?;

    let mut q = Command::new("qemu-system-x86_64");
    // Secure Boot firmware keeps its variables in SMM, out of the OS's reach.
    let machine = match a.firmware {
        Firmware::Secureboot => "q35,smm=on",
        _ => "q35",
    };
    q.args(["-machine", machine, "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &a.cpus.to_string()])
        .args(["-m", &a.memory.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(network_args(&a.forward)?);
    if let Some((code, _)) = ovmf {
        if a.firmware == Firmware::Secureboot {
            q.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
        }
        q.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    let fmt = drive_format(&a.disk)?;
    let extra_opt = if fmt == "vpc" {
        ",force_size_calc=current_size"
    } else {
        ""
    };
    let snapshot = if a.writable { "" } else { ",snapshot=on" };
    q.arg("-drive").arg(format!(
        "file={},format={fmt}{extra_opt},if=virtio{snapshot}",
        a.disk.display()
    ));
    if let Some(seed) = &a.seed {
        q.arg("-drive").arg(format!(
            "file={},format=raw,if=virtio,readonly=on",
            seed.display()
        ));
    }
    for d in &a.extra_disks {
        q.arg("-drive").arg(format!(
            "file={},format={},if=virtio",
            d.display(),
            drive_format(d)?
        ));
    }
    q.args([
        "-chardev",
        &format!("file,id=ser0,path={}", serial.display()),
    ])
    .args(["-serial", "chardev:ser0"])
    .args(["-device", "virtio-rng-pci"]);
    let qmp_socket = scratch.path().join("qmp.sock");
    if a.save_state.is_some() || a.resume.is_some() {
        q.arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()));
    }
    if a.resume.is_some() {
        q.args(["-incoming", "defer"]);
    }
    let line = cmd::display(&q);
    let mut child = q
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {line}"))?;
    let mut qmp = match a.save_state.is_some() || a.resume.is_some() {
        true => Some(Qmp::connect(&qmp_socket, Duration::from_secs(30))?),
        false => None,
    };
    if let (Some(dir), Some(qmp)) = (&a.resume, qmp.as_mut()) {
        let uri = format!("file:{}", dir.join(STATE_FILE).display());
        qmp.execute("migrate-incoming", json!({ "uri": uri }))?;
        // The guest was paused when saved, so QEMU keeps it paused once the
        // state is in: load, then continue.
        qmp.wait_for(
            "query-migrate",
            Duration::from_secs(300),
            crate::qmp::migration_done,
        )
        .with_context(|| format!("loading the guest saved in {}", dir.display()))?;
        qmp.execute("cont", json!({}))?;
        qmp.wait_for("query-status", Duration::from_secs(60), |v| {
            Ok(v["status"] == "running")
        })
        .with_context(|| format!("resuming the guest saved in {}", dir.display()))?;
        eprintln!("builder boot: resumed from {}", dir.display());
    }

    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut log = fs::File::open(&serial)?;
    let mut pos = 0u64;
    let mut window = String::new();
    let mut out = std::io::stdout();
    let outcome = loop {
        std::thread::sleep(Duration::from_millis(200));
        log.seek(SeekFrom::Start(pos))?;
        let mut fresh = Vec::new();
        log.read_to_end(&mut fresh)?;
        pos += fresh.len() as u64;
        if !fresh.is_empty() {
            if echo {
                let _ = out.write_all(&fresh);
                let _ = out.flush();
            }
            window.push_str(&String::from_utf8_lossy(&fresh));
            if let Some(m) = &a.until {
                if window.contains(m.as_str()) {
                    if let (Some(dir), Some(qmp)) = (&a.save_state, qmp.as_mut()) {
                        save_state(qmp, dir, ovmf.map(|_| vars.as_path()), a.firmware)?;
                        let _ = child.wait();
                    }
                    break Outcome::MarkerSeen;
                }
            }
            if window.len() > 1 << 20 {
                window = cmd::tail(&window, 64 << 10).to_string();
            }
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                bail!(
                    "QEMU failed ({status}): {line}\n--- stderr ---\n{}",
                    cmd::tail(&err, 4000)
                );
            }
            break Outcome::PoweredOff;
        }
        if Instant::now() >= deadline {
            break Outcome::TimedOut;
        }
    };
    if outcome != Outcome::PoweredOff {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(outcome)
}

/// The address a guest reaches `--forward`ed host ports at.
pub const FORWARD_ADDR: &str = "10.0.2.100";

/// No network, or with `--forward`: QEMU's user-mode network with
/// `restrict=on` (the guest reaches nothing else, and nothing leaves the
/// machine) and one `guestfwd` per forward, from FORWARD_ADDR:GUEST_PORT to
/// the host's loopback HOST_PORT. Each rule runs `builder relay HOST_PORT`
/// for every guest connection (QEMU's `cmd:` form): the other form, a
/// character device, is one host connection opened when QEMU starts that
/// every guest connection shares in turn, so a guest with two connections
/// open at once (an HTTP client with a watch and a request, say) would have
/// their bytes interleaved, and a host server that restarts is never
/// reached again.
pub fn network_args(forwards: &[String]) -> Result<Vec<String>> {
    if forwards.is_empty() {
        return Ok(vec!["-nic".into(), "none".into()]);
    }
    let exe = std::env::current_exe().context("finding the builder binary for --forward")?;
    let exe = exe.to_string_lossy();
    if exe.contains(char::is_whitespace) {
        bail!("--forward: the builder binary's path {exe:?} has white space, which QEMU's guestfwd command cannot hold");
    }
    let mut netdev = String::from("user,id=net0,restrict=on");
    for f in forwards {
        let parsed = f
            .split_once(':')
            .and_then(|(g, h)| Some((g.parse::<u16>().ok()?, h.parse::<u16>().ok()?)));
        let Some((guest, host)) = parsed.filter(|(g, h)| *g > 0 && *h > 0) else {
            bail!("--forward {f:?}: expected GUEST_PORT:HOST_PORT, e.g. 8080:38080");
        };
        // QEMU's option syntax doubles a comma inside a value.
        netdev.push_str(&format!(
            ",guestfwd=tcp:{FORWARD_ADDR}:{guest}-cmd:{} relay {host}",
            exe.replace(',', ",,")
        ));
    }
    Ok(vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ])
}

/// `builder relay PORT`: joins stdin and stdout (one guest connection, as
/// QEMU hands it to a guestfwd command) to the host's 127.0.0.1:PORT, until
/// the host's side ends. A refused connection ends at once, so the guest sees
/// its connection closed, as it would a server that is down.
pub fn relay(port: u16) -> Result<i32> {
    let sock = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("relay: connecting to 127.0.0.1:{port}"))?;
    let mut up = sock.try_clone().context("relay: cloning the socket")?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    // Flushed after every read: stdout is line-buffered, and TLS records have
    // no line ends (a server's handshake would sit in the buffer).
    let mut down = sock;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match down.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    break;
                }
            }
        }
    }
    // The host is done: returning exits, which closes the guest's side
    // (waiting for the guest to close first could wait for ever).
    Ok(0)
}

const STATE_FILE: &str = "state";
const VARS_FILE: &str = "OVMF_VARS.fd";
const FIRMWARE_FILE: &str = "firmware";

/// Pauses the guest, writes its state and a copy of its variable store into
/// `dir` (the state last, under a temporary name until complete), and
/// quits QEMU. A paused guest writes nothing more to its disks.
fn save_state(qmp: &mut Qmp, dir: &Path, vars: Option<&Path>, fw: Firmware) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!("{STATE_FILE}.partial"));
    let _ = fs::remove_file(dir.join(STATE_FILE));
    qmp.execute("stop", json!({}))?;
    qmp.execute(
        "migrate",
        json!({ "uri": format!("file:{}", partial.display()) }),
    )?;
    qmp.wait_for(
        "query-migrate",
        Duration::from_secs(300),
        crate::qmp::migration_done,
    )?;
    if let Some(vars) = vars {
        fs::copy(vars, dir.join(VARS_FILE)).context("saving the variable store")?;
    }
    fs::write(dir.join(FIRMWARE_FILE), fw.name())?;
    fs::rename(&partial, dir.join(STATE_FILE))
        .with_context(|| format!("publishing {}", dir.join(STATE_FILE).display()))?;
    // QEMU closes the monitor as it quits, before or after answering.
    let _ = qmp.execute("quit", json!({}));
    eprintln!("builder boot: guest state saved in {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_are_restricted_guestfwd_rules() {
        assert_eq!(network_args(&[]).unwrap(), ["-nic", "none"]);
        let a = network_args(&["8080:38080".into(), "6443:40000".into()]).unwrap();
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_string_lossy();
        assert_eq!(
            a[1],
            format!("user,id=net0,restrict=on,guestfwd=tcp:10.0.2.100:8080-cmd:{exe} relay 38080,guestfwd=tcp:10.0.2.100:6443-cmd:{exe} relay 40000")
        );
        for bad in ["8080", "x:1", "0:1", "1:70000"] {
            let e = network_args(&[bad.into()]).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("GUEST_PORT:HOST_PORT"), "{e}");
        }
    }

    #[test]
    fn formats_by_name() {
        assert_eq!(
            drive_format(Path::new("out/d/disk.qcow2")).unwrap(),
            "qcow2"
        );
        assert_eq!(drive_format(Path::new("disk.vhd")).unwrap(), "vpc");
        assert_eq!(drive_format(Path::new("disk.raw")).unwrap(), "raw");
        assert!(drive_format(Path::new("disk.ova")).is_err());
    }
}
