//! The registry client's error type.

use std::path::PathBuf;

/// Errors of the registry client. Every message names the registry (its host and port, as in
/// the reference) and, where there is one, the image, the HTTP status and the request path, or
/// the blob whose content was wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The client configuration is unusable (a CA bundle without certificates, ...).
    #[error("registry client configuration: {0}")]
    Config(String),

    /// The registry has no such manifest (404 / `MANIFEST_UNKNOWN` / `NAME_UNKNOWN`).
    #[error("registry {registry}: image {image} not found ({status} on {path})")]
    NotFound {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// HTTP status.
        status: u16,
        /// Request path (`/v2/<repo>/manifests/<tag>`).
        path: String,
    },

    /// A blob the manifest lists is missing from the registry.
    #[error("registry {registry}: image {image}: blob {digest} not found ({status} on {path})")]
    BlobNotFound {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The blob's digest.
        digest: String,
        /// HTTP status.
        status: u16,
        /// Request path.
        path: String,
    },

    /// The registry (or its token service) refused the credentials, or wants some and none
    /// were given.
    #[error(
        "registry {registry}: unauthorized for image {image} ({status} on {path}{}): {detail}",
        realm.as_ref().map(|r| format!(", realm {r:?}")).unwrap_or_default()
    )]
    Unauthorized {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// HTTP status (401, or 403 for a denied scope).
        status: u16,
        /// Request path (or the token endpoint's URL).
        path: String,
        /// The challenge's realm, when the registry sent one.
        realm: Option<String>,
        /// What happened: no credentials given, credentials refused, ...
        detail: String,
    },

    /// Any other unexpected HTTP status.
    #[error("registry {registry}: image {image}: HTTP {status} on {path}: {message}")]
    Http {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// HTTP status.
        status: u16,
        /// Request path.
        path: String,
        /// The start of the response body (registries put an error JSON there).
        message: String,
    },

    /// The TLS handshake failed (unknown CA, wrong host name, expired certificate, plain HTTP
    /// server, ...).
    #[error("TLS failure talking to registry {host} ({url}): {message}")]
    Tls {
        /// Host[:port] the connection was made to.
        host: String,
        /// The URL being requested.
        url: String,
        /// The TLS library's description.
        message: String,
    },

    /// Connecting or talking to the registry failed below HTTP (refused, DNS, timeout, reset).
    #[error("cannot reach registry {host} ({url}): {message}")]
    Connect {
        /// Host[:port].
        host: String,
        /// The URL being requested.
        url: String,
        /// What failed.
        message: String,
    },

    /// A manifest (or a token response) larger than the configured limit was refused.
    #[error("registry {registry}: image {image}: {what} is larger than the {limit}-byte limit")]
    TooLarge {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// What was too large ("manifest", "token response").
        what: String,
        /// The limit in bytes.
        limit: u64,
    },

    /// The manifest is not one of the supported kinds or is malformed.
    #[error("registry {registry}: image {image}: {reason}")]
    BadManifest {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// What is wrong (unsupported media type, JSON error, ...).
        reason: String,
    },

    /// The image index / manifest list has no entry for the wanted platform.
    #[error(
        "registry {registry}: image {image}: no manifest for platform {platform} (index has: {available})"
    )]
    NoPlatform {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The wanted platform (`linux/amd64`).
        platform: String,
        /// The platforms the index lists.
        available: String,
    },

    /// Content whose sha256 differs from the digest it was asked for: a manifest, or a blob.
    #[error("registry {registry}: image {image}: {what} {expected} has wrong content (sha256 is {actual})")]
    DigestMismatch {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// "blob" or "manifest".
        what: &'static str,
        /// The digest the content should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },

    /// A blob whose length differs from its descriptor's size (refused as soon as it is exceeded).
    #[error("registry {registry}: image {image}: blob {digest} {problem} (declared size {expected} bytes)")]
    SizeMismatch {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The blob's digest.
        digest: String,
        /// "is longer than declared" or "ended after N bytes".
        problem: String,
        /// The declared size.
        expected: u64,
    },

    /// A layer could not be decompressed or read as a tar archive.
    #[error("registry {registry}: image {image}: layer {digest}: {message}")]
    Layer {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The layer's digest.
        digest: String,
        /// What went wrong.
        message: String,
    },

    /// A tar entry tried to leave the image's file system (`..`, absolute path, escaping symlink).
    #[error("registry {registry}: image {image}: layer {digest}: unsafe path {path:?}: {reason}")]
    UnsafePath {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The layer's digest.
        digest: String,
        /// The entry's path (or link target).
        path: String,
        /// Why it is refused.
        reason: String,
    },

    /// The image has no disk under `/disk/` (KubeVirt's containerDisk convention).
    #[error("registry {registry}: image {image} has no disk file under /disk/ (not a containerDisk image?)")]
    NoDisk {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
    },

    /// The image has more than one file under `/disk/`.
    #[error("registry {registry}: image {image} has several files under /disk/: {}", files.join(", "))]
    SeveralDisks {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The files found (image paths).
        files: Vec<String>,
    },

    /// A requested file is not in the image (or is not a regular file).
    #[error("registry {registry}: image {image} has no file /{path}{}", if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    FileNotFound {
        /// Registry host[:port].
        registry: String,
        /// `repo:tag` or `repo@digest`.
        image: String,
        /// The image path asked for.
        path: String,
        /// More about why (a dangling symlink, a directory, ...), or empty.
        detail: String,
    },

    /// A local file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The local path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}
