//! Importing a containerDisk (the disk under `/disk/` of an OCI image) into a volume.
//!
//! The registry client verifies every layer's digest while it extracts the disk into a scratch folder
//! beside the pool's staging area; the disk then goes through the same sniff-and-convert pipeline as an
//! HTTP download (qcow2 inside an image must be converted from a file anyway, since it needs random
//! access). The scratch copy is removed whatever happens.

use super::{import, FileSource, ImportError, ImportOptions, ImportOutcome, Progress};
use crate::registry::RegistryClient;
use crate::volume::{VolumeId, VolumeProvider};

/// Pulls `reference` (e.g. `docker://registry:5000/os/fedora:42` or `...@sha256:...`) with `client`
/// and imports its containerDisk into a new volume `id`. Returns the outcome and the image digest
/// that was imported (what the golden-image cron compares against).
pub fn import_container_disk(
    pool: &dyn VolumeProvider,
    id: &VolumeId,
    client: &RegistryClient,
    reference: &str,
    opts: &ImportOptions,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<(ImportOutcome, String), ImportError> {
    let reference = reference.strip_prefix("docker://").unwrap_or(reference);
    let reg_err = |e: crate::registry::RegistryError| ImportError::Registry {
        reference: reference.to_string(),
        source: Box::new(e),
    };
    // Pin the tag to a digest first, so that the digest reported is the one whose disk was imported.
    let digest = client.resolve_digest(reference).map_err(reg_err)?;
    let pinned = match reference.split_once('@') {
        Some(_) => reference.to_string(),
        None => format!("{}@{}", strip_tag(reference), digest),
    };
    let staging = pool.import_path(id, opts.format)?;
    let scratch = staging.with_extension("containerdisk");
    let result = (|| {
        let disk = client.extract_container_disk(&pinned, &scratch).map_err(reg_err)?;
        import(pool, id, Box::new(FileSource::new(disk)), opts, progress)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result.map(|o| (o, digest.to_string()))
}

/// `host:port/repo:tag` without its tag (the port's colon is kept).
fn strip_tag(r: &str) -> &str {
    let last_slash = r.rfind('/').unwrap_or(0);
    match r[last_slash..].rfind(':') {
        Some(i) => &r[..last_slash + i],
        None => r,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_tag;

    #[test]
    fn tags_are_stripped_but_ports_kept() {
        assert_eq!(strip_tag("127.0.0.1:5000/os/fedora:42"), "127.0.0.1:5000/os/fedora");
        assert_eq!(strip_tag("127.0.0.1:5000/os/fedora"), "127.0.0.1:5000/os/fedora");
        assert_eq!(
            strip_tag("quay.io/kubevirt/cirros-container-disk-demo:latest"),
            "quay.io/kubevirt/cirros-container-disk-demo"
        );
    }
}
