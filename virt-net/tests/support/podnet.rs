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
        let (_dir, out, script) = lease_script(
            "[ \"$1\" = bound ] || exit 0",
            "ip addr add $ip/$mask dev $interface\n[ -n \"$router\" ] && ip route add default via $router",
        );
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
    /// Waits for the kernel's router-advertisement default route on eth0 (`ip -6 route show
    /// default`), then runs ISC `dhclient -6` once (the DHCPv6 client Debian guests use); the
    /// variables of its BOUND6 event, which also configured the address as dhclient-script does.
    pub fn dhcp6(&self) -> (String, HashMap<String, String>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let route = loop {
            let out = Command::new("ip")
                .args(["-n", &self.ns.name, "-6", "route", "show", "default"])
                .output()
                .expect("ip");
            let r = String::from_utf8_lossy(&out.stdout).to_string();
            let tentative = Command::new("ip")
                .args(["-n", &self.ns.name, "-6", "addr", "show", "dev", "eth0", "tentative"])
                .output()
                .expect("ip");
            if r.contains("via fe80::") && tentative.stdout.is_empty() {
                break r;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no router advertisement reached the guest: route {r:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let (dir, out, script) = lease_script(
            "case \"$reason\" in BOUND6|REBOOT6) ;; *) exit 0 ;; esac",
            "ip -6 addr add $new_ip6_address/$new_ip6_prefixlen dev $interface nodad",
        );
        let (lf, pf) = (dir.path().join("leases"), dir.path().join("pid"));
        let st = Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.ns.name, "dhclient", "-6", "-1", "-v", "-lf"])
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .arg("-sf")
            .arg(&script)
            .arg("eth0")
            .output()
            .expect("dhclient (scripts/install-deps.sh installs isc-dhcp-client)");
        // `-1` leaves dhclient running once bound; stop it.
        if let Ok(pid) = std::fs::read_to_string(&pf) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        assert!(
            st.status.success(),
            "dhclient -6: {}{}",
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
        let env = std::fs::read_to_string(&out)
            .unwrap_or_else(|e| {
                panic!("dhclient -6 bound nothing ({e}): {}", String::from_utf8_lossy(&st.stderr))
            })
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        (route, env)
    }
}

/// A DHCP client's hook script in a new temporary directory: past `guard` (which exits for events
/// other than a bound lease) it saves its environment to `lease.env` and runs `configure`. Returns
/// the directory (removed on drop), the env file and the script.
fn lease_script(guard: &str, configure: &str) -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lease.env");
    let script = dir.path().join("script.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{guard}\nenv > {}\n{configure}\nexit 0\n", out.display()))
        .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, out, script)
}
