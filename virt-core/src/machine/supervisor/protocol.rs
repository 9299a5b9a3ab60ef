//! The control socket's protocol: requests and replies (one JSON object per line), and the line
//! reading and socket helpers both ends use.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::machine::accel::AccelDecision;
use crate::machine::{MachineError, MachineStatus};

/// A request on the control socket: one JSON object per line, `{"op":"status"}` and so on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    /// Answered with a [`StatusReply`].
    Status,
    /// [`Machine::pause`](crate::machine::Machine::pause).
    Pause,
    /// [`Machine::resume`](crate::machine::Machine::resume).
    Resume,
    /// [`Machine::power_down`](crate::machine::Machine::power_down) (ACPI power button).
    PowerDown,
    /// [`Machine::reset`](crate::machine::Machine::reset).
    Reset,
    /// [`Machine::stop`](crate::machine::Machine::stop); fine after the machine ended.
    Stop,
    /// Turns the connection into a stream of [`MachineEvent`] lines after a `{"ok":true}` line.
    Events,
    /// [`Machine::console_input`](crate::machine::Machine::console_input): `data` (text) or `bytes` (any bytes, as numbers).
    ConsoleInput {
        /// Text to type.
        #[serde(default)]
        data: Option<String>,
        /// Bytes to type.
        #[serde(default)]
        bytes: Option<Vec<u8>>,
    },
    /// The guest agent's latest report: an [`AgentAnswer`] whose `agent` is null when the
    /// machine has no agent channel.
    GuestAgent,
    /// [`Machine::guest_shutdown`]: `{"op":"guestShutdown","mode":"reboot"}` (`powerdown`, `halt`).
    GuestShutdown {
        /// How the guest goes down.
        mode: crate::agent::ShutdownMode,
    },
    /// [`Machine::guest_set_credentials`]:
    /// `{"op":"guestCredentials","credentials":{"sshKeys":[{"user":..,"keys":[..]}],"passwords":[..]}}`.
    GuestCredentials {
        /// The keys and passwords per user.
        credentials: crate::agent::GuestCredentials,
    },
    /// [`Machine::guest_fs_freeze`] (freeze): an [`AgentAnswer`] with `fsFreezeStatus`.
    FsFreeze,
    /// [`Machine::guest_fs_freeze`] (thaw): an [`AgentAnswer`] with `fsFreezeStatus`.
    FsThaw,
    /// [`Machine::migrate_out`] over the stream whose descriptor comes with this line
    /// (`SCM_RIGHTS`; see `supervisor::migration`): a `MigrateReply` when it completed.
    /// The options are [`MigrateOptions`](crate::machine::migrate::MigrateOptions)'s fields
    /// (`downtimeMs`, `bandwidthBytesPerSec`, `completionTimeoutSecs`, `autoConverge`,
    /// `progressTimeoutSecs`, `postCopy`, `pauseToComplete`), all optional.
    MigrateOut(crate::machine::migrate::MigrateOptions),
    /// [`Machine::migrate_cancel`]: abandons a running `migrateOut` before the destination is ready.
    MigrateCancel,
}

/// The answer to [`Request::GuestAgent`], [`Request::FsFreeze`] and [`Request::FsThaw`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentAnswer {
    /// Always true (failures are [`Reply`]s).
    pub ok: bool,
    /// The agent's report (for `guestAgent`).
    #[serde(default)]
    pub agent: Option<crate::agent::AgentReport>,
    /// The freeze status after a freeze or thaw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_freeze_status: Option<String>,
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
    /// The VNC display's unix socket, if it has one.
    #[serde(default)]
    pub vnc_socket: Option<std::path::PathBuf>,
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
    /// No guest agent is connected (or the machine has none) for a guest-agent operation.
    NoAgent,
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
    pub(super) fn ok() -> Self {
        Self { ok: true, error: None, code: None, state: None, what: None }
    }
    pub(super) fn err(code: ErrorCode, error: String) -> Self {
        Self { ok: false, error: Some(error), code: Some(code), state: None, what: None }
    }
    pub(super) fn from_machine(r: Result<(), MachineError>) -> Self {
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
                    MachineError::Agent { absent: true, .. } => Self::err(ErrorCode::NoAgent, msg),
                    MachineError::Start { .. }
                    | MachineError::Control { .. }
                    | MachineError::Agent { .. } => Self::err(ErrorCode::Failed, msg),
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

/// Why a control line is not a request; each names the offending line (its start, quoted).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line is not a JSON request object the protocol knows.
    #[error("bad request {line:?}: {source}")]
    BadRequest {
        /// The line's first 120 bytes, lossily as text.
        line: String,
        /// Why it did not parse.
        source: serde_json::Error,
    },
    /// The line exceeded the protocol's line limit; it was skipped up to its newline.
    #[error("line longer than {max} bytes (starts {start:?})")]
    LineTooLong {
        /// The limit in bytes.
        max: usize,
        /// The line's first 60 bytes, lossily as text.
        start: String,
    },
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    serde_json::from_slice(line)
        .map_err(|source| ProtocolError::BadRequest { line: quote(line, 120), source })
}

/// Splits a byte stream into lines of at most `max` bytes; an over-long line becomes one error and is
/// skipped up to its newline.
pub(crate) struct Lines {
    pub(super) buf: Vec<u8>,
    pub(super) max: usize,
    pub(super) discarding: bool,
}

impl Lines {
    pub(crate) fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max, discarding: false }
    }

    /// Feeds bytes; returns the lines they complete (a trailing `\r` removed).
    pub(crate) fn push(&mut self, mut data: &[u8]) -> Vec<Result<Vec<u8>, ProtocolError>> {
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
                out.push(Err(ProtocolError::LineTooLong { max: self.max, start: quote(start, 60) }));
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
pub(super) fn send_line(w: &mut impl Write, v: &impl Serialize) -> std::io::Result<()> {
    let mut b = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    b.push(b'\n');
    w.write_all(&b)
}
