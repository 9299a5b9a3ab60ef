//! KubeVirt's Windows, Secure Boot and EFI examples, loaded unchanged, resolved (instancetypes and
//! preferences applied), turned into a MachineSpec and into QEMU's command line: the flags are asserted.

use std::path::{Path, PathBuf};

use virt_core::machine::accel::{AccelPolicy, Accelerator};
use virt_core::machine::qemu::cmdline::{build, Firmware, Layout};
use virt_core::machine::resolve::{machine_spec, HostFileError, VolumeFiles};
use virt_core::machine::{BootSpec, DiskBus, DiskFormat, InterfaceBackend, MachineSpec, NicModel};
use virt_core::model::{self, KernelBootContainer, VirtualMachineInstance, Volume};
use virt_core::net::MacAddr;

fn conformance(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conformance/kubevirt").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Files;
impl VolumeFiles for Files {
    fn volume_file(&self, v: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        Ok((PathBuf::from(format!("/var/lib/virt/volumes/{}.img", v.name)), DiskFormat::Raw))
    }
    fn kernel_files(&self, c: &KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        Err(HostFileError::KernelNotPulled {
            image: c.image.clone(),
            reason: Some("no kernel images here".into()),
        })
    }
    fn state_dir(&self) -> PathBuf {
        "/var/lib/virt/state/vm".into()
    }
}

fn layout(spec: &MachineSpec) -> Layout {
    let firmware = match &spec.boot {
        BootSpec::Efi { secure_boot, .. } => Firmware::Ovmf {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars_template: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            secure: *secure_boot,
        },
        _ => Firmware::Bios("/usr/share/seabios/bios-256k.bin".into()),
    };
    let efi = matches!(firmware, Firmware::Ovmf { .. });
    Layout {
        qmp_socket: "/run/v/qmp.sock".into(),
        serial_socket: "/run/v/serial.sock".into(),
        agent_socket: "/run/v/qga.sock".into(),
        tpm_socket: spec.tpm.as_ref().map(|_| "/run/v/swtpm.sock".into()),
        firmware,
        efi_vars: efi.then(|| "/run/v/vars.fd".into()),
        vnc_socket: "/run/vm/vnc.sock".into(),
        vhost_net: false,
    }
}

fn vmi(name: &str) -> VirtualMachineInstance {
    model::from_yaml(&conformance(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn flags(spec: &MachineSpec) -> String {
    build(spec, Accelerator::Kvm, &layout(spec)).unwrap().join(" ")
}

#[test]
fn windows_vmi_maps_to_hyperv_tpm_efi_and_its_timers() {
    let v = vmi("vmi-windows.yaml");
    let s = machine_spec("vmi-windows", &v.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(s.acpi && s.smm, "{s:?}");
    assert_eq!(s.memory_mib, 2048);
    assert!(s.tpm.is_some());
    // The volume has no disk of its own: KubeVirt's defaulting gives it one on virtio.
    assert_eq!((s.disks.len(), s.disks[0].bus), (1, DiskBus::Virtio));
    assert!(matches!(s.boot, BootSpec::Efi { secure_boot: true, .. }));
    let f = flags(&s);
    for want in [
        "hv-relaxed",
        "hv-vapic",
        "hv-spinlocks=0x1fff",
        "-rtc base=utc",
        "hpet=off",
        "tpm-crb",
        "virtio-blk",
        "-accel kvm",
        "smm=on",
    ] {
        assert!(f.contains(want), "missing {want:?} in:\n{f}");
    }
}

#[test]
fn secure_boot_and_efi_examples_map_to_ovmf() {
    let v = vmi("vmi-secureboot.yaml");
    let s = machine_spec("vmi-secureboot", &v.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(matches!(s.boot, BootSpec::Efi { secure_boot: true, .. }), "{:?}", s.boot);
    assert!(s.smm);
    let f = flags(&s);
    for want in ["if=pflash", "smm=on", "cfi.pflash01,property=secure,value=on"] {
        assert!(f.contains(want), "missing {want:?} in:\n{f}");
    }
    let v = vmi("vmi-alpine-efi.yaml");
    let s = machine_spec("vmi-alpine-efi", &v.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(matches!(s.boot, BootSpec::Efi { secure_boot: false, .. }), "{:?}", s.boot);
    let f = flags(&s);
    assert!(f.contains("if=pflash") && !f.contains("property=secure"), "{f}");
}

#[test]
fn a_vmi_without_memory_or_with_a_dangling_disk_is_refused_by_path() {
    let mut v = vmi("vmi-alpine-efi.yaml");
    v.spec.domain.memory = None;
    v.spec.domain.resources = None;
    let e = machine_spec("x", &v.spec, &Files, AccelPolicy::Auto).unwrap_err();
    assert_eq!(e.path, "spec.domain.memory.guest");
    let mut v = vmi("vmi-alpine-efi.yaml");
    v.spec.volumes.clear();
    let e = machine_spec("x", &v.spec, &Files, AccelPolicy::Auto).unwrap_err();
    assert!(e.path.starts_with("spec.domain.devices.disks[0]"), "{e}");
}

#[test]
fn windows_vm_with_the_clarge_instancetype_resolves_once_its_conflict_is_gone() {
    let mut catalog = model::Catalog::new();
    for f in ["clarge.yaml", "windows.yaml"] {
        for d in model::load_yaml(&conformance(f)).unwrap() {
            catalog.add(&d.object);
        }
    }
    let mut vm: model::VirtualMachine =
        model::from_yaml(&conformance("vm-windows-clarge-windows.yaml")).unwrap();
    // As KubeVirt, a VM value that differs from its instancetype's is refused, naming the field.
    let e = model::resolve(&vm, &catalog).unwrap_err().to_string();
    assert!(e.contains("spec.template.spec.domain.memory.guest"), "{e}");
    // Without the conflicting field, the instancetype and the windows preference shape the machine.
    vm.spec.template.spec.domain.memory = None;
    let tpl = model::resolve(&vm, &catalog).unwrap();
    let s = machine_spec("vm-windows", &tpl.spec, &Files, AccelPolicy::Auto).unwrap();
    assert_eq!((s.cpu.count(), s.memory_mib), (4, 2048));
    assert!(s.tpm.is_some() && s.smm && matches!(s.boot, BootSpec::Efi { secure_boot: true, .. }));
    assert!(s.disks.iter().all(|d| d.bus == DiskBus::Sata), "{:?}", s.disks);
    let f = flags(&s);
    for want in ["hv-relaxed", "ide-hd", "tpm-crb", "if=pflash"] {
        assert!(f.contains(want), "missing {want:?} in:\n{f}");
    }
}

/// The node wires every interface to a tap named after it.
struct Wired;
impl VolumeFiles for Wired {
    fn volume_file(&self, v: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        Files.volume_file(v)
    }
    fn kernel_files(&self, c: &KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        Files.kernel_files(c)
    }
    fn state_dir(&self) -> PathBuf {
        Files.state_dir()
    }
    fn interface_backend(&self, i: &model::Interface) -> Result<InterfaceBackend, HostFileError> {
        Ok(InterfaceBackend::Tap { name: format!("tap-{}", &i.name[..i.name.len().min(11)]) })
    }
}

#[test]
fn interfaces_become_nics_with_their_model_and_a_stable_mac() {
    // vmi-windows: one e1000 on the pod network; unwired (no node networking), it has no netdev.
    let v = vmi("vmi-windows.yaml");
    let s = machine_spec("vmi-windows", &v.spec, &Files, AccelPolicy::Auto).unwrap();
    assert_eq!(s.interfaces.len(), 1);
    let nic = &s.interfaces[0];
    assert_eq!(
        (nic.name.as_str(), nic.model, &nic.backend),
        ("default", NicModel::E1000, &InterfaceBackend::None)
    );
    assert_eq!(nic.mac, MacAddr::derived("vmi-windows/default"));
    let f = flags(&s);
    assert!(f.contains(&format!("-device e1000,id=net0,mac={},romfile=", nic.mac)), "{f}");
    assert!(!f.contains("-netdev"), "{f}");
    // vmi-masquerade: virtio by default; a wired interface gets its tap.
    let mut v = vmi("vmi-masquerade.yaml");
    v.spec.domain.devices.interfaces[0].mac_address = Some("DE-AD-00-00-BE-AF".into());
    let s = machine_spec("vmi-masquerade", &v.spec, &Wired, AccelPolicy::Auto).unwrap();
    let nic = &s.interfaces[0];
    assert_eq!((nic.model, nic.mac.to_string().as_str()), (NicModel::Virtio, "de:ad:00:00:be:af"));
    let f = flags(&s);
    assert!(f.contains("-netdev tap,id=hostnet0,ifname=tap-testmasquer,script=no,downscript=no"), "{f}");
    assert!(f.contains("-device virtio-net-pci,id=net0,mac=de:ad:00:00:be:af,netdev=hostnet0"), "{f}");
    // Bad input names the field.
    v.spec.domain.devices.interfaces[0].mac_address = Some("de:ad".into());
    let e = machine_spec("x", &v.spec, &Wired, AccelPolicy::Auto).unwrap_err();
    assert_eq!(e.path, "spec.domain.devices.interfaces[0].macAddress");
    v.spec.domain.devices.interfaces[0].mac_address = None;
    v.spec.domain.devices.interfaces[0].model = Some("virtio-fast".into());
    let e = machine_spec("x", &v.spec, &Wired, AccelPolicy::Auto).unwrap_err();
    assert_eq!(e.path, "spec.domain.devices.interfaces[0].model");
    // An absent interface is left out.
    v.spec.domain.devices.interfaces[0].model = None;
    v.spec.domain.devices.interfaces[0].state = Some(model::InterfaceState::Absent);
    assert!(machine_spec("x", &v.spec, &Wired, AccelPolicy::Auto).unwrap().interfaces.is_empty());
}

/// SMM as written in `features.smm`; absent, it follows the graphics device: QEMU 9.1 and later
/// leave q35's legacy VGA window unmapped with `smm=off`, so a VNC viewer of a text-mode guest
/// saw a black screen (the web console's VNC test).
#[test]
fn smm_follows_the_graphics_device_unless_features_say_otherwise() {
    let v = vmi("vmi-alpine-efi.yaml");
    assert!(v.spec.domain.features.as_ref().and_then(|f| f.smm.as_ref()).is_none());
    let s = machine_spec("efi", &v.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(s.graphics && s.smm, "{s:?}");
    assert!(flags(&s).contains("q35,smm=on"));
    let mut headless = v.clone();
    headless.spec.domain.devices.autoattach_graphics_device = Some(false);
    let s = machine_spec("efi", &headless.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(!s.graphics && !s.smm, "{s:?}");
    let off: VirtualMachineInstance = model::from_yaml(&conformance("vmi-alpine-efi.yaml").replacen(
        "  domain:\n",
        "  domain:\n    features:\n      smm:\n        enabled: false\n",
        1,
    ))
    .unwrap();
    let s = machine_spec("efi", &off.spec, &Files, AccelPolicy::Auto).unwrap();
    assert!(s.graphics && !s.smm, "features.smm.enabled: false is kept: {s:?}");
}
