//! `hostDisk` volumes: an image file on the node, opened read-write by a launcher that runs as
//! root. A manifest's host path is therefore a request to touch a file on the node, and is only
//! honoured inside directories the node's administrator allows (KubeVirt gates the feature behind
//! its `HostDisk` feature gate).
//!
//! Admission refuses paths lexically ([`virt_core::model::host_disk_path_problem`]); this module is
//! the second half, run when a VMI's volumes are prepared: the path is resolved on the file system
//! (symlinks followed) and must still lie strictly inside an allowed directory, outside the
//! node's own state, and be a regular file with a single link (a hard link to `/etc/shadow` dropped
//! into an allowed directory is refused). A `DiskOrCreate` image is created there, sparse, never
//! through a symlink. The launcher is given the resolved path.

use std::fs::OpenOptions;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use virt_core::model::{host_disk_path_problem, HostDisk, HostDiskType};

use crate::format::detect::{detect_path, ImageFormat};
use crate::format::{BackingPolicy, Qcow2, Qcow2OpenOptions};

/// Why a `hostDisk` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostDiskError {
    /// Refused by the lexical policy (disabled, relative, `..`, outside the allowed directories).
    #[error("hostDisk {path}: {why}")]
    Refused {
        /// The path asked for.
        path: String,
        /// Why.
        why: String,
    },
    /// The path resolves (through symlinks) to somewhere it may not be.
    #[error("hostDisk {path} resolves to {resolved}, {why}")]
    Escapes {
        /// The path asked for.
        path: String,
        /// Where it leads.
        resolved: String,
        /// Which rule it breaks.
        why: String,
    },
    /// The path exists but is not a plain image file.
    #[error("hostDisk {path}: {why}")]
    NotAFile {
        /// The path.
        path: String,
        /// What it is instead.
        why: String,
    },
    /// A `type: Disk` image that does not exist.
    #[error("hostDisk {0} does not exist (use type DiskOrCreate with a capacity to have it created)")]
    Missing(String),
    /// A file-system call failed.
    #[error("hostDisk {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// Where `hostDisk` images may live on this node.
#[derive(Debug, Clone, Default)]
pub struct HostDiskPolicy {
    /// Allowed directories (empty: `hostDisk` disabled).
    pub dirs: Vec<PathBuf>,
    /// Directories no image may resolve into even when under an allowed one (the node's state).
    pub forbidden: Vec<PathBuf>,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HostDiskError + 'a {
    move |source| HostDiskError::Io { what, path: path.display().to_string(), source }
}

impl HostDiskPolicy {
    /// Checks (and for `DiskOrCreate`, creates) the image of `disk`, returning the resolved path
    /// the launcher opens.
    pub fn prepare(&self, disk: &HostDisk) -> Result<PathBuf, HostDiskError> {
        let path = Path::new(&disk.path);
        if let Some(why) = host_disk_path_problem(&disk.path, &self.dirs) {
            return Err(HostDiskError::Refused { path: disk.path.clone(), why });
        }
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match (disk.type_, &disk.capacity) {
                (HostDiskType::DiskOrCreate, Some(cap)) => self.create(path, cap.bytes())?,
                _ => return Err(HostDiskError::Missing(disk.path.clone())),
            },
            Err(e) => return Err(io("looking at", path)(e)),
        }
        let resolved = std::fs::canonicalize(path).map_err(io("resolving", path))?;
        self.check_resolved(path, &resolved)?;
        let meta = std::fs::metadata(&resolved).map_err(io("reading", &resolved))?;
        if !meta.is_file() {
            let kind = if meta.is_dir() { "a directory" } else { "a device, socket or pipe" };
            return Err(HostDiskError::NotAFile {
                path: disk.path.clone(),
                why: format!("is {kind}, not an image file"),
            });
        }
        if meta.nlink() > 1 {
            return Err(HostDiskError::NotAFile {
                path: disk.path.clone(),
                why: format!("has {} hard links: a hostDisk must be its own file", meta.nlink()),
            });
        }
        // A qcow2 naming a backing file would have the launcher open that file too: refused, so a
        // hostDisk never reaches past itself.
        if detect_path(&resolved).map_err(|e| HostDiskError::NotAFile {
            path: disk.path.clone(),
            why: format!("unreadable image: {e}"),
        })? == ImageFormat::Qcow2
        {
            let opts =
                Qcow2OpenOptions { read_only: true, backing: BackingPolicy::Refuse, ..Default::default() };
            Qcow2::open(&resolved, &opts).map_err(|e| HostDiskError::NotAFile {
                path: disk.path.clone(),
                why: format!("refused as a qcow2 image (a hostDisk may not have a backing file): {e}"),
            })?;
        }
        Ok(resolved)
    }

    /// `resolved` must be strictly inside an allowed directory (itself resolved) and outside every
    /// forbidden one.
    fn check_resolved(&self, path: &Path, resolved: &Path) -> Result<(), HostDiskError> {
        let escapes = |why: String| HostDiskError::Escapes {
            path: path.display().to_string(),
            resolved: resolved.display().to_string(),
            why,
        };
        let real = |d: &PathBuf| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        let inside = self.dirs.iter().map(real).any(|d| resolved.starts_with(&d) && resolved != d);
        if !inside {
            let list: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
            return Err(escapes(format!(
                "outside the directories allowed for hostDisk ({})",
                list.join(", ")
            )));
        }
        if let Some(f) = self.forbidden.iter().map(real).find(|f| resolved.starts_with(f)) {
            return Err(escapes(format!("inside the node's own state ({})", f.display())));
        }
        Ok(())
    }

    /// Creates a sparse image of `size` bytes at `path`: parent directories only where the nearest
    /// existing ancestor resolves inside an allowed directory, the file itself never through a
    /// symlink and never over an existing one.
    fn create(&self, path: &Path, size: u64) -> Result<(), HostDiskError> {
        let parent = path.parent().unwrap_or(Path::new("/"));
        let mut existing = parent;
        while std::fs::symlink_metadata(existing).is_err() {
            existing = existing.parent().unwrap_or(Path::new("/"));
        }
        let real = std::fs::canonicalize(existing).map_err(io("resolving", existing))?;
        let inside = self
            .dirs
            .iter()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))
            .any(|d| real.starts_with(&d));
        if !inside {
            return Err(HostDiskError::Escapes {
                path: path.display().to_string(),
                resolved: real.display().to_string(),
                why: "whose directory is outside the directories allowed for hostDisk".into(),
            });
        }
        std::fs::create_dir_all(parent).map_err(io("creating directory", parent))?;
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(io("creating", path))?;
        f.set_len(size).map_err(io("sizing", path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::api::Quantity;

    fn disk(path: &Path, create: Option<&str>) -> HostDisk {
        HostDisk {
            path: path.display().to_string(),
            type_: if create.is_some() { HostDiskType::DiskOrCreate } else { HostDiskType::Disk },
            capacity: create.map(|c| c.parse::<Quantity>().unwrap()),
            shared: None,
        }
    }

    #[test]
    fn only_plain_files_inside_allowed_directories_resolve() {
        let t = tempfile::tempdir().unwrap();
        let allowed = t.path().join("disks");
        let state = allowed.join("state");
        std::fs::create_dir_all(&state).unwrap();
        let outside = t.path().join("secret");
        std::fs::write(&outside, b"host secret").unwrap();
        let policy = HostDiskPolicy { dirs: vec![allowed.clone()], forbidden: vec![state.clone()] };

        // Disabled: nothing resolves.
        let off = HostDiskPolicy::default();
        let e = off.prepare(&disk(&allowed.join("a.img"), Some("1Mi"))).unwrap_err();
        assert!(e.to_string().contains("hostDisk is not enabled on this node"), "{e}");

        // DiskOrCreate makes a sparse file (and its directory) inside.
        let made = policy.prepare(&disk(&allowed.join("vm1/a.img"), Some("1Mi"))).unwrap();
        assert_eq!(std::fs::metadata(&made).unwrap().len(), 1 << 20);
        assert!(made.starts_with(std::fs::canonicalize(&allowed).unwrap()));
        // An existing file is used as it is.
        assert_eq!(policy.prepare(&disk(&allowed.join("vm1/a.img"), None)).unwrap(), made);

        // Lexically outside, or through `..`.
        let e = policy.prepare(&disk(&outside, None)).unwrap_err();
        assert!(matches!(e, HostDiskError::Refused { .. }), "{e}");
        let dotdot = PathBuf::from(format!("{}/../secret", allowed.display()));
        assert!(matches!(policy.prepare(&disk(&dotdot, None)), Err(HostDiskError::Refused { .. })));

        // A symlink inside pointing outside; a directory symlink to create through.
        std::os::unix::fs::symlink(&outside, allowed.join("link.img")).unwrap();
        let e = policy.prepare(&disk(&allowed.join("link.img"), None)).unwrap_err();
        assert!(e.to_string().contains("outside the directories allowed for hostDisk"), "{e}");
        std::os::unix::fs::symlink(t.path(), allowed.join("up")).unwrap();
        let e = policy.prepare(&disk(&allowed.join("up/new.img"), Some("1Mi"))).unwrap_err();
        assert!(matches!(e, HostDiskError::Escapes { .. }), "{e}");
        assert!(!t.path().join("new.img").exists(), "nothing created outside");
        let e = policy.prepare(&disk(&allowed.join("up/secret"), None)).unwrap_err();
        assert!(matches!(e, HostDiskError::Escapes { .. }), "{e}");

        // The node's own state, a directory, a device, a hard link to a file outside.
        std::fs::write(state.join("node.redb"), b"db").unwrap();
        let e = policy.prepare(&disk(&state.join("node.redb"), None)).unwrap_err();
        assert!(e.to_string().contains("inside the node's own state"), "{e}");
        std::fs::create_dir(allowed.join("dir.img")).unwrap();
        let e = policy.prepare(&disk(&allowed.join("dir.img"), None)).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        std::os::unix::fs::symlink("/dev/null", allowed.join("null.img")).unwrap();
        assert!(policy.prepare(&disk(&allowed.join("null.img"), None)).is_err());
        std::fs::hard_link(&outside, allowed.join("hard.img")).unwrap();
        let e = policy.prepare(&disk(&allowed.join("hard.img"), None)).unwrap_err();
        assert!(e.to_string().contains("2 hard links"), "{e}");

        // A qcow2 whose backing file is outside (qemu-img, as a user would make it).
        let q = allowed.join("backed.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&outside)
            .arg(&q)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
        let e = policy.prepare(&disk(&q, None)).unwrap_err();
        assert!(e.to_string().contains("may not have a backing file"), "{e}");
        let plain = allowed.join("plain.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&plain)
            .arg("1M")
            .status()
            .unwrap();
        assert!(st.success());
        assert!(policy.prepare(&disk(&plain, None)).is_ok());

        // Missing Disk.
        let e = policy.prepare(&disk(&allowed.join("none.img"), None)).unwrap_err();
        assert!(matches!(e, HostDiskError::Missing(_)), "{e}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"host secret");
    }
}
