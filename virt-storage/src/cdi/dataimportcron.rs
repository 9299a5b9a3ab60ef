//! `DataImportCron` (`cdi.kubevirt.io/v1beta1`): polls a registry on a cron schedule, imports new
//! image digests as DataVolumes and points a managed DataSource at the newest one.

use serde::{Deserialize, Serialize};
use virt_core::api::{ObjectMeta, Timestamp};

use super::cron::{CronError, Schedule};
use super::datavolume::{DataVolume, PvcSource};
use super::meta::Condition;

/// A DataImportCron.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCron {
    /// `cdi.kubevirt.io/v1beta1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `DataImportCron`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: DataImportCronSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataImportCronStatus>,
}

/// `DataImportCronSpec`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronSpec {
    /// Template of the DataVolumes created for each new image (registry source only).
    pub template: DataVolume,
    /// Cron schedule (UTC) for polling; empty means import once and never poll.
    pub schedule: String,
    /// `Outdated` (default) deletes old imports beyond `importsToKeep`; `Never` keeps them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collect: Option<GarbageCollect>,
    /// How many imports to keep when garbage collecting (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imports_to_keep: Option<i32>,
    /// Name of the DataSource (same namespace) this cron keeps pointed at the newest import.
    pub managed_data_source: String,
    /// Whether created DataVolumes and the DataSource outlive the cron (`All`, default) or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_policy: Option<RetentionPolicy>,
    /// Creator's user info, set by CDI's mutating webhook (kept for round trips).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

impl DataImportCronSpec {
    /// The parsed schedule; `Ok(None)` when it is empty (import once).
    pub fn parsed_schedule(&self) -> Result<Option<Schedule>, CronError> {
        if self.schedule.is_empty() {
            return Ok(None);
        }
        Schedule::parse(&self.schedule).map(Some)
    }

    /// `importsToKeep`, defaulted as CDI does.
    pub fn imports_to_keep_or_default(&self) -> i32 {
        self.imports_to_keep.unwrap_or(3)
    }
}

/// `DataImportCronGarbageCollect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum GarbageCollect {
    /// Delete imports beyond `importsToKeep`.
    Outdated,
    /// Keep every import.
    Never,
}

/// `DataImportCronRetentionPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum RetentionPolicy {
    /// Delete created DataVolumes and the DataSource with the cron.
    None,
    /// Keep them.
    All,
}

/// `DataImportCronStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataImportCronStatus {
    /// Imports in progress (CDI runs one at a time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_imports: Vec<ImportStatus>,
    /// The last claim imported.
    #[serde(default, rename = "lastImportedPVC", skip_serializing_if = "Option::is_none")]
    pub last_imported_pvc: Option<PvcSource>,
    /// When the registry was last polled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_timestamp: Option<Timestamp>,
    /// When the last import finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_import_timestamp: Option<Timestamp>,
    /// `pvc` or `snapshot`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_format: Option<SourceFormat>,
    /// Conditions `Progressing`, `UpToDate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `ImportStatus` (CDI spells these two keys with capitals).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImportStatus {
    /// The DataVolume doing the import.
    #[serde(rename = "DataVolumeName")]
    pub data_volume_name: String,
    /// Digest of the image being imported.
    #[serde(rename = "Digest")]
    pub digest: String,
}

/// `DataImportCronSourceFormat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceFormat {
    /// Imports are kept as claims.
    Pvc,
    /// Imports are kept as snapshots.
    Snapshot,
}
