//! Choosing the accelerator: hardware KVM when it is really there, software emulation only when the
//! node allows it (KubeVirt's `useEmulation`), never silently slow.

use serde::{Deserialize, Serialize};

/// What the node allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AccelPolicy {
    /// Hardware KVM, or emulation if the node allows it.
    #[default]
    Auto,
    /// Hardware KVM only; fail without it.
    RequireKvm,
    /// Software emulation even where KVM exists (tests, debugging).
    ForceEmulation,
}

/// What the host offers, as probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVirt {
    /// The CPU advertises vmx or svm.
    pub cpu_flag: bool,
    /// /dev/kvm exists and opens read-write.
    pub kvm_usable: bool,
}

impl HostVirt {
    /// Reads /proc/cpuinfo and tries /dev/kvm.
    pub fn probe() -> Self {
        let cpu_flag = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| {
                s.lines()
                    .filter(|l| l.starts_with("flags"))
                    .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
            })
            .unwrap_or(false);
        let kvm_usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        Self { cpu_flag, kvm_usable }
    }
}

/// The accelerator a machine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Accelerator {
    /// Hardware-assisted KVM.
    Kvm,
    /// Software emulation (QEMU's TCG).
    Emulation,
}

/// The decision and its reason, for the VMI's status and events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelDecision {
    /// The accelerator.
    pub accelerator: Accelerator,
    /// Why, in words a user reads in `virtctl get vmi -o yaml`.
    pub reason: String,
}

/// No accelerator the policy and the node allow is there; says why and what would change it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAccelerator {
    /// Emulation was asked for (`ForceEmulation`) on a node with `useEmulation` off.
    #[error("software emulation was asked for but the node does not allow it (useEmulation is off)")]
    EmulationNotAllowed,
    /// Hardware KVM was required and is not there (why not).
    #[error("hardware KVM is required: {0}")]
    KvmRequired(String),
    /// No hardware KVM (why not), and the node does not allow emulation.
    #[error("{0}, and the node does not allow software emulation (useEmulation is off)")]
    NoKvmNoEmulation(String),
}

/// Decides the accelerator. `allow_emulation` is the node's `useEmulation` setting.
pub fn decide(
    host: &HostVirt,
    policy: AccelPolicy,
    allow_emulation: bool,
) -> Result<AccelDecision, NoAccelerator> {
    let hw = host.cpu_flag && host.kvm_usable;
    let why_not = match (host.cpu_flag, host.kvm_usable) {
        (true, true) => String::new(),
        (false, true) => {
            "/dev/kvm exists but the CPU has no vmx/svm flag (nested without hardware support)".into()
        }
        (true, false) => "the CPU has vmx/svm but /dev/kvm is missing or not accessible".into(),
        (false, false) => "no hardware virtualisation (no vmx/svm, no usable /dev/kvm)".into(),
    };
    match policy {
        AccelPolicy::ForceEmulation if allow_emulation => Ok(AccelDecision {
            accelerator: Accelerator::Emulation,
            reason: "software emulation forced".into(),
        }),
        AccelPolicy::ForceEmulation => Err(NoAccelerator::EmulationNotAllowed),
        _ if hw => Ok(AccelDecision { accelerator: Accelerator::Kvm, reason: "hardware KVM".into() }),
        AccelPolicy::RequireKvm => Err(NoAccelerator::KvmRequired(why_not)),
        AccelPolicy::Auto if allow_emulation => Ok(AccelDecision {
            accelerator: Accelerator::Emulation,
            reason: format!("software emulation (useEmulation): {why_not}; expect a slow guest"),
        }),
        AccelPolicy::Auto => Err(NoAccelerator::NoKvmNoEmulation(why_not)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HW: HostVirt = HostVirt { cpu_flag: true, kvm_usable: true };
    const NESTED_SW: HostVirt = HostVirt { cpu_flag: false, kvm_usable: true };
    const NONE: HostVirt = HostVirt { cpu_flag: false, kvm_usable: false };

    #[test]
    fn hardware_wins_when_present() {
        let d = decide(&HW, AccelPolicy::Auto, true).unwrap();
        assert_eq!(d.accelerator, Accelerator::Kvm);
        assert_eq!(decide(&HW, AccelPolicy::RequireKvm, false).unwrap().accelerator, Accelerator::Kvm);
    }

    #[test]
    fn software_nested_kvm_is_not_taken_for_hardware() {
        let d = decide(&NESTED_SW, AccelPolicy::Auto, true).unwrap();
        assert_eq!(d.accelerator, Accelerator::Emulation);
        assert!(d.reason.contains("no vmx/svm"), "{}", d.reason);
        assert!(decide(&NESTED_SW, AccelPolicy::RequireKvm, true)
            .unwrap_err()
            .to_string()
            .contains("required"));
    }

    #[test]
    fn emulation_needs_the_node_to_allow_it() {
        let e = decide(&NONE, AccelPolicy::Auto, false).unwrap_err().to_string();
        assert!(e.contains("useEmulation is off"), "{e}");
        assert!(decide(&HW, AccelPolicy::ForceEmulation, false).is_err());
        assert_eq!(
            decide(&HW, AccelPolicy::ForceEmulation, true).unwrap().accelerator,
            Accelerator::Emulation
        );
    }
}
