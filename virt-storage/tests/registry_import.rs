//! containerDisk imports into volumes from a real registry (Debian's docker-registry, images pushed
//! with skopeo): the disk lands in a volume, pinned to the digest that was resolved; a registry without
//! the image leaves no volume.

mod support;

use std::process::Command;

use support::registry::*;
use virt_storage::import::registry::import_container_disk;
use virt_storage::import::ImportOptions;
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId, VolumeProvider};

fn qcow2_of(raw: &[u8]) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("d.raw"), raw).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(d.path().join("d.raw"))
        .arg(d.path().join("d.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::read(d.path().join("d.qcow2")).unwrap()
}

#[test]
fn a_qcow2_container_disk_becomes_a_volume_pinned_to_its_digest() {
    let reg = Registry::start(RegistryOpts::default());
    let raw = disk_bytes(7, 3 << 20);
    let mut layout = OciLayout::new();
    container_disk_image(&mut layout, "v1", "cirros.qcow2", &qcow2_of(&raw), Comp::Gzip);
    reg.push(&layout, "v1", "os/cirros", &[]);
    let client = reg.client();
    let pool_dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(pool_dir.path()).unwrap();
    let id = VolumeId::new("os-images", "cirros-v1");
    let (out, digest) = import_container_disk(
        &pool,
        &id,
        &client,
        &format!("docker://{}/os/cirros:v1", reg.host),
        &ImportOptions { format: VolumeFormat::Raw, ..Default::default() },
        &mut |_| {},
    )
    .unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(digest, client.resolve_digest(&format!("{}/os/cirros:v1", reg.host)).unwrap().to_string());
    assert!(out.used_scratch, "a qcow2 inside an image needs random access");
    let v = pool.open(&id, true).unwrap();
    let mut back = vec![0u8; raw.len()];
    v.read_at(0, &mut back).unwrap();
    assert_eq!(back, raw);
    // No scratch left next to the pool's staging area.
    let leftovers: Vec<_> = walk(pool_dir.path())
        .into_iter()
        .filter(|p| p.contains(".containerdisk") || p.contains(".download"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_missing_image_fails_and_leaves_no_volume() {
    let reg = Registry::start(RegistryOpts::default());
    let pool_dir = tempfile::tempdir().unwrap();
    let pool = DirPool::new(pool_dir.path()).unwrap();
    let id = VolumeId::new("os-images", "nothing");
    let e = import_container_disk(
        &pool,
        &id,
        &reg.client(),
        &format!("{}/os/absent:v9", reg.host),
        &ImportOptions::default(),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    assert!(pool.get(&id).unwrap().is_none());
}

fn walk(p: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}
