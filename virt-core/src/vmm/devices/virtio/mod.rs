//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern" only).

pub mod block;
pub mod console;
#[doc(hidden)]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod vhost_net;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

/// Feature bit: the device speaks virtio 1.x.
pub const VIRTIO_F_VERSION_1: u32 = 32;
/// Feature bit: indirect descriptors.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// Feature bit: used/avail event suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;

/// Interrupt status bit: a used buffer was added.
pub const INT_USED_RING: u32 = 0x1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 0x2;

/// The interrupt line of one virtio-mmio device: an irqfd plus the InterruptStatus register it backs.
pub struct VirtioInterrupt {
    status: AtomicU32,
    /// Bits InterruptStatus always shows while someone else raises the irqfd (vhost-net).
    forced: AtomicU32,
    irqfd: Arc<EventFd>,
    writes: GuestWrites,
}

/// Guest memory the device itself wrote (buffers it filled, used rings), recorded while a live
/// migration runs: the hypervisor's dirty log only sees the guest's own writes, so these ranges are
/// sent again too. Every device that writes guest memory records its writes here.
#[derive(Default)]
pub struct GuestWrites {
    on: std::sync::atomic::AtomicBool,
    ranges: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl GuestWrites {
    /// Whether writes are being recorded (skip the bookkeeping otherwise).
    pub fn tracking(&self) -> bool {
        self.on.load(Ordering::SeqCst)
    }
    /// Starts or stops recording (stopping drops what was recorded).
    pub fn set_tracking(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
        if !on {
            crate::vmm::devices::lock(&self.ranges).clear();
        }
    }
    /// Records that the device wrote `len` bytes at guest address `gpa`.
    pub fn record(&self, gpa: u64, len: u64) {
        if self.tracking() {
            crate::vmm::devices::lock(&self.ranges).push((gpa, len));
        }
    }
    /// Takes the ranges recorded so far.
    pub fn take(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *crate::vmm::devices::lock(&self.ranges))
    }
}

impl VirtioInterrupt {
    /// An interrupt that fires through `irqfd`.
    pub fn new(irqfd: Arc<EventFd>) -> Arc<Self> {
        Arc::new(Self {
            status: AtomicU32::new(0),
            forced: AtomicU32::new(0),
            irqfd,
            writes: GuestWrites::default(),
        })
    }
    /// Sets `bits` in InterruptStatus and raises the interrupt.
    pub fn trigger(&self, bits: u32) -> std::io::Result<()> {
        self.status.fetch_or(bits, Ordering::SeqCst);
        self.irqfd.write(1)
    }
    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst) | self.forced.load(Ordering::SeqCst)
    }
    /// Makes InterruptStatus show `bits` whatever the driver acknowledges, while the irqfd is
    /// raised by someone who cannot set the register (the kernel's vhost-net writes the irqfd
    /// directly); 0 ends it.
    pub fn force_status(&self, bits: u32) {
        self.forced.store(bits, Ordering::SeqCst);
    }
    /// Sets InterruptStatus (restoring a snapshot).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }
    /// The driver's InterruptACK.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }
    /// Where the device records the guest memory it writes (see [`GuestWrites`]).
    pub fn guest_writes(&self) -> &GuestWrites {
        &self.writes
    }
    /// The irqfd, for registration with the hypervisor.
    pub fn irqfd(&self) -> &Arc<EventFd> {
        &self.irqfd
    }
}

/// Errors when a device is activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a queue that is not usable.
    #[error("virtio queue {0} is not valid (bad size or addresses outside guest memory)")]
    BadQueue(usize),
    /// The device's worker could not be started.
    #[error("cannot start the device worker: {0}")]
    Worker(std::io::Error),
}

/// A virtio device model. The transport calls it; the device never sees transport registers.
pub trait VirtioDevice: Send {
    /// Virtio device ID (2 = block).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving `queues`; each comes with the eventfd the guest's notifications arrive on.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        acked_features: u64,
        queues: Vec<(Queue, Arc<EventFd>)>,
    ) -> Result<(), ActivateError>;
    /// Stops serving queues (driver reset). Returns false if the device cannot be reset.
    fn reset(&mut self) -> bool;
    /// Quiesces the device for a snapshot or migration: stops its workers after the request in flight
    /// and hands back the live queues (their positions are what the snapshot saves). The transport
    /// re-activates the device with them to resume. A device without workers returns nothing.
    fn pause(&mut self) -> Vec<Queue> {
        Vec::new()
    }
    /// A live migration starts (`true`) or ends: a device whose guest-memory writes the migration
    /// cannot see (vhost-net's) serves its queues another way meanwhile.
    fn set_migrating(&mut self, _on: bool) {}
    /// Makes the device's writes durable before a snapshot (a disk flushes its backend).
    fn flush(&mut self) -> Result<(), crate::block::BlockError> {
        Ok(())
    }
}

/// Reads `data.len()` bytes at `offset` from a configuration space image, padding with zeros.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}
