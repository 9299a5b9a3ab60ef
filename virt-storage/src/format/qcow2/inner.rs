//! The qcow2 engine: cluster mapping, reads, allocating writes, metadata caches.

use std::collections::HashMap;
use std::path::PathBuf;

use super::header::{self, Header};
use crate::format::io::ImageFile;
use crate::format::{DiskImage, Extent, ExtentKind, FormatError};

/// L1 entry bits 9..=55: offset of the L2 table.
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bits 9..=55: offset of a standard cluster.
pub(crate) const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount table entry bits 9..=63: offset of a refcount block.
pub(crate) const RT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Refcount of the cluster is exactly one (may be written in place).
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
/// Compressed cluster descriptor.
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Version 3 zero flag.
pub(crate) const OFLAG_ZERO: u64 = 1;
/// Host offsets must fit the 56-bit offset fields.
pub(crate) const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Longest allowed backing chain below an image.
pub const MAX_BACKING_DEPTH: u32 = 16;

/// Where one guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mapping {
    /// Not allocated here: backing file or zeros.
    Unallocated,
    /// Reads as zeros; `host` is a preallocated cluster or 0.
    Zero { host: u64 },
    /// A standard cluster at `host` (byte offset of the requested byte, for runs).
    Data { host: u64 },
    /// A compressed cluster: compressed bytes at `offset`, spanning `sectors` 512-byte sectors.
    Compressed { offset: u64, sectors: u64 },
}

/// A cached metadata table.
pub(crate) struct Cached<T> {
    pub data: Vec<T>,
    pub dirty: bool,
    pub used: u64,
}

/// A small cache of metadata tables keyed by their host offset, evicting the least recently used.
pub(crate) struct TableCache<T> {
    pub map: HashMap<u64, Cached<T>>,
    pub cap: usize,
    clock: u64,
}

impl<T> TableCache<T> {
    pub fn new(cap: usize) -> Self {
        Self { map: HashMap::new(), cap: cap.max(2), clock: 0 }
    }
    pub fn touch(&mut self, key: u64) -> Option<&mut Cached<T>> {
        self.clock += 1;
        let c = self.clock;
        let e = self.map.get_mut(&key)?;
        e.used = c;
        Some(e)
    }
    pub fn insert(&mut self, key: u64, data: Vec<T>, dirty: bool) {
        self.clock += 1;
        self.map.insert(key, Cached { data, dirty, used: self.clock });
    }
    /// The least recently used key, if the cache is full.
    pub fn victim(&self) -> Option<u64> {
        if self.map.len() < self.cap {
            return None;
        }
        self.map.iter().min_by_key(|(_, v)| v.used).map(|(k, _)| *k)
    }
}

/// The mutable state of an open qcow2 image, behind the image's mutex.
pub(crate) struct Inner<F: ImageFile> {
    /// Shared with [`Qcow2`](super::Qcow2), which reads standard clusters without holding the lock.
    pub file: std::sync::Arc<F>,
    pub path: PathBuf,
    pub hdr: Header,
    pub cb: u32,
    pub cs: u64,
    pub size: u64,
    pub read_only: bool,
    pub l1: Vec<u64>,
    pub l2_cache: TableCache<u64>,
    pub rt: Vec<u64>,
    pub rb_cache: TableCache<u8>,
    /// First never-used cluster index (allocation is append-only).
    pub next_free: u64,
    /// Known file length.
    pub file_len: u64,
    pub backing: Option<Box<dyn DiskImage>>,
    /// Whether the dirty bit is set on disk by us.
    pub marked_dirty: bool,
    /// The last decompressed cluster: (L2 entry, data).
    pub last_compressed: Option<(u64, Vec<u8>)>,
}

impl<F: ImageFile> Inner<F> {
    pub fn corrupt(&self, msg: String) -> FormatError {
        FormatError::Corrupt { path: self.path.clone(), msg }
    }
    pub fn l2_entries(&self) -> u64 {
        self.cs / 8
    }
    pub fn bytes_per_l1(&self) -> u64 {
        self.hdr.bytes_per_l1_entry()
    }
    pub fn write_file(&mut self, buf: &[u8], off: u64, what: &str) -> Result<(), FormatError> {
        self.file
            .write_all_at(buf, off)
            .map_err(|e| FormatError::io(&self.path, format!("writing {what} at {off:#x}"), e))?;
        self.file_len = self.file_len.max(off + buf.len() as u64);
        Ok(())
    }
    pub fn sync(&mut self) -> Result<(), FormatError> {
        self.file.sync().map_err(|e| FormatError::io(&self.path, "syncing", e))
    }

    /// Classifies an L2 entry.
    pub fn classify(&self, e: u64) -> Result<Mapping, FormatError> {
        if e & OFLAG_COMPRESSED != 0 {
            let shift = 62 - (self.cb - 8);
            let offset = e & ((1u64 << shift) - 1);
            let sectors = ((e >> shift) & ((1u64 << (self.cb - 8)) - 1)) + 1;
            if offset >= self.file_len {
                return Err(self.corrupt(format!(
                    "compressed cluster at {offset:#x} is past the end of the file ({} bytes)",
                    self.file_len
                )));
            }
            return Ok(Mapping::Compressed { offset, sectors });
        }
        let host = e & L2E_OFFSET_MASK;
        if host != 0 && !host.is_multiple_of(self.cs) {
            return Err(self.corrupt(format!("data cluster offset {host:#x} is not cluster aligned")));
        }
        if e & OFLAG_ZERO != 0 {
            return Ok(Mapping::Zero { host });
        }
        if host == 0 {
            return Ok(Mapping::Unallocated);
        }
        if host >= self.file_len {
            return Err(self.corrupt(format!(
                "L2 entry points to {host:#x}, past the end of the file ({} bytes)",
                self.file_len
            )));
        }
        Ok(Mapping::Data { host })
    }

    /// Loads the L2 table at `off` into the cache.
    pub fn l2_load(&mut self, off: u64) -> Result<(), FormatError> {
        if self.l2_cache.touch(off).is_some() {
            return Ok(());
        }
        if let Some(v) = self.l2_cache.victim() {
            self.l2_evict(v)?;
        }
        // Cluster sizes are at most 2 MiB; this cannot truncate.
        let mut raw = vec![0u8; self.cs as usize];
        self.file
            .read_exact_at(&mut raw, off)
            .map_err(|e| FormatError::io(&self.path, format!("reading L2 table at {off:#x}"), e))?;
        let t = raw
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect();
        self.l2_cache.insert(off, t, false);
        Ok(())
    }

    fn l2_evict(&mut self, off: u64) -> Result<(), FormatError> {
        if self.l2_cache.map.get(&off).is_some_and(|t| t.dirty) {
            self.l2_write(off)?;
        }
        self.l2_cache.map.remove(&off);
        Ok(())
    }

    /// Writes a cached L2 table back (after the refcount blocks, so refcounts never lag mappings).
    pub fn l2_write(&mut self, off: u64) -> Result<(), FormatError> {
        self.flush_refblocks()?;
        let Some(t) = self.l2_cache.map.get_mut(&off) else { return Ok(()) };
        let raw: Vec<u8> = t.data.iter().flat_map(|e| e.to_be_bytes()).collect();
        t.dirty = false;
        self.write_file(&raw, off, "L2 table")
    }

    /// The L2 entry at `idx` of the table at `l2`.
    pub fn l2_get(&mut self, l2: u64, idx: usize) -> Result<u64, FormatError> {
        self.l2_load(l2)?;
        let t = self.l2_cache.touch(l2).ok_or_else(|| lost(&self.path, "L2 table"))?;
        Ok(t.data[idx])
    }

    /// Sets the L2 entry at `idx` of the table at `l2`.
    pub fn l2_set(&mut self, l2: u64, idx: usize, val: u64) -> Result<(), FormatError> {
        self.l2_load(l2)?;
        let t = self.l2_cache.touch(l2).ok_or_else(|| lost(&self.path, "L2 table"))?;
        t.data[idx] = val;
        t.dirty = true;
        Ok(())
    }

    /// The run starting at guest offset `guest` (at most `max` bytes) whose clusters map the same way:
    /// contiguous host data, zeros, unallocated. A compressed cluster is a run of its own.
    pub fn map_run(&mut self, guest: u64, max: u64) -> Result<(u64, Mapping), FormatError> {
        let bpl1 = self.bytes_per_l1();
        let l1i = guest / bpl1;
        let span_end = guest.saturating_add(max).min((l1i + 1).saturating_mul(bpl1));
        let in_cluster = guest & (self.cs - 1);
        // l1_size covers the disk size (checked at open) and guest < size.
        let l2 = match usize::try_from(l1i).ok().and_then(|i| self.l1.get(i)) {
            Some(e) => e & L1E_OFFSET_MASK,
            None => 0,
        };
        if l2 == 0 {
            return Ok((span_end - guest, Mapping::Unallocated));
        }
        self.l2_load(l2)?;
        let idx = ((guest >> self.cb) & (self.l2_entries() - 1)) as usize;
        let first = {
            let t = self.l2_cache.touch(l2).ok_or_else(|| lost(&self.path, "L2 table"))?;
            t.data[idx]
        };
        let first = self.classify(first)?;
        let mut len = self.cs - in_cluster;
        if !matches!(first, Mapping::Compressed { .. }) {
            let t = &self.l2_cache.map.get(&l2).ok_or_else(|| lost(&self.path, "L2 table"))?.data;
            let mut k = 1u64;
            while guest + len < span_end && idx + (k as usize) < t.len() {
                let Ok(m) = self.classify(t[idx + k as usize]) else { break };
                let same = match (first, m) {
                    (Mapping::Unallocated, Mapping::Unallocated) => true,
                    (Mapping::Zero { .. }, Mapping::Zero { .. }) => true,
                    (Mapping::Data { host: h0 }, Mapping::Data { host }) => host == h0 + k * self.cs,
                    _ => false,
                };
                if !same {
                    break;
                }
                len += self.cs;
                k += 1;
            }
        }
        let len = len.min(span_end - guest);
        let m = match first {
            Mapping::Data { host } => Mapping::Data { host: host + in_cluster },
            m => m,
        };
        Ok((len, m))
    }

    /// Decompresses the cluster described by L2 entry `e` (cached: the last one is kept).
    pub fn decompress(&mut self, e: u64, offset: u64, sectors: u64) -> Result<&[u8], FormatError> {
        if self.last_compressed.as_ref().is_none_or(|(k, _)| *k != e) {
            let out = inflate_cluster(&*self.file, &self.path, self.cs, offset, sectors)?;
            self.last_compressed = Some((e, out));
        }
        match &self.last_compressed {
            Some((_, d)) => Ok(d),
            None => Err(lost(&self.path, "decompressed cluster")),
        }
    }

    pub fn raw_l2_entry(&mut self, guest: u64) -> Result<u64, FormatError> {
        let l1i = guest / self.bytes_per_l1();
        let l2 = usize::try_from(l1i).ok().and_then(|i| self.l1.get(i)).map_or(0, |e| e & L1E_OFFSET_MASK);
        if l2 == 0 {
            return Ok(0);
        }
        let idx = ((guest >> self.cb) & (self.l2_entries() - 1)) as usize;
        self.l2_get(l2, idx)
    }

    /// Reads `buf.len()` guest bytes at `off` (the caller checked the range).
    pub fn read(&mut self, off: u64, buf: &mut [u8]) -> Result<(), FormatError> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = off + pos as u64;
            let rest = (buf.len() - pos) as u64;
            let (n, m) = self.map_run(guest, rest)?;
            // n <= rest, which came from a usize.
            let n = n.min(rest) as usize;
            let dst = &mut buf[pos..pos + n];
            match m {
                Mapping::Data { host } => {
                    self.file
                        .read_zero_padded(dst, host)
                        .map_err(|e| FormatError::io(&self.path, format!("reading data at {host:#x}"), e))?;
                }
                Mapping::Zero { .. } => dst.fill(0),
                Mapping::Unallocated => match &self.backing {
                    None => dst.fill(0),
                    Some(b) => read_backing(b.as_ref(), &self.path, guest, dst)?,
                },
                Mapping::Compressed { offset, sectors } => {
                    let e = self.raw_l2_entry(guest)?;
                    let in_cluster = (guest & (self.cs - 1)) as usize;
                    let data = self.decompress(e, offset, sectors)?;
                    dst.copy_from_slice(&data[in_cluster..in_cluster + n]);
                }
            }
            pos += n;
        }
        Ok(())
    }

    /// The extent at `offset` (the caller clipped `max` to the disk size).
    pub fn extent(&mut self, offset: u64, max: u64) -> Result<Extent, FormatError> {
        let (n, m) = self.map_run(offset, max)?;
        let n = n.min(max);
        let kind = match m {
            Mapping::Data { .. } | Mapping::Compressed { .. } => ExtentKind::Data,
            Mapping::Zero { .. } => ExtentKind::Zero,
            Mapping::Unallocated => match &self.backing {
                Some(b) if offset < b.size() => {
                    let e = b.extent(offset, n)?;
                    return Ok(Extent { len: e.len.max(1).min(n), kind: e.kind });
                }
                _ => ExtentKind::Zero,
            },
        };
        Ok(Extent { len: n, kind })
    }

    /// Sets the dirty bit (version 3) before the first metadata change after open or flush, so that a
    /// crash leaves an image that QEMU repairs on open instead of one with stale refcounts.
    pub fn mark_dirty(&mut self) -> Result<(), FormatError> {
        if self.marked_dirty || self.hdr.version < 3 {
            return Ok(());
        }
        let v = self.hdr.incompatible_features | header::INCOMPAT_DIRTY;
        self.write_file(&v.to_be_bytes(), header::OFF_INCOMPAT, "header")?;
        self.sync()?;
        self.hdr.incompatible_features = v;
        self.marked_dirty = true;
        Ok(())
    }

    /// Writes back all dirty metadata, syncs, and clears the dirty bit.
    pub fn flush(&mut self) -> Result<(), FormatError> {
        if self.read_only {
            return Ok(());
        }
        self.flush_refblocks()?;
        let dirty: Vec<u64> = self.l2_cache.map.iter().filter(|(_, t)| t.dirty).map(|(k, _)| *k).collect();
        for off in dirty {
            self.l2_write(off)?;
        }
        self.sync()?;
        if self.marked_dirty {
            let v = self.hdr.incompatible_features & !header::INCOMPAT_DIRTY;
            self.write_file(&v.to_be_bytes(), header::OFF_INCOMPAT, "header")?;
            self.sync()?;
            self.hdr.incompatible_features = v;
            self.marked_dirty = false;
        }
        Ok(())
    }

    /// Refuses in-place data writes that would land on the header, the L1 table or the refcount table
    /// (a hostile image can point data clusters there).
    fn check_overlap(&self, host: u64, len: u64) -> Result<(), FormatError> {
        let end = host.saturating_add(len);
        let hits = |start: u64, l: u64| l > 0 && host < start.saturating_add(l) && start < end;
        if hits(0, self.cs)
            || hits(self.hdr.l1_table_offset, u64::from(self.hdr.l1_size) * 8)
            || hits(self.hdr.refcount_table_offset, u64::from(self.hdr.refcount_table_clusters) * self.cs)
        {
            return Err(self.corrupt(format!("data write at {host:#x} would overwrite image metadata")));
        }
        Ok(())
    }

    /// The L2 table for L1 index `l1i`, allocating it if needed.
    fn ensure_l2(&mut self, l1i: usize) -> Result<u64, FormatError> {
        let e = self.l1[l1i];
        let off = e & L1E_OFFSET_MASK;
        if off != 0 {
            return Ok(off);
        }
        let off = self.alloc_clusters(1)?;
        // At most 2 MiB.
        self.write_file(&vec![0u8; self.cs as usize], off, "new L2 table")?;
        if let Some(v) = self.l2_cache.victim() {
            self.l2_evict(v)?;
        }
        self.l2_cache.insert(off, vec![0; self.l2_entries() as usize], false);
        self.before_mapping_write()?;
        let entry = off | OFLAG_COPIED;
        let at = self.hdr.l1_table_offset + l1i as u64 * 8;
        self.write_file(&entry.to_be_bytes(), at, "L1 entry")?;
        self.l1[l1i] = entry;
        Ok(off)
    }

    /// Version 2 has no dirty bit: make refcounts durable before mappings that depend on them.
    fn before_mapping_write(&mut self) -> Result<(), FormatError> {
        if self.hdr.version < 3 {
            self.flush_refblocks()?;
            self.sync()?;
        }
        Ok(())
    }

    /// Reads the current guest contents of the cluster containing `guest` (clipped to the disk size).
    fn read_cluster(&mut self, guest: u64) -> Result<Vec<u8>, FormatError> {
        let base = guest & !(self.cs - 1);
        // At most 2 MiB.
        let mut c = vec![0u8; self.cs as usize];
        let n = self.cs.min(self.size - base) as usize;
        self.read(base, &mut c[..n])?;
        Ok(c)
    }

    /// Writes guest bytes (the caller checked the range and read-only).
    pub fn write(&mut self, off: u64, buf: &[u8]) -> Result<(), FormatError> {
        let mut pos = 0usize;
        while pos < buf.len() {
            let guest = off + pos as u64;
            let bpl1 = self.bytes_per_l1();
            let l1i = guest / bpl1;
            let span_end = (off + buf.len() as u64).min((l1i + 1) * bpl1);
            // l1_size covers the disk, so l1i indexes l1.
            let l1i = usize::try_from(l1i).ok().filter(|i| *i < self.l1.len()).ok_or_else(|| {
                self.corrupt(format!("guest offset {guest} is not covered by the L1 table"))
            })?;
            let l2 = self.ensure_l2(l1i)?;
            let idx = ((guest >> self.cb) & (self.l2_entries() - 1)) as usize;
            let in_cluster = guest & (self.cs - 1);
            let first = self.l2_get(l2, idx)?;
            // In place: a run of standard clusters.
            if let Mapping::Data { host } = self.classify(first)? {
                let (n, m) = self.map_run(guest, span_end - guest)?;
                let h = match m {
                    Mapping::Data { host: h } if h == host + in_cluster => h,
                    _ => return Err(self.corrupt("mapping changed under a write".into())),
                };
                self.check_overlap(h, n)?;
                let n = n as usize;
                self.write_file(&buf[pos..pos + n], h, "guest data")?;
                pos += n;
                continue;
            }
            // Allocation: count following clusters in this write that are not standard clusters.
            let mut count = 1u64;
            let clusters_in_span = (span_end - (guest - in_cluster)).div_ceil(self.cs);
            while count < clusters_in_span {
                let e = self.l2_get(l2, idx + count as usize)?;
                if matches!(self.classify(e), Ok(Mapping::Data { .. })) {
                    break;
                }
                count += 1;
            }
            let run_start = guest - in_cluster;
            let run_end_full = run_start + count * self.cs;
            let write_end = span_end.min(run_end_full);
            // Old contents of partially written clusters (head and tail), before anything changes.
            let mut head = if in_cluster != 0 || write_end < run_start + self.cs {
                Some(self.read_cluster(run_start)?)
            } else {
                None
            };
            let tail_start = run_end_full - self.cs;
            let mut tail = if count > 1 && write_end < run_end_full {
                Some(self.read_cluster(tail_start)?)
            } else {
                None
            };
            let has_tail = tail.is_some();
            let host = self.alloc_clusters(count)?;
            let n = (write_end - guest) as usize;
            let data = &buf[pos..pos + n];
            // Write the head cluster, the full middle clusters straight from `buf`, the tail cluster.
            let mut g = run_start;
            let mut d = 0usize;
            while g < write_end {
                let h = host + (g - run_start);
                let partial = if g == run_start && head.is_some() {
                    head.take()
                } else if g == tail_start {
                    tail.take()
                } else {
                    None
                };
                if let Some(mut c) = partial {
                    let from = (guest.max(g) - g) as usize;
                    let to = (write_end.min(g + self.cs) - g) as usize;
                    c[from..to].copy_from_slice(&data[d..d + (to - from)]);
                    d += to - from;
                    self.write_file(&c, h, "guest data")?;
                    g += self.cs;
                } else {
                    // Full clusters up to the tail (or the end).
                    let stop = if has_tail { tail_start } else { write_end };
                    let l = (stop - g) as usize;
                    self.write_file(&data[d..d + l], h, "guest data")?;
                    d += l;
                    g = stop;
                }
            }
            // Map the new clusters, then free what they replace.
            self.before_mapping_write()?;
            for j in 0..count {
                let i = idx + j as usize;
                let old = self.l2_get(l2, i)?;
                self.l2_set(l2, i, (host + j * self.cs) | OFLAG_COPIED)?;
                match self.classify(old) {
                    Ok(Mapping::Compressed { offset, sectors }) => {
                        self.free_range(offset & !511, sectors * 512)?;
                        if self.last_compressed.as_ref().is_some_and(|(k, _)| *k == old) {
                            self.last_compressed = None;
                        }
                    }
                    Ok(Mapping::Zero { host }) if host != 0 => self.free_range(host, self.cs)?,
                    _ => {}
                }
            }
            pos += n;
        }
        Ok(())
    }
}

/// Reads `dst` at `guest` from a backing image, zero-filling past its end.
fn read_backing(
    b: &dyn DiskImage,
    path: &std::path::Path,
    guest: u64,
    dst: &mut [u8],
) -> Result<(), FormatError> {
    let bsize = b.size();
    let avail = bsize.saturating_sub(guest).min(dst.len() as u64) as usize;
    if avail > 0 {
        b.read_at(guest, &mut dst[..avail])
            .map_err(|source| FormatError::Block { path: path.to_path_buf(), source })?;
    }
    dst[avail..].fill(0);
    Ok(())
}

/// A cache entry that was just loaded is missing: cannot happen (loading inserts it and nothing in
/// between evicts), reported as corruption rather than a panic.
pub(crate) fn lost(path: &std::path::Path, what: &str) -> FormatError {
    FormatError::Corrupt { path: path.to_path_buf(), msg: format!("metadata cache lost a {what}") }
}

/// Reads and inflates one compressed cluster (raw deflate) of `cs` bytes: `sectors` 512-byte sectors
/// starting at byte `offset`, the part past end of file read as zeros as QEMU does.
pub(crate) fn inflate_cluster<F: ImageFile>(
    file: &F,
    path: &std::path::Path,
    cs: u64,
    offset: u64,
    sectors: u64,
) -> Result<Vec<u8>, FormatError> {
    // sectors <= 2^(cluster_bits-8), so this is at most 2 * cluster size (4 MiB).
    let csize = (sectors * 512 - (offset & 511)) as usize;
    let mut input = vec![0u8; csize];
    file.read_zero_padded(&mut input, offset)
        .map_err(|e| FormatError::io(path, format!("reading compressed cluster at {offset:#x}"), e))?;
    // cs <= 2 MiB.
    let mut out = vec![0u8; cs as usize];
    let mut d = flate2::Decompress::new(false);
    let r = d.decompress(&input, &mut out, flate2::FlushDecompress::Finish);
    if r.is_err() || d.total_out() != cs {
        return Err(FormatError::Corrupt {
            path: path.to_path_buf(),
            msg: format!(
                "compressed cluster at {offset:#x} does not inflate to {cs} bytes ({})",
                match r {
                    Err(e) => e.to_string(),
                    Ok(_) => format!("got {}", d.total_out()),
                }
            ),
        });
    }
    Ok(out)
}

impl<F: ImageFile> Inner<F> {
    /// Unmaps the clusters wholly inside `off..off+len` (the caller checked the range): they read as
    /// zeros afterwards (unallocated without a backing file, the zero flag with one) and their space
    /// is freed. Partial clusters at the edges, and version 2 images with a backing file (which cannot
    /// express "zero, not backing"), are left alone: discard is advisory.
    pub fn discard(&mut self, off: u64, len: u64) -> Result<(), FormatError> {
        let first = off.div_ceil(self.cs);
        let end = (off + len) / self.cs;
        let has_backing = self.backing.is_some();
        if first >= end || (has_backing && self.hdr.version < 3) {
            return Ok(());
        }
        for c in first..end {
            let guest = c * self.cs;
            let l1i = guest / self.bytes_per_l1();
            let Some(l1i) = usize::try_from(l1i).ok().filter(|i| *i < self.l1.len()) else { break };
            let l2 = if self.l1[l1i] & L1E_OFFSET_MASK != 0 {
                self.l1[l1i] & L1E_OFFSET_MASK
            } else if has_backing {
                self.mark_dirty()?;
                self.ensure_l2(l1i)?
            } else {
                continue;
            };
            let idx = (c & (self.l2_entries() - 1)) as usize;
            let old = self.l2_get(l2, idx)?;
            let new = if has_backing { OFLAG_ZERO } else { 0 };
            if old == new {
                continue;
            }
            let m = self.classify(old)?;
            self.mark_dirty()?;
            self.before_mapping_write()?;
            self.l2_set(l2, idx, new)?;
            match m {
                Mapping::Data { host } | Mapping::Zero { host } if host != 0 => {
                    self.free_range(host, self.cs)?
                }
                Mapping::Compressed { offset, sectors } => {
                    self.free_range(offset & !511, sectors * 512)?;
                    if self.last_compressed.as_ref().is_some_and(|(k, _)| *k == old) {
                        self.last_compressed = None;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
