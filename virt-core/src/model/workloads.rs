//! The other KubeVirt kinds of the conformance examples, as far as they go: replica sets and
//! pools of VMs, snapshots, clones, migrations and migration policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{Duration, LabelSelector, ObjectMeta, Quantity, TypedLocalObjectReference};

use super::vm::VirtualMachineSpec;
use super::vmi::{Condition, VirtualMachineInstanceTemplateSpec};

macro_rules! kind {
    ($(#[$doc:meta])* $name:ident, $spec:ty, $status:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The group and version.
            pub api_version: String,
            /// The kind.
            pub kind: String,
            /// Metadata.
            #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
            pub metadata: ObjectMeta,
            /// Desired state.
            pub spec: $spec,
            /// Observed state.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub status: Option<$status>,
        }
    };
}

kind!(
    /// `VirtualMachineInstanceReplicaSet` (`kubevirt.io/v1`): keeps `replicas` VMIs from a template.
    VirtualMachineInstanceReplicaSet,
    ReplicaSetSpec,
    ReplicaSetStatus
);
kind!(
    /// `VirtualMachinePool` (`pool.kubevirt.io/v1beta1`): keeps `replicas` VMs from a template.
    VirtualMachinePool,
    PoolSpec,
    Value
);
kind!(
    /// `VirtualMachineSnapshot` (`snapshot.kubevirt.io/v1beta1`).
    VirtualMachineSnapshot,
    SnapshotSpec,
    Value
);
kind!(
    /// `VirtualMachineClone` (`clone.kubevirt.io/v1beta1`).
    VirtualMachineClone,
    CloneSpec,
    Value
);
kind!(
    /// `MigrationPolicy` (`migrations.kubevirt.io/v1alpha1`, cluster-scoped).
    MigrationPolicy,
    MigrationPolicySpec,
    Value
);
kind!(
    /// `VirtualMachineInstanceMigration` (`kubevirt.io/v1`): a request to live-migrate a VMI.
    VirtualMachineInstanceMigration,
    MigrationSpec,
    Value
);

/// `VirtualMachineInstanceReplicaSetSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetSpec {
    /// Number of VMIs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Which VMIs belong to the set; must match the template's labels.
    pub selector: LabelSelector,
    /// The VMIs to create.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// Stop reconciling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
}

/// `VirtualMachineInstanceReplicaSetStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetStatus {
    /// VMIs that exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// VMIs that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The selector as a string, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

/// `VirtualMachinePoolSpec`: the fields the examples use, plus the update and scale-in
/// strategies kept as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// Number of VMs (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Which VMs belong to the pool; must match the VM template's labels.
    pub selector: LabelSelector,
    /// The VMs to create.
    pub virtual_machine_template: VirtualMachineTemplateSpec,
    /// Stop reconciling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// How VM names are generated, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_generation: Option<Value>,
    /// Unavailable VMs tolerated during updates, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Value>,
    /// Which VMs go first on scale-in, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_in_strategy: Option<Value>,
    /// How VMs are updated, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<Value>,
}

/// `VirtualMachineTemplateSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineTemplateSpec {
    /// Labels and annotations of each VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMeta>,
    /// Each VM's spec.
    pub spec: VirtualMachineSpec,
}

/// `VirtualMachineSnapshotSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// The VirtualMachine to snapshot.
    pub source: TypedLocalObjectReference,
    /// `delete` (default) or `retain` the content with the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<String>,
    /// How long the snapshot may take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_deadline: Option<Duration>,
}

/// `VirtualMachineCloneSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneSpec {
    /// A VirtualMachine or VirtualMachineSnapshot.
    pub source: TypedLocalObjectReference,
    /// The VirtualMachine to create (a generated name when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TypedLocalObjectReference>,
    /// Annotation keys to copy (`*`, `!prefix/*` patterns).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotation_filters: Vec<String>,
    /// Label keys to copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_filters: Vec<String>,
    /// Filters for the VMI template's labels and annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<CloneTemplateFilters>,
    /// New MAC address per interface name (empty: a generated one).
    #[serde(rename = "newMacAddresses", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub new_mac_addresses: BTreeMap<String, String>,
    /// New SMBIOS serial.
    #[serde(rename = "newSMBiosSerial", default, skip_serializing_if = "Option::is_none")]
    pub new_smbios_serial: Option<String>,
    /// JSON patches applied to the new VM.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<String>,
    /// `RandomizeNames` or `PreserveNames` of volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_name_policy: Option<String>,
}

/// `CloneTemplateFilters`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneTemplateFilters {
    /// Annotation keys to copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotation_filters: Vec<String>,
    /// Label keys to copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_filters: Vec<String>,
}

/// `MigrationPolicySpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySpec {
    /// Throttle the guest's CPU to converge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    /// Bandwidth per migration (`2000Mi` bytes/s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<Quantity>,
    /// Timeout per GiB of guest memory, in seconds.
    #[serde(rename = "completionTimeoutPerGiB", default, skip_serializing_if = "Option::is_none")]
    pub completion_timeout_per_gib: Option<i64>,
    /// Switch to post-copy when pre-copy does not converge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
    /// Allow pausing the guest to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_workload_disruption: Option<bool>,
    /// Which VMIs the policy applies to.
    pub selectors: MigrationPolicySelectors,
}

/// `Selectors` of a MigrationPolicy: label maps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationPolicySelectors {
    /// Labels of the VMI's namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_selector: BTreeMap<String, String>,
    /// Labels of the VMI.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_machine_instance_selector: BTreeMap<String, String>,
}

/// `VirtualMachineInstanceMigrationSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The VMI to migrate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmi_name: Option<String>,
    /// Extra node selector for the target.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_node_selector: BTreeMap<String, String>,
    /// Decentralized migration source side, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_to: Option<Value>,
    /// Decentralized migration target side, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive: Option<Value>,
    /// Priority, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Value>,
}
