//! The agent's Prometheus metrics (text format, written by hand: a handful of gauges does not
//! need a metrics library), `/healthz`, and the optional profiling endpoint (port 8082 with
//! `profiling: enable`). Serving only; the agent sets the values.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes_body::Full;
use http_body_util as bytes_body;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Debug, Default)]
pub struct Metrics {
    pub node: String,
    pub slot_held: AtomicBool,
    pub draining: AtomicBool,
    pub pdb_blocked: AtomicBool,
    pub patch_duration_ms: AtomicU64,
    pub drain_policy_valid: AtomicBool,
    pub patch_policy_valid: AtomicBool,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    step: String,
    last_result: String,
    runs: BTreeMap<String, u64>,
    deadlines: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            drain_policy_valid: AtomicBool::new(true),
            patch_policy_valid: AtomicBool::new(true),
            inner: Mutex::new(Inner {
                step: "idle".into(),
                last_result: "none".into(),
                runs: BTreeMap::new(),
                deadlines: BTreeMap::new(),
            }),
            ..Self::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_step(&self, step: &str) {
        self.lock().step = step.to_string();
    }

    pub fn record_result(&self, result: &str) {
        let mut i = self.lock();
        i.last_result = result.to_string();
        *i.runs.entry(result.to_string()).or_default() += 1;
    }

    /// A wait that met its deadline (`apply`, `reboot`, `node-ready`, `drain`).
    pub fn record_deadline(&self, wait: &str) {
        *self.lock().deadlines.entry(wait.to_string()).or_default() += 1;
    }

    pub fn deadlines(&self, wait: &str) -> u64 {
        self.lock().deadlines.get(wait).copied().unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let n = &self.node;
        let b = |a: &AtomicBool| u8::from(a.load(Ordering::Relaxed));
        let i = self.lock();
        let mut s = String::new();
        let _ = writeln!(s, "# HELP ospatch_slot_holder 1 while this node holds a patch slot.\n# TYPE ospatch_slot_holder gauge\nospatch_slot_holder{{node=\"{n}\"}} {}", b(&self.slot_held));
        let _ = writeln!(s, "# HELP ospatch_draining 1 while this node is being drained.\n# TYPE ospatch_draining gauge\nospatch_draining{{node=\"{n}\"}} {}", b(&self.draining));
        let _ = writeln!(s, "# HELP ospatch_drain_blocked_by_pdb 1 while an eviction is refused by a PodDisruptionBudget.\n# TYPE ospatch_drain_blocked_by_pdb gauge\nospatch_drain_blocked_by_pdb{{node=\"{n}\"}} {}", b(&self.pdb_blocked));
        let _ = writeln!(s, "# HELP ospatch_last_result The result of the last run (1 for the current label).\n# TYPE ospatch_last_result gauge\nospatch_last_result{{node=\"{n}\",result=\"{}\"}} 1", i.last_result);
        let _ = writeln!(s, "# HELP ospatch_patch_duration_seconds Duration of the last run, slot taken to slot released.\n# TYPE ospatch_patch_duration_seconds gauge\nospatch_patch_duration_seconds{{node=\"{n}\"}} {:.3}", self.patch_duration_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        let _ = writeln!(s, "# HELP ospatch_step The step this node is at (1 for the current label).\n# TYPE ospatch_step gauge\nospatch_step{{node=\"{n}\",step=\"{}\"}} 1", i.step);
        let _ = writeln!(s, "# HELP ospatch_policy_valid 0 while a policy ConfigMap does not parse (the last good one is in force).\n# TYPE ospatch_policy_valid gauge\nospatch_policy_valid{{node=\"{n}\",policy=\"drain\"}} {}\nospatch_policy_valid{{node=\"{n}\",policy=\"patch\"}} {}", b(&self.drain_policy_valid), b(&self.patch_policy_valid));
        let _ = writeln!(
            s,
            "# HELP ospatch_runs_total Runs by result.\n# TYPE ospatch_runs_total counter"
        );
        for (r, c) in &i.runs {
            let _ = writeln!(s, "ospatch_runs_total{{node=\"{n}\",result=\"{r}\"}} {c}");
        }
        let _ = writeln!(
            s,
            "# HELP ospatch_deadline_exceeded_total Waits that met their deadline (apply, reboot, node-ready, drain).\n# TYPE ospatch_deadline_exceeded_total counter"
        );
        for (w, c) in &i.deadlines {
            let _ = writeln!(
                s,
                "ospatch_deadline_exceeded_total{{node=\"{n}\",wait=\"{w}\"}} {c}"
            );
        }
        s
    }
}

/// Process figures for the profiling endpoint (from /proc/self).
pub fn profile_text() -> String {
    let mut s = String::from("# bootpatch-updater profile\n");
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for l in status.lines().filter(|l| {
            [
                "VmRSS",
                "VmHWM",
                "Threads",
                "voluntary_ctxt",
                "nonvoluntary_ctxt",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        }) {
            let _ = writeln!(s, "{l}");
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if f.len() > 13 {
            let _ = writeln!(s, "utime_ticks:\t{}\nstime_ticks:\t{}", f[11], f[12]);
        }
    }
    let m = tokio::runtime::Handle::current().metrics();
    let _ = writeln!(
        s,
        "tokio_workers:\t{}\ntokio_alive_tasks:\t{}",
        m.num_workers(),
        m.num_alive_tasks()
    );
    s
}

type Handler = Arc<dyn Fn(&str) -> Option<(String, String)> + Send + Sync>;

/// Serves GET paths from `handler` (path → (content type, body)) until dropped.
pub async fn serve(
    addr: SocketAddr,
    handler: Handler,
) -> anyhow::Result<crate::kube_util::AbortOnDrop> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let h = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let h = h.clone();
                    async move {
                        let resp = match h(req.uri().path()) {
                            Some((ct, body)) => Response::builder()
                                .status(200)
                                .header("content-type", ct)
                                .body(Full::new(hyper::body::Bytes::from(body))),
                            None => Response::builder()
                                .status(404)
                                .body(Full::new(hyper::body::Bytes::from_static(b"not found\n"))),
                        };
                        Ok::<_, Infallible>(resp.expect("valid response"))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(crate::kube_util::AbortOnDrop(task))
}

/// `/metrics` and `/healthz` for one agent.
pub fn metrics_handler(m: Arc<Metrics>, healthy: Arc<AtomicBool>) -> Handler {
    Arc::new(move |path| match path {
        "/metrics" => Some(("text/plain; version=0.0.4".into(), m.render())),
        "/healthz" if healthy.load(Ordering::Relaxed) => Some(("text/plain".into(), "ok\n".into())),
        "/healthz" => None,
        _ => None,
    })
}

/// The profiling endpoint.
pub fn profiling_handler() -> Handler {
    Arc::new(|path| match path {
        "/debug/profile" | "/" => Some(("text/plain".into(), profile_text())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_profile() {
        let m = Arc::new(Metrics::new("n1"));
        let healthy = Arc::new(AtomicBool::new(false));
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let _s = serve(addr, metrics_handler(m.clone(), healthy.clone()))
            .await
            .unwrap();
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 404"));
        healthy.store(true, Ordering::Relaxed);
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let body = get(addr, "/metrics").await;
        assert!(
            body.contains("ospatch_slot_holder{node=\"n1\"} 0"),
            "{body}"
        );
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let paddr = probe.local_addr().unwrap();
        drop(probe);
        let _p = serve(paddr, profiling_handler()).await.unwrap();
        let prof = get(paddr, "/debug/profile").await;
        assert!(
            prof.contains("VmRSS") && prof.contains("tokio_alive_tasks"),
            "{prof}"
        );
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("node-1");
        m.slot_held.store(true, Ordering::Relaxed);
        m.record_result("success");
        m.record_result("success");
        m.patch_duration_ms.store(1500, Ordering::Relaxed);
        let t = m.render();
        assert!(t.contains("ospatch_slot_holder{node=\"node-1\"} 1"));
        assert!(t.contains("ospatch_last_result{node=\"node-1\",result=\"success\"} 1"));
        assert!(t.contains("ospatch_runs_total{node=\"node-1\",result=\"success\"} 2"));
        assert!(t.contains("ospatch_patch_duration_seconds{node=\"node-1\"} 1.500"));
        assert!(t.contains("ospatch_drain_blocked_by_pdb{node=\"node-1\"} 0"));
        m.record_deadline("apply");
        assert!(m
            .render()
            .contains("ospatch_deadline_exceeded_total{node=\"node-1\",wait=\"apply\"} 1"));
    }
}
