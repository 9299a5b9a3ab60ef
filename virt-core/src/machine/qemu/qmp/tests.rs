use super::*;
use proptest::prelude::*;

#[test]
fn splits_lines_across_chunks_and_bounds_them() {
    let mut s = LineSplitter::new(8);
    assert!(s.push(b"abc").is_empty());
    assert_eq!(s.push(b"de\r\nfg\n"), vec![Ok(b"abcde".to_vec()), Ok(b"fg".to_vec())]);
    let out = s.push(b"0123456789");
    assert!(matches!(out.as_slice(), [Err(QmpError::LineTooLong { limit: 8, .. })]));
    // The rest of the long line is skipped; the next line is whole.
    assert!(s.push(b"more-of-the-long-line").is_empty());
    assert_eq!(s.push(b"\nok\n"), vec![Ok(b"ok".to_vec())]);
    // A line reaching the limit exactly is fine.
    assert_eq!(s.push(b"12345678\n"), vec![Ok(b"12345678".to_vec())]);
}

#[test]
fn parses_real_qemu_messages() {
    let g = parse_message(
        br#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "Debian 1:10.0.2+ds-2+deb13u1~bpo12+1"}, "capabilities": ["oob"]}}"#,
    )
    .unwrap();
    let QmpMessage::Greeting(g) = g else { panic!("{g:?}") };
    assert_eq!(g.version, QemuVersion { major: 10, minor: 0, micro: 2 });
    assert_eq!(g.capabilities, vec!["oob".to_string()]);

    let r = parse_message(br#"{"return": {"status": "prelaunch", "running": false}, "id": 7}"#).unwrap();
    let QmpMessage::Return { id: Some(7), value } = r else { panic!("{r:?}") };
    assert_eq!(parse_status(&value).unwrap(), StatusInfo { running: false, status: RunState::Prelaunch });

    let e = parse_message(
        br#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}"#,
    )
    .unwrap();
    assert!(matches!(e, QmpMessage::Error { id: Some(3), ref class, .. } if class == "CommandNotFound"));

    let ev = parse_message(
        br#"{"timestamp": {"seconds": 1795494129, "microseconds": 584528}, "event": "SHUTDOWN", "data": {"guest": false, "reason": "host-qmp-quit"}}"#,
    )
    .unwrap();
    let QmpMessage::Event(raw) = ev else { panic!() };
    assert_eq!(raw.timestamp, Some((1795494129, 584528)));
    assert_eq!(
        QmpEvent::parse(&raw).unwrap(),
        QmpEvent::Shutdown { guest: false, reason: ShutdownCause::HostQmpQuit }
    );
    let tray = RawEvent {
        name: "DEVICE_TRAY_MOVED".into(),
        data: json!({"device": "", "id": "cd0", "tray-open": true}),
        timestamp: None,
    };
    assert_eq!(
        QmpEvent::parse(&tray).unwrap(),
        QmpEvent::DeviceTrayMoved { device: String::new(), id: "cd0".into(), tray_open: true }
    );
}

#[test]
fn types_qemus_migration_events() {
    // As QEMU 10 sends them with the `events` migration capability on.
    let ev = parse_message(
        br#"{"timestamp": {"seconds": 1796000000, "microseconds": 12}, "event": "MIGRATION", "data": {"status": "postcopy-active"}}"#,
    )
    .unwrap();
    let QmpMessage::Event(raw) = ev else { panic!("{ev:?}") };
    assert_eq!(QmpEvent::parse(&raw).unwrap(), QmpEvent::Migration { status: "postcopy-active".into() });
    let pass = RawEvent { name: "MIGRATION_PASS".into(), data: json!({"pass": 3}), timestamp: None };
    assert_eq!(QmpEvent::parse(&pass).unwrap(), QmpEvent::MigrationPass { pass: 3 });
    for (name, data) in [
        ("MIGRATION", json!({})),
        ("MIGRATION", json!({"status": 4})),
        ("MIGRATION_PASS", json!({"pass": -1})),
        ("MIGRATION_PASS", json!({"pass": "2"})),
    ] {
        let raw = RawEvent { name: name.into(), data: data.clone(), timestamp: None };
        assert!(matches!(QmpEvent::parse(&raw), Err(QmpError::BadEvent { .. })), "{name} {data}");
    }
}

#[test]
fn rejects_what_is_not_qmp() {
    for bad in [
        &b"not json"[..],
        b"[1,2,3]",
        b"{}",
        b"{\"return\": {}, \"id\": \"x\"}",
        b"{\"return\": {}, \"id\": -1}",
        b"{\"error\": \"oops\"}",
        b"{\"event\": 5}",
        b"{\"event\": \"STOP\", \"data\": [1]}",
        b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": \"10\"}}}}",
        b"\xff\xfe",
    ] {
        assert!(parse_message(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(parse_message(deep.as_bytes()), Err(QmpError::Json { .. })));
    let unknown = RawEvent { name: "NEW_THING".into(), data: Value::Null, timestamp: None };
    assert!(matches!(QmpEvent::parse(&unknown), Err(QmpError::UnknownEvent { .. })));
    let wrong =
        RawEvent { name: "SHUTDOWN".into(), data: json!({"guest": "yes", "reason": 1}), timestamp: None };
    assert!(matches!(QmpEvent::parse(&wrong), Err(QmpError::BadEvent { .. })));
    assert!(parse_status(&json!({"running": 1, "status": "running"})).is_err());
}

#[test]
fn vnc_info_gives_the_tcp_address() {
    let v = json!({"enabled": true, "host": "127.0.0.1", "service": "5901", "family": "ipv4", "auth": "none", "clients": []});
    let info = VncInfo::deserialize(&v).unwrap();
    assert_eq!(info.socket_addr(), Some("127.0.0.1:5901".parse().unwrap()));
    let off = VncInfo::deserialize(&json!({"enabled": false})).unwrap();
    assert_eq!(off.socket_addr(), None);
    assert!(VncInfo::deserialize(&json!({"enabled": "yes"})).is_err());
}

/// A fake QEMU on a socket pair: greeting, capabilities, then a scripted conversation.
#[test]
fn client_matches_answers_and_delivers_events_in_order() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let fake = std::thread::spawn(move || {
        theirs.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": []}}\n").unwrap();
        let mut r = std::io::BufReader::new(theirs.try_clone().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        assert!(line.contains("qmp_capabilities"));
        theirs.write_all(b"{\"return\": {}, \"id\": 0}\n").unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        let cmd: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(cmd["execute"], "stop");
        let id = cmd["id"].as_u64().unwrap();
        // Garbage and an unknown event first: reported, not fatal. Then the event and the answer.
        theirs.write_all(b"garbage\n{\"event\": \"SOMETHING_NEW\"}\n").unwrap();
        theirs
            .write_all(b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n")
            .unwrap();
        theirs.write_all(format!("{{\"return\": {{}}, \"id\": {id}}}\n").as_bytes()).unwrap();
        line.clear();
        std::io::BufRead::read_line(&mut r, &mut line).unwrap();
        let cmd: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(cmd["execute"], "query-status");
        let id = cmd["id"].as_u64().unwrap();
        theirs
            .write_all(
                format!("{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"nope\"}}}}\n")
                    .as_bytes(),
            )
            .unwrap();
        // Then QEMU goes away.
    });
    let (tx, rx) = channel();
    let (client, reader) = QmpClient::connect(ours, Duration::from_secs(5), move |i| {
        let _ = tx.send(i);
    })
    .unwrap();
    assert_eq!(client.greeting().version.major, 10);
    client.stop().unwrap();
    let got: Vec<Incoming> = rx.try_iter().collect();
    assert!(matches!(got[0], Incoming::Error(QmpError::Json { .. })), "{got:?}");
    assert!(matches!(got[1], Incoming::Error(QmpError::UnknownEvent { .. })), "{got:?}");
    assert_eq!(got[2], Incoming::Event(QmpEvent::Stop, Some((1, 2))));
    let e = client.query_status().unwrap_err();
    assert!(
        matches!(e, QmpError::Command { ref command, ref desc, .. } if command == "query-status" && desc == "nope"),
        "{e}"
    );
    fake.join().unwrap();
    reader.join().unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Incoming::Closed);
    assert!(matches!(client.cont(), Err(QmpError::Closed(_) | QmpError::Io { .. })));
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("guest".to_string()),
                    Just("reason".to_string()),
                    Just("tray-open".to_string()),
                    Just("client".to_string()),
                    Just("host".to_string()),
                    ".{0,6}".prop_map(|s| s),
                ],
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..20)) {
        let mut s = LineSplitter::new(64);
        for c in &chunks {
            // Over-long lines come out as errors; the others go through the parser.
            for l in s.push(c).into_iter().flatten() {
                prop_assert!(l.len() <= 64);
                if let Ok(QmpMessage::Event(raw)) = parse_message(&l) {
                    let _ = QmpEvent::parse(&raw);
                }
            }
        }
    }

    #[test]
    fn arbitrary_json_never_panics(
        name in prop_oneof![
            Just("SHUTDOWN"), Just("RESET"), Just("STOP"), Just("RESUME"), Just("POWERDOWN"),
            Just("DEVICE_TRAY_MOVED"), Just("RTC_CHANGE"), Just("GUEST_PANICKED"), Just("VNC_CONNECTED"),
            Just("MIGRATION"), Just("MIGRATION_PASS"), Just("UNKNOWN"),
        ],
        data in json_value(),
        id in json_value(),
        ret in json_value(),
    ) {
        for msg in [
            json!({"event": name, "data": data.clone()}),
            json!({"return": ret.clone(), "id": id.clone()}),
            json!({"error": data.clone(), "id": id.clone()}),
            json!({"QMP": data.clone()}),
            data.clone(),
        ] {
            let line = msg.to_string();
            match parse_message(line.as_bytes()) {
                Ok(QmpMessage::Event(raw)) => { let _ = QmpEvent::parse(&raw); }
                Ok(QmpMessage::Return { value, .. }) => {
                    let _ = parse_status(&value);
                    let _ = VncInfo::deserialize(&value).map(|v| v.socket_addr());
                }
                _ => {}
            }
        }
    }

    #[test]
    fn split_lines_reassemble(lines in prop::collection::vec("[^\n\r]{0,40}", 0..10), cut in 1usize..50) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut s = LineSplitter::new(1 << 10);
        let mut got = Vec::new();
        for c in text.as_bytes().chunks(cut) {
            for r in s.push(c) {
                got.push(r.unwrap());
            }
        }
        let want: Vec<Vec<u8>> = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
        prop_assert_eq!(got, want);
    }
}
