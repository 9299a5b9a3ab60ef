//! Opening a machine's disk for a VMM that serves disks itself (the native microVM): the format the
//! spec declares, never sniffed, so a guest cannot turn its raw disk into a qcow2 image whose header
//! points at host files; read-only for CD-ROMs and read-only disks.

use std::sync::Arc;

use virt_core::block::BlockBackend;
use virt_core::machine::{DiskFormat, DiskOpenError, DiskOpener, DiskSpec};

use super::{FormatError, Qcow2, Qcow2OpenOptions, RawImage};

/// Opens `disk` as its declared format.
pub fn open_disk(disk: &DiskSpec) -> Result<Arc<dyn BlockBackend>, FormatError> {
    let read_only = disk.read_only || disk.cdrom;
    Ok(match disk.format {
        DiskFormat::Raw => Arc::new(RawImage::open(&disk.path, read_only)?),
        DiskFormat::Qcow2 => {
            let opts = Qcow2OpenOptions { read_only, ..Default::default() };
            Arc::new(Qcow2::open(&disk.path, &opts)?)
        }
    })
}

/// [`open_disk`] as the native backend's [`DiskOpener`].
pub fn disk_opener() -> DiskOpener {
    Arc::new(|disk: &DiskSpec| {
        open_disk(disk).map_err(|e| DiskOpenError {
            disk: disk.name.clone(),
            path: disk.path.clone(),
            source: Box::new(e),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virt_core::machine::DiskBus;

    fn spec(path: &std::path::Path, format: DiskFormat, cdrom: bool) -> DiskSpec {
        DiskSpec {
            name: "d".into(),
            path: path.to_path_buf(),
            format,
            bus: DiskBus::Virtio,
            read_only: false,
            cdrom,
            boot_order: None,
            serial: None,
        }
    }

    #[test]
    fn the_declared_format_is_used_and_cdroms_are_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let qcow = dir.path().join("a.qcow2");
        Qcow2::create(&qcow, &crate::format::Qcow2CreateOptions { size: 1 << 20, ..Default::default() })
            .unwrap();
        // A qcow2 file declared raw is served raw: its header is guest data, never interpreted.
        let raw = open_disk(&spec(&qcow, DiskFormat::Raw, false)).unwrap();
        assert_eq!(raw.size(), std::fs::metadata(&qcow).unwrap().len());
        let q = open_disk(&spec(&qcow, DiskFormat::Qcow2, false)).unwrap();
        assert_eq!(q.size(), 1 << 20);
        let ro = open_disk(&spec(&qcow, DiskFormat::Qcow2, true)).unwrap();
        assert!(ro.read_only());
        // A raw file declared qcow2 is refused, naming the file.
        let plain = dir.path().join("b.img");
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let e = (disk_opener())(&spec(&plain, DiskFormat::Qcow2, false)).err().unwrap();
        assert!(e.to_string().contains("b.img"), "{e}");
    }
}
