//! start, stop and restart against a Kubernetes API server that serves the kubevirt.io CRDs but no
//! `subresources.kubevirt.io` API (virt-controller without an aggregated virt-api): the same
//! `lifecycle::strategy::request` the node's subresource runs decides, and the client carries
//! the answer out by updating the VM (its run strategy with a PUT of the object, queued state
//! changes with a PUT of `/status`), as KubeVirt's virt-api does server-side.

use hyper::Method;
use serde_json::Value;
use virt_core::lifecycle::strategy::{self, InstanceView, Request};
use virt_core::model::VmiPhase;

use super::{AsyncNodeClient, ClientError, Kind};

/// The server has no such path: a 404 whose Status is the API server's generic NotFound (a
/// missing VM on the node or a cluster names the VM; this names no object).
pub(super) fn no_subresource_api(e: &ClientError) -> bool {
    match e {
        ClientError::Status { status, .. } => {
            status.code == 404 && status.message.contains("the server could not find the requested resource")
        }
        ClientError::Unexpected { code, .. } => *code == 404,
        _ => false,
    }
}

impl AsyncNodeClient {
    /// Carries out `request` on VM `namespace/name` by updating it (see the module's doc).
    pub(super) async fn request_by_update(
        &self,
        namespace: &str,
        name: &str,
        request: Request,
    ) -> Result<(), ClientError> {
        let path = Kind::VirtualMachine.object_path(namespace, name);
        let vm = self.get_vm(namespace, name).await?;
        let vmi = match self.get_vmi(namespace, name).await {
            Ok(v) => Some(InstanceView {
                phase: v.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending),
                deleting: v.metadata.deletion_timestamp.is_some(),
            }),
            Err(ClientError::Status { status, .. }) if status.code == 404 => None,
            Err(e) => return Err(e),
        };
        let outcome = strategy::request(vm.spec.effective_run_strategy(), vmi, request).map_err(|e| {
            ClientError::Request {
                method: "PUT".into(),
                path: format!("{path}/{request:?}"),
                reason: e.to_string(),
            }
        })?;
        let mut object: Value = self.get_json(&path, None).await?;
        if let Some(s) = outcome.new_strategy {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("running");
                spec.insert("runStrategy".into(), Value::String(s.as_str().into()));
            }
            let stored = self.send(Method::PUT, &path, Some(&object)).await?;
            object = serde_json::from_slice(&stored).unwrap_or(object);
        }
        if !outcome.queue.is_empty() {
            let status = object
                .as_object_mut()
                .map(|o| o.entry("status").or_insert_with(|| Value::Object(Default::default())));
            if let Some(Value::Object(st)) = status {
                let queue = st.entry("stateChangeRequests").or_insert_with(|| Value::Array(vec![]));
                if let Value::Array(q) = queue {
                    q.extend(outcome.queue.iter().map(|c| serde_json::json!({ "action": c.as_str() })));
                }
            }
            self.send(Method::PUT, &format!("{path}/status"), Some(&object)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Status;

    fn status_err(code: u16, message: &str) -> ClientError {
        ClientError::Status {
            method: "PUT".into(),
            path: "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/start".into(),
            status: Box::new(Status {
                code,
                message: message.into(),
                reason: "NotFound".into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn only_the_api_servers_generic_404_means_no_subresource_api() {
        // What kube-apiserver 1.20 answers for a group it does not serve.
        assert!(no_subresource_api(&status_err(404, "the server could not find the requested resource")));
        // A missing VM names the VM: the verb's own error, no fallback.
        assert!(!no_subresource_api(&status_err(404, "virtualmachines.kubevirt.io \"vm\" not found")));
        assert!(!no_subresource_api(&status_err(409, "the server could not find the requested resource")));
    }
}
