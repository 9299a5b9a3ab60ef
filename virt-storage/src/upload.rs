//! The upload endpoint: a token-protected HTTP endpoint that streams an uploaded disk image into a
//! volume through the import pipeline (decompression, conversion, staging), as CDI's upload proxy
//! does for `virtctl image-upload`.
//!
//! A token is issued for one volume ([`UploadServer::issue_token`], CDI's UploadTokenRequest) and is
//! good for one successful upload before it expires. `POST /v1beta1/upload` with
//! `Authorization: Bearer TOKEN` and the image as the body answers 200 once the volume is complete,
//! 401 without a valid token, 400 when the payload is not an importable image (nothing is left
//! behind), 409 when the volume exists. `GET /v1beta1/upload` with the token answers the same 200,
//! 401 or 409 without using the token, so a client can check before sending the image.

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;

use crate::import::{import, ByteSource, ImportError, ImportOptions, Opened};
use crate::volume::{VolumeError, VolumeFormat, VolumeId, VolumeProvider};

/// What a finished upload reports to whoever watches (the DataVolume controller).
pub type UploadDone = Arc<dyn Fn(&VolumeId, &Result<(), UploadFailed>) + Send + Sync>;

/// Why an upload into a volume did not complete.
#[derive(Debug, thiserror::Error)]
pub enum UploadFailed {
    /// The bytes were not an image this pool takes, or writing them failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The import task itself ended abnormally.
    #[error("import task failed: {0}")]
    Task(String),
}

struct Grant {
    volume: VolumeId,
    format: VolumeFormat,
    expires: Instant,
}

/// The upload endpoint's state: the pool, the tokens it honours, and a completion hook.
pub struct UploadServer {
    pool: Arc<dyn VolumeProvider>,
    tokens: Mutex<HashMap<String, Grant>>,
    done: Option<UploadDone>,
}

fn random_token() -> std::io::Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl UploadServer {
    /// A server writing into `pool`; `done` is told about every finished upload.
    pub fn new(pool: Arc<dyn VolumeProvider>, done: Option<UploadDone>) -> Arc<Self> {
        Arc::new(Self { pool, tokens: Mutex::new(HashMap::new()), done })
    }

    /// Issues a token that allows one upload into `volume` within `ttl`.
    pub fn issue_token(
        &self,
        volume: &VolumeId,
        format: VolumeFormat,
        ttl: Duration,
    ) -> Result<String, VolumeError> {
        volume.validate()?;
        let token = random_token().map_err(|e| VolumeError::Io {
            id: volume.clone(),
            op: "reading random bytes for a token from",
            path: "/dev/urandom".into(),
            source: e,
        })?;
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        t.retain(|_, g| g.expires > now);
        t.insert(token.clone(), Grant { volume: volume.clone(), format, expires: now + ttl });
        Ok(token)
    }

    /// The HTTP routes (`POST /v1beta1/upload`), to serve or to nest in a bigger API.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().route("/v1beta1/upload", post(upload).get(check)).with_state(self.clone())
    }

    fn take_grant(&self, headers: &HeaderMap) -> Option<Grant> {
        let token = bearer(headers)?;
        let mut t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let g = t.remove(&token)?;
        (g.expires > Instant::now()).then_some(g)
    }

    fn peek_grant(&self, headers: &HeaderMap) -> Option<VolumeId> {
        let token = bearer(headers)?;
        let t = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        t.get(&token).filter(|g| g.expires > Instant::now()).map(|g| g.volume.clone())
    }

    fn give_back(&self, headers: &HeaderMap, g: Grant) {
        if let Some(tok) =
            headers.get("authorization").and_then(|h| h.to_str().ok()).and_then(|s| s.strip_prefix("Bearer "))
        {
            self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(tok.trim().to_string(), g);
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    Some(headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?.trim().to_string())
}

/// `GET /v1beta1/upload`: says whether a token would be accepted, without using it, so that a client
/// learns of a bad token or an existing volume before it sends gigabytes.
async fn check(State(srv): State<Arc<UploadServer>>, headers: HeaderMap) -> (StatusCode, String) {
    let Some(volume) = srv.peek_grant(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            "a valid upload token is required (Authorization: Bearer TOKEN)\n".into(),
        );
    };
    match srv.pool.get(&volume) {
        Ok(Some(_)) => (StatusCode::CONFLICT, format!("volume {volume} already exists\n")),
        Ok(None) => (StatusCode::OK, format!("ready for an upload into {volume}\n")),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Reads and drops up to 8 MiB of a rejected request's body, so that a client still sending it reads
/// the answer instead of a reset connection; larger bodies are cut off.
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let mut n = 0usize;
    while let Some(Ok(c)) = stream.next().await {
        n += c.len();
        if n > 8 << 20 {
            break;
        }
    }
}

/// The client's request body broke off before its end (the import reads it as an I/O error).
#[derive(Debug, thiserror::Error)]
#[error("upload interrupted: {0}")]
struct Interrupted(#[source] axum::Error);

/// The request body as a one-shot [`ByteSource`] (an upload cannot be resumed from an offset).
struct BodySource {
    rx: Option<std::sync::mpsc::Receiver<Result<Vec<u8>, Interrupted>>>,
    total: Option<u64>,
    name: String,
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<Vec<u8>, Interrupted>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ByteSource for BodySource {
    fn open(&mut self, offset: u64) -> Result<Opened, ImportError> {
        match (offset, self.rx.take()) {
            (0, Some(rx)) => Ok(Opened {
                reader: Box::new(ChannelReader { rx, cur: Vec::new(), pos: 0 }),
                total: self.total,
            }),
            _ => Err(ImportError::NoResume { source_name: self.name.clone(), offset }),
        }
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

async fn upload(
    State(srv): State<Arc<UploadServer>>,
    headers: HeaderMap,
    body: Body,
) -> (StatusCode, String) {
    let Some(grant) = srv.take_grant(&headers) else {
        drain(body).await;
        return (
            StatusCode::UNAUTHORIZED,
            "a valid upload token is required (Authorization: Bearer TOKEN)\n".into(),
        );
    };
    match srv.pool.get(&grant.volume) {
        Ok(Some(_)) => {
            drain(body).await;
            return (StatusCode::CONFLICT, format!("volume {} already exists\n", grant.volume));
        }
        Ok(None) => {}
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
    let total = headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<u8>, Interrupted>>(16);
    let source = BodySource { rx: Some(rx), total, name: format!("upload into {}", grant.volume) };
    let pool = srv.pool.clone();
    let (volume, format) = (grant.volume.clone(), grant.format);
    let worker = tokio::task::spawn_blocking(move || {
        let opts = ImportOptions { format, max_retries: 0, ..Default::default() };
        import(pool.as_ref(), &volume, Box::new(source), &opts, &mut |_| {}).map(|_| ())
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let msg = chunk.map(|b| b.to_vec()).map_err(Interrupted);
        let failed = msg.is_err();
        let tx2 = tx.clone();
        // The import thread may stop reading early (bad payload); then sends fail and we stop.
        let sent = tokio::task::spawn_blocking(move || tx2.send(msg).is_ok()).await.unwrap_or(false);
        if !sent || failed {
            break;
        }
    }
    drop(tx);
    let result = match worker.await {
        Ok(r) => r.map_err(UploadFailed::from),
        Err(e) => Err(UploadFailed::Task(e.to_string())),
    };
    if let Some(done) = &srv.done {
        done(&grant.volume, &result);
    }
    match result {
        Ok(()) => (StatusCode::OK, format!("uploaded into {}\n", grant.volume)),
        Err(e) => {
            // The token stays usable for a retry of a failed upload.
            srv.give_back(&headers, grant);
            (StatusCode::BAD_REQUEST, format!("{e}\n"))
        }
    }
}

/// Errors of the upload client.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The image file cannot be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The endpoint refused the upload or it failed there.
    #[error("upload refused by {url}: HTTP {status}: {message}")]
    Refused {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The endpoint's explanation.
        message: String,
    },
    /// The endpoint could not be reached.
    #[error("cannot reach {url}: {message}")]
    Transport {
        /// The endpoint.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Uploads the file at `path` to the upload endpoint `url` (ending in `/v1beta1/upload`) with
/// `token`. Checks the token first (GET), then streams the file (POST); `progress(sent, total)` is
/// called as bytes go out. `insecure` skips TLS verification (self-signed endpoints).
pub fn upload_file(
    url: &str,
    token: &str,
    path: &std::path::Path,
    insecure: bool,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<String, UploadError> {
    let file_err = |source| UploadError::File { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let total = file.metadata().map_err(file_err)?.len();
    let tls = ureq::tls::TlsConfig::builder().disable_verification(insecure).build();
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).tls_config(tls).build(),
    );
    let transport = |e: ureq::Error| UploadError::Transport { url: url.to_string(), message: e.to_string() };
    let auth = format!("Bearer {token}");
    let mut check = agent.get(url).header("Authorization", &auth).call().map_err(transport)?;
    if check.status().as_u16() != 200 {
        return Err(UploadError::Refused {
            url: url.to_string(),
            status: check.status().as_u16(),
            message: check.body_mut().read_to_string().unwrap_or_default().trim().to_string(),
        });
    }
    struct Counting<'a, R> {
        inner: R,
        sent: u64,
        total: u64,
        progress: &'a mut dyn FnMut(u64, u64),
    }
    impl<R: Read> Read for Counting<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.sent += n as u64;
            (self.progress)(self.sent, self.total);
            Ok(n)
        }
    }
    let mut reader = Counting { inner: &mut file, sent: 0, total, progress };
    let mut resp = agent
        .post(url)
        .header("Authorization", &auth)
        .header("Content-Length", &total.to_string())
        .header("Content-Type", "application/octet-stream")
        .send(ureq::SendBody::from_reader(&mut reader))
        .map_err(transport)?;
    let status = resp.status().as_u16();
    let message = resp.body_mut().read_to_string().unwrap_or_default().trim().to_string();
    if status != 200 {
        return Err(UploadError::Refused { url: url.to_string(), status, message });
    }
    Ok(message)
}
