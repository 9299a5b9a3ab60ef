//! The daemon's side of a supervised machine: a [`Machine`] that talks to a `virt-launcher` through
//! the sockets in the VM's run directory (see [`super::supervisor`] and docs/launcher.md). A daemon
//! that restarts reconnects with [`RemoteMachine::connect`]; [`is_alive`], [`launcher_running`] and
//! [`read_exit`] tell a live launcher from one that ended (or was killed) without asking its pid,
//! which may belong to a zombie or, by now, to another process.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::accel::AccelDecision;
use super::supervisor::{
    peer_gone, quote, wait_readable, AgentAnswer, ErrorCode, Reply, Request, StatusReply, CONSOLE_SOCKET,
    CONTROL_SOCKET, EXIT_FILE, LOCK_FILE,
};
use super::{Machine, MachineError, MachineEvent, MachineExit, MachineStatus};
use crate::vmm::devices::lock;

/// How long a control request may take by default (a QEMU pause or power-down is a QMP command, which
/// QEMU's backend allows 30 s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest answer line accepted.
const MAX_LINE: usize = 1 << 20;
/// How long [`RemoteMachine::console`] waits for a refusal before taking the session as granted.
const CONSOLE_PEEK: Duration = Duration::from_millis(300);
/// What a refused console connection receives.
const BUSY_PREFIX: &[u8] = b"ERROR: console of ";
const BUSY_SUFFIX: &str = " is already in use";

/// Errors of the client; each names the run directory and what failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The socket exists but the connection failed for another reason than the launcher's absence.
    #[error("launcher in {dir}: cannot connect to {socket}: {source}")]
    Connect {
        /// The run directory.
        dir: PathBuf,
        /// The socket's file name.
        socket: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading or writing a connection failed.
    #[error("launcher in {dir}: {op}: {source}")]
    Io {
        /// The run directory.
        dir: PathBuf,
        /// What was being done.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("launcher in {dir}: {op}: no answer within {timeout:?}")]
    Timeout {
        /// The run directory.
        dir: PathBuf,
        /// The request.
        op: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The launcher answered something this client does not understand.
    #[error("launcher in {dir}: {op}: unexpected answer {answer:?}: {msg}")]
    Protocol {
        /// The run directory.
        dir: PathBuf,
        /// The request.
        op: String,
        /// The answer (quoted, shortened).
        answer: String,
        /// What is wrong with it.
        msg: String,
    },
    /// The launcher refused the request.
    #[error("launcher in {dir}: {op}: {error}")]
    Refused {
        /// The run directory.
        dir: PathBuf,
        /// The request.
        op: String,
        /// What kind of failure.
        code: Option<ErrorCode>,
        /// The machine's state, for a state error.
        state: Option<MachineStatus>,
        /// What is not supported, for an unsupported operation.
        what: Option<String>,
        /// The launcher's message.
        error: String,
    },
    /// Someone else has the console.
    #[error("console of {name} is already in use (launcher in {dir})")]
    ConsoleBusy {
        /// The run directory.
        dir: PathBuf,
        /// The machine's name.
        name: String,
    },
    /// A launcher holds the run directory but does not serve it yet (it is starting the machine).
    #[error("launcher in {dir} is still starting the machine (its sockets are not up yet)")]
    NotReady {
        /// The run directory.
        dir: PathBuf,
    },
    /// No launcher serves the run directory any more.
    #[error("launcher in {dir} has ended: {}", exit_note(.exit))]
    Gone {
        /// The run directory.
        dir: PathBuf,
        /// How the machine ended, if `exit.json` says.
        exit: Option<MachineExit>,
    },
}

fn exit_note(exit: &Option<MachineExit>) -> String {
    match exit {
        Some(e) => format!("the machine ended with {e:?}"),
        None => "no exit.json (the launcher was killed or never started the machine)".into(),
    }
}

/// What a machine whose launcher vanished without `exit.json` ended with.
fn lost() -> MachineExit {
    MachineExit::Failed("the launcher ended without recording how the machine ended (killed?)".into())
}

/// How the machine in `run_dir` ended, from its `exit.json`; `None` while it runs, or if the launcher
/// died without writing it.
pub fn read_exit(run_dir: &Path) -> Option<MachineExit> {
    let b = std::fs::read(run_dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Whether a launcher answers `status` on the run directory's control socket (within 2 s). A dead
/// launcher, even a zombie not yet reaped, does not.
pub fn is_alive(run_dir: &Path) -> bool {
    let Ok(mut c) = LineConn::connect(run_dir, CONTROL_SOCKET) else { return false };
    if c.send(&Request::Status).is_err() {
        return false;
    }
    match c.next(Some(Instant::now() + Duration::from_secs(2))) {
        Ok(Got::Line(l)) => serde_json::from_slice::<StatusReply>(&l).is_ok_and(|r| r.ok),
        _ => false,
    }
}

/// Whether a launcher holds the run directory's lock: true from before the machine starts until the
/// launcher exits (the lock goes with the process, zombie or not). With [`is_alive`] false this means
/// the launcher is still starting the machine.
pub fn launcher_running(run_dir: &Path) -> bool {
    held(&run_dir.join(LOCK_FILE))
}

/// Whether a launcher process is still there at all: it holds the machine's lock
/// ([`launcher_running`]) or the set-up lock it keeps for its whole life
/// ([`SETUP_LOCK_FILE`](super::supervisor::SETUP_LOCK_FILE)). A launcher whose machine ended
/// releases the first before it exits; a new launcher for the same run directory refuses to start
/// while the second is held.
pub fn launcher_present(run_dir: &Path) -> bool {
    launcher_running(run_dir) || held(&run_dir.join(super::supervisor::SETUP_LOCK_FILE))
}

/// Whether someone holds a `flock` on `path` (probed with a shared, non-blocking lock).
fn held(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else { return false };
    // SAFETY: flock on a descriptor `f` owns; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // Nobody holds it; closing `f` releases our shared lock at once.
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Why nothing listens on a socket of `dir`: ended (`exit.json` says how), still starting (the lock
/// is held), or gone without a word.
fn absent(dir: &Path) -> RemoteError {
    match read_exit(dir) {
        Some(exit) => RemoteError::Gone { dir: dir.to_path_buf(), exit: Some(exit) },
        None if launcher_running(dir) => RemoteError::NotReady { dir: dir.to_path_buf() },
        None => RemoteError::Gone { dir: dir.to_path_buf(), exit: None },
    }
}

enum Got {
    Line(Vec<u8>),
    Timeout,
    Eof,
}

/// A connection that reads newline-delimited answers.
struct LineConn {
    s: UnixStream,
    buf: Vec<u8>,
}

impl LineConn {
    fn connect(dir: &Path, socket: &'static str) -> Result<Self, RemoteError> {
        match UnixStream::connect(dir.join(socket)) {
            Ok(s) => Ok(Self { s, buf: Vec::new() }),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                Err(absent(dir))
            }
            Err(source) => Err(RemoteError::Connect { dir: dir.to_path_buf(), socket, source }),
        }
    }

    fn send(&mut self, v: &impl Serialize) -> std::io::Result<()> {
        let mut b = serde_json::to_vec(v).map_err(std::io::Error::other)?;
        b.push(b'\n');
        self.s.set_write_timeout(Some(Duration::from_secs(10)))?;
        self.s.write_all(&b)
    }

    /// The next line, waiting until `deadline` (forever with `None`).
    fn next(&mut self, deadline: Option<Instant>) -> std::io::Result<Got> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                return Ok(Got::Line(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("answer longer than {MAX_LINE} bytes"),
                ));
            }
            let wait = match deadline {
                None => None,
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Got::Timeout);
                    }
                    Some(left.max(Duration::from_millis(1)))
                }
            };
            self.s.set_read_timeout(wait)?;
            match self.s.read(&mut chunk) {
                Ok(0) => return Ok(Got::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn op_name(r: &Request) -> &'static str {
    match r {
        Request::Status => "status",
        Request::Pause => "pause",
        Request::Resume => "resume",
        Request::PowerDown => "powerDown",
        Request::Reset => "reset",
        Request::Stop => "stop",
        Request::Events => "events",
        Request::ConsoleInput { .. } => "consoleInput",
        Request::GuestAgent => "guestAgent",
        Request::GuestShutdown { .. } => "guestShutdown",
        Request::GuestCredentials { .. } => "guestCredentials",
        Request::FsFreeze => "fsFreeze",
        Request::FsThaw => "fsThaw",
        Request::MigrateOut { .. } => "migrateOut",
        Request::MigrateCancel => "migrateCancel",
    }
}

/// An events connection, after the launcher acknowledged the subscription.
fn subscribe(dir: &Path, timeout: Duration) -> Result<LineConn, RemoteError> {
    let mut c = LineConn::connect(dir, CONTROL_SOCKET)?;
    let io = |source| RemoteError::Io { dir: dir.to_path_buf(), op: "events".into(), source };
    c.send(&Request::Events).map_err(io)?;
    match c.next(Some(Instant::now() + timeout)).map_err(io)? {
        Got::Line(l) => check_reply(dir, "events", &l),
        Got::Timeout => Err(RemoteError::Timeout { dir: dir.to_path_buf(), op: "events".into(), timeout }),
        Got::Eof => Err(RemoteError::Gone { dir: dir.to_path_buf(), exit: read_exit(dir) }),
    }?;
    Ok(c)
}

/// Ok for `{"ok":true,...}`, the launcher's refusal for `{"ok":false,...}`.
/// [`check_reply`] on an arbitrary answer line, for [`crate::fuzzing`].
pub(crate) fn check_reply_for_fuzzing(line: &[u8]) {
    if let Err(e) = check_reply(Path::new("/run/fuzz"), "status", line) {
        let _ = e.to_string();
    }
}

fn check_reply(dir: &Path, op: &str, line: &[u8]) -> Result<(), RemoteError> {
    let r: Reply = serde_json::from_slice(line).map_err(|e| RemoteError::Protocol {
        dir: dir.to_path_buf(),
        op: op.into(),
        answer: quote(line, 200),
        msg: e.to_string(),
    })?;
    if r.ok {
        return Ok(());
    }
    Err(RemoteError::Refused {
        dir: dir.to_path_buf(),
        op: op.into(),
        code: r.code,
        state: r.state,
        what: r.what,
        error: r.error.unwrap_or_else(|| "refused without a reason".into()),
    })
}

#[derive(Default)]
struct Events {
    conn: Option<LineConn>,
    /// The stream is over (the end was reported).
    done: bool,
}

/// A machine served by a launcher, driven over its run directory's sockets.
pub struct RemoteMachine {
    dir: PathBuf,
    timeout: Duration,
    info: StatusReply,
    control: Mutex<Option<LineConn>>,
    events: Mutex<Events>,
    last_status: Mutex<MachineStatus>,
    exit: Mutex<Option<MachineExit>>,
}

impl std::fmt::Debug for RemoteMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMachine").field("dir", &self.dir).field("info", &self.info).finish()
    }
}

impl RemoteMachine {
    /// Connects to the launcher serving `run_dir`: subscribes to its events (so [`Machine::next_event`]
    /// sees everything from now on) and asks its status. [`RemoteError::Gone`] when no launcher
    /// serves it (with the exit, if the machine ended).
    pub fn connect(run_dir: &Path) -> Result<RemoteMachine, RemoteError> {
        Self::connect_timeout(run_dir, DEFAULT_TIMEOUT)
    }

    /// [`connect_timeout`](Self::connect_timeout) to a launcher that may still be starting: while it
    /// holds the run directory but its sockets are not up ([`RemoteError::NotReady`]), tries again
    /// until `timeout` has passed. A launcher that ended, or answers wrongly, fails at once.
    pub fn connect_when_up(run_dir: &Path, timeout: Duration) -> Result<RemoteMachine, RemoteError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::connect_timeout(run_dir, timeout) {
                Err(RemoteError::NotReady { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// [`connect_timeout`](Self::connect_timeout) to a launcher that has just come up: when its
    /// machine already ended (a guest that reboots or powers off within moments of starting), the
    /// machine is returned anyway, its first event being its end as `exit.json` records it, so the
    /// caller handles the end (a reboot starts the machine again) instead of a failed start.
    pub fn connect_or_ended(run_dir: &Path, timeout: Duration) -> Result<RemoteMachine, RemoteError> {
        match Self::connect_timeout(run_dir, timeout) {
            Err(RemoteError::Gone { exit: Some(exit), .. }) => {
                Ok(Self::already_ended(run_dir, timeout, exit))
            }
            other => other,
        }
    }

    /// The machine of a launcher in `run_dir` that ran and ended with `exit` before anyone
    /// connected (its `exit.json`): its status is that end and its first event the end.
    pub fn already_ended(run_dir: &Path, timeout: Duration, exit: MachineExit) -> RemoteMachine {
        RemoteMachine {
            dir: run_dir.to_path_buf(),
            timeout,
            info: StatusReply {
                ok: true,
                name: String::new(),
                status: MachineStatus::Stopped(exit.clone()),
                accelerator: AccelDecision {
                    accelerator: super::accel::Accelerator::Emulation,
                    reason: "the machine ended before its launcher was asked".into(),
                },
                backend: String::new(),
                pid: 0,
                vnc_socket: None,
            },
            control: Mutex::new(None),
            // No stream: the first event is the end.
            events: Mutex::new(Events { conn: None, done: false }),
            last_status: Mutex::new(MachineStatus::Stopped(exit.clone())),
            exit: Mutex::new(Some(exit)),
        }
    }

    /// [`connect`](Self::connect) with `timeout` for each request's answer.
    pub fn connect_timeout(run_dir: &Path, timeout: Duration) -> Result<RemoteMachine, RemoteError> {
        let events = subscribe(run_dir, timeout)?;
        let mut m = RemoteMachine {
            dir: run_dir.to_path_buf(),
            timeout,
            info: StatusReply {
                ok: true,
                name: String::new(),
                status: MachineStatus::Starting,
                accelerator: AccelDecision {
                    accelerator: super::accel::Accelerator::Emulation,
                    reason: String::new(),
                },
                backend: String::new(),
                pid: 0,
                vnc_socket: None,
            },
            control: Mutex::new(None),
            events: Mutex::new(Events { conn: Some(events), done: false }),
            last_status: Mutex::new(MachineStatus::Starting),
            exit: Mutex::new(None),
        };
        let info = m.status_reply()?;
        *lock(&m.last_status) = info.status.clone();
        m.info = info;
        Ok(m)
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The machine's name.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// The backend running it (`native` or `qemu`).
    pub fn backend(&self) -> &str {
        &self.info.backend
    }

    /// The launcher's pid (for logs and for signalling it; not for telling whether it lives: see
    /// [`is_alive`]).
    pub fn launcher_pid(&self) -> u32 {
        self.info.pid
    }

    /// The launcher's full answer to `status`.
    pub fn status_reply(&self) -> Result<StatusReply, RemoteError> {
        let line = self.round_trip(&Request::Status)?;
        check_reply(&self.dir, "status", &line)?;
        serde_json::from_slice(&line).map_err(|e| RemoteError::Protocol {
            dir: self.dir.clone(),
            op: "status".into(),
            answer: quote(&line, 200),
            msg: e.to_string(),
        })
    }

    /// Sends a request other than `status` and `events`; Ok when the launcher says so.
    pub fn call(&self, req: &Request) -> Result<(), RemoteError> {
        let line = self.round_trip(req)?;
        check_reply(&self.dir, op_name(req), &line)
    }

    /// Sends a guest-agent request (`guestAgent`, `fsFreeze`, `fsThaw`) and returns its answer.
    pub fn agent_call(&self, req: &Request) -> Result<AgentAnswer, RemoteError> {
        let op = op_name(req);
        let line = self.round_trip(req)?;
        check_reply(&self.dir, op, &line)?;
        serde_json::from_slice(&line).map_err(|e| RemoteError::Protocol {
            dir: self.dir.clone(),
            op: op.into(),
            answer: quote(&line, 200),
            msg: e.to_string(),
        })
    }

    fn round_trip(&self, req: &Request) -> Result<Vec<u8>, RemoteError> {
        let op = op_name(req);
        let mut g = lock(&self.control);
        if g.as_ref().is_some_and(|c| peer_gone(&c.s)) {
            *g = None;
        }
        let c = match &mut *g {
            Some(c) => c,
            None => g.insert(LineConn::connect(&self.dir, CONTROL_SOCKET)?),
        };
        let io = |source| RemoteError::Io { dir: self.dir.clone(), op: op.into(), source };
        let got = c.send(req).and_then(|_| c.next(Some(Instant::now() + self.timeout)));
        match got {
            Ok(Got::Line(l)) => Ok(l),
            Ok(Got::Timeout) => {
                *g = None;
                Err(RemoteError::Timeout { dir: self.dir.clone(), op: op.into(), timeout: self.timeout })
            }
            Ok(Got::Eof) => {
                *g = None;
                Err(RemoteError::Gone { dir: self.dir.clone(), exit: read_exit(&self.dir) })
            }
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                *g = None;
                Err(RemoteError::Gone { dir: self.dir.clone(), exit: read_exit(&self.dir) })
            }
            Err(e) => {
                *g = None;
                Err(io(e))
            }
        }
    }

    /// The console: a raw byte stream (guest output, starting with the last 256 KiB; what is written
    /// goes to the guest). [`RemoteError::ConsoleBusy`] while another session is open.
    pub fn console(&self) -> Result<UnixStream, RemoteError> {
        let s = match UnixStream::connect(self.dir.join(CONSOLE_SOCKET)) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(absent(&self.dir))
            }
            Err(source) => {
                return Err(RemoteError::Connect { dir: self.dir.clone(), socket: CONSOLE_SOCKET, source })
            }
        };
        // A refusal is one line sent at once; a granted session starts with the guest's output, which
        // may be nothing yet. Peek (without consuming) for a short while.
        let deadline = Instant::now() + CONSOLE_PEEK;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_readable(&s, left) {
                return Ok(s);
            }
            // SAFETY: receives into `buf`, valid for its length, from a socket `s` owns; MSG_PEEK
            // leaves the bytes for the caller.
            let n = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) {
                    continue;
                }
                return Err(RemoteError::Io { dir: self.dir.clone(), op: "console".into(), source: e });
            }
            let data = &buf[..n.unsigned_abs()];
            if data.is_empty() {
                return Err(RemoteError::Gone { dir: self.dir.clone(), exit: read_exit(&self.dir) });
            }
            if data.len() >= BUSY_PREFIX.len() || data.contains(&b'\n') {
                if !data.starts_with(BUSY_PREFIX) {
                    return Ok(s);
                }
                let line = String::from_utf8_lossy(data);
                let line = line.lines().next().unwrap_or_default();
                let rest = line.get(BUSY_PREFIX.len()..).unwrap_or_default();
                let name = rest.strip_suffix(BUSY_SUFFIX).unwrap_or(rest).to_string();
                return Err(RemoteError::ConsoleBusy { dir: self.dir.clone(), name });
            }
            if !BUSY_PREFIX.starts_with(data) {
                return Ok(s);
            }
            // A prefix of the refusal: wait for the rest.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn ended(&self, exit: Option<MachineExit>) -> MachineExit {
        let mut g = lock(&self.exit);
        if let Some(e) = &*g {
            return e.clone();
        }
        let e = exit.or_else(|| read_exit(&self.dir)).unwrap_or_else(lost);
        *g = Some(e.clone());
        e
    }

    fn backend_static(&self) -> &'static str {
        match self.info.backend.as_str() {
            "native" => "native",
            "qemu" => "qemu",
            _ => "remote",
        }
    }

    fn machine_error(&self, op: &'static str, e: RemoteError) -> MachineError {
        let machine = self.info.name.clone();
        match e {
            RemoteError::Refused { code: Some(ErrorCode::State), state: Some(state), .. } => {
                MachineError::State { machine, op, state }
            }
            RemoteError::Refused { code: Some(ErrorCode::Unsupported), what, error, .. } => {
                MachineError::Unsupported {
                    machine,
                    backend: self.backend_static(),
                    what: what.unwrap_or(error),
                }
            }
            RemoteError::Refused { code: Some(ErrorCode::NoAgent), error, .. } => {
                MachineError::Agent { machine, op, why: error, absent: true }
            }
            RemoteError::Gone { exit, .. } => {
                MachineError::State { machine, op, state: MachineStatus::Stopped(self.ended(exit)) }
            }
            e => MachineError::Control { machine, op, source: Box::new(e) },
        }
    }

    fn op(&self, op: &'static str, req: Request) -> Result<(), MachineError> {
        self.call(&req).map_err(|e| self.machine_error(op, e))
    }
}

impl Machine for RemoteMachine {
    fn status(&self) -> MachineStatus {
        match self.status_reply() {
            Ok(r) => {
                if let MachineStatus::Stopped(e) = &r.status {
                    self.ended(Some(e.clone()));
                }
                *lock(&self.last_status) = r.status.clone();
                r.status
            }
            Err(RemoteError::Gone { exit, .. }) => MachineStatus::Stopped(self.ended(exit)),
            Err(e) => {
                if !launcher_running(&self.dir) {
                    return MachineStatus::Stopped(self.ended(None));
                }
                log::warn!("{e}; reporting the last known status");
                lock(&self.last_status).clone()
            }
        }
    }

    fn pause(&self) -> Result<(), MachineError> {
        self.op("pause", Request::Pause)
    }

    fn resume(&self) -> Result<(), MachineError> {
        self.op("resume", Request::Resume)
    }

    fn power_down(&self) -> Result<(), MachineError> {
        self.op("power down", Request::PowerDown)
    }

    /// The launcher's agent report; `None` when its machine has no agent or the launcher is gone.
    fn guest_agent(&self) -> Option<crate::agent::AgentReport> {
        self.agent_call(&Request::GuestAgent).ok().and_then(|a| a.agent)
    }

    fn guest_shutdown(&self, mode: crate::agent::ShutdownMode) -> Result<(), MachineError> {
        self.op("guest shutdown", Request::GuestShutdown { mode })
    }

    fn guest_set_credentials(&self, credentials: crate::agent::GuestCredentials) -> Result<(), MachineError> {
        self.op("set the guest's access credentials", Request::GuestCredentials { credentials })
    }

    fn guest_fs_freeze(&self, freeze: bool) -> Result<String, MachineError> {
        let (op, req) = if freeze { ("freeze", Request::FsFreeze) } else { ("thaw", Request::FsThaw) };
        let a = self.agent_call(&req).map_err(|e| self.machine_error(op, e))?;
        Ok(a.fs_freeze_status.unwrap_or_default())
    }

    fn reset(&self) -> Result<(), MachineError> {
        self.op("reset", Request::Reset)
    }

    /// Stops the machine; fine when it has already ended (or its launcher is gone).
    fn stop(&self) -> Result<(), MachineError> {
        match self.call(&Request::Stop) {
            Ok(()) | Err(RemoteError::Gone { .. }) => Ok(()),
            Err(e) => Err(self.machine_error("stop", e)),
        }
    }

    /// Types `bytes` through the control socket (no console session needed).
    fn console_input(&self, bytes: &[u8]) -> Result<(), MachineError> {
        let req = match std::str::from_utf8(bytes) {
            Ok(s) => Request::ConsoleInput { data: Some(s.to_string()), bytes: None },
            Err(_) => Request::ConsoleInput { data: None, bytes: Some(bytes.to_vec()) },
        };
        self.op("console input", req)
    }

    fn wait(&self, timeout: Option<Duration>) -> Option<MachineExit> {
        if let Some(e) = lock(&self.exit).clone() {
            return Some(e);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut c = match subscribe(&self.dir, self.timeout) {
            Ok(c) => c,
            Err(RemoteError::Gone { exit, .. }) => return Some(self.ended(exit)),
            Err(e) => {
                log::warn!("{e}");
                return None;
            }
        };
        loop {
            match c.next(deadline) {
                Ok(Got::Line(l)) => {
                    if let Ok(MachineEvent::Ended(e)) = serde_json::from_slice(&l) {
                        return Some(self.ended(Some(e)));
                    }
                }
                Ok(Got::Timeout) => return None,
                Ok(Got::Eof) => return Some(self.ended(None)),
                Err(e) => {
                    log::warn!("launcher in {}: events: {e}", self.dir.display());
                    return None;
                }
            }
        }
    }

    /// The next event of the stream subscribed at [`RemoteMachine::connect`]; when the launcher goes
    /// away without sending `Ended`, an `Ended` from `exit.json` (or `Failed`) closes the stream.
    fn next_event(&self, timeout: Duration) -> Option<MachineEvent> {
        let deadline = Instant::now() + timeout;
        let mut ev = lock(&self.events);
        if ev.done {
            return None;
        }
        loop {
            let got = match ev.conn.as_mut() {
                Some(c) => c.next(Some(deadline)),
                None => Ok(Got::Eof),
            };
            match got {
                Ok(Got::Line(l)) => match serde_json::from_slice::<MachineEvent>(&l) {
                    Ok(MachineEvent::Ended(e)) => {
                        ev.done = true;
                        ev.conn = None;
                        return Some(MachineEvent::Ended(self.ended(Some(e))));
                    }
                    Ok(e) => return Some(e),
                    Err(e) => {
                        log::warn!("launcher in {}: bad event {:?}: {e}", self.dir.display(), quote(&l, 200))
                    }
                },
                Ok(Got::Timeout) => return None,
                Ok(Got::Eof) | Err(_) => {
                    ev.done = true;
                    ev.conn = None;
                    return Some(MachineEvent::Ended(self.ended(None)));
                }
            }
        }
    }

    fn vnc_socket(&self) -> Option<PathBuf> {
        self.info.vnc_socket.clone()
    }

    fn accelerator(&self) -> AccelDecision {
        self.info.accelerator.clone()
    }
}

#[cfg(test)]
#[path = "remote_tests.rs"]
mod tests;
