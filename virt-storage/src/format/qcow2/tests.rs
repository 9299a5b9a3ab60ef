//! Unit tests of the qcow2 code on in-memory images.

use std::sync::Arc;

use virt_core::block::{BlockBackend, MemDisk};

use super::header::*;
use super::*;
use crate::format::io::MemFile;
use crate::format::PlainBackend;

pub(crate) fn mem(data: Vec<u8>) -> Arc<MemFile> {
    Arc::new(MemFile::new(data, 1 << 30))
}

fn rw() -> Qcow2OpenOptions {
    Qcow2OpenOptions { read_only: false, backing: BackingPolicy::Detached, ..Default::default() }
}

fn ro() -> Qcow2OpenOptions {
    Qcow2OpenOptions { read_only: true, backing: BackingPolicy::Detached, ..Default::default() }
}

/// A fresh image in memory, returning the image and its file.
pub(crate) fn new_image(
    size: u64,
    cluster_bits: u32,
    refcount_order: u32,
) -> (Qcow2<Arc<MemFile>>, Arc<MemFile>) {
    let f = mem(Vec::new());
    let opts = Qcow2CreateOptions { size, cluster_bits, refcount_order, ..Default::default() };
    let img = Qcow2::create_file(f.clone(), "mem.qcow2", &opts, None).unwrap();
    (img, f)
}

/// Bytes of a valid small image (1 MiB, 4 KiB clusters) with some data written.
fn sample_bytes() -> Vec<u8> {
    let (img, f) = new_image(1 << 20, 12, 4);
    img.write_at(0, &[1u8; 5000]).unwrap();
    img.write_at(700_000, &[2u8; 100]).unwrap();
    img.flush().unwrap();
    drop(img);
    f.contents()
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

fn open_err(bytes: Vec<u8>, opts: &Qcow2OpenOptions) -> String {
    match Qcow2::open_file(mem(bytes), "/x/y.qcow2", opts, None) {
        Ok(_) => panic!("opened a broken image"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn create_write_read_reopen_check() {
    let (img, f) = new_image(10 << 20, 16, 4);
    assert_eq!(img.size(), 10 << 20);
    let mut b = vec![0u8; 3000];
    img.read_at(12345, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    img.write_at(65_000, &data).unwrap();
    img.write_at(10, b"hello").unwrap();
    let mut back = vec![0u8; data.len()];
    img.read_at(65_000, &mut back).unwrap();
    assert_eq!(back, data);
    img.flush().unwrap();
    let rep = img.check().unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    drop(img);
    let img = Qcow2::open_file(mem(f.contents()), "mem.qcow2", &ro(), None).unwrap();
    img.read_at(65_000, &mut back).unwrap();
    assert_eq!(back, data);
    let mut h = [0u8; 5];
    img.read_at(10, &mut h).unwrap();
    assert_eq!(&h, b"hello");
    assert_eq!(img.header().incompatible_features & INCOMPAT_DIRTY, 0);
}

#[test]
fn dirty_bit_is_set_while_metadata_is_unflushed() {
    let (img, f) = new_image(1 << 20, 16, 4);
    img.write_at(0, b"x").unwrap();
    let raw = f.contents();
    assert_eq!(u64::from_be_bytes(raw[72..80].try_into().unwrap()) & INCOMPAT_DIRTY, INCOMPAT_DIRTY);
    // A writer refuses the dirty image; a reader takes it.
    let e = open_err(raw.clone(), &rw());
    assert!(e.contains("dirty"), "{e}");
    Qcow2::open_file(mem(raw), "m", &ro(), None).unwrap();
    img.flush().unwrap();
    assert_eq!(u64::from_be_bytes(f.contents()[72..80].try_into().unwrap()) & INCOMPAT_DIRTY, 0);
}

#[test]
fn every_refcount_width_and_small_clusters_stay_consistent() {
    for order in 0..=6 {
        for cb in [9, 12] {
            let (img, _f) = new_image(4 << 20, cb, order);
            let mut model = vec![0u8; 4 << 20];
            for i in 0..300u64 {
                let off = (i * 7919 * 13) % ((4 << 20) - 3000);
                let len = 1 + (i * 37 % 2900) as usize;
                let v = vec![(i % 255 + 1) as u8; len];
                img.write_at(off, &v).unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&v);
            }
            img.flush().unwrap();
            let rep = img.check().unwrap();
            assert!(rep.is_clean(), "order {order} cb {cb}: {rep:?}");
            let mut back = vec![0u8; 4 << 20];
            img.read_at(0, &mut back).unwrap();
            assert!(back == model, "order {order} cb {cb}");
        }
    }
}

#[test]
fn refcount_table_grows() {
    // 512-byte clusters, 16-bit refcounts: a block covers 256 clusters, the first table 64 blocks,
    // i.e. 8 MiB of file. Writing 16 MiB forces the table to move.
    let (img, f) = new_image(32 << 20, 9, 4);
    let before = img.header().refcount_table_offset;
    let chunk = vec![0x5au8; 1 << 20];
    for i in 0..16u64 {
        img.write_at(i << 20, &chunk).unwrap();
    }
    img.flush().unwrap();
    let h = img.header();
    assert_ne!(h.refcount_table_offset, before);
    assert!(h.refcount_table_clusters > 1);
    let rep = img.check().unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    drop(img);
    let img = Qcow2::open_file(mem(f.contents()), "m", &ro(), None).unwrap();
    let mut b = vec![0u8; 1 << 20];
    img.read_at(15 << 20, &mut b).unwrap();
    assert_eq!(b, chunk);
}

#[test]
fn resize_grows_l1_and_keeps_data() {
    let (img, _f) = new_image(1 << 20, 9, 4);
    img.write_at(1000, b"abc").unwrap();
    img.resize(100 << 20).unwrap();
    assert!(img.header().l1_size as u64 >= Header::l1_entries_for(100 << 20, 9));
    img.write_at((100 << 20) - 3, b"xyz").unwrap();
    let mut b = [0u8; 3];
    img.read_at(1000, &mut b).unwrap();
    assert_eq!(&b, b"abc");
    img.flush().unwrap();
    assert!(img.check().unwrap().is_clean());
    assert!(img.resize(1 << 20).is_err());
}

#[test]
fn copy_on_write_from_backing() {
    let base: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 253) as u8).collect();
    let backing: Box<dyn DiskImage> =
        Box::new(PlainBackend::new(MemDisk::from_bytes(base.clone(), true), "base"));
    let f = mem(Vec::new());
    let opts = Qcow2CreateOptions {
        size: 1 << 20,
        cluster_bits: 12,
        backing_file: Some("base.raw".into()),
        backing_format: Some(ImageFormat::Raw),
        ..Default::default()
    };
    let img = Qcow2::create_file(f.clone(), "ov.qcow2", &opts, Some(backing)).unwrap();
    let mut model = base.clone();
    for (off, len) in [(100usize, 10usize), (4096 * 3 + 5, 9000), (500_000, 1), (1_048_000, 576)] {
        let v = vec![0xeeu8; len];
        img.write_at(off as u64, &v).unwrap();
        model[off..off + len].copy_from_slice(&v);
    }
    let mut back = vec![0u8; 1 << 20];
    img.read_at(0, &mut back).unwrap();
    assert!(back == model);
    img.flush().unwrap();
    assert!(img.check().unwrap().is_clean());
    let h = img.header();
    assert_eq!(h.backing_file.as_deref(), Some(std::path::Path::new("base.raw")));
    assert_eq!(h.backing_format.as_deref(), Some("raw"));
    // Without the backing file, the untouched parts read as zeros.
    drop(img);
    let img = Qcow2::open_file(mem(f.contents()), "ov.qcow2", &ro(), None).unwrap();
    let mut b = [0u8; 10];
    img.read_at(200_000, &mut b).unwrap();
    assert_eq!(b, [0u8; 10]);
    let e = Qcow2::open_file(
        mem(f.contents()),
        "ov.qcow2",
        &Qcow2OpenOptions { backing: BackingPolicy::Refuse, ..ro() },
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("backing"), "{e}");
}

// ---- corrupt headers: each gives an error naming the file, never a panic ----

#[test]
fn truncated_files() {
    let good = sample_bytes();
    for len in [0, 3, 4, 20, 71, 72, 103, 104, 111, 200, 4096, 4097, 8192, good.len() - 1] {
        let e = match Qcow2::open_file(mem(good[..len].to_vec()), "/x/y.qcow2", &ro(), None) {
            Err(e) => e.to_string(),
            Ok(img) => {
                // Cutting only the tail of data may still open; reads past the cut must fail or be zero.
                let mut b = vec![0u8; 5000];
                let _ = img.read_at(0, &mut b);
                continue;
            }
        };
        assert!(e.contains("/x/y.qcow2"), "{len}: {e}");
    }
}

#[test]
fn bad_magic() {
    let mut b = sample_bytes();
    b[0] = b'X';
    let e = open_err(b, &ro());
    assert!(e.contains("qcow2 header of /x/y.qcow2: bad magic"), "{e}");
}

#[test]
fn bad_version() {
    let mut b = sample_bytes();
    put32(&mut b, 4, 4);
    assert!(open_err(b, &ro()).contains("version 4"));
}

#[test]
fn cluster_bits_out_of_range() {
    for cb in [0, 8, 22, 40, u32::MAX] {
        let mut b = sample_bytes();
        put32(&mut b, 20, cb);
        let e = open_err(b, &ro());
        assert!(e.contains(&format!("cluster_bits {cb} out of range 9..=21")), "{e}");
    }
}

#[test]
fn huge_l1_size() {
    let mut b = sample_bytes();
    put32(&mut b, 36, u32::MAX);
    let e = open_err(b, &ro());
    assert!(e.contains("L1 table"), "{e}");
    // Within the cap but past the end of the file.
    let mut b = sample_bytes();
    put32(&mut b, 36, 1 << 20);
    let e = open_err(b, &ro());
    assert!(e.contains("past the end of the file"), "{e}");
    // Too small for the disk.
    let mut b = sample_bytes();
    put64(&mut b, 24, 1 << 50);
    let e = open_err(b, &ro());
    assert!(e.contains("too small for disk size"), "{e}");
}

#[test]
fn l1_and_l2_pointing_past_eof() {
    let good = sample_bytes();
    let h = Header::parse(&good, good.len() as u64, "m".as_ref()).unwrap();
    let l1 = h.l1_table_offset as usize;
    // L1 entry pointing past the end.
    let mut b = good.clone();
    put64(&mut b, l1, (1 << 40) | OFLAG_COPIED_FOR_TESTS);
    let e = open_err(b, &ro());
    assert!(e.contains("is corrupt") && e.contains("past the end"), "{e}");
    // L2 entry pointing past the end: opens, but reading it fails.
    let l2 = (u64::from_be_bytes(good[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let mut b = good.clone();
    put64(&mut b, l2, (1 << 40) | OFLAG_COPIED_FOR_TESTS);
    let img = Qcow2::open_file(mem(b.clone()), "/x/y.qcow2", &ro(), None).unwrap();
    let mut buf = [0u8; 16];
    let e = img.read_at(0, &mut buf).unwrap_err().to_string();
    assert!(e.contains("past the end of the file"), "{e}");
    // Unaligned L2 entry.
    put64(&mut b, l2, 4096 + 512);
    let img = Qcow2::open_file(mem(b), "/x/y.qcow2", &ro(), None).unwrap();
    assert!(img.read_at(0, &mut buf).is_err());
}

const OFLAG_COPIED_FOR_TESTS: u64 = 1 << 63;

#[test]
fn refcount_pointing_outside() {
    let good = sample_bytes();
    let h = Header::parse(&good, good.len() as u64, "m".as_ref()).unwrap();
    let mut b = good.clone();
    put64(&mut b, h.refcount_table_offset as usize, 1 << 45);
    let e = open_err(b, &ro());
    assert!(e.contains("points outside the file"), "{e}");
    let mut b = good.clone();
    put64(&mut b, 48, 1 << 45);
    let e = open_err(b, &ro());
    assert!(e.contains("refcount table"), "{e}");
    let mut b = good;
    put32(&mut b, 56, 0);
    assert!(open_err(b, &ro()).contains("no refcount table"));
}

#[test]
fn feature_bits() {
    let good = sample_bytes();
    let mut b = good.clone();
    put64(&mut b, 72, 1 << 40);
    let e = open_err(b, &ro());
    assert!(e.contains("unsupported qcow2 incompatible features bit 40"), "{e}");
    let mut b = good.clone();
    put64(&mut b, 72, INCOMPAT_CORRUPT);
    Qcow2::open_file(mem(b.clone()), "m", &ro(), None).unwrap();
    assert!(open_err(b, &rw()).contains("marked corrupt"));
    let mut b = good.clone();
    put64(&mut b, 72, INCOMPAT_DATA_FILE);
    assert!(open_err(b, &ro()).contains("external data file"));
    let mut b = good.clone();
    put64(&mut b, 72, INCOMPAT_EXTL2);
    assert!(open_err(b, &ro()).contains("extended L2"));
    let mut b = good.clone();
    put64(&mut b, 72, INCOMPAT_COMPRESSION);
    b[104] = 1;
    assert!(open_err(b, &ro()).contains("zstd"));
    let mut b = good.clone();
    put32(&mut b, 32, 2);
    assert!(open_err(b, &ro()).contains("encryption"));
    let mut b = good.clone();
    put32(&mut b, 96, 7);
    assert!(open_err(b, &ro()).contains("refcount_order 7"));
    let mut b = good;
    put32(&mut b, 100, 1 << 20);
    assert!(open_err(b, &ro()).contains("header_length"));
}

#[test]
fn unknown_feature_is_named_from_the_feature_table() {
    // Our images carry a feature table; give bit 0 a different meaning via kind 0 bit 9 entry absent,
    // so the message says just "bit 9".
    let mut b = sample_bytes();
    put64(&mut b, 72, 1 << 9);
    let e = open_err(b, &ro());
    assert!(e.contains("bit 9"), "{e}");
}

#[test]
fn hostile_extensions_and_backing_name() {
    let good = sample_bytes();
    let mut b = good.clone();
    // An extension whose length runs past the first cluster.
    put32(&mut b, 112, 0x1234_5678);
    put32(&mut b, 116, u32::MAX);
    assert!(open_err(b, &ro()).contains("overruns"));
    let mut b = good.clone();
    put64(&mut b, 8, 4000);
    put32(&mut b, 16, 2000);
    assert!(open_err(b, &ro()).contains("backing file name"));
    let mut b = good;
    put64(&mut b, 8, u64::MAX - 3);
    put32(&mut b, 16, 100);
    assert!(open_err(b, &ro()).contains("outside the first cluster"));
}

#[test]
fn snapshots_refuse_writes() {
    let mut b = sample_bytes();
    put32(&mut b, 60, 1);
    put64(&mut b, 64, 4096);
    Qcow2::open_file(mem(b.clone()), "m", &ro(), None).unwrap();
    assert!(open_err(b, &rw()).contains("internal snapshots"));
}

#[test]
fn writes_never_land_on_metadata() {
    // Point an L2 entry at the L1 table: a read is allowed, an in-place write is refused.
    let good = sample_bytes();
    let h = Header::parse(&good, good.len() as u64, "m".as_ref()).unwrap();
    let l1 = h.l1_table_offset as usize;
    let l2 = (u64::from_be_bytes(good[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00) as usize;
    let mut b = good;
    put64(&mut b, l2, h.l1_table_offset | OFLAG_COPIED_FOR_TESTS);
    let img = Qcow2::open_file(mem(b), "m", &rw(), None).unwrap();
    let e = img.write_at(0, b"boom").unwrap_err().to_string();
    assert!(e.contains("overwrite image metadata"), "{e}");
}

#[test]
fn out_of_range_and_read_only() {
    let (img, f) = new_image(1 << 20, 16, 4);
    let mut b = [0u8; 2];
    assert!(matches!(
        img.read_at((1 << 20) - 1, &mut b),
        Err(virt_core::block::BlockError::OutOfRange { .. })
    ));
    assert!(img.write_at(u64::MAX, b"x").is_err());
    drop(img);
    let img = Qcow2::open_file(f, "m", &ro(), None).unwrap();
    assert!(matches!(img.write_at(0, b"x"), Err(virt_core::block::BlockError::ReadOnly)));
}

#[test]
fn discard_unmaps_and_gives_space_back() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("d.qcow2");
    let img = Qcow2::create(&p, &Qcow2CreateOptions { size: 8 << 20, ..Default::default() }).unwrap();
    img.write_at(0, &vec![0x77u8; 8 << 20]).unwrap();
    img.flush().unwrap();
    let before = std::fs::metadata(&p).unwrap().blocks() * 512;
    img.discard(1 << 20, 6 << 20).unwrap();
    img.discard(100, 1000).unwrap(); // partial cluster: left alone
    img.flush().unwrap();
    let after = std::fs::metadata(&p).unwrap().blocks() * 512;
    assert!(after + (5 << 20) < before, "before {before} after {after}");
    let mut b = vec![1u8; 6 << 20];
    img.read_at(1 << 20, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    let mut b = [0u8; 1000];
    img.read_at(100, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0x77));
    assert!(img.check().unwrap().is_clean());
    // Rewriting discarded space allocates afresh.
    img.write_at(2 << 20, b"again").unwrap();
    img.flush().unwrap();
    assert!(img.check().unwrap().is_clean());
    assert!(img.discard(8 << 20, 1).is_err());
}

#[test]
fn concurrent_writers_and_readers_on_disjoint_regions() {
    // Reads of standard and compressed clusters run outside the metadata lock; hammer that with
    // threads that each own a region and keep a model of it.
    let (img, _f) = new_image(8 << 20, 12, 4);
    let img = std::sync::Arc::new(img);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let img = img.clone();
            s.spawn(move || {
                let base = t * (2 << 20);
                let mut model = vec![0u8; 2 << 20];
                let mut x = t * 7919 + 1;
                for i in 0..300u64 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let len = 1 + (x % 20_000) as usize;
                    let off = ((x >> 16) % ((2 << 20) - len as u64)) as usize;
                    if i % 3 == 0 {
                        let mut b = vec![0u8; len];
                        img.read_at(base + off as u64, &mut b).unwrap();
                        assert!(b[..] == model[off..off + len], "thread {t} read {i}");
                    } else {
                        let v = vec![(x >> 8) as u8; len];
                        img.write_at(base + off as u64, &v).unwrap();
                        model[off..off + len].copy_from_slice(&v);
                    }
                    if i % 50 == 0 {
                        img.flush().unwrap();
                    }
                }
                let mut all = vec![0u8; 2 << 20];
                img.read_at(base, &mut all).unwrap();
                assert!(all == model, "thread {t} final contents");
            });
        }
    });
    img.flush().unwrap();
    assert!(img.check().unwrap().is_clean());
}
