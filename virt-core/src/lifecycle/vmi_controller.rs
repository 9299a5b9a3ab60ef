//! The VMI controller: launches instances, follows their machines (phases, conditions, events),
//! stops them within their grace period, finds them again after a restart, and removes them.

use super::*;

/// Watches one machine's events and queues its VMI for the controller on each (pause, resume, its end), so that
/// a VMI's phase follows its machine at once without polling every machine on every tick.
pub(super) fn watch(key: Key, machine: Arc<dyn Machine>, signal: Arc<Signal>) {
    let spawned = std::thread::Builder::new().name(format!("watch-{}", key.name)).spawn(move || loop {
        match machine.next_event(Duration::from_secs(3600)) {
            Some(crate::machine::MachineEvent::Ended(_)) => {
                signal.raise_key(&key);
                return;
            }
            Some(_) => signal.raise_key(&key),
            None => {
                if matches!(machine.status(), MachineStatus::Stopped(_)) {
                    signal.raise_key(&key);
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

/// What a machine says of itself: its status, and its guest agent's report while it runs.
fn look(m: &Arc<dyn Machine>) -> (MachineStatus, Option<crate::agent::AgentReport>) {
    let status = m.status();
    let agent = match status {
        MachineStatus::Running | MachineStatus::Paused => m.guest_agent(),
        _ => None,
    };
    (status, agent)
}

pub(super) fn grace_of(vmi: &VirtualMachineInstance) -> i64 {
    vmi.spec.termination_grace_period_seconds.unwrap_or(DEFAULT_GRACE_SECONDS).max(0)
}

impl Lifecycle {
    pub(super) fn remove_vmi_locked(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        if st.vmis.contains_key(key) {
            self.persist().flush_batch(st)?;
            self.store.delete(Kind::VirtualMachineInstance, key)?;
        }
        st.deleting_vmis.remove(key);
        st.relaunch.remove(key);
        st.live.remove(key);
        if let Some(v) = st.vmis.remove(key) {
            self.runtime.cleanup(&v);
            self.persist().event_locked(
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

    /// Asks the guest to power off, forced after `grace` seconds.
    pub(super) fn begin_stop_locked(&self, st: &mut State, key: &Key, grace: i64) {
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
        self.persist().event_locked(st, Kind::VirtualMachineInstance, key, "Normal", reason, msg);
    }

    /// Marks the VMI deleted (stored first) and asks its guest to power off.
    pub(super) fn delete_vmi_locked(
        &self,
        st: &mut State,
        key: &Key,
        grace: i64,
    ) -> Result<(), LifecycleError> {
        if let Some(v) = st.vmis.get_mut(key) {
            if v.metadata.deletion_timestamp.is_none() {
                v.metadata.deletion_timestamp = Some(now());
            }
            v.metadata.deletion_grace_period_seconds = Some(grace);
        }
        self.persist().persist_vmi(st, key)?;
        st.deleting_vmis.insert(key.clone(), grace);
        self.begin_stop_locked(st, key, grace);
        Ok(())
    }
}

impl VmiController<'_> {
    /// Finds the machines of VMIs that were running before a restart.
    pub(super) fn reattach_all(&self) -> Result<(), LifecycleError> {
        let candidates: Vec<(Key, VirtualMachineInstance)> = {
            let st = lock(&self.lc.state);
            st.vmis
                .iter()
                .filter(|(_, v)| {
                    matches!(phase_of(v), VmiPhase::Scheduling | VmiPhase::Scheduled | VmiPhase::Running)
                })
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect()
        };
        for (key, vmi) in candidates {
            match self.lc.runtime.reattach(&vmi) {
                Some(machine) => {
                    watch(key.clone(), machine.clone(), self.lc.signal.clone());
                    let last = machine.status();
                    log::info!("VMI {key}: found its running machine again ({last:?})");
                    let mut st = lock(&self.lc.state);
                    st.live
                        .insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                    self.lc.persist().event_locked(
                        &mut st,
                        Kind::VirtualMachineInstance,
                        &key,
                        "Normal",
                        "Reattached",
                        "the node restarted and found the VMI's machine running".into(),
                    );
                }
                None => {
                    let mut st = lock(&self.lc.state);
                    let exit = self.lc.runtime.last_exit(&vmi);
                    match (phase_of(&vmi), exit) {
                        (_, Some(exit)) => self.machine_ended_locked(&mut st, &key, exit)?,
                        (VmiPhase::Scheduling, None) => {
                            // Its launch was cut short: launch it again.
                            if let Some(v) = st.vmis.get_mut(&key) {
                                set_phase(v, VmiPhase::Pending);
                            }
                            self.lc.persist().persist_vmi(&mut st, &key)?;
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

    pub(super) fn launch(
        &self,
        key: &Key,
        vmi: &VirtualMachineInstance,
        in_place: bool,
    ) -> Result<(), LifecycleError> {
        let result = self.lc.runtime.launch(vmi);
        if let Ok(m) = &result {
            watch(key.clone(), m.clone(), self.lc.signal.clone());
        }
        let observe_now = result.as_ref().ok().cloned();
        if in_place {
            let mut st = lock(&self.lc.state);
            st.launching.remove(key);
            match result {
                Ok(machine) => {
                    let last = machine.status();
                    st.live
                        .insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                    // Deleted while it was starting again: stop it now.
                    if let Some(g) = st.deleting_vmis.get(key).copied() {
                        self.lc.begin_stop_locked(&mut st, key, g);
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
        // Running is usually true at once: say so without waiting for the next pass, in the same
        // write batch as Scheduled (each still its own change). Asked before the lock: for a
        // launcher's machine these are round trips.
        let seen = observe_now.map(|m| {
            let (status, agent) = look(&m);
            (m, status, agent)
        });
        let mut st = lock(&self.lc.state);
        self.lc.persist().batched(&mut st, |st| {
            let status = seen.as_ref().map(|(_, s, _)| s.clone());
            self.launched_locked(st, key, result, status)?;
            match seen {
                Some((m, status, agent)) => self.observe_locked(st, key, &m, status, agent),
                None => Ok(()),
            }
        })
    }

    /// Records a launch's outcome: Scheduled with the machine's accelerator (its `status` when
    /// the caller already asked), or Failed.
    fn launched_locked(
        &self,
        st: &mut State,
        key: &Key,
        result: Result<Arc<dyn Machine>, LaunchError>,
        status: Option<MachineStatus>,
    ) -> Result<(), LifecycleError> {
        st.launching.remove(key);
        match result {
            Ok(machine) => {
                let acc = machine.accelerator();
                let last = status.unwrap_or_else(|| machine.status());
                let ended = matches!(last, MachineStatus::Stopped(_));
                let deleting = st.deleting_vmis.get(key).copied();
                st.live.insert(key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
                if let Some(v) = st.vmis.get_mut(key) {
                    let interfaces = self.lc.runtime.interfaces(v);
                    for i in v.spec.domain.devices.interfaces.iter_mut().filter(|i| i.mac_address.is_none()) {
                        let given = interfaces.iter().find(|s| s.name.as_deref() == Some(i.name.as_str()));
                        i.mac_address = given.and_then(|s| s.mac.clone());
                    }
                    set_phase(v, VmiPhase::Scheduled);
                    let s = v.status.get_or_insert_with(Default::default);
                    if !interfaces.is_empty() {
                        s.interfaces = interfaces;
                    }
                    let movable = self.lc.runtime.live_migratable(v);
                    let s = v.status.get_or_insert_with(Default::default);
                    set_condition(
                        &mut s.conditions,
                        match movable {
                            Ok(()) => condition(LIVE_MIGRATABLE, true, None, None),
                            Err(why) => {
                                condition(LIVE_MIGRATABLE, false, Some(&why.reason), Some(why.message))
                            }
                        },
                    );
                    // A machine that ended before it was asked (a guest that reset at once) says
                    // nothing of its accelerator: the condition stays as the last start left it.
                    if !ended {
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
                }
                self.lc.persist().persist_vmi(st, key)?;
                if acc.accelerator == Accelerator::Emulation && !ended {
                    self.lc.persist().event_locked(
                        st,
                        Kind::VirtualMachineInstance,
                        key,
                        "Warning",
                        "SoftwareEmulation",
                        acc.reason,
                    );
                }
                self.lc.persist().event_locked(
                    st,
                    Kind::VirtualMachineInstance,
                    key,
                    "Normal",
                    "Created",
                    "VirtualMachineInstance defined".into(),
                );
                if let Some(g) = deleting {
                    self.lc.begin_stop_locked(st, key, g);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                if st.deleting_vmis.contains_key(key) {
                    return self.lc.remove_vmi_locked(st, key);
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
                self.lc.persist().persist_vmi(st, key)?;
                self.note_failure_locked(st, key);
                self.lc.persist().event_locked(
                    st,
                    Kind::VirtualMachineInstance,
                    key,
                    "Warning",
                    "FailedCreate",
                    msg,
                );
            }
        }
        Ok(())
    }

    /// A pending VMI the runtime cannot launch yet: condition `DataVolumesReady`=False saying why;
    /// persisted (with an event) when it starts waiting or its reason changes, not on every
    /// change of the message (an import's progress).
    pub(super) fn not_ready_locked(
        &self,
        st: &mut State,
        key: &Key,
        why: String,
    ) -> Result<(), LifecycleError> {
        let Some(v) = st.vmis.get_mut(key) else { return Ok(()) };
        let s = v.status.get_or_insert_with(Default::default);
        let was_waiting =
            s.conditions.iter().any(|c| c.type_ == DATA_VOLUMES_READY && c.status == ConditionStatus::False);
        set_condition(
            &mut s.conditions,
            condition(DATA_VOLUMES_READY, false, Some("NotAllDVsReady"), Some(why.clone())),
        );
        if !was_waiting {
            self.lc.persist().persist_vmi(st, key)?;
            self.lc.persist().event_locked(
                st,
                Kind::VirtualMachineInstance,
                key,
                "Normal",
                "NotAllDVsReady",
                why,
            );
        }
        Ok(())
    }

    pub(super) fn note_failure_locked(&self, st: &mut State, key: &Key) {
        let b = st.backoff.entry(key.clone()).or_insert(Backoff { failures: 0, until: Instant::now() });
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32.checked_shl(b.failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        let delay = self.lc.opts.backoff_base.saturating_mul(factor).min(self.lc.opts.backoff_max);
        b.until = Instant::now() + delay;
    }

    /// Reads a machine's status into its VMI.
    pub(super) fn observe(&self, key: &Key, m: &Arc<dyn Machine>) -> Result<(), LifecycleError> {
        // Asked outside the lock: for a launcher's machine it is a round trip.
        let (status, agent) = look(m);
        let mut st = lock(&self.lc.state);
        self.observe_locked(&mut st, key, m, status, agent)
    }

    /// [`Lifecycle::observe`] with what the machine said.
    fn observe_locked(
        &self,
        st: &mut State,
        key: &Key,
        m: &Arc<dyn Machine>,
        status: MachineStatus,
        agent: Option<crate::agent::AgentReport>,
    ) -> Result<(), LifecycleError> {
        let migrating = MigrationController::migrating(st, key);
        let Some(l) = st.live.get_mut(key) else { return Ok(()) };
        if !Arc::ptr_eq(&l.machine, m) {
            // A machine the VMI moved away from (a completed migration).
            return Ok(());
        }
        if migrating && matches!(status, MachineStatus::Stopped(_) | MachineStatus::Paused) {
            // The source of a migration under way stopped: the migration controller decides
            // whether the VM moved (and adopts its new machine) or ended. Paused: the migration
            // paused it (stop-and-copy, QEMU's completion, allowWorkloadDisruption), not the
            // user; if the migration fails the source resumes and reports Running again.
            return Ok(());
        }
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
                    changed |= super::agent_status::apply(v, agent.as_ref());
                }
                if became_running {
                    self.lc.persist().event_locked(
                        st,
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
                        if Instant::now() > b.until + self.lc.opts.backoff_base {
                            st.backoff.remove(key);
                        }
                    }
                }
            }
            MachineStatus::Stopped(exit) => {
                let exit = exit.clone();
                return self.machine_ended_locked(st, key, exit);
            }
        }
        if changed {
            // The VM's status (printableStatus, ready) follows its instance at once, in the same
            // write batch.
            self.lc.persist().batched(st, |st| {
                self.lc.persist().persist_vmi(st, key)?;
                self.lc.vm_ctl().update_vm_status_locked(st, key)
            })?;
        }
        Ok(())
    }

    /// A VMI's machine ended with `exit`: start it again in place (a guest reboot, a soft reboot),
    /// or finish the VMI.
    pub(super) fn machine_ended_locked(
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
                self.lc.persist().event_locked(
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
                self.lc.signal.raise_key(key);
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

    pub(super) fn finish_locked(
        &self,
        st: &mut State,
        key: &Key,
        exit: MachineExit,
    ) -> Result<(), LifecycleError> {
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
        if let Some(v) = st.vmis.get(key) {
            self.lc.runtime.ended(v);
        }
        if phase == VmiPhase::Failed {
            self.note_failure_locked(st, key);
        }
        self.lc.persist().persist_vmi(st, key)?;
        self.lc.persist().event_locked(st, Kind::VirtualMachineInstance, key, type_, reason, msg);
        Ok(())
    }
}
