//! Validation results shared by every API: problems with the path of the field they are about,
//! errors and warnings, the [`Validate`] trait, and the metadata and naming rules of Kubernetes
//! (names, namespaces, labels, annotations).
//!
//! Every problem is collected; nothing stops at the first. Warnings do not fail validation.

use std::fmt;

use super::meta::ObjectMeta;

/// What kind of problem a [`FieldProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// A required field is missing.
    Required,
    /// A value is malformed or contradicts another field.
    Invalid,
    /// Valid for the API, but this node cannot do it.
    Unsupported,
    /// The field may not be set here.
    Forbidden,
    /// Accepted, but worth knowing (only ever a warning).
    Notice,
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Required => "required",
            Self::Invalid => "invalid",
            Self::Unsupported => "unsupported",
            Self::Forbidden => "forbidden",
            Self::Notice => "notice",
        })
    }
}

/// One problem, with the full path of the field it is about (e.g. `spec.source.s3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    /// Field path, `.`-separated with `[i]` for list items.
    pub path: String,
    /// Kind of problem.
    pub kind: ProblemKind,
    /// What is wrong and, where useful, what to do instead.
    pub message: String,
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.path, self.kind, self.message)
    }
}

/// The outcome of validating one object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validation {
    /// Problems that make the object unusable.
    pub errors: Vec<FieldProblem>,
    /// Things accepted but worth knowing.
    pub warnings: Vec<FieldProblem>,
}

impl Validation {
    /// Whether there are no errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Records an error at `path`.
    pub fn push(&mut self, path: impl Into<String>, kind: ProblemKind, message: impl Into<String>) {
        self.errors.push(FieldProblem { path: path.into(), kind, message: message.into() });
    }

    /// Records a warning at `path`.
    pub fn warn(&mut self, path: impl Into<String>, kind: ProblemKind, message: impl Into<String>) {
        self.warnings.push(FieldProblem { path: path.into(), kind, message: message.into() });
    }

    /// The warnings if there are no errors, otherwise a [`ValidationError`] naming `object`.
    pub fn into_result(self, object: impl Into<String>) -> Result<Vec<FieldProblem>, ValidationError> {
        if self.errors.is_empty() {
            Ok(self.warnings)
        } else {
            Err(ValidationError { object: object.into(), problems: self.errors })
        }
    }
}

/// An object failed validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object} is invalid: {}", join(problems))]
pub struct ValidationError {
    /// Which object, e.g. `DataVolume default/my-dv`.
    pub object: String,
    /// Every error found.
    pub problems: Vec<FieldProblem>,
}

fn join(problems: &[FieldProblem]) -> String {
    problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// Objects that can be validated.
pub trait Validate {
    /// All problems found, errors and warnings.
    fn validate(&self) -> Validation;

    /// A short description naming the object, for error messages (`DataVolume ns/name`).
    fn describe(&self) -> String;

    /// The warnings if valid, otherwise every error.
    fn check(&self) -> Result<Vec<FieldProblem>, ValidationError> {
        self.validate().into_result(self.describe())
    }
}

/// `Kind namespace/name` (or `Kind name`, or `Kind <unnamed>`), for messages.
pub fn describe_meta(kind: &str, meta: &ObjectMeta) -> String {
    let name = meta.name.as_deref().or(meta.generate_name.as_deref()).unwrap_or("<unnamed>");
    match &meta.namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// `base.name`, or `name` at the root.
pub fn child(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}.{name}")
    }
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// RFC 1123 label: at most 63 of `[a-z0-9-]`, starting and ending alphanumeric.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
}

/// RFC 1123 subdomain: at most 253 characters of dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// RFC 1035 label: an RFC 1123 label that starts with a letter.
pub fn is_dns1035_label(s: &str) -> bool {
    is_dns1123_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// A label value or the name part of a label key: at most 63 of letters, digits, `-`, `_` and `.`,
/// starting and ending alphanumeric.
pub fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// A label or annotation key: `[prefix/]name`, prefix an RFC 1123 subdomain.
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns1123_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

/// Requires `value` (a `what`, e.g. "claim name") to be an RFC 1123 subdomain.
pub fn check_name(v: &mut Validation, path: String, value: &str, what: &str) {
    if value.is_empty() {
        v.push(path, ProblemKind::Required, format!("{what} must not be empty"));
    } else if !is_dns1123_subdomain(value) {
        v.push(
            path,
            ProblemKind::Invalid,
            format!("{value:?} is not a valid {what}: lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending alphanumeric"),
        );
    }
}

/// Requires `value` to be a valid namespace (an RFC 1123 label).
pub fn check_namespace(v: &mut Validation, path: String, value: &str) {
    if value.is_empty() {
        v.push(path, ProblemKind::Required, "namespace must not be empty");
    } else if !is_dns1123_label(value) {
        v.push(
            path,
            ProblemKind::Invalid,
            format!("{value:?} is not a valid namespace: lowercase letters, digits and '-', at most 63 characters"),
        );
    }
}

/// Which of `metadata.name` and `metadata.generateName` an object needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// `name` or `generateName`.
    NameOrGenerate,
    /// `name` itself (KubeVirt `dataVolumeTemplates`).
    Name,
    /// Neither (a DataImportCron template: the cron names what it creates).
    Optional,
}

/// Checks metadata at `path`: the name as `rule` says, the namespace (a notice for a cluster-scoped
/// kind), label keys and values, annotation keys.
pub fn validate_meta(v: &mut Validation, meta: &ObjectMeta, path: &str, rule: NameRule, namespaced: bool) {
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) => check_name(v, child(path, "name"), name, "name"),
        (None, Some(prefix)) if rule == NameRule::NameOrGenerate => {
            let ok = prefix.len() <= 248
                && prefix.bytes().all(|c| is_alnum_lower(c) || c == b'-' || c == b'.')
                && prefix.bytes().next().is_some_and(is_alnum_lower);
            if !ok {
                v.push(
                    child(path, "generateName"),
                    ProblemKind::Invalid,
                    format!("{prefix:?} is not a valid name prefix"),
                );
            }
        }
        (None, _) => match rule {
            NameRule::NameOrGenerate => {
                v.push(child(path, "name"), ProblemKind::Required, "name or generateName is required")
            }
            NameRule::Name => v.push(child(path, "name"), ProblemKind::Required, "name is required"),
            NameRule::Optional => {}
        },
    }
    if let Some(ns) = &meta.namespace {
        if namespaced {
            check_namespace(v, child(path, "namespace"), ns);
        } else {
            v.warn(child(path, "namespace"), ProblemKind::Notice, "ignored: this kind is cluster-scoped");
        }
    }
    for (key, value) in &meta.labels {
        let p = format!("{}[{key:?}]", child(path, "labels"));
        if !is_qualified_name(key) {
            v.push(p.clone(), ProblemKind::Invalid, format!("{key:?} is not a valid label key"));
        }
        if !(value.is_empty() || is_label_name(value)) {
            v.push(
                p,
                ProblemKind::Invalid,
                format!("{value:?} is not a valid label value: at most 63 of letters, digits, '-', '_' and '.', starting and ending alphanumeric"),
            );
        }
    }
    for key in meta.annotations.keys() {
        if !is_qualified_name(key) {
            v.push(
                format!("{}[{key:?}]", child(path, "annotations")),
                ProblemKind::Invalid,
                format!("{key:?} is not a valid annotation key"),
            );
        }
    }
}

/// Checks `apiVersion` and `kind` where they are written (they may be left out of embedded
/// templates): they must be `want_api_version` and `want_kind`.
pub fn check_type_meta(
    v: &mut Validation,
    api_version: Option<&str>,
    kind: Option<&str>,
    want_api_version: &str,
    want_kind: &str,
    path: &str,
) {
    if let Some(a) = api_version {
        if a != want_api_version {
            v.push(
                child(path, "apiVersion"),
                ProblemKind::Invalid,
                format!("{a:?}: expected {want_api_version:?}"),
            );
        }
    }
    if let Some(k) = kind {
        if k != want_kind {
            v.push(child(path, "kind"), ProblemKind::Invalid, format!("{k:?}: expected {want_kind:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_subdomain("my-data-volume"));
        assert!(is_dns1123_subdomain("a.b-c.d"));
        assert!(!is_dns1123_subdomain("My-DV"));
        assert!(!is_dns1123_subdomain("-a"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(!is_dns1123_subdomain(&"a".repeat(254)));
        assert!(is_dns1123_label("golden-images"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1035_label("fedora"));
        assert!(!is_dns1035_label("9fedora"));
        assert!(is_qualified_name("kubevirt.io/vm"));
        assert!(is_qualified_name("app"));
        assert!(!is_qualified_name("a/b/c"));
        assert!(!is_qualified_name("Kubevirt.IO/vm"));
    }

    #[test]
    fn metadata_and_type_meta() {
        let mut v = Validation::default();
        let mut meta = ObjectMeta::named("Bad_Name");
        meta.labels.insert("kubevirt.io/vm".into(), "x y".into());
        validate_meta(&mut v, &meta, "metadata", NameRule::NameOrGenerate, true);
        check_type_meta(&mut v, Some("v2"), Some("Thing"), "v1", "Thing", "");
        let paths: Vec<&str> = v.errors.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["metadata.name", "metadata.labels[\"kubevirt.io/vm\"]", "apiVersion"]);
        let e = v.into_result("Thing x").unwrap_err();
        assert!(e.to_string().starts_with("Thing x is invalid: metadata.name: invalid:"), "{e}");
    }
}
