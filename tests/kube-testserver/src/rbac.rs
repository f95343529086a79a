//! Authorization by the RBAC objects in the store, as the apiserver's RBAC authorizer decides:
//! ClusterRoleBindings grant their ClusterRole's rules everywhere; RoleBindings grant their
//! Role's (or a ClusterRole's) rules in their own namespace only. A rule grants a request when
//! its verbs, apiGroups and resources (`*`, `pods`, `pods/eviction`, `*/scale`) match, and its
//! resourceNames, when it has any, name the object. `system:masters` may do anything; every
//! authenticated user may read discovery and version documents (the apiserver's default
//! `system:discovery` binding). A refusal is the apiserver's 403 with its message.
//!
//! Not here: aggregated ClusterRoles, impersonation, SubjectAccessReviews.

use crate::auth::Identity;
use crate::resources::{ResourceDef, CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES};
use crate::status::ApiError;
use crate::store::{Filter, Store};
use crate::util;
use serde_json::Value;

/// What a resource request asks, in RBAC's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes<'a> {
    pub verb: &'static str,
    pub group: &'a str,
    /// The plural resource name (`pods`).
    pub resource: &'a str,
    pub subresource: Option<&'a str>,
    /// Empty for cluster-scoped requests.
    pub namespace: &'a str,
    pub name: Option<&'a str>,
}

/// Whether `who` may do `a`.
pub fn allowed(store: &Store, who: &Identity, a: &Attributes) -> bool {
    if who.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let all = Filter::default();
    let grants = |role: Option<&Value>| {
        role.and_then(|r| r["rules"].as_array())
            .is_some_and(|rules| rules.iter().any(|rule| rule_grants(rule, a)))
    };
    for b in store.list(&CLUSTERROLEBINDINGS, &all) {
        if binds(&b, who) && b["roleRef"]["kind"] == "ClusterRole" {
            let role = store
                .get(&CLUSTERROLES, "", util::str_at(&b, "roleRef.name"))
                .ok();
            if grants(role.as_deref()) {
                return true;
            }
        }
    }
    if a.namespace.is_empty() {
        return false;
    }
    let here = Filter {
        namespace: Some(a.namespace.to_string()),
        ..Filter::default()
    };
    for b in store.list(&ROLEBINDINGS, &here) {
        if !binds(&b, who) {
            continue;
        }
        let name = util::str_at(&b, "roleRef.name");
        let role = match util::str_at(&b, "roleRef.kind") {
            "Role" => store.get(&ROLES, a.namespace, name).ok(),
            "ClusterRole" => store.get(&CLUSTERROLES, "", name).ok(),
            _ => None,
        };
        if grants(role.as_deref()) {
            return true;
        }
    }
    false
}

/// Whether a binding's subjects include `who`.
fn binds(binding: &Value, who: &Identity) -> bool {
    let binding_ns = util::str_at(binding, "metadata.namespace");
    binding["subjects"].as_array().is_some_and(|subjects| {
        subjects.iter().any(|s| {
            let name = util::str_at(s, "name");
            match util::str_at(s, "kind") {
                "ServiceAccount" => {
                    let ns = match util::str_at(s, "namespace") {
                        "" => binding_ns,
                        ns => ns,
                    };
                    who.user == format!("system:serviceaccount:{ns}:{name}")
                }
                "User" => who.user == name,
                "Group" => who.groups.iter().any(|g| g == name),
                _ => false,
            }
        })
    })
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str())
}

/// Whether one PolicyRule grants the request.
pub fn rule_grants(rule: &Value, a: &Attributes) -> bool {
    let verb = strings(&rule["verbs"]).any(|v| v == "*" || v == a.verb);
    let group = strings(&rule["apiGroups"]).any(|g| g == "*" || g == a.group);
    let resource = strings(&rule["resources"]).any(|r| match a.subresource {
        None => r == "*" || r == a.resource,
        Some(sub) => {
            r == "*"
                || r == format!("{}/{sub}", a.resource)
                || r == format!("*/{sub}")
                || r == format!("{}/*", a.resource)
        }
    });
    let names: Vec<&str> = strings(&rule["resourceNames"]).collect();
    let name = names.is_empty() || a.name.is_some_and(|n| names.contains(&n));
    verb && group && resource && name
}

/// The apiserver's 403 for a refused request.
pub fn forbidden(def: &ResourceDef, who: &Identity, a: &Attributes) -> ApiError {
    let what = match a.name {
        Some(n) => format!("{} \"{n}\"", def.qualified()),
        None => def.qualified(),
    };
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let scope = match a.namespace {
        "" => "at the cluster scope".to_string(),
        ns => format!("in the namespace \"{ns}\""),
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            who.user, a.verb, a.group
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(
        verb: &'static str,
        resource: &'static str,
        sub: Option<&'static str>,
    ) -> Attributes<'static> {
        Attributes {
            verb,
            group: "",
            resource,
            subresource: sub,
            namespace: "default",
            name: Some("web-1"),
        }
    }

    #[test]
    fn rules_match_verbs_groups_resources_and_names() {
        let rule = json!({"apiGroups": [""], "resources": ["pods", "pods/eviction"], "verbs": ["get", "create"]});
        assert!(rule_grants(&rule, &attrs("get", "pods", None)));
        assert!(rule_grants(
            &rule,
            &attrs("create", "pods", Some("eviction"))
        ));
        assert!(!rule_grants(&rule, &attrs("delete", "pods", None)));
        assert!(!rule_grants(&rule, &attrs("get", "pods", Some("log"))));
        assert!(!rule_grants(&rule, &attrs("get", "nodes", None)));
        let mut other_group = attrs("get", "pods", None);
        other_group.group = "apps";
        assert!(!rule_grants(&rule, &other_group));
        let star = json!({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]});
        assert!(rule_grants(&star, &attrs("delete", "pods", Some("status"))));
        let named = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "resourceNames": ["web-2"]});
        assert!(!rule_grants(&named, &attrs("get", "pods", None)));
        let mut list = attrs("list", "pods", None);
        list.name = None;
        assert!(!rule_grants(
            &json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": ["x"]}),
            &list
        ));
        assert!(rule_grants(
            &json!({"apiGroups": [""], "resources": ["*/eviction"], "verbs": ["create"]}),
            &attrs("create", "pods", Some("eviction"))
        ));
    }

    #[test]
    fn bindings_match_service_accounts_users_and_groups() {
        let sa = Identity::service_account("ns", "agent");
        let b = json!({"metadata": {"namespace": "ns"}, "subjects": [{"kind": "ServiceAccount", "name": "agent"}]});
        assert!(binds(&b, &sa));
        let b = json!({"metadata": {}, "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "other"}]});
        assert!(!binds(&b, &sa));
        let b = json!({"metadata": {}, "subjects": [{"kind": "Group", "name": "system:serviceaccounts:ns"}]});
        assert!(binds(&b, &sa));
        let b = json!({"metadata": {}, "subjects": [{"kind": "User", "name": "system:serviceaccount:ns:agent"}]});
        assert!(binds(&b, &sa));
    }
}
