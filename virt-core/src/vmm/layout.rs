//! The guest-physical memory map of the native microVM (x86_64) and the e820 table built from it.
//!
//! ```text
//! 0x0000_0000  real-mode IVT/BDA (RAM)
//! 0x0000_0500  GDT, 0x520 IDT
//! 0x0000_6000  PVH start_info, 0x6800 module list, 0x7000 memory map / zero page (bzImage path)
//! 0x0000_8ff0  boot stack top
//! 0x0000_9000  identity page tables (PML4, PDPT, PD)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA (reserved) .. 0x000e_0000 ACPI tables (reserved) .. 0x0010_0000
//! 0x0010_0000  kernel, then RAM up to min(memory, 3 GiB)
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio devices at 0xd000_0000, IOAPIC 0xfec0_0000, LAPIC 0xfee0_0000
//! 0x1_0000_0000 RAM above 4 GiB, if the guest has more than 3 GiB
//! ```

/// Start of the GDT the VMM writes.
pub const GDT_START: u64 = 0x500;
/// Start of the (empty) IDT.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6800;
/// PVH memory map, or the zero page (`boot_params`) on the bzImage path.
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The Linux zero page on the 64-bit boot path.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// PML4 of the identity page tables.
pub const PML4_START: u64 = 0x9000;
/// PDPT of the identity page tables.
pub const PDPTE_START: u64 = 0xa000;
/// First page directory of the identity page tables.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line the VMM accepts (Linux x86 takes 2 KiB by default; the boot protocol allows more).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area, end of low RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the ACPI tables go (the legacy RSDP search window).
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI window.
pub const ACPI_END: u64 = 0x100000;
/// Start of high memory, where the kernel loads.
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO gap.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// Space reserved for each virtio-mmio device.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC registers.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC registers.
pub const APIC_START: u64 = 0xfee0_0000;
/// Smallest guest the VMM boots (the kernel, its page tables and an initramfs need room).
pub const MIN_MEMORY: u64 = 16 << 20;

/// An e820 entry type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved (firmware tables, holes).
    Reserved = 2,
}

/// One e820 entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Type.
    pub kind: E820Type,
}

/// Errors of the layout builder.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Too little memory for a guest.
    #[error("guest memory of {0} bytes is below the minimum of {MIN_MEMORY} bytes (16 MiB)")]
    TooSmall(u64),
    /// More memory than the address space holds.
    #[error("guest memory of {0} bytes is too large")]
    TooLarge(u64),
}

/// Guest RAM as (guest address, size) regions: below the MMIO gap and, if needed, above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Result<Vec<(u64, u64)>, LayoutError> {
    if mem_size < MIN_MEMORY {
        return Err(LayoutError::TooSmall(mem_size));
    }
    // Keep addresses within 46 bits, a safe bound for guest physical address width.
    if mem_size > (1u64 << 46) - MMIO_GAP_END {
        return Err(LayoutError::TooLarge(mem_size));
    }
    if mem_size <= MMIO_GAP_START {
        Ok(vec![(0, mem_size)])
    } else {
        Ok(vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_size - MMIO_GAP_START)])
    }
}

/// The e820 map the guest is given: low RAM, the reserved BIOS/ACPI window, and RAM from 1 MiB up,
/// split around the MMIO gap.
pub fn e820_map(mem_size: u64) -> Result<Vec<E820Entry>, LayoutError> {
    let regions = ram_regions(mem_size)?;
    let mut map = vec![
        E820Entry { addr: 0, size: EBDA_START, kind: E820Type::Ram },
        E820Entry { addr: EBDA_START, size: ACPI_END - EBDA_START, kind: E820Type::Reserved },
    ];
    for (start, size) in regions {
        let end = start + size;
        let s = start.max(HIMEM_START);
        if end > s {
            map.push(E820Entry { addr: s, size: end - s, kind: E820Type::Ram });
        }
    }
    Ok(map)
}

/// The highest guest-physical address of RAM below the MMIO gap (exclusive).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_guest_is_refused() {
        assert_eq!(ram_regions(1 << 20), Err(LayoutError::TooSmall(1 << 20)));
    }

    #[test]
    fn big_guest_splits_around_gap() {
        let r = ram_regions(4 << 30).unwrap();
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }

    proptest! {
        #[test]
        fn e820_is_sorted_disjoint_and_covers_all_ram(mem in MIN_MEMORY..(64u64 << 30)) {
            let map = e820_map(mem).unwrap();
            // Sorted and disjoint.
            for w in map.windows(2) {
                prop_assert!(w[0].addr + w[0].size <= w[1].addr, "{:?}", map);
            }
            // No RAM inside the MMIO gap, nothing in the gap at all.
            for e in &map {
                prop_assert!(e.size > 0);
                let end = e.addr + e.size;
                prop_assert!(end <= MMIO_GAP_START || e.addr >= MMIO_GAP_END, "{:?}", e);
            }
            // RAM entries plus the reserved window account for exactly the guest's memory.
            let ram: u64 = map.iter().filter(|e| e.kind == E820Type::Ram).map(|e| e.size).sum();
            prop_assert_eq!(ram + (HIMEM_START - EBDA_START), mem);
            // Every RAM entry lies inside a memory region the VMM maps.
            let regions = ram_regions(mem).unwrap();
            for e in map.iter().filter(|e| e.kind == E820Type::Ram) {
                prop_assert!(regions.iter().any(|(s, l)| e.addr >= *s && e.addr + e.size <= s + l));
            }
        }
    }
}
