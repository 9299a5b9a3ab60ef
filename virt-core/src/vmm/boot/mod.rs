//! Booting a Linux kernel: loading a bzImage or an ELF vmlinux, the initramfs and command line, the PVH
//! start info or the zero page, and the initial vCPU state ([`regs`]).
//!
//! Boot paths, chosen by [`BootPath`]:
//! - **PVH** (default when possible): an ELF vmlinux with a `XEN_ELFNOTE_PHYS32_ENTRY` note is entered in
//!   32-bit protected mode with an `hvm_start_info`. A bzImage is first decompressed on the host (and the
//!   result cached, see [`bzimage`]), which skips the guest's own decompressor.
//! - **Linux 64-bit**: a bzImage is entered at `startup_64` with a zero page, and decompresses itself.

pub mod bzimage;
pub mod elf;
pub mod regs;

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use self::regs::EntryMode;
use super::layout::{
    self, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START,
    ZERO_PAGE_START,
};

/// Which boot protocol to use for a bzImage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootPath {
    /// PVH through the host-decompressed vmlinux when the kernel supports it, else the 64-bit protocol.
    #[default]
    Auto,
    /// PVH only; fail if the kernel cannot be entered that way.
    Pvh,
    /// The Linux 64-bit boot protocol; the guest decompresses its own kernel.
    Linux64,
}

/// A boot path name [`BootPath`] does not know (the launcher's `--boot-path`); names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown boot path {given:?} (expected auto, pvh or linux64)")]
pub struct UnknownBootPath {
    /// The name given.
    pub given: String,
}

impl std::str::FromStr for BootPath {
    type Err = UnknownBootPath;
    fn from_str(s: &str) -> Result<Self, UnknownBootPath> {
        match s {
            "auto" => Ok(Self::Auto),
            "pvh" => Ok(Self::Pvh),
            "linux64" | "bzimage" => Ok(Self::Linux64),
            o => Err(UnknownBootPath { given: o.to_string() }),
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, Default)]
pub struct KernelConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, possibly compressed; the kernel unpacks it).
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Boot protocol preference.
    pub boot_path: BootPath,
    /// Where decompressed kernels are cached; `None` decompresses in memory on every boot.
    pub cache_dir: Option<PathBuf>,
}

/// Errors while loading a kernel; each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The kernel file is neither a bzImage nor an ELF.
    #[error("{path} is not a Linux kernel (neither a bzImage nor an ELF vmlinux; first bytes {head:02x?})")]
    NotAKernel {
        /// The file.
        path: PathBuf,
        /// Its first bytes.
        head: Vec<u8>,
    },
    /// The bzImage is malformed or cannot be used as asked.
    #[error("{path}: {source}")]
    BzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: bzimage::BzImageError,
    },
    /// The loader refused the kernel.
    #[error("cannot load kernel {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What the loader said.
        reason: String,
    },
    /// PVH was required but the kernel has no PVH entry.
    #[error("{0} has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); use the linux64 boot path")]
    NoPvh(PathBuf),
    /// A bzImage without a 64-bit entry point.
    #[error("{0} has no 64-bit entry point (XLF_KERNEL_64)")]
    No64BitEntry(PathBuf),
    /// The initramfs does not fit in guest memory.
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory: {available} bytes free above the kernel")]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Room there is.
        available: u64,
    },
    /// The command line is too long or contains a NUL.
    #[error("kernel command line invalid: {0}")]
    Cmdline(String),
    /// Writing boot structures into guest memory failed.
    #[error("cannot write {what} into guest memory: {source}")]
    Memory {
        /// What was written.
        what: &'static str,
        /// Underlying error.
        source: vm_memory::GuestMemoryError,
    },
    /// Guest memory layout error.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

/// How the kernel was loaded and where the boot vCPU starts.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Entry protocol.
    pub mode: EntryMode,
    /// Entry point (guest-physical).
    pub entry: u64,
    /// A human-readable account of the boot path (for logs and benchmarks).
    pub how: String,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BootError + '_ {
    move |source| BootError::Io { path: path.to_path_buf(), source }
}

struct Loaded {
    mode: EntryMode,
    entry: u64,
    kernel_end: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    how: String,
}

fn load_elf(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    src: elf::Source<'_>,
) -> Result<Loaded, BootError> {
    let r = elf::load(mem, mem_size, src)
        .map_err(|e| BootError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(match r.pvh_entry {
        Some(a) => Loaded {
            mode: EntryMode::Pvh,
            entry: a,
            kernel_end: r.kernel_end,
            setup_header: None,
            how: "PVH entry of ELF vmlinux".into(),
        },
        None => Loaded {
            mode: EntryMode::Linux64,
            entry: r.entry,
            kernel_end: r.kernel_end,
            setup_header: None,
            how: "64-bit entry of ELF vmlinux".into(),
        },
    })
}

fn load_bzimage_pvh(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cfg: &KernelConfig,
    bz: &[u8],
) -> Result<Loaded, BootError> {
    let path = &cfg.kernel;
    let bz_err = |source| BootError::BzImage { path: path.clone(), source };
    let mut loaded = match &cfg.cache_dir {
        Some(dir) => {
            let (elf_path, hit) = bzimage::cached_vmlinux(dir, bz).map_err(bz_err)?;
            let f = File::open(&elf_path).map_err(io_err(&elf_path))?;
            let mut l = load_elf(mem, mem_size, &elf_path, elf::Source::File(&f))?;
            l.how = format!(
                "{} decompressed from bzImage ({})",
                l.how,
                if hit { "cached" } else { "now, cached" }
            );
            l
        }
        None => {
            let elf = bzimage::extract_vmlinux(bz).map_err(bz_err)?;
            let mut l = load_elf(mem, mem_size, path, elf::Source::Bytes(&elf))?;
            l.how = format!("bzImage decompressed on the host (in memory), {}", l.how);
            l
        }
    };
    if loaded.mode != EntryMode::Pvh {
        return Err(BootError::NoPvh(path.clone()));
    }
    loaded.setup_header = None;
    Ok(loaded)
}

fn load_bzimage_linux64(
    mem: &GuestMemoryMmap,
    path: &Path,
    hdr: &bzimage::SetupHeader,
) -> Result<Loaded, BootError> {
    if !hdr.has_64bit_entry() {
        return Err(BootError::No64BitEntry(path.to_path_buf()));
    }
    let mut f = File::open(path).map_err(io_err(path))?;
    let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)))
        .map_err(|e| BootError::Load { path: path.to_path_buf(), reason: e.to_string() })?;
    Ok(Loaded {
        mode: EntryMode::Linux64,
        entry: r.kernel_load.0 + 0x200,
        kernel_end: r.kernel_end,
        setup_header: r.setup_header,
        how: "64-bit entry of bzImage (guest decompresses)".into(),
    })
}

fn load_kernel_image(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cfg: &KernelConfig,
) -> Result<(Loaded, Option<bzimage::SetupHeader>), BootError> {
    let path = &cfg.kernel;
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut head = [0u8; 0x250];
    let n = read_up_to(&mut f, &mut head).map_err(io_err(path))?;
    let head = &head[..n];
    if head.starts_with(b"\x7fELF") {
        let l = load_elf(mem, mem_size, path, elf::Source::File(&f))?;
        if cfg.boot_path == BootPath::Pvh && l.mode != EntryMode::Pvh {
            return Err(BootError::NoPvh(path.clone()));
        }
        return Ok((l, None));
    }
    let hdr = match bzimage::SetupHeader::parse(head) {
        Ok(h) => h,
        Err(_) => return Err(BootError::NotAKernel { path: path.clone(), head: head[..n.min(16)].to_vec() }),
    };
    let len = f.metadata().map_err(io_err(path))?.len();
    hdr.check_size(len).map_err(|source| BootError::BzImage { path: path.clone(), source })?;
    if cfg.boot_path != BootPath::Linux64 {
        let mut bz = Vec::with_capacity(len as usize);
        f.rewind().map_err(io_err(path))?;
        f.read_to_end(&mut bz).map_err(io_err(path))?;
        match load_bzimage_pvh(mem, mem_size, cfg, &bz) {
            Ok(l) => return Ok((l, Some(hdr))),
            Err(e) if cfg.boot_path == BootPath::Auto => {
                log::info!(
                    "PVH boot of {} not possible ({e}); the guest will decompress its kernel",
                    path.display()
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((load_bzimage_linux64(mem, path, &hdr)?, Some(hdr)))
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Fills the decompressed-kernel cache for `cfg.kernel` ahead of a boot (no hypervisor needed), so
/// that the first boot is as fast as later ones. Returns the cached ELF's path, or `None` when the
/// kernel is not a bzImage or no cache directory is configured.
pub fn prepare_kernel(cfg: &KernelConfig) -> Result<Option<PathBuf>, BootError> {
    let Some(dir) = &cfg.cache_dir else { return Ok(None) };
    let bz = std::fs::read(&cfg.kernel).map_err(io_err(&cfg.kernel))?;
    if bz.starts_with(b"\x7fELF") {
        return Ok(None);
    }
    if bzimage::SetupHeader::parse(&bz).is_err() {
        return Err(BootError::NotAKernel {
            path: cfg.kernel.clone(),
            head: bz[..bz.len().min(16)].to_vec(),
        });
    }
    let (p, _) = bzimage::cached_vmlinux(dir, &bz)
        .map_err(|source| BootError::BzImage { path: cfg.kernel.clone(), source })?;
    Ok(Some(p))
}

/// Loads kernel, initramfs and command line into `mem` and writes the boot structures (PVH start info
/// or zero page) that point at them and at the ACPI tables (`rsdp`).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cfg: &KernelConfig,
    rsdp: u64,
) -> Result<BootInfo, BootError> {
    let (loaded, bz_hdr) = load_kernel_image(mem, mem_size, cfg)?;

    // Command line.
    let max = match (loaded.mode, bz_hdr) {
        (EntryMode::Linux64, Some(h)) => (h.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1),
        _ => CMDLINE_MAX_SIZE - 1,
    };
    if cfg.cmdline.len() > max {
        return Err(BootError::Cmdline(format!(
            "{} bytes, the kernel takes at most {max}",
            cfg.cmdline.len()
        )));
    }
    if cfg.cmdline.contains('\0') {
        return Err(BootError::Cmdline("contains a NUL byte".into()));
    }
    let mut cmdline = cfg.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    mem.write_slice(&cmdline, GuestAddress(CMDLINE_START))
        .map_err(|source| BootError::Memory { what: "command line", source })?;

    // Initramfs at the top of low RAM, below what the kernel can address.
    let initrd = match &cfg.initramfs {
        None => None,
        Some(path) => {
            let mut f = File::open(path).map_err(io_err(path))?;
            let size = f.metadata().map_err(io_err(path))?.len();
            let limit = match bz_hdr {
                Some(h) if loaded.mode == EntryMode::Linux64 => u64::from(h.initrd_addr_max) + 1,
                _ => u64::MAX,
            };
            let top = layout::low_ram_end(mem_size).min(limit);
            let floor = loaded.kernel_end.div_ceil(4096) * 4096;
            let available = top.saturating_sub(floor);
            if size > available {
                return Err(BootError::InitramfsTooLarge { path: path.clone(), size, available });
            }
            let addr = (top - size) & !0xfff;
            mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
                .map_err(|source| BootError::Memory { what: "initramfs", source })?;
            Some((addr, size))
        }
    };

    let e820 = layout::e820_map(mem_size)?;
    match loaded.mode {
        EntryMode::Pvh => {
            let mut info = hvm_start_info {
                magic: 0x336e_c578,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                rsdp_paddr: rsdp,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: e820.len() as u32,
                ..Default::default()
            };
            if let Some((paddr, size)) = initrd {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
                mem.write_obj(
                    hvm_modlist_entry { paddr, size, ..Default::default() },
                    GuestAddress(PVH_MODLIST_START),
                )
                .map_err(|source| BootError::Memory { what: "PVH module list", source })?;
            }
            for (i, e) in e820.iter().enumerate() {
                let entry =
                    hvm_memmap_table_entry { addr: e.addr, size: e.size, type_: e.kind as u32, reserved: 0 };
                mem.write_obj(entry, GuestAddress(PVH_MEMMAP_START + 24 * i as u64))
                    .map_err(|source| BootError::Memory { what: "PVH memory map", source })?;
            }
            mem.write_obj(info, GuestAddress(PVH_INFO_START))
                .map_err(|source| BootError::Memory { what: "PVH start info", source })?;
        }
        EntryMode::Linux64 => {
            let mut params = boot_params::default();
            if let Some(h) = loaded.setup_header {
                params.hdr = h;
            }
            params.hdr.boot_flag = 0xaa55;
            params.hdr.header = 0x5372_6448;
            params.hdr.type_of_loader = 0xff;
            params.hdr.kernel_alignment = 0x0100_0000;
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cfg.cmdline.len() as u32;
            if let Some((addr, size)) = initrd {
                params.hdr.ramdisk_image = addr as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            params.acpi_rsdp_addr = rsdp;
            if e820.len() > params.e820_table.len() {
                return Err(BootError::Cmdline("too many e820 entries".into()));
            }
            for (i, e) in e820.iter().enumerate() {
                params.e820_table[i] = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind as u32 };
            }
            params.e820_entries = e820.len() as u8;
            mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
                .map_err(|source| BootError::Memory { what: "zero page", source })?;
        }
    }
    Ok(BootInfo { mode: loaded.mode, entry: loaded.entry, how: loaded.how })
}

#[cfg(test)]
mod boot_path_tests {
    use super::*;

    #[test]
    fn boot_path_parses_and_an_unknown_name_is_named() {
        assert_eq!("pvh".parse::<BootPath>(), Ok(BootPath::Pvh));
        assert_eq!("bzimage".parse::<BootPath>(), Ok(BootPath::Linux64));
        let e = "uefi".parse::<BootPath>().unwrap_err();
        assert_eq!(e, UnknownBootPath { given: "uefi".into() });
        assert_eq!(e.to_string(), "unknown boot path \"uefi\" (expected auto, pvh or linux64)");
    }
}
