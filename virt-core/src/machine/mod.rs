//! The machine-backend seam: what the lifecycle needs from a running machine, whichever engine runs
//! it. Two engines implement it: the native microVM ([`native`]) for kernel-boot microVMs on hardware
//! KVM, and QEMU driven over QMP (`qemu`, for firmware-booted disks, Windows-ready machines, VNC, and
//! software emulation where KVM is unusable).
//!
//! A [`MachineSpec`] is a *resolved* VM: instancetypes and preferences applied, volumes turned into
//! files, everything a backend needs and nothing Kubernetes-specific.

pub mod accel;
pub mod native;
pub mod qemu;
pub mod resolve;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::block::BlockBackend;

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootSpec {
    /// Direct kernel boot (KubeVirt's `firmware.kernelBoot`).
    Kernel {
        /// Kernel (bzImage or ELF vmlinux).
        kernel: PathBuf,
        /// Optional initramfs.
        initramfs: Option<PathBuf>,
        /// Kernel command line.
        cmdline: String,
    },
    /// Legacy BIOS (SeaBIOS) boots the disks.
    Bios,
    /// UEFI (OVMF) boots the disks.
    Efi {
        /// Use the Secure Boot OVMF build with Microsoft keys enrolled.
        secure_boot: bool,
        /// Where this VM's EFI variables persist; `None` for a fresh copy per boot.
        vars: Option<PathBuf>,
    },
}

/// Bus a disk sits on (KubeVirt's `disk.bus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk.
    Virtio,
    /// AHCI (SATA).
    Sata,
    /// virtio-scsi.
    Scsi,
}

/// Image format of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Raw.
    Raw,
    /// qcow2.
    Qcow2,
}

/// One disk or CD-ROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    /// Name (KubeVirt's disk name), used for ids and serials.
    pub name: String,
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// Bus.
    pub bus: DiskBus,
    /// A CD-ROM rather than a disk (read-only by nature).
    pub cdrom: bool,
    /// Refuse writes.
    pub read_only: bool,
    /// Boot priority (1 first), if any.
    pub boot_order: Option<u32>,
    /// Serial number the guest sees.
    pub serial: Option<String>,
}

/// vCPU topology and model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuSpec {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// CPU model (`host-passthrough`, `host-model` or a named model); `None` for the backend's default.
    pub model: Option<String>,
}

impl CpuSpec {
    /// Total vCPUs.
    pub fn count(&self) -> u32 {
        self.sockets.saturating_mul(self.cores).saturating_mul(self.threads)
    }
}

impl Default for CpuSpec {
    fn default() -> Self {
        Self { sockets: 1, cores: 1, threads: 1, model: None }
    }
}

/// A Hyper-V enlightenment (KubeVirt's `features.hyperv.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HypervFeature {
    /// A flag such as `relaxed`, `vapic`, `vpindex`, `runtime`, `synic`, `reset`, `frequencies`,
    /// `reenlightenment`, `tlbflush`, `ipi`, `evmcs`.
    Flag(String),
    /// Spinlock retries.
    Spinlocks(u32),
    /// `stimer`, optionally with direct mode.
    Stimer {
        /// Direct mode.
        direct: bool,
    },
    /// The hypervisor vendor id string.
    VendorId(String),
}

/// Guest clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClockSpec {
    /// The RTC runs in local time (Windows) rather than UTC.
    pub localtime: bool,
    /// Timers asked for: (name, present), e.g. ("hpet", false), ("hypervclock", true).
    pub timers: Vec<(String, bool)>,
    /// Lost-tick policies asked for: (timer, policy), e.g. ("rtc", "catchup"), ("pit", "delay").
    pub tick_policies: Vec<(String, String)>,
}

/// A resolved virtual machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// Name (for logs, ids, sockets).
    pub name: String,
    /// vCPUs.
    pub cpu: CpuSpec,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Boot method.
    pub boot: BootSpec,
    /// Disks in the order the guest sees them.
    pub disks: Vec<DiskSpec>,
    /// ACPI present (KubeVirt's `features.acpi`).
    pub acpi: bool,
    /// System management mode (needed by Secure Boot).
    pub smm: bool,
    /// Hyper-V enlightenments.
    pub hyperv: Vec<HypervFeature>,
    /// Clock.
    pub clock: ClockSpec,
    /// A TPM 2.0, persistent across boots or not.
    pub tpm: Option<TpmSpec>,
    /// A VNC display.
    pub graphics: bool,
    /// Machine type (e.g. `q35`); `None` for the backend's default.
    pub machine_type: Option<String>,
    /// Where the machine may run.
    pub accel: accel::AccelPolicy,
}

/// A TPM 2.0 device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSpec {
    /// Keep the TPM's state between boots (in `state_dir`).
    pub persistent: bool,
    /// Where swtpm keeps its state.
    pub state_dir: PathBuf,
}

/// Where a running machine is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineStatus {
    /// Being set up.
    Starting,
    /// Running guest code.
    Running,
    /// Paused (vCPUs stopped).
    Paused,
    /// Ended; see the exit.
    Stopped(MachineExit),
}

/// How a machine ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineExit {
    /// The guest powered off.
    PowerOff,
    /// The guest rebooted (the machine ends; the lifecycle decides whether to start it again).
    Reboot,
    /// Stopped by the host (forced).
    Stopped,
    /// The machine failed.
    Failed(String),
}

/// Something that happened to a machine, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineEvent {
    /// The guest started running.
    Started,
    /// The machine paused.
    Paused,
    /// The machine resumed.
    Resumed,
    /// The guest was asked to power down (ACPI power button).
    PowerDownRequested,
    /// The machine ended.
    Ended(MachineExit),
}

/// Errors of machine backends; each names the machine and what failed.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The spec asks for something this backend cannot do.
    #[error("machine {machine}: {what} is not supported by the {backend} backend")]
    Unsupported {
        /// Machine name.
        machine: String,
        /// Backend name.
        backend: &'static str,
        /// What was asked.
        what: String,
    },
    /// Starting failed.
    #[error("machine {machine}: cannot start: {msg}")]
    Start {
        /// Machine name.
        machine: String,
        /// Why.
        msg: String,
    },
    /// A control operation failed.
    #[error("machine {machine}: {op} failed: {msg}")]
    Control {
        /// Machine name.
        machine: String,
        /// The operation.
        op: &'static str,
        /// Why.
        msg: String,
    },
    /// The operation does not apply in the machine's state (e.g. resume while running).
    #[error("machine {machine}: cannot {op} while {state:?}")]
    State {
        /// Machine name.
        machine: String,
        /// The operation.
        op: &'static str,
        /// The state it was in.
        state: MachineStatus,
    },
}

/// Where console output goes.
pub type ConsoleSink = Box<dyn std::io::Write + Send>;

/// Opens a disk for a backend that serves disks itself (the native VMM); the storage layer provides
/// it (raw and qcow2), so `virt-core` does not depend on `virt-storage`.
pub type DiskOpener = Arc<dyn Fn(&DiskSpec) -> Result<Arc<dyn BlockBackend>, String> + Send + Sync>;

/// An engine that runs machines.
pub trait MachineBackend: Send + Sync {
    /// Short name ("native", "qemu").
    fn name(&self) -> &'static str;
    /// Whether this backend can run `spec` here, and if not, why.
    fn supports(&self, spec: &MachineSpec) -> Result<(), String>;
    /// Starts a machine; its serial console goes to `console`.
    fn start(&self, spec: &MachineSpec, console: ConsoleSink) -> Result<Box<dyn Machine>, MachineError>;
}

/// A running machine.
pub trait Machine: Send + Sync {
    /// Current status.
    fn status(&self) -> MachineStatus;
    /// Stops the vCPUs.
    fn pause(&self) -> Result<(), MachineError>;
    /// Lets the vCPUs run again.
    fn resume(&self) -> Result<(), MachineError>;
    /// Asks the guest to power off (ACPI power button); the machine ends when the guest complies.
    fn power_down(&self) -> Result<(), MachineError>;
    /// Resets the machine (a hard reset, like the reset button).
    fn reset(&self) -> Result<(), MachineError>;
    /// Ends the machine now (pulls the plug).
    fn stop(&self) -> Result<(), MachineError>;
    /// Bytes typed on the serial console.
    fn console_input(&self, bytes: &[u8]) -> Result<(), MachineError>;
    /// Waits up to `timeout` (forever with `None`) for the machine to end.
    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit>;
    /// The next event, waiting up to `timeout`.
    fn next_event(&self, timeout: Duration) -> Option<MachineEvent>;
    /// Where its VNC display listens, if it has one.
    fn vnc_address(&self) -> Option<std::net::SocketAddr> {
        None
    }
    /// Which accelerator runs it, and why (shown in the VMI's status).
    fn accelerator(&self) -> accel::AccelDecision;
}
