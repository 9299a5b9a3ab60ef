//! The node's [`Runtime`]: each VMI runs in its own `virt-launcher` process, in a run directory
//! named after the VMI's uid, reached through the launcher's control and console sockets
//! ([`virt_core::machine::remote`]). Launchers run in their own process group, so a node daemon
//! that dies (even by SIGKILL) leaves them running, and a restarted daemon finds them again.
//!
//! Before a launch the runtime prepares what the VMI's volumes name through
//! [`VmiVolumes`](super::volumes::VmiVolumes) (the library an embedder's runtime calls too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virt_core::lifecycle::{
    LaunchError, LaunchStage as Stage, Migrated, MigrationError, MigrationStep, MigrationTicket,
    NotMigratable, NotReady, Runtime,
};
use virt_core::machine::accel::AccelPolicy;
use virt_core::machine::remote::{self, RemoteMachine};
use virt_core::machine::resolve::machine_spec;
use virt_core::machine::{Machine, MachineExit};
use virt_core::model::{self, VirtualMachineInstance};
use virt_net::pod::VmiNet;

pub use super::volumes::{ClaimNotReady, ClaimReadiness};

mod migration;
use super::volumes::{VmiVolumes, VolumeConfig};
pub use migration::{
    tap_not_migratable, target_dir_name, MigrationSettings, MovedAway, TargetLauncher, POST_COPY_MARKER,
};

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
    /// How VMIs migrate (bandwidth, completion timeout).
    pub migration: MigrationSettings,
}

/// Runs VMIs in launcher processes.
pub struct LauncherRuntime {
    cfg: LauncherConfig,
    /// What the VMIs' volumes name, made into files.
    volumes: VmiVolumes,
    /// Launchers this process spawned, reaped when they exit (no zombies while the node runs).
    children: Mutex<HashMap<PathBuf, Child>>,
    /// The pod network (none: interfaces stay unlinked).
    network: std::sync::OnceLock<Arc<super::network::NodeNetwork>>,
}

impl LauncherRuntime {
    /// A runtime with `cfg`.
    pub fn new(cfg: LauncherConfig) -> Self {
        let volumes = VmiVolumes::new(VolumeConfig {
            state_dir: cfg.state_dir.clone(),
            insecure_registries: cfg.insecure_registries.clone(),
            registry_ca: cfg.registry_ca.clone(),
            host_disk_dirs: cfg.host_disk_dirs.clone(),
            net_policy: cfg.net_policy.clone(),
        });
        Self { cfg, volumes, children: Mutex::new(HashMap::new()), network: std::sync::OnceLock::new() }
    }

    /// Gives VMIs a pod network: each launcher then runs in its VMI's network namespace with taps
    /// made for its interfaces. Only the first call counts.
    pub fn set_network(&self, network: Arc<super::network::NodeNetwork>) {
        let _ = self.network.set(network);
    }

    /// The network namespace `vmi`'s launcher runs in when it has a pod network (where its QEMU's
    /// VNC server listens).
    pub fn netns_of(&self, vmi: &VirtualMachineInstance) -> Option<std::path::PathBuf> {
        self.network.get().and_then(|n| n.netns_of(vmi))
    }

    /// The guest-side network counters of `vmi`'s interfaces (`/metrics`; empty without a pod
    /// network).
    pub fn guest_net_stats(&self, vmi: &VirtualMachineInstance) -> Vec<super::metrics::NetStats> {
        self.network.get().map(|n| n.guest_net_stats(vmi)).unwrap_or_default()
    }

    /// Lets `claims` say whether DataVolume-filled claims are ready: VMIs then wait (Pending) for
    /// their DataVolumes instead of failing. Only the first call counts.
    pub fn set_claims(&self, claims: Arc<dyn ClaimReadiness>) {
        self.volumes.set_claims(claims);
    }

    /// Lets launches read the node's Secrets. Only the first call counts.
    pub fn set_objects(&self, objects: Arc<super::core_objects::CoreObjects>) {
        self.volumes.set_objects(objects);
    }

    /// What prepares this runtime's volumes.
    pub fn volumes(&self) -> &VmiVolumes {
        &self.volumes
    }

    /// The run directory of `vmi`'s launcher: [`LauncherRuntime::base_dir`], or after a live
    /// migration the run directory of the launcher the VM moved into.
    pub fn run_dir(&self, vmi: &VirtualMachineInstance) -> PathBuf {
        migration::active_dir(&self.base_dir(vmi))
    }

    /// The directory named after `vmi`'s uid: its volumes, and its first launcher's sockets.
    pub fn base_dir(&self, vmi: &VirtualMachineInstance) -> PathBuf {
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

    /// Forgets the launcher of `run_dir`, whose machine ended, and reaps it once it exits (a
    /// thread waits, so no zombie stays until the next launch); then removes the cgroups of
    /// launchers that are gone (a jailed launcher's keeper killed with SIGKILL cannot).
    fn release(&self, run_dir: &Path) {
        let child = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(run_dir);
        if let Some(mut c) = child {
            let spawned = std::thread::Builder::new().name("launcher-reaper".into()).spawn(move || {
                let _ = c.wait();
                virt_core::jail::cgroup::collect_stale();
            });
            if let Err(e) = spawned {
                log::warn!("launcher of {}: no thread to reap it: {e}", run_dir.display());
            }
        }
    }

    /// Prepares `vmi`'s volumes in its run directory and writes the launcher's `spec.json` there
    /// (through a temporary file and a rename: never half-written), without starting a launcher.
    /// On a cluster the launcher runs in the VMI's pod, which mounts the run directory and the
    /// image cache at the same paths (`cluster::handler`). Returns the spec's path.
    /// `net`: the interfaces made for it in its pod (their taps and MACs go into the spec).
    /// `claims`: the files of its claim volumes as its pod sees them (by volume name), resolved by
    /// the caller ([`VmiVolumes::prepare_with`]).
    pub fn write_spec(
        &self,
        vmi: &VirtualMachineInstance,
        net: Option<&VmiNet>,
        claims: &HashMap<String, (PathBuf, virt_core::machine::DiskFormat)>,
    ) -> Result<PathBuf, LaunchError> {
        let run_dir = self.run_dir(vmi);
        let json = self.prepared_spec(vmi, &run_dir, net, claims)?;
        let spec_path = run_dir.join("spec.json");
        write_spec_file(&run_dir, &json)?;
        Ok(spec_path)
    }

    /// Prepares `vmi`'s volumes in `volumes_dir` (created) and returns its launcher's machine
    /// spec, encoded.
    fn prepared_spec(
        &self,
        vmi: &VirtualMachineInstance,
        volumes_dir: &Path,
        net: Option<&VmiNet>,
        claims: &HashMap<String, (PathBuf, virt_core::machine::DiskFormat)>,
    ) -> Result<Vec<u8>, LaunchError> {
        std::fs::create_dir_all(volumes_dir).map_err(process(volumes_dir))?;
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let accel = if self.cfg.allow_emulation { AccelPolicy::Auto } else { AccelPolicy::RequireKvm };
        let mut files =
            self.volumes.prepare_with(vmi, volumes_dir, claims).map_err(LaunchError::at(Stage::Volumes))?;
        let mut spec_in = vmi.spec.clone();
        if let Some(net) = net {
            link_interfaces(net, &mut files, &mut spec_in);
        }
        let mut spec = machine_spec(&name, &spec_in, &files, accel).map_err(LaunchError::at(Stage::Spec))?;
        spec.agent_credentials =
            self.volumes.agent_credentials(vmi).map_err(LaunchError::at(Stage::Volumes))?;
        serde_json::to_vec_pretty(&spec)
            .map_err(|e| LaunchError::new(Stage::Spec, format!("encoding the machine spec: {e}")))
    }

    fn reap(&self) {
        let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
        ch.retain(|_, c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    fn spawn(&self, vmi: &VirtualMachineInstance, run_dir: &Path) -> Result<Arc<dyn Machine>, LaunchError> {
        let started = Instant::now();
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let accel = if self.cfg.allow_emulation { AccelPolicy::Auto } else { AccelPolicy::RequireKvm };
        let mut files = self.volumes.prepare(vmi, run_dir).map_err(LaunchError::at(Stage::Volumes))?;
        let mut spec_in = vmi.spec.clone();
        let net_started = Instant::now();
        let net = match self.network.get() {
            Some(n) => n.setup(vmi).map_err(LaunchError::at(Stage::Network))?,
            None => None,
        };
        if net.is_some() {
            // The figure docs/networking.md quotes (network setup time per VMI).
            log::info!(
                "VMI {}: pod network set up in {} ms",
                run_dir.display(),
                net_started.elapsed().as_millis()
            );
        }
        if let Some(net) = &net {
            link_interfaces(net, &mut files, &mut spec_in);
        }
        let mut spec = machine_spec(&name, &spec_in, &files, accel).map_err(LaunchError::at(Stage::Spec))?;
        spec.agent_credentials =
            self.volumes.agent_credentials(vmi).map_err(LaunchError::at(Stage::Volumes))?;
        let spec_path = run_dir.join("spec.json");
        let json = serde_json::to_vec_pretty(&spec)
            .map_err(|e| LaunchError::new(Stage::Spec, format!("encoding the machine spec: {e}")))?;
        write_private(&spec_path, &json).map_err(process(&spec_path))?;
        let log_path = run_dir.join("launcher.log");
        let log = std::fs::File::create(&log_path).map_err(process(&log_path))?;
        let log2 = log.try_clone().map_err(process(&log_path))?;
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
                let ns = std::fs::File::open(&path)
                    .map_err(|e| LaunchError::new(Stage::Network, format!("{}: {e}", path.display())))?;
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
        let child = cmd.stdin(Stdio::null()).stdout(log).stderr(log2).spawn().map_err(|e| {
            LaunchError::new(Stage::Process, format!("starting {}: {e}", self.cfg.launcher.display()))
        })?;
        let pid = child.id();
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(run_dir.to_path_buf(), child);
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            if remote::is_alive(run_dir) {
                log::info!(
                    "VMI {}: launcher {pid} runs its machine {} ms after the node began starting it",
                    run_dir.display(),
                    started.elapsed().as_millis()
                );
                return RemoteMachine::connect_or_ended(run_dir, remote::DEFAULT_TIMEOUT)
                    .map(|m| Arc::new(m) as Arc<dyn Machine>)
                    .map_err(|e| LaunchError::new(Stage::Start, format!("launcher {pid}: {e}")));
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
                // Its machine ran and ended between two looks (a guest that resets or powers off
                // at once): the launcher's exit record (removed before the spawn, so it is this
                // launcher's) says how, and the end is handled as any other (a reboot starts it
                // again). A failure stays a failed start, with the launcher's log.
                match remote::read_exit(run_dir) {
                    Some(exit) if !matches!(exit, MachineExit::Failed(_)) => {
                        return Ok(Arc::new(RemoteMachine::already_ended(
                            run_dir,
                            remote::DEFAULT_TIMEOUT,
                            exit,
                        )));
                    }
                    _ => {}
                }
                return Err(LaunchError::new(
                    Stage::Start,
                    format!("the launcher exited ({status}) before its machine ran: {}", tail(&log_path)),
                ));
            }
            if Instant::now() > deadline {
                return Err(LaunchError::new(
                    Stage::Start,
                    format!(
                        "the launcher (pid {pid}) did not start its machine within {:?}: {}",
                        self.cfg.start_timeout,
                        tail(&log_path)
                    ),
                ));
            }
            // Asking costs a failed connect (no socket yet) or one status round trip; a machine
            // starts in tens of milliseconds, and each millisecond waited here is the node's.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A `map_err` adapter for I/O on `path` (run directory, spec, log): a [`Stage::Process`] failure
/// naming the file.
fn process(path: &Path) -> impl Fn(std::io::Error) -> LaunchError + '_ {
    move |e| LaunchError::new(Stage::Process, format!("{}: {e}", path.display()))
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

impl Runtime for LauncherRuntime {
    fn launch(&self, vmi: &VirtualMachineInstance) -> Result<Arc<dyn Machine>, LaunchError> {
        self.reap();
        let run_dir = self.run_dir(vmi);
        if run_dir.join("exit.json").exists() {
            // The previous launcher of this VMI (a guest reboot) recorded its end and is exiting. Its
            // process outlives the machine's lock a moment (a jailed launcher tears its jail down
            // holding the set-up lock), and a new launcher refuses the directory until it is gone.
            let deadline = Instant::now() + self.cfg.start_timeout;
            while remote::launcher_present(&run_dir) && Instant::now() < deadline {
                self.reap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if remote::launcher_running(&run_dir) {
            // Never two launchers for one VMI: take over the one that runs (or is starting).
            return RemoteMachine::connect_when_up(&run_dir, self.cfg.start_timeout)
                .map(|m| Arc::new(m) as Arc<dyn Machine>)
                .map_err(|e| {
                    LaunchError::new(
                        Stage::Start,
                        format!("a launcher already holds {}: {e}", run_dir.display()),
                    )
                });
        }
        // A VM that migrated starts again (a reboot) in its first run directory, by its volumes.
        let run_dir = self.forget_migrations(vmi);
        std::fs::create_dir_all(&run_dir).map_err(process(&run_dir))?;
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
        // A migration cut short by the node's restart may have moved the VM already.
        self.recover_incoming(vmi);
        let run_dir = self.run_dir(vmi);
        if !remote::launcher_running(&run_dir) && !remote::is_alive(&run_dir) {
            return None;
        }
        match RemoteMachine::connect_when_up(&run_dir, self.cfg.start_timeout) {
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
    fn ready(&self, vmi: &VirtualMachineInstance) -> Result<(), NotReady> {
        let Some(claims) = self.volumes.claims() else { return Ok(()) };
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        for v in &vmi.spec.volumes {
            let (claim, data_volume) = match (&v.data_volume, &v.persistent_volume_claim) {
                (Some(d), _) => (d.name.as_str(), true),
                (None, Some(p)) => (p.claim_name.as_str(), false),
                (None, None) => continue,
            };
            match claims.claim_ready(ns, claim) {
                Some(Err(why)) => return Err(NotReady::new(&v.name, why)),
                Some(Ok(())) => {}
                None if data_volume && self.volumes.claim_file(ns, claim).is_none() => {
                    let missing = ClaimNotReady::Missing { name: claim.into(), namespace: ns.into() };
                    return Err(NotReady::new(&v.name, missing));
                }
                None => {}
            }
        }
        Ok(())
    }

    fn interfaces(&self, vmi: &VirtualMachineInstance) -> Vec<model::NetworkInterfaceStatus> {
        self.network.get().map(|n| n.status(vmi)).unwrap_or_default()
    }

    fn migrate(
        &self,
        vmi: &VirtualMachineInstance,
        ticket: &MigrationTicket,
        step: &dyn Fn(MigrationStep),
    ) -> Result<Migrated, MigrationError> {
        self.migrate_vmi(vmi, ticket, TargetLauncher::Spawn, step)
    }

    /// Every interface of a VMI on the pod network is a tap its launcher holds: such a VMI cannot
    /// move. Without a network (interfaces stay unlinked) any VMI can.
    fn live_migratable(&self, vmi: &VirtualMachineInstance) -> Result<(), NotMigratable> {
        match (self.network.get(), vmi.spec.domain.devices.interfaces.first()) {
            (Some(_), Some(i)) => Err(migration::tap_not_migratable(&i.name)),
            _ => Ok(()),
        }
    }

    fn cancel_migration(&self, vmi: &VirtualMachineInstance) {
        let source = self.run_dir(vmi);
        if let Err(e) = virt_core::machine::supervisor::migration::migrate_cancel(&source) {
            log::info!("VMI {}: migrateCancel: {e}", source.display());
        }
    }

    fn ended(&self, vmi: &VirtualMachineInstance) {
        if let Some(n) = self.network.get() {
            n.teardown(vmi);
        }
        self.release(&self.run_dir(vmi));
    }

    fn cleanup(&self, vmi: &VirtualMachineInstance) {
        if let Some(n) = self.network.get() {
            n.teardown(vmi);
        }
        let run_dir = self.run_dir(vmi);
        self.release(&run_dir);
        self.reap();
        let base = self.base_dir(vmi);
        if !remote::launcher_running(&run_dir) {
            migration::remove_vmi_dirs(&base);
            return;
        }
        // Its machine was stopped and the launcher is on its way out (it may not have written
        // exit.json yet: a VMI stopped with no grace period is cleaned up at once): the
        // directories go after it, or stay (with a warning) if it still runs 30 s later.
        let shown = base.display().to_string();
        let spawned = std::thread::Builder::new().name("vmi-cleanup".into()).spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while remote::launcher_running(&run_dir) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if remote::launcher_running(&run_dir) {
                log::warn!("VMI run directory {} kept: its launcher still runs", run_dir.display());
            } else {
                migration::remove_vmi_dirs(&base);
            }
        });
        if let Err(e) = spawned {
            log::warn!("VMI run directory {shown} kept: no thread to remove it: {e}");
        }
    }
}

/// Writes `spec.json` into `dir` through a temporary file and a rename: a launcher watching for
/// it (a pod's entry script) never sees half of it.
fn write_spec_file(dir: &Path, json: &[u8]) -> Result<(), LaunchError> {
    let spec_path = dir.join("spec.json");
    let tmp = dir.join(".spec.json.tmp");
    write_private(&tmp, json).map_err(process(&tmp))?;
    std::fs::rename(&tmp, &spec_path).map_err(process(&spec_path))
}

/// Writes `bytes` to `path` readable by its owner only (a machine spec carries the guest's access
/// credentials, passwords among them), replacing what is there.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode through open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Gives each of `spec`'s interfaces the tap and MAC `net` made for it.
fn link_interfaces(
    net: &VmiNet,
    files: &mut super::volumes::PreparedFiles,
    spec: &mut virt_core::model::VirtualMachineInstanceSpec,
) {
    for s in &net.interfaces {
        files.set_tap(s.request.name.clone(), s.tap.clone());
        if let Some(i) = spec.domain.devices.interfaces.iter_mut().find(|i| i.name == s.request.name) {
            i.mac_address = Some(s.request.mac.to_string());
        }
    }
}
