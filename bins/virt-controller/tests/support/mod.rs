//! The cluster the tests and the benchmark share: the launcher image, a docker-registry serving the
//! test kernel as a kernel-boot image, the cluster from scripts/k8s (torn down on drop), and the
//! components started as host processes.

#![allow(dead_code)]

#[path = "../../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "../../../../virt-storage/tests/support/registry.rs"]
mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use registry::{Comp, Entry, OciLayout, Registry, RegistryOpts};

pub mod between_nodes;
#[path = "../../../virt-node/tests/support/console_session.rs"]
pub mod console_session;
pub mod datavolume;
pub mod migration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Polls `f` until it returns Some, or panics after `secs` with `what`.
pub fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The cluster, torn down on drop (also when the test fails).
pub struct Cluster {
    /// One cluster per machine (fixed paths and ports): held from before up.sh until after
    /// down.sh, so a second test process (CI beside a developer's run) waits instead of tearing
    /// this one down.
    _machine_lock: std::fs::File,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub controller: Option<Child>,
    /// The second virt-controller replica (waits for the Lease).
    pub standby: Option<Child>,
    pub handler: Option<Child>,
    /// The kubelet [`Cluster::restart_kubelet`] started (down.sh stops it; reaped on drop).
    pub kubelet: Option<Child>,
    /// virt-handler's state directory (run directories, image cache), removed at the end.
    pub node_state: PathBuf,
    /// The host's address on the node's veth (the API server reaches the host there).
    pub host_ip: String,
    /// The kernel-boot image in the registry.
    pub kernel_image: String,
    /// Serves the kernel-boot image (dropped after the cluster is down).
    pub reg: Registry,
    /// Logs and files of the run.
    pub tmp: tempfile::TempDir,
    /// The local provisioner's directory (virt-controller's and virt-handler's
    /// `--local-storage-dir`), removed at the end.
    pub storage_dir: PathBuf,
    /// An HTTP server in the node's network namespace (DataVolume sources), killed on drop.
    pub http: Option<Child>,
    /// The second node, virtrs-node2 (started with [`Cluster::start_nodes`]`(_, 2)`).
    pub node2: Option<Node2>,
}

/// The second node's name (up.sh with VIRT_K8S_NODES=2).
pub const NODE2: &str = "virtrs-node2";
/// The taint node2 registers with (NoSchedule): only pods tolerating it land there.
pub const NODE2_TAINT: &str = "virt-rs.io/second-node";

/// virtrs-node2, a simulated second machine (scripts/k8s/node2.sh): its own network namespace,
/// kubelet and containerd, and its own mount namespace, in which the cluster's `node_state` and
/// `storage_dir` paths (the launcher pods' hostPath volumes, virt-handler's directories) are
/// node2's own directories, like on another machine. A node agent runs "on node2" in that mount
/// namespace and the host's network namespace (scripts/k8s/on-node.sh).
pub struct Node2 {
    /// The process holding node2's mount namespace (`nsenter --mount=/proc/PID/ns/mnt`).
    pub mnt_pid: u32,
    /// What node2 sees at [`Cluster::node_state`], as the host sees it.
    pub node_state: PathBuf,
    /// What node2 sees at [`Cluster::storage_dir`], as the host sees it.
    pub storage_dir: PathBuf,
    /// node2's virt-handler ([`Cluster::spawn_handler_node2`]), killed on drop.
    pub handler: Option<Child>,
}

impl Node2 {
    /// kubelet2's device-plugins directory as node2 sees it (a 1.20 kubelet hard-codes it; in
    /// node2's mount namespace it is node2's own directory).
    pub fn device_plugins_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/kubelet/device-plugins")
    }
}

impl Cluster {
    /// The kubelet's device-plugins directory: a 1.20 kubelet uses /var/lib/kubelet/device-plugins
    /// whatever its `--root-dir` (up.sh's is `<dir>/kubelet/root`).
    pub fn device_plugins_dir(&self) -> PathBuf {
        PathBuf::from("/var/lib/kubelet/device-plugins")
    }

    /// Restarts the kubelet as up.sh started it (same command line, in the node's network
    /// namespace; its pid recorded for down.sh). A starting kubelet removes the device plugins'
    /// sockets.
    pub fn restart_kubelet(&mut self) {
        let pid_file = self.dir.join("pids/kubelet");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert!(args[0].ends_with("kubelet"), "{args:?}");
        ok(Command::new("kill").arg(pid.to_string()));
        wait_for("the kubelet to exit", 60, || (!Path::new(&format!("/proc/{pid}")).exists()).then_some(()));
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("logs/kubelet.log")).unwrap();
        let child = Command::new("setsid")
            .arg("nsenter")
            .arg("--net=/run/netns/virtrs-k8s")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        std::fs::write(&pid_file, child.id().to_string()).unwrap();
        self.kubelet = Some(child);
    }

    pub fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c
    }

    /// `kubectl get ... -o jsonpath=PATH`, or None when the object does not exist.
    pub fn get(&self, args: &[&str], path: &str) -> Option<String> {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        let jp = format!("jsonpath={path}");
        a.extend_from_slice(&["-o", &jp]);
        let out = run(&mut self.kubectl(&a));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let handler2 = self.node2.as_mut().and_then(|n| n.handler.take());
        for mut c in
            [self.controller.take(), self.standby.take(), self.handler.take(), handler2, self.http.take()]
                .into_iter()
                .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(repo().join("scripts/k8s/down.sh")).arg(&self.dir).status();
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        let _ = std::fs::remove_dir_all(&self.node_state);
        let _ = std::fs::remove_dir_all(&self.storage_dir);
    }
}

/// A binary of this workspace from the target directory the test runs from.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let p = exe.parent().and_then(Path::parent).unwrap().join(name);
    assert!(
        p.is_file(),
        "{} not built: run `cargo build --workspace` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Pushes the test kernel and initramfs as a kernel-boot container image; returns its reference.
pub fn push_kernel_image(reg: &Registry) -> String {
    let a = guest::assets();
    let mut layout = OciLayout::new();
    let layer = registry::tar_of(&[
        Entry::Dir("boot/"),
        Entry::File("boot/vmlinuz", std::fs::read(&a["KERNEL"]).unwrap()),
        Entry::File("boot/initrd.img", std::fs::read(&a["INITRAMFS"]).unwrap()),
    ]);
    let desc = layout.image(&[(layer, Comp::Gzip)], "amd64");
    layout.tag("v1", &desc);
    layout.write_index();
    reg.push(&layout, "v1", "kubevirt/demo-kernel", &[]);
    format!("{}/kubevirt/demo-kernel:v1", reg.host)
}

/// Attaches `virtctl --kubeconfig KC console` until `marker` shows, then leaves with ^]; returns
/// what it saw.
pub fn console_until(virtctl: &Path, kubeconfig: &Path, ns: &str, name: &str, marker: &str) -> String {
    use std::io::{Read, Write};
    let mut child = Command::new(virtctl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["console", name, "-n", ns])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
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
        if t.elapsed() > Duration::from_secs(60) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "console of {name} never showed {marker:?}; saw:\n{}\n{err}",
                String::from_utf8_lossy(&seen)
            );
        }
    }
    child.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "virtctl console did not end cleanly on ^]: {status}");
    String::from_utf8_lossy(&seen).into_owned()
}

/// A VM that boots the kernel-boot image (the smallest real guest of the project's tests).
pub fn kernel_vm_yaml(name: &str, image: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        firmware:
          kernelBoot:
            container:
              image: {image}
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
            kernelArgs: console=ttyS0 panic=-1
        devices: {{}}
        memory:
          guest: 256Mi
      terminationGracePeriodSeconds: 10
"
    )
}

/// The user data of [`kernel_vm_net_yaml`]'s guest: it asks DHCP on its NIC (udhcpc reports the
/// lease without configuring: the script is `true`), sets that address, pings the pod network's
/// gateway through the masquerade, and serves a page on port 8080.
const NET_USER_DATA: &str = "#!/bin/sh
ip link set eth0 up
udhcpc -i eth0 -n -q -t 10 -T 2 -s /bin/true 2>&1 | grep -o 'lease of [0-9.]* obtained' | sed 's/^/VIRT-NET: /'
ip addr add 10.0.2.2/24 dev eth0
ip route add default via 10.0.2.1
ping -c 2 -W 5 10.244.0.1 >/dev/null 2>&1 && echo 'VIRT-NET: ping 10.244.0.1 ok'
mkdir -p /www && echo guest-says-hello > /www/index.html && httpd -p 8080 -h /www && echo 'VIRT-NET: httpd up'
";

/// [`kernel_vm_yaml`] with a masquerade interface on the pod network and [`NET_USER_DATA`] in a
/// NoCloud seed.
pub fn kernel_vm_net_yaml(name: &str, image: &str) -> String {
    let indented: String = NET_USER_DATA.lines().map(|l| format!("              {l}\n")).collect();
    kernel_vm_yaml(name, image).replace(
        "        devices: {}\n",
        "        devices:\n          interfaces:\n          - name: default\n            masquerade: {}\n",
    ) + &format!(
        "      networks:\n      - name: default\n        pod: {{}}\n      volumes:\n      - name: cloudinit\n        \
         cloudInitNoCloud:\n          userData: |\n{indented}"
    )
}

impl Cluster {
    /// Builds the launcher image, starts the registry and the cluster (`audit`: the API server's
    /// audit log, VIRT_K8S_AUDIT=1) with the nodes VIRT_K8S_NODES asks for (default 1).
    pub fn start(audit: bool) -> Cluster {
        let nodes = match std::env::var("VIRT_K8S_NODES").as_deref() {
            Ok("2") => 2,
            Ok("1") | Err(_) => 1,
            Ok(n) => panic!("VIRT_K8S_NODES: {n:?} is not 1 or 2"),
        };
        Cluster::start_nodes(audit, nodes)
    }

    /// [`Cluster::start`] with `nodes` nodes (1 or 2; see [`Node2`]).
    pub fn start_nodes(audit: bool, nodes: u8) -> Cluster {
        assert!(nodes == 1 || nodes == 2, "nodes: {nodes} is not 1 or 2");
        let machine_lock = std::fs::File::create("/run/lock/virt-rs-k8s-cluster.lock").unwrap();
        eprintln!("cluster: waiting for /run/lock/virt-rs-k8s-cluster.lock (one cluster per machine)");
        machine_lock.lock().unwrap();
        let repo = repo();
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("launcher.tar");
        ok(Command::new(repo.join("scripts/k8s/launcher-image.sh"))
            .arg(&image)
            .arg(workspace_bin("virt-launcher")));
        let importer = tmp.path().join("importer.tar");
        ok(Command::new(repo.join("scripts/k8s/importer-image.sh"))
            .arg(&importer)
            .arg(env!("CARGO_BIN_EXE_virt-importer")));
        let reg = Registry::start(RegistryOpts::default());
        let kernel_image = push_kernel_image(&reg);
        let dir = std::env::var_os("VIRT_K8S_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/tmp/virt-rs-k8s-run".into());
        let kubectl = PathBuf::from(ok(&mut Command::new(repo.join("scripts/kubectl.sh"))));
        // Short: the launcher's and QEMU's unix sockets live in run directories below it.
        let node_state = PathBuf::from("/var/tmp/vrs-h");
        let _ = std::fs::remove_dir_all(&node_state);
        let storage_dir = PathBuf::from("/var/tmp/vrs-storage");
        let _ = std::fs::remove_dir_all(&storage_dir);
        let host_ip =
            format!("{}.254", std::env::var("VIRT_K8S_NODE_NET").unwrap_or_else(|_| "172.31.254".into()));
        let mut cluster = Cluster {
            _machine_lock: machine_lock,
            dir: dir.clone(),
            kubeconfig: dir.join("admin.kubeconfig"),
            kubectl,
            controller: None,
            standby: None,
            handler: None,
            kubelet: None,
            node_state,
            host_ip,
            kernel_image,
            reg,
            tmp,
            storage_dir,
            http: None,
            node2: None,
        };
        // node2's own directories behind the same paths (below the state dir: down.sh removes them).
        let node2_state = dir.join("node2/vrs-h");
        let node2_storage = dir.join("node2/vrs-storage");
        let binds = format!(
            "{}:{} {}:{}",
            cluster.node_state.display(),
            node2_state.display(),
            cluster.storage_dir.display(),
            node2_storage.display()
        );
        let up = ok(Command::new(repo.join("scripts/k8s/up.sh"))
            .arg(&dir)
            .env("VIRT_K8S_IMAGES", format!("{} {}", image.display(), importer.display()))
            .env("VIRT_K8S_AUDIT", if audit { "1" } else { "0" })
            .env("VIRT_K8S_NODES", nodes.to_string())
            .env("VIRT_K8S_NODE2_BINDS", binds)
            .stderr(Stdio::inherit()));
        assert_eq!(Path::new(up.lines().last().unwrap()), cluster.kubeconfig);
        if nodes == 2 {
            let pid = std::fs::read_to_string(dir.join("node2/mnt-pid")).unwrap();
            cluster.node2 = Some(Node2 {
                mnt_pid: pid.trim().parse().unwrap(),
                node_state: node2_state,
                storage_dir: node2_storage,
                handler: None,
            });
        }
        cluster
    }

    /// The host side of node2's veth (scripts/k8s/node2.sh: `VIRT_K8S_NODE2_NET`.254).
    pub fn node2_host_ip(&self) -> String {
        format!("{}.254", std::env::var("VIRT_K8S_NODE2_NET").unwrap_or_else(|_| "172.31.253".into()))
    }

    /// The second node (panics when the cluster has none).
    pub fn node2(&self) -> &Node2 {
        self.node2.as_ref().expect("the cluster has no second node: Cluster::start_nodes(_, 2)")
    }

    /// `program` "on node2": in node2's mount namespace and the host's network namespace
    /// (scripts/k8s/on-node.sh).
    pub fn on_node2(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let _ = self.node2();
        let mut c = Command::new(repo().join("scripts/k8s/on-node.sh"));
        c.arg(&self.dir).arg("node2").arg(program);
        c
    }

    /// `virt-controller install-crds`; returns its output.
    pub fn install_crds(&self) -> String {
        ok(Command::new(env!("CARGO_BIN_EXE_virt-controller"))
            .arg("install-crds")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig))
    }

    /// virt-controller replica `n` (log: `controller-N.log` in `tmp`).
    pub fn spawn_controller(&self, n: u32) -> Child {
        let log = std::fs::File::create(self.tmp.path().join(format!("controller-{n}.log"))).unwrap();
        Command::new(env!("CARGO_BIN_EXE_virt-controller"))
            // Unprivileged launcher pods: /dev/kvm and /dev/net/tun from virt-handler's device plugins.
            .args([
                "run",
                "--launcher-image",
                "localhost/virt-launcher:dev",
                "--kvm",
                "device-plugin",
                "--kubeconfig",
            ])
            .arg(&self.kubeconfig)
            .arg("--node-state-dir")
            .arg(&self.node_state)
            .args(["--importer-image", "localhost/virt-importer:dev", "--local-storage-dir"])
            .arg(&self.storage_dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// virt-handler run `n` (log: `handler-N.log` in `tmp`), serving the aggregated subresources
    /// API on the host side of the node's veth.
    pub fn spawn_handler(&self, n: u32) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_virt-handler"));
        cmd.arg("--subresources-listen").arg(format!("{}:0", self.host_ip));
        self.spawn_agent(
            cmd,
            "virtrs-node",
            &self.host_ip,
            &self.device_plugins_dir(),
            &format!("handler-{n}.log"),
        )
    }

    /// virt-handler `cmd` for `node`: the cluster's state and storage paths, the migration proxy
    /// (and the subresources for other agents) on `ip`, `plugins` for its device plugins; logging
    /// to `log` in `tmp`.
    fn spawn_agent(&self, mut cmd: Command, node: &str, ip: &str, plugins: &Path, log: &str) -> Child {
        let log = std::fs::File::create(self.tmp.path().join(log)).unwrap();
        cmd.args(["--node", node, "--allow-emulation", "--insecure-registry", &self.reg.host])
            .arg("--state-dir")
            .arg(&self.node_state)
            .arg("--migration-listen")
            .arg(format!("{ip}:0"))
            .arg("--device-plugins-dir")
            .arg(plugins)
            .arg("--local-storage-dir")
            .arg(&self.storage_dir)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// node2's virt-handler run `n` (log: `handler2-N.log` in `tmp`), on node2 ([`Cluster::on_node2`]):
    /// the same state and storage paths as node 1's (node2's directories there), kubelet2's device
    /// plugins, no subresources API (node 1's handler serves the aggregated API).
    pub fn spawn_handler_node2(&self, n: u32) -> Child {
        let cmd = self.on_node2(env!("CARGO_BIN_EXE_virt-handler"));
        let plugins = self.node2().device_plugins_dir();
        self.spawn_agent(cmd, NODE2, &self.node2_host_ip(), &plugins, &format!("handler2-{n}.log"))
    }
}
