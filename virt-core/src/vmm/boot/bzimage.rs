//! The bzImage setup header, and the kernel ELF packed inside a bzImage.
//!
//! A bzImage carries its kernel as a compressed ELF `vmlinux`; the setup header says where (payload
//! offset and length, boot protocol 2.08+). Decompressing that payload once on the host and entering the
//! ELF through PVH skips the guest's own decompressor, which is slow under nested virtualisation and
//! costs time on bare metal too. The result is cached, keyed by a hash of the bzImage, so later boots of
//! the same kernel only map the ELF.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Offset of the setup header in a bzImage.
const HDR_OFFSET: usize = 0x1f1;
/// "HdrS" at 0x202 marks a kernel with a setup header.
const HDR_MAGIC: u32 = 0x5372_6448;
/// Largest decompressed kernel accepted (a hostile payload could claim anything).
const MAX_VMLINUX: u64 = 512 << 20;

/// Errors of bzImage parsing and decompression.
#[derive(Debug, thiserror::Error)]
pub enum BzImageError {
    /// Not a bzImage.
    #[error("not a bzImage: {0}")]
    NotBzImage(&'static str),
    /// Header fields point outside the file.
    #[error("truncated bzImage: {0}")]
    Truncated(String),
    /// Boot protocol too old for what is asked.
    #[error("boot protocol {0:#x} is older than 2.08, which the payload fields need")]
    OldProtocol(u16),
    /// The payload uses a compression the VMM does not decompress.
    #[error("payload compressed with {0}, which the VMM does not decompress on the host")]
    UnsupportedCompression(&'static str),
    /// Decompression failed.
    #[error("cannot decompress the {codec} payload: {source}")]
    Decompress {
        /// Codec.
        codec: &'static str,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The decompressed payload is not an ELF file.
    #[error("the decompressed payload is not an ELF kernel")]
    NotElf,
}

/// The parts of the setup header the VMM uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupHeader {
    /// Number of 512-byte setup sectors (the real-mode part), after the boot sector.
    pub setup_sects: u8,
    /// Boot protocol version.
    pub version: u16,
    /// Size of the protected-mode code in 16-byte paragraphs.
    pub syssize: u32,
    /// Highest address an initramfs may end at.
    pub initrd_addr_max: u32,
    /// Longest command line, without the NUL (protocol 2.06+; 255 before).
    pub cmdline_size: u32,
    /// Extended load flags; bit 0: the kernel has a 64-bit entry point.
    pub xloadflags: u16,
    /// Offset of the compressed payload within the protected-mode code.
    pub payload_offset: u32,
    /// Length of the compressed payload.
    pub payload_length: u32,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

impl SetupHeader {
    /// Parses the header from the first bytes of a file (at least 0x250 bytes, or the whole file).
    pub fn parse(head: &[u8]) -> Result<Self, BzImageError> {
        if head.len() < 0x250 {
            return Err(BzImageError::NotBzImage("file shorter than a setup header"));
        }
        if le32(head, 0x202) != HDR_MAGIC {
            return Err(BzImageError::NotBzImage("no \"HdrS\" signature at 0x202"));
        }
        let version = le16(head, 0x206);
        let setup_sects = match head[HDR_OFFSET] {
            0 => 4,
            n => n,
        };
        Ok(Self {
            setup_sects,
            version,
            syssize: le32(head, 0x1f4),
            initrd_addr_max: if version >= 0x203 { le32(head, 0x22c) } else { 0x37ff_ffff },
            cmdline_size: if version >= 0x206 { le32(head, 0x238) } else { 255 },
            xloadflags: if version >= 0x20c { le16(head, 0x236) } else { 0 },
            payload_offset: le32(head, 0x248),
            payload_length: le32(head, 0x24c),
        })
    }

    /// File offset of the protected-mode code.
    pub fn kernel_offset(&self) -> u64 {
        (u64::from(self.setup_sects) + 1) * 512
    }

    /// Checks that the file is long enough for what the header claims.
    pub fn check_size(&self, file_len: u64) -> Result<(), BzImageError> {
        let need = self.kernel_offset() + u64::from(self.syssize) * 16;
        if file_len < need {
            return Err(BzImageError::Truncated(format!(
                "header says {need} bytes (setup {} sectors, {} paragraphs of kernel), file has {file_len}",
                self.setup_sects, self.syssize
            )));
        }
        Ok(())
    }

    /// Whether the kernel has a 64-bit entry point (XLF_KERNEL_64).
    pub fn has_64bit_entry(&self) -> bool {
        self.xloadflags & 1 != 0
    }
}

/// Compression codec identified by its magic bytes.
pub fn codec_of(payload: &[u8]) -> &'static str {
    match payload {
        [0x1f, 0x8b, ..] => "gzip",
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => "xz",
        [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
        [0x5d, 0, ..] => "lzma",
        [b'B', b'Z', b'h', ..] => "bzip2",
        [0x02, 0x21, 0x4c, 0x18, ..] | [0x04, 0x22, 0x4d, 0x18, ..] => "lz4",
        [0x89, b'L', b'Z', b'O', ..] => "lzo",
        [0x7f, b'E', b'L', b'F', ..] => "none",
        _ => "unknown",
    }
}

/// Extracts the kernel ELF from a whole bzImage held in memory.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>, BzImageError> {
    let hdr = SetupHeader::parse(bz)?;
    hdr.check_size(bz.len() as u64)?;
    if hdr.version < 0x208 {
        return Err(BzImageError::OldProtocol(hdr.version));
    }
    let start = hdr.kernel_offset() + u64::from(hdr.payload_offset);
    let end = start + u64::from(hdr.payload_length);
    if hdr.payload_length < 4 || end > bz.len() as u64 {
        return Err(BzImageError::Truncated(format!(
            "payload {start}..{end} lies beyond the file's {} bytes",
            bz.len()
        )));
    }
    let payload = &bz[start as usize..end as usize];
    // The kernel's build appends the decompressed size as the payload's last four bytes.
    let size_hint = u64::from(le32(payload, payload.len() - 4)).min(MAX_VMLINUX);
    let codec = codec_of(payload);
    let mut out = Vec::with_capacity(size_hint as usize);
    let res = match codec {
        "xz" => unxz_single_stream(payload, &mut out),
        "gzip" => flate2::read::GzDecoder::new(payload).take(MAX_VMLINUX + 1).read_to_end(&mut out),
        "none" => {
            out.extend_from_slice(payload);
            Ok(out.len())
        }
        other => return Err(BzImageError::UnsupportedCompression(other)),
    };
    res.map_err(|source| BzImageError::Decompress { codec, source })?;
    if out.len() as u64 > MAX_VMLINUX {
        return Err(BzImageError::Decompress {
            codec,
            source: std::io::Error::other(format!("decompressed kernel exceeds {MAX_VMLINUX} bytes")),
        });
    }
    if !out.starts_with(b"\x7fELF") {
        return Err(BzImageError::NotElf);
    }
    Ok(out)
}

/// Decompresses the first xz stream of `input` and ignores what follows it (the kernel's build appends
/// the decompressed size, which a stream-padding-aware reader would reject as corrupt).
fn unxz_single_stream(input: &[u8], out: &mut Vec<u8>) -> std::io::Result<usize> {
    use xz2::stream::{Action, Status, Stream};
    let mut s = Stream::new_stream_decoder(u64::MAX, 0).map_err(std::io::Error::other)?;
    let mut consumed = 0usize;
    loop {
        if out.capacity() - out.len() < (1 << 20) {
            out.reserve(4 << 20);
        }
        let before_in = s.total_in();
        let status = s.process_vec(&input[consumed..], out, Action::Run).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("corrupt xz stream: {e}"))
        })?;
        consumed += (s.total_in() - before_in) as usize;
        if status == Status::StreamEnd {
            return Ok(out.len());
        }
        if out.len() as u64 > MAX_VMLINUX {
            return Ok(out.len());
        }
        if consumed >= input.len() && out.capacity() > out.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "xz stream ends early"));
        }
    }
}

/// A 64-bit content hash (not cryptographic) used to key the decompressed-kernel cache.
pub fn content_hash(data: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = data.len() as u64 ^ K;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    for &b in chunks.remainder() {
        h = (h.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
    }
    h ^ (h >> 29)
}

/// Where the decompressed kernel of `bz` lives in `cache_dir`.
pub fn cache_path(cache_dir: &Path, bz: &[u8]) -> PathBuf {
    cache_dir.join(format!("vmlinux-{:016x}-{}", content_hash(bz), bz.len()))
}

/// Returns a path to the kernel ELF inside `bz`, decompressing it into `cache_dir` if it is not there.
/// The bool says whether the cache already held it.
pub fn cached_vmlinux(cache_dir: &Path, bz: &[u8]) -> Result<(PathBuf, bool), BzImageError> {
    let path = cache_path(cache_dir, bz);
    if path.is_file() {
        return Ok((path, true));
    }
    let elf = extract_vmlinux(bz)?;
    let io = |source| BzImageError::Decompress { codec: "cache", source };
    std::fs::create_dir_all(cache_dir).map_err(io)?;
    let tmp = cache_dir.join(format!(".tmp-{}-{}", std::process::id(), content_hash(bz)));
    std::fs::write(&tmp, &elf).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok((path, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic bzImage whose payload is `payload`.
    pub(crate) fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
        let setup_sects = 4u8;
        let koff = (setup_sects as usize + 1) * 512;
        let mut bz = vec![0u8; koff];
        bz[HDR_OFFSET] = setup_sects;
        bz[0x202..0x206].copy_from_slice(&HDR_MAGIC.to_le_bytes());
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        let mut body = vec![0u8; 16];
        body.extend_from_slice(payload);
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let syssize = body.len().div_ceil(16) as u32;
        body.resize(syssize as usize * 16, 0);
        bz[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        bz.extend_from_slice(&body);
        bz
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        xz2::read::XzEncoder::new(data, 1).read_to_end(&mut out).unwrap();
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn extracts_xz_and_gzip_payloads() {
        let elf = [b"\x7fELF".as_slice(), &[7u8; 5000]].concat();
        assert_eq!(extract_vmlinux(&fake_bzimage(&xz(&elf))).unwrap(), elf);
        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(elf.as_slice(), flate2::Compression::fast())
            .read_to_end(&mut gz)
            .unwrap();
        gz.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        assert_eq!(extract_vmlinux(&fake_bzimage(&gz)).unwrap(), elf);
    }

    #[test]
    fn rejects_bad_inputs_with_reasons() {
        assert!(matches!(extract_vmlinux(&[0u8; 100]), Err(BzImageError::NotBzImage(_))));
        assert!(matches!(extract_vmlinux(&[0u8; 0x1000]), Err(BzImageError::NotBzImage(_))));
        let bz = fake_bzimage(&xz(b"\x7fELF0123456789"));
        assert!(matches!(extract_vmlinux(&bz[..bz.len() - 20]), Err(BzImageError::Truncated(_))));
        let zstd = fake_bzimage(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]);
        assert!(matches!(extract_vmlinux(&zstd), Err(BzImageError::UnsupportedCompression("zstd"))));
        let mut corrupt = xz(b"\x7fELF0123456789");
        corrupt[20] ^= 0xff;
        assert!(matches!(extract_vmlinux(&fake_bzimage(&corrupt)), Err(BzImageError::Decompress { .. })));
        assert!(matches!(extract_vmlinux(&fake_bzimage(&xz(b"not an elf"))), Err(BzImageError::NotElf)));
    }

    #[test]
    fn cache_is_reused() {
        let dir = std::env::temp_dir().join(format!("bzcache-{}", std::process::id()));
        let bz = fake_bzimage(&xz(b"\x7fELF-cached"));
        let (p1, hit1) = cached_vmlinux(&dir, &bz).unwrap();
        let (p2, hit2) = cached_vmlinux(&dir, &bz).unwrap();
        assert_eq!((p1.clone(), hit1, hit2), (p2, false, true));
        assert_eq!(std::fs::read(p1).unwrap(), b"\x7fELF-cached");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
