//! Storage on the cluster: PersistentVolumeClaims in filesystem mode hold the VM's disk as
//! `disk.img` in the volume's root, as KubeVirt's and CDI's do.
//!
//! Volumes come from a small provisioner of the project's own (the StorageClass
//! [`STORAGE_CLASS`], provisioner [`PROVISIONER`]): virt-controller gives each pending claim of
//! that class a `hostPath` PersistentVolume at `<dir>/<pv name>` on one node (node affinity on
//! `kubernetes.io/hostname`; the kubelet creates the directory when a pod first mounts it), with
//! the claim in its `claimRef`, and the controller-manager's PV binder binds the two. virt-handler
//! deletes the volumes of its node whose claim is gone (reclaim policy `Delete`): their directory,
//! then the PersistentVolume. The node agent finds a claim's `disk.img` on the host through the
//! PersistentVolume's `hostPath` (or `local`) path ([`claim_host_file`]); the launcher pod mounts
//! the claim at [`disk_mount_dir`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// The StorageClass of the project's provisioner (the cluster's default class once installed).
pub const STORAGE_CLASS: &str = "virt-rs-local";
/// The provisioner's name (the StorageClass's `provisioner`, the PVs' `pv.kubernetes.io/provisioned-by`).
pub const PROVISIONER: &str = "virt-rs.io/local-hostpath";
/// Annotation on a provisioned PersistentVolume: who made it.
pub const ANN_PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// Annotation a scheduler sets on a claim of a `WaitForFirstConsumer` class: the node to put it on.
pub const ANN_SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
/// Label on a provisioned PersistentVolume: the node holding its directory.
pub const NODE_LABEL: &str = "virt-rs.io/node";
/// The disk image's name in a filesystem-mode volume (KubeVirt's and CDI's).
pub const DISK_IMG: &str = "disk.img";
/// Where a launcher pod mounts its VMI's claims: `<dir>/<volume name>` (KubeVirt's path).
pub const VMI_DISKS_DIR: &str = "/var/run/kubevirt-private/vmi-disks";

/// Errors of the provisioner and of resolving a claim to its file.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// The request, with the object it was about.
        what: String,
        /// The client's or API server's error.
        #[source]
        source: kube::Error,
    },
    /// The claim does not exist.
    #[error("PersistentVolumeClaim {namespace}/{claim} does not exist")]
    ClaimNotFound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        claim: String,
    },
    /// The claim is not bound to a volume yet.
    #[error("PersistentVolumeClaim {namespace}/{claim} is {phase} (not bound to a volume yet)")]
    ClaimNotBound {
        /// Its namespace.
        namespace: String,
        /// Its name.
        claim: String,
        /// Its phase.
        phase: String,
    },
    /// The claim's volume has no host directory the node agent can reach.
    #[error(
        "PersistentVolume {pv} of claim {namespace}/{claim} is neither hostPath nor local: its disk.img cannot be found on the node"
    )]
    NotOnHost {
        /// Its namespace.
        namespace: String,
        /// The claim.
        claim: String,
        /// The volume.
        pv: String,
    },
    /// The claim uses block mode.
    #[error("PersistentVolumeClaim {namespace}/{claim}: volumeMode Block is not supported (filesystem mode with disk.img only)")]
    BlockMode {
        /// Its namespace.
        namespace: String,
        /// The claim.
        claim: String,
    },
    /// No node to put a volume on.
    #[error("no node to provision PersistentVolumeClaim {namespace}/{claim} on")]
    NoNode {
        /// Its namespace.
        namespace: String,
        /// The claim.
        claim: String,
    },
    /// Removing a released volume's directory failed.
    #[error("removing {}, the directory of PersistentVolume {pv}: {source}", path.display())]
    Remove {
        /// The volume.
        pv: String,
        /// Its directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn api(what: String) -> impl FnOnce(kube::Error) -> StorageError {
    move |source| StorageError::Api { what, source }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 404)
}

/// The StorageClass of the provisioner: `Immediate` binding, reclaim `Delete`, the cluster's
/// default class.
pub fn storage_class() -> StorageClass {
    StorageClass {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                "storageclass.kubernetes.io/is-default-class".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

/// Creates the StorageClass unless it exists.
pub async fn ensure_storage_class(client: &Client) -> Result<(), StorageError> {
    let classes: Api<StorageClass> = Api::all(client.clone());
    match classes.create(&PostParams::default(), &storage_class()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(r)) if r.code == 409 => Ok(()),
        Err(e) => {
            Err(StorageError::Api { what: format!("creating StorageClass {STORAGE_CLASS}"), source: e })
        }
    }
}

/// The PersistentVolume name of a claim (`pvc-<uid>`, as external provisioners name theirs).
pub fn pv_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The hostPath PersistentVolume for `pvc` on `node`, its directory under `dir` (pure).
pub fn volume_for(pvc: &PersistentVolumeClaim, node: &str, dir: &Path) -> PersistentVolume {
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let name = pv_name(&uid);
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let modes = spec.access_modes.filter(|m| !m.is_empty()).unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let path = dir.join(&name);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "annotations": { ANN_PROVISIONED_BY: PROVISIONER },
            "labels": { NODE_LABEL: node },
        },
        "spec": {
            "capacity": { "storage": size },
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": STORAGE_CLASS,
            "volumeMode": "Filesystem",
            "hostPath": { "path": path, "type": "DirectoryOrCreate" },
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid,
            },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [ { "matchExpressions": [
                { "key": "kubernetes.io/hostname", "operator": "In", "values": [node] }
            ] } ] } },
        },
    }))
    .unwrap_or_default()
}

/// Whether the provisioner serves `pvc`: its class is [`STORAGE_CLASS`], it is not bound and
/// not being deleted.
pub fn wants_volume(pvc: &PersistentVolumeClaim) -> bool {
    let spec = pvc.spec.as_ref();
    pvc.metadata.deletion_timestamp.is_none()
        && spec.and_then(|s| s.storage_class_name.as_deref()) == Some(STORAGE_CLASS)
        && spec.and_then(|s| s.volume_name.as_deref()).is_none_or(str::is_empty)
}

/// Provisions `pvc` if the provisioner serves it and it has no volume yet: a PersistentVolume on
/// the node the scheduler selected, else `node`, else the first node by name. Returns the new
/// volume's name.
pub async fn provision(
    client: &Client,
    pvc: &PersistentVolumeClaim,
    node: Option<&str>,
    dir: &Path,
) -> Result<Option<String>, StorageError> {
    if !wants_volume(pvc) {
        return Ok(None);
    }
    let ns = pvc.metadata.namespace.clone().unwrap_or_default();
    let claim = pvc.metadata.name.clone().unwrap_or_default();
    if pvc.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block") {
        return Err(StorageError::BlockMode { namespace: ns, claim });
    }
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let name = pv_name(pvc.metadata.uid.as_deref().unwrap_or_default());
    if pvs.get_opt(&name).await.map_err(api(format!("reading PersistentVolume {name}")))?.is_some() {
        return Ok(None);
    }
    let selected = pvc.metadata.annotations.as_ref().and_then(|a| a.get(ANN_SELECTED_NODE)).cloned();
    let node = match selected.or_else(|| node.map(str::to_string)) {
        Some(n) => n,
        None => {
            let nodes: Api<Node> = Api::all(client.clone());
            let mut names: Vec<String> = nodes
                .list(&ListParams::default())
                .await
                .map_err(api("listing nodes".into()))?
                .items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect();
            names.sort();
            names
                .into_iter()
                .next()
                .ok_or(StorageError::NoNode { namespace: ns.clone(), claim: claim.clone() })?
        }
    };
    let pv = volume_for(pvc, &node, dir);
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(r)) if r.code == 409 => return Ok(None),
        Err(e) => {
            return Err(StorageError::Api { what: format!("creating PersistentVolume {name}"), source: e })
        }
    }
    log::info!(
        "PersistentVolumeClaim {ns}/{claim}: provisioned {name} on {node} at {}",
        dir.join(&name).display()
    );
    Ok(Some(name))
}

/// The host directory of a PersistentVolume (`hostPath` or `local`).
pub fn host_dir(pv: &PersistentVolume) -> Option<PathBuf> {
    let spec = pv.spec.as_ref()?;
    spec.host_path
        .as_ref()
        .map(|h| PathBuf::from(&h.path))
        .or_else(|| spec.local.as_ref().map(|l| PathBuf::from(&l.path)))
}

/// Claim `namespace/claim` and its phase (`Pending` when it has none yet); missing is an error.
async fn read_claim(
    client: &Client,
    namespace: &str,
    claim: &str,
) -> Result<(PersistentVolumeClaim, String), StorageError> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(api(format!("reading PersistentVolumeClaim {namespace}/{claim}")))?
        .ok_or_else(|| StorageError::ClaimNotFound { namespace: namespace.into(), claim: claim.into() })?;
    let phase = pvc.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    Ok((pvc, phase))
}

/// The claim `namespace/claim` resolved to its volume's `disk.img` on the node: the claim must be
/// bound, its volume a `hostPath` or `local` one.
pub async fn claim_host_file(client: &Client, namespace: &str, claim: &str) -> Result<PathBuf, StorageError> {
    let (pvc, phase) = read_claim(client, namespace, claim).await?;
    let volume = pvc.spec.as_ref().and_then(|s| s.volume_name.clone()).filter(|v| !v.is_empty());
    let Some(volume) = volume.filter(|_| phase == "Bound") else {
        return Err(StorageError::ClaimNotBound { namespace: namespace.into(), claim: claim.into(), phase });
    };
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let pv = pvs.get(&volume).await.map_err(api(format!("reading PersistentVolume {volume}")))?;
    let dir = host_dir(&pv).ok_or_else(|| StorageError::NotOnHost {
        namespace: namespace.into(),
        claim: claim.into(),
        pv: volume.clone(),
    })?;
    Ok(dir.join(DISK_IMG))
}

/// Whether claim `namespace/claim` is bound; `Err` says why not (missing, pending), for a VMI's
/// condition.
pub async fn claim_bound(client: &Client, namespace: &str, claim: &str) -> Result<(), StorageError> {
    let (_, phase) = read_claim(client, namespace, claim).await?;
    if phase == "Bound" {
        Ok(())
    } else {
        Err(StorageError::ClaimNotBound { namespace: namespace.into(), claim: claim.into(), phase })
    }
}

/// Where a launcher pod mounts the claim of VMI volume `volume`.
pub fn disk_mount_dir(volume: &str) -> String {
    format!("{VMI_DISKS_DIR}/{volume}")
}

/// Deletes the provisioner's volumes on `node` whose claim is gone (phase `Released` or
/// `Failed`, reclaim policy `Delete`): the directory (only below `dir`), then the
/// PersistentVolume. Returns the volumes deleted.
pub async fn reclaim_released(client: &Client, node: &str, dir: &Path) -> Result<Vec<String>, StorageError> {
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let list = pvs
        .list(&ListParams::default().labels(&format!("{NODE_LABEL}={node}")))
        .await
        .map_err(api(format!("listing the PersistentVolumes of node {node}")))?;
    let mut deleted = Vec::new();
    for pv in list.items {
        let name = pv.metadata.name.clone().unwrap_or_default();
        let ours =
            pv.metadata.annotations.as_ref().and_then(|a| a.get(ANN_PROVISIONED_BY)).map(String::as_str)
                == Some(PROVISIONER);
        let phase = pv.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("");
        let delete =
            pv.spec.as_ref().and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Delete");
        if !ours || !delete || !matches!(phase, "Released" | "Failed") {
            continue;
        }
        if let Some(path) = host_dir(&pv).filter(|p| p.starts_with(dir) && p != dir) {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::Remove { pv: name, path, source }),
            }
        }
        match pvs.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(StorageError::Api {
                    what: format!("deleting PersistentVolume {name}"),
                    source: e,
                })
            }
        }
        log::info!("PersistentVolume {name}: its claim is gone; deleted it and its directory");
        deleted.push(name);
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_claim_of_the_class_gets_a_host_path_volume_bound_to_it() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
            "metadata": { "name": "disk", "namespace": "ns", "uid": "u-1" },
            "spec": { "storageClassName": STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                      "resources": { "requests": { "storage": "64Mi" } } }
        }))
        .unwrap();
        assert!(wants_volume(&pvc));
        let pv = volume_for(&pvc, "node-a", Path::new("/var/lib/vols"));
        assert_eq!(pv.metadata.name.as_deref(), Some("pvc-u-1"));
        let spec = pv.spec.as_ref().unwrap();
        assert_eq!(spec.capacity.as_ref().unwrap()["storage"].0, "64Mi");
        assert_eq!(host_dir(&pv).unwrap(), Path::new("/var/lib/vols/pvc-u-1"));
        let claim = spec.claim_ref.as_ref().unwrap();
        assert_eq!((claim.name.as_deref(), claim.uid.as_deref()), (Some("disk"), Some("u-1")));
        let terms = &spec.node_affinity.as_ref().unwrap().required.as_ref().unwrap().node_selector_terms;
        assert_eq!(
            terms[0].match_expressions.as_ref().unwrap()[0].values.as_deref(),
            Some(&["node-a".to_string()][..])
        );
        let mut other = pvc.clone();
        other.spec.as_mut().unwrap().storage_class_name = Some("fast".into());
        assert!(!wants_volume(&other), "another class");
        let mut bound = pvc;
        bound.spec.as_mut().unwrap().volume_name = Some("pv-x".into());
        assert!(!wants_volume(&bound), "already bound");
    }
}
