//! Conversion between formats: any supported source to raw or qcow2.
//!
//! Sources: raw (and ISO), qcow2 with its backing chain, and gzip, xz or zstd streams of either. A compressed
//! **raw** image is decompressed straight into the destination as a stream (no scratch copy). A
//! compressed **qcow2** image cannot be streamed (qcow2 needs random access to its tables), so it is
//! spooled to a temporary file next to the destination first ([`ConvertStats::spooled`]). Formats
//! QEMU knows but this crate does not (vmdk, vhd, vhdx, bzip2 streams) are refused with
//! [`FormatError::UnsupportedFormat`].
//!
//! Output is sparse by default: zero extents of the source (holes, unallocated or zero clusters) are
//! not read at all, and data that happens to be zero is not written (4 KiB granules for raw, whole
//! clusters for qcow2), leaving holes or unallocated clusters.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

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
    /// Copy buffer size in bytes (rounded up to a multiple of 64 KiB, 64 KiB..=64 MiB; a qcow2
    /// destination uses at least one cluster).
    pub buffer_size: usize,
    /// Make the destination durable (`fdatasync`) before returning. `qemu-img convert` does not by
    /// default (its `-t unsafe` cache mode); an import that reports success should.
    pub sync: bool,
    /// Reader threads (each reads and inflates its own chunks of the source; one writer writes the
    /// chunks in guest order). Default: the number of CPUs, at most 4.
    pub threads: usize,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            output: OutputFormat::Raw,
            sparse: true,
            buffer_size: 2 << 20,
            sync: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        }
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

/// Largest single write to a raw destination. The kernel sizes a page-cache folio by the write
/// that creates it (ext4 and XFS use large folios, up to 2 MiB for a 2 MiB write), and a large
/// folio needs a free block of that order. On a VM whose balloon reports free memory back to the
/// host (free page reporting, as on this project's machines), the free high-order blocks are the
/// ones handed back, so every large folio is faulted in and zeroed by the host first: a 2 MiB
/// write then runs 4-8 times slower in about half the runs (`perf`: the time goes to
/// `copy_folio_from_iter_atomic`). 64 KiB writes take order-4 folios, which come from memory the
/// guest still holds, and ran at 0.31-0.34 s per GiB where 2 MiB writes ranged over 0.24-2.4 s
/// (docs/disk-formats.md, "Performance").
const WRITE_PIECE: u64 = 64 << 10;

fn buffer_len(opts: &ConvertOptions) -> usize {
    const UNIT: usize = 64 << 10;
    opts.buffer_size.clamp(UNIT, 64 << 20).div_ceil(UNIT) * UNIT
}

/// Converts the image at `src` (format detected) to `dst` (created or truncated).
pub fn convert(src: &Path, dst: &Path, opts: &ConvertOptions) -> Result<ConvertStats, FormatError> {
    let fmt = detect_path(src)?;
    match fmt {
        ImageFormat::Raw | ImageFormat::Iso9660 | ImageFormat::Qcow2 => {
            let img = open_image_as(src, fmt, true, 0)?;
            convert_image(img.as_ref(), dst, opts)
        }
        ImageFormat::Gzip | ImageFormat::Xz | ImageFormat::Zstd => convert_compressed(src, fmt, dst, opts),
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
            Err(e) => return Err(FormatError::io(name, "reading the stream", e)),
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
    let mut reader: Box<dyn Read + Send> = match fmt {
        ImageFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(f)),
        // Reads all concatenated frames.
        ImageFormat::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(f)
                .map_err(|e| FormatError::io(src, "starting zstd decoder", e))?,
        ),
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
    Raw { file: File, path: PathBuf, regular: bool, writeback: Option<Writeback> },
    Qcow2(Box<Qcow2>),
}

/// Starts write-back of a raw destination while it is still being written, so that the final
/// `fdatasync` finds little left to do: without it the page cache holds the whole image dirty
/// (1 GiB is below the kernel's background threshold on a machine with a few GiB of RAM) and the
/// disk only starts when the copy is done, so the copy and the disk never overlap.
///
/// Every [`WRITEBACK_WINDOW`] bytes written, write-back of that window is started
/// (`SYNC_FILE_RANGE_WRITE`, asynchronous), and the writer waits for the window
/// [`WRITEBACK_LAG`] bytes behind to be on disk. That bounds the dirty data of an import to
/// about the lag and paces the writer to the disk, which an import that ends with `fdatasync`
/// waits for anyway. Only used when the conversion is to be made durable
/// ([`ConvertOptions::sync`]); failures are ignored (it is advice; the final `fdatasync` reports
/// any I/O error).
struct Writeback {
    fd: std::os::fd::RawFd,
    /// Write-back was started for everything below this offset.
    started: std::cell::Cell<u64>,
    /// Everything below this offset was waited for.
    waited: std::cell::Cell<u64>,
}

/// Bytes between two write-back kicks.
const WRITEBACK_WINDOW: u64 = 16 << 20;
/// How far behind the writer the data it waits for lies.
const WRITEBACK_LAG: u64 = 64 << 20;

impl Writeback {
    fn new(file: &File) -> Self {
        use std::os::fd::AsRawFd;
        Self { fd: file.as_raw_fd(), started: 0.into(), waited: 0.into() }
    }

    /// The destination holds data up to `end` (writes come in increasing offsets).
    fn wrote_to(&self, end: u64) {
        let started = self.started.get();
        if end < started.saturating_add(WRITEBACK_WINDOW) {
            return;
        }
        self.range(started, end - started, libc::SYNC_FILE_RANGE_WRITE);
        self.started.set(end);
        let upto = end.saturating_sub(WRITEBACK_LAG);
        let waited = self.waited.get();
        if upto > waited {
            self.range(
                waited,
                upto - waited,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            );
            self.waited.set(upto);
        }
    }

    fn range(&self, off: u64, len: u64, flags: libc::c_uint) {
        let (Ok(o), Ok(l)) = (libc::off64_t::try_from(off), libc::off64_t::try_from(len)) else { return };
        // SAFETY: sync_file_range on the destination's descriptor, which the sink owns for longer
        // than this `Writeback` (both live in `Sink::Raw`); integer arguments only, no memory of
        // ours is touched.
        let rc = unsafe { libc::sync_file_range(self.fd, o, l, flags) };
        if rc != 0 {
            log::debug!("sync_file_range({off}, {len}): {}", std::io::Error::last_os_error());
        }
    }
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
                // Opening truncated a regular file to 0 already. A size change to 0 would also make
                // ext4 flush the whole file when it is closed (its "auto_da_alloc" heuristic for
                // files rewritten after a truncate to 0), which costs a write-back pass the caller
                // did not ask for.
                if regular && size > 0 {
                    file.set_len(size).map_err(|e| FormatError::io(dst, "setting size", e))?;
                }
                let writeback = opts.sync.then(|| Writeback::new(&file));
                Ok(Sink::Raw { file, path: dst.to_path_buf(), regular, writeback })
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
            Sink::Raw { file, path, writeback, .. } => {
                // In pieces of at most WRITE_PIECE bytes, aligned to absolute offsets (see there).
                let mut done = 0usize;
                while done < data.len() {
                    let at = off + done as u64;
                    // At most WRITE_PIECE, so it fits usize.
                    let n = ((WRITE_PIECE - at % WRITE_PIECE) as usize).min(data.len() - done);
                    file.write_all_at(&data[done..done + n], at)
                        .map_err(|e| FormatError::io(path, format!("writing at {at}"), e))?;
                    done += n;
                }
                if let Some(w) = writeback {
                    w.wrote_to(off + data.len() as u64);
                }
                Ok(())
            }
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
            Sink::Raw { file, path, regular, .. } => {
                // Only when it differs (skipped zeros at the end): a same-size truncate still
                // journals a truncate on ext4.
                let len = file.metadata().map_err(|e| FormatError::io(&path, "getting size", e))?.len();
                if regular && len != size {
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
///
/// `opts.threads` reader threads each take the next chunk of the disk, skip its zero extents and read
/// its data extents; one writer writes the chunks in guest order (ordered writes keep a qcow2
/// destination's clusters in guest order and do not contend for the destination's inode lock).
pub fn convert_image(
    src: &dyn DiskImage,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, FormatError> {
    let size = src.size();
    let sink = Sink::create(dst, size, opts)?;
    let skip = sink.zeros_free(opts);
    let granule = sink.granule();
    // Chunks hold whole qcow2 clusters so that no cluster is written in two parts.
    let chunk = (buffer_len(opts) as u64).max(granule).div_ceil(granule) * granule;
    let nchunks = size.div_ceil(chunk);
    let read = AtomicU64::new(0);
    let mut written = 0u64;
    parallel_ordered(
        opts.threads.clamp(1, 64),
        // chunk <= 64 MiB.
        chunk as usize,
        nchunks,
        |k, buf, segs| {
            let start = k * chunk;
            let end = (start + chunk).min(size);
            let mut off = start;
            while off < end {
                let e = src.extent(off, end - off)?;
                if e.len == 0 {
                    return Err(empty_extent(src, off));
                }
                let n = e.len.min(end - off);
                let at = (off - start) as usize;
                let b = &mut buf[at..at + n as usize];
                match e.kind {
                    ExtentKind::Zero if skip => {}
                    ExtentKind::Zero => {
                        b.fill(0);
                        segs.push((off, at, n as usize));
                    }
                    ExtentKind::Data => {
                        src.read_at(off, b).map_err(|source| FormatError::Block {
                            path: src.path().to_path_buf(),
                            source,
                        })?;
                        read.fetch_add(n, Ordering::Relaxed);
                        segs.push((off, at, n as usize));
                    }
                }
                off += n;
            }
            Ok(())
        },
        |off, data| {
            written += sink.write_data(off, data, skip, granule)?;
            Ok(())
        },
    )?;
    sink.finish(size, opts.sync)?;
    Ok(ConvertStats {
        source_format: src.format(),
        compression: None,
        virtual_size: size,
        bytes_read: read.into_inner(),
        bytes_written: written,
        spooled: false,
    })
}

/// A chunk read by a reader of [`parallel_ordered`]: its buffer and the filled segments
/// `(guest offset, start in buffer, length)`.
struct Chunk {
    buf: Vec<u8>,
    segs: Vec<(u64, usize, usize)>,
}

/// Reads `nchunks` chunks with `readers` threads (`read(k, buffer, segments)` fills chunk `k`) and
/// passes their segments to `write` on this thread, in chunk order. At most `2 * readers + 2` buffers
/// of `buf_len` bytes exist: a reader takes a buffer before it claims a chunk, so the chunk the writer
/// waits for always has one and the pool cannot deadlock; when all chunks are written (or on error)
/// the writer sets `stop` and hands every reader a wake-up buffer.
fn parallel_ordered<R>(
    readers: usize,
    buf_len: usize,
    nchunks: u64,
    read: R,
    mut write: impl FnMut(u64, &[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError>
where
    R: Fn(u64, &mut [u8], &mut Vec<(u64, usize, usize)>) -> Result<(), FormatError> + Sync,
{
    use std::collections::BTreeMap;
    use std::sync::mpsc::{channel, Receiver};
    let pool_size = 2 * readers + 2;
    let (done_tx, done_rx) = channel::<(u64, Result<Chunk, FormatError>)>();
    let (free_tx, free_rx) = channel::<Vec<u8>>();
    let free_rx: Mutex<Receiver<Vec<u8>>> = Mutex::new(free_rx);
    for _ in 0..pool_size.min(usize::try_from(nchunks).unwrap_or(usize::MAX)).max(1) {
        // The receiver outlives this loop, so the send cannot fail.
        let _ = free_tx.send(Vec::new());
    }
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..readers {
            let done_tx = done_tx.clone();
            let (read, next, stop, free_rx) = (&read, &next, &stop, &free_rx);
            s.spawn(move || loop {
                // Take a buffer first, then a chunk index (see above).
                let buf = match free_rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= nchunks {
                    return;
                }
                let mut buf = buf;
                if buf.len() < buf_len {
                    buf.resize(buf_len, 0);
                }
                let mut segs = Vec::new();
                let r = read(k, &mut buf, &mut segs).map(|()| Chunk { buf, segs });
                if done_tx.send((k, r)).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut pending: BTreeMap<u64, Chunk> = BTreeMap::new();
        let mut want = 0u64;
        let mut result = Ok(());
        if nchunks > 0 {
            'recv: for (k, r) in done_rx.iter() {
                match r {
                    Ok(c) => {
                        pending.insert(k, c);
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
                while let Some(c) = pending.remove(&want) {
                    for &(off, at, len) in &c.segs {
                        if let Err(e) = write(off, &c.buf[at..at + len]) {
                            result = Err(e);
                            break 'recv;
                        }
                    }
                    want += 1;
                    // Readers may all have exited already; a failed send only drops the buffer.
                    let _ = free_tx.send(c.buf);
                }
                if want == nchunks {
                    break;
                }
            }
        }
        // Done or failed: readers still waiting for a buffer get one each, see `stop` and quit.
        stop.store(true, Ordering::Relaxed);
        for _ in 0..readers {
            let _ = free_tx.send(Vec::new());
        }
        if result.is_ok() && want < nchunks {
            result = Err(FormatError::Invalid {
                path: PathBuf::from("<convert>"),
                msg: format!("reader threads stopped early (chunk {want} of {nchunks} missing)"),
            });
        }
        result
    })
}

/// Converts a stream holding a **raw** disk image (for example a decompressor) to `dst`. The size is
/// whatever the stream holds (rounded up to 512 bytes for qcow2). `name` is used in errors.
///
/// With `opts.threads` above 1 the stream is read on a thread of its own, overlapping an expensive
/// stream (a decompressor) with writing. With `opts.threads == 1` it is read and written on the
/// calling thread through one buffer, which is faster for a cheap stream (a socket, a file): the
/// buffer stays in the CPU cache between the copy in and the copy out, and no thread hand-offs wait
/// for the scheduler (measured: docs/import-and-golden-images.md).
///
/// A qcow2 image inside a stream cannot be converted this way: qcow2 needs random access, so
/// [`convert`] spools such streams to a temporary file first.
pub fn convert_stream(
    reader: &mut (dyn Read + Send),
    name: &Path,
    dst: &Path,
    opts: &ConvertOptions,
) -> Result<ConvertStats, FormatError> {
    let sink = Sink::create(dst, 0, opts)?;
    let skip = sink.zeros_free(opts);
    let granule = sink.granule();
    let blen = buffer_len(opts);
    let mut read = 0u64;
    let mut written = 0u64;
    let mut end = 0u64;
    if opts.threads <= 1 {
        // One thread, one buffer: the bytes the reader copied in are still in the CPU cache when
        // they are copied out to the page cache (a queue of buffers between two threads is not).
        let mut buf = vec![0u8; blen];
        loop {
            let n = read_full(reader, &mut buf, name)?;
            if n == 0 {
                break;
            }
            read += n as u64;
            let data = &buf[..n];
            sink.grow(end + n as u64)?;
            written += sink.write_data(end, data, skip, granule)?;
            end += n as u64;
        }
        sink.finish(end, opts.sync)?;
        return Ok(ConvertStats {
            source_format: ImageFormat::Raw,
            compression: None,
            virtual_size: end,
            bytes_read: read,
            bytes_written: written,
            spooled: false,
        });
    }
    pipelined(
        blen,
        |get, put| {
            let mut off = 0u64;
            loop {
                let mut buf = get();
                let n = read_full(reader, &mut buf, name)?;
                if n == 0 {
                    return Ok(());
                }
                read += n as u64;
                if !put(Filled { off, buf, len: n }) {
                    return Ok(());
                }
                off += n as u64;
            }
        },
        |off, data| {
            end = off + data.len() as u64;
            sink.grow(end)?;
            written += sink.write_data(off, data, skip, granule)?;
            Ok(())
        },
    )?;
    sink.finish(end, opts.sync)?;
    Ok(ConvertStats {
        source_format: ImageFormat::Raw,
        compression: None,
        virtual_size: end,
        bytes_read: read,
        bytes_written: written,
        spooled: false,
    })
}

fn empty_extent(src: &dyn DiskImage, off: u64) -> FormatError {
    FormatError::Invalid { path: src.path().to_path_buf(), msg: format!("empty extent at {off}") }
}

/// A buffer filled by the producer of [`pipelined`].
struct Filled {
    off: u64,
    buf: Vec<u8>,
    len: usize,
}

/// Runs `produce` on a thread of its own and `consume` on this one, handing over filled buffers in
/// order through a small bounded queue (buffers are recycled). `produce` gets a buffer source and a
/// sink that returns false once the consumer has stopped (after an error).
fn pipelined<P>(
    buf_len: usize,
    produce: P,
    mut consume: impl FnMut(u64, &[u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError>
where
    P: FnOnce(&mut dyn FnMut() -> Vec<u8>, &mut dyn FnMut(Filled) -> bool) -> Result<(), FormatError> + Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<Filled>(2);
    let (free_tx, free_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut get = || free_rx.try_recv().unwrap_or_else(|_| vec![0u8; buf_len]);
            let mut put = |f: Filled| tx.send(f).is_ok();
            produce(&mut get, &mut put)
        });
        let mut result = Ok(());
        for f in rx.iter() {
            result = consume(f.off, &f.buf[..f.len]);
            if result.is_err() {
                break;
            }
            let _ = free_tx.try_send(f.buf);
        }
        // Unblocks a producer waiting to send after an error.
        drop(rx);
        let produced = producer.join().unwrap_or_else(|_| {
            Err(FormatError::Invalid {
                path: PathBuf::from("<convert>"),
                msg: "reader thread panicked".into(),
            })
        });
        // A producer error comes first: the consumer may only have stopped because input ended early.
        produced.and(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(msg: &str) -> FormatError {
        FormatError::Invalid { path: PathBuf::from("t"), msg: msg.into() }
    }

    /// Runs the pipeline over `n` chunks; returns the chunk offsets the writer saw, in order.
    fn run(
        readers: usize,
        n: u64,
        fail_read: Option<u64>,
        fail_write: Option<u64>,
    ) -> Result<Vec<u64>, FormatError> {
        let mut seen = Vec::new();
        parallel_ordered(
            readers,
            4,
            n,
            |k, buf, segs| {
                if Some(k) == fail_read {
                    return Err(err("read"));
                }
                // Uneven work so chunks finish out of order.
                if k % 3 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                buf[..4].copy_from_slice(&(k as u32).to_le_bytes());
                segs.push((k * 4, 0, 4));
                Ok(())
            },
            |off, data| {
                if Some(off / 4) == fail_write {
                    return Err(err("write"));
                }
                assert_eq!(u32::from_le_bytes(data.try_into().unwrap()) as u64, off / 4);
                seen.push(off);
                Ok(())
            },
        )?;
        Ok(seen)
    }

    #[test]
    fn ordered_pipeline_writes_in_order_and_stops_on_errors() {
        for readers in [1, 2, 5] {
            for n in [0u64, 1, 2, 7, 100] {
                let seen = run(readers, n, None, None).unwrap();
                assert_eq!(seen, (0..n).map(|k| k * 4).collect::<Vec<_>>(), "readers {readers} n {n}");
            }
            assert!(run(readers, 50, Some(17), None).unwrap_err().to_string().contains("read"));
            assert!(run(readers, 50, None, Some(23)).unwrap_err().to_string().contains("write"));
            assert!(run(readers, 50, Some(0), None).is_err());
        }
    }

    #[test]
    fn nonzero_runs_are_granule_aligned() {
        let mut buf = vec![0u8; 20_000];
        buf[5000] = 1;
        buf[19_999] = 2;
        let mut runs = Vec::new();
        let n = crate::format::io::for_each_nonzero_run::<()>(&buf, 100, 4096, |o, r| {
            runs.push((o, r.len()));
            Ok(())
        })
        .unwrap();
        // Granules are aligned to absolute offsets: [4096, 8192) holds byte 5100, [16384, 20100) byte 20099.
        assert_eq!(runs, vec![(4096, 4096), (16384, 3716)]);
        assert_eq!(n, 4096 + 3716);
    }
}
