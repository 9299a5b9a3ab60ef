//! vCPU threads: the run loop that routes exits to the buses, and the control that pauses, resumes and
//! stops them.
//!
//! A vCPU blocked in the hypervisor is kicked out with a real-time signal whose handler does nothing;
//! the run returns `Interrupted` and the thread checks its control state. Because a signal sent just
//! before the thread enters the hypervisor would be lost, the controller repeats the kick until every
//! thread has acknowledged (parked or exited).
//!
//! Throttling (auto-converge of a live migration, [`VcpuControl::set_throttle`]): a throttle thread
//! cuts time into slices of [`THROTTLE_SLICE`]; after the running part of each slice it kicks every
//! vCPU out of the hypervisor with the same signal, and each vCPU sleeps out the rest of the slice
//! before it enters again, so at `p` percent a vCPU spends `p`% of each slice outside `KVM_RUN`.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::devices::{lock, Bus, ExitLatch, ExitReason};
use crate::hypervisor::{HypervisorError, Vcpu, VcpuState, VmExit};

/// Signal used to kick vCPU threads out of the hypervisor.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of the kick signal, once per process.
pub fn install_kick_handler() -> std::io::Result<()> {
    static DONE: OnceLock<Result<(), i32>> = OnceLock::new();
    let r = DONE.get_or_init(|| {
        vmm_sys_util::signal::register_signal_handler(kick_signal(), noop_handler).map_err(|e| e.errno())
    });
    r.map_err(std::io::Error::from_raw_os_error)
}

/// The throttle's time slice: at `p` percent each vCPU is out of the hypervisor for `p`% of it.
pub const THROTTLE_SLICE: Duration = Duration::from_millis(10);
/// The highest throttle (QEMU's `max-cpu-throttle` bound).
pub const THROTTLE_MAX: u8 = 99;

#[derive(Default)]
struct State {
    paused: bool,
    stop: bool,
    parked: usize,
    exited: usize,
    /// Throttle percentage (0: none).
    throttle: u8,
    /// The current slice's number, and when its sleeping part ends (None: no slice sleeps).
    slice: u64,
    sleep_until: Option<Instant>,
    /// vCPUs that began sleeping in the current slice.
    slept: usize,
}

/// Shared control of all vCPU threads of one VM.
#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<State>,
    cv: Condvar,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpus: Mutex<Vec<SharedVcpu>>,
    first_exit: OnceLock<Instant>,
    throttler: Mutex<Option<JoinHandle<()>>>,
}

/// A vCPU shared between its thread (which holds it while in the hypervisor) and the controller
/// (which reads and writes its state while the thread is parked).
type SharedVcpu = Arc<Mutex<Box<dyn Vcpu>>>;

impl VcpuControl {
    /// A control with no threads yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn n_threads(&self) -> usize {
        lock(&self.threads).len()
    }

    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the pthread_t comes from a JoinHandle we still own, so the thread has not been
            // joined and its id is valid; the signal's handler is installed and does nothing.
            unsafe {
                libc::pthread_kill(t.as_pthread_t(), kick_signal());
            }
        }
    }

    /// Kicks threads until `done(state)` holds.
    fn kick_until(&self, done: impl Fn(&State, usize) -> bool) {
        let n = self.n_threads();
        let mut st = lock(&self.state);
        while !done(&st, n) {
            drop(st);
            self.kick_all();
            st = lock(&self.state);
            if done(&st, n) {
                break;
            }
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(2))
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Stops every vCPU at its next exit and waits until all are parked.
    pub fn pause(&self) {
        lock(&self.state).paused = true;
        // A vCPU sleeping out a throttle slice parks at once.
        self.cv.notify_all();
        self.kick_until(|s, n| s.parked + s.exited >= n);
    }

    /// Marks the vCPUs paused before any thread runs (a restored VM that starts paused).
    pub fn preset_paused(&self) {
        lock(&self.state).paused = true;
    }

    /// Reads every vCPU's state; the vCPUs must be paused. Each vCPU first re-enters the hypervisor
    /// with immediate exit so an I/O exit the VMM completed is applied to its registers.
    pub fn save_states(&self) -> Result<Vec<VcpuState>, HypervisorError> {
        let vcpus = lock(&self.vcpus).clone();
        let mut out = Vec::new();
        for v in vcpus {
            let mut v = lock(&v);
            v.set_immediate_exit(true);
            let r = v.run().map(|_| ());
            v.set_immediate_exit(false);
            r?;
            out.push(v.save_state()?);
        }
        Ok(out)
    }

    /// Lets parked vCPUs run again.
    pub fn resume(&self) {
        lock(&self.state).paused = false;
        self.cv.notify_all();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).paused
    }

    /// Ends every vCPU thread and joins them.
    pub fn stop(&self) {
        {
            let mut st = lock(&self.state);
            st.stop = true;
        }
        self.cv.notify_all();
        self.kick_until(|s, n| s.exited >= n);
        let threads = std::mem::take(&mut *lock(&self.threads));
        for t in threads {
            let _ = t.join();
        }
        self.join_throttler();
    }

    /// Throttles the vCPUs to `percent` (capped at [`THROTTLE_MAX`]; 0 ends throttling and the
    /// vCPUs run at full speed at once). The first non-zero value starts the throttle thread.
    pub fn set_throttle(self: &Arc<Self>, percent: u8) -> std::io::Result<()> {
        let percent = percent.min(THROTTLE_MAX);
        {
            let mut st = lock(&self.state);
            if st.stop {
                return Ok(());
            }
            st.throttle = percent;
            if percent == 0 {
                st.sleep_until = None;
            }
        }
        self.cv.notify_all();
        if percent == 0 {
            self.join_throttler();
            return Ok(());
        }
        let mut t = lock(&self.throttler);
        if t.is_none() {
            let ctl = self.clone();
            *t = Some(std::thread::Builder::new().name("vcpu-throttle".into()).spawn(move || {
                crate::jail::enter_or_die(crate::jail::Role::Control);
                ctl.throttle_loop();
            })?);
        }
        Ok(())
    }

    /// The throttle percentage in force (0: none).
    pub fn throttle(&self) -> u8 {
        lock(&self.state).throttle
    }

    fn join_throttler(&self) {
        let t = lock(&self.throttler).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }

    /// The throttle thread: runs slices until the throttle is 0 or the vCPUs stop.
    fn throttle_loop(&self) {
        loop {
            let slice_start = Instant::now();
            let pct = {
                let st = lock(&self.state);
                if st.throttle == 0 || st.stop {
                    return;
                }
                st.throttle
            };
            let sleep = THROTTLE_SLICE * u32::from(pct) / 100;
            // The running part of the slice.
            self.wait_until(slice_start + (THROTTLE_SLICE - sleep));
            let until = Instant::now() + sleep;
            let n = self.n_threads();
            {
                let mut st = lock(&self.state);
                if st.throttle == 0 || st.stop {
                    return;
                }
                st.slice = st.slice.wrapping_add(1);
                st.sleep_until = Some(until);
                st.slept = 0;
            }
            // Kick until every running vCPU began its sleep (a kick landing just before a vCPU
            // enters the hypervisor is lost, so repeat it), or the slice ends.
            loop {
                self.kick_all();
                let mut st = lock(&self.state);
                let deadline = Instant::now() + Duration::from_millis(1);
                while st.slept + st.parked + st.exited < n && Instant::now() < deadline.min(until) {
                    let left = deadline.min(until).saturating_duration_since(Instant::now());
                    st = self.cv.wait_timeout(st, left).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
                }
                if st.slept + st.parked + st.exited >= n || Instant::now() >= until || st.throttle == 0 {
                    break;
                }
            }
            self.wait_until(until);
        }
    }

    /// Sleeps until `t`, or until the throttle ends or the vCPUs stop.
    fn wait_until(&self, t: Instant) {
        let mut st = lock(&self.state);
        while st.throttle != 0 && !st.stop {
            let now = Instant::now();
            if now >= t {
                return;
            }
            st = self.cv.wait_timeout(st, t - now).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// When vCPU 0 first exited to the VMM (for boot-latency measurements).
    pub fn first_exit(&self) -> Option<Instant> {
        self.first_exit.get().copied()
    }

    /// Parks the calling vCPU while paused, and sleeps out the current throttle slice once
    /// (`slept` is the last slice it slept in); returns false when it must stop.
    fn checkpoint(&self, slept: &mut u64) -> bool {
        let mut st = lock(&self.state);
        if let Some(until) = st.sleep_until.filter(|_| st.slice != *slept && st.throttle != 0) {
            *slept = st.slice;
            st.slept += 1;
            self.cv.notify_all();
            while !st.paused && !st.stop && st.throttle != 0 {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                st = self.cv.wait_timeout(st, until - now).map(|r| r.0).unwrap_or_else(|e| e.into_inner().0);
            }
        }
        if st.paused && !st.stop {
            st.parked += 1;
            self.cv.notify_all();
            while st.paused && !st.stop {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.parked -= 1;
        }
        !st.stop
    }

    fn mark_exited(&self) {
        lock(&self.state).exited += 1;
        self.cv.notify_all();
    }

    /// Starts a thread running `vcpu`.
    pub fn spawn(
        self: &Arc<Self>,
        id: u8,
        vcpu: Box<dyn Vcpu>,
        io: Bus,
        mmio: Bus,
        exit: Arc<ExitLatch>,
    ) -> std::io::Result<()> {
        let vcpu: SharedVcpu = Arc::new(Mutex::new(vcpu));
        lock(&self.vcpus).push(vcpu.clone());
        let ctl = self.clone();
        let h = std::thread::Builder::new().name(format!("vcpu{id}")).spawn(move || {
            crate::jail::enter_or_die(crate::jail::Role::Vcpu);
            run_vcpu(id, vcpu, &io, &mmio, &ctl, &exit);
            ctl.mark_exited();
            // Wake the VMM if this vCPU ended the VM.
            if exit.get().is_none() && !lock(&ctl.state).stop {
                exit.set(ExitReason::Error(format!("vCPU {id} stopped unexpectedly")));
            }
        })?;
        lock(&self.threads).push(h);
        Ok(())
    }
}

fn run_vcpu(id: u8, shared: SharedVcpu, io: &Bus, mmio: &Bus, ctl: &VcpuControl, exit: &ExitLatch) {
    let mut slept = 0u64;
    loop {
        if exit.get().is_some() || !ctl.checkpoint(&mut slept) {
            return;
        }
        let mut vcpu = lock(&shared);
        let r = vcpu.run();
        if id == 0 {
            let _ = ctl.first_exit.set(Instant::now());
        }
        match r {
            Ok(VmExit::IoIn(port, data)) => {
                if !io.read(u64::from(port), data) {
                    data.fill(0xff);
                }
            }
            Ok(VmExit::IoOut(port, data)) => {
                if !io.write(u64::from(port), data) {
                    log::trace!("unhandled port write {port:#x} {data:02x?}");
                }
            }
            Ok(VmExit::MmioRead(addr, data)) => {
                if !mmio.read(addr, data) {
                    log::debug!("unhandled MMIO read {addr:#x}");
                    data.fill(0xff);
                }
            }
            Ok(VmExit::MmioWrite(addr, data)) => {
                if !mmio.write(addr, data) {
                    log::debug!("unhandled MMIO write {addr:#x}");
                }
            }
            Ok(VmExit::Interrupted) => {}
            Ok(VmExit::Hlt) => {
                // Only without an in-kernel irqchip; with it the hypervisor waits for interrupts itself.
                std::thread::yield_now();
            }
            Ok(VmExit::Shutdown) => {
                exit.set(ExitReason::Reset);
                return;
            }
            Ok(VmExit::FailEntry(reason)) => {
                exit.set(ExitReason::Error(format!("vCPU {id}: entry failed, hardware reason {reason:#x}")));
                return;
            }
            Ok(VmExit::InternalError) => {
                let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or_default();
                exit.set(ExitReason::Error(format!("vCPU {id}: hypervisor internal error at rip {rip:#x}")));
                return;
            }
            Ok(VmExit::Other(what)) => {
                exit.set(ExitReason::Error(format!("vCPU {id}: unexpected exit {what}")));
                return;
            }
            Err(e) => {
                exit.set(ExitReason::Error(format!("vCPU {id}: {e}")));
                return;
            }
        }
    }
}
