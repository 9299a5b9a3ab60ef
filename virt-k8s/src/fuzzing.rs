//! Fuzz entry point of the node's REST API: request bodies, decoded by the same functions the
//! handlers use and applied to a real [`Lifecycle`] (in-memory store, no machine backend). The
//! cargo-fuzz target `rest_body` in `fuzz/` calls it and `tests/fuzz_entries.rs` runs it on random
//! bytes and on every committed seed. See `docs/fuzzing.md`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};
use virt_core::api::Validate;
use virt_core::lifecycle::{BackendRuntime, Lifecycle, LifecycleOptions, MemStore, Store};
use virt_core::machine::accel::AccelPolicy;
use virt_core::model::KubeVirtObject;

use crate::node::{api, cdi_api};

/// The namespace requests are made in.
const NS: &str = "default";

/// One request body for the node: byte 0 picks the endpoint (low 4 bits: create VM, replace VM,
/// create VMI, create an instancetype or preference, create a namespace, stop/restart/delete
/// options, create a CDI object, an upload token request, a volume snapshot) and the content type
/// (bit 7: YAML, else JSON); the rest is the body.
///
/// What a handler accepts is applied to a node's lifecycle; then the lifecycle reconciles once
/// (launching fails: there is no backend) and a second lifecycle is opened on the same store, as
/// the node does when it restarts: every object the first one accepted must be there again.
pub fn rest_body(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else { return };
    let mut headers = HeaderMap::new();
    let ct = if sel & 0x80 != 0 { "application/yaml" } else { "application/json" };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    match sel & 0x0f {
        0..=3 => {
            let Ok(object) = api::decode(&headers, body) else { return };
            let _ = object.validate();
            apply(sel & 0x0f, object);
        }
        4 => {
            if let Ok((name, _)) = api::namespace_body(body) {
                let (lc, _) = lifecycle();
                let _ = lc.namespaces().create(&name);
            }
        }
        5 => {
            if let Ok(Some(g)) = api::grace(body) {
                assert!(g >= 0, "negative grace period accepted: {g}");
            }
        }
        6 => {
            if let Ok(o) = cdi_api::decode(&headers, body) {
                let _ = o.validate();
                let _ = o.to_json_value();
            }
        }
        7 => {
            let _ = cdi_api::token_request_body(&headers, body);
        }
        _ => {
            if let Ok(vs) = cdi_api::snapshot_body(&headers, body) {
                let _ = serde_json::to_value(&vs);
            }
        }
    }
}

fn lifecycle() -> (Lifecycle, Arc<MemStore>) {
    let store = Arc::new(MemStore::default());
    (open(store.clone()), store)
}

fn open(store: Arc<MemStore>) -> Lifecycle {
    let files: virt_core::lifecycle::VolumeFilesFactory =
        Arc::new(|_| Err("no volumes while fuzzing".into()));
    let consoles: virt_core::lifecycle::ConsoleFactory = Arc::new(|_| Box::new(std::io::sink()));
    let runtime = Arc::new(BackendRuntime::new(Vec::new(), files, consoles, AccelPolicy::Auto));
    let store: Arc<dyn Store> = store;
    match Lifecycle::new(store, runtime, LifecycleOptions::default()) {
        Ok(lc) => lc,
        Err(e) => panic!("a lifecycle does not open on a store it wrote: {e}"),
    }
}

fn apply(endpoint: u8, object: KubeVirtObject) {
    let (lc, store) = lifecycle();
    match (endpoint, object) {
        (0, KubeVirtObject::VirtualMachine(vm)) => {
            let _ = lc.vms().create(NS, *vm);
        }
        (1, KubeVirtObject::VirtualMachine(vm)) => {
            // Replace what a create made of the same object (a replace needs one to exist).
            if lc.vms().create(NS, (*vm).clone()).is_ok() {
                let _ = lc.vms().replace(NS, *vm);
            }
        }
        (2, KubeVirtObject::VirtualMachineInstance(vmi)) => {
            let _ = lc.vmis().create(NS, *vmi);
        }
        (3, o) => {
            let _ = lc.catalog().put(Some(NS), o, false);
        }
        _ => return,
    }
    lc.reconcile();
    let (vms, vmis) = (lc.vms().list(None).len(), lc.vmis().list(None).len());
    drop(lc);
    let again = open(store);
    assert_eq!(again.vms().list(None).len(), vms, "VMs lost when the node restarts");
    assert_eq!(again.vmis().list(None).len(), vmis, "VMIs lost when the node restarts");
}
