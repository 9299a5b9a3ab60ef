//! The requests users make of VMs and VMIs: create, replace, get, list, delete, and the
//! `virtctl` verbs (start, stop, restart, pause, unpause, soft-reboot).

use super::gc::{owns, uid_of};
use super::*;
use crate::api::StatusCause;

impl Lifecycle {
    pub(super) fn vm_request(
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
        self.persist().persist_vm(&mut st, &key)?;
        let what = match req {
            Request::Start => "start",
            Request::Stop => "stop",
            Request::Restart => "restart",
        };
        self.persist().event_locked(
            &mut st,
            Kind::VirtualMachine,
            &key,
            "Normal",
            "StateChangeRequested",
            format!("{what} requested"),
        );
        drop(st);
        self.enqueue(&key);
        Ok(())
    }

    pub(super) fn live_machine(
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
}

impl Vms<'_> {
    /// Creates a VM in `namespace` (`metadata.namespace`, if set, must agree). Validation and the
    /// node's limits are checked first; every problem names its field.
    pub fn create(&self, namespace: &str, mut vm: VirtualMachine) -> Result<VirtualMachine, LifecycleError> {
        let name = prepare_meta(&mut vm.metadata, namespace)?;
        vm.admit(&self.lc.opts.support)?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.lc.state);
        Lifecycle::require_namespace(&st, namespace)?;
        if st.vms.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists { resource: Kind::VirtualMachine.resource(), name });
        }
        vm.metadata.generation = Some(1);
        vm.status =
            Some(VirtualMachineStatus { printable_status: Some("Stopped".into()), ..Default::default() });
        // Stored first: a VM nobody could find after a crash is never shown.
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::VirtualMachine,
            key: key.clone(),
            value: to_value(&vm),
        })?;
        vm.metadata.resource_version = Some(rv.to_string());
        st.vms.insert(key.clone(), Box::new(vm.clone()));
        drop(st);
        self.lc.enqueue(&key);
        Ok(vm)
    }

    /// Replaces a VM's labels, annotations and spec, keeping its status (`kubectl replace`/`apply`).
    /// A `metadata.resourceVersion` in `vm` must match the stored one.
    pub fn replace(&self, namespace: &str, mut vm: VirtualMachine) -> Result<VirtualMachine, LifecycleError> {
        let expected_rv = vm.metadata.resource_version.take();
        let name = prepare_meta(&mut vm.metadata, namespace)?;
        vm.admit(&self.lc.opts.support)?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.lc.state);
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
        if cur.metadata.deletion_timestamp.is_some()
            && vm.metadata.finalizers.iter().any(|f| !cur.metadata.finalizers.contains(f))
        {
            return Err(StatusCause::forbidden(
                "metadata.finalizers",
                &format!(
                    "no new finalizers can be added if the object is being deleted (VirtualMachine {key})"
                ),
            )
            .into());
        }
        let changed = cur.spec != vm.spec
            || cur.metadata.labels != vm.metadata.labels
            || cur.metadata.annotations != vm.metadata.annotations
            || cur.metadata.finalizers != vm.metadata.finalizers;
        if changed {
            if cur.spec != vm.spec {
                cur.metadata.generation = Some(cur.metadata.generation.unwrap_or(1) + 1);
            }
            cur.spec = vm.spec;
            cur.metadata.labels = vm.metadata.labels;
            cur.metadata.annotations = vm.metadata.annotations;
            cur.metadata.finalizers = vm.metadata.finalizers;
            self.lc.persist().persist_vm(&mut st, &key)?;
        }
        let out = st.vms.get(&key).map(|b| (**b).clone());
        drop(st);
        self.lc.enqueue(&key);
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name })
    }

    /// One VM.
    pub fn get(&self, namespace: &str, name: &str) -> Result<VirtualMachine, LifecycleError> {
        lock(&self.lc.state).vms.get(&Key::new(namespace, name)).map(|b| (**b).clone()).ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() }
        })
    }

    /// The VMs of `namespace`, or of all namespaces.
    pub fn list(&self, namespace: Option<&str>) -> Vec<VirtualMachine> {
        lock(&self.lc.state)
            .vms
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// The VMs of `namespace` (or of all namespaces) whose labels `selector` selects.
    pub fn list_selected(&self, namespace: Option<&str>, selector: &LabelSelector) -> Vec<VirtualMachine> {
        lock(&self.lc.state)
            .vms
            .iter()
            .filter(|(k, v)| {
                namespace.is_none_or(|n| n == k.namespace) && selector.matches(&v.metadata.labels)
            })
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// How many VMs are defined.
    pub fn count(&self) -> usize {
        lock(&self.lc.state).vms.len()
    }

    /// Deletes a VM: its instance is stopped (gracefully) and deleted first.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<VirtualMachine, LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.lc.state);
        let vm = st.vms.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachine.resource(),
            name: name.into(),
        })?;
        if vm.metadata.deletion_timestamp.is_none() {
            vm.metadata.deletion_timestamp = Some(now());
            st.deleting_vms.insert(key.clone());
            self.lc.persist().persist_vm(&mut st, &key)?;
            self.lc.persist().event_locked(
                &mut st,
                Kind::VirtualMachine,
                &key,
                "Normal",
                "Deleting",
                "VirtualMachine deletion requested".into(),
            );
        }
        let out = st.vms.get(&key).map(|b| (**b).clone());
        drop(st);
        self.lc.enqueue(&key);
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() })
    }

    /// `virtctl start`.
    pub fn start(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        self.lc.vm_request(namespace, name, Request::Start, None)
    }

    /// `virtctl stop`; `grace` overrides the VMI's `terminationGracePeriodSeconds` (0 forces).
    pub fn stop(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        self.lc.vm_request(namespace, name, Request::Stop, grace)
    }

    /// `virtctl restart`.
    pub fn restart(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        self.lc.vm_request(namespace, name, Request::Restart, grace)
    }

    /// Deletes a VM with a propagation policy (the module doc); `None` is [`Vms::delete`].
    /// Returns the VM as it was last stored (with its `deletionTimestamp`).
    pub fn delete_with(
        &self,
        namespace: &str,
        name: &str,
        propagation: Option<Propagation>,
    ) -> Result<VirtualMachine, LifecycleError> {
        let Some(p) = propagation else { return self.delete(namespace, name) };
        let key = Key::new(namespace, name);
        let not_found =
            || LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() };
        let mut st = lock(&self.lc.state);
        let vm = st.vms.get_mut(&key).ok_or_else(not_found)?;
        let mut changed = false;
        if vm.metadata.deletion_timestamp.is_none() {
            vm.metadata.deletion_timestamp = Some(now());
            changed = true;
        }
        if let Some(f) = p.finalizer() {
            if !vm.metadata.finalizers.iter().any(|x| x == f) {
                vm.metadata.finalizers.push(f.into());
                changed = true;
            }
        }
        if changed {
            st.deleting_vms.insert(key.clone());
            self.lc.persist().persist_vm(&mut st, &key)?;
            self.lc.persist().event_locked(
                &mut st,
                Kind::VirtualMachine,
                &key,
                "Normal",
                "Deleting",
                format!("VirtualMachine deletion requested (propagationPolicy {p:?})"),
            );
        }
        let out = st.vms.get(&key).map(|b| (**b).clone()).ok_or_else(not_found)?;
        if p == Propagation::Background && out.metadata.finalizers.is_empty() {
            let uid = uid_of(&out);
            let vmi = st.vmis.get(&key).map(|b| &**b).filter(|v| owns(&uid, v)).map(grace_of);
            if let Some(g) = vmi.filter(|_| !st.deleting_vmis.contains_key(&key)) {
                self.lc.delete_vmi_locked(&mut st, &key, g)?;
            }
            self.lc.gc().remove_vm_locked(&mut st, &key)?;
        }
        drop(st);
        self.lc.enqueue(&key);
        Ok(out)
    }
}
