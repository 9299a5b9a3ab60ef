//! `spec.volumes`: where each disk's data comes from.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::{LocalObjectReference, Quantity};

use super::domain::{Empty, PullPolicy};

/// `Volume`: a name and exactly one source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    /// Name (a DNS label), matched by a disk.
    pub name: String,
    /// A disk image file on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disk: Option<HostDisk>,
    /// A claim (a local volume here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcVolumeSource>,
    /// cloud-init NoCloud seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    /// cloud-init ConfigDrive seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_init_config_drive: Option<CloudInitSource>,
    /// Windows sysprep answer file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysprep: Option<SysprepSource>,
    /// A disk image inside an OCI image, copied on write per VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_disk: Option<ContainerDiskSource>,
    /// A copy-on-write layer over a claim, discarded with the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<EphemeralVolumeSource>,
    /// A blank sparse disk living as long as the VMI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_disk: Option<EmptyDiskSource>,
    /// A DataVolume (a volume with an import source).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_volume: Option<DataVolumeSource>,
    /// A ConfigMap as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapVolumeSource>,
    /// A Secret as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretVolumeSource>,
    /// Downward API fields as a disk.
    #[serde(rename = "downwardAPI", default, skip_serializing_if = "Option::is_none")]
    pub downward_api: Option<DownwardApiVolumeSource>,
    /// A service account token as a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccountVolumeSource>,
    /// Host metrics disk (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downward_metrics: Option<Empty>,
    /// Memory dump target (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_dump: Option<PvcVolumeSource>,
}

/// Which source a volume has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VolumeKind {
    /// `hostDisk`.
    HostDisk,
    /// `persistentVolumeClaim`.
    PersistentVolumeClaim,
    /// `cloudInitNoCloud`.
    CloudInitNoCloud,
    /// `cloudInitConfigDrive`.
    CloudInitConfigDrive,
    /// `sysprep`.
    Sysprep,
    /// `containerDisk`.
    ContainerDisk,
    /// `ephemeral`.
    Ephemeral,
    /// `emptyDisk`.
    EmptyDisk,
    /// `dataVolume`.
    DataVolume,
    /// `configMap`.
    ConfigMap,
    /// `secret`.
    Secret,
    /// `downwardAPI`.
    DownwardApi,
    /// `serviceAccount`.
    ServiceAccount,
    /// `downwardMetrics`.
    DownwardMetrics,
    /// `memoryDump`.
    MemoryDump,
}

impl VolumeKind {
    /// The field name in YAML.
    pub fn field(self) -> &'static str {
        match self {
            Self::HostDisk => "hostDisk",
            Self::PersistentVolumeClaim => "persistentVolumeClaim",
            Self::CloudInitNoCloud => "cloudInitNoCloud",
            Self::CloudInitConfigDrive => "cloudInitConfigDrive",
            Self::Sysprep => "sysprep",
            Self::ContainerDisk => "containerDisk",
            Self::Ephemeral => "ephemeral",
            Self::EmptyDisk => "emptyDisk",
            Self::DataVolume => "dataVolume",
            Self::ConfigMap => "configMap",
            Self::Secret => "secret",
            Self::DownwardApi => "downwardAPI",
            Self::ServiceAccount => "serviceAccount",
            Self::DownwardMetrics => "downwardMetrics",
            Self::MemoryDump => "memoryDump",
        }
    }
}

impl Volume {
    /// Every source set, in field order (exactly one is valid).
    pub fn kinds(&self) -> Vec<VolumeKind> {
        use VolumeKind as K;
        [
            (self.host_disk.is_some(), K::HostDisk),
            (self.persistent_volume_claim.is_some(), K::PersistentVolumeClaim),
            (self.cloud_init_no_cloud.is_some(), K::CloudInitNoCloud),
            (self.cloud_init_config_drive.is_some(), K::CloudInitConfigDrive),
            (self.sysprep.is_some(), K::Sysprep),
            (self.container_disk.is_some(), K::ContainerDisk),
            (self.ephemeral.is_some(), K::Ephemeral),
            (self.empty_disk.is_some(), K::EmptyDisk),
            (self.data_volume.is_some(), K::DataVolume),
            (self.config_map.is_some(), K::ConfigMap),
            (self.secret.is_some(), K::Secret),
            (self.downward_api.is_some(), K::DownwardApi),
            (self.service_account.is_some(), K::ServiceAccount),
            (self.downward_metrics.is_some(), K::DownwardMetrics),
            (self.memory_dump.is_some(), K::MemoryDump),
        ]
        .into_iter()
        .filter_map(|(set, k)| set.then_some(k))
        .collect()
    }

    /// The single source, if exactly one is set.
    pub fn kind(&self) -> Option<VolumeKind> {
        match self.kinds().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// `HostDisk`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HostDisk {
    /// Absolute path of the image file on the node.
    pub path: String,
    /// `Disk` (must exist) or `DiskOrCreate`.
    #[serde(rename = "type")]
    pub type_: HostDiskType,
    /// Size of a created sparse image (required for `DiskOrCreate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Quantity>,
    /// Shared between nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
}

/// `HostDiskType`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum HostDiskType {
    /// The image must exist.
    #[default]
    Disk,
    /// The image is created (sparse, `capacity` bytes) if missing.
    DiskOrCreate,
}

/// `PersistentVolumeClaimVolumeSource` (also the shape of `memoryDump`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcVolumeSource {
    /// Claim (volume) name in the VMI's namespace.
    pub claim_name: String,
    /// Attach read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Hot-pluggable (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// `CloudInitNoCloudSource` and `CloudInitConfigDriveSource` (the same fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudInitSource {
    /// Secret holding the user data (`userdata` or `userData` key).
    #[serde(rename = "secretRef", default, skip_serializing_if = "Option::is_none")]
    pub user_data_secret_ref: Option<LocalObjectReference>,
    /// User data, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data_base64: Option<String>,
    /// User data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Secret holding the network config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_secret_ref: Option<LocalObjectReference>,
    /// Network config, base64-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data_base64: Option<String>,
    /// Network config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
}

/// `SysprepSource`: exactly one of `secret` and `configMap`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SysprepSource {
    /// Secret holding `autounattend.xml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<LocalObjectReference>,
    /// ConfigMap holding `autounattend.xml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<LocalObjectReference>,
}

/// `ContainerDiskSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerDiskSource {
    /// Image reference (`registry:5000/kubevirt/cirros-container-disk-demo:devel`).
    pub image: String,
    /// Secret with registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
    /// Path of the disk file in the image (default: the single file under `/disk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// When to pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
}

/// `EphemeralVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EphemeralVolumeSource {
    /// The claim under the copy-on-write layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcVolumeSource>,
}

/// `EmptyDiskSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmptyDiskSource {
    /// Size of the sparse disk.
    pub capacity: Quantity,
}

/// `DataVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    /// DataVolume (and volume) name in the VMI's namespace.
    pub name: String,
    /// Hot-pluggable (not supported on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hotpluggable: Option<bool>,
}

/// `ConfigMapVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapVolumeSource {
    /// ConfigMap name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the ConfigMap may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// Filesystem label of the generated disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// `SecretVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretVolumeSource {
    /// Secret name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Whether the Secret may be missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
    /// Filesystem label of the generated disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// `DownwardAPIVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownwardApiVolumeSource {
    /// `DownwardAPIVolumeFile` entries, kept as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Value>,
    /// Filesystem label of the generated disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_label: Option<String>,
}

/// `ServiceAccountVolumeSource`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountVolumeSource {
    /// Service account name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
}
