//! End-to-end tests of `builder build`, `verify` and `boot` with the real
//! tools: mmdebstrap, mkfs.ext4, mtools, qemu-img, qemu-system-x86_64 (TCG,
//! OVMF). They need root (mmdebstrap's root mode), the host's package mirror
//! for the first build (the package cache makes later builds offline) and
//! the packages of `scripts/deps/builder.sh`.
//!
//! They drive the release `builder` (`BUILDER_BIN`), the binary users run,
//! and inspect the images every VM test shares (`bootpatch_e2e::images`):
//! each image is built once per run, whichever test binary asks first. The
//! heavy tests take turns (one global lock): the machine has two cores.
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn scratch() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("builder-images");
    fs::create_dir_all(&d).unwrap();
    d
}

fn heavy() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn builder(args: &[&str]) -> Output {
    let mut c = Command::new(bootpatch_e2e::images::builder_bin());
    c.args(args);
    // Its guests boot one at a time, with both cores unless the runner
    // boots another binary's guests beside them.
    if args.first() == Some(&"boot") {
        c.arg("--cpus").arg(bootpatch_e2e::vm::lone_guest_cpus());
    }
    let out = c.current_dir(repo()).output().expect("running builder");
    eprintln!(
        "builder {}: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared build of `images/NAME.yaml` (every format, `--json`), checked
/// to have finished with a `done` event; returns its output folder.
fn built(name: &str) -> PathBuf {
    let b = bootpatch_e2e::images::built(name);
    // --json: one event per line, the last says done.
    let last = b.events.lines().last().unwrap_or("").to_string();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["event"], "done", "{last}");
    b.dir
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn root_offset(dir: &Path) -> u64 {
    let out = run(Command::new("sfdisk")
        .arg("--json")
        .arg(dir.join("disk.raw")));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    // The root is the last partition.
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    parts.last().unwrap()["start"].as_u64().unwrap() * 512
}

fn debugfs(dir: &Path, request: &str) -> String {
    let img = format!(
        "{}?offset={}",
        dir.join("disk.raw").display(),
        root_offset(dir)
    );
    run(Command::new("debugfs").arg("-R").arg(request).arg(img))
}

/// Copies a folder of the image's root file system out with debugfs.
fn rdump(dir: &Path, path: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    debugfs(dir, &format!("rdump {path} {}", t.path().display()));
    t
}

fn files_below(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Boots DISK of a built image to its login prompt under one firmware and
/// checks the guest saw that firmware: the kernel's own lines say whether it
/// was started by UEFI and whether Secure Boot was enforced.
fn check_boot(dir: &Path, disk: &str, firmware: &str) -> String {
    let serial = dir.with_extension(format!("{disk}.{firmware}.serial.log"));
    let o = builder(&[
        "boot",
        dir.join(disk).to_str().unwrap(),
        "--firmware",
        firmware,
        "--timeout",
        "420",
        "--serial",
        serial.to_str().unwrap(),
        "--until",
        "login:",
    ]);
    let log = fs::read_to_string(&serial).unwrap_or_default();
    assert!(
        o.status.success(),
        "boot under {firmware} did not reach a login prompt; serial tail:\n{}",
        tail(&log)
    );
    // Userspace came up and the first-boot unit ran before the login prompt.
    assert!(log.contains("login:"), "{}", tail(&log));
    assert!(
        log.contains("bootpatch-firstbo"),
        "first-boot unit not started:\n{}",
        tail(&log)
    );
    let uefi = log.contains("efi: EFI v");
    match firmware {
        "bios" => assert!(!uefi, "booted by UEFI under bios:\n{}", tail(&log)),
        "uefi" => assert!(
            uefi && log.contains("secureboot: Secure boot disabled"),
            "{}",
            tail(&log)
        ),
        "secureboot" => assert!(
            uefi && log.contains("secureboot: Secure boot enabled")
                && log.contains("Kernel is locked down from EFI Secure Boot"),
            "Secure Boot not enforced:\n{}",
            tail(&log)
        ),
        other => panic!("unknown firmware {other}"),
    }
    log
}

/// Every image boots under each firmware the clouds start it with.
fn check_boots_everywhere(dir: &Path, disk: &str) {
    let kernel = manifest(dir)["kernel"].as_str().unwrap().to_string();
    for fw in ["bios", "uefi", "secureboot"] {
        let log = check_boot(dir, disk, fw);
        // GRUB started the kernel from /boot on the root file system.
        assert!(
            log.contains(&format!("Command line: BOOT_IMAGE=/boot/vmlinuz-{kernel} ")),
            "{fw}: {}",
            tail(&log)
        );
    }
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The hybrid GRUB layout, judged by sfdisk and sgdisk, the ESP by mtools
/// and the root by debugfs, and what the manifest says of it.
fn check_grub_layout(dir: &Path) {
    let raw = dir.join("disk.raw");
    let m = manifest(dir);
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&raw));
    assert!(verify.contains("No errors detected"), "{verify}");
    let sg = run(Command::new("sgdisk").arg("-v").arg(&raw));
    assert!(sg.contains("No problems found"), "{sg}");
    let t = run(Command::new("sfdisk").arg("--json").arg(&raw));
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    let parts = v["partitiontable"]["partitions"].as_array().unwrap();
    let types: Vec<String> = parts
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_lowercase())
        .collect();
    assert_eq!(
        types,
        [
            "21686148-6449-6e6f-744e-656564454649", // BIOS boot (ef02)
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", // ESP
            "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", // x86-64 root
        ]
    );
    let sgp = run(Command::new("sgdisk").arg("-p").arg(&raw));
    assert!(
        sgp.contains("EF02") && sgp.contains("EF00") && sgp.contains("8304"),
        "{sgp}"
    );
    assert_eq!(
        parts[2]["uuid"].as_str().unwrap().to_lowercase(),
        m["disk"]["rootPartuuid"].as_str().unwrap()
    );
    // GRUB's boot.img in the MBR points at core.img in the BIOS boot partition.
    let mut mbr = [0u8; 512];
    fs::File::open(&raw)
        .unwrap()
        .read_exact_at(&mut mbr, 0)
        .unwrap();
    let bios_start = parts[0]["start"].as_u64().unwrap();
    assert_eq!(
        u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
        bios_start
    );
    assert_eq!(&mbr[510..], &[0x55, 0xaa]);
    assert_eq!(mbr[0x1be + 4], 0xee, "protective MBR kept");

    let esp = format!(
        "{}@@{}",
        raw.display(),
        parts[1]["start"].as_u64().unwrap() * 512
    );
    let mtools = |args: &[&str]| {
        run(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(&args[1..]))
    };
    let listing = mtools(&["mdir", "-b", "-i", &esp, "::/EFI/BOOT"]);
    for f in ["BOOTX64.EFI", "grubx64.efi", "mmx64.efi"] {
        assert!(listing.contains(f), "{f} missing: {listing}");
    }
    let fs_uuid = m["disk"]["rootFsUuid"].as_str().unwrap();
    let stub = mtools(&["mtype", "-i", &esp, "::/EFI/debian/grub.cfg"]);
    assert!(
        stub.contains(&format!("--fs-uuid --set=root {fs_uuid}")),
        "{stub}"
    );
    // The removable path holds Debian's signed shim, byte for byte.
    let shim = tempfile::tempdir().unwrap();
    let from_esp = shim.path().join("esp-shim");
    mtools(&[
        "mcopy",
        "-i",
        &esp,
        "::/EFI/BOOT/BOOTX64.EFI",
        from_esp.to_str().unwrap(),
    ]);
    let pkg = rdump(dir, "/usr/lib/shim");
    assert_eq!(
        fs::read(&from_esp).unwrap(),
        fs::read(pkg.path().join("shim/shimx64.efi.signed")).unwrap()
    );

    let cfg = debugfs(dir, "cat /boot/grub/grub.cfg");
    assert!(
        cfg.contains(&format!("--fs-uuid --set=root {fs_uuid}"))
            && cfg.contains(&format!(
                "linux /boot/vmlinuz-{}",
                m["kernel"].as_str().unwrap()
            )),
        "{cfg}"
    );
    let ls = debugfs(dir, "ls /boot/grub/i386-pc");
    assert!(ls.contains("normal.mod") && ls.contains("core.img"), "{ls}");
    assert!(debugfs(dir, "stat /etc/grub.d/enable_cloud").contains("Type: regular"));
    let defaults = debugfs(dir, "cat /etc/default/grub.d/50-bootpatch.cfg");
    assert!(defaults.contains("console=ttyS0,115200"), "{defaults}");
    // GRUB reads kernels from /boot: no ESP copy hook.
    let hooks = debugfs(dir, "ls /etc/kernel/postinst.d");
    assert!(
        hooks.contains("zz-update-grub") && !hooks.contains("zz-bootpatch-esp"),
        "{hooks}"
    );

    let b = &m["boot"];
    assert_eq!(b["loader"], "grub");
    assert_eq!(
        (&b["bios"], &b["uefi"], &b["secureBoot"]),
        (&true.into(), &true.into(), &true.into())
    );
    let c = &b["cloud"];
    assert_eq!(c["awsBootMode"], "uefi-preferred");
    let gcp: Vec<&str> = c["gcpGuestOsFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        gcp.contains(&"UEFI_COMPATIBLE") && gcp.contains(&"VIRTIO_SCSI_MULTIQUEUE"),
        "{gcp:?}"
    );
    assert_eq!(c["azureHyperVGenerations"], serde_json::json!(["V1", "V2"]));
    assert_eq!(c["azureSecurityType"], "TrustedLaunchSupported");
    assert_eq!(c["openstackProperties"]["os_secure_boot"], "required");
}

fn check_hygiene_and_node_files(dir: &Path) {
    let stat = debugfs(dir, "stat /etc/machine-id");
    assert!(stat.contains("Size: 0"), "machine-id not empty: {stat}");
    let ssh = rdump(dir, "/etc/ssh");
    for f in files_below(ssh.path()) {
        let n = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !n.starts_with("ssh_host_"),
            "SSH host key left in the image: {n}"
        );
    }
    let lists = rdump(dir, "/var/lib/apt/lists");
    let left: Vec<_> = files_below(lists.path())
        .into_iter()
        .filter(|f| f.file_name().unwrap() != "lock")
        .collect();
    assert!(left.is_empty(), "apt lists left: {left:?}");
    let logs = rdump(dir, "/var/log");
    assert!(
        files_below(logs.path()).is_empty(),
        "logs left: {:?}",
        files_below(logs.path())
    );
    let cache = rdump(dir, "/var/cache/apt");
    let debs: Vec<_> = files_below(cache.path())
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "deb" || e == "bin"))
        .collect();
    assert!(debs.is_empty(), "apt cache left: {debs:?}");
    for gone in ["/var/lib/systemd/random-seed", "/etc/resolv.conf"] {
        let s = debugfs(dir, &format!("stat {gone}"));
        assert!(!s.contains("Inode:"), "{gone} is in the image: {s}");
    }
    let etc = rdump(dir, "/etc/hostname");
    assert_eq!(
        fs::read_to_string(etc.path().join("hostname")).unwrap(),
        "localhost\n"
    );

    // bootpatch, its unit enabled, its config valid for the node's own parser.
    let bin = debugfs(dir, "stat /usr/local/sbin/bootpatch");
    assert!(
        bin.contains("Mode:  0755") || bin.contains("Mode:  00755"),
        "{bin}"
    );
    let link = debugfs(
        dir,
        "stat /etc/systemd/system/multi-user.target.wants/bootpatch-firstboot.service",
    );
    assert!(
        link.contains("symlink")
            && link.contains("/etc/systemd/system/bootpatch-firstboot.service"),
        "{link}"
    );
    let cfg = rdump(dir, "/etc/bootpatch");
    let text = fs::read_to_string(cfg.path().join("bootpatch/config.yaml")).unwrap();
    let c = bootpatch::config::Config::from_yaml_str(&text).unwrap();
    assert!(c.patch_on_boot && c.reboot_if_required);
    // Sources for later patching: the release, updates and security suites.
    let src = rdump(dir, "/etc/apt/sources.list.d");
    let debian = fs::read_to_string(src.path().join("sources.list.d/debian.sources")).unwrap();
    assert!(
        debian.contains("-updates") && debian.contains("Signed-By:"),
        "{debian}"
    );
    assert!(src
        .path()
        .join("sources.list.d/debian-security.sources")
        .exists());
}

fn check_formats(dir: &Path) {
    let m = manifest(dir);
    let size = m["disk"]["size"].as_u64().unwrap();
    assert_eq!(size % (1 << 30), 0);

    // raw: GPT with a BIOS boot partition, an ESP holding shim and GRUB, and a root.
    check_grub_layout(dir);
    let stats = debugfs(dir, "stats");
    assert!(stats.contains("Filesystem volume name:   root"), "{stats}");

    // qcow2
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(dir.join("disk.qcow2")));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], "qcow2");
    assert_eq!(v["virtual-size"].as_u64().unwrap(), size);
    run(Command::new("qemu-img")
        .arg("check")
        .arg(dir.join("disk.qcow2")));

    // VHD: raw bytes, then a footer with a valid checksum, fixed type, 1 MiB aligned.
    let vhd = dir.join("disk.vhd");
    assert_eq!(fs::metadata(&vhd).unwrap().len(), size + 512);
    let mut footer = [0u8; 512];
    fs::File::open(&vhd)
        .unwrap()
        .read_exact_at(&mut footer, size)
        .unwrap();
    assert_eq!(&footer[0..8], b"conectix");
    assert_eq!(
        u32::from_be_bytes(footer[60..64].try_into().unwrap()),
        2,
        "not a fixed VHD"
    );
    assert_eq!(u64::from_be_bytes(footer[48..56].try_into().unwrap()), size);
    let stored = u32::from_be_bytes(footer[64..68].try_into().unwrap());
    footer[64..68].fill(0);
    assert_eq!(
        stored,
        !footer.iter().map(|&b| b as u32).sum::<u32>(),
        "bad VHD checksum"
    );
    run(Command::new("cmp")
        .arg("-n")
        .arg(size.to_string())
        .arg(dir.join("disk.raw"))
        .arg(&vhd));
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json", "--image-opts"])
        .arg(format!(
            "driver=vpc,force_size_calc=current_size,file.filename={}",
            vhd.display()
        )));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"].as_u64().unwrap(), size);

    // OVA: .ovf first, then .mf with the SHA-256 of each, then a streamOptimized VMDK.
    let x = tempfile::tempdir().unwrap();
    let members = run(Command::new("tar").arg("-tf").arg(dir.join("disk.ova")));
    let members: Vec<&str> = members.lines().collect();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(
        members[0].ends_with(".ovf")
            && members[1].ends_with(".mf")
            && members[2].ends_with(".vmdk"),
        "{members:?}"
    );
    run(Command::new("tar")
        .arg("-xf")
        .arg(dir.join("disk.ova"))
        .arg("-C")
        .arg(x.path()));
    let mf = fs::read_to_string(x.path().join(members[1])).unwrap();
    for m in [members[0], members[2]] {
        let sum = run(Command::new("sha256sum").arg(x.path().join(m)));
        let sum = sum.split_whitespace().next().unwrap();
        assert!(mf.contains(&format!("SHA256({m})= {sum}")), "{mf}");
    }
    let ovf = fs::read_to_string(x.path().join(members[0])).unwrap();
    assert!(ovf.contains(&format!("ovf:capacity=\"{size}\"")) && ovf.contains("streamOptimized"));
    assert!(
        ovf.contains(r#"vmw:key="firmware" vmw:value="efi""#)
            && ovf.contains(r#"vmw:key="bootOptions.efiSecureBootEnabled" vmw:value="true""#),
        "{ovf}"
    );
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(x.path().join(members[2])));
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["format"], "vmdk");
    assert_eq!(
        v["format-specific"]["data"]["create-type"],
        "streamOptimized"
    );
    assert_eq!(v["virtual-size"].as_u64().unwrap(), size);
    run(Command::new("qemu-img")
        .arg("check")
        .arg(x.path().join(members[2])));

    // GCP: disk.raw alone, GNU (oldgnu) sparse member, extracts to the same bytes.
    let gcp = dir.join("gcp.tar.gz");
    let list = run(Command::new("tar").arg("-tzf").arg(&gcp));
    assert_eq!(list, "disk.raw\n");
    let mut head = [0u8; 512];
    {
        use std::io::Read;
        flate2::read::GzDecoder::new(fs::File::open(&gcp).unwrap())
            .read_exact(&mut head)
            .unwrap();
    }
    assert_eq!(&head[257..265], b"ustar  \0", "not oldgnu");
    assert_eq!(head[156], b'S', "not a sparse member");
    run(Command::new("tar")
        .arg("-xSzf")
        .arg(&gcp)
        .arg("-C")
        .arg(x.path()));
    run(Command::new("cmp")
        .arg(dir.join("disk.raw"))
        .arg(x.path().join("disk.raw")));
    let sums = run(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(dir));
    assert_eq!(
        sums.lines().filter(|l| l.ends_with(": OK")).count(),
        6,
        "{sums}"
    );
}

fn check_verify_catches_a_flipped_byte(dir: &Path) {
    assert!(builder(&["verify", dir.to_str().unwrap()]).status.success());
    // The image is shared with other tests and later runs: flip the byte in a copy of the
    // OVA, beside hard links to the other artifacts, never in the image itself.
    let copy = scratch().join("verify-copy");
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir_all(&copy).unwrap();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let to = copy.join(e.file_name());
        if e.file_name() == "disk.ova" {
            fs::copy(e.path(), &to).unwrap();
        } else {
            fs::hard_link(e.path(), &to).unwrap();
        }
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(copy.join("disk.ova"))
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 4096).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], 4096).unwrap();
    let o = builder(&["verify", copy.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("CHANGED  disk.ova"), "{out}");
    assert!(!out.contains("CHANGED  disk.raw"), "{out}");
    f.write_all_at(&b, 4096).unwrap();
    assert!(builder(&["verify", copy.to_str().unwrap()])
        .status
        .success());
    fs::remove_dir_all(&copy).unwrap();
}

#[test]
fn debian_12_builds_boots_and_is_clean() {
    let _g = heavy();
    let dir = built("debian-12");
    let m = manifest(&dir);
    assert_eq!(m["os"]["stream"], "12");
    assert!(m["os"]["pointRelease"].as_str().unwrap().starts_with("12."));
    assert!(m["packageCount"].as_u64().unwrap() > 100);
    assert!(m["kernel"].as_str().unwrap().contains("cloud-amd64"));
    check_formats(&dir);
    check_hygiene_and_node_files(&dir);
    check_verify_catches_a_flipped_byte(&dir);
    check_boots_everywhere(&dir, "disk.raw");
}

#[test]
fn debian_13_builds_and_boots() {
    let _g = heavy();
    let dir = built("debian-13");
    let m = manifest(&dir);
    assert_eq!(m["os"]["suite"], "trixie");
    assert!(m["os"]["pointRelease"].as_str().unwrap().starts_with("13."));
    check_hygiene_and_node_files(&dir);
    check_grub_layout(&dir);
    check_boots_everywhere(&dir, "disk.qcow2");
}

/// A `--locked` build reproduces, bit for bit, the disk.raw of the build
/// its lock came from, without the network (lock + package cache only):
/// the lock carries that build's SOURCE_DATE_EPOCH. (This is stronger than
/// two locked builds agreeing with each other, and costs one build less.)
#[test]
fn locked_builds_are_reproducible() {
    let _g = heavy();
    let first = bootpatch_e2e::images::built("debian-12");
    let lock = first.dir.join("packages.lock");
    let out = scratch().join("locked");
    let _ = fs::remove_dir_all(&out);
    let o = Command::new(bootpatch_e2e::images::builder_bin())
        .args(["build", "--locked", "--quiet", "--formats", "raw", "--lock"])
        .arg(&lock)
        .arg("--cache")
        .arg(&first.cache)
        .arg("--bootpatch")
        .arg(bootpatch_e2e::bootpatch_bin())
        .arg("--out")
        .arg(&out)
        .env_remove("SOURCE_DATE_EPOCH")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    assert_eq!(m["locked"], true);
    assert_eq!(
        fs::read(out.join("packages.lock")).unwrap(),
        fs::read(&lock).unwrap()
    );
    let sha = |m: &serde_json::Value| {
        m["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["file"] == "disk.raw")
            .unwrap_or_else(|| panic!("no disk.raw in {m}"))["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let rebuilt = sha(&m);
    assert_eq!(
        rebuilt,
        builder::hash::file_sha256(&out.join("disk.raw")).unwrap()
    );
    assert_eq!(
        rebuilt,
        sha(&manifest(&first.dir)),
        "the locked rebuild differs from the build its lock came from"
    );
    fs::remove_dir_all(&out).unwrap();
}

/// The systemd-boot variant still builds and boots under UEFI, and is the
/// negative control of the Secure Boot check: the same disk is refused by
/// the Secure Boot firmware (its loader is unsigned), which starts no kernel.
#[test]
fn systemd_boot_variant_is_uefi_only() {
    let _g = heavy();
    let first = bootpatch_e2e::images::built("debian-12");
    let t = tempfile::tempdir_in(scratch()).unwrap();
    let spec = t.path().join("debian-12-systemd-boot.yaml");
    let text = fs::read_to_string(repo().join("images/debian-12.yaml"))
        .unwrap()
        .replace("name: debian-12\n", "name: debian-12-systemd-boot\n")
        .replace("  loader: grub\n", "  loader: systemd-boot\n");
    assert!(text.contains("loader: systemd-boot"));
    fs::write(&spec, text).unwrap();
    let out = t.path().join("out");
    let o = Command::new(bootpatch_e2e::images::builder_bin())
        .args(["build", "--quiet", "--formats", "raw", "--cache"])
        .arg(&first.cache)
        .arg("--bootpatch")
        .arg(bootpatch_e2e::bootpatch_bin())
        .arg("--out")
        .arg(&out)
        .arg(&spec)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = manifest(&out);
    assert_eq!(m["boot"]["loader"], "systemd-boot");
    assert_eq!(m["boot"]["bios"], false);
    assert_eq!(m["boot"]["secureBoot"], false);
    assert_eq!(m["boot"]["cloud"]["awsBootMode"], "uefi");
    assert_eq!(
        m["boot"]["cloud"]["azureHyperVGenerations"],
        serde_json::json!(["V2"])
    );
    let t2 = run(Command::new("sfdisk")
        .arg("--json")
        .arg(out.join("disk.raw")));
    let v: serde_json::Value = serde_json::from_str(&t2).unwrap();
    assert_eq!(
        v["partitiontable"]["partitions"].as_array().unwrap().len(),
        2
    );
    let hooks = debugfs(&out, "ls /etc/kernel/postinst.d");
    assert!(hooks.contains("zz-bootpatch-esp"), "{hooks}");

    check_boot(&out, "disk.raw", "uefi");
    let serial = t.path().join("refused.serial.log");
    let o = builder(&[
        "boot",
        out.join("disk.raw").to_str().unwrap(),
        "--firmware",
        "secureboot",
        "--timeout",
        "240",
        "--serial",
        serial.to_str().unwrap(),
        "--until",
        "No bootable option or device was found",
    ]);
    let log = fs::read_to_string(&serial).unwrap_or_default();
    assert!(o.status.success(), "{}", tail(&log));
    assert!(log.contains("Access Denied"), "{}", tail(&log));
    assert!(!log.contains("Linux version"), "{}", tail(&log));
}

/// A bad spec is refused before anything is written, and the message names
/// the file, the key and the value.
#[test]
fn bad_spec_is_refused_with_no_output() {
    let t = tempfile::tempdir().unwrap();
    let good = fs::read_to_string(repo().join("images/debian-12.yaml")).unwrap();
    let cases = [
        (
            good.replace("size: 3GiB", "size: 3 gigs"),
            "disk.size",
            "3 gigs",
        ),
        (
            good.replace(
                "  removeLogs: true",
                "  removeLogs: true\n  removeCats: true",
            ),
            "hygiene",
            "removeCats",
        ),
        (
            good.replace("lockWaitTimeout: 10m", "lockWaitTimeout: ages"),
            "lockWaitTimeout",
            "ages",
        ),
        (
            good.replace(
                "  loader: grub\n",
                "  loader: systemd-boot\n  secureBoot: true\n",
            ),
            "boot.secureBoot",
            "unsigned",
        ),
        (
            good.replace("espSize: 128MiB", "espSize: 16MiB"),
            "disk.espSize",
            "16777216",
        ),
    ];
    for (i, (text, key, value)) in cases.iter().enumerate() {
        let spec = t.path().join(format!("bad-{i}.yaml"));
        fs::write(&spec, text).unwrap();
        let out = t.path().join(format!("out-{i}"));
        let o = builder(&[
            "build",
            spec.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(&format!("bad-{i}.yaml")), "{err}");
        assert!(err.contains(key) && err.contains(value), "{err}");
        assert!(!out.exists(), "output appeared for a bad spec");
        let leftovers: Vec<_> = fs::read_dir(t.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "partial output left: {leftovers:?}");
    }
    // A stream kept for later is refused with its reason.
    let o = builder(&[
        "build",
        "images/ubuntu-24.04.yaml",
        "--out",
        t.path().join("u").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not built here"));
}

/// A failing step names itself, the command and its stderr, and leaves no
/// output folder and no partial folder behind.
#[test]
fn failed_step_is_named_and_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let bootpatch = bootpatch_e2e::bootpatch_bin();
    let o = builder(&[
        "build",
        "--out",
        out.to_str().unwrap(),
        "--bootpatch",
        bootpatch.to_str().unwrap(),
        "--cache",
        t.path().join("empty-cache").to_str().unwrap(),
        "--locked",
        "--lock",
        t.path().join("missing.lock").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("step `spec` failed") && err.contains("missing.lock"),
        "{err}"
    );
    assert!(!out.exists());
    assert_eq!(
        fs::read_dir(t.path()).unwrap().count(),
        0,
        "left files behind"
    );
}

#[test]
fn cli_is_consistent() {
    use clap::CommandFactory;
    builder::cli::Cli::command().debug_assert();
}
