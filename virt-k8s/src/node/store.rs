//! The node's crash-safe object store: one redb file. Every write is its own committed (fsynced)
//! transaction, so what a request wrote before a SIGKILL is there after it.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use virt_core::lifecycle::{Key, Kind, Store, StoreError, StoredObject};

/// Objects by `kind/namespace/name`, as JSON.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

/// A [`Store`] in a redb database file.
pub struct RedbStore {
    db: Database,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Namespace => "Namespace",
        Kind::VirtualMachine => "VirtualMachine",
        Kind::VirtualMachineInstance => "VirtualMachineInstance",
        Kind::Instancetype => "Instancetype",
    }
}

fn key_of(kind: Kind, key: &Key) -> String {
    format!("{}/{}/{}", kind_name(kind), key.namespace, key.name)
}

fn parse_key(s: &str) -> Option<(Kind, Key)> {
    let mut it = s.splitn(3, '/');
    let kind = match it.next()? {
        "Namespace" => Kind::Namespace,
        "VirtualMachine" => Kind::VirtualMachine,
        "VirtualMachineInstance" => Kind::VirtualMachineInstance,
        "Instancetype" => Kind::Instancetype,
        _ => return None,
    };
    Some((kind, Key::new(it.next()?, it.next()?)))
}

fn err(what: &str, path_or_key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {path_or_key}: {e}"))
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| err("opening", &shown, e))?;
        // Make sure the table exists so that reads of a fresh database work.
        let tx = db.begin_write().map_err(|e| err("writing", &shown, e))?;
        tx.open_table(OBJECTS).map_err(|e| err("creating the table in", &shown, e))?;
        tx.commit().map_err(|e| err("committing", &shown, e))?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| err("reading", "the store", e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| err("opening", "the objects table", e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err("listing", "objects", e))? {
            let (k, v) = row.map_err(|e| err("reading", "an object", e))?;
            let Some((kind, key)) = parse_key(k.value()) else {
                log::warn!("state store: unknown key {:?} skipped", k.value());
                continue;
            };
            match serde_json::from_slice(v.value()) {
                Ok(value) => out.push(StoredObject { kind, key, value }),
                Err(e) => log::error!("state store: {} is not valid JSON, skipped: {e}", k.value()),
            }
        }
        Ok(out)
    }

    fn put(&self, object: &StoredObject) -> Result<(), StoreError> {
        let k = key_of(object.kind, &object.key);
        let bytes = serde_json::to_vec(&object.value).map_err(|e| err("encoding", &k, e))?;
        let tx = self.db.begin_write().map_err(|e| err("writing", &k, e))?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
            table.insert(k.as_str(), bytes.as_slice()).map_err(|e| err("writing", &k, e))?;
        }
        tx.commit().map_err(|e| err("committing", &k, e))
    }

    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        let k = key_of(kind, key);
        let tx = self.db.begin_read().map_err(|e| err("reading", &k, e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
        let Some(v) = table.get(k.as_str()).map_err(|e| err("reading", &k, e))? else { return Ok(None) };
        let value = serde_json::from_slice(v.value()).map_err(|e| err("decoding", &k, e))?;
        Ok(Some(StoredObject { kind, key: key.clone(), value }))
    }

    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        let k = key_of(kind, key);
        let tx = self.db.begin_write().map_err(|e| err("writing", &k, e))?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
            table.remove(k.as_str()).map_err(|e| err("deleting", &k, e))?;
        }
        tx.commit().map_err(|e| err("committing", &k, e))
    }
}

#[cfg(test)]
mod tests {
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
        }
        let s = RedbStore::open(&path).unwrap();
        let mut got: Vec<_> = s.load().unwrap().into_iter().map(|o| (o.kind, o.key.to_string())).collect();
        got.sort_by_key(|(_, k)| k.clone());
        assert_eq!(
            got,
            vec![(Kind::Namespace, "/team/x".into()), (Kind::VirtualMachine, "default/a".into())]
        );
    }
}
