//! Refcounts: the table, cached blocks, allocation (append-only), table growth and a consistency check.

use super::header::{self, MAX_REFTABLE_BYTES};
use super::inner::{
    lost, Inner, Mapping, L1E_OFFSET_MASK, MAX_HOST_OFFSET, OFLAG_COMPRESSED, OFLAG_COPIED, RT_OFFSET_MASK,
};
use crate::format::io::ImageFile;
use crate::format::FormatError;

/// Reads entry `i` of a refcount block with entries of `1 << order` bits.
pub(crate) fn rb_get(b: &[u8], order: u32, i: usize) -> u64 {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = i * bits;
            u64::from((b[bit / 8] >> (bit % 8)) & ((1u8 << bits) - 1))
        }
        3 => u64::from(b[i]),
        4 => u64::from(u16::from_be_bytes([b[2 * i], b[2 * i + 1]])),
        5 => u64::from(u32::from_be_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])),
        _ => {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[8 * i..8 * i + 8]);
            u64::from_be_bytes(a)
        }
    }
}

/// Writes entry `i` of a refcount block (`v` must fit the width).
pub(crate) fn rb_set(b: &mut [u8], order: u32, i: usize, v: u64) {
    match order {
        0..=2 => {
            let bits = 1usize << order;
            let bit = i * bits;
            let mask = ((1u8 << bits) - 1) << (bit % 8);
            // v fits in `bits` bits (checked by the caller), at most 4.
            b[bit / 8] = (b[bit / 8] & !mask) | (((v as u8) << (bit % 8)) & mask);
        }
        // The casts keep the low bits; the caller checked that v fits the width.
        3 => b[i] = v as u8,
        4 => b[2 * i..2 * i + 2].copy_from_slice(&(v as u16).to_be_bytes()),
        5 => b[4 * i..4 * i + 4].copy_from_slice(&(v as u32).to_be_bytes()),
        _ => b[8 * i..8 * i + 8].copy_from_slice(&v.to_be_bytes()),
    }
}

/// What [`Qcow2::check`](super::Qcow2::check) found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// Inconsistencies that make the image unsafe to write (refcount too low, bad pointers, ...).
    pub errors: Vec<String>,
    /// Clusters whose refcount is higher than their use (harmless waste).
    pub leaks: u64,
    /// Clusters referenced by the metadata.
    pub allocated_clusters: u64,
}

impl CheckReport {
    /// No errors and no leaks.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty() && self.leaks == 0
    }
}

impl<F: ImageFile> Inner<F> {
    fn order(&self) -> u32 {
        self.hdr.refcount_order
    }
    /// log2 of the refcount entries per block.
    fn rpb_bits(&self) -> u32 {
        self.cb + 3 - self.order()
    }
    fn max_refcount(&self) -> u64 {
        if self.order() == 6 {
            u64::MAX
        } else {
            (1u64 << (1u32 << self.order())) - 1
        }
    }

    fn rb_load(&mut self, off: u64) -> Result<(), FormatError> {
        if self.rb_cache.touch(off).is_some() {
            return Ok(());
        }
        if let Some(v) = self.rb_cache.victim() {
            if self.rb_cache.map.get(&v).is_some_and(|b| b.dirty) {
                self.rb_write(v)?;
            }
            self.rb_cache.map.remove(&v);
        }
        // At most 2 MiB.
        let mut b = vec![0u8; self.cs as usize];
        self.file
            .read_exact_at(&mut b, off)
            .map_err(|e| FormatError::io(&self.path, format!("reading refcount block at {off:#x}"), e))?;
        self.rb_cache.insert(off, b, false);
        Ok(())
    }

    fn rb_write(&mut self, off: u64) -> Result<(), FormatError> {
        let Some(b) = self.rb_cache.map.get_mut(&off) else { return Ok(()) };
        b.dirty = false;
        let data = std::mem::take(&mut b.data);
        let r = self.write_file(&data, off, "refcount block");
        if let Some(b) = self.rb_cache.map.get_mut(&off) {
            b.data = data;
        }
        r
    }

    /// Writes all dirty refcount blocks.
    pub fn flush_refblocks(&mut self) -> Result<(), FormatError> {
        let dirty: Vec<u64> = self.rb_cache.map.iter().filter(|(_, b)| b.dirty).map(|(k, _)| *k).collect();
        for off in dirty {
            self.rb_write(off)?;
        }
        Ok(())
    }

    /// The refcount block offset and entry index for `cluster` (offset 0: no block).
    fn rb_locate(&self, cluster: u64) -> (u64, usize) {
        let bi = cluster >> self.rpb_bits();
        let i = (cluster & ((1u64 << self.rpb_bits()) - 1)) as usize;
        let off = usize::try_from(bi).ok().and_then(|b| self.rt.get(b)).map_or(0, |e| e & RT_OFFSET_MASK);
        (off, i)
    }

    /// Refcount of host cluster `cluster`.
    pub fn rc_get(&mut self, cluster: u64) -> Result<u64, FormatError> {
        let (off, i) = self.rb_locate(cluster);
        if off == 0 {
            return Ok(0);
        }
        self.rb_load(off)?;
        let order = self.order();
        let b = self.rb_cache.touch(off).ok_or_else(|| lost(&self.path, "refcount block"))?;
        Ok(rb_get(&b.data, order, i))
    }

    /// Sets the refcount of host cluster `cluster`; its block must exist.
    pub fn rc_set(&mut self, cluster: u64, v: u64) -> Result<(), FormatError> {
        if v > self.max_refcount() {
            return Err(self.corrupt(format!(
                "refcount of cluster {cluster} would overflow {} bits",
                1u32 << self.order()
            )));
        }
        let (off, i) = self.rb_locate(cluster);
        if off == 0 {
            return Err(self.corrupt(format!("no refcount block covers cluster {cluster}")));
        }
        self.rb_load(off)?;
        let order = self.order();
        let b = self.rb_cache.touch(off).ok_or_else(|| lost(&self.path, "refcount block"))?;
        rb_set(&mut b.data, order, i, v);
        b.dirty = true;
        Ok(())
    }

    /// Drops one reference from every cluster touching bytes `off..off+len`.
    pub fn free_range(&mut self, off: u64, len: u64) -> Result<(), FormatError> {
        if len == 0 {
            return Ok(());
        }
        let first = off >> self.cb;
        let last = (off + len - 1) >> self.cb;
        // Runs of clusters that became free get their space back from the file system.
        let mut hole: Option<(u64, u64)> = None;
        for c in first..=last {
            let v = self.rc_get(c)?;
            if v == 0 {
                return Err(self.corrupt(format!("freeing cluster {c} whose refcount is already 0")));
            }
            self.rc_set(c, v - 1)?;
            hole = match (hole, v == 1) {
                (Some((s, e)), true) if e == c => Some((s, c + 1)),
                (h, true) => {
                    self.punch(h)?;
                    Some((c, c + 1))
                }
                (h, false) => {
                    self.punch(h)?;
                    None
                }
            };
        }
        self.punch(hole)
    }

    /// Punches the clusters `start..end` out of the file (they are free; allocation never reuses them).
    fn punch(&mut self, run: Option<(u64, u64)>) -> Result<(), FormatError> {
        let Some((s, e)) = run else { return Ok(()) };
        let (off, len) = (s * self.cs, (e - s) * self.cs);
        self.file
            .punch_hole(off, len)
            .map_err(|err| FormatError::io(&self.path, format!("punching {len} bytes at {off:#x}"), err))
    }

    /// Allocates `n` contiguous new clusters at the end of the image; returns the byte offset.
    pub fn alloc_clusters(&mut self, n: u64) -> Result<u64, FormatError> {
        self.mark_dirty()?;
        'retry: loop {
            let start = self.next_free;
            let end = start
                .checked_add(n)
                .filter(|e| e.checked_mul(self.cs).is_some_and(|b| b <= MAX_HOST_OFFSET))
                .ok_or_else(|| self.corrupt("image file would exceed the largest qcow2 offset".into()))?;
            for bi in (start >> self.rpb_bits())..=((end - 1) >> self.rpb_bits()) {
                // bi < 2^56 / 512 fits usize on 64-bit hosts; on others the table is smaller anyway.
                let bi_us = usize::try_from(bi).unwrap_or(usize::MAX);
                if bi_us >= self.rt.len() {
                    self.grow_reftable(bi_us + 1)?;
                    continue 'retry;
                }
                if self.rt[bi_us] & RT_OFFSET_MASK == 0 {
                    self.new_refblock(bi_us)?;
                    continue 'retry;
                }
            }
            for c in start..end {
                if self.rc_get(c)? != 0 {
                    return Err(
                        self.corrupt(format!("cluster {c} past the end of the image already has a refcount"))
                    );
                }
                self.rc_set(c, 1)?;
            }
            self.next_free = end;
            return Ok(start * self.cs);
        }
    }

    /// Creates refcount block `bi` at the next free cluster.
    fn new_refblock(&mut self, bi: usize) -> Result<(), FormatError> {
        let c = self.next_free;
        let off = c * self.cs;
        // At most 2 MiB.
        self.write_file(&vec![0u8; self.cs as usize], off, "new refcount block")?;
        if let Some(v) = self.rb_cache.victim() {
            if self.rb_cache.map.get(&v).is_some_and(|b| b.dirty) {
                self.rb_write(v)?;
            }
            self.rb_cache.map.remove(&v);
        }
        self.rb_cache.insert(off, vec![0u8; self.cs as usize], false);
        self.write_file(
            &off.to_be_bytes(),
            self.hdr.refcount_table_offset + bi as u64 * 8,
            "refcount table entry",
        )?;
        self.rt[bi] = off;
        self.next_free = c + 1;
        // The block's own cluster is covered by itself or by an earlier, existing block.
        self.rc_set(c, 1)
    }

    /// Moves the refcount table to a larger one with at least `min_entries` entries at the end of the
    /// file, together with any refcount blocks needed to describe the new clusters themselves.
    fn grow_reftable(&mut self, min_entries: usize) -> Result<(), FormatError> {
        let epc = (self.cs / 8) as usize;
        let mut want = min_entries.max(self.rt.len() + self.rt.len() / 2 + 1);
        let t = self.next_free;
        let (k, missing) = loop {
            let k = want.div_ceil(epc) as u64;
            let mut missing: Vec<u64> = Vec::new();
            loop {
                let area_end = t + k + missing.len() as u64;
                let now: Vec<u64> = ((t >> self.rpb_bits())..=((area_end - 1) >> self.rpb_bits()))
                    .filter(|&bi| {
                        usize::try_from(bi)
                            .ok()
                            .and_then(|b| self.rt.get(b))
                            .is_none_or(|e| e & RT_OFFSET_MASK == 0)
                    })
                    .collect();
                if now.len() == missing.len() {
                    break;
                }
                missing = now;
            }
            let needed = missing.last().map_or(0, |b| *b as usize + 1).max(min_entries);
            if needed <= k as usize * epc {
                break (k, missing);
            }
            want = needed;
        };
        if k * self.cs > MAX_REFTABLE_BYTES {
            return Err(FormatError::Unsupported {
                path: self.path.clone(),
                what: format!("growing the refcount table beyond {MAX_REFTABLE_BYTES} bytes"),
            });
        }
        let m = missing.len() as u64;
        if (t + k + m).checked_mul(self.cs).is_none_or(|b| b > MAX_HOST_OFFSET) {
            return Err(self.corrupt("image file would exceed the largest qcow2 offset".into()));
        }
        self.flush_refblocks()?;
        let old = (self.hdr.refcount_table_offset, u64::from(self.hdr.refcount_table_clusters));
        let mut rt = self.rt.clone();
        rt.resize(k as usize * epc, 0);
        for (j, bi) in missing.iter().enumerate() {
            let off = (t + k + j as u64) * self.cs;
            self.write_file(&vec![0u8; self.cs as usize], off, "new refcount block")?;
            self.rb_cache.insert(off, vec![0u8; self.cs as usize], false);
            rt[*bi as usize] = off;
        }
        self.rt = rt;
        for c in t..t + k + m {
            self.rc_set(c, 1)?;
        }
        let raw: Vec<u8> = self.rt.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.write_file(&raw, t * self.cs, "refcount table")?;
        self.flush_refblocks()?;
        self.sync()?;
        let mut hdr = Vec::with_capacity(12);
        hdr.extend_from_slice(&(t * self.cs).to_be_bytes());
        // k * cs <= 8 MiB, so k fits u32.
        hdr.extend_from_slice(&(k as u32).to_be_bytes());
        self.write_file(&hdr, header::OFF_REFTABLE, "header")?;
        self.sync()?;
        self.hdr.refcount_table_offset = t * self.cs;
        self.hdr.refcount_table_clusters = k as u32;
        self.next_free = t + k + m;
        self.free_range(old.0, old.1 * self.cs)?;
        // Trim cache entries of blocks that are no longer tables (none are: only the table moved).
        Ok(())
    }

    /// Grows the L1 table to at least `need` entries (moving it to the end of the file).
    pub fn grow_l1(&mut self, need: u64) -> Result<(), FormatError> {
        let max = header::MAX_L1_BYTES / 8;
        if need > max {
            return Err(FormatError::Invalid {
                path: self.path.clone(),
                msg: format!(
                    "disk size needs {need} L1 entries, more than {max} with {}-byte clusters",
                    self.cs
                ),
            });
        }
        let old_len = self.l1.len() as u64;
        let new_len = if old_len == 0 { need } else { need.max(old_len + old_len / 2).min(max) };
        let clusters = (new_len * 8).div_ceil(self.cs);
        let off = self.alloc_clusters(clusters)?;
        let mut l1 = self.l1.clone();
        // new_len <= 4 Mi entries.
        l1.resize(new_len as usize, 0);
        let mut raw: Vec<u8> = l1.iter().flat_map(|e| e.to_be_bytes()).collect();
        raw.resize((clusters * self.cs) as usize, 0);
        self.write_file(&raw, off, "L1 table")?;
        self.flush_refblocks()?;
        self.sync()?;
        let mut hdr = Vec::with_capacity(12);
        // new_len <= 4 Mi, fits u32.
        hdr.extend_from_slice(&(new_len as u32).to_be_bytes());
        hdr.extend_from_slice(&off.to_be_bytes());
        self.write_file(&hdr, header::OFF_L1, "header")?;
        self.sync()?;
        let old_off = self.hdr.l1_table_offset;
        self.hdr.l1_size = new_len as u32;
        self.hdr.l1_table_offset = off;
        self.l1 = l1;
        if old_len > 0 {
            self.free_range(old_off, old_len * 8)?;
        }
        Ok(())
    }

    /// Recomputes every cluster's refcount from the metadata and compares with the stored ones, like
    /// `qemu-img check` does (internal snapshots are not followed).
    pub fn check(&mut self) -> Result<CheckReport, FormatError> {
        self.flush_refblocks()?;
        let mut rep = CheckReport::default();
        let nclusters = self.file_len.div_ceil(self.cs);
        // One counter per cluster of the file: bounded by the file size.
        let mut expect = vec![0u32; usize::try_from(nclusters).unwrap_or(0)];
        let cs = self.cs;
        let mut add = |rep: &mut CheckReport, off: u64, len: u64, what: &str| {
            if len == 0 {
                return;
            }
            for c in (off / cs)..=((off + len - 1) / cs) {
                match expect.get_mut(c as usize) {
                    Some(e) => *e = e.saturating_add(1),
                    None => rep.errors.push(format!("{what} at {off:#x} is past the end of the file")),
                }
            }
        };
        add(&mut rep, 0, cs, "header");
        add(&mut rep, self.hdr.l1_table_offset, u64::from(self.hdr.l1_size) * 8, "L1 table");
        add(
            &mut rep,
            self.hdr.refcount_table_offset,
            u64::from(self.hdr.refcount_table_clusters) * cs,
            "refcount table",
        );
        if self.hdr.nb_snapshots > 0 {
            rep.errors.push("internal snapshots are not checked".into());
        }
        let blocks: Vec<u64> = self.rt.iter().map(|e| e & RT_OFFSET_MASK).collect();
        for &b in blocks.iter().filter(|b| **b != 0) {
            add(&mut rep, b, cs, "refcount block");
        }
        let mut copied_checks: Vec<(u64, u64, &'static str)> = Vec::new();
        for i in 0..self.l1.len() {
            let e = self.l1[i];
            let l2 = e & L1E_OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            add(&mut rep, l2, cs, "L2 table");
            copied_checks.push((l2, e, "L1"));
            for j in 0..self.l2_entries() as usize {
                let le = self.l2_get(l2, j)?;
                match self.classify(le) {
                    Ok(Mapping::Data { host }) | Ok(Mapping::Zero { host }) if host != 0 => {
                        add(&mut rep, host, cs, "data cluster");
                        copied_checks.push((host, le, "L2"));
                    }
                    Ok(Mapping::Compressed { offset, sectors }) => {
                        if le & OFLAG_COPIED != 0 {
                            rep.errors.push(format!("compressed L2 entry {le:#x} has the copied flag"));
                        }
                        add(&mut rep, offset & !511, sectors * 512, "compressed cluster");
                    }
                    Ok(_) => {}
                    Err(e) => rep.errors.push(e.to_string()),
                }
            }
        }
        for (host, entry, what) in copied_checks {
            let rc = self.rc_get(host / cs)?;
            if (rc == 1) != (entry & OFLAG_COPIED != 0) && entry & OFLAG_COMPRESSED == 0 {
                rep.errors.push(format!("{what} entry {entry:#x}: copied flag does not match refcount {rc}"));
            }
        }
        rep.allocated_clusters = expect.iter().filter(|e| **e > 0).count() as u64;
        let rpb = 1u64 << self.rpb_bits();
        for (bi, &b) in blocks.iter().enumerate() {
            if b == 0 {
                continue;
            }
            for i in 0..rpb {
                let c = bi as u64 * rpb + i;
                let stored = self.rc_get(c)?;
                let want = expect.get(c as usize).copied().map_or(0, u64::from);
                if stored < want {
                    rep.errors.push(format!("cluster {c}: refcount {stored}, referenced {want} times"));
                } else if stored > want {
                    rep.leaks += 1;
                }
            }
        }
        for (c, &want) in expect.iter().enumerate() {
            if want > 0 && self.rb_locate(c as u64).0 == 0 {
                rep.errors.push(format!("cluster {c} is used but no refcount block covers it"));
            }
        }
        Ok(rep)
    }
}
