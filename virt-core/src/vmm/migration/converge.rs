//! Pre-copy's two judges, as pure state machines both backends use: when to throttle the guest
//! (auto-converge, QEMU's rule) and when a migration that makes no progress is aborted (KubeVirt's
//! `progressTimeout`).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::CancelToken;
use crate::vmm::devices::lock;

/// QEMU's auto-converge: after a dirty-page round in which the guest dirtied more than half of
/// what was sent in it, twice, throttle the vCPUs: first [`AutoConverge::initial`] percent, then
/// [`AutoConverge::increment`] more each time, up to [`AutoConverge::max`] (QEMU's
/// `throttle-trigger-threshold` 50, `cpu-throttle-initial` 20, `cpu-throttle-increment` 10,
/// `max-cpu-throttle` 99).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoConverge {
    /// The first throttle, in percent.
    pub initial: u8,
    /// Added on each later trigger, in percent.
    pub increment: u8,
    /// The highest throttle, in percent.
    pub max: u8,
    /// Dirty bytes above this percentage of the bytes sent in a round make the round "high".
    pub threshold_pct: u8,
    percent: u8,
    high_rounds: u32,
}

impl Default for AutoConverge {
    fn default() -> Self {
        Self { initial: 20, increment: 10, max: 99, threshold_pct: 50, percent: 0, high_rounds: 0 }
    }
}

impl AutoConverge {
    /// The throttle now, in percent (0: none).
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// Judges a round: `dirty` bytes found dirty at its end, `sent` bytes sent during it. Returns
    /// the new throttle when it changes. As QEMU, a high round counts towards the next trigger
    /// and a low one does not reset the count.
    pub fn after_round(&mut self, dirty: u64, sent: u64) -> Option<u8> {
        let threshold = sent.saturating_mul(u64::from(self.threshold_pct)) / 100;
        if dirty <= threshold {
            return None;
        }
        self.high_rounds += 1;
        if self.high_rounds < 2 {
            return None;
        }
        self.high_rounds = 0;
        let next = if self.percent == 0 { self.initial } else { self.percent.saturating_add(self.increment) }
            .min(self.max);
        (next != self.percent).then(|| {
            self.percent = next;
            next
        })
    }
}

/// KubeVirt's `progressTimeout`: the lowest amount of data remaining seen so far is the
/// watermark; a migration whose remaining data has not gone below it for longer than the timeout
/// is stuck and aborted (the source runs on).
#[derive(Debug, Clone)]
pub struct ProgressWatch {
    timeout: Duration,
    watermark: Option<u64>,
    last_progress: Instant,
}

/// A stuck migration: no progress for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stuck(pub Duration);

impl ProgressWatch {
    /// A watch started at `now` with `timeout` (zero: never stuck).
    pub fn new(timeout: Duration, now: Instant) -> Self {
        Self { timeout, watermark: None, last_progress: now }
    }

    /// Records `remaining` bytes at `now`; an error when the migration made no progress for longer
    /// than the timeout.
    pub fn observe(&mut self, remaining: u64, now: Instant) -> Result<(), Stuck> {
        // As KubeVirt: a watermark of 0 counts as none yet.
        if self.watermark.is_none_or(|w| w == 0 || remaining < w) {
            self.watermark = Some(remaining);
            self.last_progress = now;
        }
        let idle = now.saturating_duration_since(self.last_progress);
        if !self.timeout.is_zero() && idle > self.timeout {
            return Err(Stuck(idle));
        }
        Ok(())
    }
}

/// When the sender last got memory out (a frame written).
#[derive(Debug)]
pub(super) struct Activity(Mutex<Instant>);

impl Activity {
    pub(super) fn new() -> Self {
        Self(Mutex::new(Instant::now()))
    }
    pub(super) fn touch(&self) {
        *lock(&self.0) = Instant::now();
    }
    fn idle(&self) -> Duration {
        lock(&self.0).elapsed()
    }
}

/// The progress timeout for a stream that takes nothing: the rounds are judged when they end,
/// and a write blocked on a silent peer never ends one. A watchdog thread cancels the migration
/// (which shuts the stream down, [`CancelToken::on_cancel`]) once nothing went out for longer
/// than the timeout.
#[derive(Default)]
pub(super) struct Watchdog {
    done: Mutex<bool>,
    cv: Condvar,
    stuck: Mutex<Option<Duration>>,
}

impl Watchdog {
    /// Watches until [`Watchdog::finish`]; cancels through `cancel` when `activity` is idle for
    /// longer than `limit` (not after the commit point, where a cancel is refused).
    pub(super) fn run(&self, limit: Duration, activity: &Activity, cancel: &CancelToken) {
        let mut done = lock(&self.done);
        while !*done {
            let idle = activity.idle();
            if idle > limit {
                if cancel.cancel() {
                    *lock(&self.stuck) = Some(idle);
                }
                return;
            }
            done = self
                .cv
                .wait_timeout(done, Duration::from_millis(100))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
    pub(super) fn finish(&self) {
        *lock(&self.done) = true;
        self.cv.notify_all();
    }
    /// How long nothing went out when the watchdog cancelled, if it did.
    pub(super) fn stuck(&self) -> Option<Duration> {
        *lock(&self.stuck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_starts_after_two_high_rounds_and_climbs_to_the_cap() {
        let mut a = AutoConverge::default();
        // Dirty at most half of what was sent: converging, never throttled.
        for _ in 0..5 {
            assert_eq!(a.after_round(50, 100), None);
        }
        assert_eq!(a.percent(), 0);
        // The first high round only counts; the second throttles at 20%.
        assert_eq!(a.after_round(51, 100), None);
        assert_eq!(a.after_round(90, 100), Some(20));
        // A low round in between does not reset the count (QEMU's rule).
        assert_eq!(a.after_round(100, 100), None);
        assert_eq!(a.after_round(10, 100), None);
        assert_eq!(a.after_round(100, 100), Some(30));
        let mut seen = vec![20, 30];
        while let Some(p) = a.after_round(100, 100).or_else(|| a.after_round(100, 100)) {
            seen.push(p);
        }
        assert_eq!(seen, [20, 30, 40, 50, 60, 70, 80, 90, 99]);
        assert_eq!(a.percent(), 99, "capped");
        // Nothing sent, something dirty: high.
        let mut b = AutoConverge::default();
        b.after_round(1, 0);
        assert_eq!(b.after_round(1, 0), Some(20));
    }

    #[test]
    fn a_migration_is_stuck_when_remaining_data_stays_above_its_low_for_the_timeout() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut w = ProgressWatch::new(Duration::from_secs(150), t0);
        assert_eq!(w.observe(1000, s(0)), Ok(()));
        assert_eq!(w.observe(800, s(100)), Ok(()), "went down: progress at 100 s");
        // Up and down but never below 800: no progress since 100 s.
        assert_eq!(w.observe(900, s(200)), Ok(()));
        assert_eq!(w.observe(800, s(250)), Ok(()), "150 s without progress is not yet more");
        assert_eq!(w.observe(850, s(251)), Err(Stuck(Duration::from_secs(151))));
        // Progress again resets the clock.
        assert_eq!(w.observe(10, s(300)), Ok(()));
        assert_eq!(w.observe(10, s(449)), Ok(()));
        // A timeout of zero: never stuck.
        let mut never = ProgressWatch::new(Duration::ZERO, t0);
        assert_eq!(never.observe(5, s(0)), Ok(()));
        assert_eq!(never.observe(5, s(100_000)), Ok(()));
        // A remaining of zero is no watermark: the next value starts over.
        let mut z = ProgressWatch::new(Duration::from_secs(1), t0);
        z.observe(0, s(0)).unwrap();
        assert_eq!(z.observe(7, s(5)), Ok(()));
    }
}
