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
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // The node may answer (413) and close before a large body is all sent: keep what it said.
    let _ = s.write_all(head.as_bytes()).and_then(|()| s.write_all(body.as_bytes()));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let out = String::from_utf8_lossy(&raw).into_owned();
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
    n.args = vec!["--host-disk-dir".into(), allowed.display().to_string()];
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

const DVS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes";

fn http_dv(name: &str, url: &str) -> String {
    format!(
        "apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata:
  name: {name}
spec:
  source:
    http:
      url: {url}
  storage:
    resources:
      requests:
        storage: 1Mi
"
    )
}

/// A plain HTTP server on loopback that redirects every request to `to`.
fn redirector(to: String) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn imports_cannot_reach_the_nodes_own_api_or_link_local_addresses() {
    let t = tempfile::Builder::new().prefix("vi").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(t.path().join("token"), "tok\n").unwrap();
    let mut n = NodeProc::start_later(&state);
    n.args = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        t.path().join("token").display().to_string(),
    ];
    n.spawn();
    let api = format!("http://127.0.0.1:{port}/apis/kubevirt.io/v1/namespaces/default/virtualmachines");

    // Literal addresses are refused at admission, naming the field and the way to allow them.
    for (name, url) in [
        ("own-api", api.clone()),
        ("own-api-v6", format!("http://[::1]:{port}/apis")),
        ("own-api-name", format!("http://localhost:{port}/apis")),
        ("metadata", "http://169.254.169.254/latest/meta-data/".to_string()),
    ] {
        let (code, body) = request(&n.socket, "POST", DVS, &http_dv(name, &url));
        assert_eq!(code, 422, "{name}: {body}");
        assert!(body.contains("spec.source.http.url"), "{name}: {body}");
        assert!(body.contains("--import-allow"), "{name}: {body}");
        assert_eq!(request(&n.socket, "GET", &format!("{DVS}/{name}"), "").0, 404, "{name} not stored");
    }

    // A redirect from an ordinary server to the node's API is refused when the importer connects.
    let hop = redirector(api);
    let (code, body) =
        request(&n.socket, "POST", DVS, &http_dv("redirected", &format!("http://127.0.0.1:{hop}/disk.img")));
    assert_eq!(code, 201, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = request(&n.socket, "GET", &format!("{DVS}/redirected"), "");
        if body.contains("it is the node's own API") {
            break;
        }
        assert!(!body.contains("\"Succeeded\""), "the import reached the API: {body}");
        assert!(Instant::now() < deadline, "no refusal reported: {body}\n{}", n.log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // --import-allow lets an address through (the admission check passes).
    n.sigkill();
    n.args.extend(["--import-allow".to_string(), "169.254.169.254".to_string()]);
    n.spawn();
    let (code, body) =
        request(&n.socket, "POST", DVS, &http_dv("allowed", "http://169.254.169.254/latest/meta-data/"));
    assert_eq!(code, 201, "{body}");
}

#[test]
fn hostile_bodies_names_and_urls_are_refused_and_the_node_stays_up() {
    let t = tempfile::Builder::new().prefix("vb").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let n = NodeProc::start(&state, None);
    // A name that would climb out of the volume pool.
    let (code, body) = request(&n.socket, "POST", DVS, &http_dv("../../x", "http://192.0.2.1/x.img"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("metadata.name"), "{body}");
    // Only http(s) imports.
    let (code, body) = request(&n.socket, "POST", DVS, &http_dv("file", "file:///etc/shadow"));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("spec.source.http.url"), "{body}");
    // A YAML alias bomb is cut off by the parser's budget.
    let mut bomb = String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for i in 1..9 {
        let prev = (b'a' + i - 1) as char;
        let cur = (b'a' + i) as char;
        bomb.push_str(&format!(
            "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
    }
    let (code, body) = request(&n.socket, "POST", VMS, &bomb);
    assert_eq!(code, 422, "{body}");
    // Deep nesting in JSON.
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let (code, _) = request(&n.socket, "POST", VMS, &deep);
    assert!(code == 422 || code == 400, "deep JSON: {code}");
    // A 100 MB body.
    let big = "x".repeat(100 << 20);
    let (code, _) = request(&n.socket, "POST", VMS, &big);
    assert_eq!(code, 413);
    // Nothing was stored, and the node still answers.
    assert_eq!(request(&n.socket, "GET", VMS, "").0, 200);
    let (_, list) = request(&n.socket, "GET", DVS, "");
    assert!(!list.contains("\"name\":\"file\""), "{list}");
}

/// One HTTPS request to the node's TCP listener as the holder of `token` (curl, trusting the CA
/// the node made under `<state>/tls/`).
fn tcp_request(
    state: &Path,
    port: u16,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method])
        .arg("--cacert")
        .arg(state.join("tls/ca.crt"))
        .args(["-H", "Content-Type: application/yaml", "--data-binary", "@-"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if method == "GET" {
        cmd.args(["-G"]);
    }
    let mut child = cmd
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if method != "GET" {
        child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn halted_vm(name: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {{}}\n        memory: {{guest: 64Mi}}\n"
    )
}

#[test]
fn tokens_are_scoped_to_roles_and_namespaces_and_every_refusal_is_audited() {
    let t = tempfile::Builder::new().prefix("va").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(t.path().join("token"), "admin-token\n").unwrap();
    std::fs::write(
        t.path().join("users.yaml"),
        "users:\n- {name: alice, token: alice-token, role: edit, namespaces: [dev]}\n- {name: bob, token: bob-token, role: view, namespaces: ['*']}\n",
    )
    .unwrap();
    let mut n = NodeProc::start_later(&state);
    n.args = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        t.path().join("token").display().to_string(),
        "--users-file".into(),
        t.path().join("users.yaml").display().to_string(),
    ];
    n.spawn();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "no TCP listener: {}", n.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let dev = "/apis/kubevirt.io/v1/namespaces/dev/virtualmachines";
    let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: dev}\n";

    // No token, a token in the query string, an unknown token: 401.
    assert_eq!(tcp_request(&state, port, None, "GET", VMS, "").0, 401);
    assert_eq!(tcp_request(&state, port, None, "GET", &format!("{VMS}?access_token=admin-token"), "").0, 401);
    assert_eq!(tcp_request(&state, port, Some("guess"), "GET", VMS, "").0, 401);
    // Namespaces are the admin's; alice (edit in dev) may not make one.
    assert_eq!(tcp_request(&state, port, Some("alice-token"), "POST", "/api/v1/namespaces", ns).0, 403);
    assert_eq!(tcp_request(&state, port, Some("admin-token"), "POST", "/api/v1/namespaces", ns).0, 201);
    // alice edits in dev only.
    assert_eq!(tcp_request(&state, port, Some("alice-token"), "POST", dev, &halted_vm("a1")).0, 201);
    let (code, body) = tcp_request(&state, port, Some("alice-token"), "POST", VMS, &halted_vm("a2"));
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("User \\\"alice\\\" cannot create resource \\\"virtualmachines\\\" in API group \\\"kubevirt.io\\\" in the namespace \\\"default\\\""),
        "{body}"
    );
    assert_eq!(tcp_request(&state, port, Some("alice-token"), "GET", VMS, "").0, 403);
    // bob reads everywhere and changes nothing, not even a console.
    assert_eq!(tcp_request(&state, port, Some("bob-token"), "GET", dev, "").0, 200);
    assert_eq!(
        tcp_request(&state, port, Some("bob-token"), "GET", "/apis/kubevirt.io/v1/virtualmachines", "").0,
        200
    );
    assert_eq!(tcp_request(&state, port, Some("bob-token"), "DELETE", &format!("{dev}/a1"), "").0, 403);
    let console = "/apis/subresources.kubevirt.io/v1/namespaces/dev/virtualmachineinstances/a1/console";
    assert_eq!(tcp_request(&state, port, Some("bob-token"), "GET", console, "").0, 403);
    assert_eq!(
        tcp_request(&state, port, Some("bob-token"), "GET", &format!("{dev}/a1"), "").0,
        200,
        "a1 is still there"
    );

    // Who did what, refusals included.
    let audit = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let lines: Vec<Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |user: &str, verb: &str, code: u64| {
        lines
            .iter()
            .any(|l| l["user"] == user && l["verb"] == verb && l["code"] == code && l["listener"] == "tcp")
    };
    assert!(has("alice", "POST", 201), "{audit}");
    assert!(has("alice", "POST", 403), "{audit}");
    assert!(has("bob", "DELETE", 403), "{audit}");
    assert!(has("admin", "POST", 201), "{audit}");
    assert!(has("anonymous", "GET", 401), "{audit}");
}
