//! Confinement of the real launcher (docs/confinement.md): a tiny hand-written PVH guest on this
//! machine's /dev/kvm runs on the native backend under the per-role seccomp filters with no
//! capability on any thread, and a forbidden system call (the launcher's self-test hook,
//! `VIRT_JAIL_SELFTEST=<role>`, makes one on the first thread of a role, under the real filter)
//! kills the launcher with `seccomp.json` and `exit.json` naming the call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use virt_core::jail::{cgroup, netns, read_violation, VIOLATION_EXIT_CODE};
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::remote::{is_alive, read_exit, RemoteMachine};
use virt_core::machine::supervisor::{CONSOLE_LOG, PID_FILE};
use virt_core::machine::{BootSpec, ClockSpec, CpuSpec, Machine, MachineExit, MachineSpec, MachineStatus};

#[path = "support/pvh.rs"]
mod pvh;
use pvh::pvh_elf;

/// 32-bit code: writes `msg` to COM1, one `out` per byte, then spins.
fn print_and_spin(msg: &str) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov $0x3f8, %dx
    for b in msg.bytes() {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov $b, %al; out %al, (%dx)
    }
    c.extend_from_slice(&[0xeb, 0xfe]); // jmp .
    c
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_spec(dir: &Path, name: &str) -> PathBuf {
    let k = dir.join("k.elf");
    std::fs::write(&k, pvh_elf(&print_and_spin("tiny guest up\n"))).unwrap();
    let spec = MachineSpec {
        name: name.into(),
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

fn launcher(spec: &Path, run_dir: &Path, stderr: &Path, env: &[(&str, &str)]) -> Child {
    launcher_with(spec, run_dir, stderr, &[], env)
}

fn launcher_with(spec: &Path, run_dir: &Path, stderr: &Path, args: &[&str], env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virt-launcher"));
    c.args(args);
    c.arg("--spec").arg(spec).arg("--run-dir").arg(run_dir).args([
        "--backend",
        "native",
        "--trust-kvm",
        "--grace-period",
        "1",
    ]);
    // The kernel cache beside the run directory: the jail binds it read-only, and the view test
    // expects nothing outside the scratch directory's tree (the default cache is under $HOME).
    if let Some(scratch) = run_dir.parent() {
        c.env("VIRT_CACHE_DIR", scratch.join("cache"));
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap()
}

fn text(p: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every thread of `pid`: (name, Seccomp mode, CapEff).
fn threads(pid: u32) -> Vec<(String, u32, u64)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(t.unwrap().path().join("status")) else { continue };
        let field = |k: &str| {
            status.lines().find_map(|l| l.strip_prefix(k)).map(|s| s.trim().to_string()).unwrap_or_default()
        };
        v.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap(),
            u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        ));
    }
    v
}

#[test]
fn a_tiny_guest_runs_on_the_native_backend_with_every_thread_confined() {
    let base = scratch("native");
    let run_dir = base.join("run");
    let spec = tiny_spec(&base, "tiny");
    let stderr = base.join("launcher.err");
    let mut child = launcher(&spec, &run_dir, &stderr, &[]);
    wait_for("the control socket", Duration::from_secs(60), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the launcher exited ({st}): {}", text(&stderr));
        }
        is_alive(&run_dir)
    });
    wait_for("the guest's console output", Duration::from_secs(30), || {
        text(&run_dir.join(CONSOLE_LOG)).contains("tiny guest up")
    });
    let m = RemoteMachine::connect(&run_dir).unwrap();
    assert_eq!(m.backend(), "native");
    // Control and console threads are up too: pause and resume go through them.
    m.pause().unwrap();
    assert_eq!(m.status(), MachineStatus::Paused);
    m.resume().unwrap();
    let _console = m.console().unwrap();
    let pid: u32 = text(&run_dir.join(PID_FILE)).trim().parse().unwrap();
    let ts = threads(pid);
    let names: Vec<&str> = ts.iter().map(|t| t.0.as_str()).collect();
    assert!(names.contains(&"vcpu0") && names.iter().any(|n| n.contains("console")), "{names:?}");
    for (name, seccomp, cap_eff) in &ts {
        assert_eq!(*seccomp, 2, "thread {name} is not filtered: {ts:?}");
        assert_eq!(*cap_eff, 0, "thread {name} keeps capabilities: {ts:?}");
    }
    assert_jailed(pid, &run_dir, &base.join("k.elf"));
    // No interfaces and no --netns: a fresh, empty network namespace.
    assert_ne!(
        netns::inode_of(pid).unwrap(),
        netns::inode_of(std::process::id()).unwrap(),
        "a machine without interfaces stays in the node's network namespace"
    );
    // Its own cgroup: guest memory + the documented overhead, and a task limit.
    let mem = cgroup::read_limit(pid, "memory", "memory.limit_in_bytes", "memory.max").unwrap();
    assert_eq!(mem, ((32 + cgroup::overhead_mib(32, 1, false)) << 20).to_string());
    let pids = cgroup::read_limit(pid, "pids", "pids.max", "pids.max").unwrap();
    assert_eq!(pids, cgroup::pids_for(1).to_string());
    let (cg_dir, _) = cgroup::dir_of(pid, "memory").unwrap();
    // Named after the keeper (the process the node started), which outlives the jailed launcher
    // and removes the group.
    assert!(cg_dir.ends_with(format!("virt-launcher-tiny-{}", child.id())), "{}", cg_dir.display());
    assert_eq!(cgroup::dir_of(child.id(), "memory").unwrap().0, cg_dir, "the keeper is in the group too");
    let (pids_dir, _) = cgroup::dir_of(pid, "pids").unwrap();
    // SIGTERM is still the launcher's (no confined thread takes it by accident): the guest ignores
    // the power button, so the grace period ends in a stop.
    // SAFETY: sends a signal to the launcher this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    assert_eq!(m.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{}", text(&stderr));
    assert!(read_violation(&run_dir).is_none(), "{}", text(&stderr));
    // The launcher's cgroup is empty now; where the launcher could not remove it (a read-only v1
    // root without its capabilities), the next launcher does.
    if cg_dir.exists() || pids_dir.exists() {
        let next = scratch("next");
        let st = Command::new(env!("CARGO_BIN_EXE_virt-launcher"))
            .arg("--spec")
            .arg(next.join("missing.json"))
            .arg("--run-dir")
            .arg(next.join("run"))
            .status()
            .unwrap();
        assert_eq!(st.code(), Some(1));
        let _ = std::fs::remove_dir_all(next);
    }
    assert!(!cg_dir.exists() && !pids_dir.exists(), "{} is left", pids_dir.display());
    let _ = std::fs::remove_dir_all(base);
}

/// `pid` runs in its own pid and mount namespaces, as an unprivileged user from the default range,
/// and sees only its own files: the run directory, the kernel, its device nodes and its /proc.
fn assert_jailed(pid: u32, run_dir: &Path, kernel: &Path) {
    let ns = |p: u32, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).unwrap();
    let me = std::process::id();
    assert_ne!(ns(pid, "pid"), ns(me, "pid"), "no pid namespace of its own");
    assert_ne!(ns(pid, "mnt"), ns(me, "mnt"), "no mount namespace of its own");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .map(|s| s.parse::<u32>().unwrap())
            .collect::<Vec<_>>()
    };
    let uids = field("Uid:");
    let range = virt_core::jail::user::DEFAULT_RANGE;
    assert!(
        uids.iter().all(|&u| u == uids[0] && u >= range.first && u - range.first < range.count),
        "Uid: {uids:?}"
    );
    assert_eq!(field("Gid:")[0], uids[0]);
    assert!(field("NSpid:").ends_with(&[1]), "not pid 1 of its namespace: {status}");
    // Its view of the filesystem, from the host through /proc/PID/root.
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(!root.join("etc/shadow").exists() && !root.join("etc").exists(), "/etc is reachable");
    assert!(!root.join("usr").exists(), "the native backend needs no /usr");
    assert!(root.join(run_dir.strip_prefix("/").unwrap()).join(CONSOLE_LOG).is_file());
    assert!(root.join(kernel.strip_prefix("/").unwrap()).is_file());
    let mut top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    let first = run_dir.components().nth(1).unwrap().as_os_str().to_string_lossy().into_owned();
    let mut want = vec!["dev".to_string(), "proc".into(), first];
    want.sort();
    want.dedup();
    assert_eq!(top, want, "the launcher's / holds more than its files");
    let mut dev: Vec<String> = std::fs::read_dir(root.join("dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dev.sort();
    assert_eq!(dev, ["kvm", "null", "random", "urandom", "zero"]);
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(std::fs::metadata(root.join("dev/kvm")).unwrap().uid(), uids[0], "its own /dev/kvm node");
    // Writing outside its binds fails: the root is read-only.
    let run_meta = std::fs::metadata(run_dir).unwrap();
    assert_eq!(run_meta.uid(), uids[0], "the run directory is handed over");
}

/// The launcher dies of a forbidden call made on a thread of `role`; returns what it recorded.
fn forbidden_call_on(role: &str) -> (String, virt_core::jail::Violation, MachineExit) {
    let base = scratch(&format!("kill-{role}"));
    let run_dir = base.join("run");
    let spec = tiny_spec(&base, "doomed");
    let stderr = base.join("launcher.err");
    let mut child = launcher(&spec, &run_dir, &stderr, &[("VIRT_JAIL_SELFTEST", role)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the launcher survived a forbidden call on a {role} thread: {}", text(&stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(st.code(), Some(VIOLATION_EXIT_CODE), "{}", text(&stderr));
    let v = read_violation(&run_dir).unwrap_or_else(|| panic!("no seccomp.json: {}", text(&stderr)));
    let exit = read_exit(&run_dir).unwrap_or_else(|| panic!("no exit.json: {}", text(&stderr)));
    let err = text(&stderr);
    let _ = std::fs::remove_dir_all(base);
    (err, v, exit)
}

#[test]
fn a_forbidden_call_on_a_vcpu_kills_the_launcher_with_a_record_naming_it() {
    let (stderr, v, exit) = forbidden_call_on("vcpu");
    assert_eq!(
        (v.syscall, v.name.as_str(), v.role.as_str()),
        (libc::SYS_socket, "socket", "vcpu"),
        "{stderr}"
    );
    assert_eq!(v.thread, "vcpu0");
    match exit {
        MachineExit::Failed(m) => {
            assert!(m.contains("forbidden system call socket (41)") && m.contains("vcpu0"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    assert!(stderr.contains("forbidden system call socket"), "{stderr}");
}

#[test]
fn a_forbidden_call_on_a_control_thread_kills_the_launcher_too() {
    let (stderr, v, exit) = forbidden_call_on("control");
    assert_eq!((v.name.as_str(), v.role.as_str()), ("socket", "control"), "{stderr}");
    assert!(matches!(exit, MachineExit::Failed(m) if m.contains("socket")));
}

/// A network namespace made with `ip netns add`, deleted on drop.
struct TestNetNs(String);

impl TestNetNs {
    fn new(tag: &str) -> Self {
        let name = format!("vc-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect("ip (iproute2) runs");
        assert!(st.success(), "ip netns add {name}");
        Self(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for TestNetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_launcher_joins_the_network_namespace_it_is_given() {
    let ns = TestNetNs::new("join");
    let base = scratch("netns");
    let run_dir = base.join("run");
    let spec = tiny_spec(&base, "joined");
    let stderr = base.join("launcher.err");
    let mut c = Command::new(env!("CARGO_BIN_EXE_virt-launcher"));
    c.arg("--spec").arg(&spec).arg("--run-dir").arg(&run_dir).arg("--netns").arg(ns.path()).args([
        "--backend",
        "native",
        "--trust-kvm",
        "--grace-period",
        "1",
    ]);
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    wait_for("the control socket", Duration::from_secs(60), || {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("the launcher exited ({st}): {}", text(&stderr));
        }
        is_alive(&run_dir)
    });
    let pid: u32 = text(&run_dir.join(PID_FILE)).trim().parse().unwrap();
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(ns.path()).unwrap().ino();
    assert_eq!(netns::inode_of(pid).unwrap(), want, "the launcher is not in {}", ns.path().display());
    let m = RemoteMachine::connect(&run_dir).unwrap();
    m.stop().unwrap();
    assert_eq!(m.wait(Some(Duration::from_secs(30))), Some(MachineExit::Stopped));
    assert!(child.wait().unwrap().success(), "{}", text(&stderr));
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn a_network_namespace_that_does_not_exist_fails_the_launcher_naming_it() {
    let base = scratch("nonetns");
    let spec = tiny_spec(&base, "nowhere");
    let out = Command::new(env!("CARGO_BIN_EXE_virt-launcher"))
        .arg("--spec")
        .arg(&spec)
        .arg("--run-dir")
        .arg(base.join("run"))
        .args(["--netns", "/run/netns/vc-no-such-namespace", "--backend", "native", "--trust-kvm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/run/netns/vc-no-such-namespace"), "{err}");
    let _ = std::fs::remove_dir_all(base);
}

/// The real uid of `pid`.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Stops launchers (the keeper's process group: the jailed launcher leads its own).
fn stop_all(children: &mut [Child], run_dirs: &[PathBuf]) {
    for d in run_dirs {
        if let Ok(pid) = text(&d.join(PID_FILE)).trim().parse::<i32>() {
            // SAFETY: kill with a pid read from the launcher's own pid file.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn launchers_started_at_once_never_share_a_uid() {
    // Four launchers at the same moment on a range of two uids, the uid locks in a directory of
    // the test's own: two get one uid each, two stay root saying the range is full.
    let base = scratch("uids");
    let spec = tiny_spec(&base, "uids");
    let locks = base.join("locks").display().to_string();
    let run_dirs: Vec<PathBuf> = (0..4).map(|i| base.join(format!("run{i}"))).collect();
    let mut children: Vec<Child> = run_dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let err = base.join(format!("err{i}"));
            launcher_with(
                &spec,
                d,
                &err,
                &["--uid-range", "2100000000-2100000001"],
                &[("VIRT_LAUNCHER_UID_LOCKS", &locks)],
            )
        })
        .collect();
    for (i, d) in run_dirs.iter().enumerate() {
        wait_for("every launcher's control socket", Duration::from_secs(120), || {
            if let Ok(Some(st)) = children[i].try_wait() {
                panic!("launcher {i} exited ({st}): {}", text(&base.join(format!("err{i}"))));
            }
            is_alive(d)
        });
    }
    let uids: Vec<u32> =
        run_dirs.iter().map(|d| uid_of(text(&d.join(PID_FILE)).trim().parse().unwrap())).collect();
    let errs: Vec<String> = (0..4).map(|i| text(&base.join(format!("err{i}")))).collect();
    stop_all(&mut children, &run_dirs);
    let mut own: Vec<u32> = uids.iter().copied().filter(|&u| u != 0).collect();
    own.sort();
    assert_eq!(own, vec![2_100_000_000, 2_100_000_001], "uids {uids:?}; stderr {errs:?}");
    let full = errs.iter().filter(|e| e.contains("the machine runs as root: every uid of")).count();
    assert_eq!(full, 2, "{errs:?}");
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn two_launchers_started_at_once_on_one_run_directory_leave_it_to_the_one_that_runs() {
    let base = scratch("rundir");
    let spec = tiny_spec(&base, "rundir");
    let run_dir = base.join("run");
    let locks = base.join("locks").display().to_string();
    let env = [("VIRT_LAUNCHER_UID_LOCKS", locks.as_str())];
    let mut children: Vec<Child> =
        (0..2).map(|i| launcher_with(&spec, &run_dir, &base.join(format!("err{i}")), &[], &env)).collect();
    wait_for("the control socket", Duration::from_secs(120), || is_alive(&run_dir));
    // The other one refused at once.
    let mut refused = None;
    wait_for("the second launcher's refusal", Duration::from_secs(60), || {
        refused = children.iter_mut().position(|c| c.try_wait().unwrap().is_some());
        refused.is_some()
    });
    let loser = refused.unwrap();
    let err = text(&base.join(format!("err{loser}")));
    assert!(err.contains("is in use by another launcher"), "{err}");
    // The running machine keeps its files: the run directory and its console log are its uid's.
    use std::os::unix::fs::MetadataExt as _;
    let uid = uid_of(text(&run_dir.join(PID_FILE)).trim().parse().unwrap());
    let owners = (
        std::fs::metadata(&run_dir).unwrap().uid(),
        std::fs::metadata(run_dir.join(CONSOLE_LOG)).unwrap().uid(),
    );
    stop_all(&mut children, std::slice::from_ref(&run_dir));
    assert_ne!(uid, 0);
    assert_eq!(owners, (uid, uid), "the run directory stays the running launcher's");
    let _ = std::fs::remove_dir_all(&base);
}
