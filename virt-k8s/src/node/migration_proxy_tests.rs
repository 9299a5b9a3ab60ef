//! The proxy with real TLS over loopback TCP, a unix listener standing in for the target
//! launcher's `migrate.sock`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::unix::net::UnixListener;

use super::*;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A fake target launcher: accepts one connection on `dir/migrate.sock`, echoes every byte
/// transformed (`b ^ 0x5a`) until the source half-closes, then closes.
fn fake_target(dir: &Path) -> (PathBuf, std::thread::JoinHandle<u64>) {
    let path = dir.join("migrate.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for b in &mut buf[..n] {
                *b ^= 0x5a;
            }
            s.write_all(&buf[..n]).unwrap();
            total += n as u64;
        }
        s.shutdown(Shutdown::Write).unwrap();
        total
    });
    (path, t)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_migration_stream_crosses_tls_both_ways_intact() {
    let ca = MigrationCa::generate().unwrap();
    let (src, dst) = (ca.issue("node-a").unwrap().tls().unwrap(), ca.issue("node-b").unwrap().tls().unwrap());
    let listener = ProxyListener::bind(loopback(), &dst).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, target) = fake_target(dir.path());
    let _route = listener.expect("mig-1234", socket).unwrap();

    let stream = connect(listener.local_addr(), &src, "mig-1234").unwrap();
    let data = pattern(8 << 20);
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let w = std::thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    (&stream).read_to_end(&mut got).unwrap();
    w.join().unwrap();
    assert_eq!(target.join().unwrap(), data.len() as u64);
    assert_eq!(got.len(), data.len());
    assert!(got.iter().zip(&data).all(|(g, d)| *g == d ^ 0x5a), "the relayed bytes differ");

    // One connection per registration: the key is spent.
    let e = connect(listener.local_addr(), &src, "mig-1234").unwrap_err();
    assert!(
        matches!(&e, ProxyError::Refused { reason, .. } if reason.contains("no migration with this key")),
        "{e}"
    );
}

#[test]
fn unknown_keys_dead_targets_and_withdrawn_routes_are_refused_with_the_reason() {
    let ca = MigrationCa::generate().unwrap();
    let tls = ca.issue("node").unwrap().tls().unwrap();
    let listener = ProxyListener::bind(loopback(), &tls).unwrap();
    let addr = listener.local_addr();

    let e = connect(addr, &tls, "nobody").unwrap_err();
    assert!(
        e.to_string().contains("refused migration nobody: no migration with this key is expected here"),
        "{e}"
    );

    // The target launcher is gone: its socket does not answer.
    let dir = tempfile::tempdir().unwrap();
    let _route = listener.expect("dead", dir.path().join("migrate.sock")).unwrap();
    let e = connect(addr, &tls, "dead").unwrap_err();
    assert!(e.to_string().contains("the target launcher's socket"), "{e}");
    // Not listening yet is not the end of the route: once the launcher listens, the retry is
    // relayed, and that connection uses the route up.
    let late = std::os::unix::net::UnixListener::bind(dir.path().join("migrate.sock")).unwrap();
    let mut relayed = connect(addr, &tls, "dead").unwrap();
    let (mut target, _) = late.accept().unwrap();
    relayed.write_all(b"late\n").unwrap();
    let mut got = [0u8; 5];
    target.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"late\n");
    let e = connect(addr, &tls, "dead").unwrap_err();
    assert!(e.to_string().contains("no migration with this key"), "{e}");

    // A withdrawn route (the migration was cancelled) is not found.
    let route = listener.expect("cancelled", dir.path().join("x.sock")).unwrap();
    assert!(matches!(
        listener.expect("cancelled", dir.path().join("y.sock")),
        Err(ProxyError::Duplicate { .. })
    ));
    drop(route);
    assert!(connect(addr, &tls, "cancelled").unwrap_err().to_string().contains("no migration with this key"));

    // Keys the protocol cannot carry are refused before anything is sent.
    for bad in ["", "a b", "a\nok", &"k".repeat(129), "../x"] {
        assert!(matches!(connect(addr, &tls, bad), Err(ProxyError::BadKey { .. })), "{bad:?}");
        assert!(
            matches!(listener.expect(bad, dir.path().join("z")), Err(ProxyError::BadKey { .. })),
            "{bad:?}"
        );
    }
}

#[test]
fn a_peer_outside_the_migration_ca_gets_nothing_through() {
    let ca = MigrationCa::generate().unwrap();
    let tls = ca.issue("node-b").unwrap().tls().unwrap();
    let listener = ProxyListener::bind(loopback(), &tls).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, _target) = fake_target(dir.path());
    let _route = listener.expect("mig", socket).unwrap();

    // A client with a certificate of another CA: the listener refuses its handshake.
    let stranger = MigrationCa::generate().unwrap().issue("evil").unwrap().tls().unwrap();
    assert!(connect(listener.local_addr(), &stranger, "mig").is_err());

    // A listener of another CA: the client does not talk to it.
    let other = ProxyListener::bind(loopback(), &stranger).unwrap();
    let _r = other.expect("mig", dir.path().join("nothing.sock")).unwrap();
    let e = connect(other.local_addr(), &tls, "mig").unwrap_err();
    assert!(e.to_string().contains("TLS handshake"), "{e}");

    // The route survived both attempts: the real peer still gets through.
    let s = connect(listener.local_addr(), &tls, "mig").unwrap();
    (&s).write_all(b"\x00\x01").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"\x5a\x5b");
}

#[test]
fn a_silent_connection_holds_nobody_up() {
    let ca = MigrationCa::generate().unwrap();
    let tls = ca.issue("node").unwrap().tls().unwrap();
    let listener = ProxyListener::bind(loopback(), &tls).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (socket, _target) = fake_target(dir.path());
    let _route = listener.expect("mig", socket).unwrap();
    // Connected, says nothing (no TLS hello): others are still served meanwhile.
    let _idle = std::net::TcpStream::connect(listener.local_addr()).unwrap();
    let t = std::time::Instant::now();
    let s = connect(listener.local_addr(), &tls, "mig").unwrap();
    // Served at once, not after the idle one's handshake timed out.
    assert!(t.elapsed() < HANDSHAKE_TIMEOUT / 2, "waited {:?} behind a silent peer", t.elapsed());
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).unwrap();
    assert!(got.is_empty());
}

#[test]
fn material_round_trips_through_a_secret_directory_and_bad_pem_is_named() {
    let ca = MigrationCa::generate().unwrap();
    let m = ca.issue("node").unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (f, v) in [("ca.crt", &m.ca_pem), ("tls.crt", &m.cert_pem), ("tls.key", &m.key_pem)] {
        std::fs::write(dir.path().join(f), v).unwrap();
    }
    let loaded = NodeMaterial::load(dir.path()).unwrap();
    assert!(loaded.tls().is_ok());
    assert!(!format!("{loaded:?}").contains("PRIVATE"), "the key is not printed");

    let e = NodeMaterial { key_pem: "garbage".into(), ..m.clone() }.tls().err().unwrap();
    assert!(e.to_string().contains("no PRIVATE KEY in the node's key"), "{e}");
    let e = NodeMaterial { ca_pem: String::new(), ..m }.tls().err().unwrap();
    assert!(e.to_string().contains("no CERTIFICATE in the CA"), "{e}");
    let e = NodeMaterial::load(&dir.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("reading") && e.to_string().contains("ca.crt"), "{e}");
}
