//! The jail's view of the filesystem (`jail::rootfs::enter`, docs/confinement.md) on the host,
//! both ways it leaves the host's root:
//!
//! - `pivot_root`, the usual way;
//! - the fallback for a root `pivot_root` refuses with `EINVAL` (an initramfs, as in the nested
//!   harness' L1: scripts/nested/): mounts outside the new root detached, the new root moved onto
//!   `/`, chroot. The host booted without an initramfs, but its initial ramfs (rootfs) is still
//!   there, under its `/` mount, as every mount namespace's root mount. The test detaches `/` in a
//!   namespace of its own and re-enters that namespace (`setns` puts the thread at the
//!   namespace's root mount): its root is then rootfs itself, as L1's is, and `pivot_root` refuses
//!   for the same reason (the root mount has no parent). What it creates in rootfs (a directory
//!   named after the test's pid) it removes; `scripts/nested/e2e.sh` runs the launcher in L1.
//!
//! Mount namespaces and roots are per thread (`unshare(CLONE_NEWNS)` gives the thread its own
//! root and working directory too), so each case runs on a thread of its own and its mounts go
//! with it; nothing changes for the test process. Needs root (`CAP_SYS_ADMIN`).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use virt_core::jail::rootfs::{self, Access, RootSwitch, View};

fn require_root() {
    // SAFETY: geteuid has no arguments and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "the jail's root needs root (CAP_SYS_ADMIN): run as root");
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("jail-root-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Gives the calling thread its own mount namespace (and root and working directory), private.
fn own_mount_namespace() {
    // SAFETY: unshare takes flags only; CLONE_NEWNS also unshares this thread's fs_struct.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
    // SAFETY: mount with null source, type and data changes propagation only.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "make / private: {}", std::io::Error::last_os_error());
}

/// What a jailed thread saw.
#[derive(Debug)]
struct Seen {
    switch: RootSwitch,
    root_entries: Vec<String>,
    disk: String,
    disk_written: bool,
    root_create: std::io::Error,
    secret: bool,
}

/// Inside the view: what `/` holds, whether the disk reads and writes, whether `/` takes a new
/// file, whether `secret` (a host path outside the view) can be opened.
fn look_around(switch: RootSwitch, disk: &Path, secret: &Path) -> Seen {
    let mut root_entries: Vec<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root_entries.sort();
    let text = std::fs::read_to_string(disk).unwrap();
    let disk_written = std::fs::OpenOptions::new().append(true).open(disk).and_then(|mut f| {
        use std::io::Write as _;
        f.write_all(b"+written inside")
    });
    let root_create =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open("/new-file").unwrap_err();
    Seen {
        switch,
        root_entries,
        disk: text,
        disk_written: disk_written.is_ok(),
        root_create,
        secret: secret.exists(),
    }
}

fn view(run: &Path) -> View {
    let mut v = View { staging: run.join(".root"), proc: true, ..View::default() };
    v.add(run, Access::ReadWrite);
    v.add("/dev/null", Access::Device);
    v
}

#[test]
fn pivot_root_leaves_a_normal_root() {
    require_root();
    let d = scratch("pivot");
    let run = d.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("disk.img"), "disk").unwrap();
    std::fs::write(d.join("secret"), "host only").unwrap();
    let (run2, secret) = (run.clone(), d.join("secret"));
    let seen = std::thread::spawn(move || {
        own_mount_namespace();
        let switch = rootfs::enter(&view(&run2)).unwrap();
        look_around(switch, &run2.join("disk.img"), &secret)
    })
    .join()
    .unwrap();
    assert_eq!(seen.switch, RootSwitch::PivotRoot);
    check_view(&seen, &run, &d);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn an_initramfs_root_is_left_by_move_and_chroot() {
    require_root();
    let name = format!("jail-root-test-{}", std::process::id());
    let (seen, marker_left, host_disk, cleaned) = std::thread::spawn(move || {
        own_mount_namespace();
        // SAFETY: open of a NUL-terminated path.
        let ns =
            unsafe { libc::open(c"/proc/thread-self/ns/mnt".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        assert!(ns >= 0, "open the mount namespace: {}", std::io::Error::last_os_error());
        // SAFETY: umount2 of "/" in this thread's own, private namespace.
        let r = unsafe { libc::umount2(c"/".as_ptr(), libc::MNT_DETACH) };
        assert_eq!(r, 0, "detach /: {}", std::io::Error::last_os_error());
        // SAFETY: setns with a namespace descriptor opened above.
        let r = unsafe { libc::setns(ns, libc::CLONE_NEWNS) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
        // SAFETY: closing the descriptor opened above.
        unsafe { libc::close(ns) };
        // Now at the root of rootfs. The machine's files, a secret beside them, and a mount
        // outside the new root (which must be detached).
        let t = Path::new("/").join(&name);
        let run = t.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("disk.img"), "disk").unwrap();
        std::fs::write(t.join("secret"), "host only").unwrap();
        std::fs::create_dir_all(t.join("outside")).unwrap();
        // SAFETY: mount of NUL-terminated strings; null data.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c(&t.join("outside")).as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "mount a tmpfs outside: {}", std::io::Error::last_os_error());
        std::fs::write(t.join("outside/marker"), "").unwrap();
        let rootfs = std::fs::File::open("/").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&rootfs);

        let mut v = View { staging: run.join(".root"), proc: true, ..View::default() };
        v.add(&run, Access::ReadWrite);
        let switch = rootfs::enter(&v).unwrap();
        let seen = look_around(switch, &run.join("disk.img"), &t.join("secret"));

        // From outside the view (through the descriptor of rootfs' root): the mount outside is
        // gone, the disk holds what was written inside; then the test's directory is removed.
        let via = |p: &str| PathBuf::from(format!("/proc/thread-self/fd/{fd}/{name}/{p}"));
        let marker_left = via("outside/marker").exists();
        let host_disk = std::fs::read_to_string(via("run/disk.img")).unwrap();
        std::fs::remove_dir_all(via("")).unwrap();
        let cleaned = !via("").exists();
        (seen, marker_left, host_disk, cleaned)
    })
    .join()
    .unwrap();
    assert_eq!(seen.switch, RootSwitch::MoveRoot, "pivot_root refuses to leave rootfs (EINVAL)");
    assert_eq!(seen.root_entries, vec![format!("jail-root-test-{}", std::process::id()), "proc".to_string()]);
    check_seen(&seen);
    assert!(!marker_left, "the mount outside the new root is detached");
    assert_eq!(host_disk, "disk+written inside");
    assert!(cleaned, "the test's directory in rootfs is removed");
}

fn check_seen(seen: &Seen) {
    assert!(!seen.secret, "a host file beside the run directory is out of view");
    assert_eq!(seen.disk, "disk");
    assert!(seen.disk_written, "the run directory is writable");
    assert_eq!(
        seen.root_create.raw_os_error(),
        Some(libc::EROFS),
        "the root itself is read-only: {}",
        seen.root_create
    );
}

fn check_view(seen: &Seen, run: &Path, d: &Path) {
    // Only the run directory's path, the device and /proc: no secret, no /etc.
    let first = run.components().nth(1).unwrap().as_os_str().to_string_lossy().into_owned();
    let mut want = vec![first, "dev".to_string(), "proc".to_string()];
    want.sort();
    assert_eq!(seen.root_entries, want);
    check_seen(seen);
    assert_eq!(std::fs::read_to_string(run.join("disk.img")).unwrap(), "disk+written inside");
    assert!(!d.join("new-file").exists());
}
