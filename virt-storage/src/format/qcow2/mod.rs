//! qcow2 images (versions 2 and 3): reading, writing, creating, backing chains.
//!
//! Supported: standard, zero (v3 zero flag) and compressed (zlib/raw deflate) clusters; backing files
//! (raw or qcow2, opened read-only, at most [`MAX_BACKING_DEPTH`] deep, relative names resolved
//! against the image's directory); allocating writes with copy-on-write of partial clusters from the
//! backing file; refcounts of any width (refcount_order 0..=6) kept exact so `qemu-img check` finds
//! neither errors nor leaks; growing the disk; creating blank images and overlays.
//!
//! Refused: encryption, external data files, extended L2 entries, zstd compression, unknown
//! incompatible features, and for writing: images with the dirty or corrupt bit set or with internal
//! snapshots (these still open read-only).
//!
//! Allocation is append-only: new clusters go at the end of the file and freed clusters are not
//! reused. Metadata (L2 tables, refcount blocks) is cached and written back on [`BlockBackend::flush`]
//! (and when evicted); on version 3 images the dirty bit is set before the first metadata change after a
//! flush and cleared by the flush, so a crash leaves an image QEMU repairs on open.

pub mod header;
mod inner;
mod refcount;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use virt_core::block::{BlockBackend, BlockError};

pub use header::{FeatureName, Header};
pub use inner::MAX_BACKING_DEPTH;
pub use refcount::CheckReport;

use self::header::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use self::inner::{Inner, TableCache, L1E_OFFSET_MASK, RT_OFFSET_MASK};
use super::detect::ImageFormat;
use super::io::ImageFile;
use super::{DiskImage, Extent, FormatError};

/// What to do with an image's backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackingPolicy {
    /// Open the backing chain (read-only).
    #[default]
    Open,
    /// Fail if the image has a backing file.
    Refuse,
    /// Ignore the backing file: unallocated clusters read as zeros (like `qemu-img -u`). Used for
    /// in-memory images (fuzzing), where no file system is around.
    Detached,
}

/// Options for opening a qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2OpenOptions {
    /// Refuse writes.
    pub read_only: bool,
    /// What to do with a backing file.
    pub backing: BackingPolicy,
    /// Memory for cached L2 tables (at least 4 tables are cached, at most 1024).
    pub l2_cache_bytes: u64,
}

impl Default for Qcow2OpenOptions {
    fn default() -> Self {
        Self { read_only: true, backing: BackingPolicy::Open, l2_cache_bytes: 32 << 20 }
    }
}

/// Options for creating a qcow2 image.
#[derive(Debug, Clone)]
pub struct Qcow2CreateOptions {
    /// Virtual size in bytes (rounded up to a multiple of 512).
    pub size: u64,
    /// log2 of the cluster size (default 16: 64 KiB).
    pub cluster_bits: u32,
    /// log2 of the refcount width in bits (default 4: 16-bit refcounts).
    pub refcount_order: u32,
    /// Backing file name, stored as given (relative names are relative to the new image's directory).
    pub backing_file: Option<PathBuf>,
    /// Format of the backing file (raw or qcow2); stored in the header extension.
    pub backing_format: Option<ImageFormat>,
}

impl Default for Qcow2CreateOptions {
    fn default() -> Self {
        Self { size: 0, cluster_bits: 16, refcount_order: 4, backing_file: None, backing_format: None }
    }
}

/// An open qcow2 image. All metadata sits behind one mutex.
pub struct Qcow2<F: ImageFile = File> {
    inner: Mutex<Inner<F>>,
    /// The image file, also held by `inner`: data reads of standard clusters happen outside the lock
    /// (a standard cluster's mapping never changes once allocated).
    file: Arc<F>,
    read_only: bool,
    path: PathBuf,
    id: String,
}

impl<F: ImageFile> std::fmt::Debug for Qcow2<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qcow2").field("path", &self.path).field("read_only", &self.read_only).finish()
    }
}

fn disk_id(path: &Path) -> String {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("disk");
    let mut s: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(20).collect();
    if s.is_empty() {
        s.push_str("qcow2");
    }
    s
}

fn be64s(raw: &[u8]) -> Vec<u64> {
    raw.chunks_exact(8)
        .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

/// Whether a backing file name is a QEMU protocol or JSON specification rather than a path.
fn is_protocol(name: &str) -> bool {
    if name.starts_with("json:") {
        return true;
    }
    match name.split_once(':') {
        Some((proto, _)) => {
            !proto.is_empty()
                && !proto.contains('/')
                && [
                    "nbd", "http", "https", "ftp", "ftps", "iscsi", "rbd", "ssh", "gluster", "nfs", "vvfat",
                    "file",
                ]
                .contains(&proto)
        }
        None => false,
    }
}

/// Opens the backing file named in `hdr` of the image at `path`, read-only.
fn open_backing(path: &Path, hdr: &Header, depth: u32) -> Result<Option<Box<dyn DiskImage>>, FormatError> {
    let Some(name) = &hdr.backing_file else { return Ok(None) };
    let err = |msg: String| FormatError::Backing { path: path.to_path_buf(), msg };
    if depth >= MAX_BACKING_DEPTH {
        return Err(err(format!("backing chain is deeper than {MAX_BACKING_DEPTH} (a loop?)")));
    }
    let name_str = name.to_string_lossy();
    if is_protocol(&name_str) {
        return Err(err(format!("backing file {name_str:?} is a protocol specification, not a file")));
    }
    let full = if name.is_absolute() {
        name.clone()
    } else {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.join(name),
            _ => name.clone(),
        }
    };
    let format = match hdr.backing_format.as_deref() {
        Some("raw") => ImageFormat::Raw,
        Some("qcow2") => ImageFormat::Qcow2,
        Some(other) => {
            return Err(err(format!("backing format {other:?} of {} is unsupported", full.display())))
        }
        None => match super::detect_path(&full).map_err(|e| err(e.to_string()))? {
            f @ (ImageFormat::Raw | ImageFormat::Qcow2 | ImageFormat::Iso9660) => f,
            f => return Err(err(format!("backing file {} is in unsupported format {f}", full.display()))),
        },
    };
    super::open_image_as(&full, format, true, depth + 1).map(Some).map_err(|e| err(e.to_string()))
}

impl Qcow2<File> {
    /// Opens the qcow2 image at `path`.
    pub fn open(path: &Path, opts: &Qcow2OpenOptions) -> Result<Self, FormatError> {
        Self::open_with_depth(path, opts, 0)
    }

    /// Opens `path` as image number `depth` of a backing chain.
    pub(crate) fn open_with_depth(
        path: &Path,
        opts: &Qcow2OpenOptions,
        depth: u32,
    ) -> Result<Self, FormatError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!opts.read_only)
            .open(path)
            .map_err(|e| FormatError::io(path, "opening", e))?;
        Self::open_inner(file, path.to_path_buf(), opts, depth, None)
    }

    /// Creates a qcow2 image at `path` (truncating an existing file) and opens it read-write. A backing
    /// file named in `opts` is opened (read-only) from the new image's directory.
    pub fn create(path: &Path, opts: &Qcow2CreateOptions) -> Result<Self, FormatError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| FormatError::io(path, "creating", e))?;
        Self::create_inner(file, path.to_path_buf(), opts, None)
    }
}

impl<F: ImageFile> Qcow2<F> {
    /// Opens an image held by `file` (any [`ImageFile`], e.g. a [`MemFile`](super::io::MemFile)).
    /// `name` is used in errors and to resolve a relative backing file name. `backing`, if given,
    /// replaces whatever backing file the header names.
    pub fn open_file(
        file: F,
        name: impl Into<PathBuf>,
        opts: &Qcow2OpenOptions,
        backing: Option<Box<dyn DiskImage>>,
    ) -> Result<Self, FormatError> {
        Self::open_inner(file, name.into(), opts, 0, backing)
    }

    /// Writes a new image into `file` and opens it read-write; `backing` is the already opened backing
    /// image (if `opts` names one and this is `None`, it is opened from the file system).
    pub fn create_file(
        file: F,
        name: impl Into<PathBuf>,
        opts: &Qcow2CreateOptions,
        backing: Option<Box<dyn DiskImage>>,
    ) -> Result<Self, FormatError> {
        Self::create_inner(file, name.into(), opts, backing)
    }

    fn create_inner(
        file: F,
        path: PathBuf,
        opts: &Qcow2CreateOptions,
        backing: Option<Box<dyn DiskImage>>,
    ) -> Result<Self, FormatError> {
        let invalid = |msg: String| FormatError::Invalid { path: path.clone(), msg };
        if !(header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&opts.cluster_bits) {
            return Err(invalid(format!("cluster_bits {} out of range 9..=21", opts.cluster_bits)));
        }
        if opts.refcount_order > 6 {
            return Err(invalid(format!("refcount_order {} out of range 0..=6", opts.refcount_order)));
        }
        let size = opts.size.checked_next_multiple_of(512).ok_or_else(|| invalid("size overflows".into()))?;
        let cs = 1u64 << opts.cluster_bits;
        let mut hdr = Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: opts.cluster_bits,
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            refcount_table_offset: cs,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: opts.refcount_order,
            header_length: header::V3_HEADER_LEN,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            has_bitmaps: false,
        };
        // Extensions: backing format, feature names (if they fit), end marker; then the backing name.
        let mut ext = Vec::new();
        if let Some(fmt) = opts.backing_format {
            if opts.backing_file.is_none() {
                return Err(invalid("backing format given without a backing file".into()));
            }
            if !matches!(fmt, ImageFormat::Raw | ImageFormat::Qcow2) {
                return Err(invalid(format!("backing format {fmt} is unsupported (raw or qcow2)")));
            }
            let name = fmt.name().as_bytes();
            ext.extend_from_slice(&header::EXT_BACKING_FORMAT.to_be_bytes());
            ext.extend_from_slice(&(name.len() as u32).to_be_bytes());
            ext.extend_from_slice(name);
            ext.resize(ext.len().div_ceil(8) * 8, 0);
        }
        let names: [(u8, u8, &str); 8] = [
            (0, 0, "dirty bit"),
            (0, 1, "corrupt bit"),
            (0, 2, "external data file"),
            (0, 3, "compression type"),
            (0, 4, "extended L2 entries"),
            (1, 0, "lazy refcounts"),
            (2, 0, "bitmaps"),
            (2, 1, "raw external data"),
        ];
        let mut table = Vec::new();
        table.extend_from_slice(&header::EXT_FEATURE_TABLE.to_be_bytes());
        table.extend_from_slice(&((names.len() * 48) as u32).to_be_bytes());
        for (k, b, n) in names {
            let mut e = [0u8; 48];
            e[0] = k;
            e[1] = b;
            e[2..2 + n.len()].copy_from_slice(n.as_bytes());
            table.extend_from_slice(&e);
        }
        let backing_name: Vec<u8> = match &opts.backing_file {
            Some(p) => {
                use std::os::unix::ffi::OsStrExt;
                let b = p.as_os_str().as_bytes().to_vec();
                if b.is_empty() || b.len() > header::MAX_BACKING_NAME as usize {
                    return Err(invalid(format!(
                        "backing file name length {} out of range 1..=1023",
                        b.len()
                    )));
                }
                b
            }
            None => Vec::new(),
        };
        let base = header::V3_HEADER_LEN as usize + ext.len();
        if (base + table.len() + 8 + backing_name.len()) as u64 <= cs {
            ext.extend_from_slice(&table);
        }
        ext.extend_from_slice(&[0u8; 8]);
        let name_off = header::V3_HEADER_LEN as usize + ext.len();
        if (name_off + backing_name.len()) as u64 > cs {
            return Err(invalid(format!("backing file name does not fit a {cs}-byte first cluster")));
        }
        if !backing_name.is_empty() {
            hdr.backing_file_offset = name_off as u64;
            hdr.backing_file_size = backing_name.len() as u32;
        }
        // cs <= 2 MiB.
        let mut c0 = hdr.encode_v3();
        c0.extend_from_slice(&ext);
        c0.extend_from_slice(&backing_name);
        c0.resize(cs as usize, 0);
        let mut rt = vec![0u8; cs as usize];
        rt[..8].copy_from_slice(&(2 * cs).to_be_bytes());
        let mut rb = vec![0u8; cs as usize];
        for c in 0..3 {
            refcount::rb_set(&mut rb, opts.refcount_order, c, 1);
        }
        let ioerr = |e| FormatError::io(&path, "writing new image", e);
        file.set_len(0).map_err(ioerr)?;
        file.write_all_at(&c0, 0).map_err(ioerr)?;
        file.write_all_at(&rt, cs).map_err(ioerr)?;
        file.write_all_at(&rb, 2 * cs).map_err(ioerr)?;
        let ro = Qcow2OpenOptions { read_only: false, ..Default::default() };
        let img = Self::open_inner(file, path.clone(), &ro, 0, backing)?;
        img.resize_inner(size, true)?;
        img.flush().map_err(|source| FormatError::Block { path: path.clone(), source })?;
        Ok(img)
    }

    fn open_inner(
        file: F,
        path: PathBuf,
        opts: &Qcow2OpenOptions,
        depth: u32,
        backing: Option<Box<dyn DiskImage>>,
    ) -> Result<Self, FormatError> {
        let file_len = file.len().map_err(|e| FormatError::io(&path, "getting size", e))?;
        // Read the header: first enough for cluster_bits, then the first cluster (at most 2 MiB).
        let mut head = vec![0u8; file_len.min(512) as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| FormatError::io(&path, "reading header", e))?;
        if head.len() >= 24 {
            let cb = u32::from_be_bytes([head[20], head[21], head[22], head[23]]);
            if (header::MIN_CLUSTER_BITS..=header::MAX_CLUSTER_BITS).contains(&cb) {
                head = vec![0u8; file_len.min(1 << cb) as usize];
                file.read_exact_at(&mut head, 0).map_err(|e| FormatError::io(&path, "reading header", e))?;
            }
        }
        let hdr = Header::parse(&head, file_len, &path)?;
        drop(head);
        let rw = !opts.read_only;
        if rw && hdr.incompatible_features & INCOMPAT_DIRTY != 0 {
            return Err(FormatError::Unsupported {
                path,
                what: "writing an image that was not closed cleanly (dirty bit set): repair it with `qemu-img check -r all` first".into(),
            });
        }
        if rw && hdr.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(FormatError::Corrupt {
                path,
                msg: "the image is marked corrupt; it can only be opened read-only (or repaired with `qemu-img check -r all`)".into(),
            });
        }
        if rw && hdr.nb_snapshots > 0 {
            return Err(FormatError::Unsupported {
                path,
                what: "writing to an image with internal snapshots".into(),
            });
        }
        let cs = hdr.cluster_size();
        let corrupt = |msg: String| FormatError::Corrupt { path: path.clone(), msg };
        // Tables were checked to lie inside the file and to be at most 32 / 8 MiB.
        let mut raw = vec![0u8; hdr.l1_size as usize * 8];
        file.read_exact_at(&mut raw, hdr.l1_table_offset)
            .map_err(|e| FormatError::io(&path, "reading L1 table", e))?;
        let l1 = be64s(&raw);
        for (i, e) in l1.iter().enumerate() {
            let off = e & L1E_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                return Err(corrupt(format!(
                    "L1 entry {i}: L2 table offset {off:#x} is not cluster aligned"
                )));
            }
            if off.checked_add(cs).is_none_or(|end| end > file_len) {
                return Err(corrupt(format!(
                    "L1 entry {i}: L2 table at {off:#x} is past the end of the file ({file_len} bytes)"
                )));
            }
        }
        let mut raw = vec![0u8; hdr.refcount_table_clusters as usize * cs as usize];
        file.read_exact_at(&mut raw, hdr.refcount_table_offset)
            .map_err(|e| FormatError::io(&path, "reading refcount table", e))?;
        let rt = be64s(&raw);
        drop(raw);
        for (i, e) in rt.iter().enumerate() {
            let off = e & RT_OFFSET_MASK;
            if off == 0 {
                continue;
            }
            if !off.is_multiple_of(cs) {
                return Err(corrupt(format!(
                    "refcount table entry {i}: block offset {off:#x} is not cluster aligned"
                )));
            }
            if off.checked_add(cs).is_none_or(|end| end > file_len) {
                return Err(corrupt(format!(
                    "refcount table entry {i}: block at {off:#x} points outside the file ({file_len} bytes)"
                )));
            }
        }
        let backing = match (backing, opts.backing) {
            (Some(b), _) => Some(b),
            (None, _) if hdr.backing_file.is_none() => None,
            (None, BackingPolicy::Detached) => None,
            (None, BackingPolicy::Refuse) => {
                return Err(FormatError::Backing { path, msg: "backing files are not allowed here".into() });
            }
            (None, BackingPolicy::Open) => open_backing(&path, &hdr, depth)?,
        };
        let l2_cap = (opts.l2_cache_bytes / cs).clamp(4, 1024) as usize;
        let rb_cap = ((16u64 << 20) / cs).clamp(4, 256) as usize;
        let file = Arc::new(file);
        let mut inner = Inner {
            file: file.clone(),
            path: path.clone(),
            cb: hdr.cluster_bits,
            cs,
            size: hdr.size,
            read_only: opts.read_only,
            l1,
            l2_cache: TableCache::new(l2_cap),
            rt,
            rb_cache: TableCache::new(rb_cap),
            next_free: file_len.div_ceil(cs),
            file_len,
            backing,
            marked_dirty: false,
            last_compressed: None,
            hdr,
        };
        if rw && inner.hdr.version >= 3 && inner.hdr.autoclear_features != 0 {
            // Bits we do not understand must be cleared by a writer (bitmaps become invalid).
            inner.write_file(&0u64.to_be_bytes(), header::OFF_AUTOCLEAR, "header")?;
            inner.hdr.autoclear_features = 0;
        }
        let id = disk_id(&path);
        Ok(Self { inner: Mutex::new(inner), file, read_only: opts.read_only, path, id })
    }

    fn lock(&self) -> MutexGuard<'_, Inner<F>> {
        // A poisoned lock means a panic mid-operation; the metadata caches are still coherent with
        // what was written (every step leaves them so), so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the parsed header.
    pub fn header(&self) -> Header {
        self.lock().hdr.clone()
    }

    /// Grows the virtual disk to `new_size` bytes (rounded up to 512). Shrinking is refused.
    pub fn resize(&self, new_size: u64) -> Result<(), FormatError> {
        self.resize_inner(new_size, false)
    }

    /// `creating`: the image is new, so a larger backing file is meant to show through.
    fn resize_inner(&self, new_size: u64, creating: bool) -> Result<(), FormatError> {
        if self.read_only {
            return Err(FormatError::ReadOnly { path: self.path.clone() });
        }
        let invalid = |msg: String| FormatError::Invalid { path: self.path.clone(), msg };
        let new_size =
            new_size.checked_next_multiple_of(512).ok_or_else(|| invalid("size overflows".into()))?;
        let mut g = self.lock();
        if new_size < g.size {
            return Err(invalid(format!("shrinking from {} to {new_size} bytes is unsupported", g.size)));
        }
        if new_size == g.size {
            return Ok(());
        }
        if let Some(b) = g.backing.as_ref().filter(|_| !creating) {
            if b.size() > g.size {
                return Err(invalid(
                    "growing past the old size while the backing file is larger is unsupported".into(),
                ));
            }
        }
        let need = Header::l1_entries_for(new_size, g.cb);
        g.mark_dirty()?;
        if need > g.l1.len() as u64 {
            g.grow_l1(need)?;
        }
        g.write_file(&new_size.to_be_bytes(), header::OFF_SIZE, "header")?;
        g.size = new_size;
        g.hdr.size = new_size;
        Ok(())
    }

    /// Checks refcounts against the metadata, like `qemu-img check`.
    pub fn check(&self) -> Result<CheckReport, FormatError> {
        self.lock().check()
    }

    /// The backing image, if one is open.
    pub fn has_backing(&self) -> bool {
        self.lock().backing.is_some()
    }

    fn range(&self, size: u64, offset: u64, len: usize) -> Result<(), FormatError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(FormatError::OutOfRange { path: self.path.clone(), offset, len: len as u64, size }),
        }
    }

    /// Reads guest bytes (the [`BlockBackend::read_at`] with a [`FormatError`]).
    pub fn read_guest(&self, offset: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        self.range(self.lock().size, offset, buf.len())?;
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = offset + pos as u64;
            let rest = buf.len() - pos;
            let mut g = self.lock();
            let (n, m) = g.map_run(guest, rest as u64)?;
            // n <= rest.
            let n = (n as usize).min(rest);
            let dst = &mut buf[pos..pos + n];
            // Standard and compressed clusters are read (and inflated) without the lock: allocation is
            // append-only, so bytes a mapping pointed to are never reused for anything else.
            match m {
                inner::Mapping::Data { host } => {
                    drop(g);
                    self.file
                        .read_zero_padded(dst, host)
                        .map_err(|e| FormatError::io(&self.path, format!("reading data at {host:#x}"), e))?;
                }
                inner::Mapping::Compressed { offset, sectors } => {
                    let e = g.raw_l2_entry(guest)?;
                    let in_cluster = (guest & (g.cs - 1)) as usize;
                    match &g.last_compressed {
                        Some((k, data)) if *k == e => dst.copy_from_slice(&data[in_cluster..in_cluster + n]),
                        _ => {
                            let cs = g.cs;
                            drop(g);
                            let data = inner::inflate_cluster(&*self.file, &self.path, cs, offset, sectors)?;
                            dst.copy_from_slice(&data[in_cluster..in_cluster + n]);
                            self.lock().last_compressed = Some((e, data));
                        }
                    }
                }
                _ => g.read(guest, dst)?,
            }
            pos += n;
        }
        Ok(())
    }

    /// Writes guest bytes (the [`BlockBackend::write_at`] with a [`FormatError`]).
    pub fn write_guest(&self, offset: u64, buf: &[u8]) -> Result<(), FormatError> {
        if self.read_only {
            return Err(FormatError::ReadOnly { path: self.path.clone() });
        }
        let mut g = self.lock();
        self.range(g.size, offset, buf.len())?;
        g.write(offset, buf)
    }

    /// Writes back metadata and syncs (the [`BlockBackend::flush`] with a [`FormatError`]).
    pub fn flush_image(&self) -> Result<(), FormatError> {
        self.lock().flush()
    }
}

impl<F: ImageFile> BlockBackend for Qcow2<F> {
    fn size(&self) -> u64 {
        self.lock().size
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        Ok(self.read_guest(offset, buf)?)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), BlockError> {
        Ok(self.write_guest(offset, buf)?)
    }
    fn flush(&self) -> Result<(), BlockError> {
        Ok(self.flush_image()?)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), BlockError> {
        if self.read_only {
            return Err(BlockError::ReadOnly);
        }
        let mut g = self.lock();
        match offset.checked_add(len) {
            Some(end) if end <= g.size => {}
            _ => return Err(BlockError::OutOfRange { offset, len, size: g.size }),
        }
        Ok(g.discard(offset, len)?)
    }
    fn id(&self) -> String {
        self.id.clone()
    }
}

impl<F: ImageFile> DiskImage for Qcow2<F> {
    fn format(&self) -> ImageFormat {
        ImageFormat::Qcow2
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn extent(&self, offset: u64, max_len: u64) -> Result<Extent, FormatError> {
        let mut g = self.lock();
        let max = g.size.saturating_sub(offset).min(max_len);
        if max == 0 {
            return Ok(Extent { len: 0, kind: super::ExtentKind::Data });
        }
        g.extent(offset, max)
    }
}

impl<F: ImageFile> Drop for Qcow2<F> {
    fn drop(&mut self) {
        if self.read_only {
            return;
        }
        if let Err(e) = self.lock().flush() {
            log::error!("flushing {} on close: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests;
