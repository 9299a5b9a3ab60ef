//! Clones on a real copy-on-write file system: an XFS (reflink=1) loop file system made by the test.
//! Skipped with a printed reason only where loop devices cannot be used (not root, no loop module).

use std::path::{Path, PathBuf};
use std::process::Command;

use virt_storage::volume::{CloneOptions, CloneStrategy, DirPool, VolumeFormat, VolumeId, VolumeProvider};

/// An XFS file system with reflinks on a loop file, unmounted and removed on drop.
struct XfsMount {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl XfsMount {
    fn new(size_gib: u64) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&img).and_then(|f| f.set_len(size_gib << 30)).map_err(|e| e.to_string())?;
        let st =
            Command::new("mkfs.xfs").args(["-q", "-m", "reflink=1"]).arg(&img).status().map_err(|e| {
                format!("mkfs.xfs not runnable ({e}); install xfsprogs (scripts/install-deps.sh)")
            })?;
        if !st.success() {
            return Err("mkfs.xfs failed".into());
        }
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a loop device: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self { dir, mnt })
    }
    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = self.dir.path();
    }
}

fn mount_or_skip() -> Option<XfsMount> {
    match XfsMount::new(3) {
        Ok(m) => Some(m),
        Err(e) if e.contains("mkfs.xfs not runnable") => panic!("{e}"),
        Err(e) => {
            // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
            assert!(std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(), "skipping: {e}");
            eprintln!("skipping: {e}");
            None
        }
    }
}

#[test]
fn reflink_clones_are_instant_independent_and_report_no_fallback() {
    let Some(m) = mount_or_skip() else { return };
    let pool = DirPool::new(m.path().join("pool")).unwrap();
    assert_eq!(pool.profile().reflink, Ok(()));
    assert_eq!(pool.profile().clone_strategies[0], CloneStrategy::Reflink);
    let golden = VolumeId::new("os-images", "fedora");
    pool.create_blank(&golden, 10 << 30, VolumeFormat::Raw).unwrap();
    let g = pool.open(&golden, false).unwrap();
    for i in 0..16u64 {
        g.write_at(i * (600 << 20), &vec![i as u8 + 1; 1 << 20]).unwrap();
    }
    g.flush().unwrap();
    drop(g);

    let vm = VolumeId::new("default", "vm1-rootdisk");
    let c = pool.clone_volume(&golden, &vm, CloneOptions::default()).unwrap();
    assert_eq!((c.strategy, c.fallback_reason.as_deref(), c.bytes_copied), (CloneStrategy::Reflink, None, 0));
    assert_eq!(
        (c.volume.size, c.volume.format, c.volume.backing.clone()),
        (10 << 30, VolumeFormat::Raw, None)
    );

    let v = pool.open(&vm, false).unwrap();
    let mut b = vec![0u8; 1 << 20];
    v.read_at(5 * (600 << 20), &mut b).unwrap();
    assert!(b.iter().all(|x| *x == 6));
    v.write_at(0, b"vm writes").unwrap();
    drop(v);
    let mut s = [0u8; 9];
    pool.open(&golden, true).unwrap().read_at(0, &mut s).unwrap();
    assert_eq!(s, [1u8; 9], "the clone's write reached the golden image");
    // A reflink clone is independent: its source can go.
    pool.delete(&golden).unwrap();
    pool.open(&vm, true).unwrap().read_at(0, &mut s).unwrap();
    assert_eq!(&s, b"vm writes");
}

#[test]
fn host_assisted_copy_of_a_sparse_volume_moves_only_its_data() {
    let Some(m) = mount_or_skip() else { return };
    let pool = DirPool::new(m.path().join("pool")).unwrap();
    let src = VolumeId::new("default", "sparse");
    pool.create_blank(&src, 10 << 30, VolumeFormat::Raw).unwrap();
    let d = pool.open(&src, false).unwrap();
    for i in 0..8u64 {
        d.write_at(i << 30, &vec![0xabu8; 8 << 20]).unwrap();
    }
    drop(d);
    let c = pool
        .clone_volume(
            &src,
            &VolumeId::new("default", "copy"),
            CloneOptions { strategy: Some(CloneStrategy::HostAssisted) },
        )
        .unwrap();
    assert_eq!(c.strategy, CloneStrategy::HostAssisted);
    assert_eq!(c.bytes_copied, 64 << 20, "a 10 GiB volume holding 64 MiB should copy 64 MiB");
    assert!(c.volume.allocated < 80 << 20, "the copy is not sparse: {} bytes allocated", c.volume.allocated);
}
