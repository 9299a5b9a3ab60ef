//! Pre-copy's two judges, as pure state machines both backends use: when to throttle the guest
//! (auto-converge, QEMU's rule) and when a migration that makes no progress is aborted (KubeVirt's
//! `progressTimeout`).

use std::time::{Duration, Instant};

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
