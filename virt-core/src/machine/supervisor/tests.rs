use super::testing::{run_dir, FakeMachine};
use super::*;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::console::ConsoleState;
use super::control::handle;
use super::control::Shared;
use super::protocol::Lines;
use crate::machine::{Machine, MachineExit, MachineStatus};
use proptest::prelude::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::thread::JoinHandle;

struct Served {
    dir: PathBuf,
    machine: Arc<FakeMachine>,
    server: Option<JoinHandle<Result<MachineExit, SupervisorError>>>,
}

impl Served {
    fn finish(mut self) -> Result<MachineExit, SupervisorError> {
        self.server.take().unwrap().join().unwrap()
    }
}

impl Drop for Served {
    /// Ends an unfinished test's machine and removes its directory; `finish` leaves it to look at.
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.machine.end(MachineExit::Stopped);
            let _ = s.join();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn serve_fake(tag: &str) -> Served {
    let dir = run_dir(tag);
    let sup = Supervisor::claim(&dir).unwrap();
    let machine = Arc::new(FakeMachine::new(sup.console_sink()));
    let m: Arc<dyn Machine> = machine.clone();
    let info = ServeInfo { name: "vm1".into(), backend: "qemu".into() };
    let server = std::thread::spawn(move || sup.serve(m, info));
    let sock = dir.join(CONTROL_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(sock.exists() && dir.join(CONSOLE_SOCKET).exists()) {
        assert!(Instant::now() < deadline, "the sockets did not appear");
        std::thread::sleep(Duration::from_millis(5));
    }
    Served { dir, machine, server: Some(server) }
}

struct Client {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Client {
    fn new(dir: &Path) -> Self {
        let s = UnixStream::connect(dir.join(CONTROL_SOCKET)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self { r: BufReader::new(s.try_clone().unwrap()), w: s }
    }
    fn send_raw(&mut self, b: &[u8]) {
        self.w.write_all(b).unwrap();
    }
    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }
    fn ask(&mut self, req: &str) -> Value {
        self.send_raw(format!("{req}\n").as_bytes());
        self.line()
    }
}

#[test]
fn status_pause_resume_and_power_down() {
    let s = serve_fake("status");
    let mut c = Client::new(&s.dir);
    let st = c.ask(r#"{"op":"status"}"#);
    assert_eq!(st["ok"], true);
    assert_eq!(st["status"], "Running");
    assert_eq!(st["backend"], "qemu");
    assert_eq!(st["name"], "vm1");
    assert_eq!(st["pid"], std::process::id());
    assert_eq!(st["vncSocket"], "/run/vm1/vnc.sock");
    assert_eq!(st["accelerator"]["accelerator"], "Emulation");
    let parsed: StatusReply = serde_json::from_value(st).unwrap();
    assert_eq!(parsed.status, MachineStatus::Running);
    assert_eq!(std::fs::read_to_string(s.dir.join(PID_FILE)).unwrap().trim(), std::process::id().to_string());

    assert_eq!(c.ask(r#"{"op":"pause"}"#), serde_json::json!({"ok": true}));
    assert_eq!(c.ask(r#"{"op":"status"}"#)["status"], "Paused");
    let again = c.ask(r#"{"op":"pause"}"#);
    assert_eq!(again["ok"], false);
    assert_eq!(again["code"], "state");
    assert_eq!(again["state"], "Paused");
    assert!(again["error"].as_str().unwrap().contains("cannot pause"), "{again}");
    assert_eq!(c.ask(r#"{"op":"resume"}"#)["ok"], true);
    let r = c.ask(r#"{"op":"reset"}"#);
    assert_eq!((r["ok"].clone(), r["code"].clone()), (false.into(), "unsupported".into()));
    assert_eq!(c.ask(r#"{"op":"consoleInput","data":"ls\n"}"#)["ok"], true);
    assert_eq!(c.ask(r#"{"op":"consoleInput","bytes":[3]}"#)["ok"], true);
    assert_eq!(s.machine.wait_input(4), b"ls\n\x03");

    assert_eq!(c.ask(r#"{"op":"powerDown"}"#)["ok"], true);
    let dir = s.dir.clone();
    let exit = s.finish().unwrap();
    assert_eq!(exit, MachineExit::PowerOff);
    let j = std::fs::read_to_string(dir.join(EXIT_FILE)).unwrap();
    assert_eq!(serde_json::from_str::<MachineExit>(&j).unwrap(), MachineExit::PowerOff);
    assert!(!dir.join(CONTROL_SOCKET).exists() && !dir.join(CONSOLE_SOCKET).exists());
    assert!(!dir.join(PID_FILE).exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn events_stream_and_many_connections() {
    let s = serve_fake("events");
    let mut ev = Client::new(&s.dir);
    assert_eq!(ev.ask(r#"{"op":"events"}"#), serde_json::json!({"ok": true}));
    let mut clients: Vec<Client> = (0..5).map(|_| Client::new(&s.dir)).collect();
    for c in &mut clients {
        assert_eq!(c.ask(r#"{"op":"status"}"#)["ok"], true);
    }
    clients[0].ask(r#"{"op":"pause"}"#);
    clients[3].ask(r#"{"op":"resume"}"#);
    // Started came before the subscription (it may or may not be seen); then our changes.
    let mut seen = Vec::new();
    while seen.last() != Some(&Value::from("Resumed")) {
        let l = ev.line();
        if l != "Started" {
            seen.push(l);
        }
    }
    assert_eq!(seen, vec![Value::from("Paused"), Value::from("Resumed")]);
    clients[1].ask(r#"{"op":"stop"}"#);
    assert_eq!(ev.line(), serde_json::json!({"Ended": "Stopped"}));
    // The stream closes after the end, and so do the idle control connections.
    let mut rest = String::new();
    assert_eq!(ev.r.read_line(&mut rest).unwrap(), 0, "{rest}");
    assert_eq!(clients[4].r.read_line(&mut rest).unwrap(), 0, "{rest}");
    let dir = s.dir.clone();
    assert_eq!(s.finish().unwrap(), MachineExit::Stopped);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn garbage_gets_errors_and_the_connection_survives() {
    let s = serve_fake("garbage");
    let mut c = Client::new(&s.dir);
    for bad in [
        &b"not json"[..],
        b"{\"op\":\"explode\"}",
        b"{\"op\":42}",
        b"[1,2,3]",
        b"\xff\xfe\x00\x01",
        b"{\"op\":\"consoleInput\",\"bytes\":[999]}",
        b"{",
    ] {
        let mut l = bad.to_vec();
        l.push(b'\n');
        c.send_raw(&l);
        let r = c.line();
        assert_eq!(r["ok"], false, "{bad:?}: {r}");
        assert_eq!(r["code"], "badRequest");
        assert!(r["error"].as_str().unwrap().starts_with("bad request"), "{r}");
    }
    // An over-long line is one error, and the rest of it is skipped.
    let mut long = vec![b'x'; MAX_REQUEST + 10];
    long.push(b'\n');
    c.send_raw(&long);
    assert!(c.line()["error"].as_str().unwrap().contains("longer than"));
    // Blank lines are ignored; two requests in one write get two answers.
    c.send_raw(b"\n\r\n{\"op\":\"status\"}\n{\"op\":\"status\"}\n");
    assert_eq!(c.line()["status"], "Running");
    assert_eq!(c.line()["status"], "Running");
    // A request split across writes.
    c.send_raw(b"{\"op\":");
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(b"\"status\"}\n");
    assert_eq!(c.line()["ok"], true);
    drop(s);
}

#[test]
fn a_bad_request_names_the_line() {
    let e = parse_request(b"{\"op\":\"explode\"}").unwrap_err();
    assert!(matches!(&e, ProtocolError::BadRequest { line, .. } if line == "{\"op\":\"explode\"}"), "{e:?}");
    let msg = e.to_string();
    assert!(msg.starts_with("bad request \"{\\\"op\\\":\\\"explode\\\"}\": "), "{msg}");
    assert!(msg.contains("explode"), "{msg}");
    // A long line is quoted by its start only.
    let long = [b'z'; 500];
    let ProtocolError::BadRequest { line, .. } = parse_request(&long).unwrap_err() else {
        panic!("not BadRequest")
    };
    assert_eq!(line, format!("{}...", "z".repeat(120)));
}

#[test]
fn an_over_long_line_names_the_limit_and_its_start() {
    let mut l = Lines::new(8);
    let out = l.push(b"abcdefghijkl\nok\n");
    assert_eq!(out.len(), 2);
    match &out[0] {
        Err(ProtocolError::LineTooLong { max: 8, start }) => assert_eq!(start, "abcdefghijkl"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        out[0].as_ref().unwrap_err().to_string(),
        "line longer than 8 bytes (starts \"abcdefghijkl\")"
    );
    assert_eq!(out[1].as_ref().unwrap(), b"ok");
}

proptest! {
    #[test]
    fn arbitrary_lines_never_panic(line in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(r) = parse_request(&line) {
            // Whatever parses serialises back to a request that parses the same.
            let again = serde_json::to_vec(&r).unwrap();
            prop_assert_eq!(parse_request(&again).unwrap(), r);
        }
        let mut l = Lines::new(64);
        let out = l.push(&line);
        prop_assert!(out.len() <= line.iter().filter(|&&b| b == b'\n').count() + 1);
    }

    #[test]
    fn lines_split_anywhere_give_the_same_lines(
        text in "[a-z{}\":\n]{0,300}",
        cut in 0usize..300,
    ) {
        let b = text.as_bytes();
        let cut = cut.min(b.len());
        let mut whole = Lines::new(1000);
        let mut parts = Lines::new(1000);
        let text = |v: Vec<Result<Vec<u8>, ProtocolError>>| -> Vec<Result<Vec<u8>, String>> {
            v.into_iter().map(|r| r.map_err(|e| e.to_string())).collect()
        };
        let mut split = parts.push(&b[..cut]);
        split.extend(parts.push(&b[cut..]));
        prop_assert_eq!(text(whole.push(b)), text(split));
    }
}

fn console(dir: &Path) -> UnixStream {
    let s = UnixStream::connect(dir.join(CONSOLE_SOCKET)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

fn read_until(s: &mut UnixStream, want: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 65536];
    while !got.windows(want.len()).any(|w| w == want) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed before {:?}; got {:?}", quote(want, 50), quote(&got, 200));
        got.extend_from_slice(&b[..n]);
    }
    got
}

#[test]
fn one_console_session_at_a_time() {
    let s = serve_fake("console");
    s.machine.say(b"boot line 1\n");
    let mut first = console(&s.dir);
    assert_eq!(read_until(&mut first, b"line 1\n"), b"boot line 1\n");
    s.machine.say(b"live\n");
    assert_eq!(read_until(&mut first, b"live\n"), b"live\n");
    first.write_all(b"typed").unwrap();
    assert_eq!(s.machine.wait_input(5), b"typed");

    let mut second = console(&s.dir);
    let mut msg = String::new();
    second.read_to_string(&mut msg).unwrap();
    assert!(msg.starts_with("ERROR: console of vm1 is already in use"), "{msg:?}");
    assert!(msg.ends_with('\n') && msg.lines().count() == 1, "{msg:?}");

    drop(first);
    // The next viewer gets the session at once, with the history.
    let mut third = console(&s.dir);
    let got = read_until(&mut third, b"live\n");
    assert_eq!(got, b"boot line 1\nlive\n");
    drop(third);
}

#[test]
fn the_ring_buffer_replays_the_last_256_kib_and_the_log_keeps_all() {
    let s = serve_fake("ring");
    let mut total = Vec::new();
    for i in 0..100u32 {
        let chunk: Vec<u8> =
            format!("{i:05} ").bytes().chain(std::iter::repeat_n(b'a' + (i % 26) as u8, 4000)).collect();
        s.machine.say(&chunk);
        total.extend_from_slice(&chunk);
    }
    s.machine.say(b"END\n");
    total.extend_from_slice(b"END\n");
    assert!(total.len() > RING_BYTES);
    let mut c = console(&s.dir);
    let got = read_until(&mut c, b"END\n");
    assert_eq!(got.len(), RING_BYTES);
    assert_eq!(got, total[total.len() - RING_BYTES..]);
    assert_eq!(std::fs::read(s.dir.join(CONSOLE_LOG)).unwrap(), total);
    // One huge write keeps only its tail.
    drop(c);
    let huge = vec![b'z'; RING_BYTES + 1000];
    s.machine.say(&huge);
    let mut c = console(&s.dir);
    c.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 65536];
    while let Ok(n) = c.read(&mut b) {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, vec![b'z'; RING_BYTES]);
}

#[test]
fn a_second_launcher_on_the_same_run_dir_is_refused() {
    let s = serve_fake("lock");
    let t = Instant::now();
    let e = Supervisor::claim(&s.dir).err().expect("a second claim must fail");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, SupervisorError::Busy { pid: Some(p), .. } if p == std::process::id()), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("in use by another launcher") && msg.contains(&s.dir.display().to_string()));
    // The first one is unharmed.
    assert_eq!(Client::new(&s.dir).ask(r#"{"op":"status"}"#)["ok"], true);
    let dir = s.dir.clone();
    s.machine.end(MachineExit::PowerOff);
    s.finish().unwrap();
    // Released at the end: a new launcher may take the directory, and clears the old exit.
    let again = Supervisor::claim(&dir).unwrap();
    assert!(!dir.join(EXIT_FILE).exists());
    drop(again);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exit_json_is_written_atomically_and_stop_after_the_end_is_fine() {
    let s = serve_fake("exit");
    s.machine.end(MachineExit::Failed("boom \"quoted\"".into()));
    let dir = s.dir.clone();
    assert_eq!(s.finish().unwrap(), MachineExit::Failed("boom \"quoted\"".into()));
    let j = std::fs::read_to_string(dir.join(EXIT_FILE)).unwrap();
    assert_eq!(j, "{\"Failed\":\"boom \\\"quoted\\\"\"}\n");
    // No temporary file is left behind.
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
    // write_atomic replaces a file whole: a reader never sees a prefix.
    let p = dir.join("x.json");
    let stop = Arc::new(AtomicBool::new(false));
    let (p2, stop2) = (p.clone(), stop.clone());
    write_atomic(&p, &[b'a'; 100_000]).unwrap();
    let reader = std::thread::spawn(move || {
        while !stop2.load(Ordering::SeqCst) {
            let b = std::fs::read(&p2).unwrap();
            assert!(b == vec![b'a'; 100_000] || b == vec![b'b'; 200_000], "torn: {} bytes", b.len());
        }
    });
    for i in 0..50 {
        write_atomic(
            &p,
            &vec![if i % 2 == 0 { b'b' } else { b'a' }; if i % 2 == 0 { 200_000 } else { 100_000 }],
        )
        .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn stop_after_the_end_is_fine() {
    let m = Arc::new(FakeMachine::new(Box::new(std::io::sink())));
    m.end(MachineExit::PowerOff);
    // The fake refuses a second stop, as a strict backend might; the supervisor does not ask.
    assert!(m.stop().is_err());
    let hub = Arc::new(ConsoleHub {
        state: Mutex::new(ConsoleState {
            log: File::open("/dev/null").unwrap(),
            log_failed: false,
            ring: VecDeque::new(),
            session: None,
        }),
        next_session: AtomicU64::new(1),
    });
    let shared = Shared::new(ServeInfo { name: "vm1".into(), backend: "qemu".into() }, m, hub);
    assert_eq!(handle(&shared, Request::Stop), Reply::ok());
    assert_eq!(handle(&shared, Request::Pause).code, Some(ErrorCode::State));
}

#[test]
fn a_failed_start_is_recorded() {
    let dir = run_dir("fail");
    let sup = Supervisor::claim(&dir).unwrap();
    assert_eq!(sup.run_dir(), dir);
    let exit = sup.fail("disk root: no such file").unwrap();
    assert_eq!(exit, MachineExit::Failed("disk root: no such file".into()));
    let j = std::fs::read_to_string(dir.join(EXIT_FILE)).unwrap();
    assert!(j.contains("no such file"));
    Supervisor::claim(&dir).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn graceful_stop_powers_down_or_stops_after_the_grace() {
    let m = FakeMachine::new(Box::new(std::io::sink()));
    assert_eq!(graceful_stop(&m, Duration::from_secs(5)), Some(MachineExit::PowerOff));
    let m = FakeMachine::new(Box::new(std::io::sink()));
    m.deaf.store(true, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(graceful_stop(&m, Duration::from_millis(200)), Some(MachineExit::Stopped));
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[test]
fn long_run_dirs_are_refused_before_anything_starts() {
    let dir = std::env::temp_dir().join("x".repeat(120));
    let e = Supervisor::claim(&dir).err().unwrap();
    assert!(matches!(e, SupervisorError::PathTooLong { .. }), "{e:?}");
}
