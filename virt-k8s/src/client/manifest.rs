//! `-f FILE` for create and apply: one or several YAML documents (or a JSON object), loaded as
//! strictly as the node loads them (through [`virt_core::api`], so a malformed document or an
//! unknown field is refused with its path before anything is sent), each of a kind the node creates
//! (KubeVirt's VMs, VMIs, instancetypes and preferences; CDI's DataVolumes, DataSources and
//! DataImportCrons; VolumeSnapshots; Namespaces), with its namespace settled.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;
use virt_core::api::{self, Decoder, Document, Kinds, LoadError, LoadOptions, ObjectMeta};
use virt_core::model::KubeVirtObject;
use virt_storage::cdi::{CdiObject, VolumeSnapshot};

use super::Kind;

/// The namespace of objects that name none, when `-n` does not either.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file (or standard input) could not be read.
    #[error("reading {source_name}: {error}")]
    Read {
        /// The file, or `standard input`.
        source_name: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A document is malformed, or has unknown or invalid fields.
    #[error("{source_name}: {error}")]
    Load {
        /// The file, or `standard input`.
        source_name: String,
        /// What is wrong, with the document number and field paths.
        error: LoadError,
    },
    /// A kind the node does not store.
    #[error(
        "{source_name}: document {document}: {api_version} {kind} {name}: not a kind the node creates (see \
         `kubectl api-resources`: KubeVirt's VMs, VMIs, instancetypes and preferences, CDI's DataVolumes, \
         DataSources and DataImportCrons, VolumeSnapshots, Namespaces)"
    )]
    Unsupported {
        /// The file, or `standard input`.
        source_name: String,
        /// Document number, from 1.
        document: usize,
        /// Its apiVersion.
        api_version: String,
        /// Its kind.
        kind: String,
        /// Its name, or `<unnamed>`.
        name: String,
    },
    /// The document's namespace differs from `-n`.
    #[error(
        "{source_name}: document {document}: the namespace from the provided object {object:?} does not match \
         the namespace {flag:?}; pass --namespace={object} or leave the namespace out of the object"
    )]
    NamespaceMismatch {
        /// The file, or `standard input`.
        source_name: String,
        /// Document number, from 1.
        document: usize,
        /// `metadata.namespace`.
        object: String,
        /// `-n`.
        flag: String,
    },
    /// Neither `metadata.name` nor `metadata.generateName`.
    #[error(
        "{source_name}: document {document}: {kind} has neither metadata.name nor metadata.generateName"
    )]
    Unnamed {
        /// The file, or `standard input`.
        source_name: String,
        /// Document number, from 1.
        document: usize,
        /// Its kind.
        kind: &'static str,
    },
    /// No documents.
    #[error("{source_name}: no objects to send")]
    Empty {
        /// The file, or `standard input`.
        source_name: String,
    },
}

/// One object of a manifest, checked and ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Document number in its file, from 1.
    pub document: usize,
    /// Its kind.
    pub kind: Kind,
    /// `metadata.name` (`None` with only `generateName`).
    pub name: Option<String>,
    /// The namespace it goes to (for a Namespace, the namespace itself).
    pub namespace: String,
    /// The document as written, `null` members dropped: what is sent.
    pub object: Value,
}

/// What a document decodes to: the kinds the node stores, or something else (refused).
enum Loadable {
    Stored(Kind, Box<ObjectMeta>),
    Other,
}

/// A core `v1` `Namespace`, strictly: only these fields.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // read for strict decoding only
struct StrictNamespace {
    api_version: String,
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<NamespaceSpec>,
    #[serde(default)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[allow(dead_code)] // read for strict decoding only
struct NamespaceSpec {
    #[serde(default)]
    finalizers: Vec<String>,
}

impl Kinds for Loadable {
    fn decode(doc: Document, decoder: &mut Decoder<'_>) -> Result<Self, LoadError> {
        if doc.group.is_empty() && doc.kind == "Namespace" {
            if doc.version != "v1" {
                return Err(LoadError::UnsupportedVersion {
                    document: doc.number,
                    api_version: doc.api_version,
                    kind: doc.kind,
                    supported: "v1",
                });
            }
            let ns: StrictNamespace = decoder.decode(doc.value, "")?;
            return Ok(Self::Stored(Kind::Namespace, Box::new(ns.metadata)));
        }
        if doc.group.is_empty() && matches!(doc.kind.as_str(), "Secret" | "ConfigMap") {
            if doc.version != "v1" {
                return Err(LoadError::UnsupportedVersion {
                    document: doc.number,
                    api_version: doc.api_version,
                    kind: doc.kind,
                    supported: "v1",
                });
            }
            // The node checks the data (keys, base64, size); here only the metadata is read.
            let kind = if doc.kind == "Secret" { Kind::Secret } else { Kind::ConfigMap };
            let meta: ObjectMeta = match doc.value.get("metadata") {
                Some(m) => decoder.decode(m.clone(), "metadata")?,
                None => ObjectMeta::default(),
            };
            return Ok(Self::Stored(kind, Box::new(meta)));
        }
        if doc.group == "cdi.kubevirt.io" {
            return Ok(match CdiObject::decode(doc, decoder)? {
                CdiObject::DataVolume(o) => Self::Stored(Kind::DataVolume, Box::new(o.metadata)),
                CdiObject::DataSource(o) => Self::Stored(Kind::DataSource, Box::new(o.metadata)),
                CdiObject::DataImportCron(o) => Self::Stored(Kind::DataImportCron, Box::new(o.metadata)),
                _ => Self::Other,
            });
        }
        if doc.group == "snapshot.storage.k8s.io" && doc.kind == "VolumeSnapshot" {
            if doc.version != "v1" {
                return Err(LoadError::UnsupportedVersion {
                    document: doc.number,
                    api_version: doc.api_version,
                    kind: doc.kind,
                    supported: "v1",
                });
            }
            let vs: VolumeSnapshot = decoder.decode(doc.value, "")?;
            return Ok(Self::Stored(Kind::VolumeSnapshot, Box::new(vs.metadata)));
        }
        Ok(match KubeVirtObject::decode(doc, decoder)? {
            KubeVirtObject::VirtualMachine(vm) => Self::Stored(Kind::VirtualMachine, Box::new(vm.metadata)),
            KubeVirtObject::VirtualMachineInstance(vmi) => {
                Self::Stored(Kind::VirtualMachineInstance, Box::new(vmi.metadata))
            }
            KubeVirtObject::VirtualMachineInstancetype(o) => {
                Self::Stored(Kind::Instancetype, Box::new(o.metadata))
            }
            KubeVirtObject::VirtualMachineClusterInstancetype(o) => {
                Self::Stored(Kind::ClusterInstancetype, Box::new(o.metadata))
            }
            KubeVirtObject::VirtualMachinePreference(o) => {
                Self::Stored(Kind::Preference, Box::new(o.metadata))
            }
            KubeVirtObject::VirtualMachineClusterPreference(o) => {
                Self::Stored(Kind::ClusterPreference, Box::new(o.metadata))
            }
            KubeVirtObject::MigrationPolicy(o) => Self::Stored(Kind::MigrationPolicy, Box::new(o.metadata)),
            _ => Self::Other,
        })
    }

    fn kind(&self) -> &str {
        match self {
            Self::Stored(k, _) => k.name(),
            Self::Other => "other",
        }
    }
}

/// Reads `path` (`-` for standard input) and loads it with [`load`].
pub fn load_path(path: &str, namespace: Option<&str>) -> Result<Vec<Manifest>, ManifestError> {
    let (source_name, text) = if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| ManifestError::Read { source_name: "standard input".to_string(), error })?;
        ("standard input".to_string(), text)
    } else {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ManifestError::Read { source_name: path.to_string(), error })?;
        (path.to_string(), text)
    };
    let json = Path::new(path).extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    load(&text, &source_name, json, namespace)
}

/// Loads every document of `text` strictly (JSON if `json`, else a YAML stream) and settles each
/// one's namespace: its `metadata.namespace`, else `namespace` (`-n`), else `default`; an object
/// naming another namespace than `-n` is refused, as kubectl does. Nothing is returned unless every
/// document is good. `source_name` names the input in errors.
pub fn load(
    text: &str,
    source_name: &str,
    json: bool,
    namespace: Option<&str>,
) -> Result<Vec<Manifest>, ManifestError> {
    let load_error = |error| ManifestError::Load { source_name: source_name.to_string(), error };
    let values = if json {
        vec![api::parse_json(text).map_err(load_error)?]
    } else {
        api::parse_yaml(text).map_err(load_error)?
    };
    if values.is_empty() {
        return Err(ManifestError::Empty { source_name: source_name.to_string() });
    }
    let options = LoadOptions::default();
    let mut out = Vec::with_capacity(values.len());
    for (i, mut value) in values.into_iter().enumerate() {
        let document = i + 1;
        let loaded = api::load_value::<Loadable>(value.clone(), document, &options).map_err(load_error)?;
        let (kind, meta) = match loaded.object {
            Loadable::Stored(kind, meta) => (kind, meta),
            Loadable::Other => {
                let field = |f: &str| value.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
                let name = value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str);
                return Err(ManifestError::Unsupported {
                    source_name: source_name.to_string(),
                    document,
                    api_version: field("apiVersion"),
                    kind: field("kind"),
                    name: name.unwrap_or("<unnamed>").to_string(),
                });
            }
        };
        if meta.name.is_none() && meta.generate_name.is_none() {
            return Err(ManifestError::Unnamed {
                source_name: source_name.to_string(),
                document,
                kind: kind.name(),
            });
        }
        let namespace = if kind.namespaced() {
            match (meta.namespace.as_deref(), namespace) {
                (Some(object), Some(flag)) if object != flag => {
                    return Err(ManifestError::NamespaceMismatch {
                        source_name: source_name.to_string(),
                        document,
                        object: object.to_string(),
                        flag: flag.to_string(),
                    })
                }
                (Some(ns), _) | (None, Some(ns)) => ns.to_string(),
                (None, None) => DEFAULT_NAMESPACE.to_string(),
            }
        } else {
            meta.name.clone().unwrap_or_default()
        };
        api::prune_nulls(&mut value);
        out.push(Manifest { document, kind, name: meta.name, namespace, object: value });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata:\n  name: testvm\nspec:\n  \
                      runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {}\n";

    #[test]
    fn several_documents_with_namespaces_settled() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: lab\n---\n{VM}---\n{}",
            VM.replace("name: testvm", "name: other\n  namespace: lab")
        );
        let m = load(&text, "vm.yaml", false, None).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].kind, m[0].namespace.as_str()), (Kind::Namespace, "lab"));
        assert_eq!(
            (m[1].kind, m[1].name.as_deref(), m[1].namespace.as_str()),
            (Kind::VirtualMachine, Some("testvm"), "default")
        );
        assert_eq!(m[2].namespace, "lab");
        assert_eq!(m[1].object["spec"]["runStrategy"], "Halted");

        let m = load(VM, "vm.yaml", false, Some("dev")).unwrap();
        assert_eq!(m[0].namespace, "dev");
        let e = load(&text, "vm.yaml", false, Some("dev")).unwrap_err().to_string();
        assert!(
            e.contains("document 3: the namespace from the provided object \"lab\" does not match"),
            "{e}"
        );
    }

    #[test]
    fn unknown_fields_and_syntax_errors_name_the_path() {
        let e = load(&VM.replace("devices: {}", "devices: {}\n        cpuz: 2"), "vm.yaml", false, None)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "vm.yaml: document 1: spec.template.spec.domain.cpuz: unknown field");
        let e = load("a: [\n", "x.yaml", false, None).unwrap_err().to_string();
        assert!(e.starts_with("x.yaml: YAML syntax error"), "{e}");
        let e = load(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\nspec: {colour: red}\n",
            "n.yaml",
            false,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("spec.colour: unknown field"), "{e}");
    }

    #[test]
    fn other_kinds_and_unnamed_objects_are_refused() {
        let e = load("apiVersion: v1\nkind: Pod\nmetadata: {name: s}\n", "s.yaml", false, None).unwrap_err();
        assert!(e.to_string().contains("document 1: v1 Pod s: not a kind the node creates"), "{e}");
        let dv = "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {name: d}\nspec:\n  source: {blank: {}}\n  \
                  storage: {resources: {requests: {storage: 1Mi}}}\n";
        let m = load(dv, "dv.yaml", false, Some("lab")).unwrap();
        assert_eq!((m[0].kind, m[0].namespace.as_str()), (Kind::DataVolume, "lab"));
        let e = load(&dv.replace("blank: {}", "blank: {}, bogus: 1"), "dv.yaml", false, None).unwrap_err();
        assert!(e.to_string().contains("spec.source.bogus"), "{e}");
        let e = load(&VM.replace("name: testvm", "labels: {a: b}"), "vm.yaml", false, None).unwrap_err();
        assert!(e.to_string().contains("neither metadata.name nor metadata.generateName"), "{e}");
        assert!(matches!(load("", "e.yaml", false, None), Err(ManifestError::Empty { .. })));
    }

    #[test]
    fn a_migration_policy_is_cluster_scoped_and_checked_field_by_field() {
        let p = "apiVersion: migrations.kubevirt.io/v1alpha1\nkind: MigrationPolicy\nmetadata: {name: fast}\n\
                 spec:\n  bandwidthPerMigration: 128Mi\n  selectors: {virtualMachineInstanceSelector: {a: b}}\n";
        let m = load(p, "p.yaml", false, Some("lab")).unwrap();
        assert_eq!(m[0].kind, Kind::MigrationPolicy);
        assert_eq!(
            m[0].kind.collection_path(Some("lab")),
            "/apis/migrations.kubevirt.io/v1alpha1/migrationpolicies"
        );
        let e = load(&p.replace("{a: b}", "{a: b}, bogus: {}"), "p.yaml", false, None).unwrap_err();
        assert!(e.to_string().contains("spec.selectors.bogus: unknown field"), "{e}");
    }

    #[test]
    fn json_documents() {
        let text = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n","labels":null}}"#;
        let m = load(text, "n.json", true, None).unwrap();
        assert_eq!(
            m[0].object,
            serde_json::json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":"n"}})
        );
    }
}
