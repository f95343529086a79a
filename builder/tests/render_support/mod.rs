//! Helpers shared by the render tests: pull files back out of rendered
//! user-data, run the real validators.
#![allow(dead_code)]

use base64::Engine as _;
use std::io::Read as _;
use std::path::Path;
use std::process::Command;

pub fn yaml(doc: &str) -> serde_norway::Value {
    serde_norway::from_str(doc).unwrap_or_else(|e| panic!("user-data is not YAML: {e}\n{doc}"))
}

/// The content of the `write_files` entry for `path`, decoded.
pub fn written_file(doc: &str, path: &str) -> Option<Vec<u8>> {
    let v = yaml(doc);
    let files = v.get("write_files")?.as_sequence()?;
    let entry = files
        .iter()
        .find(|f| f.get("path").and_then(|p| p.as_str()) == Some(path))?;
    let content = entry.get("content")?.as_str()?;
    match entry.get("encoding").and_then(|e| e.as_str()) {
        None => Some(content.as_bytes().to_vec()),
        Some("gz+b64") => {
            let gz = base64::engine::general_purpose::STANDARD
                .decode(content)
                .expect("base64");
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .expect("gzip");
            Some(out)
        }
        Some(other) => panic!("unexpected encoding {other}"),
    }
}

pub fn written_text(doc: &str, path: &str) -> String {
    let bytes =
        written_file(doc, path).unwrap_or_else(|| panic!("no write_files entry {path}\n{doc}"));
    String::from_utf8(bytes).expect("utf-8")
}

pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/deps/templates.sh (as root) first"
    );
}

/// `cloud-init schema -c FILE`, Debian's real validator. Returns its output
/// on failure.
pub fn cloud_init_schema(file: &Path) -> Result<(), String> {
    require_tool("cloud-init");
    let out = Command::new("cloud-init")
        .args(["schema", "-c"])
        .arg(file)
        .output()
        .expect("running cloud-init schema");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
