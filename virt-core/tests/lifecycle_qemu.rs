//! The lifecycle library as an embedder drives it, with no daemon: a `Lifecycle` on a `MemStore`
//! and a `BackendRuntime` running the VM in this process on the QEMU backend (software emulation
//! here), booting the project's Debian kernel and initramfs. Start, Running with the accelerator in
//! its conditions, the console, pause and unpause, a graceful stop the guest obeys (ACPI power
//! button), and the VM Halted with its instance gone.

#[macro_use]
#[path = "support/guest.rs"]
mod guest;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use guest::{asset, boot_lock};
use virt_core::lifecycle::{BackendRuntime, Lifecycle, LifecycleOptions, MemStore};
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::resolve::{HostFileError, VolumeFiles};
use virt_core::machine::{DiskFormat, MachineBackend};
use virt_core::model::{self, KernelBootContainer, RunStrategy, VirtualMachine, VmiPhase, Volume};

/// Kernel-boot containers resolve to the project's guest assets; the VM has no volumes.
struct Assets(PathBuf);

impl VolumeFiles for Assets {
    fn volume_file(&self, v: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        Err(HostFileError::VolumeNotPrepared { volume: v.name.clone(), reason: Some("not expected".into()) })
    }
    fn kernel_files(&self, _c: &KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        Ok((asset("KERNEL"), Some(asset("INITRAMFS"))))
    }
    fn state_dir(&self) -> PathBuf {
        self.0.clone()
    }
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(180), "never {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_embedder_runs_a_vm_through_the_lifecycle_on_qemu() {
    need_qemu!();
    let _one = boot_lock();
    let dir = std::env::temp_dir().join(format!("vlq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let qemu: Arc<dyn MachineBackend> = Arc::new(QemuBackend::new(QemuOptions {
        allow_emulation: true,
        run_dir: Some(dir.clone()),
        ..QemuOptions::default()
    }));
    let console = Console::default();
    let sink = console.clone();
    let state = dir.join("state");
    let runtime = BackendRuntime::new(
        vec![qemu],
        Arc::new(move |_vmi: &model::VirtualMachineInstance| {
            Ok(Box::new(Assets(state.clone())) as Box<dyn VolumeFiles>)
        }),
        Arc::new(move |_key| Box::new(sink.clone())),
        AccelPolicy::Auto,
    );
    let lc = Arc::new(
        Lifecycle::new(Arc::new(MemStore::default()), Arc::new(runtime), LifecycleOptions::default())
            .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let controller = {
        let (lc, stop) = (lc.clone(), stop.clone());
        std::thread::spawn(move || lc.run(&stop))
    };

    let vm: VirtualMachine = model::from_yaml(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: embedded
spec:
  runStrategy: Halted
  template:
    spec:
      terminationGracePeriodSeconds: 60
      domain:
        firmware:
          kernelBoot:
            container:
              image: example.invalid/kernel:1
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
            kernelArgs: console=ttyS0 quiet panic=-1 virt.idle=1
        devices: {}
        memory:
          guest: 256Mi
",
    )
    .unwrap();
    lc.vms().create("default", vm).unwrap();
    lc.vms().start("default", "embedded").unwrap();
    let phase = || lc.vmis().get("default", "embedded").ok().and_then(|v| v.status.and_then(|s| s.phase));
    wait("Running", || phase() == Some(VmiPhase::Running));
    let vmi = lc.vmis().get("default", "embedded").unwrap();
    let conds = vmi.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.type_ == "HardwareAccelerated"), "{conds:?}");
    wait("the guest's user space on the console", || console.text().contains("VIRT-E2E: idle"));

    lc.vmis().pause("default", "embedded").unwrap();
    let printable = || lc.vms().get("default", "embedded").unwrap().status.unwrap().printable_status.unwrap();
    assert_eq!(printable(), "Paused");
    lc.vmis().unpause("default", "embedded").unwrap();
    assert_eq!(printable(), "Running");

    lc.vms().stop("default", "embedded", None).unwrap();
    wait("the instance gone", || lc.vmis().get("default", "embedded").is_err());
    assert!(
        console.text().contains("VIRT-E2E: power button"),
        "the guest saw the button:\n{}",
        console.text()
    );
    let vm = lc.vms().get("default", "embedded").unwrap();
    assert_eq!(vm.spec.run_strategy, Some(RunStrategy::Halted));
    assert_eq!(printable(), "Stopped");
    assert!(lc.events(None).iter().all(|e| e.reason != "Killing"), "no forced stop");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    lc.wake();
    controller.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
