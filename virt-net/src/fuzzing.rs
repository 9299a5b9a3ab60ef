//! Bodies of the cargo-fuzz targets over what guests send the node (`fuzz/fuzz_targets/`), shared
//! with the stable proptests of `tests/fuzz_entries.rs`.

use std::net::Ipv4Addr;

use crate::dhcp::{respond, DhcpConfig};
use virt_core::net::MacAddr;

/// `dhcp_packet`: any bytes a guest sends to the DHCP server's port are answered or refused,
/// never a panic; an answer decodes again and carries the configured address. The first byte of
/// the input picks whether the packet's hardware address is forced to the served client (so the
/// fuzzer reaches the reply paths).
pub fn dhcp_packet(data: &[u8]) {
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
