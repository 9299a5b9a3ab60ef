//! The QEMU backend end to end, under software emulation where KVM is unusable (this machine's
//! /dev/kvm has no vmx/svm): the Debian kernel and the project's initramfs, the firmware-boot disk
//! with SeaBIOS, OVMF and OVMF Secure Boot, lifecycle transitions, the ACPI power button, a forced
//! stop, VNC (a tiny RFB client), a TPM. Guest assets come from scripts/guest-assets.sh (cached).
//! Boots run one at a time: the machine has two cores and TCG is CPU-bound.
//!
//! Also: the KubeVirt conformance VMIs that need QEMU (Windows, Secure Boot, EFI), written by hand as
//! the MachineSpec they resolve to (the KubeVirt model comes later), and the flags they give.

#[macro_use]
#[path = "support/guest.rs"]
mod guest;

use guest::Console;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest::{asset, boot_lock, vnc_framebuffer_update};
use virt_core::machine::accel::{AccelPolicy, Accelerator, HostVirt};
use virt_core::machine::qemu::cmdline::ConfigError;
use virt_core::machine::qemu::{CommandLineError, QemuBackend, QemuOptions};
use virt_core::machine::{
    BootSpec, ClockSpec, CpuSpec, DiskBus, DiskFormat, DiskSpec, HypervFeature, Machine, MachineBackend,
    MachineEvent, MachineExit, MachineSpec, MachineStatus, TpmSpec,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn backend() -> QemuBackend {
    QemuBackend::new(QemuOptions {
        allow_emulation: true,
        stop_grace: Duration::from_secs(5),
        ..Default::default()
    })
}

fn kernel_spec(name: &str, cmdline: &str) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel: asset("KERNEL"),
            initramfs: Some(asset("INITRAMFS")),
            cmdline: format!("console=ttyS0 quiet panic=-1 {cmdline}"),
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

fn disk_spec(name: &str, boot: BootSpec) -> MachineSpec {
    let mut s = kernel_spec(name, "");
    s.boot = boot;
    s.memory_mib = 512;
    s.disks = vec![DiskSpec {
        name: "boot".into(),
        path: asset("BOOTDISK"),
        format: DiskFormat::Raw,
        bus: DiskBus::Virtio,
        cdrom: false,
        read_only: true,
        boot_order: Some(1),
        serial: Some("VIRT-BOOT".into()),
    }];
    s
}

fn start(spec: &MachineSpec) -> (Box<dyn Machine>, Console) {
    let console = Console::default();
    let m = backend()
        .start(spec, Box::new(console.clone()))
        .unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
    let d = m.accelerator();
    eprintln!("{}: accelerator {:?}: {}", spec.name, d.accelerator, d.reason);
    assert_eq!(d, backend().decide(spec).unwrap());
    if !HostVirt::probe().cpu_flag {
        assert_eq!(d.accelerator, Accelerator::Emulation);
        assert!(d.reason.contains("software emulation"), "{}", d.reason);
    }
    (m, console)
}

/// Events up to and including the machine's end.
fn events_until_end(m: &dyn Machine, timeout: Duration) -> Vec<MachineEvent> {
    let deadline = Instant::now() + timeout;
    let mut v = Vec::new();
    while let Some(e) = m.next_event(deadline.saturating_duration_since(Instant::now())) {
        let end = matches!(e, MachineEvent::Ended(_));
        v.push(e);
        if end {
            break;
        }
    }
    v
}

/// Boots `spec` to the guest's power-off; returns the console and the seconds to user space.
fn boot_to_poweroff(spec: &MachineSpec) -> (Console, f64) {
    let t0 = Instant::now();
    let (m, console) = start(spec);
    assert!(
        console.wait_for("VIRT-E2E: userspace up", BOOT_TIMEOUT),
        "{}: no user space; console:\n{}",
        spec.name,
        console.text()
    );
    let up = t0.elapsed().as_secs_f64();
    assert_eq!(m.wait(Some(BOOT_TIMEOUT)), Some(MachineExit::PowerOff), "console:\n{}", console.text());
    assert_eq!(
        events_until_end(m.as_ref(), Duration::from_secs(5)),
        vec![MachineEvent::Started, MachineEvent::Ended(MachineExit::PowerOff)]
    );
    assert_eq!(m.status(), MachineStatus::Stopped(MachineExit::PowerOff));
    eprintln!(
        "{}: user space {up:.1} s after start, power-off {:.1} s",
        spec.name,
        t0.elapsed().as_secs_f64()
    );
    (console, up)
}

#[test]
fn kernel_boot_reaches_user_space_and_powers_off() {
    need_qemu!();
    let _g = boot_lock();
    let (console, _) = boot_to_poweroff(&kernel_spec("kboot", "virt.bench=1"));
    assert!(console.text().contains("VIRT-E2E: poweroff"));
}

#[test]
fn firmware_disk_boots_with_seabios() {
    need_qemu!();
    let _g = boot_lock();
    let (console, _) = boot_to_poweroff(&disk_spec("bios", BootSpec::Bios));
    assert!(console.text().contains("SYSLINUX"), "{}", console.text());
}

#[test]
fn firmware_disk_boots_with_ovmf() {
    need_qemu!();
    let _g = boot_lock();
    let (console, _) = boot_to_poweroff(&disk_spec("efi", BootSpec::Efi { secure_boot: false, vars: None }));
    let text = console.text();
    assert!(text.contains("Welcome to GRUB"), "{text}");
    // Without Secure Boot, GRUB's shim_lock verifier stays off.
    assert!(!text.contains("VIRT-E2E: grub secure boot"), "{text}");
}

#[test]
fn secure_boot_with_enrolled_keys_boots_the_signed_chain() {
    need_qemu!();
    let _g = boot_lock();
    let dir = std::env::temp_dir().join(format!("qemu-sb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let vars = dir.join("vm/efivars.fd");
    let mut s = disk_spec("secboot", BootSpec::Efi { secure_boot: true, vars: Some(vars.clone()) });
    s.smm = true;
    let (console, _) = boot_to_poweroff(&s);
    let text = console.text();
    // shim (Microsoft-signed) -> GRUB (Debian-signed) with its shim_lock verifier on and the kernel
    // locked down -> Debian's signed kernel -> user space.
    assert!(text.contains("VIRT-E2E: grub secure boot shim_lock=y lockdown=y"), "{text}");
    // The VM's EFI variables persist in its own file, made from the Microsoft-keys template.
    let len = std::fs::metadata(&vars).unwrap().len();
    assert_eq!(len, std::fs::metadata("/usr/share/OVMF/OVMF_VARS_4M.ms.fd").unwrap().len());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn guest_reboot_ends_the_machine_as_reboot() {
    need_qemu!();
    let _g = boot_lock();
    let (m, console) = start(&kernel_spec("reboot", "virt.bench=1 virt.exit=reboot"));
    assert_eq!(m.wait(Some(BOOT_TIMEOUT)), Some(MachineExit::Reboot), "console:\n{}", console.text());
    assert!(console.text().contains("VIRT-E2E: reboot"));
    assert_eq!(
        events_until_end(m.as_ref(), Duration::from_secs(5)),
        vec![MachineEvent::Started, MachineEvent::Ended(MachineExit::Reboot)]
    );
}

#[test]
fn console_input_host_reset_and_forced_stop() {
    need_qemu!();
    let _g = boot_lock();
    // The demo mode: a shell on the serial console.
    let (m, console) = start(&kernel_spec("reset", ""));
    assert_eq!(m.next_event(Duration::from_secs(10)), Some(MachineEvent::Started));
    assert!(console.wait_for("Type 'poweroff -f' to exit.", BOOT_TIMEOUT), "{}", console.text());
    // Console input reaches the guest's shell.
    m.console_input(b"echo VIRT-INPUT-$((6*7))\n").unwrap();
    assert!(console.wait_for("VIRT-INPUT-42", Duration::from_secs(60)), "{}", console.text());
    // A host reset reboots the guest in place: the machine goes on and boots again.
    m.reset().unwrap();
    assert!(
        console.wait_for_n("VIRT-E2E: userspace up", 2, BOOT_TIMEOUT),
        "status {:?}, console:\n{}",
        m.status(),
        console.text()
    );
    assert_eq!(m.status(), MachineStatus::Running);
    // Pulling the plug.
    let t = Instant::now();
    m.stop().unwrap();
    assert_eq!(m.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    eprintln!("stop took {:.2} s", t.elapsed().as_secs_f64());
    assert_eq!(
        events_until_end(m.as_ref(), Duration::from_secs(5)),
        vec![MachineEvent::Ended(MachineExit::Stopped)]
    );
    assert!(matches!(m.pause(), Err(virt_core::machine::MachineError::State { .. })));
    assert_eq!(console.count("VIRT-E2E: poweroff"), 0);
}

#[test]
fn pause_resume_vnc_tpm_and_the_power_button() {
    need_qemu!();
    let _g = boot_lock();
    let mut s = kernel_spec("life", "virt.idle=1");
    s.graphics = true;
    s.tpm = Some(TpmSpec { persistent: false, state_dir: PathBuf::new() });
    let (m, console) = start(&s);
    let t = Duration::from_secs(30);
    assert_eq!(m.next_event(t), Some(MachineEvent::Started));
    assert_eq!(m.status(), MachineStatus::Running);
    assert!(console.wait_for("VIRT-E2E: idle", BOOT_TIMEOUT), "{}", console.text());
    assert!(console.text().contains("VIRT-E2E: tpm0 present"), "{}", console.text());

    // VNC: the RFB handshake and a framebuffer update.
    let socket = m.vnc_socket().expect("a VNC socket");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the VNC socket is {mode:o}, not 0600");
    }
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (w, h, name, pixels) = vnc_framebuffer_update(stream);
    eprintln!("VNC {}: {w}x{h} {name:?}, {pixels} pixels in the first update", socket.display());
    // Only the unix socket: QEMU opened no TCP listener, IPv4 or IPv6, in its VNC port range.
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap();
    let vnc_ports: Vec<&str> = tcp
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|local| {
            u16::from_str_radix(local.rsplit(':').next().unwrap_or(""), 16)
                .is_ok_and(|p| (5900..6000).contains(&p))
        })
        .collect();
    assert!(vnc_ports.is_empty(), "a TCP listener in the VNC range: {vnc_ports:?}");
    assert!(w > 0 && h > 0 && pixels > 0);
    assert_eq!(name, "QEMU (life)");

    // Pause and resume are transitions and events; a paused guest runs nothing.
    m.pause().unwrap();
    assert_eq!(m.next_event(t), Some(MachineEvent::Paused));
    assert_eq!(m.status(), MachineStatus::Paused);
    assert!(matches!(m.pause(), Err(virt_core::machine::MachineError::State { .. })));
    m.resume().unwrap();
    assert_eq!(m.next_event(t), Some(MachineEvent::Resumed));
    assert_eq!(m.status(), MachineStatus::Running);

    // The ACPI power button: the guest sees it and powers off.
    m.power_down().unwrap();
    assert_eq!(m.next_event(t), Some(MachineEvent::PowerDownRequested));
    assert_eq!(m.wait(Some(Duration::from_secs(120))), Some(MachineExit::PowerOff), "{}", console.text());
    assert!(console.text().contains("VIRT-E2E: power button"), "{}", console.text());
    assert_eq!(m.next_event(t), Some(MachineEvent::Ended(MachineExit::PowerOff)));
}

// --- KubeVirt conformance VMIs that need QEMU -------------------------------------------------------

/// The flags `spec` gives under emulation, with sockets in a fake run directory.
fn flags(spec: &MachineSpec) -> Vec<String> {
    QemuBackend::new(QemuOptions { allow_emulation: true, ..Default::default() })
        .with_host(HostVirt { cpu_flag: false, kvm_usable: false })
        .command_line(spec, Path::new("/run/virt/vm"))
        .unwrap_or_else(|e| panic!("{}: {e}", spec.name))
}

fn value<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
    a.windows(2).filter(|w| w[0] == flag).map(|w| w[1].as_str()).collect()
}

fn pvc(name: &str, bus: DiskBus) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        path: format!("/var/run/kubevirt-private/vmi-disks/{name}/disk.img").into(),
        format: DiskFormat::Raw,
        bus,
        cdrom: false,
        read_only: false,
        boot_order: None,
        serial: None,
    }
}

fn have_ovmf() -> bool {
    Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd").exists()
}

/// vmi-windows.yaml: 2 cores, 2 GiB, EFI Secure Boot, SMM, TPM, Hyper-V relaxed/vapic/spinlocks,
/// hpet off, hypervclock, pit delay, rtc catchup, UTC; its pvcdisk (no disk entry: KubeVirt's default
/// bus virtio). The e1000 masquerade interface is virt-net's.
fn vmi_windows() -> MachineSpec {
    MachineSpec {
        name: "vmi-windows".into(),
        cpu: CpuSpec { sockets: 1, cores: 2, threads: 1, model: None },
        memory_mib: 2048,
        boot: BootSpec::Efi { secure_boot: true, vars: None },
        disks: vec![pvc("pvcdisk", DiskBus::Virtio)],
        acpi: true,
        smm: true,
        hyperv: vec![
            HypervFeature::Flag("relaxed".into()),
            HypervFeature::Spinlocks(8191),
            HypervFeature::Flag("vapic".into()),
        ],
        clock: ClockSpec {
            localtime: false,
            timers: vec![
                ("hpet".into(), false),
                ("hyperv".into(), true),
                ("pit".into(), true),
                ("rtc".into(), true),
            ],
            tick_policies: vec![("pit".into(), "delay".into()), ("rtc".into(), "catchup".into())],
        },
        tpm: Some(TpmSpec { persistent: false, state_dir: PathBuf::new() }),
        graphics: true,
        machine_type: None,
        accel: AccelPolicy::Auto,
        interfaces: Vec::new(),
        agent_credentials: Default::default(),
    }
}

#[test]
fn conformance_vmi_windows() {
    if !have_ovmf() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "ovmf not installed: skipping");
        eprintln!("ovmf not installed: skipping");
        return;
    }
    let a = flags(&vmi_windows());
    assert_eq!(value(&a, "-machine"), vec!["q35,smm=on,hpet=off"]);
    assert_eq!(value(&a, "-accel"), vec!["tcg"]);
    assert_eq!(value(&a, "-cpu"), vec!["max,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-time"]);
    assert_eq!(value(&a, "-smp"), vec!["2,sockets=1,cores=2,threads=1"]);
    assert_eq!(value(&a, "-m"), vec!["2048M"]);
    assert_eq!(value(&a, "-rtc"), vec!["base=utc,driftfix=slew"]);
    assert_eq!(value(&a, "-global"), vec!["driver=cfi.pflash01,property=secure,value=on"]);
    let drives = value(&a, "-drive");
    assert_eq!(
        drives[0],
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd"
    );
    assert_eq!(drives[1], "if=pflash,format=raw,unit=1,file=/run/virt/vm/efivars.fd");
    assert_eq!(value(&a, "-tpmdev"), vec!["emulator,id=tpm0,chardev=chrtpm"]);
    assert!(value(&a, "-device").contains(&"tpm-crb,tpmdev=tpm0"));
    assert!(value(&a, "-device").contains(&"virtio-blk-pci,id=disk-pvcdisk,drive=drive-pvcdisk"));
    assert_eq!(value(&a, "-vnc"), vec!["unix:/run/virt/vm/vnc.sock"]);
    // On hardware KVM the same VMI gets the host CPU and the in-kernel PIT's policy.
    let kvm = QemuBackend::new(QemuOptions::default())
        .with_host(HostVirt { cpu_flag: true, kvm_usable: true })
        .command_line(&vmi_windows(), Path::new("/run/virt/vm"))
        .unwrap();
    assert_eq!(value(&kvm, "-accel"), vec!["kvm"]);
    assert_eq!(value(&kvm, "-cpu"), vec!["host,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-time"]);
    assert!(value(&kvm, "-global").contains(&"kvm-pit.lost_tick_policy=delay"));
}

/// vm-windows-clarge-windows.yaml with instancetype clarge (clarge.yaml: 4 vCPUs, 2 GiB) and
/// preference windows (windows.yaml: sockets topology, SATA disks, TPM, ACPI, APIC, SMM, EFI Secure
/// Boot, Hyper-V relaxed/vapic/spinlocks 8191, UTC, hpet off, hypervclock, pit delay, rtc catchup).
/// The template's `memory.guest: 128Mi` conflicts with the instancetype's 2Gi; KubeVirt rejects such
/// a conflict, and here the instancetype's value is used: the resolver (the KubeVirt model) decides.
fn clarge_windows() -> MachineSpec {
    let mut s = vmi_windows();
    s.name = "vm-windows-clarge-windows".into();
    s.cpu = CpuSpec { sockets: 4, cores: 1, threads: 1, model: None };
    s.memory_mib = 2048;
    s.disks = vec![pvc("pvcdisk", DiskBus::Sata)];
    s
}

#[test]
fn conformance_vm_windows_clarge_windows() {
    if !have_ovmf() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "ovmf not installed: skipping");
        eprintln!("ovmf not installed: skipping");
        return;
    }
    let a = flags(&clarge_windows());
    assert_eq!(value(&a, "-machine"), vec!["q35,smm=on,hpet=off"]);
    assert_eq!(value(&a, "-smp"), vec!["4,sockets=4,cores=1,threads=1"]);
    assert_eq!(value(&a, "-m"), vec!["2048M"]);
    assert_eq!(value(&a, "-cpu"), vec!["max,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-time"]);
    assert_eq!(value(&a, "-rtc"), vec!["base=utc,driftfix=slew"]);
    let dev = value(&a, "-device");
    assert!(dev.contains(&"ahci,id=sata0"), "{dev:?}");
    assert!(dev.contains(&"ide-hd,id=disk-pvcdisk,drive=drive-pvcdisk,bus=sata0.0"), "{dev:?}");
    assert!(dev.contains(&"tpm-crb,tpmdev=tpm0"));
    assert_eq!(value(&a, "-global"), vec!["driver=cfi.pflash01,property=secure,value=on"]);
    // Every enlightenment KubeVirt offers, with what each depends on added.
    let mut all = clarge_windows();
    all.hyperv = [
        "relaxed",
        "vapic",
        "vpindex",
        "runtime",
        "reset",
        "frequencies",
        "reenlightenment",
        "tlbflush",
        "ipi",
        "evmcs",
    ]
    .iter()
    .map(|f| HypervFeature::Flag(f.to_string()))
    .chain([
        HypervFeature::Spinlocks(8191),
        HypervFeature::Stimer { direct: true },
        HypervFeature::VendorId("virtrs".into()),
    ])
    .collect();
    assert_eq!(
        value(&flags(&all), "-cpu"),
        vec!["max,hv-relaxed,hv-vapic,hv-spinlocks=0x1fff,hv-vpindex,hv-runtime,hv-synic,hv-stimer,hv-stimer-direct,hv-time,hv-reset,hv-frequencies,hv-reenlightenment,hv-tlbflush,hv-ipi,hv-evmcs,hv-vendor-id=virtrs"]
    );
}

/// vmi-secureboot.yaml: 1 GiB, EFI Secure Boot, SMM enabled, a virtio containerdisk.
#[test]
fn conformance_vmi_secureboot() {
    if !have_ovmf() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "ovmf not installed: skipping");
        eprintln!("ovmf not installed: skipping");
        return;
    }
    let mut s = kernel_spec_free("vmi-secureboot");
    s.memory_mib = 1024;
    s.boot = BootSpec::Efi { secure_boot: true, vars: None };
    s.smm = true;
    s.disks = vec![pvc("containerdisk", DiskBus::Virtio)];
    let a = flags(&s);
    assert_eq!(value(&a, "-machine"), vec!["q35,smm=on"]);
    assert_eq!(value(&a, "-m"), vec!["1024M"]);
    assert_eq!(value(&a, "-global"), vec!["driver=cfi.pflash01,property=secure,value=on"]);
    assert!(value(&a, "-drive")[0].ends_with("OVMF_CODE_4M.secboot.fd"));
    assert!(value(&a, "-device").contains(&"virtio-blk-pci,id=disk-containerdisk,drive=drive-containerdisk"));
    // Secure Boot without SMM is refused, naming the field.
    s.smm = false;
    let e = QemuBackend::new(QemuOptions { allow_emulation: true, ..Default::default() })
        .with_host(HostVirt { cpu_flag: false, kvm_usable: false })
        .command_line(&s, Path::new("/run/virt/vm"))
        .unwrap_err();
    assert!(
        matches!(&e, CommandLineError::Config(ConfigError::Unsupported { field, .. }) if field.contains("features.smm")),
        "{e}"
    );
}

/// vmi-alpine-efi.yaml: 1 GiB, EFI without Secure Boot, a virtio containerdisk.
#[test]
fn conformance_vmi_alpine_efi() {
    if !have_ovmf() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "ovmf not installed: skipping");
        eprintln!("ovmf not installed: skipping");
        return;
    }
    let mut s = kernel_spec_free("vmi-alpine-efi");
    s.memory_mib = 1024;
    s.boot = BootSpec::Efi { secure_boot: false, vars: None };
    s.disks = vec![pvc("containerdisk", DiskBus::Virtio)];
    let a = flags(&s);
    assert_eq!(value(&a, "-machine"), vec!["q35,smm=off"]);
    assert!(value(&a, "-global").is_empty());
    assert_eq!(
        value(&a, "-drive")[0],
        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
    );
    assert_eq!(value(&a, "-drive")[1], "if=pflash,format=raw,unit=1,file=/run/virt/vm/efivars.fd");
}

/// A spec without guest assets (for flag-only tests).
fn kernel_spec_free(name: &str) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Bios,
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

#[test]
fn failures_to_start_say_why() {
    need_qemu!();
    // QEMU refuses a disk that does not exist: its own words reach the error.
    let mut s = kernel_spec_free("broken");
    s.disks = vec![pvc("missing", DiskBus::Virtio)];
    let e = backend().start(&s, Box::new(std::io::sink())).err().expect("a start error").to_string();
    eprintln!("{e}");
    assert!(e.contains("machine broken: cannot start") && e.contains("missing/disk.img"), "{e}");
    // Without hardware KVM and without useEmulation, nothing starts, and the error says why.
    if !HostVirt::probe().cpu_flag {
        let strict = QemuBackend::new(QemuOptions::default());
        let e =
            strict.start(&kernel_spec_free("strict"), Box::new(std::io::sink())).err().unwrap().to_string();
        assert!(e.contains("useEmulation is off"), "{e}");
    }
}
