//! The node's pod network end to end, with real parts: a `virt-node` daemon whose pod network
//! lives in a namespace this test creates (`--pod-netns`), real launchers running QEMU (software
//! emulation; the VMI boots nothing, its machine just runs) in their VMI's network namespace with
//! a tap there, and what is left after a launcher SIGKILL and after a node SIGKILL: nothing.
//!
//! Skipped, with the reason printed, where qemu-system-x86_64 is missing (scripts/install-deps.sh
//! installs it). Needs root (namespaces, bridges, nftables).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use guest::have;
use node::NodeProc;
use serde_json::Value;

struct TestNs(String);

impl TestNs {
    fn new(tag: &str) -> Self {
        let n = format!("vnode{tag}-{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        assert!(Command::new("ip").args(["netns", "add", &n]).status().unwrap().success());
        Self(n)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

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
      interfaces:
      - name: default
        masquerade: {}
        ports:
        - port: 22
  networks:
  - name: default
    pod: {}
  volumes:
  - name: scratch
    emptyDisk:
      capacity: 16Mi
"#;

fn create(node: &NodeProc, dir: &Path, name: &str, body: &str) {
    let f = dir.join(format!("{name}.yaml"));
    std::fs::write(&f, body.replace("NAME", name)).unwrap();
    node.ok(&["create", "-f", f.to_str().unwrap()]);
}

/// The VMI network records under the node's state (one per running VMI).
fn records(state: &Path) -> Vec<Value> {
    let Ok(d) = std::fs::read_dir(state.join("net/vmis")) else { return Vec::new() };
    d.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

fn netns_exists(n: &str) -> bool {
    Path::new("/run/netns").join(n).exists()
}

fn launcher_pid(state: &Path, uid: &str) -> i32 {
    std::fs::read_to_string(state.join("vmis").join(uid).join("launcher.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn wait_gone(netns: &str, what: &str, node: &NodeProc) {
    let t = Instant::now();
    while netns_exists(netns) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: namespace {netns} still there\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn launchers_run_in_their_vmis_namespace_and_nothing_leaks_after_sigkills() {
    if !have("qemu-system-x86_64") {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "SKIP: qemu-system-x86_64 is missing (scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIP: qemu-system-x86_64 is missing (scripts/install-deps.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let ns = TestNs::new("a");
    let mut node = NodeProc::start_with(&state, None, &["--pod-network", "--pod-netns", &ns.0]);

    // 1. A VMI with a masquerade interface: its launcher runs in the VMI's namespace.
    create(&node, dir.path(), "net-a", VMI);
    let v = node.wait_vmi_phase("net-a", "Running", Duration::from_secs(120));
    let uid = v["metadata"]["uid"].as_str().unwrap().to_string();
    let st = &v["status"]["interfaces"][0];
    assert_eq!(st["name"], "default");
    // The pod's addresses, as KubeVirt reports a masquerade interface (the guest's are 10.0.2.2 and
    // fd10:0:2::2, reached from nowhere else).
    let pod4 = st["ipAddress"].as_str().unwrap_or_default().to_string();
    assert!(pod4.starts_with("10.244.0."), "{st}");
    assert_eq!(st["ipAddresses"][0], pod4.as_str());
    assert!(st["ipAddresses"][1].as_str().is_some_and(|a| a.starts_with("fd10:244::")), "{st}");
    assert_eq!(st["infoSource"], "domain");
    let mac = st["mac"].as_str().unwrap().to_string();
    assert!(mac.starts_with("02:00:00:"), "{mac}: from the MAC pool's default range");
    // Its tap is held by its launcher: the VMI says it cannot move, and a migration is refused
    // when it is asked for, naming why (not accepted and failed later).
    let movable = v["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "LiveMigratable"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&movable["status"], &movable["reason"]),
        (&"False".into(), &"InterfaceNotLiveMigratable".into()),
        "{v}"
    );
    let refused = node.virtctl(&["migrate", "net-a"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("Reason: InterfaceNotLiveMigratable") && err.contains("interface default is a tap"),
        "{err}"
    );
    assert_eq!(
        v["spec"]["domain"]["devices"]["interfaces"][0]["macAddress"],
        mac.as_str(),
        "written into the spec"
    );
    let rec = records(&state).into_iter().find(|r| r["uid"] == uid.as_str()).expect("a network record");
    let netns = rec["netns"].as_str().unwrap().to_string();
    assert!(netns_exists(&netns));
    let pid = launcher_pid(&state, &uid);
    let launcher_ns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    let vmi_ns = std::fs::metadata(Path::new("/run/netns").join(&netns))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .unwrap();
    assert_eq!(launcher_ns, vmi_ns, "the launcher runs in its VMI's network namespace");
    let tap = Command::new("ip").args(["-n", &netns, "-d", "link", "show", "tap0"]).output().unwrap();
    let tap = String::from_utf8_lossy(&tap.stdout);
    assert!(tap.contains("master k6t-default"), "{tap}");
    assert!(!tap.contains("NO-CARRIER"), "QEMU holds the tap open: {tap}");

    // 2. Launcher SIGKILL: the VMI fails and its network goes.
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
    node.wait_vmi_phase("net-a", "Failed", Duration::from_secs(60));
    wait_gone(&netns, "after a launcher SIGKILL", &node);
    let veth = rec["node_veth"].as_str().unwrap();
    let links = Command::new("ip").args(["-n", &ns.0, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(veth), "the node end of the veth went too");
    assert!(records(&state).iter().all(|r| r["uid"] != uid.as_str()), "record removed");

    // 3. Node SIGKILL, then the launcher dies while no node runs: the restarted node removes it all.
    create(&node, dir.path(), "net-b", VMI);
    let v = node.wait_vmi_phase("net-b", "Running", Duration::from_secs(120));
    let uid_b = v["metadata"]["uid"].as_str().unwrap().to_string();
    let netns_b = records(&state).into_iter().find(|r| r["uid"] == uid_b.as_str()).unwrap()["netns"]
        .as_str()
        .unwrap()
        .to_string();
    node.sigkill();
    let pid = launcher_pid(&state, &uid_b);
    let _ = Command::new("kill").args(["-s", "KILL", "--", &format!("-{pid}")]).status();
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(netns_exists(&netns_b), "nobody cleans while the node is dead");
    node.spawn();
    wait_gone(&netns_b, "after a node SIGKILL and restart", &node);
    assert!(records(&state).is_empty(), "{:?}", records(&state));

    // 4. A node restarted while a VMI runs takes its network back (DHCP, endpoint) and keeps it.
    create(&node, dir.path(), "net-c", VMI);
    let v = node.wait_vmi_phase("net-c", "Running", Duration::from_secs(120));
    let uid_c = v["metadata"]["uid"].as_str().unwrap().to_string();
    let netns_c = records(&state).into_iter().find(|r| r["uid"] == uid_c.as_str()).unwrap()["netns"]
        .as_str()
        .unwrap()
        .to_string();
    node.sigkill();
    node.spawn();
    node.wait_vmi_phase("net-c", "Running", Duration::from_secs(30));
    assert!(netns_exists(&netns_c), "a running VMI keeps its network across a node restart");
    node.ok(&["delete", "vmi", "net-c"]);
    wait_gone(&netns_c, "after deleting the VMI", &node);
}

#[test]
fn a_missing_multus_network_fails_naming_the_field_with_nothing_set_up() {
    if !have("qemu-system-x86_64") {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "SKIP: qemu-system-x86_64 is missing (scripts/install-deps.sh installs it)"
        );
        eprintln!("SKIP: qemu-system-x86_64 is missing (scripts/install-deps.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let ns = TestNs::new("b");
    let node = NodeProc::start_with(&state, None, &["--pod-network", "--pod-netns", &ns.0]);
    let body = VMI
        .replace("        masquerade: {}\n        ports:\n        - port: 22\n", "        bridge: {}\n")
        .replace("    pod: {}\n", "    multus:\n      networkName: nowhere\n");
    create(&node, dir.path(), "net-m", &body);
    let v = node.wait_vmi_phase("net-m", "Failed", Duration::from_secs(60));
    let text = v.to_string();
    assert!(
        text.contains("spec.networks[0].multus.networkName")
            && text.contains("default/nowhere does not exist"),
        "{v}"
    );
    assert!(records(&state).is_empty());
}
