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
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ConsoleSink, Machine, MachineEvent, MachineExit};
use crate::vmm::devices::lock;

mod console;
mod control;
pub mod migration;
mod protocol;

use console::{accept_console, ConsoleHub, ConsoleState, HubSink};
pub(crate) use control::serve_control_for_fuzzing;
use control::{accept_control, pump_events, spawn_acceptor, Shared};
pub use protocol::{parse_request, AgentAnswer, ErrorCode, ProtocolError, Reply, Request, StatusReply};
pub(crate) use protocol::{peer_gone, quote, wait_readable};

/// Held (flock, exclusive) while a launcher runs.
pub const LOCK_FILE: &str = "launcher.lock";
/// The lock a launcher process holds on its run directory for its whole life, from before it sets
/// the directory up until after its machine's [`LOCK_FILE`] went (a jailed launcher's outer process
/// still tears its jail down then).
pub const SETUP_LOCK_FILE: &str = "setup.lock";
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

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
