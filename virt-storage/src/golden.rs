//! Golden images: a DataImportCron keeps a boot source up to date.
//!
//! [`reconcile_cron`] is one reconcile of a `DataImportCron` and its managed `DataSource`, in the
//! shape of a kube-rs controller: it reads the observed state (the two objects, the volumes in the
//! storage classes, the registry's digest for the tag), acts (imports a new version, deletes
//! outdated ones) and writes the objects' status back. It is idempotent: run it again and nothing
//! happens until the schedule is due and the digest moves.
//!
//! - The registry tag is polled on the cron's schedule (UTC); a new digest is imported as a volume
//!   named `<managedDataSource>-<first 12 hex digits of the digest>` in the boot-source namespace
//!   (`os-images` unless the cron says otherwise), on the default storage class.
//! - The DataSource is pointed at the newest import; older imports beyond `importsToKeep` are
//!   deleted when `garbageCollect` is `Outdated` (the default). An import still used as the backing
//!   file of a VM's overlay clone is kept until that clone is gone, and the run says so.
//! - Automatic updates can be switched off per boot source: the cron then does not poll at all.
//! - When the default storage class changes, the existing boot source stays where it is (VMs may be
//!   using it); once an administrator deletes it, the next reconcile imports the image again on the
//!   new default class, as the OpenShift Virtualization documentation describes.

use std::collections::BTreeMap;

use crate::cdi::{Condition, ConditionStatus, DataImportCron, DataSource, PvcSource, Timestamp};
use crate::import::registry::import_container_disk;
use crate::import::{ImportError, ImportOptions};
use crate::registry::RegistryClient;
use crate::volume::{VolumeError, VolumeFormat, VolumeId, VolumeProvider};

/// The namespace boot sources live in unless a cron says otherwise.
pub const DEFAULT_NAMESPACE: &str = "os-images";

/// Storage classes: named pools, one of them the default.
pub struct StorageClasses<'a> {
    /// Pools by class name.
    pub classes: BTreeMap<String, &'a dyn VolumeProvider>,
    /// The class new boot sources are created on.
    pub default_class: String,
}

impl<'a> StorageClasses<'a> {
    fn default_pool(&self) -> Result<&'a dyn VolumeProvider, GoldenError> {
        self.classes.get(&self.default_class).copied().ok_or_else(|| {
            GoldenError::Config(format!("default storage class {:?} has no pool", self.default_class))
        })
    }

    /// The class and pool holding `id`, if any.
    pub fn find(&self, id: &VolumeId) -> Result<Option<(&str, &'a dyn VolumeProvider)>, GoldenError> {
        for (name, pool) in &self.classes {
            if pool.get(id)?.is_some() {
                return Ok(Some((name.as_str(), *pool)));
            }
        }
        Ok(None)
    }
}

/// Errors of golden-image reconciles.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The cron or the storage setup is unusable.
    #[error("golden image: {0}")]
    Config(String),
    /// Polling or importing failed.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// A volume operation failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CronRun {
    /// Whether the registry was polled.
    pub polled: bool,
    /// The digest the tag resolved to, when polled.
    pub digest: Option<String>,
    /// The volume imported in this run, if any.
    pub imported: Option<VolumeId>,
    /// Volumes deleted as outdated.
    pub deleted: Vec<VolumeId>,
    /// Outdated volumes kept because something still uses them, with the reason.
    pub kept: Vec<(VolumeId, String)>,
    /// Why nothing was done, when nothing was.
    pub skipped: Option<String>,
}

fn condition(type_: &str, ok: bool, reason: &str, message: String, now: &Option<Timestamp>) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if ok { ConditionStatus::True } else { ConditionStatus::False },
        last_transition_time: now.clone(),
        last_heartbeat_time: now.clone(),
        reason: Some(reason.to_string()),
        message: Some(message),
    }
}

fn set_condition(list: &mut Vec<Condition>, c: Condition) {
    match list.iter_mut().find(|x| x.type_ == c.type_) {
        Some(old) => {
            let changed = old.status != c.status;
            let since = old.last_transition_time.clone();
            *old = c;
            if !changed {
                old.last_transition_time = since;
            }
        }
        None => list.push(c),
    }
}

/// Volume name of an import of `digest` for data source `ds`.
pub fn import_name(ds: &str, digest: &str) -> String {
    let hex = digest.split_once(':').map(|(_, h)| h).unwrap_or(digest);
    format!("{ds}-{}", &hex[..hex.len().min(12)])
}

/// One reconcile of `cron` and its managed `source` at `now` (unix seconds). `auto_update` is the
/// per-boot-source switch; `registry` pulls images.
pub fn reconcile_cron(
    cron: &mut DataImportCron,
    source: &mut DataSource,
    classes: &StorageClasses<'_>,
    registry: &RegistryClient,
    auto_update: bool,
    now: i64,
) -> Result<CronRun, GoldenError> {
    let mut run = CronRun::default();
    let ns = cron.metadata.namespace.clone().unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    let ds_name = cron.spec.managed_data_source.clone();
    let url = cron
        .spec
        .template
        .spec
        .source
        .as_ref()
        .and_then(|s| s.registry.as_ref())
        .and_then(|r| r.url.clone())
        .ok_or_else(|| GoldenError::Config("spec.template.spec.source.registry.url is required".into()))?;
    let schedule =
        cron.spec.parsed_schedule().map_err(|e| GoldenError::Config(format!("spec.schedule: {e}")))?;
    let now_ts = Timestamp::from_unix(now);
    let status = cron.status.get_or_insert_with(Default::default);

    // Does the DataSource point at a volume that still exists?
    let current = source.spec.source.pvc.clone().map(|p| VolumeId::new(p.namespace, p.name));
    let current_alive = match &current {
        Some(id) => classes.find(id)?.is_some(),
        None => false,
    };

    if !auto_update && current_alive {
        run.skipped = Some("automatic updates are off for this boot source".into());
        set_condition(
            &mut status.conditions,
            condition("UpToDate", true, "UpdatesDisabled", "automatic updates are disabled".into(), &now_ts),
        );
        return Ok(run);
    }
    // Due? A missing boot source is always due (first import, or its volume was deleted).
    let last = status.last_execution_timestamp.as_ref().map(|t| t.unix_seconds());
    let due = match (last, &schedule) {
        _ if !current_alive => true,
        (None, _) => true,
        (Some(_), None) => false, // no schedule: import once
        (Some(l), Some(s)) => s.next_after(l).is_some_and(|next| next <= now),
    };
    if !due {
        run.skipped = Some("not due yet".into());
        return Ok(run);
    }

    let reference = url.strip_prefix("docker://").unwrap_or(&url).to_string();
    let digest = registry
        .resolve_digest(&reference)
        .map_err(|e| ImportError::Registry { reference: reference.clone(), source: Box::new(e) })?
        .to_string();
    run.polled = true;
    run.digest = Some(digest.clone());
    status.last_execution_timestamp = now_ts.clone();

    let wanted = VolumeId::new(&ns, import_name(&ds_name, &digest));
    let have = classes.find(&wanted)?.is_some();
    if !have {
        let pool = classes.default_pool()?;
        status.current_imports =
            vec![crate::cdi::ImportStatus { data_volume_name: wanted.name.clone(), digest: digest.clone() }];
        set_condition(
            &mut status.conditions,
            condition("Progressing", true, "ImportProgressing", format!("importing {digest}"), &now_ts),
        );
        let pinned = format!("{}@{digest}", reference.split('@').next().unwrap_or(&reference));
        let r = import_container_disk(
            pool,
            &wanted,
            registry,
            &pinned,
            &ImportOptions { format: VolumeFormat::Raw, ..Default::default() },
            &mut |_| {},
        );
        status.current_imports.clear();
        if let Err(e) = r {
            set_condition(
                &mut status.conditions,
                condition("Progressing", false, "ImportFailed", e.to_string(), &now_ts),
            );
            set_condition(
                &mut status.conditions,
                condition("UpToDate", false, "ImportFailed", e.to_string(), &now_ts),
            );
            return Err(e.into());
        }
        status.last_import_timestamp = now_ts.clone();
        run.imported = Some(wanted.clone());
    }
    status.last_imported_pvc = Some(PvcSource { namespace: ns.clone(), name: wanted.name.clone() });
    set_condition(
        &mut status.conditions,
        condition("Progressing", false, "NoImportsInProgress", "no import in progress".into(), &now_ts),
    );
    set_condition(
        &mut status.conditions,
        condition("UpToDate", true, "UpToDate", format!("latest import is {digest}"), &now_ts),
    );

    // Point the DataSource at the newest import.
    source.spec.source.pvc = Some(PvcSource { namespace: ns.clone(), name: wanted.name.clone() });
    source.spec.source.snapshot = None;
    let ds_status = source.status.get_or_insert_with(Default::default);
    ds_status.source = Some(source.spec.source.clone());
    set_condition(
        &mut ds_status.conditions,
        condition("Ready", true, "Ready", format!("points at {ns}/{}", wanted.name), &now_ts),
    );

    // Garbage-collect outdated imports of this data source.
    let gc = !matches!(cron.spec.garbage_collect, Some(crate::cdi::GarbageCollect::Never));
    if gc {
        let keep = usize::try_from(cron.spec.imports_to_keep_or_default().max(1)).unwrap_or(1);
        let prefix = format!("{ds_name}-");
        let mut imports = Vec::new();
        for pool in classes.classes.values() {
            for v in pool.list(&ns)? {
                let suffix = v.id.name.strip_prefix(&prefix);
                if suffix.is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit())) {
                    let mtime = std::fs::metadata(&v.path).and_then(|m| m.modified()).ok();
                    imports.push((mtime, v.id, *pool));
                }
            }
        }
        // Newest first; the one the DataSource points at always counts as newest.
        imports.sort_by(|a, b| (b.1 == wanted).cmp(&(a.1 == wanted)).then(b.0.cmp(&a.0)));
        for (_, id, pool) in imports.into_iter().skip(keep) {
            match pool.delete(&id) {
                Ok(()) => run.deleted.push(id),
                Err(VolumeError::InUse { users, .. }) => run.kept.push((id, format!("still backs {users}"))),
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(run)
}
