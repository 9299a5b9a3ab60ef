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
//!
//! Layout, by responsibility: `store` (the [`Store`] seam and the lifecycle's writes: stored before
//! visible), `objects` (namespaces, instancetypes, preferences), `api` (the VM and VMI requests),
//! `controller` (the pass and its per-object error policy), `vm_controller` (run strategies),
//! `vmi_controller` (launches and machines), `gc` (propagation policies of deletions), `events`,
//! `policies` (MigrationPolicies and how a migration picks one).

mod agent_status;
mod api;
mod controller;
mod events;
mod gc;
mod handles;
mod migration_controller;
mod migrations;
mod objects;
pub mod policies;
mod runtime;
mod store;
pub mod strategy;
mod vm_controller;
mod vmi_controller;
mod vmis;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use controller::ReconcileStats;
pub use events::{Event, EventSource, ObjectReference};
pub use gc::{Dependents, DependentsError, Propagation, FOREGROUND_FINALIZER, ORPHAN_FINALIZER};
pub use handles::{CatalogObjects, MigrationPolicies, Migrations, Namespaces, Vmis, Vms};
pub use migration_controller::{migration_failed, migration_started, migration_step, migration_succeeded};
pub use migrations::{
    migration_final, phase_of_migration, set_migration_phase, Migrated, MigrationAdmission, MigrationError,
    MigrationStep, MigrationTicket, MIGRATION_PHASES,
};
pub use runtime::{BackendRuntime, ConsoleFactory, VolumeFilesFactory};
pub use store::{MemStore, Store, StoreError, StoredObject};
pub use watch::{Change, ChangeLog, ChangeType, WatchError, WatchEvent, Watcher};

pub use strategy::{Action, InstanceView, Request, RequestError, StateChange, VmView};

use handles::{Collector, MigrationController, Persistence, Reconciler, VmController, VmiController};
use objects::{build_catalog, namespace_object, prepare_meta};
use vmi_controller::grace_of;

use crate::api::{new_uid, ConditionStatus, LabelSelector, ObjectMeta, OwnerReference, Timestamp};
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
/// The VMI condition saying whether it can live-migrate ([`Runtime::live_migratable`]).
pub const LIVE_MIGRATABLE: &str = "LiveMigratable";

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
    /// A `VirtualMachineInstanceMigration`.
    Migration,
    /// A `MigrationPolicy` (cluster-scoped: its key's namespace is empty).
    MigrationPolicy,
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
    /// The kind's name as stored and watched (`VirtualMachine`; `Instancetype` for the catalog
    /// kinds).
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::VirtualMachine => "VirtualMachine",
            Self::VirtualMachineInstance => "VirtualMachineInstance",
            Self::Instancetype => "Instancetype",
            Self::Migration => "VirtualMachineInstanceMigration",
            Self::MigrationPolicy => "MigrationPolicy",
        }
    }

    /// The resource name as Kubernetes writes it in messages (`virtualmachines.kubevirt.io`).
    pub fn resource(self) -> &'static str {
        match self {
            Self::Namespace => "namespaces",
            Self::VirtualMachine => "virtualmachines.kubevirt.io",
            Self::VirtualMachineInstance => "virtualmachineinstances.kubevirt.io",
            Self::Instancetype => "instancetypes.instancetype.kubevirt.io",
            Self::Migration => "virtualmachineinstancemigrations.kubevirt.io",
            Self::MigrationPolicy => "migrationpolicies.migrations.kubevirt.io",
        }
    }
}

/// Where a launch failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchStage {
    /// Preparing what the volumes name (pulls, overlays, seeds, claims).
    Volumes,
    /// Wiring the VMI's network.
    Network,
    /// Making the machine spec from the VMI.
    Spec,
    /// No machine backend can run the spec here.
    Backend,
    /// The run directory, the spec file or the launcher process.
    Process,
    /// The machine did not start (or its launcher did not answer).
    Start,
}

/// Why a [`Runtime`] could not start a VMI's machine: the stage and what failed there. The message
/// is the cause's (it names the volume, file or process); it becomes the VMI's `FailedCreate`
/// condition and event.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct LaunchError {
    /// Where it failed.
    pub stage: LaunchStage,
    /// What failed.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl LaunchError {
    /// A failure at `stage`.
    pub fn new(stage: LaunchStage, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self { stage, source: source.into() }
    }

    /// A `map_err` adapter for failures at `stage`.
    pub fn at<E: Into<Box<dyn std::error::Error + Send + Sync>>>(stage: LaunchStage) -> impl Fn(E) -> Self {
        move |e| Self::new(stage, e)
    }
}

/// How VMIs run: prepares what a VMI needs (volumes, seed disks, a launcher) and starts its machine.
pub trait Runtime: Send + Sync {
    /// Starts the machine of `vmi` (its spec has instancetypes and preferences applied).
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, LaunchError>;
    /// The machine already running `vmi`, found again after the lifecycle restarted.
    fn reattach(&self, vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>>;
    /// How `vmi`'s machine ended while nobody watched, if that is known.
    fn last_exit(&self, vmi: &VirtualMachineInstance) -> Option<MachineExit>;
    /// Frees what `launch` prepared, once the VMI is deleted.
    fn cleanup(&self, vmi: &VirtualMachineInstance);
    /// What the node's network gave `vmi`'s interfaces (KubeVirt's `status.interfaces`: name, MAC,
    /// addresses, `infoSource`), written to the VMI when its machine started; an interface without
    /// a `macAddress` in the spec gets the MAC listed here. Default: nothing.
    fn interfaces(&self, _vmi: &VirtualMachineInstance) -> Vec<crate::model::NetworkInterfaceStatus> {
        Vec::new()
    }
    /// `vmi`'s machine ended (the VMI is Succeeded or Failed): free what only a running machine
    /// needs (its network). Default: nothing.
    fn ended(&self, _vmi: &VirtualMachineInstance) {}
    /// Whether `vmi` can be launched now. `Err(why)` keeps it `Pending`, with condition
    /// `DataVolumesReady`=False (reason `NotAllDVsReady`, the message `why`) and one event, until a
    /// later pass finds it ready: e.g. while the DataVolumes its volumes name are still importing.
    /// Called without the lifecycle's lock held. The default: always ready.
    fn ready(&self, _vmi: &VirtualMachineInstance) -> Result<(), NotReady> {
        Ok(())
    }
    /// Moves `vmi`'s running machine into a fresh one (a live migration on this node), blocking
    /// until it ended; `step` is told each step reached. On success the returned machine runs the
    /// VM and the old one has stopped; on error the old one runs on. Default: unsupported.
    fn migrate(
        &self,
        _vmi: &VirtualMachineInstance,
        _ticket: &MigrationTicket,
        _step: &dyn Fn(MigrationStep),
    ) -> Result<Migrated, MigrationError> {
        Err(MigrationError::Unsupported("this node's runtime cannot migrate VMIs".into()))
    }
    /// Asks the running migration of `vmi` to stop (the source runs on); harmless when none runs.
    fn cancel_migration(&self, _vmi: &VirtualMachineInstance) {}
    /// Whether [`Runtime::migrate`] can move `vmi` (KubeVirt's `LiveMigratable` condition, set
    /// when its machine starts; a migration of a VMI that cannot move is refused when it is
    /// created). Called with the lifecycle's lock held: decide from the VMI and the runtime's
    /// configuration, without I/O. Default: not migratable, as [`Runtime::migrate`].
    fn live_migratable(&self, _vmi: &VirtualMachineInstance) -> Result<(), NotMigratable> {
        Err(NotMigratable::new("RuntimeNotLiveMigratable", "this node's runtime cannot migrate VMIs"))
    }
}

/// Why a VMI cannot live-migrate ([`Runtime::live_migratable`]): condition `LiveMigratable`=False
/// with this reason (KubeVirt's, e.g. `InterfaceNotLiveMigratable`) and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct NotMigratable {
    /// The condition's reason, one CamelCase word.
    pub reason: String,
    /// What keeps it from moving.
    pub message: String,
}

impl NotMigratable {
    /// `reason` and `message`.
    pub fn new(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason: reason.into(), message: message.into() }
    }
}

/// Why a VMI cannot be launched yet ([`Runtime::ready`]): one of its volumes waits for something
/// (a DataVolume importing, one not made yet).
#[derive(Debug, thiserror::Error)]
#[error("volume {volume}: {source}")]
pub struct NotReady {
    /// The volume's name in the VMI's spec.
    pub volume: String,
    /// What it waits for.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl NotReady {
    /// Volume `volume` waits for `source`.
    pub fn new(
        volume: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self { volume: volume.into(), source: source.into() }
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
    #[error(transparent)]
    Invalid(#[from] crate::api::Invalid),
    /// The request does not fit the object's state.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::api::ValidationError> for LifecycleError {
    fn from(e: crate::api::ValidationError) -> Self {
        Self::Invalid(e.into())
    }
}

impl From<crate::api::StatusCause> for LifecycleError {
    fn from(c: crate::api::StatusCause) -> Self {
        Self::Invalid(c.into())
    }
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
    /// How often [`Lifecycle::run`] looks at its timers (grace periods, back-offs, requeues)
    /// when nothing wakes it.
    pub tick: Duration,
    /// How often [`Lifecycle::run`] reconciles every object, whether or not anything changed
    /// (kube-rs' resync): observes every machine, refreshes what guest agents report.
    pub resync: Duration,
    /// First delay before reconciling again an object whose reconcile failed (doubles per failure
    /// in a row); the other objects are not delayed.
    pub requeue_base: Duration,
    /// Longest such delay.
    pub requeue_max: Duration,
    /// Migrations under way at once in the cluster (KubeVirt's `parallelMigrationsPerCluster`,
    /// default 5); more wait in `Pending`, oldest first.
    pub parallel_migrations_per_cluster: usize,
    /// Migrations under way at once out of one node (KubeVirt's
    /// `parallelOutboundMigrationsPerNode`, default 2). On one node the smaller limit binds.
    pub parallel_outbound_migrations_per_node: usize,
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
            resync: Duration::from_secs(10),
            requeue_base: Duration::from_millis(500),
            requeue_max: Duration::from_secs(60),
            parallel_migrations_per_cluster: 5,
            parallel_outbound_migrations_per_node: 2,
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
    /// Boxed: a B-tree node holds eleven values inline, and a VM is ~3 KiB, so inline values
    /// cost a third more than the VMs themselves in half-empty nodes (bench/node.py).
    vms: BTreeMap<Key, Box<VirtualMachine>>,
    /// Boxed, as `vms`.
    vmis: BTreeMap<Key, Box<VirtualMachineInstance>>,
    /// VMIs whose deletion was asked for, with the grace period to give them.
    deleting_vmis: HashMap<Key, i64>,
    /// VMs whose deletion was asked for.
    deleting_vms: BTreeSet<Key>,
    live: HashMap<Key, Live>,
    /// VirtualMachineInstanceMigrations.
    migrations: BTreeMap<Key, model::VirtualMachineInstanceMigration>,
    /// MigrationPolicies, by name.
    migration_policies: BTreeMap<String, model::MigrationPolicy>,
    /// Migrations under way, by their VMI's key.
    flights: HashMap<Key, Arc<migrations::Flight>>,
    /// VMIs being launched right now (outside the lock).
    launching: BTreeSet<Key>,
    /// Running VMIs whose guest rebooted: their machine starts again on the next pass.
    relaunch: BTreeSet<Key>,
    backoff: HashMap<Key, Backoff>,
    /// Objects whose last reconcile failed, waiting for their requeue back-off.
    requeue: HashMap<Key, Backoff>,
    /// Events by number, oldest first.
    events: VecDeque<(u64, Event)>,
    /// Numbers event names (`<object>.<n>`).
    event_seq: u64,
    /// Instancetypes and preferences created through the lifecycle, by store key.
    catalog_objects: BTreeMap<Key, serde_json::Value>,
    /// `LifecycleOptions::catalog` plus `catalog_objects`.
    catalog: Catalog,
    /// How much reconciling was done.
    stats: ReconcileStats,
    /// While a write batch is open ([`Lifecycle::batched`]): the VMs and VMIs persisted in it, as
    /// they were then, in order, written together (one durable commit) before the lock is
    /// released.
    batch: Option<Vec<StoredObject>>,
}

/// The controller's work queue: requests and machine watchers put the keys of the objects they
/// changed on it, [`Lifecycle::run`] takes them and reconciles those objects only.
#[derive(Default)]
struct Signal {
    queued: Mutex<Queued>,
    cv: Condvar,
}

/// What [`Signal`] holds until the controller takes it.
#[derive(Default)]
struct Queued {
    /// Everything is to be reconciled (an embedder's [`Lifecycle::wake`], the first pass).
    all: bool,
    /// The objects (VM and VMI share their key) to reconcile.
    keys: BTreeSet<Key>,
}

impl Queued {
    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }
}

impl Signal {
    /// Queues a pass over every object.
    fn raise(&self) {
        lock(&self.queued).all = true;
        self.cv.notify_all();
    }

    /// Queues the object at `key`.
    fn raise_key(&self, key: &Key) {
        lock(&self.queued).keys.insert(key.clone());
        self.cv.notify_all();
    }
}

/// The lifecycle of every VM and VMI of one node.
pub struct Lifecycle {
    state: Mutex<State>,
    signal: Arc<Signal>,
    store: Arc<dyn Store>,
    runtime: Arc<dyn Runtime>,
    opts: LifecycleOptions,
    /// Who keeps the other objects VMs own ([`Lifecycle::set_dependents`]).
    dependents: Mutex<Option<std::sync::Weak<dyn Dependents>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> Timestamp {
    Timestamp::now()
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
        for o in store.load()? {
            match o.kind {
                Kind::Namespace => {
                    st.namespaces.insert(o.key.name.clone(), o.value);
                }
                Kind::Instancetype => {
                    st.catalog_objects.insert(o.key, o.value);
                }
                Kind::Migration => {
                    match serde_json::from_value::<model::VirtualMachineInstanceMigration>(o.value) {
                        Ok(m) => {
                            st.migrations.insert(o.key, m);
                        }
                        Err(e) => log::error!("state store: migration {} unreadable, skipped: {e}", o.key),
                    }
                }
                Kind::MigrationPolicy => match serde_json::from_value::<model::MigrationPolicy>(o.value) {
                    Ok(p) => {
                        st.migration_policies.insert(o.key.name.clone(), p);
                    }
                    Err(e) => log::error!("state store: MigrationPolicy {} unreadable, skipped: {e}", o.key),
                },
                Kind::VirtualMachine => match serde_json::from_value::<VirtualMachine>(o.value) {
                    Ok(vm) => {
                        if vm.metadata.deletion_timestamp.is_some() {
                            st.deleting_vms.insert(o.key.clone());
                        }
                        st.vms.insert(o.key, Box::new(vm));
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
                            st.vmis.insert(o.key, Box::new(vmi));
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
        for (seq, value) in store.load_events()? {
            match serde_json::from_value::<Event>(value) {
                Ok(e) => st.events.push_back((seq, e)),
                Err(e) => log::error!("state store: event {seq} unreadable, skipped: {e}"),
            }
            st.event_seq = st.event_seq.max(seq);
        }
        st.catalog = build_catalog(&opts.catalog, &st.catalog_objects);
        let lc = Self {
            state: Mutex::new(st),
            signal: Arc::new(Signal::default()),
            store,
            runtime,
            opts,
            dependents: Mutex::new(None),
        };
        lc.vmi_ctl().reattach_all()?;
        lc.migration_ctl().interrupted_migrations()?;
        Ok(lc)
    }

    /// The options in force.
    pub fn options(&self) -> &LifecycleOptions {
        &self.opts
    }

    /// Wakes [`Lifecycle::run`] for a pass over every object (an embedder driving
    /// [`Lifecycle::reconcile`] itself calls that instead).
    pub fn wake(&self) {
        self.signal.raise();
    }

    /// Queues the objects at `key` (the VM and the VMI of that name) for the controller.
    pub(super) fn enqueue(&self, key: &Key) {
        self.signal.raise_key(key);
    }
}

#[cfg(test)]
#[path = "migration_tests.rs"]
mod migration_tests;
#[cfg(test)]
mod tests;
