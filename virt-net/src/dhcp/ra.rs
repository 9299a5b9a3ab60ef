//! IPv6 router advertisements for the masquerade binding (RFC 4861), as KubeVirt's virt-launcher
//! sends them on the VMI's bridge: the gateway (the bridge's link-local address, the source) is the
//! guest's default router, the masquerade prefix (fd10:0:2::/120) is on-link, and the Managed and
//! Other flags send the guest to DHCPv6 ([`super::v6`]) for its address (a /120 cannot be
//! autoconfigured). [`advertisement`] builds the message, [`is_solicitation`] reads what a guest
//! sends; both are pure and fuzzed (`fuzz/fuzz_targets/dhcp_packet.rs`).

use std::net::Ipv6Addr;

/// What the advertisement says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaConfig {
    /// The on-link prefix (the masquerade network).
    pub prefix: Ipv6Addr,
    /// Its length.
    pub prefix_len: u8,
    /// The link MTU (option 5), when it is not 1500.
    pub mtu: Option<u16>,
    /// How long the guest keeps the gateway as its default router, in seconds (0 withdraws it).
    pub router_lifetime: u16,
}

/// ICMPv6 type of a router solicitation.
pub const ROUTER_SOLICITATION: u8 = 133;
/// ICMPv6 type of a router advertisement.
pub const ROUTER_ADVERTISEMENT: u8 = 134;

const FLAG_MANAGED: u8 = 0x80;
const FLAG_OTHER: u8 = 0x40;
const PREFIX_ON_LINK: u8 = 0x80;

/// The ICMPv6 router advertisement (checksum left zero: the kernel fills it in for ICMPv6 raw
/// sockets). Hop limit 64; Managed and Other set; reachable time and retransmit timer unspecified.
pub fn advertisement(cfg: &RaConfig) -> Vec<u8> {
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(&[ROUTER_ADVERTISEMENT, 0, 0, 0, 64, FLAG_MANAGED | FLAG_OTHER]);
    m.extend_from_slice(&cfg.router_lifetime.to_be_bytes());
    m.extend_from_slice(&0u32.to_be_bytes()); // reachable time
    m.extend_from_slice(&0u32.to_be_bytes()); // retransmit timer
                                              // Prefix information (type 3, 4 units of 8 bytes): on-link, not for autoconfiguration.
    let lifetime = u32::from(cfg.router_lifetime).max(1800);
    m.extend_from_slice(&[3, 4, cfg.prefix_len.min(128), PREFIX_ON_LINK]);
    m.extend_from_slice(&lifetime.to_be_bytes()); // valid
    m.extend_from_slice(&lifetime.to_be_bytes()); // preferred
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&mask(cfg.prefix, cfg.prefix_len).octets());
    if let Some(mtu) = cfg.mtu {
        m.extend_from_slice(&[5, 1, 0, 0]);
        m.extend_from_slice(&u32::from(mtu).to_be_bytes());
    }
    m
}

/// The network part of `addr` for a prefix length (longer than 128 is clamped).
fn mask(addr: Ipv6Addr, len: u8) -> Ipv6Addr {
    let l = u32::from(len.min(128));
    let m = if l == 0 { 0 } else { u128::MAX << (128 - l) };
    Ipv6Addr::from(u128::from(addr) & m)
}

/// Whether an ICMPv6 message (as a raw socket hands it over: no IPv6 header) is a well-formed
/// router solicitation: type 133, code 0, at least the 8-byte header, and options that are whole
/// (each at least 8 bytes, none running past the end; RFC 4861 6.1.1).
pub fn is_solicitation(msg: &[u8]) -> bool {
    if msg.len() < 8 || msg[0] != ROUTER_SOLICITATION || msg[1] != 0 {
        return false;
    }
    let mut rest = &msg[8..];
    while !rest.is_empty() {
        let Some(&units) = rest.get(1) else { return false };
        let len = usize::from(units) * 8;
        if len == 0 || len > rest.len() {
            return false;
        }
        rest = &rest[len..];
    }
    true
}
