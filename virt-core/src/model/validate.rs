//! Validation of KubeVirt objects the way KubeVirt's admission webhooks validate them, each
//! problem with its full path, and their node checks ([`Admit`]).
//!
//! Every problem is collected; nothing stops at the first. Warnings do not fail validation.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{
    check_name, check_type_meta, child, describe_meta, is_dns1123_label, is_dns1123_subdomain, is_label_name,
    is_qualified_name, validate_meta, LabelSelector, NameRule, ObjectMeta, ProblemKind, Validate, Validation,
};

use super::devices::{DiskBus, Gpu, HostDevice};
use super::domain::{Bootloader, DomainSpec, Firmware};
use super::instancetype::{
    InstancetypeSpec, PreferenceSpec, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    VirtualMachineInstancetype, VirtualMachinePreference, INSTANCETYPE_API_VERSION,
};
use super::network::Binding;
use super::node::{
    instancetype_node_problems, preference_node_problems, vm_spec_node_problems, vmi_spec_node_problems,
    Admit, NodeSupport,
};
use super::vm::{InstancetypeMatcher, VirtualMachine, VirtualMachineSpec};
use super::vmi::{VirtualMachineInstance, VirtualMachineInstanceSpec};
use super::volumes::{CloudInitSource, HostDiskType, Volume, VolumeKind};
use super::workloads::{
    MigrationPolicy, VirtualMachineClone, VirtualMachineInstanceMigration, VirtualMachineInstanceReplicaSet,
    VirtualMachinePool, VirtualMachineSnapshot,
};
use super::{API_VERSION, CLONE_API_VERSION, MIGRATIONS_API_VERSION, POOL_API_VERSION, SNAPSHOT_API_VERSION};

/// NIC models KubeVirt accepts.
pub(crate) const INTERFACE_MODELS: &[&str] =
    &["virtio", "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139"];

/// The largest inline cloud-init user data or network data KubeVirt accepts (use a secret beyond).
const CLOUD_INIT_MAX_LEN: usize = 2048;

fn err(v: &mut Validation, path: String, kind: ProblemKind, message: impl Into<String>) {
    v.push(path, kind, message);
}

fn invalid(v: &mut Validation, path: String, message: impl Into<String>) {
    v.push(path, ProblemKind::Invalid, message);
}

fn item(path: &str, field: &str, i: usize) -> String {
    format!("{}[{i}]", child(path, field))
}

/// Whether `s` is a UUID written as 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `s` is a MAC address: six hex octets separated by `:` or `-`.
fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether `s` is a PCI address `dddd:bb:ss.f`.
fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_hexdigit));
    b.len() >= 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && hex(11..b.len())
}

/// Whether `s` is standard base64 (with or without padding, whitespace ignored).
fn is_base64(s: &str) -> bool {
    let body: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let trimmed = body.iter().rposition(|b| *b != b'=').map_or(0, |p| p + 1);
    let padding = body.len() - trimmed;
    padding <= 2
        && body[..trimmed].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        && (padding == 0 || body.len().is_multiple_of(4))
        && trimmed % 4 != 1
}

/// How a VMI spec is validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SpecRules {
    /// Memory must be requested (false for a VM whose instancetype provides it).
    pub memory_required: bool,
}

/// Validates a VMI spec at `path` (`spec`, `spec.template.spec`, ...).
pub(crate) fn validate_vmi_spec(
    v: &mut Validation,
    spec: &VirtualMachineInstanceSpec,
    path: &str,
    rules: SpecRules,
) {
    let dp = child(path, "domain");
    validate_domain(v, &spec.domain, &dp, rules);
    let volumes = validate_volumes(v, &spec.volumes, path);
    validate_disks(v, spec, &dp, &volumes);
    validate_networks(v, spec, path);
    super::credentials::validate(v, spec, path);
    if let Some(t) = spec.termination_grace_period_seconds {
        if t < 0 {
            invalid(v, child(path, "terminationGracePeriodSeconds"), format!("{t}: must not be negative"));
        }
    }
    for (key, value) in &spec.node_selector {
        let p = format!("{}[{key:?}]", child(path, "nodeSelector"));
        if !is_qualified_name(key) {
            invalid(v, p.clone(), format!("{key:?} is not a valid label key"));
        }
        if !(value.is_empty() || is_label_name(value)) {
            invalid(v, p, format!("{value:?} is not a valid label value"));
        }
    }
    for (i, t) in spec.tolerations.iter().enumerate() {
        let tp = item(path, "tolerations", i);
        match t.operator.as_deref() {
            None | Some("Equal") => {}
            Some("Exists") if t.value.as_deref().is_some_and(|s| !s.is_empty()) => {
                invalid(v, child(&tp, "value"), "must be empty when the operator is Exists")
            }
            Some("Exists") => {}
            Some(op) => invalid(v, child(&tp, "operator"), format!("{op:?}: expected Exists or Equal")),
        }
        if let Some(e) = t.effect.as_deref() {
            if !matches!(e, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
                invalid(
                    v,
                    child(&tp, "effect"),
                    format!("{e:?}: expected NoSchedule, PreferNoSchedule or NoExecute"),
                );
            }
        }
    }
    for (field, value) in [("hostname", &spec.hostname), ("subdomain", &spec.subdomain)] {
        if let Some(h) = value {
            if !is_dns1123_label(h) {
                invalid(v, child(path, field), format!("{h:?} is not a valid DNS label"));
            }
        }
    }
}

fn validate_domain(v: &mut Validation, d: &DomainSpec, dp: &str, rules: SpecRules) {
    let mem = d.memory.as_ref();
    let guest = mem.and_then(|m| m.guest.as_ref());
    let res = d.resources.as_ref();
    let request = |k: &str| res.and_then(|r| r.requests.get(k));
    let limit = |k: &str| res.and_then(|r| r.limits.get(k));
    let hugepages = mem.and_then(|m| m.hugepages.as_ref()).and_then(|h| h.page_size.as_ref());
    if rules.memory_required
        && guest.is_none()
        && hugepages.is_none()
        && request("memory").is_none()
        && limit("memory").is_none()
    {
        err(
            v,
            child(&child(dp, "memory"), "guest"),
            ProblemKind::Required,
            "no memory requested: set memory.guest (or resources.requests.memory, or use an instancetype)",
        );
    }
    if let Some(m) = mem {
        let mp = child(dp, "memory");
        if let Some(g) = &m.guest {
            if g.is_zero() {
                invalid(v, child(&mp, "guest"), format!("{g}: must be more than zero"));
            }
            if let Some(l) = limit("memory") {
                if g.bytes() > l.bytes() {
                    invalid(v, child(&mp, "guest"), format!("{g} is more than resources.limits.memory {l}"));
                }
            }
            if let Some(max) = &m.max_guest {
                if max.bytes() < g.bytes() {
                    invalid(v, child(&mp, "maxGuest"), format!("{max} is less than memory.guest {g}"));
                }
            }
        }
        if let Some(size) = m.hugepages.as_ref().and_then(|h| h.page_size.as_deref()) {
            if !matches!(size, "2Mi" | "1Gi") {
                invalid(
                    v,
                    child(&child(&mp, "hugepages"), "pageSize"),
                    format!("{size:?}: expected 2Mi or 1Gi"),
                );
            }
        }
    }
    if let Some(r) = res {
        let rp = child(dp, "resources");
        for (section, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            for (key, q) in map {
                let p = format!("{}[{key:?}]", child(&rp, section));
                match key.as_str() {
                    "memory" | "cpu" if q.is_zero() => invalid(v, p, format!("{q}: must be more than zero")),
                    "memory" | "cpu" => {}
                    _ => v.warn(p, ProblemKind::Notice, "ignored: this node accounts only memory and cpu"),
                }
            }
        }
        for key in ["memory", "cpu"] {
            if let (Some(req), Some(lim)) = (r.requests.get(key), r.limits.get(key)) {
                let (a, b) = if key == "cpu" {
                    (req.milli_value(), lim.milli_value())
                } else {
                    (Some(req.bytes()), Some(lim.bytes()))
                };
                if a > b {
                    invalid(
                        v,
                        format!("{}[{key:?}]", child(&rp, "requests")),
                        format!("{req} is more than the limit {lim}"),
                    );
                }
            }
        }
    }
    if let Some(cpu) = &d.cpu {
        let cp = child(dp, "cpu");
        if let (Some(max), Some(s)) = (cpu.max_sockets, cpu.sockets) {
            if max < s {
                invalid(v, child(&cp, "maxSockets"), format!("{max} is less than sockets ({s})"));
            }
        }
        if cpu.model.as_deref() == Some("") {
            invalid(v, child(&cp, "model"), "must not be empty when set");
        }
        for (i, f) in cpu.features.iter().enumerate() {
            let fp = item(&cp, "features", i);
            if f.name.is_empty() {
                err(v, child(&fp, "name"), ProblemKind::Required, "a feature name is required");
            }
            if let Some(p) = f.policy.as_deref() {
                if !matches!(p, "force" | "require" | "optional" | "disable" | "forbid") {
                    invalid(
                        v,
                        child(&fp, "policy"),
                        format!("{p:?}: expected force, require, optional, disable or forbid"),
                    );
                }
            }
        }
        let dedicated = cpu.dedicated_cpu_placement == Some(true);
        if cpu.isolate_emulator_thread == Some(true) && !dedicated {
            invalid(v, child(&cp, "isolateEmulatorThread"), "requires dedicatedCpuPlacement");
        }
        if cpu.realtime.is_some() && !dedicated {
            invalid(v, child(&cp, "realtime"), "requires dedicatedCpuPlacement");
        }
    }
    let smm = d.features.as_ref().is_some_and(|f| f.smm_enabled());
    if let Some(fw) = &d.firmware {
        validate_firmware(v, fw, &child(dp, "firmware"), smm);
    }
    if let Some(c) = &d.clock {
        let cp = child(dp, "clock");
        if c.utc.is_some() && c.timezone.is_some() {
            invalid(v, cp.clone(), "set one of utc and timezone, not both");
        }
        if c.timezone.as_deref() == Some("") {
            invalid(v, child(&cp, "timezone"), "must not be empty when set");
        }
    }
    if let Some(f) = &d.features {
        let fp = child(dp, "features");
        if let Some(h) = &f.hyperv {
            let hp = child(&fp, "hyperv");
            if let Some(n) = h.spinlocks.as_ref().and_then(|s| s.spinlocks) {
                if n < 4096 {
                    invalid(
                        v,
                        child(&child(&hp, "spinlocks"), "spinlocks"),
                        format!("{n}: must be at least 4096"),
                    );
                }
            }
            if let Some(id) = h.vendorid.as_ref().and_then(|s| s.vendorid.as_deref()) {
                if id.len() > 12 {
                    invalid(
                        v,
                        child(&child(&hp, "vendorid"), "vendorid"),
                        format!("{id:?}: at most 12 characters"),
                    );
                }
            }
            if f.hyperv_passthrough.as_ref().and_then(|p| p.enabled) == Some(true) {
                invalid(v, hp, "hypervPassthrough enables every Hyper-V feature: leave hyperv unset");
            }
        }
    }
    let dev = &d.devices;
    let devp = child(dp, "devices");
    check_names(v, dev.gpus.iter().map(|g: &Gpu| g.name.as_str()), &child(&devp, "gpus"));
    for (i, g) in dev.gpus.iter().enumerate() {
        if g.device_name.is_none() && g.claim_name.is_none() {
            err(
                v,
                child(&item(&devp, "gpus", i), "deviceName"),
                ProblemKind::Required,
                "a device name is required",
            );
        }
    }
    check_names(
        v,
        dev.host_devices.iter().map(|h: &HostDevice| h.name.as_str()),
        &child(&devp, "hostDevices"),
    );
    for (i, h) in dev.host_devices.iter().enumerate() {
        if h.device_name.is_none() && h.claim_name.is_none() {
            err(
                v,
                child(&item(&devp, "hostDevices", i), "deviceName"),
                ProblemKind::Required,
                "a device name is required",
            );
        }
    }
    check_names(v, dev.inputs.iter().map(|x| x.name.as_str()), &child(&devp, "inputs"));
    if let Some(w) = &dev.watchdog {
        let wp = child(&devp, "watchdog");
        let actions: Vec<_> = [&w.i6300esb, &w.diag288].into_iter().flatten().collect();
        if actions.len() != 1 {
            invalid(v, wp.clone(), "set exactly one of i6300esb and diag288");
        }
        for a in actions.iter().filter_map(|a| a.action.as_deref()) {
            if !matches!(a, "poweroff" | "reset" | "shutdown") {
                invalid(v, wp.clone(), format!("action {a:?}: expected poweroff, reset or shutdown"));
            }
        }
        if w.name.is_empty() {
            err(v, child(&wp, "name"), ProblemKind::Required, "a name is required");
        }
    }
    if let Some(m) = dev.sound.as_ref().and_then(|s| s.model.as_deref()) {
        if !matches!(m, "ich9" | "ac97") {
            invalid(v, child(&child(&devp, "sound"), "model"), format!("{m:?}: expected ich9 or ac97"));
        }
    }
    for (i, p) in dev.panic_devices.iter().enumerate() {
        if let Some(m) = p.model.as_deref() {
            if !matches!(m, "isa" | "hyperv" | "pvpanic") {
                invalid(
                    v,
                    child(&item(&devp, "panicDevices", i), "model"),
                    format!("{m:?}: expected isa, hyperv or pvpanic"),
                );
            }
        }
    }
}

fn validate_firmware(v: &mut Validation, fw: &Firmware, fp: &str, smm: bool) {
    if let Some(u) = fw.uuid.as_deref() {
        if !is_uuid(u) {
            invalid(v, child(fp, "uuid"), format!("{u:?} is not a UUID (8-4-4-4-12 hex digits)"));
        }
    }
    if let Some(Bootloader { bios, efi }) = &fw.bootloader {
        let bp = child(fp, "bootloader");
        if bios.is_some() && efi.is_some() {
            invalid(v, bp.clone(), "set one of bios and efi, not both");
        }
        if let Some(e) = efi {
            if e.secure_boot_enabled() && !smm {
                invalid(
                    v,
                    child(&child(&bp, "efi"), "secureBoot"),
                    "Secure Boot (on unless secureBoot: false) requires SMM, which is not enabled: set \
                     domain.features.smm: {}",
                );
            }
        }
    }
    if let Some(kb) = &fw.kernel_boot {
        let kp = child(fp, "kernelBoot");
        match &kb.container {
            None if kb.kernel_args.is_some() => invalid(
                v,
                child(&kp, "kernelArgs"),
                "kernel arguments need a kernelBoot.container to boot from",
            ),
            None => err(
                v,
                child(&kp, "container"),
                ProblemKind::Required,
                "a container with the kernel is required",
            ),
            Some(c) => {
                let cp = child(&kp, "container");
                if c.image.is_empty() {
                    err(v, child(&cp, "image"), ProblemKind::Required, "an image is required");
                }
                if c.kernel_path.is_none() && c.initrd_path.is_none() {
                    err(
                        v,
                        cp.clone(),
                        ProblemKind::Required,
                        "at least one of kernelPath and initrdPath is required",
                    );
                }
                for (field, p) in [("kernelPath", &c.kernel_path), ("initrdPath", &c.initrd_path)] {
                    if let Some(p) = p {
                        if !p.starts_with('/') {
                            invalid(v, child(&cp, field), format!("{p:?}: must be an absolute path"));
                        }
                    }
                }
            }
        }
    }
}

fn check_names<'a>(v: &mut Validation, names: impl Iterator<Item = &'a str>, path: &str) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            err(v, format!("{path}[{i}].name"), ProblemKind::Required, "a name is required");
        } else if !seen.insert(n) {
            invalid(v, format!("{path}[{i}].name"), format!("{n:?} is used twice"));
        }
    }
}

/// Validates volumes; returns their names and kinds for the disk checks.
fn validate_volumes<'a>(
    v: &mut Validation,
    volumes: &'a [Volume],
    path: &str,
) -> BTreeMap<&'a str, Option<VolumeKind>> {
    let mut names = BTreeMap::new();
    let mut cloud_init = None;
    let mut service_accounts = 0;
    for (i, vol) in volumes.iter().enumerate() {
        let vp = item(path, "volumes", i);
        if vol.name.is_empty() {
            err(v, child(&vp, "name"), ProblemKind::Required, "a name is required");
        } else if !is_dns1123_label(&vol.name) {
            invalid(
                v,
                child(&vp, "name"),
                format!(
                    "{:?} is not a valid volume name: lowercase letters, digits and '-', at most 63",
                    vol.name
                ),
            );
        } else if names.insert(vol.name.as_str(), vol.kind()).is_some() {
            invalid(v, child(&vp, "name"), format!("{:?} is used twice", vol.name));
        }
        let kinds = vol.kinds();
        let kind = match kinds.as_slice() {
            [] => {
                err(v, vp.clone(), ProblemKind::Required, "no volume source set: set one of containerDisk, persistentVolumeClaim, dataVolume, cloudInitNoCloud, emptyDisk, hostDisk, ...");
                continue;
            }
            [one] => *one,
            many => {
                let list: Vec<&str> = many.iter().map(|k| k.field()).collect();
                invalid(
                    v,
                    vp.clone(),
                    format!(
                        "exactly one volume source may be set, found {}: {}",
                        many.len(),
                        list.join(", ")
                    ),
                );
                continue;
            }
        };
        let sp = child(&vp, kind.field());
        match kind {
            VolumeKind::ContainerDisk => {
                if let Some(c) = &vol.container_disk {
                    if c.image.trim().is_empty() {
                        err(v, child(&sp, "image"), ProblemKind::Required, "an image is required");
                    } else if c.image.chars().any(char::is_whitespace) {
                        invalid(
                            v,
                            child(&sp, "image"),
                            format!("{:?}: an image reference has no whitespace", c.image),
                        );
                    }
                    if let Some(p) = &c.path {
                        if !p.starts_with('/') {
                            invalid(v, child(&sp, "path"), format!("{p:?}: must be an absolute path"));
                        }
                    }
                }
            }
            VolumeKind::HostDisk => {
                if let Some(h) = &vol.host_disk {
                    if h.path.is_empty() {
                        err(v, child(&sp, "path"), ProblemKind::Required, "a path is required");
                    } else if !h.path.starts_with('/') {
                        invalid(v, child(&sp, "path"), format!("{:?}: must be an absolute path", h.path));
                    }
                    match (h.type_, &h.capacity) {
                        (HostDiskType::DiskOrCreate, None) => err(
                            v,
                            child(&sp, "capacity"),
                            ProblemKind::Required,
                            "required for type DiskOrCreate",
                        ),
                        (HostDiskType::DiskOrCreate, Some(c)) if c.is_zero() => {
                            invalid(v, child(&sp, "capacity"), format!("{c}: must be more than zero"))
                        }
                        (HostDiskType::Disk, Some(_)) => {
                            invalid(v, child(&sp, "capacity"), "allowed only for type DiskOrCreate")
                        }
                        _ => {}
                    }
                }
            }
            VolumeKind::PersistentVolumeClaim => {
                if let Some(p) = &vol.persistent_volume_claim {
                    check_name(v, child(&sp, "claimName"), &p.claim_name, "claim name");
                }
            }
            VolumeKind::Ephemeral => {
                match vol.ephemeral.as_ref().and_then(|e| e.persistent_volume_claim.as_ref()) {
                    Some(p) => check_name(
                        v,
                        child(&child(&sp, "persistentVolumeClaim"), "claimName"),
                        &p.claim_name,
                        "claim name",
                    ),
                    None => err(
                        v,
                        child(&sp, "persistentVolumeClaim"),
                        ProblemKind::Required,
                        "the claim under the ephemeral layer is required",
                    ),
                }
            }
            VolumeKind::DataVolume => {
                if let Some(d) = &vol.data_volume {
                    check_name(v, child(&sp, "name"), &d.name, "DataVolume name");
                }
            }
            VolumeKind::EmptyDisk => {
                if let Some(e) = &vol.empty_disk {
                    if e.capacity.is_zero() {
                        invalid(v, child(&sp, "capacity"), format!("{}: must be more than zero", e.capacity));
                    }
                }
            }
            VolumeKind::CloudInitNoCloud | VolumeKind::CloudInitConfigDrive => {
                let source = vol.cloud_init_no_cloud.as_ref().or(vol.cloud_init_config_drive.as_ref());
                if let Some(c) = source {
                    validate_cloud_init(v, c, &sp);
                }
                if let Some(first) = cloud_init.replace(i) {
                    invalid(
                        v,
                        vp.clone(),
                        format!("only one cloud-init volume is allowed; volumes[{first}] is one already"),
                    );
                }
            }
            VolumeKind::ConfigMap => {
                if vol.config_map.as_ref().and_then(|c| c.name.as_deref()).is_none_or(str::is_empty) {
                    err(v, child(&sp, "name"), ProblemKind::Required, "a ConfigMap name is required");
                }
            }
            VolumeKind::Secret => {
                if vol.secret.as_ref().and_then(|c| c.secret_name.as_deref()).is_none_or(str::is_empty) {
                    err(v, child(&sp, "secretName"), ProblemKind::Required, "a Secret name is required");
                }
            }
            VolumeKind::ServiceAccount => {
                service_accounts += 1;
                if service_accounts > 1 {
                    invalid(v, vp.clone(), "only one serviceAccount volume is allowed");
                }
                if vol
                    .service_account
                    .as_ref()
                    .and_then(|c| c.service_account_name.as_deref())
                    .is_none_or(str::is_empty)
                {
                    err(
                        v,
                        child(&sp, "serviceAccountName"),
                        ProblemKind::Required,
                        "a service account name is required",
                    );
                }
            }
            VolumeKind::Sysprep => {
                if let Some(s) = &vol.sysprep {
                    if s.secret.is_some() == s.config_map.is_some() {
                        invalid(v, sp.clone(), "set exactly one of secret and configMap");
                    }
                }
            }
            VolumeKind::MemoryDump => {
                if let Some(p) = &vol.memory_dump {
                    check_name(v, child(&sp, "claimName"), &p.claim_name, "claim name");
                }
            }
            VolumeKind::DownwardApi | VolumeKind::DownwardMetrics => {}
        }
    }
    names
}

fn validate_cloud_init(v: &mut Validation, c: &CloudInitSource, sp: &str) {
    let user: Vec<&str> = [
        (c.user_data.is_some(), "userData"),
        (c.user_data_base64.is_some(), "userDataBase64"),
        (c.user_data_secret_ref.is_some(), "secretRef"),
    ]
    .into_iter()
    .filter_map(|(set, f)| set.then_some(f))
    .collect();
    let network =
        [c.network_data.is_some(), c.network_data_base64.is_some(), c.network_data_secret_ref.is_some()];
    let network_count = network.iter().filter(|x| **x).count();
    if user.len() > 1 {
        invalid(
            v,
            sp.to_string(),
            format!("set one of userData, userDataBase64 and secretRef, found {}", user.join(", ")),
        );
    }
    if network_count > 1 {
        invalid(v, sp.to_string(), "set one of networkData, networkDataBase64 and networkDataSecretRef");
    }
    if user.is_empty() && network_count == 0 {
        err(v, sp.to_string(), ProblemKind::Required, "user data or network data is required");
    }
    for (field, value) in
        [("userDataBase64", &c.user_data_base64), ("networkDataBase64", &c.network_data_base64)]
    {
        if let Some(b) = value {
            if !is_base64(b) {
                invalid(v, child(sp, field), "not valid base64");
            }
        }
    }
    for (field, value) in [
        ("userData", &c.user_data),
        ("userDataBase64", &c.user_data_base64),
        ("networkData", &c.network_data),
        ("networkDataBase64", &c.network_data_base64),
    ] {
        if let Some(s) = value {
            if s.len() > CLOUD_INIT_MAX_LEN {
                invalid(
                    v,
                    child(sp, field),
                    format!(
                        "{} bytes: at most {CLOUD_INIT_MAX_LEN} inline; put larger data in a Secret",
                        s.len()
                    ),
                );
            }
        }
    }
    for (field, r) in
        [("secretRef", &c.user_data_secret_ref), ("networkDataSecretRef", &c.network_data_secret_ref)]
    {
        if let Some(r) = r {
            if r.name.as_deref().is_none_or(str::is_empty) {
                err(v, child(&child(sp, field), "name"), ProblemKind::Required, "a Secret name is required");
            }
        }
    }
}

fn validate_disks(
    v: &mut Validation,
    spec: &VirtualMachineInstanceSpec,
    dp: &str,
    volumes: &BTreeMap<&str, Option<VolumeKind>>,
) {
    let devp = child(dp, "devices");
    let disks = &spec.domain.devices.disks;
    let mut seen = BTreeSet::new();
    let mut boot_orders: BTreeMap<u32, String> = BTreeMap::new();
    for (i, disk) in disks.iter().enumerate() {
        let p = item(&devp, "disks", i);
        if disk.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
        } else if !seen.insert(disk.name.as_str()) {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", disk.name));
        } else if !volumes.contains_key(disk.name.as_str()) {
            invalid(
                v,
                child(&p, "name"),
                format!("no volume named {:?}: every disk needs a volume of the same name", disk.name),
            );
        }
        let targets: Vec<&str> =
            [(disk.disk.is_some(), "disk"), (disk.lun.is_some(), "lun"), (disk.cdrom.is_some(), "cdrom")]
                .into_iter()
                .filter_map(|(set, f)| set.then_some(f))
                .collect();
        if targets.len() > 1 {
            invalid(
                v,
                p.clone(),
                format!("set at most one of disk, lun and cdrom, found {}", targets.join(", ")),
            );
        }
        if disk.cdrom.as_ref().and_then(|c| c.bus) == Some(DiskBus::Virtio) {
            invalid(v, child(&child(&p, "cdrom"), "bus"), "virtio is not a CD-ROM bus: use sata or scsi");
        }
        if disk.lun.as_ref().and_then(|c| c.bus) == Some(DiskBus::Usb) {
            invalid(v, child(&child(&p, "lun"), "bus"), "usb is not a LUN bus: use scsi");
        }
        if let Some(addr) = disk.disk.as_ref().and_then(|d| d.pci_address.as_deref()) {
            if !is_pci_address(addr) {
                invalid(
                    v,
                    child(&child(&p, "disk"), "pciAddress"),
                    format!("{addr:?} is not a PCI address like 0000:81:01.1"),
                );
            }
        }
        if let Some(o) = disk.boot_order {
            check_boot_order(v, &mut boot_orders, o, child(&p, "bootOrder"));
        }
        if let Some(s) = &disk.serial {
            if s.is_empty()
                || s.len() > 20
                || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
            {
                invalid(
                    v,
                    child(&p, "serial"),
                    format!("{s:?}: 1 to 20 of letters, digits, '_', '.', '+' and '-'"),
                );
            }
        }
        if let Some(b) = &disk.block_size {
            if b.custom.is_some() && b.match_volume.is_some() {
                invalid(v, child(&p, "blockSize"), "set one of custom and matchVolume, not both");
            }
        }
    }
    let ifp = child(&devp, "interfaces");
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        if let Some(o) = iface.boot_order {
            check_boot_order(v, &mut boot_orders, o, format!("{ifp}[{i}].bootOrder"));
        }
    }
}

fn check_boot_order(v: &mut Validation, seen: &mut BTreeMap<u32, String>, order: u32, path: String) {
    if order == 0 {
        invalid(v, path, "must be greater than 0");
    } else if let Some(first) = seen.get(&order) {
        invalid(v, path, format!("boot order {order} is used by {first} too: each must be unique"));
    } else {
        seen.insert(order, path);
    }
}

fn validate_networks(v: &mut Validation, spec: &VirtualMachineInstanceSpec, path: &str) {
    let np = child(path, "networks");
    let mut networks: BTreeMap<&str, (usize, bool)> = BTreeMap::new();
    let mut pod_networks = 0;
    for (i, n) in spec.networks.iter().enumerate() {
        let p = format!("{np}[{i}]");
        if n.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
        } else if networks.insert(n.name.as_str(), (i, n.multus.is_none())).is_some() {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", n.name));
        }
        match (&n.pod, &n.multus) {
            (Some(_), Some(_)) => invalid(v, p.clone(), "set one of pod and multus, not both"),
            (_, Some(m)) if m.network_name.is_empty() => err(
                v,
                child(&child(&p, "multus"), "networkName"),
                ProblemKind::Required,
                "a network name is required",
            ),
            (_, Some(_)) => {}
            _ => pod_networks += 1,
        }
    }
    if pod_networks > 1 {
        invalid(v, np.clone(), "more than one pod network: there is one pod network");
    }
    let ifp = child(&child(&child(path, "domain"), "devices"), "interfaces");
    let mut seen = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let p = format!("{ifp}[{i}]");
        if iface.name.is_empty() {
            err(v, child(&p, "name"), ProblemKind::Required, "a name is required");
            continue;
        }
        if !seen.insert(iface.name.as_str()) {
            invalid(v, child(&p, "name"), format!("{:?} is used twice", iface.name));
        }
        let on_pod = match networks.get(iface.name.as_str()) {
            Some((_, pod)) => {
                used.insert(iface.name.as_str());
                Some(*pod)
            }
            None => {
                invalid(
                    v,
                    child(&p, "name"),
                    format!(
                        "no network named {:?}: every interface needs a network of the same name",
                        iface.name
                    ),
                );
                None
            }
        };
        let bindings = iface.bindings();
        if bindings.len() > 1 {
            let list: Vec<&str> = bindings.iter().map(|b| b.field()).collect();
            invalid(v, p.clone(), format!("set at most one binding, found {}", list.join(", ")));
        }
        if bindings.contains(&Binding::Masquerade) && on_pod == Some(false) {
            invalid(v, child(&p, "masquerade"), "masquerade works only on the pod network");
        }
        if bindings.contains(&Binding::Sriov) && on_pod == Some(true) {
            invalid(v, child(&p, "sriov"), "SR-IOV needs a Multus network, not the pod network");
        }
        if let Some(m) = iface.model.as_deref() {
            if !INTERFACE_MODELS.contains(&m) {
                invalid(
                    v,
                    child(&p, "model"),
                    format!("{m:?}: expected one of {}", INTERFACE_MODELS.join(", ")),
                );
            }
        }
        if let Some(mac) = iface.mac_address.as_deref() {
            if !is_mac(mac) {
                invalid(
                    v,
                    child(&p, "macAddress"),
                    format!("{mac:?} is not a MAC address like de:ad:00:00:be:af"),
                );
            }
        }
        if let Some(addr) = iface.pci_address.as_deref() {
            if !is_pci_address(addr) {
                invalid(
                    v,
                    child(&p, "pciAddress"),
                    format!("{addr:?} is not a PCI address like 0000:81:01.1"),
                );
            }
        }
        if let Some(n) = iface.acpi_index {
            if !(1..=16383).contains(&n) {
                invalid(v, child(&p, "acpiIndex"), format!("{n}: must be 1 to 16383"));
            }
        }
        if !iface.ports.is_empty()
            && !bindings.iter().any(|b| {
                matches!(b, Binding::Masquerade | Binding::Slirp | Binding::Passt | Binding::PasstBinding)
            })
        {
            invalid(v, child(&p, "ports"), "port forwarding needs the masquerade binding");
        }
        for (j, port) in iface.ports.iter().enumerate() {
            let pp = format!("{p}.ports[{j}]");
            if !(1..=65535).contains(&port.port) {
                invalid(v, child(&pp, "port"), format!("{}: must be 1 to 65535", port.port));
            }
            if let Some(proto) = port.protocol.as_deref() {
                if !matches!(proto, "TCP" | "UDP") {
                    invalid(v, child(&pp, "protocol"), format!("{proto:?}: expected TCP or UDP"));
                }
            }
        }
    }
    for (name, (i, _)) in &networks {
        if !used.contains(name) {
            invalid(
                v,
                format!("{np}[{i}].name"),
                format!(
                    "no interface uses network {name:?}: every network needs an interface of the same name"
                ),
            );
        }
    }
}

fn validate_matcher(v: &mut Validation, m: &InstancetypeMatcher, path: &str, kinds: &[&str]) {
    match (&m.name, &m.infer_from_volume) {
        (None, None) => {
            err(v, child(path, "name"), ProblemKind::Required, "a name (or inferFromVolume) is required")
        }
        (Some(n), _) => check_name(v, child(path, "name"), n, "name"),
        _ => {}
    }
    if let Some(k) = m.kind.as_deref() {
        if !kinds
            .iter()
            .any(|want| want.eq_ignore_ascii_case(k) || format!("{want}s").eq_ignore_ascii_case(k))
        {
            invalid(v, child(path, "kind"), format!("{k:?}: expected {}", kinds.join(" or ")));
        }
    }
    if let Some(p) = m.infer_from_volume_failure_policy.as_deref() {
        if !matches!(p, "Reject" | "Ignore" | "RejectInferFromVolumeFailure" | "IgnoreInferFromVolumeFailure")
        {
            invalid(
                v,
                child(path, "inferFromVolumeFailurePolicy"),
                format!("{p:?}: expected Reject or Ignore"),
            );
        }
    }
}

/// Validates a VM spec at `path`; `namespace` is the VM's.
pub(crate) fn validate_vm_spec(
    v: &mut Validation,
    spec: &VirtualMachineSpec,
    path: &str,
    namespace: Option<&str>,
) {
    if spec.running.is_some() && spec.run_strategy.is_some() {
        invalid(v, child(path, "running"), "running and runStrategy are mutually exclusive: use runStrategy");
    } else if spec.running.is_some() {
        v.warn(child(path, "running"), ProblemKind::Notice, "deprecated: use runStrategy (Always or Halted)");
    }
    if let Some(m) = &spec.instancetype {
        validate_matcher(
            v,
            m,
            &child(path, "instancetype"),
            &["VirtualMachineInstancetype", "VirtualMachineClusterInstancetype"],
        );
    }
    if let Some(m) = &spec.preference {
        validate_matcher(
            v,
            m,
            &child(path, "preference"),
            &["VirtualMachinePreference", "VirtualMachineClusterPreference"],
        );
    }
    let tp = child(path, "template");
    if let Some(meta) = &spec.template.metadata {
        validate_meta(v, meta, &child(&tp, "metadata"), NameRule::Optional, true);
    }
    let rules = SpecRules { memory_required: spec.instancetype.is_none() };
    validate_vmi_spec(v, &spec.template.spec, &child(&tp, "spec"), rules);
    let mut names = BTreeSet::new();
    for (i, t) in spec.data_volume_templates.iter().enumerate() {
        let p = item(path, "dataVolumeTemplates", i);
        check_type_meta(
            v,
            t.api_version.as_deref(),
            t.kind.as_deref(),
            "cdi.kubevirt.io/v1beta1",
            "DataVolume",
            &p,
        );
        validate_meta(v, &t.metadata, &child(&p, "metadata"), NameRule::Name, true);
        if let Some(n) = &t.metadata.name {
            if !names.insert(n.as_str()) {
                invalid(v, child(&child(&p, "metadata"), "name"), format!("{n:?} is used twice"));
            }
        }
        if let (Some(ns), Some(vm_ns)) = (t.metadata.namespace.as_deref(), namespace) {
            if ns != vm_ns {
                invalid(
                    v,
                    child(&child(&p, "metadata"), "namespace"),
                    format!("{ns:?}: a template's DataVolume lives in the VM's namespace {vm_ns:?}"),
                );
            }
        }
        if !t.spec.is_object() {
            invalid(v, child(&p, "spec"), "expected a DataVolume spec (an object)");
        }
    }
}

fn check_selector(
    v: &mut Validation,
    selector: &LabelSelector,
    labels: Option<&ObjectMeta>,
    path: &str,
    what: &str,
) {
    if selector.match_labels.is_empty() && selector.match_expressions.is_empty() {
        err(v, path.to_string(), ProblemKind::Required, "a selector is required");
        return;
    }
    let labels = labels.map(|m| &m.labels);
    for (k, val) in &selector.match_labels {
        if labels.and_then(|l| l.get(k)) != Some(val) {
            invalid(
                v,
                format!("{path}.matchLabels[{k:?}]"),
                format!("{k}={val} does not match the labels of {what}"),
            );
        }
    }
    for (i, e) in selector.match_expressions.iter().enumerate() {
        if !matches!(e.operator.as_str(), "In" | "NotIn" | "Exists" | "DoesNotExist") {
            invalid(
                v,
                format!("{path}.matchExpressions[{i}].operator"),
                format!("{:?}: expected In, NotIn, Exists or DoesNotExist", e.operator),
            );
        }
    }
}

fn check_replicas(v: &mut Validation, replicas: Option<i32>) {
    if let Some(r) = replicas {
        if r < 0 {
            invalid(v, "spec.replicas".into(), format!("{r}: must not be negative"));
        }
    }
}

impl Validate for VirtualMachineInstance {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstance",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        validate_vmi_spec(&mut v, &self.spec, "spec", SpecRules { memory_required: true });
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstance", &self.metadata)
    }
}

impl Admit for VirtualMachineInstance {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vmi_spec_node_problems(&mut v, &self.spec, "spec", node);
        v
    }
}

impl Validate for VirtualMachine {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(&mut v, Some(&self.api_version), Some(&self.kind), API_VERSION, "VirtualMachine", "");
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        validate_vm_spec(&mut v, &self.spec, "spec", self.metadata.namespace.as_deref());
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachine", &self.metadata)
    }
}

impl Admit for VirtualMachine {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vm_spec_node_problems(&mut v, &self.spec, "spec", node);
        v
    }
}

impl Validate for VirtualMachineInstanceReplicaSet {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstanceReplicaSet",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        check_replicas(&mut v, self.spec.replicas);
        check_selector(
            &mut v,
            &self.spec.selector,
            self.spec.template.metadata.as_ref(),
            "spec.selector",
            "spec.template",
        );
        if let Some(meta) = &self.spec.template.metadata {
            validate_meta(&mut v, meta, "spec.template.metadata", NameRule::Optional, true);
        }
        validate_vmi_spec(
            &mut v,
            &self.spec.template.spec,
            "spec.template.spec",
            SpecRules { memory_required: true },
        );
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstanceReplicaSet", &self.metadata)
    }
}

impl Admit for VirtualMachineInstanceReplicaSet {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vmi_spec_node_problems(&mut v, &self.spec.template.spec, "spec.template.spec", node);
        v
    }
}

impl Validate for VirtualMachinePool {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            POOL_API_VERSION,
            "VirtualMachinePool",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        check_replicas(&mut v, self.spec.replicas);
        let t = &self.spec.virtual_machine_template;
        check_selector(
            &mut v,
            &self.spec.selector,
            t.metadata.as_ref(),
            "spec.selector",
            "spec.virtualMachineTemplate",
        );
        if let Some(meta) = &t.metadata {
            validate_meta(&mut v, meta, "spec.virtualMachineTemplate.metadata", NameRule::Optional, true);
        }
        validate_vm_spec(
            &mut v,
            &t.spec,
            "spec.virtualMachineTemplate.spec",
            self.metadata.namespace.as_deref(),
        );
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachinePool", &self.metadata)
    }
}

impl Admit for VirtualMachinePool {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        vm_spec_node_problems(
            &mut v,
            &self.spec.virtual_machine_template.spec,
            "spec.virtualMachineTemplate.spec",
            node,
        );
        v
    }
}

impl Validate for VirtualMachineSnapshot {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            SNAPSHOT_API_VERSION,
            "VirtualMachineSnapshot",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let s = &self.spec.source;
        if s.kind != "VirtualMachine" {
            invalid(
                &mut v,
                "spec.source.kind".into(),
                format!("{:?}: only a VirtualMachine can be snapshotted", s.kind),
            );
        }
        if let Some(g) = s.api_group.as_deref() {
            if g != "kubevirt.io" {
                invalid(&mut v, "spec.source.apiGroup".into(), format!("{g:?}: expected \"kubevirt.io\""));
            }
        }
        check_name(&mut v, "spec.source.name".into(), &s.name, "VirtualMachine name");
        if let Some(p) = self.spec.deletion_policy.as_deref() {
            if !matches!(p, "delete" | "retain") {
                invalid(&mut v, "spec.deletionPolicy".into(), format!("{p:?}: expected delete or retain"));
            }
        }
        if let Some(d) = &self.spec.failure_deadline {
            if d.as_nanos() < 0 {
                invalid(&mut v, "spec.failureDeadline".into(), format!("{d}: must not be negative"));
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineSnapshot", &self.metadata)
    }
}

impl Admit for VirtualMachineSnapshot {
    fn node_problems(&self, _node: &NodeSupport) -> Validation {
        Validation::default()
    }
}

impl Validate for VirtualMachineClone {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            CLONE_API_VERSION,
            "VirtualMachineClone",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        let s = &self.spec.source;
        match (s.api_group.as_deref(), s.kind.as_str()) {
            (None | Some("kubevirt.io"), "VirtualMachine") | (None | Some("snapshot.kubevirt.io"), "VirtualMachineSnapshot") => {}
            (g, k) => invalid(
                &mut v,
                "spec.source".into(),
                format!("{}{k}: the source must be a kubevirt.io VirtualMachine or a snapshot.kubevirt.io VirtualMachineSnapshot", g.map(|g| format!("{g} ")).unwrap_or_default()),
            ),
        }
        check_name(&mut v, "spec.source.name".into(), &s.name, "source name");
        if let Some(t) = &self.spec.target {
            if t.kind != "VirtualMachine" || t.api_group.as_deref().is_some_and(|g| g != "kubevirt.io") {
                invalid(
                    &mut v,
                    "spec.target".into(),
                    format!("{:?}: the target must be a kubevirt.io VirtualMachine", t.kind),
                );
            }
            check_name(&mut v, "spec.target.name".into(), &t.name, "target name");
        }
        if let Some(p) = self.spec.volume_name_policy.as_deref() {
            if !matches!(p, "RandomizeNames" | "PreserveNames") {
                invalid(
                    &mut v,
                    "spec.volumeNamePolicy".into(),
                    format!("{p:?}: expected RandomizeNames or PreserveNames"),
                );
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineClone", &self.metadata)
    }
}

impl Admit for VirtualMachineClone {
    fn node_problems(&self, _node: &NodeSupport) -> Validation {
        Validation::default()
    }
}

impl Validate for MigrationPolicy {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            MIGRATIONS_API_VERSION,
            "MigrationPolicy",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, false);
        if let Some(t) = self.spec.completion_timeout_per_gib {
            if t < 0 {
                invalid(&mut v, "spec.completionTimeoutPerGiB".into(), format!("{t}: must not be negative"));
            }
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("MigrationPolicy", &self.metadata)
    }
}

impl Admit for MigrationPolicy {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        if !node.live_migration {
            v.warn("spec", ProblemKind::Notice, "no effect: this node does not live-migrate");
        }
        v
    }
}

impl Validate for VirtualMachineInstanceMigration {
    fn validate(&self) -> Validation {
        let mut v = Validation::default();
        check_type_meta(
            &mut v,
            Some(&self.api_version),
            Some(&self.kind),
            API_VERSION,
            "VirtualMachineInstanceMigration",
            "",
        );
        validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, true);
        match self.spec.vmi_name.as_deref() {
            Some(n) => check_name(&mut v, "spec.vmiName".into(), n, "VirtualMachineInstance name"),
            None if self.spec.receive.is_none() => err(
                &mut v,
                "spec.vmiName".into(),
                ProblemKind::Required,
                "the VirtualMachineInstance to migrate is required",
            ),
            None => {}
        }
        v
    }

    fn describe(&self) -> String {
        describe_meta("VirtualMachineInstanceMigration", &self.metadata)
    }
}

impl Admit for VirtualMachineInstanceMigration {
    fn node_problems(&self, node: &NodeSupport) -> Validation {
        let mut v = Validation::default();
        if !node.live_migration {
            let vmi = self.spec.vmi_name.as_deref().unwrap_or("a VirtualMachineInstance");
            v.push(
                "spec.vmiName",
                ProblemKind::Unsupported,
                format!("live migration of {vmi} is not supported on this node: a single node has no migration target"),
            );
        }
        v
    }
}

fn validate_instancetype_spec(v: &mut Validation, spec: &InstancetypeSpec) {
    if spec.cpu.guest == 0 {
        invalid(v, "spec.cpu.guest".into(), "0: at least one vCPU is required");
    }
    if let (Some(max), g) = (spec.cpu.max_sockets, spec.cpu.guest) {
        if max == 0 {
            invalid(v, "spec.cpu.maxSockets".into(), format!("{max}: must be at least 1 (guest is {g})"));
        }
    }
    let m = &spec.memory;
    if m.guest.is_zero() {
        invalid(v, "spec.memory.guest".into(), format!("{}: must be more than zero", m.guest));
    }
    if let Some(max) = &m.max_guest {
        if max.bytes() < m.guest.bytes() {
            invalid(v, "spec.memory.maxGuest".into(), format!("{max} is less than memory.guest {}", m.guest));
        }
    }
    if let Some(p) = m.overcommit_percent {
        if !(0..=100).contains(&p) {
            invalid(v, "spec.memory.overcommitPercent".into(), format!("{p}: must be 0 to 100"));
        }
    }
    if let Some(size) = m.hugepages.as_ref().and_then(|h| h.page_size.as_deref()) {
        if !matches!(size, "2Mi" | "1Gi") {
            invalid(v, "spec.memory.hugepages.pageSize".into(), format!("{size:?}: expected 2Mi or 1Gi"));
        }
    }
    check_names(v, spec.gpus.iter().map(|g| g.name.as_str()), "spec.gpus");
    check_names(v, spec.host_devices.iter().map(|g| g.name.as_str()), "spec.hostDevices");
}

fn validate_preference_spec(v: &mut Validation, spec: &PreferenceSpec) {
    if let Some(r) = spec.cpu.as_ref().and_then(|c| c.spread_options.as_ref()).and_then(|s| s.ratio) {
        if r == 0 {
            invalid(v, "spec.cpu.spreadOptions.ratio".into(), "0: must be at least 1");
        }
    }
    if spec.prefer_spread_socket_to_core_ratio == Some(0) {
        invalid(v, "spec.preferSpreadSocketToCoreRatio".into(), "0: must be at least 1");
    }
    if let Some(m) = spec.devices.as_ref().and_then(|d| d.preferred_interface_model.as_deref()) {
        if !INTERFACE_MODELS.contains(&m) {
            invalid(
                v,
                "spec.devices.preferredInterfaceModel".into(),
                format!("{m:?}: expected one of {}", INTERFACE_MODELS.join(", ")),
            );
        }
    }
    if spec.devices.as_ref().and_then(|d| d.preferred_cdrom_bus) == Some(DiskBus::Virtio) {
        invalid(v, "spec.devices.preferredCdromBus".into(), "virtio is not a CD-ROM bus: use sata or scsi");
    }
    if let Some(o) = spec.clock.as_ref().and_then(|c| c.preferred_clock_offset.as_ref()) {
        if o.utc.is_some() && o.timezone.is_some() {
            invalid(v, "spec.clock.preferredClockOffset".into(), "set one of utc and timezone, not both");
        }
    }
    if let Some(t) = spec.preferred_termination_grace_period_seconds {
        if t < 0 {
            invalid(
                v,
                "spec.preferredTerminationGracePeriodSeconds".into(),
                format!("{t}: must not be negative"),
            );
        }
    }
    if let Some(r) = &spec.requirements {
        if r.cpu.as_ref().is_some_and(|c| c.guest == 0) {
            invalid(v, "spec.requirements.cpu.guest".into(), "0: must be at least 1");
        }
        if let Some(m) = &r.memory {
            if m.guest.is_zero() {
                invalid(
                    v,
                    "spec.requirements.memory.guest".into(),
                    format!("{}: must be more than zero", m.guest),
                );
            }
        }
    }
    if let Some(s) = spec.preferred_subdomain.as_deref() {
        if !is_dns1123_label(s) {
            invalid(v, "spec.preferredSubdomain".into(), format!("{s:?} is not a valid DNS label"));
        }
    }
    if let Some(sc) = spec.volumes.as_ref().and_then(|x| x.preferred_storage_class_name.as_deref()) {
        if !is_dns1123_subdomain(sc) {
            invalid(
                v,
                "spec.volumes.preferredStorageClassName".into(),
                format!("{sc:?} is not a valid storage class name"),
            );
        }
    }
}

macro_rules! instancetype_validate {
    ($t:ident, $namespaced:expr, $check:ident, $node:ident) => {
        impl Validate for $t {
            fn validate(&self) -> Validation {
                let mut v = Validation::default();
                check_type_meta(
                    &mut v,
                    Some(&self.api_version),
                    Some(&self.kind),
                    INSTANCETYPE_API_VERSION,
                    stringify!($t),
                    "",
                );
                validate_meta(&mut v, &self.metadata, "metadata", NameRule::NameOrGenerate, $namespaced);
                $check(&mut v, &self.spec);
                v
            }

            fn describe(&self) -> String {
                describe_meta(stringify!($t), &self.metadata)
            }
        }

        impl Admit for $t {
            fn node_problems(&self, node: &NodeSupport) -> Validation {
                let mut v = Validation::default();
                $node(&mut v, &self.spec, node);
                v
            }
        }
    };
}

instancetype_validate!(
    VirtualMachineInstancetype,
    true,
    validate_instancetype_spec,
    instancetype_node_problems
);
instancetype_validate!(
    VirtualMachineClusterInstancetype,
    false,
    validate_instancetype_spec,
    instancetype_node_problems
);
instancetype_validate!(VirtualMachinePreference, true, validate_preference_spec, preference_node_problems);
instancetype_validate!(
    VirtualMachineClusterPreference,
    false,
    validate_preference_spec,
    preference_node_problems
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert!(is_uuid("5d307ca9-b3ef-428c-8861-06e72d69f223"));
        assert!(!is_uuid("5d307ca9-b3ef-428c-8861-06e72d69f22"));
        assert!(!is_uuid("5d307ca9b3ef428c886106e72d69f223"));
        assert!(is_mac("de:ad:00:00:be:af"));
        assert!(is_mac("DE-AD-00-00-BE-AF"));
        assert!(!is_mac("00-11-22"));
        assert!(is_pci_address("0000:81:01.1"));
        assert!(is_pci_address("0000:81:01.10"));
        assert!(!is_pci_address("81:01.1"));
        assert!(is_base64("I2Nsb3VkLWNvbmZpZwo="));
        assert!(is_base64("YWJj"));
        assert!(is_base64("YWI"));
        assert!(!is_base64("YWJj$"));
        assert!(!is_base64("Y"));
        assert!(!is_base64("YW=j"));
    }
}
