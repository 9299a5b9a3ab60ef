//! What the launcher's jail holds for one machine (docs/confinement.md): the view of the filesystem
//! (only the machine's files, its run directory and the device nodes it opens; for QEMU and swtpm
//! also `/usr` and the loader's cache) and the unprivileged user it runs as, with the reason when it
//! must stay root. Wiring only: the mechanisms are `virt_core::jail`.

use std::path::{Path, PathBuf};

use virt_core::jail::user::{self, UidRange};
use virt_core::jail::{Access, Identity, View};
use virt_core::machine::{BootSpec, InterfaceBackend, MachineSpec};

/// Where in the run directory the jail's root is mounted (in the launcher's namespace only).
pub const STAGING: &str = ".root";

/// Device nodes every jail has (std's `Stdio::null`, randomness).
const BASIC_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];

/// What QEMU and swtpm need to run: their binaries, libraries, firmware and the loader's cache.
const PROGRAM_TREES: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc/ld.so.cache"];

/// The view for `spec` on `backend`, with its run directory and (native) kernel cache.
pub fn view(spec: &MachineSpec, backend: &str, run_dir: &Path, kernel_cache: Option<&Path>) -> View {
    let mut v = View { staging: run_dir.join(STAGING), binds: Vec::new(), proc: true, device_owner: None };
    for d in BASIC_DEVICES {
        if Path::new(d).exists() {
            v.add(*d, Access::Device);
        }
    }
    if Path::new("/dev/kvm").exists() {
        v.add("/dev/kvm", Access::Device);
    }
    if backend != "native" {
        for p in PROGRAM_TREES {
            if Path::new(p).exists() {
                v.add(*p, Access::ReadExec);
            }
        }
    }
    if spec.interfaces.iter().any(|i| matches!(i.backend, InterfaceBackend::Tap { .. })) {
        for d in ["/dev/net/tun", "/dev/vhost-net"] {
            if Path::new(d).exists() {
                v.add(d, Access::Device);
            }
        }
    }
    v.add(run_dir, Access::ReadWrite);
    for (p, a) in machine_files(spec) {
        v.add(p, a);
    }
    if let Some(c) = kernel_cache.filter(|c| c.is_dir()) {
        // Prepared before the jail: the machine only reads the cached kernel.
        v.add(c, Access::ReadOnly);
    }
    v
}

/// QEMU receiving a migration that may switch to post-copy faults the missing pages in with
/// userfaultfd, which unprivileged processes cannot create (`vm.unprivileged_userfaultfd` is 0 on
/// most hosts): the jail gets its own `/dev/userfaultfd` node, owned by the jailed user, for this
/// launcher only (it is not in [`view`]'s default: the device is an exploitation aid).
pub fn allow_post_copy(v: &mut View) {
    if Path::new(USERFAULTFD).exists() {
        v.add(USERFAULTFD, Access::Device);
    }
}

const USERFAULTFD: &str = "/dev/userfaultfd";

/// The files of the spec itself: kernel, initramfs, disks, EFI variables, a TPM's state.
fn machine_files(spec: &MachineSpec) -> Vec<(PathBuf, Access)> {
    let mut f = Vec::new();
    match &spec.boot {
        BootSpec::Kernel { kernel, initramfs, .. } => {
            f.push((kernel.clone(), Access::ReadOnly));
            if let Some(i) = initramfs {
                f.push((i.clone(), Access::ReadOnly));
            }
        }
        BootSpec::Efi { vars: Some(v), .. } => f.push((v.clone(), Access::ReadWrite)),
        BootSpec::Efi { vars: None, .. } | BootSpec::Bios => {}
    }
    for d in &spec.disks {
        let ro = d.read_only || d.cdrom;
        f.push((d.path.clone(), if ro { Access::ReadOnly } else { Access::ReadWrite }));
        // A clone's qcow2 overlay reads its golden image: the backing chain is visible read-only.
        for b in backing_chain(&d.path) {
            f.push((b, Access::ReadOnly));
        }
    }
    if let Some(t) = &spec.tpm {
        f.push((t.state_dir.clone(), Access::ReadWrite));
    }
    f
}

/// The backing files of a qcow2 image, nearest first (at most 16 deep; relative names are relative
/// to the image that names them). Anything unreadable or not qcow2 ends the chain: the engine that
/// opens the disk reports it.
fn backing_chain(disk: &Path) -> Vec<PathBuf> {
    use std::io::Read as _;
    let mut chain = Vec::new();
    let mut cur = disk.to_path_buf();
    for _ in 0..16 {
        let Ok(file) = std::fs::File::open(&cur) else { break };
        let Ok(len) = file.metadata().map(|m| m.len()) else { break };
        let mut buf = Vec::new();
        if file.take(2 << 20).read_to_end(&mut buf).is_err() || !buf.starts_with(b"QFI\xfb") {
            break;
        }
        let Ok(header) = virt_storage::format::qcow2::Header::parse(&buf, len, &cur) else { break };
        let Some(next) = header.backing_file else { break };
        let next = match cur.parent() {
            Some(dir) if next.is_relative() => dir.join(next),
            _ => next,
        };
        chain.push(next.clone());
        cur = next;
    }
    chain
}

/// Why the machine stays root (or its user could not be claimed); each names the cause.
#[derive(Debug, thiserror::Error)]
pub enum StaysRoot {
    /// A tap interface is opened by name, which needs `CAP_NET_ADMIN`.
    #[error("a tap opened by name needs CAP_NET_ADMIN")]
    TapByName,
    /// A read-only file of the machine is not readable by other users.
    #[error("{} is not readable by others", .0.display())]
    NotWorldReadable(PathBuf),
    /// Claiming a uid failed (the error names the lock file).
    #[error(transparent)]
    Claim(#[from] user::UserError),
    /// Every uid of the range is held by a live process.
    #[error("every uid of {0:?} is in use")]
    RangeExhausted(UidRange),
}

/// The user the machine runs as, or why it stays root: taps opened by name need `CAP_NET_ADMIN`,
/// and a read-only file nobody else may read can only be opened by root.
pub fn identity(
    spec: &MachineSpec,
    view: &View,
    range: UidRange,
    host_pid: u32,
) -> Result<Identity, StaysRoot> {
    if spec.interfaces.iter().any(|i| matches!(i.backend, InterfaceBackend::Tap { .. })) {
        return Err(StaysRoot::TapByName);
    }
    for b in &view.binds {
        if matches!(b.access, Access::ReadOnly | Access::ReadExec) && !user::world_readable(&b.path) {
            return Err(StaysRoot::NotWorldReadable(b.path.clone()));
        }
    }
    // A uid a live process (another launcher) holds is passed over: pids that meet modulo a range
    // smaller than pid_max would otherwise share one. The claim (a lock per uid, held for this
    // process's life) makes that hold for launchers started at the same moment too.
    let taken = user::uids_in_use();
    let lock_dir =
        std::env::var_os("VIRT_LAUNCHER_UID_LOCKS").map_or_else(|| user::UID_LOCK_DIR.into(), PathBuf::from);
    let uid = range
        .claim(host_pid, &lock_dir, |u| taken.contains(&u))?
        .ok_or(StaysRoot::RangeExhausted(range))?
        .hold_for_life();
    Ok(Identity { uid, gid: uid, groups: Vec::new() })
}

/// The lock file of a launcher's set-up in its run directory.
pub const SETUP_LOCK: &str = virt_core::machine::supervisor::SETUP_LOCK_FILE;

/// Whether another launcher owns `run_dir` (its set-up or its machine). Otherwise this process
/// now does, before it sets anything up: an exclusive `flock` on `<run dir>/setup.lock`, held for
/// the process's life (shared with the jailed launcher after the pid namespace's fork). Checking
/// the supervisor's lock alone left a window: two launchers started at once both saw it free,
/// both handed the run directory to their own uid, and the one that won the claim could find its
/// files given to the loser's.
pub fn run_dir_busy(run_dir: &Path) -> RunDir {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    let _ = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(run_dir);
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(run_dir.join(SETUP_LOCK));
    if let Ok(lock) = lock {
        // SAFETY: flock on a descriptor `lock` owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return RunDir::SettingUp;
        }
        // Held until the process ends; the kernel releases it then.
        let _fd = std::os::fd::IntoRawFd::into_raw_fd(lock);
    }
    if virt_core::machine::remote::launcher_running(run_dir) {
        RunDir::Running
    } else {
        RunDir::Ours
    }
}

/// Who owns a run directory (see [`run_dir_busy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunDir {
    /// This launcher: set up and claim it.
    Ours,
    /// Another launcher runs its machine there (the supervisor's claim will say so).
    Running,
    /// Another launcher is setting it up.
    SettingUp,
}

/// Gives the machine's user what it writes: the run directory and the writable binds.
pub fn hand_over(id: &Identity, view: &View) -> Result<(), user::UserError> {
    for b in view.binds.iter().filter(|b| b.access == Access::ReadWrite) {
        user::chown_for(id, &b.path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::machine::{ClockSpec, CpuSpec, DiskBus, DiskFormat, DiskSpec};

    fn spec() -> MachineSpec {
        MachineSpec {
            name: "t".into(),
            cpu: CpuSpec::default(),
            memory_mib: 32,
            boot: BootSpec::Kernel { kernel: "/k/vmlinux".into(), initramfs: None, cmdline: String::new() },
            disks: vec![DiskSpec {
                name: "root".into(),
                path: "/d/root.img".into(),
                format: DiskFormat::Raw,
                bus: DiskBus::Virtio,
                cdrom: false,
                read_only: false,
                boot_order: None,
                serial: None,
            }],
            acpi: true,
            smm: false,
            hyperv: vec![],
            clock: ClockSpec::default(),
            tpm: None,
            graphics: false,
            machine_type: None,
            accel: Default::default(),
            interfaces: vec![],
            agent_credentials: Default::default(),
        }
    }

    #[test]
    fn the_native_view_holds_the_machine_files_and_no_program_tree() {
        let v = view(&spec(), "native", Path::new("/run/vm"), None);
        let has = |p: &str, a| v.binds.iter().any(|b| b.path == Path::new(p) && b.access == a);
        assert!(has("/k/vmlinux", Access::ReadOnly));
        assert!(has("/d/root.img", Access::ReadWrite));
        assert!(has("/run/vm", Access::ReadWrite));
        assert!(!v.binds.iter().any(|b| b.path == Path::new("/usr")));
        assert!(!v.binds.iter().any(|b| b.path.starts_with("/etc")));
        assert_eq!(v.staging, Path::new("/run/vm/.root"));
    }

    #[test]
    fn qemu_gets_usr_read_only_and_executable() {
        let v = view(&spec(), "qemu", Path::new("/run/vm"), None);
        assert!(v.binds.iter().any(|b| b.path == Path::new("/usr") && b.access == Access::ReadExec));
    }
}
