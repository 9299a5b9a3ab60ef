//! Loading API objects from YAML (multi-document) and JSON, strictly, with full field paths.
//!
//! Each document is first read into a generic value tree (YAML through `serde-saphyr`, which also
//! refuses duplicate keys; JSON through `serde_json` with a duplicate-key check), its `apiVersion`
//! and `kind` are read, `null` members are dropped as the API server prunes them, and the document
//! is handed to a [`Kinds`] implementation that dispatches on `apiVersion`/`kind` and decodes it
//! with a [`Decoder`]. The typed decode records every ignored field with its full path
//! (`serde_ignored`) and names the path of the first type error (`serde_path_to_error`).
//!
//! The set of kinds is the caller's: `virt_storage::cdi` loads CDI objects through this module,
//! [`crate::model`] loads KubeVirt's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// A modelled kind in a version that is not.
    #[error("document {document}: {api_version} {kind}: only {supported} is supported")]
    UnsupportedVersion {
        /// Document number.
        document: usize,
        /// The apiVersion given.
        api_version: String,
        /// The kind given.
        kind: String,
        /// The apiVersion that is modelled for this kind.
        supported: &'static str,
    },
    /// A caller wanted exactly one object of one kind.
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

impl LoadError {
    /// A [`LoadError::Decode`] with a single problem at `path`.
    pub fn field(
        document: usize,
        path: impl Into<String>,
        kind: DecodeErrorKind,
        message: impl Into<String>,
    ) -> Self {
        Self::Decode { document, errors: vec![DecodeError::new(path, kind, message)] }
    }
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
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        Self { path: path.into(), kind, message: message.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
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

/// One document, checked to be an object with a non-empty `apiVersion` and `kind`, its `null`
/// members pruned, ready for a [`Kinds`] implementation to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Document number, from 1, counting non-empty documents.
    pub number: usize,
    /// `apiVersion` as written, e.g. `kubevirt.io/v1` or `v1`.
    pub api_version: String,
    /// The API group: the part of `apiVersion` before the last `/`, empty for the core group.
    pub group: String,
    /// The version: the part of `apiVersion` after the last `/`.
    pub version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`, if it is a string.
    pub name: Option<String>,
    /// The whole document.
    pub value: Value,
}

/// Decodes values into typed objects for one document, applying the [`LoadOptions`] and
/// collecting unknown-field warnings.
#[derive(Debug)]
pub struct Decoder<'a> {
    options: &'a LoadOptions,
    document: usize,
    warnings: Vec<String>,
}

impl<'a> Decoder<'a> {
    /// A decoder for document number `document`.
    pub fn new(options: &'a LoadOptions, document: usize) -> Self {
        Self { options, document, warnings: Vec::new() }
    }

    /// The document number, for errors.
    pub fn document(&self) -> usize {
        self.document
    }

    /// The options in force.
    pub fn options(&self) -> &LoadOptions {
        self.options
    }

    /// Unknown-field warnings collected so far (under [`FieldValidation::Warn`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Ends decoding, returning the warnings.
    pub fn into_warnings(self) -> Vec<String> {
        self.warnings
    }

    /// Deserializes `value` as `T`. Paths in errors and warnings are reported under `prefix`
    /// (empty for a whole document, `spec.dataVolumeTemplates[0]` for a part of one).
    pub fn decode<T: DeserializeOwned>(&mut self, value: Value, prefix: &str) -> Result<T, LoadError> {
        let document = self.document;
        let mut unknown: Vec<String> = Vec::new();
        let result = {
            let mut record = |p: serde_ignored::Path<'_>| unknown.push(join_path(prefix, &ignored_path(&p)));
            let de = serde_ignored::Deserializer::new(value, &mut record);
            serde_path_to_error::deserialize::<_, T>(de)
        };
        let strict = self.options.field_validation == FieldValidation::Strict;
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
            match self.options.field_validation {
                FieldValidation::Strict => {
                    return Err(LoadError::Decode { document, errors: unknown_errors(unknown).collect() })
                }
                FieldValidation::Warn => {
                    self.warnings.extend(unknown.into_iter().map(|p| format!("{p}: unknown field")))
                }
                FieldValidation::Ignore => {}
            }
        }
        Ok(object)
    }
}

/// A set of kinds that documents are dispatched to: an enum with one variant per modelled kind,
/// typically with a variant for documents it passes over.
pub trait Kinds: Sized {
    /// Decodes one document (dispatching on its `group`, `version` and `kind`).
    fn decode(document: Document, decoder: &mut Decoder<'_>) -> Result<Self, LoadError>;

    /// The kind of the loaded object, for messages (`expected exactly one X, found a Y`).
    fn kind(&self) -> &str;
}

/// A loaded document with its number and any unknown-field warnings.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<T> {
    /// Document number, from 1, counting non-empty documents.
    pub document: usize,
    /// The object.
    pub object: T,
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

/// Loads one document already parsed into a value. `document` is its number, for messages.
pub fn load_value<K: Kinds>(
    mut value: Value,
    document: usize,
    options: &LoadOptions,
) -> Result<Loaded<K>, LoadError> {
    let Value::Object(obj) = &value else {
        return Err(LoadError::NotAnObject { document, found: type_name(&value) });
    };
    let api_version = string_field(obj, "apiVersion", document)?;
    let kind = string_field(obj, "kind", document)?;
    let name = obj.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_string);
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version.as_str()));
    let (group, version) = (group.to_string(), version.to_string());
    prune_nulls(&mut value);
    let mut decoder = Decoder::new(options, document);
    let doc = Document { number: document, api_version, group, version, kind, name, value };
    let object = K::decode(doc, &mut decoder)?;
    Ok(Loaded { document, object, warnings: decoder.into_warnings() })
}

/// Loads every document of a YAML stream, strictly.
pub fn load_yaml<K: Kinds>(text: &str) -> Result<Vec<Loaded<K>>, LoadError> {
    load_yaml_with(text, &LoadOptions::default())
}

/// Loads every document of a YAML stream; stops at the first document that fails.
pub fn load_yaml_with<K: Kinds>(text: &str, options: &LoadOptions) -> Result<Vec<Loaded<K>>, LoadError> {
    parse_yaml(text)?.into_iter().enumerate().map(|(i, v)| load_value(v, i + 1, options)).collect()
}

/// Loads one JSON document, strictly.
pub fn load_json<K: Kinds>(text: &str) -> Result<Loaded<K>, LoadError> {
    load_json_with(text, &LoadOptions::default())
}

/// Loads one JSON document.
pub fn load_json_with<K: Kinds>(text: &str, options: &LoadOptions) -> Result<Loaded<K>, LoadError> {
    load_value(parse_json(text)?, 1, options)
}

/// Loads a file: JSON if its name ends in `.json`, YAML otherwise. Errors name the file.
pub fn load_file<K: Kinds>(
    path: impl AsRef<Path>,
    options: &LoadOptions,
) -> Result<Vec<Loaded<K>>, LoadError> {
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

/// The single object of `docs`, if there is exactly one and `pick` accepts it; otherwise
/// [`LoadError::WrongDocuments`] naming `expected`.
pub fn exactly_one<K: Kinds, T>(
    mut docs: Vec<Loaded<K>>,
    expected: &'static str,
    pick: impl FnOnce(K) -> Option<T>,
) -> Result<T, LoadError> {
    if docs.len() != 1 {
        return Err(LoadError::WrongDocuments { expected, found: format!("{} documents", docs.len()) });
    }
    let object = docs.remove(0).object;
    let kind = object.kind().to_string();
    pick(object).ok_or(LoadError::WrongDocuments { expected, found: format!("a {kind}") })
}

/// Writes an object as YAML (camelCase keys, unset fields left out).
pub fn to_yaml<T: Serialize>(object: &T) -> Result<String, SerializeError> {
    serde_saphyr::to_string(object).map_err(|e| SerializeError::Yaml(e.to_string()))
}

/// Writes an object as pretty-printed JSON.
pub fn to_json<T: Serialize + ?Sized>(object: &T) -> Result<String, SerializeError> {
    Ok(serde_json::to_string_pretty(object)?)
}

/// `null`, `a boolean`, `a number`, `a string`, `a list` or `an object`, for messages.
pub fn type_name(v: &Value) -> &'static str {
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
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(LoadError::field(document, key, DecodeErrorKind::MissingField, "required field is missing"))
        }
        Some(other) => Err(LoadError::field(
            document,
            key,
            DecodeErrorKind::InvalidValue,
            format!("expected a string, found {}", type_name(other)),
        )),
    }
}

/// Drops `null` object members, as the API server prunes them before validation.
pub fn prune_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// `prefix.rest`, `prefix[i]` when `rest` starts with an index, or whichever is non-empty.
pub fn join_path(prefix: &str, rest: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-kind set for the loader's own tests.
    #[derive(Debug, PartialEq)]
    enum TestKinds {
        Thing(Thing),
        Other(String),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Thing {
        api_version: String,
        kind: String,
        spec: ThingSpec,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ThingSpec {
        size: u32,
        #[serde(default)]
        tags: Vec<String>,
    }

    impl Kinds for TestKinds {
        fn decode(doc: Document, decoder: &mut Decoder<'_>) -> Result<Self, LoadError> {
            match (doc.group.as_str(), doc.kind.as_str()) {
                ("example.io", "Thing") if doc.version != "v1" => Err(LoadError::UnsupportedVersion {
                    document: doc.number,
                    api_version: doc.api_version,
                    kind: doc.kind,
                    supported: "example.io/v1",
                }),
                ("example.io", "Thing") => Ok(Self::Thing(decoder.decode(doc.value, "")?)),
                _ => Ok(Self::Other(doc.kind)),
            }
        }
        fn kind(&self) -> &str {
            match self {
                Self::Thing(_) => "Thing",
                Self::Other(k) => k,
            }
        }
    }

    const THING: &str = "apiVersion: example.io/v1\nkind: Thing\nspec:\n  size: 3\n";

    #[test]
    fn dispatches_and_decodes_strictly() {
        let docs = load_yaml::<TestKinds>(&format!("{THING}---\napiVersion: v1\nkind: Secret\n")).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(matches!(&docs[0].object, TestKinds::Thing(t) if t.spec.size == 3));
        assert_eq!(docs[1].object, TestKinds::Other("Secret".into()));
        assert_eq!(docs[1].document, 2);

        let e = load_yaml::<TestKinds>(&THING.replace("size: 3", "size: 3\n  colour: red\n  tags: [1]"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 1: spec.colour: unknown field; spec.tags[0]: invalid type: integer `1`, expected a string"
        );
        let e = load_yaml::<TestKinds>(&THING.replace("size: 3", "sise: 3")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "document 1: spec.sise: unknown field; spec.size: required field is missing"
        );
        let e = load_yaml::<TestKinds>(&THING.replace("/v1", "/v2")).unwrap_err();
        assert_eq!(e.to_string(), "document 1: example.io/v2 Thing: only example.io/v1 is supported");
    }

    #[test]
    fn warn_and_ignore_drop_unknown_fields() {
        let text = THING.replace("size: 3", "size: 3\n  colour: red");
        let warn = LoadOptions { field_validation: FieldValidation::Warn };
        let docs = load_yaml_with::<TestKinds>(&text, &warn).unwrap();
        assert_eq!(docs[0].warnings, ["spec.colour: unknown field"]);
        let ignore = LoadOptions { field_validation: FieldValidation::Ignore };
        assert!(load_yaml_with::<TestKinds>(&text, &ignore).unwrap()[0].warnings.is_empty());
    }

    #[test]
    fn nulls_are_pruned_and_exactly_one_names_what_it_found() {
        let docs = load_yaml::<TestKinds>(&format!("{THING}  tags: null\nstatus: null\n")).unwrap();
        let thing = exactly_one(docs, "Thing", |k| match k {
            TestKinds::Thing(t) => Some(t),
            TestKinds::Other(_) => None,
        })
        .unwrap();
        assert!(thing.spec.tags.is_empty());
        let docs = load_yaml::<TestKinds>("apiVersion: v1\nkind: Secret\n").unwrap();
        let e = exactly_one(docs, "Thing", |_| None::<()>).unwrap_err();
        assert_eq!(e.to_string(), "expected exactly one Thing, found a Secret");
    }

    #[test]
    fn json_and_syntax_errors() {
        let d = load_json::<TestKinds>(r#"{"apiVersion":"example.io/v1","kind":"Thing","spec":{"size":1}}"#)
            .unwrap();
        assert!(matches!(d.object, TestKinds::Thing(_)));
        let e = load_json::<TestKinds>("{\"kind\": \"A\",\n \"kind\": \"B\"}").unwrap_err();
        assert!(matches!(e, LoadError::Syntax { line: Some(2), .. }), "{e}");
        let e = load_yaml::<TestKinds>("a: [\n").unwrap_err();
        assert!(matches!(e, LoadError::Syntax { format: Format::Yaml, line: Some(_), .. }), "{e}");
        assert!(matches!(
            load_yaml::<TestKinds>("- 1\n"),
            Err(LoadError::NotAnObject { found: "a list", .. })
        ));
        let e = load_yaml::<TestKinds>("kind: 5\napiVersion: v1\n").unwrap_err();
        assert_eq!(e.to_string(), "document 1: kind: expected a string, found a number");
    }
}
