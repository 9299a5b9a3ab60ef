//! The machine's own pid namespace. A process cannot move itself into a new pid namespace, only
//! its children, so [`split`] forks: the child is pid 1 of a new namespace and goes on to run the
//! machine (QEMU and swtpm start inside it and see nothing of the host's processes); the parent,
//! the *keeper*, stays outside, unconfined and single-threaded: it forwards SIGTERM and SIGINT,
//! waits for the child and hands its exit status back so the caller can clean up what only the
//! host can (the cgroup) and exit with the same status. The child leads a process group of its own
//! (the keeper is not in it), so ending the launcher by its group reaches the machine and leaves the
//! keeper to record how it died. Needs `CAP_SYS_ADMIN`; call it before any thread starts.

use std::sync::OnceLock;

static HOST_PID: OnceLock<u32> = OnceLock::new();

/// In the child: the read end of a pipe whose write end only the keeper holds; it hangs up when
/// the keeper is gone (see [`rearm`]).
static KEEPER_PIPE: OnceLock<std::os::fd::OwnedFd> = OnceLock::new();

/// This process's id as the host sees it (what goes into `launcher.pid` and the status): inside
/// its own pid namespace the process is pid 1 to itself.
pub fn host_pid() -> u32 {
    HOST_PID.get().copied().unwrap_or_else(std::process::id)
}

/// Which side of [`split`] the caller is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The child: pid 1 of the new namespace; carry on.
    Child,
    /// The keeper, after the child ended: the exit status to end with (the child's code, or 128 +
    /// the signal that killed it).
    Keeper {
        /// The status.
        status: i32,
        /// The child's host pid.
        child: u32,
    },
}

/// Why the namespace could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    /// A step failed.
    #[error("own pid namespace: {op}: {source}")]
    Step {
        /// What failed.
        op: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// The keeper ended before the child was tied to it again (see [`rearm`]).
    #[error("own pid namespace: the keeper is gone")]
    KeeperGone,
}

fn step(op: &'static str) -> PidNsError {
    PidNsError::Step { op, source: std::io::Error::last_os_error() }
}

fn signal_set(sigs: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t and the signals are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
    }
    set
}

/// Forks into a new pid namespace (see the module's doc). Returns [`Side::Child`] in the child and
/// [`Side::Keeper`] in the parent once the child has ended.
pub fn split() -> Result<Side, PidNsError> {
    let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD, libc::SIGHUP]);
    // SAFETY: sigset_t is plain data; pthread_sigmask fills `old`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: blocks the signals of a valid set and saves the previous mask into a valid sigset_t.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) } != 0 {
        return Err(step("block signals"));
    }
    let mut ends = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills two descriptors into a valid array.
    if unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        let e = step("pipe2");
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return Err(e);
    }
    use std::os::fd::FromRawFd as _;
    // SAFETY: pipe2 just made these descriptors; each is owned once.
    let (read_end, write_end) =
        unsafe { (std::os::fd::OwnedFd::from_raw_fd(ends[0]), std::os::fd::OwnedFd::from_raw_fd(ends[1])) };
    // SAFETY: unshare takes flags only; it affects the children made afterwards.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        let e = step("unshare CLONE_NEWPID");
        // SAFETY: restores the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return Err(e);
    }
    // SAFETY: the process is single-threaded here (the caller's contract), so the child may run
    // any code after fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(step("fork"));
    }
    if pid == 0 {
        drop(write_end);
        let _ = KEEPER_PIPE.set(read_end);
        // The host's /proc is still mounted: its `self` names this process as the host sees it.
        let me = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
            .unwrap_or_else(std::process::id);
        let _ = HOST_PID.set(me);
        // SAFETY: PR_SET_PDEATHSIG takes a signal number: if the keeper is killed, so is the child.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
            return Err(step("PR_SET_PDEATHSIG"));
        }
        // The launcher leads its own process group, as it does without the namespace: `launcher.pid`
        // names it, and whoever ends a launcher by its group (`kill -- -<pid>`) reaches it and
        // everything it started, while the keeper stays out to record the death.
        // SAFETY: setpgid on this process only; no memory is involved.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            return Err(step("setpgid"));
        }
        // SAFETY: restores the mask the caller had.
        if unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) } != 0 {
            return Err(step("restore the signal mask"));
        }
        return Ok(Side::Child);
    }
    // The keeper holds the write end until it exits (it never writes).
    drop(read_end);
    let _keeper_end = write_end;
    loop {
        let mut sig = 0;
        // SAFETY: `set` holds blocked signals and `sig` is a valid out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        match sig {
            libc::SIGTERM | libc::SIGINT => {
                // SAFETY: forwards a signal to the child this process made.
                unsafe { libc::kill(pid, sig) };
            }
            libc::SIGCHLD => {
                let mut st = 0;
                // SAFETY: waits for the child this process made, without blocking.
                let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
                if r == pid {
                    let status = if libc::WIFEXITED(st) {
                        libc::WEXITSTATUS(st)
                    } else if libc::WIFSIGNALED(st) {
                        128 + libc::WTERMSIG(st)
                    } else {
                        continue;
                    };
                    return Ok(Side::Keeper { status, child: pid as u32 });
                }
            }
            _ => {}
        }
    }
}

/// In the child of [`split`], after a change of user (which clears the parent-death signal): asks
/// again for SIGKILL when the keeper dies, then makes sure the keeper did not die in between (its
/// end of the pipe hung up). Does nothing outside such a child.
pub fn rearm() -> Result<(), PidNsError> {
    let Some(fd) = KEEPER_PIPE.get() else { return Ok(()) };
    // SAFETY: PR_SET_PDEATHSIG takes a signal number.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(step("PR_SET_PDEATHSIG"));
    }
    use std::os::fd::AsRawFd as _;
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: polls one valid pollfd without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n < 0 {
        return Err(step("poll the keeper's pipe"));
    }
    if n > 0 && p.revents & (libc::POLLHUP | libc::POLLIN) != 0 {
        return Err(PidNsError::KeeperGone);
    }
    Ok(())
}
