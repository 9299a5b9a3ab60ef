//! Moving a running machine into another process or VMM: the backend-neutral seam the launcher's
//! control socket and the node's migration reconciler drive (docs/migration.md).
//!
//! The source calls [`Machine::migrate_out`](super::Machine::migrate_out) with a connected stream;
//! the destination is started by
//! [`MachineBackend::start_incoming`](super::MachineBackend::start_incoming) on the other end of it.
//! The native backend speaks `vmm::migration`'s protocol over the stream; on any failure before the
//! destination is ready the source keeps (or resumes) running, and the destination runs only after
//! the source stopped for good: a machine never runs in two places.

use std::io::{Read, Write};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A byte stream a migration runs over (a unix socket or a TCP connection).
pub trait MigrationStream: Read + Write + Send {}
impl<T: Read + Write + Send> MigrationStream for T {}

/// How the source migrates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrateOptions {
    /// The longest the guest may be paused, in milliseconds (QEMU's default budget is 300).
    #[serde(default = "default_downtime_ms")]
    pub downtime_ms: u64,
    /// At most this many bytes per second while the guest runs (KubeVirt's
    /// `bandwidthPerMigration`; QEMU's `max-bandwidth`); `None`: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Fail the migration (the source runs on) when it has not completed after this many seconds
    /// (KubeVirt's `completionTimeoutPerGiB` times the guest's memory); `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_timeout_secs: Option<u64>,
    /// Throttle the guest's vCPUs when pre-copy does not converge (KubeVirt's
    /// `allowAutoConverge`; QEMU's `auto-converge` capability, the native VMM's vCPU throttle).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_converge: bool,
    /// Abort the migration (the source runs on) when the data left to send has not gone below its
    /// lowest for this many seconds (KubeVirt's `progressTimeout`); `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout_secs: Option<u64>,
    /// At the completion timeout, switch to post-copy instead of failing: the guest runs on the
    /// destination, which fetches the pages it lacks from the source (KubeVirt's `allowPostCopy`;
    /// QEMU's `postcopy-ram`). The destination must have been started ready for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub post_copy: bool,
    /// At the completion timeout (and without post-copy), pause the guest and finish instead of
    /// failing (KubeVirt's `allowWorkloadDisruption`); the rest goes out unpaced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause_to_complete: bool,
}

/// What a backend's migrations can do beyond pre-copy with a bandwidth limit and a completion
/// timeout (which every backend honours), by backend name (`native`, `qemu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MigrationFeatures {
    /// [`MigrateOptions::auto_converge`] throttles the guest.
    pub auto_converge: bool,
    /// Switching to post-copy (KubeVirt's `allowPostCopy`).
    pub post_copy: bool,
    /// Pausing the guest to finish past the timeout (KubeVirt's `allowWorkloadDisruption`).
    pub pause_to_complete: bool,
}

/// What the backend named `backend` can do (nothing extra for an unknown name): auto-converge
/// (QEMU's capability, the native VMM's vCPU throttle) and pausing to complete by both; post-copy
/// by QEMU only (the native VMM has no post-copy yet).
pub fn migration_features(backend: &str) -> MigrationFeatures {
    let known = matches!(backend, "qemu" | "native");
    MigrationFeatures { auto_converge: known, post_copy: backend == "qemu", pause_to_complete: known }
}

fn default_downtime_ms() -> u64 {
    300
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            downtime_ms: default_downtime_ms(),
            bandwidth_bytes_per_sec: None,
            completion_timeout_secs: None,
            auto_converge: false,
            progress_timeout_secs: None,
            post_copy: false,
            pause_to_complete: false,
        }
    }
}

impl MigrateOptions {
    /// The downtime budget as a duration.
    pub fn downtime(&self) -> Duration {
        Duration::from_millis(self.downtime_ms)
    }

    /// The completion timeout as a duration.
    pub fn completion_timeout(&self) -> Option<Duration> {
        self.completion_timeout_secs.map(Duration::from_secs)
    }

    /// The progress timeout as a duration (`None` for none or zero).
    pub fn progress_timeout(&self) -> Option<Duration> {
        self.progress_timeout_secs.filter(|s| *s > 0).map(Duration::from_secs)
    }
}

/// What a completed migration measured on the source, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationReport {
    /// From the first message to the destination running.
    pub total_us: u64,
    /// From the source's pause to the destination told to run.
    pub downtime_us: u64,
    /// Of the downtime: saving device, VM and vCPU state.
    pub save_state_us: u64,
    /// Of the downtime: the final dirty pass.
    pub final_pass_us: u64,
    /// Of the downtime: the destination restoring the state.
    pub restore_us: u64,
    /// Dirty passes before the pause.
    pub passes: u32,
    /// Bytes of guest memory sent.
    pub bytes_sent: u64,
    /// The vCPU throttle auto-converge had reached when the source paused, in percent (QEMU's
    /// `cpu-throttle-percentage`; 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cpu_throttle_percentage: u8,
    /// How it ended, with KubeVirt's `migrationState.mode` names: `PostCopy` (switched to
    /// post-copy), `Paused` (the guest paused to complete); `None`: pre-copy to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// [`MigrationReport::mode`] of a migration that switched to post-copy.
pub const MODE_POST_COPY: &str = "PostCopy";
/// [`MigrationReport::mode`] of a migration that paused the guest to complete.
pub const MODE_PAUSED: &str = "Paused";

fn is_zero(v: &u8) -> bool {
    *v == 0
}

impl From<&crate::vmm::migration::MigrationStats> for MigrationReport {
    fn from(s: &crate::vmm::migration::MigrationStats) -> Self {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Self {
            total_us: us(s.total),
            downtime_us: us(s.downtime),
            save_state_us: us(s.save_state),
            final_pass_us: us(s.final_pass),
            restore_us: us(s.restore),
            passes: s.passes,
            bytes_sent: s.bytes_sent,
            cpu_throttle_percentage: s.throttle_percent,
            mode: s.paused_to_complete.then(|| MODE_PAUSED.to_string()),
        }
    }
}
