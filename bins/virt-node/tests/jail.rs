//! The node with jailed launchers (their own pid namespace, behind a keeper process that stays on
//! the host's side): a VMI whose VMM is SIGKILLed inside the jail, or whose keeper is SIGKILLed,
//! goes Failed and leaves no process behind, as a killed launcher without the jail does.
//!
//! Needs root (namespaces) and qemu-system-x86_64 (scripts/install-deps.sh installs it).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;

use std::path::Path;
use std::time::{Duration, Instant};

use guest::have;
use node::NodeProc;

const VMI: &str = r#"apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: NAME
  namespace: default
spec:
  terminationGracePeriodSeconds: 0
  domain:
    resources:
      requests:
        memory: 64Mi
    devices:
      disks:
      - name: scratch
        disk:
          bus: virtio
  volumes:
  - name: scratch
    emptyDisk:
      capacity: 16Mi
"#;

/// Starts VMI `name` and waits until it runs; returns its run directory.
fn run(node: &NodeProc, dir: &Path, name: &str) -> std::path::PathBuf {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, VMI.replace("NAME", name)).unwrap();
    node.ok(&["create", "-f", f.to_str().unwrap()]);
    let v = node.wait_vmi_phase(name, "Running", Duration::from_secs(180));
    node.state.join("vmis").join(v["metadata"]["uid"].as_str().unwrap())
}

fn stat_field(pid: u32, n: usize) -> u32 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) in parentheses: state is field 3.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(n - 3).unwrap().parse().unwrap()
}

fn ns(pid: u32, kind: &str) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).unwrap())
}

/// The launcher, its keeper, and every process of the launcher's pid namespace (the VMM among them).
struct Jail {
    launcher: u32,
    keeper: u32,
    inside: Vec<(u32, String)>,
}

fn jail(run_dir: &Path) -> Jail {
    let launcher: u32 =
        std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap().trim().parse().unwrap();
    let keeper = stat_field(launcher, 4);
    assert_ne!(
        ns(launcher, "pid"),
        ns(std::process::id(), "pid"),
        "the launcher has a pid namespace of its own"
    );
    assert_eq!(ns(keeper, "pid"), ns(std::process::id(), "pid"), "its keeper stays outside");
    assert_eq!(stat_field(launcher, 5), launcher, "the launcher leads its own process group");
    let inside = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::metadata(format!("/proc/{p}/ns/pid")).is_ok_and(|_| ns(p, "pid") == ns(launcher, "pid"))
        })
        .map(|p| {
            (p, std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim().to_string())
        })
        .collect();
    Jail { launcher, keeper, inside }
}

fn gone(pids: &[u32], what: &str) {
    let t = Instant::now();
    // A zombie still has a /proc entry but no namespace links.
    while pids.iter().any(|p| std::fs::metadata(format!("/proc/{p}/ns/pid")).is_ok()) {
        if t.elapsed() > Duration::from_secs(30) {
            let list = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let ps =
                std::process::Command::new("ps").args(["-o", "pid,ppid,stat,args", "-p", &list]).output();
            panic!("{what}: processes still there:\n{}", String::from_utf8_lossy(&ps.unwrap().stdout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigkill(pid: u32) {
    // One process, not its group.
    let st = std::process::Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status().unwrap();
    assert!(st.success(), "kill {pid}");
}

#[test]
fn a_sigkilled_jailed_vmm_or_keeper_fails_the_vmi_and_leaves_nothing() {
    assert!(have("qemu-system-x86_64"), "qemu-system-x86_64 is missing: run scripts/install-deps.sh");
    let dir = tempfile::Builder::new().prefix("vj").tempdir_in("/tmp").unwrap();
    let node = NodeProc::start(dir.path(), None);

    // 1. SIGKILL of the VMM inside the jail (QEMU, or the launcher itself on the native backend).
    let run_dir = run(&node, dir.path(), "jail-a");
    let j = jail(&run_dir);
    let vmm =
        j.inside.iter().find(|(_, comm)| comm.starts_with("qemu")).map(|(p, _)| *p).unwrap_or(j.launcher);
    sigkill(vmm);
    let v = node.wait_vmi_phase("jail-a", "Failed", Duration::from_secs(60));
    let all: Vec<u32> = j.inside.iter().map(|(p, _)| *p).chain([j.keeper]).collect();
    gone(&all, "after the VMM's SIGKILL");
    assert!(!run_dir.join(".root").exists(), "the keeper removed the jail's mount point");
    let cg = std::process::Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "6", "-name", &format!("virt-launcher-*-{}", j.keeper)])
        .output()
        .unwrap();
    assert!(cg.stdout.is_empty(), "the keeper removed the cgroup: {}", String::from_utf8_lossy(&cg.stdout));
    assert!(v.to_string().contains("Failed"), "{v}");

    // 2. SIGKILL of the keeper: the jailed launcher dies with it (and its VMM), the VMI fails.
    let run_dir = run(&node, dir.path(), "jail-b");
    let j = jail(&run_dir);
    sigkill(j.keeper);
    let v = node.wait_vmi_phase("jail-b", "Failed", Duration::from_secs(60));
    let all: Vec<u32> = j.inside.iter().map(|(p, _)| *p).chain([j.launcher]).collect();
    gone(&all, "after the keeper's SIGKILL");
    let text = v.to_string();
    assert!(text.contains("killed") || text.contains("launcher"), "the reason names the launcher's end: {v}");
    assert!(!node.log().contains("panicked"), "{}", node.log());
}
