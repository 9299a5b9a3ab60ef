//! Auto-converge of the native VMM on /dev/kvm: a guest that dirties memory faster than the
//! migration's bandwidth cap never converges within its completion timeout without it, and does
//! with it (the vCPU throttle rises, the guest continues on the destination); a migration that
//! fails while throttled leaves the source running at full speed.
//!
//! `cargo test -p virt-core --test auto_converge -- --nocapture --test-threads=1` prints the
//! figures (docs/migration.md).

#[path = "support/tiny.rs"]
mod tiny;

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tiny::{assemble, counter_config, Console};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::migration::{MigrationError, MigrationOptions};
use virt_core::vmm::{ExitReason, MicroVm, VmHandle};

/// Guest RAM.
const MEMORY_MIB: u64 = 32;
/// The region the guest sweeps: 2 MiB, 512 pages.
const REGION: (u64, u64) = (0x40_0000, 0x60_0000);
/// Pre-copy's bandwidth cap: 16 MiB/s, 4096 pages a second, so a round of the whole region
/// takes 125 ms.
const BANDWIDTH: u64 = 16 << 20;
/// A budget that leaves ~40 pages for the final pass at that bandwidth.
const DOWNTIME: Duration = Duration::from_millis(20);

/// Forever: increments the counter at 0x200000, writes it into the first word of each page of
/// [`REGION`] with a delay loop after each page (so the dirty rate is bounded by CPU time, which
/// the throttle takes away), and after each sweep prints `h` + the counter (8 hex digits) on COM1.
fn dirtying_guest() -> String {
    format!(
        "
    mov $0x3f8, %dx
top:
    incl 0x200000
    mov 0x200000, %eax
    mov ${start:#x}, %edi
1:  mov %eax, (%edi)
    mov $10, %ecx
2:  dec %ecx
    jnz 2b
    add $4096, %edi
    cmp ${end:#x}, %edi
    jb 1b
    mov %eax, %ebp
    mov $0x68, %al
    out %al, %dx
    mov $8, %ecx
3:  rol $4, %ebp
    mov %ebp, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    out %al, %dx
    loop 3b
    mov $0x0a, %al
    out %al, %dx
    jmp top
hexdigits: .ascii \"0123456789abcdef\"
",
        start = REGION.0,
        end = REGION.1
    )
}

fn kvm() -> KvmHypervisor {
    assert!(Path::new("/dev/kvm").exists(), "these tests need /dev/kvm");
    KvmHypervisor::new().expect("/dev/kvm exists but cannot be used")
}

fn running(hv: &KvmHypervisor) -> (Vec<u8>, Console, VmHandle) {
    let img = assemble("dirtying", &dirtying_guest());
    let con = Console::default();
    let h = MicroVm::new(hv, counter_config(img.clone(), &con, MEMORY_MIB)).unwrap().start().unwrap();
    con.wait_beats(3);
    (img, con, h)
}

/// Sweeps of the region per second, over `over`.
fn sweep_rate(con: &Console, over: Duration) -> f64 {
    let n0 = con.beats().len();
    std::thread::sleep(over);
    (con.beats().len() - n0) as f64 / over.as_secs_f64()
}

fn options(auto_converge: bool, timeout: Duration) -> MigrationOptions {
    MigrationOptions {
        downtime_budget: DOWNTIME,
        // Converge or time out: never pause because of a pass count.
        max_passes: u32::MAX,
        bandwidth_limit: Some(BANDWIDTH),
        completion_timeout: Some(timeout),
        auto_converge,
        ..Default::default()
    }
}

#[test]
fn a_guest_dirtying_faster_than_the_link_converges_only_with_auto_converge() {
    let hv = kvm();
    let (img, con, h) = running(&hv);
    let rate = sweep_rate(&con, Duration::from_millis(500));
    eprintln!(
        "unthrottled: {rate:.0} sweeps/s = {:.0} pages/s dirtied; the link takes {} pages/s",
        rate * 512.0,
        BANDWIDTH / 4096
    );

    // Without auto-converge: every round finds the whole region dirty again; the completion
    // timeout ends it and the source runs on.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let img2 = img.clone();
    let dest = std::thread::spawn(move || {
        MicroVm::migrate_from(&kvm(), counter_config(img2, &Console::default(), MEMORY_MIB), &mut b)
            .map(|_| ())
    });
    let t = Instant::now();
    let e = h.migrate_to(&mut a, &options(false, Duration::from_secs(6))).unwrap_err();
    eprintln!("without auto-converge: {e} after {:?}", t.elapsed());
    assert!(matches!(e, MigrationError::TimedOut { passes, .. } if passes >= 10), "{e}");
    assert!(dest.join().unwrap().is_err());
    assert_eq!(h.throttle_percent(), 0);
    assert_eq!(h.exit_reason(), None, "the source runs on");

    // With it: the throttle rises until the rounds shrink, and the guest moves.
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let con2 = Console::default();
    let con2b = con2.clone();
    let dest = std::thread::spawn(move || {
        MicroVm::migrate_from(&kvm(), counter_config(img, &con2b, MEMORY_MIB), &mut b)
    });
    let stats = h.migrate_to(&mut a, &options(true, Duration::from_secs(60))).unwrap();
    let (h2, _) = dest.join().unwrap().unwrap();
    assert_eq!(h.wait(), ExitReason::Stopped);
    eprintln!(
        "with auto-converge: total {:?}, downtime {:?} (save state {:?}, final pass {:?}, restore {:?}), \
         {} passes, throttle {}% (per pass {:?}), pages per pass {:?}, {} bytes sent",
        stats.total,
        stats.downtime,
        stats.save_state,
        stats.final_pass,
        stats.restore,
        stats.passes,
        stats.throttle_percent,
        stats.throttle_per_pass,
        stats.pages_per_pass,
        stats.bytes_sent
    );
    assert!(stats.throttle_percent >= 20, "the throttle rose: {stats:?}");
    assert!(stats.throttle_per_pass.windows(2).all(|w| w[0] <= w[1]), "it only rises: {stats:?}");
    let beats = con2.wait_beats(3);
    tiny::assert_consecutive_by(&beats, 1);
    assert_eq!(h2.throttle_percent(), 0, "the destination runs unthrottled");
    h2.request_stop();
    h2.wait();
}

#[test]
fn a_throttled_migration_that_fails_leaves_the_source_at_full_speed() {
    let hv = kvm();
    let (img, con, h) = running(&hv);
    let before = sweep_rate(&con, Duration::from_millis(500));
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        MicroVm::migrate_from(&kvm(), counter_config(img, &Console::default(), MEMORY_MIB), &mut b)
            .map(|_| ())
    });
    // Long enough for the throttle to rise, too short to converge. A quarter of the other tests'
    // bandwidth: a pass over the region takes ~500 ms, so the migration converges only if the
    // guest gets no CPU for that long (at 16 MiB/s a 125 ms stall of the vCPU thread on a loaded
    // host was enough, and the "failed" migration completed). The throttle reaches 30 % at the
    // third pass (~1.5 s) and 40 % at the fifth (~2.5 s): the watcher looks between.
    let opts = MigrationOptions {
        bandwidth_limit: Some(BANDWIDTH / 4),
        ..options(true, Duration::from_millis(3000))
    };
    let watcher = {
        let con = con.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1900));
            sweep_rate(&con, Duration::from_millis(500))
        })
    };
    let e = h.migrate_to(&mut a, &opts).unwrap_err();
    let during = watcher.join().unwrap();
    assert!(matches!(e, MigrationError::TimedOut { .. }), "{e}");
    assert!(dest.join().unwrap().is_err());
    assert_eq!(h.throttle_percent(), 0, "the throttle ended with the migration");
    let after = sweep_rate(&con, Duration::from_millis(500));
    eprintln!("sweeps/s: {before:.0} before, {during:.0} while throttled, {after:.0} after ({e})");
    assert!(during < before * 0.8, "throttled: {during:.0} against {before:.0} sweeps/s");
    assert!(after > before * 0.6, "full speed again: {after:.0} against {before:.0} sweeps/s");
    h.request_stop();
    h.wait();
}

#[test]
fn a_migration_that_makes_no_progress_is_aborted_by_the_progress_timeout() {
    let hv = kvm();
    let (img, con, h) = running(&hv);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let dest = std::thread::spawn(move || {
        MicroVm::migrate_from(&kvm(), counter_config(img, &Console::default(), MEMORY_MIB), &mut b)
            .map(|_| ())
    });
    // Every round finds the whole region dirty: the remaining data never goes below its first low.
    let opts = MigrationOptions {
        progress_timeout: Some(Duration::from_secs(1)),
        ..options(false, Duration::from_secs(60))
    };
    let t = Instant::now();
    let e = h.migrate_to(&mut a, &opts).unwrap_err();
    eprintln!("stalled migration: {e} after {:?}", t.elapsed());
    assert!(matches!(e, MigrationError::Stuck { .. }), "{e}");
    assert!(e.to_string().starts_with("Live migration stuck for 1 sec and has been aborted"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let de = dest.join().unwrap().unwrap_err();
    assert!(de.to_string().contains("Live migration stuck"), "the destination is told why: {de}");
    assert_eq!(h.exit_reason(), None, "the source runs on");
    let n = con.beats().len();
    con.wait_beats(n + 3);
    h.request_stop();
    h.wait();
}

#[test]
fn a_destination_that_takes_nothing_is_caught_by_the_progress_timeout() {
    use virt_core::vmm::migration::{self, CancelToken, Kind};
    let hv = kvm();
    let (_img, con, h) = running(&hv);
    let (mut a, mut b) = UnixStream::pair().unwrap();
    // A destination that agrees to everything and then reads nothing: the source's write blocks
    // once the socket buffer is full, so no round ever ends.
    let dest = std::thread::spawn(move || {
        assert_eq!(migration::read_frame(&mut b).unwrap().0, Kind::Hello);
        let mut hello = Vec::new();
        hello.extend_from_slice(&1u16.to_le_bytes());
        hello.extend_from_slice(&1u16.to_le_bytes());
        hello.extend_from_slice(&0u64.to_le_bytes());
        migration::write_frame(&mut b, Kind::Hello, &hello).unwrap();
        assert_eq!(migration::read_frame(&mut b).unwrap().0, Kind::Config);
        migration::write_frame(&mut b, Kind::Ok, &[]).unwrap();
        std::thread::sleep(Duration::from_secs(15));
        drop(b);
    });
    // As the machine layer does: a cancel shuts the stream down.
    let token = std::sync::Arc::new(CancelToken::default());
    let waker = a.try_clone().unwrap();
    token.on_cancel(Box::new(move || {
        let _ = waker.shutdown(std::net::Shutdown::Both);
    }));
    let opts = MigrationOptions {
        progress_timeout: Some(Duration::from_secs(1)),
        cancel: token,
        ..options(false, Duration::from_secs(60))
    };
    let t = Instant::now();
    let e = h.migrate_to(&mut a, &opts).unwrap_err();
    eprintln!("silent destination: {e} after {:?}", t.elapsed());
    assert!(matches!(e, MigrationError::Blocked(_)), "{e}");
    assert!(e.to_string().starts_with("Live migration stuck for 1 sec and has been aborted"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(h.exit_reason(), None, "the source runs on");
    assert!(!h.is_paused());
    let n = con.beats().len();
    con.wait_beats(n + 3);
    h.request_stop();
    h.wait();
    dest.join().unwrap();
}
