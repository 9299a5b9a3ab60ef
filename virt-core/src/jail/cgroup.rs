//! A cgroup per machine, limiting the memory and the number of tasks of the launcher and everything
//! it starts (QEMU, swtpm). Works on cgroup v2 (the unified hierarchy, where it has the controller)
//! and on v1 (a hierarchy per controller), each controller where this host has it. The group is a
//! child of the cgroup the launcher starts in, so limits of the hierarchy above still hold.

use std::path::{Path, PathBuf};

/// Why the cgroup could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The host has no hierarchy with this controller.
    #[error("no cgroup v1 or v2 hierarchy offers the {controller} controller (see /proc/self/mountinfo)")]
    NoController {
        /// `memory` or `pids`.
        controller: &'static str,
    },
    /// A file of the cgroup file system could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What a machine's cgroup allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Memory of every process in the group, bytes (guest memory + [`overhead_mib`]).
    pub memory_bytes: u64,
    /// Tasks (processes and threads) in the group.
    pub pids: u64,
}

/// Memory a machine may use beyond its guest memory, MiB: the VMM's own heap, stacks, page tables
/// and device buffers (64 MiB), 8 MiB per vCPU (thread stacks, KVM's per-vCPU state), 1/64 of guest
/// memory for page tables and dirty bitmaps, and under QEMU's software emulation 512 MiB for the
/// translated-code cache (QEMU's `tb-size` grows up to 1 GiB; measured below 300 MiB for a Debian
/// boot). See docs/confinement.md.
pub fn overhead_mib(guest_mib: u64, vcpus: u32, emulation: bool) -> u64 {
    64 + 8 * u64::from(vcpus) + guest_mib.div_ceil(64) + if emulation { 512 } else { 0 }
}

/// The task limit for a machine with `vcpus`: the launcher's threads (about a dozen plus one per
/// control connection, at most 64), QEMU's (one per vCPU, its I/O and RCU threads and a worker pool
/// of up to 64) and swtpm.
pub fn pids_for(vcpus: u32) -> u64 {
    192 + 2 * u64::from(vcpus)
}

/// A hierarchy: where it is mounted, and the cgroup this process is in there.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hierarchy {
    v2: bool,
    dir: PathBuf,
}

/// The cgroup a machine runs in, one directory per hierarchy used.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<(PathBuf, PathBuf)>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { op, path, source }
}

/// Where this process's cgroup of `controller` is: the unified hierarchy if it offers the
/// controller there, else the v1 hierarchy that has it.
fn find(controller: &'static str, mountinfo: &str, self_cgroup: &str) -> Option<Hierarchy> {
    let mut v1 = None;
    let mut v2 = None;
    for l in mountinfo.lines() {
        let Some((left, right)) = l.split_once(" - ") else { continue };
        let mut r = right.split_whitespace();
        let (fstype, _src, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        let mount = PathBuf::from(left.split_whitespace().nth(4)?);
        let root = left.split_whitespace().nth(3)?;
        if fstype == "cgroup2" {
            v2 = Some((mount, root.to_string()));
        } else if fstype == "cgroup" && opts.split(',').any(|o| o == controller) {
            v1 = Some((mount, root.to_string()));
        }
    }
    let rel = |mount: PathBuf, root: &str, path: &str| {
        let path = path.strip_prefix(root).unwrap_or(path);
        mount.join(path.trim_start_matches('/'))
    };
    if let Some((mount, root)) = v2 {
        let path = self_cgroup.lines().find_map(|l| l.strip_prefix("0::"));
        if let Some(path) = path {
            let dir = rel(mount, &root, path);
            let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
            if offered.split_whitespace().any(|c| c == controller) {
                return Some(Hierarchy { v2: true, dir });
            }
        }
    }
    let (mount, root) = v1?;
    let path = self_cgroup.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_id, ctrls, path) = (p.next()?, p.next()?, p.next()?);
        ctrls.split(',').any(|c| c == controller).then_some(path)
    })?;
    Some(Hierarchy { v2: false, dir: rel(mount, &root, path) })
}

impl Cgroup {
    /// Creates the cgroup `name` (under this process's own cgroup in each hierarchy used), sets
    /// `limits` and moves this process into it; children started afterwards are in it too.
    pub fn join(name: &str, limits: Limits) -> Result<Cgroup, CgroupError> {
        let mi = Path::new("/proc/self/mountinfo");
        let mountinfo = std::fs::read_to_string(mi).map_err(io("read", mi))?;
        let sc = Path::new("/proc/self/cgroup");
        let self_cgroup = std::fs::read_to_string(sc).map_err(io("read", sc))?;
        let mut plan: Vec<(Hierarchy, Vec<(&str, String)>)> = Vec::new();
        for (controller, files) in [
            (
                "memory",
                [("memory.max", "memory.limit_in_bytes"), ("memory.swap.max", "memory.memsw.limit_in_bytes")],
            ),
            ("pids", [("pids.max", "pids.max"), ("", "")]),
        ] {
            let h =
                find(controller, &mountinfo, &self_cgroup).ok_or(CgroupError::NoController { controller })?;
            let values: Vec<(&str, String)> = files
                .iter()
                .filter(|(v2, _)| !v2.is_empty())
                .map(|&(v2, v1)| {
                    let value = match v2 {
                        "pids.max" => limits.pids,
                        "memory.swap.max" if h.v2 => 0,
                        _ => limits.memory_bytes,
                    };
                    (if h.v2 { v2 } else { v1 }, value.to_string())
                })
                .collect();
            match plan.iter_mut().find(|(p, _)| *p == h) {
                Some((_, v)) => v.extend(values),
                None => plan.push((h, values)),
            }
        }
        let mut cg = Cgroup { dirs: Vec::new() };
        for (h, values) in plan {
            if h.v2 {
                // The parent hands the controllers down (fails with EBUSY if it holds processes
                // itself: give the launchers a delegated, empty parent cgroup on such hosts).
                let ctl = h.dir.join("cgroup.subtree_control");
                let want: Vec<&str> = values.iter().map(|(f, _)| f.split('.').next().unwrap_or("")).collect();
                for c in ["memory", "pids"].into_iter().filter(|c| want.contains(c)) {
                    std::fs::write(&ctl, format!("+{c}")).map_err(io("enable the controller in", &ctl))?;
                }
            }
            let dir = h.dir.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("create", &dir)(e)),
            }
            cg.dirs.push((dir.clone(), h.dir.clone()));
            for (file, value) in values {
                let p = dir.join(file);
                match std::fs::write(&p, &value) {
                    Ok(()) => {}
                    // Swap accounting is optional (memsw needs swapaccount=1; v2 without swap).
                    Err(e) if file.contains("sw") && e.kind() != std::io::ErrorKind::PermissionDenied => {
                        log::debug!("cgroup {}: {e}", p.display())
                    }
                    Err(e) => return Err(io("write", &p)(e)),
                }
            }
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, format!("{}\n", std::process::id())).map_err(io("join", &procs))?;
        }
        Ok(cg)
    }

    /// The cgroup's directories (one per hierarchy used).
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(d, _)| d.as_path())
    }

    /// Moves this process back to the cgroup it came from and removes the machine's (once the
    /// machine and its children are gone): what dropping it does.
    pub fn leave(self) {}
}

impl Drop for Cgroup {
    /// Errors are logged: what is left is an empty group, harmless.
    fn drop(&mut self) {
        for (dir, parent) in &self.dirs {
            let procs = parent.join("cgroup.procs");
            if let Err(e) = std::fs::write(&procs, format!("{}\n", std::process::id())) {
                log::warn!("cgroup: move back to {}: {e}", parent.display());
                continue;
            }
            if let Err(e) = std::fs::remove_dir(dir) {
                // A read-only parent (without CAP_DAC_OVERRIDE): the next launcher removes it.
                log::debug!("cgroup: remove {}: {e}", dir.display());
            }
        }
    }
}

/// Prefix of the machines' cgroups; the name ends with `-<launcher pid>`.
pub const PREFIX: &str = "virt-launcher-";

/// Removes the groups of launchers that are gone: a launcher that lost its capabilities cannot
/// remove its own group where the parent directory is read-only without CAP_DAC_OVERRIDE (a v1
/// hierarchy's root is mode 0555), nor does one killed for a forbidden call; the next launcher does.
/// `rmdir` of a cgroup with tasks fails, so a live machine's group is never touched.
pub fn collect_stale() {
    let (Ok(mountinfo), Ok(self_cgroup)) =
        (std::fs::read_to_string("/proc/self/mountinfo"), std::fs::read_to_string("/proc/self/cgroup"))
    else {
        return;
    };
    for c in ["memory", "pids"] {
        if let Some(h) = find(c, &mountinfo, &self_cgroup) {
            collect_stale_in(&h.dir);
        }
    }
}

fn collect_stale_in(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// The directory of the cgroup the process `pid` is in for `controller`, and whether it is v2.
pub fn dir_of(pid: u32, controller: &'static str) -> Result<(PathBuf, bool), CgroupError> {
    let mi = Path::new("/proc/self/mountinfo");
    let mountinfo = std::fs::read_to_string(mi).map_err(io("read", mi))?;
    let pc = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let cg = std::fs::read_to_string(&pc).map_err(io("read", &pc))?;
    let h = find(controller, &mountinfo, &cg).ok_or(CgroupError::NoController { controller })?;
    Ok((h.dir, h.v2))
}

/// Reads a limit file (`v1_file` or `v2_file`) of the cgroup the process `pid` is in for
/// `controller` (tests and checks).
pub fn read_limit(
    pid: u32,
    controller: &'static str,
    v1_file: &str,
    v2_file: &str,
) -> Result<String, CgroupError> {
    let (dir, v2) = dir_of(pid, controller)?;
    let p = dir.join(if v2 { v2_file } else { v1_file });
    std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(io("read", &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_hierarchies_are_found_per_controller_under_the_own_cgroup() {
        let cg = "8:pids:/\n4:memory:/api/abc\n0::/\n";
        let m = find("memory", MOUNTINFO, cg).unwrap();
        assert_eq!(m, Hierarchy { v2: false, dir: "/sys/fs/cgroup/memory/api/abc".into() });
        let p = find("pids", MOUNTINFO, cg).unwrap();
        assert_eq!(p, Hierarchy { v2: false, dir: "/sys/fs/cgroup/pids/".into() });
        assert_eq!(find("cpuset", MOUNTINFO, cg), None);
    }

    #[test]
    fn overhead_grows_with_vcpus_memory_and_emulation() {
        assert_eq!(overhead_mib(256, 1, false), 64 + 8 + 4);
        assert_eq!(overhead_mib(256, 1, true), 64 + 8 + 4 + 512);
        assert!(pids_for(4) > pids_for(1));
    }
}
