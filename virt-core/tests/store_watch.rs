//! Properties of a store's one resourceVersion sequence and change log (the in-memory store; the
//! node's redb store shares the same journal): resourceVersions only grow, a watcher sees every
//! change exactly once and in order, and one that asks for history the log dropped gets Gone.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use virt_core::lifecycle::{ChangeType, Key, Kind, MemStore, Store, StoredObject, WatchError, WatchEvent};

#[derive(Debug, Clone)]
enum Op {
    Put(usize),
    Delete(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(prop_oneof![(0usize..4).prop_map(Op::Put), (0usize..4).prop_map(Op::Delete)], 0..60)
}

fn key(i: usize) -> Key {
    Key::new("default", format!("vm-{i}"))
}

/// Applies `ops`; returns the changes a watcher must see: (rv, type, name).
fn apply(store: &MemStore, ops: &[Op]) -> Vec<(u64, ChangeType, String)> {
    let mut present: Vec<bool> =
        (0..4).map(|i| store.get(Kind::VirtualMachine, &key(i)).unwrap().is_some()).collect();
    let mut expected = Vec::new();
    let mut last = store.changes().last();
    for op in ops {
        match *op {
            Op::Put(i) => {
                let value = serde_json::json!({ "metadata": { "name": format!("vm-{i}") } });
                let rv = store.put(&StoredObject { kind: Kind::VirtualMachine, key: key(i), value }).unwrap();
                assert!(rv > last, "resourceVersion {rv} after {last}");
                last = rv;
                let stored = store.get(Kind::VirtualMachine, &key(i)).unwrap().unwrap();
                assert_eq!(stored.value["metadata"]["resourceVersion"], rv.to_string());
                let t = if present[i] { ChangeType::Modified } else { ChangeType::Added };
                expected.push((rv, t, format!("vm-{i}")));
                present[i] = true;
            }
            Op::Delete(i) => {
                store.delete(Kind::VirtualMachine, &key(i)).unwrap();
                if present[i] {
                    let rv = store.changes().last();
                    assert!(rv > last);
                    last = rv;
                    expected.push((rv, ChangeType::Deleted, format!("vm-{i}")));
                    present[i] = false;
                } else {
                    assert_eq!(store.changes().last(), last, "deleting nothing takes no resourceVersion");
                }
            }
        }
    }
    expected
}

fn drain(w: &mut virt_core::lifecycle::Watcher) -> Result<Vec<(u64, ChangeType, String)>, WatchError> {
    let mut seen = Vec::new();
    loop {
        match w.next(Duration::ZERO)? {
            WatchEvent::Change(c) => seen.push((c.resource_version, c.type_, c.key.name)),
            WatchEvent::Bookmark(_) => return Ok(seen),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_watch_sees_every_change_once_in_order(before in ops(), after in ops()) {
        let store = MemStore::default();
        apply(&store, &before);
        let from = store.changes().last();
        let mut w = store.changes().watch(from).unwrap();
        let expected = apply(&store, &after);
        prop_assert_eq!(drain(&mut w).unwrap(), expected.clone());
        // A second watcher from the same resourceVersion sees the same; a bookmark says where
        // the store is.
        let mut again = store.changes().watch(from).unwrap();
        prop_assert_eq!(drain(&mut again).unwrap(), expected);
        prop_assert_eq!(again.next(Duration::ZERO).unwrap(), WatchEvent::Bookmark(store.changes().last()));
    }

    #[test]
    fn history_the_log_dropped_is_gone(all in ops(), capacity in 1usize..8) {
        let store = MemStore::with_log_capacity(capacity);
        let expected = apply(&store, &all);
        let oldest = store.changes().oldest();
        if expected.len() > capacity {
            let too_old = oldest - 1;
            let gone = matches!(store.changes().watch(too_old), Err(WatchError::Gone { .. }));
            prop_assert!(gone);
        }
        // From the oldest kept resourceVersion on, every kept change is there, in order.
        let mut w = store.changes().watch(oldest).unwrap();
        let kept: Vec<_> = expected.iter().filter(|(rv, _, _)| *rv > oldest).cloned().collect();
        prop_assert_eq!(drain(&mut w).unwrap(), kept);
    }
}

#[test]
fn a_watcher_that_falls_behind_is_told_gone_not_given_a_gap() {
    let store = MemStore::with_log_capacity(2);
    let mut w = store.changes().watch(0).unwrap();
    apply(&store, &[Op::Put(0), Op::Put(1), Op::Put(2)]);
    assert_eq!(w.next(Duration::ZERO), Err(WatchError::Gone { requested: 0, oldest: 1 }));
}

#[test]
fn a_waiting_watcher_wakes_on_a_change_from_another_thread() {
    let store = Arc::new(MemStore::default());
    let mut w = store.changes().watch(0).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || apply(&store, &[Op::Put(3)]))
    };
    match w.next(Duration::from_secs(60)).unwrap() {
        WatchEvent::Change(c) => assert_eq!((c.resource_version, c.key.name.as_str()), (1, "vm-3")),
        other => panic!("{other:?}"),
    }
    writer.join().unwrap();
}
