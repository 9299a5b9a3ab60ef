//! The CDI API's requests on the node: create, get, list and delete of DataVolumes, DataSources,
//! DataImportCrons and VolumeSnapshots, and the pool's StorageProfile.

use serde_json::Value;
use virt_core::api::{LabelSelector, ObjectMeta, StatusCause};
use virt_core::lifecycle::Key;
use virt_storage::cdi::{
    AccessMode, ClaimPropertySet, CloneStrategy as CdiCloneStrategy, DataImportCron, DataSource, DataVolume,
    DataVolumePhase, DataVolumeProgress, DataVolumeStatus, RetentionPolicy, SourceFormat, StorageProfile,
    StorageProfileSpec, StorageProfileStatus, VolumeMode, VolumeSnapshot, VolumeSnapshotStatus, API_VERSION,
    SNAPSHOT_API_VERSION,
};
use virt_storage::volume::{CloneStrategy, VolumeError, VolumeId, VolumeProvider};

use super::{
    check, lock, prepare_meta, to_value, Cdi, CdiError, CdiKind, State, ANN_AUTO_UPDATE, LABEL_CRON,
    PROVISIONER, STORAGE_CLASS,
};

impl Cdi {
    /// Creates a DataVolume in `namespace` (validated; its name names the volume file).
    pub fn create_data_volume(&self, namespace: &str, mut dv: DataVolume) -> Result<DataVolume, CdiError> {
        let name = prepare_meta(&mut dv.metadata, namespace)?;
        check(&dv)?;
        VolumeId::new(namespace, &name).validate().map_err(|e| {
            CdiError::from(StatusCause::invalid_value(
                "metadata.name",
                format!("{name:?}"),
                &format!("it names the volume: {e}"),
            ))
        })?;
        self.check_import_url(&dv)?;
        self.check_restore_size(&dv)?;
        dv.api_version = Some(API_VERSION.into());
        dv.kind = Some("DataVolume".into());
        dv.status = Some(DataVolumeStatus {
            phase: Some(DataVolumePhase::Pending),
            progress: Some(DataVolumeProgress("N/A".into())),
            ..Default::default()
        });
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        self.insert_dv_locked(&mut st, &key, dv)?;
        let out = st.dvs.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataVolume.resource(), name })
    }

    pub(super) fn insert_dv_locked(&self, st: &mut State, key: &Key, dv: DataVolume) -> Result<(), CdiError> {
        if st.dvs.contains_key(key) {
            return Err(CdiError::AlreadyExists {
                resource: CdiKind::DataVolume.resource(),
                name: key.name.clone(),
            });
        }
        if st.dv_workers.contains_key(key) {
            return Err(CdiError::Conflict(format!(
                "DataVolume {key} was deleted and its import is still being stopped; try again shortly"
            )));
        }
        st.dvs.insert(key.clone(), dv);
        st.dv_next.remove(key);
        st.dv_failures.remove(key);
        st.template_errors.remove(key);
        if let Err(e) = self.persist(st, CdiKind::DataVolume, key) {
            st.dvs.remove(key);
            return Err(e);
        }
        Ok(())
    }

    /// A DataVolume restoring a known, ready VolumeSnapshot must be at least its `restoreSize`
    /// (checked again when it is populated: the snapshot may come later).
    pub(super) fn check_restore_size(&self, dv: &DataVolume) -> Result<(), CdiError> {
        let (Some(snap), Some(want)) = (
            dv.spec.source.as_ref().and_then(|s| s.snapshot.as_ref()),
            dv.spec.requested_size().map(|q| q.bytes()),
        ) else {
            return Ok(());
        };
        let need = lock(&self.state)
            .snapshots
            .get(&Key::new(&snap.namespace, &snap.name))
            .and_then(|vs| vs.status.as_ref())
            .and_then(|s| s.restore_size.as_ref())
            .map(|q| q.bytes());
        match need {
            Some(need) if want < need => {
                let field = if dv.spec.storage.is_some() { "spec.storage" } else { "spec.pvc" };
                Err(StatusCause::invalid_value(
                    &format!("{field}.resources.requests.storage"),
                    want,
                    &format!(
                        "smaller than the restoreSize ({need} bytes) of VolumeSnapshot {}/{}",
                        snap.namespace, snap.name
                    ),
                )
                .into())
            }
            _ => Ok(()),
        }
    }

    /// Creates a VolumeSnapshot of a claim in `namespace`; a worker takes it.
    pub fn create_volume_snapshot(
        &self,
        namespace: &str,
        mut vs: VolumeSnapshot,
    ) -> Result<VolumeSnapshot, CdiError> {
        let name = prepare_meta(&mut vs.metadata, namespace)?;
        vs.check().map_err(|e| CdiError::from(StatusCause::general(e.to_string())))?;
        vs.api_version = Some(SNAPSHOT_API_VERSION.into());
        vs.kind = Some("VolumeSnapshot".into());
        vs.status = Some(VolumeSnapshotStatus { ready_to_use: Some(false), ..Default::default() });
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.snapshots.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::VolumeSnapshot.resource(), name });
        }
        if st.snap_workers.contains_key(&key) {
            return Err(CdiError::Conflict(format!(
                "VolumeSnapshot {key} was deleted while it was being taken; try again shortly"
            )));
        }
        st.snapshots.insert(key.clone(), vs);
        st.snap_next.remove(&key);
        if let Err(e) = self.persist(&mut st, CdiKind::VolumeSnapshot, &key) {
            st.snapshots.remove(&key);
            return Err(e);
        }
        let out = st.snapshots.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::VolumeSnapshot.resource(), name })
    }

    /// Creates a DataSource in `namespace`.
    pub fn create_data_source(&self, namespace: &str, mut ds: DataSource) -> Result<DataSource, CdiError> {
        let name = prepare_meta(&mut ds.metadata, namespace)?;
        check(&ds)?;
        ds.api_version = Some(API_VERSION.into());
        ds.kind = Some("DataSource".into());
        ds.status = None;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.sources.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::DataSource.resource(), name });
        }
        st.sources.insert(key.clone(), ds);
        self.update_source_status_locked(&mut st, &key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &key) {
            st.sources.remove(&key);
            return Err(e);
        }
        let out = st.sources.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataSource.resource(), name })
    }

    /// Creates a DataImportCron in `namespace`; its first import starts at once.
    pub fn create_data_import_cron(
        &self,
        namespace: &str,
        mut cron: DataImportCron,
    ) -> Result<DataImportCron, CdiError> {
        let name = prepare_meta(&mut cron.metadata, namespace)?;
        check(&cron)?;
        cron.api_version = Some(API_VERSION.into());
        cron.kind = Some("DataImportCron".into());
        cron.status = None;
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        if st.crons.contains_key(&key) {
            return Err(CdiError::AlreadyExists { resource: CdiKind::DataImportCron.resource(), name });
        }
        if st.cron_workers.contains_key(&key) {
            return Err(CdiError::Conflict(format!(
                "DataImportCron {key} was deleted and its import is still running; try again shortly"
            )));
        }
        st.crons.insert(key.clone(), cron);
        st.cron_next.remove(&key);
        st.cron_failures.remove(&key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, &key) {
            st.crons.remove(&key);
            return Err(e);
        }
        let out = st.crons.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or(CdiError::NotFound { resource: CdiKind::DataImportCron.resource(), name })
    }

    /// Replaces a DataImportCron's labels and annotations, e.g. the per-boot-source switch of
    /// automatic updates ([`ANN_AUTO_UPDATE`]); the spec cannot change on this node (delete and
    /// create again). A stale `resourceVersion` is a conflict.
    pub fn replace_data_import_cron(
        &self,
        namespace: &str,
        cron: DataImportCron,
    ) -> Result<DataImportCron, CdiError> {
        let name = cron.metadata.name.clone().unwrap_or_default();
        let key = Key::new(namespace, &name);
        let mut st = lock(&self.state);
        let not_found =
            || CdiError::NotFound { resource: CdiKind::DataImportCron.resource(), name: name.clone() };
        let cur = st.crons.get(&key).cloned().ok_or_else(not_found)?;
        if let Some(rv) = cron.metadata.resource_version.as_ref() {
            if cur.metadata.resource_version.as_ref() != Some(rv) {
                return Err(CdiError::Conflict(format!(
                    "Operation cannot be fulfilled on dataimportcrons.cdi.kubevirt.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
                )));
            }
        }
        if cron.spec != cur.spec {
            return Err(CdiError::Invalid(virt_core::api::Invalid {
                object: Some(format!("DataImportCron {key}")),
                causes: vec![StatusCause::forbidden(
                    "spec",
                    &format!(
                        "the spec cannot change on this node; only metadata.labels and metadata.annotations (e.g. {ANN_AUTO_UPDATE})"
                    ),
                )],
            }));
        }
        let mut next = cur.clone();
        next.metadata.labels = cron.metadata.labels;
        next.metadata.annotations = cron.metadata.annotations;
        st.crons.insert(key.clone(), next);
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, &key) {
            st.crons.insert(key, cur);
            return Err(e);
        }
        // Switched back on: poll now rather than at the next tick of a schedule.
        st.cron_next.remove(&key);
        let out = st.crons.get(&key).cloned();
        drop(st);
        self.wake();
        out.ok_or_else(not_found)
    }

    /// One object as JSON.
    pub fn get(&self, kind: CdiKind, namespace: &str, name: &str) -> Result<Value, CdiError> {
        let key = Key::new(namespace, name);
        let st = lock(&self.state);
        let v = match kind {
            CdiKind::DataVolume => st.dvs.get(&key).map(to_value),
            CdiKind::DataSource => st.sources.get(&key).map(to_value),
            CdiKind::DataImportCron => st.crons.get(&key).map(to_value),
            CdiKind::VolumeSnapshot => st.snapshots.get(&key).map(to_value),
        };
        v.ok_or_else(|| CdiError::NotFound { resource: kind.resource(), name: name.into() })
    }

    /// One DataVolume.
    pub fn data_volume(&self, namespace: &str, name: &str) -> Option<DataVolume> {
        lock(&self.state).dvs.get(&Key::new(namespace, name)).cloned()
    }

    /// The objects of a kind in `namespace`, or in all namespaces, as JSON.
    pub fn list(&self, kind: CdiKind, namespace: Option<&str>) -> Vec<Value> {
        let st = lock(&self.state);
        let keep = |k: &Key| namespace.is_none_or(|n| n == k.namespace);
        match kind {
            CdiKind::DataVolume => st.dvs.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect(),
            CdiKind::DataSource => {
                st.sources.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
            CdiKind::DataImportCron => {
                st.crons.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
            CdiKind::VolumeSnapshot => {
                st.snapshots.iter().filter(|(k, _)| keep(k)).map(|(_, o)| to_value(o)).collect()
            }
        }
    }

    /// The objects of `kind` in `namespace` (or all) whose labels `selector` selects.
    pub fn list_selected(
        &self,
        kind: CdiKind,
        namespace: Option<&str>,
        selector: &LabelSelector,
    ) -> Vec<Value> {
        self.list(kind, namespace).into_iter().filter(|o| selector.matches_object(o)).collect()
    }

    /// Deletes an object. A DataVolume's volume goes with it (refused while other volumes are
    /// overlays on it); an import under way is abandoned and its volume removed when it ends. A
    /// DataImportCron with `retentionPolicy: None` takes its DataSource and imports along.
    pub fn delete(&self, kind: CdiKind, namespace: &str, name: &str) -> Result<(), CdiError> {
        let key = Key::new(namespace, name);
        let not_found = || CdiError::NotFound { resource: kind.resource(), name: name.into() };
        match kind {
            CdiKind::DataVolume => {
                let working = {
                    let st = lock(&self.state);
                    if !st.dvs.contains_key(&key) {
                        return Err(not_found());
                    }
                    st.dv_workers.contains_key(&key)
                };
                if !working {
                    self.delete_volume(&key)?;
                }
                let mut st = lock(&self.state);
                if st.dvs.remove(&key).is_none() {
                    return Err(not_found());
                }
                st.dv_next.remove(&key);
                st.dv_failures.remove(&key);
                self.persist(&mut st, CdiKind::DataVolume, &key)?;
                log::info!("DataVolume {key} deleted");
            }
            CdiKind::DataSource => {
                let mut st = lock(&self.state);
                st.sources.remove(&key).ok_or_else(not_found)?;
                self.persist(&mut st, CdiKind::DataSource, &key)?;
            }
            CdiKind::VolumeSnapshot => {
                let mut st = lock(&self.state);
                let vs = st.snapshots.get(&key).ok_or_else(not_found)?;
                if st.snap_workers.contains_key(&key) {
                    return Err(CdiError::Conflict(format!(
                        "VolumeSnapshot {key} is being taken; try again shortly"
                    )));
                }
                if let Some(claim) = vs.claim() {
                    match self.pool.delete_snapshot(&VolumeId::new(namespace, claim), name) {
                        Ok(()) | Err(VolumeError::NotFound(_) | VolumeError::InvalidName(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                st.snapshots.remove(&key);
                st.snap_next.remove(&key);
                self.persist(&mut st, CdiKind::VolumeSnapshot, &key)?;
                log::info!("VolumeSnapshot {key} deleted");
            }
            CdiKind::DataImportCron => {
                let mut st = lock(&self.state);
                let cron = st.crons.remove(&key).ok_or_else(not_found)?;
                st.cron_next.remove(&key);
                st.cron_failures.remove(&key);
                self.persist(&mut st, CdiKind::DataImportCron, &key)?;
                if cron.spec.retention_policy == Some(RetentionPolicy::None) {
                    let ds = Key::new(namespace, &cron.spec.managed_data_source);
                    if st.sources.remove(&ds).is_some() {
                        self.persist(&mut st, CdiKind::DataSource, &ds)?;
                    }
                    let imports: Vec<Key> = st
                        .dvs
                        .iter()
                        .filter(|(k, dv)| {
                            k.namespace == namespace
                                && dv.metadata.labels.get(LABEL_CRON).map(String::as_str) == Some(name)
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    drop(st);
                    for k in imports {
                        if let Err(e) = self.delete(CdiKind::DataVolume, &k.namespace, &k.name) {
                            log::warn!("DataImportCron {key} (retentionPolicy None): {e}");
                        }
                    }
                }
            }
        }
        self.wake();
        Ok(())
    }

    pub(super) fn delete_volume(&self, key: &Key) -> Result<(), CdiError> {
        let id = VolumeId::new(&key.namespace, &key.name);
        match self.pool.delete(&id) {
            Ok(()) => Ok(()),
            Err(VolumeError::NotFound(_) | VolumeError::InvalidName(_)) => Ok(()),
            Err(VolumeError::InUse { id, users }) => Err(CdiError::Conflict(format!(
                "DataVolume {key} cannot be deleted: its volume {id} backs {users} (copy-on-write clones); \
                 delete those first"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The StorageProfile of the node's pool: how it clones, as CDI says it.
    pub fn storage_profile(&self) -> StorageProfile {
        let p = self.pool.profile();
        let strategy = match p.clone_strategies.first() {
            Some(CloneStrategy::Reflink) => CdiCloneStrategy::CsiClone,
            Some(CloneStrategy::Overlay) => CdiCloneStrategy::Snapshot,
            _ => CdiCloneStrategy::Copy,
        };
        let mut meta = ObjectMeta::named(STORAGE_CLASS);
        let order: Vec<String> = p.clone_strategies.iter().map(ToString::to_string).collect();
        meta.annotations.insert("virt-rs.io/clone-strategies".into(), order.join(","));
        meta.annotations.insert(
            "virt-rs.io/reflink".into(),
            match &p.reflink {
                Ok(()) => "supported".into(),
                Err(why) => why.to_string(),
            },
        );
        StorageProfile {
            api_version: Some(API_VERSION.into()),
            kind: Some("StorageProfile".into()),
            metadata: meta,
            spec: StorageProfileSpec::default(),
            status: Some(StorageProfileStatus {
                storage_class: Some(STORAGE_CLASS.into()),
                provisioner: Some(PROVISIONER.into()),
                clone_strategy: Some(strategy),
                claim_property_sets: vec![ClaimPropertySet {
                    access_modes: vec![AccessMode::ReadWriteOnce],
                    volume_mode: VolumeMode::Filesystem,
                }],
                data_import_cron_source_format: Some(SourceFormat::Pvc),
                snapshot_class: None,
            }),
        }
    }
}
