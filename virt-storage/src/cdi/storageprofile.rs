//! `StorageProfile` (`cdi.kubevirt.io/v1beta1`, cluster-scoped): CDI's per-storage-class
//! recommendations for claim properties and clone strategy.

use serde::{Deserialize, Serialize};
use virt_core::api::ObjectMeta;

use super::dataimportcron::SourceFormat;
use super::meta::{AccessMode, VolumeMode};

/// A StorageProfile (named after its storage class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfile {
    /// `cdi.kubevirt.io/v1beta1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `StorageProfile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    #[serde(default)]
    pub spec: StorageProfileSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StorageProfileStatus>,
}

/// `StorageProfileSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileSpec {
    /// Preferred clone method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<CloneStrategy>,
    /// Claim properties to use when a DataVolume leaves them out (at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_property_sets: Vec<ClaimPropertySet>,
    /// Format DataImportCrons keep their imports in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<SourceFormat>,
    /// VolumeSnapshotClass for snapshot clones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
}

/// `StorageProfileStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageProfileStatus {
    /// The storage class described.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Its provisioner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioner: Option<String>,
    /// Effective clone method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_strategy: Option<CloneStrategy>,
    /// Effective claim properties.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_property_sets: Vec<ClaimPropertySet>,
    /// Effective DataImportCron source format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_import_cron_source_format: Option<SourceFormat>,
    /// Effective VolumeSnapshotClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_class: Option<String>,
}

/// `ClaimPropertySet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimPropertySet {
    /// Access modes (at most 4).
    pub access_modes: Vec<AccessMode>,
    /// `Filesystem` or `Block`.
    pub volume_mode: VolumeMode,
}

/// `CDICloneStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum CloneStrategy {
    /// Host-assisted copy (here: a sparse copy of the image file).
    #[serde(rename = "copy")]
    Copy,
    /// Via a volume snapshot (here: a reflink or a copy-on-write overlay).
    #[serde(rename = "snapshot")]
    Snapshot,
    /// CSI volume cloning (here: a reflink or a copy-on-write overlay).
    #[serde(rename = "csi-clone")]
    CsiClone,
}
