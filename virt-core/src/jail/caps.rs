//! Capabilities of the calling thread (they are per thread in Linux): the bounding set and the
//! ambient set emptied, effective and permitted cut to what is kept, nothing inheritable.

/// Why capabilities could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    /// `capset` failed.
    #[error("capset(effective = permitted = {keep:#x}): {source}")]
    Capset {
        /// The capabilities kept.
        keep: u64,
        /// The kernel's error.
        source: std::io::Error,
    },
    /// `prctl` failed.
    #[error("prctl({op}): {source}")]
    Prctl {
        /// The operation.
        op: &'static str,
        /// The kernel's error.
        source: std::io::Error,
    },
}

impl CapsError {
    /// The kernel's error alone (no allocation: usable between fork and exec).
    pub fn into_io(self) -> std::io::Error {
        match self {
            CapsError::Capset { source, .. } | CapsError::Prctl { source, .. } => source,
        }
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread except those whose bit is set in `keep`, and sets
/// `no_new_privs` (so no later `execve` can gain any).
pub fn drop_capabilities(keep: u64) -> Result<(), CapsError> {
    let prctl_err = |op| move |source| CapsError::Prctl { op, source };
    for cap in 0..64u64 {
        if keep & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ takes a capability number and reads nothing else.
        let has = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) };
        if has < 0 {
            break; // past the kernel's last capability
        }
        if has == 1 {
            // SAFETY: PR_CAPBSET_DROP takes a capability number; it needs CAP_SETPCAP, which is
            // dropped last (below), so it is still held here if the thread had it.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // Without CAP_SETPCAP the bounding set cannot shrink; an unprivileged thread has no
                // capability to lose anyway, and capset below still empties the effective set.
                if e.raw_os_error() != Some(libc::EPERM) {
                    return Err(prctl_err("PR_CAPBSET_DROP")(e));
                }
            }
        }
    }
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no pointers.
    let r = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    if r != 0 {
        return Err(prctl_err("PR_CAP_AMBIENT_CLEAR_ALL")(std::io::Error::last_os_error()));
    }
    let mut hdr = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [
        CapData { effective: keep as u32, permitted: keep as u32, inheritable: 0 },
        CapData { effective: (keep >> 32) as u32, permitted: (keep >> 32) as u32, inheritable: 0 },
    ];
    // SAFETY: capset reads a version-3 header and two data structs, both valid for the call; pid 0
    // is the calling thread.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(CapsError::Capset { keep, source: std::io::Error::last_os_error() });
    }
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integers only.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(prctl_err("PR_SET_NO_NEW_PRIVS")(std::io::Error::last_os_error()));
    }
    Ok(())
}
