//! The validating admission webhook: the API server sends each create and update of a
//! VirtualMachine or VirtualMachineInstance here (an `AdmissionReview`, `admission.k8s.io/v1`)
//! and stores the object only if this answers `allowed`. The checks are the local node's own:
//! the strict loader (unknown fields refused by path, wrong types) and KubeVirt's validation with
//! the node checks ([`Admit::admit`]), so the same YAML is refused the same way on a laptop and
//! on a cluster. The names are KubeVirt's (`virtualmachine-validator.kubevirt.io`, ...), so the
//! API server's message reads as KubeVirt's does:
//! `admission webhook "virtualmachine-validator.kubevirt.io" denied the request: ...`.
//!
//! The webhook is served on its own TLS listener that asks for no client certificate (the API
//! server presents none to webhooks unless configured to), beside the subresources listener,
//! which accepts only the API server's front-proxy certificate. It answers verdicts only: no
//! side effects (`sideEffects: None`). Its scope is the two kinds, so a webhook that is down
//! never blocks anything else; for those kinds `failurePolicy: Fail`, as KubeVirt: an object that
//! was not checked is not stored.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use virt_core::api::{LoadError, ValidationError};
use virt_core::model::{self, Admit, NodeSupport, VirtualMachine, VirtualMachineInstance};

/// The path the webhooks are served at.
pub const PATH: &str = "/validate";

/// The webhooks: (name, resource) for each kind checked.
pub const WEBHOOKS: [(&str, &str); 2] = [
    ("virtualmachine-validator.kubevirt.io", "virtualmachines"),
    ("virtualmachineinstances-create-validator.kubevirt.io", "virtualmachineinstances"),
];

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
    let verdict = match request["operation"].as_str() {
        Some("CREATE" | "UPDATE") => check(request["kind"]["kind"].as_str(), &request["object"]),
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
        let causes = match &e {
            LoadError::Decode { errors, .. } => {
                errors.iter().map(|d| cause(&d.path, d.message.clone())).collect()
            }
            other => vec![json!({ "reason": "FieldValueInvalid", "message": other.to_string() })],
        };
        Self { message: e.to_string(), causes }
    }
}

impl From<ValidationError> for Refusal {
    fn from(e: ValidationError) -> Self {
        let causes =
            e.problems.iter().map(|p| cause(&p.path, format!("{}: {}", p.kind, p.message))).collect();
        Self { message: e.to_string(), causes }
    }
}

/// The local node's checks of `object` of `kind`: the warnings, or why it is refused.
fn check(kind: Option<&str>, object: &Value) -> Result<Vec<String>, Refusal> {
    let text = object.to_string();
    let support = NodeSupport::default();
    let warnings = match kind {
        Some("VirtualMachine") => model::from_json::<VirtualMachine>(&text)?.admit(&support)?,
        Some("VirtualMachineInstance") => {
            model::from_json::<VirtualMachineInstance>(&text)?.admit(&support)?
        }
        // A kind this webhook is not registered for: not its business.
        _ => Vec::new(),
    };
    Ok(warnings.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: &str, object: Value) -> Vec<u8> {
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "kubevirt.io", "version": "v1", "kind": kind },
                "operation": "CREATE",
                "object": object,
            },
        })
        .to_string()
        .into_bytes()
    }

    fn vm(spec_extra: Value) -> Value {
        let mut vm = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": "vm1", "namespace": "default", "uid": "u1", "generation": 1,
                "creationTimestamp": "2026-12-05T08:00:00Z",
                "managedFields": [{ "manager": "kubectl", "operation": "Update" }],
            },
            "spec": {
                "runStrategy": "Halted",
                "template": { "spec": { "domain": { "devices": {}, "memory": { "guest": "64Mi" } } } },
            },
        });
        if let (Some(spec), Some(extra)) = (vm["spec"].as_object_mut(), spec_extra.as_object()) {
            spec.extend(extra.clone());
        }
        vm
    }

    #[test]
    fn a_valid_vm_as_the_api_server_sends_it_is_allowed() {
        let answer = review(&request("VirtualMachine", vm(json!({})))).unwrap();
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }

    #[test]
    fn bad_values_and_unknown_fields_are_refused_naming_the_field() {
        let answer = review(&request("VirtualMachine", vm(json!({ "running": true })))).unwrap();
        let r = &answer["response"];
        assert_eq!(r["allowed"], false, "{answer}");
        assert_eq!(r["status"]["code"], 422);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.running") && msg.contains("runStrategy"), "{msg}");
        let details = &r["status"]["details"];
        assert_eq!((&details["kind"], &details["name"]), (&json!("VirtualMachine"), &json!("vm1")));
        assert!(
            details["causes"].as_array().unwrap().iter().any(|c| c["field"] == "spec.running"),
            "{details}"
        );

        let answer = review(&request("VirtualMachine", vm(json!({ "runStrateggy": "Always" })))).unwrap();
        let msg = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.runStrateggy"), "{msg}");
        let causes = &answer["response"]["status"]["details"]["causes"];
        assert_eq!(causes[0]["field"], "spec.runStrateggy", "{causes}");

        let vmi = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": { "name": "v", "namespace": "default" },
            "spec": { "domain": { "devices": { "disks": [{ "name": "d", "disk": { "bus": "floppy" } }] } } },
        });
        let answer = review(&request("VirtualMachineInstance", vmi)).unwrap();
        let msg = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.domain.devices.disks[0].disk.bus"), "{msg}");
    }

    #[test]
    fn deletes_and_other_kinds_pass_and_garbage_is_a_bad_request() {
        let mut body: Value = serde_json::from_slice(&request("VirtualMachine", json!({}))).unwrap();
        body["request"]["operation"] = "DELETE".into();
        let answer = review(body.to_string().as_bytes()).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        let answer = review(&request("ConfigMap", json!({ "data": 1 }))).unwrap();
        assert_eq!(answer["response"]["allowed"], true);
        assert!(matches!(review(b"{"), Err(ReviewError::NotJson(_))));
        assert!(matches!(review(b"{\"request\":{}}"), Err(ReviewError::NoUid)));
    }
}
