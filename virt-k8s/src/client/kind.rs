//! The kinds the client sends and reads, each an entry of the [`registry`](crate::registry).

use std::fmt;

use crate::registry::{self, Resource};

/// The kinds of object the node stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `kubevirt.io/v1` VirtualMachine.
    VirtualMachine,
    /// `kubevirt.io/v1` VirtualMachineInstance.
    VirtualMachineInstance,
    /// core `v1` Namespace (cluster-scoped).
    Namespace,
    /// `instancetype.kubevirt.io/v1beta1` VirtualMachineInstancetype.
    Instancetype,
    /// `instancetype.kubevirt.io/v1beta1` VirtualMachineClusterInstancetype (cluster-scoped).
    ClusterInstancetype,
    /// `instancetype.kubevirt.io/v1beta1` VirtualMachinePreference.
    Preference,
    /// `instancetype.kubevirt.io/v1beta1` VirtualMachineClusterPreference (cluster-scoped).
    ClusterPreference,
    /// `cdi.kubevirt.io/v1beta1` DataVolume.
    DataVolume,
    /// `cdi.kubevirt.io/v1beta1` DataSource.
    DataSource,
    /// `cdi.kubevirt.io/v1beta1` DataImportCron.
    DataImportCron,
    /// `snapshot.storage.k8s.io/v1` VolumeSnapshot.
    VolumeSnapshot,
    /// core `v1` Secret.
    Secret,
    /// core `v1` ConfigMap.
    ConfigMap,
    /// `kubevirt.io/v1` VirtualMachineInstanceMigration.
    Migration,
    /// `migrations.kubevirt.io/v1alpha1` MigrationPolicy (cluster-scoped).
    MigrationPolicy,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 15] = [
        Self::VirtualMachine,
        Self::VirtualMachineInstance,
        Self::Namespace,
        Self::Instancetype,
        Self::ClusterInstancetype,
        Self::Preference,
        Self::ClusterPreference,
        Self::DataVolume,
        Self::DataSource,
        Self::DataImportCron,
        Self::VolumeSnapshot,
        Self::Secret,
        Self::ConfigMap,
        Self::Migration,
        Self::MigrationPolicy,
    ];

    /// The kind of an object with this `apiVersion` and `kind`.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.api_version() == api_version && k.name() == kind)
    }

    /// The resource as `kubectl get` and `virtctl` accept it: plural, singular, short name or
    /// kind, optionally with its group (`vm`, `vmis`, `virtualmachines.kubevirt.io`, `vmcf`, `ns`):
    /// the names of the [`registry`](crate::registry).
    pub fn parse_resource(s: &str) -> Option<Self> {
        registry::parse(s).and_then(|r| Self::of(r.api_version, r.kind))
    }

    /// The kind's entry in the [`registry`](crate::registry).
    pub fn resource(self) -> &'static Resource {
        let name = self.name();
        // Every variant has an entry (the registry's test checks it).
        registry::RESOURCES.iter().find(|r| r.kind == name).unwrap_or(&registry::RESOURCES[0])
    }

    /// `kubevirt.io/v1`, `instancetype.kubevirt.io/v1beta1` or `v1`.
    pub fn api_version(self) -> &'static str {
        self.resource().api_version
    }

    /// The kind's name (`VirtualMachine`, `VirtualMachineClusterInstancetype`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::VirtualMachine => "VirtualMachine",
            Self::VirtualMachineInstance => "VirtualMachineInstance",
            Self::Namespace => "Namespace",
            Self::Instancetype => "VirtualMachineInstancetype",
            Self::ClusterInstancetype => "VirtualMachineClusterInstancetype",
            Self::Preference => "VirtualMachinePreference",
            Self::ClusterPreference => "VirtualMachineClusterPreference",
            Self::DataVolume => "DataVolume",
            Self::DataSource => "DataSource",
            Self::DataImportCron => "DataImportCron",
            Self::VolumeSnapshot => "VolumeSnapshot",
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
            Self::Migration => "VirtualMachineInstanceMigration",
            Self::MigrationPolicy => "MigrationPolicy",
        }
    }

    /// The plural resource name in paths: `virtualmachines`, ...
    pub fn plural(self) -> &'static str {
        self.resource().plural
    }

    /// How kubectl names objects of the kind in its messages: `virtualmachine.kubevirt.io`,
    /// `namespace`, `virtualmachineclusterinstancetype.instancetype.kubevirt.io`, ...
    pub fn qualified(self) -> String {
        self.resource().qualified()
    }

    /// Whether objects of the kind live in a namespace.
    pub fn namespaced(self) -> bool {
        self.resource().namespaced
    }

    /// The collection's path: in `namespace`, or across all namespaces with `None` (cluster-scoped
    /// kinds ignore it).
    pub fn collection_path(self, namespace: Option<&str>) -> String {
        self.resource().collection_path(namespace)
    }

    /// One object's path (`namespace` is ignored for cluster-scoped kinds).
    pub fn object_path(self, namespace: &str, name: &str) -> String {
        self.resource().object_path(namespace, name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
