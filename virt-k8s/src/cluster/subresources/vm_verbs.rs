//! `start`, `stop` and `restart` of a VirtualMachine, served through the API server as KubeVirt's
//! virt-api serves them: the local node's `lifecycle::strategy::request` decides (the same
//! refusals: `VM is already running`, `Halted does not support manual start requests`, ...), and
//! the answer is carried out by updating the VM, its run strategy with a replace of the object and
//! queued state changes with a replace of `/status`, both under the `resourceVersion` read (a
//! concurrent writer makes this retry, never lose a request). A grace period in the options body
//! (`gracePeriod` of StopOptions, `gracePeriodSeconds` of RestartOptions) is written to the VMI's
//! `spec.terminationGracePeriodSeconds`, as virt-api does.
//!
//! With these served, KubeVirt's own `virtctl` and ours speak to the cluster the same way, and a
//! user needs only the subresource's permission, not `update` on VMs.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;
use virt_core::lifecycle::strategy::{self, InstanceView, Request};
use virt_core::model::{VirtualMachine, VirtualMachineInstance, VmiPhase};

use super::routes::{done, refuse, Refusal};
use super::Server;
use crate::cluster::kinds::Cr;

/// The VM subresources this server serves, with their verbs (discovery).
pub(super) const VM_SUBRESOURCES: &[(&str, &str)] =
    &[("start", "update"), ("stop", "update"), ("restart", "update")];

/// How many times a verb re-reads the VM after a conflicting write.
const ATTEMPTS: usize = 5;

fn internal(what: String, e: kube::Error) -> Refusal {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("{what}: {e}"))
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

pub(super) async fn start(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    done(verb(&s, &h, &ns, &name, Request::Start, &body).await)
}

pub(super) async fn stop(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    done(verb(&s, &h, &ns, &name, Request::Stop, &body).await)
}

pub(super) async fn restart(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    done(verb(&s, &h, &ns, &name, Request::Restart, &body).await)
}

async fn verb(
    s: &Server,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    request: Request,
    body: &[u8],
) -> Result<(), Refusal> {
    let what = match request {
        Request::Start => "start",
        Request::Stop => "stop",
        Request::Restart => "restart",
    };
    let grace = match request {
        Request::Start => None,
        Request::Stop | Request::Restart => {
            crate::node::api::grace(body).map_err(|e| Box::new(e.into_response()))?
        }
    };
    let user = headers.get("x-remote-user").and_then(|v| v.to_str().ok()).unwrap_or("?");
    log::info!("subresource {what} of VM {ns}/{name} for {user}");
    let vms: Api<Cr<VirtualMachine>> = Api::namespaced(s.client.clone(), ns);
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(s.client.clone(), ns);
    for _ in 0..ATTEMPTS {
        let Some(vm) = vms.get_opt(name).await.map_err(|e| internal(format!("reading VM {ns}/{name}"), e))?
        else {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("virtualmachines.kubevirt.io \"{name}\" not found"),
            ));
        };
        if vm.meta.deletion_timestamp.is_some() {
            return Err(refuse(
                StatusCode::CONFLICT,
                "Conflict",
                format!("VirtualMachine {ns}/{name} is being deleted"),
            ));
        }
        let vmi = vmis
            .get_opt(name)
            .await
            .map_err(|e| internal(format!("reading VMI {ns}/{name}"), e))?
            .filter(|v| crate::cluster::controller::vm::owned_by(v, vm.meta.uid.as_deref()));
        let view = vmi.as_ref().map(|v| InstanceView {
            phase: v.obj.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending),
            deleting: v.meta.deletion_timestamp.is_some(),
        });
        let outcome = strategy::request(vm.obj.spec.effective_run_strategy(), view, request)
            .map_err(|e| refuse(StatusCode::CONFLICT, "Conflict", e.to_string()))?;
        // The grace period first: once the VM is updated its controller may delete the VMI at
        // once (a VMI already gone needs none).
        if let (Some(g), Some(_)) = (grace, vmi.as_ref()) {
            let patch = Patch::Merge(json!({ "spec": { "terminationGracePeriodSeconds": g } }));
            match vmis.patch(name, &PatchParams::default(), &patch).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(internal(format!("setting the grace period of VMI {ns}/{name}"), e)),
            }
        }
        let mut vm = vm;
        if let Some(strategy) = outcome.new_strategy {
            vm.obj.spec.running = None;
            vm.obj.spec.run_strategy = Some(strategy);
            match vms.replace(name, &PostParams::default(), &vm).await {
                Ok(stored) => vm = stored,
                Err(e) if conflict(&e) => continue,
                Err(e) => return Err(internal(format!("updating VM {ns}/{name}"), e)),
            }
        }
        if !outcome.queue.is_empty() {
            let status = vm.obj.status.get_or_insert_with(Default::default);
            status
                .state_change_requests
                .extend(outcome.queue.iter().map(|c| json!({ "action": c.as_str() })));
            match vms.replace_status(name, &PostParams::default(), &vm).await {
                Ok(_) => {}
                // A new strategy written above stays: the retry reads it and queues what is left.
                Err(e) if conflict(&e) => continue,
                Err(e) => return Err(internal(format!("updating the status of VM {ns}/{name}"), e)),
            }
        }
        return Ok(());
    }
    Err(refuse(
        StatusCode::CONFLICT,
        "Conflict",
        format!("{what} of VM {ns}/{name}: it kept changing under {ATTEMPTS} attempts; try again"),
    ))
}
