//! qcow2 header parsing and validation.
//!
//! Every field is checked before it is used, with checked arithmetic, against the file size and against
//! the limits QEMU applies, so a hostile header can neither panic nor make the reader allocate more than
//! a bound derived from the file size (tables must lie inside the file) and fixed caps (32 MiB L1 table,
//! 8 MiB refcount table, 2 MiB clusters).

use std::path::{Path, PathBuf};

use crate::format::FormatError;

/// `QFI\xfb`.
pub const MAGIC: u32 = 0x5146_49fb;
/// Smallest cluster size QEMU accepts (512 bytes).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster size QEMU accepts (2 MiB).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table QEMU accepts, in bytes.
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table QEMU accepts, in bytes.
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Most internal snapshots QEMU accepts.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name QEMU accepts.
pub const MAX_BACKING_NAME: u32 = 1023;
/// Length of a version 2 header.
pub const V2_HEADER_LEN: u32 = 72;
/// Length of the version 3 header we write (with the compression type byte, padded to 8).
pub const V3_HEADER_LEN: u32 = 112;

/// Incompatible feature bit 0: refcounts may be inconsistent.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image was marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Incompatible feature bit 3: the compression type field is not zlib.
pub const INCOMPAT_COMPRESSION: u64 = 1 << 3;
/// Incompatible feature bit 4: extended L2 entries (subclusters).
pub const INCOMPAT_EXTL2: u64 = 1 << 4;
/// All incompatible bits the qcow2 spec defines.
pub const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;

/// Header extension: backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension: feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension: bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension: full disk encryption header.
pub const EXT_CRYPTO: u32 = 0x0537_be77;
/// Header extension: external data file name.
pub const EXT_DATA_FILE: u32 = 0x4441_5441;

/// Offset of the `size` field.
pub const OFF_SIZE: u64 = 24;
/// Offset of the `l1_size` field (followed by `l1_table_offset`).
pub const OFF_L1: u64 = 36;
/// Offset of the `refcount_table_offset` field (followed by `refcount_table_clusters`).
pub const OFF_REFTABLE: u64 = 48;
/// Offset of the `incompatible_features` field.
pub const OFF_INCOMPAT: u64 = 72;
/// Offset of the `autoclear_features` field.
pub const OFF_AUTOCLEAR: u64 = 88;

/// A named feature from the feature name table extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number.
    pub bit: u8,
    /// Name.
    pub name: String,
}

/// A parsed and validated qcow2 header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// Offset of the backing file name in the first cluster (0: none).
    pub backing_file_offset: u64,
    /// Length of the backing file name.
    pub backing_file_size: u32,
    /// log2 of the cluster size, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Internal snapshots.
    pub nb_snapshots: u32,
    /// Offset of the snapshot table.
    pub snapshots_offset: u64,
    /// Incompatible feature bits.
    pub incompatible_features: u64,
    /// Compatible feature bits.
    pub compatible_features: u64,
    /// Autoclear feature bits.
    pub autoclear_features: u64,
    /// log2 of the refcount width in bits, 0..=6.
    pub refcount_order: u32,
    /// Header length in bytes.
    pub header_length: u32,
    /// Backing file name, if any.
    pub backing_file: Option<PathBuf>,
    /// Backing file format from the header extension, if any.
    pub backing_format: Option<String>,
    /// Feature name table, if present.
    pub feature_names: Vec<FeatureName>,
    /// Whether a bitmaps extension is present.
    pub has_bitmaps: bool,
}

fn be32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

impl Header {
    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes of guest data one L1 entry (one L2 table) maps.
    pub fn bytes_per_l1_entry(&self) -> u64 {
        // cluster_bits <= 21, so this is at most 2^39.
        1u64 << (2 * self.cluster_bits - 3)
    }

    /// L1 entries needed for a disk of `size` bytes with clusters of `1 << cluster_bits`.
    pub fn l1_entries_for(size: u64, cluster_bits: u32) -> u64 {
        size.div_ceil(1u64 << (2 * cluster_bits - 3))
    }

    /// Names the bits of `mask` of feature kind `kind` from the feature table ("dirty bit, bit 7").
    pub fn describe_features(&self, kind: u8, mask: u64) -> String {
        (0..64)
            .filter(|b| mask & (1u64 << b) != 0)
            .map(|b| match self.feature_names.iter().find(|f| f.kind == kind && u32::from(f.bit) == b) {
                Some(f) => format!("bit {b} ({})", f.name),
                None => format!("bit {b}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Parses and validates a header.
    ///
    /// `buf` is the start of the file, at least the first cluster or the whole file if it is shorter
    /// (the caller reads `min(file_len, 2 MiB)` bytes, or re-reads once `cluster_bits` is known);
    /// `file_len` is the file's length. `path` is used in error messages.
    pub fn parse(buf: &[u8], file_len: u64, path: &Path) -> Result<Header, FormatError> {
        let bad = |msg: String| FormatError::Header { path: path.to_path_buf(), msg };
        if buf.len() < V2_HEADER_LEN as usize {
            return Err(bad(format!(
                "truncated: {} bytes, a header needs at least {V2_HEADER_LEN}",
                buf.len()
            )));
        }
        let magic = be32(buf, 0);
        if magic != MAGIC {
            return Err(bad(format!("bad magic {magic:#010x}, expected {MAGIC:#010x} (QFI\\xfb)")));
        }
        let version = be32(buf, 4);
        if version != 2 && version != 3 {
            return Err(bad(format!("version {version} unsupported (only 2 and 3 exist)")));
        }
        let cluster_bits = be32(buf, 20);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {cluster_bits} out of range {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}"
            )));
        }
        let cluster_size = 1u64 << cluster_bits;
        let mut h = Header {
            version,
            backing_file_offset: be64(buf, 8),
            backing_file_size: be32(buf, 16),
            cluster_bits,
            size: be64(buf, 24),
            l1_size: be32(buf, 36),
            l1_table_offset: be64(buf, 40),
            refcount_table_offset: be64(buf, 48),
            refcount_table_clusters: be32(buf, 56),
            nb_snapshots: be32(buf, 60),
            snapshots_offset: be64(buf, 64),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN,
            backing_file: None,
            backing_format: None,
            feature_names: Vec::new(),
            has_bitmaps: false,
        };
        let crypt_method = be32(buf, 32);
        let mut compression_type = 0u8;
        if version == 3 {
            if buf.len() < 104 {
                return Err(bad(format!("truncated: {} bytes, a version 3 header needs 104", buf.len())));
            }
            h.incompatible_features = be64(buf, 72);
            h.compatible_features = be64(buf, 80);
            h.autoclear_features = be64(buf, 88);
            h.refcount_order = be32(buf, 96);
            h.header_length = be32(buf, 100);
            if h.header_length < 104 {
                return Err(bad(format!("header_length {} is less than 104", h.header_length)));
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(bad(format!(
                    "header_length {} is larger than the cluster size {cluster_size}",
                    h.header_length
                )));
            }
            if buf.len() < h.header_length as usize {
                return Err(bad(format!(
                    "truncated: {} bytes, header_length is {}",
                    buf.len(),
                    h.header_length
                )));
            }
            if h.header_length > 104 {
                compression_type = buf[104];
            }
        }
        // Feature names come from an extension but make the errors below readable, so parse
        // extensions (bounded by the first cluster) before judging feature bits.
        h.parse_extensions(buf, cluster_size, path)?;

        if h.refcount_order > 6 {
            return Err(bad(format!("refcount_order {} out of range 0..=6", h.refcount_order)));
        }
        if crypt_method != 0 {
            return Err(FormatError::Unsupported {
                path: path.to_path_buf(),
                what: format!("qcow2 encryption (crypt_method {crypt_method})"),
            });
        }
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::Unsupported {
                path: path.to_path_buf(),
                what: format!("qcow2 incompatible features {}", h.describe_features(0, unknown)),
            });
        }
        if h.incompatible_features & INCOMPAT_DATA_FILE != 0 {
            return Err(FormatError::Unsupported {
                path: path.to_path_buf(),
                what: "qcow2 external data file".into(),
            });
        }
        if h.incompatible_features & INCOMPAT_EXTL2 != 0 {
            return Err(FormatError::Unsupported {
                path: path.to_path_buf(),
                what: "qcow2 extended L2 entries (subclusters)".into(),
            });
        }
        match (compression_type, h.incompatible_features & INCOMPAT_COMPRESSION != 0) {
            (0, false) => {}
            (0, true) => {
                return Err(bad("compression type bit set but compression type is zlib".into()));
            }
            (_, false) => {
                return Err(bad(format!(
                    "compression type {compression_type} without the compression type bit"
                )));
            }
            (1, true) => {
                return Err(FormatError::Unsupported {
                    path: path.to_path_buf(),
                    what: "qcow2 zstd compression type".into(),
                });
            }
            (t, true) => return Err(bad(format!("unknown compression type {t}"))),
        }

        // L1 table: large enough for the disk, within QEMU's cap, inside the file.
        let needed = Self::l1_entries_for(h.size, cluster_bits);
        if u64::from(h.l1_size) < needed {
            return Err(bad(format!(
                "L1 table of {} entries is too small for disk size {} (needs {needed})",
                h.l1_size, h.size
            )));
        }
        let l1_bytes = u64::from(h.l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(bad(format!(
                "L1 table of {} entries is larger than {MAX_L1_BYTES} bytes",
                h.l1_size
            )));
        }
        if h.l1_size > 0 {
            check_table(&bad, "L1 table", h.l1_table_offset, l1_bytes, cluster_size, file_len)?;
        }
        // Refcount table.
        if h.refcount_table_clusters == 0 {
            return Err(bad("no refcount table (refcount_table_clusters is 0)".into()));
        }
        let rt_bytes = u64::from(h.refcount_table_clusters)
            .checked_mul(cluster_size)
            .filter(|b| *b <= MAX_REFTABLE_BYTES)
            .ok_or_else(|| {
                bad(format!(
                    "refcount table of {} clusters is larger than {MAX_REFTABLE_BYTES} bytes",
                    h.refcount_table_clusters
                ))
            })?;
        check_table(&bad, "refcount table", h.refcount_table_offset, rt_bytes, cluster_size, file_len)?;
        // Snapshot table: only bounds (the snapshots themselves are not read).
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(bad(format!("{} snapshots, more than {MAX_SNAPSHOTS}", h.nb_snapshots)));
        }
        if h.nb_snapshots > 0 {
            // Each snapshot entry is at least 40 bytes.
            check_table(
                &bad,
                "snapshot table",
                h.snapshots_offset,
                u64::from(h.nb_snapshots) * 40,
                cluster_size,
                file_len,
            )?;
        }
        // Backing file name: inside the first cluster, at most 1023 bytes.
        if h.backing_file_offset != 0 {
            if h.backing_file_size == 0 || h.backing_file_size > MAX_BACKING_NAME {
                return Err(bad(format!(
                    "backing file name length {} out of range 1..={MAX_BACKING_NAME}",
                    h.backing_file_size
                )));
            }
            let end = h
                .backing_file_offset
                .checked_add(u64::from(h.backing_file_size))
                .filter(|e| *e <= cluster_size)
                .ok_or_else(|| {
                    bad(format!(
                        "backing file name at {} length {} is outside the first cluster",
                        h.backing_file_offset, h.backing_file_size
                    ))
                })?;
            // end <= cluster_size <= 2 MiB, so these fit usize.
            let (start, end) = (h.backing_file_offset as usize, end as usize);
            let name = buf.get(start..end).ok_or_else(|| {
                bad(format!("truncated: backing file name at {start}..{end} is past the end of the file"))
            })?;
            use std::os::unix::ffi::OsStrExt;
            h.backing_file = Some(PathBuf::from(std::ffi::OsStr::from_bytes(name)));
        }
        Ok(h)
    }

    fn parse_extensions(&mut self, buf: &[u8], cluster_size: u64, path: &Path) -> Result<(), FormatError> {
        let bad = |msg: String| FormatError::Header { path: path.to_path_buf(), msg };
        // Extensions run from the end of the header to the backing file name or the end of the first
        // cluster, whichever is first; the buffer may be shorter (a truncated file).
        let mut end = cluster_size.min(buf.len() as u64);
        if self.backing_file_offset != 0 && self.backing_file_offset < end {
            end = self.backing_file_offset;
        }
        // Both bounded by the first cluster (2 MiB).
        let end = end as usize;
        let mut off = self.header_length as usize;
        while off + 8 <= end {
            let typ = be32(buf, off);
            let len = be32(buf, off + 4) as usize;
            if typ == 0 {
                break;
            }
            let data_start = off + 8;
            let data_end = data_start
                .checked_add(len)
                .filter(|e| *e <= end)
                .ok_or_else(|| bad(format!("header extension {typ:#x} at {off} of length {len} overruns the header area ({end} bytes)")))?;
            let data = &buf[data_start..data_end];
            match typ {
                EXT_BACKING_FORMAT => {
                    let name = String::from_utf8_lossy(data).trim_end_matches('\0').to_string();
                    self.backing_format = Some(name);
                }
                EXT_FEATURE_TABLE => {
                    self.feature_names = data
                        .chunks_exact(48)
                        .map(|e| FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name: String::from_utf8_lossy(&e[2..]).trim_end_matches('\0').to_string(),
                        })
                        .collect();
                }
                EXT_BITMAPS => self.has_bitmaps = true,
                // Encryption is refused by crypt_method, external data files by their incompatible bit;
                // other extensions may be ignored per the spec.
                _ => {}
            }
            // Padded to a multiple of 8.
            off = data_end.div_ceil(8) * 8;
        }
        Ok(())
    }

    /// Serialises the fixed part of a version 3 header (112 bytes, compression type zlib).
    pub fn encode_v3(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(V3_HEADER_LEN as usize);
        b.extend_from_slice(&MAGIC.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&self.backing_file_offset.to_be_bytes());
        b.extend_from_slice(&self.backing_file_size.to_be_bytes());
        b.extend_from_slice(&self.cluster_bits.to_be_bytes());
        b.extend_from_slice(&self.size.to_be_bytes());
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&self.l1_size.to_be_bytes());
        b.extend_from_slice(&self.l1_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_offset.to_be_bytes());
        b.extend_from_slice(&self.refcount_table_clusters.to_be_bytes());
        b.extend_from_slice(&self.nb_snapshots.to_be_bytes());
        b.extend_from_slice(&self.snapshots_offset.to_be_bytes());
        b.extend_from_slice(&self.incompatible_features.to_be_bytes());
        b.extend_from_slice(&self.compatible_features.to_be_bytes());
        b.extend_from_slice(&self.autoclear_features.to_be_bytes());
        b.extend_from_slice(&self.refcount_order.to_be_bytes());
        b.extend_from_slice(&V3_HEADER_LEN.to_be_bytes());
        b.resize(V3_HEADER_LEN as usize, 0);
        b
    }
}

/// A table at `offset` of `bytes` bytes must be cluster aligned and lie inside the file.
fn check_table(
    bad: &dyn Fn(String) -> FormatError,
    what: &str,
    offset: u64,
    bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), FormatError> {
    if offset == 0 || !offset.is_multiple_of(cluster_size) {
        return Err(bad(format!(
            "{what} offset {offset:#x} is not a nonzero multiple of the cluster size {cluster_size}"
        )));
    }
    match offset.checked_add(bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(bad(format!(
            "{what} at {offset:#x} of {bytes} bytes extends past the end of the file ({file_len} bytes)"
        ))),
    }
}
