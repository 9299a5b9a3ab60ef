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

const DIR_ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIRECTORY: u8 = 0x10;
const DELETED: u8 = 0xe5;

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// The geometry of a FAT12/16 image, from its boot sector.
struct Geometry {
    fat: usize,
    fat12: bool,
    root: usize,
    root_len: usize,
    data: usize,
    cluster: usize,
    clusters: usize,
}

impl Geometry {
    fn read(img: &[u8]) -> io::Result<Self> {
        let u16_at = |o: usize| img.get(o..o + 2).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])));
        let u32_at =
            |o: usize| img.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let short = || invalid("the image is shorter than its boot sector".into());
        let bps = u16_at(0x0b).ok_or_else(short)?;
        let spc = usize::from(*img.get(0x0d).ok_or_else(short)?);
        let reserved = u16_at(0x0e).ok_or_else(short)?;
        let fats = usize::from(*img.get(0x10).ok_or_else(short)?);
        let root_entries = u16_at(0x11).ok_or_else(short)?;
        let total = match u16_at(0x13).ok_or_else(short)? {
            0 => u32_at(0x20).ok_or_else(short)?,
            n => n,
        };
        let spf = u16_at(0x16).ok_or_else(short)?;
        // Sectors of 512 to 4096 bytes make every cluster hold at least the 4 slots fixed below.
        if !(512..=4096).contains(&bps) || !bps.is_power_of_two() || !spc.is_power_of_two() || spf == 0 {
            return Err(invalid(format!(
                "not a FAT12/16 boot sector (sector {bps}, cluster {spc}, FAT {spf})"
            )));
        }
        let root_sectors = (root_entries * DIR_ENTRY).div_ceil(bps);
        let data_sector = reserved + fats * spf + root_sectors;
        let clusters = total.saturating_sub(data_sector) / spc;
        let g = Self {
            fat: reserved * bps,
            fat12: clusters < 4085,
            root: (reserved + fats * spf) * bps,
            root_len: root_entries * DIR_ENTRY,
            data: data_sector * bps,
            cluster: spc * bps,
            clusters,
        };
        if g.data + clusters * g.cluster > img.len() {
            return Err(invalid(format!(
                "the boot sector describes more than the {} bytes of the image",
                img.len()
            )));
        }
        Ok(g)
    }

    /// The byte ranges of the directory starting at `cluster` (its cluster chain).
    fn chain(&self, img: &[u8], mut cluster: usize) -> io::Result<Vec<std::ops::Range<usize>>> {
        let mut v = Vec::new();
        while (2..self.clusters + 2).contains(&cluster) {
            if v.len() > self.clusters {
                return Err(invalid(format!("cluster chain loop at cluster {cluster}")));
            }
            let start = self.data + (cluster - 2) * self.cluster;
            v.push(start..start + self.cluster);
            let next = if self.fat12 {
                let o = self.fat + cluster + cluster / 2;
                let b =
                    img.get(o..o + 2).ok_or_else(|| invalid(format!("FAT entry {cluster} out of range")))?;
                let pair = usize::from(u16::from_le_bytes([b[0], b[1]]));
                if cluster.is_multiple_of(2) {
                    pair & 0xfff
                } else {
                    pair >> 4
                }
            } else {
                let o = self.fat + 2 * cluster;
                let b =
                    img.get(o..o + 2).ok_or_else(|| invalid(format!("FAT entry {cluster} out of range")))?;
                usize::from(u16::from_le_bytes([b[0], b[1]]))
            };
            cluster = next;
        }
        Ok(v)
    }
}

/// Works around fatfs 0.3.6 writing a long-name entry before the `.` and `..` entries of every
/// directory it creates (rust-fatfs issue 117; fixed upstream after 0.3.6): FAT requires `.` and
/// `..` in the first two slots, and fsck.fat reports (and would "repair" by deleting) the
/// directory otherwise. Each directory's first four slots `LFN(.) . LFN(..) ..` become
/// `. .. <deleted> <deleted>`, recursively from the root.
fn fix_dot_entries(img: &mut [u8]) -> io::Result<()> {
    let g = Geometry::read(img)?;
    // Directories to visit by first cluster; None is the root directory's fixed region.
    let mut dirs: Vec<Option<usize>> = vec![None];
    let mut seen = 0;
    while let Some(dir) = dirs.pop() {
        seen += 1;
        if seen > g.clusters + 1 {
            return Err(invalid("more directories than clusters".into()));
        }
        let mut ranges = Vec::new();
        match dir {
            None => ranges.push(g.root..g.root + g.root_len),
            Some(cluster) => {
                ranges = g.chain(img, cluster)?;
                if let Some(start) = ranges.first().map(|r| r.start) {
                    let slot = |i: usize| start + i * DIR_ENTRY;
                    let name = |img: &[u8], i: usize| img[slot(i)..slot(i) + 11].to_vec();
                    if img[slot(0) + 11] == ATTR_LFN
                        && name(img, 1) == b".          "
                        && img[slot(2) + 11] == ATTR_LFN
                        && name(img, 3) == b"..         "
                    {
                        img.copy_within(slot(1)..slot(2), slot(0));
                        img.copy_within(slot(3)..slot(4), slot(1));
                        for i in [2, 3] {
                            img[slot(i)..slot(i + 1)].fill(0);
                            img[slot(i)] = DELETED;
                        }
                    }
                }
            }
        }
        // Its subdirectories, up to the end-of-directory mark.
        for e in ranges.into_iter().flat_map(|r| r.step_by(DIR_ENTRY)) {
            let (first_byte, attr) = (img[e], img[e + 11]);
            if first_byte == 0 {
                break;
            }
            if first_byte == DELETED || first_byte == b'.' || attr == ATTR_LFN || attr & ATTR_DIRECTORY == 0 {
                continue;
            }
            let cluster = usize::from(u16::from_le_bytes([img[e + 26], img[e + 27]]));
            if !(2..g.clusters + 2).contains(&cluster) {
                return Err(invalid(format!("directory entry at byte {e} points to cluster {cluster}")));
            }
            dirs.push(Some(cluster));
        }
    }
    Ok(())
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
mod tests {
    use super::*;
    use std::io::Read;
    use std::process::Command;

    use virt_core::api::LocalObjectReference;

    const SCRIPT: &str = "#!/bin/sh\necho 'printed from cloud-init userdata'\n";

    fn info() -> SeedInfo {
        SeedInfo::new("testvm.default", "testvm")
    }

    fn inline(user: &str) -> CloudInitSource {
        CloudInitSource { user_data: Some(user.into()), ..Default::default() }
    }

    fn open(img: &[u8]) -> fatfs::FileSystem<RoImage> {
        fatfs::FileSystem::new(RoImage(Cursor::new(img.to_vec())), fatfs::FsOptions::new()).unwrap()
    }

    /// An owned copy of an image that refuses writes: fatfs wants Read + Write + Seek, and reading
    /// must not change the image.
    struct RoImage(Cursor<Vec<u8>>);
    impl io::Read for RoImage {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl io::Write for RoImage {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::other("the test image is read-only"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl io::Seek for RoImage {
        fn seek(&mut self, p: io::SeekFrom) -> io::Result<u64> {
            self.0.seek(p)
        }
    }

    fn read(fs: &fatfs::FileSystem<RoImage>, path: &str) -> Vec<u8> {
        let mut v = Vec::new();
        fs.root_dir().open_file(path).unwrap().read_to_end(&mut v).unwrap();
        v
    }

    fn names(dir: fatfs::Dir<'_, RoImage>) -> Vec<String> {
        let mut v: Vec<String> = dir
            .iter()
            .map(|e| e.unwrap())
            .filter(|e| !e.file_name().starts_with('.'))
            .map(|e| e.file_name())
            .collect();
        v.sort();
        v
    }

    fn tmpdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn nocloud_image_reads_back() {
        let d = tmpdir();
        let img = d.path().join("nocloud.img");
        let mut src = inline(SCRIPT);
        src.network_data = Some("version: 2\nethernets: {}\n".into());
        write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap();
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len(), 2 << 20);
        let fs = open(&bytes);
        assert_eq!(fs.volume_label(), "cidata");
        assert_eq!(fs.read_volume_label_from_root_dir().unwrap().as_deref(), Some("cidata"));
        assert_eq!(names(fs.root_dir()), ["meta-data", "network-config", "user-data"]);
        assert_eq!(
            String::from_utf8(read(&fs, "meta-data")).unwrap(),
            "instance-id: \"testvm.default\"\nlocal-hostname: \"testvm\"\n"
        );
        assert_eq!(read(&fs, "user-data"), SCRIPT.as_bytes());
        assert_eq!(read(&fs, "network-config"), b"version: 2\nethernets: {}\n");
        // Private to its owner, no temporary file left behind.
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&img).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn config_drive_image_reads_back() {
        let d = tmpdir();
        let img = d.path().join("configdrive.img");
        let src = CloudInitSource {
            user_data_base64: Some(LENIENT_BASE64.encode(SCRIPT)),
            network_data_base64: Some(LENIENT_BASE64.encode(r#"{"links":[]}"#)),
            ..Default::default()
        };
        let i = info().with_uuid("5D307CA9-B3EF-428C-8861-06E72D69F223");
        write_config_drive("cloudinitdisk", &src, &i, &img).unwrap();
        let fs = open(&std::fs::read(&img).unwrap());
        assert_eq!(fs.volume_label(), "config-2");
        assert_eq!(names(fs.root_dir()), ["openstack"]);
        assert_eq!(names(fs.root_dir().open_dir("openstack").unwrap()), ["latest"]);
        assert_eq!(
            names(fs.root_dir().open_dir("openstack/latest").unwrap()),
            ["meta_data.json", "network_data.json", "user_data"]
        );
        assert_eq!(
            String::from_utf8(read(&fs, "openstack/latest/meta_data.json")).unwrap(),
            r#"{"instance_id":"testvm.default","hostname":"testvm","uuid":"5D307CA9-B3EF-428C-8861-06E72D69F223"}"#
        );
        assert_eq!(read(&fs, "openstack/latest/user_data"), SCRIPT.as_bytes());
        assert_eq!(read(&fs, "openstack/latest/network_data.json"), br#"{"links":[]}"#);
    }

    #[test]
    fn same_input_same_bytes_and_rewrite_replaces() {
        let d = tmpdir();
        let (a, b) = (d.path().join("a.img"), d.path().join("b.img"));
        for kind in [SeedKind::NoCloud, SeedKind::ConfigDrive] {
            let w = |p: &Path, s: &str| match kind {
                SeedKind::NoCloud => write_nocloud("v", &inline(s), &info(), p),
                SeedKind::ConfigDrive => write_config_drive("v", &inline(s), &info(), p),
            };
            w(&a, SCRIPT).unwrap();
            w(&b, SCRIPT).unwrap();
            assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "{kind}");
            // Written again over an existing file: replaced, not appended to.
            w(&b, "#cloud-config\n").unwrap();
            let fs = open(&std::fs::read(&b).unwrap());
            let path = if kind == SeedKind::NoCloud { "user-data" } else { "openstack/latest/user_data" };
            assert_eq!(read(&fs, path), b"#cloud-config\n");
        }
        // Another instance: another volume serial.
        write_nocloud("v", &inline(SCRIPT), &SeedInfo::new("other.default", "other"), &b).unwrap();
        write_nocloud("v", &inline(SCRIPT), &info(), &a).unwrap();
        assert_ne!(
            open(&std::fs::read(&a).unwrap()).volume_id(),
            open(&std::fs::read(&b).unwrap()).volume_id()
        );
    }

    /// The raw 11-byte names and attributes of the first `n` slots of the directory at `cluster`.
    fn raw_slots(img: &[u8], cluster: usize, n: usize) -> Vec<(Vec<u8>, u8)> {
        let g = Geometry::read(img).unwrap();
        let start = g.data + (cluster - 2) * g.cluster;
        (0..n).map(|i| start + i * DIR_ENTRY).map(|o| (img[o..o + 11].to_vec(), img[o + 11])).collect()
    }

    /// The first cluster of the first subdirectory in the slots from `start` (`.` and `..` aside).
    fn first_subdir(img: &[u8], start: usize, len: usize) -> usize {
        (start..start + len)
            .step_by(DIR_ENTRY)
            .find(|o| img[*o] != b'.' && img[*o] != DELETED && img[*o + 11] == ATTR_DIRECTORY)
            .map(|o| usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])))
            .expect("a subdirectory")
    }

    #[test]
    fn dot_entries_come_first_in_every_directory() {
        let data = SeedData { user_data: SCRIPT.into(), network_data: None };
        let img = build_image(SeedKind::ConfigDrive, &data, &info(), Path::new("x")).unwrap();
        let g = Geometry::read(&img).unwrap();
        let openstack = first_subdir(&img, g.root, g.root_len);
        let latest = first_subdir(&img, g.data + (openstack - 2) * g.cluster, g.cluster);
        for (dir, parent) in [(openstack, 0), (latest, openstack)] {
            let slots = raw_slots(&img, dir, 4);
            assert_eq!(slots[0], (b".          ".to_vec(), ATTR_DIRECTORY));
            assert_eq!(slots[1], (b"..         ".to_vec(), ATTR_DIRECTORY));
            assert_eq!(slots[2].0[0], DELETED);
            assert_eq!(slots[3].0[0], DELETED);
            let o = g.data + (dir - 2) * g.cluster;
            assert_eq!(
                usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])),
                dir,
                "'.' points to itself"
            );
            let o = o + DIR_ENTRY;
            assert_eq!(
                usize::from(u16::from_le_bytes([img[o + 26], img[o + 27]])),
                parent,
                "'..' to the parent"
            );
        }
        // Garbage is refused, not a panic.
        assert!(fix_dot_entries(&mut [0u8; 100]).is_err());
        assert!(fix_dot_entries(&mut vec![0u8; 4096]).is_err());
        let mut cut = img[..64 * 1024].to_vec();
        assert!(fix_dot_entries(&mut cut).is_err());
    }

    #[test]
    fn public_keys_go_into_both_metadata_kinds() {
        let keys = vec!["ssh-ed25519 AAAAC3Nza me@host".to_string(), "ssh-rsa AAAAB3 \"quoted\"".to_string()];
        let info = info().with_public_keys(keys.clone());
        let data = SeedData { user_data: b"#cloud-config\n".to_vec(), network_data: None };
        let files = seed_files(SeedKind::NoCloud, &data, &info);
        let meta = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(
            meta.ends_with("public-keys:\n  - \"ssh-ed25519 AAAAC3Nza me@host\"\n  - \"ssh-rsa AAAAB3 \\\"quoted\\\"\"\n"),
            "{meta}"
        );
        let files = seed_files(SeedKind::ConfigDrive, &data, &info);
        let meta: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(meta["public_keys"]["0"], keys[0]);
        assert_eq!(meta["public_keys"]["1"], keys[1]);
        for bad in ["", "ssh-rsa AAAA\nssh-rsa BBBB"] {
            let e = self::info().with_public_keys(vec![bad.into()]).check().unwrap_err().to_string();
            assert!(e.contains("public_keys"), "{e}");
        }
    }

    #[test]
    fn derived_uuid_is_stable_and_well_formed() {
        let u = derived_uuid("testvm.default");
        assert!(is_uuid(&u), "{u}");
        assert_eq!(&u[14..15], "8");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        assert_eq!(u, derived_uuid("testvm.default"));
        assert_ne!(u, derived_uuid("testvm.other"));
    }

    #[test]
    fn for_vmi_follows_kubevirt() {
        let mut spec = VirtualMachineInstanceSpec::default();
        let i = SeedInfo::for_vmi("testvm", "ns1", &spec);
        assert_eq!(
            i,
            SeedInfo {
                instance_id: "testvm.ns1".into(),
                hostname: "testvm".into(),
                uuid: None,
                public_keys: Vec::new()
            }
        );
        spec.hostname = Some("h".repeat(70));
        spec.domain.firmware = Some(virt_core::model::Firmware {
            uuid: Some("5d307ca9-b3ef-428c-8861-06e72d69f223".into()),
            ..Default::default()
        });
        let i = SeedInfo::for_vmi("testvm", "ns1", &spec);
        assert_eq!(i.hostname, "h".repeat(63));
        assert_eq!(i.uuid.as_deref(), Some("5d307ca9-b3ef-428c-8861-06e72d69f223"));
    }

    #[test]
    fn base64_is_decoded_leniently_like_the_validator() {
        let enc = LENIENT_BASE64.encode("#cloud-config\nhostname: x\n");
        let unpadded = enc.trim_end_matches('=');
        let wrapped: String =
            enc.chars().collect::<Vec<_>>().chunks(8).map(|c| c.iter().collect::<String>() + "\n").collect();
        for form in [enc.as_str(), unpadded, wrapped.as_str()] {
            let src = CloudInitSource { user_data_base64: Some(form.into()), ..Default::default() };
            let data = SeedData::from_source("v", &src).unwrap();
            assert_eq!(data.user_data, b"#cloud-config\nhostname: x\n", "{form:?}");
        }
    }

    fn err(src: CloudInitSource) -> String {
        let d = tmpdir();
        let img = d.path().join("x.img");
        let e = write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap_err().to_string();
        assert!(!img.exists(), "nothing is written on error");
        e
    }

    #[test]
    fn bad_input_is_refused_by_field() {
        let e = err(CloudInitSource { user_data_base64: Some("not base64!".into()), ..Default::default() });
        assert!(e.contains("\"cloudinitdisk\": userDataBase64: not valid base64"), "{e}");
        let e = err(CloudInitSource {
            user_data: Some("x".into()),
            network_data_base64: Some("%%%%".into()),
            ..Default::default()
        });
        assert!(e.contains("networkDataBase64: not valid base64"), "{e}");

        let secret = Some(LocalObjectReference { name: Some("my-secret".into()) });
        let e = err(CloudInitSource { user_data_secret_ref: secret.clone(), ..Default::default() });
        assert_eq!(
            e,
            "cloud-init volume \"cloudinitdisk\": secretRef: the Secret was not resolved (the node reads it before \
             writing the seed); \
             put the data inline in userData or userDataBase64"
        );
        let e = err(CloudInitSource {
            user_data: Some("x".into()),
            network_data_secret_ref: secret,
            ..Default::default()
        });
        assert!(e.contains("networkDataSecretRef: the Secret was not resolved"), "{e}");
        assert!(e.contains("put the data inline in networkData or networkDataBase64"), "{e}");

        let e = err(CloudInitSource::default());
        assert!(e.contains("\"cloudinitdisk\": no user data: set userData or userDataBase64"), "{e}");

        let e = err(CloudInitSource {
            user_data: Some("x".into()),
            user_data_base64: Some("eA==".into()),
            ..Default::default()
        });
        assert!(e.contains("set only one of userData, userDataBase64"), "{e}");

        let big = "x".repeat(MAX_DATA_LEN + 1);
        let e = err(inline(&big));
        assert!(
            e.contains(&format!("userData: {} bytes, more than the {MAX_DATA_LEN} bytes", MAX_DATA_LEN + 1)),
            "{e}"
        );
        let e = err(CloudInitSource {
            user_data_base64: Some(LENIENT_BASE64.encode(&big)),
            ..Default::default()
        });
        assert!(e.contains("userDataBase64: 1048577 bytes, more than"), "{e}");
        // Absurd sizes are refused before decoding.
        let e = err(CloudInitSource { user_data_base64: Some("A".repeat(64 << 20)), ..Default::default() });
        assert!(e.contains("userDataBase64: 50331648 bytes, more than"), "{e}");
    }

    #[test]
    fn network_data_alone_gives_an_empty_user_data_file() {
        let src = CloudInitSource { network_data: Some("version: 2\n".into()), ..Default::default() };
        let data = SeedData::from_source("v", &src).unwrap();
        let fs = open(&build_image(SeedKind::NoCloud, &data, &info(), Path::new("x")).unwrap());
        assert_eq!(read(&fs, "user-data"), b"");
        assert_eq!(read(&fs, "network-config"), b"version: 2\n");
    }

    #[test]
    fn bad_metadata_is_refused() {
        let data = SeedData { user_data: b"x".to_vec(), network_data: None };
        for (i, want) in [
            (SeedInfo::new("", "h"), "instance_id \"\": must be 1 to 512 bytes"),
            (SeedInfo::new("a\"b", "h"), "instance_id \"a\\\"b\": may hold only"),
            (SeedInfo::new("a.b", "h\nx"), "hostname \"h\\nx\": may hold only"),
            (SeedInfo::new("a.b", "h".repeat(64)), "must be 1 to 63 bytes"),
            (SeedInfo::new("a.b", "h").with_uuid("nope"), "uuid \"nope\": is not a UUID"),
        ] {
            let e = build_image(SeedKind::ConfigDrive, &data, &i, Path::new("x")).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn write_seed_dispatches_on_the_volume_kind() {
        let d = tmpdir();
        let img = d.path().join("seed.img");
        let mut v = Volume { name: "cloudinitdisk".into(), ..Default::default() };
        let e = write_seed(&v, &info(), &img).unwrap_err().to_string();
        assert!(e.contains("\"cloudinitdisk\" is not a cloud-init volume"), "{e}");
        v.cloud_init_config_drive = Some(inline(SCRIPT));
        assert_eq!(write_seed(&v, &info(), &img).unwrap(), SeedKind::ConfigDrive);
        assert_eq!(open(&std::fs::read(&img).unwrap()).volume_label(), "config-2");
        v.cloud_init_config_drive = None;
        v.cloud_init_no_cloud = Some(inline(SCRIPT));
        assert_eq!(write_seed(&v, &info(), &img).unwrap(), SeedKind::NoCloud);
        assert_eq!(open(&std::fs::read(&img).unwrap()).volume_label(), "cidata");
    }

    #[test]
    fn the_largest_payload_fits() {
        let data =
            SeedData { user_data: vec![b'u'; MAX_DATA_LEN], network_data: Some(vec![b'n'; MAX_DATA_LEN]) };
        for kind in [SeedKind::NoCloud, SeedKind::ConfigDrive] {
            let img = build_image(kind, &data, &info(), Path::new("x")).unwrap();
            assert_eq!(img.len(), 4 << 20);
            let fs = open(&img);
            let p = if kind == SeedKind::NoCloud { "user-data" } else { "openstack/latest/user_data" };
            assert_eq!(read(&fs, p).len(), MAX_DATA_LEN);
        }
        // More, handed to build_image directly, is refused all the same.
        let data = SeedData { user_data: vec![b'u'; MAX_DATA_LEN + 1], network_data: None };
        let e = build_image(SeedKind::NoCloud, &data, &info(), Path::new("/x/seed.img")).unwrap_err();
        assert!(e.to_string().contains("/x/seed.img: user-data: 1048577 bytes, more than"), "{e}");
        // Every size in between formats and fits.
        for n in (0..=MAX_DATA_LEN).step_by(97 * 1024) {
            let data = SeedData { user_data: vec![b'u'; n], network_data: Some(vec![b'n'; n]) };
            let fs = open(&build_image(SeedKind::NoCloud, &data, &info(), Path::new("x")).unwrap());
            assert_eq!(read(&fs, "network-config").len(), n);
        }
    }

    #[test]
    fn a_missing_directory_is_an_io_error_naming_the_path() {
        let d = tmpdir();
        let img = d.path().join("no/such/dir/seed.img");
        let e = write_nocloud("v", &inline(SCRIPT), &info(), &img).unwrap_err().to_string();
        assert!(e.contains("no/such/dir/seed.img: creating a temporary file in its directory"), "{e}");
    }

    // --- the real tools, when installed (scripts/install-deps.sh installs dosfstools and mtools) ---

    fn tool(name: &str) -> bool {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            eprintln!("{name} not installed: skipping its checks (scripts/install-deps.sh installs it)");
        }
        found
    }

    fn run(cmd: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new(cmd).args(args).env("MTOOLS_SKIP_CHECK", "1").output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        (o.status.success(), text)
    }

    fn check_with_tools(img: &Path, label: &str, files: &[(&str, &[u8])]) {
        let p = img.to_str().unwrap();
        if tool("fsck.fat") {
            let (ok, out) = run("fsck.fat", &["-n", p]);
            assert!(ok, "fsck.fat -n {p}:\n{out}");
            assert!(
                !out.to_lowercase().contains("differ") && !out.contains("Leaving filesystem unchanged"),
                "{out}"
            );
            eprintln!("fsck.fat -n: {}", out.trim().replace('\n', " | "));
        }
        if tool("mdir") && tool("mtype") {
            for (path, content) in files {
                let dir = match path.rsplit_once('/') {
                    Some((d, _)) => format!("::/{d}"),
                    None => "::/".into(),
                };
                let (ok, out) = run("mdir", &["-i", p, &dir]);
                assert!(ok, "mdir {dir}:\n{out}");
                let base = path.rsplit('/').next().unwrap();
                assert!(out.contains(base), "mdir {dir} does not list {base}:\n{out}");
                let o = Command::new("mtype")
                    .args(["-i", p, &format!("::/{path}")])
                    .env("MTOOLS_SKIP_CHECK", "1")
                    .output()
                    .unwrap();
                assert!(o.status.success(), "mtype {path}: {}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(o.stdout, *content, "mtype {path}");
            }
        }
        if tool("blkid") {
            let (ok, out) = run("blkid", &["-p", "-o", "export", p]);
            assert!(ok, "blkid {p}:\n{out}");
            assert!(out.contains(&format!("LABEL={label}\n")), "blkid:\n{out}");
            assert!(out.contains("TYPE=vfat"), "blkid:\n{out}");
        }
        if tool("file") {
            let (ok, out) = run("file", &[p]);
            assert!(ok);
            assert!(out.contains(&format!("label: \"{label:<11}\"")), "file:\n{out}");
        }
    }

    #[test]
    fn real_tools_accept_the_nocloud_image() {
        let d = tmpdir();
        let img = d.path().join("nocloud.img");
        let mut src = inline(SCRIPT);
        src.network_data = Some("version: 2\n".into());
        write_nocloud("cloudinitdisk", &src, &info(), &img).unwrap();
        let meta = b"instance-id: \"testvm.default\"\nlocal-hostname: \"testvm\"\n";
        check_with_tools(
            &img,
            "cidata",
            &[("meta-data", meta), ("user-data", SCRIPT.as_bytes()), ("network-config", b"version: 2\n")],
        );
    }

    #[test]
    fn real_tools_accept_the_config_drive_image() {
        let d = tmpdir();
        let img = d.path().join("configdrive.img");
        let src = CloudInitSource {
            user_data: Some(SCRIPT.into()),
            network_data: Some(r#"{"links":[]}"#.into()),
            ..Default::default()
        };
        write_config_drive("cloudinitdisk", &src, &info(), &img).unwrap();
        let meta = format!(
            r#"{{"instance_id":"testvm.default","hostname":"testvm","uuid":"{}"}}"#,
            derived_uuid("testvm.default")
        );
        check_with_tools(
            &img,
            "config-2",
            &[
                ("openstack/latest/meta_data.json", meta.as_bytes()),
                ("openstack/latest/user_data", SCRIPT.as_bytes()),
                ("openstack/latest/network_data.json", br#"{"links":[]}"#),
            ],
        );
    }
}
