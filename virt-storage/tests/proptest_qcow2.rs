//! Property tests: hostile bytes never panic the qcow2 reader (the same entry point the fuzzer uses),
//! and random reads/writes on a qcow2 image behave like a flat in-memory disk.

use std::sync::Arc;

use proptest::prelude::*;
use virt_core::block::{BlockBackend, MemDisk};
use virt_storage::format::fuzzing::qcow2_open;
use virt_storage::format::io::MemFile;
use virt_storage::format::{
    BackingPolicy, DiskImage, ImageFormat, PlainBackend, Qcow2, Qcow2CreateOptions, Qcow2OpenOptions,
};

/// A small valid image with data, zero-able structure and a backing file name, as a seed for mutation.
fn seed_image(cluster_bits: u32, order: u32) -> Vec<u8> {
    let f = Arc::new(MemFile::new(Vec::new(), 64 << 20));
    let opts = Qcow2CreateOptions {
        size: 2 << 20,
        cluster_bits,
        refcount_order: order,
        backing_file: Some("base.raw".into()),
        backing_format: Some(ImageFormat::Raw),
    };
    let base: Box<dyn DiskImage> = Box::new(PlainBackend::new(MemDisk::new(1 << 20, true), "base"));
    let img = Qcow2::create_file(f.clone(), "seed.qcow2", &opts, Some(base)).unwrap();
    img.write_at(0, &[7u8; 3000]).unwrap();
    img.write_at(1 << 20, &[9u8; 70_000]).unwrap();
    img.flush().unwrap();
    drop(img);
    f.contents()
}

fn seeds() -> Vec<Vec<u8>> {
    vec![seed_image(9, 4), seed_image(12, 0), seed_image(16, 6)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        qcow2_open(&data);
    }

    #[test]
    fn arbitrary_header_after_magic_never_panics(
        version in prop_oneof![Just(2u32), Just(3u32), any::<u32>()],
        rest in proptest::collection::vec(any::<u8>(), 0..8192),
    ) {
        let mut data = b"QFI\xfb".to_vec();
        data.extend_from_slice(&version.to_be_bytes());
        data.extend_from_slice(&rest);
        qcow2_open(&data);
    }

    #[test]
    fn mutated_valid_images_never_panic(
        which in 0usize..3,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        fields in proptest::collection::vec((0usize..14, any::<u64>()), 0..3),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let mut data = seeds().swap_remove(which);
        // Header fields: overwrite with arbitrary (often extreme) values.
        const FIELDS: [(usize, usize); 14] = [
            (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8),
            (48, 8), (56, 4), (60, 4), (64, 8), (72, 8), (96, 4), (100, 4),
        ];
        for (f, v) in fields {
            let (off, len) = FIELDS[f];
            data[off..off + len].copy_from_slice(&v.to_be_bytes()[8 - len..]);
        }
        // Byte flips anywhere (tables, L2 entries, refcount blocks, extensions).
        for (i, b) in flips {
            let n = data.len();
            data[i.index(n)] ^= b;
        }
        if let Some(c) = cut {
            let n = data.len();
            data.truncate(c.index(n));
        }
        qcow2_open(&data);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write { off: u64, len: usize, byte: u8 },
    Read { off: u64, len: usize },
    Discard { off: u64, len: u64 },
    Flush,
    Reopen,
}

fn op(size: u64) -> impl Strategy<Value = Op> {
    let s = size;
    prop_oneof![
        6 => (0..s, 1usize..20_000, any::<u8>()).prop_map(move |(off, len, byte)| {
            let len = len.min((s - off) as usize).max(1);
            Op::Write { off: off.min(s - len as u64), len, byte }
        }),
        3 => (0..s, 1usize..20_000).prop_map(move |(off, len)| {
            let len = len.min((s - off) as usize).max(1);
            Op::Read { off: off.min(s - len as u64), len }
        }),
        2 => (0..s, 1u64..40_000).prop_map(move |(off, len)| Op::Discard { off, len: len.min(s - off) }),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

const SIZE: u64 = 300_000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn qcow2_behaves_like_a_flat_disk(
        cluster_bits in 9u32..=13,
        order in 0u32..=6,
        with_backing in any::<bool>(),
        ops in proptest::collection::vec(op(SIZE), 1..40),
    ) {
        // The backing file is shorter than the disk: its tail reads as zeros.
        let base: Vec<u8> = (0..SIZE as usize - 10_000).map(|i| (i % 249) as u8 + 1).collect();
        let mut model = vec![0u8; SIZE as usize];
        if with_backing {
            model[..base.len()].copy_from_slice(&base);
        }
        let backing = |b: &Vec<u8>| -> Option<Box<dyn DiskImage>> {
            with_backing.then(|| Box::new(PlainBackend::new(MemDisk::from_bytes(b.clone(), true), "base")) as Box<dyn DiskImage>)
        };
        let file = Arc::new(MemFile::new(Vec::new(), 256 << 20));
        let opts = Qcow2CreateOptions {
            size: SIZE,
            cluster_bits,
            refcount_order: order,
            backing_file: with_backing.then(|| "base".into()),
            backing_format: with_backing.then_some(ImageFormat::Raw),
        };
        let mut img = Qcow2::create_file(file.clone(), "p.qcow2", &opts, backing(&base)).unwrap();
        let rw = Qcow2OpenOptions { read_only: false, backing: BackingPolicy::Detached, ..Default::default() };
        for op in ops {
            match op {
                Op::Write { off, len, byte } => {
                    let v = vec![byte; len];
                    img.write_at(off, &v).unwrap();
                    model[off as usize..off as usize + len].copy_from_slice(&v);
                }
                Op::Read { off, len } => {
                    let mut b = vec![0u8; len];
                    img.read_at(off, &mut b).unwrap();
                    prop_assert!(b[..] == model[off as usize..off as usize + len], "read at {} len {}", off, len);
                }
                Op::Discard { off, len } => {
                    img.discard(off, len).unwrap();
                    // Whole clusters inside the range read as zeros; partial ones are untouched.
                    let cs = 1u64 << cluster_bits;
                    let (a, b) = (off.div_ceil(cs) * cs, (off + len) / cs * cs);
                    if a < b {
                        model[a as usize..b as usize].fill(0);
                    }
                }
                Op::Flush => img.flush().unwrap(),
                Op::Reopen => {
                    drop(img);
                    img = Qcow2::open_file(file.clone(), "p.qcow2", &rw, backing(&base)).unwrap();
                }
            }
        }
        img.flush().unwrap();
        let rep = img.check().unwrap();
        prop_assert!(rep.is_clean(), "{:?}", rep);
        let mut all = vec![0u8; SIZE as usize];
        img.read_at(0, &mut all).unwrap();
        prop_assert!(all == model);
    }
}
