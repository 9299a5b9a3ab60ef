//! TLS on the node's TCP listener (rustls on ring) and the kubeconfig the node writes for its local
//! user. Without a certificate given (`--tls-cert`/`--tls-key`), the first start makes a CA and a
//! server certificate signed by it under `<state>/tls/` (the CA's key is not kept); clients trust
//! `<state>/tls/ca.crt`, which the kubeconfig carries as `certificate-authority-data`.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// Errors setting TLS up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// A PEM file holds no certificate or no private key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        what: String,
    },
    /// The certificate could not be made.
    #[error("making the node's self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("the TLS certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> TlsError + 'a {
    move |source| TlsError::Io { what, path: path.display().to_string(), source }
}

/// The server's certificate, key and the CA clients should trust.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Server certificate (chain), PEM.
    pub cert: PathBuf,
    /// Server private key, PEM.
    pub key: PathBuf,
    /// What clients trust, PEM (the made CA, or the given certificate).
    pub ca: PathBuf,
}

/// The certificate and key to use: the given ones, or those under `<state>/tls/`, made on first
/// start for `localhost`, `127.0.0.1`, `::1`, the node's name and the listen address.
pub fn ensure(
    state_dir: &Path,
    node_name: &str,
    listen: SocketAddr,
    given: Option<(PathBuf, PathBuf)>,
) -> Result<TlsFiles, TlsError> {
    if let Some((cert, key)) = given {
        return Ok(TlsFiles { ca: cert.clone(), cert, key });
    }
    let dir = state_dir.join("tls");
    let files = TlsFiles { cert: dir.join("tls.crt"), key: dir.join("tls.key"), ca: dir.join("ca.crt") };
    if files.cert.is_file() && files.key.is_file() && files.ca.is_file() {
        return Ok(files);
    }
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, format!("virt-node {node_name} CA"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut names = vec!["localhost".to_string()];
    if node_name != "localhost" {
        names.push(node_name.to_string());
    }
    let mut leaf = CertificateParams::new(names)?;
    leaf.distinguished_name.push(DnType::CommonName, node_name.to_string());
    let mut ips: Vec<std::net::IpAddr> = vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    leaf.subject_alt_names.extend(ips.into_iter().map(SanType::IpAddress));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key)?;
    write_private(&files.key, leaf_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, leaf_cert.pem()).map_err(io_err("writing", &files.cert))?;
    // The CA last: its presence marks a complete set.
    std::fs::write(&files.ca, ca_cert.pem()).map_err(io_err("writing", &files.ca))?;
    log::info!("virt-node: made a TLS certificate for {node_name} (CA {})", files.ca.display());
    Ok(files)
}

/// Writes a file only its owner may read.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("writing", &tmp))?;
    f.write_all(data).and_then(|()| f.sync_all()).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err("renaming into", path))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(io_err("reading", path))
}

/// The certificates of a PEM file.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: path.display().to_string(), what: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// The server side: an acceptor for the files.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let certs = certificates(&files.cert)?;
    let pem = read(&files.key)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Pem { path: files.key.display().to_string(), what: e.to_string() })?
        .ok_or_else(|| TlsError::Pem {
            path: files.key.display().to_string(),
            what: "no PRIVATE KEY in the file".into(),
        })?;
    let mut cfg =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
    // The API speaks HTTP/1.1 (watches and websocket upgrades included).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// A TCP listener whose connections come out of a TLS handshake; handshakes run on their own tasks
/// (a slow client holds nobody up) and give up after 10 seconds.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` with `acceptor`.
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        log::warn!("virt-node: accepting on {local}: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => log::debug!("virt-node: TLS handshake with {peer}: {e}"),
                        Err(_) => log::debug!("virt-node: TLS handshake with {peer} timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(Self { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The kubeconfig of the node's local user: one cluster, user and context, all named for the node;
/// the CA inline, the bearer token of the TCP listener, namespace `default`.
pub fn kubeconfig(node_name: &str, server: &str, ca_pem: &[u8], token: &str) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {n}\n  cluster:\n    server: {server}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {n}\n  \
         context:\n    cluster: {n}\n    user: {user}\n    namespace: default\ncurrent-context: {n}\npreferences: {{}}\n",
        n = q(node_name),
        user = q(&format!("{node_name}-admin")),
        server = q(server),
        token = q(token),
    )
}

/// The URL clients reach `listen` at: a wildcard address becomes the loopback.
pub fn server_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::IpAddr::from([127, 0, 0, 1]),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_start_makes_a_ca_and_a_server_certificate_it_signed() {
        let dir = tempfile::tempdir().unwrap();
        let files = ensure(dir.path(), "node-a", "127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert!(acceptor(&files).is_ok());
        let mode = std::fs::metadata(&files.key).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        let again = ensure(dir.path(), "node-a", "127.0.0.1:0".parse().unwrap(), None).unwrap();
        assert_eq!(
            std::fs::read(&again.ca).unwrap(),
            std::fs::read(&files.ca).unwrap(),
            "kept across starts"
        );
        let cfg = kubeconfig("node-a", &server_url("0.0.0.0:8443".parse().unwrap()), b"PEM", "tok");
        let v = virt_core::api::parse_yaml(&cfg).unwrap().remove(0);
        assert_eq!(v["current-context"], "node-a");
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:8443");
        assert_eq!(v["users"][0]["user"]["token"], "tok");
    }
}
