//! An attached `virtctl console` session to type into: what it printed so far, and its stdin.
//! Shared by the node's tests (through `shell.rs`) and the cluster test (`#[path]`).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An attached `virtctl console` session: what it printed so far, and its stdin.
pub struct ConsoleSession {
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl ConsoleSession {
    /// Runs `virtctl_console` (a `virtctl ... console NAME` command) with its stdin and stdout
    /// piped; what it prints is collected.
    pub fn spawn(mut virtctl_console: Command) -> Self {
        let mut child = virtctl_console
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, seen }
    }

    /// All it printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    /// Waits until `marker` shows, failing if the session ends or `within` passes.
    pub fn wait_for(&mut self, marker: &str, within: Duration) {
        let t = Instant::now();
        while !self.text().contains(marker) {
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "virtctl console ended before {marker:?} showed; saw:\n{}",
                self.text()
            );
            assert!(t.elapsed() < within, "the console never showed {marker:?}; saw:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Types `line` and Enter.
    pub fn type_line(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
    }

    /// Leaves with ^] (virtctl's escape), insisting the session ends cleanly.
    pub fn detach(mut self) {
        self.child.stdin.as_mut().unwrap().write_all(&[0x1d]).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "virtctl console did not end cleanly on ^]: {status}");
    }
}
