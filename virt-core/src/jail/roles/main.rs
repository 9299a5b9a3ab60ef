//! The main thread and the launcher's housekeeping threads (signals, the machine's waiter, the
//! SIGSYS reporter): after the machine started they serve the run directory (bind the sockets, write
//! `exit.json`, remove the sockets), stop and reap QEMU, tear the machine down. They also start the
//! control and console threads, so this list holds those roles' calls too (a thread inherits its
//! creator's filter and narrows it with its own). No `execve`: nothing confined starts a program;
//! `socket` is limited to AF_UNIX in `jail::filter`.

/// The main allowlist (with [`super::base`] and every other role's).
pub const CALLS: &[&str] = &[
    "openat",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "mkdir",
    "mkdirat",
    "getdents64",
    "readlink",
    "readlinkat",
    "access",
    "faccessat2",
    "fchmod",
    "flock",
    "socket",
    "bind",
    "listen",
    "connect",
    "getsockname",
    "kill",
    "wait4",
    "waitid",
    "pipe2",
    "dup2",
    "dup3",
    "rt_sigaction",
    "rt_sigtimedwait",
    "prlimit64",
    "uname",
    "getuid",
    "geteuid",
    "getcwd",
];
