//! The launcher in supervised mode, as the node daemon runs it: the real binary with a QEMU spec under
//! software emulation (this machine's /dev/kvm has no vmx/svm), booting the project's Debian kernel and
//! initramfs (scripts/guest-assets.sh) in `virt.idle=1` mode, driven through `RemoteMachine` over the
//! run directory's sockets. One boot, a few seconds of TCG.

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest::{assets, have};
use virt_core::machine::accel::{AccelPolicy, Accelerator, HostVirt};
use virt_core::machine::remote::{is_alive, launcher_running, read_exit, RemoteError, RemoteMachine};
use virt_core::machine::supervisor::{CONSOLE_LOG, CONSOLE_SOCKET, CONTROL_SOCKET, EXIT_FILE, PID_FILE};
use virt_core::machine::{
    BootSpec, ClockSpec, CpuSpec, Machine, MachineEvent, MachineExit, MachineSpec, MachineStatus,
};

const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

fn spec(name: &str, kernel: PathBuf, initramfs: PathBuf) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        cpu: CpuSpec::default(),
        memory_mib: 256,
        boot: BootSpec::Kernel {
            kernel,
            initramfs: Some(initramfs),
            cmdline: "console=ttyS0 quiet panic=-1 virt.idle=1".into(),
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

/// A short scratch directory (unix socket paths must stay under 108 bytes).
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vl-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn launcher(spec: &Path, run_dir: &Path, stderr: &Path, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_virt-launcher"))
        .arg("--spec")
        .arg(spec)
        .arg("--run-dir")
        .arg(run_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

/// Stops and reaps the launcher if the test ends early.
struct Reap {
    child: Child,
    run_dir: PathBuf,
}

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(m) = RemoteMachine::connect_timeout(&self.run_dir, Duration::from_secs(5)) {
                let _ = m.stop();
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.wait();
        }
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

/// The threads of `pid`: (name, /proc status).
fn tasks(pid: u32) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        if let Ok(st) = std::fs::read_to_string(t.unwrap().path().join("status")) {
            v.push((field(&st, "Name:"), st));
        }
    }
    v
}

fn field(status: &str, k: &str) -> String {
    status.lines().find_map(|l| l.strip_prefix(k)).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// The child processes of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let c = std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default();
        v.extend(c.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
    }
    v
}

#[test]
fn a_supervised_qemu_machine_is_driven_over_its_sockets() {
    if !have("qemu-system-x86_64") {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "qemu-system-x86_64 not installed: skipping (scripts/install-deps.sh installs it)"
        );
        eprintln!("qemu-system-x86_64 not installed: skipping (scripts/install-deps.sh installs it)");
        return;
    }
    let a = assets();
    let base = scratch("sup");
    let run_dir = base.join("run");
    let spec_path = base.join("spec.json");
    let s = spec("supervised", a["KERNEL"].clone(), a["INITRAMFS"].clone());
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&s).unwrap()).unwrap();
    let stderr = base.join("launcher.err");
    let t0 = Instant::now();
    let mut reap = Reap {
        child: launcher(&spec_path, &run_dir, &stderr, &["--backend", "qemu", "--allow-emulation"]),
        run_dir: run_dir.clone(),
    };

    wait_for("the control socket", Duration::from_secs(60), || {
        if let Ok(Some(st)) = reap.child.try_wait() {
            panic!("the launcher exited ({st}): {}", text(&stderr));
        }
        is_alive(&run_dir)
    });
    assert!(launcher_running(&run_dir));
    let pid: u32 = text(&run_dir.join(PID_FILE)).trim().parse().unwrap();
    // The process the node started is the keeper, outside the machine's pid namespace; the launcher
    // proper is its child, pid 1 of its own (docs/confinement.md).
    assert_eq!(children(reap.child.id()), vec![pid]);

    // A second launcher on the same run directory is refused at once, and harms nothing.
    let err2 = base.join("second.err");
    let t = Instant::now();
    let st =
        launcher(&spec_path, &run_dir, &err2, &["--backend", "qemu", "--allow-emulation"]).wait().unwrap();
    assert_eq!(st.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(5));
    let e = text(&err2);
    assert!(e.contains("in use by another launcher") && e.contains(&format!("pid {pid}")), "{e}");
    assert!(is_alive(&run_dir));

    let m = RemoteMachine::connect(&run_dir).unwrap();
    assert_eq!(m.launcher_pid(), pid);
    // Confined (docs/confinement.md): every launcher thread filtered with no capability; QEMU under
    // its own sandbox with no capability and no_new_privs.
    for (name, st) in tasks(pid) {
        assert_eq!(field(&st, "Seccomp:"), "2", "launcher thread {name}: {st}");
        assert_eq!(field(&st, "CapEff:"), "0000000000000000", "launcher thread {name}: {st}");
    }
    let qemu = children(pid).into_iter().find(|c| comm(*c).starts_with("qemu")).expect("QEMU's process");
    let qst = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    assert_eq!(field(&qst, "Seccomp:"), "2", "{qst}");
    assert_eq!(field(&qst, "NoNewPrivs:"), "1", "{qst}");
    assert_eq!(field(&qst, "CapEff:"), "0000000000000000", "{qst}");
    // QEMU inherits the launcher's jail: its pid, mount and network namespaces, its unprivileged
    // user, a view with /usr (read-only) and the machine's files, and no /etc/shadow.
    let uid = field(&qst, "Uid:");
    let uid: u32 = uid.split_whitespace().next().unwrap().parse().unwrap();
    assert!(uid >= virt_core::jail::user::DEFAULT_RANGE.first, "QEMU runs as uid {uid}");
    let ns = |p: u32, k: &str| std::fs::read_link(format!("/proc/{p}/ns/{k}")).unwrap();
    for k in ["pid", "mnt", "net"] {
        assert_eq!(ns(qemu, k), ns(pid, k), "{k}");
        assert_ne!(ns(qemu, k), ns(std::process::id(), k), "{k}");
    }
    let root = PathBuf::from(format!("/proc/{qemu}/root"));
    assert!(
        root.join("usr/bin").is_dir() && !root.join("etc/shadow").exists() && !root.join("home").exists()
    );
    assert!(root.join(a["KERNEL"].strip_prefix("/").unwrap()).is_file());
    let cmdline = std::fs::read_to_string(format!("/proc/{qemu}/cmdline")).unwrap().replace('\0', " ");
    assert!(cmdline.contains("-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny"), "{cmdline}");
    assert_eq!(m.backend(), "qemu");
    assert_eq!(m.name(), "supervised");
    assert_eq!(m.status(), MachineStatus::Running);
    let d = m.accelerator();
    eprintln!("accelerator {:?}: {}", d.accelerator, d.reason);
    if !HostVirt::probe().cpu_flag {
        assert_eq!(d.accelerator, Accelerator::Emulation);
    }

    // Nobody watched the boot: console.log has it all the same, and a late viewer gets it replayed.
    let log = run_dir.join(CONSOLE_LOG);
    wait_for("user space", BOOT_TIMEOUT, || text(&log).contains("VIRT-E2E: idle"));
    eprintln!("user space after {:.1} s", t0.elapsed().as_secs_f64());
    let mut con = m.console().unwrap();
    con.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while !String::from_utf8_lossy(&seen).contains("VIRT-E2E: idle") {
        let n = con.read(&mut buf).unwrap();
        assert!(n > 0, "console closed; got {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("VIRT-E2E: userspace up"));
    match m.console() {
        Err(RemoteError::ConsoleBusy { name, .. }) => assert_eq!(name, "supervised"),
        other => panic!("a second console session: {other:?}"),
    }

    // Drain what came before (Started may still be queued for us); then pause and resume.
    while m.next_event(Duration::from_millis(100)).is_some() {}
    m.pause().unwrap();
    assert_eq!(m.status(), MachineStatus::Paused);
    assert_eq!(m.next_event(Duration::from_secs(10)), Some(MachineEvent::Paused));
    m.resume().unwrap();
    assert_eq!(m.status(), MachineStatus::Running);
    assert_eq!(m.next_event(Duration::from_secs(10)), Some(MachineEvent::Resumed));

    // The ACPI power button: the guest powers off; the launcher records it and exits 0.
    m.power_down().unwrap();
    assert_eq!(m.wait(Some(BOOT_TIMEOUT)), Some(MachineExit::PowerOff), "{}", text(&log));
    let mut events = Vec::new();
    while let Some(e) = m.next_event(Duration::from_secs(10)) {
        events.push(e);
    }
    assert_eq!(events, vec![MachineEvent::PowerDownRequested, MachineEvent::Ended(MachineExit::PowerOff)]);
    let st = reap.child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", text(&stderr));
    assert_eq!(read_exit(&run_dir), Some(MachineExit::PowerOff));
    assert!(text(&run_dir.join(EXIT_FILE)).contains("PowerOff"));
    assert!(!run_dir.join(CONTROL_SOCKET).exists() && !run_dir.join(CONSOLE_SOCKET).exists());
    // What is left: the locks, the log and the exit (QEMU's own run directory went with it).
    let mut left: Vec<String> = std::fs::read_dir(&run_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    left.sort();
    assert_eq!(left, ["console.log", "exit.json", "launcher.lock", "setup.lock"]);
    assert!(!is_alive(&run_dir) && !launcher_running(&run_dir));
    assert!(text(&log).contains("VIRT-E2E: power button"), "{}", text(&log));
    // The console session ended with the machine; stop afterwards is fine.
    let mut rest = Vec::new();
    let _ = con.read_to_end(&mut rest);
    m.stop().unwrap();
    assert_eq!(m.status(), MachineStatus::Stopped(MachineExit::PowerOff));
    eprintln!("whole test {:.1} s", t0.elapsed().as_secs_f64());
    drop(reap);
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn a_bad_spec_fails_with_its_reason_recorded() {
    let base = scratch("bad");
    let run_dir = base.join("run");
    let spec_path = base.join("spec.json");
    let stderr = base.join("launcher.err");
    std::fs::write(&spec_path, br#"{"name":"x","memoryMib":64,"bogus":1}"#).unwrap();
    let st = launcher(&spec_path, &run_dir, &stderr, &[]).wait().unwrap();
    assert_eq!(st.code(), Some(1));
    let e = text(&stderr);
    assert!(e.contains("is not a MachineSpec") && e.contains("bogus"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    match read_exit(&run_dir) {
        Some(MachineExit::Failed(m)) => assert!(m.contains("bogus"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(!launcher_running(&run_dir) && !is_alive(&run_dir));

    // A forced backend that cannot run the spec says why.
    let mut s = spec("k", "/nonexistent/vmlinuz".into(), "/nonexistent/initrd".into());
    s.boot = BootSpec::Bios;
    std::fs::write(&spec_path, serde_json::to_vec(&s).unwrap()).unwrap();
    let st = launcher(&spec_path, &run_dir, &stderr, &["--backend", "native"]).wait().unwrap();
    assert_eq!(st.code(), Some(1));
    let e = text(&stderr);
    assert!(e.contains("native backend was asked for"), "{e}");
    assert!(matches!(read_exit(&run_dir), Some(MachineExit::Failed(_))));

    // --spec needs --run-dir, and does not mix with --kernel.
    let out =
        Command::new(env!("CARGO_BIN_EXE_virt-launcher")).arg("--spec").arg(&spec_path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--run-dir"));
    let _ = std::fs::remove_dir_all(base);
}
