//! OCI registry client for KubeVirt containerDisk and kernel-boot images.
//!
//! A containerDisk image carries one disk file under `/disk/` (`/disk/fedora.qcow2`); a
//! kernel-boot image carries files such as `/boot/vmlinuz` and `/boot/initrd`. This module
//! pulls such images from any registry speaking the distribution API (v2):
//!
//! * references by tag or digest, with CDI's `docker://` prefix
//!   ([`Reference`]);
//! * OCI image manifests and indexes, Docker v2 schema 2 manifests and manifest lists; from an
//!   index the configured platform (linux/amd64 by default) is picked;
//! * [`RegistryClient::resolve_digest`] for cheap polling of a tag (one `HEAD`);
//! * anonymous, basic and bearer-token authentication (the `WWW-Authenticate` challenge), TLS
//!   with a caller-given CA bundle, plain HTTP or unverified TLS only for registries the caller
//!   lists as insecure;
//! * every blob verified (sha256 and size) while it streams, layers decompressed (gzip, zstd,
//!   plain tar) and extracted on the fly with whiteouts, path-traversal refusal and symlink
//!   resolution inside the image.
//!
//! The API is blocking (HTTP by `ureq` over rustls with the ring provider); async callers run it
//! with `spawn_blocking`. See `docs/registry.md` for the design and security choices.
//!
//! ```no_run
//! use virt_storage::registry::{Credentials, RegistryClient, RegistryConfig};
//!
//! let config = RegistryConfig::default().with_credentials(Credentials::new("user", "secret"));
//! let client = RegistryClient::new(config)?;
//! let digest = client.resolve_digest("docker://quay.io/containerdisks/fedora:40")?;
//! let disk = client.extract_container_disk(&format!("quay.io/containerdisks/fedora@{digest}"), "/var/tmp/img".as_ref())?;
//! println!("{}", disk.display());
//! # Ok::<(), virt_storage::registry::RegistryError>(())
//! ```

mod error;
pub(crate) mod extract;
pub mod manifest;
mod reference;
mod resume;
pub(crate) mod transport;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::RegistryError;
pub use manifest::{Descriptor, Platform};
pub use reference::{Digest, DigestError, Reference, DOCKER_HUB};

use extract::{BlobReader, ErrCtx, Selection};
use manifest::Document;
use transport::{read_limited, LimitedReadError, Target, Transport};

/// Default limit on a manifest's size: real manifests are a few KiB.
pub const DEFAULT_MAX_MANIFEST_SIZE: u64 = 4 * 1024 * 1024;

/// Registry credentials: a user name and a password or token (in CDI, a Secret's
/// `accessKeyId` and `secretKey`). They are sent as HTTP basic authentication, to the
/// registry or to the token service its bearer challenge names.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name (CDI: `accessKeyId`).
    pub username: String,
    /// Password or token (CDI: `secretKey`).
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self { username: username.into(), password: password.into() }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to talk to registries. The defaults: anonymous, HTTPS verified against the Mozilla
/// roots, linux/amd64, 4 MiB manifest limit.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Credentials, or `None` for anonymous pulls.
    pub credentials: Option<Credentials>,
    /// PEM CA bundle. When set, server certificates are verified against these CAs only
    /// (not the built-in roots): a private registry's CA is trusted for that registry and
    /// nothing else is.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Registries (`host` or `host:port`, as written in references) allowed to be insecure:
    /// HTTPS without certificate verification, falling back to plain HTTP when the registry
    /// does not speak TLS. Every other registry is HTTPS with verification, always.
    pub insecure_registries: Vec<String>,
    /// Operating system picked from an index (`linux`).
    pub os: String,
    /// Architecture picked from an index (`amd64`).
    pub architecture: String,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_size: u64,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for each read from the network.
    pub read_timeout: Duration,
    /// Where pulls may connect (see [`crate::import::policy`]); `None` connects anywhere.
    pub net_policy: Option<std::sync::Arc<crate::import::policy::NetPolicy>>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            credentials: None,
            ca_bundle_pem: None,
            insecure_registries: Vec::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
            max_manifest_size: DEFAULT_MAX_MANIFEST_SIZE,
            connect_timeout: transport::DEFAULT_CONNECT_TIMEOUT,
            read_timeout: transport::DEFAULT_READ_TIMEOUT,
            net_policy: None,
        }
    }
}

impl RegistryConfig {
    /// Sets the credentials.
    pub fn with_credentials(mut self, c: Credentials) -> Self {
        self.credentials = Some(c);
        self
    }

    /// Sets the PEM CA bundle that server certificates must chain to.
    pub fn with_ca_bundle(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_bundle_pem = Some(pem.into());
        self
    }

    /// Limits where pulls may connect.
    pub fn with_net_policy(mut self, policy: std::sync::Arc<crate::import::policy::NetPolicy>) -> Self {
        self.net_policy = Some(policy);
        self
    }

    /// Marks a registry (`host[:port]`) as insecure; see [`RegistryConfig::insecure_registries`].
    pub fn with_insecure_registry(mut self, registry: impl Into<String>) -> Self {
        self.insecure_registries.push(registry.into());
        self
    }

    /// Whether `registry` (`host[:port]`) was configured as insecure.
    pub fn is_insecure(&self, registry: &str) -> bool {
        self.insecure_registries.iter().any(|r| r.eq_ignore_ascii_case(registry))
    }
}

/// A resolved image: the platform manifest the client will pull.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// The reference as parsed.
    pub reference: Reference,
    /// Digest of what the reference points at (the index for multi-platform images): this is
    /// what changes when a tag is moved, and what [`RegistryClient::resolve_digest`] returns.
    pub digest: Digest,
    /// Digest of the platform's image manifest (equal to `digest` for single-platform images).
    pub manifest_digest: Digest,
    /// The image manifest's media type.
    pub media_type: String,
    /// The config blob.
    pub config: Descriptor,
    /// The layers, lowest first.
    pub layers: Vec<Descriptor>,
}

/// A registry client. Cheap to share by reference across threads; it caches each registry's
/// scheme, auth challenge and bearer tokens.
pub struct RegistryClient {
    /// Shared with blob downloads in flight, which reopen through it to resume.
    transport: Arc<Transport>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient").field("config", self.transport.config()).finish()
    }
}

/// A fetched manifest document.
struct Fetched {
    doc: Document,
    digest: Digest,
}

impl RegistryClient {
    /// A client with `config`. Fails if the CA bundle is not usable PEM.
    pub fn new(config: RegistryConfig) -> Result<Self, RegistryError> {
        Ok(Self { transport: Arc::new(Transport::new(config)?) })
    }

    /// The digest the reference currently points at, with one `HEAD` of the manifest (its
    /// `Docker-Content-Digest` header), or a `GET` and a hash of the body when the registry
    /// sends no digest header. For a multi-platform image this is the index's digest. For a
    /// reference pinned by digest, the digest is returned once the registry confirms it has it.
    pub fn resolve_digest(&self, reference: &str) -> Result<Digest, RegistryError> {
        let r = Reference::parse(reference)?;
        let key = r.manifest_key();
        let path = format!("/v2/{}/manifests/{}", r.repository(), key);
        let reply = self.transport.request(&r, "HEAD", &path, Some(manifest::ACCEPT), Target::Manifest)?;
        let header = reply
            .response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let digest = match header {
            Some(d) => d,
            None => self.fetch(&r, &key)?.digest,
        };
        if let Some(pinned) = r.digest() {
            if *pinned != digest {
                return Err(RegistryError::DigestMismatch {
                    registry: r.registry().to_string(),
                    image: r.image(),
                    what: "manifest",
                    expected: pinned.to_string(),
                    actual: digest.to_string(),
                });
            }
        }
        Ok(digest)
    }

    /// Fetches the manifest (through the index, for the configured platform) without pulling
    /// any layer.
    pub fn fetch_manifest(&self, reference: &str) -> Result<ImageManifest, RegistryError> {
        let r = Reference::parse(reference)?;
        self.fetch_image(&r)
    }

    /// Pulls a containerDisk image and writes its single disk file (the one regular file
    /// directly under `/disk/`) to `dest_dir/<name>`, returning that path. Fails naming the
    /// files when `/disk/` holds none or several. `dest_dir` is created if needed; the disk is
    /// staged beside it and appears only once every layer has been verified.
    pub fn extract_container_disk(&self, reference: &str, dest_dir: &Path) -> Result<PathBuf, RegistryError> {
        let r = Reference::parse(reference)?;
        let staged = self.pull(&r, &Selection::ContainerDisk, dest_dir, |staging, files| {
            let (image_path, staged) = files.into_iter().next().ok_or_else(|| RegistryError::NoDisk {
                registry: r.registry().to_string(),
                image: r.image(),
            })?;
            let name = image_path.rsplit('/').next().unwrap_or(&image_path).to_string();
            let dest = dest_dir.join(name);
            place(&staged, &dest, staging)?;
            Ok(vec![dest])
        })?;
        staged
            .into_iter()
            .next()
            .ok_or_else(|| RegistryError::NoDisk { registry: r.registry().to_string(), image: r.image() })
    }

    /// Pulls an image and writes the named files (image paths such as `boot/vmlinuz` or
    /// `/boot/initrd`; symlinks inside the image are followed) to `dest_dir/<image path>`,
    /// returning the written paths in the order asked. Fails naming the first missing file.
    pub fn extract_files(
        &self,
        reference: &str,
        files: &[&str],
        dest_dir: &Path,
    ) -> Result<Vec<PathBuf>, RegistryError> {
        let r = Reference::parse(reference)?;
        let mut wanted = Vec::with_capacity(files.len());
        for f in files {
            let n = extract::normalize(f.trim_start_matches('/')).map_err(|why| {
                RegistryError::InvalidReference {
                    reference: format!("{r} file {f:?}"),
                    reason: why.to_string(),
                }
            })?;
            if n.is_empty() {
                return Err(RegistryError::InvalidReference {
                    reference: format!("{r} file {f:?}"),
                    reason: "not a file path".into(),
                });
            }
            wanted.push(n);
        }
        self.pull(&r, &Selection::Files(wanted), dest_dir, |staging, staged| {
            let mut out: Vec<PathBuf> = Vec::with_capacity(staged.len());
            let mut placed: Vec<(PathBuf, PathBuf)> = Vec::new();
            for (image_path, file) in staged {
                let dest = dest_dir.join(&image_path);
                // Two requested paths may resolve to one file (links): copy the second.
                if let Some((_, first)) = placed.iter().find(|(s, _)| *s == file) {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent).map_err(|e| RegistryError::Io {
                            op: "creating",
                            path: parent.to_path_buf(),
                            source: e,
                        })?;
                    }
                    std::fs::copy(first, &dest).map_err(|e| RegistryError::Io {
                        op: "writing",
                        path: dest.clone(),
                        source: e,
                    })?;
                } else {
                    place(&file, &dest, staging)?;
                    placed.push((file, dest.clone()));
                }
                out.push(dest);
            }
            Ok(out)
        })
    }

    /// Resolves the image, reads every layer into a staging directory inside `dest_dir`, and
    /// hands the staged files to `finish` (which moves them into place).
    fn pull<T>(
        &self,
        r: &Reference,
        selection: &Selection,
        dest_dir: &Path,
        finish: impl FnOnce(&Path, Vec<(String, PathBuf)>) -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let image = self.fetch_image(r)?;
        std::fs::create_dir_all(dest_dir).map_err(|e| RegistryError::Io {
            op: "creating",
            path: dest_dir.to_path_buf(),
            source: e,
        })?;
        let staging =
            tempfile::Builder::new().prefix(".virt-registry-").tempdir_in(dest_dir).map_err(|e| {
                RegistryError::Io {
                    op: "creating a staging directory in",
                    path: dest_dir.to_path_buf(),
                    source: e,
                }
            })?;
        let ctx = ErrCtx { registry: r.registry().to_string(), image: r.image() };
        let mut open = |desc: &Descriptor| self.open_blob(r, desc);
        let staged = extract::extract(&ctx, &image.layers, selection, staging.path(), &mut open)?;
        let out = finish(staging.path(), staged)?;
        log::info!("pulled {r} ({}, {} layers)", image.manifest_digest, image.layers.len());
        Ok(out)
    }

    fn open_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
    ) -> Result<BlobReader<Box<dyn std::io::Read>>, RegistryError> {
        let digest: Digest = desc.digest.parse().map_err(|e| RegistryError::BadManifest {
            registry: r.registry().to_string(),
            image: r.image(),
            reason: format!("layer digest: {e}"),
        })?;
        let path = format!("/v2/{}/blobs/{}", r.repository(), digest);
        // A dropped connection resumes with a Range request (resume.rs); the BlobReader above
        // hashes every byte handed out, so the blob is verified whole across resumes.
        let (transport, reference, blob) = (self.transport.clone(), r.clone(), desc.digest.clone());
        let open = move |from: u64| {
            let reply = transport.request_from(&reference, "GET", &path, None, from, Target::Blob(&blob))?;
            let start = if from > 0 && reply.response.status().as_u16() == 206 {
                content_range_start(&reply.response).ok_or_else(|| RegistryError::Http {
                    registry: reference.registry().to_string(),
                    image: reference.image(),
                    status: 206,
                    path: reply.path.clone(),
                    message: "partial content without a usable Content-Range header".into(),
                })?
            } else {
                0
            };
            let reader: Box<dyn std::io::Read + Send> = Box::new(reply.response.into_body().into_reader());
            Ok(resume::Reopened { reader, start })
        };
        let body = resume::ResumingBlob::new(Box::new(open), desc.size, format!("blob {digest}"))?;
        let body: Box<dyn std::io::Read> = Box::new(body);
        Ok(BlobReader::new(body, digest, desc.size))
    }

    /// Fetches the manifest for `r` and, for an index, the configured platform's manifest.
    fn fetch_image(&self, r: &Reference) -> Result<ImageManifest, RegistryError> {
        let top = self.fetch(r, &r.manifest_key())?;
        let mut current = top.doc;
        let mut manifest_digest = top.digest.clone();
        // An index may point at another index (rare); follow at most two levels.
        for _ in 0..3 {
            match current {
                Document::Image { media_type, config, layers } => {
                    return Ok(ImageManifest {
                        reference: r.clone(),
                        digest: top.digest,
                        manifest_digest,
                        media_type,
                        config,
                        layers,
                    })
                }
                Document::Index { manifests, .. } => {
                    let cfg = self.transport.config();
                    let entry = manifest::select_platform(&manifests, &cfg.os, &cfg.architecture)
                        .ok_or_else(|| RegistryError::NoPlatform {
                            registry: r.registry().to_string(),
                            image: r.image(),
                            platform: format!("{}/{}", cfg.os, cfg.architecture),
                            available: manifest::platforms(&manifests),
                        })?;
                    let child = self.fetch(r, &entry.digest)?;
                    manifest_digest = child.digest;
                    current = child.doc;
                }
            }
        }
        Err(RegistryError::BadManifest {
            registry: r.registry().to_string(),
            image: r.image(),
            reason: "indexes nested more than two levels".into(),
        })
    }

    /// GETs one manifest by tag or digest: bounded in size, its sha256 checked against the
    /// digest asked for (or the registry's `Docker-Content-Digest`), then parsed.
    fn fetch(&self, r: &Reference, key: &str) -> Result<Fetched, RegistryError> {
        let path = format!("/v2/{}/manifests/{}", r.repository(), key);
        let reply = self.transport.request(r, "GET", &path, Some(manifest::ACCEPT), Target::Manifest)?;
        let headers = reply.response.headers();
        let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).map(String::from);
        let header_digest =
            headers.get("docker-content-digest").and_then(|v| v.to_str().ok()).map(String::from);
        let limit = self.transport.config().max_manifest_size;
        let body = read_limited(reply.response, limit).map_err(|e| match e {
            LimitedReadError::TooLarge => RegistryError::TooLarge {
                registry: r.registry().to_string(),
                image: r.image(),
                what: format!("manifest ({})", reply.path),
                limit,
            },
            LimitedReadError::Other(m) => RegistryError::Connect {
                host: r.api_host().to_string(),
                url: reply.path.clone(),
                message: format!("reading the manifest: {m}"),
            },
        })?;
        let digest = Digest::of(&body);
        let expected = if key.starts_with("sha256:") { Some(key.to_string()) } else { header_digest };
        if let Some(exp) = expected.filter(|e| e.starts_with("sha256:")) {
            if exp != digest.to_string() {
                return Err(RegistryError::DigestMismatch {
                    registry: r.registry().to_string(),
                    image: r.image(),
                    what: "manifest",
                    expected: exp,
                    actual: digest.to_string(),
                });
            }
        }
        let doc =
            manifest::parse(&body, content_type.as_deref()).map_err(|reason| RegistryError::BadManifest {
                registry: r.registry().to_string(),
                image: r.image(),
                reason: format!("{reason} ({})", reply.path),
            })?;
        Ok(Fetched { doc, digest })
    }
}

/// The first byte's offset from a 206 answer's `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    let range = v.trim().strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// Moves a staged file to `dest` (creating its directory), replacing what was there.
fn place(staged: &Path, dest: &Path, staging: &Path) -> Result<(), RegistryError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| RegistryError::Io {
            op: "creating",
            path: parent.to_path_buf(),
            source: e,
        })?;
    }
    std::fs::rename(staged, dest).or_else(|e| {
        // A different file system (dest_dir/<sub> mounted elsewhere): copy instead.
        log::debug!(
            "rename {} -> {} failed ({e}); copying from {}",
            staged.display(),
            dest.display(),
            staging.display()
        );
        std::fs::copy(staged, dest).map(|_| ()).map_err(|e| RegistryError::Io {
            op: "writing",
            path: dest.to_path_buf(),
            source: e,
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::RegistryClient>();
    }
}
