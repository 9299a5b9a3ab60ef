//! The VM lifecycle as a library: KubeVirt's VirtualMachine and VirtualMachineInstance objects, their
//! run strategies, phases, conditions and events, driven without any daemon.
//!
//! A [`Lifecycle`] keeps the objects (persisted through a [`Store`]), decides with the pure
//! functions of [`strategy`] what should run, and runs it through a [`Runtime`]: in-process on a
//! machine backend ([`BackendRuntime`]), or one launcher process per VMI (the node daemon's
//! runtime, in virt-k8s). Call [`Lifecycle::reconcile`] after changes and periodically (or let
//! [`Lifecycle::run`] do it); user requests (`start`, `stop`, `pause`, ...) are methods.
//!
//! Phases: a VMI is `Pending` when created, `Scheduling` while its machine is being prepared,
//! `Scheduled` once the machine exists, `Running` when the guest runs, then `Succeeded` (the guest
//! powered off, or a stop asked for it) or `Failed` (it crashed, or could not start). A guest
//! reboot starts the machine again in place: the VMI stays Running, as in KubeVirt.

mod runtime;
pub mod strategy;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

pub use runtime::{BackendRuntime, ConsoleFactory, VolumeFilesFactory};
pub use strategy::{Action, InstanceView, Request, RequestError, StateChange, VmView};

use crate::api::{ConditionStatus, ObjectMeta, OwnerReference, Timestamp};
use crate::machine::accel::Accelerator;
use crate::machine::{Machine, MachineExit, MachineStatus};
use crate::model::{
    self, Admit, Catalog, Condition, NodeSupport, PhaseTransition, VirtualMachine, VirtualMachineInstance,
    VirtualMachineInstanceStatus, VirtualMachineStatus, VmiPhase,
};

/// Namespaces that always exist.
pub const BUILTIN_NAMESPACES: [&str; 2] = ["default", "os-images"];
/// KubeVirt's default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_SECONDS: i64 = 180;
/// The VMI condition saying whether the volumes it needs are ready ([`Runtime::ready`]).
pub const DATA_VOLUMES_READY: &str = "DataVolumesReady";
/// Events kept per node (the oldest are dropped).
const MAX_EVENTS: usize = 2000;

/// A namespaced name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds a lifecycle stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A `Namespace`.
    Namespace,
    /// A `VirtualMachine`.
    VirtualMachine,
    /// A `VirtualMachineInstance`.
    VirtualMachineInstance,
    /// An instancetype or preference (namespaced or cluster-wide); its key's name is
    /// `<Kind>/<name>` and its namespace empty for the cluster-wide kinds.
    Instancetype,
}

/// The instancetype and preference kinds (`instancetype.kubevirt.io/v1beta1`): (kind, plural,
/// namespaced).
pub const CATALOG_KINDS: [(&str, &str, bool); 4] = [
    ("VirtualMachineInstancetype", "virtualmachineinstancetypes", true),
    ("VirtualMachineClusterInstancetype", "virtualmachineclusterinstancetypes", false),
    ("VirtualMachinePreference", "virtualmachinepreferences", true),
    ("VirtualMachineClusterPreference", "virtualmachineclusterpreferences", false),
];

impl Kind {
    /// The resource name as Kubernetes writes it in messages (`virtualmachines.kubevirt.io`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::VirtualMachine => "virtualmachines.kubevirt.io",
            Self::VirtualMachineInstance => "virtualmachineinstances.kubevirt.io",
            Self::Instancetype => "instancetypes.instancetype.kubevirt.io",
        }
    }
}

/// One stored object: its kind, key and JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    /// Kind.
    pub kind: Kind,
    /// Namespace (empty for namespaces) and name.
    pub key: Key,
    /// The object as JSON.
    pub value: serde_json::Value,
}

/// Errors of a [`Store`].
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// Where a lifecycle keeps its objects so that they survive a restart: an embedded database on the
/// local node, nothing at all for a throw-away embedding ([`MemStore`]). Every call is durable when
/// it returns.
pub trait Store: Send + Sync {
    /// Every stored object.
    fn load(&self) -> Result<Vec<StoredObject>, StoreError>;
    /// Writes (creates or replaces) one object.
    fn put(&self, object: &StoredObject) -> Result<(), StoreError>;
    /// Removes one object (absent is fine).
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError>;
    /// One stored object, if it is stored. The lifecycle reads an object back after a failed write
    /// so that what readers see is what the store holds. The default scans [`Store::load`].
    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        Ok(self.load()?.into_iter().find(|o| o.kind == kind && o.key == *key))
    }
}

/// A store in memory: objects survive a new [`Lifecycle`] on the same store, not the process.
#[derive(Debug, Default)]
pub struct MemStore {
    objects: Mutex<BTreeMap<(u8, Key), StoredObject>>,
}

fn kind_tag(k: Kind) -> u8 {
    match k {
        Kind::Namespace => 0,
        Kind::VirtualMachine => 1,
        Kind::VirtualMachineInstance => 2,
        Kind::Instancetype => 3,
    }
}

impl Store for MemStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        Ok(lock(&self.objects).values().cloned().collect())
    }
    fn put(&self, object: &StoredObject) -> Result<(), StoreError> {
        lock(&self.objects).insert((kind_tag(object.kind), object.key.clone()), object.clone());
        Ok(())
    }
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        lock(&self.objects).remove(&(kind_tag(kind), key.clone()));
        Ok(())
    }
    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        Ok(lock(&self.objects).get(&(kind_tag(kind), key.clone())).cloned())
    }
}

/// How VMIs run: prepares what a VMI needs (volumes, seed disks, a launcher) and starts its machine.
pub trait Runtime: Send + Sync {
    /// Starts the machine of `vmi` (its spec has instancetypes and preferences applied).
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, String>;
    /// The machine already running `vmi`, found again after the lifecycle restarted.
    fn reattach(&self, vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>>;
    /// How `vmi`'s machine ended while nobody watched, if that is known.
    fn last_exit(&self, vmi: &VirtualMachineInstance) -> Option<MachineExit>;
    /// Frees what `launch` prepared, once the VMI is deleted.
    fn cleanup(&self, vmi: &VirtualMachineInstance);
    /// Whether `vmi` can be launched now. `Err(why)` keeps it `Pending`, with condition
    /// `DataVolumesReady`=False (reason `NotAllDVsReady`, the message `why`) and one event, until a
    /// later pass finds it ready: e.g. while the DataVolumes its volumes name are still importing.
    /// Called without the lifecycle's lock held. The default: always ready.
    fn ready(&self, _vmi: &VirtualMachineInstance) -> Result<(), String> {
        Ok(())
    }
}

/// Errors of lifecycle requests; the variants map onto Kubernetes status reasons.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No such object.
    #[error("{resource} \"{name}\" not found")]
    NotFound {
        /// e.g. `virtualmachines.kubevirt.io`.
        resource: &'static str,
        /// The name.
        name: String,
    },
    /// The object exists already.
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists {
        /// e.g. `virtualmachines.kubevirt.io`.
        resource: &'static str,
        /// The name.
        name: String,
    },
    /// The object is invalid or asks for what this node cannot do; names the fields.
    #[error("{0}")]
    Invalid(String),
    /// The request does not fit the object's state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A core/v1 `Event`, as `kubectl get events` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `v1`.
    pub api_version: String,
    /// `Event`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: ObjectMeta,
    /// What it is about.
    pub involved_object: ObjectReference,
    /// Machine-readable reason (`Started`, `ShuttingDown`, `SoftwareEmulation`, ...).
    pub reason: String,
    /// What happened.
    pub message: String,
    /// `Normal` or `Warning`.
    #[serde(rename = "type")]
    pub type_: String,
    /// How often it happened.
    pub count: u32,
    /// First time.
    pub first_timestamp: Timestamp,
    /// Last time.
    pub last_timestamp: Timestamp,
    /// Who reported it.
    pub source: EventSource,
}

/// `involvedObject` of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `kubevirt.io/v1`.
    pub api_version: String,
}

/// `source` of an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    /// `virt-controller` or `virt-handler`.
    pub component: String,
    /// The node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a lifecycle behaves.
#[derive(Clone)]
pub struct LifecycleOptions {
    /// The node's name (VMI `status.nodeName`).
    pub node_name: String,
    /// What the node can do; VMs asking for more are refused at create time.
    pub support: NodeSupport,
    /// Instancetypes and preferences VMs may refer to.
    pub catalog: Catalog,
    /// First delay before restarting a VMI that failed (doubles per failure in a row).
    pub backoff_base: Duration,
    /// Longest delay between restarts of a failing VMI (KubeVirt: 5 minutes).
    pub backoff_max: Duration,
    /// How often [`Lifecycle::run`] reconciles without being woken.
    pub tick: Duration,
    /// First delay before reconciling again an object whose reconcile failed (doubles per failure
    /// in a row); the other objects are not delayed.
    pub requeue_base: Duration,
    /// Longest such delay.
    pub requeue_max: Duration,
}

impl Default for LifecycleOptions {
    fn default() -> Self {
        Self {
            node_name: "localhost".into(),
            support: NodeSupport::default(),
            catalog: Catalog::new(),
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            tick: Duration::from_millis(200),
            requeue_base: Duration::from_millis(500),
            requeue_max: Duration::from_secs(60),
        }
    }
}

/// A running machine and what the lifecycle asked of it.
struct Live {
    machine: Arc<dyn Machine>,
    /// Force-stop after this instant (a graceful stop is under way).
    stop_deadline: Option<Instant>,
    /// The guest was asked to power off for a soft reboot: start it again when it does.
    soft_reboot: bool,
    /// The last status seen.
    last: MachineStatus,
}

/// A back-off: of a VM whose instances keep failing, or of an object whose reconcile failed.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

#[derive(Default)]
struct State {
    namespaces: BTreeMap<String, serde_json::Value>,
    vms: BTreeMap<Key, VirtualMachine>,
    vmis: BTreeMap<Key, VirtualMachineInstance>,
    /// VMIs whose deletion was asked for, with the grace period to give them.
    deleting_vmis: HashMap<Key, i64>,
    /// VMs whose deletion was asked for.
    deleting_vms: BTreeSet<Key>,
    live: HashMap<Key, Live>,
    /// VMIs being launched right now (outside the lock).
    launching: BTreeSet<Key>,
    /// Running VMIs whose guest rebooted: their machine starts again on the next pass.
    relaunch: BTreeSet<Key>,
    backoff: HashMap<Key, Backoff>,
    /// Objects whose last reconcile failed, waiting for their requeue back-off.
    requeue: HashMap<Key, Backoff>,
    events: VecDeque<Event>,
    resource_version: u64,
    /// Instancetypes and preferences created through the lifecycle, by store key.
    catalog_objects: BTreeMap<Key, serde_json::Value>,
    /// `LifecycleOptions::catalog` plus `catalog_objects`.
    catalog: Catalog,
}

/// Wakes the controller: set by requests and by machine watchers, consumed by [`Lifecycle::run`].
#[derive(Default)]
struct Signal {
    dirty: Mutex<bool>,
    cv: Condvar,
}

impl Signal {
    fn raise(&self) {
        *lock(&self.dirty) = true;
        self.cv.notify_all();
    }
}

/// Watches one machine's events and wakes the controller on each (pause, resume, its end), so that
/// a VMI's phase follows its machine at once without polling every machine on every tick.
fn watch(key: Key, machine: Arc<dyn Machine>, signal: Arc<Signal>) {
    let spawned = std::thread::Builder::new().name(format!("watch-{}", key.name)).spawn(move || loop {
        match machine.next_event(Duration::from_secs(3600)) {
            Some(crate::machine::MachineEvent::Ended(_)) => {
                signal.raise();
                return;
            }
            Some(_) => signal.raise(),
            None => {
                if matches!(machine.status(), MachineStatus::Stopped(_)) {
                    signal.raise();
                    return;
                }
                // A machine without an event stream: the controller's tick observes it.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    });
    if let Err(e) = spawned {
        log::warn!("cannot watch a machine ({e}); its changes are seen on the controller's next tick");
    }
}

/// The lifecycle of every VM and VMI of one node.
pub struct Lifecycle {
    state: Mutex<State>,
    signal: Arc<Signal>,
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    opts: LifecycleOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn new_uid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    if b == [0; 16] {
        let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = t.to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn condition(type_: &str, status: bool, reason: Option<&str>, message: Option<String>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if status { ConditionStatus::True } else { ConditionStatus::False },
        last_probe_time: None,
        last_transition_time: Some(now()),
        reason: reason.map(str::to_string),
        message,
    }
}

/// Sets condition `c` (by type), keeping the transition time when its status did not change.
fn set_condition(conds: &mut Vec<Condition>, c: Condition) {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status && x.reason == c.reason && x.message == c.message => {}
        Some(x) => {
            let keep_time = x.status == c.status;
            let t = x.last_transition_time.clone();
            *x = c;
            if keep_time {
                x.last_transition_time = t;
            }
        }
        None => conds.push(c),
    }
}

fn remove_condition(conds: &mut Vec<Condition>, type_: &str) {
    conds.retain(|c| c.type_ != type_);
}

fn has_condition(conds: &[Condition], type_: &str) -> bool {
    conds.iter().any(|c| c.type_ == type_ && c.status == ConditionStatus::True)
}

fn phase_of(vmi: &VirtualMachineInstance) -> VmiPhase {
    vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending)
}

fn set_phase(vmi: &mut VirtualMachineInstance, phase: VmiPhase) -> bool {
    let st = vmi.status.get_or_insert_with(Default::default);
    if st.phase == Some(phase) {
        return false;
    }
    st.phase = Some(phase);
    st.phase_transition_timestamps
        .push(PhaseTransition { phase: Some(phase), phase_transition_timestamp: Some(now()) });
    true
}

fn to_value<T: Serialize>(o: &T) -> serde_json::Value {
    serde_json::to_value(o).unwrap_or(serde_json::Value::Null)
}

fn state_change_requests(vm: &VirtualMachine) -> Vec<StateChange> {
    vm.status
        .as_ref()
        .map(|s| {
            s.state_change_requests
                .iter()
                .filter_map(|r| r.get("action").and_then(|a| a.as_str()).and_then(StateChange::parse))
                .collect()
        })
        .unwrap_or_default()
}

fn grace_of(vmi: &VirtualMachineInstance) -> i64 {
    vmi.spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS).max(0)
}

impl Lifecycle {
    /// A lifecycle over `store` (loading what it holds) that runs VMIs on `runtime`. VMIs that were
    /// running when the previous lifecycle on this store ended are found again through
    /// [`Runtime::reattach`]; none is started twice.
    pub fn new(
        store: Arc<dyn Store>,
        runtime: Arc<dyn Runtime>,
        opts: LifecycleOptions,
    ) -> Result<Self, LifecycleError> {
        let mut st = State::default();
        for ns in BUILTIN_NAMESPACES {
            st.namespaces.insert(ns.to_string(), namespace_object(ns));
        }
        let mut max_rv = 0u64;
        for o in store.load()? {
            let rv = o
                .value
                .pointer("/metadata/resourceVersion")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            max_rv = max_rv.max(rv);
            match o.kind {
                Kind::Namespace => {
                    st.namespaces.insert(o.key.name.clone(), o.value);
                }
                Kind::Instancetype => {
                    st.catalog_objects.insert(o.key, o.value);
                }
                Kind::VirtualMachine => match serde_json::from_value::<VirtualMachine>(o.value) {
                    Ok(vm) => {
                        if vm.metadata.deletion_timestamp.is_some() {
                            st.deleting_vms.insert(o.key.clone());
                        }
                        st.vms.insert(o.key, vm);
                    }
                    Err(e) => log::error!("state store: VirtualMachine {} unreadable, skipped: {e}", o.key),
                },
                Kind::VirtualMachineInstance => {
                    match serde_json::from_value::<VirtualMachineInstance>(o.value) {
                        Ok(vmi) => {
                            if vmi.metadata.deletion_timestamp.is_some() {
                                st.deleting_vmis.insert(
                                    o.key.clone(),
                                    vmi.metadata.deletion_grace_period_seconds.unwrap_or(0),
                                );
                            }
                            st.vmis.insert(o.key, vmi);
                        }
                        Err(e) => {
                            log::error!(
                                "state store: VirtualMachineInstance {} unreadable, skipped: {e}",
                                o.key
                            )
                        }
                    }
                }
            }
        }
        st.resource_version = max_rv;
        st.catalog = build_catalog(&opts.catalog, &st.catalog_objects);
        let lc = Self { state: Mutex::new(st), signal: Arc::new(Signal::default()), store, runtime, opts };
        lc.reattach_all()?;
        Ok(lc)
    }

    /// Finds the machines of VMIs that were running before a restart.
    fn reattach_all(&self) -> Result<(), LifecycleError> {
        let candidates: Vec<(Key, VirtualMachineInstance)> = {
            let st = lock(&self.state);
            st.vmis
                .iter()
                .filter(|(_, v)| {
                    matches!(phase_of(v), VmiPhase::Scheduling | VmiPhase::Scheduled | VmiPhase::Running)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (key, vmi) in candidates {
            match self.runtime.reattach(&vmi) {
                Some(machine) => {
                    watch(key.clone(), machine.clone(), self.signal.clone());
                    let last = machine.status();
                    log::info!("VMI {key}: found its running machine again ({last:?})");
                    let mut st = lock(&self.state);
                    st.live
                        .insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                    self.event_locked(
                        &mut st,
                        Kind::VirtualMachineInstance,
                        &key,
                        "Normal",
                        "Reattached",
                        "the node restarted and found the VMI's machine running".into(),
                    );
                }
                None => {
                    let mut st = lock(&self.state);
                    let exit = self.runtime.last_exit(&vmi);
                    match (phase_of(&vmi), exit) {
                        (_, Some(exit)) => self.machine_ended_locked(&mut st, &key, exit)?,
                        (VmiPhase::Scheduling, None) => {
                            // Its launch was cut short: launch it again.
                            if let Some(v) = st.vmis.get_mut(&key) {
                                set_phase(v, VmiPhase::Pending);
                            }
                            self.persist_vmi(&mut st, &key)?;
                        }
                        (_, None) => self.machine_ended_locked(
                            &mut st,
                            &key,
                            MachineExit::Failed(
                                "its machine is gone (the launcher ended while the node was down)".into(),
                            ),
                        )?,
                    }
                }
            }
        }
        Ok(())
    }

    /// The options in force.
    pub fn options(&self) -> &LifecycleOptions {
        &self.opts
    }

    fn next_rv(st: &mut State) -> String {
        st.resource_version += 1;
        st.resource_version.to_string()
    }

    /// Writes the VM at `key` as it is in memory, with a new resourceVersion. The lock is held, so
    /// nobody sees the change before it is stored; if the write fails, the VM is read back from the
    /// store ([`Lifecycle::rollback`]) and the change is gone.
    fn persist_vm(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let rv = Self::next_rv(st);
        let Some(vm) = st.vms.get_mut(key) else { return Ok(()) };
        vm.metadata.resource_version = Some(rv);
        let object = StoredObject { kind: Kind::VirtualMachine, key: key.clone(), value: to_value(vm) };
        self.put_or_rollback(st, object)
    }

    /// [`Lifecycle::persist_vm`] for a VMI.
    fn persist_vmi(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let rv = Self::next_rv(st);
        let Some(vmi) = st.vmis.get_mut(key) else { return Ok(()) };
        vmi.metadata.resource_version = Some(rv);
        let object =
            StoredObject { kind: Kind::VirtualMachineInstance, key: key.clone(), value: to_value(vmi) };
        self.put_or_rollback(st, object)
    }

    fn put_or_rollback(&self, st: &mut State, object: StoredObject) -> Result<(), LifecycleError> {
        if let Err(e) = self.store.put(&object) {
            self.rollback(st, object.kind, &object.key);
            return Err(e.into());
        }
        Ok(())
    }

    /// After a failed write: makes the in-memory VM or VMI at `key` what the store holds again
    /// (absent if it holds none), with the deletion bookkeeping that follows from it.
    fn rollback(&self, st: &mut State, kind: Kind, key: &Key) {
        let stored = match self.store.get(kind, key) {
            Ok(s) => s.map(|o| o.value),
            Err(e) => {
                log::error!("{} {key}: cannot read it back after a failed write: {e}", kind.resource());
                return;
            }
        };
        match kind {
            Kind::VirtualMachine => {
                match stored.and_then(|v| serde_json::from_value::<VirtualMachine>(v).ok()) {
                    Some(vm) => {
                        if vm.metadata.deletion_timestamp.is_some() {
                            st.deleting_vms.insert(key.clone());
                        } else {
                            st.deleting_vms.remove(key);
                        }
                        st.vms.insert(key.clone(), vm);
                    }
                    None => {
                        st.vms.remove(key);
                        st.deleting_vms.remove(key);
                    }
                }
            }
            Kind::VirtualMachineInstance => {
                match stored.and_then(|v| serde_json::from_value::<VirtualMachineInstance>(v).ok()) {
                    Some(vmi) => {
                        if vmi.metadata.deletion_timestamp.is_some() {
                            let g = vmi.metadata.deletion_grace_period_seconds.unwrap_or(0);
                            st.deleting_vmis.insert(key.clone(), g);
                        } else {
                            st.deleting_vmis.remove(key);
                        }
                        st.vmis.insert(key.clone(), vmi);
                    }
                    None => {
                        st.vmis.remove(key);
                        st.deleting_vmis.remove(key);
                    }
                }
            }
            Kind::Namespace | Kind::Instancetype => {}
        }
    }

    fn event_locked(
        &self,
        st: &mut State,
        kind: Kind,
        key: &Key,
        type_: &str,
        reason: &str,
        message: String,
    ) {
        let kind_name = match kind {
            Kind::Namespace => "Namespace",
            Kind::VirtualMachine => "VirtualMachine",
            Kind::VirtualMachineInstance => "VirtualMachineInstance",
            Kind::Instancetype => "Instancetype",
        };
        let uid = match kind {
            Kind::VirtualMachine => st.vms.get(key).and_then(|v| v.metadata.uid.clone()),
            Kind::VirtualMachineInstance => st.vmis.get(key).and_then(|v| v.metadata.uid.clone()),
            Kind::Namespace | Kind::Instancetype => None,
        };
        if type_ == "Warning" {
            log::warn!("{kind_name} {key}: {reason}: {message}");
        } else {
            log::info!("{kind_name} {key}: {reason}: {message}");
        }
        let t = now();
        if let Some(last) = st.events.back_mut() {
            if last.involved_object.name == key.name
                && last.involved_object.namespace == key.namespace
                && last.involved_object.kind == kind_name
                && last.reason == reason
                && last.message == message
            {
                last.count += 1;
                last.last_timestamp = t;
                return;
            }
        }
        let seq = Self::next_rv(st);
        let mut meta = ObjectMeta::named(format!("{}.{seq}", key.name));
        meta.namespace = Some(key.namespace.clone());
        st.events.push_back(Event {
            api_version: "v1".into(),
            kind: "Event".into(),
            metadata: meta,
            involved_object: ObjectReference {
                kind: kind_name.into(),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                uid,
                api_version: model::API_VERSION.into(),
            },
            reason: reason.into(),
            message,
            type_: type_.into(),
            count: 1,
            first_timestamp: t.clone(),
            last_timestamp: t,
            source: EventSource {
                component: if kind == Kind::VirtualMachine { "virt-controller" } else { "virt-handler" }
                    .into(),
                host: Some(self.opts.node_name.clone()),
            },
        });
        while st.events.len() > MAX_EVENTS {
            st.events.pop_front();
        }
    }

    /// Wakes [`Lifecycle::run`] (an embedder driving [`Lifecycle::reconcile`] itself calls that
    /// instead).
    pub fn wake(&self) {
        self.signal.raise();
    }

    // ---- namespaces ----

    /// Every namespace, as `Namespace` objects.
    pub fn namespaces(&self) -> Vec<serde_json::Value> {
        lock(&self.state).namespaces.values().cloned().collect()
    }

    /// Whether namespace `ns` exists.
    pub fn namespace_exists(&self, ns: &str) -> bool {
        lock(&self.state).namespaces.contains_key(ns)
    }

    /// Creates namespace `name`.
    pub fn create_namespace(&self, name: &str) -> Result<serde_json::Value, LifecycleError> {
        check_name(name, "metadata.name")?;
        let mut st = lock(&self.state);
        if st.namespaces.contains_key(name) {
            return Err(LifecycleError::AlreadyExists {
                resource: Kind::Namespace.resource(),
                name: name.into(),
            });
        }
        let mut obj = namespace_object(name);
        let rv = Self::next_rv(&mut st);
        obj["metadata"]["resourceVersion"] = rv.into();
        obj["metadata"]["uid"] = new_uid().into();
        obj["metadata"]["creationTimestamp"] = now().as_str().into();
        self.store.put(&StoredObject {
            kind: Kind::Namespace,
            key: Key::new("", name),
            value: obj.clone(),
        })?;
        st.namespaces.insert(name.into(), obj.clone());
        Ok(obj)
    }

    /// Deletes an empty namespace (the built-in ones stay).
    pub fn delete_namespace(&self, name: &str) -> Result<(), LifecycleError> {
        let mut st = lock(&self.state);
        if !st.namespaces.contains_key(name) {
            return Err(LifecycleError::NotFound { resource: Kind::Namespace.resource(), name: name.into() });
        }
        if BUILTIN_NAMESPACES.contains(&name) {
            return Err(LifecycleError::Conflict(format!(
                "namespace \"{name}\" is built in and cannot be deleted"
            )));
        }
        if st.vms.keys().chain(st.vmis.keys()).any(|k| k.namespace == name) {
            return Err(LifecycleError::Conflict(format!(
                "namespace \"{name}\" still holds VirtualMachines or VirtualMachineInstances; delete them first"
            )));
        }
        self.store.delete(Kind::Namespace, &Key::new("", name))?;
        st.namespaces.remove(name);
        Ok(())
    }

    fn require_namespace(st: &State, ns: &str) -> Result<(), LifecycleError> {
        if st.namespaces.contains_key(ns) {
            Ok(())
        } else {
            Err(LifecycleError::NotFound { resource: Kind::Namespace.resource(), name: ns.into() })
        }
    }

    // ---- instancetypes and preferences ----

    /// Creates (or, with `replace`, replaces) an instancetype or preference; `namespace` is the
    /// request's namespace for the namespaced kinds, `None` for the cluster-wide ones. VMs started
    /// afterwards resolve against it.
    pub fn put_catalog_object(
        &self,
        namespace: Option<&str>,
        object: model::KubeVirtObject,
        replace: bool,
    ) -> Result<serde_json::Value, LifecycleError> {
        let kind = object.kind().to_string();
        let Some(&(_, _, namespaced)) = CATALOG_KINDS.iter().find(|(k, _, _)| *k == kind) else {
            return Err(LifecycleError::Invalid(format!("{kind} is not an instancetype or a preference")));
        };
        object.admit(&self.opts.support).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let mut value = object.to_json_value().map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let ns = match (namespaced, namespace) {
            (true, Some(ns)) => ns.to_string(),
            (true, None) => {
                return Err(LifecycleError::Invalid(format!("{kind} is namespaced: name a namespace")))
            }
            (false, _) => String::new(),
        };
        let mut meta: ObjectMeta = serde_json::from_value(value["metadata"].take()).unwrap_or_default();
        let expected_rv = meta.resource_version.take();
        let name = if namespaced {
            prepare_meta(&mut meta, &ns)?
        } else {
            if meta.namespace.is_some() {
                return Err(LifecycleError::Invalid(format!("metadata.namespace: {kind} is cluster-scoped")));
            }
            let name = prepare_meta(&mut meta, "")?;
            meta.namespace = None;
            name
        };
        let key = Key::new(&ns, format!("{kind}/{name}"));
        let mut st = lock(&self.state);
        if namespaced {
            Self::require_namespace(&st, &ns)?;
        }
        let existing = st.catalog_objects.get(&key).cloned();
        match (&existing, replace) {
            (Some(_), false) => {
                return Err(LifecycleError::AlreadyExists { resource: Kind::Instancetype.resource(), name })
            }
            (None, true) => {
                return Err(LifecycleError::NotFound { resource: Kind::Instancetype.resource(), name })
            }
            (Some(old), true) => {
                let cur = old.pointer("/metadata/resourceVersion").and_then(|v| v.as_str());
                if expected_rv.as_deref().is_some_and(|rv| Some(rv) != cur) {
                    return Err(LifecycleError::Conflict(format!(
                        "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified"
                    )));
                }
                // Keep identity across a replace.
                meta.uid = old.pointer("/metadata/uid").and_then(|v| v.as_str()).map(str::to_string);
                meta.creation_timestamp = old
                    .pointer("/metadata/creationTimestamp")
                    .and_then(|v| v.as_str())
                    .and_then(|t| Timestamp::parse(t).ok());
            }
            (None, false) => {}
        }
        meta.resource_version = Some(Self::next_rv(&mut st));
        value["metadata"] = to_value(&meta);
        self.store.put(&StoredObject { kind: Kind::Instancetype, key: key.clone(), value: value.clone() })?;
        st.catalog_objects.insert(key, value.clone());
        st.catalog = build_catalog(&self.opts.catalog, &st.catalog_objects);
        Ok(value)
    }

    /// The instancetypes or preferences of `kind` in `namespace` (`None`: all, or the cluster-wide
    /// ones).
    pub fn list_catalog_objects(&self, kind: &str, namespace: Option<&str>) -> Vec<serde_json::Value> {
        let prefix = format!("{kind}/");
        lock(&self.state)
            .catalog_objects
            .iter()
            .filter(|(k, _)| k.name.starts_with(&prefix) && namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// One instancetype or preference.
    pub fn get_catalog_object(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, LifecycleError> {
        let key = Key::new(namespace.unwrap_or(""), format!("{kind}/{name}"));
        lock(&self.state).catalog_objects.get(&key).cloned().ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::Instancetype.resource(),
            name: name.into(),
        })
    }

    /// Deletes an instancetype or preference (VMs already running keep what they resolved).
    pub fn delete_catalog_object(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(), LifecycleError> {
        let key = Key::new(namespace.unwrap_or(""), format!("{kind}/{name}"));
        let mut st = lock(&self.state);
        if !st.catalog_objects.contains_key(&key) {
            return Err(LifecycleError::NotFound {
                resource: Kind::Instancetype.resource(),
                name: name.into(),
            });
        }
        self.store.delete(Kind::Instancetype, &key)?;
        st.catalog_objects.remove(&key);
        st.catalog = build_catalog(&self.opts.catalog, &st.catalog_objects);
        Ok(())
    }

    // ---- VirtualMachines ----

    /// Creates a VM in `namespace` (`metadata.namespace`, if set, must agree). Validation and the
    /// node's limits are checked first; every problem names its field.
    pub fn create_vm(
        &self,
        namespace: &str,
        mut vm: VirtualMachine,
    ) -> Result<VirtualMachine, LifecycleError> {
        let name = prepare_meta(&mut vm.metadata, namespace)?;
        vm.admit(&self.opts.support).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        Self::require_namespace(&st, namespace)?;
        if st.vms.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists { resource: Kind::VirtualMachine.resource(), name });
        }
        vm.metadata.generation = Some(1);
        vm.status =
            Some(VirtualMachineStatus { printable_status: Some("Stopped".into()), ..Default::default() });
        vm.metadata.resource_version = Some(Self::next_rv(&mut st));
        // Stored first: a VM nobody could find after a crash is never shown.
        self.store.put(&StoredObject {
            kind: Kind::VirtualMachine,
            key: key.clone(),
            value: to_value(&vm),
        })?;
        st.vms.insert(key, vm.clone());
        drop(st);
        self.wake();
        Ok(vm)
    }

    /// Replaces a VM's labels, annotations and spec, keeping its status (`kubectl replace`/`apply`).
    /// A `metadata.resourceVersion` in `vm` must match the stored one.
    pub fn replace_vm(
        &self,
        namespace: &str,
        mut vm: VirtualMachine,
    ) -> Result<VirtualMachine, LifecycleError> {
        let expected_rv = vm.metadata.resource_version.take();
        let name = prepare_meta(&mut vm.metadata, namespace)?;
        vm.admit(&self.opts.support).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        let cur = st.vms.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachine.resource(),
            name: name.clone(),
        })?;
        if let Some(rv) = &expected_rv {
            if cur.metadata.resource_version.as_ref() != Some(rv) {
                return Err(LifecycleError::Conflict(format!(
                    "Operation cannot be fulfilled on virtualmachines.kubevirt.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                )));
            }
        }
        let changed = cur.spec != vm.spec
            || cur.metadata.labels != vm.metadata.labels
            || cur.metadata.annotations != vm.metadata.annotations;
        if changed {
            if cur.spec != vm.spec {
                cur.metadata.generation = Some(cur.metadata.generation.unwrap_or(1) + 1);
            }
            cur.spec = vm.spec;
            cur.metadata.labels = vm.metadata.labels;
            cur.metadata.annotations = vm.metadata.annotations;
            self.persist_vm(&mut st, &key)?;
        }
        let out = st.vms.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name })
    }

    /// One VM.
    pub fn get_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, LifecycleError> {
        lock(&self.state).vms.get(&Key::new(namespace, name)).cloned().ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() }
        })
    }

    /// The VMs of `namespace`, or of all namespaces.
    pub fn list_vms(&self, namespace: Option<&str>) -> Vec<VirtualMachine> {
        lock(&self.state)
            .vms
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// How many VMs are defined.
    pub fn vm_count(&self) -> usize {
        lock(&self.state).vms.len()
    }

    /// Deletes a VM: its instance is stopped (gracefully) and deleted first.
    pub fn delete_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.state);
        let vm = st.vms.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachine.resource(),
            name: name.into(),
        })?;
        if vm.metadata.deletion_timestamp.is_none() {
            vm.metadata.deletion_timestamp = Some(now());
            st.deleting_vms.insert(key.clone());
            self.persist_vm(&mut st, &key)?;
            self.event_locked(
                &mut st,
                Kind::VirtualMachine,
                &key,
                "Normal",
                "Deleting",
                "VirtualMachine deletion requested".into(),
            );
        }
        let out = st.vms.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() })
    }

    fn vm_request(
        &self,
        namespace: &str,
        name: &str,
        req: Request,
        grace: Option<i64>,
    ) -> Result<(), LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.state);
        let vm = st.vms.get(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachine.resource(),
            name: name.into(),
        })?;
        if vm.metadata.deletion_timestamp.is_some() {
            return Err(LifecycleError::Conflict(format!("VirtualMachine {key} is being deleted")));
        }
        let strategy = vm.spec.effective_run_strategy();
        let vmi = st
            .vmis
            .get(&key)
            .map(|v| InstanceView { phase: phase_of(v), deleting: st.deleting_vmis.contains_key(&key) });
        let out =
            strategy::request(strategy, vmi, req).map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        let vm = st.vms.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachine.resource(),
            name: name.into(),
        })?;
        if let Some(s) = out.new_strategy {
            vm.spec.running = None;
            vm.spec.run_strategy = Some(s);
            vm.metadata.generation = Some(vm.metadata.generation.unwrap_or(1) + 1);
        }
        let status = vm.status.get_or_insert_with(Default::default);
        for q in out.queue {
            status.state_change_requests.push(serde_json::json!({ "action": q.as_str() }));
        }
        if let Some(g) = grace.map(|g| g.max(0)) {
            // The grace period of this stop, used when the instance is stopped; a stop under way
            // is hurried up (`virtctl stop --force` during a graceful stop).
            if let Some(v) = st.vmis.get_mut(&key) {
                v.metadata.deletion_grace_period_seconds = Some(g);
            }
            if st.deleting_vmis.contains_key(&key) {
                st.deleting_vmis.insert(key.clone(), g);
                self.begin_stop_locked(&mut st, &key, g);
            }
        }
        self.persist_vm(&mut st, &key)?;
        let what = match req {
            Request::Start => "start",
            Request::Stop => "stop",
            Request::Restart => "restart",
        };
        self.event_locked(
            &mut st,
            Kind::VirtualMachine,
            &key,
            "Normal",
            "StateChangeRequested",
            format!("{what} requested"),
        );
        drop(st);
        self.wake();
        Ok(())
    }

    /// `virtctl start`.
    pub fn start(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        self.vm_request(namespace, name, Request::Start, None)
    }

    /// `virtctl stop`; `grace` overrides the VMI's `terminationGracePeriodSeconds` (0 forces).
    pub fn stop(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        self.vm_request(namespace, name, Request::Stop, grace)
    }

    /// `virtctl restart`.
    pub fn restart(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        self.vm_request(namespace, name, Request::Restart, grace)
    }

    // ---- VirtualMachineInstances ----

    /// Creates a standalone VMI (it starts at once).
    pub fn create_vmi(
        &self,
        namespace: &str,
        mut vmi: VirtualMachineInstance,
    ) -> Result<VirtualMachineInstance, LifecycleError> {
        let name = prepare_meta(&mut vmi.metadata, namespace)?;
        vmi.admit(&self.opts.support).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        Self::require_namespace(&st, namespace)?;
        if st.vmis.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists {
                resource: Kind::VirtualMachineInstance.resource(),
                name,
            });
        }
        vmi.status = None;
        set_phase(&mut vmi, VmiPhase::Pending);
        vmi.metadata.resource_version = Some(Self::next_rv(&mut st));
        self.store.put(&StoredObject {
            kind: Kind::VirtualMachineInstance,
            key: key.clone(),
            value: to_value(&vmi),
        })?;
        st.vmis.insert(key, vmi.clone());
        drop(st);
        self.wake();
        Ok(vmi)
    }

    /// One VMI.
    pub fn get_vmi(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, LifecycleError> {
        lock(&self.state).vmis.get(&Key::new(namespace, name)).cloned().ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachineInstance.resource(), name: name.into() }
        })
    }

    /// The VMIs of `namespace`, or of all namespaces.
    pub fn list_vmis(&self, namespace: Option<&str>) -> Vec<VirtualMachineInstance> {
        lock(&self.state)
            .vmis
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Deletes a VMI: its guest is asked to power off, and forced off after `grace` seconds (the
    /// VMI's `terminationGracePeriodSeconds` when `None`). A VM whose strategy wants an instance
    /// gets a new one, as in KubeVirt.
    pub fn delete_vmi(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.state);
        let vmi = st.vmis.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachineInstance.resource(),
            name: name.into(),
        })?;
        let g = grace.unwrap_or_else(|| grace_of(vmi)).max(0);
        self.delete_vmi_locked(&mut st, &key, g)?;
        drop(st);
        self.wake();
        Ok(())
    }

    /// Asks the guest to power off, forced after `grace` seconds.
    fn begin_stop_locked(&self, st: &mut State, key: &Key, grace: i64) {
        let Some(live) = st.live.get_mut(key) else { return };
        let forced = grace == 0;
        let deadline = Instant::now() + Duration::from_secs(grace.unsigned_abs());
        let earlier = live.stop_deadline.is_none_or(|d| deadline < d);
        if !earlier {
            return;
        }
        live.stop_deadline = Some(deadline);
        live.soft_reboot = false;
        let machine = live.machine.clone();
        let (reason, msg) = if forced {
            if let Err(e) = machine.stop() {
                log::warn!("VMI {key}: forced stop: {e}");
            }
            ("Killing", "stopping the VMI now (grace period 0)".to_string())
        } else {
            if let Err(e) = machine.power_down() {
                log::info!("VMI {key}: the guest cannot be asked to power off ({e}); stopping it now");
                if let Err(e) = machine.stop() {
                    log::warn!("VMI {key}: stop: {e}");
                }
            }
            ("ShuttingDown", format!("asked the guest to power off; forced off after {grace} s"))
        };
        self.event_locked(st, Kind::VirtualMachineInstance, key, "Normal", reason, msg);
    }

    fn live_machine(
        &self,
        namespace: &str,
        name: &str,
        op: &str,
    ) -> Result<(Key, Arc<dyn Machine>), LifecycleError> {
        let key = Key::new(namespace, name);
        let st = lock(&self.state);
        if !st.vmis.contains_key(&key) {
            return Err(LifecycleError::NotFound {
                resource: Kind::VirtualMachineInstance.resource(),
                name: name.into(),
            });
        }
        match st.live.get(&key) {
            Some(l) if phase_of(&st.vmis[&key]) == VmiPhase::Running || l.last == MachineStatus::Paused => {
                Ok((key, l.machine.clone()))
            }
            _ => Err(LifecycleError::Conflict(format!("cannot {op} VMI {key}: it is not running"))),
        }
    }

    /// The machine of a running VMI (for consoles and displays).
    pub fn machine(&self, namespace: &str, name: &str) -> Result<Arc<dyn Machine>, LifecycleError> {
        self.live_machine(namespace, name, "reach").map(|(_, m)| m)
    }

    /// `virtctl pause vmi`.
    pub fn pause(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.live_machine(namespace, name, "pause")?;
        if m.status() == MachineStatus::Paused {
            return Err(LifecycleError::Conflict(format!("VMI {key} is already paused")));
        }
        m.pause().map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        self.observe(&key, &m)?;
        let mut st = lock(&self.state);
        self.event_locked(
            &mut st,
            Kind::VirtualMachineInstance,
            &key,
            "Normal",
            "Paused",
            "VMI was paused by user".into(),
        );
        Ok(())
    }

    /// `virtctl unpause vmi`.
    pub fn unpause(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.live_machine(namespace, name, "unpause")?;
        if m.status() != MachineStatus::Paused {
            return Err(LifecycleError::Conflict(format!("VMI {key} is not paused")));
        }
        m.resume().map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        self.observe(&key, &m)?;
        let mut st = lock(&self.state);
        self.event_locked(
            &mut st,
            Kind::VirtualMachineInstance,
            &key,
            "Normal",
            "Unpaused",
            "VMI was unpaused by user".into(),
        );
        Ok(())
    }

    /// `virtctl soft-reboot`: the guest is asked to power off (ACPI power button) and its machine
    /// starts again in place when it does; the VMI stays Running.
    pub fn soft_reboot(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.live_machine(namespace, name, "soft-reboot")?;
        if m.status() == MachineStatus::Paused {
            return Err(LifecycleError::Conflict(format!("VMI {key} is paused; unpause it first")));
        }
        m.power_down().map_err(|e| LifecycleError::Conflict(format!("soft reboot of VMI {key}: {e}")))?;
        let mut st = lock(&self.state);
        if let Some(l) = st.live.get_mut(&key) {
            l.soft_reboot = true;
        }
        self.event_locked(
            &mut st,
            Kind::VirtualMachineInstance,
            &key,
            "Normal",
            "SoftRebootRequested",
            "asked the guest to power off; it starts again when it does".into(),
        );
        Ok(())
    }

    /// The events of `namespace`, oldest first.
    pub fn events(&self, namespace: Option<&str>) -> Vec<Event> {
        lock(&self.state)
            .events
            .iter()
            .filter(|e| namespace.is_none_or(|n| n == e.involved_object.namespace))
            .cloned()
            .collect()
    }

    // ---- the controller ----

    /// Runs [`Lifecycle::reconcile`] until `stop` is set, every `tick` or when woken.
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.reconcile();
            let mut dirty = lock(&self.signal.dirty);
            if !*dirty {
                dirty = self
                    .signal
                    .cv
                    .wait_timeout(dirty, self.opts.tick)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *dirty = false;
        }
    }

    /// One pass of the controller: observes machines, applies run strategies, launches pending
    /// VMIs, forces stops whose grace ran out, finishes deletions. Each object is reconciled on its
    /// own: one whose reconcile fails (its store write failed, ...) is logged and requeued with its
    /// own back-off ([`LifecycleOptions::requeue_base`]), and the pass goes on with the others.
    pub fn reconcile(&self) {
        let started = Instant::now();
        let mut failed = BTreeSet::new();
        // 1. Observe machines.
        let live: Vec<(Key, Arc<dyn Machine>)> = {
            let st = lock(&self.state);
            st.live
                .iter()
                .filter(|(k, _)| !Self::deferred(&st, k, started))
                .map(|(k, l)| (k.clone(), l.machine.clone()))
                .collect()
        };
        for (key, m) in live {
            let r = self.observe(&key, &m);
            self.outcome(&mut failed, &key, r);
        }
        // 2. Grace periods that ran out.
        {
            let st = lock(&self.state);
            let now = Instant::now();
            for (key, l) in st.live.iter() {
                if l.stop_deadline.is_some_and(|d| d <= now) && !matches!(l.last, MachineStatus::Stopped(_)) {
                    log::info!("VMI {key}: grace period over, stopping it");
                    if let Err(e) = l.machine.stop() {
                        log::warn!("VMI {key}: stop: {e}");
                    }
                }
            }
        }
        // 3. Finish deletions of VMIs without a machine.
        {
            let mut st = lock(&self.state);
            let done: Vec<Key> = st
                .deleting_vmis
                .keys()
                .filter(|k| {
                    !st.live.contains_key(*k)
                        && !st.launching.contains(*k)
                        && !Self::deferred(&st, k, started)
                })
                .cloned()
                .collect();
            for key in done {
                let r = self.remove_vmi_locked(&mut st, &key);
                self.outcome_locked(&mut st, &mut failed, &key, r);
            }
        }
        // 4. VMs: run strategies and deletions.
        let keys: Vec<Key> = {
            let st = lock(&self.state);
            st.vms.keys().filter(|k| !Self::deferred(&st, k, started)).cloned().collect()
        };
        for key in keys {
            if failed.contains(&key) {
                continue;
            }
            let r = self.sync_vm(&key);
            self.outcome(&mut failed, &key, r);
        }
        // 5. Launch pending VMIs the runtime finds ready; the others stay Pending, saying why.
        let candidates: Vec<(Key, VirtualMachineInstance)> = {
            let st = lock(&self.state);
            st.vmis
                .iter()
                .filter(|(k, v)| {
                    Self::awaiting_launch(&st, k, v)
                        && !st.launching.contains(*k)
                        && !st.deleting_vmis.contains_key(*k)
                        && !failed.contains(*k)
                        && !Self::deferred(&st, k, started)
                })
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let verdicts: Vec<(Key, Result<(), String>)> =
            candidates.into_iter().map(|(k, v)| (k, self.runtime.ready(&v))).collect();
        let pending: Vec<(Key, VirtualMachineInstance, bool)> = {
            let mut st = lock(&self.state);
            let mut out = Vec::new();
            for (key, verdict) in verdicts {
                let still_pending = st.vmis.get(&key).is_some_and(|v| Self::awaiting_launch(&st, &key, v))
                    && !st.launching.contains(&key)
                    && !st.deleting_vmis.contains_key(&key);
                if !still_pending {
                    continue;
                }
                if let Err(why) = verdict {
                    let r = self.not_ready_locked(&mut st, &key, why);
                    self.outcome_locked(&mut st, &mut failed, &key, r);
                    continue;
                }
                let Some(v) = st.vmis.get_mut(&key) else { continue };
                set_phase(v, VmiPhase::Scheduling);
                let st_ = v.status.get_or_insert_with(Default::default);
                st_.node_name = Some(self.opts.node_name.clone());
                if st_.conditions.iter().any(|c| c.type_ == DATA_VOLUMES_READY) {
                    set_condition(
                        &mut st_.conditions,
                        condition(DATA_VOLUMES_READY, true, Some("AllDVsReady"), None),
                    );
                }
                let vmi = v.clone();
                match self.persist_vmi(&mut st, &key) {
                    Ok(()) => {
                        st.launching.insert(key.clone());
                        out.push((key, vmi, false));
                    }
                    Err(e) => self.outcome_locked(&mut st, &mut failed, &key, Err(e)),
                }
            }
            // Reboots in place: the VMI stays Running while its machine starts again.
            let again: Vec<Key> = std::mem::take(&mut st.relaunch).into_iter().collect();
            for key in again {
                if st.deleting_vmis.contains_key(&key) || st.live.contains_key(&key) {
                    continue;
                }
                if let Some(v) = st.vmis.get(&key) {
                    out.push((key.clone(), v.clone(), true));
                    st.launching.insert(key);
                }
            }
            out
        };
        for (key, vmi, in_place) in pending {
            let r = self.launch(&key, &vmi, in_place);
            self.outcome(&mut failed, &key, r);
        }
        // Objects reconciled without error this pass start their next failure from the base delay.
        let mut st = lock(&self.state);
        st.requeue.retain(|k, b| failed.contains(k) || b.until > started);
    }

    /// Whether the VMI at `key` is to be launched: Pending, or Scheduling without a machine (its
    /// launch ended but recording how failed).
    fn awaiting_launch(st: &State, key: &Key, vmi: &VirtualMachineInstance) -> bool {
        match phase_of(vmi) {
            VmiPhase::Pending => true,
            VmiPhase::Scheduling => !st.live.contains_key(key),
            _ => false,
        }
    }

    /// Whether `key` waits for its requeue back-off (its last reconcile failed).
    fn deferred(st: &State, key: &Key, now: Instant) -> bool {
        st.requeue.get(key).is_some_and(|b| b.until > now)
    }

    fn outcome(&self, failed: &mut BTreeSet<Key>, key: &Key, r: Result<(), LifecycleError>) {
        if r.is_err() {
            let mut st = lock(&self.state);
            self.outcome_locked(&mut st, failed, key, r);
        }
    }

    /// The error policy: a failed reconcile of `key` is logged and requeued after a back-off that
    /// doubles per failure in a row; other objects are not delayed.
    fn outcome_locked(
        &self,
        st: &mut State,
        failed: &mut BTreeSet<Key>,
        key: &Key,
        r: Result<(), LifecycleError>,
    ) {
        let Err(e) = r else { return };
        let b = st.requeue.entry(key.clone()).or_insert(Backoff { failures: 0, until: Instant::now() });
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32.checked_shl(b.failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        let delay = self.opts.requeue_base.saturating_mul(factor).min(self.opts.requeue_max);
        b.until = Instant::now() + delay;
        log::error!(
            "lifecycle: reconciling {key} failed (attempt {}), requeued in {delay:?}: {e}",
            b.failures
        );
        failed.insert(key.clone());
    }

    fn launch(&self, key: &Key, vmi: &VirtualMachineInstance, in_place: bool) -> Result<(), LifecycleError> {
        let result = self.runtime.launch(vmi);
        if let Ok(m) = &result {
            watch(key.clone(), m.clone(), self.signal.clone());
        }
        let observe_now = result.as_ref().ok().cloned();
        if in_place {
            let mut st = lock(&self.state);
            st.launching.remove(key);
            match result {
                Ok(machine) => {
                    let last = machine.status();
                    st.live
                        .insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                    // Deleted while it was starting again: stop it now.
                    if let Some(g) = st.deleting_vmis.get(key).copied() {
                        self.begin_stop_locked(&mut st, key, g);
                    }
                }
                Err(msg) => {
                    let r = self.finish_locked(
                        &mut st,
                        key,
                        MachineExit::Failed(format!("restart after reboot: {msg}")),
                    );
                    if r.is_err() {
                        // Not recorded: try the restart again on a later pass.
                        st.relaunch.insert(key.clone());
                    }
                    return r;
                }
            }
            drop(st);
            if let Some(m) = observe_now {
                self.observe(key, &m)?;
            }
            return Ok(());
        }
        self.launched(key, result)?;
        // Running is usually true at once: say so without waiting for the next pass.
        if let Some(m) = observe_now {
            self.observe(key, &m)?;
        }
        Ok(())
    }

    fn launched(&self, key: &Key, result: Result<Arc<dyn Machine>, String>) -> Result<(), LifecycleError> {
        let mut st = lock(&self.state);
        st.launching.remove(key);
        match result {
            Ok(machine) => {
                let acc = machine.accelerator();
                let last = machine.status();
                let deleting = st.deleting_vmis.get(key).copied();
                st.live.insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                if let Some(v) = st.vmis.get_mut(key) {
                    set_phase(v, VmiPhase::Scheduled);
                    let s = v.status.get_or_insert_with(Default::default);
                    let hw = acc.accelerator == Accelerator::Kvm;
                    set_condition(
                        &mut s.conditions,
                        condition(
                            "HardwareAccelerated",
                            hw,
                            Some(if hw { "KVM" } else { "SoftwareEmulation" }),
                            Some(acc.reason.clone()),
                        ),
                    );
                }
                self.persist_vmi(&mut st, key)?;
                if acc.accelerator == Accelerator::Emulation {
                    self.event_locked(
                        &mut st,
                        Kind::VirtualMachineInstance,
                        key,
                        "Warning",
                        "SoftwareEmulation",
                        acc.reason,
                    );
                }
                self.event_locked(
                    &mut st,
                    Kind::VirtualMachineInstance,
                    key,
                    "Normal",
                    "Created",
                    "VirtualMachineInstance defined".into(),
                );
                if let Some(g) = deleting {
                    self.begin_stop_locked(&mut st, key, g);
                }
            }
            Err(msg) => {
                if st.deleting_vmis.contains_key(key) {
                    return self.remove_vmi_locked(&mut st, key);
                }
                if let Some(v) = st.vmis.get_mut(key) {
                    set_phase(v, VmiPhase::Failed);
                    let s = v.status.get_or_insert_with(Default::default);
                    s.reason = Some("FailedCreate".into());
                    set_condition(
                        &mut s.conditions,
                        condition("Ready", false, Some("FailedCreate"), Some(msg.clone())),
                    );
                }
                self.persist_vmi(&mut st, key)?;
                self.note_failure_locked(&mut st, key);
                self.event_locked(&mut st, Kind::VirtualMachineInstance, key, "Warning", "FailedCreate", msg);
            }
        }
        Ok(())
    }

    /// A pending VMI the runtime cannot launch yet: condition `DataVolumesReady`=False saying why;
    /// persisted (with an event) when it starts waiting or its reason changes, not on every
    /// change of the message (an import's progress).
    fn not_ready_locked(&self, st: &mut State, key: &Key, why: String) -> Result<(), LifecycleError> {
        let Some(v) = st.vmis.get_mut(key) else { return Ok(()) };
        let s = v.status.get_or_insert_with(Default::default);
        let was_waiting =
            s.conditions.iter().any(|c| c.type_ == DATA_VOLUMES_READY && c.status == ConditionStatus::False);
        set_condition(
            &mut s.conditions,
            condition(DATA_VOLUMES_READY, false, Some("NotAllDVsReady"), Some(why.clone())),
        );
        if !was_waiting {
            self.persist_vmi(st, key)?;
            self.event_locked(st, Kind::VirtualMachineInstance, key, "Normal", "NotAllDVsReady", why);
        }
        Ok(())
    }

    fn note_failure_locked(&self, st: &mut State, key: &Key) {
        let b = st.backoff.entry(key.clone()).or_insert(Backoff { failures: 0, until: Instant::now() });
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32.checked_shl(b.failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        let delay = self.opts.backoff_base.saturating_mul(factor).min(self.opts.backoff_max);
        b.until = Instant::now() + delay;
    }

    /// Reads a machine's status into its VMI.
    fn observe(&self, key: &Key, m: &Arc<dyn Machine>) -> Result<(), LifecycleError> {
        let status = m.status();
        let mut st = lock(&self.state);
        let Some(l) = st.live.get_mut(key) else { return Ok(()) };
        l.last = status.clone();
        let mut changed = false;
        match &status {
            MachineStatus::Starting => {}
            MachineStatus::Running | MachineStatus::Paused => {
                let paused = status == MachineStatus::Paused;
                let mut became_running = false;
                if let Some(v) = st.vmis.get_mut(key) {
                    became_running = set_phase(v, VmiPhase::Running);
                    changed |= became_running;
                    let s = v.status.get_or_insert_with(Default::default);
                    let before = s.conditions.clone();
                    set_condition(&mut s.conditions, condition("Ready", !paused, None, None));
                    if paused {
                        set_condition(
                            &mut s.conditions,
                            condition(
                                "Paused",
                                true,
                                Some("PausedByUser"),
                                Some("VMI was paused by user".into()),
                            ),
                        );
                    } else {
                        remove_condition(&mut s.conditions, "Paused");
                    }
                    s.reason = None;
                    changed |= before != s.conditions;
                }
                if became_running {
                    self.event_locked(
                        &mut st,
                        Kind::VirtualMachineInstance,
                        key,
                        "Normal",
                        "Started",
                        "VirtualMachineInstance started".into(),
                    );
                }
                // Running for a while clears the crash-loop back-off.
                if !paused {
                    if let Some(b) = st.backoff.get(key) {
                        if Instant::now() > b.until + self.opts.backoff_base {
                            st.backoff.remove(key);
                        }
                    }
                }
            }
            MachineStatus::Stopped(exit) => {
                let exit = exit.clone();
                return self.machine_ended_locked(&mut st, key, exit);
            }
        }
        if changed {
            self.persist_vmi(&mut st, key)?;
            // The VM's status (printableStatus, ready) follows its instance at once.
            self.update_vm_status_locked(&mut st, key)?;
        }
        Ok(())
    }

    /// A VMI's machine ended with `exit`: start it again in place (a guest reboot, a soft reboot),
    /// or finish the VMI.
    fn machine_ended_locked(
        &self,
        st: &mut State,
        key: &Key,
        exit: MachineExit,
    ) -> Result<(), LifecycleError> {
        let live = st.live.remove(key);
        let soft = live.as_ref().is_some_and(|l| l.soft_reboot);
        let deleting = st.deleting_vmis.contains_key(key);
        let stopping = live.as_ref().is_some_and(|l| l.stop_deadline.is_some());
        let in_place = !deleting
            && !stopping
            && (exit == MachineExit::Reboot || (soft && exit == MachineExit::PowerOff));
        if in_place {
            if let Some(v) = st.vmis.get(key).cloned() {
                let reason = if soft { "SoftRebooted" } else { "Rebooted" };
                self.event_locked(
                    st,
                    Kind::VirtualMachineInstance,
                    key,
                    "Normal",
                    reason,
                    "the guest rebooted; starting its machine again".into(),
                );
                // Started again by the controller, outside the lock (a launch can take a while).
                let _ = v;
                st.relaunch.insert(key.clone());
                self.signal.raise();
                return Ok(());
            }
        }
        let r = self.finish_locked(st, key, exit);
        if r.is_err() {
            // Not recorded: keep watching the ended machine so that a later pass records it.
            if let Some(l) = live {
                st.live.insert(key.clone(), l);
            }
        }
        r
    }

    fn finish_locked(&self, st: &mut State, key: &Key, exit: MachineExit) -> Result<(), LifecycleError> {
        let (phase, type_, reason, msg) = match &exit {
            MachineExit::PowerOff => {
                (VmiPhase::Succeeded, "Normal", "Stopped", "the guest powered off".to_string())
            }
            MachineExit::Reboot => {
                (VmiPhase::Succeeded, "Normal", "Stopped", "the guest rebooted while stopping".to_string())
            }
            MachineExit::Stopped => {
                (VmiPhase::Succeeded, "Normal", "Stopped", "the VMI was stopped".to_string())
            }
            MachineExit::Failed(m) => (VmiPhase::Failed, "Warning", "Failed", m.clone()),
        };
        if let Some(v) = st.vmis.get_mut(key) {
            set_phase(v, phase);
            let s = v.status.get_or_insert_with(Default::default);
            remove_condition(&mut s.conditions, "Paused");
            set_condition(&mut s.conditions, condition("Ready", false, Some(reason), Some(msg.clone())));
            if phase == VmiPhase::Failed {
                s.reason = Some("Failed".into());
            }
        }
        if phase == VmiPhase::Failed {
            self.note_failure_locked(st, key);
        }
        self.persist_vmi(st, key)?;
        self.event_locked(st, Kind::VirtualMachineInstance, key, type_, reason, msg);
        Ok(())
    }

    fn remove_vmi_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        if st.vmis.contains_key(key) {
            self.store.delete(Kind::VirtualMachineInstance, key)?;
        }
        st.deleting_vmis.remove(key);
        st.relaunch.remove(key);
        st.live.remove(key);
        if let Some(v) = st.vmis.remove(key) {
            self.runtime.cleanup(&v);
            self.event_locked(
                st,
                Kind::VirtualMachineInstance,
                key,
                "Normal",
                "Deleted",
                "VirtualMachineInstance deleted".into(),
            );
        }
        Ok(())
    }

    /// Applies `key`'s run strategy until it rests, then writes its status.
    fn sync_vm(&self, key: &Key) -> Result<(), LifecycleError> {
        let mut st = lock(&self.state);
        for _ in 0..8 {
            let Some(vm) = st.vms.get(key) else { return Ok(()) };
            if st.deleting_vms.contains(key) {
                match st.vmis.contains_key(key) {
                    true if !st.deleting_vmis.contains_key(key) => {
                        let g = st.vmis.get(key).map(grace_of).unwrap_or(0);
                        self.delete_vmi_locked(&mut st, key, g)?;
                    }
                    true => {}
                    false => {
                        self.store.delete(Kind::VirtualMachine, key)?;
                        st.vms.remove(key);
                        st.backoff.remove(key);
                        self.event_locked(
                            &mut st,
                            Kind::VirtualMachine,
                            key,
                            "Normal",
                            "Deleted",
                            "VirtualMachine deleted".into(),
                        );
                        return Ok(());
                    }
                }
                break;
            }
            let strategy = vm.spec.effective_run_strategy();
            let applied = vm.status.as_ref().and_then(|s| s.run_strategy) == Some(strategy);
            let queue = state_change_requests(vm);
            let vmi = st.vmis.get(key).map(|v| InstanceView {
                phase: if st.launching.contains(key) { VmiPhase::Scheduling } else { phase_of(v) },
                deleting: st.deleting_vmis.contains_key(key),
            });
            let backing_off = st.backoff.get(key).is_some_and(|b| Instant::now() < b.until);
            let view = VmView {
                strategy,
                strategy_applied: applied,
                vmi,
                next_request: queue.first().copied(),
                backing_off,
            };
            match strategy::sync(&view) {
                Action::None | Action::Wait => break,
                Action::Create => {
                    self.dequeue_locked(&mut st, key, StateChange::Start);
                    self.create_vmi_for_vm_locked(&mut st, key)?;
                }
                Action::Replace => {
                    self.dequeue_locked(&mut st, key, StateChange::Start);
                    self.remove_vmi_locked(&mut st, key)?;
                    self.create_vmi_for_vm_locked(&mut st, key)?;
                }
                Action::Stop => {
                    self.dequeue_locked(&mut st, key, StateChange::Stop);
                    let g = st
                        .vmis
                        .get(key)
                        .map(|v| v.metadata.deletion_grace_period_seconds.unwrap_or_else(|| grace_of(v)))
                        .unwrap_or(0);
                    self.delete_vmi_locked(&mut st, key, g)?;
                }
                Action::DeleteFinished => self.remove_vmi_locked(&mut st, key)?,
                Action::Dequeue => {
                    if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
                        if !s.state_change_requests.is_empty() {
                            s.state_change_requests.remove(0);
                        }
                    }
                }
            }
        }
        self.update_vm_status_locked(&mut st, key)
    }

    fn dequeue_locked(&self, st: &mut State, key: &Key, what: StateChange) {
        if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
            if s.state_change_requests.first().and_then(|r| r.get("action")).and_then(|a| a.as_str())
                == Some(what.as_str())
            {
                s.state_change_requests.remove(0);
            }
        }
    }

    /// Marks the VMI deleted (stored first) and asks its guest to power off.
    fn delete_vmi_locked(&self, st: &mut State, key: &Key, grace: i64) -> Result<(), LifecycleError> {
        if let Some(v) = st.vmis.get_mut(key) {
            if v.metadata.deletion_timestamp.is_none() {
                v.metadata.deletion_timestamp = Some(now());
            }
            v.metadata.deletion_grace_period_seconds = Some(grace);
        }
        self.persist_vmi(st, key)?;
        st.deleting_vmis.insert(key.clone(), grace);
        self.begin_stop_locked(st, key, grace);
        Ok(())
    }

    fn create_vmi_for_vm_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let Some(vm) = st.vms.get(key).cloned() else { return Ok(()) };
        let template = match model::resolve(&vm, &st.catalog) {
            Ok(t) => t,
            Err(e) => {
                let msg = format!("cannot start: {e}");
                if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
                    set_condition(
                        &mut s.conditions,
                        condition("Failure", true, Some("FailedCreate"), Some(msg.clone())),
                    );
                }
                self.event_locked(st, Kind::VirtualMachine, key, "Warning", "FailedCreate", msg);
                return Ok(());
            }
        };
        let mut meta = template.metadata.clone().unwrap_or_default();
        meta.name = Some(key.name.clone());
        meta.namespace = Some(key.namespace.clone());
        meta.uid = Some(new_uid());
        meta.creation_timestamp = Some(now());
        meta.resource_version = None;
        meta.generate_name = None;
        meta.owner_references = vec![OwnerReference {
            api_version: model::API_VERSION.into(),
            kind: "VirtualMachine".into(),
            name: key.name.clone(),
            uid: vm.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }];
        let mut vmi = VirtualMachineInstance::new(meta, template.spec);
        vmi.status = Some(VirtualMachineInstanceStatus::default());
        set_phase(&mut vmi, VmiPhase::Pending);
        vmi.metadata.resource_version = Some(Self::next_rv(st));
        self.store.put(&StoredObject {
            kind: Kind::VirtualMachineInstance,
            key: key.clone(),
            value: to_value(&vmi),
        })?;
        st.vmis.insert(key.clone(), vmi);
        st.deleting_vmis.remove(key);
        if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
            remove_condition(&mut s.conditions, "Failure");
        }
        self.event_locked(
            st,
            Kind::VirtualMachine,
            key,
            "Normal",
            "SuccessfulCreate",
            format!("Started the virtual machine by creating the new virtual machine instance {}", key.name),
        );
        Ok(())
    }

    fn update_vm_status_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let vmi = st.vmis.get(key);
        let phase =
            vmi.map(phase_of).map(|p| if st.launching.contains(key) { VmiPhase::Scheduling } else { p });
        let conds = vmi.and_then(|v| v.status.as_ref()).map(|s| s.conditions.clone()).unwrap_or_default();
        let paused = has_condition(&conds, "Paused");
        let ready = has_condition(&conds, "Ready");
        let deleting = st.deleting_vmis.contains_key(key) || st.deleting_vms.contains(key);
        let backing_off = st.backoff.get(key).is_some_and(|b| Instant::now() < b.until);
        let printable = strategy::printable_status(phase, deleting, paused, backing_off);
        let Some(vm) = st.vms.get_mut(key) else { return Ok(()) };
        let strategy = vm.spec.effective_run_strategy();
        let generation = vm.metadata.generation;
        let s = vm.status.get_or_insert_with(Default::default);
        let before = s.clone();
        s.created = phase.map(|_| true);
        s.ready = Some(ready);
        s.printable_status = Some(printable.into());
        s.run_strategy = Some(strategy);
        s.observed_generation = generation;
        set_condition(&mut s.conditions, condition("Ready", ready, None, None));
        if paused {
            set_condition(
                &mut s.conditions,
                condition("Paused", true, Some("PausedByUser"), Some("VMI was paused by user".into())),
            );
        } else {
            remove_condition(&mut s.conditions, "Paused");
        }
        if *s != before {
            self.persist_vm(st, key)?;
        }
        Ok(())
    }
}

/// The catalog VMs resolve against: the embedder's plus the stored objects.
fn build_catalog(base: &Catalog, objects: &BTreeMap<Key, serde_json::Value>) -> Catalog {
    let mut c = base.clone();
    for (k, v) in objects {
        match model::load_json(&v.to_string()) {
            Ok(loaded) => {
                c.add(&loaded.object);
            }
            Err(e) => log::error!("state store: instancetype {k} unreadable, skipped: {e}"),
        }
    }
    c
}

fn namespace_object(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name },
        "status": { "phase": "Active" }
    })
}

/// A DNS-1123 label (what Kubernetes allows as a namespace or VM name).
fn check_name(name: &str, path: &str) -> Result<(), LifecycleError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::Invalid(format!(
            "{path}: Invalid value: \"{name}\": a lowercase RFC 1123 name must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (at most 63)"
        )))
    }
}

/// Fills server-side metadata; returns the name.
fn prepare_meta(meta: &mut ObjectMeta, namespace: &str) -> Result<String, LifecycleError> {
    if let Some(ns) = &meta.namespace {
        if ns != namespace {
            return Err(LifecycleError::Invalid(format!(
                "metadata.namespace: Invalid value: \"{ns}\": does not match the namespace of the request (\"{namespace}\")"
            )));
        }
    }
    let name = match (&meta.name, &meta.generate_name) {
        (Some(n), _) => n.clone(),
        (None, Some(prefix)) => {
            let uid = new_uid();
            format!("{prefix}{}", &uid[..5])
        }
        (None, None) => {
            return Err(LifecycleError::Invalid(
                "metadata.name: Required value: name or generateName is required".into(),
            ))
        }
    };
    check_name(&name, "metadata.name")?;
    meta.name = Some(name.clone());
    meta.namespace = Some(namespace.to_string());
    meta.uid = Some(new_uid());
    meta.creation_timestamp = Some(now());
    meta.deletion_timestamp = None;
    meta.resource_version = None;
    Ok(name)
}

#[cfg(test)]
mod tests;
