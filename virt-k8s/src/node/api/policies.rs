//! KubeVirt's `MigrationPolicy` (`migrations.kubevirt.io/v1alpha1`, cluster-scoped): create,
//! replace, get, list, delete over the lifecycle; a migration matches them when it starts
//! (docs/migration.md).

use super::*;

const GROUP: &str = "/apis/migrations.kubevirt.io/v1alpha1";
const PLURAL: &str = "migrationpolicies";

async fn list_all(State(s): State<ApiState>) -> ApiResult {
    list(
        "MigrationPolicyList",
        model::MIGRATIONS_API_VERSION,
        values(s.lifecycle.migration_policies().list()),
    )
}

fn policy_of(headers: &HeaderMap, body: &[u8]) -> Result<model::MigrationPolicy, ApiError> {
    match decode(headers, body)? {
        KubeVirtObject::MigrationPolicy(p) => Ok(*p),
        other => Err(wrong_kind(&other, "MigrationPolicy")),
    }
}

async fn create(State(s): State<ApiState>, headers: HeaderMap, body: Bytes) -> ApiResult {
    let p = policy_of(&headers, &body)?;
    let out = blocking(move || Ok(s.lifecycle.migration_policies().put(p, false)?)).await?;
    ok(StatusCode::CREATED, &out)
}

async fn replace(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let mut p = policy_of(&headers, &body)?;
    if let Some(m) = p.metadata.name.as_deref().filter(|m| *m != name) {
        return Err(ApiError::bad_request(format!(
            "metadata.name {m:?} does not match the name in the path ({name})"
        )));
    }
    p.metadata.name = Some(name);
    let out = blocking(move || Ok(s.lifecycle.migration_policies().put(p, true)?)).await?;
    ok(StatusCode::OK, &out)
}

async fn get_one(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    ok(StatusCode::OK, &s.lifecycle.migration_policies().get(&name)?)
}

async fn delete_one(State(s): State<ApiState>, Path(name): Path<String>) -> ApiResult {
    blocking(move || Ok(s.lifecycle.migration_policies().delete(&name)?)).await?;
    ok(StatusCode::OK, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
}

/// The MigrationPolicy routes.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(&format!("{GROUP}/{PLURAL}"), get(list_all).post(create))
        .route(&format!("{GROUP}/{PLURAL}/{{name}}"), get(get_one).put(replace).delete(delete_one))
}
