//! A DHCPv4 server thread for one client, on one bridge, inside one network namespace (the IPv6
//! one, DHCPv6 with router advertisements, is `server6`).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{respond, DhcpConfig};
use crate::netns::{self, NetnsError};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// The socket could not be set up.
    #[error("DHCP server on {iface} in {netns}: {what}: {source}")]
    Socket {
        /// The interface.
        iface: String,
        /// The namespace.
        netns: String,
        /// The step.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// A running server; stopped when dropped.
pub struct DhcpServer {
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub(super) fn set_opt(fd: i32, level: i32, name: i32, value: &[u8]) -> std::io::Result<()> {
    // SAFETY: `value` is a valid buffer of the given length for the duration of the call.
    let r =
        unsafe { libc::setsockopt(fd, level, name, value.as_ptr().cast(), value.len() as libc::socklen_t) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl DhcpServer {
    /// Serves `cfg` on `iface` of the namespace at `netns` (port 67, bound to the device, so
    /// several bridges of one namespace each have their own server).
    pub fn start(netns: &Path, iface: &str, cfg: DhcpConfig) -> Result<Self, ServerError> {
        let sock_err = |what, source| ServerError::Socket {
            iface: iface.to_string(),
            netns: netns.display().to_string(),
            what,
            source,
        };
        let socket = netns::run_in(netns, || -> Result<UdpSocket, ServerError> {
            let raw = socket2_udp().map_err(|e| sock_err("socket", e))?;
            let fd = raw.as_raw_fd();
            set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32.to_ne_bytes())
                .map_err(|e| sock_err("SO_REUSEADDR", e))?;
            set_opt(fd, libc::SOL_SOCKET, libc::SO_BROADCAST, &1i32.to_ne_bytes())
                .map_err(|e| sock_err("SO_BROADCAST", e))?;
            set_opt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, iface.as_bytes())
                .map_err(|e| sock_err("SO_BINDTODEVICE", e))?;
            bind_any(fd, 67).map_err(|e| sock_err("bind 0.0.0.0:67", e))?;
            let s = UdpSocket::from(raw);
            s.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| sock_err("SO_RCVTIMEO", e))?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let (stop2, acks2, name) = (stop.clone(), acks.clone(), iface.to_string());
        let ns_name: PathBuf = netns.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(format!("dhcp-{iface}"))
            .spawn(move || serve(socket, cfg, &stop2, &acks2, &name, &ns_name))
            .map_err(|e| sock_err("thread", e))?;
        Ok(Self { stop, acks, thread: Some(thread) })
    }

    pub(super) fn running(
        stop: Arc<AtomicBool>,
        acks: Arc<AtomicU64>,
        thread: std::thread::JoinHandle<()>,
    ) -> Self {
        Self { stop, acks, thread: Some(thread) }
    }

    /// How many ACKs (DHCPv6: REPLYs with the address) the server has sent.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }
}

impl Drop for DhcpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn socket2_udp() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn bind_any(fd: i32, port: u16) -> std::io::Result<()> {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in for the duration of the call.
    let r = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn serve(socket: UdpSocket, cfg: DhcpConfig, stop: &AtomicBool, acks: &AtomicU64, iface: &str, ns: &Path) {
    let mut buf = vec![0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let n = match socket.recv_from(&mut buf) {
            Ok((n, _)) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) => {
                log::warn!("DHCP server on {iface} ({}): {e}", ns.display());
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        let reply = match respond(&cfg, &buf[..n]) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                log::debug!("DHCP server on {iface}: {e}");
                continue;
            }
        };
        // A client without an address is answered by broadcast (it cannot ARP for itself yet).
        let ciaddr = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
        let to = if ciaddr.is_unspecified() { Ipv4Addr::BROADCAST } else { ciaddr };
        match socket.send_to(&reply, SocketAddrV4::new(to, 68)) {
            Ok(_) => {
                if reply.len() > 242 && is_ack(&reply) {
                    acks.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => log::warn!("DHCP server on {iface}: sending to {to}: {e}"),
        }
    }
}

fn is_ack(reply: &[u8]) -> bool {
    super::parse_reply_type(reply) == Some(dhcproto::v4::MessageType::Ack)
}
