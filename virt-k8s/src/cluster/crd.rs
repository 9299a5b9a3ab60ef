//! The CustomResourceDefinitions of the kinds the project serves, generated from its own types
//! ([`KubeKind`] + schemars + [`schema::structural`]), and their installation by server-side apply.
//! The top level and the spec keep unknown fields ([`schema::keep_unknown_fields`]) so that the
//! admission webhook, not the API server's pruning, answers for them: refused by path, as on the
//! local node, instead of silently dropped. The price: the OpenAPI v2 document the API server
//! publishes drops the properties of such nodes, so a 1.20 kubectl neither checks the spec
//! client-side (the webhook does) nor `explain`s below `spec`.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use virt_core::model::{
    MigrationPolicy, VirtualMachine, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstancetype,
    VirtualMachinePreference,
};
use virt_storage::cdi::{DataImportCron, DataSource, DataVolume};

use super::kinds::KubeKind;
use super::schema;

/// The field manager of the project's server-side applies.
pub const FIELD_MANAGER: &str = "virt-controller";

/// Errors installing CRDs.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The API server refused or failed a request.
    #[error("applying CRD {name}: {source}")]
    Apply {
        /// The CRD's name.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// A CRD did not become Established in time.
    #[error("CRD {name} not Established after {secs} s (last conditions: {conditions})")]
    NotEstablished {
        /// The CRD's name.
        name: String,
        /// How long we waited.
        secs: u64,
        /// Its conditions when we gave up.
        conditions: String,
    },
}

/// The CRD of `K`.
pub fn crd_for<K: KubeKind>() -> Value {
    let generated = serde_json::to_value(schemars::schema_for!(K)).unwrap_or(Value::Bool(true));
    let mut root = schema::structural(&generated);
    // The API server owns metadata's schema; apiVersion and kind are plain strings.
    if let Some(props) = root.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert("metadata".into(), json!({ "type": "object" }));
        props.insert("apiVersion".into(), json!({ "type": "string" }));
        props.insert("kind".into(), json!({ "type": "string" }));
    }
    if let Some(Value::Array(req)) = root.get_mut("required") {
        req.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata")));
    }
    root["type"] = json!("object");
    // Every kind here goes through the admission webhook (`subresources::admission`), which refuses
    // unknown fields by path as the local node does; the API server must keep them (it prunes
    // before admission) for the webhook to see them. The top level and the spec keep them; the
    // status is written through `/status`, which the webhook does not see, and is pruned.
    if let Some(spec) = root.pointer_mut("/properties/spec") {
        schema::keep_unknown_fields(spec);
    }
    root["x-kubernetes-preserve-unknown-fields"] = json!(true);
    let singular = K::KIND.to_lowercase();
    let mut version = json!({
        "name": K::VERSION,
        "served": true,
        "storage": true,
        "schema": { "openAPIV3Schema": root },
        "additionalPrinterColumns": K::printer_columns(),
    });
    if K::HAS_STATUS {
        version["subresources"] = json!({ "status": {} });
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{}.{}", K::PLURAL, K::GROUP),
            "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
        },
        "spec": {
            "group": K::GROUP,
            "names": {
                "kind": K::KIND,
                "listKind": format!("{}List", K::KIND),
                "plural": K::PLURAL,
                "singular": singular,
                "shortNames": K::SHORT_NAMES,
                "categories": K::CATEGORIES,
            },
            "scope": if K::NAMESPACED { "Namespaced" } else { "Cluster" },
            "versions": [version],
        },
    })
}

/// Every CRD the project serves.
pub fn all_crds() -> Vec<Value> {
    vec![
        crd_for::<VirtualMachine>(),
        crd_for::<VirtualMachineInstance>(),
        crd_for::<VirtualMachineInstanceMigration>(),
        crd_for::<MigrationPolicy>(),
        crd_for::<VirtualMachineInstancetype>(),
        crd_for::<VirtualMachineClusterInstancetype>(),
        crd_for::<VirtualMachinePreference>(),
        crd_for::<VirtualMachineClusterPreference>(),
        crd_for::<DataVolume>(),
        crd_for::<DataSource>(),
        crd_for::<DataImportCron>(),
    ]
}

fn name_of(crd: &Value) -> String {
    crd["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

/// Applies every CRD (server-side apply, forced: this field manager owns them; installing twice
/// changes nothing) and waits until each is Established. Returns the CRDs' names.
pub async fn install_crds(client: &Client, timeout: Duration) -> Result<Vec<String>, CrdError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = Vec::new();
    for crd in all_crds() {
        let name = name_of(&crd);
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .map_err(|source| CrdError::Apply { name: name.clone(), source })?;
        names.push(name);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    for name in &names {
        loop {
            let crd = api.get(name).await.map_err(|source| CrdError::Apply { name: name.clone(), source })?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let conditions = conditions
                    .iter()
                    .map(|c| format!("{}={}", c.type_, c.status))
                    .collect::<Vec<_>>()
                    .join(",");
                return Err(CrdError::NotEstablished {
                    name: name.clone(),
                    secs: timeout.as_secs(),
                    conditions,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_structural() {
        for crd in all_crds() {
            let name = name_of(&crd);
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let problems = schema::check_structural(schema);
            assert!(problems.is_empty(), "{name}: {}", problems.join("\n"));
            let text = crd.to_string();
            assert!(!text.contains("$ref") && !text.contains("$defs"), "{name} has references");
            assert!(!text.contains("x-kubernetes-validations"), "{name} has CEL rules");
        }
    }

    #[test]
    fn crds_carry_kubevirts_names_columns_and_status() {
        let vm = crd_for::<VirtualMachine>();
        assert_eq!(vm["metadata"]["name"], "virtualmachines.kubevirt.io");
        assert_eq!(vm["spec"]["names"]["shortNames"], json!(["vm", "vms"]));
        let v = &vm["spec"]["versions"][0];
        assert_eq!(v["subresources"], json!({ "status": {} }));
        assert!(v["additionalPrinterColumns"].as_array().unwrap().iter().any(|c| c["name"] == "Status"));
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["runStrategy"]["type"], "string");
        assert!(spec["properties"]["runStrategy"]["enum"].as_array().unwrap().contains(&json!("Always")));
        let dv = crd_for::<DataVolume>();
        assert_eq!(dv["spec"]["group"], "cdi.kubevirt.io");
        assert_eq!(dv["spec"]["names"]["shortNames"], json!(["dv", "dvs"]));
        // Unknown fields reach the webhook: the top level and all of the spec keep them, the
        // status does not.
        let root = &dv["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(root["x-kubernetes-preserve-unknown-fields"], true);
        let source = &root["properties"]["spec"]["properties"]["source"];
        assert_eq!(source["x-kubernetes-preserve-unknown-fields"], true, "{source}");
        assert_eq!(source["properties"]["http"]["x-kubernetes-preserve-unknown-fields"], true);
        assert!(root["properties"]["status"].get("x-kubernetes-preserve-unknown-fields").is_none());
        let it = crd_for::<VirtualMachineClusterInstancetype>();
        assert_eq!(it["spec"]["scope"], "Cluster");
        assert!(it["spec"]["versions"][0].get("subresources").is_none());
    }
}
