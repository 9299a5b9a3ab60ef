//! The console: `console.log`, the ring buffer of recent output and the one interactive session
//! on `console.sock`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::vmm::devices::lock;

use super::control::Open;
use super::control::Shared;
use super::peer_gone;
use super::{CONSOLE_WRITE_TIMEOUT, RING_BYTES};

/// The console: `console.log`, the ring buffer and the one interactive session.
pub(super) struct ConsoleHub {
    pub(super) state: Mutex<ConsoleState>,
    pub(super) next_session: AtomicU64,
}

pub(super) struct ConsoleState {
    pub(super) log: File,
    pub(super) log_failed: bool,
    pub(super) ring: VecDeque<u8>,
    pub(super) session: Option<Session>,
}

pub(super) struct Session {
    pub(super) id: u64,
    pub(super) out: UnixStream,
}

impl ConsoleHub {
    pub(super) fn output(&self, b: &[u8]) {
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
pub(super) struct HubSink(pub(super) Arc<ConsoleHub>);

impl Write for HubSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.output(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(super) fn accept_console(shared: &Arc<Shared>, mut s: UnixStream) {
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
