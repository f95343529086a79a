//! Connecting to the API server and watching cheaply. The client counts every HTTP request it
//! sends (the fleet benchmark reports requests per node per idle hour). Watches here are
//! long-lived (`timeoutSeconds` up to the server's limit rather than kube-rs's 290 s cap), so
//! an idle agent costs a couple of requests an hour; they resume from the last resourceVersion
//! and relist only on 410 Gone, whether it comes as an `ERROR` event on an open watch or as the
//! HTTP status of the watch request (real apiservers answer both ways).
//!
//! Why not `kube::runtime::watcher` (kube 1.1, and still in 5.0): its watch requests go through
//! `WatchParams`, which refuses a timeout of 295 s or more, so an idle agent would re-watch about
//! every 5 minutes instead of every `watch_timeout` (30 min by default): 6x the idle requests.
//! And it has the same HTTP 410 bug: a watch request answered with 410 Gone surfaces as an error
//! item on the stream, after which the watcher re-watches from the same resourceVersion (its
//! `InitListed` state) rather than relisting.

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use kube::api::{ObjectList, WatchEvent};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::watch;

/// Counts requests passing through the client's service stack, and optionally records each
/// request's method and path (the RBAC test compares them with the manifests' rules).
#[derive(Clone, Debug)]
pub struct Counting<S> {
    inner: S,
    count: Arc<AtomicU64>,
    log: Option<RequestLog>,
}

/// `METHOD /path?query` of every request, when recording.
pub type RequestLog = Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>;

impl<S, B> tower::Service<http::Request<B>> for Counting<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(log) = &self.log {
            let line = format!("{} {}", req.method(), req.uri());
            log.lock().unwrap_or_else(|p| p.into_inner()).insert(line);
        }
        self.inner.call(req)
    }
}

#[derive(Clone, Debug)]
pub struct CountLayer(pub Arc<AtomicU64>, pub Option<RequestLog>);

impl<S> tower::Layer<S> for CountLayer {
    type Service = Counting<S>;
    fn layer(&self, inner: S) -> Counting<S> {
        Counting {
            inner,
            count: self.0.clone(),
            log: self.1.clone(),
        }
    }
}

/// A client and its request counter.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    pub requests: Arc<AtomicU64>,
    pub log: Option<RequestLog>,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube")
            .field("requests", &self.requests.load(Ordering::Relaxed))
            .finish()
    }
}

/// Builds a client from a config, counting requests; the read timeout is raised so long
/// watches are not cut by the client.
pub fn client_from_config(config: kube::Config, watch_timeout: Duration) -> anyhow::Result<Kube> {
    build(config, watch_timeout, None)
}

fn build(
    mut config: kube::Config,
    watch_timeout: Duration,
    log: Option<RequestLog>,
) -> anyhow::Result<Kube> {
    config.read_timeout = Some(watch_timeout + Duration::from_secs(60));
    let requests = Arc::new(AtomicU64::new(0));
    let client = kube::client::ClientBuilder::try_from(config)
        .context("building the Kubernetes client")?
        .with_layer(&CountLayer(requests.clone(), log.clone()))
        .build();
    Ok(Kube {
        client,
        requests,
        log,
    })
}

/// The last `max` bytes of `s` (on a char boundary): the end of an output is where its
/// cause is.
pub fn tail_chars(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Adds what a user needs to know to the errors whose cause is trust or credentials: a
/// server certificate the CA does not vouch for, 401 (no token, or one that expired or was
/// revoked) and 403 (RBAC forbids it).
pub fn explain(e: anyhow::Error) -> anyhow::Error {
    let code = e
        .chain()
        .find_map(|c| match c.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(r)) => Some(r.code),
            _ => None,
        });
    // rustls's error sits inside an io::Error, whose source() skips it: match its text.
    if code.is_none()
        && e.chain()
            .any(|c| c.to_string().contains("invalid peer certificate"))
    {
        return e.context(
            "the server's certificate is not signed by the CA the kubeconfig names \
             (certificate-authority or certificate-authority-data), or not for this address",
        );
    }
    match code {
        Some(401) => e.context(
            "401 Unauthorized: the server did not accept the credentials \
             (no token, or one that expired or was revoked)",
        ),
        Some(403) => e.context("403 Forbidden: RBAC does not allow this request"),
        _ => e,
    }
}

/// The kube-rs config a kubeconfig document gives, read as kubectl reads it (cluster CA,
/// bearer token or client certificate, exec plugins), with `default` as the namespace when the
/// context names none.
pub fn config_from_kubeconfig(yaml: &str) -> anyhow::Result<kube::Config> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).context("parsing the kubeconfig")?;
    // Nothing here waits on I/O except an exec credential plugin, which kube-rs runs
    // synchronously; a plain executor keeps this usable from sync code and inside a runtime.
    futures::executor::block_on(kube::Config::from_custom_kubeconfig(
        kc,
        &kube::config::KubeConfigOptions::default(),
    ))
    .context("loading the kubeconfig")
}

/// A client for a kubeconfig document that records every request it sends (tests).
pub fn recording_client_for_kubeconfig(
    yaml: &str,
    watch_timeout: Duration,
) -> anyhow::Result<Kube> {
    build(
        config_from_kubeconfig(yaml)?,
        watch_timeout,
        Some(RequestLog::default()),
    )
}

/// A client for a kubeconfig document (tests, the benchmark).
pub fn client_for_kubeconfig(yaml: &str, watch_timeout: Duration) -> anyhow::Result<Kube> {
    client_from_config(config_from_kubeconfig(yaml)?, watch_timeout)
}

/// Where the agent finds the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentApi {
    /// In a pod: the service address the kubelet puts in every pod's environment, and the
    /// projected ServiceAccount token and CA.
    InCluster,
    /// Outside a pod (a developer's run): the kubeconfig KUBECONFIG names.
    Kubeconfig(String),
}

/// Decides from the environment's values where the agent's API server is, or says which
/// variables are missing.
pub fn agent_api(
    service_host: Option<&str>,
    service_port: Option<&str>,
    kubeconfig: Option<&str>,
) -> anyhow::Result<AgentApi> {
    let set = |v: Option<&str>| v.is_some_and(|v| !v.trim().is_empty());
    match (set(service_host), set(service_port)) {
        (true, true) => Ok(AgentApi::InCluster),
        _ if set(kubeconfig) => Ok(AgentApi::Kubeconfig(kubeconfig.unwrap().to_string())),
        (h, p) => {
            let missing: Vec<&str> = [
                (h, "KUBERNETES_SERVICE_HOST"),
                (p, "KUBERNETES_SERVICE_PORT"),
            ]
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, name)| name)
            .collect();
            anyhow::bail!(
                "not running in a cluster: {} not set (the kubelet sets them in every pod); \
                 outside a pod, set KUBECONFIG",
                missing.join(" and ")
            )
        }
    }
}

/// The agent's client. In a pod it uses the in-cluster config: HTTPS to
/// KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT, verified against the ServiceAccount's
/// `ca.crt`, with its projected token, which kube-rs re-reads from the file (bound tokens
/// rotate) rather than keeping the first one for the life of the process.
pub async fn client_for_agent(watch_timeout: Duration) -> anyhow::Result<Kube> {
    let env = |k: &str| std::env::var(k).ok();
    let config = match agent_api(
        env("KUBERNETES_SERVICE_HOST").as_deref(),
        env("KUBERNETES_SERVICE_PORT").as_deref(),
        env("KUBECONFIG").as_deref(),
    )? {
        AgentApi::InCluster => kube::Config::incluster().context(
            "reading the in-cluster config (KUBERNETES_SERVICE_HOST/PORT and \
             /var/run/secrets/kubernetes.io/serviceaccount/{token,ca.crt,namespace})",
        )?,
        AgentApi::Kubeconfig(path) => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading KUBECONFIG {path}"))?;
            config_from_kubeconfig(&text).with_context(|| format!("KUBECONFIG {path}"))?
        }
    };
    client_from_config(config, watch_timeout)
}

/// What one watch keeps: the objects by name, and a change counter.
pub type Snapshot<K> = Arc<BTreeMap<String, K>>;

/// Keeps `watch::Receiver` up to date with the objects matching a selector, by list + long
/// watch, relisting when the server says the watch's resourceVersion is gone (410). Ends when
/// every receiver is gone. Returns a handle that aborts the watch on drop.
pub fn spawn_watch<K>(
    client: Client,
    namespace: Option<String>,
    field_selector: Option<String>,
    label_selector: Option<String>,
    timeout: Duration,
) -> (watch::Receiver<Option<Snapshot<K>>>, AbortOnDrop)
where
    K: Resource<DynamicType = ()>
        + DeserializeOwned
        + Clone
        + Send
        + Sync
        + std::fmt::Debug
        + 'static,
{
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let url = K::url_path(&(), namespace.as_deref());
        let mut backoff = Duration::from_millis(200);
        // Set when the last watch ended in 410 Gone: the relist waits out the backoff, so a
        // server that refuses every watch is not asked again in a tight loop.
        let mut gone = false;
        'relist: loop {
            if std::mem::take(&mut gone) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            let mut q = Vec::new();
            if let Some(f) = &field_selector {
                q.push(format!("fieldSelector={}", encode(f)));
            }
            if let Some(l) = &label_selector {
                q.push(format!("labelSelector={}", encode(l)));
            }
            let req = http::Request::get(format!("{url}?{}", q.join("&")))
                .body(Vec::new())
                .expect("valid request");
            let list = match client.request::<ObjectList<K>>(req).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, url, "list failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let mut objects: BTreeMap<String, K> = list
                .items
                .into_iter()
                .map(|o| (o.meta().name.clone().unwrap_or_default(), o))
                .collect();
            let mut rv = list.metadata.resource_version.unwrap_or_default();
            if tx.send(Some(Arc::new(objects.clone()))).is_err() {
                return;
            }
            loop {
                let mut q = vec![
                    "watch=true".to_string(),
                    "allowWatchBookmarks=true".to_string(),
                    format!("timeoutSeconds={}", timeout.as_secs().max(1)),
                    format!("resourceVersion={rv}"),
                ];
                if let Some(f) = &field_selector {
                    q.push(format!("fieldSelector={}", encode(f)));
                }
                if let Some(l) = &label_selector {
                    q.push(format!("labelSelector={}", encode(l)));
                }
                let req = http::Request::get(format!("{url}?{}", q.join("&")))
                    .body(Vec::new())
                    .expect("valid request");
                let stream = match client.request_events::<K>(req).await {
                    Ok(s) => s,
                    Err(e) if api_code(&e) == Some(410) => {
                        tracing::debug!(error = %e, url, "resourceVersion {rv} gone; relisting");
                        gone = true;
                        continue 'relist;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, url, "watch failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                let mut stream = stream.boxed();
                loop {
                    match stream.try_next().await {
                        Ok(Some(ev)) => {
                            let changed = match ev {
                                WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                                    rv = o.meta().resource_version.clone().unwrap_or(rv);
                                    objects.insert(o.meta().name.clone().unwrap_or_default(), o);
                                    true
                                }
                                WatchEvent::Deleted(o) => {
                                    rv = o.meta().resource_version.clone().unwrap_or(rv);
                                    objects.remove(o.meta().name.as_deref().unwrap_or(""));
                                    true
                                }
                                WatchEvent::Bookmark(b) => {
                                    rv = b.metadata.resource_version;
                                    false
                                }
                                // 410 on an open watch: the resourceVersion is gone.
                                WatchEvent::Error(e) if e.code == 410 => {
                                    gone = true;
                                    continue 'relist;
                                }
                                WatchEvent::Error(e) => {
                                    tracing::debug!(error = %e.message, url, "watch error");
                                    tokio::time::sleep(backoff).await;
                                    backoff = (backoff * 2).min(Duration::from_secs(10));
                                    break;
                                }
                            };
                            // The server answered with an event: the watch works.
                            backoff = Duration::from_millis(200);
                            if changed && tx.send(Some(Arc::new(objects.clone()))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        // kube-rs does not look at a watch response's status: a request the
                        // server refused (HTTP 410 Gone for a resourceVersion it no longer has,
                        // a real apiserver's other way to say it) arrives as the stream's
                        // first item, the Status body read as an API error. Relist, as on the
                        // 410 event; retrying the same resourceVersion would fail forever.
                        Err(e) if api_code(&e) == Some(410) => {
                            tracing::debug!(error = %e, url, "resourceVersion {rv} gone; relisting");
                            gone = true;
                            continue 'relist;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, url, "watch stream ended");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
            }
        }
    });
    (rx, AbortOnDrop(task))
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Aborts a spawned task when dropped, so cancelling an agent cancels everything it started.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The message of an API error, or the error itself.
pub fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(r) => Some(r.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_api_from_the_environment() {
        assert_eq!(
            agent_api(Some("10.96.0.1"), Some("443"), None).unwrap(),
            AgentApi::InCluster
        );
        assert_eq!(
            agent_api(None, None, Some("/tmp/kc")).unwrap(),
            AgentApi::Kubeconfig("/tmp/kc".into())
        );
        let e = agent_api(None, Some(""), None).unwrap_err().to_string();
        assert!(
            e.contains("KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT not set"),
            "{e}"
        );
        let e = agent_api(Some("10.96.0.1"), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("KUBERNETES_SERVICE_PORT not set") && !e.contains("HOST"),
            "{e}"
        );
    }
}
