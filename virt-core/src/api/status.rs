//! The `causes` of a Kubernetes `Status` (`details.causes[]`), built from the structured errors of
//! loading and validation, so that a refusal names each field as the API server does and kubectl
//! prints `The VirtualMachine "x" is invalid: spec.running: ...` without anyone parsing messages.

use serde::Serialize;

use super::load::{DecodeErrorKind, LoadError};
use super::validate::{FieldProblem, ProblemKind, ValidationError};

/// One cause of a refusal: Kubernetes' `StatusCause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusCause {
    /// Machine-readable reason (`FieldValueInvalid`, `FieldValueRequired`, ...).
    pub reason: &'static str,
    /// What is wrong.
    pub message: String,
    /// The field's path, when the cause is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ProblemKind {
    /// Kubernetes' cause reason for a problem of this kind.
    pub fn cause_reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Unsupported => "FieldValueNotSupported",
            Self::Forbidden => "FieldValueForbidden",
            Self::Invalid | Self::Notice => "FieldValueInvalid",
        }
    }
}

impl From<&FieldProblem> for StatusCause {
    fn from(p: &FieldProblem) -> Self {
        Self {
            reason: p.kind.cause_reason(),
            message: format!("{}: {}", p.kind, p.message),
            field: (!p.path.is_empty()).then(|| p.path.clone()),
        }
    }
}

impl std::fmt::Display for StatusCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl StatusCause {
    /// `field: Invalid value: VALUE: detail` (VALUE as the caller quotes it).
    pub fn invalid_value(field: &str, value: impl std::fmt::Display, detail: &str) -> Self {
        Self::at(field, "FieldValueInvalid", format!("Invalid value: {value}: {detail}"))
    }

    /// `field: Required value: detail`.
    pub fn required(field: &str, detail: &str) -> Self {
        Self::at(field, "FieldValueRequired", format!("Required value: {detail}"))
    }

    /// `field: Forbidden: detail`.
    pub fn forbidden(field: &str, detail: &str) -> Self {
        Self::at(field, "FieldValueForbidden", format!("Forbidden: {detail}"))
    }

    /// `field: Unsupported value: VALUE: supported values: ...`.
    pub fn unsupported(field: &str, value: impl std::fmt::Display, supported: &str) -> Self {
        Self::at(
            field,
            "FieldValueNotSupported",
            format!("Unsupported value: {value}: supported values: {supported}"),
        )
    }

    /// A cause about no one field.
    pub fn general(message: impl Into<String>) -> Self {
        Self { reason: "FieldValueInvalid", message: message.into(), field: None }
    }

    fn at(field: &str, reason: &'static str, message: String) -> Self {
        Self { reason, message, field: (!field.is_empty()).then(|| field.to_string()) }
    }
}

/// An object refused, Kubernetes' `Invalid` (422): the object when known, and one cause per
/// field. Built from a [`ValidationError`] or from causes; the REST layers answer it with
/// `details.causes` taken from here, not parsed from the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.text())]
pub struct Invalid {
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// What is wrong, one entry per field (at least one).
    pub causes: Vec<StatusCause>,
}

impl Invalid {
    /// A refusal for one cause.
    pub fn one(cause: StatusCause) -> Self {
        Self { object: None, causes: vec![cause] }
    }

    fn text(&self) -> String {
        let list = self.causes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        match &self.object {
            Some(o) => format!("{o} is invalid: {list}"),
            None => list,
        }
    }
}

impl From<ValidationError> for Invalid {
    fn from(e: ValidationError) -> Self {
        let causes = e.causes();
        Self { object: Some(e.object), causes }
    }
}

impl From<StatusCause> for Invalid {
    fn from(c: StatusCause) -> Self {
        Self::one(c)
    }
}

/// Errors that know the fields they refuse.
pub trait Causes {
    /// One cause per problem, with its field where there is one.
    fn causes(&self) -> Vec<StatusCause>;
}

impl Causes for ValidationError {
    fn causes(&self) -> Vec<StatusCause> {
        self.problems.iter().map(StatusCause::from).collect()
    }
}

impl Causes for LoadError {
    fn causes(&self) -> Vec<StatusCause> {
        match self {
            LoadError::Decode { errors, .. } => errors
                .iter()
                .map(|d| StatusCause {
                    reason: match d.kind {
                        DecodeErrorKind::MissingField => "FieldValueRequired",
                        DecodeErrorKind::UnknownField => "FieldValueInvalid",
                        DecodeErrorKind::InvalidValue => "FieldValueInvalid",
                    },
                    message: d.message.clone(),
                    field: Some(d.path.clone()),
                })
                .collect(),
            other => {
                vec![StatusCause { reason: "FieldValueInvalid", message: other.to_string(), field: None }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::DecodeError;

    #[test]
    fn each_problem_is_a_cause_naming_its_field() {
        let e = ValidationError {
            object: "VirtualMachine default/x".into(),
            problems: vec![
                FieldProblem {
                    path: "spec.running".into(),
                    kind: ProblemKind::Invalid,
                    message: "both".into(),
                },
                FieldProblem {
                    path: "spec.template".into(),
                    kind: ProblemKind::Required,
                    message: "set it".into(),
                },
                FieldProblem { path: String::new(), kind: ProblemKind::Forbidden, message: "no".into() },
            ],
        };
        let c = e.causes();
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].reason, c[0].field.as_deref()), ("FieldValueInvalid", Some("spec.running")));
        assert_eq!(c[0].message, "invalid: both");
        assert_eq!((c[1].reason, c[1].field.as_deref()), ("FieldValueRequired", Some("spec.template")));
        assert_eq!((c[2].reason, c[2].field.as_deref()), ("FieldValueForbidden", None));
        let v = serde_json::to_value(&c[2]).unwrap_or_default();
        assert!(v.get("field").is_none(), "{v}");
    }

    #[test]
    fn an_invalid_reads_as_the_validation_error_or_as_kubernetes_field_errors() {
        let e = ValidationError {
            object: "VirtualMachine default/x".into(),
            problems: vec![FieldProblem {
                path: "spec.running".into(),
                kind: ProblemKind::Invalid,
                message: "both".into(),
            }],
        };
        let text = e.to_string();
        assert_eq!(Invalid::from(e).to_string(), text);
        let i = Invalid::one(StatusCause::invalid_value("metadata.name", "\"Bad\"", "lower case only"));
        assert_eq!(i.to_string(), "metadata.name: Invalid value: \"Bad\": lower case only");
        assert_eq!(i.causes[0].reason, "FieldValueInvalid");
        assert_eq!(
            Invalid::one(StatusCause::required("spec.vmiName", "the VMI")).to_string(),
            "spec.vmiName: Required value: the VMI"
        );
        let f = StatusCause::forbidden("metadata.finalizers", "no new ones");
        assert_eq!(
            (f.reason, f.to_string().as_str()),
            ("FieldValueForbidden", "metadata.finalizers: Forbidden: no new ones")
        );
        let u = StatusCause::unsupported("propagationPolicy", "\"X\"", "\"Orphan\"");
        assert_eq!(
            u.to_string(),
            "propagationPolicy: Unsupported value: \"X\": supported values: \"Orphan\""
        );
    }

    #[test]
    fn decode_errors_are_causes_and_other_load_errors_one_without_a_field() {
        let e = LoadError::Decode {
            document: 1,
            errors: vec![
                DecodeError::new("spec.bogus", DecodeErrorKind::UnknownField, "unknown field"),
                DecodeError::new("spec.source", DecodeErrorKind::MissingField, "required field is missing"),
            ],
        };
        let c = e.causes();
        assert_eq!(c[0].field.as_deref(), Some("spec.bogus"));
        assert_eq!((c[1].reason, c[1].field.as_deref()), ("FieldValueRequired", Some("spec.source")));
        let e = LoadError::NotAnObject { document: 1, found: "a list" };
        let c = e.causes();
        assert_eq!((c.len(), c[0].field.clone()), (1, None));
        assert!(c[0].message.contains("a list"));
    }
}
