//! Where a lifecycle keeps its objects: the [`Store`] seam, an in-memory store, and the writes
//! of the lifecycle, each stored before anyone can see it (a refused write is read back).

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

pub(super) fn kind_tag(k: Kind) -> u8 {
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

impl Lifecycle {
    pub(super) fn next_rv(st: &mut State) -> String {
        st.resource_version += 1;
        st.resource_version.to_string()
    }

    /// Writes the VM at `key` as it is in memory, with a new resourceVersion. The lock is held, so
    /// nobody sees the change before it is stored; if the write fails, the VM is read back from the
    /// store ([`Lifecycle::rollback`]) and the change is gone.
    pub(super) fn persist_vm(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let rv = Self::next_rv(st);
        let Some(vm) = st.vms.get_mut(key) else { return Ok(()) };
        vm.metadata.resource_version = Some(rv);
        let object = StoredObject { kind: Kind::VirtualMachine, key: key.clone(), value: to_value(vm) };
        self.put_or_rollback(st, object)
    }

    /// [`Lifecycle::persist_vm`] for a VMI.
    pub(super) fn persist_vmi(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let rv = Self::next_rv(st);
        let Some(vmi) = st.vmis.get_mut(key) else { return Ok(()) };
        vmi.metadata.resource_version = Some(rv);
        let object =
            StoredObject { kind: Kind::VirtualMachineInstance, key: key.clone(), value: to_value(vmi) };
        self.put_or_rollback(st, object)
    }

    pub(super) fn put_or_rollback(&self, st: &mut State, object: StoredObject) -> Result<(), LifecycleError> {
        if let Err(e) = self.store.put(&object) {
            self.rollback(st, object.kind, &object.key);
            return Err(e.into());
        }
        Ok(())
    }

    /// After a failed write: makes the in-memory VM or VMI at `key` what the store holds again
    /// (absent if it holds none), with the deletion bookkeeping that follows from it.
    pub(super) fn rollback(&self, st: &mut State, kind: Kind, key: &Key) {
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
}
