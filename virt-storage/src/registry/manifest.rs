//! Manifest and index documents: OCI image manifest / index and Docker v2 schema 2 manifest /
//! manifest list, which have the same JSON shape and differ in media types.

use serde::Deserialize;

use super::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker v2 schema 2 manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 1 (signed) manifest: refused.
const DOCKER_SCHEMA1: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// The `Accept` header sent for manifests: every kind this client understands.
pub(crate) const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// A blob or manifest descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Content digest, as written in the manifest (checked when parsed into [`Digest`]).
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Platform, for index entries.
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// An index entry's platform.
#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v8`), if any.
    #[serde(default)]
    pub variant: Option<String>,
}

/// The fields of a manifest or index this client reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDocument {
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug)]
pub enum Document {
    /// An image manifest (OCI or Docker v2s2): config and layers, lowest layer first.
    Image {
        /// The media type (from the document or the response's `Content-Type`).
        media_type: String,
        /// The config blob.
        config: Descriptor,
        /// The layers, in application order.
        layers: Vec<Descriptor>,
    },
    /// An index / manifest list: one manifest per platform.
    Index {
        /// The media type.
        media_type: String,
        /// The entries.
        manifests: Vec<Descriptor>,
    },
}

/// Why a manifest body was refused; each names the field or value at fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    /// The body is not JSON of a manifest's shape.
    #[error("manifest is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A Docker v2 schema 1 manifest (signed, no digests per layer).
    #[error("Docker v2 schema 1 manifests are not supported (re-push the image with a current tool)")]
    Schema1,
    /// A `schemaVersion` other than 2 (or none).
    #[error("manifest schemaVersion {0:?} is not supported (expected 2)")]
    SchemaVersion(Option<u32>),
    /// A media type that is neither an image manifest nor an index.
    #[error("manifest media type {0:?} is not supported")]
    MediaType(String),
    /// A field the document's kind requires is absent.
    #[error("{kind} has no {field}")]
    Missing {
        /// `image manifest` or `index`.
        kind: &'static str,
        /// `config`, `layers` or `manifests`.
        field: &'static str,
    },
    /// A descriptor's digest is not `sha256:<64 hex>`.
    #[error("descriptor digest: {source}")]
    Digest {
        /// The digest as given.
        digest: String,
        /// What is wrong with it (names the digest).
        source: super::reference::DigestError,
    },
}

/// Parses a manifest body. `content_type` is the response's `Content-Type`, used when the
/// document does not carry its own `mediaType` (OCI makes the field optional).
pub(crate) fn parse(body: &[u8], content_type: Option<&str>) -> Result<Document, ManifestError> {
    let raw: RawDocument = serde_json::from_slice(body).map_err(ManifestError::Json)?;
    let header_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string());
    let media_type = raw
        .media_type
        .clone()
        .filter(|m| !m.is_empty())
        .or(header_type.filter(|h| !h.is_empty() && h != "application/json"))
        .unwrap_or_default();
    if DOCKER_SCHEMA1.contains(&media_type.as_str()) || raw.schema_version == Some(1) {
        return Err(ManifestError::Schema1);
    }
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion(raw.schema_version));
    }
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Image,
        OCI_INDEX | DOCKER_MANIFEST_LIST => Kind::Index,
        // No media type anywhere: decide by shape, as the OCI spec allows.
        "" if raw.manifests.is_some() => Kind::Index,
        "" if raw.layers.is_some() => Kind::Image,
        other => return Err(ManifestError::MediaType(other.to_string())),
    };
    let check = |d: &Descriptor| -> Result<(), ManifestError> {
        d.digest
            .parse::<Digest>()
            .map(|_| ())
            .map_err(|source| ManifestError::Digest { digest: d.digest.clone(), source })
    };
    let missing = |kind, field| ManifestError::Missing { kind, field };
    match kind {
        Kind::Image => {
            let config = raw.config.ok_or_else(|| missing("image manifest", "config"))?;
            let layers = raw.layers.ok_or_else(|| missing("image manifest", "layers"))?;
            check(&config)?;
            for l in &layers {
                check(l)?;
            }
            Ok(Document::Image { media_type, config, layers })
        }
        Kind::Index => {
            let manifests = raw.manifests.ok_or_else(|| missing("index", "manifests"))?;
            for m in &manifests {
                check(m)?;
            }
            Ok(Document::Index { media_type, manifests })
        }
    }
}

enum Kind {
    Image,
    Index,
}

/// The index entry for `os`/`arch` (variant ignored), skipping attestation manifests (which
/// buildkit lists with platform `unknown/unknown`).
pub(crate) fn select_platform<'a>(
    manifests: &'a [Descriptor],
    os: &str,
    arch: &str,
) -> Option<&'a Descriptor> {
    manifests.iter().find(|m| {
        m.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == arch)
            && (m.media_type.is_empty()
                || m.media_type == OCI_MANIFEST
                || m.media_type == DOCKER_MANIFEST
                || m.media_type == OCI_INDEX
                || m.media_type == DOCKER_MANIFEST_LIST)
    })
}

/// `os/arch[/variant]` of every entry, for error messages.
pub(crate) fn platforms(manifests: &[Descriptor]) -> String {
    let v: Vec<String> = manifests
        .iter()
        .map(|m| match &m.platform {
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                None => format!("{}/{}", p.os, p.architecture),
            },
            None => "(no platform)".to_string(),
        })
        .collect();
    if v.is_empty() {
        "nothing".to_string()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parses_docker_list_and_picks_amd64() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":5,"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":6,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Document::Index { manifests, .. } = parse(body.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&manifests, "linux", "amd64").unwrap().digest, D2);
        assert!(select_platform(&manifests, "linux", "s390x").is_none());
        assert_eq!(platforms(&manifests), "linux/arm64/v8, linux/amd64");
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let body = format!(r#"{{"schemaVersion":2,"config":{{"digest":"{D1}","size":2}},"layers":[]}}"#);
        assert!(matches!(parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap(), Document::Image { .. }));
        assert!(matches!(parse(body.as_bytes(), None).unwrap(), Document::Image { .. }));
    }

    #[test]
    fn refuses_schema1_and_bad_digests() {
        let e = parse(br#"{"schemaVersion":1,"name":"x"}"#, None).unwrap_err();
        assert!(matches!(e, ManifestError::Schema1) && e.to_string().contains("schema 1"), "{e}");
        let body = r#"{"schemaVersion":2,"config":{"digest":"sha256:zz","size":2},"layers":[]}"#;
        let e = parse(body.as_bytes(), Some(OCI_MANIFEST)).unwrap_err();
        assert!(matches!(&e, ManifestError::Digest { digest, .. } if digest == "sha256:zz"), "{e:?}");
        assert!(
            e.to_string().starts_with("descriptor digest: ") && e.to_string().contains("sha256:zz"),
            "{e}"
        );
        assert!(matches!(parse(b"not json", None).unwrap_err(), ManifestError::Json(_)));
    }

    #[test]
    fn errors_name_the_version_media_type_and_missing_field() {
        let e = parse(br#"{"schemaVersion":3}"#, None).unwrap_err();
        assert_eq!(e.to_string(), "manifest schemaVersion Some(3) is not supported (expected 2)");
        let e = parse(br#"{"schemaVersion":2,"mediaType":"text/plain"}"#, None).unwrap_err();
        assert!(matches!(&e, ManifestError::MediaType(m) if m == "text/plain"), "{e:?}");
        assert_eq!(e.to_string(), "manifest media type \"text/plain\" is not supported");
        let e = parse(br#"{"schemaVersion":2,"layers":[]}"#, Some(OCI_MANIFEST)).unwrap_err();
        assert!(matches!(e, ManifestError::Missing { kind: "image manifest", field: "config" }), "{e:?}");
        assert_eq!(e.to_string(), "image manifest has no config");
        let e = parse(br#"{"schemaVersion":2}"#, Some(OCI_INDEX)).unwrap_err();
        assert_eq!(e.to_string(), "index has no manifests");
    }
}
