//! virtio-console with one named port: the guest agent's channel (`org.qemu.guest_agent.0`), as
//! QEMU's `virtio-serial` + `virtserialport` give it.
//!
//! The device offers `VIRTIO_CONSOLE_F_MULTIPORT` with `max_nr_ports = 1`: queues 0 and 1 are port 0's
//! receive and transmit queues, 2 and 3 the control queues. The control protocol (virtio 1.1 section
//! 5.3.6.2): the driver says `DEVICE_READY`, the device answers `DEVICE_ADD` for port 0, the driver
//! says `PORT_READY`, the device sends `PORT_NAME` (the guest's udev makes
//! `/dev/virtio-ports/NAME`) and `PORT_OPEN` (the host side is connected). The guest's
//! `PORT_OPEN` / close are noted; bytes flow between port 0's queues and a host stream (a unix
//! socket whose other end the launcher hands to its agent client); the guest's driver drops what
//! arrives while its port is closed. `pause` hands the live queues back for snapshots and
//! migration, as virtio-blk does.
//!
//! Everything the guest writes is untrusted: control messages of the wrong size or for another port
//! are ignored, transmitted chains are bounded ([`MAX_CHUNK`]), chains outside guest memory are
//! returned with length 0, and a host side that does not read never blocks the worker (its bytes are
//! dropped, the agent client resynchronises).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, INT_USED_RING, VIRTIO_F_VERSION_1,
};

/// Virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// The port name the QEMU guest agent opens.
pub const AGENT_PORT_NAME: &str = "org.qemu.guest_agent.0";
/// Feature bit: several ports and the control queues.
pub const VIRTIO_CONSOLE_F_MULTIPORT: u32 = 1;
const QUEUE_SIZE: u16 = 128;
/// The most bytes taken from one transmitted chain, and read from the host at once.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Control messages waiting for the driver's buffers; more are dropped (a driver that never posts
/// control buffers cannot make the device grow).
const MAX_PENDING_CONTROL: usize = 16;

const PORT_RX: usize = 0;
const PORT_TX: usize = 1;
const CTRL_RX: usize = 2;
const CTRL_TX: usize = 3;

/// Control events (`struct virtio_console_control.event`).
pub mod event {
    /// Driver: ready for `DEVICE_ADD`s.
    pub const DEVICE_READY: u16 = 0;
    /// Device: a port exists.
    pub const DEVICE_ADD: u16 = 1;
    /// Driver: a port is set up (value 1) or failed (0).
    pub const PORT_READY: u16 = 3;
    /// Both ways: the port is opened (value 1) or closed (0).
    pub const PORT_OPEN: u16 = 6;
    /// Device: the port's name follows the header.
    pub const PORT_NAME: u16 = 7;
}

/// The 8-byte control header: port id, event, value.
pub fn control(id: u32, event: u16, value: u16) -> [u8; 8] {
    let mut m = [0u8; 8];
    m[0..4].copy_from_slice(&id.to_le_bytes());
    m[4..6].copy_from_slice(&event.to_le_bytes());
    m[6..8].copy_from_slice(&value.to_le_bytes());
    m
}

/// A virtio-console device with one named port linked to a host stream.
pub struct Console {
    name: String,
    host: Arc<UnixStream>,
    config: Vec<u8>,
    worker: Option<(JoinHandle<ConsoleWorker>, EventFd)>,
    /// What a paused worker had not delivered yet (control messages, host bytes), for the next one.
    carry: Option<(VecDeque<Vec<u8>>, Vec<u8>)>,
}

impl Console {
    /// Port 0 named `name`, its bytes going to and from `host` (made non-blocking).
    pub fn new(name: &str, host: UnixStream) -> std::io::Result<Self> {
        host.set_nonblocking(true)?;
        // cols, rows (unused: no VIRTIO_CONSOLE_F_SIZE), max_nr_ports, emerg_wr.
        let mut config = vec![0u8; 12];
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self { name: name.to_string(), host: Arc::new(host), config, worker: None, carry: None })
    }

    /// Stops the worker after the work in hand; returns it (with its queues).
    fn stop_worker(&mut self) -> Option<ConsoleWorker> {
        let (handle, kill) = self.worker.take()?;
        let _ = kill.write(1);
        handle.join().ok()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 4]
    }

    fn features(&self) -> u64 {
        // No EVENT_IDX: the agent's traffic is a few lines a second, and without it the guest kicks
        // on every buffer it adds (no avail_event to keep in step).
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_CONSOLE_F_MULTIPORT)
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // emerg_wr needs VIRTIO_CONSOLE_F_EMERG_WRITE, not offered.
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        _acked_features: u64,
        queues: Vec<(Queue, Arc<EventFd>)>,
    ) -> Result<(), ActivateError> {
        if queues.len() != 4 {
            return Err(ActivateError::BadQueue(queues.len().min(3)));
        }
        if let Some(w) = self.stop_worker() {
            self.carry = Some((w.control_out, w.pending));
        }
        let (queues, evts): (Vec<Queue>, Vec<Arc<EventFd>>) = queues.into_iter().unzip();
        let kill = EventFd::new(libc::EFD_NONBLOCK).map_err(ActivateError::Worker)?;
        let kill2 = kill.try_clone().map_err(ActivateError::Worker)?;
        let mut worker = ConsoleWorker::new(&self.name, self.host.clone(), mem, queues, interrupt);
        if let Some((control_out, pending)) = self.carry.take() {
            worker.control_out = control_out;
            worker.pending = pending;
        }
        let handle = std::thread::Builder::new()
            .name("virtio-console".into())
            .spawn(move || {
                // Started on a vCPU (the guest's DRIVER_OK): narrow to a device worker at once.
                crate::jail::enter_or_die(crate::jail::Role::Worker);
                worker.run(&evts, &kill2);
                worker
            })
            .map_err(ActivateError::Worker)?;
        self.worker = Some((handle, kill));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop_worker();
        self.carry = None;
        true
    }

    fn pause(&mut self) -> Vec<Queue> {
        match self.stop_worker() {
            Some(w) => {
                self.carry = Some((w.control_out, w.pending));
                w.queues
            }
            None => Vec::new(),
        }
    }
}

/// The four queues of the device, separated from the thread so tests can drive them directly.
pub struct ConsoleWorker {
    name: String,
    host: Arc<UnixStream>,
    mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    interrupt: Arc<VirtioInterrupt>,
    /// Control messages for the driver, waiting for its buffers.
    control_out: VecDeque<Vec<u8>>,
    /// Bytes read from the host, not yet in the guest's buffers.
    pending: Vec<u8>,
    /// Whether the guest has the port open (its `PORT_OPEN`).
    guest_open: bool,
    buf: Vec<u8>,
}

impl ConsoleWorker {
    /// A worker for the queues `[port rx, port tx, control rx, control tx]`.
    pub fn new(
        name: &str,
        host: Arc<UnixStream>,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        Self {
            name: name.to_string(),
            host,
            mem,
            queues,
            interrupt,
            control_out: VecDeque::new(),
            pending: Vec::new(),
            guest_open: false,
            buf: vec![0u8; MAX_CHUNK],
        }
    }

    /// Whether the guest has opened the port.
    pub fn guest_open(&self) -> bool {
        self.guest_open
    }

    fn run(&mut self, evts: &[Arc<EventFd>], kill: &EventFd) {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                log::error!("virtio-console {}: epoll: {e}", self.name);
                return;
            }
        };
        const HOST: u64 = 4;
        const KILL: u64 = 5;
        let mut fds: Vec<(i32, u64, EventSet)> =
            evts.iter().enumerate().map(|(i, e)| (e.as_raw_fd(), i as u64, EventSet::IN)).collect();
        // Edge-triggered: the host's bytes are read until it is empty or the guest has no room.
        fds.push((self.host.as_raw_fd(), HOST, EventSet::IN | EventSet::EDGE_TRIGGERED));
        fds.push((kill.as_raw_fd(), KILL, EventSet::IN));
        for (fd, token, set) in fds {
            if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(set, token)) {
                log::error!("virtio-console {}: epoll_ctl: {e}", self.name);
                return;
            }
        }
        let mut events = [EpollEvent::default(); 6];
        self.process_all();
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::error!("virtio-console {}: epoll_wait: {e}", self.name);
                    return;
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    t @ 0..=3 => {
                        let _ = evts[t as usize].read();
                    }
                    HOST => {}
                    _ => return,
                }
            }
            self.process_all();
        }
    }

    /// Serves every queue and the host once; returns whether anything moved.
    pub fn process_all(&mut self) -> bool {
        let mut moved = self.process_control_tx();
        moved |= self.process_port_tx();
        moved |= self.process_control_rx();
        moved |= self.process_port_rx();
        moved
    }

    fn notify(&mut self, q: usize) {
        match self.queues[q].needs_notification(&self.mem) {
            Ok(true) => {
                if let Err(e) = self.interrupt.trigger(INT_USED_RING) {
                    log::error!("virtio-console {}: cannot raise interrupt: {e}", self.name);
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("virtio-console {}: {e:?}", self.name),
        }
    }

    /// Reads each chain the driver queued on `q` (up to [`MAX_CHUNK`] bytes) and hands it to `f`.
    fn drain_out(&mut self, q: usize, mut f: impl FnMut(&mut Self, &[u8])) -> bool {
        let mem = self.mem.clone();
        let mut done = 0usize;
        // Bounded: a ring cannot hold more chains than its size, whatever the avail index says.
        while done < usize::from(QUEUE_SIZE) {
            let Some(chain) = self.queues[q].pop_descriptor_chain(&mem) else { break };
            let head = chain.head_index();
            let bytes = match chain.reader(&mem) {
                Ok(mut r) => {
                    let n = r.available_bytes().min(MAX_CHUNK);
                    let mut b = vec![0u8; n];
                    r.read_exact(&mut b).map(|_| b).unwrap_or_default()
                }
                Err(_) => Vec::new(),
            };
            f(self, &bytes);
            if let Err(e) = self.queues[q].add_used(&mem, head, 0) {
                log::warn!("virtio-console {}: add_used: {e:?}", self.name);
            }
            done += 1;
        }
        if done > 0 {
            self.notify(q);
        }
        done > 0
    }

    fn process_control_tx(&mut self) -> bool {
        self.drain_out(CTRL_TX, |w, msg| w.control_in(msg))
    }

    fn process_port_tx(&mut self) -> bool {
        self.drain_out(PORT_TX, |w, bytes| {
            if bytes.is_empty() {
                return;
            }
            match (&*w.host).write(bytes) {
                Ok(n) if n == bytes.len() => {}
                Ok(n) => log::debug!("virtio-console {}: host took {n} of {} bytes", w.name, bytes.len()),
                Err(e) => log::debug!("virtio-console {}: host: {e}; {} bytes dropped", w.name, bytes.len()),
            }
        })
    }

    /// A control message from the driver.
    fn control_in(&mut self, msg: &[u8]) {
        let Some(m) = msg.get(..8) else {
            log::debug!("virtio-console {}: {}-byte control message ignored", self.name, msg.len());
            return;
        };
        let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        let ev = u16::from_le_bytes([m[4], m[5]]);
        let value = u16::from_le_bytes([m[6], m[7]]);
        match ev {
            event::DEVICE_READY if value == 1 => {
                self.queue_control(control(0, event::DEVICE_ADD, 1).to_vec())
            }
            event::PORT_READY if id == 0 && value == 1 => {
                let mut name = control(0, event::PORT_NAME, 1).to_vec();
                name.extend_from_slice(self.name.as_bytes());
                self.queue_control(name);
                self.queue_control(control(0, event::PORT_OPEN, 1).to_vec());
            }
            event::PORT_OPEN if id == 0 => self.guest_open = value == 1,
            _ => log::debug!("virtio-console {}: control event {ev} for port {id} ignored", self.name),
        }
    }

    fn queue_control(&mut self, msg: Vec<u8>) {
        if self.control_out.len() < MAX_PENDING_CONTROL {
            self.control_out.push_back(msg);
        }
    }

    /// Writes `data` into the next chain the driver posted on `q`; None when it posted none.
    fn fill_in(&mut self, q: usize, data: &[u8]) -> Option<usize> {
        let mem = self.mem.clone();
        let chain = self.queues[q].pop_descriptor_chain(&mem)?;
        let head = chain.head_index();
        let written = match chain.writer(&mem) {
            Ok(mut w) => {
                let n = w.available_bytes().min(data.len());
                w.write_all(&data[..n]).map(|_| n).unwrap_or(0)
            }
            Err(_) => 0,
        };
        if let Err(e) = self.queues[q].add_used(&mem, head, written as u32) {
            log::warn!("virtio-console {}: add_used: {e:?}", self.name);
        }
        Some(written)
    }

    fn process_control_rx(&mut self) -> bool {
        let mut sent = false;
        while let Some(msg) = self.control_out.pop_front() {
            if self.fill_in(CTRL_RX, &msg).is_none() {
                self.control_out.push_front(msg);
                break;
            }
            sent = true;
        }
        if sent {
            self.notify(CTRL_RX);
        }
        sent
    }

    fn process_port_rx(&mut self) -> bool {
        let mut moved = false;
        loop {
            if self.pending.is_empty() {
                // Delivered whether or not the guest has the port open: its driver drops what
                // arrives for a closed port (Linux: discard_port_data), and the state survives a
                // snapshot or migration that this device's open flag would not.
                match (&*self.host).read(&mut self.buf) {
                    Ok(0) => break,
                    Ok(n) => self.pending.extend_from_slice(&self.buf[..n]),
                    Err(_) => break,
                }
            }
            let data = std::mem::take(&mut self.pending);
            match self.fill_in(PORT_RX, &data) {
                Some(n) => {
                    moved = true;
                    self.pending = data[n..].to_vec();
                    if n == 0 && !self.pending.is_empty() {
                        // A zero-capacity chain: drop what it could not take rather than spin.
                        self.pending.clear();
                    }
                }
                None => {
                    self.pending = data;
                    break;
                }
            }
        }
        if moved {
            self.notify(PORT_RX);
        }
        moved
    }
}

#[cfg(test)]
#[path = "console_tests.rs"]
mod tests;
