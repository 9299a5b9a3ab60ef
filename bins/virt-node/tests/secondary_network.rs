//! Two real guests on one secondary network (docs/networking.md), with real parts: a `virt-node`
//! daemon whose pod network lives in a namespace this test creates (`--pod-network --pod-netns`),
//! a node bridge there named by a `k8s.cni.cncf.io/v1` NetworkAttachmentDefinition with an address
//! range, and two VMIs under QEMU (software emulation) booting the project's Debian kernel and
//! initramfs with a shell on the console. Each guest asks the node's DHCP server for an address on
//! its secondary NIC (busybox `udhcpc`, found by the MAC the node put in the spec), and the first
//! pings the second over the bridge.
//!
//! Needs root (namespaces, bridges), qemu-system-x86_64, docker-registry and skopeo
//! (scripts/install-deps.sh installs them).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;
#[path = "support/shell.rs"]
mod shell;

use std::process::Command;
use std::time::Duration;

use guest::{boot_lock, have};
use node::NodeProc;
use registry::{Registry, RegistryOpts};
use serde_json::Value;
use shell::{push_kernel_image, ConsoleSession, READY};

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// The secondary network: node bridge `br-sec2` with 192.168.60.10-20 handed out over DHCP.
const NAD: &str = r#"{"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
 "metadata": {"name": "sec", "namespace": "default"},
 "spec": {"config": "{\"cniVersion\": \"0.3.1\", \"type\": \"bridge\", \"bridge\": \"br-sec2\", \"ipam\": {\"type\": \"host-local\", \"subnet\": \"192.168.60.0/24\", \"rangeStart\": \"192.168.60.10\", \"rangeEnd\": \"192.168.60.20\"}}"}}"#;

/// POSTs `body` (JSON) to `path` over the node's socket; returns the status code and the answer.
fn post(node: &NodeProc, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&node.socket).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out)
}

/// A shell guest with the pod network (masquerade) and the secondary network (bridge binding).
const VMI: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: NAME
  namespace: default
spec:
  terminationGracePeriodSeconds: 0
  domain:
    firmware:
      kernelBoot:
        container:
          image: IMAGE
          kernelPath: /boot/vmlinuz
          initrdPath: /boot/initrd.img
        kernelArgs: console=ttyS0 quiet panic=-1
    memory:
      guest: 256Mi
    devices:
      autoattachGraphicsDevice: false
      interfaces:
      - name: default
        masquerade: {}
      - name: sec
        bridge: {}
  networks:
  - name: default
    pod: {}
  - name: sec
    multus:
      networkName: sec
";

struct TestNs(String);

impl TestNs {
    fn new() -> Self {
        let n = format!("vsec-{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &n]).stderr(std::process::Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &n]).status().unwrap().success());
        Self(n)
    }

    fn ip(&self, args: &[&str]) {
        let st = Command::new("ip").args(["-n", &self.0]).args(args).status().unwrap();
        assert!(st.success(), "ip -n {} {args:?}", self.0);
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The MAC the node gave `vmi`'s interface `name` (from the pool, written into its spec).
fn mac_of(v: &Value, name: &str) -> String {
    let ifaces = v["spec"]["domain"]["devices"]["interfaces"].as_array().unwrap();
    let i = ifaces.iter().find(|i| i["name"] == name).unwrap();
    i["macAddress"].as_str().unwrap().to_lowercase()
}

/// In the guest: the NIC with `mac` up, a DHCP lease on it (udhcpc only asks; the shell applies
/// the address), printed as `VIRT-LEASE-<tag>-<address>`; returns the address.
fn lease(console: &mut ConsoleSession, tag: &str, mac: &str) -> String {
    console.type_line(&format!(
        "for n in /sys/class/net/*; do [ \"$(cat $n/address)\" = {mac} ] && D=${{n##*/}}; done; \
         ip link set $D up; \
         A=$(udhcpc -i $D -n -q -f -t 10 -s /bin/true 2>&1 | sed -n 's/.*lease of \\([0-9.]*\\) obtained.*/\\1/p'); \
         ip addr add $A/24 dev $D; echo VIRT-LEASE-{tag}-$A-END"
    ));
    let marker = format!("VIRT-LEASE-{tag}-192.168.60.");
    console.wait_for(&marker, Duration::from_secs(120));
    let text = console.text();
    let at = text.rfind(&marker).unwrap() + format!("VIRT-LEASE-{tag}-").len();
    text[at..].split("-END").next().unwrap().to_string()
}

#[test]
fn two_guests_on_one_secondary_network_get_leases_and_reach_each_other() {
    let missing = ["qemu-system-x86_64", "docker-registry", "skopeo"].into_iter().find(|t| !have(t));
    if let Some(t) = missing {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "{t} not installed");
        eprintln!("{t} not installed: skipping (scripts/install-deps.sh installs it)");
        return;
    }
    let _g = boot_lock();
    let reg = Registry::start(RegistryOpts::default());
    let image = push_kernel_image(&reg);
    // Short path: unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vsn").tempdir_in("/tmp").unwrap();
    let ns = TestNs::new();
    // The node bridge the NetworkAttachmentDefinition names, where the node's side of the pod
    // network lives.
    ns.ip(&["link", "add", "br-sec2", "type", "bridge"]);
    ns.ip(&["link", "set", "br-sec2", "up"]);
    let node = NodeProc::start_with(
        dir.path(),
        Some(&reg.host),
        &["--backend", "qemu", "--pod-network", "--pod-netns", &ns.0],
    );
    let (code, answer) =
        post(&node, "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions", NAD);
    assert_eq!(code, 201, "{answer}");
    for name in ["sec-a", "sec-b"] {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, VMI.replace("NAME", name).replace("IMAGE", &image)).unwrap();
        node.ok(&["create", "-f", f.to_str().unwrap()]);
    }
    let (va, vb) = (
        node.wait_vmi_phase("sec-a", "Running", BOOT_TIMEOUT),
        node.wait_vmi_phase("sec-b", "Running", BOOT_TIMEOUT),
    );
    let (mac_a, mac_b) = (mac_of(&va, "sec"), mac_of(&vb, "sec"));
    assert_ne!(mac_a, mac_b);

    let mut a = ConsoleSession::attach(&node, "sec-a");
    let mut b = ConsoleSession::attach(&node, "sec-b");
    a.wait_for(READY, BOOT_TIMEOUT);
    b.wait_for(READY, BOOT_TIMEOUT);
    let ip_b = lease(&mut b, "b", &mac_b);
    let ip_a = lease(&mut a, "a", &mac_a);
    eprintln!("leases on the secondary network: sec-a {ip_a}, sec-b {ip_b}");
    assert_ne!(ip_a, ip_b, "one address per guest");
    for ip in [&ip_a, &ip_b] {
        let last: u8 = ip.rsplit('.').next().unwrap().parse().unwrap();
        assert!((10..=20).contains(&last), "{ip} is from the NetworkAttachmentDefinition's range");
    }
    a.type_line(&format!("ping -c 3 -W 5 {ip_b} > /tmp/p 2>&1 && echo VIRT-PING-OK-$((40+2)) || cat /tmp/p"));
    a.wait_for("VIRT-PING-OK-42", Duration::from_secs(60));
    b.type_line(&format!("ping -c 1 -W 5 {ip_a} > /tmp/p 2>&1 && echo VIRT-PONG-OK-$((40+2)) || cat /tmp/p"));
    b.wait_for("VIRT-PONG-OK-42", Duration::from_secs(60));
    a.detach();
    b.detach();
    node.ok(&["delete", "vmi", "sec-a"]);
    node.ok(&["delete", "vmi", "sec-b"]);
}
