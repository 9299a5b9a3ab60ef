//! A QEMU guest agent client over the host end of the agent's channel (a unix socket: QEMU's
//! chardev, the native VMM's virtio-console port, or `qemu-ga -m unix-listen` in tests).
//!
//! The guest is untrusted, so every call is bounded: it ends by its deadline whatever the guest
//! sends or withholds, an answer line longer than `max_reply` is an error (and the bytes read for it
//! are dropped at once, never kept), and after any error the client resynchronises with
//! `guest-sync-delimited` before its next command, skipping whatever stale answers or garbage the
//! guest left in the stream.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::protocol::{self, decode, DELIMITER};
use super::AgentError;

/// The longest answer line read (fsinfo of many disks stays far below it).
pub const MAX_REPLY: usize = 1 << 20;
/// The default time a command may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the guest should go down (`guest-shutdown`'s `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ShutdownMode {
    /// Power off.
    Powerdown,
    /// Reboot.
    Reboot,
    /// Halt.
    Halt,
}

impl ShutdownMode {
    fn wire(self) -> &'static str {
        match self {
            Self::Powerdown => "powerdown",
            Self::Reboot => "reboot",
            Self::Halt => "halt",
        }
    }
}

/// A connection to one guest agent.
pub struct AgentClient {
    stream: UnixStream,
    /// Bytes read but not yet consumed (less than one line).
    buf: Vec<u8>,
    /// The peer closed its end: every later call fails at once.
    eof: bool,
    /// The stream is not known to be at an answer boundary: sync before the next command.
    desynced: bool,
    next_id: u64,
    timeout: Duration,
    max_reply: usize,
}

impl AgentClient {
    /// A client on `stream` (made non-blocking), with [`DEFAULT_TIMEOUT`] and [`MAX_REPLY`].
    pub fn new(stream: UnixStream) -> Result<Self, AgentError> {
        stream
            .set_nonblocking(true)
            .map_err(|source| AgentError::Io { op: "make the channel non-blocking", source })?;
        // Sync ids differ between clients of the same channel (a restarted launcher), so a stale
        // answer to an earlier client's sync is never taken for ours.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        Ok(Self {
            stream,
            buf: Vec::new(),
            eof: false,
            desynced: true,
            next_id: seed & 0x7fff_ffff_ffff,
            timeout: DEFAULT_TIMEOUT,
            max_reply: MAX_REPLY,
        })
    }

    /// Sets how long one command (or sync) may take.
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Sets the longest answer line accepted.
    pub fn with_max_reply(mut self, n: usize) -> Self {
        self.max_reply = n.max(64);
        self
    }

    /// Sets the next sync id (deterministic ids for the fuzz harness).
    pub fn with_first_id(mut self, id: u64) -> Self {
        self.next_id = id;
        self
    }

    /// Whether the agent's end of the channel closed.
    pub fn closed(&self) -> bool {
        self.eof
    }

    /// Finds an answer boundary: sends a `0xFF` (the agent drops any half-read input) and
    /// `guest-sync-delimited` with a fresh id, then skips everything up to the delimiter of the
    /// answer that carries that id.
    pub fn sync(&mut self) -> Result<(), AgentError> {
        const CMD: &str = "guest-sync-delimited";
        let deadline = Instant::now() + self.timeout;
        self.desynced = true;
        self.buf.clear();
        let id = self.next_id;
        self.next_id = (self.next_id + 1) & 0x7fff_ffff_ffff;
        let mut out = vec![DELIMITER];
        out.extend(protocol::command_line(CMD, Some(&json!({ "id": id }))));
        self.write_all(CMD, &out, deadline)?;
        loop {
            self.skip_to_delimiter(CMD, deadline)?;
            let line = self.read_line(CMD, deadline)?;
            if let Ok(v) = protocol::parse_reply(CMD, &line) {
                if v.as_u64() == Some(id) {
                    self.desynced = false;
                    return Ok(());
                }
            }
        }
    }

    /// Runs `command` and returns its `return` value, syncing first if the stream may be off.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, AgentError> {
        self.execute_inner(command, arguments, true)
    }

    fn execute_inner(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        answers: bool,
    ) -> Result<Value, AgentError> {
        if self.eof {
            return Err(AgentError::Closed { command: command.into() });
        }
        if self.desynced {
            self.sync()?;
        }
        let deadline = Instant::now() + self.timeout;
        // Any failure from here leaves the stream at an unknown place.
        self.desynced = true;
        self.write_all(command, &protocol::command_line(command, arguments.as_ref()), deadline)?;
        if !answers {
            return Ok(Value::Null);
        }
        let line = loop {
            let l = self.read_line(command, deadline)?;
            if !l.iter().all(|b| b.is_ascii_whitespace() || *b == DELIMITER) {
                break l;
            }
        };
        let r = protocol::parse_reply(command, &line);
        if matches!(r, Ok(_) | Err(AgentError::Refused { .. })) {
            self.desynced = false;
        }
        r
    }

    /// `guest-ssh-add-authorized-keys`: adds `keys` to `user`'s `authorized_keys` (keys already
    /// there stay once; the agent creates the file with the right owner and modes).
    pub fn ssh_add_authorized_keys(&mut self, user: &str, keys: &[String]) -> Result<(), AgentError> {
        let args = serde_json::json!({ "username": user, "keys": keys });
        self.execute("guest-ssh-add-authorized-keys", Some(args)).map(drop)
    }

    /// `guest-set-user-password`: sets `user`'s password (sent base64-encoded, in clear: the agent
    /// hashes it with the guest's `chpasswd`).
    pub fn set_user_password(&mut self, user: &str, password: &str) -> Result<(), AgentError> {
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(password);
        let args = serde_json::json!({ "username": user, "password": encoded, "crypted": false });
        self.execute("guest-set-user-password", Some(args)).map(drop)
    }

    /// `guest-ssh-remove-authorized-keys`: removes `keys` from `user`'s `authorized_keys`.
    pub fn ssh_remove_authorized_keys(&mut self, user: &str, keys: &[String]) -> Result<(), AgentError> {
        let args = serde_json::json!({ "username": user, "keys": keys });
        self.execute("guest-ssh-remove-authorized-keys", Some(args)).map(drop)
    }

    /// `guest-ping`.
    pub fn ping(&mut self) -> Result<(), AgentError> {
        self.execute("guest-ping", None).map(drop)
    }

    /// `guest-info`.
    pub fn info(&mut self) -> Result<protocol::GuestAgentInfo, AgentError> {
        let v = self.execute("guest-info", None)?;
        decode("guest-info", v)
    }

    /// `guest-get-osinfo`.
    pub fn os_info(&mut self) -> Result<protocol::GuestOsInfo, AgentError> {
        let v = self.execute("guest-get-osinfo", None)?;
        decode("guest-get-osinfo", v)
    }

    /// `guest-get-host-name`.
    pub fn host_name(&mut self) -> Result<String, AgentError> {
        let v = self.execute("guest-get-host-name", None)?;
        decode::<protocol::GuestHostName>("guest-get-host-name", v).map(|h| h.host_name)
    }

    /// `guest-get-timezone`.
    pub fn timezone(&mut self) -> Result<protocol::GuestTimezone, AgentError> {
        let v = self.execute("guest-get-timezone", None)?;
        decode("guest-get-timezone", v)
    }

    /// `guest-network-get-interfaces`.
    pub fn network_interfaces(&mut self) -> Result<Vec<protocol::GuestNetworkInterface>, AgentError> {
        let v = self.execute("guest-network-get-interfaces", None)?;
        decode("guest-network-get-interfaces", v)
    }

    /// `guest-get-users`.
    pub fn users(&mut self) -> Result<Vec<protocol::GuestUser>, AgentError> {
        let v = self.execute("guest-get-users", None)?;
        decode("guest-get-users", v)
    }

    /// `guest-get-fsinfo`.
    pub fn fs_info(&mut self) -> Result<Vec<protocol::GuestFilesystemInfo>, AgentError> {
        let v = self.execute("guest-get-fsinfo", None)?;
        decode("guest-get-fsinfo", v)
    }

    /// `guest-fsfreeze-status`: `frozen` or `thawed`.
    pub fn fsfreeze_status(&mut self) -> Result<String, AgentError> {
        let v = self.execute("guest-fsfreeze-status", None)?;
        decode::<String>("guest-fsfreeze-status", v).map(protocol::clip)
    }

    /// `guest-fsfreeze-freeze`: how many file systems were frozen.
    pub fn fsfreeze_freeze(&mut self) -> Result<u64, AgentError> {
        let v = self.execute("guest-fsfreeze-freeze", None)?;
        decode("guest-fsfreeze-freeze", v)
    }

    /// `guest-fsfreeze-thaw`: how many file systems were thawed.
    pub fn fsfreeze_thaw(&mut self) -> Result<u64, AgentError> {
        let v = self.execute("guest-fsfreeze-thaw", None)?;
        decode("guest-fsfreeze-thaw", v)
    }

    /// `guest-shutdown`. The agent does not answer when it complies; an answer within `wait` is
    /// its refusal (a blocked command, a failed `shutdown`).
    pub fn shutdown(&mut self, mode: ShutdownMode, wait: Duration) -> Result<(), AgentError> {
        const CMD: &str = "guest-shutdown";
        self.execute_inner(CMD, Some(json!({ "mode": mode.wire() })), false)?;
        let deadline = Instant::now() + wait.min(self.timeout);
        match self.read_line(CMD, deadline) {
            Ok(line) => match protocol::parse_reply(CMD, &line) {
                Err(e @ AgentError::Refused { .. }) => Err(e),
                _ => Ok(()),
            },
            // Silence (or the agent going away with the guest) is the success answer.
            Err(AgentError::Timeout { .. } | AgentError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn write_all(&mut self, command: &str, mut data: &[u8], deadline: Instant) -> Result<(), AgentError> {
        while !data.is_empty() {
            match self.stream.write(data) {
                Ok(0) => return Err(self.closed_now(command)),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wait(command, libc::POLLOUT, deadline)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Err(self.closed_now(command)),
                Err(source) => return Err(AgentError::Io { op: "write to the channel", source }),
            }
        }
        Ok(())
    }

    fn closed_now(&mut self, command: &str) -> AgentError {
        self.eof = true;
        AgentError::Closed { command: command.into() }
    }

    /// Waits for `events` on the channel until `deadline`.
    fn wait(&mut self, command: &str, events: i16, deadline: Instant) -> Result<(), AgentError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentError::Timeout { command: command.into(), after: self.timeout });
        }
        let mut p = libc::pollfd { fd: self.stream.as_raw_fd(), events, revents: 0 };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `p` is one valid pollfd for a descriptor the stream owns, for the call's duration.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(AgentError::Io { op: "poll the channel", source: e });
            }
        }
        Ok(())
    }

    /// Reads more bytes into `buf`, waiting until `deadline` at most.
    fn fill(&mut self, command: &str, deadline: Instant) -> Result<(), AgentError> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(self.closed_now(command)),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.wait(command, libc::POLLIN, deadline)?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => return Err(AgentError::Io { op: "read the channel", source }),
            }
        }
    }

    /// Drops bytes up to and including the next delimiter.
    fn skip_to_delimiter(&mut self, command: &str, deadline: Instant) -> Result<(), AgentError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == DELIMITER) {
                self.buf.drain(..=i);
                return Ok(());
            }
            self.buf.clear();
            self.fill(command, deadline)?;
        }
    }

    /// The next line (without its newline), at most `max_reply` bytes.
    fn read_line(&mut self, command: &str, deadline: Instant) -> Result<Vec<u8>, AgentError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.buf[scanned..].iter().position(|b| *b == b'\n') {
                let end = scanned + i;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                return Ok(line);
            }
            scanned = self.buf.len();
            if self.buf.len() > self.max_reply {
                self.buf.clear();
                self.desynced = true;
                return Err(AgentError::TooLong { command: command.into(), max: self.max_reply });
            }
            self.fill(command, deadline)?;
        }
    }
}

#[cfg(test)]
mod tests;
