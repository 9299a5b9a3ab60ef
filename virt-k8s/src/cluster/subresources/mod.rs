//! KubeVirt's `subresources.kubevirt.io/v1` served through the API server: an aggregated API
//! (an `APIService` pointing at a `Service` whose `Endpoints` are this server) that the node
//! agent serves for the VMIs of its node: `console` and `vnc` (websockets bridged to the
//! launcher's console socket and QEMU's VNC server), `pause`, `unpause`, `softreboot` and
//! `guestosinfo` (the launcher's control socket).
//!
//! The API server authenticates and authorizes the user (RBAC on e.g.
//! `virtualmachineinstances/console` in group `subresources.kubevirt.io`), then proxies the
//! request over TLS with its front-proxy client certificate (`--proxy-client-cert-file`),
//! verifying this server against the `caBundle` of the APIService. This server accepts only
//! clients whose certificate the front-proxy CA signed (the `requestheader-client-ca-file` the API
//! server publishes in `kube-system/extension-apiserver-authentication`), so nobody but the API
//! server reaches it (the CA is dedicated to the front proxy, as the recipe sets it up; its
//! `requestheader-allowed-names` are not checked: that needs an X.509 parser the workspace has
//! not). The user the API server authenticated comes in `X-Remote-User` (logged). Its own certificate is made at start (rcgen) for
//! `virt-api.kubevirt.svc`, the name the API server checks.
//!
//! VM verbs (`start`, `stop`, `restart`) are not served here: `virtctl` carries them out by
//! updating the VM (`client::cluster_verbs`), which needs no node.

pub mod admission;
pub mod eviction;
pub mod peers;
mod register;
mod routes;
mod vm_verbs;

use std::net::SocketAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::node::LauncherRuntime;

pub use register::{register, Registration, API_SERVICE, SERVICE, SERVICE_NAMESPACE};

/// The group and version served.
pub const GROUP_VERSION: &str = "subresources.kubevirt.io/v1";

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum SubresourceError {
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// The request.
        what: String,
        /// The client's or API server's error.
        #[source]
        source: kube::Error,
    },
    /// The API server publishes no front-proxy CA (it runs without `--requestheader-client-ca-file`).
    #[error(
        "configmap kube-system/extension-apiserver-authentication has no {0}: start the API server with \
         --requestheader-client-ca-file and --proxy-client-cert-file (scripts/k8s/up.sh does)"
    )]
    NoFrontProxyCa(&'static str),
    /// The front-proxy CA could not be parsed.
    #[error("the front-proxy CA of the API server: {0}")]
    FrontProxyCa(String),
    /// The serving certificate could not be made.
    #[error("making the serving certificate for {name}: {source}")]
    Certificate {
        /// The DNS name.
        name: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The APIService object does not fit k8s-openapi's type.
    #[error("the APIService object: {0}")]
    Object(#[source] serde_json::Error),
    /// rustls refused the configuration.
    #[error("the TLS configuration: {0}")]
    Tls(String),
    /// The listener could not be opened.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the server needs.
#[derive(Clone)]
pub struct Server {
    /// The API client (reads VMIs).
    pub client: Client,
    /// The node this agent serves.
    pub node: String,
    /// Reaches the launchers of the node.
    pub runtime: Arc<LauncherRuntime>,
    /// The VMIs' interfaces in their pods (port-forward dials the guest there).
    pub networks: Option<Arc<crate::cluster::network::PodNetworks>>,
    /// This agent's identity towards other nodes' agents, once it has one: requests for VMIs of
    /// other nodes are forwarded to their agent ([`peers`]); none: refused, naming the node.
    pub peers: crate::cluster::handler::incoming::PeerSlot,
}

/// The front-proxy CA the API server publishes.
pub struct FrontProxy {
    /// PEM of the CA that signs the API server's proxy client certificate.
    pub ca_pem: String,
}

/// Reads `kube-system/extension-apiserver-authentication`.
pub async fn front_proxy(client: &Client) -> Result<FrontProxy, SubresourceError> {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let cm = cms.get("extension-apiserver-authentication").await.map_err(|source| SubresourceError::Api {
        what: "reading configmap kube-system/extension-apiserver-authentication".into(),
        source,
    })?;
    let data = cm.data.unwrap_or_default();
    let ca_pem = data
        .get("requestheader-client-ca-file")
        .cloned()
        .ok_or(SubresourceError::NoFrontProxyCa("requestheader-client-ca-file"))?;
    Ok(FrontProxy { ca_pem })
}

/// The serving certificate: self-signed for `name`; returns (certificate PEM, certificate, key).
pub fn serving_certificate(
    name: &str,
) -> Result<(String, CertificateDer<'static>, PrivateKeyDer<'static>), SubresourceError> {
    let err = |source| SubresourceError::Certificate { name: name.to_string(), source };
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(err)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).map_err(err)?;
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((cert.pem(), cert.der().clone(), der))
}

/// The TLS server configuration: `cert`/`key`, clients verified against the front-proxy CA.
pub fn tls_config(
    front: &FrontProxy,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, SubresourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut front.ca_pem.as_bytes()) {
        let c = c.map_err(|e| SubresourceError::FrontProxyCa(e.to_string()))?;
        roots.add(c).map_err(|e| SubresourceError::FrontProxyCa(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(SubresourceError::FrontProxyCa("no CERTIFICATE in requestheader-client-ca-file".into()));
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| SubresourceError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SubresourceError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)
        .map_err(|e| SubresourceError::Tls(e.to_string()))?;
    // HTTP/1.1: the websocket upgrades the API server proxies.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The webhook's TLS configuration: `cert`/`key`, no client certificate asked (the API server
/// presents none to webhooks); it serves verdicts only ([`admission`]).
pub fn webhook_tls_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, SubresourceError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SubresourceError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| SubresourceError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Binds a TLS listener on `addr` with `cfg`; returns it with the port it took.
async fn tls_listener(
    addr: SocketAddr,
    cfg: rustls::ServerConfig,
) -> Result<(crate::node::tls::TlsListener, u16), SubresourceError> {
    let err = |source| SubresourceError::Listen { addr, source };
    let tcp = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let port = tcp.local_addr().map_err(err)?.port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    Ok((crate::node::tls::TlsListener::new(tcp, acceptor).map_err(err)?, port))
}

/// Serves on `listen` until `shutdown` resolves, after registering the APIService with
/// `advertise` as the Service's endpoint. Returns once the listener is bound and registered; the
/// server runs on a task.
pub async fn start(
    server: Server,
    listen: SocketAddr,
    advertise: std::net::IpAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, SubresourceError> {
    let front = front_proxy(&server.client).await?;
    let dns = format!("{SERVICE}.{SERVICE_NAMESPACE}.svc");
    let (cert_pem, cert, key) = serving_certificate(&dns)?;
    let cfg = tls_config(&front, cert.clone(), key.clone_key())?;
    let (listener, port) = tls_listener(listen, cfg).await?;
    // The webhook: the same address, a port of its own, no client certificate.
    let (hooks, webhook_port) =
        tls_listener(SocketAddr::new(listen.ip(), 0), webhook_tls_config(cert, key)?).await?;
    let app = routes::router(server.clone())
        .layer(axum::middleware::from_fn_with_state((server.clone(), server.peers.clone()), peers::forward));
    let hooks_app = admission::router().merge(eviction::router(server.client.clone()));
    let (stop_api, stop_hooks) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut stopped = stop_hooks.clone();
        let webhook = axum::serve(hooks, hooks_app.into_make_service()).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        let webhook = tokio::spawn(async move {
            if let Err(e) = webhook.await {
                log::error!("admission webhook: {e}");
            }
        });
        let serve = axum::serve(listener, app.into_make_service()).with_graceful_shutdown(shutdown);
        if let Err(e) = serve.await {
            log::error!("subresources API: {e}");
        }
        let _ = stop_api.send(true);
        let _ = webhook.await;
    });
    register(&server.client, &Registration { ip: advertise, port, webhook_port, ca_pem: cert_pem }).await?;
    log::info!(
        "subresources API ({GROUP_VERSION}) on {listen} (port {port}), admission webhook on port \
         {webhook_port}, registered at {advertise}"
    );
    Ok(task)
}
