//! Imports a URL into a volume of a directory pool and prints what happened (used by
//! bench/http-import.sh; also a small embedder example of the import API).
//!
//! usage: import_url URL POOL_DIR NAME [raw|qcow2]

use virt_storage::import::http::{HttpOptions, HttpSource};
use virt_storage::import::{import, ImportOptions};
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId};

fn main() -> Result<(), String> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 4 {
        return Err("usage: import_url URL POOL_DIR NAME [raw|qcow2]".into());
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
