//! Live migration of the native VMM between two VMs in this process, over a unix socket and over TCP,
//! with the counter guest on /dev/kvm: the guest continues on the destination (counter and heartbeat
//! carry on, no reset) and the source stops; a destination that refuses or dies leaves the source
//! running.

#[path = "support/tiny.rs"]
mod tiny;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use tiny::{assemble, assert_consecutive, counter_config, Console, COUNTER, COUNTER_GUEST, STEP};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::migration::{self, Kind, MigrationError, MigrationOptions};
use virt_core::vmm::{ExitReason, MicroVm, VmHandle};
use vm_memory::{Bytes, GuestAddress};

fn kvm() -> KvmHypervisor {
    assert!(Path::new("/dev/kvm").exists(), "these tests need /dev/kvm");
    KvmHypervisor::new().expect("/dev/kvm exists but cannot be used")
}

fn running_source(hv: &KvmHypervisor) -> (Vec<u8>, Console, VmHandle) {
    let img = assemble("counter", COUNTER_GUEST);
    let con = Console::default();
    let h = MicroVm::new(hv, counter_config(img.clone(), &con, 32)).unwrap().start().unwrap();
    con.wait_beats(3);
    (img, con, h)
}

/// Migrates the running counter guest over `(src, dst)` and checks it continues on the destination.
fn migrate_and_check<S: Read + Write + Send + 'static>(src: &mut S, mut dst: S) {
    let hv = kvm();
    let (img, con, h) = running_source(&hv);
    let con2 = Console::default();
    let cfg_img = img.clone();
    let con2b = con2.clone();
    let dest = std::thread::spawn(move || {
        let hv = kvm();
        MicroVm::migrate_from(&hv, counter_config(cfg_img, &con2b, 32), &mut dst)
    });
    let stats = h.migrate_to(src, &MigrationOptions::default()).unwrap();
    let (h2, incoming) = dest.join().unwrap().unwrap();
    assert_eq!(h.wait(), ExitReason::Stopped, "the source stops after the migration");
    let at_stop: u32 = h.memory().read_obj(GuestAddress(COUNTER)).unwrap();
    let last = *con.beats().last().unwrap();
    let ends_line = con.0.lock().unwrap().last() == Some(&b'\n');
    let expected = last.wrapping_add(if ends_line { STEP } else { 2 * STEP });

    let beats = con2.wait_beats(3);
    assert_eq!(beats[0], expected, "the guest continues its count on the destination: {beats:x?}");
    assert_consecutive(&beats);
    let now: u32 = h2.memory().read_obj(GuestAddress(COUNTER)).unwrap();
    assert!(now > at_stop);
    assert!(stats.downtime > Duration::ZERO && stats.downtime <= stats.total);
    assert!(stats.pages_per_pass.len() >= 2, "a full copy and a final pass: {stats:?}");
    assert!(incoming.memory_frames >= 1);
    eprintln!("migration: {stats:?}");
    h2.request_stop();
    h2.wait();
}

#[test]
fn counter_guest_migrates_over_a_unix_socket() {
    let (mut a, b) = UnixStream::pair().unwrap();
    migrate_and_check(&mut a, b);
}

#[test]
fn counter_guest_migrates_over_tcp() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    migrate_and_check(&mut a, b);
}

/// Asserts the source still runs and counts after a failed migration.
fn source_keeps_running(con: &Console, h: &VmHandle) {
    assert!(!h.is_paused(), "the source resumes");
    assert_eq!(h.exit_reason(), None);
    let n = con.beats().len();
    let beats = con.wait_beats(n + 2);
    assert_consecutive(&beats);
}

#[test]
fn a_destination_that_refuses_the_config_leaves_the_source_running() {
    let hv = kvm();
    let (img, con, h) = running_source(&hv);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        let hv = kvm();
        // 64 MiB where the source has 32.
        MicroVm::migrate_from(&hv, counter_config(img, &Console::default(), 64), &mut b).map(|_| ())
    });
    let e = h.migrate_to(&mut a, &MigrationOptions::default()).unwrap_err();
    assert!(matches!(&e, MigrationError::Abandoned(m) if m.contains("32 MiB")), "{e}");
    let de = dest.join().unwrap().unwrap_err();
    assert!(de.to_string().contains("32 MiB of memory"), "{de}");
    source_keeps_running(&con, &h);
    h.request_stop();
    h.wait();
}

#[test]
fn a_destination_that_dies_mid_copy_leaves_the_source_running() {
    let hv = kvm();
    let (_img, con, h) = running_source(&hv);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        // A fake destination: answers Hello and Config, reads one memory frame, then dies.
        let (k, _) = migration::read_frame(&mut b).unwrap();
        assert_eq!(k, Kind::Hello);
        let mut hello = Vec::new();
        hello.extend_from_slice(&1u16.to_le_bytes());
        hello.extend_from_slice(&1u16.to_le_bytes());
        hello.extend_from_slice(&0u64.to_le_bytes());
        migration::write_frame(&mut b, Kind::Hello, &hello).unwrap();
        assert_eq!(migration::read_frame(&mut b).unwrap().0, Kind::Config);
        migration::write_frame(&mut b, Kind::Ok, &[]).unwrap();
        assert_eq!(migration::read_frame(&mut b).unwrap().0, Kind::Memory);
        drop(b);
    });
    let e = h.migrate_to(&mut a, &MigrationOptions::default()).unwrap_err();
    assert!(matches!(e, MigrationError::Io { .. }), "{e}");
    dest.join().unwrap();
    source_keeps_running(&con, &h);
    h.request_stop();
    h.wait();
}

/// Fills 4 MiB of the source's guest memory (above what the counter guest uses) with non-zero
/// bytes, so pre-copy has that much to send.
fn give_it_memory_to_send(h: &VmHandle) -> u64 {
    let len = 4 << 20;
    h.memory().write_slice(&vec![0x5a; len], GuestAddress(24 << 20)).unwrap();
    len as u64
}

/// Migrates the running counter guest, given 4 MiB of memory to send, under `opts`: checks that
/// everything went, the source stopped and the count goes on at the destination; returns the
/// stats, the bytes given and the destination (to stop).
fn migrate_with_memory(opts: &MigrationOptions) -> (migration::MigrationStats, u64, VmHandle) {
    let hv = kvm();
    let (img, con, h) = running_source(&hv);
    let bytes = give_it_memory_to_send(&h);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let con2 = Console::default();
    let con2b = con2.clone();
    let dest =
        std::thread::spawn(move || MicroVm::migrate_from(&kvm(), counter_config(img, &con2b, 32), &mut b));
    let stats = h.migrate_to(&mut a, opts).unwrap();
    let (h2, _) = dest.join().unwrap().unwrap();
    assert!(stats.bytes_sent >= bytes, "{stats:?}");
    assert_eq!(h.wait(), ExitReason::Stopped, "the source stops after the migration");
    let last = *con.beats().last().unwrap();
    let beats = con2.wait_beats(3);
    assert!(beats[0] > last, "the guest continues its count on the destination: {beats:x?} after {last:x}");
    assert_consecutive(&beats);
    (stats, bytes, h2)
}

#[test]
fn a_bandwidth_limit_paces_pre_copy_but_not_the_paused_final_pass() {
    let rate = 16u64 << 20;
    let opts = MigrationOptions { bandwidth_limit: Some(rate), ..Default::default() };
    let (stats, bytes, h2) = migrate_with_memory(&opts);
    // At most `rate` bytes a second: 4 MiB take at least a quarter of a second before the pause.
    let floor = Duration::from_secs_f64(bytes as f64 / rate as f64);
    assert!(
        stats.total - stats.downtime >= floor * 9 / 10,
        "pre-copy took {:?}, under {floor:?}: {stats:?}",
        stats.total - stats.downtime
    );
    eprintln!("paced migration ({} MiB/s): {stats:?}", rate >> 20);
    h2.request_stop();
    h2.wait();
}

#[test]
fn a_migration_past_its_completion_timeout_fails_and_the_source_keeps_running() {
    let hv = kvm();
    let (img, con, h) = running_source(&hv);
    give_it_memory_to_send(&h);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        MicroVm::migrate_from(&kvm(), counter_config(img, &Console::default(), 32), &mut b).map(|_| ())
    });
    // 1 MiB/s cannot send 4 MiB within 300 ms.
    let opts = MigrationOptions {
        bandwidth_limit: Some(1 << 20),
        completion_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let e = h.migrate_to(&mut a, &opts).unwrap_err();
    assert!(matches!(e, MigrationError::TimedOut { .. }), "{e}");
    assert!(e.to_string().contains("did not complete within 300ms"), "{e}");
    let de = dest.join().unwrap().unwrap_err();
    assert!(de.to_string().contains("did not complete within"), "the destination is told why: {de}");
    source_keeps_running(&con, &h);
    h.request_stop();
    h.wait();
}

#[test]
fn past_its_completion_timeout_a_migration_allowed_to_disrupt_pauses_the_guest_and_completes() {
    // KubeVirt's allowWorkloadDisruption: 1 MiB/s cannot send 4 MiB within 300 ms; instead of
    // failing, the source pauses the guest there and sends the rest unpaced.
    let opts = MigrationOptions {
        bandwidth_limit: Some(1 << 20),
        completion_timeout: Some(Duration::from_millis(300)),
        pause_to_complete: true,
        ..Default::default()
    };
    let (stats, _, h2) = migrate_with_memory(&opts);
    assert!(stats.paused_to_complete, "{stats:?}");
    // The pause came at the timeout, long before 4 MiB could go out at 1 MiB/s: the downtime
    // counts from it, so pre-copy took about the timeout and the rest was downtime.
    let precopy = stats.total - stats.downtime;
    assert!(
        precopy >= Duration::from_millis(250) && precopy < Duration::from_millis(1500),
        "pre-copy ran until the timeout: {stats:?}"
    );
    assert!(stats.total < Duration::from_secs(2), "the rest went out unpaced: {stats:?}");
    eprintln!("paused to complete: {stats:?}");
    h2.request_stop();
    h2.wait();
}

#[test]
fn a_paced_batch_slower_than_the_progress_timeout_is_not_taken_for_a_silent_peer() {
    // At 1 MiB/s one batch takes longer than the 1 s progress timeout: the sender's own pacing,
    // not a peer that takes nothing, so the watchdog must not cancel.
    let opts = MigrationOptions {
        bandwidth_limit: Some(1 << 20),
        progress_timeout: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let (stats, _, h2) = migrate_with_memory(&opts);
    assert!(stats.total >= Duration::from_secs(3), "paced at 1 MiB/s: {stats:?}");
    h2.request_stop();
    h2.wait();
}

#[test]
fn a_peer_with_no_common_version_is_refused() {
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let mut hello = Vec::new();
    hello.extend_from_slice(&5u16.to_le_bytes());
    hello.extend_from_slice(&9u16.to_le_bytes());
    hello.extend_from_slice(&0u64.to_le_bytes());
    migration::write_frame(&mut a, Kind::Hello, &hello).unwrap();
    let hv = kvm();
    let img = assemble("counter", COUNTER_GUEST);
    let e = MicroVm::migrate_from(&hv, counter_config(img, &Console::default(), 32), &mut b)
        .map(|_| ())
        .unwrap_err();
    assert!(e.to_string().contains("we speak 1..=1, the peer 5..=9"), "{e}");
    let e = migration::read_frame(&mut a).unwrap_err();
    assert!(matches!(&e, MigrationError::Abandoned(m) if m.contains("no common")), "{e}");
}

/// Set in the child process of [`counter_guest_migrates_to_a_second_process`]: the socket to
/// receive the migration on.
const CHILD_SOCKET: &str = "VIRT_MIGRATION_TEST_DEST_SOCKET";

#[test]
fn counter_guest_migrates_to_a_second_process() {
    if let Ok(path) = std::env::var(CHILD_SOCKET) {
        // The destination VMM, in its own process: receive, run, report the heartbeats.
        let mut s = UnixStream::connect(&path).unwrap();
        let hv = kvm();
        let con = Console::default();
        let img = assemble("counter-dest", COUNTER_GUEST);
        let (h, _) = MicroVm::migrate_from(&hv, counter_config(img, &con, 32), &mut s).unwrap();
        let beats = con.wait_beats(3);
        println!("BEATS {}", beats.iter().map(|b| format!("{b:x}")).collect::<Vec<_>>().join(" "));
        h.request_stop();
        h.wait();
        return;
    }
    let hv = kvm();
    let (_img, con, h) = running_source(&hv);
    let dir = std::env::temp_dir().join(format!("migr-{}-proc", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("migrate.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "counter_guest_migrates_to_a_second_process", "--nocapture", "--test-threads=1"])
        .env(CHILD_SOCKET, &sock)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut s, _) = listener.accept().unwrap();
    let stats = h.migrate_to(&mut s, &MigrationOptions::default()).unwrap();
    assert_eq!(h.wait(), ExitReason::Stopped);
    let last = *con.beats().last().unwrap();
    let ends_line = con.0.lock().unwrap().last() == Some(&b'\n');
    let expected = last.wrapping_add(if ends_line { STEP } else { 2 * STEP });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the destination process failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.find("BEATS ").map(|i| &l[i + 6..]))
        .unwrap_or_else(|| panic!("the destination reports no heartbeats: {text}"));
    let beats: Vec<u32> = line.split(' ').map(|h| u32::from_str_radix(h, 16).unwrap()).collect();
    assert_eq!(beats[0], expected, "the guest continues in the second process: {beats:x?}");
    assert_consecutive(&beats);
    eprintln!("migration to a second process: {stats:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
