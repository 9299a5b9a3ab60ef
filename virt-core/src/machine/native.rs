//! The native microVM as a [`MachineBackend`]: kernel boot, virtio-blk disks, hardware KVM.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::accel::{self, AccelDecision, HostVirt};
use super::migrate::{MigrateOptions, MigrationReport};
use super::{
    BootSpec, ConsoleSink, DiskBus, DiskOpener, InterfaceBackend, Machine, MachineBackend, MachineError,
    MachineEvent, MachineExit, MachineSpec, MachineStatus, NetOpener, NicModel, StartStep, Unsupported,
};
use crate::hypervisor::kvm::KvmHypervisor;
use crate::net::{NetBackend, NetPair};
use crate::vmm::boot::KernelConfig;
use crate::vmm::devices::lock;
use crate::vmm::migration::{CancelToken, MigrationOptions};
use crate::vmm::{ExitReason, MicroVm, NetConfig, NicConfig, Payload, VmConfig, VmHandle};

/// Runs kernel-boot machines in-process on the native VMM.
pub struct NativeBackend {
    disks: DiskOpener,
    net: Option<NetOpener>,
    host: HostVirt,
    kernel_cache: Option<std::path::PathBuf>,
}

impl NativeBackend {
    /// A backend that opens disks with `disks` and caches decompressed kernels in `kernel_cache`.
    pub fn new(disks: DiskOpener, kernel_cache: Option<std::path::PathBuf>) -> Self {
        Self { disks, net: None, host: HostVirt::probe(), kernel_cache }
    }

    /// Opens the host side of NICs (taps) with `net` (virt-net provides it).
    pub fn with_net(mut self, net: NetOpener) -> Self {
        self.net = Some(net);
        self
    }

    /// Overrides the probed host (tests, or hosts whose KVM the probe misjudges).
    pub fn with_host(mut self, host: HostVirt) -> Self {
        self.host = host;
        self
    }
}

impl MachineBackend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn supports(&self, spec: &MachineSpec) -> Result<(), Unsupported> {
        accel::decide(&self.host, accel::AccelPolicy::RequireKvm, false)
            .map_err(|e| Unsupported::Host(e.to_string()))?;
        if !matches!(spec.boot, BootSpec::Kernel { .. }) {
            return Err(Unsupported::spec(
                "boot",
                "the native VMM boots kernels only (no BIOS or UEFI firmware)",
            ));
        }
        if let Some(d) = spec.disks.iter().find(|d| d.bus != DiskBus::Virtio || d.cdrom) {
            return Err(Unsupported::spec(
                format!("disk {}", d.name),
                format!(
                    "needs bus {:?}{}; the native VMM has virtio-blk only",
                    d.bus,
                    if d.cdrom { " as a CD-ROM" } else { "" }
                ),
            ));
        }
        if let Some(n) = spec.interfaces.iter().find(|n| n.model != NicModel::Virtio) {
            return Err(Unsupported::spec(
                format!("interface {}", n.name),
                format!("needs model {}; the native VMM has virtio-net only", n.model.name()),
            ));
        }
        if let Some(n) =
            spec.interfaces.iter().find(|n| n.backend != InterfaceBackend::None && self.net.is_none())
        {
            return Err(Unsupported::spec(
                format!("interface {}", n.name),
                "has a tap but this backend was built without virt-net",
            ));
        }
        if spec.tpm.is_some() || spec.graphics || !spec.hyperv.is_empty() || spec.smm {
            return Err(Unsupported::spec(
                "devices",
                "TPM, graphics, Hyper-V enlightenments and SMM need the QEMU backend",
            ));
        }
        if spec.cpu.count() == 0 || spec.cpu.count() > 254 {
            return Err(Unsupported::spec("cpu", format!("{} vCPUs (1 to 254)", spec.cpu.count())));
        }
        Ok(())
    }

    fn start(&self, spec: &MachineSpec, console: ConsoleSink) -> Result<Box<dyn Machine>, MachineError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Start {
            machine: spec.name.clone(),
            source,
        };
        let (cfg, unlinked) = self.config(spec, console)?;
        let hv = KvmHypervisor::new().map_err(|e| err(e.into()))?;
        let vm = MicroVm::new(&hv, cfg).map_err(|e| err(e.into()))?;
        let handle = vm.start().map_err(|e| err(e.into()))?;
        NativeMachine::wrap(spec, handle, unlinked)
    }

    fn start_incoming(
        &self,
        spec: &MachineSpec,
        console: ConsoleSink,
        stream: &mut std::os::unix::net::UnixStream,
    ) -> Result<Box<dyn Machine>, MachineError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Start {
            machine: spec.name.clone(),
            source,
        };
        let (cfg, unlinked) = self.config(spec, console)?;
        let hv = KvmHypervisor::new().map_err(|e| err(e.into()))?;
        let (handle, _stats) = MicroVm::migrate_from(&hv, cfg, &mut &mut *stream)
            .map_err(|e| err(StartStep::boxed("incoming migration", e)))?;
        NativeMachine::wrap(spec, handle, unlinked)
    }
}

impl NativeBackend {
    /// The VM configuration of `spec`: disks opened, NICs linked; the unlinked NICs' far ends.
    fn config(&self, spec: &MachineSpec, console: ConsoleSink) -> Result<(VmConfig, Attached), MachineError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Start {
            machine: spec.name.clone(),
            source,
        };
        self.supports(spec).map_err(|why| MachineError::Unsupported {
            machine: spec.name.clone(),
            backend: "native",
            what: why.to_string(),
        })?;
        let BootSpec::Kernel { kernel, initramfs, cmdline } = &spec.boot else {
            return Err(err("not a kernel boot".into()));
        };
        let disks = spec
            .disks
            .iter()
            .map(|d| (self.disks)(d).map_err(|e| err(e.into())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut unlinked = Vec::new();
        let mut nics = Vec::new();
        for nic in &spec.interfaces {
            let backend: Arc<dyn NetBackend> = match (&nic.backend, &self.net) {
                (InterfaceBackend::None, _) => {
                    // A NIC with nothing behind it: its frames fill a socket buffer nobody reads.
                    let (ours, theirs) = NetPair::new(&nic.name, "unlinked")
                        .map_err(|e| err(StartStep::boxed(format!("interface {}", nic.name), e)))?;
                    unlinked.push(theirs);
                    Arc::new(ours)
                }
                (_, Some(open)) => {
                    open(nic).map_err(|e| err(StartStep::boxed(format!("interface {}", nic.name), e)))?
                }
                (_, None) => {
                    return Err(err(StartStep::boxed(format!("interface {}", nic.name), "no network opener")))
                }
            };
            nics.push(NicConfig {
                backend,
                config: NetConfig { mac: nic.mac, mtu: nic.mtu.unwrap_or(1500) },
                vhost: nic.vhost,
            });
        }
        // The guest agent's channel, as every machine of the QEMU backend has one: the VMM's end
        // goes to its virtio-console, the host's to the launcher's agent client.
        let (agent_vm, agent_host) = std::os::unix::net::UnixStream::pair()
            .map_err(|e| err(StartStep::boxed("the guest agent's channel", e)))?;
        let cfg = VmConfig {
            memory_mib: spec.memory_mib,
            cpus: u8::try_from(spec.cpu.count()).map_err(|_| err("too many vCPUs".into()))?,
            payload: Payload::Kernel(KernelConfig {
                kernel: kernel.clone(),
                initramfs: initramfs.clone(),
                cmdline: cmdline.clone(),
                cache_dir: self.kernel_cache.clone(),
                ..Default::default()
            }),
            disks,
            nics,
            agent: Some(agent_vm),
            console,
            track_dirty_pages: false,
            huge_pages: false,
        };
        Ok((cfg, Attached { unlinked, agent: Some(agent_host) }))
    }
}

impl NativeMachine {
    /// The machine of a started (or migrated-in) VM, with the thread that reports its end.
    fn wrap(
        spec: &MachineSpec,
        handle: VmHandle,
        unlinked: Attached,
    ) -> Result<Box<dyn Machine>, MachineError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| MachineError::Start {
            machine: spec.name.clone(),
            source,
        };
        let handle = Arc::new(handle);
        let (tx, rx) = channel();
        let _ = tx.send(MachineEvent::Started);
        let state = Arc::new(Mutex::new(MachineStatus::Running));
        let m = NativeMachine {
            name: spec.name.clone(),
            handle: handle.clone(),
            events_tx: tx.clone(),
            events: Mutex::new(rx),
            state: state.clone(),
            ended: Arc::new((Mutex::new(None), std::sync::Condvar::new())),
            cancel: Mutex::new(None),
            _unlinked: unlinked.unlinked,
            agent: Mutex::new(unlinked.agent),
        };
        let ended = m.ended.clone();
        std::thread::Builder::new()
            .name(format!("{}-wait", spec.name))
            .spawn(move || {
                crate::jail::enter_or_die(crate::jail::Role::Main);
                let exit = match handle.wait() {
                    ExitReason::PowerOff => MachineExit::PowerOff,
                    ExitReason::Reset => MachineExit::Reboot,
                    ExitReason::Stopped => MachineExit::Stopped,
                    ExitReason::Error(e) => MachineExit::Failed(e),
                };
                *lock(&state) = MachineStatus::Stopped(exit.clone());
                let _ = tx.send(MachineEvent::Ended(exit.clone()));
                *lock(&ended.0) = Some(exit);
                ended.1.notify_all();
            })
            .map_err(|e| err(e.into()))?;
        Ok(Box::new(m))
    }
}

type Ended = Arc<(Mutex<Option<MachineExit>>, std::sync::Condvar)>;

/// What a started VM keeps besides its handle: the far ends of unlinked NICs, and the host end of
/// the guest agent's channel until the launcher takes it.
struct Attached {
    unlinked: Vec<NetPair>,
    agent: Option<std::os::unix::net::UnixStream>,
}

struct NativeMachine {
    name: String,
    handle: Arc<VmHandle>,
    events_tx: Sender<MachineEvent>,
    events: Mutex<Receiver<MachineEvent>>,
    state: Arc<Mutex<MachineStatus>>,
    ended: Ended,
    /// The running migration's cancel, for [`Machine::migrate_cancel`].
    cancel: Mutex<Option<Arc<CancelToken>>>,
    // The far ends of NICs that are not linked to anything.
    _unlinked: Vec<NetPair>,
    /// The host end of the guest agent's channel (virtio-console port `org.qemu.guest_agent.0`).
    agent: Mutex<Option<std::os::unix::net::UnixStream>>,
}

impl NativeMachine {
    fn transition(
        &self,
        op: &'static str,
        from: MachineStatus,
        to: MachineStatus,
        ev: MachineEvent,
        act: impl FnOnce(),
    ) -> Result<(), MachineError> {
        let mut s = lock(&self.state);
        if *s != from {
            return Err(MachineError::State { machine: self.name.clone(), op, state: s.clone() });
        }
        act();
        *s = to;
        let _ = self.events_tx.send(ev);
        Ok(())
    }
}

impl Machine for NativeMachine {
    fn status(&self) -> MachineStatus {
        lock(&self.state).clone()
    }
    fn pause(&self) -> Result<(), MachineError> {
        self.transition("pause", MachineStatus::Running, MachineStatus::Paused, MachineEvent::Paused, || {
            self.handle.pause()
        })
    }
    fn resume(&self) -> Result<(), MachineError> {
        self.transition(
            "resume",
            MachineStatus::Paused,
            MachineStatus::Running,
            MachineEvent::Resumed,
            || self.handle.resume(),
        )
    }
    fn power_down(&self) -> Result<(), MachineError> {
        // Pressed under the state lock, so a pause or the machine's end cannot slip in between the
        // check and the press; a press while paused is seen by the guest when it resumes.
        let s = lock(&self.state);
        if !matches!(*s, MachineStatus::Running | MachineStatus::Paused) {
            return Err(MachineError::State {
                machine: self.name.clone(),
                op: "power down",
                state: s.clone(),
            });
        }
        self.handle.power_button().map_err(|e| MachineError::Control {
            machine: self.name.clone(),
            op: "power down",
            source: Box::new(e),
        })?;
        let _ = self.events_tx.send(MachineEvent::PowerDownRequested);
        Ok(())
    }
    /// A hard reset ends the microVM as a guest reboot does (`Ended(Reboot)`); the lifecycle starts
    /// the machine again, as it does after a reboot. It is not restarted in place (see docs/vmm.md).
    fn reset(&self) -> Result<(), MachineError> {
        let s = lock(&self.state);
        if !matches!(*s, MachineStatus::Running | MachineStatus::Paused) {
            return Err(MachineError::State { machine: self.name.clone(), op: "reset", state: s.clone() });
        }
        self.handle.request_reset();
        Ok(())
    }
    fn stop(&self) -> Result<(), MachineError> {
        if self.handle.is_paused() {
            self.handle.resume();
        }
        self.handle.request_stop();
        Ok(())
    }
    fn console_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        let mut off = 0;
        for _ in 0..1000 {
            off += self.handle.console_input(&bytes[off..]);
            if off >= bytes.len() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(MachineError::Control {
            machine: self.name.clone(),
            op: "console input",
            source: "the guest does not read its console".into(),
        })
    }
    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
        let (m, cv) = &*self.ended;
        let mut g = lock(m);
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        while g.is_none() {
            match deadline {
                None => g = cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = std::time::Instant::now();
                    if now >= d {
                        break;
                    }
                    g = cv.wait_timeout(g, d - now).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
                }
            }
        }
        g.clone()
    }
    fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
        lock(&self.events).recv_timeout(timeout).ok()
    }
    fn accelerator(&self) -> AccelDecision {
        AccelDecision { accelerator: accel::Accelerator::Kvm, reason: "hardware KVM (native microVM)".into() }
    }
    fn take_agent_channel(&self) -> Option<std::os::unix::net::UnixStream> {
        lock(&self.agent).take()
    }
    fn migrate_out(
        &self,
        stream: std::os::unix::net::UnixStream,
        opts: &MigrateOptions,
    ) -> Result<MigrationReport, MachineError> {
        let s = self.status();
        if s != MachineStatus::Running {
            return Err(MachineError::State { machine: self.name.clone(), op: "migrate", state: s });
        }
        let err = |msg: String| MachineError::Control {
            machine: self.name.clone(),
            op: "migrate",
            source: msg.into(),
        };
        let token = Arc::new(CancelToken::default());
        let waker = stream.try_clone().map_err(|e| err(format!("cloning the migration stream: {e}")))?;
        token.on_cancel(Box::new(move || {
            let _ = waker.shutdown(std::net::Shutdown::Both);
        }));
        {
            let mut cur = lock(&self.cancel);
            if cur.is_some() {
                return Err(err("a migration is already running".into()));
            }
            *cur = Some(token.clone());
        }
        let vmm_opts = MigrationOptions {
            downtime_budget: opts.downtime(),
            cancel: token,
            bandwidth_limit: opts.bandwidth_bytes_per_sec,
            completion_timeout: opts.completion_timeout(),
            auto_converge: opts.auto_converge,
            progress_timeout: opts.progress_timeout(),
            // With a timeout, it ends a migration that does not converge, as KubeVirt's (or pauses
            // the guest to finish: `allowWorkloadDisruption`); without one, the pass count does.
            max_passes: if opts.completion_timeout().is_some() || opts.progress_timeout().is_some() {
                u32::MAX
            } else {
                MigrationOptions::default().max_passes
            },
            pause_to_complete: opts.pause_to_complete,
        };
        let mut stream = stream;
        let r = self.handle.migrate_to(&mut stream, &vmm_opts);
        *lock(&self.cancel) = None;
        Ok(MigrationReport::from(&r.map_err(|e| err(e.to_string()))?))
    }
    fn migrate_cancel(&self) -> Result<(), MachineError> {
        match lock(&self.cancel).as_ref() {
            Some(t) if !t.cancel() => Err(MachineError::Control {
                machine: self.name.clone(),
                op: "migrate cancel",
                source: "too late: the migration completed".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::MemDisk;
    use crate::machine::{accel::AccelPolicy, ClockSpec, CpuSpec, DiskFormat, DiskSpec};

    /// A PVH ELF kernel whose 32-bit code is `code`, loaded at 16 MiB.
    fn pvh_elf(code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&2u16.to_le_bytes());
        let ph = |f: &mut Vec<u8>, at: usize, kind: u32, off: u64, pa: u64, sz: u64| {
            f[at..at + 4].copy_from_slice(&kind.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 24..at + 32].copy_from_slice(&pa.to_le_bytes());
            f[at + 32..at + 40].copy_from_slice(&sz.to_le_bytes());
            f[at + 40..at + 48].copy_from_slice(&sz.to_le_bytes());
        };
        ph(&mut f, 64, 1, 0x1000, 0x100_0000, code.len() as u64);
        let mut note = Vec::new();
        for v in [4u32, 4, 18] {
            note.extend_from_slice(&v.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&0x100_0000u32.to_le_bytes());
        f[0x800..0x800 + note.len()].copy_from_slice(&note);
        ph(&mut f, 120, 4, 0x800, 0, note.len() as u64);
        f.extend_from_slice(code);
        f
    }

    const SPIN: &[u8] = &[0xeb, 0xfe];
    /// mov $0x600,%dx; mov $0x34,%al; out %al,(%dx); jmp .
    const POWEROFF: &[u8] = &[0x66, 0xba, 0x00, 0x06, 0xb0, 0x34, 0xee, 0xeb, 0xfe];

    fn spec(dir: &std::path::Path, code: &[u8]) -> MachineSpec {
        let k = dir.join("k.elf");
        std::fs::write(&k, pvh_elf(code)).unwrap();
        MachineSpec {
            name: "t".into(),
            cpu: CpuSpec::default(),
            memory_mib: 32,
            boot: BootSpec::Kernel { kernel: k, initramfs: None, cmdline: String::new() },
            disks: vec![DiskSpec {
                name: "d0".into(),
                path: dir.join("d0.img"),
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                cdrom: false,
                read_only: true,
                boot_order: None,
                serial: None,
            }],
            acpi: true,
            smm: false,
            hyperv: vec![],
            clock: ClockSpec::default(),
            tpm: None,
            graphics: false,
            machine_type: None,
            accel: AccelPolicy::Auto,
            interfaces: Vec::new(),
            agent_credentials: Default::default(),
        }
    }

    fn backend() -> NativeBackend {
        let opener: DiskOpener =
            Arc::new(|_d| Ok(Arc::new(MemDisk::new(1 << 20, true)) as Arc<dyn crate::block::BlockBackend>));
        // This machine's /dev/kvm lacks vmx/svm but runs tiny guests; tell the backend it is hardware.
        NativeBackend::new(opener, None).with_host(HostVirt { cpu_flag: true, kvm_usable: true })
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let d = tempfile_dir();
        let b = backend();
        let mut s = spec(&d, SPIN);
        s.boot = BootSpec::Bios;
        assert!(b.supports(&s).unwrap_err().to_string().contains("kernels only"));
        let mut s = spec(&d, SPIN);
        s.disks[0].bus = DiskBus::Sata;
        assert!(b.supports(&s).unwrap_err().to_string().contains("virtio-blk only"));
        let mut s = spec(&d, SPIN);
        s.graphics = true;
        assert!(b.supports(&s).is_err());
        let nohw = NativeBackend::new(
            Arc::new(|d| {
                Err(crate::machine::DiskOpenError {
                    disk: d.name.clone(),
                    path: d.path.clone(),
                    source: "no".into(),
                })
            }),
            None,
        )
        .with_host(HostVirt { cpu_flag: false, kvm_usable: true });
        assert!(nohw.supports(&spec(&d, SPIN)).unwrap_err().to_string().contains("hardware KVM is required"));
        let _ = std::fs::remove_dir_all(d);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "native-machine-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn lifecycle_events_follow_pause_resume_and_stop() {
        if !std::path::Path::new("/dev/kvm").exists() {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "skipping: no /dev/kvm");
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let m = backend().start(&spec(&d, SPIN), Box::new(std::io::sink())).unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(m.next_event(t), Some(MachineEvent::Started));
        assert_eq!(m.status(), MachineStatus::Running);
        // The guest agent's channel (the virtio-console's host end), taken once.
        assert!(m.take_agent_channel().is_some());
        assert!(m.take_agent_channel().is_none());
        assert!(matches!(m.resume(), Err(MachineError::State { .. })));
        m.pause().unwrap();
        assert_eq!(m.next_event(t), Some(MachineEvent::Paused));
        assert_eq!(m.status(), MachineStatus::Paused);
        m.resume().unwrap();
        assert_eq!(m.next_event(t), Some(MachineEvent::Resumed));
        // This guest ignores the power button: the press is reported and the machine runs on.
        m.power_down().unwrap();
        assert_eq!(m.next_event(t), Some(MachineEvent::PowerDownRequested));
        assert_eq!(m.status(), MachineStatus::Running);
        m.stop().unwrap();
        assert_eq!(m.wait(Some(t)), Some(MachineExit::Stopped));
        assert_eq!(m.next_event(t), Some(MachineEvent::Ended(MachineExit::Stopped)));
        assert_eq!(m.status(), MachineStatus::Stopped(MachineExit::Stopped));
        assert!(matches!(m.power_down(), Err(MachineError::State { .. })));
        assert!(matches!(m.reset(), Err(MachineError::State { .. })));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn reset_ends_the_machine_as_a_reboot_even_while_paused() {
        if !std::path::Path::new("/dev/kvm").exists() {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "skipping: no /dev/kvm");
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let t = Duration::from_secs(5);
        let m = backend().start(&spec(&d, SPIN), Box::new(std::io::sink())).unwrap();
        assert_eq!(m.next_event(t), Some(MachineEvent::Started));
        m.reset().unwrap();
        assert_eq!(m.wait(Some(t)), Some(MachineExit::Reboot));
        assert_eq!(m.next_event(t), Some(MachineEvent::Ended(MachineExit::Reboot)));

        let m = backend().start(&spec(&d, SPIN), Box::new(std::io::sink())).unwrap();
        m.pause().unwrap();
        m.reset().unwrap();
        assert_eq!(m.wait(Some(t)), Some(MachineExit::Reboot));
        assert_eq!(m.status(), MachineStatus::Stopped(MachineExit::Reboot));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn guest_power_off_ends_the_machine() {
        if !std::path::Path::new("/dev/kvm").exists() {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "skipping: no /dev/kvm");
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let m = backend().start(&spec(&d, POWEROFF), Box::new(std::io::sink())).unwrap();
        assert_eq!(m.wait(Some(Duration::from_secs(10))), Some(MachineExit::PowerOff));
        let _ = std::fs::remove_dir_all(d);
    }
    /// A guest that counts in %ecx and prints a `.` on COM1 every 2^20 steps:
    /// `back: inc %ecx; test $0xfffff,%ecx; jnz back; mov $0x3f8,%dx; mov $0x2e,%al; out %al,(%dx);
    /// jmp back`.
    const DOTS: &[u8] = &[
        0x41, 0xf7, 0xc1, 0xff, 0xff, 0x0f, 0x00, 0x75, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x2e, 0xee, 0xeb,
        0xee,
    ];

    /// Console bytes shared with the test.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Seen {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Seen {
        fn dots(&self) -> usize {
            lock(&self.0).iter().filter(|&&b| b == b'.').count()
        }
        fn wait_more(&self, than: usize) -> usize {
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_secs(20) {
                let n = self.dots();
                if n > than {
                    return n;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            panic!("the console stayed at {than} dots");
        }
    }

    #[test]
    fn a_running_machine_migrates_into_a_new_machine_and_keeps_printing() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let sp = spec(&d, DOTS);
        let (src_out, dst_out) = (Seen::default(), Seen::default());
        let src = backend().start(&sp, Box::new(src_out.clone())).unwrap();
        src_out.wait_more(2);
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (sp2, out2) = (sp.clone(), dst_out.clone());
        let dst = std::thread::spawn(move || backend().start_incoming(&sp2, Box::new(out2), &mut b));
        let report = src.migrate_out(a.try_clone().unwrap(), &MigrateOptions::default()).unwrap();
        let dst = dst.join().unwrap().unwrap();
        assert!(report.downtime_us > 0 && report.downtime_us < 300_000, "{report:?}");
        assert_eq!(src.wait(Some(Duration::from_secs(5))), Some(MachineExit::Stopped));
        let stopped_at = src_out.dots();
        assert_eq!(dst.status(), MachineStatus::Running);
        dst_out.wait_more(2);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(src_out.dots(), stopped_at, "the source printed after it handed over");
        assert!(matches!(src.migrate_out(a, &MigrateOptions::default()), Err(MachineError::State { .. })));
        dst.stop().unwrap();
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_destination_that_goes_away_leaves_the_source_running() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let out = Seen::default();
        let src = backend().start(&spec(&d, DOTS), Box::new(out.clone())).unwrap();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(b);
        let e = src.migrate_out(a, &MigrateOptions::default()).unwrap_err();
        assert!(matches!(e, MachineError::Control { op: "migrate", .. }), "{e}");
        assert_eq!(src.status(), MachineStatus::Running);
        let n = out.dots();
        out.wait_more(n + 1);
        src.stop().unwrap();
        let _ = std::fs::remove_dir_all(d);
    }
    #[test]
    fn a_cancel_when_the_destination_is_ready_leaves_only_the_source_running() {
        use crate::vmm::migration::{read_frame, write_frame, Kind, MigrationError};
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipping: no /dev/kvm");
            return;
        }
        let d = tempfile_dir();
        let sp = spec(&d, DOTS);
        let out = Seen::default();
        let src: Arc<dyn Machine> = Arc::from(backend().start(&sp, Box::new(out.clone())).unwrap());
        out.wait_more(1);
        // src <-> (a, a2) relay (b2, b) <-> destination; the relay cancels as Ready passes.
        let (a, mut a2) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut b, mut b2) = std::os::unix::net::UnixStream::pair().unwrap();
        let (mut a3, mut b3) = (a2.try_clone().unwrap(), b2.try_clone().unwrap());
        let relay = |from: &mut std::os::unix::net::UnixStream,
                     to: &mut std::os::unix::net::UnixStream,
                     on_ready: &dyn Fn()| loop {
            match read_frame(from) {
                Ok((k, p)) => {
                    if k == Kind::Ready {
                        on_ready();
                    }
                    if write_frame(to, k, &p).is_err() {
                        return;
                    }
                }
                Err(MigrationError::Abandoned(m)) => {
                    let _ = write_frame(to, Kind::Abandon, m.as_bytes());
                    return;
                }
                Err(_) => {
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    return;
                }
            }
        };
        let s2 = src.clone();
        std::thread::spawn(move || relay(&mut a2, &mut b2, &|| ()));
        std::thread::spawn(move || relay(&mut b3, &mut a3, &|| s2.migrate_cancel().unwrap()));
        let dst =
            std::thread::spawn(move || backend().start_incoming(&sp, Box::new(std::io::sink()), &mut b));
        let e = src.migrate_out(a, &MigrateOptions::default()).unwrap_err();
        assert!(e.to_string().contains("cancelled"), "{e}");
        assert!(dst.join().unwrap().is_err(), "the destination must not run");
        assert_eq!(src.status(), MachineStatus::Running);
        let n = out.dots();
        out.wait_more(n + 1);
        src.stop().unwrap();
        let _ = std::fs::remove_dir_all(d);
    }
}
