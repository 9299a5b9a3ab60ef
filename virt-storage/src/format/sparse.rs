//! Host-assisted copies of sparse raw files: only the data extents (found with `SEEK_DATA` /
//! `SEEK_HOLE`) are read, and only their non-zero parts are written.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::io::for_each_nonzero_run;
use super::raw::{seek_probe, Seek};
use super::FormatError;

/// Granularity of zero detection inside data extents.
const ZERO_GRANULE: u64 = 4096;
/// Copy buffer size.
const BUF: usize = 8 << 20;

/// What [`sparse_copy`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SparseCopyStats {
    /// Size of the file in bytes.
    pub size: u64,
    /// Bytes actually read from the source (the data extents).
    pub bytes_read: u64,
    /// Bytes written to the destination (data that was not zero).
    pub bytes_written: u64,
    /// Data extents the file system reported.
    pub data_extents: u64,
}

/// Copies the regular file `src` to `dst` (created or truncated), keeping holes: data extents are
/// found with `SEEK_DATA`/`SEEK_HOLE` and copied with `pread`/`pwrite`; zero blocks inside them are
/// skipped too. On file systems without hole queries the whole file counts as one data extent.
pub fn sparse_copy(src: &Path, dst: &Path) -> Result<SparseCopyStats, FormatError> {
    let s = File::open(src).map_err(|e| FormatError::io(src, "opening", e))?;
    let size = s.metadata().map_err(|e| FormatError::io(src, "getting size", e))?.len();
    let d = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)
        .map_err(|e| FormatError::io(dst, "creating", e))?;
    d.set_len(size).map_err(|e| FormatError::io(dst, "setting size", e))?;
    let mut st = SparseCopyStats { size, ..Default::default() };
    let mut buf = vec![0u8; BUF];
    let mut off = 0u64;
    while off < size {
        let err = |e| FormatError::io(src, format!("looking for data at {off}"), e);
        let (start, end) = match seek_probe(&s, off, libc::SEEK_DATA).map_err(err)? {
            Seek::None => break,
            Seek::Unsupported => (off, size),
            Seek::At(d) => {
                let h = match seek_probe(&s, d, libc::SEEK_HOLE).map_err(err)? {
                    Seek::At(h) => h,
                    Seek::None | Seek::Unsupported => size,
                };
                (d, h.min(size))
            }
        };
        if start >= size {
            break;
        }
        st.data_extents += 1;
        let mut p = start;
        while p < end {
            let n = (end - p).min(BUF as u64) as usize;
            let b = &mut buf[..n];
            s.read_exact_at(b, p).map_err(|e| FormatError::io(src, format!("reading at {p}"), e))?;
            st.bytes_read += n as u64;
            st.bytes_written += for_each_nonzero_run(b, p, ZERO_GRANULE, |o, run| {
                d.write_all_at(run, o).map_err(|e| FormatError::io(dst, format!("writing at {o}"), e))
            })?;
            p += n as u64;
        }
        off = end.max(start + 1);
    }
    d.sync_data().map_err(|e| FormatError::io(dst, "syncing", e))?;
    Ok(st)
}

/// How [`clone_file`] made its copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileCloneKind {
    /// `FICLONE`: the destination shares all of the source's blocks (XFS, btrfs; same mount).
    Reflink,
    /// `copy_file_range` of each data extent, and the file system shared the blocks instead of
    /// copying them (XFS, btrfs: the kernel reflinks ranges across mounts of one file system).
    RangeReflink,
    /// `copy_file_range` of each data extent, copied inside the kernel (ext4 and others).
    KernelCopy,
    /// `pread`/`pwrite` of the non-zero parts of the data extents ([`sparse_copy`]).
    Copy,
}

impl FileCloneKind {
    /// Whether the clone shares the source's blocks (instant, no data written).
    pub fn shares_blocks(self) -> bool {
        matches!(self, Self::Reflink | Self::RangeReflink)
    }
}

impl std::fmt::Display for FileCloneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reflink => "reflink",
            Self::RangeReflink => "reflink (copy_file_range)",
            Self::KernelCopy => "sparse copy (copy_file_range)",
            Self::Copy => "sparse copy",
        })
    }
}

/// What [`clone_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileClone {
    /// How.
    pub kind: FileCloneKind,
    /// The file's size.
    pub size: u64,
    /// Bytes in the source's data extents (what a copy moves; a reflink shares them).
    pub data_bytes: u64,
    /// Why `FICLONE` was not used, when it was not (the kernel's answer).
    pub reflink_error: Option<String>,
}

/// Clones the regular file `src` to `dst` (created; it must not exist) as cheaply as the file
/// system allows, holes kept: `FICLONE` (shares every block), else `copy_file_range` of each data
/// extent (`SEEK_DATA`/`SEEK_HOLE`), which XFS and btrfs turn into shared blocks even between
/// two mounts of the file system and others copy inside the kernel, else [`sparse_copy`]. The
/// result is independent of `src`: writes to either never show in the other.
pub fn clone_file(src: &Path, dst: &Path) -> Result<FileClone, FormatError> {
    let s = File::open(src).map_err(|e| FormatError::io(src, "opening", e))?;
    let size = s.metadata().map_err(|e| FormatError::io(src, "getting size", e))?.len();
    let d = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| FormatError::io(dst, "creating", e))?;
    let extents = data_extents(&s, src, size)?;
    let data_bytes = extents.iter().map(|(a, b)| b - a).sum();
    let reflink_error = match crate::volume::reflink::reflink(&s, &d) {
        Ok(()) => {
            return Ok(FileClone { kind: FileCloneKind::Reflink, size, data_bytes, reflink_error: None });
        }
        Err(e) => e.to_string(),
    };
    d.set_len(size).map_err(|e| FormatError::io(dst, "setting size", e))?;
    let mut kind = FileCloneKind::KernelCopy;
    'extents: for &(start, end) in &extents {
        let mut p = start;
        while p < end {
            match copy_range(&s, &d, p, end - p) {
                Ok(0) => return Err(FormatError::io(src, format!("copying at {p}"), short_copy())),
                Ok(n) => p += n,
                // No in-kernel copy between these files (another file system, an old kernel):
                // copy through user space; nothing was written yet unless this is a later
                // extent, and sparse_copy rewrites the whole file.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
                    ) =>
                {
                    kind = FileCloneKind::Copy;
                    break 'extents;
                }
                Err(e) => return Err(FormatError::io(dst, format!("copy_file_range at {p}"), e)),
            }
        }
    }
    if kind == FileCloneKind::Copy {
        drop(d);
        sparse_copy(src, dst)?;
    } else {
        d.sync_data().map_err(|e| FormatError::io(dst, "syncing", e))?;
        if data_bytes > 0 && shares_blocks(&d) {
            kind = FileCloneKind::RangeReflink;
        }
    }
    Ok(FileClone { kind, size, data_bytes, reflink_error: Some(reflink_error) })
}

fn short_copy() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "copy_file_range copied nothing")
}

/// The data extents of `f` (`[start, end)`), the whole file where holes cannot be asked for.
fn data_extents(f: &File, path: &Path, size: u64) -> Result<Vec<(u64, u64)>, FormatError> {
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let err = |e| FormatError::io(path, format!("looking for data at {off}"), e);
        let (start, end) = match seek_probe(f, off, libc::SEEK_DATA).map_err(err)? {
            Seek::None => break,
            Seek::Unsupported => (off, size),
            Seek::At(d) => match seek_probe(f, d, libc::SEEK_HOLE).map_err(err)? {
                Seek::At(h) => (d, h.min(size)),
                Seek::None | Seek::Unsupported => (d, size),
            },
        };
        if start >= size {
            break;
        }
        out.push((start, end));
        off = end.max(start + 1);
    }
    Ok(out)
}

/// One `copy_file_range` of up to `len` bytes at `off` in both files.
fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut off_in = off as libc::loff_t;
    let mut off_out = off as libc::loff_t;
    let len = len.min(1 << 30) as usize;
    // SAFETY: both descriptors are open files borrowed for the call; the offsets are valid
    // pointers to locals the kernel reads and updates; no memory of ours is otherwise touched.
    let n =
        unsafe { libc::copy_file_range(src.as_raw_fd(), &mut off_in, dst.as_raw_fd(), &mut off_out, len, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as u64)
}

/// `struct fiemap` with room for some extents.
#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; 32],
}

/// `struct fiemap_extent`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

/// `FS_IOC_FIEMAP` = `_IOWR('f', 11, struct fiemap)` (the header is 32 bytes).
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
/// `FIEMAP_EXTENT_SHARED`: the extent's blocks belong to another file too.
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;

/// Whether the file system reports any of `f`'s first extents as shared with another file.
fn shares_blocks(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    let mut map = Fiemap {
        start: 0,
        length: u64::MAX,
        flags: 0,
        mapped_extents: 0,
        extent_count: 32,
        reserved: 0,
        extents: [FiemapExtent::default(); 32],
    };
    // SAFETY: FS_IOC_FIEMAP reads the header and writes at most `extent_count` extents into the
    // `#[repr(C)]` buffer, which has room for exactly that many; the descriptor is open.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FIEMAP as _, &mut map as *mut Fiemap) };
    rc == 0
        && map.extents[..(map.mapped_extents as usize).min(32)]
            .iter()
            .any(|e| e.flags & FIEMAP_EXTENT_SHARED != 0)
}

#[cfg(test)]
mod clone_tests {
    use super::*;

    #[test]
    fn a_clone_has_the_same_bytes_keeps_holes_and_is_independent() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src.img"), dir.path().join("dst.img"));
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"MARKER", 0).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 32 << 20).unwrap();
        drop(f);
        let c = clone_file(&src, &dst).unwrap();
        assert_eq!(c.size, 64 << 20);
        assert!(c.data_bytes >= (1 << 20) && c.data_bytes < (8 << 20), "{c:?}");
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < 8 << 20, "holes kept ({c:?})");
        OpenOptions::new().write(true).open(&dst).unwrap().write_all_at(b"CHANGED", 0).unwrap();
        assert_eq!(&std::fs::read(&src).unwrap()[..6], b"MARKER", "the source is untouched");
        assert!(clone_file(&src, &dst).is_err(), "an existing destination is refused");
    }
}
