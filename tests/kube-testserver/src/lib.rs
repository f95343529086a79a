//! kube-testserver: test infrastructure, not a Kubernetes server. An in-memory API server over
//! real HTTP that speaks the part of the Kubernetes API the project's updater and `kubectl
//! drain` use, over HTTPS with bearer-token authentication ([`auth`]) and RBAC ([`rbac`]):
//! discovery, CRUD with optimistic concurrency, label/field selectors, watches,
//! the three patch formats, graceful pod deletion, eviction with PodDisruptionBudgets, and small
//! controllers (scheduler, kubelet, ReplicaSet/Deployment, DaemonSet, disruption) so that a
//! drain migrates pods as a real cluster would.
//!
//! ```no_run
//! use kube_testserver::{fixtures, Options, TestServer};
//! let server = TestServer::start(Options::default()).unwrap();
//! server.add_nodes("node", 3);
//! server.apply(fixtures::deployment("default", "web", 3)).unwrap();
//! server.write_kubeconfig("/tmp/kubeconfig").unwrap();
//! // kubectl --kubeconfig /tmp/kubeconfig drain node-1 ...
//! ```

pub mod auth;
pub mod controllers;
pub mod fixtures;
pub mod harness;
pub mod patch;
pub mod proto;
pub mod rbac;
pub mod resources;
pub mod selectors;
pub mod server;
pub mod status;
pub mod store;
pub mod table;
pub mod util;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use resources::ResourceDef;
pub use status::ApiError;
pub use store::{Filter, Store, StoreOptions};

/// How to start a test server.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// How long a scheduled pod takes to become Running and Ready.
    pub pod_start_delay: Duration,
    /// How often the controllers run.
    pub controller_interval: Duration,
    /// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
    pub bookmark_interval: Duration,
    /// Events kept for watches resuming from a resourceVersion (older ones get 410 Gone).
    pub history_size: usize,
    /// Worker threads of the server's own runtime.
    pub worker_threads: usize,
    /// Events queued per watch before it falls back to replaying the history.
    pub watch_queue: usize,
    /// Serve plain HTTP with no authentication (the scale benchmark only; every test speaks
    /// HTTPS with a token, as clients of a real API server do).
    pub plain_http: bool,
    /// Names (IP addresses or DNS names) the serving certificate is valid for, besides
    /// loopback and `kubernetes.default.svc` (`auth::DEFAULT_SANS`).
    pub extra_sans: Vec<String>,
    /// How a watch that asks for a resourceVersion older than the history is refused.
    pub watch_gone: WatchGone,
    /// How long after its write commits an event reaches a watch. A real apiserver's watch
    /// cache trails its writes by milliseconds, by much more under load, while a GET already
    /// sees the write: clients that read their own writes from a watch cache must allow for
    /// it. Zero sends at once.
    pub watch_latency: Duration,
}

/// The two ways a real apiserver refuses a watch whose resourceVersion is too old: an `ERROR`
/// event carrying a `410 Expired` Status on a watch that opened with 200 (the watch cache's
/// way), or the request itself answered with HTTP 410 Gone and the Status as its body (an
/// error raised before the stream starts). Clients must relist on either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WatchGone {
    /// 200, then one `ERROR` event with the 410 Status, then the end of the stream.
    #[default]
    ErrorEvent,
    /// HTTP 410 Gone with the Status as the body.
    HttpStatus,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pod_start_delay: Duration::from_millis(500),
            controller_interval: Duration::from_millis(25),
            bookmark_interval: Duration::from_secs(10),
            history_size: 10_000,
            worker_threads: 2,
            watch_queue: 1024,
            plain_http: false,
            extra_sans: Vec::new(),
            watch_gone: WatchGone::default(),
            watch_latency: Duration::ZERO,
        }
    }
}

/// State shared by the HTTP handlers, the controllers and the library handle.
pub struct Shared {
    store: Mutex<Store>,
    pub bookmark_interval: Duration,
    pub watch_gone: WatchGone,
    pub watch_latency: Duration,
    /// The tokens requests must carry; None serves everyone (plain HTTP).
    pub tokens: Option<auth::Tokens>,
}

impl Shared {
    /// Locks the store. A panic while holding the lock poisons nothing we rely on: the store is
    /// still consistent between verbs, so the poison is ignored.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running test server. Dropping it shuts it down.
pub struct TestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    pki: Option<auth::Pki>,
    admin_token: String,
    shutdown: tokio::sync::watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl TestServer {
    /// Starts a server on its own thread and runtime (usable from sync and async tests).
    pub fn start(opts: Options) -> anyhow::Result<Self> {
        let std_listener = std::net::TcpListener::bind(opts.listen)
            .with_context(|| format!("binding {}", opts.listen))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new(StoreOptions {
                pod_start_delay: opts.pod_start_delay,
                history_size: opts.history_size,
                watch_queue: opts.watch_queue.max(1),
            })),
            bookmark_interval: opts.bookmark_interval,
            watch_gone: opts.watch_gone,
            watch_latency: opts.watch_latency,
            tokens: (!opts.plain_http).then(auth::Tokens::default),
        });
        let pki = match opts.plain_http {
            true => None,
            false => Some(auth::generate(&opts.extra_sans).context("making the server's CA")?),
        };
        let admin_token = match &shared.tokens {
            Some(t) => t.issue(auth::Identity::admin(), None),
            None => String::new(),
        };
        let acceptor = pki
            .as_ref()
            .map(|p| tokio_rustls::TlsAcceptor::from(p.server_config.clone()));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .thread_name("kube-testserver")
            .enable_all()
            .build()
            .context("building the server runtime")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        let sh = shared.clone();
        let interval = opts.controller_interval;
        let thread = std::thread::Builder::new()
            .name("kube-testserver".into())
            .spawn(move || {
                runtime.block_on(run(std_listener, acceptor, sh, rx, interval));
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .context("spawning the server thread")?;
        Ok(Self {
            addr,
            shared,
            pki,
            admin_token,
            shutdown: tx,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (`http://` with `plain_http`).
    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The CA certificate (PEM) clients must trust; None with `plain_http`.
    pub fn ca_pem(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.ca_pem.as_str())
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> Option<&[u8]> {
        self.pki.as_ref().map(|p| p.ca_der.as_slice())
    }

    /// The token of the admin kubeconfig (member of `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Issues a bearer token for a ServiceAccount (what a projected token volume holds),
    /// valid for `ttl` or, with None, for the server's life.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        name: &str,
        ttl: Option<Duration>,
    ) -> String {
        match &self.shared.tokens {
            Some(t) => t.issue(auth::Identity::service_account(namespace, name), ttl),
            None => String::new(),
        }
    }

    /// Withdraws a token issued by this server.
    pub fn revoke_token(&self, token: &str) {
        if let Some(t) = &self.shared.tokens {
            t.revoke(token);
        }
    }

    /// A kubeconfig that points kubectl (or kube-rs) at this server as its admin: the CA
    /// inline and the admin token (plain HTTP and no user with `plain_http`).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig_for_token(&self.admin_token)
    }

    /// A kubeconfig whose user presents `token` (e.g. a ServiceAccount's).
    pub fn kubeconfig_for_token(&self, token: &str) -> String {
        use base64::Engine as _;
        let (ca, user) = match &self.pki {
            Some(p) => (
                format!(
                    "    certificate-authority-data: {}\n",
                    base64::engine::general_purpose::STANDARD.encode(&p.ca_pem)
                ),
                format!("\n    token: {token}\n"),
            ),
            None => (String::new(), " {}\n".to_string()),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: kube-testserver\n  cluster:\n    server: {}\n{ca}contexts:\n- name: kube-testserver\n  context:\n    cluster: kube-testserver\n    user: tester\n    namespace: default\ncurrent-context: kube-testserver\nusers:\n- name: tester\n  user:{user}preferences: {{}}\n",
            self.url()
        )
    }

    pub fn write_kubeconfig(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        // Written beside and renamed, so a reader polling for the file never sees half of it.
        let tmp = path.with_extension("kube-testserver.tmp");
        std::fs::write(&tmp, self.kubeconfig())
            .with_context(|| format!("writing kubeconfig {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("writing kubeconfig {}", path.display()))
    }

    /// Runs a function on the store under its lock (for checks and custom seeding).
    pub fn with_store<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut self.shared.lock())
    }

    /// Creates an object; its type comes from `apiVersion` and `kind`.
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        let def = resources::by_kind(util::str_at(&obj, "apiVersion"), util::str_at(&obj, "kind"))
            .ok_or_else(|| ApiError::bad_request("unknown apiVersion/kind"))?;
        let ns = match util::str_at(&obj, "metadata.namespace") {
            "" => "default".to_string(),
            n => n.to_string(),
        };
        self.shared
            .lock()
            .create(def, &ns, obj, false)
            .map(|o| (*o).clone())
    }

    /// One object, if it exists.
    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<Value> {
        self.shared
            .lock()
            .get(def, ns, name)
            .ok()
            .map(|o| (*o).clone())
    }

    /// All objects of a type, optionally in one namespace.
    pub fn list(&self, def: &ResourceDef, ns: Option<&str>) -> Vec<Value> {
        let filter = Filter {
            namespace: ns.map(str::to_string),
            ..Filter::default()
        };
        self.shared
            .lock()
            .list(def, &filter)
            .into_iter()
            .map(|o| (*o).clone())
            .collect()
    }

    /// Pods bound to a node, terminating ones included.
    pub fn pods_on_node(&self, node: &str) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .pods_on_node(node)
            .into_iter()
            .filter_map(|(ns, n)| {
                store
                    .get_obj(&resources::PODS, &ns, &n)
                    .map(|o| (**o).clone())
            })
            .collect()
    }

    /// Adds a Ready node.
    pub fn add_node(&self, name: &str) -> Result<Value, ApiError> {
        self.apply(fixtures::node(name))
    }

    /// Adds `count` Ready nodes named `<prefix>-1` .. `<prefix>-<count>`.
    pub fn add_nodes(&self, prefix: &str, count: usize) -> Vec<String> {
        (1..=count)
            .map(|i| {
                let name = format!("{prefix}-{i}");
                self.add_node(&name).expect("fresh node name");
                name
            })
            .collect()
    }

    /// Simulates a node reboot: NotReady (pods lose readiness) for `down`, then Ready, and its
    /// pods become Ready again after the start delay. False if the node does not exist.
    pub fn simulate_node_reboot(&self, node: &str, down: Duration) -> bool {
        controllers::reboot_node(&mut self.shared.lock(), node, down)
    }

    /// Polls `cond` on the store every 20 ms until it holds or `timeout` passes.
    pub fn wait_until(&self, timeout: Duration, mut cond: impl FnMut(&Store) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if cond(&self.shared.lock()) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops serving, ends watches and joins the server thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Serves until shutdown: the accept loop and the controller loop.
async fn run(
    listener: std::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    interval: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kube-testserver: listener: {e}");
            return;
        }
    };
    let sh = shared.clone();
    let controllers = tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A reconcile pass holds the store lock; under heavy load the passes are spaced so the
        // lock is held by controllers at most a fifth of the time.
        let mut next_reconcile = Instant::now();
        loop {
            tick.tick().await;
            let now = Instant::now();
            if controllers::tick(&mut sh.lock(), now, now >= next_reconcile) {
                next_reconcile = Instant::now() + now.elapsed() * 4;
            }
        }
    });
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((stream, _)) = acc else { continue };
                let _ = stream.set_nodelay(true);
                let sh = shared.clone();
                let sd = shutdown.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        server::handle(req, sh.clone(), sd.clone())
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        // A failed handshake (a client that does not trust our CA) just
                        // closes the connection, as the apiserver does.
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    controllers.abort();
}
