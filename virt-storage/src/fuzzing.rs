//! Fuzz entry points of the storage layer: each takes arbitrary bytes and must never panic, hang or
//! allocate without bound. The cargo-fuzz targets in `fuzz/` call them (one line each) and
//! `tests/fuzz_entries.rs` runs them on random bytes and on every committed seed. See
//! `docs/fuzzing.md`.
//!
//! | Entry | Untrusted input | Who sends it |
//! | --- | --- | --- |
//! | [`qcow2_open`] | a qcow2 image | whoever made the imported image |
//! | [`image_probe`] | any image file: format detection, raw, qcow2, gzip / xz / zstd streams | the same |
//! | [`cdi_manifest`] | `cdi.kubevirt.io` YAML / JSON documents | API users |
//! | [`cloudinit_seed`] | cloud-init user and network data, instance id, hostname | API users |
//! | [`oci_manifest`] | OCI / Docker manifests and indexes, auth challenges, image references | registries, users |
//! | [`oci_layers`] | layer tarballs (plain, gzip, zstd) of a containerDisk or kernel image | registries |

use std::io::{Cursor, Read};
use std::path::Path;

use virt_core::api::Validate;

pub use crate::format::fuzzing::qcow2_open;

use crate::cdi::{self, CdiObject};
use crate::cloudinit::{build_image, SeedData, SeedInfo, SeedKind};
use crate::format::io::MemFile;
use crate::format::{detect_bytes, ImageFormat};
use crate::registry::extract::{extract, BlobReader, ErrCtx, Selection};
use crate::registry::manifest::{self, Document};
use crate::registry::{Descriptor, Digest, Reference};

/// Splits `data` at every 0xff byte (which no UTF-8 text holds), into at most `n` fields.
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0xff).collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Loads `data` as a YAML stream (or a JSON document when it starts with `{`) of CDI objects, as
/// the node's CDI API and `virtctl` do, validates every object, writes it back as YAML and JSON,
/// and checks that an accepted object loads back unchanged from its own JSON (the node stores it
/// so).
pub fn cdi_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loaded = if text.trim_start().starts_with('{') {
        cdi::load_json(text).map(|l| vec![l])
    } else {
        cdi::load_yaml(text)
    };
    let Ok(docs) = loaded else { return };
    for d in docs {
        let o = &d.object;
        let _ = o.validate();
        let _ = o.describe();
        let _ = o.to_yaml();
        match o {
            CdiObject::DataVolume(dv) => {
                let _ = dv.spec.requested_size();
                let _ = dv.spec.source.as_ref().map(|s| s.set());
            }
            CdiObject::DataImportCron(c) => {
                if let Ok(s) = cdi::Schedule::parse(&c.spec.schedule) {
                    let _ = s.next_after(1_700_000_000);
                    let _ = s.can_fire();
                }
            }
            _ => {}
        }
        if matches!(o, CdiObject::DataVolume(_) | CdiObject::DataSource(_) | CdiObject::DataImportCron(_)) {
            let Ok(json) = o.to_json_value() else { continue };
            let text = json.to_string();
            match cdi::load_json(&text) {
                Ok(back) => assert_eq!(&back.object, o, "JSON round trip changed the object: {text}"),
                Err(e) => panic!("an accepted object does not load back from its own JSON ({e}): {text}"),
            }
        }
    }
}

/// Builds a NoCloud and a ConfigDrive seed image from `data` and reads the files back.
///
/// Layout: fields separated by 0xff bytes: flags (byte 0: bit 0 user data as base64, bit 1 network
/// data as base64, bit 2 no network data, bit 3 a firmware UUID), user data, network data, instance
/// id, hostname, UUID. Whatever is accepted must be a FAT image whose `user-data` holds exactly the
/// decoded user data.
pub fn cloudinit_seed(data: &[u8]) {
    let f = fields(data, 6);
    let get = |i: usize| f.get(i).map(|b| text(b)).unwrap_or_default();
    let flags = f.first().and_then(|b| b.first()).copied().unwrap_or(0);
    let mut src = virt_core::model::CloudInitSource::default();
    if flags & 1 != 0 {
        src.user_data_base64 = Some(get(1));
    } else {
        src.user_data = Some(get(1));
    }
    if flags & 4 == 0 {
        if flags & 2 != 0 {
            src.network_data_base64 = Some(get(2));
        } else {
            src.network_data = Some(get(2));
        }
    }
    let mut info = SeedInfo::new(get(3), get(4));
    if flags & 8 != 0 {
        info = info.with_uuid(get(5));
    }
    let Ok(seed) = SeedData::from_source("fuzz", &src) else { return };
    for kind in [SeedKind::NoCloud, SeedKind::ConfigDrive] {
        let Ok(img) = build_image(kind, &seed, &info, Path::new("/run/fuzz/seed.img")) else { continue };
        let user = match kind {
            SeedKind::NoCloud => "user-data",
            SeedKind::ConfigDrive => "openstack/latest/user_data",
        };
        let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new())
            .unwrap_or_else(|e| panic!("{kind:?} seed image is not a FAT file system: {e}"));
        assert_eq!(fs.volume_label().trim_end(), kind.label(), "volume label");
        let mut got = Vec::new();
        fs.root_dir()
            .open_file(user)
            .and_then(|mut file| file.read_to_end(&mut got))
            .unwrap_or_else(|e| panic!("{kind:?} seed image: {user}: {e}"));
        assert_eq!(got, seed.user_data, "{kind:?} {user} differs from the user data");
    }
}

/// Parses `data` as a registry's manifest answer: field 0 the `Content-Type`, field 1 the body
/// (fields separated by 0xff). Then picks a platform from an index, and reads field 2 as a
/// `WWW-Authenticate` challenge and field 3 as an image reference.
pub fn oci_manifest(data: &[u8]) {
    let f = fields(data, 4);
    let content_type = f.first().map(|b| text(b));
    let body = f.get(1).copied().unwrap_or_default();
    match manifest::parse(body, content_type.as_deref()) {
        Ok(Document::Index { manifests, .. }) => {
            let _ = manifest::select_platform(&manifests, "linux", "amd64");
            let _ = manifest::platforms(&manifests);
            for m in &manifests {
                let _ = m.digest.parse::<Digest>();
            }
        }
        Ok(Document::Image { config, layers, .. }) => {
            for d in std::iter::once(&config).chain(&layers) {
                // parse() checked every digest.
                let digest: Result<Digest, _> = d.digest.parse();
                assert!(digest.is_ok(), "an accepted manifest has a bad digest: {}", d.digest);
            }
        }
        Err(_) => {}
    }
    if let Some(c) = f.get(2) {
        let _ = crate::registry::transport::parse_challenge_str(&text(c));
    }
    if let Some(r) = f.get(3) {
        if let Ok(r) = Reference::parse(&text(r)) {
            let _ = (r.registry(), r.api_host(), r.repository(), r.tag(), r.digest(), r.to_string());
        }
    }
}

/// Extracts an image made of the layers in `data` (separated by 0xff 0x00 0xff; a layer is a tar,
/// possibly gzip- or zstd-compressed) as the registry client does, into a fresh staging
/// directory: byte 0 picks what is wanted (even: the containerDisk's one disk; odd: `boot/vmlinuz`
/// and `boot/initrd`). Every staged file must lie inside the staging directory.
pub fn oci_layers(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else { return };
    let mut layers: Vec<&[u8]> = Vec::new();
    let mut tail = rest;
    while let Some(i) = tail.windows(3).position(|w| w == [0xff, 0x00, 0xff]) {
        layers.push(&tail[..i]);
        tail = &tail[i + 3..];
    }
    layers.push(tail);
    let descs: Vec<Descriptor> = layers
        .iter()
        .map(|l| Descriptor {
            media_type: String::new(),
            digest: Digest::of(l).to_string(),
            size: l.len() as u64,
            platform: None,
        })
        .collect();
    let selection = if sel % 2 == 0 {
        Selection::ContainerDisk
    } else {
        Selection::Files(vec!["boot/vmlinuz".into(), "boot/initrd".into()])
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    let staging = dir.path().join("staging");
    if std::fs::create_dir(&staging).is_err() {
        return;
    }
    let ctx = ErrCtx { registry: "fuzz.example".into(), image: "fuzz/image:latest".into() };
    let mut open = |d: &Descriptor| {
        let i = descs.iter().position(|x| x.digest == d.digest).unwrap_or(0);
        let r: Box<dyn Read> = Box::new(Cursor::new(layers[i].to_vec()));
        let digest = Digest::of(layers[i]);
        Ok(BlobReader::new(r, digest, d.size))
    };
    if let Ok(out) = extract(&ctx, &descs, &selection, &staging, &mut open) {
        for (path, staged) in out {
            let real = staged.canonicalize().unwrap_or_else(|e| panic!("{path}: {e}"));
            let root = staging.canonicalize().unwrap_or_else(|e| panic!("staging: {e}"));
            assert!(real.starts_with(&root), "{path} staged outside the staging directory: {real:?}");
            assert!(real.is_file(), "{path} staged as something other than a regular file");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("staging")], "files written beside staging");
}

/// Most decompressed bytes [`image_probe`] looks at.
const MAX_INFLATED: u64 = 4 << 20;

/// Probes `data` as an image file the way an import does: detects its format (from its first bytes
/// and its last 512), opens raw and qcow2 images (the qcow2 one with [`qcow2_open`]'s walk), and
/// inflates gzip, xz and zstd streams (at most 4 MiB) to probe what they hold, once.
pub fn image_probe(data: &[u8]) {
    probe(data, 0);
}

fn probe(data: &[u8], depth: u32) {
    let tail = (data.len() >= 1024).then(|| &data[data.len() - 512..]);
    let head = &data[..data.len().min(crate::format::detect::SNIFF_LEN)];
    let fmt = detect_bytes(head, tail);
    let file = MemFile::new(data.to_vec(), data.len() as u64);
    let detected = crate::format::detect::detect_file(&file, Path::new("fuzz.img"));
    assert!(matches!(detected, Ok(f) if f == fmt), "detect_file and detect_bytes disagree: {detected:?}");
    match fmt {
        ImageFormat::Qcow2 => qcow2_open(data),
        ImageFormat::Raw | ImageFormat::Iso9660 => {
            let img = crate::format::PlainBackend::new(
                virt_core::block::MemDisk::from_bytes(data.to_vec(), true),
                "fuzz.img",
            );
            let _ = crate::format::DiskImage::extent(&img, 0, u64::MAX);
        }
        ImageFormat::Gzip | ImageFormat::Xz | ImageFormat::Zstd if depth == 0 => {
            let cur = Cursor::new(data);
            let reader: Box<dyn Read> = match fmt {
                ImageFormat::Gzip => Box::new(flate2::read::MultiGzDecoder::new(cur)),
                ImageFormat::Zstd => match zstd::stream::read::Decoder::with_buffer(cur) {
                    Ok(d) => Box::new(d),
                    Err(_) => return,
                },
                _ => Box::new(xz2::read::XzDecoder::new_multi_decoder(cur)),
            };
            let mut inner = Vec::new();
            let _ = reader.take(MAX_INFLATED).read_to_end(&mut inner);
            probe(&inner, depth + 1);
        }
        _ => {}
    }
}
