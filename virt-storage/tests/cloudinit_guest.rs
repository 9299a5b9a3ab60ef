//! cloud-init seed disks seen from a guest: the Debian kernel and the project's initramfs
//! (scripts/guest-assets.sh) boot under the QEMU backend (software emulation where KVM is
//! unusable) with a seed disk written by `virt_storage::cloudinit`; the guest's /init finds the disk
//! by its label, mounts it, sets the hostname from the metadata and runs the `#!` user data with
//! its output on the serial console.
//!
//! Boots run one at a time: the machine has two cores and TCG is CPU-bound.

#[macro_use]
#[path = "../../virt-core/tests/support/guest.rs"]
mod guest;

use guest::Console;
use std::path::Path;
use std::time::{Duration, Instant};

use guest::{asset, boot_lock};
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::{
    BootSpec, ClockSpec, CpuSpec, DiskBus, DiskFormat, DiskSpec, MachineBackend, MachineExit, MachineSpec,
};
use virt_core::model::CloudInitSource;
use virt_storage::cloudinit::{write_config_drive, write_nocloud, SeedInfo};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const SCRIPT: &str = "#!/bin/sh\necho 'printed from cloud-init userdata'\n";

fn disk(name: &str, path: &Path, read_only: bool) -> DiskSpec {
    DiskSpec {
        name: name.into(),
        path: path.to_path_buf(),
        format: DiskFormat::Raw,
        bus: DiskBus::Virtio,
        cdrom: false,
        read_only,
        boot_order: None,
        serial: None,
    }
}

/// The kernel and initramfs in the e2e mode (disk checks, then power-off) with `disks`.
fn spec(name: &str, disks: Vec<DiskSpec>) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel: asset("KERNEL"),
            initramfs: Some(asset("INITRAMFS")),
            cmdline: "console=ttyS0 quiet panic=-1 virt.e2e=1".into(),
        },
        disks,
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

/// Boots `spec` to the guest's power-off; returns the console text.
fn boot(spec: &MachineSpec) -> String {
    let t0 = Instant::now();
    let console = Console::default();
    let backend = QemuBackend::new(QemuOptions {
        allow_emulation: true,
        stop_grace: Duration::from_secs(5),
        ..Default::default()
    });
    let m =
        backend.start(spec, Box::new(console.clone())).unwrap_or_else(|e| panic!("start {}: {e}", spec.name));
    let exit = m.wait(Some(BOOT_TIMEOUT));
    let text = console.text();
    if exit.is_none() {
        let _ = m.stop();
    }
    assert_eq!(exit, Some(MachineExit::PowerOff), "{}: console:\n{text}", spec.name);
    eprintln!("{}: powered off {:.1} s after start", spec.name, t0.elapsed().as_secs_f64());
    for l in text.lines().filter(|l| l.contains("cloud-init") || l.contains("printed from")) {
        eprintln!("  {}", l.trim_end());
    }
    text
}

/// The lines of `text` in order: each of `want` must appear after the previous one.
fn assert_in_order(text: &str, want: &[&str]) {
    let mut at = 0;
    for w in want {
        match text[at..].find(w) {
            Some(i) => at += i + w.len(),
            None => panic!("{w:?} missing (or out of order) in the console:\n{text}"),
        }
    }
}

#[test]
fn nocloud_user_data_runs_in_the_guest() {
    need_qemu!();
    let _g = boot_lock();
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("nocloud.img");
    let src = CloudInitSource { user_data: Some(SCRIPT.into()), ..Default::default() };
    write_nocloud("cloudinitdisk", &src, &SeedInfo::new("testvm.default", "testvm"), &seed).unwrap();
    let text = boot(&spec("cloudinit-nocloud", vec![disk("cloudinitdisk", &seed, true)]));
    assert_in_order(
        &text,
        &[
            "VIRT-E2E: cloud-init seed cidata /dev/vda",
            "VIRT-E2E: cloud-init hostname testvm",
            "printed from cloud-init userdata",
            "VIRT-E2E: cloud-init user-data exit 0",
            "VIRT-E2E: poweroff",
        ],
    );
}

#[test]
fn config_drive_user_data_runs_in_the_guest() {
    need_qemu!();
    let _g = boot_lock();
    let dir = tempfile::tempdir().unwrap();
    // A blank first disk: the guest finds the seed by its label, not its place.
    let scratch = dir.path().join("scratch.img");
    std::fs::File::create(&scratch).unwrap().set_len(1 << 20).unwrap();
    let seed = dir.path().join("configdrive.img");
    let src = CloudInitSource {
        user_data_base64: Some("IyEvYmluL3NoCmVjaG8gJ3ByaW50ZWQgZnJvbSBjbG91ZC1pbml0IHVzZXJkYXRhJwo=".into()),
        ..Default::default()
    };
    let info = SeedInfo::new("testvm.default", "configdrive-vm");
    write_config_drive("cloudinitdisk", &src, &info, &seed).unwrap();
    let text = boot(&spec(
        "cloudinit-configdrive",
        vec![disk("scratch", &scratch, false), disk("cloudinitdisk", &seed, true)],
    ));
    assert_in_order(
        &text,
        &[
            "VIRT-E2E: disk vdb size=2097152 ro=1",
            "VIRT-E2E: cloud-init seed config-2 /dev/vdb",
            "VIRT-E2E: cloud-init hostname configdrive-vm",
            "printed from cloud-init userdata",
            "VIRT-E2E: cloud-init user-data exit 0",
            "VIRT-E2E: poweroff",
        ],
    );
}
