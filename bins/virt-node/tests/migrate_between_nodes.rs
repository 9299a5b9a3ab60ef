//! A live migration between two nodes' runtimes through the migration proxy, with real parts and
//! no cluster: two `LauncherRuntime`s with their own state directories (two nodes' agents), a
//! tiny PVH guest (a dot on COM1 every 2^20 steps) served as a kernel-boot image by a real
//! `docker-registry`, confined launchers on this machine's /dev/kvm, and the proxy's mutual TLS
//! over loopback.
//!
//! Node A runs the VMI. Node B readies the move (`prepare_incoming`: the image pulled into B's
//! own cache, the target spec written) and a target launcher is started on that spec as a
//! launcher pod's entry script starts it; B's proxy expects the migration. A cancel before the
//! target is reached leaves the VM running on A. Then A sends the VM (`migrate_vmi_away`, its
//! stream from `migration_proxy::connect`, retried until the target listens): the guest prints on
//! in B's launcher, B finds it as the VMI's (`reattach`), and A's launcher and run directories
//! are gone.
//!
//! Needs root and /dev/kvm (skipped otherwise, with the reason printed), docker-registry and
//! skopeo (scripts/install-deps.sh installs them).

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/dots.rs"]
mod dots;
#[path = "support/node.rs"]
mod node;
#[path = "../../virt-launcher/tests/support/pvh.rs"]
mod pvh;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dots::{dots, push_guest};
use guest::have;
use node::bin;
use registry::{Registry, RegistryOpts};
use virt_core::lifecycle::{MigrationError, MigrationStep, MigrationTicket, Runtime};
use virt_core::machine::MachineStatus;
use virt_core::model::VirtualMachineInstance;
use virt_k8s::node::migration_proxy::{self, MigrationCa, ProxyListener};
use virt_k8s::node::{LauncherConfig, LauncherRuntime};

const WAIT: Duration = Duration::from_secs(120);

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn runtime(state: &Path, registry: &str) -> LauncherRuntime {
    std::fs::create_dir_all(state).unwrap();
    LauncherRuntime::new(LauncherConfig {
        launcher: bin("virt-launcher"),
        state_dir: state.to_path_buf(),
        allow_emulation: false,
        backend: Some("native".into()),
        insecure_registries: vec![registry.to_string()],
        registry_ca: None,
        start_timeout: Duration::from_secs(60),
        host_disk_dirs: Vec::new(),
        net_policy: None,
        migration: Default::default(),
    })
}

fn vmi(image: &str) -> VirtualMachineInstance {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": { "name": "far", "namespace": "default", "uid": "0b4e7c2a-far" },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "firmware": { "kernelBoot": { "container": { "image": image, "kernelPath": "/boot/vmlinuz" } } },
                "memory": { "guest": "32Mi" },
                "devices": { "autoattachGraphicsDevice": false },
            },
        },
    }))
    .unwrap()
}

fn ticket(uid: &str) -> MigrationTicket {
    MigrationTicket {
        uid: uid.into(),
        name: uid.into(),
        cancel: Arc::new(AtomicBool::new(false)),
        policy: None,
    }
}

/// Starts the target launcher on the spec in `target`, as a launcher pod's entry script does.
fn start_target(target: &Path) -> std::process::Child {
    let log = std::fs::File::create(target.join("launcher.log")).unwrap();
    Command::new(bin("virt-launcher"))
        .arg("--spec")
        .arg(target.join("spec.json"))
        .arg("--run-dir")
        .arg(target)
        .args(["--incoming", "--backend", "native"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

#[test]
fn a_vm_moves_between_two_nodes_runtimes_through_the_migration_proxy() {
    if !node::can_run_confined_with_registry(have) {
        return;
    }
    // The nested /dev/kvm hides vmx from /proc/cpuinfo: the launchers trust it (inherited).
    std::env::set_var("VIRT_LAUNCHER_TRUST_KVM", "true");
    let reg = Registry::start(RegistryOpts::default());
    let image = push_guest(&reg);
    // Short paths: unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vmx").tempdir_in("/tmp").unwrap();
    let a = runtime(&dir.path().join("a"), &reg.host);
    let b = runtime(&dir.path().join("b"), &reg.host);
    let vmi = vmi(&image);

    let machine = a.launch(&vmi).unwrap();
    let source = a.run_dir(&vmi);
    wait_for("dots on node A", || dots(&source) > 3);

    // The two agents' TLS, from one migration CA; node B's proxy on loopback.
    let ca = MigrationCa::generate().unwrap();
    let tls_a = ca.issue("node-a").unwrap().tls().unwrap();
    let tls_b = ca.issue("node-b").unwrap().tls().unwrap();
    let proxy = ProxyListener::bind("127.0.0.1:0".parse().unwrap(), &tls_b).unwrap();
    let addr = proxy.local_addr();

    // A cancel while the target is not reached (B has not readied anything): A's VM runs on.
    let cancelled = ticket("mig-cancelled");
    let flag = cancelled.cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        flag.store(true, Ordering::SeqCst);
    });
    let connect = || migration_proxy::connect(addr, &tls_a, "mig-cancelled");
    let e = a.migrate_vmi_away(&vmi, &cancelled, "nowhere", &connect, &|_| {}).unwrap_err();
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
    assert_eq!(machine.status(), MachineStatus::Running);
    let before = dots(&source);
    wait_for("dots on node A after the cancel", || dots(&source) > before);

    // Node B readies the move: the image pulled into its own cache, the spec written.
    let uid = "mig-1";
    let target = b.prepare_incoming(&vmi, uid, &Default::default(), false).unwrap();
    assert!(target.starts_with(dir.path().join("b")), "{}", target.display());
    let spec = std::fs::read_to_string(target.join("spec.json")).unwrap();
    assert!(spec.contains(dir.path().join("b").to_str().unwrap()), "B's own paths: {spec}");
    assert!(!spec.contains(dir.path().join("a").to_str().unwrap()), "none of A's: {spec}");
    let _route = proxy.expect(uid, target.join("migrate.sock")).unwrap();
    // The target launcher starts a moment later (a pod's script polls for the spec): the source
    // tries again until it listens.
    let t2 = target.clone();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        start_target(&t2)
    });
    let steps = Mutex::new(Vec::new());
    let step = |s: MigrationStep| steps.lock().unwrap().push(format!("{s:?}"));
    let connect = || migration_proxy::connect(addr, &tls_a, uid);
    let t = Instant::now();
    let moved = a.migrate_vmi_away(&vmi, &ticket(uid), "target-b", &connect, &step).unwrap();
    let wall = t.elapsed();
    let mut target_launcher = starter.join().unwrap();
    eprintln!(
        "between nodes through the proxy: total {:.1} ms, downtime {:.1} ms, wall {wall:?} (incl. waiting for the target)",
        moved.report.total_us as f64 / 1000.0,
        moved.report.downtime_us as f64 / 1000.0
    );
    let steps = steps.into_inner().unwrap();
    assert!(steps[0].starts_with("TargetReady") && steps[1].starts_with("Running"), "{steps:?}");

    // The guest prints on in B's launcher; B finds it as the VMI's.
    let on_b = b.reattach(&vmi).expect("node B finds the moved VM");
    assert_eq!(on_b.status(), MachineStatus::Running);
    assert_eq!(b.run_dir(&vmi), target);
    let first = dots(&target);
    wait_for("dots on node B", || dots(&target) > first + 2);
    // A's launcher ended and A keeps nothing of the VMI.
    wait_for("node A's run directory to go", || !a.base_dir(&vmi).exists());
    assert!(a.reattach(&vmi).is_none());

    on_b.stop().ok();
    let t = Instant::now();
    while matches!(target_launcher.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = target_launcher.kill();
    let _ = target_launcher.wait();
}
