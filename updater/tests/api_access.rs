//! How the plugin and the agent reach the API server, against the test server over HTTPS with
//! token authentication: kubectl's flags (`--kubeconfig`, `--context`, `-n`), the server's
//! certificate checked against the cluster CA, and the errors a user meets with the wrong CA,
//! without credentials, or outside a cluster. (The in-cluster path with a projected token is
//! exercised in a VM, where /var/run/secrets can be what a pod sees.)

mod common;

use common::Cluster;
use kube_testserver::{Options, TestServer};
use std::process::Command;

fn ospatch(
    kubeconfig: &str,
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
) -> (i32, String, String) {
    let path = dir.join(name);
    std::fs::write(&path, kubeconfig).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-ospatch"))
        .env_remove("KUBECONFIG")
        .arg("--kubeconfig")
        .arg(&path)
        .args(args)
        .output()
        .expect("running kubectl-ospatch");
    eprintln!(
        "$ kubectl-ospatch {} [{}]\n{}",
        args.join(" "),
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ca_line(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find(|l| l.contains("certificate-authority-data:"))
        .expect("an HTTPS kubeconfig")
        .to_string()
}

#[test]
fn plugin_speaks_https_with_kubectls_flags() {
    let c = Cluster::start();
    c.server.add_node("node-1").unwrap();
    let good = c.server.kubeconfig();
    assert!(good.contains("server: https://"), "{good}");
    let (code, out, err) = ospatch(&good, &c.dir, "good", &["-n", "bootpatch-system", "status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("node-1")), "{out}");

    // --context picks a context other than the current one, as kubectl's does.
    let two = good
        .replace(
            "current-context: kube-testserver",
            "current-context: elsewhere",
        )
        .replace(
            "contexts:\n",
            "contexts:\n- name: elsewhere\n  context:\n    cluster: nowhere\n    user: tester\n",
        )
        .replace(
            "clusters:\n",
            "clusters:\n- name: nowhere\n  cluster:\n    server: https://127.0.0.1:1\n",
        );
    let (code, _, err) = ospatch(&two, &c.dir, "two", &["status"]);
    assert_ne!(code, 0, "the current context points nowhere");
    assert!(err.contains("https://127.0.0.1:1"), "{err}");
    let (code, out, err) = ospatch(
        &two,
        &c.dir,
        "two",
        &["--context", "kube-testserver", "status"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node-1"), "{out}");
}

#[test]
fn plugin_errors_name_the_server_and_the_cause() {
    let c = Cluster::start();
    let good = c.server.kubeconfig();
    let server = format!("https://{}", c.server.addr());

    // Another cluster's CA: the server's certificate is refused, and the error names it.
    let other = TestServer::start(Options::default()).unwrap();
    let wrong_ca = good.replace(&ca_line(&good), &ca_line(&other.kubeconfig()));
    let (code, _, err) = ospatch(&wrong_ca, &c.dir, "wrong-ca", &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains(&server), "{err}");
    assert!(
        err.contains("not signed by the CA the kubeconfig names") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // No token, a revoked one, an expired one: 401, said in words.
    let revoked = c
        .server
        .issue_service_account_token("bootpatch-system", "gone", None);
    c.server.revoke_token(&revoked);
    let expired = c.server.issue_service_account_token(
        "bootpatch-system",
        "old",
        Some(std::time::Duration::from_millis(1)),
    );
    std::thread::sleep(std::time::Duration::from_millis(10));
    for (name, token) in [
        ("none", ""),
        ("revoked", revoked.as_str()),
        ("expired", expired.as_str()),
    ] {
        let kc = c.server.kubeconfig_for_token(token);
        let (code, _, err) = ospatch(&kc, &c.dir, name, &["status"]);
        assert_eq!(code, 1, "{name}");
        assert!(
            err.contains("401 Unauthorized") && err.contains(&server),
            "{name}: {err}"
        );
    }

    // A ServiceAccount's token is accepted; what it may do is RBAC's to say: 403 until a
    // ClusterRole lets it list nodes.
    let sa = c
        .server
        .issue_service_account_token("bootpatch-system", "operator", None);
    let kc = c.server.kubeconfig_for_token(&sa);
    let (code, _, err) = ospatch(&kc, &c.dir, "sa", &["status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("403 Forbidden: RBAC does not allow this request")
            && err.contains(
                "User \"system:serviceaccount:bootpatch-system:operator\" cannot list resource \"nodes\""
            ),
        "{err}"
    );
    c.server
        .apply(
            serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole", "metadata": {"name": "node-reader"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}]}),
        )
        .unwrap();
    c.server
        .apply(serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding", "metadata": {"name": "operator-reads-nodes"},
            "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": "bootpatch-system"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "node-reader"}}))
        .unwrap();
    let (code, _, err) = ospatch(&kc, &c.dir, "sa", &["status"]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn agent_outside_a_cluster_names_the_missing_variables() {
    let o = Command::new(env!("CARGO_BIN_EXE_bootpatch-updater"))
        .args([
            "--node",
            "node-1",
            "--metrics-addr",
            "127.0.0.1:0",
            "--profiling-addr",
            "127.0.0.1:0",
        ])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env_remove("KUBECONFIG")
        .output()
        .expect("running bootpatch-updater");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set"),
        "{err}"
    );
}
