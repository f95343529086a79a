//! Provider size limits at the exact boundary (limit and limit + 1 byte),
//! end to end through the renderer, and the embedded bootpatch binary: it
//! rides along only where it fits, and otherwise the error says so.

mod render_support;

use builder::render::{
    BootpatchSource, JoinCommand, Provider, RenderError, Renderer, Values, EMBEDDED_PATH,
};
use render_support::*;
use std::process::Command;

fn padded(n: usize) -> Values {
    Values {
        join_command: Some(JoinCommand::Argv(vec!["true".into(), "a".repeat(n)])),
        ..Values::default()
    }
}

#[test]
fn documents_at_the_limit_pass_and_one_byte_more_fails() {
    let r = Renderer::new();
    for provider in Provider::ALL {
        let Some((limit, _)) = provider.limit() else {
            continue;
        };
        let base = r
            .render(provider, &padded(0), &BootpatchSource::Baked)
            .unwrap()
            .len();
        let at = r
            .render(provider, &padded(limit - base), &BootpatchSource::Baked)
            .unwrap();
        assert_eq!(at.len(), limit, "{provider}");
        let err = r
            .render(provider, &padded(limit - base + 1), &BootpatchSource::Baked)
            .unwrap_err();
        match &err {
            RenderError::TooLarge {
                provider: p,
                size,
                limit: l,
                ..
            } => {
                assert_eq!((*p, *size, *l), (provider, limit + 1, limit));
            }
            other => panic!("{provider}: {other}"),
        }
        let msg = err.to_string();
        for part in [
            provider.name(),
            &(limit + 1).to_string(),
            &limit.to_string(),
            "gzip",
        ] {
            assert!(msg.contains(part), "{provider}: {msg:?} lacks {part:?}");
        }
    }
}

#[test]
fn nocloud_has_no_limit() {
    let doc = Renderer::new()
        .render(Provider::Nocloud, &padded(1 << 20), &BootpatchSource::Baked)
        .unwrap();
    assert!(doc.len() > 1 << 20);
}

/// Bytes that gzip about as well as a static Rust binary does (roughly
/// 1.2 MB to 0.5 MB).
fn fake_binary() -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut out = Vec::with_capacity(1_200_000);
    while out.len() < 1_200_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if out.len() % 4096 < 1800 {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(b"\0\0\0\0core::fmt");
        }
    }
    out
}

#[test]
fn embedding_bootpatch_is_refused_where_it_cannot_fit() {
    let bin = fake_binary();
    let bp = BootpatchSource::embed(&bin);
    let r = Renderer::new();
    for provider in Provider::ALL {
        let Some((limit, _)) = provider.limit() else {
            continue;
        };
        let err = r.render(provider, &Values::default(), &bp).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, RenderError::TooLarge { .. }), "{msg}");
        for part in [
            provider.name(),
            &limit.to_string(),
            &bin.len().to_string(),
            "--bootpatch-url",
            "baked",
        ] {
            assert!(msg.contains(part), "{provider}: {msg:?} lacks {part:?}");
        }
    }
}

#[test]
fn embedded_bootpatch_round_trips_and_is_verified_before_install() {
    let bin = fake_binary();
    let doc = Renderer::new()
        .render(
            Provider::Nocloud,
            &Values::default(),
            &BootpatchSource::embed(&bin),
        )
        .unwrap();
    let unpacked = written_file(&doc, EMBEDDED_PATH).expect("embedded entry");
    assert_eq!(unpacked, bin);
    let v = yaml(&doc);
    let entry = v["write_files"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str() == Some(EMBEDDED_PATH))
        .unwrap();
    assert_eq!(entry["encoding"].as_str(), Some("gz+b64"));
    assert_eq!(entry["permissions"].as_str(), Some("0600"));

    // The installer copies the unpacked file into place only when its sum
    // matches, and refuses a tampered one.
    let dir = tempfile::tempdir().unwrap();
    let installer = written_text(&doc, "/usr/local/lib/bootpatch/install-bootpatch");
    for (content, ok) in [(bin.clone(), true), (b"tampered".to_vec(), false)] {
        let from = dir.path().join("embedded");
        let dest = dir.path().join("bootpatch");
        let _ = std::fs::remove_file(&dest);
        std::fs::write(&from, &content).unwrap();
        let script = installer
            .replace(
                &format!("'{EMBEDDED_PATH}'"),
                &format!("'{}'", from.display()),
            )
            .replace(
                "dest=/usr/local/sbin/bootpatch",
                &format!("dest={}", dest.display()),
            )
            .replace("mkdir -p /usr/local/sbin", ":");
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert_eq!(
            out.status.success(),
            ok,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(dest.exists(), ok);
        if ok {
            assert_eq!(std::fs::read(&dest).unwrap(), bin);
        }
    }
}

#[test]
fn a_small_binary_may_ride_in_aws_user_data() {
    let bin = vec![0x7fu8; 3000];
    let doc = Renderer::new()
        .render(
            Provider::Aws,
            &Values::default(),
            &BootpatchSource::embed(&bin),
        )
        .unwrap();
    assert!(doc.len() <= 16384);
    assert_eq!(written_file(&doc, EMBEDDED_PATH).unwrap(), bin);
}

/// The real binary (`make test` sets BOOTPATCH_BIN to the output of
/// scripts/build-bootpatch): refused everywhere but NoCloud, where the
/// document still passes cloud-init's validator.
#[test]
fn real_bootpatch_binary_embeds_only_in_nocloud() {
    let Some(path) = std::env::var_os("BOOTPATCH_BIN") else {
        eprintln!("BOOTPATCH_BIN not set: the real-binary embed check did not run");
        return;
    };
    let bin = std::fs::read(&path).unwrap();
    let bp = BootpatchSource::embed(&bin);
    let r = Renderer::new();
    for provider in Provider::ALL {
        let result = r.render(provider, &Values::default(), &bp);
        if provider.limit().is_some() {
            let msg = result.unwrap_err().to_string();
            assert!(
                msg.contains(provider.name()) && msg.contains("--bootpatch-url"),
                "{msg}"
            );
        } else {
            let doc = result.unwrap();
            assert_eq!(written_file(&doc, EMBEDDED_PATH).unwrap(), bin);
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("ud.yaml");
            std::fs::write(&file, &doc).unwrap();
            cloud_init_schema(&file).unwrap();
        }
    }
}
