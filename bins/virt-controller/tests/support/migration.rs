//! Live migration on the cluster: a VM without interfaces (the test guest's shell on its serial
//! console) is started beside the test's other VM; a migration created through the `migrate`
//! subresource and cancelled at once with `virtctl migrate-cancel` leaves it where it runs; then
//! `virtctl migrate --wait` moves it into a new launcher pod (the VMIM goes Pending, Scheduling,
//! Scheduled, TargetReady, Running, Succeeded), the old pod ends, the VMI runs in the new one and
//! its shell still has the variable set before the move; `virtctl stop` ends it (checked later:
//! its grace period runs while the test goes on).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::console_session::ConsoleSession;
use super::{kernel_vm_yaml, ok, run, wait_for, workspace_bin, Cluster};

/// The VM.
pub const VM: &str = "vm-mig";
/// The shell's banner (scripts/guest-assets.sh): the guest takes input.
pub const READY: &str = "Type 'poweroff -f' to exit.";

/// Applies the VM (runStrategy Always): it boots while the test does other things.
pub fn start(cluster: &Cluster, ns: &str) {
    let yaml =
        kernel_vm_yaml(VM, &cluster.kernel_image).replacen("runStrategy: Halted", "runStrategy: Always", 1);
    let file = cluster.tmp.path().join("vm-mig.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()]));
}

/// An attached `virtctl console` of `vm` through the API server.
pub fn attach_console(virtctl: &Path, kubeconfig: &Path, ns: &str, vm: &str) -> ConsoleSession {
    let mut cmd = Command::new(virtctl);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(["console", vm, "-n", ns]);
    ConsoleSession::spawn(cmd)
}

/// The VM's launcher pods, `name phase` each.
fn pods(cluster: &Cluster, ns: &str) -> Vec<String> {
    let list = cluster
        .get(
            &["pods", "-n", ns, "-l", &format!("kubevirt.io/domain={VM}")],
            r#"{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}"#,
        )
        .unwrap_or_default();
    list.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// The names of the VM's migrations (the namespace holds other VMs' too: evacuations).
fn migrations(cluster: &Cluster, ns: &str) -> Vec<String> {
    let path = format!(r#"{{range .items[?(@.spec.vmiName=="{VM}")]}}{{.metadata.name}}{{"\n"}}{{end}}"#);
    let list = cluster.get(&["vmim", "-n", ns], &path).unwrap_or_default();
    list.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

fn vmi(cluster: &Cluster, ns: &str, path: &str) -> String {
    cluster.get(&["vmi", VM, "-n", ns], path).unwrap_or_default()
}

/// The migration part (see the module's documentation); the VM was [`start`]ed before.
/// Returns what [`stopped`] checks later (`virtctl stop` issued, the cancelled migration's
/// target pod terminating).
pub fn run_part(cluster: &Cluster, ns: &str) -> Checks {
    let t0 = Instant::now();
    let virtctl = workspace_bin("virtctl");
    let kubeconfig = cluster.kubeconfig.clone();
    wait_for("the migration VM's VMI Running", 240, || {
        (vmi(cluster, ns, "{.status.phase}") == "Running").then_some(())
    });
    let source = match pods(cluster, ns).as_slice() {
        [one] if one.ends_with(" Running") => one.split(' ').next().unwrap().to_string(),
        other => panic!("one Running launcher pod expected: {other:?}"),
    };
    let mut console = attach_console(&virtctl, &kubeconfig, ns, VM);
    console.wait_for(READY, Duration::from_secs(240));
    console.type_line("X=7731; echo VIRT-SET-$X");
    console.wait_for("VIRT-SET-7731", Duration::from_secs(60));
    console.detach();
    eprintln!("migration VM: guest shell ready in pod {source} ({:?} after its part began)", t0.elapsed());

    // A migration through the `migrate` subresource, cancelled at once: its target pod goes, the
    // VM stays in its pod.
    let body = cluster.tmp.path().join("migrate-options.json");
    std::fs::write(&body, "{}").unwrap();
    let path = format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/{VM}/migrate");
    ok(&mut cluster.kubectl(&["replace", "--raw", &path, "-f", body.to_str().unwrap()]));
    let created = wait_for("the subresource's migration", 30, || migrations(cluster, ns).into_iter().next());
    assert!(created.starts_with("kubevirt-migrate-vm-"), "{created}");
    let cancelled_uid = cluster.get(&["vmim", &created, "-n", ns], "{.metadata.uid}").unwrap();
    let cancel = ok(Command::new(&virtctl).arg("--kubeconfig").arg(&kubeconfig).args([
        "migrate-cancel",
        VM,
        "-n",
        ns,
    ]));
    assert!(cancel.contains("was scheduled to migrate-cancel"), "{cancel}");
    // The migration goes once its target pod is being deleted (the pod's end is checked below,
    // after the migration that follows: its termination runs meanwhile).
    wait_for("the cancelled migration to go", 60, || migrations(cluster, ns).is_empty().then_some(()));
    // Its target pod, if it was made, is being deleted by virt-controller (gone: checked later).
    wait_for("the cancelled migration's target pod to be deleted", 30, || {
        let listed = cluster
            .get(
                &["pods", "-n", ns, "-l", &format!("kubevirt.io/migrationJobUID={cancelled_uid}")],
                r#"{range .items[*]}{.metadata.name}={.metadata.deletionTimestamp}{"\n"}{end}"#,
            )
            .unwrap_or_default();
        listed.lines().all(|l| !l.ends_with('=')).then_some(())
    });
    assert!(pods(cluster, ns).contains(&format!("{source} Running")), "the VM stayed in its pod");
    assert_eq!(vmi(cluster, ns, "{.status.phase}"), "Running");
    let abort = vmi(cluster, ns, "{.status.migrationState.abortStatus} {.status.migrationState.failed}");
    eprintln!(
        "migrate subresource + migrate-cancel: the source runs on (migrationState: {abort:?}; {:?} into the part)",
        t0.elapsed()
    );

    // The migration.
    let t = Instant::now();
    let out = ok(Command::new(&virtctl).arg("--kubeconfig").arg(&kubeconfig).args([
        "migrate",
        VM,
        "-n",
        ns,
        "--wait",
        "--timeout",
        "180",
    ]));
    let wall = t.elapsed();
    eprintln!("virtctl migrate --wait ({wall:?}):\n{out}");
    assert!(out.contains("Succeeded") && out.contains("moved to "), "{out}");
    let vmim = migrations(cluster, ns).into_iter().next().unwrap();
    let phases =
        cluster.get(&["vmim", &vmim, "-n", ns], "{.status.phaseTransitionTimestamps[*].phase}").unwrap();
    assert_eq!(phases, "Pending Scheduling Scheduled TargetReady Running Succeeded");
    let state = vmi(
        cluster,
        ns,
        "{.status.migrationState.completed} {.status.migrationState.failed} {.status.migrationState.sourcePod} \
         {.status.migrationState.targetPod} {.status.migrationState.targetNode}",
    );
    let target = state.split(' ').nth(3).unwrap_or_default().to_string();
    assert_eq!(state, format!("true false {source} {target} virtrs-node"));
    assert_ne!(target, source);
    let total_us = vmi(cluster, ns, "{.status.migrationState.migrationStats.totalUs}");
    let downtime_us = vmi(cluster, ns, "{.status.migrationState.migrationStats.downtimeUs}");
    let ms = |us: &str| us.parse::<f64>().unwrap() / 1000.0;
    eprintln!(
        "migration: total {:.1} ms, downtime {:.1} ms (VMI migrationState), virtctl migrate --wait {wall:?}",
        ms(&total_us),
        ms(&downtime_us)
    );
    let labels = cluster.get(&["pod", &target, "-n", ns], "{.metadata.labels}").unwrap();
    assert!(labels.contains("kubevirt.io/migrationJobUID"), "{labels}");
    eprintln!("migration: Succeeded {:?} into the part", t0.elapsed());
    // The source pod ends (its launcher exits once the VM left); the VMI runs on in the target.
    wait_for("the source pod to end", 60, || {
        let p = pods(cluster, ns);
        p.iter().all(|l| !l.starts_with(&format!("{source} ")) || l.ends_with(" Succeeded")).then_some(())
    });
    eprintln!("migration: the source pod ended {:?} into the part", t0.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    assert!(pods(cluster, ns).contains(&format!("{target} Running")), "{:?}", pods(cluster, ns));
    assert_eq!(vmi(cluster, ns, "{.status.phase} {.status.nodeName}"), "Running virtrs-node");
    // The same guest, its shell's state intact, through a console to the new launcher.
    let mut console = attach_console(&virtctl, &kubeconfig, ns, VM);
    console.type_line("echo VIRT-AFTER-$X-$((6*7))");
    console.wait_for("VIRT-AFTER-7731-42", Duration::from_secs(60));
    console.detach();
    // The target pod's log carries the guest's console (its entry script follows console.log).
    let logs = || {
        String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, &target])).stdout).into_owned()
    };
    let t = Instant::now();
    while !logs().contains("VIRT-AFTER-7731-42") {
        assert!(t.elapsed() < Duration::from_secs(20), "the target pod's log lacks the console:\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("migration: the guest answers from pod {target} ({:?} into the part)", t0.elapsed());

    // Stopped afterwards ([`stopped`] checks that it ended while the test goes on).
    ok(Command::new(&virtctl).arg("--kubeconfig").arg(&kubeconfig).args(["stop", VM, "-n", ns]));
    eprintln!("migration part done in {:?} (virtctl stop issued)", t0.elapsed());
    Checks { stopped: Instant::now(), cancelled_uid }
}

/// What [`stopped`] checks once the test has done other things meanwhile.
pub struct Checks {
    stopped: Instant,
    cancelled_uid: String,
}

/// After [`run_part`]: the cancelled migration's target pod went; the stopped VM's VMI and both
/// its pods went, and the VM says `Stopped`.
pub fn stopped(cluster: &Cluster, ns: &str, checks: Checks) {
    let Checks { stopped: since, cancelled_uid } = checks;
    // The cancelled migration's target pod is gone.
    wait_for("the cancelled migration's target pod to go", 60, || {
        let left = cluster
            .get(
                &["pods", "-n", ns, "-l", &format!("kubevirt.io/migrationJobUID={cancelled_uid}")],
                "{.items[*].metadata.name}",
            )
            .unwrap_or_default();
        left.is_empty().then_some(())
    });

    wait_for("the migrated VM's VMI and pods to go after virtctl stop", 120, || {
        (cluster.get(&["vmi", VM, "-n", ns], "{.metadata.name}").is_none() && pods(cluster, ns).is_empty())
            .then_some(())
    });
    wait_for("the migrated VM printableStatus Stopped", 60, || {
        cluster.get(&["vm", VM, "-n", ns], "{.status.printableStatus}").filter(|s| s == "Stopped")
    });
    eprintln!(
        "virtctl stop of the migrated VM -> VMI and pods gone (checked {:?} after the stop)",
        since.elapsed()
    );
}
