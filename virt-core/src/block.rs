//! The block-backend seam: what virtio-blk needs from a disk.
//!
//! The native VMM's virtio-blk device talks to a [`BlockBackend`]; it never knows whether the bytes live
//! in a raw file, a qcow2 image or somewhere else. [`RawFile`] is the backend for plain files and block
//! devices; `virt-storage` adds qcow2 and friends behind the same trait.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Errors of block backends.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image could not be opened.
    #[error("cannot open disk {path}: {source}")]
    Open {
        /// Path that was opened.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A read or write reached past the end of the disk.
    #[error("access at offset {offset} length {len} is beyond the disk size {size}")]
    OutOfRange {
        /// Byte offset requested.
        offset: u64,
        /// Length requested.
        len: u64,
        /// Size of the disk in bytes.
        size: u64,
    },
    /// A write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// An I/O error from the backing store.
    #[error("I/O error on disk at offset {offset}: {source}")]
    Io {
        /// Byte offset of the failed request.
        offset: u64,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The operation is not supported by this backend.
    #[error("operation not supported by this disk backend: {0}")]
    Unsupported(&'static str),
    /// A format-specific error (for example a corrupt image) reported by a backend in another crate.
    #[error("{0}")]
    Backend(String),
}

/// A virtual disk as virtio-blk sees it: byte-addressed reads and writes, flush and discard.
///
/// Implementations must be safe to call from a device thread; `&self` methods allow backends with
/// internal locking (qcow2 metadata) to serve concurrent queues later.
pub trait BlockBackend: Send + Sync {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused.
    fn read_only(&self) -> bool;
    /// Reads `buf.len()` bytes at `offset`. Reads past the end are an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError>;
    /// Writes `buf` at `offset`. Writes past the end are an error.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError>;
    /// Makes all completed writes durable.
    fn flush(&self) -> Result<(), BlockError>;
    /// Tells the backend that a range is no longer used (it may punch a hole).
    fn discard(&self, _offset: u64, _len: u64) -> Result<(), BlockError> {
        Err(BlockError::Unsupported("discard"))
    }
    /// A stable identifier for the disk (virtio-blk's GET_ID, at most 20 bytes are used).
    fn id(&self) -> String;
}

fn check_range(offset: u64, len: usize, size: u64) -> Result<(), BlockError> {
    let len = len as u64;
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BlockError::OutOfRange { offset, len, size }),
    }
}

/// A raw disk image: a regular file or a block device, byte for byte the guest's disk.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    size: u64,
    read_only: bool,
    id: String,
}

impl RawFile {
    /// Opens a raw image read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, BlockError> {
        let open_err = |source| BlockError::Open { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(!read_only).open(path).map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(std::io::Error::other("is a directory")));
        }
        // Block devices report 0 in metadata; ask for their end instead.
        let size = if meta.len() == 0 {
            use std::io::{Seek, SeekFrom};
            let mut f = &file;
            f.seek(SeekFrom::End(0)).map_err(open_err)?
        } else {
            meta.len()
        };
        let id = serial_from_path(path, &meta);
        Ok(Self { file, size, read_only, id })
    }
}

/// A short, stable disk serial derived from the file's identity (device and inode), like QEMU's default
/// of no serial but stable across runs of the same file.
fn serial_from_path(path: &Path, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("disk");
    let mut s: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(12).collect();
    if s.is_empty() {
        s.push_str("disk");
    }
    format!("{s}-{:x}", meta.ino() & 0xff_ffff)
}

impl BlockBackend for RawFile {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_range(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset).map_err(|source| BlockError::Io { offset, source })
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, buf.len(), self.size)?;
        self.file.write_all_at(buf, offset).map_err(|source| BlockError::Io { offset, source })
    }
    fn flush(&self) -> Result<(), BlockError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| BlockError::Io { offset: 0, source })
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        check_range(offset, usize::try_from(len).unwrap_or(usize::MAX), self.size)?;
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(BlockError::OutOfRange { offset, len, size: self.size });
        };
        // SAFETY: fallocate on a file descriptor we own, with plain integer arguments; it does not touch
        // our memory.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc != 0 {
            return Err(BlockError::Io { offset, source: std::io::Error::last_os_error() });
        }
        Ok(())
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

/// A disk held in memory: the test double for [`BlockBackend`].
#[derive(Debug)]
pub struct MemDisk {
    data: std::sync::Mutex<Vec<u8>>,
    read_only: bool,
    flushes: std::sync::atomic::AtomicU64,
}

impl MemDisk {
    /// A zero-filled disk of `size` bytes.
    pub fn new(size: usize, read_only: bool) -> Self {
        Self::from_bytes(vec![0; size], read_only)
    }
    /// A disk holding `data`.
    pub fn from_bytes(data: Vec<u8>, read_only: bool) -> Self {
        Self { data: std::sync::Mutex::new(data), read_only, flushes: Default::default() }
    }
    /// A copy of the disk's contents.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }
    /// How many times `flush` was called.
    pub fn flush_count(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means another thread panicked mid-copy; the bytes are still usable.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BlockBackend for MemDisk {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        let d = self.lock();
        check_range(offset, buf.len(), d.len() as u64)?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut d = self.lock();
        check_range(offset, buf.len(), d.len() as u64)?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&self) -> Result<(), BlockError> {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn id(&self) -> String {
        "memdisk".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_file_reads_writes_and_refuses_out_of_range() {
        let dir = std::env::temp_dir().join(format!("rawfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("d.img");
        std::fs::write(&p, vec![7u8; 4096]).unwrap();
        let d = RawFile::open(&p, false).unwrap();
        assert_eq!(d.size(), 4096);
        d.write_at(512, b"hello").unwrap();
        let mut b = [0u8; 5];
        d.read_at(512, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(matches!(d.read_at(4095, &mut b), Err(BlockError::OutOfRange { .. })));
        assert!(matches!(d.write_at(u64::MAX, b"x"), Err(BlockError::OutOfRange { .. })));
        let ro = RawFile::open(&p, true).unwrap();
        assert!(matches!(ro.write_at(0, b"x"), Err(BlockError::ReadOnly)));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn raw_file_missing_path_names_it() {
        let e = RawFile::open(Path::new("/nonexistent/disk.img"), true).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/disk.img"), "{e}");
    }
}
