//! VirtualMachineInstance -> launcher Pod: creates the pod (owned by the VMI), and writes the
//! VMI's phase and node from the pod through `/status`, with the `kubevirt.io/nodeName` label.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_core::model::{VirtualMachineInstance, VmiPhase};

use super::{key, Context, ReconcileError};
use crate::cluster::kinds::Cr;
use crate::cluster::pod::{active_pod, claims, launcher_pod, phase_from_pod, CREATED_BY, NODE_NAME_LABEL};
use crate::cluster::storage::{claim_bound, StorageError};
use virt_storage::cdi::{DataVolume, DataVolumePhase};

/// Why `vmi`'s claims keep it from starting, if they do: KubeVirt's `Synchronized` condition
/// reason and message (a DataVolume that has not succeeded, a claim missing or not bound).
async fn claims_not_ready(
    ctx: &Context,
    ns: &str,
    vmi: &VirtualMachineInstance,
) -> Result<Option<(&'static str, String)>, ReconcileError> {
    for v in &vmi.spec.volumes {
        if let Some(d) = &v.data_volume {
            let dvs: Api<Cr<DataVolume>> = Api::namespaced(ctx.client.clone(), ns);
            let got =
                dvs.get_opt(&d.name).await.map_err(api_err(format!("reading DataVolume {ns}/{}", d.name)))?;
            let phase = got.as_ref().and_then(|g| g.obj.status.as_ref()).and_then(|s| s.phase);
            if phase != Some(DataVolumePhase::Succeeded) {
                let what = match (&got, phase) {
                    (None, _) => "does not exist".to_string(),
                    (Some(_), Some(p)) => format!(
                        "is {}",
                        serde_json::to_value(p)
                            .ok()
                            .and_then(|v| v.as_str().map(String::from))
                            .unwrap_or_default()
                    ),
                    (Some(_), None) => "has no phase yet".to_string(),
                };
                return Ok(Some((
                    "DataVolumesNotReady",
                    format!("volume {}: DataVolume {ns}/{} {what}", v.name, d.name),
                )));
            }
        }
    }
    for (volume, claim) in claims(vmi) {
        match claim_bound(&ctx.client, ns, &claim).await {
            Ok(()) => {}
            Err(e @ StorageError::ClaimNotFound { .. }) => {
                return Ok(Some(("FailedPvcNotFound", format!("volume {volume}: {e}"))))
            }
            Err(e @ StorageError::ClaimNotBound { .. }) => {
                return Ok(Some(("PvcNotReady", format!("volume {volume}: {e}"))))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// One reconcile of a VirtualMachineInstance.
pub async fn reconcile(
    vmi: Arc<Cr<VirtualMachineInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let k = key("VirtualMachineInstance", &vmi.meta);
    if vmi.meta.deletion_timestamp.is_some() {
        // The garbage collector removes the pod.
        return Ok(Action::await_change());
    }
    let status = vmi.obj.status.clone().unwrap_or_default();
    if status.phase.is_some_and(|p| p.is_final()) {
        return Ok(Action::await_change());
    }
    let ns = vmi.meta.namespace.clone().unwrap_or_default();
    let name = vmi.meta.name.clone().unwrap_or_default();
    let uid = vmi.meta.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let cached: Vec<Pod> = ctx
        .pods
        .as_ref()
        .map(|store| {
            store
                .state()
                .into_iter()
                .filter(|p| {
                    p.metadata.namespace.as_deref() == Some(ns.as_str())
                        && p.metadata.labels.as_ref().and_then(|l| l.get(CREATED_BY)) == Some(&uid)
                })
                .map(|p| Pod::clone(&p))
                .collect()
        })
        .unwrap_or_default();
    // The cache can lag behind a pod just created (another watch): only a list says there is none.
    let from_cache = !cached.is_empty();
    let all = if from_cache {
        cached
    } else {
        pods.list(&ListParams::default().labels(&format!("{CREATED_BY}={uid}")))
            .await
            .map_err(api_err(format!("listing the pods of VMI {ns}/{name}")))?
            .items
    };
    // A VMI that migrated has more than one: the one running its VM (KubeVirt's activePods).
    let pod = active_pod(&all, &status).cloned();
    // While its VM moves, the source pod's end is not the VMI's: the node agent records where it
    // went (`status.migrationState`), then the target pod is followed.
    let moving = status.migration_state.as_ref().is_some_and(|m| m.completed != Some(true));
    let (phase, node, reason) = match &pod {
        Some(p) if moving && phase_from_pod(p, status.phase).is_final() => {
            ctx.succeeded(&k);
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Some(p) => (phase_from_pod(p, status.phase), p.spec.as_ref().and_then(|s| s.node_name.clone()), None),
        None if all.is_empty()
            && matches!(status.phase, None | Some(VmiPhase::Pending) | Some(VmiPhase::Scheduling)) =>
        {
            // Its claims first: a pod mounting a claim that is not there or not filled yet would
            // stay Pending in the kubelet or boot an empty disk.
            if let Some((reason, message)) = claims_not_ready(&ctx, &ns, &vmi.obj).await? {
                let said = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Synchronized" && c.message.as_deref() == Some(message.as_str()));
                if !said || status.phase != Some(VmiPhase::Pending) {
                    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
                    let s = json!({ "phase": VmiPhase::Pending, "conditions": [
                        { "type": "Ready", "status": "False" },
                        { "type": "Synchronized", "status": "False", "reason": reason, "message": message },
                    ] });
                    vmis.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": s })))
                        .await
                        .map_err(api_err(format!("writing the status of VMI {ns}/{name}")))?;
                    log::info!("{k}: Pending: {message}");
                }
                ctx.succeeded(&k);
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            let created = pods
                .create(&PostParams::default(), &launcher_pod(&vmi, &ctx.launcher))
                .await
                .map_err(api_err(format!("creating the launcher pod of VMI {ns}/{name}")))?;
            log::info!("{k}: created launcher pod {}", created.metadata.name.as_deref().unwrap_or("?"));
            (VmiPhase::Scheduling, None, None)
        }
        // The pod of a scheduled or running VMI is gone: the VMI failed.
        None => (VmiPhase::Failed, status.node_name.clone(), Some("PodDeleted")),
    };
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(node) = &node {
        let labelled = vmi.meta.labels.as_ref().and_then(|l| l.get(NODE_NAME_LABEL)) == Some(node);
        if !labelled {
            vmis.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "metadata": { "labels": { NODE_NAME_LABEL: node } } })),
            )
            .await
            .map_err(api_err(format!("labelling VMI {ns}/{name}")))?;
        }
    }
    let ready = phase == VmiPhase::Running;
    let ready_now =
        status.conditions.iter().any(|c| c.type_ == "Ready" && format!("{:?}", c.status) == "True");
    if status.phase != Some(phase) || status.node_name != node || ready != ready_now {
        let mut s = json!({
            "phase": phase,
            "nodeName": node,
            "conditions": [{ "type": "Ready", "status": if ready { "True" } else { "False" } }],
        });
        if let Some(r) = reason {
            s["reason"] = json!(r);
        }
        vmis.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": s })))
            .await
            .map_err(api_err(format!("writing the status of VMI {ns}/{name}")))?;
        log::info!("{k}: phase {phase:?} on {}", node.as_deref().unwrap_or("no node"));
    }
    ctx.succeeded(&k);
    // A cached pod may be one the cache has not yet seen go: look again soon (no request unless
    // something changed).
    Ok(Action::requeue(Duration::from_secs(if from_cache { 30 } else { 300 })))
}
