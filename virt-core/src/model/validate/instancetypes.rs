//! Validation of instancetypes and preferences (namespaced and cluster-wide).

use crate::api::{
    check_type_meta, describe_meta, is_dns1123_label, is_dns1123_subdomain, validate_meta, NameRule,
    Validate, Validation,
};

use crate::model::devices::DiskBus;
use crate::model::instancetype::{
    InstancetypeSpec, PreferenceSpec, VirtualMachineClusterInstancetype, VirtualMachineClusterPreference,
    VirtualMachineInstancetype, VirtualMachinePreference, INSTANCETYPE_API_VERSION,
};
use crate::model::node::{instancetype_node_problems, preference_node_problems, Admit, NodeSupport};

use super::domain::check_names;
use super::{invalid, INTERFACE_MODELS};

pub(super) fn validate_instancetype_spec(v: &mut Validation, spec: &InstancetypeSpec) {
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

pub(super) fn validate_preference_spec(v: &mut Validation, spec: &PreferenceSpec) {
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
