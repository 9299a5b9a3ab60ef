//! Live migration on the node (docs/migration.md): the VM moves from its launcher into a fresh one
//! started with `--incoming` in a run directory of its own (`vmis/<uid>-mig-<migration>`, next to
//! the VMI's first one, which keeps its volumes), over that launcher's `migrate.sock`, the stream
//! handed to the source with `migrateOut`.
//!
//! Which launcher runs the VM is recorded in the VMI's first run directory: [`INCOMING`] names
//! the target while the VM moves, [`ACTIVE`] the launcher that runs it once it moved (written by a
//! rename, never half). A node restarted in the middle of a migration finds the VM through
//! [`INCOMING`] if it had moved ([`LauncherRuntime::recover_incoming`]).

use std::io::Write as _;
use std::os::unix::net::UnixStream;

use virt_core::machine::migrate::{migration_features, MigrateOptions};
use virt_core::machine::supervisor::migration::{connect_destination, migrate_out};
use virt_core::machine::{InterfaceBackend, MachineSpec};
use virt_core::model::MigrationPolicySpec;

use super::*;

#[path = "between_nodes.rs"]
mod between_nodes;
pub use between_nodes::MovedAway;

/// Who starts the target launcher of a migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetLauncher {
    /// The node: a child `virt-launcher --incoming` in the target run directory.
    Spawn,
    /// Something else that watches the target run directory (a Kubernetes launcher pod whose
    /// entry script starts `virt-launcher --incoming` once `spec.json` is there, with
    /// `--post-copy` when [`POST_COPY_MARKER`] is too). The directory is not wiped: it is mounted.
    External,
}

/// How long a target launcher started by a pod ([`TargetLauncher::External`]) has to listen once
/// its spec is written (it starts only then: the pod's entry script polls for it, then the
/// launcher sets up its jail and machine on a node that may be loaded).
pub const EXTERNAL_TARGET_LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// In a target run directory served by a pod ([`TargetLauncher::External`]): start with
/// `--post-copy`.
pub const POST_COPY_MARKER: &str = "incoming-post-copy";

/// The name of the run directory a migration with uid `migration_uid` moves the VM of the VMI
/// whose first run directory is named `base_name` into: `<base_name>-mig-<8 characters of the uid>`.
pub fn target_dir_name(base_name: &str, migration_uid: &str) -> String {
    let short: String = migration_uid.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
    format!("{base_name}-mig-{short}")
}

/// In the first run directory: the name of the run directory of the launcher running the VM.
pub const ACTIVE: &str = "active-launcher";
/// In the first run directory: the name of the run directory the VM is moving into.
pub const INCOMING: &str = "incoming-launcher";

/// The run directory `base` points at ([`ACTIVE`]), or `base` itself.
pub(super) fn active_dir(base: &Path) -> PathBuf {
    match (pointer(base, ACTIVE), base.parent()) {
        (Some(name), Some(parent)) => parent.join(name),
        _ => base.to_path_buf(),
    }
}

/// The run-directory name in `base/file`, if it holds a plausible one.
fn pointer(base: &Path, file: &str) -> Option<String> {
    let name = std::fs::read_to_string(base.join(file)).ok()?;
    let name = name.trim();
    let ok = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    ok.then(|| name.to_string())
}

/// Writes `name` into `base/file` through a temporary file and a rename.
fn write_pointer(base: &Path, file: &str, name: &str) -> std::io::Result<()> {
    let tmp = base.join(format!(".{file}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(name.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, base.join(file))
}

fn failed(what: &str, path: &Path, e: impl std::fmt::Display) -> MigrationError {
    MigrationError::Failed(format!("{what} {}: {e}", path.display()))
}

/// Why a VMI whose interface `name` is a tap cannot move: the running launcher holds the tap and
/// a second launcher cannot open it (KubeVirt's reason `InterfaceNotLiveMigratable`).
pub fn tap_not_migratable(name: &str) -> NotMigratable {
    NotMigratable::new(
        "InterfaceNotLiveMigratable",
        format!(
            "interface {name} is a tap the running launcher holds; a second launcher cannot open it \
             (live migration of VMIs with pod-network interfaces is not supported yet)"
        ),
    )
}

/// Why a machine with this spec cannot move into another launcher on this node, if it cannot.
fn not_migratable(spec: &MachineSpec) -> Option<NotMigratable> {
    spec.interfaces
        .iter()
        .find(|i| matches!(i.backend, InterfaceBackend::Tap { .. }))
        .map(|i| tap_not_migratable(&i.name))
}

/// The node's migration settings, as KubeVirt's `spec.configuration.migrations` (`virt-node
/// --migration-bandwidth`, `--migration-completion-timeout-per-gib`,
/// `--migration-allow-auto-converge`, `--migration-progress-timeout`); a MigrationPolicy that matches a VMI overrides them for its
/// migrations ([`MigrationSettings::with_policy`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSettings {
    /// `bandwidthPerMigration`: the most bytes per second pre-copy sends (`64Mi`); `None` or zero:
    /// unlimited.
    pub bandwidth_per_migration: Option<virt_core::api::Quantity>,
    /// `completionTimeoutPerGiB`: a migration still copying after this many seconds per GiB of
    /// guest memory is cancelled and the source runs on; 0: no timeout. KubeVirt's default: 150.
    pub completion_timeout_per_gib: u64,
    /// `allowAutoConverge`: throttle the guest's vCPUs when pre-copy does not converge (QEMU's
    /// `auto-converge`, the native VMM's vCPU throttle).
    pub allow_auto_converge: bool,
    /// `progressTimeout`: a migration whose data left to send has not decreased for this many
    /// seconds is aborted and the source runs on; 0: never. KubeVirt's default: 150. Not a
    /// MigrationPolicy field (as in KubeVirt).
    pub progress_timeout: u64,
    /// `allowPostCopy`: with `allowWorkloadDisruption`, switch to post-copy at the completion
    /// timeout (QEMU's post-copy; the native VMM has none and pauses instead).
    pub allow_post_copy: bool,
    /// `allowWorkloadDisruption`: at the completion timeout do not cancel but switch to post-copy
    /// (when allowed) or pause the guest to finish. Defaults to `allowPostCopy`'s value, as
    /// KubeVirt's.
    pub allow_workload_disruption: bool,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        Self {
            bandwidth_per_migration: None,
            completion_timeout_per_gib: 150,
            allow_auto_converge: false,
            progress_timeout: 150,
            allow_post_copy: false,
            allow_workload_disruption: false,
        }
    }
}

impl MigrationSettings {
    /// These settings with `policy`'s over them, as KubeVirt's `GetMigrationConfByPolicy`: each
    /// field the policy sets replaces the node's; the others stay.
    pub fn with_policy(&self, policy: &MigrationPolicySpec) -> Self {
        let mut s = self.clone();
        if let Some(b) = &policy.bandwidth_per_migration {
            s.bandwidth_per_migration = Some(b.clone());
        }
        if let Some(t) = policy.completion_timeout_per_gib {
            // Validation refuses a negative timeout.
            s.completion_timeout_per_gib = u64::try_from(t).unwrap_or(0);
        }
        if let Some(a) = policy.allow_auto_converge {
            s.allow_auto_converge = a;
        }
        if let Some(p) = policy.allow_post_copy {
            s.allow_post_copy = p;
        }
        // Unset, allowWorkloadDisruption follows allowPostCopy (KubeVirt's default).
        match (policy.allow_workload_disruption, policy.allow_post_copy) {
            (Some(w), _) | (None, Some(w)) => s.allow_workload_disruption = w,
            (None, None) => {}
        }
        s
    }

    /// What a migration by the backend named `backend` (`native`, `qemu`) runs with: the settings
    /// it cannot honour are turned off, each named in the list returned (the VMI gets a Warning
    /// event), so that `migrationConfiguration` shows what is in force.
    pub fn for_backend(&self, backend: &str) -> (Self, Vec<String>) {
        let can = migration_features(backend);
        let shown = if backend.is_empty() { "unknown" } else { backend };
        let mut s = self.clone();
        let mut not_honoured = Vec::new();
        let mut turn_off = |asked: &mut bool, able: bool, field: &str, what: &str| {
            if *asked && !able {
                *asked = false;
                not_honoured
                    .push(format!("{field}: the {shown} backend cannot {what}; migrating without it"));
            }
        };
        turn_off(&mut s.allow_auto_converge, can.auto_converge, "allowAutoConverge", "throttle the guest");
        turn_off(&mut s.allow_post_copy, can.post_copy, "allowPostCopy", "switch to post-copy");
        turn_off(
            &mut s.allow_workload_disruption,
            can.pause_to_complete,
            "allowWorkloadDisruption",
            "pause the guest to complete",
        );
        (s, not_honoured)
    }

    /// What the source launcher migrates a machine of `memory_mib` with.
    pub fn options_for(&self, memory_mib: u64) -> MigrateOptions {
        let per_gib = self.completion_timeout_per_gib;
        MigrateOptions {
            bandwidth_bytes_per_sec: self
                .bandwidth_per_migration
                .as_ref()
                .map(|q| q.bytes())
                .filter(|b| *b > 0),
            completion_timeout_secs: (per_gib > 0).then(|| (per_gib * memory_mib).div_ceil(1024).max(1)),
            auto_converge: self.allow_auto_converge,
            progress_timeout_secs: (self.progress_timeout > 0).then_some(self.progress_timeout),
            // KubeVirt's order at the completion timeout: cancel unless workload disruption is
            // allowed; then post-copy if allowed, else pause.
            post_copy: self.allow_workload_disruption && self.allow_post_copy,
            pause_to_complete: self.allow_workload_disruption && !self.allow_post_copy,
            ..MigrateOptions::default()
        }
    }

    /// The VMI's `status.migrationState.migrationConfiguration`, with KubeVirt's field names.
    pub fn configuration(&self) -> serde_json::Value {
        let bandwidth = match &self.bandwidth_per_migration {
            Some(q) if !q.is_zero() => q.to_string(),
            _ => "0".to_string(),
        };
        serde_json::json!({
            "bandwidthPerMigration": bandwidth,
            "completionTimeoutPerGiB": self.completion_timeout_per_gib,
            "progressTimeout": self.progress_timeout,
            "allowAutoConverge": self.allow_auto_converge,
            "allowPostCopy": self.allow_post_copy,
            "allowWorkloadDisruption": self.allow_workload_disruption,
        })
    }
}

impl LauncherRuntime {
    /// Moves `vmi`'s machine into a fresh launcher (see the module's documentation).
    /// `launcher`: who starts the target launcher.
    pub fn migrate_vmi(
        &self,
        vmi: &VirtualMachineInstance,
        ticket: &MigrationTicket,
        launcher: TargetLauncher,
        step: &dyn Fn(MigrationStep),
    ) -> Result<Migrated, MigrationError> {
        let base = self.base_dir(vmi);
        let (source, spec_bytes, spec) = self.migration_source(vmi)?;
        let base_name = base.file_name().and_then(|n| n.to_str()).unwrap_or("vmi");
        let name = target_dir_name(base_name, &ticket.uid);
        let Some(parent) = base.parent() else {
            return Err(MigrationError::Failed(format!("{} has no parent directory", base.display())));
        };
        let target = parent.join(&name);
        if launcher == TargetLauncher::Spawn {
            let _ = std::fs::remove_dir_all(&target);
        }
        std::fs::create_dir_all(&target).map_err(|e| failed("creating", &target, e))?;
        write_pointer(&base, INCOMING, &name).map_err(|e| failed("writing", &base.join(INCOMING), e))?;
        let result = self.move_into(&source, &target, &spec_bytes, spec.memory_mib, ticket, launcher, step);
        match result {
            Ok(report) => {
                write_pointer(&base, ACTIVE, &name).map_err(|e| failed("writing", &base.join(ACTIVE), e))?;
                let _ = std::fs::remove_file(base.join(INCOMING));
                let machine =
                    RemoteMachine::connect_when_up(&target, self.cfg.start_timeout).map_err(|e| {
                        MigrationError::Failed(format!("the VM moved but its launcher does not answer: {e}"))
                    })?;
                self.release_source(&base, &source, false);
                let source_name = source.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
                Ok(Migrated { machine: Arc::new(machine), report, source: source_name, target: name })
            }
            Err(e) => {
                self.abandon_target(&target, launcher);
                let _ = std::fs::remove_file(base.join(INCOMING));
                Err(if ticket.cancelled() { MigrationError::Cancelled } else { e })
            }
        }
    }

    /// The run directory of the launcher `vmi`'s machine is to leave, with that machine's spec
    /// (as written and decoded); refused when it does not run or cannot move.
    fn migration_source(
        &self,
        vmi: &VirtualMachineInstance,
    ) -> Result<(PathBuf, Vec<u8>, MachineSpec), MigrationError> {
        let source = self.run_dir(vmi);
        if !remote::is_alive(&source) {
            return Err(MigrationError::Failed(format!(
                "the source launcher in {} does not run",
                source.display()
            )));
        }
        let spec_path = source.join("spec.json");
        let spec_bytes = std::fs::read(&spec_path).map_err(|e| failed("reading", &spec_path, e))?;
        let spec: MachineSpec =
            serde_json::from_slice(&spec_bytes).map_err(|e| failed("decoding", &spec_path, e))?;
        if let Some(why) = not_migratable(&spec) {
            return Err(MigrationError::Unsupported(why.message));
        }
        Ok((source, spec_bytes, spec))
    }

    /// The settings a migration of the machine in `source` runs with: the node's, the ticket's
    /// policy over them, less what the source's backend cannot do (listed).
    fn settings_for(&self, source: &Path, ticket: &MigrationTicket) -> (MigrationSettings, Vec<String>) {
        let asked = match &ticket.policy {
            Some(p) => self.cfg.migration.with_policy(&p.spec),
            None => self.cfg.migration.clone(),
        };
        let backend = RemoteMachine::connect(source).map(|m| m.backend().to_string()).unwrap_or_default();
        asked.for_backend(&backend)
    }

    /// Starts the target launcher in `target` and has the source in `source` send the VM to it,
    /// with the settings of [`LauncherRuntime::settings_for`].
    #[allow(clippy::too_many_arguments)]
    fn move_into(
        &self,
        source: &Path,
        target: &Path,
        spec_bytes: &[u8],
        memory_mib: u64,
        ticket: &MigrationTicket,
        launcher: TargetLauncher,
        step: &dyn Fn(MigrationStep),
    ) -> Result<virt_core::machine::migrate::MigrationReport, MigrationError> {
        let log_path = target.join("launcher.log");
        let (settings, not_honoured) = self.settings_for(source, ticket);
        let opts = settings.options_for(memory_mib);
        let spec = target.join("spec.json");
        if launcher == TargetLauncher::External {
            // The pod's entry script starts the launcher once the spec is there: flags first.
            if opts.post_copy {
                let marker = target.join(POST_COPY_MARKER);
                std::fs::write(&marker, b"").map_err(|e| failed("writing", &marker, e))?;
            }
            // Whole or not at all: the script starts the launcher as soon as the file is there.
            let tmp = target.join(".spec.json.tmp");
            super::write_private(&tmp, spec_bytes).map_err(|e| failed("writing", &tmp, e))?;
            std::fs::rename(&tmp, &spec).map_err(|e| failed("renaming into", &spec, e))?;
            let within = self.cfg.start_timeout.max(EXTERNAL_TARGET_LISTEN_TIMEOUT);
            return self.send_to(
                source,
                target,
                ticket,
                &settings,
                not_honoured,
                &opts,
                &log_path,
                within,
                step,
            );
        }
        super::write_private(&spec, spec_bytes).map_err(|e| failed("writing", &spec, e))?;
        let log = std::fs::File::create(&log_path).map_err(|e| failed("creating", &log_path, e))?;
        let log2 = log.try_clone().map_err(|e| failed("opening", &log_path, e))?;
        let mut cmd = Command::new(&self.cfg.launcher);
        cmd.arg("--spec").arg(&spec).arg("--run-dir").arg(target).arg("--incoming");
        if opts.post_copy {
            cmd.arg("--post-copy");
        }
        if self.cfg.allow_emulation {
            cmd.arg("--allow-emulation");
        }
        if let Some(b) = &self.cfg.backend {
            cmd.arg("--backend").arg(b);
        }
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let child =
            cmd.stdin(Stdio::null()).stdout(log).stderr(log2).spawn().map_err(|e| {
                MigrationError::Failed(format!("starting {}: {e}", self.cfg.launcher.display()))
            })?;
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(target.to_path_buf(), child);
        let within = self.cfg.start_timeout;
        self.send_to(source, target, ticket, &settings, not_honoured, &opts, &log_path, within, step)
    }

    /// Once the target launcher in `target` is starting: waits for it to listen, then has the
    /// source send the VM.
    #[allow(clippy::too_many_arguments)]
    fn send_to(
        &self,
        source: &Path,
        target: &Path,
        ticket: &MigrationTicket,
        settings: &MigrationSettings,
        not_honoured: Vec<String>,
        opts: &MigrateOptions,
        log_path: &Path,
        within: Duration,
        step: &dyn Fn(MigrationStep),
    ) -> Result<virt_core::machine::migrate::MigrationReport, MigrationError> {
        if ticket.cancelled() {
            return Err(MigrationError::Cancelled);
        }
        let stream = self.connect_target(target, ticket, log_path, within)?;
        let name = target.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        step(MigrationStep::TargetReady { target: name });
        if ticket.cancelled() {
            return Err(MigrationError::Cancelled);
        }
        step(MigrationStep::Running { configuration: settings.configuration(), not_honoured });
        migrate_out(source, &stream, opts)
            .map_err(|e| MigrationError::Failed(format!("{e} (target: {})", tail(log_path))))
    }

    /// Connects to the target launcher's migration socket once it listens; gives up when the
    /// migration is cancelled, the launcher exits, or it does not listen `within`.
    fn connect_target(
        &self,
        target: &Path,
        ticket: &MigrationTicket,
        log_path: &Path,
        within: Duration,
    ) -> Result<UnixStream, MigrationError> {
        let deadline = Instant::now() + within;
        loop {
            if ticket.cancelled() {
                return Err(MigrationError::Cancelled);
            }
            if let Ok(s) = connect_destination(target, Duration::ZERO) {
                return Ok(s);
            }
            let exited = {
                let mut ch = self.children.lock().unwrap_or_else(|e| e.into_inner());
                ch.get_mut(target).and_then(|c| c.try_wait().ok().flatten())
            };
            if let Some(status) = exited {
                return Err(MigrationError::Failed(format!(
                    "the target launcher exited ({status}) before it listened: {}",
                    tail(log_path)
                )));
            }
            if Instant::now() > deadline {
                return Err(MigrationError::Failed(format!(
                    "the target launcher did not listen within {within:?}: {}",
                    tail(log_path)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// After a failed migration: the target launcher ends (it exits by itself once the source
    /// abandoned; killed otherwise) and its run directory goes.
    /// A target served by a pod ([`TargetLauncher::External`]) keeps its directory (the pod
    /// mounts it; whoever made the pod removes it).
    fn abandon_target(&self, target: &Path, launcher: TargetLauncher) {
        let child = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(target);
        let deadline = Instant::now() + Duration::from_secs(5);
        if let Some(mut c) = child {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                // Its process group: the launcher and what it started.
                // SAFETY: kill has no memory effects; the group is the launcher's own (process_group(0)).
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            }
            let _ = c.wait();
        }
        if launcher == TargetLauncher::External {
            let _ = std::fs::remove_file(target.join("spec.json"));
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(target) {
            log::warn!("removing the abandoned migration target {}: {e}", target.display());
        }
    }

    /// After a successful migration: the source launcher (which stopped) is reaped, and its run
    /// directory removed unless it is the VMI's first one (which holds the volumes); `moved_away`
    /// (the VM left the node): all of the VMI's run directories here are removed.
    fn release_source(&self, base: &Path, source: &Path, moved_away: bool) {
        let child = self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(source);
        let shown = source.display().to_string();
        let (base, source) = (base.to_path_buf(), source.to_path_buf());
        let spawned = std::thread::Builder::new().name("migration-source".into()).spawn(move || {
            if let Some(mut c) = child {
                let _ = c.wait();
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while remote::launcher_running(&source) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            virt_core::jail::cgroup::collect_stale();
            if remote::launcher_running(&source) {
                return;
            }
            if moved_away {
                remove_vmi_dirs(&base);
            } else if source != base {
                let _ = std::fs::remove_dir_all(&source);
            }
        });
        if let Err(e) = spawned {
            log::warn!("the migration source {shown}: no thread to reap it: {e}");
        }
    }

    /// Before a launch in place (a reboot after a migration): the VMI goes back to its first run
    /// directory, where its volumes are; the migrated launcher's directory goes. Returns that
    /// first directory.
    pub(super) fn forget_migrations(&self, vmi: &VirtualMachineInstance) -> PathBuf {
        let base = self.base_dir(vmi);
        let active = self.run_dir(vmi);
        if active != base {
            let _ = std::fs::remove_file(base.join(ACTIVE));
            self.release(&active);
            if !remote::launcher_running(&active) {
                let _ = std::fs::remove_dir_all(&active);
            }
        }
        base
    }

    /// After a restart: a migration that was cut short after the VM moved (its target runs, the
    /// pointer was not switched yet) is completed; one that had not is forgotten.
    pub(super) fn recover_incoming(&self, vmi: &VirtualMachineInstance) {
        let base = self.base_dir(vmi);
        let Some(name) = pointer(&base, INCOMING) else { return };
        let Some(target) = base.parent().map(|p| p.join(&name)) else { return };
        let active = self.run_dir(vmi);
        // A target launcher that is there but does not answer yet may be finishing the move
        // (just after it, on the target node of a move between nodes): given its start time.
        let target_up = || {
            remote::is_alive(&target)
                || (remote::launcher_present(&target)
                    && RemoteMachine::connect_when_up(&target, self.cfg.start_timeout).is_ok())
        };
        if !remote::launcher_running(&active) && target_up() {
            log::info!("VMI {}: its VM had moved into {name} before the node restarted", base.display());
            if let Err(e) = write_pointer(&base, ACTIVE, &name) {
                log::warn!("VMI {}: recording the migrated launcher: {e}", base.display());
                return;
            }
        }
        let _ = std::fs::remove_file(base.join(INCOMING));
    }
}

/// Removes a VMI's directories: `base` and its migrations' (`<base>-mig-*`) whose launcher is
/// gone.
pub(super) fn remove_vmi_dirs(base: &Path) {
    if let (Some(parent), Some(base_name)) = (base.parent(), base.file_name().and_then(|n| n.to_str())) {
        let prefix = format!("{base_name}-mig-");
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let path = e.path();
            let ours = e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix));
            if ours && !remote::launcher_running(&path) {
                if let Err(e) = std::fs::remove_dir_all(&path) {
                    log::warn!("removing {}: {e}", path.display());
                }
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(base) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("removing {}: {e}", base.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::api::Quantity;

    fn node() -> MigrationSettings {
        MigrationSettings {
            bandwidth_per_migration: Some(Quantity::parse("64Mi").unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn a_policy_replaces_the_fields_it_sets_and_keeps_the_others() {
        let policy = MigrationPolicySpec {
            completion_timeout_per_gib: Some(300),
            allow_auto_converge: Some(true),
            ..Default::default()
        };
        let s = node().with_policy(&policy);
        assert_eq!(s.bandwidth_per_migration, node().bandwidth_per_migration, "not set: the node's");
        assert_eq!((s.completion_timeout_per_gib, s.allow_auto_converge), (300, true));
        let bw = MigrationPolicySpec {
            bandwidth_per_migration: Quantity::parse("1Gi").ok(),
            ..Default::default()
        };
        let s = node().with_policy(&bw);
        assert_eq!(s.configuration()["bandwidthPerMigration"], "1Gi");
        assert_eq!(s.options_for(2048).bandwidth_bytes_per_sec, Some(1 << 30));
        assert_eq!(s.options_for(2048).completion_timeout_secs, Some(300), "150 s per GiB, 2 GiB");
        assert_eq!(node().with_policy(&MigrationPolicySpec::default()), node());
        // progressTimeout is the node's (KubeVirt's default 150 s), shown and passed on; 0: none.
        assert_eq!(s.configuration()["progressTimeout"], 150);
        assert_eq!(s.options_for(1024).progress_timeout_secs, Some(150));
        let off = MigrationSettings { progress_timeout: 0, ..node() };
        assert_eq!(off.options_for(1024).progress_timeout_secs, None);
    }

    #[test]
    fn at_the_completion_timeout_kubevirts_order_decides_cancel_post_copy_or_pause() {
        let policy = |p: Option<bool>, w: Option<bool>| MigrationPolicySpec {
            allow_post_copy: p,
            allow_workload_disruption: w,
            ..Default::default()
        };
        let opts = |p, w| {
            let o = node().with_policy(&policy(p, w)).options_for(1024);
            (o.post_copy, o.pause_to_complete)
        };
        assert_eq!(opts(None, None), (false, false), "cancel");
        // allowWorkloadDisruption unset follows allowPostCopy.
        assert_eq!(opts(Some(true), None), (true, false), "post-copy");
        assert_eq!(opts(Some(true), Some(false)), (false, false), "no disruption: cancel");
        assert_eq!(opts(None, Some(true)), (false, true), "pause");
        assert_eq!(opts(Some(false), Some(true)), (false, true), "pause");
        let s = node().with_policy(&policy(Some(true), None));
        assert_eq!(s.configuration()["allowWorkloadDisruption"], true);
    }

    #[test]
    fn what_the_backend_cannot_do_is_turned_off_and_named() {
        let asked = MigrationSettings {
            allow_auto_converge: true,
            allow_post_copy: true,
            allow_workload_disruption: true,
            ..node()
        };
        // Both backends throttle (QEMU's auto-converge, the native VMM's vCPU throttle) and pause
        // to complete; QEMU switches to post-copy, the native VMM cannot and pauses instead.
        let (q, not) = asked.for_backend("qemu");
        assert!(q.allow_auto_converge && q.options_for(1024).auto_converge);
        assert!(q.options_for(1024).post_copy && !q.options_for(1024).pause_to_complete);
        assert_eq!(not, Vec::<String>::new());
        let (n, not) = asked.for_backend("native");
        assert_eq!(n.configuration()["allowAutoConverge"], true);
        assert!(!n.options_for(1024).post_copy && n.options_for(1024).pause_to_complete);
        assert_eq!(n.configuration()["allowPostCopy"], false, "the value in force");
        assert_eq!(not.len(), 1, "{not:?}");
        assert!(not[0].starts_with("allowPostCopy: the native backend cannot"), "{not:?}");
        // A backend that cannot (an unknown one) drops it and says so.
        let (other, not) = asked.for_backend("");
        assert!(!other.options_for(1024).auto_converge);
        assert_eq!(other.configuration()["allowAutoConverge"], false, "the value in force");
        assert!(not[0].starts_with("allowAutoConverge: the unknown backend cannot"), "{not:?}");
        assert!(!other.options_for(1024).post_copy && !other.options_for(1024).pause_to_complete);
        // Nothing asked, nothing to say.
        assert_eq!(node().for_backend("native"), (node(), Vec::new()));
    }
}
