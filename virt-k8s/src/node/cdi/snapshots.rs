//! VolumeSnapshot workers: a pool snapshot of a populated claim, then the VolumeSnapshot's status.

use std::sync::Arc;
use std::time::Instant;

use virt_core::api::{Quantity, Timestamp};
use virt_core::lifecycle::Key;
use virt_storage::cdi::{DataVolumePhase, VolumeSnapshotError};
use virt_storage::volume::{VolumeId, VolumeProvider};

use super::{lock, phase_name, phase_of, Cdi, CdiKind, RECHECK};

/// Why a VolumeSnapshot is not ready (its `status.error.message`); each names the claim.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    /// The claim's DataVolume has not finished populating it.
    #[error("DataVolume {id} (spec.source.persistentVolumeClaimName) is not populated yet (phase {phase})")]
    NotPopulated {
        /// The claim's volume.
        id: VolumeId,
        /// The DataVolume's phase.
        phase: String,
    },
    /// No volume of that claim.
    #[error(
        "persistentvolumeclaims \"{claim}\" not found in namespace {namespace} \
         (spec.source.persistentVolumeClaimName)"
    )]
    NoClaim {
        /// The claim named.
        claim: String,
        /// The snapshot's namespace.
        namespace: String,
    },
    /// The pool failed reading or snapshotting the volume (the error names it).
    #[error(transparent)]
    Pool(#[from] virt_storage::volume::VolumeError),
}

impl Cdi {
    pub(super) fn start_snapshot_workers(self: &Arc<Self>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let due: Vec<(Key, String)> = st
            .snapshots
            .iter()
            .filter(|(k, vs)| {
                !vs.ready()
                    && !st.snap_workers.contains_key(*k)
                    && st.snap_next.get(*k).is_none_or(|t| *t <= now)
            })
            .map(|(k, vs)| (k.clone(), vs.metadata.uid.clone().unwrap_or_default()))
            .collect();
        for (key, uid) in due {
            st.snap_workers.insert(key.clone(), uid.clone());
            let me = self.clone();
            let k = key.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("snap {}", key.name))
                .spawn(move || me.take_snapshot(k, uid));
            if let Err(e) = spawned {
                log::error!("VolumeSnapshot {key}: starting a worker: {e}");
                st.snap_workers.remove(&key);
                st.snap_next.insert(key, now + RECHECK);
            }
        }
    }

    /// A worker: takes the pool snapshot of VolumeSnapshot `key` (uid `uid`).
    pub(super) fn take_snapshot(self: Arc<Self>, key: Key, uid: String) {
        let (claim, dv_phase) = {
            let st = lock(&self.state);
            let claim = st
                .snapshots
                .get(&key)
                .filter(|v| v.metadata.uid.as_deref() == Some(uid.as_str()))
                .and_then(|v| v.claim().map(str::to_string));
            let dv_phase =
                claim.as_ref().and_then(|c| st.dvs.get(&Key::new(&key.namespace, c))).map(phase_of);
            (claim, dv_phase)
        };
        let Some(claim) = claim else {
            lock(&self.state).snap_workers.remove(&key);
            return;
        };
        let id = VolumeId::new(&key.namespace, &claim);
        let taken = match dv_phase {
            Some(p) if p != Some(DataVolumePhase::Succeeded) => {
                Err(SnapshotError::NotPopulated { id: id.clone(), phase: phase_name(p) })
            }
            _ => match self.pool.get_snapshot(&id, &key.name) {
                // Taken before the node stopped.
                Ok(Some(v)) => Ok(v.size),
                Ok(None) => match self.pool.get(&id) {
                    Ok(None) => {
                        Err(SnapshotError::NoClaim { claim: claim.clone(), namespace: key.namespace.clone() })
                    }
                    Ok(Some(_)) => {
                        self.pool.snapshot(&id, &key.name).map(|o| o.volume.size).map_err(Into::into)
                    }
                    Err(e) => Err(e.into()),
                },
                Err(e) => Err(e.into()),
            },
        };
        self.snapshot_finished(&key, &uid, &id, taken);
    }

    pub(super) fn snapshot_finished(
        &self,
        key: &Key,
        uid: &str,
        id: &VolumeId,
        taken: Result<u64, SnapshotError>,
    ) {
        let mut st = lock(&self.state);
        st.snap_workers.remove(key);
        let Some(vs) = st.snapshots.get_mut(key).filter(|v| v.metadata.uid.as_deref() == Some(uid)) else {
            drop(st);
            // Deleted while it was being taken: what it made goes too.
            if taken.is_ok() {
                if let Err(e) = self.pool.delete_snapshot(id, &key.name) {
                    log::warn!("VolumeSnapshot {key} was deleted while it was taken: {e}");
                }
            }
            return;
        };
        let before = vs.status.clone();
        let status = vs.status.get_or_insert_with(Default::default);
        let ready = match taken {
            Ok(size) => {
                status.ready_to_use = Some(true);
                status.restore_size = Some(Quantity::from_bytes(size));
                status.creation_time = Some(Timestamp::now());
                status.error = None;
                log::info!("VolumeSnapshot {key}: snapshot of {id} taken ({size} bytes)");
                true
            }
            Err(e) => {
                let message = e.to_string();
                status.ready_to_use = Some(false);
                let same = status.error.as_ref().and_then(|e| e.message.as_deref()) == Some(message.as_str());
                if !same {
                    log::info!("VolumeSnapshot {key}: {message}");
                    status.error =
                        Some(VolumeSnapshotError { message: Some(message), time: Some(Timestamp::now()) });
                }
                false
            }
        };
        let changed = vs.status != before;
        if ready {
            st.snap_next.remove(key);
        } else {
            st.snap_next.insert(key.clone(), Instant::now() + RECHECK);
        }
        if changed {
            if let Err(e) = self.persist(&mut st, CdiKind::VolumeSnapshot, key) {
                log::error!("VolumeSnapshot {key}: {e}");
            }
        }
        drop(st);
        self.wake();
    }
}
