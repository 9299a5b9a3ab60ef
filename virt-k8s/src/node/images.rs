//! The node's image cache (`<state>/images/<digest>/`): containerDisks and kernel-boot files pulled
//! from registries, as a kubelet pulls a pod's images.
//!
//! - One registry client for every pull, so a registry's scheme, auth challenge and tokens are
//!   learnt once (a new client per start pinged `/v2/` again, and for an insecure registry tried
//!   HTTPS before HTTP each time).
//! - Kubernetes' `imagePullPolicy`: `Always` asks the registry which digest the reference names on
//!   every start; `IfNotPresent` uses the digest the reference named when it was last pulled
//!   (remembered in `images/refs/`) and asks only when the image is not cached; `Never` never
//!   asks and fails when the image is not cached. Without a policy, as Kubernetes: `Always` for
//!   `:latest` (or no tag), `IfNotPresent` otherwise. A reference pinned by digest needs no
//!   resolving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virt_core::model::{KernelBootContainer, PullPolicy};
use virt_storage::registry::{Digest, Reference, RegistryClient, RegistryConfig, RegistryError};

use super::volumes::PrepareError;

/// containerDisk and kernel-boot images pulled into `<state>/images`.
pub struct ImageCache {
    dir: PathBuf,
    config: RegistryConfig,
    /// Made on the first pull that needs the registry, then shared.
    client: Mutex<Option<Arc<RegistryClient>>>,
    /// One pull at a time.
    pull_lock: Mutex<()>,
}

/// The pull policy Kubernetes applies to `r` when none is given.
pub fn default_policy(r: &Reference) -> PullPolicy {
    if r.digest().is_some() {
        return PullPolicy::IfNotPresent;
    }
    match r.tag() {
        None | Some("latest") => PullPolicy::Always,
        Some(_) => PullPolicy::IfNotPresent,
    }
}

impl ImageCache {
    /// A cache in `dir` (`<state>/images`), pulling with `config`.
    pub fn new(dir: PathBuf, config: RegistryConfig) -> Self {
        Self { dir, config, client: Mutex::new(None), pull_lock: Mutex::new(()) }
    }

    fn client(&self, what: &'static str, image: &str) -> Result<Arc<RegistryClient>, PrepareError> {
        let mut slot = self.client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = Arc::new(RegistryClient::new(self.config.clone()).map_err(registry(what, image))?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Where the digest `reference` named when it was last resolved is kept.
    fn ref_file(&self, reference: &str) -> PathBuf {
        self.dir.join("refs").join(Digest::of(reference.as_bytes()).hex())
    }

    fn remembered(&self, reference: &str) -> Option<Digest> {
        let text = std::fs::read_to_string(self.ref_file(reference)).ok()?;
        let mut lines = text.lines();
        let digest = lines.next()?.parse().ok()?;
        // The reference itself follows: a hash collision or a hand-edited file is not trusted.
        (lines.next() == Some(reference)).then_some(digest)
    }

    fn remember(&self, reference: &str, digest: &Digest) {
        let path = self.ref_file(reference);
        let tmp = path.with_extension("tmp");
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&tmp, format!("{digest}\n{reference}\n")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            // Only a cache: the next start asks the registry again.
            log::warn!("image cache: remembering {reference} -> {digest} in {}: {e}", path.display());
        }
    }

    /// The digest to use for `image` under `policy`, and whether the registry was asked.
    fn digest(
        &self,
        what: &'static str,
        image: &str,
        policy: Option<PullPolicy>,
    ) -> Result<(String, Digest, PullPolicy), PrepareError> {
        let reference = image.strip_prefix("docker://").unwrap_or(image).to_string();
        let parsed = Reference::parse(&reference).map_err(registry(what, image))?;
        let policy = policy.unwrap_or_else(|| default_policy(&parsed));
        if let (Some(d), false) = (parsed.digest(), policy == PullPolicy::Always) {
            return Ok((reference, d.clone(), policy));
        }
        if policy != PullPolicy::Always {
            if let Some(d) = self.remembered(&reference) {
                return Ok((reference, d, policy));
            }
            if policy == PullPolicy::Never {
                return Err(PrepareError::NotPresent { what, image: image.into() });
            }
        }
        let d = self.client(what, image)?.resolve_digest(&reference).map_err(registry(what, image))?;
        self.remember(&reference, &d);
        Ok((reference, d, policy))
    }

    /// `image`'s containerDisk (pulled into the cache once per digest, as `policy` says); the
    /// disk file.
    pub fn container_disk(&self, image: &str, policy: Option<PullPolicy>) -> Result<PathBuf, PrepareError> {
        const WHAT: &str = "containerDisk";
        let _one = self.pull_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (reference, digest, policy) = self.digest(WHAT, image, policy)?;
        let dir = self.dir.join(digest.hex());
        if let Some(existing) = first_file(&dir) {
            return Ok(existing);
        }
        if policy == PullPolicy::Never {
            return Err(PrepareError::NotPresent { what: WHAT, image: image.into() });
        }
        let client = self.client(WHAT, image)?;
        client.extract_container_disk(&pinned(&reference, &digest), &dir).map_err(registry(WHAT, image))
    }

    /// A kernel-boot container's kernel and initrd, pulled into the cache as its policy says.
    pub fn kernel_files(&self, c: &KernelBootContainer) -> Result<(PathBuf, Option<PathBuf>), PrepareError> {
        const WHAT: &str = "kernelBoot image";
        let _one = self.pull_lock.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = c.kernel_path.as_deref().ok_or(PrepareError::KernelPathRequired)?;
        let (reference, digest, policy) = self.digest(WHAT, &c.image, c.image_pull_policy)?;
        let dir = self.dir.join(digest.hex());
        let mut wanted: Vec<&str> = vec![kernel];
        if let Some(i) = c.initrd_path.as_deref() {
            wanted.push(i);
        }
        let local = |p: &str| dir.join(p.trim_start_matches('/'));
        if !wanted.iter().all(|p| local(p).is_file()) {
            if policy == PullPolicy::Never {
                return Err(PrepareError::NotPresent { what: WHAT, image: c.image.clone() });
            }
            let client = self.client(WHAT, &c.image)?;
            client
                .extract_files(&pinned(&reference, &digest), &wanted, &dir)
                .map_err(registry(WHAT, &c.image))?;
        }
        Ok((local(kernel), c.initrd_path.as_deref().map(local)))
    }
}

fn registry<'a>(what: &'static str, image: &'a str) -> impl Fn(RegistryError) -> PrepareError + 'a {
    move |source| PrepareError::Registry { what, image: image.into(), source: Box::new(source) }
}

/// `reference` pinned to `digest` (as it is, when it names one already).
fn pinned(reference: &str, digest: &Digest) -> String {
    match reference.split_once('@') {
        Some(_) => reference.to_string(),
        None => format!("{}@{digest}", strip_tag(reference)),
    }
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| p.is_file())
}

/// `repo:tag` without the tag (a port's colon before the last slash stays).
fn strip_tag(reference: &str) -> &str {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => &reference[..slash + i],
        None => reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_stripped_but_ports_kept() {
        assert_eq!(strip_tag("127.0.0.1:5000/os/cirros:devel"), "127.0.0.1:5000/os/cirros");
        assert_eq!(strip_tag("127.0.0.1:5000/os/cirros"), "127.0.0.1:5000/os/cirros");
        assert_eq!(strip_tag("quay.io/x/y:1"), "quay.io/x/y");
    }

    #[test]
    fn the_default_policy_is_kubernetes() {
        let p = |s: &str| default_policy(&Reference::parse(s).unwrap());
        assert_eq!(p("quay.io/x/y"), PullPolicy::Always);
        assert_eq!(p("quay.io/x/y:latest"), PullPolicy::Always);
        assert_eq!(p("quay.io/x/y:v1"), PullPolicy::IfNotPresent);
        let pinned = format!("quay.io/x/y@{}", Digest::of(b"m"));
        assert_eq!(p(&pinned), PullPolicy::IfNotPresent);
    }

    /// No registry behind 127.0.0.1:9 (the discard port, closed here): anything that asks it fails.
    fn cache(dir: &Path) -> ImageCache {
        ImageCache::new(dir.join("images"), RegistryConfig::default().with_insecure_registry("127.0.0.1:9"))
    }

    #[test]
    fn if_not_present_and_never_use_the_remembered_digest_without_asking() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path());
        let image = "127.0.0.1:9/os/disk:v1";
        // Never, nothing cached: refused without a connection, naming the image.
        let e = c.container_disk(image, Some(PullPolicy::Never)).unwrap_err();
        assert!(matches!(e, PrepareError::NotPresent { .. }), "{e}");
        assert!(e.to_string().contains(image), "{e}");
        // IfNotPresent, nothing cached: the registry is asked (and is not there).
        let e = c.container_disk(image, None).unwrap_err();
        assert!(matches!(e, PrepareError::Registry { .. }), "{e}");
        // A pull remembered the digest and left the disk: both policies use it, nothing is asked.
        let digest = Digest::of(b"manifest");
        c.remember(image, &digest);
        let disk = c.dir.join(digest.hex()).join("disk.img");
        std::fs::create_dir_all(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, b"x").unwrap();
        assert_eq!(c.container_disk(image, None).unwrap(), disk);
        assert_eq!(c.container_disk(&format!("docker://{image}"), Some(PullPolicy::Never)).unwrap(), disk);
        // Always (and :latest by default) asks every time.
        assert!(c.container_disk(image, Some(PullPolicy::Always)).is_err());
        c.remember("127.0.0.1:9/os/disk:latest", &digest);
        assert!(c.container_disk("127.0.0.1:9/os/disk:latest", None).is_err());
        // A pinned digest needs no resolving.
        let pinned = format!("127.0.0.1:9/os/other@{digest}");
        assert_eq!(c.container_disk(&pinned, None).unwrap(), disk);
        // A remembered file that names another reference is not trusted.
        std::fs::write(c.ref_file(image), format!("{digest}\nsomething/else:v1\n")).unwrap();
        assert!(c.container_disk(image, Some(PullPolicy::Never)).is_err());
    }

    #[test]
    fn kernel_files_follow_the_policy_too() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cache(tmp.path());
        let digest = Digest::of(b"kernel manifest");
        let image = "127.0.0.1:9/os/kernel:v2";
        let k = KernelBootContainer {
            image: image.into(),
            kernel_path: Some("/boot/vmlinuz".into()),
            initrd_path: Some("/boot/initrd.img".into()),
            image_pull_policy: Some(PullPolicy::Never),
            ..Default::default()
        };
        assert!(matches!(c.kernel_files(&k), Err(PrepareError::NotPresent { .. })));
        c.remember(image, &digest);
        let boot = c.dir.join(digest.hex()).join("boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("vmlinuz"), b"k").unwrap();
        // The initrd is missing and Never may not pull it.
        assert!(matches!(c.kernel_files(&k), Err(PrepareError::NotPresent { .. })));
        std::fs::write(boot.join("initrd.img"), b"i").unwrap();
        let (kernel, initrd) = c.kernel_files(&k).unwrap();
        assert_eq!(kernel, boot.join("vmlinuz"));
        assert_eq!(initrd, Some(boot.join("initrd.img")));
    }
}
