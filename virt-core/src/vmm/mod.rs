//! The native microVM (x86_64): memory, boot, ACPI, devices and vCPUs on the hypervisor seam.
//!
//! [`MicroVm::new`] builds a VM from a [`VmConfig`] (memory, vCPUs, a kernel or a flat test image,
//! disks, a console sink) on any [`Hypervisor`]; [`MicroVm::start`] runs it and returns a [`VmHandle`]
//! that pauses, resumes, stops and waits for it.
//!
//! ```text
//!   vCPU threads ──port/MMIO exits──► Bus ─► serial, i8042, ACPI PM, GED, virtio-mmio transports
//!   guest notify ──ioeventfd──► virtio-blk worker ─► BlockBackend ─► file
//!   worker ──irqfd──► in-kernel IOAPIC ─► guest
//! ```

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod devices;
pub mod layout;
pub mod memory;
pub mod migration;
pub mod snapshot;
pub mod state;
pub mod vcpu;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use self::boot::regs::{self, EntryMode};
use self::boot::{BootInfo, KernelConfig};
use self::devices::ged::{Ged, GedError};
use self::devices::legacy::{AcpiPm, I8042, I8042_DATA_PORT};
use self::devices::serial::{SerialDevice, COM1_GSI, COM1_PORT};
use self::devices::virtio::block::Block;
use self::devices::virtio::console::{Console, AGENT_PORT_NAME};
use self::devices::virtio::mmio::{MmioTransport, NOTIFY_REG_OFFSET};
use self::devices::virtio::net::Net;
pub use self::devices::virtio::net::NetConfig;
use self::devices::virtio::vhost_net::VhostNet;
use self::devices::virtio::{VirtioDevice, VirtioInterrupt};
pub use self::devices::ExitReason;
use self::devices::{lock, Bus, ExitLatch};
use self::state::DeviceState;
use self::vcpu::VcpuControl;
use crate::block::BlockBackend;
use crate::hypervisor::{Hypervisor, HypervisorError, IoEventAddress, MemorySlot, Vm};
use crate::net::{NetBackend, VhostMode};

/// First GSI used for virtio-mmio devices (0-15 are ISA lines; 4 is COM1).
const VIRTIO_FIRST_GSI: u32 = 5;
/// Last usable GSI of the IOAPIC's 24 pins.
const LAST_GSI: u32 = 23;

/// What the boot vCPU runs.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A Linux kernel, with initramfs and command line.
    Kernel(KernelConfig),
    /// A flat binary copied to `load_addr` and entered at `entry` in `mode` (for tiny test guests).
    /// In [`EntryMode::Linux64`] the first GiB is identity-mapped; in [`EntryMode::Pvh`] paging is off.
    Flat {
        /// The code and data.
        image: Vec<u8>,
        /// Where it is copied.
        load_addr: u64,
        /// Where execution starts.
        entry: u64,
        /// CPU mode at entry.
        mode: EntryMode,
    },
}

/// Everything needed to build a VM.
pub struct VmConfig {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub cpus: u8,
    /// What to boot.
    pub payload: Payload,
    /// Disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<Arc<dyn BlockBackend>>,
    /// virtio-net NICs, after the disks on the virtio-mmio bus.
    pub nics: Vec<NicConfig>,
    /// The guest agent's channel: a virtio-console whose one port is named
    /// `org.qemu.guest_agent.0`, after the NICs; its bytes go to and from this socket.
    pub agent: Option<std::os::unix::net::UnixStream>,
    /// Where the serial console's output goes.
    pub console: Box<dyn Write + Send>,
    /// Whether the hypervisor logs dirty pages of guest memory (for migration and snapshots).
    pub track_dirty_pages: bool,
    /// Ask for huge pages for guest RAM (`MADV_HUGEPAGE`); see [`memory::create`].
    pub huge_pages: bool,
}

/// A virtio-net NIC of the native VMM.
pub struct NicConfig {
    /// Where its frames go.
    pub backend: Arc<dyn NetBackend>,
    /// MAC and MTU the guest sees.
    pub config: NetConfig,
    /// Whether vhost-net moves the frames (it needs a tap backend and `/dev/vhost-net`).
    pub vhost: VhostMode,
}

/// The virtio-net device of `nic`, with vhost-net as its mode asks (opened here, before any vCPU
/// runs: the vCPU thread that activates the device may not open files).
fn net_device(nic: NicConfig) -> Result<Net, VmmError> {
    let name = nic.backend.name().to_string();
    let tap = nic.backend.vhost_fd().is_some();
    let dev = Net::new(nic.backend, nic.config);
    match nic.vhost {
        VhostMode::Off => Ok(dev),
        VhostMode::On if !tap => Err(VmmError::Config(format!("NIC {name}: vhost on needs a tap backend"))),
        VhostMode::Auto if !tap => Ok(dev),
        mode => match VhostNet::open() {
            Ok(v) => Ok(dev.with_vhost(v)),
            Err(e) if mode == VhostMode::Auto => {
                log::warn!("virtio-net {name}: {e}: the userspace path moves its frames");
                Ok(dev)
            }
            Err(e) => Err(VmmError::Config(format!("NIC {name}: vhost on: {e}"))),
        },
    }
}

/// Errors while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The hypervisor refused an operation.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel could not be loaded.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// ACPI tables could not be built.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// vCPU register setup failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// A device could not be created or attached.
    #[error("device setup: {0}")]
    Device(String),
    /// A thread or eventfd could not be created.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// The power button could not be pressed.
    #[error(transparent)]
    Ged(#[from] GedError),
    /// An operation that needs a running VM was asked of one that has ended.
    #[error("cannot {op}: the VM has already ended ({reason:?})")]
    Ended {
        /// The operation.
        op: &'static str,
        /// Why the VM ended.
        reason: ExitReason,
    },
}

/// A built VM, ready to start.
pub struct MicroVm {
    vm: Arc<dyn Vm>,
    mem: GuestMemoryMmap,
    vcpus: Vec<Box<dyn crate::hypervisor::Vcpu>>,
    io_bus: Bus,
    mmio_bus: Bus,
    serial: Arc<Mutex<SerialDevice>>,
    ged: Arc<Mutex<Ged>>,
    exit: Arc<ExitLatch>,
    boot: Option<BootInfo>,
    slots: Vec<MemorySlot>,
    timings: Vec<(&'static str, std::time::Duration)>,
    devices: Vec<NamedDevice>,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    cfg_summary: snapshot::ConfigSummary,
    // Kept alive for as long as the VM: the hypervisor holds their file descriptors' counterparts.
    _eventfds: Vec<Arc<EventFd>>,
    // Declared last: dropped after every device and thread that uses guest memory.
    _ram: Arc<memory::GuestRam>,
}

/// A device with state, under the name of its state section.
pub(crate) type NamedDevice = (String, Arc<Mutex<dyn DeviceState>>);

/// How [`MicroVm::build`] fills guest memory.
pub(crate) enum Build<'a> {
    /// Fresh memory, ACPI tables and the payload: a cold boot.
    Boot,
    /// Memory left empty (to be received from a migration source); no tables, no payload.
    Empty,
    /// Memory mapped privately from a snapshot's memory file; no tables, no payload.
    File(&'a std::fs::File),
}

impl MicroVm {
    /// Builds memory, devices, ACPI tables, loads the payload and creates configured vCPUs.
    pub fn new(hv: &dyn Hypervisor, cfg: VmConfig) -> Result<Self, VmmError> {
        Self::build(hv, cfg, Build::Boot)
    }

    /// Builds the VM of `cfg` with its memory as `how` says.
    pub(crate) fn build(hv: &dyn Hypervisor, cfg: VmConfig, how: Build<'_>) -> Result<Self, VmmError> {
        let booting = matches!(how, Build::Boot);
        let mut timer = PhaseTimer::new();
        if cfg.cpus == 0 {
            return Err(VmmError::Config("at least one vCPU is needed".into()));
        }
        let max = hv.max_vcpus().min(254);
        if usize::from(cfg.cpus) > max {
            return Err(VmmError::Config(format!("{} vCPUs requested, at most {max} supported", cfg.cpus)));
        }
        let mem_size = cfg
            .memory_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| VmmError::Config(format!("{} MiB of memory is too large", cfg.memory_mib)))?;
        let ranges = layout::ram_regions(mem_size).map_err(|e| VmmError::Config(e.to_string()))?;
        let (mem, ram) = match how {
            Build::File(f) => memory::create_from_file(&ranges, f),
            _ => memory::create(&ranges, cfg.huge_pages),
        }
        .map_err(|e| VmmError::Memory(e.to_string()))?;
        let virtio_count = (cfg.disks.len() + cfg.nics.len() + usize::from(cfg.agent.is_some())) as u32;
        if virtio_count > LAST_GSI - VIRTIO_FIRST_GSI + 1 {
            return Err(VmmError::Config(format!(
                "{} disks and {} NICs requested{}, at most {} virtio devices in all",
                cfg.disks.len(),
                cfg.nics.len(),
                if cfg.agent.is_some() { " besides the guest agent's console" } else { "" },
                LAST_GSI - VIRTIO_FIRST_GSI + 1
            )));
        }

        let supported = hv.supported_cpuid()?;
        let cfg_summary = snapshot::ConfigSummary::of(&cfg, &cpuid::filter_cpuid(&supported, 0, cfg.cpus));
        timer.mark("guest memory mapped");
        let vm = hv.create_vm()?;
        let mut slots = Vec::new();
        for (i, r) in mem.iter().enumerate() {
            let host = r
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|e| VmmError::Memory(e.to_string()))?;
            let slot = MemorySlot {
                slot: i as u32,
                guest_addr: r.start_addr().0,
                size: r.len(),
                host_addr: host as u64,
                log_dirty: cfg.track_dirty_pages,
            };
            // SAFETY: the mapping belongs to `mem`, which MicroVm (and later the VmHandle) keeps alive
            // for as long as the VM exists; it is never unmapped before the VM is dropped.
            unsafe { vm.set_memory_slot(slot)? };
            slots.push(slot);
        }
        vm.setup_arch()?;
        timer.mark("VM created, memory slots and irqchip set");

        let exit = ExitLatch::new();
        let mut eventfds = Vec::new();
        let new_evt =
            || EventFd::new(libc::EFD_NONBLOCK).map(Arc::new).map_err(|e| VmmError::Io("eventfd", e));

        // Legacy devices.
        let mut io_bus = Bus::new();
        let serial_irq = new_evt()?;
        vm.register_irqfd(&serial_irq, COM1_GSI)?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq.clone(), cfg.console)));
        eventfds.push(serial_irq);
        let dev_err = |e: devices::BusError| VmmError::Device(e.to_string());
        io_bus.insert(serial.clone(), COM1_PORT, 8).map_err(dev_err)?;
        io_bus.insert(Arc::new(Mutex::new(I8042::new(exit.clone()))), I8042_DATA_PORT, 5).map_err(dev_err)?;
        io_bus
            .insert(Arc::new(Mutex::new(AcpiPm::new(exit.clone()))), u64::from(acpi::SLEEP_CONTROL_PORT), 3)
            .map_err(dev_err)?;
        // The Generic Event Device: the power button's event register and interrupt.
        let ged_irq = new_evt()?;
        vm.register_irqfd(&ged_irq, acpi::GED_GSI)?;
        let ged = Arc::new(Mutex::new(Ged::new(ged_irq.clone(), acpi::GED_GSI)));
        eventfds.push(ged_irq);
        io_bus.insert(ged.clone(), u64::from(acpi::GED_EVENT_PORT), 1).map_err(dev_err)?;
        // The i8042 and the ACPI PM registers hold no state: they only report resets and power-off.
        let mut devices: Vec<NamedDevice> =
            vec![("serial".into(), serial.clone()), ("ged".into(), ged.clone())];

        // Virtio devices.
        let mut mmio_bus = Bus::new();
        let mut virtio = Vec::new();
        let mut acpi_devs = Vec::new();
        let agent = match cfg.agent {
            Some(host) => Some(
                Console::new(AGENT_PORT_NAME, host)
                    .map_err(|e| VmmError::Io("the guest agent's channel", e))?,
            ),
            None => None,
        };
        let mut nets = Vec::new();
        for n in cfg.nics {
            nets.push(Box::new(net_device(n)?) as Box<dyn VirtioDevice>);
        }
        let virtio_devs = cfg
            .disks
            .into_iter()
            .map(|d| Box::new(Block::new(d)) as Box<dyn VirtioDevice>)
            .chain(nets)
            .chain(agent.map(|c| Box::new(c) as Box<dyn VirtioDevice>));
        for (i, dev) in virtio_devs.enumerate() {
            let base = layout::VIRTIO_MMIO_START + i as u64 * layout::VIRTIO_MMIO_SIZE;
            let gsi = VIRTIO_FIRST_GSI + i as u32;
            let irq = new_evt()?;
            vm.register_irqfd(&irq, gsi)?;
            let transport = MmioTransport::new(dev, mem.clone(), VirtioInterrupt::new(irq.clone()))
                .map_err(|e| VmmError::Io("virtio queue eventfd", e))?;
            for (q, evt) in transport.queue_evts().iter().enumerate() {
                vm.register_ioevent(evt, IoEventAddress::Mmio(base + NOTIFY_REG_OFFSET), Some(q as u32))?;
                eventfds.push(evt.clone());
            }
            eventfds.push(irq);
            let transport = Arc::new(Mutex::new(transport));
            devices.push((format!("virtio-mmio{i}"), transport.clone()));
            virtio.push(transport.clone());
            mmio_bus.insert(transport, base, layout::VIRTIO_MMIO_SIZE).map_err(dev_err)?;
            acpi_devs.push(acpi::MmioDeviceInfo { base, size: layout::VIRTIO_MMIO_SIZE, gsi });
        }

        timer.mark("devices attached");
        let (mode, entry, boot) = match &cfg.payload {
            _ if !booting => (EntryMode::Pvh, 0, None),
            Payload::Kernel(k) => {
                let rsdp = acpi::create_acpi_tables(&mem, usize::from(cfg.cpus), &acpi_devs)?;
                let info = boot::load_kernel(&mem, mem_size, k, rsdp)?;
                (info.mode, info.entry, Some(info))
            }
            Payload::Flat { image, load_addr, entry, mode } => {
                acpi::create_acpi_tables(&mem, usize::from(cfg.cpus), &acpi_devs)?;
                mem.write_slice(image, GuestAddress(*load_addr)).map_err(|e| {
                    VmmError::Memory(format!("cannot place the flat image at {load_addr:#x}: {e}"))
                })?;
                (*mode, *entry, None)
            }
        };

        timer.mark("payload loaded");
        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let vcpu = vm.create_vcpu(id)?;
            vcpu.set_cpuid(&cpuid::filter_cpuid(&supported, id, cfg.cpus))?;
            vcpu.set_msrs(&regs::boot_msrs())?;
            vcpu.set_fpu(&regs::boot_fpu())?;
            regs::setup_lint(vcpu.as_ref())?;
            if id == 0 && booting {
                let sregs = regs::setup_sregs(&mem, mode, vcpu.get_sregs()?)?;
                vcpu.set_sregs(&sregs)?;
                vcpu.set_regs(&regs::boot_regs(mode, entry))?;
            }
            vcpus.push(vcpu);
        }
        timer.mark("vCPUs configured");
        Ok(Self {
            vm,
            mem,
            vcpus,
            io_bus,
            mmio_bus,
            serial,
            ged,
            exit,
            boot,
            slots,
            timings: timer.phases,
            devices,
            virtio,
            cfg_summary,
            _eventfds: eventfds,
            _ram: ram,
        })
    }

    /// How the kernel was loaded (None for flat images).
    pub fn boot_info(&self) -> Option<&BootInfo> {
        self.boot.as_ref()
    }

    /// How long each phase of [`MicroVm::new`] took, in order (for boot-latency work).
    pub fn build_timings(&self) -> &[(&'static str, std::time::Duration)] {
        &self.timings
    }

    /// Guest memory (for embedders that inspect or prepare it before start).
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Starts the vCPUs.
    pub fn start(self) -> Result<VmHandle, VmmError> {
        self.start_with(false)
    }

    /// Creates the vCPU threads parked: the VM runs from [`VmHandle::resume`] on (a restored VM that
    /// should not run yet).
    pub fn start_paused(self) -> Result<VmHandle, VmmError> {
        self.start_with(true)
    }

    fn start_with(self, paused: bool) -> Result<VmHandle, VmmError> {
        vcpu::install_kick_handler()
            .map_err(|e| VmmError::Io("installing the vCPU kick signal handler", e))?;
        let ctl = VcpuControl::new();
        if paused {
            ctl.preset_paused();
        }
        let started = Instant::now();
        for (id, v) in self.vcpus.into_iter().enumerate() {
            ctl.spawn(id as u8, v, self.io_bus.clone(), self.mmio_bus.clone(), self.exit.clone())
                .map_err(|e| VmmError::Io("spawning a vCPU thread", e))?;
        }
        Ok(VmHandle {
            vm: self.vm,
            mem: self.mem,
            ctl,
            exit: self.exit,
            serial: self.serial,
            ged: self.ged,
            slots: self.slots,
            devices: self.devices,
            virtio: self.virtio,
            cfg_summary: self.cfg_summary,
            started,
            _io_bus: self.io_bus,
            _mmio_bus: self.mmio_bus,
            _eventfds: self._eventfds,
            _ram: self._ram,
        })
    }
}

struct PhaseTimer {
    last: Instant,
    phases: Vec<(&'static str, std::time::Duration)>,
}

impl PhaseTimer {
    fn new() -> Self {
        Self { last: Instant::now(), phases: Vec::new() }
    }
    fn mark(&mut self, what: &'static str) {
        let now = Instant::now();
        self.phases.push((what, now - self.last));
        self.last = now;
    }
}

/// A running VM.
pub struct VmHandle {
    vm: Arc<dyn Vm>,
    mem: GuestMemoryMmap,
    ctl: Arc<VcpuControl>,
    exit: Arc<ExitLatch>,
    serial: Arc<Mutex<SerialDevice>>,
    ged: Arc<Mutex<Ged>>,
    slots: Vec<MemorySlot>,
    devices: Vec<NamedDevice>,
    virtio: Vec<Arc<Mutex<MmioTransport>>>,
    cfg_summary: snapshot::ConfigSummary,
    started: Instant,
    _io_bus: Bus,
    _mmio_bus: Bus,
    _eventfds: Vec<Arc<EventFd>>,
    // Declared last: dropped after every device and thread that uses guest memory.
    _ram: Arc<memory::GuestRam>,
}

impl VmHandle {
    /// Stops all vCPUs at their next exit; returns when they are all parked.
    pub fn pause(&self) {
        self.ctl.pause();
    }

    /// Resumes paused vCPUs (and device workers a snapshot stopped). A device that cannot resume ends
    /// the VM with an error.
    pub fn resume(&self) {
        for (name, d) in &self.devices {
            if let Err(e) = lock(d).resume() {
                self.exit.set(ExitReason::Error(format!("device {name}: {e}")));
            }
        }
        self.ctl.resume();
    }

    /// Whether the VM is paused.
    pub fn is_paused(&self) -> bool {
        self.ctl.is_paused()
    }

    /// Why the VM stopped, if it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.get()
    }

    /// Asks the VM to stop now (a forced stop, like pulling the plug).
    pub fn request_stop(&self) {
        self.exit.set(ExitReason::Stopped);
    }

    /// Presses the ACPI power button: the Generic Event Device latches the event and interrupts the
    /// guest, whose `_EVT` method notifies `\_SB.PWRB`. A guest that handles it powers off (the VM then
    /// ends with [`ExitReason::PowerOff`]); one that ignores it keeps running. Works while paused: the
    /// guest sees the press when it resumes.
    pub fn power_button(&self) -> Result<(), VmmError> {
        if let Some(reason) = self.exit.get() {
            return Err(VmmError::Ended { op: "press the power button", reason });
        }
        lock(&self.ged).notify(devices::ged::GED_EVENT_POWER_BUTTON)?;
        Ok(())
    }

    /// A hard reset, like the reset button: the VM ends at once with [`ExitReason::Reset`], as when the
    /// guest reboots, without warning the guest. The microVM does not restart itself in place
    /// (re-loading the kernel and resetting every vCPU and device); whoever runs it starts a new one.
    pub fn request_reset(&self) {
        self.exit.set(ExitReason::Reset);
    }

    /// Blocks until the guest powers off, resets, fails or a stop is requested; then ends the vCPU
    /// threads and returns the reason.
    pub fn wait(&self) -> ExitReason {
        let r = self.exit.wait();
        self.ctl.stop();
        r
    }

    /// Bytes typed on the console, for the guest to read from the serial port.
    pub fn console_input(&self, bytes: &[u8]) -> usize {
        lock(&self.serial).enqueue_input(bytes)
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Time from [`MicroVm::start`] to vCPU 0's first exit to the VMM.
    pub fn first_exit_after_start(&self) -> Option<std::time::Duration> {
        self.ctl.first_exit().map(|t| t.saturating_duration_since(self.started))
    }

    /// The instant vCPU 0 first exited to the VMM.
    pub fn first_exit(&self) -> Option<Instant> {
        self.ctl.first_exit()
    }

    /// Guest-physical addresses of pages written since the last call (needs `track_dirty_pages`).
    pub fn dirty_pages(&self) -> Result<Vec<u64>, VmmError> {
        let mut pages = Vec::new();
        for s in &self.slots {
            if !s.log_dirty {
                return Err(VmmError::Config("dirty-page tracking was not enabled for this VM".into()));
            }
            let bitmap = self.vm.get_dirty_log(s.slot, s.size)?;
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = bits.trailing_zeros() as u64;
                    pages.push(s.guest_addr + ((w as u64) * 64 + b) * 4096);
                    bits &= bits - 1;
                }
            }
        }
        Ok(pages)
    }
}

impl Drop for VmHandle {
    fn drop(&mut self) {
        self.exit.set(ExitReason::Stopped);
        self.ctl.stop();
    }
}

#[cfg(test)]
mod nic_tests {
    use super::*;
    use crate::machine::InterfaceSpec;
    use crate::net::{MacAddr, NetError, NetPair, Offloads};

    /// A pair end that claims to be a tap (offers a descriptor to vhost-net).
    struct FakeTap(NetPair);
    impl NetBackend for FakeTap {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn send(&self, frame: &[u8]) -> Result<(), NetError> {
            self.0.send(frame)
        }
        fn recv(&self, buf: &mut [u8]) -> Result<Option<usize>, NetError> {
            self.0.recv(buf)
        }
        fn fd(&self) -> std::os::fd::RawFd {
            self.0.fd()
        }
        fn set_offloads(&self, o: Offloads) -> Result<(), NetError> {
            self.0.set_offloads(o)
        }
        fn vhost_fd(&self) -> Option<std::os::fd::RawFd> {
            Some(self.0.fd())
        }
    }

    fn nic(vhost: VhostMode, tap: bool) -> NicConfig {
        let (a, _b) = NetPair::new("a", "b").unwrap();
        let backend: Arc<dyn NetBackend> = if tap { Arc::new(FakeTap(a)) } else { Arc::new(a) };
        NicConfig { backend, config: NetConfig { mac: MacAddr([2, 0, 0, 0, 0, 1]), mtu: 1500 }, vhost }
    }

    #[test]
    fn vhost_modes_choose_the_data_path_or_refuse_clearly() {
        // Not a tap: auto and off take the userspace path, on is refused naming the NIC.
        assert!(!net_device(nic(VhostMode::Auto, false)).unwrap().vhost_active());
        assert!(net_device(nic(VhostMode::Off, false)).is_ok());
        let e = net_device(nic(VhostMode::On, false)).err().unwrap().to_string();
        assert!(e.contains("NIC a: vhost on needs a tap backend"), "{e}");
        // A tap without /dev/vhost-net: auto falls back (a warning), on does not start.
        if !std::path::Path::new("/dev/vhost-net").exists() {
            assert!(net_device(nic(VhostMode::Auto, true)).is_ok());
            let e = net_device(nic(VhostMode::On, true)).err().unwrap().to_string();
            assert!(e.contains("cannot open /dev/vhost-net"), "{e}");
        }
    }

    #[test]
    fn the_spec_knob_defaults_to_auto_and_refuses_unknown_values() {
        let base = r#"{"name": "n", "mac": "02:00:00:00:00:01""#;
        let parse = |extra: &str| serde_json::from_str::<InterfaceSpec>(&format!("{base}{extra}}}"));
        assert_eq!(parse("").unwrap().vhost, VhostMode::Auto);
        assert_eq!(parse(r#", "vhost": "on""#).unwrap().vhost, VhostMode::On);
        assert_eq!(parse(r#", "vhost": "off""#).unwrap().vhost, VhostMode::Off);
        assert!(parse(r#", "vhost": "maybe""#).is_err());
    }
}
