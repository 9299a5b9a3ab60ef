//! A [`Machine`] test double: the test drives its console and its end.

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
            return Err(MachineError::Control { machine: "fake".into(), op: "stop", source: "ended".into() });
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
    fn vnc_socket(&self) -> Option<std::path::PathBuf> {
        Some("/run/vm1/vnc.sock".into())
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
