//! The fuzz targets' bodies (`virt_net::fuzzing`) on every committed seed (`fuzz/seeds/TARGET`),
//! on mutations of the seeds and on random bytes, so the stable test suite runs exactly what the
//! fuzzer runs.

use proptest::prelude::*;
use virt_net::fuzzing;

#[path = "../../fuzz/support/seeds.rs"]
mod seedlib;
use seedlib::{mutated, seeds};

#[test]
fn every_seed_runs() {
    for (name, d) in seeds("dhcp_packet") {
        eprintln!("dhcp_packet {name}");
        fuzzing::dhcp_packet(&d);
    }
}

/// The seeds reach the reply paths: DISCOVER is offered, our REQUEST acked, another NAKed.
#[test]
fn seeds_reach_the_replies() {
    use virt_net::dhcp::parse_reply_type;
    let cfg = virt_net::dhcp::DhcpConfig {
        server_ip: "10.0.2.1".parse().unwrap(),
        client_mac: virt_core::net::MacAddr([2, 0, 0, 0, 0, 1]),
        client_ip: "10.0.2.2".parse().unwrap(),
        prefix_len: 24,
        router: None,
        dns: vec![],
        search: vec![],
        mtu: None,
        hostname: None,
        lease_secs: 60,
    };
    let all = seeds("dhcp_packet");
    let get = |n: &str| all.iter().find(|(k, _)| k == n).unwrap().1[1..].to_vec();
    let kind = |n: &str| virt_net::dhcp::respond(&cfg, &get(n)).unwrap().and_then(|r| parse_reply_type(&r));
    use dhcproto::v4::MessageType::*;
    assert_eq!(kind("discover"), Some(Offer));
    assert_eq!(kind("request-ours"), Some(Ack));
    assert_eq!(kind("request-other-address"), Some(Nak));
    assert!(virt_net::dhcp::respond(&cfg, &get("hlen-200")).is_err());
}

/// The IPv6 seeds reach the DHCPv6 replies and the router solicitation check.
#[test]
fn ipv6_seeds_reach_the_replies() {
    let cfg = virt_net::dhcp::v6::Dhcp6Config {
        server_duid: virt_net::dhcp::v6::duid_ll(virt_core::net::MacAddr([2, 0, 0, 0, 0, 0xfe])),
        client_mac: virt_core::net::MacAddr([2, 0, 0, 0, 0, 1]),
        client_ip: "fd10:0:2::2".parse().unwrap(),
        dns: vec![],
        search: vec![],
        lease_secs: 60,
    };
    let all = seeds("dhcp_packet");
    let get = |n: &str| all.iter().find(|(k, _)| k == n).unwrap().1[1..].to_vec();
    let reply = |n: &str| {
        let r = virt_net::dhcp::v6::respond6(&cfg, &get(n)).unwrap().unwrap();
        virt_net::dhcp::v6::parse_reply6(&r).unwrap()
    };
    let ip: std::net::Ipv6Addr = "fd10:0:2::2".parse().unwrap();
    assert_eq!(reply("solicit6"), (2, vec![ip]));
    assert_eq!(reply("request6"), (7, vec![ip]));
    assert!(virt_net::dhcp::ra::is_solicitation(&get("router-solicitation")));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn dhcp_packet_never_panics(d in prop_oneof![mutated("dhcp_packet"), proptest::collection::vec(any::<u8>(), 0..700)]) {
        fuzzing::dhcp_packet(&d);
    }
}
