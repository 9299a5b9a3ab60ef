//! `virtctl`: KubeVirt's verbs for virt-rs. Parsing and wiring only; the logic lives in the crates.
//!
//! Implemented so far: `image-upload`. The lifecycle verbs (create, get, start, stop, console, ...)
//! come with the node API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "virtctl", version, about = "Manage virt-rs virtual machines and disks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Upload a disk image into a DataVolume whose source is `upload: {}`.
    ImageUpload {
        /// `dv` (the kind of target; only DataVolumes are supported).
        kind: String,
        /// The DataVolume's name.
        name: String,
        /// The image to upload (raw, qcow2, iso, or gzip/xz-compressed raw).
        #[arg(long)]
        image_path: PathBuf,
        /// The upload endpoint, e.g. https://node:8443 (the path /v1beta1/upload is added).
        #[arg(long = "uploadproxy-url")]
        uploadproxy_url: String,
        /// The upload token (from an UploadTokenRequest); also read from VIRT_UPLOAD_TOKEN.
        #[arg(long, env = "VIRT_UPLOAD_TOKEN", hide_env_values = true)]
        token: String,
        /// Do not verify the endpoint's TLS certificate.
        #[arg(long)]
        insecure: bool,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::ImageUpload { kind, name, image_path, uploadproxy_url, token, insecure, quiet } => {
            if kind != "dv" {
                eprintln!("virtctl image-upload: only `dv` targets are supported, not {kind:?}");
                return ExitCode::from(2);
            }
            let url = format!("{}/v1beta1/upload", uploadproxy_url.trim_end_matches('/'));
            let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let r =
                virt_storage::upload::upload_file(&url, &token, &image_path, insecure, &mut |sent, total| {
                    bar.set_length(total);
                    bar.set_position(sent);
                });
            bar.finish_and_clear();
            match r {
                Ok(msg) => {
                    println!("Uploading {} to DataVolume {name} completed: {msg}", image_path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("virtctl image-upload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
