//! The resource registry: every kind the node serves, as Kubernetes discovery describes it (group,
//! version, kind, plural, singular, short names, scope, verbs, subresources) and the printer
//! columns of `kubectl get` (KubeVirt's and CDI's `additionalPrinterColumns`). The REST layer
//! (`node::kube`), CDI's paths and the client (`virtctl`) all read their names from here.

use serde_json::Value;

/// A printer column of `kubectl get` (a CRD's `additionalPrinterColumns`).
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Header (`Age`, `Status`, ...); kubectl prints it upper-cased.
    pub name: &'static str,
    /// OpenAPI type of the cell: `string`, `integer`, `date`.
    pub type_: &'static str,
    /// What the column shows.
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
    /// The cell of an object (JSON `null` when the object has no value there).
    pub cell: fn(&Value) -> Value,
}

/// One resource the node serves.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Version (`v1`, `v1beta1`).
    pub version: &'static str,
    /// `apiVersion` of objects (`kubevirt.io/v1`, or `v1` in the core group).
    pub api_version: &'static str,
    /// Kind (`VirtualMachine`).
    pub kind: &'static str,
    /// Plural, the path segment (`virtualmachines`).
    pub plural: &'static str,
    /// `plural.group` (`virtualmachines.kubevirt.io`; the plural in the core group): how
    /// Kubernetes names the resource in messages.
    pub resource: &'static str,
    /// Singular (`virtualmachine`).
    pub singular: &'static str,
    /// Short names kubectl accepts (`vm`, `vms`).
    pub short_names: &'static [&'static str],
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// The verbs the node serves on it (discovery's `verbs`).
    pub verbs: &'static [&'static str],
    /// Subresources (`status`, or KubeVirt's `start`, `console`, ... in
    /// `subresources.kubevirt.io`).
    pub subresources: &'static [&'static str],
    /// Printer columns after `Name`.
    pub columns: &'static [Column],
}

/// The verbs of a kind with create, read, replace, patch, delete, list and watch.
const CRUD: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];
/// The verbs of a kind without replace and patch.
const CRD: &[&str] = &["create", "delete", "get", "list", "watch"];
/// The verbs of a read-only kind.
const READ: &[&str] = &["get", "list", "watch"];

fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&Value::Null)
}

fn age(v: &Value) -> Value {
    at(v, "/metadata/creationTimestamp").clone()
}

fn ready(v: &Value) -> Value {
    at(v, "/status/conditions")
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

const AGE: Column = Column {
    name: "Age",
    type_: "date",
    description: "CreationTimestamp: when the object was created",
    priority: 0,
    cell: age,
};

const VM_COLUMNS: &[Column] = &[
    AGE,
    Column {
        name: "Status",
        type_: "string",
        description: "Human readable status",
        priority: 0,
        cell: |v| at(v, "/status/printableStatus").clone(),
    },
    Column { name: "Ready", type_: "string", description: "Ready condition", priority: 0, cell: ready },
];

const VMI_COLUMNS: &[Column] = &[
    AGE,
    Column {
        name: "Phase",
        type_: "string",
        description: "Phase of the VirtualMachineInstance",
        priority: 0,
        cell: |v| at(v, "/status/phase").clone(),
    },
    Column {
        name: "IP",
        type_: "string",
        description: "IP address of the first interface",
        priority: 0,
        cell: |v| at(v, "/status/interfaces/0/ipAddress").clone(),
    },
    Column {
        name: "NodeName",
        type_: "string",
        description: "The node the VirtualMachineInstance runs on",
        priority: 0,
        cell: |v| at(v, "/status/nodeName").clone(),
    },
    Column { name: "Ready", type_: "string", description: "Ready condition", priority: 0, cell: ready },
];

/// KubeVirt's columns of VirtualMachineInstanceMigrations.
const VMIM_COLUMNS: &[Column] = &[
    Column {
        name: "Phase",
        type_: "string",
        description: "The migration phase",
        priority: 0,
        cell: |v| at(v, "/status/phase").clone(),
    },
    Column {
        name: "VMI",
        type_: "string",
        description: "The name of the VMI to migrate",
        priority: 0,
        cell: |v| at(v, "/spec/vmiName").clone(),
    },
];

const DV_COLUMNS: &[Column] = &[
    Column {
        name: "Phase",
        type_: "string",
        description: "The phase the data volume is in",
        priority: 0,
        cell: |v| at(v, "/status/phase").clone(),
    },
    Column {
        name: "Progress",
        type_: "string",
        description: "Transfer progress in percentage if known, N/A otherwise",
        priority: 0,
        cell: |v| at(v, "/status/progress").clone(),
    },
    Column {
        name: "Restarts",
        type_: "integer",
        description: "The number of times the transfer has been restarted",
        priority: 0,
        cell: |v| at(v, "/status/restartCount").clone(),
    },
    AGE,
];

const AGE_ONLY: &[Column] = &[AGE];

fn data_count(v: &Value) -> Value {
    let n = |p| at(v, p).as_object().map_or(0, |m| m.len());
    Value::from(n("/data") + n("/binaryData"))
}

/// kubectl's columns of Secrets.
const SECRET_COLUMNS: &[Column] = &[
    Column {
        name: "Type",
        type_: "string",
        description: "The type of the secret",
        priority: 0,
        cell: |v| at(v, "/type").clone(),
    },
    Column {
        name: "Data",
        type_: "integer",
        description: "The number of keys",
        priority: 0,
        cell: data_count,
    },
    AGE,
];

/// kubectl's columns of ConfigMaps.
const CONFIGMAP_COLUMNS: &[Column] = &[
    Column {
        name: "Data",
        type_: "integer",
        description: "The number of keys",
        priority: 0,
        cell: data_count,
    },
    AGE,
];

/// kubectl's columns of events.
const EVENT_COLUMNS: &[Column] = &[
    Column {
        name: "Last Seen",
        type_: "date",
        description: "When the event was last seen",
        priority: 0,
        cell: |v| at(v, "/lastTimestamp").clone(),
    },
    Column {
        name: "Type",
        type_: "string",
        description: "Normal or Warning",
        priority: 0,
        cell: |v| at(v, "/type").clone(),
    },
    Column {
        name: "Reason",
        type_: "string",
        description: "Why the event was recorded",
        priority: 0,
        cell: |v| at(v, "/reason").clone(),
    },
    Column {
        name: "Object",
        type_: "string",
        description: "The object the event is about",
        priority: 0,
        cell: |v| {
            let o =
                |k: &str| at(v, &format!("/involvedObject/{k}")).as_str().unwrap_or("").to_ascii_lowercase();
            Value::String(format!("{}/{}", o("kind"), at(v, "/involvedObject/name").as_str().unwrap_or("")))
        },
    },
    Column {
        name: "Message",
        type_: "string",
        description: "What happened",
        priority: 0,
        cell: |v| at(v, "/message").clone(),
    },
];

const KUBEVIRT: &str = "kubevirt.io";
const INSTANCETYPE: &str = "instancetype.kubevirt.io";
const MIGRATIONS: &str = "migrations.kubevirt.io";
const CDI: &str = "cdi.kubevirt.io";

/// Every resource the node serves, in discovery order.
pub static RESOURCES: &[Resource] = &[
    Resource {
        group: "",
        version: "v1",
        api_version: "v1",
        kind: "Namespace",
        plural: "namespaces",
        resource: "namespaces",
        singular: "namespace",
        short_names: &["ns"],
        namespaced: false,
        verbs: &["create", "delete", "get", "list", "watch"],
        subresources: &[],
        columns: &[
            Column {
                name: "Status",
                type_: "string",
                description: "The phase of the namespace",
                priority: 0,
                cell: |v| at(v, "/status/phase").clone(),
            },
            AGE,
        ],
    },
    Resource {
        group: "",
        version: "v1",
        api_version: "v1",
        kind: "Event",
        plural: "events",
        resource: "events",
        singular: "event",
        short_names: &["ev"],
        namespaced: true,
        verbs: &["list"],
        subresources: &[],
        columns: EVENT_COLUMNS,
    },
    Resource {
        group: "",
        version: "v1",
        api_version: "v1",
        kind: "Secret",
        plural: "secrets",
        resource: "secrets",
        singular: "secret",
        short_names: &[],
        namespaced: true,
        verbs: CRUD,
        subresources: &[],
        columns: SECRET_COLUMNS,
    },
    Resource {
        group: "",
        version: "v1",
        api_version: "v1",
        kind: "ConfigMap",
        plural: "configmaps",
        resource: "configmaps",
        singular: "configmap",
        short_names: &["cm"],
        namespaced: true,
        verbs: CRUD,
        subresources: &[],
        columns: CONFIGMAP_COLUMNS,
    },
    Resource {
        group: KUBEVIRT,
        version: "v1",
        api_version: "kubevirt.io/v1",
        kind: "VirtualMachine",
        plural: "virtualmachines",
        resource: "virtualmachines.kubevirt.io",
        singular: "virtualmachine",
        short_names: &["vm", "vms"],
        namespaced: true,
        verbs: CRUD,
        subresources: &["start", "stop", "restart", "portforward"],
        columns: VM_COLUMNS,
    },
    Resource {
        group: KUBEVIRT,
        version: "v1",
        api_version: "kubevirt.io/v1",
        kind: "VirtualMachineInstance",
        plural: "virtualmachineinstances",
        resource: "virtualmachineinstances.kubevirt.io",
        singular: "virtualmachineinstance",
        short_names: &["vmi", "vmis"],
        namespaced: true,
        verbs: CRD,
        subresources: &[
            "pause",
            "unpause",
            "softreboot",
            "console",
            "vnc",
            "guestosinfo",
            "userlist",
            "filesystemlist",
            "freeze",
            "unfreeze",
            "portforward",
        ],
        columns: VMI_COLUMNS,
    },
    Resource {
        group: KUBEVIRT,
        version: "v1",
        api_version: "kubevirt.io/v1",
        kind: "VirtualMachineInstanceMigration",
        plural: "virtualmachineinstancemigrations",
        resource: "virtualmachineinstancemigrations.kubevirt.io",
        singular: "virtualmachineinstancemigration",
        short_names: &["vmim", "vmims"],
        namespaced: true,
        verbs: CRD,
        subresources: &[],
        columns: VMIM_COLUMNS,
    },
    Resource {
        group: INSTANCETYPE,
        version: "v1beta1",
        api_version: "instancetype.kubevirt.io/v1beta1",
        kind: "VirtualMachineInstancetype",
        plural: "virtualmachineinstancetypes",
        resource: "virtualmachineinstancetypes.instancetype.kubevirt.io",
        singular: "virtualmachineinstancetype",
        short_names: &["vminstancetype", "vminstancetypes", "vmf", "vmfs"],
        namespaced: true,
        verbs: CRUD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: INSTANCETYPE,
        version: "v1beta1",
        api_version: "instancetype.kubevirt.io/v1beta1",
        kind: "VirtualMachineClusterInstancetype",
        plural: "virtualmachineclusterinstancetypes",
        resource: "virtualmachineclusterinstancetypes.instancetype.kubevirt.io",
        singular: "virtualmachineclusterinstancetype",
        short_names: &["vmclusterinstancetype", "vmclusterinstancetypes", "vmcf", "vmcfs"],
        namespaced: false,
        verbs: CRUD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: INSTANCETYPE,
        version: "v1beta1",
        api_version: "instancetype.kubevirt.io/v1beta1",
        kind: "VirtualMachinePreference",
        plural: "virtualmachinepreferences",
        resource: "virtualmachinepreferences.instancetype.kubevirt.io",
        singular: "virtualmachinepreference",
        short_names: &["vmpref", "vmprefs", "vmp", "vmps", "vmpreference", "vmpreferences"],
        namespaced: true,
        verbs: CRUD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: INSTANCETYPE,
        version: "v1beta1",
        api_version: "instancetype.kubevirt.io/v1beta1",
        kind: "VirtualMachineClusterPreference",
        plural: "virtualmachineclusterpreferences",
        resource: "virtualmachineclusterpreferences.instancetype.kubevirt.io",
        singular: "virtualmachineclusterpreference",
        short_names: &[
            "vmcp",
            "vmcps",
            "vmclusterpref",
            "vmclusterprefs",
            "vmclusterpreference",
            "vmclusterpreferences",
        ],
        namespaced: false,
        verbs: CRUD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: MIGRATIONS,
        version: "v1alpha1",
        api_version: "migrations.kubevirt.io/v1alpha1",
        kind: "MigrationPolicy",
        plural: "migrationpolicies",
        resource: "migrationpolicies.migrations.kubevirt.io",
        singular: "migrationpolicy",
        short_names: &[],
        namespaced: false,
        verbs: CRUD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: CDI,
        version: "v1beta1",
        api_version: "cdi.kubevirt.io/v1beta1",
        kind: "DataVolume",
        plural: "datavolumes",
        resource: "datavolumes.cdi.kubevirt.io",
        singular: "datavolume",
        short_names: &["dv", "dvs"],
        namespaced: true,
        verbs: CRD,
        subresources: &[],
        columns: DV_COLUMNS,
    },
    Resource {
        group: CDI,
        version: "v1beta1",
        api_version: "cdi.kubevirt.io/v1beta1",
        kind: "DataSource",
        plural: "datasources",
        resource: "datasources.cdi.kubevirt.io",
        singular: "datasource",
        short_names: &["das"],
        namespaced: true,
        verbs: CRD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: CDI,
        version: "v1beta1",
        api_version: "cdi.kubevirt.io/v1beta1",
        kind: "DataImportCron",
        plural: "dataimportcrons",
        resource: "dataimportcrons.cdi.kubevirt.io",
        singular: "dataimportcron",
        short_names: &["dic", "dics"],
        namespaced: true,
        verbs: CRD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: CDI,
        version: "v1beta1",
        api_version: "cdi.kubevirt.io/v1beta1",
        kind: "StorageProfile",
        plural: "storageprofiles",
        resource: "storageprofiles.cdi.kubevirt.io",
        singular: "storageprofile",
        short_names: &[],
        namespaced: false,
        verbs: READ,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: CDI,
        version: "v1beta1",
        api_version: "cdi.kubevirt.io/v1beta1",
        kind: "CDIConfig",
        plural: "cdiconfigs",
        resource: "cdiconfigs.cdi.kubevirt.io",
        singular: "cdiconfig",
        short_names: &[],
        namespaced: false,
        verbs: READ,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: "snapshot.storage.k8s.io",
        version: "v1",
        api_version: "snapshot.storage.k8s.io/v1",
        kind: "VolumeSnapshot",
        plural: "volumesnapshots",
        resource: "volumesnapshots.snapshot.storage.k8s.io",
        singular: "volumesnapshot",
        short_names: &["vs"],
        namespaced: true,
        verbs: CRD,
        subresources: &[],
        columns: AGE_ONLY,
    },
    Resource {
        group: "upload.cdi.kubevirt.io",
        version: "v1beta1",
        api_version: "upload.cdi.kubevirt.io/v1beta1",
        kind: "UploadTokenRequest",
        plural: "uploadtokenrequests",
        resource: "uploadtokenrequests.upload.cdi.kubevirt.io",
        singular: "uploadtokenrequest",
        short_names: &["utr", "utrs"],
        namespaced: true,
        verbs: &["create"],
        subresources: &[],
        columns: &[],
    },
    Resource {
        group: "compliance.openshift.io",
        version: "v1alpha1",
        api_version: "compliance.openshift.io/v1alpha1",
        kind: "ComplianceCheckResult",
        plural: "compliancecheckresults",
        resource: "compliancecheckresults.compliance.openshift.io",
        singular: "compliancecheckresult",
        short_names: &["ccr", "checkresults", "checkresult"],
        namespaced: true,
        verbs: READ,
        subresources: &[],
        columns: CHECK_RESULT_COLUMNS,
    },
];

/// The Compliance Operator's columns of ComplianceCheckResults.
const CHECK_RESULT_COLUMNS: &[Column] = &[
    Column {
        name: "Status",
        type_: "string",
        description: "The result of the check",
        priority: 0,
        cell: |v| at(v, "/status").clone(),
    },
    Column {
        name: "Severity",
        type_: "string",
        description: "The severity of the check",
        priority: 0,
        cell: |v| at(v, "/severity").clone(),
    },
];

/// The group of KubeVirt's subresources (`virtctl start`, consoles): its paths carry the
/// [`Resource::subresources`] of `kubevirt.io`'s kinds.
pub const SUBRESOURCES_GROUP: &str = "subresources.kubevirt.io";

impl Resource {
    /// `virtualmachine.kubevirt.io` (or `namespace`): how kubectl names an object of the kind in
    /// its messages (`virtualmachine.kubevirt.io/testvm created`).
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.singular.to_string()
        } else {
            format!("{}.{}", self.singular, self.group)
        }
    }

    /// `/api/v1` or `/apis/{group}/{version}`.
    pub fn group_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The collection's path: in `namespace`, or across namespaces with `None` (cluster-scoped
    /// kinds ignore the namespace).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{}/namespaces/{}/{}", self.group_path(), segment(ns), self.plural),
            None => format!("{}/{}", self.group_path(), self.plural),
        }
    }

    /// One object's path (`namespace` is ignored for cluster-scoped kinds).
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        format!("{}/{}", self.collection_path(Some(namespace)), segment(name))
    }

    /// Whether the node serves `verb` (`get`, `patch`, ...) on the kind.
    pub fn serves(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }
}

/// Percent-encodes a path segment (names are DNS labels; anything else must not change the path).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.api_version == api_version && r.kind == kind)
}

/// The resource at `plural` in `group` (`""`: core).
pub fn by_plural(group: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.plural == plural)
}

/// The resource a user names as kubectl accepts it: plural, singular, short name or kind, in any
/// case, optionally qualified by its group (`vm`, `virtualmachines.kubevirt.io`, `dv`).
pub fn parse(name: &str) -> Option<&'static Resource> {
    let name = name.to_ascii_lowercase();
    RESOURCES.iter().find(|r| {
        let bare = match name.strip_suffix(r.group).and_then(|s| s.strip_suffix('.')) {
            Some(b) if !r.group.is_empty() => b,
            _ => name.as_str(),
        };
        bare == r.plural
            || bare == r.singular
            || r.short_names.contains(&bare)
            || bare == r.kind.to_ascii_lowercase()
    })
}

/// The API groups in discovery order, each with its one version.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !out.iter().any(|(g, _)| *g == r.group) {
            out.push((r.group, r.version));
        }
    }
    out.push((SUBRESOURCES_GROUP, "v1"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_as_kubectl_resolves_them() {
        for n in ["vm", "vms", "VirtualMachine", "virtualmachines.kubevirt.io", "virtualmachine"] {
            assert_eq!(parse(n).map(|r| r.kind), Some("VirtualMachine"), "{n}");
        }
        for n in ["vmi", "vmis", "virtualmachineinstances"] {
            assert_eq!(parse(n).map(|r| r.kind), Some("VirtualMachineInstance"), "{n}");
        }
        assert_eq!(parse("dv").map(|r| r.kind), Some("DataVolume"));
        assert_eq!(parse("datavolumes.cdi.kubevirt.io").map(|r| r.kind), Some("DataVolume"));
        assert_eq!(parse("vmcf").map(|r| r.kind), Some("VirtualMachineClusterInstancetype"));
        assert_eq!(parse("ns").map(|r| r.kind), Some("Namespace"));
        assert!(parse("pods").is_none());
        assert_eq!(parse("cm").map(|r| r.kind), Some("ConfigMap"));
        assert_eq!(parse("secrets").map(|r| r.kind), Some("Secret"));
        assert!(parse("virtualmachines.cdi.kubevirt.io").is_none());
    }

    #[test]
    fn names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in RESOURCES {
            for n in [r.plural, r.singular].iter().chain(r.short_names) {
                assert!(seen.insert((r.group, *n)), "{n} twice in {}", r.group);
            }
            assert!(by_kind(r.api_version, r.kind).is_some_and(|x| x.plural == r.plural));
            let name =
                if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
            assert_eq!(r.resource, name);
        }
    }

    #[test]
    fn paths_follow_the_scope() {
        let vm = by_plural(KUBEVIRT, "virtualmachines").unwrap();
        assert_eq!(
            vm.object_path("default", "a b"),
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/a%20b"
        );
        assert_eq!(vm.collection_path(None), "/apis/kubevirt.io/v1/virtualmachines");
        let ns = by_plural("", "namespaces").unwrap();
        assert_eq!(ns.object_path("ignored", "lab"), "/api/v1/namespaces/lab");
        assert_eq!(vm.qualified(), "virtualmachine.kubevirt.io");
        assert_eq!(ns.resource, "namespaces");
    }
}
