//! The Kubernetes layer over a small in-memory set of VM routes: what it adds to lists, gets,
//! patches and watches, without a node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use virt_core::lifecycle::watch::Journal;
use virt_core::lifecycle::Key;

type Objects = Arc<Mutex<BTreeMap<String, Value>>>;

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

fn vm(name: &str, rv: u64, labels: Value) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": { "name": name, "namespace": "default", "resourceVersion": rv.to_string(), "labels": labels,
                      "creationTimestamp": "2026-01-01T00:00:00Z" },
        "spec": { "runStrategy": "Halted" },
        "status": { "printableStatus": "Stopped" },
    })
}

/// GET list, GET one, PUT one (bumping resourceVersion): what the per-kind routes do.
fn inner(objects: Objects) -> Router {
    async fn list(State(o): State<Objects>) -> Json<Value> {
        let items: Vec<Value> = o.lock().unwrap().values().cloned().collect();
        Json(
            json!({ "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineList", "metadata": {}, "items": items }),
        )
    }
    async fn one(
        State(o): State<Objects>,
        Path((_, name)): Path<(String, String)>,
    ) -> (StatusCode, Json<Value>) {
        match o.lock().unwrap().get(&name) {
            Some(v) => (StatusCode::OK, Json(v.clone())),
            None => (StatusCode::NOT_FOUND, Json(json!({ "kind": "Status", "code": 404 }))),
        }
    }
    async fn put(
        State(o): State<Objects>,
        Path((_, name)): Path<(String, String)>,
        Json(mut v): Json<Value>,
    ) -> Json<Value> {
        let mut o = o.lock().unwrap();
        let rv = o.values().map(super::resource_version).max().unwrap_or(0) + 1;
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        o.insert(name, v.clone());
        Json(v)
    }
    Router::new()
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines", get(list))
        .route("/apis/kubevirt.io/v1/namespaces/{ns}/virtualmachines/{name}", get(one).put(put))
        .with_state(objects)
}

fn setup() -> (Objects, Router) {
    let objects: Objects = Arc::new(Mutex::new(BTreeMap::new()));
    objects.lock().unwrap().insert("a".into(), vm("a", 1, json!({ "app": "web" })));
    objects.lock().unwrap().insert("b".into(), vm("b", 2, json!({ "app": "db" })));
    (objects.clone(), super::layer(inner(objects), None))
}

async fn call(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let code = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn get_req(uri: &str, accept: &str) -> Request<Body> {
    Request::get(uri).header(header::ACCEPT, accept).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn lists_are_selected_versioned_and_printed_as_tables() {
    let (_, app) = setup();
    let (code, list) =
        call(&app, get_req(&format!("{VMS}?labelSelector=app%3Dweb"), "application/json")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["metadata"]["name"], "a");
    assert_eq!(list["metadata"]["resourceVersion"], "1");
    let (_, bad) = call(&app, get_req(&format!("{VMS}?fieldSelector=spec.x%3D1"), "application/json")).await;
    assert_eq!((bad["reason"].as_str(), bad["code"].as_u64()), (Some("BadRequest"), Some(400)));
    let (_, table) =
        call(&app, get_req(VMS, "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")).await;
    assert_eq!(table["kind"], "Table");
    assert_eq!(table["rows"].as_array().unwrap().len(), 2);
    assert_eq!(table["rows"][1]["cells"][2], "Stopped");
    let (_, one) =
        call(&app, get_req(&format!("{VMS}/b"), "application/json;as=Table;v=v1;g=meta.k8s.io")).await;
    assert_eq!(one["rows"][0]["cells"][0], "b");
    let (_, disc) = call(&app, get_req("/apis/kubevirt.io/v1", "application/json")).await;
    assert_eq!(disc["kind"], "APIResourceList");
}

#[tokio::test]
async fn patches_read_patch_and_replace() {
    let (objects, app) = setup();
    let patch = |ct: &str, body: &str| {
        Request::patch(format!("{VMS}/a"))
            .header(header::CONTENT_TYPE, ct)
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (code, out) =
        call(&app, patch("application/merge-patch+json", r#"{"spec":{"runStrategy":"Always"}}"#)).await;
    assert_eq!(code, StatusCode::OK, "{out}");
    assert_eq!(objects.lock().unwrap()["a"]["spec"]["runStrategy"], "Always");
    let (code, _) = call(
        &app,
        patch(
            "application/json-patch+json",
            r#"[{"op":"replace","path":"/spec/runStrategy","value":"Manual"}]"#,
        ),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(objects.lock().unwrap()["a"]["spec"]["runStrategy"], "Manual");
    let (code, st) = call(&app, patch("application/strategic-merge-patch+json", "{}")).await;
    assert_eq!(
        (code, st["reason"].as_str()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, Some("UnsupportedMediaType"))
    );
    let (code, st) =
        call(&app, patch("application/json-patch+json", r#"[{"op":"remove","path":"/nope"}]"#)).await;
    assert_eq!((code, st["reason"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("Invalid")));
    let (code, _) = call(
        &app,
        Request::patch(format!("{VMS}/zz"))
            .header(header::CONTENT_TYPE, "application/merge-patch+json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // The routing's own refusals are Statuses too.
    let (code, st) = call(&app, Request::delete(format!("{VMS}/a")).body(Body::empty()).unwrap()).await;
    assert_eq!(
        (code, st["kind"].as_str(), st["reason"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("Status"), Some("MethodNotAllowed"))
    );
}

#[tokio::test]
async fn a_watch_streams_changes_after_its_version() {
    let (objects, app) = setup();
    let resp = app
        .clone()
        .oneshot(get_req(&format!("{VMS}?watch=true&resourceVersion=1"), "application/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut lines = Lines { body: resp.into_body(), buf: Vec::new() };
    // Only b changed after version 1.
    let first = lines.next().await;
    assert_eq!(
        (first["type"].as_str(), first["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("b"))
    );
    objects.lock().unwrap().get_mut("a").unwrap()["status"]["printableStatus"] = json!("Running");
    let modified = lines.next().await;
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["status"]["printableStatus"], "Running");
    objects.lock().unwrap().remove("b");
    let deleted = lines.next().await;
    assert_eq!(
        (deleted["type"].as_str(), deleted["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("b"))
    );
}

/// The lines of a streamed body, as JSON.
struct Lines {
    body: Body,
    buf: Vec<u8>,
}

impl Lines {
    async fn next(&mut self) -> Value {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let frame = tokio::time::timeout(Duration::from_secs(30), self.body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            self.buf.extend_from_slice(&frame.into_data().unwrap());
        }
    }
}

/// Writes `vm` to the routes' objects and the store's journal, as a store write does.
fn store_put(objects: &Objects, journal: &Journal, mut v: Value) {
    let name = v["metadata"]["name"].as_str().unwrap().to_string();
    let key = Key::new("default", &name);
    let rv = journal
        .put("VirtualMachine", &key, v.clone(), |_, _| Ok::<_, std::convert::Infallible>(false))
        .unwrap();
    v["metadata"]["resourceVersion"] = json!(rv.to_string());
    objects.lock().unwrap().insert(name, v);
}

#[tokio::test]
async fn a_watch_of_a_stored_kind_follows_the_change_log() {
    let objects: Objects = Arc::new(Mutex::new(BTreeMap::new()));
    let journal = Journal::new(0, 3);
    store_put(&objects, &journal, vm("a", 0, json!({ "app": "web" })));
    let app = super::layer(inner(objects.clone()), Some(journal.log().clone()));
    // The list is as of the store's resourceVersion.
    let (_, list) = call(&app, get_req(VMS, "application/json")).await;
    assert_eq!(list["metadata"]["resourceVersion"], "1");

    let resp = app
        .clone()
        .oneshot(get_req(&format!("{VMS}?watch=true&labelSelector=app%3Dweb"), "application/json"))
        .await
        .unwrap();
    let mut lines = Lines { body: resp.into_body(), buf: Vec::new() };
    let first = lines.next().await;
    assert_eq!(
        (first["type"].as_str(), first["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("a"))
    );
    // A change of another label is not shown; one that matches is, at once, with its resourceVersion.
    store_put(&objects, &journal, vm("b", 0, json!({ "app": "db" })));
    store_put(&objects, &journal, vm("c", 0, json!({ "app": "web" })));
    let added = lines.next().await;
    assert_eq!(
        (added["type"].as_str(), added["object"]["metadata"]["name"].as_str()),
        (Some("ADDED"), Some("c"))
    );
    assert_eq!(added["object"]["metadata"]["resourceVersion"], "3");
    // "a" stops matching: DELETED for this watch.
    store_put(&objects, &journal, vm("a", 0, json!({ "app": "other" })));
    let left = lines.next().await;
    assert_eq!(
        (left["type"].as_str(), left["object"]["metadata"]["name"].as_str()),
        (Some("DELETED"), Some("a"))
    );

    // The log keeps 3 changes: after 5 writes a watch from resourceVersion 1 is 410 Gone.
    store_put(&objects, &journal, vm("d", 0, json!({})));
    let resp = app
        .clone()
        .oneshot(get_req(&format!("{VMS}?watch=true&resourceVersion=0"), "application/json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "from 0: a list, then a watch from now");
    drop(resp);
    let (code, status) = call(
        &app,
        get_req(&format!("{VMS}?watch=true&resourceVersion=1&timeoutSeconds=1"), "application/json"),
    )
    .await;
    assert_eq!(
        (code, status["reason"].as_str(), status["code"].as_i64()),
        (StatusCode::GONE, Some("Expired"), Some(410))
    );
}

#[tokio::test]
async fn bookmarks_come_when_asked_for() {
    let objects: Objects = Arc::new(Mutex::new(BTreeMap::new()));
    let journal = Journal::new(0, 16);
    store_put(&objects, &journal, vm("a", 0, json!({})));
    let app = super::layer(inner(objects.clone()), Some(journal.log().clone()));
    let resp = app
        .oneshot(get_req(
            &format!("{VMS}?watch=true&resourceVersion=1&allowWatchBookmarks=true"),
            "application/json",
        ))
        .await
        .unwrap();
    let mut lines = Lines { body: resp.into_body(), buf: Vec::new() };
    let b = lines.next().await;
    assert_eq!(
        (b["type"].as_str(), b["object"]["metadata"]["resourceVersion"].as_str()),
        (Some("BOOKMARK"), Some("1"))
    );
}
