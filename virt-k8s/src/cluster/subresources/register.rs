//! The objects that make the API server proxy `subresources.kubevirt.io/v1` here: the namespace
//! `kubevirt`, a Service `virt-api` without a selector, its Endpoints (this server's address, kept
//! by hand: no pod backs it) and the APIService `v1.subresources.kubevirt.io` carrying this
//! server's certificate as `caBundle`; and the ValidatingWebhookConfiguration
//! `virt-api-validator` sending creates and updates of each kind the local node validates (VMs,
//! VMIs, migrations, instancetypes and preferences, DataVolumes, DataSources, DataImportCrons:
//! [`super::admission::webhooks`], one webhook per resource) to the admission webhook
//! (`admission`) through the same Service's `webhook` port, with the same `caBundle`. Applied
//! server-side (field manager `virt-handler`, forced;
//! the APIService created or merge-patched), so registering again replaces the address and the
//! certificate. The API server must route to
//! the endpoint (`--enable-aggregator-routing=true`): there is no kube-proxy for the Service's
//! cluster IP.

use std::net::IpAddr;

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
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
/// The ValidatingWebhookConfiguration's name.
pub const WEBHOOK_CONFIGURATION: &str = "virt-api-validator";
/// The Service's port for the webhook.
pub const WEBHOOK_SERVICE_PORT: u16 = 8444;

/// Where the server listens and what it presents.
pub struct Registration {
    /// The address the API server reaches.
    pub ip: IpAddr,
    /// The port of the subresources API.
    pub port: u16,
    /// The port of the admission webhook.
    pub webhook_port: u16,
    /// The serving certificate (PEM), the APIService's `caBundle`.
    pub ca_pem: String,
}

/// The objects, in the order they are applied.
pub fn objects(r: &Registration) -> [Value; 5] {
    let ns = json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": SERVICE_NAMESPACE } });
    let meta =
        json!({ "name": SERVICE, "namespace": SERVICE_NAMESPACE, "labels": { "kubevirt.io": "virt-api" } });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": { "ports": [
            { "name": "https", "port": 443, "targetPort": r.port, "protocol": "TCP" },
            { "name": "webhook", "port": WEBHOOK_SERVICE_PORT, "targetPort": r.webhook_port, "protocol": "TCP" },
        ] },
    });
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints", "metadata": meta,
        "subsets": [{
            "addresses": [{ "ip": r.ip.to_string() }],
            "ports": [
                { "name": "https", "port": r.port, "protocol": "TCP" },
                { "name": "webhook", "port": r.webhook_port, "protocol": "TCP" },
            ],
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
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(r.ca_pem.as_bytes());
    // One webhook of the configuration: `rule` sent to `path` on the webhook port.
    let webhook = |name: &str, path: &str, rule: Value, failure_policy: &str, side_effects: &str| {
        json!({
            "name": name,
            "clientConfig": {
                "service": {
                    "namespace": SERVICE_NAMESPACE, "name": SERVICE, "path": path, "port": WEBHOOK_SERVICE_PORT,
                },
                "caBundle": ca_bundle,
            },
            "rules": [rule],
            "failurePolicy": failure_policy,
            "sideEffects": side_effects,
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 10,
        })
    };
    let mut webhooks: Vec<Value> = super::admission::webhooks()
        .iter()
        .map(|w| {
            let rule = json!({
                "apiGroups": [w.group], "apiVersions": [w.version],
                "operations": w.operations, "resources": [w.resource], "scope": w.scope,
            });
            // Only this resource goes through it, so a webhook that is down blocks nothing
            // else; for it, an unchecked object is not stored (as KubeVirt and CDI).
            webhook(w.name, super::admission::PATH, rule, "Fail", "None")
        })
        .collect();
    // Evictions (see `eviction`): every pod's, so Ignore: a webhook that is down must not block
    // drains; the VMI's disruption budget still holds its launcher then.
    let rule = json!({
        "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
        "resources": ["pods/eviction"], "scope": "Namespaced",
    });
    webhooks.push(webhook(super::eviction::NAME, super::eviction::PATH, rule, "Ignore", "NoneOnDryRun"));
    let webhook_configuration = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": { "name": WEBHOOK_CONFIGURATION, "labels": { "kubevirt.io": "virt-api" } },
        "webhooks": webhooks,
    });
    [ns, service, endpoints, api_service, webhook_configuration]
}

/// Applies [`objects`].
pub async fn register(client: &Client, r: &Registration) -> Result<(), SubresourceError> {
    let pp = PatchParams::apply("virt-handler").force();
    let [ns, service, endpoints, api_service, webhook_configuration] = objects(r);
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
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .patch(WEBHOOK_CONFIGURATION, &pp, &Patch::Apply(webhook_configuration))
        .await
        .map_err(err("validatingwebhookconfiguration virt-api-validator"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_ports_are_named_as_the_service_ports() {
        let r = Registration {
            ip: "10.1.2.3".parse().unwrap(),
            port: 8443,
            webhook_port: 9555,
            ca_pem: "PEM".into(),
        };
        let [_, svc, ep, api, hooks] = objects(&r);
        // The API server resolves each Service port to the endpoint port of the same name.
        for i in 0..2 {
            assert_eq!(svc["spec"]["ports"][i]["name"], ep["subsets"][0]["ports"][i]["name"]);
        }
        assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8443);
        assert_eq!(ep["subsets"][0]["ports"][1]["port"], 9555);
        assert_eq!(ep["subsets"][0]["addresses"][0]["ip"], "10.1.2.3");
        assert_eq!(api["spec"]["service"]["port"], 443);
        assert_eq!(api["spec"]["caBundle"], "UEVN");
        // The webhooks reach the webhook port, each checks one resource of its own group, fails
        // closed and does nothing else.
        let webhooks = hooks["webhooks"].as_array().unwrap();
        assert_eq!(webhooks.len(), super::super::admission::webhooks().len() + 1);
        // The eviction interceptor: evictions only, failing open (the disruption budget holds).
        let (eviction, webhooks) = webhooks.split_last().unwrap();
        assert_eq!(eviction["name"], "virt-launcher-eviction-interceptor.kubevirt.io");
        assert_eq!(eviction["clientConfig"]["service"]["path"], "/evict");
        assert_eq!(eviction["rules"][0]["resources"], json!(["pods/eviction"]));
        assert_eq!(eviction["rules"][0]["operations"], json!(["CREATE"]));
        assert_eq!(eviction["failurePolicy"], "Ignore");
        assert_eq!(eviction["sideEffects"], "NoneOnDryRun");
        for h in webhooks {
            assert_eq!(h["clientConfig"]["service"]["port"], svc["spec"]["ports"][1]["port"]);
            assert_eq!(h["clientConfig"]["service"]["path"], "/validate");
            assert_eq!(h["clientConfig"]["caBundle"], "UEVN");
            assert_eq!(h["rules"].as_array().unwrap().len(), 1, "{h}");
            assert_eq!(h["rules"][0]["resources"].as_array().unwrap().len(), 1, "{h}");
            assert_eq!(h["failurePolicy"], "Fail");
            assert_eq!(h["sideEffects"], "None");
            let group = h["rules"][0]["apiGroups"][0].as_str().unwrap();
            assert!(h["name"].as_str().unwrap().ends_with(group), "{h}");
        }
        let rule = |name: &str| {
            let h = webhooks.iter().find(|h| h["name"] == name).unwrap_or_else(|| panic!("{name}"));
            h["rules"][0].clone()
        };
        assert_eq!(
            rule("virtualmachine-validator.kubevirt.io"),
            json!({ "apiGroups": ["kubevirt.io"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                    "resources": ["virtualmachines"], "scope": "Namespaced" })
        );
        assert_eq!(rule("migration-create-validator.kubevirt.io")["operations"], json!(["CREATE"]));
        assert_eq!(
            rule("virtualmachineclusterpreference-validator.instancetype.kubevirt.io"),
            json!({ "apiGroups": ["instancetype.kubevirt.io"], "apiVersions": ["v1beta1"],
                    "operations": ["CREATE", "UPDATE"], "resources": ["virtualmachineclusterpreferences"],
                    "scope": "Cluster" })
        );
        assert_eq!(rule("datavolume-validate.cdi.kubevirt.io")["resources"], json!(["datavolumes"]));
    }
}
