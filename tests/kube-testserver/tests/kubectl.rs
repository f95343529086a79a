//! The real `kubectl` is the judge: each test starts a server, seeds a small cluster through
//! the library, runs kubectl against it and checks the outcome a real cluster would give
//! (exit codes, refusal messages, which pods were evicted, refused or recreated elsewhere).

mod common;

use common::Cluster;
use kube_testserver::resources::{CONFIGMAPS, NODES, PDBS, PODS};
use kube_testserver::store::{DeleteOpts, PatchType};
use kube_testserver::util;
use kube_testserver::{fixtures, Options, TestServer};
use serde_json::{json, Value};
use std::time::Duration;

fn set_unschedulable(c: &Cluster, node: &str, on: bool) {
    let patch = if on {
        json!({"spec": {"unschedulable": true}})
    } else {
        json!({"spec": {"unschedulable": null}})
    };
    c.server
        .with_store(|s| s.patch(&NODES, "", node, PatchType::Merge, &patch, false, false))
        .expect("patching node");
}

/// Seeds a Deployment whose pods all land on `node` (the other nodes are cordoned meanwhile).
fn deployment_on(c: &Cluster, deployment: Value, node: &str, nodes: &[String]) {
    let name = util::str_at(&deployment, "metadata.name").to_string();
    let replicas = deployment["spec"]["replicas"].as_i64().unwrap();
    for n in nodes.iter().filter(|n| *n != node) {
        set_unschedulable(c, n, true);
    }
    c.server.apply(deployment).expect("creating deployment");
    c.wait_ready(&name, replicas as usize);
    for n in nodes.iter().filter(|n| *n != node) {
        set_unschedulable(c, n, false);
    }
    assert!(c.live_pods(&name).iter().all(|(_, n, _)| n == node));
}

fn pod_names(pods: &[(String, String, String)]) -> Vec<String> {
    pods.iter().map(|p| p.0.clone()).collect()
}

#[test]
fn get_wide_cordon_uncordon_annotate_label_create_configmap() {
    let c = Cluster::start();
    c.server.add_nodes("node", 2);
    c.server
        .apply(fixtures::pod("default", "solo", "node-1"))
        .unwrap();

    let o = c.kubectl(&["get", "nodes", "-o", "wide"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("INTERNAL-IP") && o.stdout.contains("KERNEL-VERSION"));
    assert!(o
        .stdout
        .lines()
        .any(|l| l.starts_with("node-1") && l.contains(" Ready ")));

    let o = c.kubectl(&["get", "pods", "-A", "-o", "wide"]);
    assert_eq!(o.code, 0);
    let line = o.stdout.lines().find(|l| l.contains("solo")).unwrap();
    assert!(line.starts_with("default") && line.contains("Running") && line.contains("node-1"));

    let o = c.kubectl(&["cordon", "node-1"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "node/node-1 cordoned"));
    let node = c.server.get(&NODES, "", "node-1").unwrap();
    assert_eq!(node["spec"]["unschedulable"], json!(true));
    let o = c.kubectl(&["get", "nodes"]);
    assert!(o.stdout.contains("Ready,SchedulingDisabled"));
    let o = c.kubectl(&["cordon", "node-1"]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "node/node-1 already cordoned")
    );

    let o = c.kubectl(&["uncordon", "node-1"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "node/node-1 uncordoned"));
    let node = c.server.get(&NODES, "", "node-1").unwrap();
    assert!(node["spec"].get("unschedulable").is_none());

    let ann = "example.com/patched-version=12.8";
    let o = c.kubectl(&["annotate", "node", "node-1", ann]);
    assert_eq!((o.code, o.stdout.trim()), (0, "node/node-1 annotated"));
    let o = c.kubectl(&[
        "annotate",
        "node",
        "node-1",
        "example.com/patched-version=12.9",
    ]);
    assert_ne!(o.code, 0, "annotate without --overwrite must refuse");
    assert!(o.stderr.contains("--overwrite is false"), "{}", o.stderr);
    let o = c.kubectl(&[
        "annotate",
        "--overwrite",
        "node",
        "node-1",
        "example.com/patched-version=12.9",
    ]);
    assert_eq!(o.code, 0);
    let node = c.server.get(&NODES, "", "node-1").unwrap();
    assert_eq!(
        node["metadata"]["annotations"]["example.com/patched-version"],
        json!("12.9")
    );
    let o = c.kubectl(&["annotate", "node", "node-1", "example.com/patched-version-"]);
    assert_eq!(o.code, 0);
    let node = c.server.get(&NODES, "", "node-1").unwrap();
    assert!(node["metadata"]["annotations"]
        .get("example.com/patched-version")
        .is_none());

    let o = c.kubectl(&["label", "node", "node-1", "pool=blue"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "node/node-1 labeled"));
    let o = c.kubectl(&["get", "nodes", "-l", "pool=blue", "-o", "name"]);
    assert_eq!(o.stdout.trim(), "node/node-1");
    let o = c.kubectl(&["label", "pod", "solo", "tier=x"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "pod/solo labeled"));
    let o = c.kubectl(&["get", "pods", "-l", "tier=x", "-o", "name"]);
    assert_eq!(o.stdout.trim(), "pod/solo");
    let o = c.kubectl(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        "spec.nodeName=node-1",
        "-o",
        "name",
    ]);
    assert_eq!(o.stdout.trim(), "pod/solo");

    let o = c.kubectl(&[
        "create",
        "configmap",
        "drain-policy",
        "-n",
        "kube-system",
        "--from-literal=drain={\"timeout\":0}",
    ]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "configmap/drain-policy created")
    );
    let cm = c
        .server
        .get(&CONFIGMAPS, "kube-system", "drain-policy")
        .unwrap();
    assert_eq!(cm["data"]["drain"], json!("{\"timeout\":0}"));
    let o = c.kubectl(&["create", "configmap", "drain-policy", "-n", "kube-system"]);
    assert_eq!(o.code, 1);
    assert!(o
        .stderr
        .contains("error: failed to create configmap: configmaps \"drain-policy\" already exists"));
    let o = c.kubectl(&[
        "get",
        "configmap",
        "drain-policy",
        "-n",
        "kube-system",
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["metadata"]["name"], json!("drain-policy"));
    let o = c.kubectl(&["delete", "configmap", "drain-policy", "-n", "kube-system"]);
    assert_eq!(o.code, 0);
    let o = c.kubectl(&["get", "configmap", "drain-policy", "-n", "kube-system"]);
    assert_eq!(o.code, 1);
    assert!(o
        .stderr
        .contains("Error from server (NotFound): configmaps \"drain-policy\" not found"));
}

const APP_YAML: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: example.invalid/web:1
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: web}
";

#[test]
fn apply_deployment_and_pdb() {
    let c = Cluster::start();
    c.server.add_nodes("node", 3);
    let file = c.dir.join("app.yaml");
    std::fs::write(&file, APP_YAML.replace("REPLICAS", "3")).unwrap();
    let f = file.to_str().unwrap();
    let o = c.kubectl(&["apply", "-f", f]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("deployment.apps/web created"));
    assert!(o.stdout.contains("poddisruptionbudget.policy/web created"));
    c.wait_deployment("default", "web", 3);
    let mut nodes: Vec<String> = c.live_pods("web").into_iter().map(|p| p.1).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3, "spread over the nodes");
    assert!(c.server.wait_until(Duration::from_secs(5), |s| {
        s.get(&PDBS, "default", "web")
            .is_ok_and(|p| p["status"]["disruptionsAllowed"] == json!(1))
    }));
    let o = c.kubectl(&["get", "pdb"]);
    assert!(o
        .stdout
        .lines()
        .any(|l| l.starts_with("web") && l.contains(" 1 ")));
    let o = c.kubectl(&["get", "deploy", "web"]);
    assert!(o.stdout.contains("3/3"), "{}", o.stdout);

    std::fs::write(&file, APP_YAML.replace("REPLICAS", "4")).unwrap();
    let o = c.kubectl(&["apply", "-f", f]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("deployment.apps/web configured"));
    // kubectl re-sends the PDB selector (its patch strategy is "replace"); the server sees an
    // identical object and changes nothing.
    let pdb = c.server.get(&PDBS, "default", "web").unwrap();
    assert_eq!(pdb["metadata"]["generation"], json!(1));
    c.wait_deployment("default", "web", 4);

    let o = c.kubectl(&["scale", "deployment/web", "--replicas=2"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "deployment.apps/web scaled"));
    c.wait_deployment("default", "web", 2);
    let o = c.kubectl(&["rollout", "status", "deployment/web", "--timeout=20s"]);
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("successfully rolled out"));

    // The imperative forms send protobuf bodies.
    let o = c.kubectl(&[
        "create",
        "deployment",
        "api",
        "--image=example.invalid/api:1",
        "--replicas=2",
    ]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "deployment.apps/api created")
    );
    c.wait_deployment("default", "api", 2);
    let o = c.kubectl(&[
        "create",
        "pdb",
        "api",
        "--selector=app=api",
        "--min-available=50%",
    ]);
    assert_eq!(
        (o.code, o.stdout.trim()),
        (0, "poddisruptionbudget.policy/api created")
    );
    assert!(c.server.wait_until(Duration::from_secs(5), |s| {
        s.get(&PDBS, "default", "api").is_ok_and(|p| {
            p["status"]["desiredHealthy"] == json!(1)
                && p["status"]["disruptionsAllowed"] == json!(1)
        })
    }));
}

#[test]
fn drain_refuses_daemonset_pods_unless_ignored() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 3);
    c.server
        .apply(fixtures::daemonset("default", "agent"))
        .unwrap();
    c.wait_ready("agent", 3);
    deployment_on(
        &c,
        fixtures::deployment("default", "web", 2),
        "node-1",
        &nodes,
    );
    let before = c.live_pods("web");
    let agent_before = c.live_pods("agent");

    let o = c.kubectl(&["drain", "node-1", "--timeout=30s"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains(
        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/agent-"
    ));
    assert_eq!(
        c.live_pods("web"),
        before,
        "nothing is evicted after a refusal"
    );
    let node = c.server.get(&NODES, "", "node-1").unwrap();
    assert_eq!(
        node["spec"]["unschedulable"],
        json!(true),
        "drain cordons first"
    );

    let o = c.kubectl(&["drain", "node-1", "--ignore-daemonsets", "--timeout=30s"]);
    assert_eq!(o.code, 0);
    assert!(o
        .stderr
        .contains("Warning: ignoring DaemonSet-managed Pods: default/agent-"));
    assert!(o.stdout.contains("node/node-1 drained"));
    for (name, _, _) in &before {
        assert!(o.stdout.contains(&format!("pod/{name} evicted")));
    }
    c.wait_ready("web", 2);
    let after = c.live_pods("web");
    assert_eq!(after.len(), 2);
    for (name, node, uid) in &after {
        assert_ne!(node, "node-1", "migrated off the drained node");
        assert!(
            !before.iter().any(|b| &b.0 == name || &b.2 == uid),
            "new name and UID"
        );
    }
    assert_eq!(
        c.live_pods("agent"),
        agent_before,
        "DaemonSet pods are left alone"
    );
}

#[test]
fn drain_local_storage_needs_delete_emptydir_data() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 2);
    let mut d = fixtures::deployment("default", "cache", 1);
    d["spec"]["template"]["spec"]["volumes"] = json!([{"name": "tmp", "emptyDir": {}}]);
    deployment_on(&c, d, "node-1", &nodes);
    let before = c.live_pods("cache");

    let o = c.kubectl(&["drain", "node-1", "--timeout=30s"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains(&format!(
        "cannot delete Pods with local storage (use --delete-emptydir-data to override): default/{}",
        before[0].0
    )));
    assert_eq!(c.live_pods("cache"), before);

    let o = c.kubectl(&["drain", "node-1", "--delete-emptydir-data", "--timeout=30s"]);
    assert_eq!(o.code, 0);
    // kubectl's later filters drop the local-storage warning for controlled pods.
    assert!(o.stdout.contains(&format!("pod/{} evicted", before[0].0)));
    c.wait_ready("cache", 1);
    let after = c.live_pods("cache");
    assert_eq!(after[0].1, "node-2");
    assert_ne!(after[0].2, before[0].2);
}

#[test]
fn drain_unreplicated_pods_need_force() {
    let c = Cluster::start();
    c.server.add_nodes("node", 2);
    c.server
        .apply(fixtures::pod("default", "solo", "node-1"))
        .unwrap();
    c.server
        .apply(fixtures::as_mirror(fixtures::pod(
            "kube-system",
            "static-etcd",
            "node-1",
        )))
        .unwrap();

    let o = c.kubectl(&["drain", "node-1", "--timeout=30s"]);
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains(
        "cannot delete Pods that declare no controller (use --force to override): default/solo"
    ));
    assert!(c.server.get(&PODS, "default", "solo").is_some());

    let o = c.kubectl(&["drain", "node-1", "--force", "--timeout=30s"]);
    assert_eq!(o.code, 0);
    assert!(o
        .stderr
        .contains("Warning: deleting Pods that declare no controller: default/solo"));
    assert!(o.stdout.contains("pod/solo evicted"));
    assert!(
        c.server.get(&PODS, "default", "solo").is_none(),
        "gone, not recreated"
    );
    assert!(
        c.server.get(&PODS, "kube-system", "static-etcd").is_some(),
        "mirror pods are skipped"
    );
}

#[test]
fn drain_blocked_by_pdb_fails_with_its_timeout() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 3);
    deployment_on(
        &c,
        fixtures::deployment("default", "web", 2),
        "node-1",
        &nodes,
    );
    c.server
        .apply(fixtures::pdb_min_available(
            "default",
            "web",
            "web",
            json!(2),
        ))
        .unwrap();
    assert!(c.server.wait_until(Duration::from_secs(5), |s| {
        s.get(&PDBS, "default", "web").is_ok_and(|p| {
            p["status"]["disruptionsAllowed"] == json!(0)
                && p["status"]["currentHealthy"] == json!(2)
        })
    }));
    let before = c.live_pods("web");

    let o = c.kubectl_for(
        &["drain", "node-1", "--timeout=10s"],
        Duration::from_secs(40),
    );
    assert_eq!(o.code, 1);
    assert!(o.took >= Duration::from_secs(10), "{:?}", o.took);
    assert!(o.took < Duration::from_secs(25), "{:?}", o.took);
    let all = o.all();
    assert!(all.contains("Cannot evict pod as it would violate the pod's disruption budget."));
    assert!(all.contains("global timeout reached: 10s"), "{all}");
    assert!(all.contains("error: unable to drain node \"node-1\""));
    assert_eq!(c.live_pods("web"), before, "nothing evicted");
}

#[test]
fn drain_with_pdb_budget_evicts_one_at_a_time_and_retries() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 3);
    deployment_on(
        &c,
        fixtures::deployment("default", "web", 2),
        "node-1",
        &nodes,
    );
    c.server
        .apply(fixtures::pdb_max_unavailable(
            "default",
            "web",
            "web",
            json!(1),
        ))
        .unwrap();
    assert!(c.server.wait_until(Duration::from_secs(5), |s| {
        s.get(&PDBS, "default", "web")
            .is_ok_and(|p| p["status"]["disruptionsAllowed"] == json!(1))
    }));
    let before = c.live_pods("web");

    let o = c.kubectl_for(
        &["drain", "node-1", "--timeout=60s"],
        Duration::from_secs(90),
    );
    assert_eq!(o.code, 0);
    let all = o.all();
    assert!(all.contains("(will retry after 5s): Cannot evict pod as it would violate the pod's disruption budget."), "{all}");
    assert!(o.stdout.contains("node/node-1 drained"));
    c.wait_ready("web", 2);
    let after = c.live_pods("web");
    assert!(after.iter().all(|p| p.1 != "node-1"));
    assert!(pod_names(&after)
        .iter()
        .all(|n| !pod_names(&before).contains(n)));
}

#[test]
fn drain_disable_eviction_deletes_past_the_pdb() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 2);
    deployment_on(
        &c,
        fixtures::deployment("default", "web", 2),
        "node-1",
        &nodes,
    );
    c.server
        .apply(fixtures::pdb_min_available(
            "default",
            "web",
            "web",
            json!("100%"),
        ))
        .unwrap();
    assert!(c.server.wait_until(Duration::from_secs(5), |s| {
        s.get(&PDBS, "default", "web").is_ok_and(|p| {
            p["status"]["desiredHealthy"] == json!(2)
                && p["status"]["disruptionsAllowed"] == json!(0)
        })
    }));
    let before = c.live_pods("web");

    let o = c.kubectl(&["drain", "node-1", "--disable-eviction", "--timeout=30s"]);
    assert_eq!(o.code, 0);
    for (name, _, _) in &before {
        assert!(
            o.stdout.contains(&format!("pod/{name} deleted")),
            "{}",
            o.stdout
        );
    }
    assert!(!o.all().contains("disruption budget"));
    c.wait_ready("web", 2);
    assert!(c.live_pods("web").iter().all(|p| p.1 == "node-2"));
}

#[test]
fn drain_grace_period_overrides_the_pods_own() {
    let c = Cluster::start();
    let nodes = c.server.add_nodes("node", 3);
    let mut d = fixtures::deployment("default", "slow", 1);
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30);
    deployment_on(&c, d, "node-1", &nodes);

    // The pod's own 30 s grace period outlasts a 4 s drain timeout.
    let o = c.kubectl_for(
        &["drain", "node-1", "--timeout=4s"],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 1, "still terminating when the timeout hits");
    // kubectl's own words when the wait for deletion runs out of time.
    assert!(
        o.all().contains("to terminate: context deadline exceeded"),
        "{}",
        o.all()
    );
    let terminating = c
        .server
        .pods_on_node("node-1")
        .into_iter()
        .find(|p| util::str_at(p, "metadata.labels.app") == "slow")
        .unwrap();
    assert_eq!(
        terminating["metadata"]["deletionGracePeriodSeconds"],
        json!(30)
    );

    // A fresh pod on node-2, drained with --grace-period=1, is gone within seconds.
    c.wait_ready("slow", 1);
    let (_, node, _) = c.live_pods("slow").remove(0);
    let o = c.kubectl_for(
        &["drain", &node, "--grace-period=1", "--timeout=20s"],
        Duration::from_secs(40),
    );
    assert_eq!(o.code, 0);
    assert!(o.took < Duration::from_secs(10), "{:?}", o.took);
}

#[test]
fn drain_skip_wait_for_delete_timeout_skips_stuck_terminating_pods() {
    let c = Cluster::start();
    c.server.add_nodes("node", 2);
    let mut stuck = fixtures::pod("default", "stuck", "node-1");
    stuck["metadata"]["finalizers"] = json!(["example.com/hold"]);
    c.server.apply(stuck).unwrap();
    let opts = DeleteOpts {
        grace_period_seconds: Some(0),
        ..DeleteOpts::default()
    };
    c.server
        .with_store(|s| s.delete(&PODS, "default", "stuck", &opts))
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // Without the flag, kubectl waits for a pod that never goes away.
    let o = c.kubectl_for(
        &["drain", "node-1", "--force", "--timeout=5s"],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 1);
    assert!(
        o.all()
            .contains("error when waiting for pod \"stuck\" in namespace \"default\" to terminate: context deadline exceeded"),
        "{}",
        o.all()
    );

    let o = c.kubectl_for(
        &[
            "drain",
            "node-1",
            "--force",
            "--skip-wait-for-delete-timeout=1",
            "--timeout=20s",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(o.code, 0);
    assert!(o.stdout.contains("node/node-1 drained"));
    assert!(o.took < Duration::from_secs(10));
    let pod = c.server.get(&PODS, "default", "stuck").unwrap();
    assert!(util::path(&pod, "metadata.deletionTimestamp").is_some());
}

fn kubectl_with(kubeconfig: &str, dir: &std::path::Path, name: &str) -> std::process::Output {
    let path = dir.join(name);
    std::fs::write(&path, kubeconfig).unwrap();
    std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&path)
        .args(["get", "nodes", "-o", "name", "--request-timeout=10s"])
        .output()
        .expect("running kubectl")
}

/// The judge on transport security: kubectl works with the kubeconfig the server writes
/// (HTTPS, the CA inline, a token), fails with a certificate error when it trusts another
/// CA, and is refused with 401 with a token the server does not know.
#[test]
fn kubectl_needs_the_servers_ca_and_a_token() {
    let c = Cluster::start();
    c.server.add_node("node-1").unwrap();
    let text = std::fs::read_to_string(&c.kubeconfig).unwrap();
    assert!(text.contains("server: https://"), "{text}");
    let ok = kubectl_with(&text, &c.dir, "good");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "node/node-1");

    let other = TestServer::start(Options::default()).unwrap();
    let ca_line = |kc: &str| {
        kc.lines()
            .find(|l| l.contains("certificate-authority-data:"))
            .unwrap()
            .to_string()
    };
    let wrong_ca = text.replace(&ca_line(&text), &ca_line(&other.kubeconfig()));
    let o = kubectl_with(&wrong_ca, &c.dir, "wrong-ca");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    // kubectl says "Unable to connect to the server: tls: failed to verify certificate".
    assert!(
        err.contains("Unable to connect to the server")
            && err.contains("certificate signed by unknown authority"),
        "{err}"
    );

    // (A kubeconfig user with no credentials at all makes kubectl prompt for a password;
    // the server's side of "no credentials" is a token it does not know.)
    let token = c
        .server
        .issue_service_account_token("default", "gone", None);
    c.server.revoke_token(&token);
    let o = kubectl_with(&c.server.kubeconfig_for_token(&token), &c.dir, "revoked");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("You must be logged in to the server (Unauthorized)"),
        "{err}"
    );
}
