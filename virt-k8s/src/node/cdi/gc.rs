//! The DataVolumes VMs own (`ownerReferences`, made from their `dataVolumeTemplates`) as the
//! lifecycle's [`Dependents`]: counted, deleted and orphaned when a VM is deleted with a
//! propagation policy (virt-core's `lifecycle::gc`).

use virt_core::lifecycle::{Dependents, DependentsError};

use super::*;

fn owned_by(dv: &DataVolume, uid: &str) -> bool {
    dv.metadata.owner_references.iter().any(|o| o.uid == uid)
}

impl Cdi {
    fn owned_keys(&self, namespace: &str, uid: &str) -> Vec<Key> {
        lock(&self.state)
            .dvs
            .iter()
            .filter(|(k, dv)| k.namespace == namespace && owned_by(dv, uid))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl Dependents for Cdi {
    fn owned(&self, namespace: &str, owner_uid: &str) -> Result<usize, DependentsError> {
        Ok(self.owned_keys(namespace, owner_uid).len())
    }

    fn delete_owned(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError> {
        for key in self.owned_keys(namespace, owner_uid) {
            match self.delete(CdiKind::DataVolume, &key.namespace, &key.name) {
                Ok(()) => log::info!("DataVolume {key} deleted before its owner (foreground deletion)"),
                Err(CdiError::NotFound { .. }) => {}
                Err(e) => {
                    return Err(DependentsError {
                        what: "deleting",
                        owner: owner_uid.into(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Ok(())
    }

    fn orphan(&self, namespace: &str, owner_uid: &str) -> Result<(), DependentsError> {
        let mut st = lock(&self.state);
        let keys: Vec<Key> = st
            .dvs
            .iter()
            .filter(|(k, dv)| k.namespace == namespace && owned_by(dv, owner_uid))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(dv) = st.dvs.get_mut(&key) {
                dv.metadata.owner_references.retain(|o| o.uid != owner_uid);
            }
            self.persist(&mut st, CdiKind::DataVolume, &key).map_err(|e| DependentsError {
                what: "orphaning",
                owner: owner_uid.into(),
                message: e.to_string(),
            })?;
            log::info!("DataVolume {key} orphaned: its owner was deleted with propagationPolicy Orphan");
        }
        Ok(())
    }
}
