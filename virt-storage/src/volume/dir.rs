//! [`DirPool`]: volumes as raw or qcow2 files in a directory, one folder per namespace.
//!
//! ```text
//! ROOT/NAMESPACE/NAME.img | NAME.qcow2           volumes
//! ROOT/NAMESPACE/.snapshots/NAME@SNAP.{img,qcow2} snapshots
//! ROOT/NAMESPACE/.importing/NAME.{img,qcow2}     imports in progress (never listed as volumes)
//! ```
//!
//! Overlays store their backing file as a path relative to their own folder, so a pool can be moved.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    reflink, CloneOptions, CloneOutcome, CloneStrategy, StorageProfile, Volume, VolumeError, VolumeFormat,
    VolumeId, VolumeProvider,
};
use crate::format::qcow2::{Qcow2, Qcow2CreateOptions, Qcow2OpenOptions};
use crate::format::{open_image, sparse::sparse_copy, DiskImage, ImageFormat};

const SNAPSHOTS: &str = ".snapshots";
const IMPORTING: &str = ".importing";

/// A pool of volumes in a directory.
#[derive(Debug)]
pub struct DirPool {
    root: PathBuf,
    reflink: Result<(), reflink::ReflinkError>,
}

impl DirPool {
    /// Opens (creating if needed) a pool at `root` and probes what its file system supports.
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let reflink = reflink::probe(&root);
        Ok(Self { root, reflink })
    }

    /// The pool's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ns_dir(&self, ns: &str) -> PathBuf {
        self.root.join(ns)
    }

    fn file(&self, id: &VolumeId, format: VolumeFormat) -> PathBuf {
        self.ns_dir(&id.namespace).join(format!("{}.{}", id.name, format.ext()))
    }

    fn snapshot_file(&self, id: &VolumeId, snap: &str, format: VolumeFormat) -> PathBuf {
        self.ns_dir(&id.namespace).join(SNAPSHOTS).join(format!("{}@{snap}.{}", id.name, format.ext()))
    }

    fn io(id: &VolumeId, op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
        let (id, path) = (id.clone(), path.to_path_buf());
        move |source| VolumeError::Io { id, op, path, source }
    }

    /// The file and format of an existing volume.
    fn locate(&self, id: &VolumeId) -> Result<Option<(PathBuf, VolumeFormat)>, VolumeError> {
        id.validate()?;
        for f in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
            let p = self.file(id, f);
            if p.exists() {
                return Ok(Some((p, f)));
            }
        }
        Ok(None)
    }

    fn must_locate(&self, id: &VolumeId) -> Result<(PathBuf, VolumeFormat), VolumeError> {
        self.locate(id)?.ok_or_else(|| VolumeError::NotFound(id.clone()))
    }

    fn ensure_absent(&self, id: &VolumeId) -> Result<(), VolumeError> {
        if self.locate(id)?.is_some() {
            return Err(VolumeError::AlreadyExists(id.clone()));
        }
        Ok(())
    }

    fn describe(&self, id: &VolumeId, path: &Path, format: VolumeFormat) -> Result<Volume, VolumeError> {
        let meta = std::fs::metadata(path).map_err(Self::io(id, "stat", path))?;
        let allocated = meta.blocks() * 512;
        let (size, backing) = match format {
            VolumeFormat::Raw => (meta.len(), None),
            VolumeFormat::Qcow2 => {
                let q = Qcow2::open(
                    path,
                    &Qcow2OpenOptions {
                        backing: crate::format::qcow2::BackingPolicy::Detached,
                        ..Default::default()
                    },
                )?;
                let h = q.header();
                let backing = h.backing_file.as_ref().and_then(|b| self.volume_of_backing(path, b));
                (h.size, backing)
            }
        };
        Ok(Volume { id: id.clone(), path: path.to_path_buf(), format, size, allocated, backing })
    }

    /// Maps an overlay's backing-file name to the pool volume it names, if it is one.
    fn volume_of_backing(&self, overlay: &Path, backing: &Path) -> Option<VolumeId> {
        let full = overlay.parent()?.join(backing);
        let name = full.file_stem()?.to_str()?.to_string();
        let ns_dir = full.parent()?;
        let ns = ns_dir.file_name()?.to_str()?.to_string();
        let canon_root = self.root.canonicalize().ok()?;
        let canon_ns = ns_dir.canonicalize().ok()?;
        (canon_ns.parent()? == canon_root).then(|| VolumeId::new(ns, name))
    }

    fn check_size(id: &VolumeId, size: u64) -> Result<(), VolumeError> {
        if size == 0 || !size.is_multiple_of(512) {
            return Err(VolumeError::BadSize {
                id: id.clone(),
                reason: format!("size {size} must be a positive multiple of 512 bytes"),
            });
        }
        Ok(())
    }

    fn mkdirs(&self, id: &VolumeId, dir: &Path) -> Result<(), VolumeError> {
        std::fs::create_dir_all(dir).map_err(Self::io(id, "creating folder", dir))
    }

    /// Copies `src_path` to `dst_path` with `strategy`; returns bytes copied.
    fn copy_file(
        &self,
        id: &VolumeId,
        src_path: &Path,
        dst_path: &Path,
        strategy: CloneStrategy,
    ) -> Result<u64, VolumeError> {
        match strategy {
            CloneStrategy::Reflink => {
                let src = File::open(src_path).map_err(Self::io(id, "opening", src_path))?;
                let dst = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(dst_path)
                    .map_err(Self::io(id, "creating", dst_path))?;
                if let Err(e) = reflink::reflink(&src, &dst) {
                    let _ = std::fs::remove_file(dst_path);
                    return Err(VolumeError::Io {
                        id: id.clone(),
                        op: "reflinking into",
                        path: dst_path.into(),
                        source: e,
                    });
                }
                Ok(0)
            }
            CloneStrategy::HostAssisted => {
                let st = sparse_copy(src_path, dst_path)?;
                Ok(st.bytes_written)
            }
            CloneStrategy::Overlay => Err(VolumeError::Strategy {
                src: id.clone(),
                strategy,
                reason: "an overlay is not a file copy".into(),
            }),
        }
    }

    /// Clones the file of `src` to `dst_path` (a volume or a snapshot file), picking a strategy.
    fn clone_into(
        &self,
        src: &VolumeId,
        src_path: &Path,
        src_format: VolumeFormat,
        dst_path: &Path,
        opts: CloneOptions,
        allow_overlay: bool,
    ) -> Result<(CloneStrategy, Option<String>, u64, VolumeFormat), VolumeError> {
        let overlay_path = dst_path.with_extension(VolumeFormat::Qcow2.ext());
        let try_overlay = |this: &Self| -> Result<(), VolumeError> {
            let size = this.describe(src, src_path, src_format)?.size;
            // An absolute backing name: snapshots and restores copy the overlay into other folders
            // (`.snapshots/`, another namespace), where a relative name would point nowhere.
            let backing = std::fs::canonicalize(src_path).unwrap_or_else(|_| src_path.to_path_buf());
            Qcow2::create(
                &overlay_path,
                &Qcow2CreateOptions {
                    size,
                    backing_file: Some(backing),
                    backing_format: Some(match src_format {
                        VolumeFormat::Raw => ImageFormat::Raw,
                        VolumeFormat::Qcow2 => ImageFormat::Qcow2,
                    }),
                    ..Default::default()
                },
            )?;
            Ok(())
        };
        let mut reasons = Vec::new();
        if let (None, Err(why)) = (opts.strategy, &self.reflink) {
            // The profile leaves reflinks out where they do not work; a clone still says why it is
            // not the instant, independent kind.
            reasons.push(format!("{}: {why}", CloneStrategy::Reflink));
        }
        let order: Vec<CloneStrategy> = match opts.strategy {
            Some(s) => vec![s],
            None => self.profile().clone_strategies,
        };
        for s in order {
            let res = match s {
                CloneStrategy::Reflink => match &self.reflink {
                    Err(why) => Err(why.to_string()),
                    Ok(()) => self
                        .copy_file(src, src_path, &dst_path.with_extension(src_format.ext()), s)
                        .map(|n| (n, src_format))
                        .map_err(|e| e.to_string()),
                },
                CloneStrategy::Overlay if !allow_overlay => {
                    Err("snapshots must not depend on the volume they copy".to_string())
                }
                CloneStrategy::Overlay => {
                    try_overlay(self).map(|()| (0, VolumeFormat::Qcow2)).map_err(|e| e.to_string())
                }
                CloneStrategy::HostAssisted => self
                    .copy_file(src, src_path, &dst_path.with_extension(src_format.ext()), s)
                    .map(|n| (n, src_format))
                    .map_err(|e| e.to_string()),
            };
            match res {
                Ok((copied, fmt)) => {
                    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
                    return Ok((s, reason, copied, fmt));
                }
                Err(why) if opts.strategy.is_some() => {
                    return Err(VolumeError::Strategy { src: src.clone(), strategy: s, reason: why })
                }
                Err(why) => reasons.push(format!("{s}: {why}")),
            }
        }
        Err(VolumeError::Strategy {
            src: src.clone(),
            strategy: CloneStrategy::HostAssisted,
            reason: reasons.join("; "),
        })
    }

    /// Overlays in the namespace folders that use `id` as their backing file.
    fn users_of(&self, id: &VolumeId) -> Result<Vec<String>, VolumeError> {
        let mut users = Vec::new();
        let Ok(nss) = std::fs::read_dir(&self.root) else { return Ok(users) };
        for ns in nss.flatten() {
            let dirs = [ns.path(), ns.path().join(SNAPSHOTS)];
            for d in dirs {
                let Ok(files) = std::fs::read_dir(&d) else { continue };
                for f in files.flatten() {
                    let p = f.path();
                    if p.extension().and_then(|e| e.to_str()) != Some("qcow2") {
                        continue;
                    }
                    let opts = Qcow2OpenOptions {
                        backing: crate::format::qcow2::BackingPolicy::Detached,
                        ..Default::default()
                    };
                    let Ok(q) = Qcow2::open(&p, &opts) else { continue };
                    if let Some(b) = q.header().backing_file {
                        if self.volume_of_backing(&p, &b).as_ref() == Some(id) {
                            users.push(p.display().to_string());
                        }
                    }
                }
            }
        }
        Ok(users)
    }
}

impl VolumeProvider for DirPool {
    fn profile(&self) -> StorageProfile {
        let mut clone_strategies = Vec::new();
        if self.reflink.is_ok() {
            clone_strategies.push(CloneStrategy::Reflink);
        }
        clone_strategies.push(CloneStrategy::Overlay);
        clone_strategies.push(CloneStrategy::HostAssisted);
        StorageProfile { reflink: self.reflink.clone(), clone_strategies, default_format: VolumeFormat::Raw }
    }

    fn create_blank(&self, id: &VolumeId, size: u64, format: VolumeFormat) -> Result<Volume, VolumeError> {
        self.ensure_absent(id)?;
        Self::check_size(id, size)?;
        let path = self.file(id, format);
        self.mkdirs(id, &self.ns_dir(&id.namespace))?;
        let tmp = path.with_extension("creating");
        match format {
            VolumeFormat::Raw => {
                let f = File::create(&tmp).map_err(Self::io(id, "creating", &tmp))?;
                f.set_len(size).map_err(Self::io(id, "sizing", &tmp))?;
            }
            VolumeFormat::Qcow2 => {
                Qcow2::create(&tmp, &Qcow2CreateOptions { size, ..Default::default() })?;
            }
        }
        std::fs::rename(&tmp, &path).map_err(Self::io(id, "renaming", &tmp))?;
        self.describe(id, &path, format)
    }

    fn clone_volume(
        &self,
        src: &VolumeId,
        dst: &VolumeId,
        opts: CloneOptions,
    ) -> Result<CloneOutcome, VolumeError> {
        let (src_path, src_format) = self.must_locate(src)?;
        self.ensure_absent(dst)?;
        self.mkdirs(dst, &self.ns_dir(&dst.namespace))?;
        let dst_base = self.ns_dir(&dst.namespace).join(&dst.name);
        let (strategy, fallback_reason, bytes_copied, fmt) =
            self.clone_into(src, &src_path, src_format, &dst_base, opts, true)?;
        let volume = self.describe(dst, &self.file(dst, fmt), fmt)?;
        Ok(CloneOutcome { volume, strategy, fallback_reason, bytes_copied })
    }

    fn snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<CloneOutcome, VolumeError> {
        let (src_path, src_format) = self.must_locate(id)?;
        VolumeId::new(&id.namespace, snapshot).validate()?;
        let dir = self.ns_dir(&id.namespace).join(SNAPSHOTS);
        self.mkdirs(id, &dir)?;
        for f in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
            if self.snapshot_file(id, snapshot, f).exists() {
                return Err(VolumeError::AlreadyExists(VolumeId::new(
                    &id.namespace,
                    format!("{}@{snapshot}", id.name),
                )));
            }
        }
        let base = dir.join(format!("{}@{snapshot}", id.name));
        let (strategy, fallback_reason, bytes_copied, fmt) =
            self.clone_into(id, &src_path, src_format, &base, CloneOptions::default(), false)?;
        let path = self.snapshot_file(id, snapshot, fmt);
        let mut volume = self.describe(id, &path, fmt)?;
        volume.id = VolumeId::new(&id.namespace, format!("{}@{snapshot}", id.name));
        Ok(CloneOutcome { volume, strategy, fallback_reason, bytes_copied })
    }

    fn restore(&self, src: &VolumeId, snapshot: &str, dst: &VolumeId) -> Result<CloneOutcome, VolumeError> {
        src.validate()?;
        let (snap_path, fmt) = [VolumeFormat::Raw, VolumeFormat::Qcow2]
            .into_iter()
            .map(|f| (self.snapshot_file(src, snapshot, f), f))
            .find(|(p, _)| p.exists())
            .ok_or_else(|| {
                VolumeError::NotFound(VolumeId::new(&src.namespace, format!("{}@{snapshot}", src.name)))
            })?;
        self.ensure_absent(dst)?;
        self.mkdirs(dst, &self.ns_dir(&dst.namespace))?;
        let base = self.ns_dir(&dst.namespace).join(&dst.name);
        // No overlay: a restored volume must not depend on the snapshot (which may be deleted).
        let (strategy, fallback_reason, bytes_copied, out_fmt) =
            self.clone_into(src, &snap_path, fmt, &base, CloneOptions::default(), false)?;
        let volume = self.describe(dst, &self.file(dst, out_fmt), out_fmt)?;
        Ok(CloneOutcome { volume, strategy, fallback_reason, bytes_copied })
    }

    fn get_snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<Option<Volume>, VolumeError> {
        id.validate()?;
        VolumeId::new(&id.namespace, snapshot).validate()?;
        for f in [VolumeFormat::Raw, VolumeFormat::Qcow2] {
            let path = self.snapshot_file(id, snapshot, f);
            if path.exists() {
                let mut volume = self.describe(id, &path, f)?;
                volume.id = VolumeId::new(&id.namespace, format!("{}@{snapshot}", id.name));
                return Ok(Some(volume));
            }
        }
        Ok(None)
    }

    fn delete_snapshot(&self, id: &VolumeId, snapshot: &str) -> Result<(), VolumeError> {
        id.validate()?;
        VolumeId::new(&id.namespace, snapshot).validate()?;
        let snap_id = || VolumeId::new(&id.namespace, format!("{}@{snapshot}", id.name));
        let path = [VolumeFormat::Raw, VolumeFormat::Qcow2]
            .into_iter()
            .map(|f| self.snapshot_file(id, snapshot, f))
            .find(|p| p.exists())
            .ok_or_else(|| VolumeError::NotFound(snap_id()))?;
        std::fs::remove_file(&path).map_err(Self::io(&snap_id(), "deleting", &path))
    }

    fn resize(&self, id: &VolumeId, new_size: u64) -> Result<Volume, VolumeError> {
        let (path, format) = self.must_locate(id)?;
        Self::check_size(id, new_size)?;
        let cur = self.describe(id, &path, format)?;
        if new_size < cur.size {
            return Err(VolumeError::BadSize {
                id: id.clone(),
                reason: format!(
                    "shrinking from {} to {new_size} bytes would lose data; only growing is supported",
                    cur.size
                ),
            });
        }
        match format {
            VolumeFormat::Raw => {
                let f = OpenOptions::new().write(true).open(&path).map_err(Self::io(id, "opening", &path))?;
                f.set_len(new_size).map_err(Self::io(id, "growing", &path))?;
            }
            VolumeFormat::Qcow2 => {
                let q = Qcow2::open(&path, &Qcow2OpenOptions { read_only: false, ..Default::default() })?;
                q.resize(new_size)?;
                q.flush_image()?;
            }
        }
        self.describe(id, &path, format)
    }

    fn delete(&self, id: &VolumeId) -> Result<(), VolumeError> {
        let (path, _) = self.must_locate(id)?;
        let users = self.users_of(id)?;
        if !users.is_empty() {
            return Err(VolumeError::InUse { id: id.clone(), users: users.join(", ") });
        }
        std::fs::remove_file(&path).map_err(Self::io(id, "deleting", &path))
    }

    fn get(&self, id: &VolumeId) -> Result<Option<Volume>, VolumeError> {
        match self.locate(id)? {
            Some((p, f)) => Ok(Some(self.describe(id, &p, f)?)),
            None => Ok(None),
        }
    }

    fn list(&self, namespace: &str) -> Result<Vec<Volume>, VolumeError> {
        let probe = VolumeId::new(namespace, "x");
        probe.validate()?;
        let dir = self.ns_dir(namespace);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(out) };
        for e in entries.flatten() {
            let p = e.path();
            let fmt = match p.extension().and_then(|x| x.to_str()) {
                Some("img") => VolumeFormat::Raw,
                Some("qcow2") => VolumeFormat::Qcow2,
                _ => continue,
            };
            let Some(name) = p.file_stem().and_then(|s| s.to_str()) else { continue };
            let id = VolumeId::new(namespace, name);
            if id.validate().is_ok() && p.is_file() {
                out.push(self.describe(&id, &p, fmt)?);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn open(&self, id: &VolumeId, read_only: bool) -> Result<Box<dyn DiskImage>, VolumeError> {
        let (path, _) = self.must_locate(id)?;
        Ok(open_image(&path, read_only)?)
    }

    fn import_path(&self, id: &VolumeId, format: VolumeFormat) -> Result<PathBuf, VolumeError> {
        self.ensure_absent(id)?;
        let dir = self.ns_dir(&id.namespace).join(IMPORTING);
        self.mkdirs(id, &dir)?;
        Ok(dir.join(format!("{}.{}", id.name, format.ext())))
    }

    fn commit_import(&self, id: &VolumeId, format: VolumeFormat) -> Result<Volume, VolumeError> {
        self.ensure_absent(id)?;
        let tmp = self.ns_dir(&id.namespace).join(IMPORTING).join(format!("{}.{}", id.name, format.ext()));
        let f = File::open(&tmp).map_err(Self::io(id, "opening", &tmp))?;
        f.sync_all().map_err(Self::io(id, "syncing", &tmp))?;
        let path = self.file(id, format);
        std::fs::rename(&tmp, &path).map_err(Self::io(id, "publishing", &tmp))?;
        // Make the rename itself durable.
        if let Ok(d) = File::open(self.ns_dir(&id.namespace)) {
            let _ = d.sync_all();
        }
        self.describe(id, &path, format)
    }

    fn abort_import(&self, id: &VolumeId, format: VolumeFormat) -> Result<(), VolumeError> {
        id.validate()?;
        let tmp = self.ns_dir(&id.namespace).join(IMPORTING).join(format!("{}.{}", id.name, format.ext()));
        match std::fs::remove_file(&tmp) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(VolumeError::Io { id: id.clone(), op: "removing", path: tmp, source: e }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempfile::TempDir, DirPool) {
        let d = tempfile::tempdir().unwrap();
        let p = DirPool::new(d.path().join("pool")).unwrap();
        (d, p)
    }

    fn id(n: &str) -> VolumeId {
        VolumeId::new("default", n)
    }

    #[test]
    fn names_are_checked() {
        let (_d, p) = pool();
        for bad in ["", "UPPER", "a/b", "..", "-x", "x-", &"a".repeat(64)] {
            let e = p.create_blank(&VolumeId::new("default", bad), 512, VolumeFormat::Raw).unwrap_err();
            assert!(matches!(e, VolumeError::InvalidName(_)), "{bad}: {e}");
        }
        assert!(p.create_blank(&VolumeId::new("../etc", "x"), 512, VolumeFormat::Raw).is_err());
    }

    #[test]
    fn blank_volumes_resize_and_delete() {
        let (_d, p) = pool();
        let v = p.create_blank(&id("a"), 1 << 20, VolumeFormat::Raw).unwrap();
        assert_eq!((v.size, v.format, v.allocated), (1 << 20, VolumeFormat::Raw, 0));
        assert!(matches!(
            p.create_blank(&id("a"), 512, VolumeFormat::Qcow2),
            Err(VolumeError::AlreadyExists(_))
        ));
        assert!(matches!(
            p.create_blank(&id("b"), 1000, VolumeFormat::Raw),
            Err(VolumeError::BadSize { .. })
        ));
        let q = p.create_blank(&id("q"), 4 << 20, VolumeFormat::Qcow2).unwrap();
        assert_eq!(q.size, 4 << 20);
        assert_eq!(p.resize(&id("q"), 8 << 20).unwrap().size, 8 << 20);
        assert!(matches!(p.resize(&id("q"), 1 << 20), Err(VolumeError::BadSize { .. })));
        assert_eq!(p.resize(&id("a"), 2 << 20).unwrap().size, 2 << 20);
        assert_eq!(
            p.list("default").unwrap().iter().map(|v| v.id.name.clone()).collect::<Vec<_>>(),
            ["a", "q"]
        );
        p.delete(&id("a")).unwrap();
        assert!(p.get(&id("a")).unwrap().is_none());
        assert!(matches!(p.delete(&id("a")), Err(VolumeError::NotFound(_))));
    }

    #[test]
    fn clone_without_reflinks_falls_back_to_an_overlay_and_says_why() {
        let (_d, p) = pool();
        if p.profile().reflink.is_ok() {
            eprintln!("skipping: this temp dir supports reflinks; tests/volume_clone.rs covers that case");
            return;
        }
        p.create_blank(&id("golden"), 1 << 20, VolumeFormat::Raw).unwrap();
        let g = p.open(&id("golden"), false).unwrap();
        g.write_at(4096, b"golden data").unwrap();
        drop(g);
        let c = p.clone_volume(&id("golden"), &id("vm1"), CloneOptions::default()).unwrap();
        assert_eq!(c.strategy, CloneStrategy::Overlay);
        assert!(c.fallback_reason.as_deref().unwrap().contains("does not support reflinks"), "{c:?}");
        assert_eq!(c.volume.backing, Some(id("golden")));
        assert_eq!(c.volume.format, VolumeFormat::Qcow2);
        let vm = p.open(&id("vm1"), false).unwrap();
        let mut b = [0u8; 11];
        vm.read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"golden data");
        vm.write_at(4096, b"vm1 changes").unwrap();
        drop(vm);
        let g = p.open(&id("golden"), true).unwrap();
        g.read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"golden data", "a clone's writes must not reach its source");
        // The source cannot go while the clone needs it.
        let e = p.delete(&id("golden")).unwrap_err();
        assert!(matches!(e, VolumeError::InUse { .. }) && e.to_string().contains("vm1.qcow2"), "{e}");
        p.delete(&id("vm1")).unwrap();
        p.delete(&id("golden")).unwrap();
    }

    #[test]
    fn an_overlay_clone_snapshots_and_restores_into_another_namespace() {
        let (_d, p) = pool();
        if p.profile().reflink.is_ok() {
            eprintln!("skipping: reflinks here, so clones are not overlays");
            return;
        }
        p.create_blank(&VolumeId::new("os-images", "golden"), 1 << 20, VolumeFormat::Raw).unwrap();
        p.open(&VolumeId::new("os-images", "golden"), false).unwrap().write_at(0, b"golden").unwrap();
        let c = p
            .clone_volume(&VolumeId::new("os-images", "golden"), &id("vm1"), CloneOptions::default())
            .unwrap();
        assert_eq!(c.strategy, CloneStrategy::Overlay);
        p.open(&id("vm1"), false).unwrap().write_at(512, b"mine").unwrap();
        p.snapshot(&id("vm1"), "s1").unwrap();
        let r = p.restore(&id("vm1"), "s1", &VolumeId::new("team-b", "copy")).unwrap();
        let v = p.open(&r.volume.id, true).unwrap();
        let (mut a, mut b) = ([0u8; 6], [0u8; 4]);
        v.read_at(0, &mut a).unwrap();
        v.read_at(512, &mut b).unwrap();
        assert_eq!((&a, &b), (b"golden", b"mine"), "the restored overlay still finds its backing image");
    }

    #[test]
    fn host_assisted_clone_and_forced_strategies() {
        let (_d, p) = pool();
        p.create_blank(&id("src"), 8 << 20, VolumeFormat::Raw).unwrap();
        p.open(&id("src"), false).unwrap().write_at(1 << 20, &[7u8; 65536]).unwrap();
        let c = p
            .clone_volume(
                &id("src"),
                &VolumeId::new("other-ns", "copy"),
                CloneOptions { strategy: Some(CloneStrategy::HostAssisted) },
            )
            .unwrap();
        assert_eq!(
            (c.strategy, c.fallback_reason.clone(), c.bytes_copied),
            (CloneStrategy::HostAssisted, None, 65536)
        );
        assert_eq!(c.volume.backing, None);
        let mut b = [0u8; 4];
        p.open(&VolumeId::new("other-ns", "copy"), true).unwrap().read_at(1 << 20, &mut b).unwrap();
        assert_eq!(b, [7; 4]);
        if p.profile().reflink.is_err() {
            let e = p
                .clone_volume(&id("src"), &id("x"), CloneOptions { strategy: Some(CloneStrategy::Reflink) })
                .unwrap_err();
            assert!(e.to_string().contains("reflink"), "{e}");
        }
        assert!(matches!(
            p.clone_volume(&id("nope"), &id("y"), CloneOptions::default()),
            Err(VolumeError::NotFound(_))
        ));
    }

    #[test]
    fn snapshots_are_independent_and_restore() {
        let (_d, p) = pool();
        p.create_blank(&id("disk"), 1 << 20, VolumeFormat::Raw).unwrap();
        p.open(&id("disk"), false).unwrap().write_at(0, b"before").unwrap();
        let s = p.snapshot(&id("disk"), "snap1").unwrap();
        assert_ne!(s.strategy, CloneStrategy::Overlay);
        p.open(&id("disk"), false).unwrap().write_at(0, b"after!").unwrap();
        let r = p.restore(&id("disk"), "snap1", &id("restored")).unwrap();
        let mut b = [0u8; 6];
        p.open(&r.volume.id, true).unwrap().read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"before");
        // The restore does not depend on the snapshot.
        assert_ne!(r.strategy, CloneStrategy::Overlay);
        assert_eq!(r.volume.backing, None);
        // The snapshot is not a volume of the namespace.
        assert!(p.list("default").unwrap().iter().all(|v| !v.id.name.contains('@')));
        assert!(p.snapshot(&id("disk"), "snap1").is_err());
        let info = p.get_snapshot(&id("disk"), "snap1").unwrap().unwrap();
        assert_eq!((info.size, info.id.name.as_str()), (1 << 20, "disk@snap1"));
        assert_eq!(p.get_snapshot(&id("disk"), "other").unwrap(), None);
        p.delete_snapshot(&id("disk"), "snap1").unwrap();
        assert_eq!(p.get_snapshot(&id("disk"), "snap1").unwrap(), None);
        assert!(matches!(p.delete_snapshot(&id("disk"), "snap1"), Err(VolumeError::NotFound(_))));
        p.open(&r.volume.id, true).unwrap().read_at(0, &mut b).unwrap();
        assert_eq!(&b, b"before");
    }

    #[test]
    fn imports_are_invisible_until_committed() {
        let (_d, p) = pool();
        let path = p.import_path(&id("imp"), VolumeFormat::Raw).unwrap();
        std::fs::write(&path, vec![1u8; 4096]).unwrap();
        assert!(p.get(&id("imp")).unwrap().is_none());
        assert!(p.list("default").unwrap().is_empty());
        let v = p.commit_import(&id("imp"), VolumeFormat::Raw).unwrap();
        assert_eq!(v.size, 4096);
        let path = p.import_path(&id("half"), VolumeFormat::Raw).unwrap();
        std::fs::write(&path, b"partial").unwrap();
        p.abort_import(&id("half"), VolumeFormat::Raw).unwrap();
        assert!(!path.exists());
        assert!(p.get(&id("half")).unwrap().is_none());
    }
}
