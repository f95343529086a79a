//! The install manifests: rendered by `kubectl ospatch manifests`, applied with the real
//! `kubectl` to the test API server, read back; the ConfigMaps parse with the agent's own
//! parsers; and the RBAC rules are exactly the verbs and resources the agents used in a run
//! (recorded request by request, with SIMULATED host actions), acting as the DaemonSet's
//! ServiceAccount under the shipped RBAC, which the test server enforces: without any one
//! rule, a request the agents sent is refused with 403.

mod common;

use common::Cluster;
use kube_testserver::fixtures;
use kube_testserver::resources::{
    CLUSTERROLES, CONFIGMAPS, DAEMONSETS, NODES, ROLES, SERVICEACCOUNTS,
};
use kube_testserver::store::PatchType;
use kube_testserver::util;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use updater::agent::{Agent, AgentOptions};
use updater::kube_util::recording_client_for_kubeconfig;
use updater::node as ann;
use updater::sim::SimulatedHost;

const NS: &str = "bootpatch-system";

fn apply_manifests(c: &Cluster) {
    let o = c.run_for(
        env!("CARGO_BIN_EXE_kubectl-ospatch"),
        &[
            "manifests",
            "--namespace",
            NS,
            "--image",
            "registry.invalid/bootpatch-updater:test",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(o.code, 0, "{o:?}");
    let path = c.dir.as_path().join("install.yaml");
    std::fs::write(&path, &o.stdout).unwrap();
    let o = c.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    assert_eq!(o.code, 0, "kubectl apply: {o:?}");
    for what in [
        "namespace/bootpatch-system",
        "priorityclass.scheduling.k8s.io/bootpatch-system-agent",
        "serviceaccount/bootpatch-updater",
        "clusterrole.rbac.authorization.k8s.io/bootpatch-updater",
        "clusterrolebinding.rbac.authorization.k8s.io/bootpatch-updater",
        "role.rbac.authorization.k8s.io/bootpatch-updater",
        "rolebinding.rbac.authorization.k8s.io/bootpatch-updater",
        "configmap/palette-agent-config",
        "configmap/bootpatch-patch-policy",
        "daemonset.apps/bootpatch-updater",
    ] {
        assert!(
            o.stdout.contains(&format!("{what} created")),
            "{what}: {}",
            o.stdout
        );
    }
}

fn data(cm: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(cm["data"].clone()).unwrap()
}

#[test]
fn rendered_manifests_apply_with_kubectl_and_hold_the_defaults() {
    let c = Cluster::start();
    c.server.add_nodes("node", 2);
    apply_manifests(&c);
    let ds = c.server.get(&DAEMONSETS, NS, "bootpatch-updater").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostPID"], json!(true));
    assert_eq!(spec["serviceAccountName"], "bootpatch-updater");
    let ctr = &spec["containers"][0];
    assert_eq!(ctr["securityContext"]["privileged"], json!(true));
    assert_eq!(ctr["volumeMounts"][0]["mountPath"], "/host");
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
    assert_eq!(
        ctr["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert!(c
        .server
        .get(&SERVICEACCOUNTS, NS, "bootpatch-updater")
        .is_some());
    let (cfg, warnings) = updater::policy::parse_agent_config(&data(
        &c.server
            .get(&CONFIGMAPS, NS, "palette-agent-config")
            .unwrap(),
    ))
    .unwrap();
    // Values that can drain a real node, which the reference page's defaults cannot (every
    // node runs DaemonSet pods); the parser's defaults stay the page's.
    let mut shipped = updater::policy::AgentConfig::default();
    assert!(!shipped.drain.ignore_daemon_sets && !shipped.drain.delete_local_data);
    shipped.drain.ignore_daemon_sets = true;
    shipped.drain.delete_local_data = true;
    shipped.drain.timeout = Duration::from_secs(600);
    assert_eq!(cfg, shipped);
    assert!(warnings.is_empty(), "{warnings:?}");
    let ns = c
        .server
        .get(&kube_testserver::resources::NAMESPACES, "", NS)
        .unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    let pc = format!("{NS}-agent");
    assert_eq!(spec["priorityClassName"], pc.as_str());
    assert!(c
        .server
        .get(&kube_testserver::resources::PRIORITYCLASSES, "", &pc)
        .is_some());
    let p = updater::policy::parse_patch_policy(&data(
        &c.server
            .get(&CONFIGMAPS, NS, "bootpatch-patch-policy")
            .unwrap(),
    ))
    .unwrap();
    assert!(p.reboot_if_required && !p.paused && p.schedule.is_none());
    // The DaemonSet runs on every node of the test server.
    assert!(c.server.wait_until(Duration::from_secs(10), |s| {
        s.list(
            &kube_testserver::resources::PODS,
            &kube_testserver::Filter::default(),
        )
        .iter()
        .filter(|p| util::str_at(p, "metadata.name").starts_with("bootpatch-updater-"))
        .count()
            == 2
    }));
}

/// (group, resource, verb) of a recorded `METHOD /path?query`.
fn rbac_of(line: &str) -> (String, String, String) {
    let (method, uri) = line.split_once(' ').unwrap();
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segs[0] {
        "api" => (String::new(), &segs[2..]),
        _ => (segs[1].to_string(), &segs[3..]),
    };
    let rest: Vec<&str> = if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest[2..].to_vec()
    } else {
        rest.to_vec()
    };
    let resource = if rest.len() >= 3 {
        format!("{}/{}", rest[0], rest[2])
    } else {
        rest[0].to_string()
    };
    let named = rest.len() >= 2;
    let verb = match method {
        "GET" if query.contains("watch=true") => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        m => panic!("unexpected method {m}"),
    };
    (group, resource, verb.to_string())
}

fn rules(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    out.insert((
                        g.as_str().unwrap().into(),
                        res.as_str().unwrap().into(),
                        v.as_str().unwrap().into(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_rules_are_exactly_what_the_agents_use() {
    let c = Arc::new(Cluster::start());
    c.server.add_nodes("node", 2);
    apply_manifests(&c);
    // Workloads: a DaemonSet (its pods make drain look up their DaemonSet) and a Deployment.
    c.server
        .apply(fixtures::daemonset("default", "node-agent"))
        .unwrap();
    c.server
        .apply(fixtures::deployment("default", "web", 2))
        .unwrap();
    let mut cm = c
        .server
        .get(&CONFIGMAPS, NS, "palette-agent-config")
        .unwrap();
    cm["data"]["drain"] = json!(r#"{"ignoreDaemonSets": true, "gracePeriod": 0}"#);
    c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "palette-agent-config", cm, false, false))
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _g = rt.enter();
    // The agents act as the DaemonSet's ServiceAccount, under the shipped RBAC only.
    let token = c
        .server
        .issue_service_account_token(NS, "bootpatch-updater", None);
    let kube = recording_client_for_kubeconfig(
        &c.server.kubeconfig_for_token(&token),
        Duration::from_secs(60),
    )
    .unwrap();
    let mut handles = Vec::new();
    let mut hosts = Vec::new();
    for n in ["node-1", "node-2"] {
        let mut o = AgentOptions::new(n);
        o.lease_duration = Duration::from_secs(3);
        o.steal_interval = Duration::from_secs(1);
        let cc = c.clone();
        let host = SimulatedHost::new(
            n,
            Duration::from_millis(1500),
            Duration::from_millis(300),
            true,
        )
        .with_reboot_hook(Arc::new(move |node, d| {
            cc.server.simulate_node_reboot(node, d);
        }));
        let host = Arc::new(host);
        hosts.push(host.clone());
        handles.push(rt.spawn(Agent::new(o, kube.clone(), host).run()));
    }
    let done = |result_count: usize| {
        c.server.wait_until(Duration::from_secs(60), |s| {
            s.list(&NODES, &kube_testserver::Filter::default())
                .iter()
                .filter(|n| {
                    n["metadata"]["annotations"][ann::LAST_RESULT] == "success"
                        && n["metadata"]["annotations"][ann::STEP] == "idle"
                })
                .count()
                == result_count
        })
    };
    let request = |node: &str| {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        c.server
            .with_store(|s| {
                s.patch(
                    &NODES,
                    "",
                    node,
                    PatchType::Merge,
                    &json!({"metadata": {"annotations": {ann::PATCH_REQUESTED: now}}}),
                    false,
                    false,
                )
            })
            .unwrap();
    };
    request("node-1");
    request("node-2");
    assert!(done(2), "both nodes patched (with eviction)");
    // Again with disableEviction: pods are deleted.
    let mut cm = c
        .server
        .get(&CONFIGMAPS, NS, "palette-agent-config")
        .unwrap();
    cm["data"]["drain"] =
        json!(r#"{"ignoreDaemonSets": true, "gracePeriod": 0, "disableEviction": true}"#);
    c.server
        .with_store(|s| s.update(&CONFIGMAPS, NS, "palette-agent-config", cm, false, false))
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for n in ["node-1", "node-2"] {
        c.server
            .with_store(|s| {
                s.patch(
                    &NODES,
                    "",
                    n,
                    PatchType::Merge,
                    &json!({"metadata": {"annotations": {ann::LAST_RESULT: "x"}}}),
                    false,
                    false,
                )
            })
            .unwrap();
    }
    // A newer point release, so that `bootpatch check` finds something and the nodes drain.
    for h in &hosts {
        h.change(|b| {
            b.version_before = "12.11".into();
            b.version_after = "12.12".into();
        });
    }
    std::thread::sleep(Duration::from_millis(1100));
    request("node-1");
    request("node-2");
    assert!(done(2), "both nodes patched (with delete)");
    for h in handles {
        h.abort();
    }
    let used: BTreeSet<(String, String, String)> = kube
        .log
        .as_ref()
        .unwrap()
        .lock()
        .unwrap()
        .iter()
        .map(|l| rbac_of(l))
        .collect();
    let mut granted = rules(
        &c.server
            .get(&CLUSTERROLES, "", "bootpatch-updater")
            .unwrap(),
    );
    granted.extend(rules(
        &c.server.get(&ROLES, NS, "bootpatch-updater").unwrap(),
    ));
    assert_eq!(
        used,
        granted,
        "used vs granted; log: {:#?}",
        kube.log.as_ref().unwrap().lock().unwrap()
    );

    // Least privilege, by behaviour: without any one granted (group, resource, verb), the
    // first request the agents sent that needed it is refused with 403.
    let log = kube.log.as_ref().unwrap().lock().unwrap().clone();
    let cluster_role = c
        .server
        .get(&CLUSTERROLES, "", "bootpatch-updater")
        .unwrap();
    let role = c.server.get(&ROLES, NS, "bootpatch-updater").unwrap();
    let without = |obj: &Value, gone: &(String, String, String)| {
        let mut o = obj.clone();
        o["rules"] = rules(obj)
            .into_iter()
            .filter(|t| t != gone)
            .map(|(g, r, v)| json!({"apiGroups": [g], "resources": [r], "verbs": [v]}))
            .collect();
        o
    };
    let put_roles = |mut cr: Value, mut r: Value| {
        // Unconditional updates: no resourceVersion to conflict on.
        for o in [&mut cr, &mut r] {
            o["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("resourceVersion");
        }
        c.server.with_store(|s| {
            s.update(&CLUSTERROLES, "", "bootpatch-updater", cr, false, false)
                .unwrap();
            s.update(&ROLES, NS, "bootpatch-updater", r, false, false)
                .unwrap();
        });
    };
    for gone in &granted {
        put_roles(without(&cluster_role, gone), without(&role, gone));
        let line = log.iter().find(|l| rbac_of(l) == *gone).unwrap();
        let (method, uri) = line.split_once(' ').unwrap();
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Vec::new())
            .unwrap();
        let answer = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), kube.client.request_text(req)).await
        });
        match answer {
            Ok(Err(kube::Error::Api(e))) => assert!(
                e.code == 403 && e.message.contains(&format!("cannot {}", gone.2)),
                "without {gone:?}, {line} should be forbidden: {e:?}"
            ),
            other => panic!("without {gone:?}, {line} should be forbidden: {other:?}"),
        }
    }
    put_roles(cluster_role, role);
}
