//! The node's HTTP API (docs/node-api.md): Kubernetes and KubeVirt REST paths over the
//! [`Lifecycle`], Kubernetes `Status` errors, the serial console as a websocket.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{json, Value};
use virt_core::api::{Causes as _, StatusCause};
use virt_core::lifecycle::{Lifecycle, LifecycleError, Propagation};
use virt_core::model::{self, KubeVirtObject};

use super::portforward;
use super::runtime::LauncherRuntime;

pub mod agent;
pub(crate) mod consoles;
mod migrations;
mod policies;

pub use consoles::KEEPALIVE;
use consoles::{vmi_console, vmi_vnc};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The lifecycle.
    pub lifecycle: Arc<Lifecycle>,
    /// The launchers (for consoles).
    pub runtime: Arc<LauncherRuntime>,
    /// The node's name (the `node` label of `/metrics`).
    pub node_name: Arc<str>,
    /// The `portforward` subresource's endpoints (the pod network's) and dialer.
    pub portforward: super::portforward::PortForwarding,
}

/// An error answered as a Kubernetes `Status`.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// The fields refused (`details.causes` of an `Invalid`).
    causes: Vec<StatusCause>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), causes: Vec::new() }
    }
    /// A 422 `Invalid` with one cause per refused field.
    pub(crate) fn invalid(message: impl Into<String>, causes: Vec<StatusCause>) -> Self {
        Self { causes, ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message) }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }
}

/// A Kubernetes `Status` response.
pub fn status_response(code: StatusCode, reason: &str, message: &str) -> Response {
    status_with_causes(code, reason, message, &[])
}

/// A Kubernetes `Status` response; `causes`, when there are any, go into `details.causes` (the
/// REST layer adds the object's kind and name).
pub fn status_with_causes(code: StatusCode, reason: &str, message: &str, causes: &[StatusCause]) -> Response {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    if !causes.is_empty() {
        body["details"] = json!({ "causes": causes });
    }
    (code, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        status_with_causes(self.code, self.reason, &self.message, &self.causes)
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let (code, reason) = match &e {
            LifecycleError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            LifecycleError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            LifecycleError::Invalid(i) => return Self::invalid(e.to_string(), i.causes.clone()),
            LifecycleError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            LifecycleError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        };
        Self::new(code, reason, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

/// Runs blocking lifecycle work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("handler: {e}"))
    })?
}

fn ok<T: serde::Serialize>(code: StatusCode, v: &T) -> ApiResult {
    let v = serde_json::to_value(v).map_err(|e| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("encoding: {e}"))
    })?;
    Ok((code, Json(v)).into_response())
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> ApiResult {
    ok(StatusCode::OK, &json!({ "apiVersion": api_version, "kind": kind, "metadata": {}, "items": items }))
}

/// Decodes a request body strictly (JSON, or YAML by content type): unknown fields are errors with
/// their path.
pub(crate) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<KubeVirtObject, ApiError> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the request body is not UTF-8"))?;
    let yaml = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"));
    let invalid = |e: virt_core::api::LoadError| ApiError::invalid(e.to_string(), e.causes());
    if yaml {
        let mut docs = model::load_yaml(text).map_err(invalid)?;
        if docs.len() != 1 {
            return Err(ApiError::bad_request(format!(
                "expected one object in the body, got {}",
                docs.len()
            )));
        }
        Ok(docs.remove(0).object)
    } else {
        Ok(model::load_json(text).map_err(invalid)?.object)
    }
}

fn wrong_kind(got: &KubeVirtObject, want: &str) -> ApiError {
    ApiError::bad_request(format!("the body is a {}, this path takes a {want}", got.kind()))
}

async fn version() -> ApiResult {
    ok(
        StatusCode::OK,
        &json!({
            "gitVersion": concat!("v", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "rust",
            "compiler": "rustc",
            "platform": format!("linux/{}", std::env::consts::ARCH),
        }),
    )
}

// ---- namespaces and events ----

async fn list_namespaces(State(s): State<ApiState>) -> ApiResult {
    list("NamespaceList", "v1", s.lifecycle.namespaces().list())
}

async fn create_namespace(State(s): State<ApiState>, body: Bytes) -> ApiResult {
    let (name, labels) = namespace_body(&body)?;
    let out = blocking(move || Ok(s.lifecycle.namespaces().create_with_labels(&name, labels)?)).await?;
    ok(StatusCode::CREATED, &out)
}

/// The name and labels in a Namespace body (JSON or YAML), which may hold nothing but a
/// Namespace's fields.
pub(crate) fn namespace_body(
    body: &[u8],
) -> Result<(String, std::collections::BTreeMap<String, String>), ApiError> {
    let v: Value = serde_json::from_slice(body)
        .or_else(|_| {
            std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|t| virt_core::api::parse_yaml(t).map_err(|e| e.to_string()))
                .and_then(
                    |mut d| if d.len() == 1 { Ok(d.remove(0)) } else { Err("expected one object".into()) },
                )
        })
        .map_err(|e| ApiError::bad_request(format!("namespace body: {e}")))?;
    if v.get("kind").and_then(Value::as_str) != Some("Namespace") {
        return Err(ApiError::bad_request("the body is not a Namespace"));
    }
    if let Some(k) = v.as_object().and_then(|o| {
        o.keys().find(|k| !["apiVersion", "kind", "metadata", "spec", "status"].contains(&k.as_str()))
    }) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{k}: unknown field"),
        ));
    }
    let labels = match v.pointer("/metadata/labels") {
        None | Some(Value::Null) => Default::default(),
        Some(l) => serde_json::from_value(l.clone()).map_err(|e| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", format!("metadata.labels: {e}"))
        })?,
    };
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    Ok((name, labels))
}

async fn get_namespace(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    let found = s
        .lifecycle
        .namespaces()
        .list()
        .into_iter()
        .find(|n| n.pointer("/metadata/name").and_then(Value::as_str) == Some(&ns));
    match found {
        Some(n) => ok(StatusCode::OK, &n),
        None => Err(LifecycleError::NotFound { resource: "namespaces", name: ns }.into()),
    }
}

async fn delete_namespace(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.namespaces().delete(&ns)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

async fn list_all_events(State(s): State<ApiState>) -> ApiResult {
    let items = s.lifecycle.events(None).iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    list("EventList", "v1", items)
}

async fn list_events(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    let items = s.lifecycle.events(Some(&ns)).iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
    list("EventList", "v1", items)
}

// ---- VirtualMachines ----

fn values<T: serde::Serialize>(v: Vec<T>) -> Vec<Value> {
    v.iter().filter_map(|x| serde_json::to_value(x).ok()).collect()
}

async fn list_all_vms(State(s): State<ApiState>) -> ApiResult {
    list("VirtualMachineList", model::API_VERSION, values(s.lifecycle.vms().list(None)))
}

async fn list_vms(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    if !s.lifecycle.namespaces().exists(&ns) {
        return Err(LifecycleError::NotFound { resource: "namespaces", name: ns }.into());
    }
    list("VirtualMachineList", model::API_VERSION, values(s.lifecycle.vms().list(Some(&ns))))
}

async fn create_vm(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let vm = match decode(&headers, &body)? {
        KubeVirtObject::VirtualMachine(vm) => *vm,
        other => return Err(wrong_kind(&other, "VirtualMachine")),
    };
    let out = blocking(move || Ok(s.lifecycle.vms().create(&ns, vm)?)).await?;
    ok(StatusCode::CREATED, &out)
}

async fn get_vm(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    ok(StatusCode::OK, &s.lifecycle.vms().get(&ns, &name)?)
}

async fn replace_vm(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let vm = match decode(&headers, &body)? {
        KubeVirtObject::VirtualMachine(vm) => *vm,
        other => return Err(wrong_kind(&other, "VirtualMachine")),
    };
    if vm.metadata.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(format!(
            "metadata.name {:?} does not match the name in the path ({name})",
            vm.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    let mut vm = vm;
    vm.metadata.name = Some(name);
    let out = blocking(move || Ok(s.lifecycle.vms().replace(&ns, vm)?)).await?;
    ok(StatusCode::OK, &out)
}

async fn delete_vm(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> ApiResult {
    let policy = propagation(query.as_deref(), &body)?;
    let out = blocking(move || Ok(s.lifecycle.vms().delete_with(&ns, &name, policy)?)).await?;
    ok(StatusCode::OK, &out)
}

/// The propagation policy of a deletion: `?propagationPolicy=` or the DeleteOptions body's
/// `propagationPolicy` (or its older `orphanDependents: true`); `None` when neither says.
pub(crate) fn propagation(query: Option<&str>, body: &[u8]) -> Result<Option<Propagation>, ApiError> {
    let from_query = query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == "propagationPolicy")
        .map(|(_, v)| v.to_string());
    if let Some(v) = from_query {
        return Ok(Some(Propagation::parse(&v, "propagationPolicy")?));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("DeleteOptions body: {e}")))?;
    match v.get("propagationPolicy") {
        Some(Value::String(p)) => Ok(Some(Propagation::parse(p, "propagationPolicy")?)),
        Some(Value::Null) | None => {
            Ok(v.get("orphanDependents").and_then(Value::as_bool).filter(|o| *o).map(|_| Propagation::Orphan))
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("propagationPolicy: {other} is not a string"),
        )),
    }
}

/// The grace period in a stop or restart body (`gracePeriod` of StopOptions, `gracePeriodSeconds`
/// of RestartOptions / DeleteOptions).
pub(crate) fn grace(body: &[u8]) -> Result<Option<i64>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("options body: {e}")))?;
    let g = v.get("gracePeriod").or_else(|| v.get("gracePeriodSeconds"));
    match g {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_i64().filter(|g| *g >= 0).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                format!("gracePeriod: {x} is not a number of seconds >= 0"),
            )
        }),
    }
}

fn accepted() -> ApiResult {
    Ok((StatusCode::ACCEPTED, "").into_response())
}

async fn vm_start(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vms().start(&ns, &name)?)).await?;
    accepted()
}

async fn vm_stop(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let g = grace(&body)?;
    blocking(move || Ok(s.lifecycle.vms().stop(&ns, &name, g)?)).await?;
    accepted()
}

async fn vm_restart(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let g = grace(&body)?;
    blocking(move || Ok(s.lifecycle.vms().restart(&ns, &name, g)?)).await?;
    accepted()
}

// ---- VirtualMachineInstances ----

async fn list_all_vmis(State(s): State<ApiState>) -> ApiResult {
    list("VirtualMachineInstanceList", model::API_VERSION, values(s.lifecycle.vmis().list(None)))
}

async fn list_vmis(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    if !s.lifecycle.namespaces().exists(&ns) {
        return Err(LifecycleError::NotFound { resource: "namespaces", name: ns }.into());
    }
    list("VirtualMachineInstanceList", model::API_VERSION, values(s.lifecycle.vmis().list(Some(&ns))))
}

async fn create_vmi(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let vmi = match decode(&headers, &body)? {
        KubeVirtObject::VirtualMachineInstance(v) => *v,
        other => return Err(wrong_kind(&other, "VirtualMachineInstance")),
    };
    let out = blocking(move || Ok(s.lifecycle.vmis().create(&ns, vmi)?)).await?;
    ok(StatusCode::CREATED, &out)
}

async fn get_vmi(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    ok(StatusCode::OK, &s.lifecycle.vmis().get(&ns, &name)?)
}

async fn delete_vmi(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let g = grace(&body)?;
    blocking(move || Ok(s.lifecycle.vmis().delete(&ns, &name, g)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

async fn vmi_pause(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vmis().pause(&ns, &name)?)).await?;
    accepted()
}

async fn vmi_unpause(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vmis().unpause(&ns, &name)?)).await?;
    accepted()
}

async fn vmi_softreboot(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.vmis().soft_reboot(&ns, &name)?)).await?;
    accepted()
}

// ---- instancetypes and preferences ----

/// The kind behind a plural in an `instancetype.kubevirt.io` path, and whether it is namespaced.
fn catalog_kind(plural: &str) -> Result<(&'static str, bool), ApiError> {
    virt_core::lifecycle::CATALOG_KINDS
        .iter()
        .find(|(_, p, _)| *p == plural)
        .map(|(k, _, n)| (*k, *n))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find the resource {plural}"),
            )
        })
}

fn scope(plural: &str, namespace: Option<&str>) -> Result<&'static str, ApiError> {
    let (kind, namespaced) = catalog_kind(plural)?;
    match (namespaced, namespace) {
        (false, Some(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("{plural} are cluster-scoped")))
        }
        _ => Ok(kind),
    }
}

async fn list_catalog(State(s): State<ApiState>, Path(plural): Path<String>) -> ApiResult {
    let kind = scope(&plural, None)?;
    list(&format!("{kind}List"), "instancetype.kubevirt.io/v1beta1", s.lifecycle.catalog().list(kind, None))
}

async fn list_catalog_ns(State(s): State<ApiState>, Path((ns, plural)): Path<(String, String)>) -> ApiResult {
    let kind = scope(&plural, Some(&ns))?;
    list(
        &format!("{kind}List"),
        "instancetype.kubevirt.io/v1beta1",
        s.lifecycle.catalog().list(kind, Some(&ns)),
    )
}

async fn put_catalog(
    s: ApiState,
    ns: Option<String>,
    plural: String,
    name: Option<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let kind = scope(&plural, ns.as_deref())?;
    let object = decode(&headers, &body)?;
    if object.kind() != kind {
        return Err(wrong_kind(&object, kind));
    }
    if let (Some(n), Some(m)) = (&name, object.metadata().and_then(|m| m.name.as_deref())) {
        if n != m {
            return Err(ApiError::bad_request(format!(
                "metadata.name {m:?} does not match the name in the path ({n})"
            )));
        }
    }
    let replace = name.is_some();
    let out = blocking(move || Ok(s.lifecycle.catalog().put(ns.as_deref(), object, replace)?)).await?;
    ok(if replace { StatusCode::OK } else { StatusCode::CREATED }, &out)
}

async fn create_catalog(
    State(s): State<ApiState>,
    Path(plural): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    put_catalog(s, None, plural, None, headers, body).await
}

async fn create_catalog_ns(
    State(s): State<ApiState>,
    Path((ns, plural)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    put_catalog(s, Some(ns), plural, None, headers, body).await
}

async fn replace_catalog(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    put_catalog(s, None, plural, Some(name), headers, body).await
}

async fn replace_catalog_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    put_catalog(s, Some(ns), plural, Some(name), headers, body).await
}

async fn get_catalog(State(s): State<ApiState>, Path((plural, name)): Path<(String, String)>) -> ApiResult {
    let kind = scope(&plural, None)?;
    ok(StatusCode::OK, &s.lifecycle.catalog().get(kind, None, &name)?)
}

async fn get_catalog_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> ApiResult {
    let kind = scope(&plural, Some(&ns))?;
    ok(StatusCode::OK, &s.lifecycle.catalog().get(kind, Some(&ns), &name)?)
}

async fn delete_catalog(
    State(s): State<ApiState>,
    Path((plural, name)): Path<(String, String)>,
) -> ApiResult {
    let kind = scope(&plural, None)?;
    blocking(move || Ok(s.lifecycle.catalog().delete(kind, None, &name)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

async fn delete_catalog_ns(
    State(s): State<ApiState>,
    Path((ns, plural, name)): Path<(String, String, String)>,
) -> ApiResult {
    let kind = scope(&plural, Some(&ns))?;
    blocking(move || Ok(s.lifecycle.catalog().delete(kind, Some(&ns), &name)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// `/metrics`: KubeVirt's metrics in Prometheus text format (see [`super::metrics`]).
async fn metrics(State(s): State<ApiState>) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let vmis = s.lifecycle.vmis().list(None);
        let migrations = s.lifecycle.migrations().list(None);
        super::metrics::render(&s.node_name, &vmis, &migrations, |vmi| {
            let mut st =
                super::metrics::launcher_pid(&s.runtime.run_dir(vmi)).and_then(super::metrics::proc_stats)?;
            st.net = s.runtime.guest_net_stats(vmi);
            Some(st)
        })
    })
    .await
    .unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    const KV: &str = "/apis/kubevirt.io/v1";
    const SUB: &str = "/apis/subresources.kubevirt.io/v1";
    const IT: &str = "/apis/instancetype.kubevirt.io/v1beta1";
    Router::new()
        .route(&format!("{IT}/{{plural}}"), get(list_catalog).post(create_catalog))
        .route(
            &format!("{IT}/{{plural}}/{{name}}"),
            get(get_catalog).put(replace_catalog).delete(delete_catalog),
        )
        .route(&format!("{IT}/namespaces/{{ns}}/{{plural}}"), get(list_catalog_ns).post(create_catalog_ns))
        .route(
            &format!("{IT}/namespaces/{{ns}}/{{plural}}/{{name}}"),
            get(get_catalog_ns).put(replace_catalog_ns).delete(delete_catalog_ns),
        )
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .route(&format!("{SUB}/version"), get(version))
        .route("/api/v1/namespaces", get(list_namespaces).post(create_namespace))
        .route("/api/v1/namespaces/{ns}", get(get_namespace).delete(delete_namespace))
        .route("/api/v1/namespaces/{ns}/events", get(list_events))
        .route("/api/v1/events", get(list_all_events))
        .route(&format!("{KV}/virtualmachines"), get(list_all_vms))
        .route(&format!("{KV}/namespaces/{{ns}}/virtualmachines"), get(list_vms).post(create_vm))
        .route(
            &format!("{KV}/namespaces/{{ns}}/virtualmachines/{{name}}"),
            get(get_vm).put(replace_vm).delete(delete_vm),
        )
        .route(&format!("{KV}/virtualmachineinstances"), get(list_all_vmis))
        .route(&format!("{KV}/namespaces/{{ns}}/virtualmachineinstances"), get(list_vmis).post(create_vmi))
        .route(
            &format!("{KV}/namespaces/{{ns}}/virtualmachineinstances/{{name}}"),
            get(get_vmi).delete(delete_vmi),
        )
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachines/{{name}}/start"), put(vm_start))
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachines/{{name}}/stop"), put(vm_stop))
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachines/{{name}}/restart"), put(vm_restart))
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/pause"), put(vmi_pause))
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/unpause"), put(vmi_unpause))
        .route(
            &format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/softreboot"),
            put(vmi_softreboot),
        )
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/console"), get(vmi_console))
        .route(&format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/vnc"), get(vmi_vnc))
        .merge(agent::routes(SUB))
        .merge(migrations::routes(KV))
        .merge(policies::routes())
        .route(
            &format!("{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/portforward/{{port}}"),
            get(portforward::vmi_port),
        )
        .route(
            &format!(
                "{SUB}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/portforward/{{port}}/{{protocol}}"
            ),
            get(portforward::vmi_port_protocol),
        )
        .route(
            &format!("{SUB}/namespaces/{{ns}}/virtualmachines/{{name}}/portforward/{{port}}"),
            get(portforward::vm_port),
        )
        .route(
            &format!("{SUB}/namespaces/{{ns}}/virtualmachines/{{name}}/portforward/{{port}}/{{protocol}}"),
            get(portforward::vm_port_protocol),
        )
        .fallback(|| async {
            status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(state)
}

/// Constant-time comparison of a bearer token.
fn token_matches(got: &[u8], want: &[u8]) -> bool {
    if got.len() != want.len() {
        return false;
    }
    got.iter().zip(want).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// The routes behind a bearer-token check (the TCP listener): no token, no access.
pub fn router_with_token(state: ApiState, token: Arc<String>) -> Router {
    with_token(router(state), token)
}

/// `routes` behind the bearer-token check of [`router_with_token`].
pub fn with_token(routes: Router, token: Arc<String>) -> Router {
    routes.layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: Next| {
        let token = token.clone();
        async move {
            let got = req
                .headers()
                .get(axum::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match got {
                Some(t) if token_matches(t.as_bytes(), token.as_bytes()) => next.run(req).await,
                _ => status_response(
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "a bearer token is required (Authorization: Bearer <token>)",
                ),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn tokens_compare_exactly() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }
}
