//! vCPU threads: `KVM_RUN` and the register and interrupt ioctls of their exits, device emulation
//! on the exit (the console's writes, eventfd signals), and, because a virtio device is activated by
//! the guest's `DRIVER_OK` write on a vCPU, what it takes to start that device's worker thread
//! (the worker narrows itself to [`super::worker`] at once).

/// The vCPU allowlist (with [`super::base`]).
pub const CALLS: &[&str] = &[
    "ioctl",
    // A kick from pause/stop interrupts KVM_RUN; the vCPU parks on a futex.
    "tgkill",
    // Console output goes to console.log and the console session socket.
    "sendto",
    "writev",
    // Activating a virtio device: its queue eventfds, an epoll and the worker thread.
    "eventfd2",
    "fcntl",
    "dup",
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
