//! The node's [`Runtime`]: each VMI runs in its own `virt-launcher` process, in a run directory
//! named after the VMI's uid, reached through the launcher's control and console sockets
//! ([`virt_core::machine::remote`]). Launchers run in their own process group, so a node daemon
//! that dies (even by SIGKILL) leaves them running, and a restarted daemon finds them again.
//!
//! Before a launch the runtime prepares what the VMI's volumes name: containerDisk images are pulled
//! from their registry once (cached by digest) and each VMI writes to its own qcow2 overlay on top
//! (ephemeral, as KubeVirt's containerDisks are); cloud-init seed disks are written; emptyDisks and
//! hostDisks (`DiskOrCreate`) are created; kernel-boot containers give their kernel and initrd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virt_core::lifecycle::Runtime;
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::remote::{self, RemoteMachine};
use virt_core::machine::resolve::{machine_spec, HostFileError, VolumeFiles};
use virt_core::machine::{DiskFormat, InterfaceBackend, Machine, MachineExit};
use virt_core::model::{self, VirtualMachineInstance, Volume};
use virt_storage::format::detect::{detect_path, ImageFormat};
use virt_storage::format::open_image;
use virt_storage::format::qcow2::{Qcow2, Qcow2CreateOptions};
use virt_storage::registry::{RegistryClient, RegistryConfig};

/// How the node runs launchers.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    /// The `virt-launcher` binary.
    pub launcher: PathBuf,
    /// Where run directories (`vmis/<uid>`) and the image cache (`images/`) go.
    pub state_dir: PathBuf,
    /// The node allows software emulation (KubeVirt's `useEmulation`).
    pub allow_emulation: bool,
    /// Force a backend (`native` or `qemu`); `None` chooses per VMI.
    pub backend: Option<String>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) for registries.
    pub registry_ca: Option<Vec<u8>>,
    /// How long a launcher may take to start its machine.
    pub start_timeout: Duration,
    /// Directories `hostDisk` images may live in (empty: `hostDisk` disabled).
    pub host_disk_dirs: Vec<PathBuf>,
    /// Where containerDisk and kernel-boot pulls may connect.
    pub net_policy: Option<Arc<virt_storage::import::policy::NetPolicy>>,
}

/// Tells whether a claim a VMI names is populated: the node's CDI controller answers for the claims
/// its DataVolumes fill ([`LauncherRuntime::set_claims`]).
pub trait ClaimReadiness: Send + Sync {
    /// `None` when no DataVolume fills `namespace/claim`; `Some(Ok(()))` once it is populated;
    /// `Some(Err(why))` while it is not, e.g. "DataVolume x is not ready (phase ImportInProgress,
    /// progress 45.20%)".
    fn claim_ready(&self, namespace: &str, claim: &str) -> Option<Result<(), String>>;
}

/// Runs VMIs in launcher processes.
pub struct LauncherRuntime {
    cfg: LauncherConfig,
    /// Who knows about DataVolumes (none: claims are plain files of the pool).
    claims: std::sync::OnceLock<Arc<dyn ClaimReadiness>>,
    /// Secrets (cloud-init `secretRef`, `accessCredentials`); none: such VMIs fail to launch.
    objects: std::sync::OnceLock<Arc<super::core_objects::CoreObjects>>,
    /// Launchers this process spawned, reaped when they exit (no zombies while the node runs).
    children: Mutex<HashMap<PathBuf, Child>>,
    /// One pull of an image at a time.
    pull_lock: Mutex<()>,
    /// The pod network (none: interfaces stay unlinked).
    network: std::sync::OnceLock<Arc<super::network::NodeNetwork>>,
}

impl LauncherRuntime {
    /// A runtime with `cfg`.
    pub fn new(cfg: LauncherConfig) -> Self {
        Self {
            cfg,
            claims: std::sync::OnceLock::new(),
            objects: std::sync::OnceLock::new(),
            children: Mutex::new(HashMap::new()),
            pull_lock: Mutex::new(()),
            network: std::sync::OnceLock::new(),
        }
    }

    /// Gives VMIs a pod network: each launcher then runs in its VMI's network namespace with taps
    /// made for its interfaces. Only the first call counts.
    pub fn set_network(&self, network: Arc<super::network::NodeNetwork>) {
        let _ = self.network.set(network);
    }

    /// Lets `claims` say whether DataVolume-filled claims are ready: VMIs then wait (Pending) for
    /// their DataVolumes instead of failing. Only the first call counts.
    pub fn set_claims(&self, claims: Arc<dyn ClaimReadiness>) {
        let _ = self.claims.set(claims);
    }

    /// Lets launches read the node's Secrets. Only the first call counts.
    pub fn set_objects(&self, objects: Arc<super::core_objects::CoreObjects>) {
        let _ = self.objects.set(objects);
    }

    /// The file of claim `claim` in `ns` in the node's pool, if it exists.
    fn claim_file(&self, ns: &str, claim: &str) -> Option<(PathBuf, DiskFormat)> {
        let dir = self.cfg.state_dir.join("volumes").join(ns);
        [("img", DiskFormat::Raw), ("raw", DiskFormat::Raw), ("qcow2", DiskFormat::Qcow2)]
            .into_iter()
            .map(|(ext, fmt)| (dir.join(format!("{claim}.{ext}")), fmt))
            .find(|(p, _)| p.is_file())
    }

    /// The run directory of `vmi`.
    pub fn run_dir(&self, vmi: &VirtualMachineInstance) -> PathBuf {
        let uid = vmi.metadata.uid.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                vmi.metadata.namespace.as_deref().unwrap_or("default"),
                vmi.metadata.name.as_deref().unwrap_or("vmi")
            )
        });
        self.cfg.state_dir.join("vmis").join(uid)
    }

    /// The serial console of `vmi`'s machine: its ring buffer, then live output (see
    /// [`RemoteMachine::console`]).
    pub fn console(
        &self,
        vmi: &VirtualMachineInstance,
    ) -> Result<std::os::unix::net::UnixStream, Box<remote::RemoteError>> {
        let m = RemoteMachine::connect(&self.run_dir(vmi)).map_err(Box::new)?;
        m.console().map_err(Box::new)
    }

    /// The file the guest's serial output is logged to.
    pub fn console_log(&self, vmi: &VirtualMachineInstance) -> PathBuf {
        self.run_dir(vmi).join("console.log")
    }

    /// Prepares `vmi`'s volumes in its run directory and writes the launcher's `spec.json` there
    /// (through a temporary file and a rename: never half-written), without starting a launcher.
    /// On a cluster the launcher runs in the VMI's pod, which mounts the run directory and the
    /// image cache at the same paths (`cluster::handler`). Returns the spec's path.
    pub fn write_spec(&self, vmi: &VirtualMachineInstance) -> Result<PathBuf, String> {
        let run_dir = self.run_dir(vmi);
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let accel = if self.cfg.allow_emulation { AccelPolicy::Auto } else { AccelPolicy::RequireKvm };
        let files = self.prepare(vmi, &run_dir)?;
        let spec = machine_spec(&name, &vmi.spec, &files, accel).map_err(|e| e.to_string())?;
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| format!("encoding the machine spec: {e}"))?;
        let spec_path = run_dir.join("spec.json");
        let tmp = run_dir.join(".spec.json.tmp");
        std::fs::write(&tmp, json).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &spec_path).map_err(|e| format!("{}: {e}", spec_path.display()))?;
        Ok(spec_path)
    }

    fn reap(&self) {
        let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
        ch.retain(|_, c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    fn registry(&self) -> Result<RegistryClient, String> {
        let mut cfg = RegistryConfig { net_policy: self.cfg.net_policy.clone(), ..RegistryConfig::default() };
        for r in &self.cfg.insecure_registries {
            cfg = cfg.with_insecure_registry(r.clone());
        }
        if let Some(ca) = &self.cfg.registry_ca {
            cfg = cfg.with_ca_bundle(ca.clone());
        }
        RegistryClient::new(cfg).map_err(|e| format!("registry client: {e}"))
    }

    /// Pulls `image`'s containerDisk into the cache (once per digest); returns the disk file.
    fn container_disk(&self, image: &str) -> Result<PathBuf, String> {
        let _one = self.pull_lock.lock().unwrap_or_else(|e| e.into_inner());
        let client = self.registry()?;
        let reference = image.strip_prefix("docker://").unwrap_or(image);
        let digest = client.resolve_digest(reference).map_err(|e| format!("containerDisk {image}: {e}"))?;
        let dir = self.cfg.state_dir.join("images").join(digest.hex());
        if let Some(existing) = first_file(&dir) {
            return Ok(existing);
        }
        let pinned = match reference.split_once('@') {
            Some(_) => reference.to_string(),
            None => format!("{}@{digest}", strip_tag(reference)),
        };
        client.extract_container_disk(&pinned, &dir).map_err(|e| format!("containerDisk {image}: {e}"))
    }

    /// Pulls a kernel-boot container's kernel and initrd into the cache.
    fn kernel_files(&self, c: &model::KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), String> {
        let _one = self.pull_lock.lock().unwrap_or_else(|e| e.into_inner());
        let client = self.registry()?;
        let reference = c.image.strip_prefix("docker://").unwrap_or(&c.image);
        let digest =
            client.resolve_digest(reference).map_err(|e| format!("kernelBoot image {}: {e}", c.image))?;
        let dir = self.cfg.state_dir.join("images").join(digest.hex());
        let mut wanted: Vec<&str> = Vec::new();
        let kernel = c.kernel_path.as_deref().ok_or("kernelBoot.container.kernelPath is required")?;
        wanted.push(kernel);
        if let Some(i) = c.initrd_path.as_deref() {
            wanted.push(i);
        }
        let local = |p: &str| dir.join(p.trim_start_matches('/'));
        if !wanted.iter().all(|p| local(p).is_file()) {
            let pinned = match reference.split_once('@') {
                Some(_) => reference.to_string(),
                None => format!("{}@{digest}", strip_tag(reference)),
            };
            client
                .extract_files(&pinned, &wanted, &dir)
                .map_err(|e| format!("kernelBoot image {}: {e}", c.image))?;
        }
        Ok((local(kernel), c.initrd_path.as_deref().map(local)))
    }

    /// Prepares the files of `vmi`'s volumes in `run_dir`.
    fn prepare(&self, vmi: &VirtualMachineInstance, run_dir: &Path) -> Result<PreparedFiles, String> {
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut files = HashMap::new();
        for v in &vmi.spec.volumes {
            let f = self
                .prepare_volume(vmi, &name, &ns, v, run_dir)
                .map_err(|e| format!("volume {}: {e}", v.name))?;
            files.insert(v.name.clone(), f);
        }
        let kernel = match vmi
            .spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.kernel_boot.as_ref())
            .and_then(|k| k.container.as_ref())
        {
            Some(c) => Some(self.kernel_files(c)?),
            None => None,
        };
        Ok(PreparedFiles { files, kernel, state_dir: run_dir.join("state"), taps: HashMap::new() })
    }

    fn prepare_volume(
        &self,
        vmi: &VirtualMachineInstance,
        name: &str,
        ns: &str,
        v: &Volume,
        run_dir: &Path,
    ) -> Result<(PathBuf, DiskFormat), String> {
        if let Some(cd) = &v.container_disk {
            let base = self.container_disk(&cd.image)?;
            let base_fmt = detect_path(&base).map_err(|e| e.to_string())?;
            if !matches!(base_fmt, ImageFormat::Qcow2 | ImageFormat::Raw) {
                return Err(format!("containerDisk {}: {base_fmt:?} images are not supported", cd.image));
            }
            let virtual_size = open_image(&base, true).map_err(|e| e.to_string())?.size();
            // Ephemeral: this VMI's writes go to an overlay that goes with the run directory.
            let overlay = run_dir.join(format!("{}.qcow2", v.name));
            let _ = std::fs::remove_file(&overlay);
            Qcow2::create(
                &overlay,
                &Qcow2CreateOptions {
                    size: virtual_size,
                    backing_file: Some(base),
                    backing_format: Some(base_fmt),
                    ..Default::default()
                },
            )
            .map_err(|e| format!("overlay {}: {e}", overlay.display()))?;
            return Ok((overlay, DiskFormat::Qcow2));
        }
        if v.cloud_init_no_cloud.is_some() || v.cloud_init_config_drive.is_some() {
            let dest = run_dir.join(format!("{}.img", v.name));
            super::seed::write_vmi_seed(self.objects.get().map(|o| &**o), vmi, name, ns, v, &dest)
                .map_err(|e| e.to_string())?;
            return Ok((dest, DiskFormat::Raw));
        }
        if let Some(e) = &v.empty_disk {
            let dest = run_dir.join(format!("{}.qcow2", v.name));
            if !dest.exists() {
                Qcow2::create(&dest, &Qcow2CreateOptions { size: e.capacity.bytes(), ..Default::default() })
                    .map_err(|e| format!("emptyDisk {}: {e}", dest.display()))?;
            }
            return Ok((dest, DiskFormat::Qcow2));
        }
        if let Some(h) = &v.host_disk {
            // The node's state (store, tokens, other VMIs' disks) is never a hostDisk.
            let policy = virt_storage::hostdisk::HostDiskPolicy {
                dirs: self.cfg.host_disk_dirs.clone(),
                forbidden: vec![self.cfg.state_dir.clone()],
            };
            let path = policy.prepare(h).map_err(|e| e.to_string())?;
            let fmt = match detect_path(&path).map_err(|e| e.to_string())? {
                ImageFormat::Qcow2 => DiskFormat::Qcow2,
                _ => DiskFormat::Raw,
            };
            return Ok((path, fmt));
        }
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.clone())
            .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
        if let Some(claim) = claim {
            // Volumes of the node's pool: `<state>/volumes/<namespace>/<claim>.{img,qcow2}`.
            if let Some(found) = self.claim_file(ns, &claim) {
                return Ok(found);
            }
            if let Some(Err(why)) = self.claims.get().and_then(|c| c.claim_ready(ns, &claim)) {
                return Err(why);
            }
            let dir = self.cfg.state_dir.join("volumes").join(ns);
            return Err(format!(
                "PersistentVolumeClaim \"{claim}\" not found in namespace {ns} (looked for {}/{claim}.img|.qcow2)",
                dir.display()
            ));
        }
        Err(format!("{} volumes are not supported on this node", v.kind().map_or("empty", |k| k.field())))
    }

    fn spawn(&self, vmi: &VirtualMachineInstance, run_dir: &Path) -> Result<Arc<dyn Machine>, String> {
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let accel = if self.cfg.allow_emulation { AccelPolicy::Auto } else { AccelPolicy::RequireKvm };
        let mut files = self.prepare(vmi, run_dir)?;
        let mut spec_in = vmi.spec.clone();
        let net = match self.network.get() {
            Some(n) => n.setup(vmi)?,
            None => None,
        };
        if let Some(net) = &net {
            for s in &net.interfaces {
                files.taps.insert(s.request.name.clone(), s.tap.clone());
                if let Some(i) =
                    spec_in.domain.devices.interfaces.iter_mut().find(|i| i.name == s.request.name)
                {
                    i.mac_address = Some(s.request.mac.to_string());
                }
            }
        }
        let spec = machine_spec(&name, &spec_in, &files, accel).map_err(|e| e.to_string())?;
        let spec_path = run_dir.join("spec.json");
        let json = serde_json::to_vec_pretty(&spec).map_err(|e| format!("encoding the machine spec: {e}"))?;
        std::fs::write(&spec_path, json).map_err(|e| format!("{}: {e}", spec_path.display()))?;
        let log_path = run_dir.join("launcher.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.cfg.launcher);
        cmd.arg("--spec").arg(&spec_path).arg("--run-dir").arg(run_dir);
        if self.cfg.allow_emulation {
            cmd.arg("--allow-emulation");
        }
        if let Some(b) = &self.cfg.backend {
            cmd.arg("--backend").arg(b);
        }
        {
            use std::os::unix::process::CommandExt;
            // Its own process group: the terminal's signals and the node's death do not reach it.
            cmd.process_group(0);
            // The VMI's network namespace: the launcher opens its taps there (as a pod's
            // containers share the pod's namespace).
            if let Some(net) = &net {
                let path = net.netns_path();
                let ns = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // SAFETY: between fork and exec only setns(2), async-signal-safe, on a descriptor
                // the closure owns (moved in); nothing is allocated.
                unsafe {
                    cmd.pre_exec(move || {
                        use std::os::fd::AsRawFd;
                        if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.cfg.launcher.display()))?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(run_dir.to_path_buf(), child);
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if remote::is_alive(run_dir) {
                return RemoteMachine::connect(run_dir)
                    .map(|m| Arc::new(m) as Arc<dyn Machine>)
                    .map_err(|e| format!("launcher {pid}: {e}"));
            }
            let exited = {
                let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
                match ch.get_mut(run_dir).map(|c| c.try_wait()) {
                    Some(Ok(Some(status))) => {
                        ch.remove(run_dir);
                        Some(status)
                    }
                    _ => None,
                }
            };
            if let Some(status) = exited {
                return Err(format!(
                    "the launcher exited ({status}) before its machine ran: {}",
                    tail(&log_path)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the launcher (pid {pid}) did not start its machine within {:?}: {}",
                    self.cfg.start_timeout,
                    tail(&log_path)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The last lines of a log, for error messages.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(5);
    let t = lines[start..].join(" | ");
    if t.is_empty() {
        "(no output)".into()
    } else {
        t
    }
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).map(|e| e.path()).find(|p| p.is_file())
}

/// `repo:tag` without the tag (a port's colon before the last slash stays).
fn strip_tag(reference: &str) -> &str {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => &reference[..slash + i],
        None => reference,
    }
}

struct PreparedFiles {
    files: HashMap<String, (PathBuf, DiskFormat)>,
    kernel: Option<(PathBuf, Option<PathBuf>)>,
    state_dir: PathBuf,
    /// Tap of each interface (by name) in the VMI's network namespace.
    taps: HashMap<String, String>,
}

impl VolumeFiles for PreparedFiles {
    fn volume_file(&self, volume: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        self.files
            .get(&volume.name)
            .cloned()
            .ok_or_else(|| HostFileError::VolumeNotPrepared { volume: volume.name.clone(), reason: None })
    }
    fn kernel_files(
        &self,
        c: &model::KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        self.kernel
            .clone()
            .ok_or_else(|| HostFileError::KernelNotPulled { image: c.image.clone(), reason: None })
    }
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }
    fn interface_backend(&self, interface: &model::Interface) -> Result<InterfaceBackend, HostFileError> {
        Ok(match self.taps.get(&interface.name) {
            Some(tap) => InterfaceBackend::Tap { name: tap.clone() },
            None => InterfaceBackend::None,
        })
    }
}

impl Runtime for LauncherRuntime {
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, String> {
        self.reap();
        let run_dir = self.run_dir(vmi);
        if run_dir.join("exit.json").exists() {
            // The previous launcher of this VMI (a guest reboot) recorded its end and is exiting.
            let deadline = Instant::now() + Duration::from_secs(10);
            while remote::launcher_running(&run_dir) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if remote::launcher_running(&run_dir) {
            // Never two launchers for one VMI: take over the one that runs.
            return RemoteMachine::connect_timeout(&run_dir, self.cfg.start_timeout)
                .map(|m| Arc::new(m) as Arc<dyn Machine>)
                .map_err(|e| format!("a launcher already holds {}: {e}", run_dir.display()));
        }
        std::fs::create_dir_all(&run_dir).map_err(|e| format!("{}: {e}", run_dir.display()))?;
        // What the previous machine of this VMI left (a reboot in place starts a new launcher).
        for f in ["exit.json", "control.sock", "console.sock"] {
            let _ = std::fs::remove_file(run_dir.join(f));
        }
        let spawned = self.spawn(vmi, &run_dir);
        if spawned.is_err() {
            // Nothing half set up: the network made for this launch goes with it.
            if let Some(n) = self.network.get() {
                n.teardown(vmi);
            }
        }
        spawned
    }

    fn reattach(&self, vmi: &VirtualMachineInstance) -> Option<Arc<dyn Machine>> {
        let run_dir = self.run_dir(vmi);
        if !remote::launcher_running(&run_dir) && !remote::is_alive(&run_dir) {
            return None;
        }
        match RemoteMachine::connect_timeout(&run_dir, self.cfg.start_timeout) {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                log::warn!("VMI {}: its launcher runs but does not answer: {e}", run_dir.display());
                None
            }
        }
    }

    fn last_exit(&self, vmi: &VirtualMachineInstance) -> Option<MachineExit> {
        remote::read_exit(&self.run_dir(vmi))
    }

    /// With a CDI controller ([`LauncherRuntime::set_claims`]): a VMI waits while a DataVolume
    /// its volumes name is not populated, or does not exist yet (a VM's `dataVolumeTemplates` are
    /// created after its VMI). Plain claims without a DataVolume are not waited for.
    fn ready(&self, vmi: &VirtualMachineInstance) -> Result<(), String> {
        let Some(claims) = self.claims.get() else { return Ok(()) };
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        for v in &vmi.spec.volumes {
            let (claim, data_volume) = match (&v.data_volume, &v.persistent_volume_claim) {
                (Some(d), _) => (d.name.as_str(), true),
                (None, Some(p)) => (p.claim_name.as_str(), false),
                (None, None) => continue,
            };
            match claims.claim_ready(ns, claim) {
                Some(Err(why)) => return Err(format!("volume {}: {why}", v.name)),
                Some(Ok(())) => {}
                None if data_volume && self.claim_file(ns, claim).is_none() => {
                    return Err(format!(
                        "volume {}: DataVolume {claim} does not exist in namespace {ns} (yet)",
                        v.name
                    ))
                }
                None => {}
            }
        }
        Ok(())
    }

    fn interfaces(&self, vmi: &VirtualMachineInstance) -> Vec<model::NetworkInterfaceStatus> {
        self.network.get().map(|n| n.status(vmi)).unwrap_or_default()
    }

    fn ended(&self, vmi: &VirtualMachineInstance) {
        if let Some(n) = self.network.get() {
            n.teardown(vmi);
        }
    }

    fn cleanup(&self, vmi: &VirtualMachineInstance) {
        if let Some(n) = self.network.get() {
            n.teardown(vmi);
        }
        let run_dir = self.run_dir(vmi);
        self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_dir);
        self.reap();
        if remote::launcher_running(&run_dir) {
            log::warn!("VMI run directory {} kept: its launcher still runs", run_dir.display());
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", run_dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_tag;

    #[test]
    fn tags_are_stripped_but_ports_kept() {
        assert_eq!(strip_tag("127.0.0.1:5000/os/cirros:devel"), "127.0.0.1:5000/os/cirros");
        assert_eq!(strip_tag("127.0.0.1:5000/os/cirros"), "127.0.0.1:5000/os/cirros");
        assert_eq!(strip_tag("quay.io/x/y:1"), "quay.io/x/y");
    }
}
