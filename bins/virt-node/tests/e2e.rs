//! The local node end to end, with real parts: the `virt-node` daemon, `virtctl`, one
//! `virt-launcher` per VM, QEMU under software emulation (this machine has no hardware KVM), the
//! project's Debian kernel and initramfs served as a kernel-boot container image by a real
//! `docker-registry`, and a cloud-init NoCloud seed disk whose shell-script user-data prints a line
//! on the console.
//!
//! 1. apply a VM, start it, see its console (the boot and the user-data line), pause and unpause it,
//!    stop it (the guest obeys the ACPI power button), delete it;
//! 2. kill the daemon with SIGKILL while the VM runs, start it again: the VM is Running, was not
//!    started twice, and its console (with the boot in its ring buffer) is reachable.
//!
//! Skipped, with the reason printed, where qemu-system-x86_64, docker-registry or skopeo are missing
//! (scripts/install-deps.sh installs them). `cargo test --workspace` builds virtctl and
//! virt-launcher, which these tests run from the same target directory.

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use guest::{assets, boot_lock, have, vnc_framebuffer_update};
use node::{bin, NodeProc};
use registry::{Comp, Entry, OciLayout, Registry, RegistryOpts};
use serde_json::Value;

const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

fn missing_tools() -> Option<&'static str> {
    ["qemu-system-x86_64", "docker-registry", "skopeo"].into_iter().find(|t| !have(t))
}

/// Pushes the kernel and initramfs as a kernel-boot container image; returns its reference.
fn push_kernel_image(reg: &Registry) -> String {
    let a = assets();
    let kernel = std::fs::read(&a["KERNEL"]).unwrap();
    let initrd = std::fs::read(&a["INITRAMFS"]).unwrap();
    let mut layout = OciLayout::new();
    let layer = registry::tar_of(&[
        Entry::Dir("boot/"),
        Entry::File("boot/vmlinuz", kernel),
        Entry::File("boot/initrd.img", initrd),
    ]);
    let desc = layout.image(&[(layer, Comp::Gzip)], "amd64");
    layout.tag("v1", &desc);
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/demo-kernel", &[]);
    format!("{}/kubevirt/demo-kernel:v1", reg.host)
}

/// Pushes a containerDisk image (a 4 MiB raw disk under /disk/); returns its reference.
fn push_container_disk(reg: &Registry) -> String {
    let mut layout = OciLayout::new();
    registry::container_disk_image(
        &mut layout,
        "v1",
        "disk.img",
        &registry::disk_bytes(7, 4 << 20),
        Comp::Gzip,
    );
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/scratch-disk", &[]);
    format!("{}/kubevirt/scratch-disk:v1", reg.host)
}

fn vm_yaml(name: &str, image: &str) -> String {
    vm_yaml_with(name, image, None)
}

/// The test VM; with `container_disk`, a containerDisk volume as its first disk (vda).
fn vm_yaml_with(name: &str, image: &str, container_disk: Option<&str>) -> String {
    let (cd_disk, cd_volume) = match container_disk {
        Some(img) => (
            "          - disk:\n              bus: virtio\n            name: containerdisk\n".to_string(),
            format!("      - containerDisk:\n          image: {img}\n        name: containerdisk\n"),
        ),
        None => (String::new(), String::new()),
    };
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels:
    kubevirt.io/vm: {name}
spec:
  runStrategy: Halted
  template:
    metadata:
      labels:
        kubevirt.io/vm: {name}
    spec:
      domain:
        firmware:
          kernelBoot:
            container:
              image: {image}
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
            kernelArgs: console=ttyS0 quiet panic=-1 virt.idle=1
        devices:
          disks:
{cd_disk}          - disk:
              bus: virtio
            name: cloudinitdisk
        memory:
          guest: 256Mi
      terminationGracePeriodSeconds: 60
      volumes:
{cd_volume}      - cloudInitNoCloud:
          userData: |
            #!/bin/sh

            echo 'printed from cloud-init userdata'
        name: cloudinitdisk
"
    )
}

impl NodeProc {
    fn find_vmi(&self, name: &str) -> Option<Value> {
        let o = self.virtctl(&["get", "vmi", name, "-o", "json"]);
        o.status.success().then(|| serde_json::from_slice(&o.stdout).unwrap())
    }

    fn wait_vmi(&self, name: &str, what: &str, ok: impl Fn(Option<&Value>) -> bool) -> Option<Value> {
        let t = Instant::now();
        loop {
            let v = self.find_vmi(name);
            if ok(v.as_ref()) {
                return v;
            }
            assert!(t.elapsed() < BOOT_TIMEOUT, "VMI {name} never {what}: {v:?}\nnode log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Attaches `virtctl console` until `marker` shows, then leaves with ^]; returns what it saw.
    fn console_until(&self, name: &str, marker: &str) -> String {
        let mut child = Command::new(bin("virtctl"))
            .arg("--server")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["console", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let t = Instant::now();
        while !String::from_utf8_lossy(&seen).contains(marker) {
            if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.extend(b);
            }
            if t.elapsed() > BOOT_TIMEOUT {
                let _ = child.kill();
                panic!("console of {name} never showed {marker:?}; saw:\n{}", String::from_utf8_lossy(&seen));
            }
        }
        child.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
        let status = child.wait().unwrap();
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(status.success(), "virtctl console did not end cleanly on ^]: {status} {err}");
        String::from_utf8_lossy(&seen).into_owned()
    }
}

/// One HTTP/1.1 POST over the node's unix socket; returns the status code and the body.
fn raw_post_as(socket: &Path, path: &str, body: &str, content_type: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

fn raw_post(socket: &Path, path: &str, body: &str) -> (u16, String) {
    raw_post_as(socket, path, body, "application/json")
}

fn raw_post_yaml(socket: &Path, path: &str, body: &str) -> (u16, String) {
    raw_post_as(socket, path, body, "application/yaml")
}

/// KubeVirt's example manifests: `VIRT_CONFORMANCE_DIR`, else the repository's copy (as the
/// conformance tests find them).
fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIRT_CONFORMANCE_DIR") {
        return PathBuf::from(dir).join("kubevirt");
    }
    guest::workspace_root().join("conformance/kubevirt")
}

fn condition(vmi: &Value, type_: &str) -> Option<String> {
    vmi.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn phase(v: Option<&Value>) -> Option<&str> {
    v.and_then(|v| v.pointer("/status/phase")).and_then(Value::as_str)
}

fn setup() -> Option<(Registry, String, tempfile::TempDir)> {
    if let Some(t) = missing_tools() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "{t} not installed: skipping (scripts/install-deps.sh installs it)"
        );
        eprintln!("{t} not installed: skipping (scripts/install-deps.sh installs it)");
        return None;
    }
    let reg = Registry::start(RegistryOpts::default());
    let image = push_kernel_image(&reg);
    // Short path: unix socket paths are limited to 107 bytes.
    let state = tempfile::Builder::new().prefix("vn").tempdir_in("/tmp").unwrap();
    Some((reg, image, state))
}

#[test]
fn apply_start_console_pause_stop_delete() {
    let Some((reg, image, state)) = setup() else { return };
    let _one = boot_lock();
    let node = NodeProc::start(state.path(), Some(&reg.host));
    let file = state.path().join("demo.yaml");
    std::fs::write(&file, vm_yaml("demo", &image)).unwrap();

    let out = node.ok(&["create", "-f", file.to_str().unwrap()]);
    assert!(out.contains("virtualmachine.kubevirt.io/demo created"), "{out}");
    let o = node.virtctl(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a second create must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    let out = node.ok(&["get", "vm"]);
    assert!(out.contains("demo") && out.contains("Stopped"), "{out}");

    node.ok(&["start", "demo"]);
    let vmi = node.wait_vmi("demo", "ran", |v| phase(v) == Some("Running")).unwrap();
    assert_eq!(condition(&vmi, "HardwareAccelerated").as_deref(), Some("False"), "{vmi}");
    let seen = node.console_until("demo", "printed from cloud-init userdata");
    assert!(seen.contains("VIRT-E2E: userspace up"), "the console shows the boot: {seen}");
    assert!(seen.contains("VIRT-E2E: cloud-init seed cidata"), "{seen}");

    node.ok(&["pause", "vmi", "demo"]);
    let v = node.find_vmi("demo").unwrap();
    assert_eq!(condition(&v, "Paused").as_deref(), Some("True"), "{v}");
    assert!(node.ok(&["get", "vm", "demo"]).contains("Paused"));
    node.ok(&["unpause", "vmi", "demo"]);
    let v = node.find_vmi("demo").unwrap();
    assert_eq!(condition(&v, "Paused"), None, "{v}");
    assert_eq!(condition(&v, "Ready").as_deref(), Some("True"), "{v}");

    // VNC through the node: `virtctl vnc --proxy-only` prints a local port; a viewer there completes
    // the RFB handshake and gets a framebuffer update from the guest's display.
    let mut vnc = Command::new(bin("virtctl"))
        .arg("--server")
        .arg(format!("unix://{}", node.socket.display()))
        .args(["vnc", "demo", "--proxy-only"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(vnc.stdout.take().unwrap()), &mut line).unwrap();
    let port: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| {
        let _ = vnc.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut vnc.stderr.take().unwrap(), &mut err);
        panic!("virtctl vnc printed {line:?} ({e}); stderr: {err}\n{}", node.log())
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", port["port"]).parse().unwrap();
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (w, h, _name, pixels) = vnc_framebuffer_update(stream);
    assert!(w > 0 && h > 0 && pixels > 0, "{w}x{h} {pixels}");
    let _ = vnc.kill();
    let _ = vnc.wait();

    // A graceful stop: the guest sees the ACPI power button and powers off.
    node.ok(&["stop", "demo"]);
    node.wait_vmi("demo", "went away", |v| v.is_none());
    let vm: Value = serde_json::from_str(&node.ok(&["get", "vm", "demo", "-o", "json"])).unwrap();
    assert_eq!(vm["spec"]["runStrategy"], "Halted");
    assert_eq!(vm["status"]["printableStatus"], "Stopped");
    let log = std::fs::read_to_string(node.state.join("node.log")).unwrap();
    assert!(log.contains("ShuttingDown") || log.contains("asked the guest to power off"), "{log}");
    assert!(!log.contains("grace period over"), "the guest obeyed the power button: {log}");

    node.ok(&["delete", "vm", "demo"]);
    let t = Instant::now();
    while node.virtctl(&["get", "vm", "demo"]).status.success() {
        assert!(t.elapsed() < Duration::from_secs(30), "the VM was not deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = node.virtctl(&["get", "vm", "demo"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    let o = node.virtctl(&["vnc", "demo", "--proxy-only"]);
    assert_eq!(o.status.code(), Some(1), "VNC of a VMI that does not exist");
}

#[test]
fn sigkilled_daemon_finds_its_running_vm_again() {
    let Some((reg, image, state)) = setup() else { return };
    let _one = boot_lock();
    let mut node = NodeProc::start(state.path(), Some(&reg.host));
    let file = state.path().join("keep.yaml");
    let disk = push_container_disk(&reg);
    std::fs::write(&file, vm_yaml_with("keep", &image, Some(&disk))).unwrap();
    node.ok(&["apply", "-f", file.to_str().unwrap()]);
    node.ok(&["start", "keep"]);
    let before = node.wait_vmi("keep", "ran", |v| phase(v) == Some("Running")).unwrap();
    let uid = before["metadata"]["uid"].clone();
    let run_dir = node.state.join("vmis").join(uid.as_str().unwrap());
    let pid_before = std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap();
    // Wait for user space, so that the ring buffer holds the boot.
    let log = run_dir.join("console.log");
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("printed from cloud-init userdata") {
        assert!(t.elapsed() < BOOT_TIMEOUT, "no user-data line in {}", log.display());
        std::thread::sleep(Duration::from_millis(200));
    }

    // The containerDisk was pulled from the registry and the guest writes to its own overlay.
    let console = std::fs::read_to_string(&log).unwrap();
    assert!(console.contains("VIRT-E2E: disk vda size=4194304 ro=0"), "{console}");
    assert!(run_dir.join("containerdisk.qcow2").is_file());

    node.sigkill();
    assert!(node.virtctl(&["get", "vm"]).status.code() == Some(1), "the daemon is gone");
    node.spawn();

    let after = node.find_vmi("keep").expect("the VMI is still there");
    assert_eq!(phase(Some(&after)), Some("Running"), "{after}");
    assert_eq!(after["metadata"]["uid"], uid, "same VMI");
    assert_eq!(
        std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap(),
        pid_before,
        "not started twice"
    );
    // A late viewer sees the boot from the ring buffer.
    let seen = node.console_until("keep", "printed from cloud-init userdata");
    assert!(seen.contains("VIRT-E2E: userspace up"), "{seen}");
    // And it is still controllable.
    node.ok(&["stop", "keep", "--force", "--grace-period", "0"]);
    node.wait_vmi("keep", "went away", |v| v.is_none());
    assert!(node.log().contains("Reattached") || node.log().contains("found its running machine again"));
}

/// KubeVirt's own instancetype examples through the node: `virtctl create` takes the instancetypes,
/// a VM naming one gets a VMI whose CPU and memory come from it; the VMI then fails (its
/// containerDisk's registry does not exist here) with a message naming what failed.
#[test]
fn conformance_instancetypes_resolve_into_the_vmi() {
    let state = tempfile::Builder::new().prefix("vn").tempdir_in("/tmp").unwrap();
    let node = NodeProc::start(state.path(), None);
    let conf = conformance_dir();
    for f in ["cluster-csmall.yaml", "csmall.yaml", "vm-cirros-csmall.yaml"] {
        let out = node.ok(&["create", "-f", conf.join(f).to_str().unwrap()]);
        assert!(out.contains("created"), "{f}: {out}");
    }
    let o = node.virtctl(&["create", "-f", conf.join("csmall.yaml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "a second instancetype of that name");
    node.ok(&["start", "vm-cirros-csmall"]);
    let vmi = node.wait_vmi("vm-cirros-csmall", "failed", |v| phase(v) == Some("Failed")).unwrap();
    let spec = &vmi["spec"]["domain"];
    assert_eq!(spec["memory"]["guest"], "128Mi", "{vmi}");
    let cpus: u64 =
        ["sockets", "cores", "threads"].iter().map(|k| spec["cpu"][k].as_u64().unwrap_or(1)).product();
    assert_eq!(cpus, 1, "csmall's one vCPU: {vmi}");
    let msg = vmi.to_string();
    assert!(msg.contains("containerDisk") && msg.contains("registry:5000"), "{msg}");
    // The API itself (not only virtctl) refuses unknown and unsupported fields, naming them.
    let (code, body) = raw_post(
        &node.socket,
        "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
        r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":"x"},"spec":{"bogus":1,"template":{"spec":{"domain":{"devices":{}}}}}}"#,
    );
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.bogus") && body.contains("\"reason\":\"Invalid\""), "{body}");
    let gpu = std::fs::read_to_string(conf.join("vmi-gpu.yaml")).unwrap();
    let (code, body) =
        raw_post_yaml(&node.socket, "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances", &gpu);
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.domain.devices.gpus"), "{body}");
    let (code, body) = raw_post(&node.socket, "/apis/kubevirt.io/v1/namespaces/nope/virtualmachines", "{}");
    assert!(code == 404 || code == 422, "{code} {body}");

    // A VM naming an instancetype that does not exist cannot start: its status says which.
    let missing = state.path().join("missing.yaml");
    let text = std::fs::read_to_string(conf.join("vm-cirros-csmall.yaml"))
        .unwrap()
        .replace("name: csmall", "name: cnothere")
        .replace("vm-cirros-csmall", "vm-missing-type");
    std::fs::write(&missing, text).unwrap();
    node.ok(&["create", "-f", missing.to_str().unwrap()]);
    node.ok(&["start", "vm-missing-type"]);
    let t = Instant::now();
    loop {
        let vm: Value =
            serde_json::from_str(&node.ok(&["get", "vm", "vm-missing-type", "-o", "json"])).unwrap();
        let failure = vm["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Failure").cloned());
        if let Some(f) = failure {
            assert!(f["message"].as_str().unwrap().contains("cnothere"), "{f}");
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no Failure condition: {vm}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The optional TCP listener speaks TLS with the certificate the node made: no token, no access;
/// the right token works, a wrong one does not; the kubeconfig the node wrote is enough for virtctl.
#[test]
fn tcp_access_needs_the_bearer_token() {
    let state = tempfile::Builder::new().prefix("vn").tempdir_in("/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_file = state.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let sock = state.path().join("node.sock");
    let mut child = Command::new(bin("virt-node"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--socket")
        .arg(&sock)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--token-file")
        .arg(&token_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let kubeconfig = state.path().join("kubeconfig");
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !kubeconfig.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "the TCP listener did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = format!("https://127.0.0.1:{port}");
    let ca = state.path().join("tls/ca.crt");
    let run = |token: Option<&str>| {
        let mut c = Command::new(bin("virtctl"));
        c.args(["--server", &server, "--certificate-authority", ca.to_str().unwrap(), "get", "vm"])
            .env_remove("VIRT_TOKEN")
            .env_remove("KUBECONFIG");
        if let Some(t) = token {
            c.args(["--token", t]);
        }
        c.output().unwrap()
    };
    let none = run(None);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("Unauthorized"), "{none:?}");
    assert_eq!(run(Some("wrong")).status.code(), Some(1));
    let ok = run(Some("s3cret-token"));
    assert!(ok.status.success(), "{ok:?}");
    // The kubeconfig carries the server, the CA and the token.
    let via_kubeconfig = Command::new(bin("virtctl"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "get", "vm"])
        .env_remove("VIRT_TOKEN")
        .env_remove("VIRT_NODE")
        .output()
        .unwrap();
    assert!(via_kubeconfig.status.success(), "{via_kubeconfig:?}");
    // Plain HTTP, or TLS without the node's CA, gets nowhere.
    let plain = Command::new(bin("virtctl"))
        .args(["--server", &format!("http://127.0.0.1:{port}"), "--token", "s3cret-token", "get", "vm"])
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(1), "{plain:?}");
    let untrusted = Command::new(bin("virtctl"))
        .args([
            "--server",
            &server,
            "--certificate-authority",
            state.path().join("tls/tls.crt").to_str().unwrap(),
        ])
        .args(["--token", "s3cret-token", "get", "vm"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&untrusted.stderr).contains("UnknownIssuer"), "{untrusted:?}");
    // Without a token file, a TCP listener is refused at start.
    let refused = Command::new(bin("virt-node"))
        .arg("--state-dir")
        .arg(state.path().join("other"))
        .arg("--socket")
        .arg(state.path().join("other.sock"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("bearer token"), "{refused:?}");
    // A second daemon on the same state directory is refused (its VMs would be run twice).
    let second = Command::new(bin("virt-node"))
        .arg("--state-dir")
        .arg(state.path())
        .arg("--socket")
        .arg(state.path().join("second.sock"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("another virt-node"), "{second:?}");
    let _ = child.kill();
    let _ = child.wait();
}
