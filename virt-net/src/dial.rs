//! Opening a stream to a port of a running VMI's guest from the node: the side of `portforward`
//! (and so of `virtctl port-forward` and `virtctl ssh`) that reaches into the VMI's network.
//!
//! [`NetnsDialer`] enters the VMI's network namespace on a thread of its own (`setns` changes only
//! the calling thread's namespace, and that thread ends right after), creates and connects the socket
//! there, and hands it back: a socket stays in the namespace it was created in, so the node's other
//! threads use it as any other. [`ChannelDialer`] is the test double: each dial gives one end of a
//! socket pair and hands the other to the test.

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use crate::endpoint::VmiEndpoint;

/// The transport of a forwarded port (KubeVirt's `portforward/{port}/{protocol}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A TCP connection (the default).
    Tcp,
    /// UDP datagrams, one per websocket message.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as in the path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = DialError;
    fn from_str(s: &str) -> Result<Self, DialError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            _ => Err(DialError::BadProtocol(s.to_string())),
        }
    }
}

/// A connected stream to the guest.
#[derive(Debug)]
pub enum GuestStream {
    /// A TCP connection to the guest's port.
    Tcp(TcpStream),
    /// A UDP socket connected to the guest's port.
    Udp(UdpSocket),
    /// A byte stream of a test double ([`ChannelDialer`]).
    Local(UnixStream),
}

/// Why a stream to the guest could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The protocol is neither `tcp` nor `udp`.
    #[error("protocol {0:?}: expected tcp or udp")]
    BadProtocol(String),
    /// Port 0 cannot be dialled.
    #[error("port 0: expected a port from 1 to 65535")]
    BadPort,
    /// The endpoint has no guest address.
    #[error("the guest has no IPv4 or IPv6 address to dial")]
    NoAddress,
    /// The VMI's network namespace could not be opened.
    #[error("opening the network namespace {path}: {source}")]
    OpenNetns {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// `setns` into the VMI's network namespace failed.
    #[error("entering the network namespace {path}: {source}")]
    EnterNetns {
        /// The namespace file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The thread that enters the namespace could not start or died.
    #[error("the thread dialling in the network namespace {path}: {reason}")]
    Thread {
        /// The namespace file (or `-` for the node's own).
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The guest refused the connection, or the socket could not be connected.
    #[error("connecting to {protocol} {addr}{netns}: {source}")]
    Connect {
        /// The protocol.
        protocol: Protocol,
        /// The guest's address and port.
        addr: SocketAddr,
        /// ` in the network namespace <path>`, or empty.
        netns: String,
        /// The error (`TimedOut` when the guest did not answer in time).
        source: io::Error,
    },
    /// The test double has no receiver left.
    #[error("the test dialer's receiver is gone")]
    Closed,
}

impl DialError {
    /// Whether the guest did not answer in time (as opposed to refusing).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Connect { source, .. }
            if matches!(source.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
    }
}

/// Opens streams to a port of a VMI's guest.
pub trait Dialer: Send + Sync {
    /// Connects to `port` of the guest at `endpoint` over `protocol`. Blocks up to the dialer's
    /// timeout: call it off async threads.
    fn dial(&self, endpoint: &VmiEndpoint, port: u16, protocol: Protocol) -> Result<GuestStream, DialError>;
}

/// Dials the guest from inside its VMI's network namespace (or from the node's own when the
/// endpoint names none), IPv4 first, else IPv6.
#[derive(Debug, Clone)]
pub struct NetnsDialer {
    timeout: Duration,
}

impl Default for NetnsDialer {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(10) }
    }
}

impl NetnsDialer {
    /// A dialer that gives a TCP connect up to `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

/// The guest's address to dial: IPv4 first (KubeVirt's masquerade guest 10.0.2.2), else IPv6.
pub fn guest_addr(endpoint: &VmiEndpoint, port: u16) -> Result<SocketAddr, DialError> {
    if port == 0 {
        return Err(DialError::BadPort);
    }
    let ip = endpoint
        .guest_ipv4
        .map(IpAddr::V4)
        .or(endpoint.guest_ipv6.map(IpAddr::V6))
        .ok_or(DialError::NoAddress)?;
    Ok(SocketAddr::new(ip, port))
}

fn connect(addr: SocketAddr, protocol: Protocol, timeout: Duration) -> io::Result<GuestStream> {
    match protocol {
        Protocol::Tcp => {
            let s = TcpStream::connect_timeout(&addr, timeout)?;
            s.set_nodelay(true)?;
            Ok(GuestStream::Tcp(s))
        }
        Protocol::Udp => {
            let bind: SocketAddr = match addr {
                SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let s = UdpSocket::bind(bind)?;
            s.connect(addr)?;
            Ok(GuestStream::Udp(s))
        }
    }
}

impl Dialer for NetnsDialer {
    fn dial(&self, endpoint: &VmiEndpoint, port: u16, protocol: Protocol) -> Result<GuestStream, DialError> {
        let addr = guest_addr(endpoint, port)?;
        let timeout = self.timeout;
        let Some(path) = endpoint.netns.clone() else {
            return connect(addr, protocol, timeout).map_err(|source| DialError::Connect {
                protocol,
                addr,
                netns: String::new(),
                source,
            });
        };
        // Opened here, so that a missing namespace is reported before a thread is started.
        let ns = File::open(&path).map_err(|source| DialError::OpenNetns { path: path.clone(), source })?;
        let thread_path = path.clone();
        let handle = std::thread::Builder::new()
            .name("netns-dial".into())
            .spawn(move || {
                // SAFETY: setns changes the network namespace of this thread only (a network
                // namespace may be entered by one thread of a multi-threaded process); `ns` is an
                // open namespace descriptor for the call's duration, and the thread ends after
                // the dial, so no other work runs in the VMI's namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    let source = io::Error::last_os_error();
                    return Err(DialError::EnterNetns { path: thread_path, source });
                }
                drop(ns);
                connect(addr, protocol, timeout).map_err(|source| DialError::Connect {
                    protocol,
                    addr,
                    netns: format!(" in the network namespace {}", thread_path.display()),
                    source,
                })
            })
            .map_err(|e| DialError::Thread { path: path.clone(), reason: e.to_string() })?;
        handle.join().map_err(|_| DialError::Thread { path, reason: "it panicked".into() })?
    }
}

/// One dial seen by [`ChannelDialer`]: what was asked, and the guest's end of the stream.
#[derive(Debug)]
pub struct Dialled {
    /// The endpoint asked for.
    pub endpoint: VmiEndpoint,
    /// The port.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The guest's end: what the node writes arrives here, what is written here reaches the node.
    pub guest: UnixStream,
}

/// Test double: each dial makes a socket pair, returns one end as [`GuestStream::Local`] and sends
/// the other, with what was asked, to the receiver [`ChannelDialer::new`] returned. Refuses every
/// dial once that receiver is dropped.
#[derive(Debug)]
pub struct ChannelDialer {
    tx: Mutex<mpsc::Sender<Dialled>>,
}

impl ChannelDialer {
    /// The dialer and the receiver of its dials.
    pub fn new() -> (Self, mpsc::Receiver<Dialled>) {
        let (tx, rx) = mpsc::channel();
        (Self { tx: Mutex::new(tx) }, rx)
    }
}

impl Dialer for ChannelDialer {
    fn dial(&self, endpoint: &VmiEndpoint, port: u16, protocol: Protocol) -> Result<GuestStream, DialError> {
        if port == 0 {
            return Err(DialError::BadPort);
        }
        let (node, guest) = UnixStream::pair().map_err(|source| DialError::Connect {
            protocol,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            netns: String::new(),
            source,
        })?;
        let tx = self.tx.lock().map_err(|_| DialError::Closed)?;
        tx.send(Dialled { endpoint: endpoint.clone(), port, protocol, guest })
            .map_err(|_| DialError::Closed)?;
        Ok(GuestStream::Local(node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn endpoint(v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> VmiEndpoint {
        VmiEndpoint { netns: None, guest_ipv4: v4, guest_ipv6: v6 }
    }

    #[test]
    fn ipv4_first_then_ipv6_and_no_address_is_an_error() {
        let both = endpoint(Some(Ipv4Addr::new(10, 0, 2, 2)), Some("fd10:0:2::2".parse().unwrap()));
        assert_eq!(guest_addr(&both, 22).unwrap().to_string(), "10.0.2.2:22");
        let v6 = endpoint(None, Some("fd10:0:2::2".parse().unwrap()));
        assert_eq!(guest_addr(&v6, 22).unwrap().to_string(), "[fd10:0:2::2]:22");
        assert!(matches!(guest_addr(&endpoint(None, None), 22), Err(DialError::NoAddress)));
        assert!(matches!(guest_addr(&both, 0), Err(DialError::BadPort)));
    }

    #[test]
    fn protocols_parse_case_insensitively_and_name_a_bad_one() {
        assert_eq!("TCP".parse::<Protocol>().unwrap(), Protocol::Tcp);
        assert_eq!("udp".parse::<Protocol>().unwrap(), Protocol::Udp);
        let e = "sctp".parse::<Protocol>().unwrap_err().to_string();
        assert!(e.contains("\"sctp\"") && e.contains("tcp or udp"), "{e}");
    }

    #[test]
    fn dials_in_the_nodes_namespace_without_one() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ep = endpoint(Some(Ipv4Addr::LOCALHOST), None);
        let GuestStream::Tcp(mut s) = NetnsDialer::default().dial(&ep, port, Protocol::Tcp).unwrap() else {
            panic!("not tcp")
        };
        let (mut a, _) = l.accept().unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        a.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop(l);
        let e = NetnsDialer::default().dial(&ep, port, Protocol::Tcp).unwrap_err().to_string();
        assert!(e.starts_with(&format!("connecting to tcp 127.0.0.1:{port}: ")), "{e}");
    }

    #[test]
    fn a_missing_namespace_is_named() {
        let ep = VmiEndpoint {
            netns: Some("/run/netns/does-not-exist-virt-net".into()),
            guest_ipv4: Some(Ipv4Addr::LOCALHOST),
            guest_ipv6: None,
        };
        let e = NetnsDialer::default().dial(&ep, 22, Protocol::Tcp).unwrap_err().to_string();
        assert!(e.contains("/run/netns/does-not-exist-virt-net"), "{e}");
    }

    #[test]
    fn the_channel_double_hands_over_the_guest_end() {
        let (d, rx) = ChannelDialer::new();
        let ep = endpoint(Some(Ipv4Addr::new(10, 0, 2, 2)), None);
        let GuestStream::Local(mut node) = d.dial(&ep, 8080, Protocol::Tcp).unwrap() else { panic!() };
        let mut got = rx.recv().unwrap();
        assert_eq!((got.port, got.protocol, got.endpoint), (8080, Protocol::Tcp, ep.clone()));
        node.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        got.guest.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        drop(rx);
        assert!(matches!(d.dial(&ep, 1, Protocol::Tcp), Err(DialError::Closed)));
    }
}
