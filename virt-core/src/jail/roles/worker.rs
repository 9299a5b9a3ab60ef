//! Device-worker threads (virtio-blk, virtio-console): wait on the queue's eventfd with epoll, read
//! and write the disk image they already hold open (raw or qcow2: allocation and flushes too), or
//! the guest agent's unix socket (`recvfrom`, `sendto`), signal the irqfd.

/// The device-worker allowlist (with [`super::base`]).
pub const CALLS: &[&str] = &[
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "lseek",
    "fsync",
    "fdatasync",
    "fallocate",
    "ftruncate",
    "fstat",
    "newfstatat",
    "statx",
    // virtio-console: the agent channel's host end is a unix stream (std reads it with `recvfrom`
    // and writes it with `sendto`, MSG_NOSIGNAL).
    "recvfrom",
    "sendto",
];
