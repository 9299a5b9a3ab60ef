//! Tiny hand-written guests run on this machine's /dev/kvm: the vCPU loop, port and MMIO exits, serial,
//! power-off and reset, the ACPI power button's interrupt and event register, pause/resume and the
//! dirty log, without a kernel.
//!
//! Guests are 32-bit flat protected-mode code (the PVH entry state, paging off) assembled at test time
//! with GNU `as` and linked at 1 MiB.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virt_core::block::MemDisk;
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::boot::regs::EntryMode;
use virt_core::vmm::{ExitReason, MicroVm, Payload, VmConfig};
use vm_memory::{Bytes, GuestAddress};

const LOAD: u64 = 0x10_0000;

fn kvm() -> Option<KvmHypervisor> {
    if !Path::new("/dev/kvm").exists() {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "skipping: /dev/kvm does not exist on this machine"
        );
        eprintln!("skipping: /dev/kvm does not exist on this machine");
        return None;
    }
    Some(KvmHypervisor::new().expect("/dev/kvm exists but cannot be used"))
}

fn assemble(name: &str, src: &str) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("tiny-{}-{name}", std::process::id()));
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

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);
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
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(image: Vec<u8>, console: &Console) -> VmConfig {
    VmConfig {
        memory_mib: 32,
        cpus: 1,
        payload: Payload::Flat { image, load_addr: LOAD, entry: LOAD, mode: EntryMode::Pvh },
        disks: vec![],
        nics: Vec::new(),
        agent: None,
        console: Box::new(console.clone()),
        track_dirty_pages: false,
        huge_pages: false,
    }
}

/// Prints the NUL-terminated string at label `msg` on COM1.
const PRINT: &str = "
    mov $0x3f8, %dx
    lea msg, %esi
1:  lodsb
    test %al, %al
    jz 2f
    out %al, %dx
    jmp 1b
2:
";

/// Powers off through the ACPI sleep control register (S5 | SLP_EN).
const POWEROFF: &str = "
    mov $0x600, %dx
    mov $0x34, %al
    out %al, %dx
9:  hlt
    jmp 9b
";

#[test]
fn serial_output_and_acpi_poweroff() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    let img = assemble("hello", &format!("{PRINT}{POWEROFF}\nmsg: .asciz \"Hello from a tiny guest\\n\""));
    let vm = MicroVm::new(&hv, config(img, &con)).unwrap();
    let h = vm.start().unwrap();
    assert_eq!(h.wait(), ExitReason::PowerOff);
    assert_eq!(con.text(), "Hello from a tiny guest\n");
    assert!(h.first_exit_after_start().is_some());
}

#[test]
fn mmio_exit_reads_virtio_registers_and_unhandled_port_reads_all_ones() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    // Writes the virtio-mmio magic ("virt"), the device ID (2 = block) as a digit, and the value an
    // unclaimed port returns, to the console.
    let img = assemble(
        "mmio",
        &format!(
            "
    mov $0x3f8, %dx
    mov 0xd0000000, %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    shr $8, %eax
    out %al, %dx
    mov 0xd0000008, %eax
    add $0x30, %al
    out %al, %dx
    mov $0x510, %dx
    in %dx, %al
    mov $0x3f8, %dx
    out %al, %dx
    {POWEROFF}"
        ),
    );
    let mut cfg = config(img, &con);
    cfg.disks = vec![Arc::new(MemDisk::new(1 << 20, true))];
    let h = MicroVm::new(&hv, cfg).unwrap().start().unwrap();
    assert_eq!(h.wait(), ExitReason::PowerOff);
    let out = con.0.lock().unwrap().clone();
    assert_eq!(out, b"virt2\xff");
}

#[test]
fn a_nic_sits_on_the_virtio_mmio_bus_after_the_disks() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    // Prints the device IDs at the first two virtio-mmio slots: the disk (2), then the NIC (1), and
    // the first byte of the NIC's config space (the MAC's first octet, 0x02 -> '2' after adding '0').
    let img = assemble(
        "nic",
        &format!(
            "
    mov $0x3f8, %dx
    mov 0xd0000008, %eax
    add $0x30, %al
    out %al, %dx
    mov 0xd0001008, %eax
    add $0x30, %al
    out %al, %dx
    movb 0xd0001100, %al
    add $0x30, %al
    out %al, %dx
    {POWEROFF}"
        ),
    );
    let mut cfg = config(img, &con);
    cfg.disks = vec![Arc::new(MemDisk::new(1 << 20, true))];
    let (ours, _peer) = virt_core::net::NetPair::new("nic", "peer").unwrap();
    cfg.nics = vec![virt_core::vmm::NicConfig {
        backend: Arc::new(ours),
        config: virt_core::vmm::NetConfig { mac: virt_core::net::MacAddr([2, 0, 0, 0, 0, 1]), mtu: 1500 },
        vhost: virt_core::net::VhostMode::Auto,
    }];
    let h = MicroVm::new(&hv, cfg).unwrap().start().unwrap();
    assert_eq!(h.wait(), ExitReason::PowerOff);
    assert_eq!(con.text(), "212");
}

#[test]
fn i8042_reset_ends_the_vm_as_reset() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    let img = assemble("kbdreset", "mov $0x64, %dx\n mov $0xfe, %al\n out %al, %dx\n 1: jmp 1b");
    let h = MicroVm::new(&hv, config(img, &con)).unwrap().start().unwrap();
    assert_eq!(h.wait(), ExitReason::Reset);
}

/// Waits up to 10 s for the console to show `text`.
fn wait_for(con: &Console, text: &str) -> bool {
    for _ in 0..2000 {
        if con.text().contains(text) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

#[test]
fn power_button_interrupts_the_guest_and_its_event_register_clears_on_read() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    // What Linux's GED driver and `_EVT` do, by hand: route IOAPIC pin 3 (the GED's GSI) to vector
    // 0x40, wait with interrupts on; the handler reads the event register (port 0x604) twice, prints
    // both values as digits and powers off. The legacy PIC and LINT0 are masked so that only the
    // IOAPIC delivers. PVH enters with no stack: the guest brings its own.
    let img = assemble(
        "ged",
        &format!(
            "
    mov $stack_top, %esp
    mov $0xff, %al
    out %al, $0x21
    out %al, $0xa1
    movl $0x10000, 0xfee00350
    movl $0x1ff, 0xfee000f0
    lea idt + 0x40 * 8, %edi
    mov $isr, %eax
    mov %ax, (%edi)
    mov %cs, %bx
    mov %bx, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    lidt idtr
    movl $0x16, 0xfec00000
    movl $0x40, 0xfec00010
    movl $0x17, 0xfec00000
    movl $0, 0xfec00010
    sti
    mov $0x3f8, %dx
    mov $0x52, %al
    out %al, %dx
1:  hlt
    jmp 1b
isr:
    mov $0x604, %dx
    in %dx, %al
    add $0x30, %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0x604, %dx
    in %dx, %al
    add $0x30, %al
    mov $0x3f8, %dx
    out %al, %dx
    movl $0, 0xfee000b0
    {POWEROFF}
.align 8
idtr: .word 256 * 8 - 1
    .long idt
.align 8
idt: .fill 256, 8, 0
    .fill 1024, 1, 0
stack_top:"
        ),
    );
    let h = MicroVm::new(&hv, config(img, &con)).unwrap().start().unwrap();
    assert!(wait_for(&con, "R"), "the guest did not get ready: {:?}", con.text());
    h.power_button().unwrap();
    assert_eq!(h.wait(), ExitReason::PowerOff, "console: {:?}", con.text());
    // 1: the power-button bit; 0: the first read cleared it.
    assert_eq!(con.text(), "R10");
    let e = h.power_button().unwrap_err().to_string();
    assert!(e.contains("already ended"), "{e}");
}

#[test]
fn host_reset_ends_the_vm_as_reset() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    let img = assemble("spin", "1: jmp 1b");
    let h = MicroVm::new(&hv, config(img, &con)).unwrap().start().unwrap();
    h.request_reset();
    assert_eq!(h.wait(), ExitReason::Reset);
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    // Increments the dword at 0x8000 forever.
    let img = assemble("counter", "1: incl 0x8000\n jmp 1b");
    let h = MicroVm::new(&hv, config(img, &con)).unwrap().start().unwrap();
    let read = |h: &virt_core::vmm::VmHandle| h.memory().read_obj::<u32>(GuestAddress(0x8000)).unwrap();
    let wait_for_progress = |h: &virt_core::vmm::VmHandle, from: u32| {
        for _ in 0..500 {
            if read(h) != from {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    };
    assert!(wait_for_progress(&h, 0), "the guest never ran");
    h.pause();
    assert!(h.is_paused());
    let c1 = read(&h);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(read(&h), c1, "the guest ran while paused");
    h.resume();
    assert!(wait_for_progress(&h, c1), "the guest did not run after resume");
    h.request_stop();
    assert_eq!(h.wait(), ExitReason::Stopped);
}

#[test]
fn dirty_log_reports_exactly_the_pages_the_guest_wrote() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    let img = assemble(
        "dirty",
        "movl $1, 0x202000\n movl $2, 0x205000\n movl $3, 0x209ff0\n
    mov $0x3f8, %dx
    mov $0x2e, %al
    out %al, %dx
1:  pause
    jmp 1b",
    );
    let mut cfg = config(img, &con);
    cfg.track_dirty_pages = true;
    let h = MicroVm::new(&hv, cfg).unwrap().start().unwrap();
    // Wait until the guest has written its pages (it prints '.' afterwards).
    for _ in 0..1000 {
        if !con.text().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(con.text(), ".");
    let dirty = h.dirty_pages().unwrap();
    assert_eq!(dirty, vec![0x202000, 0x205000, 0x209000]);
    // The log was cleared by reading it.
    assert_eq!(h.dirty_pages().unwrap(), Vec::<u64>::new());
    h.request_stop();
    h.wait();
}

#[test]
fn bad_configurations_are_refused_with_reasons() {
    let Some(hv) = kvm() else { return };
    let con = Console::default();
    let mut cfg = config(vec![0xf4], &con);
    cfg.memory_mib = 1;
    let e = MicroVm::new(&hv, cfg).err().unwrap().to_string();
    assert!(e.contains("below the minimum"), "{e}");
    let mut cfg = config(vec![0xf4], &con);
    cfg.cpus = 0;
    assert!(MicroVm::new(&hv, cfg).is_err());
}
