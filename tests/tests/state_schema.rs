//! The documented schema (docs/state.schema.json) and bootpatch's own state
//! types agree: a state with every field set, as bootpatch writes it, is
//! valid, and the schema refuses what bootpatch would never write.

use bootpatch::os::{Family, OsInfo};
use bootpatch::state::*;

fn full_state() -> State {
    let t = "2026-11-24T19:40:12Z".to_string();
    let mut s = State::new();
    s.os = Some(OsInfo {
        family: Family::Debian,
        id: "debian".into(),
        stream: "12".into(),
        patched_version: "12.11".into(),
        name: "Debian GNU/Linux 12 (bookworm)".into(),
    });
    s.patched_version = Some("12.11".into());
    s.last_applied_patch_time = Some(t.clone());
    s.last_package_change_time = Some(t.clone());
    s.kernel = Some("6.1.0-41-cloud-amd64".into());
    s.reboot_pending = Some(RebootPending {
        packages: vec!["linux-image-cloud-amd64".into()],
        reason: "rebootIfRequired is false".into(),
        since: t.clone(),
    });
    s.last_reboot = Some(RebootRecord {
        requested_at: t.clone(),
        boot_id: "1b2c".into(),
        packages: vec!["x".into()],
    });
    s.first_boot = Some(FirstBoot {
        result: "failed".into(),
        at: t.clone(),
        error: Some(RunError {
            kind: "mirror-unreachable".into(),
            message: "m".into(),
        }),
    });
    s.push_run(Run {
        command: "firstboot".into(),
        started_at: t.clone(),
        finished_at: t,
        result: "patched".into(),
        error: None,
        packages: vec![
            PackageChange {
                name: "a".into(),
                from: None,
                to: "2".into(),
            },
            PackageChange {
                name: "b".into(),
                from: Some("1".into()),
                to: "2".into(),
            },
        ],
        patched_version_before: Some("12.10".into()),
        patched_version_after: Some("12.11".into()),
        reboot_required: true,
        rebooted: true,
    });
    s
}

#[test]
fn what_bootpatch_writes_matches_the_documented_schema() {
    let v: serde_json::Value = serde_json::from_str(&full_state().to_json()).unwrap();
    bootpatch_e2e::assert_state_matches_schema(&v);
    bootpatch_e2e::assert_state_matches_schema(
        &serde_json::from_str(&State::new().to_json()).unwrap(),
    );
}

#[test]
fn the_schema_refuses_what_bootpatch_never_writes() {
    let good: serde_json::Value = serde_json::from_str(&full_state().to_json()).unwrap();
    for (path, bad) in [
        ("/schema_version", serde_json::json!(2)),
        ("/last_applied_patch_time", serde_json::json!("yesterday")),
        ("/history/0/result", serde_json::json!("maybe")),
        ("/first_boot/error/kind", serde_json::json!("oops")),
    ] {
        let mut v = good.clone();
        *v.pointer_mut(path).unwrap() = bad;
        let r = std::panic::catch_unwind(|| bootpatch_e2e::assert_state_matches_schema(&v));
        assert!(
            r.is_err(),
            "schema accepted {path} = {}",
            v.pointer(path).unwrap()
        );
    }
}
