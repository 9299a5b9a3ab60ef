//! Fuzz entry points: each takes arbitrary bytes and must never panic, hang or allocate without
//! bound, whatever the bytes hold. The cargo-fuzz targets in `fuzz/` call them (one line each) and
//! `tests/fuzz_entries.rs` runs them on random bytes and on every committed seed, so the stable test
//! suite exercises exactly the code the fuzzer does. See `docs/fuzzing.md`.
//!
//! | Entry | Untrusted input | Who sends it |
//! | --- | --- | --- |
//! | [`virtio_blk`] | virtqueue descriptor chains and virtio-blk requests in guest memory | the guest |
//! | [`kubevirt_manifest`] | `kubevirt.io` YAML / JSON documents | API users |
//! | [`qmp_stream`] | the byte stream of a QMP socket | QEMU (running guest code) |
//! | [`qga_reply`] | what a guest agent sends on its channel | the guest |
//! | [`launcher_control`] | control-socket requests, and the launcher's answers | the node / a launcher |
//! | [`state_stream`] | a snapshot's state file, or the state sent by a migration source | a snapshot file / a source host |
//! | [`migration_stream`] | the framed migration protocol a destination reads | a migration source |

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::api::Validate;
use crate::block::{BlockBackend, MemDisk};
use crate::machine::accel::{AccelDecision, AccelPolicy, Accelerator};
use crate::machine::qemu::{cmdline, qmp};
use crate::machine::resolve::{machine_spec, HostFileError, VolumeFiles};
use crate::machine::{DiskFormat, Machine, MachineError, MachineEvent, MachineExit, MachineStatus};
use crate::model::{self, Admit, Catalog, KubeVirtObject, NodeSupport};
use crate::vmm::devices::virtio::block::Worker;
use crate::vmm::devices::virtio::VirtioInterrupt;

/// Guest memory of the virtio-blk target: two 64 KiB regions with a 4 KiB hole between them, so
/// buffers can straddle a region boundary or fall into the hole.
const BLK_REGIONS: [(u64, usize); 2] = [(0, 0x1_0000), (0x1_1000, 0x1_0000)];
/// Disk size of the virtio-blk target.
const BLK_DISK: usize = 64 << 10;

/// A virtio-blk device serving one queue whose rings, descriptor tables, indirect tables and
/// buffers all come from `data`.
///
/// Layout: byte 0 flags (bit 0 `VIRTIO_RING_F_EVENT_IDX`, bit 1 read-only disk); bytes 1-2 the
/// queue size; bytes 3-8 the descriptor table, available ring and used ring addresses (little
/// endian, in units of 16, 2 and 4 bytes: their alignments); the rest is guest memory from address
/// 0 on (the first region, then the second). The device serves the queue twice (the second time
/// finds nothing new) and every completion must land in the used ring.
pub fn virtio_blk(data: &[u8]) {
    let Some((hdr, image)) = data.split_first_chunk::<9>() else { return };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&BLK_REGIONS.map(|(a, l)| (GuestAddress(a), l))) else {
        return;
    };
    let mut rest = image;
    for (addr, len) in BLK_REGIONS {
        let n = rest.len().min(len);
        if mem.write_slice(&rest[..n], GuestAddress(addr)).is_err() {
            return;
        }
        rest = &rest[n..];
    }
    let u16_at = |i: usize| u64::from(u16::from_le_bytes([hdr[i], hdr[i + 1]]));
    let Ok(mut queue) = Queue::new(256) else { return };
    queue.set_size(u16::from_le_bytes([hdr[1], hdr[2]]));
    queue.set_desc_table_address(Some(u16_at(3) as u32 * 16), Some(0));
    queue.set_avail_ring_address(Some(u16_at(5) as u32 * 2), Some(0));
    queue.set_used_ring_address(Some(u16_at(7) as u32 * 4), Some(0));
    queue.set_event_idx(hdr[0] & 1 != 0);
    queue.set_ready(true);
    // The mmio transport refuses to activate an invalid queue; so does this.
    if !queue.is_valid(&mem) {
        return;
    }
    let Ok(evt) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let disk: Arc<dyn BlockBackend> = Arc::new(MemDisk::new(BLK_DISK, hdr[0] & 2 != 0));
    let mut worker = Worker::new(disk, mem, queue, VirtioInterrupt::new(Arc::new(evt)));
    worker.process_queue();
    worker.process_queue();
}

/// Loads `data` as a YAML stream (or, when it starts with `{`, a JSON document) of KubeVirt objects
/// the way the node's API and `virtctl create` do, then runs everything that follows a load on
/// every object: validation, admission against a node that supports nothing optional and one that
/// supports everything, instancetype and preference resolution against the instancetypes of the
/// same stream, the mapping to a machine and the QEMU command line. An object that loads must also
/// survive a round trip through JSON: what the node stores, it must be able to read back.
pub fn kubevirt_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = if text.trim_start().starts_with('{') {
        model::load_json(text).map(|l| vec![l])
    } else {
        model::load_yaml(text)
    };
    let Ok(docs) = loaded else { return };
    let mut catalog = Catalog::new();
    for d in &docs {
        catalog.add(&d.object);
    }
    for d in &docs {
        exercise_object(&d.object, &catalog);
    }
}

fn exercise_object(object: &KubeVirtObject, catalog: &Catalog) {
    let _ = object.validate();
    let _ = object.describe();
    let _ = object.to_string();
    let _ = object.admit(&NodeSupport::default());
    let _ = object.admit(&NodeSupport::everything());
    let _ = object.to_yaml();
    // Stored as JSON, read back at the next start of the node: it must load again, unchanged.
    if let (Ok(json), KubeVirtObject::VirtualMachine(_) | KubeVirtObject::VirtualMachineInstance(_)) =
        (object.to_json_value(), object)
    {
        let text = json.to_string();
        match model::load_json(&text) {
            Ok(back) => assert_eq!(&back.object, object, "JSON round trip changed the object: {text}"),
            Err(e) => panic!("an accepted object does not load back from its own JSON ({e}): {text}"),
        }
    }
    let spec = match object {
        KubeVirtObject::VirtualMachine(vm) => match model::resolve(vm, catalog) {
            Ok(t) => t.spec,
            Err(_) => return,
        },
        KubeVirtObject::VirtualMachineInstance(vmi) => vmi.spec.clone(),
        _ => return,
    };
    for accel in [AccelPolicy::Auto, AccelPolicy::ForceEmulation] {
        let Ok(m) = machine_spec("fuzz", &spec, &FuzzFiles, accel) else { continue };
        let layout = cmdline::Layout {
            qmp_socket: "/run/fuzz/qmp.sock".into(),
            serial_socket: "/run/fuzz/serial.sock".into(),
            agent_socket: "/run/fuzz/qga.sock".into(),
            tpm_socket: Some("/run/fuzz/swtpm.sock".into()),
            firmware: cmdline::Firmware::Bios("/usr/share/seabios/bios-256k.bin".into()),
            efi_vars: None,
            vnc_socket: "/run/vm/vnc.sock".into(),
            vhost_net: false,
        };
        for a in [Accelerator::Kvm, Accelerator::Emulation] {
            let _ = cmdline::build(&m, a, &layout);
        }
    }
}

/// Volume files for the fuzzer: every volume is a raw file named after it.
struct FuzzFiles;

impl VolumeFiles for FuzzFiles {
    fn volume_file(&self, volume: &model::Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        Ok((Path::new("/run/fuzz/volumes").join(&volume.name), DiskFormat::Raw))
    }
    fn kernel_files(
        &self,
        _container: &model::KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        Ok(("/run/fuzz/vmlinuz".into(), Some("/run/fuzz/initrd".into())))
    }
    fn state_dir(&self) -> PathBuf {
        "/run/fuzz/state".into()
    }
}

/// Connects the QMP client to a "QEMU" that sends `data` (greeting, capability answer, events,
/// command answers: whatever the bytes are) and then closes, runs the commands the QEMU backend
/// uses, and types every line on its own as well. The client must end every command with an answer
/// or an error, never wait past the close, and never panic.
pub fn qmp_stream(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        if let Ok(qmp::QmpMessage::Event(raw)) = qmp::parse_message(line) {
            let _ = qmp::QmpEvent::parse(&raw);
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) {
            let _ = qmp::parse_status(&v);
            if let Ok(vnc) = serde_json::from_value::<qmp::VncInfo>(v) {
                let _ = vnc.socket_addr();
            }
        }
    }
    let Ok((ours, theirs)) = UnixStream::pair() else { return };
    let peer = {
        let Ok(mut w) = theirs.try_clone() else { return };
        let data = data.to_vec();
        // The peer keeps reading (and discarding) what the client sends, so no write blocks.
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
            let _ = w.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
        })
    };
    let events = Arc::new(Mutex::new(0usize));
    let seen = events.clone();
    let handler = move |_: qmp::Incoming| {
        if let Ok(mut n) = seen.lock() {
            *n += 1;
        }
    };
    if let Ok((client, reader)) = qmp::QmpClient::connect(ours, Duration::from_secs(5), handler) {
        let _ = client.greeting();
        let _ = client.query_status();
        let _ = client.query_vnc();
        let _ = client.human_monitor_command("info version");
        let _ = client.stop();
        let _ = reader.join();
    }
    drop(theirs);
    let _ = peer.join();
}

/// Connects the guest agent client (sync ids from 1, answers of at most 4 KiB) to an "agent" that
/// sends `data` and then closes, and runs one poll (sync, guest-info, OS, host name, time zone,
/// interfaces, users, file systems, freeze state) and the freeze, thaw and shutdown commands; every
/// line of `data` is also parsed on its own as each command's answer. Every call must end with a
/// result or an error (never wait past the close: the harness gives 30 s per command), and a
/// report must stay clipped.
pub fn qga_reply(data: &[u8]) {
    use crate::agent::{protocol as p, AgentClient, ShutdownMode};
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = p::parse_reply("fuzz", line) {
            let _ = p::decode::<p::GuestAgentInfo>("i", v.clone()).map(<(Option<String>, Vec<_>)>::from);
            let _ = p::decode::<p::GuestOsInfo>("o", v.clone()).map(model::GuestOsInfo::from);
            let _ = p::decode::<p::GuestTimezone>("t", v.clone()).map(p::timezone_text);
            let _ = p::decode::<Vec<p::GuestNetworkInterface>>("n", v.clone()).map(p::interfaces);
            let _ = p::decode::<Vec<p::GuestUser>>("u", v.clone()).map(p::users);
            let _ = p::decode::<Vec<p::GuestFilesystemInfo>>("f", v).map(p::filesystems);
        }
    }
    let Ok((ours, theirs)) = UnixStream::pair() else { return };
    let peer = {
        let Ok(mut w) = theirs.try_clone() else { return };
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
            let _ = w.shutdown(std::net::Shutdown::Write);
            let mut sink = [0u8; 4096];
            while matches!(w.read(&mut sink), Ok(n) if n > 0) {}
        })
    };
    if let Ok(c) = AgentClient::new(ours) {
        let mut c = c.with_first_id(1).with_max_reply(4096).with_timeout(Duration::from_secs(30));
        let r = crate::agent::poll_client("fuzz", &mut c);
        let clipped = |s: &String| s.chars().count() <= p::MAX_STR;
        assert!(r.interfaces.len() <= p::MAX_ITEMS && r.user_list.len() <= p::MAX_ITEMS, "{r:?}");
        assert!(r.filesystems.len() <= p::MAX_ITEMS && r.hostname.iter().all(clipped), "{r:?}");
        let _ = c.fsfreeze_freeze();
        let _ = c.fsfreeze_thaw();
        let _ = c.shutdown(ShutdownMode::Reboot, Duration::from_millis(10));
        let _ = c.ping();
    }
    drop(theirs);
    let _ = peer.join();
}

/// Feeds `data` to a launcher's control connection (newline-delimited JSON requests) served for a
/// machine that obeys pause, resume and stop, and checks that every answer is one JSON line a
/// [`crate::machine::remote::RemoteMachine`] reads. Then reads each line of `data` as the node
/// reads a launcher's answers (a reply, a status, an event, an exit record).
pub fn launcher_control(data: &[u8]) {
    for line in data.split(|b| *b == b'\n') {
        crate::machine::remote::check_reply_for_fuzzing(line);
        let _ = serde_json::from_slice::<crate::machine::supervisor::StatusReply>(line);
        let _ = serde_json::from_slice::<MachineEvent>(line);
        let _ = serde_json::from_slice::<MachineExit>(line);
    }
    let Ok((ours, theirs)) = UnixStream::pair() else { return };
    let Ok(mut w) = ours.try_clone() else { return };
    let data = data.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&data);
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    let mut r = ours;
    let reader = std::thread::spawn(move || {
        let mut answers = Vec::new();
        let _ = r.read_to_end(&mut answers);
        answers
    });
    let machine = Arc::new(FuzzMachine { status: Mutex::new(MachineStatus::Running) });
    if crate::machine::supervisor::serve_control_for_fuzzing(machine, theirs).is_err() {
        return;
    }
    let _ = writer.join();
    let Ok(answers) = reader.join() else { return };
    for line in answers.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => panic!("the launcher answered a line that is not JSON ({e}): {line:?}"),
        };
        let is_event = serde_json::from_value::<MachineEvent>(v.clone()).is_ok();
        assert!(is_event || v.get("ok").is_some_and(|ok| ok.is_boolean()), "answer without ok: {v}");
    }
}

/// A machine that pauses, resumes and stops as asked and has no events.
struct FuzzMachine {
    status: Mutex<MachineStatus>,
}

impl FuzzMachine {
    fn go(&self, op: &'static str, from: &MachineStatus, to: MachineStatus) -> Result<(), MachineError> {
        let mut s = self.status.lock().map_err(|_| MachineError::Control {
            machine: "fuzz".into(),
            op,
            source: "poisoned".into(),
        })?;
        if *s != *from {
            return Err(MachineError::State { machine: "fuzz".into(), op, state: s.clone() });
        }
        *s = to;
        Ok(())
    }
}

impl Machine for FuzzMachine {
    fn status(&self) -> MachineStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or(MachineStatus::Starting)
    }
    fn pause(&self) -> Result<(), MachineError> {
        self.go("pause", &MachineStatus::Running, MachineStatus::Paused)
    }
    fn resume(&self) -> Result<(), MachineError> {
        self.go("resume", &MachineStatus::Paused, MachineStatus::Running)
    }
    fn power_down(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), MachineError> {
        Err(MachineError::Unsupported { machine: "fuzz".into(), backend: "fuzz", what: "reset".into() })
    }
    fn stop(&self) -> Result<(), MachineError> {
        let s = self.status();
        self.go("stop", &s, MachineStatus::Stopped(MachineExit::Stopped))
    }
    fn console_input(&self, _bytes: &[u8]) -> Result<(), MachineError> {
        Ok(())
    }
    fn wait(&self, _timeout: Option<Duration>) -> Option<MachineExit> {
        match self.status() {
            MachineStatus::Stopped(e) => Some(e),
            _ => None,
        }
    }
    fn next_event(&self, _timeout: Duration) -> Option<MachineEvent> {
        None
    }
    fn accelerator(&self) -> AccelDecision {
        AccelDecision { accelerator: Accelerator::Emulation, reason: "fuzz".into() }
    }
}

/// A snapshot state stream: the framing ([`crate::vmm::state::read_stream`]), then every section's
/// payload decoded as each kind of state the VMM restores (vCPU, VM, configuration, serial, GED).
pub fn state_stream(data: &[u8]) {
    use crate::hypervisor::{VcpuState, VmState};
    use crate::vmm::devices::ged::Ged;
    use crate::vmm::devices::serial::SerialDevice;
    use crate::vmm::snapshot::ConfigSummary;
    use crate::vmm::state::{self, Persist};
    // Also decode the bytes as one section's payload, so the decoders see arbitrary bytes directly.
    let raw = state::Section { name: "raw".into(), version: 1, min_reader: 1, payload: data.to_vec() };
    let mut sections = state::read_stream(data).unwrap_or_default();
    sections.push(raw);
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let irq = Arc::new(irq);
    for s in &sections {
        let _ = VcpuState::default().load_section(s);
        let _ = VmState::default().load_section(s);
        let _ = ConfigSummary::default().load_section(s);
        let _ = SerialDevice::new(irq.clone(), Box::new(std::io::sink())).load_section(s);
        let _ = Ged::new(irq.clone(), 0).load_section(s);
    }
}

/// The migration stream a destination reads: frames, then the messages inside them
/// ([`crate::vmm::migration::fuzz_messages`]), without guest memory or a VM behind them.
pub fn migration_stream(data: &[u8]) {
    crate::vmm::migration::fuzz_messages(data);
}
