//! A node network in namespaces the test creates: a namespace playing the node, the manager on it,
//! and "guests": namespaces whose eth0 is a veth plugged into a VMI's bridge next to its tap, with
//! the guest's MAC, where real clients (busybox udhcpc, TCP sockets) run.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::netns::{ip, Netns};
use virt_net::pod::{NetworkManager, NodeNetConfig, VmiNet};

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub struct Node {
    pub ns: Netns,
    pub mgr: NetworkManager,
    pub dir: tempfile::TempDir,
}

pub fn config(ns: &Netns, dir: &std::path::Path) -> NodeNetConfig {
    let mut cfg = NodeNetConfig::new(dir.to_path_buf());
    cfg.node_netns = Some(ns.name.clone());
    cfg.dns = vec![Ipv4Addr::new(10, 96, 0, 10)];
    cfg.search = vec!["default.svc.cluster.local".into(), "cluster.local".into()];
    cfg.mtu = 1400;
    cfg.prefix = format!("vq{}{}-", std::process::id() % 10000, SEQ.fetch_add(1, Ordering::SeqCst) % 10);
    cfg
}

impl Node {
    pub fn new() -> Self {
        let ns = Netns::new();
        ns.ip(&["link", "set", "lo", "up"]);
        let dir = tempfile::tempdir().unwrap();
        let mgr = NetworkManager::new(config(&ns, dir.path())).expect("node network");
        Self { ns, mgr, dir }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for n in self.mgr.list() {
            self.mgr.teardown(&n.uid);
        }
    }
}

/// A guest: a namespace whose eth0 (with the guest's MAC) is a port of `iface`'s bridge.
pub struct Guest {
    pub ns: Netns,
}

impl Guest {
    pub fn plug(net: &VmiNet, iface: usize) -> Self {
        let ns = Netns::new();
        let i = &net.interfaces[iface];
        let port = format!("gv{}", SEQ.fetch_add(1, Ordering::SeqCst) % 1000);
        ip(&[
            "-n", &net.netns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        ip(&["-n", &net.netns, "link", "set", "dev", &port, "master", &i.bridge, "up"]);
        ns.ip(&["link", "set", "dev", "eth0", "address", &i.request.mac.to_string()]);
        ns.ip(&["link", "set", "dev", "eth0", "up"]);
        ns.ip(&["link", "set", "dev", "lo", "up"]);
        Self { ns }
    }

    /// Runs busybox udhcpc once on eth0; the variables of its `bound` event, which also configured
    /// the address and default route as a guest's scripts do.
    pub fn dhcp(&self) -> HashMap<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lease.env");
        let script = dir.path().join("script.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > {}\nip addr add $ip/$mask dev $interface\n\
                 [ -n \"$router\" ] && ip route add default via $router\nexit 0\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns.name,
                "busybox",
                "udhcpc",
                "-i",
                "eth0",
                "-f",
                "-q",
                "-n",
                "-t",
                "8",
                "-T",
                "1",
            ])
            .args(["-O", "search", "-O", "staticroutes", "-O", "mtu", "-O", "hostname", "-s"])
            .arg(&script)
            .output()
            .expect("busybox udhcpc (scripts/install-deps.sh installs busybox-static)");
        assert!(
            st.status.success(),
            "udhcpc: {}{}",
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect()
    }
}
