//! virt-controller and virt-handler on a real Kubernetes 1.20 (scripts/k8s: etcd, kube-apiserver,
//! controller-manager, scheduler, kubelet, containerd, the CNI bridge) of two nodes (the second,
//! tainted, a simulated second machine: scripts/k8s/node2.sh), brought up and torn down here: CRDs installed (twice), a KubeVirt conformance VM applied with Debian's
//! kubectl (Halted: no VMI), then a VM booting the project's test kernel and initramfs (a
//! kernel-boot image served by a real docker-registry) started: its VMI created, its launcher pod
//! scheduled and started by the kubelet with the real launcher image
//! (scripts/k8s/launcher-image.sh: virt-launcher + QEMU), virt-handler writes the machine spec,
//! the guest boots under emulation and its console shows in `kubectl logs`; then the VM deleted
//! and VMI and pod gone with it. Admission: a VM, a DataVolume, a migration and an instancetype
//! the local node refuses are refused by the webhooks naming the field. DataVolumes
//! (tests/support/datavolume.rs): an http import into a claim through an importer pod, a VM
//! booting from it, a VM whose `dataVolumeTemplates` clone another imported claim (Provisioning
//! until its clone pod filled it; the guest's writes stay in the clone), a failed import, the
//! cascade on delete. Live migration (tests/support/migration.rs): a second VM moved into a new
//! launcher pod with `virtctl migrate`, its shell's state intact; a migration cancelled at once
//! leaves it where it runs. Between nodes (tests/support/between_nodes.rs): a third VM moved
//! from the first node to virtrs-node2 through the agents' migration proxies, its guest counting
//! on there and its console reached through the first node's agent.
//!
//! The first run builds Kubernetes (scripts/k8s/build.sh, 15-30 minutes); later runs reuse the
//! cached binaries. Needs docker-registry, skopeo, qemu-system-x86 and busybox-static
//! (scripts/install-deps.sh) and virt-launcher built in the same target directory
//! (`cargo test --workspace` builds it).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    console_until, kernel_vm_net_yaml, kernel_vm_yaml, ok, repo, run, wait_for, workspace_bin, Cluster,
};

#[test]
fn a_conformance_vm_gets_a_vmi_and_a_running_launcher_pod_and_cascades_on_delete() {
    let started = Instant::now();
    let repo = repo();
    // Two nodes: virtrs-node2 (tainted) takes only the VM that moves between the nodes.
    let mut cluster = Cluster::start_nodes(false, 2);
    let tmp = cluster.tmp.path().to_path_buf();
    let node_state = cluster.node_state.clone();
    let kernel_image = cluster.kernel_image.clone();
    eprintln!("cluster up in {:?}", started.elapsed());
    // DataVolume sources: an HTTP server the importer pods reach.
    support::datavolume::serve(&mut cluster);

    // CRDs, twice: the second apply changes nothing and fails nothing.
    let bin = env!("CARGO_BIN_EXE_virt-controller");
    for _ in 0..2 {
        let out = cluster.install_crds();
        assert!(out.contains("virtualmachines.kubevirt.io"), "{out}");
        assert!(out.contains("datavolumes.cdi.kubevirt.io"), "{out}");
    }
    let crds = ok(&mut cluster.kubectl(&["get", "crd", "-o", "name"]));
    assert_eq!(crds.lines().count(), 11, "{crds}");
    assert!(crds.contains("migrationpolicies.migrations.kubevirt.io"), "{crds}");
    ok(&mut cluster.kubectl(&["api-resources", "--api-group=kubevirt.io"]));

    // Two replicas: one takes the Lease and acts, the other waits.
    cluster.controller = Some(cluster.spawn_controller(1));
    let lease_holder = |cluster: &Cluster| {
        cluster
            .get(&["lease", "virt-controller", "-n", "kube-system"], "{.spec.holderIdentity}")
            .filter(|h| !h.is_empty())
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let first = wait_for("the first replica to take the lease", 60, || lease_holder(&cluster));
    assert_eq!(first, format!("{hostname}_{}", cluster.controller.as_ref().unwrap().id()));
    cluster.standby = Some(cluster.spawn_controller(2));
    cluster.handler = Some(cluster.spawn_handler(1));
    // virt-handler's device plugins registered with the kubelet: the node advertises the pool.
    for res in ["kvm", "tun"] {
        let path = format!("{{.status.capacity.devices\\.kubevirt\\.io/{res}}} {{.status.allocatable.devices\\.kubevirt\\.io/{res}}}");
        let adv = wait_for("the node to advertise the device plugin's resource", 60, || {
            cluster.get(&["node", "virtrs-node"], &path).filter(|s| s.trim() != "")
        });
        eprintln!("node virtrs-node: devices.kubevirt.io/{res} capacity/allocatable: {adv}");
        assert_eq!(adv, "1k 1k", "devices.kubevirt.io/{res}");
    }
    // node2's agent, in node2's mount namespace: its device plugins on node2's kubelet.
    let handler2 = cluster.spawn_handler_node2(1);
    cluster.node2.as_mut().unwrap().handler = Some(handler2);
    wait_for("node2 to advertise devices.kubevirt.io/kvm", 60, || {
        cluster
            .get(&["node", support::NODE2], "{.status.allocatable.devices\\.kubevirt\\.io/kvm}")
            .filter(|s| s.trim() == "1k")
    });
    // The kubelet restarts (it removes every plugin socket): the plugins serve and register again,
    // and the launcher pod below gets its devices from the new registration.
    let restarted = Instant::now();
    cluster.restart_kubelet();
    let handler_log = tmp.join("handler-1.log");
    let registrations = || {
        std::fs::read_to_string(&handler_log)
            .unwrap_or_default()
            .matches("registered with the kubelet")
            .count()
    };
    wait_for("the device plugins to register again after the kubelet restart", 120, || {
        (registrations() >= 4).then_some(())
    });
    let log = std::fs::read_to_string(&handler_log).unwrap();
    assert!(log.contains("was removed (the kubelet restarted)"), "{log}");
    ok(&mut cluster.kubectl(&["wait", "--for=condition=Ready", "node/virtrs-node", "--timeout=120s"]));
    let adv = wait_for("the node to advertise devices.kubevirt.io/kvm again", 60, || {
        cluster
            .get(&["node", "virtrs-node"], "{.status.allocatable.devices\\.kubevirt\\.io/kvm}")
            .filter(|s| s == "1k")
    });
    eprintln!(
        "kubelet restarted, device plugins registered again, allocatable kvm {adv} in {:?}",
        restarted.elapsed()
    );

    // A plain pod on the same node, beside the VM's launcher.
    ok(&mut cluster.kubectl(&[
        "run",
        "plain",
        "-n",
        "default",
        "--image=localhost/pause:1",
        "--image-pull-policy=Never",
        "--restart=Never",
    ]));

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

    // Its containerDisk's registry is not reachable here: the booting VM is the project's own.
    ok(&mut cluster.kubectl(&["delete", "vm", "vm-cirros", "-n", ns]));
    let vm_file = tmp.join("vm-kernel.yaml");
    // It asks to move rather than stop when its node is drained (evacuation, below).
    let vm_yaml = kernel_vm_net_yaml("vm-cirros", &kernel_image).replacen(
        "    spec:\n      domain:",
        "    spec:\n      evictionStrategy: LiveMigrate\n      domain:",
        1,
    );
    assert!(vm_yaml.contains("evictionStrategy"), "{vm_yaml}");
    std::fs::write(&vm_file, vm_yaml).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", vm_file.to_str().unwrap()]));

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
    // Unprivileged, with /dev/kvm and /dev/net/tun from the device plugins.
    let sc = cluster.get(&["pod", &pod, "-n", ns], "{.spec.containers[0].securityContext}").unwrap();
    eprintln!("launcher pod securityContext: {sc}");
    assert!(sc.contains(r#""privileged":false"#), "{sc}");
    assert!(sc.contains(r#""add":["SYS_ADMIN"]"#), "only the jail's capability: {sc}");
    let limits = cluster.get(&["pod", &pod, "-n", ns], "{.spec.containers[0].resources.limits}").unwrap();
    assert!(limits.contains(r#""devices.kubevirt.io/kvm":"1""#), "{limits}");
    assert!(limits.contains(r#""devices.kubevirt.io/tun":"1""#), "{limits}");
    let devs = ok(&mut cluster.kubectl(&[
        "exec",
        "-n",
        ns,
        &pod,
        "--",
        "/bin/busybox",
        "ls",
        "-l",
        "/dev/kvm",
        "/dev/net/tun",
    ]));
    eprintln!("in the launcher pod: {devs}");
    assert!(devs.lines().filter(|l| l.starts_with('c')).count() == 2, "{devs}");
    let mem =
        cluster.get(&["pod", &pod, "-n", ns], "{.spec.containers[0].resources.requests.memory}").unwrap();
    assert_eq!(mem, ((256u64 << 20) + (192 << 20) + (8 << 20)).to_string(), "guest memory + overhead");
    let running_by = Instant::now() + Duration::from_secs(60);
    let vmi = wait_for("VMI Running with its node", 70, || {
        let s = cluster.get(
            &["vmi", "vm-cirros", "-n", ns],
            "{.status.phase} {.status.nodeName} {.metadata.labels.kubevirt\\.io/nodeName}",
        )?;
        // A launcher that failed: its log says why.
        if s.starts_with("Failed") || Instant::now() > running_by {
            let logs = run(&mut cluster.kubectl(&["logs", "-n", ns, &pod]));
            let status = cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.status}");
            let pod_status = cluster.get(&["pod", &pod, "-n", ns], "{.status.containerStatuses}");
            panic!(
                "VMI not Running: {status:?}\npod: {pod_status:?}\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        s.starts_with("Running ").then_some(s)
    });
    assert_eq!(vmi, "Running virtrs-node virtrs-node");
    wait_for("VM printableStatus Running", 60, || {
        cluster.get(&["vm", "vm-cirros", "-n", ns], "{.status.printableStatus}").filter(|s| s == "Running")
    });
    eprintln!("start -> VMI Running (the launcher runs the machine): {:?}", start.elapsed());
    // The guest boots under emulation; its serial console reaches `kubectl logs` through the
    // API server.
    wait_for("the guest's boot in the launcher pod's log", 240, || {
        let logs = run(&mut cluster.kubectl(&["logs", "-n", ns, &pod]));
        String::from_utf8_lossy(&logs.stdout).contains("Hello from the guest").then_some(())
    });
    eprintln!("start -> guest userspace on the console: {:?}", start.elapsed());
    // The VM the migration part moves (no interfaces: a tap cannot move) boots meanwhile.
    support::migration::start(&cluster, ns);
    support::between_nodes::start(&cluster, ns);
    // The launcher opened /dev/kvm read-write in its unprivileged container (this host's KVM is
    // nested without vmx: the launcher says so and emulates; without the device it would say
    // "no usable /dev/kvm").
    let logs =
        String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, &pod])).stdout).into_owned();
    let accel = logs
        .lines()
        .find(|l| l.contains("virt-launcher: machine") && l.contains(" runs on "))
        .unwrap_or_default();
    eprintln!("launcher: {accel}");
    assert!(
        accel.contains("hardware KVM") || accel.contains("/dev/kvm exists but the CPU has no vmx/svm"),
        "the launcher did not use /dev/kvm: {accel}\n{logs}"
    );
    // Its NIC, masqueraded behind the pod's address by the node agent inside the pod (as KubeVirt):
    // DHCP gives it 10.0.2.2, it reaches the pod network, and the pod's address reaches it.
    let pod_ip = cluster.get(&["pod", &pod, "-n", ns], "{.status.podIP}").unwrap();
    wait_for("the guest's network checks on its console", 120, || {
        let logs = String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, &pod])).stdout)
            .into_owned();
        logs.contains("VIRT-NET: httpd up").then_some(logs)
    });
    let logs =
        String::from_utf8_lossy(&run(&mut cluster.kubectl(&["logs", "-n", ns, &pod])).stdout).into_owned();
    assert!(logs.contains("VIRT-NET: lease of 10.0.2.2 obtained"), "no DHCP lease: {logs}");
    assert!(logs.contains("VIRT-NET: ping 10.244.0.1 ok"), "the guest did not reach the pod network: {logs}");
    let page = wait_for("the guest's page through the pod's address", 60, || {
        let get = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())";
        let out = run(Command::new("ip")
            .args(["netns", "exec", "virtrs-k8s", "python3", "-c", get])
            .arg(format!("http://{pod_ip}:8080/")));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    });
    assert_eq!(page.trim(), "guest-says-hello");
    let iface = cluster.get(
        &["vmi", "vm-cirros", "-n", ns],
        "{.status.interfaces[0].name} {.status.interfaces[0].ipAddress}",
    );
    // The pod's address, as KubeVirt reports a masquerade interface.
    assert_eq!(iface.as_deref(), Some(format!("default {pod_ip}").as_str()), "status.interfaces");
    eprintln!("start -> guest served a page through the pod network: {:?}", start.elapsed());
    wait_for("the plain pod Running beside the VM", 60, || {
        cluster
            .get(&["pod", "plain", "-n", "default"], "{.status.phase} {.spec.nodeName}")
            .filter(|s| s == "Running virtrs-node")
    });

    // The standby replica waited and did nothing.
    let standby_log = std::fs::read_to_string(tmp.join("controller-2.log")).unwrap();
    assert!(standby_log.contains("waiting for lease"), "{standby_log}");
    assert!(!standby_log.contains("watching"), "the standby acts only once it leads: {standby_log}");

    // SIGKILL the leading controller and the node agent, start the agent again: the standby
    // takes the Lease over once it expires; the same launcher (same pod, same pid) runs on,
    // nothing is created or started twice, the VMI stays Running.
    let vmi_uid = cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.metadata.uid}").unwrap();
    let run_dir = node_state.join("vmis").join(&vmi_uid);
    let pid = std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap();
    for c in [cluster.controller.as_mut().unwrap(), cluster.handler.as_mut().unwrap()] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // With the agent (and its admission webhook) down, unrelated objects are still stored; a VM,
    // which the webhook checks, is not stored unchecked (failurePolicy Fail, as KubeVirt).
    ok(&mut cluster.kubectl(&[
        "create",
        "configmap",
        "while-the-webhook-is-down",
        "-n",
        ns,
        "--from-literal=a=b",
    ]));
    let unchecked = tmp.join("vm-unchecked.yaml");
    std::fs::write(&unchecked, kernel_vm_yaml("vm-unchecked", &kernel_image)).unwrap();
    let refused = run(&mut cluster.kubectl(&["apply", "-n", ns, "-f", unchecked.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("virtualmachine-validator.kubevirt.io"), "{err}");
    cluster.controller = cluster.standby.take();
    cluster.handler = Some(cluster.spawn_handler(2));
    let restarted = Instant::now();
    // The agent's first pass after the restart: it reattaches and reads the launcher.
    wait_for("the restarted agent to reattach", 60, || {
        let log = std::fs::read_to_string(tmp.join("handler-2.log")).unwrap_or_default();
        log.contains("reattached").then_some(())
    });
    // Its device plugins took over the SIGKILLed agent's sockets and registered.
    wait_for("the restarted agent's device plugins to register", 60, || {
        let log = std::fs::read_to_string(tmp.join("handler-2.log")).unwrap_or_default();
        (log.matches("registered with the kubelet").count() >= 2).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let pods =
        cluster.get(&["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-cirros"], "{.items[*].metadata.name}");
    assert_eq!(pods.as_deref(), Some(pod.as_str()), "one launcher pod, the same");
    assert_eq!(std::fs::read_to_string(run_dir.join("launcher.pid")).unwrap(), pid, "the same launcher");
    let phase = cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.status.phase} {.metadata.uid}").unwrap();
    assert_eq!(phase, format!("Running {vmi_uid}"));
    let console = std::fs::read_to_string(run_dir.join("console.log")).unwrap();
    assert_eq!(console.matches("Linux version").count(), 1, "the guest booted once");
    eprintln!("controller and agent killed and restarted, launcher re-adopted in {:?}", restarted.elapsed());
    let standby_id = format!("{hostname}_{}", cluster.controller.as_ref().unwrap().id());
    wait_for("the standby to take the lease over", 60, || {
        lease_holder(&cluster).filter(|h| *h == standby_id)
    });
    eprintln!("the standby replica leads {:?} after the leader was killed", restarted.elapsed());

    // The subresources API through the API server (aggregated; served by the restarted
    // virt-handler, which registered itself again): the console shows the guest's boot, pause and
    // unpause reach the launcher.
    let virtctl = workspace_bin("virtctl");
    wait_for("the subresources APIService Available", 60, || {
        cluster
            .get(
                &["apiservice", "v1.subresources.kubevirt.io"],
                r#"{.status.conditions[?(@.type=="Available")].status}"#,
            )
            .filter(|s| s == "True")
    });
    let t = Instant::now();
    let seen = console_until(&virtctl, &cluster.kubeconfig, ns, "vm-cirros", "Hello from the guest");
    assert!(seen.contains("Linux version"), "the console replays the boot: {seen}");
    eprintln!("virtctl console through the API server showed the boot in {:?}", t.elapsed());
    // VNC through the API server: `virtctl vnc --proxy-only` serves a local port; a client on it
    // gets QEMU's RFB greeting from the launcher pod's display.
    let t = Instant::now();
    let mut proxy = Command::new(&virtctl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["vnc", "vm-cirros", "--proxy-only", "-n", ns])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(proxy.stdout.take().unwrap()), &mut line)
        .unwrap();
    let port: serde_json::Value =
        serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let mut rfb = std::net::TcpStream::connect(("127.0.0.1", port["port"].as_u64().unwrap() as u16)).unwrap();
    rfb.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut greeting = [0u8; 12];
    std::io::Read::read_exact(&mut rfb, &mut greeting).unwrap();
    assert!(greeting.starts_with(b"RFB 003."), "not an RFB greeting: {greeting:?}");
    drop(rfb);
    let _ = proxy.kill();
    let _ = proxy.wait();
    eprintln!("virtctl vnc through the API server: RFB greeting in {:?}", t.elapsed());
    // port-forward through the API server: the agent dials the guest inside its pod.
    let t = Instant::now();
    let mut pf = Command::new(&virtctl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["port-forward", "--stdio", &format!("vmi/vm-cirros/{ns}"), "8080"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(pf.stdin.as_mut().unwrap(), b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let out = pf.wait_with_output().unwrap();
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        answer.contains("guest-says-hello"),
        "port-forward: {answer}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("virtctl port-forward through the API server: the guest's page in {:?}", t.elapsed());
    let virtctl_ok = |args: &[&str]| {
        ok(Command::new(&virtctl).arg("--kubeconfig").arg(&cluster.kubeconfig).args(args).args(["-n", ns]))
    };
    let cl = &cluster;
    let conditions = |want: &'static str| {
        move || {
            cl.get(
                &["vmi", "vm-cirros", "-n", ns],
                r#"{.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Paused")].status}"#,
            )
            .filter(|s| s == want)
        }
    };
    let t = Instant::now();
    virtctl_ok(&["pause", "vmi", "vm-cirros"]);
    wait_for("the VMI Paused and not Ready", 30, conditions("False/True"));
    let again = run(Command::new(&virtctl).arg("--kubeconfig").arg(&cluster.kubeconfig).args([
        "pause",
        "vmi",
        "vm-cirros",
        "-n",
        ns,
    ]));
    assert!(!again.status.success(), "pausing a paused VMI is refused");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already paused"), "{again:?}");
    virtctl_ok(&["unpause", "vmi", "vm-cirros"]);
    wait_for("the VMI Ready again", 30, conditions("True/"));
    eprintln!("virtctl pause + unpause through the API server: {:?}", t.elapsed());

    // Evacuation (evictionStrategy: LiveMigrate): the VMI has a disruption budget over its
    // launcher; an eviction of the launcher (what `kubectl drain` sends) is refused by the eviction
    // webhook with 429, the VMI is marked with the node to leave, and virt-controller creates a
    // migration off it. The VM runs on, in the same pod.
    let budget = wait_for("the VMI's disruption budget", 60, || {
        cluster.get(&["pdb", "kubevirt-disruption-budget-vm-cirros", "-n", ns], "{.spec.minAvailable}")
    });
    assert_eq!(budget, "1");
    let eviction = tmp.join("eviction.json");
    std::fs::write(
        &eviction,
        format!(r#"{{"apiVersion":"policy/v1beta1","kind":"Eviction","metadata":{{"name":"{pod}","namespace":"{ns}"}}}}"#),
    )
    .unwrap();
    let evicted = run(&mut cluster.kubectl(&[
        "create",
        "--raw",
        &format!("/api/v1/namespaces/{ns}/pods/{pod}/eviction"),
        "-f",
        eviction.to_str().unwrap(),
    ]));
    let err = String::from_utf8_lossy(&evicted.stderr);
    assert!(!evicted.status.success(), "the launcher's eviction was refused");
    assert!(err.contains("Eviction triggered evacuation of VMI") || err.contains("TooManyRequests"), "{err}");
    let migration = wait_for("an evacuation migration of the VMI", 60, || {
        cluster
            .get(
                &["vmim", "-n", ns],
                r#"{range .items[?(@.spec.vmiName=="vm-cirros")]}{.metadata.name} {.metadata.annotations.kubevirt\.io/evacuationMigration}{"\n"}{end}"#,
            )
            .filter(|s| s.starts_with("kubevirt-evacuation-"))
    });
    assert!(migration.trim_end().ends_with(" virtrs-node"), "{migration}");
    assert_eq!(cluster.get(&["pod", &pod, "-n", ns], "{.status.phase}").as_deref(), Some("Running"));
    eprintln!("eviction of the launcher refused; evacuation migration {}", migration.trim());

    // Live migration into a new launcher pod (tests/support/migration.rs).
    let mig_checks = support::migration::run_part(&cluster, ns);
    // Live migration from the first node to virtrs-node2 (tests/support/between_nodes.rs).
    support::between_nodes::run_part(&cluster, ns);

    // The components' manifests (RBAC, virt-controller's Deployment, virt-handler's DaemonSet)
    // pass the API server's validation (server-side dry run; namespace kubevirt exists: the
    // agent registered the subresources API's Service there).
    let manifests = tmp.join("manifests.json");
    std::fs::write(&manifests, ok(Command::new(bin).args(["print-manifests", "--allow-emulation"]))).unwrap();
    let applied = ok(&mut cluster.kubectl(&["apply", "--dry-run=server", "-f", manifests.to_str().unwrap()]));
    for what in ["deployment.apps/virt-controller", "daemonset.apps/virt-handler", "clusterrole.rbac"] {
        assert!(applied.contains(what), "{applied}");
    }

    // Admission: what the local node refuses, the cluster refuses with the same message, naming
    // the field (the webhook runs the node's own checks).
    let bad = tmp.join("vm-bad.yaml");
    let bad_vm = kernel_vm_yaml("vm-bad", &kernel_image).replacen("spec:\n", "spec:\n  running: true\n", 1);
    assert!(bad_vm.contains("running: true"), "{bad_vm}");
    std::fs::write(&bad, bad_vm).unwrap();
    let refused = run(&mut cluster.kubectl(&["apply", "-n", ns, "-f", bad.to_str().unwrap()]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("The VirtualMachine \"vm-bad\" is invalid") && err.contains("spec.running"),
        "{err}"
    );
    assert_eq!(cluster.get(&["vm", "vm-bad", "-n", ns], "{.metadata.name}"), None, "nothing stored");

    // The other kinds the node validates, through their own webhooks: a field the CRD does not
    // know is kept by the API server (not pruned) and refused by the webhook by path, as the node
    // refuses it; a good DataVolume is stored.
    let apply_refused = |name: &str, yaml: &str| {
        let file = tmp.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let refused = run(&mut cluster.kubectl(&["apply", "-n", ns, "-f", file.to_str().unwrap()]));
        let err = String::from_utf8_lossy(&refused.stderr).to_string();
        assert!(!refused.status.success(), "{name} was stored: {err}");
        assert!(!err.contains("ValidationError("), "refused by kubectl, not the webhook: {err}");
        err
    };
    let dv = |name: &str, http: &str| {
        format!(
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  \
             source:\n    http:\n      {http}\n  storage:\n    resources:\n      requests:\n        \
             storage: 500Mi\n"
        )
    };
    let err =
        apply_refused("dv-bad", &dv("dv-bad", "url: https://example.com/disk.img\n      secretReff: creds"));
    assert!(
        err.contains("The DataVolume \"dv-bad\" is invalid")
            && err.contains("spec.source.http.secretReff: unknown field"),
        "{err}"
    );
    assert_eq!(cluster.get(&["dv", "dv-bad", "-n", ns], "{.metadata.name}"), None, "nothing stored");
    // Valid, so stored; its URL is missing on the test's server, so its import fails (below).
    let missing = support::datavolume::url(&cluster, "missing.img");
    let good = tmp.join("dv-good.yaml");
    std::fs::write(&good, dv("dv-good", &format!("url: {missing}"))).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", good.to_str().unwrap()]));
    assert_eq!(
        cluster.get(&["dv", "dv-good", "-n", ns], "{.spec.source.http.url}").as_deref(),
        Some(missing.as_str())
    );
    let err = apply_refused(
        "mig-bad",
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: mig-bad\n\
         spec:\n  vmiName: vm-cirros\n  targetNode: elsewhere\n",
    );
    assert!(
        err.contains("The VirtualMachineInstanceMigration \"mig-bad\" is invalid")
            && err.contains("spec.targetNode: unknown field"),
        "{err}"
    );
    // A valid migration is stored (virt-controller then fails it: vm-cirros has a pod-network
    // interface, which cannot move); its spec cannot change afterwards (an update review), its
    // labels can.
    let mig = tmp.join("mig-ok.yaml");
    std::fs::write(
        &mig,
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: mig-ok\nspec:\n  \
         vmiName: vm-cirros\n",
    )
    .unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", mig.to_str().unwrap()]));
    let patched = run(&mut cluster.kubectl(&[
        "patch",
        "vmim",
        "mig-ok",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"vmiName":"vm-other"}}"#,
    ]));
    let err = String::from_utf8_lossy(&patched.stderr);
    assert!(
        !patched.status.success() && err.contains("update of Migration object's spec is restricted"),
        "{err}"
    );
    ok(&mut cluster.kubectl(&["label", "vmim", "mig-ok", "-n", ns, "e2e=yes"]));
    ok(&mut cluster.kubectl(&["delete", "vmim", "mig-ok", "-n", ns]));
    let err = apply_refused(
        "it-bad",
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\nmetadata:\n  \
         name: e2e.bad\nspec:\n  cpu:\n    guest: 0\n  memory:\n    guest: 128Mi\n",
    );
    assert!(err.contains("spec.cpu.guest"), "{err}");
    eprintln!("admission: DataVolume, migration (create, update) and instancetype refused by their webhooks");

    // Instancetypes on the cluster: a VM naming a cluster instancetype (and no memory of its
    // own) gets a VMI with the instancetype's CPU and memory, resolved by the controller with
    // the local node's own function, and a launcher pod sized from it.
    let it = tmp.join("instancetype.yaml");
    std::fs::write(
        &it,
        "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\nmetadata:\n  name: \
         e2e.small\nspec:\n  cpu:\n    guest: 1\n  memory:\n    guest: 320Mi\n",
    )
    .unwrap();
    ok(&mut cluster.kubectl(&["apply", "-f", it.to_str().unwrap()]));
    let typed = kernel_vm_yaml("vm-typed", &kernel_image)
        .replacen(
            "spec:\n  runStrategy: Halted\n",
            "spec:\n  runStrategy: Always\n  instancetype:\n    name: e2e.small\n",
            1,
        )
        .replace("        memory:\n          guest: 256Mi\n", "");
    assert!(typed.contains("e2e.small") && !typed.contains("256Mi"), "{typed}");
    let typed_file = tmp.join("vm-typed.yaml");
    std::fs::write(&typed_file, typed).unwrap();
    ok(&mut cluster.kubectl(&["apply", "-n", ns, "-f", typed_file.to_str().unwrap()]));
    let memory = wait_for("the instancetype VM's VMI", 60, || {
        cluster.get(&["vmi", "vm-typed", "-n", ns], "{.spec.domain.memory.guest} {.spec.domain.cpu.sockets}")
    });
    assert_eq!(memory, "320Mi 1");
    let typed_mem = wait_for("the instancetype VM's launcher pod", 60, || {
        cluster
            .get(
                &["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-typed"],
                "{.items[0].spec.containers[0].resources.requests.memory}",
            )
            .filter(|m| !m.is_empty())
    });
    assert_eq!(
        typed_mem,
        ((320u64 << 20) + (192 << 20) + (8 << 20)).to_string(),
        "instancetype memory + overhead"
    );
    ok(&mut cluster.kubectl(&["delete", "vm", "vm-typed", "-n", ns, "--wait=false"]));
    wait_for("the instancetype VM's VMI to go", 120, || {
        cluster.get(&["vmi", "vm-typed", "-n", ns], "{.metadata.name}").is_none().then_some(())
    });

    // DataVolumes: an import into a claim of the local provisioner, a VM booting from it, a
    // failed import, and the cascade on delete.
    support::datavolume::run(&cluster, ns, "dv-good");

    support::migration::stopped(&cluster, ns, mig_checks);

    // start, stop and restart of VMs are served through the API server (the subresources API,
    // as KubeVirt's virt-api): discovery lists them, and a plain PUT with KubeVirt's StopOptions
    // (what KubeVirt's own virtctl sends) stops the VM.
    let discovery = ok(&mut cluster.kubectl(&["get", "--raw", "/apis/subresources.kubevirt.io/v1"]));
    for verb in ["start", "stop", "restart", "migrate"] {
        assert!(discovery.contains(&format!("\"virtualmachines/{verb}\"")), "{discovery}");
    }
    let refused = run(Command::new(&virtctl).env("KUBECONFIG", &cluster.kubeconfig).args([
        "start",
        "vm-cirros",
        "-n",
        ns,
    ]));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && err.contains("VM is already running"), "{err}");
    let stopped = Instant::now();
    let options = cluster.dir.join("stop-options.json");
    std::fs::write(
        &options,
        r#"{"kind":"StopOptions","apiVersion":"subresources.kubevirt.io/v1","gracePeriod":5}"#,
    )
    .unwrap();
    ok(&mut cluster.kubectl(&[
        "replace",
        "--raw",
        &format!("/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachines/vm-cirros/stop"),
        "-f",
        options.to_str().unwrap(),
    ]));
    wait_for("the VMI and its pod to go after virtctl stop", 120, || {
        let vmi = cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.metadata.name}");
        let pod = cluster.get(&["pod", &pod, "-n", ns], "{.metadata.name}");
        (vmi.is_none() && pod.is_none()).then_some(())
    });
    wait_for("VM printableStatus Stopped", 60, || {
        cluster.get(&["vm", "vm-cirros", "-n", ns], "{.status.printableStatus}").filter(|s| s == "Stopped")
    });
    eprintln!("virtctl stop -> VMI and pod gone: {:?}", stopped.elapsed());
    let restarted = Instant::now();
    ok(Command::new(&virtctl).env("KUBECONFIG", &cluster.kubeconfig).args(["start", "vm-cirros", "-n", ns]));
    wait_for("VMI Running again after virtctl start", 120, || {
        cluster.get(&["vmi", "vm-cirros", "-n", ns], "{.status.phase}").filter(|s| s == "Running")
    });
    let pod = cluster
        .get(&["pods", "-n", ns, "-l", "kubevirt.io/domain=vm-cirros"], "{.items[0].metadata.name}")
        .unwrap();
    eprintln!("virtctl start -> VMI Running: {:?}", restarted.elapsed());

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
