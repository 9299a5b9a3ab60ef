//! The CPUID a vCPU sees: KVM's supported set, filtered and completed with this vCPU's topology.

use crate::hypervisor::CpuId;

/// Per-vCPU CPUID: sets APIC IDs and the topology of `cpus` single-threaded cores in one socket,
/// advertises the hypervisor bit, and hides what a microVM does not offer.
pub fn filter_cpuid(supported: &CpuId, cpu_id: u8, cpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    // Bits needed to number `cpus` cores.
    let core_bits = u32::BITS - u32::from(cpus.max(1) - 1).leading_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            0x1 => {
                // EBX[31:24] initial APIC ID, [23:16] logical processors per package, [15:8] CLFLUSH size.
                e.ebx = (u32::from(cpu_id) << 24) | (u32::from(cpus) << 16) | (8 << 8);
                e.ecx |= 1 << 31; // running under a hypervisor
                if cpus > 1 {
                    e.edx |= 1 << 28; // HTT: the package has more than one logical processor
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0x4 => {
                // EAX[31:26] cores per package - 1; [25:14] threads sharing this cache - 1.
                let cache_level = (e.eax >> 5) & 0x7;
                e.eax &= 0x3fff;
                e.eax |= (u32::from(cpus) - 1) << 26;
                if cache_level == 3 {
                    e.eax |= (u32::from(cpus) - 1) << 14;
                }
            }
            0x6 => {
                // No thermal or power management to speak of.
                e.eax = 0;
                e.ecx = 0;
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = core (`cpus` cores).
                e.edx = u32::from(cpu_id);
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = core_bits;
                        e.ebx = u32::from(cpus);
                        e.ecx = (2 << 8) | 1;
                    }
                    i => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = i;
                    }
                }
            }
            0x8000_0008 => {
                // ECX[7:0] number of cores - 1, [15:12] APIC ID size.
                e.ecx = (core_bits << 12) | (u32::from(cpus) - 1);
            }
            0x8000_001e => {
                e.eax = u32::from(cpu_id);
                e.ebx = 0; // one thread per core, core id 0 within its compute unit
                e.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, ..Default::default() }
    }

    #[test]
    fn sets_apic_id_and_topology() {
        let sup = CpuId::from_entries(&[entry(1, 0), entry(0xb, 0), entry(0xb, 1)]).unwrap();
        let c = filter_cpuid(&sup, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & (1 << 31), 0);
        assert_ne!(s[0].edx & (1 << 28), 0);
        assert_eq!(s[1].edx, 3);
        assert_eq!((s[2].eax, s[2].ebx), (2, 4));
        let one = filter_cpuid(&sup, 0, 1);
        assert_eq!(one.as_slice()[0].edx & (1 << 28), 0);
        assert_eq!(one.as_slice()[2].eax, 0);
    }
}
