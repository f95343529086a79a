//! The catalog of resource types this server serves and the discovery documents kubectl and
//! kube-rs read (`/api`, `/apis`, `/api/v1`, `/apis/<group>/<version>`). It owns names and
//! shapes only; storage and behaviour live elsewhere.

use serde_json::{json, Value};

/// One served resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Whether the type has a `/status` subresource (status is ignored on main updates).
    pub has_status: bool,
}

impl ResourceDef {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `deployments.apps`, as error messages name a resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

macro_rules! def {
    ($g:expr, $v:expr, $p:expr, $s:expr, $k:expr, $ns:expr, $short:expr, $st:expr) => {
        ResourceDef {
            group: $g,
            version: $v,
            plural: $p,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short_names: $short,
            has_status: $st,
        }
    };
}

pub const NAMESPACES: ResourceDef = def!(
    "",
    "v1",
    "namespaces",
    "namespace",
    "Namespace",
    false,
    &["ns"],
    true
);
pub const NODES: ResourceDef = def!("", "v1", "nodes", "node", "Node", false, &["no"], true);
pub const PODS: ResourceDef = def!("", "v1", "pods", "pod", "Pod", true, &["po"], true);
pub const CONFIGMAPS: ResourceDef = def!(
    "",
    "v1",
    "configmaps",
    "configmap",
    "ConfigMap",
    true,
    &["cm"],
    false
);
pub const EVENTS: ResourceDef = def!("", "v1", "events", "event", "Event", true, &["ev"], false);
pub const LEASES: ResourceDef = def!(
    "coordination.k8s.io",
    "v1",
    "leases",
    "lease",
    "Lease",
    true,
    &[],
    false
);
pub const DAEMONSETS: ResourceDef = def!(
    "apps",
    "v1",
    "daemonsets",
    "daemonset",
    "DaemonSet",
    true,
    &["ds"],
    true
);
pub const REPLICASETS: ResourceDef = def!(
    "apps",
    "v1",
    "replicasets",
    "replicaset",
    "ReplicaSet",
    true,
    &["rs"],
    true
);
pub const DEPLOYMENTS: ResourceDef = def!(
    "apps",
    "v1",
    "deployments",
    "deployment",
    "Deployment",
    true,
    &["deploy"],
    true
);
pub const PDBS: ResourceDef = def!(
    "policy",
    "v1",
    "poddisruptionbudgets",
    "poddisruptionbudget",
    "PodDisruptionBudget",
    true,
    &["pdb"],
    true
);

pub const SERVICEACCOUNTS: ResourceDef = def!(
    "",
    "v1",
    "serviceaccounts",
    "serviceaccount",
    "ServiceAccount",
    true,
    &["sa"],
    false
);
// RBAC objects: stored, served, and enforced for every identity but the admin (`rbac`).
pub const CLUSTERROLES: ResourceDef = def!(
    "rbac.authorization.k8s.io",
    "v1",
    "clusterroles",
    "clusterrole",
    "ClusterRole",
    false,
    &[],
    false
);
pub const CLUSTERROLEBINDINGS: ResourceDef = def!(
    "rbac.authorization.k8s.io",
    "v1",
    "clusterrolebindings",
    "clusterrolebinding",
    "ClusterRoleBinding",
    false,
    &[],
    false
);
pub const ROLES: ResourceDef = def!(
    "rbac.authorization.k8s.io",
    "v1",
    "roles",
    "role",
    "Role",
    true,
    &[],
    false
);
pub const ROLEBINDINGS: ResourceDef = def!(
    "rbac.authorization.k8s.io",
    "v1",
    "rolebindings",
    "rolebinding",
    "RoleBinding",
    true,
    &[],
    false
);
// Stored and served only (the scheduler here does not preempt), so install manifests that
// bring their own PriorityClass apply with kubectl.
pub const PRIORITYCLASSES: ResourceDef = def!(
    "scheduling.k8s.io",
    "v1",
    "priorityclasses",
    "priorityclass",
    "PriorityClass",
    false,
    &["pc"],
    false
);

/// Every served type, in a fixed order (the index is the type's id).
pub const ALL: [ResourceDef; 16] = [
    NAMESPACES,
    NODES,
    PODS,
    CONFIGMAPS,
    EVENTS,
    LEASES,
    DAEMONSETS,
    REPLICASETS,
    DEPLOYMENTS,
    PDBS,
    SERVICEACCOUNTS,
    CLUSTERROLES,
    CLUSTERROLEBINDINGS,
    ROLES,
    ROLEBINDINGS,
    PRIORITYCLASSES,
];

/// Index of a type in [`ALL`].
pub fn id(def: &ResourceDef) -> usize {
    ALL.iter()
        .position(|d| d == def)
        .expect("only catalog types are used")
}

/// Finds a type by group, version and plural name.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    ALL.iter()
        .find(|d| d.group == group && d.version == version && d.plural == plural)
}

/// Finds a type by its `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static ResourceDef> {
    ALL.iter()
        .find(|d| d.kind == kind && d.api_version() == api_version)
}

const GROUPS: [(&str, &str); 5] = [
    ("apps", "v1"),
    ("coordination.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("scheduling.k8s.io", "v1"),
];

/// `GET /api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
    })
}

fn group_doc(name: &str, version: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/{version}"), "version": version});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

/// `GET /apis`.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": GROUPS.iter().map(|(g, v)| group_doc(g, v)).collect::<Vec<_>>()
    })
}

/// `GET /apis/<group>`.
pub fn api_group(group: &str) -> Option<Value> {
    GROUPS.iter().find(|(g, _)| *g == group).map(|(g, v)| {
        let mut d = group_doc(g, v);
        d["kind"] = json!("APIGroup");
        d["apiVersion"] = json!("v1");
        d
    })
}

fn verbs() -> Value {
    json!([
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch"
    ])
}

/// `GET /api/v1` or `GET /apis/<group>/<version>`.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    if !(GROUPS.contains(&(group, version)) || group.is_empty() && version == "v1") {
        return None;
    }
    let mut resources = Vec::new();
    for d in ALL
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        let mut r = json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": verbs(),
        });
        if !d.short_names.is_empty() {
            r["shortNames"] = json!(d.short_names);
        }
        if matches!(
            d.plural,
            "pods" | "daemonsets" | "replicasets" | "deployments"
        ) {
            r["categories"] = json!(["all"]);
        }
        resources.push(r);
        if d.has_status {
            resources.push(json!({
                "name": format!("{}/status", d.plural),
                "singularName": "",
                "namespaced": d.namespaced,
                "kind": d.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        if d.plural == "deployments" || d.plural == "replicasets" {
            resources.push(json!({
                "name": format!("{}/scale", d.plural),
                "singularName": "",
                "namespaced": true,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": ["get", "patch", "update"],
            }));
        }
        if d.plural == "pods" {
            resources.push(json!({
                "name": "pods/eviction",
                "singularName": "",
                "namespaced": true,
                "group": "policy",
                "version": "v1",
                "kind": "Eviction",
                "verbs": ["create"],
            }));
        }
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}

/// `GET /openapi/v3`: the index of per-group-version documents.
pub fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![("", "v1")];
    gvs.extend(GROUPS.iter().copied());
    for (g, v) in gvs {
        let p = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let url = format!("/openapi/v3/{p}?hash=0");
        paths.insert(p, json!({ "serverRelativeURL": url }));
    }
    json!({ "paths": paths })
}

/// `GET /openapi/v3/api/v1` or `/openapi/v3/apis/<group>/<version>`: operations only (no
/// schemas), enough for kubectl to see that the server takes `fieldValidation` and to fall back
/// to its built-in types for patch computation.
pub fn openapi_v3_gv(group: &str, version: &str) -> Option<Value> {
    resource_list(group, version)?;
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let param = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}}
    ]);
    for d in ALL
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        let gvk = json!({"group": d.group, "version": d.version, "kind": d.kind});
        let op = |id: &str| {
            json!({
                "operationId": format!("{id}{}", d.kind),
                "parameters": param,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": id,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        let base = if d.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}", d.plural)
        } else {
            format!("{prefix}/{}", d.plural)
        };
        paths.insert(
            format!("{base}/{{name}}"),
            json!({"patch": op("patch"), "put": op("put")}),
        );
        paths.insert(base, json!({ "post": op("post") }));
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (kube-testserver)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_eviction() {
        let v1 = resource_list("", "v1").unwrap();
        let names: Vec<&str> = v1["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods/eviction"));
        assert!(resource_list("policy", "v1").is_some());
        assert!(resource_list("nope", "v1").is_none());
        assert_eq!(by_kind("apps/v1", "Deployment"), Some(&DEPLOYMENTS));
    }
}
