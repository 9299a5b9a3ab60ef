//! DataVolumes: populate a volume from the source a `DataVolume` names, reporting CDI's phases,
//! progress and conditions.
//!
//! [`reconcile_data_volume`] is one reconcile: idempotent (a DataVolume whose volume exists is
//! Succeeded; imports are staged, so a volume only exists once complete), with the status written
//! back into the object and progress reported through a callback while bytes flow.
//!
//! | Source | What happens |
//! | --- | --- |
//! | `blank` | an empty volume of the requested size |
//! | `http` | streaming import (resume, checksum, decompression, conversion), credentials from `secretRef` (`accessKeyId`/`secretKey`), CAs from `certConfigMap` |
//! | `registry` | containerDisk import, pinned to the resolved digest |
//! | `pvc` | a clone in the target's storage class: reflink, else qcow2 overlay, else host-assisted, with `cdi.kubevirt.io/cloneType` and `cdi.kubevirt.io/cloneFallbackReason` annotations |
//! | `sourceRef` (DataSource) | the DataSource's volume is cloned as for `pvc` (golden images) |
//! | `snapshot` | a new volume restored from a ready `VolumeSnapshot` (reflink, else a copy; never an overlay, so the snapshot may be deleted), phases and `cloneType` as for `pvc`; waits `Pending` while the snapshot is missing or not ready; a size below its `restoreSize` fails |
//! | `upload` | `UploadReady`: the upload endpoint fills it |
//! | `s3`, `gcs`, `imageio`, `vddk` | refused with a reason (`Failed`) |

use std::collections::BTreeMap;

use crate::cdi::{
    Condition, ConditionStatus, DataSource, DataVolume, DataVolumePhase, DataVolumeProgress,
    DataVolumeStatus, PvcSource, SnapshotSource, VolumeSnapshot,
};
use crate::golden::StorageClasses;
use crate::import::http::{HttpOptions, HttpSource};
use crate::import::registry::import_container_disk;
use crate::import::{import, ImportOptions, Progress};
use crate::registry::{Credentials, RegistryClient, RegistryConfig};
use crate::volume::{CloneOptions, VolumeFormat, VolumeId, VolumeProvider};

/// Annotation recording the clone strategy used.
pub const ANN_CLONE_TYPE: &str = "cdi.kubevirt.io/cloneType";
/// Annotation recording why a better clone strategy was not used.
pub const ANN_CLONE_FALLBACK: &str = "cdi.kubevirt.io/cloneFallbackReason";

/// The objects a DataVolume refers to by name (Secrets, ConfigMaps, DataSources).
pub trait ObjectLookup {
    /// A Secret's data (already base64-decoded).
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>>;
    /// A ConfigMap's data.
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>>;
    /// A DataSource.
    fn data_source(&self, namespace: &str, name: &str) -> Option<DataSource>;
    /// A VolumeSnapshot (`snapshot.storage.k8s.io/v1`); none by default.
    fn volume_snapshot(&self, _namespace: &str, _name: &str) -> Option<VolumeSnapshot> {
        None
    }
}

/// What a reconcile needs besides the DataVolume.
pub struct DvEnv<'a> {
    /// Storage classes and their pools.
    pub classes: &'a StorageClasses<'a>,
    /// Named objects.
    pub objects: &'a dyn ObjectLookup,
    /// Registries the node treats as insecure (CDIConfig's `insecureRegistries`).
    pub insecure_registries: Vec<String>,
    /// Where imports may connect (the node's own API and link-local addresses refused).
    pub net_policy: Option<std::sync::Arc<crate::import::policy::NetPolicy>>,
}

/// What one reconcile did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DvRun {
    /// The volume was already there.
    AlreadyDone,
    /// The volume was populated now.
    Populated,
    /// Waiting for something (an upload, a DataSource becoming ready).
    Waiting(String),
    /// Population failed; the status says why.
    Failed(String),
}

/// A DataVolume condition as CDI writes them (`True`/`False`, reason, message); the local node's
/// controller and the cluster's use it.
pub fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        last_transition_time: None,
        last_heartbeat_time: None,
        reason: Some(reason.into()),
        message: Some(message.into()),
    }
}

fn set_conditions(
    st: &mut DataVolumeStatus,
    bound: bool,
    ready: bool,
    running: bool,
    reason: &str,
    message: &str,
) {
    for c in [
        condition("Bound", bound, reason, message),
        condition("Ready", ready, reason, message),
        condition("Running", running, reason, message),
    ] {
        match st.conditions.iter_mut().find(|x| x.type_ == c.type_) {
            Some(old) => *old = c,
            None => st.conditions.push(c),
        }
    }
}

fn fail(dv: &mut DataVolume, reason: &str, message: String) -> DvRun {
    let st = dv.status.get_or_insert_with(Default::default);
    st.phase = Some(DataVolumePhase::Failed);
    set_conditions(st, false, false, false, reason, &message);
    DvRun::Failed(message)
}

/// Populates the volume of `dv` from its source, or reports why it cannot (yet).
pub fn reconcile_data_volume(
    dv: &mut DataVolume,
    env: &DvEnv<'_>,
    progress: &mut (dyn FnMut(&DataVolumeStatus) + Send),
) -> DvRun {
    let ns = dv.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(name) = dv.metadata.name.clone() else {
        return fail(dv, "InvalidSpec", "metadata.name is required".into());
    };
    let id = VolumeId::new(&ns, &name);
    if let Err(e) = id.validate() {
        return fail(dv, "InvalidSpec", e.to_string());
    }
    let class = dv
        .spec
        .storage
        .as_ref()
        .and_then(|s| s.storage_class_name.clone())
        .or_else(|| dv.spec.pvc.as_ref().and_then(|p| p.storage_class_name.clone()));
    let class_name = class.unwrap_or_else(|| env.classes.default_class.clone());
    let Some(pool) = env.classes.classes.get(&class_name).copied() else {
        return fail(
            dv,
            "StorageClassNotFound",
            format!("storage class {class_name:?} does not exist on this node"),
        );
    };
    let size = dv.spec.requested_size().map(|q| q.bytes());

    // Already populated (also after a crash between the rename and the status write).
    match pool.get(&id) {
        Ok(Some(_)) => {
            let st = dv.status.get_or_insert_with(Default::default);
            st.phase = Some(DataVolumePhase::Succeeded);
            st.claim_name = Some(name);
            st.progress = Some(DataVolumeProgress("100.0%".into()));
            set_conditions(st, true, true, false, "Completed", "the volume is populated");
            return DvRun::AlreadyDone;
        }
        Ok(None) => {}
        Err(e) => return fail(dv, "StorageError", e.to_string()),
    }

    // A sourceRef resolves to the DataSource's claim.
    let source = dv.spec.source.clone().unwrap_or_default();
    let clone_from = if let Some(r) = &dv.spec.source_ref {
        if r.kind != "DataSource" {
            return fail(dv, "InvalidSpec", format!("spec.sourceRef.kind {:?} must be DataSource", r.kind));
        }
        let rns = r.namespace.clone().unwrap_or_else(|| ns.clone());
        match env.objects.data_source(&rns, &r.name).and_then(|d| d.spec.source.pvc) {
            Some(p) => Some(p),
            None => {
                let st = dv.status.get_or_insert_with(Default::default);
                st.phase = Some(DataVolumePhase::Pending);
                let msg = format!("DataSource {rns}/{} has no source yet", r.name);
                set_conditions(st, false, false, false, "DataSourceNotReady", &msg);
                return DvRun::Waiting(msg);
            }
        }
    } else {
        source.pvc.clone()
    };

    if let Some(src) = clone_from {
        return clone(dv, pool, env, &id, &src, size);
    }
    if let Some(snap) = &source.snapshot {
        return restore(dv, pool, env, &id, snap, size, progress);
    }
    if source.blank.is_some() {
        let Some(bytes) = size else {
            return fail(
                dv,
                "InvalidSpec",
                "a blank DataVolume needs spec.storage.resources.requests.storage".into(),
            );
        };
        let bytes = bytes.div_ceil(512) * 512;
        return match pool.create_blank(&id, bytes, VolumeFormat::Raw) {
            Ok(_) => succeed(dv, &name),
            Err(e) => fail(dv, "BlankFailed", e.to_string()),
        };
    }
    if source.upload.is_some() {
        let st = dv.status.get_or_insert_with(Default::default);
        st.phase = Some(DataVolumePhase::UploadReady);
        set_conditions(st, false, false, false, "UploadReady", "waiting for an upload");
        return DvRun::Waiting("waiting for an upload".into());
    }
    if let Some(h) = &source.http {
        let mut opts = HttpOptions::default();
        if let Some(s) = &h.secret_ref {
            let Some(data) = env.objects.secret(&ns, s) else {
                return fail(
                    dv,
                    "SecretNotFound",
                    format!("secret {ns}/{s} (spec.source.http.secretRef) not found"),
                );
            };
            let get =
                |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            if !get("accessKeyId").is_empty() || !get("secretKey").is_empty() {
                opts.basic_auth = Some((get("accessKeyId"), get("secretKey")));
            }
        }
        if let Some(cm) = &h.cert_config_map {
            let Some(data) = env.objects.config_map(&ns, cm) else {
                return fail(
                    dv,
                    "ConfigMapNotFound",
                    format!("config map {ns}/{cm} (spec.source.http.certConfigMap) not found"),
                );
            };
            opts.ca_pem = Some(data.values().flat_map(|v| v.bytes().chain(std::iter::once(b'\n'))).collect());
        }
        opts.extra_headers = h.extra_headers.clone();
        opts.net_policy = env.net_policy.clone();
        let src = match HttpSource::new(&h.url, opts) {
            Ok(s) => s,
            Err(e) => return fail(dv, "ImportFailed", e.to_string()),
        };
        return run_import(dv, pool, &id, size, progress, |pool, id, p| {
            import(pool, id, Box::new(src), &ImportOptions::default(), p).map(|_| ())
        });
    }
    if let Some(r) = &source.registry {
        let Some(url) = r.url.clone() else {
            return fail(
                dv,
                "InvalidSpec",
                "spec.source.registry.url is required (imageStream is not supported)".into(),
            );
        };
        let mut cfg = RegistryConfig { net_policy: env.net_policy.clone(), ..RegistryConfig::default() };
        for reg in &env.insecure_registries {
            cfg = cfg.with_insecure_registry(reg);
        }
        if let Some(s) = &r.secret_ref {
            let Some(data) = env.objects.secret(&ns, s) else {
                return fail(
                    dv,
                    "SecretNotFound",
                    format!("secret {ns}/{s} (spec.source.registry.secretRef) not found"),
                );
            };
            let get =
                |k: &str| data.get(k).map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            cfg = cfg.with_credentials(Credentials::new(get("accessKeyId"), get("secretKey")));
        }
        if let Some(cm) = &r.cert_config_map {
            let Some(data) = env.objects.config_map(&ns, cm) else {
                return fail(
                    dv,
                    "ConfigMapNotFound",
                    format!("config map {ns}/{cm} (spec.source.registry.certConfigMap) not found"),
                );
            };
            cfg = cfg.with_ca_bundle(
                data.values().flat_map(|v| v.bytes().chain(std::iter::once(b'\n'))).collect::<Vec<u8>>(),
            );
        }
        let client = match RegistryClient::new(cfg) {
            Ok(c) => c,
            Err(e) => return fail(dv, "ImportFailed", e.to_string()),
        };
        return run_import(dv, pool, &id, size, progress, |pool, id, p| {
            import_container_disk(pool, id, &client, &url, &ImportOptions::default(), p).map(|_| ())
        });
    }
    let which = if source.s3.is_some() {
        "s3"
    } else if source.gcs.is_some() {
        "gcs"
    } else if source.imageio.is_some() {
        "imageio"
    } else if source.vddk.is_some() {
        "vddk"
    } else {
        return fail(dv, "InvalidSpec", "spec.source or spec.sourceRef must name a source".into());
    };
    fail(dv, "UnsupportedSource", format!("spec.source.{which} is not supported on this node"))
}

fn succeed(dv: &mut DataVolume, name: &str) -> DvRun {
    let st = dv.status.get_or_insert_with(Default::default);
    st.phase = Some(DataVolumePhase::Succeeded);
    st.claim_name = Some(name.to_string());
    st.progress = Some(DataVolumeProgress("100.0%".into()));
    set_conditions(st, true, true, false, "Completed", "the volume is populated");
    DvRun::Populated
}

fn run_import(
    dv: &mut DataVolume,
    pool: &dyn VolumeProvider,
    id: &VolumeId,
    size: Option<u64>,
    progress: &mut (dyn FnMut(&DataVolumeStatus) + Send),
    f: impl FnOnce(
        &dyn VolumeProvider,
        &VolumeId,
        &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(), crate::import::ImportError>,
) -> DvRun {
    {
        let st = dv.status.get_or_insert_with(Default::default);
        st.phase = Some(DataVolumePhase::ImportInProgress);
        st.progress = Some(DataVolumeProgress("N/A".into()));
        set_conditions(st, true, false, true, "Pending", "import in progress");
        progress(st);
    }
    let mut st = dv.status.clone().unwrap_or_default();
    let r = f(pool, id, &mut |p: Progress| {
        st.progress = Some(DataVolumeProgress(p.percent()));
        progress(&st);
    });
    dv.status = Some(st);
    if let Err(e) = r {
        let st = dv.status.get_or_insert_with(Default::default);
        st.restart_count = Some(st.restart_count.unwrap_or(0) + 1);
        return fail(dv, "ImportFailed", e.to_string());
    }
    if let Err(e) = fit_size(pool, id, size) {
        let _ = pool.delete(id);
        return fail(dv, "ImportFailed", e.to_string());
    }
    succeed(dv, &id.name)
}

/// Why a populated volume could not be brought to the DataVolume's size.
#[derive(Debug, thiserror::Error)]
enum FitError {
    /// The pool could not read or resize the volume (the error names it).
    #[error(transparent)]
    Pool(#[from] crate::volume::VolumeError),
    /// The image is larger than the DataVolume asks for.
    #[error("the image needs {have} bytes but the DataVolume requests only {want}")]
    TooSmall {
        /// The image's size.
        have: u64,
        /// The requested size (rounded up to 512 bytes).
        want: u64,
    },
}

/// Grows a populated volume to the requested size; a requested size smaller than the image fails.
fn fit_size(pool: &dyn VolumeProvider, id: &VolumeId, size: Option<u64>) -> Result<(), FitError> {
    let Some(want) = size else { return Ok(()) };
    let have = pool.get(id)?.map(|v| v.size).unwrap_or(0);
    let want = want.div_ceil(512) * 512;
    if want > have {
        pool.resize(id, want)?;
    } else if want < have {
        return Err(FitError::TooSmall { have, want });
    }
    Ok(())
}

fn clone(
    dv: &mut DataVolume,
    pool: &dyn VolumeProvider,
    env: &DvEnv<'_>,
    id: &VolumeId,
    src: &PvcSource,
    size: Option<u64>,
) -> DvRun {
    let src_id = VolumeId::new(&src.namespace, &src.name);
    match env.classes.find(&src_id) {
        Ok(Some((_, p)))
            if std::ptr::addr_eq(p as *const dyn VolumeProvider, pool as *const dyn VolumeProvider) => {}
        Ok(Some((class, _))) => {
            return fail(dv, "CloneFailed", format!("source {src_id} is on storage class {class}; cloning across storage classes is not supported yet"));
        }
        Ok(None) => {
            let st = dv.status.get_or_insert_with(Default::default);
            st.phase = Some(DataVolumePhase::CloneScheduled);
            let msg = format!("source volume {src_id} does not exist (yet)");
            set_conditions(st, false, false, false, "CloneSourceNotFound", &msg);
            return DvRun::Waiting(msg);
        }
        Err(e) => return fail(dv, "CloneFailed", e.to_string()),
    }
    {
        let st = dv.status.get_or_insert_with(Default::default);
        st.phase = Some(DataVolumePhase::CloneInProgress);
    }
    match pool.clone_volume(&src_id, id, CloneOptions::default()) {
        Ok(out) => {
            dv.metadata.annotations.insert(ANN_CLONE_TYPE.into(), out.strategy.to_string());
            match &out.fallback_reason {
                Some(r) => {
                    dv.metadata.annotations.insert(ANN_CLONE_FALLBACK.into(), r.clone());
                }
                None => {
                    dv.metadata.annotations.remove(ANN_CLONE_FALLBACK);
                }
            }
            if let Err(e) = fit_size(pool, id, size) {
                let _ = pool.delete(id);
                return fail(dv, "CloneFailed", e.to_string());
            }
            succeed(dv, &id.name)
        }
        Err(e) => fail(dv, "CloneFailed", e.to_string()),
    }
}

fn wait_for_snapshot(dv: &mut DataVolume, reason: &str, msg: String) -> DvRun {
    let st = dv.status.get_or_insert_with(Default::default);
    st.phase = Some(DataVolumePhase::Pending);
    set_conditions(st, false, false, false, reason, &msg);
    DvRun::Waiting(msg)
}

/// Restores `id` from the VolumeSnapshot `snap` names: the pool snapshot `CLAIM@SNAPSHOT` of the
/// snapshot's claim, into a volume that does not depend on it.
fn restore(
    dv: &mut DataVolume,
    pool: &dyn VolumeProvider,
    env: &DvEnv<'_>,
    id: &VolumeId,
    snap: &SnapshotSource,
    size: Option<u64>,
    progress: &mut (dyn FnMut(&DataVolumeStatus) + Send),
) -> DvRun {
    let what = format!("VolumeSnapshot {}/{}", snap.namespace, snap.name);
    let Some(vs) = env.objects.volume_snapshot(&snap.namespace, &snap.name) else {
        return wait_for_snapshot(
            dv,
            "SnapshotNotFound",
            format!("{what} (spec.source.snapshot) not found; waiting for it to be created"),
        );
    };
    if !vs.ready() {
        let why = vs
            .status
            .as_ref()
            .and_then(|s| s.error.as_ref())
            .and_then(|e| e.message.as_deref())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return wait_for_snapshot(dv, "SnapshotNotReady", format!("{what} is not ready to use yet{why}"));
    }
    let Some(claim) = vs.claim() else {
        return fail(dv, "CloneFailed", format!("{what} has no spec.source.persistentVolumeClaimName"));
    };
    let src_id = VolumeId::new(&snap.namespace, claim);
    let restore_size = match vs.status.as_ref().and_then(|s| s.restore_size.as_ref()) {
        Some(q) => Some(q.bytes()),
        None => match pool.get_snapshot(&src_id, &snap.name) {
            Ok(v) => v.map(|v| v.size),
            Err(e) => return fail(dv, "CloneFailed", format!("{what}: {e}")),
        },
    };
    if let (Some(want), Some(need)) = (size, restore_size) {
        if want < need {
            let field = if dv.spec.storage.is_some() { "spec.storage" } else { "spec.pvc" };
            return fail(
                dv,
                "InvalidSpec",
                format!(
                    "{field}.resources.requests.storage: Invalid value: {want}: smaller than the restoreSize \
                     ({need} bytes) of {what}"
                ),
            );
        }
    }
    for (phase, reason) in [
        (DataVolumePhase::CloneScheduled, "CloneScheduled"),
        (DataVolumePhase::CloneInProgress, "CloneInProgress"),
    ] {
        let st = dv.status.get_or_insert_with(Default::default);
        st.phase = Some(phase);
        st.progress = Some(DataVolumeProgress("N/A".into()));
        set_conditions(st, true, false, true, reason, &format!("restoring {what}"));
        progress(st);
    }
    match pool.restore(&src_id, &snap.name, id) {
        Ok(out) => {
            dv.metadata.annotations.insert(ANN_CLONE_TYPE.into(), out.strategy.to_string());
            match &out.fallback_reason {
                Some(r) => {
                    dv.metadata.annotations.insert(ANN_CLONE_FALLBACK.into(), r.clone());
                }
                None => {
                    dv.metadata.annotations.remove(ANN_CLONE_FALLBACK);
                }
            }
            if let Err(e) = fit_size(pool, id, size) {
                let _ = pool.delete(id);
                return fail(dv, "CloneFailed", e.to_string());
            }
            succeed(dv, &id.name)
        }
        Err(e) => fail(dv, "CloneFailed", format!("restoring {what} into {id}: {e}")),
    }
}
