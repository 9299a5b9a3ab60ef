//! The machine's view of the filesystem: a private mount namespace whose root is an empty,
//! read-only tmpfs holding only the files the machine needs, each bind-mounted at its own path
//! (so the spec's paths stay valid), read-only unless the machine writes it. After `pivot_root`
//! the host's tree is unmounted: `/etc/shadow`, other machines' disks and the node's state are
//! not reachable whatever the process does. Where the host's root is an initramfs, which
//! `pivot_root` cannot leave, every other mount is detached and the new root is moved onto `/`
//! and chrooted into instead ([`RootSwitch::MoveRoot`]). Needs `CAP_SYS_ADMIN`; call it before
//! any thread starts (the mount namespace and root are the calling thread's: threads started
//! later share them, threads already running keep the host's).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

/// What a bind mount allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-only, no device nodes, no set-uid.
    ReadOnly,
    /// Read-only, and programs in it may run (QEMU's binary and libraries).
    ReadExec,
    /// Read-write (disks, the run directory, a TPM's state).
    ReadWrite,
    /// A device node (`/dev/kvm`, `/dev/net/tun`): not a bind but a node of its own with the same
    /// numbers, owned by [`View::device_owner`] (as Firecracker's jailer does), so the machine's
    /// user opens it without the host's node changing.
    Device,
}

/// One path of the host visible inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The absolute path, on the host and inside.
    pub path: PathBuf,
    /// What it allows.
    pub access: Access,
}

/// The whole view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Where the new root is built (an empty directory the process can create; the run
    /// directory's `.root`). Nothing of it is visible outside the namespace.
    pub staging: PathBuf,
    /// The paths visible inside, in order (a later bind may sit inside an earlier directory).
    pub binds: Vec<Bind>,
    /// Mount a `proc` of the process's own pid namespace at `/proc`.
    pub proc: bool,
    /// Owner (uid, gid) of the device nodes made inside; `None`: root.
    pub device_owner: Option<(u32, u32)>,
}

impl View {
    /// Adds `path` with `access` unless already there (a writable bind wins over a read-only one).
    pub fn add(&mut self, path: impl Into<PathBuf>, access: Access) {
        let path = path.into();
        if let Some(b) = self.binds.iter_mut().find(|b| b.path == path) {
            if access == Access::ReadWrite {
                b.access = access;
            }
            return;
        }
        self.binds.push(Bind { path, access });
    }
}

/// Why the view could not be built; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// A path is not absolute or has `..` in it.
    #[error("the jail's path {0} must be absolute, without `..`")]
    BadPath(PathBuf),
    /// A step failed.
    #[error("jail root: {op} {path}: {source}")]
    Step {
        /// What was done.
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The kernel's error.
        source: std::io::Error,
    },
}

fn cstr(p: &Path) -> Result<CString, RootfsError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| RootfsError::BadPath(p.to_path_buf()))
}

fn step(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Step { op, path, source }
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
    op: &'static str,
) -> Result<(), RootfsError> {
    let src = src.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null where mount(2)
    // allows it (source and type of a remount or propagation change, data).
    let r = unsafe { libc::mount(ptr(&src), target_c.as_ptr(), ptr(&fstype), flags, ptr(&data).cast()) };
    if r != 0 {
        return Err(step(op, target)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `inside` joined with absolute `path`.
fn under(inside: &Path, path: &Path) -> Result<PathBuf, RootfsError> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(RootfsError::BadPath(path.to_path_buf()));
    }
    Ok(inside.join(path.strip_prefix("/").unwrap_or(path)))
}

/// Makes the directories of `target` inside the new root, recreating symbolic links met on the
/// way on the host (`/lib -> usr/lib`) as links, so paths resolve inside as they do outside.
fn make_parents(root: &Path, path: &Path) -> Result<(), RootfsError> {
    let mut host = PathBuf::from("/");
    let parent = path.parent().unwrap_or(Path::new("/"));
    for c in parent.components().skip(1) {
        host.push(c);
        let inside = under(root, &host)?;
        if inside.symlink_metadata().is_ok() {
            continue;
        }
        match std::fs::read_link(&host) {
            Ok(to) => std::os::unix::fs::symlink(&to, &inside).map_err(step("symlink", &inside))?,
            Err(_) => std::fs::create_dir(&inside).map_err(step("mkdir", &inside))?,
        }
    }
    Ok(())
}

/// Makes a character device node at `target` with the numbers of the host's `path`, its mode
/// (at most rw for all) and `owner`.
fn make_device(
    path: &Path,
    target: &Path,
    meta: &std::fs::Metadata,
    owner: Option<(u32, u32)>,
) -> Result<(), RootfsError> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    if !meta.file_type().is_char_device() {
        return Err(step("not a character device", path)(std::io::Error::from(
            std::io::ErrorKind::InvalidInput,
        )));
    }
    let c = cstr(target)?;
    let mode = libc::S_IFCHR | (meta.mode() & 0o666);
    // SAFETY: mknod of a NUL-terminated path with a mode and the host node's device number.
    if unsafe { libc::mknod(c.as_ptr(), mode, meta.rdev()) } != 0 {
        return Err(step("mknod", target)(std::io::Error::last_os_error()));
    }
    if let Some((uid, gid)) = owner {
        // SAFETY: chown of a NUL-terminated path with plain ids.
        if unsafe { libc::chown(c.as_ptr(), uid, gid) } != 0 {
            return Err(step("chown", target)(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// How [`enter`] left the host's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootSwitch {
    /// `pivot_root`, and the host's tree unmounted (the usual way).
    PivotRoot,
    /// The root could not be pivoted away from (an initramfs: `pivot_root` says `EINVAL`): every
    /// other mount detached, the new root moved onto `/` and chrooted into (as `switch_root`, and
    /// runc for a ramfs root, do).
    MoveRoot,
}

/// Enters a new mount namespace and makes `view` its whole filesystem (see the module's doc).
/// Says how the old root was left.
pub fn enter(view: &View) -> Result<RootSwitch, RootfsError> {
    // SAFETY: unshare takes flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(step("unshare CLONE_NEWNS", Path::new("/"))(std::io::Error::last_os_error()));
    }
    // Nothing mounted from here on propagates back to the host.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None, "make private")?;
    let root = &view.staging;
    std::fs::create_dir_all(root).map_err(step("mkdir", root))?;
    mount(
        Some(Path::new("tmpfs")),
        root,
        Some("tmpfs"),
        // Device nodes are allowed here: only those made below exist, and the binds carry nodev.
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("size=1m,mode=0755"),
        "mount a tmpfs on",
    )?;
    for b in &view.binds {
        let target = under(root, &b.path)?;
        let meta = std::fs::metadata(&b.path).map_err(step("stat", &b.path))?;
        make_parents(root, &b.path)?;
        // A symbolic link on the host stays one inside (merged /usr: /lib, /bin); its target must
        // be in the view too.
        if let Ok(to) = std::fs::read_link(&b.path) {
            if target.symlink_metadata().is_err() {
                std::os::unix::fs::symlink(&to, &target).map_err(step("symlink", &target))?;
            }
            continue;
        }
        if b.access == Access::Device {
            make_device(&b.path, &target, &meta, view.device_owner)?;
            continue;
        }
        // A path inside an earlier bind (a disk in the run directory) exists already: the bind
        // then sits on itself with its own flags, and nothing is created on the host.
        if target.symlink_metadata().is_err() {
            if meta.is_dir() {
                std::fs::create_dir(&target).map_err(step("mkdir", &target))?;
            } else {
                std::fs::File::create(&target).map_err(step("create", &target))?;
            }
        }
        // Not recursive: mounts under a bound directory (this root, under the run directory) stay out.
        mount(Some(&b.path), &target, None, libc::MS_BIND, None, "bind")?;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        match b.access {
            Access::ReadOnly => flags |= libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOEXEC,
            Access::ReadExec => flags |= libc::MS_RDONLY | libc::MS_NODEV,
            Access::ReadWrite => flags |= libc::MS_NODEV | libc::MS_NOEXEC,
            Access::Device => {} // made by make_device above, never bound
        }
        mount(None, &target, None, flags, None, "remount")?;
    }
    if view.proc {
        let p = root.join("proc");
        std::fs::create_dir_all(&p).map_err(step("mkdir", &p))?;
        mount(
            Some(Path::new("proc")),
            &p,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
            "mount proc on",
        )?;
    }
    let root_c = cstr(root)?;
    // SAFETY: chdir to a NUL-terminated path.
    if unsafe { libc::chdir(root_c.as_ptr()) } != 0 {
        return Err(step("chdir", root)(std::io::Error::last_os_error()));
    }
    let switch = match pivot_root_here() {
        Ok(()) => RootSwitch::PivotRoot,
        // The current root is the initial ramfs (rootfs), which has no parent mount: the kernel
        // refuses to pivot away from it. Do what switch_root and runc's no-pivot mode do.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            move_root(root)?;
            RootSwitch::MoveRoot
        }
        Err(e) => return Err(step("pivot_root", root)(e)),
    };
    // SAFETY: chdir to "/", a valid C string.
    if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
        return Err(step("chdir", Path::new("/"))(std::io::Error::last_os_error()));
    }
    // The tmpfs itself becomes read-only: nothing can be created beside the binds.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
        "remount read-only",
    )?;
    Ok(switch)
}

/// `pivot_root(".", ".")` in the new root (the current directory), then the host's root, stacked
/// on top of it, detached.
fn pivot_root_here() -> std::io::Result<()> {
    let dot = c".";
    // SAFETY: pivot_root(".", ".") stacks the old root on the new one (both valid C strings); the
    // old root is detached right after.
    if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: detaches the old root, which sits on top of "." after pivot_root.
    if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The fallback for a root `pivot_root` cannot leave (an initramfs): every mount of this
/// namespace outside the new root is detached first (the host's `/proc`, `/sys`, `/dev` and the
/// rest; only the directories leading to the new root stay, beneath it), then the new root
/// (the current directory) is moved onto `/` (`MS_MOVE`) and the process chroots into it. What
/// is left of the host's tree is the initramfs' own files under the moved mount, reachable only
/// by leaving a chroot, which needs `CAP_SYS_CHROOT` (dropped with everything else) and `chroot`
/// (on no role's list).
fn move_root(root: &Path) -> Result<(), RootfsError> {
    // As mountinfo spells it: absolute, no symbolic links.
    let root = &std::fs::canonicalize(root).map_err(step("resolve", root))?;
    for mount_point in mounts_outside(root)? {
        let c = cstr(&mount_point)?;
        // SAFETY: umount2 of a NUL-terminated path.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            // Gone already with a mount it sat in, or a directory that is no mount any more.
            if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) {
                return Err(step("detach the host's mount", &mount_point)(e));
            }
        }
    }
    mount(Some(Path::new(".")), Path::new("/"), None, libc::MS_MOVE, None, "move the new root onto")?;
    // SAFETY: chroot to ".", a valid C string (the new root, now mounted on "/").
    if unsafe { libc::chroot(c".".as_ptr()) } != 0 {
        return Err(step("chroot", root)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The mount points of this thread's mount namespace that are neither `root`, inside it, on the
/// way to it, nor `/`: deepest first.
fn mounts_outside(root: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    // The host's /proc, or (an initramfs without one) the view's own, mounted already.
    let info = Path::new("/proc/thread-self/mountinfo");
    let text = std::fs::read_to_string(info)
        .or_else(|e| std::fs::read_to_string(root.join("proc/thread-self/mountinfo")).map_err(|_| e))
        .map_err(step("read", info))?;
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p != Path::new("/") && !p.starts_with(root) && !root.starts_with(p))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    Ok(points)
}

/// A path of `/proc/*/mountinfo`, where space, tab, newline and backslash are octal escapes.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b.get(i + 1..i + 4).filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_without_dotdot() {
        assert!(under(Path::new("/r"), Path::new("etc/x")).is_err());
        assert!(under(Path::new("/r"), Path::new("/a/../etc/shadow")).is_err());
        assert_eq!(under(Path::new("/r"), Path::new("/dev/kvm")).unwrap(), Path::new("/r/dev/kvm"));
    }

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape_mountinfo("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape_mountinfo("/plain\\x"), "/plain\\x");
    }

    #[test]
    fn a_writable_bind_wins() {
        let mut v = View::default();
        v.add("/d/disk.img", Access::ReadOnly);
        v.add("/d/disk.img", Access::ReadWrite);
        v.add("/d/disk.img", Access::ReadOnly);
        assert_eq!(v.binds, vec![Bind { path: "/d/disk.img".into(), access: Access::ReadWrite }]);
    }
}
