//! Shared support for the updater's integration tests: a started test API server, its
//! kubeconfig, a kube-rs client and a `kubectl` runner with a hard timeout. Every wait here has
//! a timeout.

#![allow(dead_code)]

use kube_testserver::{Options, TestServer};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use updater::kube_util::{client_for_kubeconfig, Kube};

static N: AtomicUsize = AtomicUsize::new(0);

pub struct Cluster {
    pub server: TestServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Cluster {
    pub fn start() -> Self {
        Self::start_with(Options {
            pod_start_delay: Duration::from_millis(200),
            ..Options::default()
        })
    }

    pub fn start_with(opts: Options) -> Self {
        let server = TestServer::start(opts).expect("starting the test server");
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("writing kubeconfig");
        Self {
            server,
            dir,
            kubeconfig,
        }
    }

    pub fn kube(&self) -> Kube {
        client_for_kubeconfig(&self.server.kubeconfig(), Duration::from_secs(60)).expect("client")
    }

    /// Runs the real kubectl against the server; kills it (its own pid) after `timeout`.
    pub fn kubectl_for(&self, args: &[&str], timeout: Duration) -> Out {
        self.run_for("kubectl", args, timeout)
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_for(args, Duration::from_secs(30))
    }

    pub fn run_for(&self, program: &str, args: &[&str], timeout: Duration) -> Out {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("out-{n}"));
        let err_path = self.dir.path().join(format!("err-{n}"));
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
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        let code = loop {
            if let Some(st) = child.try_wait().expect("waiting") {
                break st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                break -9;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Out {
            code,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
            took: start.elapsed(),
        }
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
