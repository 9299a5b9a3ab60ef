//! Guest RAM: anonymous mappings aligned to 2 MiB, so that transparent huge pages can back them.
//!
//! The hypervisor can map guest memory with 2 MiB pages in its second-level page tables only when the
//! host mapping is a huge page and host and guest addresses agree modulo 2 MiB. With 4 KiB pages every
//! first touch of a guest page is a nested page fault, the dearest kind of exit under nested
//! virtualisation; with 2 MiB pages there are 512 times fewer.

use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

const HUGE: usize = 2 << 20;

/// Owns the host mappings behind guest RAM and unmaps them when the last holder drops.
#[derive(Debug)]
pub struct GuestRam {
    maps: Vec<(usize, usize)>,
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        for &(addr, len) in &self.maps {
            // SAFETY: each (addr, len) is a mapping this struct created and nothing else unmaps; it is
            // dropped only after every user of the guest memory (vCPUs, devices) has been stopped.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// Maps `ranges` of (guest address, size) as guest RAM, aligned to 2 MiB.
///
/// With `huge_pages`, the RAM is advised `MADV_HUGEPAGE`: the kernel then backs it with huge pages even
/// where transparent huge pages are "madvise"-only, at the price of a 2 MiB zeroing (and possibly
/// compaction) on each first touch. Without it, the alignment alone lets a host whose THP mode is
/// "always" (Debian's default) use huge pages opportunistically, without stalls.
pub fn create(ranges: &[(u64, u64)], huge_pages: bool) -> std::io::Result<(GuestMemoryMmap, Arc<GuestRam>)> {
    create_inner(ranges, huge_pages, None)
}

/// Maps `ranges` of guest RAM from `file` (the regions back to back from offset 0), private and
/// copy-on-write: restore maps a snapshot's memory file this way, so pages are read from the page
/// cache only when the guest touches them and restore time does not grow with memory size. Guest
/// writes never reach the file.
pub fn create_from_file(
    ranges: &[(u64, u64)],
    file: &std::fs::File,
) -> std::io::Result<(GuestMemoryMmap, Arc<GuestRam>)> {
    create_inner(ranges, false, Some(file))
}

fn create_inner(
    ranges: &[(u64, u64)],
    huge_pages: bool,
    file: Option<&std::fs::File>,
) -> std::io::Result<(GuestMemoryMmap, Arc<GuestRam>)> {
    use std::os::fd::AsRawFd;
    let mut ram = GuestRam { maps: Vec::new() };
    let mut file_offset: u64 = 0;
    let mut regions = Vec::new();
    for &(gpa, size) in ranges {
        let len = usize::try_from(size).map_err(|_| std::io::Error::other("region too large"))?;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let total = len.checked_add(HUGE).ok_or_else(|| std::io::Error::other("region too large"))?;
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choice; no existing memory is
        // affected.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE);
        let head = aligned - start;
        let tail = total - head - len;
        // SAFETY: the head and tail slack lie inside the mapping just created and are not used.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
        }
        ram.maps.push((aligned, len));
        if let Some(f) = file {
            let off = libc::off_t::try_from(file_offset)
                .map_err(|_| std::io::Error::other("memory file offset too large"))?;
            // SAFETY: MAP_FIXED over `aligned .. aligned + len`, which is our own anonymous mapping
            // created above (owned by `ram`); the file mapping replaces it in place.
            let m = unsafe {
                libc::mmap(
                    aligned as *mut libc::c_void,
                    len,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    f.as_raw_fd(),
                    off,
                )
            };
            if m == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error());
            }
            file_offset += size;
        }
        if huge_pages {
            // SAFETY: advice on our own mapping; failure (THP disabled) only means 4 KiB pages.
            unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
        }
        // SAFETY: `aligned .. aligned + len` is the live mapping created above, owned by `ram`, which
        // outlives every user of the region (see GuestRam's drop).
        let region = unsafe { MmapRegionBuilder::new(len).with_raw_mmap_pointer(aligned as *mut u8) }
            .with_mmap_prot(prot)
            .with_mmap_flags(flags)
            .build()
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let r = GuestRegionMmap::new(region, GuestAddress(gpa)).ok_or_else(|| {
            std::io::Error::other(format!("region at {gpa:#x} overflows the address space"))
        })?;
        regions.push(r);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    Ok((mem, Arc::new(ram)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_are_2mib_aligned_and_usable() {
        let (mem, _ram) = create(&[(0, 8 << 20), (1 << 32, 4 << 20)], true).unwrap();
        for gpa in [0u64, 1 << 32] {
            let h = mem.get_host_address(GuestAddress(gpa)).unwrap() as usize;
            assert_eq!(h % HUGE, 0);
        }
        mem.write_obj(0x1234u32, GuestAddress((1 << 32) + 100)).unwrap();
        assert_eq!(mem.read_obj::<u32>(GuestAddress((1 << 32) + 100)).unwrap(), 0x1234);
        assert!(mem.write_obj(0u8, GuestAddress(9 << 20)).is_err());
    }
}
