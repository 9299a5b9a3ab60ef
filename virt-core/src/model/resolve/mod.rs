//! Instancetype and preference resolution: the VMI a VirtualMachine starts, with its
//! instancetype's sizing and its preference's defaults applied, as KubeVirt's VM controller
//! applies them (`pkg/instancetype/apply`, `pkg/instancetype/preference/apply`).
//!
//! * The instancetype's `cpu.guest` vCPUs are laid out by the preference's `preferredCPUTopology`
//!   (all sockets by default; `cores`, `threads`, or `spread` by a ratio); `memory.guest`, the CPU
//!   model, dedicated placement, GPUs, host devices, node selector, scheduler name and annotations
//!   are copied in.
//! * A VM field that the instancetype also provides is a conflict, reported by path
//!   (`spec.template.spec.domain.memory.guest`), and resolution fails. CPU and memory requests and
//!   limits always conflict. One deliberate difference from KubeVirt: a VM value *equal* to the
//!   instancetype's (KubeVirt's own generated `vm-cirros-csmall.yaml` repeats `memory.guest:
//!   128Mi` of `csmall`) is not a conflict; KubeVirt refuses any value.
//! * The preference fills defaults only where the VM is silent: disk, CD-ROM and LUN buses,
//!   interface model, TPM, RNG, firmware (EFI, Secure Boot), features (ACPI, APIC, Hyper-V, SMM),
//!   clock, machine type, termination grace period... Its `requirements` must be met by the
//!   instancetype (or by the VM when there is none).
//!
//! [`checks`] holds the topology and requirement checks, [`apply`] the copying of an instancetype's
//! sizing and a preference's defaults into the template.

mod apply;
mod checks;
#[cfg(test)]
mod tests;

use apply::{apply_instancetype, apply_preference};
use checks::{check_requirements, check_spread, matcher_name, topology};

use std::collections::BTreeMap;
use std::fmt;

use crate::api::{child, ObjectMeta, Quantity};

use super::devices::{Disk, DiskTarget, PanicDevice};
use super::domain::{
    Bios, Bootloader, Clock, Cpu, FeatureHyperv, Features, Firmware, Machine, Memory, ResourceRequirements,
};
use super::instancetype::{InstancetypeSpec, PreferenceSpec, PreferredCpuTopology, SpreadAcross};
use super::vm::{InstancetypeMatcher, VirtualMachine, VirtualMachineSpec};
use super::vmi::{VirtualMachineInstanceSpec, VirtualMachineInstanceTemplateSpec};
use super::KubeVirtObject;

/// Namespaced or cluster-wide instancetype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstancetypeKind {
    /// `VirtualMachineInstancetype`, looked up in the VM's namespace.
    Namespaced,
    /// `VirtualMachineClusterInstancetype` (the default kind).
    Cluster,
}

/// Namespaced or cluster-wide preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PreferenceKind {
    /// `VirtualMachinePreference`, looked up in the VM's namespace.
    Namespaced,
    /// `VirtualMachineClusterPreference` (the default kind).
    Cluster,
}

impl InstancetypeKind {
    /// The kind a matcher names (case-insensitive, singular or plural); cluster-wide when unset.
    pub fn from_matcher(kind: Option<&str>) -> Option<Self> {
        match kind.map(|k| k.trim_end_matches('s').to_ascii_lowercase()).as_deref() {
            None | Some("virtualmachineclusterinstancetype") => Some(Self::Cluster),
            Some("virtualmachineinstancetype") => Some(Self::Namespaced),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Namespaced => "VirtualMachineInstancetype",
            Self::Cluster => "VirtualMachineClusterInstancetype",
        }
    }
}

impl PreferenceKind {
    /// The kind a matcher names (case-insensitive, singular or plural); cluster-wide when unset.
    pub fn from_matcher(kind: Option<&str>) -> Option<Self> {
        match kind.map(|k| k.trim_end_matches('s').to_ascii_lowercase()).as_deref() {
            None | Some("virtualmachineclusterpreference") => Some(Self::Cluster),
            Some("virtualmachinepreference") => Some(Self::Namespaced),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Namespaced => "VirtualMachinePreference",
            Self::Cluster => "VirtualMachineClusterPreference",
        }
    }
}

/// The namespace of an object whose metadata names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The instancetypes and preferences known to the node, by kind, namespace and name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    instancetypes: BTreeMap<(InstancetypeKind, String, String), InstancetypeSpec>,
    preferences: BTreeMap<(PreferenceKind, String, String), PreferenceSpec>,
}

fn key_namespace(namespaced: bool, namespace: Option<&str>) -> String {
    if namespaced {
        namespace.unwrap_or(DEFAULT_NAMESPACE).to_string()
    } else {
        String::new()
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `object` if it is an instancetype or a preference (a namespaced one without a namespace
    /// goes to `default`); returns whether it was added.
    pub fn add(&mut self, object: &KubeVirtObject) -> bool {
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        match object {
            KubeVirtObject::VirtualMachineInstancetype(o) => self.add_instancetype(
                InstancetypeKind::Namespaced,
                o.metadata.namespace.as_deref(),
                &name(&o.metadata),
                o.spec.clone(),
            ),
            KubeVirtObject::VirtualMachineClusterInstancetype(o) => {
                self.add_instancetype(InstancetypeKind::Cluster, None, &name(&o.metadata), o.spec.clone())
            }
            KubeVirtObject::VirtualMachinePreference(o) => self.add_preference(
                PreferenceKind::Namespaced,
                o.metadata.namespace.as_deref(),
                &name(&o.metadata),
                o.spec.clone(),
            ),
            KubeVirtObject::VirtualMachineClusterPreference(o) => {
                self.add_preference(PreferenceKind::Cluster, None, &name(&o.metadata), o.spec.clone())
            }
            _ => return false,
        }
        true
    }

    /// Adds (or replaces) an instancetype.
    pub fn add_instancetype(
        &mut self,
        kind: InstancetypeKind,
        namespace: Option<&str>,
        name: &str,
        spec: InstancetypeSpec,
    ) {
        let ns = key_namespace(kind == InstancetypeKind::Namespaced, namespace);
        self.instancetypes.insert((kind, ns, name.to_string()), spec);
    }

    /// Adds (or replaces) a preference.
    pub fn add_preference(
        &mut self,
        kind: PreferenceKind,
        namespace: Option<&str>,
        name: &str,
        spec: PreferenceSpec,
    ) {
        let ns = key_namespace(kind == PreferenceKind::Namespaced, namespace);
        self.preferences.insert((kind, ns, name.to_string()), spec);
    }

    /// The instancetype of `kind` named `name` (in `namespace` for a namespaced one).
    pub fn instancetype(
        &self,
        kind: InstancetypeKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&InstancetypeSpec> {
        let ns = key_namespace(kind == InstancetypeKind::Namespaced, namespace);
        self.instancetypes.get(&(kind, ns, name.to_string()))
    }

    /// The preference of `kind` named `name` (in `namespace` for a namespaced one).
    pub fn preference(
        &self,
        kind: PreferenceKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<&PreferenceSpec> {
        let ns = key_namespace(kind == PreferenceKind::Namespaced, namespace);
        self.preferences.get(&(kind, ns, name.to_string()))
    }
}

/// One VM field the instancetype also provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// Path of the VM's field (`spec.template.spec.domain.memory.guest`).
    pub path: String,
    /// What the VM and the instancetype say.
    pub detail: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.path, self.detail)
    }
}

/// Why a VM's instancetype or preference could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The matcher names a kind that is not an instancetype (or preference) kind.
    #[error("{path}: {kind:?} is not a {expected} kind")]
    BadKind {
        /// Path of the matcher's `kind`.
        path: String,
        /// The kind given.
        kind: String,
        /// `instancetype` or `preference`.
        expected: &'static str,
    },
    /// The matcher has no name.
    #[error("{path}: a name is required (inferFromVolume is not supported on this node)")]
    NoName {
        /// Path of the matcher.
        path: String,
    },
    /// No such instancetype or preference.
    #[error("{path}: {kind} {name:?} not found{}", namespace.as_deref().map(|n| format!(" in namespace {n:?}")).unwrap_or_default())]
    NotFound {
        /// Path of the matcher (`spec.instancetype`).
        path: String,
        /// The kind looked up.
        kind: &'static str,
        /// The namespace looked in, for a namespaced kind.
        namespace: Option<String>,
        /// The name looked up.
        name: String,
    },
    /// VM fields conflict with the instancetype.
    #[error("VM field(s) conflict with instancetype {instancetype:?}: {}", conflicts.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Conflicts {
        /// The instancetype's name.
        instancetype: String,
        /// Every conflicting field.
        conflicts: Vec<Conflict>,
    },
    /// A preference requirement (or a spread topology) is not met.
    #[error("{path}: {message}")]
    Requirement {
        /// Path of what falls short (`spec.instancetype`, `spec.template.spec.domain.cpu`).
        path: String,
        /// What is required.
        message: String,
    },
}

/// The VMI template of `vm` with its instancetype and preference applied. A VM with neither gets
/// its template unchanged.
pub fn resolve(
    vm: &VirtualMachine,
    catalog: &Catalog,
) -> Result<VirtualMachineInstanceTemplateSpec, ResolveError> {
    resolve_spec(&vm.spec, vm.metadata.namespace.as_deref(), "spec", catalog)
}

/// [`resolve`] for a VM spec at `path` in a VM of `namespace` (a pool's
/// `spec.virtualMachineTemplate.spec`, say).
pub fn resolve_spec(
    spec: &VirtualMachineSpec,
    namespace: Option<&str>,
    path: &str,
    catalog: &Catalog,
) -> Result<VirtualMachineInstanceTemplateSpec, ResolveError> {
    let it = match &spec.instancetype {
        Some(m) => {
            let mp = child(path, "instancetype");
            let kind =
                InstancetypeKind::from_matcher(m.kind.as_deref()).ok_or_else(|| ResolveError::BadKind {
                    path: child(&mp, "kind"),
                    kind: m.kind.clone().unwrap_or_default(),
                    expected: "instancetype",
                })?;
            let name = matcher_name(m, &mp)?;
            let found =
                catalog.instancetype(kind, namespace, name).ok_or_else(|| ResolveError::NotFound {
                    path: mp.clone(),
                    kind: kind.name(),
                    namespace: (kind == InstancetypeKind::Namespaced)
                        .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_string()),
                    name: name.to_string(),
                })?;
            Some((name, found))
        }
        None => None,
    };
    let pref = match &spec.preference {
        Some(m) => {
            let mp = child(path, "preference");
            let kind =
                PreferenceKind::from_matcher(m.kind.as_deref()).ok_or_else(|| ResolveError::BadKind {
                    path: child(&mp, "kind"),
                    kind: m.kind.clone().unwrap_or_default(),
                    expected: "preference",
                })?;
            let name = matcher_name(m, &mp)?;
            Some(catalog.preference(kind, namespace, name).ok_or_else(|| {
                ResolveError::NotFound {
                    path: mp.clone(),
                    kind: kind.name(),
                    namespace: (kind == PreferenceKind::Namespaced)
                        .then(|| namespace.unwrap_or(DEFAULT_NAMESPACE).to_string()),
                    name: name.to_string(),
                }
            })?)
        }
        None => None,
    };
    let mut template = spec.template.clone();
    let tp = child(path, "template");
    if let Some(p) = pref {
        check_requirements(p, it.map(|(_, s)| s), &template.spec, path, &child(&tp, "spec"))?;
    }
    if let Some((name, it)) = it {
        let conflicts = apply_instancetype(it, pref, &mut template, &tp);
        if !conflicts.is_empty() {
            return Err(ResolveError::Conflicts { instancetype: name.to_string(), conflicts });
        }
        check_spread(it, pref, &child(path, "instancetype"))?;
    }
    if let Some(p) = pref {
        apply_preference(p, &mut template);
    }
    Ok(template)
}
