//! Scale benchmark: 1,000 nodes, 30,000 pods, 3,000 concurrent watches, then latency of get,
//! list by node, patch and eviction, and the server's memory.
//!
//! Run: `cargo bench -p kube-testserver --bench scale`
//! Sizes: KTS_BENCH_NODES (1000), KTS_BENCH_PODS (30000), KTS_BENCH_WATCHES (3000),
//! KTS_BENCH_REQUESTS (per phase, 4000), KTS_BENCH_CONCURRENCY (8).
//!
//! The server runs in a child process (this binary re-executed with KTS_BENCH_ROLE=server) so
//! its RSS is measured alone. All traffic is on 127.0.0.1; every loop is bounded and the whole
//! run stops itself after 10 minutes at most.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use kube_testserver::{fixtures, Options, TestServer};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if std::env::var("KTS_BENCH_ROLE").as_deref() == Ok("server") {
        server_role();
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(600), client_role()).await })
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("benchmark stopped after its 10 minute limit");
            std::process::exit(1);
        }
    }
}

/// The child: seed the cluster, print the port, serve until stdin closes.
fn server_role() {
    let nodes = env_num("KTS_BENCH_NODES", 1000);
    let pods = env_num("KTS_BENCH_PODS", 30_000);
    // Plain HTTP: this measures the store, watches and controllers, not TLS.
    let server = TestServer::start(Options {
        plain_http: true,
        ..Options::default()
    })
    .expect("starting server");
    let t = Instant::now();
    server.add_nodes("node", nodes);
    let namespaces = 10;
    for n in 0..namespaces {
        let ns = format!("team-{n}");
        server
            .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .expect("namespace");
        // Ten budgets per namespace, generous enough that evictions pass.
        for a in 0..10 {
            let app = format!("app-{a}");
            server
                .apply(fixtures::pdb_max_unavailable(&ns, &app, &app, json!("50%")))
                .expect("pdb");
        }
    }
    server
        .apply(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "drain-policy", "namespace": "kube-system"},
            "data": {"drain": "{}"}}))
        .expect("configmap");
    for i in 0..pods {
        let ns = format!("team-{}", i % namespaces);
        let node = format!("node-{}", i % nodes + 1);
        let mut p = fixtures::pod(&ns, &format!("pod-{i}"), &node);
        p["metadata"]["labels"]["app"] = json!(format!("app-{}", (i / namespaces) % 10));
        server.apply(p).expect("pod");
    }
    println!("PORT {}", server.addr().port());
    println!("SEEDED {:.1}", t.elapsed().as_secs_f64());
    std::io::stdout().flush().ok();
    // Serve until the parent closes our stdin (or exits).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    server.shutdown();
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn connect(port: u16) -> anyhow::Result<Sender> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn request(
    s: &mut Sender,
    method: &str,
    path: &str,
    ct: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Bytes)> {
    s.ready().await?;
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("accept", "application/json");
    if let Some(ct) = ct {
        b = b.header("content-type", ct);
    }
    let resp = s
        .send_request(b.body(Full::new(Bytes::from(body)))?)
        .await?;
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((code, bytes))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Runs `count` requests from `conc` connections; returns sorted latencies and error count.
async fn phase<F>(
    port: u16,
    count: usize,
    conc: usize,
    make: F,
) -> anyhow::Result<(Vec<Duration>, usize)>
where
    F: Fn(usize) -> (String, String, Option<String>, Vec<u8>, u16) + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let make = make.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = connect(port).await?;
            let mut lat = Vec::new();
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count {
                    break;
                }
                let (method, path, ct, body, want) = make(i);
                let t = Instant::now();
                let (code, _) = request(&mut s, &method, &path, ct.as_deref(), body).await?;
                lat.push(t.elapsed());
                if code != want {
                    errors += 1;
                }
            }
            anyhow::Ok((lat, errors))
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        all.extend(l);
        errors += e;
    }
    all.sort();
    Ok((all, errors))
}

async fn client_role() -> anyhow::Result<()> {
    let nodes = env_num("KTS_BENCH_NODES", 1000);
    let pods = env_num("KTS_BENCH_PODS", 30_000);
    let watches = env_num("KTS_BENCH_WATCHES", 3000);
    let requests = env_num("KTS_BENCH_REQUESTS", 4000);
    let conc = env_num("KTS_BENCH_CONCURRENCY", 8);
    println!(
        "kube-testserver scale benchmark: {nodes} nodes, {pods} pods, {watches} watches, {requests} requests per phase, {conc} concurrent clients"
    );
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .env("KTS_BENCH_ROLE", "server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut port = 0u16;
    let mut line = String::new();
    while out.read_line(&mut line)? > 0 {
        if let Some(p) = line.strip_prefix("PORT ") {
            port = p.trim().parse()?;
        }
        if let Some(s) = line.strip_prefix("SEEDED ") {
            println!("seeded in {} s", s.trim());
            break;
        }
        line.clear();
    }
    anyhow::ensure!(port != 0, "server did not report its port");
    let (rss, _) = rss_kib(pid);
    println!("server RSS after seeding: {} MiB", rss / 1024);

    // Watches: per node, its pods, its Node object and the drain policy ConfigMap (as the
    // updater's per-node agent would).
    let events = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let mut watch_tasks = Vec::new();
    for w in 0..watches {
        let node = format!("node-{}", w % nodes + 1);
        let path = match w / nodes {
            0 => format!("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3D{node}&resourceVersion=0&allowWatchBookmarks=true&timeoutSeconds=600"),
            1 => format!("/api/v1/nodes?watch=true&fieldSelector=metadata.name%3D{node}&allowWatchBookmarks=true&timeoutSeconds=600"),
            _ => "/api/v1/namespaces/kube-system/configmaps?watch=true&fieldSelector=metadata.name%3Ddrain-policy&allowWatchBookmarks=true&timeoutSeconds=600".to_string(),
        };
        let events = events.clone();
        watch_tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let (mut s, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = Request::builder()
                .uri(path)
                .header("host", "127.0.0.1")
                .body(Empty::new())?;
            let resp = s.send_request(req).await?;
            let mut body = resp.into_body();
            let mut carry: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(d) = frame?.into_data() {
                    carry.extend_from_slice(&d);
                    // Complete lines only; bookmarks are not counted as events.
                    let Some(last) = carry.iter().rposition(|b| *b == b'\n') else {
                        continue;
                    };
                    let n = carry[..last]
                        .split(|b| *b == b'\n')
                        .filter(|l| !l.is_empty() && !l.starts_with(b"{\"type\":\"BOOKMARK\""))
                        .count();
                    carry.drain(..=last);
                    events.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
        // Open them in bursts so the accept queue never overflows.
        if w % 200 == 199 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every watch starts with the current state as ADDED events: a node's pods, its Node, the
    // ConfigMap. Wait for all of them so they do not count later.
    let pod_watches = watches.min(nodes);
    let initial = (pods * pod_watches / nodes.max(1)
        + watches.saturating_sub(nodes).min(nodes)
        + watches.saturating_sub(2 * nodes)) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events.load(Ordering::Relaxed) < initial && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{watches} watches open in {:.1} s ({} of {initial} initial events received)",
        t.elapsed().as_secs_f64(),
        events.load(Ordering::Relaxed)
    );
    let (rss, _) = rss_kib(pid);
    println!("server RSS with watches open: {} MiB", rss / 1024);

    let ns_of = move |i: usize| format!("team-{}", i % 10);
    let mut report = Vec::new();

    let (lat, err) = phase(port, requests, conc, move |i| {
        let p = (i * 7919) % pods;
        let path = format!("/api/v1/namespaces/{}/pods/pod-{p}", ns_of(p));
        ("GET".into(), path, None, Vec::new(), 200)
    })
    .await?;
    report.push(("get pod", lat, err));

    let (lat, err) = phase(port, requests, conc, move |i| {
        let path = format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-{}",
            (i * 31) % nodes + 1
        );
        ("GET".into(), path, None, Vec::new(), 200)
    })
    .await?;
    report.push(("list pods by node", lat, err));

    let events_before_patch = events.load(Ordering::Relaxed);
    let (lat, err) = phase(port, requests, conc, move |i| {
        let p = (i * 7919 + 13) % pods;
        let path = format!("/api/v1/namespaces/{}/pods/pod-{p}", ns_of(p));
        let body =
            serde_json::to_vec(&json!({"metadata": {"annotations": {"bench/seq": i.to_string()}}}))
                .expect("json");
        (
            "PATCH".into(),
            path,
            Some("application/merge-patch+json".into()),
            body,
            200,
        )
    })
    .await?;
    report.push(("patch pod (merge)", lat, err));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let patch_events = events.load(Ordering::Relaxed) - events_before_patch;

    // Evict distinct pods (every pod index once at most).
    let evictions = requests.min(pods / 2);
    let (lat, err) = phase(port, evictions, conc, move |i| {
        let p = (i * 2 + 1) % pods;
        let ns = ns_of(p);
        let path = format!("/api/v1/namespaces/{ns}/pods/pod-{p}/eviction");
        let body = serde_json::to_vec(&json!({"apiVersion": "policy/v1", "kind": "Eviction",
            "metadata": {"name": format!("pod-{p}"), "namespace": ns}}))
        .expect("json");
        (
            "POST".into(),
            path,
            Some("application/json".into()),
            body,
            201,
        )
    })
    .await?;
    report.push(("evict pod", lat, err));

    let (rss, hwm) = rss_kib(pid);
    println!();
    println!(
        "{:<20} {:>8} {:>10} {:>10} {:>10} {:>8}",
        "operation", "count", "p50 ms", "p99 ms", "max ms", "errors"
    );
    for (name, lat, err) in &report {
        println!(
            "{:<20} {:>8} {:>10.3} {:>10.3} {:>10.3} {:>8}",
            name,
            lat.len(),
            percentile(lat, 0.50).as_secs_f64() * 1e3,
            percentile(lat, 0.99).as_secs_f64() * 1e3,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            err
        );
    }
    println!();
    println!(
        "watch events (bookmarks excluded) delivered during the patch phase: {patch_events} (patches: {requests}; each patched pod is watched by exactly one per-node watch)"
    );
    println!(
        "server RSS at the end: {} MiB, peak (VmHWM): {} MiB",
        rss / 1024,
        hwm / 1024
    );
    let open = watch_tasks.iter().filter(|t| !t.is_finished()).count();
    println!("watches still open at the end: {open}/{watches}");

    for t in &watch_tasks {
        t.abort();
    }
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(())
}
