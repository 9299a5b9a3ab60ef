//! DataVolumes from the conformance folder, loaded unchanged (only URLs pointed at local servers),
//! reconciled into volumes: blank, HTTP (busybox httpd), registry (docker-registry), clone, a golden
//! image through a DataSource, upload, and failures.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};

use support::registry::*;
use virt_storage::cdi::{
    self, DataSource, DataSourceSpec, DataVolume, DataVolumePhase, ObjectMeta, PvcSource, Quantity,
    VolumeSnapshot, VolumeSnapshotError, VolumeSnapshotStatus,
};
use virt_storage::datavolume::{
    reconcile_data_volume, DvEnv, DvRun, ObjectLookup, ANN_CLONE_FALLBACK, ANN_CLONE_TYPE,
};
use virt_storage::golden::StorageClasses;
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId, VolumeProvider};

fn conformance(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/cdi").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Default)]
struct Objects {
    secrets: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    sources: HashMap<(String, String), DataSource>,
    snapshots: HashMap<(String, String), VolumeSnapshot>,
}

impl ObjectLookup for Objects {
    fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        self.secrets.get(&(ns.into(), name.into())).cloned()
    }
    fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn data_source(&self, ns: &str, name: &str) -> Option<DataSource> {
        self.sources.get(&(ns.into(), name.into())).cloned()
    }
    fn volume_snapshot(&self, ns: &str, name: &str) -> Option<VolumeSnapshot> {
        self.snapshots.get(&(ns.into(), name.into())).cloned()
    }
}

struct Httpd(Child, u16);
impl Drop for Httpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn httpd(dir: &std::path::Path) -> Httpd {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("busybox")
        .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
        .arg(dir)
        .spawn()
        .expect("busybox (busybox-static) is needed");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Httpd(child, port)
}

fn phase(dv: &DataVolume) -> Option<DataVolumePhase> {
    dv.status.as_ref().and_then(|s| s.phase)
}

/// The volume's size and its first `n` bytes.
fn head(pool: &dyn VolumeProvider, id: &VolumeId, n: usize) -> (u64, Vec<u8>) {
    let v = pool.open(id, true).unwrap();
    let mut b = vec![0u8; n];
    v.read_at(0, &mut b).unwrap();
    (v.size(), b)
}

#[test]
fn conformance_datavolumes_populate_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(dir.path().join("pool")).unwrap();
    let classes = StorageClasses {
        classes: BTreeMap::from([("local".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "local".into(),
    };
    let mut objects = Objects::default();
    let none = |_: &_| {};

    // Blank.
    let mut dv: DataVolume = cdi::from_yaml(&conformance("blank-image-datavolume.yaml")).unwrap();
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Populated);
    assert_eq!(phase(&dv), Some(DataVolumePhase::Succeeded));
    let v = pool.get(&VolumeId::new("default", "blank-image-datavolume")).unwrap().unwrap();
    assert_eq!(v.size, 500 << 20);
    // Reconciling again changes nothing.
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::AlreadyDone);

    // HTTP, from busybox's httpd; the image (1 MiB) is grown to the requested 500 MiB.
    let www = tempfile::tempdir().unwrap();
    let image = disk_bytes(3, 1 << 20);
    std::fs::write(www.path().join("cirros.img"), &image).unwrap();
    let srv = httpd(www.path());
    let text = conformance("import-kubevirt-datavolume.yaml").replace(
        "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
        &format!("http://127.0.0.1:{}/cirros.img", srv.1),
    );
    let mut dv: DataVolume = cdi::from_yaml(&text).unwrap();
    let mut seen = Vec::new();
    let r = reconcile_data_volume(&mut dv, &env, &mut |st: &cdi::DataVolumeStatus| {
        seen.push((st.phase, st.progress.clone()))
    });
    assert_eq!(r, DvRun::Populated, "{:?}", dv.status);
    assert_eq!(seen.first().unwrap().0, Some(DataVolumePhase::ImportInProgress));
    assert_eq!(dv.status.as_ref().unwrap().progress.as_ref().unwrap().0, "100.0%");
    let id = VolumeId::new("default", "my-data-volume");
    let (size, data) = head(&pool, &id, image.len());
    assert_eq!(size, 500 << 20);
    assert_eq!(data, image);

    // A 404 fails with the server's answer in the status and leaves no volume.
    let text = conformance("import-kubevirt-datavolume.yaml")
        .replace(
            "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
            &format!("http://127.0.0.1:{}/missing.img", srv.1),
        )
        .replace("my-data-volume", "missing");
    let mut dv: DataVolume = cdi::from_yaml(&text).unwrap();
    let r = reconcile_data_volume(&mut dv, &env, &mut none.clone());
    assert!(matches!(&r, DvRun::Failed(m) if m.contains("404")), "{r:?}");
    assert_eq!(phase(&dv), Some(DataVolumePhase::Failed));
    let ready = dv.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert!(ready.message.as_deref().unwrap().contains("404"));
    assert!(pool.get(&VolumeId::new("default", "missing")).unwrap().is_none());

    // A secretRef that does not exist is named.
    let text = conformance("import-kubevirt-datavolume-secret.yaml").replace("my-data-volume", "with-secret");
    let mut dv: DataVolume = cdi::from_yaml(&text).unwrap();
    assert!(
        matches!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Failed(m) if m.contains("endpoint-secret"))
    );
    // An image bigger than the requested size fails.
    std::fs::write(www.path().join("big.img"), vec![1u8; 2 << 20]).unwrap();
    let text = conformance("import-kubevirt-datavolume.yaml")
        .replace(
            "https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img",
            &format!("http://127.0.0.1:{}/big.img", srv.1),
        )
        .replace("my-data-volume", "too-small")
        .replace("500Mi", "1Mi");
    let mut dv: DataVolume = cdi::from_yaml(&text).unwrap();
    assert!(
        matches!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Failed(m) if m.contains("requests only"))
    );
    assert!(pool.get(&VolumeId::new("default", "too-small")).unwrap().is_none());

    // Upload: waits for the upload endpoint.
    let mut dv: DataVolume = cdi::from_yaml(&conformance("upload-datavolume.yaml")).unwrap();
    assert!(matches!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Waiting(_)));
    assert_eq!(phase(&dv), Some(DataVolumePhase::UploadReady));

    // Clone: waits for its source, then clones it (an overlay here: the temp dir has no reflinks).
    let mut dv: DataVolume = cdi::from_yaml(&conformance("clone-datavolume.yaml")).unwrap();
    assert!(matches!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Waiting(_)));
    assert_eq!(phase(&dv), Some(DataVolumePhase::CloneScheduled));
    let src = VolumeId::new("source-ns", "source-datavolume");
    pool.create_blank(&src, 1 << 20, VolumeFormat::Raw).unwrap();
    pool.open(&src, false).unwrap().write_at(0, b"cloned bytes").unwrap();
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Populated);
    let strategy = dv.metadata.annotations.get(ANN_CLONE_TYPE).cloned().unwrap();
    if pool.profile().reflink.is_err() {
        assert_eq!(strategy, "overlay");
        assert!(dv.metadata.annotations.get(ANN_CLONE_FALLBACK).unwrap().contains("reflink"));
    }
    assert_eq!(head(&pool, &VolumeId::new("default", "cloned-datavolume"), 12).1, b"cloned bytes");

    // A VM disk from a golden image: sourceRef -> DataSource -> its volume, cloned.
    objects.sources.insert(
        ("os-images".into(), "fedora".into()),
        DataSource {
            api_version: None,
            kind: None,
            metadata: ObjectMeta {
                name: Some("fedora".into()),
                namespace: Some("os-images".into()),
                ..Default::default()
            },
            spec: DataSourceSpec {
                source: cdi::DataSourceSource {
                    pvc: Some(PvcSource {
                        namespace: "os-images".into(),
                        name: "fedora-0123456789ab".into(),
                    }),
                    ..Default::default()
                },
            },
            status: None,
        },
    );
    let golden = VolumeId::new("os-images", "fedora-0123456789ab");
    pool.create_blank(&golden, 2 << 20, VolumeFormat::Raw).unwrap();
    pool.open(&golden, false).unwrap().write_at(4096, b"golden").unwrap();
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    let mut dv: DataVolume = cdi::from_yaml(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: vm1-root\nspec:\n  sourceRef:\n    kind: DataSource\n    name: fedora\n    namespace: os-images\n  storage:\n    resources:\n      requests:\n        storage: 2Mi\n",
    )
    .unwrap();
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut none.clone()), DvRun::Populated, "{:?}", dv.status);
    assert_eq!(&head(&pool, &VolumeId::new("default", "vm1-root"), 4102).1[4096..], b"golden");
}

#[test]
fn registry_datavolume_imports_the_container_disk() {
    let reg = Registry::start(RegistryOpts::default());
    let disk = disk_bytes(11, 1 << 20);
    let mut layout = OciLayout::new();
    container_disk_image(&mut layout, "latest", "fedora.img", &disk, Comp::Gzip);
    reg.push(&layout, "latest", "kubevirt/fedora-cloud-registry-disk-demo", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(dir.path().join("pool")).unwrap();
    let classes = StorageClasses {
        classes: BTreeMap::from([("local".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "local".into(),
    };
    let objects = Objects::default();
    let env = DvEnv {
        classes: &classes,
        objects: &objects,
        insecure_registries: vec![reg.host.clone()],
        net_policy: None,
    };
    let text = conformance("registry-image-datavolume.yaml")
        .replace("docker://kubevirt/", &format!("docker://{}/kubevirt/", reg.host));
    let mut dv: DataVolume = cdi::from_yaml(&text).unwrap();
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut |_| {}), DvRun::Populated, "{:?}", dv.status);
    let (size, data) = head(&pool, &VolumeId::new("default", "registry-image-datavolume"), disk.len());
    assert_eq!(size, 5 << 30);
    assert_eq!(data, disk);
}

fn snapshot_dv(name: &str, snap: &str, size: Option<&str>) -> DataVolume {
    let storage =
        size.map(|s| format!("\n  storage:\n    resources:\n      requests:\n        storage: {s}"));
    cdi::from_yaml(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\n  namespace: \
         default\nspec:\n  source:\n    snapshot:\n      namespace: default\n      name: {snap}{}\n",
        storage.unwrap_or_else(|| "\n  storage: {}".into())
    ))
    .unwrap()
}

#[test]
fn snapshot_sources_restore_the_snapshot_or_wait_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(dir.path().join("pool")).unwrap();
    let classes = StorageClasses {
        classes: BTreeMap::from([("local".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "local".into(),
    };
    let disk = VolumeId::new("default", "disk");
    pool.create_blank(&disk, 1 << 20, VolumeFormat::Raw).unwrap();
    pool.open(&disk, false).unwrap().write_at(0, b"old signature").unwrap();
    let mut objects = Objects::default();
    let mut vs: VolumeSnapshot = virt_core::api::Decoder::new(&Default::default(), 1)
        .decode(
            serde_json::json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
                "metadata": {"name": "snap", "namespace": "default"},
                "spec": {"source": {"persistentVolumeClaimName": "disk"}}}),
            "",
        )
        .unwrap();

    // No such snapshot: the DataVolume waits, saying so.
    let mut dv = snapshot_dv("restored", "snap", Some("2Mi"));
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    let r = reconcile_data_volume(&mut dv, &env, &mut |_: &_| {});
    assert!(
        matches!(&r, DvRun::Waiting(m) if m.contains("VolumeSnapshot default/snap (spec.source.snapshot) not found")),
        "{r:?}"
    );
    assert_eq!(phase(&dv), Some(DataVolumePhase::Pending));

    // Not ready (an error in its status): still waiting, with the snapshot's error.
    vs.status = Some(VolumeSnapshotStatus {
        ready_to_use: Some(false),
        error: Some(VolumeSnapshotError { message: Some("claim default/disk not found".into()), time: None }),
        ..Default::default()
    });
    objects.snapshots.insert(("default".into(), "snap".into()), vs.clone());
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    let r = reconcile_data_volume(&mut dv, &env, &mut |_: &_| {});
    assert!(
        matches!(&r, DvRun::Waiting(m) if m == "VolumeSnapshot default/snap is not ready to use yet: claim default/disk not found"),
        "{r:?}"
    );
    assert_eq!(phase(&dv), Some(DataVolumePhase::Pending));

    // Taken and ready; the original is overwritten afterwards.
    let taken = pool.snapshot(&disk, "snap").unwrap();
    vs.status = Some(VolumeSnapshotStatus {
        ready_to_use: Some(true),
        restore_size: Some(Quantity::from_bytes(taken.volume.size)),
        ..Default::default()
    });
    objects.snapshots.insert(("default".into(), "snap".into()), vs.clone());
    pool.open(&disk, false).unwrap().write_at(0, b"new signature").unwrap();
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    let mut phases = Vec::new();
    let r = reconcile_data_volume(&mut dv, &env, &mut |st: &cdi::DataVolumeStatus| phases.push(st.phase));
    assert_eq!(r, DvRun::Populated, "{:?}", dv.status);
    assert_eq!(phases, [Some(DataVolumePhase::CloneScheduled), Some(DataVolumePhase::CloneInProgress)]);
    assert_eq!(phase(&dv), Some(DataVolumePhase::Succeeded));
    let restored = VolumeId::new("default", "restored");
    assert_eq!(head(&pool, &restored, 13), (2 << 20, b"old signature".to_vec()));
    // ext4 or XFS: a reflink or a copy, never an overlay on the snapshot.
    let how = dv.metadata.annotations[ANN_CLONE_TYPE].clone();
    assert!(how == "reflink" || how == "host-assisted", "{how}");
    if how == "host-assisted" {
        assert!(dv.metadata.annotations[ANN_CLONE_FALLBACK].contains("reflink"));
    }
    assert_eq!(pool.get(&restored).unwrap().unwrap().backing, None);
    // The snapshot can go; the restored volume stays whole.
    pool.delete_snapshot(&disk, "snap").unwrap();
    assert_eq!(head(&pool, &restored, 13).1, b"old signature");

    // No size: the snapshot's size.
    pool.snapshot(&disk, "snap").unwrap();
    let mut dv = snapshot_dv("same-size", "snap", None);
    assert_eq!(reconcile_data_volume(&mut dv, &env, &mut |_: &_| {}), DvRun::Populated, "{:?}", dv.status);
    assert_eq!(head(&pool, &VolumeId::new("default", "same-size"), 13), (1 << 20, b"new signature".to_vec()));

    // Smaller than the restoreSize: refused with the field path, nothing made.
    let mut dv = snapshot_dv("too-small", "snap", Some("512Ki"));
    let r = reconcile_data_volume(&mut dv, &env, &mut |_: &_| {});
    assert!(
        matches!(&r, DvRun::Failed(m) if m.starts_with("spec.storage.resources.requests.storage: Invalid value: 524288: smaller than the restoreSize (1048576 bytes) of VolumeSnapshot default/snap")),
        "{r:?}"
    );
    assert_eq!(phase(&dv), Some(DataVolumePhase::Failed));
    assert_eq!(pool.get(&VolumeId::new("default", "too-small")).unwrap(), None);
}
