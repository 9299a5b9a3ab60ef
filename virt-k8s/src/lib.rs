//! virt-k8s: KubeVirt's API surface over the crates below: the local node (store, lifecycle
//! controller, launchers, REST API), its client (`virtctl` and embedders), and the Kubernetes
//! adapter (`cluster`: CRDs from the project's types, controllers on kube's runtime). Nothing below this crate knows Kubernetes' API.

#![warn(missing_docs)]
// Library code returns errors; tests may unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
pub mod client;
pub mod cluster;
pub mod compliance;
pub mod fuzzing;
pub mod node;
pub mod registry;

/// Completes on SIGINT or SIGTERM (the kubelet's stop signal): the shutdown trigger of virt-node,
/// virt-controller and virt-handler.
/// Without a SIGTERM handler (it could not be installed) only SIGINT ends it.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
