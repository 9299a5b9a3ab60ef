//! What a preference requires of an instancetype, and the CPU topology it asks for.

use super::*;

pub(super) fn matcher_name<'a>(m: &'a InstancetypeMatcher, path: &str) -> Result<&'a str, ResolveError> {
    m.name.as_deref().filter(|n| !n.is_empty()).ok_or_else(|| ResolveError::NoName { path: path.to_string() })
}

/// The preferred topology (sockets when none), with deprecated spellings normalized.
pub(super) fn preferred_topology(pref: Option<&PreferenceSpec>) -> PreferredCpuTopology {
    pref.and_then(|p| p.cpu.as_ref())
        .and_then(|c| c.preferred_cpu_topology)
        .map_or(PreferredCpuTopology::Sockets, PreferredCpuTopology::normalized)
}

pub(super) fn spread_options(pref: Option<&PreferenceSpec>) -> (u32, SpreadAcross) {
    let mut ratio = pref.and_then(|p| p.prefer_spread_socket_to_core_ratio).filter(|r| *r != 0).unwrap_or(2);
    let mut across = SpreadAcross::SocketsCores;
    if let Some(o) = pref.and_then(|p| p.cpu.as_ref()).and_then(|c| c.spread_options.as_ref()) {
        across = o.across.unwrap_or(across);
        ratio = o.ratio.filter(|r| *r != 0).unwrap_or(ratio);
    }
    (ratio, across)
}

/// (sockets, cores, threads) for `vcpus` laid out as the preference says.
pub(super) fn topology(vcpus: u32, pref: Option<&PreferenceSpec>) -> (u32, u32, u32) {
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

pub(super) fn check_spread(
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

pub(super) fn check_requirements(
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
