//! The counter guest of the snapshot and migration tests (and of `examples/snapshot_bench.rs`): a tiny
//! hand-written 32-bit guest that keeps changing memory and writes a heartbeat to its serial port.
//! Included with `#[path]`.
#![allow(dead_code)]

use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virt_core::vmm::boot::regs::EntryMode;
use virt_core::vmm::{Payload, VmConfig};

/// Where the guest is linked and loaded.
pub const LOAD: u64 = 0x10_0000;
/// Guest-physical address of the counter.
pub const COUNTER: u64 = 0x20_0000;
/// The pages the guest writes the counter into on every iteration.
pub const PAGES: std::ops::Range<u64> = 0x30_0000..0x31_0000;
/// Counter steps between heartbeats.
pub const STEP: u32 = 0x100;

/// The guest: forever, increments the counter at [`COUNTER`], stores it into the first word of
/// every page of [`PAGES`], and each time the counter's low 8 bits wrap prints `h` + the counter in
/// 8 hex digits + newline on COM1.
pub const COUNTER_GUEST: &str = "
    mov $0x3f8, %dx
top:
    incl 0x200000
    mov 0x200000, %eax
    mov $0x300000, %edi
1:  mov %eax, (%edi)
    add $4096, %edi
    cmp $0x310000, %edi
    jb 1b
    test $0xff, %eax
    jnz top
    mov %eax, %ebp
    mov $0x68, %al
    out %al, %dx
    mov $8, %ecx
2:  rol $4, %ebp
    mov %ebp, %eax
    and $0xf, %eax
    movb hexdigits(%eax), %al
    out %al, %dx
    loop 2b
    mov $0x0a, %al
    out %al, %dx
    jmp top
hexdigits: .ascii \"0123456789abcdef\"
";

/// Assembles 32-bit code `src` (with `_start` at its top) into a flat binary linked at [`LOAD`].
pub fn assemble(name: &str, src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!(
        "tiny-{}-{name}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("g.S");
    std::fs::write(&s, format!(".code32\n.globl _start\n_start:\n{src}\n")).unwrap();
    let o = dir.join("g.o");
    let b = dir.join("g.bin");
    let st = Command::new("as").args(["--32", "-o"]).arg(&o).arg(&s).status().expect("GNU as is needed");
    assert!(st.success(), "as failed on {name}");
    let st = Command::new("ld")
        .args(["-m", "elf_i386", &format!("-Ttext={LOAD:#x}"), "--oformat", "binary", "-o"])
        .arg(&b)
        .arg(&o)
        .status()
        .expect("GNU ld is needed");
    assert!(st.success(), "ld failed on {name}");
    let bin = std::fs::read(&b).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bin
}

/// A console sink the test reads.
#[derive(Clone, Default)]
pub struct Console(pub Arc<Mutex<Vec<u8>>>);
impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Console {
    /// The heartbeats printed so far (complete lines only).
    pub fn beats(&self) -> Vec<u32> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        let complete = text.rfind('\n').map(|i| &text[..i]).unwrap_or("");
        complete
            .split('\n')
            .filter_map(|l| l.rfind('h').map(|i| &l[i + 1..]))
            .filter(|h| h.len() == 8)
            .filter_map(|h| u32::from_str_radix(h, 16).ok())
            .collect()
    }

    /// Waits (generously: the machine is loaded) until at least `n` heartbeats are printed.
    pub fn wait_beats(&self, n: usize) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let b = self.beats();
            if b.len() >= n {
                return b;
            }
            assert!(Instant::now() < deadline, "only {} heartbeats after 120 s: {b:x?}", b.len());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The counter guest's configuration, with `memory_mib` of RAM.
pub fn counter_config(image: Vec<u8>, console: &Console, memory_mib: u64) -> VmConfig {
    VmConfig {
        memory_mib,
        cpus: 1,
        payload: Payload::Flat { image, load_addr: LOAD, entry: LOAD, mode: EntryMode::Pvh },
        disks: vec![],
        nics: vec![],
        agent: None,
        console: Box::new(console.clone()),
        track_dirty_pages: false,
        huge_pages: false,
    }
}

/// Asserts that heartbeats go up by one step each (no reset, no gap).
pub fn assert_consecutive(beats: &[u32]) {
    for w in beats.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(STEP), "heartbeats not consecutive: {beats:x?}");
    }
}

/// Asserts that heartbeats go up by `step` each (no reset, no gap).
pub fn assert_consecutive_by(beats: &[u32], step: u32) {
    for w in beats.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(step), "heartbeats not consecutive: {beats:x?}");
    }
}
