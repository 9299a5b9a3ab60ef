//! From a [`MachineSpec`] to QEMU's command line: a pure function, so every mapping is unit-tested by
//! the flags it produces. Firmware files are resolved beforehand ([`FirmwarePaths::resolve`]) and the
//! sockets come from the machine's run directory ([`Layout`]).

use std::path::{Path, PathBuf};

use crate::machine::accel::Accelerator;
use crate::machine::{BootSpec, DiskBus, DiskFormat, HypervFeature, MachineSpec};

/// A spec QEMU cannot be configured for, or a firmware file that is missing; names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A field holds something this backend does not support.
    #[error("{field} = {value:?}: {why}")]
    Unsupported {
        /// The spec field.
        field: String,
        /// Its value.
        value: String,
        /// Why it cannot be used.
        why: String,
    },
    /// A firmware file is missing.
    #[error("{what} {path} not found: install Debian's {package} package")]
    Firmware {
        /// What it is.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The package that ships it.
        package: &'static str,
    },
}

pub(super) fn unsupported(
    field: impl Into<String>,
    value: impl std::fmt::Display,
    why: impl Into<String>,
) -> ConfigError {
    ConfigError::Unsupported { field: field.into(), value: value.to_string(), why: why.into() }
}

/// Where the firmware images are (Debian's `seabios` and `ovmf` packages by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwarePaths {
    /// SeaBIOS for q35/pc (`bios-256k.bin`).
    pub seabios: PathBuf,
    /// OVMF code, no Secure Boot.
    pub ovmf_code: PathBuf,
    /// OVMF variables template, no keys enrolled.
    pub ovmf_vars: PathBuf,
    /// OVMF code built with Secure Boot and SMM.
    pub ovmf_secure_code: PathBuf,
    /// OVMF variables template with Microsoft's keys enrolled (Secure Boot on).
    pub ovmf_secure_vars: PathBuf,
}

impl Default for FirmwarePaths {
    fn default() -> Self {
        Self {
            seabios: "/usr/share/seabios/bios-256k.bin".into(),
            ovmf_code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            ovmf_secure_code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            ovmf_secure_vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into(),
        }
    }
}

/// Firmware for one boot, resolved to files that exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS (BIOS boot, and kernel boot, whose loader runs as a SeaBIOS option ROM).
    Bios(PathBuf),
    /// OVMF.
    Ovmf {
        /// Read-only code.
        code: PathBuf,
        /// The variables template (copied per VM).
        vars_template: PathBuf,
        /// The Secure Boot build.
        secure: bool,
    },
}

fn exists(what: &'static str, path: &Path, package: &'static str) -> Result<PathBuf, ConfigError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ConfigError::Firmware { what, path: path.to_path_buf(), package })
    }
}

impl FirmwarePaths {
    /// The firmware `boot` needs, checked to exist.
    pub fn resolve(&self, boot: &BootSpec) -> Result<Firmware, ConfigError> {
        match boot {
            BootSpec::Kernel { .. } | BootSpec::Bios => {
                Ok(Firmware::Bios(exists("SeaBIOS", &self.seabios, "seabios")?))
            }
            BootSpec::Efi { secure_boot: false, .. } => Ok(Firmware::Ovmf {
                code: exists("OVMF code", &self.ovmf_code, "ovmf")?,
                vars_template: exists("OVMF variables template", &self.ovmf_vars, "ovmf")?,
                secure: false,
            }),
            BootSpec::Efi { secure_boot: true, .. } => Ok(Firmware::Ovmf {
                code: exists("OVMF Secure Boot code", &self.ovmf_secure_code, "ovmf")?,
                vars_template: exists("OVMF variables with Microsoft keys", &self.ovmf_secure_vars, "ovmf")?,
                secure: true,
            }),
        }
    }
}

/// The per-machine files the command line refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// QMP socket; QEMU connects to it (the backend listens).
    pub qmp_socket: PathBuf,
    /// Serial console socket; QEMU connects to it.
    pub serial_socket: PathBuf,
    /// The guest agent's channel (`org.qemu.guest_agent.0`); QEMU connects to it.
    pub agent_socket: PathBuf,
    /// swtpm's control socket, when the machine has a TPM.
    pub tpm_socket: Option<PathBuf>,
    /// The firmware.
    pub firmware: Firmware,
    /// This machine's copy of the EFI variables (OVMF only).
    pub efi_vars: Option<PathBuf>,
    /// The VNC display's unix socket (QEMU listens on it; no TCP port is opened, so nothing but
    /// who can open the run directory reaches the display).
    pub vnc_socket: PathBuf,
    /// `/dev/vhost-net` opens on this host: virtio NICs on KVM get the in-kernel datapath.
    pub vhost_net: bool,
}

/// A value inside a QEMU option list: commas are doubled.
pub fn escape(v: &str) -> String {
    v.replace(',', ",,")
}

fn path_str(field: &str, p: &Path) -> Result<String, ConfigError> {
    let s = p.to_str().ok_or_else(|| unsupported(field, p.display(), "the path is not UTF-8"))?;
    if !p.is_absolute() {
        return Err(unsupported(field, s, "the path must be absolute"));
    }
    Ok(s.to_string())
}

/// QEMU ids: a letter first, then letters, digits, `-`, `.`, `_`.
pub(super) fn check_id(field: &str, name: &str) -> Result<(), ConfigError> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if ok {
        Ok(())
    } else {
        Err(unsupported(
            field,
            name,
            "use up to 64 letters, digits, '-', '.', '_', starting with a letter or digit",
        ))
    }
}

/// The `-cpu` model for `model` on `accel`.
pub fn cpu_model(model: Option<&str>, accel: Accelerator) -> Result<String, ConfigError> {
    let host = || match accel {
        Accelerator::Kvm => "host".to_string(),
        // TCG cannot pass the host CPU through; `max` is everything the emulator implements.
        Accelerator::Emulation => "max".to_string(),
    };
    match model {
        None | Some("host-passthrough") | Some("host-model") => Ok(host()),
        Some(m)
            if !m.is_empty()
                && m.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) =>
        {
            Ok(m.to_string())
        }
        Some(m) => Err(unsupported("cpu.model", m, "not a CPU model name")),
    }
}

/// Hyper-V enlightenments in QEMU's order, with the ones they depend on added.
fn hyperv_flags(features: &[HypervFeature], hypervclock: bool) -> Result<Vec<String>, ConfigError> {
    const ORDER: &[&str] = &[
        "relaxed",
        "vapic",
        "spinlocks",
        "vpindex",
        "runtime",
        "synic",
        "stimer",
        "stimer-direct",
        "time",
        "reset",
        "frequencies",
        "reenlightenment",
        "tlbflush",
        "ipi",
        "evmcs",
        "vendor-id",
    ];
    let mut on: Vec<&str> = Vec::new();
    let mut spinlocks = None;
    let mut vendor = None;
    for f in features {
        match f {
            HypervFeature::Flag(name) => {
                let plain = ORDER.iter().copied().find(|o| {
                    *o == name.as_str()
                        && !matches!(*o, "spinlocks" | "stimer" | "stimer-direct" | "vendor-id")
                });
                match plain {
                    Some(f) => on.push(f),
                    None => {
                        return Err(unsupported(
                            "features.hyperv",
                            name,
                            "not a Hyper-V enlightenment QEMU knows",
                        ))
                    }
                }
            }
            HypervFeature::Spinlocks(n) => {
                if *n < 0xfff {
                    return Err(unsupported(
                        "features.hyperv.spinlocks.spinlocks",
                        n,
                        "QEMU needs at least 4095",
                    ));
                }
                spinlocks = Some(*n);
                on.push("spinlocks");
            }
            HypervFeature::Stimer { direct } => {
                on.push("stimer");
                if *direct {
                    on.push("stimer-direct");
                }
            }
            HypervFeature::VendorId(v) => {
                if v.is_empty() || v.len() > 12 || !v.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(unsupported(
                        "features.hyperv.vendorid.vendorid",
                        v,
                        "1-12 letters or digits",
                    ));
                }
                vendor = Some(v.clone());
                on.push("vendor-id");
            }
        }
    }
    if hypervclock {
        on.push("time");
    }
    // What QEMU (under KVM) refuses without: synic, tlbflush and ipi need vpindex; stimer needs synic
    // and time; evmcs needs vapic.
    let mut deps = Vec::new();
    for f in &on {
        match *f {
            "synic" | "tlbflush" | "ipi" => deps.push("vpindex"),
            "stimer" | "stimer-direct" => deps.extend(["synic", "vpindex", "time", "stimer"]),
            "evmcs" => deps.push("vapic"),
            _ => {}
        }
    }
    on.extend(deps);
    let mut out = Vec::new();
    for o in ORDER {
        if !on.contains(o) {
            continue;
        }
        out.push(match *o {
            "spinlocks" => format!("hv-spinlocks={:#x}", spinlocks.unwrap_or(0x1fff)),
            "vendor-id" => format!("hv-vendor-id={}", vendor.clone().unwrap_or_default()),
            o => format!("hv-{o}"),
        });
    }
    Ok(out)
}

fn push(a: &mut Vec<String>, flag: &str, value: String) {
    a.push(flag.to_string());
    a.push(value);
}

/// Builds QEMU's arguments (without the program) for `spec` on `accel`.
pub fn build(spec: &MachineSpec, accel: Accelerator, layout: &Layout) -> Result<Vec<String>, ConfigError> {
    let mut a: Vec<String> = Vec::new();
    check_id("name", &spec.name)?;
    push(&mut a, "-name", format!("guest={},debug-threads=on", escape(&spec.name)));
    // Hygiene: no config file, no default devices (NIC, VGA, serial, monitor, floppy, CD-ROM).
    a.extend(["-no-user-config".into(), "-nodefaults".into()]);

    let secure = matches!(spec.boot, BootSpec::Efi { secure_boot: true, .. });
    if secure && !spec.smm {
        return Err(unsupported(
            "features.smm",
            "disabled",
            "Secure Boot needs SMM (the secboot OVMF build runs its variable store in SMM)",
        ));
    }

    // Machine: type, SMM, ACPI, timers that are machine properties.
    let mtype = spec.machine_type.as_deref().unwrap_or("q35");
    if !mtype.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) || mtype.is_empty() {
        return Err(unsupported("machine.type", mtype, "not a machine type name"));
    }
    let mut machine = vec![mtype.to_string(), format!("smm={}", if spec.smm { "on" } else { "off" })];
    if !spec.acpi {
        machine.push("acpi=off".into());
    }
    let mut hypervclock = false;
    let mut cpu_extra: Vec<String> = Vec::new();
    for (name, present) in &spec.clock.timers {
        match (name.as_str(), *present) {
            // QEMU 10 dropped -no-hpet; the machine property is the way.
            ("hpet", false) => machine.push("hpet=off".into()),
            ("pit", false) => machine.push("pit=off".into()),
            ("hyperv" | "hypervclock", true) => hypervclock = true,
            ("kvm" | "kvmclock", false) => cpu_extra.push("kvmclock=off".into()),
            ("rtc", false) => {
                return Err(unsupported("clock.timer.rtc.present", "false", "q35 always has its RTC"))
            }
            // The defaults.
            ("hpet" | "pit" | "rtc" | "kvm" | "kvmclock" | "hyperv" | "hypervclock", _) => {}
            (other, _) => {
                return Err(unsupported("clock.timer", other, "unknown timer (hpet, pit, rtc, kvm, hyperv)"))
            }
        }
    }
    push(&mut a, "-machine", machine.join(","));
    push(
        &mut a,
        "-accel",
        match accel {
            Accelerator::Kvm => "kvm".into(),
            Accelerator::Emulation => "tcg".into(),
        },
    );
    if secure {
        // Only SMM code may write the variable store: what makes the enrolled keys trustworthy.
        push(&mut a, "-global", "driver=cfi.pflash01,property=secure,value=on".into());
    }

    // CPU.
    let mut cpu = vec![cpu_model(spec.cpu.model.as_deref(), accel)?];
    cpu.extend(hyperv_flags(&spec.hyperv, hypervclock)?);
    cpu.extend(cpu_extra);
    push(&mut a, "-cpu", cpu.join(","));
    let c = &spec.cpu;
    if c.sockets == 0 || c.cores == 0 || c.threads == 0 || c.count() > 1024 {
        return Err(unsupported(
            "cpu",
            format!("sockets={} cores={} threads={}", c.sockets, c.cores, c.threads),
            "each at least 1, at most 1024 vCPUs in all",
        ));
    }
    push(
        &mut a,
        "-smp",
        format!("{},sockets={},cores={},threads={}", c.count(), c.sockets, c.cores, c.threads),
    );
    if spec.memory_mib < 16 {
        return Err(unsupported("memory.guest", format!("{} MiB", spec.memory_mib), "at least 16 MiB"));
    }
    push(&mut a, "-m", format!("{}M", spec.memory_mib));

    // Firmware and boot.
    match (&layout.firmware, &spec.boot) {
        (Firmware::Bios(bios), BootSpec::Kernel { .. } | BootSpec::Bios) => {
            push(&mut a, "-bios", path_str("bios", bios)?)
        }
        (Firmware::Ovmf { code, secure: fw_secure, .. }, BootSpec::Efi { secure_boot, .. })
            if fw_secure == secure_boot =>
        {
            let vars = layout.efi_vars.as_deref().ok_or_else(|| {
                unsupported("firmware.bootloader.efi", "no variables file", "OVMF needs one")
            })?;
            push(
                &mut a,
                "-drive",
                format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    escape(&path_str("OVMF code", code)?)
                ),
            );
            push(
                &mut a,
                "-drive",
                format!("if=pflash,format=raw,unit=1,file={}", escape(&path_str("EFI variables", vars)?)),
            );
        }
        (fw, boot) => {
            return Err(unsupported("firmware", format!("{fw:?}"), format!("does not fit boot {boot:?}")))
        }
    }
    if let BootSpec::Kernel { kernel, initramfs, cmdline } = &spec.boot {
        push(&mut a, "-kernel", path_str("kernel", kernel)?);
        if let Some(i) = initramfs {
            push(&mut a, "-initrd", path_str("initrd", i)?);
        }
        if !cmdline.is_empty() {
            push(&mut a, "-append", cmdline.clone());
        }
    }

    // Clock.
    let mut rtc = vec![format!("base={}", if spec.clock.localtime { "localtime" } else { "utc" })];
    for (timer, policy) in &spec.clock.tick_policies {
        match (timer.as_str(), policy.as_str()) {
            ("rtc", "catchup") => rtc.push("driftfix=slew".into()),
            ("rtc", "delay") => {}
            ("pit", "delay" | "discard") => {
                // The in-kernel PIT's policy; TCG's PIT has no lost-tick setting.
                if accel == Accelerator::Kvm {
                    push(&mut a, "-global", format!("kvm-pit.lost_tick_policy={policy}"));
                }
            }
            ("hpet" | "kvm" | "hyperv", _) => {}
            _ => {
                return Err(unsupported(
                    format!("clock.timer.{timer}.tickPolicy"),
                    policy,
                    "QEMU supports rtc catchup/delay and pit delay/discard",
                ))
            }
        }
    }
    push(&mut a, "-rtc", rtc.join(","));

    // Disks.
    let mut names = std::collections::HashSet::new();
    let mut boot_orders = std::collections::HashSet::new();
    let (mut sata, mut scsi) = (0usize, 0usize);
    for d in &spec.disks {
        check_id("disk name", &d.name)?;
        if !names.insert(d.name.as_str()) {
            return Err(unsupported("disk name", &d.name, "used twice"));
        }
        let mut drive = vec![
            "if=none".to_string(),
            format!("id=drive-{}", d.name),
            format!("file={}", escape(&path_str(&format!("disk {} path", d.name), &d.path)?)),
            format!(
                "format={}",
                match d.format {
                    DiskFormat::Raw => "raw",
                    DiskFormat::Qcow2 => "qcow2",
                }
            ),
        ];
        if d.cdrom {
            drive.push("media=cdrom".into());
        }
        if d.read_only || d.cdrom {
            drive.push("readonly=on".into());
        }
        let mut dev_tail = Vec::new();
        if let Some(b) = d.boot_order {
            if b == 0 || !boot_orders.insert(b) {
                return Err(unsupported(
                    format!("disk {} bootOrder", d.name),
                    b,
                    "must be at least 1 and unique",
                ));
            }
            dev_tail.push(format!("bootindex={b}"));
        }
        if let Some(s) = &d.serial {
            if s.is_empty() || s.len() > 20 || !s.chars().all(|c| c.is_ascii_graphic()) {
                return Err(unsupported(
                    format!("disk {} serial", d.name),
                    s,
                    "1-20 printable ASCII characters",
                ));
            }
            dev_tail.push(format!("serial={}", escape(s)));
        }
        push(&mut a, "-drive", drive.join(","));
        let id = format!("id=disk-{},drive=drive-{}", d.name, d.name);
        let dev = match d.bus {
            DiskBus::Virtio if d.cdrom => {
                return Err(unsupported(
                    format!("disk {} bus", d.name),
                    "virtio",
                    "a CD-ROM needs bus sata or scsi",
                ))
            }
            DiskBus::Virtio => format!("virtio-blk-pci,{id}"),
            DiskBus::Sata => {
                // Our own AHCI controllers, 6 ports each, so the layout is the same on any machine type.
                let (ctl, port) = (sata / 6, sata % 6);
                if port == 0 {
                    push(&mut a, "-device", format!("ahci,id=sata{ctl}"));
                }
                sata += 1;
                format!("{},{id},bus=sata{ctl}.{port}", if d.cdrom { "ide-cd" } else { "ide-hd" })
            }
            DiskBus::Scsi => {
                if scsi == 0 {
                    push(&mut a, "-device", "virtio-scsi-pci,id=scsi0".into());
                }
                let lun = scsi;
                scsi += 1;
                format!(
                    "{},{id},bus=scsi0.0,channel=0,scsi-id=0,lun={lun}",
                    if d.cdrom { "scsi-cd" } else { "scsi-hd" }
                )
            }
        };
        let mut dev = vec![dev];
        dev.extend(dev_tail);
        push(&mut a, "-device", dev.join(","));
    }

    // NICs.
    a.extend(super::nic::args(spec, accel, layout.vhost_net)?);

    // TPM 2.0 through swtpm.
    if spec.tpm.is_some() {
        let sock = layout
            .tpm_socket
            .as_deref()
            .ok_or_else(|| unsupported("devices.tpm", "no swtpm socket", "the backend starts swtpm first"))?;
        push(
            &mut a,
            "-chardev",
            format!("socket,id=chrtpm,path={}", escape(&path_str("swtpm socket", sock)?)),
        );
        push(&mut a, "-tpmdev", "emulator,id=tpm0,chardev=chrtpm".into());
        push(&mut a, "-device", "tpm-crb,tpmdev=tpm0".into());
    }

    // Serial console and QMP: QEMU connects to sockets the backend already listens on, so nothing the
    // guest prints before the backend is ready is lost, and there is no race on the socket files.
    push(
        &mut a,
        "-chardev",
        format!("socket,id=serial0,path={}", escape(&path_str("serial socket", &layout.serial_socket)?)),
    );
    push(&mut a, "-serial", "chardev:serial0".into());
    push(
        &mut a,
        "-chardev",
        format!("socket,id=qmp,path={}", escape(&path_str("QMP socket", &layout.qmp_socket)?)),
    );
    push(&mut a, "-mon", "chardev=qmp,mode=control".into());
    // The guest agent's virtio-serial port, always there as in KubeVirt's domains: the guest's
    // qemu-ga opens /dev/virtio-ports/org.qemu.guest_agent.0 and the backend talks to it.
    push(
        &mut a,
        "-chardev",
        format!("socket,id=qga0,path={}", escape(&path_str("guest agent socket", &layout.agent_socket)?)),
    );
    push(&mut a, "-device", "virtio-serial-pci,id=virtio-serial0".into());
    push(
        &mut a,
        "-device",
        format!("virtserialport,bus=virtio-serial0.0,chardev=qga0,name={}", crate::agent::CHANNEL),
    );

    // Display.
    push(&mut a, "-display", "none".into());
    if spec.graphics {
        push(&mut a, "-device", "VGA,id=video0".into());
        push(&mut a, "-vnc", format!("unix:{}", escape(&layout.vnc_socket.to_string_lossy())));
    }
    // Start paused: the backend resumes once it listens to QMP, so it sees every event from the start.
    a.push("-S".into());
    Ok(a)
}

#[cfg(test)]
#[path = "cmdline_tests.rs"]
pub(crate) mod tests;
