//! Live migration of a QEMU machine through QMP, behind the backend-neutral seam
//! (`Machine::migrate_out`, `MachineBackend::start_incoming`): a guest with a shell on its serial
//! console moves into a second QEMU over a unix socket pair, keeps a shell variable set before the
//! move and answers on the new console (asked to auto-converge); a cancel against a destination that never reads, and
//! the progress timeout against another, leave the source running; past the completion timeout it
//! switches to post-copy or pauses the guest to complete, when allowed. Guest assets come from scripts/guest-assets.sh (cached); software emulation
//! where /dev/kvm is unusable.

#[macro_use]
#[path = "support/guest.rs"]
mod guest;

use guest::Console;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use guest::{asset, boot_lock};
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::migrate::{MigrateOptions, MigrationReport};
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::{
    BootSpec, ClockSpec, CpuSpec, Machine, MachineBackend, MachineError, MachineExit, MachineSpec,
    MachineStatus,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn backend() -> QemuBackend {
    QemuBackend::new(QemuOptions {
        allow_emulation: true,
        stop_grace: Duration::from_secs(5),
        ..Default::default()
    })
}

/// A destination ready for post-copy (QEMU's `postcopy-ram`; these tests run as root, so QEMU
/// opens userfaultfd).
fn post_copy_backend() -> QemuBackend {
    QemuBackend::new(QemuOptions {
        allow_emulation: true,
        stop_grace: Duration::from_secs(5),
        incoming_post_copy: true,
        ..Default::default()
    })
}

fn shell_spec(name: &str) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel: asset("KERNEL"),
            initramfs: Some(asset("INITRAMFS")),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
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

/// Boots the shell guest and sets a variable in its shell.
fn booted(name: &str) -> (Box<dyn Machine>, Console) {
    let console = Console::default();
    let m = backend().start(&shell_spec(name), Box::new(console.clone())).unwrap();
    assert!(console.wait_for("Type 'poweroff -f' to exit.", BOOT_TIMEOUT), "{}", console.text());
    m.console_input(b"X=7731; echo VIRT-SET-$X\n").unwrap();
    assert!(console.wait_for("VIRT-SET-7731", Duration::from_secs(60)), "{}", console.text());
    (m, console)
}

#[test]
fn a_qemu_guest_moves_into_a_new_qemu_and_its_shell_goes_on() {
    need_qemu!();
    let _g = boot_lock();
    let (src, src_console) = booted("qmig");
    let src: Arc<dyn Machine> = Arc::from(src);
    let (a, mut b) = UnixStream::pair().unwrap();
    let dst_console = Console::default();
    // The destination starts on this thread: QEMU dies with the thread that spawned it.
    let s2 = src.clone();
    // With auto-converge (KubeVirt's allowAutoConverge): QEMU takes the capability.
    let opts = MigrateOptions { auto_converge: true, ..MigrateOptions::default() };
    let source = std::thread::spawn(move || s2.migrate_out(a, &opts));
    let dst = backend().start_incoming(&shell_spec("qmig"), Box::new(dst_console.clone()), &mut b).unwrap();
    let report = source.join().unwrap().unwrap();
    eprintln!("QEMU migration: {report:?}");
    assert!(report.total_us > 0 && report.bytes_sent > 0, "{report:?}");
    assert_eq!(dst.status(), MachineStatus::Running);
    // The source ended; the guest's shell, with its state, answers on the new console.
    assert_eq!(src.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    let before = src_console.text().len();
    dst.console_input(b"echo VIRT-AFTER-$X-$((6*7))\n").unwrap();
    assert!(
        dst_console.wait_for("VIRT-AFTER-7731-42", Duration::from_secs(60)),
        "destination console:\n{}",
        dst_console.text()
    );
    assert_eq!(src_console.text().len(), before, "the source prints nothing more");
    // A stopped source cannot migrate again.
    let (a2, _b2) = UnixStream::pair().unwrap();
    assert!(matches!(src.migrate_out(a2, &MigrateOptions::default()), Err(MachineError::State { .. })));
    dst.stop().unwrap();
    assert_eq!(dst.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
}

#[test]
fn a_cancelled_qemu_migration_leaves_the_source_running() {
    need_qemu!();
    let _g = boot_lock();
    let (src, console) = booted("qcancel");
    let src: Arc<dyn Machine> = Arc::from(src);
    // A destination that never reads: QEMU's send blocks once the socket buffer is full.
    let (a, silent) = UnixStream::pair().unwrap();
    let s2 = src.clone();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        s2.migrate_cancel()
    });
    let t = Instant::now();
    let e = src.migrate_out(a, &MigrateOptions::default()).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(30), "the cancel did not hang: {:?}", t.elapsed());
    canceller.join().unwrap().unwrap();
    assert!(e.to_string().contains("cancelled"), "{e}");
    drop(silent);
    assert_eq!(src.status(), MachineStatus::Running);
    src.console_input(b"echo VIRT-STILL-$X\n").unwrap();
    assert!(console.wait_for("VIRT-STILL-7731", Duration::from_secs(60)), "{}", console.text());
    // No migration runs: a cancel now is harmless.
    src.migrate_cancel().unwrap();
    // KubeVirt's progressTimeout: against another silent destination `ram.remaining` stops going
    // down; after 2 s without progress the source aborts by itself and runs on.
    let (a, silent) = UnixStream::pair().unwrap();
    let opts = MigrateOptions { progress_timeout_secs: Some(2), ..MigrateOptions::default() };
    let t = Instant::now();
    let e = src.migrate_out(a, &opts).unwrap_err();
    eprintln!("stalled QEMU migration: {e} after {:?}", t.elapsed());
    assert!(e.to_string().contains("Live migration stuck for"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(60),
        "{:?}",
        t.elapsed()
    );
    drop(silent);
    assert_eq!(src.status(), MachineStatus::Running);
    src.console_input(b"echo VIRT-AGAIN-$X\n").unwrap();
    assert!(console.wait_for("VIRT-AGAIN-7731", Duration::from_secs(60)), "{}", console.text());
    src.stop().unwrap();
    assert_eq!(src.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
}

/// Migrates the booted shell guest with `opts` (a pace too slow to finish within the 1 s
/// completion timeout) into a destination from `dest`; checks the shell's state on the new console
/// and returns the report.
fn migrate_past_the_timeout(name: &str, opts: MigrateOptions, dest: QemuBackend) -> MigrationReport {
    let (src, _src_console) = booted(name);
    let src: Arc<dyn Machine> = Arc::from(src);
    let (a, mut b) = UnixStream::pair().unwrap();
    let dst_console = Console::default();
    let s2 = src.clone();
    let source = std::thread::spawn(move || s2.migrate_out(a, &opts));
    let dst = dest.start_incoming(&shell_spec(name), Box::new(dst_console.clone()), &mut b).unwrap();
    let report = source.join().unwrap().unwrap();
    eprintln!("{name}: {report:?}");
    assert_eq!(dst.status(), MachineStatus::Running);
    assert_eq!(src.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    dst.console_input(b"echo VIRT-AFTER-$X-$((6*7))\n").unwrap();
    assert!(
        dst_console.wait_for("VIRT-AFTER-7731-42", Duration::from_secs(60)),
        "destination console:\n{}",
        dst_console.text()
    );
    dst.stop().unwrap();
    assert_eq!(dst.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    report
}

/// 256 KiB/s: the guest's kernel and initramfs (megabytes) take far longer than the 1 s timeout.
fn too_slow_to_finish() -> MigrateOptions {
    MigrateOptions {
        bandwidth_bytes_per_sec: Some(256 << 10),
        completion_timeout_secs: Some(1),
        ..MigrateOptions::default()
    }
}

#[test]
fn past_the_completion_timeout_a_qemu_migration_switches_to_post_copy() {
    need_qemu!();
    let _g = boot_lock();
    // KubeVirt's allowPostCopy: at the timeout the guest moves and faults in what it lacks.
    let opts = MigrateOptions { post_copy: true, ..too_slow_to_finish() };
    let t = Instant::now();
    let report = migrate_past_the_timeout("qpostcopy", opts, post_copy_backend());
    assert_eq!(report.mode.as_deref(), Some("PostCopy"), "{report:?}");
    assert!(t.elapsed() < Duration::from_secs(240), "{:?}", t.elapsed());
}

#[test]
fn past_the_completion_timeout_a_qemu_migration_allowed_to_disrupt_pauses_and_completes() {
    need_qemu!();
    let _g = boot_lock();
    // KubeVirt's allowWorkloadDisruption without post-copy: QEMU pauses the guest and finishes
    // at full speed (the pace was for the running guest).
    let opts = MigrateOptions { pause_to_complete: true, ..too_slow_to_finish() };
    let report = migrate_past_the_timeout("qpaused", opts, backend());
    assert_eq!(report.mode.as_deref(), Some("Paused"), "{report:?}");
    // The downtime counts from that pause (at about 1 s), not from QEMU's own final stop.
    assert!(report.total_us >= 1_000_000, "{report:?}");
    assert!(report.downtime_us + 1_050_000 >= report.total_us, "{report:?}");
}
