//! Live migration between two real launchers (docs/migration.md): a tiny hand-written PVH guest on
//! this machine's /dev/kvm, printing a dot on COM1 every 2^20 steps, runs confined in one launcher
//! and moves into a second one started with `--incoming` (the node's fresh launcher), over the
//! destination's `migrate.sock`, the stream handed to the source with `migrateOut`. A cancel, and a
//! destination that dies, leave the source running. A few seconds in all.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::migrate::MigrateOptions;
use virt_core::machine::remote::{read_exit, RemoteMachine};
use virt_core::machine::supervisor::migration::{connect_destination, migrate_cancel, migrate_out};
use virt_core::machine::supervisor::{CONSOLE_LOG, PID_FILE};
use virt_core::machine::{BootSpec, ClockSpec, CpuSpec, Machine, MachineExit, MachineSpec, MachineStatus};

#[path = "support/pvh.rs"]
mod pvh;
use pvh::pvh_elf;

/// `back: inc %ecx; test $0xfffff,%ecx; jnz back; mov $0x3f8,%dx; mov $0x2e,%al; out %al,(%dx);
/// jmp back`: a dot on COM1 every 2^20 steps.
const DOTS: &[u8] = &[
    0x41, 0xf7, 0xc1, 0xff, 0xff, 0x0f, 0x00, 0x75, 0xf7, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x2e, 0xee, 0xeb,
    0xee,
];

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vm-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Forever: writes `%eax` into the first word of every page of 4..6 MiB, 10 `dec`/`jnz` steps
/// after each page, then a dot on COM1 per sweep: 512 pages dirtied far faster than 16 MiB/s.
const DIRTIER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, 0xbf, 0x00, 0x00, 0x40, 0x00, 0x89, 0x07, 0xb9, 0x0a, 0x00, 0x00, 0x00, 0x49,
    0x75, 0xfd, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00, 0x81, 0xff, 0x00, 0x00, 0x60, 0x00, 0x72, 0xe8, 0x40,
    0x89, 0xc3, 0xb0, 0x2e, 0xee, 0x89, 0xd8, 0xeb, 0xd9,
];

fn tiny_spec(dir: &Path) -> PathBuf {
    guest_spec(dir, DOTS)
}

fn guest_spec(dir: &Path, code: &[u8]) -> PathBuf {
    let k = dir.join("k.elf");
    std::fs::write(&k, pvh_elf(code)).unwrap();
    let spec = MachineSpec {
        name: "mover".into(),
        cpu: CpuSpec::default(),
        memory_mib: 32,
        boot: BootSpec::Kernel { kernel: k, initramfs: None, cmdline: String::new() },
        disks: vec![],
        interfaces: vec![],
        agent_credentials: Default::default(),
        acpi: true,
        smm: false,
        hyperv: vec![],
        clock: ClockSpec::default(),
        tpm: None,
        graphics: false,
        machine_type: None,
        accel: AccelPolicy::Auto,
    };
    let p = dir.join("spec.json");
    std::fs::write(&p, serde_json::to_vec(&spec).unwrap()).unwrap();
    p
}

/// A confined native launcher, as the node starts it; `--incoming` for a destination.
fn launcher(spec: &Path, run_dir: &Path, extra: &[&str]) -> Reap {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virt-launcher"));
    c.arg("--spec").arg(spec).arg("--run-dir").arg(run_dir).args([
        "--backend",
        "native",
        "--trust-kvm",
        "--grace-period",
        "1",
    ]);
    c.args(extra);
    if let Some(scratch) = run_dir.parent() {
        c.env("VIRT_CACHE_DIR", scratch.join("cache"));
    }
    let stderr = run_dir.with_extension("stderr");
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    Reap { child, run_dir: run_dir.to_path_buf() }
}

/// Stops and reaps the launcher if the test ends early.
struct Reap {
    child: Child,
    run_dir: PathBuf,
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(m) = RemoteMachine::connect_timeout(&self.run_dir, Duration::from_secs(2)) {
                let _ = m.stop();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn dots(run_dir: &Path) -> usize {
    std::fs::read(run_dir.join(CONSOLE_LOG)).unwrap_or_default().iter().filter(|&&b| b == b'.').count()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn more_dots(run_dir: &Path, than: usize) {
    wait_for(&format!("more than {than} dots in {}", run_dir.display()), Duration::from_secs(30), || {
        dots(run_dir) > than
    });
}

fn pid(run_dir: &Path) -> u32 {
    std::fs::read_to_string(run_dir.join(PID_FILE)).unwrap().trim().parse().unwrap()
}

fn stderr(run_dir: &Path) -> String {
    std::fs::read_to_string(run_dir.with_extension("stderr")).unwrap_or_default()
}

fn running(run_dir: &Path) -> RemoteMachine {
    wait_for(&format!("{}'s control socket", run_dir.display()), Duration::from_secs(30), || {
        run_dir.join("control.sock").exists()
    });
    // The socket's file exists from its bind, before the launcher listens: wait while not ready.
    let m = RemoteMachine::connect_when_up(run_dir, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", stderr(run_dir)));
    assert_eq!(m.status(), MachineStatus::Running);
    m
}

#[test]
fn a_running_guest_moves_into_a_fresh_launcher_and_keeps_printing() {
    let base = scratch("move");
    let spec = tiny_spec(&base);
    let (src_dir, dst_dir) = (base.join("src"), base.join("dst"));
    let mut src = launcher(&spec, &src_dir, &[]);
    let _ = running(&src_dir);
    more_dots(&src_dir, 2);
    let src_pid = pid(&src_dir);

    let mut dst = launcher(&spec, &dst_dir, &["--incoming"]);
    let stream = connect_destination(&dst_dir, Duration::from_secs(30)).unwrap();
    let report = migrate_out(&src_dir, &stream, &MigrateOptions::default())
        .unwrap_or_else(|e| panic!("{e}\nsource: {}\ndestination: {}", stderr(&src_dir), stderr(&dst_dir)));
    eprintln!("migration: {report:?}");
    assert!(report.downtime_us > 0 && report.downtime_us < 300_000, "{report:?}");

    // The source launcher ended; the guest counts on in the new one.
    wait_for("the source launcher to exit", Duration::from_secs(10), || {
        matches!(src.child.try_wait(), Ok(Some(_)))
    });
    assert_eq!(read_exit(&src_dir), Some(MachineExit::Stopped));
    let m = running(&dst_dir);
    let dst_pid = pid(&dst_dir);
    assert_ne!(src_pid, dst_pid, "the VM must run in a new launcher");
    more_dots(&dst_dir, 2);
    assert!(!dst_dir.join("migrate.sock").exists(), "the destination's migration socket stays");
    m.stop().unwrap();
    wait_for("the destination launcher to exit", Duration::from_secs(10), || {
        matches!(dst.child.try_wait(), Ok(Some(_)))
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn a_cancel_or_a_dead_destination_leaves_the_source_running() {
    let base = scratch("stay");
    let spec = tiny_spec(&base);
    let src_dir = base.join("src");
    let _src = launcher(&spec, &src_dir, &[]);
    let m = running(&src_dir);
    more_dots(&src_dir, 1);

    // A destination that never answers: the source waits on it until the cancel.
    let (quiet, _held) = std::os::unix::net::UnixStream::pair().unwrap();
    let dir = src_dir.clone();
    let t = std::thread::spawn(move || migrate_out(&dir, &quiet, &MigrateOptions::default()));
    std::thread::sleep(Duration::from_millis(300));
    migrate_cancel(&src_dir).unwrap();
    let e = t.join().unwrap().unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    assert_eq!(m.status(), MachineStatus::Running);
    let n = dots(&src_dir);
    more_dots(&src_dir, n);

    // A destination launcher killed before it accepted: the stream breaks, the source runs on.
    let dst_dir = base.join("dst");
    let mut dst = launcher(&spec, &dst_dir, &["--incoming"]);
    let stream = connect_destination(&dst_dir, Duration::from_secs(30)).unwrap();
    // The launcher itself, not its pid namespace's keeper (the child we spawned).
    wait_for("the destination's pid file", Duration::from_secs(10), || dst_dir.join(PID_FILE).exists());
    // SAFETY: kill has no memory effects; the pid is the destination launcher's.
    assert_eq!(unsafe { libc::kill(pid(&dst_dir) as i32, libc::SIGKILL) }, 0);
    let _ = dst.child.wait();
    let e = migrate_out(&src_dir, &stream, &MigrateOptions::default()).unwrap_err();
    eprintln!("dead destination: {e}");
    assert_eq!(m.status(), MachineStatus::Running);
    let n = dots(&src_dir);
    more_dots(&src_dir, n);

    // A request without a stream is refused by name.
    let e = std::os::unix::net::UnixStream::connect(src_dir.join("control.sock")).map(|mut s| {
        use std::io::{BufRead, Write};
        s.write_all(b"{\"op\":\"migrateOut\"}\n").unwrap();
        let mut l = String::new();
        std::io::BufReader::new(s).read_line(&mut l).unwrap();
        l
    });
    assert!(e.unwrap().contains("no stream to the destination"));
    m.stop().unwrap();
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn a_confined_launcher_throttles_a_dirtying_guest_to_converge() {
    let base = scratch("converge");
    let spec = guest_spec(&base, DIRTIER);
    let (src_dir, dst_dir) = (base.join("src"), base.join("dst"));
    let _src = launcher(&spec, &src_dir, &[]);
    let _ = running(&src_dir);
    more_dots(&src_dir, 2);
    // 16 MiB/s and a 20 ms budget: the guest's 512 pages never fit without a throttle. Without
    // it, the completion timeout ends the migration (no forced pause after a pass count) and the
    // source runs on.
    let mut opts = MigrateOptions {
        downtime_ms: 20,
        bandwidth_bytes_per_sec: Some(16 << 20),
        completion_timeout_secs: Some(3),
        ..MigrateOptions::default()
    };
    let failed_dir = base.join("failed");
    let mut failed = launcher(&spec, &failed_dir, &["--incoming"]);
    let stream = connect_destination(&failed_dir, Duration::from_secs(30)).unwrap();
    let e = migrate_out(&src_dir, &stream, &opts).unwrap_err().to_string();
    assert!(e.contains("did not complete within 3s"), "{e}");
    wait_for("the abandoned destination to exit", Duration::from_secs(10), || {
        matches!(failed.child.try_wait(), Ok(Some(_)))
    });
    more_dots(&src_dir, dots(&src_dir) + 2);

    opts.completion_timeout_secs = Some(60);
    opts.auto_converge = true;
    let _dst = launcher(&spec, &dst_dir, &["--incoming"]);
    let stream = connect_destination(&dst_dir, Duration::from_secs(30)).unwrap();
    let report = migrate_out(&src_dir, &stream, &opts)
        .unwrap_or_else(|e| panic!("{e}\nsource: {}\ndestination: {}", stderr(&src_dir), stderr(&dst_dir)));
    eprintln!("throttled migration between launchers: {report:?}");
    assert!(report.cpu_throttle_percentage >= 20, "the confined source throttled its vCPU: {report:?}");
    let m = running(&dst_dir);
    more_dots(&dst_dir, 2);
    m.stop().unwrap();
    let _ = std::fs::remove_dir_all(base);
}
