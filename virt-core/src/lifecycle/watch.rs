//! One resourceVersion sequence and a watchable change log for a store: every write takes the
//! next resourceVersion and is recorded, in order, once it is stored; a watcher resumes from any
//! resourceVersion the log still holds and is told `Gone` (Kubernetes' 410) for an older one, and
//! gets bookmarks (the latest resourceVersion) while nothing changes.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{lock, Key};

/// Changes a log keeps by default before the oldest are dropped (watchers further behind get
/// [`WatchError::Gone`] and list again). Each is kept as its JSON text (about 1 KiB for a VM).
pub const DEFAULT_LOG_CAPACITY: usize = 2_048;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeType {
    /// Created.
    Added,
    /// Replaced.
    Modified,
    /// Removed.
    Deleted,
}

impl ChangeType {
    /// The watch event type as Kubernetes writes it (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One stored change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The resourceVersion the change took.
    pub resource_version: u64,
    /// What happened.
    pub type_: ChangeType,
    /// The object's kind (`VirtualMachine`, `DataVolume`, ...).
    pub kind: String,
    /// Namespace and name.
    pub key: Key,
    /// The object as stored, as JSON text (for a deletion: as it was last stored, with the
    /// deletion's resourceVersion).
    pub object: Arc<str>,
}

impl Change {
    /// The object as a JSON value.
    pub fn value(&self) -> serde_json::Value {
        serde_json::from_str(&self.object).unwrap_or(serde_json::Value::Null)
    }
}

/// What a watcher gets next.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A change, in resourceVersion order.
    Change(Change),
    /// Nothing changed for a while; the store is at this resourceVersion.
    Bookmark(u64),
}

/// Errors of watches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    /// The changes after `requested` are no longer all kept: list again (HTTP 410 Gone).
    #[error("too old resource version: {requested} (the oldest the store can watch from is {oldest})")]
    Gone {
        /// The resourceVersion asked for.
        requested: u64,
        /// The oldest one a watch can start from.
        oldest: u64,
    },
}

#[derive(Debug)]
struct LogInner {
    changes: VecDeque<Change>,
    /// Changes up to this resourceVersion are not kept (those before the store opened, or dropped).
    compacted: u64,
    /// The latest resourceVersion taken.
    last: u64,
}

/// The change log of a store.
#[derive(Debug)]
pub struct ChangeLog {
    inner: Mutex<LogInner>,
    cv: Condvar,
    capacity: usize,
}

impl ChangeLog {
    /// An empty log of a store at resourceVersion `last`, keeping at most `capacity` changes.
    pub fn new(last: u64, capacity: usize) -> Self {
        Self {
            inner: Mutex::new(LogInner { changes: VecDeque::new(), compacted: last, last }),
            cv: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    /// The latest resourceVersion (what a list returns as its own).
    pub fn last(&self) -> u64 {
        lock(&self.inner).last
    }

    /// The oldest resourceVersion a watch can start from.
    pub fn oldest(&self) -> u64 {
        lock(&self.inner).compacted
    }

    fn record(&self, change: Change) {
        let mut l = lock(&self.inner);
        l.last = l.last.max(change.resource_version);
        l.changes.push_back(change);
        while l.changes.len() > self.capacity {
            if let Some(c) = l.changes.pop_front() {
                l.compacted = c.resource_version;
            }
        }
        drop(l);
        self.cv.notify_all();
    }

    /// A watcher of the changes after resourceVersion `from`.
    pub fn watch(self: &Arc<Self>, from: u64) -> Result<Watcher, WatchError> {
        let l = lock(&self.inner);
        if from < l.compacted {
            return Err(WatchError::Gone { requested: from, oldest: l.compacted });
        }
        Ok(Watcher { log: self.clone(), after: from })
    }
}

/// Follows a [`ChangeLog`] from a resourceVersion on.
#[derive(Debug)]
pub struct Watcher {
    log: Arc<ChangeLog>,
    after: u64,
}

impl Watcher {
    /// The next change, or a bookmark when nothing changed within `timeout`. `Gone` when the
    /// watcher fell so far behind that the log dropped changes it had not seen.
    pub fn next(&mut self, timeout: Duration) -> Result<WatchEvent, WatchError> {
        let deadline = Instant::now() + timeout;
        let mut l = lock(&self.log.inner);
        loop {
            if self.after < l.compacted {
                return Err(WatchError::Gone { requested: self.after, oldest: l.compacted });
            }
            // Changes are in resourceVersion order: find the first one after ours.
            let start = l.changes.partition_point(|c| c.resource_version <= self.after);
            if let Some(c) = l.changes.get(start) {
                self.after = c.resource_version;
                return Ok(WatchEvent::Change(c.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                self.after = self.after.max(l.last);
                return Ok(WatchEvent::Bookmark(self.after));
            }
            l = self
                .log
                .cv
                .wait_timeout(l, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// The resourceVersion this watcher has seen up to.
    pub fn resource_version(&self) -> u64 {
        self.after
    }
}

/// A store's one resourceVersion sequence with its change log: writes are serialised here, so
/// resourceVersions are taken, stored and recorded in one order.
#[derive(Debug)]
pub struct Journal {
    seq: Mutex<u64>,
    log: Arc<ChangeLog>,
}

impl Journal {
    /// A journal of a store whose latest resourceVersion is `last`.
    pub fn new(last: u64, capacity: usize) -> Self {
        Self { seq: Mutex::new(last), log: Arc::new(ChangeLog::new(last, capacity)) }
    }

    /// The change log.
    pub fn log(&self) -> &Arc<ChangeLog> {
        &self.log
    }

    /// Writes `value` as object `kind` `key` with the next resourceVersion, stamped into its
    /// `metadata.resourceVersion`: `persist(rv, json)` stores that JSON text durably and says
    /// whether the object existed. Returns the resourceVersion; a failed `persist` takes none and
    /// records nothing.
    pub fn put<E>(
        &self,
        kind: &str,
        key: &Key,
        value: serde_json::Value,
        persist: impl FnOnce(u64, &str) -> Result<bool, E>,
    ) -> Result<u64, E> {
        let mut persist = Some(persist);
        let rvs = self.put_all(vec![(kind, key, value)], |stamped| {
            let mut existed = Vec::with_capacity(1);
            for (rv, json) in stamped {
                if let Some(p) = persist.take() {
                    existed.push(p(*rv, json)?);
                }
            }
            Ok(existed)
        })?;
        Ok(rvs.first().copied().unwrap_or_default())
    }

    /// [`Journal::put`] for several objects `(kind, key, value)` as one durable step: each takes
    /// the next resourceVersion in order; `persist` stores every `(rv, json)` durably at once
    /// and says for each whether the object existed. A failed `persist` takes no resourceVersion
    /// and records nothing.
    pub fn put_all<E>(
        &self,
        objects: Vec<(&str, &Key, serde_json::Value)>,
        persist: impl FnOnce(&[(u64, Arc<str>)]) -> Result<Vec<bool>, E>,
    ) -> Result<Vec<u64>, E> {
        let mut seq = lock(&self.seq);
        let first = *seq + 1;
        let mut names = Vec::with_capacity(objects.len());
        let mut stamped = Vec::with_capacity(objects.len());
        for (rv, (kind, key, mut value)) in (first..).zip(objects) {
            stamp(&mut value, rv);
            stamped.push((rv, Arc::<str>::from(value.to_string())));
            names.push((kind, key));
        }
        let existed = persist(&stamped)?;
        let mut rvs = Vec::with_capacity(stamped.len());
        for (i, ((kind, key), (rv, json))) in names.into_iter().zip(stamped).enumerate() {
            *seq = rv;
            rvs.push(rv);
            let type_ = if existed.get(i).copied().unwrap_or(false) {
                ChangeType::Modified
            } else {
                ChangeType::Added
            };
            self.log.record(Change {
                resource_version: rv,
                type_,
                kind: kind.into(),
                key: key.clone(),
                object: json,
            });
        }
        Ok(rvs)
    }

    /// Removes object `kind` `key`: `persist(rv)` removes it durably and returns what was stored
    /// (`None`: nothing was, and no resourceVersion is taken).
    pub fn delete<E>(
        &self,
        kind: &str,
        key: &Key,
        persist: impl FnOnce(u64) -> Result<Option<serde_json::Value>, E>,
    ) -> Result<Option<u64>, E> {
        let mut seq = lock(&self.seq);
        let rv = *seq + 1;
        let Some(mut object) = persist(rv)? else { return Ok(None) };
        stamp(&mut object, rv);
        *seq = rv;
        self.log.record(Change {
            resource_version: rv,
            type_: ChangeType::Deleted,
            kind: kind.into(),
            key: key.clone(),
            object: object.to_string().into(),
        });
        Ok(Some(rv))
    }

    /// The latest resourceVersion taken.
    pub fn last(&self) -> u64 {
        *lock(&self.seq)
    }
}

fn stamp(value: &mut serde_json::Value, rv: u64) {
    if let Some(meta) = value.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("resourceVersion".into(), rv.to_string().into());
    }
}

/// The resourceVersion in an object's `metadata`, if it has a numeric one.
pub fn resource_version_of(value: &serde_json::Value) -> Option<u64> {
    value.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).and_then(|v| v.parse().ok())
}
