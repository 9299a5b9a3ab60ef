//! Console threads: the console socket's acceptor and session, and QEMU's serial relay: move bytes
//! between sockets the thread already holds and the console log.

/// The console allowlist (with [`super::base`]).
pub const CALLS: &[&str] = &[
    "accept4",
    "poll",
    "ppoll",
    "recvfrom",
    "sendto",
    "shutdown",
    "setsockopt",
    "ioctl",
    "fcntl",
    "writev",
    "clone",
    "clone3",
    "set_robust_list",
    "rseq",
    "prctl",
    // The new thread confines itself: it can only lose capabilities and add filters.
    "capset",
    "seccomp",
    "sched_getaffinity",
];
