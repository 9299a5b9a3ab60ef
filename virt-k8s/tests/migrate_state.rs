//! A state directory written by an earlier node (main at 411eebd: lifecycle objects in node.redb,
//! CDI objects in cdi.redb with their own resourceVersion counter) opens with nothing lost: every
//! object is there, unchanged but for a new resourceVersion of the one sequence, and cdi.redb is
//! kept aside as cdi.redb.migrated. The fixture was made by `fixtures/state-main-411eebd/make.rs.txt`
//! run against that commit.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};
use serde_json::Value;
use virt_core::lifecycle::{Lifecycle, LifecycleOptions, Runtime, Store};
use virt_core::machine::{Machine, MachineExit};
use virt_core::model::VirtualMachineInstance;
use virt_k8s::node::cdi::{Cdi, CdiKind};
use virt_k8s::node::RedbStore;

struct NoRuntime;
impl Runtime for NoRuntime {
    fn launch(
        &self,
        _vmi: &VirtualMachineInstance,
    ) -> Result<Arc<dyn Machine>, virt_core::lifecycle::LaunchError> {
        Err(virt_core::lifecycle::LaunchError::new(
            virt_core::lifecycle::LaunchStage::Start,
            "this test launches nothing",
        ))
    }
    fn reattach(&self, _vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        None
    }
    fn last_exit(&self, _vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        None
    }
    fn cleanup(&self, _vmi: &VirtualMachineInstance) {}
}

fn unpack(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-main-411eebd");
    for f in ["node.redb", "cdi.redb"] {
        let gz = std::fs::File::open(from.join(format!("{f}.gz"))).unwrap();
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut bytes).unwrap();
        std::fs::write(to.join(f), bytes).unwrap();
    }
}

/// The rows of a redb table, as JSON by key.
fn rows(path: &Path, table: &str) -> Vec<(String, Value)> {
    let db = redb::Database::create(path).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(TableDefinition::<&str, &[u8]>::new(table)).unwrap();
    t.iter()
        .unwrap()
        .map(|r| {
            let (k, v) = r.unwrap();
            (k.value().to_string(), serde_json::from_slice(v.value()).unwrap())
        })
        .collect()
}

fn without_rv(mut v: Value) -> Value {
    v["metadata"].as_object_mut().unwrap().remove("resourceVersion");
    v
}

fn rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap()
}

#[test]
fn a_state_dir_of_the_previous_layout_is_migrated_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());
    let old_cdi = rows(&dir.path().join("cdi.redb"), "cdi");
    let old_node = rows(&dir.path().join("node.redb"), "objects");
    assert_eq!((old_cdi.len(), old_node.len()), (3, 5), "the fixture: 3 CDI objects, 5 lifecycle objects");

    for round in 0..2 {
        let store = Arc::new(RedbStore::open_state_dir(dir.path()).unwrap());
        assert!(!dir.path().join("cdi.redb").exists());
        assert!(dir.path().join("cdi.redb.migrated").exists());
        let lc = Lifecycle::new(store.clone(), Arc::new(NoRuntime), LifecycleOptions::default()).unwrap();
        let cdi = Cdi::open_with_store(dir.path(), store.clone(), vec![]).unwrap();

        // Lifecycle objects: as they were, resourceVersions included.
        assert!(lc.namespaces().exists("team-a"), "round {round}");
        let web = lc.vms().get("default", "web").unwrap();
        assert_eq!(web.metadata.labels.get("app").map(String::as_str), Some("fixture"));
        lc.vms().get("team-a", "db").unwrap();
        lc.vmis().get("default", "solo").unwrap();
        lc.catalog().get("VirtualMachineClusterInstancetype", None, "small").unwrap();
        let mut current: Vec<Value> = Vec::new();
        for (k, old) in &old_node {
            let name = old["metadata"]["name"].as_str().unwrap().to_string();
            let now = if k.starts_with("VirtualMachine/") {
                serde_json::to_value(
                    lc.vms().get(old["metadata"]["namespace"].as_str().unwrap(), &name).unwrap(),
                )
                .unwrap()
            } else if k.starts_with("VirtualMachineInstance/") {
                serde_json::to_value(
                    lc.vmis().get(old["metadata"]["namespace"].as_str().unwrap(), &name).unwrap(),
                )
                .unwrap()
            } else if k.starts_with("Namespace/") {
                lc.namespaces().list().into_iter().find(|n| n["metadata"]["name"] == name.as_str()).unwrap()
            } else {
                lc.catalog().get("VirtualMachineClusterInstancetype", None, &name).unwrap()
            };
            assert_eq!(without_rv(now.clone()), without_rv(old.clone()), "{k}");
            current.push(now);
        }

        // CDI objects: every field as it was; a new resourceVersion of the one sequence.
        for (k, old) in &old_cdi {
            let mut it = k.splitn(3, '/');
            let (kind, ns, name) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
            let kind = CdiKind::ALL.into_iter().find(|c| c.name() == kind).unwrap();
            let now = cdi.get(kind, ns, name).unwrap();
            assert_eq!(without_rv(now.clone()), without_rv(old.clone()), "{k}");
            current.push(now);
        }

        // One sequence: no two objects share a resourceVersion; new writes come after all of them.
        let rvs: BTreeSet<u64> = current.iter().map(rv).collect();
        assert_eq!(rvs.len(), current.len(), "unique resourceVersions: {rvs:?}");
        let last = store.changes().last();
        assert!(rvs.iter().all(|r| *r <= last), "{rvs:?} <= {last}");
        let made = lc.namespaces().create(&format!("after-{round}")).unwrap();
        assert!(rv(&made) > last);
    }
}
