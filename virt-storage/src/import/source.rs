//! Byte sources an import reads from, and the readers stacked on them: resume after a dropped
//! connection, count progress, hash what arrived.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::ImportError;

/// An opened stream.
pub struct Opened {
    /// The bytes from the requested offset on.
    pub reader: Box<dyn Read + Send>,
    /// Total length of the whole object, if the source knows it.
    pub total: Option<u64>,
}

/// Where an import's bytes come from: an HTTP URL, a registry layer, an upload, a file.
pub trait ByteSource: Send {
    /// Opens the object at `offset` (0 for the start). A source that cannot start elsewhere than 0
    /// returns [`ImportError::NoResume`] for other offsets.
    fn open(&mut self, offset: u64) -> Result<Opened, ImportError>;
    /// A short description for messages (a URL without credentials, a file name).
    fn describe(&self) -> String;
}

/// A reader over a [`ByteSource`] that reopens the source at the current offset when a read fails
/// (a dropped connection), up to `max_retries` times in a row.
pub struct ResumingReader {
    source: Box<dyn ByteSource>,
    inner: Box<dyn Read + Send>,
    offset: u64,
    total: Option<u64>,
    max_retries: u32,
    retries_left: u32,
    /// How many times the stream was resumed.
    pub resumes: Arc<AtomicU64>,
    counter: Arc<AtomicU64>,
    hasher: Option<Sha256>,
}

impl ResumingReader {
    /// Opens `source` from its start; with `hash`, keeps a SHA-256 of every byte received.
    pub fn new(mut source: Box<dyn ByteSource>, max_retries: u32, hash: bool) -> Result<Self, ImportError> {
        let o = source.open(0)?;
        Ok(Self {
            source,
            inner: o.reader,
            offset: 0,
            total: o.total,
            max_retries,
            retries_left: max_retries,
            resumes: Arc::new(AtomicU64::new(0)),
            counter: Arc::new(AtomicU64::new(0)),
            hasher: hash.then(Sha256::new),
        })
    }

    /// Total size, if known.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// A shared counter of bytes received so far (for progress reports from another thread).
    pub fn counter(&self) -> Arc<AtomicU64> {
        self.counter.clone()
    }

    /// The SHA-256 of every byte received, in order (valid once the stream is read to its end), if
    /// hashing was asked for.
    pub fn sha256_hex(&self) -> Option<String> {
        self.hasher.as_ref().map(|h| h.clone().finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Bytes received.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

impl Read for ResumingReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(0) => {
                    // A short body (connection closed early) looks like EOF: resume if the length says
                    // there is more.
                    match self.total {
                        Some(t) if self.offset < t => {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("stream ended at byte {} of {t}", self.offset),
                            );
                            self.reopen(e)?;
                        }
                        _ => return Ok(0),
                    }
                }
                Ok(n) => {
                    self.offset += n as u64;
                    if let Some(h) = &mut self.hasher {
                        h.update(&buf[..n]);
                    }
                    self.counter.store(self.offset, Ordering::Relaxed);
                    self.retries_left = self.max_retries;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => self.reopen(e)?,
            }
        }
    }
}

impl ResumingReader {
    fn reopen(&mut self, cause: std::io::Error) -> std::io::Result<()> {
        if self.retries_left == 0 {
            return Err(std::io::Error::new(
                cause.kind(),
                format!(
                    "{} failed at byte {} after {} retries: {cause}",
                    self.source.describe(),
                    self.offset,
                    self.max_retries
                ),
            ));
        }
        self.retries_left -= 1;
        log::warn!("{}: {cause}; resuming at byte {}", self.source.describe(), self.offset);
        std::thread::sleep(std::time::Duration::from_millis(
            100 * u64::from(self.max_retries - self.retries_left),
        ));
        match self.source.open(self.offset) {
            Ok(o) => {
                if let (Some(a), Some(b)) = (self.total, o.total) {
                    if a != b {
                        return Err(std::io::Error::other(format!(
                            "{} changed size while downloading ({a} then {b} bytes)",
                            self.source.describe()
                        )));
                    }
                }
                self.inner = o.reader;
                self.resumes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(std::io::Error::other(e.to_string())),
        }
    }
}

/// A local file as a [`ByteSource`] (for uploads staged on disk and for tests).
pub struct FileSource {
    path: std::path::PathBuf,
}

impl FileSource {
    /// A source reading `path`.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl ByteSource for FileSource {
    fn open(&mut self, offset: u64) -> Result<Opened, ImportError> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path)
            .map_err(|source| ImportError::Read { source_name: self.describe(), source })?;
        let total = f.metadata().map(|m| m.len()).ok();
        f.seek(SeekFrom::Start(offset))
            .map_err(|source| ImportError::Read { source_name: self.describe(), source })?;
        Ok(Opened { reader: Box::new(f), total })
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
