//! A real kube-rs client (the updater's) against the server: typed reads of every served kind,
//! patches, optimistic concurrency, Leases, eviction with a PDB, deletion, and the runtime
//! watcher.

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Namespace, Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Client, Config};
use kube_testserver::{fixtures, Options, TestServer};
use serde_json::json;
use std::time::Duration;

async fn client(server: &TestServer) -> Client {
    let kc = Kubeconfig::from_yaml(&server.kubeconfig()).expect("parsing kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(config).expect("kube client")
}

fn start() -> TestServer {
    TestServer::start(Options {
        pod_start_delay: Duration::from_millis(200),
        ..Options::default()
    })
    .expect("starting server")
}

async fn wait<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn typed_reads_patches_and_conflicts() {
    let server = start();
    server.add_nodes("node", 2);
    server
        .apply(fixtures::deployment("default", "web", 2))
        .unwrap();
    server
        .apply(fixtures::daemonset("default", "agent"))
        .unwrap();
    server
        .apply(fixtures::pdb_max_unavailable(
            "default",
            "web",
            "web",
            json!(1),
        ))
        .unwrap();
    let c = client(&server).await;

    let nodes: Api<Node> = Api::all(c.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    wait("4 ready pods", || async {
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count()
            == 4
    })
    .await;
    let on_node1 = Api::<Pod>::all(c.clone())
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .unwrap();
    assert_eq!(on_node1.items.len(), 2);
    let web = Api::<Pod>::all(c.clone())
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 2);

    // Every served kind deserializes into its typed struct.
    let deploy: Api<Deployment> = Api::namespaced(c.clone(), "default");
    wait("deployment available", || async {
        deploy
            .get("web")
            .await
            .unwrap()
            .status
            .and_then(|s| s.available_replicas)
            == Some(2)
    })
    .await;
    Api::<ReplicaSet>::namespaced(c.clone(), "default")
        .list(&ListParams::default())
        .await
        .unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "default")
        .get("agent")
        .await
        .unwrap();
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "default");
    wait("pdb status", || async {
        pdbs.get("web")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.disruptions_allowed == 1)
    })
    .await;
    Api::<Namespace>::all(c.clone())
        .get("kube-system")
        .await
        .unwrap();

    // Patches as the updater sends them.
    let pp = PatchParams::default();
    let patched = nodes
        .patch(
            "node-1",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {"example.com/last-applied-patch-time": "2026-01-01T00:00:00Z"}}})),
        )
        .await
        .unwrap();
    assert!(patched
        .metadata
        .annotations
        .unwrap()
        .contains_key("example.com/last-applied-patch-time"));
    let cordoned = nodes
        .patch(
            "node-1",
            &pp,
            &Patch::Strategic(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    assert_eq!(cordoned.spec.unwrap().unschedulable, Some(true));
    let json_patched = nodes
        .patch(
            "node-1",
            &pp,
            &Patch::Json::<()>(
                serde_json::from_value(json!([{"op": "remove", "path": "/spec/unschedulable"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(json_patched.spec.unwrap().unschedulable, None);

    // Optimistic concurrency: replace with a stale resourceVersion is a 409.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let mut cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "policy"}, "data": {"drain": "{}"}}))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    cm.metadata.resource_version = created.metadata.resource_version.clone();
    cm.data = Some([("drain".to_string(), "{\"force\":true}".to_string())].into());
    cms.replace("policy", &PostParams::default(), &cm)
        .await
        .unwrap();
    match cms.replace("policy", &PostParams::default(), &cm).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    match cms.get("missing").await {
        Err(kube::Error::Api(e)) => assert_eq!((e.code, e.reason.as_str()), (404, "NotFound")),
        other => panic!("expected NotFound, got {other:?}"),
    }

    // Leases (the updater's cluster-wide slot) and Events.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let lease: Lease = serde_json::from_value(json!({"metadata": {"name": "bootpatch-slot"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 60}}))
    .unwrap();
    let l = leases.create(&PostParams::default(), &lease).await.unwrap();
    assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("node-1"));
    assert!(leases.create(&PostParams::default(), &lease).await.is_err());
    let ev: Event = serde_json::from_value(json!({"metadata": {"generateName": "node-1."},
        "involvedObject": {"kind": "Node", "name": "node-1"}, "reason": "Patched", "message": "ok", "type": "Normal"}))
    .unwrap();
    Api::<Event>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &ev)
        .await
        .unwrap();

    // Server-side apply creates, then updates.
    let ssa = PatchParams::apply("updater").force();
    cms.patch(
        "applied",
        &ssa,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied"}, "data": {"a": "1"}})),
    )
    .await
    .unwrap();
    let cm = cms
        .patch(
            "applied",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "applied"}, "data": {"a": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["a"], "2");
}

#[tokio::test]
async fn eviction_deletion_and_watcher() {
    let server = start();
    server.add_nodes("node", 2);
    server
        .apply(fixtures::deployment("default", "web", 2))
        .unwrap();
    server
        .apply(fixtures::pdb_min_available(
            "default",
            "web",
            "web",
            json!(2),
        ))
        .unwrap();
    let c = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(c.clone(), "default");
    wait("a spent budget over 2 healthy pods", || async {
        pdbs.get("web")
            .await
            .unwrap()
            .status
            .is_some_and(|s| s.current_healthy == 2 && s.disruptions_allowed == 0)
    })
    .await;
    let name = pods.list(&ListParams::default()).await.unwrap().items[0]
        .metadata
        .name
        .clone()
        .unwrap();
    match pods.evict(&name, &EvictParams::default()).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 429);
            assert_eq!(
                e.message,
                "Cannot evict pod as it would violate the pod's disruption budget."
            );
        }
        other => panic!("expected 429, got {other:?}"),
    }

    // The watcher sees the deletion and the replacement.
    let mut stream = watcher(pods.clone(), watcher::Config::default()).boxed();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("initial list within 10 s")
            .expect("stream open")
            .expect("initial event");
        if matches!(ev, watcher::Event::InitDone) {
            break;
        }
    }
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    let deleted = pods.delete(&name, &dp).await.unwrap();
    assert!(deleted.is_left() || deleted.is_right());
    let mut saw_delete = false;
    let mut saw_new = false;
    let end = tokio::time::Instant::now() + Duration::from_secs(15);
    while !(saw_delete && saw_new) {
        let ev = tokio::time::timeout_at(end, stream.next())
            .await
            .expect("watch events within 15 s")
            .expect("stream open")
            .expect("watch event");
        match ev {
            watcher::Event::Delete(p) if p.metadata.name.as_deref() == Some(&name) => {
                saw_delete = true
            }
            watcher::Event::Apply(p) if p.metadata.name.as_deref() != Some(&name) => {
                // The ReplicaSet's replacement: a pod created after the watch started.
                saw_new |= p.metadata.resource_version.is_some()
                    && p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            }
            _ => {}
        }
    }
}
