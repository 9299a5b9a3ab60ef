//! Benchmark: qcow2 -> raw conversion of an image of random data, ours against `qemu-img convert`,
//! in the same run on the same (page-cached) source. Also raw -> qcow2 for information.
//!
//! ```text
//! cargo run --release -p virt-storage --example bench_convert -- [--size-mib 1024] [--runs 5] [--dir DIR]
//! ```
//! (or `virt-storage/bench.sh`). Prints `qcow2->raw: ours X GB/s, qemu-img Y GB/s, ratio R` using the
//! best of `--runs` runs each, alternating which goes first. Neither side fsyncs the output
//! (`qemu-img convert` defaults to `-t unsafe`); outputs are deleted and `sync` runs between timed runs
//! so write-back of one run does not land in the next.

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

fn settle(out: &Path) {
    let _ = std::fs::remove_file(out);
    let _ = Command::new("sync").status();
}

fn time(f: impl FnOnce() -> Result<(), String>) -> Result<Duration, String> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn gbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 =
        arg(&args, "--size-mib").map_or(Ok(1024), |s| s.parse()).map_err(|e| format!("--size-mib: {e}"))?;
    let runs: usize =
        arg(&args, "--runs").map_or(Ok(5), |s| s.parse()).map_err(|e| format!("--runs: {e}"))?;
    let dir =
        arg(&args, "--dir").map_or_else(|| std::env::temp_dir().join("virt-storage-bench"), PathBuf::from);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let size = size_mib << 20;
    let raw = dir.join("src.raw");
    let qcow = dir.join("src.qcow2");
    let out = dir.join("out.raw");
    let outq = dir.join("out.qcow2");

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

    let opts = ConvertOptions { sync: false, ..Default::default() };
    let optsq = ConvertOptions {
        sync: false,
        output: OutputFormat::Qcow2 { cluster_bits: 16 },
        ..Default::default()
    };
    let ours = || convert(&qcow, &out, &opts).map(|_| ()).map_err(|e| e.to_string());
    let qemu = || sh("qemu-img", &["convert", "-O", "raw", p(&qcow), p(&out)]);
    let ours_q = || convert(&raw, &outq, &optsq).map(|_| ()).map_err(|e| e.to_string());
    let qemu_q = || sh("qemu-img", &["convert", "-O", "qcow2", p(&raw), p(&outq)]);

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

    let best = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    eprintln!("qcow2->raw runs: ours {to:?}\n                 qemu {tq:?}");
    eprintln!("raw->qcow2 runs: ours {to_q:?}\n                 qemu {tq_q:?}");
    let (o, q) = (gbps(size, best(&to)), gbps(size, best(&tq)));
    println!("qcow2->raw: ours {o:.2} GB/s, qemu-img {q:.2} GB/s, ratio {:.2}", o / q);
    let (o, q) = (gbps(size, best(&to_q)), gbps(size, best(&tq_q)));
    println!("raw->qcow2: ours {o:.2} GB/s, qemu-img {q:.2} GB/s, ratio {:.2}", o / q);
    for f in [&raw, &qcow, &out, &outq] {
        let _ = std::fs::remove_file(f);
    }
    Ok(())
}
