use super::*;

#[test]
fn objects_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        for (kind, ns, name) in [
            (Kind::VirtualMachine, "default", "a"),
            (Kind::VirtualMachineInstance, "default", "a"),
            (Kind::Namespace, "", "team/x"),
        ] {
            let value = serde_json::json!({ "metadata": { "name": name } });
            s.put(&StoredObject { kind, key: Key::new(ns, name), value }).unwrap();
        }
        s.delete(Kind::VirtualMachineInstance, &Key::new("default", "a")).unwrap();
        assert!(s.get(Kind::VirtualMachineInstance, &Key::new("default", "a")).unwrap().is_none());
        let vm = s.get(Kind::VirtualMachine, &Key::new("default", "a")).unwrap().unwrap();
        assert_eq!(vm.value["metadata"]["name"], "a");
        assert_eq!(vm.value["metadata"]["resourceVersion"], "1");
    }
    let s = RedbStore::open(&path).unwrap();
    let mut got: Vec<_> = s.load().unwrap().into_iter().map(|o| (o.kind, o.key.to_string())).collect();
    got.sort_by_key(|(_, k)| k.clone());
    assert_eq!(got, vec![(Kind::Namespace, "/team/x".into()), (Kind::VirtualMachine, "default/a".into())]);
}

#[test]
fn one_sequence_for_every_kind_that_never_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let obj = |n: &str| serde_json::json!({ "metadata": { "name": n } });
    {
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.put_object("VirtualMachine", &Key::new("default", "a"), obj("a")).unwrap(), 1);
        assert_eq!(s.put_object("DataVolume", &Key::new("default", "a"), obj("a")).unwrap(), 2);
        assert_eq!(s.put_object("DataVolume", &Key::new("default", "b"), obj("b")).unwrap(), 3);
        // The newest object goes: its resourceVersion is still never given again.
        assert_eq!(s.delete_object("DataVolume", &Key::new("default", "b")).unwrap(), Some(4));
        assert_eq!(s.delete_object("DataVolume", &Key::new("default", "b")).unwrap(), None);
        // The lifecycle sees its kinds only.
        assert_eq!(s.load().unwrap().len(), 1);
    }
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.changes().last(), 4);
    assert_eq!(s.put_object("DataSource", &Key::new("os-images", "f"), obj("f")).unwrap(), 5);
    assert_eq!(
        s.get_object("DataVolume", &Key::new("default", "a")).unwrap().unwrap()["metadata"]
            ["resourceVersion"],
        "2"
    );
}

#[test]
fn watch_from_a_resource_version_sees_later_changes_and_older_ones_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let obj = |n: &str| serde_json::json!({ "metadata": { "name": n } });
    {
        let s = RedbStore::open(&path).unwrap();
        s.put_object("VirtualMachine", &Key::new("default", "a"), obj("a")).unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    // History from before the store opened is not kept: 410.
    assert!(matches!(
        s.changes().watch(0),
        Err(virt_core::lifecycle::WatchError::Gone { requested: 0, oldest: 1 })
    ));
    let mut w = s.changes().watch(1).unwrap();
    s.put_object("VirtualMachine", &Key::new("default", "a"), obj("a")).unwrap();
    s.put_object("DataVolume", &Key::new("default", "d"), obj("d")).unwrap();
    s.delete_object("VirtualMachine", &Key::new("default", "a")).unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match w.next(std::time::Duration::from_secs(10)).unwrap() {
            virt_core::lifecycle::WatchEvent::Change(c) => {
                seen.push((c.resource_version, c.type_.as_str(), c.kind))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            (2, "MODIFIED", "VirtualMachine".to_string()),
            (3, "ADDED", "DataVolume".to_string()),
            (4, "DELETED", "VirtualMachine".to_string())
        ]
    );
    assert_eq!(
        w.next(std::time::Duration::from_millis(10)).unwrap(),
        virt_core::lifecycle::WatchEvent::Bookmark(4)
    );
}

#[test]
fn events_are_kept_bounded_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    {
        let s = RedbStore::open(&path).unwrap();
        for seq in 1..=6u64 {
            s.put_event(seq, &serde_json::json!({ "reason": format!("r{seq}") }), 4).unwrap();
        }
        // Rewriting the latest (a repeated event's count) keeps its number.
        s.put_event(6, &serde_json::json!({ "reason": "r6", "count": 2 }), 4).unwrap();
        // An object write stores the pending events in its transaction.
        s.put_object("VirtualMachine", &Key::new("default", "a"), serde_json::json!({ "metadata": {} }))
            .unwrap();
        // One after it waits for the next write, or for the store to close.
        s.put_event(7, &serde_json::json!({ "reason": "r7" }), 4).unwrap();
    }
    let s = RedbStore::open(&path).unwrap();
    let got = s.load_events().unwrap();
    assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![4, 5, 6, 7]);
    assert_eq!(got[2].1["count"], 2);
}

#[test]
fn several_objects_in_one_commit_each_take_their_own_resource_version_and_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.redb");
    let obj =
        |n: &str, phase: &str| serde_json::json!({ "metadata": { "name": n }, "status": { "phase": phase } });
    let key = Key::new("default", "a");
    {
        let s = RedbStore::open(&path).unwrap();
        assert_eq!(s.put_object("VirtualMachine", &key, obj("a", "")).unwrap(), 1);
        let mut watch = s.changes().watch(1).unwrap();
        let batch = [
            StoredObject {
                kind: Kind::VirtualMachineInstance,
                key: key.clone(),
                value: obj("a", "Scheduled"),
            },
            StoredObject { kind: Kind::VirtualMachineInstance, key: key.clone(), value: obj("a", "Running") },
            StoredObject { kind: Kind::VirtualMachine, key: key.clone(), value: obj("a", "Running") },
        ];
        assert_eq!(s.put_all(&batch).unwrap(), vec![2, 3, 4]);
        let mut seen = Vec::new();
        for _ in 0..3 {
            match watch.next(std::time::Duration::from_secs(1)).unwrap() {
                virt_core::lifecycle::WatchEvent::Change(c) => {
                    let v: Value = serde_json::from_str(&c.object).unwrap();
                    seen.push((c.resource_version, c.kind, c.type_, v["status"]["phase"].clone()));
                }
                other => panic!("expected a change, got {other:?}"),
            }
        }
        use virt_core::lifecycle::ChangeType::{Added, Modified};
        assert_eq!(
            seen,
            vec![
                (2, "VirtualMachineInstance".to_string(), Added, "Scheduled".into()),
                (3, "VirtualMachineInstance".to_string(), Modified, "Running".into()),
                (4, "VirtualMachine".to_string(), Modified, "Running".into()),
            ]
        );
    }
    // What the one commit wrote is there after reopening, with the last of the two VMI writes.
    let s = RedbStore::open(&path).unwrap();
    assert_eq!(s.changes().last(), 4);
    let vmi = s.get(Kind::VirtualMachineInstance, &key).unwrap().unwrap();
    assert_eq!(
        (vmi.value["status"]["phase"].as_str(), vmi.value["metadata"]["resourceVersion"].as_str()),
        (Some("Running"), Some("3"))
    );
}
