//! The launcher's network namespace (the contract with the pod network, docs/confinement.md):
//!
//! - a namespace is given (`JailOptions::netns`, the launcher's `--netns PATH`, e.g.
//!   `/run/netns/<pod>`): the process joins it (`setns`) before any tap is opened, so the taps the
//!   pod network made there are the ones the machine gets;
//! - none is given and the machine has no interfaces: a fresh, empty namespace (`unshare`), so the
//!   VMM cannot reach any network even with a call the filters miss;
//! - none is given and the machine has interfaces: the node's namespace (legacy taps by name).
//!
//! `setns` and `unshare` act on the calling thread only, so this runs before the process starts any
//! thread (threads started afterwards inherit the namespace). Both need `CAP_SYS_ADMIN`.

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

/// Where the machine's network lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetNs {
    /// Join the namespace at this path (a bind mount such as `/run/netns/<name>`, or
    /// `/proc/<pid>/ns/net`).
    Join(PathBuf),
    /// A new namespace with nothing in it but a loopback that stays down.
    Fresh,
    /// Stay in the node's namespace (legacy taps by name).
    Host,
}

impl NetNs {
    /// The contract: the given namespace, else a fresh one when the machine has no interfaces,
    /// else the node's.
    pub fn plan(netns: Option<&Path>, has_interfaces: bool) -> NetNs {
        match netns {
            Some(p) => NetNs::Join(p.to_path_buf()),
            None if !has_interfaces => NetNs::Fresh,
            None => NetNs::Host,
        }
    }
}

/// Why the network namespace could not be entered.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    /// The namespace file could not be opened.
    #[error("open the network namespace {path}: {source}")]
    Open {
        /// The path given.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `setns` refused it (not a network namespace, or no `CAP_SYS_ADMIN`).
    #[error("join the network namespace {path} (setns): {source}")]
    Join {
        /// The path given.
        path: PathBuf,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// `unshare(CLONE_NEWNET)` failed (no `CAP_SYS_ADMIN`).
    #[error("create a network namespace (unshare CLONE_NEWNET): {0}")]
    Unshare(std::io::Error),
}

/// Moves the calling thread (and the threads it starts later) into the planned namespace.
pub fn enter(plan: &NetNs) -> Result<(), NetNsError> {
    match plan {
        NetNs::Host => Ok(()),
        NetNs::Fresh => {
            // SAFETY: geteuid has no arguments and cannot fail.
            if unsafe { libc::geteuid() } != 0 {
                // An unprivileged launcher (direct mode run by a user) cannot make namespaces; it
                // has no capability to reach a network with either (docs/confinement.md).
                log::info!("not root: the launcher stays in its network namespace");
                return Ok(());
            }
            // SAFETY: unshare takes flags only.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(NetNsError::Unshare(std::io::Error::last_os_error()));
            }
            Ok(())
        }
        NetNs::Join(path) => {
            let f = std::fs::File::open(path)
                .map_err(|source| NetNsError::Open { path: path.clone(), source })?;
            // SAFETY: setns takes a descriptor this function holds open and a namespace type.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetNsError::Join { path: path.clone(), source: std::io::Error::last_os_error() });
            }
            Ok(())
        }
    }
}

/// The inode of the network namespace of `pid` (`/proc/<pid>/ns/net`), to tell namespaces apart.
pub fn inode_of(pid: u32) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_follows_the_contract() {
        let p = Path::new("/run/netns/pod");
        assert_eq!(NetNs::plan(Some(p), true), NetNs::Join(p.into()));
        assert_eq!(NetNs::plan(Some(p), false), NetNs::Join(p.into()));
        assert_eq!(NetNs::plan(None, false), NetNs::Fresh);
        assert_eq!(NetNs::plan(None, true), NetNs::Host);
    }

    #[test]
    fn a_missing_namespace_is_an_error_naming_it() {
        let e = enter(&NetNs::Join("/nonexistent/netns/x".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns/x"), "{e}");
    }
}
