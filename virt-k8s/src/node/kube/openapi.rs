//! `/openapi/v2`: the OpenAPI v2 document kubectl downloads (as gnostic's protobuf
//! `openapi.v2.Document`, or JSON) to validate what it sends. Every kind of the registry has a
//! definition tagged with `x-kubernetes-group-version-kind`, whose top-level fields (`apiVersion`,
//! `kind`, `metadata`, `spec`, `status`) are closed: kubectl refuses an unknown top-level field
//! before sending; deeper fields are checked by the node's strict decoders, which refuse unknown
//! fields with their path (a 422 `Status`).

use serde_json::{json, Map, Value};

use crate::registry::{Resource, RESOURCES};

/// The protobuf media type kubectl asks for first (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`;
/// answered as `application/octet-stream`, as kube-openapi does: Go's media type parser refuses the
/// `@`).
pub const PROTOBUF: &str = "application/octet-stream";

/// The definition name of a kind: `io.kubevirt.v1.VirtualMachine` (reversed group, version, kind).
fn definition_name(r: &Resource) -> String {
    let group: Vec<&str> =
        if r.group.is_empty() { vec!["io", "k8s", "api", "core"] } else { r.group.rsplit('.').collect() };
    format!("{}.{}.{}", group.join("."), r.version, r.kind)
}

/// The top-level fields of every kind and what they hold.
const FIELDS: [(&str, &str, bool); 5] = [
    ("apiVersion", "APIVersion defines the versioned schema of this representation of an object.", true),
    ("kind", "Kind is a string value representing the REST resource this object represents.", true),
    ("metadata", "Standard object's metadata.", false),
    ("spec", "The desired state (checked field by field by the node).", false),
    ("status", "The observed state, written by the node.", false),
];

fn kinds() -> impl Iterator<Item = &'static Resource> {
    RESOURCES.iter().filter(|r| r.verbs.contains(&"create") || r.verbs.contains(&"get"))
}

/// The document as JSON.
pub fn json_document() -> Value {
    let mut defs = Map::new();
    for r in kinds() {
        let mut props = Map::new();
        for (name, description, string) in FIELDS {
            let mut p = json!({ "description": description });
            if string {
                p["type"] = json!("string");
            }
            props.insert(name.to_string(), p);
        }
        defs.insert(
            definition_name(r),
            json!({
                "description": format!("{} ({})", r.kind, r.api_version),
                "type": "object",
                "properties": props,
                "x-kubernetes-group-version-kind": [{ "group": r.group, "kind": r.kind, "version": r.version }],
            }),
        );
    }
    json!({
        "swagger": "2.0",
        "info": { "title": "virt-node", "version": concat!("v", env!("CARGO_PKG_VERSION")) },
        "paths": {},
        "definitions": defs,
    })
}

/// Protobuf wire encoding, just what gnostic's messages need: length-delimited fields.
struct Pb(Vec<u8>);

impl Pb {
    fn new() -> Self {
        Self(Vec::new())
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn bytes(&mut self, field: u32, data: &[u8]) -> &mut Self {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(data.len() as u64);
        self.0.extend_from_slice(data);
        self
    }

    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(&mut self, field: u32, m: &Pb) -> &mut Self {
        self.bytes(field, &m.0)
    }
}

/// gnostic's `Schema`: description (4), type (22, a `TypeItem`), properties (25, `Properties` of
/// `NamedSchema`s), vendor extensions (31, `NamedAny`s with YAML values).
fn schema(description: &str, ty: Option<&str>, properties: &[(&str, Pb)], gvk: Option<&Resource>) -> Pb {
    let mut s = Pb::new();
    s.string(4, description);
    if let Some(t) = ty {
        s.message(22, Pb::new().string(1, t));
    }
    if !properties.is_empty() {
        let mut props = Pb::new();
        for (name, value) in properties {
            props.message(1, Pb::new().string(1, name).message(2, value));
        }
        s.message(25, &props);
    }
    if let Some(r) = gvk {
        let yaml = format!("- group: \"{}\"\n  kind: {}\n  version: {}\n", r.group, r.kind, r.version);
        let any = {
            let mut a = Pb::new();
            a.string(2, &yaml);
            a
        };
        s.message(31, Pb::new().string(1, "x-kubernetes-group-version-kind").message(2, &any));
    }
    s
}

/// The document as gnostic's protobuf `openapi.v2.Document`: swagger (1), info (2), definitions
/// (9).
pub fn protobuf_document() -> Vec<u8> {
    let mut defs = Pb::new();
    for r in kinds() {
        let props: Vec<(&str, Pb)> = FIELDS
            .iter()
            .map(|(name, description, string)| {
                (*name, schema(description, string.then_some("string"), &[], None))
            })
            .collect();
        let s = schema(&format!("{} ({})", r.kind, r.api_version), Some("object"), &props, Some(r));
        defs.message(1, Pb::new().string(1, &definition_name(r)).message(2, &s));
    }
    let mut info = Pb::new();
    info.string(1, "virt-node").string(2, concat!("v", env!("CARGO_PKG_VERSION")));
    let mut doc = Pb::new();
    doc.string(1, "2.0").message(2, &info).message(9, &defs);
    doc.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definitions_name_their_kinds() {
        let doc = json_document();
        let vm = &doc["definitions"]["io.kubevirt.v1.VirtualMachine"];
        assert_eq!(vm["x-kubernetes-group-version-kind"][0]["kind"], "VirtualMachine");
        assert!(doc["definitions"]["io.kubevirt.cdi.v1beta1.DataVolume"].is_object());
        assert!(doc["definitions"]["io.k8s.api.core.v1.Namespace"].is_object());
    }

    #[test]
    fn protobuf_starts_with_the_swagger_version() {
        let pb = protobuf_document();
        assert_eq!(&pb[..5], b"\x0a\x032.0");
        let text = String::from_utf8_lossy(&pb);
        assert!(
            text.contains("io.kubevirt.v1.VirtualMachine")
                && text.contains("x-kubernetes-group-version-kind")
        );
    }
}
