//! Subresources of VMIs on other nodes: the API server reaches one agent (the aggregated API's
//! endpoint), which forwards what is for a VMI of another node to that node's agent, as KubeVirt's
//! virt-api forwards to the virt-handler of the VMI's node.
//!
//! Every agent taking part in migrations between nodes has the cluster's agent identity (the
//! migration Secret: `cluster::migration_certs`). With it each serves the subresource routes to
//! its peers on a TLS listener of its own ([`serve`]: only clients with that identity get in) and
//! writes the address on its Node ([`PEER_ANNOTATION`]). The endpoint's agent ([`forward`], a
//! middleware on its routes) looks at the VMI's node: its own, the request goes on; another, the
//! request (its `X-Remote-*` headers, which name the user the API server authenticated, kept) goes
//! to that node's peer listener and the answer comes back; a websocket (console, VNC,
//! port-forward) is upgraded on both hops and relayed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::Api;
use rustls::pki_types::ServerName;
use serde_json::json;
use virt_core::model::VirtualMachineInstance;

use super::{routes, Server, SubresourceError, GROUP_VERSION};
use crate::cluster::handler::incoming::PeerSlot;
use crate::cluster::kinds::Cr;
use crate::node::api::status_response;
use crate::node::migration_proxy::{ProxyTls, PEER_NAME};

/// The Node annotation with the address of its agent's peer listener.
pub const PEER_ANNOTATION: &str = "subresources.virt-rs.io/peer";

/// Serves the subresource routes to other agents on `ip` (any port) with the agents' TLS, and
/// writes the address on Node `server.node`. Returns the address; the server runs on a task.
pub async fn serve(
    server: Server,
    ip: std::net::IpAddr,
    tls: &ProxyTls,
) -> Result<SocketAddr, SubresourceError> {
    let addr = SocketAddr::new(ip, 0);
    let err = |source| SubresourceError::Listen { addr, source };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let local = tcp.local_addr().map_err(err)?;
    let mut cfg = (*tls.server_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = crate::node::tls::TlsListener::new(tcp, acceptor).map_err(err)?;
    let (client, node) = (server.client.clone(), server.node.clone());
    let app = routes::router(server);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app.into_make_service()).await {
            log::error!("subresources for peers: {e}");
        }
    });
    let nodes: Api<Node> = Api::all(client);
    let patch = json!({ "metadata": { "annotations": { PEER_ANNOTATION: local.to_string() } } });
    nodes.patch(&node, &PatchParams::default(), &Patch::Merge(patch)).await.map_err(|source| {
        SubresourceError::Api {
            what: format!("annotating node {node} with its peer address {local}"),
            source,
        }
    })?;
    log::info!("subresources for other nodes' agents on {local}");
    Ok(local)
}

/// `/apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachineinstances/NAME/...`: (NS, NAME).
fn vmi_of(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(&format!("/apis/{GROUP_VERSION}/namespaces/"))?;
    let mut parts = rest.splitn(4, '/');
    let ns = parts.next()?;
    (parts.next()? == "virtualmachineinstances").then_some(())?;
    let name = parts.next()?;
    parts.next()?;
    Some((ns, name)).filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
}

fn unavailable(message: String) -> Response {
    status_response(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", &message).into_response()
}

/// The middleware: requests for VMIs of other nodes go to their agent (see the module's
/// documentation); the rest, and everything while this agent has no peer identity, goes on.
pub async fn forward(State((s, peer)): State<(Server, PeerSlot)>, req: Request, next: Next) -> Response {
    let Some((ns, name)) = vmi_of(req.uri().path()).map(|(n, v)| (n.to_string(), v.to_string())) else {
        return next.run(req).await;
    };
    let (ns, name) = (ns.as_str(), name.as_str());
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(s.client.clone(), ns);
    let node = match vmis.get_opt(name).await {
        Ok(Some(v)) => v.obj.status.and_then(|st| st.node_name).unwrap_or_default(),
        // Not found, or the API server unreachable: the route answers as it would.
        _ => return next.run(req).await,
    };
    if node.is_empty() || node == s.node {
        return next.run(req).await;
    }
    let Some(peer) = peer.get() else {
        return unavailable(format!(
            "VirtualMachineInstance {ns}/{name} runs on node {node}; this virt-handler (node {}) \
             reaches other nodes' agents only with --migration-listen and the migration Secret",
            s.node
        ));
    };
    let nodes: Api<Node> = Api::all(s.client.clone());
    let addr = match nodes.get_opt(&node).await {
        Ok(Some(n)) => n.metadata.annotations.and_then(|a| a.get(PEER_ANNOTATION).cloned()),
        _ => None,
    };
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return unavailable(format!(
            "VirtualMachineInstance {ns}/{name} runs on node {node}, whose virt-handler has not \
             published a peer address (annotation {PEER_ANNOTATION})"
        ));
    };
    match relay(req, addr, peer.tls()).await {
        Ok(r) => r,
        Err(why) => unavailable(format!(
            "VirtualMachineInstance {ns}/{name} runs on node {node}; its virt-handler at {addr}: {why}"
        )),
    }
}

/// Why a request could not be relayed to another node's agent.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No TCP connection within [`RELAY_CONNECT_TIMEOUT`].
    #[error("connecting timed out after {:?}", RELAY_CONNECT_TIMEOUT)]
    Timeout,
    /// The TCP connection or the TLS handshake failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{what}: {source}")]
    Http {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: hyper::Error,
    },
}

/// How long a connection to another node's agent may take.
pub const RELAY_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Sends `req` to the peer at `addr` and returns its answer; an upgrade on both hops is relayed.
async fn relay(mut req: Request, addr: SocketAddr, tls: &ProxyTls) -> Result<Response, RelayError> {
    let io = |what| move |source| RelayError::Io { what, source };
    let http = |what| move |source| RelayError::Http { what, source };
    let tcp = tokio::time::timeout(RELAY_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| RelayError::Timeout)?
        .map_err(io("connecting"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(PEER_NAME).map_err(|e| RelayError::Io {
        what: "the peer name",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let connector = tokio_rustls::TlsConnector::from(tls.client_config());
    let stream = connector.connect(name, tcp).await.map_err(io("TLS handshake"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(http("HTTP handshake"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            log::debug!("subresources relay: {e}");
        }
    });
    let downstream = hyper::upgrade::on(&mut req);
    let mut resp = sender.send_request(req).await.map_err(http("sending the request"))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match (downstream.await, upstream.await) {
                (Ok(down), Ok(up)) => {
                    let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                        log::debug!("subresources relay: {e}");
                    }
                }
                (d, u) => log::warn!(
                    "subresources relay: upgrade failed (client: {:?}, peer: {:?})",
                    d.err(),
                    u.err()
                ),
            }
        });
    }
    Ok(resp.map(Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_vmi_subresource_paths_are_looked_at() {
        let p = |s: &'static str| vmi_of(s);
        assert_eq!(
            p("/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/v/console"),
            Some(("ns", "v"))
        );
        assert_eq!(
            p("/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/v/portforward/22/tcp"),
            Some(("ns", "v"))
        );
        assert_eq!(p("/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/v/start"), None);
        assert_eq!(p("/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/v"), None);
        assert_eq!(p("/apis/subresources.kubevirt.io/v1"), None);
        assert_eq!(p("/healthz"), None);
    }
}
