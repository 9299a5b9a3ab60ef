//! Errors of the launcher's helpers; each names the flag, file or socket concerned. The top-level
//! `run`/`supervised` paths still report them as text (the exit record and stderr take text).

use std::path::PathBuf;

/// Why a launcher step failed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// `--disk` without a path.
    #[error("--disk {0:?}: empty path")]
    DiskPath(String),
    /// `--disk PATH,OPTION` with an option other than readonly.
    #[error("--disk {spec:?}: unknown option {option:?} (expected readonly)")]
    DiskOption {
        /// The whole `--disk` value.
        spec: String,
        /// The option not understood.
        option: String,
    },
    /// The disk file could not be opened (the error names it).
    #[error(transparent)]
    Disk(#[from] virt_core::block::BlockError),
    /// The spec file could not be read.
    #[error("read the spec {}: {source}", path.display())]
    SpecRead {
        /// The spec file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The spec file is not a MachineSpec.
    #[error("the spec {} is not a MachineSpec: {source}", path.display())]
    SpecParse {
        /// The spec file.
        path: PathBuf,
        /// The decoder's error (names the line and column).
        source: serde_json::Error,
    },
    /// The machine's cgroup could not be made or joined.
    #[error("confinement: the machine's cgroup: {0}")]
    Cgroup(#[source] virt_core::jail::cgroup::CgroupError),
    /// The migration socket failed.
    #[error("incoming migration: {what} {}: {source}", path.display())]
    Incoming {
        /// What was being done (`binding`, `accepting on`, ...).
        what: &'static str,
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// No source launcher connected in time.
    #[error("incoming migration: no source connected to {} within {secs}s", path.display())]
    IncomingTimeout {
        /// The socket.
        path: PathBuf,
        /// How long it waited.
        secs: u64,
    },
    /// `VIRT_JAIL_SELFTEST` names no role.
    #[error("VIRT_JAIL_SELFTEST={0:?}: no such role")]
    Selftest(String),
}
