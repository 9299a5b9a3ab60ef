//! Unit tests of the QEMU backend: command lines, firmware variables, programs.

use super::*;
use crate::machine::accel::{AccelPolicy, Accelerator};
use crate::machine::{ClockSpec, CpuSpec};

fn spec() -> MachineSpec {
    MachineSpec {
        name: "t".into(),
        cpu: CpuSpec::default(),
        memory_mib: 128,
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

fn fake_firmware(dir: &Path) -> FirmwarePaths {
    let f = |n: &str| {
        let p = dir.join(n);
        std::fs::write(&p, b"fw").unwrap();
        p
    };
    FirmwarePaths {
        seabios: f("bios.bin"),
        ovmf_code: f("code.fd"),
        ovmf_vars: f("vars.fd"),
        ovmf_secure_code: f("scode.fd"),
        ovmf_secure_vars: f("svars.fd"),
    }
}

#[test]
fn the_accelerator_decision_reaches_the_command_line() {
    let dir = std::env::temp_dir().join(format!("qemu-accel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = QemuOptions { allow_emulation: true, firmware: fake_firmware(&dir), ..Default::default() };
    let nested = HostVirt { cpu_flag: false, kvm_usable: true };
    let hw = HostVirt { cpu_flag: true, kvm_usable: true };
    let b = QemuBackend::new(opts.clone()).with_host(nested.clone());
    let d = b.decide(&spec()).unwrap();
    assert_eq!(d.accelerator, Accelerator::Emulation);
    assert!(d.reason.contains("useEmulation"), "{}", d.reason);
    let cl = b.command_line(&spec(), Path::new("/run/x")).unwrap();
    assert!(cl.windows(2).any(|w| w[0] == "-accel" && w[1] == "tcg"), "{cl:?}");
    let b = QemuBackend::new(opts.clone()).with_host(hw);
    let cl = b.command_line(&spec(), Path::new("/run/x")).unwrap();
    assert!(cl.windows(2).any(|w| w[0] == "-accel" && w[1] == "kvm"), "{cl:?}");
    // Without useEmulation, no KVM means no machine, and supports() says why.
    let b = QemuBackend::new(QemuOptions { allow_emulation: false, ..opts }).with_host(nested);
    assert!(b.supports(&spec()).unwrap_err().to_string().contains("useEmulation is off"));
    let mut s = spec();
    s.accel = AccelPolicy::RequireKvm;
    assert!(b.decide(&s).unwrap_err().to_string().contains("required"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn efi_vars_are_copied_once_and_checked() {
    let dir = std::env::temp_dir().join(format!("qemu-vars-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let t = dir.join("template.fd");
    std::fs::write(&t, vec![7u8; 4096]).unwrap();
    let v = dir.join("vm/vars.fd");
    prepare_vars(&t, &v).unwrap();
    assert_eq!(std::fs::read(&v).unwrap(), vec![7u8; 4096]);
    // A VM's changed variables persist: not overwritten by the template.
    std::fs::write(&v, vec![9u8; 4096]).unwrap();
    prepare_vars(&t, &v).unwrap();
    assert_eq!(std::fs::read(&v).unwrap(), vec![9u8; 4096]);
    std::fs::write(&v, vec![9u8; 100]).unwrap();
    let e = prepare_vars(&t, &v).unwrap_err();
    assert!(
        matches!(&e, QemuProcessError::VarsMismatch { vars, held: 100, template, template_len: 4096 } if *vars == v && *template == t),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(msg.contains(&format!("EFI variables {} hold 100 bytes", v.display())), "{msg}");
    assert!(msg.contains("another OVMF build"), "{msg}");
    // A missing template is named.
    let missing = dir.join("no-template.fd");
    let e = prepare_vars(&missing, &v).unwrap_err();
    assert!(matches!(&e, QemuProcessError::Io { path, .. } if *path == missing), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!("read the EFI variables template {}: ", missing.display())),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_run_dir_too_long_for_sockets_is_named_before_anything_is_made() {
    let base = std::env::temp_dir().join("x".repeat(120));
    let opts = QemuOptions { run_dir: Some(base.clone()), ..Default::default() };
    let e = new_run_dir(&opts, "vm").unwrap_err();
    let QemuProcessError::RunDirTooLong { dir } = &e else { panic!("{e:?}") };
    assert!(dir.starts_with(&base), "{dir:?}");
    assert_eq!(e.to_string(), format!("run directory {} is too long for unix socket paths", dir.display()));
    assert!(!base.exists());
}

#[test]
fn a_machine_without_a_tpm_gets_no_swtpm() {
    let dir = std::env::temp_dir();
    let e = start_swtpm(&QemuOptions::default(), &spec(), &dir, &dir.join("swtpm.sock")).unwrap_err();
    assert!(matches!(&e, QemuProcessError::NoTpm), "{e:?}");
    assert_eq!(e.to_string(), "no TPM asked for");
}

#[test]
fn missing_programs_are_named() {
    let dir = std::env::temp_dir().join(format!("qemu-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = QemuOptions {
        allow_emulation: true,
        firmware: fake_firmware(&dir),
        qemu: "/nonexistent/qemu-system-x86_64".into(),
        ..Default::default()
    };
    let b = QemuBackend::new(opts).with_host(HostVirt { cpu_flag: false, kvm_usable: false });
    let e = b.supports(&spec()).unwrap_err().to_string();
    assert!(e.contains("qemu-system-x86"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
