//! Unit tests of cmdline.rs (kept apart so the module itself stays readable).

use super::*;
use crate::machine::accel::AccelPolicy;
use crate::machine::{ClockSpec, CpuSpec, DiskSpec, TpmSpec};

pub(crate) fn layout(firmware: Firmware) -> Layout {
    let efi = matches!(firmware, Firmware::Ovmf { .. });
    Layout {
        qmp_socket: "/run/v/qmp.sock".into(),
        serial_socket: "/run/v/serial.sock".into(),
        agent_socket: "/run/v/qga.sock".into(),
        tpm_socket: Some("/run/v/swtpm.sock".into()),
        firmware,
        efi_vars: efi.then(|| "/run/v/vars.fd".into()),
        vnc_socket: "/run/vm/vnc.sock".into(),
        vhost_net: false,
    }
}

fn bios() -> Firmware {
    Firmware::Bios("/usr/share/seabios/bios-256k.bin".into())
}

fn ovmf(secure: bool) -> Firmware {
    let p = FirmwarePaths::default();
    if secure {
        Firmware::Ovmf { code: p.ovmf_secure_code, vars_template: p.ovmf_secure_vars, secure }
    } else {
        Firmware::Ovmf { code: p.ovmf_code, vars_template: p.ovmf_vars, secure }
    }
}

fn disk(name: &str, bus: DiskBus) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        path: format!("/var/lib/v/{name}.img").into(),
        format: DiskFormat::Raw,
        bus,
        cdrom: false,
        read_only: false,
        boot_order: None,
        serial: None,
    }
}

pub(crate) fn spec() -> MachineSpec {
    MachineSpec {
        name: "vm1".into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel: "/k/vmlinuz".into(),
            initramfs: Some("/k/initrd".into()),
            cmdline: "console=ttyS0".into(),
        },
        disks: vec![],
        acpi: true,
        smm: false,
        hyperv: vec![],
        clock: ClockSpec::default(),
        tpm: None,
        graphics: false,
        machine_type: None,
        accel: AccelPolicy::Auto,
        interfaces: Vec::new(),
        agent_credentials: Default::default(),
    }
}

/// The value after each occurrence of `flag`.
fn values<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
    args.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
}

fn one<'a>(args: &'a [String], flag: &str) -> &'a str {
    let v = values(args, flag);
    assert_eq!(v.len(), 1, "{flag} in {args:?}");
    v[0]
}

#[test]
fn kernel_boot_under_emulation() {
    let a = build(&spec(), Accelerator::Emulation, &layout(bios())).unwrap();
    assert_eq!(one(&a, "-accel"), "tcg");
    assert_eq!(one(&a, "-machine"), "q35,smm=off");
    assert_eq!(one(&a, "-cpu"), "max");
    assert_eq!(one(&a, "-smp"), "1,sockets=1,cores=1,threads=1");
    assert_eq!(one(&a, "-m"), "256M");
    assert_eq!(one(&a, "-bios"), "/usr/share/seabios/bios-256k.bin");
    assert_eq!(one(&a, "-kernel"), "/k/vmlinuz");
    assert_eq!(one(&a, "-initrd"), "/k/initrd");
    assert_eq!(one(&a, "-append"), "console=ttyS0");
    assert_eq!(one(&a, "-rtc"), "base=utc");
    assert_eq!(one(&a, "-serial"), "chardev:serial0");
    assert_eq!(one(&a, "-mon"), "chardev=qmp,mode=control");
    assert_eq!(one(&a, "-display"), "none");
    assert!(values(&a, "-chardev").contains(&"socket,id=qmp,path=/run/v/qmp.sock"));
    assert!(values(&a, "-chardev").contains(&"socket,id=serial0,path=/run/v/serial.sock"));
    for f in ["-nodefaults", "-no-user-config", "-S"] {
        assert!(a.iter().any(|x| x == f), "{f}");
    }
    assert!(values(&a, "-vnc").is_empty());
    // Only the guest agent's channel.
    assert!(values(&a, "-chardev").contains(&"socket,id=qga0,path=/run/v/qga.sock"));
    assert_eq!(
        values(&a, "-device"),
        [
            "virtio-serial-pci,id=virtio-serial0",
            "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0"
        ]
    );
}

#[test]
fn accelerator_and_cpu_models() {
    let mut s = spec();
    let a = build(&s, Accelerator::Kvm, &layout(bios())).unwrap();
    assert_eq!(one(&a, "-accel"), "kvm");
    assert_eq!(one(&a, "-cpu"), "host");
    for (model, kvm, tcg) in [
        ("host-passthrough", "host", "max"),
        ("host-model", "host", "max"),
        ("Skylake-Client-IBRS", "Skylake-Client-IBRS", "Skylake-Client-IBRS"),
    ] {
        s.cpu.model = Some(model.into());
        assert_eq!(one(&build(&s, Accelerator::Kvm, &layout(bios())).unwrap(), "-cpu"), kvm);
        assert_eq!(one(&build(&s, Accelerator::Emulation, &layout(bios())).unwrap(), "-cpu"), tcg);
    }
    s.cpu.model = Some("host,+vmx".into());
    assert!(build(&s, Accelerator::Kvm, &layout(bios())).is_err());
    s.cpu = CpuSpec { sockets: 2, cores: 4, threads: 2, model: None };
    assert_eq!(
        one(&build(&s, Accelerator::Kvm, &layout(bios())).unwrap(), "-smp"),
        "16,sockets=2,cores=4,threads=2"
    );
    s.cpu.cores = 0;
    assert!(build(&s, Accelerator::Kvm, &layout(bios())).unwrap_err().to_string().contains("cores=0"));
}

#[test]
fn disks_by_bus() {
    let mut s = spec();
    s.boot = BootSpec::Bios;
    let mut root = disk("root", DiskBus::Virtio);
    root.boot_order = Some(1);
    root.serial = Some("ROOT,1".into());
    let mut ro = disk("data", DiskBus::Virtio);
    ro.read_only = true;
    ro.format = DiskFormat::Qcow2;
    let mut cd = disk("cd", DiskBus::Sata);
    cd.cdrom = true;
    cd.boot_order = Some(2);
    let sata = disk("sd", DiskBus::Sata);
    let scsi = disk("sc", DiskBus::Scsi);
    let mut scd = disk("scd", DiskBus::Scsi);
    scd.cdrom = true;
    s.disks = vec![root, ro, cd, sata, scsi, scd];
    let a = build(&s, Accelerator::Kvm, &layout(bios())).unwrap();
    let drives = values(&a, "-drive");
    assert_eq!(drives[0], "if=none,id=drive-root,file=/var/lib/v/root.img,format=raw");
    assert_eq!(drives[1], "if=none,id=drive-data,file=/var/lib/v/data.img,format=qcow2,readonly=on");
    assert_eq!(drives[2], "if=none,id=drive-cd,file=/var/lib/v/cd.img,format=raw,media=cdrom,readonly=on");
    assert_eq!(
        values(&a, "-device"),
        vec![
            "virtio-blk-pci,id=disk-root,drive=drive-root,bootindex=1,serial=ROOT,,1",
            "virtio-blk-pci,id=disk-data,drive=drive-data",
            "ahci,id=sata0",
            "ide-cd,id=disk-cd,drive=drive-cd,bus=sata0.0,bootindex=2",
            "ide-hd,id=disk-sd,drive=drive-sd,bus=sata0.1",
            "virtio-scsi-pci,id=scsi0",
            "scsi-hd,id=disk-sc,drive=drive-sc,bus=scsi0.0,channel=0,scsi-id=0,lun=0",
            "scsi-cd,id=disk-scd,drive=drive-scd,bus=scsi0.0,channel=0,scsi-id=0,lun=1",
            "virtio-serial-pci,id=virtio-serial0",
            "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
        ]
    );
    // A comma in a path is escaped, a relative path refused, a virtio CD-ROM refused.
    let mut s2 = spec();
    s2.disks = vec![disk("x", DiskBus::Virtio)];
    s2.disks[0].path = "/a,b/x.img".into();
    assert!(values(&build(&s2, Accelerator::Kvm, &layout(bios())).unwrap(), "-drive")[0]
        .contains("file=/a,,b/x.img"));
    s2.disks[0].path = "x.img".into();
    assert!(build(&s2, Accelerator::Kvm, &layout(bios())).unwrap_err().to_string().contains("absolute"));
    s2.disks[0].path = "/x.img".into();
    s2.disks[0].cdrom = true;
    assert!(build(&s2, Accelerator::Kvm, &layout(bios())).unwrap_err().to_string().contains("sata or scsi"));
    s2.disks = vec![disk("x", DiskBus::Sata), disk("x", DiskBus::Sata)];
    assert!(build(&s2, Accelerator::Kvm, &layout(bios())).unwrap_err().to_string().contains("twice"));
    // Seven SATA disks need a second controller.
    s2.disks = (0..7).map(|i| disk(&format!("s{i}"), DiskBus::Sata)).collect();
    let a = build(&s2, Accelerator::Kvm, &layout(bios())).unwrap();
    assert!(values(&a, "-device").contains(&"ahci,id=sata1"));
    assert!(values(&a, "-device").contains(&"ide-hd,id=disk-s6,drive=drive-s6,bus=sata1.0"));
}

#[test]
fn firmware_bios_and_ovmf() {
    let mut s = spec();
    s.boot = BootSpec::Bios;
    let a = build(&s, Accelerator::Emulation, &layout(bios())).unwrap();
    assert_eq!(one(&a, "-bios"), "/usr/share/seabios/bios-256k.bin");
    assert!(values(&a, "-kernel").is_empty());
    s.boot = BootSpec::Efi { secure_boot: false, vars: None };
    let a = build(&s, Accelerator::Emulation, &layout(ovmf(false))).unwrap();
    assert_eq!(
        values(&a, "-drive"),
        vec![
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "if=pflash,format=raw,unit=1,file=/run/v/vars.fd"
        ]
    );
    assert!(values(&a, "-bios").is_empty() && values(&a, "-global").is_empty());
    // Secure Boot: the secboot code, SMM, and pflash writable from SMM only.
    s.boot = BootSpec::Efi { secure_boot: true, vars: None };
    assert!(build(&s, Accelerator::Emulation, &layout(ovmf(true))).unwrap_err().to_string().contains("SMM"));
    s.smm = true;
    let a = build(&s, Accelerator::Emulation, &layout(ovmf(true))).unwrap();
    assert_eq!(one(&a, "-machine"), "q35,smm=on");
    assert_eq!(one(&a, "-global"), "driver=cfi.pflash01,property=secure,value=on");
    assert!(values(&a, "-drive")[0].ends_with("file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"));
    // Firmware that does not fit the boot is a bug upstream, reported.
    assert!(build(&s, Accelerator::Emulation, &layout(bios())).is_err());
}

#[test]
fn firmware_resolution_names_the_package() {
    let p = FirmwarePaths {
        seabios: "/nonexistent/bios-256k.bin".into(),
        ovmf_code: "/nonexistent/OVMF_CODE_4M.fd".into(),
        ..Default::default()
    };
    let e = p.resolve(&BootSpec::Bios).unwrap_err().to_string();
    assert!(e.contains("seabios") && e.contains("/nonexistent/bios-256k.bin"), "{e}");
    let e = p.resolve(&BootSpec::Efi { secure_boot: false, vars: None }).unwrap_err().to_string();
    assert!(e.contains("install Debian's ovmf package"), "{e}");
}

#[test]
fn hyperv_clock_and_timers() {
    let mut s = spec();
    s.hyperv = vec![
        HypervFeature::Flag("relaxed".into()),
        HypervFeature::Flag("vapic".into()),
        HypervFeature::Spinlocks(8191),
        HypervFeature::Stimer { direct: true },
        HypervFeature::Flag("tlbflush".into()),
        HypervFeature::VendorId("KVMKVMKVM".into()),
    ];
    s.clock = ClockSpec {
        localtime: true,
        timers: vec![("hpet".into(), false), ("hyperv".into(), true), ("pit".into(), true)],
        tick_policies: vec![("rtc".into(), "catchup".into()), ("pit".into(), "delay".into())],
    };
    let a = build(&s, Accelerator::Kvm, &layout(bios())).unwrap();
    assert_eq!(
            one(&a, "-cpu"),
            "host,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-synic,hv-stimer,hv-stimer-direct,hv-time,hv-tlbflush,hv-vendor-id=KVMKVMKVM"
        );
    assert_eq!(one(&a, "-machine"), "q35,smm=off,hpet=off");
    assert_eq!(one(&a, "-rtc"), "base=localtime,driftfix=slew");
    assert_eq!(one(&a, "-global"), "kvm-pit.lost_tick_policy=delay");
    // Under TCG there is no in-kernel PIT to set.
    assert!(values(&build(&s, Accelerator::Emulation, &layout(bios())).unwrap(), "-global").is_empty());
    s.hyperv = vec![HypervFeature::Flag("turbo".into())];
    assert!(build(&s, Accelerator::Kvm, &layout(bios())).unwrap_err().to_string().contains("turbo"));
    s.hyperv = vec![];
    s.clock.timers = vec![("tsc".into(), true)];
    assert!(build(&s, Accelerator::Kvm, &layout(bios())).is_err());
}

#[test]
fn tpm_vnc_and_machine_options() {
    let mut s = spec();
    s.tpm = Some(TpmSpec { persistent: false, state_dir: "/x".into() });
    s.graphics = true;
    s.acpi = false;
    s.machine_type = Some("pc-q35-10.0".into());
    let a = build(&s, Accelerator::Emulation, &layout(bios())).unwrap();
    assert!(values(&a, "-chardev").contains(&"socket,id=chrtpm,path=/run/v/swtpm.sock"));
    assert_eq!(one(&a, "-tpmdev"), "emulator,id=tpm0,chardev=chrtpm");
    assert_eq!(
        values(&a, "-device"),
        vec![
            "tpm-crb,tpmdev=tpm0",
            "virtio-serial-pci,id=virtio-serial0",
            "virtserialport,bus=virtio-serial0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "VGA,id=video0"
        ]
    );
    // A unix socket only: no TCP listener for the display, confined or not.
    assert_eq!(one(&a, "-vnc"), "unix:/run/vm/vnc.sock");
    assert_eq!(one(&a, "-machine"), "pc-q35-10.0,smm=off,acpi=off");
    s.name = "bad name".into();
    assert!(build(&s, Accelerator::Emulation, &layout(bios())).is_err());
}
