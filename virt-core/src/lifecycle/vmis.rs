//! The requests users make of VMIs: create, get, list, delete, and the verbs on a running one
//! (pause, unpause, soft reboot, the guest agent's operations).

use super::*;

impl Vmis<'_> {
    /// The VMIs of `namespace` (or of all namespaces) whose labels `selector` selects.
    pub fn list_selected(
        &self,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<VirtualMachineInstance> {
        lock(&self.lc.state)
            .vmis
            .iter()
            .filter(|(k, v)| {
                namespace.is_none_or(|n| n == k.namespace) && selector.matches(&v.metadata.labels)
            })
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// Creates a standalone VMI (it starts at once).
    pub fn create(
        &self,
        namespace: &str,
        mut vmi: VirtualMachineInstance,
    ) -> Result<VirtualMachineInstance, LifecycleError> {
        let name = prepare_meta(&mut vmi.metadata, namespace)?;
        vmi.admit(&self.lc.opts.support)?;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.lc.state);
        Lifecycle::require_namespace(&st, namespace)?;
        if st.vmis.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists {
                resource: Kind::VirtualMachineInstance.resource(),
                name,
            });
        }
        vmi.status = None;
        set_phase(&mut vmi, VmiPhase::Pending);
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::VirtualMachineInstance,
            key: key.clone(),
            value: to_value(&vmi),
        })?;
        vmi.metadata.resource_version = Some(rv.to_string());
        st.vmis.insert(key.clone(), Box::new(vmi.clone()));
        drop(st);
        self.lc.enqueue(&key);
        Ok(vmi)
    }

    /// One VMI.
    pub fn get(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, LifecycleError> {
        lock(&self.lc.state).vmis.get(&Key::new(namespace, name)).map(|b| (**b).clone()).ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::VirtualMachineInstance.resource(), name: name.into() }
        })
    }

    /// The VMIs of `namespace`, or of all namespaces.
    pub fn list(&self, namespace: Option<&str>) -> Vec<VirtualMachineInstance> {
        lock(&self.lc.state)
            .vmis
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, v)| (**v).clone())
            .collect()
    }

    /// Deletes a VMI: its guest is asked to power off, and forced off after `grace` seconds (the
    /// VMI's `terminationGracePeriodSeconds` when `None`). A VM whose strategy wants an instance
    /// gets a new one, as in KubeVirt.
    pub fn delete(&self, namespace: &str, name: &str, grace: Option<i64>) -> Result<(), LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.lc.state);
        let vmi = st.vmis.get_mut(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::VirtualMachineInstance.resource(),
            name: name.into(),
        })?;
        let g = grace.unwrap_or_else(|| grace_of(vmi)).max(0);
        self.lc.delete_vmi_locked(&mut st, &key, g)?;
        drop(st);
        self.lc.enqueue(&key);
        Ok(())
    }

    /// The machine of a running VMI (for consoles and displays).
    pub fn machine(&self, namespace: &str, name: &str) -> Result<Arc<dyn Machine>, LifecycleError> {
        self.lc.live_machine(namespace, name, "reach").map(|(_, m)| m)
    }

    /// Records what a user's verb did to the machine of `key` (its status now, and a Normal event).
    fn observed_by_user(
        &self,
        key: &Key,
        m: &Arc<dyn Machine>,
        reason: &str,
        message: &str,
    ) -> Result<(), LifecycleError> {
        self.lc.vmi_ctl().observe(key, m)?;
        let mut st = lock(&self.lc.state);
        self.lc.persist().event_locked(
            &mut st,
            Kind::VirtualMachineInstance,
            key,
            "Normal",
            reason,
            message.into(),
        );
        Ok(())
    }

    /// `virtctl pause vmi`.
    pub fn pause(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.lc.live_machine(namespace, name, "pause")?;
        if m.status() == MachineStatus::Paused {
            return Err(LifecycleError::Conflict(format!("VMI {key} is already paused")));
        }
        m.pause().map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        self.observed_by_user(&key, &m, "Paused", "VMI was paused by user")
    }

    /// `virtctl unpause vmi`.
    pub fn unpause(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.lc.live_machine(namespace, name, "unpause")?;
        if m.status() != MachineStatus::Paused {
            return Err(LifecycleError::Conflict(format!("VMI {key} is not paused")));
        }
        m.resume().map_err(|e| LifecycleError::Conflict(e.to_string()))?;
        self.observed_by_user(&key, &m, "Unpaused", "VMI was unpaused by user")
    }

    /// `virtctl soft-reboot`: the guest is asked to power off (ACPI power button) and its machine
    /// starts again in place when it does; the VMI stays Running.
    pub fn soft_reboot(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let (key, m) = self.lc.live_machine(namespace, name, "soft-reboot")?;
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
        let mut st = lock(&self.lc.state);
        if let Some(l) = st.live.get_mut(&key) {
            l.soft_reboot = true;
        }
        self.lc.persist().event_locked(
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
        let (key, m) = self.lc.live_machine(namespace, name, "ask the guest agent of")?;
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
        let (key, m) = self.lc.live_machine(namespace, name, "update the access credentials of")?;
        m.guest_set_credentials(credentials).map_err(|e| LifecycleError::Conflict(format!("VMI {key}: {e}")))
    }

    /// Freezes (`true`) or thaws the file systems of a running VMI through its guest agent (KubeVirt's
    /// `freeze` and `unfreeze`); returns the freeze status after it.
    pub fn fs_freeze(&self, namespace: &str, name: &str, freeze: bool) -> Result<String, LifecycleError> {
        let op = if freeze { "freeze" } else { "unfreeze" };
        let (key, m) = self.lc.live_machine(namespace, name, op)?;
        let status = m
            .guest_fs_freeze(freeze)
            .map_err(|e| LifecycleError::Conflict(format!("{op} VMI {key}: {e}")))?;
        let mut st = lock(&self.lc.state);
        if let Some(v) = st.vmis.get_mut(&key) {
            let s = v.status.get_or_insert_with(Default::default);
            s.fs_freeze_status = (status == "frozen").then(|| status.clone());
        }
        self.lc.persist().persist_vmi(&mut st, &key)?;
        Ok(status)
    }
}
