//! The DHCPv4 server each VMI's interface gets (as KubeVirt's virt-launcher runs one): one client
//! (the guest's MAC), one address, KubeVirt's options. [`respond`] is the whole protocol, a pure
//! function of the configuration and one received packet (fuzzed: `fuzz/fuzz_targets/dhcp_packet.rs`);
//! [`server::DhcpServer`] runs it on a socket bound to the VMI's bridge inside its network namespace.

pub mod ra;
pub mod server;
mod server6;
pub mod v6;

use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder, Name};
use virt_core::net::MacAddr;

/// What the server hands its one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The server's address on the bridge (option 54, the replies' source).
    pub server_ip: Ipv4Addr,
    /// The only client served: the guest's MAC.
    pub client_mac: MacAddr,
    /// The guest's address.
    pub client_ip: Ipv4Addr,
    /// Its prefix length (option 1 as a mask).
    pub prefix_len: u8,
    /// The default gateway (option 3; also the default route of option 121).
    pub router: Option<Ipv4Addr>,
    /// Name servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Search domains (option 119; the first also as option 15).
    pub search: Vec<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Host name (option 12): the VMI's name.
    pub hostname: Option<String>,
    /// Lease time in seconds (option 51).
    pub lease_secs: u32,
}

/// Why a packet got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DhcpError {
    /// The bytes are not a DHCP message.
    #[error("malformed DHCP packet ({len} bytes): {why}")]
    Malformed {
        /// Packet length.
        len: usize,
        /// What was wrong.
        why: String,
    },
    /// An option in the configuration cannot be encoded (e.g. a search domain that is not a name).
    #[error("DHCP option {option}: {why}")]
    Option {
        /// The option.
        option: &'static str,
        /// What was wrong.
        why: String,
    },
}

/// The netmask of a prefix length (0..=32; longer is clamped).
pub fn mask(prefix_len: u8) -> Ipv4Addr {
    let p = u32::from(prefix_len.min(32));
    Ipv4Addr::from(if p == 0 { 0 } else { u32::MAX << (32 - p) })
}

/// Decodes one BOOTREQUEST. Refuses what the server would not answer without allocating:
/// a hardware address that is not 6 bytes (a longer `hlen` would make the decoder's `chaddr()`
/// index past its 16-byte field), a BOOTREPLY, a missing message type.
pub fn parse(packet: &[u8]) -> Result<v4::Message, DhcpError> {
    let bad = |why: String| DhcpError::Malformed { len: packet.len(), why };
    if packet.len() < 240 {
        return Err(bad("shorter than the 240-byte BOOTP header with its magic cookie".into()));
    }
    if packet[1] != 1 || packet[2] != 6 {
        return Err(bad(format!(
            "hardware type {} length {}: only Ethernet (1, 6) is served",
            packet[1], packet[2]
        )));
    }
    let clean = sanitize(packet)?;
    let msg = v4::Message::decode(&mut Decoder::new(&clean)).map_err(|e| bad(e.to_string()))?;
    if msg.opcode() != Opcode::BootRequest {
        return Err(bad("not a BOOTREQUEST".into()));
    }
    if msg.opts().msg_type().is_none() {
        return Err(bad("no DHCP message type (option 53)".into()));
    }
    Ok(msg)
}

/// Options the server reads, with the lengths it accepts (`None`: any length).
const READ_OPTIONS: &[(u8, Option<usize>)] = &[
    (12, None),    // host name
    (50, Some(4)), // requested address
    (53, Some(1)), // message type
    (54, Some(4)), // server identifier
    (55, None),    // parameter request list
    (61, None),    // client identifier
];

/// The packet with every option the server does not read overwritten by PAD bytes, so the
/// decoder never sees them: dhcproto's decoders of some options assert on their length or unwrap
/// a prefix length (found by the `dhcp_packet` fuzz target), and a guest chooses these bytes.
/// An option the server reads with a wrong length, or options running past the end, refuse the
/// packet.
fn sanitize(packet: &[u8]) -> Result<Vec<u8>, DhcpError> {
    let bad = |why: String| DhcpError::Malformed { len: packet.len(), why };
    let mut out = packet.to_vec();
    if out[236..240] != [99, 130, 83, 99] {
        return Err(bad("no DHCP magic cookie".into()));
    }
    let mut i = 240;
    while i < out.len() {
        match out[i] {
            0 => i += 1,
            255 => {
                out.truncate(i + 1);
                return Ok(out);
            }
            code => {
                let len =
                    *out.get(i + 1).ok_or_else(|| bad("an option without its length at the end".into()))?
                        as usize;
                let end = i + 2 + len;
                if end > out.len() {
                    return Err(bad(format!("option {code} runs past the end of the packet")));
                }
                match READ_OPTIONS.iter().find(|(c, _)| *c == code) {
                    Some((_, Some(want))) if *want != len => {
                        return Err(bad(format!("option {code} has length {len}, expected {want}")))
                    }
                    Some(_) if len > 0 => {}
                    _ => out[i..end].fill(0),
                }
                i = end;
            }
        }
    }
    out.push(255);
    Ok(out)
}

/// The answer to one received packet: `Ok(None)` for packets of other clients or types the server
/// ignores (RELEASE, DECLINE, INFORM from others), `Ok(Some(bytes))` for an OFFER, ACK or NAK.
pub fn respond(cfg: &DhcpConfig, packet: &[u8]) -> Result<Option<Vec<u8>>, DhcpError> {
    let msg = parse(packet)?;
    if msg.chaddr() != cfg.client_mac.0.as_slice() {
        return Ok(None);
    }
    let reply_type = match msg.opts().msg_type() {
        Some(MessageType::Discover) => MessageType::Offer,
        Some(MessageType::Request) => {
            // A REQUEST for another address (a lease from elsewhere, or a changed vmNetworkCIDR) is
            // refused so the client starts over with DISCOVER.
            let asked = match msg.opts().get(OptionCode::RequestedIpAddress) {
                Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                _ => msg.ciaddr(),
            };
            let server_ok = match msg.opts().get(OptionCode::ServerIdentifier) {
                Some(DhcpOption::ServerIdentifier(s)) => *s == cfg.server_ip,
                _ => true,
            };
            if !server_ok {
                return Ok(None);
            }
            if asked == cfg.client_ip {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        Some(MessageType::Inform) => MessageType::Ack,
        _ => return Ok(None),
    };
    let reply = build(cfg, &msg, reply_type)?;
    let mut out = Vec::with_capacity(576);
    reply
        .encode(&mut Encoder::new(&mut out))
        .map_err(|e| DhcpError::Malformed { len: packet.len(), why: format!("encoding the reply: {e}") })?;
    Ok(Some(out))
}

fn build(cfg: &DhcpConfig, req: &v4::Message, kind: MessageType) -> Result<v4::Message, DhcpError> {
    let unspecified = Ipv4Addr::UNSPECIFIED;
    let yiaddr = match kind {
        MessageType::Nak => unspecified,
        MessageType::Ack if req.opts().msg_type() == Some(MessageType::Inform) => unspecified,
        _ => cfg.client_ip,
    };
    let mut m =
        v4::Message::new_with_id(req.xid(), req.ciaddr(), yiaddr, unspecified, req.giaddr(), req.chaddr());
    m.set_opcode(Opcode::BootReply).set_flags(req.flags());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    if kind == MessageType::Nak {
        return Ok(m);
    }
    if req.opts().msg_type() != Some(MessageType::Inform) {
        o.insert(DhcpOption::AddressLeaseTime(cfg.lease_secs));
        o.insert(DhcpOption::Renewal(cfg.lease_secs / 2));
        o.insert(DhcpOption::Rebinding(cfg.lease_secs / 8 * 7));
    }
    o.insert(DhcpOption::SubnetMask(mask(cfg.prefix_len)));
    let bcast = u32::from(cfg.client_ip) | !u32::from(mask(cfg.prefix_len));
    o.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(bcast)));
    if let Some(r) = cfg.router {
        o.insert(DhcpOption::Router(vec![r]));
        // RFC 3442: a client that takes option 121 ignores option 3, so the default route is in it.
        let default = ipnet::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
            .map_err(|e| DhcpError::Option { option: "classless static routes (121)", why: e.to_string() })?;
        o.insert(DhcpOption::ClasslessStaticRoute(vec![(default, r)]));
    }
    if !cfg.dns.is_empty() {
        o.insert(DhcpOption::DomainNameServer(cfg.dns.clone()));
    }
    if let Some(first) = cfg.search.first() {
        o.insert(DhcpOption::DomainName(first.clone()));
        o.insert(DhcpOption::DomainSearch(search_names(&cfg.search, "domain search (119)")?));
    }
    if let Some(mtu) = cfg.mtu {
        o.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = &cfg.hostname {
        o.insert(DhcpOption::Hostname(h.clone()));
    }
    Ok(m)
}

/// Search domains as DNS names for `option` (DHCPv4's 119, DHCPv6's 24); one that is not a name
/// is an error naming it.
pub(crate) fn search_names(search: &[String], option: &'static str) -> Result<Vec<Name>, DhcpError> {
    search
        .iter()
        .map(|s| Name::from_ascii(s).map_err(|e| DhcpError::Option { option, why: format!("{s:?}: {e}") }))
        .collect()
}

/// The message type of an encoded reply (for counting ACKs and in tests).
pub fn parse_reply_type(bytes: &[u8]) -> Option<MessageType> {
    if bytes.len() < 240 || bytes[2] > 16 {
        return None;
    }
    v4::Message::decode(&mut Decoder::new(bytes)).ok()?.opts().msg_type()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod tests6;
