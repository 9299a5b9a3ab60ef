//! CDI's importer pod on the cluster: the pod a DataVolume's controller runs to fill the
//! DataVolume's claim ([`importer_pod`], pure), and what runs inside it ([`import_into`], the
//! `virt-importer` binary of the importer image, scripts/k8s/importer-image.sh).
//!
//! Inside the pod the claim is mounted at [`DATA_DIR`]; the import is the local node's own
//! (`virt_storage::datavolume::reconcile_data_volume`: http with resume, checksum,
//! decompression and conversion to raw; registry; blank), run into a one-directory pool on the
//! claim and renamed to `disk.img` once complete, so a half-written image never shows as the
//! disk. The importer prints `progress: NN.NN%` lines (the controller reads the pod's log for
//! the DataVolume's `status.progress`) and on failure writes its message to the container's
//! termination message (`/dev/termination-log`), which the controller copies into the
//! DataVolume's conditions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use virt_storage::cdi::{DataSource, DataVolume};
use virt_storage::datavolume::{reconcile_data_volume, DvEnv, DvRun, ObjectLookup};
use virt_storage::golden::StorageClasses;
use virt_storage::volume::{DirPool, VolumeId, VolumeProvider};

use super::kinds::Cr;
use super::storage::DISK_IMG;

/// Where the importer pod mounts the claim it fills.
pub const DATA_DIR: &str = "/data";
/// The environment variable holding the DataVolume (JSON: name, namespace, spec).
pub const DV_ENV: &str = "VIRT_DATA_VOLUME";
/// Label on importer pods (CDI's `app`).
pub const APP_LABEL_VALUE: &str = "containerized-data-importer";
/// Label on importer pods: the DataVolume's name.
pub const DV_LABEL: &str = "cdi.kubevirt.io/dataVolume";
/// The prefix of the importer's progress lines.
pub const PROGRESS_PREFIX: &str = "progress: ";
/// The importer's scratch pool on the claim (removed after the import).
const SCRATCH: &str = ".virt-import";

/// How importer pods are made.
#[derive(Debug, Clone)]
pub struct ImporterConfig {
    /// The importer's image (imported into the nodes' containerd; never pulled).
    pub image: String,
    /// Registries importers reach over plain HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
}

/// Errors of the importer.
#[derive(Debug, thiserror::Error)]
pub enum ImporterError {
    /// The DataVolume handed to the importer does not parse.
    #[error("{DV_ENV}: not a DataVolume: {0}")]
    Parse(#[from] serde_json::Error),
    /// The scratch pool or the final rename failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pool's volume could not be found after an import it reported done.
    #[error("the import of {id} finished but its file is missing: {why}")]
    Lost {
        /// The volume.
        id: String,
        /// Why.
        why: String,
    },
    /// The import failed: CDI's reason is in the message.
    #[error("{0}")]
    Failed(String),
    /// The source waits for something the importer pod cannot get (an upload, a DataSource).
    #[error("not supported by the cluster's importer: {0}")]
    Unsupported(String),
}

/// The importer pod of `dv`: owned by it, mounting its claim (named as the DataVolume) at
/// [`DATA_DIR`], with the DataVolume in [`DV_ENV`]; never restarted (a failure is final: the
/// DataVolume is `Failed` with the importer's message).
pub fn importer_pod(dv: &Cr<DataVolume>, cfg: &ImporterConfig) -> Pod {
    let name = dv.meta.name.clone().unwrap_or_default();
    let handed = serde_json::json!({
        "metadata": { "name": name, "namespace": dv.meta.namespace },
        "spec": dv.obj.spec,
    });
    let mut args = vec!["--data-dir".to_string(), DATA_DIR.to_string()];
    for r in &cfg.insecure_registries {
        args.push("--insecure-registry".into());
        args.push(r.clone());
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(&name)),
            namespace: dv.meta.namespace.clone(),
            labels: Some(BTreeMap::from([
                ("app".to_string(), APP_LABEL_VALUE.to_string()),
                ("cdi.kubevirt.io".to_string(), "importer".to_string()),
                (DV_LABEL.to_string(), name.clone()),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: Cr::<DataVolume>::api_version(),
                kind: "DataVolume".into(),
                name: name.clone(),
                uid: dv.meta.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            priority_class_name: dv.obj.spec.priority_class_name.clone(),
            containers: vec![Container {
                name: "importer".into(),
                image: Some(cfg.image.clone()),
                image_pull_policy: Some("Never".into()),
                args: Some(args),
                env: Some(vec![
                    EnvVar {
                        name: DV_ENV.into(),
                        value: serde_json::to_string(&handed).ok(),
                        ..Default::default()
                    },
                    EnvVar { name: "RUST_LOG".into(), value: Some("info".into()), ..Default::default() },
                ]),
                volume_mounts: Some(vec![VolumeMount {
                    name: "cdi-data-vol".into(),
                    mount_path: DATA_DIR.into(),
                    ..Default::default()
                }]),
                termination_message_policy: Some("FallbackToLogsOnError".into()),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "cdi-data-vol".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: name,
                    read_only: Some(false),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The importer pod's name for DataVolume `dv` (CDI's `importer-<claim>`; the claim is named as
/// the DataVolume).
pub fn pod_name(dv: &str) -> String {
    format!("importer-{dv}")
}

/// The last progress an importer's log reports (`"45.20%"`), if any.
pub fn last_progress(log: &str) -> Option<String> {
    log.lines().rev().find_map(|l| l.trim().strip_prefix(PROGRESS_PREFIX)).map(|p| p.trim().to_string())
}

/// Named objects the importer pod cannot read (it has no API access): Secrets, ConfigMaps and
/// DataSources are all missing, so a source naming one fails saying which.
struct NoObjects;

impl ObjectLookup for NoObjects {
    fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        None
    }
    fn config_map(&self, _: &str, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }
    fn data_source(&self, _: &str, _: &str) -> Option<DataSource> {
        None
    }
}

/// Fills `data_dir/disk.img` from the source of the DataVolume `dv_json` (the importer pod's
/// entry point). `progress` gets CDI's progress strings as bytes arrive. Returns what it did.
/// A `disk.img` already there is kept (an importer that ran before succeeded).
pub fn import_into(
    dv_json: &str,
    data_dir: &Path,
    insecure_registries: Vec<String>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ImporterError> {
    let mut dv: DataVolume = serde_json::from_str(dv_json)?;
    let disk = data_dir.join(DISK_IMG);
    if disk.is_file() {
        return Ok(format!("{} is already there", disk.display()));
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImporterError::Io { what, path, source }
    };
    let scratch = data_dir.join(SCRATCH);
    let pool = DirPool::new(&scratch).map_err(io("creating the scratch pool", &scratch))?;
    // One pool: whatever class the DataVolume names is this claim.
    if let Some(s) = dv.spec.storage.as_mut() {
        s.storage_class_name = None;
    }
    if let Some(p) = dv.spec.pvc.as_mut() {
        p.storage_class_name = None;
    }
    let classes = StorageClasses {
        classes: BTreeMap::from([("claim".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "claim".into(),
    };
    let env = DvEnv { classes: &classes, objects: &NoObjects, insecure_registries, net_policy: None };
    let mut last = String::new();
    let run = reconcile_data_volume(&mut dv, &env, &mut |st| {
        if let Some(p) = &st.progress {
            if p.0 != last {
                last = p.0.clone();
                progress(&last);
            }
        }
    });
    match run {
        DvRun::Populated | DvRun::AlreadyDone => {}
        DvRun::Failed(why) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ImporterError::Failed(why));
        }
        DvRun::Waiting(why) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ImporterError::Unsupported(why));
        }
    }
    let ns = dv.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = dv.metadata.name.clone().unwrap_or_default();
    let id = VolumeId::new(&ns, &name);
    let vol = match pool.get(&id) {
        Ok(Some(v)) => v,
        Ok(None) => return Err(ImporterError::Lost { id: id.to_string(), why: "no volume".into() }),
        Err(e) => return Err(ImporterError::Lost { id: id.to_string(), why: e.to_string() }),
    };
    std::fs::rename(&vol.path, &disk).map_err(io("moving the import to", &disk))?;
    let _ = std::fs::remove_dir_all(&scratch);
    progress("100.0%");
    Ok(format!("wrote {} ({} bytes, {:?})", disk.display(), vol.size, vol.format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dv() -> Cr<DataVolume> {
        serde_json::from_value(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
            "metadata": { "name": "disk", "namespace": "ns", "uid": "dv-1" },
            "spec": { "source": { "blank": {} }, "storage": { "resources": { "requests": { "storage": "1Mi" } } } }
        }))
        .unwrap()
    }

    #[test]
    fn the_importer_pod_mounts_the_claim_and_is_owned_by_the_data_volume() {
        let cfg = ImporterConfig { image: "localhost/virt-importer:dev".into(), insecure_registries: vec![] };
        let pod = importer_pod(&dv(), &cfg);
        assert_eq!(pod.metadata.name.as_deref(), Some("importer-disk"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("DataVolume", "dv-1"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        let vol = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(vol.persistent_volume_claim.as_ref().unwrap().claim_name, "disk");
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        let handed: serde_json::Value = serde_json::from_str(env.value.as_deref().unwrap()).unwrap();
        assert_eq!(handed["spec"]["source"], json!({ "blank": {} }));
    }

    #[test]
    fn a_blank_import_leaves_a_sized_disk_img_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::to_string(&json!({
            "metadata": { "name": "disk", "namespace": "ns" },
            "spec": { "source": { "blank": {} }, "storage": { "storageClassName": "virt-rs-local",
                      "resources": { "requests": { "storage": "1Mi" } } } }
        }))
        .unwrap();
        let mut seen = Vec::new();
        let out = import_into(&json, dir.path(), vec![], &mut |p| seen.push(p.to_string())).unwrap();
        assert!(out.contains("disk.img"), "{out}");
        assert_eq!(std::fs::metadata(dir.path().join("disk.img")).unwrap().len(), 1 << 20);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("disk.img")], "no scratch left");
        assert_eq!(seen.last().map(String::as_str), Some("100.0%"));
        assert_eq!(last_progress("x\nprogress: 12.50%\nprogress: 100.0%\ndone\n").as_deref(), Some("100.0%"));
        // A second run keeps what is there.
        let again = import_into(&json, dir.path(), vec![], &mut |_| {}).unwrap();
        assert!(again.contains("already there"), "{again}");
    }
}
