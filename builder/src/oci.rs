//! `builder agent-image`: the updater agent's container image as an OCI archive (an OCI image
//! layout, tarred), written without a container daemon or network: one gzip'd layer holding
//! the static agent binary, an image config with its entrypoint, a manifest, `index.json` and
//! `oci-layout`. Every blob is named by its SHA-256, and the same inputs give the same bytes
//! (fixed timestamps, no host metadata), so the digest written beside the archive identifies
//! the build. Registries, runtimes and `skopeo copy oci-archive:...` take it as it is.
//!
//! It only packs; the binary is built by `scripts/build-agent`.

use crate::cli::AgentImageArgs;
use crate::formats::tar_header;
use crate::hash::{hex, sha256_bytes};
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::path::Path;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// One file of the image's only layer.
#[derive(Debug, Clone)]
pub struct LayerFile {
    /// Path inside the image, without the leading `/`.
    pub path: String,
    pub mode: u32,
    pub bytes: Vec<u8>,
}

/// What the image is made of.
#[derive(Debug, Clone)]
pub struct Image {
    pub files: Vec<LayerFile>,
    pub entrypoint: Vec<String>,
    /// `org.opencontainers.image.ref.name` in the index (a tag).
    pub ref_name: String,
    pub labels: Vec<(String, String)>,
    /// Seconds since the epoch for every timestamp (SOURCE_DATE_EPOCH).
    pub created: u64,
}

/// The blobs and the manifest digest of a packed image.
#[derive(Debug)]
pub struct Packed {
    /// (sha256 hex, bytes) of every blob: layer, config, manifest.
    pub blobs: Vec<(String, Vec<u8>)>,
    pub index: Vec<u8>,
    /// `sha256:...` of the manifest: the image's digest.
    pub digest: String,
}

fn tar_file(out: &mut Vec<u8>, name: &str, mode: u32, bytes: &[u8], mtime: u64) -> Result<()> {
    out.extend_from_slice(&tar_header(name, bytes.len() as u64, mtime, mode, b'0')?);
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(512) * 512, 0);
    Ok(())
}

fn tar_dir(out: &mut Vec<u8>, name: &str, mtime: u64) -> Result<()> {
    out.extend_from_slice(&tar_header(name, 0, mtime, 0o755, b'5')?);
    Ok(())
}

fn tar_end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 1024]);
}

fn rfc3339(epoch: u64) -> String {
    bootpatch::time::rfc3339(epoch as i64)
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({
        "mediaType": media_type,
        "digest": format!("sha256:{}", hex(&sha256_bytes(bytes))),
        "size": bytes.len(),
    })
}

/// Builds every blob of the image in memory (the agent is a few MiB).
pub fn pack(image: &Image) -> Result<Packed> {
    let mut layer = Vec::new();
    for f in &image.files {
        tar_file(&mut layer, &f.path, f.mode, &f.bytes, image.created)?;
    }
    tar_end(&mut layer);
    let diff_id = format!("sha256:{}", hex(&sha256_bytes(&layer)));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&layer)?;
    let layer_gz = gz.finish()?;

    let created = rfc3339(image.created);
    let labels: serde_json::Map<String, Value> = image
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let config = serde_json::to_vec(&json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": image.entrypoint,
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "builder agent-image"}],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor(CONFIG_TYPE, &config),
        "layers": [descriptor(LAYER_TYPE, &layer_gz)],
        "annotations": {"org.opencontainers.image.created": created},
    }))?;
    let mut m = descriptor(MANIFEST_TYPE, &manifest);
    m["annotations"] = json!({"org.opencontainers.image.ref.name": image.ref_name});
    let digest = m["digest"].as_str().unwrap_or_default().to_string();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_TYPE,
        "manifests": [m],
    }))?;
    let blobs = [layer_gz, config, manifest]
        .into_iter()
        .map(|b| (hex(&sha256_bytes(&b)), b))
        .collect();
    Ok(Packed {
        blobs,
        index,
        digest,
    })
}

/// The OCI layout of a packed image as one tar (what `oci-archive:` names).
pub fn archive(p: &Packed, mtime: u64) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    tar_file(
        &mut out,
        "oci-layout",
        0o644,
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        mtime,
    )?;
    tar_file(&mut out, "index.json", 0o644, &p.index, mtime)?;
    tar_dir(&mut out, "blobs/", mtime)?;
    tar_dir(&mut out, "blobs/sha256/", mtime)?;
    for (sum, bytes) in &p.blobs {
        tar_file(
            &mut out,
            &format!("blobs/sha256/{sum}"),
            0o644,
            bytes,
            mtime,
        )?;
    }
    tar_end(&mut out);
    Ok(out)
}

/// Refuses anything but a statically linked x86-64 ELF executable: the image has no
/// libraries and no loader for it.
pub fn check_static_x86_64(path: &Path, bytes: &[u8]) -> Result<()> {
    let p = path.display();
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        bail!("{p} is not an ELF executable");
    }
    if bytes[4] != 2 || bytes[5] != 1 || u16::from_le_bytes([bytes[18], bytes[19]]) != 62 {
        bail!("{p} is not an x86-64 (64-bit little-endian, EM_X86_64) executable");
    }
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let (phoff, phentsize, phnum) = (
        u64_at(32) as usize,
        u16_at(54) as usize,
        u16_at(56) as usize,
    );
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > bytes.len() {
            bail!("{p}: truncated program headers");
        }
        // PT_INTERP: the binary asks for a dynamic loader.
        if u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3 {
            bail!(
                "{p} is dynamically linked (it names a program interpreter); build it with \
                 scripts/build-agent (-C target-feature=+crt-static)"
            );
        }
    }
    Ok(())
}

/// `builder agent-image --agent BIN --out FILE`.
pub fn run(a: AgentImageArgs) -> Result<i32> {
    let bin = fs::read(&a.agent).with_context(|| format!("reading {}", a.agent.display()))?;
    check_static_x86_64(&a.agent, &bin)?;
    let created = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let version = env!("CARGO_PKG_VERSION");
    let image = Image {
        files: vec![LayerFile {
            path: "bootpatch-updater".into(),
            mode: 0o755,
            bytes: bin,
        }],
        entrypoint: vec!["/bootpatch-updater".into()],
        ref_name: a.tag.clone().unwrap_or_else(|| version.to_string()),
        labels: vec![
            (
                "org.opencontainers.image.title".into(),
                "bootpatch-updater".into(),
            ),
            ("org.opencontainers.image.version".into(), version.into()),
        ],
        created,
    };
    let packed = pack(&image)?;
    let bytes = archive(&packed, created)?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Both files appear whole or not at all.
    let digest_path = a.out.with_extension("tar.digest");
    for (path, content) in [
        (&a.out, &bytes),
        (&digest_path, &format!("{}\n", packed.digest).into_bytes()),
    ] {
        let tmp = path.with_extension("partial");
        fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}  {}", packed.digest, a.out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Image {
        Image {
            files: vec![LayerFile {
                path: "agent".into(),
                mode: 0o755,
                bytes: b"#!/bin/true\n".to_vec(),
            }],
            entrypoint: vec!["/agent".into()],
            ref_name: "t".into(),
            labels: vec![],
            created: 1_767_225_600,
        }
    }

    #[test]
    fn blobs_are_named_by_their_digest_and_the_manifest_points_at_them() {
        let p = pack(&sample()).unwrap();
        for (sum, b) in &p.blobs {
            assert_eq!(*sum, hex(&sha256_bytes(b)));
        }
        let manifest: Value = serde_json::from_slice(&p.blobs[2].1).unwrap();
        assert_eq!(p.digest, format!("sha256:{}", p.blobs[2].0));
        assert_eq!(
            manifest["layers"][0]["digest"],
            format!("sha256:{}", p.blobs[0].0)
        );
        assert_eq!(
            manifest["config"]["digest"],
            format!("sha256:{}", p.blobs[1].0)
        );
        let config: Value = serde_json::from_slice(&p.blobs[1].1).unwrap();
        assert_eq!(config["config"]["Entrypoint"], json!(["/agent"]));
        assert_eq!(config["created"], "2026-01-01T00:00:00Z");
        // Same inputs, same bytes.
        assert_eq!(
            archive(&p, 0).unwrap(),
            archive(&pack(&sample()).unwrap(), 0).unwrap()
        );
    }

    #[test]
    fn only_static_x86_64_executables_are_taken() {
        let p = Path::new("x");
        assert!(check_static_x86_64(p, b"#!/bin/sh\n").is_err());
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[18] = 62;
        elf[32] = 64; // e_phoff
        elf[54] = 56; // e_phentsize
        elf[56] = 1; // e_phnum
        elf[64] = 1; // PT_LOAD
        check_static_x86_64(p, &elf).unwrap();
        elf[64] = 3; // PT_INTERP
        let e = check_static_x86_64(p, &elf).unwrap_err().to_string();
        assert!(e.contains("dynamically linked"), "{e}");
        elf[18] = 183; // aarch64
        let e = check_static_x86_64(p, &elf).unwrap_err().to_string();
        assert!(e.contains("not an x86-64"), "{e}");
    }
}
