//! The controller is driven by what changed: [`Lifecycle::run`] reconciles the objects requests
//! and machine watchers queued, not every object on every wake-up.

use std::sync::atomic::AtomicBool;
use std::thread;

use super::*;

/// A lifecycle whose controller runs in a thread, resyncing only every hour.
fn running(lc: Arc<Lifecycle>) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = thread::spawn(move || lc.run(&s));
    (stop, h)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn queued_lifecycle() -> (Arc<FakeRuntime>, Arc<Lifecycle>) {
    let rt = Arc::new(FakeRuntime::default());
    let o = LifecycleOptions { resync: Duration::from_secs(3600), tick: Duration::from_millis(20), ..opts() };
    let lc = Arc::new(Lifecycle::new(Arc::new(MemStore::default()), rt.clone(), o).unwrap());
    (rt, lc)
}

#[test]
fn a_start_among_many_vms_reconciles_that_vm_only() {
    let (rt, lc) = queued_lifecycle();
    let (stop, h) = running(lc.clone());
    for i in 0..100 {
        lc.vms().create("default", vm(&format!("idle-{i:03}"), "Halted", 0)).unwrap();
    }
    lc.vms().create("default", vm("web", "Halted", 0)).unwrap();
    wait_for("the creates to be reconciled", || {
        lc.vms()
            .list(None)
            .iter()
            .all(|v| v.status.as_ref().and_then(|s| s.printable_status.as_deref()) == Some("Stopped"))
    });
    // Let the passes the creates queued drain.
    thread::sleep(Duration::from_millis(200));
    let before = lc.reconcile_stats();

    lc.vms().start("default", "web").unwrap();
    wait_for("web to run", || {
        phase(&lc, "web") == Some(VmiPhase::Running) && printable(&lc, "web") == "Running"
    });
    thread::sleep(Duration::from_millis(200));
    let after = lc.reconcile_stats();
    stop.store(true, Ordering::Relaxed);
    lc.wake();
    h.join().unwrap();

    assert_eq!(rt.launches("web"), 1);
    assert_eq!(after.full_passes, before.full_passes, "a start must not trigger a pass over every object");
    let objects = after.objects - before.objects;
    assert!(
        (1..=20).contains(&objects),
        "starting one VM among 101 reconciled {objects} objects over {} passes (a scan of all is 101 per pass)",
        after.passes - before.passes
    );
}

#[test]
fn a_machine_event_queues_its_vmi_and_a_wake_reconciles_everything() {
    let (rt, lc) = queued_lifecycle();
    let (stop, h) = running(lc.clone());
    lc.vms().create("default", vm("a", "Always", 0)).unwrap();
    lc.vms().create("default", vm("b", "Halted", 0)).unwrap();
    wait_for("a to run", || phase(&lc, "a") == Some(VmiPhase::Running));
    // The guest powers off: its machine's watcher (FakeMachine has no event stream; the watcher
    // sees the end within a second) queues the VMI, whose VM (Always) starts it again.
    rt.last("a").set(MachineStatus::Stopped(MachineExit::PowerOff));
    wait_for("a to be restarted (Always)", || rt.launches("a") == 2);
    let full = lc.reconcile_stats().full_passes;
    lc.wake();
    wait_for("the wake's pass over everything", || lc.reconcile_stats().full_passes > full);
    stop.store(true, Ordering::Relaxed);
    lc.wake();
    h.join().unwrap();
    assert_eq!(rt.launches("b"), 0);
}
