//! Streaming layer extraction: every blob is verified (sha256 and size) while it is read,
//! decompressed on the fly (gzip, zstd or plain tar, sniffed from the magic bytes) and only the
//! wanted regular files are written, into a staging directory beside the destination. Layers
//! apply in order with overlay semantics (later layers replace, `.wh.` whiteouts delete,
//! `.wh..wh..opq` makes a directory opaque). Nothing reaches the destination before every
//! layer has been read and verified.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::manifest::Descriptor;
use super::{Digest, RegistryError};

/// Symlinks and hard links followed while resolving one path.
const MAX_LINK_HOPS: usize = 40;
/// Non-directory entries remembered across layers (bounds memory on hostile images; a large
/// distribution base image has well under 100,000).
const MAX_ENTRIES: usize = 1_000_000;
/// Extraction passes: one more for each level of links whose targets were not kept.
const MAX_PASSES: usize = 4;

/// Who the errors are about.
#[derive(Clone)]
pub(crate) struct ErrCtx {
    pub(crate) registry: String,
    pub(crate) image: String,
}

/// What went wrong with a blob's content, as detected by [`BlobReader`].
#[derive(Debug, Clone)]
enum BlobFailure {
    TooLong,
    TooShort(u64),
    Digest(Digest),
}

/// Reads a blob, hashing and counting; fails as soon as the declared size is exceeded and, at
/// end of stream, when the length or the sha256 differ from the descriptor.
pub(crate) struct BlobReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    size: u64,
    expected: Digest,
    failure: Option<BlobFailure>,
    verified: bool,
}

impl<R: Read> BlobReader<R> {
    pub(crate) fn new(inner: R, expected: Digest, size: u64) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0, size, expected, failure: None, verified: false }
    }

    fn fail(&mut self, f: BlobFailure) -> io::Error {
        self.failure = Some(f);
        io::Error::new(io::ErrorKind::InvalidData, "blob verification failed")
    }

    /// Reads the rest of the blob (bounded by its declared size) so that it is verified.
    fn finish(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        while !self.verified {
            if self.failure.is_some() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "blob verification failed"));
            }
            // The amount does not matter: the loop ends once the reader has verified the blob.
            let _ = self.read(&mut buf)?;
        }
        Ok(())
    }
}

impl<R: Read> Read for BlobReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "blob verification failed"));
        }
        if self.verified || buf.is_empty() {
            return Ok(0);
        }
        // Never ask for more than one byte past the declared size.
        let room = (self.size - self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            if self.count != self.size {
                return Err(self.fail(BlobFailure::TooShort(self.count)));
            }
            let actual = Digest::from_sha256(std::mem::take(&mut self.hasher).finalize().into());
            if actual != self.expected {
                return Err(self.fail(BlobFailure::Digest(actual)));
            }
            self.verified = true;
            return Ok(0);
        }
        self.count += n as u64;
        if self.count > self.size {
            return Err(self.fail(BlobFailure::TooLong));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Which files of the image a caller wants.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    /// The single regular file directly under `disk/`.
    ContainerDisk,
    /// These image paths (normalised, relative to the image root).
    Files(Vec<String>),
}

/// One remembered entry of the merged image file system.
#[derive(Debug, Clone)]
enum Node {
    /// A wanted regular file, staged at this path.
    File(PathBuf),
    /// A symlink with this target (as written in the tar).
    Symlink(String),
    /// A hard link to this image path, whose content was not kept when the link was seen.
    Hardlink(String),
    /// A regular file that was not kept (its content is not staged).
    Other,
}

/// Result of resolving a path through the remembered links.
enum Resolved {
    File(PathBuf),
    /// The final path is a regular file that this pass did not keep.
    Need(String),
    Missing(String),
}

/// The extraction engine for one image.
pub(crate) struct Extractor<'a> {
    ctx: &'a ErrCtx,
    staging: &'a Path,
    /// The merged file system of the layers read so far.
    nodes: BTreeMap<String, Node>,
    /// Paths whose regular-file content is kept (beyond the selection's own).
    extra: BTreeSet<String>,
    selection: &'a Selection,
    staged: u64,
    entries: usize,
}

/// Opens a layer blob for reading: the verified blob reader around the HTTP body.
pub(crate) type OpenBlob<'f> =
    dyn FnMut(&Descriptor) -> Result<BlobReader<Box<dyn Read>>, RegistryError> + 'f;

/// Reads `layers` (all of them, each verified) and returns the staged file for each selected
/// path: for [`Selection::ContainerDisk`] one `(image path, staged file)`, for
/// [`Selection::Files`] one per requested path, in order. Staged files live in `staging`.
pub(crate) fn extract(
    ctx: &ErrCtx,
    layers: &[Descriptor],
    selection: &Selection,
    staging: &Path,
    open: &mut OpenBlob<'_>,
) -> Result<Vec<(String, PathBuf)>, RegistryError> {
    let mut extra = BTreeSet::new();
    for pass in 0..MAX_PASSES {
        let pass_dir = staging.join(format!("pass{pass}"));
        std::fs::create_dir(&pass_dir).map_err(|e| io_err("creating", &pass_dir, e))?;
        let mut ex = Extractor {
            ctx,
            staging: &pass_dir,
            nodes: BTreeMap::new(),
            extra: extra.clone(),
            selection,
            staged: 0,
            entries: 0,
        };
        for layer in layers {
            ex.apply_layer(layer, open)?;
        }
        let wanted: Vec<String> = match selection {
            Selection::ContainerDisk => {
                let disks: Vec<String> = ex.nodes.keys().filter(|p| is_disk_path(p)).cloned().collect();
                match disks.len() {
                    0 => {
                        return Err(RegistryError::NoDisk {
                            registry: ctx.registry.clone(),
                            image: ctx.image.clone(),
                        })
                    }
                    1 => disks,
                    _ => {
                        return Err(RegistryError::SeveralDisks {
                            registry: ctx.registry.clone(),
                            image: ctx.image.clone(),
                            files: disks.iter().map(|d| format!("/{d}")).collect(),
                        })
                    }
                }
            }
            Selection::Files(f) => f.clone(),
        };
        let mut out = Vec::new();
        let mut need = Vec::new();
        for w in &wanted {
            match ex.resolve(w)? {
                Resolved::File(p) => out.push((w.clone(), p)),
                Resolved::Need(t) => need.push(t),
                Resolved::Missing(detail) => {
                    return Err(RegistryError::FileNotFound {
                        registry: ctx.registry.clone(),
                        image: ctx.image.clone(),
                        path: w.clone(),
                        detail,
                    })
                }
            }
        }
        if need.is_empty() {
            return Ok(out);
        }
        let before = extra.len();
        extra.extend(need.iter().cloned());
        if extra.len() == before {
            // Should not happen: a needed path that was already kept resolves to a file.
            break;
        }
        log::debug!("{}: another pass for link targets {need:?}", ctx.image);
        std::fs::remove_dir_all(&pass_dir).map_err(|e| io_err("removing", &pass_dir, e))?;
    }
    Err(RegistryError::FileNotFound {
        registry: ctx.registry.clone(),
        image: ctx.image.clone(),
        path: match selection {
            Selection::ContainerDisk => "disk/".into(),
            Selection::Files(f) => f.join(", "),
        },
        detail: format!("links nested more than {MAX_PASSES} levels across layers"),
    })
}

fn is_disk_path(p: &str) -> bool {
    p.strip_prefix("disk/").is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> RegistryError {
    RegistryError::Io { op, path: path.to_path_buf(), source }
}

/// Normalises a tar entry path: strips `./` and `.` components and a trailing `/`; refuses
/// absolute paths and `..` components. Returns "" for the root itself.
pub(crate) fn normalize(path: &str) -> Result<String, &'static str> {
    if path.starts_with('/') {
        return Err("absolute path");
    }
    let mut comps = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("'..' component"),
            c => comps.push(c),
        }
    }
    Ok(comps.join("/"))
}

enum Compression {
    Gzip,
    Zstd,
    None,
}

impl Extractor<'_> {
    fn layer_err(&self, digest: &str, message: String) -> RegistryError {
        RegistryError::Layer {
            registry: self.ctx.registry.clone(),
            image: self.ctx.image.clone(),
            digest: digest.to_string(),
            message,
        }
    }

    fn unsafe_path(&self, digest: &str, path: &str, reason: &str) -> RegistryError {
        RegistryError::UnsafePath {
            registry: self.ctx.registry.clone(),
            image: self.ctx.image.clone(),
            digest: digest.to_string(),
            path: path.to_string(),
            reason: reason.to_string(),
        }
    }

    fn blob_failure(&self, desc: &Descriptor, f: BlobFailure) -> RegistryError {
        let registry = self.ctx.registry.clone();
        let image = self.ctx.image.clone();
        match f {
            BlobFailure::Digest(actual) => RegistryError::DigestMismatch {
                registry,
                image,
                what: "blob",
                expected: desc.digest.clone(),
                actual: actual.to_string(),
            },
            BlobFailure::TooLong => RegistryError::SizeMismatch {
                registry,
                image,
                digest: desc.digest.clone(),
                problem: "is longer than declared".into(),
                expected: desc.size,
            },
            BlobFailure::TooShort(n) => RegistryError::SizeMismatch {
                registry,
                image,
                digest: desc.digest.clone(),
                problem: format!("ended after {n} bytes"),
                expected: desc.size,
            },
        }
    }

    fn wants(&self, path: &str) -> bool {
        self.extra.contains(path)
            || match self.selection {
                Selection::ContainerDisk => is_disk_path(path),
                Selection::Files(f) => f.iter().any(|w| w == path),
            }
    }

    /// Reads one layer into the merged file system. A content error found by the blob reader
    /// (digest or size) wins over the decompression or tar error it caused.
    fn apply_layer(&mut self, desc: &Descriptor, open: &mut OpenBlob<'_>) -> Result<(), RegistryError> {
        let mut blob = open(desc)?;
        let result = self.read_layer(desc, &mut blob);
        let finished = blob.finish();
        if let Some(f) = blob.failure.take() {
            return Err(self.blob_failure(desc, f));
        }
        let upper = result?;
        if let Err(e) = finished {
            return Err(self.layer_err(&desc.digest, format!("reading the blob: {e}")));
        }
        // Merge: the layer's entries replace what lower layers had at the same paths.
        for (path, node) in upper {
            if let Some(old) = self.nodes.insert(path, node) {
                drop_node(old);
            }
        }
        Ok(())
    }

    /// Parses one layer's tar stream; whiteouts act on the lower layers at once, new entries
    /// are returned to be merged once the layer is complete.
    fn read_layer(
        &mut self,
        desc: &Descriptor,
        blob: &mut BlobReader<Box<dyn Read>>,
    ) -> Result<BTreeMap<String, Node>, RegistryError> {
        let digest = desc.digest.as_str();
        let mut magic = [0u8; 4];
        let mut got = 0;
        while got < magic.len() {
            match blob.read(&mut magic[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.layer_err(digest, format!("reading: {e}"))),
            }
        }
        let compression = if got >= 2 && magic[..2] == [0x1f, 0x8b] {
            Compression::Gzip
        } else if got == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
            Compression::Zstd
        } else {
            Compression::None
        };
        let head = io::Cursor::new(magic[..got].to_vec());
        let raw = head.chain(&mut *blob);
        let stream: Box<dyn Read + '_> = match compression {
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(raw)
                    .map_err(|e| self.layer_err(digest, format!("zstd decoder: {e}")))?,
            ),
            Compression::None => Box::new(raw),
        };
        let mut archive = tar::Archive::new(stream);
        let mut upper: BTreeMap<String, Node> = BTreeMap::new();
        let entries =
            archive.entries().map_err(|e| self.layer_err(digest, format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.layer_err(digest, format!("tar: {e}")))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let path = normalize(&raw_path).map_err(|why| self.unsafe_path(digest, &raw_path, why))?;
            if path.is_empty() {
                continue;
            }
            let (dir, base) = match path.rsplit_once('/') {
                Some((d, b)) => (d.to_string(), b.to_string()),
                None => (String::new(), path.clone()),
            };
            if base == ".wh..wh..opq" {
                self.remove_lower_under(&dir);
                continue;
            }
            if let Some(name) = base.strip_prefix(".wh.") {
                let victim = if dir.is_empty() { name.to_string() } else { format!("{dir}/{name}") };
                self.remove_lower(&victim);
                self.remove_lower_under(&victim);
                continue;
            }
            let kind = entry.header().entry_type();
            // Anything but a directory replaces what lower layers had at this path and below.
            if !kind.is_dir() {
                self.remove_lower(&path);
                self.remove_lower_under(&path);
            } else {
                // A directory replaces a lower non-directory (the map holds no directories).
                self.remove_lower(&path);
            }
            let node = if kind.is_file() || kind == tar::EntryType::Continuous || kind.is_gnu_sparse() {
                if self.wants(&path) {
                    Some(Node::File(self.stage(digest, &mut entry)?))
                } else {
                    self.count_entry(digest)?;
                    Some(Node::Other)
                }
            } else if kind.is_symlink() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if target.is_empty() {
                    return Err(self.unsafe_path(digest, &raw_path, "symlink without a target"));
                }
                if self.wants(&path) && escapes(&dir, &target) {
                    return Err(self.unsafe_path(
                        digest,
                        &format!("{raw_path} -> {target}"),
                        "symlink points outside the image",
                    ));
                }
                self.count_entry(digest)?;
                Some(Node::Symlink(target))
            } else if kind.is_hard_link() {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let target = normalize(&target_raw).map_err(|why| {
                    self.unsafe_path(
                        digest,
                        &format!("{raw_path} => {target_raw}"),
                        &format!("hard link target: {why}"),
                    )
                })?;
                let kept = upper.get(&target).or_else(|| self.nodes.get(&target)).cloned();
                match kept {
                    Some(Node::File(src)) => {
                        let dst = self.next_stage_path();
                        std::fs::hard_link(&src, &dst)
                            .or_else(|_| std::fs::copy(&src, &dst).map(|_| ()))
                            .map_err(|e| io_err("linking staged file", &dst, e))?;
                        Some(Node::File(dst))
                    }
                    _ => {
                        self.count_entry(digest)?;
                        Some(Node::Hardlink(target))
                    }
                }
            } else {
                None
            };
            if let Some(n) = node {
                if let Some(old) = upper.insert(path, n) {
                    drop_node(old);
                }
            } else if let Some(old) = upper.remove(&path) {
                drop_node(old);
            }
        }
        Ok(upper)
    }

    fn count_entry(&mut self, digest: &str) -> Result<(), RegistryError> {
        self.entries += 1;
        if self.entries > MAX_ENTRIES {
            return Err(self.layer_err(digest, format!("more than {MAX_ENTRIES} file entries in the image")));
        }
        Ok(())
    }

    fn next_stage_path(&mut self) -> PathBuf {
        self.staged += 1;
        self.staging.join(format!("f{}", self.staged))
    }

    /// Writes an entry's content to a new staging file, leaving holes for zero blocks.
    fn stage<R: Read>(&mut self, digest: &str, entry: &mut R) -> Result<PathBuf, RegistryError> {
        let path = self.next_stage_path();
        let mut f = File::create(&path).map_err(|e| io_err("creating", &path, e))?;
        let mut buf = vec![0u8; 1024 * 1024];
        let mut len: u64 = 0;
        let mut hole = false;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.layer_err(digest, format!("reading a file's content: {e}"))),
            };
            let chunk = &buf[..n];
            if chunk.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(n as i64)).map_err(|e| io_err("seeking", &path, e))?;
                hole = true;
            } else {
                f.write_all(chunk).map_err(|e| io_err("writing", &path, e))?;
                hole = false;
            }
            len += n as u64;
        }
        if hole {
            f.set_len(len).map_err(|e| io_err("setting the length of", &path, e))?;
        }
        Ok(path)
    }

    fn remove_lower(&mut self, path: &str) {
        if let Some(old) = self.nodes.remove(path) {
            drop_node(old);
        }
    }

    fn remove_lower_under(&mut self, dir: &str) {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        let keys: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.remove_lower(&k);
        }
    }

    /// Follows symlinks (in every component) and hard links from `path` to a kept file.
    fn resolve(&self, path: &str) -> Result<Resolved, RegistryError> {
        let mut todo: VecDeque<String> =
            path.split('/').filter(|c| !c.is_empty()).map(String::from).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        let escape = |link: &str| RegistryError::UnsafePath {
            registry: self.ctx.registry.clone(),
            image: self.ctx.image.clone(),
            digest: "(merged layers)".into(),
            path: link.to_string(),
            reason: format!("resolving /{path} leaves the image's root"),
        };
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    if cur.pop().is_none() {
                        return Err(escape(path));
                    }
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let p = cur.join("/");
            match self.nodes.get(&p) {
                Some(Node::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Ok(Resolved::Missing(format!("more than {MAX_LINK_HOPS} links")));
                    }
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    if escapes(&cur.join("/"), target) {
                        return Err(escape(&format!("/{p} -> {target}")));
                    }
                    for t in target.split('/').rev().filter(|c| !c.is_empty()) {
                        todo.push_front(t.to_string());
                    }
                }
                Some(Node::Hardlink(target)) => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Ok(Resolved::Missing(format!("more than {MAX_LINK_HOPS} links")));
                    }
                    cur.clear();
                    for t in target.split('/').rev().filter(|c| !c.is_empty()) {
                        todo.push_front(t.to_string());
                    }
                }
                Some(Node::File(staged)) => {
                    if todo.is_empty() {
                        return Ok(Resolved::File(staged.clone()));
                    }
                    return Ok(Resolved::Missing(format!("/{p} is a file, not a directory")));
                }
                Some(Node::Other) => {
                    if todo.is_empty() {
                        return Ok(if self.extra.contains(&p) || self.wants(&p) {
                            Resolved::Missing(format!("/{p} is not a regular file"))
                        } else {
                            Resolved::Need(p)
                        });
                    }
                    return Ok(Resolved::Missing(format!("/{p} is a file, not a directory")));
                }
                None => {}
            }
        }
        let p = cur.join("/");
        Ok(Resolved::Missing(if p == path {
            String::new()
        } else {
            format!("it resolves to /{p}, which does not exist")
        }))
    }
}

/// Whether a symlink in directory `dir` with `target` points outside the image root
/// (absolute targets are taken relative to the image root, as in a container).
fn escapes(dir: &str, target: &str) -> bool {
    let mut depth: usize =
        if target.starts_with('/') { 0 } else { dir.split('/').filter(|c| !c.is_empty()).count() };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if depth == 0 {
                    return true;
                }
                depth -= 1;
            }
            _ => depth += 1,
        }
    }
    false
}

fn drop_node(n: Node) {
    if let Node::File(p) = n {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_and_refuses_traversal() {
        assert_eq!(normalize("./disk/a.qcow2").unwrap(), "disk/a.qcow2");
        assert_eq!(normalize("disk/").unwrap(), "disk");
        assert_eq!(normalize("./").unwrap(), "");
        assert!(normalize("/etc/passwd").is_err());
        assert!(normalize("disk/../../x").is_err());
    }

    #[test]
    fn symlink_escape_check() {
        assert!(!escapes("boot", "vmlinuz-6.1"));
        assert!(!escapes("boot", "../usr/lib/vmlinuz"));
        assert!(escapes("boot", "../../etc/passwd"));
        assert!(!escapes("boot", "/usr/../boot/x"));
        assert!(escapes("", "/../x"));
    }

    #[test]
    fn blob_reader_checks_size_and_digest() {
        let data = b"hello world".to_vec();
        let d = Digest::of(&data);
        let mut ok = BlobReader::new(io::Cursor::new(data.clone()), d.clone(), data.len() as u64);
        let mut out = Vec::new();
        ok.read_to_end(&mut out).unwrap();
        assert!(ok.verified);

        let mut long = BlobReader::new(io::Cursor::new(data.clone()), d.clone(), 5);
        assert!(long.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(long.failure, Some(BlobFailure::TooLong)));

        let mut short = BlobReader::new(io::Cursor::new(data.clone()), d.clone(), 20);
        assert!(short.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(short.failure, Some(BlobFailure::TooShort(11))));

        let mut bad = BlobReader::new(io::Cursor::new(b"hello World".to_vec()), d, 11);
        assert!(bad.read_to_end(&mut Vec::new()).is_err());
        assert!(matches!(bad.failure, Some(BlobFailure::Digest(_))));
    }
}

#[cfg(test)]
mod extract_tests {
    use super::*;

    enum E<'a> {
        File(&'a str, &'a [u8]),
        Link(&'a str, &'a str),
        Hard(&'a str, &'a str),
    }

    fn layer(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            match e {
                E::File(p, d) => {
                    h.set_size(d.len() as u64);
                    b.append_data(&mut h, p, *d).unwrap();
                }
                E::Link(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
                E::Hard(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, p, t).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn run(layers: Vec<Vec<u8>>, sel: Selection) -> Result<Vec<(String, Vec<u8>)>, RegistryError> {
        let descs: Vec<Descriptor> = layers
            .iter()
            .map(|l| Descriptor {
                media_type: String::new(),
                digest: Digest::of(l).to_string(),
                size: l.len() as u64,
                platform: None,
            })
            .collect();
        let ctx = ErrCtx { registry: "r".into(), image: "i:t".into() };
        let dir = tempfile::tempdir().unwrap();
        let mut open = |d: &Descriptor| {
            let data = layers.iter().find(|l| Digest::of(l).to_string() == d.digest).unwrap().clone();
            let r: Box<dyn Read> = Box::new(io::Cursor::new(data));
            Ok(BlobReader::new(r, d.digest.parse().unwrap(), d.size))
        };
        let out = extract(&ctx, &descs, &sel, dir.path(), &mut open)?;
        Ok(out.into_iter().map(|(p, f)| (p, std::fs::read(f).unwrap())).collect())
    }

    #[test]
    fn hard_link_to_an_unwanted_file_takes_a_second_pass() {
        let l = layer(&[E::File("usr/lib/k", b"kernel"), E::Hard("boot/vmlinuz", "usr/lib/k")]);
        let got = run(vec![l], Selection::Files(vec!["boot/vmlinuz".into()])).unwrap();
        assert_eq!(got, vec![("boot/vmlinuz".to_string(), b"kernel".to_vec())]);
    }

    #[test]
    fn directory_symlink_and_opaque_whiteout() {
        let lower = layer(&[E::File("disk/old.img", b"old"), E::File("real/k", b"K")]);
        let upper = layer(&[
            E::File("disk/.wh..wh..opq", b""),
            E::File("disk/new.img", b"new"),
            E::Link("boot", "real"),
        ]);
        let got = run(vec![lower.clone(), upper.clone()], Selection::ContainerDisk).unwrap();
        assert_eq!(got, vec![("disk/new.img".to_string(), b"new".to_vec())]);
        let got = run(vec![lower, upper], Selection::Files(vec!["boot/k".into()])).unwrap();
        assert_eq!(got[0].1, b"K");
    }

    #[test]
    fn symlink_loops_and_escapes_are_errors() {
        let l = layer(&[E::Link("boot/a", "b"), E::Link("boot/b", "a")]);
        let e = run(vec![l], Selection::Files(vec!["boot/a".into()])).unwrap_err();
        assert!(e.to_string().contains("more than 40 links"), "{e}");
        let l = layer(&[E::Link("boot", "../../host")]);
        let e = run(vec![l], Selection::Files(vec!["boot/vmlinuz".into()])).unwrap_err();
        assert!(matches!(e, RegistryError::UnsafePath { .. }), "{e}");
    }
}
