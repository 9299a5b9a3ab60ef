//! The migration proxy: carries a migration stream between nodes over TCP with mutual TLS, as
//! KubeVirt's virt-handler does between its migration proxies.
//!
//! Launchers speak the migration protocol over unix sockets only (the target launcher's
//! `migrate.sock`, the stream the source launcher gets with `SCM_RIGHTS`), and only the node agents
//! talk across the network:
//!
//! ```text
//! source launcher ═unix═ [source agent: connect()] ══TLS/TCP══ [target agent: ProxyListener] ═unix═ migrate.sock
//! ```
//!
//! The target node's agent runs a [`ProxyListener`] and, for each migration it expects, registers
//! its key (the migration's uid) with the path of the target launcher's socket ([`ProxyListener::expect`];
//! one connection per registration, dropped with the [`Route`]; a connection that finds the
//! target launcher not listening yet is refused and leaves the route for the next attempt). The source node's agent calls
//! [`connect`] with the listener's address and the key and hands the unix stream it returns to the
//! source launcher; a relay thread copies both ways until either side closes.
//!
//! Both sides present a certificate signed by the cluster's migration CA ([`MigrationCa`]) for the
//! name [`PEER_NAME`]; anything else fails the handshake. After it the client sends one line, the
//! key; the listener answers `ok` or `error <reason>`, then the bytes flow. A peer that does not
//! finish the handshake and its line within [`HANDSHAKE_TIMEOUT`] is dropped; keys are checked
//! (1-128 of `[A-Za-z0-9._-]`) before they are looked up.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The name every node's migration certificate carries, and the one clients verify.
pub const PEER_NAME: &str = "migration.virt-rs.internal";
/// How long a peer has for the TLS handshake and the request line (and the answer to come).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_LINE: usize = 256;

/// Errors of the migration proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A certificate could not be made.
    #[error("making the migration certificate for {name}: {source}")]
    Certificate {
        /// The certificate's subject.
        name: String,
        /// The error.
        source: rcgen::Error,
    },
    /// PEM data holds no usable certificate or key.
    #[error("migration TLS material: {what}")]
    Pem {
        /// What is missing or wrong.
        what: String,
    },
    /// rustls refused the configuration.
    #[error("migration TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A file of the TLS material could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A socket operation failed.
    #[error("migration proxy: {what} {target}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The address or path.
        target: String,
        /// The error.
        source: io::Error,
    },
    /// The key is not one the protocol carries.
    #[error("migration proxy: bad migration key {key:?} (1-128 of A-Z a-z 0-9 . _ -)")]
    BadKey {
        /// The key given.
        key: String,
    },
    /// The key is registered already.
    #[error("migration proxy: migration {key} is already expected")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// The target node's proxy refused the migration.
    #[error("the migration proxy at {addr} refused migration {key}: {reason}")]
    Refused {
        /// The proxy's address.
        addr: SocketAddr,
        /// The key.
        key: String,
        /// Its answer.
        reason: String,
    },
    /// The peer did not answer in time.
    #[error("migration proxy: {what} {addr} timed out after {:?}", HANDSHAKE_TIMEOUT)]
    Timeout {
        /// What was being done.
        what: &'static str,
        /// The peer.
        addr: SocketAddr,
    },
}

fn io_err(what: &'static str, target: impl std::fmt::Display) -> impl FnOnce(io::Error) -> ProxyError {
    let target = target.to_string();
    move |source| ProxyError::Io { what, target, source }
}

fn check_key(key: &str) -> Result<(), ProxyError> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ProxyError::BadKey { key: key.chars().take(200).collect() })
    }
}

/// The cluster's migration CA: issues each node's certificate. Its key stays where it was made
/// (virt-controller, or a test); nodes get [`NodeMaterial`].
pub struct MigrationCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl MigrationCa {
    /// A new CA.
    pub fn generate() -> Result<Self, ProxyError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let err = |source| ProxyError::Certificate { name: "the migration CA".into(), source };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, "virt-rs migration CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self { cert, key })
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `node` (client and server, name [`PEER_NAME`]).
    pub fn issue(&self, node: &str) -> Result<NodeMaterial, ProxyError> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        let err = |source| ProxyError::Certificate { name: node.to_string(), source };
        let mut params = CertificateParams::new(vec![PEER_NAME.to_string()]).map_err(err)?;
        params.distinguished_name.push(DnType::CommonName, node);
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().map_err(err)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(err)?;
        Ok(NodeMaterial { ca_pem: self.ca_pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// One node's TLS material, PEM: the CA it trusts, its certificate and key (as a Secret holds them:
/// `ca.crt`, `tls.crt`, `tls.key`).
#[derive(Clone)]
pub struct NodeMaterial {
    /// The migration CA.
    pub ca_pem: String,
    /// The node's certificate.
    pub cert_pem: String,
    /// The node's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for NodeMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMaterial").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

impl NodeMaterial {
    /// Reads `ca.crt`, `tls.crt` and `tls.key` from `dir` (a mounted Secret).
    pub fn load(dir: &Path) -> Result<Self, ProxyError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|source| ProxyError::File {
                what: "reading",
                path,
                source,
            })
        };
        Ok(Self { ca_pem: read("ca.crt")?, cert_pem: read("tls.crt")?, key_pem: read("tls.key")? })
    }

    /// The client and server configurations.
    pub fn tls(&self) -> Result<ProxyTls, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pem = |what: String| ProxyError::Pem { what };
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut self.ca_pem.as_bytes()) {
            let c = c.map_err(|e| pem(format!("the CA: {e}")))?;
            roots.add(c).map_err(|e| pem(format!("the CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(pem("no CERTIFICATE in the CA".into()));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| pem(format!("the node's certificate: {e}")))?;
        if chain.is_empty() {
            return Err(pem("no CERTIFICATE in the node's certificate".into()));
        }
        let key = || -> Result<PrivateKeyDer<'static>, ProxyError> {
            rustls_pemfile::private_key(&mut self.key_pem.as_bytes())
                .map_err(|e| pem(format!("the node's key: {e}")))?
                .ok_or_else(|| pem("no PRIVATE KEY in the node's key".into()))
        };
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| pem(format!("the client verifier: {e}")))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key()?)?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key()?)?;
        Ok(ProxyTls { server: Arc::new(server), client: Arc::new(client) })
    }
}

/// Both ends' rustls configurations (mutual TLS under the migration CA).
#[derive(Clone)]
pub struct ProxyTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

/// A route a listener knows: the target launcher's socket, and whether a connection is being
/// made to it now.
struct RouteEntry {
    socket: PathBuf,
    taken: bool,
}

impl ProxyTls {
    /// The server side: the node's certificate, clients verified under the migration CA.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// The client side: the node's certificate, servers verified under the migration CA for
    /// [`PEER_NAME`].
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
}

/// The routes a listener knows, by key.
type Routes = Arc<Mutex<HashMap<String, RouteEntry>>>;

/// The target node's side: accepts migrations on a TCP address and relays each to the target
/// launcher's socket registered for its key. Stops when dropped (relays under way run on).
pub struct ProxyListener {
    addr: SocketAddr,
    routes: Routes,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// A registration of [`ProxyListener::expect`]; dropping it withdraws the route if unused.
pub struct Route {
    key: String,
    routes: Routes,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.key);
    }
}

impl ProxyListener {
    /// Listens on `addr` (port 0: any) on a thread of its own.
    pub fn bind(addr: SocketAddr, tls: &ProxyTls) -> Result<Self, ProxyError> {
        let std_listener = std::net::TcpListener::bind(addr).map_err(io_err("listening on", addr))?;
        std_listener.set_nonblocking(true).map_err(io_err("listening on", addr))?;
        let local = std_listener.local_addr().map_err(io_err("listening on", addr))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io_err("starting the proxy's runtime for", local))?;
        let routes: Routes = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let acceptor = TlsAcceptor::from(tls.server.clone());
        let r = routes.clone();
        std::thread::Builder::new()
            .name("migration-proxy".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            log::error!("migration proxy on {local}: {e}");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = accept_loop(listener, acceptor, r) => {}
                        _ = stopped => {}
                    }
                })
            })
            .map_err(io_err("starting the proxy's thread for", local))?;
        Ok(Self { addr: local, routes, stop: Some(stop) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Expects one connection for migration `key`, relayed to the unix socket `socket`.
    pub fn expect(&self, key: &str, socket: PathBuf) -> Result<Route, ProxyError> {
        check_key(key)?;
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.contains_key(key) {
            return Err(ProxyError::Duplicate { key: key.to_string() });
        }
        routes.insert(key.to_string(), RouteEntry { socket, taken: false });
        Ok(Route { key: key.to_string(), routes: self.routes.clone() })
    }
}

impl Drop for ProxyListener {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, routes: Routes) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                log::warn!("migration proxy: accepting: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, routes) = (acceptor.clone(), routes.clone());
        // Relays run on the runtime's threads; the listener's stop does not cut them.
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, acceptor, routes).await {
                log::warn!("migration proxy: connection from {peer}: {e}");
            }
        });
    }
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, routes: Routes) -> Result<(), ProxyError> {
    let peer = tcp.peer_addr().map_err(io_err("accepting", "a connection"))?;
    let _ = tcp.set_nodelay(true);
    let timeout = |what| ProxyError::Timeout { what, addr: peer };
    let (mut tls, key) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let tls = acceptor.accept(tcp).await.map_err(io_err("TLS handshake with", peer))?;
        let mut reader = BufReader::new(tls);
        let line = read_line(&mut reader, peer).await?;
        // The client sends nothing after its line before the answer.
        if !reader.buffer().is_empty() {
            return Err(ProxyError::Io {
                what: "reading the request of",
                target: peer.to_string(),
                source: io::Error::new(io::ErrorKind::InvalidData, "data after the request line"),
            });
        }
        Ok::<_, ProxyError>((reader.into_inner(), line))
    })
    .await
    .map_err(|_| timeout("waiting for the request of"))??;
    if let Err(e) = check_key(&key) {
        answer(&mut tls, peer, format!("error {e}\n")).await?;
        return Err(e);
    }
    // One connection per registration: a second one for the same key finds none (while the
    // first one connects, and after it did).
    let socket = routes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key).and_then(|r| {
        let free = !r.taken;
        r.taken = true;
        free.then(|| r.socket.clone())
    });
    let Some(socket) = socket else {
        answer(&mut tls, peer, "error no migration with this key is expected here\n".into()).await?;
        return Err(ProxyError::Refused { addr: peer, key, reason: "not expected".into() });
    };
    let mut unix = match UnixStream::connect(&socket).await {
        Ok(u) => u,
        Err(e) => {
            // The target launcher does not listen (yet): the route serves the next attempt,
            // unless it was withdrawn meanwhile.
            if let Some(r) = routes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&key) {
                r.taken = false;
            }
            let msg = format!("the target launcher's socket {}: {e}", socket.display());
            answer(&mut tls, peer, format!("error {msg}\n")).await?;
            return Err(ProxyError::Refused { addr: peer, key, reason: msg });
        }
    };
    routes.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    answer(&mut tls, peer, "ok\n".into()).await?;
    log::info!("migration proxy: relaying migration {key} from {peer} to {}", socket.display());
    let (up, down) = tokio::io::copy_bidirectional(&mut tls, &mut unix)
        .await
        .map_err(io_err("relaying to", socket.display()))?;
    log::info!("migration proxy: migration {key} from {peer} ended ({up} bytes in, {down} out)");
    Ok(())
}

async fn answer(
    tls: &mut tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    line: String,
) -> Result<(), ProxyError> {
    tls.write_all(line.as_bytes()).await.map_err(io_err("answering", peer))?;
    tls.flush().await.map_err(io_err("answering", peer))
}

/// Reads one `\n`-terminated line of at most [`MAX_LINE`] bytes.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    peer: SocketAddr,
) -> Result<String, ProxyError> {
    let mut line = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut *r, MAX_LINE as u64);
    limited.read_until(b'\n', &mut line).await.map_err(io_err("reading the request of", peer))?;
    if line.last() != Some(&b'\n') {
        return Err(ProxyError::Io {
            what: "reading the request of",
            target: peer.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no line within 256 bytes"),
        });
    }
    line.pop();
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// The source node's side: connects to the target node's proxy at `addr` for migration `key` and
/// returns the stream to hand to the source launcher; a relay thread copies it to the proxy until
/// either side closes. Fails when the handshake, or the target's answer, fails or takes longer than
/// [`HANDSHAKE_TIMEOUT`].
pub fn connect(
    addr: SocketAddr,
    tls: &ProxyTls,
    key: &str,
) -> Result<std::os::unix::net::UnixStream, ProxyError> {
    check_key(key)?;
    let (launcher_end, relay_end) =
        std::os::unix::net::UnixStream::pair().map_err(io_err("making a socket pair for", addr))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the relay's runtime for", addr))?;
    let connector = TlsConnector::from(tls.client.clone());
    let key = key.to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("migration-relay".into())
        .spawn(move || {
            rt.block_on(async move {
                let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, open(addr, connector, &key))
                    .await
                    .unwrap_or(Err(ProxyError::Timeout { what: "connecting to", addr }));
                let mut tls = match connected {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let unix = relay_end.set_nonblocking(true).and_then(|()| UnixStream::from_std(relay_end));
                let mut unix = match unix {
                    Ok(u) => u,
                    Err(e) => {
                        let _ = ready_tx.send(Err(io_err("relaying to", addr)(e)));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                match tokio::io::copy_bidirectional(&mut unix, &mut tls).await {
                    Ok((up, down)) => {
                        log::info!("migration relay to {addr}: ended ({up} bytes out, {down} in)")
                    }
                    Err(e) => log::warn!("migration relay to {addr}: {e}"),
                }
            })
        })
        .map_err(io_err("starting the relay's thread for", addr))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(launcher_end),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ProxyError::Io {
            what: "connecting to",
            target: addr.to_string(),
            source: io::Error::other("the relay thread ended"),
        }),
    }
}

async fn open(
    addr: SocketAddr,
    connector: TlsConnector,
    key: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
    let tcp = TcpStream::connect(addr).await.map_err(io_err("connecting to", addr))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(PEER_NAME).map_err(|e| ProxyError::Pem { what: e.to_string() })?;
    let tls = connector.connect(name, tcp).await.map_err(io_err("TLS handshake with", addr))?;
    let mut reader = BufReader::new(tls);
    reader.get_mut().write_all(format!("{key}\n").as_bytes()).await.map_err(io_err("writing to", addr))?;
    reader.get_mut().flush().await.map_err(io_err("writing to", addr))?;
    let answer = read_line(&mut reader, addr).await?;
    // The answer is the last thing read through the buffer: the target sends nothing before it.
    if !reader.buffer().is_empty() {
        return Err(ProxyError::Refused {
            addr,
            key: key.to_string(),
            reason: "data before the answer".into(),
        });
    }
    match answer.strip_prefix("error ") {
        None if answer == "ok" => Ok(reader.into_inner()),
        Some(reason) => Err(ProxyError::Refused { addr, key: key.to_string(), reason: reason.to_string() }),
        None => Err(ProxyError::Refused {
            addr,
            key: key.to_string(),
            reason: format!("unexpected answer {answer:?}"),
        }),
    }
}

#[cfg(test)]
#[path = "migration_proxy_tests.rs"]
mod tests;
