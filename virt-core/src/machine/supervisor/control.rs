//! Serving the control socket: the acceptors, requests answered from the machine, and the event
//! stream.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::machine::{Machine, MachineEvent, MachineExit, MachineStatus};
use crate::vmm::devices::lock;

use super::console::ConsoleHub;
use super::console::ConsoleState;
use super::migration::MigrateReply;
use super::parse_request;
use super::peer_gone;
use super::protocol::send_line;
use super::protocol::Lines;
use super::wait_readable;
use super::AgentAnswer;
use super::ErrorCode;
use super::Reply;
use super::Request;
use super::StatusReply;
use super::{ServeInfo, EVENT_WRITE_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST, TICK};

pub(super) struct EventHub {
    pub(super) subs: Vec<Sender<MachineEvent>>,
    pub(super) ended: Option<MachineExit>,
}

pub(super) struct Shared {
    pub(super) info: ServeInfo,
    pub(super) machine: Arc<dyn Machine>,
    pub(super) console: Arc<ConsoleHub>,
    pub(super) hub: Mutex<EventHub>,
    pub(super) shutdown: AtomicBool,
    /// Clones of the control connections still open, to close them at the end.
    pub(super) conns: Mutex<Vec<(u64, UnixStream)>>,
    /// Connection threads running (control and console).
    pub(super) open: AtomicUsize,
}

impl Shared {
    pub(super) fn new(info: ServeInfo, machine: Arc<dyn Machine>, console: Arc<ConsoleHub>) -> Arc<Self> {
        Arc::new(Shared {
            info,
            machine,
            console,
            hub: Mutex::new(EventHub { subs: Vec::new(), ended: None }),
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            open: AtomicUsize::new(0),
        })
    }
}

/// Forwards the machine's events to subscribers until it ends; returns the exit.
pub(super) fn pump_events(shared: &Shared) -> MachineExit {
    let broadcast = |ev: MachineEvent| lock(&shared.hub).subs.retain(|s| s.send(ev.clone()).is_ok());
    loop {
        match shared.machine.next_event(TICK) {
            Some(MachineEvent::Ended(exit)) => return exit,
            Some(ev) => broadcast(ev),
            None => {
                if let Some(exit) = shared.machine.wait(Some(Duration::ZERO)) {
                    // Ended without (yet) an Ended event: pass on what is still queued.
                    while let Some(ev) = shared.machine.next_event(Duration::from_millis(100)) {
                        if matches!(ev, MachineEvent::Ended(_)) {
                            break;
                        }
                        broadcast(ev);
                    }
                    return exit;
                }
            }
        }
    }
}

pub(super) type Handler = fn(&Arc<Shared>, UnixStream);

pub(super) fn spawn_acceptor(
    shared: Arc<Shared>,
    l: UnixListener,
    what: &'static str,
    role: crate::jail::Role,
    handle: Handler,
) -> Option<std::thread::JoinHandle<()>> {
    let machine = shared.info.name.clone();
    let r = std::thread::Builder::new().name(format!("{machine}-{what}")).spawn(move || {
        crate::jail::enter_or_die(role);
        while !shared.shutdown.load(Ordering::SeqCst) {
            if !wait_readable(&l, TICK) {
                continue;
            }
            match l.accept() {
                Ok((s, _)) => {
                    if s.set_nonblocking(false).is_ok() {
                        handle(&shared, s);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log::warn!("machine {}: accept on the {what} socket: {e}", shared.info.name);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    });
    match r {
        Ok(h) => Some(h),
        Err(e) => {
            log::error!("machine {machine}: cannot spawn the {what} acceptor: {e}");
            None
        }
    }
}

/// Counts a connection thread; the count drops when this is dropped.
pub(super) struct Open(Arc<Shared>);

impl Open {
    pub(super) fn new(s: &Arc<Shared>) -> Self {
        s.open.fetch_add(1, Ordering::SeqCst);
        Self(s.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn accept_control(shared: &Arc<Shared>, mut s: UnixStream) {
    let _ = s.set_write_timeout(Some(EVENT_WRITE_TIMEOUT));
    if shared.open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
        let msg = format!("machine {}: more than {MAX_CONNECTIONS} connections", shared.info.name);
        let _ = send_line(&mut s, &Reply::err(ErrorCode::Busy, msg));
        return;
    }
    static IDS: AtomicU64 = AtomicU64::new(1);
    let id = IDS.fetch_add(1, Ordering::Relaxed);
    let Ok(clone) = s.try_clone() else { return };
    let open = Open::new(shared);
    lock(&shared.conns).push((id, clone));
    let sh = shared.clone();
    let r = std::thread::Builder::new().name(format!("{}-ctl{id}", shared.info.name)).spawn(move || {
        crate::jail::enter_or_die(crate::jail::Role::Control);
        let _open = open;
        serve_control(&sh, s);
        lock(&sh.conns).retain(|(i, _)| *i != id);
    });
    if let Err(e) = r {
        log::warn!("machine {}: cannot spawn a control connection thread: {e}", shared.info.name);
        lock(&shared.conns).retain(|(i, _)| *i != id);
    }
}

/// Answers requests on one control connection until it closes or becomes an event stream.
pub(super) fn serve_control(shared: &Arc<Shared>, mut s: UnixStream) {
    let mut lines = Lines::new(MAX_REQUEST);
    let mut buf = [0u8; 4096];
    // Descriptors passed with requests (a migration's stream); the latest goes with `migrateOut`.
    let mut fds = Vec::new();
    loop {
        let n = match super::migration::recv_with_fds(&s, &mut buf, &mut fds) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for line in lines.push(&buf[..n]) {
            let req = match line {
                Ok(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(l) => parse_request(&l),
                Err(e) => Err(e),
            };
            let sent = match req {
                Err(e) => send_line(&mut s, &Reply::err(ErrorCode::BadRequest, e.to_string())),
                Ok(Request::Events) => return stream_events(shared, s),
                Ok(Request::Status) => send_line(&mut s, &status_reply(shared)),
                Ok(Request::GuestAgent) => {
                    let a =
                        AgentAnswer { ok: true, agent: shared.machine.guest_agent(), fs_freeze_status: None };
                    send_line(&mut s, &a)
                }
                Ok(r @ (Request::FsFreeze | Request::FsThaw)) => {
                    match shared.machine.guest_fs_freeze(r == Request::FsFreeze) {
                        Ok(st) => send_line(
                            &mut s,
                            &AgentAnswer { ok: true, agent: None, fs_freeze_status: Some(st) },
                        ),
                        Err(e) => send_line(&mut s, &Reply::from_machine(Err(e))),
                    }
                }
                Ok(Request::MigrateOut(opts)) => match fds.pop() {
                    Some(fd) => {
                        fds.clear();
                        let stream = UnixStream::from(fd);
                        match shared.machine.migrate_out(stream, &opts) {
                            Ok(report) => send_line(&mut s, &MigrateReply { ok: true, report }),
                            Err(e) => send_line(&mut s, &Reply::from_machine(Err(e))),
                        }
                    }
                    None => send_line(
                        &mut s,
                        &Reply::err(
                            ErrorCode::BadRequest,
                            "migrateOut: no stream to the destination came with the request (pass its \
                             descriptor with SCM_RIGHTS)"
                                .into(),
                        ),
                    ),
                },
                Ok(r) => send_line(&mut s, &handle(shared, r)),
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

pub(super) fn status_reply(shared: &Shared) -> StatusReply {
    let m = &shared.machine;
    StatusReply {
        ok: true,
        name: shared.info.name.clone(),
        status: m.status(),
        accelerator: m.accelerator(),
        backend: shared.info.backend.clone(),
        pid: crate::jail::host_pid(),
        vnc_socket: m.vnc_socket(),
    }
}

pub(super) fn handle(shared: &Shared, r: Request) -> Reply {
    let m = &shared.machine;
    Reply::from_machine(match r {
        Request::Pause => m.pause(),
        Request::Resume => m.resume(),
        Request::PowerDown => m.power_down(),
        Request::Reset => m.reset(),
        Request::Stop => {
            if matches!(m.status(), MachineStatus::Stopped(_)) || lock(&shared.hub).ended.is_some() {
                Ok(())
            } else {
                m.stop()
            }
        }
        Request::ConsoleInput { data, bytes } => {
            let mut b = data.map(String::into_bytes).unwrap_or_default();
            b.extend(bytes.unwrap_or_default());
            m.console_input(&b)
        }
        Request::GuestShutdown { mode } => m.guest_shutdown(mode),
        Request::GuestCredentials { credentials } => m.guest_set_credentials(credentials),
        Request::MigrateCancel => m.migrate_cancel(),
        Request::Status
        | Request::Events
        | Request::GuestAgent
        | Request::FsFreeze
        | Request::FsThaw
        | Request::MigrateOut { .. } => Ok(()),
    })
}

/// Serves one control connection for `machine` on `stream` until the peer closes it, as a launcher
/// does, with the console going nowhere. The machine counts as ended for event subscribers, so an
/// `events` request is answered at once and ends the connection. For [`crate::fuzzing`].
pub(crate) fn serve_control_for_fuzzing(
    machine: Arc<dyn Machine>,
    stream: UnixStream,
) -> std::io::Result<()> {
    let log = OpenOptions::new().write(true).open("/dev/null")?;
    let console = Arc::new(ConsoleHub {
        state: Mutex::new(ConsoleState { log, log_failed: false, ring: VecDeque::new(), session: None }),
        next_session: AtomicU64::new(1),
    });
    let info = ServeInfo { name: "fuzz".into(), backend: "fuzz".into() };
    let shared = Shared::new(info, machine, console);
    lock(&shared.hub).ended = Some(MachineExit::Stopped);
    serve_control(&shared, stream);
    Ok(())
}

/// Writes the machine's events to `s`, one JSON per line, after an `{"ok":true}` line.
pub(super) fn stream_events(shared: &Arc<Shared>, mut s: UnixStream) {
    let (tx, rx) = channel();
    {
        let mut hub = lock(&shared.hub);
        match &hub.ended {
            // Already over: the subscriber learns the end and the stream closes.
            Some(exit) => {
                let _ = tx.send(MachineEvent::Ended(exit.clone()));
                // No sender left: the stream ends right after the end, not at the next tick.
                drop(tx);
            }
            None => hub.subs.push(tx),
        }
    }
    if send_line(&mut s, &Reply::ok()).is_err() {
        return;
    }
    loop {
        match rx.recv_timeout(TICK) {
            Ok(ev) => {
                if send_line(&mut s, &ev).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if peer_gone(&s) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
