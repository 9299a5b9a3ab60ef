//! Positional I/O on the file that holds an image.
//!
//! The qcow2 code is generic over [`ImageFile`] so that the same parser runs on a real file and on an
//! in-memory buffer (fuzzing, property tests).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Positional reads and writes on the container of an image.
pub trait ImageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (short only at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`, growing the file if needed.
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Makes written data durable.
    fn sync(&self) -> io::Result<()>;
    /// Deallocates a byte range (reads return zeros afterwards); the length stays. Best effort: the
    /// default does nothing.
    fn punch_hole(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes at `offset`; the part past end of file is zero-filled and the
    /// number of bytes that came from the file is returned.
    fn read_zero_padded(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let Some(off) = offset.checked_add(done as u64) else { break };
            match self.read_at(&mut buf[done..], off) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf[done..].fill(0);
        Ok(done)
    }

    /// Reads exactly `buf.len()` bytes at `offset`; end of file first is an `UnexpectedEof` error.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let n = self.read_zero_padded(buf, offset)?;
        if n < buf.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "unexpected end of file"));
        }
        Ok(())
    }
}

impl ImageFile for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(self, buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        let meta = self.metadata()?;
        if meta.len() == 0 && !meta.is_file() {
            // Block devices report 0; ask for their end.
            use std::io::{Seek, SeekFrom};
            let mut f = self;
            return f.seek(SeekFrom::End(0));
        }
        Ok(meta.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(l)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "range too large"));
        };
        // SAFETY: fallocate on a descriptor owned by `self`, with integer arguments; it touches no
        // memory of ours.
        let rc = unsafe {
            libc::fallocate(self.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, l)
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // File systems without hole punching: the range simply stays allocated.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(e);
        }
        Ok(())
    }
}

/// An image file held in memory, bounded in size: the container for fuzzing and property tests.
#[derive(Debug)]
pub struct MemFile {
    data: Mutex<Vec<u8>>,
    max_len: u64,
}

impl MemFile {
    /// A memory file holding `data` that may grow up to `max_len` bytes.
    pub fn new(data: Vec<u8>, max_len: u64) -> Self {
        Self { data: Mutex::new(data), max_len }
    }
    /// A copy of the bytes.
    pub fn contents(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means another thread panicked mid-copy; the bytes are still usable.
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn grow_to(&self, d: &mut Vec<u8>, end: u64) -> io::Result<()> {
        if end > self.max_len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("memory file limited to {} bytes", self.max_len),
            ));
        }
        let end = usize::try_from(end).map_err(io::Error::other)?;
        if d.len() < end {
            d.resize(end, 0);
        }
        Ok(())
    }
}

impl ImageFile for MemFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let d = self.lock();
        let Ok(off) = usize::try_from(offset) else { return Ok(0) };
        if off >= d.len() {
            return Ok(0);
        }
        let n = buf.len().min(d.len() - off);
        buf[..n].copy_from_slice(&d[off..off + n]);
        Ok(n)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.lock();
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "offset overflow"))?;
        self.grow_to(&mut d, end)?;
        // grow_to made d at least `end` bytes long and `end` fits usize.
        let off = offset as usize;
        d[off..off + buf.len()].copy_from_slice(buf);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        self.grow_to(&mut d, len)?;
        // grow_to checked that len fits usize.
        d.truncate(len as usize);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut d = self.lock();
        let len_now = d.len() as u64;
        let start = offset.min(len_now);
        let end = offset.saturating_add(len).min(len_now);
        // Both are at most the current length, which fits usize.
        d[start as usize..end as usize].fill(0);
        Ok(())
    }
}

impl<T: ImageFile + ?Sized> ImageFile for std::sync::Arc<T> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_all_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn sync(&self) -> io::Result<()> {
        (**self).sync()
    }
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        (**self).punch_hole(offset, len)
    }
}

/// Whether `b` is all zero bytes (vectorises; fast on both zero and random data).
pub fn is_zero(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for c in &mut chunks {
        if c.iter().fold(0u8, |a, &x| a | x) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&x| x == 0)
}

/// Calls `write(offset, run)` for each run of `buf` (placed at `offset`) that is not all zeros, judged
/// in `granule`-byte pieces aligned to absolute offsets; returns the bytes passed to `write`.
pub fn for_each_nonzero_run<E>(
    buf: &[u8],
    offset: u64,
    granule: u64,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), E>,
) -> Result<u64, E> {
    let mut written = 0u64;
    let mut run: Option<usize> = None;
    let mut pos = 0usize;
    while pos < buf.len() {
        let abs = offset + pos as u64;
        // Next granule boundary, at most `granule` bytes away, so it fits usize.
        let next = ((abs / granule + 1) * granule - abs).min((buf.len() - pos) as u64) as usize;
        let piece = &buf[pos..pos + next];
        if is_zero(piece) {
            if let Some(s) = run.take() {
                write(offset + s as u64, &buf[s..pos])?;
                written += (pos - s) as u64;
            }
        } else if run.is_none() {
            run = Some(pos);
        }
        pos += next;
    }
    if let Some(s) = run {
        write(offset + s as u64, &buf[s..])?;
        written += (buf.len() - s) as u64;
    }
    Ok(written)
}
