//! Embedding the storage layer: import a disk image into a pool, then give two VMs their own
//! copy-on-write disks cloned from it, printing how each clone was made.
//!
//! ```text
//! cargo run -p virt-examples --bin golden-clone -- POOL_DIR URL_OR_FILE
//! ```

use std::process::ExitCode;

use virt_storage::import::http::{HttpOptions, HttpSource};
use virt_storage::import::{import, ByteSource, FileSource, ImportOptions};
use virt_storage::volume::{CloneOptions, DirPool, VolumeId, VolumeProvider};

fn run(pool_dir: &str, src: &str) -> Result<(), String> {
    let pool = DirPool::new(pool_dir).map_err(|e| format!("{pool_dir}: {e}"))?;
    match pool.profile().reflink {
        Ok(()) => println!("pool {pool_dir}: reflink clones available"),
        Err(why) => println!("pool {pool_dir}: {why}"),
    }
    let source: Box<dyn ByteSource> = if src.starts_with("http://") || src.starts_with("https://") {
        Box::new(HttpSource::new(src, HttpOptions::default()).map_err(|e| e.to_string())?)
    } else {
        Box::new(FileSource::new(src))
    };
    let golden = VolumeId::new("os-images", "golden");
    let out = import(&pool, &golden, source, &ImportOptions::default(), &mut |p| {
        eprint!("\rimporting {}", p.percent())
    })
    .map_err(|e| e.to_string())?;
    eprintln!();
    println!(
        "imported {} bytes ({:?}) into {}",
        out.bytes_received,
        out.source_format,
        out.volume.path.display()
    );
    for vm in ["vm1", "vm2"] {
        let c = pool
            .clone_volume(
                &golden,
                &VolumeId::new("default", format!("{vm}-rootdisk")),
                CloneOptions::default(),
            )
            .map_err(|e| e.to_string())?;
        println!(
            "{vm}: {} clone{}",
            c.strategy,
            c.fallback_reason.map(|r| format!(" (fallback: {r})")).unwrap_or_default()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 3 {
        eprintln!("usage: golden-clone POOL_DIR URL_OR_FILE");
        return ExitCode::from(2);
    }
    match run(&a[1], &a[2]) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("golden-clone: {e}");
            ExitCode::FAILURE
        }
    }
}
