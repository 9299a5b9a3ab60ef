use std::net::Ipv6Addr;

use dhcproto::v6::{self, DhcpOption, IAAddr, MessageType, IANA};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use super::ra::{advertisement, is_solicitation, RaConfig};
use super::v6::{duid_ll, parse6, parse_reply6, respond6, Dhcp6Config};
use virt_core::net::MacAddr;

const GUEST: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 7]);
const ADDR: Ipv6Addr = Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 2);

fn cfg() -> Dhcp6Config {
    Dhcp6Config {
        server_duid: duid_ll(MacAddr([0x02, 0, 0, 0, 0, 0xf8])),
        client_mac: GUEST,
        client_ip: ADDR,
        dns: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 10)],
        search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        lease_secs: 86400,
    }
}

/// A DUID-LLT of `mac`, as ISC dhclient sends.
fn duid_llt(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 1, 0, 1, 0x2e, 0x1f, 0x00, 0x01];
    d.extend_from_slice(&mac.0);
    d
}

fn msg(kind: MessageType, client: Option<Vec<u8>>, server: Option<Vec<u8>>, ia: Option<Ipv6Addr>) -> Vec<u8> {
    let mut m = v6::Message::new_with_id(kind, [1, 2, 3]);
    let o = m.opts_mut();
    if let Some(c) = client {
        o.insert(DhcpOption::ClientId(c));
    }
    if let Some(s) = server {
        o.insert(DhcpOption::ServerId(s));
    }
    let mut ia_opts = v6::DhcpOptions::new();
    if let Some(a) = ia {
        ia_opts.insert(DhcpOption::IAAddr(IAAddr {
            addr: a,
            preferred_life: 0,
            valid_life: 0,
            opts: v6::DhcpOptions::new(),
        }));
    }
    o.insert(DhcpOption::IANA(IANA { id: 0x0a0b_0c0d, t1: 0, t2: 0, opts: ia_opts }));
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).unwrap();
    out
}

fn decode(reply: &[u8]) -> v6::Message {
    v6::Message::decode(&mut Decoder::new(reply)).unwrap()
}

fn status(m: &v6::Message) -> Option<v6::Status> {
    match m.opts().get(v6::OptionCode::StatusCode) {
        Some(DhcpOption::StatusCode(s)) => Some(s.status),
        _ => None,
    }
}

#[test]
fn solicit_gets_an_advertise_with_the_address_in_the_clients_ia() {
    let c = cfg();
    let reply = respond6(&c, &msg(MessageType::Solicit, Some(duid_llt(GUEST)), None, None)).unwrap().unwrap();
    let m = decode(&reply);
    assert_eq!(m.msg_type(), MessageType::Advertise);
    assert_eq!(m.xid(), [1, 2, 3]);
    assert_eq!(m.opts().get(v6::OptionCode::ServerId), Some(&DhcpOption::ServerId(c.server_duid.clone())));
    assert_eq!(m.opts().get(v6::OptionCode::ClientId), Some(&DhcpOption::ClientId(duid_llt(GUEST))));
    let Some(DhcpOption::IANA(ia)) = m.opts().get(v6::OptionCode::IANA) else { panic!("no IA_NA: {m:?}") };
    assert_eq!((ia.id, ia.t1, ia.t2), (0x0a0b_0c0d, 43200, 69120));
    let Some(DhcpOption::IAAddr(a)) = ia.opts.get(v6::OptionCode::IAAddr) else { panic!("no IAADDR") };
    assert_eq!((a.addr, a.preferred_life, a.valid_life), (ADDR, 86400, 86400));
    assert!(
        matches!(m.opts().get(v6::OptionCode::DomainNameServers), Some(DhcpOption::DomainNameServers(d)) if d == &c.dns)
    );
    assert!(
        matches!(m.opts().get(v6::OptionCode::DomainSearchList), Some(DhcpOption::DomainSearchList(d)) if d.len() == 2)
    );
    assert_eq!(parse_reply6(&reply), Some((2, vec![ADDR])));
}

#[test]
fn rapid_commit_solicit_gets_the_reply_at_once() {
    let mut p = msg(MessageType::Solicit, Some(duid_llt(GUEST)), None, None);
    p.extend_from_slice(&[0, 14, 0, 0]);
    let m = decode(&respond6(&cfg(), &p).unwrap().unwrap());
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert!(m.opts().get(v6::OptionCode::RapidCommit).is_some());
}

#[test]
fn request_renew_and_rebind_are_answered_only_when_meant_for_this_server() {
    let c = cfg();
    let other = duid_ll(MacAddr([2, 9, 9, 9, 9, 9]));
    for kind in [MessageType::Request, MessageType::Renew] {
        let ours =
            respond6(&c, &msg(kind, Some(duid_llt(GUEST)), Some(c.server_duid.clone()), Some(ADDR))).unwrap();
        assert_eq!(parse_reply6(&ours.unwrap()), Some((7, vec![ADDR])), "{kind:?}");
        let theirs =
            respond6(&c, &msg(kind, Some(duid_llt(GUEST)), Some(other.clone()), Some(ADDR))).unwrap();
        assert_eq!(theirs, None, "{kind:?} for another server");
    }
    let rebind = respond6(&c, &msg(MessageType::Rebind, Some(duid_llt(GUEST)), None, Some(ADDR))).unwrap();
    assert_eq!(parse_reply6(&rebind.unwrap()), Some((7, vec![ADDR])));
}

#[test]
fn confirm_says_whether_the_address_is_still_on_link() {
    let c = cfg();
    let ok = decode(
        &respond6(&c, &msg(MessageType::Confirm, Some(duid_llt(GUEST)), None, Some(ADDR))).unwrap().unwrap(),
    );
    assert_eq!(status(&ok), Some(v6::Status::Success));
    let moved = Ipv6Addr::new(0xfd10, 0, 3, 0, 0, 0, 0, 2);
    let bad = decode(
        &respond6(&c, &msg(MessageType::Confirm, Some(duid_llt(GUEST)), None, Some(moved))).unwrap().unwrap(),
    );
    assert_eq!(status(&bad), Some(v6::Status::NotOnLink));
    assert!(bad.opts().get(v6::OptionCode::IANA).is_none());
}

#[test]
fn release_is_acknowledged_without_handing_anything_out() {
    let c = cfg();
    let r = respond6(
        &c,
        &msg(MessageType::Release, Some(duid_llt(GUEST)), Some(c.server_duid.clone()), Some(ADDR)),
    );
    let m = decode(&r.unwrap().unwrap());
    assert_eq!((m.msg_type(), status(&m)), (MessageType::Reply, Some(v6::Status::Success)));
    assert!(m.opts().get(v6::OptionCode::IANA).is_none());
}

#[test]
fn other_clients_are_ignored_and_duids_without_a_mac_are_served() {
    let c = cfg();
    let stranger = MacAddr([2, 0, 0, 0, 0, 8]);
    assert_eq!(respond6(&c, &msg(MessageType::Solicit, Some(duid_llt(stranger)), None, None)).unwrap(), None);
    assert_eq!(respond6(&c, &msg(MessageType::Solicit, Some(duid_ll(stranger)), None, None)).unwrap(), None);
    // systemd-networkd's default DUID-EN names no MAC: the bridge has only this guest on it.
    let en = vec![0, 2, 0, 0, 0xab, 0x11, 1, 2, 3, 4, 5, 6, 7, 8];
    assert!(respond6(&c, &msg(MessageType::Solicit, Some(en), None, None)).unwrap().is_some());
    // A SOLICIT must carry a client id; one naming a server is not for any server.
    assert_eq!(respond6(&c, &msg(MessageType::Solicit, None, None, None)).unwrap(), None);
    assert_eq!(
        respond6(&c, &msg(MessageType::Solicit, Some(duid_llt(GUEST)), Some(c.server_duid.clone()), None))
            .unwrap(),
        None
    );
}

#[test]
fn information_request_gets_the_name_servers_and_search_list_only() {
    let p = msg(MessageType::InformationRequest, None, None, None);
    let m = decode(&respond6(&cfg(), &p).unwrap().unwrap());
    assert_eq!(m.msg_type(), MessageType::Reply);
    assert!(m.opts().get(v6::OptionCode::DomainNameServers).is_some());
    assert!(m.opts().get(v6::OptionCode::IANA).is_none());
}

#[test]
fn malformed_and_server_side_messages_are_refused_naming_the_problem() {
    let c = cfg();
    let e = respond6(&c, &[1, 2]).unwrap_err().to_string();
    assert!(e.contains("4-byte DHCPv6 header"), "{e}");
    let e = respond6(&c, &[2, 0, 0, 1]).unwrap_err().to_string();
    assert!(e.contains("message type 2"), "{e}");
    let e = respond6(&c, &[1, 0, 0, 1, 0, 1, 0, 9, 1]).unwrap_err().to_string();
    assert!(e.contains("option 1 runs past the end"), "{e}");
    let e = respond6(&c, &[1, 0, 0, 1, 0, 3, 0, 4, 0, 0, 0, 1]).unwrap_err().to_string();
    assert!(e.contains("IA_NA of 4 bytes"), "{e}");
    // A relay's message (type 12) nesting messages is not read at all.
    let mut nested = vec![12u8; 1];
    for _ in 0..10_000 {
        nested.extend_from_slice(&[0, 9, 0xff, 0xff]);
    }
    assert!(respond6(&c, &nested).is_err());
    assert_eq!(
        parse6(&msg(MessageType::Solicit, Some(duid_llt(GUEST)), None, None)).unwrap().ia_na,
        vec![0x0a0b_0c0d]
    );
}

#[test]
fn the_advertisement_names_the_prefix_on_link_and_sends_the_guest_to_dhcpv6() {
    let ra = advertisement(&RaConfig {
        prefix: Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0x1ff),
        prefix_len: 120,
        mtu: Some(1400),
        router_lifetime: 1800,
    });
    assert_eq!(ra.len(), 16 + 32 + 8);
    assert_eq!(&ra[..4], &[134, 0, 0, 0]);
    assert_eq!(ra[4], 64, "hop limit");
    assert_eq!(ra[5], 0xc0, "Managed and Other");
    assert_eq!(u16::from_be_bytes([ra[6], ra[7]]), 1800);
    assert_eq!(&ra[16..20], &[3, 4, 120, 0x80], "prefix information: on-link, not autonomous");
    assert_eq!(
        Ipv6Addr::from(<[u8; 16]>::try_from(&ra[32..48]).unwrap()),
        Ipv6Addr::new(0xfd10, 0, 2, 0, 0, 0, 0, 0x100)
    );
    assert_eq!(&ra[48..52], &[5, 1, 0, 0]);
    assert_eq!(u32::from_be_bytes([ra[52], ra[53], ra[54], ra[55]]), 1400);
}

#[test]
fn only_well_formed_solicitations_are_answered() {
    let mut rs = vec![133, 0, 0, 0, 0, 0, 0, 0];
    assert!(is_solicitation(&rs));
    rs.extend_from_slice(&[1, 1, 2, 0, 0, 0, 0, 7]); // source link-layer address
    assert!(is_solicitation(&rs));
    assert!(!is_solicitation(&rs[..12]), "an option cut short");
    let mut zero = rs.clone();
    zero[9] = 0;
    assert!(!is_solicitation(&zero), "a zero-length option");
    assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
    assert!(!is_solicitation(&[133, 1, 0, 0, 0, 0, 0, 0]), "code 1");
    assert!(!is_solicitation(&[133, 0, 0]));
}
