//! virtio-net: a NIC for the guest, whose frames go through a [`NetBackend`].
//!
//! Queue 0 receives (backend -> guest), queue 1 transmits. One worker thread per device waits on both
//! queues' eventfds (fed by KVM ioeventfds), the backend's fd and a kill eventfd, so neither direction
//! runs on a vCPU thread; interrupts go out through the irqfd. Frames keep their `virtio_net_hdr_v1`
//! end to end: the tap (`IFF_VNET_HDR`) understands the same header, so checksum and segmentation
//! offloads cost no copy and no parsing here.
//!
//! Every guest buffer is bounded: a transmitted chain longer than [`MAX_FRAME_LEN`] is dropped, a
//! received frame is copied into at most the chains the guest offered, and a chain that points outside
//! guest memory is returned with length 0. Nothing a guest writes into a descriptor table panics.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::vhost_net::{VhostError, VhostNet};
use super::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INT_USED_RING, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::net::{MacAddr, NetBackend, Offloads, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Virtio device ID of a network card.
pub const VIRTIO_ID_NET: u32 = 1;
const QUEUE_SIZE: u16 = 256;

/// Feature bits of virtio-net (virtio 1.1 section 5.1.3).
pub mod features {
    /// The device handles partial checksums of transmitted frames.
    pub const CSUM: u32 = 0;
    /// The driver handles partial checksums of received frames.
    pub const GUEST_CSUM: u32 = 1;
    /// The device reports its MTU.
    pub const MTU: u32 = 3;
    /// The device has a MAC address.
    pub const MAC: u32 = 5;
    /// The driver takes TSOv4 frames.
    pub const GUEST_TSO4: u32 = 7;
    /// The driver takes TSOv6 frames.
    pub const GUEST_TSO6: u32 = 8;
    /// The driver takes TSO with ECN.
    pub const GUEST_ECN: u32 = 9;
    /// The device takes TSOv4 frames.
    pub const HOST_TSO4: u32 = 11;
    /// The device takes TSOv6 frames.
    pub const HOST_TSO6: u32 = 12;
    /// The device takes TSO with ECN.
    pub const HOST_ECN: u32 = 13;
    /// Received frames may span several buffers.
    pub const MRG_RXBUF: u32 = 15;
    /// The configuration space has a link status.
    pub const STATUS: u32 = 16;
}
use features as f;

const RX: usize = 0;
const TX: usize = 1;
/// Link status "up" in the configuration space.
const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// Tokens of the worker's epoll set.
const TOKEN_RX_QUEUE: u64 = 0;
const TOKEN_TX_QUEUE: u64 = 1;
const TOKEN_BACKEND: u64 = 2;
const TOKEN_KILL: u64 = 3;

/// What the guest sees of its NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// MAC address in the configuration space.
    pub mac: MacAddr,
    /// MTU in the configuration space (68..=65535).
    pub mtu: u16,
}

/// A virtio-net device.
pub struct Net {
    backend: Arc<dyn NetBackend>,
    config: Vec<u8>,
    /// The kernel data path, when `/dev/vhost-net` opened and the backend is a tap.
    vhost: Option<VhostNet>,
    /// A live migration runs: the userspace path serves the queues (its writes are recorded).
    migrating: bool,
    running: Option<Running>,
}

/// What an activated device serves, and with which path.
struct Running {
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    acked: u64,
    evts: Vec<Arc<EventFd>>,
    path: DataPath,
}

/// Who moves the frames.
enum DataPath {
    /// This process's worker thread, which hands the queues back when it ends.
    User { handle: JoinHandle<(Queue, Queue)>, kill: EventFd },
    /// Taken apart by [`Net::stop`].
    Stopped,
    /// The kernel (vhost-net), which raises the irqfd itself.
    Vhost { queues: Vec<Queue> },
}

impl Net {
    /// A NIC with `config`, linked to `backend`.
    pub fn new(backend: Arc<dyn NetBackend>, config: NetConfig) -> Self {
        let mut space = vec![0u8; 12];
        space[0..6].copy_from_slice(&config.mac.0);
        space[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        space[8..10].copy_from_slice(&1u16.to_le_bytes()); // max_virtqueue_pairs
        space[10..12].copy_from_slice(&config.mtu.max(68).to_le_bytes());
        Self { backend, config: space, vhost: None, migrating: false, running: None }
    }

    /// Lets the kernel move the frames (vhost-net) once the driver is ready; the backend must be a
    /// tap ([`NetBackend::vhost_fd`]), else the userspace path serves the device.
    pub fn with_vhost(mut self, vhost: VhostNet) -> Self {
        self.vhost = Some(vhost);
        self
    }

    /// Whether the kernel (vhost-net) serves the queues now.
    pub fn vhost_active(&self) -> bool {
        matches!(self.running, Some(Running { path: DataPath::Vhost { .. }, .. }))
    }

    /// Starts serving `queues` (rx, tx) with vhost-net if it can, else with a worker thread.
    fn start(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        acked: u64,
        queues: Vec<(Queue, Arc<EventFd>)>,
    ) -> Result<(), ActivateError> {
        let evts: Vec<Arc<EventFd>> = queues.iter().map(|(_, e)| e.clone()).collect();
        let name = self.backend.name().to_string();
        let queues = match (self.vhost.as_mut(), self.backend.vhost_fd(), self.migrating) {
            (Some(vhost), Some(tap), false) => {
                match start_vhost(vhost, &mem, &interrupt, acked, queues, tap) {
                    Ok(path) => {
                        log::info!("virtio-net {name}: vhost-net moves the frames (features {acked:#x})");
                        self.running = Some(Running { mem, interrupt, acked, evts, path });
                        return Ok(());
                    }
                    Err((e, queues)) => {
                        log::warn!("virtio-net {name}: vhost-net cannot serve the device ({e}): the userspace path does");
                        queues
                    }
                }
            }
            _ => queues,
        };
        let mut queues = queues.into_iter();
        let (rx, rx_evt) = queues.next().ok_or(ActivateError::BadQueue(RX))?;
        let (tx, tx_evt) = queues.next().ok_or(ActivateError::BadQueue(TX))?;
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let kill2 = kill.try_clone().map_err(ActivateError::Worker)?;
        let mut worker = NetWorker::new(self.backend.clone(), mem.clone(), rx, tx, interrupt.clone(), acked);
        let handle = std::thread::Builder::new()
            .name("virtio-net".into())
            .spawn(move || {
                worker.run(&rx_evt, &tx_evt, &kill2);
                (worker.rx, worker.tx)
            })
            .map_err(ActivateError::Worker)?;
        self.running = Some(Running { mem, interrupt, acked, evts, path: DataPath::User { handle, kill } });
        Ok(())
    }

    /// Stops whichever path serves the queues and hands them back with their positions (none if
    /// the device was not running or its worker died).
    fn stop(&mut self) -> Option<(Running, Vec<Queue>)> {
        let mut running = self.running.take()?;
        let path = std::mem::replace(&mut running.path, DataPath::Stopped);
        let queues = match path {
            DataPath::User { handle, kill } => {
                let _ = kill.write(1);
                handle.join().ok().map(|(rx, tx)| vec![rx, tx])
            }
            DataPath::Vhost { mut queues } => {
                if let Some(vhost) = self.vhost.as_mut() {
                    if let Err(e) = vhost.stop(&running.mem, &mut queues) {
                        log::error!("virtio-net {}: stopping vhost-net: {e}", self.backend.name());
                    }
                }
                // The register is ours again; an interrupt the kernel raised just before the stop
                // must still find its bit: one more, harmless if the driver has nothing new.
                running.interrupt.force_status(0);
                if let Err(e) = running.interrupt.trigger(INT_USED_RING) {
                    log::warn!("virtio-net {}: cannot raise interrupt: {e}", self.backend.name());
                }
                Some(queues)
            }
            DataPath::Stopped => None,
        };
        queues.map(|q| (running, q))
    }
}

/// A queue and the eventfd its notifications arrive on.
type QueueWithKick = (Queue, Arc<EventFd>);

/// Hands `queues` to the kernel, which raises the device's irqfd itself; on error the queues
/// come back untouched.
///
/// The driver reads InterruptStatus to learn why the line fired and ignores an interrupt whose
/// status is clear, and the kernel cannot set the register: while vhost-net serves the device the
/// register shows "used buffers" ([`VirtioInterrupt::force_status`]). A driver that looks finds
/// nothing new at worst (Linux's `vring_interrupt` checks the used index); a net device raises no
/// configuration interrupts.
fn start_vhost(
    vhost: &mut VhostNet,
    mem: &GuestMemoryMmap,
    interrupt: &Arc<VirtioInterrupt>,
    acked: u64,
    queues: Vec<(Queue, Arc<EventFd>)>,
    tap: std::os::fd::RawFd,
) -> Result<DataPath, (VhostError, Vec<QueueWithKick>)> {
    interrupt.force_status(INT_USED_RING);
    if let Err(e) = vhost.start(mem, acked, &queues, tap, interrupt.irqfd().as_raw_fd()) {
        interrupt.force_status(0);
        return Err((e, queues));
    }
    Ok(DataPath::Vhost { queues: queues.into_iter().map(|(q, _)| q).collect() })
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The offloads a backend may use towards a guest that accepted `acked` features.
pub fn guest_offloads(acked: u64) -> Offloads {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let csum = has(f::GUEST_CSUM);
    // TSO needs checksum offload: Linux refuses TSO on a tap without TUN_F_CSUM.
    Offloads {
        csum,
        tso4: csum && has(f::GUEST_TSO4),
        tso6: csum && has(f::GUEST_TSO6),
        ecn: csum && has(f::GUEST_ECN) && (has(f::GUEST_TSO4) || has(f::GUEST_TSO6)),
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        [
            VIRTIO_F_VERSION_1,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            f::CSUM,
            f::GUEST_CSUM,
            f::MTU,
            f::MAC,
            f::GUEST_TSO4,
            f::GUEST_TSO6,
            f::GUEST_ECN,
            f::HOST_TSO4,
            f::HOST_TSO6,
            f::HOST_ECN,
            f::MRG_RXBUF,
            f::STATUS,
        ]
        .iter()
        .fold(0u64, |acc, bit| acc | 1u64 << bit)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // VIRTIO_NET_F_CTRL_MAC_ADDR is not offered: the MAC is the VMM's to set.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        acked_features: u64,
        queues: Vec<(Queue, Arc<EventFd>)>,
    ) -> Result<(), ActivateError> {
        if queues.len() < 2 {
            return Err(ActivateError::BadQueue(queues.len()));
        }
        self.stop();
        if let Err(e) = self.backend.set_offloads(guest_offloads(acked_features)) {
            return Err(ActivateError::Worker(std::io::Error::other(e.to_string())));
        }
        self.start(mem, interrupt, acked_features, queues)
    }

    fn reset(&mut self) -> bool {
        self.stop();
        true
    }

    fn pause(&mut self) -> Vec<Queue> {
        self.stop().map(|(_, queues)| queues).unwrap_or_default()
    }

    fn set_migrating(&mut self, on: bool) {
        if self.migrating == on {
            return;
        }
        self.migrating = on;
        // vhost-net writes guest memory that no dirty log sees: while a migration runs the
        // userspace path serves the queues and records its writes; vhost-net takes them back after.
        let switch = match &self.running {
            Some(Running { path: DataPath::Vhost { .. }, .. }) => on,
            Some(Running { path: DataPath::User { .. }, .. }) => !on && self.vhost.is_some(),
            _ => false,
        };
        if !switch {
            return;
        }
        let name = self.backend.name().to_string();
        if let Some((r, queues)) = self.stop() {
            let qs = queues.into_iter().zip(r.evts.iter().cloned()).collect();
            if let Err(e) = self.start(r.mem, r.interrupt, r.acked, qs) {
                log::error!("virtio-net {name}: cannot restart the device after switching paths: {e}");
            }
            log::info!(
                "virtio-net {name}: {}",
                if on { "migration: the userspace path serves the device" } else { "migration over" }
            );
        }
    }
}

/// Why a transmit chain was dropped.
#[derive(Debug, thiserror::Error)]
enum TxError {
    /// The chain's descriptors do not describe readable guest memory.
    #[error("bad descriptor chain: {0:?}")]
    Chain(virtio_queue::Error),
    /// The chain's length is not a frame with its virtio-net header.
    #[error("{0} bytes is not a frame with header")]
    Length(usize),
    /// Reading the frame out of guest memory failed.
    #[error("guest memory: {0}")]
    Guest(#[source] std::io::Error),
    /// The backend refused the frame.
    #[error(transparent)]
    Backend(#[from] crate::net::NetError),
}

/// Where a received frame went.
enum Delivery {
    /// Into the guest's buffers.
    Delivered,
    /// Not enough buffers yet: keep the frame and wait for the guest.
    NoRoom,
    /// It does not fit the buffer the guest posted: dropped.
    Dropped,
}

/// Both queues of one NIC, separated from the thread so tests and fuzzers can drive them directly.
pub struct NetWorker {
    backend: Arc<dyn NetBackend>,
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<VirtioInterrupt>,
    mrg_rxbuf: bool,
    /// The frame read from the backend and not yet delivered, with its length.
    frame: Vec<u8>,
    pending: Option<usize>,
    txbuf: Vec<u8>,
    /// Used entries published without the queue counting them (a frame's leading buffers): the
    /// event-index check cannot see them, so the next rx notification is sent unconditionally.
    rx_uncounted: bool,
}

impl NetWorker {
    /// A worker serving `rx` and `tx` for a driver that accepted `acked_features`.
    pub fn new(
        backend: Arc<dyn NetBackend>,
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        interrupt: Arc<VirtioInterrupt>,
        acked_features: u64,
    ) -> Self {
        Self {
            backend,
            mem,
            rx,
            tx,
            interrupt,
            mrg_rxbuf: acked_features & (1u64 << f::MRG_RXBUF) != 0,
            frame: vec![0u8; MAX_FRAME_LEN],
            pending: None,
            txbuf: Vec::new(),
            rx_uncounted: false,
        }
    }

    fn run(&mut self, rx_evt: &EventFd, tx_evt: &EventFd, kill: &EventFd) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-net {}: epoll: {e}", self.backend.name());
                return;
            }
        };
        let fds = [
            (rx_evt.as_raw_fd(), TOKEN_RX_QUEUE, EventSet::IN),
            (tx_evt.as_raw_fd(), TOKEN_TX_QUEUE, EventSet::IN),
            // Edge-triggered: process_rx reads until the backend is empty or the guest has no room;
            // a new frame raises a new edge, a guest adding buffers kicks the rx queue.
            (self.backend.fd(), TOKEN_BACKEND, EventSet::IN | EventSet::EDGE_TRIGGERED),
            (kill.as_raw_fd(), TOKEN_KILL, EventSet::IN),
        ];
        for (fd, token, set) in fds {
            if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token)) {
                log::error!("virtio-net {}: epoll_ctl: {e}", self.backend.name());
                return;
            }
        }
        let mut events = [EpollEvent::default(); 4];
        // Work queued before activation.
        self.process_tx();
        self.process_rx();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-net {}: epoll_wait: {e}", self.backend.name());
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_RX_QUEUE => {
                        let _ = rx_evt.read();
                        self.process_rx();
                    }
                    TOKEN_TX_QUEUE => {
                        let _ = tx_evt.read();
                        self.process_tx();
                    }
                    TOKEN_BACKEND => {
                        self.process_rx();
                    }
                    _ => return,
                }
            }
        }
    }

    fn notify(&mut self, rx: bool) {
        let q = if rx { &mut self.rx } else { &mut self.tx };
        let forced = rx && std::mem::take(&mut self.rx_uncounted);
        match q.needs_notification(&self.mem).map(|n| n || forced) {
            Ok(true) => {
                if let Err(e) = self.interrupt.trigger(INT_USED_RING) {
                    log::error!("virtio-net {}: cannot raise interrupt: {e}", self.backend.name());
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("virtio-net {}: {e:?}", self.backend.name()),
        }
    }

    /// Sends every frame the guest queued; returns how many chains were completed.
    pub fn process_tx(&mut self) -> usize {
        let mut done = 0;
        // Rounds in a row that found nothing to pop although the ring said otherwise (a guest
        // lying about its avail index): one retry covers a real race, more would spin forever.
        let mut empty = 0;
        loop {
            if self.tx.event_idx_enabled() {
                if let Err(e) = self.tx.disable_notification(&self.mem) {
                    log::warn!("virtio-net {}: {e:?}", self.backend.name());
                }
            }
            let n = self.drain_tx();
            done += n;
            empty = if n == 0 { empty + 1 } else { 0 };
            match self.tx.enable_notification(&self.mem) {
                // More frames arrived meanwhile.
                Ok(true) if self.tx.event_idx_enabled() && empty < 2 => continue,
                Ok(_) => break,
                Err(e) => {
                    log::warn!("virtio-net {}: {e:?}", self.backend.name());
                    break;
                }
            }
        }
        if done > 0 {
            self.notify(false);
        }
        done
    }

    fn drain_tx(&mut self) -> usize {
        let mut done = 0;
        let mem = self.mem.clone();
        while let Some(chain) = self.tx.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            if let Err(why) = self.send_chain(chain) {
                log::debug!("virtio-net {}: tx chain {head} dropped: {why}", self.backend.name());
            }
            if let Err(e) = self.tx.add_used(&mem, head, 0) {
                log::warn!("virtio-net {}: add_used: {e:?}", self.backend.name());
            }
            done += 1;
        }
        done
    }

    fn send_chain(&mut self, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) -> Result<(), TxError> {
        let mem = &self.mem.clone();
        let mut reader = chain.reader(mem).map_err(TxError::Chain)?;
        let len = reader.available_bytes();
        if !(VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&len) {
            return Err(TxError::Length(len));
        }
        self.txbuf.resize(len, 0);
        reader.read_exact(&mut self.txbuf).map_err(TxError::Guest)?;
        Ok(self.backend.send(&self.txbuf)?)
    }

    /// Delivers frames from the backend until it is empty or the guest has no buffers; returns how
    /// many frames were delivered.
    pub fn process_rx(&mut self) -> usize {
        let mut delivered = 0;
        loop {
            let len = match self.pending {
                Some(n) => n,
                None => match self.backend.recv(&mut self.frame) {
                    Ok(Some(n)) if n >= VNET_HDR_LEN => {
                        self.pending = Some(n);
                        n
                    }
                    Ok(Some(n)) => {
                        log::debug!("virtio-net {}: {n}-byte frame without header", self.backend.name());
                        continue;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::warn!("virtio-net {}: {e}", self.backend.name());
                        break;
                    }
                },
            };
            let seen = self.rx.avail_idx(&self.mem, Ordering::Acquire).ok();
            match self.deliver(len) {
                Delivery::Delivered => {
                    self.pending = None;
                    delivered += 1;
                }
                Delivery::Dropped => self.pending = None,
                Delivery::NoRoom => {
                    // Ask for a kick when the guest adds buffers; retry if it added some meanwhile.
                    self.want_rx_kick();
                    let now = self.rx.avail_idx(&self.mem, Ordering::Acquire).ok();
                    if now.is_some() && now != seen {
                        continue;
                    }
                    break;
                }
            }
        }
        if delivered > 0 {
            self.notify(true);
        }
        delivered
    }

    /// Makes the guest's next buffer addition kick the rx queue.
    fn want_rx_kick(&mut self) {
        if let Err(e) = self.rx.enable_notification(&self.mem) {
            log::warn!("virtio-net {}: {e:?}", self.backend.name());
            return;
        }
        if !self.rx.event_idx_enabled() {
            return;
        }
        // enable_notification asks for a kick once the guest passes the next chain we did not take;
        // when chains are there but too few for the frame, that index is already behind the guest.
        // Ask for a kick at the guest's current index instead (avail_event, after the used ring).
        let Ok(idx) = self.rx.avail_idx(&self.mem, Ordering::Acquire) else { return };
        let addr = self.rx.used_ring().checked_add(4 + 8 * u64::from(self.rx.size()));
        if let Some(addr) = addr {
            if let Err(e) = self.mem.write_obj(idx.0.to_le(), GuestAddress(addr)) {
                log::warn!("virtio-net {}: avail_event: {e}", self.backend.name());
            }
            fence(Ordering::SeqCst);
        }
    }

    /// Writes a used entry for `head` at the queue's next used slot and moves past it without
    /// publishing the used index (the frame's last buffer publishes them all).
    fn enter_used(&mut self, head: u16, len: u32) -> Result<(), QueueError> {
        let size = self.rx.size();
        if size == 0 || head >= size {
            return Err(QueueError::InvalidDescriptorIndex);
        }
        let next = self.rx.next_used();
        let slot = u64::from(next % size);
        let addr = self.rx.used_ring().checked_add(4 + 8 * slot).ok_or(QueueError::AddressOverflow)?;
        // A used element: the chain's head index and the bytes written, both little-endian u32.
        let elem = [u32::from(head).to_le(), len.to_le()];
        self.mem.write_obj(elem, GuestAddress(addr)).map_err(QueueError::GuestMemory)?;
        self.rx.set_next_used(next.wrapping_add(1));
        self.rx_uncounted = true;
        Ok(())
    }

    /// Copies the pending frame into as many rx chains as it needs (one unless MRG_RXBUF).
    fn deliver(&mut self, len: usize) -> Delivery {
        let mem = self.mem.clone();
        let backend = self.backend.clone();
        let name = backend.name();
        // Chains taken for this frame, with their writable capacity (0 for a chain outside memory).
        let mut taken = Vec::new();
        let mut capacity = 0usize;
        while capacity < len {
            let Some(chain) = self.rx.pop_descriptor_chain(&mem) else {
                // Not enough buffers: give the chains back for the next attempt.
                for _ in 0..taken.len() {
                    self.rx.go_to_previous_position();
                }
                return Delivery::NoRoom;
            };
            let cap = chain.clone().writer(&mem).map(|w| w.available_bytes()).unwrap_or(0);
            let writes = self.interrupt.guest_writes();
            if writes.tracking() {
                // A migration runs: the pages this frame lands in are sent again.
                for d in chain.clone().writable() {
                    writes.record(d.addr().0, u64::from(d.len()));
                }
            }
            if !self.mrg_rxbuf && cap < len {
                // Without MRG_RXBUF a frame must fit one chain; the guest sizes them all alike.
                log::debug!("virtio-net {name}: a {len}-byte frame does not fit a {cap}-byte rx chain");
                if let Err(e) = self.rx.add_used(&mem, chain.head_index(), 0) {
                    log::warn!("virtio-net {name}: add_used: {e:?}");
                }
                return Delivery::Dropped;
            }
            capacity = capacity.saturating_add(cap);
            taken.push((chain, cap));
        }
        // num_buffers (bytes 10..12 of the header): how many chains the frame spans.
        let nbuf = u16::try_from(taken.len()).unwrap_or(u16::MAX);
        self.frame[10..12].copy_from_slice(&nbuf.to_le_bytes());
        // Every buffer of the frame is written and entered in the used ring before the used index
        // moves, once, past all of them: Linux's driver reads num_buffers from the first entry and
        // takes the rest at once, so an index published mid-frame makes it drop the frame.
        let last = taken.len().saturating_sub(1);
        let mut off = 0usize;
        for (i, (chain, cap)) in taken.into_iter().enumerate() {
            let head = chain.head_index();
            let n = cap.min(len - off);
            let written = match chain.writer(&mem) {
                Ok(mut w) => match w.write_all(&self.frame[off..off + n]) {
                    Ok(()) => n,
                    Err(e) => {
                        log::warn!("virtio-net {name}: rx chain {head}: {e}");
                        0
                    }
                },
                Err(_) => 0,
            };
            off += n;
            let entered = if i == last {
                self.rx.add_used(&mem, head, written as u32)
            } else {
                self.enter_used(head, written as u32)
            };
            if let Err(e) = entered {
                log::warn!("virtio-net {name}: add_used: {e:?}");
            }
        }
        Delivery::Delivered
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
