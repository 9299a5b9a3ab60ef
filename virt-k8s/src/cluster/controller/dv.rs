//! DataVolume -> PersistentVolumeClaim + importer Pod, as CDI's import controller: the claim
//! (named as the DataVolume, sized from `spec.storage`/`spec.pvc`, owned by it), once bound the
//! importer pod (owned by it, `cluster::importer`), and the DataVolume's status from both:
//! `Pending` (claim not bound), `ImportScheduled` (pod not running yet), `ImportInProgress`
//! (with the importer's `progress`), `Succeeded` (`100.0%`) or `Failed` (the importer's
//! termination message), conditions `Bound`, `Running`, `Ready`. Deleting the DataVolume takes
//! claim and pod with it (owner references; the garbage collector).
//!
//! A `spec.source.pvc` clone ([`plan_clone`]) waits `Pending` while the source claim is missing
//! (`CloneWithoutSource`, as CDI), unbound or still being filled by its DataVolume
//! (`CloneSourceNotReady`), and `CloneScheduled` while a pod other than the clone's uses it
//! (`CloneSourceInUse`); then the claim (at least the source's size; the source's size when the
//! DataVolume names none) is made on the source's node and a clone pod (the importer image with
//! `--clone-from`, `cluster::importer::clone_pod`) fills it: `CloneScheduled`, `CloneInProgress`,
//! `Succeeded` with CDI's `cdi.kubevirt.io/cloneType` annotation (`reflink` when the blocks are
//! shared, else `host-assisted`) and `cloneFallbackReason`.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_core::api::Quantity;
use virt_storage::cdi::{
    Condition, DataVolume, DataVolumePhase, DataVolumeProgress, DataVolumeStatus, PvcSource, SourceKind,
};
use virt_storage::datavolume::{ANN_CLONE_FALLBACK, ANN_CLONE_TYPE};

use super::{key, Context, ReconcileError};
use crate::cluster::importer::{
    clone_pod, clone_pod_name, importer_pod, last_progress, pod_name, CloneReport, CloneSource,
};
use crate::cluster::kinds::Cr;
use crate::cluster::storage::{host_dir, ANN_SELECTED_NODE, NODE_LABEL};

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
        Some(SourceKind::Http(_) | SourceKind::Blank | SourceKind::Registry(_) | SourceKind::Pvc(_)) => None,
        Some(k) => Some(format!("spec.source.{} is not supported on the cluster yet", k.field())),
        None => Some("spec.source must name exactly one source".into()),
    }
}

/// The claim of `dv`: named as it, owned by it, its size, access modes, class and volume mode
/// from `spec.pvc` or `spec.storage` (ReadWriteOnce and the cluster's default class when unset);
/// `size` (a clone's: at least its source's) instead of the requested one when given; `node`
/// asks the provisioner for that node (a clone's source's).
pub fn claim_for(dv: &Cr<DataVolume>, size: Option<u64>, node: Option<&str>) -> PersistentVolumeClaim {
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
    let size = size.or_else(|| spec.requested_size().map(|q| q.bytes())).unwrap_or(1 << 30);
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
    if let Some(n) = node {
        claim["metadata"]["annotations"] = json!({ ANN_SELECTED_NODE: n });
    }
    serde_json::from_value(claim).unwrap_or_default()
}

/// How a DataVolume's claim is filled: an import (http, registry, blank) or a clone (`pvc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// The importer pod.
    Import,
    /// The clone pod.
    Clone,
}

impl Fill {
    fn scheduled(self) -> DataVolumePhase {
        match self {
            Self::Import => DataVolumePhase::ImportScheduled,
            Self::Clone => DataVolumePhase::CloneScheduled,
        }
    }
    fn in_progress(self) -> DataVolumePhase {
        match self {
            Self::Import => DataVolumePhase::ImportInProgress,
            Self::Clone => DataVolumePhase::CloneInProgress,
        }
    }
    fn word(self) -> &'static str {
        match self {
            Self::Import => "Import",
            Self::Clone => "Clone",
        }
    }
    fn pod_name(self, dv: &str) -> String {
        match self {
            Self::Import => pod_name(dv),
            Self::Clone => clone_pod_name(dv),
        }
    }
}

/// What a clone needs from its source, or why it waits or cannot be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneCheck {
    /// The source is ready: the claim's size and where the pod reads the source.
    Ready {
        /// The target claim's size.
        size: u64,
        /// The source's volume.
        source: CloneSource,
    },
    /// Not yet: the phase to show, CDI's reason and a message; looked at again.
    Wait(DataVolumePhase, &'static str, String),
    /// Never (a spec that cannot be cloned): the reason and message, the DataVolume `Failed`.
    Fail(&'static str, String),
}

/// The source claim's requested size in bytes.
fn claim_size(pvc: &PersistentVolumeClaim) -> Option<u64> {
    let q = pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?.get("storage")?;
    Quantity::parse(&q.0).ok().map(|q| q.bytes())
}

/// The node a PersistentVolume's directory is on: the provisioner's label, else its node
/// affinity's first `kubernetes.io/hostname`.
fn pv_node(pv: &PersistentVolume) -> Option<String> {
    if let Some(n) = pv.metadata.labels.as_ref().and_then(|l| l.get(NODE_LABEL)) {
        return Some(n.clone());
    }
    let terms = &pv.spec.as_ref()?.node_affinity.as_ref()?.required.as_ref()?.node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == "kubernetes.io/hostname" && e.operator == "In")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

/// Checks the clone source `src` of DataVolume `dv` (in `ns`) before its clone pod exists.
pub async fn plan_clone(
    client: &kube::Client,
    dv: &Cr<DataVolume>,
    ns: &str,
    src: &PvcSource,
) -> Result<CloneCheck, ReconcileError> {
    let src_ns = if src.namespace.is_empty() { ns } else { src.namespace.as_str() };
    let what = format!("{src_ns}/{}", src.name);
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), src_ns);
    let Some(pvc) =
        pvcs.get_opt(&src.name).await.map_err(api_err(format!("reading the source PVC {what}")))?
    else {
        return Ok(CloneCheck::Wait(
            DataVolumePhase::Pending,
            "CloneWithoutSource",
            format!("The source pvc {what} doesn't exist"),
        ));
    };
    if pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return Ok(CloneCheck::Fail(
            "CloneFailed",
            format!("the source pvc {what} has volumeMode Block (filesystem mode with disk.img only)"),
        ));
    }
    // A claim a DataVolume fills is a source once that DataVolume succeeded.
    let filler = pvc.metadata.owner_references.iter().flatten().find(|o| {
        o.kind == "DataVolume" && o.controller == Some(true) && o.api_version.starts_with("cdi.kubevirt.io/")
    });
    if let Some(o) = filler {
        let dvs: Api<Cr<DataVolume>> = Api::namespaced(client.clone(), src_ns);
        let owner =
            dvs.get_opt(&o.name).await.map_err(api_err(format!("reading DataVolume {src_ns}/{}", o.name)))?;
        let phase = owner.as_ref().and_then(|d| d.obj.status.as_ref()).and_then(|s| s.phase);
        if phase != Some(DataVolumePhase::Succeeded) {
            let phase = phase.map(|p| format!("{p:?}")).unwrap_or_else(|| "Pending".into());
            return Ok(CloneCheck::Wait(
                DataVolumePhase::Pending,
                "CloneSourceNotReady",
                format!("The source pvc {what} is being filled by DataVolume {src_ns}/{} ({phase})", o.name),
            ));
        }
    }
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
    let Some(volume) = volume.filter(|_| phase == "Bound") else {
        return Ok(CloneCheck::Wait(
            DataVolumePhase::Pending,
            "CloneSourceNotReady",
            format!("The source pvc {what} is {phase} (not bound yet)"),
        ));
    };
    let have = claim_size(&pvc).unwrap_or(0);
    let size = match dv.obj.spec.requested_size().map(|q| q.bytes()) {
        Some(want) if want < have => {
            let field = if dv.obj.spec.storage.is_some() { "spec.storage" } else { "spec.pvc" };
            return Ok(CloneCheck::Fail(
                "CloneFailed",
                format!(
                    "{field}.resources.requests.storage: {want} bytes is smaller than the source pvc {what} ({have} bytes)"
                ),
            ));
        }
        Some(want) => want,
        None => have,
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get_opt(&volume).await.map_err(api_err(format!("reading PersistentVolume {volume}")))?;
    let source = match pv.as_ref().and_then(|pv| host_dir(pv).map(|d| (d, pv_node(pv)))) {
        Some((dir, node)) => CloneSource::HostDir { path: dir.display().to_string(), node },
        None if src_ns == ns => CloneSource::Claim(src.name.clone()),
        None => {
            return Ok(CloneCheck::Fail(
                "CloneFailed",
                format!(
                "the source pvc {what} is in another namespace and its PersistentVolume {volume} is neither \
                     hostPath nor local: a clone pod can mount only its own namespace's claims (CDI streams \
                     such clones between two pods; not supported yet)"
            ),
            ))
        }
    };
    // A pod writing the source while it is copied would leave a torn copy.
    let pods: Api<Pod> = Api::namespaced(client.clone(), src_ns);
    let ours = clone_pod_name(dv.meta.name.as_deref().unwrap_or_default());
    let users: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing the pods of namespace {src_ns}")))?
        .items
        .into_iter()
        .filter(|p| p.metadata.name.as_deref() != Some(ours.as_str()) || src_ns != ns)
        .filter(|p| {
            !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
        })
        .filter(|p| {
            p.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .any(|v| v.persistent_volume_claim.as_ref().is_some_and(|c| c.claim_name == src.name))
        })
        .filter_map(|p| p.metadata.name)
        .collect();
    if !users.is_empty() {
        return Ok(CloneCheck::Wait(
            DataVolumePhase::CloneScheduled,
            "CloneSourceInUse",
            format!("The source pvc {what} is in use by pod {}", users.join(", ")),
        ));
    }
    Ok(CloneCheck::Ready { size, source })
}

/// The status of a DataVolume that waits for (or cannot have) its clone source.
fn waiting(phase: DataVolumePhase, reason: &str, message: &str) -> DataVolumeStatus {
    let mut st = DataVolumeStatus { phase: Some(phase), ..Default::default() };
    st.progress = Some(DataVolumeProgress("N/A".into()));
    st.conditions = vec![
        cond("Bound", false, reason, message),
        cond("Running", false, reason, message),
        cond("Ready", false, reason, message),
    ];
    st
}

/// virt-storage's condition, without an empty message (the API server's objects omit it).
fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    let mut c = virt_storage::datavolume::condition(type_, ok, reason, message);
    c.message = c.message.filter(|m| !m.is_empty());
    c
}

/// The status a DataVolume's claim and importer pod stand for (pure). `progress`: the last the
/// importer's log reported.
pub fn status_of(
    name: &str,
    claim: Option<&PersistentVolumeClaim>,
    pod: Option<&Pod>,
    progress: Option<String>,
    restarts: Option<i32>,
    fill: Fill,
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
                (false, "Completed", &format!("{} Complete", fill.word())),
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
                fill.in_progress(),
                (true, "Pod is running", &format!("{} in progress", fill.word())),
                (false, "TransferRunning", ""),
            );
        }
        _ => {
            st.progress = Some(DataVolumeProgress("N/A".into()));
            set(
                &mut st,
                fill.scheduled(),
                (false, "Pending", &format!("the {} pod is not running yet", fill.word().to_lowercase())),
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
    let clone_src = dv.obj.spec.source.as_ref().and_then(|s| s.pvc.clone());
    let fill = if clone_src.is_some() { Fill::Clone } else { Fill::Import };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod_name = fill.pod_name(&name);
    let existing = pods.get_opt(&pod_name).await.map_err(api_err(format!("reading pod {ns}/{pod_name}")))?;
    // A clone looks at its source until its pod exists (the pod then uses the source itself).
    let mut plan = None;
    if let (Some(src), None) = (&clone_src, &existing) {
        match plan_clone(&ctx.client, &dv, &ns, src).await? {
            CloneCheck::Ready { size, source } => plan = Some((size, source)),
            CloneCheck::Wait(phase, reason, message) => {
                let st = waiting(phase, reason, &message);
                if dv.obj.status.as_ref() != Some(&st) {
                    write(st).await?;
                    log::info!("{k}: {phase:?}: {message}");
                }
                ctx.succeeded(&k);
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            CloneCheck::Fail(reason, message) => {
                let mut st = waiting(DataVolumePhase::Failed, reason, &message);
                st.progress = None;
                write(st).await?;
                log::info!("{k}: Failed: {message}");
                return Ok(Action::await_change());
            }
        }
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let claim = match pvcs.get_opt(&name).await.map_err(api_err(format!("reading PVC {ns}/{name}")))? {
        Some(c) => c,
        None => {
            let (size, node) = match &plan {
                Some((size, CloneSource::HostDir { node, .. })) => (Some(*size), node.as_deref()),
                Some((size, CloneSource::Claim(_))) => (Some(*size), None),
                None => (None, None),
            };
            let made = pvcs
                .create(&PostParams::default(), &claim_for(&dv, size, node))
                .await
                .map_err(api_err(format!("creating the PVC of DataVolume {ns}/{name}")))?;
            log::info!("{k}: created PVC {ns}/{name}");
            made
        }
    };
    let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
    let pod = match existing {
        Some(p) => Some(p),
        None if bound => {
            let want = match &plan {
                Some((_, source)) => clone_pod(&dv, importer, source),
                None => importer_pod(&dv, importer),
            };
            let made = pods
                .create(&PostParams::default(), &want)
                .await
                .map_err(api_err(format!("creating the {} pod of DataVolume {ns}/{name}", fill.word())))?;
            log::info!("{k}: created pod {pod_name}");
            Some(made)
        }
        None => None,
    };
    let pod_phase = pod.as_ref().and_then(|p| p.status.as_ref()).and_then(|s| s.phase.as_deref());
    let (running, failed) = (pod_phase == Some("Running"), pod_phase == Some("Failed"));
    let progress = if running || failed {
        let lp = LogParams { tail_lines: Some(20), ..Default::default() };
        pods.logs(&pod_name, &lp).await.ok().and_then(|log| last_progress(&log))
    } else {
        None
    };
    let st = status_of(&name, Some(&claim), pod.as_ref(), progress, current.restart_count, fill);
    if fill == Fill::Clone && st.phase == Some(DataVolumePhase::Succeeded) {
        annotate_clone(&dvs, &dv, pod.as_ref()).await?;
    }
    if dv.obj.status.as_ref() != Some(&st) {
        let phase = st.phase;
        write(st).await?;
        log::info!("{k}: {phase:?}");
    }
    ctx.succeeded(&k);
    Ok(Action::requeue(Duration::from_secs(if running { 1 } else { 3 })))
}

/// Copies the clone pod's report (its termination message) into CDI's annotations on the
/// DataVolume: `cdi.kubevirt.io/cloneType`, `cdi.kubevirt.io/cloneFallbackReason`.
async fn annotate_clone(
    dvs: &Api<Cr<DataVolume>>,
    dv: &Cr<DataVolume>,
    pod: Option<&Pod>,
) -> Result<(), ReconcileError> {
    let message = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.message.as_deref());
    let Some(report) = message.and_then(|m| serde_json::from_str::<CloneReport>(m.trim()).ok()) else {
        return Ok(());
    };
    let has = |k: &str| dv.meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
    if has(ANN_CLONE_TYPE).as_deref() == Some(report.clone_type.as_str())
        && has(ANN_CLONE_FALLBACK) == report.clone_fallback_reason
    {
        return Ok(());
    }
    let name = dv.meta.name.clone().unwrap_or_default();
    let patch = json!({ "metadata": { "annotations": {
        ANN_CLONE_TYPE: report.clone_type,
        ANN_CLONE_FALLBACK: report.clone_fallback_reason,
    } } });
    dvs.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(api_err(format!("annotating DataVolume {name} with its clone type")))?;
    log::info!("DataVolume {name}: cloned: {}", report.detail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_storage::cdi::ConditionStatus;

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
        let c = claim_for(&dv(json!({ "blank": {} })), None, None);
        let spec = c.spec.as_ref().unwrap();
        assert_eq!(
            spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            (64u64 << 20).to_string()
        );
        assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteOnce".to_string()][..]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(c.metadata.owner_references.as_ref().unwrap()[0].uid, "dv-1");
        assert_eq!(unsupported_source(&dv(json!({ "http": { "url": "http://x/d.img" } })).obj), None);
        assert_eq!(unsupported_source(&dv(json!({ "pvc": { "namespace": "a", "name": "b" } })).obj), None);
        let up = unsupported_source(&dv(json!({ "upload": {} })).obj).unwrap();
        assert!(up.contains("spec.source.upload"), "{up}");
        // A clone's claim: the size given (its source's at least), on the source's node.
        let c =
            claim_for(&dv(json!({ "pvc": { "namespace": "a", "name": "b" } })), Some(1 << 30), Some("n1"));
        assert_eq!(
            c.spec.as_ref().unwrap().resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            (1u64 << 30).to_string()
        );
        assert_eq!(c.metadata.annotations.as_ref().unwrap()[ANN_SELECTED_NODE], "n1");
    }

    #[test]
    fn claim_and_pod_states_map_to_cdi_phases() {
        let claim = |phase: &str| -> PersistentVolumeClaim {
            serde_json::from_value(json!({ "metadata": { "name": "disk" }, "status": { "phase": phase } }))
                .unwrap()
        };
        let pod = |v: serde_json::Value| -> Pod { serde_json::from_value(v).unwrap() };
        let st = status_of("disk", Some(&claim("Pending")), None, None, None, Fill::Import);
        assert_eq!(st.phase, Some(DataVolumePhase::Pending));
        let st = status_of(
            "disk",
            Some(&claim("Bound")),
            Some(&pod(json!({ "status": { "phase": "Pending" } }))),
            None,
            None,
            Fill::Import,
        );
        assert_eq!(st.phase, Some(DataVolumePhase::ImportScheduled));
        let pending = pod(json!({ "status": { "phase": "Pending" } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&pending), None, None, Fill::Clone);
        assert_eq!(st.phase, Some(DataVolumePhase::CloneScheduled));
        assert_eq!(st.conditions[0].status, ConditionStatus::True, "Bound");
        let running = pod(json!({ "status": { "phase": "Running" } }));
        let st = status_of(
            "disk",
            Some(&claim("Bound")),
            Some(&running),
            Some("45.20%".into()),
            None,
            Fill::Import,
        );
        assert_eq!(
            (st.phase, st.progress.as_ref().map(|p| p.0.as_str())),
            (Some(DataVolumePhase::ImportInProgress), Some("45.20%"))
        );
        let done = pod(json!({ "status": { "phase": "Succeeded" } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&done), None, None, Fill::Import);
        assert_eq!(st.progress.as_ref().map(|p| p.0.as_str()), Some("100.0%"));
        assert_eq!(st.conditions[2].status, ConditionStatus::True, "Ready");
        let st = status_of("disk", Some(&claim("Bound")), Some(&running), None, None, Fill::Clone);
        assert_eq!(st.phase, Some(DataVolumePhase::CloneInProgress));
        let st = status_of("disk", Some(&claim("Bound")), Some(&done), None, None, Fill::Clone);
        assert_eq!(st.conditions[1].message.as_deref(), Some("Clone Complete"));
        let failed = pod(json!({ "status": { "phase": "Failed", "containerStatuses": [{
            "name": "importer", "image": "i", "imageID": "", "ready": false, "restartCount": 0,
            "state": { "terminated": { "exitCode": 1, "message": "HTTP 404 from http://h/x.img\n" } } }] } }));
        let st = status_of("disk", Some(&claim("Bound")), Some(&failed), None, None, Fill::Import);
        assert_eq!(st.phase, Some(DataVolumePhase::Failed));
        assert_eq!(st.conditions[1].message.as_deref(), Some("HTTP 404 from http://h/x.img"));
    }
}
