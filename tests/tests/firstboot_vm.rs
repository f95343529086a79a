//! First boot, end to end, in a VM: the debian-12 image from `builder
//! build`, booted with `builder boot` (QEMU, TCG, OVMF) and a `builder seed`
//! volume holding user-data from `builder render --provider nocloud`. The
//! guest has no network (`-nic none`); the patch repository is a second disk
//! (ext4, labelled bpatches), signed with a key made for the test, with a
//! repacked base-files that raises the point release and a repacked kernel
//! metapackage whose postinst asks for a reboot; the reboot case's
//! repository holds a real kernel update instead (a new ABI's signed kernel
//! package and the metapackage depending on it), and that node is then
//! booted under BIOS and under Secure Boot too. The node-join command is a
//! stand-in that records the boot it ran in. Each boot has a timeout; a hung
//! guest fails the test.
//!
//! Needs root, qemu-system-x86 and OVMF (scripts/deps/builder.sh).

use bootpatch_e2e::assert_state_matches_schema;
use bootpatch_e2e::repo::Key;
use bootpatch_e2e::vm::{self, Guest, Report};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// A bound for a hung guest, not a speed check: the kernel update's boot (install, initramfs,
/// reboot, join) took 565 s under TCG on a loaded CI machine, so 600 s was too close.
const BOOT_TIMEOUT: Duration = Duration::from_secs(900);
use bootpatch_e2e::vm::KERNEL_META;

struct Case {
    dir: tempfile::TempDir,
    disk: PathBuf,
    seed: PathBuf,
    patches: Option<PathBuf>,
    point: String,
    /// The kernel release the patches install, when they hold a kernel update.
    new_kernel: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum RepoKind {
    Signed,
    SignedByStranger,
    Absent,
}

fn values(key: &str, reboot: bool, patch_on_boot: bool) -> String {
    let indented: String = key.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "patchOnBoot: {patch_on_boot}\nrebootIfRequired: {reboot}\nsourcesMode: only\nretryDeadline: 20s\nlockWaitTimeout: 5m\n\
         sources:\n  - name: patches\n    uris: [\"file:/srv/patches\"]\n    suites: [bookworm-updates]\n    components: [main]\n    signedBy: |\n{indented}\
         joinCommand: [\"sh\", \"-c\", \"mkdir -p /var/lib/bootpatch-test && cat /proc/sys/kernel/random/boot_id >> /var/lib/bootpatch-test/join\"]\n"
    )
}

impl Case {
    fn new(kind: RepoKind, reboot: bool, patch_on_boot: bool) -> Case {
        Case::make(kind, reboot, patch_on_boot, false, &[])
    }

    /// A case whose patches hold a real kernel update (a new ABI package).
    fn with_kernel_update() -> Case {
        Case::make(RepoKind::Signed, true, true, true, &[])
    }

    /// A signed case whose guest prints dpkg's status changes on its console.
    fn with_dpkg_status_on_console() -> Case {
        Case::make(
            RepoKind::Signed,
            true,
            true,
            false,
            &[vm::DPKG_STATUS_ON_CONSOLE],
        )
    }

    fn make(
        kind: RepoKind,
        reboot: bool,
        patch_on_boot: bool,
        kernel: bool,
        parts: &[&str],
    ) -> Case {
        let image = vm::debian12_image();
        let dir = tempfile::Builder::new()
            .prefix("bootpatch-vm-")
            .tempdir_in(bootpatch_e2e::cache_dir())
            .unwrap();
        let d = dir.path();
        let (debs, point, new_kernel) = if kernel {
            let (debs, point, new) = vm::patch_packages_with_kernel(&image, &d.join("debs"));
            (debs, point, Some(new))
        } else {
            let (debs, point) = vm::patch_packages(&image, &d.join("debs"));
            (debs, point, None)
        };
        let trusted = Key::generate("patches");
        let patches = match kind {
            RepoKind::Absent => None,
            RepoKind::Signed => Some(vm::patch_disk(&debs, &trusted, d)),
            RepoKind::SignedByStranger => {
                Some(vm::patch_disk(&debs, &Key::generate("stranger"), d))
            }
        };
        let seed = vm::seed_for(
            &values(&trusted.armored, reboot, patch_on_boot),
            parts,
            d,
            "case",
        );
        let disk = d.join("disk.qcow2");
        vm::overlay(&image.raw, &disk);
        Case {
            dir,
            disk,
            seed,
            patches,
            point,
            new_kernel,
        }
    }

    fn serial(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("serial-{n}.log"))
    }

    fn start_as(&self, how: vm::Start, disk: &std::path::Path, n: usize) -> Guest {
        Guest::start_as(
            how,
            disk,
            &self.seed,
            self.patches.as_deref(),
            &self.serial(n),
            BOOT_TIMEOUT,
        )
    }

    /// Boots until the guest powers off; returns its report and console.
    fn boot(&self, n: usize) -> (Report, String) {
        self.boot_disk(&self.disk, n)
    }

    fn boot_disk(&self, disk: &std::path::Path, n: usize) -> (Report, String) {
        self.boot_as(vm::Start::Boot, disk, n)
    }

    fn boot_as(&self, how: vm::Start, disk: &std::path::Path, n: usize) -> (Report, String) {
        let (code, err) = self.start_as(how, disk, n).wait();
        let console = std::fs::read_to_string(self.serial(n)).unwrap_or_default();
        assert_eq!(
            code,
            0,
            "boot {n} did not power off in time ({code}): {err}\n--- console tail\n{}",
            tail(&console)
        );
        let report = vm::last_report(&console)
            .unwrap_or_else(|| panic!("no report on the console of boot {n}\n{}", tail(&console)));
        assert_state_matches_schema(&report.state);
        (report, console)
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn last_run(r: &Report) -> Value {
    r.state["history"]
        .as_array()
        .and_then(|h| h.last().cloned())
        .unwrap_or(Value::Null)
}

fn joined_boots(r: &Report) -> Vec<String> {
    r.join.lines().map(str::to_string).collect()
}

/// The tests run two at a time (two guests on two cores), except one that
/// asks to run alone.
fn vm_slot(alone: bool) -> Box<dyn std::any::Any> {
    static SLOTS: std::sync::RwLock<()> = std::sync::RwLock::new(());
    if alone {
        Box::new(SLOTS.write().unwrap_or_else(|e| e.into_inner()))
    } else {
        Box::new(SLOTS.read().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The kernel the console says was booted: `BOOT_IMAGE=` of the last boot.
fn booted_kernel(console: &str) -> String {
    let at = console
        .rfind("Command line: BOOT_IMAGE=")
        .unwrap_or_else(|| panic!("no kernel command line\n{}", tail(console)));
    console[at + "Command line: BOOT_IMAGE=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The patches hold a real kernel update (a new ABI package, signed): the
/// node installs it, update-grub lists it, the one reboot starts it, and it
/// keeps booting under BIOS and under Secure Boot too.
#[test]
fn reboot_if_required_patches_reboots_once_then_joins() {
    let _shared = vm_slot(false);
    let c = Case::with_kernel_update();
    let new_kernel = c.new_kernel.clone().unwrap();
    let (r, console) = c.boot(1);
    assert_eq!(
        booted_kernel(&console),
        format!("/boot/vmlinuz-{new_kernel}"),
        "the reboot did not start the new kernel\n{}",
        tail(&console)
    );
    assert_eq!(
        vm::boots(&console),
        2,
        "exactly one reboot\n{}",
        tail(&console)
    );
    assert_eq!(r.debian_version, c.point);
    assert_eq!(r.status["patched_version"], c.point.as_str());
    assert_eq!(r.status["reboot_required"], false, "{}", r.status);
    assert_eq!(r.state["first_boot"]["result"], "patched", "{}", r.state);
    let t = bootpatch::time::parse_rfc3339(r.status["last_applied_patch_time"].as_str().unwrap())
        .unwrap();
    assert!(
        (bootpatch::time::now_unix() - t).abs() < 3600,
        "Last Applied Patch Time is not from this boot"
    );
    // The join ran once, in the boot after the reboot (not in the boot that patched).
    let joined = joined_boots(&r);
    assert_eq!(
        joined,
        std::slice::from_ref(&r.boot_id),
        "join ran {joined:?}"
    );
    assert_ne!(
        r.state["last_reboot"]["boot_id"].as_str(),
        Some(r.boot_id.as_str())
    );
    assert_eq!(r.audit.trim(), "");

    // The patched node under the other firmwares: the same new kernel,
    // through GRUB's BIOS stage and through shim and signed GRUB.
    for (n, firmware) in [(2, "bios"), (3, "secureboot")] {
        let (again, console) = c.boot_as(vm::Start::BootUnder { firmware }, &c.disk, n);
        assert_eq!(
            booted_kernel(&console),
            format!("/boot/vmlinuz-{new_kernel}"),
            "{firmware}: {}",
            tail(&console)
        );
        if firmware == "secureboot" {
            assert!(
                console.contains("secureboot: Secure boot enabled"),
                "{}",
                tail(&console)
            );
        }
        assert_eq!(again.status["patched_version"], c.point.as_str());
    }
}

/// Reboots not allowed: the reboot stays pending and the node joins; its second boot (the
/// same node) then does nothing at all: the unit does not even start.
#[test]
fn reboot_not_allowed_leaves_it_pending_and_joins_and_the_second_boot_does_nothing() {
    let _shared = vm_slot(false);
    let c = Case::new(RepoKind::Signed, false, true);
    let (first, console) = c.boot(1);
    assert_eq!(vm::boots(&console), 1, "no reboot");
    assert_eq!(first.debian_version, c.point);
    assert_eq!(first.status["reboot_required"], true);
    assert_eq!(
        first.status["reboot_packages"],
        serde_json::json!([KERNEL_META])
    );
    assert_eq!(
        first.status["reboot_pending_reason"],
        "rebootIfRequired is false"
    );
    assert_eq!(joined_boots(&first), std::slice::from_ref(&first.boot_id));

    let (second, console) = c.boot(2);
    assert_eq!(vm::boots(&console), 1);
    assert!(
        second.unit.contains("ConditionResult=no"),
        "the unit must not even start: {}",
        second.unit
    );
    assert_eq!(
        second.state["history"], first.state["history"],
        "no new run recorded"
    );
    assert_eq!(
        joined_boots(&second).len(),
        1,
        "join ran only on the first boot"
    );
}

#[test]
fn patch_on_boot_false_changes_nothing() {
    let _shared = vm_slot(false);
    let c = Case::new(RepoKind::Signed, true, false);
    let (r, console) = c.boot(1);
    assert_eq!(vm::boots(&console), 1);
    assert_ne!(r.debian_version, c.point);
    assert_eq!(r.state["first_boot"]["result"], "skipped");
    assert_eq!(last_run(&r)["result"], "skipped");
    assert_eq!(joined_boots(&r).len(), 1);
}

#[test]
fn unreachable_mirror_fails_after_the_deadline_and_boot_continues() {
    let _shared = vm_slot(false);
    let c = Case::new(RepoKind::Absent, true, true);
    let (r, console) = c.boot(1);
    assert_eq!(vm::boots(&console), 1, "no reboot");
    assert_ne!(r.debian_version, c.point);
    assert_eq!(r.state["first_boot"]["result"], "failed");
    assert_eq!(
        last_run(&r)["error"]["kind"],
        "mirror-unreachable",
        "{}",
        r.state
    );
    assert!(
        console.contains("retrying"),
        "bootpatch should have retried"
    );
    assert_eq!(joined_boots(&r).len(), 1, "the boot continues");
}

#[test]
fn tampered_repository_installs_nothing() {
    let _shared = vm_slot(false);
    let c = Case::new(RepoKind::SignedByStranger, true, true);
    let (r, console) = c.boot(1);
    assert_eq!(vm::boots(&console), 1);
    assert_ne!(r.debian_version, c.point);
    assert_eq!(last_run(&r)["error"]["kind"], "verification", "{}", r.state);
    assert!(
        r.status["last_run"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("NO_PUBKEY"),
        "{}",
        r.status
    );
    assert_eq!(joined_boots(&r).len(), 1);
}

#[test]
fn power_loss_during_install_recovers_without_reboot_loops() {
    let _shared = vm_slot(false);
    // Cut the power at named moments of the install: the guest prints dpkg's
    // status changes on its console, and the cut follows the one named
    // within milliseconds. An upgrade takes a package through half-configured
    // and unpacked (the old one's prerm), half-installed (marked to be
    // reinstalled; the new one's files go in), unpacked, half-configured (its
    // postinst) and installed. By default the cuts come while base-files is
    // half-installed, once it is unpacked, and while the kernel metapackage's
    // postinst runs. Each cut costs a recovery boot and its reboot (about 2
    // minutes of one of the two guest slots).
    //
    // BOOTPATCH_TEST_CUTS takes other cuts, comma-separated: dpkg status
    // texts, each after the one before it ("a > b"), then "+MS" to wait MS
    // milliseconds more; or MS alone, after the install started:
    // BOOTPATCH_TEST_CUTS="0,1500,base-files: half-installed+300" (say).
    //
    // The guest boots once, up to bootpatch announcing the install, and its
    // running state is saved there (`builder boot --save-state`). Each cut
    // resumes that state on its own overlay of the saved disk and kills it
    // at its moment: the same moments a cold boot per cut would reach, for
    // the price of one.
    let cuts: Vec<String> = std::env::var("BOOTPATCH_TEST_CUTS")
        .map(|v| v.split(',').map(|x| x.trim().to_string()).collect())
        .unwrap_or_else(|_| {
            vec![
                "base-files: half-installed".into(),
                "base-files: half-installed > base-files: unpacked".into(),
                format!("{KERNEL_META}: half-installed > {KERNEL_META}: half-configured"),
            ]
        });
    let c = Case::with_dpkg_status_on_console();
    let saved = c.dir.path().join("pre-install");
    let marker = "upgrading 2 package(s)";
    let (code, err) = c
        .start_as(
            vm::Start::SaveAt {
                text: marker,
                dir: &saved,
            },
            &c.disk,
            100,
        )
        .wait();
    let console = std::fs::read_to_string(c.serial(100)).unwrap_or_default();
    assert!(
        code == 0 && console.contains(marker) && saved.join("state").is_file(),
        "the install never started, or its state was not saved ({code}): {err}\n{}",
        tail(&console)
    );
    for (i, cut) in cuts.iter().enumerate() {
        let disk = c.dir.path().join(format!("cut-{i}.qcow2"));
        vm::overlay_qcow2(&c.disk, &disk);
        let mut g = c.start_as(vm::Start::Resume { dir: &saved }, &disk, 110 + i);
        // TEXT, MS or TEXT+MS: MS milliseconds after dpkg reported TEXT.
        let (text, ms) = match cut.rsplit_once('+') {
            Some((t, ms)) if ms.parse::<u64>().is_ok() => (t, ms.parse().unwrap()),
            _ => match cut.parse::<u64>() {
                Ok(ms) => ("", ms),
                Err(_) => (cut.as_str(), 0),
            },
        };
        if !text.is_empty() {
            let texts: Vec<String> = text
                .split('>')
                .map(|t| format!("status: {}", t.trim()))
                .collect();
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            assert!(
                g.wait_console(&texts, BOOT_TIMEOUT),
                "cut {i}: dpkg never reported `{text}`\n{}",
                tail(&std::fs::read_to_string(c.serial(110 + i)).unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(ms));
        g.power_cut();
        let (r, console) = c.boot_disk(&disk, 200 + i);
        assert!(
            vm::boots(&console) <= 2,
            "cut {i}: reboot loop ({} boots)",
            vm::boots(&console)
        );
        // What the cut run and the recovery boot printed, and the state.
        let seen = || {
            format!(
                "\n--- cut run ({cut})\n{}\n--- recovery boot\n{}\n--- state\n{}\n--- unit\n{}",
                tail(&std::fs::read_to_string(c.serial(110 + i)).unwrap_or_default()),
                tail(&console),
                r.state,
                r.unit
            )
        };
        assert_eq!(
            r.audit.trim(),
            "",
            "cut {i}: dpkg --audit not clean{}",
            seen()
        );
        assert_eq!(
            r.debian_version,
            c.point,
            "cut {i}: not patched after the cut{}",
            seen()
        );
        // A cut after dpkg finished but before bootpatch recorded the run
        // leaves nothing for the next run to do: it says up-to-date.
        let fb = r.state["first_boot"]["result"].as_str().unwrap_or_default();
        assert!(
            fb == "patched" || fb == "up-to-date",
            "cut {i}: first boot {fb}: {}",
            r.state
        );
        assert_eq!(
            joined_boots(&r).len(),
            1,
            "cut {i}: the join must run exactly once\n{}",
            tail(&console)
        );
        std::fs::remove_file(&disk).unwrap();
    }
}

/// The debian-12 spec with nothing of bootpatch baked in: a stand-in for a
/// cloud's stock image (raw only, from the shared image's package cache).
fn stock_image() -> PathBuf {
    bootpatch_e2e::images::variant("debian-12-stock", &[], "bakeBootpatch: false\n")
}

fn sha256_hex(p: &std::path::Path) -> String {
    let o = std::process::Command::new("sha256sum")
        .arg(p)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The stock-image path: bootpatch comes from user-data, embedded or
/// downloaded over HTTP from the host (through a `guestfwd` rule of a
/// `restrict=on` network: the guest reaches nothing else), and patches
/// before the join, as on a baked image. A wrong pinned SHA-256 leaves
/// bootpatch uninstalled and the node unjoined.
#[test]
fn stock_image_gets_bootpatch_from_user_data() {
    // Alone while its image is built (mmdebstrap, mkfs, a 3 GiB disk): that
    // beside two running guests starved them into RCU stalls under TCG
    // (seen in CI). Its boots then take one of the two slots like any test.
    let raw = &{
        let _alone = vm_slot(true);
        stock_image()
    };
    let _slot = vm_slot(false);
    let image = vm::debian12_image();
    let work = tempfile::Builder::new()
        .prefix("bootpatch-vm-stock-")
        .tempdir_in(bootpatch_e2e::cache_dir())
        .unwrap();
    let d = work.path();
    let (debs, point) = vm::patch_packages(&image, &d.join("debs"));
    let key = Key::generate("patches");
    let patches = vm::patch_disk(&debs, &key, d);
    let bin = bootpatch_e2e::bootpatch_bin();
    let sha = sha256_hex(&bin);
    let server = vm::HttpServer::file(&bin);
    // builder boot --forward: the guest's 10.0.2.100:8080 is the server.
    let url = "http://10.0.2.100:8080/bootpatch".to_string();
    let forward = vec!["--forward".to_string(), format!("8080:{}", server.port)];
    let wrong = "0".repeat(64);
    let bin_s = bin.to_str().unwrap();
    let runs: [(&str, Vec<&str>, bool); 3] = [
        ("embedded", vec!["--embed-bootpatch", bin_s], true),
        (
            "downloaded",
            vec!["--bootpatch-url", &url, "--bootpatch-sha256", &sha],
            true,
        ),
        (
            "wrong-sha256",
            vec!["--bootpatch-url", &url, "--bootpatch-sha256", &wrong],
            false,
        ),
    ];
    for (tag, render_args, installs) in &runs {
        let seed =
            vm::seed_rendered_with(&values(&key.armored, false, true), &[], d, tag, render_args);
        let disk = d.join(format!("{tag}.qcow2"));
        vm::overlay(raw, &disk);
        let serial = d.join(format!("{tag}.serial.log"));
        let fetched_before = server.requests.load(std::sync::atomic::Ordering::SeqCst);
        let t = std::time::Instant::now();
        let (code, err) = Guest::start_as(
            vm::Start::BootWith { args: &forward },
            &disk,
            &seed,
            Some(&patches),
            &serial,
            BOOT_TIMEOUT,
        )
        .wait();
        eprintln!(
            "stock image, bootpatch {tag}: {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        assert_eq!(
            code,
            0,
            "{tag}: no power-off ({code}): {err}\n{}",
            tail(&console)
        );
        let r = vm::last_report(&console)
            .unwrap_or_else(|| panic!("{tag}: no report\n{}", tail(&console)));
        let fetched = server.requests.load(std::sync::atomic::Ordering::SeqCst) > fetched_before;
        assert_eq!(
            fetched,
            *tag != "embedded",
            "{tag}: bootpatch fetched over HTTP: {fetched}"
        );
        if *installs {
            assert_state_matches_schema(&r.state);
            assert_eq!(
                r.status["patched_version"],
                point.as_str(),
                "{tag}: {}",
                r.status
            );
            assert_eq!(
                r.state["first_boot"]["result"], "patched",
                "{tag}: {}",
                r.state
            );
            assert_eq!(
                joined_boots(&r),
                std::slice::from_ref(&r.boot_id),
                "{tag}: joined once, patched"
            );
        } else {
            assert!(
                console.contains("install-bootpatch: SHA-256 of bootpatch from"),
                "{tag}: {}",
                tail(&console)
            );
            assert!(
                r.status.is_null(),
                "{tag}: bootpatch was installed: {}",
                r.status
            );
            assert_eq!(r.join.trim(), "", "{tag}: the node joined unpatched");
        }
    }
}
