//! `builder seed`: a NoCloud `cidata` volume holding `user-data`, `meta-data`
//! and optionally `network-config`, as ISO 9660 (xorriso, else genisoimage)
//! or, when the output name ends in `.img`, `.vfat` or `.fat`, as a FAT file
//! system (mkfs.vfat + mtools). Without `--meta-data` it writes one with an
//! `instance-id` derived from the content, so the same seed always means the
//! same instance and a changed seed a new one. It only packs files: it never
//! checks or changes their content.

use crate::cli::SeedArgs;
use anyhow::{bail, Context as _};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The volume label cloud-init's NoCloud data source looks for.
pub const LABEL: &str = "cidata";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedFormat {
    Iso,
    Vfat,
}

impl SeedFormat {
    pub fn for_path(path: &Path) -> SeedFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some("img" | "vfat" | "fat") => SeedFormat::Vfat,
            _ => SeedFormat::Iso,
        }
    }
}

/// What goes on the volume.
#[derive(Debug, Clone)]
pub struct SeedFiles {
    pub user_data: Vec<u8>,
    pub meta_data: Vec<u8>,
    pub network_config: Option<Vec<u8>>,
}

/// `meta-data` with an instance-id derived from the user-data and the
/// network config.
pub fn generated_meta_data(user_data: &[u8], network_config: Option<&[u8]>) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(b"user-data\0");
    h.update(user_data);
    if let Some(n) = network_config {
        h.update(b"\0network-config\0");
        h.update(n);
    }
    let digest = h.finalize();
    let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("instance-id: iid-bootpatch-{id}\n").into_bytes()
}

/// Runs a command; on failure the error holds the whole command line and
/// its stderr.
fn cmd_output(cmd: &mut Command) -> anyhow::Result<Output> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| {
        format!("running {line} (is it installed? see scripts/deps/templates.sh)")
    })?;
    if !out.status.success() {
        bail!(
            "{line} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Writes the files to a fresh directory, named as NoCloud wants them.
fn stage(files: &SeedFiles, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    let mut put = |name: &str, data: &[u8]| -> anyhow::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
        paths.push(p);
        Ok(())
    };
    put("user-data", &files.user_data)?;
    put("meta-data", &files.meta_data)?;
    if let Some(n) = &files.network_config {
        put("network-config", n)?;
    }
    Ok(paths)
}

/// ISO 9660 with Rock Ridge and Joliet, so the file names keep their case
/// and dashes however the guest reads them.
fn make_iso(paths: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut cmd = if have("xorriso") {
        let mut c = Command::new("xorriso");
        c.args(["-as", "mkisofs"]);
        c
    } else if have("genisoimage") {
        Command::new("genisoimage")
    } else {
        bail!("making an ISO 9660 seed needs xorriso or genisoimage (scripts/deps/templates.sh installs them)");
    };
    cmd.arg("-quiet")
        .arg("-output")
        .arg(out)
        .args(["-volid", LABEL, "-joliet", "-rock"])
        .args(paths);
    cmd_output(&mut cmd)?;
    Ok(())
}

/// FAT volume sized to the content with room for the file system itself.
fn make_vfat(paths: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let content: u64 = paths
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let kib = (content / 1024 + 1024).max(2048);
    let _ = std::fs::remove_file(out);
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    file.set_len(kib * 1024)
        .with_context(|| format!("sizing {}", out.display()))?;
    drop(file);
    // FAT labels are upper case; cloud-init looks for CIDATA as well as cidata.
    cmd_output(
        Command::new("mkfs.vfat")
            .args(["-n", &LABEL.to_ascii_uppercase()])
            .arg(out),
    )?;
    for p in paths {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("staged names are ASCII");
        cmd_output(
            Command::new("mcopy")
                .arg("-i")
                .arg(out)
                .arg(p)
                .arg(format!("::{name}")),
        )?;
    }
    Ok(())
}

/// Makes the seed volume at `out`.
pub fn make_seed(files: &SeedFiles, out: &Path, format: SeedFormat) -> anyhow::Result<()> {
    let dir = tempdir_near(out)?;
    let result = (|| {
        let paths = stage(files, &dir)?;
        let tmp_out = dir.join("volume");
        match format {
            SeedFormat::Iso => make_iso(&paths, &tmp_out)?,
            SeedFormat::Vfat => make_vfat(&paths, &tmp_out)?,
        }
        std::fs::rename(&tmp_out, out)
            .or_else(|_| std::fs::copy(&tmp_out, out).map(|_| ()))
            .with_context(|| format!("writing {}", out.display()))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A private scratch directory next to the output (same file system, so the
/// finished volume is renamed into place).
fn tempdir_near(out: &Path) -> anyhow::Result<PathBuf> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    for n in 0..1000u32 {
        let d = parent.join(format!(".seed-{}-{n}", std::process::id()));
        match std::fs::create_dir(&d) {
            Ok(()) => return Ok(d),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", d.display())),
        }
    }
    bail!("no free scratch directory name in {}", parent.display())
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub fn run(args: SeedArgs) -> anyhow::Result<i32> {
    let user_data = read(&args.user_data)?;
    let network_config = args.network_config.as_deref().map(read).transpose()?;
    let meta_data = match &args.meta_data {
        Some(p) => read(p)?,
        None => generated_meta_data(&user_data, network_config.as_deref()),
    };
    let files = SeedFiles {
        user_data,
        meta_data,
        network_config,
    };
    let format = SeedFormat::for_path(&args.out);
    make_seed(&files, &args.out, format)
        .with_context(|| format!("making the seed volume {}", args.out.display()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_follows_content() {
        let a = generated_meta_data(b"#cloud-config\n", None);
        let b = generated_meta_data(b"#cloud-config\n", None);
        let c = generated_meta_data(b"#cloud-config\n", Some(b"version: 2\n"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let text = String::from_utf8(a).unwrap();
        assert!(text.starts_with("instance-id: iid-bootpatch-"), "{text}");
        assert_eq!(
            text.trim_end().len(),
            "instance-id: iid-bootpatch-".len() + 16
        );
    }

    #[test]
    fn format_from_name() {
        assert_eq!(SeedFormat::for_path(Path::new("seed.iso")), SeedFormat::Iso);
        assert_eq!(
            SeedFormat::for_path(Path::new("seed.img")),
            SeedFormat::Vfat
        );
        assert_eq!(SeedFormat::for_path(Path::new("seed")), SeedFormat::Iso);
    }
}
