//! KubeVirt's `VirtualMachineInstanceMigration` on one node: the requests (create, get, list,
//! delete = cancel) and the types of the [`Runtime`] seam that carries a migration out. The
//! controller's part is `migration_controller` (docs/migration.md).
//!
//! As KubeVirt's admission webhook does, a migration is refused when its VMI does not exist, does
//! not run, or already has a migration under way; finished migrations do not block a new one.

use crate::api::StatusCause;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::machine::migrate::MigrationReport;
use crate::model::VirtualMachineInstanceMigration;

/// The phases of a migration, in order (KubeVirt's `VirtualMachineInstanceMigrationPhase`s this
/// node goes through): `Pending` (created), `Scheduling` (the target launcher is being started),
/// `TargetReady` (it listens for the VM), `Running` (the VM is moving), then `Succeeded` or
/// `Failed`.
pub const MIGRATION_PHASES: [&str; 6] =
    ["Pending", "Scheduling", "TargetReady", "Running", "Succeeded", "Failed"];

/// What a [`Runtime::migrate`] call is for.
#[derive(Debug, Clone)]
pub struct MigrationTicket {
    /// The migration's uid (names the target's run directory).
    pub uid: String,
    /// The migration's name.
    pub name: String,
    /// Set when the migration is to be abandoned: checked between steps.
    pub cancel: Arc<AtomicBool>,
    /// The MigrationPolicy that matched the VMI when the migration started (its fields override
    /// the node's migration settings); `None`: the node's settings apply.
    pub policy: Option<crate::model::MigrationPolicy>,
}

impl MigrationTicket {
    /// Whether a cancel was asked for.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

/// A step a migration reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationStep {
    /// The target launcher (named) listens for the VM.
    TargetReady {
        /// The target launcher's name (its run directory).
        target: String,
    },
    /// The source sends the VM.
    Running {
        /// The settings it runs with, as KubeVirt reports them in the VMI's
        /// `status.migrationState.migrationConfiguration` (`bandwidthPerMigration`,
        /// `completionTimeoutPerGiB`, `allowAutoConverge`, `allowPostCopy`, ...): the values in
        /// force, not those asked for.
        configuration: serde_json::Value,
        /// What was asked for (by the node's settings or the policy) that this migration cannot
        /// do, one sentence each (e.g. post-copy): a Warning event on the VMI.
        not_honoured: Vec<String>,
    },
}

/// A migration that completed: the VM runs in `machine`.
pub struct Migrated {
    /// The machine now running the VM.
    pub machine: Arc<dyn Machine>,
    /// What the source measured.
    pub report: MigrationReport,
    /// The source launcher's name.
    pub source: String,
    /// The target launcher's name.
    pub target: String,
}

/// Why a migration did not complete; the source runs on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MigrationError {
    /// This runtime or VMI cannot migrate.
    #[error("not migratable: {0}")]
    Unsupported(String),
    /// It was cancelled before the destination was ready.
    #[error("cancelled: the migration was aborted and the source runs on")]
    Cancelled,
    /// A step failed.
    #[error("{0}")]
    Failed(String),
}

/// A migration under way: what its worker thread reports to the controller.
pub(super) struct Flight {
    /// The migration's key.
    pub(super) migration: Key,
    pub(super) ticket: MigrationTicket,
    pub(super) progress: Mutex<Progress>,
}

#[derive(Default)]
pub(super) struct Progress {
    /// Steps reached and not yet recorded.
    pub(super) steps: Vec<MigrationStep>,
    /// The worker's result, once it ended.
    pub(super) outcome: Option<Result<Migrated, MigrationError>>,
}

/// The phase of a migration (`Pending` without one).
pub fn phase_of_migration(m: &VirtualMachineInstanceMigration) -> &str {
    m.status.as_ref().and_then(|s| s.get("phase")).and_then(|p| p.as_str()).unwrap_or("Pending")
}

/// Whether a migration ended (`Succeeded` or `Failed`).
pub fn migration_final(m: &VirtualMachineInstanceMigration) -> bool {
    matches!(phase_of_migration(m), "Succeeded" | "Failed")
}

/// Sets the migration's phase (recording its transition time); false if it had it already.
pub fn set_migration_phase(m: &mut VirtualMachineInstanceMigration, phase: &str) -> bool {
    if m.status.is_some() && phase_of_migration(m) == phase {
        return false;
    }
    let st = m.status.get_or_insert_with(|| serde_json::json!({}));
    if !st.is_object() {
        *st = serde_json::json!({});
    }
    st["phase"] = phase.into();
    let t = to_value(&now());
    let entry = serde_json::json!({ "phase": phase, "phaseTransitionTimestamp": t });
    match st.get_mut("phaseTransitionTimestamps").and_then(|v| v.as_array_mut()) {
        Some(a) => a.push(entry),
        None => st["phaseTransitionTimestamps"] = serde_json::json!([entry]),
    }
    true
}

/// What KubeVirt's migration-create validator looks at, gathered by whoever stores migrations
/// (the node's lifecycle, the cluster's migration controller): one set of refusals for both.
pub struct MigrationAdmission<'a> {
    /// `spec.vmiName`.
    pub vmi_name: &'a str,
    /// The VMI, if it exists.
    pub vmi: Option<&'a VirtualMachineInstance>,
    /// Whether its machine runs (phase Running and a launcher behind it).
    pub running: bool,
    /// Whether it is being deleted.
    pub deleting: bool,
    /// Whether it can move ([`Runtime::live_migratable`]).
    pub migratable: Result<(), NotMigratable>,
    /// Another migration of the VMI that has not finished, by name.
    pub in_flight: Option<&'a str>,
}

impl MigrationAdmission<'_> {
    /// Why the migration is refused (KubeVirt's messages), or `None`.
    pub fn refusal(&self) -> Option<String> {
        let name = self.vmi_name;
        let Some(vmi) = self.vmi else {
            return Some(format!("the VMI \"{name}\" does not exist"));
        };
        if !self.running {
            return Some(format!(
                "Cannot migrate VMI \"{name}\": it is not running (phase {:?})",
                phase_of(vmi)
            ));
        }
        if self.deleting {
            return Some(format!("Cannot migrate VMI \"{name}\": it is being deleted"));
        }
        // As KubeVirt's validator: a VMI that cannot move is refused now, not failed later.
        if let Err(why) = &self.migratable {
            return Some(format!("Cannot migrate VMI, Reason: {}, Message: {}", why.reason, why.message));
        }
        if let Some(other) = self.in_flight {
            return Some(format!(
                "in-flight migration detected. Active migration job ({other}) is currently already in progress for VMI {name}."
            ));
        }
        None
    }
}

fn denied(msg: String) -> LifecycleError {
    StatusCause::general(format!(
        "admission webhook \"migration-create-validator.kubevirt.io\" denied the request: {msg}"
    ))
    .into()
}

impl Migrations<'_> {
    /// Creates a migration of the VMI `spec.vmiName` (`virtctl migrate`): refused when the VMI is
    /// missing, not running, or has a migration under way.
    pub fn create(
        &self,
        namespace: &str,
        mut m: VirtualMachineInstanceMigration,
    ) -> Result<VirtualMachineInstanceMigration, LifecycleError> {
        let name = prepare_meta(&mut m.metadata, namespace)?;
        let vmi_name = m.spec.vmi_name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
            LifecycleError::from(StatusCause::required("spec.vmiName", "the VMI to migrate"))
        })?;
        let key = Key::new(namespace, &name);
        let vmi_key = Key::new(namespace, &vmi_name);
        let mut st = lock(&self.lc.state);
        Lifecycle::require_namespace(&st, namespace)?;
        if st.migrations.contains_key(&key) {
            return Err(LifecycleError::AlreadyExists { resource: Kind::Migration.resource(), name });
        }
        let vmi = st.vmis.get(&vmi_key).map(|v| &**v);
        let running = vmi.is_some_and(|v| phase_of(v) == VmiPhase::Running) && st.live.contains_key(&vmi_key);
        let migratable = vmi.map_or(Ok(()), |v| self.lc.runtime.live_migratable(v));
        let in_flight = st
            .migrations
            .iter()
            .find(|(k, o)| {
                k.namespace == namespace
                    && o.spec.vmi_name.as_deref() == Some(vmi_name.as_str())
                    && !migration_final(o)
            })
            .map(|(k, _)| k.name.clone());
        let check = MigrationAdmission {
            vmi_name: &vmi_name,
            vmi,
            running,
            deleting: st.deleting_vmis.contains_key(&vmi_key),
            migratable,
            in_flight: in_flight.as_deref(),
        };
        if let Some(why) = check.refusal() {
            return Err(denied(why));
        }
        m.status = None;
        set_migration_phase(&mut m, "Pending");
        m.metadata.labels.insert("kubevirt.io/vmi-name".into(), vmi_name.clone());
        let rv = self.lc.store.put(&StoredObject {
            kind: Kind::Migration,
            key: key.clone(),
            value: to_value(&m),
        })?;
        m.metadata.resource_version = Some(rv.to_string());
        st.migrations.insert(key.clone(), m.clone());
        self.lc.persist().event_locked(
            &mut st,
            Kind::Migration,
            &key,
            "Normal",
            "SuccessfulCreate",
            format!("migration of VMI {vmi_name} requested"),
        );
        drop(st);
        self.lc.wake();
        Ok(m)
    }

    /// One migration.
    pub fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<VirtualMachineInstanceMigration, LifecycleError> {
        lock(&self.lc.state).migrations.get(&Key::new(namespace, name)).cloned().ok_or_else(|| {
            LifecycleError::NotFound { resource: Kind::Migration.resource(), name: name.into() }
        })
    }

    /// The migrations of `namespace`, or of all namespaces.
    pub fn list(&self, namespace: Option<&str>) -> Vec<VirtualMachineInstanceMigration> {
        lock(&self.lc.state)
            .migrations
            .iter()
            .filter(|(k, _)| namespace.is_none_or(|n| n == k.namespace))
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Deletes a migration (`virtctl migrate-cancel`, `kubectl delete vmim`). One under way is
    /// aborted first (the source runs on, unless the VM already moved) and goes once it ended.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<(), LifecycleError> {
        let key = Key::new(namespace, name);
        let mut st = lock(&self.lc.state);
        let m = st.migrations.get(&key).ok_or_else(|| LifecycleError::NotFound {
            resource: Kind::Migration.resource(),
            name: name.into(),
        })?;
        let flight = st.flights.values().find(|f| f.migration == key).cloned();
        match flight {
            None => {
                let _ = m;
                self.lc.store.delete(Kind::Migration, &key)?;
                st.migrations.remove(&key);
            }
            Some(f) => {
                if let Some(m) = st.migrations.get_mut(&key) {
                    if m.metadata.deletion_timestamp.is_none() {
                        m.metadata.deletion_timestamp = Some(now());
                    }
                }
                self.lc.migration_ctl().persist_migration(&mut st, &key)?;
                f.ticket.cancel.store(true, Ordering::SeqCst);
                self.lc.persist().event_locked(
                    &mut st,
                    Kind::Migration,
                    &key,
                    "Normal",
                    "MigrationAbortRequested",
                    "the migration was deleted: aborting it".into(),
                );
            }
        }
        drop(st);
        self.lc.wake();
        Ok(())
    }
}

impl MigrationController<'_> {
    /// Writes the migration at `key` as it is in memory.
    pub(super) fn persist_migration(&self, st: &mut State, key: &Key) -> Result<(), LifecycleError> {
        let Some(m) = st.migrations.get(key) else { return Ok(()) };
        let object = StoredObject { kind: Kind::Migration, key: key.clone(), value: to_value(m) };
        let rv = self.lc.persist().put_or_rollback(st, object)?;
        if let Some(m) = st.migrations.get_mut(key) {
            m.metadata.resource_version = Some(rv.to_string());
        }
        Ok(())
    }

    /// After a restart: migrations that were under way when the previous lifecycle ended are
    /// Failed (their worker is gone; the runtime found the VM wherever it runs).
    pub(super) fn interrupted_migrations(&self) -> Result<(), LifecycleError> {
        let mut st = lock(&self.lc.state);
        let keys: Vec<Key> = st
            .migrations
            .iter()
            .filter(|(_, m)| !migration_final(m) && phase_of_migration(m) != "Pending")
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(m) = st.migrations.get_mut(&key) {
                set_migration_phase(m, "Failed");
                if let Some(s) = m.status.as_mut() {
                    s["reason"] = "the node restarted during the migration".into();
                }
            }
            self.persist_migration(&mut st, &key)?;
        }
        Ok(())
    }
}
