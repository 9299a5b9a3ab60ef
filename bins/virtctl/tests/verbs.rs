//! virtctl's verbs against a test double of the node (docs/node-api.md): an axum server on a unix
//! socket in a temporary directory (and on TCP with a bearer token for the token test), which
//! records every request. Checks what virtctl sends (method, path, body), what it prints and its
//! exit codes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

/// One request as the node saw it.
#[derive(Debug, Clone, PartialEq)]
struct Recorded {
    method: String,
    path: String,
    body: Value,
    authorization: Option<String>,
}

#[derive(Default)]
struct Node {
    requests: Vec<Recorded>,
    /// (plural, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    namespaces: BTreeSet<String>,
    /// Bytes received on console websockets.
    console_input: Vec<u8>,
    /// Required on every request when set (the TCP listener).
    token: Option<String>,
    resource_version: u64,
}

type Shared = Arc<Mutex<Node>>;

fn json_response(code: StatusCode, body: Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn status(code: u16, reason: &str, message: String) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
                      "reason": reason, "code": code});
    json_response(StatusCode::from_u16(code).unwrap(), body)
}

fn not_found(plural: &str, name: &str) -> Response {
    status(404, "NotFound", format!("{plural}.kubevirt.io {name:?} not found"))
}

fn authorized(node: &Node, authorization: &Option<String>) -> bool {
    match &node.token {
        Some(t) => authorization.as_deref() == Some(format!("Bearer {t}").as_str()),
        None => true,
    }
}

/// Everything but the console.
async fn handle(State(node): State<Shared>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let authorization = request.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_string());
    let bytes = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    let mut node = node.lock().unwrap();
    node.requests.push(Recorded {
        method: method.to_string(),
        path: path.clone(),
        body: body.clone(),
        authorization: authorization.clone(),
    });
    if !authorized(&node, &authorization) {
        return status(401, "Unauthorized", "Unauthorized".to_string());
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["version"]) => json_response(
            StatusCode::OK,
            json!({"gitVersion": "v0.1.0", "goVersion": "rust", "platform": "linux/amd64", "extra": 1}),
        ),
        (&Method::GET, ["api", "v1", "namespaces"]) => {
            let items: Vec<Value> = node
                .namespaces
                .iter()
                .map(|n| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
                .collect();
            json_response(StatusCode::OK, json!({"kind": "NamespaceList", "items": items}))
        }
        (&Method::POST, ["api", "v1", "namespaces"]) => {
            let name = body["metadata"]["name"].as_str().unwrap().to_string();
            if !node.namespaces.insert(name.clone()) {
                return status(409, "AlreadyExists", format!("namespaces {name:?} already exists"));
            }
            json_response(StatusCode::CREATED, body)
        }
        (&Method::GET, ["api", "v1", "namespaces", name]) => match node.namespaces.contains(*name) {
            true => json_response(
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
            ),
            false => status(404, "NotFound", format!("namespaces {name:?} not found")),
        },
        (&Method::GET, ["apis", "kubevirt.io", "v1", plural]) => list(&node, plural, None),
        (&Method::GET, ["apis", "kubevirt.io", "v1", "namespaces", ns, plural]) => {
            list(&node, plural, Some(ns))
        }
        (&Method::POST, ["apis", "kubevirt.io", "v1", "namespaces", ns, plural]) => {
            if !node.namespaces.contains(*ns) {
                return status(404, "NotFound", format!("namespaces {ns:?} not found"));
            }
            let mut object = body;
            let name = object["metadata"]["name"].as_str().unwrap().to_string();
            let key = (plural.to_string(), ns.to_string(), name.clone());
            if node.objects.contains_key(&key) {
                return status(409, "AlreadyExists", format!("{plural}.kubevirt.io {name:?} already exists"));
            }
            node.resource_version += 1;
            object["metadata"]["namespace"] = json!(ns);
            object["metadata"]["creationTimestamp"] = json!("2024-05-01T12:00:00Z");
            object["metadata"]["resourceVersion"] = json!(node.resource_version.to_string());
            object["status"] = if *plural == "virtualmachines" {
                json!({"printableStatus": "Stopped"})
            } else {
                json!({"phase": "Running", "nodeName": "node1", "interfaces": [{"ipAddress": "10.0.2.15"}],
                       "conditions": [{"type": "Ready", "status": "True"}]})
            };
            node.objects.insert(key, object.clone());
            json_response(StatusCode::CREATED, object)
        }
        (m, ["apis", "kubevirt.io", "v1", "namespaces", ns, plural, name]) => {
            let key = (plural.to_string(), ns.to_string(), name.to_string());
            let Some(existing) = node.objects.get(&key).cloned() else { return not_found(plural, name) };
            match *m {
                Method::GET => json_response(StatusCode::OK, existing),
                Method::DELETE => {
                    node.objects.remove(&key);
                    json_response(StatusCode::OK, json!({"kind": "Status", "status": "Success"}))
                }
                Method::PUT => {
                    let mut object = existing;
                    object["spec"] = body["spec"].clone();
                    object["metadata"]["annotations"] = body["metadata"]["annotations"].clone();
                    node.resource_version += 1;
                    object["metadata"]["resourceVersion"] = json!(node.resource_version.to_string());
                    node.objects.insert(key, object.clone());
                    json_response(StatusCode::OK, object)
                }
                _ => status(405, "MethodNotAllowed", "method not allowed".to_string()),
            }
        }
        (&Method::PUT, ["apis", "subresources.kubevirt.io", "v1", "namespaces", ns, plural, name, sub]) => {
            let key = (plural.to_string(), ns.to_string(), name.to_string());
            let Some(object) = node.objects.get_mut(&key) else { return not_found(plural, name) };
            match *sub {
                "start" if object["status"]["printableStatus"] == "Running" => {
                    status(409, "Conflict", format!("VirtualMachine {name:?} is already running"))
                }
                "start" => {
                    object["status"]["printableStatus"] = json!("Running");
                    StatusCode::ACCEPTED.into_response()
                }
                "stop" => {
                    object["status"]["printableStatus"] = json!("Stopped");
                    StatusCode::ACCEPTED.into_response()
                }
                _ => StatusCode::ACCEPTED.into_response(),
            }
        }
        _ => status(404, "NotFound", "the server could not find the requested resource".to_string()),
    }
}

fn list(node: &Node, plural: &str, ns: Option<&str>) -> Response {
    if let Some(ns) = ns {
        if !node.namespaces.contains(ns) {
            return status(404, "NotFound", format!("namespaces {ns:?} not found"));
        }
    }
    let mut items: Vec<Value> = node
        .objects
        .iter()
        .filter(|((p, n, _), _)| p == plural && ns.is_none_or(|ns| ns == n))
        .map(|(_, v)| v.clone())
        .collect();
    // Like a Kubernetes list, items without apiVersion and kind.
    for item in &mut items {
        let o = item.as_object_mut().unwrap();
        o.remove("apiVersion");
        o.remove("kind");
    }
    let kind = if plural == "virtualmachines" { "VirtualMachineList" } else { "VirtualMachineInstanceList" };
    json_response(StatusCode::OK, json!({"apiVersion": "kubevirt.io/v1", "kind": kind, "items": items}))
}

/// The console: `busy` is taken (409 before the upgrade); `closing` sends its ring buffer and
/// closes; anything else sends its ring buffer, then echoes.
async fn console(
    State(node): State<Shared>,
    UrlPath((ns, name)): UrlPath<(String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    node.lock().unwrap().requests.push(Recorded {
        method: "GET".to_string(),
        path: format!(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console"
        ),
        body: Value::Null,
        authorization: None,
    });
    if name == "busy" {
        return status(
            409,
            "Conflict",
            format!("VirtualMachineInstance {name:?} already has a console session"),
        );
    }
    ws.on_upgrade(move |socket| serve_console(socket, node, name))
}

async fn serve_console(mut socket: WebSocket, node: Shared, name: String) {
    let ring = format!("[    0.000000] Linux version 6.1 ({name})\r\nlogin: ");
    if socket.send(Message::Binary(Bytes::from(ring))).await.is_err() {
        return;
    }
    if name == "closing" {
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Binary(b) => {
                node.lock().unwrap().console_input.extend_from_slice(&b);
                if socket.send(Message::Binary(b)).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            _ => {}
        }
    }
}

struct Fake {
    dir: tempfile::TempDir,
    server: String,
    node: Shared,
    /// Serves until the test ends.
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    /// A node on a unix socket.
    fn start() -> Self {
        Self::start_with(None)
    }

    /// With a token: on TCP, every request must carry it.
    fn start_with(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let node: Shared = Arc::new(Mutex::new(Node {
            namespaces: ["default", "os-images"].into_iter().map(String::from).collect(),
            token: token.map(String::from),
            ..Node::default()
        }));
        let app = Router::new()
            .route(
                "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console",
                get(console),
            )
            .fallback(handle)
            .with_state(node.clone());
        let socket = dir.path().join("node.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let server = if token.is_some() {
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
            let addr = listener.local_addr().unwrap();
            rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("http://{addr}")
        } else {
            let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket) }).unwrap();
            rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("unix://{}", socket.display())
        };
        Self { dir, server, node, _runtime: rt }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_virtctl"));
        c.args(["--server", &self.server]).args(args).env_remove("VIRT_NODE").env_remove("VIRT_TOKEN");
        c
    }

    /// Runs virtctl with `stdin` as its input: (exit code, stdout, stderr).
    fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> (i32, String, String) {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        output(child.wait_with_output().unwrap())
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        output(self.command(args).stdin(Stdio::null()).output().unwrap())
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn requests(&self) -> Vec<Recorded> {
        self.node.lock().unwrap().requests.clone()
    }

    fn take_requests(&self) -> Vec<(String, String, Value)> {
        let mut node = self.node.lock().unwrap();
        node.requests.drain(..).map(|r| (r.method, r.path, r.body)).collect()
    }
}

fn output(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn req(method: &str, path: &str, body: Value) -> (String, String, Value) {
    (method.to_string(), path.to_string(), body)
}

const VM: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: testvm
  labels: {app: demo}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {bus: virtio}
        memory:
          guest: 128Mi
      volumes:
      - name: root
        containerDisk:
          image: quay.io/containerdisks/cirros:0.6
";

const VMI: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: lonely
  namespace: lab
spec:
  domain:
    devices: {}
    memory:
      guest: 64Mi
";

const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const SUB: &str = "/apis/subresources.kubevirt.io/v1/namespaces/default";

#[test]
fn version_prints_the_client_and_the_node() {
    let fake = Fake::start();
    let (code, out, err) = fake.run(&["version"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Client Version: version.Info{GitVersion:\"v"), "{out}");
    assert_eq!(
        lines[1],
        r#"Server Version: version.Info{GitVersion:"v0.1.0", GoVersion:"rust", Platform:"linux/amd64"}"#
    );
    assert_eq!(fake.take_requests(), [req("GET", "/version", Value::Null)]);
}

#[test]
fn create_get_and_apply() {
    let fake = Fake::start();
    let manifest = fake.file(
        "objects.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n---\n{VM}---\n{VMI}"),
    );
    let (code, out, err) = fake.run(&["create", "-f", s(&manifest)]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "namespace/lab created\nvirtualmachine.kubevirt.io/testvm created\n\
         virtualmachineinstance.kubevirt.io/lonely created\n"
    );
    let sent = fake.take_requests();
    assert_eq!(sent.len(), 3);
    assert_eq!(
        sent[0],
        req(
            "POST",
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab"}})
        )
    );
    assert_eq!((sent[1].0.as_str(), sent[1].1.as_str()), ("POST", VMS));
    assert_eq!(sent[1].2["metadata"], json!({"name": "testvm", "labels": {"app": "demo"}}));
    assert_eq!(sent[1].2["spec"]["template"]["spec"]["domain"]["memory"]["guest"], "128Mi");
    assert_eq!(sent[2].1, "/apis/kubevirt.io/v1/namespaces/lab/virtualmachineinstances");

    // Creating again: the node's AlreadyExists for each, exit 1, and every object was tried.
    let (code, out, err) = fake.run(&["create", "-f", s(&manifest)]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.contains("Error: namespaces \"lab\" already exists (AlreadyExists, HTTP 409)"), "{err}");
    assert_eq!(err.lines().count(), 3, "{err}");
    fake.take_requests();

    // Tables.
    let (code, out, err) = fake.run(&["get", "vm"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(lines[0], ["NAME", "AGE", "STATUS", "READY"]);
    assert_eq!((lines[1][0], lines[1][2], lines[1][3]), ("testvm", "Stopped", "False"));
    assert!(lines[1][1].ends_with('d') || lines[1][1].contains('y'), "{out}");
    assert_eq!(fake.take_requests(), [req("GET", VMS, Value::Null)]);

    let (code, out, _) = fake.run(&["get", "vmis", "-A", "-o", "wide"]);
    assert_eq!(code, 0);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        lines[0],
        ["NAMESPACE", "NAME", "AGE", "PHASE", "IP", "NODENAME", "READY", "LIVE-MIGRATABLE", "PAUSED"]
    );
    assert_eq!(
        [lines[1][0], lines[1][1], lines[1][3], lines[1][4], lines[1][5], lines[1][6], lines[1][7]],
        ["lab", "lonely", "Running", "10.0.2.15", "node1", "True", "<none>"]
    );
    assert_eq!(
        fake.take_requests(),
        [req("GET", "/apis/kubevirt.io/v1/virtualmachineinstances", Value::Null)]
    );

    let (code, _, err) = fake.run(&["get", "vmi", "-n", "os-images"]);
    assert_eq!(code, 0);
    assert_eq!(err, "No resources found in os-images namespace.\n");

    // One object as JSON and YAML.
    let (code, out, _) = fake.run(&["get", "virtualmachine", "testvm", "-o", "json"]);
    assert_eq!(code, 0);
    let vm: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (vm["kind"].as_str(), vm["status"]["printableStatus"].as_str()),
        (Some("VirtualMachine"), Some("Stopped"))
    );
    let (code, out, _) = fake.run(&["get", "vm", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("apiVersion: v1\nitems:\n"), "{out}");
    assert!(out.contains("  name: testvm\n") && out.contains("kind: List\n"), "{out}");
    fake.take_requests();

    // Apply: the VM made by create has no last-applied record, so it is configured (PUT, with the
    // resourceVersion read); then it is unchanged; a change configures it again.
    let vm_file = fake.file("vm.yaml", VM);
    let (code, out, err) = fake.run(&["apply", "-f", s(&vm_file)]);
    assert_eq!((code, out.as_str()), (0, "virtualmachine.kubevirt.io/testvm configured\n"), "{err}");
    let sent = fake.take_requests();
    assert_eq!(sent.len(), 2);
    assert_eq!((sent[0].0.as_str(), sent[1].0.as_str()), ("GET", "PUT"));
    assert_eq!(sent[1].1, format!("{VMS}/testvm"));
    assert_eq!(sent[1].2["metadata"]["resourceVersion"], "1");
    let record = sent[1].2["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
        .as_str()
        .unwrap();
    let record: Value = serde_json::from_str(record).unwrap();
    assert_eq!(record["metadata"]["name"], "testvm");

    let (code, out, _) = fake.run(&["apply", "-f", s(&vm_file)]);
    assert_eq!((code, out.as_str()), (0, "virtualmachine.kubevirt.io/testvm unchanged\n"));
    assert_eq!(fake.take_requests().len(), 1);

    let changed = fake.file("vm2.yaml", &VM.replace("guest: 128Mi", "guest: 256Mi"));
    let (code, out, _) = fake.run(&["apply", "-f", s(&changed)]);
    assert_eq!((code, out.as_str()), (0, "virtualmachine.kubevirt.io/testvm configured\n"));
    let sent = fake.take_requests();
    assert_eq!(sent[1].2["spec"]["template"]["spec"]["domain"]["memory"]["guest"], "256Mi");

    // A new object from standard input, in the namespace of -n.
    let (code, out, err) =
        fake.run_with_input(&["apply", "-f", "-", "-n", "lab"], VM.replace("testvm", "fresh").as_bytes());
    assert_eq!((code, out.as_str()), (0, "virtualmachine.kubevirt.io/fresh created\n"), "{err}");
    let sent = fake.take_requests();
    assert_eq!(sent[0], req("GET", "/apis/kubevirt.io/v1/namespaces/lab/virtualmachines/fresh", Value::Null));
    assert_eq!(
        (sent[1].0.as_str(), sent[1].1.as_str()),
        ("POST", "/apis/kubevirt.io/v1/namespaces/lab/virtualmachines")
    );
}

#[test]
fn lifecycle_verbs_send_their_subresource_puts() {
    let fake = Fake::start();
    let vm_file = fake.file("vm.yaml", VM);
    assert_eq!(fake.run(&["create", "-f", s(&vm_file)]).0, 0);
    fake.take_requests();

    let cases: [(&[&str], &str, &str, Value); 8] = [
        (&["start", "testvm"], "VM testvm was scheduled to start", "virtualmachines/testvm/start", json!({})),
        (
            &["stop", "testvm", "--grace-period", "0"],
            "VM testvm was scheduled to stop",
            "virtualmachines/testvm/stop",
            json!({"gracePeriod": 0}),
        ),
        (&["stop", "testvm"], "VM testvm was scheduled to stop", "virtualmachines/testvm/stop", json!({})),
        (
            &["restart", "testvm", "--force"],
            "VM testvm was scheduled to restart",
            "virtualmachines/testvm/restart",
            json!({"gracePeriodSeconds": 0}),
        ),
        (
            &["pause", "vm", "testvm"],
            "VMI testvm was scheduled to pause",
            "virtualmachineinstances/testvm/pause",
            json!({}),
        ),
        (
            &["unpause", "vmi", "testvm"],
            "VMI testvm was scheduled to unpause",
            "virtualmachineinstances/testvm/unpause",
            json!({}),
        ),
        (
            &["soft-reboot", "testvm"],
            "VMI testvm was scheduled to soft-reboot",
            "virtualmachineinstances/testvm/softreboot",
            json!({}),
        ),
        (
            &["stop", "testvm", "--force"],
            "VM testvm was scheduled to stop",
            "virtualmachines/testvm/stop",
            json!({"gracePeriod": 0}),
        ),
    ];
    for (args, printed, path, body) in cases {
        // The paused VMI does not exist in the double: make one so pause/unpause/soft-reboot find it.
        fake.node.lock().unwrap().objects.insert(
            ("virtualmachineinstances".into(), "default".into(), "testvm".into()),
            json!({"metadata": {"name": "testvm"}}),
        );
        let (code, out, err) = fake.run(args);
        assert_eq!((code, out.trim_end()), (0, printed), "{args:?}: {err}");
        assert_eq!(fake.take_requests(), [req("PUT", &format!("{SUB}/{path}"), body)], "{args:?}");
    }

    // Starting a running VM: the node's Conflict, exit 1.
    assert_eq!(fake.run(&["start", "testvm"]).0, 0);
    let (code, out, err) = fake.run(&["start", "testvm"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "Error: VirtualMachine \"testvm\" is already running (Conflict, HTTP 409)\n");
    fake.take_requests();

    let (code, out, err) = fake.run(&["delete", "vm", "testvm"]);
    assert_eq!((code, out.as_str()), (0, "virtualmachine.kubevirt.io \"testvm\" deleted\n"), "{err}");
    assert_eq!(fake.take_requests(), [req("DELETE", &format!("{VMS}/testvm"), Value::Null)]);
}

#[test]
fn not_found_is_exit_1_with_the_node_message() {
    let fake = Fake::start();
    for args in [&["get", "vm", "missing"][..], &["delete", "vmi", "missing"], &["start", "missing"]] {
        let (code, out, err) = fake.run(args);
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert!(err.starts_with("Error: virtualmachine"), "{args:?}: {err}");
        assert!(err.ends_with(" \"missing\" not found (NotFound, HTTP 404)\n"), "{args:?}: {err}");
    }
    let (code, _, err) = fake.run(&["get", "vm", "-n", "nowhere"]);
    assert_eq!(code, 1);
    assert_eq!(err, "Error: namespaces \"nowhere\" not found (NotFound, HTTP 404)\n");
}

#[test]
fn bad_manifests_fail_before_any_request() {
    let fake = Fake::start();
    let cases = [
        (
            VM.replace("guest: 128Mi", "guest: 128Mi\n          gust: 1"),
            "document 1: spec.template.spec.domain.memory.gust: unknown field",
        ),
        (format!("{VM}---\nkind: [\n"), "YAML syntax error"),
        (
            format!("{VM}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n"),
            "document 2: v1 Pod p: not a kind the node creates",
        ),
        (
            VM.replace("name: testvm", "name: testvm\n  namespace: lab"),
            "does not match the namespace \"dev\"",
        ),
        (VM.replace("guest: 128Mi", "guest: lots"), "spec.template.spec.domain.memory.guest"),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = fake.file(&format!("bad{i}.yaml"), text);
        for verb in ["create", "apply"] {
            let (code, out, err) = fake.run(&[verb, "-f", s(&f), "-n", "dev"]);
            assert_eq!((code, out.as_str()), (1, ""), "{verb} {needle}");
            assert!(err.starts_with(&format!("Error: {}: ", s(&f))), "{err}");
            assert!(err.contains(needle), "{verb}: {err}");
        }
    }
    let (code, _, err) = fake.run(&["create", "-f", "/nonexistent/vm.yaml"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("Error: reading /nonexistent/vm.yaml: "), "{err}");
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
}

fn wait_for(child: &mut Child, buf: &Arc<Mutex<Vec<u8>>>, needle: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if buf.lock().unwrap().windows(needle.len()).any(|w| w == needle) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("virtctl exited ({status}) before printing {:?}", String::from_utf8_lossy(needle));
        }
        assert!(
            Instant::now() < deadline,
            "no {:?} in {:?}",
            String::from_utf8_lossy(needle),
            buf.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn collect(mut r: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 1024];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(Instant::now() < deadline, "virtctl did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn console_echoes_until_the_escape_byte() {
    let fake = Fake::start();
    let mut child = fake
        .command(&["console", "testvm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let stderr = collect(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    wait_for(&mut child, &stdout, b"login: ");
    stdin.write_all(b"root\n").unwrap();
    wait_for(&mut child, &stdout, b"login: root\n");
    // Bytes before the escape in the same read are sent; the escape and what follows are not.
    stdin.write_all(b"ls\x1dnot sent").unwrap();
    assert_eq!(wait_exit(&mut child), 0);
    std::thread::sleep(Duration::from_millis(100));
    let err = String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned();
    assert_eq!(err, "Successfully connected to testvm console. The escape sequence is ^]\n");
    let input = fake.node.lock().unwrap().console_input.clone();
    assert!(input == b"root\nls" || input == b"root\n", "{:?}", String::from_utf8_lossy(&input));
    assert_eq!(
        fake.take_requests(),
        [req("GET", &format!("{SUB}/virtualmachineinstances/testvm/console"), Value::Null)]
    );
}

#[test]
fn console_ends_with_its_input_or_when_the_node_closes_it() {
    let fake = Fake::start();
    // End of standard input.
    let (code, out, err) = fake.run_with_input(&["console", "testvm"], b"");
    assert_eq!(code, 0, "{err}");
    assert!(err.starts_with("Successfully connected to testvm console."), "{err}");
    assert!(out.is_empty() || out.starts_with("[    0.000000] Linux"), "{out}");

    // The node closes the console: virtctl ends even though its input stays open.
    let mut child = fake
        .command(&["console", "closing", "-n", "default"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = collect(child.stdout.take().unwrap());
    let _stdin = child.stdin.take().unwrap();
    assert_eq!(wait_exit(&mut child), 0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(&*stdout.lock().unwrap(), b"[    0.000000] Linux version 6.1 (closing)\r\nlogin: ");

    // A second session: the node's 409 before the upgrade.
    let (code, _, err) = fake.run_with_input(&["console", "busy"], b"");
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "Error: VirtualMachineInstance \"busy\" already has a console session (Conflict, HTTP 409)\n"
    );
}

#[test]
fn tcp_requests_carry_the_token() {
    let fake = Fake::start_with(Some("s3cret"));
    let (code, out, err) = fake.run(&["version", "--token", "s3cret"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Server Version"), "{out}");
    let mut c = fake.command(&["get", "vm"]);
    let (code, _, err) = output(c.env("VIRT_TOKEN", "s3cret").output().unwrap());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fake.run(&["get", "vm"]);
    assert_eq!(code, 1);
    assert_eq!(err, "Error: Unauthorized (Unauthorized, HTTP 401)\n");
    let auth: Vec<Option<String>> = fake.requests().into_iter().map(|r| r.authorization).collect();
    assert_eq!(auth, [Some("Bearer s3cret".to_string()), Some("Bearer s3cret".to_string()), None]);
}

#[test]
fn usage_errors_exit_2_and_an_absent_node_exits_1() {
    let fake = Fake::start();
    for args in [
        &["get", "pods"][..],
        &["stop"],
        &["get", "vm", "x", "-A"],
        &["get", "vm", "-o", "table"],
        &["frobnicate"],
        &["pause", "pod", "x"],
        &["stop", "x", "--grace-period", "-1"],
    ] {
        let (code, _, err) = fake.run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
    }
    assert!(fake.requests().is_empty());

    let gone = fake.dir.path().join("gone.sock");
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtctl"));
    c.args(["get", "vm"]).env("VIRT_NODE", format!("unix://{}", gone.display())).env_remove("VIRT_TOKEN");
    let (code, _, err) = output(c.output().unwrap());
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("Error: cannot reach the node at unix://{}", gone.display())), "{err}");
    assert!(err.contains("Start it with `virt-node`"), "{err}");

    let (code, out, _) = fake.run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("Exit status:") && out.contains("2  usage error"), "{out}");
}
