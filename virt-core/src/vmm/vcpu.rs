//! vCPU threads: the run loop that routes exits to the buses, and the control that pauses, resumes and
//! stops them.
//!
//! A vCPU blocked in the hypervisor is kicked out with a real-time signal whose handler does nothing;
//! the run returns `Interrupted` and the thread checks its control state. Because a signal sent just
//! before the thread enters the hypervisor would be lost, the controller repeats the kick until every
//! thread has acknowledged (parked or exited).
//!
//! Throttling (auto-converge of a live migration, [`VcpuControl::set_throttle`]): a throttle thread
//! kicks every vCPU out of the hypervisor with the same signal after the running part of each
//! [`THROTTLE_SLICE`] (`(100 - p)`% of it, at least [`THROTTLE_MIN_RUN`]); a kicked vCPU measures
//! how long it actually ran since its last sleep (`r`, which a late kick on a loaded host makes
//! longer than asked) and sleeps `r * p / (100 - p)` before it enters again, so at `p` percent it
//! spends `p`% of its time outside `KVM_RUN` however late the kicks come (QEMU sleeps by the same
//! ratio). A kick lost just before `KVM_RUN` is repeated by the next period's.

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
/// The shortest running part between two throttle kicks (at 99% the slice stretches to 100 ms).
pub const THROTTLE_MIN_RUN: Duration = Duration::from_millis(1);
/// The longest single throttle sleep.
const THROTTLE_MAX_SLEEP: Duration = Duration::from_secs(1);
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
    /// Throttle kicks so far: a vCPU that has not seen the latest sleeps.
    kicks: u64,
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

    /// The throttle thread: kicks the vCPUs after each running part until the throttle is 0 or
    /// the vCPUs stop.
    fn throttle_loop(&self) {
        loop {
            let pct = {
                let st = lock(&self.state);
                if st.throttle == 0 || st.stop {
                    return;
                }
                st.throttle
            };
            let run = (THROTTLE_SLICE * u32::from(100 - pct) / 100).max(THROTTLE_MIN_RUN);
            self.wait_until(Instant::now() + run);
            {
                let mut st = lock(&self.state);
                if st.throttle == 0 || st.stop {
                    return;
                }
                st.kicks = st.kicks.wrapping_add(1);
            }
            self.kick_all();
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

    /// Parks the calling vCPU while paused, and after a throttle kick sleeps by the throttle's
    /// ratio of the time it ran; returns false when it must stop.
    fn checkpoint(&self, t: &mut ThrottleSeen) -> bool {
        let mut st = lock(&self.state);
        if st.throttle == 0 {
            t.ran_since = None;
        } else {
            let now = Instant::now();
            match t.ran_since {
                None => {
                    // Throttled from now on: count from here.
                    t.ran_since = Some(now);
                    t.kicks = st.kicks;
                }
                Some(since) if t.kicks != st.kicks => {
                    t.kicks = st.kicks;
                    let p = u32::from(st.throttle);
                    let sleep = ((now - since) * p / (100 - p)).min(THROTTLE_MAX_SLEEP);
                    let until = now + sleep;
                    while !st.paused && !st.stop && st.throttle != 0 {
                        let now = Instant::now();
                        if now >= until {
                            break;
                        }
                        st = self
                            .cv
                            .wait_timeout(st, until - now)
                            .map(|r| r.0)
                            .unwrap_or_else(|e| e.into_inner().0);
                    }
                    t.ran_since = Some(Instant::now());
                }
                Some(_) => {}
            }
        }
        if st.paused && !st.stop {
            st.parked += 1;
            self.cv.notify_all();
            while st.paused && !st.stop {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.parked -= 1;
            // Time parked is not time run: the throttle counts afresh.
            t.ran_since = None;
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

/// A vCPU thread's view of the throttle: the last kick it obeyed, and since when it runs.
#[derive(Default)]
struct ThrottleSeen {
    kicks: u64,
    ran_since: Option<Instant>,
}

fn run_vcpu(id: u8, shared: SharedVcpu, io: &Bus, mmio: &Bus, ctl: &VcpuControl, exit: &ExitLatch) {
    let mut throttle = ThrottleSeen::default();
    loop {
        if exit.get().is_some() || !ctl.checkpoint(&mut throttle) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::{
        CpuId, FpuState, LapicState, MsrEntry, Result, SpecialRegisters, StandardRegisters,
    };
    use std::sync::atomic::{AtomicU64, Ordering};

    /// What the fake answers for the register calls the throttle never makes.
    fn unsupported(op: &'static str) -> crate::hypervisor::HypervisorError {
        crate::hypervisor::HypervisorError::Call { op, source: std::io::ErrorKind::Unsupported.into() }
    }

    /// A vCPU whose "guest" sleeps in short naps (a kick interrupts a nap with EINTR, as it
    /// interrupts KVM_RUN) and counts the nanoseconds spent inside `run`.
    struct Fake(Arc<AtomicU64>);

    impl Vcpu for Fake {
        fn run(&mut self) -> Result<VmExit<'_>> {
            let t = Instant::now();
            let nap = libc::timespec { tv_sec: 0, tv_nsec: 100_000 };
            // SAFETY: a plain sleep; the timespec lives on the stack for the call.
            while unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) } == 0
                && t.elapsed() < Duration::from_millis(50)
            {}
            self.0.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            Ok(VmExit::Interrupted)
        }
        fn get_regs(&self) -> Result<StandardRegisters> {
            Err(unsupported("get_regs"))
        }
        fn set_regs(&self, _: &StandardRegisters) -> Result<()> {
            Err(unsupported("set_regs"))
        }
        fn get_sregs(&self) -> Result<SpecialRegisters> {
            Err(unsupported("get_sregs"))
        }
        fn set_sregs(&self, _: &SpecialRegisters) -> Result<()> {
            Err(unsupported("set_sregs"))
        }
        fn set_fpu(&self, _: &FpuState) -> Result<()> {
            Err(unsupported("set_fpu"))
        }
        fn set_cpuid(&self, _: &CpuId) -> Result<()> {
            Err(unsupported("set_cpuid"))
        }
        fn set_msrs(&self, _: &[MsrEntry]) -> Result<()> {
            Err(unsupported("set_msrs"))
        }
        fn get_msrs(&self, _: &[u32]) -> Result<Vec<MsrEntry>> {
            Err(unsupported("get_msrs"))
        }
        fn get_lapic(&self) -> Result<LapicState> {
            Err(unsupported("get_lapic"))
        }
        fn set_lapic(&self, _: &LapicState) -> Result<()> {
            Err(unsupported("set_lapic"))
        }
        fn save_state(&self) -> Result<VcpuState> {
            Err(unsupported("save_state"))
        }
        fn restore_state(&self, _: &VcpuState) -> Result<()> {
            Err(unsupported("restore_state"))
        }
        fn set_immediate_exit(&mut self, _: bool) {}
    }

    /// The share of `over` the vCPU spent inside `run`.
    fn share_inside(inside: &AtomicU64, over: Duration) -> f64 {
        let before = inside.load(Ordering::Relaxed);
        std::thread::sleep(over);
        (inside.load(Ordering::Relaxed) - before) as f64 / over.as_nanos() as f64
    }

    #[test]
    fn a_throttled_vcpu_spends_the_throttle_outside_the_hypervisor_until_it_ends() {
        install_kick_handler().unwrap();
        let ctl = VcpuControl::new();
        let inside = Arc::new(AtomicU64::new(0));
        ctl.spawn(0, Box::new(Fake(inside.clone())), Bus::new(), Bus::new(), ExitLatch::new()).unwrap();
        let full = share_inside(&inside, Duration::from_millis(300));
        ctl.set_throttle(60).unwrap();
        assert_eq!(ctl.throttle(), 60);
        std::thread::sleep(Duration::from_millis(50));
        let at_60 = share_inside(&inside, Duration::from_millis(600));
        ctl.set_throttle(0).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let after = share_inside(&inside, Duration::from_millis(300));
        // A pause still works while throttled, and wakes a sleeping vCPU at once.
        ctl.set_throttle(THROTTLE_MAX + 1).unwrap();
        assert_eq!(ctl.throttle(), THROTTLE_MAX, "capped");
        let t = Instant::now();
        ctl.pause();
        assert!(t.elapsed() < Duration::from_millis(500), "pause took {:?}", t.elapsed());
        ctl.resume();
        ctl.stop();
        eprintln!("inside run: {full:.2} unthrottled, {at_60:.2} at 60%, {after:.2} after");
        // Naps and exits cost something even unthrottled: compare with that.
        assert!(full > 0.5, "{full}");
        let ratio = at_60 / full;
        assert!((0.25..=0.6).contains(&ratio), "60% throttle: {ratio:.2} of the unthrottled time inside");
        assert!(after > full * 0.75, "full speed once the throttle ends: {after:.2} against {full:.2}");
    }
}
