//! API semantics over real HTTP, as kube-rs would use them: Status errors, optimistic
//! concurrency, the three patch formats, selectors, watches (resume, bookmarks, timeout, 410),
//! graceful deletion, eviction with PodDisruptionBudgets, and the controllers.

use kube_testserver::resources::{DAEMONSETS, NODES, PDBS, PODS};
use kube_testserver::{controllers, fixtures, util, Options, TestServer};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start() -> TestServer {
    TestServer::start(Options {
        pod_start_delay: Duration::from_millis(200),
        bookmark_interval: Duration::from_millis(300),
        history_size: 200,
        ..Options::default()
    })
    .expect("starting server")
}

/// A TLS connection to the server that trusts exactly its CA.
type Conn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(s: &TestServer) -> Conn {
    let tcp = TcpStream::connect(s.addr()).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            s.ca_der().expect("an HTTPS server").to_vec(),
        ))
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// One HTTP/1.1 request with `Connection: close`, as the admin; returns status and parsed
/// JSON body.
fn call(s: &TestServer, method: &str, path: &str, ct: &str, body: &Value) -> (u16, Value) {
    call_as(s, Some(s.admin_token()), method, path, ct, body)
}

fn call_as(
    s: &TestServer,
    token: Option<&str>,
    method: &str,
    path: &str,
    ct: &str,
    body: &Value,
) -> (u16, Value) {
    let mut stream = connect(s);
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Accept: application/json\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    let mut r = BufReader::new(stream);
    let (code, chunked) = read_head(&mut r);
    let mut raw = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            raw.extend(c);
        }
    } else {
        r.read_to_end(&mut raw).unwrap();
    }
    (code, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

fn get(s: &TestServer, path: &str) -> (u16, Value) {
    call(s, "GET", path, "application/json", &Value::Null)
}

fn read_head(r: &mut BufReader<Conn>) -> (u16, bool) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let code = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if line
            .to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
    }
    (code, chunked)
}

fn read_chunk(r: &mut BufReader<Conn>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(line.trim(), 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

/// A streaming watch: yields events one by one, each within a timeout.
struct Watch {
    r: BufReader<Conn>,
    pending: Vec<u8>,
}

impl Watch {
    fn open(s: &TestServer, path: &str) -> Self {
        let mut stream = connect(s);
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\r\n",
            s.admin_token()
        )
        .unwrap();
        let mut r = BufReader::new(stream);
        let (code, chunked) = read_head(&mut r);
        assert_eq!((code, chunked), (200, true));
        Self {
            r,
            pending: Vec::new(),
        }
    }

    /// The next event, or None when the stream ends.
    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).expect("event JSON"));
            }
            let chunk = read_chunk(&mut self.r)?;
            self.pending.extend(chunk);
        }
    }

    /// The next event that is not a bookmark.
    fn next_event(&mut self) -> Option<Value> {
        loop {
            let e = self.next()?;
            if e["type"] != "BOOKMARK" {
                return Some(e);
            }
        }
    }
}

fn rv(v: &Value) -> u64 {
    util::str_at(v, "metadata.resourceVersion").parse().unwrap()
}

#[test]
fn crud_conflicts_and_status_errors() {
    let s = start();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "policy"}, "data": {"drain": "{}"}});
    let (code, created) = call(
        &s,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &cm,
    );
    assert_eq!(code, 201);
    assert!(!util::str_at(&created, "metadata.uid").is_empty());
    let (code, dup) = call(
        &s,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &cm,
    );
    assert_eq!(code, 409);
    assert_eq!(dup["reason"], "AlreadyExists");
    assert_eq!(dup["kind"], "Status");

    let mut stale = created.clone();
    stale["data"]["drain"] = json!("{\"force\":true}");
    let (code, updated) = call(
        &s,
        "PUT",
        "/api/v1/namespaces/default/configmaps/policy",
        "application/json",
        &stale,
    );
    assert_eq!(code, 200);
    assert!(rv(&updated) > rv(&created));
    // The same old resourceVersion again is now stale.
    let (code, conflict) = call(
        &s,
        "PUT",
        "/api/v1/namespaces/default/configmaps/policy",
        "application/json",
        &stale,
    );
    assert_eq!(code, 409);
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(
        conflict["message"],
        "Operation cannot be fulfilled on configmaps \"policy\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let (code, missing) = get(&s, "/api/v1/namespaces/default/configmaps/nope");
    assert_eq!(code, 404);
    assert_eq!(missing["reason"], "NotFound");
    assert_eq!(missing["message"], "configmaps \"nope\" not found");
    assert_eq!(missing["details"]["name"], "nope");
    let (code, no_ns) = call(
        &s,
        "POST",
        "/api/v1/namespaces/ghost/configmaps",
        "application/json",
        &cm,
    );
    assert_eq!(
        (code, no_ns["message"].as_str().unwrap()),
        (404, "namespaces \"ghost\" not found")
    );
    let (code, _) = get(&s, "/apis/apps/v1/namespaces/default/statefulsets");
    assert_eq!(code, 404);

    // A cluster-wide increasing resourceVersion across types.
    let node = s.add_node("n1").unwrap();
    assert!(rv(&node) > rv(&updated));
    let (_, list) = get(&s, "/api/v1/nodes");
    assert!(rv(&list) >= rv(&node));
    assert_eq!(list["kind"], "NodeList");

    let (code, del) = call(
        &s,
        "DELETE",
        "/api/v1/namespaces/default/configmaps/policy",
        "application/json",
        &Value::Null,
    );
    assert_eq!((code, del["status"].as_str()), (200, Some("Success")));
}

#[test]
fn patch_formats() {
    let s = start();
    s.add_node("n1").unwrap();
    s.apply(fixtures::pod("default", "p", "n1")).unwrap();
    let path = "/api/v1/namespaces/default/pods/p";

    let (code, v) = call(
        &s,
        "PATCH",
        path,
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"tier": "web"}}}),
    );
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["labels"]["tier"], "web");

    let (code, v) = call(
        &s,
        "PATCH",
        path,
        "application/strategic-merge-patch+json",
        &json!({"spec": {"containers": [{"name": "main", "image": "registry.invalid/test:2"}]}}),
    );
    assert_eq!(code, 200);
    assert_eq!(v["spec"]["containers"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["spec"]["containers"][0]["image"],
        "registry.invalid/test:2"
    );

    let (code, v) = call(
        &s,
        "PATCH",
        path,
        "application/json-patch+json",
        &json!([{"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}},
                {"op": "test", "path": "/metadata/labels/tier", "value": "web"}]),
    );
    assert_eq!(code, 200);
    assert_eq!(v["metadata"]["annotations"]["a"], "1");
    let (code, v) = call(
        &s,
        "PATCH",
        path,
        "application/json-patch+json",
        &json!([{"op": "test", "path": "/metadata/labels/tier", "value": "db"}]),
    );
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));

    let (code, v) = call(
        &s,
        "PATCH",
        path,
        "application/merge-patch+json",
        &json!({"metadata": {"resourceVersion": "1", "labels": {"x": "y"}}}),
    );
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")));

    let (code, v) = call(&s, "PATCH", path, "text/plain", &json!({}));
    assert_eq!(
        (code, v["reason"].as_str()),
        (415, Some("UnsupportedMediaType"))
    );

    // Server-side apply bodies create, then merge.
    let cm_path = "/api/v1/namespaces/default/configmaps/applied?fieldManager=updater&force=true";
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"a": "1"}});
    let (code, _) = call(&s, "PATCH", cm_path, "application/apply-patch+yaml", &body);
    assert_eq!(code, 201);
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"}, "data": {"b": "2"}});
    let (code, v) = call(&s, "PATCH", cm_path, "application/apply-patch+yaml", &body);
    assert_eq!(
        (code, v["data"].clone()),
        (200, json!({"a": "1", "b": "2"}))
    );

    // Status is only changed through the status subresource.
    let (_, v) = call(
        &s,
        "PATCH",
        path,
        "application/merge-patch+json",
        &json!({"status": {"phase": "Failed"}}),
    );
    assert_eq!(v["status"]["phase"], "Running");
    let (_, v) = call(
        &s,
        "PATCH",
        &format!("{path}/status"),
        "application/merge-patch+json",
        &json!({"status": {"phase": "Failed"}}),
    );
    assert_eq!(v["status"]["phase"], "Failed");
}

#[test]
fn selectors_on_list() {
    let s = start();
    s.add_nodes("n", 2);
    s.apply(fixtures::pod("default", "a", "n-1")).unwrap();
    s.apply(fixtures::with_labels(
        fixtures::pod("default", "b", "n-2"),
        &[("tier", "db")],
    ))
    .unwrap();
    s.apply(fixtures::pod("kube-system", "c", "n-2")).unwrap();
    let names = |path: &str| -> Vec<String> {
        let (code, v) = get(&s, path);
        assert_eq!(code, 200, "{v}");
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| util::str_at(p, "metadata.name").to_string())
            .collect()
    };
    assert_eq!(
        names("/api/v1/pods?fieldSelector=spec.nodeName%3Dn-2"),
        ["b", "c"]
    );
    assert_eq!(
        names("/api/v1/namespaces/default/pods?fieldSelector=spec.nodeName%3Dn-2"),
        ["b"]
    );
    assert_eq!(names("/api/v1/pods?fieldSelector=metadata.name%3Da"), ["a"]);
    assert_eq!(names("/api/v1/pods?labelSelector=tier%3Ddb"), ["b"]);
    assert_eq!(names("/api/v1/pods?labelSelector=tier%20notin%20(db)&fieldSelector=metadata.namespace%3Ddefault"), ["a"]);
    assert_eq!(
        names("/api/v1/nodes?fieldSelector=metadata.name%3Dn-1"),
        ["n-1"]
    );
    // Paging.
    let (_, page) = get(&s, "/api/v1/pods?limit=2");
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    let (_, rest) = get(&s, &format!("/api/v1/pods?limit=2&continue={token}"));
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
}

#[test]
fn watch_streams_resumes_bookmarks_and_expires() {
    let s = start();
    s.add_node("n1").unwrap();
    let (_, list) = get(&s, "/api/v1/namespaces/default/pods");
    let start_rv = rv(&list);
    let mut w = Watch::open(&s, &format!(
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion={start_rv}&allowWatchBookmarks=true&timeoutSeconds=20"));
    s.apply(fixtures::pod("default", "w1", "n1")).unwrap();
    let e = w.next_event().unwrap();
    assert_eq!(
        (
            e["type"].as_str(),
            util::str_at(&e["object"], "metadata.name")
        ),
        (Some("ADDED"), "w1")
    );
    let added_rv = rv(&e["object"]);
    call(
        &s,
        "PATCH",
        "/api/v1/namespaces/default/pods/w1",
        "application/merge-patch+json",
        &json!({"metadata": {"labels": {"x": "1"}}}),
    );
    let e = w.next_event().unwrap();
    assert_eq!(e["type"], "MODIFIED");
    call(
        &s,
        "DELETE",
        "/api/v1/namespaces/default/pods/w1?gracePeriodSeconds=0",
        "application/json",
        &Value::Null,
    );
    let e = w.next_event().unwrap();
    assert_eq!(e["type"], "DELETED");
    // Bookmarks carry the latest resourceVersion.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let e = w.next().unwrap();
        if e["type"] == "BOOKMARK" {
            assert!(rv(&e["object"]) >= rv(&e["object"]));
            assert_eq!(e["object"]["kind"], "Pod");
            break;
        }
        assert!(Instant::now() < deadline, "a bookmark within 5 s");
    }

    // Resuming after the ADDED event replays the MODIFIED and DELETED events.
    let mut resumed = Watch::open(
        &s,
        &format!(
            "/api/v1/namespaces/default/pods?watch=1&resourceVersion={added_rv}&timeoutSeconds=1"
        ),
    );
    assert_eq!(resumed.next_event().unwrap()["type"], "MODIFIED");
    assert_eq!(resumed.next_event().unwrap()["type"], "DELETED");
    let t = Instant::now();
    assert!(
        resumed.next_event().is_none(),
        "timeoutSeconds ends the stream"
    );
    assert!(t.elapsed() < Duration::from_secs(5));

    // Without a resourceVersion the current state comes first as ADDED.
    s.apply(fixtures::pod("default", "w2", "n1")).unwrap();
    let mut fresh = Watch::open(
        &s,
        "/api/v1/namespaces/default/pods?watch=1&timeoutSeconds=1",
    );
    let e = fresh.next_event().unwrap();
    assert_eq!(
        (
            e["type"].as_str(),
            util::str_at(&e["object"], "metadata.name")
        ),
        (Some("ADDED"), "w2")
    );

    // Field selectors route events: a watch on another node sees nothing.
    let mut other = Watch::open(&s, &format!("/api/v1/pods?watch=1&fieldSelector=spec.nodeName%3Dn2&resourceVersion={}&timeoutSeconds=1", start_rv));
    assert!(other.next_event().is_none());

    // A resourceVersion from the future is refused, as the apiserver does.
    let mut future = Watch::open(
        &s,
        "/api/v1/namespaces/default/pods?watch=1&resourceVersion=999999999",
    );
    let e = future.next().unwrap();
    assert_eq!(
        (e["type"].as_str(), e["object"]["code"].as_i64()),
        (Some("ERROR"), Some(504))
    );

    // Far more events than the history keeps: an old resourceVersion is gone.
    for i in 0..250 {
        s.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("c{i}"), "namespace": "default"}}))
            .unwrap();
    }
    let mut gone = Watch::open(
        &s,
        &format!("/api/v1/namespaces/default/pods?watch=1&resourceVersion={start_rv}"),
    );
    let e = gone.next().unwrap();
    assert_eq!(e["type"], "ERROR");
    assert_eq!(
        (e["object"]["code"].as_i64(), e["object"]["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
    assert!(gone.next().is_none());
}

#[test]
fn a_too_old_watch_can_be_refused_with_http_410() {
    // The other way a real apiserver refuses a resourceVersion it no longer has: the request
    // itself fails with 410 Gone (the Status as its body), before any stream opens.
    let s = TestServer::start(Options {
        history_size: 5,
        watch_gone: kube_testserver::WatchGone::HttpStatus,
        ..Options::default()
    })
    .expect("starting server");
    let (_, cm) = call(
        &s,
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "first"}}),
    );
    let old_rv = cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    for i in 0..20 {
        s.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("c{i}"), "namespace": "default"}}))
            .unwrap();
    }
    let (code, v) = call(
        &s,
        "GET",
        &format!("/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={old_rv}"),
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 410, "{v}");
    assert_eq!(
        (v["kind"].as_str(), v["code"].as_i64(), v["reason"].as_str()),
        (Some("Status"), Some(410), Some("Expired"))
    );
    // A current resourceVersion still opens a watch.
    let (code, _) = call(
        &s,
        "GET",
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=1",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200);
}

#[test]
fn graceful_pod_deletion() {
    let s = start();
    s.add_node("n1").unwrap();
    let mut p = fixtures::pod("default", "slow", "n1");
    p["spec"]["terminationGracePeriodSeconds"] = json!(2);
    s.apply(p).unwrap();
    let (code, v) = call(
        &s,
        "DELETE",
        "/api/v1/namespaces/default/pods/slow",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200);
    assert!(util::path(&v, "metadata.deletionTimestamp").is_some());
    assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], 2);
    assert!(
        s.get(&PODS, "default", "slow").is_some(),
        "still there during the grace period"
    );
    assert!(s.wait_until(Duration::from_secs(6), |st| st
        .get(&PODS, "default", "slow")
        .is_err()));

    // Preconditions.
    s.apply(fixtures::pod("default", "q", "n1")).unwrap();
    let (code, v) = call(
        &s,
        "DELETE",
        "/api/v1/namespaces/default/pods/q",
        "application/json",
        &json!({"preconditions": {"uid": "not-the-uid"}}),
    );
    assert_eq!((code, v["reason"].as_str()), (409, Some("Conflict")));
}

#[test]
fn eviction_and_disruption_budgets() {
    // Replacements take 1.5 s to become Ready, so the spent budget is seen even on a busy
    // machine.
    let s = TestServer::start(Options {
        pod_start_delay: Duration::from_millis(1500),
        ..Options::default()
    })
    .unwrap();
    s.add_nodes("n", 3);
    s.apply(fixtures::deployment("default", "web", 4)).unwrap();
    assert!(s.wait_until(Duration::from_secs(10), |st| {
        st.list(&PODS, &Default::default())
            .iter()
            .filter(|p| controllers::pod_ready(p))
            .count()
            == 4
    }));
    s.apply(fixtures::pdb_min_available(
        "default",
        "half",
        "web",
        json!("50%"),
    ))
    .unwrap();
    assert!(s.wait_until(Duration::from_secs(5), |st| {
        st.get(&PDBS, "default", "half").is_ok_and(|p| {
            p["status"]["desiredHealthy"] == 2
                && p["status"]["disruptionsAllowed"] == 2
                && p["status"]["expectedPods"] == 4
        })
    }));
    // Two budgets over the same pods: the eviction API refuses.
    s.apply(fixtures::pdb_max_unavailable(
        "default",
        "quarter",
        "web",
        json!("25%"),
    ))
    .unwrap();
    assert!(s.wait_until(Duration::from_secs(5), |st| {
        st.get(&PDBS, "default", "quarter").is_ok_and(|p| {
            p["status"]["desiredHealthy"] == 3 && p["status"]["disruptionsAllowed"] == 1
        })
    }));
    let pod = s.list(&PODS, Some("default"))[0].clone();
    let name = util::str_at(&pod, "metadata.name").to_string();
    let evict = |n: &str| {
        call(
            &s,
            "POST",
            &format!("/api/v1/namespaces/default/pods/{n}/eviction"),
            "application/json",
            &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": n, "namespace": "default"}}),
        )
    };
    let (code, v) = evict(&name);
    assert_eq!(code, 500);
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("more than one PodDisruptionBudget"));

    call(
        &s,
        "DELETE",
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/half",
        "application/json",
        &Value::Null,
    );
    let (code, v) = evict(&name);
    assert_eq!((code, v["status"].as_str()), (201, Some("Success")));
    // The budget (one disruption) is spent until the replacement is Ready.
    let other = s
        .list(&PODS, Some("default"))
        .into_iter()
        .find(|p| {
            util::str_at(p, "metadata.name") != name
                && util::path(p, "metadata.deletionTimestamp").is_none()
        })
        .unwrap();
    let other_name = util::str_at(&other, "metadata.name").to_string();
    let (code, v) = evict(&other_name);
    if code == 429 {
        assert_eq!(v["reason"], "TooManyRequests");
        assert_eq!(
            v["message"],
            "Cannot evict pod as it would violate the pod's disruption budget."
        );
        assert_eq!(v["details"]["causes"][0]["reason"], "DisruptionBudget");
        assert!(v["details"]["causes"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("The disruption budget quarter needs 3 healthy pods"));
    } else {
        panic!("expected 429, got {code}: {v}");
    }
    let (code, _) = evict("ghost");
    assert_eq!(code, 404);

    // The ReplicaSet replaced the evicted pod: new name, new UID, Ready after the start delay.
    assert!(s.wait_until(Duration::from_secs(10), |st| {
        st.list(&PODS, &Default::default())
            .iter()
            .filter(|p| {
                controllers::pod_ready(p) && util::path(p, "metadata.deletionTimestamp").is_none()
            })
            .count()
            == 4
    }));
    assert!(s.wait_until(Duration::from_secs(5), |st| st
        .get(&PODS, "default", &name)
        .is_err()));
    // Then the budget allows one more.
    assert!(s.wait_until(Duration::from_secs(5), |st| {
        st.get(&PDBS, "default", "quarter")
            .is_ok_and(|p| p["status"]["disruptionsAllowed"] == 1)
    }));
    // A dry-run eviction checks but changes nothing.
    let (code, _) = call(
        &s,
        "POST",
        &format!("/api/v1/namespaces/default/pods/{other_name}/eviction?dryRun=All"),
        "application/json",
        &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": other_name}}),
    );
    assert_eq!(code, 201);
    assert!(s
        .get(&PODS, "default", &other_name)
        .is_some_and(|p| util::path(&p, "metadata.deletionTimestamp").is_none()));
    let (code, _) = evict(&other_name);
    assert_eq!(code, 201);

    // Deleting the Deployment garbage-collects its ReplicaSet and pods.
    let (code, _) = call(
        &s,
        "DELETE",
        "/apis/apps/v1/namespaces/default/deployments/web",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200);
    assert!(s.wait_until(Duration::from_secs(10), |st| st
        .list(&PODS, &Default::default())
        .is_empty()));
    assert!(s
        .list(&kube_testserver::resources::REPLICASETS, None)
        .is_empty());
}

#[test]
fn daemonsets_and_node_reboots() {
    let s = start();
    s.add_nodes("n", 2);
    s.apply(fixtures::daemonset("default", "agent")).unwrap();
    let agents = |st: &kube_testserver::Store| {
        st.list(&PODS, &Default::default())
            .iter()
            .filter(|p| {
                util::str_at(p, "metadata.labels.app") == "agent" && controllers::pod_ready(p)
            })
            .count()
    };
    assert!(s.wait_until(Duration::from_secs(10), |st| agents(st) == 2));
    s.add_node("n-3").unwrap();
    assert!(s.wait_until(Duration::from_secs(10), |st| agents(st) == 3));
    assert!(s.wait_until(Duration::from_secs(5), |st| {
        st.get(&DAEMONSETS, "default", "agent")
            .is_ok_and(|d| d["status"]["numberReady"] == 3)
    }));

    assert!(s.simulate_node_reboot("n-1", Duration::from_millis(800)));
    let node = s.get(&NODES, "", "n-1").unwrap();
    assert!(!controllers::condition_true(&node, "Ready"));
    let pod = s.pods_on_node("n-1").remove(0);
    assert!(!controllers::pod_ready(&pod));
    assert!(s.wait_until(Duration::from_secs(10), |st| {
        st.node_ready("n-1") && agents(st) == 3
    }));
    let pod = s.pods_on_node("n-1").remove(0);
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 1);
    assert!(!s.simulate_node_reboot("ghost", Duration::from_secs(1)));
}

#[test]
fn a_watch_that_falls_behind_catches_up_from_the_history() {
    let s = TestServer::start(Options {
        watch_queue: 4,
        history_size: 1000,
        ..Options::default()
    })
    .unwrap();
    let (_, list) = get(&s, "/api/v1/namespaces/default/configmaps");
    let mut w = Watch::open(
        &s,
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={}&timeoutSeconds=10",
            rv(&list)
        ),
    );
    // 100 events in one lock hold: the watch's queue of 4 overflows.
    s.with_store(|st| {
        for i in 0..100 {
            st.create(
                &kube_testserver::resources::CONFIGMAPS,
                "default",
                json!({"metadata": {"name": format!("c{i:03}")}}),
                false,
            )
            .unwrap();
        }
    });
    let mut names = Vec::new();
    while names.len() < 100 {
        let e = w.next_event().expect("events until all 100 arrived");
        assert_eq!(e["type"], "ADDED");
        names.push(util::str_at(&e["object"], "metadata.name").to_string());
    }
    let want: Vec<String> = (0..100).map(|i| format!("c{i:03}")).collect();
    assert_eq!(names, want, "every event once, in order");
}

/// Without a live token the server answers the apiserver's 401, whatever the reason; a
/// ServiceAccount token works (here for discovery, which RBAC leaves open) until it expires or
/// is revoked.
#[test]
fn requests_need_a_live_token() {
    let s = start();
    let nodes_as = |token: Option<&str>| {
        call_as(
            &s,
            token,
            "GET",
            "/api/v1",
            "application/json",
            &Value::Null,
        )
    };
    let unauthorized = |(code, body): (u16, Value)| {
        assert_eq!(code, 401, "{body}");
        assert_eq!(body["reason"], "Unauthorized", "{body}");
        assert_eq!(body["message"], "Unauthorized", "{body}");
    };
    unauthorized(nodes_as(None));
    unauthorized(nodes_as(Some("made-up")));
    let sa = s.issue_service_account_token("bootpatch-system", "bootpatch-updater", None);
    assert_eq!(nodes_as(Some(&sa)).0, 200);
    s.revoke_token(&sa);
    unauthorized(nodes_as(Some(&sa)));
    let short = s.issue_service_account_token("ns", "x", Some(Duration::from_millis(50)));
    assert_eq!(nodes_as(Some(&short)).0, 200);
    std::thread::sleep(Duration::from_millis(100));
    unauthorized(nodes_as(Some(&short)));
}

/// RBAC, judged request by request: a ServiceAccount with no bindings is refused with the
/// apiserver's 403 message; a Role bound in one namespace grants there only; a ClusterRole
/// bound cluster-wide grants everywhere, subresources only when named.
#[test]
fn rbac_decides_for_service_accounts() {
    let s = start();
    s.add_node("node-1").unwrap();
    s.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}))
        .unwrap();
    let sa = s.issue_service_account_token("team", "reader", None);
    let as_sa = |method: &str, path: &str, body: &Value| {
        call_as(&s, Some(&sa), method, path, "application/json", body)
    };
    let none = Value::Null;
    let (code, body) = as_sa("GET", "/api/v1/nodes/node-1", &none);
    assert_eq!(code, 403, "{body}");
    assert_eq!(body["reason"], "Forbidden");
    assert_eq!(
        body["message"],
        "nodes \"node-1\" is forbidden: User \"system:serviceaccount:team:reader\" cannot get \
         resource \"nodes\" in API group \"\" at the cluster scope"
    );
    // Discovery stays open to every authenticated user.
    assert_eq!(as_sa("GET", "/api/v1", &none).0, 200);

    let role = |kind: &str, ns: &str, rules: Value| {
        let mut meta = json!({"name": "reader"});
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        s.apply(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": meta, "rules": rules}),
        )
        .unwrap();
    };
    let binding = |kind: &str, ns: &str, role_kind: &str| {
        let mut meta = json!({"name": "reader"});
        if !ns.is_empty() {
            meta["namespace"] = json!(ns);
        }
        s.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": meta,
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "team"}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": "reader"}}))
            .unwrap();
    };
    role(
        "Role",
        "team",
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create"]}]),
    );
    binding("RoleBinding", "team", "Role");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    assert_eq!(
        as_sa("POST", "/api/v1/namespaces/team/configmaps", &cm).0,
        201
    );
    assert_eq!(
        as_sa("GET", "/api/v1/namespaces/team/configmaps", &none).0,
        200
    );
    let (code, body) = as_sa("GET", "/api/v1/namespaces/default/configmaps", &none);
    assert_eq!(code, 403);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .ends_with("in the namespace \"default\""),
        "{body}"
    );
    // Refused before the body is read: nothing is deleted.
    assert_eq!(
        as_sa("DELETE", "/api/v1/namespaces/team/configmaps/x", &none).0,
        403
    );
    assert!(s
        .get(&kube_testserver::resources::CONFIGMAPS, "team", "x")
        .is_some());

    role(
        "ClusterRole",
        "",
        json!([{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}]),
    );
    binding("ClusterRoleBinding", "", "ClusterRole");
    assert_eq!(as_sa("GET", "/api/v1/nodes/node-1", &none).0, 200);
    s.apply(fixtures::pod("default", "web-1", "node-1"))
        .unwrap();
    let (code, body) = as_sa(
        "POST",
        "/api/v1/namespaces/default/pods/web-1/eviction",
        &json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "web-1"}}),
    );
    assert_eq!(code, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("cannot create resource \"pods/eviction\""),
        "{body}"
    );
    assert!(s.get(&PODS, "default", "web-1").is_some(), "not evicted");
}

#[test]
fn a_watch_with_latency_trails_the_write_while_a_get_sees_it_at_once() {
    let latency = Duration::from_millis(400);
    let s = TestServer::start(Options {
        watch_latency: latency,
        ..Options::default()
    })
    .expect("starting server");
    let mut w = Watch::open(
        &s,
        "/api/v1/namespaces/default/configmaps?watch=1&timeoutSeconds=5",
    );
    let written = Instant::now();
    s.apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "late", "namespace": "default"}}))
        .unwrap();
    let (code, got) = call(
        &s,
        "GET",
        "/api/v1/namespaces/default/configmaps/late",
        "application/json",
        &Value::Null,
    );
    assert_eq!(code, 200, "{got}");
    assert!(written.elapsed() < latency, "the GET waited for the watch");
    let e = w.next_event().expect("the ADDED event");
    assert_eq!(e["type"], "ADDED");
    assert_eq!(e["object"]["metadata"]["name"], "late");
    assert!(
        written.elapsed() >= latency,
        "the event came {:?} after the write",
        written.elapsed()
    );
}
