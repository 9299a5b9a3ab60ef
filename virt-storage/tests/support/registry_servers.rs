//! Servers the registry tests put around Debian's registry: a PKI for TLS, a bearer-token service
//! and a fault-injecting proxy (used by tests/registry.rs only).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;
use virt_storage::registry::{RegistryClient, RegistryConfig};

use crate::support::registry::*;

/// A CA and a server certificate for 127.0.0.1 made with the openssl CLI.
pub struct Pki {
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let openssl = require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(Command::new(&openssl).current_dir(d).args(["req", "-x509"]).args(ec).args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=virt-storage test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new(&openssl).current_dir(d).arg("req").args(ec).args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]));
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new(&openssl).current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.path("ca.crt")).unwrap()
    }
}

/// A minimal token service for the registry's bearer auth: checks HTTP basic credentials and
/// hands out one JWT (RS256, signed with the openssl CLI, its certificate in `x5c`) that grants
/// pull and push on one repository. Records the query strings it was asked.
pub struct TokenServer {
    pub realm: String,
    pub cert: PathBuf,
    pub queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    pub _dir: TempDir,
}

pub const TOKEN_SERVICE: &str = "virt-test-registry";
pub const TOKEN_ISSUER: &str = "virt-test-issuer";

impl TokenServer {
    pub fn start(user: &str, pass: &str, repo: &str) -> TokenServer {
        use base64::Engine as _;
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = base64::engine::general_purpose::STANDARD;

        let openssl = require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(Command::new(&openssl).current_dir(d).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tok.key",
            "-out",
            "tok.crt",
            "-days",
            "2",
            "-subj",
            "/CN=virt-storage token signer",
        ]));
        run(Command::new(&openssl)
            .current_dir(d)
            .args(["x509", "-in", "tok.crt", "-outform", "DER", "-out", "tok.der"]));
        let der = fs::read(d.join("tok.der")).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [b64.encode(&der)]});
        let claims = json!({
            "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "virt-test-1",
            "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}],
        });
        let signing_input = format!(
            "{}.{}",
            b64url.encode(serde_json::to_vec(&header).unwrap()),
            b64url.encode(serde_json::to_vec(&claims).unwrap())
        );
        fs::write(d.join("input"), &signing_input).unwrap();
        run(Command::new(&openssl)
            .current_dir(d)
            .args(["dgst", "-sha256", "-sign", "tok.key", "-out", "sig", "input"]));
        let token = format!("{signing_input}.{}", b64url.encode(fs::read(d.join("sig")).unwrap()));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let expected_auth = format!("Basic {}", b64.encode(format!("{user}:{pass}")));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes, and it stops when the test drops the server.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (stream, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            auth = v.trim().to_string();
                        }
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                q.lock()
                    .unwrap()
                    .push(target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default());
                let (status, body) = if auth == expected_auth {
                    ("200 OK", json!({"token": token, "expires_in": 3600}).to_string())
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.into(),
                    )
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { realm, cert: d.join("tok.crt"), queries, stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupted blob downloads: a fault-injecting TCP proxy in front of the registry
// ---------------------------------------------------------------------------------------------

/// What the proxy breaks.
#[derive(Clone, Copy)]
pub struct Faults {
    /// Cut a connection (both ways) once this many response bytes went through it...
    pub cut_after: u64,
    /// ...for this many connections.
    pub cuts: usize,
    /// Flip one byte of the response to every request carrying a `Range` header.
    pub corrupt_ranged: bool,
}

/// A TCP proxy on 127.0.0.1 in front of the registry: logs every request head (`METHOD path` and
/// its `Range` header), counts the response bytes it forwards and injects `Faults`. Stops when
/// dropped (and after 10 minutes at most).
pub struct FaultProxy {
    pub host: String,
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        use std::io::Read;
        use std::net::{Shutdown, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cuts_left = Arc::new(AtomicUsize::new(faults.cuts));
        let upstream = upstream.to_string();
        let (log, down2, stop2) = (requests.clone(), down.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                for s in [&client, &server] {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                }
                // Set by the request direction when a ranged request went up: the response bytes
                // forwarded on this connection so far (the ranged answer starts after them).
                let ranged_at = Arc::new(Mutex::new(None::<u64>));
                // Requests: client -> registry, heads logged.
                let (mut c, mut s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (log, ranged, conn_down) = (log.clone(), ranged_at.clone(), Arc::new(AtomicU64::new(0)));
                let conn_down2 = conn_down.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut text = String::new();
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                        while let Some(end) = text.find("\r\n\r\n") {
                            let head: String = text.drain(..end + 4).collect();
                            let line = head.lines().next().unwrap_or("").to_string();
                            let range = head
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                                .map(|l| l[6..].trim().to_string());
                            if let Some(r) = &range {
                                *ranged.lock().unwrap() = Some(conn_down2.load(Ordering::SeqCst));
                                log.lock().unwrap().push(format!("{line} range={r}"));
                            } else {
                                log.lock().unwrap().push(line);
                            }
                        }
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
                // Responses: registry -> client, counted, cut or corrupted.
                let (mut c, mut s) = (client, server);
                let (down, cuts_left) = (down2.clone(), cuts_left.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut corrupted = false;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let before = conn_down.load(Ordering::SeqCst);
                        let chunk = &mut buf[..n];
                        if faults.corrupt_ranged && !corrupted {
                            // 4 KiB into the ranged answer: well past its headers.
                            if let Some(at) = *ranged_at.lock().unwrap() {
                                let target = at + 4096;
                                if target >= before && target < before + n as u64 {
                                    chunk[(target - before) as usize] ^= 0x5a;
                                    corrupted = true;
                                }
                            }
                        }
                        let over = before + n as u64 > faults.cut_after;
                        if over
                            && cuts_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                                .is_ok()
                        {
                            let keep = faults.cut_after.saturating_sub(before) as usize;
                            let _ = c.write_all(&chunk[..keep]);
                            down.fetch_add(keep as u64, Ordering::SeqCst);
                            break;
                        }
                        if c.write_all(chunk).is_err() {
                            break;
                        }
                        conn_down.fetch_add(n as u64, Ordering::SeqCst);
                        down.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
        });
        FaultProxy { host, requests, down, stop, thread: Some(thread) }
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(RegistryConfig::default().with_insecure_registry(&self.host)).unwrap()
    }

    pub fn blob_requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|r| r.contains("/blobs/")).cloned().collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
