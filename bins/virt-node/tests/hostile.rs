//! The node against a hostile client (issue: least privilege and hostile input): requests that
//! try to reach host files or local services through the node are refused with the field's path,
//! and nothing outside the state directory is read, written or created.

#[path = "support/node.rs"]
mod node;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use node::NodeProc;
use serde_json::Value;

/// One HTTP/1.1 request over the node's unix socket: the status code and the body.
fn request(socket: &Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

fn host_disk_vm(name: &str, path: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          disks:
          - name: host
            disk: {{bus: virtio}}
        memory:
          guest: 64Mi
      volumes:
      - name: host
        hostDisk:
          path: {path}
          type: Disk
"
    )
}

#[test]
fn host_disk_is_refused_unless_allowed_and_never_escapes_its_directories() {
    let t = tempfile::Builder::new().prefix("vh").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    let allowed = t.path().join("disks");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&state).unwrap();
    let secret = t.path().join("secret");
    std::fs::write(&secret, b"host secret").unwrap();

    // hostDisk is off by default, as KubeVirt's HostDisk feature gate: /etc/shadow is refused
    // at admission, by field, and nothing is stored.
    let mut n = NodeProc::start(&state, None);
    let (code, body) = request(&n.socket, "POST", VMS, &host_disk_vm("shadow", "/etc/shadow"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.template.spec.volumes[0].hostDisk"), "{body}");
    assert!(body.contains("hostDisk is not enabled on this node"), "{body}");
    assert_eq!(request(&n.socket, "GET", &format!("{VMS}/shadow"), "").0, 404);

    // Allowed under one directory: paths outside it (or climbing out of it) stay refused.
    n.sigkill();
    n.extra = vec!["--host-disk-dir".into(), allowed.display().to_string()];
    n.spawn();
    let (code, body) = request(&n.socket, "POST", VMS, &host_disk_vm("shadow", "/etc/shadow"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.template.spec.volumes[0].hostDisk.path"), "{body}");
    assert!(body.contains("is outside the directories this node allows for hostDisk"), "{body}");
    let climbing = format!("{}/../secret", allowed.display());
    let (code, body) = request(&n.socket, "POST", VMS, &host_disk_vm("climb", &climbing));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("must not contain '..' components"), "{body}");

    // A symlink inside the allowed directory that leads outside passes admission (it is only a
    // name) but the VMI fails at launch naming where it leads; no launcher opens the file.
    std::os::unix::fs::symlink(&secret, allowed.join("link.img")).unwrap();
    let link = allowed.join("link.img").display().to_string();
    let (code, body) = request(&n.socket, "POST", VMS, &host_disk_vm("escape", &link));
    assert_eq!(code, 201, "{body}");
    let vmi = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances/escape";
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let (code, body) = request(&n.socket, "GET", vmi, "");
        if code == 200 {
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["status"]["phase"] == "Failed" {
                break v["status"].clone();
            }
        }
        assert!(Instant::now() < deadline, "the VMI did not fail: {body}\n{}", n.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = status.to_string();
    assert!(text.contains("outside the directories allowed for hostDisk"), "{text}");
    assert!(text.contains(&secret.display().to_string()), "names where the link leads: {text}");
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");

    // A directory inside the state directory (or / itself) is refused as --host-disk-dir.
    n.sigkill();
    for bad in [state.join("volumes"), "/".into()] {
        std::fs::create_dir_all(&bad).unwrap();
        let o = std::process::Command::new(node::bin("virt-node"))
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(t.path().join("other.sock"))
            .arg("--host-disk-dir")
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--host-disk-dir") && err.contains("state directory"), "{err}");
    }
}
