//! What a VMI's volumes name, made into files a machine opens: a library any runtime calls (the
//! node's [`LauncherRuntime`](super::LauncherRuntime), or an embedder's own).
//!
//! containerDisk images are pulled from their registry once (cached by digest) and each VMI writes
//! to its own qcow2 overlay on top (ephemeral, as KubeVirt's containerDisks are); cloud-init seed
//! disks are written (Secrets read through [`CoreObjects`]); emptyDisks are created; hostDisks are
//! checked against the allowed directories (`DiskOrCreate` creates them); claims and DataVolumes
//! are files of the node's pool (`<state>/volumes/<namespace>/<claim>.{img,raw,qcow2}`);
//! kernel-boot containers give their kernel and initrd.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virt_core::machine::resolve::{HostFileError, VolumeFiles};
use virt_core::machine::{DiskFormat, InterfaceBackend};
use virt_core::model::{self, PullPolicy, VirtualMachineInstance, Volume};
use virt_storage::format::detect::{detect_path, ImageFormat};
use virt_storage::format::qcow2::{Qcow2, Qcow2CreateOptions};
use virt_storage::format::{open_image, FormatError};
use virt_storage::hostdisk::{HostDiskError, HostDiskPolicy};
use virt_storage::import::policy::NetPolicy;
use virt_storage::registry::{RegistryConfig, RegistryError};

use super::core_objects::CoreObjects;
use super::images::ImageCache;
use super::seed::{write_vmi_seed, SeedError};

/// Where volumes come from and go.
#[derive(Debug, Clone, Default)]
pub struct VolumeConfig {
    /// The node's state: the image cache (`images/`) and the pool (`volumes/`); never a hostDisk.
    pub state_dir: PathBuf,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) for registries.
    pub registry_ca: Option<Vec<u8>>,
    /// Directories `hostDisk` images may live in (empty: `hostDisk` disabled).
    pub host_disk_dirs: Vec<PathBuf>,
    /// Where containerDisk and kernel-boot pulls may connect.
    pub net_policy: Option<Arc<NetPolicy>>,
}

/// How the node's pulls talk to registries.
fn registry_config(cfg: &VolumeConfig) -> RegistryConfig {
    let mut rc = RegistryConfig { net_policy: cfg.net_policy.clone(), ..RegistryConfig::default() };
    for r in &cfg.insecure_registries {
        rc = rc.with_insecure_registry(r.clone());
    }
    if let Some(ca) = &cfg.registry_ca {
        rc = rc.with_ca_bundle(ca.clone());
    }
    rc
}

/// Tells whether a claim a VMI names is populated: the node's CDI controller answers for the claims
/// its DataVolumes fill.
pub trait ClaimReadiness: Send + Sync {
    /// `None` when no DataVolume fills `namespace/claim`; `Some(Ok(()))` once it is populated;
    /// `Some(Err(why))` while it is not.
    fn claim_ready(&self, namespace: &str, claim: &str) -> Option<Result<(), ClaimNotReady>>;
}

/// Why a claim a DataVolume fills cannot be used yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimNotReady {
    /// The DataVolume is still being populated.
    #[error("DataVolume {name} is not ready (phase {phase}, progress {progress}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Populating {
        /// The DataVolume.
        name: String,
        /// Its phase.
        phase: String,
        /// Its progress (`N/A` when unknown).
        progress: String,
        /// Its Running/Ready condition's message.
        detail: Option<String>,
    },
    /// The VM's `dataVolumeTemplates` entry for it could not be made into a DataVolume.
    #[error("{0}")]
    Template(String),
    /// No such DataVolume (a VM's `dataVolumeTemplates` are made after its VMI).
    #[error("DataVolume {name} does not exist in namespace {namespace} (yet)")]
    Missing {
        /// The DataVolume.
        name: String,
        /// Its namespace.
        namespace: String,
    },
}

/// Why a volume (or the kernel) of a VMI could not be prepared; names the volume or image.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Talking to a registry failed (resolving, pulling, extracting).
    #[error("{what} {image}: {source}")]
    Registry {
        /// `containerDisk` or `kernelBoot image`.
        what: &'static str,
        /// The image reference.
        image: String,
        /// Why.
        source: Box<RegistryError>,
    },
    /// A containerDisk holds an image of a format a machine cannot open.
    #[error("containerDisk {image}: {format:?} images are not supported")]
    ImageFormat {
        /// The image reference.
        image: String,
        /// What it holds.
        format: ImageFormat,
    },
    /// Reading or creating an image file failed.
    #[error("{}: {source}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        source: FormatError,
    },
    /// Writing a cloud-init seed failed.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// A hostDisk was refused or could not be made.
    #[error(transparent)]
    HostDisk(#[from] HostDiskError),
    /// A DataVolume-filled claim is not populated yet.
    #[error(transparent)]
    ClaimNotReady(ClaimNotReady),
    /// A claim has no file in the pool.
    #[error("PersistentVolumeClaim \"{claim}\" not found in namespace {namespace} (looked for {}/{claim}.img|.qcow2)", dir.display())]
    ClaimNotFound {
        /// Namespace.
        namespace: String,
        /// The claim.
        claim: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A volume kind this node does not serve.
    #[error("{kind} volumes are not supported on this node")]
    UnsupportedKind {
        /// The volume's kind (its field name).
        kind: String,
    },
    /// The image is not in the node's cache and its `imagePullPolicy` is `Never`.
    #[error("{what} {image}: not in the node's image cache and imagePullPolicy is Never (pull it once with IfNotPresent or Always)")]
    NotPresent {
        /// `containerDisk` or `kernelBoot image`.
        what: &'static str,
        /// The image reference.
        image: String,
    },
    /// `kernelBoot.container` without `kernelPath`.
    #[error("kernelBoot.container.kernelPath is required")]
    KernelPathRequired,
    /// A volume failed (wraps the reason with the volume's name).
    #[error("volume {volume}: {source}")]
    Volume {
        /// The volume's name.
        volume: String,
        /// Why.
        source: Box<PrepareError>,
    },
}

impl PrepareError {
    /// The reason without the volume name: a claim waiting for its DataVolume.
    pub fn is_waiting(&self) -> bool {
        match self {
            Self::ClaimNotReady(_) => true,
            Self::Volume { source, .. } => source.is_waiting(),
            _ => false,
        }
    }
}

/// The prepared files of one VMI: what [`VolumeFiles`] answers from.
pub struct PreparedFiles {
    files: HashMap<String, (PathBuf, DiskFormat)>,
    kernel: Option<(PathBuf, Option<PathBuf>)>,
    state_dir: PathBuf,
    /// Tap of each interface (by name) in the VMI's network namespace.
    taps: HashMap<String, String>,
}

impl PreparedFiles {
    /// Links interface `interface` to tap `tap`.
    pub fn set_tap(&mut self, interface: impl Into<String>, tap: impl Into<String>) {
        self.taps.insert(interface.into(), tap.into());
    }
}

impl VolumeFiles for PreparedFiles {
    fn volume_file(&self, volume: &Volume) -> Result<(PathBuf, DiskFormat), HostFileError> {
        self.files
            .get(&volume.name)
            .cloned()
            .ok_or_else(|| HostFileError::VolumeNotPrepared { volume: volume.name.clone(), reason: None })
    }
    fn kernel_files(
        &self,
        c: &model::KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), HostFileError> {
        self.kernel
            .clone()
            .ok_or_else(|| HostFileError::KernelNotPulled { image: c.image.clone(), reason: None })
    }
    fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }
    fn interface_backend(&self, interface: &model::Interface) -> Result<InterfaceBackend, HostFileError> {
        Ok(match self.taps.get(&interface.name) {
            Some(tap) => InterfaceBackend::Tap { name: tap.clone() },
            None => InterfaceBackend::None,
        })
    }
}

/// Prepares VMIs' volumes.
pub struct VmiVolumes {
    cfg: VolumeConfig,
    /// Who knows about DataVolumes (none: claims are plain files of the pool).
    claims: std::sync::OnceLock<Arc<dyn ClaimReadiness>>,
    /// Secrets (cloud-init `secretRef`, `accessCredentials`); none: such VMIs fail to launch.
    objects: std::sync::OnceLock<Arc<CoreObjects>>,
    /// containerDisks and kernel-boot images.
    images: ImageCache,
}

impl VmiVolumes {
    /// Volumes prepared with `cfg`.
    pub fn new(cfg: VolumeConfig) -> Self {
        Self {
            images: ImageCache::new(cfg.state_dir.join("images"), registry_config(&cfg)),
            cfg,
            claims: std::sync::OnceLock::new(),
            objects: std::sync::OnceLock::new(),
        }
    }

    /// Lets `claims` say whether DataVolume-filled claims are ready. Only the first call counts.
    pub fn set_claims(&self, claims: Arc<dyn ClaimReadiness>) {
        let _ = self.claims.set(claims);
    }

    /// The claims' readiness, if set.
    pub fn claims(&self) -> Option<&Arc<dyn ClaimReadiness>> {
        self.claims.get()
    }

    /// Lets seeds read the node's Secrets. Only the first call counts.
    pub fn set_objects(&self, objects: Arc<CoreObjects>) {
        let _ = self.objects.set(objects);
    }

    /// The SSH keys `vmi`'s guest agent keeps (`qemuGuestAgent` access credentials), read from
    /// their Secrets now.
    pub fn agent_credentials(
        &self,
        vmi: &VirtualMachineInstance,
    ) -> Result<virt_core::agent::GuestCredentials, SeedError> {
        let ns = vmi.metadata.namespace.as_deref().unwrap_or("default");
        super::seed::agent_credentials(self.objects.get().map(|o| &**o), vmi, ns)
    }

    /// The file of claim `claim` in `ns` in the node's pool, if it exists.
    pub fn claim_file(&self, ns: &str, claim: &str) -> Option<(PathBuf, DiskFormat)> {
        let dir = self.cfg.state_dir.join("volumes").join(ns);
        [("img", DiskFormat::Raw), ("raw", DiskFormat::Raw), ("qcow2", DiskFormat::Qcow2)]
            .into_iter()
            .map(|(ext, fmt)| (dir.join(format!("{claim}.{ext}")), fmt))
            .find(|(p, _)| p.is_file())
    }

    /// `image`'s containerDisk, pulled into the node's image cache as `policy` says
    /// ([`ImageCache::container_disk`]); the disk file.
    pub fn container_disk(&self, image: &str, policy: Option<PullPolicy>) -> Result<PathBuf, PrepareError> {
        self.images.container_disk(image, policy)
    }

    /// A kernel-boot container's kernel and initrd, from the node's image cache.
    pub fn kernel_files(
        &self,
        c: &model::KernelBootContainer,
    ) -> Result<(PathBuf, Option<PathBuf>), PrepareError> {
        self.images.kernel_files(c)
    }

    /// Prepares the files of `vmi`'s volumes (and its kernel-boot container) in `run_dir`.
    pub fn prepare(
        &self,
        vmi: &VirtualMachineInstance,
        run_dir: &Path,
    ) -> Result<PreparedFiles, PrepareError> {
        self.prepare_with(vmi, run_dir, &HashMap::new())
    }

    /// [`VmiVolumes::prepare`] with some volumes' files already known (by volume name): on a
    /// cluster the node agent resolves a claim to the `disk.img` of its PersistentVolume and hands
    /// the launcher the path its pod mounts it at (`cluster::handler`).
    pub fn prepare_with(
        &self,
        vmi: &VirtualMachineInstance,
        run_dir: &Path,
        resolved: &HashMap<String, (PathBuf, DiskFormat)>,
    ) -> Result<PreparedFiles, PrepareError> {
        let name = vmi.metadata.name.clone().unwrap_or_default();
        let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut files = HashMap::new();
        for v in &vmi.spec.volumes {
            if let Some(f) = resolved.get(&v.name) {
                files.insert(v.name.clone(), f.clone());
                continue;
            }
            let f = self
                .prepare_volume(vmi, &name, &ns, v, run_dir)
                .map_err(|e| PrepareError::Volume { volume: v.name.clone(), source: Box::new(e) })?;
            files.insert(v.name.clone(), f);
        }
        let kernel = match vmi
            .spec
            .domain
            .firmware
            .as_ref()
            .and_then(|f| f.kernel_boot.as_ref())
            .and_then(|k| k.container.as_ref())
        {
            Some(c) => Some(self.kernel_files(c)?),
            None => None,
        };
        Ok(PreparedFiles { files, kernel, state_dir: run_dir.join("state"), taps: HashMap::new() })
    }

    /// Prepares one volume of `vmi` (`name` in `ns`) in `run_dir`: its file and format.
    pub fn prepare_volume(
        &self,
        vmi: &VirtualMachineInstance,
        name: &str,
        ns: &str,
        v: &Volume,
        run_dir: &Path,
    ) -> Result<(PathBuf, DiskFormat), PrepareError> {
        let format_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PrepareError::Format { path, source }
        };
        if let Some(cd) = &v.container_disk {
            let base = self.container_disk(&cd.image, cd.image_pull_policy)?;
            let base_fmt = detect_path(&base).map_err(format_err(&base))?;
            if !matches!(base_fmt, ImageFormat::Qcow2 | ImageFormat::Raw) {
                return Err(PrepareError::ImageFormat { image: cd.image.clone(), format: base_fmt });
            }
            let virtual_size = open_image(&base, true).map_err(format_err(&base))?.size();
            // Ephemeral: this VMI's writes go to an overlay that goes with the run directory.
            let overlay = run_dir.join(format!("{}.qcow2", v.name));
            let _ = std::fs::remove_file(&overlay);
            Qcow2::create(
                &overlay,
                &Qcow2CreateOptions {
                    size: virtual_size,
                    backing_file: Some(base),
                    backing_format: Some(base_fmt),
                    ..Default::default()
                },
            )
            .map_err(format_err(&overlay))?;
            return Ok((overlay, DiskFormat::Qcow2));
        }
        if v.cloud_init_no_cloud.is_some() || v.cloud_init_config_drive.is_some() {
            let dest = run_dir.join(format!("{}.img", v.name));
            write_vmi_seed(self.objects.get().map(|o| &**o), vmi, name, ns, v, &dest)?;
            return Ok((dest, DiskFormat::Raw));
        }
        if let Some(e) = &v.empty_disk {
            let dest = run_dir.join(format!("{}.qcow2", v.name));
            if !dest.exists() {
                Qcow2::create(&dest, &Qcow2CreateOptions { size: e.capacity.bytes(), ..Default::default() })
                    .map_err(format_err(&dest))?;
            }
            return Ok((dest, DiskFormat::Qcow2));
        }
        if let Some(h) = &v.host_disk {
            // The node's state (store, tokens, other VMIs' disks) is never a hostDisk.
            let policy = HostDiskPolicy {
                dirs: self.cfg.host_disk_dirs.clone(),
                forbidden: vec![self.cfg.state_dir.clone()],
            };
            let path = policy.prepare(h)?;
            let fmt = match detect_path(&path).map_err(format_err(&path))? {
                ImageFormat::Qcow2 => DiskFormat::Qcow2,
                _ => DiskFormat::Raw,
            };
            return Ok((path, fmt));
        }
        let claim = v
            .persistent_volume_claim
            .as_ref()
            .map(|p| p.claim_name.clone())
            .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
        if let Some(claim) = claim {
            if let Some(found) = self.claim_file(ns, &claim) {
                return Ok(found);
            }
            if let Some(Err(why)) = self.claims.get().and_then(|c| c.claim_ready(ns, &claim)) {
                return Err(PrepareError::ClaimNotReady(why));
            }
            let dir = self.cfg.state_dir.join("volumes").join(ns);
            return Err(PrepareError::ClaimNotFound { namespace: ns.into(), claim, dir });
        }
        Err(PrepareError::UnsupportedKind { kind: v.kind().map_or("empty", |k| k.field()).into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_of_every_served_kind_become_files_and_the_rest_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let run = dir.path().join("run");
        std::fs::create_dir_all(state.join("volumes/default")).unwrap();
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(state.join("volumes/default/data.img"), vec![0u8; 4096]).unwrap();
        let vols = VmiVolumes::new(VolumeConfig { state_dir: state.clone(), ..Default::default() });
        let vmi: VirtualMachineInstance = virt_core::model::from_yaml(
            r#"
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: v, namespace: default}
spec:
  domain: {devices: {}}
  volumes:
  - name: scratch
    emptyDisk: {capacity: 1Mi}
  - name: data
    persistentVolumeClaim: {claimName: data}
"#,
        )
        .unwrap();
        let files = vols.prepare(&vmi, &run).unwrap();
        let (p, f) = files.volume_file(&vmi.spec.volumes[0]).unwrap();
        assert_eq!((p, f), (run.join("scratch.qcow2"), DiskFormat::Qcow2));
        let (p, f) = files.volume_file(&vmi.spec.volumes[1]).unwrap();
        assert_eq!((p, f), (state.join("volumes/default/data.img"), DiskFormat::Raw));

        let mut missing = vmi.clone();
        missing.spec.volumes.truncate(1);
        missing.spec.volumes[0] = vmi.spec.volumes[1].clone();
        missing.spec.volumes[0].persistent_volume_claim.as_mut().unwrap().claim_name = "gone".into();
        let e = vols.prepare(&missing, &run).err().unwrap();
        assert!(
            matches!(&e, PrepareError::Volume { volume, source } if volume == "data"
            && matches!(**source, PrepareError::ClaimNotFound { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("\"gone\" not found in namespace default"), "{e}");

        // hostDisk is refused unless the node allows a directory for it.
        let mut host = vmi.clone();
        host.spec.volumes = vec![serde_json::from_str(
            r#"{"name": "h", "hostDisk": {"path": "/etc/passwd", "type": "Disk"}}"#,
        )
        .unwrap()];
        let e = vols.prepare(&host, &run).err().unwrap();
        assert!(
            matches!(&e, PrepareError::Volume { source, .. } if matches!(**source, PrepareError::HostDisk(_))),
            "{e}"
        );
    }
}
