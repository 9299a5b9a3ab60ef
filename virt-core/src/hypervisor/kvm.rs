//! The [`Hypervisor`](super::Hypervisor) seam implemented on Linux KVM through `kvm-ioctls`.

use std::sync::Arc;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::{
    CpuId, FpuState, HypervisorError, IoEventAddress, LapicState, MemorySlot, MsrEntry, Result,
    SpecialRegisters, StandardRegisters, Vcpu, Vm, VmExit,
};

/// Default KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// KVM as a [`Hypervisor`](super::Hypervisor).
pub struct KvmHypervisor {
    kvm: Kvm,
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
        Ok(Self { kvm })
    }
}

impl super::Hypervisor for KvmHypervisor {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        let fd = self.kvm.create_vm().map_err(|e| HypervisorError::call("KVM_CREATE_VM", e))?;
        Ok(Arc::new(KvmVm { fd }))
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
}

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
        Ok(Box::new(KvmVcpu { fd }))
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
}

/// A KVM vCPU.
pub struct KvmVcpu {
    fd: VcpuFd,
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

    fn set_immediate_exit(&mut self, exit: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(exit));
    }
}
