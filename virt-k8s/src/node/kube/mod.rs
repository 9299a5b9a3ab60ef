//! The Kubernetes layer in front of the node's routes (docs/node-api.md): discovery and
//! `/openapi/v2` from the [`registry`](crate::registry), and on every registered resource the parts
//! of the Kubernetes REST contract the per-kind handlers do not know: label and field selectors on
//! lists, a list `resourceVersion`, `?watch=true` streams, kubectl's `Table` output, and `PATCH`
//! (JSON merge patch, JSON patch) as a read, a patch and a replace. Everything else is forwarded
//! to the per-kind routes unchanged, so the same rules hold on the unix socket and on TCP.

pub mod discovery;
pub mod openapi;
pub mod patch;
pub mod select;
pub mod table;
mod watch;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::Value;
use tower::ServiceExt;
use virt_core::lifecycle::ChangeLog;

use crate::registry::{self, Resource};

use super::api::status_response;
use select::Selector;
use table::Include;

/// The most a forwarded response body may hold (a list of every object on a big node).
const BODY_LIMIT: usize = 256 * 1024 * 1024;

/// A path to a registered resource: its collection, or one object (and a subresource).
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub resource: &'static Resource,
    /// The namespace in the path, if any.
    pub namespace: Option<String>,
    /// The object's name; `None` for the collection.
    pub name: Option<String>,
    /// A subresource (`status`, ...) after the name.
    pub subresource: Option<String>,
}

impl Target {
    /// Reads `/api/v1/...` or `/apis/{group}/{version}/...`.
    pub fn parse(path: &str) -> Option<Self> {
        let (group, version, rest) = if let Some(r) = path.strip_prefix("/api/") {
            let (v, rest) = r.split_once('/')?;
            ("", v, rest)
        } else {
            let r = path.strip_prefix("/apis/")?;
            let (g, r) = r.split_once('/')?;
            let (v, rest) = r.split_once('/')?;
            (g, v, rest)
        };
        let seg: Vec<&str> = rest.split('/').collect();
        let (namespace, seg) = match seg.as_slice() {
            ["namespaces", ns, more @ ..] if !more.is_empty() => (Some(ns.to_string()), more.to_vec()),
            _ => (None, seg),
        };
        let resource = registry::by_plural(group, seg.first()?).filter(|r| r.version == version)?;
        let (name, subresource) = match seg.as_slice() {
            [_] => (None, None),
            [_, n] => (Some(n.to_string()), None),
            [_, n, s] => (Some(n.to_string()), Some(s.to_string())),
            _ => return None,
        };
        Some(Self { resource, namespace, name, subresource })
    }
}

/// The query parameters the layer reads.
#[derive(Debug, Default)]
struct Query {
    watch: bool,
    resource_version: Option<String>,
    label_selector: Option<String>,
    field_selector: Option<String>,
    include_object: Option<String>,
    timeout_seconds: Option<u64>,
    dry_run: bool,
    bookmarks: bool,
}

fn decode_component(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    fn parse(q: Option<&str>) -> Self {
        let mut out = Self::default();
        for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_component(v);
            match k {
                "watch" => out.watch = v == "true" || v == "1",
                "resourceVersion" => out.resource_version = Some(v).filter(|v| !v.is_empty()),
                "labelSelector" => out.label_selector = Some(v).filter(|v| !v.is_empty()),
                "fieldSelector" => out.field_selector = Some(v).filter(|v| !v.is_empty()),
                "includeObject" => out.include_object = Some(v),
                "timeoutSeconds" => out.timeout_seconds = v.parse().ok(),
                "dryRun" => out.dry_run = !v.is_empty(),
                "allowWatchBookmarks" => out.bookmarks = v == "true" || v == "1",
                _ => {}
            }
        }
        out
    }
}

/// The node's routes behind the Kubernetes layer; watches of the kinds the store holds follow
/// `changes`, the store's change log (without it, every watch compares snapshots).
pub fn layer(inner: Router, changes: Option<Arc<ChangeLog>>) -> Router {
    Router::new().fallback(move |req: Request| handle(inner.clone(), changes.clone(), req))
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, Json(v)).into_response()
}

async fn handle(inner: Router, changes: Option<Arc<ChangeLog>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let accept = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if req.method() == Method::GET {
        if path == "/openapi/v2" {
            return if accept.contains("protobuf") {
                ([(header::CONTENT_TYPE, openapi::PROTOBUF)], openapi::protobuf_document()).into_response()
            } else {
                json_response(StatusCode::OK, &openapi::json_document())
            };
        }
        if let Some(doc) = discovery::document(&path) {
            return json_response(StatusCode::OK, &doc);
        }
    }
    let Some(target) = Target::parse(&path) else {
        return forward(inner, req).await;
    };
    let query = Query::parse(req.uri().query());
    let table = table::wanted(&accept).then(|| Include::parse(query.include_object.as_deref()));
    if query.dry_run && req.method() != Method::GET {
        // Refused rather than ignored: a dry run must never change anything.
        return status_response(StatusCode::BAD_REQUEST, "BadRequest", "the node does not support dryRun");
    }
    match (req.method().clone(), &target.name, &target.subresource) {
        (Method::GET, None, _) => {
            let selector =
                match Selector::parse(query.label_selector.as_deref(), query.field_selector.as_deref()) {
                    Ok(s) => s,
                    Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
                };
            if query.watch {
                let req = watch::Request {
                    target,
                    selector,
                    from: query.resource_version,
                    table,
                    timeout_seconds: query.timeout_seconds,
                    bookmarks: query.bookmarks,
                };
                return watch::serve(inner, changes, req).await;
            }
            // Read before the list: a watch from it sees whatever the list might have missed.
            let store_rv = changes.filter(|_| watch::stored(target.resource.kind)).map(|c| c.last());
            list(inner, &target, &selector, table, store_rv).await
        }
        (Method::GET, Some(_), None) => get_one(inner, req, &target, table).await,
        (Method::PATCH, Some(_), None) => {
            let name = target.name.clone().unwrap_or_default();
            invalid_details(patch_object(inner, req, &target).await, target.resource, &name).await
        }
        (Method::POST, None, _) | (Method::PUT, Some(_), None) => write(inner, req, &target).await,
        _ => forward(inner, req).await,
    }
}

/// A create or replace: forwarded; a refusal as `Invalid` gets the `details` kubectl prints (`The
/// VirtualMachine "x" is invalid: spec.bogus: unknown field`).
async fn write(inner: Router, req: Request, target: &Target) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => {
            return status_response(StatusCode::BAD_REQUEST, "BadRequest", &format!("request body: {e}"))
        }
    };
    let name = target.name.clone().unwrap_or_else(|| {
        let text = String::from_utf8_lossy(&body);
        let doc = serde_json::from_str::<Value>(&text).ok().or_else(|| {
            virt_core::api::parse_yaml(&text).ok().and_then(|mut d| (!d.is_empty()).then(|| d.remove(0)))
        });
        doc.and_then(|d| d.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    });
    let resp = forward(inner, Request::from_parts(parts, Body::from(body))).await;
    invalid_details(resp, target.resource, &name).await
}

/// The `causes` of an `Invalid` Status that came without them (the per-kind routes send the
/// causes of the structured errors; a few refusals are still text): read from a message that lists
/// problems as the loaders and the validation write them (`[document N: ]path: what; ...`), one
/// per problem, with its field. kubectl prints them as `The Kind "name" is invalid: path: what`.
fn causes_of(message: &str) -> Vec<Value> {
    message
        .split("; ")
        .map(|m| {
            // The loaders write "document N: path: what".
            let m = m.strip_prefix("document ").and_then(|rest| rest.split_once(": ")).map_or(m, |(_, t)| t);
            match m.split_once(": ") {
                Some((field, what)) if !field.contains(' ') => {
                    serde_json::json!({ "reason": "FieldValueInvalid", "message": what, "field": field })
                }
                _ => serde_json::json!({ "reason": "FieldValueInvalid", "message": m }),
            }
        })
        .collect()
}

/// Gives a 422 `Status` its `details`: the kind and name, and one cause per refused field (the
/// route's own, else read from the message).
async fn invalid_details(resp: Response, r: &Resource, name: &str) -> Response {
    if resp.status() != StatusCode::UNPROCESSABLE_ENTITY {
        return resp;
    }
    let (code, mut status) = match read_json(resp).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let causes = match status.pointer_mut("/details/causes").map(Value::take) {
        Some(c) => c,
        None => Value::from(causes_of(status["message"].as_str().unwrap_or(""))),
    };
    status["details"] =
        serde_json::json!({ "name": name, "group": r.group, "kind": r.kind, "causes": causes });
    json_response(code, &status)
}

/// Hands `req` to the per-kind routes. An error the routing itself answers (a method a path does
/// not take, a body the extractor refused) becomes a Kubernetes `Status` like every other error.
async fn forward(inner: Router, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match inner.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let code = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(code.is_client_error() || code.is_server_error()) || is_json {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 64 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let (reason, message) = match code {
        StatusCode::METHOD_NOT_ALLOWED => {
            ("MethodNotAllowed", format!("the node does not serve {method} on {path}"))
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("UnsupportedMediaType", format!("{method} {path}: {text}")),
        StatusCode::NOT_FOUND => ("NotFound", "the server could not find the requested resource".to_string()),
        c if c.is_server_error() => ("InternalError", format!("{method} {path}: {text}")),
        _ => ("BadRequest", format!("{method} {path}: {text}")),
    };
    status_response(code, reason, &message)
}

/// A GET of `path` on the per-kind routes: its status and JSON body.
pub(crate) async fn get_json(inner: &Router, path: &str) -> Result<(StatusCode, Value), Response> {
    let req =
        Request::builder().method(Method::GET).uri(path).body(Body::empty()).map_err(|e| internal(&e))?;
    read_json(forward(inner.clone(), req).await).await
}

fn internal(e: &dyn std::fmt::Display) -> Response {
    status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string())
}

async fn read_json(resp: Response) -> Result<(StatusCode, Value), Response> {
    let code = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), BODY_LIMIT).await.map_err(|e| internal(&e))?;
    if body.is_empty() {
        return Ok((code, Value::Null));
    }
    let v = serde_json::from_slice(&body)
        .map_err(|e| internal(&format!("a handler's answer is not JSON: {e}")))?;
    Ok((code, v))
}

/// An object's `metadata.resourceVersion` as a number (0 when absent).
pub(crate) fn resource_version(o: &Value) -> u64 {
    o.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn list(
    inner: Router,
    target: &Target,
    selector: &Selector,
    table: Option<Include>,
    store_rv: Option<u64>,
) -> Response {
    let path = target.resource.collection_path(target.namespace.as_deref());
    let (code, mut body) = match get_json(&inner, &path).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    if !code.is_success() {
        return json_response(code, &body);
    }
    let mut items: Vec<Value> = match body.get_mut("items").map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    items.retain(|o| selector.matches(o));
    let rv = store_rv.unwrap_or_else(|| items.iter().map(resource_version).max().unwrap_or(0)).to_string();
    if let Some(include) = table {
        return json_response(StatusCode::OK, &table::table(target.resource, &items, &rv, include));
    }
    body["items"] = Value::Array(items);
    if store_rv.is_some() || body.get("metadata").and_then(|m| m.get("resourceVersion")).is_none() {
        body["metadata"] = serde_json::json!({ "resourceVersion": rv });
    }
    json_response(StatusCode::OK, &body)
}

async fn get_one(inner: Router, req: Request, target: &Target, table: Option<Include>) -> Response {
    let resp = forward(inner, req).await;
    let Some(include) = table.filter(|_| resp.status() == StatusCode::OK) else {
        return resp;
    };
    match read_json(resp).await {
        Ok((code, obj)) => {
            let rv = resource_version(&obj).to_string();
            json_response(code, &table::table(target.resource, &[obj], &rv, include))
        }
        Err(r) => r,
    }
}

/// `PATCH`: reads the object, applies the patch, replaces the object (the per-kind `PUT`).
async fn patch_object(inner: Router, req: Request, target: &Target) -> Response {
    let r = target.resource;
    if !r.serves("patch") {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("the node does not patch {} (verbs: {})", r.resource, r.verbs.join(", ")),
        );
    }
    let content_type =
        req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let body: Bytes = match axum::body::to_bytes(req.into_body(), BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return status_response(StatusCode::BAD_REQUEST, "BadRequest", &format!("patch body: {e}")),
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status_response(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("the patch body is not JSON: {e}"),
            )
        }
    };
    let (code, mut object) = match get_json(&inner, &path).await {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    if !code.is_success() {
        return json_response(code, &object);
    }
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "application/merge-patch+json" => patch::merge(&mut object, &parsed),
        "application/json-patch+json" => {
            if let Err(e) = patch::json_patch(&mut object, &parsed) {
                return status_response(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", &e.to_string());
            }
        }
        other => {
            return status_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: \
                     application/json-patch+json, application/merge-patch+json (got {other:?}; strategic merge \
                     patch is for Kubernetes' built-in types only)"
                ),
            )
        }
    }
    let put = match serde_json::to_vec(&object) {
        Ok(b) => b,
        Err(e) => return internal(&e),
    };
    let req = Request::builder()
        .method(Method::PUT)
        .uri(&path)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Body::from(put));
    match req {
        Ok(req) => forward(inner, req).await,
        Err(e) => internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_targets() {
        let t = Target::parse("/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm1").unwrap();
        assert_eq!(
            (t.resource.kind, t.namespace.as_deref(), t.name.as_deref()),
            ("VirtualMachine", Some("default"), Some("vm1"))
        );
        let t = Target::parse("/apis/kubevirt.io/v1/virtualmachineinstances").unwrap();
        assert_eq!((t.namespace, t.name), (None, None));
        let t = Target::parse("/api/v1/namespaces/lab").unwrap();
        assert_eq!((t.resource.kind, t.name.as_deref()), ("Namespace", Some("lab")));
        let t = Target::parse("/api/v1/namespaces/lab/events").unwrap();
        assert_eq!((t.resource.kind, t.namespace.as_deref()), ("Event", Some("lab")));
        let t = Target::parse("/apis/cdi.kubevirt.io/v1beta1/namespaces/d/datavolumes/x/status").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
        assert!(Target::parse("/apis/kubevirt.io/v2/virtualmachines").is_none());
        assert!(
            Target::parse("/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/start").is_none()
        );
    }

    #[test]
    fn queries_are_decoded() {
        let q = Query::parse(Some(
            "watch=1&labelSelector=app%3Dweb%2Ctier&fieldSelector=metadata.name%3Dx&resourceVersion=12",
        ));
        assert!(q.watch);
        assert_eq!(q.label_selector.as_deref(), Some("app=web,tier"));
        assert_eq!(q.field_selector.as_deref(), Some("metadata.name=x"));
        assert_eq!(q.resource_version.as_deref(), Some("12"));
    }
}

#[cfg(test)]
mod layer_tests;
