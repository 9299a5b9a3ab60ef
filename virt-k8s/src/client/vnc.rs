//! `virtctl vnc`: a local TCP port for a VNC viewer, each connection bridged to the VMI's `vnc`
//! websocket on the node (the RFB stream of its display, as KubeVirt's `virtctl vnc --proxy-only`).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{AsyncNodeClient, ClientError, Console};

/// Serves VNC viewers on `listener`: every connection gets its own websocket to the VMI's display.
/// Runs until the process ends (or, with `once`, until the first viewer leaves).
pub async fn proxy(
    client: AsyncNodeClient,
    namespace: String,
    name: String,
    listener: TcpListener,
    once: bool,
) -> Result<(), ClientError> {
    loop {
        let (tcp, peer) = listener.accept().await.map_err(|e| ClientError::Vnc {
            what: format!("of {namespace}/{name}: accepting a viewer"),
            reason: e.to_string(),
        })?;
        let display = match client.vnc(&namespace, &name).await {
            Ok(d) => d,
            Err(e) if once => return Err(e),
            Err(e) => {
                eprintln!("virtctl vnc: viewer {peer}: {e}");
                continue;
            }
        };
        let task = tokio::spawn(bridge(tcp, display));
        if once {
            let _ = task.await;
            return Ok(());
        }
    }
}

/// Copies bytes both ways until either side closes.
async fn bridge(mut tcp: TcpStream, mut display: Console) {
    let (mut rd, mut wr) = tcp.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if display.send(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            },
            m = display.recv() => match m {
                Ok(Some(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
        }
    }
    let _ = display.close().await;
}

/// Binds the viewer's port (`port` 0 picks a free one) on `address`.
pub async fn listen(address: std::net::IpAddr, port: u16) -> Result<(TcpListener, SocketAddr), ClientError> {
    let what = || format!("listening on {address}:{port}");
    let l = TcpListener::bind((address, port))
        .await
        .map_err(|e| ClientError::Vnc { what: what(), reason: e.to_string() })?;
    let a = l.local_addr().map_err(|e| ClientError::Vnc { what: what(), reason: e.to_string() })?;
    Ok((l, a))
}
