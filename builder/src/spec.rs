//! Image specs (`images/*.yaml`): one strict YAML document per OS stream.
//!
//! This module owns parsing and validation only. Unknown keys, wrong types and
//! bad values are errors naming the file, the key path and the value. It never
//! touches the network or the host: mirror names (`mirror: debian`) are
//! resolved later against the build host's apt sources (see [`crate::hostapt`]).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::path::Path;

/// The file of the spec `builder build` uses when none is given (shipped
/// in the binary as [`crate::shipped::DEFAULT`]).
pub const DEFAULT_SPEC: &str = "images/debian-12.yaml";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Image name, also the default output folder name (`out/<name>`).
    pub name: String,
    /// Set on specs kept for later streams that this host cannot build; the
    /// value says why. `builder build` refuses them with that reason.
    #[serde(default)]
    pub not_built_here: Option<String>,
    pub os: Os,
    #[serde(default = "default_arch")]
    pub architecture: String,
    #[serde(default)]
    pub rootfs: Rootfs,
    /// The kernel package (a metapackage that follows the stream).
    pub kernel: String,
    /// Extra packages on top of the variant's base set.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Package sources the image is built from and later patched from.
    pub sources: Vec<SourceSpec>,
    pub disk: DiskSpec,
    #[serde(default)]
    pub boot: BootSpec,
    #[serde(default = "default_outputs")]
    pub outputs: Vec<Format>,
    #[serde(default)]
    pub hygiene: Hygiene,
    /// The bootpatch defaults baked into `/etc/bootpatch/config.yaml`, in the
    /// node config's own format (checked by `bootpatch::config`).
    #[serde(default)]
    pub bootpatch: serde_norway::Mapping,
    /// Bake bootpatch, its first-boot unit and config into the image. false
    /// makes an image like a cloud's stock one, which gets bootpatch from
    /// user-data (`builder render --embed-bootpatch` or `--bootpatch-url`).
    #[serde(default = "yes")]
    pub bake_bootpatch: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Os {
    pub family: Family,
    /// The pinned major release, e.g. "12".
    pub stream: String,
    /// The release's code name, e.g. "bookworm".
    pub suite: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Debian,
    Ubuntu,
    Rocky,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rootfs {
    /// mmdebstrap variant: minbase, important, standard, ...
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Leave documentation, man pages and translations out (copyright files stay).
    #[serde(default = "yes")]
    pub exclude_docs: bool,
}

impl Default for Rootfs {
    fn default() -> Self {
        Rootfs {
            variant: default_variant(),
            exclude_docs: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// Short name, used for the file name in `/etc/apt/sources.list.d/`.
    pub name: String,
    /// A symbolic mirror resolved from the build host's apt sources
    /// (`debian`, `debian-security`, `ubuntu`, `ubuntu-security`).
    #[serde(default)]
    pub mirror: Option<String>,
    /// Explicit URIs instead of `mirror`.
    #[serde(default)]
    pub uris: Vec<String>,
    pub suites: Vec<String>,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Keyring for `Signed-By` inside the image.
    #[serde(default)]
    pub signed_by: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSpec {
    pub size: ByteSize,
    #[serde(default = "default_esp")]
    pub esp_size: ByteSize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BootSpec {
    #[serde(default)]
    pub loader: Loader,
    /// Whether the image must boot under UEFI Secure Boot. Unset: whatever
    /// the loader can (grub: yes, systemd-boot: no).
    #[serde(default)]
    pub secure_boot: Option<bool>,
    /// Kernel command line; `root=PARTUUID=...` is added by the builder.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
}

impl Default for BootSpec {
    fn default() -> Self {
        BootSpec {
            loader: Loader::default(),
            secure_boot: None,
            cmdline: default_cmdline(),
        }
    }
}

impl BootSpec {
    /// Whether the image is meant to boot under Secure Boot.
    pub fn secure_boot(&self) -> bool {
        self.secure_boot.unwrap_or(self.loader == Loader::Grub)
    }
}

/// How the image boots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    /// Hybrid GRUB, as the distributions' own cloud images boot: GRUB's BIOS
    /// stage in a BIOS boot partition, and on the ESP the distribution's
    /// signed shim and GRUB in the removable path. Boots under BIOS, UEFI and
    /// UEFI Secure Boot; kernels come from /boot, through `update-grub`.
    #[default]
    Grub,
    /// systemd-boot with the kernel on the ESP: UEFI only, unsigned, so no
    /// Secure Boot.
    SystemdBoot,
}

impl Loader {
    pub fn name(self) -> &'static str {
        match self {
            Loader::Grub => "grub",
            Loader::SystemdBoot => "systemd-boot",
        }
    }

    /// The packages the loader needs in the image, added by the builder.
    pub fn packages(self, family: Family) -> &'static [&'static str] {
        match (self, family) {
            // The Debian cloud team's hybrid setup: pulls in grub-pc-bin,
            // grub-efi-amd64-bin, grub-efi-amd64-signed and shim-signed, and
            // reinstalls both stages when a GRUB or shim update arrives.
            (Loader::Grub, Family::Debian) => &["grub-cloud-amd64"],
            (Loader::Grub, _) => &[
                "grub2-common",
                "grub-pc-bin",
                "grub-efi-amd64-bin",
                "grub-efi-amd64-signed",
                "shim-signed",
            ],
            (Loader::SystemdBoot, _) => &["systemd-boot-efi"],
        }
    }

    /// The smallest ESP the loader works with. GRUB: shim, GRUB, MokManager
    /// and fallback (about 6.5 MiB), twice (EFI/BOOT and the vendor folder,
    /// as `grub-install --force-extra-removable` writes them on an update),
    /// in a FAT32 file system (at least 65,525 clusters: 32 MiB with 512-byte
    /// clusters). systemd-boot: the kernel and initrd live on the ESP.
    pub fn min_esp(self) -> u64 {
        match self {
            Loader::Grub => 32 * MIB,
            Loader::SystemdBoot => 64 * MIB,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Raw,
    Qcow2,
    Vhd,
    Ova,
    Gcp,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::Raw,
        Format::Qcow2,
        Format::Vhd,
        Format::Ova,
        Format::Gcp,
    ];

    pub fn parse(s: &str) -> Result<Format> {
        Ok(match s.trim() {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vhd" => Format::Vhd,
            "ova" => Format::Ova,
            "gcp" => Format::Gcp,
            other => bail!("unknown format {other:?} (known: raw, qcow2, vhd, ova, gcp)"),
        })
    }

    /// The artifact's file name in the output folder.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Raw => "disk.raw",
            Format::Qcow2 => "disk.qcow2",
            Format::Vhd => "disk.vhd",
            Format::Ova => "disk.ova",
            Format::Gcp => "gcp.tar.gz",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Ova => "ova",
            Format::Gcp => "gcp",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hygiene {
    #[serde(default = "yes")]
    pub empty_machine_id: bool,
    #[serde(default = "yes")]
    pub remove_ssh_host_keys: bool,
    #[serde(default = "yes")]
    pub remove_apt_lists: bool,
    #[serde(default = "yes")]
    pub remove_logs: bool,
    #[serde(default = "yes")]
    pub remove_random_seed: bool,
}

impl Default for Hygiene {
    fn default() -> Self {
        Hygiene {
            empty_machine_id: true,
            remove_ssh_host_keys: true,
            remove_apt_lists: true,
            remove_logs: true,
            remove_random_seed: true,
        }
    }
}

/// A size in bytes, written as `3GiB`, `128MiB`, `512KiB` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteSize(pub u64);

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a size (e.g. 3GiB, 128MiB)"))?;
        let mult = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => MIB,
            "GiB" => GIB,
            "TiB" => 1 << 40,
            u => {
                return Err(format!(
                    "unknown size unit {u:?} in {s:?} (use KiB, MiB, GiB)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_arch() -> String {
    "amd64".into()
}
fn default_variant() -> String {
    "minbase".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_esp() -> ByteSize {
    ByteSize(128 * MIB)
}
fn default_cmdline() -> String {
    "console=tty0 console=ttyS0,115200 ro".into()
}
fn default_outputs() -> Vec<Format> {
    Format::ALL.to_vec()
}

/// A loaded spec with its file name and the SHA-256 of its bytes.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub path: String,
    pub sha256: String,
    pub text: String,
    pub spec: Spec,
    /// The bootpatch defaults rendered as the node's config file.
    pub bootpatch_config: String,
}

/// Reads, parses and validates a spec file.
pub fn load(path: &Path) -> Result<LoadedSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    load_text(text, path.display().to_string())
}

/// What `builder build [SPEC]` names: a spec file when one exists at that
/// path, else a shipped spec by name (`debian-12`), the default when none.
pub fn resolve(arg: Option<&Path>) -> Result<LoadedSpec> {
    let name = match arg {
        None => crate::shipped::DEFAULT,
        Some(p) if p.is_file() => return load(p),
        Some(p) => p.to_str().unwrap_or(""),
    };
    match crate::shipped::spec(name) {
        Some(text) => load_text(text.to_string(), format!("images/{name}.yaml (shipped)")),
        None => bail!(
            "{}: no such spec file, and no shipped spec of that name (shipped: {})",
            arg.map(|p| p.display().to_string()).unwrap_or_default(),
            crate::shipped::names()
        ),
    }
}

fn load_text(text: String, origin: String) -> Result<LoadedSpec> {
    let spec = parse(&text, &origin)?;
    let bootpatch_config = bootpatch_config(&spec, &origin)?;
    Ok(LoadedSpec {
        path: origin,
        sha256: crate::hash::hex(&crate::hash::sha256_bytes(text.as_bytes())),
        text,
        spec,
        bootpatch_config,
    })
}

/// Parses and validates spec text; `origin` names the file in messages.
pub fn parse(text: &str, origin: &str) -> Result<Spec> {
    let de = serde_norway::Deserializer::from_str(text);
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key.is_empty() || key == "." {
            anyhow::anyhow!("{origin}: {inner}")
        } else {
            anyhow::anyhow!("{origin}: key `{key}`: {inner}")
        }
    })?;
    validate(&spec).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    Ok(spec)
}

fn bad(key: &str, value: impl fmt::Debug, why: &str) -> anyhow::Error {
    anyhow::anyhow!("key `{key}`: bad value {value:?}: {why}")
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c))
}

fn is_package(s: &str) -> bool {
    s.len() >= 2
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

/// Checks the values serde cannot check by type.
pub fn validate(s: &Spec) -> Result<()> {
    if !is_name(&s.name) {
        return Err(bad(
            "name",
            &s.name,
            "use lower-case letters, digits, '-', '.'",
        ));
    }
    if s.os.stream.is_empty() || !s.os.stream.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(bad(
            "os.stream",
            &s.os.stream,
            "a pinned major release such as \"12\"",
        ));
    }
    if !is_name(&s.os.suite) {
        return Err(bad(
            "os.suite",
            &s.os.suite,
            "a release code name such as bookworm",
        ));
    }
    if s.architecture != "amd64" {
        return Err(bad("architecture", &s.architecture, "only amd64 is built"));
    }
    if ![
        "minbase",
        "essential",
        "apt",
        "required",
        "important",
        "standard",
    ]
    .contains(&s.rootfs.variant.as_str())
    {
        return Err(bad(
            "rootfs.variant",
            &s.rootfs.variant,
            "an mmdebstrap variant (minbase, important, standard, ...)",
        ));
    }
    if !is_package(&s.kernel) {
        return Err(bad("kernel", &s.kernel, "a package name"));
    }
    for (i, p) in s.packages.iter().enumerate() {
        if !is_package(p) {
            return Err(bad(&format!("packages[{i}]"), p, "a package name"));
        }
    }
    if s.sources.is_empty() {
        return Err(bad(
            "sources",
            "[]",
            "at least one package source is needed",
        ));
    }
    for (i, src) in s.sources.iter().enumerate() {
        let k = |f: &str| format!("sources[{i}].{f}");
        if !is_name(&src.name) {
            return Err(bad(
                &k("name"),
                &src.name,
                "use lower-case letters, digits, '-'",
            ));
        }
        match (&src.mirror, src.uris.is_empty()) {
            (Some(_), false) => {
                return Err(bad(
                    &k("uris"),
                    &src.uris,
                    "give either `mirror` or `uris`, not both",
                ))
            }
            (None, true) => {
                return Err(bad(
                    &k("mirror"),
                    "",
                    "give `mirror` (a host mirror name) or `uris`",
                ))
            }
            (Some(m), true) if !crate::hostapt::KNOWN_MIRRORS.contains(&m.as_str()) => {
                return Err(bad(
                    &k("mirror"),
                    m,
                    &format!(
                        "known mirrors: {}",
                        crate::hostapt::KNOWN_MIRRORS.join(", ")
                    ),
                ))
            }
            _ => {}
        }
        for (j, u) in src.uris.iter().enumerate() {
            if !(u.starts_with("http://") || u.starts_with("https://") || u.starts_with("file:/")) {
                return Err(bad(
                    &k(&format!("uris[{j}]")),
                    u,
                    "an http, https or file URI",
                ));
            }
        }
        if src.suites.is_empty() {
            return Err(bad(&k("suites"), "[]", "at least one suite"));
        }
        for (j, suite) in src.suites.iter().enumerate() {
            if !is_name(suite) {
                return Err(bad(&k(&format!("suites[{j}]")), suite, "a suite name"));
            }
        }
        if let Some(key) = &src.signed_by {
            if !key.starts_with('/') {
                return Err(bad(
                    &k("signedBy"),
                    key,
                    "an absolute path of a keyring in the image",
                ));
            }
        }
    }
    let size = s.disk.size.0;
    let esp = s.disk.esp_size.0;
    if size & (MIB - 1) != 0 {
        return Err(bad("disk.size", size, "must be a whole number of MiB"));
    }
    let min_esp = s.boot.loader.min_esp();
    if esp & (MIB - 1) != 0 || esp < min_esp {
        return Err(bad(
            "disk.espSize",
            esp,
            &format!(
                "must be a whole number of MiB, at least {}MiB for boot.loader {} ({})",
                min_esp / MIB,
                s.boot.loader.name(),
                match s.boot.loader {
                    Loader::Grub => "shim, GRUB, MokManager and fallback, twice, in FAT32",
                    Loader::SystemdBoot => "the kernel and initrd live on the ESP",
                }
            ),
        ));
    }
    if s.boot.secure_boot == Some(true) && s.boot.loader == Loader::SystemdBoot {
        return Err(bad(
            "boot.secureBoot",
            true,
            "needs boot.loader: grub: the systemd-boot image is unsigned, so Secure Boot firmware refuses to start it",
        ));
    }
    if size < esp + 1024 * MIB {
        return Err(bad(
            "disk.size",
            size,
            "must leave at least 1GiB for the root file system",
        ));
    }
    if size > 2048 * GIB {
        return Err(bad("disk.size", size, "at most 2TiB"));
    }
    if s.outputs.is_empty() {
        return Err(bad("outputs", "[]", "at least one output format"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for f in &s.outputs {
        if !seen.insert(*f) {
            return Err(bad("outputs", f.name(), "listed twice"));
        }
    }
    if s.outputs.contains(&Format::Gcp) && size & (GIB - 1) != 0 {
        return Err(bad(
            "disk.size",
            size,
            "the gcp output needs a whole number of GiB",
        ));
    }
    if s.boot.cmdline.contains("root=") {
        return Err(bad(
            "boot.cmdline",
            &s.boot.cmdline,
            "root= is set by the builder",
        ));
    }
    Ok(())
}

/// Renders the spec's bootpatch defaults as the node config file and checks
/// it with the node's own parser.
pub fn bootpatch_config(s: &Spec, origin: &str) -> Result<String> {
    let mut text = String::from(
        "# bootpatch defaults baked in by `builder build`; cloud-init user-data may replace this file.\n",
    );
    if !s.bootpatch.is_empty() {
        text.push_str(
            &serde_norway::to_string(&s.bootpatch).context("rendering the bootpatch defaults")?,
        );
    }
    bootpatch::config::Config::parse(&text, &format!("{origin}: key `bootpatch`"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }

    #[test]
    fn shipped_specs_parse() {
        for name in ["debian-12", "debian-13", "ubuntu-24.04"] {
            let l = load(&repo_file(&format!("images/{name}.yaml"))).unwrap();
            assert_eq!(l.spec.name, name);
            assert_eq!(l.sha256.len(), 64);
            assert!(l.bootpatch_config.contains("patchOnBoot: true"));
        }
        let d12 = load(&repo_file(DEFAULT_SPEC)).unwrap();
        assert_eq!(d12.spec.os.suite, "bookworm");
        assert_eq!(d12.spec.outputs, Format::ALL.to_vec());
        assert_eq!(d12.spec.disk.size, ByteSize(3 * GIB));
        assert!(d12.spec.not_built_here.is_none());
    }

    fn base() -> String {
        std::fs::read_to_string(repo_file(DEFAULT_SPEC)).unwrap()
    }

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, "t.yaml").unwrap_err())
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&base().replace("  espSize: 128MiB", "  espSize: 128MiB\n  flavour: big"));
        assert!(e.contains("t.yaml"), "{e}");
        assert!(e.contains("disk"), "{e}");
        assert!(e.contains("flavour"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&base().replace("removeLogs: true", "removeLogs: often"));
        assert!(e.contains("hygiene.removeLogs"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = err(&base().replace("size: 3GiB", "size: 3GB"));
        assert!(e.contains("disk.size") && e.contains("GB"), "{e}");
        let e = err(&base().replace("size: 3GiB", "size: 2500MiB"));
        assert!(e.contains("disk.size") && e.contains("gcp"), "{e}");
        let e = err(&base().replace("outputs: [raw,", "outputs: [raw, iso,"));
        assert!(e.contains("outputs") && e.contains("iso"), "{e}");
        let e = err(&base().replace("mirror: debian-security", "mirror: elsewhere"));
        assert!(
            e.contains("sources[1].mirror") && e.contains("elsewhere"),
            "{e}"
        );
        let e = err(&base().replace("  - sudo\n", "  - Sudo!\n"));
        assert!(e.contains("packages[") && e.contains("Sudo!"), "{e}");
        let e = err(&base().replace("stream: \"12\"", "stream: twelve"));
        assert!(e.contains("os.stream") && e.contains("twelve"), "{e}");
    }

    #[test]
    fn bootpatch_defaults_are_checked_by_the_node_parser() {
        let text = base().replace("lockWaitTimeout: 10m", "lockWaitTimeout: soon");
        let spec = parse(&text, "t.yaml").unwrap();
        let e = format!("{:#}", bootpatch_config(&spec, "t.yaml").unwrap_err());
        assert!(e.contains("t.yaml") && e.contains("lockWaitTimeout"), "{e}");
        let text = base().replace("patchOnBoot: true", "patchOnBoot: true\n  colour: blue");
        let spec = parse(&text, "t.yaml").unwrap();
        let e = format!("{:#}", bootpatch_config(&spec, "t.yaml").unwrap_err());
        assert!(e.contains("colour"), "{e}");
    }

    #[test]
    fn boot_loaders_are_checked() {
        let sd = base().replace("loader: grub", "loader: systemd-boot");
        let spec = parse(&sd, "t.yaml").unwrap();
        assert!(!spec.boot.secure_boot());
        let e = err(&sd.replace(
            "  loader: systemd-boot\n",
            "  loader: systemd-boot\n  secureBoot: true\n",
        ));
        assert!(e.contains("t.yaml") && e.contains("boot.secureBoot"), "{e}");
        assert!(e.contains("systemd-boot") && e.contains("unsigned"), "{e}");
        let spec = parse(&base(), "t.yaml").unwrap();
        assert_eq!(spec.boot.loader, Loader::Grub);
        assert!(spec.boot.secure_boot());
        // GRUB's ESP needs 32 MiB; systemd-boot's holds the kernel too.
        let e = err(&base().replace("espSize: 128MiB", "espSize: 16MiB"));
        assert!(e.contains("disk.espSize") && e.contains("32MiB"), "{e}");
        assert!(e.contains("shim"), "{e}");
        parse(
            &base().replace("espSize: 128MiB", "espSize: 32MiB"),
            "t.yaml",
        )
        .unwrap();
        let e = err(&sd.replace("espSize: 128MiB", "espSize: 32MiB"));
        assert!(e.contains("disk.espSize") && e.contains("64MiB"), "{e}");
        let e = err(&base().replace("loader: grub", "loader: lilo"));
        assert!(e.contains("boot.loader") && e.contains("lilo"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("3GiB").unwrap().0, 3 * GIB);
        assert_eq!(ByteSize::parse("128MiB").unwrap().0, 128 * MIB);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        assert!(ByteSize::parse("3 GB").is_err());
        assert!(ByteSize::parse("lots").is_err());
    }
}
