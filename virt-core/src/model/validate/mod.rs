//! Validation of KubeVirt objects the way KubeVirt's admission webhooks validate them, each
//! problem with its full path, and their node checks ([`Admit`]).
//!
//! Every problem is collected; nothing stops at the first. Warnings do not fail validation.

use std::collections::BTreeSet;

use crate::api::{
    check_name, check_type_meta, child, is_dns1123_label, is_label_name, is_qualified_name, validate_meta,
    LabelSelector, NameRule, ObjectMeta, ProblemKind, Validation,
};

use super::vm::{InstancetypeMatcher, VirtualMachineSpec};
use super::vmi::VirtualMachineInstanceSpec;

mod domain;
mod instancetypes;
mod networks;
mod volumes;
mod workloads;

use domain::validate_domain;
use networks::validate_networks;
use volumes::validate_disks;
use volumes::validate_volumes;

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
