//! virt-controller on a real single-node Kubernetes 1.20 (scripts/k8s: etcd, kube-apiserver,
//! controller-manager, scheduler, kubelet, containerd, the CNI bridge), brought up and torn down
//! here: CRDs installed (twice), a KubeVirt conformance VM applied with Debian's kubectl, started,
//! its VMI created and its launcher pod scheduled and Running on the kubelet, then the VM deleted
//! and VMI and pod gone with it. The launcher pod runs the placeholder image
//! (scripts/k8s/placeholder-launcher-image.sh), not the real launcher yet.
//!
//! The first run builds Kubernetes (scripts/k8s/build.sh, 15-30 minutes); later runs reuse the
//! cached binaries and take about a minute.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    out
}

fn ok(cmd: &mut Command) -> String {
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
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
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
struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    controller: Option<Child>,
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        c
    }

    /// `kubectl get ... -o jsonpath=PATH`, or None when the object does not exist.
    fn get(&self, args: &[&str], path: &str) -> Option<String> {
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
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(repo().join("scripts/k8s/down.sh")).arg(&self.dir).status();
    }
}

#[test]
fn a_conformance_vm_gets_a_vmi_and_a_running_launcher_pod_and_cascades_on_delete() {
    let started = Instant::now();
    let repo = repo();
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("launcher.tar");
    ok(Command::new(repo.join("scripts/k8s/placeholder-launcher-image.sh")).arg(&image));
    let dir = std::env::var_os("VIRT_K8S_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/virt-rs-k8s-run".into());
    let kubectl = PathBuf::from(ok(&mut Command::new(repo.join("scripts/kubectl.sh"))));
    let mut cluster =
        Cluster { dir: dir.clone(), kubeconfig: dir.join("admin.kubeconfig"), kubectl, controller: None };
    let up = ok(Command::new(repo.join("scripts/k8s/up.sh"))
        .arg(&dir)
        .env("VIRT_K8S_IMAGES", &image)
        .stderr(Stdio::inherit()));
    assert_eq!(Path::new(up.lines().last().unwrap()), cluster.kubeconfig);
    eprintln!("cluster up in {:?}", started.elapsed());

    // CRDs, twice: the second apply changes nothing and fails nothing.
    let bin = env!("CARGO_BIN_EXE_virt-controller");
    for _ in 0..2 {
        let out = ok(Command::new(bin).arg("install-crds").arg("--kubeconfig").arg(&cluster.kubeconfig));
        assert!(out.contains("virtualmachines.kubevirt.io"), "{out}");
        assert!(out.contains("datavolumes.cdi.kubevirt.io"), "{out}");
    }
    let crds = ok(&mut cluster.kubectl(&["get", "crd", "-o", "name"]));
    assert_eq!(crds.lines().count(), 10, "{crds}");
    ok(&mut cluster.kubectl(&["api-resources", "--api-group=kubevirt.io"]));

    let log = std::fs::File::create(tmp.path().join("controller.log")).unwrap();
    cluster.controller = Some(
        Command::new(bin)
            .args(["run", "--launcher-image", "localhost/virt-launcher-placeholder:1", "--kubeconfig"])
            .arg(&cluster.kubeconfig)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    // A KubeVirt example VM (runStrategy: Halted) in a namespace of the test's own.
    let ns = "virt-rs-e2e";
    ok(&mut cluster.kubectl(&["create", "namespace", ns]));
    let vm_yaml = repo.join("conformance/kubevirt/vm-cirros.yaml");
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", vm_yaml.to_str().unwrap()]));
    wait_for("the Halted VM's printableStatus Stopped", 60, || {
        cluster.get(&["vm", "vm-cirros", "-n", ns], "{.status.printableStatus}").filter(|s| s == "Stopped")
    });
    assert_eq!(
        cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.metadata.name}"),
        None,
        "a Halted VM has no VMI"
    );

    // Start it as virtctl start does for Halted: runStrategy Always.
    ok(&mut cluster.kubectl(&[
        "patch",
        "vm",
        "vm-cirros",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"runStrategy":"Always"}}"#,
    ]));
    let start = Instant::now();
    let vm_uid = cluster.get(&["vm", "vm-cirros", "-n", ns], "{.metadata.uid}").unwrap();
    let owner = wait_for("the VMI", 60, || {
        cluster
            .get(&["vmi", "vm-cirros", "-n", ns], "{.metadata.ownerReferences[0].uid}")
            .filter(|s| !s.is_empty())
    });
    assert_eq!(owner, vm_uid, "the VMI is owned by the VM");
    let pod = wait_for("a Running launcher pod", 120, || {
        cluster
            .get(
                &["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-cirros"],
                "{.items[0].metadata.name} {.items[0].status.phase}",
            )
            .filter(|s| s.ends_with(" Running"))
    });
    let pod = pod.split(' ').next().unwrap().to_string();
    eprintln!("start -> launcher pod Running: {:?}", start.elapsed());
    assert!(pod.starts_with("virt-launcher-vm-cirros-"), "{pod}");
    let labels = cluster.get(&["pod", &pod, "-n", ns], "{.metadata.labels}").unwrap();
    assert!(labels.contains("vm.kubevirt.io/name") && labels.contains("kubevirt.io/created-by"), "{labels}");
    let node = cluster.get(&["pod", &pod, "-n", ns], "{.spec.nodeName}").unwrap();
    assert_eq!(node, "virtrs-node");
    let mem =
        cluster.get(&["pod", &pod, "-n", ns], "{.spec.containers[0].resources.requests.memory}").unwrap();
    assert_eq!(mem, ((128u64 << 20) + (192 << 20) + (8 << 20)).to_string(), "guest memory + overhead");
    let vmi = wait_for("VMI Running with its node", 60, || {
        cluster
            .get(
                &["vmi", "vm-cirros", "-n", ns],
                "{.status.phase} {.status.nodeName} {.metadata.labels.kubevirt\\.io/nodeName}",
            )
            .filter(|s| s.starts_with("Running "))
    });
    assert_eq!(vmi, "Running virtrs-node virtrs-node");
    wait_for("VM printableStatus Running", 60, || {
        cluster.get(&["vm", "vm-cirros", "-n", ns], "{.status.printableStatus}").filter(|s| s == "Running")
    });
    let logs = ok(&mut cluster.kubectl(&["logs", "-n", ns, &pod]));
    assert!(logs.contains("placeholder launcher for virt-rs-e2e/vm-cirros"), "{logs}");

    // Delete the VM: the garbage collector takes the VMI, then its pod.
    let deleted = Instant::now();
    ok(&mut cluster.kubectl(&["delete", "vm", "vm-cirros", "-n", ns, "--wait=false"]));
    wait_for("the VMI to go", 120, || {
        cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.metadata.name}").is_none().then_some(())
    });
    wait_for("the launcher pod to go", 120, || {
        cluster.get(&["pod", &pod, "-n", ns], "{.metadata.name}").is_none().then_some(())
    });

    eprintln!("delete -> VMI and pod gone: {:?}", deleted.elapsed());
    let controller = cluster.controller.as_mut().unwrap();
    assert!(controller.try_wait().unwrap().is_none(), "the controller is still running");
    eprintln!("test done in {:?}", started.elapsed());
}
