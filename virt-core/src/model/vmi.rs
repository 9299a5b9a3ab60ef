//! `VirtualMachineInstance` (`kubevirt.io/v1`): a running (or to-be-run) VM, its spec and status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{ConditionStatus, ObjectMeta, Quantity, Timestamp};

use super::domain::{DomainSpec, Machine};
use super::network::Network;
use super::volumes::Volume;
use super::API_VERSION;

/// A VirtualMachineInstance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstance {
    /// `kubevirt.io/v1`.
    pub api_version: String,
    /// `VirtualMachineInstance`.
    pub kind: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: VirtualMachineInstanceSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineInstanceStatus>,
}

impl VirtualMachineInstance {
    /// A VMI with `apiVersion` and `kind` filled in.
    pub fn new(metadata: ObjectMeta, spec: VirtualMachineInstanceSpec) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: "VirtualMachineInstance".to_string(),
            metadata,
            spec,
            status: None,
        }
    }
}

/// `VirtualMachineInstanceSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceSpec {
    /// Pod priority class (accepted; no effect on a single node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// The virtual hardware.
    pub domain: DomainSpec,
    /// Node labels the VMI needs (accepted; this node is the only one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Scheduling affinity, kept as written (accepted; this node is the only one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Value>,
    /// Scheduler name (accepted; no scheduler runs here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    /// Service account of the launcher (accepted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Taint tolerations (accepted; this node has no taints).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Topology spread constraints, kept as written (accepted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<Value>,
    /// What a node drain does to the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_strategy: Option<EvictionStrategy>,
    /// `Paused` starts the VMI paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_strategy: Option<StartStrategy>,
    /// Seconds between the shutdown request and a forced stop (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Volumes, used by disks of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// Liveness probe, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Value>,
    /// Readiness probe, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Value>,
    /// Guest hostname (default: the VMI name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// DNS subdomain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subdomain: Option<String>,
    /// Networks, used by interfaces of the same name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// DNS policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_policy: Option<String>,
    /// DNS configuration, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<Value>,
    /// SSH keys and passwords to inject, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_credentials: Vec<Value>,
    /// Guest architecture (`amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Dynamic resource allocation claims, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_claims: Vec<Value>,
    /// Utility volumes of the launcher, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub utility_volumes: Vec<Value>,
}

/// `VirtualMachineInstanceTemplateSpec`: the VMI a VirtualMachine (or replica set) creates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceTemplateSpec {
    /// Labels and annotations of the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<ObjectMeta>>,
    /// The VMI's spec.
    pub spec: VirtualMachineInstanceSpec,
}

/// `Toleration`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Toleration {
    /// Taint key (empty with `Exists` matches every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Exists` or `Equal` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Taint value for `Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute` (empty matches all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// How long a `NoExecute` taint is tolerated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// `EvictionStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum EvictionStrategy {
    /// Stop the VMI; the run strategy decides what happens next.
    None,
    /// Live-migrate away.
    LiveMigrate,
    /// Live-migrate if the VMI can be migrated, otherwise `None`.
    LiveMigrateIfPossible,
    /// Leave it to an external controller.
    External,
}

/// `StartStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum StartStrategy {
    /// Start with the vCPUs paused.
    Paused,
}

/// `VirtualMachineInstancePhase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum VmiPhase {
    /// Accepted, nothing done yet.
    Pending,
    /// A launcher is being created.
    Scheduling,
    /// A launcher runs; the VM is being started.
    Scheduled,
    /// The VM runs.
    Running,
    /// The VM stopped by itself (guest shutdown, or a graceful stop).
    Succeeded,
    /// The VM crashed, disappeared, or could not start.
    Failed,
    /// Waiting for synchronization (decentralized migration target).
    WaitingForSync,
    /// The state could not be obtained.
    Unknown,
}

impl VmiPhase {
    /// The phase as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::Scheduling => "Scheduling",
            Self::Scheduled => "Scheduled",
            Self::Running => "Running",
            Self::Succeeded => "Succeeded",
            Self::Failed => "Failed",
            Self::WaitingForSync => "WaitingForSync",
            Self::Unknown => "Unknown",
        }
    }

    /// Whether the VMI has finished (Succeeded or Failed) and will not run again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// `VirtualMachineInstanceCondition` (also the shape of VirtualMachine conditions): `type` is
/// e.g. `Ready`, `Paused`, `AgentConnected`, `LiveMigratable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: ConditionStatus,
    /// When the condition was last probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_probe_time: Option<Timestamp>,
    /// When the status last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Timestamp>,
    /// Machine-readable reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `VirtualMachineInstanceStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    /// Node running the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// CamelCase reason for the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Conditions (`Ready`, `Paused`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmiPhase>,
    /// When each phase was entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransition>,
    /// Guest network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<NetworkInterfaceStatus>,
    /// Guest OS details from the guest agent.
    #[serde(rename = "guestOSInfo", default, skip_serializing_if = "Option::is_none")]
    pub guest_os_info: Option<GuestOsInfo>,
    /// Live migration state (never set on this node: it does not migrate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_state: Option<MigrationState>,
    /// `LiveMigration` or `BlockMigration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_method: Option<String>,
    /// Migration transport (`Unix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_transport: Option<String>,
    /// Pod QoS class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_class: Option<String>,
    /// Version of the launcher running the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_container_image_version: Option<String>,
    /// Node being evacuated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evacuation_node_name: Option<String>,
    /// Launcher id to node name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active_pods: BTreeMap<String, String>,
    /// Per-volume status, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_status: Vec<Value>,
    /// Kernel boot artifacts, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_boot_status: Option<Value>,
    /// `frozen` while a filesystem freeze is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_freeze_status: Option<String>,
    /// Topology hints (TSC frequency), kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_hints: Option<Value>,
    /// VM revision the VMI was created from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_machine_revision_name: Option<String>,
    /// UID the launcher runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_user: Option<u64>,
    /// VSOCK context id.
    #[serde(rename = "VSOCKCID", default, skip_serializing_if = "Option::is_none")]
    pub vsock_cid: Option<u32>,
    /// SELinux context of the launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selinux_context: Option<String>,
    /// The machine type actually used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    /// The CPU topology in use.
    #[serde(rename = "currentCPUTopology", default, skip_serializing_if = "Option::is_none")]
    pub current_cpu_topology: Option<CpuTopology>,
    /// Memory at boot, now and requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryStatus>,
    /// Volumes being migrated, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub migrated_volumes: Vec<Value>,
    /// Changed-block tracking state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<Value>,
}

/// `VirtualMachineInstancePhaseTransitionTimestamp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    /// The phase entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<VmiPhase>,
    /// When.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_transition_timestamp: Option<Timestamp>,
}

/// `VirtualMachineInstanceNetworkInterface`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterfaceStatus {
    /// First IP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Name of the interface (and its network).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// All IP addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// Host-side interface name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_interface_name: Option<String>,
    /// Name inside the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    /// `domain`, `guest-agent`, `multus-status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info_source: Option<String>,
    /// Queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_count: Option<i32>,
    /// `up` or `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_state: Option<String>,
}

/// `VirtualMachineInstanceGuestOSInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuestOsInfo {
    /// OS name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kernel release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_release: Option<String>,
    /// OS version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Pretty name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretty_name: Option<String>,
    /// Version id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Machine (architecture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// OS id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// `CPUTopology`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuTopology {
    /// Cores per socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Sockets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<u32>,
    /// Threads per core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<u32>,
}

/// `MemoryStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    /// Memory at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_at_boot: Option<Quantity>,
    /// Memory now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_current: Option<Quantity>,
    /// Memory requested by hotplug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_requested: Option<Quantity>,
}

/// `VirtualMachineInstanceMigrationState`: the commonly read fields; the handler-internal
/// `sourceState`, `targetState` and `migrationConfiguration` are kept as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationState {
    /// When the migration began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_timestamp: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_timestamp: Option<Timestamp>,
    /// When the target saw the domain active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_ready_timestamp: Option<Timestamp>,
    /// The target saw the domain start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_domain_detected: Option<bool>,
    /// Address of the target node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_address: Option<String>,
    /// Ports opened on the target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_direct_migration_node_ports: BTreeMap<String, i64>,
    /// Target node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Target launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_pod: Option<String>,
    /// Target attachment pod.
    #[serde(rename = "targetAttachmentPodUID", default, skip_serializing_if = "Option::is_none")]
    pub target_attachment_pod_uid: Option<String>,
    /// Source node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// Source launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod: Option<String>,
    /// Completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<bool>,
    /// Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<bool>,
    /// Abort requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_requested: Option<bool>,
    /// `Succeeded`, `Failed` or `Aborting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_status: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// The VirtualMachineInstanceMigration's UID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_uid: Option<String>,
    /// `PreCopy`, `PostCopy` or `Paused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The matched MigrationPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_policy_name: Option<String>,
    /// Effective migration configuration, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_configuration: Option<Value>,
    /// Dedicated CPUs on the target.
    #[serde(rename = "targetCPUSet", default, skip_serializing_if = "Vec::is_empty")]
    pub target_cpu_set: Vec<i64>,
    /// NUMA topology on the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node_topology: Option<String>,
    /// Source persistent-state claim.
    #[serde(rename = "sourcePersistentStatePVCName", default, skip_serializing_if = "Option::is_none")]
    pub source_persistent_state_pvc_name: Option<String>,
    /// Target persistent-state claim.
    #[serde(rename = "targetPersistentStatePVCName", default, skip_serializing_if = "Option::is_none")]
    pub target_persistent_state_pvc_name: Option<String>,
    /// Source handler state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_state: Option<Value>,
    /// Target handler state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_state: Option<Value>,
    /// `Pod` or `Migration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_network_type: Option<String>,
    /// Memory overhead of the target launcher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_memory_overhead: Option<Quantity>,
    /// virt-rs: what the migration measured (`totalUs`, `downtimeUs`, `saveStateUs`,
    /// `finalPassUs`, `restoreUs`, `passes`, `bytesSent`; `machine::migrate::MigrationReport`).
    /// KubeVirt reports no downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_stats: Option<Value>,
}
