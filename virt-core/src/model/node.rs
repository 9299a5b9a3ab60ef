//! What this node can do, and the check that refuses the rest at create time.
//!
//! KubeVirt runs on a cluster whose nodes offer device plugins (GPUs, host devices, SR-IOV),
//! Multus networks, a CPU manager and huge pages. A local node offers none of those by default.
//! A manifest asking for one is refused with the path of the field and a sentence saying what is
//! not supported, never started without it.

use std::path::{Component, Path, PathBuf};

use crate::api::{child, FieldProblem, ProblemKind, Validate, Validation, ValidationError};

use super::instancetype::{InstancetypeSpec, PreferenceSpec};
use super::network::Binding;
use super::vm::{InstancetypeMatcher, VirtualMachineSpec};
use super::vmi::{EvictionStrategy, VirtualMachineInstanceSpec};
use super::volumes::VolumeKind;

/// The optional capabilities of a node. [`NodeSupport::default`] is this project's local node:
/// none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeSupport {
    /// GPU passthrough (`domain.devices.gpus`).
    pub gpus: bool,
    /// Host PCI and USB device passthrough (`domain.devices.hostDevices`).
    pub host_devices: bool,
    /// SR-IOV interfaces (`interfaces[].sriov`).
    pub sriov: bool,
    /// USB redirection from a client (`domain.devices.clientPassthrough`).
    pub usb_redirection: bool,
    /// Multus secondary networks (`networks[].multus`).
    pub multus: bool,
    /// Dedicated, pinned host CPUs (`dedicatedCpuPlacement`, `isolateEmulatorThread`, `realtime`,
    /// NUMA passthrough).
    pub dedicated_cpus: bool,
    /// Huge-page backed guest memory (`memory.hugepages`).
    pub hugepages: bool,
    /// Confidential computing (`launchSecurity`: SEV, SNP, TDX).
    pub launch_security: bool,
    /// virtiofs shared filesystems (`domain.devices.filesystems`).
    pub virtiofs: bool,
    /// The downward-metrics device and volume.
    pub downward_metrics: bool,
    /// Live migration to another node (`VirtualMachineInstanceMigration`).
    pub live_migration: bool,
    /// Volume hotplug (`hotpluggable: true`) and memory dumps.
    pub hotplug: bool,
    /// Directories under which `hostDisk` image files may live. Empty (the default) disables
    /// `hostDisk` altogether, as KubeVirt's `HostDisk` feature gate does when off: a host path in a
    /// manifest is a request to read and write a file on the node as root.
    pub host_disk_dirs: Vec<PathBuf>,
}

impl NodeSupport {
    /// A node that can do everything modelled here (e.g. a KubeVirt cluster), for validating
    /// manifests without the local node's limits.
    pub fn everything() -> Self {
        Self {
            gpus: true,
            host_devices: true,
            sriov: true,
            usb_redirection: true,
            multus: true,
            dedicated_cpus: true,
            hugepages: true,
            launch_security: true,
            virtiofs: true,
            downward_metrics: true,
            live_migration: true,
            hotplug: true,
            host_disk_dirs: vec![PathBuf::from("/")],
        }
    }
}

/// Why a `hostDisk` path is refused before anything touches the file system (the lexical half of
/// the check; the node resolves symlinks again when it prepares the disk).
pub fn host_disk_path_problem(path: &str, dirs: &[PathBuf]) -> Option<String> {
    if dirs.is_empty() {
        return Some(
            "hostDisk is not enabled on this node (KubeVirt's HostDisk feature gate): start virt-node with \
             --host-disk-dir DIR to allow image files under DIR"
                .into(),
        );
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Some(format!("{path:?}: must be an absolute path"));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Some(format!("{path:?}: must not contain '..' components"));
    }
    let inside = dirs.iter().any(|d| p.starts_with(d) && p.components().count() > d.components().count());
    if !inside {
        let list: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Some(format!(
            "{path:?} is outside the directories this node allows for hostDisk ({})",
            list.join(", ")
        ));
    }
    None
}

/// Objects that can be admitted on a node: validated, then checked against what the node can do.
pub trait Admit: Validate {
    /// What `node` cannot do of this object (errors) or will not do (warnings).
    fn node_problems(&self, node: &NodeSupport) -> Validation;

    /// Validation and node checks together: the warnings, or every error, as KubeVirt's admission
    /// would answer a create.
    fn admit(&self, node: &NodeSupport) -> Result<Vec<FieldProblem>, ValidationError> {
        let mut all = self.validate();
        let node_side = self.node_problems(node);
        all.errors.extend(node_side.errors);
        all.warnings.extend(node_side.warnings);
        all.into_result(self.describe())
    }
}

fn unsupported(v: &mut Validation, path: String, message: impl Into<String>) {
    v.push(path, ProblemKind::Unsupported, message);
}

/// Node checks of a VMI spec at `path` (`spec`, `spec.template.spec`, ...).
pub(crate) fn vmi_spec_node_problems(
    v: &mut Validation,
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    node: &NodeSupport,
) {
    let dp = child(path, "domain");
    let devp = child(&dp, "devices");
    let d = &spec.domain;
    let dev = &d.devices;

    if !dev.gpus.is_empty() && !node.gpus {
        let list: Vec<String> = dev
            .gpus
            .iter()
            .map(|g| match &g.device_name {
                Some(dn) => format!("{} ({dn})", g.name),
                None => g.name.clone(),
            })
            .collect();
        unsupported(
            v,
            child(&devp, "gpus"),
            format!(
                "GPUs are not supported on this node: no device plugin hands out GPUs here (requested: {})",
                list.join(", ")
            ),
        );
    }
    if !node.host_devices {
        for (i, h) in dev.host_devices.iter().enumerate() {
            let what = h.device_name.as_deref().or(h.claim_name.as_deref()).unwrap_or("a device");
            unsupported(
                v,
                format!("{}[{i}]", child(&devp, "hostDevices")),
                format!(
                    "host devices (PCI or USB passthrough) are not supported on this node: {} asks for {what}",
                    h.name
                ),
            );
        }
    }
    if dev.client_passthrough.is_some() && !node.usb_redirection {
        unsupported(
            v,
            child(&devp, "clientPassthrough"),
            "USB redirection from a client is not supported on this node",
        );
    }
    if !dev.filesystems.is_empty() && !node.virtiofs {
        unsupported(
            v,
            child(&devp, "filesystems"),
            "shared filesystems (virtiofs) are not supported on this node: attach the data as a disk",
        );
    }
    if dev.downward_metrics.is_some() && !node.downward_metrics {
        unsupported(
            v,
            child(&devp, "downwardMetrics"),
            "the downward-metrics device is not supported on this node",
        );
    }
    for (i, disk) in dev.disks.iter().enumerate() {
        if disk.lun.as_ref().and_then(|l| l.reservation) == Some(true) {
            unsupported(
                v,
                format!("{}[{i}].lun.reservation", child(&devp, "disks")),
                "SCSI persistent reservations are not supported on this node",
            );
        }
    }
    for (i, iface) in dev.interfaces.iter().enumerate() {
        let ip = format!("{}[{i}]", child(&devp, "interfaces"));
        for b in iface.bindings() {
            let why = match b {
                Binding::Sriov if !node.sriov => {
                    "SR-IOV interfaces are not supported on this node: use masquerade or bridge on the pod network"
                }
                Binding::Slirp | Binding::Macvtap | Binding::Passt => {
                    "this binding was removed in KubeVirt 1.3 and is not supported: use masquerade"
                }
                Binding::PasstBinding => "the passt binding is not supported on this node: use masquerade",
                Binding::Plugin => "network binding plugins are not supported on this node: use masquerade or bridge",
                _ => continue,
            };
            unsupported(v, child(&ip, b.field()), why);
        }
    }
    if !node.multus {
        for (i, n) in spec.networks.iter().enumerate() {
            if let Some(m) = &n.multus {
                unsupported(
                    v,
                    format!("{}[{i}].multus", child(path, "networks")),
                    format!(
                        "Multus secondary networks are not supported on this node: {} ({}) needs a \
                         NetworkAttachmentDefinition; only the pod network (pod: {{}}) is available",
                        n.name, m.network_name
                    ),
                );
            }
        }
    }
    if let Some(cpu) = &d.cpu {
        let cp = child(&dp, "cpu");
        if !node.dedicated_cpus {
            if cpu.dedicated_cpu_placement == Some(true) {
                unsupported(
                    v,
                    child(&cp, "dedicatedCpuPlacement"),
                    "dedicated CPU placement is not supported on this node: there is no CPU manager to pin vCPUs",
                );
            }
            if cpu.isolate_emulator_thread == Some(true) {
                unsupported(
                    v,
                    child(&cp, "isolateEmulatorThread"),
                    "an isolated emulator thread needs dedicated CPUs, which this node does not support",
                );
            }
            if cpu.realtime.is_some() {
                unsupported(
                    v,
                    child(&cp, "realtime"),
                    "real-time vCPUs need dedicated CPUs, which this node does not support",
                );
            }
            if cpu.numa.is_some() {
                unsupported(
                    v,
                    child(&cp, "numa"),
                    "guest NUMA passthrough needs dedicated CPUs, which this node does not support",
                );
            }
        }
    }
    if let Some(m) = &d.memory {
        if m.hugepages.is_some() && !node.hugepages {
            unsupported(
                v,
                child(&child(&dp, "memory"), "hugepages"),
                "huge-page backed memory is not supported on this node",
            );
        }
    }
    if d.launch_security.is_some() && !node.launch_security {
        unsupported(
            v,
            child(&dp, "launchSecurity"),
            "confidential computing (SEV, SNP, TDX) is not supported on this node",
        );
    }
    if let Some(t) = d.machine.as_ref().and_then(|m| m.type_.as_deref()) {
        if !(t == "q35" || t.starts_with("pc-q35")) {
            unsupported(
                v,
                child(&child(&dp, "machine"), "type"),
                format!("machine type {t:?} is not supported on this node: use q35"),
            );
        }
    }
    if let Some(arch) = spec.architecture.as_deref() {
        if arch != "amd64" {
            unsupported(
                v,
                child(path, "architecture"),
                format!("{arch:?}: this node runs amd64 guests only"),
            );
        }
    }
    for (i, vol) in spec.volumes.iter().enumerate() {
        let vp = format!("{}[{i}]", child(path, "volumes"));
        match vol.kind() {
            Some(VolumeKind::DownwardMetrics) if !node.downward_metrics => unsupported(
                v,
                child(&vp, "downwardMetrics"),
                "the downward-metrics volume is not supported on this node",
            ),
            Some(VolumeKind::MemoryDump) if !node.hotplug => {
                unsupported(v, child(&vp, "memoryDump"), "memory dumps are not supported on this node")
            }
            Some(VolumeKind::HostDisk) => {
                if let Some(why) =
                    vol.host_disk.as_ref().and_then(|h| host_disk_path_problem(&h.path, &node.host_disk_dirs))
                {
                    if node.host_disk_dirs.is_empty() {
                        unsupported(v, child(&vp, "hostDisk"), why);
                    } else {
                        v.push(child(&child(&vp, "hostDisk"), "path"), ProblemKind::Forbidden, why);
                    }
                }
            }
            _ => {}
        }
        let hot = [
            (vol.persistent_volume_claim.as_ref().and_then(|p| p.hotpluggable), "persistentVolumeClaim"),
            (vol.data_volume.as_ref().and_then(|p| p.hotpluggable), "dataVolume"),
        ];
        for (flag, field) in hot {
            if flag == Some(true) && !node.hotplug {
                unsupported(
                    v,
                    format!("{vp}.{field}.hotpluggable"),
                    "volume hotplug is not supported on this node: attach the volume before starting",
                );
            }
        }
    }
    if matches!(
        spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate | EvictionStrategy::LiveMigrateIfPossible)
    ) && !node.live_migration
    {
        v.warn(
            child(path, "evictionStrategy"),
            ProblemKind::Notice,
            "no effect: this node cannot live-migrate; the VMI is stopped if the node is drained",
        );
    }
}

fn matcher_node_problems(v: &mut Validation, m: Option<&InstancetypeMatcher>, path: &str) {
    if let Some(m) = m {
        if m.infer_from_volume.is_some() {
            unsupported(
                v,
                child(path, "inferFromVolume"),
                "inferring from a volume's labels is not supported on this node: name the instancetype or preference",
            );
        }
    }
}

/// Node checks of a VM spec at `path`.
pub(crate) fn vm_spec_node_problems(
    v: &mut Validation,
    spec: &VirtualMachineSpec,
    path: &str,
    node: &NodeSupport,
) {
    matcher_node_problems(v, spec.instancetype.as_ref(), &child(path, "instancetype"));
    matcher_node_problems(v, spec.preference.as_ref(), &child(path, "preference"));
    vmi_spec_node_problems(v, &spec.template.spec, &child(&child(path, "template"), "spec"), node);
}

/// Node checks of an instancetype spec: what it would add to every VM using it.
pub(crate) fn instancetype_node_problems(v: &mut Validation, spec: &InstancetypeSpec, node: &NodeSupport) {
    if !spec.gpus.is_empty() && !node.gpus {
        unsupported(v, "spec.gpus".into(), "GPUs are not supported on this node");
    }
    if !spec.host_devices.is_empty() && !node.host_devices {
        unsupported(
            v,
            "spec.hostDevices".into(),
            "host devices (PCI or USB passthrough) are not supported on this node",
        );
    }
    if !node.dedicated_cpus {
        if spec.cpu.dedicated_cpu_placement == Some(true) {
            unsupported(
                v,
                "spec.cpu.dedicatedCPUPlacement".into(),
                "dedicated CPU placement is not supported on this node",
            );
        }
        if spec.cpu.isolate_emulator_thread == Some(true) {
            unsupported(
                v,
                "spec.cpu.isolateEmulatorThread".into(),
                "an isolated emulator thread needs dedicated CPUs, which this node does not support",
            );
        }
        if spec.cpu.realtime.is_some() {
            unsupported(
                v,
                "spec.cpu.realtime".into(),
                "real-time vCPUs need dedicated CPUs, which this node does not support",
            );
        }
        if spec.cpu.numa.is_some() {
            unsupported(
                v,
                "spec.cpu.numa".into(),
                "guest NUMA passthrough needs dedicated CPUs, which this node does not support",
            );
        }
    }
    if spec.memory.hugepages.is_some() && !node.hugepages {
        unsupported(
            v,
            "spec.memory.hugepages".into(),
            "huge-page backed memory is not supported on this node",
        );
    }
    if spec.launch_security.is_some() && !node.launch_security {
        unsupported(
            v,
            "spec.launchSecurity".into(),
            "confidential computing (SEV, SNP, TDX) is not supported on this node",
        );
    }
}

/// Node checks of a preference spec (nothing it prefers is beyond this node today).
pub(crate) fn preference_node_problems(_v: &mut Validation, _spec: &PreferenceSpec, _node: &NodeSupport) {}
