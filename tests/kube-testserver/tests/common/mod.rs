//! Shared support for the integration tests: a started server, its kubeconfig in a private
//! directory, and a `kubectl` runner with a hard timeout.

#![allow(dead_code)]

use kube_testserver::resources::{DEPLOYMENTS, PODS};
use kube_testserver::{controllers, util, Options, TestServer};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static N: AtomicUsize = AtomicUsize::new(0);

pub struct Cluster {
    pub server: TestServer,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

/// What a kubectl run gave.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl Cluster {
    pub fn start() -> Self {
        let server = TestServer::start(Options {
            pod_start_delay: Duration::from_millis(300),
            ..Options::default()
        })
        .expect("starting the test server");
        let dir = std::env::temp_dir().join(format!(
            "kube-testserver-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating the test directory");
        let kubeconfig = dir.join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("writing kubeconfig");
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    /// Runs the real kubectl against the server; kills it after `timeout`.
    pub fn kubectl_for(&self, args: &[&str], timeout: Duration) -> Out {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("out-{n}"));
        let err_path = self.dir.join(format!("err-{n}"));
        let start = Instant::now();
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .expect("running kubectl (is it installed?)");
        let code = loop {
            if let Some(st) = child.try_wait().expect("waiting for kubectl") {
                break st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kubectl {args:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = Out {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            took: start.elapsed(),
        };
        eprintln!(
            "$ kubectl {}\n[exit {} after {:?}]\n{}{}",
            args.join(" "),
            out.code,
            out.took,
            out.stdout,
            out.stderr
        );
        out
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_for(args, Duration::from_secs(60))
    }

    /// Waits until `n` pods labelled `app=<app>` are Running and Ready (and not terminating).
    pub fn wait_ready(&self, app: &str, n: usize) {
        let ok = self.server.wait_until(Duration::from_secs(20), |s| {
            let f = kube_testserver::Filter {
                labels: kube_testserver::selectors::LabelSelector::parse(&format!("app={app}"))
                    .unwrap(),
                ..Default::default()
            };
            s.list(&PODS, &f)
                .iter()
                .filter(|p| {
                    controllers::pod_ready(p)
                        && util::path(p, "metadata.deletionTimestamp").is_none()
                })
                .count()
                == n
        });
        assert!(ok, "{n} ready pods of app={app} within 20 s");
    }

    /// Waits for a Deployment's status to report `n` available replicas.
    pub fn wait_deployment(&self, ns: &str, name: &str, n: i64) {
        let ok = self.server.wait_until(Duration::from_secs(20), |s| {
            s.get(&DEPLOYMENTS, ns, name)
                .ok()
                .and_then(|d| util::path(&d, "status.availableReplicas").and_then(Value::as_i64))
                == Some(n)
        });
        assert!(ok, "deployment {ns}/{name} available={n} within 20 s");
    }

    /// Live (not terminating) pods: (name, node, uid).
    pub fn live_pods(&self, app: &str) -> Vec<(String, String, String)> {
        let mut v: Vec<_> = self
            .server
            .list(&PODS, None)
            .into_iter()
            .filter(|p| util::str_at(p, "metadata.labels.app") == app)
            .filter(|p| util::path(p, "metadata.deletionTimestamp").is_none())
            .map(|p| {
                (
                    util::str_at(&p, "metadata.name").to_string(),
                    util::str_at(&p, "spec.nodeName").to_string(),
                    util::str_at(&p, "metadata.uid").to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Waits until no pod of any kind is left on `node` (apart from those `keep` accepts).
    pub fn wait_node_empty(&self, node: &str, keep: impl Fn(&Value) -> bool) {
        let ok = self.server.wait_until(Duration::from_secs(20), |s| {
            s.pods_on_node(node)
                .iter()
                .all(|(ns, n)| s.get(&PODS, ns, n).map(|p| keep(&p)).unwrap_or(true))
        });
        assert!(ok, "node {node} emptied within 20 s");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
