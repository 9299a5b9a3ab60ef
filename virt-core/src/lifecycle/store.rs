//! Where a lifecycle keeps its objects: the [`Store`] seam, an in-memory store, and the writes
//! of the lifecycle, each stored before anyone can see it (a refused write is read back).

use super::watch::{ChangeLog, Journal, WatchError, Watcher, DEFAULT_LOG_CAPACITY};
use super::*;

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
/// it returns. A store has one resourceVersion sequence for every kind it holds, and a change log
/// ([`ChangeLog`]) that lists and watches start from: a change is recorded, and seen by watchers,
/// only once it is stored.
pub trait Store: Send + Sync {
    /// Every stored object of the lifecycle's kinds.
    fn load(&self) -> Result<Vec<StoredObject>, StoreError>;
    /// Writes (creates or replaces) one object with the next resourceVersion of the store's
    /// sequence, which the store writes into the stored `metadata.resourceVersion` and returns.
    fn put(&self, object: &StoredObject) -> Result<u64, StoreError>;
    /// Writes several objects, each with its own next resourceVersion (returned in order), as
    /// one durable step where the store can (a single commit: one sync instead of one per
    /// object). The default writes them one by one; a failure may then leave the first written.
    fn put_all(&self, objects: &[StoredObject]) -> Result<Vec<u64>, StoreError> {
        objects.iter().map(|o| self.put(o)).collect()
    }
    /// Removes one object (absent is fine).
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError>;
    /// One stored object, if it is stored. The lifecycle reads an object back after a failed write
    /// so that what readers see is what the store holds. The default scans [`Store::load`].
    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        Ok(self.load()?.into_iter().find(|o| o.kind == kind && o.key == *key))
    }
    /// The store's change log: its latest resourceVersion, and watches from a resourceVersion.
    fn changes(&self) -> &Arc<ChangeLog>;
    /// Writes (or rewrites) event number `seq`, dropping those numbered `seq - keep` and below.
    /// Events need not be durable at once (the next object write may carry them). The default
    /// keeps nothing.
    fn put_event(&self, _seq: u64, _event: &serde_json::Value, _keep: usize) -> Result<(), StoreError> {
        Ok(())
    }
    /// The stored events, by number, oldest first.
    fn load_events(&self) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        Ok(Vec::new())
    }
}

/// A store in memory: objects survive a new [`Lifecycle`] on the same store, not the process.
#[derive(Debug)]
pub struct MemStore {
    objects: Mutex<BTreeMap<(u8, Key), StoredObject>>,
    events: Mutex<BTreeMap<u64, serde_json::Value>>,
    journal: Journal,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::with_log_capacity(DEFAULT_LOG_CAPACITY)
    }
}

impl MemStore {
    /// An empty store whose change log keeps `capacity` changes.
    pub fn with_log_capacity(capacity: usize) -> Self {
        Self { objects: Mutex::default(), events: Mutex::default(), journal: Journal::new(0, capacity) }
    }
}

pub(super) fn kind_tag(k: Kind) -> u8 {
    match k {
        Kind::Namespace => 0,
        Kind::VirtualMachine => 1,
        Kind::VirtualMachineInstance => 2,
        Kind::Instancetype => 3,
        Kind::Migration => 4,
        Kind::MigrationPolicy => 5,
    }
}

impl Store for MemStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        Ok(lock(&self.objects).values().cloned().collect())
    }
    fn put(&self, object: &StoredObject) -> Result<u64, StoreError> {
        let slot = (kind_tag(object.kind), object.key.clone());
        self.journal.put(object.kind.name(), &object.key, object.value.clone(), |rv, _| {
            let mut stored = object.clone();
            if let Some(meta) = stored.value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert("resourceVersion".into(), rv.to_string().into());
            }
            Ok::<_, StoreError>(lock(&self.objects).insert(slot, stored).is_some())
        })
    }
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        self.journal.delete(kind.name(), key, |_| {
            Ok::<_, StoreError>(lock(&self.objects).remove(&(kind_tag(kind), key.clone())).map(|o| o.value))
        })?;
        Ok(())
    }
    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        Ok(lock(&self.objects).get(&(kind_tag(kind), key.clone())).cloned())
    }
    fn changes(&self) -> &Arc<ChangeLog> {
        self.journal.log()
    }
    fn put_event(&self, seq: u64, event: &serde_json::Value, keep: usize) -> Result<(), StoreError> {
        let mut events = lock(&self.events);
        events.insert(seq, event.clone());
        let cut = seq.saturating_sub(keep as u64);
        events.retain(|s, _| *s > cut);
        Ok(())
    }
    fn load_events(&self) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        Ok(lock(&self.events).iter().map(|(s, e)| (*s, e.clone())).collect())
    }
}

impl Lifecycle {
    /// The store's latest resourceVersion: what a list of the lifecycle's objects is as of.
    pub fn resource_version(&self) -> u64 {
        self.store.changes().last()
    }

    /// The store's change log, which the REST layer's watches follow.
    pub fn changes(&self) -> &Arc<ChangeLog> {
        self.store.changes()
    }

    /// Watches every change the store records after resourceVersion `from` (every kind, in
    /// order); [`WatchError::Gone`] when the store no longer holds the changes since then.
    pub fn watch(&self, from: u64) -> Result<Watcher, WatchError> {
        self.store.changes().watch(from)
    }
}

impl Persistence<'_> {
    /// Writes the VM at `key` as it is in memory, with a new resourceVersion. The lock is held, so
    /// nobody sees the change before it is stored; if the write fails, the VM is read back from the
    /// store ([`Lifecycle::rollback`]) and the change is gone. Inside a write batch the write
    /// happens when the batch ends, still before the lock is released.
    pub(super) fn persist_vm(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        if Self::defer(st, Kind::VirtualMachine, key) {
            return Ok(());
        }
        let Some(vm) = st.vms.get(key) else { return Ok(()) };
        let object = StoredObject { kind: Kind::VirtualMachine, key: key.clone(), value: to_value(vm) };
        let rv = self.put_or_rollback(st, object)?;
        if let Some(vm) = st.vms.get_mut(key) {
            vm.metadata.resource_version = Some(rv.to_string());
        }
        Ok(())
    }

    /// [`Lifecycle::persist_vm`] for a VMI.
    pub(super) fn persist_vmi(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        if Self::defer(st, Kind::VirtualMachineInstance, key) {
            return Ok(());
        }
        let Some(vmi) = st.vmis.get(key) else { return Ok(()) };
        let object =
            StoredObject { kind: Kind::VirtualMachineInstance, key: key.clone(), value: to_value(vmi) };
        let rv = self.put_or_rollback(st, object)?;
        if let Some(vmi) = st.vmis.get_mut(key) {
            vmi.metadata.resource_version = Some(rv.to_string());
        }
        Ok(())
    }

    /// Takes a copy of VM or VMI `key` as it is now into the open write batch, if one is open
    /// (true).
    fn defer(st: &mut State, kind: Kind, key: &Key) -> bool {
        if st.batch.is_none() {
            return false;
        }
        let value = match kind {
            Kind::VirtualMachine => st.vms.get(key).map(to_value),
            _ => st.vmis.get(key).map(to_value),
        };
        if let (Some(batch), Some(value)) = (st.batch.as_mut(), value) {
            batch.push(StoredObject { kind, key: key.clone(), value });
        }
        true
    }

    /// Runs `f` with a write batch open: the VMs and VMIs it persists are written together when
    /// it returns (also when it fails: what it persisted before failing is kept, as without a
    /// batch), in order, each persist its own resourceVersion and change, as they were when
    /// persisted. A reconcile that changes a VMI (Scheduled, then Running) and then its VM costs
    /// one durable commit, not three. Inside an open batch, `f` just runs.
    pub(super) fn batched<T>(
        &self,
        st: &mut State,
        f: impl FnOnce(&mut State) -> Result<T, LifecycleError>,
    ) -> Result<T, LifecycleError> {
        if st.batch.is_some() {
            return f(st);
        }
        st.batch = Some(Vec::new());
        let result = f(st);
        let flushed = self.flush_batch(st);
        st.batch = None;
        let value = result?;
        flushed?;
        Ok(value)
    }

    /// Writes what the open write batch holds (a deletion calls this first, so that the change
    /// log keeps the order in which things happened). On failure every object of the batch is
    /// read back from the store.
    pub(super) fn flush_batch(&self, st: &mut State) -> Result<(), LifecycleError> {
        let objects = match st.batch.as_mut() {
            Some(b) if !b.is_empty() => std::mem::take(b),
            _ => return Ok(()),
        };
        match self.lc.store.put_all(&objects) {
            Ok(rvs) => {
                for (o, rv) in objects.iter().zip(rvs) {
                    let rv = Some(rv.to_string());
                    match o.kind {
                        Kind::VirtualMachine => {
                            if let Some(vm) = st.vms.get_mut(&o.key) {
                                vm.metadata.resource_version = rv;
                            }
                        }
                        _ => {
                            if let Some(vmi) = st.vmis.get_mut(&o.key) {
                                vmi.metadata.resource_version = rv;
                            }
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                for o in &objects {
                    self.rollback(st, o.kind, &o.key);
                }
                Err(e.into())
            }
        }
    }

    pub(super) fn put_or_rollback(
        &self,
        st: &mut State,
        object: StoredObject,
    ) -> Result<u64, LifecycleError> {
        match self.lc.store.put(&object) {
            Ok(rv) => Ok(rv),
            Err(e) => {
                self.rollback(st, object.kind, &object.key);
                Err(e.into())
            }
        }
    }

    /// After a failed write: makes the in-memory VM or VMI at `key` what the store holds again
    /// (absent if it holds none), with the deletion bookkeeping that follows from it.
    pub(super) fn rollback(&self, st: &mut State, kind: Kind, key: &Key) {
        let stored = match self.lc.store.get(kind, key) {
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
                        st.vms.insert(key.clone(), Box::new(vm));
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
                        st.vmis.insert(key.clone(), Box::new(vmi));
                    }
                    None => {
                        st.vmis.remove(key);
                        st.deleting_vmis.remove(key);
                    }
                }
            }
            Kind::Migration => match stored.and_then(|v| serde_json::from_value(v).ok()) {
                Some(m) => {
                    st.migrations.insert(key.clone(), m);
                }
                None => {
                    st.migrations.remove(key);
                }
            },
            Kind::MigrationPolicy => match stored.and_then(|v| serde_json::from_value(v).ok()) {
                Some(p) => {
                    st.migration_policies.insert(key.name.clone(), p);
                }
                None => {
                    st.migration_policies.remove(&key.name);
                }
            },
            Kind::Namespace | Kind::Instancetype => {}
        }
    }
}
