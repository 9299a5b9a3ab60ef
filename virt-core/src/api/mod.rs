//! The machinery every API model here shares: strict loading of YAML and JSON documents with the
//! full path of each problem, Kubernetes object metadata, quantities, timestamps and durations,
//! and validation results.
//!
//! It is generic over the set of kinds: [`crate::model`] loads KubeVirt's objects through it and
//! `virt_storage::cdi` loads CDI's, so both are as strict as the Kubernetes API server with
//! strict field validation, in one implementation:
//!
//! * YAML streams may hold several `---`-separated documents; duplicate keys are refused; syntax
//!   errors carry a line and column.
//! * `null` members are dropped before decoding, as the API server prunes them.
//! * Every field the model does not know is reported with its full path
//!   (`spec.domain.devices.diskz: unknown field`), and so is the first type error; under
//!   [`FieldValidation::Warn`] unknown fields become warnings instead, under
//!   [`FieldValidation::Ignore`] they are dropped.
//!
//! A model plugs in by implementing [`Kinds`] for an enum of its kinds, dispatching on
//! [`Document::group`], [`Document::version`] and [`Document::kind`] and decoding with
//! [`Decoder::decode`].

mod load;
mod meta;
mod quantity;
mod selector;
mod status;
pub mod time;
mod validate;

pub use load::{
    exactly_one, join_path, load_file, load_json, load_json_with, load_value, load_yaml, load_yaml_with,
    parse_json, parse_yaml, prune_nulls, to_json, to_yaml, type_name, DecodeError, DecodeErrorKind, Decoder,
    Document, FieldValidation, Format, Kinds, LoadError, LoadOptions, Loaded, SerializeError,
};
pub use meta::{
    new_uid, ConditionStatus, LabelSelector, LabelSelectorRequirement, LocalObjectReference, ObjectMeta,
    OwnerReference, TypedLocalObjectReference, TypedObjectReference,
};
pub use quantity::{Quantity, QuantityError};
pub use selector::{parse_label_selector, SelectorError};
pub use status::{Causes, Invalid, StatusCause};
pub use time::{Duration, DurationError, Timestamp, TimestampError};
pub use validate::{
    check_name, check_namespace, check_type_meta, child, describe_meta, is_dns1035_label, is_dns1123_label,
    is_dns1123_subdomain, is_label_name, is_qualified_name, validate_meta, FieldProblem, NameRule,
    ProblemKind, Validate, Validation, ValidationError,
};
