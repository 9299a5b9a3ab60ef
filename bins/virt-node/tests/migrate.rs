//! Live migration through the node (docs/migration.md), with real parts: a `virt-node` daemon
//! with the native backend, a tiny hand-written PVH guest (a dot on COM1 every 2^20 steps) served
//! as a kernel-boot container image by a real `docker-registry`, confined launchers on this
//! machine's /dev/kvm, `virtctl migrate` / `migrate-cancel`, and Debian's kubectl through the
//! node's kubeconfig.
//!
//! The node's launcher is a wrapper around `virt-launcher` that holds a target (`--incoming`)
//! launcher while a file exists: the migration then waits in `Scheduling`, where a second
//! migration of the VMI is refused and `migrate-cancel` aborts it with the source running on.
//! Then the VM moves: the VMI stays Running, the guest prints on in a new launcher process, the
//! old one is gone, and `status.migrationState` says completed with a downtime. A MigrationPolicy
//! applied with kubectl then sets the next migration's bandwidth and timeout.
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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dots::{dots, push_guest};
use guest::have;
use node::{bin, NodeProc};
use registry::{Registry, RegistryOpts};
use serde_json::Value;

const VMI: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: mover
  labels:
    migration: fast
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

const WAIT: Duration = Duration::from_secs(120);

fn wait_for(what: &str, node: &NodeProc, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}\nnode log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn json(node: &NodeProc, args: &[&str]) -> Value {
    serde_json::from_str(&node.ok(args)).unwrap()
}

fn vmi(node: &NodeProc) -> Value {
    json(node, &["get", "vmi", "mover", "-o", "json"])
}

/// The migration `name` as the node serves it (`GET` over its socket), if it exists.
fn vmim(node: &NodeProc, name: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&node.socket).unwrap();
    write!(
        s,
        "GET /apis/kubevirt.io/v1/namespaces/default/virtualmachineinstancemigrations/{name} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let ok = out.split_whitespace().nth(1) == Some("200");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    // A chunked body: the JSON object is between the first '{' and the last '}'.
    let (a, b) = (body.find('{')?, body.rfind('}')?);
    ok.then(|| serde_json::from_str(&body[a..=b]).unwrap())
}

fn pid(run_dir: &Path) -> i32 {
    std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap().trim().parse().unwrap()
}

fn alive(pid: i32) -> bool {
    // A zombie keeps its /proc entry but loses its namespace links.
    std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok()
}

/// The run directory of the launcher running the VM (the node's pointer after a migration).
fn active_dir(state: &Path, uid: &str) -> PathBuf {
    let base = state.join("vmis").join(uid);
    match std::fs::read_to_string(base.join("active-launcher")) {
        Ok(name) => state.join("vmis").join(name.trim()),
        Err(_) => base,
    }
}

fn more_dots(node: &NodeProc, dir: &Path, than: usize) {
    wait_for(&format!("more than {than} dots in {}", dir.display()), node, || dots(dir) > than);
}

/// A launcher that holds `--incoming` launchers while `hold` exists.
fn held_launcher(dir: &Path, hold: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join("launcher.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" --incoming \"*) while [ -e '{}' ]; do sleep 0.05; done;; esac\nexec '{}' \"$@\"\n",
            hold.display(),
            bin("virt-launcher").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Two MigrationPolicies: `fast-movers` matches the VMI's label, `a-slow` (first by name) does not.
const POLICIES: &str = "apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: fast-movers
spec:
  bandwidthPerMigration: 128Mi
  completionTimeoutPerGiB: 300
  allowAutoConverge: true
  selectors:
    virtualMachineInstanceSelector:
      migration: fast
---
apiVersion: migrations.kubevirt.io/v1alpha1
kind: MigrationPolicy
metadata:
  name: a-slow
spec:
  bandwidthPerMigration: 1Mi
  selectors:
    virtualMachineInstanceSelector:
      migration: slow
";

fn kubectl(state: &Path, home: &Path, args: &[&str]) -> String {
    let o = kubectl_output(state, home, args);
    assert!(o.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn kubectl_output(state: &Path, home: &Path, args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash").arg(root.join("scripts/kubectl.sh")).output().unwrap();
    assert!(out.status.success(), "scripts/kubectl.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    let k = String::from_utf8(out.stdout).unwrap();
    Command::new(k.trim())
        .args(["--request-timeout", "60s"])
        .args(args)
        .env("HOME", home)
        .env("KUBECONFIG", state.join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_vmi_migrates_into_a_fresh_launcher_cancel_and_refusal() {
    if !node::can_run_confined_with_registry(have) {
        return;
    }
    let reg = Registry::start(RegistryOpts::default());
    let image = push_guest(&reg);
    // Short path: unix socket paths are limited to 107 bytes.
    let dir = tempfile::Builder::new().prefix("vmg").tempdir_in("/tmp").unwrap();
    let hold = dir.path().join("hold");
    let state = dir.path().join("s");
    std::fs::create_dir(&state).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let token = dir.path().join("token");
    std::fs::write(&token, "migrate-test-token\n").unwrap();
    let mut node = NodeProc::start_later(&state);
    node.registry = Some(reg.host.clone());
    node.args = [
        "--backend",
        "native",
        "--listen",
        &listen,
        "--token-file",
        token.to_str().unwrap(),
        "--migration-bandwidth",
        "64Mi",
        "--migration-progress-timeout",
        "90",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    node.launcher = Some(held_launcher(dir.path(), &hold));
    // The nested /dev/kvm hides vmx from /proc/cpuinfo: the launchers trust it (inherited).
    std::env::set_var("VIRT_LAUNCHER_TRUST_KVM", "true");
    node.spawn();

    let f = dir.path().join("vmi.yaml");
    std::fs::write(&f, VMI.replace("IMAGE", &image)).unwrap();
    node.ok(&["create", "-f", f.to_str().unwrap()]);
    wait_for("the VMI to run", &node, || {
        let v = vmi(&node);
        assert_ne!(v["status"]["phase"], "Failed", "{v}");
        v["status"]["phase"] == "Running"
    });
    let uid = vmi(&node)["metadata"]["uid"].as_str().unwrap().to_string();
    // No interface holds it to its launcher: the VMI says it can move (KubeVirt's condition).
    let v = vmi(&node);
    let conditions = v["status"]["conditions"].as_array().cloned().unwrap_or_default();
    assert!(conditions.iter().any(|c| c["type"] == "LiveMigratable" && c["status"] == "True"), "{v}");
    let first = active_dir(&state, &uid);
    more_dots(&node, &first, 2);
    let first_pid = pid(&first);

    // 1. Held in Scheduling: a second migration is refused; the cancel leaves the source running.
    std::fs::write(&hold, "").unwrap();
    let out = node.ok(&["migrate", "mover"]);
    assert!(out.contains("VM mover was scheduled to migrate"), "{out}");
    let held = out
        .lines()
        .nth(1)
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    wait_for("the held migration to schedule", &node, || {
        vmim(&node, &held).is_some_and(|m| m["status"]["phase"] == "Scheduling")
    });
    let second = node.virtctl(&["migrate", "mover"]);
    assert_eq!(second.status.code(), Some(1), "a second migration must be refused");
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in-flight migration detected") && err.contains(&held), "{err}");
    let out = node.ok(&["migrate-cancel", "mover"]);
    assert!(out.contains("VM mover was scheduled to migrate-cancel"), "{out}");
    wait_for("the cancelled migration to go", &node, || vmim(&node, &held).is_none());
    let v = vmi(&node);
    let ms = &v["status"]["migrationState"];
    assert_eq!(v["status"]["phase"], "Running", "{v}");
    assert_eq!(ms["failed"], true, "{ms}");
    assert_eq!(ms["abortStatus"], "Succeeded", "{ms}");
    assert_eq!(active_dir(&state, &uid), first, "the VM stays in its launcher");
    assert!(alive(first_pid));
    let n = dots(&first);
    more_dots(&node, &first, n);
    let e = node.virtctl(&["migrate-cancel", "mover"]);
    assert_eq!(e.status.code(), Some(1), "nothing left to cancel");
    assert!(String::from_utf8_lossy(&e.stderr).contains("Found no migration to cancel for mover"));

    // 2. The VM moves into a fresh launcher (the aborted migration does not block the retry).
    std::fs::remove_file(&hold).unwrap();
    let out = node.ok(&["migrate", "mover", "--wait", "--timeout", "120"]);
    eprintln!("{out}");
    assert!(out.contains("Succeeded") && out.contains("downtime"), "{out}");
    let v = vmi(&node);
    assert_eq!(v["status"]["phase"], "Running", "{v}");
    let ms = &v["status"]["migrationState"];
    assert_eq!(ms["completed"], true, "{ms}");
    assert_eq!(ms["failed"], false, "{ms}");
    assert_eq!(ms["sourceNode"], ms["targetNode"], "{ms}");
    assert!(ms["startTimestamp"].is_string() && ms["endTimestamp"].is_string(), "{ms}");
    // The node's settings, as KubeVirt reports them (bandwidth as given, the default timeout).
    let conf = &ms["migrationConfiguration"];
    assert_eq!(conf["bandwidthPerMigration"], "64Mi", "{ms}");
    assert_eq!(conf["completionTimeoutPerGiB"], 150, "{ms}");
    assert_eq!(conf["progressTimeout"], 90, "the node's flag: {ms}");
    assert!(ms.get("migrationPolicyName").is_none(), "no MigrationPolicy yet: {ms}");
    let downtime = ms["migrationStats"]["downtimeUs"].as_u64().unwrap();
    assert!(downtime > 0 && downtime < 1_000_000, "{ms}");
    eprintln!("node migration: downtime {} us, total {} us", downtime, ms["migrationStats"]["totalUs"]);
    let moved = active_dir(&state, &uid);
    assert_ne!(moved, first, "{ms}");
    assert_eq!(ms["targetPod"].as_str(), moved.file_name().and_then(|n| n.to_str()), "{ms}");
    let new_pid = pid(&moved);
    assert_ne!(new_pid, first_pid);
    wait_for("the source launcher to exit", &node, || !alive(first_pid));
    more_dots(&node, &moved, 2);
    assert!(alive(new_pid));

    // kubectl sees the migrations through the node's kubeconfig.
    wait_for("the kubeconfig", &node, || state.join("kubeconfig").exists());
    let table = kubectl(&state, dir.path(), &["get", "vmim"]);
    assert!(table.contains("PHASE") && table.contains("Succeeded") && table.contains("mover"), "{table}");
    // /metrics carries the migration: KubeVirt's succeeded/processed figures and our downtime.
    let metrics = kubectl(&state, dir.path(), &["get", "--raw", "/metrics"]);
    let line = |metric: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(metric) && l.contains("name=\"mover\""))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("kubevirt_vmi_migration_succeeded{").ends_with(" 1"), "{metrics}");
    assert!(line("kubevirt_vmi_migration_data_processed_bytes{").len() > 10, "{metrics}");
    let seconds: f64 =
        line("virtrs_vmi_migration_downtime_seconds{").rsplit(' ').next().unwrap_or("").parse().unwrap();
    assert!((seconds * 1e6 - downtime as f64).abs() < 1.0, "{seconds} s vs {downtime} us");

    // 3. MigrationPolicies through kubectl: an unknown field is refused by its path; the policy
    // matching the VMI's label overrides the node's bandwidth and timeout for the next migration.
    let bad = dir.path().join("bad-policy.yaml");
    std::fs::write(
        &bad,
        POLICIES.replacen("  allowAutoConverge: true\n", "  allowAutoConverge: true\n  bogus: 1\n", 1),
    )
    .unwrap();
    let o = kubectl_output(&state, dir.path(), &["apply", "-f", bad.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("spec.bogus"), "{err}");
    let pf = dir.path().join("policies.yaml");
    std::fs::write(&pf, POLICIES).unwrap();
    let out = kubectl(&state, dir.path(), &["apply", "-f", pf.to_str().unwrap()]);
    assert!(out.contains("migrationpolicy.migrations.kubevirt.io/fast-movers created"), "{out}");
    let table = kubectl(&state, dir.path(), &["get", "migrationpolicies"]);
    assert!(table.contains("fast-movers") && table.contains("a-slow"), "{table}");
    let got: Value = serde_json::from_str(&kubectl(
        &state,
        dir.path(),
        &["get", "migrationpolicy", "fast-movers", "-o", "json"],
    ))
    .unwrap();
    assert_eq!(got["spec"]["bandwidthPerMigration"], "128Mi", "{got}");

    // Again, from the migrated launcher, with the policy; then the VMI stops where it runs now.
    let out = node.ok(&["migrate", "mover", "--wait"]);
    assert!(out.contains("Succeeded"), "{out}");
    let v = vmi(&node);
    let ms = &v["status"]["migrationState"];
    assert_eq!(ms["migrationPolicyName"], "fast-movers", "{ms}");
    let conf = &ms["migrationConfiguration"];
    assert_eq!(conf["bandwidthPerMigration"], "128Mi", "the policy's: {ms}");
    assert_eq!(conf["completionTimeoutPerGiB"], 300, "the policy's: {ms}");
    // The native backend throttles the guest's vCPUs: in force, and no event says otherwise.
    assert_eq!(conf["allowAutoConverge"], true, "{ms}");
    assert_eq!(conf["progressTimeout"], 90, "not a policy field: the node's: {ms}");
    let events = kubectl(&state, dir.path(), &["get", "events"]);
    assert!(!events.contains("MigrationSettingNotHonoured"), "{events}");
    let out = kubectl(&state, dir.path(), &["delete", "migrationpolicy", "fast-movers"]);
    assert!(out.contains("deleted"), "{out}");
    let table = kubectl(&state, dir.path(), &["get", "migrationpolicies"]);
    assert!(!table.contains("fast-movers") && table.contains("a-slow"), "{table}");
    let third = active_dir(&state, &uid);
    assert_ne!(third, moved);
    more_dots(&node, &third, 2);
    wait_for("the second source to exit", &node, || !alive(new_pid));
    node.ok(&["delete", "vmi", "mover"]);
    wait_for("the VMI to go", &node, || !node.virtctl(&["get", "vmi", "mover"]).status.success());
    let left = || -> Vec<_> {
        std::fs::read_dir(state.join("vmis")).unwrap().flatten().map(|e| e.file_name()).collect()
    };
    wait_for("the run directories to go", &node, || left().is_empty());
}
