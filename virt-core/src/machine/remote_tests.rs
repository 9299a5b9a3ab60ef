//! Unit tests of remote.rs (kept apart so the module itself stays readable).

use super::super::accel::Accelerator;
use super::super::supervisor::testing::{run_dir, FakeMachine};
use super::super::supervisor::{ServeInfo, Supervisor, SupervisorError};
use super::*;
use std::sync::Arc;
use std::thread::JoinHandle;

fn serve(tag: &str) -> (PathBuf, Arc<FakeMachine>, JoinHandle<Result<MachineExit, SupervisorError>>) {
    let dir = run_dir(tag);
    let sup = Supervisor::claim(&dir).unwrap();
    let m = Arc::new(FakeMachine::new(sup.console_sink()));
    let dm: Arc<dyn Machine> = m.clone();
    let h =
        std::thread::spawn(move || sup.serve(dm, ServeInfo { name: "vm1".into(), backend: "qemu".into() }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_alive(&dir) {
        assert!(Instant::now() < deadline, "the launcher did not come up");
        std::thread::sleep(Duration::from_millis(5));
    }
    (dir, m, h)
}

fn drain_started(r: &RemoteMachine) {
    // Started was queued before anyone subscribed: it is usually consumed before connect.
    let _ = r.next_event(Duration::from_millis(50));
}

#[test]
fn the_machine_api_over_the_sockets() {
    let (dir, fake, server) = serve("api");
    assert!(launcher_running(&dir));
    let r = RemoteMachine::connect(&dir).unwrap();
    assert_eq!(r.name(), "vm1");
    assert_eq!(r.backend(), "qemu");
    assert_eq!(r.launcher_pid(), std::process::id());
    assert_eq!(r.accelerator().accelerator, Accelerator::Emulation);
    assert_eq!(r.vnc_socket(), Some("/run/vm1/vnc.sock".into()));
    assert_eq!(r.status(), MachineStatus::Running);
    drain_started(&r);

    r.pause().unwrap();
    assert_eq!(r.status(), MachineStatus::Paused);
    assert_eq!(r.next_event(Duration::from_secs(5)), Some(MachineEvent::Paused));
    match r.pause() {
        Err(MachineError::State { op: "pause", state: MachineStatus::Paused, machine }) => {
            assert_eq!(machine, "vm1")
        }
        other => panic!("{other:?}"),
    }
    r.resume().unwrap();
    assert_eq!(r.next_event(Duration::from_secs(5)), Some(MachineEvent::Resumed));
    assert_eq!(r.next_event(Duration::from_millis(100)), None);
    match r.reset() {
        Err(e @ MachineError::Unsupported { .. }) => {
            assert_eq!(e.to_string(), "machine vm1: reset is not supported by the qemu backend")
        }
        other => panic!("{other:?}"),
    }
    r.console_input(b"echo hi\n").unwrap();
    r.console_input(&[0xff, 0x03]).unwrap();
    assert_eq!(fake.wait_input(10), b"echo hi\n\xff\x03");
    assert_eq!(r.wait(Some(Duration::from_millis(100))), None);

    // A second client (a restarted daemon) sees the same machine.
    let r2 = RemoteMachine::connect(&dir).unwrap();
    assert_eq!(r2.status(), MachineStatus::Running);

    r.power_down().unwrap();
    assert_eq!(r.next_event(Duration::from_secs(5)), Some(MachineEvent::PowerDownRequested));
    assert_eq!(r.next_event(Duration::from_secs(5)), Some(MachineEvent::Ended(MachineExit::PowerOff)));
    assert_eq!(r.next_event(Duration::from_millis(10)), None);
    assert_eq!(r2.wait(None), Some(MachineExit::PowerOff));
    assert_eq!(server.join().unwrap().unwrap(), MachineExit::PowerOff);

    // The launcher is gone: the end is known, stop is fine, the rest says why not.
    assert!(!is_alive(&dir));
    assert!(!launcher_running(&dir));
    assert_eq!(read_exit(&dir), Some(MachineExit::PowerOff));
    assert_eq!(r.status(), MachineStatus::Stopped(MachineExit::PowerOff));
    r.stop().unwrap();
    r2.stop().unwrap();
    assert!(matches!(r2.pause(), Err(MachineError::State { state: MachineStatus::Stopped(_), .. })));
    let e = RemoteMachine::connect(&dir).unwrap_err();
    assert!(matches!(e, RemoteError::Gone { exit: Some(MachineExit::PowerOff), .. }), "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn console_sessions_busy_then_free() {
    let (dir, fake, server) = serve("console");
    let r = RemoteMachine::connect(&dir).unwrap();
    fake.say(b"[    0.000000] Linux version\nlogin: ");
    let mut c = r.console().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.ends_with(b"login: ") {
        let n = c.read(&mut b).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&b[..n]);
    }
    assert_eq!(got, b"[    0.000000] Linux version\nlogin: ");
    c.write_all(b"root\n").unwrap();
    assert_eq!(fake.wait_input(5), b"root\n");

    match r.console() {
        Err(RemoteError::ConsoleBusy { name, .. }) => assert_eq!(name, "vm1"),
        other => panic!("{other:?}"),
    }
    drop(c);
    let c2 = r.console().unwrap();
    drop(c2);
    // An empty ring: the session is granted after the short peek.
    let t = Instant::now();
    let c3 = r.console().unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    drop(c3);

    r.stop().unwrap();
    assert_eq!(r.wait(Some(Duration::from_secs(5))), Some(MachineExit::Stopped));
    assert_eq!(server.join().unwrap().unwrap(), MachineExit::Stopped);
    assert!(matches!(r.console(), Err(RemoteError::Gone { exit: Some(MachineExit::Stopped), .. })));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_killed_launcher_is_told_from_a_live_one() {
    let dir = run_dir("killed");
    std::fs::create_dir_all(&dir).unwrap();
    // Nothing there.
    assert!(!is_alive(&dir) && !launcher_running(&dir) && read_exit(&dir).is_none());
    // A socket file nobody listens on (the launcher was SIGKILLed): not alive, no exit recorded.
    drop(std::os::unix::net::UnixListener::bind(dir.join(CONTROL_SOCKET)).unwrap());
    assert!(!is_alive(&dir));
    let e = RemoteMachine::connect(&dir).unwrap_err();
    assert!(matches!(e, RemoteError::Gone { exit: None, .. }), "{e:?}");
    assert!(e.to_string().contains("no exit.json"), "{e}");
    // A claimed directory whose machine is still starting: locked, not yet answering.
    let sup = Supervisor::claim(&dir).unwrap();
    assert!(launcher_running(&dir) && !is_alive(&dir));
    let e = RemoteMachine::connect(&dir).unwrap_err();
    assert!(matches!(e, RemoteError::NotReady { .. }), "{e:?}");
    // The probe does not get in the way of the lock.
    drop(sup);
    Supervisor::claim(&dir).unwrap();
    // Something that answers garbage is not a launcher.
    let l = std::os::unix::net::UnixListener::bind(dir.join(CONTROL_SOCKET)).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 100];
        let _ = s.read(&mut b);
        s.write_all(b"hello\n").unwrap();
    });
    assert!(!is_alive(&dir));
    t.join().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_machine_ending_unseen_still_reports_its_exit() {
    let (dir, fake, server) = serve("unseen");
    let r = RemoteMachine::connect(&dir).unwrap();
    drain_started(&r);
    fake.end(MachineExit::Reboot);
    assert_eq!(server.join().unwrap().unwrap(), MachineExit::Reboot);
    // The subscribed stream delivered the end before closing.
    assert_eq!(r.next_event(Duration::from_secs(5)), Some(MachineEvent::Ended(MachineExit::Reboot)));
    assert_eq!(r.wait(Some(Duration::ZERO)), Some(MachineExit::Reboot));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn connect_when_up_waits_for_a_starting_launcher_and_no_longer() {
    let dir = run_dir("when-up");
    // Claimed but never served: NotReady once the timeout has passed, not before.
    let sup = Supervisor::claim(&dir).unwrap();
    let t = Instant::now();
    let e = RemoteMachine::connect_when_up(&dir, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, RemoteError::NotReady { .. }), "{e:?}");
    assert!(t.elapsed() >= Duration::from_millis(300), "{:?}", t.elapsed());
    // The same launcher comes up 300 ms from now (a migration target finishing, a reboot starting):
    // the plain connect fails, the patient one gets the machine.
    assert!(matches!(RemoteMachine::connect(&dir), Err(RemoteError::NotReady { .. })));
    let fake = Arc::new(FakeMachine::new(sup.console_sink()));
    let dm: Arc<dyn Machine> = fake.clone();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        sup.serve(dm, ServeInfo { name: "late".into(), backend: "native".into() })
    });
    let r = RemoteMachine::connect_when_up(&dir, Duration::from_secs(10)).unwrap();
    assert_eq!(r.name(), "late");
    r.power_down().unwrap();
    assert_eq!(server.join().unwrap().unwrap(), MachineExit::PowerOff);
    // A launcher that ended fails at once, whatever the timeout.
    let t = Instant::now();
    let e = RemoteMachine::connect_when_up(&dir, Duration::from_secs(10)).unwrap_err();
    assert!(matches!(e, RemoteError::Gone { exit: Some(MachineExit::PowerOff), .. }), "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_exiting_launcher_is_present_until_its_set_up_lock_goes() {
    use std::os::fd::AsRawFd as _;
    let dir = run_dir("present");
    std::fs::create_dir_all(&dir).unwrap();
    assert!(!launcher_present(&dir));
    // The machine's lock went, the jail's outer process still tears down holding the set-up lock.
    let f = std::fs::File::create(dir.join(super::super::supervisor::SETUP_LOCK_FILE)).unwrap();
    // SAFETY: flock on a descriptor `f` owns.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    assert!(launcher_present(&dir) && !launcher_running(&dir));
    drop(f);
    assert!(!launcher_present(&dir));
    // A launcher holding the machine's lock is present too.
    let sup = Supervisor::claim(&dir).unwrap();
    assert!(launcher_present(&dir) && launcher_running(&dir));
    drop(sup);
    assert!(!launcher_present(&dir));
    let _ = std::fs::remove_dir_all(dir);
}
