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
    Container, EnvVar, HostPathVolumeSource, PersistentVolumeClaimVolumeSource, Pod, PodSpec, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use virt_storage::cdi::{DataSource, DataVolume};
use virt_storage::datavolume::{reconcile_data_volume, DvEnv, DvRun, ObjectLookup};
use virt_storage::format::sparse::{clone_file, FileClone};
use virt_storage::golden::StorageClasses;
use virt_storage::volume::{DirPool, VolumeId, VolumeProvider};

use super::kinds::Cr;
use super::storage::DISK_IMG;

/// Where the importer pod mounts the claim it fills.
pub const DATA_DIR: &str = "/data";
/// Where a clone pod mounts the source claim's volume (read-only).
pub const SOURCE_DIR: &str = "/source";
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
    /// The source claim's volume holds no disk image.
    #[error("the source claim has no {DISK_IMG} (looked for {})", path.display())]
    NoSourceDisk {
        /// Where it looked.
        path: PathBuf,
    },
    /// Cloning the source's disk image failed.
    #[error("cloning {}: {source}", src.display())]
    Clone {
        /// The source's disk image.
        src: PathBuf,
        /// Why.
        #[source]
        source: virt_storage::format::FormatError,
    },
    /// The DataVolume asks for less than the source's image holds.
    #[error("the source image needs {have} bytes but the DataVolume requests only {want}")]
    TooSmall {
        /// The source image's size.
        have: u64,
        /// The requested size.
        want: u64,
    },
}

/// Where a clone pod reads the source claim's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneSource {
    /// The volume's directory on the node (a `hostPath` or `local` PersistentVolume: the local
    /// provisioner's), mounted read-only; the pod runs on `node`. Works across namespaces.
    HostDir {
        /// The directory.
        path: String,
        /// The node holding it.
        node: Option<String>,
    },
    /// The claim itself, mounted read-only (same namespace only: a pod mounts only its own
    /// namespace's claims).
    Claim(String),
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

/// The clone pod's name for DataVolume `dv`.
pub fn clone_pod_name(dv: &str) -> String {
    format!("cdi-clone-{dv}")
}

/// The pod that fills `dv`'s claim from the claim its `spec.source.pvc` names: the importer pod
/// (same image, owner, claim at [`DATA_DIR`]) with the source mounted read-only at
/// [`SOURCE_DIR`], `--clone-from`, and pinned to the source's node when the source is a node's
/// directory.
pub fn clone_pod(dv: &Cr<DataVolume>, cfg: &ImporterConfig, source: &CloneSource) -> Pod {
    let mut pod = importer_pod(dv, cfg);
    let name = dv.meta.name.clone().unwrap_or_default();
    pod.metadata.name = Some(clone_pod_name(&name));
    if let Some(l) = pod.metadata.labels.as_mut() {
        l.insert("cdi.kubevirt.io".into(), "cdi-clone".into());
    }
    let Some(spec) = pod.spec.as_mut() else { return pod };
    let (volume, node) = match source {
        CloneSource::HostDir { path, node } => (
            Volume {
                name: "cdi-source-vol".into(),
                host_path: Some(HostPathVolumeSource { path: path.clone(), type_: Some("Directory".into()) }),
                ..Default::default()
            },
            node.clone(),
        ),
        CloneSource::Claim(claim) => (
            Volume {
                name: "cdi-source-vol".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Default::default()
            },
            None,
        ),
    };
    spec.volumes.get_or_insert_with(Vec::new).push(volume);
    if let Some(node) = node {
        spec.node_selector = Some(BTreeMap::from([("kubernetes.io/hostname".to_string(), node)]));
    }
    if let Some(c) = spec.containers.first_mut() {
        c.name = "cdi-clone".into();
        c.args.get_or_insert_with(Vec::new).extend(["--clone-from".to_string(), SOURCE_DIR.to_string()]);
        c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
            name: "cdi-source-vol".into(),
            mount_path: SOURCE_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    pod
}

/// What a clone pod reports on success (its termination message): the strategy it used and why
/// a better one was not, as the DataVolume's `cdi.kubevirt.io/cloneType` and
/// `cdi.kubevirt.io/cloneFallbackReason` annotations.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloneReport {
    /// `reflink` (blocks shared: instant) or `host-assisted` (the data extents copied).
    pub clone_type: String,
    /// Why blocks were not shared, when they were not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clone_fallback_reason: Option<String>,
    /// What happened, for people.
    pub detail: String,
}

impl CloneReport {
    fn of(c: &FileClone) -> Self {
        let shared = c.kind.shares_blocks();
        Self {
            clone_type: if shared { "reflink" } else { "host-assisted" }.into(),
            clone_fallback_reason: (!shared)
                .then(|| c.reflink_error.clone())
                .flatten()
                .map(|e| format!("reflink: FICLONE: {e}")),
            detail: format!("{}: {} bytes, {} of them data", c.kind, c.size, c.data_bytes),
        }
    }
}

/// Fills `data_dir/disk.img` with a clone of `source_dir/disk.img` (the clone pod's entry point):
/// shared blocks where the file system can ([`clone_file`]), else a copy of the data extents,
/// written under a temporary name and renamed, then grown to the DataVolume's size (raw images;
/// a request below the image's size fails). A `disk.img` already there is kept.
pub fn clone_into(
    dv_json: &str,
    source_dir: &Path,
    data_dir: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<CloneReport, ImporterError> {
    let dv: DataVolume = serde_json::from_str(dv_json)?;
    let disk = data_dir.join(DISK_IMG);
    if disk.is_file() {
        return Ok(CloneReport {
            clone_type: "host-assisted".into(),
            clone_fallback_reason: None,
            detail: format!("{} is already there", disk.display()),
        });
    }
    let src = source_dir.join(DISK_IMG);
    if !src.is_file() {
        return Err(ImporterError::NoSourceDisk { path: src });
    }
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ImporterError::Io { what, path, source }
    };
    let tmp = data_dir.join(".disk.img.cloning");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the unfinished clone", &tmp)(e)),
    }
    progress("0.00%");
    let done = clone_file(&src, &tmp).map_err(|source| ImporterError::Clone { src: src.clone(), source })?;
    let raw = !is_qcow2(&tmp).map_err(io("reading", &tmp))?;
    if let Some(want) = dv.spec.requested_size().map(|q| q.bytes().div_ceil(512) * 512) {
        if raw && want > done.size {
            let f = std::fs::OpenOptions::new().write(true).open(&tmp).map_err(io("opening", &tmp))?;
            f.set_len(want).map_err(io("growing", &tmp))?;
        } else if raw && want < done.size {
            let _ = std::fs::remove_file(&tmp);
            return Err(ImporterError::TooSmall { have: done.size, want });
        }
    }
    std::fs::rename(&tmp, &disk).map_err(io("moving the clone to", &disk))?;
    progress("100.0%");
    Ok(CloneReport::of(&done))
}

/// Whether `path` starts with qcow2's magic (`QFI\xfb`).
fn is_qcow2(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read(&mut magic)? == 4 && magic == *b"QFI\xfb")
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
    fn a_clone_copies_the_source_grows_it_and_leaves_the_source_alone() {
        let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut disk = vec![0u8; 1 << 20];
        disk[..6].copy_from_slice(b"MARKER");
        std::fs::write(src.path().join("disk.img"), &disk).unwrap();
        let json = serde_json::to_string(&json!({
            "metadata": { "name": "copy", "namespace": "ns" },
            "spec": { "source": { "pvc": { "namespace": "ns", "name": "disk" } },
                      "storage": { "resources": { "requests": { "storage": "2Mi" } } } }
        }))
        .unwrap();
        let mut seen = Vec::new();
        let report = clone_into(&json, src.path(), dst.path(), &mut |p| seen.push(p.to_string())).unwrap();
        assert!(["reflink", "host-assisted"].contains(&report.clone_type.as_str()), "{report:?}");
        let copy = std::fs::read(dst.path().join("disk.img")).unwrap();
        assert_eq!((copy.len(), &copy[..6]), (2 << 20, &b"MARKER"[..]));
        assert_eq!(seen.last().map(String::as_str), Some("100.0%"));
        let names: Vec<_> = std::fs::read_dir(dst.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("disk.img")], "no temporary file left");
        assert_eq!(std::fs::metadata(src.path().join("disk.img")).unwrap().len(), 1 << 20);

        // Smaller than the source: refused; no source disk: named.
        let small = json.replace("2Mi", "512Ki");
        let other = tempfile::tempdir().unwrap();
        let e = clone_into(&small, src.path(), other.path(), &mut |_| {}).unwrap_err().to_string();
        assert!(e.contains("requests only 524288"), "{e}");
        let e = clone_into(&json, other.path(), dst.path().join("x").as_path(), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("has no disk.img"), "{e}");
    }

    #[test]
    fn a_clone_pod_mounts_the_source_read_only_on_its_node() {
        let cfg = ImporterConfig { image: "localhost/virt-importer:dev".into(), insecure_registries: vec![] };
        let src = CloneSource::HostDir { path: "/var/lib/vols/pvc-1".into(), node: Some("n1".into()) };
        let pod = clone_pod(&dv(), &cfg, &src);
        assert_eq!(pod.metadata.name.as_deref(), Some("cdi-clone-disk"));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_selector.as_ref().unwrap()["kubernetes.io/hostname"], "n1");
        let vol = &spec.volumes.as_ref().unwrap()[1];
        assert_eq!(vol.host_path.as_ref().unwrap().path, "/var/lib/vols/pvc-1");
        let c = &spec.containers[0];
        assert!(c.args.as_ref().unwrap().ends_with(&["--clone-from".to_string(), SOURCE_DIR.to_string()]));
        let m = &c.volume_mounts.as_ref().unwrap()[1];
        assert_eq!((m.mount_path.as_str(), m.read_only), (SOURCE_DIR, Some(true)));
        let same_ns = clone_pod(&dv(), &cfg, &CloneSource::Claim("golden".into()));
        let vol = &same_ns.spec.as_ref().unwrap().volumes.as_ref().unwrap()[1];
        assert_eq!(vol.persistent_volume_claim.as_ref().unwrap().read_only, Some(true));
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
