//! CDI on the node: DataVolumes, DataSources and DataImportCrons kept in the node's one crash-safe
//! store (`node.redb` in the state directory), reconciled in the background with virt-storage's CDI
//! logic on the node's volume pool (`<state>/volumes`, a [`DirPool`], the directory the launcher
//! runtime takes `persistentVolumeClaim` and `dataVolume` volumes from), and an upload endpoint
//! for `virtctl image-upload`. The REST paths are in [`super::cdi_api`].
//!
//! - **DataVolumes**: one worker thread per DataVolume being populated
//!   ([`reconcile_data_volume`]: blank, http, registry, pvc and sourceRef clones, upload). Phase
//!   and progress are in the status while bytes flow; phase changes are written to the store.
//!   Imports are staged by the pool (`.importing/`), so a volume only appears complete: a node
//!   killed during an import finds the DataVolume `ImportInProgress` again, counts a restart and
//!   imports it anew. Failed imports are retried with a doubling back-off (10 s to 5 min), as
//!   CDI's importer pods are restarted.
//! - **VMs' `dataVolumeTemplates`**: the controller polls the lifecycle's VMs and creates each
//!   template's DataVolume, owned by the VM; a DataVolume whose owning VM is gone is deleted with
//!   its volume. The launcher runtime asks [`Cdi::claim_ready`] before launching, so a VMI waits
//!   `Pending` until its DataVolumes are `Succeeded`.
//! - **DataImportCrons**: [`reconcile_cron`] in a worker per cron, checked every few seconds (the
//!   schedule decides when the registry is polled); the managed DataSource is created if missing,
//!   each import is recorded as a `Succeeded` DataVolume labelled with the cron, and imports the
//!   cron garbage-collects lose their DataVolume too.
//! - **VolumeSnapshots** (`snapshot.storage.k8s.io/v1`): a worker takes a pool snapshot
//!   (`.snapshots/CLAIM@NAME`) of the claim's volume once its DataVolume is populated, then sets
//!   `readyToUse`, `restoreSize` and `creationTime`; a missing claim is `status.error.message`
//!   (retried). DataVolumes with `source.snapshot` restore from it; deleting the VolumeSnapshot
//!   deletes the pool snapshot (restored volumes do not depend on it).
//! - **Uploads**: [`UploadServer`] on its own TCP listener ([`Cdi::serve_uploads`]; its URL is
//!   CDIConfig's `status.uploadProxyURL`); tokens are issued for DataVolumes whose source is
//!   `upload` ([`Cdi::upload_token`]); a finished upload is grown to the requested size.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use virt_core::api::{
    ConditionStatus, Decoder, LoadError, LoadOptions, ObjectMeta, OwnerReference, StatusCause, Timestamp,
    Validate,
};
use virt_core::lifecycle::{Key, Lifecycle, StoreError};
use virt_core::model::VirtualMachine;
use virt_storage::cdi::{
    Condition, DataImportCron, DataSource, DataVolume, DataVolumePhase, DataVolumeProgress, DataVolumeStatus,
    VolumeSnapshot, API_VERSION,
};
use virt_storage::datavolume::ObjectLookup;
use virt_storage::import::policy::NetPolicy;
use virt_storage::upload::UploadServer;
use virt_storage::volume::{DirPool, VolumeError, VolumeId, VolumeProvider};

use super::runtime::{ClaimNotReady, ClaimReadiness};
use super::store::RedbStore;

mod controller;
mod crons;
mod gc;
mod requests;
mod snapshots;
mod upload;

/// The storage class of the node's pool (the only one; DataVolumes naming another class get the
/// same pool).
pub const STORAGE_CLASS: &str = "local";
/// The StorageProfile's provisioner.
pub const PROVISIONER: &str = "virt-rs.io/dir-pool";
/// Label on the DataVolumes and the DataSource a DataImportCron made.
pub const LABEL_CRON: &str = "cdi.kubevirt.io/dataImportCron";
/// Annotation on a DataImportCron: `"false"` stops polling (automatic updates off for this boot
/// source), as HCO's per-template switch does.
pub const ANN_AUTO_UPDATE: &str = "dataimportcrontemplate.kubevirt.io/enable";

/// How often the controller looks without being woken (VMs' templates, waiting DataVolumes).
const TICK: Duration = Duration::from_millis(500);
/// How soon a waiting DataVolume (an upload, a clone source) is looked at again.
const RECHECK: Duration = Duration::from_secs(1);
/// How often a DataImportCron's schedule is checked.
const CRON_CHECK: Duration = Duration::from_secs(5);
/// At most this many DataVolume workers at a time (the rest stay queued).
const MAX_WORKERS: usize = 4;
/// Retry back-off of failed imports and crons.
const RETRY_BASE: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long an upload token is good for (CDI's are good for five minutes).
const UPLOAD_TOKEN_TTL: Duration = Duration::from_secs(300);

/// The CDI kinds the node stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CdiKind {
    /// `DataVolume`.
    DataVolume,
    /// `DataSource`.
    DataSource,
    /// `DataImportCron`.
    DataImportCron,
    /// `VolumeSnapshot` (`snapshot.storage.k8s.io/v1`, not in CDI's group).
    VolumeSnapshot,
}

impl CdiKind {
    /// Every stored kind.
    pub const ALL: [CdiKind; 4] =
        [Self::DataVolume, Self::DataSource, Self::DataImportCron, Self::VolumeSnapshot];

    /// `DataVolume`, ...
    pub fn name(self) -> &'static str {
        match self {
            Self::DataVolume => "DataVolume",
            Self::DataSource => "DataSource",
            Self::DataImportCron => "DataImportCron",
            Self::VolumeSnapshot => "VolumeSnapshot",
        }
    }

    /// The kind's entry in the [`registry`](crate::registry).
    pub fn registered(self) -> &'static crate::registry::Resource {
        let name = self.name();
        // Every variant has an entry (the registry's tests check the kinds the node serves).
        crate::registry::RESOURCES.iter().find(|r| r.kind == name).unwrap_or(&crate::registry::RESOURCES[0])
    }

    /// The plural in paths: `datavolumes`, ...
    pub fn plural(self) -> &'static str {
        self.registered().plural
    }

    /// How Kubernetes names the resource in messages: `datavolumes.cdi.kubevirt.io`.
    pub fn resource(self) -> &'static str {
        self.registered().resource
    }

    /// Whether the kind is in CDI's group (`cdi.kubevirt.io`).
    pub fn is_cdi(self) -> bool {
        self != Self::VolumeSnapshot
    }

    /// The kind of a plural path segment.
    pub fn from_plural(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.plural() == s)
    }
}

/// Errors of the node's CDI controller; the API answers them as Kubernetes `Status`es.
#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    /// No such object.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// `datavolumes.cdi.kubevirt.io`, ...
        resource: &'static str,
        /// The name asked for.
        name: String,
    },
    /// An object of that name exists.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// `datavolumes.cdi.kubevirt.io`, ...
        resource: &'static str,
        /// The name.
        name: String,
    },
    /// The object is invalid (the message names the field).
    #[error(transparent)]
    Invalid(#[from] virt_core::api::Invalid),
    /// The request is not possible in the object's current state.
    #[error("{0}")]
    Conflict(String),
    /// The request cannot be understood.
    #[error("{0}")]
    BadRequest(String),
    /// The store failed.
    #[error("CDI store {path}: {what}: {message}")]
    Store {
        /// The database file.
        path: String,
        /// What was being done.
        what: String,
        /// The error.
        message: String,
    },
    /// A file or socket could not be set up.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path or address.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A volume operation failed (the message names the volume).
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// A VM's `dataVolumeTemplates` entry does not make a valid DataVolume.
    #[error("DataVolume template {path} of VirtualMachine {vm}: {source}")]
    Template {
        /// The template's field path (`spec.dataVolumeTemplates[i]`).
        path: String,
        /// The VM (`namespace/name`).
        vm: String,
        /// What is wrong (the decoder's, metadata's or validation's error, naming the field).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A DataVolume phase as CDI writes it (`ImportInProgress`).
pub fn phase_name(phase: Option<DataVolumePhase>) -> String {
    phase
        .and_then(|p| serde_json::to_value(p).ok())
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "Pending".to_string())
}

fn phase_of(dv: &DataVolume) -> Option<DataVolumePhase> {
    dv.status.as_ref().and_then(|s| s.phase)
}

fn is_upload(dv: &DataVolume) -> bool {
    dv.spec.source.as_ref().is_some_and(|s| s.upload.is_some())
}

fn dv_condition(type_: &str, ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        last_transition_time: Some(Timestamp::now()),
        last_heartbeat_time: None,
        reason: Some(reason.into()),
        message: Some(message.into()),
    }
}

fn set_dv_condition(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(old) => {
            let since = old.last_transition_time.clone();
            let same = old.status == c.status;
            *old = c;
            if same && since.is_some() {
                old.last_transition_time = since;
            }
        }
        None => list.push(c),
    }
}

/// Marks `dv` Failed with `reason` and `message` on its Bound/Ready/Running conditions.
fn fail_dv(dv: &mut DataVolume, reason: &str, message: &str) {
    let st = dv.status.get_or_insert_with(Default::default);
    st.phase = Some(DataVolumePhase::Failed);
    for c in ["Bound", "Ready", "Running"] {
        set_dv_condition(&mut st.conditions, dv_condition(c, false, reason, message));
    }
}

/// Failures that may go away by themselves (a server down, a full disk): retried with back-off.
fn retryable(dv: &DataVolume) -> bool {
    let reason = dv
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.reason.as_deref());
    matches!(reason, Some("ImportFailed" | "StorageError" | "BlankFailed"))
}

fn backoff(failures: u32) -> Duration {
    let factor = 1u32.checked_shl(failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
    RETRY_BASE.saturating_mul(factor).min(RETRY_MAX)
}

/// Fills server-side metadata of a new object in `namespace` (`ObjectMeta::fill_new`, and
/// generation 1); returns its name.
fn prepare_meta(meta: &mut ObjectMeta, namespace: &str) -> Result<String, CdiError> {
    let name = meta.fill_new(namespace)?;
    meta.generation = Some(1);
    Ok(name)
}

fn to_value<T: Serialize>(o: &T) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

#[derive(Default)]
struct State {
    dvs: BTreeMap<Key, DataVolume>,
    sources: BTreeMap<Key, DataSource>,
    crons: BTreeMap<Key, DataImportCron>,
    snapshots: BTreeMap<Key, VolumeSnapshot>,
    /// VolumeSnapshots being taken, by key: the uid of the VolumeSnapshot.
    snap_workers: HashMap<Key, String>,
    /// When a VolumeSnapshot that is not ready is tried again.
    snap_next: HashMap<Key, Instant>,
    /// DataVolumes with a worker, by key: the uid of the DataVolume it works for.
    dv_workers: HashMap<Key, String>,
    /// DataImportCrons with a worker.
    cron_workers: HashMap<Key, String>,
    /// When a DataVolume is looked at again (absent: at once).
    dv_next: HashMap<Key, Instant>,
    dv_failures: HashMap<Key, u32>,
    cron_next: HashMap<Key, Instant>,
    cron_failures: HashMap<Key, u32>,
    /// Template DataVolumes of VMs that cannot be created, and why.
    template_errors: HashMap<Key, String>,
    /// How far the template pass has read the store's change log (absent: every VM is looked at
    /// on the next pass).
    templates_seen: Option<TemplatesSeen>,
    /// VMs whose template DataVolume could not be made yet for a passing reason (the deleted
    /// one's import still stopping): looked at again on the next pass, whatever the log says.
    templates_retry: BTreeSet<Key>,
}

/// Where the template pass is in the store's change log.
struct TemplatesSeen {
    /// The resourceVersion read up to.
    resource_version: u64,
    /// When every VM was last looked at.
    full_at: Instant,
}

/// The node's CDI controller.
pub struct Cdi {
    store: Arc<RedbStore>,
    pool: Arc<DirPool>,
    uploads: Arc<UploadServer>,
    upload_url: Mutex<Option<String>>,
    insecure_registries: Vec<String>,
    net_policy: Mutex<Option<Arc<NetPolicy>>>,
    lifecycle: OnceLock<Arc<Lifecycle>>,
    /// Secrets and ConfigMaps (`secretRef`, `certConfigMap`), once the node has them.
    objects: OnceLock<Arc<super::core_objects::CoreObjects>>,
    state: Mutex<State>,
    wake: Condvar,
}

impl Cdi {
    /// Opens the node's store in `state_dir` ([`RedbStore::open_state_dir`], which migrates an
    /// earlier node's `cdi.redb`) and the volume pool (`volumes/`). Registries in
    /// `insecure_registries` are reached over plain HTTP. A node that opened the store already
    /// shares it through [`Cdi::open_with_store`].
    pub fn open(state_dir: &Path, insecure_registries: Vec<String>) -> Result<Arc<Self>, CdiError> {
        let store = RedbStore::open_state_dir(state_dir).map_err(|e| CdiError::Store {
            path: state_dir.display().to_string(),
            what: "opening the store".into(),
            message: e.to_string(),
        })?;
        Self::open_with_store(state_dir, Arc::new(store), insecure_registries)
    }

    /// Like [`Cdi::open`], keeping CDI's objects in `store` (the node's one object store, with
    /// one resourceVersion sequence for every kind).
    pub fn open_with_store(
        state_dir: &Path,
        store: Arc<RedbStore>,
        insecure_registries: Vec<String>,
    ) -> Result<Arc<Self>, CdiError> {
        let pool_dir = state_dir.join("volumes");
        let pool = Arc::new(DirPool::new(&pool_dir).map_err(|source| CdiError::Io {
            what: "opening the volume pool",
            path: pool_dir.display().to_string(),
            source,
        })?);
        let shown = store.path().to_string();
        let state = load(&store, &shown)?;
        let interrupted: Vec<Key> = state
            .dvs
            .iter()
            .filter(|(_, dv)| phase_of(dv) == Some(DataVolumePhase::ImportInProgress))
            .map(|(k, _)| k.clone())
            .collect();
        let cdi = Arc::new_cyclic(|me: &Weak<Cdi>| {
            let me = me.clone();
            let done: virt_storage::upload::UploadDone = Arc::new(move |id, result| {
                if let Some(cdi) = me.upgrade() {
                    cdi.upload_finished(id, result);
                }
            });
            let provider: Arc<dyn VolumeProvider> = pool.clone();
            let uploads = UploadServer::new(provider, Some(done));
            Cdi {
                store,
                pool,
                uploads,
                upload_url: Mutex::new(None),
                insecure_registries,
                net_policy: Mutex::new(None),
                lifecycle: OnceLock::new(),
                objects: OnceLock::new(),
                state: Mutex::new(state),
                wake: Condvar::new(),
            }
        });
        // Imports cut short by the node's end start again; CDI counts that as a restart.
        let mut st = lock(&cdi.state);
        for key in interrupted {
            if let Some(dv) = st.dvs.get_mut(&key) {
                let status = dv.status.get_or_insert_with(Default::default);
                status.restart_count = Some(status.restart_count.unwrap_or(0) + 1);
                status.progress = Some(DataVolumeProgress("N/A".into()));
                set_dv_condition(
                    &mut status.conditions,
                    dv_condition("Running", false, "Restarting", "the node stopped during the import"),
                );
                log::info!("DataVolume {key}: the import was interrupted; importing again");
                cdi.persist(&mut st, CdiKind::DataVolume, &key)?;
            }
        }
        drop(st);
        Ok(cdi)
    }

    /// Lets the controller see the node's VMs and namespaces (VMs' `dataVolumeTemplates`).
    pub fn attach(&self, lifecycle: Arc<Lifecycle>) {
        let _ = self.lifecycle.set(lifecycle);
    }

    /// Lets DataVolumes read the node's Secrets and ConfigMaps. Only the first call counts.
    pub fn set_objects(&self, objects: Arc<super::core_objects::CoreObjects>) {
        let _ = self.objects.set(objects);
    }

    /// The node's volume pool.
    pub fn pool(&self) -> &Arc<DirPool> {
        &self.pool
    }

    /// Wakes the controller.
    pub fn wake(&self) {
        self.wake.notify_all();
    }

    /// Stores the object at `key` as it is in memory (removes it from the store when it is gone
    /// from memory), and gives it the resourceVersion the store's one sequence assigned.
    fn persist(&self, st: &mut State, kind: CdiKind, key: &Key) -> Result<(), CdiError> {
        let value = match kind {
            CdiKind::DataVolume => st.dvs.get(key).map(to_value),
            CdiKind::DataSource => st.sources.get(key).map(to_value),
            CdiKind::DataImportCron => st.crons.get(key).map(to_value),
            CdiKind::VolumeSnapshot => st.snapshots.get(key).map(to_value),
        };
        let err = |what: &str, e: StoreError| CdiError::Store {
            path: self.store.path().to_string(),
            what: format!("{what} {} {key}", kind.name()),
            message: e.to_string(),
        };
        let Some(value) = value else {
            self.store.delete_object(kind.name(), key).map_err(|e| err("deleting", e))?;
            return Ok(());
        };
        let rv =
            Some(self.store.put_object(kind.name(), key, value).map_err(|e| err("writing", e))?.to_string());
        match kind {
            CdiKind::DataVolume => st.dvs.get_mut(key).map(|o| o.metadata.resource_version = rv),
            CdiKind::DataSource => st.sources.get_mut(key).map(|o| o.metadata.resource_version = rv),
            CdiKind::DataImportCron => st.crons.get_mut(key).map(|o| o.metadata.resource_version = rv),
            CdiKind::VolumeSnapshot => st.snapshots.get_mut(key).map(|o| o.metadata.resource_version = rv),
        };
        Ok(())
    }

    /// Limits where imports connect (the node's own listeners and link-local addresses refused);
    /// DataVolumes naming a refused literal address are refused at create.
    pub fn set_net_policy(&self, policy: Arc<NetPolicy>) {
        *lock(&self.net_policy) = Some(policy);
    }

    /// A DataVolume's http URL naming a refused literal address: 422 at `spec.source.http.url`.
    fn check_import_url(&self, dv: &DataVolume) -> Result<(), CdiError> {
        let Some(policy) = lock(&self.net_policy).clone() else { return Ok(()) };
        match dv.spec.source.as_ref().and_then(|s| s.http.as_ref()) {
            Some(h) => policy
                .check_url(&h.url)
                .map_err(|r| CdiError::from(StatusCause::forbidden("spec.source.http.url", &r.to_string()))),
            None => Ok(()),
        }
    }
}

impl ClaimReadiness for Cdi {
    fn claim_ready(&self, namespace: &str, claim: &str) -> Option<Result<(), ClaimNotReady>> {
        let key = Key::new(namespace, claim);
        let st = lock(&self.state);
        if let Some(dv) = st.dvs.get(&key) {
            let phase = phase_of(dv);
            if phase == Some(DataVolumePhase::Succeeded) {
                return Some(Ok(()));
            }
            let status = dv.status.as_ref();
            let progress = status.and_then(|s| s.progress.as_ref()).map_or("N/A", |p| p.0.as_str());
            let detail = status
                .and_then(|s| {
                    ["Running", "Ready"]
                        .iter()
                        .find_map(|t| s.conditions.iter().find(|c| c.type_ == *t && c.message.is_some()))
                })
                .and_then(|c| c.message.clone())
                .filter(|m| !m.is_empty());
            return Some(Err(ClaimNotReady::Populating {
                name: claim.to_string(),
                phase: phase_name(phase).to_string(),
                progress: progress.to_string(),
                detail,
            }));
        }
        st.template_errors.get(&key).map(|e| Err(ClaimNotReady::Template(e.clone())))
    }
}

/// The objects a DataVolume refers to: DataSources of this node (one level of `dataSource`
/// indirection followed); its Secrets and ConfigMaps (node::core_objects).
struct Lookup<'a>(&'a Cdi);

impl ObjectLookup for Lookup<'_> {
    fn secret(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.0.objects.get()?.secret(namespace, name)
    }
    fn config_map(&self, namespace: &str, name: &str) -> Option<BTreeMap<String, String>> {
        self.0.objects.get()?.config_map(namespace, name)
    }
    fn volume_snapshot(&self, namespace: &str, name: &str) -> Option<VolumeSnapshot> {
        lock(&self.0.state).snapshots.get(&Key::new(namespace, name)).cloned()
    }
    fn data_source(&self, namespace: &str, name: &str) -> Option<DataSource> {
        let st = lock(&self.0.state);
        let ds = st.sources.get(&Key::new(namespace, name))?;
        match &ds.spec.source.data_source {
            Some(r) => st.sources.get(&Key::new(&r.namespace, &r.name)).cloned(),
            None => Some(ds.clone()),
        }
    }
}

/// Validates a CDI object as CDI's webhooks do; errors name the fields.
impl From<StatusCause> for CdiError {
    fn from(c: StatusCause) -> Self {
        Self::Invalid(c.into())
    }
}

fn check<T: Validate>(o: &T) -> Result<(), CdiError> {
    o.check().map(drop).map_err(|e| CdiError::Invalid(e.into()))
}

/// The DataVolume of `vm`'s template `i`, owned by the VM, read strictly (paths like
/// `spec.dataVolumeTemplates[0].spec.source.http.url`) and validated. The local node's CDI
/// controller and the cluster's VM controller both make a VM's DataVolumes with it.
pub fn dv_from_template(vm: &VirtualMachine, i: usize) -> Result<DataVolume, CdiError> {
    let ns = vm.metadata.namespace.clone().unwrap_or_default();
    let vm_name = vm.metadata.name.clone().unwrap_or_default();
    let path = format!("spec.dataVolumeTemplates[{i}]");
    let why = |source: Box<dyn std::error::Error + Send + Sync>| CdiError::Template {
        path: path.clone(),
        vm: format!("{ns}/{vm_name}"),
        source,
    };
    let t = vm.spec.data_volume_templates.get(i).ok_or_else(|| why("no such template".into()))?;
    let mut meta = t.metadata.clone();
    meta.namespace = Some(ns.clone());
    meta.owner_references = vec![OwnerReference {
        api_version: virt_core::model::API_VERSION.into(),
        kind: "VirtualMachine".into(),
        name: vm_name.clone(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }];
    let value = serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "DataVolume",
        "metadata": to_value(&meta),
        "spec": t.spec,
    });
    let opts = LoadOptions::default();
    let mut dv: DataVolume = Decoder::new(&opts, 1).decode(value, &path).map_err(|e| match e {
        LoadError::Decode { errors, .. } => {
            why(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ").into())
        }
        other => why(other.into()),
    })?;
    let name = dv.metadata.name.clone().unwrap_or_default();
    prepare_meta(&mut dv.metadata, &ns).map_err(|e| why(e.into()))?;
    check(&dv).map_err(|e| why(e.into()))?;
    VolumeId::new(&ns, &name).validate().map_err(|e| why(e.into()))?;
    dv.status = Some(DataVolumeStatus {
        phase: Some(DataVolumePhase::Pending),
        progress: Some(DataVolumeProgress("N/A".into())),
        ..Default::default()
    });
    Ok(dv)
}

/// The DataVolume recording a DataImportCron's import `id` (already populated).
fn import_record(cron: &DataImportCron, id: &VolumeId) -> DataVolume {
    let mut meta = ObjectMeta::named(&id.name);
    meta.namespace = Some(id.namespace.clone());
    meta.labels.insert(LABEL_CRON.into(), cron.metadata.name.clone().unwrap_or_default());
    let mut dv = DataVolume::new(meta, cron.spec.template.spec.clone());
    let _ = prepare_meta(&mut dv.metadata, &id.namespace);
    let mut status = DataVolumeStatus {
        claim_name: Some(id.name.clone()),
        phase: Some(DataVolumePhase::Succeeded),
        progress: Some(DataVolumeProgress("100.0%".into())),
        ..Default::default()
    };
    for (c, ok) in [("Bound", true), ("Ready", true), ("Running", false)] {
        set_dv_condition(&mut status.conditions, dv_condition(c, ok, "Completed", "imported by the cron"));
    }
    dv.status = Some(status);
    dv
}

fn load(store: &RedbStore, shown: &str) -> Result<State, CdiError> {
    let names: Vec<&str> = CdiKind::ALL.iter().map(|k| k.name()).collect();
    let rows = store.load_kinds(&names).map_err(|e| CdiError::Store {
        path: shown.to_string(),
        what: "loading the CDI objects".into(),
        message: e.to_string(),
    })?;
    let mut st = State::default();
    for (kind, key, bytes) in rows {
        let Some(kind) = CdiKind::ALL.into_iter().find(|k| k.name() == kind) else { continue };
        let loaded = match kind {
            CdiKind::DataVolume => serde_json::from_slice(&bytes).map(|o| {
                st.dvs.insert(key.clone(), o);
            }),
            CdiKind::DataSource => serde_json::from_slice(&bytes).map(|o| {
                st.sources.insert(key.clone(), o);
            }),
            CdiKind::DataImportCron => serde_json::from_slice(&bytes).map(|o| {
                st.crons.insert(key.clone(), o);
            }),
            CdiKind::VolumeSnapshot => serde_json::from_slice(&bytes).map(|o| {
                st.snapshots.insert(key.clone(), o);
            }),
        };
        if let Err(e) = loaded {
            log::error!("CDI store {shown}: {} {key} unreadable, skipped: {e}", kind.name());
        }
    }
    Ok(st)
}

#[cfg(test)]
mod tests;
