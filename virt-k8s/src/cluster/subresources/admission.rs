//! The validating admission webhook: the API server sends each create and update of the kinds
//! the local node checks here (an `AdmissionReview`, `admission.k8s.io/v1`) and stores the object
//! only if this answers `allowed`: VirtualMachines and VirtualMachineInstances,
//! VirtualMachineInstanceMigrations, the four instancetype and preference kinds
//! (`instancetype.kubevirt.io`) and CDI's DataVolumes, DataSources and DataImportCrons
//! (`cdi.kubevirt.io`). The checks are the local node's own, not a copy (`check`): the strict
//! loader (unknown fields refused by path, wrong types) of virt-core or virt-storage, then the
//! validation the node's create applies to the kind. The CRDs keep unknown fields
//! ([`crate::cluster::schema::keep_unknown_fields`]) so that they reach this instead of being
//! pruned by the API server, and the same YAML is refused the same way on a laptop and on a
//! cluster. The names are KubeVirt's and CDI's (`virtualmachine-validator.kubevirt.io`,
//! `migration-create-validator.kubevirt.io`,
//! `virtualmachineinstancetype-validator.instancetype.kubevirt.io`,
//! `datavolume-validate.cdi.kubevirt.io`, ...), so the API server's message reads as theirs does:
//! `admission webhook "datavolume-validate.cdi.kubevirt.io" denied the request: ...`.
//!
//! The webhook is served on its own TLS listener that asks for no client certificate (the API
//! server presents none to webhooks unless configured to), beside the subresources listener,
//! which accepts only the API server's front-proxy certificate. It answers verdicts only: no
//! side effects (`sideEffects: None`).
//!
//! Scope and failure policy, chosen on purpose: each webhook ([`webhooks`]) names exactly one
//! resource of one group and version, with the operations its kind is checked on (CREATE and
//! UPDATE; a migration's two, as in KubeVirt, are a create and an update webhook), and nothing
//! else is sent here, so a webhook that is down or slow never blocks an object of another kind
//! (Pods, ConfigMaps, the controller's `/status` writes, which are subresources). For the kinds
//! it guards, `failurePolicy: Fail`, as KubeVirt and CDI: an object that was not checked is not
//! stored, which also makes keeping unknown fields in the CRDs safe (nothing reaches etcd
//! without the strict loader having read it). `Ignore` would let a VM with a misspelt field in
//! while the node agent restarts, and it would then run without what the field asked for.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use virt_core::api::{Causes as _, FieldProblem, LoadError, StatusCause, Validate, ValidationError};
use virt_core::model::{
    self, Admit, MigrationPolicy, NodeSupport, VirtualMachine, VirtualMachineClusterInstancetype,
    VirtualMachineClusterPreference, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstancetype, VirtualMachinePreference,
};
use virt_storage::cdi::{self, CdiObject, DataImportCron, DataSource, DataVolume};

use crate::cluster::kinds::KubeKind;

/// The path the webhooks are served at.
pub const PATH: &str = "/validate";

/// One webhook of the configuration: its name and the one resource it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// KubeVirt's or CDI's name for it.
    pub name: &'static str,
    /// The API group.
    pub group: &'static str,
    /// The version the CRD serves.
    pub version: &'static str,
    /// The plural resource name.
    pub resource: &'static str,
    /// `Namespaced` or `Cluster`.
    pub scope: &'static str,
    /// The operations sent (`CREATE`, `UPDATE`).
    pub operations: &'static [&'static str],
}

const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];

fn hook<K: KubeKind>(name: &'static str, operations: &'static [&'static str]) -> Webhook {
    let scope = if K::NAMESPACED { "Namespaced" } else { "Cluster" };
    Webhook { name, group: K::GROUP, version: K::VERSION, resource: K::PLURAL, scope, operations }
}

/// The webhooks, one per resource (a migration's create and update apart, as KubeVirt's), with
/// the group, version and plural of the CRD the kind is served as.
pub fn webhooks() -> Vec<Webhook> {
    vec![
        hook::<VirtualMachine>("virtualmachine-validator.kubevirt.io", CREATE_UPDATE),
        hook::<VirtualMachineInstance>("virtualmachineinstances-create-validator.kubevirt.io", CREATE_UPDATE),
        hook::<VirtualMachineInstanceMigration>("migration-create-validator.kubevirt.io", &["CREATE"]),
        hook::<VirtualMachineInstanceMigration>("migration-update-validator.kubevirt.io", &["UPDATE"]),
        hook::<VirtualMachineInstancetype>(
            "virtualmachineinstancetype-validator.instancetype.kubevirt.io",
            CREATE_UPDATE,
        ),
        hook::<VirtualMachineClusterInstancetype>(
            "virtualmachineclusterinstancetype-validator.instancetype.kubevirt.io",
            CREATE_UPDATE,
        ),
        hook::<VirtualMachinePreference>(
            "virtualmachinepreference-validator.instancetype.kubevirt.io",
            CREATE_UPDATE,
        ),
        hook::<VirtualMachineClusterPreference>(
            "virtualmachineclusterpreference-validator.instancetype.kubevirt.io",
            CREATE_UPDATE,
        ),
        hook::<MigrationPolicy>("migrationpolicy-validator.migrations.kubevirt.io", CREATE_UPDATE),
        hook::<DataVolume>("datavolume-validate.cdi.kubevirt.io", CREATE_UPDATE),
        // CDI checks DataSources in its controller only; the name follows its pattern.
        hook::<DataSource>("datasource-validate.cdi.kubevirt.io", CREATE_UPDATE),
        hook::<DataImportCron>("dataimportcron-validate.cdi.kubevirt.io", CREATE_UPDATE),
    ]
}

/// The largest review read (the API server's own limit on an object is 1.5 MiB; a review carries
/// the object twice on updates).
const MAX_REVIEW: usize = 4 << 20;

/// The webhook's router: `POST /validate`.
pub fn router() -> Router {
    Router::new().route(PATH, post(validate)).layer(axum::extract::DefaultBodyLimit::max(MAX_REVIEW))
}

async fn validate(body: Bytes) -> Response {
    match review(&body) {
        Ok(answer) => Json(answer).into_response(),
        Err(message) => (StatusCode::BAD_REQUEST, message.to_string()).into_response(),
    }
}

/// A review that is not one.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON.
    #[error("not an AdmissionReview: {0}")]
    NotJson(#[from] serde_json::Error),
    /// No `request.uid`.
    #[error("not an AdmissionReview: no request.uid")]
    NoUid,
}

/// The answer to an `AdmissionReview` (see the module's doc): `allowed`, or refused with a
/// Kubernetes `Status` (422, `Invalid`) whose message names each field; warnings are passed on.
pub fn review(body: &[u8]) -> Result<Value, ReviewError> {
    let review: Value = serde_json::from_slice(body)?;
    let request = &review["request"];
    let uid = request["uid"].as_str().ok_or(ReviewError::NoUid)?;
    let api_version = review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1");
    let group = request["kind"]["group"].as_str().unwrap_or_default();
    let kind = request["kind"]["kind"].as_str().unwrap_or_default();
    let verdict = match request["operation"].as_str() {
        Some("CREATE") => check(group, kind, &request["object"]),
        Some("UPDATE") => check_update(group, kind, &request["object"], &request["oldObject"])
            .and_then(|()| check(group, kind, &request["object"])),
        // DELETE and CONNECT carry nothing to check.
        _ => Ok(Vec::new()),
    };
    let response = match verdict {
        Ok(warnings) if warnings.is_empty() => json!({ "uid": uid, "allowed": true }),
        Ok(warnings) => json!({ "uid": uid, "allowed": true, "warnings": warnings }),
        Err(refusal) => {
            // With the causes, kubectl prints `The VirtualMachine "x" is invalid: path: what`, as
            // it does for the local node.
            let details = json!({
                "name": request["object"]["metadata"]["name"],
                "group": request["kind"]["group"],
                "kind": request["kind"]["kind"],
                "causes": refusal.causes,
            });
            json!({
                "uid": uid,
                "allowed": false,
                "status": {
                    "status": "Failure", "code": 422, "reason": "Invalid",
                    "message": refusal.message, "details": details,
                },
            })
        }
    };
    Ok(json!({ "apiVersion": api_version, "kind": "AdmissionReview", "response": response }))
}

/// Why an object is refused: the whole message and one `Status` cause per field.
struct Refusal {
    message: String,
    causes: Vec<Value>,
}

fn cause(field: &str, message: String) -> Value {
    json!({ "reason": "FieldValueInvalid", "field": field, "message": message })
}

impl From<LoadError> for Refusal {
    fn from(e: LoadError) -> Self {
        Self { causes: causes_json(e.causes()), message: e.to_string() }
    }
}

impl From<ValidationError> for Refusal {
    fn from(e: ValidationError) -> Self {
        Self { causes: causes_json(e.causes()), message: e.to_string() }
    }
}

fn causes_json(causes: Vec<StatusCause>) -> Vec<Value> {
    causes.into_iter().map(|c| serde_json::to_value(c).unwrap_or(Value::Null)).collect()
}

/// The local node's checks of `object` of `kind` in `group`: the warnings, or why it is refused.
/// Each arm is what the node's create path runs for the kind, after the same strict loader:
///
/// - VMs and VMIs: validation and the node checks (`Admit::admit`, as `Vms::create`).
/// - Instancetypes and preferences: the same (`CatalogObjects::put`).
/// - Migrations: the model's validation (the VMI named, names well-formed), and on an update an
///   unchanged spec (`check_update`). The node admits them
///   without its node checks (it migrates on itself), and whether the VMI exists, runs and can
///   move depends on the cluster's state, which this stateless webhook does not read.
/// - MigrationPolicies: the model's validation (as the node's create of one).
/// - DataVolumes, DataSources, DataImportCrons: CDI's validation (`Validate::check`, as the
///   node's `Cdi::create_*`). The node's further checks depend on the node (a DataVolume's name
///   names a file in its pool, its import-URL policy, known snapshots) and are not the cluster's.
fn check(group: &str, kind: &str, object: &Value) -> Result<Vec<String>, Refusal> {
    let text = object.to_string();
    let support = NodeSupport::default();
    let warnings = match (group, kind) {
        ("kubevirt.io", "VirtualMachine") => model::from_json::<VirtualMachine>(&text)?.admit(&support)?,
        ("kubevirt.io", "VirtualMachineInstance") => {
            model::from_json::<VirtualMachineInstance>(&text)?.admit(&support)?
        }
        ("kubevirt.io", "VirtualMachineInstanceMigration") => {
            model::from_json::<VirtualMachineInstanceMigration>(&text)?.check()?
        }
        ("instancetype.kubevirt.io", "VirtualMachineInstancetype") => {
            model::from_json::<VirtualMachineInstancetype>(&text)?.admit(&support)?
        }
        ("instancetype.kubevirt.io", "VirtualMachineClusterInstancetype") => {
            model::from_json::<VirtualMachineClusterInstancetype>(&text)?.admit(&support)?
        }
        ("instancetype.kubevirt.io", "VirtualMachinePreference") => {
            model::from_json::<VirtualMachinePreference>(&text)?.admit(&support)?
        }
        ("instancetype.kubevirt.io", "VirtualMachineClusterPreference") => {
            model::from_json::<VirtualMachineClusterPreference>(&text)?.admit(&support)?
        }
        ("migrations.kubevirt.io", "MigrationPolicy") => {
            model::from_json::<MigrationPolicy>(&text)?.check()?
        }
        ("cdi.kubevirt.io", "DataVolume" | "DataSource" | "DataImportCron") => check_cdi(kind, &text)?,
        // A kind this webhook is not registered for: not its business.
        _ => Vec::new(),
    };
    Ok(warnings.iter().map(ToString::to_string).collect())
}

/// What an update may not change: a migration's spec (KubeVirt's
/// `migration-update-validator.kubevirt.io`, with its message; the node serves no update of a
/// migration at all).
fn check_update(group: &str, kind: &str, object: &Value, old: &Value) -> Result<(), Refusal> {
    if (group, kind) == ("kubevirt.io", "VirtualMachineInstanceMigration") && object["spec"] != old["spec"] {
        let message = "update of Migration object's spec is restricted".to_string();
        let causes = vec![json!({ "reason": "FieldValueNotSupported", "field": "spec", "message": message })];
        return Err(Refusal { message: format!("spec: {message}"), causes });
    }
    Ok(())
}

/// CDI's strict loader, then the kind's validation.
fn check_cdi(kind: &str, text: &str) -> Result<Vec<FieldProblem>, Refusal> {
    let object = cdi::load_json(text)?.object;
    Ok(match object {
        CdiObject::DataVolume(o) if kind == "DataVolume" => o.check()?,
        CdiObject::DataSource(o) if kind == "DataSource" => o.check()?,
        CdiObject::DataImportCron(o) if kind == "DataImportCron" => o.check()?,
        other => {
            let message = format!("kind: Invalid value: {:?}: the review is of a {kind}", other.kind());
            let causes = vec![cause("kind", message.clone())];
            return Err(Refusal { message, causes });
        }
    })
}

#[cfg(test)]
mod tests;
