//! `?watch=true` on a collection: a stream of `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}`
//! lines, as kubectl's `get -w` and `delete --wait` read them.
//!
//! Kinds the store holds are served from the store's change log ([`ChangeLog`]): a watcher follows
//! the log from the list's resourceVersion (or the one asked for), woken by each write as it is
//! stored, so an event reaches the client as soon as its change is durable, in resourceVersion
//! order; a resourceVersion the log no longer holds is answered `410 Gone` (an `ERROR` event with a
//! `Status` of code 410 once the stream has started), and `allowWatchBookmarks=true` gets `BOOKMARK`
//! events while nothing changes. Kinds outside the store (Events, StorageProfiles, CDIConfig) are
//! watched by comparing successive snapshots of the collection (taken through the per-kind routes
//! every [`PERIOD`]). With a Table `Accept`, each event's object is a Table of one row.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use virt_core::lifecycle::{ChangeLog, ChangeType, Key, WatchError, WatchEvent};

use super::select::Selector;
use super::table::{self, Include};
use super::{get_json, json_response, resource_version, Target};

/// How often the collection of a kind outside the store is looked at.
pub const PERIOD: Duration = Duration::from_millis(200);
/// How long a store watch waits for a change before it sends a bookmark (when asked for) and looks
/// whether the client is still there.
pub const BOOKMARK_PERIOD: Duration = Duration::from_secs(1);

fn key(o: &Value) -> String {
    let m = |k: &str| o.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
    format!("{}/{}", m("namespace"), m("name"))
}

struct Watch {
    inner: Router,
    target: Target,
    selector: Selector,
    table: Option<Include>,
    path: String,
}

impl Watch {
    fn event(&self, kind: &str, object: &Value) -> Option<Bytes> {
        let object = match self.table {
            Some(include) => {
                let rv = resource_version(object).to_string();
                table::table(self.target.resource, std::slice::from_ref(object), &rv, include)
            }
            None => object.clone(),
        };
        raw_event(kind, &object)
    }

    /// The selected objects now, by key; `Err` carries the collection's error answer.
    async fn snapshot(&self) -> Result<HashMap<String, Value>, (StatusCode, Value)> {
        let (code, body) = get_json(&self.inner, &self.path).await.map_err(|_| {
            (StatusCode::INTERNAL_SERVER_ERROR, json!({ "kind": "Status", "message": "listing failed" }))
        })?;
        if !code.is_success() {
            return Err((code, body));
        }
        Ok(body["items"]
            .as_array()
            .map(|a| a.iter().filter(|o| self.selector.matches(o)).map(|o| (key(o), o.clone())).collect())
            .unwrap_or_default())
    }
}

/// What a watch request asked for.
pub struct Request {
    /// The collection.
    pub target: Target,
    /// Label and field selectors.
    pub selector: Selector,
    /// `resourceVersion`: the changes after it (`None` or `0`: every object as `ADDED` first).
    pub from: Option<String>,
    /// Table output.
    pub table: Option<Include>,
    /// `timeoutSeconds`.
    pub timeout_seconds: Option<u64>,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
}

/// Answers a watch: the first snapshot decides the status (a missing namespace is a 404 `Status`),
/// then events flow until the client goes away or `timeout_seconds` pass. Kinds the store holds are
/// followed through `changes` when the node gives it.
pub async fn serve(inner: Router, changes: Option<Arc<ChangeLog>>, req: Request) -> Response {
    match (changes, StoredKind::of(req.target.resource.kind)) {
        (Some(log), Some(stored)) => serve_store(inner, log, stored, req).await,
        _ => serve_polling(inner, req).await,
    }
}

/// How the store names a registered kind: the change's kind, and for the instancetype kinds (stored
/// as `Instancetype` under `<Kind>/<name>`) the name prefix.
#[derive(Clone, Copy)]
struct StoredKind {
    kind: &'static str,
    prefix: Option<&'static str>,
}

impl StoredKind {
    fn of(kind: &'static str) -> Option<Self> {
        match kind {
            "Namespace"
            | "VirtualMachine"
            | "VirtualMachineInstance"
            | "VirtualMachineInstanceMigration"
            | "MigrationPolicy"
            | "DataVolume"
            | "DataSource"
            | "DataImportCron"
            | "VolumeSnapshot"
            | "Secret"
            | "ConfigMap"
            | "NetworkAttachmentDefinition" => Some(Self { kind, prefix: None }),
            "VirtualMachineInstancetype"
            | "VirtualMachineClusterInstancetype"
            | "VirtualMachinePreference"
            | "VirtualMachineClusterPreference" => Some(Self { kind: "Instancetype", prefix: Some(kind) }),
            _ => None,
        }
    }

    /// Whether a change of `kind` at `key` is of this kind (in `namespace`, if given).
    fn holds(&self, kind: &str, key: &Key, namespace: Option<&str>) -> bool {
        kind == self.kind
            && namespace.is_none_or(|n| n == key.namespace)
            && self.prefix.is_none_or(|p| key.name.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
    }
}

/// Whether the store holds (and its change log records) objects of `kind`.
pub fn stored(kind: &'static str) -> bool {
    StoredKind::of(kind).is_some()
}

fn gone_status(e: &WatchError) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": e.to_string(), "reason": "Expired", "code": 410,
    })
}

/// A watch served from the store's change log.
async fn serve_store(inner: Router, log: Arc<ChangeLog>, stored: StoredKind, req: Request) -> Response {
    let since: Option<u64> = req.from.as_deref().and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    // Taken before the list: a change after it is seen by the watcher, if not by the list.
    let start = since.unwrap_or_else(|| log.last());
    let mut watcher = match log.watch(start) {
        Ok(w) => w,
        Err(e) => return json_response(StatusCode::GONE, &gone_status(&e)),
    };
    let path = req.target.resource.collection_path(req.target.namespace.as_deref());
    let w = Watch { inner, target: req.target, selector: req.selector, table: req.table, path };
    let listed = match w.snapshot().await {
        Ok(s) => s,
        Err((code, body)) => return json_response(code, &body),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let deadline = req.timeout_seconds.map(|s| std::time::Instant::now() + Duration::from_secs(s));
    let bookmarks = req.bookmarks && w.table.is_none();
    tokio::task::spawn_blocking(move || {
        // Objects the client was told exist (and match), with the resourceVersion it last got.
        let mut seen: HashMap<Key, u64> = HashMap::new();
        if since.is_some() {
            // Watching from a version: the objects there are now were there before (or their
            // ADDED is still to come); every change after the version goes through.
            seen.extend(listed.values().map(|o| (key_of(o), 0)));
        } else {
            let mut first: Vec<&Value> = listed.values().collect();
            first.sort_by_key(|o| resource_version(o));
            for o in first {
                seen.insert(key_of(o), resource_version(o));
                if w.event("ADDED", o).is_none_or(|line| tx.blocking_send(line).is_err()) {
                    return;
                }
            }
        }
        let namespace = w.target.namespace.clone();
        loop {
            if tx.is_closed() || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return;
            }
            let line = match watcher.next(BOOKMARK_PERIOD) {
                Ok(WatchEvent::Change(c)) => {
                    if !stored.holds(&c.kind, &c.key, namespace.as_deref()) {
                        continue;
                    }
                    let mut o = c.value();
                    with_type(&mut o, w.target.resource);
                    let k = key_of(&o);
                    if seen.get(&k).is_some_and(|rv| *rv >= c.resource_version) {
                        continue; // the list had it already
                    }
                    let matches = c.type_ != ChangeType::Deleted && w.selector.matches(&o);
                    let was = seen.contains_key(&k);
                    let kind = match (was, matches) {
                        (false, false) => continue,
                        (true, false) => "DELETED",
                        (false, true) => "ADDED",
                        (true, true) if c.type_ == ChangeType::Added => "ADDED",
                        (true, true) => "MODIFIED",
                    };
                    if matches {
                        seen.insert(k, c.resource_version);
                    } else {
                        seen.remove(&k);
                    }
                    w.event(kind, &o)
                }
                Ok(WatchEvent::Bookmark(rv)) if bookmarks => {
                    let r = w.target.resource;
                    let o = json!({ "apiVersion": r.api_version, "kind": r.kind,
                                    "metadata": { "resourceVersion": rv.to_string() } });
                    w.event("BOOKMARK", &o)
                }
                Ok(WatchEvent::Bookmark(_)) => continue,
                Err(e) => {
                    if let Some(line) = raw_event("ERROR", &gone_status(&e)) {
                        let _ = tx.blocking_send(line);
                    }
                    return;
                }
            };
            if line.is_none_or(|line| tx.blocking_send(line).is_err()) {
                return;
            }
        }
    });
    stream_response(rx)
}

fn key_of(o: &Value) -> Key {
    let m = |k: &str| o.pointer(&format!("/metadata/{k}")).and_then(Value::as_str).unwrap_or("").to_string();
    Key::new(m("namespace"), m("name"))
}

/// Stored objects carry their `apiVersion` and `kind`; an older one without them gets them here.
fn with_type(o: &mut Value, r: &crate::registry::Resource) {
    if let Some(m) = o.as_object_mut() {
        m.entry("apiVersion").or_insert_with(|| r.api_version.into());
        m.entry("kind").or_insert_with(|| r.kind.into());
    }
}

fn raw_event(kind: &str, object: &Value) -> Option<Bytes> {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).ok()?;
    line.push(b'\n');
    Some(Bytes::from(line))
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// A watch of a kind outside the store: successive snapshots compared.
async fn serve_polling(inner: Router, req: Request) -> Response {
    let Request { target, selector, from, table, timeout_seconds, .. } = req;
    let path = target.resource.collection_path(target.namespace.as_deref());
    let w = Watch { inner, target, selector, table, path };
    let mut known = match w.snapshot().await {
        Ok(s) => s,
        Err((code, body)) => return json_response(code, &body),
    };
    let since: u64 = from.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let deadline = timeout_seconds.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    tokio::spawn(async move {
        // From "" or "0": every object as ADDED first; from a version: what changed after it.
        let mut first: Vec<&Value> =
            known.values().filter(|o| since == 0 || resource_version(o) > since).collect();
        first.sort_by_key(|o| resource_version(o));
        for o in first {
            if let Some(line) = w.event("ADDED", o) {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        loop {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = tx.closed() => return,
            }
            let Ok(now) = w.snapshot().await else { return };
            let mut events = Vec::new();
            for (k, o) in &now {
                match known.get(k) {
                    None => events.push(("ADDED", o.clone())),
                    Some(old) if old != o => events.push(("MODIFIED", o.clone())),
                    Some(_) => {}
                }
            }
            for (k, o) in &known {
                if !now.contains_key(k) {
                    events.push(("DELETED", o.clone()));
                }
            }
            events.sort_by_key(|(_, o)| resource_version(o));
            for (kind, o) in &events {
                if let Some(line) = w.event(kind, o) {
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            }
            known = now;
        }
    });
    stream_response(rx)
}
