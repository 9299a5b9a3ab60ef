//! DataVolume -> PersistentVolumeClaim + importer Pod, as CDI's import controller: the claim
//! (named as the DataVolume, sized from `spec.storage`/`spec.pvc`, owned by it), once bound the
//! importer pod (owned by it, `cluster::importer`), and the DataVolume's status from both:
//! `Pending` (claim not bound), `ImportScheduled` (pod not running yet), `ImportInProgress`
//! (with the importer's `progress`), `Succeeded` (`100.0%`) or `Failed` (the importer's
//! termination message), conditions `Bound`, `Running`, `Ready`. Deleting the DataVolume takes
//! claim and pod with it (owner references; the garbage collector).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_storage::cdi::{
    Condition, ConditionStatus, DataVolume, DataVolumePhase, DataVolumeProgress, DataVolumeStatus, SourceKind,
};

use super::{key, Context, ReconcileError};
use crate::cluster::importer::{importer_pod, last_progress, pod_name};
use crate::cluster::kinds::Cr;

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// The sources the cluster's importer fills; others fail naming the field.
pub fn unsupported_source(dv: &DataVolume) -> Option<String> {
    if dv.spec.source_ref.is_some() {
        return Some("spec.sourceRef is not supported on the cluster yet (no DataSource clones)".into());
    }
    let source = dv.spec.source.as_ref()?;
    match source.single() {
        Some(SourceKind::Http(_)) | Some(SourceKind::Blank) | Some(SourceKind::Registry(_)) => None,
        Some(k) => Some(format!("spec.source.{} is not supported on the cluster yet", k.field())),
        None => Some("spec.source must name exactly one source".into()),
    }
}

/// The claim of `dv`: named as it, owned by it, its size, access modes, class and volume mode
/// from `spec.pvc` or `spec.storage` (ReadWriteOnce and the cluster's default class when unset).
pub fn claim_for(dv: &Cr<DataVolume>) -> PersistentVolumeClaim {
    let spec = &dv.obj.spec;
    let (modes, class, mode) = match (&spec.pvc, &spec.storage) {
        (Some(p), _) => (json!(p.access_modes), p.storage_class_name.clone(), json!(p.volume_mode)),
        (None, Some(s)) => (json!(s.access_modes), s.storage_class_name.clone(), json!(s.volume_mode)),
        (None, None) => (json!([]), None, json!(null)),
    };
    let modes = if modes.as_array().is_none_or(|m| m.is_empty()) { json!(["ReadWriteOnce"]) } else { modes };
    let mode = match mode.as_str() {
        Some("Block") => "Block",
        _ => "Filesystem",
    };
    let size = spec.requested_size().map(|q| q.bytes()).unwrap_or(1 << 30);
    let mut claim = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": dv.meta.name, "namespace": dv.meta.namespace,
            "labels": { "app": "containerized-data-importer" },
            "ownerReferences": [{
                "apiVersion": Cr::<DataVolume>::api_version(), "kind": "DataVolume",
                "name": dv.meta.name, "uid": dv.meta.uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "accessModes": modes,
            "resources": { "requests": { "storage": size.to_string() } },
            "volumeMode": mode,
        },
    });
    if let Some(c) = class {
        claim["spec"]["storageClassName"] = json!(c);
    }
    serde_json::from_value(claim).unwrap_or_default()
}

fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        last_transition_time: None,
        last_heartbeat_time: None,
        reason: Some(reason.into()),
        message: (!message.is_empty()).then(|| message.to_string()),
    }
}

/// The status a DataVolume's claim and importer pod stand for (pure). `progress`: the last the
/// importer's log reported.
pub fn status_of(
    name: &str,
    claim: Option<&PersistentVolumeClaim>,
    pod: Option<&Pod>,
    progress: Option<String>,
    restarts: Option<i32>,
) -> DataVolumeStatus {
    let claim_phase = claim.and_then(|c| c.status.as_ref()).and_then(|s| s.phase.clone());
    let bound = claim_phase.as_deref() == Some("Bound");
    let mut st =
        DataVolumeStatus { claim_name: Some(name.into()), restart_count: restarts, ..Default::default() };
    let set = |st: &mut DataVolumeStatus, phase, running: (bool, &str, &str), ready: (bool, &str, &str)| {
        st.phase = Some(phase);
        let bound_msg = if bound {
            format!("PVC {name} Bound")
        } else {
            format!("PVC {name} {}", claim_phase.as_deref().unwrap_or("Pending"))
        };
        st.conditions = vec![
            cond("Bound", bound, if bound { "Bound" } else { "Pending" }, &bound_msg),
            cond("Running", running.0, running.1, running.2),
            cond("Ready", ready.0, ready.1, ready.2),
        ];
    };
    if !bound {
        set(&mut st, DataVolumePhase::Pending, (false, "Pending", ""), (false, "Pending", ""));
        return st;
    }
    let pod_phase = pod.and_then(|p| p.status.as_ref()).and_then(|s| s.phase.clone());
    let terminated = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref());
    match pod_phase.as_deref() {
        Some("Succeeded") => {
            st.progress = Some(DataVolumeProgress("100.0%".into()));
            set(
                &mut st,
                DataVolumePhase::Succeeded,
                (false, "Completed", "Import Complete"),
                (true, "Completed", "the volume is populated"),
            );
        }
        Some("Failed") => {
            let message = terminated
                .and_then(|t| t.message.clone())
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .or_else(|| terminated.and_then(|t| t.reason.clone()))
                .unwrap_or_else(|| "the importer failed".into());
            st.progress = progress.or(Some(DataVolumeProgress("N/A".into()).0)).map(DataVolumeProgress);
            set(&mut st, DataVolumePhase::Failed, (false, "Error", &message), (false, "Error", &message));
        }
        Some("Running") => {
            st.progress = Some(DataVolumeProgress(progress.unwrap_or_else(|| "N/A".into())));
            set(
                &mut st,
                DataVolumePhase::ImportInProgress,
                (true, "Pod is running", "Import in progress"),
                (false, "TransferRunning", ""),
            );
        }
        _ => {
            st.progress = Some(DataVolumeProgress("N/A".into()));
            set(
                &mut st,
                DataVolumePhase::ImportScheduled,
                (false, "Pending", "the importer pod is not running yet"),
                (false, "Pending", ""),
            );
        }
    }
    st
}

/// One reconcile of a DataVolume.
pub async fn reconcile(dv: Arc<Cr<DataVolume>>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let k = key("DataVolume", &dv.meta);
    if dv.meta.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let Some(importer) = ctx.importer.as_ref() else { return Ok(Action::await_change()) };
    let current = dv.obj.status.clone().unwrap_or_default();
    if matches!(current.phase, Some(DataVolumePhase::Succeeded) | Some(DataVolumePhase::Failed)) {
        return Ok(Action::await_change());
    }
    let ns = dv.meta.namespace.clone().unwrap_or_default();
    let name = dv.meta.name.clone().unwrap_or_default();
    let dvs: Api<Cr<DataVolume>> = Api::namespaced(ctx.client.clone(), &ns);
    let write = |st: DataVolumeStatus| {
        let dvs = dvs.clone();
        let (ns, name) = (ns.clone(), name.clone());
        async move {
            dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": st })))
                .await
                .map_err(api_err(format!("writing the status of DataVolume {ns}/{name}")))
        }
    };
    if let Some(why) = unsupported_source(&dv.obj) {
        let mut st = DataVolumeStatus { phase: Some(DataVolumePhase::Failed), ..Default::default() };
        st.conditions = vec![
            cond("Bound", false, "UnsupportedSource", &why),
            cond("Running", false, "UnsupportedSource", &why),
            cond("Ready", false, "UnsupportedSource", &why),
        ];
        write(st).await?;
        log::info!("{k}: Failed: {why}");
        return Ok(Action::await_change());
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = match pvcs.get_opt(&name).await.map_err(api_err(format!("reading PVC {ns}/{name}")))? {
        Some(c) => c,
        None => {
            let made = pvcs
                .create(&PostParams::default(), &claim_for(&dv))
                .await
                .map_err(api_err(format!("creating the PVC of DataVolume {ns}/{name}")))?;
            log::info!("{k}: created PVC {ns}/{name}");
            made
        }
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = pod_name(&name);
    let pod = if bound {
        match pods.get_opt(&pod_name).await.map_err(api_err(format!("reading pod {ns}/{pod_name}")))? {
            Some(p) => Some(p),
            None => {
                let made = pods
                    .create(&PostParams::default(), &importer_pod(&dv, importer))
                    .await
                    .map_err(api_err(format!("creating the importer pod of DataVolume {ns}/{name}")))?;
                log::info!("{k}: created importer pod {pod_name}");
                Some(made)
            }
        }
    } else {
        None
    };
    let running =
        pod.as_ref().and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Running");
    let failed =
        pod.as_ref().and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref()) == Some("Failed");
    let progress = if running || failed {
        let lp = LogParams { tail_lines: Some(20), ..Default::default() };
        pods.logs(&pod_name, &lp).await.ok().and_then(|log| last_progress(&log))
    } else {
        None
    };
    let st = status_of(&name, Some(&claim), pod.as_ref(), progress, current.restart_count);
    if dv.obj.status.as_ref() != Some(&st) {
        let phase = st.phase;
        write(st).await?;
        log::info!("{k}: {phase:?}");
    }
    ctx.succeeded(&k);
    Ok(Action::requeue(Duration::from_secs(if running { 1 } else { 3 })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dv(source: serde_json::Value) -> Cr<DataVolume> {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": { "name": "disk", "namespace": "ns", "uid": "dv-1" },
            "spec": { "source": source, "storage": { "resources": { "requests": { "storage": "64Mi" } } } }
        }))
        .unwrap()
    }

    #[test]
    fn the_claim_is_sized_and_owned() {
        let c = claim_for(&dv(json!({ "blank": {} })));
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(
            spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            (64u64 << 20).to_string()
        );
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(c.metadata.owner_references.as_ref().unwrap()[0].uid, "dv-1");
        assert_eq!(unsupported_source(&dv(json!({ "http": { "url": "http://x/d.img" } })).obj), None);
        let pvc = unsupported_source(&dv(json!({ "pvc": { "namespace": "a", "name": "b" } })).obj).unwrap();
        assert!(pvc.contains("spec.source.pvc"), "{pvc}");
    }

    #[test]
    fn claim_and_pod_states_map_to_cdi_phases() {
        let claim = |phase: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({ "metadata": { "name": "disk" }, "status": { "phase": phase } }))
                .unwrap()
        };
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let st = status_of("disk", Some(&claim("Pending")), None, None, None);
        assert_eq!(st.phase, Some(DataVolumePhase::Pending));
        let st = status_of(
            "disk",
            Some(&claim("Bound")),
            Some(&pod(json!({ "status": { "phase": "Pending" } }))),
            None,
            None,
        );
        assert_eq!(st.phase, Some(DataVolumePhase::ImportScheduled));
        assert_eq!(st.conditions[0].status, ConditionStatus::True, "Bound");
        let running = pod(json!({ "status": { "phase": "Running" } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&running), Some("45.20%".into()), None);
        assert_eq!(
            (st.phase, st.progress.as_ref().map(|p| p.0.as_str())),
            (Some(DataVolumePhase::ImportInProgress), Some("45.20%"))
        );
        let done = pod(json!({ "status": { "phase": "Succeeded" } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&done), None, None);
        assert_eq!(st.progress.as_ref().map(|p| p.0.as_str()), Some("100.0%"));
        assert_eq!(st.conditions[2].status, ConditionStatus::True, "Ready");
        let failed = pod(json!({ "status": { "phase": "Failed", "containerStatuses": [{
            "name": "importer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "terminated": { "exitCode": 1, "message": "HTTP 404 from http://h/x.img\n" } } }] } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&failed), None, None);
        assert_eq!(st.phase, Some(DataVolumePhase::Failed));
        assert_eq!(st.conditions[1].message.as_deref(), Some("HTTP 404 from http://h/x.img"));
    }
}
