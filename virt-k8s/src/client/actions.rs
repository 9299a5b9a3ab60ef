//! [`AsyncNodeClient`]'s subresources: start, stop, restart, pause, unpause, soft reboot, and the
//! console and VNC byte streams.

use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::Method;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::asynchronous::Call;
use super::AsyncNodeClient;
use super::ClientError;
use super::Console;
use super::Kind;
use super::Status;
use super::{grace_body, subresource_path};

impl AsyncNodeClient {
    pub(super) async fn subresource(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        sub: &str,
        body: Value,
    ) -> Result<(), ClientError> {
        self.send(Method::PUT, &subresource_path(kind, namespace, name, sub), Some(&body)).await.map(drop)
    }

    /// A VM verb through the subresource, else (a cluster without the subresources API) by
    /// updating the VM ([`super::cluster_verbs`]).
    async fn vm_verb(&self, namespace: &str, name: &str, sub: &str, body: Value) -> Result<(), ClientError> {
        use virt_core::lifecycle::strategy::Request;
        match self.subresource(Kind::VirtualMachine, namespace, name, sub, body).await {
            Err(e) if super::cluster_verbs::no_subresource_api(&e) => {
                let request = match sub {
                    "start" => Request::Start,
                    "stop" => Request::Stop,
                    _ => Request::Restart,
                };
                self.request_by_update(namespace, name, request).await
            }
            r => r,
        }
    }

    /// Starts a VirtualMachine.
    pub async fn start(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.vm_verb(namespace, name, "start", Value::Object(Map::new())).await
    }

    /// Stops a VirtualMachine; `grace_period` overrides its termination grace period (0 forces).
    pub async fn stop(
        &self,
        namespace: &str,
        name: &str,
        grace_period: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = grace_body("gracePeriod", grace_period);
        self.vm_verb(namespace, name, "stop", body).await
    }

    /// Restarts a VirtualMachine; `grace_period` overrides its grace period (0 forces).
    pub async fn restart(
        &self,
        namespace: &str,
        name: &str,
        grace_period: Option<u64>,
    ) -> Result<(), ClientError> {
        let body = grace_body("gracePeriodSeconds", grace_period);
        self.vm_verb(namespace, name, "restart", body).await
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

    /// A VMI's guest-agent subresource: `guestosinfo`, `userlist` or `filesystemlist` (KubeVirt's
    /// shapes, as JSON); 409 `Conflict` when no agent is connected.
    pub async fn guest_agent_info(
        &self,
        namespace: &str,
        name: &str,
        sub: &str,
    ) -> Result<Value, ClientError> {
        let path = subresource_path(Kind::VirtualMachineInstance, namespace, name, sub);
        let body = self.send(Method::GET, &path, None).await?;
        Call { method: Method::GET, path: &path }.decode(&body, None)
    }

    /// Freezes (`true`) or thaws a VMI's file systems through its guest agent.
    pub async fn fs_freeze(&self, namespace: &str, name: &str, freeze: bool) -> Result<(), ClientError> {
        let sub = if freeze { "freeze" } else { "unfreeze" };
        let empty = Value::Object(Map::new());
        self.subresource(Kind::VirtualMachineInstance, namespace, name, sub, empty).await
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
    pub(super) async fn byte_socket(
        &self,
        namespace: &str,
        name: &str,
        sub: &str,
    ) -> Result<Console, ClientError> {
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
    ) -> Result<tokio_tungstenite::WebSocketStream<super::transport::Conn>, ClientError> {
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
