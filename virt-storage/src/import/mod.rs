//! Importing disk images into volumes: download, decompress and convert in one pass, resume after a
//! dropped connection, verify a checksum, and publish the volume only when all of it arrived.
//!
//! ```text
//! ByteSource (http, file, ...) ─► ResumingReader (Range on failure, sha256, progress)
//!     ─► sniff: gzip/xz ─► decompress ─► sniff again
//!          raw ─► convert_stream ─► pool's staging file
//!          qcow2 ─► spooled to a scratch file (qcow2 needs random access) ─► convert_image
//!                   (converted while it downloads when it is not compressed and its length is known)
//!     ─► checksum ok? ─► commit_import (rename into place)    any error ─► abort_import
//! ```

mod growing;
pub mod http;
pub mod policy;
pub mod registry;
pub mod source;

use std::io::{Cursor, Read};
use std::sync::atomic::Ordering;

use crate::format::convert::{convert_image, convert_stream, ConvertOptions, OutputFormat};
use crate::format::detect::{detect_bytes, ImageFormat};
use crate::format::qcow2::{BackingPolicy, Qcow2, Qcow2OpenOptions};
use crate::format::FormatError;
use crate::volume::{Volume, VolumeError, VolumeFormat, VolumeId, VolumeProvider};

pub use self::source::{ByteSource, FileSource, Opened, ResumingReader};

/// Errors of an import; each names the source and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The URL cannot be used.
    #[error("bad URL {url}: {msg}")]
    BadUrl {
        /// The URL (credentials removed).
        url: String,
        /// What is wrong.
        msg: String,
    },
    /// The server answered with an error status.
    #[error("{url}: HTTP {status}: {msg}")]
    Http {
        /// The URL (credentials removed).
        url: String,
        /// HTTP status.
        status: u16,
        /// What it means.
        msg: String,
    },
    /// The source could not be read (opened, sought, read) or the target written.
    #[error("{source_name}: {source}")]
    Read {
        /// The source.
        source_name: String,
        /// What failed.
        source: std::io::Error,
    },
    /// An HTTP request for the source failed (other than TLS: see [`ImportError::Tls`]).
    #[error("{url}: {source}")]
    Request {
        /// The URL, credentials redacted.
        url: String,
        /// The client's error.
        source: Box<ureq::Error>,
    },
    /// The registry refused or failed a request for the image.
    #[error("{reference}: {source}")]
    Registry {
        /// The image reference.
        reference: String,
        /// The registry client's error.
        source: Box<crate::registry::RegistryError>,
    },
    /// The source ended before the size it announced.
    #[error("{source_name}: transfer ended at byte {received} of {total}")]
    Truncated {
        /// The source.
        source_name: String,
        /// Bytes received.
        received: u64,
        /// Bytes announced.
        total: u64,
    },
    /// TLS with the server failed (an untrusted certificate, a failed handshake).
    #[error("TLS failure talking to {url}: {msg}")]
    Tls {
        /// The URL (credentials removed).
        url: String,
        /// What failed and what to do about it.
        msg: String,
    },
    /// The source cannot continue from an offset, so an interrupted transfer must restart.
    #[error("{source_name} cannot resume at byte {offset} (no range support); the import must restart")]
    NoResume {
        /// The source.
        source_name: String,
        /// Where it would have resumed.
        offset: u64,
    },
    /// The payload is not a disk image we can import.
    #[error("{source_name} is not a disk image: {msg}")]
    NotAnImage {
        /// The source.
        source_name: String,
        /// Why.
        msg: String,
    },
    /// The checksum of what arrived differs from the expected one.
    #[error("{source_name}: checksum mismatch: expected sha256 {expected}, got {actual}")]
    Checksum {
        /// The source.
        source_name: String,
        /// Expected digest.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// Format detection or conversion failed.
    #[error("{source_name}: {source}")]
    Format {
        /// The source.
        source_name: String,
        /// Underlying error.
        source: FormatError,
    },
    /// The pool refused.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// Options of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Format of the new volume.
    pub format: VolumeFormat,
    /// Expected SHA-256 (hex) of the transferred bytes, if the source publishes one.
    pub sha256: Option<String>,
    /// How often a dropped transfer is resumed in a row before the import fails.
    pub max_retries: u32,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self { format: VolumeFormat::Raw, sha256: None, max_retries: 5 }
    }
}

/// Progress of an import, as CDI reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Bytes received from the source.
    pub bytes: u64,
    /// Total bytes, if known.
    pub total: Option<u64>,
}

impl Progress {
    /// CDI's progress string, e.g. "45.20%" ("N/A" when the total is unknown).
    pub fn percent(&self) -> String {
        match self.total {
            Some(t) if t > 0 => format!("{:.2}%", (self.bytes.min(t) as f64) * 100.0 / t as f64),
            _ => "N/A".into(),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    /// The new volume.
    pub volume: Volume,
    /// Format found in the source (after decompression).
    pub source_format: ImageFormat,
    /// Compression of the stream, if any (gzip or xz).
    pub compression: Option<ImageFormat>,
    /// Bytes transferred.
    pub bytes_received: u64,
    /// Times the transfer resumed after a drop.
    pub resumes: u64,
    /// SHA-256 of the transferred bytes (computed only when a checksum was expected).
    pub sha256: Option<String>,
    /// Whether a scratch copy was needed (qcow2 inside the stream).
    pub used_scratch: bool,
}

const SNIFF: usize = 64 << 10;

/// Reads up to `n` bytes for format detection and gives back a reader that replays them.
fn peek(mut r: Box<dyn Read + Send>, n: usize) -> std::io::Result<(Vec<u8>, Box<dyn Read + Send>)> {
    let mut head = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match r.read(&mut head[got..])? {
            0 => break,
            k => got += k,
        }
    }
    head.truncate(got);
    let replay = Cursor::new(head.clone()).chain(r);
    Ok((head, Box::new(replay)))
}

fn looks_like_html(head: &[u8]) -> bool {
    let s = String::from_utf8_lossy(&head[..head.len().min(512)]).to_ascii_lowercase();
    let t = s.trim_start();
    t.starts_with("<!doctype html") || t.starts_with("<html") || t.starts_with("<?xml")
}

/// Imports `source` into a new volume `id` of `pool`. `progress` is called as bytes arrive.
pub fn import(
    pool: &dyn VolumeProvider,
    id: &VolumeId,
    source: Box<dyn ByteSource>,
    opts: &ImportOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ImportOutcome, ImportError> {
    let dst = pool.import_path(id, opts.format)?;
    let scratch = dst.with_extension("download");
    let r = run_import(&dst, &scratch, source, opts, progress);
    let _ = std::fs::remove_file(&scratch);
    match r {
        Ok(mut out) => match pool.commit_import(id, opts.format) {
            Ok(v) => {
                out.volume = v;
                Ok(out)
            }
            Err(e) => {
                let _ = pool.abort_import(id, opts.format);
                Err(e.into())
            }
        },
        Err(e) => {
            let _ = pool.abort_import(id, opts.format);
            Err(e)
        }
    }
}

fn run_import(
    dst: &std::path::Path,
    scratch: &std::path::Path,
    source: Box<dyn ByteSource>,
    opts: &ImportOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<ImportOutcome, ImportError> {
    let name = source.describe();
    let fmt_err = |source| ImportError::Format { source_name: name.clone(), source };
    let io_err = |source: std::io::Error| ImportError::Read { source_name: name.clone(), source };
    let not_image = |msg: String| ImportError::NotAnImage { source_name: name.clone(), msg };

    let reader = ResumingReader::new(source, opts.max_retries, opts.sha256.is_some())?;
    let total = reader.total();
    let counter = reader.counter();
    let resumes = reader.resumes.clone();
    // The reader is shared with the pipeline; its hash is read back at the end.
    let shared = std::sync::Arc::new(std::sync::Mutex::new(reader));
    let stream: Box<dyn Read + Send> = Box::new(SharedReader(shared.clone()));

    // Progress reported live from a side thread (`progress` is `Send`) every 200 ms while the
    // pipeline runs on this one; the side thread wakes at once when the pipeline ends.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let progress_shared = &mut *progress;
    let ticker = move || loop {
        progress_shared(Progress { bytes: counter.load(Ordering::Relaxed), total });
        match stopped.recv_timeout(std::time::Duration::from_millis(200)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    };

    let pipeline = || -> Result<(ImageFormat, Option<ImageFormat>, bool), ImportError> {
        let (head, stream) = peek(stream, SNIFF).map_err(io_err)?;
        if head.is_empty() {
            return Err(not_image("the payload is empty".into()));
        }
        if looks_like_html(&head) {
            return Err(not_image("the payload is an HTML/XML document".into()));
        }
        let outer = detect_bytes(&head, None);
        let (compression, inner_stream): (Option<ImageFormat>, Box<dyn Read + Send>) = match outer {
            ImageFormat::Gzip => (Some(outer), Box::new(flate2::read::MultiGzDecoder::new(stream))),
            ImageFormat::Xz => (Some(outer), Box::new(xz2::read::XzDecoder::new_multi_decoder(stream))),
            _ => (None, stream),
        };
        let (head, inner_stream) = if compression.is_some() {
            peek(inner_stream, SNIFF).map_err(io_err)?
        } else {
            (head, inner_stream)
        };
        let inner = detect_bytes(&head, None);
        let output = match opts.format {
            VolumeFormat::Raw => OutputFormat::Raw,
            VolumeFormat::Qcow2 => OutputFormat::Qcow2 { cluster_bits: 16 },
        };
        let copts = ConvertOptions { output, ..Default::default() };
        match inner {
            ImageFormat::Raw | ImageFormat::Iso9660 => {
                // An uncompressed stream is cheap to read: read and write on this thread through
                // one cache-resident buffer. A decompressor gets a thread of its own.
                let threads = if compression.is_some() { copts.threads } else { 1 };
                let copts = ConvertOptions { threads, ..copts };
                let mut s = inner_stream;
                let st =
                    convert_stream(&mut *s, std::path::Path::new(&name), dst, &copts).map_err(fmt_err)?;
                if st.bytes_read == 0 || st.bytes_read % 512 != 0 {
                    return Err(not_image(format!(
                        "{} bytes is not a whole number of 512-byte sectors",
                        st.bytes_read
                    )));
                }
                Ok((inner, compression, false))
            }
            ImageFormat::Qcow2 => {
                // qcow2 needs random access: spool it. An imported image must not reach into the
                // host's files through a backing file.
                let qopts = Qcow2OpenOptions { backing: BackingPolicy::Refuse, ..Default::default() };
                let mut s = inner_stream;
                match (compression, total) {
                    // The stream is the image and its length is known: convert while it downloads.
                    (None, Some(total)) => {
                        convert_while_downloading(&mut *s, total, scratch, dst, &qopts, &copts, &name)?
                    }
                    _ => {
                        let f = std::fs::File::create(scratch).map_err(io_err)?;
                        spool(&mut *s, &f).map_err(io_err)?;
                        drop(f);
                        let q = Qcow2::open(scratch, &qopts).map_err(fmt_err)?;
                        convert_image(&q, dst, &copts).map_err(fmt_err)?;
                    }
                }
                Ok((inner, compression, true))
            }
            other => Err(not_image(format!("{} images are not supported for import", other.name()))),
        }
    };
    let result = std::thread::scope(|s| {
        let t = s.spawn(ticker);
        let r = pipeline();
        // The receiver lives until the ticker returns, so this only fails if it already did.
        let _ = stop.send(());
        let _ = t.join();
        r
    });
    let (source_format, compression, used_scratch) = result?;
    let (bytes_received, sha256) = {
        let g = shared.lock().unwrap_or_else(|e| e.into_inner());
        (g.offset(), g.sha256_hex())
    };
    progress(Progress { bytes: bytes_received, total });
    if let Some(t) = total {
        if bytes_received != t {
            return Err(ImportError::Truncated { source_name: name, received: bytes_received, total: t });
        }
    }
    if let (Some(want), Some(got)) = (&opts.sha256, &sha256) {
        if !want.eq_ignore_ascii_case(got) {
            return Err(ImportError::Checksum {
                source_name: name,
                expected: want.clone(),
                actual: got.clone(),
            });
        }
    }
    Ok(ImportOutcome {
        volume: Volume {
            id: VolumeId::new("", ""),
            path: dst.to_path_buf(),
            format: opts.format,
            size: 0,
            allocated: 0,
            backing: None,
        },
        source_format,
        compression,
        bytes_received,
        resumes: resumes.load(Ordering::Relaxed),
        sha256,
        used_scratch,
    })
}

/// Downloads `stream` (a qcow2 image of `total` bytes) into `scratch` on a thread of its own while
/// this thread converts it to `dst` from a [`growing::GrowingFile`] over the same file. The download
/// always runs to its end (the caller checks its length and checksum afterwards); a failed
/// conversion stops it. A download error wins over the conversion error it caused.
fn convert_while_downloading(
    stream: &mut (dyn Read + Send),
    total: u64,
    scratch: &std::path::Path,
    dst: &std::path::Path,
    qopts: &Qcow2OpenOptions,
    copts: &ConvertOptions,
    name: &str,
) -> Result<(), ImportError> {
    let io_err = |source: std::io::Error| ImportError::Read { source_name: name.to_string(), source };
    let fmt_err = |source| ImportError::Format { source_name: name.to_string(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(scratch)
        .map_err(io_err)?;
    let view = file.try_clone().map_err(io_err)?;
    let fill = growing::Fill::default();
    std::thread::scope(|s| {
        let download = s.spawn(|| {
            let r = growing::download_into(stream, &file, &fill).map_err(std::sync::Arc::new);
            fill.finish(r.as_ref().map(|_| ()).map_err(std::sync::Arc::clone));
            // The readers hold the error too; the import reports it with its kind and text.
            r.map_err(|e| std::io::Error::new(e.kind(), e))
        });
        let converted = Qcow2::open_file(growing::GrowingFile::new(view, total, &fill), scratch, qopts, None)
            .and_then(|q| convert_image(&q, dst, copts));
        if converted.is_err() {
            fill.cancel();
        }
        let downloaded =
            download.join().unwrap_or_else(|_| Err(std::io::Error::other("download thread panicked")));
        match (downloaded, converted) {
            (Err(e), Err(_)) => Err(io_err(e)),
            (_, Err(e)) => Err(fmt_err(e)),
            (Err(e), Ok(_)) => Err(io_err(e)),
            (Ok(_), Ok(_)) => Ok(()),
        }
    })
}

/// Copies `r` to the (new, empty) scratch file `f` in 64 KiB writes: one buffer that stays in the
/// CPU cache, and small page-cache folios (see `WRITE_PIECE` in format/convert.rs for why large
/// writes are slow on VMs that hand free memory back to the host).
fn spool(r: &mut (dyn Read + Send), f: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 << 10];
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            return Ok(off);
        }
        f.write_all_at(&buf[..n], off)?;
        off += n as u64;
    }
}

/// Lets the pipeline read through the shared [`ResumingReader`].
struct SharedReader(std::sync::Arc<std::sync::Mutex<ResumingReader>>);

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).read(buf)
    }
}
