//! The requests users make of VMs and VMIs: create, replace, get, list, delete, and the
//! `virtctl` verbs (start, stop, restart, pause, unpause, soft-reboot).

use super::*;
use crate::api::StatusCause;

impl Lifecycle {
    /// Creates a VM in `namespace` (`metadata.namespace`, if set, must agree). Validation and the
    /// node's limits are checked first; every problem names its field.
    pub fn create_vm(
        &self,
        namespace: &str,
        mut vm: VirtualMachine,
    ) -> Result<VirtualMachine, LifecycleError> {
        let name = prepare_meta(&mut vm.metadata, namespace)?;
        vm.admit(&self.opts.support)?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        Self::require_namespace(&st, namespace)?;
        if st.vms.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists { resource: Kind::VirtualMachine.resource(), name });
        }
        vm.metadata.generation = Some(1);
        vm.status =
            Some(VirtualMachineStatus { printable_status: Some("Stopped".into()), ..Default::default() });
        // Stored first: a VM nobody could find after a crash is never shown.
        let rv = self.store.put(&StoredObject {
            kind: Kind::VirtualMachine,
            key: key.clone(),
            value: to_value(&vm),
        })?;
        vm.metadata.resource_version = Some(rv.to_string());
        st.vms.insert(key.clone(), Box::new(vm.clone()));
        drop(st);
        self.enqueue(&key);
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
        vm.admit(&self.opts.support)?;
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
            self.persist_vm(&mut st, &key)?;
        }
        let out = st.vms.get(&key).map(|b| (**b).clone());
        drop(st);
        self.enqueue(&key);
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name })
    }

    /// One VM.
    pub fn get_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, LifecycleError> {
        lock(&self.state).vms.get(&Key::new(namespace, name)).map(|b| (**b).clone()).ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() }
        })
    }

    /// The VMs of `namespace`, or of all namespaces.
    pub fn list_vms(&self, namespace: Option<&str>) -> Vec<VirtualMachine> {
        lock(&self.state)
            .vms
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// The VMs of `namespace` (or of all namespaces) whose labels `selector` selects.
    pub fn list_vms_selected(
        &self,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<VirtualMachine> {
        lock(&self.state)
            .vms
            .iter()
            .filter(|(k, v)| {
                namespace.is_none_or(|n| n == k.namespace) && selector.matches(&v.metadata.labels)
            })
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// The VMIs of `namespace` (or of all namespaces) whose labels `selector` selects.
    pub fn list_vmis_selected(
        &self,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<VirtualMachineInstance> {
        lock(&self.state)
            .vmis
            .iter()
            .filter(|(k, v)| {
                namespace.is_none_or(|n| n == k.namespace) && selector.matches(&v.metadata.labels)
            })
            .map(|(_, v)| (**v).clone())
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
        let out = st.vms.get(&key).map(|b| (**b).clone());
        drop(st);
        self.enqueue(&key);
        out.ok_or(LifecycleError::NotFound { resource: Kind::VirtualMachine.resource(), name: name.into() })
    }

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
        self.enqueue(&key);
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

    /// Creates a standalone VMI (it starts at once).
    pub fn create_vmi(
        &self,
        namespace: &str,
        mut vmi: VirtualMachineInstance,
    ) -> Result<VirtualMachineInstance, LifecycleError> {
        let name = prepare_meta(&mut vmi.metadata, namespace)?;
        vmi.admit(&self.opts.support)?;
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
        let rv = self.store.put(&StoredObject {
            kind: Kind::VirtualMachineInstance,
            key: key.clone(),
            value: to_value(&vmi),
        })?;
        vmi.metadata.resource_version = Some(rv.to_string());
        st.vmis.insert(key.clone(), Box::new(vmi.clone()));
        drop(st);
        self.enqueue(&key);
        Ok(vmi)
    }

    /// One VMI.
    pub fn get_vmi(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, LifecycleError> {
        lock(&self.state).vmis.get(&Key::new(namespace, name)).map(|b| (**b).clone()).ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachineInstance.resource(), name: name.into() }
        })
    }

    /// The VMIs of `namespace`, or of all namespaces.
    pub fn list_vmis(&self, namespace: Option<&str>) -> Vec<VirtualMachineInstance> {
        lock(&self.state)
            .vmis
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| (**v).clone())
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
        // As KubeVirt: through the guest agent while it is connected, else the ACPI power button
        // (the machine is started again when the guest powers off).
        let via_agent = match m.guest_shutdown(crate::agent::ShutdownMode::Reboot) {
            Ok(()) => true,
            Err(crate::machine::MachineError::Agent { absent: true, .. }) => {
                m.power_down()
                    .map_err(|e| LifecycleError::Conflict(format!("soft reboot of VMI {key}: {e}")))?;
                false
            }
            Err(e) => return Err(LifecycleError::Conflict(format!("soft reboot of VMI {key}: {e}"))),
        };
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
            if via_agent {
                "asked the guest agent to reboot the guest".into()
            } else {
                "asked the guest to power off; it starts again when it does".into()
            },
        );
        Ok(())
    }
    /// The guest agent's report of a running VMI (KubeVirt's `guestosinfo`, `userlist` and
    /// `filesystemlist`); a conflict when no agent is connected.
    pub fn guest_agent(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<crate::agent::AgentReport, LifecycleError> {
        let (key, m) = self.live_machine(namespace, name, "ask the guest agent of")?;
        match m.guest_agent() {
            Some(r) if r.connected => Ok(r),
            _ => Err(LifecycleError::Conflict(format!("VMI {key} does not have guest agent connected"))),
        }
    }

    /// Gives a running VMI's guest agent new SSH keys and passwords to keep (its `qemuGuestAgent`
    /// access credentials' Secret changed).
    pub fn set_guest_credentials(
        &self,
        namespace: &str,
        name: &str,
        credentials: crate::agent::GuestCredentials,
    ) -> Result<(), LifecycleError> {
        let (key, m) = self.live_machine(namespace, name, "update the access credentials of")?;
        m.guest_set_credentials(credentials).map_err(|e| LifecycleError::Conflict(format!("VMI {key}: {e}")))
    }

    /// Freezes (`true`) or thaws the file systems of a running VMI through its guest agent (KubeVirt's
    /// `freeze` and `unfreeze`); returns the freeze status after it.
    pub fn fs_freeze(&self, namespace: &str, name: &str, freeze: bool) -> Result<String, LifecycleError> {
        let op = if freeze { "freeze" } else { "unfreeze" };
        let (key, m) = self.live_machine(namespace, name, op)?;
        let status = m
            .guest_fs_freeze(freeze)
            .map_err(|e| LifecycleError::Conflict(format!("{op} VMI {key}: {e}")))?;
        let mut st = lock(&self.state);
        if let Some(v) = st.vmis.get_mut(&key) {
            let s = v.status.get_or_insert_with(Default::default);
            s.fs_freeze_status = (status == "frozen").then(|| status.clone());
        }
        self.persist_vmi(&mut st, &key)?;
        Ok(status)
    }
}
