//! Linux tap devices as [`NetBackend`]s.
//!
//! A tap is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte header
//! (`TUNSETVNETHDRSZ`), so each read or write is one Ethernet frame prefixed with the same
//! `virtio_net_hdr_v1` the guest's driver uses: offload metadata passes through without parsing.
//! What the kernel may hand the guest unfinished (partial checksums, TSO) follows the features the
//! guest accepted, through `TUNSETOFFLOAD`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Arc;

use virt_core::machine::{InterfaceBackend, InterfaceSpec, NetOpener};
use virt_core::net::{NetBackend, NetError, Offloads, VNET_HDR_LEN};

/// Longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Errors opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name does not fit an interface name.
    #[error("tap name {0:?} is empty, longer than {MAX_NAME_LEN} bytes or has '/', ':' or whitespace")]
    BadName(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open /dev/net/tun for tap {name}: {source}")]
    OpenTun {
        /// The tap.
        name: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// An ioctl on the tap failed.
    #[error("{op} on tap {name} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// The tap.
        name: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// `struct ifreq` as TUNSETIFF/TUNGETIFF use it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tap device; the interface lives as long as this (unless it was made persistent elsewhere).
pub struct Tap {
    file: File,
    name: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

impl Tap {
    /// Opens tap `name`, creating it if it does not exist (creating one needs `CAP_NET_ADMIN`; a tap
    /// made persistent for this user beforehand does not).
    pub fn open(name: &str) -> Result<Self, TapError> {
        if !valid_name(name) {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun { name: name.to_string(), source })?;
        let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may write back) one ifreq, which `req` is, for the call's duration.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
        if r < 0 {
            return Err(TapError::Ioctl {
                op: "TUNSETIFF",
                name: name.to_string(),
                source: std::io::Error::last_os_error(),
            });
        }
        let tap = Self { file, name: name.to_string() };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    /// Takes a tap file descriptor opened by someone else (a privileged parent, or a socket's
    /// `SCM_RIGHTS`), which must have been set up with `IFF_VNET_HDR`.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        let file = File::from(fd);
        let mut req = IfReq { name: [0; 16], flags: 0, _pad: [0; 22] };
        // SAFETY: TUNGETIFF writes one ifreq into `req`, which outlives the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) };
        let fd_name = format!("fd {}", file.as_raw_fd());
        if r < 0 {
            let source = std::io::Error::last_os_error();
            return Err(TapError::Ioctl { op: "TUNGETIFF", name: fd_name, source });
        }
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(req.name.len());
        let name = String::from_utf8_lossy(&req.name[..len]).into_owned();
        if i32::from(req.flags) & libc::IFF_VNET_HDR == 0 || i32::from(req.flags) & libc::IFF_TAP == 0 {
            return Err(TapError::Ioctl {
                op: "TUNGETIFF",
                name,
                source: std::io::Error::other("not a tap with IFF_VNET_HDR"),
            });
        }
        // SAFETY: F_GETFL/F_SETFL on a descriptor this function owns.
        let r = unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK)
        };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            return Err(TapError::Ioctl { op: "fcntl(O_NONBLOCK)", name, source });
        }
        let tap = Self { file, name };
        tap.set_vnet_hdr_len()?;
        Ok(tap)
    }

    fn set_vnet_hdr_len(&self) -> Result<(), TapError> {
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which `len` is, for the call's duration.
        let r =
            unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len as *const libc::c_int) };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            return Err(TapError::Ioctl { op: "TUNSETVNETHDRSZ", name: self.name.clone(), source });
        }
        Ok(())
    }

    /// The interface name.
    pub fn if_name(&self) -> &str {
        &self.name
    }
}

/// `TUN_F_*` bits for `offloads`.
pub fn tun_offload_flags(o: Offloads) -> libc::c_uint {
    let mut flags = 0;
    if o.csum {
        flags |= libc::TUN_F_CSUM;
        if o.tso4 {
            flags |= libc::TUN_F_TSO4;
        }
        if o.tso6 {
            flags |= libc::TUN_F_TSO6;
        }
        if o.ecn && (o.tso4 || o.tso6) {
            flags |= libc::TUN_F_TSO_ECN;
        }
    }
    flags
}

impl NetBackend for Tap {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() < VNET_HDR_LEN {
            return Err(NetError::Short { len: frame.len() });
        }
        match (&self.file).write(frame) {
            Ok(_) => Ok(()),
            // The queue towards the host is full, or the interface is down: the frame is lost, as
            // on a wire.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(()),
            Err(source) => Err(NetError::Send { backend: self.name.clone(), len: frame.len(), source }),
        }
    }

    fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(source) => Err(NetError::Recv { backend: self.name.clone(), source }),
        }
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn vhost_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn set_offloads(&self, offloads: Offloads) -> Result<(), NetError> {
        let flags = tun_offload_flags(offloads);
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is shared.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            return Err(NetError::Offloads { backend: self.name.clone(), offloads, source });
        }
        Ok(())
    }
}

/// Opens the tap of each interface for the native VMM.
pub fn opener() -> NetOpener {
    Arc::new(|iface: &InterfaceSpec| -> Result<Arc<dyn NetBackend>, NetError> {
        let tap = match &iface.backend {
            InterfaceBackend::Tap { name } => Tap::open(name),
            InterfaceBackend::TapFd { fd } => {
                // SAFETY: the spec names a descriptor this process inherited and keeps open; it is
                // only borrowed for the duration of the duplication.
                let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(*fd) };
                match borrowed.try_clone_to_owned() {
                    Ok(owned) => Tap::from_fd(owned),
                    Err(source) => Err(TapError::Ioctl { op: "dup", name: format!("fd {fd}"), source }),
                }
            }
            InterfaceBackend::None => {
                return Err(NetError::Open {
                    backend: iface.name.clone(),
                    source: std::io::Error::other("the interface is not connected to a tap"),
                })
            }
        };
        tap.map(|t| Arc::new(t) as Arc<dyn NetBackend>).map_err(|e| NetError::Open {
            backend: iface.name.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    })
}
