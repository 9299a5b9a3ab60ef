//! The volume seam: create, clone, snapshot, resize, delete and open disks in a storage pool.
//!
//! [`VolumeProvider`] is what the lifecycle, the importers and the golden-image controller need from
//! storage; an embedder or another backend (a cluster storage class, a SAN) implements it. [`DirPool`]
//! is the local implementation on a directory: raw and qcow2 files, with copy-on-write clones through
//! reflinks where the file system has them (XFS, btrfs), qcow2 overlays over the source otherwise, and
//! a host-assisted sparse copy as the last resort. Every clone says which strategy it used and, when
//! it fell back, why — as CDI's `cloneFallbackReason` does.

mod dir;
pub mod reflink;

use std::path::PathBuf;

pub use dir::DirPool;

use crate::format::{DiskImage, FormatError};

/// A volume's identity: a namespace and a name, both Kubernetes DNS-1123 labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeId {
    /// Namespace (for example `os-images` for golden images).
    pub namespace: String,
    /// Name within the namespace.
    pub name: String,
}

impl VolumeId {
    /// A volume id; the parts are checked when the id is used.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }

    /// Checks both parts are DNS-1123 labels (so they are safe as file names too).
    pub fn validate(&self) -> Result<(), VolumeError> {
        for (what, v) in [("namespace", &self.namespace), ("name", &self.name)] {
            let ok = !v.is_empty()
                && v.len() <= 63
                && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !v.starts_with('-')
                && !v.ends_with('-');
            if !ok {
                return Err(VolumeError::InvalidName(format!(
                    "{what} {v:?} must be 1-63 lowercase letters, digits or '-', starting and ending with \
                     a letter or digit"
                )));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// On-disk format of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeFormat {
    /// Byte for byte the guest's disk.
    Raw,
    /// qcow2 v3 (possibly an overlay over another volume).
    Qcow2,
}

impl VolumeFormat {
    fn ext(self) -> &'static str {
        match self {
            Self::Raw => "img",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// A volume as the pool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Identity.
    pub id: VolumeId,
    /// The file holding it.
    pub path: PathBuf,
    /// On-disk format.
    pub format: VolumeFormat,
    /// Size of the guest's disk in bytes.
    pub size: u64,
    /// Bytes the file occupies on the host (less than `size` for sparse and CoW volumes).
    pub allocated: u64,
    /// The volume this one is an overlay of, if any.
    pub backing: Option<VolumeId>,
}

/// How a clone was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneStrategy {
    /// The file system shares the source's blocks copy-on-write (XFS, btrfs). Instant, independent.
    Reflink,
    /// A qcow2 overlay whose backing file is the source. Instant; the source must outlive the clone.
    Overlay,
    /// The host copies the data, reading and writing only the allocated parts.
    HostAssisted,
}

impl std::fmt::Display for CloneStrategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reflink => "reflink",
            Self::Overlay => "overlay",
            Self::HostAssisted => "host-assisted",
        })
    }
}

/// What a clone did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneOutcome {
    /// The new volume.
    pub volume: Volume,
    /// The strategy used.
    pub strategy: CloneStrategy,
    /// Why a better strategy was not used (CDI's `cloneFallbackReason`), if one was not.
    pub fallback_reason: Option<String>,
    /// Bytes of data the host copied (0 for reflinks and overlays).
    pub bytes_copied: u64,
}

/// What a pool supports, as CDI's StorageProfile says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageProfile {
    /// Whether reflink clones work, or why not.
    pub reflink: Result<(), reflink::ReflinkError>,
    /// Strategies in the order the pool tries them.
    pub clone_strategies: Vec<CloneStrategy>,
    /// Format new volumes get unless asked otherwise.
    pub default_format: VolumeFormat,
}

/// Errors of volume providers; each names the volume and what failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A namespace or name is not a DNS-1123 label.
    #[error("invalid volume id: {0}")]
    InvalidName(String),
    /// The volume does not exist.
    #[error("volume {0} not found")]
    NotFound(VolumeId),
    /// A volume with that id exists.
    #[error("volume {0} already exists")]
    AlreadyExists(VolumeId),
    /// The volume is still the backing file of others.
    #[error("volume {id} cannot be deleted: it backs {users}")]
    InUse {
        /// The volume.
        id: VolumeId,
        /// The overlays that need it.
        users: String,
    },
    /// A size is invalid (zero, not a multiple of 512, or a shrink).
    #[error("volume {id}: {reason}")]
    BadSize {
        /// The volume.
        id: VolumeId,
        /// What is wrong.
        reason: String,
    },
    /// The requested clone strategy cannot be used.
    #[error("cannot clone {src} with strategy {strategy}: {reason}")]
    Strategy {
        /// Source volume.
        src: VolumeId,
        /// The strategy asked for.
        strategy: CloneStrategy,
        /// Why it cannot be used.
        reason: String,
    },
    /// A disk-format operation failed.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// A file operation failed.
    #[error("volume {id}: {op} {path}: {source}")]
    Io {
        /// The volume.
        id: VolumeId,
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Options of a clone.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloneOptions {
    /// Use only this strategy (fail if it is impossible); `None` picks the best that works.
    pub strategy: Option<CloneStrategy>,
}

/// The storage seam: what the rest of the system needs from a pool of volumes.
pub trait VolumeProvider: Send + Sync {
    /// What the pool supports.
    fn profile(&self) -> StorageProfile;
    /// Creates an empty volume of `size` bytes.
    fn create_blank(&self, id: &VolumeId, size: u64, format: VolumeFormat) -> Result<Volume, VolumeError>;
    /// Clones `src` into a new volume `dst`.
    fn clone_volume(
        &self,
        src: &VolumeId,
        dst: &VolumeId,
        opts: CloneOptions,
    ) -> Result<CloneOutcome, VolumeError>;
    /// Takes a point-in-time copy of `id` as `snapshot` (same namespace, snapshots listed apart).
    fn snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<CloneOutcome, VolumeError>;
    /// Restores a new volume `dst` from snapshot `snapshot` of `src`. The new volume does not
    /// depend on the snapshot (a reflink where the file system shares blocks, else a copy of the
    /// data), so the snapshot can be deleted at any time.
    fn restore(&self, src: &VolumeId, snapshot: &str, dst: &VolumeId) -> Result<CloneOutcome, VolumeError>;
    /// Snapshot `snapshot` of `id` (its `id` is `NAME@SNAPSHOT`), if it exists.
    fn get_snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<Option<Volume>, VolumeError>;
    /// Deletes snapshot `snapshot` of `id` (the volume itself need not exist any more).
    fn delete_snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<(), VolumeError>;
    /// Grows a volume to `new_size` bytes.
    fn resize(&self, id: &VolumeId, new_size: u64) -> Result<Volume, VolumeError>;
    /// Deletes a volume (refused while overlays depend on it).
    fn delete(&self, id: &VolumeId) -> Result<(), VolumeError>;
    /// The volume, if it exists.
    fn get(&self, id: &VolumeId) -> Result<Option<Volume>, VolumeError>;
    /// All volumes of a namespace.
    fn list(&self, namespace: &str) -> Result<Vec<Volume>, VolumeError>;
    /// Opens the volume as a disk for the VMM (virt-core's `BlockBackend`).
    fn open(&self, id: &VolumeId, read_only: bool) -> Result<Box<dyn DiskImage>, VolumeError>;
    /// Where an importer writes a new volume's file before [`VolumeProvider::commit_import`] makes it
    /// visible: a half-written volume never shows up as a volume.
    fn import_path(&self, id: &VolumeId, format: VolumeFormat) -> Result<PathBuf, VolumeError>;
    /// Makes a fully written import visible as volume `id` (atomically).
    fn commit_import(&self, id: &VolumeId, format: VolumeFormat) -> Result<Volume, VolumeError>;
    /// Discards a failed or interrupted import.
    fn abort_import(&self, id: &VolumeId, format: VolumeFormat) -> Result<(), VolumeError>;
}
