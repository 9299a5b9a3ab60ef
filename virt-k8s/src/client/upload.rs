//! Uploading a disk image into a DataVolume through the node, as `virtctl image-upload dv` does:
//! the DataVolume is created with an `upload` source when missing, the upload waits for
//! `UploadReady`, the node issues the token, the bytes go to the upload proxy, and the call returns
//! once the DataVolume is `Succeeded`. Each step is reported to the caller (a progress bar, a log).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use virt_storage::cdi::{
    DataVolume, DataVolumePhase, DataVolumeSource, DataVolumeSpec, ObjectMeta, Quantity,
    ResourceRequirements, StorageSpec, UploadSource,
};
use virt_storage::upload::UploadError;

use super::{ClientError, NodeClient};

/// What to upload where.
#[derive(Debug, Clone)]
pub struct ImageUpload {
    /// Namespace of the DataVolume.
    pub namespace: String,
    /// The DataVolume's name.
    pub name: String,
    /// The image file (raw, qcow2, iso, or gzip/xz-compressed raw).
    pub image_path: PathBuf,
    /// The upload endpoint; by default the node's (CDIConfig `status.uploadProxyURL`).
    pub uploadproxy_url: Option<String>,
    /// Size of a DataVolume to create (needed when it does not exist).
    pub size: Option<Quantity>,
    /// Storage class of a DataVolume to create.
    pub storage_class: Option<String>,
    /// Never create the DataVolume.
    pub no_create: bool,
    /// How long to wait for `UploadReady`, and for `Succeeded` after the upload.
    pub wait: Duration,
    /// Accept the upload endpoint's certificate without checking it.
    pub insecure: bool,
}

/// A step of [`upload_image`], for the caller to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadStep {
    /// The DataVolume exists with an upload source and is used.
    UsingExisting,
    /// The DataVolume was created.
    Created,
    /// Waiting for the DataVolume to be `UploadReady`.
    WaitingForReady,
    /// Sending the image to this URL.
    Uploading(String),
    /// Bytes sent of the total.
    Sent {
        /// Bytes sent so far.
        sent: u64,
        /// The image's size.
        total: u64,
    },
    /// Sent; the node converts and checks the image.
    Processing,
    /// The DataVolume is `Succeeded`.
    Done,
}

/// Why an upload did not complete; each names the DataVolume or the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageUploadError {
    /// The image file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Image {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The DataVolume exists with another source.
    #[error("DataVolume {namespace}/{name} exists and its source is not upload")]
    NotAnUploadSource {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The DataVolume already holds its data.
    #[error("DataVolume {namespace}/{name} is already populated")]
    AlreadyPopulated {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The DataVolume does not exist and may not be created.
    #[error("DataVolume {namespace}/{name} does not exist (and --no-create was given)")]
    Missing {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The DataVolume does not exist and no size was given to create it.
    #[error("DataVolume {namespace}/{name} does not exist: --size is needed to create it")]
    SizeNeeded {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// The DataVolume failed.
    #[error("DataVolume {namespace}/{name} failed: {message}")]
    Failed {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Its Running/Ready condition's message.
        message: String,
    },
    /// The DataVolume did not reach the phase in time.
    #[error("DataVolume {namespace}/{name} is still {phase:?} after {}s (waiting for {want:?}): {message}", waited.as_secs())]
    Timeout {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Its phase.
        phase: DataVolumePhase,
        /// The phase waited for.
        want: DataVolumePhase,
        /// How long.
        waited: Duration,
        /// Its Running/Ready condition's message.
        message: String,
    },
    /// No endpoint was given and the node publishes none.
    #[error(
        "the node publishes no upload proxy URL (CDIConfig status.uploadProxyURL): pass --uploadproxy-url"
    )]
    NoUploadProxy,
    /// The node refused a request or could not be reached.
    #[error("{}", node_message(.0))]
    Node(#[from] ClientError),
    /// Sending the bytes failed.
    #[error(transparent)]
    Upload(#[from] UploadError),
}

impl ImageUploadError {
    /// A missing argument rather than a failure (virtctl exits 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::SizeNeeded { .. })
    }
}

fn node_message(e: &ClientError) -> String {
    match e.status() {
        Some(status) => status.to_string(),
        None => e.to_string(),
    }
}

fn phase(dv: &DataVolume) -> DataVolumePhase {
    dv.status.as_ref().and_then(|s| s.phase).unwrap_or(DataVolumePhase::Pending)
}

/// The message of a DataVolume's Running or Ready condition, for errors.
fn message(dv: &DataVolume) -> String {
    dv.status
        .as_ref()
        .and_then(|s| ["Running", "Ready"].iter().find_map(|t| s.conditions.iter().find(|c| c.type_ == *t)))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// Polls the DataVolume until its phase is `want` (an error if it fails or time runs out).
fn wait_for(client: &NodeClient, up: &ImageUpload, want: DataVolumePhase) -> Result<(), ImageUploadError> {
    let (ns, name) = (up.namespace.as_str(), up.name.as_str());
    let start = Instant::now();
    loop {
        let dv = client.get_data_volume(ns, name)?;
        let now = phase(&dv);
        if now == want {
            return Ok(());
        }
        if now == DataVolumePhase::Failed {
            return Err(ImageUploadError::Failed {
                namespace: ns.into(),
                name: name.into(),
                message: message(&dv),
            });
        }
        if start.elapsed() > up.wait {
            return Err(ImageUploadError::Timeout {
                namespace: ns.into(),
                name: name.into(),
                phase: now,
                want,
                waited: up.wait,
                message: message(&dv),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Makes sure the DataVolume exists with an upload source and is not populated yet.
fn ensure_data_volume(client: &NodeClient, up: &ImageUpload) -> Result<UploadStep, ImageUploadError> {
    let (ns, name) = (up.namespace.as_str(), up.name.as_str());
    match client.get_data_volume(ns, name) {
        Ok(dv) => {
            if dv.spec.source.as_ref().is_none_or(|s| s.upload.is_none()) {
                return Err(ImageUploadError::NotAnUploadSource { namespace: ns.into(), name: name.into() });
            }
            if phase(&dv) == DataVolumePhase::Succeeded {
                return Err(ImageUploadError::AlreadyPopulated { namespace: ns.into(), name: name.into() });
            }
            Ok(UploadStep::UsingExisting)
        }
        Err(e) if e.is_not_found() => {
            if up.no_create {
                return Err(ImageUploadError::Missing { namespace: ns.into(), name: name.into() });
            }
            let Some(size) = &up.size else {
                return Err(ImageUploadError::SizeNeeded { namespace: ns.into(), name: name.into() });
            };
            let mut meta = ObjectMeta::named(name);
            meta.namespace = Some(ns.to_string());
            let spec = DataVolumeSpec {
                source: Some(DataVolumeSource { upload: Some(UploadSource {}), ..Default::default() }),
                storage: Some(StorageSpec {
                    resources: Some(ResourceRequirements {
                        requests: [("storage".to_string(), size.clone())].into_iter().collect(),
                        ..Default::default()
                    }),
                    storage_class_name: up.storage_class.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            client.create_data_volume(ns, &DataVolume::new(meta, spec))?;
            Ok(UploadStep::Created)
        }
        Err(e) => Err(e.into()),
    }
}

/// Uploads `up.image_path` into the DataVolume through the node, reporting each step to `step`.
pub fn upload_image(
    client: &NodeClient,
    up: &ImageUpload,
    step: &mut dyn FnMut(UploadStep),
) -> Result<(), ImageUploadError> {
    if let Err(source) = std::fs::metadata(&up.image_path) {
        return Err(ImageUploadError::Image { path: up.image_path.clone(), source });
    }
    step(ensure_data_volume(client, up)?);
    step(UploadStep::WaitingForReady);
    wait_for(client, up, DataVolumePhase::UploadReady)?;
    let token = client.upload_token(&up.namespace, &up.name)?;
    let base = match &up.uploadproxy_url {
        Some(u) => u.clone(),
        None => client.upload_proxy_url()?.ok_or(ImageUploadError::NoUploadProxy)?,
    };
    let url = upload_url(&base);
    step(UploadStep::Uploading(url.clone()));
    virt_storage::upload::upload_file(&url, &token, &up.image_path, up.insecure, &mut |sent, total| {
        step(UploadStep::Sent { sent, total })
    })?;
    step(UploadStep::Processing);
    wait_for(client, up, DataVolumePhase::Succeeded)?;
    step(UploadStep::Done);
    Ok(())
}

/// The upload path under an upload proxy's base URL.
pub fn upload_url(base: &str) -> String {
    format!("{}/v1beta1/upload", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_path_is_added_once() {
        assert_eq!(upload_url("https://node:8443/"), "https://node:8443/v1beta1/upload");
        assert_eq!(upload_url("https://node:8443"), "https://node:8443/v1beta1/upload");
    }

    #[test]
    fn only_a_missing_size_is_a_usage_error() {
        let (namespace, name) = ("default".to_string(), "dv".to_string());
        assert!(ImageUploadError::SizeNeeded { namespace: namespace.clone(), name: name.clone() }.is_usage());
        assert!(!ImageUploadError::Missing { namespace, name }.is_usage());
        assert!(!ImageUploadError::NoUploadProxy.is_usage());
    }
}
