//! Interoperability with QEMU's own tools: images qemu-img writes must read back byte-identical to
//! `qemu-img convert -O raw`, images we write must pass `qemu-img check` and `qemu-img compare`.
//! Skipped (with a message) where qemu-img is not installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use virt_core::block::BlockBackend;
use virt_storage::format::{
    convert, open_image, ConvertOptions, FormatError, ImageFormat, OutputFormat, Qcow2, Qcow2CreateOptions,
    Qcow2OpenOptions,
};

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

macro_rules! need_qemu {
    () => {
        if !have("qemu-img") {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(
                std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
                "qemu-img not installed: skipping"
            );
            eprintln!("qemu-img not installed: skipping");
            return;
        }
    };
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Deterministic test data: pseudo-random runs, zero runs and repeated bytes.
fn pattern(size: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut i = 0;
    while i < size {
        let len = (next() % 300_000) as usize + 1;
        let end = (i + len).min(size);
        match next() % 3 {
            0 => {}
            1 => v[i..end].fill((next() % 255 + 1) as u8),
            _ => v[i..end].iter_mut().for_each(|b| *b = next() as u8),
        }
        i = end;
    }
    v
}

fn read_all(img: &dyn BlockBackend) -> Vec<u8> {
    let mut v = vec![0u8; img.size() as usize];
    img.read_at(0, &mut v).unwrap();
    v
}

fn qemu_raw(dir: &Path, img: &Path) -> Vec<u8> {
    let out = dir.join(format!("{}.qemu.raw", img.file_name().unwrap().to_str().unwrap()));
    run("qemu-img", &["convert", "-O", "raw", p(img), p(&out)]);
    std::fs::read(out).unwrap()
}

fn ours(img: &Path) -> Vec<u8> {
    read_all(open_image(img, true).unwrap().as_ref())
}

fn assert_same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

fn qemu_check(img: &Path) {
    let o = Command::new("qemu-img").args(["check", p(img)]).output().unwrap();
    let out = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "qemu-img check {}: {out}", img.display());
    assert!(!out.contains("leaked"), "{out}");
}

fn write_raw(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

#[test]
fn reads_qemu_images_of_every_cluster_size_and_version() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let data = pattern(5 << 20, 1);
    let raw = d.path().join("src.raw");
    write_raw(&raw, &data);
    for cs in ["512", "4096", "65536", "2M"] {
        for compat in ["0.10", "1.1"] {
            let q = d.path().join(format!("img-{cs}-{compat}.qcow2"));
            run(
                "qemu-img",
                &[
                    "convert",
                    "-O",
                    "qcow2",
                    "-o",
                    &format!("cluster_size={cs},compat={compat}"),
                    p(&raw),
                    p(&q),
                ],
            );
            let o = ours(&q);
            assert_same(&o, &data, &q.display().to_string());
            assert_same(&o, &qemu_raw(d.path(), &q), "vs qemu-img convert");
        }
    }
}

#[test]
fn reads_compressed_clusters() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let data = pattern(6 << 20, 2);
    let raw = d.path().join("src.raw");
    write_raw(&raw, &data);
    for cs in ["4096", "65536", "2M"] {
        let q = d.path().join(format!("c{cs}.qcow2"));
        run(
            "qemu-img",
            &["convert", "-c", "-O", "qcow2", "-o", &format!("cluster_size={cs}"), p(&raw), p(&q)],
        );
        let o = ours(&q);
        assert_same(&o, &data, "compressed");
        assert_same(&o, &qemu_raw(d.path(), &q), "compressed vs qemu-img");
    }
}

#[test]
fn reads_zero_clusters() {
    need_qemu!();
    if !have("qemu-io") {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "qemu-io not installed: skipping");
        eprintln!("qemu-io not installed: skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = pattern(4 << 20, 3).iter().map(|b| b | 1).collect::<Vec<u8>>();
    let raw = d.path().join("src.raw");
    write_raw(&raw, &data);
    let q = d.path().join("z.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&q)]);
    // Allocated zero clusters (-z keeps the allocation) and unmapped ones (-z -u), plus partial ones.
    run(
        "qemu-io",
        &[
            "-c",
            "write -z 64k 192k",
            "-c",
            "write -z -u 1M 1M",
            "-c",
            "write -z 3000 5000",
            "-c",
            "write -P 0x33 3M 5k",
            p(&q),
        ],
    );
    let info = run("qemu-img", &["map", "--output=json", p(&q)]);
    assert!(info.contains("\"zero\": true"), "{info}");
    let o = ours(&q);
    assert_same(&o, &qemu_raw(d.path(), &q), "zero clusters");
    assert!(o[65536..65536 + 192 * 1024].iter().all(|&b| b == 0));
}

/// base.qcow2 <- mid.qcow2 <- top.qcow2 (relative names), plus a raw base under another overlay.
fn make_chain(d: &Path) -> (PathBuf, PathBuf) {
    let raw = d.join("base.raw");
    write_raw(&raw, &pattern(3 << 20, 4));
    let base = d.join("base.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&base)]);
    run("qemu-img", &["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p(&d.join("mid.qcow2"))]);
    // top is larger than its backing: the tail reads as zeros.
    run(
        "qemu-img",
        &["create", "-f", "qcow2", "-b", "mid.qcow2", "-F", "qcow2", p(&d.join("top.qcow2")), "4M"],
    );
    if have("qemu-io") {
        run("qemu-io", &["-c", "write -P 0x11 100k 300k", p(&d.join("mid.qcow2"))]);
        run("qemu-io", &["-c", "write -P 0x22 200k 5000", "-c", "write -z 1M 64k", p(&d.join("top.qcow2"))]);
    }
    let over_raw = d.join("over-raw.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", p(&over_raw)]);
    (d.join("top.qcow2"), over_raw)
}

#[test]
fn reads_backing_chains() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let (top, over_raw) = make_chain(d.path());
    let o = ours(&top);
    assert_eq!(o.len(), 4 << 20);
    assert_same(&o, &qemu_raw(d.path(), &top), "qcow2 chain");
    assert_same(&ours(&over_raw), &qemu_raw(d.path(), &over_raw), "raw backing");
}

#[test]
fn backing_loop_is_refused() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("a.qcow2");
    let b = d.path().join("b.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", p(&b), "1M"]);
    run("qemu-img", &["create", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", p(&a), "1M"]);
    run("qemu-img", &["rebase", "-u", "-b", "a.qcow2", "-F", "qcow2", p(&b)]);
    let e = match open_image(&a, true) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a backing loop"),
    };
    assert!(e.contains("deeper than"), "{e}");
    // A missing backing file names both files.
    let c = d.path().join("c.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", "-u", "-b", "nothere.qcow2", "-F", "qcow2", p(&c), "1M"]);
    let e = open_image(&c, true).err().unwrap().to_string();
    assert!(e.contains("c.qcow2") && e.contains("nothere.qcow2"), "{e}");
}

/// Applies deterministic writes (partial clusters, cross-cluster, repeated) to `img` and `model`.
fn scribble(img: &dyn BlockBackend, model: &mut [u8], seed: u64, count: usize) {
    let mut x = seed | 1;
    let size = model.len() as u64;
    for i in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = match i % 4 {
            0 => 1 + x % 700,
            1 => 4096,
            2 => 65536 * 2 + 333,
            _ => 1 + x % 300_000,
        }
        .min(size);
        let off = (x >> 20) % (size - len + 1);
        let byte = (x >> 8) as u8 | 1;
        let v = vec![byte; len as usize];
        img.write_at(off, &v).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&v);
    }
}

#[test]
fn images_we_write_pass_qemu_check_and_compare() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    for (cb, order) in [(16, 4), (9, 4), (12, 0), (21, 6), (12, 3)] {
        let q = d.path().join(format!("ours-{cb}-{order}.qcow2"));
        let size = 20 << 20;
        let img = Qcow2::create(
            &q,
            &Qcow2CreateOptions { size, cluster_bits: cb, refcount_order: order, ..Default::default() },
        )
        .unwrap();
        let mut model = vec![0u8; size as usize];
        scribble(&img, &mut model, cb as u64 * 31 + order as u64, 120);
        // Discard whole clusters (unmapped, space punched out) and a partial range (left alone).
        let cs = 1u64 << cb;
        img.discard(3 * cs, 5 * cs).unwrap();
        model[3 * cs as usize..8 * cs as usize].fill(0);
        img.discard(cs + 1, cs).unwrap();
        img.flush().unwrap();
        drop(img);
        qemu_check(&q);
        let m = d.path().join("model.raw");
        write_raw(&m, &model);
        run("qemu-img", &["compare", p(&m), p(&q)]);
        assert_same(&ours(&q), &model, "reopened");
    }
}

#[test]
fn writes_into_qemu_images_keep_them_consistent() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let data = pattern(8 << 20, 5);
    let raw = d.path().join("src.raw");
    write_raw(&raw, &data);
    let (top, over_raw) = make_chain(d.path());
    let mut cases: Vec<PathBuf> = vec![top, over_raw];
    for (name, args) in [
        ("compressed", vec!["-c", "-o", "cluster_size=4096"]),
        ("v2", vec!["-o", "compat=0.10"]),
        ("rc1", vec!["-o", "refcount_bits=1"]),
        ("rc64", vec!["-o", "refcount_bits=64,cluster_size=2M"]),
        ("small", vec!["-o", "cluster_size=512"]),
        ("lazy", vec!["-o", "lazy_refcounts=on"]),
    ] {
        let q = d.path().join(format!("{name}.qcow2"));
        let mut a = vec!["convert", "-O", "qcow2"];
        a.extend(args);
        a.extend([p(&raw), p(&q)]);
        run("qemu-img", &a);
        cases.push(q);
    }
    if have("qemu-io") {
        let q = d.path().join("zeros.qcow2");
        run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&q)]);
        run("qemu-io", &["-c", "write -z 0 2M", "-c", "write -z -u 4M 1M", p(&q)]);
        cases.push(q);
    }
    for q in cases {
        let mut model = qemu_raw(d.path(), &q);
        let img = Qcow2::open(&q, &Qcow2OpenOptions { read_only: false, ..Default::default() }).unwrap();
        scribble(&img, &mut model, 77, 60);
        // Version 3 images unmap (with the zero flag over a backing file); v2 over a backing file
        // cannot express that and keeps the data.
        let h = img.header();
        if h.version >= 3 || h.backing_file.is_none() {
            let cs = h.cluster_size() as usize;
            let (a, b) = ((1 << 20) / cs * cs, (1 << 20) / cs * cs + 4 * cs);
            img.discard(a as u64, (b - a) as u64).unwrap();
            model[a..b].fill(0);
        }
        img.flush().unwrap();
        let rep = img.check().unwrap();
        assert!(rep.is_clean(), "{}: {rep:?}", q.display());
        drop(img);
        qemu_check(&q);
        let m = d.path().join("model.raw");
        write_raw(&m, &model);
        run("qemu-img", &["compare", p(&m), p(&q)]);
    }
}

#[test]
fn overlay_we_create_is_read_by_qemu() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let (top, _) = make_chain(d.path());
    let ov = d.path().join("ov.qcow2");
    let img = Qcow2::create(
        &ov,
        &Qcow2CreateOptions {
            size: 4 << 20,
            backing_file: Some("top.qcow2".into()),
            backing_format: Some(ImageFormat::Qcow2),
            ..Default::default()
        },
    )
    .unwrap();
    let mut model = ours(&top);
    scribble(&img, &mut model, 99, 40);
    img.flush().unwrap();
    drop(img);
    qemu_check(&ov);
    let info = run("qemu-img", &["info", p(&ov)]);
    assert!(
        info.contains("backing file: top.qcow2") && info.contains("backing file format: qcow2"),
        "{info}"
    );
    assert_same(&qemu_raw(d.path(), &ov), &model, "qemu reads our overlay");
}

#[test]
fn convert_round_trips_and_stays_sparse() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let size = 64usize << 20;
    // Mostly holes: data at a few places.
    let raw = d.path().join("sparse.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(size as u64).unwrap();
    let mut data = vec![0u8; size];
    for (off, seed) in [(0usize, 1u64), (10 << 20, 2), ((40 << 20) + 12345, 3), (size - 70_000, 4)] {
        let chunk = pattern(70_000, seed);
        std::os::unix::fs::FileExt::write_all_at(&f, &chunk, off as u64).unwrap();
        data[off..off + chunk.len()].copy_from_slice(&chunk);
    }
    drop(f);
    let q = d.path().join("rt.qcow2");
    let st = convert(
        &raw,
        &q,
        &ConvertOptions { output: OutputFormat::Qcow2 { cluster_bits: 16 }, ..Default::default() },
    )
    .unwrap();
    assert!(st.bytes_read < 4 << 20, "{st:?}");
    qemu_check(&q);
    run("qemu-img", &["compare", p(&raw), p(&q)]);
    let back = d.path().join("back.raw");
    let st = convert(&q, &back, &ConvertOptions::default()).unwrap();
    assert_eq!(st.source_format, ImageFormat::Qcow2);
    assert_same(&std::fs::read(&back).unwrap(), &data, "raw -> qcow2 -> raw");
    use std::os::unix::fs::MetadataExt;
    let blocks = std::fs::metadata(&back).unwrap().blocks() * 512;
    assert!(blocks < 8 << 20, "output is not sparse: {blocks} bytes allocated");
    // qcow2 with a backing chain and compressed clusters to qcow2 and raw.
    let (top, _) = make_chain(d.path());
    let flat = d.path().join("flat.qcow2");
    convert(
        &top,
        &flat,
        &ConvertOptions { output: OutputFormat::Qcow2 { cluster_bits: 12 }, ..Default::default() },
    )
    .unwrap();
    qemu_check(&flat);
    run("qemu-img", &["compare", p(&top), p(&flat)]);
    let c = d.path().join("c.qcow2");
    run("qemu-img", &["convert", "-c", "-O", "qcow2", p(&raw), p(&c)]);
    let craw = d.path().join("c.raw");
    convert(&c, &craw, &ConvertOptions::default()).unwrap();
    run("qemu-img", &["compare", "-f", "raw", p(&craw), p(&c)]);
}

#[test]
fn converts_compressed_streams() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    let data = pattern(3 << 20, 6);
    let raw = d.path().join("s.raw");
    write_raw(&raw, &data);
    // gzip'd raw streams; xz'd raw streams.
    let gz = d.path().join("s.raw.gz");
    let mut e =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    e.write_all(&data).unwrap();
    e.finish().unwrap();
    let xz = d.path().join("s.raw.xz");
    let mut e = xz2::write::XzEncoder::new(std::fs::File::create(&xz).unwrap(), 1);
    e.write_all(&data).unwrap();
    e.finish().unwrap();
    // Two concatenated zstd frames.
    let zst = d.path().join("s.raw.zst");
    let (a, b) = data.split_at(1 << 20);
    let mut z = zstd::stream::encode_all(a, 1).unwrap();
    z.extend(zstd::stream::encode_all(b, 3).unwrap());
    std::fs::write(&zst, z).unwrap();
    for (src, fmt) in [(&gz, ImageFormat::Gzip), (&xz, ImageFormat::Xz), (&zst, ImageFormat::Zstd)] {
        let out = d.path().join("out.raw");
        let st = convert(src, &out, &ConvertOptions::default()).unwrap();
        assert_eq!(st.compression, Some(fmt));
        assert!(!st.spooled);
        assert_same(&std::fs::read(&out).unwrap(), &data, "stream to raw");
        let outq = d.path().join("out.qcow2");
        convert(
            src,
            &outq,
            &ConvertOptions { output: OutputFormat::Qcow2 { cluster_bits: 16 }, ..Default::default() },
        )
        .unwrap();
        qemu_check(&outq);
        run("qemu-img", &["compare", p(&raw), p(&outq)]);
    }
    // A gzip'd qcow2 is spooled.
    let q = d.path().join("s.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&q)]);
    let qgz = d.path().join("s.qcow2.gz");
    let mut e =
        flate2::write::GzEncoder::new(std::fs::File::create(&qgz).unwrap(), flate2::Compression::fast());
    e.write_all(&std::fs::read(&q).unwrap()).unwrap();
    e.finish().unwrap();
    let out = d.path().join("out2.raw");
    let st = convert(&qgz, &out, &ConvertOptions::default()).unwrap();
    assert!(st.spooled);
    assert_eq!(st.source_format, ImageFormat::Qcow2);
    assert_same(&std::fs::read(&out).unwrap(), &data, "gzip'd qcow2");
    assert!(std::fs::read_dir(d.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".spool")));
}

#[test]
fn foreign_formats_are_refused_by_name() {
    need_qemu!();
    let d = tempfile::tempdir().unwrap();
    for (fmt, name) in [("vmdk", "vmdk"), ("vpc", "vhd"), ("vhdx", "vhdx")] {
        let img = d.path().join(format!("x.{fmt}"));
        run("qemu-img", &["create", "-f", fmt, p(&img), "10M"]);
        let e = convert(&img, &d.path().join("out.raw"), &ConvertOptions::default()).unwrap_err();
        assert!(matches!(e, FormatError::UnsupportedFormat { .. }), "{e}");
        assert!(e.to_string().contains(&format!("unsupported format {name}")), "{e}");
        assert!(e.to_string().contains(p(&img)), "{e}");
    }
    // A fixed VHD only has its footer at the end.
    let img = d.path().join("fixed.vhd");
    run("qemu-img", &["create", "-f", "vpc", "-o", "subformat=fixed", p(&img), "10M"]);
    let e = convert(&img, &d.path().join("out.raw"), &ConvertOptions::default()).unwrap_err();
    assert!(e.to_string().contains("unsupported format vhd"), "{e}");
}
