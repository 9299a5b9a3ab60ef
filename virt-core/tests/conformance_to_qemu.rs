//! KubeVirt's Windows, Secure Boot and EFI examples, loaded unchanged, resolved (instancetypes and
//! preferences applied), turned into a MachineSpec and into QEMU's command line: the flags are asserted.

use std::path::{Path, PathBuf};

use virt_core::machine::accel::{AccelPolicy, Accelerator};
use virt_core::machine::qemu::cmdline::{build, Firmware, Layout};
use virt_core::machine::resolve::{machine_spec, VolumeFiles};
use virt_core::machine::{BootSpec, DiskBus, DiskFormat, MachineSpec};
use virt_core::model::{self, KernelBootContainer, VirtualMachineInstance, Volume};

fn conformance(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/kubevirt").join(name);
    std::fs::read_to_string(&p)
        .or_else(|_| std::fs::read_to_string(format!("/work/shared/conformance/kubevirt/{name}")))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Files;
impl VolumeFiles for Files {
    fn volume_file(&self, v: &Volume) -> Result<(PathBuf, DiskFormat), String> {
        Ok((PathBuf::from(format!("/var/lib/virt/volumes/{}.img", v.name)), DiskFormat::Raw))
    }
    fn kernel_files(&self, _: &KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), String> {
        Err("no kernel images here".into())
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
        tpm_socket: spec.tpm.as_ref().map(|_| "/run/v/swtpm.sock".into()),
        firmware,
        efi_vars: efi.then(|| "/run/v/vars.fd".into()),
        vnc_display: 0,
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
