//! The CDI controller's passes: VMs' template DataVolumes and the DataVolume workers that
//! populate volumes.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virt_core::lifecycle::{ChangeType, Key, Lifecycle, Store, WatchEvent};
use virt_storage::cdi::{DataVolume, DataVolumePhase, DataVolumeStatus};
use virt_storage::datavolume::{reconcile_data_volume, DvEnv, DvRun};
use virt_storage::golden::StorageClasses;
use virt_storage::volume::{VolumeId, VolumeProvider};

use super::{
    backoff, dv_from_template, fail_dv, is_upload, lock, phase_of, retryable, Cdi, CdiError, CdiKind, Lookup,
    TemplatesSeen, MAX_WORKERS, RECHECK, STORAGE_CLASS, TICK,
};

/// How often the template pass looks at every VM, whatever the change log says.
const TEMPLATE_RESYNC: Duration = Duration::from_secs(30);

impl Cdi {
    /// Runs the controller until `stop` is set: creates VMs' template DataVolumes, populates
    /// DataVolumes and runs DataImportCrons in worker threads, keeps DataSources' status.
    pub fn run(self: &Arc<Self>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            self.pass();
            let st = lock(&self.state);
            let _unused = self.wake.wait_timeout(st, TICK);
        }
    }

    /// One pass of the controller.
    pub fn pass(self: &Arc<Self>) {
        if let Some(lc) = self.lifecycle.get() {
            self.sync_templates(lc);
        }
        self.start_dv_workers();
        self.start_snapshot_workers();
        self.start_cron_workers();
        let mut st = lock(&self.state);
        let keys: Vec<Key> = st.sources.keys().cloned().collect();
        for key in keys {
            if self.update_source_status_locked(&mut st, &key) {
                if let Err(e) = self.persist(&mut st, CdiKind::DataSource, &key) {
                    log::error!("DataSource {key}: {e}");
                }
            }
        }
    }

    /// Which VMs' templates the next template pass looks at: those the store's change log shows
    /// changed (a VM written or deleted, a VM's template DataVolume deleted) since the last pass,
    /// or every VM (`None`) on the first pass, every [`TEMPLATE_RESYNC`], and when the log no
    /// longer holds the changes since the last pass.
    fn template_scope(&self) -> Option<BTreeSet<Key>> {
        let log = self.store.changes().clone();
        let mut st = lock(&self.state);
        let last = log.last();
        let seen = st.templates_seen.as_ref().filter(|s| s.full_at.elapsed() < TEMPLATE_RESYNC);
        let Some(from) = seen.map(|s| s.resource_version) else {
            st.templates_seen = Some(TemplatesSeen { resource_version: last, full_at: Instant::now() });
            return None;
        };
        drop(st);
        let mut keys = BTreeSet::new();
        let mut upto = from;
        let complete = match log.watch(from) {
            Err(_) => false,
            Ok(mut w) => loop {
                match w.next(Duration::ZERO) {
                    Ok(WatchEvent::Change(c)) => {
                        upto = c.resource_version;
                        if c.kind == "VirtualMachine" {
                            keys.insert(c.key);
                        } else if c.kind == CdiKind::DataVolume.name() && c.type_ == ChangeType::Deleted {
                            keys.extend(template_owner(&c.key.namespace, &c.value()));
                        }
                    }
                    Ok(WatchEvent::Bookmark(rv)) => {
                        upto = upto.max(rv);
                        break true;
                    }
                    Err(_) => break false,
                }
            },
        };
        let mut st = lock(&self.state);
        if !complete {
            st.templates_seen = Some(TemplatesSeen { resource_version: last, full_at: Instant::now() });
            return None;
        }
        if let Some(s) = st.templates_seen.as_mut() {
            s.resource_version = upto;
        }
        keys.append(&mut st.templates_retry);
        Some(keys)
    }

    /// Creates the DataVolumes of VMs' `dataVolumeTemplates` that do not exist; deletes the
    /// DataVolumes whose owning VM is gone. Looks at the VMs that changed since the last pass
    /// ([`Cdi::template_scope`]), not at every VM on every pass.
    pub(super) fn sync_templates(&self, lc: &Lifecycle) {
        let scope = self.template_scope();
        let vms = match &scope {
            None => lc.vms().list(None),
            Some(keys) => keys.iter().filter_map(|k| lc.vms().get(&k.namespace, &k.name).ok()).collect(),
        };
        let in_scope = |ns: &str, vm: &str| scope.as_ref().is_none_or(|s| s.contains(&Key::new(ns, vm)));
        let mut live: HashSet<(String, String, String)> = HashSet::new();
        let mut wanted: Vec<(Key, Key, Result<DataVolume, CdiError>)> = Vec::new();
        for vm in &vms {
            let (Some(ns), Some(name)) = (vm.metadata.namespace.clone(), vm.metadata.name.clone()) else {
                continue;
            };
            let uid = vm.metadata.uid.clone().unwrap_or_default();
            live.insert((ns.clone(), name.clone(), uid));
            if vm.metadata.deletion_timestamp.is_some() {
                continue;
            }
            for (i, t) in vm.spec.data_volume_templates.iter().enumerate() {
                let Some(dv_name) = t.metadata.name.clone() else { continue };
                wanted.push((Key::new(&ns, &name), Key::new(&ns, dv_name), dv_from_template(vm, i)));
            }
        }
        let mut gone: Vec<Key> = Vec::new();
        {
            let mut st = lock(&self.state);
            match &scope {
                None => st.template_errors.clear(),
                Some(_) => {
                    for (_, key, _) in &wanted {
                        st.template_errors.remove(key);
                    }
                }
            }
            for (vm, key, dv) in wanted {
                if st.dvs.contains_key(&key) {
                    continue;
                }
                match dv {
                    Ok(dv) => match self.insert_dv_locked(&mut st, &key, dv) {
                        Ok(()) => log::info!("DataVolume {key} created from its VM's dataVolumeTemplates"),
                        // The deleted one's import is still stopping: the next pass tries again
                        // (the change that brought the VM here is read already).
                        Err(CdiError::Conflict(_)) => {
                            st.templates_retry.insert(vm);
                        }
                        Err(e) => {
                            st.template_errors.insert(key, e.to_string());
                        }
                    },
                    Err(why) => {
                        st.template_errors.insert(key, why.to_string());
                    }
                }
            }
            for (key, dv) in &st.dvs {
                let owner = dv
                    .metadata
                    .owner_references
                    .iter()
                    .find(|o| o.kind == "VirtualMachine" && o.api_version.starts_with("kubevirt.io/"));
                if let Some(o) = owner.filter(|o| in_scope(&key.namespace, &o.name)) {
                    if !live.contains(&(key.namespace.clone(), o.name.clone(), o.uid.clone())) {
                        gone.push(key.clone());
                    }
                }
            }
        }
        for key in gone {
            match self.delete(CdiKind::DataVolume, &key.namespace, &key.name) {
                Ok(()) => log::info!("DataVolume {key} deleted with its VirtualMachine"),
                Err(CdiError::NotFound { .. }) => {}
                Err(e) => log::warn!("DataVolume {key} of a deleted VirtualMachine: {e}"),
            }
        }
    }

    pub(super) fn start_dv_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let candidates: Vec<(Key, String)> = st
            .dvs
            .iter()
            .filter(|(k, dv)| {
                let phase = phase_of(dv);
                !st.dv_workers.contains_key(*k)
                    && phase != Some(DataVolumePhase::Succeeded)
                    && (phase != Some(DataVolumePhase::Failed) || retryable(dv))
                    && st.dv_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, dv)| (k.clone(), dv.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in candidates {
            if st.dv_workers.len() >= MAX_WORKERS {
                break;
            }
            st.dv_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dv {}", key.name))
                .spawn(move || me.populate(k, uid));
            if let Err(e) = spawned {
                log::error!("DataVolume {key}: starting a worker: {e}");
                st.dv_workers.remove(&key);
                st.dv_next.insert(key, now + RECHECK);
            }
        }
    }

    /// A worker: one reconcile of DataVolume `key` (uid `uid`).
    pub(super) fn populate(self: Arc<Self>, key: Key, uid: String) {
        let Some(mut dv) = self.data_volume(&key.namespace, &key.name) else {
            self.dv_finished(&key, &uid, None, DvRun::Waiting(String::new()));
            return;
        };
        let pool: &dyn VolumeProvider = self.pool.as_ref();
        let mut classes = BTreeMap::from([(STORAGE_CLASS.to_string(), pool)]);
        // There is one pool: any class a DataVolume names is that pool.
        let named = dv
            .spec
            .storage
            .as_ref()
            .and_then(|s| s.storage_class_name.clone())
            .or_else(|| dv.spec.pvc.as_ref().and_then(|p| p.storage_class_name.clone()));
        if let Some(c) = named {
            classes.insert(c, pool);
        }
        let classes = StorageClasses { classes, default_class: STORAGE_CLASS.into() };
        let lookup = Lookup(&self);
        let env = DvEnv {
            classes: &classes,
            objects: &lookup,
            insecure_registries: self.insecure_registries.clone(),
            net_policy: lock(&self.net_policy).clone(),
        };
        let (me, k, u) = (self.clone(), key.clone(), uid.clone());
        let mut progress = move |st: &DataVolumeStatus| me.dv_progress(&k, &u, st);
        let run = reconcile_data_volume(&mut dv, &env, &mut progress);
        let run = match run {
            DvRun::AlreadyDone | DvRun::Populated => self.fit_size(&mut dv, run),
            other => other,
        };
        self.dv_finished(&key, &uid, Some(dv), run);
    }

    /// Grows a populated volume to the requested size (an upload, or a node that stopped between
    /// an import's end and its resize). An upload larger than the request fails.
    pub(super) fn fit_size(&self, dv: &mut DataVolume, run: DvRun) -> DvRun {
        let Some(want) = dv.spec.requested_size().map(|q| q.bytes().div_ceil(512) * 512) else { return run };
        let ns = dv.metadata.namespace.clone().unwrap_or_default();
        let name = dv.metadata.name.clone().unwrap_or_default();
        let id = VolumeId::new(&ns, &name);
        let have = match self.pool.get(&id) {
            Ok(Some(v)) => v.size,
            Ok(None) => return run,
            Err(e) => {
                let msg = e.to_string();
                fail_dv(dv, "StorageError", &msg);
                return DvRun::Failed(msg);
            }
        };
        if want > have {
            if let Err(e) = self.pool.resize(&id, want) {
                let msg = e.to_string();
                fail_dv(dv, "StorageError", &msg);
                return DvRun::Failed(msg);
            }
        } else if want < have && is_upload(dv) {
            let msg = format!(
                "the uploaded image is {have} bytes, larger than the {want} bytes DataVolume {ns}/{name} \
                 requests; upload again with a larger size"
            );
            if let Err(e) = self.pool.delete(&id) {
                log::warn!("deleting {id}: {e}");
            }
            fail_dv(dv, "UploadTooLarge", &msg);
            return DvRun::Failed(msg);
        }
        run
    }

    /// Progress from a worker: the status is updated at once, written to the store when the phase
    /// changes.
    pub(super) fn dv_progress(&self, key: &Key, uid: &str, status: &DataVolumeStatus) {
        let mut st = lock(&self.state);
        let Some(dv) = st.dvs.get_mut(key).filter(|d| d.metadata.uid.as_deref() == Some(uid)) else {
            return;
        };
        let before = phase_of(dv);
        dv.status = Some(status.clone());
        if before != status.phase {
            if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, key) {
                log::error!("DataVolume {key}: {e}");
            }
        }
    }

    pub(super) fn dv_finished(&self, key: &Key, uid: &str, dv: Option<DataVolume>, run: DvRun) {
        let mut st = lock(&self.state);
        st.dv_workers.remove(key);
        let current = st.dvs.get_mut(key).filter(|d| d.metadata.uid.as_deref() == Some(uid));
        match (current, dv) {
            (Some(cur), Some(dv)) => {
                let changed = cur.status != dv.status || cur.metadata.annotations != dv.metadata.annotations;
                cur.status = dv.status;
                cur.metadata.annotations = dv.metadata.annotations;
                match &run {
                    DvRun::Waiting(_) => {
                        st.dv_next.insert(key.clone(), Instant::now() + RECHECK);
                    }
                    DvRun::Failed(msg) => {
                        let n = st.dv_failures.entry(key.clone()).or_insert(0);
                        *n = n.saturating_add(1);
                        let delay = backoff(*n);
                        st.dv_next.insert(key.clone(), Instant::now() + delay);
                        log::warn!("DataVolume {key} failed: {msg}");
                    }
                    DvRun::AlreadyDone | DvRun::Populated => {
                        st.dv_failures.remove(key);
                        st.dv_next.remove(key);
                        if run == DvRun::Populated {
                            log::info!("DataVolume {key} populated");
                        }
                    }
                }
                if changed {
                    if let Err(e) = self.persist(&mut st, CdiKind::DataVolume, key) {
                        log::error!("DataVolume {key}: {e}");
                    }
                }
            }
            (Some(_), None) => {}
            (None, _) => {
                // Deleted while the worker ran: what it made goes too.
                drop(st);
                if let Err(e) = self.delete_volume(key) {
                    log::warn!("DataVolume {key} was deleted during its import: {e}");
                }
                return;
            }
        }
        drop(st);
        self.wake();
    }
}

/// The VM whose `dataVolumeTemplates` made the DataVolume `dv` (its owner reference), if any.
pub(super) fn template_owner(namespace: &str, dv: &serde_json::Value) -> Option<Key> {
    let refs = dv.pointer("/metadata/ownerReferences")?.as_array()?;
    refs.iter()
        .find(|o| {
            o.get("kind").and_then(|k| k.as_str()) == Some("VirtualMachine")
                && o.get("apiVersion").and_then(|a| a.as_str()).is_some_and(|a| a.starts_with("kubevirt.io/"))
        })
        .and_then(|o| o.get("name")?.as_str())
        .map(|name| Key::new(namespace, name))
}
