//! The Kubernetes adapter's figures beside KubeVirt's published ones (a benchmark, run by
//! bench/k8s-scale.sh; ignored by a plain `cargo test`): on the real single-node cluster of
//! scripts/k8s with the API server's audit log on,
//! - API requests per VM start: the requests virt-controller and virt-handler make (told apart by
//!   their User-Agent in the audit log) from a VMI's creation until it is Running, lease renewals
//!   left out;
//! - VMI create -> Running (the launcher runs the machine; the guest's boot excluded) p50/p95 over
//!   20 VMIs created at once (KubeVirt publishes 15-25 s p50);
//! - virt-controller's RSS with 1,000 VMs defined and reconciled (KubeVirt's virt-controller
//!   requests ~250 MB).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use support::{ok, run, wait_for, Cluster};

fn vmi_json(name: &str, image: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": { "name": name },
        "spec": {
            "domain": {
                "firmware": { "kernelBoot": {
                    "container": { "image": image, "kernelPath": "/boot/vmlinuz", "initrdPath": "/boot/initrd.img" },
                    "kernelArgs": "console=ttyS0 panic=-1",
                } },
                "devices": {},
                "memory": { "guest": "128Mi" },
            },
            "terminationGracePeriodSeconds": 0,
        },
    })
}

fn list(items: Vec<serde_json::Value>) -> String {
    serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items }).to_string()
}

/// `kubectl create -f` of `body` (a List) through a file in `tmp`.
fn create(cluster: &Cluster, ns: &str, file: &str, body: String) {
    let path = cluster.tmp.path().join(file);
    std::fs::write(&path, body).unwrap();
    ok(&mut cluster.kubectl(&["create", "-n", ns, "-f", path.to_str().unwrap()]));
}

/// Name -> phase of the VMIs in `ns`.
fn phases(cluster: &Cluster, ns: &str) -> HashMap<String, String> {
    let out = cluster
        .get(&["vmi", "-n", ns], r#"{range .items[*]}{.metadata.name} {.status.phase}{"\n"}{end}"#)
        .unwrap_or_default();
    out.lines().filter_map(|l| l.split_once(' ').map(|(n, p)| (n.to_string(), p.to_string()))).collect()
}

/// The components' requests in the audit log after its first `skip` lines: (auditID, "verb resource").
fn component_requests(cluster: &Cluster, skip: usize) -> Vec<(String, String)> {
    let log = std::fs::read_to_string(cluster.dir.join("logs/audit.log")).unwrap();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for line in log.lines().skip(skip) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let agent = e["userAgent"].as_str().unwrap_or_default();
        if !(agent.starts_with("virt-controller/") || agent.starts_with("virt-handler/")) {
            continue;
        }
        let resource = e["objectRef"]["resource"].as_str().unwrap_or_default().to_string();
        let sub = e["objectRef"]["subresource"].as_str().map(|s| format!("/{s}")).unwrap_or_default();
        if resource == "leases" {
            continue;
        }
        let id = e["auditID"].as_str().unwrap_or_default().to_string();
        if seen.insert(id.clone()) {
            out.push((id, format!("{} {resource}{sub}", e["verb"].as_str().unwrap_or_default())));
        }
    }
    out
}

fn audit_lines(cluster: &Cluster) -> usize {
    std::fs::read_to_string(cluster.dir.join("logs/audit.log")).unwrap_or_default().lines().count()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

#[test]
#[ignore = "a benchmark (minutes, 20 guests): bench/k8s-scale.sh runs it"]
fn k8s_scale_figures_beside_kubevirt() {
    let mut cluster = Cluster::start(true);
    cluster.install_crds();
    cluster.controller = Some(cluster.spawn_controller(1));
    cluster.handler = Some(cluster.spawn_handler(1));
    let controller_pid = cluster.controller.as_ref().unwrap().id();
    let log = cluster.tmp.path().join("controller-1.log");
    wait_for("the controller to lead", 60, || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("watching").then_some(())
    });
    let ns = "bench";
    ok(&mut cluster.kubectl(&["create", "namespace", ns]));
    let image = cluster.kernel_image.clone();

    // 1. API requests of one VMI start (warm: the image is pulled once first).
    create(&cluster, ns, "warm.json", list(vec![vmi_json("warm", &image)]));
    wait_for("the warm-up VMI Running", 300, || {
        (phases(&cluster, ns).get("warm")? == "Running").then_some(())
    });
    ok(&mut cluster.kubectl(&["delete", "vmi", "warm", "-n", ns]));
    std::thread::sleep(Duration::from_secs(3));
    let skip = audit_lines(&cluster);
    create(&cluster, ns, "one.json", list(vec![vmi_json("one", &image)]));
    wait_for("the VMI Running", 300, || (phases(&cluster, ns).get("one")? == "Running").then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    let requests = component_requests(&cluster, skip);
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (_, k) in &requests {
        *by_kind.entry(k.clone()).or_default() += 1;
    }
    ok(&mut cluster.kubectl(&["delete", "vmi", "one", "-n", ns]));

    // 2. 20 VMIs at once.
    let n = 20;
    let items = (0..n).map(|i| vmi_json(&format!("burst-{i:02}"), &image)).collect();
    let t0 = Instant::now();
    create(&cluster, ns, "burst.json", list(items));
    let mut running: HashMap<String, f64> = HashMap::new();
    while running.len() < n {
        assert!(
            t0.elapsed() < Duration::from_secs(900),
            "only {} of {n} VMIs Running: {running:?}",
            running.len()
        );
        for (name, phase) in phases(&cluster, ns) {
            if name.starts_with("burst-") && phase == "Running" {
                running.entry(name).or_insert_with(|| t0.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let mut times: Vec<f64> = running.values().copied().collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let (p50, p95) = (percentile(&times, 0.5), percentile(&times, 0.95));
    ok(&mut cluster.kubectl(&["delete", "vmi", "--all", "-n", ns, "--wait=false"]));
    wait_for("the burst's launcher pods to go", 300, || {
        let out = run(&mut cluster.kubectl(&["get", "pods", "-n", ns, "-o", "name"]));
        String::from_utf8_lossy(&out.stdout).trim().is_empty().then_some(())
    });

    // 3. 1,000 VMs defined (Halted): the controller reconciles each (printableStatus Stopped).
    let rss_idle = rss_mib(controller_pid);
    let vms = 1000;
    for chunk in 0..4 {
        let items = (chunk * 250..(chunk + 1) * 250)
            .map(|i| {
                let mut vm = serde_json::json!({
                    "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                    "metadata": { "name": format!("vm-{i:04}") },
                    "spec": { "runStrategy": "Halted", "template": { "spec": vmi_json("x", &image)["spec"].clone() } },
                });
                vm["spec"]["template"]["metadata"] = serde_json::json!({ "labels": { "bench": "1" } });
                vm
            })
            .collect();
        create(&cluster, ns, &format!("vms-{chunk}.json"), list(items));
    }
    let t = Instant::now();
    wait_for("1,000 VMs reconciled (Stopped)", 900, || {
        let out = cluster.get(&["vm", "-n", ns], "{.items[*].status.printableStatus}").unwrap_or_default();
        (out.split_whitespace().filter(|s| *s == "Stopped").count() == vms).then_some(())
    });
    let reconciled = t.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let rss = rss_mib(controller_pid);

    let build = if cfg!(debug_assertions) { "debug build" } else { "release build" };
    eprintln!("\n=== virt-rs on Kubernetes 1.20 (one node, 2 cores; {build}) beside KubeVirt ===");
    eprintln!("{:<52} {:>14} {:>22}", "figure", "virt-rs", "KubeVirt (published)");
    eprintln!(
        "{:<52} {:>14} {:>22}",
        "VMI create -> Running p50 (20 at once, no boot)",
        format!("{p50:.1} s"),
        "15-25 s"
    );
    eprintln!(
        "{:<52} {:>14} {:>22}",
        "VMI create -> Running p95 (20 at once, no boot)",
        format!("{p95:.1} s"),
        "-"
    );
    eprintln!(
        "{:<52} {:>14} {:>22}",
        "virt-controller RSS, 1,000 VMs defined",
        format!("{rss:.0} MiB"),
        "~250 MB (request)"
    );
    eprintln!(
        "{:<52} {:>14} {:>22}",
        "virt-controller RSS, idle (after the burst)",
        format!("{rss_idle:.0} MiB"),
        "-"
    );
    eprintln!(
        "{:<52} {:>14} {:>22}",
        "API requests per VM start (controller + handler)",
        requests.len(),
        "none published"
    );
    for (k, c) in &by_kind {
        eprintln!("    {c:>3}  {k}");
    }
    eprintln!("1,000 VMs reconciled {:.1} s after the last create", reconciled.as_secs_f64());
    eprintln!("burst: {:?}", times.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>());
}
