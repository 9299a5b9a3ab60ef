//! A typed QMP (QEMU Machine Protocol) client over a unix socket.
//!
//! QMP is one JSON object per line. After connecting, QEMU sends a greeting (`{"QMP": ...}`); the
//! client answers `qmp_capabilities` and may then send commands (`{"execute": ..., "id": N}`), each
//! answered by `{"return": ..., "id": N}` or `{"error": {"class", "desc"}, "id": N}`, while events
//! (`{"event": NAME, "data": ..., "timestamp": ...}`) arrive at any time, in order.
//!
//! Everything QEMU sends is treated as untrusted: lines are bounded ([`MAX_LINE`]), JSON that does not
//! parse, values of the wrong type, unknown messages and unknown events are errors ([`QmpError`]),
//! never panics. [`LineSplitter`], [`parse_message`] and [`QmpEvent::parse`] are the pure parts, fed
//! arbitrary input by the property tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::vmm::devices::lock;

/// The longest line accepted from QEMU. The answers this client asks for are a few hundred bytes;
/// 1 MiB leaves room for `human-monitor-command` output and stops a runaway peer from growing memory.
pub const MAX_LINE: usize = 1 << 20;

/// How many bytes of an offending line an error quotes.
const QUOTE: usize = 120;

/// Errors of the QMP client and parser; each names what failed and quotes the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    /// Reading or writing the socket failed.
    #[error("QMP {op}: {msg}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        msg: String,
    },
    /// A line longer than [`MAX_LINE`]; it is skipped up to its newline.
    #[error("QMP line longer than {limit} bytes (starts {start:?})")]
    LineTooLong {
        /// The limit.
        limit: usize,
        /// Its first bytes.
        start: String,
    },
    /// Not JSON.
    #[error("QMP message is not JSON ({msg}): {line:?}")]
    Json {
        /// The parser's complaint.
        msg: String,
        /// The line (its start).
        line: String,
    },
    /// JSON, but not a QMP message of a known shape, or a field of the wrong type.
    #[error("unexpected QMP message ({what}): {line:?}")]
    Shape {
        /// What was wrong.
        what: String,
        /// The message (its start).
        line: String,
    },
    /// An event this client does not know.
    #[error("unknown QMP event {name}")]
    UnknownEvent {
        /// Its name.
        name: String,
    },
    /// A known event whose data does not have the documented fields and types.
    #[error("QMP event {name} has unexpected data ({what}): {data}")]
    BadEvent {
        /// Event name.
        name: String,
        /// What was wrong.
        what: String,
        /// The data (its start).
        data: String,
    },
    /// QEMU answered a command with an error.
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// A command's answer had an unexpected type.
    #[error("QMP command {command} returned an unexpected value ({what}): {value}")]
    BadReturn {
        /// The command.
        command: String,
        /// What was wrong.
        what: String,
        /// The value (its start).
        value: String,
    },
    /// No answer in time.
    #[error("QMP command {command} got no answer within {timeout:?}")]
    Timeout {
        /// The command.
        command: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The connection closed (QEMU exited).
    #[error("QMP connection closed{0}")]
    Closed(String),
}

fn quote(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(QUOTE)]).into_owned();
    if bytes.len() > QUOTE {
        s + "..."
    } else {
        s
    }
}

fn quote_value(v: &Value) -> String {
    quote(v.to_string().as_bytes())
}

/// Splits a byte stream into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    /// Inside an over-long line: drop bytes up to the next newline.
    discarding: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes (without the newline).
    pub fn new(max: usize) -> Self {
        Self { buf: Vec::new(), max, discarding: false }
    }

    /// Feeds bytes; returns the lines they complete (without `\n`, a trailing `\r` removed) and an
    /// error for each over-long line, which is skipped.
    pub fn push(&mut self, mut data: &[u8]) -> Vec<Result<Vec<u8>, QmpError>> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (chunk, rest, complete) = match nl {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[data.len()..], false),
            };
            data = rest;
            if self.discarding {
                if complete {
                    self.discarding = false;
                }
                continue;
            }
            if self.buf.len() + chunk.len() > self.max {
                out.push(Err(QmpError::LineTooLong {
                    limit: self.max,
                    start: quote(if self.buf.is_empty() { chunk } else { &self.buf }),
                }));
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

/// QEMU's version from the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QemuVersion {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Micro.
    pub micro: u64,
}

/// The greeting QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// The distribution's package string (e.g. `Debian 1:10.0.2+ds-2...`).
    pub package: String,
    /// Capabilities offered (e.g. `oob`).
    pub capabilities: Vec<String>,
}

/// An event as received, before it is typed.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Event name.
    pub name: String,
    /// Its data (`null` when absent).
    pub data: Value,
    /// QEMU's timestamp (seconds, microseconds), if well-formed.
    pub timestamp: Option<(i64, i64)>,
}

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum QmpMessage {
    /// The greeting.
    Greeting(Greeting),
    /// A command's success.
    Return {
        /// The id the command carried.
        id: Option<u64>,
        /// Its value.
        value: Value,
    },
    /// A command's failure.
    Error {
        /// The id the command carried.
        id: Option<u64>,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
    /// An event.
    Event(RawEvent),
}

fn shape(what: impl Into<String>, line: &[u8]) -> QmpError {
    QmpError::Shape { what: what.into(), line: quote(line) }
}

fn get_str<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

/// Parses one line from QEMU.
pub fn parse_message(line: &[u8]) -> Result<QmpMessage, QmpError> {
    let v: Value =
        serde_json::from_slice(line).map_err(|e| QmpError::Json { msg: e.to_string(), line: quote(line) })?;
    let Value::Object(o) = v else { return Err(shape("not an object", line)) };
    let id = match o.get("id") {
        None => None,
        Some(Value::Number(n)) => {
            Some(n.as_u64().ok_or_else(|| shape("id is not an unsigned integer", line))?)
        }
        Some(_) => return Err(shape("id is not a number", line)),
    };
    if let Some(g) = o.get("QMP") {
        let g = g.as_object().ok_or_else(|| shape("QMP is not an object", line))?;
        let ver = g
            .get("version")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("QMP.version is not an object", line))?;
        let q = ver
            .get("qemu")
            .and_then(Value::as_object)
            .ok_or_else(|| shape("no version.qemu object", line))?;
        let num = |k: &str| {
            q.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| shape(format!("version.qemu.{k} is not a number"), line))
        };
        let version = QemuVersion { major: num("major")?, minor: num("minor")?, micro: num("micro")? };
        let package = get_str(ver, "package").unwrap_or_default().to_string();
        let capabilities = match g.get("capabilities") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|c| {
                    c.as_str().map(str::to_string).ok_or_else(|| shape("a capability is not a string", line))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(shape("capabilities is not an array", line)),
        };
        return Ok(QmpMessage::Greeting(Greeting { version, package, capabilities }));
    }
    if let Some(value) = o.get("return") {
        return Ok(QmpMessage::Return { id, value: value.clone() });
    }
    if let Some(e) = o.get("error") {
        let e = e.as_object().ok_or_else(|| shape("error is not an object", line))?;
        let class = get_str(e, "class").ok_or_else(|| shape("error.class is not a string", line))?;
        let desc = get_str(e, "desc").ok_or_else(|| shape("error.desc is not a string", line))?;
        return Ok(QmpMessage::Error { id, class: class.into(), desc: desc.into() });
    }
    if let Some(name) = o.get("event") {
        let name = name.as_str().ok_or_else(|| shape("event is not a string", line))?;
        let timestamp = o
            .get("timestamp")
            .and_then(Value::as_object)
            .and_then(|t| Some((t.get("seconds")?.as_i64()?, t.get("microseconds")?.as_i64()?)));
        let data = o.get("data").cloned().unwrap_or(Value::Null);
        if !(data.is_object() || data.is_null()) {
            return Err(shape("event data is not an object", line));
        }
        return Ok(QmpMessage::Event(RawEvent { name: name.into(), data, timestamp }));
    }
    Err(shape("neither greeting, return, error nor event", line))
}

/// Why a machine shut down or reset (QAPI `ShutdownCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownCause {
    /// No reason given.
    None,
    /// An error in the host (QEMU).
    HostError,
    /// QMP `quit`.
    HostQmpQuit,
    /// QMP `system_reset`.
    HostQmpSystemReset,
    /// A signal to QEMU.
    HostSignal,
    /// QEMU's own UI.
    HostUi,
    /// The guest powered off (ACPI S5 and the like).
    GuestShutdown,
    /// The guest reset itself (reboot).
    GuestReset,
    /// The guest panicked (pvpanic with `panic=shutdown`).
    GuestPanic,
    /// A device reset the machine.
    SubsystemReset,
    /// A snapshot was loaded.
    SnapshotLoad,
    /// A cause this client does not know (a newer QEMU).
    Other(String),
}

impl ShutdownCause {
    fn parse(s: &str) -> Self {
        match s {
            "none" => Self::None,
            "host-error" => Self::HostError,
            "host-qmp-quit" => Self::HostQmpQuit,
            "host-qmp-system-reset" => Self::HostQmpSystemReset,
            "host-signal" => Self::HostSignal,
            "host-ui" => Self::HostUi,
            "guest-shutdown" => Self::GuestShutdown,
            "guest-reset" => Self::GuestReset,
            "guest-panic" => Self::GuestPanic,
            "subsystem-reset" => Self::SubsystemReset,
            "snapshot-load" => Self::SnapshotLoad,
            other => Self::Other(other.to_string()),
        }
    }
}

/// A VNC client as QEMU reports it in `VNC_*` events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncClient {
    /// Its address.
    pub host: String,
    /// Its port.
    pub service: String,
}

/// The events the backend acts on or reports, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    /// The machine shut down (QEMU exits next unless told otherwise).
    Shutdown {
        /// The guest asked for it.
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// The ACPI power button was pressed (`system_powerdown`).
    Powerdown,
    /// The vCPUs stopped.
    Stop,
    /// The vCPUs run again.
    Resume,
    /// The machine reset.
    Reset {
        /// The guest asked for it (a reboot).
        guest: bool,
        /// Why.
        reason: ShutdownCause,
    },
    /// A removable medium's tray opened or closed.
    DeviceTrayMoved {
        /// Block backend name (may be empty).
        device: String,
        /// Device id.
        id: String,
        /// The tray is open now.
        tray_open: bool,
    },
    /// The guest set its RTC.
    RtcChange {
        /// New offset from the host's clock, in seconds.
        offset: i64,
    },
    /// The guest reported a panic (pvpanic).
    GuestPanicked {
        /// What QEMU does about it (`pause`, `poweroff`, `run`).
        action: String,
    },
    /// The guest entered ACPI S3.
    Suspend,
    /// The guest woke from S3.
    Wakeup,
    /// A VNC client connected.
    VncConnected(VncClient),
    /// A VNC client finished the handshake.
    VncInitialized(VncClient),
    /// A VNC client left.
    VncDisconnected(VncClient),
}

fn bad(raw: &RawEvent, what: &str) -> QmpError {
    QmpError::BadEvent { name: raw.name.clone(), what: what.into(), data: quote_value(&raw.data) }
}

fn field_bool(raw: &RawEvent, k: &str) -> Result<bool, QmpError> {
    raw.data.get(k).and_then(Value::as_bool).ok_or_else(|| bad(raw, &format!("{k} is not a boolean")))
}

fn field_str(raw: &RawEvent, k: &str) -> Result<String, QmpError> {
    raw.data
        .get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(raw, &format!("{k} is not a string")))
}

fn vnc_client(raw: &RawEvent) -> Result<VncClient, QmpError> {
    let c = raw.data.get("client").ok_or_else(|| bad(raw, "no client"))?;
    let host =
        c.get("host").and_then(Value::as_str).ok_or_else(|| bad(raw, "client.host is not a string"))?;
    let service =
        c.get("service").and_then(Value::as_str).ok_or_else(|| bad(raw, "client.service is not a string"))?;
    Ok(VncClient { host: host.into(), service: service.into() })
}

impl QmpEvent {
    /// Types an event; unknown names and data of the wrong shape are errors.
    pub fn parse(raw: &RawEvent) -> Result<Self, QmpError> {
        Ok(match raw.name.as_str() {
            "SHUTDOWN" => Self::Shutdown {
                guest: field_bool(raw, "guest")?,
                reason: ShutdownCause::parse(&field_str(raw, "reason")?),
            },
            "RESET" => Self::Reset {
                guest: field_bool(raw, "guest")?,
                reason: ShutdownCause::parse(&field_str(raw, "reason")?),
            },
            "POWERDOWN" => Self::Powerdown,
            "STOP" => Self::Stop,
            "RESUME" => Self::Resume,
            "SUSPEND" => Self::Suspend,
            "WAKEUP" => Self::Wakeup,
            "DEVICE_TRAY_MOVED" => Self::DeviceTrayMoved {
                device: field_str(raw, "device")?,
                id: field_str(raw, "id")?,
                tray_open: field_bool(raw, "tray-open")?,
            },
            "RTC_CHANGE" => Self::RtcChange {
                offset: raw
                    .data
                    .get("offset")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| bad(raw, "offset is not an integer"))?,
            },
            "GUEST_PANICKED" => Self::GuestPanicked { action: field_str(raw, "action")? },
            "VNC_CONNECTED" => Self::VncConnected(vnc_client(raw)?),
            "VNC_INITIALIZED" => Self::VncInitialized(vnc_client(raw)?),
            "VNC_DISCONNECTED" => Self::VncDisconnected(vnc_client(raw)?),
            _ => return Err(QmpError::UnknownEvent { name: quote(raw.name.as_bytes()) }),
        })
    }
}

/// QEMU's run state (QAPI `RunState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunState {
    /// Running guest code.
    Running,
    /// Paused by `stop`.
    Paused,
    /// Not started yet (`-S`).
    Prelaunch,
    /// Shut down (with `-no-shutdown`).
    Shutdown,
    /// Suspended (S3).
    Suspended,
    /// Paused after a guest panic.
    GuestPanicked,
    /// Paused on an I/O error.
    IoError,
    /// Another state, by name.
    Other(String),
}

/// The answer to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    /// The vCPUs run.
    pub running: bool,
    /// The run state.
    pub status: RunState,
}

/// The answer to `query-vnc`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct VncInfo {
    /// A VNC server is configured.
    pub enabled: bool,
    /// The address it listens on.
    #[serde(default)]
    pub host: Option<String>,
    /// Its port (or unix path).
    #[serde(default)]
    pub service: Option<String>,
    /// `ipv4`, `ipv6`, `unix`.
    #[serde(default)]
    pub family: Option<String>,
    /// Authentication (`none`, ...).
    #[serde(default)]
    pub auth: Option<String>,
}

impl VncInfo {
    /// The TCP address of the server, when it listens on one.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        if !self.enabled {
            return None;
        }
        let host = self.host.as_deref()?;
        let port: u16 = self.service.as_deref()?.parse().ok()?;
        let ip: std::net::IpAddr = host.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

fn bad_return(command: &str, what: &str, v: &Value) -> QmpError {
    QmpError::BadReturn { command: command.into(), what: what.into(), value: quote_value(v) }
}

/// Types a `query-status` answer.
pub fn parse_status(v: &Value) -> Result<StatusInfo, QmpError> {
    let running = v
        .get("running")
        .and_then(Value::as_bool)
        .ok_or_else(|| bad_return("query-status", "running is not a boolean", v))?;
    let s = v
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_return("query-status", "status is not a string", v))?;
    let status = match s {
        "running" => RunState::Running,
        "paused" => RunState::Paused,
        "prelaunch" => RunState::Prelaunch,
        "shutdown" => RunState::Shutdown,
        "suspended" => RunState::Suspended,
        "guest-panicked" => RunState::GuestPanicked,
        "io-error" => RunState::IoError,
        other => RunState::Other(other.to_string()),
    };
    Ok(StatusInfo { running, status })
}

/// Something the reader thread delivers, in the order QEMU sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A typed event, with QEMU's timestamp.
    Event(QmpEvent, Option<(i64, i64)>),
    /// A line that could not be used (bad JSON, unknown event, ...); the stream goes on.
    Error(QmpError),
    /// The connection ended; nothing follows.
    Closed,
}

type Pending = Arc<Mutex<HashMap<u64, Sender<Result<Value, QmpError>>>>>;

/// A connected QMP client. Commands may be sent from any thread; events go to the handler given to
/// [`QmpClient::connect`], called on the client's reader thread (which must not send commands and wait
/// for their answers; it may use [`QmpClient::execute_detached`]).
pub struct QmpClient {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next_id: AtomicU64,
    timeout: Duration,
    greeting: Greeting,
}

impl std::fmt::Debug for QmpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpClient").field("greeting", &self.greeting).finish_non_exhaustive()
    }
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> QmpError {
    move |e| QmpError::Io { op, msg: e.to_string() }
}

/// Reads lines from `stream` until one parses as a message, within `deadline`.
fn read_message(
    stream: &mut UnixStream,
    split: &mut LineSplitter,
    queue: &mut std::collections::VecDeque<Result<Vec<u8>, QmpError>>,
    deadline: Instant,
) -> Result<QmpMessage, QmpError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(line) = queue.pop_front() {
            return parse_message(&line?);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(QmpError::Timeout {
                command: "greeting and qmp_capabilities".into(),
                timeout: Duration::ZERO,
            });
        }
        stream.set_read_timeout(Some(left)).map_err(io("set a read timeout"))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Err(QmpError::Closed(" during the handshake".into())),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                continue
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io("read")(e)),
        };
        queue.extend(split.push(&buf[..n]));
    }
}

impl QmpClient {
    /// Reads the greeting, negotiates capabilities (none), and starts the reader thread, which hands
    /// every event and every unusable line to `handler` and ends with [`Incoming::Closed`].
    /// `timeout` bounds the handshake and each command's wait for its answer.
    pub fn connect(
        mut stream: UnixStream,
        timeout: Duration,
        handler: impl FnMut(Incoming) + Send + 'static,
    ) -> Result<(Arc<Self>, std::thread::JoinHandle<()>), QmpError> {
        let deadline = Instant::now() + timeout;
        let mut split = LineSplitter::new(MAX_LINE);
        let mut queue = std::collections::VecDeque::new();
        let greeting = match read_message(&mut stream, &mut split, &mut queue, deadline)? {
            QmpMessage::Greeting(g) => g,
            other => {
                return Err(QmpError::Shape {
                    what: "expected the greeting".into(),
                    line: format!("{other:?}"),
                })
            }
        };
        stream
            .write_all(b"{\"execute\":\"qmp_capabilities\",\"id\":0}\n")
            .map_err(io("send qmp_capabilities"))?;
        // Events cannot arrive before capabilities are negotiated; anything else is a protocol error.
        match read_message(&mut stream, &mut split, &mut queue, deadline)? {
            QmpMessage::Return { id: Some(0), .. } => {}
            QmpMessage::Error { class, desc, .. } => {
                return Err(QmpError::Command { command: "qmp_capabilities".into(), class, desc })
            }
            other => {
                return Err(QmpError::Shape {
                    what: "expected the answer to qmp_capabilities".into(),
                    line: format!("{other:?}"),
                })
            }
        }
        stream.set_read_timeout(None).map_err(io("clear the read timeout"))?;
        let writer = stream.try_clone().map_err(io("clone the socket"))?;
        let client = Arc::new(Self {
            writer: Mutex::new(writer),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            timeout,
            greeting,
        });
        let pending = client.pending.clone();
        let reader = std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || {
                crate::jail::enter_or_die(crate::jail::Role::Control);
                reader_loop(stream, split, queue, pending, handler)
            })
            .map_err(io("spawn the reader thread"))?;
        Ok((client, reader))
    }

    /// QEMU's greeting.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    fn send(&self, command: &str, args: Option<Value>, id: u64) -> Result<(), QmpError> {
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(a), Some(o)) = (args, msg.as_object_mut()) {
            o.insert("arguments".into(), a);
        }
        let mut line = msg.to_string();
        line.push('\n');
        lock(&self.writer).write_all(line.as_bytes()).map_err(io("send a command"))
    }

    /// Runs `command` and waits for its answer.
    pub fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        lock(&self.pending).insert(id, tx);
        if let Err(e) = self.send(command, args, id) {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(QmpError::Command { class, desc, .. })) => {
                Err(QmpError::Command { command: command.into(), class, desc })
            }
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).remove(&id);
                Err(QmpError::Timeout { command: command.into(), timeout: self.timeout })
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(QmpError::Closed(format!(" before {command} was answered")))
            }
        }
    }

    /// Sends `command` without waiting for its answer (which is dropped). For the reader thread.
    pub fn execute_detached(&self, command: &str) -> Result<(), QmpError> {
        self.send(command, None, self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn execute_empty(&self, command: &str) -> Result<(), QmpError> {
        self.execute(command, None).map(|_| ())
    }

    /// `query-status`.
    pub fn query_status(&self) -> Result<StatusInfo, QmpError> {
        parse_status(&self.execute("query-status", None)?)
    }

    /// `stop`: pauses the vCPUs (a STOP event follows).
    pub fn stop(&self) -> Result<(), QmpError> {
        self.execute_empty("stop")
    }

    /// `cont`: runs the vCPUs (a RESUME event follows).
    pub fn cont(&self) -> Result<(), QmpError> {
        self.execute_empty("cont")
    }

    /// `system_powerdown`: presses the ACPI power button (a POWERDOWN event follows).
    pub fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute_empty("system_powerdown")
    }

    /// `system_reset`: resets the machine (a RESET event follows).
    pub fn system_reset(&self) -> Result<(), QmpError> {
        self.execute_empty("system_reset")
    }

    /// `quit`: QEMU exits (a SHUTDOWN event with reason `host-qmp-quit` comes first).
    pub fn quit(&self) -> Result<(), QmpError> {
        match self.execute_empty("quit") {
            // QEMU may close the socket before its answer is read.
            Err(QmpError::Closed(_)) => Ok(()),
            r => r,
        }
    }

    /// `query-vnc`.
    pub fn query_vnc(&self) -> Result<VncInfo, QmpError> {
        let v = self.execute("query-vnc", None)?;
        VncInfo::deserialize(&v).map_err(|e| bad_return("query-vnc", &e.to_string(), &v))
    }

    /// `human-monitor-command`: a HMP command line; returns its output.
    pub fn human_monitor_command(&self, command_line: &str) -> Result<String, QmpError> {
        let v = self.execute("human-monitor-command", Some(json!({ "command-line": command_line })))?;
        v.as_str().map(str::to_string).ok_or_else(|| bad_return("human-monitor-command", "not a string", &v))
    }
}

fn reader_loop(
    mut stream: UnixStream,
    mut split: LineSplitter,
    mut queue: std::collections::VecDeque<Result<Vec<u8>, QmpError>>,
    pending: Pending,
    mut handler: impl FnMut(Incoming),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(line) = queue.pop_front() {
            let msg = match line.and_then(|l| parse_message(&l)) {
                Ok(m) => m,
                Err(e) => {
                    handler(Incoming::Error(e));
                    continue;
                }
            };
            match msg {
                QmpMessage::Event(raw) => match QmpEvent::parse(&raw) {
                    Ok(ev) => handler(Incoming::Event(ev, raw.timestamp)),
                    Err(e) => handler(Incoming::Error(e)),
                },
                QmpMessage::Return { id: Some(id), value } => {
                    if let Some(tx) = lock(&pending).remove(&id) {
                        let _ = tx.send(Ok(value));
                    }
                }
                QmpMessage::Error { id: Some(id), class, desc } => {
                    if let Some(tx) = lock(&pending).remove(&id) {
                        let _ = tx.send(Err(QmpError::Command { command: String::new(), class, desc }));
                    }
                }
                other => handler(Incoming::Error(QmpError::Shape {
                    what: "an answer without an id, or a second greeting".into(),
                    line: quote(format!("{other:?}").as_bytes()),
                })),
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => queue.extend(split.push(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                handler(Incoming::Error(io("read")(e)));
                break;
            }
        }
    }
    // Waiting commands see their senders dropped: Closed.
    lock(&pending).clear();
    handler(Incoming::Closed);
}

#[cfg(test)]
mod tests {
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

        let e = parse_message(br#"{"id": 3, "error": {"class": "CommandNotFound", "desc": "The command foo has not been found"}}"#)
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
                    format!(
                        "{{\"id\": {id}, \"error\": {{\"class\": \"GenericError\", \"desc\": \"nope\"}}}}\n"
                    )
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
                Just("UNKNOWN"),
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
}
