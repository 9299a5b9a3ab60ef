//! virtio-blk: a disk for the guest, served from a [`BlockBackend`].
//!
//! One worker thread per device waits on the queue's eventfd (fed by a KVM ioeventfd, so notifications
//! cost no exit to the VMM), runs requests against the backend, and raises the interrupt through an
//! irqfd. Guest buffers are copied through a bounded bounce buffer, so a hostile descriptor chain that
//! claims gigabytes costs at most one chunk of host memory.

use std::io::{Read, Write};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INT_USED_RING, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::block::{BlockBackend, BlockError};

/// Virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
const QUEUE_SIZE: u16 = 256;
const SECTOR_SIZE: u64 = 512;
/// Largest number of data segments per request the device announces.
const SEG_MAX: u32 = 126;
/// Requests served per wake-up; more wait for the next round of the worker's loop, so that a
/// driver keeping the queue full forever (or one whose buffers overlap its own rings, so that
/// completing a request publishes another) cannot keep the worker from being stopped.
const REQUEST_BUDGET: usize = 1024;
/// Bounce buffer size: the most host memory one request can pin at a time.
const CHUNK: usize = 1 << 20;

const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_FLUSH: u32 = 9;

const VIRTIO_BLK_T_IN: u32 = 0;
const VIRTIO_BLK_T_OUT: u32 = 1;
const VIRTIO_BLK_T_FLUSH: u32 = 4;
const VIRTIO_BLK_T_GET_ID: u32 = 8;

const VIRTIO_BLK_S_OK: u8 = 0;
const VIRTIO_BLK_S_IOERR: u8 = 1;
const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Length of the device ID returned by GET_ID.
const ID_BYTES: usize = 20;

/// A virtio-blk device.
pub struct Block {
    backend: Arc<dyn BlockBackend>,
    config: Vec<u8>,
    worker: Option<(JoinHandle<Queue>, EventFd)>,
}

impl Block {
    /// A block device over `backend`.
    pub fn new(backend: Arc<dyn BlockBackend>) -> Self {
        let mut config = vec![0u8; 24];
        config[0..8].copy_from_slice(&(backend.size() / SECTOR_SIZE).to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        Self { backend, config, worker: None }
    }

    fn stop_worker(&mut self) -> Option<Queue> {
        let (handle, kill) = self.worker.take()?;
        let _ = kill.write(1);
        handle.join().ok()
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if self.backend.read_only() {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Writeback mode switching is not offered; the config space is read-only.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        _acked_features: u64,
        mut queues: Vec<(Queue, Arc<EventFd>)>,
    ) -> Result<(), ActivateError> {
        let (queue, evt) = queues.pop().ok_or(ActivateError::BadQueue(0))?;
        self.stop_worker();
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let kill2 = kill.try_clone().map_err(ActivateError::Worker)?;
        let mut worker =
            Worker { backend: self.backend.clone(), mem, queue, interrupt, buf: Vec::new(), more: false };
        let handle = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || {
                crate::jail::enter_or_die(crate::jail::Role::Worker);
                worker.run(&evt, &kill2);
                worker.queue
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some((handle, kill));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        true
    }

    fn pause(&mut self) -> Vec<Queue> {
        self.stop_worker().into_iter().collect()
    }

    fn flush(&mut self) -> Result<(), BlockError> {
        if self.backend.read_only() {
            return Ok(());
        }
        self.backend.flush()
    }
}

/// Request processing, separated from the thread so tests can drive it directly.
pub struct Worker {
    backend: Arc<dyn BlockBackend>,
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<VirtioInterrupt>,
    buf: Vec<u8>,
    /// The last [`Worker::process_queue`] stopped at its budget with requests left.
    more: bool,
}

#[derive(Debug, thiserror::Error)]
enum RequestError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("guest memory: {0}")]
    Guest(std::io::Error),
    #[error(transparent)]
    Backend(#[from] BlockError),
}

impl Worker {
    /// A worker serving `queue` from `backend`.
    pub fn new(
        backend: Arc<dyn BlockBackend>,
        mem: GuestMemoryMmap,
        queue: Queue,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        Self { backend, mem, queue, interrupt, buf: Vec::new(), more: false }
    }

    fn run(&mut self, queue_evt: &EventFd, kill: &EventFd) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-blk: epoll: {e}");
                return;
            }
        };
        use std::os::fd::AsRawFd;
        for (fd, token) in [(queue_evt.as_raw_fd(), 0u64), (kill.as_raw_fd(), 1)] {
            if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token)) {
                log::error!("virtio-blk: epoll_ctl: {e}");
                return;
            }
        }
        let mut events = [EpollEvent::default(); 2];
        // Requests queued before activation (or while the worker was restarting).
        self.process_queue();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-blk: epoll_wait: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    0 => {
                        let _ = queue_evt.read();
                        self.process_queue();
                        if self.more {
                            // Budget spent with work left: come back after looking at `kill`.
                            let _ = queue_evt.write(1);
                        }
                    }
                    _ => return,
                }
            }
        }
    }

    /// Serves the available requests (at most [`REQUEST_BUDGET`]), then raises the interrupt if
    /// the driver wants one. Returns the number of requests completed.
    pub fn process_queue(&mut self) -> usize {
        let mut done = 0;
        self.more = false;
        for round in 0.. {
            if round == REQUEST_BUDGET {
                self.more = true;
                break;
            }
            if self.queue.event_idx_enabled() {
                if let Err(e) = self.queue.disable_notification(&self.mem) {
                    log::warn!("virtio-blk: {e:?}");
                }
            }
            done += self.drain(REQUEST_BUDGET - done);
            if done >= REQUEST_BUDGET {
                self.more = true;
                break;
            }
            if !self.queue.event_idx_enabled() {
                break;
            }
            match self.queue.enable_notification(&self.mem) {
                // The driver published an index further ahead than the ring holds: nothing can be
                // popped, and "more" would stay true forever (the worker spun at 100% and could not
                // be stopped). Wait for the driver to publish a sane index.
                Ok(true) if self.avail_index_is_broken() => {
                    log::warn!("virtio-blk: the driver's available index is more than a queue ahead");
                    break;
                }
                Ok(true) => continue, // more requests arrived meanwhile
                Ok(false) => break,
                Err(e) => {
                    log::warn!("virtio-blk: {e:?}");
                    break;
                }
            }
        }
        if done > 0 {
            match self.queue.needs_notification(&self.mem) {
                Ok(true) => {
                    if let Err(e) = self.interrupt.trigger(INT_USED_RING) {
                        log::error!("virtio-blk: cannot raise interrupt: {e}");
                    }
                }
                Ok(false) => {}
                Err(e) => log::warn!("virtio-blk: {e:?}"),
            }
        }
        done
    }

    /// Whether the available index is more than the queue's size ahead of the next one to serve.
    fn avail_index_is_broken(&self) -> bool {
        match self.queue.avail_idx(&self.mem, std::sync::atomic::Ordering::Acquire) {
            Ok(idx) => idx.0.wrapping_sub(self.queue.next_avail()) > self.queue.size(),
            Err(_) => true,
        }
    }

    fn drain(&mut self, budget: usize) -> usize {
        let mut done = 0;
        let mem = self.mem.clone();
        while done < budget {
            let Some(chain) = self.queue.pop_descriptor_chain(&mem) else { break };
            let head = chain.head_index();
            let writes = self.interrupt.guest_writes();
            if writes.tracking() {
                for d in chain.clone().writable() {
                    writes.record(d.addr().0, u64::from(d.len()));
                }
            }
            let len = match self.handle(chain.clone()) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("virtio-blk: request {head} failed: {e}");
                    0
                }
            };
            if let Err(e) = self.queue.add_used(&mem, head, len) {
                log::warn!("virtio-blk: add_used: {e:?}");
            }
            done += 1;
        }
        done
    }

    /// Runs one request; returns the number of bytes written into the guest's buffers.
    fn handle(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, RequestError> {
        let mem = &self.mem.clone();
        let mut reader =
            chain.clone().reader(mem).map_err(|_| RequestError::Malformed("bad descriptor chain"))?;
        let mut writer = chain.writer(mem).map_err(|_| RequestError::Malformed("bad descriptor chain"))?;
        if writer.available_bytes() == 0 {
            // Nowhere to put the status byte: nothing can be reported back.
            return Err(RequestError::Malformed("no writable status byte"));
        }
        let mut status_writer = writer
            .split_at(writer.available_bytes() - 1)
            .map_err(|_| RequestError::Malformed("status split"))?;
        let status = match self.run_request(&mut reader, &mut writer) {
            Ok(()) => VIRTIO_BLK_S_OK,
            Err(RequestError::Malformed("unsupported request type")) => VIRTIO_BLK_S_UNSUPP,
            Err(e) => {
                log::debug!("virtio-blk: {e}");
                VIRTIO_BLK_S_IOERR
            }
        };
        status_writer.write_all(&[status]).map_err(RequestError::Guest)?;
        Ok((writer.bytes_written() + 1) as u32)
    }

    fn run_request(
        &mut self,
        reader: &mut virtio_queue::Reader<'_, ()>,
        writer: &mut virtio_queue::Writer<'_, ()>,
    ) -> Result<(), RequestError> {
        let mut hdr = [0u8; 16];
        reader.read_exact(&mut hdr).map_err(|_| RequestError::Malformed("short request header"))?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector =
            u64::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15]]);
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or(RequestError::Malformed("sector out of range"))?;
        match kind {
            VIRTIO_BLK_T_IN => {
                let total = writer.available_bytes();
                if !(total as u64).is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::Malformed("read length not a multiple of 512"));
                }
                self.check_range(offset, total)?;
                let mut done = 0usize;
                while done < total {
                    let n = (total - done).min(CHUNK);
                    self.buf.resize(n, 0);
                    self.backend.read_at(offset + done as u64, &mut self.buf[..n])?;
                    writer.write_all(&self.buf[..n]).map_err(RequestError::Guest)?;
                    done += n;
                }
                Ok(())
            }
            VIRTIO_BLK_T_OUT => {
                if self.backend.read_only() {
                    return Err(BlockError::ReadOnly.into());
                }
                let total = reader.available_bytes();
                if !(total as u64).is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::Malformed("write length not a multiple of 512"));
                }
                self.check_range(offset, total)?;
                let mut done = 0usize;
                while done < total {
                    let n = (total - done).min(CHUNK);
                    self.buf.resize(n, 0);
                    reader.read_exact(&mut self.buf[..n]).map_err(RequestError::Guest)?;
                    self.backend.write_at(offset + done as u64, &self.buf[..n])?;
                    done += n;
                }
                Ok(())
            }
            VIRTIO_BLK_T_FLUSH => Ok(self.backend.flush()?),
            VIRTIO_BLK_T_GET_ID => {
                let mut id = [0u8; ID_BYTES];
                let s = self.backend.id();
                let n = s.len().min(ID_BYTES);
                id[..n].copy_from_slice(&s.as_bytes()[..n]);
                let n = writer.available_bytes().min(ID_BYTES);
                writer.write_all(&id[..n]).map_err(RequestError::Guest)?;
                Ok(())
            }
            _ => Err(RequestError::Malformed("unsupported request type")),
        }
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<(), RequestError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.backend.size() => Ok(()),
            _ => Err(BlockError::OutOfRange { offset, len: len as u64, size: self.backend.size() }.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A chain of (addr, len, device-writable) descriptors at the start of the table.
    fn chain(descs: &[(u64, u32, bool)]) -> Vec<RawDescriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(Descriptor::new(addr, len, flags, (i + 1) as u16))
            })
            .collect()
    }

    fn header(m: &GuestMemoryMmap, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(0x1000)).unwrap();
        m.write_obj(0u32, GuestAddress(0x1004)).unwrap();
        m.write_obj(sector, GuestAddress(0x1008)).unwrap();
    }

    struct Run {
        status: u8,
        used_len: u32,
        irq: u32,
    }

    fn run(m: &GuestMemoryMmap, disk: Arc<dyn BlockBackend>, descs: &[RawDescriptor]) -> Run {
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let int = VirtioInterrupt::new(evt);
        m.write_obj(0xaau8, GuestAddress(0x3000)).unwrap();
        let mut w = Worker::new(disk, m.clone(), q, int.clone());
        assert_eq!(w.process_queue(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        Run { status: m.read_obj(GuestAddress(0x3000)).unwrap(), used_len: used.len(), irq: int.status() }
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    #[test]
    fn read_copies_sectors_into_guest_buffers() {
        let m = mem();
        let disk = Arc::new(MemDisk::from_bytes(pattern(8192), true));
        header(&m, VIRTIO_BLK_T_IN, 2);
        // Data split over two descriptors, then the status byte.
        let r = run(
            &m,
            disk,
            &chain(&[(0x1000, 16, false), (0x2000, 512, true), (0x2800, 512, true), (0x3000, 1, true)]),
        );
        assert_eq!((r.status, r.used_len, r.irq & INT_USED_RING), (VIRTIO_BLK_S_OK, 1025, INT_USED_RING));
        let mut a = vec![0u8; 512];
        let mut b = vec![0u8; 512];
        m.read_slice(&mut a, GuestAddress(0x2000)).unwrap();
        m.read_slice(&mut b, GuestAddress(0x2800)).unwrap();
        assert_eq!([a, b].concat(), pattern(8192)[1024..2048]);
    }

    #[test]
    fn write_and_flush_reach_the_backend() {
        let m = mem();
        let disk = Arc::new(MemDisk::new(4096, false));
        m.write_slice(&[0x5a; 1024], GuestAddress(0x2000)).unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 1);
        let r =
            run(&m, disk.clone(), &chain(&[(0x1000, 16, false), (0x2000, 1024, false), (0x3000, 1, true)]));
        assert_eq!((r.status, r.used_len), (VIRTIO_BLK_S_OK, 1));
        assert_eq!(&disk.contents()[512..1536], &[0x5a; 1024][..]);
        assert_eq!(disk.contents()[0], 0);
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        let r = run(&m, disk.clone(), &chain(&[(0x1000, 16, false), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_OK);
        assert_eq!(disk.flush_count(), 1);
    }

    #[test]
    fn refused_requests_report_errors_and_change_nothing() {
        let m = mem();
        let ro = Arc::new(MemDisk::new(4096, true));
        header(&m, VIRTIO_BLK_T_OUT, 0);
        let r = run(&m, ro.clone(), &chain(&[(0x1000, 16, false), (0x2000, 512, false), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
        assert!(ro.contents().iter().all(|b| *b == 0));
        // Beyond the end of the disk.
        header(&m, VIRTIO_BLK_T_IN, 8);
        let r = run(&m, ro.clone(), &chain(&[(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
        // A sector number whose byte offset overflows.
        header(&m, VIRTIO_BLK_T_IN, u64::MAX / 256);
        let r = run(&m, ro.clone(), &chain(&[(0x1000, 16, false), (0x2000, 512, true), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
        // Not a multiple of the sector size.
        header(&m, VIRTIO_BLK_T_IN, 0);
        let r = run(&m, ro.clone(), &chain(&[(0x1000, 16, false), (0x2000, 100, true), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
        // Unknown request type.
        header(&m, 77, 0);
        let r = run(&m, ro, &chain(&[(0x1000, 16, false), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn get_id_returns_the_backend_id() {
        let m = mem();
        header(&m, VIRTIO_BLK_T_GET_ID, 0);
        let r = run(
            &m,
            Arc::new(MemDisk::new(512, true)),
            &chain(&[(0x1000, 16, false), (0x2000, 20, true), (0x3000, 1, true)]),
        );
        assert_eq!((r.status, r.used_len), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 7];
        m.read_slice(&mut id, GuestAddress(0x2000)).unwrap();
        assert_eq!(&id, b"memdisk");
    }

    #[test]
    fn hostile_chains_are_completed_without_panics() {
        let m = mem();
        let disk: Arc<dyn BlockBackend> = Arc::new(MemDisk::new(4096, false));
        header(&m, VIRTIO_BLK_T_IN, 0);
        // No writable descriptor: nowhere to put a status.
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&chain(&[(0x1000, 16, false)]), 0).unwrap();
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut w =
            Worker::new(disk.clone(), m.clone(), vq.create_queue().unwrap(), VirtioInterrupt::new(evt));
        assert_eq!(w.process_queue(), 1);
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
        // A buffer claiming 4 GiB past the end of guest memory.
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&chain(&[(0x1000, 16, false), (0xf_0000, u32::MAX, true), (0x3000, 1, true)]), 0)
            .unwrap();
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let mut w =
            Worker::new(disk.clone(), m.clone(), vq.create_queue().unwrap(), VirtioInterrupt::new(evt));
        assert_eq!(w.process_queue(), 1);
        // A short header.
        let r = run(&m, disk, &chain(&[(0x1000, 8, false), (0x3000, 1, true)]));
        assert_eq!(r.status, VIRTIO_BLK_S_IOERR);
    }

    proptest::proptest! {
        #[test]
        fn random_descriptor_tables_never_panic(
            descs in proptest::collection::vec((0u64..0x12_0000, 0u32..0x3_0000, 0u16..8, 0u16..20), 1..16),
            kind in 0u32..10,
            sector in 0u64..32,
        ) {
            let m = mem();
            header(&m, kind, sector);
            let raw: Vec<RawDescriptor> =
                descs.iter().map(|&(a, l, f, n)| RawDescriptor::from(Descriptor::new(a, l, f, n))).collect();
            let vq = MockSplitQueue::new(&m, 16);
            if vq.add_desc_chains(&raw, 0).is_ok() {
                if let Ok(q) = vq.create_queue::<Queue>() {
                    let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
                    let disk: Arc<dyn BlockBackend> = Arc::new(MemDisk::new(8192, false));
                    let mut w = Worker::new(disk, m.clone(), q, VirtioInterrupt::new(evt));
                    w.process_queue();
                }
            }
        }
    }
}
