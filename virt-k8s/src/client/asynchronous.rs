//! [`AsyncNodeClient`]: connecting, one request per connection, and the generic object requests
//! (create, apply, get, list, delete) and KubeVirt's kinds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::registry::segment;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde_json::Value;
use virt_core::api::{self, Decoder, FieldValidation, LoadOptions};
use virt_core::model::{VirtualMachine, VirtualMachineInstance};

use super::kubeconfig;
use super::ClientError;
use super::Conn;
use super::Endpoint;
use super::Event;
use super::Kind;
use super::Namespace;
use super::Status;
use super::Version;
use super::ENV_TOKEN;
use super::{
    decode_message, describe_object, fill_type_meta, kind_of, set_annotation, ApplyOutcome, CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT, LAST_APPLIED_ANNOTATION, MAX_BODY,
};

/// A request: method and path, kept for errors.
pub(super) struct Call<'a> {
    pub(super) method: Method,
    pub(super) path: &'a str,
}

impl Call<'_> {
    pub(super) fn decode_error(&self, message: impl Into<String>) -> ClientError {
        ClientError::Decode {
            method: self.method.to_string(),
            path: self.path.to_string(),
            message: message.into(),
        }
    }

    /// Decodes the answer as `T`, ignoring fields this version does not know.
    pub(super) fn decode<T: DeserializeOwned>(
        &self,
        body: &[u8],
        kind: Option<Kind>,
    ) -> Result<T, ClientError> {
        let mut value: Value = serde_json::from_slice(body).map_err(|e| self.decode_error(e.to_string()))?;
        api::prune_nulls(&mut value);
        if let Some(kind) = kind {
            fill_type_meta(&mut value, kind);
        }
        let options = LoadOptions { field_validation: FieldValidation::Ignore };
        Decoder::new(&options, 1).decode(value, "").map_err(|e| self.decode_error(decode_message(e)))
    }

    /// Decodes a `...List` answer's `items` as `T`.
    pub(super) fn decode_list<T: DeserializeOwned>(
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
    pub(super) endpoint: Endpoint,
    pub(super) token: Option<String>,
    pub(super) timeout: Duration,
    pub(super) tls: Option<Arc<rustls::ClientConfig>>,
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
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Bytes, ClientError> {
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

    pub(super) fn build_request(
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

    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        kind: Option<Kind>,
    ) -> Result<T, ClientError> {
        let body = self.send(Method::GET, path, None).await?;
        Call { method: Method::GET, path }.decode(&body, kind)
    }

    pub(super) async fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        kind: Option<Kind>,
    ) -> Result<Vec<T>, ClientError> {
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
}
