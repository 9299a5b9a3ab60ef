//! Resuming a blob download after a dropped connection: the rest is asked for with
//! `Range: bytes=N-`, so an interrupted layer continues where it stopped instead of starting
//! over. The digest check stays where it was ([`BlobReader`](super::extract::BlobReader) above
//! this reader hashes every byte it hands out, across resumes), so a resumed blob is verified
//! whole.

use std::io::{self, Read};
use std::time::Duration;

use super::RegistryError;

/// A (re)opened blob body.
pub(crate) struct Reopened {
    /// The body.
    pub(crate) reader: Box<dyn Read + Send>,
    /// The blob offset of the body's first byte: the offset asked for when the registry honoured
    /// the `Range` header (206), 0 when it answered with the whole blob (200).
    pub(crate) start: u64,
}

/// Opens the blob at an offset (`0`: the whole blob, no `Range` header).
pub(crate) type Opener = Box<dyn FnMut(u64) -> Result<Reopened, RegistryError> + Send>;

/// A blob body that reopens itself at the current offset when a read fails or the body ends
/// before `size` bytes, up to `max_retries` times in a row without progress.
pub(crate) struct ResumingBlob {
    open: Opener,
    inner: Box<dyn Read + Send>,
    /// Bytes handed out so far (blob offset of the next byte).
    offset: u64,
    /// The blob's size from its descriptor.
    size: u64,
    max_retries: u32,
    retries_left: u32,
    /// Times the body was reopened.
    resumes: u64,
    /// "blob sha256:..." for messages.
    what: String,
    /// Pause before the n-th retry in a row is n times this.
    backoff: Duration,
}

/// Retries in a row (without a byte of progress) before a blob download fails.
pub(crate) const MAX_RETRIES: u32 = 5;

impl ResumingBlob {
    /// Opens the blob (`size` bytes, named `what` in messages) from its start.
    pub(crate) fn new(mut open: Opener, size: u64, what: String) -> Result<Self, RegistryError> {
        // Offset 0 sends no `Range` header, so the body starts at the blob's start.
        let first = open(0)?;
        Ok(Self {
            open,
            inner: first.reader,
            offset: 0,
            size,
            max_retries: MAX_RETRIES,
            retries_left: MAX_RETRIES,
            resumes: 0,
            what,
            backoff: Duration::from_millis(100),
        })
    }

    /// How many times the download was resumed.
    #[cfg(test)]
    pub(crate) fn resumes(&self) -> u64 {
        self.resumes
    }

    #[cfg(test)]
    fn with_backoff(mut self, d: Duration) -> Self {
        self.backoff = d;
        self
    }

    fn reopen(&mut self, cause: io::Error) -> io::Result<()> {
        if self.retries_left == 0 {
            return Err(io::Error::new(
                cause.kind(),
                format!(
                    "{} failed at byte {} of {} after {} retries: {cause}",
                    self.what, self.offset, self.size, self.max_retries
                ),
            ));
        }
        self.retries_left -= 1;
        let attempt = self.max_retries - self.retries_left;
        log::warn!("{}: {cause}; resuming at byte {} of {}", self.what, self.offset, self.size);
        std::thread::sleep(self.backoff * attempt);
        let o = (self.open)(self.offset).map_err(|e| io::Error::other(e.to_string()))?;
        if o.start > self.offset {
            return Err(io::Error::other(format!(
                "{}: asked for the rest from byte {}, the registry answered from byte {}",
                self.what, self.offset, o.start
            )));
        }
        let mut reader = o.reader;
        // A registry that ignores `Range` sends the whole blob again: skip what was handed out.
        // Those bytes were hashed the first time; the digest check covers exactly the bytes
        // handed out, so the blob is still verified whole.
        let skip = self.offset - o.start;
        if skip > 0 {
            let skipped = io::copy(&mut (&mut reader).take(skip), &mut io::sink())?;
            if skipped < skip {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{}: the restarted download ended at byte {skipped} of {skip}", self.what),
                ));
            }
        }
        self.inner = reader;
        self.resumes += 1;
        Ok(())
    }
}

impl Read for ResumingBlob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.inner.read(buf) {
                // A body cut short looks like its end: resume if the size says there is more.
                Ok(0) if self.offset < self.size => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the body ended at byte {} of {}", self.offset, self.size),
                    );
                    self.reopen(e)?;
                }
                Ok(0) => return Ok(0),
                Ok(n) => {
                    self.offset += n as u64;
                    self.retries_left = self.max_retries;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => self.reopen(e)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Hands out `data[start..]`, failing with a reset after `cut` bytes while cuts are left.
    struct Flaky {
        data: Arc<Vec<u8>>,
        pos: usize,
        cut_at: Option<usize>,
    }

    impl Read for Flaky {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.cut_at == Some(self.pos) {
                return Err(io::Error::new(io::ErrorKind::ConnectionReset, "connection reset"));
            }
            let end = self.cut_at.unwrap_or(self.data.len()).min(self.data.len());
            let n = buf.len().min(end - self.pos).min(1000);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    /// An opener over `data` that cuts each of the first `cuts` bodies `every` bytes in,
    /// honours ranges unless `ignore_ranges`, and logs the offsets asked for.
    fn opener(
        data: Vec<u8>,
        cuts: usize,
        every: usize,
        ignore_ranges: bool,
    ) -> (Opener, Arc<Mutex<Vec<u64>>>) {
        let data = Arc::new(data);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let mut left = cuts;
        let open = move |off: u64| {
            log.lock().unwrap().push(off);
            let start = if ignore_ranges { 0 } else { off as usize };
            let cut_at = (left > 0).then(|| start + every);
            left = left.saturating_sub(1);
            Ok(Reopened {
                reader: Box::new(Flaky { data: data.clone(), pos: start, cut_at }) as Box<dyn Read + Send>,
                start: start as u64,
            })
        };
        (Box::new(open), asked)
    }

    fn data() -> Vec<u8> {
        (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn resumes_with_ranges_where_it_stopped() {
        let (open, asked) = opener(data(), 3, 30_000, false);
        let mut r = ResumingBlob::new(open, 100_000, "blob t".into()).unwrap().with_backoff(Duration::ZERO);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data());
        assert_eq!(r.resumes(), 3);
        assert_eq!(*asked.lock().unwrap(), vec![0, 30_000, 60_000, 90_000]);
    }

    #[test]
    fn a_registry_ignoring_ranges_is_read_again_and_skipped() {
        let (open, asked) = opener(data(), 2, 40_000, true);
        let mut r = ResumingBlob::new(open, 100_000, "blob t".into()).unwrap().with_backoff(Duration::ZERO);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, data());
        assert_eq!(*asked.lock().unwrap(), vec![0, 40_000, 40_000]);
    }

    #[test]
    fn gives_up_after_the_retries_naming_the_blob_and_offset() {
        // Every body breaks at the same place: no progress, so the retries run out.
        let d = Arc::new(data());
        let open = move |off: u64| {
            Ok(Reopened {
                reader: Box::new(Flaky { data: d.clone(), pos: off as usize, cut_at: Some(50_000) })
                    as Box<dyn Read + Send>,
                start: off,
            })
        };
        let mut r = ResumingBlob::new(Box::new(open), 100_000, "blob sha256:ab".into())
            .unwrap()
            .with_backoff(Duration::ZERO);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        let m = e.to_string();
        assert!(m.contains("blob sha256:ab failed at byte 50000 of 100000 after 5 retries"), "{m}");
    }

    #[test]
    fn a_short_body_resumes_and_a_reopen_failure_is_reported() {
        // The first body ends early without an error (a proxy closing cleanly).
        let d = Arc::new(data());
        let mut first = true;
        let open = move |off: u64| {
            if !first {
                return Err(RegistryError::Config("registry gone".into()));
            }
            first = false;
            Ok(Reopened {
                reader: Box::new(io::Cursor::new(d[..10].to_vec())) as Box<dyn Read + Send>,
                start: off,
            })
        };
        let mut r =
            ResumingBlob::new(Box::new(open), 100_000, "blob t".into()).unwrap().with_backoff(Duration::ZERO);
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("registry gone"), "{e}");
    }
}
