//! Loading CDI objects from YAML (multi-document) and JSON, strictly, with full field paths.
//!
//! The loader is [`virt_core::api`]'s, shared with the KubeVirt model: each document is read into
//! a value tree (duplicate keys refused), `null` members are dropped as the API server prunes them,
//! and the document is dispatched on `apiVersion`/`kind` here ([`CdiObject`]'s [`Kinds`]
//! implementation). The typed decode names the full path of every unknown field and of the first
//! type error.

use std::fmt;
use std::path::Path;

use serde_json::Value;
use virt_core::api::{
    self, DecodeErrorKind, Decoder, Document, Kinds, LoadError, LoadOptions, SerializeError, Validate,
    Validation,
};

use super::dataimportcron::DataImportCron;
use super::datasource::DataSource;
use super::datavolume::{DataVolume, API_VERSION};
use super::storageprofile::StorageProfile;
use super::validate::validate_data_volume_template;

/// A loaded CDI document with its number and any unknown-field warnings.
pub type Loaded = api::Loaded<CdiObject>;

/// A document that is not a CDI object this SDK models, and why it was passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its apiVersion.
    pub api_version: String,
    /// Its kind.
    pub kind: String,
    /// Its `metadata.name`, if any.
    pub name: Option<String>,
    /// Why it was skipped.
    pub reason: String,
}

/// One DataVolume template embedded in a KubeVirt object.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedTemplate {
    /// Path of the template in its owner, e.g. `spec.dataVolumeTemplates[0]`.
    pub path: String,
    /// The template.
    pub data_volume: DataVolume,
}

/// The DataVolume templates of a KubeVirt VirtualMachine or VirtualMachinePool. Only the
/// templates are read (strictly); the rest of the owner is KubeVirt's and is not checked here.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedTemplates {
    /// The owner's apiVersion.
    pub api_version: String,
    /// The owner's kind.
    pub kind: String,
    /// The owner's `metadata.name`, if any.
    pub name: Option<String>,
    /// The templates, in order.
    pub templates: Vec<EmbeddedTemplate>,
}

/// A loaded document.
#[derive(Debug, Clone, PartialEq)]
pub enum CdiObject {
    /// A DataVolume.
    DataVolume(Box<DataVolume>),
    /// A DataSource.
    DataSource(Box<DataSource>),
    /// A DataImportCron.
    DataImportCron(Box<DataImportCron>),
    /// A StorageProfile.
    StorageProfile(Box<StorageProfile>),
    /// DataVolume templates inside a KubeVirt object.
    DataVolumeTemplates(EmbeddedTemplates),
    /// Not a CDI object (a Secret, a CDIConfig, a VirtualMachineInstance, ...).
    Skipped(Skipped),
}

impl CdiObject {
    /// `DataVolume`, `DataSource`, ... or the owner's/skipped document's kind.
    pub fn kind(&self) -> &str {
        match self {
            Self::DataVolume(_) => "DataVolume",
            Self::DataSource(_) => "DataSource",
            Self::DataImportCron(_) => "DataImportCron",
            Self::StorageProfile(_) => "StorageProfile",
            Self::DataVolumeTemplates(t) => &t.kind,
            Self::Skipped(s) => &s.kind,
        }
    }

    /// Writes the object as YAML. Embedded templates are written as a YAML list of templates;
    /// a skipped document has nothing to write and gives an empty string.
    pub fn to_yaml(&self) -> Result<String, SerializeError> {
        match self {
            Self::DataVolume(o) => to_yaml(o.as_ref()),
            Self::DataSource(o) => to_yaml(o.as_ref()),
            Self::DataImportCron(o) => to_yaml(o.as_ref()),
            Self::StorageProfile(o) => to_yaml(o.as_ref()),
            Self::DataVolumeTemplates(t) => {
                let list: Vec<&DataVolume> = t.templates.iter().map(|t| &t.data_volume).collect();
                to_yaml(&list)
            }
            Self::Skipped(_) => Ok(String::new()),
        }
    }

    /// Writes the object as JSON (a list of templates for embedded templates, `null` for a
    /// skipped document).
    pub fn to_json_value(&self) -> Result<Value, SerializeError> {
        Ok(match self {
            Self::DataVolume(o) => serde_json::to_value(o.as_ref())?,
            Self::DataSource(o) => serde_json::to_value(o.as_ref())?,
            Self::DataImportCron(o) => serde_json::to_value(o.as_ref())?,
            Self::StorageProfile(o) => serde_json::to_value(o.as_ref())?,
            Self::DataVolumeTemplates(t) => {
                let list: Vec<&DataVolume> = t.templates.iter().map(|t| &t.data_volume).collect();
                serde_json::to_value(list)?
            }
            Self::Skipped(_) => Value::Null,
        })
    }
}

impl Validate for CdiObject {
    fn validate(&self) -> Validation {
        match self {
            Self::DataVolume(o) => o.validate(),
            Self::DataSource(o) => o.validate(),
            Self::DataImportCron(o) => o.validate(),
            Self::StorageProfile(o) => o.validate(),
            Self::DataVolumeTemplates(t) => {
                let mut all = Validation::default();
                for tpl in &t.templates {
                    let v = validate_data_volume_template(&tpl.data_volume, &tpl.path);
                    all.errors.extend(v.errors);
                    all.warnings.extend(v.warnings);
                }
                all
            }
            Self::Skipped(_) => Validation::default(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::DataVolume(o) => o.describe(),
            Self::DataSource(o) => o.describe(),
            Self::DataImportCron(o) => o.describe(),
            Self::StorageProfile(o) => o.describe(),
            Self::DataVolumeTemplates(t) => {
                format!("dataVolumeTemplates of {} {}", t.kind, t.name.as_deref().unwrap_or("<unnamed>"))
            }
            Self::Skipped(s) => format!("{} {}", s.kind, s.name.as_deref().unwrap_or("<unnamed>")),
        }
    }
}

impl Kinds for CdiObject {
    fn decode(doc: Document, decoder: &mut Decoder<'_>) -> Result<Self, LoadError> {
        decode_document(doc, decoder)
    }

    fn kind(&self) -> &str {
        CdiObject::kind(self)
    }
}

/// Splits a YAML stream into documents (empty documents are skipped) as generic values.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, LoadError> {
    api::parse_yaml(text)
}

/// Parses one JSON document as a generic value, refusing repeated keys.
pub fn parse_json(text: &str) -> Result<Value, LoadError> {
    api::parse_json(text)
}

/// Loads every document of a YAML stream, strictly.
pub fn load_yaml(text: &str) -> Result<Vec<Loaded>, LoadError> {
    api::load_yaml(text)
}

/// Loads every document of a YAML stream; stops at the first document that fails.
pub fn load_yaml_with(text: &str, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    api::load_yaml_with(text, options)
}

/// Loads one JSON document, strictly.
pub fn load_json(text: &str) -> Result<Loaded, LoadError> {
    api::load_json(text)
}

/// Loads one JSON document.
pub fn load_json_with(text: &str, options: &LoadOptions) -> Result<Loaded, LoadError> {
    api::load_json_with(text, options)
}

/// Loads a file: JSON if its name ends in `.json`, YAML otherwise. Errors name the file.
pub fn load_file(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    api::load_file(path, options)
}

/// Loads one document already parsed into a value. `document` is its number, for messages.
pub fn load_value(value: Value, document: usize, options: &LoadOptions) -> Result<Loaded, LoadError> {
    api::load_value(value, document, options)
}

/// A CDI kind that [`from_yaml`] and [`from_json`] can return directly.
pub trait Resource: Sized {
    /// The kind name.
    const KIND: &'static str;
    /// The object, if it is of this kind.
    fn from_object(object: CdiObject) -> Option<Self>;
}

macro_rules! resource {
    ($t:ident) => {
        impl Resource for $t {
            const KIND: &'static str = stringify!($t);
            fn from_object(object: CdiObject) -> Option<Self> {
                match object {
                    CdiObject::$t(o) => Some(*o),
                    _ => None,
                }
            }
        }
    };
}
resource!(DataVolume);
resource!(DataSource);
resource!(DataImportCron);
resource!(StorageProfile);

/// Loads a YAML text holding exactly one object of kind `T`, strictly.
pub fn from_yaml<T: Resource>(text: &str) -> Result<T, LoadError> {
    api::exactly_one(load_yaml(text)?, T::KIND, T::from_object)
}

/// Loads a JSON text holding one object of kind `T`, strictly.
pub fn from_json<T: Resource>(text: &str) -> Result<T, LoadError> {
    api::exactly_one(vec![load_json(text)?], T::KIND, T::from_object)
}

/// Writes any of the types of this module as YAML (camelCase keys, unset fields left out).
pub fn to_yaml<T: serde::Serialize>(object: &T) -> Result<String, SerializeError> {
    api::to_yaml(object)
}

/// Writes any of the types of this module as pretty-printed JSON.
pub fn to_json<T: serde::Serialize + ?Sized>(object: &T) -> Result<String, SerializeError> {
    api::to_json(object)
}

/// Where a KubeVirt kind keeps its DataVolume templates.
fn template_location(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("kubevirt.io", "VirtualMachine") => Some(&["spec", "dataVolumeTemplates"]),
        ("pool.kubevirt.io", "VirtualMachinePool") => {
            Some(&["spec", "virtualMachineTemplate", "spec", "dataVolumeTemplates"])
        }
        _ => None,
    }
}

fn skip_reason(group: &str, kind: &str) -> String {
    match (group, kind) {
        ("cdi.kubevirt.io", "CDIConfig" | "CDI") => format!(
            "CDI {kind} configures a cluster's CDI installation (upload proxy, scratch space, \
             feature gates); this node runs no CDI deployment, so there is nothing for it to configure"
        ),
        ("cdi.kubevirt.io", _) => format!("CDI {kind} is not one of the kinds modelled here (DataVolume, DataSource, DataImportCron, StorageProfile)"),
        ("upload.cdi.kubevirt.io", _) => format!(
            "{kind} asks CDI's API server for an upload token: a request, not a stored object"
        ),
        ("", "Secret") => "a core Secret: DataVolumes name it in secretRef and the importer reads it; it is not a CDI object".into(),
        ("", _) => format!("core Kubernetes {kind}: not a CDI object"),
        ("kubevirt.io" | "pool.kubevirt.io", _) => format!("KubeVirt {kind}: not a CDI object and holds no DataVolume templates"),
        _ => format!("{kind} is not a CDI object"),
    }
}

/// Dispatches one document on its group and kind.
fn decode_document(doc: Document, decoder: &mut Decoder<'_>) -> Result<CdiObject, LoadError> {
    let Document { number: document, api_version, group, version, kind, name, mut value } = doc;
    let modelled = matches!(kind.as_str(), "DataVolume" | "DataSource" | "DataImportCron" | "StorageProfile");
    let object = if group == "cdi.kubevirt.io" && modelled {
        if version != "v1beta1" {
            return Err(LoadError::UnsupportedVersion {
                document,
                api_version,
                kind,
                supported: API_VERSION,
            });
        }
        match kind.as_str() {
            "DataVolume" => CdiObject::DataVolume(Box::new(decoder.decode(value, "")?)),
            "DataSource" => CdiObject::DataSource(Box::new(decoder.decode(value, "")?)),
            "DataImportCron" => CdiObject::DataImportCron(Box::new(decoder.decode(value, "")?)),
            _ => CdiObject::StorageProfile(Box::new(decoder.decode(value, "")?)),
        }
    } else if let Some(location) = template_location(&group, &kind) {
        let mut node = &mut value;
        let mut path = String::new();
        for key in location {
            path = api::join_path(&path, key);
            node = match node.get_mut(*key) {
                Some(n) => n,
                None => {
                    return Ok(CdiObject::Skipped(Skipped {
                        api_version,
                        kind: kind.clone(),
                        name,
                        reason: format!(
                            "KubeVirt {kind} without dataVolumeTemplates: nothing of CDI's in it"
                        ),
                    }))
                }
            };
        }
        let Value::Array(items) = node.take() else {
            return Err(LoadError::field(
                document,
                path,
                DecodeErrorKind::InvalidValue,
                "expected a list of DataVolume templates",
            ));
        };
        let mut templates = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            let data_volume: DataVolume = decoder.decode(item, &p)?;
            templates.push(EmbeddedTemplate { path: p, data_volume });
        }
        CdiObject::DataVolumeTemplates(EmbeddedTemplates { api_version, kind, name, templates })
    } else {
        CdiObject::Skipped(Skipped { reason: skip_reason(&group, &kind), api_version, kind, name })
    };
    Ok(object)
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)?;
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl fmt::Display for CdiObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DataVolume(o) => f.write_str(&api::describe_meta("DataVolume", &o.metadata)),
            Self::DataSource(o) => f.write_str(&api::describe_meta("DataSource", &o.metadata)),
            Self::DataImportCron(o) => f.write_str(&api::describe_meta("DataImportCron", &o.metadata)),
            Self::StorageProfile(o) => f.write_str(&api::describe_meta("StorageProfile", &o.metadata)),
            Self::DataVolumeTemplates(t) => write!(
                f,
                "{} DataVolume template(s) of {} {}",
                t.templates.len(),
                t.kind,
                t.name.as_deref().unwrap_or("<unnamed>")
            ),
            Self::Skipped(s) => write!(f, "{s}"),
        }
    }
}
