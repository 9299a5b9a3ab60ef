//! Initial vCPU state: GDT, identity page tables, segment and control registers, MSRs, FPU and LAPIC.
//!
//! Two entry states are built: the 32-bit flat protected mode with paging off that the PVH boot protocol
//! specifies, and the 64-bit long mode with identity-mapped low memory that Linux's 64-bit boot protocol
//! (bzImage entry at `startup_64`) expects.

use kvm_bindings::{kvm_segment, KVM_APIC_REG_SIZE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};
use crate::hypervisor::{FpuState, MsrEntry, SpecialRegisters, StandardRegisters, Vcpu};

/// Errors of initial register setup.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Writing the GDT or page tables into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// What was being written.
        what: &'static str,
        /// Underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// A hypervisor call failed.
    #[error(transparent)]
    Hypervisor(#[from] crate::hypervisor::HypervisorError),
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = physical address of `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity-mapped, `%rsi` = physical address of the zero page.
    Linux64,
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT descriptor from its flags (access byte and granularity nibble), base and limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The hidden part of a segment register as loaded from GDT descriptor `entry` at `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 { (raw_limit << 12) | 0xfff } else { raw_limit };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

fn gdt_for(mode: EntryMode) -> [u64; 4] {
    match mode {
        EntryMode::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code, 4 GiB
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x008b, 0, 0x67),    // TSS
        ],
        EntryMode::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
    }
}

/// Writes the GDT (and, for long mode, the identity page tables of the first GiB) and returns the
/// special registers the boot vCPU starts with.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: SpecialRegisters,
) -> Result<SpecialRegisters, RegsError> {
    let gdt = gdt_for(mode);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|source| RegsError::Memory { what: "GDT", source })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|source| RegsError::Memory { what: "IDT", source })?;

    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    let tss = segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match mode {
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            setup_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first GiB with 2 MiB pages: PML4[0] -> PDPT[0] -> 512 PDEs.
fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let err = |source| RegsError::Memory { what: "page tables", source };
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START)).map_err(err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START)).map_err(err)?;
    let mut pd = [0u8; 4096];
    for (i, chunk) in pd.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&(((i as u64) << 21) | 0x83).to_le_bytes());
    }
    mem.write_slice(&pd, GuestAddress(PDE_START)).map_err(err)
}

/// The general-purpose registers at the kernel's entry point.
pub fn boot_regs(mode: EntryMode, entry: u64) -> StandardRegisters {
    match mode {
        EntryMode::Pvh => {
            StandardRegisters { rflags: 0x2, rip: entry, rbx: PVH_INFO_START, ..Default::default() }
        }
        EntryMode::Linux64 => StandardRegisters {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// MSRs set on every vCPU before it first runs.
pub fn boot_msrs() -> Vec<MsrEntry> {
    const MSR_IA32_SYSENTER_CS: u32 = 0x174;
    const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
    const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
    const MSR_STAR: u32 = 0xc000_0081;
    const MSR_LSTAR: u32 = 0xc000_0082;
    const MSR_CSTAR: u32 = 0xc000_0083;
    const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
    const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
    const MSR_IA32_TSC: u32 = 0x10;
    const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
    const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
    const MISC_ENABLE_FAST_STRING: u64 = 1;
    // MTRRs enabled with write-back as the default type: without it the guest maps RAM uncached.
    const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| MsrEntry { index, data, ..Default::default() })
    .collect()
}

/// The FPU state Linux expects at entry (x87 control word and MXCSR at their reset values).
pub fn boot_fpu() -> FpuState {
    FpuState { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }
}

fn lapic_reg(regs: &[std::os::raw::c_char; KVM_APIC_REG_SIZE as usize], off: usize) -> u32 {
    let b: [u8; 4] = std::array::from_fn(|i| regs[off + i] as u8);
    u32::from_le_bytes(b)
}

fn set_lapic_reg(regs: &mut [std::os::raw::c_char; KVM_APIC_REG_SIZE as usize], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as std::os::raw::c_char;
    }
}

/// Programs LINT0 as ExtINT and LINT1 as NMI, as a PC's firmware leaves them.
pub fn setup_lint(vcpu: &dyn Vcpu) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const APIC_MODE_NMI: u32 = 0x4;
    const APIC_MODE_EXTINT: u32 = 0x7;
    let mut lapic = vcpu.get_lapic()?;
    let set_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(&lapic.regs, APIC_LVT0);
    set_lapic_reg(&mut lapic.regs, APIC_LVT0, set_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(&lapic.regs, APIC_LVT1);
    set_lapic_reg(&mut lapic.regs, APIC_LVT1, set_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_back() {
        let code64 = gdt_entry(0xa09b, 0, 0xfffff);
        let s = segment_from_gdt(code64, 1);
        assert_eq!((s.l, s.db, s.g, s.present, s.type_, s.s), (1, 0, 1, 1, 0xb, 1));
        assert_eq!(s.limit, 0xffff_ffff);
        assert_eq!(s.selector, 8);
        let code32 = segment_from_gdt(gdt_entry(0xc09b, 0, 0xfffff), 1);
        assert_eq!((code32.l, code32.db), (0, 1));
        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.g, tss.type_, tss.s), (0x67, 0, 0xb, 0));
        assert_eq!(gdt_entry(0x808b, 0x1234_5678, 0), 0x1280_8b34_5678_0000);
    }

    #[test]
    fn long_mode_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let s = setup_sregs(&mem, EntryMode::Linux64, SpecialRegisters::default()).unwrap();
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.efer & EFER_LMA, 0);
        let pde511: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(pde511, (511 << 21) | 0x83);
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
    }
}
