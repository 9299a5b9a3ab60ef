//! `virt-launcher`: one VM per process. Parsing and wiring only; the VMM lives in `virt-core`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use virt_core::block::{BlockBackend, RawFile};
use virt_core::hypervisor::kvm::KvmHypervisor;
use virt_core::vmm::boot::{BootPath, KernelConfig};
use virt_core::vmm::{ExitReason, MicroVm, Payload, VmConfig};

/// Boots a Linux kernel in a KVM microVM; the serial console is this process's stdin/stdout.
///
/// Exits 0 when the guest powers off or reboots, 1 on any error.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Kernel: a bzImage or an ELF vmlinux.
    #[arg(long)]
    kernel: PathBuf,
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
}

fn parse_disk(spec: &str) -> Result<Arc<dyn BlockBackend>, String> {
    let mut parts = spec.split(',');
    let path =
        parts.next().filter(|p| !p.is_empty()).ok_or_else(|| format!("--disk {spec:?}: empty path"))?;
    let mut read_only = false;
    for opt in parts {
        match opt {
            "readonly" | "ro" | "readonly=on" => read_only = true,
            "readonly=off" | "rw" => read_only = false,
            o => return Err(format!("--disk {spec:?}: unknown option {o:?} (expected readonly)")),
        }
    }
    Ok(Arc::new(RawFile::open(&PathBuf::from(path), read_only).map_err(|e| e.to_string())?))
}

fn default_cache() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("VIRT_CACHE_DIR") {
        return Some(PathBuf::from(d).join("kernels"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("virt-rs").join("kernels"))
}

/// An unbuffered writer on stdout, so prompts without a newline appear at once.
struct RawStdout;
impl std::io::Write for RawStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: writes from a valid buffer of the given length to fd 1, which this process owns.
        let n = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Puts a terminal on stdin into non-canonical, no-echo mode while the VM runs; restores it on drop.
struct TermGuard(Option<libc::termios>);
impl TermGuard {
    fn new() -> Self {
        // SAFETY: isatty only inspects fd 0.
        if unsafe { libc::isatty(0) } != 1 {
            return Self(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 and we check its result.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: see above; `t` is a valid, writable termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Self(None);
        }
        let saved = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 1;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: sets fd 0's attributes from a valid termios.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        Self(Some(saved))
    }
}
impl Drop for TermGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores fd 0's attributes saved by `new`.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

fn monotonic_ns() -> u128 {
    // SAFETY: timespec is plain data; clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn run(args: Args) -> Result<ExitReason, String> {
    let main_start = std::time::Instant::now();
    let prepare_only = args.prepare_kernel;
    let disks = args.disks.iter().map(|d| parse_disk(d)).collect::<Result<Vec<_>, _>>()?;
    for p in std::iter::once(&args.kernel).chain(args.initramfs.iter()) {
        if !p.is_file() {
            return Err(format!("{}: no such file", p.display()));
        }
    }
    let kernel = KernelConfig {
        kernel: args.kernel,
        initramfs: args.initramfs,
        cmdline: args.cmdline,
        boot_path: args.boot_path,
        cache_dir: if args.no_kernel_cache { None } else { args.kernel_cache.or_else(default_cache) },
    };
    if prepare_only {
        match virt_core::vmm::boot::prepare_kernel(&kernel).map_err(|e| e.to_string())? {
            Some(p) => println!("{}", p.display()),
            None => eprintln!("virt-launcher: nothing to prepare (not a bzImage, or no kernel cache)"),
        }
        return Ok(ExitReason::PowerOff);
    }
    let hv = KvmHypervisor::with_path(&args.kvm_device).map_err(|e| e.to_string())?;
    let cfg = VmConfig {
        memory_mib: args.memory,
        cpus: args.cpus,
        payload: Payload::Kernel(kernel),
        disks,
        console: Box::new(RawStdout),
        track_dirty_pages: false,
        huge_pages: args.huge_pages,
    };
    let vm = MicroVm::new(&hv, cfg).map_err(|e| e.to_string())?;
    let trace = std::env::var_os("VIRT_LAUNCHER_TRACE").is_some();
    if trace {
        if let Some(b) = vm.boot_info() {
            eprintln!("virt-launcher: boot path: {}", b.how);
        }
        for (what, d) in vm.build_timings() {
            eprintln!("virt-launcher:   {what}: {:.3} ms", d.as_secs_f64() * 1e3);
        }
        eprintln!("virt-launcher: VM built in {:.3} ms", main_start.elapsed().as_secs_f64() * 1e3);
    }
    let handle = Arc::new(vm.start().map_err(|e| e.to_string())?);
    let _term = TermGuard::new();
    let h = handle.clone();
    // Console input: a detached thread; it ends with the process.
    let _ = std::thread::Builder::new().name("console-in".into()).spawn(move || {
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
    let reason = handle.wait();
    if trace {
        if let Some(t) = handle.first_exit() {
            let ago = std::time::Instant::now().saturating_duration_since(t).as_nanos();
            eprintln!(
                "virt-launcher: first guest exit at monotonic {} ns ({:.3} ms after main)",
                monotonic_ns() - ago,
                t.saturating_duration_since(main_start).as_secs_f64() * 1e3
            );
        }
        eprintln!(
            "virt-launcher: VM ended ({reason:?}) at monotonic {} ns ({:.3} ms after main)",
            monotonic_ns(),
            main_start.elapsed().as_secs_f64() * 1e3
        );
    }
    drop(handle);
    if trace {
        eprintln!("virt-launcher: torn down {:.3} ms after main", main_start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(reason)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(ExitReason::PowerOff) | Ok(ExitReason::Stopped) => ExitCode::SUCCESS,
        Ok(ExitReason::Reset) => {
            eprintln!("virt-launcher: the guest rebooted; the VM has ended");
            ExitCode::SUCCESS
        }
        Ok(ExitReason::Error(e)) => {
            eprintln!("virt-launcher: VM failed: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("virt-launcher: {e}");
            ExitCode::FAILURE
        }
    }
}
