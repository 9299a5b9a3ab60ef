use super::*;
use virt_storage::cdi;
use virt_storage::cdi::SNAPSHOT_API_VERSION;

fn dv(name: &str, source: &str) -> DataVolume {
    cdi::from_yaml(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  \
         source:\n    {source}\n  storage:\n    resources:\n      requests:\n        storage: 1Mi\n"
    ))
    .unwrap()
}

/// Drops the controller once its workers let go of it (just after they report), so that the
/// store's file can be opened again.
fn release(cdi: Arc<Cdi>) {
    let t = Instant::now();
    while Arc::strong_count(&cdi) > 1 {
        assert!(t.elapsed() < Duration::from_secs(20), "a worker still holds the controller");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait(cdi: &Arc<Cdi>, ns: &str, name: &str, phase: DataVolumePhase) -> DataVolume {
    let t = Instant::now();
    loop {
        cdi.pass();
        let d = cdi.data_volume(ns, name).unwrap();
        if phase_of(&d) == Some(phase) {
            return d;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{name} never reached {phase:?}: {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn blank_volumes_are_made_stored_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    let made = cdi.create_data_volume("default", dv("disk", "blank: {}")).unwrap();
    assert!(made.metadata.uid.is_some());
    assert!(matches!(
        cdi.create_data_volume("default", dv("disk", "blank: {}")),
        Err(CdiError::AlreadyExists { .. })
    ));
    let bad = cdi.create_data_volume("default", dv("Bad.Name", "blank: {}")).unwrap_err();
    assert!(bad.to_string().contains("metadata.name"), "{bad}");
    assert_eq!(cdi.claim_ready("default", "nothing"), None);
    let waiting = cdi.claim_ready("default", "disk");
    assert!(
        matches!(&waiting, Some(Err(m)) if m.to_string().starts_with("DataVolume disk is not ready (phase ")),
        "{waiting:?}"
    );
    wait(&cdi, "default", "disk", DataVolumePhase::Succeeded);
    assert_eq!(cdi.claim_ready("default", "disk"), Some(Ok(())));
    let file = dir.path().join("volumes/default/disk.img");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 1 << 20);
    release(cdi);
    // Reopened: the DataVolume is there, Succeeded.
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    let d = cdi.data_volume("default", "disk").unwrap();
    assert_eq!(phase_of(&d), Some(DataVolumePhase::Succeeded));
    cdi.delete(CdiKind::DataVolume, "default", "disk").unwrap();
    assert!(!file.exists());
    assert!(matches!(cdi.delete(CdiKind::DataVolume, "default", "disk"), Err(CdiError::NotFound { .. })));
    let mut labelled = dv("labelled", "blank: {}");
    labelled.metadata.labels.insert("app".into(), "web".into());
    cdi.create_data_volume("default", labelled).unwrap();
    cdi.create_data_volume("default", dv("plain", "blank: {}")).unwrap();
    let sel = virt_core::api::parse_label_selector("app=web").unwrap();
    let got = cdi.list_selected(CdiKind::DataVolume, Some("default"), &sel);
    assert_eq!(got.iter().map(|o| o["metadata"]["name"].clone()).collect::<Vec<_>>(), ["labelled"]);
}

#[test]
fn upload_tokens_only_for_upload_sources() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    cdi.create_data_volume("default", dv("up", "upload: {}")).unwrap();
    cdi.create_data_volume("default", dv("empty", "blank: {}")).unwrap();
    wait(&cdi, "default", "up", DataVolumePhase::UploadReady);
    assert!(cdi.upload_token("default", "up").unwrap().len() >= 32);
    let e = cdi.upload_token("default", "empty").unwrap_err().to_string();
    assert!(e.contains("its source is blank, not upload"), "{e}");
    let e = cdi.upload_token("default", "none").unwrap_err().to_string();
    assert_eq!(e, "persistentvolumeclaims \"none\" not found");
}

#[test]
fn templates_become_owned_datavolumes_or_errors_with_their_path() {
    let text = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm, namespace: default, uid: u-1}
spec:
  runStrategy: Halted
  dataVolumeTemplates:
  - metadata: {name: root}
    spec:
      source: {blank: {}}
      storage: {resources: {requests: {storage: 1Mi}}}
  - metadata: {name: bad}
    spec:
      source: {http: {urll: "http://x/y"}}
      storage: {}
  template: {spec: {domain: {devices: {}}}}
"#;
    let vm: VirtualMachine = virt_core::model::from_yaml(text).unwrap();
    let dv = dv_from_template(&vm, 0).unwrap();
    assert_eq!(dv.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(dv.metadata.owner_references[0].uid, "u-1");
    assert_eq!(phase_of(&dv), Some(DataVolumePhase::Pending));
    let e = dv_from_template(&vm, 1).unwrap_err();
    assert!(
        matches!(&e, CdiError::Template { path, vm, .. } if path == "spec.dataVolumeTemplates[1]" && vm == "default/vm"),
        "{e:?}"
    );
    let e = e.to_string();
    assert!(
        e.starts_with("DataVolume template spec.dataVolumeTemplates[1] of VirtualMachine default/vm"),
        "{e}"
    );
    assert!(e.contains(": spec.dataVolumeTemplates[1].spec.source.http.urll: unknown field"), "{e}");
}

#[test]
fn volume_snapshots_are_taken_kept_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    cdi.create_data_volume("default", dv("disk", "blank: {}")).unwrap();
    let vs = |name: &str, claim: &str| -> VolumeSnapshot {
        let v = serde_json::json!({"apiVersion": SNAPSHOT_API_VERSION, "kind": "VolumeSnapshot",
            "metadata": {"name": name}, "spec": {"source": {"persistentVolumeClaimName": claim}}});
        Decoder::new(&LoadOptions::default(), 1).decode(v, "").unwrap()
    };
    cdi.create_volume_snapshot("default", vs("snap", "disk")).unwrap();
    cdi.create_volume_snapshot("default", vs("lost", "nothing")).unwrap();
    let t = Instant::now();
    let get = |n: &str| -> VolumeSnapshot {
        serde_json::from_value(cdi.get(CdiKind::VolumeSnapshot, "default", n).unwrap()).unwrap()
    };
    while !get("snap").ready() || get("lost").status.and_then(|s| s.error).is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "{:?} {:?}", get("snap"), get("lost"));
        cdi.pass();
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = get("snap").status.unwrap();
    assert_eq!(st.restore_size.map(|q| q.bytes()), Some(1 << 20));
    let e = get("lost").status.unwrap().error.unwrap().message.unwrap();
    assert!(e.starts_with("persistentvolumeclaims \"nothing\" not found in namespace default"), "{e}");
    assert!(dir.path().join("volumes/default/.snapshots/disk@snap.img").is_file());
    release(cdi);
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    assert_eq!(cdi.list(CdiKind::VolumeSnapshot, Some("default")).len(), 2);
    cdi.delete(CdiKind::VolumeSnapshot, "default", "snap").unwrap();
    assert!(!dir.path().join("volumes/default/.snapshots/disk@snap.img").exists());
    assert!(matches!(cdi.delete(CdiKind::VolumeSnapshot, "default", "snap"), Err(CdiError::NotFound { .. })));
}

#[test]
fn the_storage_profile_says_how_the_pool_clones() {
    let dir = tempfile::tempdir().unwrap();
    let cdi = Cdi::open(dir.path(), vec![]).unwrap();
    let p = cdi.storage_profile();
    let st = p.status.unwrap();
    assert_eq!(st.storage_class.as_deref(), Some(STORAGE_CLASS));
    assert!(st.clone_strategy.is_some());
    assert!(p.metadata.annotations["virt-rs.io/clone-strategies"].contains("overlay"));
}

/// A runtime for Halted VMs: nothing is ever launched.
struct NoRuntime;

impl virt_core::lifecycle::Runtime for NoRuntime {
    fn launch(
        &self,
        _vmi: &virt_core::model::VirtualMachineInstance,
    ) -> Result<Arc<dyn virt_core::machine::Machine>, virt_core::lifecycle::LaunchError> {
        Err(virt_core::lifecycle::LaunchError::new(
            virt_core::lifecycle::LaunchStage::Start,
            "no runtime (test)",
        ))
    }
    fn reattach(
        &self,
        _vmi: &virt_core::model::VirtualMachineInstance,
    ) -> Option<Arc<dyn virt_core::machine::Machine>> {
        None
    }
    fn last_exit(
        &self,
        _vmi: &virt_core::model::VirtualMachineInstance,
    ) -> Option<virt_core::machine::MachineExit> {
        None
    }
    fn cleanup(&self, _vmi: &virt_core::model::VirtualMachineInstance) {}
}

fn templated_vm(name: &str, dv: &str) -> VirtualMachine {
    virt_core::model::from_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  runStrategy: Halted\n  \
         dataVolumeTemplates:\n  - metadata: {{name: {dv}}}\n    spec:\n      source: {{blank: {{}}}}\n      \
         storage: {{resources: {{requests: {{storage: 1Mi}}}}}}\n  template: {{spec: {{domain: {{devices: {{}}, memory: {{guest: 64Mi}}}}}}}}\n"
    ))
    .unwrap()
}

#[test]
fn template_datavolumes_follow_the_change_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RedbStore::open_state_dir(dir.path()).unwrap());
    let cdi = Cdi::open_with_store(dir.path(), store.clone(), vec![]).unwrap();
    let lc = Arc::new(Lifecycle::new(store, Arc::new(NoRuntime), Default::default()).unwrap());
    cdi.attach(lc.clone());
    let exists = |name: &str| cdi.data_volume("default", name).is_some();

    lc.vms().create("default", templated_vm("first", "first-root")).unwrap();
    cdi.pass(); // the first pass looks at every VM
    assert!(exists("first-root"));
    // Later passes look at what the change log says changed.
    lc.vms().create("default", templated_vm("second", "second-root")).unwrap();
    cdi.pass();
    assert!(exists("second-root"), "a VM created after the first pass gets its DataVolume");
    // A template DataVolume deleted by hand is made again (its deletion names its VM).
    // While the deleted one's (blank) import is still stopping, a pass cannot make it again yet
    // and the next pass tries again: passes run until it is back.
    cdi.delete(CdiKind::DataVolume, "default", "first-root").unwrap();
    let t = std::time::Instant::now();
    loop {
        cdi.pass();
        if exists("first-root") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "the deleted template DataVolume is made again");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The VM deleted: its DataVolume goes, the other VM's stays.
    lc.vms().delete("default", "second").unwrap();
    lc.reconcile(); // the lifecycle finishes the deletion
    cdi.pass();
    assert!(!exists("second-root"));
    assert!(exists("first-root"));
}

#[test]
fn a_template_owner_is_read_from_owner_references_only() {
    let dv = serde_json::json!({"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "VirtualMachine", "name": "not-kubevirt"},
        {"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "web", "uid": "u"}]}});
    assert_eq!(super::controller::template_owner("ns", &dv), Some(Key::new("ns", "web")));
    assert_eq!(super::controller::template_owner("ns", &serde_json::json!({"metadata": {}})), None);
    assert_eq!(super::controller::template_owner("ns", &serde_json::json!("garbage")), None);
}
