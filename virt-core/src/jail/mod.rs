//! Confinement of a process that runs a machine (the launcher, or any embedder): a seccomp filter
//! per thread role, capabilities dropped on every thread, `no_new_privs`, and a record of any
//! forbidden system call (see docs/confinement.md).
//!
//! Nothing happens until [`enable`] is called: then every thread virt-core starts for a machine
//! (vCPUs, device workers, control and console threads, waiters) calls [`enter`] with its
//! [`Role`] before it does its work, and the embedder calls `enter(Role::Main)` on its own
//! threads once the machine started (after QEMU was spawned: filters are inherited across
//! `execve`). A thread inherits its creator's filter and narrows it with its own.
//!
//! A forbidden call raises SIGSYS (`SECCOMP_RET_TRAP`); the handler passes the call's number, the
//! thread and its role to a reporter thread, which writes `seccomp.json` into the run directory,
//! calls the embedder's hook (the launcher writes `exit.json` saying `Failed`) and ends the process
//! with status [`VIOLATION_EXIT_CODE`].

mod caps;
pub mod cgroup;
pub mod netns;
pub mod pidns;
mod report;
pub mod roles;
pub mod rootfs;
pub mod syscalls;
pub mod user;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

pub use caps::{drop_capabilities, CapsError};
pub use netns::{NetNs, NetNsError};
pub use pidns::host_pid;
pub use report::{read_violation, Violation, SECCOMP_FILE, VIOLATION_EXIT_CODE};
pub use rootfs::{Access, RootSwitch, RootfsError, View};
pub use user::{Identity, UidRange, UserError};

/// What a thread does, and so which system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The main thread and housekeeping threads (signals, waiters, the reporter).
    Main,
    /// A vCPU thread.
    Vcpu,
    /// A device worker (virtio-blk).
    Worker,
    /// The control socket's threads and QEMU's QMP reader.
    Control,
    /// The console socket's threads and QEMU's serial relay.
    Console,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [Role::Main, Role::Vcpu, Role::Worker, Role::Control, Role::Console];

    /// The role's name (`vcpu`, `worker`, ...), as in `seccomp.json`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Vcpu => "vcpu",
            Role::Worker => "worker",
            Role::Control => "control",
            Role::Console => "console",
        }
    }

    /// The role by its name.
    pub fn from_name(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The system calls the role may make (the base list, its own, and those of the roles whose
    /// threads it starts: a vCPU starts device workers, the main thread starts everything).
    pub fn calls(self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = roles::base::CALLS.to_vec();
        let own: &[&[&str]] = match self {
            Role::Main => &[
                roles::main::CALLS,
                roles::vcpu::CALLS,
                roles::worker::CALLS,
                roles::control::CALLS,
                roles::console::CALLS,
            ],
            Role::Vcpu => &[roles::vcpu::CALLS, roles::worker::CALLS],
            Role::Worker => &[roles::worker::CALLS],
            Role::Control => &[roles::control::CALLS],
            Role::Console => &[roles::console::CALLS],
        };
        for list in own {
            v.extend_from_slice(list);
        }
        v.sort_unstable();
        v.dedup();
        v
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why confinement could not be set up; a thread that cannot confine itself ends the process.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// An allowlist names a call this architecture does not have.
    #[error("the {role} allowlist names {name:?}, which is not an x86_64 system call")]
    UnknownCall {
        /// The role.
        role: Role,
        /// The name in its list.
        name: &'static str,
    },
    /// seccompiler refused the filter.
    #[error("build the {role} seccomp filter: {source}")]
    Build {
        /// The role.
        role: Role,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
    /// The kernel refused the filter.
    #[error("install the {role} seccomp filter on thread {thread:?}: {source}")]
    Install {
        /// The role.
        role: Role,
        /// The thread's name.
        thread: String,
        /// seccompiler's error.
        source: seccompiler::Error,
    },
    /// Capabilities could not be dropped.
    #[error("thread {thread:?} ({role}): {source}")]
    Caps {
        /// The role.
        role: Role,
        /// The thread's name.
        thread: String,
        /// What failed.
        source: CapsError,
    },
    /// The SIGSYS reporter could not be set up.
    #[error("set up the seccomp violation reporter: {op}: {source}")]
    Reporter {
        /// What failed.
        op: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// [`enable`] was called twice.
    #[error("confinement is already enabled in this process")]
    AlreadyEnabled,
    /// The network namespace could not be entered.
    #[error("confinement: {0}")]
    NetNs(#[from] NetNsError),
    /// The machine's view of the filesystem could not be built.
    #[error("confinement: {0}")]
    Rootfs(#[from] RootfsError),
    /// The machine's user could not be taken on.
    #[error("confinement: {0}")]
    User(#[from] UserError),
    /// The keeper's death could not be tied to this process again after the switch of user.
    #[error("confinement: {0}")]
    PidNs(#[from] pidns::PidNsError),
}

/// Called by the reporter thread with the violation, before the process ends (the launcher writes
/// its `exit.json` here).
pub type ViolationHook = Box<dyn Fn(&Violation) + Send + Sync>;

/// How to confine.
#[derive(Default)]
pub struct JailOptions {
    /// Where `seccomp.json` goes (the run directory); `None`: stderr only.
    pub run_dir: Option<PathBuf>,
    /// Capabilities (numbers, e.g. `CAP_NET_ADMIN` = 12) each thread keeps; the rest are dropped.
    pub keep_caps: Vec<u32>,
    /// Called with a violation before the process ends.
    pub on_violation: Option<ViolationHook>,
    /// Test hook: the first thread entering this role makes a call no role allows
    /// (`socket(AF_INET)`), to prove the filter and the record end to end. The launcher sets it
    /// from `VIRT_JAIL_SELFTEST=<role>`.
    pub selftest: Option<Role>,
    /// The network namespace to join (the pod network's, e.g. `/run/netns/<pod>`), before any
    /// thread starts and so before any tap is opened. `None`: a fresh, empty namespace when
    /// [`JailOptions::interfaces`] is false, else the node's (see [`netns`]).
    pub netns: Option<PathBuf>,
    /// The machine has NICs (decides what `netns: None` means).
    pub interfaces: bool,
    /// The machine's view of the filesystem (a mount namespace with only these files, entered
    /// after the network namespace); `None`: the host's.
    pub view: Option<View>,
    /// The unprivileged user to become, after the view is built; `None`: stay as is.
    pub identity: Option<Identity>,
}

impl JailOptions {
    /// Where the machine's network lives under these options.
    pub fn net_plan(&self) -> NetNs {
        NetNs::plan(self.netns.as_deref(), self.interfaces)
    }
}

struct State {
    programs: Vec<BpfProgram>,
    keep_caps: u64,
    selftest: Option<Role>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// The compiled filter of `role`: its allowlist, `socket` only for AF_UNIX, anything else traps.
pub fn filter(role: Role) -> Result<BpfProgram, JailError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in role.calls() {
        let nr = syscalls::number(name).ok_or(JailError::UnknownCall { role, name })?;
        rules.insert(nr, vec![]);
    }
    let build = |source| JailError::Build { role, source };
    if let Some(socket) = rules.get_mut(&libc::SYS_socket) {
        let unix = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_UNIX as u64)
            .map_err(|e| build(e.into()))?;
        *socket = vec![SeccompRule::new(vec![unix]).map_err(|e| build(e.into()))?];
    }
    // Every role may ask whether a descriptor is open (`fcntl(fd, F_GETFD)`, nothing else of
    // fcntl unless its list says so): a debug build's `OwnedFd::drop` asks before closing, so a
    // worker dropping its epoll descriptor at a stop trapped in debug builds only.
    if let std::collections::btree_map::Entry::Vacant(e) = rules.entry(libc::SYS_fcntl) {
        let getfd = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::F_GETFD as u64)
            .map_err(|e| build(e.into()))?;
        e.insert(vec![SeccompRule::new(vec![getfd]).map_err(|e| build(e.into()))?]);
    }
    let f = SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| build(e.into()))?;
    BpfProgram::try_from(f).map_err(|e| build(e.into()))
}

/// Turns confinement on for this process: enters the network namespace of [`JailOptions::net_plan`],
/// the view of the filesystem and the user of the options (so call it before the process starts
/// any thread), compiles every role's filter, installs the SIGSYS
/// reporter and makes glibc's malloc stop probing the CPU count (a hidden `open` of
/// `/sys/devices/system/cpu/online` when a thread first needs an arena). Call it before the machine
/// starts; threads started afterwards confine themselves with [`enter`].
pub fn enable(opts: JailOptions) -> Result<(), JailError> {
    if STATE.get().is_some() {
        return Err(JailError::AlreadyEnabled);
    }
    let programs = Role::ALL.into_iter().map(filter).collect::<Result<Vec<_>, _>>()?;
    netns::enter(&opts.net_plan())?;
    if let Some(view) = &opts.view {
        rootfs::enter(view)?;
    }
    if let Some(id) = &opts.identity {
        user::switch(id)?;
        // The switch cleared the parent-death signal: tie this process to its keeper again.
        pidns::rearm()?;
    }
    // SAFETY: mallopt only sets a malloc tunable; M_ARENA_MAX takes a positive count.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 8) };
    let keep_caps = opts.keep_caps.iter().filter(|&&c| c < 64).fold(0u64, |m, &c| m | 1 << c);
    STATE
        .set(State { programs, keep_caps, selftest: opts.selftest })
        .map_err(|_| JailError::AlreadyEnabled)?;
    report::install(opts.run_dir, opts.on_violation)
}

/// Whether [`enable`] was called in this process.
pub fn enabled() -> bool {
    STATE.get().is_some()
}

/// Confines the calling thread to `role`: drops its capabilities (all but the kept ones), sets
/// `no_new_privs` and installs the role's filter. Does nothing unless [`enable`] was called.
pub fn enter(role: Role) -> Result<(), JailError> {
    let Some(st) = STATE.get() else { return Ok(()) };
    let thread = || std::thread::current().name().unwrap_or("?").to_string();
    caps::drop_capabilities(st.keep_caps).map_err(|source| JailError::Caps {
        role,
        thread: thread(),
        source,
    })?;
    report::set_role(role);
    seccompiler::apply_filter(&st.programs[role.index()]).map_err(|source| JailError::Install {
        role,
        thread: thread(),
        source,
    })?;
    if st.selftest == Some(role) {
        // SAFETY: a plain system call with integer arguments; the filter traps it (the point of
        // the self-test), and if it did not, the descriptor is closed at once.
        let fd = unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
        if fd >= 0 {
            // SAFETY: closes the descriptor just opened, owned by nobody else.
            unsafe { libc::close(fd as i32) };
        }
    }
    Ok(())
}

/// [`enter`], and if the thread cannot be confined, the process ends (fail closed) with the reason
/// on stderr and in the run directory's `seccomp.json`. For threads virt-core starts.
pub fn enter_or_die(role: Role) {
    if let Err(e) = enter(role) {
        report::die(&format!("cannot confine a thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_allowlist_compiles_and_names_real_calls() {
        for r in Role::ALL {
            let p = filter(r).unwrap();
            assert!(!p.is_empty(), "{r}");
            assert!(p.len() < 1000, "{r}: {} instructions", p.len());
        }
    }

    #[test]
    fn roles_are_narrower_than_main() {
        let main = Role::Main.calls();
        for r in Role::ALL {
            for c in r.calls() {
                assert!(
                    main.contains(&c),
                    "{r} allows {c} but main does not: a thread main starts would lose it"
                );
            }
        }
        assert!(!Role::Vcpu.calls().contains(&"openat"));
        assert!(!Role::Main.calls().contains(&"execve"));
    }

    #[test]
    fn a_worker_may_ask_whether_a_descriptor_is_open_and_drop_it() {
        // SAFETY: geteuid has no arguments and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "installing a filter on a test thread needs root here");
        let prog = filter(Role::Worker).unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let getfd = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            use std::os::fd::AsRawFd as _;
            // SAFETY: fcntl F_GETFD on a descriptor this thread owns.
            let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFD) };
            drop(f); // a debug build asks F_GETFD again, then closes
            r
        })
        .join()
        .unwrap();
        assert_eq!(getfd, libc::FD_CLOEXEC);
    }

    #[test]
    fn a_worker_may_read_and_write_a_unix_socket() {
        // The virtio-console worker moves the guest agent's bytes over a unix stream; std reads a
        // socket with recvfrom and writes it with sendto, which a jailed launcher once trapped (the
        // nested cloud-image test, scripts/nested/e2e-cloud.sh).
        // SAFETY: geteuid has no arguments and cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "installing a filter on a test thread needs root here");
        let prog = filter(Role::Worker).unwrap();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let echoed = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            use std::io::{Read as _, Write as _};
            let mut buf = [0u8; 4];
            (&a).read_exact(&mut buf).unwrap();
            (&a).write_all(&buf).unwrap();
            buf
        });
        use std::io::{Read as _, Write as _};
        b.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        b.read_exact(&mut back).unwrap();
        assert_eq!(&echoed.join().unwrap(), b"ping");
        assert_eq!(&back, b"ping");
        for c in ["recvfrom", "sendto"] {
            assert!(
                Role::Vcpu.calls().contains(&c),
                "a vCPU starts the console worker: it must allow {c} too"
            );
        }
    }

    #[test]
    fn syscall_names_round_trip() {
        assert_eq!(syscalls::number("socket"), Some(libc::SYS_socket));
        assert_eq!(syscalls::name(libc::SYS_ioctl), Some("ioctl"));
        assert_eq!(syscalls::name(100_000), None);
    }
}
