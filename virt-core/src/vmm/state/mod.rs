//! The state seam: every stateful part of the microVM saves itself into a versioned, checksummed
//! section and restores from one, in the spirit of Firecracker's `Persist` and Cloud Hypervisor's
//! `Snapshottable`. Snapshots ([`crate::vmm::snapshot`]) and live migration
//! ([`crate::vmm::migration`]) carry the same stream of sections.
//!
//! A state stream is the magic [`MAGIC`], then sections, then an `end` section holding the number of
//! sections before it (so a stream cut at a section boundary is refused too). A section is:
//!
//! ```text
//!   name: 16 bytes (ASCII, NUL-padded) | version: u16 | min_reader: u16 | len: u32 | crc32: u32 | payload
//! ```
//!
//! all little endian. `version` is the layout the writer used; `min_reader` the oldest reader version
//! that can still read it (a writer that only appends fields keeps `min_reader` low). A reader whose
//! own version is below `min_reader` refuses the section with an error naming it; a section older than
//! the reader is read (the reader fills defaults for what it lacks).

mod codec;
pub mod cpu;

pub use codec::{Decoder, Encoder};

/// First bytes of every state stream.
pub const MAGIC: [u8; 8] = *b"VCSTATE1";
/// Length of a section name.
pub const NAME_LEN: usize = 16;
/// Bytes of a section header.
pub const HEADER_LEN: usize = NAME_LEN + 2 + 2 + 4 + 4;
/// Largest section payload accepted (a guard against hostile lengths; real sections are a few KiB).
pub const MAX_SECTION: usize = 16 << 20;
const END: &str = "end";

/// Errors of the state format and of restoring state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The stream does not start with [`MAGIC`].
    #[error("not a state stream: the first bytes are {found:02x?}, expected {MAGIC:02x?} (\"VCSTATE1\")")]
    BadMagic {
        /// The bytes found.
        found: Vec<u8>,
    },
    /// The stream ended inside a header or payload.
    #[error("state truncated in {what}: {need} more bytes needed at offset {at}, the stream has {have}")]
    Truncated {
        /// What was being read (a section name or "header").
        what: String,
        /// Bytes needed.
        need: usize,
        /// Offset where they were needed.
        at: usize,
        /// Bytes available from there.
        have: usize,
    },
    /// The stream has no `end` section, or sections follow it.
    #[error("state stream {0}")]
    BadEnd(String),
    /// A payload does not match its checksum.
    #[error("section `{name}` is corrupted: crc32 {found:#010x}, header says {expected:#010x}")]
    Checksum {
        /// Section name.
        name: String,
        /// Checksum of the payload read.
        found: u32,
        /// Checksum in the header.
        expected: u32,
    },
    /// A section was written by a newer build in a layout this build cannot read.
    #[error(
        "section `{name}` has version {version} and needs a reader of version >= {min_reader}; this \
         build reads version {ours}: restore with a newer build"
    )]
    TooNew {
        /// Section name.
        name: String,
        /// Its version.
        version: u16,
        /// The oldest reader it allows.
        min_reader: u16,
        /// The reader's version.
        ours: u16,
    },
    /// A section the restore needs is missing.
    #[error("section `{0}` is missing from the state")]
    Missing(String),
    /// A section's payload is well-framed but its content is not valid.
    #[error("section `{name}`: {msg}")]
    Invalid {
        /// Section name.
        name: String,
        /// What is wrong.
        msg: String,
    },
    /// The section name is too long or not ASCII.
    #[error("section name `{0}` is not 1-16 ASCII characters")]
    BadName(String),
}

/// One section of a state stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name, unique in the stream (e.g. `vcpu0`, `vm`, `serial`, `virtio-mmio0`).
    pub name: String,
    /// Layout version of the payload.
    pub version: u16,
    /// Oldest reader version that can read the payload.
    pub min_reader: u16,
    /// The payload.
    pub payload: Vec<u8>,
}

impl Section {
    /// Checks that a reader of version `ours` can read this section and returns a decoder on it.
    pub fn reader(&self, ours: u16) -> Result<Decoder<'_>, StateError> {
        if self.min_reader > ours {
            return Err(StateError::TooNew {
                name: self.name.clone(),
                version: self.version,
                min_reader: self.min_reader,
                ours,
            });
        }
        Ok(Decoder::new(&self.name, &self.payload))
    }
}

/// Something whose state is a section: every device, the vCPUs and the VM implement it.
///
/// `save` runs with the vCPUs paused and the device quiesced; `restore` runs on a freshly built,
/// not yet started part of the same configuration.
pub trait Persist {
    /// Layout version this build writes and reads.
    const VERSION: u16;
    /// Oldest reader version that can read what this build writes.
    const MIN_READER: u16 = 1;
    /// Writes the state's payload.
    fn save(&self, out: &mut Encoder) -> Result<(), StateError>;
    /// Reads a payload of `version` (<= [`Persist::VERSION`] or readable by it).
    fn restore(&mut self, version: u16, input: &mut Decoder<'_>) -> Result<(), StateError>;

    /// Saves into a section named `name`.
    fn to_section(&self, name: &str) -> Result<Section, StateError> {
        let mut e = Encoder::default();
        self.save(&mut e)?;
        Ok(Section { name: name.into(), version: Self::VERSION, min_reader: Self::MIN_READER, payload: e.0 })
    }

    /// Restores from `section`, refusing a newer layout it cannot read and trailing bytes it does not
    /// know (which a same-version writer never leaves).
    fn load_section(&mut self, section: &Section) -> Result<(), StateError> {
        let mut d = section.reader(Self::VERSION)?;
        self.restore(section.version, &mut d)?;
        if section.version <= Self::VERSION {
            d.finish()?;
        }
        Ok(())
    }
}

/// The device-state hook: every device on the microVM's buses implements it, so a new device (e.g.
/// virtio-net) joins snapshots and migration by implementing two methods.
pub trait DeviceState: Send {
    /// Saves the device's state into a section (name given by the VMM).
    fn save_section(&mut self, name: &str) -> Result<Section, StateError>;
    /// Restores the device from its section.
    fn restore_section(&mut self, section: &Section) -> Result<(), StateError>;
    /// Makes the device's writes durable (a disk flushes) before a snapshot.
    fn flush(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// Resumes work stopped by [`DeviceState::save_section`] (workers), when the source continues.
    fn resume(&mut self) -> Result<(), StateError> {
        Ok(())
    }
}

/// CRC-32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Encodes sections into a state stream (with the `end` section).
pub fn write_stream(sections: &[Section]) -> Result<Vec<u8>, StateError> {
    let mut out = MAGIC.to_vec();
    for s in sections {
        write_section(&mut out, s)?;
    }
    let end = Section {
        name: END.into(),
        version: 1,
        min_reader: 1,
        payload: (sections.len() as u32).to_le_bytes().to_vec(),
    };
    write_section(&mut out, &end)?;
    Ok(out)
}

/// Appends one framed section to `out`.
pub fn write_section(out: &mut Vec<u8>, s: &Section) -> Result<(), StateError> {
    let name = s.name.as_bytes();
    if name.is_empty() || name.len() > NAME_LEN || !s.name.is_ascii() || name.contains(&0) {
        return Err(StateError::BadName(s.name.clone()));
    }
    if s.payload.len() > MAX_SECTION {
        return Err(StateError::Invalid {
            name: s.name.clone(),
            msg: format!("payload of {} bytes exceeds the {MAX_SECTION}-byte limit", s.payload.len()),
        });
    }
    let mut n = [0u8; NAME_LEN];
    n[..name.len()].copy_from_slice(name);
    out.extend_from_slice(&n);
    out.extend_from_slice(&s.version.to_le_bytes());
    out.extend_from_slice(&s.min_reader.to_le_bytes());
    out.extend_from_slice(&(s.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32(&s.payload).to_le_bytes());
    out.extend_from_slice(&s.payload);
    Ok(())
}

/// Reads one framed section at the start of `buf`; returns it and the bytes it used.
pub fn read_section(buf: &[u8], at: usize) -> Result<(Section, usize), StateError> {
    let trunc =
        |what: &str, need: usize, have: usize| StateError::Truncated { what: what.into(), need, at, have };
    let hdr = buf.get(..HEADER_LEN).ok_or_else(|| trunc("a section header", HEADER_LEN, buf.len()))?;
    let name_bytes = &hdr[..NAME_LEN];
    let end = name_bytes.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
    if end == 0 || !name_bytes[..end].is_ascii() || name_bytes[end..].iter().any(|&b| b != 0) {
        return Err(StateError::BadName(name));
    }
    let le16 = |o: usize| u16::from_le_bytes([hdr[o], hdr[o + 1]]);
    let le32 = |o: usize| u32::from_le_bytes([hdr[o], hdr[o + 1], hdr[o + 2], hdr[o + 3]]);
    let version = le16(NAME_LEN);
    let min_reader = le16(NAME_LEN + 2);
    let len = le32(NAME_LEN + 4) as usize;
    let expected = le32(NAME_LEN + 8);
    if len > MAX_SECTION {
        return Err(StateError::Invalid {
            name,
            msg: format!("length {len} exceeds the {MAX_SECTION}-byte limit"),
        });
    }
    let rest = &buf[HEADER_LEN..];
    let payload = rest.get(..len).ok_or_else(|| StateError::Truncated {
        what: format!("section `{name}`"),
        need: len,
        at: at + HEADER_LEN,
        have: rest.len(),
    })?;
    let found = crc32(payload);
    if found != expected {
        return Err(StateError::Checksum { name, found, expected });
    }
    Ok((Section { name, version, min_reader, payload: payload.to_vec() }, HEADER_LEN + len))
}

/// Parses a whole state stream into its sections (without the `end` section).
pub fn read_stream(buf: &[u8]) -> Result<Vec<Section>, StateError> {
    let magic = buf.get(..MAGIC.len()).unwrap_or(buf);
    if magic != MAGIC {
        return Err(StateError::BadMagic { found: magic.to_vec() });
    }
    let mut at = MAGIC.len();
    let mut sections = Vec::new();
    loop {
        if at == buf.len() {
            return Err(StateError::BadEnd(format!(
                "ends after {} sections without its `end` section (truncated?)",
                sections.len()
            )));
        }
        let (s, used) = read_section(&buf[at..], at)?;
        at += used;
        if s.name == END {
            let count = s.payload.get(..4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            if count != Some(sections.len() as u32) {
                return Err(StateError::BadEnd(format!(
                    "`end` section counts {count:?} sections, {} were read",
                    sections.len()
                )));
            }
            if at != buf.len() {
                return Err(StateError::BadEnd(format!(
                    "has {} bytes after its `end` section",
                    buf.len() - at
                )));
            }
            return Ok(sections);
        }
        if sections.iter().any(|p: &Section| p.name == s.name) {
            return Err(StateError::Invalid { name: s.name, msg: "appears twice".into() });
        }
        sections.push(s);
    }
}

/// Finds section `name`.
pub fn find<'a>(sections: &'a [Section], name: &str) -> Result<&'a Section, StateError> {
    sections.iter().find(|s| s.name == name).ok_or_else(|| StateError::Missing(name.into()))
}

#[cfg(test)]
mod tests;
