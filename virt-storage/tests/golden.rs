//! Golden images end to end: a real registry (Debian's docker-registry), images pushed with skopeo,
//! the conformance DataImportCron loaded unchanged and pointed at the test registry, reconciled
//! through v1, v2, v3 and a storage-class change.

mod support;

use std::collections::BTreeMap;

use support::registry::*;
use virt_storage::cdi::{self, DataImportCron, DataSource, DataSourceSpec, ObjectMeta};
use virt_storage::golden::{import_name, reconcile_cron, StorageClasses};
use virt_storage::volume::{CloneOptions, DirPool, VolumeId, VolumeProvider};

fn push(reg: &Registry, tag_digest_seed: u64) -> Vec<u8> {
    let disk = disk_bytes(tag_digest_seed, 1 << 20);
    let mut layout = OciLayout::new();
    container_disk_image(&mut layout, "latest", "fedora.img", &disk, Comp::Gzip);
    reg.push(&layout, "latest", "kubevirt/fedora", &[]);
    disk
}

fn cron_for(reg: &Registry) -> DataImportCron {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../conformance/golden/dataimportcron-fedora.yaml"
    ))
    .expect("conformance/golden/dataimportcron-fedora.yaml");
    let mut cron: DataImportCron = cdi::from_yaml(&text).unwrap();
    // Same object, but polling the test's registry instead of quay.io.
    let src = cron.spec.template.spec.source.as_mut().unwrap().registry.as_mut().unwrap();
    src.url = Some(format!("docker://{}/kubevirt/fedora:latest", reg.host));
    cron
}

fn datasource(name: &str) -> DataSource {
    DataSource {
        api_version: Some("cdi.kubevirt.io/v1beta1".into()),
        kind: Some("DataSource".into()),
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("golden-images".into()),
            ..Default::default()
        },
        spec: DataSourceSpec::default(),
        status: None,
    }
}

fn read(pool: &dyn VolumeProvider, id: &VolumeId) -> Vec<u8> {
    let v = pool.open(id, true).unwrap();
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(0, &mut b).unwrap();
    b
}

#[test]
fn cron_imports_new_digests_repoints_the_source_and_collects_old_ones() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(dir.path().join("hostpath")).unwrap();
    let classes = StorageClasses {
        classes: BTreeMap::from([("hostpath-provisioner".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "hostpath-provisioner".into(),
    };
    let mut cron = cron_for(&reg);
    assert_eq!(cron.spec.imports_to_keep, Some(2));
    let mut ds = datasource("fedora");
    // Monday 2026-11-23 01:30 UTC is when "30 1 * * 1" fires; start just before.
    let mut now = 1_795_397_000;

    // v1: the first reconcile imports at once and points the DataSource at it.
    let v1 = push(&reg, 1);
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap();
    let first = r.imported.clone().expect("v1 imported");
    assert_eq!(first.namespace, "golden-images");
    assert_eq!(first.name, import_name("fedora", r.digest.as_deref().unwrap()));
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, first.name);
    assert_eq!(read(&pool, &first), v1);
    let st = cron.status.clone().unwrap();
    assert_eq!(st.last_imported_pvc.unwrap().name, first.name);
    assert!(st.conditions.iter().any(|c| c.type_ == "UpToDate" && c.status == cdi::ConditionStatus::True));

    // Not due again before the schedule fires: nothing happens, even though the tag moves.
    let v2 = push(&reg, 2);
    now += 60;
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap();
    assert_eq!((r.polled, r.skipped.as_deref()), (false, Some("not due yet")));

    // A week later the schedule has fired: v2 is imported and the DataSource moves to it.
    now += 7 * 86400;
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap();
    let second = r.imported.clone().expect("v2 imported");
    assert_ne!(second, first);
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, second.name);
    assert_eq!(read(&pool, &second), v2);
    assert!(r.deleted.is_empty(), "two imports are within importsToKeep=2");

    // A VM cloned from the golden image while it is current.
    let vm_disk = VolumeId::new("default", "vm1-rootdisk");
    pool.clone_volume(&second, &vm_disk, CloneOptions::default()).unwrap();

    // v3 with automatic updates off: not even polled.
    let v3 = push(&reg, 3);
    now += 7 * 86400;
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, false, now).unwrap();
    assert!(!r.polled && r.imported.is_none(), "{r:?}");
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, second.name);

    // Updates back on: v3 is imported, and v1 (beyond importsToKeep) is collected; v2 stays (kept).
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap();
    let third = r.imported.clone().expect("v3 imported");
    assert_eq!(read(&pool, &third), v3);
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, third.name);
    assert_eq!(r.deleted, vec![first.clone()]);
    assert!(pool.get(&first).unwrap().is_none());
    assert!(pool.get(&second).unwrap().is_some());
    // The VM's disk is unaffected by the golden image moving on.
    assert_eq!(read(&pool, &vm_disk), v2);

    // Reconciling again with nothing new changes nothing.
    now += 7 * 86400;
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap();
    assert!(r.polled && r.imported.is_none() && r.deleted.is_empty(), "{r:?}");
}

#[test]
fn boot_sources_move_to_the_new_default_class_once_the_old_ones_are_deleted() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let dir = tempfile::tempdir().unwrap();
    let old = DirPool::new(dir.path().join("old-class")).unwrap();
    let new = DirPool::new(dir.path().join("new-class")).unwrap();
    let mut classes = StorageClasses {
        classes: BTreeMap::from([
            ("old".to_string(), &old as &dyn VolumeProvider),
            ("new".to_string(), &new as &dyn VolumeProvider),
        ]),
        default_class: "old".into(),
    };
    let mut cron = cron_for(&reg);
    let mut ds = datasource("fedora");
    let disk = push(&reg, 9);
    let now = 1_795_397_000;
    let first = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now).unwrap().imported.unwrap();
    assert!(old.get(&first).unwrap().is_some());

    // The default class changes: the existing boot source stays where it is.
    classes.default_class = "new".into();
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now + 60).unwrap();
    assert!(r.imported.is_none());
    assert!(old.get(&first).unwrap().is_some() && new.get(&first).unwrap().is_none());

    // Once the administrator deletes it, the next reconcile imports it again on the new class.
    old.delete(&first).unwrap();
    let r = reconcile_cron(&mut cron, &mut ds, &classes, &client, true, now + 120).unwrap();
    assert_eq!(r.imported.as_ref(), Some(&first));
    assert!(new.get(&first).unwrap().is_some());
    assert_eq!(read(&new, &first), disk);
    assert_eq!(ds.spec.source.pvc.as_ref().unwrap().name, first.name);
}
