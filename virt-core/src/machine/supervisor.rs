//! The launcher side of a supervised machine: one process per VM serves its [`Machine`] over unix
//! sockets in the VM's run directory, so the node daemon can die and come back (and reconnect with
//! [`super::remote::RemoteMachine`]) while the VM keeps running.
//!
//! Files in the run directory (see docs/launcher.md):
//!
//! | File | What |
//! | --- | --- |
//! | `launcher.lock` | `flock`ed exclusively for the launcher's life: a second launcher fails at once |
//! | `launcher.pid` | the launcher's pid (removed at the end) |
//! | `console.log` | every byte of guest serial output, appended, watched or not |
//! | `control.sock` | newline-delimited JSON requests and answers ([`Request`]) |
//! | `console.sock` | one interactive console session: the last 256 KiB, then live output; input goes to the guest |
//! | `exit.json` | how the machine ended ([`MachineExit`]), written atomically before the sockets go |
//!
//! Use: [`Supervisor::claim`] the run directory (takes the lock), start the machine with
//! [`Supervisor::console_sink`] as its console, then [`Supervisor::serve`] until it ends (or
//! [`Supervisor::fail`] when it could not start).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::accel::AccelDecision;
use super::{ConsoleSink, Machine, MachineError, MachineEvent, MachineExit, MachineStatus};
use crate::vmm::devices::lock;

/// Held (flock, exclusive) while a launcher runs.
pub const LOCK_FILE: &str = "launcher.lock";
/// The launcher's pid.
pub const PID_FILE: &str = "launcher.pid";
/// All guest serial output.
pub const CONSOLE_LOG: &str = "console.log";
/// The control socket.
pub const CONTROL_SOCKET: &str = "control.sock";
/// The console socket.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// How the machine ended.
pub const EXIT_FILE: &str = "exit.json";
/// Console output kept for a late viewer.
pub const RING_BYTES: usize = 256 * 1024;
/// The longest request line accepted on the control socket.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Control connections served at once; more are answered with an error and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest unix socket path (sun_path is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How long a console client may stall before it loses its session.
const CONSOLE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an event subscriber may stall before it is dropped.
const EVENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle loops look at the shutdown flag.
const TICK: Duration = Duration::from_millis(200);
/// How long `claim` retries a held lock (a `remote::launcher_running` probe holds it for microseconds).
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// Errors of the supervisor; each names the run directory and what failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// A file or socket operation in the run directory failed.
    #[error("run directory {dir}: {op}: {source}")]
    Io {
        /// The run directory.
        dir: PathBuf,
        /// What was being done.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another launcher holds the run directory.
    #[error("run directory {dir} is in use by another launcher{}: a VM is never started twice", pid_note(*.pid))]
    Busy {
        /// The run directory.
        dir: PathBuf,
        /// The other launcher's pid, if its pid file says.
        pid: Option<u32>,
    },
    /// The run directory's path is too long for its sockets.
    #[error("socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows")]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
    },
}

fn pid_note(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
}

/// A request on the control socket: one JSON object per line, `{"op":"status"}` and so on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Answered with a [`StatusReply`].
    Status,
    /// [`Machine::pause`].
    Pause,
    /// [`Machine::resume`].
    Resume,
    /// [`Machine::power_down`] (ACPI power button).
    PowerDown,
    /// [`Machine::reset`].
    Reset,
    /// [`Machine::stop`]; fine after the machine ended.
    Stop,
    /// Turns the connection into a stream of [`MachineEvent`] lines after a `{"ok":true}` line.
    Events,
    /// [`Machine::console_input`]: `data` (text) or `bytes` (any bytes, as numbers).
    ConsoleInput {
        /// Text to type.
        #[serde(default)]
        data: Option<String>,
        /// Bytes to type.
        #[serde(default)]
        bytes: Option<Vec<u8>>,
    },
}

/// The answer to [`Request::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    /// Always true.
    pub ok: bool,
    /// The machine's name.
    pub name: String,
    /// Its status.
    pub status: MachineStatus,
    /// Its accelerator and why.
    pub accelerator: AccelDecision,
    /// `native` or `qemu`.
    pub backend: String,
    /// The launcher's pid.
    pub pid: u32,
    /// The VNC display's address, if it has one.
    pub vnc_address: Option<std::net::SocketAddr>,
}

/// What failed, in an error answer's `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ErrorCode {
    /// The line is not a request.
    BadRequest,
    /// The operation does not apply in the machine's state (the answer carries `state`).
    State,
    /// The backend cannot do it.
    Unsupported,
    /// The operation failed.
    Failed,
    /// The launcher serves no more connections now.
    Busy,
}

/// An answer other than a status: `{"ok":true}` or `{"ok":false,"error":..,"code":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// The machine's state, for [`ErrorCode::State`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<MachineStatus>,
    /// What is not supported, for [`ErrorCode::Unsupported`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
}

impl Reply {
    fn ok() -> Self {
        Self { ok: true, error: None, code: None, state: None, what: None }
    }
    fn err(code: ErrorCode, error: String) -> Self {
        Self { ok: false, error: Some(error), code: Some(code), state: None, what: None }
    }
    fn from_machine(r: Result<(), MachineError>) -> Self {
        match r {
            Ok(()) => Self::ok(),
            Err(e) => {
                let msg = e.to_string();
                match e {
                    MachineError::State { state, .. } => {
                        Self { state: Some(state), ..Self::err(ErrorCode::State, msg) }
                    }
                    MachineError::Unsupported { what, .. } => {
                        Self { what: Some(what), ..Self::err(ErrorCode::Unsupported, msg) }
                    }
                    MachineError::Start { .. } | MachineError::Control { .. } => {
                        Self::err(ErrorCode::Failed, msg)
                    }
                }
            }
        }
    }
}

/// At most `n` bytes of `b`, lossily as text, for error messages.
pub(crate) fn quote(b: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(n)]).into_owned();
    if b.len() > n {
        format!("{s}...")
    } else {
        s
    }
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| format!("bad request {:?}: {e}", quote(line, 120)))
}

/// Splits a byte stream into lines of at most `max` bytes; an over-long line becomes one error and is
/// skipped up to its newline.
pub(crate) struct Lines {
    buf: Vec<u8>,
    max: usize,
    discarding: bool,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max, discarding: false }
    }

    /// Feeds bytes; returns the lines they complete (a trailing `\r` removed).
    pub(crate) fn push(&mut self, mut data: &[u8]) -> Vec<Result<Vec<u8>, String>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let (chunk, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let c = &data[..i];
                    data = &data[i + 1..];
                    (c, true)
                }
                None => {
                    let c = data;
                    data = &[];
                    (c, false)
                }
            };
            if self.discarding {
                self.discarding = !complete;
                continue;
            }
            if self.buf.len() + chunk.len() > self.max {
                let start = if self.buf.is_empty() { chunk } else { &self.buf[..] };
                out.push(Err(format!("line longer than {} bytes (starts {:?})", self.max, quote(start, 60))));
                self.buf.clear();
                self.discarding = !complete;
                continue;
            }
            self.buf.extend_from_slice(chunk);
            if complete {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(Ok(line));
            }
        }
        out
    }
}

/// Waits up to `timeout` for `fd` to be readable (or hung up); false on timeout.
pub(crate) fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for a descriptor the caller keeps open during the call.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    r > 0
}

/// Whether the peer of `s` has closed (or shut down its writing side).
pub(crate) fn peer_gone(s: &UnixStream) -> bool {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd for a descriptor `s` keeps open during the call; timeout 0.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes `v` and a newline in one write.
fn send_line(w: &mut impl Write, v: &impl Serialize) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    b.push(b'\n');
    w.write_all(&b)
}

/// Writes `data` to `path` through a temporary file, synced and renamed, so readers see all or nothing.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        // Make the rename durable; not all file systems allow syncing a directory.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `exit.json` in `run_dir` (atomically) on behalf of a launcher that ends outside
/// [`Supervisor::serve`]: e.g. the confinement's reporter, when a thread made a forbidden call.
pub fn write_exit_record(run_dir: &Path, exit: &MachineExit) -> std::io::Result<()> {
    let mut json = serde_json::to_vec(exit).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomic(&run_dir.join(EXIT_FILE), &json)
}

/// The console: `console.log`, the ring buffer and the one interactive session.
struct ConsoleHub {
    state: Mutex<ConsoleState>,
    next_session: AtomicU64,
}

struct ConsoleState {
    log: File,
    log_failed: bool,
    ring: VecDeque<u8>,
    session: Option<Session>,
}

struct Session {
    id: u64,
    out: UnixStream,
}

impl ConsoleHub {
    fn output(&self, b: &[u8]) {
        let mut st = lock(&self.state);
        if let Err(e) = st.log.write_all(b) {
            if !st.log_failed {
                log::warn!("console.log: {e}; guest output is still kept for the console socket");
                st.log_failed = true;
            }
        }
        let keep = &b[b.len().saturating_sub(RING_BYTES)..];
        let over = (st.ring.len() + keep.len()).saturating_sub(RING_BYTES);
        st.ring.drain(..over);
        st.ring.extend(keep);
        if let Some(s) = &mut st.session {
            if s.out.write_all(b).is_err() {
                let _ = s.out.shutdown(std::net::Shutdown::Both);
                st.session = None;
            }
        }
    }
}

/// The console sink given to [`super::MachineBackend::start`].
struct HubSink(Arc<ConsoleHub>);

impl Write for HubSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.output(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A claimed run directory: the lock is held until this is dropped (or served to the end).
pub struct Supervisor {
    dir: PathBuf,
    _lock: File,
    console: Arc<ConsoleHub>,
}

/// What [`Supervisor::serve`] reports about the machine besides the machine itself.
#[derive(Debug, Clone)]
pub struct ServeInfo {
    /// The machine's name (in the console's busy message).
    pub name: String,
    /// The backend's name (`native`, `qemu`).
    pub backend: String,
}

impl Supervisor {
    /// Takes `run_dir` (created 0700 if missing) for one launcher: locks `launcher.lock`, writes
    /// `launcher.pid`, removes what a previous launcher left (`exit.json`, sockets) and opens
    /// `console.log`. Fails with [`SupervisorError::Busy`] while another launcher holds it.
    pub fn claim(run_dir: &Path) -> Result<Supervisor, SupervisorError> {
        let io = |op: String| {
            let dir = run_dir.to_path_buf();
            move |source| SupervisorError::Io { dir, op, source }
        };
        for s in [CONTROL_SOCKET, CONSOLE_SOCKET] {
            let p = run_dir.join(s);
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(SupervisorError::PathTooLong { path: p });
            }
        }
        if !run_dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(run_dir)
                .map_err(io("create it".into()))?;
        }
        let lock_path = run_dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(format!("open {LOCK_FILE}")))?;
        let deadline = Instant::now() + LOCK_RETRY;
        loop {
            // SAFETY: flock on a descriptor `lock_file` owns; no memory is involved.
            if unsafe { libc::flock(lock_file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(format!("lock {LOCK_FILE}"))(e));
            }
            if Instant::now() >= deadline {
                let pid =
                    std::fs::read_to_string(run_dir.join(PID_FILE)).ok().and_then(|s| s.trim().parse().ok());
                return Err(SupervisorError::Busy { dir: run_dir.to_path_buf(), pid });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for stale in [EXIT_FILE, CONTROL_SOCKET, CONSOLE_SOCKET] {
            match std::fs::remove_file(run_dir.join(stale)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("remove the stale {stale}"))(e)),
            }
        }
        write_atomic(&run_dir.join(PID_FILE), format!("{}\n", crate::jail::host_pid()).as_bytes())
            .map_err(io(format!("write {PID_FILE}")))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join(CONSOLE_LOG))
            .map_err(io(format!("open {CONSOLE_LOG}")))?;
        Ok(Supervisor {
            dir: run_dir.to_path_buf(),
            _lock: lock_file,
            console: Arc::new(ConsoleHub {
                state: Mutex::new(ConsoleState {
                    log,
                    log_failed: false,
                    ring: VecDeque::new(),
                    session: None,
                }),
                next_session: AtomicU64::new(1),
            }),
        })
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The console sink to start the machine with: output goes to `console.log`, the ring buffer
    /// and the console session.
    pub fn console_sink(&self) -> ConsoleSink {
        Box::new(HubSink(self.console.clone()))
    }

    /// Records that the machine could not start (`exit.json` says `Failed(msg)`) and releases the
    /// run directory.
    pub fn fail(self, msg: &str) -> Result<MachineExit, SupervisorError> {
        let exit = MachineExit::Failed(msg.to_string());
        self.write_exit(&exit)?;
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        Ok(exit)
    }

    fn write_exit(&self, exit: &MachineExit) -> Result<(), SupervisorError> {
        let io =
            |source| SupervisorError::Io { dir: self.dir.clone(), op: format!("write {EXIT_FILE}"), source };
        let mut json = serde_json::to_vec(exit).map_err(|e| io(std::io::Error::other(e)))?;
        json.push(b'\n');
        write_atomic(&self.dir.join(EXIT_FILE), &json).map_err(io)
    }

    /// Serves `machine` on `control.sock` and `console.sock` until it ends; then writes `exit.json`,
    /// removes the sockets and returns the exit. `serve` consumes the machine's event stream
    /// ([`Machine::next_event`]); others may call the rest of the machine (e.g. a signal handler's
    /// [`graceful_stop`]).
    pub fn serve(self, machine: Arc<dyn Machine>, info: ServeInfo) -> Result<MachineExit, SupervisorError> {
        let bind = |name: &str| {
            let p = self.dir.join(name);
            let l = UnixListener::bind(&p).map_err(|source| SupervisorError::Io {
                dir: self.dir.clone(),
                op: format!("listen on {name}"),
                source,
            })?;
            l.set_nonblocking(true).map_err(|source| SupervisorError::Io {
                dir: self.dir.clone(),
                op: format!("make {name} non-blocking"),
                source,
            })?;
            Ok::<_, SupervisorError>(l)
        };
        let shared = Shared::new(info, machine, self.console.clone());
        let control = bind(CONTROL_SOCKET)?;
        let console = match bind(CONSOLE_SOCKET) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(self.dir.join(CONTROL_SOCKET));
                return Err(e);
            }
        };
        let acceptors = [
            spawn_acceptor(shared.clone(), control, "control", crate::jail::Role::Control, accept_control),
            spawn_acceptor(shared.clone(), console, "console", crate::jail::Role::Console, accept_console),
        ];

        let exit = pump_events(&shared);

        let written = self.write_exit(&exit);
        {
            let mut hub = lock(&shared.hub);
            hub.ended = Some(exit.clone());
            // Each subscriber gets the end, then its channel closes and its writer finishes.
            for s in hub.subs.drain(..) {
                let _ = s.send(MachineEvent::Ended(exit.clone()));
            }
        }
        shared.shutdown.store(true, Ordering::SeqCst);
        for a in acceptors.into_iter().flatten() {
            let _ = a.join();
        }
        for name in [CONTROL_SOCKET, CONSOLE_SOCKET] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        // Control connections stop reading (their threads end after any answer in flight); event
        // streams deliver the end and close; the console session closes. Then whatever is stuck
        // (a stalled reader, a slow machine operation) is cut off.
        for (_, c) in lock(&shared.conns).iter() {
            let _ = c.shutdown(std::net::Shutdown::Read);
        }
        if let Some(s) = lock(&self.console.state).session.take() {
            let _ = s.out.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while shared.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for (_, c) in lock(&shared.conns).iter() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        written?;
        Ok(exit)
    }
}

/// Asks the guest to power down and stops the machine if it has not ended after `grace` (at once if
/// the backend has no power button). Returns how the machine ended, if it did within `grace` + 10 s.
pub fn graceful_stop(machine: &dyn Machine, grace: Duration) -> Option<MachineExit> {
    if let Some(e) = machine.wait(Some(Duration::ZERO)) {
        return Some(e);
    }
    match machine.power_down() {
        Ok(()) => {
            if let Some(e) = machine.wait(Some(grace)) {
                return Some(e);
            }
            log::warn!("the guest did not power down within {grace:?}; stopping it");
        }
        Err(e) => log::warn!("{e}; stopping the machine instead"),
    }
    if let Err(e) = machine.stop() {
        log::warn!("{e}");
    }
    machine.wait(Some(Duration::from_secs(10)))
}

struct EventHub {
    subs: Vec<Sender<MachineEvent>>,
    ended: Option<MachineExit>,
}

struct Shared {
    info: ServeInfo,
    machine: Arc<dyn Machine>,
    console: Arc<ConsoleHub>,
    hub: Mutex<EventHub>,
    shutdown: AtomicBool,
    /// Clones of the control connections still open, to close them at the end.
    conns: Mutex<Vec<(u64, UnixStream)>>,
    /// Connection threads running (control and console).
    open: AtomicUsize,
}

impl Shared {
    fn new(info: ServeInfo, machine: Arc<dyn Machine>, console: Arc<ConsoleHub>) -> Arc<Self> {
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
fn pump_events(shared: &Shared) -> MachineExit {
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

type Handler = fn(&Arc<Shared>, UnixStream);

fn spawn_acceptor(
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
struct Open(Arc<Shared>);

impl Open {
    fn new(s: &Arc<Shared>) -> Self {
        s.open.fetch_add(1, Ordering::SeqCst);
        Self(s.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_control(shared: &Arc<Shared>, mut s: UnixStream) {
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
fn serve_control(shared: &Arc<Shared>, mut s: UnixStream) {
    let mut lines = Lines::new(MAX_REQUEST);
    let mut buf = [0u8; 4096];
    loop {
        let n = match s.read(&mut buf) {
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
                Err(e) => send_line(&mut s, &Reply::err(ErrorCode::BadRequest, e)),
                Ok(Request::Events) => return stream_events(shared, s),
                Ok(Request::Status) => send_line(&mut s, &status_reply(shared)),
                Ok(r) => send_line(&mut s, &handle(shared, r)),
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

fn status_reply(shared: &Shared) -> StatusReply {
    let m = &shared.machine;
    StatusReply {
        ok: true,
        name: shared.info.name.clone(),
        status: m.status(),
        accelerator: m.accelerator(),
        backend: shared.info.backend.clone(),
        pid: crate::jail::host_pid(),
        vnc_address: m.vnc_address(),
    }
}

fn handle(shared: &Shared, r: Request) -> Reply {
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
        Request::Status | Request::Events => Ok(()),
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
fn stream_events(shared: &Arc<Shared>, mut s: UnixStream) {
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

fn accept_console(shared: &Arc<Shared>, mut s: UnixStream) {
    let _ = s.set_write_timeout(Some(CONSOLE_WRITE_TIMEOUT));
    let hub = &shared.console;
    let mut st = lock(&hub.state);
    if let Some(old) = &st.session {
        if !peer_gone(&old.out) {
            drop(st);
            let line = format!("ERROR: console of {} is already in use\n", shared.info.name);
            let _ = s.write_all(line.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Both);
            return;
        }
        // The previous viewer hung up and its reader has not noticed yet.
        let _ = old.out.shutdown(std::net::Shutdown::Both);
        st.session = None;
    }
    let (a, b) = st.ring.as_slices();
    if s.write_all(a).and_then(|_| s.write_all(b)).is_err() {
        return;
    }
    let Ok(mut input) = s.try_clone() else { return };
    let id = hub.next_session.fetch_add(1, Ordering::Relaxed);
    st.session = Some(Session { id, out: s });
    drop(st);
    let open = Open::new(shared);
    let sh = shared.clone();
    let r = std::thread::Builder::new().name(format!("{}-console-in", shared.info.name)).spawn(move || {
        crate::jail::enter_or_die(crate::jail::Role::Console);
        let _open = open;
        let mut buf = [0u8; 1024];
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            if let Err(e) = sh.machine.console_input(&buf[..n]) {
                log::debug!("console input: {e}");
            }
        }
        let mut st = lock(&sh.console.state);
        if st.session.as_ref().is_some_and(|s| s.id == id) {
            st.session = None;
        }
        drop(st);
        let _ = input.shutdown(std::net::Shutdown::Both);
    });
    if let Err(e) = r {
        log::warn!("machine {}: cannot spawn the console reader: {e}", shared.info.name);
        let mut st = lock(&shared.console.state);
        if st.session.as_ref().is_some_and(|s| s.id == id) {
            st.session = None;
        }
    }
}

/// A [`Machine`] test double: the test drives its console and its end.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    use super::super::accel::{AccelDecision, Accelerator};
    use super::super::{ConsoleSink, Machine, MachineError, MachineEvent, MachineExit, MachineStatus};

    /// A machine that is Running from the start; `power_down` powers it off, `stop` stops it.
    pub(crate) struct FakeMachine {
        status: Mutex<MachineStatus>,
        tx: Mutex<Sender<MachineEvent>>,
        rx: Mutex<Receiver<MachineEvent>>,
        ended: (Mutex<Option<MachineExit>>, Condvar),
        pub(crate) input: (Mutex<Vec<u8>>, Condvar),
        console: Mutex<ConsoleSink>,
        /// `power_down` is ignored (a guest without ACPI handling).
        pub(crate) deaf: std::sync::atomic::AtomicBool,
    }

    impl FakeMachine {
        pub(crate) fn new(console: ConsoleSink) -> Self {
            let (tx, rx) = channel();
            let _ = tx.send(MachineEvent::Started);
            Self {
                status: Mutex::new(MachineStatus::Running),
                tx: Mutex::new(tx),
                rx: Mutex::new(rx),
                ended: (Mutex::new(None), Condvar::new()),
                input: (Mutex::new(Vec::new()), Condvar::new()),
                console: Mutex::new(console),
                deaf: false.into(),
            }
        }

        /// The guest prints `b`.
        pub(crate) fn say(&self, b: &[u8]) {
            self.console.lock().unwrap().write_all(b).unwrap();
        }

        /// The machine ends with `exit` (once).
        pub(crate) fn end(&self, exit: MachineExit) {
            let mut g = self.ended.0.lock().unwrap();
            if g.is_some() {
                return;
            }
            *self.status.lock().unwrap() = MachineStatus::Stopped(exit.clone());
            let _ = self.tx.lock().unwrap().send(MachineEvent::Ended(exit.clone()));
            *g = Some(exit);
            self.ended.1.notify_all();
        }

        /// Waits until the console input holds `n` bytes.
        pub(crate) fn wait_input(&self, n: usize) -> Vec<u8> {
            let g = self.input.0.lock().unwrap();
            let (g, _) = self.input.1.wait_timeout_while(g, Duration::from_secs(5), |v| v.len() < n).unwrap();
            g.clone()
        }

        fn go(&self, op: &'static str, from: MachineStatus, to: MachineStatus, ev: MachineEvent) -> R {
            let mut s = self.status.lock().unwrap();
            if *s != from {
                return Err(MachineError::State { machine: "fake".into(), op, state: s.clone() });
            }
            *s = to;
            let _ = self.tx.lock().unwrap().send(ev);
            Ok(())
        }
    }

    type R = Result<(), MachineError>;
    use std::io::Write;

    impl Machine for FakeMachine {
        fn status(&self) -> MachineStatus {
            self.status.lock().unwrap().clone()
        }
        fn pause(&self) -> R {
            self.go("pause", MachineStatus::Running, MachineStatus::Paused, MachineEvent::Paused)
        }
        fn resume(&self) -> R {
            self.go("resume", MachineStatus::Paused, MachineStatus::Running, MachineEvent::Resumed)
        }
        fn power_down(&self) -> R {
            if matches!(self.status(), MachineStatus::Stopped(_)) {
                return Err(MachineError::State {
                    machine: "fake".into(),
                    op: "power down",
                    state: self.status(),
                });
            }
            let _ = self.tx.lock().unwrap().send(MachineEvent::PowerDownRequested);
            if !self.deaf.load(std::sync::atomic::Ordering::SeqCst) {
                self.end(MachineExit::PowerOff);
            }
            Ok(())
        }
        fn reset(&self) -> R {
            Err(MachineError::Unsupported { machine: "fake".into(), backend: "fake", what: "reset".into() })
        }
        fn stop(&self) -> R {
            if let MachineStatus::Stopped(_) = self.status() {
                return Err(MachineError::Control {
                    machine: "fake".into(),
                    op: "stop",
                    msg: "ended".into(),
                });
            }
            self.end(MachineExit::Stopped);
            Ok(())
        }
        fn console_input(&self, b: &[u8]) -> R {
            self.input.0.lock().unwrap().extend_from_slice(b);
            self.input.1.notify_all();
            Ok(())
        }
        fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
            let g = self.ended.0.lock().unwrap();
            let t = timeout.unwrap_or(Duration::from_secs(3600));
            self.ended.1.wait_timeout_while(g, t, |e| e.is_none()).unwrap().0.clone()
        }
        fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
            self.rx.lock().unwrap().recv_timeout(timeout).ok()
        }
        fn vnc_address(&self) -> Option<std::net::SocketAddr> {
            Some("127.0.0.1:5901".parse().unwrap())
        }
        fn accelerator(&self) -> AccelDecision {
            AccelDecision { accelerator: Accelerator::Emulation, reason: "fake".into() }
        }
    }

    /// A fresh, short run directory (socket paths must stay under 108 bytes).
    pub(crate) fn run_dir(tag: &str) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let d = std::env::temp_dir().join(format!("sv-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{run_dir, FakeMachine};
    use super::*;
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
        assert_eq!(st["vncAddress"], "127.0.0.1:5901");
        assert_eq!(st["accelerator"]["accelerator"], "Emulation");
        let parsed: StatusReply = serde_json::from_value(st).unwrap();
        assert_eq!(parsed.status, MachineStatus::Running);
        assert_eq!(
            std::fs::read_to_string(s.dir.join(PID_FILE)).unwrap().trim(),
            std::process::id().to_string()
        );

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
            let mut split = parts.push(&b[..cut]);
            split.extend(parts.push(&b[cut..]));
            prop_assert_eq!(whole.push(b), split);
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
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
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
}
