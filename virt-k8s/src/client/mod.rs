//! A client of the local node's API (docs/node-api.md): what `virtctl` is built on, and what an
//! embedder drives a node with.
//!
//! * [`AsyncNodeClient`] speaks HTTP/1.1 (hyper 1, one connection per request) over the node's unix
//!   socket or over TCP with a bearer token; [`NodeClient`] is the same API blocking, on a small tokio
//!   runtime of its own.
//! * Objects are KubeVirt's types from [`virt_core::model`]; what the node sends back is decoded
//!   leniently (fields this version does not know are ignored), what is sent is the caller's.
//! * A refusal is the node's Kubernetes [`Status`] in [`ClientError::Status`], with its `message`,
//!   `reason` and `code`.
//! * [`manifest`] loads `-f` files strictly (unknown fields named by path) before anything is sent;
//!   [`output`] formats tables and YAML like `kubectl get`; [`console`] is the serial console's byte
//!   stream and the terminal attach with the `^]` escape.
//!
//! ```no_run
//! use virt_k8s::client::{Endpoint, NodeClient};
//!
//! let client = NodeClient::new(Endpoint::from_env(None)?, None)?;
//! client.start("default", "testvm")?;
//! for vm in client.list_vms(Some("default"))? {
//!     let status = vm.status.as_ref().and_then(|s| s.printable_status.as_deref());
//!     println!("{} {}", vm.metadata.name.unwrap_or_default(), status.unwrap_or("<none>"));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod console;
mod endpoint;
mod kind;
pub mod kubeconfig;
pub mod manifest;
pub mod output;
pub mod portforward;
mod status;
mod transport;
mod types;
pub mod upload;
pub mod vnc;

mod actions;
mod asynchronous;
mod blocking;
mod cdi;
mod cluster_verbs;
mod error;
pub mod migration;

use std::fmt;
use std::time::Duration;

use crate::registry::segment;

use serde_json::{Map, Value};
use virt_core::api::LoadError;

pub use asynchronous::AsyncNodeClient;
pub use blocking::NodeClient;
pub use console::{AttachEnd, Console, ConsoleError, ConsoleReader, ConsoleStream, ConsoleWriter};
pub use endpoint::{Endpoint, EndpointError, DEFAULT_ENDPOINT, ENV_ENDPOINT, ENV_TOKEN};
pub use error::ClientError;
pub use kind::Kind;
pub use status::Status;
pub use transport::Conn;
pub use types::{Event, Namespace, NamespaceStatus, ObjectReference, Version};

/// The annotation `apply` keeps the applied object in, as `kubectl apply` does.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// How long a request may take by default (connect, send, and read the whole answer).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a list of many VMs is a few MiB).
const MAX_BODY: usize = 64 << 20;

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The object did not exist and was created.
    Created,
    /// The object existed and was replaced.
    Configured,
    /// The object existed as applied last time; nothing was sent.
    Unchanged,
}

impl ApplyOutcome {
    /// `created`, `configured` or `unchanged`, as kubectl prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Configured => "configured",
            Self::Unchanged => "unchanged",
        }
    }
}

impl fmt::Display for ApplyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) fn subresource_path(kind: Kind, namespace: &str, name: &str, sub: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{}/{}/{}/{sub}",
        segment(namespace),
        kind.plural(),
        segment(name)
    )
}

/// `Kind namespace/name` (or `Kind name`) of an object given to create or apply, for messages.
fn describe_object(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("object");
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str);
    let name = name.or_else(|| meta.and_then(|m| m.get("generateName")).and_then(Value::as_str));
    match (meta.and_then(|m| m.get("namespace")).and_then(Value::as_str), name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => format!("{kind} <unnamed>"),
    }
}

/// The kind of an object given to create or apply.
fn kind_of(object: &Value) -> Result<Kind, ClientError> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
    Kind::of(api_version, kind).ok_or_else(|| ClientError::Object {
        object: describe_object(object),
        reason: format!(
            "apiVersion {api_version:?} kind {kind:?} is not served by the node (it stores kubevirt.io/v1 \
             VirtualMachine and VirtualMachineInstance, and v1 Namespace)"
        ),
    })
}

/// Adds `apiVersion` and `kind` to an item of a list that left them out, as Kubernetes lists may.
fn fill_type_meta(value: &mut Value, kind: Kind) {
    if let Value::Object(m) = value {
        m.entry("apiVersion").or_insert_with(|| Value::String(kind.api_version().to_string()));
        m.entry("kind").or_insert_with(|| Value::String(kind.name().to_string()));
    }
}

fn decode_message(e: LoadError) -> String {
    match e {
        LoadError::Decode { errors, .. } => {
            errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    }
}

/// A CDI path: `/apis/cdi.kubevirt.io/v1beta1[/namespaces/NS]/PLURAL[/NAME]`.
fn cdi_path(plural: &str, namespace: Option<&str>, name: Option<&str>) -> String {
    let mut p = "/apis/cdi.kubevirt.io/v1beta1".to_string();
    if let Some(ns) = namespace {
        p.push_str(&format!("/namespaces/{}", segment(ns)));
    }
    p.push('/');
    p.push_str(&segment(plural));
    if let Some(n) = name {
        p.push('/');
        p.push_str(&segment(n));
    }
    p
}

fn grace_body(field: &str, grace_period: Option<u64>) -> Value {
    let mut m = Map::new();
    if let Some(g) = grace_period {
        m.insert(field.to_string(), Value::from(g));
    }
    Value::Object(m)
}

fn set_annotation(object: &mut Value, key: &str, value: &str) {
    let Value::Object(o) = object else { return };
    let meta = o.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else { return };
    let annotations = meta.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(a) = annotations {
        a.insert(key.to_string(), Value::String(value.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::asynchronous::Call;
    use super::*;
    use hyper::Method;
    use virt_core::model::VirtualMachine;

    #[test]
    fn kinds_paths_and_aliases() {
        for alias in ["vm", "VMs", "virtualmachine", "virtualmachines.kubevirt.io"] {
            assert_eq!(Kind::parse_resource(alias), Some(Kind::VirtualMachine), "{alias}");
        }
        for alias in ["vmi", "vmis", "virtualmachineinstance", "virtualmachineinstances"] {
            assert_eq!(Kind::parse_resource(alias), Some(Kind::VirtualMachineInstance), "{alias}");
        }
        assert_eq!(Kind::parse_resource("pods"), None);
        assert_eq!(Kind::parse_resource("dv"), Some(Kind::DataVolume));
        // Every kind has its own registry entry, and its names resolve back to it.
        for k in Kind::ALL {
            assert_eq!(k.resource().kind, k.name());
            assert_eq!(Kind::of(k.api_version(), k.name()), Some(k));
            assert_eq!(Kind::parse_resource(k.plural()), Some(k));
        }
        for k in crate::node::cdi::CdiKind::ALL {
            assert_eq!(k.registered().kind, k.name());
        }
        assert_eq!(
            Kind::VirtualMachine.object_path("default", "a b"),
            "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/a%20b"
        );
        assert_eq!(
            Kind::VirtualMachineInstance.collection_path(None),
            "/apis/kubevirt.io/v1/virtualmachineinstances"
        );
        assert_eq!(Kind::Namespace.object_path("ignored", "ns1"), "/api/v1/namespaces/ns1");
        assert_eq!(
            subresource_path(Kind::VirtualMachine, "d", "x", "start"),
            "/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachines/x/start"
        );
        assert_eq!(Kind::of("kubevirt.io/v1", "VirtualMachine"), Some(Kind::VirtualMachine));
        assert_eq!(Kind::of("v1", "Namespace"), Some(Kind::Namespace));
        assert_eq!(Kind::of("kubevirt.io/v1alpha3", "VirtualMachine"), None);
        assert_eq!(cdi_path("datavolumes", None, None), "/apis/cdi.kubevirt.io/v1beta1/datavolumes");
        assert_eq!(
            cdi_path("datavolumes", Some("default"), Some("a b")),
            "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes/a%20b"
        );
    }

    #[test]
    fn lists_decode_items_without_type_meta_and_name_bad_items() {
        let call = Call { method: Method::GET, path: "/apis/kubevirt.io/v1/virtualmachines" };
        let body = br#"{"kind":"VirtualMachineList","items":[
            {"metadata":{"name":"a","uid":null},"spec":{"template":{"spec":{"domain":{"devices":{}}}}},
             "status":{"printableStatus":"Stopped","someNewField":1}}]}"#;
        let vms: Vec<VirtualMachine> = call.decode_list(body, Some(Kind::VirtualMachine)).unwrap();
        assert_eq!(vms[0].kind, "VirtualMachine");
        assert_eq!(vms[0].status.as_ref().unwrap().printable_status.as_deref(), Some("Stopped"));
        let bad = br#"{"items":[{"metadata":{"name":"a"},"spec":{"running":"yes","template":{"spec":{"domain":{"devices":{}}}}}}]}"#;
        let e = call.decode_list::<VirtualMachine>(bad, Some(Kind::VirtualMachine)).unwrap_err().to_string();
        assert!(e.contains("items[0].spec.running"), "{e}");
        assert!(e.starts_with("GET /apis/kubevirt.io/v1/virtualmachines: cannot decode"), "{e}");
    }

    #[test]
    fn unreachable_names_the_endpoint_and_suggests_virt_node() {
        let dir = std::env::temp_dir().join(format!("virt-k8s-client-test-{}", std::process::id()));
        let client = NodeClient::new(Endpoint::Unix(dir.join("none.sock")), None).unwrap();
        let e = client.version().unwrap_err().to_string();
        assert!(e.contains(&format!("unix://{}", dir.join("none.sock").display())), "{e}");
        assert!(e.contains("virt-node"), "{e}");
    }

    #[test]
    fn object_kind_errors_name_the_object() {
        let pod = serde_json::json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d"}});
        let e = kind_of(&pod).unwrap_err().to_string();
        assert!(e.starts_with("Pod d/p: apiVersion \"v1\" kind \"Pod\" is not served"), "{e}");
    }

    #[test]
    fn annotation_and_grace_bodies() {
        let mut v = serde_json::json!({"metadata":{"name":"x"}});
        set_annotation(&mut v, "a/b", "c");
        assert_eq!(v["metadata"]["annotations"]["a/b"], "c");
        assert_eq!(grace_body("gracePeriod", Some(0)), serde_json::json!({"gracePeriod": 0}));
        assert_eq!(grace_body("gracePeriod", None), serde_json::json!({}));
    }
}
