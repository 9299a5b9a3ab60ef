//! Converting a qcow2 image while it downloads.
//!
//! qcow2 needs random access to its tables, so a qcow2 download is spooled to a scratch file. When
//! the stream is the image itself (not compressed) and its length is known, the conversion does
//! not wait for the whole download: the image is opened on a [`GrowingFile`], whose reads wait
//! until the download has passed the bytes they ask for. Images written by `qemu-img` keep each L2
//! table ahead of its data, so the conversion follows the download closely; an image laid out
//! otherwise only makes the conversion wait longer (at worst until the download ends, which is what
//! spooling first costs anyway).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::format::io::ImageFile;

/// A read waited for bytes a failed download never wrote (the download's error is the source,
/// shared by every waiting reader).
#[derive(Debug, thiserror::Error)]
#[error("the download failed: {0}")]
struct DownloadFailed(#[source] Arc<io::Error>);

/// How far the download got.
#[derive(Debug, Default)]
struct State {
    /// Bytes of the file written so far (a prefix: the download writes in order).
    written: u64,
    /// Set when the download ended: `Ok` at the end of the stream, `Err` with why it failed.
    done: Option<Result<(), Arc<io::Error>>>,
    /// Set when the reader side gave up (the conversion failed): the download stops.
    cancelled: bool,
}

/// Progress of a download into a scratch file, shared by the downloading thread and the readers.
#[derive(Debug, Default)]
pub(crate) struct Fill {
    state: Mutex<State>,
    moved: Condvar,
}

impl Fill {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain counters and flags, valid whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrote_to(&self, end: u64) {
        self.lock().written = end;
        self.moved.notify_all();
    }

    /// The download ended (`Err`: why it failed); wakes every waiting reader.
    pub(crate) fn finish(&self, r: Result<(), Arc<io::Error>>) {
        self.lock().done = Some(r);
        self.moved.notify_all();
    }

    /// The readers gave up: the download stops at its next buffer.
    pub(crate) fn cancel(&self) {
        self.lock().cancelled = true;
        self.moved.notify_all();
    }

    fn cancelled(&self) -> bool {
        self.lock().cancelled
    }
}

/// Copies `r` into `f` (new and empty) in 64 KiB writes, telling `fill` after every MiB. Stops
/// with an error when `fill` is cancelled. Returns the bytes copied.
pub(crate) fn download_into(r: &mut (dyn Read + Send), f: &File, fill: &Fill) -> io::Result<u64> {
    const PIECE: usize = 64 << 10;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        if fill.cancelled() {
            return Err(io::Error::other("stopped: the conversion failed"));
        }
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Ok(off);
        }
        // 64 KiB writes: small page-cache folios (see WRITE_PIECE in format/convert.rs).
        for (i, piece) in buf[..n].chunks(PIECE).enumerate() {
            FileExt::write_all_at(f, piece, off + (i * PIECE) as u64)?;
        }
        off += n as u64;
        fill.wrote_to(off);
    }
}

/// A read-only view of a file that a download is still writing: a read waits until the download
/// has passed the bytes asked for (or ended). Its length is the download's announced total.
pub(crate) struct GrowingFile<'a> {
    file: File,
    total: u64,
    fill: &'a Fill,
}

impl<'a> GrowingFile<'a> {
    /// `file` (a second handle on the scratch file) that will hold `total` bytes once `fill` ends.
    pub(crate) fn new(file: File, total: u64, fill: &'a Fill) -> Self {
        Self { file, total, fill }
    }

    /// Waits until bytes `..end` are in the file.
    fn wait_for(&self, end: u64) -> io::Result<()> {
        let end = end.min(self.total);
        let mut g = self.fill.lock();
        loop {
            if g.written >= end {
                return Ok(());
            }
            match &g.done {
                Some(Err(why)) => return Err(io::Error::other(DownloadFailed(why.clone()))),
                Some(Ok(())) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the download ended at byte {} of {}", g.written, self.total),
                    ))
                }
                None if g.cancelled => return Err(io::Error::other("the import was cancelled")),
                None => g = self.fill.moved.wait(g).unwrap_or_else(|e| e.into_inner()),
            }
        }
    }
}

impl ImageFile for GrowingFile<'_> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.total {
            return Ok(0);
        }
        self.wait_for(offset.saturating_add(buf.len() as u64))?;
        FileExt::read_at(&self.file, buf, offset)
    }
    fn write_all_at(&self, _: &[u8], offset: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("write at {offset} to a download")))
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.total)
    }
    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "resizing a download"))
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out `data` in small pieces, slowly, so reads must wait.
    struct Slow<'a>(&'a [u8], usize);
    impl Read for Slow<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Ok(0);
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
            let n = buf.len().min(100_000).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn reads_wait_for_the_download_and_see_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        let f = File::options().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let fill = Fill::default();
        let g = GrowingFile::new(f.try_clone().unwrap(), data.len() as u64, &fill);
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                let r = download_into(&mut Slow(&data, 0), &f, &fill).map_err(Arc::new);
                fill.finish(r.as_ref().map(|_| ()).map_err(Arc::clone));
                r
            });
            // The end first: waits for the whole download.
            let mut tail = vec![0u8; 1000];
            assert_eq!(g.read_at(&mut tail, 4_999_000).unwrap(), 1000);
            assert_eq!(tail, data[4_999_000..]);
            let mut head = vec![0u8; 4096];
            g.read_exact_at(&mut head, 1_000_000).unwrap();
            assert_eq!(head, data[1_000_000..1_004_096]);
            assert_eq!(g.read_at(&mut head, 5_000_000).unwrap(), 0);
            assert_eq!(h.join().unwrap().unwrap(), data.len() as u64);
        });
        assert_eq!(g.len().unwrap(), 5_000_000);
        assert!(g.write_all_at(b"x", 0).is_err());
    }

    #[test]
    fn a_short_or_failed_download_fails_the_waiting_reads() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("s")).unwrap();
        let fill = Fill::default();
        let g = GrowingFile::new(f.try_clone().unwrap(), 10 << 20, &fill);
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = download_into(&mut &[7u8; 3000][..], &f, &fill);
                fill.finish(r.map(|_| ()).map_err(Arc::new));
            });
            let e = g.read_exact_at(&mut [0u8; 10], 5 << 20).unwrap_err();
            assert!(e.to_string().contains("ended at byte 3000 of 10485760"), "{e}");
        });
        let fill = Fill::default();
        let g = GrowingFile::new(f.try_clone().unwrap(), 100, &fill);
        fill.finish(Err(Arc::new(io::Error::other("connection reset"))));
        assert!(g.read_exact_at(&mut [0u8; 10], 50).unwrap_err().to_string().contains("connection reset"));
        // A cancelled fill stops the download.
        let fill = Fill::default();
        fill.cancel();
        assert!(download_into(&mut &[1u8; 10][..], &f, &fill).is_err());
    }
}
