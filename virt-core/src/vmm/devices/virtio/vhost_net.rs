//! vhost-net: the kernel moves a virtio-net device's frames between its tap and the guest's rings.
//!
//! `/dev/vhost-net` is opened (and `VHOST_SET_OWNER` issued) when the VM is built, on the thread
//! that builds it, because the vCPU thread that later activates the device may not open files under
//! the launcher's seccomp filters. At `DRIVER_OK` [`VhostNet::start`] hands the kernel the guest
//! memory table, both rings (size, addresses, the positions the device model holds), the queues'
//! ioeventfds as kick descriptors, the device's irqfd as the call descriptor of both rings (the
//! kernel raises the guest's interrupt itself), and the tap as the backend of each ring. [`VhostNet::stop`] detaches the tap and reads the ring positions back
//! (`VHOST_GET_VRING_BASE`), so a reset, a snapshot or the switch back to the userspace path
//! continues from where the kernel stopped.
//!
//! The frames keep the 12-byte `virtio_net_hdr_v1` on the tap (`TUNSETVNETHDRSZ` as the userspace
//! path sets it); `VHOST_NET_F_VIRTIO_NET_HDR` is never acked, so the kernel passes the header
//! through the socket, and the tap's offloads (`TUNSETOFFLOAD`) follow the guest's features as before.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};

use super::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};

/// The vhost ioctl numbers (`linux/vhost.h`).
#[allow(missing_docs)]
mod nr {
    use super::{MemoryHeader, VringAddr, VringFile, VringState};
    use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

    const VHOST: u32 = 0xAF;
    ioctl_ior_nr!(VHOST_GET_FEATURES, VHOST, 0x00, u64);
    ioctl_iow_nr!(VHOST_SET_FEATURES, VHOST, 0x00, u64);
    ioctl_io_nr!(VHOST_SET_OWNER, VHOST, 0x01);
    ioctl_iow_nr!(VHOST_SET_MEM_TABLE, VHOST, 0x03, MemoryHeader);
    ioctl_iow_nr!(VHOST_SET_VRING_NUM, VHOST, 0x10, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_ADDR, VHOST, 0x11, VringAddr);
    ioctl_iow_nr!(VHOST_SET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iowr_nr!(VHOST_GET_VRING_BASE, VHOST, 0x12, VringState);
    ioctl_iow_nr!(VHOST_SET_VRING_KICK, VHOST, 0x20, VringFile);
    ioctl_iow_nr!(VHOST_SET_VRING_CALL, VHOST, 0x21, VringFile);
    ioctl_iow_nr!(VHOST_NET_SET_BACKEND, VHOST, 0x30, VringFile);
}
use nr::*;

/// virtio-net's mergeable receive buffers (`VIRTIO_NET_F_MRG_RXBUF`).
const MRG_RXBUF: u32 = 15;

/// The feature bits that change how the rings are laid out or used: the kernel must know every one
/// of them the guest accepted, or it would read the rings differently from the driver. The rest
/// (checksum, TSO, MAC, MTU, status) are the tap's business or the device model's.
pub const RING_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << MRG_RXBUF;

/// `struct vhost_memory` without its flexible array of regions.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MemoryHeader {
    nregions: u32,
    padding: u32,
}

/// `struct vhost_memory_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct MemoryRegion {
    guest_phys_addr: u64,
    memory_size: u64,
    userspace_addr: u64,
    flags_padding: u64,
}

/// `struct vhost_vring_state`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct VringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct VringAddr {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
}

/// Errors of the vhost-net data path.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// `/dev/vhost-net` does not open (no `vhost_net` module, or not in the jail).
    #[error("cannot open /dev/vhost-net: {0}")]
    Open(#[source] std::io::Error),
    /// An ioctl on the vhost descriptor failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl.
        op: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The guest accepted ring features the kernel does not implement.
    #[error("the guest accepted ring features {0:#x} that vhost-net lacks")]
    Features(u64),
    /// A ring does not lie within one region of guest memory.
    #[error("ring {queue}'s {part} at {gpa:#x} (+{len}) is not inside one guest memory region")]
    Ring {
        /// The queue.
        queue: usize,
        /// `descriptor table`, `available ring` or `used ring`.
        part: &'static str,
        /// Its guest address.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// Guest memory could not be read (the used index when stopping).
    #[error("guest memory: {0}")]
    Memory(String),
}

fn check(op: &'static str, r: libc::c_int) -> Result<(), VhostError> {
    if r < 0 {
        return Err(VhostError::Ioctl { op, source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// An open `/dev/vhost-net` owned by this process.
pub struct VhostNet {
    file: File,
    features: u64,
    /// How many rings are attached to a tap (0 when stopped).
    running: usize,
}

impl VhostNet {
    /// Opens `/dev/vhost-net`, takes ownership of it for this process and reads its features.
    pub fn open() -> Result<Self, VhostError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open("/dev/vhost-net")
            .map_err(VhostError::Open)?;
        // SAFETY: VHOST_SET_OWNER takes no argument; `file` is an open vhost descriptor.
        check("VHOST_SET_OWNER", unsafe { ioctl(&file, VHOST_SET_OWNER()) })?;
        let mut features = 0u64;
        // SAFETY: VHOST_GET_FEATURES writes one u64 into `features`, which outlives the call.
        check("VHOST_GET_FEATURES", unsafe {
            ioctl_with_mut_ref(&file, VHOST_GET_FEATURES(), &mut features)
        })?;
        Ok(Self { file, features, running: 0 })
    }

    /// The features the kernel implements.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether rings are attached to a tap.
    pub fn running(&self) -> bool {
        self.running > 0
    }

    /// Hands `queues` (with their kick eventfds, rx first) of a driver that accepted `acked`
    /// features to the kernel, with `tap` as their backend and `call` as the eventfd it writes
    /// when the guest is to be interrupted. On error nothing stays attached.
    pub fn start(
        &mut self,
        mem: &GuestMemoryMmap,
        acked: u64,
        queues: &[(Queue, Arc<EventFd>)],
        tap: RawFd,
        call: RawFd,
    ) -> Result<(), VhostError> {
        let missing = acked & RING_FEATURES & !self.features;
        if missing != 0 {
            return Err(VhostError::Features(missing));
        }
        let features = acked & self.features;
        // SAFETY: VHOST_SET_FEATURES reads one u64, which `features` is, for the call's duration.
        check("VHOST_SET_FEATURES", unsafe { ioctl_with_ref(&self.file, VHOST_SET_FEATURES(), &features) })?;
        self.set_mem_table(mem)?;
        for (i, (q, kick)) in queues.iter().enumerate() {
            if let Err(e) = self.start_ring(mem, i, q, kick, tap, call) {
                // Nothing stays attached: this ring (its backend may be the step that failed) and
                // the ones before it.
                for j in 0..=i {
                    let _ = self.detach(j);
                }
                self.running = 0;
                return Err(e);
            }
            self.running = i + 1;
        }
        Ok(())
    }

    fn set_mem_table(&self, mem: &GuestMemoryMmap) -> Result<(), VhostError> {
        let regions: Vec<MemoryRegion> = mem
            .iter()
            .filter_map(|r| {
                let hva = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(MemoryRegion {
                    guest_phys_addr: r.start_addr().0,
                    memory_size: r.len(),
                    userspace_addr: hva as u64,
                    flags_padding: 0,
                })
            })
            .collect();
        // The header and its regions, contiguous, in a buffer of u64s (8-byte aligned like both).
        let header_words = std::mem::size_of::<MemoryHeader>() / 8;
        let region_words = std::mem::size_of::<MemoryRegion>() / 8;
        let mut buf = vec![0u64; header_words + region_words * regions.len()];
        let header = MemoryHeader { nregions: regions.len() as u32, padding: 0 };
        // SAFETY: `buf` holds header_words + region_words * n u64s, exactly the header and the n
        // regions, all plain-old-data with 8-byte alignment at most; the writes stay inside it.
        unsafe {
            let base = buf.as_mut_ptr();
            std::ptr::write(base.cast::<MemoryHeader>(), header);
            let first = base.add(header_words).cast::<MemoryRegion>();
            for (i, r) in regions.iter().enumerate() {
                std::ptr::write(first.add(i), *r);
            }
        }
        // SAFETY: VHOST_SET_MEM_TABLE reads the header and `nregions` regions after it, which `buf`
        // holds, for the call's duration.
        check("VHOST_SET_MEM_TABLE", unsafe {
            ioctl_with_ptr(&self.file, VHOST_SET_MEM_TABLE(), buf.as_ptr().cast::<MemoryHeader>())
        })
    }

    fn start_ring(
        &self,
        mem: &GuestMemoryMmap,
        i: usize,
        q: &Queue,
        kick: &EventFd,
        tap: RawFd,
        call: RawFd,
    ) -> Result<(), VhostError> {
        let index = i as u32;
        let n = u64::from(q.size());
        let hva = |part: &'static str, gpa: u64, len: u64| -> Result<u64, VhostError> {
            let bad = || VhostError::Ring { queue: i, part, gpa, len };
            let region = mem.find_region(GuestAddress(gpa)).ok_or_else(bad)?;
            let off = gpa - region.start_addr().0;
            if off.checked_add(len).is_none_or(|end| end > region.len()) {
                return Err(bad());
            }
            let p = region.get_host_address(MemoryRegionAddress(off)).map_err(|_| bad())?;
            Ok(p as u64)
        };
        let addr = VringAddr {
            index,
            flags: 0,
            desc_user_addr: hva("descriptor table", q.desc_table(), 16 * n)?,
            used_user_addr: hva("used ring", q.used_ring(), 6 + 8 * n)?,
            avail_user_addr: hva("available ring", q.avail_ring(), 6 + 2 * n)?,
            log_guest_addr: 0,
        };
        let num = VringState { index, num: u32::from(q.size()) };
        // SAFETY: VHOST_SET_VRING_NUM reads one vhost_vring_state, which `num` is.
        check("VHOST_SET_VRING_NUM", unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_NUM(), &num) })?;
        let base = VringState { index, num: u32::from(q.next_avail()) };
        // SAFETY: VHOST_SET_VRING_BASE reads one vhost_vring_state, which `base` is.
        check("VHOST_SET_VRING_BASE", unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_BASE(), &base) })?;
        // SAFETY: VHOST_SET_VRING_ADDR reads one vhost_vring_addr, which `addr` is; the addresses
        // point into guest memory, which stays mapped as long as the VM (and this descriptor) lives.
        check("VHOST_SET_VRING_ADDR", unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_ADDR(), &addr) })?;
        let kick = VringFile { index, fd: kick.as_raw_fd() };
        // SAFETY: VHOST_SET_VRING_KICK reads one vhost_vring_file, which `kick` is.
        check("VHOST_SET_VRING_KICK", unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_KICK(), &kick) })?;
        let call = VringFile { index, fd: call };
        // SAFETY: VHOST_SET_VRING_CALL reads one vhost_vring_file, which `call` is.
        check("VHOST_SET_VRING_CALL", unsafe { ioctl_with_ref(&self.file, VHOST_SET_VRING_CALL(), &call) })?;
        let backend = VringFile { index, fd: tap };
        // SAFETY: VHOST_NET_SET_BACKEND reads one vhost_vring_file, which `backend` is.
        check("VHOST_NET_SET_BACKEND", unsafe {
            ioctl_with_ref(&self.file, VHOST_NET_SET_BACKEND(), &backend)
        })
    }

    /// Detaches ring `i` from the tap and returns its next available index.
    fn detach(&self, i: usize) -> Result<u16, VhostError> {
        let index = i as u32;
        let backend = VringFile { index, fd: -1 };
        // SAFETY: VHOST_NET_SET_BACKEND reads one vhost_vring_file, which `backend` is.
        check("VHOST_NET_SET_BACKEND", unsafe {
            ioctl_with_ref(&self.file, VHOST_NET_SET_BACKEND(), &backend)
        })?;
        let mut base = VringState { index, num: 0 };
        // SAFETY: VHOST_GET_VRING_BASE reads and writes one vhost_vring_state, which `base` is.
        check("VHOST_GET_VRING_BASE", unsafe {
            ioctl_with_mut_ref(&self.file, VHOST_GET_VRING_BASE(), &mut base)
        })?;
        Ok(base.num as u16)
    }

    /// Stops the kernel serving `queues` (as given to [`VhostNet::start`]) and moves their positions
    /// to where it stopped: the next available index from the kernel, the used index from the ring.
    pub fn stop(&mut self, mem: &GuestMemoryMmap, queues: &mut [Queue]) -> Result<(), VhostError> {
        let mut first_err = None;
        for (i, q) in queues.iter_mut().enumerate().take(self.running) {
            match self.detach(i) {
                Ok(avail) => q.set_next_avail(avail),
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            }
            fence(Ordering::SeqCst);
            match mem.read_obj::<u16>(GuestAddress(q.used_ring().wrapping_add(2))) {
                Ok(used) => q.set_next_used(u16::from_le(used)),
                Err(e) => {
                    first_err.get_or_insert(VhostError::Memory(e.to_string()));
                }
            }
        }
        self.running = 0;
        first_err.map_or(Ok(()), Err)
    }
}
