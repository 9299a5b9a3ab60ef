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
    let st = s.clone();
    let (ns2, name2) = (ns.clone(), name.clone());
    let (stream, vmi, dir) = blocking(move || {
        let vmi = s.lifecycle.vmis().get(&ns, &name)?;
        let phase = vmi.status.as_ref().and_then(|st| st.phase).unwrap_or(VmiPhase::Pending);
        if phase != VmiPhase::Running {
            return Err(ApiError::conflict(format!(
                "VirtualMachineInstance {ns}/{name} is not running (phase {})",
                phase.as_str()
            )));
        }
        let stream = s.runtime.console(&vmi).map_err(|e| match *e {
            RemoteError::ConsoleBusy { .. } => ApiError::conflict(format!(
                "the console of VirtualMachineInstance {ns}/{name} is in use: one interactive session at a time"
            )),
            other => ApiError::conflict(format!("console of {ns}/{name}: {other}")),
        })?;
        let dir = s.runtime.run_dir(&vmi);
        Ok((stream, vmi, dir))
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
    // A live migration ends the source launcher's console: the session goes on in the launcher
    // the VM moved into (whose ring buffer holds what the guest printed since it arrived).
    let from = std::sync::Arc::new(std::sync::Mutex::new(dir));
    let uid = vmi.metadata.uid.clone();
    // Checked before each keystroke is passed on: once the VM's pointer names a new launcher,
    // input goes there even if the old launcher has not closed its console yet.
    let (st_moved, from_moved) = (st.clone(), from.clone());
    let moved = move || from_moved.lock().is_ok_and(|d| *d != st_moved.runtime.run_dir(&vmi));
    let follow = move || {
        let (st, ns, name, uid, from) = (st.clone(), ns2.clone(), name2.clone(), uid.clone(), from.clone());
        async move {
            let last = from.lock().map(|d| d.clone()).ok()?;
            let (stream, dir) = console_after_move(st, ns, name, uid, last).await?;
            stream.set_nonblocking(true).ok()?;
            if let Ok(mut d) = from.lock() {
                *d = dir;
            }
            tokio::net::UnixStream::from_std(stream).ok()
        }
    };
    Ok(ws
        .protocols(["plain.kubevirt.io"])
        .on_upgrade(move |socket| bridge_following(socket, stream, follow, moved)))
}

/// How long a console session waits for a migrating VMI's new launcher.
const MOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The console of the launcher the VMI `ns/name` (the same `uid`) moved into from the run
/// directory `from`, and that directory; `None` when it did not move (it ended, or no migration
/// is under way).
async fn console_after_move(
    s: ApiState,
    ns: String,
    name: String,
    uid: Option<String>,
    from: std::path::PathBuf,
) -> Option<(std::os::unix::net::UnixStream, std::path::PathBuf)> {
    let deadline = std::time::Instant::now() + MOVE_WAIT;
    loop {
        let (s2, ns2, name2) = (s.clone(), ns.clone(), name.clone());
        let vmi =
            tokio::task::spawn_blocking(move || s2.lifecycle.vmis().get(&ns2, &name2)).await.ok()?.ok()?;
        let running = vmi.status.as_ref().and_then(|st| st.phase) == Some(VmiPhase::Running);
        if vmi.metadata.uid != uid || !running {
            return None;
        }
        let dir = s.runtime.run_dir(&vmi);
        if dir != from {
            let s2 = s.clone();
            return tokio::task::spawn_blocking(move || s2.runtime.console(&vmi).ok().map(|c| (c, dir)))
                .await
                .ok()?;
        }
        let in_flight = vmi
            .status
            .as_ref()
            .and_then(|st| st.migration_state.as_ref())
            .is_some_and(|m| m.completed != Some(true));
        if !in_flight || std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// How often an idle console or VNC websocket is pinged: proxies and load balancers drop
/// connections idle for ~30-60 s, and an idle serial console is the normal case.
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// Bridges websocket frames and `stream`, pinging the client every [`KEEPALIVE`].
pub(crate) async fn bridge<S>(socket: WebSocket, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    bridge_following(socket, stream, || std::future::ready(None), || false).await
}

/// How one stream's part of a bridged session ended.
enum Ended {
    /// The client left (or its websocket broke): the session is over.
    Client,
    /// The stream ended; input the client sent that it did not take, if any.
    Stream(Option<Bytes>),
}

/// [`bridge`], and when `stream` ends, or `moved` says (before input is passed on) that it is no
/// longer the one to use, `next` may give the session another to go on with (a console that
/// followed its VM to a new launcher); input the old stream did not take goes to the new one.
pub(crate) async fn bridge_following<S, F, Fut, M>(socket: WebSocket, stream: S, mut next: F, moved: M)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<S>>,
    M: Fn() -> bool,
{
    use futures_util::{SinkExt, StreamExt};
    let (mut ws_tx, mut ws_rx) = socket.split();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut stream = stream;
    let mut pending: Option<Bytes> = None;
    loop {
        let (mut rd, mut wr) = tokio::io::split(stream);
        if let Some(b) = pending.take() {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let out = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                tokio::select! {
                    r = rd.read(&mut buf) => match r {
                        Ok(0) | Err(_) => return Ended::Stream(None),
                        Ok(n) => {
                            if ws_tx.send(Message::Binary(Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                                return Ended::Client;
                            }
                        }
                    },
                    _ = ping.tick() => {
                        if ws_tx.send(Message::Ping(Bytes::from_static(b"keepalive"))).await.is_err() {
                            return Ended::Client;
                        }
                    }
                }
            }
        };
        let inp = async {
            while let Some(Ok(msg)) = ws_rx.next().await {
                let bytes: Bytes = match msg {
                    Message::Binary(b) => b,
                    Message::Text(t) => Bytes::copy_from_slice(t.as_str().as_bytes()),
                    Message::Close(_) => break,
                    _ => continue,
                };
                if moved() || wr.write_all(&bytes).await.is_err() {
                    return Ended::Stream(Some(bytes));
                }
            }
            Ended::Client
        };
        let ended = tokio::select! {
            e = out => e,
            e = inp => e,
        };
        match ended {
            Ended::Client => break,
            Ended::Stream(unsent) => match next().await {
                Some(s) => {
                    stream = s;
                    pending = unsent;
                }
                None => break,
            },
        }
    }
    let _ = ws_tx.send(Message::Close(None)).await;
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
