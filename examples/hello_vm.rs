//! The embedder's hello world: boot a Linux kernel in a microVM from your own program and print its
//! console, using virt-core directly (no launcher process, no daemon).
//!
//! ```text
//! cargo run -p virt-examples --bin hello-vm -- KERNEL [INITRAMFS] [CMDLINE]
//! ```
//!
//! It needs a usable /dev/kvm with hardware virtualisation to boot Linux in useful time; the project's
//! nested harness (scripts/nested/) provides one on machines without.

use std::path::PathBuf;
use std::process::ExitCode;

use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::boot::KernelConfig;
use virt_core::vmm::{ExitReason, MicroVm, Payload, VmConfig};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(kernel) = args.next() else {
        eprintln!("usage: hello-vm KERNEL [INITRAMFS] [CMDLINE]");
        return ExitCode::from(2);
    };
    let initramfs = args.next().map(PathBuf::from);
    let cmdline = args.next().unwrap_or_else(|| "console=ttyS0 quiet panic=-1".to_string());

    let hv = match KvmHypervisor::new() {
        Ok(hv) => hv,
        Err(e) => {
            eprintln!("hello-vm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = VmConfig {
        memory_mib: 256,
        cpus: 1,
        payload: Payload::Kernel(KernelConfig {
            kernel: PathBuf::from(kernel),
            initramfs,
            cmdline,
            ..Default::default()
        }),
        disks: Vec::new(),
        nics: Vec::new(),
        agent: None,
        // The guest's serial console goes straight to our stdout.
        console: Box::new(std::io::stdout()),
        track_dirty_pages: false,
        huge_pages: false,
    };
    let vm = match MicroVm::new(&hv, config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("hello-vm: cannot build the VM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = match vm.start() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("hello-vm: cannot start the VM: {e}");
            return ExitCode::FAILURE;
        }
    };
    match handle.wait() {
        ExitReason::PowerOff => {
            eprintln!("hello-vm: the guest powered off");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("hello-vm: the VM ended: {other:?}");
            ExitCode::FAILURE
        }
    }
}
