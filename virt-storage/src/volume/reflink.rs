//! Copy-on-write file clones (`FICLONE`), as XFS (reflink=1) and btrfs offer them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// `FICLONE` = `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` (an open, empty file) share all of `src`'s blocks. Fails with `EOPNOTSUPP`/`EXDEV`/
/// `EINVAL` where the file system has no reflinks.
pub fn reflink(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument and touches no memory of
    // ours; both descriptors are open files owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Why reflink clones do not work in a directory; each names the directory. `Clone` and `Eq` (the
/// I/O error kept as its text) because a [`StorageProfile`](super::StorageProfile) carries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReflinkError {
    /// The probe's `FICLONE` failed: the file system has no reflinks (or not between these files).
    #[error("the file system of {} does not support reflinks (FICLONE: {reason})", dir.display())]
    Unsupported {
        /// The directory probed.
        dir: PathBuf,
        /// The OS error number, if there was one (`EOPNOTSUPP`, `EXDEV`, `EINVAL`, ...).
        errno: Option<i32>,
        /// The I/O error, as text.
        reason: String,
    },
    /// The probe could not make its test files, so reflinks could not be tried.
    #[error("cannot probe reflinks in {}: {op} {}: {reason}", dir.display(), file.display())]
    Probe {
        /// The directory probed.
        dir: PathBuf,
        /// What the probe was doing (`writing`, `opening`, `creating`).
        op: &'static str,
        /// The probe file it was working on.
        file: PathBuf,
        /// The I/O error, as text.
        reason: String,
    },
}

/// Whether files in `dir` can be cloned with reflinks; on failure, the reason.
pub fn probe(dir: &Path) -> Result<(), ReflinkError> {
    let a = dir.join(format!(".reflink-probe-{}-a", std::process::id()));
    let b = dir.join(format!(".reflink-probe-{}-b", std::process::id()));
    let r = try_clone(dir, &a, &b);
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    r
}

fn try_clone(dir: &Path, a: &Path, b: &Path) -> Result<(), ReflinkError> {
    let probe_err = |op: &'static str, file: &Path| {
        let dir = dir.to_path_buf();
        let file = file.to_path_buf();
        move |e: std::io::Error| ReflinkError::Probe { dir, op, file, reason: e.to_string() }
    };
    std::fs::write(a, [0x5au8; 4096]).map_err(probe_err("writing", a))?;
    let src = File::open(a).map_err(probe_err("opening", a))?;
    let dst = File::create(b).map_err(probe_err("creating", b))?;
    reflink(&src, &dst).map_err(|e| ReflinkError::Unsupported {
        dir: dir.to_path_buf(),
        errno: e.raw_os_error(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_is_a_probe_failure_naming_it() {
        let dir = Path::new("/nonexistent/virt-rs-reflink-probe");
        let e = probe(dir).unwrap_err();
        match &e {
            ReflinkError::Probe { dir: d, op: "writing", file, .. } => {
                assert_eq!(d, dir);
                assert!(file.starts_with(dir), "{file:?}");
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(
            msg.starts_with("cannot probe reflinks in /nonexistent/virt-rs-reflink-probe: writing "),
            "{msg}"
        );
    }

    #[test]
    fn a_file_system_without_reflinks_is_unsupported_naming_the_directory() {
        // /dev/shm is tmpfs, which has no FICLONE.
        let dir = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (a tmpfs) exists on every Linux host");
        let e = probe(dir.path()).unwrap_err();
        assert!(
            matches!(&e, ReflinkError::Unsupported { dir: d, errno: Some(_), .. } if d == dir.path()),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "the file system of {} does not support reflinks (FICLONE: ",
                dir.path().display()
            )),
            "{msg}"
        );
    }
}
