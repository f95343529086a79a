//! The long watches behind the agent's snapshots (`kube_util::spawn_watch`) against the test
//! API server: a resourceVersion the server no longer has is answered with 410 Gone, either as
//! an `ERROR` event on an open watch or as the HTTP status of the watch request itself (real
//! apiservers do both). Either way the watch must relist and go on seeing changes, not retry
//! the same resourceVersion forever; and an idle watch costs one request per timeout.

mod common;

use common::Cluster;
use k8s_openapi::api::core::v1::ConfigMap;
use kube_testserver::{Options, WatchGone};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use updater::kube_util::{spawn_watch, Snapshot};

fn configmap(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}})
}

/// Waits (at most `limit`) until the snapshot shows `watched` with `v` = `want`.
async fn wait_for(
    rx: &mut watch::Receiver<Option<Snapshot<ConfigMap>>>,
    want: &str,
    limit: Duration,
) -> bool {
    let seen = |rx: &watch::Receiver<Option<Snapshot<ConfigMap>>>| {
        rx.borrow().as_ref().is_some_and(|s| {
            s.get("watched")
                .and_then(|c| c.data.as_ref())
                .and_then(|d| d.get("v"))
                .is_some_and(|v| v == want)
        })
    };
    tokio::time::timeout(limit, async {
        while !seen(rx) {
            if rx.changed().await.is_err() {
                return false;
            }
        }
        true
    })
    .await
    .unwrap_or(false)
}

async fn relists_when_its_resource_version_is_gone(mode: WatchGone) {
    let c = Cluster::start_with(Options {
        // A short history and no bookmarks: the watch's resourceVersion stays where its last
        // event left it while other changes push the history past it.
        history_size: 5,
        bookmark_interval: Duration::from_secs(3600),
        watch_gone: mode,
        ..Options::default()
    });
    c.server.apply(configmap("watched", "1")).unwrap();
    let kube = c.kube();
    let timeout = Duration::from_secs(1);
    let (mut rx, _watch) = spawn_watch::<ConfigMap>(
        kube.client.clone(),
        Some("default".into()),
        Some("metadata.name=watched".into()),
        None,
        timeout,
    );
    assert!(
        wait_for(&mut rx, "1", Duration::from_secs(10)).await,
        "{mode:?}: first list"
    );

    // Changes the watch does not see move the history past its resourceVersion; when the
    // watch times out, resuming from that resourceVersion is refused with 410.
    for i in 0..20 {
        c.server
            .apply(configmap(&format!("other-{i}"), "x"))
            .unwrap();
    }
    tokio::time::sleep(timeout * 2).await;
    let admin = kube::Api::<ConfigMap>::namespaced(c.kube().client, "default");
    admin
        .patch(
            "watched",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"data": {"v": "2"}})),
        )
        .await
        .unwrap();
    assert!(
        wait_for(&mut rx, "2", Duration::from_secs(10)).await,
        "{mode:?}: the watch did not relist after 410 Gone and missed a later change \
         ({} requests so far)",
        kube.requests.load(Ordering::Relaxed)
    );

    // Idle: one watch request per timeout, no retry loop.
    let before = kube.requests.load(Ordering::Relaxed);
    let idle = Instant::now();
    tokio::time::sleep(timeout * 4).await;
    let spent = kube.requests.load(Ordering::Relaxed) - before;
    let bound = idle.elapsed().as_secs_f64() / timeout.as_secs_f64() + 2.0;
    assert!(
        (spent as f64) <= bound,
        "{mode:?}: {spent} requests in {:?} of idleness (at most {bound:.0})",
        idle.elapsed()
    );
}

#[tokio::test]
async fn relists_after_a_410_error_event() {
    relists_when_its_resource_version_is_gone(WatchGone::ErrorEvent).await;
}

#[tokio::test]
async fn relists_after_an_http_410() {
    relists_when_its_resource_version_is_gone(WatchGone::HttpStatus).await;
}
