//! The record of a forbidden system call. The filter traps (SIGSYS); the handler, which may only
//! make the calls every role allows, writes the call's number, its thread id and role to a pipe and
//! parks. A reporter thread (role main) turns that into `seccomp.json`, a line on stderr and the
//! embedder's hook, then ends the process.

use std::cell::Cell;
use std::io::Write as _;
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use super::{syscalls, JailError, Role, ViolationHook};

/// The file in the run directory that names the forbidden call.
pub const SECCOMP_FILE: &str = "seccomp.json";

/// The exit status of a process ended for a forbidden call (128 + SIGSYS).
pub const VIOLATION_EXIT_CODE: i32 = 128 + libc::SIGSYS;

/// A forbidden system call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Violation {
    /// Its number (x86_64).
    pub syscall: i64,
    /// Its name, or `unknown`.
    pub name: String,
    /// The role of the thread that made it.
    pub role: String,
    /// The thread's name.
    pub thread: String,
    /// The thread's id.
    pub tid: i32,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seccomp: thread {:?} (role {}, tid {}) made the forbidden system call {} ({})",
            self.thread, self.role, self.tid, self.name, self.syscall
        )
    }
}

/// Reads the `seccomp.json` of a run directory, if a violation was recorded there.
pub fn read_violation(run_dir: &Path) -> Option<Violation> {
    serde_json::from_slice(&std::fs::read(run_dir.join(SECCOMP_FILE)).ok()?).ok()
}

const NO_ROLE: u8 = u8::MAX;

thread_local! {
    // Const-initialised and without a destructor: safe to read from a signal handler.
    static ROLE: Cell<u8> = const { Cell::new(NO_ROLE) };
}

static REPORT_W: AtomicI32 = AtomicI32::new(-1);
static PARK_R: AtomicI32 = AtomicI32::new(-1);

pub(super) fn set_role(role: Role) {
    ROLE.with(|r| r.set(role as u8));
}

const RECORD: usize = 16;

/// Offset of `si_syscall` in the kernel's `siginfo_t` for SIGSYS on 64-bit: `si_signo`, `si_errno`,
/// `si_code` (12 bytes, padded to 16), then `_sigsys { void *_call_addr; int _syscall; ... }`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for an SA_SIGINFO handler; SIGSYS from seccomp
    // fills `_sigsys`, whose `_syscall` (an int) is at SI_SYSCALL_OFFSET.
    let nr = unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    // SAFETY: gettid takes no arguments (allowed in every role).
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let role = ROLE.with(|r| r.get());
    let mut rec = [0u8; RECORD];
    rec[0..4].copy_from_slice(&nr.to_ne_bytes());
    rec[4..8].copy_from_slice(&tid.to_ne_bytes());
    rec[8] = role;
    let w = REPORT_W.load(Ordering::SeqCst);
    // SAFETY: writes RECORD bytes from a local buffer to the report pipe (write is in every role).
    let n = unsafe { libc::write(w, rec.as_ptr().cast(), RECORD) };
    if n != RECORD as isize {
        // SAFETY: ends the process at once; exit_group is in every role.
        unsafe { libc::_exit(VIOLATION_EXIT_CODE) };
    }
    // Park until the reporter ends the process: nothing is ever written to the park pipe.
    let park = PARK_R.load(Ordering::SeqCst);
    let mut b = [0u8; 1];
    loop {
        // SAFETY: reads at most one byte into a local buffer (read is in every role).
        if unsafe { libc::read(park, b.as_mut_ptr().cast(), 1) } <= 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(VIOLATION_EXIT_CODE) };
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), std::io::Error> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors into a valid array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

static RUN_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

pub(super) fn install(run_dir: Option<PathBuf>, hook: Option<ViolationHook>) -> Result<(), JailError> {
    use std::os::fd::IntoRawFd as _;
    let err = |op| move |source| JailError::Reporter { op, source };
    let (report_r, report_w) = pipe().map_err(err("create the report pipe"))?;
    let (park_r, park_w) = pipe().map_err(err("create the park pipe"))?;
    // The write end of the park pipe stays open (and unused) for the life of the process.
    std::mem::forget(park_w);
    REPORT_W.store(report_w.into_raw_fd(), Ordering::SeqCst);
    PARK_R.store(park_r.into_raw_fd(), Ordering::SeqCst);
    let _ = RUN_DIR.set(run_dir.clone());
    // SAFETY: sigaction is plain data, filled below; the handler has the SA_SIGINFO signature and
    // only makes async-signal-safe calls (gettid, write, read, _exit).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(err("install the SIGSYS handler")(std::io::Error::last_os_error()));
        }
    }
    std::thread::Builder::new()
        .name("jail-reporter".into())
        .spawn(move || {
            block_async_signals();
            super::enter_or_die(Role::Main);
            let mut f = std::fs::File::from(report_r);
            let mut rec = [0u8; RECORD];
            if std::io::Read::read_exact(&mut f, &mut rec).is_err() {
                return;
            }
            let nr = i32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let tid = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
            let role = Role::ALL.into_iter().find(|r| *r as u8 == rec[8]).map_or("unconfined", |r| r.name());
            let thread = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .map(|s| s.trim_end().to_string())
                .unwrap_or_else(|_| "?".into());
            let v = Violation {
                syscall: i64::from(nr),
                name: syscalls::name(i64::from(nr)).unwrap_or("unknown").to_string(),
                role: role.into(),
                thread,
                tid,
            };
            record(run_dir.as_deref(), &v);
            if let Some(h) = hook {
                h(&v);
            }
            // SAFETY: ends the process without running destructors another thread may be inside.
            unsafe { libc::_exit(VIOLATION_EXIT_CODE) };
        })
        .map_err(err("spawn the reporter thread"))?;
    Ok(())
}

/// The reporter takes no process-directed signal (SIGTERM and the like are the embedder's, which
/// may be blocked everywhere else and taken with sigwait); faults and SIGSYS stay deliverable.
fn block_async_signals() {
    // SAFETY: sigset_t is plain data, filled by sigfillset before use; pthread_sigmask changes the
    // calling thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        for s in [libc::SIGSYS, libc::SIGSEGV, libc::SIGBUS, libc::SIGFPE, libc::SIGILL, libc::SIGABRT] {
            libc::sigdelset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn record(run_dir: Option<&Path>, v: &Violation) {
    let _ = writeln!(std::io::stderr(), "{v}");
    let Some(dir) = run_dir else { return };
    if let Ok(mut json) = serde_json::to_vec(v) {
        json.push(b'\n');
        let tmp = dir.join(format!(".{SECCOMP_FILE}.tmp"));
        if std::fs::write(&tmp, &json).is_ok() {
            let _ = std::fs::rename(&tmp, dir.join(SECCOMP_FILE));
        }
    }
}

/// Ends the process because a thread could not be confined (fail closed).
pub(super) fn die(msg: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "{msg}");
    if let Some(Some(dir)) = RUN_DIR.get() {
        let _ = std::fs::write(dir.join("confine-error.txt"), format!("{msg}\n"));
    }
    // SAFETY: ends the process at once.
    unsafe { libc::_exit(VIOLATION_EXIT_CODE) }
}
