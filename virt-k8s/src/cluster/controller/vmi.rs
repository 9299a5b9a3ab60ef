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
use crate::cluster::pod::{launcher_pod, phase_from_pod, CREATED_BY, NODE_NAME_LABEL};

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
    let cached = ctx.pods.as_ref().and_then(|store| {
        store
            .state()
            .into_iter()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && p.metadata.labels.as_ref().and_then(|l| l.get(CREATED_BY)) == Some(&uid)
            })
            .map(|p| Pod::clone(&p))
    });
    // The cache can lag behind a pod just created (another watch): only a list says there is none.
    let from_cache = cached.is_some();
    let pod = match cached {
        Some(p) => Some(p),
        None => pods
            .list(&ListParams::default().labels(&format!("{CREATED_BY}={uid}")))
            .await
            .map_err(api_err(format!("listing the pods of VMI {ns}/{name}")))?
            .items
            .into_iter()
            .next(),
    };
    let (phase, node, reason) = match &pod {
        Some(p) => (phase_from_pod(p, status.phase), p.spec.as_ref().and_then(|s| s.node_name.clone()), None),
        None if matches!(status.phase, None | Some(VmiPhase::Pending) | Some(VmiPhase::Scheduling)) => {
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
