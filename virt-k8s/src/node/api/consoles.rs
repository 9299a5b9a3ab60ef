//! The serial console and the VNC display as websockets: checked before the upgrade (a refusal is a
//! Kubernetes `Status`), then bridged to the launcher's console socket or QEMU's VNC server.

use axum::body::Bytes;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use virt_core::machine::remote::RemoteError;
use virt_core::model::VmiPhase;

use super::{blocking, ApiError, ApiResult, ApiState};

/// The serial console: checks (running, not in use) before the upgrade, so that a refusal is a
/// proper `Status`; then bridges websocket frames and the launcher's console socket. A plain GET
/// (no upgrade) makes the same checks: a browser, which cannot read the status of a refused
/// websocket, asks that way why, e.g. that another viewer holds the console.
pub(super) async fn vmi_console(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult {
    let stream = blocking(move || {
        let vmi = s.lifecycle.vmis().get(&ns, &name)?;
        let phase = vmi.status.as_ref().and_then(|st| st.phase).unwrap_or(VmiPhase::Pending);
        if phase != VmiPhase::Running {
            return Err(ApiError::conflict(format!(
                "VirtualMachineInstance {ns}/{name} is not running (phase {})",
                phase.as_str()
            )));
        }
        s.runtime.console(&vmi).map_err(|e| match *e {
            RemoteError::ConsoleBusy { .. } => ApiError::conflict(format!(
                "the console of VirtualMachineInstance {ns}/{name} is in use: one interactive session at a time"
            )),
            other => ApiError::conflict(format!("console of {ns}/{name}: {other}")),
        })
    })
    .await?;
    let ws = match ws {
        Ok(ws) => ws,
        // Not an upgrade: the console is free (the session just opened ends here).
        Err(rejection) => return Ok(rejection.into_response()),
    };
    stream
        .set_nonblocking(true)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    let stream = tokio::net::UnixStream::from_std(stream)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    // KubeVirt's clients ask for the `plain.kubevirt.io` subprotocol; answer it when asked.
    Ok(ws.protocols(["plain.kubevirt.io"]).on_upgrade(move |socket| bridge(socket, stream)))
}

/// How often an idle console or VNC websocket is pinged: proxies and load balancers drop
/// connections idle for ~30-60 s, and an idle serial console is the normal case.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Bridges websocket frames and `stream`, pinging the client every [`KEEPALIVE`].
pub(crate) async fn bridge<S>(socket: WebSocket, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    use futures_util::{SinkExt, StreamExt};
    let (mut ws_tx, mut ws_rx) = socket.split();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let out = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
        loop {
            tokio::select! {
                r = rd.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                            break;
                        }
                    }
                },
                _ = ping.tick() => {
                    if ws_tx.send(Message::Ping(Bytes::from_static(b"keepalive"))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let inp = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let bytes: Bytes = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = out => {}
        _ = inp => {}
    }
}

/// The VNC display: the RFB stream of the VMI's display (QEMU's VNC server on the unix socket
/// its launcher reports, in the VMI's run directory: no TCP listener exists for it), bridged to
/// websocket frames. A plain GET (no upgrade) makes the same checks, so that a browser can learn
/// why its websocket was refused.
pub(super) async fn vmi_vnc(
    State(s): State<ApiState>,
    Path((ns, name)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult {
    let display = blocking(move || {
        let machine = s.lifecycle.vmis().machine(&ns, &name)?;
        let socket = machine.vnc_socket().ok_or_else(|| {
            ApiError::conflict(format!(
                "VirtualMachineInstance {ns}/{name} has no VNC display (autoattachGraphicsDevice: false, \
                 or it runs on the native microVM, which has none)"
            ))
        })?;
        let refused = |e: std::io::Error| {
            ApiError::conflict(format!("the VNC display at {} does not answer: {e}", socket.display()))
        };
        let stream = std::os::unix::net::UnixStream::connect(&socket).map_err(refused)?;
        stream.set_nonblocking(true).map_err(refused)?;
        Ok(stream)
    })
    .await?;
    let ws = match ws {
        Ok(ws) => ws,
        // Not an upgrade: the display answers (the connection just made ends here).
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let display = tokio::net::UnixStream::from_std(display)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    Ok(ws.protocols(["plain.kubevirt.io"]).on_upgrade(move |socket| bridge(socket, display)))
}
