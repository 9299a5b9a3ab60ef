//! Imports a URL into a volume of a directory pool and prints what happened (used by
//! bench/http-import.sh; also a small embedder example of the import API).
//!
//! ```text
//! import_url URL POOL_DIR NAME [raw|qcow2]      import into POOL_DIR (a DirPool), fsync'd
//! import_url --download-only URL [READ_KIB]     only download (same HTTP client), discard the bytes
//! import_url --no-sync URL DIR NAME             the streaming path into DIR/NAME.img, not fsync'd
//! ```
//!
//! `--download-only` reads the body through [`HttpSource`] into a reused buffer of `READ_KIB` KiB
//! (default 2048) and throws it away: the figure to hold against `curl -o /dev/null`.

use std::io::Read;

use virt_storage::import::http::{HttpOptions, HttpSource};
use virt_storage::import::{import, ByteSource, ImportOptions};
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId};

fn download_only(url: &str, read_kib: usize) -> Result<(), String> {
    let t = std::time::Instant::now();
    let mut src = HttpSource::new(url, HttpOptions::default()).map_err(|e| e.to_string())?;
    let mut o = src.open(0).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; read_kib.max(1) << 10];
    let mut total = 0u64;
    loop {
        match o.reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{url}: reading at byte {total}: {e}")),
        }
    }
    println!("downloaded {total} bytes in {:.3} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// The import's streaming path (HTTP -> convert into a raw file) without making it durable.
fn no_sync(url: &str, dir: &str, name: &str) -> Result<(), String> {
    use virt_storage::format::convert::{convert_stream, ConvertOptions};
    use virt_storage::import::ResumingReader;
    let t = std::time::Instant::now();
    let src = HttpSource::new(url, HttpOptions::default()).map_err(|e| e.to_string())?;
    let mut r = ResumingReader::new(Box::new(src), 5, false).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    let dst = std::path::Path::new(dir).join(format!("{name}.img"));
    // As the import runs it: an uncompressed stream on the calling thread.
    let opts = ConvertOptions { sync: false, threads: 1, ..Default::default() };
    let st = convert_stream(&mut r, std::path::Path::new(url), &dst, &opts).map_err(|e| e.to_string())?;
    println!("wrote {} bytes (not synced) in {:.3} s", st.bytes_written, t.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> Result<(), String> {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(String::as_str) == Some("--download-only") {
        let url = a.get(2).ok_or("usage: import_url --download-only URL [READ_KIB]")?;
        let kib = a.get(3).map_or(Ok(2048), |s| s.parse()).map_err(|e| format!("READ_KIB: {e}"))?;
        return download_only(url, kib);
    }
    if a.get(1).map(String::as_str) == Some("--no-sync") {
        let [_, _, url, dir, name] = &a[..] else {
            return Err("usage: import_url --no-sync URL DIR NAME".into());
        };
        return no_sync(url, dir, name);
    }
    if a.len() < 4 {
        return Err("usage: import_url URL POOL_DIR NAME [raw|qcow2] | --download-only URL [READ_KIB] | --no-sync URL DIR NAME".into());
    }
    let format = match a.get(4).map(String::as_str) {
        None | Some("raw") => VolumeFormat::Raw,
        Some("qcow2") => VolumeFormat::Qcow2,
        Some(o) => return Err(format!("unknown format {o}")),
    };
    let pool = DirPool::new(&a[2]).map_err(|e| e.to_string())?;
    let src = HttpSource::new(&a[1], HttpOptions::default()).map_err(|e| e.to_string())?;
    let t = std::time::Instant::now();
    let out = import(
        &pool,
        &VolumeId::new("default", &a[3]),
        Box::new(src),
        &ImportOptions { format, ..Default::default() },
        &mut |_| {},
    )
    .map_err(|e| e.to_string())?;
    println!(
        "imported {} bytes ({:?} {}) into {} in {:.3} s",
        out.bytes_received,
        out.source_format,
        out.compression.map(|c| c.name()).unwrap_or("uncompressed"),
        out.volume.path.display(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
