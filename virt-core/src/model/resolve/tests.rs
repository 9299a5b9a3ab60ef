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
    assert_eq!(e.to_string(), "spec.instancetype: 3 vCPUs cannot be spread across SocketsCores with ratio 2");
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
