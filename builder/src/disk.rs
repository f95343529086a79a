//! The bootable disk, built inside one sparse image file: a GPT written by
//! this module, for GRUB a BIOS boot partition holding GRUB's BIOS stage
//! (see [`crate::grub`]), an EFI system partition filled with mtools (shim
//! and GRUB, or systemd-boot with the kernel) and an ext4 root filled by
//! `mkfs.ext4 -d`, each at its partition offset. No loop device, no mount,
//! no VM.
//!
//! Every identifier (disk GUID, partition GUIDs, file system UUID, hash
//! seed, FAT serial) is derived from the spec name, and every time stamp from
//! SOURCE_DATE_EPOCH, so the same inputs give the same bytes.

use crate::cmd;
use crate::spec::MIB;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SECTOR: u64 = 512;
const GPT_ENTRIES: u64 = 128;
const GPT_ENTRY_SIZE: u64 = 128;
/// Sectors used by the partition entry array (128 x 128 bytes).
const GPT_ARRAY_SECTORS: u64 = GPT_ENTRIES * GPT_ENTRY_SIZE / SECTOR;

pub const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The Discoverable Partitions type of an x86-64 root file system.
pub const ROOT_X86_64_TYPE: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// A version-4-shaped UUID derived from the image name and a role, so
/// identifiers are stable across builds of the same spec.
pub fn derived_uuid(image: &str, role: &str) -> String {
    let d = crate::hash::sha256_bytes(format!("bootpatch-builder:{image}:{role}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format_uuid(&b)
}

fn format_uuid(b: &[u8; 16]) -> String {
    let h = crate::hash::hex(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A textual UUID in GPT's on-disk byte order (first three fields little-endian).
pub fn guid_bytes(uuid: &str) -> Result<[u8; 16]> {
    let hex: String = uuid.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        bail!("bad UUID {uuid:?}");
    }
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .with_context(|| format!("bad UUID {uuid:?}"))?;
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    Ok(b)
}

#[derive(Debug, Clone)]
pub struct Partition {
    pub type_guid: String,
    pub guid: String,
    pub name: String,
    pub first_lba: u64,
    pub last_lba: u64,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub size: u64,
    pub disk_guid: String,
    /// GRUB's BIOS stage (partition 1 when there is one).
    pub bios_boot: Option<Partition>,
    pub esp: Partition,
    pub root: Partition,
}

/// Size of the BIOS boot partition: GRUB's core.img is well under 100 KiB;
/// 1 MiB keeps everything after it aligned.
pub const BIOS_BOOT_SIZE: u64 = MIB;

impl Layout {
    /// From 1 MiB: the BIOS boot partition if asked for, the ESP, then the
    /// root up to 1 MiB before the end (room for the backup GPT), all 1 MiB
    /// aligned. The root is last, so cloud-init's growpart can grow it.
    pub fn new(image: &str, size: u64, esp_size: u64, bios_boot: bool) -> Layout {
        let bios = bios_boot.then(|| Partition {
            type_guid: crate::grub::BIOS_BOOT_TYPE.into(),
            guid: derived_uuid(image, "bios-boot"),
            name: "BIOS boot".into(),
            first_lba: MIB / SECTOR,
            last_lba: (MIB + BIOS_BOOT_SIZE) / SECTOR - 1,
        });
        let esp_first = bios.as_ref().map_or(MIB / SECTOR, |b| b.last_lba + 1);
        let esp_last = esp_first + esp_size / SECTOR - 1;
        let root_first = esp_last + 1;
        let root_last = (size - MIB) / SECTOR - 1;
        Layout {
            size,
            disk_guid: derived_uuid(image, "disk"),
            bios_boot: bios,
            esp: Partition {
                type_guid: ESP_TYPE.into(),
                guid: derived_uuid(image, "esp"),
                name: "EFI System Partition".into(),
                first_lba: esp_first,
                last_lba: esp_last,
            },
            root: Partition {
                type_guid: ROOT_X86_64_TYPE.into(),
                guid: derived_uuid(image, "root"),
                name: "root".into(),
                first_lba: root_first,
                last_lba: root_last,
            },
        }
    }
}

impl Layout {
    /// The partitions in table (and disk) order.
    pub fn partitions(&self) -> Vec<&Partition> {
        self.bios_boot
            .iter()
            .chain([&self.esp, &self.root])
            .collect()
    }
}

impl Partition {
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn len(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn utf16_name(name: &str) -> [u8; 72] {
    let mut out = [0u8; 72];
    for (i, u) in name.encode_utf16().take(36).enumerate() {
        out[2 * i..2 * i + 2].copy_from_slice(&u.to_le_bytes());
    }
    out
}

/// The protective MBR, primary and backup GPT headers and partition arrays,
/// as (offset, bytes) writes.
pub fn gpt_writes(l: &Layout) -> Result<Vec<(u64, Vec<u8>)>> {
    let total_lba = l.size / SECTOR;
    let last_lba = total_lba - 1;
    let first_usable = 2 + GPT_ARRAY_SECTORS;
    let last_usable = last_lba - 1 - GPT_ARRAY_SECTORS;
    for p in l.partitions() {
        if p.first_lba < first_usable || p.last_lba > last_usable || p.first_lba > p.last_lba {
            bail!("partition {} does not fit the disk", p.name);
        }
    }

    let mut array = vec![0u8; (GPT_ENTRIES * GPT_ENTRY_SIZE) as usize];
    for (i, p) in l.partitions().iter().enumerate() {
        let e = &mut array[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&guid_bytes(&p.type_guid)?);
        e[16..32].copy_from_slice(&guid_bytes(&p.guid)?);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        e[48..56].copy_from_slice(&0u64.to_le_bytes());
        e[56..128].copy_from_slice(&utf16_name(&p.name));
    }
    let array_crc = crc32fast::hash(&array);

    let header = |my_lba: u64, alt_lba: u64, array_lba: u64| -> Result<Vec<u8>> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable.to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes(&l.disk_guid)?);
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(GPT_ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(GPT_ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(h)
    };

    let mut mbr = vec![0u8; SECTOR as usize];
    {
        let e = &mut mbr[446..462];
        e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
        e[4] = 0xee;
        e[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        e[8..12].copy_from_slice(&1u32.to_le_bytes());
        let n = u32::try_from(last_lba).unwrap_or(u32::MAX);
        e[12..16].copy_from_slice(&n.to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
    }
    let backup_array_lba = last_lba - GPT_ARRAY_SECTORS;
    Ok(vec![
        (0, mbr),
        (SECTOR, header(1, last_lba, 2)?),
        (2 * SECTOR, array.clone()),
        (backup_array_lba * SECTOR, array),
        (last_lba * SECTOR, header(last_lba, 1, backup_array_lba)?),
    ])
}

/// Where an ESP file's bytes come from.
pub enum EspSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// What goes on the ESP: files by their path there.
pub struct EspContent {
    pub files: Vec<(String, EspSource)>,
}

impl EspContent {
    /// systemd-boot, the kernel and initrd, and one loader entry.
    pub fn systemd_boot(
        systemd_boot: PathBuf,
        kernel: PathBuf,
        initrd: PathBuf,
        entry_name: &str,
        title: &str,
        options: &str,
    ) -> EspContent {
        EspContent {
            files: vec![
                (
                    "EFI/BOOT/BOOTX64.EFI".into(),
                    EspSource::File(systemd_boot.clone()),
                ),
                (
                    "EFI/systemd/systemd-bootx64.efi".into(),
                    EspSource::File(systemd_boot),
                ),
                ("vmlinuz".into(), EspSource::File(kernel)),
                ("initrd.img".into(), EspSource::File(initrd)),
                (
                    "loader/loader.conf".into(),
                    EspSource::Bytes(
                        format!("default {entry_name}.conf\ntimeout 0\neditor no\n").into_bytes(),
                    ),
                ),
                (
                    format!("loader/entries/{entry_name}.conf"),
                    EspSource::Bytes(
                        format!(
                            "title {title}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {options}\n"
                        )
                        .into_bytes(),
                    ),
                ),
            ],
        }
    }
}

/// GRUB's BIOS stage, for a layout with a BIOS boot partition.
pub struct BiosStage {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
}

/// The inputs of a disk build.
pub struct DiskInputs<'a> {
    /// The image file to create (must not exist).
    pub path: &'a Path,
    pub layout: &'a Layout,
    /// The root file system tree and its sorted relative paths.
    pub root_dir: &'a Path,
    pub root_paths: &'a [PathBuf],
    pub esp: &'a EspContent,
    pub bios: Option<&'a BiosStage>,
    /// The image name, the source of every derived identifier.
    pub image: &'a str,
    pub epoch: u64,
    /// Scratch folder.
    pub work: &'a Path,
}

/// Builds the whole disk image.
pub fn build(d: &DiskInputs, progress: &crate::progress::Progress) -> Result<()> {
    let DiskInputs {
        path,
        layout,
        root_dir,
        root_paths,
        esp,
        bios,
        image,
        epoch,
        work,
    } = *d;
    cmd::require("mkfs.ext4", "e2fsprogs")?;
    cmd::require("debugfs", "e2fsprogs")?;
    cmd::require("mformat", "mtools")?;
    let f = File::create_new(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(layout.size)?;
    drop(f);

    progress.status("mkfs.ext4 -d");
    mkfs_root(path, layout, root_dir, image, epoch)?;
    progress.status("clamping inode change times");
    clamp_ctimes(path, layout, root_paths, epoch, work)?;
    progress.status("ESP");
    make_esp(path, layout, esp, image, epoch, work)?;

    let f = fs::OpenOptions::new().write(true).open(path)?;
    let mut writes = gpt_writes(layout)?;
    match (bios, &layout.bios_boot) {
        (Some(stage), Some(part)) => {
            progress.status("GRUB BIOS stage");
            let mbr = writes[0].1.clone();
            let bios_writes =
                crate::grub::bios_writes(&mbr, part, &stage.boot_img, &stage.core_img)?;
            writes[0] = bios_writes[0].clone();
            writes.extend(bios_writes.into_iter().skip(1));
        }
        (None, None) => {}
        _ => bail!("a BIOS stage needs a BIOS boot partition, and the other way round"),
    }
    for (off, bytes) in writes {
        f.write_all_at(&bytes, off)?;
    }
    f.sync_all()?;
    Ok(())
}

fn mkfs_root(path: &Path, l: &Layout, root_dir: &Path, image: &str, epoch: u64) -> Result<()> {
    let fs_uuid = derived_uuid(image, "root-fs");
    let seed = derived_uuid(image, "root-fs-hash-seed");
    let kib = l.root.len() / 1024;
    cmd::run(
        Command::new("mkfs.ext4")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
            .args(["-q", "-F", "-t", "ext4", "-L", "root", "-U", &fs_uuid])
            .arg("-E")
            .arg(format!(
                "offset={},hash_seed={seed},nodiscard,assume_storage_prezeroed=1,root_owner=0:0",
                l.root.offset()
            ))
            .arg("-d")
            .arg(root_dir)
            .arg(path)
            .arg(format!("{kib}k")),
    )?;
    Ok(())
}

/// mkfs.ext4 -d copies each file's ctime, which nobody can set on the source
/// tree; set it (and crtime) to the epoch afterwards with debugfs.
fn clamp_ctimes(path: &Path, l: &Layout, paths: &[PathBuf], epoch: u64, work: &Path) -> Result<()> {
    let script = work.join("debugfs-ctime.cmds");
    let mut s = String::with_capacity(paths.len() * 64);
    for rel in paths {
        let p = format!("/{}", rel.display());
        if p.contains('"') || p.contains('\n') {
            bail!("cannot pass file name {p:?} to debugfs");
        }
        s.push_str(&format!("sif \"{p}\" ctime {epoch}\n"));
    }
    s.push_str(&format!("sif /lost+found ctime {epoch}\n"));
    fs::write(&script, s)?;
    let mut c = Command::new("debugfs");
    c.env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(format!("{}?offset={}", path.display(), l.root.offset()));
    let out = c
        .output()
        .with_context(|| format!("starting {}", cmd::display(&c)))?;
    // debugfs exits 0 even when a command fails; its errors are the stderr
    // lines other than the version banner.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !out.status.success() || !errors.is_empty() {
        bail!(
            "debugfs could not set inode times: {}\n--- stderr ---\n{}",
            cmd::display(&c),
            cmd::tail(&errors.join("\n"), 4000)
        );
    }
    Ok(())
}

fn make_esp(
    path: &Path,
    l: &Layout,
    c: &EspContent,
    image: &str,
    epoch: u64,
    work: &Path,
) -> Result<()> {
    let stage = work.join("esp");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage)?;
    for (rel, src) in &c.files {
        let to = stage.join(rel);
        if let Some(d) = to.parent() {
            fs::create_dir_all(d)?;
        }
        match src {
            EspSource::File(from) => {
                fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
            }
            EspSource::Bytes(b) => fs::write(&to, b)?,
        }
    }
    let paths = crate::rootfs::walk(&stage)?;
    crate::rootfs::clamp_times(&stage, &paths, epoch)?;

    let img = format!("{}@@{}", path.display(), l.esp.offset());
    let serial = &derived_uuid(image, "esp-serial").replace('-', "")[..8];
    let mtools = |args: &[&str]| -> Result<String> {
        cmd::run(
            Command::new(args[0])
                .args(&args[1..])
                .env("MTOOLS_SKIP_CHECK", "1")
                .env("SOURCE_DATE_EPOCH", epoch.to_string()),
        )
    };
    let sectors = (l.esp.len() / SECTOR).to_string();
    mtools(&[
        "mformat", "-i", &img, "-F", "-T", &sectors, "-h", "64", "-s", "32", "-N", serial, "-v",
        "ESP", "::",
    ])?;
    // Directories first, in sorted order, then files: a fixed order gives fixed bytes.
    for rel in &paths {
        let p = stage.join(rel);
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = format!("::/{}", rel.display());
        if p.is_dir() {
            mtools(&["mmd", "-i", &img, &target])?;
        }
    }
    for rel in &paths {
        let p = stage.join(rel);
        if p.is_file() {
            let target = format!("::/{}", rel.display());
            mtools(&["mcopy", "-m", "-i", &img, &p.display().to_string(), &target])?;
        }
    }
    Ok(())
}

/// Writes `bytes` at the end of the file (used for the VHD footer).
pub fn append(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new().append(true).open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_uuids_are_stable_and_v4_shaped() {
        let a = derived_uuid("debian-12", "root");
        assert_eq!(a, derived_uuid("debian-12", "root"));
        assert_ne!(a, derived_uuid("debian-13", "root"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]));
    }

    #[test]
    fn guid_byte_order() {
        let b = guid_bytes(ESP_TYPE).unwrap();
        assert_eq!(
            b,
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
    }

    /// The hybrid layout: BIOS boot, ESP, root, in table and disk order,
    /// checked by sgdisk (gdisk) as well as sfdisk.
    #[test]
    fn hybrid_layout_reads_back_with_sgdisk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.raw");
        let l = Layout::new("t", 2048 * MIB, 64 * MIB, true);
        let f = File::create(&p).unwrap();
        f.set_len(l.size).unwrap();
        for (off, b) in gpt_writes(&l).unwrap() {
            f.write_all_at(&b, off).unwrap();
        }
        drop(f);
        let v = cmd::run(Command::new("sgdisk").arg("-v").arg(&p)).unwrap();
        assert!(v.contains("No problems found"), "{v}");
        let table = cmd::run(Command::new("sgdisk").arg("-p").arg(&p)).unwrap();
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip_while(|l| !l.starts_with("Number"))
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert_eq!(
            (rows[0][1], rows[0][2], rows[0][5]),
            ("2048", "4095", "EF02")
        );
        assert_eq!((rows[1][1], rows[1][5]), ("4096", "EF00"));
        assert_eq!(rows[2][5], "8304");
        let verify = cmd::run(Command::new("sfdisk").arg("--verify").arg(&p)).unwrap();
        assert!(verify.contains("No errors detected"), "{verify}");
    }

    /// The GPT we write is read back by sfdisk (util-linux) as we meant it.
    #[test]
    fn gpt_reads_back_with_sfdisk() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("d.raw");
        let l = Layout::new("t", 2048 * MIB, 128 * MIB, false);
        let f = File::create(&p).unwrap();
        f.set_len(l.size).unwrap();
        for (off, b) in gpt_writes(&l).unwrap() {
            f.write_all_at(&b, off).unwrap();
        }
        drop(f);
        let out = cmd::run(Command::new("sfdisk").arg("--json").arg(&p)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let t = &v["partitiontable"];
        assert_eq!(t["label"], "gpt");
        assert_eq!(t["id"].as_str().unwrap().to_lowercase(), l.disk_guid);
        let parts = t["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0]["start"], 2048);
        assert_eq!(parts[0]["size"], 128 * 2048);
        assert_eq!(parts[0]["type"].as_str().unwrap().to_lowercase(), ESP_TYPE);
        assert_eq!(
            parts[1]["uuid"].as_str().unwrap().to_lowercase(),
            l.root.guid
        );
        assert_eq!(parts[1]["name"], "root");
        // sfdisk --verify checks both headers, the CRCs and the backup copy.
        let verify = cmd::run(Command::new("sfdisk").arg("--verify").arg(&p)).unwrap();
        assert!(verify.contains("No errors detected"), "{verify}");
    }
}
