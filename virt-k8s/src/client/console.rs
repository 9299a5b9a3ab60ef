//! The serial console: a websocket of raw bytes both ways ([`Console`] async, [`ConsoleStream`]
//! blocking), and [`attach`], which connects this process's terminal to it the way KubeVirt's
//! `virtctl console` does.
//!
//! Attaching puts a terminal standard input in raw mode (every key, Ctrl-C included, goes to the
//! guest) and restores it when the session ends, when the process panics, and on SIGTERM, SIGHUP,
//! SIGINT and SIGQUIT. When standard input is not a terminal (a pipe, a file) the terminal settings
//! are not touched. The session ends on the escape byte `^]` (0x1d, Ctrl-]) in the input, at the end
//! of the input, or when the node closes the console.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, Once};
use std::thread;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::transport::Conn;

/// The escape byte: Ctrl-] (`^]`), as in KubeVirt's `virtctl console` and telnet.
pub const ESCAPE: u8 = 0x1d;

/// Why a console session failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The websocket failed.
    #[error("console of {vmi}: websocket: {reason}")]
    WebSocket {
        /// The VMI, `namespace/name`.
        vmi: String,
        /// What failed.
        reason: String,
    },
    /// Reading the local input failed.
    #[error("console of {vmi}: reading the input: {source}")]
    Input {
        /// The VMI, `namespace/name`.
        vmi: String,
        /// The I/O error.
        source: io::Error,
    },
    /// Writing the console's output locally failed.
    #[error("console of {vmi}: writing the output: {source}")]
    Output {
        /// The VMI, `namespace/name`.
        vmi: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The terminal's settings could not be read or changed.
    #[error("terminal on fd {fd}: {operation}: {source}")]
    Terminal {
        /// The terminal's file descriptor.
        fd: RawFd,
        /// `tcgetattr` or `tcsetattr`.
        operation: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Setting up the session (input thread, wake-up pipe, signal handlers) failed.
    #[error("console of {vmi}: setting up {what}: {source}")]
    Setup {
        /// The VMI, `namespace/name`.
        vmi: String,
        /// What was being set up.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// How an attached session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachEnd {
    /// The user typed the escape byte `^]`.
    Escape,
    /// The input ended (a pipe or file was read to its end).
    InputClosed,
    /// The node closed the console (the VMI stopped, or another session took over).
    ConsoleClosed,
    /// A signal (SIGTERM, SIGHUP, SIGINT, SIGQUIT; its number) asked to stop.
    Signal(i32),
}

type Ws = WebSocketStream<Conn>;

/// An open serial console, async: bytes from [`Console::recv`] are the guest's serial output (the
/// node's ring buffer first, then live), bytes given to [`Console::send`] are keystrokes.
#[derive(Debug)]
pub struct Console {
    vmi: String,
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
}

impl Console {
    pub(crate) fn new(vmi: String, ws: Ws) -> Self {
        let (sink, stream) = ws.split();
        Self { vmi, sink, stream }
    }

    /// The VMI, `namespace/name`.
    pub fn vmi(&self) -> &str {
        &self.vmi
    }

    /// Sends keystrokes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        send(&self.vmi, &mut self.sink, bytes).await
    }

    /// The next chunk of output; `None` once the node closed the console.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ConsoleError> {
        recv(&self.vmi, &mut self.stream).await
    }

    /// Closes the session (a websocket close frame).
    pub async fn close(&mut self) -> Result<(), ConsoleError> {
        self.sink.close().await.map_err(|e| ws_error(&self.vmi, e))
    }
}

fn ws_error(vmi: &str, e: impl std::fmt::Display) -> ConsoleError {
    ConsoleError::WebSocket { vmi: vmi.to_string(), reason: e.to_string() }
}

async fn send(vmi: &str, sink: &mut SplitSink<Ws, Message>, bytes: &[u8]) -> Result<(), ConsoleError> {
    sink.send(Message::Binary(Bytes::copy_from_slice(bytes))).await.map_err(|e| ws_error(vmi, e))
}

async fn recv(vmi: &str, stream: &mut SplitStream<Ws>) -> Result<Option<Bytes>, ConsoleError> {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Binary(b))) => return Ok(Some(b)),
            Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::copy_from_slice(t.as_bytes()))),
            // Pings are answered by tungstenite itself.
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => return Err(ws_error(vmi, e)),
        }
    }
}

/// An open serial console as a blocking byte stream: `Read` gives the guest's output (0 bytes once
/// the node closed it), `Write` sends keystrokes. [`ConsoleStream::split`] gives halves for two
/// threads. Its calls block on the [`super::NodeClient`]'s runtime: do not use it from async code.
#[derive(Debug)]
pub struct ConsoleStream {
    reader: ConsoleReader,
    writer: ConsoleWriter,
}

/// The output half of a [`ConsoleStream`].
#[derive(Debug)]
pub struct ConsoleReader {
    vmi: String,
    stream: SplitStream<Ws>,
    pending: Bytes,
    runtime: Arc<tokio::runtime::Runtime>,
}

/// The input half of a [`ConsoleStream`].
#[derive(Debug)]
pub struct ConsoleWriter {
    vmi: String,
    sink: SplitSink<Ws, Message>,
    runtime: Arc<tokio::runtime::Runtime>,
}

impl ConsoleStream {
    pub(crate) fn new(console: Console, runtime: Arc<tokio::runtime::Runtime>) -> Self {
        let Console { vmi, sink, stream } = console;
        Self {
            reader: ConsoleReader {
                vmi: vmi.clone(),
                stream,
                pending: Bytes::new(),
                runtime: runtime.clone(),
            },
            writer: ConsoleWriter { vmi, sink, runtime },
        }
    }

    /// The VMI, `namespace/name`.
    pub fn vmi(&self) -> &str {
        &self.reader.vmi
    }

    /// Output and input halves, for a reading and a writing thread.
    pub fn split(self) -> (ConsoleReader, ConsoleWriter) {
        (self.reader, self.writer)
    }

    /// Closes the session (a websocket close frame).
    pub fn close(&mut self) -> io::Result<()> {
        self.writer.close()
    }
}

impl Read for ConsoleStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for ConsoleStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.writer.flush()
    }
}

impl Read for ConsoleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.pending.is_empty() {
            match self.runtime.block_on(recv(&self.vmi, &mut self.stream)) {
                Ok(Some(b)) => self.pending = b,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending.split_to(n));
        Ok(n)
    }
}

impl ConsoleWriter {
    /// Closes the session (a websocket close frame).
    pub fn close(&mut self) -> io::Result<()> {
        self.runtime.block_on(self.sink.close()).map_err(|e| io::Error::other(ws_error(&self.vmi, e)))
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.runtime.block_on(send(&self.vmi, &mut self.sink, buf)).map_err(io::Error::other)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        // Each write is sent as one frame and flushed.
        Ok(())
    }
}

/// Splits input at the escape byte: the bytes to send, and whether the escape was typed.
pub fn split_at_escape(input: &[u8]) -> (&[u8], bool) {
    match input.iter().position(|b| *b == ESCAPE) {
        Some(i) => (&input[..i], true),
        None => (input, false),
    }
}

/// KubeVirt's greeting: `Successfully connected to NAME console. The escape sequence is ^]`.
pub fn connected_message(name: &str) -> String {
    format!("Successfully connected to {name} console. The escape sequence is ^]")
}

/// Attaches this process's standard input and output to `console`: prints
/// [`connected_message`] on standard error, puts a terminal in raw mode (not a pipe or a file) and
/// copies both ways until the session ends (see [`AttachEnd`]).
///
/// With a terminal, SIGTERM, SIGHUP, SIGINT and SIGQUIT end the session (restoring the terminal)
/// through tokio's signal handling, whose handlers stay installed for the rest of the process.
pub async fn attach(console: Console, name: &str) -> Result<AttachEnd, ConsoleError> {
    let stdin = io::stdin();
    let tty = stdin.is_terminal();
    let setup = |what| {
        let vmi = console.vmi().to_string();
        move |source| ConsoleError::Setup { vmi, what, source }
    };
    let input = File::from(stdin.as_fd().try_clone_to_owned().map_err(setup("standard input"))?);
    eprintln!("{}", connected_message(name));
    let raw = if tty { RawMode::enable(stdin.as_fd())? } else { None };
    let end = session(console, input, &mut io::stdout(), tty).await;
    let restored = raw.map(RawMode::restore).transpose();
    if tty {
        eprintln!();
    }
    let end = end?;
    restored?;
    Ok(end)
}

/// Copies `input` to the console and the console's output to `output` until the escape byte, the
/// end of the input, the node closing the console or (with `signals`) SIGTERM, SIGHUP, SIGINT or
/// SIGQUIT. `input` is read on a thread of its own, which is woken and joined before returning.
pub async fn session(
    console: Console,
    input: File,
    output: &mut (dyn Write + Send),
    signals: bool,
) -> Result<AttachEnd, ConsoleError> {
    let Console { vmi, mut sink, mut stream } = console;
    let mut signals =
        if signals { Some(Signals::new().map_err(setup_error(&vmi, "signal handlers"))?) } else { None };
    let (wake_reader, mut wake_writer) = io::pipe().map_err(setup_error(&vmi, "a wake-up pipe"))?;
    let (tx, mut rx) = mpsc::channel::<InputEvent>(16);
    let reader = thread::Builder::new()
        .name("console-input".to_string())
        .spawn(move || read_input(input, wake_reader, tx))
        .map_err(setup_error(&vmi, "the input thread"))?;

    let result = async {
        loop {
            tokio::select! {
                out = recv(&vmi, &mut stream) => match out? {
                    Some(bytes) => {
                        let write = output.write_all(&bytes).and_then(|()| output.flush());
                        write.map_err(|source| ConsoleError::Output { vmi: vmi.clone(), source })?;
                    }
                    None => return Ok(AttachEnd::ConsoleClosed),
                },
                event = rx.recv() => match event {
                    Some(InputEvent::Data(bytes)) => send(&vmi, &mut sink, &bytes).await?,
                    Some(InputEvent::Escape) => return Ok(AttachEnd::Escape),
                    Some(InputEvent::Eof) | None => return Ok(AttachEnd::InputClosed),
                    Some(InputEvent::Error(source)) => return Err(ConsoleError::Input { vmi: vmi.clone(), source }),
                },
                signal = next_signal(&mut signals) => return Ok(AttachEnd::Signal(signal)),
            }
        }
    }
    .await;

    if !matches!(result, Ok(AttachEnd::ConsoleClosed)) {
        // Best effort: the node ends the session on the close frame or on the connection closing.
        let close = sink.close();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), close).await;
    }
    // Wake the input thread and wait for it, so nothing is read from the input after we return
    // (a terminal's next keystroke belongs to the shell). A failed write means the thread is gone.
    let _ = wake_writer.write_all(&[0]);
    drop(rx);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    result
}

fn setup_error(vmi: &str, what: &'static str) -> impl FnOnce(io::Error) -> ConsoleError {
    let vmi = vmi.to_string();
    move |source| ConsoleError::Setup { vmi, what, source }
}

enum InputEvent {
    Data(Vec<u8>),
    Escape,
    Eof,
    Error(io::Error),
}

/// The input thread: waits for `input` or the wake-up pipe, forwards what it reads, stops at the
/// escape byte, the end of the input, an error, or a wake-up.
fn read_input(mut input: File, wake: io::PipeReader, tx: mpsc::Sender<InputEvent>) {
    let mut buf = [0u8; 4096];
    loop {
        match wait_readable(input.as_fd(), wake.as_fd()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                let _ = tx.blocking_send(InputEvent::Error(e));
                return;
            }
        }
        let n = match input.read(&mut buf) {
            Ok(0) => {
                let _ = tx.blocking_send(InputEvent::Eof);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock) => continue,
            Err(e) => {
                let _ = tx.blocking_send(InputEvent::Error(e));
                return;
            }
        };
        let (data, escaped) = split_at_escape(&buf[..n]);
        if !data.is_empty() && tx.blocking_send(InputEvent::Data(data.to_vec())).is_err() {
            return;
        }
        if escaped {
            let _ = tx.blocking_send(InputEvent::Escape);
            return;
        }
    }
}

/// Waits until `input` is readable (or at its end): `Ok(true)`; or `wake` is: `Ok(false)`.
fn wait_readable(input: BorrowedFd<'_>, wake: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd { fd: input.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs that outlives the call, its length
        // is passed as nfds, and both descriptors are borrowed (open) for the duration.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents & libc::POLLNVAL != 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if fds[0].revents != 0 {
            // Readable, at its end (POLLHUP) or failed (POLLERR): the read tells which.
            return Ok(true);
        }
    }
}

/// The signals that end an attached session.
struct Signals {
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }
}

async fn next_signal(signals: &mut Option<Signals>) -> i32 {
    let Some(s) = signals else { return std::future::pending().await };
    tokio::select! {
        _ = s.term.recv() => libc::SIGTERM,
        _ = s.hup.recv() => libc::SIGHUP,
        _ = s.int.recv() => libc::SIGINT,
        _ = s.quit.recv() => libc::SIGQUIT,
    }
}

/// The terminal settings to put back if the process panics while a terminal is raw.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

fn restore_saved() {
    let saved = SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    if let Some((fd, termios)) = saved {
        // SAFETY: `termios` is a valid termios read by tcgetattr on `fd`; tcsetattr only reads it.
        // A closed `fd` makes the call fail with EBADF, which is ignored here (nothing to restore).
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) };
    }
}

/// A terminal in raw mode; dropping it (or [`RawMode::restore`]) puts the settings back. A panic
/// while it is alive restores them too (through a panic hook installed once).
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
    restored: bool,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode (`cfmakeraw`: no echo, no line editing, no signals
    /// from keys, no output processing). `None` if `fd` is not a terminal. The guard keeps the
    /// descriptor's number: `fd` must stay open while it lives (standard input does).
    pub fn enable(fd: BorrowedFd<'_>) -> Result<Option<Self>, ConsoleError> {
        let raw_fd = fd.as_raw_fd();
        if !fd.is_terminal() {
            return Ok(None);
        }
        let failed =
            |operation| ConsoleError::Terminal { fd: raw_fd, operation, source: io::Error::last_os_error() };
        // SAFETY: termios is a plain C struct for which all-zero bytes are a valid value; tcgetattr
        // overwrites it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `raw_fd` is open (borrowed for this call) and `saved` is a valid, writable termios.
        if unsafe { libc::tcgetattr(raw_fd, &mut saved) } != 0 {
            return Err(failed("tcgetattr"));
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only changes its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                previous(info);
            }));
        });
        *SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((raw_fd, saved));
        // SAFETY: `raw_fd` is open and `raw` is a valid termios, only read by the call.
        if unsafe { libc::tcsetattr(raw_fd, libc::TCSANOW, &raw) } != 0 {
            let e = failed("tcsetattr");
            SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
            return Err(e);
        }
        Ok(Some(Self { fd: raw_fd, saved, restored: false }))
    }

    /// Puts the saved settings back.
    pub fn restore(mut self) -> Result<(), ConsoleError> {
        self.put_back()
    }

    fn put_back(&mut self) -> Result<(), ConsoleError> {
        if self.restored {
            return Ok(());
        }
        self.restored = true;
        SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        // SAFETY: `saved` is the valid termios read from `fd` by tcgetattr; tcsetattr only reads it.
        if unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) } != 0 {
            return Err(ConsoleError::Terminal {
                fd: self.fd,
                operation: "tcsetattr",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = self.put_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_splits_the_input() {
        assert_eq!(split_at_escape(b"ls\r"), (&b"ls\r"[..], false));
        assert_eq!(split_at_escape(b"ab\x1dcd"), (&b"ab"[..], true));
        assert_eq!(split_at_escape(b"\x1d"), (&b""[..], true));
    }

    #[test]
    fn greeting_is_kubevirts() {
        assert_eq!(
            connected_message("testvm"),
            "Successfully connected to testvm console. The escape sequence is ^]"
        );
    }

    #[test]
    fn not_a_terminal_is_left_alone() {
        let (r, _w) = io::pipe().unwrap();
        assert!(RawMode::enable(r.as_fd()).unwrap().is_none());
    }

    #[test]
    fn input_thread_forwards_until_escape_and_wakes() {
        let dir = tempfile_dir();
        let path = dir.join("input");
        std::fs::write(&path, b"hello\x1dignored").unwrap();
        let (wake_r, _wake_w) = io::pipe().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        read_input(File::open(&path).unwrap(), wake_r, tx);
        assert!(matches!(rx.blocking_recv(), Some(InputEvent::Data(d)) if d == b"hello"));
        assert!(matches!(rx.blocking_recv(), Some(InputEvent::Escape)));
        assert!(rx.blocking_recv().is_none());

        // A pipe with nothing to read: the wake-up ends the thread.
        let (input_r, _input_w) = io::pipe().unwrap();
        let (wake_r, mut wake_w) = io::pipe().unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let input = File::from(std::os::fd::OwnedFd::from(input_r));
        let t = thread::spawn(move || read_input(input, wake_r, tx));
        wake_w.write_all(&[0]).unwrap();
        t.join().unwrap();
        assert!(rx.blocking_recv().is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "virt-k8s-console-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
