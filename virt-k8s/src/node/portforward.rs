//! KubeVirt's `portforward` subresource: a websocket carrying one TCP connection (or a UDP flow) to
//! a port of a running VMI's guest, for `virtctl port-forward` and `virtctl ssh`.
//!
//! Paths (both forms KubeVirt serves; a VM's form reaches the VMI of the same name):
//! `/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/portforward/{port}[/{protocol}]`
//! and `.../virtualmachines/{name}/portforward/{port}[/{protocol}]`, `protocol` `tcp` (default) or
//! `udp`.
//!
//! Everything is checked, and the guest dialled, before the upgrade, so that a refusal is a
//! Kubernetes `Status`: 400 for a bad port or protocol, 404 for a missing VM/VMI, 409 when it is not
//! running or has no network, 503 (504) when the guest refuses (does not answer).
//!
//! Framing (`plain.kubevirt.io`): binary messages carry the bytes. A zero-length binary message
//! means "the sender will send no more" (a TCP half-close, `shutdown(SHUT_WR)` on the other side);
//! KubeVirt's clients never send one, so they are unaffected. For UDP each message is one datagram.
//! The node pings every [`PortForwarding::keepalive`] and ends a session that stays silent (not even
//! a pong) for three intervals. Only time spent waiting on the client counts as silence: while the
//! node itself is blocked (writing to a guest that does not read, or sending to a client whose
//! window is full) no interval is counted, and missed intervals are not made up in a burst, so a
//! slow but live client never loses its connection. A ping queued behind data the client has not
//! drained yet is answered only once it has: the interval must exceed the time a client takes to
//! drain the node's send buffer (the default 30 s leaves 90 s; a 200 ms interval cut a 4 MiB echo
//! on a loaded 2-core machine).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use virt_core::lifecycle::LifecycleError;
use virt_core::model::VmiPhase;
use virt_net::dial::{DialError, Dialer, GuestStream, NetnsDialer, Protocol};
use virt_net::endpoint::{EndpointLookup, VmiEndpoint};
use virt_net::lookup::NoEndpoints;

use super::api::{status_response, ApiState};

/// What the `portforward` subresource needs: where VMIs are reached and how to dial them.
#[derive(Clone)]
pub struct PortForwarding {
    /// Where each running VMI's guest is (the node's pod network).
    pub endpoints: Arc<dyn EndpointLookup>,
    /// Opens the stream to the guest.
    pub dialer: Arc<dyn Dialer>,
    /// How often the node pings an open session.
    pub keepalive: Duration,
}

impl Default for PortForwarding {
    /// No VMI reachable yet ([`NoEndpoints`]) and the real [`NetnsDialer`].
    fn default() -> Self {
        Self {
            endpoints: Arc::new(NoEndpoints),
            dialer: Arc::new(NetnsDialer::default()),
            keepalive: KEEPALIVE,
        }
    }
}

impl PortForwarding {
    /// The real dialer in front of `endpoints`.
    pub fn new(endpoints: Arc<dyn EndpointLookup>) -> Self {
        Self { endpoints, ..Self::default() }
    }
}

/// The default ping interval.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

fn refuse(code: StatusCode, reason: &str, message: String) -> Response {
    status_response(code, reason, &message)
}

fn lifecycle_error(e: LifecycleError) -> Response {
    let code = match &e {
        LifecycleError::NotFound { .. } => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let reason = if code == StatusCode::NOT_FOUND { "NotFound" } else { "InternalError" };
    refuse(code, reason, e.to_string())
}

/// The `{port}` of the path is not a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("port {0:?}: expected a number from 1 to 65535")]
pub struct BadPort(pub String);

/// `{port}` as the path has it: 1..=65535.
pub fn parse_port(port: &str) -> Result<u16, BadPort> {
    match port.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(BadPort(port.to_string())),
    }
}

/// Which object the path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Vm,
    Vmi,
}

/// The checks before the upgrade: the port and protocol, the object, its phase, its endpoint.
fn resolve(s: &ApiState, form: Form, ns: &str, name: &str) -> Result<VmiEndpoint, Box<Response>> {
    if form == Form::Vm {
        s.lifecycle.vms().get(ns, name).map_err(|e| Box::new(lifecycle_error(e)))?;
    }
    let vmi = match s.lifecycle.vmis().get(ns, name) {
        Ok(v) => v,
        Err(LifecycleError::NotFound { .. }) if form == Form::Vm => {
            return Err(Box::new(refuse(
                StatusCode::CONFLICT,
                "Conflict",
                format!("VirtualMachine {ns}/{name} is not running (it has no VirtualMachineInstance)"),
            )))
        }
        Err(e) => return Err(Box::new(lifecycle_error(e))),
    };
    let phase = vmi.status.as_ref().and_then(|st| st.phase).unwrap_or(VmiPhase::Pending);
    if phase != VmiPhase::Running {
        return Err(Box::new(refuse(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VirtualMachineInstance {ns}/{name} is not running (phase {})", phase.as_str()),
        )));
    }
    s.portforward.endpoints.endpoint(ns, name).ok_or_else(|| {
        Box::new(refuse(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "VirtualMachineInstance {ns}/{name} has no network the node can reach (no pod \
                 network interface, or its network is not set up yet)"
            ),
        ))
    })
}

async fn serve(
    s: ApiState,
    form: Form,
    ns: String,
    name: String,
    port: String,
    protocol: Option<String>,
    ws: WebSocketUpgrade,
) -> Response {
    let (port, protocol) = match port_and_protocol(&port, protocol.as_deref()) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let keepalive = s.portforward.keepalive;
    let dialer = s.portforward.dialer.clone();
    let resolved =
        tokio::task::spawn_blocking(move || resolve(&s, form, &ns, &name).map(|e| (e, ns, name))).await;
    let (endpoint, ns, name) = match resolved {
        Ok(Ok(r)) => r,
        Ok(Err(response)) => return *response,
        Err(e) => return internal(std::io::Error::other(e.to_string())),
    };
    let target = Target { endpoint, namespace: ns, name, port, protocol };
    forward(dialer, keepalive, target, ws).await
}

/// The `{port}` and `{protocol}` of a path (TCP when none); a bad one is a 400 `Status`.
pub fn port_and_protocol(port: &str, protocol: Option<&str>) -> Result<(u16, Protocol), Box<Response>> {
    let bad = |e: String| Box::new(refuse(StatusCode::BAD_REQUEST, "BadRequest", e));
    let port = parse_port(port).map_err(|e| bad(e.to_string()))?;
    let protocol = protocol.map(str::parse::<Protocol>).transpose().map_err(|e| bad(e.to_string()))?;
    Ok((port, protocol.unwrap_or(Protocol::Tcp)))
}

/// A guest port to forward to.
pub struct Target {
    /// Where the guest is.
    pub endpoint: VmiEndpoint,
    /// The VMI's namespace (for messages).
    pub namespace: String,
    /// The VMI's name (for messages).
    pub name: String,
    /// The guest's port.
    pub port: u16,
    /// TCP or UDP.
    pub protocol: Protocol,
}

/// Dials `target` with `dialer` and, when the guest answers, upgrades `ws` to a session carrying
/// it (pinged every `keepalive`); a refusal is a `Status` (503, 504 on a timeout). The cluster's
/// agent calls this with the endpoint in the VMI's pod.
pub async fn forward(
    dialer: Arc<dyn Dialer>,
    keepalive: Duration,
    target: Target,
    ws: WebSocketUpgrade,
) -> Response {
    let Target { endpoint, namespace: ns, name, port, protocol } = target;
    let dialled = tokio::task::spawn_blocking(move || {
        dialer.dial(&endpoint, port, protocol).map_err(|e| Box::new(dial_refusal(&ns, &name, port, &e)))
    })
    .await;
    let stream = match dialled {
        Ok(Ok(stream)) => stream,
        Ok(Err(response)) => return *response,
        Err(e) => {
            return refuse(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("portforward: {e}"))
        }
    };
    let upgrade = ws.protocols(["plain.kubevirt.io"]);
    match stream {
        GuestStream::Tcp(t) => {
            match t.set_nonblocking(true).and_then(|()| tokio::net::TcpStream::from_std(t)) {
                Ok(t) => upgrade.on_upgrade(move |socket| bridge(socket, t, keepalive)),
                Err(e) => internal(e),
            }
        }
        GuestStream::Local(u) => {
            match u.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(u)) {
                Ok(u) => upgrade.on_upgrade(move |socket| bridge(socket, u, keepalive)),
                Err(e) => internal(e),
            }
        }
        GuestStream::Udp(u) => {
            match u.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(u)) {
                Ok(u) => upgrade.on_upgrade(move |socket| datagrams(socket, u, keepalive)),
                Err(e) => internal(e),
            }
        }
    }
}

fn internal(e: std::io::Error) -> Response {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("portforward: {e}"))
}

fn dial_refusal(ns: &str, name: &str, port: u16, e: &DialError) -> Response {
    let message = format!("portforward to port {port} of VirtualMachineInstance {ns}/{name}: {e}");
    if e.is_timeout() {
        refuse(StatusCode::GATEWAY_TIMEOUT, "Timeout", message)
    } else {
        refuse(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
    }
}

/// `GET .../virtualmachineinstances/{name}/portforward/{port}`
pub async fn vmi_port(
    State(s): State<ApiState>,
    Path((ns, name, port)): Path<(String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    serve(s, Form::Vmi, ns, name, port, None, ws).await
}

/// `GET .../virtualmachineinstances/{name}/portforward/{port}/{protocol}`
pub async fn vmi_port_protocol(
    State(s): State<ApiState>,
    Path((ns, name, port, protocol)): Path<(String, String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    serve(s, Form::Vmi, ns, name, port, Some(protocol), ws).await
}

/// `GET .../virtualmachines/{name}/portforward/{port}`
pub async fn vm_port(
    State(s): State<ApiState>,
    Path((ns, name, port)): Path<(String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    serve(s, Form::Vm, ns, name, port, None, ws).await
}

/// `GET .../virtualmachines/{name}/portforward/{port}/{protocol}`
pub async fn vm_port_protocol(
    State(s): State<ApiState>,
    Path((ns, name, port, protocol)): Path<(String, String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    serve(s, Form::Vm, ns, name, port, Some(protocol), ws).await
}

/// Copies a TCP-like stream and the websocket both ways, with half-closes (see the module's
/// framing) and keepalive pings, until both directions ended, either side closed, or the client
/// went silent.
async fn bridge<S>(socket: WebSocket, stream: S, keepalive: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(stream);
    // Each direction is its own future: a write that waits (the guest or the client not reading)
    // holds up only its own direction, never the other's reads.
    let silent_ticks = AtomicU32::new(0);
    // The node is writing to the guest: the client's silence meanwhile is the node's doing.
    let writing_guest = AtomicBool::new(false);
    let (guest_done, client_done) = (AtomicBool::new(false), AtomicBool::new(false));
    let both_done = Notify::new();
    let mark_done = |mine: &AtomicBool, other: &AtomicBool| {
        mine.store(true, Ordering::SeqCst);
        if other.load(Ordering::SeqCst) {
            both_done.notify_one();
        }
    };
    let to_client = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut ping = keepalive_interval(keepalive).await;
        let mut reading = true;
        loop {
            tokio::select! {
                r = rd.read(&mut buf), if reading => {
                    // End of the guest's stream: tell the client with an empty message.
                    let msg = match r {
                        Ok(0) | Err(_) => Bytes::new(),
                        Ok(n) => Bytes::copy_from_slice(&buf[..n]),
                    };
                    reading = !msg.is_empty();
                    if ws_tx.send(Message::Binary(msg)).await.is_err() {
                        return;
                    }
                    // The client took the data: it is alive.
                    silent_ticks.store(0, Ordering::SeqCst);
                    if !reading {
                        mark_done(&guest_done, &client_done);
                    }
                },
                _ = ping.tick() => {
                    if writing_guest.load(Ordering::SeqCst) {
                        silent_ticks.store(0, Ordering::SeqCst);
                    }
                    let silent = silent_ticks.fetch_add(1, Ordering::SeqCst) + 1;
                    if silent > 3 || ws_tx.send(Message::Ping(Bytes::from_static(b"keepalive"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let to_guest = async {
        let mut writing = true;
        loop {
            let m = ws_rx.next().await;
            silent_ticks.store(0, Ordering::SeqCst);
            let data = match m {
                Some(Ok(Message::Binary(b))) if b.is_empty() => {
                    writing = false;
                    let _ = wr.shutdown().await;
                    mark_done(&client_done, &guest_done);
                    continue;
                }
                Some(Ok(Message::Binary(b))) => b,
                Some(Ok(Message::Text(t))) => Bytes::copy_from_slice(t.as_bytes()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
            };
            if !writing {
                return;
            }
            writing_guest.store(true, Ordering::SeqCst);
            let written = wr.write_all(&data).await;
            writing_guest.store(false, Ordering::SeqCst);
            silent_ticks.store(0, Ordering::SeqCst);
            if written.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = to_client => {}
        _ = to_guest => {}
        _ = both_done.notified() => {}
    }
    let _ = ws_tx.send(Message::Close(None)).await;
}

/// The ping timer, its immediate first tick taken. A tick missed while the session was blocked is
/// not made up at once (the default burst would count several intervals of "silence" in a row
/// right after a long write and end a live session).
async fn keepalive_interval(period: Duration) -> tokio::time::Interval {
    let mut ping = tokio::time::interval(period);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    ping
}

/// UDP: each binary message is one datagram to the guest, each datagram from it one message.
async fn datagrams(socket: WebSocket, udp: tokio::net::UdpSocket, keepalive: Duration) {
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut buf = vec![0u8; 65536];
    let mut ping = keepalive_interval(keepalive).await;
    let mut silent_ticks = 0u32;
    loop {
        tokio::select! {
            r = udp.recv(&mut buf) => match r {
                Ok(n) => {
                    if ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
                // An ICMP port unreachable from an earlier datagram: the guest may listen later.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => break,
            },
            m = ws_rx.next() => {
                silent_ticks = 0;
                match m {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        let _ = udp.send(&b).await;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                }
            },
            _ = ping.tick() => {
                silent_ticks += 1;
                if silent_ticks > 3 || ws_tx.send(Message::Ping(Bytes::from_static(b"keepalive"))).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::parse_port;

    #[test]
    fn ports_are_1_to_65535() {
        assert_eq!(parse_port("22"), Ok(22));
        assert_eq!(parse_port("65535"), Ok(65535));
        for bad in ["0", "65536", "-1", "ssh", ""] {
            let e = parse_port(bad).unwrap_err().to_string();
            assert!(e.contains("1 to 65535") && e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
