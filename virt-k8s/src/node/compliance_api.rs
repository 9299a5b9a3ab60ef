//! `compliance.openshift.io/v1alpha1` ComplianceCheckResults, read-only: the objects the last
//! `virt-compliance` scan kept (`compliance::objects`), listed and read as the Compliance
//! Operator's are (`kubectl get compliancecheckresults -n openshift-compliance`). Selectors,
//! Table output and watches come from the Kubernetes layer in front (`node::kube`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::api::status_response;
use crate::compliance::objects::{self, API_VERSION};

const BASE: &str = "/apis/compliance.openshift.io/v1alpha1";
const PLURAL: &str = "compliancecheckresults";

/// The routes, reading the objects under `state_dir`.
pub fn router(state_dir: PathBuf) -> Router {
    Router::new()
        .route(&format!("{BASE}/{PLURAL}"), get(list_all))
        .route(&format!("{BASE}/namespaces/{{ns}}/{PLURAL}"), get(list_ns))
        .route(&format!("{BASE}/namespaces/{{ns}}/{PLURAL}/{{name}}"), get(get_one))
        .with_state(Arc::new(state_dir))
}

async fn load(state_dir: Arc<PathBuf>) -> Result<Vec<Value>, Response> {
    let read = tokio::task::spawn_blocking(move || objects::load(&state_dir)).await;
    match read {
        Ok(Ok(items)) => Ok(items),
        Ok(Err(e)) => {
            Err(status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string()))
        }
        Err(e) => Err(status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &e.to_string())),
    }
}

fn list(items: Vec<Value>) -> Response {
    Json(json!({
        "apiVersion": API_VERSION,
        "kind": "ComplianceCheckResultList",
        "metadata": {},
        "items": items,
    }))
    .into_response()
}

fn in_namespace(o: &Value, ns: &str) -> bool {
    o["metadata"]["namespace"].as_str() == Some(ns)
}

async fn list_all(State(dir): State<Arc<PathBuf>>) -> Response {
    match load(dir).await {
        Ok(items) => list(items),
        Err(r) => r,
    }
}

async fn list_ns(State(dir): State<Arc<PathBuf>>, Path(ns): Path<String>) -> Response {
    match load(dir).await {
        Ok(items) => list(items.into_iter().filter(|o| in_namespace(o, &ns)).collect()),
        Err(r) => r,
    }
}

async fn get_one(State(dir): State<Arc<PathBuf>>, Path((ns, name)): Path<(String, String)>) -> Response {
    let items = match load(dir).await {
        Ok(items) => items,
        Err(r) => return r,
    };
    match items.into_iter().find(|o| in_namespace(o, &ns) && o["metadata"]["name"].as_str() == Some(&name)) {
        Some(o) => Json(o).into_response(),
        None => status_response(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("{PLURAL}.compliance.openshift.io \"{name}\" not found"),
        ),
    }
}
