//! Host-assisted sparse copy: a 10 GiB file holding a few MiB copies quickly, reading only the data.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use virt_storage::format::{convert, sparse_copy, ConvertOptions};

#[test]
fn ten_gib_sparse_file_copies_only_its_data() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("big.raw");
    let f = std::fs::File::create(&src).unwrap();
    let size = 10u64 << 30;
    f.set_len(size).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut chunks = Vec::new();
    // 5 MiB of data in 6 places, including the very start and end; one chunk half zeros.
    for (off, len) in [
        (0u64, 1u64 << 20),
        (3 << 30, 1 << 20),
        ((5 << 30) + 4096, 512 << 10),
        (7 << 30, 1 << 20),
        (size - (1 << 20), 1 << 20),
        (9 << 30, 512 << 10),
    ] {
        let mut v: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        if off == 7 << 30 {
            v[..512 << 10].fill(0);
        }
        f.write_all_at(&v, off).unwrap();
        chunks.push((off, v));
    }
    f.sync_all().unwrap();
    drop(f);
    let data_bytes: u64 = chunks.iter().map(|(_, v)| v.len() as u64).sum();

    let dst = d.path().join("copy.raw");
    let t = Instant::now();
    let st = sparse_copy(&src, &dst).unwrap();
    let took = t.elapsed();
    eprintln!("sparse copy of 10 GiB holding {data_bytes} bytes: {took:?}, {st:?}");
    assert_eq!(st.size, size);
    // File systems report data at block granularity (ext4: 4 KiB, some: 64 KiB or more).
    assert!(st.bytes_read >= data_bytes && st.bytes_read <= data_bytes + (8 << 20), "{st:?}");
    assert!(
        st.bytes_written <= data_bytes - (512 << 10) + (1 << 20),
        "zeros inside data were written: {st:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let meta = std::fs::metadata(&dst).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 32 << 20, "copy is not sparse: {} bytes allocated", meta.blocks() * 512);
    let out = std::fs::File::open(&dst).unwrap();
    for (off, v) in &chunks {
        let mut b = vec![0u8; v.len()];
        out.read_exact_at(&mut b, *off).unwrap();
        assert!(b == *v, "data at {off} differs");
    }
    // Holes between the chunks read as zeros.
    for off in [2u64 << 30, 6 << 30, (8 << 30) + 12345] {
        let mut b = vec![1u8; 4096];
        out.read_exact_at(&mut b, off).unwrap();
        assert!(b.iter().all(|&x| x == 0));
    }

    // The same file through convert (raw -> raw) reads only data as well.
    let dst2 = d.path().join("conv.raw");
    let t = Instant::now();
    let cs = convert(&src, &dst2, &ConvertOptions::default()).unwrap();
    eprintln!("convert raw->raw: {:?}, {cs:?}", t.elapsed());
    assert!(cs.bytes_read <= data_bytes + (8 << 20), "{cs:?}");
    assert!(std::fs::metadata(&dst2).unwrap().blocks() * 512 < 32 << 20);
}
