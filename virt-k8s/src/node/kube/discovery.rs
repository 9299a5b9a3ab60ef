//! Kubernetes discovery from the [`registry`](crate::registry): `/api` (APIVersions), `/apis`
//! (APIGroupList), `/apis/{group}` (APIGroup), and `/api/v1`, `/apis/{group}/{version}`
//! (APIResourceList with verbs, short names, scope and kind). kubectl reads these to map `vm` to
//! `virtualmachines.kubevirt.io` before any other request.

use serde_json::{json, Value};

use crate::registry::{self, Resource, RESOURCES, SUBRESOURCES_GROUP};

/// The discovery document at `path`, if `path` is a discovery path.
pub fn document(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    match path {
        "/api" => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": "" }],
        })),
        "/api/v1" => Some(resource_list("", "v1")),
        "/apis" => Some(json!({
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": registry::groups().into_iter().map(|(g, v)| group(g, v)).collect::<Vec<_>>(),
        })),
        _ => {
            let rest = path.strip_prefix("/apis/")?;
            let (g, v) = match rest.split_once('/') {
                Some((g, v)) if !v.contains('/') => (g, Some(v)),
                Some(_) => return None,
                None => (rest, None),
            };
            let (g, version) = registry::groups().into_iter().find(|(name, _)| *name == g)?;
            match v {
                None => {
                    let mut doc = group(g, version);
                    doc["apiVersion"] = json!("v1");
                    doc["kind"] = json!("APIGroup");
                    Some(doc)
                }
                Some(v) if v == version => Some(resource_list(g, v)),
                Some(_) => None,
            }
        }
    }
}

fn group(name: &str, version: &str) -> Value {
    let gv = json!({ "groupVersion": format!("{name}/{version}"), "version": version });
    json!({ "name": name, "versions": [gv.clone()], "preferredVersion": gv })
}

fn entry(r: &Resource) -> Value {
    let mut e = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if r.group == "kubevirt.io" {
        e["categories"] = json!(["all"]);
    }
    e
}

/// KubeVirt's subresources group: `virtualmachines/start`, `virtualmachineinstances/console`, ...
fn subresource_entries() -> Vec<Value> {
    RESOURCES
        .iter()
        .filter(|r| r.group == "kubevirt.io")
        .flat_map(|r| {
            r.subresources.iter().map(move |s| {
                let verbs: &[&str] =
                    if matches!(*s, "console" | "vnc" | "portforward") { &["get"] } else { &["update"] };
                json!({
                    "name": format!("{}/{s}", r.plural),
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": verbs,
                })
            })
        })
        .collect()
}

fn resource_list(group: &str, version: &str) -> Value {
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    let resources: Vec<Value> = if group == SUBRESOURCES_GROUP {
        subresource_entries()
    } else {
        RESOURCES.iter().filter(|r| r.group == group && r.version == version).map(entry).collect()
    };
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })
}

#[cfg(test)]
mod tests {
    use super::document;

    #[test]
    fn every_group_is_discoverable() {
        let groups = document("/apis").unwrap();
        let names: Vec<&str> =
            groups["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"kubevirt.io") && names.contains(&"cdi.kubevirt.io"), "{names:?}");
        let kv = document("/apis/kubevirt.io/v1").unwrap();
        let vm = kv["resources"].as_array().unwrap().iter().find(|r| r["name"] == "virtualmachines").unwrap();
        assert_eq!(vm["kind"], "VirtualMachine");
        assert_eq!(vm["shortNames"][0], "vm");
        assert!(vm["verbs"].as_array().unwrap().iter().any(|v| v == "patch"));
        let core = document("/api/v1").unwrap();
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "namespaces"));
        assert_eq!(document("/apis/cdi.kubevirt.io").unwrap()["preferredVersion"]["version"], "v1beta1");
        assert!(document("/apis/kubevirt.io/v2").is_none());
        assert!(document("/apis/example.com/v1").is_none());
    }
}
