//! The controller with a test-double runtime: machines whose guests obey or ignore the power button,
//! crash, reboot, and survive a restart of the lifecycle.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use super::*;
use crate::machine::accel::AccelDecision;
use crate::machine::{MachineError, MachineEvent};
use crate::model::RunStrategy;

/// A machine that does what it is told, and whose guest does what the test says.
struct FakeMachine {
    status: Mutex<MachineStatus>,
    /// The guest powers off when the power button is pressed.
    obeys_power_button: bool,
    power_downs: AtomicU32,
    stops: AtomicU32,
}

impl FakeMachine {
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
        self.power_downs.fetch_add(1, Ordering::SeqCst);
        if self.obeys_power_button {
            self.set(MachineStatus::Stopped(MachineExit::PowerOff));
        }
        Ok(())
    }
    fn reset(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn stop(&self) -> Result<(), MachineError> {
        self.stops.fetch_add(1, Ordering::SeqCst);
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

#[derive(Default)]
struct FakeRuntime {
    launched: Mutex<Vec<(String, Arc<FakeMachine>)>>,
    /// Machines that "survive" a restart of the lifecycle, by VMI name.
    survivors: Mutex<HashMap<String, Arc<FakeMachine>>>,
    exits: Mutex<HashMap<String, MachineExit>>,
    fail_launch: AtomicBool,
    /// VMIs whose volume is missing: their launch fails.
    missing_volume: Mutex<BTreeSet<String>>,
    ignore_power_button: AtomicBool,
    cleaned: Mutex<Vec<String>>,
}

impl FakeRuntime {
    fn launches(&self, name: &str) -> usize {
        lock(&self.launched).iter().filter(|(n, _)| n == name).count()
    }
    fn last(&self, name: &str) -> Arc<FakeMachine> {
        lock(&self.launched).iter().rev().find(|(n, _)| n == name).map(|(_, m)| m.clone()).expect("launched")
    }
}

impl Runtime for FakeRuntime {
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, LaunchError> {
        if self.fail_launch.load(Ordering::SeqCst) {
            return Err(LaunchError::new(LaunchStage::Start, "disk image missing"));
        }
        if lock(&self.missing_volume).contains(vmi.metadata.name.as_deref().unwrap_or_default()) {
            return Err(LaunchError::new(
                LaunchStage::Volumes,
                "volume rootdisk: /var/lib/images/missing.qcow2: No such file or directory",
            ));
        }
        let m = Arc::new(FakeMachine {
            status: Mutex::new(MachineStatus::Running),
            obeys_power_button: !self.ignore_power_button.load(Ordering::SeqCst),
            power_downs: AtomicU32::new(0),
            stops: AtomicU32::new(0),
        });
        let name = vmi.metadata.name.clone().unwrap_or_default();
        lock(&self.launched).push((name.clone(), m.clone()));
        lock(&self.survivors).insert(name, m.clone());
        Ok(m)
    }
    fn reattach(&self, vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        let name = vmi.metadata.name.clone().unwrap_or_default();
        lock(&self.survivors)
            .get(&name)
            .filter(|m| !matches!(m.status(), MachineStatus::Stopped(_)))
            .map(|m| m.clone() as Arc<dyn Machine>)
    }
    fn last_exit(&self, vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        lock(&self.exits).get(vmi.metadata.name.as_deref().unwrap_or_default()).cloned()
    }
    fn cleanup(&self, vmi: &VirtualMachineInstance) {
        lock(&self.cleaned).push(vmi.metadata.name.clone().unwrap_or_default());
    }
}

/// A store whose writes of chosen objects fail (a full disk, an I/O error), counting the failures.
#[derive(Default)]
struct FlakyStore {
    inner: MemStore,
    /// Writes of objects with these names fail; `"*"` fails every write.
    failing: Mutex<BTreeSet<String>>,
    failures: AtomicU32,
}

impl FlakyStore {
    fn fail(&self, name: &str) {
        lock(&self.failing).insert(name.into());
    }
    fn heal(&self) {
        lock(&self.failing).clear();
    }
    fn check(&self, key: &Key) -> Result<(), StoreError> {
        let f = lock(&self.failing);
        if f.contains(&key.name) || f.contains("*") {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError(format!("writing {key}: No space left on device")));
        }
        Ok(())
    }
}

impl Store for FlakyStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        self.inner.load()
    }
    fn put(&self, object: &StoredObject) -> Result<u64, StoreError> {
        self.check(&object.key)?;
        self.inner.put(object)
    }
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        self.check(key)?;
        self.inner.delete(kind, key)
    }
    fn changes(&self) -> &Arc<ChangeLog> {
        self.inner.changes()
    }
    fn put_event(&self, seq: u64, event: &serde_json::Value, keep: usize) -> Result<(), StoreError> {
        self.inner.put_event(seq, event, keep)
    }
    fn load_events(&self) -> Result<Vec<(u64, serde_json::Value)>, StoreError> {
        self.inner.load_events()
    }
}

fn opts() -> LifecycleOptions {
    LifecycleOptions { backoff_base: Duration::ZERO, ..LifecycleOptions::default() }
}

fn setup() -> (Arc<MemStore>, Arc<FakeRuntime>, Lifecycle) {
    let store = Arc::new(MemStore::default());
    let rt = Arc::new(FakeRuntime::default());
    let lc = Lifecycle::new(store.clone(), rt.clone(), opts()).unwrap();
    (store, rt, lc)
}

fn vm(name: &str, strategy: &str, grace: i64) -> VirtualMachine {
    model::from_yaml(&format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: {strategy}
  template:
    spec:
      terminationGracePeriodSeconds: {grace}
      domain:
        devices: {{}}
        memory:
          guest: 128Mi
"
    ))
    .unwrap()
}

fn printable(lc: &Lifecycle, name: &str) -> String {
    lc.vms().get("default", name).unwrap().status.unwrap().printable_status.unwrap()
}

fn phase(lc: &Lifecycle, name: &str) -> Option<VmiPhase> {
    lc.vmis().get("default", name).ok().map(|v| phase_of(&v))
}

/// Reconciles a few times (each pass observes what the previous did).
fn settle(lc: &Lifecycle) {
    for _ in 0..4 {
        lc.reconcile();
    }
}

#[test]
fn always_runs_and_stop_halts_gracefully() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("a", "Always", 30)).unwrap();
    settle(&lc);
    assert_eq!(phase(&lc, "a"), Some(VmiPhase::Running));
    assert_eq!(printable(&lc, "a"), "Running");
    let vmi = lc.vmis().get("default", "a").unwrap();
    let conds = vmi.status.unwrap().conditions;
    assert!(has_condition(&conds, "Ready"));
    assert!(conds.iter().any(|c| c.type_ == "HardwareAccelerated" && c.status == ConditionStatus::False));
    assert!(lc.events(Some("default")).iter().any(|e| e.reason == "SoftwareEmulation"));
    // Start of a running Always VM is refused; stop makes it Halted and presses the power button.
    assert!(matches!(lc.vms().start("default", "a"), Err(LifecycleError::Conflict(_))));
    lc.vms().stop("default", "a", None).unwrap();
    settle(&lc);
    assert_eq!(rt.last("a").power_downs.load(Ordering::SeqCst), 1);
    assert_eq!(rt.last("a").stops.load(Ordering::SeqCst), 0, "the guest obeyed: no forced stop");
    assert!(lc.vmis().get("default", "a").is_err(), "the stopped VMI is deleted");
    let got = lc.vms().get("default", "a").unwrap();
    assert_eq!(got.spec.run_strategy, Some(RunStrategy::Halted));
    assert_eq!(printable(&lc, "a"), "Stopped");
    assert_eq!(lock(&rt.cleaned).as_slice(), ["a"]);
    // Start again: Always, a new instance.
    lc.vms().start("default", "a").unwrap();
    settle(&lc);
    assert_eq!(rt.launches("a"), 2);
    assert_eq!(printable(&lc, "a"), "Running");
}

#[test]
fn always_replaces_an_instance_whose_guest_powered_off() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("a", "Always", 30)).unwrap();
    settle(&lc);
    rt.last("a").set(MachineStatus::Stopped(MachineExit::PowerOff));
    settle(&lc);
    assert_eq!(rt.launches("a"), 2);
    assert_eq!(phase(&lc, "a"), Some(VmiPhase::Running));
}

#[test]
fn a_guest_that_ignores_the_power_button_is_forced_off_after_the_grace_period() {
    let (_s, rt, lc) = setup();
    rt.ignore_power_button.store(true, Ordering::SeqCst);
    lc.vms().create("default", vm("a", "Always", 1)).unwrap();
    settle(&lc);
    lc.vms().stop("default", "a", None).unwrap();
    settle(&lc);
    assert_eq!(printable(&lc, "a"), "Stopping");
    assert_eq!(rt.last("a").stops.load(Ordering::SeqCst), 0);
    std::thread::sleep(Duration::from_millis(1100));
    settle(&lc);
    assert_eq!(rt.last("a").stops.load(Ordering::SeqCst), 1);
    assert!(lc.vmis().get("default", "a").is_err());
    assert_eq!(printable(&lc, "a"), "Stopped");
}

#[test]
fn grace_period_zero_forces_at_once() {
    let (_s, rt, lc) = setup();
    rt.ignore_power_button.store(true, Ordering::SeqCst);
    lc.vms().create("default", vm("a", "Manual", 600)).unwrap();
    lc.vms().start("default", "a").unwrap();
    settle(&lc);
    lc.vms().stop("default", "a", Some(0)).unwrap();
    settle(&lc);
    assert_eq!(rt.last("a").stops.load(Ordering::SeqCst), 1);
    assert_eq!(rt.last("a").power_downs.load(Ordering::SeqCst), 0);
    assert!(lc.vmis().get("default", "a").is_err());
}

#[test]
fn rerun_on_failure_reruns_failures_only() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("r", "RerunOnFailure", 30)).unwrap();
    settle(&lc);
    assert_eq!(rt.launches("r"), 1);
    rt.last("r").set(MachineStatus::Stopped(MachineExit::Failed("guest crashed".into())));
    settle(&lc);
    assert_eq!(rt.launches("r"), 2, "a failure is rerun");
    assert_eq!(phase(&lc, "r"), Some(VmiPhase::Running));
    rt.last("r").set(MachineStatus::Stopped(MachineExit::PowerOff));
    settle(&lc);
    assert_eq!(rt.launches("r"), 2, "a success is not");
    assert_eq!(phase(&lc, "r"), Some(VmiPhase::Succeeded));
    assert_eq!(printable(&lc, "r"), "Stopped");
    // start runs it again and keeps the strategy.
    lc.vms().start("default", "r").unwrap();
    settle(&lc);
    assert_eq!(rt.launches("r"), 3);
    assert_eq!(lc.vms().get("default", "r").unwrap().spec.run_strategy, Some(RunStrategy::RerunOnFailure));
}

#[test]
fn manual_moves_only_on_request() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("m", "Manual", 30)).unwrap();
    settle(&lc);
    assert_eq!(rt.launches("m"), 0);
    assert_eq!(printable(&lc, "m"), "Stopped");
    lc.vms().start("default", "m").unwrap();
    settle(&lc);
    assert_eq!(rt.launches("m"), 1);
    rt.last("m").set(MachineStatus::Stopped(MachineExit::Failed("crash".into())));
    settle(&lc);
    assert_eq!(rt.launches("m"), 1, "Manual does not restart by itself");
    assert_eq!(phase(&lc, "m"), Some(VmiPhase::Failed));
    lc.vms().restart("default", "m", None).unwrap();
    settle(&lc);
    assert_eq!(rt.launches("m"), 2);
    assert_eq!(phase(&lc, "m"), Some(VmiPhase::Running));
}

#[test]
fn once_runs_once() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("o", "Once", 30)).unwrap();
    settle(&lc);
    rt.last("o").set(MachineStatus::Stopped(MachineExit::Failed("crash".into())));
    settle(&lc);
    assert_eq!(rt.launches("o"), 1);
    assert_eq!(phase(&lc, "o"), Some(VmiPhase::Failed));
    assert!(lc.vms().start("default", "o").is_err());
}

#[test]
fn halted_vm_does_not_start_and_refuses_stop() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("h", "Halted", 30)).unwrap();
    settle(&lc);
    assert_eq!(rt.launches("h"), 0);
    assert!(
        matches!(lc.vms().stop("default", "h", None), Err(LifecycleError::Conflict(m)) if m.contains("not running"))
    );
}

#[test]
fn a_guest_reboot_restarts_the_machine_in_place() {
    let (_s, rt, lc) = setup();
    lc.vms().create("default", vm("b", "Always", 30)).unwrap();
    settle(&lc);
    let uid = lc.vmis().get("default", "b").unwrap().metadata.uid;
    rt.last("b").set(MachineStatus::Stopped(MachineExit::Reboot));
    settle(&lc);
    assert_eq!(rt.launches("b"), 2);
    let vmi = lc.vmis().get("default", "b").unwrap();
    assert_eq!(vmi.metadata.uid, uid, "same VMI");
    assert_eq!(phase_of(&vmi), VmiPhase::Running);
    assert!(lc.events(None).iter().any(|e| e.reason == "Rebooted"));
    // A soft reboot: power button, then the machine starts again in place.
    lc.vmis().soft_reboot("default", "b").unwrap();
    settle(&lc);
    assert_eq!(rt.launches("b"), 3);
    assert_eq!(lc.vmis().get("default", "b").unwrap().metadata.uid, uid);
    assert!(lc.events(None).iter().any(|e| e.reason == "SoftRebooted"));
}

#[test]
fn pause_and_unpause_show_in_conditions_and_status() {
    let (_s, _rt, lc) = setup();
    lc.vms().create("default", vm("p", "Always", 30)).unwrap();
    settle(&lc);
    lc.vmis().pause("default", "p").unwrap();
    settle(&lc);
    assert_eq!(printable(&lc, "p"), "Paused");
    let c = lc.vmis().get("default", "p").unwrap().status.unwrap().conditions;
    assert!(has_condition(&c, "Paused") && !has_condition(&c, "Ready"));
    assert!(matches!(lc.vmis().pause("default", "p"), Err(LifecycleError::Conflict(_))));
    lc.vmis().unpause("default", "p").unwrap();
    settle(&lc);
    assert_eq!(printable(&lc, "p"), "Running");
    assert!(matches!(lc.vmis().unpause("default", "p"), Err(LifecycleError::Conflict(_))));
}

#[test]
fn a_restarted_lifecycle_finds_running_machines_and_starts_nothing_twice() {
    let (store, rt, lc) = setup();
    lc.vms().create("default", vm("vm-x", "Always", 30)).unwrap();
    lc.vms().create("default", vm("vm-y", "Always", 30)).unwrap();
    lc.vms().create("default", vm("vm-z", "Manual", 30)).unwrap();
    settle(&lc);
    drop(lc);
    // vm-y's machine ended while nobody watched, with a power-off the launcher recorded.
    rt.last("vm-y").set(MachineStatus::Stopped(MachineExit::PowerOff));
    lock(&rt.exits).insert("vm-y".into(), MachineExit::PowerOff);
    let lc = Lifecycle::new(store, rt.clone(), opts()).unwrap();
    assert_eq!(phase(&lc, "vm-x"), Some(VmiPhase::Running));
    assert_eq!(phase(&lc, "vm-y"), Some(VmiPhase::Succeeded));
    settle(&lc);
    assert_eq!(rt.launches("vm-x"), 1, "vm-x was found again, not started twice");
    assert_eq!(rt.launches("vm-y"), 2, "vm-y (Always) got a new instance");
    assert_eq!(rt.launches("vm-z"), 0);
    assert!(lc.events(None).iter().any(|e| e.reason == "Reattached"));
    // And the found machine is controllable.
    lc.vmis().pause("default", "vm-x").unwrap();
    assert_eq!(rt.last("vm-x").status(), MachineStatus::Paused);
}

#[test]
fn a_launch_failure_fails_the_vmi_and_backs_off() {
    let store = Arc::new(MemStore::default());
    let rt = Arc::new(FakeRuntime::default());
    rt.fail_launch.store(true, Ordering::SeqCst);
    let lc = Lifecycle::new(
        store,
        rt.clone(),
        LifecycleOptions { backoff_base: Duration::from_secs(60), ..LifecycleOptions::default() },
    )
    .unwrap();
    lc.vms().create("default", vm("f", "Always", 30)).unwrap();
    settle(&lc);
    assert_eq!(phase(&lc, "f"), Some(VmiPhase::Failed));
    assert_eq!(printable(&lc, "f"), "CrashLoopBackOff");
    let ev = lc.events(None);
    assert!(
        ev.iter().any(|e| e.reason == "FailedCreate" && e.message.contains("disk image missing")),
        "{ev:?}"
    );
}

#[test]
fn deleting_a_vm_stops_and_removes_its_instance() {
    let (store, rt, lc) = setup();
    lc.vms().create("default", vm("d", "Always", 30)).unwrap();
    settle(&lc);
    lc.vms().delete("default", "d").unwrap();
    settle(&lc);
    assert!(lc.vms().get("default", "d").is_err());
    assert!(lc.vmis().get("default", "d").is_err());
    assert_eq!(rt.last("d").power_downs.load(Ordering::SeqCst), 1);
    assert!(store.load().unwrap().iter().all(|o| o.key.name != "d"));
}

#[test]
fn standalone_vmis_run_and_delete() {
    let (_s, rt, lc) = setup();
    let vmi: VirtualMachineInstance = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: s\nspec:\n  domain:\n    devices: {}\n    memory:\n      guest: 64Mi\n",
    )
    .unwrap();
    lc.vmis().create("default", vmi.clone()).unwrap();
    assert!(matches!(lc.vmis().create("default", vmi), Err(LifecycleError::AlreadyExists { .. })));
    settle(&lc);
    assert_eq!(phase(&lc, "s"), Some(VmiPhase::Running));
    lc.vmis().delete("default", "s", None).unwrap();
    settle(&lc);
    assert!(lc.vmis().get("default", "s").is_err());
    assert_eq!(rt.launches("s"), 1, "a standalone VMI is not recreated");
}

#[test]
fn bad_requests_are_refused_with_the_field() {
    let (_s, _rt, lc) = setup();
    let gpu: VirtualMachine = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: g\nspec:\n  runStrategy: Always\n  template:\n    spec:\n      domain:\n        devices:\n          gpus:\n          - name: gpu1\n            deviceName: nvidia.com/GP102GL_Tesla_P40\n        memory:\n          guest: 64Mi\n",
    )
    .unwrap();
    let e = lc.vms().create("default", gpu).unwrap_err().to_string();
    assert!(e.contains("gpus"), "{e}");
    let e = lc.vms().create("nope", vm("a", "Always", 0)).unwrap_err();
    assert!(matches!(e, LifecycleError::NotFound { resource: "namespaces", .. }), "{e}");
    let e = lc.vms().create("default", vm("Bad_Name", "Always", 0)).unwrap_err().to_string();
    assert!(e.contains("metadata.name"), "{e}");
    let mut wrong_ns = vm("a", "Always", 0);
    wrong_ns.metadata.namespace = Some("os-images".into());
    assert!(lc.vms().create("default", wrong_ns).unwrap_err().to_string().contains("metadata.namespace"));
    lc.vms().create("default", vm("a", "Halted", 0)).unwrap();
    assert!(matches!(
        lc.vms().create("default", vm("a", "Halted", 0)),
        Err(LifecycleError::AlreadyExists { .. })
    ));
    assert!(matches!(lc.vmis().pause("default", "a"), Err(LifecycleError::NotFound { .. })));
    // Optimistic concurrency on replace.
    let mut stale = lc.vms().get("default", "a").unwrap();
    stale.metadata.resource_version = Some("999".into());
    assert!(matches!(lc.vms().replace("default", stale), Err(LifecycleError::Conflict(_))));
}

#[test]
fn namespaces_exist_and_guard_their_contents() {
    let (store, rt, lc) = setup();
    assert!(lc.namespaces().exists("default") && lc.namespaces().exists("os-images"));
    lc.namespaces().create("team-a").unwrap();
    lc.vms().create("team-a", vm("a", "Halted", 0)).unwrap();
    assert!(matches!(lc.namespaces().delete("team-a"), Err(LifecycleError::Conflict(_))));
    assert!(lc.namespaces().delete("default").is_err());
    drop(lc);
    let lc = Lifecycle::new(store, rt, opts()).unwrap();
    assert!(lc.namespaces().exists("team-a"), "namespaces persist");
    assert_eq!(lc.vms().list(Some("team-a")).len(), 1);
    lc.vms().delete("team-a", "a").unwrap();
    settle(&lc);
    lc.namespaces().delete("team-a").unwrap();
}

#[test]
fn a_failing_vm_fails_on_its_own_while_another_starts_in_the_same_pass() {
    let store = Arc::new(FlakyStore::default());
    let rt = Arc::new(FakeRuntime::default());
    let lc = Lifecycle::new(
        store.clone(),
        rt.clone(),
        LifecycleOptions {
            backoff_base: Duration::from_secs(60),
            requeue_base: Duration::from_secs(60),
            ..LifecycleOptions::default()
        },
    )
    .unwrap();
    // Names sort before the healthy VM's, so they are reconciled first in the pass.
    lc.vms().create("default", vm("a-missing-volume", "Always", 30)).unwrap();
    lc.vms().create("default", vm("b-store-fails", "Always", 30)).unwrap();
    lc.vms().create("default", vm("c-good", "Always", 30)).unwrap();
    lock(&rt.missing_volume).insert("a-missing-volume".into());
    store.fail("b-store-fails");

    lc.reconcile();
    assert_eq!(phase(&lc, "c-good"), Some(VmiPhase::Running), "the healthy VM starts in the same pass");
    assert_eq!(phase(&lc, "a-missing-volume"), Some(VmiPhase::Failed));
    let ev = lc.events(None);
    assert!(ev
        .iter()
        .any(|e| e.involved_object.name == "a-missing-volume" && e.message.contains("missing.qcow2")));
    assert_eq!(rt.launches("b-store-fails"), 0);
    let failures = store.failures.load(Ordering::SeqCst);
    assert!(failures >= 1);

    // The failed object waits for its own back-off; the others go on.
    lc.reconcile();
    assert_eq!(
        store.failures.load(Ordering::SeqCst),
        failures,
        "requeued with back-off, not retried at once"
    );
    lc.vms().stop("default", "c-good", Some(0)).unwrap();
    settle(&lc);
    assert_eq!(printable(&lc, "c-good"), "Stopped");
    assert_eq!(rt.launches("b-store-fails"), 0);
}

#[test]
fn an_object_whose_reconcile_failed_is_retried_once_the_store_heals() {
    let store = Arc::new(FlakyStore::default());
    let rt = Arc::new(FakeRuntime::default());
    let lc = Lifecycle::new(
        store.clone(),
        rt.clone(),
        LifecycleOptions { requeue_base: Duration::ZERO, ..opts() },
    )
    .unwrap();
    lc.vms().create("default", vm("r", "Always", 30)).unwrap();
    store.fail("r");
    settle(&lc);
    assert_eq!(rt.launches("r"), 0);
    assert!(store.failures.load(Ordering::SeqCst) >= 2, "retried after its (zero) back-off");
    store.heal();
    settle(&lc);
    assert_eq!(phase(&lc, "r"), Some(VmiPhase::Running));
    assert_eq!(rt.launches("r"), 1);
}

#[test]
fn a_write_the_store_refuses_is_never_visible() {
    let store = Arc::new(FlakyStore::default());
    let rt = Arc::new(FakeRuntime::default());
    let lc = Lifecycle::new(store.clone(), rt.clone(), opts()).unwrap();
    let mut watch = lc.watch(lc.resource_version()).unwrap();
    store.fail("*");
    // Creates: refused, and nobody sees them.
    assert!(matches!(lc.vms().create("default", vm("nv", "Always", 30)), Err(LifecycleError::Store(_))));
    assert!(matches!(lc.vms().get("default", "nv"), Err(LifecycleError::NotFound { .. })));
    assert!(lc.vms().list(None).is_empty());
    let vmi: VirtualMachineInstance = model::from_yaml(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: s\nspec:\n  domain:\n    devices: {}\n    memory:\n      guest: 64Mi\n",
    )
    .unwrap();
    assert!(lc.vmis().create("default", vmi).is_err());
    assert!(lc.vmis().list(None).is_empty());
    assert!(lc.namespaces().create("team-x").is_err());
    assert!(!lc.namespaces().exists("team-x"));
    settle(&lc);
    assert!(lc.vmis().list(None).is_empty(), "nothing was launched");
    assert_eq!(watch.next(Duration::ZERO).unwrap(), WatchEvent::Bookmark(0), "watchers saw nothing");

    // Changes of an existing, running VM: refused and not applied.
    store.heal();
    lc.vms().create("default", vm("v", "Always", 30)).unwrap();
    settle(&lc);
    assert_eq!(phase(&lc, "v"), Some(VmiPhase::Running));
    let before = lc.vms().get("default", "v").unwrap();
    let vmi_before = lc.vmis().get("default", "v").unwrap();
    store.fail("*");
    let mut changed = before.clone();
    changed.metadata.labels.insert("tier".into(), "web".into());
    assert!(lc.vms().replace("default", changed).is_err());
    assert!(lc.vms().stop("default", "v", None).is_err());
    assert!(lc.vms().delete("default", "v").is_err());
    assert!(lc.vmis().delete("default", "v", Some(0)).is_err());
    assert_eq!(lc.vms().get("default", "v").unwrap(), before, "the VM is as the store holds it");
    assert_eq!(lc.vmis().get("default", "v").unwrap(), vmi_before);
    settle(&lc);
    let m = rt.last("v");
    assert_eq!(
        m.power_downs.load(Ordering::SeqCst) + m.stops.load(Ordering::SeqCst),
        0,
        "no stop was acted on"
    );
    assert_eq!(phase(&lc, "v"), Some(VmiPhase::Running));

    // The store holds exactly what readers saw; a new lifecycle on it agrees.
    store.heal();
    drop(lc);
    let lc = Lifecycle::new(store, rt.clone(), opts()).unwrap();
    assert_eq!(lc.vms().get("default", "v").unwrap().metadata.labels, before.metadata.labels);
    assert!(lc.vms().get("default", "nv").is_err());
    assert_eq!(rt.launches("v"), 1, "found again, not started twice");
}

#[test]
fn watchers_see_the_lifecycle_s_changes_in_order() {
    let (_s, _rt, lc) = setup();
    let mut w = lc.watch(lc.resource_version()).unwrap();
    lc.vms().create("default", vm("w", "Always", 30)).unwrap();
    settle(&lc);
    let mut seen = Vec::new();
    while let WatchEvent::Change(c) = w.next(Duration::ZERO).unwrap() {
        seen.push((
            c.kind.clone(),
            c.type_,
            c.value()["metadata"]["resourceVersion"].as_str().unwrap().parse::<u64>().unwrap(),
        ));
    }
    assert_eq!(seen[0].0, "VirtualMachine");
    assert_eq!(seen[0].1, ChangeType::Added);
    assert!(seen.iter().any(|(k, t, _)| k == "VirtualMachineInstance" && *t == ChangeType::Added));
    assert!(seen.windows(2).all(|p| p[0].2 < p[1].2), "in resourceVersion order: {seen:?}");
    let vmi = lc.vmis().get("default", "w").unwrap();
    let last = seen.iter().rev().find(|(k, _, _)| k == "VirtualMachineInstance").unwrap().2;
    assert_eq!(vmi.metadata.resource_version, Some(last.to_string()), "the last change is what readers see");
}

#[test]
fn events_survive_a_restart_bounded_oldest_dropped() {
    let (store, rt, lc) = setup();
    lc.vms().create("default", vm("e", "Always", 30)).unwrap();
    settle(&lc);
    let before = lc.events(None);
    assert!(before.iter().any(|e| e.reason == "Started"), "{before:?}");
    drop(lc);
    let lc = Lifecycle::new(store.clone(), rt, opts()).unwrap();
    let after = lc.events(None);
    assert_eq!(after[..before.len()], before[..], "the events of before the restart are there");
    // Numbering goes on after the stored ones.
    lc.vms().stop("default", "e", Some(0)).unwrap();
    let names: BTreeSet<_> = lc.events(None).iter().map(|e| e.metadata.name.clone()).collect();
    assert_eq!(names.len(), lc.events(None).len(), "event names stay unique");
    // Bounded: a store keeps the latest `keep` only.
    for seq in 1..=10u64 {
        store.put_event(1_000 + seq, &serde_json::json!({ "n": seq }), 3).unwrap();
    }
    let kept: Vec<u64> =
        store.load_events().unwrap().into_iter().map(|(s, _)| s).filter(|s| *s > 1_000).collect();
    assert_eq!(kept, vec![1_008, 1_009, 1_010]);
}

#[test]
fn lists_take_label_selectors() {
    let (_s, _rt, lc) = setup();
    let mut web = vm("web", "Halted", 0);
    web.metadata.labels.insert("app".into(), "web".into());
    let mut db = vm("db", "Always", 0);
    db.metadata.labels.insert("app".into(), "db".into());
    lc.vms().create("default", web).unwrap();
    lc.vms().create("default", db).unwrap();
    settle(&lc);
    let sel = |s: &str| crate::api::parse_label_selector(s).unwrap();
    let names = |v: Vec<VirtualMachine>| v.into_iter().map(|v| v.metadata.name.unwrap()).collect::<Vec<_>>();
    assert_eq!(names(lc.vms().list_selected(None, &sel("app=web"))), ["web"]);
    assert_eq!(names(lc.vms().list_selected(Some("default"), &sel("app in (web,db)"))), ["db", "web"]);
    assert!(lc.vms().list_selected(Some("os-images"), &sel("app")).is_empty());
    assert!(lc.vmis().list_selected(None, &sel("app=db")).is_empty(), "the VMI has the template's labels");
    assert_eq!(lc.vmis().list_selected(None, &sel("")).len(), 1);
}

#[test]
fn finalizers_hold_a_deleted_vm_until_they_are_removed() {
    let (store, _rt, lc) = setup();
    let mut v = vm("fin", "Always", 0);
    v.metadata.finalizers = vec!["example.com/backup".into()];
    lc.vms().create("default", v).unwrap();
    settle(&lc);
    lc.vms().delete("default", "fin").unwrap();
    settle(&lc);
    assert!(lc.vmis().get("default", "fin").is_err(), "its instance went first");
    let held = lc.vms().get("default", "fin").unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let mut more = held.clone();
    more.metadata.finalizers.push("example.com/other".into());
    let e = lc.vms().replace("default", more).unwrap_err().to_string();
    assert!(e.contains("metadata.finalizers"), "{e}");
    let mut done = held;
    done.metadata.finalizers.clear();
    lc.vms().replace("default", done).unwrap();
    settle(&lc);
    assert!(lc.vms().get("default", "fin").is_err(), "gone once its finalizers are");
    assert!(store.load().unwrap().iter().all(|o| o.key.name != "fin"));
}

#[path = "gc_tests.rs"]
mod gc;

#[path = "queue_tests.rs"]
mod queue;

/// Counts the durable steps a store is asked for: each put, put_all and delete is one.
#[derive(Default)]
struct CountingStore {
    inner: MemStore,
    commits: AtomicU32,
}

impl Store for CountingStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        self.inner.load()
    }
    fn put(&self, object: &StoredObject) -> Result<u64, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.put(object)
    }
    fn put_all(&self, objects: &[StoredObject]) -> Result<Vec<u64>, StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.put_all(objects)
    }
    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(kind, key)
    }
    fn changes(&self) -> &Arc<ChangeLog> {
        self.inner.changes()
    }
}

#[test]
fn a_start_costs_four_durable_writes_and_every_phase_is_still_its_own_change() {
    let store = Arc::new(CountingStore::default());
    let lc = Lifecycle::new(store.clone(), Arc::new(FakeRuntime::default()), opts()).unwrap();
    lc.vms().create("default", vm("w", "Halted", 0)).unwrap();
    settle(&lc);
    let (from, commits) = (lc.resource_version(), store.commits.load(Ordering::SeqCst));
    let mut watch = lc.watch(from).unwrap();
    lc.vms().start("default", "w").unwrap();
    settle(&lc);
    assert_eq!(phase(&lc, "w"), Some(VmiPhase::Running));
    // The request; the new VMI with the VM's status; Scheduling (before the launch, outside the
    // lock); Scheduled, Running and the VM's status together.
    assert_eq!(store.commits.load(Ordering::SeqCst) - commits, 4);
    let mut seen = Vec::new();
    for _ in from..lc.resource_version() {
        let WatchEvent::Change(c) = watch.next(Duration::from_secs(1)).unwrap() else { panic!("a bookmark") };
        let v: serde_json::Value = serde_json::from_str(&c.object).unwrap();
        let status = &v["status"];
        let shown = status["phase"].as_str().or(status["printableStatus"].as_str()).unwrap_or_default();
        seen.push(format!("{} {shown}", c.kind));
        // The VM and VMI in memory carry the resourceVersion of their last change.
        let current = match c.kind.as_str() {
            "VirtualMachine" => lc.vms().get("default", "w").unwrap().metadata.resource_version,
            _ => lc.vmis().get("default", "w").unwrap().metadata.resource_version,
        };
        assert!(current.unwrap().parse::<u64>().unwrap() >= c.resource_version);
    }
    assert_eq!(
        seen,
        [
            "VirtualMachine Stopped",
            "VirtualMachineInstance Pending",
            "VirtualMachine Provisioning",
            "VirtualMachineInstance Scheduling",
            "VirtualMachineInstance Scheduled",
            "VirtualMachineInstance Running",
            "VirtualMachine Running",
        ]
    );
    assert_eq!(
        lc.vms().get("default", "w").unwrap().metadata.resource_version,
        Some(lc.resource_version().to_string())
    );
}
