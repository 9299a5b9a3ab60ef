//! CDI's API (`cdi.kubevirt.io/v1beta1`) as Rust types: `DataVolume`, `DataSource`,
//! `DataImportCron` and `StorageProfile`, loaded from YAML or JSON as strictly as the
//! Kubernetes API server's strict field validation, validated like CDI's admission webhooks,
//! and written back with the same camelCase field names.
//!
//! ```
//! use virt_storage::cdi::{self, DataVolume, Validate};
//!
//! let yaml = r#"
//! apiVersion: cdi.kubevirt.io/v1beta1
//! kind: DataVolume
//! metadata:
//!   name: cirros
//! spec:
//!   source:
//!     http:
//!       url: https://download.cirros-cloud.net/0.4.0/cirros-0.4.0-x86_64-disk.img
//!   storage:
//!     resources:
//!       requests:
//!         storage: 500Mi
//! "#;
//! let dv: DataVolume = cdi::from_yaml(yaml)?;
//! let warnings = dv.check()?; // Err lists every problem with its path
//! assert!(warnings.is_empty());
//! assert_eq!(dv.spec.requested_size().map(|q| q.bytes()), Some(500 << 20));
//!
//! // Unknown fields are errors that name their full path.
//! let typo = yaml.replace("url:", "urll:");
//! let err = cdi::from_yaml::<DataVolume>(&typo).unwrap_err();
//! assert!(err.to_string().contains("spec.source.http.urll: unknown field"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What is accepted, ignored or refused as unsupported is listed in `docs/cdi-api.md`. The loader,
//! object metadata, quantities, timestamps and validation results are [`virt_core::api`]'s, shared
//! with the KubeVirt model, and re-exported here.

mod cron;
mod dataimportcron;
mod datasource;
mod datavolume;
mod load;
mod meta;
mod storageprofile;
mod validate;
mod volumesnapshot;

pub use cron::{CronError, Schedule};
pub use dataimportcron::{
    DataImportCron, DataImportCronSpec, DataImportCronStatus, GarbageCollect, ImportStatus, RetentionPolicy,
    SourceFormat,
};
pub use datasource::{DataSource, DataSourceReference, DataSourceSource, DataSourceSpec, DataSourceStatus};
pub use datavolume::{
    BlankSource, ContentType, DataVolume, DataVolumeCheckpoint, DataVolumePhase, DataVolumeProgress,
    DataVolumeSource, DataVolumeSourceRef, DataVolumeSpec, DataVolumeStatus, GcsSource, HttpSource,
    ImageIoSource, PlatformOptions, PullMethod, PvcSource, RegistrySource, S3Source, SnapshotSource,
    SourceKind, UploadSource, VddkSource, API_VERSION,
};
pub use load::{
    from_json, from_yaml, load_file, load_json, load_json_with, load_value, load_yaml, load_yaml_with,
    parse_json, parse_yaml, to_json, to_yaml, CdiObject, EmbeddedTemplate, EmbeddedTemplates, Loaded,
    Resource, Skipped,
};
pub use meta::{
    AccessMode, Condition, PersistentVolumeClaimSpec, ResourceRequirements, StorageSpec, VolumeMode,
};
pub use storageprofile::{
    ClaimPropertySet, CloneStrategy, StorageProfile, StorageProfileSpec, StorageProfileStatus,
};
pub use validate::validate_data_volume_template;
pub use virt_core::api::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, ConditionStatus, DecodeError, DecodeErrorKind,
    FieldProblem, FieldValidation, Format, LabelSelector, LabelSelectorRequirement, LoadError, LoadOptions,
    ObjectMeta, OwnerReference, ProblemKind, Quantity, QuantityError, SerializeError, Timestamp,
    TimestampError, TypedLocalObjectReference, TypedObjectReference, Validate, Validation, ValidationError,
};
pub use volumesnapshot::{
    VolumeSnapshot, VolumeSnapshotError, VolumeSnapshotInvalid, VolumeSnapshotSource, VolumeSnapshotSpec,
    VolumeSnapshotStatus, SNAPSHOT_API_VERSION,
};
