//! Conversion between formats: any supported source to raw or qcow2.
//!
//! Sources: raw (and ISO), qcow2 with its backing chain, and gzip or xz streams of either. A compressed
//! **raw** image is decompressed straight into the destination as a stream (no scratch copy). A
//! compressed **qcow2** image cannot be streamed (qcow2 needs random access to its tables), so it is
//! spooled to a temporary file next to the destination first ([`ConvertStats::spooled`]). Formats
//! QEMU knows but this crate does not (vmdk, vhd, vhdx, zstd/bzip2 streams) are refused with
//! [`FormatError::UnsupportedFormat`].
//!
//! Output is sparse by default: zero extents of the source (holes, unallocated or zero clusters) are
//! not read at all, and data that happens to be zero is not written (4 KiB granules for raw, whole
//! clusters for qcow2), leaving holes or unallocated clusters.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use virt_core::block::BlockBackend;

use super::detect::{detect_bytes, detect_path, ImageFormat, SNIFF_LEN};
use super::io::for_each_nonzero_run;
use super::qcow2::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use super::{open_image_as, DiskImage, ExtentKind, FormatError};

/// The destination format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A raw file (sparse unless [`ConvertOptions::sparse`] is off).
    Raw,
    /// A new qcow2 v3 image with clusters of `1 << cluster_bits` bytes.
    Qcow2 {
        /// log2 of the cluster size (16 for 64 KiB).
        cluster_bits: u32,
    },
}

/// Options for [`convert`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Destination format.
    pub output: OutputFormat,
    /// Skip zeros (keep holes). Off: a raw destination is written in full.
    pub sparse: bool,
    /// Copy buffer size in bytes (rounded to a multiple of 2 MiB, at least 2 MiB).
    pub buffer_size: usize,
    /// Make the destination durable (`fdatasync`) before returning. `qemu-img convert` does not by
    /// default (its `-t unsafe` cache mode); an import that reports success should.
    pub sync: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self { output: OutputFormat::Raw, sparse: true, buffer_size: 8 << 20, sync: true }
    }
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertStats {
    /// Format of the source image (inside any compression).
    pub source_format: ImageFormat,
    /// Compression of the source stream, if any.
    pub compression: Option<ImageFormat>,
    /// Virtual size of the disk.
    pub virtual_size: u64,
    /// Guest bytes read from the source (zero extents are not read).
    pub bytes_read: u64,
    /// Guest bytes written to the destination.
    pub bytes_written: u64,
    /// Whether a compressed qcow2 had to be decompressed to a temporary file first.
    pub spooled: bool,
}

const RAW_GRANULE: u64 = 4096;

fn buffer_len(opts: &ConvertOptions) -> usize {
    const UNIT: usize = 2 << 20;
    opts.buffer_size.max(UNIT).div_ceil(UNIT).saturating_mul(UNIT)
}

/// Converts the image at `src` (format detected) to `dst` (created or truncated).
pub fn convert(src: &Path, dst: &Path, opts: &ConvertOptions) -> Result<ConvertStats, FormatError> {
    let fmt = detect_path(src)?;
    match fmt {
        ImageFormat::Raw | ImageFormat::Iso9660 | ImageFormat::Qcow2 => {
            let img = open_image_as(src, fmt, true, 0)?;
            convert_image(img.as_ref(), dst, opts)
        }
        ImageFormat::Gzip | ImageFormat::Xz => convert_compressed(src, fmt, dst, opts),
        other => Err(FormatError::UnsupportedFormat { path: src.to_path_buf(), format: other.name().into() }),
    }
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8], name: &Path) -> Result<usize, FormatError> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FormatError::io(name, "decompressing", e)),
        }
    }
    Ok(n)
}

fn convert_compressed(
    src: &Path,
    fmt: ImageFormat,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, FormatError> {
    let f = File::open(src).map_err(|e| FormatError::io(src, "opening", e))?;
    let f = BufReader::with_capacity(1 << 20, f);
    let mut reader: Box<dyn Read> = match fmt {
        ImageFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        _ => Box::new(xz2::read::XzDecoder::new_multi_decoder(f)),
    };
    let mut head = vec![0u8; SNIFF_LEN];
    let n = read_full(&mut reader, &mut head, src)?;
    head.truncate(n);
    let inner = detect_bytes(&head, None);
    match inner {
        ImageFormat::Raw | ImageFormat::Iso9660 => {
            let mut st = convert_stream(&mut std::io::Cursor::new(head).chain(reader), src, dst, opts)?;
            st.source_format = inner;
            st.compression = Some(fmt);
            Ok(st)
        }
        ImageFormat::Qcow2 => {
            // qcow2 needs random access: spool next to the destination (same file system, removed on
            // drop), then convert from the spool. Relative backing names resolve against `src`.
            let dir = match dst.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let mut tmp = tempfile::Builder::new()
                .prefix(".spool-")
                .tempfile_in(&dir)
                .map_err(|e| FormatError::io(&dir, "creating spool file", e))?;
            let tmp_path = tmp.path().to_path_buf();
            tmp.write_all(&head).map_err(|e| FormatError::io(&tmp_path, "spooling", e))?;
            let mut buf = vec![0u8; 4 << 20];
            loop {
                let n = read_full(&mut reader, &mut buf, src)?;
                if n == 0 {
                    break;
                }
                tmp.write_all(&buf[..n]).map_err(|e| FormatError::io(&tmp_path, "spooling", e))?;
            }
            let file = tmp.reopen().map_err(|e| FormatError::io(&tmp_path, "reopening spool file", e))?;
            let img = Qcow2::open_file(file, src, &Qcow2OpenOptions::default(), None)?;
            let mut st = convert_image(&img, dst, opts)?;
            st.compression = Some(fmt);
            st.spooled = true;
            Ok(st)
        }
        other => Err(FormatError::UnsupportedFormat {
            path: src.to_path_buf(),
            format: format!("{other} inside a {fmt} stream"),
        }),
    }
}

enum Sink {
    Raw { file: File, path: PathBuf, regular: bool },
    Qcow2(Box<Qcow2>),
}

impl Sink {
    fn create(dst: &Path, size: u64, opts: &ConvertOptions) -> Result<Sink, FormatError> {
        match opts.output {
            OutputFormat::Raw => {
                let regular = std::fs::metadata(dst).map(|m| m.is_file()).unwrap_or(true);
                let file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(regular)
                    .open(dst)
                    .map_err(|e| FormatError::io(dst, "creating", e))?;
                if regular {
                    file.set_len(size).map_err(|e| FormatError::io(dst, "setting size", e))?;
                }
                Ok(Sink::Raw { file, path: dst.to_path_buf(), regular })
            }
            OutputFormat::Qcow2 { cluster_bits } => {
                let q = Qcow2::create(dst, &Qcow2CreateOptions { size, cluster_bits, ..Default::default() })?;
                Ok(Sink::Qcow2(Box::new(q)))
            }
        }
    }

    /// Whether zero ranges may be skipped (the destination reads them as zeros already).
    fn zeros_free(&self, opts: &ConvertOptions) -> bool {
        match self {
            Sink::Raw { regular, .. } => opts.sparse && *regular,
            Sink::Qcow2(_) => true,
        }
    }

    fn granule(&self) -> u64 {
        match self {
            Sink::Raw { .. } => RAW_GRANULE,
            Sink::Qcow2(q) => q.header().cluster_size(),
        }
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), FormatError> {
        match self {
            Sink::Raw { file, path, .. } => file
                .write_all_at(data, off)
                .map_err(|e| FormatError::io(path, format!("writing at {off}"), e)),
            Sink::Qcow2(q) => q.write_guest(off, data),
        }
    }

    /// Writes a data buffer, skipping zero granules if allowed; returns bytes written.
    fn write_data(&self, off: u64, data: &[u8], skip_zeros: bool, granule: u64) -> Result<u64, FormatError> {
        if skip_zeros {
            for_each_nonzero_run(data, off, granule, |o, run| self.write(o, run))
        } else {
            self.write(off, data)?;
            Ok(data.len() as u64)
        }
    }

    fn grow(&self, size: u64) -> Result<(), FormatError> {
        match self {
            Sink::Raw { .. } => Ok(()),
            Sink::Qcow2(q) if q.size() < size => q.resize(size),
            Sink::Qcow2(_) => Ok(()),
        }
    }

    fn finish(self, size: u64, sync: bool) -> Result<(), FormatError> {
        match self {
            Sink::Raw { file, path, regular } => {
                if regular {
                    file.set_len(size).map_err(|e| FormatError::io(&path, "setting size", e))?;
                }
                if sync {
                    file.sync_data().map_err(|e| FormatError::io(&path, "syncing", e))?;
                }
                Ok(())
            }
            Sink::Qcow2(q) => {
                q.resize(size)?;
                // Metadata must be written back either way; the flush also syncs.
                q.flush_image()
            }
        }
    }
}

/// Converts an open image to `dst`.
pub fn convert_image(
    src: &dyn DiskImage,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, FormatError> {
    let size = src.size();
    let sink = Sink::create(dst, size, opts)?;
    let skip = sink.zeros_free(opts);
    let granule = sink.granule();
    let blen = buffer_len(opts);
    let mut buf = vec![0u8; blen];
    let mut st = ConvertStats {
        source_format: src.format(),
        compression: None,
        virtual_size: size,
        bytes_read: 0,
        bytes_written: 0,
        spooled: false,
    };
    let mut off = 0u64;
    while off < size {
        let e = src.extent(off, size - off)?;
        if e.len == 0 {
            return Err(FormatError::Invalid {
                path: src.path().to_path_buf(),
                msg: format!("empty extent at {off}"),
            });
        }
        if e.kind == ExtentKind::Zero && skip {
            off += e.len;
            continue;
        }
        // Read at most one buffer, ending on a buffer-size boundary so later reads stay aligned.
        let to_boundary = blen as u64 - off % blen as u64;
        let n = e.len.min(to_boundary) as usize;
        let b = &mut buf[..n];
        if e.kind == ExtentKind::Zero {
            b.fill(0);
        } else {
            src.read_at(off, b)
                .map_err(|source| FormatError::Block { path: src.path().to_path_buf(), source })?;
            st.bytes_read += n as u64;
        }
        st.bytes_written += sink.write_data(off, b, skip, granule)?;
        off += n as u64;
    }
    sink.finish(size, opts.sync)?;
    Ok(st)
}

/// Converts a stream holding a **raw** disk image (for example a decompressor) to `dst`. The size is
/// whatever the stream holds (rounded up to 512 bytes for qcow2). `name` is used in errors.
///
/// A qcow2 image inside a stream cannot be converted this way: qcow2 needs random access, so
/// [`convert`] spools such streams to a temporary file first.
pub fn convert_stream(
    reader: &mut dyn Read,
    name: &Path,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, FormatError> {
    let sink = Sink::create(dst, 0, opts)?;
    let skip = sink.zeros_free(opts);
    let granule = sink.granule();
    let blen = buffer_len(opts);
    let mut buf = vec![0u8; blen];
    let mut st = ConvertStats {
        source_format: ImageFormat::Raw,
        compression: None,
        virtual_size: 0,
        bytes_read: 0,
        bytes_written: 0,
        spooled: false,
    };
    let mut off = 0u64;
    loop {
        let n = read_full(reader, &mut buf, name)?;
        if n == 0 {
            break;
        }
        st.bytes_read += n as u64;
        sink.grow(off + n as u64)?;
        st.bytes_written += sink.write_data(off, &buf[..n], skip, granule)?;
        off += n as u64;
    }
    st.virtual_size = off;
    sink.finish(off, opts.sync)?;
    Ok(st)
}
