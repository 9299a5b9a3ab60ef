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
//!
//! [`events`] types what QEMU reports (events, run state, VNC), [`client`] is the connection.

mod client;
mod events;
#[cfg(test)]
mod tests;

pub use client::*;
pub use events::*;

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
