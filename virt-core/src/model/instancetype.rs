//! `instancetype.kubevirt.io/v1beta1`: instancetypes (CPU, memory and device sizing a VM takes
//! as is) and preferences (defaults a VM takes where it is silent), namespaced and cluster-wide.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{ObjectMeta, Quantity};

use super::devices::{BlockSize, DiskBus, DiskCache, DiskIo, Gpu, HostDevice, InputBus, InputType, Tpm};
use super::domain::{
    ClockOffset, CpuFeature, Efi, Empty, FeatureApic, FeatureHyperv, FeatureKvm, FeatureState, Hugepages,
    IoThreadsPolicy, Numa, Realtime, Timer,
};

/// The API group and version of instancetypes and preferences.
pub const INSTANCETYPE_API_VERSION: &str = "instancetype.kubevirt.io/v1beta1";

macro_rules! instancetype_kind {
    ($(#[$doc:meta])* $name:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// `instancetype.kubevirt.io/v1beta1`.
            pub api_version: String,
            /// The kind.
            pub kind: String,
            /// Metadata.
            #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
            pub metadata: ObjectMeta,
            /// The spec.
            pub spec: $spec,
        }

        impl $name {
            /// An object with `apiVersion` and `kind` filled in.
            pub fn new(metadata: ObjectMeta, spec: $spec) -> Self {
                Self {
                    api_version: INSTANCETYPE_API_VERSION.to_string(),
                    kind: stringify!($name).to_string(),
                    metadata,
                    spec,
                }
            }
        }
    };
}

instancetype_kind!(
    /// A namespaced `VirtualMachineInstancetype`.
    VirtualMachineInstancetype,
    InstancetypeSpec
);
instancetype_kind!(
    /// A cluster-wide `VirtualMachineClusterInstancetype`.
    VirtualMachineClusterInstancetype,
    InstancetypeSpec
);
instancetype_kind!(
    /// A namespaced `VirtualMachinePreference`.
    VirtualMachinePreference,
    PreferenceSpec
);
instancetype_kind!(
    /// A cluster-wide `VirtualMachineClusterPreference`.
    VirtualMachineClusterPreference,
    PreferenceSpec
);

/// `VirtualMachineInstancetypeSpec`: `cpu.guest` and `memory.guest` are required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancetypeSpec {
    /// Node labels the VMI needs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Scheduler name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// vCPUs and CPU options.
    pub cpu: CpuInstancetype,
    /// Memory.
    pub memory: MemoryInstancetype,
    /// GPUs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Gpu>,
    /// Host devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<HostDevice>,
    /// IOThreads policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads_policy: Option<IoThreadsPolicy>,
    /// IOThreads options, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_threads: Option<Value>,
    /// Confidential computing, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_security: Option<Value>,
    /// Annotations applied to the VMI.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `CPUInstancetype`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuInstancetype {
    /// vCPUs (at least 1), laid out by the preference's `preferredCPUTopology` (sockets by
    /// default).
    pub guest: u32,
    /// CPU model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Pin vCPUs to dedicated host CPUs.
    #[serde(rename = "dedicatedCPUPlacement", default, skip_serializing_if = "Option::is_none")]
    pub dedicated_cpu_placement: Option<bool>,
    /// Guest NUMA topology.
    #[serde(rename = "numa", default, skip_serializing_if = "Option::is_none")]
    pub numa: Option<Numa>,
    /// A dedicated host CPU for the emulator thread.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolate_emulator_thread: Option<bool>,
    /// Real-time tuning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime: Option<Realtime>,
    /// Maximum sockets for CPU hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sockets: Option<u32>,
}

/// `MemoryInstancetype`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryInstancetype {
    /// Guest memory.
    pub guest: Quantity,
    /// Huge pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<Hugepages>,
    /// Percentage of guest memory not requested from the host (0-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overcommit_percent: Option<i32>,
    /// Maximum guest memory for hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_guest: Option<Quantity>,
}

impl Default for MemoryInstancetype {
    fn default() -> Self {
        Self { guest: Quantity::from_bytes(0), hugepages: None, overcommit_percent: None, max_guest: None }
    }
}

/// `VirtualMachinePreferenceSpec`: every member is optional and only fills in what a VM leaves
/// unset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceSpec {
    /// Clock preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock: Option<ClockPreferences>,
    /// CPU preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuPreferences>,
    /// Device preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DevicePreferences>,
    /// Feature preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeaturePreferences>,
    /// Firmware preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwarePreferences>,
    /// Machine preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachinePreferences>,
    /// Volume preferences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<VolumePreferences>,
    /// Subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_subdomain: Option<String>,
    /// Termination grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_termination_grace_period_seconds: Option<i64>,
    /// Minimum resources the instancetype (or VM) must provide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<PreferenceRequirements>,
    /// Annotations applied to the VMI where not set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Socket-to-core ratio for the `spread` topology (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_spread_socket_to_core_ratio: Option<u32>,
    /// Architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_architecture: Option<String>,
}

/// `ClockPreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClockPreferences {
    /// `utc` or `timezone`, applied when the VM sets neither.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_clock_offset: Option<ClockOffset>,
    /// Timers, applied when the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_timer: Option<Timer>,
}

/// `CPUPreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuPreferences {
    /// How an instancetype's vCPUs are laid out (default `sockets`).
    #[serde(rename = "preferredCPUTopology", default, skip_serializing_if = "Option::is_none")]
    pub preferred_cpu_topology: Option<PreferredCpuTopology>,
    /// Options of the `spread` topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread_options: Option<SpreadOptions>,
    /// CPU features added where the VM does not name them.
    #[serde(rename = "preferredCPUFeatures", default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_cpu_features: Vec<CpuFeature>,
}

/// `PreferredCPUTopology`, including the deprecated `prefer*` spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PreferredCpuTopology {
    /// All vCPUs as sockets.
    Sockets,
    /// All vCPUs as cores of one socket.
    Cores,
    /// All vCPUs as threads of one core.
    Threads,
    /// Spread across sockets and cores (and threads) by a ratio.
    Spread,
    /// Any (treated as sockets).
    Any,
    /// Deprecated spelling of `sockets`.
    PreferSockets,
    /// Deprecated spelling of `cores`.
    PreferCores,
    /// Deprecated spelling of `threads`.
    PreferThreads,
    /// Deprecated spelling of `spread`.
    PreferSpread,
    /// Deprecated spelling of `any`.
    PreferAny,
}

impl PreferredCpuTopology {
    /// The current spelling of a deprecated value.
    pub fn normalized(self) -> Self {
        match self {
            Self::PreferSockets => Self::Sockets,
            Self::PreferCores => Self::Cores,
            Self::PreferThreads => Self::Threads,
            Self::PreferSpread => Self::Spread,
            Self::PreferAny => Self::Any,
            other => other,
        }
    }
}

/// `SpreadOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpreadOptions {
    /// What to spread across (default `SocketsCores`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across: Option<SpreadAcross>,
    /// The ratio (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<u32>,
}

/// `SpreadAcross`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum SpreadAcross {
    /// sockets:cores = 1:ratio.
    SocketsCores,
    /// cores:threads = 1:ratio.
    CoresThreads,
    /// sockets:cores:threads = 1:ratio:2.
    SocketsCoresThreads,
}

/// `DevicePreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DevicePreferences {
    /// Default of `autoattachGraphicsDevice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_graphics_device: Option<bool>,
    /// Default of `autoattachMemBalloon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_mem_balloon: Option<bool>,
    /// Default of `autoattachPodInterface`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_pod_interface: Option<bool>,
    /// Default of `autoattachSerialConsole`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_serial_console: Option<bool>,
    /// Default of `autoattachInputDevice`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_autoattach_input_device: Option<bool>,
    /// `disableHotplug` (overrides the VM, as KubeVirt does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disable_hotplug: Option<bool>,
    /// vGPU options, kept as written.
    #[serde(rename = "preferredVirtualGPUOptions", default, skip_serializing_if = "Option::is_none")]
    pub preferred_virtual_gpu_options: Option<Value>,
    /// Sound model where the VM's sound device has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_sound_model: Option<String>,
    /// Default of `useVirtioTransitional`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_virtio_transitional: Option<bool>,
    /// Bus of inputs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_input_bus: Option<InputBus>,
    /// Type of inputs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_input_type: Option<InputType>,
    /// Bus of disks without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_bus: Option<DiskBus>,
    /// Bus of LUNs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_lun_bus: Option<DiskBus>,
    /// Bus of CD-ROMs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_cdrom_bus: Option<DiskBus>,
    /// Dedicated IOThreads for virtio disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_dedicated_io_thread: Option<bool>,
    /// Cache mode of disks without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_cache: Option<DiskCache>,
    /// I/O mode of disks without one.
    #[serde(rename = "preferredDiskIO", default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_io: Option<DiskIo>,
    /// Block size of disks without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_disk_block_size: Option<BlockSize>,
    /// Model of interfaces without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_interface_model: Option<String>,
    /// RNG device where the VM has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_rng: Option<Empty>,
    /// Default of `blockMultiQueue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_block_multi_queue: Option<bool>,
    /// Default of `networkInterfaceMultiqueue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_network_interface_multi_queue: Option<bool>,
    /// TPM where the VM has none.
    #[serde(rename = "preferredTPM", default, skip_serializing_if = "Option::is_none")]
    pub preferred_tpm: Option<Tpm>,
    /// Masquerade binding for pod-network interfaces without a binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_interface_masquerade: Option<Empty>,
    /// Model of panic devices without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_panic_device_model: Option<String>,
    /// Video type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_video_type: Option<String>,
}

/// `FeaturePreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeaturePreferences {
    /// ACPI (overrides the VM, as KubeVirt does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_acpi: Option<FeatureState>,
    /// APIC where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_apic: Option<FeatureApic>,
    /// Hyper-V enlightenments, each where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_hyperv: Option<FeatureHyperv>,
    /// KVM where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_kvm: Option<FeatureKvm>,
    /// Paravirtual spinlocks where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_pvspinlock: Option<FeatureState>,
    /// SMM where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_smm: Option<FeatureState>,
}

/// `FirmwarePreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwarePreferences {
    /// BIOS where the VM chooses no bootloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_bios: Option<bool>,
    /// BIOS output on the serial console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_bios_serial: Option<bool>,
    /// Deprecated: EFI where the VM chooses no bootloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_efi: Option<bool>,
    /// Deprecated: Secure Boot for EFI without a setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_use_secure_boot: Option<bool>,
    /// EFI (with its settings) where the VM chooses no bootloader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_efi: Option<Efi>,
}

/// `MachinePreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MachinePreferences {
    /// Machine type where the VM sets none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_machine_type: Option<String>,
}

/// `VolumePreferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumePreferences {
    /// Storage class for DataVolume templates without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_storage_class_name: Option<String>,
}

/// `PreferenceRequirements`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreferenceRequirements {
    /// Minimum vCPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuRequirement>,
    /// Minimum memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRequirement>,
    /// Required architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// `CPUPreferenceRequirement`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuRequirement {
    /// Minimum vCPUs.
    pub guest: u32,
}

/// `MemoryPreferenceRequirement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryRequirement {
    /// Minimum memory.
    pub guest: Quantity,
}
