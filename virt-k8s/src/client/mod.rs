//! A client of the local node's API (docs/node-api.md): what `virtctl` is built on, and what an
//! embedder drives a node with.
//!
//! * [`AsyncNodeClient`] speaks HTTP/1.1 (hyper 1, one connection per request) over the node's unix
//!   socket or over TCP with a bearer token; [`NodeClient`] is the same API blocking, on a small tokio
//!   runtime of its own.
//! * Objects are KubeVirt's types from [`virt_core::model`]; what the node sends back is decoded
//!   leniently (fields this version does not know are ignored), what is sent is the caller's.
//! * A refusal is the node's Kubernetes [`Status`] in [`ClientError::Status`], with its `message`,
//!   `reason` and `code`.
//! * [`manifest`] loads `-f` files strictly (unknown fields named by path) before anything is sent;
//!   [`output`] formats tables and YAML like `kubectl get`; [`console`] is the serial console's byte
//!   stream and the terminal attach with the `^]` escape.
//!
//! ```no_run
//! use virt_k8s::client::{Endpoint, NodeClient};
//!
//! let client = NodeClient::new(Endpoint::from_env(None)?, None)?;
//! client.start("default", "testvm")?;
//! for vm in client.list_vms(Some("default"))? {
//!     let status = vm.status.as_ref().and_then(|s| s.printable_status.as_deref());
//!     println!("{} {}", vm.metadata.name.unwrap_or_default(), status.unwrap_or("<none>"));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod console;
mod endpoint;
mod kind;
pub mod kubeconfig;
pub mod manifest;
pub mod output;
pub mod portforward;
mod status;
mod transport;
mod types;
pub mod vnc;

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::registry::segment;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use virt_core::api::{self, Decoder, FieldValidation, LoadError, LoadOptions};
use virt_core::model::{VirtualMachine, VirtualMachineInstance};
use virt_storage::cdi::DataVolume;

pub use console::{AttachEnd, Console, ConsoleError, ConsoleReader, ConsoleStream, ConsoleWriter};
pub use endpoint::{Endpoint, EndpointError, DEFAULT_ENDPOINT, ENV_ENDPOINT, ENV_TOKEN};
pub use kind::Kind;
pub use status::Status;
pub use transport::Conn;
pub use types::{Event, Namespace, NamespaceStatus, ObjectReference, Version};

/// The annotation `apply` keeps the applied object in, as `kubectl apply` does.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How long a request may take by default (connect, send, and read the whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a list of many VMs is a few MiB).
const MAX_BODY: usize = 64 << 20;

/// Why a request to the node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is malformed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A kubeconfig cannot be used.
    #[error(transparent)]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    /// A CA certificate cannot be used.
    #[error("the node's CA certificate: {0}")]
    Ca(String),
    /// No connection: no socket, connection refused, timed out.
    #[error("cannot reach the node at {endpoint}: {source}{}", unreachable_hint(source))]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why connecting failed.
        source: io::Error,
    },
    /// The node refused the request with a `Status`.
    #[error("{method} {path}: {status}")]
    Status {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The node's answer.
        status: Box<Status>,
    },
    /// The node answered an error without a `Status` body.
    #[error("{method} {path}: HTTP {code}: {body}")]
    Unexpected {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The HTTP code.
        code: u16,
        /// The start of the body, as text.
        body: String,
    },
    /// The HTTP exchange broke off.
    #[error("{method} {path} on {endpoint}: {reason}")]
    Http {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("{method} {path} on {endpoint}: no answer within {after:?}")]
    Timeout {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// The endpoint.
        endpoint: String,
        /// The time allowed.
        after: Duration,
    },
    /// The node's answer is not the JSON expected.
    #[error("{method} {path}: cannot decode the node's answer: {message}")]
    Decode {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong, with the field path.
        message: String,
    },
    /// The object given cannot be sent (no kind, no name, a kind the node does not serve).
    #[error("{object}: {reason}")]
    Object {
        /// The object, as `Kind namespace/name` as far as known.
        object: String,
        /// What is wrong.
        reason: String,
    },
    /// The request cannot be built (a token that is not a valid header value).
    #[error("{method} {path}: {reason}")]
    Request {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The blocking client's runtime could not start.
    #[error("starting the node client's I/O runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The console websocket could not be opened.
    #[error("console of {namespace}/{name} on {endpoint}: {reason}")]
    WebSocket {
        /// The VMI's namespace.
        namespace: String,
        /// The VMI.
        name: String,
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The console session failed.
    #[error(transparent)]
    Console(#[from] ConsoleError),
    /// A port forward (`virtctl port-forward`, `ssh`) failed.
    #[error(transparent)]
    PortForward(#[from] portforward::PortForwardError),
    /// The local VNC proxy (`virtctl vnc`) failed.
    #[error("VNC proxy {what}: {reason}")]
    Vnc {
        /// What it was doing (e.g. `listening on 127.0.0.1:5900`).
        what: String,
        /// What failed.
        reason: String,
    },
}

impl ClientError {
    /// The node's `Status`, when it refused the request.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::Status { status, .. } => Some(status.as_ref()),
            _ => None,
        }
    }

    /// Whether the node said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(Status::is_not_found)
    }
}

fn unreachable_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            "; is the node daemon running? Start it with `virt-node`, or point --server (or VIRT_NODE) \
             at a running node"
        }
        io::ErrorKind::PermissionDenied => {
            "; this user may not open the node's socket (run as root or as a member of its group)"
        }
        _ => "",
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The object did not exist and was created.
    Created,
    /// The object existed and was replaced.
    Configured,
    /// The object existed as applied last time; nothing was sent.
    Unchanged,
}

impl ApplyOutcome {
    /// `created`, `configured` or `unchanged`, as kubectl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn subresource_path(kind: Kind, namespace: &str, name: &str, sub: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/{}/{}/{sub}",
        segment(namespace),
        kind.plural(),
        segment(name)
    )
}

/// `Kind namespace/name` (or `Kind name`) of an object given to create or apply, for messages.
fn describe_object(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let name = name.or_else(|| meta.and_then(|m| m.get("generateName")).and_then(Value::as_str));
    match (meta.and_then(|m| m.get("namespace")).and_then(Value::as_str), name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => format!("{kind} <unnamed>"),
    }
}

/// The kind of an object given to create or apply.
fn kind_of(object: &Value) -> Result<Kind, ClientError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    Kind::of(api_version, kind).ok_or_else(|| ClientError::Object {
        object: describe_object(object),
        reason: format!(
            "apiVersion {api_version:?} kind {kind:?} is not served by the node (it stores kubevirt.io/v1 \
             VirtualMachine and VirtualMachineInstance, and v1 Namespace)"
        ),
    })
}

/// Adds `apiVersion` and `kind` to an item of a list that left them out, as Kubernetes lists may.
fn fill_type_meta(value: &mut Value, kind: Kind) {
    if let Value::Object(m) = value {
        m.entry("apiVersion").or_insert_with(|| Value::String(kind.api_version().to_string()));
        m.entry("kind").or_insert_with(|| Value::String(kind.name().to_string()));
    }
}

fn decode_message(e: LoadError) -> String {
    match e {
        LoadError::Decode { errors, .. } => {
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

/// A request: method and path, kept for errors.
struct Call<'a> {
    method: Method,
    path: &'a str,
}

impl Call<'_> {
    fn decode_error(&self, message: impl Into<String>) -> ClientError {
        ClientError::Decode {
            method: self.method.to_string(),
            path: self.path.to_string(),
            message: message.into(),
        }
    }

    /// Decodes the answer as `T`, ignoring fields this version does not know.
    fn decode<T: DeserializeOwned>(&self, body: &[u8], kind: Option<Kind>) -> Result<T, ClientError> {
        let mut value: Value = serde_json::from_slice(body).map_err(|e| self.decode_error(e.to_string()))?;
        api::prune_nulls(&mut value);
        if let Some(kind) = kind {
            fill_type_meta(&mut value, kind);
        }
        let options = LoadOptions { field_validation: FieldValidation::Ignore };
        Decoder::new(&options, 1).decode(value, "").map_err(|e| self.decode_error(decode_message(e)))
    }

    /// Decodes a `...List` answer's `items` as `T`.
    fn decode_list<T: DeserializeOwned>(
        &self,
        body: &[u8],
        kind: Option<Kind>,
    ) -> Result<Vec<T>, ClientError> {
        let mut value: Value = serde_json::from_slice(body).map_err(|e| self.decode_error(e.to_string()))?;
        api::prune_nulls(&mut value);
        let items = match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => Vec::new(),
            Some(other) => {
                return Err(
                    self.decode_error(format!("items: expected a list, found {}", api::type_name(&other)))
                )
            }
        };
        let options = LoadOptions { field_validation: FieldValidation::Ignore };
        items
            .into_iter()
            .enumerate()
            .map(|(i, mut item)| {
                if let Some(kind) = kind {
                    fill_type_meta(&mut item, kind);
                }
                Decoder::new(&options, 1)
                    .decode(item, &format!("items[{i}]"))
                    .map_err(|e| self.decode_error(decode_message(e)))
            })
            .collect()
    }
}

/// The node's API, async. Cheap to clone; each request opens its own connection.
#[derive(Clone)]
pub struct AsyncNodeClient {
    endpoint: Endpoint,
    token: Option<String>,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for AsyncNodeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncNodeClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AsyncNodeClient {
    /// A client of the node at `endpoint`; `token` is sent as `Authorization: Bearer` (required on
    /// TCP, ignored by the node on its unix socket).
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Self {
        Self { endpoint, token: token.filter(|t| !t.is_empty()), timeout: DEFAULT_TIMEOUT, tls: None }
    }

    /// Trusts the CA certificates in `pem` (and only them) for an `https://` endpoint.
    pub fn with_ca_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| ClientError::Ca(e.to_string()))?;
            roots.add(cert).map_err(|e| ClientError::Ca(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Ca("no CERTIFICATE in the PEM data".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(Arc::new(cfg));
        Ok(self)
    }

    /// A client of the node a kubeconfig's context names (`context`, else its current context):
    /// its server, CA and token; `token` (`--token`) overrides the file's.
    pub fn from_kubeconfig(
        path: &std::path::Path,
        context: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, ClientError> {
        let k = kubeconfig::Kubeconfig::load(path, context)?;
        let endpoint = Endpoint::parse(&k.server)?;
        let client = Self::new(endpoint, token.map(str::to_string).or(k.token));
        match &k.ca_pem {
            Some(pem) => client.with_ca_pem(pem),
            None => Ok(client),
        }
    }

    /// A client of the node named by `server` (`--server`), else `VIRT_NODE`, else the default
    /// socket; the token is `token` (`--token`), else `VIRT_TOKEN`.
    pub fn from_env(server: Option<&str>, token: Option<&str>) -> Result<Self, ClientError> {
        let endpoint = Endpoint::from_env(server)?;
        let token = token.map(str::to_string).or_else(|| std::env::var(ENV_TOKEN).ok());
        Ok(Self::new(endpoint, token))
    }

    /// Sets how long one request may take (connect, send, read the answer).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Opens a connection to the node.
    pub async fn connect(&self) -> Result<Conn, ClientError> {
        Conn::connect(&self.endpoint, self.tls.as_ref(), CONNECT_TIMEOUT.min(self.timeout))
            .await
            .map_err(|source| ClientError::Unreachable { endpoint: self.endpoint.to_string(), source })
    }

    /// Sends one request and returns the body of a 2xx answer; any other answer is an error
    /// carrying the node's `Status`.
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Bytes, ClientError> {
        let fail = |reason: String| ClientError::Http {
            method: method.to_string(),
            path: path.to_string(),
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let exchange = async {
            let conn = self.connect().await?;
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn))
                .await
                .map_err(|e| fail(format!("HTTP handshake: {e}")))?;
            // Drives the connection until the answer is read and `sender` dropped.
            tokio::spawn(connection);
            let request = self.build_request(&method, path, body)?;
            let response = sender.send_request(request).await.map_err(|e| fail(e.to_string()))?;
            let code = response.status();
            let bytes = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, ClientError>((code, bytes))
        };
        let (code, bytes) =
            tokio::time::timeout(self.timeout, exchange).await.map_err(|_| ClientError::Timeout {
                method: method.to_string(),
                path: path.to_string(),
                endpoint: self.endpoint.to_string(),
                after: self.timeout,
            })??;
        if code.is_success() {
            return Ok(bytes);
        }
        Err(match Status::from_body(&bytes, code.as_u16()) {
            Some(status) => ClientError::Status {
                method: method.to_string(),
                path: path.to_string(),
                status: Box::new(status),
            },
            None => ClientError::Unexpected {
                method: method.to_string(),
                path: path.to_string(),
                code: code.as_u16(),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).trim().to_string(),
            },
        })
    }

    fn build_request(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Full<Bytes>>, ClientError> {
        let bad = |reason: String| ClientError::Request {
            method: method.to_string(),
            path: path.to_string(),
            reason,
        };
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, self.endpoint.host_header())
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, concat!("virtctl/", env!("CARGO_PKG_VERSION")));
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| bad("the bearer token holds characters not allowed in a header".to_string()))?;
            builder = builder.header(AUTHORIZATION, value);
        }
        let body = match body {
            Some(v) => {
                builder = builder.header(CONTENT_TYPE, "application/json");
                let bytes = serde_json::to_vec(v).map_err(|e| bad(format!("encoding the body: {e}")))?;
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        builder.body(body).map_err(|e| bad(e.to_string()))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str, kind: Option<Kind>) -> Result<T, ClientError> {
        let body = self.send(Method::GET, path, None).await?;
        Call { method: Method::GET, path }.decode(&body, kind)
    }

    async fn list<T: DeserializeOwned>(&self, path: &str, kind: Option<Kind>) -> Result<Vec<T>, ClientError> {
        let body = self.send(Method::GET, path, None).await?;
        Call { method: Method::GET, path }.decode_list(&body, kind)
    }

    /// The node's version (`GET /version`).
    pub async fn version(&self) -> Result<Version, ClientError> {
        self.get_json("/version", None).await
    }

    /// Creates `object` (a VirtualMachine, VirtualMachineInstance or Namespace, as JSON) in
    /// `namespace` (ignored for a Namespace) and returns what the node stored (`null` if the node
    /// answered without a body).
    pub async fn create(&self, object: &Value, namespace: &str) -> Result<Value, ClientError> {
        let kind = kind_of(object)?;
        let path = kind.collection_path(Some(namespace));
        let body = self.send(Method::POST, &path, Some(object)).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            // A node may answer 201 without the object.
            return Ok(Value::Null);
        }
        Call { method: Method::POST, path: &path }.decode(&body, None)
    }

    /// `kubectl apply`: creates `object` if it does not exist; otherwise replaces it (PUT) unless it
    /// is as applied last time. The applied object is kept in the
    /// [`LAST_APPLIED_ANNOTATION`] annotation, as kubectl does. VMIs and namespaces are not
    /// updated in place: an existing namespace is `Unchanged`, a changed VMI is an error.
    pub async fn apply(&self, object: &Value, namespace: &str) -> Result<ApplyOutcome, ClientError> {
        let kind = kind_of(object)?;
        let name = object
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ClientError::Object {
                object: describe_object(object),
                reason: "apply needs metadata.name (generateName is for create)".to_string(),
            })?;
        let mut applied = object.clone();
        if let Some(Value::Object(annotations)) =
            applied.get_mut("metadata").and_then(|m| m.get_mut("annotations"))
        {
            annotations.remove(LAST_APPLIED_ANNOTATION);
        }
        let record = serde_json::to_string(&applied).map_err(|e| ClientError::Object {
            object: describe_object(object),
            reason: format!("encoding: {e}"),
        })?;
        let mut desired = applied;
        set_annotation(&mut desired, LAST_APPLIED_ANNOTATION, &record);

        let path = kind.object_path(namespace, name);
        let existing = match self.send(Method::GET, &path, None).await {
            Ok(body) => body,
            Err(e) if e.is_not_found() => {
                self.create(&desired, namespace).await?;
                return Ok(ApplyOutcome::Created);
            }
            Err(e) => return Err(e),
        };
        let existing: Value = Call { method: Method::GET, path: &path }.decode(&existing, None)?;
        let metadata = existing.get("metadata");
        let last = metadata
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(LAST_APPLIED_ANNOTATION))
            .and_then(Value::as_str);
        if last == Some(record.as_str()) || kind == Kind::Namespace {
            return Ok(ApplyOutcome::Unchanged);
        }
        if !kind.resource().serves("update") {
            return Err(ClientError::Object {
                object: format!("{kind} {namespace}/{name}"),
                reason: format!(
                    "exists and differs from the applied object; the node does not update {}s in place: \
                     delete it and apply again",
                    kind.name()
                ),
            });
        }
        if let Some(rv) = metadata.and_then(|m| m.get("resourceVersion")).and_then(Value::as_str) {
            if let Some(Value::Object(m)) = desired.get_mut("metadata") {
                m.insert("resourceVersion".to_string(), Value::String(rv.to_string()));
            }
        }
        self.send(Method::PUT, &path, Some(&desired)).await?;
        Ok(ApplyOutcome::Configured)
    }

    /// One VirtualMachine.
    pub async fn get_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, ClientError> {
        let kind = Kind::VirtualMachine;
        self.get_json(&kind.object_path(namespace, name), Some(kind)).await
    }

    /// The VirtualMachines of `namespace`, or of all namespaces with `None`.
    pub async fn list_vms(&self, namespace: Option<&str>) -> Result<Vec<VirtualMachine>, ClientError> {
        let kind = Kind::VirtualMachine;
        self.list(&kind.collection_path(namespace), Some(kind)).await
    }

    /// One VirtualMachineInstance.
    pub async fn get_vmi(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, ClientError> {
        let kind = Kind::VirtualMachineInstance;
        self.get_json(&kind.object_path(namespace, name), Some(kind)).await
    }

    /// The VirtualMachineInstances of `namespace`, or of all namespaces with `None`.
    pub async fn list_vmis(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<VirtualMachineInstance>, ClientError> {
        let kind = Kind::VirtualMachineInstance;
        self.list(&kind.collection_path(namespace), Some(kind)).await
    }

    /// Deletes an object (`namespace` is ignored for a Namespace). Deleting a VMI stops it.
    pub async fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &kind.object_path(namespace, name), None).await.map(drop)
    }

    /// The namespaces.
    pub async fn namespaces(&self) -> Result<Vec<Namespace>, ClientError> {
        self.list(&Kind::Namespace.collection_path(None), Some(Kind::Namespace)).await
    }

    /// The events recorded in `namespace`.
    pub async fn events(&self, namespace: &str) -> Result<Vec<Event>, ClientError> {
        self.list(&format!("/api/v1/namespaces/{}/events", segment(namespace)), None).await
    }

    // ---- CDI (cdi.kubevirt.io/v1beta1; docs/node-api.md) ----

    /// The objects of CDI resource `plural` (`datavolumes`, `datasources`, `dataimportcrons`) in
    /// `namespace`, or in all namespaces with `None`.
    pub async fn cdi_list<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        self.list(&cdi_path(plural, namespace, None), None).await
    }

    /// One CDI object.
    pub async fn cdi_get<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<T, ClientError> {
        self.get_json(&cdi_path(plural, Some(namespace), Some(name)), None).await
    }

    /// Creates a CDI object in `namespace`; returns what the node stored.
    pub async fn cdi_create<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        object: &T,
    ) -> Result<R, ClientError> {
        let path = cdi_path(plural, Some(namespace), None);
        let value = serde_json::to_value(object).map_err(|e| ClientError::Request {
            method: "POST".to_string(),
            path: path.clone(),
            reason: format!("encoding the object: {e}"),
        })?;
        let body = self.send(Method::POST, &path, Some(&value)).await?;
        Call { method: Method::POST, path: &path }.decode(&body, None)
    }

    /// Deletes a CDI object (a DataVolume's volume goes with it).
    pub async fn cdi_delete(&self, plural: &str, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &cdi_path(plural, Some(namespace), Some(name)), None).await.map(drop)
    }

    /// One DataVolume.
    pub async fn get_data_volume(&self, namespace: &str, name: &str) -> Result<DataVolume, ClientError> {
        self.cdi_get("datavolumes", namespace, name).await
    }

    /// The DataVolumes of `namespace`, or of all namespaces with `None`.
    pub async fn list_data_volumes(&self, namespace: Option<&str>) -> Result<Vec<DataVolume>, ClientError> {
        self.cdi_list("datavolumes", namespace).await
    }

    /// Creates a DataVolume in `namespace`.
    pub async fn create_data_volume(
        &self,
        namespace: &str,
        dv: &DataVolume,
    ) -> Result<DataVolume, ClientError> {
        self.cdi_create("datavolumes", namespace, dv).await
    }

    /// Deletes a DataVolume and its volume.
    pub async fn delete_data_volume(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.cdi_delete("datavolumes", namespace, name).await
    }

    /// A token for one upload into DataVolume `claim` (CDI's UploadTokenRequest).
    pub async fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, ClientError> {
        let path = format!(
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{}/uploadtokenrequests",
            segment(namespace)
        );
        let request = serde_json::json!({
            "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
            "kind": "UploadTokenRequest",
            "metadata": { "name": claim, "namespace": namespace },
            "spec": { "pvcName": claim },
        });
        let body = self.send(Method::POST, &path, Some(&request)).await?;
        let call = Call { method: Method::POST, path: &path };
        let answer: Value = serde_json::from_slice(&body).map_err(|e| call.decode_error(e.to_string()))?;
        answer
            .pointer("/status/token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| call.decode_error("status.token: required field is missing"))
    }

    /// Where the node takes uploads (CDIConfig's `status.uploadProxyURL`), if it says.
    pub async fn upload_proxy_url(&self) -> Result<Option<String>, ClientError> {
        let config: Value = self.get_json(&cdi_path("cdiconfigs", None, Some("config")), None).await?;
        Ok(config.pointer("/status/uploadProxyURL").and_then(Value::as_str).map(str::to_string))
    }

    async fn subresource(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        sub: &str,
        body: Value,
    ) -> Result<(), ClientError> {
        self.send(Method::PUT, &subresource_path(kind, namespace, name, sub), Some(&body)).await.map(drop)
    }

    /// Starts a VirtualMachine.
    pub async fn start(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.subresource(Kind::VirtualMachine, namespace, name, "start", Value::Object(Map::new())).await
    }

    /// Stops a VirtualMachine; `grace_period` overrides its termination grace period (0 forces).
    pub async fn stop(
        &self,
        namespace: &str,
        name: &str,
        grace_period: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = grace_body("gracePeriod", grace_period);
        self.subresource(Kind::VirtualMachine, namespace, name, "stop", body).await
    }

    /// Restarts a VirtualMachine; `grace_period` overrides its grace period (0 forces).
    pub async fn restart(
        &self,
        namespace: &str,
        name: &str,
        grace_period: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = grace_body("gracePeriodSeconds", grace_period);
        self.subresource(Kind::VirtualMachine, namespace, name, "restart", body).await
    }

    /// Pauses a VirtualMachineInstance (a VM's instance has the VM's name).
    pub async fn pause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let empty = Value::Object(Map::new());
        self.subresource(Kind::VirtualMachineInstance, namespace, name, "pause", empty).await
    }

    /// Unpauses a VirtualMachineInstance.
    pub async fn unpause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let empty = Value::Object(Map::new());
        self.subresource(Kind::VirtualMachineInstance, namespace, name, "unpause", empty).await
    }

    /// Soft-reboots a VirtualMachineInstance (ACPI power button; the machine starts again in place).
    pub async fn soft_reboot(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let empty = Value::Object(Map::new());
        self.subresource(Kind::VirtualMachineInstance, namespace, name, "softreboot", empty).await
    }

    /// Opens the serial console of a VMI: the ring buffer first, then live output; bytes sent are
    /// keystrokes. The node allows one session per VMI (409 `Conflict` for a second one).
    pub async fn console(&self, namespace: &str, name: &str) -> Result<Console, ClientError> {
        self.byte_socket(namespace, name, "console").await
    }

    /// Opens a VMI's VNC display: the RFB byte stream of its display as a websocket (KubeVirt's
    /// `vnc` subresource); [`Console::send`] and [`Console::recv`] carry the raw bytes.
    pub async fn vnc(&self, namespace: &str, name: &str) -> Result<Console, ClientError> {
        self.byte_socket(namespace, name, "vnc").await
    }

    /// Opens a websocket subresource of a VMI that carries raw bytes (`console`, `vnc`).
    async fn byte_socket(&self, namespace: &str, name: &str, sub: &str) -> Result<Console, ClientError> {
        let path = subresource_path(Kind::VirtualMachineInstance, namespace, name, sub);
        let ws = self.websocket(path, namespace, name).await?;
        Ok(Console::new(format!("{namespace}/{name}"), ws))
    }

    /// Opens the websocket at `path` (a subresource of `namespace/name`); a refusal is the node's
    /// `Status`.
    pub(crate) async fn websocket(
        &self,
        path: String,
        namespace: &str,
        name: &str,
    ) -> Result<tokio_tungstenite::WebSocketStream<transport::Conn>, ClientError> {
        let ws_error = |reason: String| ClientError::WebSocket {
            namespace: namespace.to_string(),
            name: name.to_string(),
            endpoint: self.endpoint.to_string(),
            reason,
        };
        let url = format!("ws://{}{path}", self.endpoint.host_header());
        let mut request = url.into_client_request().map_err(|e| ws_error(e.to_string()))?;
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ws_error("the bearer token holds characters not allowed in a header".into()))?;
            request.headers_mut().insert(AUTHORIZATION, value);
        }
        let conn = self.connect().await?;
        let handshake = tokio_tungstenite::client_async(request, conn);
        let result =
            tokio::time::timeout(self.timeout, handshake).await.map_err(|_| ClientError::Timeout {
                method: "GET".to_string(),
                path: path.clone(),
                endpoint: self.endpoint.to_string(),
                after: self.timeout,
            })?;
        match result {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let code = response.status().as_u16();
                let body = response.body().as_deref().unwrap_or_default();
                Err(match Status::from_body(body, code) {
                    Some(status) => {
                        ClientError::Status { method: "GET".to_string(), path, status: Box::new(status) }
                    }
                    None => ClientError::Unexpected {
                        method: "GET".to_string(),
                        path,
                        code,
                        body: String::from_utf8_lossy(&body[..body.len().min(512)]).trim().to_string(),
                    },
                })
            }
            Err(e) => Err(ws_error(e.to_string())),
        }
    }
}

/// A CDI path: `/apis/cdi.kubevirt.io/v1beta1[/namespaces/NS]/PLURAL[/NAME]`.
fn cdi_path(plural: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let mut p = "/apis/cdi.kubevirt.io/v1beta1".to_string();
    if let Some(ns) = namespace {
        p.push_str(&format!("/namespaces/{}", segment(ns)));
    }
    p.push('/');
    p.push_str(&segment(plural));
    if let Some(n) = name {
        p.push('/');
        p.push_str(&segment(n));
    }
    p
}

fn grace_body(field: &str, grace_period: Option<u64>) -> Value {
    let mut m = Map::new();
    if let Some(g) = grace_period {
        m.insert(field.to_string(), Value::from(g));
    }
    Value::Object(m)
}

fn set_annotation(object: &mut Value, key: &str, value: &str) {
    let Value::Object(o) = object else { return };
    let meta = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(a) = annotations {
        a.insert(key.to_string(), Value::String(value.to_string()));
    }
}

/// The node's API, blocking: [`AsyncNodeClient`] on a one-worker tokio runtime of its own.
/// Do not call it from async code (it blocks the calling thread); use [`NodeClient::asynchronous`].
#[derive(Debug, Clone)]
pub struct NodeClient {
    runtime: Arc<tokio::runtime::Runtime>,
    inner: AsyncNodeClient,
}

impl NodeClient {
    /// A client of the node at `endpoint`, with an optional bearer token.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_client(AsyncNodeClient::new(endpoint, token))
    }

    /// A client from `--server`/`VIRT_NODE`/the default socket and `--token`/`VIRT_TOKEN`.
    pub fn from_env(server: Option<&str>, token: Option<&str>) -> Result<Self, ClientError> {
        Self::with_client(AsyncNodeClient::from_env(server, token)?)
    }

    /// Wraps an async client.
    pub fn with_client(inner: AsyncNodeClient) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("virt-node-client")
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Self { runtime: Arc::new(runtime), inner })
    }

    /// Sets how long one request may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.with_timeout(timeout);
        self
    }

    /// The async client inside.
    pub fn asynchronous(&self) -> &AsyncNodeClient {
        &self.inner
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// See [`AsyncNodeClient::version`].
    pub fn version(&self) -> Result<Version, ClientError> {
        self.block(self.inner.version())
    }

    /// See [`AsyncNodeClient::create`].
    pub fn create(&self, object: &Value, namespace: &str) -> Result<Value, ClientError> {
        self.block(self.inner.create(object, namespace))
    }

    /// See [`AsyncNodeClient::apply`].
    pub fn apply(&self, object: &Value, namespace: &str) -> Result<ApplyOutcome, ClientError> {
        self.block(self.inner.apply(object, namespace))
    }

    /// See [`AsyncNodeClient::get_vm`].
    pub fn get_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, ClientError> {
        self.block(self.inner.get_vm(namespace, name))
    }

    /// See [`AsyncNodeClient::list_vms`].
    pub fn list_vms(&self, namespace: Option<&str>) -> Result<Vec<VirtualMachine>, ClientError> {
        self.block(self.inner.list_vms(namespace))
    }

    /// See [`AsyncNodeClient::get_vmi`].
    pub fn get_vmi(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, ClientError> {
        self.block(self.inner.get_vmi(namespace, name))
    }

    /// See [`AsyncNodeClient::list_vmis`].
    pub fn list_vmis(&self, namespace: Option<&str>) -> Result<Vec<VirtualMachineInstance>, ClientError> {
        self.block(self.inner.list_vmis(namespace))
    }

    /// See [`AsyncNodeClient::delete`].
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.delete(kind, namespace, name))
    }

    /// See [`AsyncNodeClient::namespaces`].
    pub fn namespaces(&self) -> Result<Vec<Namespace>, ClientError> {
        self.block(self.inner.namespaces())
    }

    /// See [`AsyncNodeClient::events`].
    pub fn events(&self, namespace: &str) -> Result<Vec<Event>, ClientError> {
        self.block(self.inner.events(namespace))
    }

    /// See [`AsyncNodeClient::cdi_list`].
    pub fn cdi_list<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        self.block(self.inner.cdi_list(plural, namespace))
    }

    /// See [`AsyncNodeClient::cdi_get`].
    pub fn cdi_get<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<T, ClientError> {
        self.block(self.inner.cdi_get(plural, namespace, name))
    }

    /// See [`AsyncNodeClient::cdi_create`].
    pub fn cdi_create<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        object: &T,
    ) -> Result<R, ClientError> {
        self.block(self.inner.cdi_create(plural, namespace, object))
    }

    /// See [`AsyncNodeClient::cdi_delete`].
    pub fn cdi_delete(&self, plural: &str, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.cdi_delete(plural, namespace, name))
    }

    /// See [`AsyncNodeClient::get_data_volume`].
    pub fn get_data_volume(&self, namespace: &str, name: &str) -> Result<DataVolume, ClientError> {
        self.block(self.inner.get_data_volume(namespace, name))
    }

    /// See [`AsyncNodeClient::list_data_volumes`].
    pub fn list_data_volumes(&self, namespace: Option<&str>) -> Result<Vec<DataVolume>, ClientError> {
        self.block(self.inner.list_data_volumes(namespace))
    }

    /// See [`AsyncNodeClient::create_data_volume`].
    pub fn create_data_volume(&self, namespace: &str, dv: &DataVolume) -> Result<DataVolume, ClientError> {
        self.block(self.inner.create_data_volume(namespace, dv))
    }

    /// See [`AsyncNodeClient::delete_data_volume`].
    pub fn delete_data_volume(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.delete_data_volume(namespace, name))
    }

    /// See [`AsyncNodeClient::upload_token`].
    pub fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, ClientError> {
        self.block(self.inner.upload_token(namespace, claim))
    }

    /// See [`AsyncNodeClient::upload_proxy_url`].
    pub fn upload_proxy_url(&self) -> Result<Option<String>, ClientError> {
        self.block(self.inner.upload_proxy_url())
    }

    /// See [`AsyncNodeClient::start`].
    pub fn start(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.start(namespace, name))
    }

    /// See [`AsyncNodeClient::stop`].
    pub fn stop(&self, namespace: &str, name: &str, grace_period: Option<u64>) -> Result<(), ClientError> {
        self.block(self.inner.stop(namespace, name, grace_period))
    }

    /// See [`AsyncNodeClient::restart`].
    pub fn restart(&self, namespace: &str, name: &str, grace_period: Option<u64>) -> Result<(), ClientError> {
        self.block(self.inner.restart(namespace, name, grace_period))
    }

    /// See [`AsyncNodeClient::pause`].
    pub fn pause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.pause(namespace, name))
    }

    /// See [`AsyncNodeClient::unpause`].
    pub fn unpause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.unpause(namespace, name))
    }

    /// See [`AsyncNodeClient::soft_reboot`].
    pub fn soft_reboot(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.soft_reboot(namespace, name))
    }

    /// The serial console as a blocking byte stream (`Read` + `Write`, or split into halves for
    /// two threads). See [`AsyncNodeClient::console`].
    pub fn console(&self, namespace: &str, name: &str) -> Result<ConsoleStream, ClientError> {
        let console = self.block(self.inner.console(namespace, name))?;
        Ok(ConsoleStream::new(console, self.runtime.clone()))
    }

    /// Serves a local VNC port for `namespace/name`'s display (see [`vnc::proxy`]): binds
    /// `address:port` (0 for a free port), calls `listening` with the bound address, then serves
    /// viewers until the process ends (with `once`, until the first viewer leaves).
    pub fn vnc_proxy(
        &self,
        namespace: &str,
        name: &str,
        address: std::net::IpAddr,
        port: u16,
        once: bool,
        listening: impl FnOnce(std::net::SocketAddr),
    ) -> Result<(), ClientError> {
        let inner = self.inner.clone();
        let (ns, n) = (namespace.to_string(), name.to_string());
        self.block(async move {
            let (listener, addr) = vnc::listen(address, port).await?;
            // Check the display before announcing the port.
            let probe = inner.vnc(&ns, &n).await?;
            drop(probe);
            listening(addr);
            vnc::proxy(inner, ns, n, listener, once).await
        })
    }

    /// Attaches this process's terminal to a VMI's serial console until `^]`, the end of standard
    /// input, the node closing the console, or SIGTERM/SIGHUP/SIGINT; see [`console::attach`].
    pub fn attach_console(&self, namespace: &str, name: &str) -> Result<AttachEnd, ClientError> {
        self.block(async {
            let console = self.inner.console(namespace, name).await?;
            Ok(console::attach(console, name).await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_paths_and_aliases() {
        for alias in ["vm", "VMs", "virtualmachine", "virtualmachines.kubevirt.io"] {
            assert_eq!(Kind::parse_resource(alias), Some(Kind::VirtualMachine), "{alias}");
        }
        for alias in ["vmi", "vmis", "virtualmachineinstance", "virtualmachineinstances"] {
            assert_eq!(Kind::parse_resource(alias), Some(Kind::VirtualMachineInstance), "{alias}");
        }
        assert_eq!(Kind::parse_resource("pods"), None);
        assert_eq!(Kind::parse_resource("dv"), Some(Kind::DataVolume));
        // Every kind has its own registry entry, and its names resolve back to it.
        for k in Kind::ALL {
            assert_eq!(k.resource().kind, k.name());
            assert_eq!(Kind::of(k.api_version(), k.name()), Some(k));
            assert_eq!(Kind::parse_resource(k.plural()), Some(k));
        }
        for k in crate::node::cdi::CdiKind::ALL {
            assert_eq!(k.registered().kind, k.name());
        }
        assert_eq!(
            Kind::VirtualMachine.object_path("default", "a b"),
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/a%20b"
        );
        assert_eq!(
            Kind::VirtualMachineInstance.collection_path(None),
            "/apis/kubevirt.io/v1/virtualmachineinstances"
        );
        assert_eq!(Kind::Namespace.object_path("ignored", "ns1"), "/api/v1/namespaces/ns1");
        assert_eq!(
            subresource_path(Kind::VirtualMachine, "d", "x", "start"),
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/start"
        );
        assert_eq!(Kind::of("kubevirt.io/v1", "VirtualMachine"), Some(Kind::VirtualMachine));
        assert_eq!(Kind::of("v1", "Namespace"), Some(Kind::Namespace));
        assert_eq!(Kind::of("kubevirt.io/v1alpha3", "VirtualMachine"), None);
        assert_eq!(cdi_path("datavolumes", None, None), "/apis/cdi.kubevirt.io/v1beta1/datavolumes");
        assert_eq!(
            cdi_path("datavolumes", Some("default"), Some("a b")),
            "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/a%20b"
        );
    }

    #[test]
    fn lists_decode_items_without_type_meta_and_name_bad_items() {
        let call = Call { method: Method::GET, path: "/apis/kubevirt.io/v1/virtualmachines" };
        let body = br#"{"kind":"VirtualMachineList","items":[
            {"metadata":{"name":"a","uid":null},"spec":{"template":{"spec":{"domain":{"devices":{}}}}},
             "status":{"printableStatus":"Stopped","someNewField":1}}]}"#;
        let vms: Vec<VirtualMachine> = call.decode_list(body, Some(Kind::VirtualMachine)).unwrap();
        assert_eq!(vms[0].kind, "VirtualMachine");
        assert_eq!(vms[0].status.as_ref().unwrap().printable_status.as_deref(), Some("Stopped"));
        let bad = br#"{"items":[{"metadata":{"name":"a"},"spec":{"running":"yes","template":{"spec":{"domain":{"devices":{}}}}}}]}"#;
        let e = call.decode_list::<VirtualMachine>(bad, Some(Kind::VirtualMachine)).unwrap_err().to_string();
        assert!(e.contains("items[0].spec.running"), "{e}");
        assert!(e.starts_with("GET /apis/kubevirt.io/v1/virtualmachines: cannot decode"), "{e}");
    }

    #[test]
    fn unreachable_names_the_endpoint_and_suggests_virt_node() {
        let dir = std::env::temp_dir().join(format!("virt-k8s-client-test-{}", std::process::id()));
        let client = NodeClient::new(Endpoint::Unix(dir.join("none.sock")), None).unwrap();
        let e = client.version().unwrap_err().to_string();
        assert!(e.contains(&format!("unix://{}", dir.join("none.sock").display())), "{e}");
        assert!(e.contains("virt-node"), "{e}");
    }

    #[test]
    fn object_kind_errors_name_the_object() {
        let pod = serde_json::json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d"}});
        let e = kind_of(&pod).unwrap_err().to_string();
        assert!(e.starts_with("Pod d/p: apiVersion \"v1\" kind \"Pod\" is not served"), "{e}");
    }

    #[test]
    fn annotation_and_grace_bodies() {
        let mut v = serde_json::json!({"metadata":{"name":"x"}});
        set_annotation(&mut v, "a/b", "c");
        assert_eq!(v["metadata"]["annotations"]["a/b"], "c");
        assert_eq!(grace_body("gracePeriod", Some(0)), serde_json::json!({"gracePeriod": 0}));
        assert_eq!(grace_body("gracePeriod", None), serde_json::json!({}));
    }
}
