//! The one test harness around a server, shared by the server's own tests and the updater's:
//! a started [`TestServer`] with its kubeconfig in a private folder, a runner for the real
//! `kubectl` (or any program that takes `--kubeconfig`) with a hard timeout, and waits on the
//! cluster's pods. Every wait has a timeout; the folder is removed when the harness is dropped.

use crate::resources::{DEPLOYMENTS, PODS};
use crate::{controllers, util, Options, TestServer};
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static N: AtomicUsize = AtomicUsize::new(0);

/// The exit code [`Cluster::run_for`] reports for a program it killed at its timeout.
pub const KILLED_AT_TIMEOUT: i32 = -9;

pub struct Cluster {
    pub server: TestServer,
    /// A private folder for the kubeconfig and the runs' output.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

/// What a run gave.
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
    /// A server with `opts` and its kubeconfig written.
    pub fn start_with(opts: Options) -> Self {
        let server = TestServer::start(opts).expect("starting the test server");
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
        self.run_for("kubectl", args, timeout)
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_for(args, Duration::from_secs(60))
    }

    /// Runs `program --kubeconfig K ARGS` (also with `KUBECONFIG` set, for plugins that read
    /// it); after `timeout` it is killed and the code is [`KILLED_AT_TIMEOUT`]. The run is
    /// echoed to standard error, which the test runner shows for a failing test.
    pub fn run_for(&self, program: &str, args: &[&str], timeout: Duration) -> Out {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("out-{n}"));
        let err_path = self.dir.join(format!("err-{n}"));
        let start = Instant::now();
        let mut child = Command::new(program)
            .env("KUBECONFIG", &self.kubeconfig)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .spawn()
            .unwrap_or_else(|e| panic!("running {program} (is it installed?): {e}"));
        let code = loop {
            if let Some(st) = child.try_wait().expect("waiting") {
                break st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break KILLED_AT_TIMEOUT;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let out = Out {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            took: start.elapsed(),
        };
        let program = program.rsplit('/').next().unwrap_or(program);
        let ended = if code == KILLED_AT_TIMEOUT {
            format!("killed after {timeout:?}")
        } else {
            format!("exit {code} after {:?}", out.took)
        };
        eprintln!(
            "$ {program} {}\n[{ended}]\n{}{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        out
    }

    /// Waits until `n` pods labelled `app=<app>` are Running and Ready (and not terminating).
    pub fn wait_ready(&self, app: &str, n: usize) {
        let ok = self.server.wait_until(Duration::from_secs(20), |s| {
            let f = crate::Filter {
                labels: crate::selectors::LabelSelector::parse(&format!("app={app}")).unwrap(),
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
