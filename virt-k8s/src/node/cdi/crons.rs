//! DataImportCron workers and the status of the DataSources they manage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use virt_core::api::ObjectMeta;
use virt_core::lifecycle::Key;
use virt_storage::cdi::{DataImportCron, DataSource, DataSourceSpec, DataVolumePhase, API_VERSION};
use virt_storage::golden::{reconcile_cron, StorageClasses};
use virt_storage::registry::{RegistryClient, RegistryConfig};
use virt_storage::volume::{VolumeId, VolumeProvider};

use super::{
    backoff, dv_condition, import_record, lock, phase_name, phase_of, prepare_meta, set_dv_condition,
    unix_now, Cdi, CdiKind, State, ANN_AUTO_UPDATE, CRON_CHECK, LABEL_CRON, STORAGE_CLASS,
};

/// Why a DataImportCron's run failed (logged, and retried with a backoff).
#[derive(Debug, thiserror::Error)]
pub(super) enum CronRunError {
    /// The registry client could not be made from the node's settings.
    #[error("registry client: {0}")]
    Client(#[source] virt_storage::registry::RegistryError),
    /// Polling the source or importing it failed (the error names the cron and image).
    #[error(transparent)]
    Run(#[from] virt_storage::golden::GoldenError),
}

impl Cdi {
    pub(super) fn start_cron_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let due: Vec<(Key, String)> = st
            .crons
            .iter()
            .filter(|(k, _)| {
                !st.cron_workers.contains_key(*k) && st.cron_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, c)| (k.clone(), c.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in due {
            st.cron_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("cron {}", key.name))
                .spawn(move || me.run_cron(k, uid));
            if let Err(e) = spawned {
                log::error!("DataImportCron {key}: starting a worker: {e}");
                st.cron_workers.remove(&key);
                st.cron_next.insert(key, now + CRON_CHECK);
            }
        }
    }

    /// A worker: one reconcile of DataImportCron `key`.
    pub(super) fn run_cron(self: Arc<Self>, key: Key, uid: String) {
        let (cron, ds) = {
            let st = lock(&self.state);
            let cron =
                st.crons.get(&key).filter(|c| c.metadata.uid.as_deref() == Some(uid.as_str())).cloned();
            let ds = cron.as_ref().and_then(|c| {
                st.sources.get(&Key::new(&key.namespace, &c.spec.managed_data_source)).cloned()
            });
            (cron, ds)
        };
        let Some(mut cron) = cron else {
            lock(&self.state).cron_workers.remove(&key);
            return;
        };
        let mut ds = ds.unwrap_or_else(|| {
            let mut meta = ObjectMeta::named(&cron.spec.managed_data_source);
            meta.namespace = Some(key.namespace.clone());
            meta.labels.insert(LABEL_CRON.into(), key.name.clone());
            DataSource {
                api_version: Some(API_VERSION.into()),
                kind: Some("DataSource".into()),
                metadata: meta,
                spec: DataSourceSpec::default(),
                status: None,
            }
        });
        let pool: &dyn VolumeProvider = self.pool.as_ref();
        let classes = StorageClasses {
            classes: BTreeMap::from([(STORAGE_CLASS.to_string(), pool)]),
            default_class: STORAGE_CLASS.into(),
        };
        let mut cfg =
            RegistryConfig { net_policy: lock(&self.net_policy).clone(), ..RegistryConfig::default() };
        for r in &self.insecure_registries {
            cfg = cfg.with_insecure_registry(r.clone());
        }
        let auto_update = cron.metadata.annotations.get(ANN_AUTO_UPDATE).map(String::as_str) != Some("false");
        let result = match RegistryClient::new(cfg) {
            Ok(client) => reconcile_cron(&mut cron, &mut ds, &classes, &client, auto_update, unix_now())
                .map_err(CronRunError::from),
            Err(e) => Err(CronRunError::Client(e)),
        };
        self.cron_finished(&key, &uid, cron, ds, result);
    }

    pub(super) fn cron_finished(
        &self,
        key: &Key,
        uid: &str,
        cron: DataImportCron,
        ds: DataSource,
        result: Result<virt_storage::golden::CronRun, CronRunError>,
    ) {
        let mut st = lock(&self.state);
        st.cron_workers.remove(key);
        let Some(cur) = st.crons.get_mut(key).filter(|c| c.metadata.uid.as_deref() == Some(uid)) else {
            return;
        };
        cur.status = cron.status.clone();
        if let Err(e) = self.persist(&mut st, CdiKind::DataImportCron, key) {
            log::error!("DataImportCron {key}: {e}");
        }
        // The managed DataSource: created on the first run, repointed by the cron.
        let ds_key = Key::new(&key.namespace, &cron.spec.managed_data_source);
        match st.sources.get_mut(&ds_key) {
            Some(existing) => {
                existing.spec = ds.spec;
                existing.status = ds.status;
            }
            None => {
                let mut ds = ds;
                let mut meta = std::mem::take(&mut ds.metadata);
                if prepare_meta(&mut meta, &key.namespace).is_ok() {
                    ds.metadata = meta;
                    st.sources.insert(ds_key.clone(), ds);
                }
            }
        }
        self.update_source_status_locked(&mut st, &ds_key);
        if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &ds_key) {
            log::error!("DataSource {ds_key}: {e}");
        }
        match result {
            Ok(run) => {
                st.cron_failures.remove(key);
                st.cron_next.insert(key.clone(), Instant::now() + CRON_CHECK);
                if let Some(id) = &run.imported {
                    log::info!(
                        "DataImportCron {key}: imported {} as {id}",
                        run.digest.as_deref().unwrap_or("the image")
                    );
                    let dv_key = Key::new(&id.namespace, &id.name);
                    if !st.dvs.contains_key(&dv_key) {
                        let dv = import_record(&cron, id);
                        if let Err(e) = self.insert_dv_locked(&mut st, &dv_key, dv) {
                            log::warn!("DataImportCron {key}: recording the import {id}: {e}");
                        }
                    }
                }
                for id in &run.deleted {
                    log::info!("DataImportCron {key}: deleted the outdated import {id}");
                    let dv_key = Key::new(&id.namespace, &id.name);
                    let ours = st.dvs.get(&dv_key).is_some_and(|d| {
                        d.metadata.labels.get(LABEL_CRON).map(String::as_str) == Some(key.name.as_str())
                    });
                    if ours {
                        st.dvs.remove(&dv_key);
                        if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, &dv_key) {
                            log::error!("DataVolume {dv_key}: {e}");
                        }
                    }
                }
                for (id, why) in &run.kept {
                    log::info!("DataImportCron {key}: outdated import {id} kept: {why}");
                }
            }
            Err(e) => {
                let n = st.cron_failures.entry(key.clone()).or_insert(0);
                *n = n.saturating_add(1);
                let delay = backoff(*n);
                st.cron_next.insert(key.clone(), Instant::now() + delay);
                log::warn!("DataImportCron {key}: {e} (next attempt in {delay:?})");
            }
        }
    }

    /// Recomputes a DataSource's `Ready` condition and resolved source; true if it changed.
    pub(super) fn update_source_status_locked(&self, st: &mut State, key: &Key) -> bool {
        let Some(ds) = st.sources.get(key) else { return false };
        let resolved = match &ds.spec.source.data_source {
            Some(r) => st.sources.get(&Key::new(&r.namespace, &r.name)).map(|d| d.spec.source.clone()),
            None => Some(ds.spec.source.clone()),
        };
        let (ready, reason, message) = match resolved.as_ref().and_then(|s| s.pvc.as_ref()) {
            None if ds.spec.source.snapshot.is_some() => {
                (false, "NotSupported", "snapshot sources are not supported on this node".to_string())
            }
            None => (false, "NoSource", "no source yet".to_string()),
            Some(p) => {
                let id = VolumeId::new(&p.namespace, &p.name);
                let dv = st.dvs.get(&Key::new(&p.namespace, &p.name));
                match self.pool.get(&id) {
                    Ok(Some(_)) if dv.is_none_or(|d| phase_of(d) == Some(DataVolumePhase::Succeeded)) => {
                        (true, "Ready", format!("points at {id}"))
                    }
                    Ok(_) => match dv {
                        Some(d) => (
                            false,
                            "NotReady",
                            format!("DataVolume {id} is in phase {}", phase_name(phase_of(d))),
                        ),
                        None => (false, "NotFound", format!("claim {id} not found")),
                    },
                    Err(e) => (false, "NotFound", e.to_string()),
                }
            }
        };
        let Some(ds) = st.sources.get_mut(key) else { return false };
        let status = ds.status.get_or_insert_with(Default::default);
        let before = status.clone();
        status.source = resolved;
        let c = dv_condition("Ready", ready, reason, &message);
        match status.conditions.iter_mut().find(|x| x.type_ == "Ready") {
            Some(old) if old.status == c.status && old.reason == c.reason && old.message == c.message => {}
            _ => set_dv_condition(&mut status.conditions, c),
        }
        *status != before
    }
}
