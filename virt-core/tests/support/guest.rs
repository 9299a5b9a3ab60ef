//! Test support shared by the tests that boot the project's guest (virt-core's QEMU backend tests,
//! the supervised launcher, cloud-init seed disks, the node end to end): the guest assets, tool
//! checks, one boot at a time, and a tiny RFB client. Included with `#[path]` (and `#[macro_use]`).
#![allow(dead_code, unused_macros)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// Whether `tool --version` runs.
pub fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Returns from the test, saying why, when QEMU is missing.
macro_rules! need_qemu {
    () => {
        if !guest::have("qemu-system-x86_64") {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(
                std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
                "qemu-system-x86_64 not installed: skipping (scripts/install-deps.sh installs it)"
            );
            eprintln!("qemu-system-x86_64 not installed: skipping (scripts/install-deps.sh installs it)");
            return;
        }
    };
}

/// The workspace root (the folder holding scripts/guest-assets.sh), from the including crate.
pub fn workspace_root() -> PathBuf {
    let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !d.join("scripts/guest-assets.sh").is_file() {
        assert!(d.pop(), "no scripts/guest-assets.sh above {}", env!("CARGO_MANIFEST_DIR"));
    }
    d
}

/// Guest assets, built (once, cached) by scripts/guest-assets.sh: KERNEL, INITRAMFS, ROOTFS, ...
pub fn assets() -> &'static HashMap<String, PathBuf> {
    static A: std::sync::OnceLock<HashMap<String, PathBuf>> = std::sync::OnceLock::new();
    A.get_or_init(|| {
        let script = workspace_root().join("scripts/guest-assets.sh");
        let out = std::process::Command::new("bash").arg(script).arg("--print-env").output().unwrap();
        assert!(out.status.success(), "guest-assets.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
            .collect()
    })
}

/// One asset's path: `VIRT_GUEST_<k>` when set (a machine without the workspace, such as the
/// nested harness's L1, names the files it was given), else what guest-assets.sh printed.
pub fn asset(k: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(format!("VIRT_GUEST_{k}")) {
        return PathBuf::from(p);
    }
    assets().get(k).cloned().unwrap_or_else(|| panic!("guest-assets.sh printed no {k}"))
}

/// One boot at a time: the machine has two cores and TCG is CPU-bound.
pub fn boot_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// The RFB handshake (RFC 6143) with security type None, then one full framebuffer update.
pub fn vnc_framebuffer_update(mut s: impl Read + Write) -> (u16, u16, String, usize) {
    let mut version = [0u8; 12];
    s.read_exact(&mut version).unwrap();
    assert!(version.starts_with(b"RFB 003."), "{version:?}");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    assert!(n[0] > 0, "the server refused the connection");
    let mut types = vec![0u8; n[0] as usize];
    s.read_exact(&mut types).unwrap();
    assert!(types.contains(&1), "security type None not offered: {types:?}");
    s.write_all(&[1]).unwrap();
    let mut result = [0u8; 4];
    s.read_exact(&mut result).unwrap();
    assert_eq!(u32::from_be_bytes(result), 0, "SecurityResult failed");
    s.write_all(&[1]).unwrap(); // ClientInit, shared
    let mut init = [0u8; 24];
    s.read_exact(&mut init).unwrap();
    let w = u16::from_be_bytes([init[0], init[1]]);
    let h = u16::from_be_bytes([init[2], init[3]]);
    let bpp = init[4] as usize;
    let name_len = u32::from_be_bytes([init[20], init[21], init[22], init[23]]) as usize;
    assert!(name_len < 4096);
    let mut name = vec![0u8; name_len];
    s.read_exact(&mut name).unwrap();
    // FramebufferUpdateRequest, not incremental, whole screen.
    let mut req = vec![3u8, 0, 0, 0, 0, 0];
    req.extend_from_slice(&w.to_be_bytes());
    req.extend_from_slice(&h.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr).unwrap();
    assert_eq!(hdr[0], 0, "expected a FramebufferUpdate");
    let rects = u16::from_be_bytes([hdr[2], hdr[3]]);
    assert!(rects >= 1);
    let mut pixels = 0;
    for _ in 0..rects {
        let mut r = [0u8; 12];
        s.read_exact(&mut r).unwrap();
        let (rw, rh) = (u16::from_be_bytes([r[4], r[5]]) as usize, u16::from_be_bytes([r[6], r[7]]) as usize);
        let enc = i32::from_be_bytes([r[8], r[9], r[10], r[11]]);
        assert_eq!(enc, 0, "only Raw was negotiated");
        let mut data = vec![0u8; rw * rh * bpp / 8];
        s.read_exact(&mut data).unwrap();
        pixels += rw * rh;
    }
    (w, h, String::from_utf8_lossy(&name).into_owned(), pixels)
}

/// A machine's console sink that keeps everything the guest printed, for the tests (and the
/// migration bench) that wait for markers in it. A panicked writer does not poison it.
#[derive(Clone, Default)]
pub struct Console(std::sync::Arc<(Mutex<Vec<u8>>, std::sync::Condvar)>);

impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 .0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
        self.0 .1.notify_all();
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Console {
    /// Everything printed so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0 .0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// How many times `marker` was printed.
    pub fn count(&self, marker: &str) -> usize {
        self.text().matches(marker).count()
    }

    /// Waits until `marker` was printed `n` times; false on timeout.
    pub fn wait_for_n(&self, marker: &str, n: usize, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let mut g = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if String::from_utf8_lossy(&g).matches(marker).count() >= n {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            g = match self.0 .1.wait_timeout(g, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    /// Waits until `marker` was printed; false on timeout.
    pub fn wait_for(&self, marker: &str, timeout: Duration) -> bool {
        self.wait_for_n(marker, 1, timeout)
    }
}
