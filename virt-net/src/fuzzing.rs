//! Bodies of the cargo-fuzz targets over what guests send the node (`fuzz/fuzz_targets/`), shared
//! with the stable proptests of `tests/fuzz_entries.rs`.

use std::net::Ipv4Addr;

use crate::dhcp::{respond, DhcpConfig};
use virt_core::net::MacAddr;

/// `dhcp_packet`: any bytes a guest sends to the DHCP servers' ports (67 and, IPv6, 547) or as an
/// ICMPv6 router solicitation are answered or refused, never a panic; an answer decodes again and
/// carries the configured address. The first byte of the input picks the protocol (bit 1: DHCPv6
/// and router solicitation) and, for DHCPv4, whether the packet's hardware address is forced to the
/// served client (bit 0, so the fuzzer reaches the reply paths).
pub fn dhcp_packet(data: &[u8]) {
    if data.first().is_some_and(|m| m & 2 == 2) {
        dhcp6_packet(&data[1..]);
        return;
    }
    let cfg = DhcpConfig {
        server_ip: Ipv4Addr::new(10, 0, 2, 1),
        client_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        client_ip: Ipv4Addr::new(10, 0, 2, 2),
        prefix_len: 24,
        router: Some(Ipv4Addr::new(10, 0, 2, 1)),
        dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
        search: vec!["cluster.local".into()],
        mtu: Some(1500),
        hostname: Some("fuzz".into()),
        lease_secs: 3600,
    };
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut packet = rest.to_vec();
    if mode & 1 == 1 && packet.len() >= 34 {
        packet[28..34].copy_from_slice(&cfg.client_mac.0);
        packet[2] = 6;
        packet[1] = 1;
    }
    if let Ok(Some(reply)) = respond(&cfg, &packet) {
        let kind = crate::dhcp::parse_reply_type(&reply);
        assert!(kind.is_some(), "a reply that does not decode: {reply:?}");
    }
}

/// The IPv6 half of [`dhcp_packet`].
fn dhcp6_packet(packet: &[u8]) {
    let client_ip = std::net::Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);
    let client_mac = MacAddr([0x02, 0, 0, 0, 0, 1]);
    let cfg = crate::dhcp::v6::Dhcp6Config {
        server_duid: crate::dhcp::v6::duid_ll(MacAddr([0x02, 0, 0, 0, 0, 0xfe])),
        client_mac,
        client_ip,
        dns: vec![std::net::Ipv6Addr::LOCALHOST],
        search: vec!["cluster.local".into()],
        lease_secs: 3600,
    };
    if let Ok(Some(reply)) = crate::dhcp::v6::respond6(&cfg, packet) {
        let parsed = crate::dhcp::v6::parse_reply6(&reply);
        let Some((kind, addrs)) = parsed else { panic!("a reply that does not parse: {reply:?}") };
        assert!(kind == 2 || kind == 7, "reply type {kind}");
        assert!(addrs.iter().all(|a| *a == client_ip), "a reply handing out {addrs:?}");
    }
    let _ = crate::dhcp::ra::is_solicitation(packet);
}
