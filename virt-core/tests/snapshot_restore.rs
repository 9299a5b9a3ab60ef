//! Snapshot and restore of the native VMM with a tiny guest on this machine's /dev/kvm: the guest's
//! counter and heartbeat continue after restore (no reset), the source continues after a snapshot,
//! and broken snapshots are refused with errors that say what is wrong.

#[path = "support/tiny.rs"]
mod tiny;

use std::path::{Path, PathBuf};

use tiny::{assemble, assert_consecutive, counter_config, Console, COUNTER, COUNTER_GUEST, PAGES, STEP};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::snapshot::{SnapshotError, MEMORY_FILE, STATE_FILE};
use virt_core::vmm::state::{self, Section};
use virt_core::vmm::{ExitReason, MicroVm};
use vm_memory::{Bytes, GuestAddress};

fn kvm() -> KvmHypervisor {
    assert!(Path::new("/dev/kvm").exists(), "these tests need /dev/kvm");
    KvmHypervisor::new().expect("/dev/kvm exists but cannot be used")
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the counter guest until it printed three heartbeats, snapshots it into `dir` and returns the
/// image, the console and the handle (paused).
fn run_and_snapshot(hv: &KvmHypervisor, dir: &Path) -> (Vec<u8>, Console, virt_core::vmm::VmHandle) {
    let img = assemble("counter", COUNTER_GUEST);
    let con = Console::default();
    let h = MicroVm::new(hv, counter_config(img.clone(), &con, 32)).unwrap().start().unwrap();
    con.wait_beats(3);
    let stats = h.snapshot(dir).unwrap();
    assert!(h.is_paused());
    assert_eq!(stats.memory_bytes, 32 << 20);
    // Sparse: the guest touched its code, the counter and 16 pages, far less than 32 MiB.
    assert!(stats.pages_written < 256, "{} pages written", stats.pages_written);
    (img, con, h)
}

/// The first heartbeat a continuation must print after the last complete one of `con`.
fn next_beat(con: &Console) -> u32 {
    let last = *con.beats().last().unwrap();
    let ends_line = con.0.lock().unwrap().last() == Some(&b'\n');
    // A line cut by the snapshot finishes on the other side, unparsed; the next full one follows it.
    last.wrapping_add(if ends_line { STEP } else { 2 * STEP })
}

#[test]
fn counter_guest_continues_after_snapshot_and_restore() {
    let hv = kvm();
    let dir = tempdir("continue");
    let (img, con, h) = run_and_snapshot(&hv, &dir);
    let at_snapshot: u32 = h.memory().read_obj(GuestAddress(COUNTER)).unwrap();
    let expected = next_beat(&con);

    // The source resumes after the snapshot and keeps counting.
    let before = con.beats().len();
    h.resume();
    let beats = con.wait_beats(before + 2);
    assert_consecutive(&beats);
    h.request_stop();
    assert_eq!(h.wait(), ExitReason::Stopped);
    drop(h);

    // Restore paused: memory is the snapshot's, nothing runs until resume.
    let con2 = Console::default();
    let vm = MicroVm::restore(&hv, counter_config(img, &con2, 32), &dir).unwrap();
    assert_eq!(vm.memory().read_obj::<u32>(GuestAddress(COUNTER)).unwrap(), at_snapshot);
    let h2 = vm.start_paused().unwrap();
    assert!(h2.is_paused());
    assert_eq!(h2.memory().read_obj::<u32>(GuestAddress(COUNTER)).unwrap(), at_snapshot);
    h2.resume();
    let beats = con2.wait_beats(3);
    assert_eq!(beats[0], expected, "the restored guest continues its count: {beats:x?}");
    assert_consecutive(&beats);
    let now: u32 = h2.memory().read_obj(GuestAddress(COUNTER)).unwrap();
    assert!(now > at_snapshot);
    let page: u32 = h2.memory().read_obj(GuestAddress(PAGES.start + 0x1000)).unwrap();
    assert!(page > at_snapshot, "the guest keeps writing its pages");
    h2.request_stop();
    h2.wait();
    // Guest writes after restore never reach the memory file (private mapping).
    let file = std::fs::read(dir.join(MEMORY_FILE)).unwrap();
    let c = COUNTER as usize;
    assert_eq!(u32::from_le_bytes(file[c..c + 4].try_into().unwrap()), at_snapshot);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn restore_err(hv: &KvmHypervisor, img: &[u8], dir: &Path, mib: u64) -> SnapshotError {
    match MicroVm::restore(hv, counter_config(img.to_vec(), &Console::default(), mib), dir) {
        Ok(_) => panic!("a broken snapshot was restored"),
        Err(e) => e,
    }
}

#[test]
fn corrupted_truncated_newer_and_mismatched_snapshots_are_refused() {
    let hv = kvm();
    let dir = tempdir("refused");
    let (img, _con, h) = run_and_snapshot(&hv, &dir);
    h.request_stop();
    h.wait();
    drop(h);
    let path = dir.join(STATE_FILE);
    let good = std::fs::read(&path).unwrap();

    // A flipped byte in the middle of a payload.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&path, &bad).unwrap();
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("corrupted") && e.contains("crc32"), "{e}");

    // Cut short.
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("truncated"), "{e}");
    std::fs::write(&path, &good[..good.len() - 32]).unwrap(); // exactly the `end` section missing
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("without its `end` section"), "{e}");

    // A vCPU section from a future layout that this build cannot read.
    let mut sections = state::read_stream(&good).unwrap();
    let v = sections.iter_mut().find(|s| s.name == "vcpu0").unwrap();
    *v = Section { version: 7, min_reader: 5, ..v.clone() };
    std::fs::write(&path, state::write_stream(&sections).unwrap()).unwrap();
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("`vcpu0` has version 7 and needs a reader of version >= 5"), "{e}");

    // Not a state file at all.
    std::fs::write(&path, b"hello").unwrap();
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("not a state stream"), "{e}");

    // The good state into a VM of another size.
    std::fs::write(&path, &good).unwrap();
    let e = restore_err(&hv, &img, &dir, 64).to_string();
    assert!(e.contains("memory file of 33554432 bytes"), "{e}");
    // A memory file cut short.
    let mf = std::fs::OpenOptions::new().write(true).open(dir.join(MEMORY_FILE)).unwrap();
    mf.set_len(16 << 20).unwrap();
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("memory file of 16777216 bytes"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_snapshot_flushes_the_disk_and_restores_with_the_virtio_device() {
    use std::sync::Arc;
    use virt_core::block::MemDisk;
    let hv = kvm();
    let dir = tempdir("disk");
    let img = assemble("counter", COUNTER_GUEST);
    let con = Console::default();
    let disk = Arc::new(MemDisk::new(1 << 20, false));
    let mut cfg = counter_config(img.clone(), &con, 32);
    cfg.disks = vec![disk.clone()];
    let h = MicroVm::new(&hv, cfg).unwrap().start().unwrap();
    con.wait_beats(2);
    assert_eq!(disk.flush_count(), 0);
    h.snapshot(&dir).unwrap();
    assert_eq!(disk.flush_count(), 1, "the disk is flushed before the snapshot");
    let expected = next_beat(&con);
    h.request_stop();
    h.wait();
    drop(h);
    let sections = state::read_stream(&std::fs::read(dir.join(STATE_FILE)).unwrap()).unwrap();
    assert!(sections.iter().any(|s| s.name == "virtio-mmio0"));

    // Restoring without the disk is refused; with it, the guest continues.
    let e = restore_err(&hv, &img, &dir, 32).to_string();
    assert!(e.contains("disks of [1048576] bytes"), "{e}");
    let con2 = Console::default();
    let mut cfg = counter_config(img, &con2, 32);
    cfg.disks = vec![Arc::new(MemDisk::new(1 << 20, false))];
    let h2 = MicroVm::restore(&hv, cfg, &dir).unwrap().start().unwrap();
    let beats = con2.wait_beats(2);
    assert_eq!(beats[0], expected);
    assert_consecutive(&beats);
    h2.request_stop();
    h2.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
