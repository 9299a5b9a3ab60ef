//! Live migration of a QEMU machine with QEMU's own machinery, behind the same seam as the native
//! VMM ([`Machine::migrate_out`](crate::machine::Machine::migrate_out),
//! [`MachineBackend::start_incoming`](crate::machine::MachineBackend::start_incoming)): the stream's
//! descriptor is handed to QEMU over QMP (`getfd`, `SCM_RIGHTS`), the source runs
//! `migrate uri=fd:...` and follows `query-migrate`; the destination was started with
//! `-incoming defer` and `-S`, runs `migrate-incoming uri=fd:...`, and is told to run (`cont`) only
//! when its side completed, after the source stopped sending (docs/migration.md).
//!
//! Past the completion timeout the source switches to post-copy (`migrate-start-postcopy`, when
//! asked and the destination took `postcopy-ram`: it runs the guest at `postcopy-active` and faults
//! the rest in) or pauses the guest to complete (`stop`, the bandwidth limit lifted), or else
//! cancels.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::qmp::{QmpClient, QmpError, QmpEvent};
use crate::machine::migrate::{MigrateOptions, MigrationReport, MODE_PAUSED, MODE_POST_COPY};
use crate::vmm::migration::{ProgressWatch, Stuck};

/// The name the migration stream's descriptor gets in QEMU (`getfd`).
const FD_NAME: &str = "virt-migrate";

/// QEMU's `max-bandwidth` for "as fast as it goes" (its 0 is a default of 128 MiB/s).
const UNLIMITED: u64 = i64::MAX as u64;

/// How long a migration loop waits for QEMU's next `MIGRATION` event before it looks anyway: the
/// source also watches its deadlines and progress, the destination only a lost event.
const SOURCE_LOOK: Duration = Duration::from_millis(50);
const DESTINATION_LOOK: Duration = Duration::from_millis(100);

/// QEMU's `MIGRATION` and `MIGRATION_PASS` events (the `events` capability, set on both sides),
/// recorded by the QMP reader; the migration loops wait on them instead of polling `query-migrate`
/// every few hundred microseconds (on the destination QMP commands share the main loop with the
/// incoming stream), and see a status change the moment QEMU announces it.
#[derive(Debug, Default)]
pub(super) struct MigrationEvents {
    seen: Mutex<Seen>,
    changed: Condvar,
}

/// What the events said so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    /// Events recorded (a sequence number to wait past).
    pub seq: u64,
    /// The last `MIGRATION` status.
    pub status: Option<String>,
    /// The last `MIGRATION_PASS` number.
    pub pass: u64,
}

impl MigrationEvents {
    /// Records a migration event (others are ignored) and wakes the waiters.
    pub(super) fn record(&self, ev: &QmpEvent) {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            QmpEvent::Migration { status } => s.status = Some(status.clone()),
            QmpEvent::MigrationPass { pass } => s.pass = *pass,
            _ => return,
        }
        s.seq += 1;
        self.changed.notify_all();
    }

    /// What was seen so far.
    pub(super) fn seen(&self) -> Seen {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until an event after `seq` arrives or `timeout` passes.
    pub(super) fn wait_past(&self, seq: u64, timeout: Duration) {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.changed.wait_timeout_while(s, timeout, |s| s.seq <= seq);
    }
}

/// Turns QEMU's migration events on (`MIGRATION`, `MIGRATION_PASS`).
fn events_on(q: &QmpClient) -> Result<(), QemuMigrationError> {
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [{ "capability": "events", "state": true }] })),
    )
    .map_err(qmp("migrate-set-capabilities"))?;
    Ok(())
}

/// Why a QEMU migration did not complete.
#[derive(Debug, thiserror::Error)]
pub enum QemuMigrationError {
    /// A QMP command failed.
    #[error("QMP {command}: {source}")]
    Qmp {
        /// The command.
        command: &'static str,
        /// What QMP said.
        #[source]
        source: QmpError,
    },
    /// QEMU reported the migration failed (its `error-desc`).
    #[error("QEMU's migration failed: {0}")]
    Failed(String),
    /// It was cancelled (`migrate_cancel`).
    #[error("cancelled: the migration was aborted and the source runs on")]
    Cancelled,
    /// `query-migrate` answered something unexpected.
    #[error("query-migrate answered {0}, which has no status")]
    Shape(String),
    /// The source ran past its completion timeout and cancelled.
    #[error("the migration did not complete within {0:?}: cancelled, the source runs on")]
    CompletionTimeout(Duration),
    /// `ram.remaining` did not go below its lowest for longer than the progress timeout
    /// (KubeVirt's `progressTimeout`, its message): cancelled, the source runs on.
    #[error("Live migration stuck for {secs} sec and has been aborted ({1} bytes remaining)", secs = .0.as_secs())]
    Stuck(Duration, u64),
    /// The stream broke after the switch to post-copy: the guest's memory is split between the
    /// two sides, so neither can run it (QEMU's `postcopy-paused`; it is not resumed here).
    #[error("post-copy lost its stream ({0}): the guest is paused on the destination and cannot run here")]
    PostCopyBroken(String),
    /// The destination did not complete in time.
    #[error("the incoming migration did not complete within {0:?} (last status {1})")]
    Timeout(Duration, String),
}

fn qmp(command: &'static str) -> impl Fn(QmpError) -> QemuMigrationError {
    move |source| QemuMigrationError::Qmp { command, source }
}

/// `query-migrate`'s status, and the whole answer.
fn query(q: &QmpClient) -> Result<(String, Value), QemuMigrationError> {
    let v = q.execute("query-migrate", None).map_err(qmp("query-migrate"))?;
    let status = v.get("status").and_then(Value::as_str).unwrap_or("none").to_string();
    Ok((status, v))
}

/// Whether a migration is under way on this QEMU (not none/completed/failed/cancelled), by its
/// status (`postcopy-...` once it switched to post-copy: too late to cancel).
pub(super) fn active(q: &QmpClient) -> Result<Option<String>, QemuMigrationError> {
    let (status, _) = query(q)?;
    Ok(match status.as_str() {
        "none" | "completed" | "failed" | "cancelled" => None,
        _ => Some(status),
    })
}

/// The report of a completed `query-migrate` answer (QEMU counts milliseconds).
pub fn report_of(v: &Value) -> MigrationReport {
    let ms = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0).saturating_mul(1000);
    let ram = |k: &str| v.get("ram").and_then(|r| r.get(k)).and_then(Value::as_u64).unwrap_or(0);
    MigrationReport {
        total_us: ms("total-time"),
        downtime_us: ms("downtime"),
        passes: u32::try_from(ram("dirty-sync-count")).unwrap_or(u32::MAX),
        bytes_sent: ram("transferred"),
        ..Default::default()
    }
}

/// `query-migrate`'s `ram.remaining` (libvirt's DataRemaining for memory), if it has one.
fn remaining(v: &Value) -> Option<u64> {
    v.get("ram").and_then(|r| r.get("remaining")).and_then(Value::as_u64)
}

/// The source's side: sends the VM down `stream` and waits for QEMU's migration to end. On
/// success QEMU has stopped the guest here (`postmigrate`); on failure or cancel QEMU resumes it.
pub(super) fn send(
    q: &QmpClient,
    events: &MigrationEvents,
    stream: UnixStream,
    opts: &MigrateOptions,
) -> Result<MigrationReport, QemuMigrationError> {
    events_on(q)?;
    // QEMU's max-bandwidth 0 is its default 128 MiB/s, not unlimited: without a limit, ask for the
    // most it takes.
    let bandwidth = opts.bandwidth_bytes_per_sec.filter(|b| *b > 0).unwrap_or(UNLIMITED);
    q.execute(
        "migrate-set-parameters",
        Some(json!({ "downtime-limit": opts.downtime_ms, "max-bandwidth": bandwidth.min(UNLIMITED) })),
    )
    .map_err(qmp("migrate-set-parameters"))?;
    // KubeVirt's allowAutoConverge: QEMU throttles the vCPUs while pre-copy does not converge;
    // allowPostCopy: QEMU may switch to post-copy (the destination took the capability too). Set
    // either way: a QEMU migrated before keeps what the last migration asked for.
    q.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": [
            { "capability": "auto-converge", "state": opts.auto_converge },
            { "capability": "postcopy-ram", "state": opts.post_copy },
        ] })),
    )
    .map_err(qmp("migrate-set-capabilities"))?;
    q.execute_with_fd("getfd", Some(json!({ "fdname": FD_NAME })), stream.as_raw_fd())
        .map_err(qmp("getfd"))?;
    // QEMU holds its own copy now; ours would keep the destination from seeing the end.
    drop(stream);
    q.execute("migrate", Some(json!({ "uri": format!("fd:{FD_NAME}") }))).map_err(qmp("migrate"))?;
    let deadline = opts.completion_timeout().map(|t| (Instant::now() + t, t));
    let mut progress = ProgressWatch::new(opts.progress_timeout().unwrap_or(Duration::ZERO), Instant::now());
    // QEMU shows `cpu-throttle-percentage` only while it throttles: keep the last one seen.
    let mut throttle = 0u8;
    // Past the completion timeout: post-copy or paused (KubeVirt's migrationState.mode).
    let mut mode: Option<&'static str> = None;
    // When the guest was paused to complete: its downtime starts there, not at QEMU's own stop.
    let mut paused_at: Option<Instant> = None;
    loop {
        // Read before the query: an event arriving between the two ends the wait at once.
        let seq = events.seen().seq;
        let (status, v) = query(q)?;
        if let Some(p) = v.get("cpu-throttle-percentage").and_then(Value::as_u64) {
            throttle = u8::try_from(p).unwrap_or(u8::MAX);
        }
        let copying = matches!(status.as_str(), "setup" | "active") && mode.is_none();
        if let Some((at, limit)) = deadline {
            if Instant::now() > at && copying {
                mode = Some(past_the_deadline(q, opts, limit)?);
                paused_at = Some(Instant::now()).filter(|_| mode == Some(MODE_PAUSED));
                continue;
            }
        }
        if let Some(remaining) = remaining(&v).filter(|_| status == "active" && mode.is_none()) {
            if let Err(Stuck(idle)) = progress.observe(remaining, Instant::now()) {
                // As KubeVirt past progressTimeout: abort; QEMU resumes the source.
                q.execute("migrate_cancel", None).map_err(qmp("migrate_cancel"))?;
                return Err(QemuMigrationError::Stuck(idle, remaining));
            }
        }
        match status.as_str() {
            "completed" => {
                let report = report_of(&v);
                let paused_us =
                    paused_at.map_or(0, |t| u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                return Ok(MigrationReport {
                    cpu_throttle_percentage: throttle,
                    mode: mode.map(str::to_string),
                    downtime_us: report.downtime_us.max(paused_us),
                    ..report
                });
            }
            "failed" => {
                let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(QemuMigrationError::Failed(why.to_string()));
            }
            "cancelled" => return Err(QemuMigrationError::Cancelled),
            "postcopy-paused" => {
                let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(QemuMigrationError::PostCopyBroken(why.to_string()));
            }
            "none" => return Err(QemuMigrationError::Shape(v.to_string())),
            _ => events.wait_past(seq, SOURCE_LOOK),
        }
    }
}

/// What the source does at the completion timeout: switch to post-copy when allowed
/// (`allowPostCopy`), else pause the guest and finish at full speed (`allowWorkloadDisruption`),
/// else cancel (QEMU resumes the source) as KubeVirt does past `completionTimeoutPerGiB`.
fn past_the_deadline(
    q: &QmpClient,
    opts: &MigrateOptions,
    limit: Duration,
) -> Result<&'static str, QemuMigrationError> {
    if opts.post_copy {
        q.execute("migrate-start-postcopy", None).map_err(qmp("migrate-start-postcopy"))?;
        return Ok(MODE_POST_COPY);
    }
    if opts.pause_to_complete {
        q.execute("stop", None).map_err(qmp("stop"))?;
        // The limit spared the running guest's neighbours; a paused guest wants the downtime short.
        q.execute("migrate-set-parameters", Some(json!({ "max-bandwidth": UNLIMITED })))
            .map_err(qmp("migrate-set-parameters"))?;
        return Ok(MODE_PAUSED);
    }
    q.execute("migrate_cancel", None).map_err(qmp("migrate_cancel"))?;
    Err(QemuMigrationError::CompletionTimeout(limit))
}

/// The destination's side, on a QEMU started with `-incoming defer` and `-S`: receives the VM from
/// `stream`; returns once it has all of it (the guest still paused), or once the source switched
/// to post-copy (`postcopy-active`: the source has stopped for good and the guest must run here to
/// fault in the rest). `post_copy` readies it for that (`postcopy-ram`; QEMU needs userfaultfd).
/// `timeout` bounds a source that never finishes.
pub(super) fn receive(
    q: &QmpClient,
    events: &MigrationEvents,
    stream: &UnixStream,
    timeout: Duration,
    post_copy: bool,
) -> Result<(), QemuMigrationError> {
    events_on(q)?;
    if post_copy {
        q.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": [{ "capability": "postcopy-ram", "state": true }] })),
        )
        .map_err(qmp("migrate-set-capabilities"))?;
    }
    q.execute_with_fd("getfd", Some(json!({ "fdname": FD_NAME })), stream.as_raw_fd())
        .map_err(qmp("getfd"))?;
    q.execute("migrate-incoming", Some(json!({ "uri": format!("fd:{FD_NAME}") })))
        .map_err(qmp("migrate-incoming"))?;
    let deadline = Instant::now() + timeout;
    loop {
        let seq = events.seen().seq;
        let (status, v) = query(q)?;
        match status.as_str() {
            "completed" | "postcopy-active" => return Ok(()),
            "failed" => {
                let why = v.get("error-desc").and_then(Value::as_str).unwrap_or("the stream ended early");
                return Err(QemuMigrationError::Failed(why.to_string()));
            }
            "cancelled" => return Err(QemuMigrationError::Cancelled),
            _ if Instant::now() > deadline => return Err(QemuMigrationError::Timeout(timeout, status)),
            // The guest stays paused until this loop sees the end: QEMU's event wakes it.
            _ => events.wait_past(seq, DESTINATION_LOOK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_event_wakes_the_waiting_loop_at_once() {
        let events = std::sync::Arc::new(MigrationEvents::default());
        let seq = events.seen().seq;
        let e2 = events.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            e2.record(&QmpEvent::Stop); // not a migration event: no wake-up
            e2.record(&QmpEvent::MigrationPass { pass: 2 });
            e2.record(&QmpEvent::Migration { status: "completed".into() });
        });
        let t0 = Instant::now();
        events.wait_past(seq, Duration::from_secs(30));
        assert!(t0.elapsed() < Duration::from_secs(10), "woken by the event, not the timeout");
        t.join().unwrap();
        let seen = events.seen();
        assert_eq!((seen.seq, seen.status.as_deref(), seen.pass), (2, Some("completed"), 2));
        // Nothing new past the last event: the wait runs to its timeout.
        let t0 = Instant::now();
        events.wait_past(seen.seq, Duration::from_millis(30));
        assert!(t0.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn a_completed_answer_becomes_a_report() {
        let v = json!({
            "status": "completed", "total-time": 812, "downtime": 7, "setup-time": 1,
            "ram": { "transferred": 41_000_000u64, "dirty-sync-count": 4 }
        });
        let r = report_of(&v);
        assert_eq!((r.total_us, r.downtime_us, r.passes, r.bytes_sent), (812_000, 7_000, 4, 41_000_000));
        assert_eq!(report_of(&json!({})), MigrationReport::default());
    }
}
