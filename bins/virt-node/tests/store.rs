//! The node's one object store under a SIGKILL: a burst of VirtualMachine and DataVolume creates
//! from several clients, the daemon killed in the middle of it, and a restart on the same state
//! directory. Every acknowledged create is there, every object there is whole, and all of them,
//! of both kinds, have distinct resourceVersions of the one sequence.

#[path = "support/node.rs"]
mod node;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::NodeProc;
use serde_json::json;
use virt_k8s::client::{Endpoint, NodeClient};
use virt_storage::cdi::DataVolume;

const BURST: usize = 200;

fn vm(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": { "name": name, "labels": { "burst": "yes" } },
        "spec": { "runStrategy": "Halted", "template": { "spec": { "domain": {
            "devices": {}, "memory": { "guest": "64Mi" } } } } },
    })
}

fn dv(name: &str) -> DataVolume {
    serde_json::from_value(json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": { "name": name },
        "spec": { "source": { "blank": {} }, "storage": { "resources": { "requests": { "storage": "1Mi" } } } },
    }))
    .unwrap()
}

fn rv(resource_version: Option<&str>) -> u64 {
    resource_version.expect("a resourceVersion").parse().expect("a numeric resourceVersion")
}

#[test]
fn sigkill_during_a_burst_of_creates_loses_no_acknowledged_one() {
    let state = tempfile::Builder::new().prefix("vs").tempdir_in("/tmp").unwrap();
    let mut node = NodeProc::start(state.path(), None);
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    // Writers do not go past two thirds of the burst before the kill, however slow the killer.
    let killed = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (next, acked, socket) = (next.clone(), acked.clone(), node.socket.clone());
            let killed = killed.clone();
            std::thread::spawn(move || {
                let c = NodeClient::new(Endpoint::Unix(socket), None).unwrap();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= BURST {
                        return;
                    }
                    while i >= BURST * 2 / 3 && !killed.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    let name = format!("o-{i:03}");
                    let ok = if i % 2 == 0 {
                        c.create(&vm(&name), "default").is_ok()
                    } else {
                        c.create_data_volume("default", &dv(&name)).is_ok()
                    };
                    if !ok {
                        return; // the daemon is gone
                    }
                    acked.lock().unwrap().push(name);
                }
            })
        })
        .collect();
    // Kill it in the middle of the burst.
    let t = Instant::now();
    while acked.lock().unwrap().len() < BURST / 3 {
        assert!(t.elapsed() < Duration::from_secs(120), "the burst did not get going: {}", node.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    node.sigkill();
    killed.store(true, Ordering::SeqCst);
    for w in writers {
        w.join().unwrap();
    }
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(acked.len() < BURST, "killed before the burst ended ({} acknowledged)", acked.len());

    node.spawn();
    let c = NodeClient::new(Endpoint::Unix(node.socket.clone()), None).unwrap();
    let vms = c.list_vms(Some("default")).unwrap();
    let dvs = c.list_data_volumes(Some("default")).unwrap();
    let mut present = BTreeSet::new();
    let mut rvs = BTreeSet::new();
    for v in &vms {
        // Whole: as created, with the server's metadata.
        assert!(v.metadata.uid.is_some() && v.metadata.labels.contains_key("burst"), "{v:?}");
        assert!(rvs.insert(rv(v.metadata.resource_version.as_deref())), "resourceVersion shared: {v:?}");
        present.insert(v.metadata.name.clone().unwrap());
    }
    for d in &dvs {
        assert!(d.metadata.uid.is_some() && d.spec.source.is_some(), "{d:?}");
        assert!(rvs.insert(rv(d.metadata.resource_version.as_deref())), "resourceVersion shared: {d:?}");
        present.insert(d.metadata.name.clone().unwrap());
    }
    for name in &acked {
        assert!(present.contains(name), "acknowledged {name} lost; present: {present:?}");
    }
    // At most the creates in flight when it died (one per client) got stored unacknowledged.
    assert!(present.len() <= acked.len() + 4, "{} present, {} acknowledged", present.len(), acked.len());
    // The sequence goes on above everything stored.
    let after = c.create(&vm("after"), "default").unwrap();
    let after_rv: u64 = after["metadata"]["resourceVersion"].as_str().unwrap().parse().unwrap();
    assert!(rvs.iter().all(|r| *r < after_rv), "{after_rv} after {rvs:?}");
}
