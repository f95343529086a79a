//! First boot to "patched and ready", side by side on the same image and
//! the same signed patch repository (a second disk; no network):
//!
//! - bootpatch: the baked first-boot unit patches, reboots once (the
//!   repository's kernel metapackage asks for it), and the join runs;
//! - cloud-init alone: `package_update`, `package_upgrade` and
//!   `package_reboot_if_required` with the repository as an `apt:` source
//!   (bootpatch's patchOnBoot off, and the image's own, unreachable, sources
//!   removed in bootcmd, as bootpatch's `sourcesMode: only` does).
//!
//! "Ready" is the moment the guest's report (printed after cloud-final,
//! where the join runs) starts on the serial console, timed from QEMU's
//! start. Also reported: bootpatch's CPU time on a second, no-op boot.
//!
//! Run: `make bench-firstboot` (root, QEMU, a few minutes per boot under TCG).

use bootpatch_e2e::repo::Key;
use bootpatch_e2e::vm;
use std::path::Path;
use std::time::Duration;

/// Boots per variant (BENCH_RUNS overrides).
fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn boot_once(
    work: &Path,
    image: &vm::Image,
    seed: &Path,
    patches: &Path,
    tag: &str,
) -> (f64, String) {
    let disk = work.join(format!("{tag}.qcow2"));
    vm::overlay(&image.raw, &disk);
    let serial = work.join(format!("{tag}.log"));
    let mut g = vm::Guest::start(
        &disk,
        seed,
        Some(patches),
        &serial,
        Duration::from_secs(900),
    );
    let ready = g
        .wait_for("BPT-BEGIN", Duration::from_secs(900))
        .expect("the guest never became ready");
    let (code, err) = g.wait();
    assert_eq!(code, 0, "{err}");
    let console = std::fs::read_to_string(&serial).unwrap();
    (ready.as_secs_f64(), console)
}

fn main() {
    let image = vm::debian12_image();
    let work = tempfile::Builder::new()
        .prefix("bootpatch-bench-")
        .tempdir_in(bootpatch_e2e::cache_dir())
        .unwrap();
    // Kept, so the consoles can be read after a surprise.
    let w = &work.keep();
    let (debs, point) = vm::patch_packages(&image, &w.join("debs"));
    let key = Key::generate("patches");
    let patches = vm::patch_disk(&debs, &key, w);
    let indented = |n: usize| -> String {
        key.armored
            .lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let join = "joinCommand: [\"sh\", \"-c\", \"mkdir -p /var/lib/bootpatch-test && cat /proc/sys/kernel/random/boot_id >> /var/lib/bootpatch-test/join\"]\n";
    let seed_bp = vm::seed_for(
        &format!("patchOnBoot: true\nrebootIfRequired: true\nsourcesMode: only\nsources:\n  - name: patches\n    uris: [\"file:/srv/patches\"]\n    suites: [bookworm-updates]\n    signedBy: |\n{}{join}", indented(6)),
        &[],
        w,
        "bootpatch",
    );
    // cloud-init alone: bootpatch off, the image's own (unreachable)
    // sources removed as sourcesMode: only does, the repository as an apt
    // source, and cloud-init's package modules.
    // cloud-init 22.4's `key:` goes through apt-key, which the image
    // lacks the tools for; the key is written as a keyring file instead and
    // named with signed-by, as apt recommends.
    let ci = format!(
        "#cloud-config\nbootcmd:\n  - [sh, -c, \"rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list\"]\n\
         write_files:\n  - path: /etc/apt/keyrings/patches.asc\n    content: |\n{}\
         apt:\n  sources:\n    patches:\n      source: \"deb [signed-by=/etc/apt/keyrings/patches.asc] file:/srv/patches bookworm-updates main\"\n\
         package_update: true\npackage_upgrade: true\npackage_reboot_if_required: true\n",
        indented(6)
    );
    let seed_ci = vm::seed_for(
        &format!("patchOnBoot: false\n{join}"),
        &[&ci],
        w,
        "cloudinit",
    );

    let (mut bp, mut ci_t) = (vec![], vec![]);
    let only_ci = std::env::var("BENCH_ONLY").is_ok_and(|v| v == "cloud-init");
    for i in 0..runs() {
        if only_ci {
            let (t, console) = boot_once(w, &image, &seed_ci, &patches, &format!("ci-{i}"));
            eprintln!(
                "cloud-init boot {i}: {t:.1} s, Patched Version {:?}",
                vm::last_report(&console).map(|r| r.debian_version)
            );
            continue;
        }
        let (t, console) = boot_once(w, &image, &seed_bp, &patches, &format!("bp-{i}"));
        let r = vm::last_report(&console).expect("report");
        assert_eq!(
            r.debian_version,
            point,
            "bootpatch run {i} did not patch; console in {}",
            w.join(format!("bp-{i}.log")).display()
        );
        assert_eq!(vm::boots(&console), 2);
        bp.push(t);
        eprintln!("bootpatch boot {i}: ready after {t:.1} s");
        let (t, console) = boot_once(w, &image, &seed_ci, &patches, &format!("ci-{i}"));
        let r = vm::last_report(&console).expect("report");
        assert_eq!(
            r.debian_version,
            point,
            "cloud-init run {i} did not patch; console in {}",
            w.join(format!("ci-{i}.log")).display()
        );
        ci_t.push(t);
        eprintln!(
            "cloud-init boot {i}: ready after {t:.1} s ({} boots)",
            vm::boots(&console)
        );
    }
    // A second boot of a patched node: the unit is skipped by its condition.
    let noop_unit = {
        let disk = w.join("bp-0.qcow2");
        let serial = w.join("bp-0-second.log");
        let g = vm::Guest::start(
            &disk,
            &seed_bp,
            Some(&patches),
            &serial,
            Duration::from_secs(900),
        );
        let (code, _) = g.wait();
        assert_eq!(code, 0);
        let r = vm::last_report(&std::fs::read_to_string(&serial).unwrap()).expect("report");
        r.unit.replace('\n', " ")
    };
    let (mb, mc) = (median(&mut bp), median(&mut ci_t));
    println!(
        "first boot to patched and ready, median of {} (QEMU TCG, 2 vCPU):",
        runs()
    );
    println!("  bootpatch:        {mb:.1} s   (runs: {bp:.1?})");
    println!("  cloud-init alone: {mc:.1} s   (runs: {ci_t:.1?})");
    println!("  ratio bootpatch / cloud-init: {:.2}", mb / mc);
    println!("second boot of the patched node, bootpatch-firstboot.service: {noop_unit}");
}
