//! Snapshot and restore of the native microVM.
//!
//! [`VmHandle::snapshot`] pauses the VM, flushes its disks, quiesces its devices and writes two files
//! into a directory: `state` (a state stream, see [`crate::vmm::state`]) and `memory` (guest RAM, the
//! regions back to back, written sparsely: pages that are all zero are holes). The VM stays paused;
//! [`VmHandle::resume`] continues it. [`MicroVm::restore`] builds a new VM of the same configuration
//! whose RAM is the memory file mapped `MAP_PRIVATE` (pages are read when the guest touches them, so
//! restore time does not grow with memory size), applies the state and returns it ready to start,
//! running or paused.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::devices::lock;
use super::state::{self, Decoder, Encoder, Persist, Section, StateError};
use super::{Build, ExitReason, MicroVm, VmConfig, VmHandle, VmmError};
use crate::hypervisor::{CpuId, Hypervisor, HypervisorError, VcpuState, VmState};

/// Name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// Name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// Guest page size the memory file and the dirty log use.
pub const PAGE: usize = 4096;

/// Errors of snapshot and restore.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The state is malformed, corrupted or from a newer build.
    #[error("snapshot state: {0}")]
    State(#[from] StateError),
    /// The hypervisor refused to read or write state.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The VM could not be built.
    #[error(transparent)]
    Vmm(#[from] VmmError),
    /// The snapshot was taken of a VM configured differently.
    #[error("the snapshot is of a VM with {snapshot}; the configuration to restore it into has {ours}")]
    ConfigMismatch {
        /// What the snapshot's VM had.
        snapshot: String,
        /// What the new configuration has.
        ours: String,
    },
    /// The VM ended before the snapshot.
    #[error("cannot snapshot: the VM has already ended ({0:?})")]
    Ended(ExitReason),
    /// Guest memory could not be read or written.
    #[error("guest memory at {gpa:#x}: {msg}")]
    Memory {
        /// Guest-physical address.
        gpa: u64,
        /// What failed.
        msg: String,
    },
}

/// What a snapshot wrote and how long each part took.
#[derive(Debug, Clone, Default)]
pub struct SnapshotStats {
    /// Pausing the vCPUs.
    pub pause: Duration,
    /// Flushing disks and saving device, VM and vCPU state.
    pub state: Duration,
    /// Writing guest memory.
    pub memory: Duration,
    /// Bytes of the state file.
    pub state_bytes: usize,
    /// Non-zero pages written to the memory file.
    pub pages_written: u64,
    /// Size of guest memory (the memory file's length).
    pub memory_bytes: u64,
}

/// The configuration a snapshot or migration stream must match: memory, vCPUs, disks and the CPUID
/// the guest sees (a guest moved to a CPU with fewer features could crash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSummary {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub cpus: u8,
    /// Disk sizes in bytes, in order.
    pub disks: Vec<u64>,
    /// vCPU 0's CPUID entries: (function, index, eax, ebx, ecx, edx).
    pub cpuid: Vec<[u32; 6]>,
}

impl ConfigSummary {
    pub(crate) fn of(cfg: &VmConfig, cpuid: &CpuId) -> Self {
        Self {
            memory_mib: cfg.memory_mib,
            cpus: cfg.cpus,
            disks: cfg.disks.iter().map(|d| d.size()).collect(),
            cpuid: cpuid
                .as_slice()
                .iter()
                // The APIC ID bits of leaves 1 and 0xb differ per vCPU, not per host; vCPU 0's are fixed.
                .map(|e| [e.function, e.index, e.eax, e.ebx, e.ecx, e.edx])
                .collect(),
        }
    }

    /// Refuses `other` (the snapshot's) unless it matches, naming the first difference.
    pub fn check(&self, other: &ConfigSummary) -> Result<(), SnapshotError> {
        let mismatch = |snapshot: String, ours: String| Err(SnapshotError::ConfigMismatch { snapshot, ours });
        if other.memory_mib != self.memory_mib {
            return mismatch(
                format!("{} MiB of memory", other.memory_mib),
                format!("{} MiB", self.memory_mib),
            );
        }
        if other.cpus != self.cpus {
            return mismatch(format!("{} vCPUs", other.cpus), format!("{}", self.cpus));
        }
        if other.disks != self.disks {
            return mismatch(format!("disks of {:?} bytes", other.disks), format!("{:?}", self.disks));
        }
        if other.cpuid != self.cpuid {
            let diff = other.cpuid.iter().find(|e| !self.cpuid.contains(e));
            return mismatch(
                format!("CPUID leaf {:x?} (function, index, eax, ebx, ecx, edx)", diff),
                "a CPU without it (a different host CPU or KVM)".into(),
            );
        }
        Ok(())
    }
}

impl Persist for ConfigSummary {
    const VERSION: u16 = 1;

    fn save(&self, e: &mut Encoder) -> Result<(), StateError> {
        e.u64(self.memory_mib);
        e.u8(self.cpus);
        e.u32(self.disks.len() as u32);
        for d in &self.disks {
            e.u64(*d);
        }
        e.u32(self.cpuid.len() as u32);
        for l in &self.cpuid {
            for w in l {
                e.u32(*w);
            }
        }
        Ok(())
    }

    fn restore(&mut self, _version: u16, d: &mut Decoder<'_>) -> Result<(), StateError> {
        self.memory_mib = d.u64()?;
        self.cpus = d.u8()?;
        let n = d.u32()? as usize;
        if n > 64 {
            return Err(d.invalid(format!("{n} disks, at most 64 expected")));
        }
        self.disks = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
        let n = d.u32()? as usize;
        if n > 1024 {
            return Err(d.invalid(format!("{n} CPUID leaves, at most 1024 expected")));
        }
        self.cpuid = (0..n)
            .map(|_| Ok([d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?, d.u32()?]))
            .collect::<Result<_, StateError>>()?;
        Ok(())
    }
}

fn vcpu_section(id: usize) -> String {
    format!("vcpu{id}")
}

impl VmHandle {
    /// Pauses the VM (if it is not already) and saves the state of its devices (quiescing their
    /// workers), its in-kernel devices and its vCPUs, in that order: a device finishing a request may
    /// still raise an interrupt, which must land in the interrupt controllers' saved state.
    pub fn save_state(&self) -> Result<Vec<Section>, SnapshotError> {
        if let Some(r) = self.exit.get() {
            return Err(SnapshotError::Ended(r));
        }
        self.pause();
        let mut sections = vec![self.cfg_summary.to_section("config")?];
        let mut devs = Vec::new();
        for (name, d) in &self.devices {
            devs.push(lock(d).save_section(name)?);
        }
        sections.push(self.vm.save_state()?.to_section("vm")?);
        for (i, v) in self.ctl.save_states()?.iter().enumerate() {
            sections.push(v.to_section(&vcpu_section(i))?);
        }
        sections.extend(devs);
        Ok(sections)
    }

    /// Flushes every device's writes (disks) so a snapshot's disks are consistent with its memory.
    pub fn flush_devices(&self) -> Result<(), SnapshotError> {
        for (_, d) in &self.devices {
            lock(d).flush()?;
        }
        Ok(())
    }

    /// Takes a snapshot into `dir` (created if needed): pauses, flushes disks, writes `state` and a
    /// sparse `memory` file. The VM stays paused; [`VmHandle::resume`] continues it.
    pub fn snapshot(&self, dir: &Path) -> Result<SnapshotStats, SnapshotError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let t0 = Instant::now();
        self.pause();
        let t1 = Instant::now();
        self.flush_devices()?;
        let stream = state::write_stream(&self.save_state()?)?;
        let t2 = Instant::now();
        let mem_path = dir.join(MEMORY_FILE);
        let f = File::create(&mem_path).map_err(io("create", &mem_path))?;
        let (pages_written, memory_bytes) = write_memory_sparse(&self.mem, &f, &mem_path)?;
        f.sync_all().map_err(io("sync", &mem_path))?;
        let t3 = Instant::now();
        // The state file is written last and renamed into place: a snapshot directory with a state
        // file always has its whole memory file.
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        let mut sf = File::create(&tmp).map_err(io("create", &tmp))?;
        sf.write_all(&stream).map_err(io("write", &tmp))?;
        sf.sync_all().map_err(io("sync", &tmp))?;
        let state_path = dir.join(STATE_FILE);
        std::fs::rename(&tmp, &state_path).map_err(io("rename into", &state_path))?;
        Ok(SnapshotStats {
            pause: t1 - t0,
            state: t2 - t1,
            memory: t3 - t2,
            state_bytes: stream.len(),
            pages_written,
            memory_bytes,
        })
    }
}

/// Calls `f(guest address, offset in the memory image, bytes)` for every run of non-zero pages, in
/// address order, reading memory through a bounded buffer.
pub(crate) fn for_each_nonzero_run(
    mem: &GuestMemoryMmap,
    mut f: impl FnMut(u64, u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<u64, SnapshotError> {
    const CHUNK: usize = 2 << 20;
    let mut buf = vec![0u8; CHUNK];
    let mut image_off = 0u64;
    let mut pages = 0;
    for r in mem.iter() {
        let start = r.start_addr().0;
        let len = r.len();
        let mut done = 0u64;
        while done < len {
            let n = CHUNK.min((len - done) as usize);
            let gpa = start + done;
            mem.read_slice(&mut buf[..n], GuestAddress(gpa))
                .map_err(|e| SnapshotError::Memory { gpa, msg: e.to_string() })?;
            let mut i = 0;
            while i < n {
                if is_zero(&buf[i..(i + PAGE).min(n)]) {
                    i += PAGE;
                    continue;
                }
                let mut j = i + PAGE;
                while j < n && !is_zero(&buf[j..(j + PAGE).min(n)]) {
                    j += PAGE;
                }
                let j = j.min(n);
                pages += (j - i).div_ceil(PAGE) as u64;
                f(gpa + i as u64, image_off + done + i as u64, &buf[i..j])?;
                i = j;
            }
            done += n as u64;
        }
        image_off += len;
    }
    Ok(pages)
}

fn is_zero(b: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets the aligned middle.
        unsafe { b.align_to::<u64>() }
    };
    head.iter().all(|&x| x == 0) && words.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

/// Writes guest memory to `f` as a sparse image; returns (pages written, image length).
fn write_memory_sparse(mem: &GuestMemoryMmap, f: &File, path: &Path) -> Result<(u64, u64), SnapshotError> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let io = |op| {
        let path = path.to_path_buf();
        move |source| SnapshotError::Io { op, path, source }
    };
    f.set_len(total).map_err(io("size"))?;
    let pages = for_each_nonzero_run(mem, |_, off, bytes| f.write_all_at(bytes, off).map_err(io("write")))?;
    Ok((pages, total))
}

impl MicroVm {
    /// Restores the snapshot in `dir` into a new VM built from `cfg` (same memory size, vCPUs and
    /// disks as the snapshot's VM; the payload is ignored). Start it with [`MicroVm::start`] or
    /// [`MicroVm::start_paused`].
    pub fn restore(hv: &dyn Hypervisor, cfg: VmConfig, dir: &Path) -> Result<Self, SnapshotError> {
        let state_path = dir.join(STATE_FILE);
        let bytes = std::fs::read(&state_path).map_err(|source| SnapshotError::Io {
            op: "read",
            path: state_path.clone(),
            source,
        })?;
        let sections = state::read_stream(&bytes)?;
        // Check the configuration before mapping anything.
        let mut theirs = ConfigSummary::default();
        theirs.load_section(state::find(&sections, "config")?)?;
        let mem_path = dir.join(MEMORY_FILE);
        let f = File::open(&mem_path).map_err(|source| SnapshotError::Io {
            op: "open",
            path: mem_path.clone(),
            source,
        })?;
        let want = cfg.memory_mib.saturating_mul(1 << 20);
        let have = f
            .metadata()
            .map_err(|source| SnapshotError::Io { op: "stat", path: mem_path.clone(), source })?
            .len();
        if have != want {
            return Err(SnapshotError::ConfigMismatch {
                snapshot: format!("a memory file of {have} bytes ({})", mem_path.display()),
                ours: format!("{want} bytes of memory"),
            });
        }
        let mut vm = MicroVm::build(hv, cfg, Build::File(&f))?;
        vm.apply_state(&sections)?;
        Ok(vm)
    }

    /// Applies a saved state to this freshly built (not started) VM.
    pub(crate) fn apply_state(&mut self, sections: &[Section]) -> Result<(), SnapshotError> {
        let mut theirs = ConfigSummary::default();
        theirs.load_section(state::find(sections, "config")?)?;
        self.cfg_summary.check(&theirs)?;
        let mut vm_state = VmState::default();
        vm_state.load_section(state::find(sections, "vm")?)?;
        let mut vcpus = Vec::new();
        for i in 0..self.vcpus.len() {
            let mut v = VcpuState::default();
            v.load_section(state::find(sections, &vcpu_section(i))?)?;
            vcpus.push(v);
        }
        for (name, d) in &self.devices {
            lock(d).restore_section(state::find(sections, name)?)?;
        }
        self.vm.restore_state(&vm_state)?;
        for (v, s) in self.vcpus.iter().zip(&vcpus) {
            v.restore_state(s)?;
        }
        Ok(())
    }
}
