//! Snapshot and restore under the launcher's filters (docs/confinement.md): a tiny guest on this
//! machine's /dev/kvm runs with confinement enabled, a *control* thread (the role that serves
//! machine operations) takes the snapshot while the guest runs, and the restore is done on a thread
//! with the main role, whose vCPUs confine themselves as usual. Seccomp filters cannot be removed,
//! so the confined part runs in a child process (this test binary again, with one ignored test
//! selected); a forbidden call there ends it with status 159 and `seccomp.json` naming the call.

#[path = "support/tiny.rs"]
mod tiny;

use std::path::{Path, PathBuf};
use std::process::Command;

use tiny::{assemble, assert_consecutive, counter_config, Console, COUNTER_GUEST};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::jail::{self, read_violation, JailOptions, Role};
use virt_core::vmm::{ExitReason, MicroVm};

const CHILD_ENV: &str = "VC_CONFINED_SNAPSHOT_DIR";

#[test]
fn a_confined_guest_is_snapshotted_by_a_control_thread_and_restored() {
    assert!(Path::new("/dev/kvm").exists(), "this test needs /dev/kvm");
    let dir = std::env::temp_dir().join(format!("csnap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "confined_child", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(read_violation(&dir).is_none(), "a forbidden call: {:?}\n{err}", read_violation(&dir));
    assert!(out.status.success(), "the confined child failed ({}): {stdout}\n{err}", out.status);
    assert!(stdout.contains("restored and counting"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The confined half; runs only in the child started above.
#[test]
#[ignore = "run by a_confined_guest_is_snapshotted_by_a_control_thread_and_restored in its own process"]
fn confined_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else { return };
    jail::enable(JailOptions { run_dir: Some(dir.clone()), interfaces: true, ..Default::default() }).unwrap();
    let hv = KvmHypervisor::new().unwrap();
    let img = assemble("counter", COUNTER_GUEST);
    let con = Console::default();
    let h = MicroVm::new(&hv, counter_config(img.clone(), &con, 32)).unwrap().start().unwrap();
    // From here on this thread is the launcher's main thread (set-up done, machine running).
    jail::enter(Role::Main).unwrap();
    con.wait_beats(3);
    let snap = dir.join("snap");
    let h = std::sync::Arc::new(h);
    let h2 = h.clone();
    let snap2 = snap.clone();
    std::thread::Builder::new()
        .name("vm-control".into())
        .spawn(move || {
            jail::enter_or_die(Role::Control);
            let stats = h2.snapshot(&snap2).unwrap();
            assert!(stats.pages_written > 0);
            h2.resume();
        })
        .unwrap()
        .join()
        .unwrap();
    h.request_stop();
    assert_eq!(h.wait(), ExitReason::Stopped);
    drop(h);
    // Restore (the launcher restores on its main thread, like a start) and keep counting.
    let con2 = Console::default();
    let vm = MicroVm::restore(&hv, counter_config(img, &con2, 32), &snap).unwrap();
    let h = vm.start().unwrap();
    let beats = con2.wait_beats(3);
    assert_consecutive(&beats);
    h.request_stop();
    h.wait();
    println!("restored and counting: {beats:x?}");
}
