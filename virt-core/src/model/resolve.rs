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

fn matcher_name<'a>(m: &'a InstancetypeMatcher, path: &str) -> Result<&'a str, ResolveError> {
    m.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| ResolveError::NoName { path: path.to_string() })
}

/// The preferred topology (sockets when none), with deprecated spellings normalized.
fn preferred_topology(pref: Option<&PreferenceSpec>) -> PreferredCpuTopology {
    pref.and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology)
        .map_or(PreferredCpuTopology::Sockets, PreferredCpuTopology::normalized)
}

fn spread_options(pref: Option<&PreferenceSpec>) -> (u32, SpreadAcross) {
    let mut ratio = pref.and_then(|p| p.prefer_spread_socket_to_core_ratio).filter(|r| *r != 0).unwrap_or(2);
    let mut across = SpreadAcross::SocketsCores;
    if let Some(o) = pref.and_then(|p| p.cpu.as_ref()).and_then(|c| c.spread_options.as_ref()) {
        across = o.across.unwrap_or(across);
        ratio = o.ratio.filter(|r| *r != 0).unwrap_or(ratio);
    }
    (ratio, across)
}

/// (sockets, cores, threads) for `vcpus` laid out as the preference says.
fn topology(vcpus: u32, pref: Option<&PreferenceSpec>) -> (u32, u32, u32) {
    if vcpus == 1 {
        return (1, 1, 1);
    }
    match preferred_topology(pref) {
        PreferredCpuTopology::Cores => (1, vcpus, 1),
        PreferredCpuTopology::Threads => (1, 1, vcpus),
        PreferredCpuTopology::Spread => {
            let (ratio, across) = spread_options(pref);
            match across {
                SpreadAcross::SocketsCores => (vcpus / ratio, ratio, 1),
                SpreadAcross::CoresThreads => (1, vcpus / ratio, ratio),
                SpreadAcross::SocketsCoresThreads => (vcpus / 2 / ratio, ratio, 2),
            }
        }
        _ => (vcpus, 1, 1),
    }
}

fn check_spread(
    it: &InstancetypeSpec,
    pref: Option<&PreferenceSpec>,
    path: &str,
) -> Result<(), ResolveError> {
    if preferred_topology(pref) != PreferredCpuTopology::Spread {
        return Ok(());
    }
    let (ratio, across) = spread_options(pref);
    let vcpus = it.cpu.guest;
    let ok = match across {
        SpreadAcross::SocketsCores => vcpus.is_multiple_of(ratio),
        SpreadAcross::CoresThreads => ratio == 2 && vcpus.is_multiple_of(ratio),
        SpreadAcross::SocketsCoresThreads => ratio.checked_mul(2).is_some_and(|r| vcpus.is_multiple_of(r)),
    };
    if ok || vcpus == 1 {
        Ok(())
    } else {
        Err(ResolveError::Requirement {
            path: path.to_string(),
            message: format!("{vcpus} vCPUs cannot be spread across {across:?} with ratio {ratio}"),
        })
    }
}

fn check_requirements(
    pref: &PreferenceSpec,
    it: Option<&InstancetypeSpec>,
    spec: &VirtualMachineInstanceSpec,
    vm_path: &str,
    spec_path: &str,
) -> Result<(), ResolveError> {
    let Some(req) = &pref.requirements else { return Ok(()) };
    let dp = child(spec_path, "domain");
    if let Some(c) = &req.cpu {
        let (have, path, from) = match it {
            Some(it) => (u64::from(it.cpu.guest), child(vm_path, "instancetype"), "instance type"),
            None => (spec.domain.cpu.as_ref().map_or(1, Cpu::vcpus), child(&dp, "cpu"), "VirtualMachine"),
        };
        if have < u64::from(c.guest) {
            return Err(ResolveError::Requirement {
                path,
                message: format!("insufficient CPU resources of {have} vCPU provided by {from}, preference requires {} vCPU", c.guest),
            });
        }
    }
    if let Some(m) = &req.memory {
        let (have, path, from): (Option<&Quantity>, String, &str) = match it {
            Some(it) => (Some(&it.memory.guest), child(vm_path, "instancetype"), "instance type"),
            None => {
                let mem = spec.domain.memory.as_ref().and_then(|m| m.guest.as_ref());
                let req_mem = spec.domain.resources.as_ref().and_then(|r| r.requests.get("memory"));
                (mem.or(req_mem), child(&dp, "memory"), "VirtualMachine")
            }
        };
        if have.is_none_or(|h| h.bytes() < m.guest.bytes()) {
            let have = have.map_or_else(|| "no memory".to_string(), ToString::to_string);
            return Err(ResolveError::Requirement {
                path,
                message: format!(
                    "insufficient Memory resources of {have} provided by {from}, preference requires {}",
                    m.guest
                ),
            });
        }
    }
    if let (Some(want), Some(have)) = (req.architecture.as_deref(), spec.architecture.as_deref()) {
        if want != have {
            return Err(ResolveError::Requirement {
                path: child(spec_path, "architecture"),
                message: format!("{have:?}: the preference requires {want:?}"),
            });
        }
    }
    Ok(())
}

/// Applies the instancetype to the template; returns the conflicts (nothing is half-applied that
/// matters: on conflicts the caller discards the template).
fn apply_instancetype(
    it: &InstancetypeSpec,
    pref: Option<&PreferenceSpec>,
    template: &mut VirtualMachineInstanceTemplateSpec,
    tp: &str,
) -> Vec<Conflict> {
    let sp = child(tp, "spec");
    let dp = child(&sp, "domain");
    let spec = &mut template.spec;
    let mut conflicts = Vec::new();
    let mut conflict = |path: String, detail: String| conflicts.push(Conflict { path, detail });

    if !it.node_selector.is_empty() {
        if spec.node_selector.is_empty() || spec.node_selector == it.node_selector {
            spec.node_selector = it.node_selector.clone();
        } else {
            conflict(child(&sp, "nodeSelector"), "set here and in the instancetype".into());
        }
    }
    if let Some(s) = &it.scheduler_name {
        match &spec.scheduler_name {
            Some(v) if v != s => {
                conflict(child(&sp, "schedulerName"), format!("{v:?} here, {s:?} in the instancetype"))
            }
            _ => spec.scheduler_name = Some(s.clone()),
        }
    }

    // CPU and memory are the instancetype's: requests and limits of either conflict.
    if let Some(resources) = &spec.domain.resources {
        for (section, map) in [("requests", &resources.requests), ("limits", &resources.limits)] {
            for key in ["cpu", "memory"] {
                if let Some(q) = map.get(key) {
                    conflict(
                        format!("{}.{section}.{key}", child(&dp, "resources")),
                        format!("{q} here; the instancetype sizes {key}"),
                    );
                }
            }
        }
    }
    let (sockets, cores, threads) = topology(it.cpu.guest, pref);
    let cp = child(&dp, "cpu");
    let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
    for (field, have, want) in
        [("sockets", cpu.sockets, sockets), ("cores", cpu.cores, cores), ("threads", cpu.threads, threads)]
    {
        if let Some(h) = have.filter(|h| *h != 0 && *h != want) {
            conflict(
                child(&cp, field),
                format!("{h} here, {want} from the instancetype's {} vCPUs", it.cpu.guest),
            );
        }
    }
    let same = |a: &Option<bool>, b: &Option<bool>| a.is_none() || b.is_none() || a == b;
    if let (Some(have), Some(want)) = (&cpu.model, &it.cpu.model) {
        if have != want {
            conflict(child(&cp, "model"), format!("{have:?} here, {want:?} in the instancetype"));
        }
    }
    if !same(&cpu.dedicated_cpu_placement, &it.cpu.dedicated_cpu_placement) {
        conflict(child(&cp, "dedicatedCpuPlacement"), "set here and in the instancetype".into());
    }
    if !same(&cpu.isolate_emulator_thread, &it.cpu.isolate_emulator_thread) {
        conflict(child(&cp, "isolateEmulatorThread"), "set here and in the instancetype".into());
    }
    if cpu.numa.is_some() && it.cpu.numa.is_some() && cpu.numa != it.cpu.numa {
        conflict(child(&cp, "numa"), "set here and in the instancetype".into());
    }
    if cpu.realtime.is_some() && it.cpu.realtime.is_some() && cpu.realtime != it.cpu.realtime {
        conflict(child(&cp, "realtime"), "set here and in the instancetype".into());
    }
    cpu.sockets = Some(sockets);
    cpu.cores = Some(cores);
    cpu.threads = Some(threads);
    if let Some(m) = &it.cpu.model {
        cpu.model = Some(m.clone());
    }
    if let Some(d) = it.cpu.dedicated_cpu_placement {
        cpu.dedicated_cpu_placement = Some(d);
    }
    if let Some(d) = it.cpu.isolate_emulator_thread {
        cpu.isolate_emulator_thread = Some(d);
    }
    if let Some(n) = &it.cpu.numa {
        cpu.numa = Some(n.clone());
    }
    if let Some(r) = &it.cpu.realtime {
        cpu.realtime = Some(r.clone());
    }
    if let Some(m) = it.cpu.max_sockets {
        cpu.max_sockets = Some(m);
    }

    // Memory.
    let mp = child(&dp, "memory");
    let mem = spec.domain.memory.get_or_insert_with(Memory::default);
    if let Some(g) = &mem.guest {
        if g.bytes() != it.memory.guest.bytes() {
            conflict(child(&mp, "guest"), format!("{g} here, {} in the instancetype", it.memory.guest));
        }
    }
    if mem.hugepages.is_some() && it.memory.hugepages.is_some() && mem.hugepages != it.memory.hugepages {
        conflict(child(&mp, "hugepages"), "set here and in the instancetype".into());
    }
    if let (Some(h), Some(w)) = (&mem.max_guest, &it.memory.max_guest) {
        if h.bytes() != w.bytes() {
            conflict(child(&mp, "maxGuest"), format!("{h} here, {w} in the instancetype"));
        }
    }
    mem.guest = Some(it.memory.guest.clone());
    if let Some(h) = &it.memory.hugepages {
        mem.hugepages = Some(h.clone());
    }
    if let Some(m) = &it.memory.max_guest {
        mem.max_guest = Some(m.clone());
    }
    if let Some(pct) = it.memory.overcommit_percent.filter(|p| (1..=100).contains(p)) {
        let guest = u128::from(it.memory.guest.bytes());
        let pct = u128::from(pct.unsigned_abs());
        let requested = guest * (100 - pct) / 100;
        let bytes = u64::try_from(requested).unwrap_or(u64::MAX);
        spec.domain
            .resources
            .get_or_insert_with(ResourceRequirements::default)
            .requests
            .insert("memory".into(), Quantity::from_bytes(bytes));
    }

    // Everything else the instancetype may carry.
    if let Some(p) = it.io_threads_policy {
        match spec.domain.io_threads_policy {
            Some(h) if h != p => {
                conflict(child(&dp, "ioThreadsPolicy"), format!("{h:?} here, {p:?} in the instancetype"))
            }
            _ => spec.domain.io_threads_policy = Some(p),
        }
    }
    if let Some(l) = &it.launch_security {
        match &spec.domain.launch_security {
            Some(h) if h != l => {
                conflict(child(&dp, "launchSecurity"), "set here and in the instancetype".into())
            }
            _ => spec.domain.launch_security = Some(l.clone()),
        }
    }
    let devp = child(&dp, "devices");
    if !it.gpus.is_empty() {
        if spec.domain.devices.gpus.is_empty() || spec.domain.devices.gpus == it.gpus {
            spec.domain.devices.gpus = it.gpus.clone();
        } else {
            conflict(child(&devp, "gpus"), "set here and in the instancetype".into());
        }
    }
    if !it.host_devices.is_empty() {
        if spec.domain.devices.host_devices.is_empty() || spec.domain.devices.host_devices == it.host_devices
        {
            spec.domain.devices.host_devices = it.host_devices.clone();
        } else {
            conflict(child(&devp, "hostDevices"), "set here and in the instancetype".into());
        }
    }
    if !it.annotations.is_empty() {
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        for (k, val) in &it.annotations {
            match meta.annotations.get(k) {
                Some(h) if h != val => conflict(
                    format!("{}[{k:?}]", child(&child(tp, "metadata"), "annotations")),
                    format!("{h:?} here, {val:?} in the instancetype"),
                ),
                _ => {
                    meta.annotations.insert(k.clone(), val.clone());
                }
            }
        }
    }
    conflicts
}

/// Fills what the VM leaves unset from the preference, as KubeVirt's preference applier does.
fn apply_preference(p: &PreferenceSpec, template: &mut VirtualMachineInstanceTemplateSpec) {
    let spec = &mut template.spec;
    let d = &mut spec.domain;

    if let Some(c) = &p.cpu {
        if !c.preferred_cpu_features.is_empty() {
            let cpu = d.cpu.get_or_insert_with(Cpu::default);
            for f in &c.preferred_cpu_features {
                if !cpu.features.iter().any(|x| x.name == f.name) {
                    cpu.features.push(f.clone());
                }
            }
        }
    }

    if let Some(dp) = &p.devices {
        let dev = &mut d.devices;
        fill(&mut dev.use_virtio_transitional, dp.preferred_use_virtio_transitional);
        fill(&mut dev.block_multi_queue, dp.preferred_block_multi_queue);
        fill(&mut dev.network_interface_multi_queue, dp.preferred_network_interface_multi_queue);
        if let Some(h) = dp.preferred_disable_hotplug {
            dev.disable_hotplug = Some(h);
        }
        if let (Some(model), Some(sound)) = (&dp.preferred_sound_model, dev.sound.as_mut()) {
            sound.model.get_or_insert_with(|| model.clone());
        }
        if dev.rng.is_none() {
            dev.rng = dp.preferred_rng;
        }
        if dev.tpm.is_none() {
            dev.tpm = dp.preferred_tpm.clone();
        }
        fill(&mut dev.autoattach_graphics_device, dp.preferred_autoattach_graphics_device);
        fill(&mut dev.autoattach_mem_balloon, dp.preferred_autoattach_mem_balloon);
        fill(&mut dev.autoattach_pod_interface, dp.preferred_autoattach_pod_interface);
        fill(&mut dev.autoattach_serial_console, dp.preferred_autoattach_serial_console);
        fill(&mut dev.autoattach_input_device, dp.preferred_autoattach_input_device);
        for disk in &mut dev.disks {
            apply_disk_preferences(disk, dp);
        }
        for iface in &mut dev.interfaces {
            if iface.model.is_none() {
                iface.model = dp.preferred_interface_model.clone();
            }
            let on_pod = spec.networks.iter().any(|n| n.name == iface.name && n.multus.is_none());
            if dp.preferred_interface_masquerade.is_some() && iface.bindings().is_empty() && on_pod {
                iface.masquerade = dp.preferred_interface_masquerade;
            }
        }
        for input in &mut dev.inputs {
            fill(&mut input.bus, dp.preferred_input_bus);
            fill(&mut input.type_, dp.preferred_input_type);
        }
        if let Some(model) = &dp.preferred_panic_device_model {
            if dev.panic_devices.is_empty() {
                dev.panic_devices.push(PanicDevice { model: Some(model.clone()) });
            }
            for pd in &mut dev.panic_devices {
                pd.model.get_or_insert_with(|| model.clone());
            }
        }
        if let Some(t) = &dp.preferred_video_type {
            let video = dev.video.get_or_insert_with(Default::default);
            video.type_.get_or_insert_with(|| t.clone());
        }
    }

    if let Some(fp) = &p.features {
        let f = d.features.get_or_insert_with(Features::default);
        if let Some(a) = &fp.preferred_acpi {
            f.acpi = Some(a.clone());
        }
        if f.apic.is_none() {
            f.apic = fp.preferred_apic.clone();
        }
        let passthrough = f.hyperv_passthrough.as_ref().and_then(|h| h.enabled) == Some(true);
        if let (Some(ph), false) = (&fp.preferred_hyperv, passthrough) {
            let h = f.hyperv.get_or_insert_with(FeatureHyperv::default);
            fill_clone(&mut h.relaxed, &ph.relaxed);
            fill_clone(&mut h.vapic, &ph.vapic);
            fill_clone(&mut h.spinlocks, &ph.spinlocks);
            fill_clone(&mut h.vpindex, &ph.vpindex);
            fill_clone(&mut h.runtime, &ph.runtime);
            fill_clone(&mut h.synic, &ph.synic);
            fill_clone(&mut h.synictimer, &ph.synictimer);
            fill_clone(&mut h.reset, &ph.reset);
            fill_clone(&mut h.vendorid, &ph.vendorid);
            fill_clone(&mut h.frequencies, &ph.frequencies);
            fill_clone(&mut h.reenlightenment, &ph.reenlightenment);
            fill_clone(&mut h.tlbflush, &ph.tlbflush);
            fill_clone(&mut h.ipi, &ph.ipi);
            fill_clone(&mut h.evmcs, &ph.evmcs);
        }
        fill_clone(&mut f.kvm, &fp.preferred_kvm);
        fill_clone(&mut f.pvspinlock, &fp.preferred_pvspinlock);
        fill_clone(&mut f.smm, &fp.preferred_smm);
    }

    if let Some(fw) = &p.firmware {
        let firmware = d.firmware.get_or_insert_with(Firmware::default);
        let boot = firmware.bootloader.get_or_insert_with(Bootloader::default);
        if fw.preferred_use_bios == Some(true) && boot.bios.is_none() && boot.efi.is_none() {
            boot.bios = Some(Bios::default());
        }
        if let (Some(serial), Some(bios)) = (fw.preferred_use_bios_serial, boot.bios.as_mut()) {
            bios.use_serial.get_or_insert(serial);
        }
        if boot.efi.is_none() && boot.bios.is_none() && fw.preferred_efi.is_some() {
            boot.efi = fw.preferred_efi.clone();
        } else {
            if fw.preferred_use_efi == Some(true) && boot.efi.is_none() && boot.bios.is_none() {
                boot.efi = Some(Default::default());
            }
            if let (Some(sb), Some(efi)) = (fw.preferred_use_secure_boot, boot.efi.as_mut()) {
                efi.secure_boot.get_or_insert(sb);
            }
        }
        if firmware.bootloader.as_ref().is_some_and(|b| b == &Bootloader::default()) {
            firmware.bootloader = None;
        }
        if d.firmware.as_ref().is_some_and(|f| f == &Firmware::default()) {
            d.firmware = None;
        }
    }

    if let Some(t) = p.machine.as_ref().and_then(|m| m.preferred_machine_type.as_ref()) {
        let machine = d.machine.get_or_insert_with(Machine::default);
        machine.type_.get_or_insert_with(|| t.clone());
    }

    if let Some(cp) = &p.clock {
        let clock = d.clock.get_or_insert_with(Clock::default);
        if let Some(o) = &cp.preferred_clock_offset {
            if clock.utc.is_none() && clock.timezone.is_none() {
                clock.utc = o.utc.clone();
                clock.timezone = o.timezone.clone();
            }
        }
        fill_clone(&mut clock.timer, &cp.preferred_timer);
    }

    fill_clone(&mut spec.subdomain, &p.preferred_subdomain);
    fill(&mut spec.termination_grace_period_seconds, p.preferred_termination_grace_period_seconds);
    fill_clone(&mut spec.architecture, &p.preferred_architecture);
    if !p.annotations.is_empty() {
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        for (k, v) in &p.annotations {
            meta.annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

fn apply_disk_preferences(disk: &mut Disk, dp: &super::instancetype::DevicePreferences) {
    if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
        disk.disk = Some(DiskTarget::default());
    }
    if let Some(target) = disk.disk.as_mut() {
        fill(&mut target.bus, dp.preferred_disk_bus);
        let bus = target.bus;
        fill_clone(&mut disk.block_size, &dp.preferred_disk_block_size);
        fill(&mut disk.cache, dp.preferred_disk_cache);
        fill(&mut disk.io, dp.preferred_disk_io);
        if bus == Some(super::devices::DiskBus::Virtio) {
            fill(&mut disk.dedicated_io_thread, dp.preferred_disk_dedicated_io_thread);
        }
    } else if let Some(c) = disk.cdrom.as_mut() {
        fill(&mut c.bus, dp.preferred_cdrom_bus);
    } else if let Some(l) = disk.lun.as_mut() {
        fill(&mut l.bus, dp.preferred_lun_bus);
    }
}

fn fill<T: Copy>(slot: &mut Option<T>, preferred: Option<T>) {
    if slot.is_none() {
        *slot = preferred;
    }
}

fn fill_clone<T: Clone>(slot: &mut Option<T>, preferred: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(preferred);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::instancetype::{CpuPreferences, SpreadOptions};

    fn pref(topology: PreferredCpuTopology, spread: Option<SpreadOptions>) -> PreferenceSpec {
        PreferenceSpec {
            cpu: Some(CpuPreferences {
                preferred_cpu_topology: Some(topology),
                spread_options: spread,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn topologies_lay_out_vcpus_as_kubevirt_does() {
        use PreferredCpuTopology as T;
        assert_eq!(topology(4, None), (4, 1, 1));
        assert_eq!(topology(1, Some(&pref(T::Cores, None))), (1, 1, 1));
        assert_eq!(topology(4, Some(&pref(T::Cores, None))), (1, 4, 1));
        assert_eq!(topology(4, Some(&pref(T::PreferCores, None))), (1, 4, 1));
        assert_eq!(topology(4, Some(&pref(T::Threads, None))), (1, 1, 4));
        assert_eq!(topology(4, Some(&pref(T::Any, None))), (4, 1, 1));
        assert_eq!(topology(8, Some(&pref(T::Spread, None))), (4, 2, 1));
        let across = |a, r| Some(SpreadOptions { across: Some(a), ratio: r });
        assert_eq!(topology(8, Some(&pref(T::Spread, across(SpreadAcross::CoresThreads, None)))), (1, 4, 2));
        assert_eq!(
            topology(16, Some(&pref(T::Spread, across(SpreadAcross::SocketsCoresThreads, Some(4))))),
            (2, 4, 2)
        );
        let mut p = pref(T::PreferSpread, None);
        p.prefer_spread_socket_to_core_ratio = Some(4);
        assert_eq!(topology(8, Some(&p)), (2, 4, 1));
    }

    #[test]
    fn spread_needs_divisible_vcpus() {
        let mut it = InstancetypeSpec::default();
        it.cpu.guest = 3;
        let p = pref(PreferredCpuTopology::Spread, None);
        let e = check_spread(&it, Some(&p), "spec.instancetype").unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.instancetype: 3 vCPUs cannot be spread across SocketsCores with ratio 2"
        );
        it.cpu.guest = 6;
        check_spread(&it, Some(&p), "spec.instancetype").unwrap();
        check_spread(&it, None, "spec.instancetype").unwrap();
    }

    #[test]
    fn kinds_from_matchers() {
        assert_eq!(InstancetypeKind::from_matcher(None), Some(InstancetypeKind::Cluster));
        assert_eq!(
            InstancetypeKind::from_matcher(Some("VirtualMachineInstancetype")),
            Some(InstancetypeKind::Namespaced)
        );
        assert_eq!(
            InstancetypeKind::from_matcher(Some("virtualmachineinstancetypes")),
            Some(InstancetypeKind::Namespaced)
        );
        assert_eq!(InstancetypeKind::from_matcher(Some("VirtualMachinePreference")), None);
        assert_eq!(
            PreferenceKind::from_matcher(Some("VirtualMachineClusterPreference")),
            Some(PreferenceKind::Cluster)
        );
    }

    #[test]
    fn overcommit_lowers_the_memory_request() {
        let mut it = InstancetypeSpec::default();
        it.cpu.guest = 2;
        it.memory.guest = Quantity::parse("1Gi").unwrap_or_else(|e| panic!("{e}"));
        it.memory.overcommit_percent = Some(25);
        let mut t = VirtualMachineInstanceTemplateSpec::default();
        assert!(apply_instancetype(&it, None, &mut t, "spec.template").is_empty());
        let req = &t.spec.domain.resources.as_ref().map(|r| r.requests["memory"].bytes());
        assert_eq!(*req, Some(768 << 20));
    }
}
