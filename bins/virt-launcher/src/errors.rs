//! The launcher's one error type: each variant names the flag, file, socket or step concerned, and
//! keeps the library error it wraps as its source. `main` prints it; a supervised launcher also
//! writes it into the run directory's exit record.

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
    /// Direct mode without `--kernel` (and no `--spec`).
    #[error("--kernel or --spec is required")]
    NoKernel,
    /// A file named on the command line does not exist.
    #[error("{}: no such file", .0.display())]
    NoSuchFile(PathBuf),
    /// The kernel could not be prepared (decompressed into the cache).
    #[error(transparent)]
    Boot(#[from] virt_core::vmm::boot::BootError),
    /// The KVM device could not be opened or lacks a capability.
    #[error(transparent)]
    Hypervisor(#[from] virt_core::hypervisor::HypervisorError),
    /// The microVM could not be built or started.
    #[error(transparent)]
    Vmm(#[from] virt_core::vmm::VmmError),
    /// No engine runs the spec.
    #[error(transparent)]
    Select(#[from] virt_core::machine::SelectError),
    /// The machine could not be started.
    #[error(transparent)]
    Machine(#[from] virt_core::machine::MachineError),
    /// The confinement could not be entered.
    #[error(transparent)]
    Jail(#[from] virt_core::jail::JailError),
    /// The machine's user could not be handed its files.
    #[error("confinement: {0}")]
    HandOver(#[from] virt_core::jail::user::UserError),
    /// The run directory could not be made.
    #[error("create the run directory {}: {source}", path.display())]
    RunDir {
        /// The run directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// SIGTERM/SIGINT handling could not be set up.
    #[error("{what}: {source}")]
    Signals {
        /// The step (`block SIGTERM`, `spawn the signal thread`).
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}
