//! A migration between two nodes, each side on its own node's runtime (KubeVirt's source and
//! target virt-handlers). The stream between them is the node agents' business
//! (`node::migration_proxy`); here:
//!
//! - the target node prepares the VMI's volumes in the VMI's first run directory *on that node*
//!   (the same layout, so the same paths as on the source), writes the target launcher's spec
//!   into the migration's run directory and records the move as [`INCOMING`]
//!   ([`LauncherRuntime::prepare_incoming`]); once the VM runs in that launcher, the node finds it
//!   there (`Runtime::reattach` completes an incoming move whose target runs);
//! - the source node sends the machine through a stream it is given
//!   ([`LauncherRuntime::migrate_vmi_away`]) and, once the VM moved, lets its launcher end and
//!   removes the VMI's run directories on this node.

use virt_core::machine::migrate::MigrationReport;

use crate::node::migration_proxy::ProxyError;

use super::*;

/// How often a connection to a target that does not listen yet is tried again.
const RETRY: Duration = Duration::from_millis(250);

/// What the source node did.
#[derive(Debug, Clone)]
pub struct MovedAway {
    /// What the source measured.
    pub report: MigrationReport,
    /// The source launcher's name (its run directory's).
    pub source: String,
}

impl LauncherRuntime {
    /// On the target node: makes `vmi`'s volumes here and the spec of migration `migration_uid`'s
    /// target launcher (whose pod's entry script starts `virt-launcher --incoming` on it, with
    /// `--post-copy` when `post_copy`), and records the move as incoming. Returns the target run
    /// directory (the target launcher listens on its `migrate.sock`). Again for the same migration:
    /// the spec written before stays.
    pub fn prepare_incoming(
        &self,
        vmi: &VirtualMachineInstance,
        migration_uid: &str,
        claims: &HashMap<String, (PathBuf, virt_core::machine::DiskFormat)>,
        post_copy: bool,
    ) -> Result<PathBuf, LaunchError> {
        let base = self.base_dir(vmi);
        let (Some(parent), Some(base_name)) = (base.parent(), base.file_name().and_then(|n| n.to_str()))
        else {
            return Err(LaunchError::new(
                Stage::Process,
                format!("{} is no VMI run directory", base.display()),
            ));
        };
        let name = target_dir_name(base_name, migration_uid);
        let target = parent.join(&name);
        std::fs::create_dir_all(&target).map_err(process(&target))?;
        if !target.join("spec.json").is_file() {
            let json = self.prepared_spec(vmi, &base, None, claims)?;
            let spec: MachineSpec = serde_json::from_slice(&json)
                .map_err(|e| LaunchError::new(Stage::Spec, format!("decoding the machine spec: {e}")))?;
            if let Some(why) = not_migratable(&spec) {
                return Err(LaunchError::new(Stage::Spec, why.message));
            }
            if post_copy {
                let marker = target.join(POST_COPY_MARKER);
                std::fs::write(&marker, b"").map_err(process(&marker))?;
            }
            write_spec_file(&target, &json)?;
        }
        write_pointer(&base, INCOMING, &name).map_err(process(&base.join(INCOMING)))?;
        Ok(target)
    }

    /// Whether the target launcher of a migration under `policy` (the MigrationPolicy that
    /// matched when it started) is to be ready for post-copy: the node's settings with the
    /// policy's over them ask for it (the source decides whether it switches).
    pub fn incoming_post_copy(&self, policy: Option<&virt_core::model::MigrationPolicy>) -> bool {
        let settings = match policy {
            Some(p) => self.cfg.migration.with_policy(&p.spec),
            None => self.cfg.migration.clone(),
        };
        settings.options_for(1024).post_copy
    }

    /// On the target node, after a migration that did not complete: the VMI's run directories
    /// here go, unless a launcher still runs in them.
    pub fn abandon_incoming(&self, vmi: &VirtualMachineInstance) {
        let base = self.base_dir(vmi);
        if remote::launcher_running(&self.run_dir(vmi)) {
            return;
        }
        remove_vmi_dirs(&base);
    }

    /// On the source node: sends `vmi`'s machine to the launcher `connect` reaches on another node
    /// (tried again while it fails, until the migration is cancelled or
    /// [`EXTERNAL_TARGET_LISTEN_TIMEOUT`] passed: the target launcher starts only once its node
    /// wrote its spec). `target`: that launcher's name, for the steps. Once the VM moved, the
    /// launcher here ends and the VMI's run directories on this node are removed.
    pub fn migrate_vmi_away(
        &self,
        vmi: &VirtualMachineInstance,
        ticket: &MigrationTicket,
        target: &str,
        connect: &dyn Fn() -> Result<UnixStream, ProxyError>,
        step: &dyn Fn(MigrationStep),
    ) -> Result<MovedAway, MigrationError> {
        let base = self.base_dir(vmi);
        let (source, _, spec) = self.migration_source(vmi)?;
        let (settings, not_honoured) = self.settings_for(&source, ticket);
        let opts = settings.options_for(spec.memory_mib);
        let within = self.cfg.start_timeout.max(EXTERNAL_TARGET_LISTEN_TIMEOUT);
        let stream = connect_until(ticket, within, connect)?;
        step(MigrationStep::TargetReady { target: target.to_string() });
        if ticket.cancelled() {
            return Err(MigrationError::Cancelled);
        }
        step(MigrationStep::Running { configuration: settings.configuration(), not_honoured });
        let report = migrate_out(&source, &stream, &opts).map_err(|e| {
            if ticket.cancelled() {
                MigrationError::Cancelled
            } else {
                MigrationError::Failed(format!("{e} (target: launcher {target} on the other node)"))
            }
        })?;
        self.release_source(&base, &source, true);
        let source_name = source.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        Ok(MovedAway { report, source: source_name })
    }
}

/// `connect()` until it succeeds, the ticket is cancelled, or `within` passed (the last error
/// named).
fn connect_until(
    ticket: &MigrationTicket,
    within: Duration,
    connect: &dyn Fn() -> Result<UnixStream, ProxyError>,
) -> Result<UnixStream, MigrationError> {
    let deadline = Instant::now() + within;
    loop {
        if ticket.cancelled() {
            return Err(MigrationError::Cancelled);
        }
        match connect() {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(MigrationError::Failed(format!(
                    "the target launcher on the other node could not be reached within {within:?}: {e}"
                )))
            }
            Err(e) => log::debug!("migration {}: target not reached yet: {e}", ticket.name),
        }
        std::thread::sleep(RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn ticket() -> MigrationTicket {
        MigrationTicket {
            uid: "u".into(),
            name: "m".into(),
            cancel: Arc::new(AtomicBool::new(false)),
            policy: None,
        }
    }

    #[test]
    fn a_target_that_does_not_listen_yet_is_tried_again_until_it_does_or_the_time_is_up() {
        let tries = AtomicUsize::new(0);
        let t = ticket();
        let late = || {
            if tries.fetch_add(1, Ordering::SeqCst) < 2 {
                Err(ProxyError::Refused {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    key: "u".into(),
                    reason: "the target launcher's socket: not listening".into(),
                })
            } else {
                UnixStream::pair().map(|(a, _)| a).map_err(|source| ProxyError::Io {
                    what: "pairing",
                    target: "sockets".into(),
                    source,
                })
            }
        };
        assert!(connect_until(&t, Duration::from_secs(5), &late).is_ok());
        assert_eq!(tries.load(Ordering::SeqCst), 3);

        let never = || {
            Err::<UnixStream, _>(ProxyError::Refused {
                addr: "127.0.0.1:1".parse().unwrap(),
                key: "u".into(),
                reason: "no migration with this key is expected here".into(),
            })
        };
        let e = connect_until(&t, Duration::from_millis(300), &never).unwrap_err();
        assert!(e.to_string().contains("could not be reached within 300ms: the migration proxy"), "{e}");
        assert!(e.to_string().contains("no migration with this key"), "{e}");

        t.cancel.store(true, Ordering::SeqCst);
        assert!(matches!(connect_until(&t, Duration::from_secs(5), &never), Err(MigrationError::Cancelled)));
    }
}
