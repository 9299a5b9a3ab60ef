//! From a KubeVirt VMI spec (instancetypes and preferences already applied, see
//! [`crate::model::resolve`]) to a [`MachineSpec`] a backend runs.
//!
//! Volumes become files through a caller-supplied [`VolumeFiles`] (the lifecycle knows where a
//! containerDisk was pulled, which pool holds a DataVolume, where a cloud-init seed disk was written);
//! everything else is a field-by-field mapping with KubeVirt's defaults: a volume without a disk gets
//! one, disks on virtio, CD-ROMs on SATA, ACPI on, BIOS unless `bootloader.efi` is set (Secure Boot on unless `secureBoot: false`), a
//! VNC display unless `autoattachGraphicsDevice: false`.

use std::path::PathBuf;

use super::accel::AccelPolicy;
use super::{
    BootSpec, ClockSpec, CpuSpec, DiskBus, DiskFormat, DiskSpec, HypervFeature, InterfaceBackend,
    InterfaceSpec, MachineSpec, NicModel, TpmSpec,
};
use crate::model::{self, VirtualMachineInstanceSpec, Volume};
use crate::net::MacAddr;

/// Where the lifecycle put what the VMI refers to.
pub trait VolumeFiles {
    /// The file (and its format) backing `volume`.
    fn volume_file(&self, volume: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError>;
    /// The kernel and initrd extracted from a `kernelBoot.container` image.
    fn kernel_files(
        &self,
        container: &model::KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), HostFileError>;
    /// Where this VM's persistent state (EFI variables, TPM) lives.
    fn state_dir(&self) -> PathBuf;
    /// The host side of `interface` (the node's network layer wires it); unlinked by default.
    fn interface_backend(&self, _interface: &model::Interface) -> Result<InterfaceBackend, HostFileError> {
        Ok(InterfaceBackend::None)
    }
}

/// Why the host side of a VMI's volume, kernel or interface is not there ([`VolumeFiles`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostFileError {
    /// The runtime did not prepare this volume (its kind is not served here, or preparing it failed).
    #[error("volume {volume} was not prepared{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    VolumeNotPrepared {
        /// The volume's name.
        volume: String,
        /// Why, when known.
        reason: Option<String>,
    },
    /// The kernel-boot container's kernel and initrd were not extracted.
    #[error("the kernel-boot container {image} was not pulled{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    KernelNotPulled {
        /// The container image.
        image: String,
        /// Why, when known.
        reason: Option<String>,
    },
    /// The interface's host side could not be made.
    #[error("interface {interface}: {reason}")]
    Interface {
        /// The interface's name.
        interface: String,
        /// Why.
        reason: String,
    },
}

/// Why a VMI cannot become a machine; each names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}: {message}")]
pub struct ResolveError {
    /// The field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ResolveError {
    ResolveError { path: path.into(), message: message.into() }
}

fn enabled(s: &Option<model::FeatureState>) -> bool {
    s.as_ref().is_some_and(|f| f.is_enabled())
}

fn serde_name<T: serde::Serialize>(v: &T) -> Option<String> {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(str::to_string))
}

/// Builds the machine for VMI `name` with `spec`.
pub fn machine_spec(
    name: &str,
    spec: &VirtualMachineInstanceSpec,
    files: &dyn VolumeFiles,
    accel: AccelPolicy,
) -> Result<MachineSpec, ResolveError> {
    let d = &spec.domain;
    let cpu = d.cpu.as_ref();
    let pos = |v: Option<u32>| v.filter(|n| *n > 0).unwrap_or(1);
    let cpu = CpuSpec {
        sockets: pos(cpu.and_then(|c| c.sockets)),
        cores: pos(cpu.and_then(|c| c.cores)),
        threads: pos(cpu.and_then(|c| c.threads)),
        model: cpu.and_then(|c| c.model.clone()),
    };
    let memory = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| d.resources.as_ref().and_then(|r| r.requests.get("memory")))
        .map(|q| q.bytes())
        .ok_or_else(|| {
            err("spec.domain.memory.guest", "no guest memory (memory.guest or resources.requests.memory)")
        })?;
    let memory_mib = memory.div_ceil(1 << 20);

    let fw = d.firmware.as_ref();
    let boot = if let Some(kb) = fw.and_then(|f| f.kernel_boot.as_ref()) {
        let c = kb.container.as_ref().ok_or_else(|| {
            err("spec.domain.firmware.kernelBoot.container", "kernel boot needs a container image")
        })?;
        let (kernel, initramfs) = files
            .kernel_files(c)
            .map_err(|m| err("spec.domain.firmware.kernelBoot.container", m.to_string()))?;
        BootSpec::Kernel { kernel, initramfs, cmdline: kb.kernel_args.clone().unwrap_or_default() }
    } else if let Some(efi) = fw.and_then(|f| f.bootloader.as_ref()).and_then(|b| b.efi.as_ref()) {
        let vars = efi.persistent.unwrap_or(false).then(|| files.state_dir().join("efi-vars.fd"));
        BootSpec::Efi { secure_boot: efi.secure_boot_enabled(), vars }
    } else {
        BootSpec::Bios
    };

    let mut disks = Vec::new();
    for (i, disk) in d.devices.disks.iter().enumerate() {
        let path = format!("spec.domain.devices.disks[{i}]");
        let vol = spec
            .volumes
            .iter()
            .find(|v| v.name == disk.name)
            .ok_or_else(|| err(format!("{path}.name"), format!("no volume named {:?}", disk.name)))?;
        let (file, format) = files
            .volume_file(vol)
            .map_err(|m| err(format!("spec.volumes[name={}]", vol.name), m.to_string()))?;
        let cdrom = disk.cdrom.is_some();
        let (bus, read_only) = if let Some(t) = &disk.cdrom {
            (t.bus.unwrap_or(model::DiskBus::Sata), true)
        } else if let Some(t) = &disk.lun {
            (t.bus.unwrap_or(model::DiskBus::Scsi), t.read_only.unwrap_or(false))
        } else {
            let t = disk.disk.as_ref();
            (
                t.and_then(|t| t.bus).unwrap_or(model::DiskBus::Virtio),
                t.and_then(|t| t.read_only).unwrap_or(false),
            )
        };
        let bus = match bus {
            model::DiskBus::Virtio => DiskBus::Virtio,
            model::DiskBus::Sata => DiskBus::Sata,
            model::DiskBus::Scsi => DiskBus::Scsi,
            model::DiskBus::Usb => {
                return Err(err(format!("{path}.disk.bus"), "usb disks are not supported on this node"))
            }
        };
        disks.push(DiskSpec {
            name: disk.name.clone(),
            path: file,
            format,
            bus,
            cdrom,
            read_only,
            boot_order: disk.boot_order,
            serial: disk.serial.clone(),
        });
    }

    // KubeVirt's defaulting: a volume no disk refers to is attached as a disk on the default bus.
    for vol in &spec.volumes {
        if d.devices.disks.iter().any(|k| k.name == vol.name) {
            continue;
        }
        let (file, format) = files
            .volume_file(vol)
            .map_err(|m| err(format!("spec.volumes[name={}]", vol.name), m.to_string()))?;
        disks.push(DiskSpec {
            name: vol.name.clone(),
            path: file,
            format,
            bus: DiskBus::Virtio,
            cdrom: false,
            read_only: false,
            boot_order: None,
            serial: None,
        });
    }

    let f = d.features.as_ref();
    let acpi = f.and_then(|f| f.acpi.as_ref()).is_none_or(|a| a.is_enabled());
    // `features.smm` as written; absent, SMM follows the graphics device, as QEMU's own default
    // (smm=auto: on) would give a KubeVirt domain with no <smm> element. QEMU 9.1 and later leave
    // q35's legacy VGA window (0xa0000-0xbffff) unmapped with smm=off, so the VGA text screen a
    // VNC viewer shows stays black; the native backend (no graphics, no SMM) is unaffected.
    let graphics = d.devices.autoattach_graphics_device.unwrap_or(true);
    let smm = match f.and_then(|f| f.smm.as_ref()) {
        Some(state) => state.is_enabled(),
        None => graphics,
    };
    let mut hyperv = Vec::new();
    if let Some(h) = f.and_then(|f| f.hyperv.as_ref()) {
        for (flag, on) in [
            ("relaxed", enabled(&h.relaxed)),
            ("vapic", enabled(&h.vapic)),
            ("vpindex", enabled(&h.vpindex)),
            ("runtime", enabled(&h.runtime)),
            ("synic", enabled(&h.synic)),
            ("reset", enabled(&h.reset)),
            ("frequencies", enabled(&h.frequencies)),
            ("reenlightenment", enabled(&h.reenlightenment)),
            ("ipi", enabled(&h.ipi)),
            ("evmcs", enabled(&h.evmcs)),
        ] {
            if on {
                hyperv.push(HypervFeature::Flag(flag.into()));
            }
        }
        if let Some(s) = &h.spinlocks {
            if s.enabled.unwrap_or(true) {
                hyperv.push(HypervFeature::Spinlocks(s.spinlocks.unwrap_or(4096)));
            }
        }
        if let Some(t) = &h.synictimer {
            if t.enabled.unwrap_or(true) {
                hyperv.push(HypervFeature::Stimer { direct: enabled(&t.direct) });
            }
        }
        if let Some(t) = &h.tlbflush {
            if t.enabled.unwrap_or(true) {
                hyperv.push(HypervFeature::Flag("tlbflush".into()));
            }
        }
        if let Some(v) = &h.vendorid {
            if v.enabled.unwrap_or(true) {
                hyperv.push(HypervFeature::VendorId(v.vendorid.clone().unwrap_or_else(|| "virt-rs".into())));
            }
        }
    }

    let mut clock = ClockSpec::default();
    if let Some(c) = &d.clock {
        clock.localtime = c.timezone.is_some();
        if let Some(t) = &c.timer {
            let mut timer = |name: &str, present: Option<bool>, policy: Option<String>| {
                clock.timers.push((name.to_string(), present.unwrap_or(true)));
                if let Some(p) = policy {
                    clock.tick_policies.push((name.to_string(), p));
                }
            };
            if let Some(x) = &t.hpet {
                timer("hpet", x.present, x.tick_policy.as_ref().and_then(serde_name));
            }
            if let Some(x) = &t.pit {
                timer("pit", x.present, x.tick_policy.as_ref().and_then(serde_name));
            }
            if let Some(x) = &t.rtc {
                timer("rtc", x.present, x.tick_policy.as_ref().and_then(serde_name));
            }
            if let Some(x) = &t.hyperv {
                timer("hyperv", x.present, None);
            }
            if let Some(x) = &t.kvm {
                timer("kvm", x.present, None);
            }
        }
    }

    let tpm = d.devices.tpm.as_ref().filter(|t| t.enabled.unwrap_or(true)).map(|t| TpmSpec {
        persistent: t.persistent.unwrap_or(false),
        state_dir: files.state_dir().join("tpm"),
    });
    Ok(MachineSpec {
        name: name.to_string(),
        cpu,
        memory_mib,
        boot,
        disks,
        acpi,
        smm,
        hyperv,
        clock,
        tpm,
        graphics,
        machine_type: d.machine.as_ref().and_then(|m| m.type_.clone()),
        accel,
        interfaces: interfaces(name, spec, files)?,
        agent_credentials: Default::default(),
    })
}

/// NICs: KubeVirt's model names, the MAC asked for or one derived from the VM and interface names
/// (stable across restarts; the node's MAC pool replaces it), interfaces marked `absent` left out.
fn interfaces(
    name: &str,
    spec: &VirtualMachineInstanceSpec,
    files: &dyn VolumeFiles,
) -> Result<Vec<InterfaceSpec>, ResolveError> {
    let mut out = Vec::new();
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let path = format!("spec.domain.devices.interfaces[{i}]");
        if iface.state == Some(model::InterfaceState::Absent) {
            continue;
        }
        if !spec.networks.iter().any(|n| n.name == iface.name) {
            return Err(err(format!("{path}.name"), format!("no network named {:?}", iface.name)));
        }
        let model = match iface.model.as_deref() {
            None => NicModel::Virtio,
            Some(m) => NicModel::from_name(m).ok_or_else(|| {
                let names: Vec<_> = NicModel::ALL.iter().map(|m| m.name()).collect();
                err(format!("{path}.model"), format!("unknown model {m:?} (one of {})", names.join(", ")))
            })?,
        };
        let mac = match &iface.mac_address {
            Some(m) => m
                .parse()
                .map_err(|e: crate::net::MacParseError| err(format!("{path}.macAddress"), e.to_string()))?,
            None => MacAddr::derived(&format!("{name}/{}", iface.name)),
        };
        let backend = files.interface_backend(iface).map_err(|m| err(path.clone(), m.to_string()))?;
        out.push(InterfaceSpec {
            name: iface.name.clone(),
            mac,
            model,
            backend,
            mtu: None,
            boot_order: iface.boot_order,
            vhost: Default::default(),
        });
    }
    Ok(out)
}
