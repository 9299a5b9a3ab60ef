//! `DataVolume` (`cdi.kubevirt.io/v1beta1`): a volume together with where its data comes from.

use std::fmt;

use serde::{Deserialize, Serialize};
use virt_core::api::{ObjectMeta, Quantity};

use super::meta::{Condition, PersistentVolumeClaimSpec, StorageSpec};

/// The API group and version of every CDI kind modelled here.
pub const API_VERSION: &str = "cdi.kubevirt.io/v1beta1";

/// A DataVolume. Also the shape of KubeVirt's `dataVolumeTemplates` entries and of a
/// DataImportCron's `spec.template`, where `apiVersion`, `kind` and `status` are usually absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolume {
    /// `cdi.kubevirt.io/v1beta1` for a top-level object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `DataVolume` for a top-level object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// Desired state.
    pub spec: DataVolumeSpec,
    /// Observed state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DataVolumeStatus>,
}

impl DataVolume {
    /// A top-level DataVolume with `apiVersion` and `kind` filled in.
    pub fn new(metadata: ObjectMeta, spec: DataVolumeSpec) -> Self {
        Self {
            api_version: Some(API_VERSION.to_string()),
            kind: Some("DataVolume".to_string()),
            metadata,
            spec,
            status: None,
        }
    }
}

/// `DataVolumeSpec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSpec {
    /// Where the data comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataVolumeSource>,
    /// Indirect source: a DataSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ref: Option<DataVolumeSourceRef>,
    /// Target volume as a full claim spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PersistentVolumeClaimSpec>,
    /// Target volume, completed from the StorageProfile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Priority class of the importer/cloner/uploader pod (accepted; no pods here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// `kubevirt` (a disk image, the default) or `archive` (a tar to unpack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<ContentType>,
    /// Multi-stage (warm migration) checkpoints (unsupported).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<DataVolumeCheckpoint>,
    /// Whether the current checkpoint is the last (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_checkpoint: Option<bool>,
    /// Allocate the whole volume up front instead of sparsely.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preallocation: Option<bool>,
}

impl DataVolumeSpec {
    /// The requested size, from `spec.storage` or `spec.pvc`, if set.
    pub fn requested_size(&self) -> Option<&Quantity> {
        if let Some(storage) = &self.storage {
            return storage.resources.as_ref().and_then(|r| r.storage());
        }
        self.pvc.as_ref().and_then(|p| p.resources.as_ref()).and_then(|r| r.storage())
    }
}

/// `DataVolumeContentType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentType {
    /// A disk image (raw, qcow2, possibly compressed).
    Kubevirt,
    /// A tar archive unpacked onto a filesystem volume.
    Archive,
}

/// `DataVolumeCheckpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeCheckpoint {
    /// Snapshot of the previous checkpoint.
    pub previous: String,
    /// Snapshot of this checkpoint.
    pub current: String,
}

/// `DataVolumeSource`: exactly one member must be set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSource {
    /// Import over HTTP(S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// Import from S3 (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Source>,
    /// Import from Google Cloud Storage (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcs: Option<GcsSource>,
    /// Import a container disk from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySource>,
    /// Clone another claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// Wait for an upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
    /// Create an empty disk image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blank: Option<BlankSource>,
    /// Import from oVirt imageio (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imageio: Option<ImageIoSource>,
    /// Import from VMware VDDK (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vddk: Option<VddkSource>,
    /// Restore a volume snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSource>,
}

/// A borrowed view of the one source a valid DataVolume has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind<'a> {
    /// `http`.
    Http(&'a HttpSource),
    /// `registry`.
    Registry(&'a RegistrySource),
    /// `pvc`.
    Pvc(&'a PvcSource),
    /// `snapshot`.
    Snapshot(&'a SnapshotSource),
    /// `upload`.
    Upload,
    /// `blank`.
    Blank,
    /// `s3` (unsupported).
    S3(&'a S3Source),
    /// `gcs` (unsupported).
    Gcs(&'a GcsSource),
    /// `imageio` (unsupported).
    ImageIo(&'a ImageIoSource),
    /// `vddk` (unsupported).
    Vddk(&'a VddkSource),
}

impl SourceKind<'_> {
    /// The field name of this source under `spec.source`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Registry(_) => "registry",
            Self::Pvc(_) => "pvc",
            Self::Snapshot(_) => "snapshot",
            Self::Upload => "upload",
            Self::Blank => "blank",
            Self::S3(_) => "s3",
            Self::Gcs(_) => "gcs",
            Self::ImageIo(_) => "imageio",
            Self::Vddk(_) => "vddk",
        }
    }

    /// Whether the data is copied from an existing volume or snapshot (the size may then be
    /// taken from the source).
    pub fn is_clone(&self) -> bool {
        matches!(self, Self::Pvc(_) | Self::Snapshot(_))
    }
}

impl fmt::Display for SourceKind<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

impl DataVolumeSource {
    /// Every source member that is set, in field order.
    pub fn set(&self) -> Vec<SourceKind<'_>> {
        let mut v = Vec::new();
        if let Some(s) = &self.http {
            v.push(SourceKind::Http(s));
        }
        if let Some(s) = &self.s3 {
            v.push(SourceKind::S3(s));
        }
        if let Some(s) = &self.gcs {
            v.push(SourceKind::Gcs(s));
        }
        if let Some(s) = &self.registry {
            v.push(SourceKind::Registry(s));
        }
        if let Some(s) = &self.pvc {
            v.push(SourceKind::Pvc(s));
        }
        if self.upload.is_some() {
            v.push(SourceKind::Upload);
        }
        if self.blank.is_some() {
            v.push(SourceKind::Blank);
        }
        if let Some(s) = &self.imageio {
            v.push(SourceKind::ImageIo(s));
        }
        if let Some(s) = &self.vddk {
            v.push(SourceKind::Vddk(s));
        }
        if let Some(s) = &self.snapshot {
            v.push(SourceKind::Snapshot(s));
        }
        v
    }

    /// The source, if exactly one member is set.
    pub fn single(&self) -> Option<SourceKind<'_>> {
        match self.set().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }
}

/// `DataVolumeSourceHTTP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// `http://` or `https://` URL of the image.
    pub url: String,
    /// Secret with `accessKeyId` and `secretKey` for basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ConfigMap with extra CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Extra request headers, `Name: value`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_headers: Vec<String>,
    /// Secrets each holding an extra request header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_extra_headers: Vec<String>,
}

/// `DataVolumeSourceS3` (unsupported; modelled so that it loads and is refused by validation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Source {
    /// Object URL.
    pub url: String,
    /// Credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// CA ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
}

/// `DataVolumeSourceGCS` (unsupported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GcsSource {
    /// Object URL.
    pub url: String,
    /// Credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
}

/// `DataVolumeSourceImageIO` (unsupported).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageIoSource {
    /// oVirt engine URL.
    pub url: String,
    /// Disk id.
    pub disk_id: String,
    /// Credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// CA ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Skip TLS verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// `DataVolumeSourceVDDK` (unsupported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VddkSource {
    /// vCenter or ESXi URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// VM UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Backing file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backing_file: Option<String>,
    /// Host certificate thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbprint: Option<String>,
    /// Credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// VDDK library image.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "initImageURL")]
    pub init_image_url: Option<String>,
    /// ConfigMap of extra VDDK arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_args: Option<String>,
}

/// `DataVolumeSourceRegistry`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySource {
    /// `docker://host/repo[:tag|@digest]` or `oci-archive://path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// OpenShift ImageStream name (unsupported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_stream: Option<String>,
    /// `pod` or `node` (accepted; both pull on this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_method: Option<PullMethod>,
    /// Registry credentials secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<String>,
    /// ConfigMap with registry CA certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_config_map: Option<String>,
    /// Image platform to pick from a multi-arch index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformOptions>,
}

/// `RegistryPullMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullMethod {
    /// Pulled by an importer pod.
    Pod,
    /// Pulled by the node's container runtime.
    Node,
}

/// `PlatformOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformOptions {
    /// CPU architecture (`amd64`, `arm64`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// `DataVolumeSourcePVC`: a claim to clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Namespace of the source claim.
    pub namespace: String,
    /// Name of the source claim.
    pub name: String,
}

/// `DataVolumeSourceSnapshot`: a volume snapshot to restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSource {
    /// Namespace of the snapshot.
    pub namespace: String,
    /// Name of the snapshot.
    pub name: String,
}

/// `DataVolumeSourceUpload` (no fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadSource {}

/// `DataVolumeBlankImage` (no fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BlankSource {}

/// `DataVolumeSourceRef`: a DataSource standing for the real source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeSourceRef {
    /// Must be `DataSource`.
    pub kind: String,
    /// Namespace of the DataSource (default: the DataVolume's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name of the DataSource.
    pub name: String,
}

/// `DataVolumeStatus`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DataVolumeStatus {
    /// Name of the claim (volume) holding the data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DataVolumePhase>,
    /// Transfer progress, `"45.20%"` or `"N/A"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<DataVolumeProgress>,
    /// How often the transfer was restarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_count: Option<i32>,
    /// Conditions `Bound`, `Ready`, `Running`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// `DataVolumePhase`: every phase CDI defines, so that status read from a cluster loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub enum DataVolumePhase {
    /// Nothing has happened yet.
    Pending,
    /// The claim is bound.
    #[serde(rename = "PVCBound")]
    PvcBound,
    /// An import is queued.
    ImportScheduled,
    /// An import is running.
    ImportInProgress,
    /// A clone is queued.
    CloneScheduled,
    /// A clone is running.
    CloneInProgress,
    /// Snapshotting the source for a smart clone.
    SnapshotForSmartCloneInProgress,
    /// Cloning from a snapshot source.
    CloneFromSnapshotSourceInProgress,
    /// Creating the claim of a smart clone.
    SmartClonePVCInProgress,
    /// A CSI clone is running.
    #[serde(rename = "CSICloneInProgress")]
    CsiCloneInProgress,
    /// The target is being expanded.
    ExpansionInProgress,
    /// The claim is moving between namespaces.
    NamespaceTransferInProgress,
    /// An upload server is being started.
    UploadScheduled,
    /// Ready to receive an upload.
    UploadReady,
    /// Waiting for the first consumer to be scheduled.
    WaitForFirstConsumer,
    /// Waiting for the populator to create the claim.
    PendingPopulation,
    /// Data is in place.
    Succeeded,
    /// Population failed.
    Failed,
    /// State unknown.
    Unknown,
    /// Multi-stage import paused.
    Paused,
    /// Preparing the claim.
    PrepClaimInProgress,
    /// Rebinding the claim.
    RebindInProgress,
}

/// `DataVolumeProgress`: `"N/A"` or a percentage like `"45.20%"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct DataVolumeProgress(pub String);

impl DataVolumeProgress {
    /// Progress of `done` out of `total` bytes, formatted as CDI does (`"%.2f%%"`).
    pub fn from_bytes(done: u64, total: u64) -> Self {
        if total == 0 {
            return Self("N/A".to_string());
        }
        // Precision loss is irrelevant for a percentage with two decimals.
        #[allow(clippy::cast_precision_loss)]
        let pct = (done.min(total) as f64) * 100.0 / (total as f64);
        Self(format!("{pct:.2}%"))
    }

    /// The percentage, or `None` for `N/A` or malformed text.
    pub fn percent(&self) -> Option<f64> {
        let v: f64 = self.0.strip_suffix('%')?.parse().ok()?;
        (v.is_finite() && (0.0..=100.0).contains(&v)).then_some(v)
    }

    /// Whether the text is `N/A` or a percentage between 0 and 100.
    pub fn is_well_formed(&self) -> bool {
        self.0 == "N/A" || self.percent().is_some()
    }
}
