//! The hypervisor seam: what the native VMM needs from a hypervisor, as traits.
//!
//! In the spirit of Cloud Hypervisor's `hypervisor` crate: a [`Hypervisor`] creates [`Vm`]s, a `Vm` owns
//! guest memory slots, interrupt lines, ioevents and the dirty log and creates [`Vcpu`]s, and a `Vcpu` runs
//! until a [`VmExit`]. The VMM above this module knows these traits, never KVM's file descriptors. The
//! register and CPUID types are the x86 layouts that KVM uses (`kvm_bindings`); they are plain C
//! structs that another x86 hypervisor backend would convert from and to.
//!
//! [`kvm`] is the implementation on `kvm-ioctls`.

pub mod kvm;

use std::sync::Arc;

pub use kvm_bindings::{
    kvm_clock_data as ClockState, kvm_irqchip as IrqchipState, kvm_pit_state2 as PitState,
};
pub use kvm_bindings::{kvm_debugregs as DebugRegs, kvm_mp_state as MpState, kvm_vcpu_events as VcpuEvents};
pub use kvm_bindings::{kvm_fpu as FpuState, kvm_regs as StandardRegisters, kvm_sregs as SpecialRegisters};
pub use kvm_bindings::{kvm_lapic_state as LapicState, kvm_msr_entry as MsrEntry, CpuId};
pub use kvm_bindings::{kvm_xcrs as Xcrs, kvm_xsave as XsaveState};
use vmm_sys_util::eventfd::EventFd;

/// Errors of the hypervisor layer; each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// The hypervisor device could not be opened.
    #[error("cannot open {path}: {source} (is KVM enabled and do you have access to it?)")]
    Open {
        /// Device path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The hypervisor lacks a capability the VMM needs.
    #[error("the hypervisor lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// An ioctl or other hypervisor call failed.
    #[error("{op} failed: {source}")]
    Call {
        /// The operation, e.g. "KVM_CREATE_VM".
        op: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
}

impl HypervisorError {
    pub(crate) fn call(op: &'static str, e: impl Into<std::io::Error>) -> Self {
        Self::Call { op, source: e.into() }
    }
}

/// Result of the hypervisor layer.
pub type Result<T> = std::result::Result<T, HypervisorError>;

/// A hypervisor: creates VMs and reports what the host CPU supports.
pub trait Hypervisor: Send + Sync {
    /// Creates an empty VM (no memory, no vCPUs).
    fn create_vm(&self) -> Result<Arc<dyn Vm>>;
    /// The CPUID leaves the hypervisor can expose to a guest.
    fn supported_cpuid(&self) -> Result<CpuId>;
    /// The largest number of vCPUs one VM may have.
    fn max_vcpus(&self) -> usize;
}

/// Address of an ioevent: a port or a guest-physical MMIO address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEventAddress {
    /// An I/O port.
    Pio(u64),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// A guest memory slot: a host mapping placed at a guest-physical address.
#[derive(Debug, Clone, Copy)]
pub struct MemorySlot {
    /// Slot number, unique within the VM.
    pub slot: u32,
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual address of the mapping backing the slot.
    pub host_addr: u64,
    /// Whether the hypervisor logs writes to this slot (for migration and snapshots).
    pub log_dirty: bool,
}

/// Everything the hypervisor holds for one x86 vCPU: what a snapshot must carry so the vCPU resumes
/// exactly where it stopped (the set Firecracker and Cloud Hypervisor save).
#[derive(Clone)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: StandardRegisters,
    /// Segment, control, descriptor-table registers, EFER and APIC base.
    pub sregs: SpecialRegisters,
    /// The 4 KiB XSAVE region as 1024 words (x87, SSE, AVX...; the legacy FPU state is part of it).
    pub xsave: Vec<u32>,
    /// Extended control registers (XCR0).
    pub xcrs: Xcrs,
    /// Model-specific registers (TSC, SYSCALL, PAT, KVM clock...).
    pub msrs: Vec<MsrEntry>,
    /// The local APIC's registers.
    pub lapic: LapicState,
    /// Pending exceptions, interrupts, NMIs and SMIs.
    pub events: VcpuEvents,
    /// Multiprocessing state (running, halted, waiting for INIT/SIPI).
    pub mp_state: MpState,
    /// Debug registers.
    pub debug_regs: DebugRegs,
}

/// VM-wide state of the in-kernel devices: the two PICs and the IOAPIC, the PIT, and the KVM clock.
#[derive(Clone, Default)]
pub struct VmState {
    /// PIC master, PIC slave and IOAPIC, in that order.
    pub irqchips: Vec<IrqchipState>,
    /// The i8254 timer.
    pub pit: PitState,
    /// The guest's KVM clock.
    pub clock: ClockState,
}

/// A virtual machine: memory, interrupts, ioevents, dirty log and vCPU creation.
pub trait Vm: Send + Sync {
    /// Maps (or re-maps, e.g. to toggle dirty logging) a memory slot.
    ///
    /// # Safety
    ///
    /// `slot.host_addr .. + slot.size` must be a mapping that stays valid and is not unmapped while the
    /// VM may access it (until the slot is removed or the VM is dropped).
    unsafe fn set_memory_slot(&self, slot: MemorySlot) -> Result<()>;
    /// Sets up the architecture's in-kernel interrupt controllers and timers (x86: PIC, IOAPIC, LAPICs
    /// and PIT) and other VM-wide state the architecture needs before vCPUs are created.
    fn setup_arch(&self) -> Result<()>;
    /// Creates vCPU `id`.
    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>>;
    /// Injects an interrupt on `gsi` each time `fd` is written.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Undoes [`Vm::register_irqfd`].
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Signals `fd` when the guest writes `addr` (optionally only when the value equals `datamatch`),
    /// without an exit to the VMM.
    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<()>;
    /// Undoes [`Vm::register_ioevent`].
    fn unregister_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<()>;
    /// Drives an interrupt line high or low.
    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()>;
    /// Returns and clears the dirty-page bitmap of a slot (one bit per 4 KiB page, 64 pages per word).
    fn get_dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>>;
    /// Reads the in-kernel interrupt controllers, timer and clock (vCPUs paused).
    fn save_state(&self) -> Result<VmState>;
    /// Writes state read by [`Vm::save_state`], on this VM or another one built the same way.
    fn restore_state(&self, state: &VmState) -> Result<()>;
}

/// Why a vCPU stopped running guest code.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// The guest read an I/O port; fill the slice.
    IoIn(u16, &'a mut [u8]),
    /// The guest wrote an I/O port.
    IoOut(u16, &'a [u8]),
    /// The guest read unbacked guest-physical memory; fill the slice.
    MmioRead(u64, &'a mut [u8]),
    /// The guest wrote unbacked guest-physical memory.
    MmioWrite(u64, &'a [u8]),
    /// The guest halted with interrupts the VMM must deliver (only without an in-kernel irqchip).
    Hlt,
    /// The guest triple-faulted or otherwise requested a reset through the CPU.
    Shutdown,
    /// The run was interrupted by a signal (a kick from the VMM).
    Interrupted,
    /// The hypervisor refused to enter the guest.
    FailEntry(u64),
    /// The hypervisor hit an internal error (often an instruction it cannot emulate).
    InternalError,
    /// Anything else, with a description.
    Other(String),
}

/// A virtual CPU. Owned by one thread at a time.
pub trait Vcpu: Send {
    /// Runs guest code until the next exit.
    fn run(&mut self) -> Result<VmExit<'_>>;
    /// General-purpose registers.
    fn get_regs(&self) -> Result<StandardRegisters>;
    /// Sets general-purpose registers.
    fn set_regs(&self, regs: &StandardRegisters) -> Result<()>;
    /// Segment, control and descriptor-table registers.
    fn get_sregs(&self) -> Result<SpecialRegisters>;
    /// Sets segment, control and descriptor-table registers.
    fn set_sregs(&self, sregs: &SpecialRegisters) -> Result<()>;
    /// Sets the FPU/SSE state.
    fn set_fpu(&self, fpu: &FpuState) -> Result<()>;
    /// Sets the CPUID the guest sees.
    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()>;
    /// Sets model-specific registers; fails unless all were set.
    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()>;
    /// Reads the MSRs whose indices are given.
    fn get_msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>>;
    /// The local APIC's state.
    fn get_lapic(&self) -> Result<LapicState>;
    /// Sets the local APIC's state.
    fn set_lapic(&self, lapic: &LapicState) -> Result<()>;
    /// Reads the vCPU's whole state. Call while the vCPU is not running, after a run with immediate
    /// exit so that a pending I/O completion has been applied.
    fn save_state(&self) -> Result<VcpuState>;
    /// Writes state read by [`Vcpu::save_state`] (the CPUID must already be set).
    fn restore_state(&self, state: &VcpuState) -> Result<()>;
    /// Makes the next (or current, when called from a signal handler's thread) run return at once.
    fn set_immediate_exit(&mut self, exit: bool);
}
