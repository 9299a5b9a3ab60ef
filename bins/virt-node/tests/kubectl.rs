//! Debian's `kubectl` 1.20 (package `kubernetes-client`, unpacked into the project cache by
//! `scripts/kubectl.sh`) against a real `virt-node` through the kubeconfig the node writes (TLS
//! with the node's own CA, bearer token):
//!
//! - `apply -f` of KubeVirt's and CDI's example manifests (`conformance/`), `get -o yaml` of them;
//! - `get vm` / `get vmi` / `get dv` with KubeVirt's printer columns (server-side Table);
//! - `get vm -w` showing the phases of a start that `patch --type merge` of `runStrategy` caused;
//! - label selectors, `patch --type json`;
//! - an unknown field refused with its path (top level by kubectl's OpenAPI validation, nested by the
//!   node's strict decoder);
//! - `delete` of a running VM taking its VMI with it, and of a VM taking the DataVolume its
//!   `dataVolumeTemplates` made (ownerReferences, background propagation);
//! - `virtctl` through the same kubeconfig: `apply`/`delete -f` of CDI's kinds.
//!
//! The VM that starts has one blank host disk (no guest OS: SeaBIOS finds nothing to boot), so its
//! start is QEMU's, under software emulation, without any image to fetch.

#[path = "support/node.rs"]
mod node;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use node::NodeProc;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Debian's kubectl, fetched by the project's script (never skipped: the script fails loudly).
fn kubectl_binary() -> PathBuf {
    let out = Command::new("bash").arg(workspace_root().join("scripts/kubectl.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/kubectl.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    let v = Command::new(&path).args(["version", "--client", "--short"]).output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("v1.20."), "not kubectl 1.20: {v:?}");
    path
}

struct Kubectl {
    bin: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--request-timeout", "60s"])
            .args(args)
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs kubectl, insisting on success; returns stdout.
    fn ok(&self, args: &[&str], node: &NodeProc) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "kubectl {args:?} failed ({}): {}{}\nnode log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            node.log()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts a long-running kubectl (`get -w`); its output lines arrive on the receiver.
    fn stream(&self, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
        let mut child = self.command(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

/// The table's header and the row of `name`, split into columns.
fn row(table: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("").split_whitespace().map(str::to_string).collect();
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
        .split_whitespace()
        .map(str::to_string)
        .collect();
    (header, row)
}

fn blank_vm(state: &Path, name: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels:
    app: kubectl-test
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices:
          disks:
          - name: scratch
            disk:
              bus: virtio
        memory:
          guest: 64Mi
      terminationGracePeriodSeconds: 0
      volumes:
      - name: scratch
        hostDisk:
          path: {}
          type: DiskOrCreate
          capacity: 16Mi
",
        state.join("disks").join(format!("{name}.img")).display()
    )
}

#[test]
fn debian_kubectl_drives_the_node_through_its_kubeconfig() {
    let bin = kubectl_binary();
    let state = tempfile::Builder::new().prefix("vk").tempdir_in("/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token_file = state.path().join("token");
    std::fs::write(&token_file, "kubectl-test-token\n").unwrap();
    let listen = format!("127.0.0.1:{port}");
    std::fs::create_dir(state.path().join("s")).unwrap();
    // The VMs' scratch disks are hostDisks, allowed only under this directory.
    let disks = state.path().join("disks");
    std::fs::create_dir(&disks).unwrap();
    let node = NodeProc::start_with(
        &state.path().join("s"),
        None,
        &[
            "--listen",
            &listen,
            "--token-file",
            token_file.to_str().unwrap(),
            "--node-name",
            "kubectl-node",
            "--host-disk-dir",
            disks.to_str().unwrap(),
        ],
    );
    let kubeconfig = node.state.join("kubeconfig");
    let t = Instant::now();
    while !kubeconfig.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "no kubeconfig: {}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = Kubectl { bin, home: state.path().to_path_buf(), kubeconfig };

    // The context is named for the node; discovery knows KubeVirt's and CDI's kinds and short names.
    assert_eq!(k.ok(&["config", "current-context"], &node).trim(), "kubectl-node");
    let resources = k.ok(&["api-resources"], &node);
    for needle in ["virtualmachines", "vm,vms", "datavolumes", "dv,dvs", "virtualmachineinstancetypes"] {
        assert!(resources.contains(needle), "{needle} missing from:\n{resources}");
    }

    // apply -f of the example manifests, then get -o yaml of each.
    let conf = workspace_root().join("conformance");
    let files = [
        ("kubevirt/csmall.yaml", "virtualmachineinstancetype.instancetype.kubevirt.io/csmall created"),
        (
            "kubevirt/cluster-csmall.yaml",
            "virtualmachineclusterinstancetype.instancetype.kubevirt.io/cluster-csmall created",
        ),
        ("kubevirt/vm-cirros.yaml", "virtualmachine.kubevirt.io/vm-cirros created"),
        ("kubevirt/vm-cirros-csmall.yaml", "virtualmachine.kubevirt.io/vm-cirros-csmall created"),
        ("cdi/blank-image-datavolume.yaml", "datavolume.cdi.kubevirt.io/blank-image-datavolume created"),
    ];
    for (file, want) in files {
        let path = conf.join(file);
        let out = k.ok(&["apply", "-f", path.to_str().unwrap()], &node);
        assert!(out.contains(want), "apply {file}: {out}");
        let yaml = k.ok(&["get", "-f", path.to_str().unwrap(), "-o", "yaml"], &node);
        let name = want.split('/').nth(1).unwrap().trim_end_matches(" created");
        assert!(
            yaml.contains(&format!("name: {name}")) && yaml.contains("resourceVersion:"),
            "{file}:\n{yaml}"
        );
        assert!(yaml.contains("kubectl.kubernetes.io/last-applied-configuration"), "{file}:\n{yaml}");
        // Applying again changes nothing.
        let again = k.ok(&["apply", "-f", path.to_str().unwrap()], &node);
        assert!(again.contains("unchanged") || again.contains("configured"), "re-apply {file}: {again}");
    }
    let dvs = k.ok(&["get", "dv"], &node);
    let (header, _) = row(&dvs, "blank-image-datavolume");
    assert_eq!(header, ["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"], "{dvs}");

    // A VM of our own, listed with KubeVirt's columns and selectable by label.
    let vm_file = state.path().join("blank.yaml");
    std::fs::write(&vm_file, blank_vm(state.path(), "blank")).unwrap();
    k.ok(&["apply", "-f", vm_file.to_str().unwrap()], &node);
    let vms = k.ok(&["get", "vm"], &node);
    let (header, blank) = row(&vms, "blank");
    assert_eq!(header, ["NAME", "AGE", "STATUS", "READY"], "{vms}");
    assert_eq!(blank[2..], ["Stopped", "False"], "{vms}");
    let selected = k.ok(&["get", "vms", "-l", "app=kubectl-test", "-o", "name"], &node);
    assert_eq!(selected.trim(), "virtualmachine.kubevirt.io/blank");
    let by_name = k.ok(&["get", "vm", "--field-selector", "metadata.name=vm-cirros", "-o", "name"], &node);
    assert_eq!(by_name.trim(), "virtualmachine.kubevirt.io/vm-cirros");

    // get -w sees the start that a merge patch of runStrategy causes.
    let (mut watch, rx) = k.stream(&["get", "vm", "blank", "-w"]);
    let first = rx.recv_timeout(Duration::from_secs(60)).expect("get -w printed nothing");
    assert!(first.starts_with("NAME"), "{first}");
    let initial = rx.recv_timeout(Duration::from_secs(60)).expect("get -w printed no row");
    assert!(initial.contains("Stopped"), "{initial}");
    let patched = k.ok(
        &["patch", "vm", "blank", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Always"}}"#],
        &node,
    );
    assert!(patched.contains("virtualmachine.kubevirt.io/blank patched"), "{patched}");
    let mut seen = vec![initial];
    let t = Instant::now();
    // Running and Ready may come in one change or two; wait for both.
    let running_ready = |l: &String| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.get(2) == Some(&"Running") && cols.get(3) == Some(&"True")
    };
    while !seen.last().is_some_and(running_ready) {
        let left = Duration::from_secs(180).saturating_sub(t.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("get -w never showed Running and Ready: {seen:?}\n{}", node.log()),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    // The start's phases, in order: Stopped first, then (possibly Provisioning/Starting) Running.
    assert!(seen.len() >= 2 && seen[0].contains("Stopped"), "{seen:?}");

    // Secrets (like every stored kind) are watched from the store's change log.
    let (mut watch, rx) = k.stream(&["get", "secrets", "-w", "-o", "name"]);
    let made = k.ok(&["create", "secret", "generic", "watched", "--from-literal=k=v"], &node);
    assert!(made.contains("secret/watched created"), "{made}");
    let mut events = Vec::new();
    while !events.iter().any(|l: &String| l.trim() == "secret/watched") {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => events.push(line),
            Err(_) => panic!("get secrets -w never showed the new Secret: {events:?}\n{}", node.log()),
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();

    let vmis = k.ok(&["get", "vmi"], &node);
    let (header, vmi) = row(&vmis, "blank");
    assert_eq!(header, ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"], "{vmis}");
    assert!(vmi.contains(&"Running".to_string()) && vmi.contains(&"kubectl-node".to_string()), "{vmis}");

    // JSON patch.
    let jp = r#"[{"op":"add","path":"/metadata/labels/tier","value":"test"}]"#;
    k.ok(&["patch", "vm", "blank", "--type", "json", "-p", jp], &node);
    assert_eq!(
        k.ok(&["get", "vm", "-l", "tier=test", "-o", "name"], &node).trim(),
        "virtualmachine.kubevirt.io/blank"
    );

    // Unknown fields are refused with their paths: at the top level by kubectl's validation
    // against the node's OpenAPI document, deeper by the node.
    let top = state.path().join("top.yaml");
    std::fs::write(
        &top,
        blank_vm(state.path(), "top").replace("spec:\n  runStrategy", "bogus: 1\nspec:\n  runStrategy"),
    )
    .unwrap();
    let o = k.run(&["apply", "-f", top.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(r#"unknown field "bogus""#), "{o:?}");
    let nested = state.path().join("nested.yaml");
    std::fs::write(
        &nested,
        blank_vm(state.path(), "nested").replace("guest: 64Mi", "guest: 64Mi\n          bogus: 1"),
    )
    .unwrap();
    let o = k.run(&["apply", "-f", nested.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains(r#"The VirtualMachine "nested" is invalid"#)
            && err.contains("spec.template.spec.domain.memory.bogus"),
        "{o:?}"
    );

    // Deleting the running VM takes its VMI with it (kubectl waits until it is gone).
    let deleted = k.ok(&["delete", "vm", "blank"], &node);
    assert!(deleted.contains(r#"virtualmachine.kubevirt.io "blank" deleted"#), "{deleted}");
    let t = Instant::now();
    loop {
        let o = k.run(&["get", "vmi", "blank"]);
        if String::from_utf8_lossy(&o.stderr).contains("NotFound") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the VMI outlived its VM: {o:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let gone = k.run(&["get", "vm", "blank"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains(r#"virtualmachines.kubevirt.io "blank" not found"#),
        "{gone:?}"
    );

    // A VM's dataVolumeTemplates make DataVolumes it owns; deleting the VM deletes them.
    let owner = state.path().join("owner.yaml");
    std::fs::write(&owner, OWNER_VM).unwrap();
    k.ok(&["apply", "-f", owner.to_str().unwrap()], &node);
    let until = |what: &str, done: &dyn Fn() -> bool| {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(120), "{what}\n{}", node.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    until("the template's DataVolume was never made", &|| {
        k.run(&["get", "dv", "owner-disk"]).status.success()
    });
    let dv = k.ok(&["get", "dv", "owner-disk", "-o", "yaml"], &node);
    assert!(dv.contains("kind: VirtualMachine") && dv.contains("name: owner"), "{dv}");
    k.ok(&["delete", "vm", "owner"], &node);
    until("the owned DataVolume outlived its VM", &|| {
        String::from_utf8_lossy(&k.run(&["get", "dv", "owner-disk"]).stderr).contains("NotFound")
    });
}

const OWNER_VM: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: owner
spec:
  runStrategy: Halted
  dataVolumeTemplates:
  - metadata:
      name: owner-disk
    spec:
      source:
        blank: {}
      storage:
        resources:
          requests:
            storage: 16Mi
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk:
              bus: virtio
        memory:
          guest: 64Mi
      volumes:
      - name: root
        dataVolume:
          name: owner-disk
";
