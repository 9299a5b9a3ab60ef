//! The Kubernetes adapter: the project's KubeVirt and CDI types as custom resources of a real
//! cluster ([`kinds`], [`crd`], [`schema`]), and controllers on kube's runtime that turn
//! VirtualMachines into VMIs and VMIs into launcher pods ([`controller`], [`pod`]), and the node agent that runs their machines
//! ([`handler`]); [`leader`] elects one active virt-controller through a Lease; [`deploy`]
//! has the Deployment and DaemonSet that run them. The agent serves KubeVirt's subresources through the API server
//! ([`subresources`]). See
//! docs/kubernetes.md.

pub mod controller;
pub mod crd;
pub mod deploy;
pub mod device_plugin;
pub mod handler;
pub mod importer;
pub mod kinds;
pub mod leader;
pub mod migration_certs;
pub mod network;
pub mod pod;
pub mod schema;
pub mod storage;
pub mod subresources;

use std::path::{Path, PathBuf};

pub use kinds::{Cr, KubeKind};

/// Errors connecting to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read.
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration could be inferred (no KUBECONFIG, no ~/.kube/config, not in a pod).
    #[error("no cluster configuration found: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building the API client: {0}")]
    Client(#[from] kube::Error),
}

/// A client from `kubeconfig`, else from the environment (`KUBECONFIG`, ~/.kube/config, in-cluster).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClusterError> {
    client_as(kubeconfig, "virt-rs").await
}

/// [`client`] sending `User-Agent: <component>/<version>` (the API server's audit log and
/// metrics tell the components apart by it).
pub async fn client_as(kubeconfig: Option<&Path>, component: &str) -> Result<kube::Client, ClusterError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|source| ClusterError::Kubeconfig { path: path.to_path_buf(), source })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClusterError::Kubeconfig { path: path.to_path_buf(), source })?
        }
        None => kube::Config::infer().await?,
    };
    let mut config = config;
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(v) = axum::http::HeaderValue::from_str(&agent) {
        config.headers.push((axum::http::header::USER_AGENT, v));
    }
    Ok(kube::Client::try_from(config)?)
}
