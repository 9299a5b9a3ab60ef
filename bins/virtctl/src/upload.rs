//! `virtctl image-upload`: a disk image into a DataVolume, through the node or straight to an
//! upload endpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use virt_k8s::client::{ClientError, NodeClient};
use virt_storage::cdi::{
    DataVolume, DataVolumePhase, DataVolumeSource, DataVolumeSpec, ObjectMeta, Quantity,
    ResourceRequirements, StorageSpec, UploadSource,
};

use crate::fail;

/// Uploads with a progress bar (hidden with `quiet`).
fn upload_with_bar(
    url: &str,
    token: &str,
    image_path: &std::path::Path,
    insecure: bool,
    quiet: bool,
) -> Result<String, virt_storage::upload::UploadError> {
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(0) };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let r = virt_storage::upload::upload_file(url, token, image_path, insecure, &mut |sent, total| {
        bar.set_length(total);
        bar.set_position(sent);
    });
    bar.finish_and_clear();
    r
}

/// Uploads straight to an upload endpoint with a token the caller has.
pub fn image_upload(
    name: &str,
    image_path: &std::path::Path,
    uploadproxy_url: &str,
    token: &str,
    insecure: bool,
    quiet: bool,
) -> ExitCode {
    let url = format!("{}/v1beta1/upload", uploadproxy_url.trim_end_matches('/'));
    match upload_with_bar(&url, token, image_path, insecure, quiet) {
        Ok(msg) => {
            println!("Uploading {} to DataVolume {name} completed: {msg}", image_path.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format_args!("image-upload: {e}")),
    }
}

pub struct UploadOpts {
    pub name: String,
    pub image_path: PathBuf,
    pub uploadproxy_url: Option<String>,
    pub size: Option<String>,
    pub storage_class: Option<String>,
    pub no_create: bool,
    pub wait: std::time::Duration,
    pub insecure: bool,
    pub quiet: bool,
}

pub enum UploadFailure {
    /// A missing argument (exit 2).
    Usage(String),
    /// The upload failed (exit 1).
    Failed(String),
}

fn refused(e: &ClientError) -> UploadFailure {
    UploadFailure::Failed(match e.status() {
        Some(status) => status.to_string(),
        None => e.to_string(),
    })
}

fn dv_phase(dv: &DataVolume) -> DataVolumePhase {
    dv.status.as_ref().and_then(|s| s.phase).unwrap_or(DataVolumePhase::Pending)
}

/// The message of a DataVolume's Running or Ready condition, for errors.
fn dv_message(dv: &DataVolume) -> String {
    dv.status
        .as_ref()
        .and_then(|s| ["Running", "Ready"].iter().find_map(|t| s.conditions.iter().find(|c| c.type_ == *t)))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// Polls DataVolume `ns/name` until its phase is `want` (an error if it fails or time runs out).
fn wait_dv_phase(
    client: &NodeClient,
    ns: &str,
    name: &str,
    want: DataVolumePhase,
    wait: std::time::Duration,
) -> Result<(), UploadFailure> {
    let start = std::time::Instant::now();
    loop {
        let dv = client.get_data_volume(ns, name).map_err(|e| refused(&e))?;
        let phase = dv_phase(&dv);
        if phase == want {
            return Ok(());
        }
        if phase == DataVolumePhase::Failed {
            return Err(UploadFailure::Failed(format!("DataVolume {ns}/{name} failed: {}", dv_message(&dv))));
        }
        if start.elapsed() > wait {
            return Err(UploadFailure::Failed(format!(
                "DataVolume {ns}/{name} is still {phase:?} after {}s (waiting for {want:?}): {}",
                wait.as_secs(),
                dv_message(&dv)
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// `virtctl image-upload dv NAME` against the node: creates the DataVolume with an upload source if
/// it does not exist, waits for UploadReady, asks the node for a token, uploads, waits for
/// Succeeded.
pub fn image_upload_via_node(client: &NodeClient, ns: &str, o: &UploadOpts) -> Result<(), UploadFailure> {
    let name = o.name.as_str();
    if let Err(e) = std::fs::metadata(&o.image_path) {
        return Err(UploadFailure::Failed(format!("cannot read {}: {e}", o.image_path.display())));
    }
    match client.get_data_volume(ns, name) {
        Ok(dv) => {
            if dv.spec.source.as_ref().is_none_or(|s| s.upload.is_none()) {
                return Err(UploadFailure::Failed(format!(
                    "DataVolume {ns}/{name} exists and its source is not upload"
                )));
            }
            if dv_phase(&dv) == DataVolumePhase::Succeeded {
                return Err(UploadFailure::Failed(format!("DataVolume {ns}/{name} is already populated")));
            }
            println!("Using existing DataVolume {ns}/{name}");
        }
        Err(e) if e.is_not_found() => {
            if o.no_create {
                return Err(UploadFailure::Failed(format!(
                    "DataVolume {ns}/{name} does not exist (and --no-create was given)"
                )));
            }
            let Some(size) = &o.size else {
                return Err(UploadFailure::Usage(format!(
                    "DataVolume {ns}/{name} does not exist: --size is needed to create it"
                )));
            };
            let size = Quantity::parse(size).map_err(|e| UploadFailure::Usage(format!("--size: {e}")))?;
            let mut meta = ObjectMeta::named(name);
            meta.namespace = Some(ns.to_string());
            let spec = DataVolumeSpec {
                source: Some(DataVolumeSource { upload: Some(UploadSource {}), ..Default::default() }),
                storage: Some(StorageSpec {
                    resources: Some(ResourceRequirements {
                        requests: [("storage".to_string(), size)].into_iter().collect(),
                        ..Default::default()
                    }),
                    storage_class_name: o.storage_class.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            client.create_data_volume(ns, &DataVolume::new(meta, spec)).map_err(|e| refused(&e))?;
            println!("DataVolume {ns}/{name} created");
        }
        Err(e) => return Err(refused(&e)),
    }
    println!("Waiting for DataVolume {ns}/{name} to be ready for the upload...");
    wait_dv_phase(client, ns, name, DataVolumePhase::UploadReady, o.wait)?;
    let token = client.upload_token(ns, name).map_err(|e| refused(&e))?;
    let base = match &o.uploadproxy_url {
        Some(u) => u.clone(),
        None => client.upload_proxy_url().map_err(|e| refused(&e))?.ok_or_else(|| {
            UploadFailure::Failed(
                "the node publishes no upload proxy URL (CDIConfig status.uploadProxyURL): pass \
                 --uploadproxy-url"
                    .into(),
            )
        })?,
    };
    let url = format!("{}/v1beta1/upload", base.trim_end_matches('/'));
    println!("Uploading data to {url}");
    upload_with_bar(&url, &token, &o.image_path, o.insecure, o.quiet)
        .map_err(|e| UploadFailure::Failed(e.to_string()))?;
    println!(
        "Uploading data completed successfully, waiting for processing to complete, you can hit ctrl-c \
         without interrupting the progress"
    );
    wait_dv_phase(client, ns, name, DataVolumePhase::Succeeded, o.wait)?;
    println!("Processing completed successfully");
    println!("Uploading {} completed successfully", o.image_path.display());
    Ok(())
}
