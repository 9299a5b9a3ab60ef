//! Deletions with a propagation policy: what happens to the VM, its VMI and the objects a
//! [`Dependents`] keeps for it.

use super::*;

/// Dependents kept in memory: (namespace, owner uid) of each object.
#[derive(Default)]
struct FakeDependents {
    objects: Mutex<Vec<(String, String)>>,
    orphaned: AtomicU32,
}

impl Dependents for FakeDependents {
    fn owned(&self, namespace: &str, owner_uid: &str) -> Result<usize, DependentsError> {
        Ok(lock(&self.objects).iter().filter(|(n, u)| n == namespace && u == owner_uid).count())
    }
    fn delete_owned(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError> {
        lock(&self.objects).retain(|(n, u)| !(n == namespace && u == owner_uid));
        Ok(())
    }
    fn orphan(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError> {
        for o in lock(&self.objects).iter_mut().filter(|(n, u)| n == namespace && u == owner_uid) {
            o.1.clear();
            self.orphaned.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

fn with_dependents(lc: &Lifecycle, name: &str) -> Arc<FakeDependents> {
    let deps = Arc::new(FakeDependents::default());
    let uid = lc.vms().get("default", name).unwrap().metadata.uid.unwrap();
    lock(&deps.objects).push(("default".into(), uid));
    let weak: std::sync::Weak<dyn Dependents> = Arc::downgrade(&deps) as std::sync::Weak<dyn Dependents>;
    lc.set_dependents(weak);
    deps
}

#[test]
fn background_removes_the_vm_at_once_and_its_instance_after() {
    let (store, rt, lc) = setup();
    lc.vms().create("default", vm("bg", "Always", 30)).unwrap();
    settle(&lc);
    let out = lc.vms().delete_with("default", "bg", Some(Propagation::Background)).unwrap();
    assert!(out.metadata.deletion_timestamp.is_some());
    assert!(lc.vms().get("default", "bg").is_err(), "the owner goes first");
    assert!(store.get(Kind::VirtualMachine, &Key::new("default", "bg")).unwrap().is_none());
    settle(&lc);
    assert!(lc.vmis().get("default", "bg").is_err(), "its instance is collected after it");
    assert_eq!(rt.last("bg").power_downs.load(Ordering::SeqCst), 1, "stopped gracefully");
}

#[test]
fn foreground_holds_the_vm_until_its_dependents_are_gone() {
    let (_store, rt, lc) = setup();
    rt.ignore_power_button.store(true, Ordering::SeqCst);
    lc.vms().create("default", vm("fg", "Always", 3600)).unwrap();
    settle(&lc);
    let deps = with_dependents(&lc, "fg");
    lc.vms().delete_with("default", "fg", Some(Propagation::Foreground)).unwrap();
    settle(&lc);
    // The guest ignores the power button: its VMI is still stopping, so the VM stays.
    let held = lc.vms().get("default", "fg").unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    assert_eq!(held.metadata.finalizers, [FOREGROUND_FINALIZER]);
    assert!(lc.vmis().get("default", "fg").is_ok());
    assert_eq!(lock(&deps.objects).len(), 0, "the other dependents were deleted first");
    lc.vmis().delete("default", "fg", Some(0)).unwrap();
    settle(&lc);
    assert!(lc.vmis().get("default", "fg").is_err());
    assert!(lc.vms().get("default", "fg").is_err(), "gone once its dependents are");
}

#[test]
fn orphan_keeps_the_instance_running_without_its_owner() {
    let (store, rt, lc) = setup();
    lc.vms().create("default", vm("or", "Always", 30)).unwrap();
    settle(&lc);
    let deps = with_dependents(&lc, "or");
    lc.vms().delete_with("default", "or", Some(Propagation::Orphan)).unwrap();
    settle(&lc);
    assert!(lc.vms().get("default", "or").is_err());
    let vmi = lc.vmis().get("default", "or").unwrap();
    assert!(vmi.metadata.owner_references.is_empty(), "{:?}", vmi.metadata.owner_references);
    assert_eq!(phase(&lc, "or"), Some(VmiPhase::Running));
    assert_eq!(rt.last("or").power_downs.load(Ordering::SeqCst), 0, "never stopped");
    assert_eq!((lock(&deps.objects).len(), deps.orphaned.load(Ordering::SeqCst)), (1, 1));
    let stored = store.get(Kind::VirtualMachineInstance, &Key::new("default", "or")).unwrap().unwrap();
    let refs =
        stored.value.pointer("/metadata/ownerReferences").and_then(|o| o.as_array()).map_or(0, Vec::len);
    assert_eq!(refs, 0, "stored without its owner reference");
    lc.vmis().delete("default", "or", Some(0)).unwrap();
    settle(&lc);
    assert!(lc.vmis().get("default", "or").is_err());
}

#[test]
fn propagation_policies_are_parsed_or_refused_by_name() {
    assert_eq!(Propagation::parse("Foreground", "propagationPolicy").unwrap(), Propagation::Foreground);
    let e = Propagation::parse("Sideways", "propagationPolicy").unwrap_err().to_string();
    assert!(e.contains("propagationPolicy") && e.contains("Sideways"), "{e}");
}
