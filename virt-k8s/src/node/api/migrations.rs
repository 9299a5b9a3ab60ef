//! KubeVirt's `VirtualMachineInstanceMigration` (`kubevirt.io/v1`, short names `vmim`, `vmims`):
//! create (`virtctl migrate`), get, list, delete (`virtctl migrate-cancel`), over the lifecycle's
//! migration controller (docs/migration.md).

use super::*;

const PLURAL: &str = "virtualmachineinstancemigrations";

async fn list_all(State(s): State<ApiState>) -> ApiResult {
    list(
        "VirtualMachineInstanceMigrationList",
        model::API_VERSION,
        values(s.lifecycle.migrations().list(None)),
    )
}

async fn list_ns(State(s): State<ApiState>, Path(ns): Path<String>) -> ApiResult {
    if !s.lifecycle.namespaces().exists(&ns) {
        return Err(LifecycleError::NotFound { resource: "namespaces", name: ns }.into());
    }
    list(
        "VirtualMachineInstanceMigrationList",
        model::API_VERSION,
        values(s.lifecycle.migrations().list(Some(&ns))),
    )
}

async fn create(
    State(s): State<ApiState>,
    Path(ns): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let m = match decode(&headers, &body)? {
        KubeVirtObject::VirtualMachineInstanceMigration(m) => *m,
        other => return Err(wrong_kind(&other, "VirtualMachineInstanceMigration")),
    };
    let out = blocking(move || Ok(s.lifecycle.migrations().create(&ns, m)?)).await?;
    ok(StatusCode::CREATED, &out)
}

async fn get_one(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    ok(StatusCode::OK, &s.lifecycle.migrations().get(&ns, &name)?)
}

async fn delete_one(State(s): State<ApiState>, Path((ns, name)): Path<(String, String)>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.migrations().delete(&ns, &name)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// The migration routes under `kv` (`/apis/kubevirt.io/v1`).
pub fn routes(kv: &str) -> Router<ApiState> {
    Router::new()
        .route(&format!("{kv}/{PLURAL}"), get(list_all))
        .route(&format!("{kv}/namespaces/{{ns}}/{PLURAL}"), get(list_ns).post(create))
        .route(&format!("{kv}/namespaces/{{ns}}/{PLURAL}/{{name}}"), get(get_one).delete(delete_one))
}
