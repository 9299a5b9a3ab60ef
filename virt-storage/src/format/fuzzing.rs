//! Entry points shared by the cargo-fuzz targets (`fuzz/`) and the property tests, so that CI on stable
//! exercises the same code the fuzzer does.

use std::sync::Arc;

use virt_core::block::BlockBackend;

use super::io::MemFile;
use super::qcow2::{BackingPolicy, Qcow2, Qcow2OpenOptions};
use super::{DiskImage, ExtentKind};

/// Opens `data` as a qcow2 image held in memory (backing files detached), walks and reads its first
/// extents, checks its refcounts, then reopens a copy read-write and writes to it. Must never panic
/// and never allocate more than a bound derived from `data.len()`, whatever `data` holds.
pub fn qcow2_open(data: &[u8]) {
    let opts =
        Qcow2OpenOptions { read_only: true, backing: BackingPolicy::Detached, l2_cache_bytes: 1 << 20 };
    let file = Arc::new(MemFile::new(data.to_vec(), data.len() as u64 + (16 << 20)));
    if let Ok(img) = Qcow2::open_file(file, "fuzz.qcow2", &opts, None) {
        exercise_reads(&img);
        let h = img.header();
        // Checking visits every L2 entry of every L1 entry: keep it cheap for hostile L1 tables.
        if u64::from(h.l1_size) * (h.cluster_size() / 8) <= 1 << 20 {
            let _ = img.check();
        }
    }
    let rw = Qcow2OpenOptions { read_only: false, ..opts };
    let file = Arc::new(MemFile::new(data.to_vec(), data.len() as u64 + (16 << 20)));
    if let Ok(img) = Qcow2::open_file(file, "fuzz.qcow2", &rw, None) {
        let size = img.size();
        let pattern = [0xa5u8; 4096];
        for off in [0, size / 2, size.saturating_sub(1000)] {
            let len = (size - off.min(size)).min(pattern.len() as u64) as usize;
            if img.write_at(off, &pattern[..len]).is_ok() {
                let mut back = vec![0u8; len];
                let _ = img.read_at(off, &mut back);
            }
        }
        let _ = img.flush();
    }
}

fn exercise_reads(img: &dyn DiskImage) {
    let size = img.size();
    let mut off = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    for _ in 0..64 {
        if off >= size {
            break;
        }
        let Ok(e) = img.extent(off, size - off) else { break };
        if e.len == 0 {
            break;
        }
        if e.kind == ExtentKind::Data {
            let n = e.len.min(buf.len() as u64) as usize;
            if img.read_at(off, &mut buf[..n]).is_err() {
                break;
            }
        }
        off = off.saturating_add(e.len);
    }
    // And a read straddling the end of the disk, which must fail cleanly.
    let _ = img.read_at(size.saturating_sub(10), &mut buf[..20]);
}
