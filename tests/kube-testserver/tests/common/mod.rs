//! The server's integration tests use the crate's own harness ([`kube_testserver::harness`]),
//! which the updater's tests share: a started server, its kubeconfig in a private folder, and
//! a `kubectl` runner with a hard timeout.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use kube_testserver::harness::Out;
use kube_testserver::Options;
use std::ops::Deref;
use std::time::Duration;

/// The shared harness, started as these tests want it (pods start 300 ms after creation).
pub struct Cluster(kube_testserver::harness::Cluster);

impl Cluster {
    pub fn start() -> Self {
        Cluster(kube_testserver::harness::Cluster::start_with(Options {
            pod_start_delay: Duration::from_millis(300),
            ..Options::default()
        }))
    }
}

impl Deref for Cluster {
    type Target = kube_testserver::harness::Cluster;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
