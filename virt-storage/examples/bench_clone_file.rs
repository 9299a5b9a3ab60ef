//! Clone-time benchmark of `format::sparse::clone_file` (what the cluster's clone pods run)
//! beside `cp --sparse=always` and a stream of every byte through a pipe (CDI's host-assisted
//! clone moves the whole image from a source pod to a target pod), for a 1 GiB image that is
//! mostly empty (16 MiB of data) and one that is half full (512 MiB of data).
//!
//! ```text
//! bench_clone_file SRC_DIR [DST_DIR]
//! ```
//! `DST_DIR` (default `SRC_DIR`) may be another mount of the same file system, as a clone pod's
//! two volumes are. Page cache warm (the source was just written).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use virt_storage::format::sparse::clone_file;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn make(path: &Path, data_mib: u64) -> Res<()> {
    let f = File::create(path)?;
    f.set_len(1 << 30)?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 | 1).collect();
    // Data spread over the image, 1 MiB pieces.
    let step = (1024 / data_mib).max(1);
    for i in 0..data_mib {
        f.write_all_at(&chunk, (i * step) << 20)?;
    }
    f.sync_all()?;
    Ok(())
}

fn timed(what: &str, f: impl FnOnce() -> Res<String>) -> Res<()> {
    let t = Instant::now();
    let note = f()?;
    println!("  {what:<40} {:>9.1} ms  {note}", t.elapsed().as_secs_f64() * 1e3);
    Ok(())
}

fn sh(cmd: &str) -> Res<()> {
    let st = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        return Err(format!("{cmd}: {st}").into());
    }
    Ok(())
}

fn allocated(p: &Path) -> Res<String> {
    Ok(format!("{} MiB allocated", (std::fs::metadata(p)?.blocks() * 512) >> 20))
}

fn main() -> Res<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let src_dir = args.first().cloned().ok_or("usage: bench_clone_file SRC_DIR [DST_DIR]")?;
    let dst_dir = args.get(1).cloned().unwrap_or_else(|| src_dir.clone());
    for (label, data) in [("1 GiB, 16 MiB of data", 16u64), ("1 GiB, 512 MiB of data", 512)] {
        println!("{label} ({} -> {}):", src_dir.display(), dst_dir.display());
        let src = src_dir.join("bench-src.img");
        make(&src, data)?;
        let dst = dst_dir.join("bench-clone.img");
        timed("clone_file", || {
            let c = clone_file(&src, &dst)?;
            Ok(format!("{} ({})", c.kind, allocated(&dst)?))
        })?;
        let cp = dst_dir.join("bench-cp.img");
        timed("cp --sparse=always", || {
            sh(&format!("cp --sparse=always {} {}", src.display(), cp.display()))?;
            allocated(&cp)
        })?;
        let pipe = dst_dir.join("bench-pipe.img");
        timed("stream every byte (CDI host-assisted)", || {
            sh(&format!(
                "cat {} | dd of={} bs=1M conv=sparse iflag=fullblock status=none",
                src.display(),
                pipe.display()
            ))?;
            allocated(&pipe)
        })?;
        for p in [&src, &dst, &cp, &pipe] {
            let _ = std::fs::remove_file(p);
        }
    }
    Ok(())
}
