//! Copy-on-write file clones (`FICLONE`), as XFS (reflink=1) and btrfs offer them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `FICLONE` = `_IOW(0x94, 9, int)`.
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Makes `dst` (an open, empty file) share all of `src`'s blocks. Fails with `EOPNOTSUPP`/`EXDEV`/
/// `EINVAL` where the file system has no reflinks.
pub fn reflink(src: &File, dst: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source descriptor as its integer argument and touches no memory of
    // ours; both descriptors are open files owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether files in `dir` can be cloned with reflinks; on failure, the reason.
pub fn probe(dir: &Path) -> Result<(), String> {
    let a = dir.join(format!(".reflink-probe-{}-a", std::process::id()));
    let b = dir.join(format!(".reflink-probe-{}-b", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        std::fs::write(&a, [0x5au8; 4096])?;
        let src = File::open(&a)?;
        let dst = File::create(&b)?;
        reflink(&src, &dst)
    })();
    let _ = std::fs::remove_file(&a);
    let _ = std::fs::remove_file(&b);
    r.map_err(|e| format!("the file system of {} does not support reflinks (FICLONE: {e})", dir.display()))
}
