//! Connecting to the API server and watching cheaply. The client counts every HTTP request it
//! sends (the fleet benchmark reports requests per node per idle hour). Watches here are
//! long-lived (`timeoutSeconds` up to the server's limit rather than kube-rs's 290 s cap), so
//! an idle agent costs a couple of requests an hour; they resume from the last resourceVersion
//! and relist only on 410 Gone.

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

/// A client for a plain-HTTP server URL that records every request it sends.
pub fn recording_client_for_url(url: &str, watch_timeout: Duration) -> anyhow::Result<Kube> {
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url}"))?;
    let mut config = kube::Config::new(uri);
    config.default_namespace = "default".into();
    build(config, watch_timeout, Some(RequestLog::default()))
}

/// A client for a plain-HTTP server URL (tests, the benchmark).
pub fn client_for_url(url: &str, watch_timeout: Duration) -> anyhow::Result<Kube> {
    let uri: http::Uri = url.parse().with_context(|| format!("parsing {url}"))?;
    let mut config = kube::Config::new(uri);
    config.default_namespace = "default".into();
    client_from_config(config, watch_timeout)
}

/// A client from the environment (in-cluster service account, or KUBECONFIG / ~/.kube/config).
pub async fn client_infer(watch_timeout: Duration) -> anyhow::Result<Kube> {
    let config = kube::Config::infer()
        .await
        .context("finding the Kubernetes API (in-cluster or kubeconfig)")?;
    client_from_config(config, watch_timeout)
}

/// What one watch keeps: the objects by name, and a change counter.
pub type Snapshot<K> = Arc<BTreeMap<String, K>>;

/// Keeps `watch::Receiver` up to date with the objects matching a selector, by list + long
/// watch. Ends when every receiver is gone. Returns a handle that aborts the watch on drop.
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
        'relist: loop {
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
                    Err(e) => {
                        tracing::debug!(error = %e, url, "watch failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                backoff = Duration::from_millis(200);
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
                                WatchEvent::Error(e) if e.code == 410 => continue 'relist,
                                WatchEvent::Error(e) => {
                                    tracing::debug!(error = %e.message, url, "watch error");
                                    break;
                                }
                            };
                            if changed && tx.send(Some(Arc::new(objects.clone()))).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(error = %e, url, "watch stream ended");
                            tokio::time::sleep(backoff).await;
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
