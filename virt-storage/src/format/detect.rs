//! Format detection by magic numbers.
//!
//! Detection looks at the first 64 KiB of a file (and its last 512 bytes for a fixed VHD footer). What
//! matches no signature is raw. An ISO 9660 image (`CD001` at 0x8001) is raw data to a VM and converts
//! like raw.

use std::fs::File;
use std::path::Path;

use super::io::ImageFile;
use super::FormatError;

/// How many leading bytes detection looks at.
pub const SNIFF_LEN: usize = 64 * 1024;

/// A disk-image or stream format recognised by [`detect_path`] / [`detect_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    /// Plain bytes (nothing else matched).
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// ISO 9660 CD image (raw data).
    Iso9660,
    /// VMware VMDK (sparse extent or text descriptor). Unsupported.
    Vmdk,
    /// Microsoft VHD (dynamic or fixed). Unsupported.
    Vhd,
    /// Microsoft VHDX. Unsupported.
    Vhdx,
    /// LUKS encrypted volume. Unsupported.
    Luks,
    /// gzip stream.
    Gzip,
    /// xz stream.
    Xz,
    /// zstd stream.
    Zstd,
    /// bzip2 stream (detected; decompression unsupported).
    Bzip2,
}

impl ImageFormat {
    /// Short lower-case name, as `qemu-img` would spell it where it has one.
    pub fn name(self) -> &'static str {
        match self {
            ImageFormat::Raw => "raw",
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Iso9660 => "iso9660",
            ImageFormat::Vmdk => "vmdk",
            ImageFormat::Vhd => "vhd",
            ImageFormat::Vhdx => "vhdx",
            ImageFormat::Luks => "luks",
            ImageFormat::Gzip => "gzip",
            ImageFormat::Xz => "xz",
            ImageFormat::Zstd => "zstd",
            ImageFormat::Bzip2 => "bzip2",
        }
    }

    /// Whether this is a compressed stream rather than an image.
    pub fn is_compressed_stream(self) -> bool {
        matches!(self, ImageFormat::Gzip | ImageFormat::Xz | ImageFormat::Zstd | ImageFormat::Bzip2)
    }
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn at(buf: &[u8], off: usize, magic: &[u8]) -> bool {
    buf.get(off..off + magic.len()) == Some(magic)
}

/// Detects the format from the first bytes of a file (`head`, ideally [`SNIFF_LEN`] bytes) and, if
/// known, its last 512 bytes (`tail`, for the footer of a fixed VHD).
pub fn detect_bytes(head: &[u8], tail: Option<&[u8]>) -> ImageFormat {
    if at(head, 0, b"QFI\xfb") {
        return ImageFormat::Qcow2;
    }
    if at(head, 0, b"KDMV") || at(head, 0, b"COWD") || at(head, 0, b"# Disk DescriptorFile") {
        return ImageFormat::Vmdk;
    }
    if at(head, 0, b"vhdxfile") {
        return ImageFormat::Vhdx;
    }
    if at(head, 0, b"conectix") {
        return ImageFormat::Vhd;
    }
    if at(head, 0, b"LUKS\xba\xbe") {
        return ImageFormat::Luks;
    }
    if at(head, 0, &[0x1f, 0x8b, 0x08]) {
        return ImageFormat::Gzip;
    }
    if at(head, 0, &[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return ImageFormat::Xz;
    }
    if at(head, 0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        return ImageFormat::Zstd;
    }
    if at(head, 0, b"BZh") && head.get(3).is_some_and(|c| (b'1'..=b'9').contains(c)) && at(head, 4, b"1AY&SY")
    {
        return ImageFormat::Bzip2;
    }
    if let Some(t) = tail {
        // A fixed VHD is raw data followed by a 512-byte footer (511 bytes in very old images).
        if t.len() >= 512 && (at(t, t.len() - 512, b"conectix") || at(t, t.len() - 511, b"conectix")) {
            return ImageFormat::Vhd;
        }
    }
    if [0x8001, 0x8801, 0x9001].iter().any(|&o| at(head, o, b"CD001")) {
        return ImageFormat::Iso9660;
    }
    ImageFormat::Raw
}

/// Detects the format of the file at `path`.
pub fn detect_path(path: &Path) -> Result<ImageFormat, FormatError> {
    let f = File::open(path).map_err(|e| FormatError::io(path, "opening", e))?;
    detect_file(&f, path)
}

pub(crate) fn detect_file(f: &dyn ImageFile, path: &Path) -> Result<ImageFormat, FormatError> {
    let len = f.len().map_err(|e| FormatError::io(path, "getting size", e))?;
    let mut head = vec![0u8; SNIFF_LEN.min(usize::try_from(len).unwrap_or(SNIFF_LEN))];
    f.read_exact_at(&mut head, 0).map_err(|e| FormatError::io(path, "reading first bytes", e))?;
    let mut tail = [0u8; 512];
    let tail = if len >= 1024 {
        f.read_exact_at(&mut tail, len - 512).map_err(|e| FormatError::io(path, "reading last bytes", e))?;
        Some(&tail[..])
    } else {
        None
    };
    Ok(detect_bytes(&head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        assert_eq!(detect_bytes(b"QFI\xfb\0\0\0\x03", None), ImageFormat::Qcow2);
        assert_eq!(detect_bytes(b"KDMV\x01\0\0\0", None), ImageFormat::Vmdk);
        assert_eq!(detect_bytes(b"# Disk DescriptorFile\n", None), ImageFormat::Vmdk);
        assert_eq!(detect_bytes(b"vhdxfile", None), ImageFormat::Vhdx);
        assert_eq!(detect_bytes(b"conectix", None), ImageFormat::Vhd);
        assert_eq!(detect_bytes(&[0x1f, 0x8b, 8, 0], None), ImageFormat::Gzip);
        assert_eq!(detect_bytes(b"\xfd7zXZ\0", None), ImageFormat::Xz);
        assert_eq!(detect_bytes(&[0x28, 0xb5, 0x2f, 0xfd], None), ImageFormat::Zstd);
        assert_eq!(detect_bytes(b"BZh91AY&SY", None), ImageFormat::Bzip2);
        assert_eq!(detect_bytes(b"BZh", None), ImageFormat::Raw);
        assert_eq!(detect_bytes(b"", None), ImageFormat::Raw);
        let mut iso = vec![0u8; 0x9000];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(detect_bytes(&iso, None), ImageFormat::Iso9660);
        let mut tail = vec![0u8; 512];
        tail[..8].copy_from_slice(b"conectix");
        assert_eq!(detect_bytes(&[0u8; 4096], Some(&tail)), ImageFormat::Vhd);
        assert_eq!(detect_bytes(&[0u8; 4096], Some(&[0u8; 512])), ImageFormat::Raw);
    }
}
