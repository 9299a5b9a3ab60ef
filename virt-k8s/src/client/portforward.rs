//! `virtctl port-forward`: local TCP/UDP ports (or standard input and output) forwarded to a port
//! of a VM's guest through the node's `portforward` websocket, one websocket per local connection
//! (per UDP peer), as KubeVirt's virtctl does.
//!
//! Half-closes travel as zero-length binary messages (see `node::portforward`): when the local
//! peer stops sending, the guest's socket is shut down for writing and the answer still comes back.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use virt_core::model::VmiPhase;

use super::transport::Conn;
use super::{subresource_path, AsyncNodeClient, ClientError, Kind, NodeClient};

pub use virt_net::dial::Protocol;

/// Bad input or a local failure of a port forward.
#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    /// The target is not `TYPE/NAME[/NAMESPACE]`.
    #[error("target {input:?}: {reason}")]
    BadTarget {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// A port is not `[PROTOCOL/]LOCAL[:REMOTE]`.
    #[error("port {input:?}: {reason}")]
    BadPort {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: String,
    },
    /// `--stdio` was given more than one port.
    #[error("--stdio forwards exactly one port, got {0}")]
    StdioPorts(usize),
    /// The VM or VMI is not running.
    #[error("{kind} {namespace}/{name} is not running{detail}")]
    NotRunning {
        /// `VirtualMachine` or `VirtualMachineInstance`.
        kind: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// ` (phase X)` or empty.
        detail: String,
    },
    /// A local port could not be opened.
    #[error("listening on {protocol} {addr}: {source}")]
    Listen {
        /// The protocol.
        protocol: Protocol,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// A local stream failed.
    #[error("port-forward to {target}: {what}: {source}")]
    Io {
        /// The target.
        target: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The websocket failed after it opened.
    #[error("port-forward to {target}: websocket: {reason}")]
    WebSocket {
        /// The target.
        target: String,
        /// What failed.
        reason: String,
    },
    /// The node refused or failed the websocket of one UDP peer (the caller names the peer).
    #[error("{}", describe(source))]
    PeerDial {
        /// The node's answer (boxed: a ClientError can hold a PortForwardError).
        source: Box<ClientError>,
    },
    /// The websocket of one UDP peer failed after it opened (the caller names the peer).
    #[error("{source}")]
    PeerWebSocket {
        /// The websocket's error.
        source: tokio_tungstenite::tungstenite::Error,
    },
}

/// What `port-forward` and `ssh` reach: `vm/NAME[/NAMESPACE]` or `vmi/NAME[/NAMESPACE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// [`Kind::VirtualMachine`] or [`Kind::VirtualMachineInstance`].
    pub kind: Kind,
    /// The name.
    pub name: String,
    /// The namespace, when the target names one.
    pub namespace: Option<String>,
}

impl Target {
    /// `vm` or `vmi`.
    pub fn short_kind(&self) -> &'static str {
        if self.kind == Kind::VirtualMachine {
            "vm"
        } else {
            "vmi"
        }
    }
}

impl FromStr for Target {
    type Err = PortForwardError;

    /// `TYPE/NAME[/NAMESPACE]`, TYPE any of vm, vms, virtualmachine(s), vmi, vmis,
    /// virtualmachineinstance(s) (as KubeVirt's virtctl).
    fn from_str(input: &str) -> Result<Self, PortForwardError> {
        let bad =
            |reason: &str| PortForwardError::BadTarget { input: input.to_string(), reason: reason.into() };
        let parts: Vec<&str> = input.split('/').collect();
        let (kind, name, namespace) = match parts.as_slice() {
            [""] => return Err(bad("expected TYPE/NAME[/NAMESPACE], e.g. vm/fedora")),
            [_] => return Err(bad("expected TYPE/NAME[/NAMESPACE]: the type and name are separated by '/'")),
            [k, n] => (*k, *n, None),
            [k, n, ns] => (*k, *n, Some(*ns)),
            _ => return Err(bad("expected TYPE/NAME[/NAMESPACE]: more than two '/'")),
        };
        let kind = match kind.to_ascii_lowercase().as_str() {
            "vm" | "vms" | "virtualmachine" | "virtualmachines" => Kind::VirtualMachine,
            "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => {
                Kind::VirtualMachineInstance
            }
            _ => return Err(bad(&format!("unknown type {kind:?}: expected vm or vmi"))),
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if namespace == Some("") {
            return Err(bad("the namespace is empty"));
        }
        Ok(Self { kind, name: name.to_string(), namespace: namespace.map(str::to_string) })
    }
}

/// One forwarded port: `[PROTOCOL/]LOCAL[:REMOTE]` (LOCAL 0: a free port; REMOTE defaults to LOCAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    /// `tcp` (default) or `udp`.
    pub protocol: Protocol,
    /// The local port (0: any free one).
    pub local: u16,
    /// The guest's port.
    pub remote: u16,
}

impl FromStr for PortSpec {
    type Err = PortForwardError;

    fn from_str(input: &str) -> Result<Self, PortForwardError> {
        let bad = |reason: String| PortForwardError::BadPort { input: input.to_string(), reason };
        let (protocol, ports) = match input.split_once('/') {
            Some((p, rest)) => (p.parse::<Protocol>().map_err(|e| bad(e.to_string()))?, rest),
            None => (Protocol::Tcp, input),
        };
        let number = |s: &str, what: &str, min: u32| match s.parse::<u32>() {
            Ok(p) if (min..=65535).contains(&p) => Ok(p as u16),
            _ => Err(bad(format!("{what} port {s:?}: expected a number from {min} to 65535"))),
        };
        let (local, remote) = match ports.split_once(':') {
            Some((l, r)) => (number(l, "local", 0)?, number(r, "remote", 1)?),
            None => {
                let p = number(ports, "remote", 1)?;
                (p, p)
            }
        };
        Ok(Self { protocol, local, remote })
    }
}

type Ws = WebSocketStream<Conn>;

impl AsyncNodeClient {
    /// Opens the `portforward` websocket to `port` of `target`'s guest in `namespace`.
    pub async fn port_forward_socket(
        &self,
        target: &Target,
        namespace: &str,
        port: u16,
        protocol: Protocol,
    ) -> Result<Ws, ClientError> {
        let sub = format!("portforward/{port}/{protocol}");
        let path = subresource_path(target.kind, namespace, &target.name, &sub);
        self.websocket(path, namespace, &target.name).await
    }

    /// Checks that `target` exists and runs (a clear error before any port is opened).
    pub async fn check_running(&self, target: &Target, namespace: &str) -> Result<(), ClientError> {
        let name = &target.name;
        if target.kind == Kind::VirtualMachine {
            self.get_vm(namespace, name).await?;
        }
        let vmi = match self.get_vmi(namespace, name).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() && target.kind == Kind::VirtualMachine => {
                return Err(PortForwardError::NotRunning {
                    kind: "VirtualMachine",
                    namespace: namespace.to_string(),
                    name: name.clone(),
                    detail: String::new(),
                }
                .into())
            }
            Err(e) => return Err(e),
        };
        let phase = vmi.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending);
        if phase != VmiPhase::Running {
            return Err(PortForwardError::NotRunning {
                kind: "VirtualMachineInstance",
                namespace: namespace.to_string(),
                name: name.clone(),
                detail: format!(" (phase {})", phase.as_str()),
            }
            .into());
        }
        Ok(())
    }
}

fn ws_error(target: &str, e: impl std::fmt::Display) -> PortForwardError {
    PortForwardError::WebSocket { target: target.to_string(), reason: e.to_string() }
}

/// Copies `local` and the websocket both ways until both sides stopped sending (half-closes
/// passed on), or either end closed.
pub async fn splice<L>(local: L, ws: Ws, target: &str) -> Result<(), PortForwardError>
where
    L: AsyncRead + AsyncWrite,
{
    let (mut rd, mut wr) = tokio::io::split(local);
    let (mut tx, mut rx) = ws.split();
    let io = |what: &'static str| {
        move |source: io::Error| PortForwardError::Io { target: target.to_string(), what, source }
    };
    let result = {
        // Each direction is its own future, so a write that waits (the local peer or the node not
        // reading) never stops the other direction's reads: large echoes cannot deadlock.
        let up = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = rd.read(&mut buf).await.map_err(io("reading the local side"))?;
                // An empty message tells the node the local side sends no more.
                let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                tx.send(msg).await.map_err(|e| ws_error(target, e))?;
                if n == 0 {
                    return Ok::<(), PortForwardError>(());
                }
            }
        };
        // Ok(true): the remote side sends no more; Ok(false): the websocket closed.
        let down = async {
            loop {
                match rx.next().await {
                    Some(Ok(Message::Binary(b))) if b.is_empty() => {
                        wr.flush().await.map_err(io("writing the local side"))?;
                        let _ = wr.shutdown().await;
                        return Ok::<bool, PortForwardError>(true);
                    }
                    Some(Ok(Message::Binary(b))) => {
                        wr.write_all(&b).await.map_err(io("writing the local side"))?;
                        wr.flush().await.map_err(io("writing the local side"))?;
                    }
                    Some(Ok(Message::Text(t))) => {
                        wr.write_all(t.as_bytes()).await.map_err(io("writing the local side"))?;
                    }
                    // Pings are answered by tungstenite.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        let _ = wr.flush().await;
                        return Ok(false);
                    }
                    Some(Err(e)) => return Err(ws_error(target, e)),
                }
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Err(e) => break Err(e),
                    Ok(()) if down_done => break Ok(()),
                    Ok(()) => up_done = true,
                },
                r = &mut down, if !down_done => match r {
                    Err(e) => break Err(e),
                    Ok(false) => break Ok(()),
                    Ok(true) if up_done => break Ok(()),
                    Ok(true) => down_done = true,
                },
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tx.close()).await;
    result
}

/// Forwards connections accepted on `listener` to `remote` of `target`, one websocket each, until
/// the process ends. A connection the node refuses is closed and the reason printed on stderr.
pub async fn serve_tcp(
    client: AsyncNodeClient,
    target: Target,
    namespace: String,
    listener: TcpListener,
    remote: u16,
) {
    let label = format!("{}/{}/{namespace}:{remote}", target.short_kind(), target.name);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("port-forward {label}: accepting: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (client, target, namespace, label) =
            (client.clone(), target.clone(), namespace.clone(), label.clone());
        tokio::spawn(async move {
            match client.port_forward_socket(&target, &namespace, remote, Protocol::Tcp).await {
                Ok(ws) => {
                    if let Err(e) = splice(tcp, ws, &label).await {
                        eprintln!("port-forward {label}: connection from {peer}: {e}");
                    }
                }
                Err(e) => eprintln!("port-forward {label}: connection from {peer}: {}", describe(&e)),
            }
        });
    }
}

fn describe(e: &ClientError) -> String {
    match e.status() {
        Some(s) => s.to_string(),
        None => e.to_string(),
    }
}

/// Forwards datagrams from each local peer of `socket` to `remote` of `target` (one websocket per
/// peer, each message one datagram), and the guest's answers back to that peer.
pub async fn serve_udp(
    client: AsyncNodeClient,
    target: Target,
    namespace: String,
    socket: UdpSocket,
    remote: u16,
) {
    let socket = Arc::new(socket);
    let peers: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>> = Arc::default();
    let label = format!("{}/{}/{namespace}:udp/{remote}", target.short_kind(), target.name);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(_) => continue,
        };
        let known = peers.lock().ok().and_then(|p| p.get(&peer).cloned());
        let tx = match known {
            Some(tx) => tx,
            None => {
                let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
                if let Ok(mut p) = peers.lock() {
                    p.insert(peer, tx.clone());
                }
                let args = (client.clone(), target.clone(), namespace.clone(), label.clone());
                let (socket, peers) = (socket.clone(), peers.clone());
                tokio::spawn(async move {
                    let (client, target, namespace, label) = args;
                    if let Err(e) = udp_peer(&client, &target, &namespace, remote, &socket, peer, rx).await {
                        eprintln!("port-forward {label}: peer {peer}: {e}");
                    }
                    if let Ok(mut p) = peers.lock() {
                        p.remove(&peer);
                    }
                });
                tx
            }
        };
        let _ = tx.try_send(buf[..n].to_vec());
    }
}

async fn udp_peer(
    client: &AsyncNodeClient,
    target: &Target,
    namespace: &str,
    remote: u16,
    socket: &UdpSocket,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> Result<(), PortForwardError> {
    let ws = client
        .port_forward_socket(target, namespace, remote, Protocol::Udp)
        .await
        .map_err(|e| PortForwardError::PeerDial { source: Box::new(e) })?;
    let ws_err = |source| PortForwardError::PeerWebSocket { source };
    let (mut tx, mut wsrx) = ws.split();
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => tx.send(Message::Binary(d.into())).await.map_err(ws_err)?,
                None => return Ok(()),
            },
            m = wsrx.next() => match m {
                Some(Ok(Message::Binary(b))) => { let _ = socket.send_to(&b, peer).await; }
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Err(e)) => return Err(ws_err(e)),
                Some(Ok(_)) => {}
            },
        }
    }
}

/// This process's standard input and output as one async stream: two detached threads copy
/// between them and a pipe in memory (a blocked read of standard input must not hold up the
/// runtime's shutdown). The end of standard input is the stream's end; the stream's end closes
/// nothing but is flushed. The returned thread writes standard output: join it once the stream
/// is dropped, or bytes still in the pipe are lost when the process exits.
fn stdio_stream(
    handle: tokio::runtime::Handle,
) -> io::Result<(tokio::io::DuplexStream, std::thread::JoinHandle<()>)> {
    let (local, remote) = tokio::io::duplex(256 * 1024);
    let (mut from_remote, mut to_remote) = tokio::io::split(remote);
    let h = handle.clone();
    std::thread::Builder::new().name("stdin".into()).spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match io::Read::read(&mut stdin, &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if n == 0 {
                let _ = h.block_on(to_remote.shutdown());
                return;
            }
            if h.block_on(to_remote.write_all(&buf[..n])).is_err() {
                return;
            }
        }
    })?;
    let writer = std::thread::Builder::new().name("stdout".into()).spawn(move || {
        let mut stdout = io::stdout().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match handle.block_on(from_remote.read(&mut buf)) {
                Ok(0) | Err(_) => {
                    let _ = io::Write::flush(&mut stdout);
                    return;
                }
                Ok(n) => {
                    if io::Write::write_all(&mut stdout, &buf[..n])
                        .and_then(|()| io::Write::flush(&mut stdout))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    })?;
    Ok((local, writer))
}

impl NodeClient {
    /// Forwards `ports` on `address` to `target`'s guest until the process ends: checks that the
    /// target runs, opens every local port (all or nothing), calls `listening` for each with the
    /// bound address, then serves.
    pub fn port_forward(
        &self,
        target: &Target,
        namespace: &str,
        address: IpAddr,
        ports: &[PortSpec],
        mut listening: impl FnMut(&PortSpec, SocketAddr),
    ) -> Result<(), ClientError> {
        let inner = self.inner.clone();
        self.runtime.block_on(async move {
            inner.check_running(target, namespace).await?;
            let mut tcp = Vec::new();
            let mut udp = Vec::new();
            for p in ports {
                let addr = SocketAddr::new(address, p.local);
                let listen_error = |source| PortForwardError::Listen { protocol: p.protocol, addr, source };
                let bound = match p.protocol {
                    Protocol::Tcp => {
                        let l = TcpListener::bind(addr).await.map_err(listen_error)?;
                        let a = l.local_addr().map_err(listen_error)?;
                        tcp.push((l, p.remote));
                        a
                    }
                    Protocol::Udp => {
                        let s = UdpSocket::bind(addr).await.map_err(listen_error)?;
                        let a = s.local_addr().map_err(listen_error)?;
                        udp.push((s, p.remote));
                        a
                    }
                };
                listening(p, bound);
            }
            let mut tasks = Vec::new();
            for (l, remote) in tcp {
                tasks.push(tokio::spawn(serve_tcp(
                    inner.clone(),
                    target.clone(),
                    namespace.to_string(),
                    l,
                    remote,
                )));
            }
            for (s, remote) in udp {
                tasks.push(tokio::spawn(serve_udp(
                    inner.clone(),
                    target.clone(),
                    namespace.to_string(),
                    s,
                    remote,
                )));
            }
            for t in tasks {
                let _ = t.await;
            }
            Ok(())
        })
    }

    /// Forwards standard input and output to `port` of `target`'s guest (`--stdio`, ssh's
    /// ProxyCommand) until both directions ended or the node closed the stream.
    pub fn port_forward_stdio(
        &self,
        target: &Target,
        namespace: &str,
        port: PortSpec,
    ) -> Result<(), ClientError> {
        if port.protocol != Protocol::Tcp {
            return Err(PortForwardError::BadPort {
                input: format!("{}/{}", port.protocol, port.remote),
                reason: "--stdio forwards TCP only".into(),
            }
            .into());
        }
        let label = format!("{}/{}/{namespace}:{}", target.short_kind(), target.name, port.remote);
        let (spliced, writer) = self.runtime.block_on(async {
            let ws = self.inner.port_forward_socket(target, namespace, port.remote, Protocol::Tcp).await?;
            let (local, writer) = stdio_stream(tokio::runtime::Handle::current()).map_err(|source| {
                PortForwardError::Io { target: label.clone(), what: "starting the stdio threads", source }
            })?;
            // `local` goes with the splice: the writer then sees the pipe's end once it is drained.
            Ok::<_, ClientError>((splice(local, ws, &label).await, writer))
        })?;
        // Everything the guest sent is on standard output before this returns (and the process exits).
        let _ = writer.join();
        spliced?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_kubevirts_virtctl() {
        let t: Target = "vm/fedora".parse().unwrap();
        assert_eq!((t.kind, t.name.as_str(), t.namespace), (Kind::VirtualMachine, "fedora", None));
        let t: Target = "VirtualMachineInstances/a/dev".parse().unwrap();
        assert_eq!((t.kind, t.namespace.as_deref()), (Kind::VirtualMachineInstance, Some("dev")));
        for (bad, why) in [
            ("", "TYPE/NAME"),
            ("fedora", "separated by '/'"),
            ("pod/x", "unknown type \"pod\""),
            ("vm/", "name is empty"),
            ("vm/x/", "namespace is empty"),
            ("vm/x/y/z", "more than two"),
        ] {
            let e = bad.parse::<Target>().unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with(&format!("target {bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn ports_parse_with_protocol_local_and_remote() {
        let p = |s: &str| s.parse::<PortSpec>();
        assert_eq!(p("22").unwrap(), PortSpec { protocol: Protocol::Tcp, local: 22, remote: 22 });
        assert_eq!(p("2222:22").unwrap(), PortSpec { protocol: Protocol::Tcp, local: 2222, remote: 22 });
        assert_eq!(p("udp/0:53").unwrap(), PortSpec { protocol: Protocol::Udp, local: 0, remote: 53 });
        for (bad, why) in [
            ("70000", "remote port \"70000\""),
            ("8080:0", "remote port \"0\""),
            ("0", "remote port \"0\""),
            ("x:22", "local port \"x\""),
            ("sctp/22", "tcp or udp"),
            ("", "remote port \"\""),
        ] {
            let e = p(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.starts_with(&format!("port {bad:?}")), "{bad}: {e}");
        }
    }
}
