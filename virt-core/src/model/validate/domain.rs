//! Validation of a VMI's `spec.domain`: CPU, memory, devices, firmware, features.

use std::collections::BTreeSet;

use crate::api::{child, ProblemKind, Validation};

use crate::model::devices::{Gpu, HostDevice};
use crate::model::domain::{Bootloader, DomainSpec, Firmware};

use super::{err, invalid, is_uuid, item, SpecRules};

pub(super) fn validate_domain(v: &mut Validation, d: &DomainSpec, dp: &str, rules: SpecRules) {
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

pub(super) fn validate_firmware(v: &mut Validation, fw: &Firmware, fp: &str, smm: bool) {
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

pub(super) fn check_names<'a>(v: &mut Validation, names: impl Iterator<Item = &'a str>, path: &str) {
    let mut seen = BTreeSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            err(v, format!("{path}[{i}].name"), ProblemKind::Required, "a name is required");
        } else if !seen.insert(n) {
            invalid(v, format!("{path}[{i}].name"), format!("{n:?} is used twice"));
        }
    }
}
