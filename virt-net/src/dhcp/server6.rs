//! The IPv6 side of a masquerade interface: one thread per bridge answering DHCPv6 ([`respond6`],
//! UDP port 547, group ff02::1:2) and sending router advertisements ([`advertisement`], a raw
//! ICMPv6 socket filtered to router solicitations): unsolicited ones a few seconds apart at first,
//! then every minute, and one at once for each solicitation.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ra::{advertisement, is_solicitation, RaConfig, ROUTER_SOLICITATION};
use super::server::{set_opt, DhcpServer, ServerError};
use super::v6::{parse_reply6, respond6, Dhcp6Config};
use crate::netns;

/// Unsolicited advertisements: the first few this far apart (RFC 4861's initial burst, shortened
/// as a VMI's bridge has one guest that just booted), then [`RA_INTERVAL`].
const RA_INITIAL: Duration = Duration::from_secs(3);
const RA_INITIAL_COUNT: u32 = 3;
const RA_INTERVAL: Duration = Duration::from_secs(60);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ALL_DHCP: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

fn new_socket(ty: i32, proto: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the returned OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET6, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifindex(iface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name with a NUL byte")
    })?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

fn join(fd: i32, group: Ipv6Addr, index: u32) -> std::io::Result<()> {
    let mreq = libc::ipv6_mreq {
        ipv6mr_multiaddr: libc::in6_addr { s6_addr: group.octets() },
        ipv6mr_interface: index,
    };
    // SAFETY: `ipv6_mreq` is plain data; its bytes are read for the duration of the call.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&mreq as *const libc::ipv6_mreq).cast::<u8>(),
            std::mem::size_of_val(&mreq),
        )
    };
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, bytes)
}

fn sockaddr6(addr: SocketAddrV6) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: addr.port().to_be(),
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: addr.ip().octets() },
        sin6_scope_id: addr.scope_id(),
    }
}

fn bind6(fd: i32, port: u16) -> std::io::Result<()> {
    let a = sockaddr6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0));
    // SAFETY: `a` is a valid sockaddr_in6 for the duration of the call.
    let r = unsafe {
        libc::bind(fd, (&a as *const libc::sockaddr_in6).cast(), std::mem::size_of_val(&a) as libc::socklen_t)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The two sockets of one bridge, opened inside the VMI's namespace.
struct Sockets {
    dhcp: UdpSocket,
    icmp: OwnedFd,
    index: u32,
}

fn open(
    iface: &str,
    err: impl Fn(&'static str, std::io::Error) -> ServerError,
) -> Result<Sockets, ServerError> {
    let index = ifindex(iface).map_err(|e| err("if_nametoindex", e))?;
    let one = 1i32.to_ne_bytes();
    let udp = new_socket(libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0).map_err(|e| err("socket (udp6)", e))?;
    let fd = udp.as_raw_fd();
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &one).map_err(|e| err("IPV6_V6ONLY", e))?;
    set_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &one).map_err(|e| err("SO_REUSEADDR", e))?;
    set_opt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, iface.as_bytes())
        .map_err(|e| err("SO_BINDTODEVICE", e))?;
    bind6(fd, 547).map_err(|e| err("bind [::]:547", e))?;
    join(fd, ALL_DHCP, index).map_err(|e| err("join ff02::1:2", e))?;

    let icmp = new_socket(libc::SOCK_RAW | libc::SOCK_NONBLOCK, libc::IPPROTO_ICMPV6)
        .map_err(|e| err("socket (icmpv6)", e))?;
    let fd = icmp.as_raw_fd();
    set_opt(fd, libc::SOL_SOCKET, libc::SO_BINDTODEVICE, iface.as_bytes())
        .map_err(|e| err("SO_BINDTODEVICE", e))?;
    // ICMP6_FILTER: a set bit blocks the type; let only router solicitations through.
    let mut filter = [u32::MAX; 8];
    filter[usize::from(ROUTER_SOLICITATION >> 5)] &= !(1u32 << (ROUTER_SOLICITATION & 31));
    let bytes: Vec<u8> = filter.iter().flat_map(|w| w.to_ne_bytes()).collect();
    set_opt(fd, libc::IPPROTO_ICMPV6, 1, &bytes).map_err(|e| err("ICMP6_FILTER", e))?;
    // Neighbour discovery is only accepted with hop limit 255 (RFC 4861 6.1.2).
    let hops = 255i32.to_ne_bytes();
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, &hops)
        .map_err(|e| err("IPV6_MULTICAST_HOPS", e))?;
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, &hops)
        .map_err(|e| err("IPV6_UNICAST_HOPS", e))?;
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, &(index as i32).to_ne_bytes())
        .map_err(|e| err("IPV6_MULTICAST_IF", e))?;
    set_opt(fd, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, &0i32.to_ne_bytes())
        .map_err(|e| err("IPV6_MULTICAST_LOOP", e))?;
    join(fd, ALL_ROUTERS, index).map_err(|e| err("join ff02::2", e))?;
    Ok(Sockets { dhcp: UdpSocket::from(udp), icmp, index })
}

impl DhcpServer {
    /// Serves DHCPv6 `dhcp` and advertises `ra` on `iface` of the namespace at `netns`. `acks()`
    /// counts REPLYs that handed out the address.
    pub fn start_v6(netns: &Path, iface: &str, dhcp: Dhcp6Config, ra: RaConfig) -> Result<Self, ServerError> {
        let err = |what, source| ServerError::Socket {
            iface: iface.to_string(),
            netns: netns.display().to_string(),
            what,
            source,
        };
        let sockets = netns::run_in(netns, || open(iface, err))??;
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU64::new(0));
        let (stop2, acks2, name) = (stop.clone(), acks.clone(), iface.to_string());
        let ns: PathBuf = netns.to_path_buf();
        let thread = std::thread::Builder::new()
            .name(format!("dhcp6-{iface}"))
            .spawn(move || serve6(&sockets, &dhcp, &advertisement(&ra), &stop2, &acks2, &name, &ns))
            .map_err(|e| err("thread", e))?;
        Ok(Self::running(stop, acks, thread))
    }
}

fn send_ra(s: &Sockets, ra: &[u8], iface: &str) {
    let to = sockaddr6(SocketAddrV6::new(ALL_NODES, 0, 0, s.index));
    // SAFETY: `ra` and `to` are valid for the duration of the call.
    let r = unsafe {
        libc::sendto(
            s.icmp.as_raw_fd(),
            ra.as_ptr().cast(),
            ra.len(),
            0,
            (&to as *const libc::sockaddr_in6).cast(),
            std::mem::size_of_val(&to) as libc::socklen_t,
        )
    };
    if r < 0 {
        // Before the guest's NIC is up the bridge has no carrier, hence no link-local source
        // address: the next advertisement (or the guest's solicitation) goes out instead.
        log::debug!("router advertisement on {iface}: {}", std::io::Error::last_os_error());
    }
}

fn serve6(
    s: &Sockets,
    dhcp: &Dhcp6Config,
    ra: &[u8],
    stop: &AtomicBool,
    acks: &AtomicU64,
    iface: &str,
    ns: &Path,
) {
    let mut buf = vec![0u8; 2048];
    let mut sent = 0u32;
    let mut next_ra = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_ra {
            send_ra(s, ra, iface);
            sent = sent.saturating_add(1);
            next_ra = now + if sent < RA_INITIAL_COUNT { RA_INITIAL } else { RA_INTERVAL };
        }
        let wait = next_ra.saturating_duration_since(Instant::now()).min(Duration::from_millis(200));
        let mut fds = [
            libc::pollfd { fd: s.dhcp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: s.icmp.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait.as_millis() as i32) };
        if n <= 0 {
            continue;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            // SAFETY: `buf` is valid for writes of its length.
            let got = unsafe { libc::recv(s.icmp.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got > 0 && is_solicitation(&buf[..got as usize]) {
                send_ra(s, ra, iface);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let (n, from) = match s.dhcp.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    log::warn!("DHCPv6 server on {iface} ({}): {e}", ns.display());
                    continue;
                }
            };
            let reply = match respond6(dhcp, &buf[..n]) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    log::debug!("DHCPv6 server on {iface}: {e}");
                    continue;
                }
            };
            let to = match from {
                SocketAddr::V6(a) => SocketAddrV6::new(*a.ip(), a.port(), 0, s.index),
                SocketAddr::V4(_) => continue,
            };
            match s.dhcp.send_to(&reply, to) {
                Ok(_) => {
                    if matches!(parse_reply6(&reply), Some((7, a)) if !a.is_empty()) {
                        acks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => log::warn!("DHCPv6 server on {iface}: sending to {to}: {e}"),
            }
        }
    }
}
