//! Control threads: the control socket's acceptor and its connection threads (status, pause,
//! powerDown, stop, event streams) and QEMU's QMP reader. They act on the machine: kick vCPUs
//! (tgkill), read the dirty log and device state (ioctl), talk QMP on an open socket.

/// The control allowlist (with [`super::base`]).
pub const CALLS: &[&str] = &[
    "accept4",
    "poll",
    "ppoll",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "shutdown",
    "setsockopt",
    "getsockopt",
    "ioctl",
    "fcntl",
    "tgkill",
    "writev",
    // A thread per connection.
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
