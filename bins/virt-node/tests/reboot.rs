//! A guest that reboots starts again in place: the same VMI, a new confined launcher each time.
//! Real parts: a `virt-node` daemon with the native backend, a tiny hand-written PVH guest that
//! prints `R` on COM1 and resets through the i8042 at once (served as a kernel-boot container image
//! by a real `docker-registry`), jailed launchers on this machine's /dev/kvm.
//!
//! The reboots follow each other as fast as launchers start, which is what exposed the race this
//! test guards: a new launcher started while the old one's jail keeper still held the run
//! directory's set-up lock, refused to start, and the VMI failed and was replaced.
//!
//! Needs root and /dev/kvm (skipped otherwise, with the reason printed), docker-registry and
//! skopeo (scripts/install-deps.sh installs them).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;
#[path = "../../virt-launcher/tests/support/pvh.rs"]
mod pvh;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;

use std::time::{Duration, Instant};

use guest::have;
use node::NodeProc;
use registry::{Comp, Entry, OciLayout, Registry, RegistryOpts};
use serde_json::Value;

/// `mov $0x3f8,%dx; mov $'R',%al; out %al,(%dx); mov $0xfe,%al; out %al,$0x64; hlt; jmp .-1`:
/// prints `R`, then pulls the i8042's reset line at once: the machine often ends before the node
/// has even connected to its launcher.
const REBOOTER: &[u8] = &[0x66, 0xba, 0xf8, 0x03, 0xb0, 0x52, 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd];

const VM: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: bouncer
spec:
  runStrategy: Always
  template:
    spec:
      terminationGracePeriodSeconds: 0
      domain:
        firmware:
          kernelBoot:
            container:
              image: IMAGE
              kernelPath: /boot/vmlinuz
        memory:
          guest: 32Mi
        devices:
          autoattachGraphicsDevice: false
";

/// How many reboots in place the test waits for.
const REBOOTS: usize = 20;

fn push_guest(reg: &Registry) -> String {
    let mut layout = OciLayout::new();
    let layer = registry::tar_of(&[Entry::Dir("boot/"), Entry::File("boot/vmlinuz", pvh::pvh_elf(REBOOTER))]);
    let desc = layout.image(&[(layer, Comp::Gzip)], "amd64");
    layout.tag("v1", &desc);
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/rebooter", &[]);
    format!("{}/kubevirt/rebooter:v1", reg.host)
}

fn vmi(node: &NodeProc) -> Option<Value> {
    let o = node.virtctl(&["get", "vmi", "bouncer", "-o", "json"]);
    o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
}

fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

#[test]
fn a_rebooting_guest_restarts_in_place_every_time() {
    if !node::can_run_confined_with_registry(have) {
        return;
    }
    let reg = Registry::start(RegistryOpts::default());
    let image = push_guest(&reg);
    // Short path: unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vrb").tempdir_in("/tmp").unwrap();
    let state = dir.path().join("s");
    std::fs::create_dir(&state).unwrap();
    let mut node = NodeProc::start_later(&state);
    node.registry = Some(reg.host.clone());
    node.args = vec!["--backend".into(), "native".into()];
    // The nested /dev/kvm hides vmx from /proc/cpuinfo: the launchers trust it (inherited).
    std::env::set_var("VIRT_LAUNCHER_TRUST_KVM", "true");
    node.spawn();

    let f = dir.path().join("vm.yaml");
    std::fs::write(&f, VM.replace("IMAGE", &image)).unwrap();
    node.ok(&["create", "-f", f.to_str().unwrap()]);
    let t = Instant::now();
    let uid = loop {
        if let Some(uid) = vmi(&node).and_then(|v| v["metadata"]["uid"].as_str().map(str::to_string)) {
            break uid;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no VMI\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    let t = Instant::now();
    while count(&node.log(), ": Rebooted:") < REBOOTS {
        let log = node.log();
        assert!(
            !log.contains("FailedCreate") && !log.contains("SuccessfulDelete"),
            "a reboot did not start the machine again in place:\n{log}"
        );
        assert!(t.elapsed() < Duration::from_secs(180), "fewer than {REBOOTS} reboots:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = node.log();
    assert!(!log.contains("FailedCreate"), "{log}");
    // Machines that ended before the node asked them anything do not claim software emulation.
    assert!(!log.contains("SoftwareEmulation"), "{log}");
    // One VMI all along, its machine started once plus once per reboot.
    assert_eq!(count(&log, "SuccessfulCreate: Started the virtual machine"), 1, "{log}");
    let v = vmi(&node).expect("the VMI");
    assert_eq!(v["metadata"]["uid"], uid.as_str(), "the VMI was replaced:\n{log}");
    assert_ne!(v["status"]["phase"], "Failed", "{v}");
    // The guest itself ran each time: one `R` per boot in the run directory's console log. The
    // console is relayed on its own thread, so the last boot's `R` may land just after the
    // reset that followed it was reported.
    let t = Instant::now();
    loop {
        let console = std::fs::read(state.join("vmis").join(&uid).join("console.log")).unwrap_or_default();
        if console.iter().filter(|&&b| b == b'R').count() >= REBOOTS {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", String::from_utf8_lossy(&console));
        std::thread::sleep(Duration::from_millis(50));
    }
    node.ok(&["stop", "bouncer"]);
}
