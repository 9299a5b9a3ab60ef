//! Core `v1` Secrets and ConfigMaps on the node: kept in the node's one store (kinds `Secret` and
//! `ConfigMap`, so watches and resourceVersions work as for every other kind) and served at
//! Kubernetes' paths (`/api/v1/namespaces/{ns}/secrets`, `.../configmaps`: list, create, get,
//! replace, delete; PATCH through the Kubernetes layer). What reads them: the launcher runtime
//! (`accessCredentials` SSH keys, cloud-init `secretRef` / `networkDataSecretRef`) and CDI
//! (`secretRef` credentials, `certConfigMap` CA bundles).
//!
//! Writes are checked as the API server checks them: names, data keys (`[-._a-zA-Z0-9]+`),
//! base64 values, `stringData` folded into `data`, at most 1 MiB of data, `immutable` objects
//! keep their data. Secrets are not readable with the `view` role (node::auth).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use virt_core::api::Timestamp;
use virt_core::lifecycle::{Key, Lifecycle, StoreError};

use super::api::status_response;
use super::store::RedbStore;

/// The most data one object may hold (the Kubernetes limit of a Secret or ConfigMap).
pub const MAX_DATA_BYTES: usize = 1 << 20;

/// The two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreKind {
    /// `v1` Secret: `data` base64, `stringData` on writes, `type`.
    Secret,
    /// `v1` ConfigMap: `data` strings, `binaryData` base64.
    ConfigMap,
}

impl CoreKind {
    /// The kind's name (also its key in the store).
    pub fn name(self) -> &'static str {
        match self {
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Self::Secret => "secrets",
            Self::ConfigMap => "configmaps",
        }
    }
}

/// What went wrong with a request; answered as a Kubernetes `Status`.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// No such object.
    #[error("{plural} {name:?} not found")]
    NotFound {
        /// `secrets` or `configmaps`.
        plural: &'static str,
        /// The object's name.
        name: String,
    },
    /// The namespace does not exist.
    #[error("namespaces {0:?} not found")]
    NoNamespace(String),
    /// Create of an existing object.
    #[error("{plural} {name:?} already exists")]
    AlreadyExists {
        /// `secrets` or `configmaps`.
        plural: &'static str,
        /// The object's name.
        name: String,
    },
    /// A body the API server would refuse; names the field.
    #[error("{0}")]
    Invalid(String),
    /// A body that is not an object of the kind.
    #[error("{0}")]
    BadRequest(String),
    /// A replace with a stale resourceVersion, or of an immutable object's data.
    #[error("{0}")]
    Conflict(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for CoreError {
    fn into_response(self) -> Response {
        let (code, reason) = match &self {
            Self::NotFound { .. } | Self::NoNamespace(_) => (StatusCode::NOT_FOUND, "NotFound"),
            Self::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            Self::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            Self::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        status_response(code, reason, &self.to_string())
    }
}

/// A request body: exactly these fields (unknown fields are refused, as strict field validation does).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Body {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(rename = "type")]
    type_: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, String>,
    #[serde(default)]
    string_data: BTreeMap<String, String>,
    #[serde(default)]
    binary_data: BTreeMap<String, String>,
    immutable: Option<bool>,
}

/// The metadata fields a client may set (the rest is the server's).
const CLIENT_META: &[&str] =
    &["name", "namespace", "labels", "annotations", "resourceVersion", "uid", "creationTimestamp"];

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Reads and checks a body for `kind` in `ns` (named `path_name` when the path names it); returns
/// the object to store (without server metadata) and the resourceVersion the client sent.
fn normalize(
    kind: CoreKind,
    ns: &str,
    path_name: Option<&str>,
    body: &Value,
) -> Result<(Value, Option<String>), CoreError> {
    let b: Body = serde_json::from_value(body.clone())
        .map_err(|e| CoreError::BadRequest(format!("{} body: {e}", kind.name())))?;
    if b.api_version.as_deref().is_some_and(|a| a != "v1")
        || b.kind.as_deref().is_some_and(|k| k != kind.name())
    {
        return Err(CoreError::BadRequest(format!(
            "the body is a {:?} {:?}, this path takes a v1 {}",
            b.api_version.unwrap_or_default(),
            b.kind.unwrap_or_default(),
            kind.name()
        )));
    }
    for k in b.metadata.keys() {
        if !CLIENT_META.contains(&k.as_str()) {
            return Err(CoreError::Invalid(format!("metadata.{k}: not supported on this node")));
        }
    }
    let name = b.metadata.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    if !is_dns_subdomain(&name) {
        return Err(CoreError::Invalid(format!(
            "metadata.name: {name:?} is not a valid name (a DNS subdomain: lower-case letters, digits, '-' and '.')"
        )));
    }
    if let Some(p) = path_name.filter(|p| *p != name) {
        return Err(CoreError::BadRequest(format!(
            "metadata.name {name:?} does not match the name in the path ({p})"
        )));
    }
    if let Some(m) = b.metadata.get("namespace").and_then(Value::as_str).filter(|m| *m != ns) {
        return Err(CoreError::BadRequest(format!(
            "metadata.namespace {m:?} does not match the namespace in the path ({ns})"
        )));
    }
    let mut size = 0usize;
    let mut data = Map::new();
    let (data_field, b64) = match kind {
        CoreKind::Secret => ("data", true),
        CoreKind::ConfigMap => ("data", false),
    };
    for (k, v) in &b.data {
        if !is_data_key(k) {
            return Err(CoreError::Invalid(format!(
                "{data_field}[{k:?}]: a key must consist of alphanumeric characters, '-', '_' or '.'"
            )));
        }
        size += if b64 {
            let bytes = STANDARD
                .decode(v.as_bytes())
                .map_err(|e| CoreError::Invalid(format!("{data_field}[{k:?}]: not valid base64: {e}")))?;
            bytes.len()
        } else {
            v.len()
        };
        data.insert(k.clone(), Value::String(v.clone()));
    }
    let mut binary = Map::new();
    match kind {
        CoreKind::Secret => {
            if !b.binary_data.is_empty() {
                return Err(CoreError::BadRequest("binaryData: Secrets carry data and stringData".into()));
            }
            // stringData is write-only: folded into data, overriding the same key.
            for (k, v) in &b.string_data {
                if !is_data_key(k) {
                    return Err(CoreError::Invalid(format!(
                        "stringData[{k:?}]: a key must consist of alphanumeric characters, '-', '_' or '.'"
                    )));
                }
                size += v.len();
                data.insert(k.clone(), Value::String(STANDARD.encode(v.as_bytes())));
            }
        }
        CoreKind::ConfigMap => {
            if !b.string_data.is_empty() || b.type_.is_some() {
                return Err(CoreError::BadRequest("stringData and type are fields of Secrets".into()));
            }
            for (k, v) in &b.binary_data {
                if !is_data_key(k) || b.data.contains_key(k) {
                    return Err(CoreError::Invalid(format!(
                        "binaryData[{k:?}]: a valid key not also in data is required"
                    )));
                }
                let bytes = STANDARD
                    .decode(v.as_bytes())
                    .map_err(|e| CoreError::Invalid(format!("binaryData[{k:?}]: not valid base64: {e}")))?;
                size += bytes.len();
                binary.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    if size > MAX_DATA_BYTES {
        return Err(CoreError::Invalid(format!(
            "data: {size} bytes: a {} holds at most {MAX_DATA_BYTES} bytes",
            kind.name()
        )));
    }
    let mut meta = Map::new();
    meta.insert("name".into(), name.into());
    meta.insert("namespace".into(), ns.into());
    for f in ["labels", "annotations"] {
        if let Some(v) = b.metadata.get(f) {
            let ok = v.as_object().is_some_and(|m| m.values().all(Value::is_string));
            if !ok {
                return Err(CoreError::Invalid(format!("metadata.{f}: a map of strings is required")));
            }
            meta.insert(f.into(), v.clone());
        }
    }
    let mut obj = json!({ "apiVersion": "v1", "kind": kind.name(), "metadata": meta });
    if kind == CoreKind::Secret {
        obj["type"] = b.type_.unwrap_or_else(|| "Opaque".into()).into();
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    if !binary.is_empty() {
        obj["binaryData"] = Value::Object(binary);
    }
    if let Some(i) = b.immutable {
        obj["immutable"] = i.into();
    }
    let rv = b.metadata.get("resourceVersion").and_then(Value::as_str).map(str::to_string);
    Ok((obj, rv))
}

/// Secrets and ConfigMaps in the node's store.
pub struct CoreObjects {
    store: Arc<RedbStore>,
    lifecycle: Arc<Lifecycle>,
    /// One writer at a time (create-if-absent and replace-if-unchanged are read-then-write).
    write: std::sync::Mutex<()>,
}

impl CoreObjects {
    /// Over the node's store; namespaces come from `lifecycle`.
    pub fn new(store: Arc<RedbStore>, lifecycle: Arc<Lifecycle>) -> Self {
        Self { store, lifecycle, write: std::sync::Mutex::new(()) }
    }

    /// Every object of `kind` (in `ns`, or everywhere).
    pub fn list(&self, kind: CoreKind, ns: Option<&str>) -> Result<Vec<Value>, CoreError> {
        let mut out = Vec::new();
        for (_, key, bytes) in self.store.load_kinds(&[kind.name()])? {
            if ns.is_some_and(|n| n != key.namespace) {
                continue;
            }
            match serde_json::from_slice(&bytes) {
                Ok(v) => out.push(v),
                Err(e) => log::error!("state store: {} {key} is not valid JSON, skipped: {e}", kind.name()),
            }
        }
        Ok(out)
    }

    /// One object.
    pub fn get(&self, kind: CoreKind, ns: &str, name: &str) -> Result<Value, CoreError> {
        self.store
            .get_object(kind.name(), &Key::new(ns, name))?
            .ok_or_else(|| CoreError::NotFound { plural: kind.plural(), name: name.into() })
    }

    /// Creates (`path_name` `None`) or replaces an object from a request body.
    pub fn put(
        &self,
        kind: CoreKind,
        ns: &str,
        path_name: Option<&str>,
        body: &Value,
    ) -> Result<Value, CoreError> {
        if !self.lifecycle.namespaces().exists(ns) {
            return Err(CoreError::NoNamespace(ns.into()));
        }
        let (mut obj, sent_rv) = normalize(kind, ns, path_name, body)?;
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let key = Key::new(ns, &name);
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.store.get_object(kind.name(), &key)?;
        match (&old, path_name) {
            (Some(_), None) => return Err(CoreError::AlreadyExists { plural: kind.plural(), name }),
            (None, Some(_)) => return Err(CoreError::NotFound { plural: kind.plural(), name }),
            _ => {}
        }
        if let Some(old) = &old {
            let old_rv = old["metadata"]["resourceVersion"].as_str().unwrap_or_default();
            if sent_rv.as_deref().is_some_and(|rv| rv != old_rv) {
                return Err(CoreError::Conflict(format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                    kind.plural()
                )));
            }
            if old["immutable"] == true
                && (old["data"] != obj["data"]
                    || old["binaryData"] != obj["binaryData"]
                    || obj["immutable"] != true)
            {
                return Err(CoreError::Invalid(format!(
                    "data: Forbidden: field is immutable when `immutable` is set ({} {ns}/{name})",
                    kind.name()
                )));
            }
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
        } else {
            obj["metadata"]["uid"] = virt_core::api::new_uid().into();
            obj["metadata"]["creationTimestamp"] = Timestamp::now().as_str().into();
        }
        let rv = self.store.put_object(kind.name(), &key, obj.clone())?;
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        Ok(obj)
    }

    /// Deletes an object.
    pub fn delete(&self, kind: CoreKind, ns: &str, name: &str) -> Result<Value, CoreError> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.get(kind, ns, name)?;
        self.store.delete_object(kind.name(), &Key::new(ns, name))?;
        Ok(old)
    }

    /// A Secret's data, decoded (`None` when it does not exist or cannot be read).
    pub fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let v = self.get(CoreKind::Secret, ns, name).ok()?;
        let data = v["data"].as_object().cloned().unwrap_or_default();
        Some(
            data.into_iter()
                .filter_map(|(k, v)| Some((k, STANDARD.decode(v.as_str()?.as_bytes()).ok()?)))
                .collect(),
        )
    }

    /// A ConfigMap's `data` (`None` when it does not exist).
    pub fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let v = self.get(CoreKind::ConfigMap, ns, name).ok()?;
        let data = v["data"].as_object().cloned().unwrap_or_default();
        Some(data.into_iter().filter_map(|(k, v)| Some((k, v.as_str()?.to_string()))).collect())
    }
}

type Answer = Result<Response, CoreError>;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CoreError> + Send + 'static,
) -> Result<T, CoreError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| CoreError::Store(StoreError(format!("handler: {e}"))))?
}

fn body_value(headers: &HeaderMap, body: &[u8]) -> Result<Value, CoreError> {
    let yaml = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains("yaml"));
    let text = std::str::from_utf8(body)
        .map_err(|_| CoreError::BadRequest("the request body is not UTF-8".into()))?;
    let mut v = if yaml {
        let mut docs = virt_core::api::parse_yaml(text).map_err(|e| CoreError::BadRequest(e.to_string()))?;
        if docs.len() != 1 {
            return Err(CoreError::BadRequest(format!(
                "expected one object in the body, got {}",
                docs.len()
            )));
        }
        docs.remove(0)
    } else {
        virt_core::api::parse_json(text).map_err(|e| CoreError::BadRequest(e.to_string()))?
    };
    virt_core::api::prune_nulls(&mut v);
    Ok(v)
}

#[derive(Clone)]
struct St {
    objects: Arc<CoreObjects>,
    kind: CoreKind,
}

async fn list_all(State(s): State<St>) -> Answer {
    let items = blocking(move || s.objects.list(s.kind, None)).await?;
    Ok(list_response(s.kind, items))
}

fn list_response(kind: CoreKind, items: Vec<Value>) -> Response {
    let body =
        json!({"apiVersion": "v1", "kind": format!("{}List", kind.name()), "metadata": {}, "items": items});
    (StatusCode::OK, Json(body)).into_response()
}

async fn list_ns(State(s): State<St>, Path(ns): Path<String>) -> Answer {
    if !s.objects.lifecycle.namespaces().exists(&ns) {
        return Err(CoreError::NoNamespace(ns));
    }
    let items = blocking(move || s.objects.list(s.kind, Some(&ns))).await?;
    Ok(list_response(s.kind, items))
}

async fn create(State(s): State<St>, Path(ns): Path<String>, headers: HeaderMap, body: Bytes) -> Answer {
    let v = body_value(&headers, &body)?;
    let made = blocking(move || s.objects.put(s.kind, &ns, None, &v)).await?;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

async fn get_one(State(s): State<St>, Path((ns, name)): Path<(String, String)>) -> Answer {
    let v = blocking(move || s.objects.get(s.kind, &ns, &name)).await?;
    Ok((StatusCode::OK, Json(v)).into_response())
}

async fn replace(
    State(s): State<St>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let v = body_value(&headers, &body)?;
    let out = blocking(move || s.objects.put(s.kind, &ns, Some(&name), &v)).await?;
    Ok((StatusCode::OK, Json(out)).into_response())
}

async fn delete_one(State(s): State<St>, Path((ns, name)): Path<(String, String)>) -> Answer {
    let old = blocking(move || s.objects.delete(s.kind, &ns, &name)).await?;
    Ok((StatusCode::OK, Json(old)).into_response())
}

/// The routes of both kinds, to merge into the node's API router.
pub fn router(objects: Arc<CoreObjects>) -> Router {
    let mut r = Router::new();
    for kind in [CoreKind::Secret, CoreKind::ConfigMap] {
        let p = kind.plural();
        let st = St { objects: objects.clone(), kind };
        let routes = Router::new()
            .route(&format!("/api/v1/{p}"), get(list_all))
            .route(&format!("/api/v1/namespaces/{{ns}}/{p}"), get(list_ns).post(create))
            .route(
                &format!("/api/v1/namespaces/{{ns}}/{p}/{{name}}"),
                get(get_one).put(replace).delete(delete_one),
            )
            .with_state(st);
        r = r.merge(routes);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(kind: CoreKind, v: Value) -> Result<Value, String> {
        normalize(kind, "default", None, &v).map(|(o, _)| o).map_err(|e| e.to_string())
    }

    #[test]
    fn string_data_is_folded_into_data() {
        let o = norm(
            CoreKind::Secret,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "k"},
                   "data": {"a": "eA=="}, "stringData": {"key1": "ssh-ed25519 AAAA x"}}),
        )
        .unwrap();
        assert_eq!(o["type"], "Opaque");
        assert_eq!(o["data"]["a"], "eA==");
        assert_eq!(o["data"]["key1"], STANDARD.encode("ssh-ed25519 AAAA x"));
        assert!(o.get("stringData").is_none());
    }

    #[test]
    fn bad_bodies_name_the_field() {
        let cases = [
            (
                CoreKind::Secret,
                json!({"metadata": {"name": "Bad"}}),
                "metadata.name: \"Bad\" is not a valid name",
            ),
            (
                CoreKind::Secret,
                json!({"metadata": {"name": "k"}, "data": {"a": "!!"}}),
                "data[\"a\"]: not valid base64",
            ),
            (
                CoreKind::Secret,
                json!({"metadata": {"name": "k"}, "data": {"a/b": ""}}),
                "data[\"a/b\"]: a key must",
            ),
            (CoreKind::Secret, json!({"metadata": {"name": "k"}, "dta": {}}), "unknown field `dta`"),
            (
                CoreKind::Secret,
                json!({"kind": "ConfigMap", "metadata": {"name": "k"}}),
                "this path takes a v1 Secret",
            ),
            (
                CoreKind::ConfigMap,
                json!({"metadata": {"name": "k"}, "stringData": {"a": "b"}}),
                "fields of Secrets",
            ),
            (
                CoreKind::ConfigMap,
                json!({"metadata": {"name": "k"}, "data": {"a": "x".repeat(MAX_DATA_BYTES + 1)}}),
                "holds at most 1048576 bytes",
            ),
            (
                CoreKind::ConfigMap,
                json!({"metadata": {"name": "k", "finalizers": []}}),
                "metadata.finalizers",
            ),
        ];
        for (kind, body, want) in cases {
            let e = norm(kind, body.clone()).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
