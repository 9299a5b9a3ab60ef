//! Live migration between two nodes: `virtrs-node2` (scripts/k8s/up.sh with VIRT_K8S_NODES=2: its
//! own kubelet, containerd, network namespace, and mount namespace, so its hostPath directories
//! are its own as on a second machine) runs a second virt-handler; the two agents carry the
//! migration over TCP with mutual TLS (their migration proxies, the certificates from the Secret
//! virt-controller makes).
//!
//! A VM that tolerates node2's taint starts on the first node (node2 cordoned meanwhile); its
//! guest shell prints a counter every second. `virtctl migrate --wait` moves it: the target pod
//! runs on node2, the VMI's migrationState names both nodes and node2's proxy, the VMI says
//! Running on node2, the source pod ends and the first node keeps nothing of the VMI. The guest
//! did not restart: the target pod's log (the guest's console, read through node2's kubelet)
//! goes on counting from where the first node left it, without a boot, and `virtctl console`
//! (through the API server to the first node's agent, which forwards it to node2's) finds the
//! shell variable set before the move. Then node2's maintenance: the eviction of its launcher
//! (what `kubectl drain` sends) is refused and the VMI (evictionStrategy LiveMigrate) evacuates
//! back to the first node, its shell still the same. `virtctl stop` ends it.

use std::process::Command;
use std::time::{Duration, Instant};

use super::migration::{attach_console, READY};
use super::{kernel_vm_yaml, ok, run, wait_for, workspace_bin, Cluster, NODE2};

/// The VM.
pub const VM: &str = "vm-far";
/// Tolerates node2's taint ([`super::NODE2_TAINT`]).
const TOLERATION: &str =
    "      tolerations:\n      - key: virt-rs.io/second-node\n        operator: Exists\n        effect: NoSchedule\n";

fn vmi(cluster: &Cluster, ns: &str, path: &str) -> String {
    cluster.get(&["vmi", VM, "-n", ns], path).unwrap_or_default()
}

/// The VM's launcher pods, `name phase node` each.
fn pods(cluster: &Cluster, ns: &str) -> Vec<String> {
    let list = cluster
        .get(
            &["pods", "-n", ns, "-l", &format!("kubevirt.io/domain={VM}")],
            r#"{range .items[*]}{.metadata.name} {.status.phase} {.spec.nodeName}{"\n"}{end}"#,
        )
        .unwrap_or_default();
    list.lines().map(str::to_string).filter(|l| !l.is_empty()).collect()
}

/// The highest `TICK-n` in `text`.
fn last_tick(text: &str) -> u64 {
    text.match_indices("TICK-")
        .filter_map(|(i, _)| {
            let digits: String = text[i + 5..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// Applies the VM (runStrategy Always) with node2 cordoned, so it starts on the first node; it
/// boots while the test does other things.
pub fn start(cluster: &Cluster, ns: &str) {
    ok(&mut cluster.kubectl(&["cordon", NODE2]));
    let yaml = kernel_vm_yaml(VM, &cluster.kernel_image)
        .replacen("runStrategy: Halted", "runStrategy: Always", 1)
        .replacen(
            "      domain:\n",
            &format!("{TOLERATION}      evictionStrategy: LiveMigrate\n      domain:\n"),
            1,
        );
    let file = cluster.tmp.path().join("vm-far.yaml");
    std::fs::write(&file, yaml).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()]));
}

/// The part (see the module's documentation); the VM was [`start`]ed before.
pub fn run_part(cluster: &Cluster, ns: &str) {
    let t0 = Instant::now();
    let virtctl = workspace_bin("virtctl");
    let kubeconfig = cluster.kubeconfig.clone();
    let virtctl_ok =
        |args: &[&str]| ok(Command::new(&virtctl).arg("--kubeconfig").arg(&kubeconfig).args(args));
    wait_for("vm-far's VMI Running", 240, || {
        (vmi(cluster, ns, "{.status.phase}") == "Running").then_some(())
    });
    assert_eq!(vmi(cluster, ns, "{.status.nodeName}"), "virtrs-node");
    ok(&mut cluster.kubectl(&["uncordon", NODE2]));
    let uid = vmi(cluster, ns, "{.metadata.uid}");
    let source = match pods(cluster, ns).as_slice() {
        [one] if one.ends_with(" Running virtrs-node") => one.split(' ').next().unwrap().to_string(),
        other => panic!("one launcher pod Running on virtrs-node expected: {other:?}"),
    };
    let mut console = attach_console(&virtctl, &kubeconfig, ns, VM);
    console.wait_for(READY, Duration::from_secs(240));
    console.type_line("X=5150; (i=0; while true; do i=$((i+1)); echo TICK-$i; sleep 1; done) &");
    console.wait_for("TICK-3", Duration::from_secs(60));
    console.detach();
    eprintln!(
        "between nodes: the guest counts in pod {source} on virtrs-node ({:?} into the part)",
        t0.elapsed()
    );

    let t = Instant::now();
    let out = virtctl_ok(&["migrate", VM, "-n", ns, "--wait", "--timeout", "240"]);
    let wall = t.elapsed();
    eprintln!("virtctl migrate --wait between nodes ({wall:?}):\n{out}");
    assert!(out.contains("Succeeded"), "{out}");
    let state = vmi(
        cluster,
        ns,
        "{.status.migrationState.completed} {.status.migrationState.failed} {.status.migrationState.sourceNode} \
         {.status.migrationState.targetNode} {.status.migrationState.sourcePod} {.status.migrationState.targetPod}",
    );
    let target = state.split(' ').nth(5).unwrap_or_default().to_string();
    assert_eq!(state, format!("true false virtrs-node {NODE2} {source} {target}"));
    let address = vmi(cluster, ns, "{.status.migrationState.targetNodeAddress}");
    assert!(address.starts_with("172.31.253.254:"), "node2's proxy: {address:?}");
    let total_us = vmi(cluster, ns, "{.status.migrationState.migrationStats.totalUs}");
    let downtime_us = vmi(cluster, ns, "{.status.migrationState.migrationStats.downtimeUs}");
    let ms = |us: &str| us.parse::<f64>().unwrap_or(f64::NAN) / 1000.0;
    eprintln!(
        "between nodes: total {:.1} ms, downtime {:.1} ms (VMI migrationState), virtctl migrate --wait {wall:?}, \
         through node2's proxy {address}",
        ms(&total_us),
        ms(&downtime_us)
    );

    // virt-controller follows the target pod; node2's agent serves the VMI.
    wait_for("the VMI Running on virtrs-node2", 60, || {
        (vmi(cluster, ns, "{.status.phase} {.status.nodeName} {.metadata.labels.kubevirt\\.io/nodeName}")
            == format!("Running {NODE2} {NODE2}"))
        .then_some(())
    });
    assert!(pods(cluster, ns).contains(&format!("{target} Running {NODE2}")), "{:?}", pods(cluster, ns));
    wait_for("the source pod to end", 60, || {
        let p = pods(cluster, ns);
        p.iter().all(|l| !l.starts_with(&format!("{source} ")) || l.contains(" Succeeded ")).then_some(())
    });
    // The first node keeps nothing of the VMI (its run directories go once the launcher ended).
    let first = cluster.node_state.join("vmis").join(&uid);
    wait_for("the first node's run directory of the VMI to go", 60, || (!first.exists()).then_some(()));

    // The same guest, counting on: the target pod's log is the console since the move (through
    // node2's kubelet), with ticks past the last one seen before and no boot in between.
    let before = last_tick(&console_text(cluster, ns, &source));
    let logs = || {
        String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, &target])).stdout).into_owned()
    };
    let t = Instant::now();
    while last_tick(&logs()) < before + 2 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the guest does not count on in pod {target} on node2 (last tick before the move {before}):\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = logs();
    assert!(!after.contains("Linux version"), "the guest booted again on node2:\n{after}");
    eprintln!(
        "between nodes: the guest counts on in pod {target} on {NODE2} (tick {} before the move's end, {} now; {:?} into the part)",
        before,
        last_tick(&after),
        t0.elapsed()
    );

    // The console through the API server: the first node's agent (the aggregated API's endpoint)
    // forwards it to node2's agent; the shell has its variable.
    let mut console = attach_console(&virtctl, &kubeconfig, ns, VM);
    console.type_line("echo FAR-$X-$((6*7))");
    console.wait_for("FAR-5150-42", Duration::from_secs(60));
    console.detach();
    eprintln!("between nodes: virtctl console reaches the guest on {NODE2} through the first node's agent");

    // Maintenance of node2: the launcher's eviction (what `kubectl drain virtrs-node2` sends) is
    // refused, and the VMI (evictionStrategy LiveMigrate) evacuates: an evacuation migration takes
    // it back to the first node, node 1's agent now the target.
    wait_for("vm-far's disruption budget", 60, || {
        cluster.get(&["pdb", &format!("kubevirt-disruption-budget-{VM}"), "-n", ns], "{.spec.minAvailable}")
    });
    let eviction = cluster.tmp.path().join("eviction-far.json");
    std::fs::write(
        &eviction,
        format!(r#"{{"apiVersion":"policy/v1beta1","kind":"Eviction","metadata":{{"name":"{target}","namespace":"{ns}"}}}}"#),
    )
    .unwrap();
    let t = Instant::now();
    let evicted = run(&mut cluster.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/{target}/eviction"),
        "-f",
        eviction.to_str().unwrap(),
    ]));
    assert!(!evicted.status.success(), "the launcher's eviction on node2 was refused");
    let evacuation = wait_for("vm-far's evacuation migration to succeed", 180, || {
        let listed = cluster.get(
            &["vmim", "-n", ns],
            &format!(
                r#"{{range .items[?(@.spec.vmiName=="{VM}")]}}{{.metadata.name}} {{.metadata.annotations.kubevirt\.io/evacuationMigration}} {{.status.phase}}{{"\n"}}{{end}}"#
            ),
        )?;
        listed
            .lines()
            .find(|l| l.starts_with("kubevirt-evacuation-") && l.ends_with(" Succeeded"))
            .map(str::to_string)
    });
    assert!(evacuation.contains(&format!(" {NODE2} ")), "{evacuation}");
    wait_for("the VMI Running on the first node again", 60, || {
        (vmi(cluster, ns, "{.status.phase} {.status.nodeName}") == "Running virtrs-node").then_some(())
    });
    let back = vmi(
        cluster,
        ns,
        "{.status.migrationState.sourceNode} {.status.migrationState.targetNode} \
         {.status.migrationState.migrationStats.downtimeUs}",
    );
    eprintln!(
        "between nodes: eviction on {NODE2} -> evacuation {} back to virtrs-node in {:?} (source target downtimeUs: {back})",
        evacuation.split(' ').next().unwrap_or_default(),
        t.elapsed()
    );
    assert!(back.starts_with(&format!("{NODE2} virtrs-node ")), "{back}");
    let mut console = attach_console(&virtctl, &kubeconfig, ns, VM);
    console.type_line("echo BACK-$X-$((7*6))");
    console.wait_for("BACK-5150-42", Duration::from_secs(60));
    console.detach();

    virtctl_ok(&["stop", VM, "-n", ns]);
    wait_for("vm-far's VMI and pods to go after virtctl stop", 120, || {
        (cluster.get(&["vmi", VM, "-n", ns], "{.metadata.name}").is_none() && pods(cluster, ns).is_empty())
            .then_some(())
    });
    eprintln!("between nodes: part done in {:?}", t0.elapsed());
}

/// The source pod's log (the console up to the move), empty if it is gone.
fn console_text(cluster: &Cluster, ns: &str, pod: &str) -> String {
    String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, pod])).stdout).into_owned()
}
