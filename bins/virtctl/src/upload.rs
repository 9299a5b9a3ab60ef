//! `virtctl image-upload`: a disk image into a DataVolume, through the node
//! (`virt_k8s::client::upload`) or straight to an upload endpoint, with a progress bar.

use std::path::Path;
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressStyle};
use virt_k8s::client::upload::{upload_image, upload_url, ImageUpload, ImageUploadError, UploadStep};
use virt_k8s::client::NodeClient;

use crate::fail;

fn bar(quiet: bool) -> ProgressBar {
    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Uploads straight to an upload endpoint with a token the caller has.
pub fn image_upload(
    name: &str,
    image_path: &Path,
    uploadproxy_url: &str,
    token: &str,
    insecure: bool,
    quiet: bool,
) -> ExitCode {
    let url = upload_url(uploadproxy_url);
    let bar = bar(quiet);
    let r = virt_storage::upload::upload_file(&url, token, image_path, insecure, &mut |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    });
    bar.finish_and_clear();
    match r {
        Ok(msg) => {
            println!("Uploading {} to DataVolume {name} completed: {msg}", image_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("image-upload: {e}")),
    }
}

/// `virtctl image-upload dv NAME` against the node, printing each step as KubeVirt's virtctl does.
pub fn image_upload_via_node(
    client: &NodeClient,
    up: &ImageUpload,
    quiet: bool,
) -> Result<(), ImageUploadError> {
    let (ns, name) = (&up.namespace, &up.name);
    let bar = bar(quiet);
    let r = upload_image(client, up, &mut |step| match step {
        UploadStep::UsingExisting => println!("Using existing DataVolume {ns}/{name}"),
        UploadStep::Created => println!("DataVolume {ns}/{name} created"),
        UploadStep::WaitingForReady => {
            println!("Waiting for DataVolume {ns}/{name} to be ready for the upload...")
        }
        UploadStep::Uploading(url) => println!("Uploading data to {url}"),
        UploadStep::Sent { sent, total } => {
            bar.set_length(total);
            bar.set_position(sent);
        }
        UploadStep::Processing => {
            bar.finish_and_clear();
            println!(
                "Uploading data completed successfully, waiting for processing to complete, you can hit \
                 ctrl-c without interrupting the progress"
            );
        }
        UploadStep::Done => {
            println!("Processing completed successfully");
            println!("Uploading {} completed successfully", up.image_path.display());
        }
    });
    bar.finish_and_clear();
    r
}
