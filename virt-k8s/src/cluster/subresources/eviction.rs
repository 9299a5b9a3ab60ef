//! The eviction webhook (KubeVirt's `virt-launcher-eviction-interceptor.kubevirt.io`): the API
//! server sends it each eviction of a pod (`pods/eviction`, what `kubectl drain` and the node's
//! maintenance tools call). An eviction of the launcher pod of a running VMI whose
//! `evictionStrategy` migrates it (`cluster::controller::evacuation::migrates_on_eviction`) is
//! refused with 429 `TooManyRequests` (drain retries it) and the VMI is marked
//! `status.evacuationNodeName: <the pod's node>`, on which virt-controller starts a migration off
//! that node. Every other eviction is allowed.
//!
//! Scope and failure policy, chosen on purpose: the webhook sees evictions only (no other
//! operation or resource), `failurePolicy: Ignore`, so a webhook that is down never blocks the
//! drain of unrelated pods; the VMI's PodDisruptionBudget still refuses its launcher's eviction
//! then (the eviction API checks budgets after admission), so the VM is not killed either, it just
//! is not marked for evacuation until the webhook is back. Errors reading the API allow the
//! eviction for the same reason (the budget decides). It writes the mark only when the request is
//! not a dry run (`sideEffects: NoneOnDryRun`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use virt_core::model::{VirtualMachineInstance, VmiPhase};

use crate::cluster::controller::evacuation::migrates_on_eviction;
use crate::cluster::kinds::Cr;
use crate::cluster::pod::APP_LABEL;

/// The path the webhook is served at.
pub const PATH: &str = "/evict";
/// KubeVirt's name for it.
pub const NAME: &str = "virt-launcher-eviction-interceptor.kubevirt.io";

/// The webhook's router: `POST /evict`.
pub fn router(client: Client) -> Router {
    Router::new().route(PATH, post(evict)).with_state(client)
}

/// What the webhook decides for one eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let the eviction go on (and why, for the log).
    Allow(String),
    /// Refuse it: the VMI `namespace/name` moves off `node` instead.
    Evacuate {
        /// The VMI's namespace.
        namespace: String,
        /// The VMI's name.
        name: String,
        /// The node the pod runs on.
        node: String,
    },
}

/// Decides for the eviction of `pod`, whose VMI (by the pod's controller reference) is `vmi`.
pub fn decide(pod: &Pod, vmi: Option<&Cr<VirtualMachineInstance>>) -> Verdict {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.get(APP_LABEL).map(String::as_str) != Some("virt-launcher") {
        return Verdict::Allow("not a launcher pod".into());
    }
    let Some(vmi) = vmi else { return Verdict::Allow("its VMI is gone".into()) };
    if !migrates_on_eviction(&vmi.obj) {
        return Verdict::Allow("its VMI's evictionStrategy does not migrate it".into());
    }
    let status = vmi.obj.status.clone().unwrap_or_default();
    if vmi.meta.deletion_timestamp.is_some() || status.phase != Some(VmiPhase::Running) {
        return Verdict::Allow("its VMI is not running".into());
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    if status.node_name.as_deref() != Some(node.as_str()) {
        // A migration's target pod, or a pod the VMI left: not the VM's.
        return Verdict::Allow("the VMI does not run in this pod's node".into());
    }
    Verdict::Evacuate {
        namespace: vmi.meta.namespace.clone().unwrap_or_default(),
        name: vmi.meta.name.clone().unwrap_or_default(),
        node,
    }
}

/// The VMI that controls `pod`.
fn vmi_name(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "VirtualMachineInstance" && o.controller == Some(true))
        .map(|o| o.name.clone())
}

async fn evict(State(client): State<Client>, body: Bytes) -> Response {
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not an AdmissionReview: {e}")).into_response(),
    };
    let request = &review["request"];
    let Some(uid) = request["uid"].as_str() else {
        return (StatusCode::BAD_REQUEST, "not an AdmissionReview: no request.uid").into_response();
    };
    let api_version = review["apiVersion"].as_str().unwrap_or("admission.k8s.io/v1");
    let ns = request["namespace"].as_str().unwrap_or_default();
    let pod_name = request["name"].as_str().unwrap_or_default();
    let dry_run = request["dryRun"].as_bool().unwrap_or(false);
    let response = match verdict(&client, ns, pod_name).await {
        Ok(Verdict::Allow(why)) => {
            log::debug!("eviction of pod {ns}/{pod_name} allowed: {why}");
            json!({ "uid": uid, "allowed": true })
        }
        Ok(Verdict::Evacuate { namespace, name, node }) => {
            if !dry_run {
                mark(&client, &namespace, &name, &node).await;
            }
            log::info!(
                "eviction of pod {ns}/{pod_name} refused: VMI {namespace}/{name} evacuates off {node}"
            );
            json!({
                "uid": uid,
                "allowed": false,
                "status": {
                    "status": "Failure", "code": 429, "reason": "TooManyRequests",
                    "message": format!("Eviction triggered evacuation of VMI \"{namespace}/{name}\""),
                },
            })
        }
        Err(e) => {
            // The disruption budget still guards the VMI: allow, never block a drain on this.
            log::warn!("eviction of pod {ns}/{pod_name}: {e}; allowed (the VMI's disruption budget decides)");
            json!({ "uid": uid, "allowed": true })
        }
    };
    Json(json!({ "apiVersion": api_version, "kind": "AdmissionReview", "response": response }))
        .into_response()
}

async fn verdict(client: &Client, ns: &str, pod_name: &str) -> Result<Verdict, kube::Error> {
    let Some(pod) = Api::<Pod>::namespaced(client.clone(), ns).get_opt(pod_name).await? else {
        return Ok(Verdict::Allow("no such pod".into()));
    };
    let vmi = match vmi_name(&pod) {
        Some(name) => {
            Api::<Cr<VirtualMachineInstance>>::namespaced(client.clone(), ns).get_opt(&name).await?
        }
        None => None,
    };
    Ok(decide(&pod, vmi.as_ref()))
}

/// Marks the VMI for evacuation (logged, not fatal: the refusal stands and drain retries).
async fn mark(client: &Client, ns: &str, name: &str, node: &str) {
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(client.clone(), ns);
    let patch = Patch::Merge(json!({ "status": { "evacuationNodeName": node } }));
    if let Err(e) = vmis.patch_status(name, &PatchParams::default(), &patch).await {
        log::warn!("marking VMI {ns}/{name} for evacuation off {node}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: Value, node: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "virt-launcher-v-abcde", "namespace": "ns", "labels": labels,
                "ownerReferences": [{ "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "name": "v", "uid": "u1", "controller": true }] },
            "spec": { "nodeName": node, "containers": [] },
        }))
        .unwrap()
    }

    fn vmi(strategy: &str, phase: &str, node: &str) -> Cr<VirtualMachineInstance> {
        Cr::new(
            virt_core::model::from_yaml(&format!(
                "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: v, namespace: ns, uid: u1}}\n\
                 spec:\n  evictionStrategy: {strategy}\n  domain: {{devices: {{}}, memory: {{guest: 64Mi}}}}\n\
                 status: {{phase: {phase}, nodeName: {node}}}\n"
            ))
            .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn only_the_running_launcher_of_a_migrating_vmi_is_held_back() {
        let launcher = pod(json!({ "kubevirt.io": "virt-launcher" }), "n1");
        assert_eq!(vmi_name(&launcher).as_deref(), Some("v"));
        let live = vmi("LiveMigrate", "Running", "n1");
        assert_eq!(
            decide(&launcher, Some(&live)),
            Verdict::Evacuate { namespace: "ns".into(), name: "v".into(), node: "n1".into() }
        );
        let allowed = |v: Verdict| matches!(v, Verdict::Allow(_));
        assert!(allowed(decide(&pod(json!({ "app": "web" }), "n1"), Some(&live))), "not a launcher");
        assert!(allowed(decide(&launcher, None)), "no VMI");
        assert!(allowed(decide(&launcher, Some(&vmi("None", "Running", "n1")))), "strategy None");
        assert!(allowed(decide(&launcher, Some(&vmi("LiveMigrate", "Scheduled", "n1")))), "not running");
        assert!(allowed(decide(&launcher, Some(&vmi("LiveMigrate", "Running", "n2")))), "a target pod");
    }
}
