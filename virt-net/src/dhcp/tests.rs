use super::*;

fn cfg() -> DhcpConfig {
    DhcpConfig {
        server_ip: Ipv4Addr::new(10, 0, 2, 1),
        client_mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
        client_ip: Ipv4Addr::new(10, 0, 2, 2),
        prefix_len: 24,
        router: Some(Ipv4Addr::new(10, 0, 2, 1)),
        dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
        search: vec!["default.svc.cluster.local".into(), "cluster.local".into()],
        mtu: Some(1450),
        hostname: Some("vmi-a".into()),
        lease_secs: 86400,
    }
}

fn request(kind: MessageType, mac: [u8; 6], requested: Option<Ipv4Addr>) -> Vec<u8> {
    let z = Ipv4Addr::UNSPECIFIED;
    let mut m = v4::Message::new_with_id(0x1234, z, z, z, z, &mac);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if let Some(ip) = requested {
        m.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    }
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).unwrap();
    out
}

fn decode(b: &[u8]) -> v4::Message {
    v4::Message::decode(&mut Decoder::new(b)).unwrap()
}

#[test]
fn discover_gets_an_offer_with_kubevirts_options() {
    let c = cfg();
    let r = decode(&respond(&c, &request(MessageType::Discover, c.client_mac.0, None)).unwrap().unwrap());
    assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(r.xid(), 0x1234);
    assert_eq!(r.yiaddr(), c.client_ip);
    let o = r.opts();
    assert_eq!(o.get(OptionCode::SubnetMask), Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0))));
    assert_eq!(o.get(OptionCode::Router), Some(&DhcpOption::Router(vec![c.server_ip])));
    assert_eq!(o.get(OptionCode::InterfaceMtu), Some(&DhcpOption::InterfaceMtu(1450)));
    assert_eq!(o.get(OptionCode::Hostname), Some(&DhcpOption::Hostname("vmi-a".into())));
    assert!(
        matches!(o.get(OptionCode::ClasslessStaticRoute), Some(DhcpOption::ClasslessStaticRoute(r)) if r.len() == 1)
    );
    assert!(matches!(o.get(OptionCode::DomainSearch), Some(DhcpOption::DomainSearch(n)) if n.len() == 2));
}

#[test]
fn request_for_our_address_is_acked_and_another_is_naked() {
    let c = cfg();
    let ack =
        respond(&c, &request(MessageType::Request, c.client_mac.0, Some(c.client_ip))).unwrap().unwrap();
    assert_eq!(parse_reply_type(&ack), Some(MessageType::Ack));
    let nak = respond(&c, &request(MessageType::Request, c.client_mac.0, Some(Ipv4Addr::new(10, 0, 2, 9))))
        .unwrap()
        .unwrap();
    assert_eq!(parse_reply_type(&nak), Some(MessageType::Nak));
}

#[test]
fn other_clients_and_garbage_get_nothing() {
    let c = cfg();
    assert_eq!(respond(&c, &request(MessageType::Discover, [2, 9, 9, 9, 9, 9], None)).unwrap(), None);
    assert!(respond(&c, &[0u8; 10]).is_err());
    let mut long_hlen = request(MessageType::Discover, c.client_mac.0, None);
    long_hlen[2] = 200;
    assert!(respond(&c, &long_hlen).is_err());
}

#[test]
fn a_bad_search_domain_is_an_error_naming_the_option() {
    let mut c = cfg();
    c.search = vec!["a..b".into()];
    let e = respond(&c, &request(MessageType::Discover, c.client_mac.0, None)).unwrap_err();
    assert!(e.to_string().contains("domain search"), "{e}");
}

#[test]
fn masks() {
    assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
    assert_eq!(mask(16), Ipv4Addr::new(255, 255, 0, 0));
    assert_eq!(mask(40), Ipv4Addr::BROADCAST);
}

/// Regression (found by `dhcp_packet`): options dhcproto's decoder asserts on (a 5-byte
/// BulkLeaseQueryBaseTime) or unwraps (a classless route with prefix 40) no longer reach it.
#[test]
fn options_the_server_does_not_read_cannot_panic_the_decoder() {
    let c = cfg();
    let mut p = request(MessageType::Discover, c.client_mac.0, None);
    let end = p.len() - 1;
    p.truncate(end);
    p.extend_from_slice(&[121, 5, 40, 10, 0, 0, 1, 155, 5, 1, 2, 3, 4, 5, 255]);
    let r = respond(&c, &p).unwrap().unwrap();
    assert_eq!(parse_reply_type(&r), Some(MessageType::Offer));
    let n = p.len();
    p[n - 7] = 200; // option 155's length runs past the end
    assert!(respond(&c, &p).is_err());
}
