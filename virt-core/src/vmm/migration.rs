//! Live migration of the native microVM: a framed, versioned pre-copy protocol over any byte stream
//! (a unix socket, or TCP).
//!
//! Every message is a frame: a 16-byte header `magic "VCMG" | kind: u16 | reserved: u16 | len: u32 |
//! crc32: u32` (little endian) and `len` bytes of payload. The conversation:
//!
//! ```text
//!   source                                   destination
//!   Hello {min, max version, features}  ──►
//!                                       ◄──  Hello {chosen version, features}    (or Abandon)
//!   Config (state stream: `config`)     ──►  builds an empty VM, compares config and CPUID
//!                                       ◄──  Ok                                 (or Abandon)
//!   Memory batches (all non-zero pages) ──►  writes them into guest memory
//!   Memory batches (dirty pass 1..n)    ──►  (KVM's dirty log + pages the VMM's devices wrote)
//!   -- source pauses: downtime starts; devices quiesced, their state saved --
//!   Memory batch (final dirty pass)     ──►
//!   State (state stream)                ──►
//!   Complete                            ──►  restores the state into the VM, paused
//!                                       ◄──  Ready {restore time}               (or Abandon)
//!   -- source stops for good --
//!   Commit                              ──►  resumes the VM: downtime ends
//! ```
//!
//! Either side sends Abandon with a reason on error. Before the source has seen Ready it resumes its
//! VM on any failure; after Ready it stops and sends Commit, and the destination runs only on Commit:
//! a lost Commit leaves no VM running, never two.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::devices::lock;
use super::snapshot::{for_each_nonzero_run, ConfigSummary, SnapshotError, PAGE};
use super::state::{self, Persist, StateError};
use super::{Build, MicroVm, VmConfig, VmHandle};
use crate::hypervisor::{Hypervisor, MemorySlot};

mod cancel;
mod converge;
mod sender;
pub use cancel::CancelToken;
use converge::{Activity, Watchdog};
pub use converge::{AutoConverge, ProgressWatch, Stuck};
use sender::Sender;

/// Protocol versions this build speaks.
pub const VERSION_MIN: u16 = 1;
/// Protocol versions this build speaks.
pub const VERSION_MAX: u16 = 1;
/// Feature bits this build offers (none defined yet; unknown bits are ignored by both sides).
pub const FEATURES: u64 = 0;
const MAGIC: [u8; 4] = *b"VCMG";
const FRAME_HEADER: usize = 16;
/// Largest frame payload accepted.
pub const MAX_FRAME: usize = 64 << 20;
/// Bytes of guest memory per batch frame.
const BATCH: usize = 1 << 20;

/// Message kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Version range and features.
    Hello = 1,
    /// The configuration section.
    Config = 2,
    /// The configuration matched.
    Ok = 3,
    /// A batch of guest pages: repeated `gpa: u64 | len: u32 | bytes`.
    Memory = 4,
    /// The device, VM and vCPU state stream.
    State = 5,
    /// The source is done sending.
    Complete = 6,
    /// The destination restored the VM, paused; payload: restore time in microseconds (u64).
    Ready = 7,
    /// The source stopped for good; the destination runs.
    Commit = 8,
    /// The sender gives up; payload: the reason (UTF-8).
    Abandon = 9,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Self> {
        use Kind::*;
        [Hello, Config, Ok, Memory, State, Complete, Ready, Commit, Abandon]
            .into_iter()
            .find(|k| *k as u16 == v)
    }
}

/// Errors of a migration, on either side.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The connection failed.
    #[error("migration connection: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A frame or message is malformed.
    #[error("migration protocol: {0}")]
    Protocol(String),
    /// No common protocol version.
    #[error("no common migration protocol version: we speak {ours_min}..={ours_max}, the peer {theirs_min}..={theirs_max}")]
    Version {
        /// Our range.
        ours_min: u16,
        /// Our range.
        ours_max: u16,
        /// The peer's range.
        theirs_min: u16,
        /// The peer's range.
        theirs_max: u16,
    },
    /// The peer abandoned the migration.
    #[error("the peer abandoned the migration: {0}")]
    Abandoned(String),
    /// Snapshotting, restoring or building the VM failed.
    #[error(transparent)]
    Vm(#[from] SnapshotError),
    /// The state stream is malformed.
    #[error(transparent)]
    State(#[from] StateError),
    /// [`MigrationOptions::cancel`] was set before the destination was told to run.
    #[error("the migration was cancelled")]
    Cancelled,
    /// Pre-copy ran past the completion timeout (KubeVirt's `completionTimeoutPerGiB` times the
    /// guest's memory); the source keeps running.
    #[error("the migration did not complete within {limit:?} ({sent} bytes sent in {passes} dirty passes)")]
    TimedOut {
        /// The timeout.
        limit: Duration,
        /// Memory bytes sent until then.
        sent: u64,
        /// Dirty passes until then.
        passes: u32,
    },
    /// The data left to send did not go below its lowest for longer than the progress timeout
    /// (KubeVirt's `progressTimeout`); the source keeps running.
    #[error("Live migration stuck for {} sec and has been aborted ({remaining} bytes left after {passes} dirty passes)", .stuck_for.as_secs())]
    Stuck {
        /// How long it made no progress.
        stuck_for: Duration,
        /// Bytes left to send at the last round.
        remaining: u64,
        /// Dirty passes until then.
        passes: u32,
    },
    /// Nothing went out for longer than the progress timeout (a peer that takes nothing); the
    /// source keeps running.
    #[error("Live migration stuck for {} sec and has been aborted (the destination took nothing)", .0.as_secs())]
    Blocked(Duration),
    /// The vCPU throttle could not start.
    #[error("starting the vCPU throttle: {0}")]
    Throttle(std::io::Error),
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> MigrationError {
    move |source| MigrationError::Io { op, source }
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> Result<(), MigrationError> {
    let mut h = [0u8; FRAME_HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&state::crc32(payload).to_le_bytes());
    w.write_all(&h).map_err(io("send a frame header"))?;
    w.write_all(payload).map_err(io("send a frame"))?;
    w.flush().map_err(io("flush"))
}

/// Reads one frame; an Abandon from the peer becomes [`MigrationError::Abandoned`].
pub fn read_frame(r: &mut impl Read) -> Result<(Kind, Vec<u8>), MigrationError> {
    let mut h = [0u8; FRAME_HEADER];
    r.read_exact(&mut h).map_err(io("receive a frame header"))?;
    let (kind, len, crc) = parse_header(&h)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).map_err(io("receive a frame"))?;
    check_payload(kind, &payload, crc)
}

fn parse_header(h: &[u8; FRAME_HEADER]) -> Result<(Kind, usize, u32), MigrationError> {
    if h[..4] != MAGIC {
        return Err(MigrationError::Protocol(format!("bad frame magic {:02x?}, expected \"VCMG\"", &h[..4])));
    }
    let k = u16::from_le_bytes([h[4], h[5]]);
    let kind =
        Kind::from_u16(k).ok_or_else(|| MigrationError::Protocol(format!("unknown message kind {k}")))?;
    let len = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if len > MAX_FRAME {
        return Err(MigrationError::Protocol(format!("{kind:?} frame of {len} bytes exceeds {MAX_FRAME}")));
    }
    Ok((kind, len, u32::from_le_bytes([h[12], h[13], h[14], h[15]])))
}

fn check_payload(kind: Kind, payload: &[u8], crc: u32) -> Result<(Kind, Vec<u8>), MigrationError> {
    let found = state::crc32(payload);
    if found != crc {
        return Err(MigrationError::Protocol(format!(
            "{kind:?} frame corrupted: crc32 {found:#010x}, header {crc:#010x}"
        )));
    }
    if kind == Kind::Abandon {
        return Err(MigrationError::Abandoned(String::from_utf8_lossy(payload).into_owned()));
    }
    Ok((kind, payload.to_vec()))
}

fn expect(r: &mut impl Read, want: Kind) -> Result<Vec<u8>, MigrationError> {
    let (kind, p) = read_frame(r)?;
    if kind != want {
        return Err(MigrationError::Protocol(format!("expected {want:?}, received {kind:?}")));
    }
    Ok(p)
}

fn hello(min: u16, max: u16, features: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&min.to_le_bytes());
    p.extend_from_slice(&max.to_le_bytes());
    p.extend_from_slice(&features.to_le_bytes());
    p
}

fn parse_hello(p: &[u8]) -> Result<(u16, u16, u64), MigrationError> {
    if p.len() != 12 {
        return Err(MigrationError::Protocol(format!("Hello of {} bytes, expected 12", p.len())));
    }
    let min = u16::from_le_bytes([p[0], p[1]]);
    let max = u16::from_le_bytes([p[2], p[3]]);
    let mut f = [0u8; 8];
    f.copy_from_slice(&p[4..12]);
    Ok((min, max, u64::from_le_bytes(f)))
}

/// Splits a Memory payload into (guest address, bytes) runs.
pub fn parse_batch(p: &[u8]) -> Result<Vec<(u64, &[u8])>, MigrationError> {
    let mut out = Vec::new();
    let mut d = state::Decoder::new("memory batch", p);
    let mut rest = p.len();
    while rest > 0 {
        let gpa = d.u64()?;
        let data = d.bytes(MAX_FRAME)?;
        rest = rest.saturating_sub(8 + 4 + data.len());
        out.push((gpa, data));
    }
    Ok(out)
}

/// How the source runs the pre-copy loop.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// The longest the VM may be paused: pre-copy continues until the remaining dirty memory can be
    /// sent within it at the measured bandwidth (QEMU's default is 300 ms).
    pub downtime_budget: Duration,
    /// Dirty passes before the source gives up converging and pauses anyway.
    pub max_passes: u32,
    /// Cancelled from another thread to abandon the migration at any step before Commit.
    pub cancel: Arc<CancelToken>,
    /// The most memory bytes per second pre-copy sends (KubeVirt's `bandwidthPerMigration`);
    /// `None`: as fast as the stream takes them. The final pass, with the guest paused, is not
    /// limited: the limit is for the running guest's neighbours, the downtime for the guest.
    pub bandwidth_limit: Option<u64>,
    /// How long pre-copy may run before the migration fails and the source goes on
    /// (KubeVirt's `completionTimeoutPerGiB` times the memory size); `None`: no limit.
    pub completion_timeout: Option<Duration>,
    /// Throttle the vCPUs when dirty-page rounds do not shrink (KubeVirt's `allowAutoConverge`,
    /// QEMU's rule and steps: [`AutoConverge`]); the throttle ends with the migration.
    pub auto_converge: bool,
    /// Abort when the data left to send has not gone below its lowest for this long (KubeVirt's
    /// `progressTimeout`, judged at each dirty-page round: [`ProgressWatch`]); `None`: never.
    pub progress_timeout: Option<Duration>,
    /// At the completion timeout, pause the guest and finish (the rest unpaced) instead of failing
    /// (KubeVirt's `allowWorkloadDisruption`).
    pub pause_to_complete: bool,
}

impl Default for MigrationOptions {
    fn default() -> Self {
        Self {
            downtime_budget: Duration::from_millis(300),
            max_passes: 30,
            cancel: Arc::default(),
            bandwidth_limit: None,
            completion_timeout: None,
            auto_converge: false,
            progress_timeout: None,
            pause_to_complete: false,
        }
    }
}

impl MigrationOptions {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        self.cancel.check()
    }
}

/// What a migration did and how long the VM was paused, broken into parts.
#[derive(Debug, Clone, Default)]
pub struct MigrationStats {
    /// From Hello to Commit.
    pub total: Duration,
    /// From the source's pause to Commit sent (the destination resumes on receipt).
    pub downtime: Duration,
    /// Of the downtime: quiescing devices and saving state.
    pub save_state: Duration,
    /// Of the downtime: the final dirty pass.
    pub final_pass: Duration,
    /// Of the downtime: the destination restoring the state (as it reported).
    pub restore: Duration,
    /// Dirty passes before the pause.
    pub passes: u32,
    /// Pages sent in each pass (the first is the full copy, the last the final pass).
    pub pages_per_pass: Vec<u64>,
    /// Bytes of guest memory sent in all.
    pub bytes_sent: u64,
    /// The vCPU throttle when the source paused, in percent (auto-converge; 0: none).
    pub throttle_percent: u8,
    /// The throttle after each dirty-page round (empty without auto-converge).
    pub throttle_per_pass: Vec<u8>,
    /// Pre-copy reached the completion timeout and the guest was paused to complete
    /// ([`MigrationOptions::pause_to_complete`]); the downtime counts from that pause.
    pub paused_to_complete: bool,
}

impl VmHandle {
    fn set_dirty_logging(&self, on: bool) -> Result<(), MigrationError> {
        for s in &self.slots {
            let slot = MemorySlot { log_dirty: on, ..*s };
            // SAFETY: the same host mapping as when the slot was created (only the flags change); it
            // lives as long as this handle.
            unsafe { self.vm.set_memory_slot(slot) }.map_err(SnapshotError::from)?;
        }
        for t in &self.virtio {
            let mut t = lock(t);
            t.interrupt().guest_writes().set_tracking(on);
            // vhost-net hands its queues to the userspace path, whose writes are recorded.
            t.set_migrating(on);
        }
        Ok(())
    }

    /// Pages written since the last call: KVM's dirty log, plus what the devices wrote (`final_pass`
    /// adds the used rings, which the device state save may just have updated).
    fn dirty_set(&self, final_pass: bool) -> Result<BTreeSet<u64>, MigrationError> {
        let mut pages = BTreeSet::new();
        for s in &self.slots {
            let bitmap = self.vm.get_dirty_log(s.slot, s.size).map_err(SnapshotError::from)?;
            for (w, word) in bitmap.iter().enumerate() {
                let mut bits = *word;
                while bits != 0 {
                    let b = u64::from(bits.trailing_zeros());
                    pages.insert(s.guest_addr + (w as u64 * 64 + b) * PAGE as u64);
                    bits &= bits - 1;
                }
            }
        }
        for t in &self.virtio {
            let t = lock(t);
            let mut ranges = t.interrupt().guest_writes().take();
            if final_pass {
                ranges.extend(t.used_rings());
            }
            for (gpa, len) in ranges {
                let first = gpa / PAGE as u64;
                let last = (gpa + len.max(1) - 1) / PAGE as u64;
                pages.extend((first..=last).map(|p| p * PAGE as u64));
            }
        }
        Ok(pages)
    }

    fn send_pages(
        &self,
        s: &mut Sender<'_, impl Write>,
        pages: &BTreeSet<u64>,
    ) -> Result<u64, MigrationError> {
        let mut page = vec![0u8; PAGE];
        let mut n = 0;
        for &gpa in pages {
            // A page outside RAM (a device wrote a bogus address) is skipped: there is nothing to copy.
            if self.mem.read_slice(&mut page, GuestAddress(gpa)).is_ok() {
                s.push(gpa, &page)?;
                n += 1;
            }
        }
        s.flush()?;
        Ok(n)
    }

    /// The vCPU throttle in force, in percent (auto-converge during a migration; 0 otherwise).
    pub fn throttle_percent(&self) -> u8 {
        self.ctl.throttle()
    }

    /// Migrates this VM to the destination at the other end of `stream` (see the module doc). On
    /// success the VM here is stopped and runs on the destination; on any failure before the
    /// destination is Ready it keeps running here (resumed if it was paused for the migration).
    pub fn migrate_to<S: Read + Write>(
        &self,
        stream: &mut S,
        opts: &MigrationOptions,
    ) -> Result<MigrationStats, MigrationError> {
        let was_paused = self.is_paused();
        let paused_here = std::cell::Cell::new(false);
        let (activity, dog) = (Activity::new(), Watchdog::default());
        let mut r = std::thread::scope(|sc| {
            if let Some(limit) = opts.progress_timeout.filter(|t| !t.is_zero()) {
                let (dog, activity, cancel) = (&dog, &activity, &*opts.cancel);
                let watch = move || dog.run(limit, activity, cancel);
                if let Err(e) =
                    std::thread::Builder::new().name("migration-watch".into()).spawn_scoped(sc, watch)
                {
                    log::warn!("no watchdog for a stream that takes nothing: {e}");
                }
            }
            let r = self.migrate_inner(stream, opts, &paused_here, &activity);
            dog.finish();
            r
        });
        if let (Err(_), Some(idle)) = (&r, dog.stuck()) {
            r = Err(MigrationError::Blocked(idle));
        }
        // The throttle ends with the migration: a source that runs on runs at full speed.
        if let Err(e) = self.ctl.set_throttle(0) {
            log::warn!("ending the vCPU throttle: {e}");
        }
        if matches!(r, Err(ref e) if !matches!(e, MigrationError::Blocked(_))) && opts.cancel.is_cancelled() {
            // The cancel shut the stream down: whatever broke, this is why.
            r = Err(MigrationError::Cancelled);
        }
        if let Err(e) = &r {
            let _ = write_frame(stream, Kind::Abandon, e.to_string().as_bytes());
            let _ = self.set_dirty_logging(false);
            if paused_here.get() && !was_paused {
                self.resume();
            }
        }
        r
    }

    fn migrate_inner<S: Read + Write>(
        &self,
        stream: &mut S,
        opts: &MigrationOptions,
        paused_here: &std::cell::Cell<bool>,
        activity: &Activity,
    ) -> Result<MigrationStats, MigrationError> {
        let start = Instant::now();
        let mut stats = MigrationStats::default();
        write_frame(stream, Kind::Hello, &hello(VERSION_MIN, VERSION_MAX, FEATURES))?;
        let (v, _, _) = parse_hello(&expect(stream, Kind::Hello)?)?;
        if !(VERSION_MIN..=VERSION_MAX).contains(&v) {
            return Err(MigrationError::Version {
                ours_min: VERSION_MIN,
                ours_max: VERSION_MAX,
                theirs_min: v,
                theirs_max: v,
            });
        }
        write_frame(stream, Kind::Config, &state::write_stream(&[self.cfg_summary.to_section("config")?])?)?;
        expect(stream, Kind::Ok)?;
        opts.check_cancel()?;

        // Pre-copy: log dirty pages from here on, send everything non-zero, then the dirty pages
        // until what is left fits the downtime budget.
        self.set_dirty_logging(true)?;
        self.dirty_set(false)?;
        // allowWorkloadDisruption: at the completion timeout the sender pauses the guest and goes on
        // unpaced; the loop below then moves to stop-and-copy.
        let pause_now = || {
            paused_here.set(true);
            self.pause();
        };
        let mut sender = Sender::new(stream, opts.bandwidth_limit, start, opts.completion_timeout, activity);
        if opts.pause_to_complete {
            sender.pause_at_deadline(&pause_now);
        }
        let t = Instant::now();
        // A send error (the peer gone, the completion timeout) is kept as it is, not as a memory error.
        let mut send_err = None;
        let first = for_each_nonzero_run(&self.mem, |gpa, _, data| {
            sender.push(gpa, data).map_err(|e| {
                let msg = e.to_string();
                send_err = Some(e);
                SnapshotError::Memory { gpa, msg }
            })
        });
        if let Some(e) = send_err {
            return Err(e);
        }
        let first = first?;
        sender.flush()?;
        stats.pages_per_pass.push(first);
        // Bandwidth in bytes per second, measured on each pass.
        let mut bandwidth = (first as f64 * PAGE as f64) / t.elapsed().as_secs_f64().max(1e-6);
        let mut converge = AutoConverge::default();
        let mut progress = ProgressWatch::new(opts.progress_timeout.unwrap_or(Duration::ZERO), start);
        // Bytes sent in the round just ended.
        let mut round_sent = first * PAGE as u64;
        // Pages read from the dirty log (which clears it) but not sent yet: they join the final pass.
        let pending = loop {
            opts.check_cancel()?;
            if sender.paused_at().is_some() {
                // Paused at the completion timeout: the final pass below takes what is dirty.
                break BTreeSet::new();
            }
            let dirty = self.dirty_set(false)?;
            let dirty_bytes = dirty.len() as u64 * PAGE as u64;
            let eta = Duration::from_secs_f64(dirty_bytes as f64 / bandwidth.max(1.0));
            if eta <= opts.downtime_budget / 2 || stats.passes >= opts.max_passes {
                break dirty;
            }
            progress.observe(dirty_bytes, Instant::now()).map_err(|Stuck(stuck_for)| {
                MigrationError::Stuck { stuck_for, remaining: dirty_bytes, passes: stats.passes }
            })?;
            if opts.auto_converge {
                if let Some(p) = converge.after_round(dirty_bytes, round_sent) {
                    log::info!("migration: pass {} dirtied {dirty_bytes} of {round_sent} bytes sent: vCPUs throttled to {p}%", stats.passes);
                    self.ctl.set_throttle(p).map_err(MigrationError::Throttle)?;
                }
                stats.throttle_per_pass.push(converge.percent());
            }
            let t = Instant::now();
            let n = self.send_pages(&mut sender, &dirty)?;
            bandwidth = (n as f64 * PAGE as f64) / t.elapsed().as_secs_f64().max(1e-6);
            round_sent = n * PAGE as u64;
            stats.pages_per_pass.push(n);
            stats.passes += 1;
            sender.set_passes(stats.passes);
        };
        stats.throttle_percent = converge.percent();

        // Stop-and-copy.
        stats.paused_to_complete = sender.paused_at().is_some();
        let paused_at = match sender.paused_at() {
            Some(at) => at,
            None => {
                paused_here.set(true);
                self.pause();
                Instant::now()
            }
        };
        let sections = self.save_state().map_err(MigrationError::Vm)?;
        let saved_at = Instant::now();
        let mut dirty = self.dirty_set(true)?;
        dirty.extend(pending);
        sender.unlimit();
        let n = self.send_pages(&mut sender, &dirty)?;
        stats.pages_per_pass.push(n);
        stats.bytes_sent = sender.bytes();
        let final_at = Instant::now();
        write_frame(stream, Kind::State, &state::write_stream(&sections)?)?;
        write_frame(stream, Kind::Complete, &[])?;
        let ready = expect(stream, Kind::Ready)?;
        let restore_us = ready.get(..8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        });
        // The last moment a cancel is honoured: the destination restored the VM but runs it only
        // on Commit, so Abandon (sent by `migrate_to`) leaves it never started.
        opts.cancel.commit()?;
        // The destination holds the VM now: stop here for good before letting it run.
        self.request_stop();
        write_frame(stream, Kind::Commit, &[])?;
        let end = Instant::now();
        stats.save_state = saved_at - paused_at;
        stats.final_pass = final_at - saved_at;
        stats.restore = Duration::from_micros(restore_us.unwrap_or(0));
        stats.downtime = end - paused_at;
        stats.total = end - start;
        Ok(stats)
    }
}

/// What the destination measured.
#[derive(Debug, Clone, Default)]
pub struct IncomingStats {
    /// Restoring the state into the new VM.
    pub restore: Duration,
    /// Memory frames received.
    pub memory_frames: u64,
}

impl MicroVm {
    /// Receives a migration on `stream` into a new VM built from `cfg` (same memory, vCPUs and disks
    /// as the source's). Returns the running VM after Commit. On any error it sends Abandon with the
    /// reason (best effort) and no VM runs here.
    pub fn migrate_from<S: Read + Write>(
        hv: &dyn Hypervisor,
        cfg: VmConfig,
        stream: &mut S,
    ) -> Result<(VmHandle, IncomingStats), MigrationError> {
        let r = Self::incoming(hv, cfg, stream);
        if let Err(e) = &r {
            if !matches!(e, MigrationError::Abandoned(_) | MigrationError::Io { .. }) {
                let _ = write_frame(stream, Kind::Abandon, e.to_string().as_bytes());
            }
        }
        r
    }

    fn incoming<S: Read + Write>(
        hv: &dyn Hypervisor,
        cfg: VmConfig,
        stream: &mut S,
    ) -> Result<(VmHandle, IncomingStats), MigrationError> {
        let (min, max, _features) = parse_hello(&expect(stream, Kind::Hello)?)?;
        let v = max.min(VERSION_MAX);
        if v < min.max(VERSION_MIN) {
            return Err(MigrationError::Version {
                ours_min: VERSION_MIN,
                ours_max: VERSION_MAX,
                theirs_min: min,
                theirs_max: max,
            });
        }
        write_frame(stream, Kind::Hello, &hello(v, v, FEATURES))?;
        let config = state::read_stream(&expect(stream, Kind::Config)?)?;
        let mut theirs = ConfigSummary::default();
        theirs.load_section(state::find(&config, "config")?)?;
        let mut vm = MicroVm::build(hv, cfg, Build::Empty).map_err(SnapshotError::from)?;
        vm.cfg_summary.check(&theirs)?;
        write_frame(stream, Kind::Ok, &[])?;
        let mut stats = IncomingStats::default();
        let mut sections = None;
        loop {
            let (kind, p) = read_frame(stream)?;
            match kind {
                Kind::Memory => {
                    stats.memory_frames += 1;
                    write_batch(&vm.mem, &p)?;
                }
                Kind::State => sections = Some(state::read_stream(&p)?),
                Kind::Complete => break,
                k => {
                    return Err(MigrationError::Protocol(format!("unexpected {k:?} during the memory copy")))
                }
            }
        }
        let sections = sections.ok_or_else(|| MigrationError::Protocol("Complete before State".into()))?;
        let t = Instant::now();
        vm.apply_state(&sections)?;
        let h = vm.start_paused().map_err(SnapshotError::from)?;
        stats.restore = t.elapsed();
        write_frame(stream, Kind::Ready, &(stats.restore.as_micros() as u64).to_le_bytes())?;
        // Run only on Commit: if it never comes, the source may still be running.
        match read_frame(stream).and_then(|(k, _)| {
            if k == Kind::Commit {
                Ok(())
            } else {
                Err(MigrationError::Protocol(format!("expected Commit, received {k:?}")))
            }
        }) {
            Ok(()) => {
                h.resume();
                Ok((h, stats))
            }
            Err(e) => {
                h.request_stop();
                h.wait();
                Err(e)
            }
        }
    }
}

fn write_batch(mem: &GuestMemoryMmap, p: &[u8]) -> Result<(), MigrationError> {
    for (gpa, data) in parse_batch(p)? {
        mem.write_slice(data, GuestAddress(gpa)).map_err(|e| {
            MigrationError::Protocol(format!(
                "memory batch: {} bytes at {gpa:#x} outside guest memory: {e}",
                data.len()
            ))
        })?;
    }
    Ok(())
}

/// Fuzz entry: frames and messages as a destination parses them, into a small scratch memory.
pub fn fuzz_messages(data: &[u8]) {
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 16)]) else { return };
    let mut r = data;
    for _ in 0..64 {
        let Ok((kind, p)) = read_frame(&mut r) else { return };
        match kind {
            Kind::Hello => {
                let _ = parse_hello(&p);
            }
            Kind::Memory => {
                let _ = write_batch(&mem, &p);
            }
            Kind::Config | Kind::State => crate::fuzzing::state_stream(&p),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frames_round_trip_and_damage_is_named() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Hello, &hello(1, 3, 5)).unwrap();
        write_frame(&mut buf, Kind::Abandon, b"disk full").unwrap();
        let mut r = &buf[..];
        let (k, p) = read_frame(&mut r).unwrap();
        assert_eq!((k, parse_hello(&p).unwrap()), (Kind::Hello, (1, 3, 5)));
        let e = read_frame(&mut r).unwrap_err();
        assert!(matches!(&e, MigrationError::Abandoned(m) if m == "disk full"), "{e}");

        let mut bad = buf.clone();
        bad[FRAME_HEADER] ^= 1;
        assert!(read_frame(&mut &bad[..]).unwrap_err().to_string().contains("Hello frame corrupted"));
        let mut bad = buf.clone();
        bad[4] = 77;
        assert!(read_frame(&mut &bad[..]).unwrap_err().to_string().contains("unknown message kind 77"));
        let mut bad = buf.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_frame(&mut &bad[..]).unwrap_err().to_string().contains("exceeds"));
        assert!(matches!(read_frame(&mut &buf[..10]), Err(MigrationError::Io { .. })));
    }

    #[test]
    fn batches_parse_and_refuse_writes_outside_memory() {
        let mut p = Vec::new();
        for (gpa, data) in [(0x1000u64, &[1u8, 2, 3][..]), (0x2000, &[4][..])] {
            p.extend_from_slice(&gpa.to_le_bytes());
            p.extend_from_slice(&(data.len() as u32).to_le_bytes());
            p.extend_from_slice(data);
        }
        let runs = parse_batch(&p).unwrap();
        assert_eq!(runs, vec![(0x1000, &[1u8, 2, 3][..]), (0x2000, &[4][..])]);
        assert!(parse_batch(&p[..p.len() - 1]).is_err());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = write_batch(&mem, &p).unwrap_err().to_string();
        assert!(e.contains("at 0x1000 outside guest memory"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_streams_never_panic(frames in proptest::collection::vec(
            (1u16..10, proptest::collection::vec(any::<u8>(), 0..64)), 0..6)) {
            let mut buf = Vec::new();
            for (k, p) in &frames {
                let kind = Kind::from_u16(*k).unwrap_or(Kind::Memory);
                write_frame(&mut buf, kind, p).unwrap();
            }
            fuzz_messages(&buf);
            crate::fuzzing::migration_stream(&buf);
        }
    }

    #[test]
    fn a_cancel_and_the_commit_point_exclude_each_other() {
        let t = CancelToken::default();
        let woken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let w = woken.clone();
        t.on_cancel(Box::new(move || w.store(true, std::sync::atomic::Ordering::SeqCst)));
        assert!(t.check().is_ok());
        assert!(t.cancel(), "a cancel before the commit point takes effect");
        assert!(woken.load(std::sync::atomic::Ordering::SeqCst), "the cancel wakes the blocked source");
        assert!(matches!(t.check(), Err(MigrationError::Cancelled)));
        assert!(matches!(t.commit(), Err(MigrationError::Cancelled)), "no commit after a cancel");

        let t = CancelToken::default();
        t.commit().unwrap();
        assert!(!t.cancel(), "a cancel after the commit point is too late");
        assert!(!t.is_cancelled());
    }
}
