//! `spec.domain.devices`: disks, interfaces (in [`super::network`]), TPM, RNG, inputs, GPUs and
//! host devices, with KubeVirt's field names.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::domain::{Empty, FeatureState};
use super::network::Interface;

/// `Devices`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Devices {
    /// Legacy virtio 0.9 devices for old guests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_virtio_transitional: Option<bool>,
    /// Disable disk hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_hotplug: Option<bool>,
    /// Disks, CD-ROMs and LUNs, each backed by the volume of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// A watchdog device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog: Option<Watchdog>,
    /// Network interfaces, each connected to the network of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Input devices (tablet, keyboard).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    /// Add a pod network interface when none is listed (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_pod_interface: Option<bool>,
    /// Add a graphics device (default true; VNC needs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_graphics_device: Option<bool>,
    /// Add the serial console (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_serial_console: Option<bool>,
    /// Log the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_serial_console: Option<bool>,
    /// Add a memory balloon (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_mem_balloon: Option<bool>,
    /// Add an input device (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoattach_input_device: Option<bool>,
    /// Give the VM a VSOCK CID (default false).
    #[serde(rename = "autoattachVSOCK", default, skip_serializing_if = "Option::is_none")]
    pub autoattach_vsock: Option<bool>,
    /// A virtio RNG fed by the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<Empty>,
    /// Multi-queue virtio block devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_multi_queue: Option<bool>,
    /// Multi-queue virtio network interfaces.
    #[serde(rename = "networkInterfaceMultiqueue", default, skip_serializing_if = "Option::is_none")]
    pub network_interface_multi_queue: Option<bool>,
    /// GPUs passed through from the host (not supported on this node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// A virtio-serial channel exposing host metrics (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downward_metrics: Option<Empty>,
    /// Panic notifier devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub panic_devices: Vec<PanicDevice>,
    /// Shared filesystems (virtiofs; not supported on this node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<Filesystem>,
    /// Host PCI or USB devices passed through (not supported on this node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<HostDevice>,
    /// USB redirection from a client (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_passthrough: Option<Empty>,
    /// An emulated sound card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sound: Option<Sound>,
    /// An emulated TPM 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<Tpm>,
    /// The video device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<Video>,
}

/// `Disk`: how a volume appears to the guest. At most one of `disk`, `lun` and `cdrom`; none
/// means a `disk`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    /// Name, also the name of the backing volume.
    pub name: String,
    /// A disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskTarget>,
    /// A SCSI LUN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<LunTarget>,
    /// A CD-ROM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdrom: Option<CdromTarget>,
    /// Boot order (> 0, unique across disks and interfaces; lower first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_order: Option<u32>,
    /// Serial number shown to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// An IOThread of its own.
    #[serde(rename = "dedicatedIOThread", default, skip_serializing_if = "Option::is_none")]
    pub dedicated_io_thread: Option<bool>,
    /// Host cache mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<DiskCache>,
    /// QEMU I/O mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io: Option<DiskIo>,
    /// Tag for config-drive device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Logical and physical block sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<BlockSize>,
    /// Allow writers from several VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shareable: Option<bool>,
    /// `stop`, `ignore`, `report` or `enospace` on I/O errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_policy: Option<DiskErrorPolicy>,
    /// Changed-block tracking for incremental backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<bool>,
}

impl Disk {
    /// The bus as written, whichever of `disk`, `lun` and `cdrom` carries it.
    pub fn bus(&self) -> Option<DiskBus> {
        self.disk
            .as_ref()
            .and_then(|d| d.bus)
            .or(self.lun.as_ref().and_then(|d| d.bus))
            .or(self.cdrom.as_ref().and_then(|d| d.bus))
    }
}

/// `DiskBus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk (the default for disks).
    Virtio,
    /// AHCI SATA (the default for CD-ROMs).
    Sata,
    /// virtio-scsi.
    Scsi,
    /// USB mass storage.
    Usb,
}

impl DiskBus {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::Sata => "sata",
            Self::Scsi => "scsi",
            Self::Usb => "usb",
        }
    }
}

/// `DiskTarget`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DiskTarget {
    /// Bus (virtio unless a preference says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only.
    #[serde(rename = "readonly", default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Guest PCI address (`0000:81:01.10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_address: Option<String>,
}

/// `LunTarget`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LunTarget {
    /// Bus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only.
    #[serde(rename = "readonly", default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// SCSI persistent reservations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<bool>,
}

/// `CDRomTarget`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CdromTarget {
    /// Bus (sata unless a preference says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Read-only (default true).
    #[serde(rename = "readonly", default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// `open` or `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tray: Option<TrayState>,
}

/// `TrayState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrayState {
    /// Open.
    Open,
    /// Closed.
    Closed,
}

/// `DriverCache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    /// No host page cache (O_DIRECT).
    None,
    /// Host cache, writes go through.
    Writethrough,
    /// Host cache, writes buffered.
    Writeback,
}

/// `DriverIO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskIo {
    /// Linux native AIO.
    Native,
    /// A thread pool.
    Threads,
    /// QEMU's default.
    Default,
}

/// `DiskErrorPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskErrorPolicy {
    /// Pause the VM.
    Stop,
    /// Ignore.
    Ignore,
    /// Report to the guest.
    Report,
    /// Pause only on ENOSPC.
    Enospace,
}

/// `BlockSize`: at most one member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockSize {
    /// Explicit sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomBlockSize>,
    /// Take the sizes of the backing volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_volume: Option<FeatureState>,
}

/// `CustomBlockSize`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CustomBlockSize {
    /// Logical block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logical: Option<u32>,
    /// Physical block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub physical: Option<u32>,
    /// Discard granularity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard_granularity: Option<u32>,
}

/// `GPU` (refused on this node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Gpu {
    /// Name.
    pub name: String,
    /// Device-plugin resource name (`nvidia.com/GP102GL_Tesla_P40`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// DRA claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// DRA request name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_name: Option<String>,
    /// vGPU display options, kept as written.
    #[serde(rename = "virtualGPUOptions", default, skip_serializing_if = "Option::is_none")]
    pub virtual_gpu_options: Option<Value>,
    /// Tag for config-drive device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `HostDevice` (refused on this node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDevice {
    /// Name.
    pub name: String,
    /// Device-plugin resource name (`kubevirt.io/storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// DRA claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// DRA request name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_name: Option<String>,
    /// Tag for config-drive device metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// `SoundDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Sound {
    /// Name.
    pub name: String,
    /// `ich9` (default) or `ac97`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `TPMDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tpm {
    /// Defaults to true (a preference's TPM can be switched off with false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Keep the TPM state across reboots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
}

/// `VideoDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Video {
    /// `virtio`, `vga`, `bochs`, `ramfb`...
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// `Input`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    /// `usb` or `virtio`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<InputBus>,
    /// `tablet` or `keyboard`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<InputType>,
    /// Name.
    pub name: String,
}

/// `InputBus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputBus {
    /// USB.
    Usb,
    /// virtio-input.
    Virtio,
}

/// `InputType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// An absolute pointing device.
    Tablet,
    /// A keyboard.
    Keyboard,
}

/// `Watchdog`: exactly one device member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Watchdog {
    /// Name.
    pub name: String,
    /// Intel 6300ESB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i6300esb: Option<WatchdogAction>,
    /// s390x diag288.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diag288: Option<WatchdogAction>,
}

/// The `action` of a watchdog device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WatchdogAction {
    /// `poweroff`, `reset` (default) or `shutdown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

/// `PanicDevice`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PanicDevice {
    /// `isa`, `hyperv` or `pvpanic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// `Filesystem` (virtiofs; refused on this node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Filesystem {
    /// Name, also the name of the backing volume.
    pub name: String,
    /// virtiofs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtiofs: Option<Empty>,
}
