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

use bootpatch_e2e::repo::{self, Key};
use bootpatch_e2e::{fixtures, vm};
use std::path::Path;
use std::time::Duration;

const RUNS: usize = 3;

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
    let w = work.path();
    let debs = w.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let (bf, _, point) =
        fixtures::point_release(&vm::cached_deb(&image.cache, "base-files"), &debs);
    let (kernel, _) = fixtures::reboot_requiring(
        &vm::cached_deb(&image.cache, "linux-image-cloud-amd64"),
        &debs,
    );
    let key = Key::generate("patches");
    repo::build(
        &w.join("repo"),
        "bookworm-updates",
        &[bf, kernel],
        Some(&key),
    );
    let patches = w.join("patches.img");
    vm::ext4_disk(&w.join("repo"), &patches, "bpatches");
    let indented = |n: usize| -> String {
        key.armored
            .lines()
            .map(|l| format!("{}{l}\n", " ".repeat(n)))
            .collect()
    };
    let join = "joinCommand: [\"sh\", \"-c\", \"mkdir -p /var/lib/bootpatch-test && cat /proc/sys/kernel/random/boot_id >> /var/lib/bootpatch-test/join\"]\n";

    // bootpatch.
    let vals = w.join("bootpatch.values.yaml");
    std::fs::write(
        &vals,
        format!("patchOnBoot: true\nrebootIfRequired: true\nsourcesMode: only\nsources:\n  - name: patches\n    uris: [\"file:/srv/patches\"]\n    suites: [bookworm-updates]\n    signedBy: |\n{}{join}", indented(6)),
    )
    .unwrap();
    let rendered = w.join("bootpatch.rendered.yaml");
    vm::render(&vals, &rendered);
    let ud = w.join("bootpatch.user-data");
    std::fs::write(
        &ud,
        vm::multipart(
            &std::fs::read_to_string(&rendered).unwrap(),
            vm::INSTRUMENTATION,
        ),
    )
    .unwrap();
    let seed_bp = w.join("bootpatch.iso");
    vm::seed(&ud, &seed_bp);

    // cloud-init alone.
    let vals = w.join("cloudinit.values.yaml");
    std::fs::write(&vals, format!("patchOnBoot: false\n{join}")).unwrap();
    let rendered = w.join("cloudinit.rendered.yaml");
    vm::render(&vals, &rendered);
    let ci = format!(
        "#cloud-config\nbootcmd:\n  - [sh, -c, \"rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list\"]\n\
         apt:\n  sources:\n    patches:\n      source: \"deb file:/srv/patches bookworm-updates main\"\n      key: |\n{}\
         package_update: true\npackage_upgrade: true\npackage_reboot_if_required: true\n",
        indented(8)
    );
    let ud = w.join("cloudinit.user-data");
    let instrumentation_plus = format!("{}\n", vm::INSTRUMENTATION);
    let three_parts = vm::multipart(&std::fs::read_to_string(&rendered).unwrap(), &instrumentation_plus)
        .replace(
            "--BOOTPATCH-TEST-BOUNDARY--\n",
            &format!("--BOOTPATCH-TEST-BOUNDARY\nContent-Type: text/cloud-config; charset=\"utf-8\"\nMIME-Version: 1.0\nMerge-Type: list(append)+dict(no_replace,recurse_list)+str()\n\n{ci}\n--BOOTPATCH-TEST-BOUNDARY--\n"),
        );
    std::fs::write(&ud, three_parts).unwrap();
    let seed_ci = w.join("cloudinit.iso");
    vm::seed(&ud, &seed_ci);

    let (mut bp, mut ci_t) = (vec![], vec![]);
    for i in 0..RUNS {
        let (t, console) = boot_once(w, &image, &seed_bp, &patches, &format!("bp-{i}"));
        let r = vm::last_report(&console).expect("report");
        assert_eq!(r.debian_version, point, "bootpatch run {i} did not patch");
        assert_eq!(vm::boots(&console), 2);
        bp.push(t);
        eprintln!("bootpatch boot {i}: ready after {t:.1} s");
        let (t, console) = boot_once(w, &image, &seed_ci, &patches, &format!("ci-{i}"));
        let r = vm::last_report(&console).expect("report");
        assert_eq!(r.debian_version, point, "cloud-init run {i} did not patch");
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
    println!("first boot to patched and ready, median of {RUNS} (QEMU TCG, 2 vCPU):");
    println!("  bootpatch:        {mb:.1} s   (runs: {bp:.1?})");
    println!("  cloud-init alone: {mc:.1} s   (runs: {ci_t:.1?})");
    println!("  ratio bootpatch / cloud-init: {:.2}", mb / mc);
    println!("second boot of the patched node, bootpatch-firstboot.service: {noop_unit}");
}
