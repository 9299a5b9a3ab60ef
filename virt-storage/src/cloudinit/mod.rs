//! cloud-init seed disks for KubeVirt's `cloudInitNoCloud` and `cloudInitConfigDrive` volumes.
//!
//! A seed disk is a small FAT file system image (no partition table) the guest's cloud-init finds by
//! its label and reads at boot:
//!
//! | volume source | label | files |
//! | --- | --- | --- |
//! | `cloudInitNoCloud` | `cidata` | `meta-data`, `user-data`, `network-config` (when given) |
//! | `cloudInitConfigDrive` | `config-2` | `openstack/latest/meta_data.json`, `openstack/latest/user_data`, `openstack/latest/network_data.json` (when given) |
//!
//! KubeVirt writes the same files into an ISO 9660 image (xorrisofs); cloud-init's NoCloud and
//! ConfigDrive data sources read either file system, and FAT needs no external tool: the image is
//! made in memory with the `fatfs` crate, then written next to its destination and renamed over it
//! (readers never see half an image). It is deterministic: fixed timestamps (the FAT epoch,
//! 1980-01-01) and a volume serial derived from the label and the instance id, so the same input
//! gives the same bytes.
//!
//! User and network data come inline (`userData`, `networkData`) or base64-encoded
//! (`userDataBase64`, `networkDataBase64`, decoded here). `secretRef` and `networkDataSecretRef`
//! are refused with [`CloudInitError::Unsupported`]: the caller resolves them from its Secrets first
//! (the node does, node::seed) and passes the data inline. See docs/cloud-init.md.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use sha2::{Digest, Sha256};
use virt_core::model::{CloudInitSource, VirtualMachineInstanceSpec, Volume};

mod fat;
use fat::fix_dot_entries;

/// The most bytes one seed file (user data, network data) may hold after base64 decoding: 1 MiB,
/// the size limit of a Kubernetes Secret and so the most user data KubeVirt can be handed at all
/// (inline data is limited to 2048 bytes by the model's validation, KubeVirt's own limit). It
/// bounds the image (at most a few MiB) and what an embedder's mistake can allocate.
pub const MAX_DATA_LEN: usize = 1 << 20;

/// The label of a NoCloud seed disk.
pub const NOCLOUD_LABEL: &str = "cidata";

/// The label of a ConfigDrive seed disk.
pub const CONFIG_DRIVE_LABEL: &str = "config-2";

/// The longest hostname written (Linux's `HOST_NAME_MAX` less one, what KubeVirt truncates to).
const MAX_HOSTNAME_LEN: usize = 63;

/// The longest instance id accepted (a VMI name of 253 bytes, a dot, a namespace of 63, and room).
const MAX_INSTANCE_ID_LEN: usize = 512;
/// The most SSH public keys a seed carries.
const MAX_PUBLIC_KEYS: usize = 256;
/// The longest SSH public key line accepted.
const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;

/// Which kind of seed disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    /// `cloudInitNoCloud`: label `cidata`.
    NoCloud,
    /// `cloudInitConfigDrive`: label `config-2`.
    ConfigDrive,
}

impl SeedKind {
    /// The file system label cloud-init looks for.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoCloud => NOCLOUD_LABEL,
            Self::ConfigDrive => CONFIG_DRIVE_LABEL,
        }
    }

    /// The volume source's field name in YAML.
    pub fn field(self) -> &'static str {
        match self {
            Self::NoCloud => "cloudInitNoCloud",
            Self::ConfigDrive => "cloudInitConfigDrive",
        }
    }
}

impl fmt::Display for SeedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Errors of building a seed disk; each names the volume or field and what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum CloudInitError {
    /// A base64 field does not decode.
    #[error("cloud-init volume {volume:?}: {field}: not valid base64: {source}")]
    Base64 {
        /// The volume.
        volume: String,
        /// `userDataBase64` or `networkDataBase64`.
        field: &'static str,
        /// What the decoder found.
        source: base64::DecodeError,
    },
    /// A field this node cannot honour (`secretRef`, `networkDataSecretRef`).
    #[error(
        "cloud-init volume {volume:?}: {field}: the Secret was not resolved (the node reads it before \
         writing the seed); put the data inline in {inline}"
    )]
    Unsupported {
        /// The volume.
        volume: String,
        /// The field.
        field: &'static str,
        /// The inline fields to use instead.
        inline: &'static str,
    },
    /// Neither user data nor network data is set.
    #[error(
        "cloud-init volume {volume:?}: no user data: set userData or userDataBase64 \
         (or networkData / networkDataBase64)"
    )]
    NoData {
        /// The volume.
        volume: String,
    },
    /// More than one source for the same data.
    #[error("cloud-init volume {volume:?}: set only one of {fields}")]
    Conflict {
        /// The volume.
        volume: String,
        /// The fields that are set together.
        fields: String,
    },
    /// A field holds more than [`MAX_DATA_LEN`] bytes.
    #[error(
        "cloud-init volume {volume:?}: {field}: {len} bytes, more than the {max} bytes a seed disk \
         takes per file"
    )]
    TooLarge {
        /// The volume.
        volume: String,
        /// The field.
        field: &'static str,
        /// Its (decoded) size.
        len: usize,
        /// [`MAX_DATA_LEN`].
        max: usize,
    },
    /// The instance id, hostname or UUID cannot be written into the metadata.
    #[error("cloud-init metadata: {field} {value:?}: {reason}")]
    Metadata {
        /// `instance_id`, `hostname` or `uuid`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// [`build_image`] was given more than [`MAX_DATA_LEN`] bytes for one file.
    #[error(
        "cloud-init seed {path}: {file}: {len} bytes, more than the {max} bytes a seed disk takes per file"
    )]
    FileTooLarge {
        /// The destination.
        path: PathBuf,
        /// The file in the image.
        file: &'static str,
        /// Its size.
        len: usize,
        /// [`MAX_DATA_LEN`].
        max: usize,
    },
    /// [`write_seed`] was given a volume of another kind.
    #[error("volume {volume:?} is not a cloud-init volume (cloudInitNoCloud or cloudInitConfigDrive)")]
    NotCloudInit {
        /// The volume.
        volume: String,
    },
    /// Building the FAT file system failed.
    #[error("cloud-init seed {path}: building the {label:?} FAT image: {what}: {source}")]
    Image {
        /// The destination.
        path: PathBuf,
        /// The label.
        label: &'static str,
        /// The step that failed.
        what: String,
        /// Underlying error.
        source: io::Error,
    },
    /// Writing the image file failed.
    #[error("cloud-init seed {path}: {what}: {source}")]
    Io {
        /// The destination.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// Underlying error.
        source: io::Error,
    },
}

/// The instance's identity, written into the seed's metadata.
///
/// KubeVirt writes `<name>.<namespace>` as the instance id, the VMI's `spec.hostname` (else its
/// name, at most 63 bytes) as the hostname and the firmware UUID (`spec.domain.firmware.uuid`) as
/// ConfigDrive's `uuid`: [`SeedInfo::for_vmi`] does the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedInfo {
    /// The instance id: NoCloud's `instance-id`, ConfigDrive's `instance_id`. cloud-init runs its
    /// per-instance modules again when it changes. `[A-Za-z0-9._:-]`, at most 512 bytes.
    pub instance_id: String,
    /// The hostname: NoCloud's `local-hostname`, ConfigDrive's `hostname`. `[A-Za-z0-9.-]`, at most
    /// 63 bytes.
    pub hostname: String,
    /// ConfigDrive's `uuid` (cloud-init requires one). `None`: a UUID derived from the instance id,
    /// the same for the same id.
    pub uuid: Option<String>,
    /// SSH public keys (KubeVirt's `accessCredentials` propagated by `noCloud` / `configDrive`):
    /// NoCloud's `public-keys`, ConfigDrive's `public_keys`; cloud-init gives them to the default
    /// user. One key a line, no control characters.
    pub public_keys: Vec<String>,
}

impl SeedInfo {
    /// The given instance id and hostname, no UUID.
    pub fn new(instance_id: impl Into<String>, hostname: impl Into<String>) -> Self {
        Self {
            instance_id: instance_id.into(),
            hostname: hostname.into(),
            uuid: None,
            public_keys: Vec::new(),
        }
    }

    /// What KubeVirt writes for VMI `name` in `namespace` with `spec`: instance id
    /// `<name>.<namespace>`, hostname `spec.hostname` or `name` (cut to 63 bytes), UUID
    /// `spec.domain.firmware.uuid` when set.
    pub fn for_vmi(name: &str, namespace: &str, spec: &VirtualMachineInstanceSpec) -> Self {
        let host = spec.hostname.as_deref().filter(|h| !h.is_empty()).unwrap_or(name);
        // Names are DNS labels or subdomains (ASCII), so a byte cut is a character cut; stay on a
        // character boundary all the same.
        let mut end = host.len().min(MAX_HOSTNAME_LEN);
        while !host.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            instance_id: format!("{name}.{namespace}"),
            hostname: host[..end].to_string(),
            uuid: spec.domain.firmware.as_ref().and_then(|f| f.uuid.clone()).filter(|u| !u.is_empty()),
            public_keys: Vec::new(),
        }
    }

    /// The same with `keys` as the SSH public keys of the default user.
    pub fn with_public_keys(mut self, keys: Vec<String>) -> Self {
        self.public_keys = keys;
        self
    }

    /// The same with `uuid` as ConfigDrive's `uuid`.
    pub fn with_uuid(mut self, uuid: impl Into<String>) -> Self {
        self.uuid = Some(uuid.into());
        self
    }

    fn check(&self) -> Result<(), CloudInitError> {
        let bad = |field, value: &str, reason| {
            Err(CloudInitError::Metadata { field, value: value.to_string(), reason })
        };
        let id = &self.instance_id;
        if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
            return bad("instance_id", id, "must be 1 to 512 bytes");
        }
        if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b)) {
            return bad("instance_id", id, "may hold only letters, digits and . _ : -");
        }
        let h = &self.hostname;
        if h.is_empty() || h.len() > MAX_HOSTNAME_LEN {
            return bad("hostname", h, "must be 1 to 63 bytes");
        }
        if !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
            return bad("hostname", h, "may hold only letters, digits, . and -");
        }
        if let Some(u) = &self.uuid {
            if !is_uuid(u) {
                return bad("uuid", u, "is not a UUID (8-4-4-4-12 hexadecimal digits)");
            }
        }
        if self.public_keys.len() > MAX_PUBLIC_KEYS {
            return bad("public_keys", "", "at most 256 keys");
        }
        for k in &self.public_keys {
            if k.trim().is_empty() || k.len() > MAX_PUBLIC_KEY_LEN {
                return bad("public_keys", k, "a key must be 1 to 16384 bytes");
            }
            if k.chars().any(char::is_control) {
                return bad("public_keys", k, "a key is one line without control characters");
            }
        }
        Ok(())
    }

    /// The UUID written into ConfigDrive's metadata.
    fn uuid_or_derived(&self) -> String {
        match &self.uuid {
            Some(u) => u.clone(),
            None => derived_uuid(&self.instance_id),
        }
    }
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// A UUID (RFC 9562 version 8, name-based on SHA-256) for an instance id without a firmware UUID.
fn derived_uuid(instance_id: &str) -> String {
    let d = Sha256::digest(format!("virt-rs cloud-init instance {instance_id}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8
    b[8] = (b[8] & 0x3f) | 0x80; // variant RFC 9562
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// User and network data of a cloud-init volume, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedData {
    /// User data (empty when only network data is given, as KubeVirt writes it).
    pub user_data: Vec<u8>,
    /// Network configuration, when given.
    pub network_data: Option<Vec<u8>>,
}

/// Base64 as KubeVirt's webhook and the model's validation accept it: the standard alphabet,
/// padding optional, whitespace ignored (stripped before decoding), non-zero trailing bits allowed.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

impl SeedData {
    /// Reads and decodes the data of `src`, the source of volume `volume` (for the messages).
    pub fn from_source(volume: &str, src: &CloudInitSource) -> Result<Self, CloudInitError> {
        let user = one_of(
            volume,
            [
                ("userData", src.user_data.as_deref(), false),
                ("userDataBase64", src.user_data_base64.as_deref(), true),
            ],
            ("secretRef", src.user_data_secret_ref.is_some(), "userData or userDataBase64"),
        )?;
        let network = one_of(
            volume,
            [
                ("networkData", src.network_data.as_deref(), false),
                ("networkDataBase64", src.network_data_base64.as_deref(), true),
            ],
            (
                "networkDataSecretRef",
                src.network_data_secret_ref.is_some(),
                "networkData or networkDataBase64",
            ),
        )?;
        if user.is_none() && network.is_none() {
            return Err(CloudInitError::NoData { volume: volume.to_string() });
        }
        Ok(Self { user_data: user.unwrap_or_default(), network_data: network })
    }
}

/// The one value among `fields` (name, value, base64?), decoded; `secret` is (name, set, inline
/// alternative).
fn one_of(
    volume: &str,
    fields: [(&'static str, Option<&str>, bool); 2],
    secret: (&'static str, bool, &'static str),
) -> Result<Option<Vec<u8>>, CloudInitError> {
    let set: Vec<&'static str> = fields
        .iter()
        .filter(|(_, v, _)| v.is_some())
        .map(|(f, _, _)| *f)
        .chain(secret.1.then_some(secret.0))
        .collect();
    if set.len() > 1 {
        return Err(CloudInitError::Conflict { volume: volume.to_string(), fields: set.join(", ") });
    }
    if secret.1 {
        return Err(CloudInitError::Unsupported {
            volume: volume.to_string(),
            field: secret.0,
            inline: secret.2,
        });
    }
    for (field, value, base64) in fields {
        let Some(value) = value else { continue };
        let too_large =
            |len| CloudInitError::TooLarge { volume: volume.to_string(), field, len, max: MAX_DATA_LEN };
        if !base64 {
            if value.len() > MAX_DATA_LEN {
                return Err(too_large(value.len()));
            }
            return Ok(Some(value.as_bytes().to_vec()));
        }
        let body: Vec<u8> = value.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        // Refuse before decoding what cannot fit: 4 characters carry 3 bytes.
        if body.len() / 4 * 3 > MAX_DATA_LEN + 3 {
            return Err(too_large(body.len() / 4 * 3));
        }
        let data = LENIENT_BASE64.decode(&body).map_err(|source| CloudInitError::Base64 {
            volume: volume.to_string(),
            field,
            source,
        })?;
        if data.len() > MAX_DATA_LEN {
            return Err(too_large(data.len()));
        }
        return Ok(Some(data));
    }
    Ok(None)
}

/// The files of a seed disk, paths relative to its root.
fn seed_files(kind: SeedKind, data: &SeedData, info: &SeedInfo) -> Vec<(&'static str, Vec<u8>)> {
    match kind {
        SeedKind::NoCloud => {
            // YAML with double-quoted values: YAML 1.1 (PyYAML) would read `on` or `12:30` unquoted as a
            // boolean or a number. The values are checked to hold no quote or backslash.
            let mut meta =
                format!("instance-id: \"{}\"\nlocal-hostname: \"{}\"\n", info.instance_id, info.hostname);
            if !info.public_keys.is_empty() {
                // JSON strings are YAML double-quoted scalars; the keys hold no control characters.
                meta.push_str("public-keys:\n");
                for k in &info.public_keys {
                    meta.push_str(&format!("  - {}\n", serde_json::Value::String(k.clone())));
                }
            }
            let mut files = vec![("meta-data", meta.into_bytes()), ("user-data", data.user_data.clone())];
            if let Some(n) = &data.network_data {
                files.push(("network-config", n.clone()));
            }
            files
        }
        SeedKind::ConfigDrive => {
            // KubeVirt's ConfigDriveMetadata, in its field order (Go's encoding/json, empty fields
            // omitted): instance_id, hostname, uuid. cloud-init takes its instance id from `uuid`.
            #[derive(serde::Serialize)]
            struct ConfigDriveMetadata<'a> {
                instance_id: &'a str,
                hostname: &'a str,
                uuid: String,
                #[serde(skip_serializing_if = "BTreeMap::is_empty")]
                public_keys: BTreeMap<String, &'a str>,
            }
            let meta = ConfigDriveMetadata {
                instance_id: &info.instance_id,
                hostname: &info.hostname,
                uuid: info.uuid_or_derived(),
                public_keys: info
                    .public_keys
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (i.to_string(), k.as_str()))
                    .collect(),
            };
            // Serializing three strings cannot fail.
            let meta = serde_json::to_string(&meta).unwrap_or_default();
            let mut files = vec![
                ("openstack/latest/meta_data.json", meta.into_bytes()),
                ("openstack/latest/user_data", data.user_data.clone()),
            ];
            if let Some(n) = &data.network_data {
                files.push(("openstack/latest/network_data.json", n.clone()));
            }
            files
        }
    }
}

/// The image size for `files`: whole MiB, at least 2, with 1 MiB beyond the payload (each file
/// rounded up to 4 KiB, the largest cluster `fatfs` picks at these sizes) for the FATs, the
/// directories and slack.
fn image_size(files: &[(&str, Vec<u8>)]) -> u64 {
    const MIB: u64 = 1 << 20;
    let payload: u64 = files.iter().map(|(_, d)| (d.len() as u64).div_ceil(4096) * 4096).sum();
    ((payload + MIB).div_ceil(MIB) * MIB).max(2 * MIB)
}

/// Builds the FAT image of a `kind` seed disk holding `data` and `info`, in memory.
///
/// `dest` only names the image in errors. Most callers want [`write_nocloud`],
/// [`write_config_drive`] or [`write_seed`].
pub fn build_image(
    kind: SeedKind,
    data: &SeedData,
    info: &SeedInfo,
    dest: &Path,
) -> Result<Vec<u8>, CloudInitError> {
    info.check()?;
    let label = kind.label();
    let files = seed_files(kind, data, info);
    if let Some((file, d)) = files.iter().find(|(_, d)| d.len() > MAX_DATA_LEN) {
        return Err(CloudInitError::FileTooLarge {
            path: dest.to_path_buf(),
            file,
            len: d.len(),
            max: MAX_DATA_LEN,
        });
    }
    let err =
        |what: String| move |source| CloudInitError::Image { path: dest.to_path_buf(), label, what, source };
    let size = image_size(&files);
    // The size is a few MiB (MAX_DATA_LEN bounds the payload), far below usize::MAX.
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let mut label_field = [b' '; 11];
    label_field[..label.len()].copy_from_slice(label.as_bytes());
    let serial = Sha256::digest(format!("{label}\0{}", info.instance_id).as_bytes());
    let options = fatfs::FormatVolumeOptions::new()
        .volume_label(label_field)
        .volume_id(u32::from_le_bytes([serial[0], serial[1], serial[2], serial[3]]));
    fatfs::format_volume(&mut disk, options).map_err(err(format!("formatting {size} bytes")))?;
    disk.set_position(0);
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new())
            .map_err(err("opening the new file system".into()))?;
        {
            let root = fs.root_dir();
            for (path, bytes) in &files {
                let mut prefix = String::new();
                if let Some((dirs, _)) = path.rsplit_once('/') {
                    for d in dirs.split('/') {
                        if !prefix.is_empty() {
                            prefix.push('/');
                        }
                        prefix.push_str(d);
                        root.create_dir(&prefix).map_err(err(format!("creating directory {prefix}")))?;
                    }
                }
                let mut f = root.create_file(path).map_err(err(format!("creating {path}")))?;
                f.write_all(bytes).map_err(err(format!("writing {} bytes to {path}", bytes.len())))?;
                f.flush().map_err(err(format!("flushing {path}")))?;
            }
        }
        fs.unmount().map_err(err("closing the file system".into()))?;
    }
    let mut image = disk.into_inner();
    fix_dot_entries(&mut image).map_err(err("repairing the '.' and '..' entries".into()))?;
    Ok(image)
}

/// Writes `bytes` to `dest` through a temporary file in the same directory, synced, then renamed
/// over `dest`. The file is private to its owner (0600): it may hold credentials.
fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), CloudInitError> {
    let io_err = |what| move |source| CloudInitError::Io { path: dest.to_path_buf(), what, source };
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".cloudinit-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(io_err("creating a temporary file in its directory"))?;
    tmp.write_all(bytes).map_err(io_err("writing the temporary file"))?;
    tmp.as_file().sync_all().map_err(io_err("syncing the temporary file"))?;
    tmp.persist(dest).map_err(|e| e.error).map_err(io_err("renaming the temporary file over it"))?;
    // The rename is durable once the directory is synced. Some file systems refuse fsync on a
    // directory (EINVAL); the image is complete either way, so that is not an error.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Writes the NoCloud seed disk (label `cidata`) of `src`, the source of volume `volume`, to
/// `dest`: `meta-data` (`instance-id`, `local-hostname`), `user-data`, and `network-config` when
/// network data is given.
pub fn write_nocloud(
    volume: &str,
    src: &CloudInitSource,
    info: &SeedInfo,
    dest: &Path,
) -> Result<(), CloudInitError> {
    let data = SeedData::from_source(volume, src)?;
    write_atomically(dest, &build_image(SeedKind::NoCloud, &data, info, dest)?)
}

/// Writes the ConfigDrive seed disk (label `config-2`) of `src`, the source of volume `volume`, to
/// `dest`: `openstack/latest/meta_data.json` (`instance_id`, `hostname`, `uuid`),
/// `openstack/latest/user_data`, and `openstack/latest/network_data.json` when network data is
/// given.
pub fn write_config_drive(
    volume: &str,
    src: &CloudInitSource,
    info: &SeedInfo,
    dest: &Path,
) -> Result<(), CloudInitError> {
    let data = SeedData::from_source(volume, src)?;
    write_atomically(dest, &build_image(SeedKind::ConfigDrive, &data, info, dest)?)
}

/// Writes the seed disk of a `cloudInitNoCloud` or `cloudInitConfigDrive` volume to `dest`;
/// returns which kind it wrote.
pub fn write_seed(volume: &Volume, info: &SeedInfo, dest: &Path) -> Result<SeedKind, CloudInitError> {
    match (&volume.cloud_init_no_cloud, &volume.cloud_init_config_drive) {
        (Some(src), None) => write_nocloud(&volume.name, src, info, dest).map(|()| SeedKind::NoCloud),
        (None, Some(src)) => {
            write_config_drive(&volume.name, src, info, dest).map(|()| SeedKind::ConfigDrive)
        }
        (Some(_), Some(_)) => Err(CloudInitError::Conflict {
            volume: volume.name.clone(),
            fields: "cloudInitNoCloud, cloudInitConfigDrive".into(),
        }),
        (None, None) => Err(CloudInitError::NotCloudInit { volume: volume.name.clone() }),
    }
}

#[cfg(test)]
mod tests;
