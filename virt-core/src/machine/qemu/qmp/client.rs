//! The QMP connection: greeting, capabilities, commands by id, events on a channel.

use super::*;
use std::os::fd::RawFd;

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

/// Commands waiting for their answers, by id; once the connection has closed, none can wait.
#[derive(Default)]
struct Waiters {
    by_id: HashMap<u64, Sender<Result<Value, QmpError>>>,
    /// The reader saw the end of the stream: a command sent now would never be answered.
    closed: bool,
}

type Pending = Arc<Mutex<Waiters>>;

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

    fn send(&self, command: &str, args: Option<Value>, id: u64, fd: Option<RawFd>) -> Result<(), QmpError> {
        let mut msg = json!({ "execute": command, "id": id });
        if let (Some(a), Some(o)) = (args, msg.as_object_mut()) {
            o.insert("arguments".into(), a);
        }
        let mut line = msg.to_string();
        line.push('\n');
        let w = lock(&self.writer);
        match fd {
            None => (&*w).write_all(line.as_bytes()).map_err(io("send a command")),
            Some(fd) => crate::machine::supervisor::migration::send_with_fd(&w, line.as_bytes(), fd)
                .map_err(io("send a command with a descriptor")),
        }
    }

    /// Runs `command` and waits for its answer.
    pub fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, QmpError> {
        self.execute_fd(command, args, None)
    }

    /// Runs `command` with `fd` attached to it (`SCM_RIGHTS`; QEMU's `getfd`), and waits for its
    /// answer. The descriptor stays open here too.
    pub fn execute_with_fd(&self, command: &str, args: Option<Value>, fd: RawFd) -> Result<Value, QmpError> {
        self.execute_fd(command, args, Some(fd))
    }

    fn execute_fd(&self, command: &str, args: Option<Value>, fd: Option<RawFd>) -> Result<Value, QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = channel();
        {
            let mut p = lock(&self.pending);
            if p.closed {
                // Sending could still succeed (QEMU may only have shut its end for writing), but
                // nothing would read an answer: fail now rather than after the timeout.
                return Err(QmpError::Closed(format!(" before {command} was sent")));
            }
            p.by_id.insert(id, tx);
        }
        if let Err(e) = self.send(command, args, id, fd) {
            lock(&self.pending).by_id.remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(self.timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(QmpError::Command { class, desc, .. })) => {
                Err(QmpError::Command { command: command.into(), class, desc })
            }
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Timeout) => {
                lock(&self.pending).by_id.remove(&id);
                Err(QmpError::Timeout { command: command.into(), timeout: self.timeout })
            }
            Err(RecvTimeoutError::Disconnected) => {
                Err(QmpError::Closed(format!(" before {command} was answered")))
            }
        }
    }

    /// Sends `command` without waiting for its answer (which is dropped). For the reader thread.
    pub fn execute_detached(&self, command: &str) -> Result<(), QmpError> {
        self.send(command, None, self.next_id.fetch_add(1, Ordering::Relaxed), None)
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
                    if let Some(tx) = lock(&pending).by_id.remove(&id) {
                        let _ = tx.send(Ok(value));
                    }
                }
                QmpMessage::Error { id: Some(id), class, desc } => {
                    if let Some(tx) = lock(&pending).by_id.remove(&id) {
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
    {
        let mut p = lock(&pending);
        p.closed = true;
        p.by_id.clear();
    }
    handler(Incoming::Closed);
}
