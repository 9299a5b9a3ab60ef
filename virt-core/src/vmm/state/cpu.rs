//! Sections of the vCPUs (`vcpuN`) and of the VM's in-kernel devices (`vm`).
//!
//! The KVM structures are written as their raw little-endian C layout, each preceded by its size, so
//! a reader notices a structure that changed size instead of misreading it.

use super::{Decoder, Encoder, Persist, StateError};
use crate::hypervisor::{
    ClockState, DebugRegs, IrqchipState, LapicState, MpState, MsrEntry, PitState, SpecialRegisters,
    StandardRegisters, VcpuEvents, VcpuState, VmState, Xcrs,
};

/// Plain C structures of KVM: integers, arrays and unions of them, for which every bit pattern is a
/// valid value and which KVM (or `Default`) fully initialises.
///
/// # Safety
///
/// Implement only for `#[repr(C)]` types without pointers, references or invariants on their bits.
unsafe trait Pod: Copy + Default {}

// SAFETY: all are bindgen-generated `#[repr(C)]` KVM ABI structures made of integers, integer arrays
// and unions of those; KVM's own ABI copies them as bytes.
unsafe impl Pod for StandardRegisters {}
// SAFETY: as above.
unsafe impl Pod for SpecialRegisters {}
// SAFETY: as above.
unsafe impl Pod for Xcrs {}
// SAFETY: as above.
unsafe impl Pod for LapicState {}
// SAFETY: as above.
unsafe impl Pod for VcpuEvents {}
// SAFETY: as above.
unsafe impl Pod for MpState {}
// SAFETY: as above.
unsafe impl Pod for DebugRegs {}
// SAFETY: as above.
unsafe impl Pod for IrqchipState {}
// SAFETY: as above.
unsafe impl Pod for PitState {}
// SAFETY: as above.
unsafe impl Pod for ClockState {}

fn put_pod<T: Pod>(e: &mut Encoder, v: &T) {
    // SAFETY: `T: Pod` is a plain C structure fully initialised (by KVM or `Default`, which zeroes
    // padding in bindgen's derives); its bytes are read as a byte slice of exactly its size.
    let bytes = unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) };
    e.bytes(bytes);
}

fn get_pod<T: Pod>(d: &mut Decoder<'_>, what: &str) -> Result<T, StateError> {
    let size = std::mem::size_of::<T>();
    let b = d.bytes(size)?;
    if b.len() != size {
        return Err(d.invalid(format!("{what} is {} bytes, this build's layout has {size}", b.len())));
    }
    let mut v = T::default();
    // SAFETY: `b` holds exactly `size_of::<T>()` bytes and any bit pattern is a valid `T` (Pod).
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), size) };
    Ok(v)
}

/// Bytes of KVM's fixed XSAVE region.
const XSAVE_WORDS: usize = 1024;

impl Persist for VcpuState {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        put_pod(e, &self.regs);
        put_pod(e, &self.sregs);
        e.u32(self.xsave.len() as u32);
        for w in &self.xsave {
            e.u32(*w);
        }
        put_pod(e, &self.xcrs);
        e.u32(self.msrs.len() as u32);
        for m in &self.msrs {
            e.u32(m.index);
            e.u64(m.data);
        }
        put_pod(e, &self.lapic);
        put_pod(e, &self.events);
        put_pod(e, &self.mp_state);
        put_pod(e, &self.debug_regs);
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        self.regs = get_pod(d, "regs")?;
        self.sregs = get_pod(d, "sregs")?;
        let words = d.u32()? as usize;
        if words != XSAVE_WORDS {
            return Err(d.invalid(format!("XSAVE area of {words} words, expected {XSAVE_WORDS}")));
        }
        self.xsave = (0..words).map(|_| d.u32()).collect::<Result<_, _>>()?;
        self.xcrs = get_pod(d, "xcrs")?;
        let n = d.u32()? as usize;
        if n > 4096 {
            return Err(d.invalid(format!("{n} MSRs, at most 4096 expected")));
        }
        self.msrs = (0..n)
            .map(|_| Ok(MsrEntry { index: d.u32()?, data: d.u64()?, ..Default::default() }))
            .collect::<Result<_, StateError>>()?;
        self.lapic = get_pod(d, "lapic")?;
        self.events = get_pod(d, "vcpu events")?;
        self.mp_state = get_pod(d, "mp_state")?;
        self.debug_regs = get_pod(d, "debug regs")?;
        Ok(())
    }
}

impl Default for VcpuState {
    fn default() -> Self {
        Self {
            regs: Default::default(),
            sregs: Default::default(),
            xsave: vec![0; XSAVE_WORDS],
            xcrs: Default::default(),
            msrs: Vec::new(),
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
            debug_regs: Default::default(),
        }
    }
}

impl Persist for VmState {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        e.u32(self.irqchips.len() as u32);
        for c in &self.irqchips {
            put_pod(e, c);
        }
        put_pod(e, &self.pit);
        put_pod(e, &self.clock);
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        let n = d.u32()? as usize;
        if n > 3 {
            return Err(d.invalid(format!("{n} interrupt controllers, at most 3 expected")));
        }
        self.irqchips = (0..n).map(|_| get_pod(d, "irqchip")).collect::<Result<_, _>>()?;
        self.pit = get_pod(d, "pit")?;
        self.clock = get_pod(d, "clock")?;
        Ok(())
    }
}
