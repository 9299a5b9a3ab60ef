//! Uploads: the URL `virtctl image-upload` sends to, tokens for DataVolumes whose source is
//! `upload`, and what happens when an upload ends.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use virt_core::lifecycle::Key;
use virt_storage::cdi::DataVolumePhase;
use virt_storage::volume::{VolumeFormat, VolumeId, VolumeProvider};

use super::{dv_condition, is_upload, lock, phase_of, set_dv_condition, Cdi, CdiError, UPLOAD_TOKEN_TTL};

impl Cdi {
    /// Where `virtctl image-upload` sends images (`http://ADDR`), once [`Cdi::serve_uploads`]
    /// listens.
    pub fn upload_url(&self) -> Option<String> {
        lock(&self.upload_url).clone()
    }

    /// Issues a token for one upload into the DataVolume `namespace/claim` (CDI's
    /// UploadTokenRequest). The DataVolume's source must be `upload` and it must not be populated.
    pub fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, CdiError> {
        let dv = self
            .data_volume(namespace, claim)
            .ok_or_else(|| CdiError::NotFound { resource: "persistentvolumeclaims", name: claim.into() })?;
        if !is_upload(&dv) {
            let source = dv
                .spec
                .source
                .as_ref()
                .and_then(|s| s.single().map(|k| k.field().to_string()))
                .or_else(|| dv.spec.source_ref.as_ref().map(|_| "sourceRef".to_string()))
                .unwrap_or_else(|| "none".into());
            return Err(CdiError::BadRequest(format!(
                "DataVolume {namespace}/{claim} does not take uploads: its source is {source}, not upload"
            )));
        }
        if phase_of(&dv) == Some(DataVolumePhase::Succeeded) {
            return Err(CdiError::Conflict(format!(
                "DataVolume {namespace}/{claim} is already populated (phase Succeeded)"
            )));
        }
        let id = VolumeId::new(namespace, claim);
        Ok(self.uploads.issue_token(&id, VolumeFormat::Raw, UPLOAD_TOKEN_TTL)?)
    }

    /// The upload endpoint's routes (`/v1beta1/upload`, CDI's upload proxy path) for the node's
    /// API listeners too, so that the web console uploads from its own origin. The upload token
    /// (an UploadTokenRequest's, single use) is its authorisation, as on the endpoint's own
    /// listener.
    pub fn upload_router(&self) -> axum::Router {
        self.uploads.router()
    }

    /// Binds the upload endpoint on `near`'s address (the node's TCP listener) or 127.0.0.1, on a
    /// free port, records its URL, and serves it until `shutdown` resolves.
    pub async fn serve_uploads(
        &self,
        near: Option<SocketAddr>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<tokio::task::JoinHandle<()>, CdiError> {
        let ip = near.map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let addr = SocketAddr::new(ip, 0);
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| CdiError::Io {
            what: "listening for uploads on",
            path: addr.to_string(),
            source,
        })?;
        let bound = listener.local_addr().map_err(|source| CdiError::Io {
            what: "reading the address of",
            path: addr.to_string(),
            source,
        })?;
        let url = format!("http://{bound}");
        log::info!("virt-node: upload endpoint on {url}/v1beta1/upload");
        {
            // Imports may not reach the upload endpoint either.
            let mut policy = lock(&self.net_policy);
            if let Some(p) = policy.as_ref() {
                *policy = Some(Arc::new(p.as_ref().clone().protect(bound)));
            }
        }
        *lock(&self.upload_url) = Some(url);
        let app = self.uploads.router();
        Ok(tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
        }))
    }

    /// Told by the upload endpoint when an upload ended.
    pub(super) fn upload_finished(
        &self,
        id: &VolumeId,
        result: &Result<(), virt_storage::upload::UploadFailed>,
    ) {
        let key = Key::new(&id.namespace, &id.name);
        let mut st = lock(&self.state);
        let wanted = st.dvs.get(&key).is_some_and(is_upload);
        match result {
            Ok(()) if !wanted => {
                drop(st);
                // The DataVolume went away while the image was on its way.
                log::warn!("upload into {id}: no DataVolume takes it any more; deleting the volume");
                if let Err(e) = self.pool.delete(id) {
                    log::warn!("deleting {id}: {e}");
                }
                return;
            }
            Ok(()) => {
                log::info!("DataVolume {key}: upload complete");
                st.dv_next.remove(&key);
            }
            Err(msg) => {
                if let Some(dv) = st.dvs.get_mut(&key) {
                    let status = dv.status.get_or_insert_with(Default::default);
                    set_dv_condition(
                        &mut status.conditions,
                        dv_condition("Running", false, "UploadFailed", &format!("upload failed: {msg}")),
                    );
                }
            }
        }
        drop(st);
        self.wake();
    }
}
