//! Benchmark: qcow2 -> raw conversion of an image of random data, ours against `qemu-img convert`,
//! in the same run on the same (page-cached) source. Also raw -> qcow2 for information.
//!
//! ```text
//! cargo run --release -p virt-storage --example bench_convert -- [--size-mib 1024] [--runs 9] [--threads N] [--buffer-mib N] [--prewarm-mib N] [--dir DIR]
//! ```
//! (or `virt-storage/bench.sh`). Prints `qcow2->raw: ours X GB/s, qemu-img Y GB/s, ratio R` using the
//! best of `--runs` runs each, alternating which goes first. Neither side fsyncs the output
//! (`qemu-img convert` defaults to `-t unsafe`); outputs are deleted and `sync` runs between timed runs
//! so write-back of one run does not land in the next, and memory is pre-warmed before each run (see
//! `settle`; off by default, `--prewarm-mib N` turns it on).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use virt_storage::format::{convert, ConvertOptions, OutputFormat};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn sh(cmd: &str, args: &[&str]) -> Result<(), String> {
    let o = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !o.status.success() {
        return Err(format!("{cmd} {args:?}: {}", String::from_utf8_lossy(&o.stderr)));
    }
    Ok(())
}

fn p(x: &Path) -> &str {
    x.to_str().unwrap_or_default()
}

/// Bytes of memory to touch and free before each timed run (see `settle`).
static PREWARM: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Deletes the previous output, syncs, then touches and frees more memory than the next run will
/// put into the page cache. On a VM whose balloon reports free pages back to the host (as this one
/// does), pages freed a few seconds earlier are no longer backed and the next writer pays host
/// faults on them; which tool happens to hit that made the timings bimodal. Freed just before the
/// run, the pages are still backed, for both tools alike.
fn settle(out: &Path) {
    let _ = std::fs::remove_file(out);
    let _ = Command::new("sync").status();
    let n = PREWARM.load(std::sync::atomic::Ordering::Relaxed) as usize;
    if n > 0 {
        let mut v = vec![0u8; n];
        for i in (0..n).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
    }
}

/// User + system CPU time of this process (all threads) and of its waited-for children.
fn cpu() -> (Duration, Duration) {
    let get = |who| {
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes into the struct we pass and nothing else.
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    (get(libc::RUSAGE_SELF), get(libc::RUSAGE_CHILDREN))
}

/// One timed run: wall-clock time and the CPU time it used (ours: this process; qemu-img: children).
fn time(f: impl FnOnce() -> Result<(), String>) -> Result<(Duration, Duration), String> {
    let (s0, c0) = cpu();
    let t = Instant::now();
    f()?;
    let wall = t.elapsed();
    let (s1, c1) = cpu();
    Ok((wall, (s1 - s0) + (c1 - c0)))
}

/// The 1-minute load average.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 =
        arg(&args, "--size-mib").map_or(Ok(1024), |s| s.parse()).map_err(|e| format!("--size-mib: {e}"))?;
    let runs: usize =
        arg(&args, "--runs").map_or(Ok(9), |s| s.parse()).map_err(|e| format!("--runs: {e}"))?;
    let dir =
        arg(&args, "--dir").map_or_else(|| std::env::temp_dir().join("virt-storage-bench"), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let size = size_mib << 20;
    let prewarm_mib: u64 = arg(&args, "--prewarm-mib")
        .map_or(Ok(0), |s| s.parse())
        .map_err(|e| format!("--prewarm-mib: {e}"))?;
    PREWARM.store(prewarm_mib << 20, std::sync::atomic::Ordering::Relaxed);
    let raw = dir.join("src.raw");
    let qcow = dir.join("src.qcow2");
    let out = dir.join("out.raw");
    let outq = dir.join("out.qcow2");

    let load0 = loadavg();
    eprintln!("making {size_mib} MiB of random data in {}", dir.display());
    sh(
        "dd",
        &[
            "if=/dev/urandom",
            &format!("of={}", p(&raw)),
            "bs=1M",
            &format!("count={size_mib}"),
            "status=none",
        ],
    )?;
    sh("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&qcow)])?;
    // Warm the page cache for both sources.
    for f in [&raw, &qcow] {
        std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    let _ = Command::new("sync").status();

    let mut opts = ConvertOptions { sync: false, ..Default::default() };
    if let Some(t) = arg(&args, "--threads") {
        opts.threads = t.parse().map_err(|e| format!("--threads: {e}"))?;
    }
    if let Some(b) = arg(&args, "--buffer-mib") {
        opts.buffer_size = b.parse::<usize>().map_err(|e| format!("--buffer-mib: {e}"))? << 20;
    }
    let opts = opts;
    let optsq = ConvertOptions {
        sync: false,
        output: OutputFormat::Qcow2 { cluster_bits: 16 },
        ..Default::default()
    };
    let ours = || convert(&qcow, &out, &opts).map(|_| ()).map_err(|e| e.to_string());
    let qemu = || sh("qemu-img", &["convert", "-O", "raw", p(&qcow), p(&out)]);
    let ours_q = || convert(&raw, &outq, &optsq).map(|_| ()).map_err(|e| e.to_string());
    let qemu_q = || sh("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&outq)]);

    // One untimed round of each first: the first conversion after making the data is slow for
    // whoever goes first (page cache and write-back settling).
    for f in [&ours as &dyn Fn() -> Result<(), String>, &qemu] {
        settle(&out);
        f()?;
    }
    for f in [&ours_q as &dyn Fn() -> Result<(), String>, &qemu_q] {
        settle(&outq);
        f()?;
    }
    let (mut to, mut tq, mut to_q, mut tq_q) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        let order: [bool; 2] = if i % 2 == 0 { [true, false] } else { [false, true] };
        for first_ours in order {
            settle(&out);
            if first_ours {
                to.push(time(ours)?);
            } else {
                tq.push(time(qemu)?);
            }
        }
        for first_ours in order {
            settle(&outq);
            if first_ours {
                to_q.push(time(ours_q)?);
            } else {
                tq_q.push(time(qemu_q)?);
            }
        }
    }
    // Check our output once.
    settle(&out);
    ours()?;
    sh("qemu-img", &["compare", "-f", "raw", "-F", "raw", p(&raw), p(&out)])?;
    settle(&outq);
    ours_q()?;
    sh("qemu-img", &["check", p(&outq)])?;
    sh("qemu-img", &["compare", "-f", "raw", "-F", "qcow2", p(&raw), p(&outq)])?;

    let wall = |v: &[(Duration, Duration)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
    let cpu_of = |v: &[(Duration, Duration)]| v.iter().map(|x| x.1).collect::<Vec<_>>();
    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    eprintln!("threads {}, buffer {} MiB", opts.threads, opts.buffer_size >> 20);
    eprintln!("qcow2->raw wall: ours {:?}\n                qemu {:?}", wall(&to), wall(&tq));
    eprintln!("raw->qcow2 wall: ours {:?}\n                qemu {:?}", wall(&to_q), wall(&tq_q));
    let (to, tq, to_q, tq_q, co, cq, co_q, cq_q) = (
        wall(&to),
        wall(&tq),
        wall(&to_q),
        wall(&tq_q),
        cpu_of(&to),
        cpu_of(&tq),
        cpu_of(&to_q),
        cpu_of(&tq_q),
    );
    let (o, q) = (gbps(size, best(&to)), gbps(size, best(&tq)));
    println!("qcow2->raw: ours {o:.2} GB/s, qemu-img {q:.2} GB/s, ratio {:.2}", o / q);
    let (o, q) = (gbps(size, best(&to_q)), gbps(size, best(&tq_q)));
    println!("raw->qcow2: ours {o:.2} GB/s, qemu-img {q:.2} GB/s, ratio {:.2}", o / q);
    let (o, q) = (gbps(size, median(&to)), gbps(size, median(&tq)));
    println!("qcow2->raw (median): ours {o:.2} GB/s, qemu-img {q:.2} GB/s, ratio {:.2}", o / q);
    let secs = |v: &[Duration]| {
        let lo = v.iter().min().copied().unwrap_or_default().as_secs_f64();
        let hi = v.iter().max().copied().unwrap_or_default().as_secs_f64();
        format!("{:.2} s ({lo:.2}-{hi:.2})", median(v).as_secs_f64())
    };
    let paired: Vec<Duration> =
        to.iter().zip(&tq).map(|(o, q)| Duration::from_secs_f64(q.as_secs_f64() / o.as_secs_f64())).collect();
    println!(
        "qcow2->raw seconds, median (min-max) of {runs}: ours {}, qemu-img {}; median of per-round ratios {:.2}",
        secs(&to),
        secs(&tq),
        median(&paired).as_secs_f64()
    );
    println!("load average (1 min) at start {load0}, at end {}", loadavg());
    println!(
        "CPU seconds (median) qcow2->raw: ours {:.2}, qemu-img {:.2}; raw->qcow2: ours {:.2}, qemu-img {:.2}",
        median(&co).as_secs_f64(),
        median(&cq).as_secs_f64(),
        median(&co_q).as_secs_f64(),
        median(&cq_q).as_secs_f64()
    );
    for f in [&raw, &qcow, &out, &outq] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}
