//! `manifest.json` and `SHA256SUMS` of a build, and their check (`builder
//! verify`). The manifest says what was built from what: the spec and its
//! hash, the stream and point release, the kernel, the package count, every
//! artifact's size and SHA-256, the builder version and the build time.

use crate::formats::Artifact;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE_NAME: &str = "manifest.json";
pub const SUMS_NAME: &str = "SHA256SUMS";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Manifest {
    pub manifest_version: u32,
    pub image: String,
    pub spec: SpecRef,
    pub os: OsInfo,
    pub kernel: String,
    pub package_count: usize,
    pub builder_version: String,
    /// RFC 3339, UTC.
    pub build_time: String,
    pub source_date_epoch: u64,
    pub locked: bool,
    pub disk: DiskInfo,
    pub boot: BootInfo,
    pub artifacts: Vec<Artifact>,
    /// Wall time of each build step, in seconds.
    pub timings: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpecRef {
    pub path: String,
    pub sha256: String,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OsInfo {
    pub family: String,
    pub stream: String,
    pub suite: String,
    pub point_release: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskInfo {
    pub size: u64,
    pub disk_guid: String,
    pub esp_partuuid: String,
    pub root_partuuid: String,
    pub root_fs_uuid: String,
}

/// What the image boots with, and what each cloud must be told at import.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootInfo {
    /// `grub` or `systemd-boot`.
    pub loader: String,
    /// Boots under legacy BIOS (GRUB's BIOS stage is in the image).
    pub bios: bool,
    pub uefi: bool,
    /// Boots under UEFI Secure Boot with Microsoft's UEFI CA keys enrolled.
    pub secure_boot: bool,
    pub cloud: CloudImport,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudImport {
    /// `aws ec2 register-image --boot-mode`.
    pub aws_boot_mode: String,
    /// `gcloud compute images create --guest-os-features`.
    pub gcp_guest_os_features: Vec<String>,
    /// Azure image generations (`--hyper-v-generation`) this disk boots as.
    pub azure_hyper_v_generations: Vec<String>,
    /// Azure `--features SecurityType=...` for a Gen2 image definition.
    pub azure_security_type: String,
    /// `openstack image create --property` settings.
    pub openstack_properties: std::collections::BTreeMap<String, String>,
}

impl BootInfo {
    /// From the loader, and the kernel drivers the clouds' features need.
    pub fn new(loader: crate::spec::Loader, secure_boot: bool, drivers: &Drivers) -> BootInfo {
        use crate::spec::Loader;
        let bios = loader == Loader::Grub;
        let mut gcp = vec!["UEFI_COMPATIBLE".to_string()];
        if drivers.virtio_scsi {
            gcp.push("VIRTIO_SCSI_MULTIQUEUE".into());
        }
        if drivers.gve {
            gcp.push("GVNIC".into());
        }
        let mut openstack = std::collections::BTreeMap::new();
        openstack.insert("hw_machine_type".to_string(), "q35".to_string());
        if !bios {
            openstack.insert("hw_firmware_type".into(), "uefi".into());
        }
        if secure_boot {
            // Secure Boot needs UEFI; a BIOS-capable image can still ask for it.
            openstack.insert("hw_firmware_type".into(), "uefi".into());
            openstack.insert("os_secure_boot".into(), "required".into());
        }
        BootInfo {
            loader: loader.name().into(),
            bios,
            uefi: true,
            secure_boot,
            cloud: CloudImport {
                aws_boot_mode: if bios { "uefi-preferred" } else { "uefi" }.into(),
                gcp_guest_os_features: gcp,
                azure_hyper_v_generations: if bios {
                    vec!["V1".into(), "V2".into()]
                } else {
                    vec!["V2".into()]
                },
                azure_security_type: if secure_boot {
                    "TrustedLaunchSupported"
                } else {
                    "Standard"
                }
                .into(),
                openstack_properties: openstack,
            },
        }
    }
}

/// Kernel drivers some clouds' image features depend on.
#[derive(Debug, Clone, Copy, Default)]
pub struct Drivers {
    pub virtio_scsi: bool,
    pub gve: bool,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Manifest> {
        let p = dir.join(FILE_NAME);
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }
}

/// `sha256sum -c` compatible lines.
pub fn sums_text(artifacts: &[Artifact]) -> String {
    artifacts
        .iter()
        .map(|a| format!("{}  {}\n", a.sha256, a.file))
        .collect()
}

/// Formats seconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One problem `verify` found with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub file: String,
    pub problem: String,
}

/// Re-hashes every artifact of a build folder against its manifest and
/// checks SHA256SUMS says the same.
pub fn verify(dir: &Path) -> Result<Vec<Mismatch>> {
    let m = Manifest::load(dir)?;
    let mut bad = Vec::new();
    for a in &m.artifacts {
        let p = dir.join(&a.file);
        let Ok(md) = std::fs::metadata(&p) else {
            bad.push(Mismatch {
                file: a.file.clone(),
                problem: "missing".into(),
            });
            continue;
        };
        if md.len() != a.size {
            bad.push(Mismatch {
                file: a.file.clone(),
                problem: format!("size {} differs from the manifest's {}", md.len(), a.size),
            });
            continue;
        }
        let sum = crate::hash::file_sha256(&p)?;
        if sum != a.sha256 {
            bad.push(Mismatch {
                file: a.file.clone(),
                problem: format!("SHA-256 {sum} differs from the manifest's {}", a.sha256),
            });
        }
    }
    match std::fs::read_to_string(dir.join(SUMS_NAME)) {
        Ok(text) if text == sums_text(&m.artifacts) => {}
        Ok(_) => bad.push(Mismatch {
            file: SUMS_NAME.into(),
            problem: "does not match manifest.json".into(),
        }),
        Err(_) => bad.push(Mismatch {
            file: SUMS_NAME.into(),
            problem: "missing".into(),
        }),
    }
    Ok(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloud_import_settings_follow_the_loader() {
        use crate::spec::Loader;
        let d = Drivers {
            virtio_scsi: true,
            gve: false,
        };
        let g = BootInfo::new(Loader::Grub, true, &d);
        assert!(g.bios && g.uefi && g.secure_boot);
        assert_eq!(g.cloud.aws_boot_mode, "uefi-preferred");
        assert_eq!(
            g.cloud.gcp_guest_os_features,
            ["UEFI_COMPATIBLE", "VIRTIO_SCSI_MULTIQUEUE"]
        );
        assert_eq!(g.cloud.azure_hyper_v_generations, ["V1", "V2"]);
        assert_eq!(g.cloud.openstack_properties["os_secure_boot"], "required");
        let s = BootInfo::new(Loader::SystemdBoot, false, &Drivers::default());
        assert!(!s.bios && !s.secure_boot);
        assert_eq!(s.cloud.aws_boot_mode, "uefi");
        assert_eq!(s.cloud.gcp_guest_os_features, ["UEFI_COMPATIBLE"]);
        assert_eq!(s.cloud.azure_security_type, "Standard");
        assert_eq!(s.cloud.openstack_properties["hw_firmware_type"], "uefi");
        assert!(!s.cloud.openstack_properties.contains_key("os_secure_boot"));
    }

    #[test]
    fn verify_names_the_changed_file() {
        let d = tempfile::tempdir().unwrap();
        let mut artifacts = Vec::new();
        for (name, body) in [("disk.raw", &b"raw bytes"[..]), ("disk.vhd", b"vhd bytes")] {
            std::fs::write(d.path().join(name), body).unwrap();
            artifacts.push(Artifact {
                file: name.into(),
                format: name.trim_start_matches("disk.").into(),
                size: body.len() as u64,
                sha256: crate::hash::hex(&crate::hash::sha256_bytes(body)),
            });
        }
        let m = Manifest {
            manifest_version: 1,
            image: "t".into(),
            spec: SpecRef {
                path: "t.yaml".into(),
                sha256: String::new(),
                text: String::new(),
            },
            os: OsInfo {
                family: "debian".into(),
                stream: "12".into(),
                suite: "bookworm".into(),
                point_release: "12.0".into(),
            },
            kernel: String::new(),
            package_count: 0,
            builder_version: String::new(),
            build_time: rfc3339(0),
            source_date_epoch: 0,
            locked: false,
            disk: DiskInfo {
                size: 0,
                disk_guid: String::new(),
                esp_partuuid: String::new(),
                root_partuuid: String::new(),
                root_fs_uuid: String::new(),
            },
            boot: BootInfo::new(
                crate::spec::Loader::Grub,
                true,
                &Drivers {
                    virtio_scsi: true,
                    gve: false,
                },
            ),
            artifacts: artifacts.clone(),
            timings: vec![],
        };
        std::fs::write(d.path().join(FILE_NAME), serde_json::to_string(&m).unwrap()).unwrap();
        std::fs::write(d.path().join(SUMS_NAME), sums_text(&artifacts)).unwrap();
        assert!(verify(d.path()).unwrap().is_empty());
        std::fs::write(d.path().join("disk.vhd"), b"vhd bytez").unwrap();
        let bad = verify(d.path()).unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].file, "disk.vhd");
        assert!(bad[0].problem.contains("SHA-256"));
        std::fs::remove_file(d.path().join("disk.raw")).unwrap();
        let bad = verify(d.path()).unwrap();
        assert!(bad
            .iter()
            .any(|b| b.file == "disk.raw" && b.problem == "missing"));
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
