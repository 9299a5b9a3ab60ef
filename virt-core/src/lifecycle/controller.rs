//! The controller loop, shaped as kube-rs' `Controller`: requests and machine watchers queue the
//! keys of the objects they changed, and a pass reconciles those objects only (plus the ones whose
//! timers are due: grace periods, back-offs, requeues); every object is reconciled again on the
//! resync period. Each object is reconciled on its own, with an error policy per object (a
//! failure is logged and requeued with back-off; the others proceed).

use super::*;

/// Which objects a pass reconciles.
pub(super) enum Scope {
    /// Every object.
    All,
    /// The objects at these keys (a VM and its VMI share their key).
    Keys(BTreeSet<Key>),
}

impl Scope {
    fn has(&self, key: &Key) -> bool {
        match self {
            Self::All => true,
            Self::Keys(keys) => keys.contains(key),
        }
    }
}

/// How much reconciling a lifecycle did (for metrics, and to show a pass is driven by what changed).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReconcileStats {
    /// Passes run.
    pub passes: u64,
    /// Passes over every object ([`Lifecycle::reconcile`], [`Lifecycle::wake`], the resync).
    pub full_passes: u64,
    /// Objects (VMs and VMIs) reconciled, over all passes.
    pub objects: u64,
}

impl Lifecycle {
    /// Runs the controller until `stop` is set: reconciles the objects queued by requests and
    /// machine watchers as they come, the objects whose timers are due at least every
    /// [`LifecycleOptions::tick`], and every object every [`LifecycleOptions::resync`].
    pub fn run(&self, stop: &AtomicBool) {
        let mut next_resync = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let queued = std::mem::take(&mut *lock(&self.signal.queued));
            let now = Instant::now();
            if queued.all || now >= next_resync {
                self.reconciler().pass(Scope::All);
                next_resync = Instant::now() + self.opts.resync;
            } else {
                self.reconciler().pass(Scope::Keys(queued.keys));
            }
            let wait = self.opts.tick.min(next_resync.saturating_duration_since(Instant::now()));
            let queued = lock(&self.signal.queued);
            if queued.is_empty() {
                let _woken = self.signal.cv.wait_timeout(queued, wait).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// One pass of the controller over every object: observes machines, applies run strategies,
    /// launches pending VMIs, forces stops whose grace ran out, finishes deletions. Each object is
    /// reconciled on its own: one whose reconcile fails (its store write failed, ...) is logged and
    /// requeued with its own back-off ([`LifecycleOptions::requeue_base`]), and the pass goes on
    /// with the others.
    pub fn reconcile(&self) {
        self.reconciler().pass(Scope::All);
    }

    /// How much reconciling this lifecycle did so far.
    pub fn reconcile_stats(&self) -> ReconcileStats {
        lock(&self.state).stats
    }
}

impl Reconciler<'_> {
    /// The keys due without being queued: requeue and crash-loop back-offs that ran out, grace
    /// periods that ran out, and VMIs waiting to launch (their readiness depends on objects
    /// outside the lifecycle: DataVolumes, Secrets, the runtime's checks).
    fn due(st: &State, now: Instant) -> BTreeSet<Key> {
        let requeued = st.requeue.iter().chain(st.backoff.iter()).filter(|(_, b)| b.until <= now);
        let graceless = st.live.iter().filter(|(_, l)| l.stop_deadline.is_some_and(|d| d <= now));
        let waiting =
            st.vmis.iter().filter(|(k, v)| Self::awaiting_launch(st, k, v) && !st.launching.contains(*k));
        requeued
            .map(|(k, _)| k.clone())
            .chain(graceless.map(|(k, _)| k.clone()))
            .chain(waiting.map(|(k, _)| k.clone()))
            .collect()
    }

    /// One pass over the objects `scope` names and those whose timers are due.
    pub(super) fn pass(&self, scope: Scope) {
        let started = Instant::now();
        let scope = match scope {
            Scope::All => Scope::All,
            Scope::Keys(mut keys) => {
                keys.extend(Self::due(&lock(&self.lc.state), started));
                Scope::Keys(keys)
            }
        };
        {
            let mut st = lock(&self.lc.state);
            st.stats.passes += 1;
            st.stats.full_passes += u64::from(matches!(scope, Scope::All));
            st.stats.objects += match &scope {
                Scope::All => (st.vms.len() + st.vmis.len()) as u64,
                Scope::Keys(keys) => keys
                    .iter()
                    .map(|k| u64::from(st.vms.contains_key(k)) + u64::from(st.vmis.contains_key(k)))
                    .sum(),
            };
        }
        let mut failed = BTreeSet::new();
        // 1. Observe machines.
        let live: Vec<(Key, Arc<dyn Machine>)> = {
            let st = lock(&self.lc.state);
            st.live
                .iter()
                .filter(|(k, _)| scope.has(k) && !Self::deferred(&st, k, started))
                .map(|(k, l)| (k.clone(), l.machine.clone()))
                .collect()
        };
        for (key, m) in live {
            let r = self.lc.vmi_ctl().observe(&key, &m);
            self.outcome(&mut failed, &key, r);
        }
        // 1b. Migrations: record what their workers reported, start pending ones.
        self.lc.migration_ctl().sync_migrations(&mut failed);
        // 2. Grace periods that ran out.
        {
            let st = lock(&self.lc.state);
            let now = Instant::now();
            for (key, l) in st.live.iter() {
                if l.stop_deadline.is_some_and(|d| d <= now) && !matches!(l.last, MachineStatus::Stopped(_)) {
                    log::info!("VMI {key}: grace period over, stopping it");
                    if let Err(e) = l.machine.stop() {
                        log::warn!("VMI {key}: stop: {e}");
                    }
                }
            }
        }
        // 3. Finish deletions of VMIs without a machine.
        {
            let mut st = lock(&self.lc.state);
            let done: Vec<Key> = st
                .deleting_vmis
                .keys()
                .filter(|k| {
                    scope.has(k)
                        && !st.live.contains_key(*k)
                        && !st.launching.contains(*k)
                        && !Self::deferred(&st, k, started)
                })
                .cloned()
                .collect();
            for key in done {
                let r = self.lc.remove_vmi_locked(&mut st, &key);
                self.outcome_locked(&mut st, &mut failed, &key, r);
            }
        }
        // 4. VMs: run strategies and deletions.
        let keys: Vec<Key> = {
            let st = lock(&self.lc.state);
            st.vms.keys().filter(|k| scope.has(k) && !Self::deferred(&st, k, started)).cloned().collect()
        };
        for key in keys {
            if failed.contains(&key) {
                continue;
            }
            let r = self.lc.vm_ctl().sync_vm(&key);
            self.outcome(&mut failed, &key, r);
        }
        // 5. Launch pending VMIs the runtime finds ready; the others stay Pending, saying why.
        let candidates: Vec<(Key, VirtualMachineInstance)> = {
            let st = lock(&self.lc.state);
            st.vmis
                .iter()
                .filter(|(k, v)| {
                    scope.has(k)
                        && Self::awaiting_launch(&st, k, v)
                        && !st.launching.contains(*k)
                        && !st.deleting_vmis.contains_key(*k)
                        && !failed.contains(*k)
                        && !Self::deferred(&st, k, started)
                })
                .map(|(k, v)| (k.clone(), (**v).clone()))
                .collect()
        };
        let verdicts: Vec<(Key, Result<(), NotReady>)> =
            candidates.into_iter().map(|(k, v)| (k, self.lc.runtime.ready(&v))).collect();
        let pending: Vec<(Key, VirtualMachineInstance, bool)> = {
            let mut st = lock(&self.lc.state);
            let mut out = Vec::new();
            for (key, verdict) in verdicts {
                let still_pending = st.vmis.get(&key).is_some_and(|v| Self::awaiting_launch(&st, &key, v))
                    && !st.launching.contains(&key)
                    && !st.deleting_vmis.contains_key(&key);
                if !still_pending {
                    continue;
                }
                if let Err(why) = verdict {
                    let r = self.lc.vmi_ctl().not_ready_locked(&mut st, &key, why.to_string());
                    self.outcome_locked(&mut st, &mut failed, &key, r);
                    continue;
                }
                let Some(v) = st.vmis.get_mut(&key) else { continue };
                set_phase(v, VmiPhase::Scheduling);
                let st_ = v.status.get_or_insert_with(Default::default);
                st_.node_name = Some(self.lc.opts.node_name.clone());
                if st_.conditions.iter().any(|c| c.type_ == DATA_VOLUMES_READY) {
                    set_condition(
                        &mut st_.conditions,
                        condition(DATA_VOLUMES_READY, true, Some("AllDVsReady"), None),
                    );
                }
                let vmi = (**v).clone();
                match self.lc.persist().persist_vmi(&mut st, &key) {
                    Ok(()) => {
                        st.launching.insert(key.clone());
                        out.push((key, vmi, false));
                    }
                    Err(e) => self.outcome_locked(&mut st, &mut failed, &key, Err(e)),
                }
            }
            // Reboots in place: the VMI stays Running while its machine starts again.
            let again: Vec<Key> = std::mem::take(&mut st.relaunch).into_iter().collect();
            for key in again {
                if st.deleting_vmis.contains_key(&key) || st.live.contains_key(&key) {
                    continue;
                }
                if let Some(v) = st.vmis.get(&key) {
                    out.push((key.clone(), (**v).clone(), true));
                    st.launching.insert(key);
                }
            }
            out
        };
        for (key, vmi, in_place) in pending {
            let r = self.lc.vmi_ctl().launch(&key, &vmi, in_place);
            self.outcome(&mut failed, &key, r);
        }
        // Objects reconciled without error this pass start their next failure from the base delay.
        let mut st = lock(&self.lc.state);
        st.requeue.retain(|k, b| failed.contains(k) || b.until > started);
    }

    /// Whether the VMI at `key` is to be launched: Pending, or Scheduling without a machine (its
    /// launch ended but recording how failed).
    pub(super) fn awaiting_launch(st: &State, key: &Key, vmi: &VirtualMachineInstance) -> bool {
        match phase_of(vmi) {
            VmiPhase::Pending => true,
            VmiPhase::Scheduling => !st.live.contains_key(key),
            _ => false,
        }
    }

    /// Whether `key` waits for its requeue back-off (its last reconcile failed).
    pub(super) fn deferred(st: &State, key: &Key, now: Instant) -> bool {
        st.requeue.get(key).is_some_and(|b| b.until > now)
    }

    pub(super) fn outcome(&self, failed: &mut BTreeSet<Key>, key: &Key, r: Result<(), LifecycleError>) {
        if r.is_err() {
            let mut st = lock(&self.lc.state);
            self.outcome_locked(&mut st, failed, key, r);
        }
    }

    /// The error policy: a failed reconcile of `key` is logged and requeued after a back-off that
    /// doubles per failure in a row; other objects are not delayed.
    pub(super) fn outcome_locked(
        &self,
        st: &mut State,
        failed: &mut BTreeSet<Key>,
        key: &Key,
        r: Result<(), LifecycleError>,
    ) {
        let Err(e) = r else { return };
        let b = st.requeue.entry(key.clone()).or_insert(Backoff { failures: 0, until: Instant::now() });
        b.failures = b.failures.saturating_add(1);
        let factor = 1u32.checked_shl(b.failures.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        let delay = self.lc.opts.requeue_base.saturating_mul(factor).min(self.lc.opts.requeue_max);
        b.until = Instant::now() + delay;
        log::error!(
            "lifecycle: reconciling {key} failed (attempt {}), requeued in {delay:?}: {e}",
            b.failures
        );
        failed.insert(key.clone());
    }
}
