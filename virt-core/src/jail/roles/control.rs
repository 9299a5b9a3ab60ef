//! Control threads: the control socket's acceptor and its connection threads (status, pause,
//! powerDown, stop, event streams) and QEMU's QMP reader. They act on the machine: kick vCPUs
//! (tgkill), read the dirty log and device state (ioctl), talk QMP on an open socket, and take a
//! snapshot of the running machine (`VmHandle::snapshot`: create the snapshot directory, write the
//! sparse memory file and the state file, sync, rename into place) or send it to a migration
//! peer over a stream it was handed. Opening files is safe to allow here because the launcher's
//! jail (docs/confinement.md) leaves only the machine's own files in view.

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
    // A live migration hands a vhost-net NIC's queues to the userspace worker, started here.
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    // Snapshots (tests/confined_snapshot.rs).
    "openat",
    "mkdir",
    "mkdirat",
    "newfstatat",
    "statx",
    "fstat",
    "lseek",
    "ftruncate",
    "fallocate",
    "pwrite64",
    "pwritev",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
];
