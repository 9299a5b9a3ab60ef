//! `virtctl port-forward`, `--stdio`, `ssh` and `scp` end to end with real parts: the node's own
//! API router (virt-k8s `node::api`) on a unix socket, with a lifecycle whose VMI runs on a
//! test-double machine; the real `NetnsDialer`; a network namespace made by the test holding the
//! "guest" address 10.0.2.2 on its loopback, a python3 TCP/UDP echo server and Debian's sshd
//! in it (scripts/install-deps.sh installs openssh-server and openssh-client). Needs root.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_core::lifecycle::{Lifecycle, LifecycleOptions, MemStore, Runtime};
use virt_core::machine::accel::{AccelDecision, Accelerator};
use virt_core::machine::{Machine, MachineError, MachineEvent, MachineExit, MachineStatus};
use virt_core::model::{self, VirtualMachineInstance};
use virt_k8s::node::api::{self, ApiState};
use virt_k8s::node::portforward::PortForwarding;
use virt_k8s::node::{LauncherConfig, LauncherRuntime};
use virt_net::dial::NetnsDialer;
use virt_net::endpoint::VmiEndpoint;
use virt_net::lookup::EndpointTable;

const ECHO_PORT: u16 = 7000;
const UDP_PORT: u16 = 7001;
const SSH_PORT: u16 = 22;
static SEQ: AtomicUsize = AtomicUsize::new(0);

// ---- the test double machine: always running ----

struct Up;

impl Machine for Up {
    fn status(&self) -> MachineStatus {
        MachineStatus::Running
    }
    fn pause(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn resume(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn power_down(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn reset(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn stop(&self) -> Result<(), MachineError> {
        Ok(())
    }
    fn console_input(&self, _bytes: &[u8]) -> Result<(), MachineError> {
        Ok(())
    }
    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
        std::thread::sleep(timeout.unwrap_or(Duration::from_millis(10)).min(Duration::from_millis(10)));
        None
    }
    fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
        std::thread::sleep(timeout.min(Duration::from_millis(10)));
        None
    }
    fn accelerator(&self) -> AccelDecision {
        AccelDecision { accelerator: Accelerator::Emulation, reason: "test".into() }
    }
}

struct UpRuntime;

impl Runtime for UpRuntime {
    fn launch(
        &self,
        _vmi: &VirtualMachineInstance,
    ) -> Result<Arc<dyn Machine>, virt_core::lifecycle::LaunchError> {
        Ok(Arc::new(Up))
    }
    fn reattach(&self, _vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        None
    }
    fn last_exit(&self, _vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        None
    }
    fn cleanup(&self, _vmi: &VirtualMachineInstance) {}
}

// ---- the network namespace with the "guest" ----

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (iproute2)");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A network namespace holding 10.0.2.2 (on its loopback) and the servers started in it; all
/// removed on drop.
struct Guest {
    ns: String,
    servers: Vec<Child>,
}

impl Guest {
    fn new() -> Self {
        let ns = format!("vpf-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::SeqCst));
        ip(&["netns", "add", &ns]);
        let g = Self { ns, servers: Vec::new() };
        ip(&["-n", &g.ns, "link", "set", "lo", "up"]);
        // The guest's address on the namespace's loopback (this kernel has no dummy interfaces).
        ip(&["-n", &g.ns, "addr", "add", "10.0.2.2/32", "dev", "lo"]);
        g
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.ns))
    }

    fn spawn(&mut self, program: &str, args: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        self.servers.push(child);
    }

    /// Waits until something listens on TCP `port` inside the namespace.
    fn wait_listening(&self, port: u16) {
        let start = Instant::now();
        loop {
            let out = Command::new("ip").args(["netns", "exec", &self.ns, "ss", "-ltnH"]).output().unwrap();
            if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port} ")) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "nothing listens on {port} in {}", self.ns);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A TCP echo server that echoes until the client's half-close, then half-closes; and a UDP echo.
const ECHO: &str = r#"
import socket, sys, threading
def tcp(c):
    while True:
        d = c.recv(65536)
        if not d:
            break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR)
    c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("10.0.2.2", int(sys.argv[2])))
    while True:
        d, a = u.recvfrom(65536)
        u.sendto(b"udp:" + d, a)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.0.2.2", int(sys.argv[1])))
s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=tcp, args=(c,), daemon=True).start()
"#;

// ---- the node ----

struct Node {
    dir: tempfile::TempDir,
    socket: PathBuf,
    table: Arc<EndpointTable>,
    _rt: tokio::runtime::Runtime,
}

fn vmi(name: &str) -> VirtualMachineInstance {
    model::from_yaml(&format!(
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata:\n  name: {name}\nspec:\n  domain:\n    devices: {{}}\n    memory:\n      guest: 64Mi\n"
    ))
    .unwrap()
}

impl Node {
    /// A node with running VMIs `vm1` (reachable through the table once registered) and `nonet`
    /// (never registered), and a stopped VM `halted`; its keepalive is long enough for bulk transfers
    /// on a loaded machine (a ping waits behind the megabytes the client has yet to drain).
    fn start() -> Self {
        Self::with_keepalive(Duration::from_secs(5))
    }

    /// [`Node::start`] pinging every `keepalive`, for the tests of the keepalive itself.
    fn with_keepalive(keepalive: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lifecycle = Arc::new(
            Lifecycle::new(Arc::new(MemStore::default()), Arc::new(UpRuntime), LifecycleOptions::default())
                .unwrap(),
        );
        for name in ["vm1", "nonet"] {
            lifecycle.vmis().create("default", vmi(name)).unwrap();
        }
        let off: virt_core::model::VirtualMachine = model::from_yaml(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: halted\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {}\n        memory:\n          guest: 64Mi\n",
        )
        .unwrap();
        lifecycle.vms().create("default", off).unwrap();
        for _ in 0..4 {
            lifecycle.reconcile();
        }
        let runtime = Arc::new(LauncherRuntime::new(LauncherConfig {
            launcher: PathBuf::from("/nonexistent/virt-launcher"),
            state_dir: dir.path().to_path_buf(),
            allow_emulation: false,
            backend: None,
            insecure_registries: Vec::new(),
            registry_ca: None,
            start_timeout: Duration::from_secs(1),
            host_disk_dirs: Vec::new(),
            net_policy: None,
            migration: Default::default(),
        }));
        let table = Arc::new(EndpointTable::new());
        let portforward = PortForwarding {
            endpoints: table.clone(),
            dialer: Arc::new(NetnsDialer::new(Duration::from_secs(5))),
            keepalive,
        };
        let state = ApiState { lifecycle, runtime, portforward, node_name: "test-node".into() };
        let socket = dir.path().join("node.sock");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = rt.block_on(async { tokio::net::UnixListener::bind(&socket) }).unwrap();
        rt.spawn(async move {
            let _ = axum::serve(listener, api::router(state)).await;
        });
        Self { dir, socket, table, _rt: rt }
    }

    fn register(&self, guest: &Guest) {
        let ep = VmiEndpoint {
            netns: Some(guest.path()),
            guest_ipv4: Some([10, 0, 2, 2].into()),
            guest_ipv6: None,
        };
        self.table.insert("default", "vm1", ep);
    }

    fn virtctl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_virtctl"));
        c.arg("--server").arg(format!("unix://{}", self.socket.display())).args(args);
        c.env_remove("KUBECONFIG").env_remove("VIRT_NODE").env_remove("VIRT_TOKEN");
        c
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.virtctl(args).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A running `virtctl port-forward`, killed on drop.
struct Forward {
    child: Child,
    ports: Vec<u16>,
}

impl Forward {
    fn start(node: &Node, args: &[&str], count: usize) -> Self {
        let mut child = node.virtctl(args).stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut ports = Vec::new();
        while ports.len() < count {
            let mut line = String::new();
            assert!(out.read_line(&mut line).unwrap() > 0, "port-forward ended before listening");
            // "Forwarding from 127.0.0.1:PORT -> REMOTE"
            let addr = line.split_whitespace().nth(2).unwrap();
            ports.push(addr.rsplit(':').next().unwrap().parse().unwrap());
        }
        Self { child, ports }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Sends `data`, half-closes, reads the echo to its end.
fn echo_roundtrip(port: u16, data: &[u8]) -> Vec<u8> {
    echo_roundtrip_after(port, data, Duration::ZERO)
}

/// [`echo_roundtrip`] whose reader starts only after `stall` (the echo backs up meanwhile).
fn echo_roundtrip_after(port: u16, data: &[u8], stall: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut writer = s.try_clone().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    std::thread::sleep(stall);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    w.join().unwrap();
    got
}

fn guest_with_echo() -> Guest {
    let mut g = Guest::new();
    g.spawn("python3", &["-c", ECHO, &ECHO_PORT.to_string(), &UDP_PORT.to_string()]);
    g.wait_listening(ECHO_PORT);
    g
}

/// The echo guest and a node reaching it as `vm1`.
fn echo_node() -> (Guest, Node) {
    echo_node_with(Node::start)
}

/// [`echo_node`] with a node from `start`.
fn echo_node_with(start: impl FnOnce() -> Node) -> (Guest, Node) {
    let guest = guest_with_echo();
    let node = start();
    node.register(&guest);
    (guest, node)
}

/// [`echo_node`] and `virtctl port-forward vmi/vm1 0:7000`.
fn echo_forward() -> (Guest, Node, Forward) {
    echo_forward_with(Node::start)
}

/// [`echo_forward`] with a node from `start`.
fn echo_forward_with(start: impl FnOnce() -> Node) -> (Guest, Node, Forward) {
    let (guest, node) = echo_node_with(start);
    let fwd = Forward::start(&node, &["port-forward", "vmi/vm1", &format!("0:{ECHO_PORT}")], 1);
    (guest, node, fwd)
}

#[test]
fn forwards_tcp_both_ways_concurrently_with_large_transfers_and_half_close() {
    let (_guest, node, fwd) = echo_forward();
    let port = fwd.ports[0];

    // A small exchange, then the answer after the half-close.
    assert_eq!(echo_roundtrip(port, b"hello guest"), b"hello guest");

    // Eight concurrent connections, 4 MiB each, each a different pattern.
    let workers: Vec<_> = (0..8u8)
        .map(|i| {
            std::thread::spawn(move || {
                let data = pattern(4 << 20, i);
                let got = echo_roundtrip(port, &data);
                assert_eq!(got.len(), data.len(), "connection {i}: length");
                assert!(got == data, "connection {i}: bytes differ");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }

    // The VM form of the path reaches the same guest (a VMI without a VM is refused as a VM).
    let (code, _, err) = node.run(&["port-forward", "vm/nonexistent", "0:7000"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn a_reader_that_stalls_for_many_keepalive_intervals_loses_nothing() {
    // The node's keepalive is 200 ms: the local reader stalls for ten intervals while the guest's
    // echo backs up through every buffer (the node blocked writing to the guest and sending to
    // virtctl). A stall of the node's own making is not the client's silence; before this was
    // told apart, missed pings were counted in a burst and the session cut mid-transfer.
    let (_guest, _node, fwd) = echo_forward_with(|| Node::with_keepalive(Duration::from_millis(200)));
    let data = pattern(8 << 20, 5);
    let got = echo_roundtrip_after(fwd.ports[0], &data, Duration::from_secs(2));
    assert_eq!(got.len(), data.len(), "echoed length after the stall");
    assert!(got == data, "echoed bytes differ after the stall");
}

#[test]
fn a_client_that_never_answers_pings_is_cut_off() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use virt_k8s::client::portforward::{Protocol, Target};
    use virt_k8s::client::{AsyncNodeClient, Endpoint};

    let (_guest, node) = echo_node_with(|| Node::with_keepalive(Duration::from_millis(200)));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = AsyncNodeClient::new(Endpoint::Unix(node.socket.clone()), None);
        let target: Target = "vmi/vm1".parse().unwrap();
        let mut ws = client.port_forward_socket(&target, "default", ECHO_PORT, Protocol::Tcp).await.unwrap();
        // Not reading means not answering the node's pings (tungstenite answers them on read).
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            let mut pings = 0;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    // The node's Close, or the socket it already closed (answering the first
                    // ping then fails with a broken pipe).
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return pings,
                    Some(Ok(other)) => panic!("unexpected message {other:?}"),
                }
            }
        })
        .await
        .expect("the node ends a session whose client stays silent for three keepalive intervals");
        assert!(ended >= 1, "the node ended the session without pinging");
    });
}

#[test]
fn stdio_and_udp() {
    let (_guest, node) = echo_node();

    let mut child = node
        .virtctl(&["port-forward", "--stdio=true", "vmi/vm1/default", &ECHO_PORT.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let data = pattern(1 << 20, 7);
    let mut stdin = child.stdin.take().unwrap();
    let d = data.clone();
    let w = std::thread::spawn(move || {
        stdin.write_all(&d).unwrap();
        // Closing standard input half-closes the guest's connection; the echo still comes back.
    });
    let mut got = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert!(got == data, "stdio echo differs ({} of {} bytes)", got.len(), data.len());
    assert!(child.wait().unwrap().success());

    let fwd = Forward::start(&node, &["port-forward", "vmi/vm1", &format!("udp/0:{UDP_PORT}")], 1);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 64];
    let mut answered = None;
    for _ in 0..20 {
        sock.send_to(b"ping", ("127.0.0.1", fwd.ports[0])).unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            answered = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(answered.as_deref(), Some(&b"udp:ping"[..]));
}

#[test]
fn bad_input_and_unreachable_vmis_are_clear_errors() {
    let node = Node::start();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["port-forward", "vm/vm1", "70000"], 2, "remote port \"70000\": expected a number from 1 to 65535"),
        (&["port-forward", "vm/vm1", "8080:0"], 2, "remote port \"0\""),
        (&["port-forward", "pod/x", "22"], 2, "unknown type \"pod\""),
        (&["port-forward", "vm1", "22"], 2, "TYPE/NAME"),
        (&["port-forward", "vmi/vm1", "sctp/22"], 2, "tcp or udp"),
        (&["port-forward", "--stdio", "vmi/vm1", "22", "23"], 1, "--stdio forwards exactly one port"),
        (
            &["port-forward", "vmi/missing", "22"],
            1,
            "virtualmachineinstances.kubevirt.io \"missing\" not found",
        ),
        (&["port-forward", "vm/halted", "22"], 1, "VirtualMachine default/halted is not running"),
        (&["port-forward", "--stdio", "vmi/missing", "22"], 1, "\"missing\" not found"),
        (&["port-forward", "--stdio", "vmi/nonet", "22"], 1, "has no network the node can reach"),
        (&["ssh", "@vmi/vm1"], 2, "user name before '@'"),
        (&["ssh", "root@vmi"], 2, "target \"vmi\""),
    ];
    for (args, want_code, want) in cases {
        let (code, _, err) = node.run(args);
        assert_eq!(code, *want_code, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // A VMI whose guest port is closed: the node's 503 names the address and the namespace.
    let guest = Guest::new();
    node.register(&guest);
    let (code, _, err) = node.run(&["port-forward", "--stdio", "vmi/vm1", "9"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("10.0.2.2:9") && err.contains(&guest.ns) && err.contains("refused"), "{err}");
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client: scripts/install-deps.sh)");
    assert!(st.success());
}

#[test]
fn ssh_and_scp_reach_a_real_sshd_through_the_proxy_command() {
    let sshd = Path::new("/usr/sbin/sshd");
    assert!(sshd.exists(), "/usr/sbin/sshd is missing: run scripts/install-deps.sh (openssh-server)");
    let node = Node::start();
    let mut guest = Guest::new();
    node.register(&guest);
    let keys = node.dir.path().join("ssh");
    std::fs::create_dir_all(&keys).unwrap();
    keygen(&keys.join("host"));
    keygen(&keys.join("user"));
    std::fs::copy(keys.join("user.pub"), keys.join("authorized_keys")).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let user = user.trim().to_string();
    guest.spawn(
        sshd.to_str().unwrap(),
        &[
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-o",
            &format!("HostKey={}", keys.join("host").display()),
            "-o",
            &format!("AuthorizedKeysFile={}", keys.join("authorized_keys").display()),
            "-o",
            "ListenAddress=10.0.2.2",
            "-o",
            "PidFile=none",
            "-o",
            "StrictModes=no",
            "-o",
            "UsePAM=no",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "Subsystem=sftp internal-sftp",
        ],
    );
    guest.wait_listening(SSH_PORT);
    let id = keys.join("user");
    let known = keys.join("known_hosts");
    let ssh_opts = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "-i".into(),
            id.display().to_string(),
            "--known-hosts".into(),
            known.display().to_string(),
            "-t".into(),
            "-o StrictHostKeyChecking=accept-new".into(),
            "-t".into(),
            "-o BatchMode=yes".into(),
            "-t".into(),
            "-o HashKnownHosts=no".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let target = format!("{user}@vmi/vm1");
    let mut args = vec!["ssh".to_string(), target.clone()];
    args.extend(ssh_opts(&["--", "echo", "hello-from \"$SSH_CONNECTION\""]));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = node.run(&argv);
    assert_eq!(code, 0, "ssh: {err}");
    assert!(
        out.starts_with("hello-from ") && out.trim_end().ends_with("10.0.2.2 22"),
        "ssh output: {out:?} {err}"
    );
    let known_text = std::fs::read_to_string(&known).unwrap();
    assert!(known_text.contains("vmi.vm1.default"), "host key recorded under its alias: {known_text}");

    // The command's exit status comes back.
    let mut args = vec!["ssh".to_string(), "--username".into(), user.clone(), "vmi/vm1/default".into()];
    args.extend(ssh_opts(&["--command", "exit 7"]));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = node.run(&argv);
    assert_eq!(code, 7, "{err}");

    // scp both ways.
    let local = node.dir.path().join("payload.bin");
    let data = pattern(300_000, 3);
    std::fs::write(&local, &data).unwrap();
    let remote = node.dir.path().join("copied.bin");
    let mut args =
        vec!["scp".to_string(), local.display().to_string(), format!("{user}@vmi/vm1:{}", remote.display())];
    args.extend(ssh_opts(&[]));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = node.run(&argv);
    assert_eq!(code, 0, "scp to: {err}");
    assert!(std::fs::read(&remote).unwrap() == data);
    let back = node.dir.path().join("back.bin");
    let mut args =
        vec!["scp".to_string(), format!("{user}@vmi/vm1:{}", remote.display()), back.display().to_string()];
    args.extend(ssh_opts(&[]));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = node.run(&argv);
    assert_eq!(code, 0, "scp from: {err}");
    assert!(std::fs::read(&back).unwrap() == data);
}
