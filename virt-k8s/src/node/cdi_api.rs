//! CDI's REST paths on the node (docs/node-api.md): DataVolumes, DataSources and DataImportCrons
//! (`cdi.kubevirt.io/v1beta1`, namespaced: list, create, get, delete), StorageProfiles and the
//! CDIConfig (read-only), UploadTokenRequests (`upload.cdi.kubevirt.io/v1beta1`), and
//! VolumeSnapshots (`snapshot.storage.k8s.io/v1`: list, create, get, delete). Errors are
//! Kubernetes `Status` objects, as on the rest of the node's API; bodies are read strictly.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use virt_core::api::{Causes as _, Decoder, LoadError, LoadOptions, ObjectMeta, StatusCause, Timestamp};
use virt_core::lifecycle::Lifecycle;
use virt_core::model::VmiPhase;
use virt_storage::cdi::{self, CdiObject, VolumeSnapshot, API_VERSION, SNAPSHOT_API_VERSION};

use super::api::status_with_causes;
use super::cdi::{Cdi, CdiError, CdiKind, STORAGE_CLASS};

/// The CDI group's path prefix.
pub const CDI_PREFIX: &str = "/apis/cdi.kubevirt.io/v1beta1";
/// The VolumeSnapshot group's path prefix.
pub const SNAPSHOT_PREFIX: &str = "/apis/snapshot.storage.k8s.io/v1";
/// The upload group's path prefix.
pub const UPLOAD_PREFIX: &str = "/apis/upload.cdi.kubevirt.io/v1beta1";
/// `apiVersion` of UploadTokenRequests.
pub const UPLOAD_API_VERSION: &str = "upload.cdi.kubevirt.io/v1beta1";

/// What the CDI handlers share.
#[derive(Clone)]
pub struct CdiApiState {
    /// The CDI controller.
    pub cdi: Arc<Cdi>,
    /// The lifecycle (namespaces; VMIs using a DataVolume).
    pub lifecycle: Arc<Lifecycle>,
}

/// An error answered as a Kubernetes `Status`.
#[derive(Debug)]
pub(crate) struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
    /// The fields refused (`details.causes` of an `Invalid`).
    causes: Vec<StatusCause>,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into(), causes: Vec::new() }
    }
    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
    }
    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        status_with_causes(self.code, self.reason, &self.message, &self.causes)
    }
}

impl From<CdiError> for Failure {
    fn from(e: CdiError) -> Self {
        let (code, reason) = match &e {
            CdiError::NotFound { .. } => (StatusCode::NOT_FOUND, "NotFound"),
            CdiError::AlreadyExists { .. } => (StatusCode::CONFLICT, "AlreadyExists"),
            CdiError::Invalid(i) => {
                let causes = i.causes.clone();
                return Self { causes, ..Self::invalid(e.to_string()) };
            }
            CdiError::Template { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "Invalid"),
            CdiError::Conflict(_) => (StatusCode::CONFLICT, "Conflict"),
            CdiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            CdiError::Store { .. } | CdiError::Io { .. } | CdiError::Volume(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        };
        Self::new(code, reason, e.to_string())
    }
}

type Answer = Result<Response, Failure>;

/// Runs blocking work (store writes, volume files) off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Failure::internal(format!("handler: {e}")))?
}

fn ok<T: serde::Serialize>(code: StatusCode, v: &T) -> Answer {
    let v = serde_json::to_value(v).map_err(|e| Failure::internal(format!("encoding: {e}")))?;
    Ok((code, Json(v)).into_response())
}

fn list(kind: &str, items: Vec<Value>) -> Answer {
    ok(StatusCode::OK, &json!({ "apiVersion": API_VERSION, "kind": kind, "metadata": {}, "items": items }))
}

fn no_such_resource() -> Failure {
    Failure::not_found("the server could not find the requested resource")
}

fn kind_of(resource: &str) -> Result<CdiKind, Failure> {
    CdiKind::from_plural(resource).filter(|k| k.is_cdi()).ok_or_else(no_such_resource)
}

fn require_namespace(s: &CdiApiState, ns: &str) -> Result<(), Failure> {
    if s.lifecycle.namespaces().exists(ns) {
        Ok(())
    } else {
        Err(Failure::not_found(format!("namespaces \"{ns}\" not found")))
    }
}

fn yaml_body(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

fn utf8(body: &[u8]) -> Result<&str, Failure> {
    std::str::from_utf8(body).map_err(|_| Failure::bad_request("the request body is not UTF-8"))
}

/// Decodes a CDI object strictly (JSON, or YAML by content type): unknown fields are 422s naming
/// their path.
pub(crate) fn decode(headers: &HeaderMap, body: &[u8]) -> Result<CdiObject, Failure> {
    let text = utf8(body)?;
    let invalid = |e: LoadError| Failure { causes: e.causes(), ..Failure::invalid(e.to_string()) };
    if yaml_body(headers) {
        let mut docs = cdi::load_yaml(text).map_err(invalid)?;
        if docs.len() != 1 {
            return Err(Failure::bad_request(format!("expected one object in the body, got {}", docs.len())));
        }
        Ok(docs.remove(0).object)
    } else {
        Ok(cdi::load_json(text).map_err(invalid)?.object)
    }
}

/// `GET /apis/cdi.kubevirt.io/v1beta1/{resource}`: a kind across namespaces, the StorageProfiles,
/// or the CDIConfigs.
async fn list_cluster(State(s): State<CdiApiState>, Path(resource): Path<String>) -> Answer {
    match resource.as_str() {
        "storageprofiles" => list(
            "StorageProfileList",
            vec![serde_json::to_value(s.cdi.storage_profile())
                .map_err(|e| Failure::internal(format!("encoding: {e}")))?],
        ),
        "cdiconfigs" => list("CDIConfigList", vec![cdi_config(&s.cdi)]),
        other => {
            let kind = kind_of(other)?;
            list(&format!("{}List", kind.name()), s.cdi.list(kind, None))
        }
    }
}

fn cdi_config(cdi: &Cdi) -> Value {
    json!({
        "apiVersion": API_VERSION,
        "kind": "CDIConfig",
        "metadata": { "name": "config" },
        "spec": {},
        "status": {
            "uploadProxyURL": cdi.upload_url(),
            "scratchSpaceStorageClass": STORAGE_CLASS,
        },
    })
}

/// `GET /apis/cdi.kubevirt.io/v1beta1/{storageprofiles|cdiconfigs}/{name}`.
async fn get_cluster(State(s): State<CdiApiState>, Path((resource, name)): Path<(String, String)>) -> Answer {
    match resource.as_str() {
        "storageprofiles" if name == STORAGE_CLASS => ok(StatusCode::OK, &s.cdi.storage_profile()),
        "storageprofiles" => {
            Err(Failure::not_found(format!("storageprofiles.cdi.kubevirt.io \"{name}\" not found")))
        }
        "cdiconfigs" if name == "config" => ok(StatusCode::OK, &cdi_config(&s.cdi)),
        "cdiconfigs" => Err(Failure::not_found(format!("cdiconfigs.cdi.kubevirt.io \"{name}\" not found"))),
        _ => Err(no_such_resource()),
    }
}

async fn list_ns(State(s): State<CdiApiState>, Path((ns, resource)): Path<(String, String)>) -> Answer {
    let kind = kind_of(&resource)?;
    require_namespace(&s, &ns)?;
    list(&format!("{}List", kind.name()), s.cdi.list(kind, Some(&ns)))
}

async fn create(
    State(s): State<CdiApiState>,
    Path((ns, resource)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let kind = kind_of(&resource)?;
    require_namespace(&s, &ns)?;
    let object = decode(&headers, &body)?;
    if object.kind() != kind.name() {
        return Err(Failure::bad_request(format!(
            "the body is a {}, this path takes a {}",
            object.kind(),
            kind.name()
        )));
    }
    let cdi = s.cdi.clone();
    let out = blocking(move || {
        let v = match object {
            CdiObject::DataVolume(o) => serde_json::to_value(cdi.create_data_volume(&ns, *o)?),
            CdiObject::DataSource(o) => serde_json::to_value(cdi.create_data_source(&ns, *o)?),
            CdiObject::DataImportCron(o) => serde_json::to_value(cdi.create_data_import_cron(&ns, *o)?),
            _ => return Err(no_such_resource()),
        };
        v.map_err(|e| Failure::internal(format!("encoding: {e}")))
    })
    .await?;
    ok(StatusCode::CREATED, &out)
}

/// `PUT`: only DataImportCrons, and only their labels and annotations (the automatic-update
/// switch); `kubectl annotate` and PATCH go through here.
async fn replace_one(
    State(s): State<CdiApiState>,
    Path((ns, resource, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let kind = kind_of(&resource)?;
    let CdiObject::DataImportCron(mut cron) = decode(&headers, &body)? else {
        return Err(Failure::bad_request(format!(
            "the body is not a DataImportCron; {} cannot be replaced on this node",
            kind.name()
        )));
    };
    if kind != CdiKind::DataImportCron {
        return Err(Failure::bad_request(format!("{} cannot be replaced on this node", kind.name())));
    }
    if cron.metadata.name.as_deref().is_some_and(|n| n != name) {
        return Err(Failure::bad_request(format!(
            "metadata.name {:?} does not match the name in the path ({name})",
            cron.metadata.name.as_deref().unwrap_or_default()
        )));
    }
    cron.metadata.name = Some(name);
    let cdi = s.cdi.clone();
    let out = blocking(move || Ok(cdi.replace_data_import_cron(&ns, *cron)?)).await?;
    ok(StatusCode::OK, &out)
}

async fn get_one(
    State(s): State<CdiApiState>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> Answer {
    let kind = kind_of(&resource)?;
    ok(StatusCode::OK, &s.cdi.get(kind, &ns, &name)?)
}

/// The running VMIs of `ns` that use claim `name`.
fn users(lifecycle: &Lifecycle, ns: &str, name: &str) -> Vec<String> {
    lifecycle
        .vmis()
        .list(Some(ns))
        .into_iter()
        .filter(|vmi| {
            let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending);
            !matches!(phase, VmiPhase::Succeeded | VmiPhase::Failed | VmiPhase::Pending)
        })
        .filter(|vmi| {
            vmi.spec.volumes.iter().any(|v| {
                v.data_volume.as_ref().is_some_and(|d| d.name == name)
                    || v.persistent_volume_claim.as_ref().is_some_and(|p| p.claim_name == name)
            })
        })
        .filter_map(|vmi| vmi.metadata.name)
        .collect()
}

async fn delete_one(
    State(s): State<CdiApiState>,
    Path((ns, resource, name)): Path<(String, String, String)>,
) -> Answer {
    let kind = kind_of(&resource)?;
    if kind == CdiKind::DataVolume {
        let using = users(&s.lifecycle, &ns, &name);
        if !using.is_empty() {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "DataVolume {ns}/{name} is in use by VirtualMachineInstance(s) {}: stop them first",
                    using.join(", ")
                ),
            ));
        }
    }
    let cdi = s.cdi.clone();
    let (n, k) = (name.clone(), kind);
    blocking(move || Ok(cdi.delete(k, &ns, &n)?)).await?;
    ok(
        StatusCode::OK,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": { "name": name, "group": "cdi.kubevirt.io", "kind": kind.plural() },
        }),
    )
}

/// CDI's `UploadTokenRequest`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadTokenRequest {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    spec: UploadTokenRequestSpec,
    /// Accepted and ignored (a request echoed back).
    #[serde(default, rename = "status")]
    _status: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UploadTokenRequestSpec {
    pvc_name: String,
}

/// `POST /apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{ns}/uploadtokenrequests`: a token for
/// one upload into the DataVolume `spec.pvcName`, in `status.token`.
async fn token_request(
    State(s): State<CdiApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    require_namespace(&s, &ns)?;
    let req = token_request_body(&headers, &body)?;
    if req.api_version != UPLOAD_API_VERSION || req.kind != "UploadTokenRequest" {
        return Err(Failure::bad_request(format!(
            "the body is a {} {}, this path takes a {UPLOAD_API_VERSION} UploadTokenRequest",
            req.api_version, req.kind
        )));
    }
    if let Some(other) = req.metadata.namespace.as_deref().filter(|n| *n != ns) {
        return Err(Failure::invalid(format!(
            "metadata.namespace: Invalid value: \"{other}\": does not match the namespace of the request \
             (\"{ns}\")"
        )));
    }
    let cdi = s.cdi.clone();
    let (n, claim) = (ns.clone(), req.spec.pvc_name.clone());
    let token = blocking(move || Ok(cdi.upload_token(&n, &claim)?)).await?;
    let name = req.metadata.name.clone().unwrap_or_else(|| req.spec.pvc_name.clone());
    ok(
        StatusCode::CREATED,
        &json!({
            "apiVersion": UPLOAD_API_VERSION,
            "kind": "UploadTokenRequest",
            "metadata": { "name": name, "namespace": ns, "creationTimestamp": Timestamp::now() },
            "spec": { "pvcName": req.spec.pvc_name },
            "status": { "token": token },
        }),
    )
}

/// Decodes an UploadTokenRequest body strictly.
pub(crate) fn token_request_body(headers: &HeaderMap, body: &[u8]) -> Result<UploadTokenRequest, Failure> {
    let value = parse_body(headers, body)?;
    let opts = LoadOptions::default();
    Decoder::new(&opts, 1).decode(value, "").map_err(|e| Failure::invalid(e.to_string()))
}

/// Decodes a VolumeSnapshot body strictly.
pub(crate) fn snapshot_body(headers: &HeaderMap, body: &[u8]) -> Result<VolumeSnapshot, Failure> {
    let value = parse_body(headers, body)?;
    let (api, kind) = (value["apiVersion"].as_str().unwrap_or(""), value["kind"].as_str().unwrap_or(""));
    if api != SNAPSHOT_API_VERSION || kind != "VolumeSnapshot" {
        return Err(Failure::bad_request(format!(
            "the body is a {api:?} {kind:?}, this path takes a {SNAPSHOT_API_VERSION} VolumeSnapshot"
        )));
    }
    let opts = LoadOptions::default();
    Decoder::new(&opts, 1).decode(value, "").map_err(|e| Failure::invalid(e.to_string()))
}

/// Reads a body of another group (JSON, or YAML by content type) as one JSON value.
pub(crate) fn parse_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Failure> {
    let text = utf8(body)?;
    let invalid = |e: LoadError| Failure { causes: e.causes(), ..Failure::invalid(e.to_string()) };
    let mut value = if yaml_body(headers) {
        let mut docs = virt_core::api::parse_yaml(text).map_err(invalid)?;
        if docs.len() != 1 {
            return Err(Failure::bad_request(format!("expected one object in the body, got {}", docs.len())));
        }
        docs.remove(0)
    } else {
        virt_core::api::parse_json(text).map_err(invalid)?
    };
    virt_core::api::prune_nulls(&mut value);
    Ok(value)
}

fn snapshot_list(items: Vec<Value>) -> Answer {
    ok(
        StatusCode::OK,
        &json!({ "apiVersion": SNAPSHOT_API_VERSION, "kind": "VolumeSnapshotList", "metadata": {}, "items": items }),
    )
}

/// `GET /apis/snapshot.storage.k8s.io/v1/volumesnapshots`.
async fn list_all_snapshots(State(s): State<CdiApiState>) -> Answer {
    snapshot_list(s.cdi.list(CdiKind::VolumeSnapshot, None))
}

/// `GET /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots`.
async fn list_snapshots(State(s): State<CdiApiState>, Path(ns): Path<String>) -> Answer {
    require_namespace(&s, &ns)?;
    snapshot_list(s.cdi.list(CdiKind::VolumeSnapshot, Some(&ns)))
}

/// `POST /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots`.
async fn create_snapshot(
    State(s): State<CdiApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    require_namespace(&s, &ns)?;
    let vs = snapshot_body(&headers, &body)?;
    let cdi = s.cdi.clone();
    let made = blocking(move || Ok(cdi.create_volume_snapshot(&ns, vs)?)).await?;
    ok(StatusCode::CREATED, &made)
}

/// `GET /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}`.
async fn get_snapshot(State(s): State<CdiApiState>, Path((ns, name)): Path<(String, String)>) -> Answer {
    ok(StatusCode::OK, &s.cdi.get(CdiKind::VolumeSnapshot, &ns, &name)?)
}

/// `DELETE /apis/snapshot.storage.k8s.io/v1/namespaces/{ns}/volumesnapshots/{name}`: the pool
/// snapshot goes with it.
async fn delete_snapshot(State(s): State<CdiApiState>, Path((ns, name)): Path<(String, String)>) -> Answer {
    let cdi = s.cdi.clone();
    let n = name.clone();
    blocking(move || Ok(cdi.delete(CdiKind::VolumeSnapshot, &ns, &n)?)).await?;
    ok(
        StatusCode::OK,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": { "name": name, "group": "snapshot.storage.k8s.io", "kind": "volumesnapshots" },
        }),
    )
}

/// CDI's routes, to merge into the node's API router.
pub fn router(cdi: Arc<Cdi>, lifecycle: Arc<Lifecycle>) -> Router {
    Router::new()
        .route(&format!("{CDI_PREFIX}/{{resource}}"), get(list_cluster))
        .route(&format!("{CDI_PREFIX}/{{resource}}/{{name}}"), get(get_cluster))
        .route(&format!("{CDI_PREFIX}/namespaces/{{ns}}/{{resource}}"), get(list_ns).post(create))
        .route(
            &format!("{CDI_PREFIX}/namespaces/{{ns}}/{{resource}}/{{name}}"),
            get(get_one).put(replace_one).delete(delete_one),
        )
        .route(&format!("{UPLOAD_PREFIX}/namespaces/{{ns}}/uploadtokenrequests"), post(token_request))
        .route(&format!("{SNAPSHOT_PREFIX}/volumesnapshots"), get(list_all_snapshots))
        .route(
            &format!("{SNAPSHOT_PREFIX}/namespaces/{{ns}}/volumesnapshots"),
            get(list_snapshots).post(create_snapshot),
        )
        .route(
            &format!("{SNAPSHOT_PREFIX}/namespaces/{{ns}}/volumesnapshots/{{name}}"),
            get(get_snapshot).delete(delete_snapshot),
        )
        .with_state(CdiApiState { cdi, lifecycle })
}
