//! Calls every confined thread may make: memory (malloc arenas, thread stacks), futexes, time,
//! signal return (the vCPU kick and the SIGSYS reporter), writing to descriptors it already holds
//! (stderr, eventfds, pipes) and ending itself.

/// The base allowlist, in every role.
pub const CALLS: &[&str] = &[
    "read",
    "write",
    "close",
    "futex",
    "mmap",
    "munmap",
    "mremap",
    "mprotect",
    "madvise",
    "brk",
    "rt_sigreturn",
    "rt_sigprocmask",
    "sigaltstack",
    "exit",
    "exit_group",
    "gettid",
    "getpid",
    "clock_gettime",
    "clock_nanosleep",
    "nanosleep",
    "sched_yield",
    "restart_syscall",
    "getrandom",
];
