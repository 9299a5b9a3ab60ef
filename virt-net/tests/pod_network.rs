//! The node's pod network with real parts, in namespaces the tests create and remove: a namespace
//! plays the node, guests are namespaces plugged into a VMI's bridge with the guest's MAC, and run
//! busybox `udhcpc` against our DHCP server and real TCP through the masquerade rules.

#[path = "support/netns.rs"]
mod netns;
#[path = "support/podnet.rs"]
mod podnet;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use podnet::{Guest, Node};
use virt_core::net::MacAddr;
use virt_net::endpoint::EndpointLookup;
use virt_net::spec::{default_cidr4, default_cidr6, AddressRange, IfaceKind, IfaceRequest, SecondaryNetwork};

fn masq(mac: u8, ports: Vec<(bool, u16)>) -> Vec<IfaceRequest> {
    vec![IfaceRequest {
        name: "default".into(),
        mac: MacAddr([2, 0, 0, 0, 0, mac]),
        kind: IfaceKind::Masquerade { cidr4: default_cidr4(), cidr6: default_cidr6(), ports },
    }]
}

fn listen(ns: &netns::Netns, addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || TcpListener::bind(addr).expect("bind"))
}

fn connect(ns: &netns::Netns, addr: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = addr.parse().unwrap();
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)))
}

#[test]
fn udhcpc_gets_the_lease_and_kubevirts_options() {
    let node = Node::new();
    let t = Instant::now();
    let net = node.mgr.setup("uid-lease", "default", "vmi-a", &masq(1, vec![])).expect("setup");
    eprintln!("network setup of one masquerade VMI: {:?}", t.elapsed());
    let guest = Guest::plug(&net, 0);
    let lease = guest.dhcp();
    assert_eq!(lease["ip"], "10.0.2.2");
    assert_eq!(lease["mask"], "24");
    assert_eq!(lease["router"].trim(), "10.0.2.1");
    assert_eq!(lease["dns"].trim(), "10.96.0.10");
    assert_eq!(lease["mtu"], "1400");
    assert_eq!(lease["hostname"], "vmi-a");
    assert_eq!(lease["domain"], "default.svc.cluster.local");
    assert!(
        lease["search"].contains("default.svc.cluster.local") && lease["search"].contains("cluster.local"),
        "{lease:?}"
    );
    assert_eq!(lease["staticroutes"].trim(), "0.0.0.0/0 10.0.2.1");
    assert_eq!(lease["lease"], "86400");
    // What port-forward and ssh use.
    let ep = node.mgr.endpoint("default", "vmi-a").expect("endpoint");
    assert_eq!(ep.guest_ipv4, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(ep.netns, Some(net.netns_path()));
    let st = net.status();
    // A masquerade interface shows the pod's addresses (as KubeVirt's), not the guest's 10.0.2.2.
    let pod6 = net.pod6.map(|a| a.to_string()).unwrap_or_default();
    assert_eq!(st[0].ip_addresses, vec![net.pod4.to_string(), pod6]);
    assert_eq!(st[0].mac.as_deref(), Some("02:00:00:00:00:01"));
    assert_eq!(st[0].info_source.as_deref(), Some("domain"));
}

#[test]
fn masquerade_outbound_and_ports_limited_inbound_with_real_tcp() {
    let node = Node::new();
    let net = node.mgr.setup("uid-masq", "default", "vmi-m", &masq(2, vec![(false, 8022)])).expect("setup");
    let guest = Guest::plug(&net, 0);
    guest.dhcp();
    // Outbound: the node sees the pod's address, not the guest's.
    let l = listen(&node.ns, "10.244.0.1:18081");
    let mut c = connect(&guest.ns, "10.244.0.1:18081").expect("guest -> node");
    let (mut s, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(net.pod4), "masqueraded behind the pod address");
    c.write_all(b"out").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"out");
    // Inbound: only the listed port reaches the guest.
    let open = listen(&guest.ns, "0.0.0.0:8022");
    let _closed = listen(&guest.ns, "0.0.0.0:8023");
    let pod = net.pod4;
    let mut c = connect(&node.ns, &format!("{pod}:8022")).expect("node -> pod:8022 reaches the guest");
    let (mut s, peer) = open.accept().unwrap();
    assert_eq!(peer.ip(), "10.244.0.1".parse::<std::net::IpAddr>().unwrap());
    c.write_all(b"in").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"in");
    let refused = connect(&node.ns, &format!("{pod}:8023"));
    assert!(refused.is_err(), "8023 is not in ports: the guest must not be reached");
    // The port-forward path: from inside the VMI's namespace to the guest's address.
    let ep = node.mgr.endpoint("default", "vmi-m").unwrap();
    let vmi_ns = netns::Netns { name: net.netns.clone() };
    let reached = connect(&vmi_ns, &format!("{}:8023", ep.guest_ipv4.unwrap()));
    std::mem::forget(vmi_ns); // owned by the manager
    assert!(reached.is_ok(), "the VMI's namespace reaches every guest port");
}

/// IPv6 on the masquerade binding, as KubeVirt's: the guest's kernel takes its default route from
/// our router advertisement (the VMI bridge's link-local address, the prefix on-link), ISC dhclient
/// takes fd10:0:2::2 over DHCPv6, and the guest reaches the node masqueraded behind the pod's IPv6
/// address.
#[test]
fn router_advertisements_and_dhcpv6_give_the_guest_ipv6() {
    let node = Node::new();
    let net = node.mgr.setup("uid-v6", "default", "vmi-6", &masq(6, vec![])).expect("setup");
    let guest = Guest::plug(&net, 0);
    let (route, lease) = guest.dhcp6();
    assert!(route.contains("dev eth0") && route.contains("proto ra"), "default route from the RA: {route}");
    assert_eq!(lease["new_ip6_address"], "fd10:0:2::2", "{lease:?}");
    assert!(lease["new_dhcp6_domain_search"].contains("cluster.local"), "{lease:?}");
    assert!(lease["new_dhcp6_server_id"].len() > 4, "{lease:?}");
    let onlink = std::process::Command::new("ip")
        .args(["-n", &guest.ns.name, "-6", "route", "show", "fd10:0:2::/120"])
        .output()
        .unwrap();
    // The kernel files the advertised prefix as its own on-link route, with the RA's lifetime.
    let onlink = String::from_utf8_lossy(&onlink.stdout);
    assert!(
        onlink.contains("dev eth0") && onlink.contains("expires"),
        "the prefix is on-link from the RA: {onlink}"
    );
    // Outbound IPv6: the node sees the pod's IPv6 address.
    let l = listen(&node.ns, "[fd10:244::1]:18086");
    let mut c = connect(&guest.ns, "[fd10:244::1]:18086").expect("guest -> node over IPv6");
    let (mut s, peer) = l.accept().unwrap();
    assert_eq!(
        Some(peer.ip()),
        net.pod6.map(std::net::IpAddr::V6),
        "masqueraded behind the pod's IPv6 address"
    );
    c.write_all(b"v6").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"v6");
}

#[test]
fn the_nft_ruleset_matches_its_snapshot() {
    let node = Node::new();
    let net = node
        .mgr
        .setup("uid-nft", "default", "vmi-n", &masq(3, vec![(false, 22), (false, 80), (true, 53)]))
        .expect("setup");
    let listing = virt_net::netns::nft_cmd(Some(&net.netns), &["list", "ruleset"], "").unwrap();
    let got = virt_net::nft::normalize_listing(&listing);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/masquerade.nft");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("snapshot (UPDATE_SNAPSHOTS=1 writes it)");
    assert_eq!(got, want, "nft list ruleset in the VMI's namespace differs from {}", path.display());
}

#[test]
fn teardown_and_sweep_leave_nothing() {
    let node = Node::new();
    let a = node.mgr.setup("uid-a", "default", "a", &masq(4, vec![])).unwrap();
    let b = node.mgr.setup("uid-b", "default", "b", &masq(5, vec![])).unwrap();
    assert_ne!(a.pod4, b.pod4);
    assert!(virt_net::netns::exists(&a.netns));
    node.mgr.teardown("uid-a");
    assert!(!virt_net::netns::exists(&a.netns));
    assert!(virt_net::netns::ip(Some(&node.ns.name), &["link", "show", "dev", &a.node_veth]).is_err());
    assert!(node.mgr.endpoint("default", "a").is_none());
    // A node restart: a new manager on the same state finds b's record; b no longer runs.
    let cfg = node.mgr.config().clone();
    let again = virt_net::pod::NetworkManager::new(cfg).unwrap();
    let removed = again.sweep(&|_| false);
    assert_eq!(removed, vec!["uid-b".to_string()]);
    assert!(!virt_net::netns::exists(&b.netns));
    assert!(virt_net::netns::ip(Some(&node.ns.name), &["link", "show", "dev", &b.node_veth]).is_err());
    assert_eq!(std::fs::read_dir(node.dir.path()).unwrap().count(), 0, "records removed");
}

#[test]
fn a_failed_setup_leaves_nothing_half_set_up() {
    let node = Node::new();
    let bad = vec![IfaceRequest {
        name: "sec".into(),
        mac: MacAddr([2, 0, 0, 0, 0, 6]),
        kind: IfaceKind::Secondary(SecondaryNetwork {
            nad: "default/x".into(),
            bridge: "br-missing".into(),
            range: None,
        }),
    }];
    let e = node.mgr.setup("uid-bad", "default", "bad", &bad).unwrap_err();
    assert!(e.to_string().contains("br-missing"), "{e}");
    let prefix = node.mgr.config().prefix.clone();
    let left: Vec<_> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    let links = virt_net::netns::ip(Some(&node.ns.name), &["-o", "link"]).unwrap();
    assert!(!links.contains("vh"), "a veth left on the node: {links}");
    assert_eq!(std::fs::read_dir(node.dir.path()).unwrap().count(), 0);
}

#[test]
fn bridge_binding_hands_the_guest_the_pod_address() {
    let node = Node::new();
    let req = vec![IfaceRequest {
        name: "default".into(),
        mac: MacAddr([2, 0, 0, 0, 0, 7]),
        kind: IfaceKind::PodBridge,
    }];
    let net = node.mgr.setup("uid-br", "default", "vmi-br", &req).unwrap();
    let guest = Guest::plug(&net, 0);
    let lease = guest.dhcp();
    assert_eq!(lease["ip"], net.pod4.to_string());
    assert_eq!(lease["router"].trim(), "10.244.0.1");
    let l = listen(&node.ns, "10.244.0.1:18082");
    connect(&guest.ns, "10.244.0.1:18082").expect("guest reaches the node over the pod network");
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(net.pod4));
}

#[test]
fn two_vms_on_one_secondary_network_reach_each_other() {
    let node = Node::new();
    node.ns.ip(&["link", "add", "br-sec", "type", "bridge"]);
    node.ns.ip(&["link", "set", "br-sec", "up"]);
    let sec = SecondaryNetwork {
        nad: "default/sec".into(),
        bridge: "br-sec".into(),
        range: Some(AddressRange {
            subnet: "192.168.50.0/24".parse().unwrap(),
            start: Ipv4Addr::new(192, 168, 50, 10),
            end: Ipv4Addr::new(192, 168, 50, 20),
            gateway: None,
        }),
    };
    let req = |m| {
        let mut v = masq(m, vec![]);
        v.push(IfaceRequest {
            name: "sec".into(),
            mac: MacAddr([2, 0, 0, 0, 1, m]),
            kind: IfaceKind::Secondary(sec.clone()),
        });
        v
    };
    let a = node.mgr.setup("uid-s1", "default", "s1", &req(8)).unwrap();
    let b = node.mgr.setup("uid-s2", "default", "s2", &req(9)).unwrap();
    let (ga, gb) = (Guest::plug(&a, 1), Guest::plug(&b, 1));
    let (la, lb) = (ga.dhcp(), gb.dhcp());
    assert_eq!(la["ip"], "192.168.50.10");
    assert_eq!(lb["ip"], "192.168.50.11");
    let l = listen(&gb.ns, "192.168.50.11:9000");
    connect(&ga.ns, "192.168.50.11:9000").expect("a reaches b on the secondary network");
    let (_, peer) = l.accept().unwrap();
    assert_eq!(peer.ip().to_string(), "192.168.50.10");
}

/// Network setup time per VMI (masquerade: namespace, veth, bridge, tap, addresses, sysctls, nft,
/// DHCP server), and teardown time; printed for the issue's note.
#[test]
fn setup_time_per_vmi() {
    let node = Node::new();
    let n = 10;
    let (mut setup, mut teardown) = (Duration::ZERO, Duration::ZERO);
    for i in 0..n {
        let uid = format!("uid-time-{i}");
        let t = Instant::now();
        node.mgr.setup(&uid, "default", &format!("t{i}"), &masq(100 + i as u8, vec![(false, 22)])).unwrap();
        setup += t.elapsed();
        let t = Instant::now();
        node.mgr.teardown(&uid);
        teardown += t.elapsed();
    }
    eprintln!(
        "pod network, masquerade, {n} VMIs one after another: setup {:?} per VMI, teardown {:?} per VMI",
        setup / n,
        teardown / n
    );
}
