//! virtio-console driven by a test driver over guest memory, with a socket pair as the host side.

use super::*;
use std::io::{Read, Write};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 0x20_0000;
/// Rings of port rx, port tx, control rx, control tx.
const RINGS: [u64; 4] = [0x0, 0x8000, 0x1_0000, 0x1_8000];

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

struct Rig<'a> {
    m: &'a GuestMemoryMmap,
    q: Vec<MockSplitQueue<'a, GuestMemoryMmap>>,
    /// Next free descriptor index per queue.
    next: [u16; 4],
    /// Next used entry to look at per queue.
    seen: [usize; 4],
    worker: ConsoleWorker,
    host: UnixStream,
    irq: Arc<VirtioInterrupt>,
}

fn rig(m: &GuestMemoryMmap) -> Rig<'_> {
    let q: Vec<_> = RINGS.iter().map(|&a| MockSplitQueue::create(m, GuestAddress(a), 256)).collect();
    let (dev_end, host) = UnixStream::pair().unwrap();
    dev_end.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
    let irq = VirtioInterrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let queues = q.iter().map(|q| q.create_queue().unwrap()).collect();
    let worker = ConsoleWorker::new(AGENT_PORT_NAME, Arc::new(dev_end), m.clone(), queues, irq.clone());
    Rig { m, q, next: [0; 4], seen: [0; 4], worker, host, irq }
}

impl Rig<'_> {
    /// Queues one buffer at `addr` of `len` bytes on queue `qi` (device-writable or not).
    fn post(&mut self, qi: usize, addr: u64, len: u32, writable: bool) {
        let flags = if writable { VRING_DESC_F_WRITE as u16 } else { 0 };
        let d = [RawDescriptor::from(Descriptor::new(addr, len, flags, 0))];
        self.q[qi].add_desc_chains(&d, self.next[qi]).unwrap();
        self.next[qi] += 1;
    }

    /// The driver sends `bytes` on transmit queue `qi` from `addr`.
    fn send(&mut self, qi: usize, addr: u64, bytes: &[u8]) {
        self.m.write_slice(bytes, GuestAddress(addr)).unwrap();
        self.post(qi, addr, bytes.len() as u32, false);
    }

    /// Used entries of queue `qi` since the last look: (descriptor id, length).
    fn used(&mut self, qi: usize) -> Vec<(u32, u32)> {
        let idx = self.q[qi].used().idx().load() as usize;
        let out = (self.seen[qi]..idx)
            .map(|i| {
                let e = self.q[qi].used().ring().ref_at(i).unwrap().load();
                (e.id(), e.len())
            })
            .collect();
        self.seen[qi] = idx;
        out
    }

    fn read(&self, addr: u64, len: u32) -> Vec<u8> {
        let mut b = vec![0u8; len as usize];
        self.m.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    /// Control messages the device wrote into buffers posted at 0x4_0000 + i * 0x100.
    fn control_msgs(&mut self) -> Vec<Vec<u8>> {
        self.used(CTRL_RX)
            .into_iter()
            .map(|(id, len)| self.read(0x4_0000 + u64::from(id) * 0x100, len))
            .collect()
    }

    /// The Linux driver's side of the handshake: control buffers, DEVICE_READY, PORT_READY, open.
    fn handshake(&mut self) -> Vec<Vec<u8>> {
        for i in 0..8 {
            self.post(CTRL_RX, 0x4_0000 + i * 0x100, 0x100, true);
        }
        self.send(CTRL_TX, 0x5_0000, &control(u32::MAX, event::DEVICE_READY, 1));
        self.worker.process_all();
        let mut msgs = self.control_msgs();
        self.send(CTRL_TX, 0x5_0100, &control(0, event::PORT_READY, 1));
        self.worker.process_all();
        msgs.extend(self.control_msgs());
        self.send(CTRL_TX, 0x5_0200, &control(0, event::PORT_OPEN, 1));
        self.worker.process_all();
        msgs
    }
}

#[test]
fn the_handshake_adds_one_port_named_for_the_agent_and_opens_it() {
    let m = mem();
    let mut r = rig(&m);
    let msgs = r.handshake();
    let mut name = control(0, event::PORT_NAME, 1).to_vec();
    name.extend_from_slice(b"org.qemu.guest_agent.0");
    assert_eq!(
        msgs,
        vec![control(0, event::DEVICE_ADD, 1).to_vec(), name, control(0, event::PORT_OPEN, 1).to_vec()]
    );
    assert!(r.worker.guest_open());
    assert_eq!(r.used(CTRL_TX).len(), 3, "every control message is returned");
    assert_eq!(r.irq.status() & INT_USED_RING, INT_USED_RING);
}

#[test]
fn bytes_flow_both_ways_once_the_guest_opened_the_port() {
    let m = mem();
    let mut r = rig(&m);
    r.handshake();
    // Guest -> host: a line of the agent's over two chains.
    r.send(PORT_TX, 0x6_0000, b"{\"return\": ");
    r.send(PORT_TX, 0x6_1000, b"{}}\n");
    r.worker.process_all();
    let mut got = [0u8; 15];
    r.host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"{\"return\": {}}\n");
    assert_eq!(r.used(PORT_TX), vec![(0, 0), (1, 0)]);
    // Host -> guest: more than one buffer holds, split over the buffers the guest posted.
    let line = b"{\"execute\":\"guest-ping\"}\n";
    r.host.write_all(line).unwrap();
    r.worker.process_all();
    assert!(r.used(PORT_RX).is_empty(), "no buffer yet: the bytes wait");
    r.post(PORT_RX, 0x7_0000, 10, true);
    r.post(PORT_RX, 0x7_1000, 64, true);
    r.worker.process_all();
    assert_eq!(r.used(PORT_RX), vec![(0, 10), (1, line.len() as u32 - 10)]);
    let mut back = r.read(0x7_0000, 10);
    back.extend(r.read(0x7_1000, line.len() as u32 - 10));
    assert_eq!(&back, line);
}

#[test]
fn the_guest_open_flag_follows_its_port_open_messages() {
    let m = mem();
    let mut r = rig(&m);
    assert!(!r.worker.guest_open());
    r.handshake();
    assert!(r.worker.guest_open());
    r.send(CTRL_TX, 0x5_0300, &control(0, event::PORT_OPEN, 0));
    r.worker.process_all();
    assert!(!r.worker.guest_open());
}

#[test]
fn pause_hands_back_the_live_queues_and_resume_goes_on() {
    let m = mem();
    let q: Vec<_> = RINGS.iter().map(|&a| MockSplitQueue::create(&m, GuestAddress(a), 256)).collect();
    let (dev_end, mut host) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut c = Console::new(AGENT_PORT_NAME, dev_end).unwrap();
    let irq = VirtioInterrupt::new(Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let evts: Vec<Arc<EventFd>> =
        (0..4).map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())).collect();
    let queues = q.iter().zip(&evts).map(|(q, e)| (q.create_queue().unwrap(), e.clone())).collect();
    c.activate(m.clone(), irq.clone(), 0, queues).unwrap();
    // The guest sends a line; the worker thread passes it on.
    m.write_slice(b"one\n", GuestAddress(0x6_0000)).unwrap();
    q[PORT_TX].add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x6_0000, 4, 0, 0))], 0).unwrap();
    evts[PORT_TX].write(1).unwrap();
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"one\n");
    let live = c.pause();
    assert_eq!(live.len(), 4);
    assert_eq!(live[PORT_TX].next_avail(), 1, "the worker's position, not the transport's");
    // Resumed with them, the next chain is the next one.
    m.write_slice(b"two\n", GuestAddress(0x6_1000)).unwrap();
    q[PORT_TX].add_desc_chains(&[RawDescriptor::from(Descriptor::new(0x6_1000, 4, 0, 0))], 1).unwrap();
    let queues = live.into_iter().zip(evts.iter().cloned()).collect();
    c.activate(m.clone(), irq, 0, queues).unwrap();
    evts[PORT_TX].write(1).unwrap();
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"two\n");
    assert!(c.reset());
}

#[test]
fn hostile_control_messages_and_chains_do_not_hurt() {
    let m = mem();
    let mut r = rig(&m);
    // Short, unknown, for another port: ignored (returned, nothing answered).
    r.post(CTRL_RX, 0x4_0000, 0x100, true);
    r.send(CTRL_TX, 0x5_0000, &[1, 2, 3]);
    r.send(CTRL_TX, 0x5_0100, &control(0, 99, 1));
    r.send(CTRL_TX, 0x5_0200, &control(7, event::PORT_READY, 1));
    r.send(CTRL_TX, 0x5_0300, &control(7, event::PORT_OPEN, 1));
    r.worker.process_all();
    assert_eq!(r.used(CTRL_TX).len(), 4);
    assert!(r.used(CTRL_RX).is_empty());
    assert!(!r.worker.guest_open());
    // DEVICE_READY over and over without control buffers: what waits stays bounded.
    for i in 0..15 {
        r.send(CTRL_TX, 0x5_1000 + i * 0x10, &control(u32::MAX, event::DEVICE_READY, 1));
        r.worker.process_all();
    }
    assert!(r.worker.control_out.len() <= MAX_PENDING_CONTROL);
    // A transmit chain outside guest memory is returned with nothing sent.
    r.post(PORT_TX, MEM + 0x1000, 64, false);
    r.worker.process_all();
    assert_eq!(r.used(PORT_TX), vec![(0, 0)]);
}

#[test]
fn a_host_that_does_not_read_never_blocks_the_device() {
    let m = mem();
    let mut r = rig(&m);
    r.handshake();
    let chunk = vec![b'x'; 0x1000];
    let t = std::time::Instant::now();
    // Far more than a socket buffer holds, nobody reading.
    for round in 0..16u64 {
        for i in 0..8u64 {
            r.send(PORT_TX, 0x10_0000 + i * 0x1000, &chunk);
        }
        r.worker.process_all();
        assert_eq!(r.used(PORT_TX).len(), 8, "round {round}");
    }
    assert!(t.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn the_device_offers_multiport_with_one_port() {
    let (a, _b) = UnixStream::pair().unwrap();
    let c = Console::new(AGENT_PORT_NAME, a).unwrap();
    assert_eq!(c.device_type(), 3);
    assert_eq!(c.queue_max_sizes().len(), 4);
    assert_ne!(c.features() & (1 << VIRTIO_CONSOLE_F_MULTIPORT), 0);
    assert_ne!(c.features() & (1 << VIRTIO_F_VERSION_1), 0);
    let mut n = [0u8; 4];
    c.read_config(4, &mut n);
    assert_eq!(u32::from_le_bytes(n), 1, "max_nr_ports");
}
