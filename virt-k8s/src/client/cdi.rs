//! CDI requests of [`AsyncNodeClient`] (cdi.kubevirt.io/v1beta1; docs/node-api.md): DataVolumes,
//! DataSources, DataImportCrons, upload tokens.

use crate::registry::segment;

use hyper::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use virt_storage::cdi::DataVolume;

use super::asynchronous::Call;
use super::cdi_path;
use super::AsyncNodeClient;
use super::ClientError;

impl AsyncNodeClient {
    /// The objects of CDI resource `plural` (`datavolumes`, `datasources`, `dataimportcrons`) in
    /// `namespace`, or in all namespaces with `None`.
    pub async fn cdi_list<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        self.list(&cdi_path(plural, namespace, None), None).await
    }

    /// One CDI object.
    pub async fn cdi_get<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<T, ClientError> {
        self.get_json(&cdi_path(plural, Some(namespace), Some(name)), None).await
    }

    /// Creates a CDI object in `namespace`; returns what the node stored.
    pub async fn cdi_create<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        object: &T,
    ) -> Result<R, ClientError> {
        let path = cdi_path(plural, Some(namespace), None);
        let value = serde_json::to_value(object).map_err(|e| ClientError::Request {
            method: "POST".to_string(),
            path: path.clone(),
            reason: format!("encoding the object: {e}"),
        })?;
        let body = self.send(Method::POST, &path, Some(&value)).await?;
        Call { method: Method::POST, path: &path }.decode(&body, None)
    }

    /// Deletes a CDI object (a DataVolume's volume goes with it).
    pub async fn cdi_delete(&self, plural: &str, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &cdi_path(plural, Some(namespace), Some(name)), None).await.map(drop)
    }

    /// One DataVolume.
    pub async fn get_data_volume(&self, namespace: &str, name: &str) -> Result<DataVolume, ClientError> {
        self.cdi_get("datavolumes", namespace, name).await
    }

    /// The DataVolumes of `namespace`, or of all namespaces with `None`.
    pub async fn list_data_volumes(&self, namespace: Option<&str>) -> Result<Vec<DataVolume>, ClientError> {
        self.cdi_list("datavolumes", namespace).await
    }

    /// Creates a DataVolume in `namespace`.
    pub async fn create_data_volume(
        &self,
        namespace: &str,
        dv: &DataVolume,
    ) -> Result<DataVolume, ClientError> {
        self.cdi_create("datavolumes", namespace, dv).await
    }

    /// Deletes a DataVolume and its volume.
    pub async fn delete_data_volume(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.cdi_delete("datavolumes", namespace, name).await
    }

    /// A token for one upload into DataVolume `claim` (CDI's UploadTokenRequest).
    pub async fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, ClientError> {
        let path = format!(
            "/apis/upload.cdi.kubevirt.io/v1beta1/namespaces/{}/uploadtokenrequests",
            segment(namespace)
        );
        let request = serde_json::json!({
            "apiVersion": "upload.cdi.kubevirt.io/v1beta1",
            "kind": "UploadTokenRequest",
            "metadata": { "name": claim, "namespace": namespace },
            "spec": { "pvcName": claim },
        });
        let body = self.send(Method::POST, &path, Some(&request)).await?;
        let call = Call { method: Method::POST, path: &path };
        let answer: Value = serde_json::from_slice(&body).map_err(|e| call.decode_error(e.to_string()))?;
        answer
            .pointer("/status/token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| call.decode_error("status.token: required field is missing"))
    }

    /// Where the node takes uploads (CDIConfig's `status.uploadProxyURL`), if it says.
    pub async fn upload_proxy_url(&self) -> Result<Option<String>, ClientError> {
        let config: Value = self.get_json(&cdi_path("cdiconfigs", None, Some("config")), None).await?;
        Ok(config.pointer("/status/uploadProxyURL").and_then(Value::as_str).map(str::to_string))
    }
}
