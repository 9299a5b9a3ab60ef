//! The migration controller (a step of the lifecycle's pass): starts pending
//! `VirtualMachineInstanceMigration`s on a worker thread each ([`Runtime::migrate`]), records the
//! steps the workers report as the migration's phase, and when one ends adopts the new machine
//! (success) or leaves the source running (failure), writing `vmi.status.migrationState` with
//! KubeVirt's fields. While a migration is under way, the end of the source's machine is not the
//! VMI's end: the VMI controller leaves it to this one.

use super::migrations::{
    migration_final, phase_of_migration, set_migration_phase, Flight, Migrated, MigrationError,
    MigrationStep, MigrationTicket, Progress,
};
use super::*;
use crate::model::MigrationState;

/// What one pass of the migration step leaves to do outside the lock.
#[derive(Default)]
pub(super) struct MigrationWork {
    start: Vec<(VirtualMachineInstance, Arc<Flight>)>,
    cancel: Vec<VirtualMachineInstance>,
}

fn migration_state(vmi: &mut VirtualMachineInstance) -> &mut MigrationState {
    vmi.status.get_or_insert_with(Default::default).migration_state.get_or_insert_with(Default::default)
}

/// A VMI's `status.migrationState` when migration `uid` starts (KubeVirt's fields): pre-copy, not
/// completed, from `source_node` to `target_node`, under the named MigrationPolicy if one matched.
pub fn migration_started(
    uid: &str,
    source_node: &str,
    target_node: &str,
    policy: Option<String>,
) -> MigrationState {
    MigrationState {
        start_timestamp: Some(now()),
        source_node: Some(source_node.to_string()),
        target_node: Some(target_node.to_string()),
        migration_uid: Some(uid.to_string()),
        mode: Some("PreCopy".into()),
        completed: Some(false),
        failed: Some(false),
        migration_policy_name: policy,
        ..Default::default()
    }
}

/// Records a step the migration reached in `s`; returns the migration's phase for it.
pub fn migration_step(s: &mut MigrationState, step: &MigrationStep) -> &'static str {
    match step {
        MigrationStep::TargetReady { target } => {
            if s.target_pod.is_none() {
                s.target_pod = Some(target.clone());
            }
            "TargetReady"
        }
        MigrationStep::Running { configuration, .. } => {
            s.migration_configuration = Some(configuration.clone());
            "Running"
        }
    }
}

/// Records in `s` that the VM moved from launcher (pod) `source` into `target`, as the source
/// measured it (`report`); `aborting`: a cancel came after the commit point.
pub fn migration_succeeded(
    s: &mut MigrationState,
    report: &crate::machine::migrate::MigrationReport,
    source: String,
    target: String,
    aborting: bool,
) {
    s.end_timestamp = Some(now());
    s.target_node_domain_detected = Some(true);
    s.target_node_domain_ready_timestamp = s.end_timestamp.clone();
    s.source_pod = Some(source);
    s.target_pod = Some(target);
    s.completed = Some(true);
    s.failed = Some(false);
    if let Some(mode) = &report.mode {
        // Past the completion timeout it switched to post-copy or paused the guest.
        s.mode = Some(mode.clone());
    }
    if aborting {
        // The cancel came after the commit point: the VM had moved.
        s.abort_status = Some("Failed".into());
    }
    s.migration_stats = Some(to_value(report));
}

/// Records in `s` that the migration failed (`why`) or was `cancelled`; the source runs on.
pub fn migration_failed(s: &mut MigrationState, why: &str, cancelled: bool) {
    s.end_timestamp = Some(now());
    s.completed = Some(true);
    s.failed = Some(true);
    s.failure_reason = Some(why.to_string());
    if cancelled {
        s.abort_requested = Some(true);
        s.abort_status = Some("Succeeded".into());
    }
}

fn state_value(vmi: Option<&VirtualMachineInstance>) -> serde_json::Value {
    vmi.and_then(|v| v.status.as_ref())
        .and_then(|s| s.migration_state.as_ref())
        .map(to_value)
        .unwrap_or_default()
}

impl MigrationController<'_> {
    /// The migration step of a pass: records what workers reported, starts pending migrations,
    /// removes deleted ones that are not under way. Failures are per object (`failed`).
    pub(super) fn sync_migrations(&self, failed: &mut BTreeSet<Key>) {
        let work = {
            let mut st = lock(&self.lc.state);
            let mut work = MigrationWork::default();
            let flights: Vec<(Key, Arc<Flight>)> =
                st.flights.iter().map(|(k, f)| (k.clone(), f.clone())).collect();
            for (vmi_key, flight) in flights {
                let r = self.record_flight_locked(&mut st, &vmi_key, &flight, &mut work);
                let mk = flight.migration.clone();
                self.lc.reconciler().outcome_locked(&mut st, failed, &mk, r);
            }
            // Oldest first, as many as the parallel limits leave room for; the rest wait in
            // Pending for a later pass (one runs when a flight ends).
            let mut pending: Vec<(i64, Key)> = st
                .migrations
                .iter()
                .filter(|(k, m)| phase_of_migration(m) == "Pending" && !failed.contains(*k))
                .map(|(k, m)| {
                    let created =
                        m.metadata.creation_timestamp.as_ref().map_or(i64::MIN, Timestamp::unix_seconds);
                    (created, k.clone())
                })
                .collect();
            pending.sort();
            let limit = self.migration_slots();
            for (_, key) in pending {
                let deleted =
                    st.migrations.get(&key).is_some_and(|m| m.metadata.deletion_timestamp.is_some());
                if st.flights.len() >= limit && !deleted {
                    continue;
                }
                let r = self.begin_migration_locked(&mut st, &key, &mut work);
                self.lc.reconciler().outcome_locked(&mut st, failed, &key, r);
            }
            // Deleted and not under way (finished, or never started): gone.
            let gone: Vec<Key> = st
                .migrations
                .iter()
                .filter(|(k, m)| {
                    m.metadata.deletion_timestamp.is_some()
                        && !st.flights.values().any(|f| &f.migration == *k)
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in gone {
                let r = self.lc.store.delete(Kind::Migration, &key).map_err(LifecycleError::from);
                if r.is_ok() {
                    st.migrations.remove(&key);
                }
                self.lc.reconciler().outcome_locked(&mut st, failed, &key, r);
            }
            work
        };
        for (vmi, flight) in work.start {
            let runtime = self.lc.runtime.clone();
            let signal = self.lc.signal.clone();
            let name = vmi.metadata.name.clone().unwrap_or_default();
            let f = flight.clone();
            let key = Key::new(vmi.metadata.namespace.clone().unwrap_or_default(), name.clone());
            let spawned = std::thread::Builder::new().name(format!("migrate-{name}")).spawn(move || {
                let report = |step: MigrationStep| {
                    lock(&f.progress).steps.push(step);
                    signal.raise_key(&key);
                };
                let r = runtime.migrate(&vmi, &f.ticket, &report);
                lock(&f.progress).outcome = Some(r);
                signal.raise_key(&key);
            });
            if let Err(e) = spawned {
                lock(&flight.progress).outcome =
                    Some(Err(MigrationError::Failed(format!("no thread to run the migration: {e}"))));
                self.lc.signal.raise();
            }
        }
        if !work.cancel.is_empty() {
            // Off the controller's thread: a source that does not answer must not hold the pass.
            let runtime = self.lc.runtime.clone();
            let spawned = std::thread::Builder::new().name("migrate-cancel".into()).spawn(move || {
                for vmi in work.cancel {
                    runtime.cancel_migration(&vmi);
                }
            });
            if let Err(e) = spawned {
                log::warn!("no thread to cancel migrations ({e}); the next pass asks again");
            }
        }
    }

    /// How many migrations may be under way at once: on one node, the smaller of the cluster's
    /// and the node's limits (at least one).
    fn migration_slots(&self) -> usize {
        let o = &self.lc.opts;
        o.parallel_migrations_per_cluster.min(o.parallel_outbound_migrations_per_node).max(1)
    }

    /// Starts the pending migration at `key`, or fails it when its VMI cannot move now.
    fn begin_migration_locked(
        &self,
        st: &mut State,
        key: &Key,
        work: &mut MigrationWork,
    ) -> Result<(), LifecycleError> {
        let Some(m) = st.migrations.get(key) else { return Ok(()) };
        let vmi_name = m.spec.vmi_name.clone().unwrap_or_default();
        let uid = m.metadata.uid.clone().unwrap_or_default();
        let deleting = m.metadata.deletion_timestamp.is_some();
        let vmi_key = Key::new(&key.namespace, &vmi_name);
        let why_not = match st.vmis.get(&vmi_key) {
            _ if deleting => Some("the migration was deleted before it started".to_string()),
            None => Some(format!("the VMI {vmi_name} does not exist")),
            Some(v) if phase_of(v) != VmiPhase::Running || !st.live.contains_key(&vmi_key) => {
                Some(format!("the VMI {vmi_name} is not running"))
            }
            Some(_) if st.deleting_vmis.contains_key(&vmi_key) => {
                Some(format!("the VMI {vmi_name} is being deleted"))
            }
            Some(_) if st.flights.contains_key(&vmi_key) => {
                Some(format!("another migration of the VMI {vmi_name} is under way"))
            }
            Some(_) => None,
        };
        if let Some(why) = why_not {
            if let Some(m) = st.migrations.get_mut(key) {
                set_migration_phase(m, "Failed");
                if let Some(s) = m.status.as_mut() {
                    s["reason"] = why.clone().into();
                }
            }
            self.persist_migration(st, key)?;
            self.lc.persist().event_locked(st, Kind::Migration, key, "Warning", "FailedMigration", why);
            return Ok(());
        }
        let node = self.lc.opts.node_name.clone();
        // As KubeVirt's migration controller: the policy is matched once, when the migration starts.
        let policy = st.vmis.get(&vmi_key).and_then(|v| Self::policy_for_locked(st, v));
        if let Some(v) = st.vmis.get_mut(&vmi_key) {
            let name = policy.as_ref().map(super::policies::policy_name);
            *migration_state(v) = migration_started(&uid, &node, &node, name);
        }
        self.lc.persist().persist_vmi(st, &vmi_key)?;
        let state = state_value(st.vmis.get(&vmi_key).map(|b| &**b));
        if let Some(m) = st.migrations.get_mut(key) {
            set_migration_phase(m, "Scheduling");
            if let Some(s) = m.status.as_mut() {
                s["migrationState"] = state;
            }
        }
        self.persist_migration(st, key)?;
        let flight = Arc::new(Flight {
            migration: key.clone(),
            ticket: MigrationTicket {
                uid,
                name: key.name.clone(),
                cancel: Arc::new(AtomicBool::new(false)),
                policy,
            },
            progress: Mutex::new(Progress::default()),
        });
        st.flights.insert(vmi_key.clone(), flight.clone());
        if let Some(v) = st.vmis.get(&vmi_key) {
            work.start.push(((**v).clone(), flight));
        }
        self.lc.persist().event_locked(
            st,
            Kind::VirtualMachineInstance,
            &vmi_key,
            "Normal",
            "Migrating",
            format!("migration {} started: moving the VM into a new launcher", key.name),
        );
        Ok(())
    }

    /// Records what the worker of `flight` reported since the last pass.
    fn record_flight_locked(
        &self,
        st: &mut State,
        vmi_key: &Key,
        flight: &Arc<Flight>,
        work: &mut MigrationWork,
    ) -> Result<(), LifecycleError> {
        let (steps, outcome) = {
            let mut p = lock(&flight.progress);
            (std::mem::take(&mut p.steps), p.outcome.take())
        };
        let key = &flight.migration;
        for step in steps {
            let phase = match st.vmis.get_mut(vmi_key) {
                Some(v) => migration_step(migration_state(v), &step),
                None => "Running",
            };
            match &step {
                MigrationStep::TargetReady { .. } => {}
                MigrationStep::Running { not_honoured, .. } => {
                    if !not_honoured.is_empty() {
                        let why = format!("migration {}: {}", key.name, not_honoured.join("; "));
                        self.lc.persist().event_locked(
                            st,
                            Kind::VirtualMachineInstance,
                            vmi_key,
                            "Warning",
                            "MigrationSettingNotHonoured",
                            why,
                        );
                    }
                }
            }
            if let Some(m) = st.migrations.get_mut(key) {
                if !migration_final(m) {
                    set_migration_phase(m, phase);
                }
            }
        }
        let aborting = flight.ticket.cancelled();
        if aborting {
            if let Some(v) = st.vmis.get_mut(vmi_key) {
                let s = migration_state(v);
                if s.abort_requested != Some(true) {
                    s.abort_requested = Some(true);
                    s.abort_status = Some("Aborting".into());
                }
            }
        }
        let Some(outcome) = outcome else {
            self.lc.persist().persist_vmi(st, vmi_key)?;
            let state = state_value(st.vmis.get(vmi_key).map(|b| &**b));
            if let Some(m) = st.migrations.get_mut(key) {
                if let Some(s) = m.status.as_mut() {
                    s["migrationState"] = state;
                }
            }
            self.persist_migration(st, key)?;
            if aborting {
                // Again on every pass until the worker ends: a cancel that reached the source
                // before its migration began is harmless, and one that came too early is repeated.
                if let Some(v) = st.vmis.get(vmi_key) {
                    work.cancel.push((**v).clone());
                }
            }
            return Ok(());
        };
        st.flights.remove(vmi_key);
        match outcome {
            Ok(done) => self.migrated_locked(st, vmi_key, key, done, aborting),
            Err(e) => self.migration_failed_locked(st, vmi_key, key, e, aborting),
        }
    }

    fn migrated_locked(
        &self,
        st: &mut State,
        vmi_key: &Key,
        key: &Key,
        done: Migrated,
        aborting: bool,
    ) -> Result<(), LifecycleError> {
        let Migrated { machine, report, source, target } = done;
        super::vmi_controller::watch(vmi_key.clone(), machine.clone(), self.lc.signal.clone());
        let last = machine.status();
        match st.live.get_mut(vmi_key) {
            Some(l) => {
                l.machine = machine;
                l.last = last;
            }
            None => {
                st.live
                    .insert(vmi_key.clone(), Live { machine, stop_deadline: None, soft_reboot: false, last });
            }
        }
        if let Some(v) = st.vmis.get_mut(vmi_key) {
            migration_succeeded(migration_state(v), &report, source, target.clone(), aborting);
        }
        self.lc.persist().persist_vmi(st, vmi_key)?;
        let state = state_value(st.vmis.get(vmi_key).map(|b| &**b));
        if let Some(m) = st.migrations.get_mut(key) {
            set_migration_phase(m, "Succeeded");
            if let Some(s) = m.status.as_mut() {
                s["migrationState"] = state;
            }
        }
        self.persist_migration(st, key)?;
        let ms = report.downtime_us as f64 / 1000.0;
        self.lc.persist().event_locked(
            st,
            Kind::VirtualMachineInstance,
            vmi_key,
            "Normal",
            "Migrated",
            format!("The VirtualMachineInstance migrated to launcher {target} (downtime {ms:.1} ms)"),
        );
        // Deleted while it moved: stop it where it runs now.
        if let Some(g) = st.deleting_vmis.get(vmi_key).copied() {
            if let Some(l) = st.live.get_mut(vmi_key) {
                l.stop_deadline = None;
            }
            self.lc.begin_stop_locked(st, vmi_key, g);
        }
        Ok(())
    }

    fn migration_failed_locked(
        &self,
        st: &mut State,
        vmi_key: &Key,
        key: &Key,
        e: MigrationError,
        aborting: bool,
    ) -> Result<(), LifecycleError> {
        let cancelled = aborting || matches!(e, MigrationError::Cancelled);
        let why = e.to_string();
        if let Some(v) = st.vmis.get_mut(vmi_key) {
            migration_failed(migration_state(v), &why, cancelled);
        }
        self.lc.persist().persist_vmi(st, vmi_key)?;
        let state = state_value(st.vmis.get(vmi_key).map(|b| &**b));
        if let Some(m) = st.migrations.get_mut(key) {
            set_migration_phase(m, "Failed");
            if let Some(s) = m.status.as_mut() {
                s["migrationState"] = state;
                s["reason"] = why.clone().into();
            }
        }
        self.persist_migration(st, key)?;
        let reason = if cancelled { "MigrationAborted" } else { "MigrationFailed" };
        self.lc.persist().event_locked(st, Kind::VirtualMachineInstance, vmi_key, "Warning", reason, why);
        Ok(())
    }

    /// Whether `key`'s VMI has a migration under way (its source machine's end is not its own).
    pub(super) fn migrating(st: &State, key: &Key) -> bool {
        st.flights.contains_key(key)
    }
}
