//! Live migration of the same Linux guest (Debian kernel + the project's initramfs, a shell on
//! ttyS0) by our native VMM and by QEMU, both on this machine's /dev/kvm, through the same seam
//! (`Machine::migrate_out` / `MachineBackend::start_incoming`, a unix socket pair) in one run:
//! medians of total time and downtime, side by side, and the ratio. Run by bench/migration.sh.
//!
//! `cargo run --release -p virt-core --example migration_bench -- [runs] [memory MiB] [idle|dirty]`
//!
//! `dirty` starts a shell loop in the guest that rewrites a tmpfs file of a quarter of its memory
//! with `dd` over and over, before each migration. Downtime is what each VMM reports: ours from the
//! source's pause to the destination told to run; QEMU's `query-migrate` `downtime` (milliseconds,
//! QEMU's own clock: from the source's stop to the end of the final transfer; the destination's
//! `cont` after it is not in it).

#[path = "../tests/support/guest.rs"]
mod guest;

use guest::Console;

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_core::block::{BlockBackend, MemDisk};
use virt_core::machine::accel::{AccelPolicy, HostVirt};
use virt_core::machine::migrate::{MigrateOptions, MigrationReport};
use virt_core::machine::native::NativeBackend;
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::{BootSpec, ClockSpec, CpuSpec, DiskOpener, Machine, MachineBackend, MachineSpec};

fn spec(memory_mib: u64, cpu_model: Option<String>) -> MachineSpec {
    MachineSpec {
        name: "migbench".into(),
        cpu: CpuSpec { model: cpu_model, ..CpuSpec::default() },
        memory_mib,
        boot: BootSpec::Kernel {
            kernel: guest::asset("KERNEL"),
            initramfs: Some(guest::asset("INITRAMFS")),
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

/// This machine's /dev/kvm runs guests although the CPU flags hide vmx (nested): both backends are
/// told it is hardware, so both use KVM.
fn host() -> HostVirt {
    HostVirt { cpu_flag: true, kvm_usable: true }
}

fn backend(name: &str) -> Box<dyn MachineBackend> {
    match name {
        "native" => {
            let opener: DiskOpener =
                Arc::new(|_d| Ok(Arc::new(MemDisk::new(1 << 20, true)) as Arc<dyn BlockBackend>));
            Box::new(NativeBackend::new(opener, None).with_host(host()))
        }
        _ => Box::new(
            QemuBackend::new(QemuOptions { stop_grace: Duration::from_secs(5), ..Default::default() })
                .with_host(host()),
        ),
    }
}

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Waits for `marker` on `console`; the error says which VMM and shows what the guest printed.
fn expect_on(name: &str, console: &Console, marker: &str) -> Result<(), BenchError> {
    if console.wait_for(marker, Duration::from_secs(30)) {
        return Ok(());
    }
    Err(format!("{name}: no {marker:?} within 30 s; console:\n{}", console.text()).into())
}

/// One migration of a freshly booted guest; checks the shell answers on the destination.
fn one(name: &str, memory_mib: u64, dirty: bool) -> Result<MigrationReport, BenchError> {
    let b = backend(name);
    // QEMU's `-cpu host` asks this nested /dev/kvm for MSRs it refuses (ARCH_CAPABILITIES):
    // BENCH_QEMU_CPU (default qemu64) names the model QEMU's guest gets.
    let cpu = (name == "qemu").then(|| std::env::var("BENCH_QEMU_CPU").unwrap_or_else(|_| "qemu64".into()));
    let spec = |m| spec(m, cpu.clone());
    let console = Console::default();
    let src: Arc<dyn Machine> = Arc::from(b.start(&spec(memory_mib), Box::new(console.clone()))?);
    // Waits for the shell, giving up at once if the machine ended (a KVM that cannot run it).
    let deadline = Instant::now() + Duration::from_secs(120);
    while !console.wait_for("Type 'poweroff -f' to exit.", Duration::from_secs(1)) {
        let s = src.status();
        if Instant::now() >= deadline || matches!(s, virt_core::machine::MachineStatus::Stopped(_)) {
            return Err(format!(
                "{name}: the guest's shell did not come up (status {s:?}); console:\n{}",
                console.text()
            )
            .into());
        }
    }
    src.console_input(b"X=4242; echo SET-$X\n")?;
    expect_on(name, &console, "SET-4242")?;
    if dirty {
        let mib = memory_mib / 4;
        let cmd = format!(
            "mkdir -p /dev/shm; mount -t tmpfs none /dev/shm 2>/dev/null; (while :; do dd if=/dev/zero of=/dev/shm/d bs=1M count={mib} 2>/dev/null; done) & echo DIRTY-ON\n"
        );
        src.console_input(cmd.as_bytes())?;
        expect_on(name, &console, "DIRTY-ON")?;
        std::thread::sleep(Duration::from_secs(2));
    }
    let (a, mut s) = UnixStream::pair()?;
    let s2 = src.clone();
    let source = std::thread::spawn(move || s2.migrate_out(a, &MigrateOptions::default()));
    // On this thread: QEMU dies with the thread that spawned it.
    let dst_console = Console::default();
    let dst = b.start_incoming(&spec(memory_mib), Box::new(dst_console.clone()), &mut s)?;
    let report = source.join().map_err(|_| format!("{name}: the migrating thread panicked"))??;
    dst.console_input(b"echo AFTER-$X\n")?;
    expect_on(name, &dst_console, "AFTER-4242")?;
    dst.stop()?;
    dst.wait(Some(Duration::from_secs(10)));
    src.wait(Some(Duration::from_secs(10)));
    Ok(report)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let memory_mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(512);
    let dirty = args.next().as_deref() == Some("dirty");
    let workload = if dirty { "dirtying (dd over a quarter of memory)" } else { "idle shell" };
    let mut rows = Vec::new();
    let names = ["native", "qemu"];
    let only = std::env::var("VMMS").unwrap_or_default();
    let mut reports: Vec<Vec<MigrationReport>> = vec![Vec::new(), Vec::new()];
    // Interleaved, so drift in the machine's load touches both alike.
    for run in 0..runs {
        for (i, n) in names.iter().enumerate() {
            if !only.is_empty() && !only.split_whitespace().any(|o| o == *n) {
                continue;
            }
            let r = match one(n, memory_mib, dirty) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("run {run} {n}: FAILED, not counted: {e}");
                    continue;
                }
            };
            eprintln!(
                "run {run} {n}: total {} us, downtime {} us, passes {}, {} bytes",
                r.total_us, r.downtime_us, r.passes, r.bytes_sent
            );
            reports[i].push(r);
        }
    }
    println!("{memory_mib} MiB guest, {workload}, {runs} runs each (medians), same seam, same run:\n");
    println!("| VMM | total | downtime | passes | bytes sent |");
    println!("| --- | --- | --- | --- | --- |");
    for (i, n) in names.iter().enumerate() {
        if reports[i].is_empty() {
            rows.push((0, 0));
            continue;
        }
        let total = median(reports[i].iter().map(|r| r.total_us).collect());
        let down = median(reports[i].iter().map(|r| r.downtime_us).collect());
        let passes = median(reports[i].iter().map(|r| u64::from(r.passes)).collect());
        let bytes = median(reports[i].iter().map(|r| r.bytes_sent).collect());
        println!(
            "| {n} | {:.2} ms | {:.2} ms | {passes} | {:.1} MiB |",
            total as f64 / 1e3,
            down as f64 / 1e3,
            bytes as f64 / (1 << 20) as f64
        );
        rows.push((total, down));
    }
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    println!(
        "\nnative / QEMU: total {:.2}x, downtime {:.2}x (QEMU reports whole milliseconds)",
        ratio(rows[0].0, rows[1].0),
        ratio(rows[0].1, rows[1].1)
    );
    if reports.iter().any(Vec::is_empty) {
        eprintln!("no figures for a VMM: its runs failed (above)");
        std::process::exit(1);
    }
}
