//! Raw images: virt-core's [`RawFile`] plus hole detection with `SEEK_DATA`/`SEEK_HOLE`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use virt_core::block::{BlockBackend, BlockError, RawFile};

use super::detect::ImageFormat;
use super::{DiskImage, Extent, ExtentKind, FormatError};

/// A raw image file (or block device).
#[derive(Debug)]
pub struct RawImage {
    inner: RawFile,
    /// A second descriptor for `lseek` hole queries and direct positional reads.
    file: File,
    path: PathBuf,
}

impl RawImage {
    /// Opens a raw image.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, FormatError> {
        let inner = RawFile::open(path, read_only)
            .map_err(|source| FormatError::Block { path: path.to_path_buf(), source })?;
        let file = File::open(path).map_err(|e| FormatError::io(path, "opening", e))?;
        Ok(Self { inner, file, path: path.to_path_buf() })
    }

    /// The file, for direct positional reads.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Result of one `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)` probe.
pub(crate) enum Seek {
    /// The offset found.
    At(u64),
    /// `ENXIO`: no data (or hole) at or after the offset.
    None,
    /// The file system (or device) does not support hole queries.
    Unsupported,
}

/// `lseek(fd, offset, whence)` for `SEEK_DATA`/`SEEK_HOLE`.
pub(crate) fn seek_probe(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Seek> {
    let Ok(off) = libc::off_t::try_from(offset) else { return Ok(Seek::None) };
    // SAFETY: lseek on a descriptor owned by `file`, with integer arguments; it touches no memory of
    // ours. The descriptor's file position is not used by anything else (all other I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        // r >= 0 was just checked, so the conversion is lossless.
        return Ok(Seek::At(r as u64));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(Seek::None),
        Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(Seek::Unsupported),
        _ => Err(e),
    }
}

/// The extent at `offset` of a file of `size` bytes, from hole queries.
pub(crate) fn file_extent(
    file: &File,
    path: &Path,
    size: u64,
    offset: u64,
    max_len: u64,
) -> Result<Extent, FormatError> {
    let end = size.min(offset.saturating_add(max_len));
    if offset >= end {
        return Ok(Extent { len: 0, kind: ExtentKind::Data });
    }
    let err = |e| FormatError::io(path, format!("looking for data at {offset}"), e);
    match seek_probe(file, offset, libc::SEEK_DATA).map_err(err)? {
        Seek::Unsupported => Ok(Extent { len: end - offset, kind: ExtentKind::Data }),
        Seek::None => Ok(Extent { len: end - offset, kind: ExtentKind::Zero }),
        Seek::At(d) if d > offset => Ok(Extent { len: d.min(end) - offset, kind: ExtentKind::Zero }),
        Seek::At(_) => {
            let hole = match seek_probe(file, offset, libc::SEEK_HOLE).map_err(err)? {
                Seek::At(h) => h.max(offset + 1),
                Seek::None | Seek::Unsupported => end,
            };
            Ok(Extent { len: hole.min(end) - offset, kind: ExtentKind::Data })
        }
    }
}

impl BlockBackend for RawImage {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        self.inner.discard(offset, len)
    }
    fn id(&self) -> String {
        self.inner.id()
    }
}

impl DiskImage for RawImage {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, FormatError> {
        file_extent(&self.file, &self.path, self.inner.size(), offset, max_len)
    }
}
