//! The core `v1` objects the node serves besides KubeVirt's (namespaces, events) and its version.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use virt_core::api::{ObjectMeta, Timestamp};

/// A core `v1` `Namespace`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    /// `v1`.
    pub api_version: String,
    /// `Namespace`.
    pub kind: String,
    /// Metadata; `name` is the namespace.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// `finalizers`, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Value>,
    /// `phase` (`Active`, `Terminating`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<NamespaceStatus>,
}

/// `NamespaceStatus`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    /// `Active` or `Terminating`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Conditions, as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Value>,
}

/// A core `v1` `Event`: something that happened to an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Event`.
    #[serde(default)]
    pub kind: String,
    /// Metadata.
    #[serde(default, skip_serializing_if = "ObjectMeta::is_empty")]
    pub metadata: ObjectMeta,
    /// The object the event is about.
    #[serde(default)]
    pub involved_object: ObjectReference,
    /// Machine-readable cause (`Started`, `ShuttingDown`, `FailedCreate`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Normal` or `Warning`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// How many times it happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// First occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_timestamp: Option<Timestamp>,
    /// Last occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_timestamp: Option<Timestamp>,
}

/// `ObjectReference` (an event's `involvedObject`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReference {
    /// Kind of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Its apiVersion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Its resourceVersion when the event was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// A field within the object (`spec.containers{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field_path: Option<String>,
}

/// The version answer of `GET /version` (KubeVirt's `version.Info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    /// `v0.1.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_version: Option<String>,
    /// The commit built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// `clean` or `dirty`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_tree_state: Option<String>,
    /// When it was built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_date: Option<String>,
    /// The toolchain (`rust` here, `go1.22` for KubeVirt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub go_version: Option<String>,
    /// The compiler.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compiler: Option<String>,
    /// `linux/amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl Version {
    /// This library's version, as `virtctl version` prints for the client.
    pub fn client() -> Self {
        Self {
            git_version: Some(concat!("v", env!("CARGO_PKG_VERSION")).to_string()),
            go_version: Some("rust".to_string()),
            compiler: Some("rustc".to_string()),
            platform: Some(format!("{}/{}", std::env::consts::OS, go_arch(std::env::consts::ARCH))),
            ..Self::default()
        }
    }
}

/// Go's name for an architecture (`amd64` for `x86_64`), as KubeVirt's `platform` writes it.
fn go_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl fmt::Display for Version {
    /// KubeVirt's layout: `version.Info{GitVersion:"v0.1.0", GoVersion:"rust", Platform:"linux/amd64"}`,
    /// with only the fields that are set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fields = [
            ("GitVersion", &self.git_version),
            ("GitCommit", &self.git_commit),
            ("GitTreeState", &self.git_tree_state),
            ("BuildDate", &self.build_date),
            ("GoVersion", &self.go_version),
            ("Compiler", &self.compiler),
            ("Platform", &self.platform),
        ];
        f.write_str("version.Info{")?;
        let mut first = true;
        for (name, value) in fields {
            if let Some(v) = value {
                if !first {
                    f.write_str(", ")?;
                }
                first = false;
                write!(f, "{name}:{v:?}")?;
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_prints_like_kubevirt() {
        let v: Version = serde_json::from_str(
            r#"{"gitVersion":"v0.1.0","goVersion":"rust","platform":"linux/amd64","x":1}"#,
        )
        .unwrap();
        assert_eq!(
            v.to_string(),
            r#"version.Info{GitVersion:"v0.1.0", GoVersion:"rust", Platform:"linux/amd64"}"#
        );
        let c = Version::client().to_string();
        let want = format!(
            r#"version.Info{{GitVersion:"v{}", GoVersion:"rust", Compiler:"rustc""#,
            env!("CARGO_PKG_VERSION")
        );
        assert!(c.starts_with(&want), "{c}");
    }
}
