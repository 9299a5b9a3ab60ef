//! `?watch=true` on a collection: a stream of `{"type": "ADDED"|"MODIFIED"|"DELETED", "object": ...}`
//! lines, as kubectl's `get -w` and `delete --wait` read them. The stream compares successive
//! snapshots of the collection (taken through the per-kind routes every [`PERIOD`]), so it sees
//! every change of the objects' JSON, including status changes; a watch from a `resourceVersion`
//! reports the objects changed after it. With a Table `Accept`, each event's object is a Table of one
//! row.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use super::select::Selector;
use super::table::{self, Include};
use super::{get_json, json_response, resource_version, Target};

/// How often the collection is looked at.
pub const PERIOD: Duration = Duration::from_millis(200);

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
        let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object })).ok()?;
        line.push(b'\n');
        Some(Bytes::from(line))
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

/// Answers a watch: the first snapshot decides the status (a missing namespace is a 404 `Status`),
/// then events flow until the client goes away or `timeout_seconds` pass.
pub async fn serve(
    inner: Router,
    target: Target,
    selector: Selector,
    from: Option<String>,
    table: Option<Include>,
    timeout_seconds: Option<u64>,
) -> Response {
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
