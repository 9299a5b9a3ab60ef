//! The VM controller: applies a VM's run strategy (the pure functions of [`super::strategy`]) to
//! its instance, and writes the VM's status from it.

use super::gc::owns;
use super::*;

pub(super) fn state_change_requests(vm: &VirtualMachine) -> Vec<StateChange> {
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

impl VmController<'_> {
    /// Applies `key`'s run strategy until it rests, then writes its status: the VMI it creates
    /// and the VM's status are one write batch.
    pub(super) fn sync_vm(&self, key: &Key) -> Result<(), LifecycleError> {
        self.lc.gc().collect_vm(key)?;
        let mut st = lock(&self.lc.state);
        self.lc.persist().batched(&mut st, |st| self.sync_vm_locked(st, key))
    }

    fn sync_vm_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        for _ in 0..8 {
            let Some(vm) = st.vms.get(key) else { return Ok(()) };
            if st.deleting_vms.contains(key) {
                // Only the VM's own VMI goes with it (one orphaned by an earlier deletion stays).
                let uid = vm.metadata.uid.clone().unwrap_or_default();
                let orphaning = vm.metadata.finalizers.iter().any(|f| f == ORPHAN_FINALIZER);
                let own = st.vmis.get(key).map(|b| &**b).filter(|v| owns(&uid, v)).map(grace_of);
                match own {
                    Some(_) if orphaning => {}
                    Some(g) if !st.deleting_vmis.contains_key(key) => {
                        self.lc.delete_vmi_locked(st, key, g)?;
                    }
                    Some(_) => {}
                    // Finalizers (other controllers' cleanup, foregroundDeletion) hold the VM,
                    // deletionTimestamp set, until they are removed (replace_vm, gc).
                    None if !vm.metadata.finalizers.is_empty() => {}
                    None => {
                        self.lc.gc().remove_vm_locked(st, key)?;
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
                    self.dequeue_locked(st, key, StateChange::Start);
                    self.create_vmi_for_vm_locked(st, key)?;
                }
                Action::Replace => {
                    self.dequeue_locked(st, key, StateChange::Start);
                    self.lc.remove_vmi_locked(st, key)?;
                    self.create_vmi_for_vm_locked(st, key)?;
                }
                Action::Stop => {
                    self.dequeue_locked(st, key, StateChange::Stop);
                    let g = st
                        .vmis
                        .get(key)
                        .map(|v| v.metadata.deletion_grace_period_seconds.unwrap_or_else(|| grace_of(v)))
                        .unwrap_or(0);
                    self.lc.delete_vmi_locked(st, key, g)?;
                }
                Action::DeleteFinished => self.lc.remove_vmi_locked(st, key)?,
                Action::Dequeue => {
                    if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
                        if !s.state_change_requests.is_empty() {
                            s.state_change_requests.remove(0);
                        }
                    }
                }
            }
        }
        self.update_vm_status_locked(st, key)
    }

    pub(super) fn dequeue_locked(&self, st: &mut State, key: &Key, what: StateChange) {
        if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
            if s.state_change_requests.first().and_then(|r| r.get("action")).and_then(|a| a.as_str())
                == Some(what.as_str())
            {
                s.state_change_requests.remove(0);
            }
        }
    }

    pub(super) fn create_vmi_for_vm_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
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
                self.lc.persist().event_locked(st, Kind::VirtualMachine, key, "Warning", "FailedCreate", msg);
                return Ok(());
            }
        };
        let mut meta = template.metadata.as_deref().cloned().unwrap_or_default();
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
        st.vmis.insert(key.clone(), Box::new(vmi));
        st.deleting_vmis.remove(key);
        // A failed write takes the new VMI out of memory again (nothing is stored under `key`).
        self.lc.persist().persist_vmi(st, key)?;
        if let Some(s) = st.vms.get_mut(key).and_then(|v| v.status.as_mut()) {
            remove_condition(&mut s.conditions, "Failure");
        }
        self.lc.persist().event_locked(
            st,
            Kind::VirtualMachine,
            key,
            "Normal",
            "SuccessfulCreate",
            format!("Started the virtual machine by creating the new virtual machine instance {}", key.name),
        );
        Ok(())
    }

    pub(super) fn update_vm_status_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let vmi = st.vmis.get(key).map(|b| &**b);
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
            self.lc.persist().persist_vm(st, key)?;
        }
        Ok(())
    }
}
