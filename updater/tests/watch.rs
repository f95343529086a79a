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
use updater::kube_util::{spawn_watch, AbortOnDrop, Kube, Snapshot};

fn configmap(name: &str, value: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"}, "data": {"v": value}})
}

/// Waits (at most `limit`) until the snapshot shows `watched` with `v` = `want`.
async fn wait_for(rx: &mut Rx, want: &str, limit: Duration) -> bool {
    let seen = |rx: &Rx| {
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

/// The watches' timeout: short, so a test sees several re-watches.
const TIMEOUT: Duration = Duration::from_secs(1);

type Rx = watch::Receiver<Option<Snapshot<ConfigMap>>>;

/// Creates ConfigMap `watched` (v=1) and watches it alone, with its own counting client.
fn watch_one(c: &Cluster, timeout: Duration) -> (Kube, Rx, AbortOnDrop) {
    c.server.apply(configmap("watched", "1")).unwrap();
    let kube = c.kube();
    let (rx, handle) = spawn_watch::<ConfigMap>(
        kube.client.clone(),
        Some("default".into()),
        Some("metadata.name=watched".into()),
        None,
        timeout,
    );
    (kube, rx, handle)
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
    let (kube, mut rx, _watch) = watch_one(&c, TIMEOUT);
    let timeout = TIMEOUT;
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

#[tokio::test]
async fn bookmarks_keep_an_idle_watch_current_without_relisting() {
    // Churn the watch does not see, more than the history keeps, but spread out: between two
    // bookmarks far fewer changes than the history holds. Each bookmark moves the watch's
    // resourceVersion past the churn, so resuming after a timeout is never refused: no relist
    // (a relist re-sends the snapshot, even unchanged), one request per timeout.
    let c = Cluster::start_with(Options {
        history_size: 20,
        bookmark_interval: Duration::from_millis(200),
        ..Options::default()
    });
    let (kube, mut rx, _watch) = watch_one(&c, TIMEOUT);
    let timeout = TIMEOUT;
    assert!(wait_for(&mut rx, "1", Duration::from_secs(10)).await);
    rx.borrow_and_update();
    let before = kube.requests.load(Ordering::Relaxed);
    let idle = Instant::now();
    for round in 0..16 {
        for i in 0..4 {
            c.server
                .apply(configmap(&format!("other-{round}-{i}"), "x"))
                .unwrap();
        }
        tokio::time::sleep(timeout / 4).await;
    }
    assert!(
        !rx.has_changed().unwrap(),
        "the watch relisted although bookmarks kept its resourceVersion current"
    );
    let spent = kube.requests.load(Ordering::Relaxed) - before;
    let bound = idle.elapsed().as_secs_f64() / timeout.as_secs_f64() + 2.0;
    assert!(
        (spent as f64) <= bound,
        "{spent} requests in {:?} (at most {bound:.0})",
        idle.elapsed()
    );
}
