//! The nftables ruleset of a VMI's masquerade binding, with KubeVirt's table and chain names:
//! outbound traffic from the guest is masqueraded behind the pod's address, inbound traffic to the
//! pod is DNATed to the guest (every port, or only the interface's `ports`), and connections to
//! the pod's loopback (port-forward) reach the guest too. Rendered as one script applied with one
//! `nft -f -`: one transaction, all rules or none.

use std::fmt::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A forwarded port (`interfaces[].ports[]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ForwardedPort {
    /// `udp` when true, else `tcp`.
    pub udp: bool,
    /// The port.
    pub port: u16,
}

/// What the rules of one masquerade interface need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masquerade {
    /// The pod's interface (`eth0`).
    pub pod_iface: String,
    /// The VMI's bridge (`k6t-<net>`).
    pub bridge: String,
    /// Gateway (the bridge) and guest IPv4 addresses.
    pub gateway4: Ipv4Addr,
    /// The guest's IPv4 address.
    pub guest4: Ipv4Addr,
    /// Gateway IPv6 address, when the pod network has IPv6.
    pub gateway6: Option<Ipv6Addr>,
    /// The guest's IPv6 address.
    pub guest6: Option<Ipv6Addr>,
    /// Only these are forwarded inbound; empty: every port.
    pub ports: Vec<ForwardedPort>,
}

fn port_rules(out: &mut String, ports: &[ForwardedPort], prefix: &str, target: &str) {
    if ports.is_empty() {
        let _ = writeln!(out, "\t\t{prefix}counter dnat to {target}");
        return;
    }
    for (udp, proto) in [(false, "tcp"), (true, "udp")] {
        let list: Vec<String> = ports.iter().filter(|p| p.udp == udp).map(|p| p.port.to_string()).collect();
        if !list.is_empty() {
            let _ =
                writeln!(out, "\t\t{prefix}{proto} dport {{ {} }} counter dnat to {target}", list.join(", "));
        }
    }
}

fn family(out: &mut String, m: &Masquerade, fam: &str, gateway: &str, guest: &str, loopback: &str) {
    let (pod, br) = (&m.pod_iface, &m.bridge);
    let _ = writeln!(out, "table {fam} nat {{");
    let _ = writeln!(out, "\tchain KUBEVIRT_PREINBOUND {{");
    port_rules(out, &m.ports, "", guest);
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain KUBEVIRT_POSTINBOUND {{");
    let _ = writeln!(out, "\t\t{fam} saddr {loopback} counter snat to {gateway}");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain prerouting {{");
    let _ = writeln!(out, "\t\ttype nat hook prerouting priority dstnat; policy accept;");
    let _ = writeln!(out, "\t\tiifname \"{pod}\" counter jump KUBEVIRT_PREINBOUND");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain output {{");
    let _ = writeln!(out, "\t\ttype nat hook output priority -100; policy accept;");
    port_rules(out, &m.ports, &format!("{fam} daddr {loopback} "), guest);
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tchain postrouting {{");
    let _ = writeln!(out, "\t\ttype nat hook postrouting priority srcnat; policy accept;");
    let _ = writeln!(out, "\t\t{fam} saddr {guest} counter masquerade");
    let _ = writeln!(out, "\t\toifname \"{br}\" counter jump KUBEVIRT_POSTINBOUND");
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "}}");
}

/// The whole script: the `nat` tables of both families replaced in one transaction (re-applying
/// after a node restart leaves the same ruleset).
pub fn render(interfaces: &[Masquerade]) -> String {
    let mut out = String::new();
    let has6 = interfaces.iter().any(|m| m.guest6.is_some());
    // `add` then `delete` makes the delete valid whether the table existed or not.
    out.push_str("add table ip nat\ndelete table ip nat\n");
    if has6 {
        out.push_str("add table ip6 nat\ndelete table ip6 nat\n");
    }
    for m in interfaces {
        family(&mut out, m, "ip", &m.gateway4.to_string(), &m.guest4.to_string(), "127.0.0.1");
        if let (Some(g), Some(v)) = (m.gateway6, m.guest6) {
            family(&mut out, m, "ip6", &g.to_string(), &v.to_string(), "::1");
        }
    }
    out
}

/// `nft list ruleset` without its counters' values (for comparing with a snapshot).
pub fn normalize_listing(listing: &str) -> String {
    let mut out = String::new();
    for line in listing.lines() {
        let mut words: Vec<&str> = Vec::new();
        let mut it = line.split_whitespace().peekable();
        while let Some(w) = it.next() {
            if (w == "packets" || w == "bytes") && words.last() != Some(&"dport") {
                it.next();
                continue;
            }
            words.push(w);
        }
        if !words.is_empty() {
            out.push_str(&words.join(" "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ports: Vec<ForwardedPort>) -> Masquerade {
        Masquerade {
            pod_iface: "eth0".into(),
            bridge: "k6t-default".into(),
            gateway4: Ipv4Addr::new(10, 0, 2, 1),
            guest4: Ipv4Addr::new(10, 0, 2, 2),
            gateway6: Some("fd10:0:2::1".parse().unwrap()),
            guest6: Some("fd10:0:2::2".parse().unwrap()),
            ports,
        }
    }

    #[test]
    fn all_ports_or_only_the_listed_ones() {
        let all = render(&[m(vec![])]);
        assert!(all.contains("\t\tcounter dnat to 10.0.2.2\n"), "{all}");
        assert!(all.contains("ip6 saddr fd10:0:2::2 counter masquerade"));
        let some =
            render(&[m(vec![ForwardedPort { udp: false, port: 22 }, ForwardedPort { udp: true, port: 53 }])]);
        assert!(some.contains("tcp dport { 22 } counter dnat to 10.0.2.2"), "{some}");
        assert!(some.contains("udp dport { 53 } counter dnat to 10.0.2.2"));
        assert!(some.contains("ip daddr 127.0.0.1 tcp dport { 22 } counter dnat to 10.0.2.2"));
        assert!(!some.contains("\t\tcounter dnat"));
    }

    #[test]
    fn counters_are_dropped_from_listings() {
        assert_eq!(
            normalize_listing("\t\tiifname \"eth0\" counter packets 3 bytes 180 jump X\n"),
            "iifname \"eth0\" counter jump X\n"
        );
    }
}
