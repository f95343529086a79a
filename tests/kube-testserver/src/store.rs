//! The in-memory object store: one table per resource type, the cluster-wide resourceVersion,
//! the watch event history and the registry of live watches. Every API verb ends in
//! [`Store::commit`] or [`Store::remove`], which bump the resourceVersion, record the event and
//! hand it to the matching watches. This module does not speak HTTP and runs no timers itself;
//! the controllers module drives time.

use crate::patch;
use crate::resources::{self, ResourceDef, NAMESPACES, NODES, PODS};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::util;
use bytes::Bytes;
use serde_json::{json, Value};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);
/// A stored object. Objects are immutable once stored; a change stores a new one.
pub type Obj = Arc<Value>;

/// The type of a watch event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as recorded in the history and sent to watches.
#[derive(Debug)]
pub struct Event {
    pub rid: usize,
    pub rv: u64,
    pub obj: Obj,
    pub old: Option<Obj>,
    pub deleted: bool,
    /// The object serialized once, shared by every watch that sends it.
    pub json: Bytes,
    /// When the write committed (a watch with latency sends the event that much later).
    pub at: Instant,
}

/// What a watch or list selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn matches(&self, obj: &Value) -> bool {
        if let Some(ns) = &self.namespace {
            if util::str_at(obj, "metadata.namespace") != ns {
                return false;
            }
        }
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event type this filter's watch sees for an event, if any: an object that starts or
    /// stops matching is seen as added or deleted, as the apiserver's watch cache does.
    pub fn classify(&self, ev: &Event) -> Option<EventType> {
        let new_m = self.matches(&ev.obj);
        if ev.deleted {
            return new_m.then_some(EventType::Deleted);
        }
        match &ev.old {
            None => new_m.then_some(EventType::Added),
            Some(old) => match (self.matches(old), new_m) {
                (true, true) => Some(EventType::Modified),
                (false, true) => Some(EventType::Added),
                (true, false) => Some(EventType::Deleted),
                (false, false) => None,
            },
        }
    }
}

/// A message to a watch.
pub type WatchMsg = (EventType, Arc<Event>);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Route {
    All,
    Node(String),
    Name(String),
}

struct Watcher {
    rid: usize,
    route: Route,
    filter: Arc<Filter>,
    tx: mpsc::Sender<WatchMsg>,
    lagged: Arc<AtomicBool>,
}

#[derive(Default)]
struct Routes {
    all: HashSet<u64>,
    node: HashMap<String, HashSet<u64>>,
    name: HashMap<String, HashSet<u64>>,
}

/// A registered watch, as its stream holds it.
#[derive(Debug)]
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<WatchMsg>,
    pub lagged: Arc<AtomicBool>,
    /// Events the watch must send before anything from `rx`.
    pub backlog: Vec<WatchMsg>,
    /// Objects for synthetic ADDED events (initial state).
    pub initial: Vec<Obj>,
    /// The resourceVersion the stream starts after.
    pub rv: u64,
}

/// Things that happen at a time.
#[derive(Debug, Clone)]
pub enum Timer {
    /// A pod's containers are up: Running and Ready.
    PodStart(Key, String),
    /// A terminating pod's grace period is over.
    PodRemove(Key, String),
    /// A rebooting node is back.
    NodeUp(String),
}

/// Tunables of the simulated cluster.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long a scheduled pod takes to become Running and Ready.
    pub pod_start_delay: Duration,
    /// Events kept for watches that resume from a resourceVersion.
    pub history_size: usize,
    /// Per-watch queue; a watch that falls further behind resumes from the history.
    pub watch_queue: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            pod_start_delay: Duration::from_millis(500),
            history_size: 10_000,
            watch_queue: 1024,
        }
    }
}

/// `DeleteOptions` as far as this server honours them.
#[derive(Debug, Clone, Default)]
pub struct DeleteOpts {
    pub grace_period_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOpts {
    pub fn from_json(v: &Value) -> Self {
        Self {
            grace_period_seconds: v.get("gracePeriodSeconds").and_then(Value::as_i64),
            uid: util::path(v, "preconditions.uid")
                .and_then(Value::as_str)
                .map(str::to_string),
            resource_version: util::path(v, "preconditions.resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }
}

/// The kinds of patch the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    /// Server-side apply bodies, applied as a JSON merge patch (no field ownership).
    Apply,
    Strategic,
    Json,
}

/// The whole cluster state. Guarded by one mutex in [`crate::Shared`].
pub struct Store {
    pub rv: u64,
    tables: Vec<BTreeMap<Key, Obj>>,
    pods_by_node: HashMap<String, BTreeSet<Key>>,
    /// Pod names by namespace and `key=value` label, for PodDisruptionBudget selectors.
    pod_labels: HashMap<String, HashMap<String, BTreeSet<String>>>,
    /// Pods waiting for the scheduler.
    pub unbound_pods: BTreeSet<Key>,
    /// PodDisruptionBudgets whose status may have changed.
    pub dirty_pdbs: BTreeSet<Key>,
    /// Set when a node was removed (pod garbage collection has work).
    pub nodes_removed: bool,
    /// Set when a Deployment, ReplicaSet or DaemonSet was removed (garbage collection).
    pub owners_removed: bool,
    history: VecDeque<Arc<Event>>,
    compacted_rv: u64,
    watchers: HashMap<u64, Watcher>,
    routes: Vec<Routes>,
    next_id: u64,
    /// Set when controllers have something to reconcile.
    pub dirty: bool,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_jobs: HashMap<u64, Timer>,
    pub opts: StoreOptions,
}

impl Store {
    pub fn new(opts: StoreOptions) -> Self {
        let mut s = Self {
            rv: 1,
            tables: resources::ALL.iter().map(|_| BTreeMap::new()).collect(),
            pods_by_node: HashMap::new(),
            pod_labels: HashMap::new(),
            unbound_pods: BTreeSet::new(),
            dirty_pdbs: BTreeSet::new(),
            nodes_removed: false,
            owners_removed: false,
            history: VecDeque::new(),
            compacted_rv: 1,
            watchers: HashMap::new(),
            routes: resources::ALL.iter().map(|_| Routes::default()).collect(),
            next_id: 1,
            dirty: false,
            timers: BinaryHeap::new(),
            timer_jobs: HashMap::new(),
            opts,
        };
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            s.create(&NAMESPACES, "", json!({"metadata": {"name": ns}}), false)
                .expect("fresh store");
        }
        s
    }

    // ----- reads -----

    pub fn get_obj(&self, def: &ResourceDef, ns: &str, name: &str) -> Option<&Obj> {
        self.tables[resources::id(def)].get(&(ns.to_string(), name.to_string()))
    }

    pub fn get(&self, def: &ResourceDef, ns: &str, name: &str) -> Result<Obj, ApiError> {
        self.get_obj(def, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(def, name))
    }

    /// Every object of a type (for controllers).
    pub fn all(&self, def: &ResourceDef) -> impl Iterator<Item = &Obj> {
        self.tables[resources::id(def)].values()
    }

    /// Objects of a type in one namespace.
    pub fn in_namespace<'a>(
        &'a self,
        def: &ResourceDef,
        ns: &'a str,
    ) -> impl Iterator<Item = &'a Obj> + 'a {
        self.tables[resources::id(def)]
            .range((ns.to_string(), String::new())..)
            .take_while(move |((n, _), _)| n == ns)
            .map(|(_, v)| v)
    }

    /// Keys of the pods bound to a node.
    pub fn pods_on_node(&self, node: &str) -> Vec<Key> {
        self.pods_by_node
            .get(node)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn pod_count_on_node(&self, node: &str) -> usize {
        self.pods_by_node.get(node).map_or(0, BTreeSet::len)
    }

    pub fn list(&self, def: &ResourceDef, filter: &Filter) -> Vec<Obj> {
        let rid = resources::id(def);
        let matching = |o: &&Obj| filter.matches(o);
        if *def == PODS {
            if let Some(node) = filter.fields.required("spec.nodeName") {
                return self
                    .pods_by_node
                    .get(node)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| self.tables[rid].get(k))
                    .filter(matching)
                    .cloned()
                    .collect();
            }
        }
        if let Some(name) = filter.fields.required("metadata.name") {
            let ns = filter.namespace.clone().unwrap_or_default();
            if filter.namespace.is_some() || !def.namespaced {
                return self.tables[rid]
                    .get(&(ns, name.to_string()))
                    .into_iter()
                    .filter(matching)
                    .cloned()
                    .collect();
            }
        }
        match &filter.namespace {
            Some(ns) if def.namespaced => self
                .in_namespace(def, ns)
                .filter(matching)
                .cloned()
                .collect(),
            _ => self.tables[rid]
                .values()
                .filter(matching)
                .cloned()
                .collect(),
        }
    }

    // ----- the two primitive writes -----

    /// Stores an object with a new resourceVersion and emits its event.
    pub fn commit(&mut self, def: &ResourceDef, mut obj: Value) -> Obj {
        let rid = resources::id(def);
        self.rv += 1;
        let rv = self.rv;
        util::obj_mut(&mut obj, "metadata")["resourceVersion"] = json!(rv.to_string());
        let key = (
            util::str_at(&obj, "metadata.namespace").to_string(),
            util::str_at(&obj, "metadata.name").to_string(),
        );
        let obj = Arc::new(obj);
        let old = self.tables[rid].insert(key.clone(), obj.clone());
        self.after_write(def, &key, old.as_ref(), Some(&obj));
        self.emit(Event {
            rid,
            rv,
            json: Bytes::from(serde_json::to_vec(&*obj).unwrap_or_default()),
            obj: obj.clone(),
            old,
            deleted: false,
            at: Instant::now(),
        });
        obj
    }

    /// Removes an object for good and emits its DELETED event.
    pub fn remove(&mut self, def: &ResourceDef, key: &Key) -> Option<Obj> {
        let rid = resources::id(def);
        let old = self.tables[rid].remove(key)?;
        self.rv += 1;
        let rv = self.rv;
        let mut last = (*old).clone();
        util::obj_mut(&mut last, "metadata")["resourceVersion"] = json!(rv.to_string());
        let last = Arc::new(last);
        self.after_write(def, key, Some(&old), None);
        self.emit(Event {
            rid,
            rv,
            json: Bytes::from(serde_json::to_vec(&*last).unwrap_or_default()),
            obj: last.clone(),
            old: Some(old),
            deleted: true,
            at: Instant::now(),
        });
        Some(last)
    }

    fn after_write(&mut self, def: &ResourceDef, key: &Key, old: Option<&Obj>, new: Option<&Obj>) {
        if *def == PODS {
            let old_node = old.map_or("", |o| util::str_at(o, "spec.nodeName"));
            let new_node = new.map_or("", |o| util::str_at(o, "spec.nodeName"));
            if old_node != new_node || new.is_none() {
                if let Some(set) = self.pods_by_node.get_mut(old_node) {
                    set.remove(key);
                    if set.is_empty() {
                        self.pods_by_node.remove(old_node);
                    }
                }
            }
            if !new_node.is_empty() && new.is_some() {
                self.pods_by_node
                    .entry(new_node.to_string())
                    .or_default()
                    .insert(key.clone());
            }
            if let Some(p) = new {
                let bound_now = !new_node.is_empty()
                    && (old_node.is_empty()
                        || util::str_at(old.expect("bound before"), "metadata.uid")
                            != util::str_at(p, "metadata.uid"));
                let pending = matches!(util::str_at(p, "status.phase"), "" | "Pending");
                if bound_now && pending && util::path(p, "metadata.deletionTimestamp").is_none() {
                    let delay = self.opts.pod_start_delay;
                    self.schedule(
                        delay,
                        Timer::PodStart(key.clone(), util::str_at(p, "metadata.uid").into()),
                    );
                }
            }
            match new {
                Some(p)
                    if new_node.is_empty()
                        && util::path(p, "metadata.deletionTimestamp").is_none() =>
                {
                    self.unbound_pods.insert(key.clone());
                }
                _ => {
                    self.unbound_pods.remove(key);
                }
            }
            let old_labels = old.and_then(|o| util::path(o, "metadata.labels"));
            let new_labels = new.and_then(|o| util::path(o, "metadata.labels"));
            if old_labels != new_labels || old.is_none() || new.is_none() {
                self.index_labels(&key.0, &key.1, old_labels.cloned(), new_labels.cloned());
            }
            let relevant = match (old, new) {
                (Some(o), Some(n)) => pod_fingerprint(o) != pod_fingerprint(n),
                _ => true,
            };
            if relevant {
                self.dirty = true;
                let empty = Value::Null;
                let (ol, nl) = (old_labels.unwrap_or(&empty), new_labels.unwrap_or(&empty));
                let hit: Vec<Key> = self
                    .in_namespace(&resources::PDBS, &key.0)
                    .filter(|pdb| {
                        util::path(pdb, "spec.selector")
                            .and_then(LabelSelector::from_object)
                            .is_some_and(|sel| sel.matches_labels(ol) || sel.matches_labels(nl))
                    })
                    .map(|pdb| {
                        (
                            key.0.clone(),
                            util::str_at(pdb, "metadata.name").to_string(),
                        )
                    })
                    .collect();
                self.dirty_pdbs.extend(hit);
            }
        } else if *def == resources::PDBS {
            if new.is_some() {
                self.dirty_pdbs.insert(key.clone());
                self.dirty = true;
            }
        } else if !matches!(def.plural, "configmaps" | "events" | "leases") {
            if *def == NODES && new.is_none() {
                self.nodes_removed = true;
            }
            if new.is_none() && matches!(def.plural, "deployments" | "replicasets" | "daemonsets") {
                self.owners_removed = true;
            }
            self.dirty = true;
        }
    }

    fn index_labels(&mut self, ns: &str, name: &str, old: Option<Value>, new: Option<Value>) {
        let pairs = |v: &Option<Value>| -> Vec<String> {
            v.as_ref()
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        };
        let by_label = self.pod_labels.entry(ns.to_string()).or_default();
        for kv in pairs(&old) {
            if let Some(set) = by_label.get_mut(&kv) {
                set.remove(name);
                if set.is_empty() {
                    by_label.remove(&kv);
                }
            }
        }
        for kv in pairs(&new) {
            by_label.entry(kv).or_default().insert(name.to_string());
        }
    }

    /// Pods of a namespace a selector object picks, using the label index when the selector
    /// has `matchLabels`.
    pub fn pods_matching(&self, ns: &str, selector: &Value) -> Vec<Obj> {
        let Some(sel) = LabelSelector::from_object(selector) else {
            return Vec::new();
        };
        let first = selector
            .get("matchLabels")
            .and_then(Value::as_object)
            .and_then(|m| m.iter().next());
        match first {
            Some((k, v)) => {
                let kv = format!("{k}={}", v.as_str().unwrap_or(""));
                self.pod_labels
                    .get(ns)
                    .and_then(|m| m.get(&kv))
                    .into_iter()
                    .flatten()
                    .filter_map(|n| self.get_obj(&PODS, ns, n))
                    .filter(|p| sel.matches(p))
                    .cloned()
                    .collect()
            }
            None => self
                .in_namespace(&PODS, ns)
                .filter(|p| sel.matches(p))
                .cloned()
                .collect(),
        }
    }

    fn emit(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        let routes = &self.routes[ev.rid];
        let mut ids: Vec<u64> = routes.all.iter().copied().collect();
        let node_new = util::str_at(&ev.obj, "spec.nodeName");
        let node_old = ev
            .old
            .as_ref()
            .map_or("", |o| util::str_at(o, "spec.nodeName"));
        if let Some(s) = routes.node.get(node_new) {
            ids.extend(s.iter().copied());
        }
        if node_old != node_new {
            if let Some(s) = routes.node.get(node_old) {
                ids.extend(s.iter().copied());
            }
        }
        if let Some(s) = routes.name.get(util::str_at(&ev.obj, "metadata.name")) {
            ids.extend(s.iter().copied());
        }
        let mut dead = Vec::new();
        for id in ids {
            let Some(w) = self.watchers.get(&id) else {
                continue;
            };
            let Some(t) = w.filter.classify(&ev) else {
                continue;
            };
            if let Err(e) = w.tx.try_send((t, ev.clone())) {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    w.lagged.store(true, Ordering::Release);
                }
                dead.push(id);
            }
        }
        for id in dead {
            self.unwatch(id);
        }
        self.history.push_back(ev);
        while self.history.len() > self.opts.history_size {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
    }

    // ----- watches -----

    /// Registers a watch. `rv` is the resourceVersion parameter: `None`/"0" start with the
    /// current state as ADDED events; a number resumes after it from the history, or fails with
    /// 410 Gone when the history no longer reaches back that far.
    pub fn watch(
        &mut self,
        def: &ResourceDef,
        filter: Arc<Filter>,
        rv: Option<u64>,
    ) -> Result<Subscription, ApiError> {
        let rid = resources::id(def);
        if let Some(n) = rv.filter(|n| *n > self.rv) {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!(
                    "Timeout: Too large resource version: {n}, current: {}",
                    self.rv
                ),
            ));
        }
        let (backlog, initial) = match rv {
            None | Some(0) => (Vec::new(), self.list(def, &filter)),
            Some(n) => (self.replay(rid, &filter, n)?, Vec::new()),
        };
        let route = if let Some(node) = filter.fields.required("spec.nodeName") {
            Route::Node(node.to_string())
        } else if let Some(name) = filter.fields.required("metadata.name") {
            Route::Name(name.to_string())
        } else {
            Route::All
        };
        let id = self.next_id;
        self.next_id += 1;
        let (tx, rx) = mpsc::channel(self.opts.watch_queue);
        let lagged = Arc::new(AtomicBool::new(false));
        let routes = &mut self.routes[rid];
        match &route {
            Route::All => routes.all.insert(id),
            Route::Node(n) => routes.node.entry(n.clone()).or_default().insert(id),
            Route::Name(n) => routes.name.entry(n.clone()).or_default().insert(id),
        };
        self.watchers.insert(
            id,
            Watcher {
                rid,
                route,
                filter,
                tx,
                lagged: lagged.clone(),
            },
        );
        Ok(Subscription {
            id,
            rx,
            lagged,
            backlog,
            initial,
            rv: rv.filter(|n| *n > 0).unwrap_or(self.rv),
        })
    }

    fn replay(&self, rid: usize, filter: &Filter, after: u64) -> Result<Vec<WatchMsg>, ApiError> {
        if after < self.compacted_rv {
            return Err(ApiError::gone(format!(
                "too old resource version: {after} ({})",
                self.compacted_rv + 1
            )));
        }
        let start = self.history.partition_point(|e| e.rv <= after);
        Ok(self
            .history
            .range(start..)
            .filter(|e| e.rid == rid)
            .filter_map(|e| filter.classify(e).map(|t| (t, e.clone())))
            .collect())
    }

    /// Forgets a watch (its stream ended or fell behind).
    pub fn unwatch(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        let routes = &mut self.routes[w.rid];
        match &w.route {
            Route::All => {
                routes.all.remove(&id);
            }
            Route::Node(n) => {
                if let Some(s) = routes.node.get_mut(n) {
                    s.remove(&id);
                    if s.is_empty() {
                        routes.node.remove(n);
                    }
                }
            }
            Route::Name(n) => {
                if let Some(s) = routes.name.get_mut(n) {
                    s.remove(&id);
                    if s.is_empty() {
                        routes.name.remove(n);
                    }
                }
            }
        }
    }

    /// The changes of one resource still in the history, oldest first (each with the object
    /// before and after), and whether that is every change since the store started: tests
    /// judge a sequence of writes from it.
    pub fn changes(&self, def: &ResourceDef) -> (Vec<Arc<Event>>, bool) {
        let rid = resources::id(def);
        let all = self
            .history
            .iter()
            .filter(|e| e.rid == rid)
            .cloned()
            .collect();
        (all, self.compacted_rv <= 1)
    }

    /// The resourceVersion of the last write.
    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn watch_count(&self) -> usize {
        self.watchers.len()
    }

    // ----- timers -----

    pub fn schedule(&mut self, after: Duration, t: Timer) {
        let id = self.next_id;
        self.next_id += 1;
        self.timers.push(Reverse((Instant::now() + after, id)));
        self.timer_jobs.insert(id, t);
    }

    /// Timers that are due now, in order.
    pub fn due_timers(&mut self, now: Instant) -> Vec<Timer> {
        let mut out = Vec::new();
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if let Some(t) = self.timer_jobs.remove(&id) {
                out.push(t);
            }
        }
        out
    }

    // ----- verbs -----

    fn check_namespace(&self, def: &ResourceDef, ns: &str) -> Result<(), ApiError> {
        if def.namespaced && self.get_obj(&NAMESPACES, "", ns).is_none() {
            return Err(ApiError::not_found(&NAMESPACES, ns));
        }
        Ok(())
    }

    /// Creates an object (POST).
    pub fn create(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        mut body: Value,
        dry_run: bool,
    ) -> Result<Obj, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        check_kind(def, &body)?;
        let ns = if def.namespaced { ns } else { "" };
        let meta = util::obj_mut(&mut body, "metadata");
        let body_ns = meta.get("namespace").and_then(Value::as_str).unwrap_or("");
        if def.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if name.is_empty() {
            let gen = meta
                .get("generateName")
                .and_then(Value::as_str)
                .unwrap_or("");
            if gen.is_empty() {
                return Err(ApiError::invalid(
                    def,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
            name = format!("{gen}{}", util::rand_suffix(5));
        }
        validate_name(def, &name)?;
        self.check_namespace(def, ns)?;
        if self.get_obj(def, ns, &name).is_some() {
            return Err(ApiError::already_exists(def, &name));
        }
        if let Some(m) = meta.as_object_mut() {
            m.insert("name".into(), json!(name));
            if def.namespaced {
                m.insert("namespace".into(), json!(ns));
            } else {
                m.remove("namespace");
            }
            m.insert("uid".into(), json!(util::new_uid()));
            m.insert("creationTimestamp".into(), json!(util::now_rfc3339()));
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("resourceVersion");
            m.remove("selfLink");
            if def.plural != "events" && def.plural != "configmaps" {
                m.insert("generation".into(), json!(1));
            }
        }
        body["apiVersion"] = json!(def.api_version());
        body["kind"] = json!(def.kind);
        apply_defaults(def, &mut body);
        if dry_run {
            return Ok(Arc::new(body));
        }
        Ok(self.commit(def, body))
    }

    /// Replaces an object (PUT), or only its status when `status_only`.
    pub fn update(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        mut body: Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Obj, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object",
            ));
        }
        check_kind(def, &body)?;
        let ns = if def.namespaced { ns } else { "" };
        let old = self.get(def, ns, name)?;
        let body_name = util::str_at(&body, "metadata.name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        let want_rv = util::str_at(&body, "metadata.resourceVersion");
        if !want_rv.is_empty() && want_rv != util::str_at(&old, "metadata.resourceVersion") {
            return Err(ApiError::stale(def, name));
        }
        let want_uid = util::str_at(&body, "metadata.uid");
        if !want_uid.is_empty() && want_uid != util::str_at(&old, "metadata.uid") {
            return Err(ApiError::conflict(
                def,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {want_uid}, UID in object meta: {}",
                    util::str_at(&old, "metadata.uid")
                ),
            ));
        }
        let mut new = if status_only {
            let mut n = (*old).clone();
            n["status"] = body.get("status").cloned().unwrap_or(json!({}));
            n
        } else {
            if def.has_status {
                match old.get("status") {
                    Some(s) => body["status"] = s.clone(),
                    None => {
                        if let Some(m) = body.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            body
        };
        // The server owns these fields; clients cannot change them with an update.
        {
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let meta = util::obj_mut(&mut new, "metadata");
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ] {
                match old_meta.get(f) {
                    Some(v) => meta[f] = v.clone(),
                    None => {
                        if let Some(m) = meta.as_object_mut() {
                            m.remove(f);
                        }
                    }
                }
            }
            meta["name"] = json!(name);
            if def.namespaced {
                meta["namespace"] = json!(ns);
            }
            meta["resourceVersion"] = old_meta["resourceVersion"].clone();
        }
        new["apiVersion"] = json!(def.api_version());
        new["kind"] = json!(def.kind);
        if *def == PODS {
            validate_pod_update(&old, &new)?;
        }
        if spec_of(&new) != spec_of(&old) {
            if let Some(g) = old.get("metadata").and_then(|m| m.get("generation")) {
                new["metadata"]["generation"] = json!(g.as_i64().unwrap_or(1) + 1);
            }
        }
        if new == *old || dry_run {
            return Ok(if dry_run { Arc::new(new) } else { old });
        }
        let deleting = util::path(&new, "metadata.deletionTimestamp").is_some();
        let no_finalizers = util::path(&new, "metadata.finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if deleting && no_finalizers {
            let removable = *def != PODS
                || util::parse_rfc3339(util::str_at(&new, "metadata.deletionTimestamp"))
                    .is_some_and(|t| t <= util::now_secs());
            if removable {
                let key = (ns.to_string(), name.to_string());
                self.commit(def, new);
                return Ok(self.remove(def, &key).expect("just stored"));
            }
        }
        Ok(self.commit(def, new))
    }

    /// Patches an object (PATCH).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        kind: PatchType,
        patch_body: &Value,
        status_only: bool,
        dry_run: bool,
    ) -> Result<Obj, ApiError> {
        let ns = if def.namespaced { ns } else { "" };
        let old = self.get(def, ns, name)?;
        let mut new = (*old).clone();
        match kind {
            PatchType::Merge => patch::merge_patch(&mut new, patch_body),
            PatchType::Apply => {
                let mut body = patch_body.clone();
                // An apply body names the object but must not act as a precondition.
                if let Some(m) = body.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                patch::merge_patch(&mut new, &body)
            }
            PatchType::Strategic => {
                patch::strategic_merge(&mut new, patch_body).map_err(ApiError::bad_request)?
            }
            PatchType::Json => patch::json_patch(&mut new, patch_body).map_err(|e| {
                if e.starts_with("test operation failed") {
                    ApiError::new(422, "Invalid", e)
                } else {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                }
            })?,
        }
        if util::str_at(&new, "metadata.resourceVersion")
            != util::str_at(&old, "metadata.resourceVersion")
        {
            return Err(ApiError::stale(def, name));
        }
        if util::str_at(&new, "metadata.uid") != util::str_at(&old, "metadata.uid") {
            return Err(ApiError::invalid(
                def,
                name,
                "metadata.uid: Invalid value: field is immutable",
            ));
        }
        self.update(def, ns, name, new, status_only, dry_run)
    }
}

impl Store {
    /// Deletes an object (DELETE). Returns the object as it is now and whether it is gone:
    /// pods on a node get a `deletionTimestamp` first and disappear after their grace period,
    /// objects with finalizers wait for them.
    pub fn delete(
        &mut self,
        def: &ResourceDef,
        ns: &str,
        name: &str,
        opts: &DeleteOpts,
    ) -> Result<(Obj, bool), ApiError> {
        let ns = if def.namespaced { ns } else { "" };
        let old = self.get(def, ns, name)?;
        if let Some(uid) = &opts.uid {
            let have = util::str_at(&old, "metadata.uid");
            if uid != have {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {have}"),
                ));
            }
        }
        if let Some(rv) = &opts.resource_version {
            let have = util::str_at(&old, "metadata.resourceVersion");
            if rv != have {
                return Err(ApiError::conflict(
                    def,
                    name,
                    &format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {have}"),
                ));
            }
        }
        let key = (ns.to_string(), name.to_string());
        let has_finalizers = util::path(&old, "metadata.finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty());
        let deleting = util::path(&old, "metadata.deletionTimestamp").is_some();
        let now = util::now_secs();
        if *def == PODS {
            let mut grace = opts.grace_period_seconds.unwrap_or_else(|| {
                util::path(&old, "spec.terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            grace = grace.max(0);
            let phase = util::str_at(&old, "status.phase");
            if util::str_at(&old, "spec.nodeName").is_empty()
                || matches!(phase, "Succeeded" | "Failed")
            {
                grace = 0;
            }
            if deleting {
                let current = util::parse_rfc3339(util::str_at(&old, "metadata.deletionTimestamp"))
                    .unwrap_or(now);
                if grace > 0 && now + grace as f64 >= current {
                    return Ok((old, false));
                }
            }
            if grace == 0 && !has_finalizers {
                return Ok((self.remove(def, &key).expect("exists"), true));
            }
            let mut new = (*old).clone();
            let meta = util::obj_mut(&mut new, "metadata");
            meta["deletionTimestamp"] = json!(util::rfc3339(now + grace as f64));
            meta["deletionGracePeriodSeconds"] = json!(grace);
            let uid = util::str_at(&old, "metadata.uid").to_string();
            let obj = self.commit(def, new);
            self.schedule(
                Duration::from_secs(grace as u64),
                Timer::PodRemove(key, uid),
            );
            return Ok((obj, false));
        }
        if *def == NAMESPACES || has_finalizers {
            if deleting {
                return Ok((old, false));
            }
            let mut new = (*old).clone();
            util::obj_mut(&mut new, "metadata")["deletionTimestamp"] = json!(util::rfc3339(now));
            if *def == NAMESPACES {
                util::obj_mut(&mut new, "status")["phase"] = json!("Terminating");
            }
            return Ok((self.commit(def, new), false));
        }
        Ok((self.remove(def, &key).expect("exists"), true))
    }

    /// The `pods/eviction` subresource: checks the pod's PodDisruptionBudget and deletes the pod
    /// if the budget allows it, as the apiserver's eviction REST handler does.
    pub fn evict(
        &mut self,
        ns: &str,
        name: &str,
        body: &Value,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let pod = self.get(&PODS, ns, name)?;
        let body_name = util::str_at(body, "metadata.name");
        if !body_name.is_empty() && body_name != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object: {name}, {body_name}"
            )));
        }
        let delete_options = body.get("deleteOptions").unwrap_or(&Value::Null);
        let opts = DeleteOpts::from_json(delete_options);
        let dry_run = dry_run
            || delete_options
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v == "All"));
        let phase = util::str_at(&pod, "status.phase");
        let deleting = util::path(&pod, "metadata.deletionTimestamp").is_some();
        if deleting || matches!(phase, "Succeeded" | "Failed" | "Pending") {
            if !dry_run {
                self.delete(&PODS, ns, name, &opts)?;
            }
            return Ok(());
        }
        let labels = util::path(&pod, "metadata.labels")
            .cloned()
            .unwrap_or(Value::Null);
        let pdbs: Vec<Obj> = self
            .in_namespace(&resources::PDBS, ns)
            .filter(|p| {
                p.get("spec")
                    .and_then(|s| s.get("selector"))
                    .and_then(LabelSelector::from_object)
                    .is_some_and(|sel| sel.matches_labels(&labels))
            })
            .cloned()
            .collect();
        if pdbs.len() > 1 {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        if let Some(pdb) = pdbs.first() {
            let pdb_name = util::str_at(pdb, "metadata.name").to_string();
            let st = |f: &str| {
                util::path(pdb, &format!("status.{f}"))
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
            };
            let (current, desired) = (st("currentHealthy"), st("desiredHealthy"));
            let generation = util::path(pdb, "metadata.generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let processed = st("observedGeneration") >= generation;
            if dry_run {
                // Checks only: nothing is decremented or deleted.
                if crate::controllers::pod_ready(&pod) && processed && st("disruptionsAllowed") == 0
                {
                    return Err(ApiError::disruption_budget(format!(
                        "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
                    )));
                }
                return Ok(());
            }
            if !crate::controllers::pod_ready(&pod) {
                let always = util::str_at(pdb, "spec.unhealthyPodEvictionPolicy") == "AlwaysAllow";
                if always || (processed && current >= desired && desired > 0) {
                    self.delete(&PODS, ns, name, &opts)?;
                    return Ok(());
                }
            }
            if !processed {
                return Err(ApiError::disruption_budget(format!(
                    "The disruption budget {pdb_name} is still being processed by the server."
                )));
            }
            let allowed = st("disruptionsAllowed");
            if allowed < 0 {
                return Err(ApiError::new(
                    403,
                    "Forbidden",
                    "pdb disruptions allowed is negative",
                ));
            }
            if allowed == 0 {
                return Err(ApiError::disruption_budget(format!(
                    "The disruption budget {pdb_name} needs {desired} healthy pods and has {current} currently"
                )));
            }
            let mut new = (**pdb).clone();
            let status = util::obj_mut(&mut new, "status");
            status["disruptionsAllowed"] = json!(allowed - 1);
            util::obj_mut(status, "disruptedPods")[name] = json!(util::now_rfc3339());
            self.commit(&resources::PDBS, new);
        }
        if !dry_run {
            self.delete(&PODS, ns, name, &opts)?;
        }
        Ok(())
    }
}

fn check_kind(def: &ResourceDef, body: &Value) -> Result<(), ApiError> {
    let kind = util::str_at(body, "kind");
    let av = util::str_at(body, "apiVersion");
    if !kind.is_empty() && kind != def.kind {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({kind}) does not match the expected kind ({})",
            def.kind
        )));
    }
    if !av.is_empty() && av != def.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            def.api_version()
        )));
    }
    Ok(())
}

fn validate_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    // Events are named `<object>.<hex>` and leases after nodes: same rule.
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            def,
            name,
            &format!("metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ))
    }
}

static NEXT_IP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// An address from 198.18.0.0/15 (reserved for benchmarks): data only, nothing connects to it.
pub fn fake_ip() -> String {
    let n = NEXT_IP.fetch_add(1, Ordering::Relaxed);
    format!(
        "198.{}.{}.{}",
        18 + (n >> 16) % 2,
        (n >> 8) & 0xff,
        (n & 0xff).max(1)
    )
}

/// Fills the defaults the apiserver (and, for nodes, a registering kubelet) would.
fn apply_defaults(def: &ResourceDef, body: &mut Value) {
    let set_default = |v: &mut Value, k: &str, d: Value| {
        if v.get(k).is_none_or(Value::is_null) {
            v[k] = d;
        }
    };
    match def.plural {
        "pods" => {
            let spec = util::obj_mut(body, "spec");
            set_default(spec, "terminationGracePeriodSeconds", json!(30));
            set_default(spec, "restartPolicy", json!("Always"));
            set_default(spec, "schedulerName", json!("default-scheduler"));
            set_default(spec, "dnsPolicy", json!("ClusterFirst"));
            let bound = !util::str_at(spec, "nodeName").is_empty();
            let status = util::obj_mut(body, "status");
            set_default(status, "phase", json!("Pending"));
            if bound && status.get("conditions").is_none() {
                status["conditions"] = json!([{"type": "PodScheduled", "status": "True"}]);
            }
        }
        "nodes" => {
            let status = util::obj_mut(body, "status");
            let has_ready = status
                .get("conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready"));
            if !has_ready {
                status["conditions"] = json!([{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": util::now_rfc3339(),
                    "lastTransitionTime": util::now_rfc3339()
                }]);
            }
            set_default(
                status,
                "addresses",
                json!([{"type": "InternalIP", "address": fake_ip()}]),
            );
            set_default(
                status,
                "nodeInfo",
                json!({
                    "kubeletVersion": "v1.32.0",
                    "osImage": "Debian GNU/Linux 12 (bookworm)",
                    "kernelVersion": "6.1.0-28-cloud-amd64",
                    "containerRuntimeVersion": "containerd://1.7.24",
                    "operatingSystem": "linux",
                    "architecture": "amd64"
                }),
            );
            set_default(
                status,
                "capacity",
                json!({"cpu": "2", "memory": "4Gi", "pods": "110"}),
            );
            set_default(
                status,
                "allocatable",
                json!({"cpu": "2", "memory": "4Gi", "pods": "110"}),
            );
        }
        "namespaces" => {
            set_default(
                util::obj_mut(body, "spec"),
                "finalizers",
                json!(["kubernetes"]),
            );
            set_default(util::obj_mut(body, "status"), "phase", json!("Active"));
        }
        "deployments" => {
            let spec = util::obj_mut(body, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            set_default(
                spec,
                "strategy",
                json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
        }
        "replicasets" => set_default(util::obj_mut(body, "spec"), "replicas", json!(1)),
        "daemonsets" => {
            let spec = util::obj_mut(body, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            );
        }
        _ => {}
    }
}

/// Whether two objects differ outside metadata and status (which bumps `generation`).
fn spec_changed(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a != b;
    };
    let skip = |k: &String| k == "metadata" || k == "status";
    a.iter()
        .filter(|(k, _)| !skip(k))
        .any(|(k, v)| b.get(k) != Some(v))
        || b.keys().filter(|k| !skip(k)).any(|k| !a.contains_key(k))
}

fn spec_of(v: &Value) -> SpecView<'_> {
    SpecView(v)
}

struct SpecView<'a>(&'a Value);

impl PartialEq for SpecView<'_> {
    fn eq(&self, other: &Self) -> bool {
        !spec_changed(self.0, other.0)
    }
}

fn validate_pod_update(old: &Value, new: &Value) -> Result<(), ApiError> {
    let old_node = util::str_at(old, "spec.nodeName");
    if !old_node.is_empty() && util::str_at(new, "spec.nodeName") != old_node {
        return Err(ApiError::invalid(
            &PODS,
            util::str_at(old, "metadata.name"),
            "spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations) or `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
    Ok(())
}

/// The parts of a pod the controllers react to.
fn pod_fingerprint(p: &Value) -> [Option<&Value>; 6] {
    let ready = util::path(p, "status.conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c.get("status"));
    [
        util::path(p, "metadata.deletionTimestamp"),
        util::path(p, "status.phase"),
        ready,
        util::path(p, "spec.nodeName"),
        util::path(p, "metadata.labels"),
        util::path(p, "metadata.ownerReferences"),
    ]
}

/// The key of a cluster-scoped object (a node, a namespace).
pub fn node_key(name: &str) -> Key {
    (String::new(), name.to_string())
}

impl Store {
    /// Removes a namespace's objects and then the namespace (the namespace controller).
    pub fn finish_namespace_deletions(&mut self) {
        let doomed: Vec<String> = self
            .all(&NAMESPACES)
            .filter(|n| util::path(n, "metadata.deletionTimestamp").is_some())
            .map(|n| util::str_at(n, "metadata.name").to_string())
            .collect();
        for ns in doomed {
            for def in resources::ALL.iter().filter(|d| d.namespaced) {
                let keys: Vec<Key> = self
                    .in_namespace(def, &ns)
                    .map(|o| (ns.clone(), util::str_at(o, "metadata.name").to_string()))
                    .collect();
                for k in keys {
                    self.remove(def, &k);
                }
            }
            self.remove(&NAMESPACES, &node_key(&ns));
        }
    }

    /// Whether a node exists and is Ready.
    pub fn node_ready(&self, name: &str) -> bool {
        self.get_obj(&NODES, "", name)
            .is_some_and(|n| crate::controllers::condition_true(n, "Ready"))
    }
}
