//! Clone benchmark (not a test): copy-on-write clones of 1-10 GiB volumes and a host-assisted copy of a
//! sparse 10 GiB volume, each beside its peer tool measured in the same run. Run by
//! `bench/storage-clone.sh`, which makes the XFS (reflink=1) loop file system this needs.
//!
//! usage: bench_clone DIR_ON_XFS

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use virt_storage::volume::{CloneOptions, CloneStrategy, DirPool, VolumeFormat, VolumeId, VolumeProvider};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn timed(cmd: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !st.success() {
        return Err(format!("{cmd:?} failed"));
    }
    Ok(t.elapsed())
}

fn main() -> Result<(), String> {
    let dir = std::env::args().nth(1).ok_or("usage: bench_clone DIR_ON_XFS")?;
    let pool = DirPool::new(Path::new(&dir).join("pool")).map_err(|e| e.to_string())?;
    if let Err(why) = pool.profile().reflink {
        return Err(format!("{dir} has no reflinks: {why}"));
    }
    let e = |e: virt_storage::volume::VolumeError| e.to_string();
    const RUNS: usize = 5;
    for gib in [1u64, 2, 5, 10] {
        let src = VolumeId::new("os-images", format!("golden-{gib}g"));
        pool.create_blank(&src, gib << 30, VolumeFormat::Raw).map_err(e)?;
        // 10% of the volume holds data, in 64 MiB runs spread over it.
        let disk = pool.open(&src, false).map_err(e)?;
        let chunk = vec![0x5au8; 64 << 20];
        let runs = (gib << 30) / 10 / chunk.len() as u64;
        for i in 0..runs {
            disk.write_at(i * ((gib << 30) / runs.max(1)), &chunk).map_err(|x| x.to_string())?;
        }
        disk.flush().map_err(|x| x.to_string())?;
        drop(disk);
        let src_path = pool.get(&src).map_err(e)?.ok_or("source vanished")?.path;
        let (mut ours, mut overlay, mut cp, mut qemu) = (vec![], vec![], vec![], vec![]);
        for r in 0..RUNS {
            let dst = VolumeId::new("default", format!("c{gib}-{r}"));
            let t = Instant::now();
            let c = pool.clone_volume(&src, &dst, CloneOptions::default()).map_err(e)?;
            ours.push(t.elapsed());
            assert_eq!(c.strategy, CloneStrategy::Reflink);
            pool.delete(&dst).map_err(e)?;

            let dst = VolumeId::new("default", format!("o{gib}-{r}"));
            let t = Instant::now();
            pool.clone_volume(&src, &dst, CloneOptions { strategy: Some(CloneStrategy::Overlay) })
                .map_err(e)?;
            overlay.push(t.elapsed());
            pool.delete(&dst).map_err(e)?;

            let peer = Path::new(&dir).join(format!("cp-{gib}-{r}"));
            cp.push(timed(Command::new("cp").arg("--reflink=always").arg(&src_path).arg(&peer))?);
            std::fs::remove_file(&peer).map_err(|x| x.to_string())?;
            let q = Path::new(&dir).join(format!("q-{gib}-{r}.qcow2"));
            qemu.push(timed(
                Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
                    .arg(&src_path)
                    .arg(&q),
            )?);
            std::fs::remove_file(&q).map_err(|x| x.to_string())?;
        }
        println!(
            "clone {gib:>2} GiB (10% data): reflink {} (cp --reflink=always {}), overlay {} (qemu-img create -b {}); median of {RUNS}",
            ms(median(ours)),
            ms(median(cp)),
            ms(median(overlay)),
            ms(median(qemu))
        );
        if gib != 10 {
            pool.delete(&src).map_err(e)?;
        }
    }

    // Host-assisted copy of a sparse 10 GiB volume holding 1 GiB.
    let src = VolumeId::new("default", "sparse-10g");
    pool.create_blank(&src, 10 << 30, VolumeFormat::Raw).map_err(e)?;
    let disk = pool.open(&src, false).map_err(e)?;
    let chunk = vec![0xa5u8; 64 << 20];
    for i in 0..16u64 {
        disk.write_at(i * (640 << 20), &chunk).map_err(|x| x.to_string())?;
    }
    disk.flush().map_err(|x| x.to_string())?;
    drop(disk);
    let src_path = pool.get(&src).map_err(e)?.ok_or("source vanished")?.path;
    let dst = VolumeId::new("default", "sparse-copy");
    let t = Instant::now();
    let c = pool
        .clone_volume(&src, &dst, CloneOptions { strategy: Some(CloneStrategy::HostAssisted) })
        .map_err(e)?;
    let ours = t.elapsed();
    let peer = Path::new(&dir).join("cp-sparse");
    let cp =
        timed(Command::new("cp").args(["--reflink=never", "--sparse=always"]).arg(&src_path).arg(&peer))?;
    println!(
        "host-assisted copy of a 10 GiB volume holding 1 GiB: {} written, {:.0} MiB allocated, {:.2} s \
         (cp --reflink=never --sparse=always {:.2} s)",
        format_args!("{:.0} MiB", c.bytes_copied as f64 / (1 << 20) as f64),
        c.volume.allocated as f64 / (1 << 20) as f64,
        ours.as_secs_f64(),
        cp.as_secs_f64()
    );
    Ok(())
}
