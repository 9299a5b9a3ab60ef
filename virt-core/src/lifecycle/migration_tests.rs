//! The migration controller with a test-double runtime: a migration's phases and the VMI's
//! `migrationState`, failure and cancel leaving the source running, admission refusals, and a
//! reconcile that changes nothing once the migration ended.
//!
//! The runtime's `migrate` runs on the controller's worker thread and stops at two gates the test
//! opens (after `TargetReady`, after `Running`), so each phase can be observed between passes.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::migrations::phase_of_migration;
use super::*;
use crate::machine::accel::AccelDecision;
use crate::machine::migrate::MigrationReport;
use crate::machine::{MachineError, MachineEvent};
use crate::model::VirtualMachineInstanceMigration;

/// A machine that does what it is told.
struct FakeMachine {
    status: Mutex<MachineStatus>,
}

impl FakeMachine {
    fn running() -> Arc<Self> {
        Arc::new(Self { status: Mutex::new(MachineStatus::Running) })
    }
    fn set(&self, s: MachineStatus) {
        *lock(&self.status) = s;
    }
}

impl Machine for FakeMachine {
    fn status(&self) -> MachineStatus {
        lock(&self.status).clone()
    }
    fn pause(&self) -> Result<(), MachineError> {
        self.set(MachineStatus::Paused);
        Ok(())
    }
    fn resume(&self) -> Result<(), MachineError> {
        self.set(MachineStatus::Running);
        Ok(())
    }
    fn power_down(&self) -> Result<(), MachineError> {
        self.set(MachineStatus::Stopped(MachineExit::PowerOff));
        Ok(())
    }
    fn reset(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn stop(&self) -> Result<(), MachineError> {
        self.set(MachineStatus::Stopped(MachineExit::Stopped));
        Ok(())
    }
    fn console_input(&self, _bytes: &[u8]) -> Result<(), MachineError> {
        Ok(())
    }
    fn wait(&self, _timeout: Option<Duration>) -> Option<MachineExit> {
        None
    }
    fn next_event(&self, _timeout: Duration) -> Option<MachineEvent> {
        None
    }
    fn accelerator(&self) -> AccelDecision {
        AccelDecision { accelerator: Accelerator::Emulation, reason: "software emulation (test)".into() }
    }
}

/// How the next migration ends once both gates are open.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Succeed,
    Fail,
}

/// A runtime whose migrations move the VM into a new [`FakeMachine`] as the test lets them.
struct MigRuntime {
    /// Every machine launched or migrated into, in order; the last one of a VMI runs it.
    machines: Mutex<Vec<Arc<FakeMachine>>>,
    ending: Mutex<Ending>,
    /// Gates opened so far (1: past TargetReady, 2: past Running).
    opened: AtomicU32,
    migrations: AtomicU32,
    cancels: AtomicU32,
    /// A cancel is heard only through `cancel_migration` (as a source launcher blocked in its
    /// migration hears only `migrateCancel`), not through the ticket's flag.
    deaf_to_ticket: AtomicBool,
    /// The name of the policy the last migration's ticket carried.
    policy: Mutex<Option<String>>,
}

impl Default for MigRuntime {
    fn default() -> Self {
        Self {
            machines: Mutex::new(Vec::new()),
            ending: Mutex::new(Ending::Succeed),
            opened: AtomicU32::new(0),
            migrations: AtomicU32::new(0),
            cancels: AtomicU32::new(0),
            deaf_to_ticket: AtomicBool::new(false),
            policy: Mutex::new(None),
        }
    }
}

impl MigRuntime {
    fn open(&self, gates: u32) {
        self.opened.store(gates, Ordering::SeqCst);
    }
    fn machine(&self, i: usize) -> Arc<FakeMachine> {
        lock(&self.machines)[i].clone()
    }
    fn count(&self) -> usize {
        lock(&self.machines).len()
    }
    /// Waits for gate `n`; false when the migration was cancelled meanwhile.
    fn gate(&self, n: u32, ticket: &MigrationTicket) -> bool {
        let cancelled = || {
            ticket.cancelled()
                && (!self.deaf_to_ticket.load(Ordering::SeqCst) || self.cancels.load(Ordering::SeqCst) > 0)
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.opened.load(Ordering::SeqCst) < n {
            if cancelled() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        !cancelled()
    }
}

impl Runtime for MigRuntime {
    fn launch(&self, _vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, LaunchError> {
        let m = FakeMachine::running();
        lock(&self.machines).push(m.clone());
        Ok(m)
    }
    fn reattach(&self, _vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        None
    }
    fn last_exit(&self, _vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        None
    }
    fn cleanup(&self, _vmi: &VirtualMachineInstance) {}
    fn live_migratable(&self, vmi: &VirtualMachineInstance) -> Result<(), NotMigratable> {
        match vmi.metadata.annotations.get("test/not-migratable") {
            Some(why) => Err(NotMigratable::new("InterfaceNotLiveMigratable", why.clone())),
            None => Ok(()),
        }
    }
    fn migrate(
        &self,
        _vmi: &VirtualMachineInstance,
        ticket: &MigrationTicket,
        step: &dyn Fn(MigrationStep),
    ) -> Result<Migrated, MigrationError> {
        self.migrations.fetch_add(1, Ordering::SeqCst);
        let source = lock(&self.machines).last().cloned().ok_or_else(|| {
            MigrationError::Failed("the test runtime launched no machine to migrate".into())
        })?;
        let target = format!("uid-mig-{}", &ticket.uid[..ticket.uid.len().min(8)]);
        step(MigrationStep::TargetReady { target: target.clone() });
        if !self.gate(1, ticket) {
            return Err(MigrationError::Cancelled);
        }
        *lock(&self.policy) = ticket.policy.as_ref().and_then(|p| p.metadata.name.clone());
        step(MigrationStep::Running {
            configuration: serde_json::json!({"bandwidthPerMigration": "64Mi"}),
            not_honoured: Vec::new(),
        });
        source.set(MachineStatus::Paused);
        if !self.gate(2, ticket) {
            // Rollback, as the launcher's protocol does: the source resumes.
            source.set(MachineStatus::Running);
            return Err(MigrationError::Cancelled);
        }
        if *lock(&self.ending) == Ending::Fail {
            source.set(MachineStatus::Running);
            return Err(MigrationError::Failed(format!(
                "the target launcher {target} went away during the memory copy"
            )));
        }
        let moved = FakeMachine::running();
        lock(&self.machines).push(moved.clone());
        source.set(MachineStatus::Stopped(MachineExit::Stopped));
        let report =
            MigrationReport { total_us: 120_000, downtime_us: 4_200, passes: 3, ..Default::default() };
        Ok(Migrated { machine: moved, report, source: "uid".into(), target })
    }
    fn cancel_migration(&self, _vmi: &VirtualMachineInstance) {
        self.cancels.fetch_add(1, Ordering::SeqCst);
    }
}

fn setup() -> (Arc<MemStore>, Arc<MigRuntime>, Lifecycle) {
    let store = Arc::new(MemStore::default());
    let rt = Arc::new(MigRuntime::default());
    let opts = LifecycleOptions { backoff_base: Duration::ZERO, ..LifecycleOptions::default() };
    let lc = Lifecycle::new(store.clone(), rt.clone(), opts).unwrap();
    (store, rt, lc)
}

fn settle(lc: &Lifecycle) {
    for _ in 0..4 {
        lc.reconcile();
    }
}

/// A running standalone VMI `v`.
fn running_vmi(lc: &Lifecycle) {
    let vmi: VirtualMachineInstance = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: v\nspec:\n  domain:\n    devices: {}\n    memory:\n      guest: 64Mi\n",
    )
    .unwrap();
    lc.vmis().create("default", vmi).unwrap();
    settle(lc);
    assert_eq!(vmi_phase(lc), VmiPhase::Running);
}

fn migration(name: &str, vmi: &str) -> VirtualMachineInstanceMigration {
    model::from_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: {name}\nspec:\n  vmiName: {vmi}\n"
    ))
    .unwrap()
}

fn vmi_phase(lc: &Lifecycle) -> VmiPhase {
    phase_of(&lc.vmis().get("default", "v").unwrap())
}

fn mig_phase(lc: &Lifecycle, name: &str) -> String {
    phase_of_migration(&lc.migrations().get("default", name).unwrap()).to_string()
}

fn state(lc: &Lifecycle) -> model::MigrationState {
    lc.vmis().get("default", "v").unwrap().status.unwrap().migration_state.expect("migrationState")
}

/// Reconciles until `cond` holds (the worker thread reports asynchronously).
fn until(lc: &Lifecycle, what: &str, cond: impl Fn(&Lifecycle) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        lc.reconcile();
        if cond(lc) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn phases_seen(lc: &Lifecycle, name: &str) -> Vec<String> {
    let m = lc.migrations().get("default", name).unwrap();
    m.status.unwrap()["phaseTransitionTimestamps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["phase"].as_str().unwrap().to_string())
        .collect()
}

fn reasons(lc: &Lifecycle) -> Vec<String> {
    lc.events(Some("default")).into_iter().map(|e| e.reason).collect()
}

#[test]
fn a_migration_goes_through_its_phases_and_the_vm_runs_in_the_new_machine() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    let created = lc.migrations().create("default", migration("m1", "v")).unwrap();
    assert_eq!(phase_of_migration(&created), "Pending");
    assert_eq!(created.metadata.labels.get("kubevirt.io/vmi-name").map(String::as_str), Some("v"));

    until(&lc, "TargetReady", |lc| mig_phase(lc, "m1") == "TargetReady");
    let s = state(&lc);
    assert_eq!(s.completed, Some(false));
    assert_eq!(s.failed, Some(false));
    assert_eq!(s.mode.as_deref(), Some("PreCopy"));
    assert!(s.start_timestamp.is_some() && s.end_timestamp.is_none());
    assert_eq!(s.migration_uid, lc.migrations().get("default", "m1").unwrap().metadata.uid);
    assert_eq!(s.migration_policy_name, None, "no MigrationPolicy: the node's settings");
    assert!(s.target_pod.as_deref().is_some_and(|p| p.starts_with("uid-mig-")));

    rt.open(1);
    until(&lc, "Running", |lc| mig_phase(lc, "m1") == "Running");
    // The source is paused for the final pass: not the VMI's end, and no Paused phase either.
    assert_eq!(vmi_phase(&lc), VmiPhase::Running);
    // The settings the runtime migrates with are the VMI's migrationConfiguration.
    assert_eq!(
        state(&lc).migration_configuration,
        Some(serde_json::json!({"bandwidthPerMigration": "64Mi"}))
    );

    rt.open(2);
    until(&lc, "Succeeded", |lc| mig_phase(lc, "m1") == "Succeeded");
    assert_eq!(phases_seen(&lc, "m1"), ["Pending", "Scheduling", "TargetReady", "Running", "Succeeded"]);
    let s = state(&lc);
    assert_eq!(s.completed, Some(true));
    assert_eq!(s.failed, Some(false));
    assert_eq!(s.target_node_domain_detected, Some(true));
    assert!(s.end_timestamp.is_some() && s.target_node_domain_ready_timestamp.is_some());
    assert_eq!(s.source_pod.as_deref(), Some("uid"));
    assert_eq!(s.abort_requested, None);
    let stats = s.migration_stats.expect("migrationStats");
    assert_eq!(stats["downtimeUs"], 4200, "{stats}");
    assert_eq!(stats["passes"], 3, "{stats}");
    // The object carries the same state.
    let m = lc.migrations().get("default", "m1").unwrap();
    assert_eq!(m.status.unwrap()["migrationState"]["completed"], true);
    assert!(reasons(&lc).iter().any(|r| r == "Migrating"));
    let migrated =
        lc.events(Some("default")).into_iter().find(|e| e.reason == "Migrated").expect("Migrated event");
    assert!(migrated.message.contains("downtime 4.2 ms"), "{}", migrated.message);

    // The old machine stopped; the VMI follows the new one and runs on.
    assert_eq!(rt.count(), 2);
    assert!(matches!(rt.machine(0).status(), MachineStatus::Stopped(_)));
    settle(&lc);
    assert_eq!(vmi_phase(&lc), VmiPhase::Running, "the source's end is not the VMI's end");
    assert_eq!(rt.count(), 2, "nothing relaunched");
    // Now the new machine's end is the VMI's end.
    rt.machine(1).set(MachineStatus::Stopped(MachineExit::PowerOff));
    settle(&lc);
    assert_eq!(vmi_phase(&lc), VmiPhase::Succeeded);
}

#[test]
fn a_failed_migration_leaves_the_source_running() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    *lock(&rt.ending) = Ending::Fail;
    rt.open(2);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    until(&lc, "Failed", |lc| mig_phase(lc, "m1") == "Failed");
    let m = lc.migrations().get("default", "m1").unwrap();
    let reason = m.status.unwrap()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("went away during the memory copy"), "{reason}");
    let s = state(&lc);
    assert_eq!((s.completed, s.failed), (Some(true), Some(true)));
    assert_eq!(s.failure_reason.as_deref(), Some(reason.as_str()));
    assert_eq!(s.abort_requested, None, "a failure is not an abort");
    assert!(reasons(&lc).iter().any(|r| r == "MigrationFailed"));
    settle(&lc);
    assert_eq!(rt.count(), 1, "no machine was added or relaunched");
    assert!(matches!(rt.machine(0).status(), MachineStatus::Running));
    assert_eq!(vmi_phase(&lc), VmiPhase::Running);
    // A finished migration does not block the next one, which succeeds.
    *lock(&rt.ending) = Ending::Succeed;
    lc.migrations().create("default", migration("m2", "v")).unwrap();
    until(&lc, "m2 Succeeded", |lc| mig_phase(lc, "m2") == "Succeeded");
    assert_eq!(mig_phase(&lc, "m1"), "Failed");
    assert_eq!(rt.count(), 2);
}

#[test]
fn deleting_a_running_migration_aborts_it_and_the_source_runs_on() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    until(&lc, "TargetReady", |lc| mig_phase(lc, "m1") == "TargetReady");
    rt.open(1);
    until(&lc, "Running", |lc| mig_phase(lc, "m1") == "Running");
    assert!(matches!(rt.machine(0).status(), MachineStatus::Paused));

    lc.migrations().delete("default", "m1").unwrap();
    // The object stays (marked) until the worker ended; then it goes.
    until(&lc, "the migration object to go", |lc| lc.migrations().get("default", "m1").is_err());
    let s = state(&lc);
    assert_eq!((s.completed, s.failed), (Some(true), Some(true)));
    assert_eq!(s.abort_requested, Some(true));
    assert_eq!(s.abort_status.as_deref(), Some("Succeeded"));
    assert!(reasons(&lc).iter().any(|r| r == "MigrationAborted"));
    assert!(reasons(&lc).iter().any(|r| r == "MigrationAbortRequested"));
    settle(&lc);
    assert_eq!(rt.count(), 1);
    assert!(matches!(rt.machine(0).status(), MachineStatus::Running), "the source resumed");
    assert_eq!(vmi_phase(&lc), VmiPhase::Running);
    // Deleting it again finds nothing; a new migration is accepted.
    assert!(matches!(lc.migrations().delete("default", "m1"), Err(LifecycleError::NotFound { .. })));
    lc.migrations().create("default", migration("m2", "v")).unwrap();
}

#[test]
fn a_cancel_while_the_target_starts_asks_the_runtime_until_the_worker_ends() {
    let (_s, rt, lc) = setup();
    rt.deaf_to_ticket.store(true, Ordering::SeqCst);
    running_vmi(&lc);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    until(&lc, "TargetReady", |lc| mig_phase(lc, "m1") == "TargetReady");
    lc.migrations().delete("default", "m1").unwrap();
    assert_eq!(mig_phase(&lc, "m1"), "TargetReady", "marked, not gone, while the worker runs");
    assert!(lc.migrations().get("default", "m1").unwrap().metadata.deletion_timestamp.is_some());
    until(&lc, "the migration object to go", |lc| lc.migrations().get("default", "m1").is_err());
    assert!(rt.cancels.load(Ordering::SeqCst) >= 1, "the runtime was asked to cancel");
    assert_eq!(state(&lc).abort_status.as_deref(), Some("Succeeded"));
    assert_eq!(rt.count(), 1);
    assert_eq!(vmi_phase(&lc), VmiPhase::Running);
}

#[test]
fn a_second_migration_while_one_runs_is_refused() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    // Refused while still Pending, and again while under way.
    let err = lc.migrations().create("default", migration("m2", "v")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LifecycleError::Invalid(_)), "{msg}");
    assert!(msg.contains("in-flight migration detected. Active migration job (m1)"), "{msg}");
    until(&lc, "TargetReady", |lc| mig_phase(lc, "m1") == "TargetReady");
    let msg = lc.migrations().create("default", migration("m3", "v")).unwrap_err().to_string();
    assert!(msg.contains("(m1) is currently already in progress for VMI v"), "{msg}");
    assert!(lc.migrations().get("default", "m2").is_err() && lc.migrations().get("default", "m3").is_err());
    rt.open(2);
    until(&lc, "Succeeded", |lc| mig_phase(lc, "m1") == "Succeeded");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 1);
}

#[test]
fn a_vmi_that_does_not_run_is_refused_with_a_clear_message() {
    let (_s, rt, lc) = setup();
    let msg = lc.migrations().create("default", migration("m0", "ghost")).unwrap_err().to_string();
    assert!(msg.contains("the VMI \"ghost\" does not exist"), "{msg}");
    let msg = lc
        .migrations().create("default", model::from_yaml("apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: m\nspec: {}\n").unwrap())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("spec.vmiName: Required value"), "{msg}");

    running_vmi(&lc);
    rt.machine(0).set(MachineStatus::Stopped(MachineExit::PowerOff));
    settle(&lc);
    assert_eq!(vmi_phase(&lc), VmiPhase::Succeeded);
    let err = lc.migrations().create("default", migration("m1", "v")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LifecycleError::Invalid(_)), "{msg}");
    assert!(msg.contains("Cannot migrate VMI \"v\": it is not running (phase Succeeded)"), "{msg}");
    assert!(msg.contains("migration-create-validator.kubevirt.io"), "{msg}");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 0);
}

#[test]
fn live_migratable_is_a_condition_and_a_vmi_that_cannot_move_is_refused_at_creation() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    let cond = |lc: &Lifecycle, name: &str| {
        let v = lc.vmis().get("default", name).unwrap();
        let c = v.status.unwrap().conditions.into_iter().find(|c| c.type_ == LIVE_MIGRATABLE);
        c.map(|c| (c.status, c.reason, c.message))
    };
    assert_eq!(cond(&lc, "v"), Some((ConditionStatus::True, None, None)));

    let tapped: VirtualMachineInstance = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: t\n  annotations:\n    test/not-migratable: interface default is a tap\nspec:\n  domain:\n    devices: {}\n    memory:\n      guest: 64Mi\n",
    )
    .unwrap();
    lc.vmis().create("default", tapped).unwrap();
    settle(&lc);
    assert_eq!(
        cond(&lc, "t"),
        Some((
            ConditionStatus::False,
            Some("InterfaceNotLiveMigratable".to_string()),
            Some("interface default is a tap".to_string())
        ))
    );
    let err = lc.migrations().create("default", migration("m", "t")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, LifecycleError::Invalid(_)), "{msg}");
    assert!(
        msg.contains(
            "Cannot migrate VMI, Reason: InterfaceNotLiveMigratable, Message: interface default is a tap"
        ),
        "{msg}"
    );
    assert!(lc.migrations().get("default", "m").is_err(), "nothing is stored");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 0);
}

#[test]
fn a_vmi_that_stopped_before_its_migration_started_fails_it() {
    let (_s, rt, lc) = setup();
    running_vmi(&lc);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    // The guest powers off before the controller's pass picks the migration up.
    rt.machine(0).set(MachineStatus::Stopped(MachineExit::PowerOff));
    settle(&lc);
    assert_eq!(mig_phase(&lc, "m1"), "Failed");
    let m = lc.migrations().get("default", "m1").unwrap();
    assert_eq!(m.status.unwrap()["reason"], "the VMI v is not running");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 0, "the runtime was never asked");
    assert!(lc.events(Some("default")).iter().any(|e| e.reason == "FailedMigration"));
}

#[test]
fn reconciling_again_changes_nothing() {
    let (store, rt, lc) = setup();
    running_vmi(&lc);
    rt.open(2);
    lc.migrations().create("default", migration("m1", "v")).unwrap();
    until(&lc, "Succeeded", |lc| mig_phase(lc, "m1") == "Succeeded");
    settle(&lc);
    let vmi_rv = lc.vmis().get("default", "v").unwrap().metadata.resource_version;
    let mig = lc.migrations().get("default", "m1").unwrap();
    let seq = store.changes().last();
    let events = lc.events(Some("default")).len();
    lc.reconcile();
    lc.reconcile();
    assert_eq!(lc.vmis().get("default", "v").unwrap().metadata.resource_version, vmi_rv);
    let again = lc.migrations().get("default", "m1").unwrap();
    assert_eq!(to_value(&again), to_value(&mig), "the migration object is unchanged");
    assert_eq!(store.changes().last(), seq, "no write to the store");
    assert_eq!(lc.events(Some("default")).len(), events, "no new event");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 1, "the runtime migrated once");
    assert_eq!(rt.count(), 2);
}

fn policy(name: &str, selectors: &str) -> model::MigrationPolicy {
    model::from_yaml(&format!(
        "apiVersion: migrations.kubevirt.io/v1alpha1\nkind: MigrationPolicy\nmetadata:\n  name: {name}\nspec:\n  bandwidthPerMigration: 1Gi\n  selectors:\n{selectors}"
    ))
    .unwrap()
}

#[test]
fn a_migration_records_the_policy_that_matched_its_vmi_and_hands_it_to_the_runtime() {
    let (store, rt, lc) = setup();
    running_vmi(&lc);
    // The VMI has no label "app": only the policy on its namespace's built-in label matches.
    let by_ns = "    namespaceSelector:\n      kubernetes.io/metadata.name: default\n";
    let by_vmi = "    virtualMachineInstanceSelector:\n      app: db\n";
    let made = lc.migration_policies().put(policy("by-ns", by_ns), false).unwrap();
    lc.migration_policies().put(policy("by-vmi", by_vmi), false).unwrap();
    assert!(matches!(
        lc.migration_policies().put(policy("by-ns", by_ns), false),
        Err(LifecycleError::AlreadyExists { .. })
    ));
    let mut namespaced = policy("elsewhere", by_ns);
    namespaced.metadata.namespace = Some("default".into());
    assert!(matches!(lc.migration_policies().put(namespaced, false), Err(LifecycleError::Invalid(_))));
    // A replace keeps the policy's identity.
    let replaced = lc.migration_policies().put(policy("by-ns", by_ns), true).unwrap();
    assert_eq!(replaced.metadata.uid, made.metadata.uid);
    assert_eq!(lc.migration_policies().list().len(), 2);

    lc.migrations().create("default", migration("m1", "v")).unwrap();
    until(&lc, "Scheduling", |lc| mig_phase(lc, "m1") != "Pending");
    assert_eq!(state(&lc).migration_policy_name.as_deref(), Some("by-ns"));
    rt.open(2);
    until(&lc, "Succeeded", |lc| mig_phase(lc, "m1") == "Succeeded");
    assert_eq!(lock(&rt.policy).as_deref(), Some("by-ns"), "the runtime got the policy");
    let m = lc.migrations().get("default", "m1").unwrap();
    assert_eq!(m.status.unwrap()["migrationState"]["migrationPolicyName"], "by-ns");

    // Stored: a new lifecycle on the store knows the policies; a deleted one is gone.
    let lc2 = Lifecycle::new(store.clone(), rt.clone(), LifecycleOptions::default()).unwrap();
    assert_eq!(
        lc2.migration_policies().get("by-vmi").unwrap().spec.selectors,
        policy("x", by_vmi).spec.selectors
    );
    lc2.migration_policies().delete("by-ns").unwrap();
    assert!(matches!(lc2.migration_policies().get("by-ns"), Err(LifecycleError::NotFound { .. })));
    let lc3 = Lifecycle::new(store, rt, LifecycleOptions::default()).unwrap();
    let names: Vec<_> = lc3.migration_policies().list().into_iter().filter_map(|p| p.metadata.name).collect();
    assert_eq!(names, ["by-vmi"]);
}

#[test]
fn migrations_beyond_the_parallel_limit_wait_in_pending_oldest_first() {
    let store = Arc::new(MemStore::default());
    let rt = Arc::new(MigRuntime::default());
    let opts = LifecycleOptions {
        backoff_base: Duration::ZERO,
        parallel_migrations_per_cluster: 5,
        parallel_outbound_migrations_per_node: 1,
        ..LifecycleOptions::default()
    };
    let lc = Lifecycle::new(store, rt.clone(), opts).unwrap();
    running_vmi(&lc);
    let w: VirtualMachineInstance = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: w\nspec:\n  domain:\n    devices: {}\n    memory:\n      guest: 64Mi\n",
    )
    .unwrap();
    lc.vmis().create("default", w).unwrap();
    settle(&lc);
    // `second` sorts before `first` by name: the order is creation's, not the key's. (The test
    // runtime migrates the last machine launched: w's first.)
    lc.migrations().create("default", migration("second", "w")).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    lc.migrations().create("default", migration("first", "v")).unwrap();

    until(&lc, "the older migration to start", |lc| mig_phase(lc, "second") == "TargetReady");
    settle(&lc);
    assert_eq!(mig_phase(&lc, "first"), "Pending", "one slot: the younger waits");
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 1);

    rt.open(2);
    until(&lc, "the older to succeed", |lc| mig_phase(lc, "second") == "Succeeded");
    until(&lc, "the younger to end", |lc| ["Succeeded", "Failed"].contains(&mig_phase(lc, "first").as_str()));
    let m = lc.migrations().get("default", "first").unwrap();
    assert_eq!(mig_phase(&lc, "first"), "Succeeded", "{:?}", m.status);
    assert_eq!(rt.migrations.load(Ordering::SeqCst), 2);
    let seen = phases_seen(&lc, "first");
    assert_eq!(seen.first().map(String::as_str), Some("Pending"));
    assert_eq!(seen.iter().filter(|p| *p == "Pending").count(), 1, "{seen:?}");
}
