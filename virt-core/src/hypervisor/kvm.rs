//! The [`Hypervisor`](super::Hypervisor) seam implemented on Linux KVM through `kvm-ioctls`.

use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ClockState, CpuId, FpuState, HypervisorError, IoEventAddress, IrqchipState, LapicState, MemorySlot,
    MsrEntry, Result, SpecialRegisters, StandardRegisters, Vcpu, VcpuState, Vm, VmExit, VmState, XsaveState,
};

/// Default KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// KVM as a [`Hypervisor`](super::Hypervisor).
pub struct KvmHypervisor {
    kvm: Kvm,
    msr_indices: Arc<Vec<u32>>,
}

impl KvmHypervisor {
    /// Opens `/dev/kvm` and checks the capabilities the VMM relies on.
    pub fn new() -> Result<Self> {
        Self::with_path(KVM_PATH)
    }

    /// Opens a KVM device node at `path`.
    pub fn with_path(path: &str) -> Result<Self> {
        let kvm = Kvm::new_with_path(std::ffi::CString::new(path).map_err(|_| HypervisorError::Open {
            path: path.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?)
        .map_err(|e| HypervisorError::Open { path: path.to_string(), source: e.into() })?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(HypervisorError::MissingCapability(name));
            }
        }
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(|e| HypervisorError::call("KVM_GET_MSR_INDEX_LIST", e))?
            .as_slice()
            .to_vec();
        Ok(Self { kvm, msr_indices: Arc::new(msr_indices) })
    }
}

impl super::Hypervisor for KvmHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        let fd = self.kvm.create_vm().map_err(|e| HypervisorError::call("KVM_CREATE_VM", e))?;
        Ok(Arc::new(KvmVm { fd, msr_indices: self.msr_indices.clone() }))
    }

    fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| HypervisorError::call("KVM_GET_SUPPORTED_CPUID", e))
    }

    fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }
}

/// A KVM virtual machine.
pub struct KvmVm {
    fd: VmFd,
    msr_indices: Arc<Vec<u32>>,
}

/// The chip ids of `KVM_GET_IRQCHIP`: PIC master, PIC slave, IOAPIC.
const IRQCHIPS: [u32; 3] = [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC];

/// Address of the three-page region KVM on Intel needs for the real-mode TSS; just below the BIOS
/// area's end, inside the MMIO gap, where no guest RAM or device lives.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

fn ioevent_addr(a: IoEventAddress) -> kvm_ioctls::IoEventAddress {
    match a {
        IoEventAddress::Pio(p) => kvm_ioctls::IoEventAddress::Pio(p),
        IoEventAddress::Mmio(m) => kvm_ioctls::IoEventAddress::Mmio(m),
    }
}

impl Vm for KvmVm {
    unsafe fn set_memory_slot(&self, s: MemorySlot) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: s.slot,
            guest_phys_addr: s.guest_addr,
            memory_size: s.size,
            userspace_addr: s.host_addr,
            flags: if s.log_dirty { KVM_MEM_LOG_DIRTY_PAGES } else { 0 },
        };
        // SAFETY: the caller guarantees (this function's contract) that the host mapping outlives the
        // slot; KVM validates alignment and overlap itself.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|e| HypervisorError::call("KVM_SET_USER_MEMORY_REGION", e))
    }

    fn setup_arch(&self) -> Result<()> {
        self.fd.set_tss_address(KVM_TSS_ADDRESS).map_err(|e| HypervisorError::call("KVM_SET_TSS_ADDR", e))?;
        self.fd.create_irq_chip().map_err(|e| HypervisorError::call("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        self.fd.create_pit2(pit).map_err(|e| HypervisorError::call("KVM_CREATE_PIT2", e))
    }

    fn create_vcpu(&self, id: u8) -> Result<Box<dyn Vcpu>> {
        let fd =
            self.fd.create_vcpu(u64::from(id)).map_err(|e| HypervisorError::call("KVM_CREATE_VCPU", e))?;
        Ok(Box::new(KvmVcpu { fd, msr_indices: self.msr_indices.clone() }))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(|e| HypervisorError::call("KVM_IRQFD", e))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd.unregister_irqfd(fd, gsi).map_err(|e| HypervisorError::call("KVM_IRQFD(deassign)", e))
    }

    fn register_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<()> {
        let a = ioevent_addr(addr);
        match datamatch {
            Some(d) => self.fd.register_ioevent(fd, &a, d),
            None => self.fd.register_ioevent(fd, &a, kvm_ioctls::NoDatamatch),
        }
        .map_err(|e| HypervisorError::call("KVM_IOEVENTFD", e))
    }

    fn unregister_ioevent(&self, fd: &EventFd, addr: IoEventAddress, datamatch: Option<u32>) -> Result<()> {
        let a = ioevent_addr(addr);
        match datamatch {
            Some(d) => self.fd.unregister_ioevent(fd, &a, d),
            None => self.fd.unregister_ioevent(fd, &a, kvm_ioctls::NoDatamatch),
        }
        .map_err(|e| HypervisorError::call("KVM_IOEVENTFD(deassign)", e))
    }

    fn set_irq_line(&self, gsi: u32, level: bool) -> Result<()> {
        self.fd.set_irq_line(gsi, level).map_err(|e| HypervisorError::call("KVM_IRQ_LINE", e))
    }

    fn get_dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>> {
        let size = usize::try_from(size).map_err(|_| {
            HypervisorError::call("KVM_GET_DIRTY_LOG", std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        self.fd.get_dirty_log(slot, size).map_err(|e| HypervisorError::call("KVM_GET_DIRTY_LOG", e))
    }

    fn save_state(&self) -> Result<VmState> {
        let mut irqchips = Vec::new();
        for chip_id in IRQCHIPS {
            let mut chip = IrqchipState { chip_id, ..Default::default() };
            self.fd.get_irqchip(&mut chip).map_err(|e| HypervisorError::call("KVM_GET_IRQCHIP", e))?;
            irqchips.push(chip);
        }
        let pit = self.fd.get_pit2().map_err(|e| HypervisorError::call("KVM_GET_PIT2", e))?;
        let clock = self.fd.get_clock().map_err(|e| HypervisorError::call("KVM_GET_CLOCK", e))?;
        Ok(VmState { irqchips, pit, clock })
    }

    fn restore_state(&self, state: &VmState) -> Result<()> {
        for chip in &state.irqchips {
            self.fd.set_irqchip(chip).map_err(|e| HypervisorError::call("KVM_SET_IRQCHIP", e))?;
        }
        self.fd.set_pit2(&state.pit).map_err(|e| HypervisorError::call("KVM_SET_PIT2", e))?;
        // Only the clock value is restored; the flags describe how the source read it.
        let clock = ClockState { clock: state.clock.clock, ..Default::default() };
        self.fd.set_clock(&clock).map_err(|e| HypervisorError::call("KVM_SET_CLOCK", e))
    }
}

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
    msr_indices: Arc<Vec<u32>>,
}

impl KvmVcpu {
    /// Reads every MSR of the hypervisor's index list that this vCPU has, skipping the ones KVM
    /// refuses to read (`KVM_GET_MSRS` stops at the first).
    fn read_all_msrs(&self) -> Result<Vec<MsrEntry>> {
        let mut out = Vec::new();
        let mut rest: &[u32] = &self.msr_indices;
        while !rest.is_empty() {
            let got = self.get_msrs(rest)?;
            let n = got.len();
            out.extend(got);
            rest = rest.get(n + 1..).unwrap_or_default();
        }
        Ok(out)
    }
}

impl Vcpu for KvmVcpu {
    fn run(&mut self) -> Result<VmExit<'_>> {
        match self.fd.run() {
            Ok(exit) => Ok(match exit {
                VcpuExit::IoIn(p, d) => VmExit::IoIn(p, d),
                VcpuExit::IoOut(p, d) => VmExit::IoOut(p, d),
                VcpuExit::MmioRead(a, d) => VmExit::MmioRead(a, d),
                VcpuExit::MmioWrite(a, d) => VmExit::MmioWrite(a, d),
                VcpuExit::Hlt => VmExit::Hlt,
                VcpuExit::Shutdown => VmExit::Shutdown,
                VcpuExit::Intr => VmExit::Interrupted,
                VcpuExit::FailEntry(reason, _) => VmExit::FailEntry(reason),
                VcpuExit::InternalError => VmExit::InternalError,
                VcpuExit::SystemEvent(t, _) => VmExit::Other(format!("system event {t}")),
                other => VmExit::Other(format!("{other:?}")),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(VmExit::Interrupted),
            Err(e) => Err(HypervisorError::call("KVM_RUN", e)),
        }
    }

    fn get_regs(&self) -> Result<StandardRegisters> {
        self.fd.get_regs().map_err(|e| HypervisorError::call("KVM_GET_REGS", e))
    }

    fn set_regs(&self, regs: &StandardRegisters) -> Result<()> {
        self.fd.set_regs(regs).map_err(|e| HypervisorError::call("KVM_SET_REGS", e))
    }

    fn get_sregs(&self) -> Result<SpecialRegisters> {
        self.fd.get_sregs().map_err(|e| HypervisorError::call("KVM_GET_SREGS", e))
    }

    fn set_sregs(&self, sregs: &SpecialRegisters) -> Result<()> {
        self.fd.set_sregs(sregs).map_err(|e| HypervisorError::call("KVM_SET_SREGS", e))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        self.fd.set_fpu(fpu).map_err(|e| HypervisorError::call("KVM_SET_FPU", e))
    }

    fn set_cpuid(&self, cpuid: &CpuId) -> Result<()> {
        self.fd.set_cpuid2(cpuid).map_err(|e| HypervisorError::call("KVM_SET_CPUID2", e))
    }

    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<()> {
        let m = Msrs::from_entries(msrs).map_err(|_| {
            HypervisorError::call("KVM_SET_MSRS", std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        let n = self.fd.set_msrs(&m).map_err(|e| HypervisorError::call("KVM_SET_MSRS", e))?;
        if n != msrs.len() {
            let idx = msrs.get(n).map(|e| e.index).unwrap_or_default();
            return Err(HypervisorError::call(
                "KVM_SET_MSRS",
                std::io::Error::other(format!("only {n} of {} MSRs set; MSR {idx:#x} refused", msrs.len())),
            ));
        }
        Ok(())
    }

    fn get_msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let entries: Vec<MsrEntry> =
            indices.iter().map(|&index| MsrEntry { index, ..Default::default() }).collect();
        let mut m = Msrs::from_entries(&entries).map_err(|_| {
            HypervisorError::call("KVM_GET_MSRS", std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        let n = self.fd.get_msrs(&mut m).map_err(|e| HypervisorError::call("KVM_GET_MSRS", e))?;
        Ok(m.as_slice()[..n].to_vec())
    }

    fn get_lapic(&self) -> Result<LapicState> {
        self.fd.get_lapic().map_err(|e| HypervisorError::call("KVM_GET_LAPIC", e))
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.fd.set_lapic(lapic).map_err(|e| HypervisorError::call("KVM_SET_LAPIC", e))
    }

    fn save_state(&self) -> Result<VcpuState> {
        let c = HypervisorError::call;
        Ok(VcpuState {
            mp_state: self.fd.get_mp_state().map_err(|e| c("KVM_GET_MP_STATE", e))?,
            regs: self.get_regs()?,
            sregs: self.get_sregs()?,
            xsave: self.fd.get_xsave().map_err(|e| c("KVM_GET_XSAVE", e))?.region.to_vec(),
            xcrs: self.fd.get_xcrs().map_err(|e| c("KVM_GET_XCRS", e))?,
            debug_regs: self.fd.get_debug_regs().map_err(|e| c("KVM_GET_DEBUGREGS", e))?,
            lapic: self.get_lapic()?,
            msrs: self.read_all_msrs()?,
            events: self.fd.get_vcpu_events().map_err(|e| c("KVM_GET_VCPU_EVENTS", e))?,
        })
    }

    fn restore_state(&self, s: &VcpuState) -> Result<()> {
        let c = HypervisorError::call;
        // The order Firecracker uses: MSRs after the LAPIC (TSC deadline), events last.
        self.fd.set_mp_state(s.mp_state).map_err(|e| c("KVM_SET_MP_STATE", e))?;
        self.set_regs(&s.regs)?;
        self.set_sregs(&s.sregs)?;
        let mut xsave = XsaveState::default();
        let n = s.xsave.len().min(xsave.region.len());
        xsave.region[..n].copy_from_slice(&s.xsave[..n]);
        // SAFETY: `xsave` is a plain `kvm_xsave` without trailing FAM entries; KVM_SET_XSAVE reads
        // exactly its fixed 4 KiB region.
        unsafe { self.fd.set_xsave(&xsave) }.map_err(|e| c("KVM_SET_XSAVE", e))?;
        self.fd.set_xcrs(&s.xcrs).map_err(|e| c("KVM_SET_XCRS", e))?;
        self.fd.set_debug_regs(&s.debug_regs).map_err(|e| c("KVM_SET_DEBUGREGS", e))?;
        self.set_lapic(&s.lapic)?;
        self.set_msrs(&s.msrs)?;
        self.fd.set_vcpu_events(&s.events).map_err(|e| c("KVM_SET_VCPU_EVENTS", e))
    }

    fn set_immediate_exit(&mut self, exit: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(exit));
    }
}
