//! How virtctl reaches the node: `--server`/`VIRT_NODE`, else a kubeconfig context (`--kubeconfig`,
//! `KUBECONFIG`, `--context`), else the default socket; and the namespace a manifest's objects go to.

use std::path::PathBuf;

use virt_k8s::client::kubeconfig::Kubeconfig;
use virt_k8s::client::{manifest, AsyncNodeClient, ClientError, Endpoint, NodeClient, ENV_TOKEN};

/// Where the node is and how to reach it: the global flags.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: Option<String>,
    pub token: Option<String>,
    pub kubeconfig: Option<String>,
    pub context: Option<String>,
    pub ca: Option<PathBuf>,
}

impl Target {
    /// The namespace of the kubeconfig context in use (none with --server, or without a kubeconfig).
    pub fn context_namespace(&self) -> Option<String> {
        if self.server.is_some() {
            return None;
        }
        let path = Kubeconfig::path(self.kubeconfig.as_deref())?;
        Kubeconfig::load(&path, self.context.as_deref()).ok()?.namespace
    }
}

/// Loads a manifest: objects naming no namespace go to `-n`, else the context's namespace, else
/// `default`.
pub fn load_manifests(
    file: &str,
    namespace: Option<&str>,
    target: &Target,
) -> Result<Vec<manifest::Manifest>, manifest::ManifestError> {
    let mut manifests = manifest::load_path(file, namespace)?;
    if namespace.is_none() {
        if let Some(ctx) = target.context_namespace() {
            for m in manifests.iter_mut().filter(|m| m.kind.namespaced()) {
                if m.object.pointer("/metadata/namespace").is_none() {
                    m.namespace = ctx.clone();
                }
            }
        }
    }
    Ok(manifests)
}

/// The client of the node: --server (or VIRT_NODE), else the kubeconfig's context (--kubeconfig or
/// KUBECONFIG), else the default socket.
pub fn client(t: Target) -> Result<NodeClient, ClientError> {
    let token = t.token.clone().or_else(|| std::env::var(ENV_TOKEN).ok());
    if t.server.is_none() {
        if let Some(path) = Kubeconfig::path(t.kubeconfig.as_deref()) {
            let c = AsyncNodeClient::from_kubeconfig(&path, t.context.as_deref(), token.as_deref())?;
            return NodeClient::with_client(c);
        }
    }
    let endpoint = Endpoint::resolve(t.server.as_deref(), None)?;
    let mut c = AsyncNodeClient::new(endpoint, token);
    if let Some(ca) = &t.ca {
        let pem = std::fs::read(ca).map_err(|e| ClientError::Ca(format!("{}: {e}", ca.display())))?;
        c = c.with_ca_pem(&pem)?;
    }
    NodeClient::with_client(c)
}
