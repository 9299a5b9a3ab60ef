//! The two-node cluster (scripts/k8s/up.sh with VIRT_K8S_NODES=2, tests/support's [`Node2`]):
//! virtrs-node2 behaves as a second machine. Both nodes Ready, node2 tainted; a hostPath directory
//! is node2's own on node2 (its virt-handler and its pods see node2's content, node 1's pods and
//! the host the host's); node2's virt-handler, run in node2's mount namespace, registers its
//! device plugins with node2's kubelet (allocatable `devices.kubevirt.io/kvm`); a pod tolerating
//! the taint runs on node2 with /dev/kvm, an address in node2's pod subnet, its log and exec through
//! the API server and node2's kubelet; node 1's pod is unaffected.
//!
//! Needs what tests/cluster.rs needs (the launcher image: its static busybox runs the pods here).

mod support;

use std::time::Instant;

use support::{ok, run, wait_for, Cluster, NODE2, NODE2_TAINT};

/// A pod of the launcher image running busybox: prints what `/h/who` (hostPath `host_dir`)
/// says and whether /dev/kvm is there, then sleeps. `node2`: tolerates node2's taint and is bound
/// to it.
fn probe_pod(name: &str, host_dir: &str, node2: bool) -> String {
    let placement = if node2 {
        format!(
            "  nodeSelector: {{ kubernetes.io/hostname: {NODE2} }}\n  tolerations:\n  - {{ key: {NODE2_TAINT}, \
             operator: Exists, effect: NoSchedule }}\n"
        )
    } else {
        String::new()
    };
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{ name: {name} }}
spec:
{placement}  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/virt-launcher:dev
    imagePullPolicy: Never
    command: [/bin/busybox, sh, -c, 'echo who=$(/bin/busybox cat /h/who); [ -e /dev/kvm ] && echo kvm=yes; exec /bin/busybox sleep 3600']
    resources: {{ limits: {{ devices.kubevirt.io/kvm: \"1\" }} }}
    volumeMounts: [ {{ name: h, mountPath: /h }} ]
  volumes: [ {{ name: h, hostPath: {{ path: {host_dir} }} }} ]
"
    )
}

#[test]
fn node2_is_a_second_machine_with_its_own_kubelet_paths_and_agent() {
    let started = Instant::now();
    let mut cluster = Cluster::start_nodes(false, 2);
    eprintln!("two-node cluster up in {:?}", started.elapsed());
    let nodes = ok(&mut cluster.kubectl(&["get", "nodes", "-o", "name"]));
    assert_eq!(nodes.lines().collect::<Vec<_>>(), ["node/virtrs-node", "node/virtrs-node2"]);
    for n in ["virtrs-node", NODE2] {
        ok(&mut cluster.kubectl(&["wait", "--for=condition=Ready", &format!("node/{n}"), "--timeout=60s"]));
    }
    // (node.kubernetes.io/not-ready may still be there for a moment after Ready.)
    let effect =
        cluster.get(&["node", NODE2], &format!("{{.spec.taints[?(@.key==\"{NODE2_TAINT}\")].effect}}"));
    assert_eq!(effect.as_deref(), Some("NoSchedule"));

    // The same path, two machines' directories: the host's (node 1's) and node2's.
    let state = cluster.node_state.clone();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("who"), "node1").unwrap();
    std::fs::write(cluster.node2().node_state.join("who"), "node2").unwrap();
    let seen = ok(cluster.on_node2("cat").arg(state.join("who")));
    assert_eq!(seen, "node2");

    // The agents: node 1's as the cluster test runs it, node2's in node2's mount namespace.
    cluster.handler = Some(cluster.spawn_handler(1));
    let h2 = cluster.spawn_handler_node2(1);
    cluster.node2.as_mut().unwrap().handler = Some(h2);
    for n in ["virtrs-node", NODE2] {
        wait_for(&format!("{n}'s allocatable devices.kubevirt.io/kvm"), 120, || {
            cluster
                .get(&["node", n], "{.status.allocatable.devices\\.kubevirt\\.io/kvm}")
                .filter(|v| !v.is_empty() && v != "0")
        });
    }

    let host_dir = state.to_str().unwrap();
    let yaml = probe_pod("on-node1", host_dir, false) + "---\n" + &probe_pod("on-node2", host_dir, true);
    let path = cluster.tmp.path().join("probe.yaml");
    std::fs::write(&path, yaml).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-f", path.to_str().unwrap()]));
    ok(&mut cluster.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/on-node1",
        "pod/on-node2",
        "--timeout=120s",
    ]));
    let where_ = |p: &str| cluster.get(&["pod", p], "{.spec.nodeName} {.status.podIP}").unwrap();
    let (n1, n2) = (where_("on-node1"), where_("on-node2"));
    assert!(n1.starts_with("virtrs-node 10.244.0."), "{n1}");
    assert!(n2.starts_with("virtrs-node2 10.244.1."), "{n2}");
    let logs = |p: &str| {
        wait_for(&format!("{p}'s log"), 30, || {
            let out = run(&mut cluster.kubectl(&["logs", p]));
            let s = String::from_utf8_lossy(&out.stdout).to_string();
            s.contains("who=").then_some(s)
        })
    };
    assert_eq!(logs("on-node1").trim(), "who=node1\nkvm=yes");
    assert_eq!(logs("on-node2").trim(), "who=node2\nkvm=yes");
    // exec: API server -> node2's kubelet (172.31.253.1:10250) -> node2's containerd.
    let who = ok(&mut cluster.kubectl(&["exec", "on-node2", "--", "/bin/busybox", "cat", "/h/who"]));
    assert_eq!(who, "node2");
    // Pod to pod across the nodes (the host routes both pod subnets): node2's pod reaches node 1's.
    let ip1 = n1.split(' ').nth(1).unwrap();
    let ping = run(&mut cluster.kubectl(&[
        "exec",
        "on-node2",
        "--",
        "/bin/busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "5",
        ip1,
    ]));
    assert!(ping.status.success(), "{}", String::from_utf8_lossy(&ping.stdout));

    // Both kubelets' garbage collection runs every minute: node 1's pod and logs stay.
    std::thread::sleep(std::time::Duration::from_secs(75));
    for p in ["on-node1", "on-node2"] {
        let st =
            cluster.get(&["pod", p], "{.status.phase} {.status.containerStatuses[0].restartCount}").unwrap();
        assert_eq!(st, "Running 0", "{p}");
    }
    assert_eq!(logs("on-node1").trim(), "who=node1\nkvm=yes");
    assert_eq!(logs("on-node2").trim(), "who=node2\nkvm=yes");
    eprintln!("done in {:?}", started.elapsed());
}
