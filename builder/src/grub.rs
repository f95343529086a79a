//! The hybrid GRUB loader (`boot.loader: grub`), laid out as the
//! distributions' own cloud images are, with no loop device, no mount and no
//! VM:
//!
//! - BIOS: GRUB's `boot.img` in the MBR's code area and a `core.img` made
//!   by the image's own `grub-mkimage` (run in the build root) in a BIOS boot
//!   partition. [`bios_writes`] does what `grub-bios-setup` does for a
//!   contiguous embedding: it points `boot.img` at the partition and fills
//!   the one block list of `core.img`'s first sector.
//! - UEFI and Secure Boot: the distribution's shim (signed by Microsoft's
//!   UEFI CA) as `EFI/BOOT/BOOTX64.EFI`, its signed GRUB and MokManager next
//!   to it, so no NVRAM entry is needed. The signed GRUB's prefix is fixed at
//!   signing time (`/EFI/debian` on Debian); a stub `grub.cfg` there hands
//!   over to `/boot/grub/grub.cfg` on the root file system.
//! - `/boot/grub/grub.cfg` finds the root by file system UUID. The builder
//!   writes the first one; from the first kernel update on, Debian's own
//!   `update-grub` (kernel hook `zz-update-grub`) writes it, with the
//!   command line from `/etc/default/grub.d/50-bootpatch.cfg`.

use crate::cmd;
use crate::disk::{EspSource, Partition, SECTOR};
use crate::spec::Family;
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::Path;
use std::process::Command;

/// GPT type of a BIOS boot partition (gdisk's ef02).
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6e6f-744e-656564454649";

/// The modules built into core.img: enough to read the GPT and the ext4 root
/// and find it by UUID; the rest load from /boot/grub/i386-pc.
const CORE_MODULES: &[&str] = &["biosdisk", "part_gpt", "ext2", "search_fs_uuid"];

const SHIM: &str = "usr/lib/shim/shimx64.efi.signed";
const MOK_MANAGER: &str = "usr/lib/shim/mmx64.efi.signed";
const SIGNED_GRUB: &str = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed";
const I386_PC: &str = "usr/lib/grub/i386-pc";

/// What the GRUB setup needs to know of the image.
pub struct Setup<'a> {
    pub family: Family,
    /// The newest kernel version in /boot.
    pub kernel: &'a str,
    pub root_fs_uuid: &'a str,
    pub root_partuuid: &'a str,
    /// The spec's kernel command line (without root=).
    pub cmdline: &'a str,
    pub title: &'a str,
}

/// What the disk step takes from the GRUB setup.
pub struct Prepared {
    pub boot_img: Vec<u8>,
    pub core_img: Vec<u8>,
    /// Files for the ESP, by path on the ESP.
    pub esp: Vec<(String, EspSource)>,
}

/// The folder the signed GRUB reads its configuration from, on the ESP.
pub fn vendor_dir(family: Family) -> Result<&'static str> {
    Ok(match family {
        Family::Debian => "debian",
        Family::Ubuntu => "ubuntu",
        Family::Rocky => bail!("boot.loader grub is built for Debian and Ubuntu only"),
    })
}

fn need(root: &Path, rel: &str, package: &str) -> Result<std::path::PathBuf> {
    let p = root.join(rel);
    if !p.is_file() {
        bail!("boot.loader grub: /{rel} is missing from the image (package {package})");
    }
    Ok(p)
}

fn write(root: &Path, rel: &str, text: &str, mode: u32) -> Result<()> {
    crate::rootfs::write(root, rel, text.as_bytes(), mode)
}

/// The command line `update-grub` gives every kernel: the spec's, without
/// `ro` (GRUB's entries add it themselves).
pub fn linux_cmdline(cmdline: &str) -> String {
    cmdline
        .split_whitespace()
        .filter(|w| *w != "ro")
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first /boot/grub/grub.cfg (later ones are update-grub's).
pub fn grub_cfg(s: &Setup) -> String {
    format!(
        "# Written by bootpatch's image builder for the first boot; update-grub\n\
         # replaces it when a kernel is installed (settings: /etc/default/grub.d/).\n\
         set default=0\n\
         set timeout=0\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         insmod part_gpt\n\
         insmod ext2\n\
         search --no-floppy --fs-uuid --set=root {uuid}\n\
         menuentry '{title}' {{\n\
         \tlinux /boot/vmlinuz-{k} root=PARTUUID={part} rootfstype=ext4 ro {cmd}\n\
         \tinitrd /boot/initrd.img-{k}\n\
         }}\n",
        uuid = s.root_fs_uuid,
        title = s.title.replace('\'', ""),
        k = s.kernel,
        part = s.root_partuuid,
        cmd = linux_cmdline(s.cmdline),
    )
}

/// The ESP's stub: what the signed GRUB reads at its fixed prefix.
pub fn esp_stub(root_fs_uuid: &str) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {root_fs_uuid}\n\
         set prefix=($root)/boot/grub\n\
         configfile $prefix/grub.cfg\n"
    )
}

/// Settings for Debian's update-grub, so kernels it adds boot as the first one.
fn default_grub(cmdline: &str) -> String {
    let q = linux_cmdline(cmdline).replace('"', "");
    format!(
        "# Written by bootpatch's image builder: what update-grub gives every kernel.\n\
         GRUB_TIMEOUT=0\n\
         GRUB_CMDLINE_LINUX_DEFAULT=\"\"\n\
         GRUB_CMDLINE_LINUX=\"{q}\"\n\
         GRUB_TERMINAL=\"console serial\"\n\
         GRUB_SERIAL_COMMAND=\"serial --unit=0 --speed=115200\"\n\
         GRUB_DISABLE_OS_PROBER=true\n"
    )
}

/// Sets GRUB up inside the root tree (before its file system is made) and
/// returns what goes outside it: the BIOS stage and the ESP's files.
pub fn prepare(root: &Path, s: &Setup) -> Result<Prepared> {
    let vendor = vendor_dir(s.family)?;
    let shim = need(root, SHIM, "shim-signed")?;
    let signed = need(root, SIGNED_GRUB, "grub-efi-amd64-signed")?;
    let boot_img = need(root, &format!("{I386_PC}/boot.img"), "grub-pc-bin")?;
    need(root, "usr/bin/grub-mkimage", "grub-common")?;
    let grub_bytes = fs::read(&signed).with_context(|| format!("reading {}", signed.display()))?;
    let prefix = format!("/EFI/{vendor}\0");
    if !grub_bytes
        .windows(prefix.len())
        .any(|w| w == prefix.as_bytes())
    {
        bail!(
            "{}: the signed GRUB's prefix is not /EFI/{vendor}; its ESP stub would not be read",
            signed.display()
        );
    }

    // Modules for the BIOS stage, where grub-install puts them.
    let mods = root.join("boot/grub/i386-pc");
    fs::create_dir_all(&mods)?;
    let src = root.join(I386_PC);
    let mut names: Vec<_> = fs::read_dir(&src)
        .with_context(|| format!("reading {}", src.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let name = n.to_string_lossy();
        if name.ends_with(".mod") || name.ends_with(".lst") || name == "boot.img" {
            fs::copy(src.join(&n), mods.join(&n))
                .with_context(|| format!("copying {}", src.join(&n).display()))?;
        }
    }
    write(
        root,
        "boot/grub/i386-pc/load.cfg",
        &format!(
            "search.fs_uuid {} root\nset prefix=($root)/boot/grub\n",
            s.root_fs_uuid
        ),
        0o644,
    )?;
    cmd::require("chroot", "coreutils")?;
    cmd::run(
        Command::new("chroot")
            .arg(root)
            .args([
                "/usr/bin/grub-mkimage",
                "-O",
                "i386-pc",
                "-d",
                "/usr/lib/grub/i386-pc",
                "-c",
                "/boot/grub/i386-pc/load.cfg",
                "-p",
                "/boot/grub",
                "-o",
                "/boot/grub/i386-pc/core.img",
            ])
            .args(CORE_MODULES)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("LC_ALL", "C.UTF-8"),
    )
    .context("making GRUB's BIOS core.img with the image's grub-mkimage")?;
    let core_img = fs::read(mods.join("core.img"))?;

    write(root, "boot/grub/grub.cfg", &grub_cfg(s), 0o644)?;
    write(
        root,
        "etc/default/grub.d/50-bootpatch.cfg",
        &default_grub(s.cmdline),
        0o644,
    )?;
    // grub-cloud-amd64 reinstalls both stages on the node when GRUB or shim
    // is updated, but only where this flag says it is a cloud image.
    if root
        .join("var/lib/dpkg/info/grub-cloud-amd64.list")
        .exists()
    {
        write(root, "etc/grub.d/enable_cloud", "", 0o644)?;
    }

    let mut esp = vec![
        ("EFI/BOOT/BOOTX64.EFI".to_string(), EspSource::File(shim)),
        ("EFI/BOOT/grubx64.efi".to_string(), EspSource::File(signed)),
        (
            format!("EFI/{vendor}/grub.cfg"),
            EspSource::Bytes(esp_stub(s.root_fs_uuid).into_bytes()),
        ),
    ];
    let mm = root.join(MOK_MANAGER);
    if mm.is_file() {
        esp.push(("EFI/BOOT/mmx64.efi".to_string(), EspSource::File(mm)));
    }
    Ok(Prepared {
        boot_img: fs::read(&boot_img)?,
        core_img,
        esp,
    })
}

/// Offsets in boot.img (GRUB's i386-pc boot.S).
const KERNEL_SECTOR: usize = 0x5c;
const BOOT_DRIVE: usize = 0x64;
const DRIVE_CHECK: usize = 0x66;
/// boot.img's code ends where the MBR's disk signature begins.
const MBR_CODE: usize = 0x1b8;
/// Segment core.img's first sector is loaded at (0x800), plus that sector.
const CORE_REST_SEGMENT: u16 = 0x800 + (SECTOR as u16 >> 4);

/// The BIOS stage as (offset, bytes) writes, given the disk's sector 0 as
/// written with the GPT's protective MBR (whose partition table is kept).
pub fn bios_writes(
    mbr: &[u8],
    part: &Partition,
    boot_img: &[u8],
    core_img: &[u8],
) -> Result<Vec<(u64, Vec<u8>)>> {
    if boot_img.len() != SECTOR as usize || mbr.len() != SECTOR as usize {
        bail!(
            "GRUB's boot.img must be one sector, not {} bytes",
            boot_img.len()
        );
    }
    let sectors = (core_img.len() as u64).div_ceil(SECTOR);
    if sectors < 2 || sectors * SECTOR > part.len() {
        bail!(
            "GRUB's core.img ({} bytes) does not fit the BIOS boot partition ({} bytes)",
            core_img.len(),
            part.len()
        );
    }
    let rest = u16::try_from(sectors - 1).context("core.img too large")?;
    let mut sector0 = mbr.to_vec();
    sector0[..MBR_CODE].copy_from_slice(&boot_img[..MBR_CODE]);
    sector0[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&part.first_lba.to_le_bytes());
    // 0xff: read core.img from the drive the BIOS booted from.
    sector0[BOOT_DRIVE] = 0xff;
    // A hard disk: skip the check for BIOSes that pass a wrong drive number.
    sector0[DRIVE_CHECK] = 0x90;
    sector0[DRIVE_CHECK + 1] = 0x90;

    // core.img's first sector (diskboot) ends with block lists of 12 bytes
    // (start u64, sectors u16, segment u16), read backwards until one is
    // empty. One contiguous run holds the rest of core.img.
    let mut core = core_img.to_vec();
    core.resize((sectors * SECTOR) as usize, 0);
    let end = SECTOR as usize;
    let mut at = end - 12;
    loop {
        let len = u16::from_le_bytes([core[at + 8], core[at + 9]]);
        if len == 0 {
            break;
        }
        core[at..at + 12].fill(0);
        if at < 0x20 {
            bail!("GRUB's core.img has no end to its block lists");
        }
        at -= 12;
    }
    let first = end - 12;
    core[first..first + 8].copy_from_slice(&(part.first_lba + 1).to_le_bytes());
    core[first + 8..first + 10].copy_from_slice(&rest.to_le_bytes());
    core[first + 10..first + 12].copy_from_slice(&CORE_REST_SEGMENT.to_le_bytes());
    Ok(vec![(0, sector0), (part.offset(), core)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bios_stage_points_at_its_partition() {
        let part = Partition {
            type_guid: BIOS_BOOT_TYPE.into(),
            guid: "x".into(),
            name: "BIOS boot".into(),
            first_lba: 2048,
            last_lba: 4095,
        };
        let mut mbr = vec![0u8; 512];
        mbr[0x1be + 4] = 0xee;
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        let boot: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
        let mut core = vec![0x11u8; 3 * 512 + 100];
        // As grub-mkimage leaves it: one list with the length, zeros before.
        core[500..512].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0x20, 0x08]);
        core[488..500].fill(0);
        let w = bios_writes(&mbr, &part, &boot, &core).unwrap();
        let s0 = &w[0].1;
        assert_eq!(&s0[0x1be..], &mbr[0x1be..], "partition table kept");
        assert_eq!(u64::from_le_bytes(s0[0x5c..0x64].try_into().unwrap()), 2048);
        assert_eq!(s0[0x64], 0xff);
        assert_eq!(&s0[0..3], &boot[0..3]);
        assert_eq!(w[1].0, 2048 * 512);
        let c = &w[1].1;
        assert_eq!(c.len(), 4 * 512);
        assert_eq!(u64::from_le_bytes(c[500..508].try_into().unwrap()), 2049);
        assert_eq!(u16::from_le_bytes([c[508], c[509]]), 3);
        assert_eq!(u16::from_le_bytes([c[510], c[511]]), 0x820);
        let small = Partition {
            last_lba: 2049,
            ..part
        };
        assert!(bios_writes(&mbr, &small, &boot, &core).is_err());
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            linux_cmdline("console=tty0 console=ttyS0,115200 ro"),
            "console=tty0 console=ttyS0,115200"
        );
        let cfg = grub_cfg(&Setup {
            family: Family::Debian,
            kernel: "6.1.0-28-cloud-amd64",
            root_fs_uuid: "u-u-i-d",
            root_partuuid: "p-a-r-t",
            cmdline: "console=ttyS0 ro",
            title: "Debian 12 (bookworm)",
        });
        assert!(cfg.contains("--fs-uuid --set=root u-u-i-d"), "{cfg}");
        assert!(cfg.contains(
            "linux /boot/vmlinuz-6.1.0-28-cloud-amd64 root=PARTUUID=p-a-r-t rootfstype=ext4 ro console=ttyS0\n"
        ));
        assert!(esp_stub("u-u-i-d").contains("configfile $prefix/grub.cfg"));
    }
}
