//! Disk formats: raw and qcow2 images, format detection, conversion and sparse copies.
//!
//! * [`raw`]: plain images (virt-core's [`RawFile`](virt_core::block::RawFile)) with hole detection.
//! * [`qcow2`]: qcow2 v2/v3 images, read and write, with backing chains, zero and compressed clusters.
//! * [`detect`]: sniffing a file's format (raw, qcow2, vmdk, vhd, vhdx, iso, gzip, xz, zstd, ...).
//! * [`convert`](mod@convert): any supported source (also gzip/xz/zstd streams) to raw or qcow2.
//! * [`sparse`]: host-assisted copies of sparse raw files with `SEEK_DATA`/`SEEK_HOLE`.
//!
//! Every image type implements [`DiskImage`], which adds extent queries (where is data, where are
//! zeros) to the [`BlockBackend`] seam the VMM uses.

pub mod convert;
pub mod detect;
pub mod fuzzing;
pub mod io;
mod open;
pub mod qcow2;
pub mod raw;
pub mod sparse;

use std::path::{Path, PathBuf};

use virt_core::block::{BlockBackend, BlockError};

pub use convert::{convert, ConvertOptions, ConvertStats, OutputFormat};
pub use detect::{detect_bytes, detect_path, ImageFormat};
pub use open::{disk_opener, open_disk};
pub use qcow2::{BackingPolicy, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
pub use raw::RawImage;
pub use sparse::{sparse_copy, SparseCopyStats};

/// Errors of the disk-format code. Every message names the file and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// An I/O error while doing `op` on `path`.
    #[error("{path}: {op}: {source}")]
    Io {
        /// File being accessed.
        path: PathBuf,
        /// What was being done ("reading L2 table at 0x30000").
        op: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The qcow2 header is malformed or outside the limits this implementation accepts.
    #[error("qcow2 header of {path}: {msg}")]
    Header {
        /// Image path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Image metadata (tables, refcounts) is inconsistent.
    #[error("qcow2 image {path} is corrupt: {msg}")]
    Corrupt {
        /// Image path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The file is in a format this crate does not handle (vmdk, vhd, ...).
    #[error("{path}: unsupported format {format}")]
    UnsupportedFormat {
        /// File path.
        path: PathBuf,
        /// Name of the detected format.
        format: String,
    },
    /// The image uses a feature this crate does not implement.
    #[error("{path}: unsupported {what}")]
    Unsupported {
        /// Image path.
        path: PathBuf,
        /// The feature.
        what: String,
    },
    /// The backing chain could not be opened.
    #[error("backing file of {path}: {msg}")]
    Backing {
        /// Image whose backing file failed.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A read or write beyond the virtual disk size.
    #[error("{path}: access at offset {offset} length {len} is beyond the disk size {size}")]
    OutOfRange {
        /// Image path.
        path: PathBuf,
        /// Offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Virtual disk size.
        size: u64,
    },
    /// A write to an image opened read-only.
    #[error("{path} is opened read-only")]
    ReadOnly {
        /// Image path.
        path: PathBuf,
    },
    /// An invalid request (bad create options, shrinking, ...).
    #[error("{path}: {msg}")]
    Invalid {
        /// Image path.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// An error from another block backend (a backing file that is not one of ours, for example).
    #[error("{path}: {source}")]
    Block {
        /// Image path.
        path: PathBuf,
        /// Underlying error.
        source: BlockError,
    },
}

impl FormatError {
    pub(crate) fn io(path: &Path, op: impl Into<String>, source: std::io::Error) -> Self {
        FormatError::Io { path: path.to_path_buf(), op: op.into(), source }
    }
}

impl From<FormatError> for BlockError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::OutOfRange { offset, len, size, .. } => BlockError::OutOfRange { offset, len, size },
            FormatError::ReadOnly { .. } => BlockError::ReadOnly,
            FormatError::Block { source, .. } => source,
            other => BlockError::Backend(other.to_string()),
        }
    }
}

/// What a range of a disk holds, as far as the image metadata tells without reading data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data that must be read (it may still happen to be zeros).
    Data,
    /// Reads as zeros (holes, unallocated clusters without backing, qcow2 zero clusters).
    Zero,
}

/// A run of bytes from a queried offset that all have the same [`ExtentKind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes (at least 1 unless the query was at the end of the disk).
    pub len: u64,
    /// What the run holds.
    pub kind: ExtentKind,
}

/// A disk image: a [`BlockBackend`] that can also tell where its data is.
pub trait DiskImage: BlockBackend {
    /// The image's format.
    fn format(&self) -> ImageFormat;
    /// The file the image lives in (a made-up name for in-memory images).
    fn path(&self) -> &Path;
    /// The extent starting at `offset`, at most `max_len` bytes long and not past the disk's end.
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, FormatError>;
}

/// Adapts any [`BlockBackend`] (for example a `MemDisk`) to [`DiskImage`], reporting all of it as data.
pub struct PlainBackend<B: BlockBackend> {
    inner: B,
    name: PathBuf,
}

impl<B: BlockBackend> PlainBackend<B> {
    /// Wraps `inner`, naming it `name` in errors.
    pub fn new(inner: B, name: impl Into<PathBuf>) -> Self {
        Self { inner, name: name.into() }
    }
}

impl<B: BlockBackend> BlockBackend for PlainBackend<B> {
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

impl<B: BlockBackend> DiskImage for PlainBackend<B> {
    fn format(&self) -> ImageFormat {
        ImageFormat::Raw
    }
    fn path(&self) -> &Path {
        &self.name
    }
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, FormatError> {
        let len = self.size().saturating_sub(offset).min(max_len);
        Ok(Extent { len, kind: ExtentKind::Data })
    }
}

/// Opens an image of a supported format (raw, iso, qcow2 with its backing chain), detecting the format.
///
/// Compressed streams (gzip, xz, zstd) and foreign formats (vmdk, vhd, vhdx) give
/// [`FormatError::UnsupportedFormat`]; compressed streams can be imported with [`convert()`].
pub fn open_image(path: &Path, read_only: bool) -> Result<Box<dyn DiskImage>, FormatError> {
    open_image_as(path, detect_path(path)?, read_only, 0)
}

/// Opens `path` as `format`; `depth` is the position in a backing chain (0 for the top image).
pub(crate) fn open_image_as(
    path: &Path,
    format: ImageFormat,
    read_only: bool,
    depth: u32,
) -> Result<Box<dyn DiskImage>, FormatError> {
    match format {
        ImageFormat::Raw | ImageFormat::Iso9660 => Ok(Box::new(RawImage::open(path, read_only)?)),
        ImageFormat::Qcow2 => {
            let opts = Qcow2OpenOptions { read_only, ..Default::default() };
            Ok(Box::new(Qcow2::open_with_depth(path, &opts, depth)?))
        }
        other => {
            Err(FormatError::UnsupportedFormat { path: path.to_path_buf(), format: other.name().into() })
        }
    }
}
