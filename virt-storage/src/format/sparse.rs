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
