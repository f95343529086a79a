//! HTTP: URL routing to the store's verbs, query parameters, content negotiation (JSON or
//! Table), Status errors, and streamed watches. Runs on hyper (HTTP/1.1, plain TCP: kubectl
//! accepts `server: http://...`). Holds the store lock only for the store call itself, never
//! while writing to a socket.

use crate::resources::{self, ResourceDef, NAMESPACES, PODS};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::{self, ApiError};
use crate::store::{DeleteOpts, EventType, Filter, Obj, PatchType, Subscription};
use crate::table;
use crate::{Shared, WatchGone};
use bytes::Bytes;
use futures_util::stream;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

fn full(code: u16, content_type: &str, b: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("cache-control", "no-cache, private")
        .body(Full::new(b.into()).boxed_unsync())
        .expect("valid response")
}

fn json_resp(code: u16, v: &Value) -> Response<Body> {
    full(
        code,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn error_resp(e: &ApiError) -> Response<Body> {
    json_resp(e.code, &e.to_status())
}

/// Percent-decodes a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> HashMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

/// The parsed request, as the handlers need it.
struct Req {
    method: Method,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
    body: Bytes,
    host: String,
    identity: Option<crate::auth::Identity>,
}

impl Req {
    fn dry_run(&self) -> bool {
        self.query.get("dryRun").is_some_and(|v| v == "All")
    }

    fn body_json(&self) -> Result<Value, ApiError> {
        if self.body.is_empty() {
            return Ok(Value::Null);
        }
        if self.content_type.contains("protobuf") {
            return crate::proto::decode_body(&self.body)
                .map_err(|e| ApiError::new(415, "UnsupportedMediaType", e));
        }
        serde_json::from_slice(&self.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body as JSON: {e}")))
    }

    fn wants_table(&self) -> bool {
        self.accept.contains("as=Table")
    }
}

/// Serves one HTTP request.
pub async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    // Who asks; None on a plain-HTTP server, which authorizes everything.
    let mut identity = None;
    if let Some(tokens) = &shared.tokens {
        let authorization = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // The apiserver says no more than this, whatever the reason (none, unknown, expired).
        match tokens.authenticate(authorization) {
            Ok(who) => identity = Some(who),
            Err(_) => {
                return Ok(error_resp(&ApiError::new(
                    401,
                    "Unauthorized",
                    "Unauthorized",
                )))
            }
        }
    }
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(error_resp(&ApiError::bad_request(format!(
                "reading body: {e}"
            ))))
        }
    };
    let header = |n: &str| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let r = Req {
        method: parts.method.clone(),
        query: parse_query(parts.uri.query()),
        accept: header("accept"),
        content_type: header("content-type"),
        host: header("host"),
        body,
        identity,
    };
    let path = parts.uri.path().to_string();
    let resp = route(&path, r, shared, shutdown).unwrap_or_else(|e| error_resp(&e));
    Ok(resp)
}

fn route(
    path: &str,
    r: Req,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let get_only = |r: &Req| {
        if r.method == Method::GET {
            Ok(())
        } else {
            Err(ApiError::method_not_allowed(format!(
                "the server does not allow this method on the requested resource ({})",
                r.method
            )))
        }
    };
    match segs.as_slice() {
        [] => Ok(json_resp(
            200,
            &json!({"paths": ["/api", "/api/v1", "/apis", "/apis/apps", "/apis/apps/v1",
                "/apis/coordination.k8s.io", "/apis/coordination.k8s.io/v1", "/apis/policy",
                "/apis/policy/v1", "/healthz", "/livez", "/readyz", "/version"]}),
        )),
        ["version"] => Ok(json_resp(
            200,
            &json!({
                "major": "1", "minor": "32", "gitVersion": "v1.32.0-kube-testserver",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "n/a", "compiler": "rustc", "platform": "linux/amd64"
            }),
        )),
        ["healthz" | "readyz" | "livez", ..] => Ok(full(200, "text/plain", "ok")),
        ["api"] => {
            get_only(&r)?;
            Ok(json_resp(200, &resources::api_versions(&r.host)))
        }
        ["api", "v1"] => {
            get_only(&r)?;
            Ok(json_resp(
                200,
                &resources::resource_list("", "v1").expect("core"),
            ))
        }
        ["apis"] => {
            get_only(&r)?;
            Ok(json_resp(200, &resources::api_group_list()))
        }
        ["apis", g] => {
            get_only(&r)?;
            resources::api_group(g)
                .map(|v| json_resp(200, &v))
                .ok_or_else(ApiError::not_found_path)
        }
        ["apis", g, v] => {
            get_only(&r)?;
            resources::resource_list(g, v)
                .map(|v| json_resp(200, &v))
                .ok_or_else(ApiError::not_found_path)
        }
        ["openapi", "v3"] => Ok(json_resp(200, &resources::openapi_v3_root())),
        ["openapi", "v3", "api", v] => resources::openapi_v3_gv("", v)
            .map(|d| json_resp(200, &d))
            .ok_or_else(ApiError::not_found_path),
        ["openapi", "v3", "apis", g, v] => resources::openapi_v3_gv(g, v)
            .map(|d| json_resp(200, &d))
            .ok_or_else(ApiError::not_found_path),
        ["api", "v1", rest @ ..] => resource(&r, "", "v1", rest, shared, shutdown),
        ["apis", g, v, rest @ ..] => resource(&r, g, v, rest, shared, shutdown),
        _ => Err(ApiError::not_found_path()),
    }
}

/// Refuses, with the apiserver's 403, a request RBAC does not allow its identity. Runs before
/// the body is read, so a refused request changes nothing.
fn authorize(r: &Req, t: &Target, legacy_watch: bool, shared: &Shared) -> Result<(), ApiError> {
    let Some(who) = &r.identity else {
        return Ok(());
    };
    let watch = legacy_watch || truthy(&r.query, "watch");
    let (def, namespace, name, subresource, verb) = match *t {
        Target::Collection(def, ns) => {
            let verb = match r.method {
                Method::GET if watch => "watch",
                Method::GET => "list",
                Method::POST => "create",
                Method::DELETE => "deletecollection",
                // Not a verb of any rule: the route answers 405.
                _ => return Ok(()),
            };
            (def, ns.unwrap_or(""), None, None, verb)
        }
        Target::Item(def, ns, name, sub) => {
            let verb = match r.method {
                Method::GET if watch => "watch",
                Method::GET => "get",
                Method::PUT => "update",
                Method::PATCH => "patch",
                Method::DELETE => "delete",
                Method::POST => "create",
                _ => return Ok(()),
            };
            // A namespace's own name is its scope.
            let scope = if *def == NAMESPACES { name } else { ns };
            (def, scope, Some(name), sub, verb)
        }
    };
    let a = crate::rbac::Attributes {
        verb,
        group: def.group,
        resource: def.plural,
        subresource,
        namespace,
        name,
    };
    if crate::rbac::allowed(&shared.lock(), who, &a) {
        Ok(())
    } else {
        Err(crate::rbac::forbidden(def, who, &a))
    }
}

/// Where a request under a group/version points.
enum Target<'a> {
    Collection(&'static ResourceDef, Option<&'a str>),
    Item(&'static ResourceDef, &'a str, &'a str, Option<&'a str>),
}

fn target<'a>(group: &str, version: &str, rest: &[&'a str]) -> Result<Target<'a>, ApiError> {
    let find = |p: &str| resources::lookup(group, version, p).ok_or_else(ApiError::not_found_path);
    let is_ns_sub = |s: &str| s == "status" || s == "finalize";
    match rest {
        [p] => Ok(Target::Collection(find(p)?, None)),
        ["namespaces", name, sub] if group.is_empty() && is_ns_sub(sub) => {
            Ok(Target::Item(&NAMESPACES, "", name, Some(sub)))
        }
        ["namespaces", ns, p] if find(p)?.namespaced => Ok(Target::Collection(find(p)?, Some(ns))),
        ["namespaces", ns, p, name] if find(p)?.namespaced => {
            Ok(Target::Item(find(p)?, ns, name, None))
        }
        ["namespaces", ns, p, name, sub] if find(p)?.namespaced => {
            Ok(Target::Item(find(p)?, ns, name, Some(sub)))
        }
        [p, name] if !find(p)?.namespaced => Ok(Target::Item(find(p)?, "", name, None)),
        [p, name, sub] if !find(p)?.namespaced => Ok(Target::Item(find(p)?, "", name, Some(sub))),
        _ => Err(ApiError::not_found_path()),
    }
}

fn resource(
    r: &Req,
    group: &str,
    version: &str,
    rest: &[&str],
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let (rest, legacy_watch) = match rest {
        ["watch", tail @ ..] => (tail, true),
        _ => (rest, false),
    };
    let t = target(group, version, rest)?;
    authorize(r, &t, legacy_watch, &shared)?;
    match t {
        Target::Collection(def, ns) => match r.method {
            Method::GET => {
                let filter = filter_from(r, ns)?;
                if legacy_watch || truthy(&r.query, "watch") {
                    watch_resp(r, def, filter, shared, shutdown)
                } else {
                    list_resp(r, def, &filter, &shared)
                }
            }
            Method::POST => {
                if def.namespaced && ns.is_none() {
                    return Err(ApiError::method_not_allowed(
                        "POST to a namespaced collection needs a namespace in the path",
                    ));
                }
                let body = r.body_json()?;
                let obj = shared
                    .lock()
                    .create(def, ns.unwrap_or(""), body, r.dry_run())?;
                Ok(json_resp(201, &obj))
            }
            Method::DELETE => {
                let filter = filter_from(r, ns)?;
                let opts = delete_opts(r)?;
                let mut store = shared.lock();
                let items = store.list(def, &filter);
                let mut out = Vec::new();
                for o in items {
                    let name = crate::util::str_at(&o, "metadata.name").to_string();
                    let ns = crate::util::str_at(&o, "metadata.namespace").to_string();
                    if let Ok((o, _)) = store.delete(def, &ns, &name, &opts) {
                        out.push(o);
                    }
                }
                let rv = store.rv;
                drop(store);
                Ok(full(
                    200,
                    "application/json",
                    list_bytes(def, &out, rv, None),
                ))
            }
            _ => Err(ApiError::method_not_allowed(
                "method not allowed on a collection",
            )),
        },
        Target::Item(def, ns, name, sub) => item(r, def, ns, name, sub, &shared),
    }
}

fn filter_from(r: &Req, ns: Option<&str>) -> Result<Filter, ApiError> {
    let labels = LabelSelector::parse(r.query.get("labelSelector").map_or("", String::as_str))
        .map_err(|e| ApiError::bad_request(format!("unable to parse requirement: {e}")))?;
    let fields = FieldSelector::parse(r.query.get("fieldSelector").map_or("", String::as_str))
        .map_err(ApiError::bad_request)?;
    Ok(Filter {
        namespace: ns.map(str::to_string),
        labels,
        fields,
    })
}

fn delete_opts(r: &Req) -> Result<DeleteOpts, ApiError> {
    let mut opts = match r.body_json()? {
        Value::Null => DeleteOpts::default(),
        v => DeleteOpts::from_json(&v),
    };
    if let Some(g) = r.query.get("gracePeriodSeconds") {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(opts)
}

fn list_kind(def: &ResourceDef) -> String {
    format!("{}List", def.kind)
}

/// A list body assembled from per-item serializations (no intermediate `Value`).
fn list_bytes(def: &ResourceDef, items: &[Obj], rv: u64, cont: Option<(String, usize)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + items.len() * 1024);
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rv}\"",
            list_kind(def),
            def.api_version()
        )
        .as_bytes(),
    );
    if let Some((token, remaining)) = cont {
        out.extend_from_slice(
            format!(",\"continue\":\"{token}\",\"remainingItemCount\":{remaining}").as_bytes(),
        );
    }
    out.extend_from_slice(b"},\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, &**o);
    }
    out.extend_from_slice(b"]}");
    out
}

fn include_mode(r: &Req) -> table::Include {
    match r.query.get("includeObject").map(String::as_str) {
        Some("None") => table::Include::None,
        Some("Object") => table::Include::Object,
        _ => table::Include::Metadata,
    }
}

fn list_resp(
    r: &Req,
    def: &ResourceDef,
    filter: &Filter,
    shared: &Shared,
) -> Result<Response<Body>, ApiError> {
    let (mut items, rv) = {
        let store = shared.lock();
        (store.list(def, filter), store.rv)
    };
    // Paging: the continue token is the offset into the sorted list.
    let offset: usize = match r.query.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => c
            .split_once('-')
            .and_then(|(_, o)| o.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid continue token"))?,
        None => 0,
    };
    let limit: usize = r
        .query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut cont = None;
    if offset > 0 {
        items.drain(..offset.min(items.len()));
    }
    if limit > 0 && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        cont = Some((format!("{rv}-{}", offset + limit), remaining));
    }
    if r.wants_table() {
        let mut t = table::render(def, &items, rv, include_mode(r));
        if let Some((token, remaining)) = cont {
            t["metadata"]["continue"] = json!(token);
            t["metadata"]["remainingItemCount"] = json!(remaining);
        }
        return Ok(json_resp(200, &t));
    }
    Ok(full(
        200,
        "application/json",
        list_bytes(def, &items, rv, cont),
    ))
}

fn patch_type(ct: &str) -> Result<PatchType, ApiError> {
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/json-patch+json" => Ok(PatchType::Json),
        // Server-side apply, approximated as a merge patch that may create (see README).
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn item(
    r: &Req,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    shared: &Shared,
) -> Result<Response<Body>, ApiError> {
    let status_only = match sub {
        None => false,
        Some("status") => true,
        Some("eviction") if *def == PODS => {
            if r.method != Method::POST {
                return Err(ApiError::method_not_allowed("eviction accepts POST only"));
            }
            let body = r.body_json()?;
            shared.lock().evict(ns, name, &body, r.dry_run())?;
            return Ok(json_resp(201, &status::success(201, None)));
        }
        Some("finalize") if *def == NAMESPACES => false,
        Some("scale") if matches!(def.plural, "deployments" | "replicasets") => {
            return scale(r, def, ns, name, shared);
        }
        Some(_) => return Err(ApiError::not_found_path()),
    };
    match r.method {
        Method::GET => {
            let (obj, rv) = {
                let store = shared.lock();
                (store.get(def, ns, name)?, store.rv)
            };
            if r.wants_table() {
                return Ok(json_resp(
                    200,
                    &table::render(def, &[obj], rv, include_mode(r)),
                ));
            }
            Ok(json_resp(200, &obj))
        }
        Method::PUT => {
            let body = r.body_json()?;
            let obj = shared
                .lock()
                .update(def, ns, name, body, status_only, r.dry_run())?;
            Ok(json_resp(200, &obj))
        }
        Method::PATCH => {
            let kind = patch_type(&r.content_type)?;
            let body = r.body_json()?;
            if kind == PatchType::Apply && !status_only {
                let mut store = shared.lock();
                if store.get_obj(def, ns, name).is_none() {
                    let mut obj = body;
                    crate::util::obj_mut(&mut obj, "metadata")["name"] = json!(name);
                    let created = store.create(def, ns, obj, r.dry_run())?;
                    return Ok(json_resp(201, &created));
                }
            }
            let obj = shared
                .lock()
                .patch(def, ns, name, kind, &body, status_only, r.dry_run())?;
            Ok(json_resp(200, &obj))
        }
        Method::DELETE if !status_only => {
            let opts = delete_opts(r)?;
            if r.dry_run() {
                let obj = shared.lock().get(def, ns, name)?;
                return Ok(json_resp(200, &obj));
            }
            let (obj, gone) = shared.lock().delete(def, ns, name, &opts)?;
            if gone && *def != PODS {
                let details = json!({"name": name, "group": def.group, "kind": def.plural,
                    "uid": crate::util::str_at(&obj, "metadata.uid")});
                return Ok(json_resp(200, &status::success(200, Some(details))));
            }
            Ok(json_resp(200, &obj))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({})",
            r.method
        ))),
    }
}

/// The `autoscaling/v1` Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = crate::util::path(obj, "spec.selector.matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": crate::util::path(obj, "spec.replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": crate::util::path(obj, "status.replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// The `scale` subresource (`kubectl scale`): GET, PUT and PATCH of `spec.replicas`.
fn scale(
    r: &Req,
    def: &'static ResourceDef,
    ns: &str,
    name: &str,
    shared: &Shared,
) -> Result<Response<Body>, ApiError> {
    let mut store = shared.lock();
    let current = store.get(def, ns, name)?;
    let old = scale_of(&current);
    let new = match r.method {
        Method::GET => return Ok(json_resp(200, &old)),
        Method::PUT => r.body_json()?,
        Method::PATCH => {
            let mut v = old.clone();
            let body = r.body_json()?;
            match patch_type(&r.content_type)? {
                PatchType::Json => crate::patch::json_patch(&mut v, &body)
                    .map_err(|e| ApiError::new(422, "Invalid", e))?,
                PatchType::Strategic => {
                    crate::patch::strategic_merge(&mut v, &body).map_err(ApiError::bad_request)?
                }
                PatchType::Merge | PatchType::Apply => crate::patch::merge_patch(&mut v, &body),
            }
            v
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "scale accepts GET, PUT and PATCH",
            ))
        }
    };
    let want_rv = crate::util::str_at(&new, "metadata.resourceVersion");
    if !want_rv.is_empty() && want_rv != crate::util::str_at(&current, "metadata.resourceVersion") {
        return Err(ApiError::stale(def, name));
    }
    let replicas = crate::util::path(&new, "spec.replicas")
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            ApiError::invalid(
                def,
                name,
                "spec.replicas: Invalid value: must be greater than or equal to 0",
            )
        })?;
    let updated = store.patch(
        def,
        ns,
        name,
        PatchType::Merge,
        &json!({"spec": {"replicas": replicas}}),
        false,
        r.dry_run(),
    )?;
    Ok(json_resp(200, &scale_of(&updated)))
}

// ----- watch -----

struct WatchStream {
    shared: Arc<Shared>,
    def: &'static ResourceDef,
    filter: Arc<Filter>,
    sub: Subscription,
    pending: VecDeque<Bytes>,
    last_rv: u64,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    next_bookmark: tokio::time::Instant,
    shutdown: watch::Receiver<bool>,
    done: bool,
    table: Option<table::Include>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.shared.lock().unwatch(self.sub.id);
    }
}

fn event_line(t: &str, obj_json: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(obj_json.len() + 32);
    v.extend_from_slice(b"{\"type\":\"");
    v.extend_from_slice(t.as_bytes());
    v.extend_from_slice(b"\",\"object\":");
    v.extend_from_slice(obj_json);
    v.extend_from_slice(b"}\n");
    Bytes::from(v)
}

fn bookmark_line(def: &ResourceDef, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    let obj = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": meta});
    event_line("BOOKMARK", &serde_json::to_vec(&obj).unwrap_or_default())
}

fn error_line(e: &ApiError) -> Bytes {
    event_line(
        "ERROR",
        &serde_json::to_vec(&e.to_status()).unwrap_or_default(),
    )
}

impl WatchStream {
    /// One event line: the object as JSON, or as a one-row Table for `kubectl get -w`.
    fn line(&self, t: EventType, obj: &Obj, json: &[u8]) -> Bytes {
        match self.table {
            Some(include) => {
                let table =
                    table::render(self.def, std::slice::from_ref(obj), self.last_rv, include);
                event_line(t.as_str(), &serde_json::to_vec(&table).unwrap_or_default())
            }
            None => event_line(t.as_str(), json),
        }
    }

    fn queue_backlog(&mut self) {
        for (t, ev) in std::mem::take(&mut self.sub.backlog) {
            if ev.rv > self.last_rv {
                self.last_rv = ev.rv;
                let line = self.line(t, &ev.obj, &ev.json);
                self.pending.push_back(line);
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            tokio::select! {
                msg = self.sub.rx.recv() => match msg {
                    Some((t, ev)) => {
                        if ev.rv > self.last_rv {
                            let latency = self.shared.watch_latency;
                            if !latency.is_zero() {
                                tokio::time::sleep_until((ev.at + latency).into()).await;
                            }
                            self.last_rv = ev.rv;
                            return Some(self.line(t, &ev.obj, &ev.json));
                        }
                    }
                    None => {
                        if !self.sub.lagged.load(Ordering::Acquire) {
                            self.done = true;
                            continue;
                        }
                        // Fell behind: resume from the history after the last event sent.
                        let res = self.shared.lock().watch(self.def, self.filter.clone(), Some(self.last_rv));
                        match res {
                            Ok(sub) => {
                                let old = std::mem::replace(&mut self.sub, sub);
                                self.shared.lock().unwatch(old.id);
                                self.queue_backlog();
                            }
                            Err(e) => {
                                self.done = true;
                                self.pending.push_back(error_line(&e));
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(self.deadline) => {
                    self.done = true;
                }
                _ = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                    let every = self.shared.bookmark_interval;
                    self.next_bookmark = tokio::time::Instant::now() + every;
                    let rv = self.shared.lock().rv;
                    // Everything committed up to `rv` is already queued for us: send it first.
                    while let Ok((t, ev)) = self.sub.rx.try_recv() {
                        if ev.rv > self.last_rv {
                            let latency = self.shared.watch_latency;
                            if !latency.is_zero() {
                                tokio::time::sleep_until((ev.at + latency).into()).await;
                            }
                            self.last_rv = ev.rv;
                            let line = self.line(t, &ev.obj, &ev.json);
                self.pending.push_back(line);
                        }
                    }
                    if rv > self.last_rv {
                        self.last_rv = rv;
                    }
                    self.pending.push_back(bookmark_line(self.def, self.last_rv, false));
                }
                _ = self.shutdown.changed() => {
                    self.done = true;
                }
            }
        }
    }
}

fn watch_resp(
    r: &Req,
    def: &'static ResourceDef,
    filter: Filter,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Response<Body>, ApiError> {
    let rv = match r.query.get("resourceVersion").map(String::as_str) {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s}")))?,
        ),
    };
    let send_initial = r.query.get("sendInitialEvents").map(String::as_str);
    let rv = match send_initial {
        Some("true") => None,
        _ => rv,
    };
    let bookmarks = truthy(&r.query, "allowWatchBookmarks");
    let timeout = r
        .query
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let filter = Arc::new(filter);
    let sub = shared.lock().watch(def, filter.clone(), rv);
    let now = tokio::time::Instant::now();
    let mut pending = VecDeque::new();
    let sub = match sub {
        Ok(s) => s,
        Err(e) if e.code == 410 && shared.watch_gone == WatchGone::HttpStatus => return Err(e),
        Err(e) => {
            pending.push_back(error_line(&e));
            let body = StreamBody::new(stream::iter(
                pending
                    .into_iter()
                    .map(|b| Ok::<_, Infallible>(Frame::data(b))),
            ));
            return Ok(Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(body.boxed_unsync())
                .expect("valid response"));
        }
    };
    let table_mode = r.wants_table().then(|| include_mode(r));
    for o in &sub.initial {
        let json = match table_mode {
            Some(include) => serde_json::to_vec(&table::render(
                def,
                std::slice::from_ref(o),
                sub.rv,
                include,
            )),
            None => serde_json::to_vec(&**o),
        };
        pending.push_back(event_line(
            EventType::Added.as_str(),
            &json.unwrap_or_default(),
        ));
    }
    if send_initial == Some("true") && bookmarks {
        pending.push_back(bookmark_line(def, sub.rv, true));
    }
    let mut ws = WatchStream {
        last_rv: sub.rv,
        shared: shared.clone(),
        def,
        filter,
        sub,
        pending,
        deadline: now + timeout,
        bookmarks,
        next_bookmark: now + shared.bookmark_interval,
        shutdown,
        done: false,
        table: table_mode,
    };
    ws.queue_backlog();
    let s = stream::unfold(ws, |mut ws| async move {
        ws.next_chunk()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), ws))
    });
    Ok(Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(StreamBody::new(s).boxed_unsync())
        .expect("valid response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "fieldSelector=spec.nodeName%3Dn1&labelSelector=a+in+(b)&watch",
        ));
        assert_eq!(q["fieldSelector"], "spec.nodeName=n1");
        assert_eq!(q["labelSelector"], "a in (b)");
        assert_eq!(q["watch"], "");
    }
}
