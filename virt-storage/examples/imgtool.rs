//! A small command-line front end to the format code: `imgtool info|convert|check|sparse-copy`.
//!
//! ```text
//! cargo run -p virt-storage --example imgtool -- convert [--no-sync] [-O raw|qcow2] SRC DST
//! cargo run -p virt-storage --example imgtool -- info IMAGE
//! cargo run -p virt-storage --example imgtool -- check IMAGE.qcow2
//! cargo run -p virt-storage --example imgtool -- sparse-copy SRC DST
//! ```

use std::path::Path;
use std::process::ExitCode;

use virt_storage::format::{
    convert, detect_path, sparse_copy, ConvertOptions, OutputFormat, Qcow2, Qcow2OpenOptions,
};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--no-sync`: skip the final fdatasync, like qemu-img convert's default `-t unsafe`.
    let sync = !args.iter().any(|a| a == "--no-sync");
    args.retain(|a| a != "--no-sync");
    // `--buffer-kib N`, `--threads N`: tuning knobs for convert.
    let mut knob = |name: &str| -> Option<usize> {
        let i = args.iter().position(|a| a == name)?;
        let v = args.get(i + 1)?.parse().ok();
        args.drain(i..i + 2);
        v
    };
    let mut base = ConvertOptions { sync, ..Default::default() };
    if let Some(k) = knob("--buffer-kib") {
        base.buffer_size = k << 10;
    }
    if let Some(t) = knob("--threads") {
        base.threads = t;
    }
    let r: Result<(), Box<dyn std::error::Error>> = (|| {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["info", img] => {
                let f = detect_path(Path::new(img))?;
                println!("format: {f}");
                if f.name() == "qcow2" {
                    let q = Qcow2::open(Path::new(img), &Qcow2OpenOptions::default())?;
                    println!("{:#?}", q.header());
                }
            }
            ["check", img] => {
                let q = Qcow2::open(Path::new(img), &Qcow2OpenOptions::default())?;
                let r = q.check()?;
                println!("{r:#?}");
                if !r.is_clean() {
                    return Err("image has errors or leaks".into());
                }
            }
            ["convert", "-O", fmt, src, dst] | ["convert", src, dst, "-O", fmt] => {
                let output = match *fmt {
                    "raw" => OutputFormat::Raw,
                    "qcow2" => OutputFormat::Qcow2 { cluster_bits: 16 },
                    other => return Err(format!("unknown output format {other}").into()),
                };
                let st = convert(Path::new(src), Path::new(dst), &ConvertOptions { output, ..base.clone() })?;
                println!("{st:?}");
            }
            ["convert", src, dst] => {
                let st = convert(Path::new(src), Path::new(dst), &base)?;
                println!("{st:?}");
            }
            ["sparse-copy", src, dst] => println!("{:?}", sparse_copy(Path::new(src), Path::new(dst))?),
            _ => {
                return Err(
                    "usage: imgtool info|check IMAGE | convert [-O raw|qcow2] SRC DST | sparse-copy SRC DST"
                        .into(),
                )
            }
        }
        Ok(())
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imgtool: {e}");
            ExitCode::FAILURE
        }
    }
}
