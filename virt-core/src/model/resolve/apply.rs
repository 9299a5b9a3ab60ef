//! Copying an instancetype's sizing and a preference's defaults into a VM's template.

use super::*;

/// Applies the instancetype to the template; returns the conflicts (nothing is half-applied that
/// matters: on conflicts the caller discards the template).
pub(super) fn apply_instancetype(
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
        let meta = template.metadata.get_or_insert_with(Box::default);
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
pub(super) fn apply_preference(p: &PreferenceSpec, template: &mut VirtualMachineInstanceTemplateSpec) {
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
        let firmware = d.firmware.get_or_insert_with(Box::default);
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
        if d.firmware.as_deref().is_some_and(|f| f == &Firmware::default()) {
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
        let meta = template.metadata.get_or_insert_with(Box::default);
        for (k, v) in &p.annotations {
            meta.annotations.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

pub(super) fn apply_disk_preferences(disk: &mut Disk, dp: &crate::model::instancetype::DevicePreferences) {
    if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
        disk.disk = Some(DiskTarget::default());
    }
    if let Some(target) = disk.disk.as_mut() {
        fill(&mut target.bus, dp.preferred_disk_bus);
        let bus = target.bus;
        fill_clone(&mut disk.block_size, &dp.preferred_disk_block_size);
        fill(&mut disk.cache, dp.preferred_disk_cache);
        fill(&mut disk.io, dp.preferred_disk_io);
        if bus == Some(crate::model::devices::DiskBus::Virtio) {
            fill(&mut disk.dedicated_io_thread, dp.preferred_disk_dedicated_io_thread);
        }
    } else if let Some(c) = disk.cdrom.as_mut() {
        fill(&mut c.bus, dp.preferred_cdrom_bus);
    } else if let Some(l) = disk.lun.as_mut() {
        fill(&mut l.bus, dp.preferred_lun_bus);
    }
}

pub(super) fn fill<T: Copy>(slot: &mut Option<T>, preferred: Option<T>) {
    if slot.is_none() {
        *slot = preferred;
    }
}

pub(super) fn fill_clone<T: Clone>(slot: &mut Option<T>, preferred: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(preferred);
    }
}
