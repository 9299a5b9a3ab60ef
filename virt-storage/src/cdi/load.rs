//! Loading CDI objects from YAML (multi-document) and JSON, strictly, with full field paths.
//!
//! Each document is first read into a generic value tree (YAML through `serde-saphyr`, which also
//! refuses duplicate keys; JSON through `serde_json` with a duplicate-key check), `null` members
//! are dropped as the API server prunes them, and the document is dispatched on
//! `apiVersion`/`kind`. The typed decode records every ignored field with its full path
//! (`serde_ignored`) and names the path of the first type error (`serde_path_to_error`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::dataimportcron::DataImportCron;
use super::datasource::DataSource;
use super::datavolume::{DataVolume, API_VERSION};
use super::storageprofile::StorageProfile;
use super::validate::{describe_meta, validate_data_volume_template, Validate, Validation};

/// What to do with fields the schema does not know, like the API server's `fieldValidation`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Unknown fields are an error naming each path (the default, like `kubectl --validate=strict`).
    #[default]
    Strict,
    /// Unknown fields are dropped and reported in [`Loaded::warnings`].
    Warn,
    /// Unknown fields are dropped silently.
    Ignore,
}

/// Options for loading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Treatment of unknown fields.
    pub field_validation: FieldValidation,
}

/// Input syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML, possibly several `---`-separated documents.
    Yaml,
    /// A single JSON object.
    Json,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Yaml => "YAML",
            Self::Json => "JSON",
        })
    }
}

/// Why loading failed. `document` numbers count non-empty documents from 1.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The text is not well-formed YAML or JSON (or repeats a key).
    #[error("{format} syntax error: {message}")]
    Syntax {
        /// YAML or JSON.
        format: Format,
        /// The parser's message, with its position.
        message: String,
        /// 1-based line, when known.
        line: Option<u64>,
        /// 1-based column, when known.
        column: Option<u64>,
    },
    /// Fields that are unknown (under [`FieldValidation::Strict`]), missing, or of the wrong
    /// type or value. Unknown fields come first: a misspelt required field shows as both.
    #[error("document {document}: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Decode {
        /// Document number.
        document: usize,
        /// Every problem found, each with its full path.
        errors: Vec<DecodeError>,
    },
    /// The document is not a mapping.
    #[error("document {document}: expected an object with apiVersion and kind, found {found}")]
    NotAnObject {
        /// Document number.
        document: usize,
        /// What was found instead.
        found: &'static str,
    },
    /// A CDI kind in a version other than v1beta1.
    #[error("document {document}: {api_version} {kind}: only {API_VERSION} is supported")]
    UnsupportedVersion {
        /// Document number.
        document: usize,
        /// The apiVersion given.
        api_version: String,
        /// The kind given.
        kind: String,
    },
    /// [`from_yaml`]/[`from_json`] wanted exactly one object of one kind.
    #[error("expected exactly one {expected}, found {found}")]
    WrongDocuments {
        /// The kind wanted.
        expected: &'static str,
        /// What the input held.
        found: String,
    },
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Loading a file failed.
    #[error("{path}: {error}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: Box<LoadError>,
    },
}

/// What is wrong with a field while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    /// The schema has no such field.
    UnknownField,
    /// A required field is absent.
    MissingField,
    /// The value has the wrong type or is malformed (a bad quantity, an unknown enum value...).
    InvalidValue,
}

/// One decoding problem, with the full path of the field (`spec.source.http.urll`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Field path, `.`-separated with `[i]` for list items.
    pub path: String,
    /// Kind of problem.
    pub kind: DecodeErrorKind,
    /// `unknown field`, `required field is missing`, or what is wrong with the value.
    pub message: String,
}

impl DecodeError {
    fn new(path: impl Into<String>, kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self { path: path.into(), kind, message: message.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

fn decode_error(document: usize, error: DecodeError) -> LoadError {
    LoadError::Decode { document, errors: vec![error] }
}

/// Why writing failed.
#[derive(Debug, thiserror::Error)]
pub enum SerializeError {
    /// YAML serialization failed.
    #[error("writing YAML: {0}")]
    Yaml(String),
    /// JSON serialization failed.
    #[error("writing JSON: {0}")]
    Json(#[from] serde_json::Error),
}

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

/// A loaded document with its number and any unknown-field warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Document number, from 1, counting non-empty documents.
    pub document: usize,
    /// The object.
    pub object: CdiObject,
    /// `path: unknown field` for each unknown field dropped under [`FieldValidation::Warn`].
    pub warnings: Vec<String>,
}

/// Splits a YAML stream into documents (empty documents are skipped) as generic values.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, LoadError> {
    let options = serde_saphyr::options! { with_snippet: false };
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        let loc = e.location();
        LoadError::Syntax {
            format: Format::Yaml,
            message: e.to_string(),
            line: loc.map(|l| l.line()),
            column: loc.map(|l| l.column()),
        }
    })
}

/// Parses one JSON document as a generic value, refusing repeated keys.
pub fn parse_json(text: &str) -> Result<Value, LoadError> {
    serde_json::from_str::<NoDuplicates>(text).map(|v| v.0).map_err(|e| LoadError::Syntax {
        format: Format::Json,
        message: e.to_string(),
        line: (e.line() > 0).then(|| e.line() as u64),
        column: (e.column() > 0).then(|| e.column() as u64),
    })
}

/// Loads every document of a YAML stream, strictly.
pub fn load_yaml(text: &str) -> Result<Vec<Loaded>, LoadError> {
    load_yaml_with(text, &LoadOptions::default())
}

/// Loads every document of a YAML stream; stops at the first document that fails.
pub fn load_yaml_with(text: &str, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    parse_yaml(text)?.into_iter().enumerate().map(|(i, v)| load_value(v, i + 1, options)).collect()
}

/// Loads one JSON document, strictly.
pub fn load_json(text: &str) -> Result<Loaded, LoadError> {
    load_json_with(text, &LoadOptions::default())
}

/// Loads one JSON document.
pub fn load_json_with(text: &str, options: &LoadOptions) -> Result<Loaded, LoadError> {
    load_value(parse_json(text)?, 1, options)
}

/// Loads a file: JSON if its name ends in `.json`, YAML otherwise. Errors name the file.
pub fn load_file(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Vec<Loaded>, LoadError> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    let result = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        load_json_with(&text, options).map(|l| vec![l])
    } else {
        load_yaml_with(&text, options)
    };
    result.map_err(|e| LoadError::File { path: path.to_path_buf(), error: Box::new(e) })
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

fn exactly_one<T: Resource>(mut docs: Vec<Loaded>) -> Result<T, LoadError> {
    if docs.len() != 1 {
        return Err(LoadError::WrongDocuments {
            expected: T::KIND,
            found: format!("{} documents", docs.len()),
        });
    }
    let object = docs.remove(0).object;
    let kind = object.kind().to_string();
    T::from_object(object).ok_or(LoadError::WrongDocuments { expected: T::KIND, found: format!("a {kind}") })
}

/// Loads a YAML text holding exactly one object of kind `T`, strictly.
pub fn from_yaml<T: Resource>(text: &str) -> Result<T, LoadError> {
    exactly_one(load_yaml(text)?)
}

/// Loads a JSON text holding one object of kind `T`, strictly.
pub fn from_json<T: Resource>(text: &str) -> Result<T, LoadError> {
    exactly_one(vec![load_json(text)?])
}

/// Writes any of the types of this module as YAML (camelCase keys, unset fields left out).
pub fn to_yaml<T: Serialize>(object: &T) -> Result<String, SerializeError> {
    serde_saphyr::to_string(object).map_err(|e| SerializeError::Yaml(e.to_string()))
}

/// Writes any of the types of this module as pretty-printed JSON.
pub fn to_json<T: Serialize + ?Sized>(object: &T) -> Result<String, SerializeError> {
    Ok(serde_json::to_string_pretty(object)?)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn string_field(obj: &Map<String, Value>, key: &str, document: usize) -> Result<String, LoadError> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(decode_error(
            document,
            DecodeError::new(key, DecodeErrorKind::MissingField, "required field is missing"),
        )),
        Some(other) => Err(decode_error(
            document,
            DecodeError::new(
                key,
                DecodeErrorKind::InvalidValue,
                format!("expected a string, found {}", type_name(other)),
            ),
        )),
    }
}

/// Drops `null` object members, as the API server prunes them before validation.
fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

fn join_path(prefix: &str, rest: &str) -> String {
    match (prefix.is_empty(), rest.is_empty()) {
        (true, _) => rest.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if rest.starts_with('[') => format!("{prefix}{rest}"),
        (false, false) => format!("{prefix}.{rest}"),
    }
}

fn ignored_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match p {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => join_path(&ignored_path(parent), key),
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn error_path(p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment as S;
    let mut out = String::new();
    for seg in p.iter() {
        match seg {
            S::Seq { index } => out.push_str(&format!("[{index}]")),
            S::Map { key } => out = join_path(&out, key),
            S::Enum { variant } => out = join_path(&out, variant),
            S::Unknown => out = join_path(&out, "?"),
        }
    }
    out
}

/// Deserializes `value` as `T`, reporting paths under `prefix`.
fn typed<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    document: usize,
    options: &LoadOptions,
    warnings: &mut Vec<String>,
) -> Result<T, LoadError> {
    let mut unknown: Vec<String> = Vec::new();
    let result = {
        let mut record = |p: serde_ignored::Path<'_>| unknown.push(join_path(prefix, &ignored_path(&p)));
        let de = serde_ignored::Deserializer::new(value, &mut record);
        serde_path_to_error::deserialize::<_, T>(de)
    };
    let strict = options.field_validation == FieldValidation::Strict;
    let unknown_errors = |unknown: Vec<String>| {
        unknown.into_iter().map(|p| DecodeError::new(p, DecodeErrorKind::UnknownField, "unknown field"))
    };
    let object = match result {
        Ok(object) => object,
        Err(e) => {
            let path = join_path(prefix, &error_path(e.path()));
            let message = e.into_inner().to_string();
            // serde says "missing field `url`" at the parent; name the field itself.
            let error = match message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
                Some(field) => DecodeError::new(
                    join_path(&path, field),
                    DecodeErrorKind::MissingField,
                    "required field is missing",
                ),
                None => DecodeError::new(
                    if path.is_empty() { "(document)".to_string() } else { path },
                    DecodeErrorKind::InvalidValue,
                    message,
                ),
            };
            let mut errors: Vec<DecodeError> =
                if strict { unknown_errors(unknown).collect() } else { Vec::new() };
            errors.push(error);
            return Err(LoadError::Decode { document, errors });
        }
    };
    if !unknown.is_empty() {
        match options.field_validation {
            FieldValidation::Strict => {
                return Err(LoadError::Decode { document, errors: unknown_errors(unknown).collect() })
            }
            FieldValidation::Warn => {
                warnings.extend(unknown.into_iter().map(|p| format!("{p}: unknown field")))
            }
            FieldValidation::Ignore => {}
        }
    }
    Ok(object)
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

/// Loads one document already parsed into a value. `document` is its number, for messages.
pub fn load_value(mut value: Value, document: usize, options: &LoadOptions) -> Result<Loaded, LoadError> {
    let Value::Object(obj) = &value else {
        return Err(LoadError::NotAnObject { document, found: type_name(&value) });
    };
    let api_version = string_field(obj, "apiVersion", document)?;
    let kind = string_field(obj, "kind", document)?;
    let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_string);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let (group, version) = (group.to_string(), version.to_string());
    prune_nulls(&mut value);
    let mut warnings = Vec::new();
    let modelled = matches!(kind.as_str(), "DataVolume" | "DataSource" | "DataImportCron" | "StorageProfile");
    let object = if group == "cdi.kubevirt.io" && modelled {
        if version != "v1beta1" {
            return Err(LoadError::UnsupportedVersion { document, api_version, kind });
        }
        match kind.as_str() {
            "DataVolume" => {
                CdiObject::DataVolume(Box::new(typed(value, "", document, options, &mut warnings)?))
            }
            "DataSource" => {
                CdiObject::DataSource(Box::new(typed(value, "", document, options, &mut warnings)?))
            }
            "DataImportCron" => {
                CdiObject::DataImportCron(Box::new(typed(value, "", document, options, &mut warnings)?))
            }
            _ => CdiObject::StorageProfile(Box::new(typed(value, "", document, options, &mut warnings)?)),
        }
    } else if let Some(location) = template_location(&group, &kind) {
        let mut node = &mut value;
        let mut path = String::new();
        for key in location {
            path = join_path(&path, key);
            node = match node.get_mut(*key) {
                Some(n) => n,
                None => {
                    return Ok(Loaded {
                        document,
                        object: CdiObject::Skipped(Skipped {
                            api_version,
                            kind: kind.clone(),
                            name,
                            reason: format!(
                                "KubeVirt {kind} without dataVolumeTemplates: nothing of CDI's in it"
                            ),
                        }),
                        warnings,
                    })
                }
            };
        }
        let Value::Array(items) = node.take() else {
            return Err(decode_error(
                document,
                DecodeError::new(
                    path,
                    DecodeErrorKind::InvalidValue,
                    "expected a list of DataVolume templates",
                ),
            ));
        };
        let mut templates = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let p = format!("{path}[{i}]");
            let data_volume: DataVolume = typed(item, &p, document, options, &mut warnings)?;
            templates.push(EmbeddedTemplate { path: p, data_volume });
        }
        CdiObject::DataVolumeTemplates(EmbeddedTemplates { api_version, kind, name, templates })
    } else {
        CdiObject::Skipped(Skipped { reason: skip_reason(&group, &kind), api_version, kind, name })
    };
    Ok(Loaded { document, object, warnings })
}

/// A JSON value read with duplicate keys refused (Kubernetes strict decoding refuses them).
struct NoDuplicates(Value);

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicatesVisitor).map(NoDuplicates)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        NoDuplicates::deserialize(d).map(|v| v.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(NoDuplicates(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut seen = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let NoDuplicates(v) = map.next_value()?;
            if seen.insert(key.clone(), v).is_some() {
                return Err(de::Error::custom(format!("duplicate field {key:?}")));
            }
        }
        Ok(Value::Object(seen.into_iter().collect()))
    }
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
            Self::DataVolume(o) => f.write_str(&describe_meta("DataVolume", &o.metadata)),
            Self::DataSource(o) => f.write_str(&describe_meta("DataSource", &o.metadata)),
            Self::DataImportCron(o) => f.write_str(&describe_meta("DataImportCron", &o.metadata)),
            Self::StorageProfile(o) => f.write_str(&describe_meta("StorageProfile", &o.metadata)),
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
