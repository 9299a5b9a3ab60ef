//! DHCPv6 for the masquerade binding (RFC 8415, stateful): one client, one address (KubeVirt's
//! fd10:0:2::2 unless `vmIPv6NetworkCIDR` moves it), handed out in an IA_NA. The router
//! advertisements ([`super::ra`]) set the Managed flag, so a guest asks here for its address and
//! takes its default route from the advertisement. [`respond6`] is the whole protocol, a pure
//! function of the configuration and one received packet (fuzzed with the DHCPv4 one:
//! `fuzz/fuzz_targets/dhcp_packet.rs`).
//!
//! Requests are read by the small parser below, not by `dhcproto`'s decoder: that decoder recurses
//! into nested options (a RELAY-MSG holds a message holding options ...), so a guest's 64 KiB packet
//! could nest thousands of levels deep. Only the top level and the IA_NA headers are read here;
//! replies are built with `dhcproto`'s encoder.

use std::net::Ipv6Addr;

use dhcproto::v6::{self, DhcpOption, IAAddr, MessageType, Status, StatusCode, IANA};
use dhcproto::{Encodable, Encoder};
use virt_core::net::MacAddr;

use super::DhcpError;

/// What the server hands its one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Config {
    /// The server's DUID (option 2): [`duid_ll`] of the gateway side.
    pub server_duid: Vec<u8>,
    /// The guest's MAC: a client whose DUID carries another link-layer address is ignored.
    pub client_mac: MacAddr,
    /// The guest's address.
    pub client_ip: Ipv6Addr,
    /// Name servers (option 23).
    pub dns: Vec<Ipv6Addr>,
    /// Search domains (option 24).
    pub search: Vec<String>,
    /// Valid and preferred lifetime of the address, in seconds.
    pub lease_secs: u32,
}

/// A DUID-LL (type 3, hardware type 1 Ethernet) of `mac`.
pub fn duid_ll(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&mac.0);
    d
}

const SOLICIT: u8 = 1;
const REQUEST: u8 = 3;
const CONFIRM: u8 = 4;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const RELEASE: u8 = 8;
const DECLINE: u8 = 9;
const INFORMATION_REQUEST: u8 = 11;

const OPT_CLIENTID: u16 = 1;
const OPT_SERVERID: u16 = 2;
const OPT_IA_NA: u16 = 3;
const OPT_IAADDR: u16 = 5;
const OPT_RAPID_COMMIT: u16 = 14;

/// What the server reads of a client's message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request6 {
    /// The message type (1 SOLICIT ... 11 INFORMATION-REQUEST).
    pub kind: u8,
    /// The transaction id.
    pub xid: [u8; 3],
    /// The client's DUID (option 1).
    pub client_id: Option<Vec<u8>>,
    /// The server DUID it names (option 2).
    pub server_id: Option<Vec<u8>>,
    /// The IAIDs of its IA_NA options.
    pub ia_na: Vec<u32>,
    /// The addresses it names inside them (IAADDR).
    pub addresses: Vec<Ipv6Addr>,
    /// Whether it asks for a two-message exchange (option 14).
    pub rapid_commit: bool,
}

/// Reads one client message (not a relay's). Options are walked once, bounded by the packet.
pub fn parse6(packet: &[u8]) -> Result<Request6, DhcpError> {
    let bad = |why: String| DhcpError::Malformed { len: packet.len(), why };
    let (&kind, rest) = packet.split_first().ok_or_else(|| bad("empty packet".into()))?;
    if !matches!(kind, SOLICIT | REQUEST | CONFIRM | RENEW | REBIND | RELEASE | DECLINE | INFORMATION_REQUEST)
    {
        return Err(bad(format!("message type {kind} is not one a client sends to this server")));
    }
    let xid: [u8; 3] = rest
        .get(..3)
        .and_then(|x| x.try_into().ok())
        .ok_or_else(|| bad("shorter than the 4-byte DHCPv6 header".into()))?;
    let mut req = Request6 { kind, xid, ..Default::default() };
    for (code, body) in options(&rest[3..], packet.len())? {
        match code {
            OPT_CLIENTID if req.client_id.is_none() => req.client_id = Some(body.to_vec()),
            OPT_SERVERID if req.server_id.is_none() => req.server_id = Some(body.to_vec()),
            OPT_RAPID_COMMIT => req.rapid_commit = true,
            OPT_IA_NA => {
                let id = body
                    .get(..4)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| bad(format!("IA_NA of {} bytes: at least 12 expected", body.len())))?;
                let inner = body
                    .get(12..)
                    .ok_or_else(|| bad(format!("IA_NA of {} bytes: at least 12 expected", body.len())))?;
                req.ia_na.push(id);
                for (c, b) in options(inner, packet.len())? {
                    if c == OPT_IAADDR {
                        let a: [u8; 16] = b.get(..16).and_then(|a| a.try_into().ok()).ok_or_else(|| {
                            bad(format!("IAADDR of {} bytes: at least 24 expected", b.len()))
                        })?;
                        req.addresses.push(Ipv6Addr::from(a));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(req)
}

/// The (code, body) pairs of an option area of a `packet_len`-byte packet; an option running past
/// the end refuses it.
fn options(mut area: &[u8], packet_len: usize) -> Result<Vec<(u16, &[u8])>, DhcpError> {
    let bad = |why: String| DhcpError::Malformed { len: packet_len, why };
    let mut out = Vec::new();
    while !area.is_empty() {
        let head =
            area.get(..4).ok_or_else(|| bad("an option header cut short at the end of the packet".into()))?;
        let code = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let body = area
            .get(4..4 + len)
            .ok_or_else(|| bad(format!("option {code} runs past the end of the packet")))?;
        out.push((code, body));
        area = &area[4 + len..];
    }
    Ok(out)
}

/// Whether a DUID names a link-layer address other than `mac` (DUID-LLT and DUID-LL of Ethernet).
fn other_client(duid: &[u8], mac: MacAddr) -> bool {
    let addr = match duid {
        [0, 1, 0, 1, _, _, _, _, rest @ ..] => rest,
        [0, 3, 0, 1, rest @ ..] => rest,
        _ => return false,
    };
    addr != mac.0.as_slice()
}

/// The answer to one received packet: `Ok(None)` for messages the server ignores (another client's,
/// another server's, a SOLICIT without a client id), `Ok(Some(bytes))` for an ADVERTISE or a REPLY.
pub fn respond6(cfg: &Dhcp6Config, packet: &[u8]) -> Result<Option<Vec<u8>>, DhcpError> {
    let req = parse6(packet)?;
    let ours = req.server_id.as_deref() == Some(cfg.server_duid.as_slice());
    let Some(client) = req.client_id.clone() else {
        // Only INFORMATION-REQUEST may come without a client id (RFC 8415 16.12).
        if req.kind != INFORMATION_REQUEST {
            return Ok(None);
        }
        return encode(packet, reply(cfg, &req, MessageType::Reply, None, None)?);
    };
    if other_client(&client, cfg.client_mac) {
        return Ok(None);
    }
    let (kind, status) = match req.kind {
        SOLICIT if req.server_id.is_none() => {
            (if req.rapid_commit { MessageType::Reply } else { MessageType::Advertise }, None)
        }
        REQUEST | RENEW if ours => (MessageType::Reply, None),
        REBIND if req.server_id.is_none() => (MessageType::Reply, None),
        CONFIRM if req.server_id.is_none() => {
            let on_link = req.addresses.iter().all(|a| *a == cfg.client_ip);
            (MessageType::Reply, Some(if on_link { Status::Success } else { Status::NotOnLink }))
        }
        RELEASE | DECLINE if ours => (MessageType::Reply, Some(Status::Success)),
        INFORMATION_REQUEST if req.server_id.is_none() || ours => (MessageType::Reply, None),
        _ => return Ok(None),
    };
    encode(packet, reply(cfg, &req, kind, Some(client), status)?)
}

fn reply(
    cfg: &Dhcp6Config,
    req: &Request6,
    kind: MessageType,
    client: Option<Vec<u8>>,
    status: Option<Status>,
) -> Result<v6::Message, DhcpError> {
    let mut m = v6::Message::new_with_id(kind, req.xid);
    let o = m.opts_mut();
    o.insert(DhcpOption::ServerId(cfg.server_duid.clone()));
    if let Some(c) = client {
        o.insert(DhcpOption::ClientId(c));
    }
    if let Some(s) = status {
        o.insert(DhcpOption::StatusCode(StatusCode { status: s, msg: String::new() }));
    }
    let hands_out = matches!(req.kind, SOLICIT | REQUEST | RENEW | REBIND);
    if hands_out {
        for &id in &req.ia_na {
            let mut ia = v6::DhcpOptions::new();
            ia.insert(DhcpOption::IAAddr(IAAddr {
                addr: cfg.client_ip,
                preferred_life: cfg.lease_secs,
                valid_life: cfg.lease_secs,
                opts: v6::DhcpOptions::new(),
            }));
            o.insert(DhcpOption::IANA(IANA {
                id,
                t1: cfg.lease_secs / 2,
                t2: cfg.lease_secs / 5 * 4,
                opts: ia,
            }));
        }
        if req.kind == SOLICIT && req.rapid_commit {
            o.insert(DhcpOption::RapidCommit);
        }
    }
    if hands_out || req.kind == INFORMATION_REQUEST {
        if !cfg.dns.is_empty() {
            o.insert(DhcpOption::DomainNameServers(cfg.dns.clone()));
        }
        if !cfg.search.is_empty() {
            o.insert(DhcpOption::DomainSearchList(super::search_names(
                &cfg.search,
                "domain search list (24)",
            )?));
        }
    }
    Ok(m)
}

fn encode(packet: &[u8], m: v6::Message) -> Result<Option<Vec<u8>>, DhcpError> {
    let mut out = Vec::with_capacity(256);
    m.encode(&mut Encoder::new(&mut out))
        .map_err(|e| DhcpError::Malformed { len: packet.len(), why: format!("encoding the reply: {e}") })?;
    Ok(Some(out))
}

/// The message type and the addresses a reply hands out (for tests and the fuzz target's check).
pub fn parse_reply6(reply: &[u8]) -> Option<(u8, Vec<Ipv6Addr>)> {
    let (&kind, rest) = reply.split_first()?;
    let mut addrs = Vec::new();
    for (code, body) in options(rest.get(3..)?, reply.len()).ok()? {
        if code == OPT_IA_NA {
            for (c, b) in options(body.get(12..)?, reply.len()).ok()? {
                if c == OPT_IAADDR {
                    let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
                    addrs.push(Ipv6Addr::from(a));
                }
            }
        }
    }
    Some((kind, addrs))
}
