//! Deleting a VM with a propagation policy, as Kubernetes' garbage collector does it
//! (`DeleteOptions.propagationPolicy`): what happens to the objects the VM owns through their
//! `ownerReferences` (its VMI, and the DataVolumes of its `dataVolumeTemplates`, which another
//! controller keeps and reaches through the [`Dependents`] seam).
//!
//! - `Background`: the VM is removed at once (unless finalizers hold it); its VMI is stopped and
//!   deleted after it, and the owner of the DataVolumes collects them once their owner is gone.
//! - `Foreground`: the VM stays, with `deletionTimestamp` and the finalizer `foregroundDeletion`,
//!   until its VMI is gone and [`Dependents::owned`] counts none; then it is removed.
//! - `Orphan`: the VM gets the finalizer `orphan`; its VMI and DataVolumes lose their
//!   `ownerReferences` to it and stay (the VMI keeps running on its own); then the finalizer goes
//!   and the VM with it.
//! - No policy ([`Vms::delete`]): KubeVirt's own, what the node always did: the VM stays
//!   until its VMI has stopped and is gone, and its DataVolumes are collected after it.

use crate::api::StatusCause;
use std::sync::Weak;

use super::*;

/// The finalizer holding an owner deleted in the foreground.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
/// The finalizer holding an owner whose dependents are being orphaned.
pub const ORPHAN_FINALIZER: &str = "orphan";

/// `DeleteOptions.propagationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Owner first, dependents collected after.
    Background,
    /// Dependents first, the owner held until they are gone.
    Foreground,
    /// Dependents kept, without their owner reference.
    Orphan,
}

impl Propagation {
    /// Reads `Background`, `Foreground` or `Orphan`; `field` names where the value came from.
    pub fn parse(value: &str, field: &str) -> Result<Self, LifecycleError> {
        match value {
            "Background" => Ok(Self::Background),
            "Foreground" => Ok(Self::Foreground),
            "Orphan" => Ok(Self::Orphan),
            other => Err(StatusCause::unsupported(
                field,
                format!("{other:?}"),
                "\"Background\", \"Foreground\", \"Orphan\"",
            )
            .into()),
        }
    }

    pub(super) fn finalizer(self) -> Option<&'static str> {
        match self {
            Self::Background => None,
            Self::Foreground => Some(FOREGROUND_FINALIZER),
            Self::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

/// A failure of a [`Dependents`] call.
#[derive(Debug, thiserror::Error)]
#[error("{what} the objects owned by {owner}: {message}")]
pub struct DependentsError {
    /// What was being done (`deleting`, `orphaning`, `counting`).
    pub what: &'static str,
    /// The owner, `namespace/name` or its uid.
    pub owner: String,
    /// What went wrong.
    pub message: String,
}

/// Objects another controller keeps that VMs own through `ownerReferences` (the node's
/// DataVolumes). Called without the lifecycle's lock held.
pub trait Dependents: Send + Sync {
    /// How many objects in `namespace` owned by the object of uid `owner_uid` still exist.
    fn owned(&self, namespace: &str, owner_uid: &str) -> Result<usize, DependentsError>;
    /// Begins deleting those objects.
    fn delete_owned(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError>;
    /// Removes the owner reference to `owner_uid` from those objects; they stay.
    fn orphan(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError>;
}

impl From<DependentsError> for LifecycleError {
    fn from(e: DependentsError) -> Self {
        LifecycleError::Conflict(e.to_string())
    }
}

/// Whether `vmi` is owned by the VM of uid `uid`.
pub(super) fn owns(uid: &str, vmi: &VirtualMachineInstance) -> bool {
    vmi.metadata.owner_references.iter().any(|o| o.kind == "VirtualMachine" && o.uid == uid)
}

pub(super) fn uid_of(vm: &VirtualMachine) -> String {
    vm.metadata.uid.clone().unwrap_or_default()
}

impl Lifecycle {
    /// Sets who keeps the other objects VMs own (held weakly: the node's CDI controller, which
    /// itself holds the lifecycle).
    pub fn set_dependents(&self, dependents: Weak<dyn Dependents>) {
        *lock(&self.dependents) = Some(dependents);
    }
}

impl Collector<'_> {
    pub(super) fn dependents(&self) -> Option<Arc<dyn Dependents>> {
        lock(&self.lc.dependents).as_ref().and_then(Weak::upgrade)
    }

    /// Removes a deleted VM from the store and memory.
    pub(super) fn remove_vm_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        self.lc.persist().flush_batch(st)?;
        self.lc.store.delete(Kind::VirtualMachine, key)?;
        st.vms.remove(key);
        st.deleting_vms.remove(key);
        st.backoff.remove(key);
        self.lc.persist().event_locked(
            st,
            Kind::VirtualMachine,
            key,
            "Normal",
            "Deleted",
            "VirtualMachine deleted".into(),
        );
        Ok(())
    }

    /// For a VM being deleted with `foregroundDeletion` or `orphan`: deletes or orphans its
    /// dependents and removes the finalizer once that is done. Called before the VM's sync,
    /// without the lock held.
    pub(super) fn collect_vm(&self, key: &Key) -> Result<(), LifecycleError> {
        let (uid, fin) = {
            let st = lock(&self.lc.state);
            let Some(vm) = st.vms.get(key).filter(|_| st.deleting_vms.contains(key)) else { return Ok(()) };
            let has = |f: &str| vm.metadata.finalizers.iter().any(|x| x == f);
            let fin = if has(ORPHAN_FINALIZER) {
                ORPHAN_FINALIZER
            } else if has(FOREGROUND_FINALIZER) {
                FOREGROUND_FINALIZER
            } else {
                return Ok(());
            };
            (uid_of(vm), fin)
        };
        let deps = self.dependents();
        if fin == ORPHAN_FINALIZER {
            if let Some(d) = &deps {
                d.orphan(&key.namespace, &uid)?;
            }
            let mut st = lock(&self.lc.state);
            if let Some(vmi) = st.vmis.get_mut(key).filter(|v| owns(&uid, v)) {
                vmi.metadata.owner_references.retain(|o| o.uid != uid);
                self.lc.persist().persist_vmi(&mut st, key)?;
                self.lc.persist().event_locked(
                    &mut st,
                    Kind::VirtualMachineInstance,
                    key,
                    "Normal",
                    "Orphaned",
                    "its VirtualMachine was deleted with propagationPolicy Orphan".into(),
                );
            }
            return self.drop_finalizer_locked(&mut st, key, fin);
        }
        let left = match &deps {
            Some(d) => {
                d.delete_owned(&key.namespace, &uid)?;
                d.owned(&key.namespace, &uid)?
            }
            None => 0,
        };
        let mut st = lock(&self.lc.state);
        if left == 0 && !st.vmis.get(key).is_some_and(|v| owns(&uid, v)) {
            self.drop_finalizer_locked(&mut st, key, fin)?;
        }
        Ok(())
    }

    pub(super) fn drop_finalizer_locked(
        &self,
        st: &mut State,
        key: &Key,
        fin: &str,
    ) -> Result<(), LifecycleError> {
        if let Some(vm) = st.vms.get_mut(key) {
            vm.metadata.finalizers.retain(|f| f != fin);
            self.lc.persist().persist_vm(st, key)?;
        }
        Ok(())
    }
}
