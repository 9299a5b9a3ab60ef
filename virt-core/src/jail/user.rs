//! The machine's own unprivileged user: a uid (and a gid of the same number) taken from a range
//! the node sets aside, one per launcher, so a machine broken out of its guest owns nothing but its
//! own files. The files it writes (its run directory, its writable disks, a TPM's state) are
//! chowned to it while the process is still root; the device nodes it opens are its own nodes in
//! the jail (`rootfs::Access::Device`). Switching is done before any thread starts (`setresuid`
//! is per thread in the kernel), and drops every capability with it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// The default range of launcher uids: high enough not to meet a real account or a container
/// runtime's default subordinate ids (100000-165535).
pub const DEFAULT_RANGE: UidRange = UidRange { first: 2_000_000_000, count: 65_536 };

/// A range of uids for launchers (`FIRST-LAST` on the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first uid.
    pub first: u32,
    /// How many.
    pub count: u32,
}

/// Why a range does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("uid range {input:?}: {why} (expected FIRST-LAST, e.g. 2000000000-2000065535, with FIRST > 0)")]
pub struct UidRangeError {
    /// The text given.
    pub input: String,
    /// What is wrong.
    pub why: &'static str,
}

impl std::str::FromStr for UidRange {
    type Err = UidRangeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| UidRangeError { input: s.to_string(), why };
        let (a, b) = s.split_once('-').ok_or_else(|| err("no `-`"))?;
        let first: u32 = a.trim().parse().map_err(|_| err("FIRST is not a number"))?;
        let last: u32 = b.trim().parse().map_err(|_| err("LAST is not a number"))?;
        if first == 0 {
            return Err(err("uid 0 is root"));
        }
        if last < first || last == u32::MAX {
            return Err(err("LAST must be at least FIRST and below 4294967295"));
        }
        Ok(UidRange { first, count: last - first + 1 })
    }
}

impl UidRange {
    /// The uid of the launcher whose host pid is `pid` (pids of live processes differ, so two
    /// running launchers get different uids while the range is at least the host's `pid_max`).
    pub fn pick(&self, pid: u32) -> u32 {
        self.first + pid % self.count.max(1)
    }

    /// Like [`UidRange::pick`], but a uid `in_use` says is taken (a running launcher's, when the
    /// range is smaller than `pid_max` and two pids meet) is passed over for the next one of the
    /// range, wrapping round; `None` when every uid of the range is taken.
    pub fn pick_free(&self, pid: u32, in_use: impl Fn(u32) -> bool) -> Option<u32> {
        let count = self.count.max(1);
        let start = pid % count;
        (0..count).map(|i| self.first + (start + i) % count).find(|&u| !in_use(u))
    }
}

/// Where launchers claim their uids: one lock file per uid (`<uid>`), `flock`ed for the claiming
/// launcher's life (the kernel drops the lock when the process ends, so nothing goes stale).
pub const UID_LOCK_DIR: &str = "/run/virt-launcher/uid-locks";

/// A uid this process holds: the lock on its file in the lock directory.
#[derive(Debug)]
pub struct UidClaim {
    /// The uid.
    pub uid: u32,
    lock: std::fs::File,
}

impl UidClaim {
    /// Keeps the lock until the process ends (its descriptor is left open on purpose: it
    /// survives the jail, and the kernel releases it at exit); returns the uid.
    pub fn hold_for_life(self) -> u32 {
        let _fd = std::os::fd::IntoRawFd::into_raw_fd(self.lock);
        self.uid
    }
}

impl UidRange {
    /// [`UidRange::pick_free`] made atomic across launchers started at the same time: a uid is
    /// taken only with an exclusive `flock` on `<lock_dir>/<uid>` (created if missing), which
    /// another launcher holding it refuses at once, so two launchers never get the same uid
    /// even before either has switched to it. `in_use` (uids live processes hold) is passed
    /// over as before. `None` when every uid of the range is taken.
    pub fn claim(
        &self,
        pid: u32,
        lock_dir: &Path,
        in_use: impl Fn(u32) -> bool,
    ) -> Result<Option<UidClaim>, UserError> {
        use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
        let lock_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| UserError::Lock { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(lock_dir)
            .map_err(lock_err(lock_dir))?;
        let count = self.count.max(1);
        let start = pid % count;
        for uid in (0..count).map(|i| self.first + (start + i) % count).filter(|&u| !in_use(u)) {
            let path = lock_dir.join(uid.to_string());
            let lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(lock_err(&path))?;
            use std::os::fd::AsRawFd as _;
            // SAFETY: flock on a descriptor `lock` owns.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Some(UidClaim { uid, lock }));
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(lock_err(&path)(e));
            }
        }
        Ok(None)
    }
}

/// The real and effective uids of every process on the host (from `/proc/*/status`).
pub fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut uids = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return uids };
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(line.split_whitespace().skip(1).take(2).filter_map(|u| u.parse::<u32>().ok()));
        }
    }
    uids
}

/// Who the machine runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
    /// Supplementary groups (none for a launcher).
    pub groups: Vec<u32>,
}

/// Why the switch failed; each names the call or the path.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A file could not be given to the machine's user.
    #[error("chown {path} to {uid}:{gid}: {source}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// The gid.
        gid: u32,
        /// The error.
        source: std::io::Error,
    },
    /// A uid's lock file could not be made or locked.
    #[error("claim a launcher uid: lock {path}: {source}")]
    Lock {
        /// The lock file (or its directory).
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A credential call failed.
    #[error("switch to uid {uid}: {op}: {source}")]
    Switch {
        /// The uid.
        uid: u32,
        /// The call.
        op: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
}

/// Gives `path` (and, for a directory, what is directly in it) to `id` (not following links).
pub fn chown_for(id: &Identity, path: &Path) -> Result<(), UserError> {
    let one = |p: &Path| -> Result<(), UserError> {
        let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| UserError::Chown {
            path: p.to_path_buf(),
            uid: id.uid,
            gid: id.gid,
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // SAFETY: lchown of a NUL-terminated path with plain ids.
        if unsafe { libc::lchown(c.as_ptr(), id.uid, id.gid) } != 0 {
            return Err(UserError::Chown {
                path: p.to_path_buf(),
                uid: id.uid,
                gid: id.gid,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    };
    one(path)?;
    if path.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                one(&e.path())?;
            }
        }
    }
    Ok(())
}

/// Whether anyone may read `path` (and enter it, for a directory): a read-only file the machine's
/// user can open without owning it.
pub fn world_readable(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => m.mode() & 0o005 == 0o005,
        Ok(m) => m.mode() & 0o004 != 0,
        Err(_) => false,
    }
}

/// Becomes `id` for good (real, effective and saved ids), which clears every capability. The
/// process must be single-threaded.
pub fn switch(id: &Identity) -> Result<(), UserError> {
    let err = |op| UserError::Switch { uid: id.uid, op, source: std::io::Error::last_os_error() };
    // SAFETY: setgroups reads `groups.len()` gids from a valid slice.
    if unsafe { libc::setgroups(id.groups.len(), id.groups.as_ptr()) } != 0 {
        return Err(err("setgroups"));
    }
    // SAFETY: plain ids.
    if unsafe { libc::setresgid(id.gid, id.gid, id.gid) } != 0 {
        return Err(err("setresgid"));
    }
    // SAFETY: plain ids.
    if unsafe { libc::setresuid(id.uid, id.uid, id.uid) } != 0 {
        return Err(err("setresuid"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_refuse_root() {
        assert_eq!("100-199".parse::<UidRange>().unwrap(), UidRange { first: 100, count: 100 });
        assert!("0-10".parse::<UidRange>().unwrap_err().to_string().contains("root"));
        assert!("20-10".parse::<UidRange>().is_err());
        assert!("abc".parse::<UidRange>().unwrap_err().to_string().contains("\"abc\""));
        let r = UidRange { first: 1000, count: 10 };
        assert_eq!(r.pick(3), 1003);
        assert_eq!(r.pick(13), 1003);
        assert!(DEFAULT_RANGE.pick(u32::MAX) >= DEFAULT_RANGE.first);
    }

    #[test]
    fn a_uid_in_use_is_passed_over_so_two_launchers_never_share_one() {
        let r = UidRange { first: 1000, count: 10 };
        // Pids 3 and 13 meet on 1003 in a range smaller than pid_max: the second takes 1004.
        let taken = [1003u32];
        assert_eq!(r.pick_free(3, |u| taken.contains(&u)), Some(1004));
        assert_eq!(r.pick_free(9, |u| u == 1009), Some(1000), "wraps round");
        assert_eq!(r.pick_free(5, |u| u == 1000), Some(1005));
        assert_eq!(r.pick_free(5, |_| true), None, "a full range says so");
        // Claims are exclusive (flock per open file: even within one process), in pick order,
        // and a released claim is free again.
        let dir = std::env::temp_dir().join(format!("uid-locks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let two = UidRange { first: 5000, count: 2 };
        let a = two.claim(1, &dir, |_| false).unwrap().unwrap();
        let b = two.claim(1, &dir, |_| false).unwrap().unwrap();
        assert_eq!((a.uid, b.uid), (5001, 5000));
        assert!(two.claim(1, &dir, |_| false).unwrap().is_none(), "both taken");
        drop(a);
        assert_eq!(two.claim(1, &dir, |u| u == 5000).unwrap().map(|c| c.uid), Some(5001));
        assert!(two.claim(0, &dir, |u| u == 5001).unwrap().is_none(), "in use and locked");
        let _ = std::fs::remove_dir_all(&dir);
        // This test's own uid shows among the host's.
        // SAFETY: getuid has no arguments and cannot fail.
        assert!(uids_in_use().contains(&unsafe { libc::getuid() }));
    }
}
