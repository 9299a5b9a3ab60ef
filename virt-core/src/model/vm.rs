//! `VirtualMachine` (`kubevirt.io/v1`): a VMI template with a run strategy, DataVolume
//! templates, and optional instancetype and preference references.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::ObjectMeta;

use super::vmi::{Condition, VirtualMachineInstanceTemplateSpec};
use super::API_VERSION;

/// A VirtualMachine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachine {
    /// `kubevirt.io/v1`.
    pub api_version: String,
    /// `VirtualMachine`.
    pub kind: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: VirtualMachineSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VirtualMachineStatus>,
}

impl VirtualMachine {
    /// A VM with `apiVersion` and `kind` filled in.
    pub fn new(metadata: ObjectMeta, spec: VirtualMachineSpec) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: "VirtualMachine".to_string(),
            metadata,
            spec,
            status: None,
        }
    }
}

/// `VirtualMachineSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineSpec {
    /// Deprecated: `true` is `runStrategy: Always`, `false` is `Halted`. Exclusive with
    /// `runStrategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
    /// When the VM's instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The instancetype providing CPU and memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype: Option<InstancetypeMatcher>,
    /// The preference providing defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<PreferenceMatcher>,
    /// The VMI to create.
    pub template: VirtualMachineInstanceTemplateSpec,
    /// DataVolumes created with the VM (see [`DataVolumeTemplateSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<DataVolumeTemplateSpec>,
    /// `Replacement` or `Migration` of volumes on update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_volumes_strategy: Option<String>,
}

impl VirtualMachineSpec {
    /// The run strategy in force: `runStrategy`, else `running` (true: Always, false: Halted),
    /// else Halted.
    pub fn effective_run_strategy(&self) -> RunStrategy {
        match (self.run_strategy, self.running) {
            (Some(s), _) => s,
            (None, Some(true)) => RunStrategy::Always,
            (None, _) => RunStrategy::Halted,
        }
    }
}

/// `VirtualMachineRunStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RunStrategy {
    /// Keep an instance running: restart it whenever it stops.
    Always,
    /// Restart the instance only when it failed.
    RerunOnFailure,
    /// Start and stop only on request.
    Manual,
    /// No instance.
    Halted,
    /// Run the instance once to completion.
    Once,
    /// Wait for an incoming migration (decentralized migration target).
    WaitAsReceiver,
}

impl RunStrategy {
    /// The strategy as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::RerunOnFailure => "RerunOnFailure",
            Self::Manual => "Manual",
            Self::Halted => "Halted",
            Self::Once => "Once",
            Self::WaitAsReceiver => "WaitAsReceiver",
        }
    }
}

/// `InstancetypeMatcher`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstancetypeMatcher {
    /// Name of the instancetype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `VirtualMachineInstancetype` or `VirtualMachineClusterInstancetype` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// ControllerRevision captured when the VM was first started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_name: Option<String>,
    /// Take the name and kind from this volume's labels (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume: Option<String>,
    /// `Reject` or `Ignore` when inference fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infer_from_volume_failure_policy: Option<String>,
}

/// `PreferenceMatcher` (the same fields as [`InstancetypeMatcher`]).
pub type PreferenceMatcher = InstancetypeMatcher;

/// A `dataVolumeTemplates` entry: a CDI DataVolume created with the VM.
///
/// virt-core does not depend on the storage layer, so the DataVolume's `spec` (and `status`) is
/// kept here as the value tree it was written as; its metadata is checked here (a name is
/// required). `virt_storage::cdi` reads the same document strictly as a DataVolume
/// (`CdiObject::DataVolumeTemplates`, with paths like `spec.dataVolumeTemplates[0].spec.pvc`) and
/// validates it with CDI's rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeTemplateSpec {
    /// `cdi.kubevirt.io/v1beta1`, usually left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `DataVolume`, usually left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata; `name` is required.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// The DataVolume's spec, as written.
    pub spec: Value,
    /// The DataVolume's status, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

/// `VirtualMachineStatus`: the commonly read fields; request queues and revisions are kept as
/// written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    /// Name of a snapshot in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_in_progress: Option<String>,
    /// Name of a restore in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_in_progress: Option<String>,
    /// An instance exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<bool>,
    /// The instance is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// `Stopped`, `Provisioning`, `Starting`, `Running`, `Paused`, `Stopping`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printable_status: Option<String>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Pending start/stop requests, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_change_requests: Vec<Value>,
    /// Pending volume hotplug requests, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_requests: Vec<Value>,
    /// Snapshot support per volume, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_snapshot_statuses: Vec<Value>,
    /// Start failures and back-off, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_failure: Option<Value>,
    /// Memory dump request, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_dump_request: Option<Value>,
    /// Generation observed by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Generation of the spec the instance runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_generation: Option<i64>,
    /// The run strategy in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// The instancetype revision in use, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instancetype_ref: Option<Value>,
    /// The preference revision in use, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference_ref: Option<Value>,
    /// Volume update state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_update_state: Option<Value>,
    /// Changed-block tracking state, kept as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_block_tracking: Option<Value>,
}
