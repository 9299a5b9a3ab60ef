//! Pre-copy's sender: memory runs gathered into batches of at most `BATCH` bytes, each one frame,
//! paced to the migration's bandwidth limit and cut off at its completion timeout (both lifted for
//! the final pass, while the guest is paused).

use std::io::Write;
use std::time::{Duration, Instant};

use super::converge::Activity;
use super::{write_frame, Kind, MigrationError, BATCH};

/// The longest the pacing sleeps between two marks of activity.
const PACE_SLICE: Duration = Duration::from_millis(250);

/// Collects and sends memory batches.
pub(super) struct Sender<'a, W: Write> {
    w: &'a mut W,
    buf: Vec<u8>,
    bytes: u64,
    /// Pre-copy's pace: at most this many bytes per second since `since` (None: unlimited).
    limit: Option<u64>,
    since: Instant,
    /// Bytes sent since `since`.
    paced: u64,
    /// When pre-copy gives up (None: never), with the limit for the error.
    deadline: Option<(Instant, Duration)>,
    passes: u32,
    activity: &'a Activity,
    /// At the deadline, call this (pause the guest) and go on unpaced instead of failing.
    pause: Option<&'a dyn Fn()>,
    /// When `pause` was called.
    paused_at: Option<Instant>,
}

impl<'a, W: Write> Sender<'a, W> {
    /// A sender on `w` pacing to `limit` bytes a second, giving up after `timeout` from `start`,
    /// recording each frame sent in `activity`.
    pub(super) fn new(
        w: &'a mut W,
        limit: Option<u64>,
        start: Instant,
        timeout: Option<Duration>,
        activity: &'a Activity,
    ) -> Self {
        Self {
            w,
            buf: Vec::new(),
            bytes: 0,
            limit,
            since: Instant::now(),
            paced: 0,
            deadline: timeout.map(|t| (start + t, t)),
            passes: 0,
            activity,
            pause: None,
            paused_at: None,
        }
    }

    /// At the deadline, `pause` the guest and send the rest unpaced rather than fail (KubeVirt's
    /// `allowWorkloadDisruption`).
    pub(super) fn pause_at_deadline(&mut self, pause: &'a dyn Fn()) {
        self.pause = Some(pause);
    }

    /// When the sender paused the guest at the deadline, if it did.
    pub(super) fn paused_at(&self) -> Option<Instant> {
        self.paused_at
    }

    /// Memory bytes pushed so far.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Dirty passes done so far (for the timeout's error).
    pub(super) fn set_passes(&mut self, passes: u32) {
        self.passes = passes;
    }

    pub(super) fn push(&mut self, gpa: u64, data: &[u8]) -> Result<(), MigrationError> {
        self.buf.extend_from_slice(&gpa.to_le_bytes());
        self.buf.extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(data);
        self.bytes += data.len() as u64;
        if self.buf.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }
    pub(super) fn flush(&mut self) -> Result<(), MigrationError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Some((at, limit)) = self.deadline {
            if Instant::now() >= at {
                let Some(pause) = self.pause else {
                    return Err(MigrationError::TimedOut { limit, sent: self.bytes, passes: self.passes });
                };
                log::info!("migration: not complete after {limit:?}: pausing the guest to complete");
                pause();
                self.paused_at = Some(Instant::now());
                self.unlimit();
            }
        }
        write_frame(self.w, Kind::Memory, &self.buf)?;
        self.activity.touch();
        self.paced += self.buf.len() as u64;
        self.buf.clear();
        if let Some(rate) = self.limit.filter(|r| *r > 0) {
            // Sleep off what this batch took beyond the rate (a token bucket of one batch).
            // Not past the deadline, though: the timeout is judged at the next batch.
            let due = self.since + Duration::from_secs_f64(self.paced as f64 / rate as f64);
            let until = self.deadline.map_or(due, |(at, _)| due.min(at));
            // In slices, each one activity: pacing is the sender's choice, not a peer that takes
            // nothing, so a batch slower than the progress timeout does not trip its watchdog.
            loop {
                let now = Instant::now();
                if until <= now {
                    break;
                }
                std::thread::sleep((until - now).min(PACE_SLICE));
                self.activity.touch();
            }
        }
        Ok(())
    }

    /// The guest is paused: the rest goes out at full speed and no timeout applies.
    pub(super) fn unlimit(&mut self) {
        self.limit = None;
        self.deadline = None;
    }
}
