//! The virtio-mmio transport (virtio 1.1 section 4.2, register layout version 2).

use std::sync::Arc;

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1};
use crate::vmm::devices::BusDevice;
use crate::vmm::state::{Decoder, DeviceState, Encoder, Persist, Section, StateError};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x5652_5356; // "VSRV"

/// Offset of QueueNotify, where ioeventfds are attached.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;

const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 0x80;

/// One virtio device behind virtio-mmio registers.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<Arc<EventFd>>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// Live queues taken from the device by a snapshot, handed back on resume.
    paused: Option<Vec<Queue>>,
}

impl MmioTransport {
    /// Wraps `device`; `queue_evts` are the eventfds the guest's notifications arrive on (one per queue).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            // Queue::new only fails for a maximum that is zero, above 32768 or not a power of two; the
            // device models in this crate declare constant, valid sizes.
            let q = Queue::new(max).map_err(|e| std::io::Error::other(format!("queue size {max}: {e:?}")))?;
            queues.push(q);
            queue_evts.push(Arc::new(EventFd::new(libc::EFD_NONBLOCK)?));
        }
        Ok(Self {
            device,
            mem,
            interrupt,
            queues,
            queue_evts,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            paused: None,
        })
    }

    /// The eventfds of the queues, in order, to attach as ioeventfds on QueueNotify.
    pub fn queue_evts(&self) -> &[Arc<EventFd>] {
        &self.queue_evts
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        if self.activated {
            return None;
        }
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        // Queue registers may only change before DRIVER_OK (and while the queue is not ready).
        if self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_DRIVER_OK == 0 {
            if let Some(q) = self.selected_queue() {
                f(q);
            }
        }
    }

    fn reset(&mut self) {
        if self.activated && !self.device.reset() {
            // The device cannot stop its worker: mark the transport failed so the driver gives up on it.
            self.status |= STATUS_FAILED;
            return;
        }
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.status = 0;
        self.interrupt.ack(u32::MAX);
    }

    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        // FEATURES_OK only if the driver accepted VERSION_1 and nothing we did not offer.
        let mut v = v;
        if v & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                v &= !STATUS_FEATURES_OK;
            }
        }
        self.status = v;
        if v & STATUS_DRIVER_OK != 0 && v & STATUS_FEATURES_OK != 0 && !self.activated {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << super::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut qs = Vec::new();
        for (i, q) in self.queues.iter_mut().enumerate() {
            q.set_event_idx(event_idx);
            if q.ready() {
                if !q.is_valid(&self.mem) {
                    log::warn!("virtio-mmio: {}", super::ActivateError::BadQueue(i));
                    self.status |= STATUS_FAILED;
                    return;
                }
                match Queue::try_from(q.state()) {
                    Ok(copy) => qs.push((copy, self.queue_evts[i].clone())),
                    Err(e) => {
                        log::warn!("virtio-mmio: queue {i}: {e:?}");
                        self.status |= STATUS_FAILED;
                        return;
                    }
                }
            }
        }
        match self.device.activate(self.mem.clone(), self.interrupt.clone(), self.driver_features, qs) {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::warn!("virtio-mmio: activation failed: {e}");
                self.status |= STATUS_FAILED;
            }
        }
    }
}

/// Largest number of queues a section may carry.
const MAX_QUEUES: usize = 64;

impl MmioTransport {
    fn reactivate(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let qs = queues.into_iter().zip(self.queue_evts.iter().cloned()).collect();
        self.device.activate(self.mem.clone(), self.interrupt.clone(), self.driver_features, qs)
    }

    fn encode(&self, e: &mut Encoder, live: &[QueueState]) {
        e.u32(self.device.device_type());
        for v in [self.device_features_sel, self.driver_features_sel, self.queue_sel, self.status] {
            e.u32(v);
        }
        e.u64(self.driver_features);
        e.u32(self.config_generation);
        e.u8(u8::from(self.activated));
        e.u32(self.interrupt.status());
        e.u32(self.queues.len() as u32);
        for (i, q) in self.queues.iter().enumerate() {
            // An active queue's positions live in the device's copy; the transport's copy is config only.
            let s = live.get(i).copied().unwrap_or_else(|| q.state());
            e.u16(s.max_size);
            e.u16(s.next_avail);
            e.u16(s.next_used);
            e.u8(u8::from(s.event_idx_enabled));
            e.u16(s.size);
            e.u8(u8::from(s.ready));
            e.u64(s.desc_table);
            e.u64(s.avail_ring);
            e.u64(s.used_ring);
        }
    }
}

impl Persist for MmioTransport {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        let live: Vec<QueueState> = self.paused.iter().flatten().map(|q| q.state()).collect();
        self.encode(e, &live);
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        let kind = d.u32()?;
        if kind != self.device.device_type() {
            return Err(d.invalid(format!(
                "holds virtio device type {kind}, this slot has type {}",
                self.device.device_type()
            )));
        }
        self.device_features_sel = d.u32()?;
        self.driver_features_sel = d.u32()?;
        self.queue_sel = d.u32()?;
        self.status = d.u32()?;
        self.driver_features = d.u64()?;
        self.config_generation = d.u32()?;
        let activated = d.bool()?;
        self.interrupt.set_status(d.u32()?);
        let n = d.u32()? as usize;
        if n != self.queues.len() || n > MAX_QUEUES {
            return Err(d.invalid(format!("{n} queues, the device has {}", self.queues.len())));
        }
        for i in 0..n {
            let s = QueueState {
                max_size: d.u16()?,
                next_avail: d.u16()?,
                next_used: d.u16()?,
                event_idx_enabled: d.bool()?,
                size: d.u16()?,
                ready: d.bool()?,
                desc_table: d.u64()?,
                avail_ring: d.u64()?,
                used_ring: d.u64()?,
            };
            self.queues[i] = Queue::try_from(s).map_err(|e| d.invalid(format!("queue {i}: {e:?}")))?;
        }
        if activated {
            let mut qs = Vec::new();
            for (i, q) in self.queues.iter().enumerate() {
                if q.ready() {
                    if !q.is_valid(&self.mem) {
                        return Err(d.invalid(format!("queue {i} lies outside guest memory")));
                    }
                    let copy =
                        Queue::try_from(q.state()).map_err(|e| d.invalid(format!("queue {i}: {e:?}")))?;
                    qs.push(copy);
                }
            }
            self.reactivate(qs).map_err(|e| d.invalid(format!("cannot re-activate the device: {e}")))?;
        }
        self.activated = activated;
        Ok(())
    }
}

impl MmioTransport {
    /// The interrupt, whose [`super::GuestWrites`] a migration reads.
    pub fn interrupt(&self) -> &Arc<VirtioInterrupt> {
        &self.interrupt
    }

    /// Tells the device a live migration starts or ends ([`VirtioDevice::set_migrating`]).
    pub fn set_migrating(&mut self, on: bool) {
        self.device.set_migrating(on);
    }

    /// Guest ranges of the used rings of the ready queues (written by the device on every completion).
    pub fn used_rings(&self) -> Vec<(u64, u64)> {
        self.queues
            .iter()
            .filter(|q| q.ready())
            .map(|q| (q.used_ring(), 6 + 8 * u64::from(q.size())))
            .collect()
    }
}

impl DeviceState for MmioTransport {
    fn save_section(&mut self, name: &str) -> Result<Section, StateError> {
        if self.activated && self.paused.is_none() {
            self.paused = Some(self.device.pause());
        }
        self.to_section(name)
    }

    fn restore_section(&mut self, section: &Section) -> Result<(), StateError> {
        self.load_section(section)
    }

    fn flush(&mut self) -> Result<(), StateError> {
        self.device.flush().map_err(|e| StateError::Invalid {
            name: format!("virtio device type {}", self.device.device_type()),
            msg: format!("flush before the snapshot failed: {e}"),
        })
    }

    fn resume(&mut self) -> Result<(), StateError> {
        if let Some(qs) = self.paused.take() {
            self.reactivate(qs).map_err(|e| StateError::Invalid {
                name: format!("virtio device type {}", self.device.device_type()),
                msg: format!("cannot resume the device: {e}"),
            })?;
        }
        Ok(())
    }
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(data.try_into().ok()?))
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= 0x100 {
            self.device.read_config(offset - 0x100, data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let v = match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.queues.get(self.queue_sel as usize).map(|q| u32::from(q.max_size())).unwrap_or(0),
            0x44 => self.queues.get(self.queue_sel as usize).map(|q| u32::from(q.ready())).unwrap_or(0),
            0x60 => self.interrupt.status(),
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= 0x100 {
            if self.status & STATUS_DRIVER != 0 {
                self.device.write_config(offset - 0x100, data);
            }
            return;
        }
        let Some(v) = u32_of(data) else { return };
        let driver_ready =
            self.status & (STATUS_ACKNOWLEDGE | STATUS_DRIVER) == STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if driver_ready && self.status & STATUS_FEATURES_OK == 0 => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 => self.with_queue(|q| q.set_size(v as u16)),
            0x44 => self.with_queue(|q| q.set_ready(v == 1)),
            0x50 => {
                // Normally absorbed by an ioeventfd in the hypervisor; reaching here means none is attached.
                if let Some(e) = self.queue_evts.get(v as usize) {
                    let _ = e.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.set_status(v),
            0x80 => self.with_queue(|q| q.set_desc_table_address(Some(v), None)),
            0x84 => self.with_queue(|q| q.set_desc_table_address(None, Some(v))),
            0x90 => self.with_queue(|q| q.set_avail_ring_address(Some(v), None)),
            0x94 => self.with_queue(|q| q.set_avail_ring_address(None, Some(v))),
            0xa0 => self.with_queue(|q| q.set_used_ring_address(Some(v), None)),
            0xa4 => self.with_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => log::debug!("virtio-mmio: write to unknown register {offset:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::devices::virtio::ActivateError;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use vm_memory::GuestAddress;

    struct Dummy(Arc<AtomicUsize>);
    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            (1 << VIRTIO_F_VERSION_1) | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            super::super::read_config_bytes(&[1, 2, 3, 4], offset, data);
        }
        fn write_config(&mut self, _: u64, _: &[u8]) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<VirtioInterrupt>,
            features: u64,
            queues: Vec<(Queue, Arc<EventFd>)>,
        ) -> Result<(), ActivateError> {
            assert_eq!(features, 1 << VIRTIO_F_VERSION_1);
            self.0.fetch_add(queues.len(), Ordering::SeqCst);
            Ok(())
        }
        fn reset(&mut self) -> bool {
            true
        }
    }

    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }
    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn transport(activated: Arc<AtomicUsize>) -> MmioTransport {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        MmioTransport::new(Box::new(Dummy(activated)), mem, VirtioInterrupt::new(irq)).unwrap()
    }

    #[test]
    fn driver_handshake_activates_the_device() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut t = transport(n.clone());
        assert_eq!((rd(&mut t, 0), rd(&mut t, 4), rd(&mut t, 8)), (MAGIC, 2, 42));
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, 0x14, 1);
        assert_eq!(rd(&mut t, 0x10), 1); // VERSION_1 is bit 32
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_ne!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        wr(&mut t, 0x30, 0);
        assert_eq!(rd(&mut t, 0x34), 16);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0x1000);
        wr(&mut t, 0x90, 0x2000);
        wr(&mut t, 0xa0, 0x3000);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        assert_eq!(rd(&mut t, 0x70) & STATUS_FAILED, 0);
        let mut cfg = [0u8; 2];
        t.read(0x102, &mut cfg);
        assert_eq!(cfg, [3, 4]);
        // Reset returns the transport to its initial state.
        wr(&mut t, 0x70, 0);
        assert_eq!(rd(&mut t, 0x70), 0);
        assert_eq!(rd(&mut t, 0x44), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut t = transport(n.clone());
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, 0x24, 0);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert_eq!(rd(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn queue_outside_guest_memory_fails_the_device() {
        let n = Arc::new(AtomicUsize::new(0));
        let mut t = transport(n.clone());
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        wr(&mut t, 0x24, 1);
        wr(&mut t, 0x20, 1);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        wr(&mut t, 0x38, 16);
        wr(&mut t, 0x80, 0xffff_0000);
        wr(&mut t, 0x84, 0xffff);
        wr(&mut t, 0x44, 1);
        wr(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_ne!(rd(&mut t, 0x70) & STATUS_FAILED, 0);
        assert_eq!(n.load(Ordering::SeqCst), 0);
    }
}
