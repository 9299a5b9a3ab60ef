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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;
use virt_core::api::{
    ConditionStatus, Decoder, LabelSelector, LoadError, LoadOptions, ObjectMeta, OwnerReference, Quantity,
    Timestamp, Validate,
};
use virt_core::lifecycle::{Key, Lifecycle, StoreError};
use virt_core::model::VirtualMachine;
use virt_storage::cdi::{
    AccessMode, ClaimPropertySet, CloneStrategy as CdiCloneStrategy, Condition, DataImportCron, DataSource,
    DataSourceSpec, DataVolume, DataVolumePhase, DataVolumeProgress, DataVolumeStatus, RetentionPolicy,
    SourceFormat, StorageProfile, StorageProfileSpec, StorageProfileStatus, VolumeMode, VolumeSnapshot,
    VolumeSnapshotError, VolumeSnapshotStatus, API_VERSION, SNAPSHOT_API_VERSION,
};
use virt_storage::datavolume::{reconcile_data_volume, DvEnv, DvRun, ObjectLookup};
use virt_storage::golden::{reconcile_cron, StorageClasses};
use virt_storage::import::policy::NetPolicy;
use virt_storage::registry::{RegistryClient, RegistryConfig};
use virt_storage::upload::UploadServer;
use virt_storage::volume::{CloneStrategy, DirPool, VolumeError, VolumeFormat, VolumeId, VolumeProvider};

use super::runtime::ClaimReadiness;
use super::store::RedbStore;

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
    #[error("{0}")]
    Invalid(String),
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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    if b == [0; 16] {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
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

/// Fills server-side metadata of a new object in `namespace`; returns its name.
fn prepare_meta(meta: &mut ObjectMeta, namespace: &str) -> Result<String, CdiError> {
    if let Some(ns) = &meta.namespace {
        if ns != namespace {
            return Err(CdiError::Invalid(format!(
                "metadata.namespace: Invalid value: \"{ns}\": does not match the namespace of the request \
                 (\"{namespace}\")"
            )));
        }
    }
    let name = match (&meta.name, &meta.generate_name) {
        (Some(n), _) => n.clone(),
        (None, Some(prefix)) => format!("{prefix}{}", &new_uid()[..5]),
        (None, None) => {
            return Err(CdiError::Invalid(
                "metadata.name: Required value: name or generateName is required".into(),
            ))
        }
    };
    meta.name = Some(name.clone());
    meta.namespace = Some(namespace.to_string());
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(Timestamp::now());
    meta.deletion_timestamp = None;
    meta.resource_version = None;
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
                .map_err(|r| CdiError::Invalid(format!("spec.source.http.url: Forbidden: {r}"))),
            None => Ok(()),
        }
    }

    // ---- requests ----

    /// Creates a DataVolume in `namespace` (validated; its name names the volume file).
    pub fn create_data_volume(&self, namespace: &str, mut dv: DataVolume) -> Result<DataVolume, CdiError> {
        let name = prepare_meta(&mut dv.metadata, namespace)?;
        check(&dv)?;
        VolumeId::new(namespace, &name).validate().map_err(|e| {
            CdiError::Invalid(format!("metadata.name: Invalid value: \"{name}\": it names the volume: {e}"))
        })?;
        self.check_import_url(&dv)?;
        self.check_restore_size(&dv)?;
        dv.api_version = Some(API_VERSION.into());
        dv.kind = Some("DataVolume".into());
        dv.status = Some(DataVolumeStatus {
            phase: Some(DataVolumePhase::Pending),
            progress: Some(DataVolumeProgress("N/A".into())),
            ..Default::default()
        });
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        self.insert_dv_locked(&mut st, &key, dv)?;
        let out = st.dvs.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataVolume.resource(), name })
    }

    fn insert_dv_locked(&self, st: &mut State, key: &Key, dv: DataVolume) -> Result<(), CdiError> {
        if st.dvs.contains_key(key) {
            return Err(CdiError::AlreadyExists {
                resource: CdiKind::DataVolume.resource(),
                name: key.name.clone(),
            });
        }
        if st.dv_workers.contains_key(key) {
            return Err(CdiError::Conflict(format!(
                "DataVolume {key} was deleted and its import is still being stopped; try again shortly"
            )));
        }
        st.dvs.insert(key.clone(), dv);
        st.dv_next.remove(key);
        st.dv_failures.remove(key);
        st.template_errors.remove(key);
        if let Err(e) = self.persist(st, CdiKind::DataVolume, key) {
            st.dvs.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// A DataVolume restoring a known, ready VolumeSnapshot must be at least its `restoreSize`
    /// (checked again when it is populated: the snapshot may come later).
    fn check_restore_size(&self, dv: &DataVolume) -> Result<(), CdiError> {
        let (Some(snap), Some(want)) = (
            dv.spec.source.as_ref().and_then(|s| s.snapshot.as_ref()),
            dv.spec.requested_size().map(|q| q.bytes()),
        ) else {
            return Ok(());
        };
        let need = lock(&self.state)
            .snapshots
            .get(&Key::new(&snap.namespace, &snap.name))
            .and_then(|vs| vs.status.as_ref())
            .and_then(|s| s.restore_size.as_ref())
            .map(|q| q.bytes());
        match need {
            Some(need) if want < need => {
                let field = if dv.spec.storage.is_some() { "spec.storage" } else { "spec.pvc" };
                Err(CdiError::Invalid(format!(
                    "{field}.resources.requests.storage: Invalid value: {want}: smaller than the restoreSize \
                     ({need} bytes) of VolumeSnapshot {}/{}",
                    snap.namespace, snap.name
                )))
            }
            _ => Ok(()),
        }
    }

    /// Creates a VolumeSnapshot of a claim in `namespace`; a worker takes it.
    pub fn create_volume_snapshot(
        &self,
        namespace: &str,
        mut vs: VolumeSnapshot,
    ) -> Result<VolumeSnapshot, CdiError> {
        let name = prepare_meta(&mut vs.metadata, namespace)?;
        vs.check().map_err(|e| CdiError::Invalid(e.to_string()))?;
        vs.api_version = Some(SNAPSHOT_API_VERSION.into());
        vs.kind = Some("VolumeSnapshot".into());
        vs.status = Some(VolumeSnapshotStatus { ready_to_use: Some(false), ..Default::default() });
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.snapshots.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::VolumeSnapshot.resource(), name });
        }
        if st.snap_workers.contains_key(&key) {
            return Err(CdiError::Conflict(format!(
                "VolumeSnapshot {key} was deleted while it was being taken; try again shortly"
            )));
        }
        st.snapshots.insert(key.clone(), vs);
        st.snap_next.remove(&key);
        if let Err(e) = self.persist(&mut st, CdiKind::VolumeSnapshot, &key) {
            st.snapshots.remove(&key);
            return Err(e);
        }
        let out = st.snapshots.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::VolumeSnapshot.resource(), name })
    }

    /// Creates a DataSource in `namespace`.
    pub fn create_data_source(&self, namespace: &str, mut ds: DataSource) -> Result<DataSource, CdiError> {
        let name = prepare_meta(&mut ds.metadata, namespace)?;
        check(&ds)?;
        ds.api_version = Some(API_VERSION.into());
        ds.kind = Some("DataSource".into());
        ds.status = None;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.sources.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::DataSource.resource(), name });
        }
        st.sources.insert(key.clone(), ds);
        self.update_source_status_locked(&mut st, &key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &key) {
            st.sources.remove(&key);
            return Err(e);
        }
        let out = st.sources.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataSource.resource(), name })
    }

    /// Creates a DataImportCron in `namespace`; its first import starts at once.
    pub fn create_data_import_cron(
        &self,
        namespace: &str,
        mut cron: DataImportCron,
    ) -> Result<DataImportCron, CdiError> {
        let name = prepare_meta(&mut cron.metadata, namespace)?;
        check(&cron)?;
        cron.api_version = Some(API_VERSION.into());
        cron.kind = Some("DataImportCron".into());
        cron.status = None;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.crons.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::DataImportCron.resource(), name });
        }
        if st.cron_workers.contains_key(&key) {
            return Err(CdiError::Conflict(format!(
                "DataImportCron {key} was deleted and its import is still running; try again shortly"
            )));
        }
        st.crons.insert(key.clone(), cron);
        st.cron_next.remove(&key);
        st.cron_failures.remove(&key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, &key) {
            st.crons.remove(&key);
            return Err(e);
        }
        let out = st.crons.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataImportCron.resource(), name })
    }

    /// Replaces a DataImportCron's labels and annotations, e.g. the per-boot-source switch of
    /// automatic updates ([`ANN_AUTO_UPDATE`]); the spec cannot change on this node (delete and
    /// create again). A stale `resourceVersion` is a conflict.
    pub fn replace_data_import_cron(
        &self,
        namespace: &str,
        cron: DataImportCron,
    ) -> Result<DataImportCron, CdiError> {
        let name = cron.metadata.name.clone().unwrap_or_default();
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        let not_found =
            || CdiError::NotFound { resource: CdiKind::DataImportCron.resource(), name: name.clone() };
        let cur = st.crons.get(&key).cloned().ok_or_else(not_found)?;
        if let Some(rv) = cron.metadata.resource_version.as_ref() {
            if cur.metadata.resource_version.as_ref() != Some(rv) {
                return Err(CdiError::Conflict(format!(
                    "Operation cannot be fulfilled on dataimportcrons.cdi.kubevirt.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                )));
            }
        }
        if cron.spec != cur.spec {
            return Err(CdiError::Invalid(format!(
                "DataImportCron {key}: spec: Forbidden: the spec cannot change on this node; only metadata.labels and metadata.annotations (e.g. {ANN_AUTO_UPDATE})"
            )));
        }
        let mut next = cur.clone();
        next.metadata.labels = cron.metadata.labels;
        next.metadata.annotations = cron.metadata.annotations;
        st.crons.insert(key.clone(), next);
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, &key) {
            st.crons.insert(key, cur);
            return Err(e);
        }
        // Switched back on: poll now rather than at the next tick of a schedule.
        st.cron_next.remove(&key);
        let out = st.crons.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or_else(not_found)
    }

    /// One object as JSON.
    pub fn get(&self, kind: CdiKind, namespace: &str, name: &str) -> Result<Value, CdiError> {
        let key = Key::new(namespace, name);
        let st = lock(&self.state);
        let v = match kind {
            CdiKind::DataVolume => st.dvs.get(&key).map(to_value),
            CdiKind::DataSource => st.sources.get(&key).map(to_value),
            CdiKind::DataImportCron => st.crons.get(&key).map(to_value),
            CdiKind::VolumeSnapshot => st.snapshots.get(&key).map(to_value),
        };
        v.ok_or_else(|| CdiError::NotFound { resource: kind.resource(), name: name.into() })
    }

    /// One DataVolume.
    pub fn data_volume(&self, namespace: &str, name: &str) -> Option<DataVolume> {
        lock(&self.state).dvs.get(&Key::new(namespace, name)).cloned()
    }

    /// The objects of a kind in `namespace`, or in all namespaces, as JSON.
    pub fn list(&self, kind: CdiKind, namespace: Option<&str>) -> Vec<Value> {
        let st = lock(&self.state);
        let keep = |k: &Key| namespace.is_none_or(|n| n == k.namespace);
        match kind {
            CdiKind::DataVolume => st.dvs.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect(),
            CdiKind::DataSource => {
                st.sources.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
            CdiKind::DataImportCron => {
                st.crons.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
            CdiKind::VolumeSnapshot => {
                st.snapshots.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
        }
    }

    /// The objects of `kind` in `namespace` (or all) whose labels `selector` selects.
    pub fn list_selected(
        &self,
        kind: CdiKind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<Value> {
        self.list(kind, namespace).into_iter().filter(|o| selector.matches_object(o)).collect()
    }

    /// Deletes an object. A DataVolume's volume goes with it (refused while other volumes are
    /// overlays on it); an import under way is abandoned and its volume removed when it ends. A
    /// DataImportCron with `retentionPolicy: None` takes its DataSource and imports along.
    pub fn delete(&self, kind: CdiKind, namespace: &str, name: &str) -> Result<(), CdiError> {
        let key = Key::new(namespace, name);
        let not_found = || CdiError::NotFound { resource: kind.resource(), name: name.into() };
        match kind {
            CdiKind::DataVolume => {
                let working = {
                    let st = lock(&self.state);
                    if !st.dvs.contains_key(&key) {
                        return Err(not_found());
                    }
                    st.dv_workers.contains_key(&key)
                };
                if !working {
                    self.delete_volume(&key)?;
                }
                let mut st = lock(&self.state);
                if st.dvs.remove(&key).is_none() {
                    return Err(not_found());
                }
                st.dv_next.remove(&key);
                st.dv_failures.remove(&key);
                self.persist(&mut st, CdiKind::DataVolume, &key)?;
                log::info!("DataVolume {key} deleted");
            }
            CdiKind::DataSource => {
                let mut st = lock(&self.state);
                st.sources.remove(&key).ok_or_else(not_found)?;
                self.persist(&mut st, CdiKind::DataSource, &key)?;
            }
            CdiKind::VolumeSnapshot => {
                let mut st = lock(&self.state);
                let vs = st.snapshots.get(&key).ok_or_else(not_found)?;
                if st.snap_workers.contains_key(&key) {
                    return Err(CdiError::Conflict(format!(
                        "VolumeSnapshot {key} is being taken; try again shortly"
                    )));
                }
                if let Some(claim) = vs.claim() {
                    match self.pool.delete_snapshot(&VolumeId::new(namespace, claim), name) {
                        Ok(()) | Err(VolumeError::NotFound(_) | VolumeError::InvalidName(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                st.snapshots.remove(&key);
                st.snap_next.remove(&key);
                self.persist(&mut st, CdiKind::VolumeSnapshot, &key)?;
                log::info!("VolumeSnapshot {key} deleted");
            }
            CdiKind::DataImportCron => {
                let mut st = lock(&self.state);
                let cron = st.crons.remove(&key).ok_or_else(not_found)?;
                st.cron_next.remove(&key);
                st.cron_failures.remove(&key);
                self.persist(&mut st, CdiKind::DataImportCron, &key)?;
                if cron.spec.retention_policy == Some(RetentionPolicy::None) {
                    let ds = Key::new(namespace, &cron.spec.managed_data_source);
                    if st.sources.remove(&ds).is_some() {
                        self.persist(&mut st, CdiKind::DataSource, &ds)?;
                    }
                    let imports: Vec<Key> = st
                        .dvs
                        .iter()
                        .filter(|(k, dv)| {
                            k.namespace == namespace
                                && dv.metadata.labels.get(LABEL_CRON).map(String::as_str) == Some(name)
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    drop(st);
                    for k in imports {
                        if let Err(e) = self.delete(CdiKind::DataVolume, &k.namespace, &k.name) {
                            log::warn!("DataImportCron {key} (retentionPolicy None): {e}");
                        }
                    }
                }
            }
        }
        self.wake();
        Ok(())
    }

    fn delete_volume(&self, key: &Key) -> Result<(), CdiError> {
        let id = VolumeId::new(&key.namespace, &key.name);
        match self.pool.delete(&id) {
            Ok(()) => Ok(()),
            Err(VolumeError::NotFound(_) | VolumeError::InvalidName(_)) => Ok(()),
            Err(VolumeError::InUse { id, users }) => Err(CdiError::Conflict(format!(
                "DataVolume {key} cannot be deleted: its volume {id} backs {users} (copy-on-write clones); \
                 delete those first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The StorageProfile of the node's pool: how it clones, as CDI says it.
    pub fn storage_profile(&self) -> StorageProfile {
        let p = self.pool.profile();
        let strategy = match p.clone_strategies.first() {
            Some(CloneStrategy::Reflink) => CdiCloneStrategy::CsiClone,
            Some(CloneStrategy::Overlay) => CdiCloneStrategy::Snapshot,
            _ => CdiCloneStrategy::Copy,
        };
        let mut meta = ObjectMeta::named(STORAGE_CLASS);
        let order: Vec<String> = p.clone_strategies.iter().map(ToString::to_string).collect();
        meta.annotations.insert("virt-rs.io/clone-strategies".into(), order.join(","));
        meta.annotations.insert(
            "virt-rs.io/reflink".into(),
            match &p.reflink {
                Ok(()) => "supported".into(),
                Err(why) => why.clone(),
            },
        );
        StorageProfile {
            api_version: Some(API_VERSION.into()),
            kind: Some("StorageProfile".into()),
            metadata: meta,
            spec: StorageProfileSpec::default(),
            status: Some(StorageProfileStatus {
                storage_class: Some(STORAGE_CLASS.into()),
                provisioner: Some(PROVISIONER.into()),
                clone_strategy: Some(strategy),
                claim_property_sets: vec![ClaimPropertySet {
                    access_modes: vec![AccessMode::ReadWriteOnce],
                    volume_mode: VolumeMode::Filesystem,
                }],
                data_import_cron_source_format: Some(SourceFormat::Pvc),
                snapshot_class: None,
            }),
        }
    }

    /// Where `virtctl image-upload` sends images (`http://ADDR`), once [`Cdi::serve_uploads`]
    /// listens.
    pub fn upload_url(&self) -> Option<String> {
        lock(&self.upload_url).clone()
    }

    /// Issues a token for one upload into the DataVolume `namespace/claim` (CDI's
    /// UploadTokenRequest). The DataVolume's source must be `upload` and it must not be populated.
    pub fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, CdiError> {
        let dv = self
            .data_volume(namespace, claim)
            .ok_or_else(|| CdiError::NotFound { resource: "persistentvolumeclaims", name: claim.into() })?;
        if !is_upload(&dv) {
            let source = dv
                .spec
                .source
                .as_ref()
                .and_then(|s| s.single().map(|k| k.field().to_string()))
                .or_else(|| dv.spec.source_ref.as_ref().map(|_| "sourceRef".to_string()))
                .unwrap_or_else(|| "none".into());
            return Err(CdiError::BadRequest(format!(
                "DataVolume {namespace}/{claim} does not take uploads: its source is {source}, not upload"
            )));
        }
        if phase_of(&dv) == Some(DataVolumePhase::Succeeded) {
            return Err(CdiError::Conflict(format!(
                "DataVolume {namespace}/{claim} is already populated (phase Succeeded)"
            )));
        }
        let id = VolumeId::new(namespace, claim);
        Ok(self.uploads.issue_token(&id, VolumeFormat::Raw, UPLOAD_TOKEN_TTL)?)
    }

    /// Binds the upload endpoint on `near`'s address (the node's TCP listener) or 127.0.0.1, on a
    /// free port, records its URL, and serves it until `shutdown` resolves.
    pub async fn serve_uploads(
        &self,
        near: Option<SocketAddr>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<()>, CdiError> {
        let ip = near.map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, 0);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| CdiError::Io {
            what: "listening for uploads on",
            path: addr.to_string(),
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| CdiError::Io {
            what: "reading the address of",
            path: addr.to_string(),
            source,
        })?;
        let url = format!("http://{bound}");
        log::info!("virt-node: upload endpoint on {url}/v1beta1/upload");
        {
            // Imports may not reach the upload endpoint either.
            let mut policy = lock(&self.net_policy);
            if let Some(p) = policy.as_ref() {
                *policy = Some(Arc::new(p.as_ref().clone().protect(bound)));
            }
        }
        *lock(&self.upload_url) = Some(url);
        let app = self.uploads.router();
        Ok(tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        }))
    }

    /// Told by the upload endpoint when an upload ended.
    fn upload_finished(&self, id: &VolumeId, result: &Result<(), String>) {
        let key = Key::new(&id.namespace, &id.name);
        let mut st = lock(&self.state);
        let wanted = st.dvs.get(&key).is_some_and(is_upload);
        match result {
            Ok(()) if !wanted => {
                drop(st);
                // The DataVolume went away while the image was on its way.
                log::warn!("upload into {id}: no DataVolume takes it any more; deleting the volume");
                if let Err(e) = self.pool.delete(id) {
                    log::warn!("deleting {id}: {e}");
                }
                return;
            }
            Ok(()) => {
                log::info!("DataVolume {key}: upload complete");
                st.dv_next.remove(&key);
            }
            Err(msg) => {
                if let Some(dv) = st.dvs.get_mut(&key) {
                    let status = dv.status.get_or_insert_with(Default::default);
                    set_dv_condition(
                        &mut status.conditions,
                        dv_condition("Running", false, "UploadFailed", &format!("upload failed: {msg}")),
                    );
                }
            }
        }
        drop(st);
        self.wake();
    }

    // ---- the controller ----

    /// Runs the controller until `stop` is set: creates VMs' template DataVolumes, populates
    /// DataVolumes and runs DataImportCrons in worker threads, keeps DataSources' status.
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.pass();
            let st = lock(&self.state);
            let _unused = self.wake.wait_timeout(st, TICK);
        }
    }

    /// One pass of the controller.
    pub fn pass(self: &Arc<Self>) {
        if let Some(lc) = self.lifecycle.get() {
            self.sync_templates(lc);
        }
        self.start_dv_workers();
        self.start_snapshot_workers();
        self.start_cron_workers();
        let mut st = lock(&self.state);
        let keys: Vec<Key> = st.sources.keys().cloned().collect();
        for key in keys {
            if self.update_source_status_locked(&mut st, &key) {
                if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &key) {
                    log::error!("DataSource {key}: {e}");
                }
            }
        }
    }

    /// Creates the DataVolumes of VMs' `dataVolumeTemplates` that do not exist; deletes the
    /// DataVolumes whose owning VM is gone.
    fn sync_templates(&self, lc: &Lifecycle) {
        let vms = lc.list_vms(None);
        let mut live: HashSet<(String, String, String)> = HashSet::new();
        let mut wanted: Vec<(Key, Result<DataVolume, String>)> = Vec::new();
        for vm in &vms {
            let (Some(ns), Some(name)) = (vm.metadata.namespace.clone(), vm.metadata.name.clone()) else {
                continue;
            };
            let uid = vm.metadata.uid.clone().unwrap_or_default();
            live.insert((ns.clone(), name.clone(), uid));
            if vm.metadata.deletion_timestamp.is_some() {
                continue;
            }
            for (i, t) in vm.spec.data_volume_templates.iter().enumerate() {
                let Some(dv_name) = t.metadata.name.clone() else { continue };
                wanted.push((Key::new(&ns, dv_name), dv_from_template(vm, i)));
            }
        }
        let mut gone: Vec<Key> = Vec::new();
        {
            let mut st = lock(&self.state);
            st.template_errors.clear();
            for (key, dv) in wanted {
                if st.dvs.contains_key(&key) {
                    continue;
                }
                match dv {
                    Ok(dv) => match self.insert_dv_locked(&mut st, &key, dv) {
                        Ok(()) => log::info!("DataVolume {key} created from its VM's dataVolumeTemplates"),
                        Err(CdiError::Conflict(_)) => {}
                        Err(e) => {
                            st.template_errors.insert(key, e.to_string());
                        }
                    },
                    Err(why) => {
                        st.template_errors.insert(key, why);
                    }
                }
            }
            for (key, dv) in &st.dvs {
                let owner = dv
                    .metadata
                    .owner_references
                    .iter()
                    .find(|o| o.kind == "VirtualMachine" && o.api_version.starts_with("kubevirt.io/"));
                if let Some(o) = owner {
                    if !live.contains(&(key.namespace.clone(), o.name.clone(), o.uid.clone())) {
                        gone.push(key.clone());
                    }
                }
            }
        }
        for key in gone {
            match self.delete(CdiKind::DataVolume, &key.namespace, &key.name) {
                Ok(()) => log::info!("DataVolume {key} deleted with its VirtualMachine"),
                Err(CdiError::NotFound { .. }) => {}
                Err(e) => log::warn!("DataVolume {key} of a deleted VirtualMachine: {e}"),
            }
        }
    }

    fn start_dv_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let candidates: Vec<(Key, String)> = st
            .dvs
            .iter()
            .filter(|(k, dv)| {
                let phase = phase_of(dv);
                !st.dv_workers.contains_key(*k)
                    && phase != Some(DataVolumePhase::Succeeded)
                    && (phase != Some(DataVolumePhase::Failed) || retryable(dv))
                    && st.dv_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, dv)| (k.clone(), dv.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in candidates {
            if st.dv_workers.len() >= MAX_WORKERS {
                break;
            }
            st.dv_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dv {}", key.name))
                .spawn(move || me.populate(k, uid));
            if let Err(e) = spawned {
                log::error!("DataVolume {key}: starting a worker: {e}");
                st.dv_workers.remove(&key);
                st.dv_next.insert(key, now + RECHECK);
            }
        }
    }

    /// A worker: one reconcile of DataVolume `key` (uid `uid`).
    fn populate(self: Arc<Self>, key: Key, uid: String) {
        let Some(mut dv) = self.data_volume(&key.namespace, &key.name) else {
            self.dv_finished(&key, &uid, None, DvRun::Waiting(String::new()));
            return;
        };
        let pool: &dyn VolumeProvider = self.pool.as_ref();
        let mut classes = BTreeMap::from([(STORAGE_CLASS.to_string(), pool)]);
        // There is one pool: any class a DataVolume names is that pool.
        let named = dv
            .spec
            .storage
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .or_else(|| dv.spec.pvc.as_ref().and_then(|p| p.storage_class_name.clone()));
        if let Some(c) = named {
            classes.insert(c, pool);
        }
        let classes = StorageClasses { classes, default_class: STORAGE_CLASS.into() };
        let lookup = Lookup(&self);
        let env = DvEnv {
            classes: &classes,
            objects: &lookup,
            insecure_registries: self.insecure_registries.clone(),
            net_policy: lock(&self.net_policy).clone(),
        };
        let (me, k, u) = (self.clone(), key.clone(), uid.clone());
        let mut progress = move |st: &DataVolumeStatus| me.dv_progress(&k, &u, st);
        let run = reconcile_data_volume(&mut dv, &env, &mut progress);
        let run = match run {
            DvRun::AlreadyDone | DvRun::Populated => self.fit_size(&mut dv, run),
            other => other,
        };
        self.dv_finished(&key, &uid, Some(dv), run);
    }

    /// Grows a populated volume to the requested size (an upload, or a node that stopped between
    /// an import's end and its resize). An upload larger than the request fails.
    fn fit_size(&self, dv: &mut DataVolume, run: DvRun) -> DvRun {
        let Some(want) = dv.spec.requested_size().map(|q| q.bytes().div_ceil(512) * 512) else { return run };
        let ns = dv.metadata.namespace.clone().unwrap_or_default();
        let name = dv.metadata.name.clone().unwrap_or_default();
        let id = VolumeId::new(&ns, &name);
        let have = match self.pool.get(&id) {
            Ok(Some(v)) => v.size,
            Ok(None) => return run,
            Err(e) => {
                let msg = e.to_string();
                fail_dv(dv, "StorageError", &msg);
                return DvRun::Failed(msg);
            }
        };
        if want > have {
            if let Err(e) = self.pool.resize(&id, want) {
                let msg = e.to_string();
                fail_dv(dv, "StorageError", &msg);
                return DvRun::Failed(msg);
            }
        } else if want < have && is_upload(dv) {
            let msg = format!(
                "the uploaded image is {have} bytes, larger than the {want} bytes DataVolume {ns}/{name} \
                 requests; upload again with a larger size"
            );
            if let Err(e) = self.pool.delete(&id) {
                log::warn!("deleting {id}: {e}");
            }
            fail_dv(dv, "UploadTooLarge", &msg);
            return DvRun::Failed(msg);
        }
        run
    }

    /// Progress from a worker: the status is updated at once, written to the store when the phase
    /// changes.
    fn dv_progress(&self, key: &Key, uid: &str, status: &DataVolumeStatus) {
        let mut st = lock(&self.state);
        let Some(dv) = st.dvs.get_mut(key).filter(|d| d.metadata.uid.as_deref() == Some(uid)) else {
            return;
        };
        let before = phase_of(dv);
        dv.status = Some(status.clone());
        if before != status.phase {
            if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, key) {
                log::error!("DataVolume {key}: {e}");
            }
        }
    }

    fn dv_finished(&self, key: &Key, uid: &str, dv: Option<DataVolume>, run: DvRun) {
        let mut st = lock(&self.state);
        st.dv_workers.remove(key);
        let current = st.dvs.get_mut(key).filter(|d| d.metadata.uid.as_deref() == Some(uid));
        match (current, dv) {
            (Some(cur), Some(dv)) => {
                let changed = cur.status != dv.status || cur.metadata.annotations != dv.metadata.annotations;
                cur.status = dv.status;
                cur.metadata.annotations = dv.metadata.annotations;
                match &run {
                    DvRun::Waiting(_) => {
                        st.dv_next.insert(key.clone(), Instant::now() + RECHECK);
                    }
                    DvRun::Failed(msg) => {
                        let n = st.dv_failures.entry(key.clone()).or_insert(0);
                        *n = n.saturating_add(1);
                        let delay = backoff(*n);
                        st.dv_next.insert(key.clone(), Instant::now() + delay);
                        log::warn!("DataVolume {key} failed: {msg}");
                    }
                    DvRun::AlreadyDone | DvRun::Populated => {
                        st.dv_failures.remove(key);
                        st.dv_next.remove(key);
                        if run == DvRun::Populated {
                            log::info!("DataVolume {key} populated");
                        }
                    }
                }
                if changed {
                    if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, key) {
                        log::error!("DataVolume {key}: {e}");
                    }
                }
            }
            (Some(_), None) => {}
            (None, _) => {
                // Deleted while the worker ran: what it made goes too.
                drop(st);
                if let Err(e) = self.delete_volume(key) {
                    log::warn!("DataVolume {key} was deleted during its import: {e}");
                }
                return;
            }
        }
        drop(st);
        self.wake();
    }

    fn start_snapshot_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let due: Vec<(Key, String)> = st
            .snapshots
            .iter()
            .filter(|(k, vs)| {
                !vs.ready()
                    && !st.snap_workers.contains_key(*k)
                    && st.snap_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, vs)| (k.clone(), vs.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in due {
            st.snap_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("snap {}", key.name))
                .spawn(move || me.take_snapshot(k, uid));
            if let Err(e) = spawned {
                log::error!("VolumeSnapshot {key}: starting a worker: {e}");
                st.snap_workers.remove(&key);
                st.snap_next.insert(key, now + RECHECK);
            }
        }
    }

    /// A worker: takes the pool snapshot of VolumeSnapshot `key` (uid `uid`).
    fn take_snapshot(self: Arc<Self>, key: Key, uid: String) {
        let (claim, dv_phase) = {
            let st = lock(&self.state);
            let claim = st
                .snapshots
                .get(&key)
                .filter(|v| v.metadata.uid.as_deref() == Some(uid.as_str()))
                .and_then(|v| v.claim().map(str::to_string));
            let dv_phase =
                claim.as_ref().and_then(|c| st.dvs.get(&Key::new(&key.namespace, c))).map(phase_of);
            (claim, dv_phase)
        };
        let Some(claim) = claim else {
            lock(&self.state).snap_workers.remove(&key);
            return;
        };
        let id = VolumeId::new(&key.namespace, &claim);
        let taken = match dv_phase {
            Some(p) if p != Some(DataVolumePhase::Succeeded) => Err(format!(
                "DataVolume {id} (spec.source.persistentVolumeClaimName) is not populated yet (phase {})",
                phase_name(p)
            )),
            _ => match self.pool.get_snapshot(&id, &key.name) {
                // Taken before the node stopped.
                Ok(Some(v)) => Ok(v.size),
                Ok(None) => match self.pool.get(&id) {
                    Ok(None) => Err(format!(
                        "persistentvolumeclaims \"{claim}\" not found in namespace {} \
                         (spec.source.persistentVolumeClaimName)",
                        key.namespace
                    )),
                    Ok(Some(_)) => {
                        self.pool.snapshot(&id, &key.name).map(|o| o.volume.size).map_err(|e| e.to_string())
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            },
        };
        self.snapshot_finished(&key, &uid, &id, taken);
    }

    fn snapshot_finished(&self, key: &Key, uid: &str, id: &VolumeId, taken: Result<u64, String>) {
        let mut st = lock(&self.state);
        st.snap_workers.remove(key);
        let Some(vs) = st.snapshots.get_mut(key).filter(|v| v.metadata.uid.as_deref() == Some(uid)) else {
            drop(st);
            // Deleted while it was being taken: what it made goes too.
            if taken.is_ok() {
                if let Err(e) = self.pool.delete_snapshot(id, &key.name) {
                    log::warn!("VolumeSnapshot {key} was deleted while it was taken: {e}");
                }
            }
            return;
        };
        let before = vs.status.clone();
        let status = vs.status.get_or_insert_with(Default::default);
        let ready = match taken {
            Ok(size) => {
                status.ready_to_use = Some(true);
                status.restore_size = Some(Quantity::from_bytes(size));
                status.creation_time = Some(Timestamp::now());
                status.error = None;
                log::info!("VolumeSnapshot {key}: snapshot of {id} taken ({size} bytes)");
                true
            }
            Err(message) => {
                status.ready_to_use = Some(false);
                let same = status.error.as_ref().and_then(|e| e.message.as_deref()) == Some(message.as_str());
                if !same {
                    log::info!("VolumeSnapshot {key}: {message}");
                    status.error =
                        Some(VolumeSnapshotError { message: Some(message), time: Some(Timestamp::now()) });
                }
                false
            }
        };
        let changed = vs.status != before;
        if ready {
            st.snap_next.remove(key);
        } else {
            st.snap_next.insert(key.clone(), Instant::now() + RECHECK);
        }
        if changed {
            if let Err(e) = self.persist(&mut st, CdiKind::VolumeSnapshot, key) {
                log::error!("VolumeSnapshot {key}: {e}");
            }
        }
        drop(st);
        self.wake();
    }

    fn start_cron_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let due: Vec<(Key, String)> = st
            .crons
            .iter()
            .filter(|(k, _)| {
                !st.cron_workers.contains_key(*k) && st.cron_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, c)| (k.clone(), c.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in due {
            st.cron_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cron {}", key.name))
                .spawn(move || me.run_cron(k, uid));
            if let Err(e) = spawned {
                log::error!("DataImportCron {key}: starting a worker: {e}");
                st.cron_workers.remove(&key);
                st.cron_next.insert(key, now + CRON_CHECK);
            }
        }
    }

    /// A worker: one reconcile of DataImportCron `key`.
    fn run_cron(self: Arc<Self>, key: Key, uid: String) {
        let (cron, ds) = {
            let st = lock(&self.state);
            let cron =
                st.crons.get(&key).filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())).cloned();
            let ds = cron.as_ref().and_then(|c| {
                st.sources.get(&Key::new(&key.namespace, &c.spec.managed_data_source)).cloned()
            });
            (cron, ds)
        };
        let Some(mut cron) = cron else {
            lock(&self.state).cron_workers.remove(&key);
            return;
        };
        let mut ds = ds.unwrap_or_else(|| {
            let mut meta = ObjectMeta::named(&cron.spec.managed_data_source);
            meta.namespace = Some(key.namespace.clone());
            meta.labels.insert(LABEL_CRON.into(), key.name.clone());
            DataSource {
                api_version: Some(API_VERSION.into()),
                kind: Some("DataSource".into()),
                metadata: meta,
                spec: DataSourceSpec::default(),
                status: None,
            }
        });
        let pool: &dyn VolumeProvider = self.pool.as_ref();
        let classes = StorageClasses {
            classes: BTreeMap::from([(STORAGE_CLASS.to_string(), pool)]),
            default_class: STORAGE_CLASS.into(),
        };
        let mut cfg =
            RegistryConfig { net_policy: lock(&self.net_policy).clone(), ..RegistryConfig::default() };
        for r in &self.insecure_registries {
            cfg = cfg.with_insecure_registry(r.clone());
        }
        let auto_update = cron.metadata.annotations.get(ANN_AUTO_UPDATE).map(String::as_str) != Some("false");
        let result = match RegistryClient::new(cfg) {
            Ok(client) => reconcile_cron(&mut cron, &mut ds, &classes, &client, auto_update, unix_now())
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("registry client: {e}")),
        };
        self.cron_finished(&key, &uid, cron, ds, result);
    }

    fn cron_finished(
        &self,
        key: &Key,
        uid: &str,
        cron: DataImportCron,
        ds: DataSource,
        result: Result<virt_storage::golden::CronRun, String>,
    ) {
        let mut st = lock(&self.state);
        st.cron_workers.remove(key);
        let Some(cur) = st.crons.get_mut(key).filter(|c| c.metadata.uid.as_deref() == Some(uid)) else {
            return;
        };
        cur.status = cron.status.clone();
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, key) {
            log::error!("DataImportCron {key}: {e}");
        }
        // The managed DataSource: created on the first run, repointed by the cron.
        let ds_key = Key::new(&key.namespace, &cron.spec.managed_data_source);
        match st.sources.get_mut(&ds_key) {
            Some(existing) => {
                existing.spec = ds.spec;
                existing.status = ds.status;
            }
            None => {
                let mut ds = ds;
                let mut meta = std::mem::take(&mut ds.metadata);
                if prepare_meta(&mut meta, &key.namespace).is_ok() {
                    ds.metadata = meta;
                    st.sources.insert(ds_key.clone(), ds);
                }
            }
        }
        self.update_source_status_locked(&mut st, &ds_key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &ds_key) {
            log::error!("DataSource {ds_key}: {e}");
        }
        match result {
            Ok(run) => {
                st.cron_failures.remove(key);
                st.cron_next.insert(key.clone(), Instant::now() + CRON_CHECK);
                if let Some(id) = &run.imported {
                    log::info!(
                        "DataImportCron {key}: imported {} as {id}",
                        run.digest.as_deref().unwrap_or("the image")
                    );
                    let dv_key = Key::new(&id.namespace, &id.name);
                    if !st.dvs.contains_key(&dv_key) {
                        let dv = import_record(&cron, id);
                        if let Err(e) = self.insert_dv_locked(&mut st, &dv_key, dv) {
                            log::warn!("DataImportCron {key}: recording the import {id}: {e}");
                        }
                    }
                }
                for id in &run.deleted {
                    log::info!("DataImportCron {key}: deleted the outdated import {id}");
                    let dv_key = Key::new(&id.namespace, &id.name);
                    let ours = st.dvs.get(&dv_key).is_some_and(|d| {
                        d.metadata.labels.get(LABEL_CRON).map(String::as_str) == Some(key.name.as_str())
                    });
                    if ours {
                        st.dvs.remove(&dv_key);
                        if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, &dv_key) {
                            log::error!("DataVolume {dv_key}: {e}");
                        }
                    }
                }
                for (id, why) in &run.kept {
                    log::info!("DataImportCron {key}: outdated import {id} kept: {why}");
                }
            }
            Err(e) => {
                let n = st.cron_failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let delay = backoff(*n);
                st.cron_next.insert(key.clone(), Instant::now() + delay);
                log::warn!("DataImportCron {key}: {e} (next attempt in {delay:?})");
            }
        }
    }

    /// Recomputes a DataSource's `Ready` condition and resolved source; true if it changed.
    fn update_source_status_locked(&self, st: &mut State, key: &Key) -> bool {
        let Some(ds) = st.sources.get(key) else { return false };
        let resolved = match &ds.spec.source.data_source {
            Some(r) => st.sources.get(&Key::new(&r.namespace, &r.name)).map(|d| d.spec.source.clone()),
            None => Some(ds.spec.source.clone()),
        };
        let (ready, reason, message) = match resolved.as_ref().and_then(|s| s.pvc.as_ref()) {
            None if ds.spec.source.snapshot.is_some() => {
                (false, "NotSupported", "snapshot sources are not supported on this node".to_string())
            }
            None => (false, "NoSource", "no source yet".to_string()),
            Some(p) => {
                let id = VolumeId::new(&p.namespace, &p.name);
                let dv = st.dvs.get(&Key::new(&p.namespace, &p.name));
                match self.pool.get(&id) {
                    Ok(Some(_)) if dv.is_none_or(|d| phase_of(d) == Some(DataVolumePhase::Succeeded)) => {
                        (true, "Ready", format!("points at {id}"))
                    }
                    Ok(_) => match dv {
                        Some(d) => (
                            false,
                            "NotReady",
                            format!("DataVolume {id} is in phase {}", phase_name(phase_of(d))),
                        ),
                        None => (false, "NotFound", format!("claim {id} not found")),
                    },
                    Err(e) => (false, "NotFound", e.to_string()),
                }
            }
        };
        let Some(ds) = st.sources.get_mut(key) else { return false };
        let status = ds.status.get_or_insert_with(Default::default);
        let before = status.clone();
        status.source = resolved;
        let c = dv_condition("Ready", ready, reason, &message);
        match status.conditions.iter_mut().find(|x| x.type_ == "Ready") {
            Some(old) if old.status == c.status && old.reason == c.reason && old.message == c.message => {}
            _ => set_dv_condition(&mut status.conditions, c),
        }
        *status != before
    }
}

impl ClaimReadiness for Cdi {
    fn claim_ready(&self, namespace: &str, claim: &str) -> Option<Result<(), String>> {
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
                .and_then(|c| c.message.as_deref())
                .filter(|m| !m.is_empty())
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Some(Err(format!(
                "DataVolume {claim} is not ready (phase {}, progress {progress}){detail}",
                phase_name(phase)
            )));
        }
        st.template_errors.get(&key).map(|e| Err(e.clone()))
    }
}

/// The objects a DataVolume refers to: DataSources of this node (one level of `dataSource`
/// indirection followed); the node has no Secrets or ConfigMaps.
struct Lookup<'a>(&'a Cdi);

impl ObjectLookup for Lookup<'_> {
    fn secret(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn config_map(&self, _namespace: &str, _name: &str) -> Option<BTreeMap<String, String>> {
        None
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
fn check<T: Validate>(o: &T) -> Result<(), CdiError> {
    o.check().map(drop).map_err(|e| CdiError::Invalid(e.to_string()))
}

/// The DataVolume of `vm`'s template `i`, owned by the VM, read strictly (paths like
/// `spec.dataVolumeTemplates[0].spec.source.http.url`) and validated.
fn dv_from_template(vm: &VirtualMachine, i: usize) -> Result<DataVolume, String> {
    let ns = vm.metadata.namespace.clone().unwrap_or_default();
    let vm_name = vm.metadata.name.clone().unwrap_or_default();
    let path = format!("spec.dataVolumeTemplates[{i}]");
    let t = vm.spec.data_volume_templates.get(i).ok_or_else(|| format!("{path}: no such template"))?;
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
    let why = |e: String| format!("DataVolume template {path} of VirtualMachine {ns}/{vm_name}: {e}");
    let opts = LoadOptions::default();
    let mut dv: DataVolume = Decoder::new(&opts, 1).decode(value, &path).map_err(|e| match e {
        LoadError::Decode { errors, .. } => {
            why(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
        }
        other => why(other.to_string()),
    })?;
    let name = dv.metadata.name.clone().unwrap_or_default();
    prepare_meta(&mut dv.metadata, &ns).map_err(|e| why(e.to_string()))?;
    check(&dv).map_err(|e| why(e.to_string()))?;
    VolumeId::new(&ns, &name).validate().map_err(|e| why(e.to_string()))?;
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
mod tests {
    use super::*;
    use virt_storage::cdi;

    fn dv(name: &str, source: &str) -> DataVolume {
        cdi::from_yaml(&format!(
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  \
             source:\n    {source}\n  storage:\n    resources:\n      requests:\n        storage: 1Mi\n"
        ))
        .unwrap()
    }

    /// Drops the controller once its workers let go of it (just after they report), so that the
    /// store's file can be opened again.
    fn release(cdi: Arc<Cdi>) {
        let t = Instant::now();
        while Arc::strong_count(&cdi) > 1 {
            assert!(t.elapsed() < Duration::from_secs(20), "a worker still holds the controller");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn wait(cdi: &Arc<Cdi>, ns: &str, name: &str, phase: DataVolumePhase) -> DataVolume {
        let t = Instant::now();
        loop {
            cdi.pass();
            let d = cdi.data_volume(ns, name).unwrap();
            if phase_of(&d) == Some(phase) {
                return d;
            }
            assert!(t.elapsed() < Duration::from_secs(20), "{name} never reached {phase:?}: {d:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn blank_volumes_are_made_stored_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        let made = cdi.create_data_volume("default", dv("disk", "blank: {}")).unwrap();
        assert!(made.metadata.uid.is_some());
        assert!(matches!(
            cdi.create_data_volume("default", dv("disk", "blank: {}")),
            Err(CdiError::AlreadyExists { .. })
        ));
        let bad = cdi.create_data_volume("default", dv("Bad.Name", "blank: {}")).unwrap_err();
        assert!(bad.to_string().contains("metadata.name"), "{bad}");
        assert_eq!(cdi.claim_ready("default", "nothing"), None);
        let waiting = cdi.claim_ready("default", "disk");
        assert!(
            matches!(&waiting, Some(Err(m)) if m.starts_with("DataVolume disk is not ready (phase ")),
            "{waiting:?}"
        );
        wait(&cdi, "default", "disk", DataVolumePhase::Succeeded);
        assert_eq!(cdi.claim_ready("default", "disk"), Some(Ok(())));
        let file = dir.path().join("volumes/default/disk.img");
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
        release(cdi);
        // Reopened: the DataVolume is there, Succeeded.
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        let d = cdi.data_volume("default", "disk").unwrap();
        assert_eq!(phase_of(&d), Some(DataVolumePhase::Succeeded));
        cdi.delete(CdiKind::DataVolume, "default", "disk").unwrap();
        assert!(!file.exists());
        assert!(matches!(cdi.delete(CdiKind::DataVolume, "default", "disk"), Err(CdiError::NotFound { .. })));
        let mut labelled = dv("labelled", "blank: {}");
        labelled.metadata.labels.insert("app".into(), "web".into());
        cdi.create_data_volume("default", labelled).unwrap();
        cdi.create_data_volume("default", dv("plain", "blank: {}")).unwrap();
        let sel = virt_core::api::parse_label_selector("app=web").unwrap();
        let got = cdi.list_selected(CdiKind::DataVolume, Some("default"), &sel);
        assert_eq!(got.iter().map(|o| o["metadata"]["name"].clone()).collect::<Vec<_>>(), ["labelled"]);
    }

    #[test]
    fn upload_tokens_only_for_upload_sources() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        cdi.create_data_volume("default", dv("up", "upload: {}")).unwrap();
        cdi.create_data_volume("default", dv("empty", "blank: {}")).unwrap();
        wait(&cdi, "default", "up", DataVolumePhase::UploadReady);
        assert!(cdi.upload_token("default", "up").unwrap().len() >= 32);
        let e = cdi.upload_token("default", "empty").unwrap_err().to_string();
        assert!(e.contains("its source is blank, not upload"), "{e}");
        let e = cdi.upload_token("default", "none").unwrap_err().to_string();
        assert_eq!(e, "persistentvolumeclaims \"none\" not found");
    }

    #[test]
    fn templates_become_owned_datavolumes_or_errors_with_their_path() {
        let text = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm, namespace: default, uid: u-1}
spec:
  runStrategy: Halted
  dataVolumeTemplates:
  - metadata: {name: root}
    spec:
      source: {blank: {}}
      storage: {resources: {requests: {storage: 1Mi}}}
  - metadata: {name: bad}
    spec:
      source: {http: {urll: "http://x/y"}}
      storage: {}
  template: {spec: {domain: {devices: {}}}}
"#;
        let vm: VirtualMachine = virt_core::model::from_yaml(text).unwrap();
        let dv = dv_from_template(&vm, 0).unwrap();
        assert_eq!(dv.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(dv.metadata.owner_references[0].uid, "u-1");
        assert_eq!(phase_of(&dv), Some(DataVolumePhase::Pending));
        let e = dv_from_template(&vm, 1).unwrap_err();
        assert!(
            e.starts_with("DataVolume template spec.dataVolumeTemplates[1] of VirtualMachine default/vm"),
            "{e}"
        );
        assert!(e.contains(": spec.dataVolumeTemplates[1].spec.source.http.urll: unknown field"), "{e}");
    }

    #[test]
    fn volume_snapshots_are_taken_kept_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        cdi.create_data_volume("default", dv("disk", "blank: {}")).unwrap();
        let vs = |name: &str, claim: &str| -> VolumeSnapshot {
            let v = serde_json::json!({"apiVersion": SNAPSHOT_API_VERSION, "kind": "VolumeSnapshot",
                "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": claim}}});
            Decoder::new(&LoadOptions::default(), 1).decode(v, "").unwrap()
        };
        cdi.create_volume_snapshot("default", vs("snap", "disk")).unwrap();
        cdi.create_volume_snapshot("default", vs("lost", "nothing")).unwrap();
        let t = Instant::now();
        let get = |n: &str| -> VolumeSnapshot {
            serde_json::from_value(cdi.get(CdiKind::VolumeSnapshot, "default", n).unwrap()).unwrap()
        };
        while !get("snap").ready() || get("lost").status.and_then(|s| s.error).is_none() {
            assert!(t.elapsed() < Duration::from_secs(20), "{:?} {:?}", get("snap"), get("lost"));
            cdi.pass();
            std::thread::sleep(Duration::from_millis(20));
        }
        let st = get("snap").status.unwrap();
        assert_eq!(st.restore_size.map(|q| q.bytes()), Some(1 << 20));
        let e = get("lost").status.unwrap().error.unwrap().message.unwrap();
        assert!(e.starts_with("persistentvolumeclaims \"nothing\" not found in namespace default"), "{e}");
        assert!(dir.path().join("volumes/default/.snapshots/disk@snap.img").is_file());
        release(cdi);
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        assert_eq!(cdi.list(CdiKind::VolumeSnapshot, Some("default")).len(), 2);
        cdi.delete(CdiKind::VolumeSnapshot, "default", "snap").unwrap();
        assert!(!dir.path().join("volumes/default/.snapshots/disk@snap.img").exists());
        assert!(matches!(
            cdi.delete(CdiKind::VolumeSnapshot, "default", "snap"),
            Err(CdiError::NotFound { .. })
        ));
    }

    #[test]
    fn the_storage_profile_says_how_the_pool_clones() {
        let dir = tempfile::tempdir().unwrap();
        let cdi = Cdi::open(dir.path(), vec![]).unwrap();
        let p = cdi.storage_profile();
        let st = p.status.unwrap();
        assert_eq!(st.storage_class.as_deref(), Some(STORAGE_CLASS));
        assert!(st.clone_strategy.is_some());
        assert!(p.metadata.annotations["virt-rs.io/clone-strategies"].contains("overlay"));
    }
}
