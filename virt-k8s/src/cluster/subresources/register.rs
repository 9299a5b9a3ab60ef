//! The objects that make the API server proxy `subresources.kubevirt.io/v1` here: the namespace
//! `kubevirt`, a Service `virt-api` without a selector, its Endpoints (this server's address, kept
//! by hand: no pod backs it) and the APIService `v1.subresources.kubevirt.io` carrying this
//! server's certificate as `caBundle`. Applied server-side (field manager `virt-handler`, forced;
//! the APIService created or merge-patched), so registering again replaces the address and the
//! certificate. The API server must route to
//! the endpoint (`--enable-aggregator-routing=true`): there is no kube-proxy for the Service's
//! cluster IP.

use std::net::IpAddr;

use base64::Engine;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use super::SubresourceError;

/// The APIService's name.
pub const API_SERVICE: &str = "v1.subresources.kubevirt.io";
/// The Service's name (KubeVirt's `virt-api`).
pub const SERVICE: &str = "virt-api";
/// The Service's namespace.
pub const SERVICE_NAMESPACE: &str = "kubevirt";

/// Where the server listens and what it presents.
pub struct Registration {
    /// The address the API server reaches.
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// The serving certificate (PEM), the APIService's `caBundle`.
    pub ca_pem: String,
}

/// The objects, in the order they are applied.
pub fn objects(r: &Registration) -> [Value; 4] {
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": SERVICE_NAMESPACE } });
    let meta =
        json!({ "name": SERVICE, "namespace": SERVICE_NAMESPACE, "labels": { "kubevirt.io": "virt-api" } });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": { "ports": [{ "name": "https", "port": 443, "targetPort": r.port, "protocol": "TCP" }] },
    });
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
        "subsets": [{
            "addresses": [{ "ip": r.ip.to_string() }],
            "ports": [{ "name": "https", "port": r.port, "protocol": "TCP" }],
        }],
    });
    let api_service = json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": { "name": API_SERVICE, "labels": { "kubevirt.io": "virt-api" } },
        "spec": {
            "group": "subresources.kubevirt.io",
            "version": "v1",
            "groupPriorityMinimum": 1000,
            "versionPriority": 15,
            "caBundle": base64::engine::general_purpose::STANDARD.encode(r.ca_pem.as_bytes()),
            "service": { "namespace": SERVICE_NAMESPACE, "name": SERVICE, "port": 443 },
        },
    });
    [ns, service, endpoints, api_service]
}

/// Applies [`objects`].
pub async fn register(client: &Client, r: &Registration) -> Result<(), SubresourceError> {
    let pp = PatchParams::apply("virt-handler").force();
    let [ns, service, endpoints, api_service] = objects(r);
    let err = |what: &str| {
        let what = what.to_string();
        move |source| SubresourceError::Api { what: format!("applying {what}"), source }
    };
    Api::<Namespace>::all(client.clone())
        .patch(SERVICE_NAMESPACE, &pp, &Patch::Apply(ns))
        .await
        .map_err(err("namespace kubevirt"))?;
    Api::<Service>::namespaced(client.clone(), SERVICE_NAMESPACE)
        .patch(SERVICE, &pp, &Patch::Apply(service))
        .await
        .map_err(err("service kubevirt/virt-api"))?;
    Api::<Endpoints>::namespaced(client.clone(), SERVICE_NAMESPACE)
        .patch(SERVICE, &pp, &Patch::Apply(endpoints))
        .await
        .map_err(err("endpoints kubevirt/virt-api"))?;
    // A 1.20 aggregator has no field manager for APIServices (server-side apply panics in the API
    // server: "FieldManager must be installed to run apply"): create, else merge-patch the spec.
    let services = Api::<APIService>::all(client.clone());
    let what = "apiservice v1.subresources.kubevirt.io";
    if services.get_opt(API_SERVICE).await.map_err(err(what))?.is_some() {
        let spec = json!({ "spec": api_service["spec"] });
        services.patch(API_SERVICE, &PatchParams::default(), &Patch::Merge(spec)).await.map_err(err(what))?;
    } else {
        let obj: APIService = serde_json::from_value(api_service).map_err(SubresourceError::Object)?;
        services.create(&Default::default(), &obj).await.map_err(err(what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_port_is_named_as_the_service_port() {
        let r = Registration { ip: "10.1.2.3".parse().unwrap(), port: 8443, ca_pem: "PEM".into() };
        let [_, svc, ep, api] = objects(&r);
        // The API server resolves the Service's port 443 to the endpoint port of the same name.
        assert_eq!(svc["spec"]["ports"][0]["name"], ep["subsets"][0]["ports"][0]["name"]);
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8443);
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.1.2.3");
        assert_eq!(api["spec"]["service"]["port"], 443);
        assert_eq!(api["spec"]["caBundle"], "UEVN");
    }
}
