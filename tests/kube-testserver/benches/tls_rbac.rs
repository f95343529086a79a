//! What HTTPS and RBAC cost: p50/p99 latency of a node GET and of a pod eviction, as the agent
//! makes them (kube-rs, one keep-alive connection, one request at a time), against two servers
//! in the same run: one over HTTPS with authentication and RBAC on, the client a ServiceAccount
//! bound to a ClusterRole that allows exactly these requests; one over plain HTTP without
//! either (the scale benchmark's mode). The phases alternate between the two servers so that
//! the machine's load falls on both alike.
//!
//! Run: `cargo bench -p kube-testserver --bench tls_rbac`
//! Sizes: KTS_TLS_GETS (2000), KTS_TLS_EVICTIONS (500), KTS_TLS_ROUNDS (4: each phase is split
//! into this many alternating rounds).
//!
//! All traffic is on 127.0.0.1; every loop is bounded and the run stops itself after 5 minutes.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, EvictParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use kube_testserver::{fixtures, Options, TestServer};
use serde_json::json;
use std::time::{Duration, Instant};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Side {
    name: &'static str,
    server: TestServer,
    client: Client,
    get: Vec<Duration>,
    evict: Vec<Duration>,
    next_pod: usize,
}

async fn client_for(kubeconfig: &str) -> anyhow::Result<Client> {
    let kc = Kubeconfig::from_yaml(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

fn seed(server: &TestServer, pods: usize) -> anyhow::Result<()> {
    server.add_nodes("node", 10);
    server
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))?;
    for i in 0..pods {
        server.apply(fixtures::pod(
            "bench",
            &format!("pod-{i}"),
            &format!("node-{}", i % 10 + 1),
        ))?;
    }
    Ok(())
}

async fn side(name: &'static str, plain_http: bool, pods: usize) -> anyhow::Result<Side> {
    let server = TestServer::start(Options {
        plain_http,
        ..Options::default()
    })?;
    seed(&server, pods)?;
    let kubeconfig = if plain_http {
        server.kubeconfig()
    } else {
        // The agent's identity with only what this benchmark asks: RBAC is evaluated on every
        // request, against a binding among others.
        for (i, (res, verb)) in [
            ("nodes", "get"),
            ("pods/eviction", "create"),
            ("configmaps", "list"),
        ]
        .iter()
        .enumerate()
        {
            let (group, resource) = ("", *res);
            server.apply(
                json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": format!("bench-{i}")},
                "rules": [{"apiGroups": [group], "resources": [resource], "verbs": [verb]}]}),
            )?;
            server.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": format!("bench-{i}")},
                "subjects": [{"kind": "ServiceAccount", "name": "bootpatch-updater", "namespace": "bootpatch-system"}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("bench-{i}")}}))?;
        }
        let token =
            server.issue_service_account_token("bootpatch-system", "bootpatch-updater", None);
        server.kubeconfig_for_token(&token)
    };
    let client = client_for(&kubeconfig).await?;
    // Warm up: connection (and TLS handshake) made before timing.
    Api::<Node>::all(client.clone()).get("node-1").await?;
    Ok(Side {
        name,
        server,
        client,
        get: Vec::new(),
        evict: Vec::new(),
        next_pod: 0,
    })
}

async fn gets(s: &mut Side, n: usize) -> anyhow::Result<()> {
    let api = Api::<Node>::all(s.client.clone());
    for i in 0..n {
        let name = format!("node-{}", i % 10 + 1);
        let t = Instant::now();
        api.get(&name).await?;
        s.get.push(t.elapsed());
    }
    Ok(())
}

async fn evictions(s: &mut Side, n: usize) -> anyhow::Result<()> {
    let api = Api::<Pod>::namespaced(s.client.clone(), "bench");
    for _ in 0..n {
        let name = format!("pod-{}", s.next_pod);
        s.next_pod += 1;
        let t = Instant::now();
        api.evict(&name, &EvictParams::default()).await?;
        s.evict.push(t.elapsed());
    }
    Ok(())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

async fn run() -> anyhow::Result<()> {
    let n_get = env_num("KTS_TLS_GETS", 2000);
    let n_evict = env_num("KTS_TLS_EVICTIONS", 500);
    let rounds = env_num("KTS_TLS_ROUNDS", 4).max(1);
    let mut sides = [
        side("https+rbac", false, n_evict).await?,
        side("plain-http", true, n_evict).await?,
    ];
    for r in 0..rounds {
        let g = n_get / rounds + usize::from(r < n_get % rounds);
        let e = n_evict / rounds + usize::from(r < n_evict % rounds);
        // Alternate which side goes first.
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            gets(&mut sides[i], g).await?;
            evictions(&mut sides[i], e).await?;
        }
    }
    println!(
        "kube-testserver TLS/RBAC benchmark: {n_get} GET node and {n_evict} evictions per side, one client, sequential, in {rounds} alternating rounds"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>11} {:>11}",
        "side", "get p50", "get p99", "evict p50", "evict p99"
    );
    for s in sides.iter_mut() {
        let (g50, g99) = (pct(&mut s.get, 0.50), pct(&mut s.get, 0.99));
        let (e50, e99) = (pct(&mut s.evict, 0.50), pct(&mut s.evict, 0.99));
        println!(
            "{:<12} {:>7.3}ms {:>7.3}ms {:>9.3}ms {:>9.3}ms",
            s.name, g50, g99, e50, e99
        );
    }
    for s in sides {
        s.server.shutdown();
    }
    Ok(())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match rt.block_on(async { tokio::time::timeout(Duration::from_secs(300), run()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("benchmark stopped after its 5 minute limit");
            std::process::exit(1);
        }
    }
}
