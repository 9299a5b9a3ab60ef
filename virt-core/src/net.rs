//! The network-backend seam: where a NIC's frames go.
//!
//! The native VMM's virtio-net device talks to a [`NetBackend`]: whole Ethernet frames, each prefixed
//! with the 12-byte `virtio_net_hdr_v1` (checksum and segmentation offload metadata), and a file
//! descriptor that polls readable when a frame waits. `virt-net` implements it with a Linux tap device
//! (`IFF_VNET_HDR`, so the header passes through untouched); [`NetPair`] is the in-process test double.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

/// Length of `virtio_net_hdr_v1` (with `num_buffers`), the header every frame carries.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame plus header a backend hands over: a 64 KiB GSO frame, its Ethernet and VLAN header
/// and the virtio-net header.
pub const MAX_FRAME_LEN: usize = 65_562;

/// `virtio_net_hdr.flags`: the checksum of this frame is partial (`csum_start`, `csum_offset`).
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.gso_type`: not a GSO frame.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `virtio_net_hdr.gso_type`: TCP over IPv4 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `virtio_net_hdr.gso_type`: TCP over IPv6 segmentation.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// Offloads the guest accepted for frames it receives: what the backend may hand over unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offloads {
    /// Partial checksums (`VIRTIO_NET_F_GUEST_CSUM`).
    pub csum: bool,
    /// TCPv4 segments larger than the MTU (`VIRTIO_NET_F_GUEST_TSO4`).
    pub tso4: bool,
    /// TCPv6 segments larger than the MTU (`VIRTIO_NET_F_GUEST_TSO6`).
    pub tso6: bool,
    /// TSO with ECN (`VIRTIO_NET_F_GUEST_ECN`).
    pub ecn: bool,
}

impl Offloads {
    fn bits(self) -> u8 {
        u8::from(self.csum) | u8::from(self.tso4) << 1 | u8::from(self.tso6) << 2 | u8::from(self.ecn) << 3
    }
    fn from_bits(b: u8) -> Self {
        Self { csum: b & 1 != 0, tso4: b & 2 != 0, tso6: b & 4 != 0, ecn: b & 8 != 0 }
    }
}

/// Whether a virtio NIC's frames are moved by the kernel (vhost-net) or by the VMM itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VhostMode {
    /// vhost-net when `/dev/vhost-net` opens and the NIC is on a tap, else the userspace path
    /// (the launcher's log says which).
    #[default]
    Auto,
    /// vhost-net or the machine does not start.
    On,
    /// Always the VMM's own (userspace) path.
    Off,
}

/// Errors of network backends.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A frame could not be sent.
    #[error("cannot send a {len}-byte frame on {backend}: {source}")]
    Send {
        /// The backend (tap name or `pair`).
        backend: String,
        /// Frame length with header.
        len: usize,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A frame could not be received.
    #[error("cannot receive a frame on {backend}: {source}")]
    Recv {
        /// The backend.
        backend: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A frame shorter than the virtio-net header.
    #[error("a {len}-byte frame is shorter than the {VNET_HDR_LEN}-byte virtio-net header")]
    Short {
        /// Its length.
        len: usize,
    },
    /// The backend refused the offload settings.
    #[error("cannot set offloads {offloads:?} on {backend}: {source}")]
    Offloads {
        /// The backend.
        backend: String,
        /// What was asked.
        offloads: Offloads,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The backend could not be opened or created.
    #[error("cannot open network backend {backend}: {source}")]
    Open {
        /// What was opened (tap name, fd number).
        backend: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A NIC's link to the outside: frames in and out with the virtio-net header.
///
/// Every frame starts with a [`VNET_HDR_LEN`]-byte `virtio_net_hdr_v1`. Implementations are
/// non-blocking: [`NetBackend::recv`] returns `Ok(None)` when no frame waits, and [`NetBackend::fd`]
/// polls readable when one does.
pub trait NetBackend: Send + Sync {
    /// A name for logs and errors (the tap's name).
    fn name(&self) -> &str;
    /// Sends one frame (header included). A full queue drops the frame, as a wire would.
    fn send(&self, frame: &[u8]) -> Result<(), NetError>;
    /// Receives one frame (header included) into `buf`, which should hold [`MAX_FRAME_LEN`] bytes.
    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, NetError>;
    /// Polls readable when [`NetBackend::recv`] has a frame.
    fn fd(&self) -> RawFd;
    /// The offloads the guest accepted: the backend may then hand over partial checksums and GSO frames.
    fn set_offloads(&self, offloads: Offloads) -> Result<(), NetError>;
    /// The descriptor vhost-net may use as this backend (`VHOST_NET_SET_BACKEND`): a tap's. `None`
    /// (the default) keeps the device on its userspace path.
    fn vhost_fd(&self) -> Option<RawFd> {
        None
    }
}

/// One end of an in-process link (a `SOCK_SEQPACKET` socket pair: one message per frame).
pub struct NetPair {
    name: String,
    sock: OwnedFd,
    offloads: AtomicU8,
}

impl NetPair {
    /// Two connected ends named `a` and `b`.
    pub fn new(a: &str, b: &str) -> Result<(Self, Self), NetError> {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into the two-element array it is given.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(NetError::Open {
                backend: format!("pair {a}/{b}"),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: both descriptors were just created by socketpair and are owned by nobody else.
        let (x, y) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let end = |name: &str, sock| Self { name: name.to_string(), sock, offloads: AtomicU8::new(0) };
        Ok((end(a, x), end(b, y)))
    }

    /// The offloads last set on this end.
    pub fn offloads(&self) -> Offloads {
        Offloads::from_bits(self.offloads.load(Ordering::SeqCst))
    }
}

impl NetBackend for NetPair {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() < VNET_HDR_LEN {
            return Err(NetError::Short { len: frame.len() });
        }
        // SAFETY: the pointer and length describe `frame`, which outlives the call.
        let n = unsafe {
            libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_NOSIGNAL)
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(()); // dropped, as a full tap queue drops
            }
            return Err(NetError::Send { backend: self.name.clone(), len: frame.len(), source: e });
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        // SAFETY: the pointer and length describe `buf`, which outlives the call.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(NetError::Recv { backend: self.name.clone(), source: e });
        }
        Ok(Some(n as usize))
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn set_offloads(&self, offloads: Offloads) -> Result<(), NetError> {
        self.offloads.store(offloads.bits(), Ordering::SeqCst);
        Ok(())
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// A MAC address that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a MAC address (six hex octets separated by ':' or '-')")]
pub struct MacParseError(pub String);

impl std::str::FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacParseError(s.to_string());
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Self(out))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (stable for the same seed).
    pub fn derived(seed: &str) -> Self {
        // FNV-1a: stable across releases and platforms (std's hasher is not).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        Self([0x02, b[0], b[1], b[2], b[3], b[4]])
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_carries_frames_and_records_offloads() {
        let (a, b) = NetPair::new("a", "b").unwrap();
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        assert!(b.recv(&mut buf).unwrap().is_none());
        let frame: Vec<u8> = (0..100u8).collect();
        a.send(&frame).unwrap();
        assert_eq!(b.recv(&mut buf).unwrap(), Some(100));
        assert_eq!(&buf[..100], &frame[..]);
        assert!(matches!(a.send(&[0; 4]), Err(NetError::Short { len: 4 })));
        let o = Offloads { csum: true, tso4: true, tso6: false, ecn: true };
        b.set_offloads(o).unwrap();
        assert_eq!(b.offloads(), o);
    }

    #[test]
    fn mac_addresses_parse_print_and_derive() {
        let m: MacAddr = "DE-AD-00-00-be-af".parse().unwrap();
        assert_eq!(m.to_string(), "de:ad:00:00:be:af");
        for bad in ["de:ad:00:00:be", "de:ad:00:00:be:af:00", "zz:ad:00:00:be:af", "dead:00:00:be:af:0"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        let d = MacAddr::derived("vm/eth0");
        assert_eq!(d, MacAddr::derived("vm/eth0"));
        assert_ne!(d, MacAddr::derived("vm/eth1"));
        assert_eq!(d.0[0], 0x02);
    }
}
