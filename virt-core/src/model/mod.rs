//! KubeVirt's API as Rust types: `kubevirt.io/v1` VirtualMachine and VirtualMachineInstance (and
//! the replica set and migration kinds), `instancetype.kubevirt.io/v1beta1` instancetypes and
//! preferences, and the pool, snapshot, clone and migration-policy kinds as far as KubeVirt's
//! examples use them. Same field names and YAML shape as KubeVirt, so its manifests load
//! unchanged.
//!
//! Loading is [`crate::api`]'s: as strict as the Kubernetes API server with strict field
//! validation, every unknown field or bad value named by its full path. Then:
//!
//! * [`Validate`] checks an object the way KubeVirt's admission webhooks do (disks have volumes,
//!   interfaces have networks, one source per volume, Secure Boot has SMM, ...);
//! * [`NodeSupport`] says what this node can do, and [`Admit::admit`] refuses what it cannot (a
//!   GPU, a host device, SR-IOV, a Multus network, dedicated CPUs, ...) with the path of the field,
//!   at create time, never silently;
//! * [`resolve`] applies an instancetype and a preference to a VirtualMachine the way KubeVirt
//!   does, refusing conflicts by path.
//!
//! ```
//! use virt_core::model::{self, Admit, KubeVirtObject, NodeSupport, VirtualMachineInstance};
//!
//! let yaml = r#"
//! apiVersion: kubevirt.io/v1
//! kind: VirtualMachineInstance
//! metadata:
//!   name: demo
//! spec:
//!   domain:
//!     devices:
//!       disks:
//!       - name: root
//!         disk: {bus: virtio}
//!     memory:
//!       guest: 128Mi
//!   volumes:
//!   - name: root
//!     containerDisk:
//!       image: quay.io/containerdisks/cirros:0.6
//! "#;
//! let vmi: VirtualMachineInstance = model::from_yaml(yaml)?;
//! assert_eq!(vmi.spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref()).map(|q| q.bytes()), Some(128 << 20));
//! let warnings = vmi.admit(&NodeSupport::default())?; // Err lists every problem with its path
//! assert!(warnings.is_empty());
//!
//! // Unknown fields are errors that name their full path.
//! let typo = yaml.replace("guest:", "gust:");
//! let err = model::from_yaml::<VirtualMachineInstance>(&typo).unwrap_err();
//! assert!(err.to_string().contains("spec.domain.memory.gust: unknown field"), "{err}");
//!
//! // What the node cannot do is refused, naming the field.
//! let gpu = yaml.replace("      disks:", "      gpus:\n      - {name: gpu1, deviceName: nvidia.com/TU104GL}\n      disks:");
//! let docs = model::load_yaml(&gpu)?;
//! let err = docs[0].object.admit(&NodeSupport::default()).unwrap_err();
//! assert!(err.to_string().contains("spec.domain.devices.gpus: unsupported: GPUs are not supported on this node"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What is accepted, refused and how instancetypes resolve is in `docs/vm-model.md`.

pub mod credentials;
mod devices;
mod domain;
mod instancetype;
mod network;
mod node;
mod resolve;
mod validate;
mod vm;
mod vmi;
mod volumes;
mod workloads;

use std::fmt;
use std::path::Path;

use serde_json::Value;

use crate::api::{
    self, Decoder, Document, Kinds, LoadError, LoadOptions, SerializeError, Validate, Validation,
};

pub use devices::{
    BlockSize, CdromTarget, CustomBlockSize, Devices, Disk, DiskBus, DiskCache, DiskErrorPolicy, DiskIo,
    DiskTarget, Filesystem, Gpu, HostDevice, Input, InputBus, InputType, LunTarget, PanicDevice, Sound, Tpm,
    TrayState, Video, Watchdog, WatchdogAction,
};
pub use domain::{
    Bios, Bootloader, Chassis, Clock, ClockOffset, ClockOffsetUtc, Cpu, CpuFeature, DiskIoThreads,
    DomainSpec, Efi, Empty, FeatureApic, FeatureHyperv, FeatureKvm, FeatureSpinlocks, FeatureState,
    FeatureVendorId, Features, Firmware, FirmwareAcpi, HpetTickPolicy, HpetTimer, Hugepages,
    HypervPassthrough, IoThreadsPolicy, KernelBoot, KernelBootContainer, Machine, Memory, Numa,
    PitTickPolicy, PitTimer, PresentTimer, PullPolicy, Realtime, RebootPolicy, ResourceRequirements,
    RtcTickPolicy, RtcTimer, RtcTrack, SyNicTimer, Timer, TlbFlush,
};
pub use instancetype::{
    ClockPreferences, CpuInstancetype, CpuPreferences, CpuRequirement, DevicePreferences, FeaturePreferences,
    FirmwarePreferences, InstancetypeSpec, MachinePreferences, MemoryInstancetype, MemoryRequirement,
    PreferenceRequirements, PreferenceSpec, PreferredCpuTopology, SpreadAcross, SpreadOptions,
    VirtualMachineClusterInstancetype, VirtualMachineClusterPreference, VirtualMachineInstancetype,
    VirtualMachinePreference, VolumePreferences, INSTANCETYPE_API_VERSION,
};
pub use network::{
    Binding, DhcpOptions, DhcpPrivateOption, Interface, InterfaceState, MultusNetwork, Network,
    PluginBinding, PodNetwork, Port,
};
pub use node::{host_disk_path_problem, Admit, NodeSupport};
pub use resolve::{resolve, Catalog, InstancetypeKind, PreferenceKind, ResolveError};
pub use vm::{
    DataVolumeTemplateSpec, InstancetypeMatcher, PreferenceMatcher, RunStrategy, VirtualMachine,
    VirtualMachineSpec, VirtualMachineStatus,
};
pub use vmi::{
    Condition, CpuTopology, EvictionStrategy, GuestOsInfo, MemoryStatus, MigrationState,
    NetworkInterfaceStatus, PhaseTransition, StartStrategy, Toleration, VirtualMachineInstance,
    VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VirtualMachineInstanceTemplateSpec, VmiPhase,
};
pub use volumes::{
    CloudInitSource, ConfigMapVolumeSource, ContainerDiskSource, DataVolumeSource, DownwardApiVolumeSource,
    EmptyDiskSource, EphemeralVolumeSource, HostDisk, HostDiskType, PvcVolumeSource, SecretVolumeSource,
    ServiceAccountVolumeSource, SysprepSource, Volume, VolumeKind,
};
pub use workloads::{
    CloneSpec, CloneTemplateFilters, MigrationPolicy, MigrationPolicySelectors, MigrationPolicySpec,
    MigrationSpec, PoolSpec, ReplicaSetSpec, ReplicaSetStatus, SnapshotSpec, VirtualMachineClone,
    VirtualMachineInstanceMigration, VirtualMachineInstanceReplicaSet, VirtualMachinePool,
    VirtualMachineSnapshot, VirtualMachineTemplateSpec,
};

/// The group and version of VirtualMachine, VirtualMachineInstance, replica sets and migrations.
pub const API_VERSION: &str = "kubevirt.io/v1";
/// The group and version of VirtualMachinePool.
pub const POOL_API_VERSION: &str = "pool.kubevirt.io/v1beta1";
/// The group and version of VirtualMachineSnapshot.
pub const SNAPSHOT_API_VERSION: &str = "snapshot.kubevirt.io/v1beta1";
/// The group and version of VirtualMachineClone.
pub const CLONE_API_VERSION: &str = "clone.kubevirt.io/v1beta1";
/// The group and version of MigrationPolicy.
pub const MIGRATIONS_API_VERSION: &str = "migrations.kubevirt.io/v1alpha1";

/// A loaded KubeVirt document.
#[derive(Debug, Clone, PartialEq)]
pub enum KubeVirtObject {
    /// A VirtualMachine.
    VirtualMachine(Box<VirtualMachine>),
    /// A VirtualMachineInstance.
    VirtualMachineInstance(Box<VirtualMachineInstance>),
    /// A VirtualMachineInstanceReplicaSet.
    VirtualMachineInstanceReplicaSet(Box<VirtualMachineInstanceReplicaSet>),
    /// A VirtualMachineInstanceMigration.
    VirtualMachineInstanceMigration(Box<VirtualMachineInstanceMigration>),
    /// A VirtualMachinePool.
    VirtualMachinePool(Box<VirtualMachinePool>),
    /// A VirtualMachineSnapshot.
    VirtualMachineSnapshot(Box<VirtualMachineSnapshot>),
    /// A VirtualMachineClone.
    VirtualMachineClone(Box<VirtualMachineClone>),
    /// A MigrationPolicy.
    MigrationPolicy(Box<MigrationPolicy>),
    /// A VirtualMachineInstancetype.
    VirtualMachineInstancetype(Box<VirtualMachineInstancetype>),
    /// A VirtualMachineClusterInstancetype.
    VirtualMachineClusterInstancetype(Box<VirtualMachineClusterInstancetype>),
    /// A VirtualMachinePreference.
    VirtualMachinePreference(Box<VirtualMachinePreference>),
    /// A VirtualMachineClusterPreference.
    VirtualMachineClusterPreference(Box<VirtualMachineClusterPreference>),
    /// Not a KubeVirt kind modelled here (a DataVolume, a Secret, a KubeVirt CR...).
    Skipped(Skipped),
}

/// A document passed over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its apiVersion.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// The modelled kinds: (group, version, kind).
const MODELLED: &[(&str, &str, &str)] = &[
    ("kubevirt.io", "v1", "VirtualMachine"),
    ("kubevirt.io", "v1", "VirtualMachineInstance"),
    ("kubevirt.io", "v1", "VirtualMachineInstanceReplicaSet"),
    ("kubevirt.io", "v1", "VirtualMachineInstanceMigration"),
    ("pool.kubevirt.io", "v1beta1", "VirtualMachinePool"),
    ("snapshot.kubevirt.io", "v1beta1", "VirtualMachineSnapshot"),
    ("clone.kubevirt.io", "v1beta1", "VirtualMachineClone"),
    ("migrations.kubevirt.io", "v1alpha1", "MigrationPolicy"),
    ("instancetype.kubevirt.io", "v1beta1", "VirtualMachineInstancetype"),
    ("instancetype.kubevirt.io", "v1beta1", "VirtualMachineClusterInstancetype"),
    ("instancetype.kubevirt.io", "v1beta1", "VirtualMachinePreference"),
    ("instancetype.kubevirt.io", "v1beta1", "VirtualMachineClusterPreference"),
];

fn supported_version(group: &str) -> &'static str {
    match group {
        "pool.kubevirt.io" => POOL_API_VERSION,
        "snapshot.kubevirt.io" => SNAPSHOT_API_VERSION,
        "clone.kubevirt.io" => CLONE_API_VERSION,
        "migrations.kubevirt.io" => MIGRATIONS_API_VERSION,
        "instancetype.kubevirt.io" => INSTANCETYPE_API_VERSION,
        _ => API_VERSION,
    }
}

fn skip_reason(group: &str, kind: &str) -> String {
    match group {
        "cdi.kubevirt.io" => format!("CDI {kind}: virt_storage::cdi loads CDI objects"),
        "kubevirt.io" => format!("KubeVirt {kind} is not one of the kinds modelled here"),
        g if g.ends_with(".kubevirt.io") => format!("{g} {kind} is not one of the kinds modelled here"),
        "" => format!("core Kubernetes {kind}: not a KubeVirt object"),
        _ => format!("{kind} is not a KubeVirt object"),
    }
}

impl Kinds for KubeVirtObject {
    fn decode(doc: Document, decoder: &mut Decoder<'_>) -> Result<Self, LoadError> {
        let known = MODELLED.iter().find(|(g, _, k)| *g == doc.group && *k == doc.kind);
        let Some((group, version, _)) = known else {
            let reason = skip_reason(&doc.group, &doc.kind);
            return Ok(Self::Skipped(Skipped {
                api_version: doc.api_version,
                kind: doc.kind,
                name: doc.name,
                reason,
            }));
        };
        if doc.version != *version {
            return Err(LoadError::UnsupportedVersion {
                document: doc.number,
                api_version: doc.api_version,
                kind: doc.kind,
                supported: supported_version(group),
            });
        }
        let v = doc.value;
        Ok(match doc.kind.as_str() {
            "VirtualMachine" => Self::VirtualMachine(Box::new(decoder.decode(v, "")?)),
            "VirtualMachineInstance" => Self::VirtualMachineInstance(Box::new(decoder.decode(v, "")?)),
            "VirtualMachineInstanceReplicaSet" => {
                Self::VirtualMachineInstanceReplicaSet(Box::new(decoder.decode(v, "")?))
            }
            "VirtualMachineInstanceMigration" => {
                Self::VirtualMachineInstanceMigration(Box::new(decoder.decode(v, "")?))
            }
            "VirtualMachinePool" => Self::VirtualMachinePool(Box::new(decoder.decode(v, "")?)),
            "VirtualMachineSnapshot" => Self::VirtualMachineSnapshot(Box::new(decoder.decode(v, "")?)),
            "VirtualMachineClone" => Self::VirtualMachineClone(Box::new(decoder.decode(v, "")?)),
            "MigrationPolicy" => Self::MigrationPolicy(Box::new(decoder.decode(v, "")?)),
            "VirtualMachineInstancetype" => {
                Self::VirtualMachineInstancetype(Box::new(decoder.decode(v, "")?))
            }
            "VirtualMachineClusterInstancetype" => {
                Self::VirtualMachineClusterInstancetype(Box::new(decoder.decode(v, "")?))
            }
            "VirtualMachinePreference" => Self::VirtualMachinePreference(Box::new(decoder.decode(v, "")?)),
            _ => Self::VirtualMachineClusterPreference(Box::new(decoder.decode(v, "")?)),
        })
    }

    fn kind(&self) -> &str {
        KubeVirtObject::kind(self)
    }
}

macro_rules! each_object {
    ($self:expr, $o:ident => $e:expr, $skipped:ident => $s:expr) => {
        match $self {
            KubeVirtObject::VirtualMachine($o) => $e,
            KubeVirtObject::VirtualMachineInstance($o) => $e,
            KubeVirtObject::VirtualMachineInstanceReplicaSet($o) => $e,
            KubeVirtObject::VirtualMachineInstanceMigration($o) => $e,
            KubeVirtObject::VirtualMachinePool($o) => $e,
            KubeVirtObject::VirtualMachineSnapshot($o) => $e,
            KubeVirtObject::VirtualMachineClone($o) => $e,
            KubeVirtObject::MigrationPolicy($o) => $e,
            KubeVirtObject::VirtualMachineInstancetype($o) => $e,
            KubeVirtObject::VirtualMachineClusterInstancetype($o) => $e,
            KubeVirtObject::VirtualMachinePreference($o) => $e,
            KubeVirtObject::VirtualMachineClusterPreference($o) => $e,
            KubeVirtObject::Skipped($skipped) => $s,
        }
    };
}

impl KubeVirtObject {
    /// The kind (`VirtualMachine`, ... or the skipped document's kind).
    pub fn kind(&self) -> &str {
        each_object!(self, o => &o.kind, s => &s.kind)
    }

    /// The metadata, unless the document was skipped.
    pub fn metadata(&self) -> Option<&api::ObjectMeta> {
        each_object!(self, o => Some(&o.metadata), _s => None)
    }

    /// Writes the object as YAML; a skipped document gives an empty string.
    pub fn to_yaml(&self) -> Result<String, SerializeError> {
        each_object!(self, o => api::to_yaml(o.as_ref()), _s => Ok(String::new()))
    }

    /// Writes the object as JSON (`null` for a skipped document).
    pub fn to_json_value(&self) -> Result<Value, SerializeError> {
        each_object!(self, o => Ok(serde_json::to_value(o.as_ref())?), _s => Ok(Value::Null))
    }
}

impl fmt::Display for KubeVirtObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Skipped(s) => write!(f, "{s}"),
            other => f.write_str(&other.describe()),
        }
    }
}

impl Validate for KubeVirtObject {
    fn validate(&self) -> Validation {
        each_object!(self, o => o.validate(), _s => Validation::default())
    }

    fn describe(&self) -> String {
        each_object!(self, o => o.describe(), s => format!("{} {}", s.kind, s.name.as_deref().unwrap_or("<unnamed>")))
    }
}

impl Admit for KubeVirtObject {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        each_object!(self, o => o.node_problems(node), _s => Validation::default())
    }
}

/// A loaded KubeVirt document with its number and any unknown-field warnings.
pub type Loaded = api::Loaded<KubeVirtObject>;

/// Loads every document of a YAML stream, strictly.
pub fn load_yaml(text: &str) -> Result<Vec<Loaded>, LoadError> {
    api::load_yaml(text)
}

/// Loads every document of a YAML stream; stops at the first document that fails.
pub fn load_yaml_with(text: &str, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    api::load_yaml_with(text, options)
}

/// Loads one JSON document, strictly.
pub fn load_json(text: &str) -> Result<Loaded, LoadError> {
    api::load_json(text)
}

/// Loads one JSON document.
pub fn load_json_with(text: &str, options: &LoadOptions) -> Result<Loaded, LoadError> {
    api::load_json_with(text, options)
}

/// Loads a file: JSON if its name ends in `.json`, YAML otherwise. Errors name the file.
pub fn load_file(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    api::load_file(path, options)
}

/// A kind that [`from_yaml`] and [`from_json`] can return directly.
pub trait Resource: Sized {
    /// The kind name.
    const KIND: &'static str;
    /// The object, if it is of this kind.
    fn from_object(object: KubeVirtObject) -> Option<Self>;
}

macro_rules! resource {
    ($($t:ident),*) => {$(
        impl Resource for $t {
            const KIND: &'static str = stringify!($t);
            fn from_object(object: KubeVirtObject) -> Option<Self> {
                match object {
                    KubeVirtObject::$t(o) => Some(*o),
                    _ => None,
                }
            }
        }
    )*};
}
resource!(
    VirtualMachine,
    VirtualMachineInstance,
    VirtualMachineInstanceReplicaSet,
    VirtualMachineInstanceMigration,
    VirtualMachinePool,
    VirtualMachineSnapshot,
    VirtualMachineClone,
    MigrationPolicy,
    VirtualMachineInstancetype,
    VirtualMachineClusterInstancetype,
    VirtualMachinePreference,
    VirtualMachineClusterPreference
);

/// Loads a YAML text holding exactly one object of kind `T`, strictly.
pub fn from_yaml<T: Resource>(text: &str) -> Result<T, LoadError> {
    api::exactly_one(load_yaml(text)?, T::KIND, T::from_object)
}

/// Loads a JSON text holding one object of kind `T`, strictly.
pub fn from_json<T: Resource>(text: &str) -> Result<T, LoadError> {
    api::exactly_one(vec![load_json(text)?], T::KIND, T::from_object)
}

/// Writes any of the types of this module as YAML (camelCase keys, unset fields left out).
pub fn to_yaml<T: serde::Serialize>(object: &T) -> Result<String, SerializeError> {
    api::to_yaml(object)
}

/// Writes any of the types of this module as pretty-printed JSON.
pub fn to_json<T: serde::Serialize + ?Sized>(object: &T) -> Result<String, SerializeError> {
    api::to_json(object)
}
