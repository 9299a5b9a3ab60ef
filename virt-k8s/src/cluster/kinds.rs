//! The project's KubeVirt and CDI types as Kubernetes resources: [`KubeKind`] names each type's
//! group, version, plural, scope, short names and printer columns, and [`Cr`] makes it a
//! `kube::Resource` without a second copy of the model.
//!
//! `kube::Resource::meta` must hand out k8s-openapi's `ObjectMeta`, while virt-core's objects carry
//! their own `api::ObjectMeta` (virt-core knows no Kubernetes client). [`Cr`] holds the project's
//! object whole (`obj`, with spec and status as virt-core and virt-storage define them) and the
//! object's metadata as k8s-openapi types it (`meta`). `meta` is authoritative: it is what a `Cr`
//! serializes, and `obj.metadata` is the metadata as it was read.

use std::borrow::Cow;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use virt_core::model::{
    MigrationPolicy, VirtualMachine, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstancetype,
    VirtualMachinePreference,
};
use virt_storage::cdi::{DataImportCron, DataSource, DataVolume};

/// A kind the cluster serves as a custom resource, implemented by the project's own types.
pub trait KubeKind:
    Serialize + DeserializeOwned + schemars::JsonSchema + Clone + Debug + Send + Sync + 'static
{
    /// API group, e.g. `kubevirt.io`.
    const GROUP: &'static str;
    /// Version served and stored, e.g. `v1`.
    const VERSION: &'static str;
    /// Kind, e.g. `VirtualMachine`.
    const KIND: &'static str;
    /// Plural resource name, e.g. `virtualmachines`.
    const PLURAL: &'static str;
    /// Namespaced (true) or cluster-scoped.
    const NAMESPACED: bool;
    /// `kubectl` short names, as KubeVirt and CDI register them.
    const SHORT_NAMES: &'static [&'static str];
    /// Categories (`kubectl get all` and KubeVirt's `kubectl get kubevirt`).
    const CATEGORIES: &'static [&'static str] = &["all"];
    /// Whether the kind has a `status` written through the `/status` subresource.
    const HAS_STATUS: bool = true;
    /// `kubectl` scope marker for kube's `Api` constructors.
    type Scope;

    /// The printer columns of `kubectl get` (`additionalPrinterColumns` entries).
    fn printer_columns() -> Vec<Value> {
        vec![age_column()]
    }
}

/// The `AGE` column every kind shows.
pub fn age_column() -> Value {
    json!({ "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" })
}

fn column(name: &str, ty: &str, path: &str) -> Value {
    json!({ "name": name, "type": ty, "jsonPath": path })
}

fn ready_column() -> Value {
    column("Ready", "string", ".status.conditions[?(@.type=='Ready')].status")
}

impl KubeKind for VirtualMachine {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachine";
    const PLURAL: &'static str = "virtualmachines";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["vm", "vms"];
    const CATEGORIES: &'static [&'static str] = &["all", "kubevirt"];
    type Scope = NamespaceResourceScope;

    fn printer_columns() -> Vec<Value> {
        vec![age_column(), column("Status", "string", ".status.printableStatus"), ready_column()]
    }
}

impl KubeKind for VirtualMachineInstance {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachineInstance";
    const PLURAL: &'static str = "virtualmachineinstances";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["vmi", "vmis"];
    const CATEGORIES: &'static [&'static str] = &["all", "kubevirt"];
    type Scope = NamespaceResourceScope;

    fn printer_columns() -> Vec<Value> {
        vec![
            age_column(),
            column("Phase", "string", ".status.phase"),
            column("IP", "string", ".status.interfaces[0].ipAddress"),
            column("NodeName", "string", ".status.nodeName"),
            ready_column(),
        ]
    }
}

impl KubeKind for VirtualMachineInstanceMigration {
    const GROUP: &'static str = "kubevirt.io";
    const VERSION: &'static str = "v1";
    const KIND: &'static str = "VirtualMachineInstanceMigration";
    const PLURAL: &'static str = "virtualmachineinstancemigrations";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["vmim", "vmims"];
    const CATEGORIES: &'static [&'static str] = &["all", "kubevirt"];
    type Scope = NamespaceResourceScope;

    fn printer_columns() -> Vec<Value> {
        vec![column("Phase", "string", ".status.phase"), column("VMI", "string", ".spec.vmiName")]
    }
}

impl KubeKind for MigrationPolicy {
    const GROUP: &'static str = "migrations.kubevirt.io";
    const VERSION: &'static str = "v1alpha1";
    const KIND: &'static str = "MigrationPolicy";
    const PLURAL: &'static str = "migrationpolicies";
    const NAMESPACED: bool = false;
    const SHORT_NAMES: &'static [&'static str] = &[];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = false;
    type Scope = ClusterResourceScope;
}

macro_rules! instancetype_kind {
    ($ty:ty, $kind:literal, $plural:literal, $namespaced:expr, $scope:ty, [$($short:literal),*]) => {
        impl KubeKind for $ty {
            const GROUP: &'static str = "instancetype.kubevirt.io";
            const VERSION: &'static str = "v1beta1";
            const KIND: &'static str = $kind;
            const PLURAL: &'static str = $plural;
            const NAMESPACED: bool = $namespaced;
            const SHORT_NAMES: &'static [&'static str] = &[$($short),*];
            const CATEGORIES: &'static [&'static str] = &["all"];
            const HAS_STATUS: bool = false;
            type Scope = $scope;
        }
    };
}

instancetype_kind!(
    VirtualMachineInstancetype,
    "VirtualMachineInstancetype",
    "virtualmachineinstancetypes",
    true,
    NamespaceResourceScope,
    ["vminstancetype", "vminstancetypes", "vmf", "vmfs"]
);
instancetype_kind!(
    VirtualMachineClusterInstancetype,
    "VirtualMachineClusterInstancetype",
    "virtualmachineclusterinstancetypes",
    false,
    ClusterResourceScope,
    ["vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs"]
);
instancetype_kind!(
    VirtualMachinePreference,
    "VirtualMachinePreference",
    "virtualmachinepreferences",
    true,
    NamespaceResourceScope,
    ["vmpref", "vmprefs", "vmp", "vmps"]
);
instancetype_kind!(
    VirtualMachineClusterPreference,
    "VirtualMachineClusterPreference",
    "virtualmachineclusterpreferences",
    false,
    ClusterResourceScope,
    ["vmcp", "vmcps"]
);

impl KubeKind for DataVolume {
    const GROUP: &'static str = "cdi.kubevirt.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "DataVolume";
    const PLURAL: &'static str = "datavolumes";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["dv", "dvs"];
    type Scope = NamespaceResourceScope;

    fn printer_columns() -> Vec<Value> {
        vec![
            column("Phase", "string", ".status.phase"),
            column("Progress", "string", ".status.progress"),
            column("Restarts", "integer", ".status.restartCount"),
            age_column(),
        ]
    }
}

impl KubeKind for DataSource {
    const GROUP: &'static str = "cdi.kubevirt.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "DataSource";
    const PLURAL: &'static str = "datasources";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["das"];
    type Scope = NamespaceResourceScope;
}

impl KubeKind for DataImportCron {
    const GROUP: &'static str = "cdi.kubevirt.io";
    const VERSION: &'static str = "v1beta1";
    const KIND: &'static str = "DataImportCron";
    const PLURAL: &'static str = "dataimportcrons";
    const NAMESPACED: bool = true;
    const SHORT_NAMES: &'static [&'static str] = &["dic", "dics"];
    type Scope = NamespaceResourceScope;
}

/// One of the project's objects as a Kubernetes resource (see the module doc).
#[derive(Debug, Clone)]
pub struct Cr<K> {
    /// The metadata, authoritative: what is serialized and what kube's runtime reads and sets.
    pub meta: ObjectMeta,
    /// The project's object, with spec and status as the project defines them.
    pub obj: K,
}

impl<K: KubeKind> Cr<K> {
    /// Wraps `obj`, taking its metadata over.
    pub fn new(obj: K) -> Result<Self, serde_json::Error> {
        let value = serde_json::to_value(&obj)?;
        let meta = match value.get("metadata") {
            Some(m) => serde_json::from_value(m.clone())?,
            None => ObjectMeta::default(),
        };
        Ok(Self { meta, obj })
    }

    /// `apiVersion` of the kind.
    pub fn api_version() -> String {
        format!("{}/{}", K::GROUP, K::VERSION)
    }
}

impl<K: KubeKind> Serialize for Cr<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut value = serde_json::to_value(&self.obj).map_err(serde::ser::Error::custom)?;
        let meta = serde_json::to_value(&self.meta).map_err(serde::ser::Error::custom)?;
        if let Value::Object(map) = &mut value {
            map.insert("metadata".to_string(), meta);
            map.insert("apiVersion".to_string(), Value::String(Self::api_version()));
            map.insert("kind".to_string(), Value::String(K::KIND.to_string()));
        }
        value.serialize(serializer)
    }
}

impl<'de, K: KubeKind> Deserialize<'de> for Cr<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(deserializer)?;
        let meta = match value.get("metadata") {
            Some(m) => ObjectMeta::deserialize(m).map_err(serde::de::Error::custom)?,
            None => ObjectMeta::default(),
        };
        // List items may come without apiVersion and kind; the project's types require them.
        if let Value::Object(map) = &mut value {
            map.entry("apiVersion").or_insert_with(|| Value::String(Self::api_version()));
            map.entry("kind").or_insert_with(|| Value::String(K::KIND.to_string()));
        }
        let obj = K::deserialize(value).map_err(serde::de::Error::custom)?;
        Ok(Self { meta, obj })
    }
}

impl<K: KubeKind> kube::Resource for Cr<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::GROUP)
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::VERSION)
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(K::PLURAL)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource;

    #[test]
    fn a_vm_round_trips_with_kube_metadata() {
        let json = json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": { "name": "demo", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                          "labels": { "a": "b" } },
            "spec": { "runStrategy": "Always", "template": { "spec": { "domain": { "devices": {} } } } }
        });
        let cr: Cr<VirtualMachine> = serde_json::from_value(json).unwrap();
        assert_eq!(cr.meta.name.as_deref(), Some("demo"));
        assert_eq!(cr.meta().resource_version.as_deref(), Some("7"));
        assert_eq!(cr.obj.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(
            Cr::<VirtualMachine>::url_path(&(), Some("ns")),
            "/apis/kubevirt.io/v1/namespaces/ns/virtualmachines"
        );
        let mut cr = cr;
        cr.meta.labels.get_or_insert_with(Default::default).insert("c".into(), "d".into());
        let back = serde_json::to_value(&cr).unwrap();
        assert_eq!(back["metadata"]["labels"]["c"], "d");
        assert_eq!(back["spec"]["runStrategy"], "Always");
    }
}
