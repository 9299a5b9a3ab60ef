//! `virt-launcher`: one VM per process. Parsing and wiring only; the VMM lives in `virt-core`.
//!
//! Two modes: direct (`--kernel ...`: the native microVM, console on stdin/stdout) and supervised
//! (`--spec spec.json --run-dir DIR`: any MachineSpec on the native VMM or QEMU, served over the
//! run directory's sockets by `virt_core::machine::supervisor`; see docs/launcher.md).

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use virt_core::agent::{Agent, AgentMachine, AgentOptions};
use virt_core::block::{BlockBackend, RawFile};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::jail::cgroup::{self, Cgroup};
use virt_core::jail::{self, JailOptions, Role};
use virt_core::machine::accel::HostVirt;
use virt_core::machine::native::NativeBackend;
use virt_core::machine::qemu::{QemuBackend, QemuOptions};
use virt_core::machine::supervisor::migration::MIGRATE_SOCKET;
use virt_core::machine::supervisor::{graceful_stop, write_exit_record, ServeInfo, Supervisor, EXIT_FILE};
use virt_core::machine::{
    select_backend, BackendChoice, BootSpec, DiskOpener, Machine, MachineBackend, MachineExit, MachineSpec,
};
use virt_core::vmm::boot::{BootPath, KernelConfig};
use virt_core::vmm::{ExitReason, MicroVm, Payload, VmConfig};

mod errors;
mod sandbox;
mod terminal;

use errors::LauncherError;
use terminal::{RawStdout, TermGuard};

/// `eprintln!` that never panics: a supervised launcher outlives the daemon that may hold its stderr
/// pipe, and a write error to a closed pipe must not take the VM down.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Boots a Linux kernel in a KVM microVM; the serial console is this process's stdin/stdout.
/// With `--spec` and `--run-dir`, runs any machine spec (native microVM or QEMU) supervised: control
/// and console over unix sockets in the run directory (docs/launcher.md).
///
/// Exits 0 when the guest powers off or reboots (or is stopped), 1 on any error.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kernel: a bzImage or an ELF vmlinux.
    #[arg(long, required_unless_present = "spec", conflicts_with = "spec")]
    kernel: Option<PathBuf>,
    /// Supervised mode: the MachineSpec to run, as JSON.
    #[arg(long, requires = "run_dir")]
    spec: Option<PathBuf>,
    /// Supervised mode: the VM's run directory (lock, pid, console.log, control.sock, console.sock,
    /// exit.json).
    #[arg(long, requires = "spec")]
    run_dir: Option<PathBuf>,
    /// Supervised mode: the engine (auto: the native microVM when it can run the spec on hardware
    /// KVM, else QEMU).
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// Supervised mode: allow QEMU's software emulation where hardware KVM is unusable (KubeVirt's
    /// useEmulation).
    #[arg(long)]
    allow_emulation: bool,
    /// Supervised mode: seconds a SIGTERM lets the guest power down before the machine is stopped.
    #[arg(long, default_value_t = 30)]
    grace_period: u64,
    /// Initramfs to hand to the kernel.
    #[arg(long)]
    initramfs: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0 panic=-1")]
    cmdline: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u8,
    /// A raw disk image, `PATH[,readonly]`; repeat for more disks (vda, vdb, ...).
    #[arg(long = "disk", value_name = "PATH[,readonly]")]
    disks: Vec<String>,
    /// Boot protocol for a bzImage: auto (PVH via a host-decompressed, cached vmlinux when possible),
    /// pvh, or linux64 (the guest decompresses itself).
    #[arg(long, default_value = "auto")]
    boot_path: BootPath,
    /// Where decompressed kernels are cached [default: $VIRT_CACHE_DIR/kernels or ~/.cache/virt-rs/kernels].
    #[arg(long)]
    kernel_cache: Option<PathBuf>,
    /// Do not cache decompressed kernels.
    #[arg(long)]
    no_kernel_cache: bool,
    /// The KVM device node.
    #[arg(long, default_value = virt_core::hypervisor::kvm::KVM_PATH)]
    kvm_device: String,
    /// Back guest RAM with huge pages even where THP is madvise-only (faster guest boots, slower
    /// first touch of each 2 MiB).
    #[arg(long)]
    huge_pages: bool,
    /// Only decompress the kernel into the cache (no VM, no /dev/kvm needed) and print the cached path.
    #[arg(long)]
    prepare_kernel: bool,
    /// Debugging only: run without confinement (no seccomp filters, capabilities kept, no cgroup);
    /// see docs/confinement.md.
    #[arg(long)]
    no_confine: bool,
    /// Supervised mode: treat /dev/kvm as hardware KVM when it opens, even if /proc/cpuinfo shows no
    /// vmx/svm (a nested hypervisor that hides the flag; the tests' tiny guests on such hosts).
    /// Also set by `VIRT_LAUNCHER_TRUST_KVM=true`, which the node's launchers inherit.
    #[arg(long)]
    trust_kvm: bool,
    /// Supervised mode: the network namespace to run in (e.g. `/run/netns/<pod>`), joined before
    /// any tap is opened. Without it a machine with no interfaces gets a fresh, empty namespace and
    /// one with interfaces stays in the node's (docs/confinement.md).
    #[arg(long, requires = "spec")]
    netns: Option<PathBuf>,
    /// Supervised mode: start the machine from a live migration instead of booting it: listen on
    /// `migrate.sock` in the run directory for the source launcher's stream (docs/migration.md).
    #[arg(long, requires = "spec")]
    incoming: bool,
    /// With `--incoming`: the source may switch to post-copy (KubeVirt's `allowPostCopy`); QEMU
    /// takes `postcopy-ram` and the jail holds `/dev/userfaultfd` for it.
    #[arg(long, requires = "incoming")]
    post_copy: bool,
    /// Supervised mode: the range of unprivileged uids launchers run as, `FIRST-LAST` (one per
    /// launcher; default 2000000000-2000065535).
    #[arg(long)]
    uid_range: Option<jail::UidRange>,
    /// Supervised mode: keep the machine's own namespaces and view of the filesystem but run as root.
    #[arg(long)]
    stay_root: bool,
    /// Supervised mode: no pid or mount namespace, no view of the filesystem and no user of its own
    /// (filters, capabilities and the cgroup stay; docs/confinement.md).
    #[arg(long)]
    no_namespaces: bool,
}

fn parse_disk(spec: &str) -> Result<Arc<dyn BlockBackend>, LauncherError> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| LauncherError::DiskPath(spec.into()))?;
    let mut read_only = false;
    for opt in parts {
        match opt {
            "readonly" | "ro" | "readonly=on" => read_only = true,
            "readonly=off" | "rw" => read_only = false,
            o => return Err(LauncherError::DiskOption { spec: spec.into(), option: o.into() }),
        }
    }
    Ok(Arc::new(RawFile::open(&PathBuf::from(path), read_only)?))
}

/// The environment variable that does what `--trust-kvm` does (the node's launchers inherit it).
const TRUST_KVM_ENV: &str = "VIRT_LAUNCHER_TRUST_KVM";
/// Set in an unprivileged launcher pod: make no cgroup (virt-k8s `cluster::pod::POD_CGROUP_ENV`).
const POD_CGROUP_ENV: &str = "VIRT_LAUNCHER_POD_CGROUP";

fn default_cache() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("VIRT_CACHE_DIR") {
        return Some(PathBuf::from(d).join("kernels"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("virt-rs").join("kernels"))
}

fn monotonic_ns() -> u128 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn run(args: Args) -> Result<ExitReason, LauncherError> {
    let main_start = std::time::Instant::now();
    let prepare_only = args.prepare_kernel;
    let disks = args.disks.iter().map(|d| parse_disk(d)).collect::<Result<Vec<_>, _>>()?;
    let Some(kernel) = args.kernel else { return Err(LauncherError::NoKernel) };
    for p in std::iter::once(&kernel).chain(args.initramfs.iter()) {
        if !p.is_file() {
            return Err(LauncherError::NoSuchFile(p.clone()));
        }
    }
    let kernel = KernelConfig {
        kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        boot_path: args.boot_path,
        cache_dir: if args.no_kernel_cache { None } else { args.kernel_cache.or_else(default_cache) },
    };
    if prepare_only {
        match virt_core::vmm::boot::prepare_kernel(&kernel)? {
            Some(p) => println!("{}", p.display()),
            None => say!("virt-launcher: nothing to prepare (not a bzImage, or no kernel cache)"),
        }
        return Ok(ExitReason::PowerOff);
    }
    if !args.no_confine {
        confine_direct()?;
    }
    let hv = KvmHypervisor::with_path(&args.kvm_device)?;
    let cfg = VmConfig {
        memory_mib: args.memory,
        cpus: args.cpus,
        payload: Payload::Kernel(kernel),
        disks,
        nics: Vec::new(),
        agent: None,
        console: Box::new(RawStdout),
        track_dirty_pages: false,
        huge_pages: args.huge_pages,
    };
    let vm = MicroVm::new(&hv, cfg)?;
    let trace = std::env::var_os("VIRT_LAUNCHER_TRACE").is_some();
    if trace {
        if let Some(b) = vm.boot_info() {
            say!("virt-launcher: boot path: {}", b.how);
        }
        for (what, d) in vm.build_timings() {
            say!("virt-launcher:   {what}: {:.3} ms", d.as_secs_f64() * 1e3);
        }
        say!("virt-launcher: VM built in {:.3} ms", main_start.elapsed().as_secs_f64() * 1e3);
    }
    let handle = Arc::new(vm.start()?);
    let _term = TermGuard::new();
    let h = handle.clone();
    // Console input: a detached thread; it ends with the process.
    let _ = std::thread::Builder::new().name("console-in".into()).spawn(move || {
        jail::enter_or_die(Role::Console);
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 {
                break;
            }
            let mut off = 0;
            while off < n {
                off += h.console_input(&buf[off..n]);
                if off < n {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
    });
    jail::enter_or_die(Role::Main);
    let reason = handle.wait();
    if trace {
        if let Some(t) = handle.first_exit() {
            let ago = std::time::Instant::now().saturating_duration_since(t).as_nanos();
            say!(
                "virt-launcher: first guest exit at monotonic {} ns ({:.3} ms after main)",
                monotonic_ns() - ago,
                t.saturating_duration_since(main_start).as_secs_f64() * 1e3
            );
        }
        say!(
            "virt-launcher: VM ended ({reason:?}) at monotonic {} ns ({:.3} ms after main)",
            monotonic_ns(),
            main_start.elapsed().as_secs_f64() * 1e3
        );
    }
    drop(handle);
    if trace {
        say!("virt-launcher: torn down {:.3} ms after main", main_start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(reason)
}

/// SIGTERM and SIGINT, taken by a thread with sigwait: the first powers the guest down and stops it
/// after the grace period, a second stops it at once. Blocked in every thread (they inherit the mask
/// from `install`, which runs before any thread starts); child processes get a clean mask from std.
struct Termination {
    machine: Mutex<Option<Arc<dyn Machine>>>,
    requested: AtomicBool,
    grace: Duration,
}

fn term_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; SIGTERM and SIGINT are valid signals.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    set
}

impl Termination {
    fn install(grace: Duration) -> Result<Arc<Self>, LauncherError> {
        // SAFETY: setting SIGHUP's disposition to SIG_IGN installs no handler code; the launcher must
        // outlive its parent's session. SIGPIPE likewise: a vanished socket peer is an EPIPE error.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let set = term_signals();
        // SAFETY: blocks the signals in `set` (valid) for this thread, and so for threads started later.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(LauncherError::Signals {
                what: "block SIGTERM",
                source: std::io::Error::from_raw_os_error(r),
            });
        }
        let t = Arc::new(Self { machine: Mutex::new(None), requested: AtomicBool::new(false), grace });
        let t2 = t.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                jail::enter_or_die(Role::Main);
                let mut count = 0;
                loop {
                    let mut sig = 0;
                    // SAFETY: `set` is a valid sigset_t of blocked signals and `sig` a valid out-pointer.
                    if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                        continue;
                    }
                    count += 1;
                    t2.on_signal(sig, count);
                }
            })
            .map_err(|source| LauncherError::Signals { what: "spawn the signal thread", source })?;
        Ok(t)
    }

    fn on_signal(&self, sig: i32, count: u32) {
        let name = if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" };
        self.requested.store(true, Ordering::SeqCst);
        let m = self.machine.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match (m, count) {
            (None, _) => {
                say!("virt-launcher: {name} while starting: the machine is stopped once it runs")
            }
            (Some(m), 1) => {
                say!(
                    "virt-launcher: {name}: powering the guest down ({}s grace period)",
                    self.grace.as_secs()
                );
                let grace = self.grace;
                let _ = std::thread::Builder::new().name("graceful-stop".into()).spawn(move || {
                    graceful_stop(m.as_ref(), grace);
                });
            }
            (Some(m), _) => {
                say!("virt-launcher: {name} again: stopping the machine now");
                if let Err(e) = m.stop() {
                    say!("virt-launcher: {e}");
                }
            }
        }
    }

    /// The machine runs: a termination asked for while it started stops it now.
    fn running(&self, m: Arc<dyn Machine>) {
        *self.machine.lock().unwrap_or_else(|e| e.into_inner()) = Some(m.clone());
        if self.requested.load(Ordering::SeqCst) {
            if let Err(e) = m.stop() {
                say!("virt-launcher: {e}");
            }
        }
    }
}

/// A started machine and what the supervisor shows of it.
struct Started {
    machine: Arc<dyn Machine>,
    info: ServeInfo,
}

/// Reads the machine spec.
fn load_spec(spec_path: &Path) -> Result<MachineSpec, LauncherError> {
    let path = || spec_path.to_path_buf();
    let raw = std::fs::read(spec_path).map_err(|source| LauncherError::SpecRead { path: path(), source })?;
    serde_json::from_slice(&raw).map_err(|source| LauncherError::SpecParse { path: path(), source })
}

/// Both engines, built once: the choice between them is made before the jail (it probes the host).
struct Backends {
    native: NativeBackend,
    qemu: QemuBackend,
    kernel_cache: Option<PathBuf>,
}

impl Backends {
    fn new(args: &Args, run_dir: &Path) -> Self {
        let kernel_cache =
            if args.no_kernel_cache { None } else { args.kernel_cache.clone().or_else(default_cache) };
        let opener: DiskOpener = virt_storage::format::disk_opener();
        let mut native = NativeBackend::new(opener, kernel_cache.clone()).with_net(virt_net::tap::opener());
        let trust_env = std::env::var(TRUST_KVM_ENV).is_ok_and(|v| v == "1" || v == "true");
        if args.trust_kvm || trust_env {
            let mut host = HostVirt::probe();
            host.cpu_flag = host.kvm_usable;
            native = native.with_host(host);
        }
        let qemu = QemuBackend::new(QemuOptions {
            allow_emulation: args.allow_emulation,
            run_dir: Some(run_dir.to_path_buf()),
            confine: !args.no_confine,
            incoming_post_copy: args.post_copy,
            ..Default::default()
        });
        Self { native, qemu, kernel_cache }
    }

    fn select(&self, args: &Args, spec: &MachineSpec) -> Result<&dyn MachineBackend, LauncherError> {
        Ok(select_backend(spec, args.backend, &self.native, &self.qemu)?)
    }
}

/// The machine's cgroup (before the machine: QEMU and swtpm start inside it).
fn join_cgroup(args: &Args, spec: &MachineSpec, backend: &str) -> Result<Cgroup, LauncherError> {
    let vcpus = spec.cpu.count();
    let emulation = backend == "qemu" && args.allow_emulation;
    let overhead = cgroup::overhead_mib(spec.memory_mib, vcpus, emulation);
    let limits =
        cgroup::Limits { memory_bytes: (spec.memory_mib + overhead) << 20, pids: cgroup::pids_for(vcpus) };
    let name: String = spec
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    let name = format!("{}{name}-{}", cgroup::PREFIX, std::process::id());
    Cgroup::join(&name, limits).map_err(LauncherError::Cgroup)
}

/// How long `--incoming` waits for the source's stream.
const INCOMING_TIMEOUT: Duration = Duration::from_secs(120);

/// Listens on the run directory's migration socket and returns the first connection (the stream
/// the source launcher migrates over).
fn accept_migration(run_dir: &Path) -> Result<std::os::unix::net::UnixStream, LauncherError> {
    let path = run_dir.join(MIGRATE_SOCKET);
    let err = |what: &'static str, source: std::io::Error| LauncherError::Incoming {
        what,
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).map_err(|e| err("binding", e))?;
    l.set_nonblocking(true).map_err(|e| err("setting up", e))?;
    let deadline = std::time::Instant::now() + INCOMING_TIMEOUT;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).map_err(|e| err("setting up a connection on", e))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= deadline {
                    let _ = std::fs::remove_file(&path);
                    return Err(LauncherError::IncomingTimeout { path, secs: INCOMING_TIMEOUT.as_secs() });
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(err("accepting on", e)),
        }
    }
}

/// Starts the machine of `spec` on `backend` with the supervisor's console.
fn start_supervised(
    spec: &MachineSpec,
    backend: &dyn MachineBackend,
    sup: &Supervisor,
    incoming: bool,
) -> Result<Started, LauncherError> {
    let machine = if incoming {
        let mut stream = accept_migration(sup.run_dir())?;
        let m = backend.start_incoming(spec, sup.console_sink(), &mut stream);
        let _ = std::fs::remove_file(sup.run_dir().join(MIGRATE_SOCKET));
        m?
    } else {
        backend.start(spec, sup.console_sink())?
    };
    let d = machine.accelerator();
    say!(
        "virt-launcher: machine {} runs on {} ({:?}: {})",
        spec.name,
        backend.name(),
        d.accelerator,
        d.reason
    );
    let info = ServeInfo { name: spec.name.clone(), backend: backend.name().into() };
    let machine: Arc<dyn Machine> = Arc::from(machine);
    // The guest agent's channel: a thread keeps its report fresh for the node and graceful
    // power-down goes through the agent while it answers (docs/guest-agent.md).
    let machine: Arc<dyn Machine> = match machine.take_agent_channel() {
        Some(ch) => match Agent::start(
            &spec.name,
            ch,
            AgentOptions { credentials: spec.agent_credentials.clone(), ..AgentOptions::default() },
        ) {
            Ok(a) => Arc::new(AgentMachine::new(&spec.name, machine, a)),
            Err(e) => {
                say!("virt-launcher: {e}; running without the guest agent");
                machine
            }
        },
        None => machine,
    };
    Ok(Started { machine, info })
}

/// Everything the launcher must know before it confines itself: the spec, the engine, the
/// cgroup. An error is reported through the run directory once it is claimed.
type Prepared<'a> = Result<(MachineSpec, &'a dyn MachineBackend), LauncherError>;

/// Supervised mode: read the spec and pick the engine (host view), confine (own cgroup, pid, mount
/// and network namespaces, own user, filters), claim the run directory, start, serve until the
/// machine ends.
fn supervised(args: &Args, spec_path: &Path, run_dir: &Path) -> ExitCode {
    let backends = Backends::new(args, run_dir);
    let prepared: Prepared = load_spec(spec_path).and_then(|s| {
        let b = backends.select(args, &s)?;
        Ok((s, b))
    });
    let mut cgroup = None;
    // Another launcher holds the run directory: nothing is handed over or set up (the claim below
    // reports it busy), so the running machine keeps its files.
    let busy = match sandbox::run_dir_busy(run_dir) {
        sandbox::RunDir::Ours => false,
        sandbox::RunDir::Running => true,
        // Still setting up: the supervisor's lock may be free yet, so the claim below would not
        // refuse; refuse here, as it would.
        sandbox::RunDir::SettingUp => {
            use virt_core::machine::supervisor::{SupervisorError, PID_FILE};
            let pid =
                std::fs::read_to_string(run_dir.join(PID_FILE)).ok().and_then(|s| s.trim().parse().ok());
            say!("virt-launcher: {}", SupervisorError::Busy { dir: run_dir.into(), pid });
            return ExitCode::FAILURE;
        }
    };
    // In an unprivileged launcher pod the cgroup filesystem is read-only and the pod's cgroup
    // (the kubelet's) bounds the launcher: no cgroup of its own (virt-controller sets the variable
    // in such pods).
    let pod_cgroup = std::env::var(POD_CGROUP_ENV).is_ok_and(|v| v == "1" || v == "true");
    if !args.no_confine && !busy {
        if pod_cgroup {
            say!("virt-launcher: the pod's cgroup bounds the machine ({POD_CGROUP_ENV})");
        } else {
            cgroup::collect_stale();
        }
        if let (false, Ok((spec, backend))) = (pod_cgroup, &prepared) {
            match join_cgroup(args, spec, backend.name()) {
                Ok(cg) => cgroup = Some(cg),
                Err(e) => {
                    say!("virt-launcher: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } == 0 && !args.no_namespaces {
            match jail::pidns::split() {
                Ok(jail::pidns::Side::Child) => {
                    // The keeper leaves and removes the cgroup once this process is gone.
                    std::mem::forget(cgroup.take());
                }
                Ok(jail::pidns::Side::Keeper { status, child }) => {
                    return keeper_done(run_dir, status, child, cgroup);
                }
                Err(e) => {
                    say!("virt-launcher: confinement: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Err(e) = jail_self(args, run_dir, &prepared, &backends) {
            say!("virt-launcher: {e}");
            return ExitCode::FAILURE;
        }
    }
    let term = match Termination::install(Duration::from_secs(args.grace_period)) {
        Ok(t) => t,
        Err(e) => {
            say!("virt-launcher: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sup = match Supervisor::claim(run_dir) {
        Ok(s) => s,
        Err(e) => {
            say!("virt-launcher: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = prepared.and_then(|(spec, backend)| start_supervised(&spec, backend, &sup, args.incoming));
    let Started { machine, info } = match started {
        Ok(m) => m,
        Err(e) => {
            say!("virt-launcher: {e}");
            if let Err(e) = sup.fail(&e.to_string()) {
                say!("virt-launcher: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    // The machine runs (QEMU, which must not inherit the launcher's filter, is spawned): the main
    // thread confines itself before it serves the sockets.
    jail::enter_or_die(Role::Main);
    term.running(machine.clone());
    let served = sup.serve(machine, info);
    // Drop the machine (the backend's own clean-up: QEMU's run directory) before exiting.
    drop(term.machine.lock().unwrap_or_else(|e| e.into_inner()).take());
    if let Some(cg) = cgroup {
        cg.leave();
    }
    match served {
        Ok(MachineExit::PowerOff | MachineExit::Stopped) => ExitCode::SUCCESS,
        Ok(MachineExit::Reboot) => {
            say!("virt-launcher: the guest rebooted; the VM has ended");
            ExitCode::SUCCESS
        }
        Ok(MachineExit::Failed(e)) => {
            say!("virt-launcher: VM failed: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            say!("virt-launcher: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The keeper, once the jailed launcher ended: records a death that left no exit record (killed by
/// a signal: the out-of-memory killer, SIGKILL), removes the cgroup, ends with the same status.
fn keeper_done(run_dir: &Path, status: i32, child: u32, cgroup: Option<Cgroup>) -> ExitCode {
    if status > 128 && status != jail::VIOLATION_EXIT_CODE && !run_dir.join(EXIT_FILE).exists() {
        let why = format!("the launcher (pid {child}) was killed by signal {}", status - 128);
        if let Err(e) = write_exit_record(run_dir, &MachineExit::Failed(why)) {
            say!("virt-launcher: write the exit record: {e}");
        }
    }
    // The jail's mount point (empty on the host's side).
    let _ = std::fs::remove_dir(run_dir.join(sandbox::STAGING));
    drop(cgroup);
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}

/// Confines this process (before any thread starts): network namespace, view of the filesystem,
/// user, then the filters (docs/confinement.md).
fn jail_self(
    args: &Args,
    run_dir: &Path,
    prepared: &Prepared,
    backends: &Backends,
) -> Result<(), LauncherError> {
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(run_dir)
            .map_err(|source| LauncherError::RunDir { path: run_dir.to_path_buf(), source })?;
    }
    let dir = run_dir.to_path_buf();
    let hook: jail::ViolationHook = Box::new(move |v| {
        if let Err(e) = write_exit_record(&dir, &MachineExit::Failed(v.to_string())) {
            say!("virt-launcher: write the exit record: {e}");
        }
    });
    let mut opts = JailOptions {
        run_dir: Some(run_dir.to_path_buf()),
        on_violation: Some(hook),
        selftest: selftest()?,
        netns: args.netns.clone(),
        ..Default::default()
    };
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if let Ok((spec, backend)) = prepared {
        // QEMU serves VNC on the loopback the node dials, so a machine with graphics keeps the
        // node's network namespace like one with legacy taps (a VNC unix socket would lift this).
        opts.interfaces = !spec.interfaces.is_empty() || spec.graphics;
        if root && !args.no_namespaces {
            let cache = (backend.name() == "native").then_some(backends.kernel_cache.as_deref()).flatten();
            if let (Some(_), BootSpec::Kernel { kernel, initramfs, cmdline }) = (cache, &spec.boot) {
                // The jail sees the kernel cache read-only: fill it now.
                let cfg = KernelConfig {
                    kernel: kernel.clone(),
                    initramfs: initramfs.clone(),
                    cmdline: cmdline.clone(),
                    cache_dir: cache.map(Path::to_path_buf),
                    ..Default::default()
                };
                if let Err(e) = virt_core::vmm::boot::prepare_kernel(&cfg) {
                    say!("virt-launcher: prepare the kernel: {e}");
                }
            }
            let mut view = sandbox::view(spec, backend.name(), run_dir, cache);
            if args.post_copy && backend.name() == "qemu" {
                sandbox::allow_post_copy(&mut view);
            }
            if !args.stay_root {
                let range = args.uid_range.unwrap_or(jail::user::DEFAULT_RANGE);
                match sandbox::identity(spec, &view, range, jail::host_pid()) {
                    Ok(id) => {
                        sandbox::hand_over(&id, &view)?;
                        view.device_owner = Some((id.uid, id.gid));
                        opts.identity = Some(id);
                    }
                    Err(why) => say!("virt-launcher: the machine runs as root: {why}"),
                }
            }
            opts.view = Some(view);
        }
    }
    Ok(jail::enable(opts)?)
}

/// `VIRT_JAIL_SELFTEST=<role>` makes the first thread of that role make a forbidden call, for the
/// tests that prove the filter and its exit record.
fn selftest() -> Result<Option<Role>, LauncherError> {
    match std::env::var("VIRT_JAIL_SELFTEST") {
        Ok(r) => match Role::from_name(&r) {
            Some(role) => Ok(Some(role)),
            None => Err(LauncherError::Selftest(r)),
        },
        Err(_) => Ok(None),
    }
}

/// Direct mode's confinement: the filters and no capabilities (docs/confinement.md).
fn confine_direct() -> Result<(), LauncherError> {
    let selftest = selftest()?;
    Ok(jail::enable(JailOptions { selftest, ..Default::default() })?)
}

/// Library warnings (and more with `VIRT_LAUNCHER_LOG=info|debug`) on stderr.
struct StderrLog(log::LevelFilter);

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            say!("virt-launcher: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = std::env::var("VIRT_LAUNCHER_LOG")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(Box::leak(Box::new(StderrLog(level)))).is_ok() {
        log::set_max_level(level);
    }
    if let (Some(spec), Some(dir)) = (args.spec.clone(), args.run_dir.clone()) {
        return supervised(&args, &spec, &dir);
    }
    match run(args) {
        Ok(ExitReason::PowerOff) | Ok(ExitReason::Stopped) => ExitCode::SUCCESS,
        Ok(ExitReason::Reset) => {
            say!("virt-launcher: the guest rebooted; the VM has ended");
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Error(e)) => {
            say!("virt-launcher: VM failed: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            say!("virt-launcher: {e}");
            ExitCode::FAILURE
        }
    }
}
