//! The machine-backend seam: what the lifecycle needs from a running machine, whichever engine runs
//! it. Two engines implement it: the native microVM ([`native`]) for kernel-boot microVMs on hardware
//! KVM, and QEMU driven over QMP (`qemu`, for firmware-booted disks, Windows-ready machines, VNC, and
//! software emulation where KVM is unusable).
//!
//! A [`MachineSpec`] is a *resolved* VM: instancetypes and preferences applied, volumes turned into
//! files, everything a backend needs and nothing Kubernetes-specific.

pub mod accel;
mod interfaces;
pub mod migrate;
pub mod native;
pub mod qemu;
pub mod remote;
pub mod resolve;
pub mod supervisor;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::block::BlockBackend;
pub use interfaces::{InterfaceBackend, InterfaceSpec, NetOpener, NicModel};

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase", deny_unknown_fields)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskBus {
    /// virtio-blk.
    Virtio,
    /// AHCI (SATA).
    Sata,
    /// virtio-scsi.
    Scsi,
}

/// Image format of a disk file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskFormat {
    /// Raw.
    Raw,
    /// qcow2.
    Qcow2,
}

/// One disk or CD-ROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
    #[serde(default)]
    pub cdrom: bool,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// Boot priority (1 first), if any.
    #[serde(default)]
    pub boot_order: Option<u32>,
    /// Serial number the guest sees.
    #[serde(default)]
    pub serial: Option<String>,
}

/// vCPU topology and model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuSpec {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
    /// CPU model (`host-passthrough`, `host-model` or a named model); `None` for the backend's default.
    #[serde(default)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase", deny_unknown_fields)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClockSpec {
    /// The RTC runs in local time (Windows) rather than UTC.
    #[serde(default)]
    pub localtime: bool,
    /// Timers asked for: (name, present), e.g. ("hpet", false), ("hypervclock", true).
    #[serde(default)]
    pub timers: Vec<(String, bool)>,
    /// Lost-tick policies asked for: (timer, policy), e.g. ("rtc", "catchup"), ("pit", "delay").
    #[serde(default)]
    pub tick_policies: Vec<(String, String)>,
}

/// A resolved virtual machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachineSpec {
    /// Name (for logs, ids, sockets).
    pub name: String,
    /// vCPUs.
    #[serde(default)]
    pub cpu: CpuSpec,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Boot method.
    pub boot: BootSpec,
    /// Disks in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// ACPI present (KubeVirt's `features.acpi`).
    #[serde(default = "yes")]
    pub acpi: bool,
    /// System management mode (needed by Secure Boot).
    #[serde(default)]
    pub smm: bool,
    /// Hyper-V enlightenments.
    #[serde(default)]
    pub hyperv: Vec<HypervFeature>,
    /// Clock.
    #[serde(default)]
    pub clock: ClockSpec,
    /// A TPM 2.0, persistent across boots or not.
    #[serde(default)]
    pub tpm: Option<TpmSpec>,
    /// A VNC display.
    #[serde(default)]
    pub graphics: bool,
    /// Machine type (e.g. `q35`); `None` for the backend's default.
    #[serde(default)]
    pub machine_type: Option<String>,
    /// Where the machine may run.
    #[serde(default)]
    pub accel: accel::AccelPolicy,
    /// NICs in the order the guest sees them.
    #[serde(default)]
    pub interfaces: Vec<InterfaceSpec>,
    /// SSH keys and passwords the guest agent keeps in the guest (`accessCredentials` with
    /// `qemuGuestAgent` propagation). The spec file holding them is the launcher's alone (0600).
    #[serde(default, skip_serializing_if = "crate::agent::GuestCredentials::is_empty")]
    pub agent_credentials: crate::agent::GuestCredentials,
}

fn yes() -> bool {
    true
}

/// A TPM 2.0 device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TpmSpec {
    /// Keep the TPM's state between boots (in `state_dir`).
    pub persistent: bool,
    /// Where swtpm keeps its state.
    pub state_dir: PathBuf,
}

/// Where a running machine is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// A failed step of a machine's start (`interface eth0`, `incoming migration`) and its error: the
/// source of [`MachineError::Start`] when the step is worth naming.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct StartStep {
    /// What was being done.
    pub step: String,
    /// The error.
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl StartStep {
    /// `step` failed with `source`, boxed for [`MachineError::Start`].
    pub fn boxed(
        step: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(Self { step: step.into(), source: source.into() })
    }
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
    #[error("machine {machine}: cannot start: {source}")]
    Start {
        /// Machine name.
        machine: String,
        /// Why (the backend's error; a [`StartStep`] when it says which step failed).
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A control operation failed.
    #[error("machine {machine}: {op} failed: {source}")]
    Control {
        /// Machine name.
        machine: String,
        /// The operation.
        op: &'static str,
        /// Why: the engine's error (QMP, the VMM, the launcher's socket), or a reason.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A guest-agent operation with no agent to do it (none connected, or this machine has no
    /// agent channel), or one the agent refused.
    #[error("machine {machine}: {op} through the guest agent: {why}")]
    Agent {
        /// Machine name (empty when the caller does not know it).
        machine: String,
        /// The operation.
        op: &'static str,
        /// Why it did not happen.
        why: String,
        /// No agent was there to ask (rather than an agent that refused or failed).
        absent: bool,
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

/// Why a backend cannot run a spec here ([`MachineBackend::supports`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// The host lacks what the backend needs (hardware KVM, a program, a firmware file).
    #[error("{0}")]
    Host(String),
    /// A part of the spec (boot, a disk, an interface, a device) the backend has no model for.
    #[error("{part}: {reason}")]
    Spec {
        /// The part, e.g. `disk rootdisk`, `boot`.
        part: String,
        /// What the backend lacks for it.
        reason: String,
    },
}

impl Unsupported {
    /// A part of the spec the backend cannot run.
    pub fn spec(part: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Spec { part: part.into(), reason: reason.into() }
    }
}

/// Where console output goes.
pub type ConsoleSink = Box<dyn std::io::Write + Send>;

/// Opens a disk for a backend that serves disks itself (the native VMM); the storage layer provides
/// it (raw and qcow2: `virt_storage::format::disk_opener`), so `virt-core` does not depend on
/// `virt-storage`.
pub type DiskOpener = Arc<dyn Fn(&DiskSpec) -> Result<Arc<dyn BlockBackend>, DiskOpenError> + Send + Sync>;

/// A [`DiskOpener`] could not open a disk.
#[derive(Debug, thiserror::Error)]
#[error("disk {disk} ({}): {source}", path.display())]
pub struct DiskOpenError {
    /// The disk's name in the spec.
    pub disk: String,
    /// Its image file.
    pub path: PathBuf,
    /// What the storage layer said.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// An engine that runs machines.
pub trait MachineBackend: Send + Sync {
    /// Short name ("native", "qemu").
    fn name(&self) -> &'static str;
    /// Whether this backend can run `spec` here, and if not, why.
    fn supports(&self, spec: &MachineSpec) -> Result<(), Unsupported>;
    /// Starts a machine; its serial console goes to `console`.
    fn start(&self, spec: &MachineSpec, console: ConsoleSink) -> Result<Box<dyn Machine>, MachineError>;
    /// Starts `spec`'s machine from a migration arriving on `stream` (the source runs
    /// [`Machine::migrate_out`] on its other end); returns it running once the source has stopped
    /// for good. On failure no machine runs here and the source keeps running.
    fn start_incoming(
        &self,
        spec: &MachineSpec,
        _console: ConsoleSink,
        _stream: &mut std::os::unix::net::UnixStream,
    ) -> Result<Box<dyn Machine>, MachineError> {
        Err(MachineError::Unsupported {
            machine: spec.name.clone(),
            backend: self.name(),
            what: "incoming live migration".into(),
        })
    }
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
    /// The unix socket its VNC display listens on, if it has one (a path the host sees: a
    /// confined launcher's run directory is mounted at the same path).
    fn vnc_socket(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// Which accelerator runs it, and why (shown in the VMI's status).
    fn accelerator(&self) -> accel::AccelDecision;
    /// The host end of the guest agent's channel (`org.qemu.guest_agent.0`), for the launcher's
    /// [`crate::agent::Agent`]; `None` when the machine has none. Taken once.
    fn take_agent_channel(&self) -> Option<std::os::unix::net::UnixStream> {
        None
    }
    /// What the guest agent reported last; `None` when nothing watches an agent for this machine.
    fn guest_agent(&self) -> Option<crate::agent::AgentReport> {
        None
    }
    /// Asks the guest agent to power off, reboot or halt the guest.
    fn guest_shutdown(&self, _mode: crate::agent::ShutdownMode) -> Result<(), MachineError> {
        Err(no_agent("guest-shutdown"))
    }
    /// Replaces the SSH keys and passwords the guest agent keeps in the guest (`qemuGuestAgent`
    /// access credentials whose Secret changed); written at the agent's next poll.
    fn guest_set_credentials(
        &self,
        _credentials: crate::agent::GuestCredentials,
    ) -> Result<(), MachineError> {
        Err(no_agent("guest-ssh-add-authorized-keys"))
    }
    /// Freezes (`true`) or thaws the guest's file systems through its agent; returns the freeze
    /// status after it (`frozen`, `thawed`).
    fn guest_fs_freeze(&self, freeze: bool) -> Result<String, MachineError> {
        Err(no_agent(if freeze { "guest-fsfreeze-freeze" } else { "guest-fsfreeze-thaw" }))
    }
    /// Moves the running machine to the destination on the other end of `stream`
    /// ([`MachineBackend::start_incoming`]). On success it has ended here (`Stopped`) and runs
    /// there; on any failure before the destination was ready it runs here as before.
    fn migrate_out(
        &self,
        _stream: std::os::unix::net::UnixStream,
        _opts: &migrate::MigrateOptions,
    ) -> Result<migrate::MigrationReport, MachineError> {
        Err(MachineError::Unsupported {
            machine: "this machine".into(),
            backend: "its",
            what: "live migration".into(),
        })
    }
    /// Abandons a running [`Machine::migrate_out`] if the destination is not ready yet: the
    /// migration fails and the machine runs on here. Fine when no migration runs.
    fn migrate_cancel(&self) -> Result<(), MachineError> {
        Ok(())
    }
}

/// The error of a guest-agent operation on a machine without an agent.
pub fn no_agent(op: &'static str) -> MachineError {
    MachineError::Agent {
        machine: String::new(),
        op,
        why: "the machine has no guest agent".into(),
        absent: true,
    }
}

/// Which engine runs a machine (the launcher's `--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendChoice {
    /// The native microVM when it can run the spec (kernel boot on hardware KVM), else QEMU.
    #[default]
    Auto,
    /// The native microVM, or an error.
    Native,
    /// QEMU, or an error.
    Qemu,
}

/// A backend name [`BackendChoice`] does not know (the launcher's `--backend`); names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {given:?} (expected auto, native or qemu)")]
pub struct UnknownBackend {
    /// The name given.
    pub given: String,
}

impl std::str::FromStr for BackendChoice {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> Result<Self, UnknownBackend> {
        match s {
            "auto" => Ok(Self::Auto),
            "native" => Ok(Self::Native),
            "qemu" => Ok(Self::Qemu),
            other => Err(UnknownBackend { given: other.to_string() }),
        }
    }
}

impl std::fmt::Display for BackendChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Qemu => "qemu",
        })
    }
}

/// Why no backend was selected for a machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The backend asked for cannot run the spec.
    #[error("machine {machine}: the {backend} backend was asked for but cannot run it: {why}")]
    Forced {
        /// Machine name.
        machine: String,
        /// The backend asked for.
        backend: &'static str,
        /// Why it cannot.
        why: Unsupported,
    },
    /// Neither backend can run the spec.
    #[error("machine {machine}: no backend can run it: native: {native}; qemu: {qemu}")]
    Neither {
        /// Machine name.
        machine: String,
        /// Why the native backend cannot.
        native: Unsupported,
        /// Why QEMU cannot.
        qemu: Unsupported,
    },
}

/// Picks the backend that runs `spec`. [`BackendChoice::Auto`] takes `native` when it supports the
/// spec (a kernel boot on hardware KVM, virtio disks only, no TPM/graphics/Hyper-V), else `qemu` when
/// that supports it; a forced choice that does not support the spec is an error saying why.
pub fn select_backend<'a>(
    spec: &MachineSpec,
    choice: BackendChoice,
    native: &'a dyn MachineBackend,
    qemu: &'a dyn MachineBackend,
) -> Result<&'a dyn MachineBackend, SelectError> {
    let forced = |b: &'a dyn MachineBackend| match b.supports(spec) {
        Ok(()) => Ok(b),
        Err(why) => Err(SelectError::Forced { machine: spec.name.clone(), backend: b.name(), why }),
    };
    match choice {
        BackendChoice::Native => forced(native),
        BackendChoice::Qemu => forced(qemu),
        BackendChoice::Auto => match native.supports(spec) {
            Ok(()) => Ok(native),
            Err(n) => match qemu.supports(spec) {
                Ok(()) => Ok(qemu),
                Err(q) => Err(SelectError::Neither { machine: spec.name.clone(), native: n, qemu: q }),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_choice_parses_and_an_unknown_name_is_named() {
        assert_eq!("qemu".parse::<BackendChoice>(), Ok(BackendChoice::Qemu));
        assert_eq!("auto".parse::<BackendChoice>(), Ok(BackendChoice::Auto));
        let e = "kvmtool".parse::<BackendChoice>().unwrap_err();
        assert_eq!(e, UnknownBackend { given: "kvmtool".into() });
        assert_eq!(e.to_string(), "unknown backend \"kvmtool\" (expected auto, native or qemu)");
    }

    /// A backend that supports what `ok` says and starts nothing.
    struct Fake {
        name: &'static str,
        ok: fn(&MachineSpec) -> Result<(), Unsupported>,
    }

    impl MachineBackend for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn supports(&self, spec: &MachineSpec) -> Result<(), Unsupported> {
            (self.ok)(spec)
        }
        fn start(&self, spec: &MachineSpec, _c: ConsoleSink) -> Result<Box<dyn Machine>, MachineError> {
            Err(MachineError::Start { machine: spec.name.clone(), source: "fake".into() })
        }
    }

    fn kernel_only(spec: &MachineSpec) -> Result<(), Unsupported> {
        match spec.boot {
            BootSpec::Kernel { .. } => Ok(()),
            _ => Err(Unsupported::spec("boot", "the native VMM boots kernels only")),
        }
    }

    fn spec(boot: BootSpec) -> MachineSpec {
        MachineSpec {
            name: "vm1".into(),
            cpu: CpuSpec::default(),
            memory_mib: 128,
            boot,
            disks: vec![],
            acpi: true,
            smm: false,
            hyperv: vec![],
            clock: ClockSpec::default(),
            tpm: None,
            graphics: false,
            machine_type: None,
            accel: accel::AccelPolicy::Auto,
            interfaces: Vec::new(),
            agent_credentials: Default::default(),
        }
    }

    fn kernel() -> BootSpec {
        BootSpec::Kernel { kernel: "/k".into(), initramfs: None, cmdline: String::new() }
    }

    #[test]
    fn auto_prefers_native_and_falls_back_to_qemu() {
        let native = Fake { name: "native", ok: kernel_only };
        let qemu = Fake { name: "qemu", ok: |_| Ok(()) };
        let pick = |s: &MachineSpec, c| select_backend(s, c, &native, &qemu).map(|b| b.name());
        assert_eq!(pick(&spec(kernel()), BackendChoice::Auto), Ok("native"));
        assert_eq!(pick(&spec(BootSpec::Bios), BackendChoice::Auto), Ok("qemu"));
        assert_eq!(pick(&spec(kernel()), BackendChoice::Qemu), Ok("qemu"));
        assert_eq!(pick(&spec(kernel()), BackendChoice::Native), Ok("native"));
    }

    #[test]
    fn no_kvm_means_qemu_and_a_forced_native_says_why() {
        let native = Fake {
            name: "native",
            ok: |_| Err(Unsupported::Host("hardware KVM is required: no vmx/svm".into())),
        };
        let qemu = Fake { name: "qemu", ok: |_| Ok(()) };
        let s = spec(kernel());
        assert_eq!(select_backend(&s, BackendChoice::Auto, &native, &qemu).map(|b| b.name()), Ok("qemu"));
        let e = select_backend(&s, BackendChoice::Native, &native, &qemu).map(|b| b.name()).unwrap_err();
        assert!(matches!(e, SelectError::Forced { backend: "native", .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("vm1") && msg.contains("hardware KVM is required"), "{msg}");
    }

    #[test]
    fn neither_backend_names_both_reasons() {
        let native = Fake { name: "native", ok: kernel_only };
        let qemu =
            Fake { name: "qemu", ok: |_| Err(Unsupported::Host("qemu-system-x86_64 not found".into())) };
        let s = spec(BootSpec::Bios);
        let e = select_backend(&s, BackendChoice::Auto, &native, &qemu).map(|b| b.name()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("kernels only") && msg.contains("not found"), "{msg}");
        let e = select_backend(&s, BackendChoice::Qemu, &native, &qemu).map(|b| b.name()).unwrap_err();
        assert!(e.to_string().contains("qemu backend was asked for"), "{e}");
        assert_eq!("qemu".parse::<BackendChoice>(), Ok(BackendChoice::Qemu));
        assert!("kvm".parse::<BackendChoice>().unwrap_err().to_string().contains("\"kvm\""));
    }

    #[test]
    fn specs_round_trip_through_json_and_reject_unknown_fields() {
        let mut s = spec(BootSpec::Efi { secure_boot: true, vars: Some("/v.fd".into()) });
        s.disks.push(DiskSpec {
            name: "root".into(),
            path: "/d.qcow2".into(),
            format: DiskFormat::Qcow2,
            bus: DiskBus::Sata,
            cdrom: false,
            read_only: false,
            boot_order: Some(1),
            serial: None,
        });
        s.hyperv = vec![HypervFeature::Flag("relaxed".into()), HypervFeature::Stimer { direct: true }];
        s.clock.timers.push(("hpet".into(), false));
        s.tpm = Some(TpmSpec { persistent: true, state_dir: "/tpm".into() });
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains("\"memoryMib\":128") && j.contains("\"secureBoot\":true"), "{j}");
        assert_eq!(serde_json::from_str::<MachineSpec>(&j).unwrap(), s);
        let bad = j.replacen("\"memoryMib\"", "\"memoryMiB\"", 1);
        let e = serde_json::from_str::<MachineSpec>(&bad).unwrap_err().to_string();
        assert!(e.contains("memoryMiB"), "{e}");
        let bad = j.replacen("\"secureBoot\"", "\"secure\"", 1);
        assert!(serde_json::from_str::<MachineSpec>(&bad).is_err());
        // A minimal hand-written spec: defaults fill the rest (ACPI on).
        let min = r#"{"name":"m","memoryMib":64,"boot":{"Kernel":{"kernel":"/k","cmdline":""}}}"#;
        let m: MachineSpec = serde_json::from_str(min).unwrap();
        assert!(m.acpi && m.disks.is_empty() && m.cpu.count() == 1, "{m:?}");
        for st in [MachineStatus::Running, MachineStatus::Stopped(MachineExit::Failed("x".into()))] {
            let j = serde_json::to_string(&st).unwrap();
            assert_eq!(serde_json::from_str::<MachineStatus>(&j).unwrap(), st);
        }
    }
}
