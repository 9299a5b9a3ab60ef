//! `DataSource` (`cdi.kubevirt.io/v1beta1`): a named pointer to the current golden image, which
//! DataVolumes reference through `spec.sourceRef` and DataImportCrons keep up to date.

use serde::{Deserialize, Serialize};
use virt_core::api::ObjectMeta;

use super::datavolume::{PvcSource, SnapshotSource};
use super::meta::Condition;

/// A DataSource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSource {
    /// `cdi.kubevirt.io/v1beta1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `DataSource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: DataSourceSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataSourceStatus>,
}

/// `DataSourceSpec`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSpec {
    /// What the DataSource points at; empty until a DataImportCron has imported something.
    pub source: DataSourceSource,
}

/// `DataSourceSource`: at most one member is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceSource {
    /// A claim holding the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// A snapshot holding the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
    /// Another DataSource (one level of indirection at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_source: Option<DataSourceReference>,
}

impl DataSourceSource {
    /// Names of the members that are set.
    pub fn set(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.pvc.is_some() {
            v.push("pvc");
        }
        if self.snapshot.is_some() {
            v.push("snapshot");
        }
        if self.data_source.is_some() {
            v.push("dataSource");
        }
        v
    }
}

/// `DataSourceRefSourceDataSource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceReference {
    /// Namespace of the referenced DataSource.
    pub namespace: String,
    /// Name of the referenced DataSource.
    pub name: String,
}

/// `DataSourceStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataSourceStatus {
    /// The resolved source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataSourceSource>,
    /// Condition `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
