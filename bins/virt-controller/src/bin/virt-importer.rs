//! virt-importer: CDI's importer in a DataVolume's importer pod (the image of
//! scripts/k8s/importer-image.sh). Fills `<data-dir>/disk.img` from the source of the DataVolume
//! in `VIRT_DATA_VOLUME`, printing `progress: NN.NN%` lines; on failure the message goes to the
//! container's termination message. Parsing and wiring only; the logic is in
//! `virt_k8s::cluster::importer`.
//!
//! ```text
//! virt-importer [--data-dir /data] [--insecure-registry HOST:PORT ...] [--clone-from /source]
//! ```
//!
//! With `--clone-from` it is a clone pod: `<data-dir>/disk.img` becomes a clone of
//! `<clone-from>/disk.img` (the DataVolume's `spec.source.pvc`), and on success the termination
//! message holds the clone's report (JSON: `cloneType`, `cloneFallbackReason`).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use virt_k8s::cluster::importer::{clone_into, import_into, DV_ENV, PROGRESS_PREFIX};

#[derive(Parser)]
#[command(name = "virt-importer", about = "Fills a DataVolume's claim (CDI's importer)")]
struct Cli {
    /// Where the claim is mounted.
    #[arg(long, default_value = "/data")]
    data_dir: PathBuf,
    /// Registries reached over plain HTTP.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Where the failure message goes (the kubelet's termination-message file).
    #[arg(long, default_value = "/dev/termination-log")]
    termination_log: PathBuf,
    /// Clone the disk image of the claim mounted here instead of importing.
    #[arg(long)]
    clone_from: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let mut progress = |p: &str| {
        println!("{PROGRESS_PREFIX}{p}");
        let _ = std::io::stdout().flush();
    };
    let result = match (std::env::var(DV_ENV), &cli.clone_from) {
        (Ok(dv), None) => {
            import_into(&dv, &cli.data_dir, cli.insecure_registries, &mut progress).map_err(|e| e.to_string())
        }
        (Ok(dv), Some(from)) => match clone_into(&dv, from, &cli.data_dir, &mut progress) {
            Ok(report) => {
                let json = serde_json::to_string(&report).unwrap_or_default();
                if let Err(e) = std::fs::write(&cli.termination_log, &json) {
                    eprintln!("virt-importer: writing {}: {e}", cli.termination_log.display());
                }
                Ok(format!("clone: {}", report.detail))
            }
            Err(e) => Err(e.to_string()),
        },
        (Err(e), _) => Err(format!("{DV_ENV}: {e}")),
    };
    match result {
        Ok(done) => {
            println!("import done: {done}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("virt-importer: {why}");
            if let Err(e) = std::fs::write(&cli.termination_log, &why) {
                eprintln!("virt-importer: writing {}: {e}", cli.termination_log.display());
            }
            ExitCode::FAILURE
        }
    }
}
