//! Image references (`registry:port/repo/name:tag`, `...@sha256:...`, `docker://...`) and
//! content digests.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use super::RegistryError;

/// The registry Docker uses for references without a registry host.
pub const DOCKER_HUB: &str = "docker.io";
/// The API host behind [`DOCKER_HUB`].
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A `sha256:<64 hex digits>` content digest. Only sha256 is supported: it is what every
/// registry and image tool in use computes, and refusing others keeps verification simple.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    /// 64 lowercase hex digits.
    hex: String,
}

impl Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).into())
    }

    /// A digest from a finished sha256 hash.
    pub fn from_sha256(hash: [u8; 32]) -> Self {
        Self { hex: to_hex(&hash) }
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    s
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest(sha256:{})", self.hex)
    }
}

/// Why a string is not a [`Digest`]; each names the digest (or its algorithm) as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {digest:?} has no algorithm prefix (expected sha256:<hex>)")]
    NoAlgorithm {
        /// The digest as given.
        digest: String,
    },
    /// An algorithm other than sha256.
    #[error("digest algorithm {algorithm:?} is not supported (only sha256)")]
    Algorithm {
        /// The algorithm as given.
        algorithm: String,
    },
    /// Not 64 lowercase hex digits after `sha256:`.
    #[error("digest {digest:?} is not sha256 followed by 64 lowercase hex digits")]
    Hex {
        /// The digest as given.
        digest: String,
    },
}

impl FromStr for Digest {
    type Err = DigestError;

    /// Parses `sha256:<64 lowercase hex>`; the error says what is wrong.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(DigestError::NoAlgorithm { digest: s.to_string() });
        };
        if algo != "sha256" {
            return Err(DigestError::Algorithm { algorithm: algo.to_string() });
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestError::Hex { digest: s.to_string() });
        }
        Ok(Self { hex: hex.to_string() })
    }
}

/// A parsed image reference: which registry, which repository, and a tag and/or a digest.
///
/// Parsing follows Docker's rules: the first path component is a registry host when it contains
/// a `.` or a `:` or is `localhost`; otherwise the image is on Docker Hub (`docker.io`, with
/// `library/` added to single-component names). A reference with neither tag nor digest means
/// `:latest`. A `docker://` prefix (CDI's registry URLs) is accepted and dropped.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference; see the type's documentation for the accepted forms.
    pub fn parse(input: &str) -> Result<Self, RegistryError> {
        let bad = |reason: String| RegistryError::InvalidReference { reference: input.to_string(), reason };
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if s.is_empty() {
            return Err(bad("empty reference".into()));
        }
        if s.contains("://") {
            return Err(bad("only the docker:// scheme is supported".into()));
        }
        let (name_tag, digest) = match s.rsplit_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(|e| bad(e.to_string()))?)),
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            validate_tag(t, &bad)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        validate_host(&registry, &bad)?;
        validate_repository(&repository, &bad)?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Self { registry, repository, tag, digest })
    }

    /// The registry as written in the reference (`127.0.0.1:5000`, `quay.io`, `docker.io`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host (and port) the registry's API is served on: the registry itself, except for
    /// Docker Hub whose API lives on `registry-1.docker.io`.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The repository path (`demo/cirros`, `library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference names one (`latest` when it named neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// What the registry's manifest endpoint is asked for: the digest when pinned, else the tag.
    pub(crate) fn manifest_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            // parse() always sets one of the two; "latest" is the documented default anyway.
            (None, None) => "latest".to_string(),
        }
    }

    /// `repo:tag`, `repo@digest` or `repo:tag@digest`: the image within its registry, as error
    /// messages show it next to the registry.
    pub fn image(&self) -> String {
        let mut s = self.repository.clone();
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(&d.to_string());
        }
        s
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.image())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `bad` makes the error naming the whole reference.
fn validate_tag(tag: &str, bad: &dyn Fn(String) -> RegistryError) -> Result<(), RegistryError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!("tag {tag:?} is not valid (letters, digits, '_', '.', '-'; at most 128)")))
    }
}

/// `bad` makes the error naming the whole reference.
fn validate_host(host: &str, bad: &dyn Fn(String) -> RegistryError) -> Result<(), RegistryError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(bad(format!("registry port {p:?} is not a number")));
        }
    }
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(bad(format!("registry host {host:?} is not valid")))
    }
}

/// `bad` makes the error naming the whole reference.
fn validate_repository(repo: &str, bad: &dyn Fn(String) -> RegistryError) -> Result<(), RegistryError> {
    if repo.is_empty() || repo.len() > 255 {
        return Err(bad("repository name is empty or longer than 255 characters".into()));
    }
    for comp in repo.split('/') {
        let bytes = comp.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.iter().all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && bytes.first().is_some_and(|b| b.is_ascii_alphanumeric())
            && bytes.last().is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(bad(format!(
                "repository component {comp:?} is not valid (lowercase letters, digits and . _ - \
                 between them)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_registry_port_repo_tag() {
        let r = Reference::parse("127.0.0.1:5000/demo/cirros:v9").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "demo/cirros");
        assert_eq!(r.tag(), Some("v9"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.image(), "demo/cirros:v9");
        assert_eq!(r.to_string(), "127.0.0.1:5000/demo/cirros:v9");
    }

    #[test]
    fn parses_digest_and_docker_prefix() {
        let r = Reference::parse(&format!("docker://quay.io/kubevirt/fedora@{D}")).unwrap();
        assert_eq!(r.registry(), "quay.io");
        assert_eq!(r.repository(), "kubevirt/fedora");
        assert_eq!(r.tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.manifest_key(), D);
        let r = Reference::parse(&format!("localhost/x:t@{D}")).unwrap();
        assert_eq!((r.registry(), r.tag()), ("localhost", Some("t")));
    }

    #[test]
    fn docker_hub_defaults() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        assert_eq!(r.repository(), "library/alpine");
        assert_eq!(r.tag(), Some("latest"));
        let r = Reference::parse("kubevirt/cirros-container-disk-demo:v1.0").unwrap();
        assert_eq!(r.repository(), "kubevirt/cirros-container-disk-demo");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "http://x/y",
            "Repo/Upper",
            "x:5000/a//b",
            "x.io/a:bad tag",
            "x.io/a@sha256:abc",
            "x.io/a@md5:0123",
            "host:99999/a",
            "x.io/-a",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn digest_of_bytes() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!("sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
            .parse::<Digest>()
            .is_err());
    }

    #[test]
    fn digest_errors_name_what_was_given() {
        let e = "abc".parse::<Digest>().unwrap_err();
        assert_eq!(e, DigestError::NoAlgorithm { digest: "abc".into() });
        assert_eq!(e.to_string(), "digest \"abc\" has no algorithm prefix (expected sha256:<hex>)");
        let e = "md5:00".parse::<Digest>().unwrap_err();
        assert_eq!(e, DigestError::Algorithm { algorithm: "md5".into() });
        assert_eq!(e.to_string(), "digest algorithm \"md5\" is not supported (only sha256)");
        let e = "sha256:zz".parse::<Digest>().unwrap_err();
        assert_eq!(e, DigestError::Hex { digest: "sha256:zz".into() });
        assert!(e.to_string().starts_with("digest \"sha256:zz\" is not sha256"), "{e}");
    }
}
