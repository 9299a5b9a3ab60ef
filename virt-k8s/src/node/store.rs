//! The node's crash-safe object store: ONE redb file (`node.redb`) for every kind the node serves
//! (the lifecycle's namespaces, VMs, VMIs, instancetypes and preferences, and CDI's DataVolumes,
//! DataSources, DataImportCrons and VolumeSnapshots), with one resourceVersion sequence and one
//! change log to watch. Every write is its own committed (fsynced) transaction that also stores the
//! sequence, so what a request wrote before a SIGKILL is there after it and resourceVersions never
//! go back. A state directory of an earlier node, whose CDI objects lived in a second file
//! (`cdi.redb`) with its own sequence, is migrated on first open ([`RedbStore::open_state_dir`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;
use virt_core::lifecycle::watch::{resource_version_of, Journal, DEFAULT_LOG_CAPACITY};
use virt_core::lifecycle::{ChangeLog, Key, Kind, Store, StoreError, StoredObject};

/// Objects by `kind/namespace/name`, as JSON.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// The store's counters: [`LAST_RV`], and a mark per migrated file.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Events by number (the latest few thousand).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The latest resourceVersion taken.
const LAST_RV: &str = "resourceVersion";
/// The table of the CDI store of earlier nodes (`cdi.redb`), keyed like [`OBJECTS`].
const OLD_CDI: TableDefinition<&str, &[u8]> = TableDefinition::new("cdi");
/// The file that store lived in, in the state directory.
pub const OLD_CDI_FILE: &str = "cdi.redb";
/// The node's store, in the state directory.
pub const STORE_FILE: &str = "node.redb";

/// The lifecycle's kinds, as stored.
const LIFECYCLE_KINDS: [Kind; 6] = [
    Kind::Namespace,
    Kind::VirtualMachine,
    Kind::VirtualMachineInstance,
    Kind::Instancetype,
    Kind::Migration,
    Kind::MigrationPolicy,
];

/// A [`Store`] in a redb database file, also holding objects of other kinds ([`RedbStore::put_object`]).
pub struct RedbStore {
    db: Database,
    path: String,
    journal: Journal,
    /// Events not written yet: they go with the next object write's transaction.
    events: Mutex<PendingEvents>,
}

/// Events waiting for the next object write.
#[derive(Default)]
struct PendingEvents {
    by_seq: BTreeMap<u64, Vec<u8>>,
    /// Stored events numbered up to this are dropped.
    cut: u64,
}

impl PendingEvents {
    /// Writes the pending events into `tx` (not committed yet).
    fn write(&self, tx: &redb::WriteTransaction, what: &str) -> Result<(), StoreError> {
        if self.by_seq.is_empty() {
            return Ok(());
        }
        let mut table = tx.open_table(EVENTS).map_err(|e| err("opening the events table for", what, e))?;
        for (seq, bytes) in &self.by_seq {
            table.insert(*seq, bytes.as_slice()).map_err(|e| err("writing the events with", what, e))?;
        }
        if self.cut > 0 {
            table
                .retain_in(..=self.cut, |_, _| false)
                .map_err(|e| err("dropping old events with", what, e))?;
        }
        Ok(())
    }
}

fn key_of(kind: &str, key: &Key) -> String {
    format!("{kind}/{}/{}", key.namespace, key.name)
}

fn parse_key(s: &str) -> Option<(&str, Key)> {
    let mut it = s.splitn(3, '/');
    let kind = it.next()?;
    Some((kind, Key::new(it.next()?, it.next()?)))
}

fn err(what: &str, path_or_key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what} {path_or_key}: {e}"))
}

/// The latest resourceVersion of `db`: the stored counter, or (a store of an earlier node, without
/// one) the highest resourceVersion of its objects.
fn last_rv(db: &Database, shown: &str) -> Result<u64, StoreError> {
    let tx = db.begin_read().map_err(|e| err("reading", shown, e))?;
    let meta = tx.open_table(META).map_err(|e| err("opening the meta table of", shown, e))?;
    let counter =
        meta.get(LAST_RV).map_err(|e| err("reading the resourceVersion of", shown, e))?.map(|v| v.value());
    let objects = tx.open_table(OBJECTS).map_err(|e| err("opening the objects of", shown, e))?;
    let mut last = counter.unwrap_or(0);
    for row in objects.iter().map_err(|e| err("listing the objects of", shown, e))? {
        let (_, v) = row.map_err(|e| err("reading an object of", shown, e))?;
        if let Some(rv) =
            serde_json::from_slice::<Value>(v.value()).ok().as_ref().and_then(resource_version_of)
        {
            last = last.max(rv);
        }
    }
    Ok(last)
}

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        let db = Database::create(path).map_err(|e| err("opening", &shown, e))?;
        // Make sure the tables exist so that reads of a fresh database work.
        let tx = db.begin_write().map_err(|e| err("writing", &shown, e))?;
        tx.open_table(OBJECTS).map_err(|e| err("creating the objects table in", &shown, e))?;
        tx.open_table(META).map_err(|e| err("creating the meta table in", &shown, e))?;
        tx.open_table(EVENTS).map_err(|e| err("creating the events table in", &shown, e))?;
        tx.commit().map_err(|e| err("committing", &shown, e))?;
        let last = last_rv(&db, &shown)?;
        Ok(Self {
            db,
            path: shown,
            journal: Journal::new(last, DEFAULT_LOG_CAPACITY),
            events: Mutex::default(),
        })
    }

    /// Opens the node's store in `state_dir` ([`STORE_FILE`]), first moving into it the CDI
    /// objects of an earlier node's second store ([`OLD_CDI_FILE`]), which is then renamed to
    /// `cdi.redb.migrated`. The migrated objects take new resourceVersions of the one sequence;
    /// nothing else of them changes. Migrating again after a crash half-way is harmless.
    pub fn open_state_dir(state_dir: &Path) -> Result<Self, StoreError> {
        let store = Self::open(&state_dir.join(STORE_FILE))?;
        let old = state_dir.join(OLD_CDI_FILE);
        if !old.exists() {
            return Ok(store);
        }
        let shown = old.display().to_string();
        let rows: Vec<(String, Vec<u8>)> = {
            let db = Database::create(&old).map_err(|e| err("opening", &shown, e))?;
            let tx = db.begin_read().map_err(|e| err("reading", &shown, e))?;
            match tx.open_table(OLD_CDI) {
                Ok(table) => {
                    let mut rows = Vec::new();
                    for row in table.iter().map_err(|e| err("listing", &shown, e))? {
                        let (k, v) = row.map_err(|e| err("reading an object of", &shown, e))?;
                        rows.push((k.value().to_string(), v.value().to_vec()));
                    }
                    rows
                }
                Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
                Err(e) => return Err(err("opening the table of", &shown, e)),
            }
        };
        let mut migrated = 0usize;
        for (k, bytes) in rows {
            let Some((kind, key)) = parse_key(&k) else {
                log::warn!("{shown}: unknown key {k:?} not migrated");
                continue;
            };
            let value: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => {
                    // Kept as it is: the CDI controller logs and skips it, as it did before.
                    log::error!("{shown}: {k} is not valid JSON ({e}); moved as it is");
                    store.put_raw(&k, &bytes)?;
                    continue;
                }
            };
            store.put_object(kind, &key, value)?;
            migrated += 1;
        }
        let done = state_dir.join(format!("{OLD_CDI_FILE}.migrated"));
        std::fs::rename(&old, &done).map_err(|e| err("renaming the migrated", &shown, e))?;
        log::info!("state store: moved {migrated} CDI objects from {shown} into {}", store.path);
        Ok(store)
    }

    fn pending_events(&self) -> MutexGuard<'_, PendingEvents> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores the events waiting for an object write.
    pub fn flush_events(&self) -> Result<(), StoreError> {
        let mut events = self.pending_events();
        if events.by_seq.is_empty() {
            return Ok(());
        }
        let what = format!("the events of {}", self.path);
        let tx = self.db.begin_write().map_err(|e| err("writing", &what, e))?;
        events.write(&tx, &what)?;
        tx.commit().map_err(|e| err("committing", &what, e))?;
        events.by_seq.clear();
        Ok(())
    }

    /// The database file.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn put_raw(&self, k: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| err("writing", k, e))?;
        {
            let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", k, e))?;
            table.insert(k, bytes).map_err(|e| err("writing", k, e))?;
        }
        tx.commit().map_err(|e| err("committing", k, e))
    }

    /// Writes object `kind` `key` (of any kind) with the next resourceVersion, stamped into its
    /// `metadata.resourceVersion`; returns it.
    pub fn put_object(&self, kind: &str, key: &Key, value: Value) -> Result<u64, StoreError> {
        let k = key_of(kind, key);
        self.journal.put(kind, key, value, |rv, json| {
            let bytes = json.as_bytes();
            let tx = self.db.begin_write().map_err(|e| err("writing", &k, e))?;
            let existed = {
                let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
                let old = table.insert(k.as_str(), bytes).map_err(|e| err("writing", &k, e))?;
                old.is_some()
            };
            {
                let mut meta = tx.open_table(META).map_err(|e| err("opening the meta table for", &k, e))?;
                meta.insert(LAST_RV, rv).map_err(|e| err("writing the resourceVersion of", &k, e))?;
            }
            let mut events = self.pending_events();
            events.write(&tx, &k)?;
            tx.commit().map_err(|e| err("committing", &k, e))?;
            events.by_seq.clear();
            Ok(existed)
        })
    }

    /// [`RedbStore::put_object`] for several objects `(kind, key, value)` in one transaction (one
    /// commit, one sync); returns their resourceVersions in order.
    pub fn put_objects(&self, objects: Vec<(&str, &Key, Value)>) -> Result<Vec<u64>, StoreError> {
        let keys: Vec<String> = objects.iter().map(|(kind, key, _)| key_of(kind, key)).collect();
        let what = keys.first().cloned().unwrap_or_default();
        self.journal.put_all(objects, |stamped| {
            let tx = self.db.begin_write().map_err(|e| err("writing", &what, e))?;
            let mut existed = Vec::with_capacity(stamped.len());
            {
                let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &what, e))?;
                for (k, (_, json)) in keys.iter().zip(stamped) {
                    let old = table.insert(k.as_str(), json.as_bytes()).map_err(|e| err("writing", k, e))?;
                    existed.push(old.is_some());
                }
            }
            if let Some((last, _)) = stamped.last() {
                let mut meta =
                    tx.open_table(META).map_err(|e| err("opening the meta table for", &what, e))?;
                meta.insert(LAST_RV, *last).map_err(|e| err("writing the resourceVersion of", &what, e))?;
            }
            let mut events = self.pending_events();
            events.write(&tx, &what)?;
            tx.commit().map_err(|e| err("committing", &what, e))?;
            events.by_seq.clear();
            Ok(existed)
        })
    }

    /// Removes object `kind` `key` (absent is fine); returns the resourceVersion of the removal.
    pub fn delete_object(&self, kind: &str, key: &Key) -> Result<Option<u64>, StoreError> {
        let k = key_of(kind, key);
        self.journal.delete(kind, key, |rv| {
            let tx = self.db.begin_write().map_err(|e| err("writing", &k, e))?;
            let old = {
                let mut table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
                let old = table.remove(k.as_str()).map_err(|e| err("deleting", &k, e))?;
                old.map(|v| serde_json::from_slice::<Value>(v.value()).unwrap_or(Value::Null))
            };
            if old.is_none() {
                return Ok(None);
            }
            {
                let mut meta = tx.open_table(META).map_err(|e| err("opening the meta table for", &k, e))?;
                meta.insert(LAST_RV, rv).map_err(|e| err("writing the resourceVersion of", &k, e))?;
            }
            let mut events = self.pending_events();
            events.write(&tx, &k)?;
            tx.commit().map_err(|e| err("committing", &k, e))?;
            events.by_seq.clear();
            Ok(old)
        })
    }

    /// One object of any kind.
    pub fn get_object(&self, kind: &str, key: &Key) -> Result<Option<Value>, StoreError> {
        let k = key_of(kind, key);
        let tx = self.db.begin_read().map_err(|e| err("reading", &k, e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| err("opening the table for", &k, e))?;
        let Some(v) = table.get(k.as_str()).map_err(|e| err("reading", &k, e))? else { return Ok(None) };
        serde_json::from_slice(v.value()).map(Some).map_err(|e| err("decoding", &k, e))
    }

    /// Every stored object of the kinds `kinds`, as (kind, key, JSON bytes); objects of other kinds
    /// are left alone.
    pub fn load_kinds(&self, kinds: &[&str]) -> Result<Vec<(String, Key, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| err("reading", &self.path, e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| err("opening the objects of", &self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err("listing the objects of", &self.path, e))? {
            let (k, v) = row.map_err(|e| err("reading an object of", &self.path, e))?;
            match parse_key(k.value()) {
                Some((kind, key)) if kinds.contains(&kind) => {
                    out.push((kind.to_string(), key, v.value().to_vec()))
                }
                Some(_) => {}
                None => log::warn!("state store {}: unknown key {:?} skipped", self.path, k.value()),
            }
        }
        Ok(out)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush_events() {
            log::warn!("{e}");
        }
    }
}

fn lifecycle_kind(name: &str) -> Option<Kind> {
    LIFECYCLE_KINDS.into_iter().find(|k| k.name() == name)
}

impl Store for RedbStore {
    fn load(&self) -> Result<Vec<StoredObject>, StoreError> {
        let names: Vec<&str> = LIFECYCLE_KINDS.iter().map(|k| k.name()).collect();
        let mut out = Vec::new();
        for (kind, key, bytes) in self.load_kinds(&names)? {
            let Some(kind) = lifecycle_kind(&kind) else { continue };
            match serde_json::from_slice(&bytes) {
                Ok(value) => out.push(StoredObject { kind, key, value }),
                Err(e) => log::error!("state store: {} {key} is not valid JSON, skipped: {e}", kind.name()),
            }
        }
        Ok(out)
    }

    fn put(&self, object: &StoredObject) -> Result<u64, StoreError> {
        self.put_object(object.kind.name(), &object.key, object.value.clone())
    }

    fn put_all(&self, objects: &[StoredObject]) -> Result<Vec<u64>, StoreError> {
        self.put_objects(objects.iter().map(|o| (o.kind.name(), &o.key, o.value.clone())).collect())
    }

    fn get(&self, kind: Kind, key: &Key) -> Result<Option<StoredObject>, StoreError> {
        Ok(self.get_object(kind.name(), key)?.map(|value| StoredObject { kind, key: key.clone(), value }))
    }

    fn delete(&self, kind: Kind, key: &Key) -> Result<(), StoreError> {
        self.delete_object(kind.name(), key).map(|_| ())
    }

    fn changes(&self) -> &Arc<ChangeLog> {
        self.journal.log()
    }

    /// Events cost no write of their own: they are kept until the next object write and stored
    /// in its transaction (or when the store is dropped). A SIGKILL loses at most the events since
    /// the last object write.
    fn put_event(&self, seq: u64, event: &Value, keep: usize) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(|e| err("encoding event", &seq.to_string(), e))?;
        let mut events = self.pending_events();
        events.cut = events.cut.max(seq.saturating_sub(keep as u64));
        let cut = events.cut;
        events.by_seq.insert(seq, bytes);
        events.by_seq.retain(|s, _| *s > cut);
        Ok(())
    }

    fn load_events(&self) -> Result<Vec<(u64, Value)>, StoreError> {
        self.flush_events()?;
        let tx = self.db.begin_read().map_err(|e| err("reading the events of", &self.path, e))?;
        let table = tx.open_table(EVENTS).map_err(|e| err("opening the events of", &self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| err("listing the events of", &self.path, e))? {
            let (k, v) = row.map_err(|e| err("reading an event of", &self.path, e))?;
            match serde_json::from_slice(v.value()) {
                Ok(value) => out.push((k.value(), value)),
                Err(e) => {
                    log::error!("state store {}: event {} unreadable, skipped: {e}", self.path, k.value())
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
