//! Shared support for the updater's integration tests: a started test API server, its
//! kubeconfig, a kube-rs client and a `kubectl` runner with a hard timeout. Every wait here has
//! a timeout.

#![allow(dead_code)]

use kube_testserver::{Options, TestServer};
use std::time::Duration;
use updater::kube_util::{client_for_kubeconfig, Kube};

#[allow(unused_imports)]
pub use kube_testserver::harness::Out;

/// The test server's harness ([`kube_testserver::harness`], shared with the server's own
/// tests), plus a kube-rs client for the updater's code.
pub struct Cluster(kube_testserver::harness::Cluster);

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(Options {
            pod_start_delay: Duration::from_millis(200),
            ..Options::default()
        })
    }

    pub fn start_with(opts: Options) -> Self {
        Cluster(kube_testserver::harness::Cluster::start_with(opts))
    }

    pub fn kube(&self) -> Kube {
        client_for_kubeconfig(&self.server.kubeconfig(), Duration::from_secs(60)).expect("client")
    }
}

impl std::ops::Deref for Cluster {
    type Target = kube_testserver::harness::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A tiny deterministic generator (xorshift), so generated cluster states are reproducible.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Asserts that every change of a Node's step (`ospatch.bootpatch.io/step`) the server
/// recorded is one the state machine allows ([`Step::allows`]): whoever wrote it (the node's
/// agent, another node's agent taking a slot over, the plugin's reset). A missing step reads as
/// idle. Writes up to resourceVersion `after` are not judged (a test's own setup, which may
/// put a node in any step). Panics naming the node, the two steps and the write's
/// resourceVersion.
pub fn assert_step_changes_allowed(server: &TestServer, after: u64) {
    use kube_testserver::resources::NODES;
    use updater::cycle::Step;
    let step = |o: &serde_json::Value| {
        let text = o["metadata"]["annotations"][updater::node::STEP]
            .as_str()
            .unwrap_or("idle");
        Step::parse(text).unwrap_or_else(|| panic!("a step the machine does not know: {text:?}"))
    };
    let (changes, complete) = server.with_store(|s| s.changes(&NODES));
    assert!(
        complete,
        "the server's history dropped changes: raise history_size"
    );
    for e in changes.iter().filter(|e| e.rv > after) {
        let Some(old) = &e.old else { continue };
        let (from, to) = (step(old), step(&e.obj));
        assert!(
            from.allows(to),
            "node {} went from step {from} to {to} (resourceVersion {}), which no transition allows",
            e.obj["metadata"]["name"],
            e.rv
        );
    }
}
