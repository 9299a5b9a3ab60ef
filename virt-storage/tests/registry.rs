//! The registry client against a real registry: Debian's `docker-registry` (distribution 2.x)
//! started per test on a free 127.0.0.1 port with a temporary config and storage, images built
//! here as OCI layouts and pushed with `skopeo copy`. Needs the packages docker-registry,
//! skopeo and openssl (scripts/install-deps.sh installs them).

use std::fs;

use serde_json::Value;
use tempfile::TempDir;
use virt_storage::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};

mod support;
use support::registry::*;

#[path = "support/registry_servers.rs"]
mod servers;
use servers::*;

fn out_dir() -> TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn pull_by_tag_and_by_digest_gives_the_same_disk() {
    let reg = Registry::start(RegistryOpts::default());
    let mut layout = OciLayout::new();
    let disk = disk_bytes(1, 3 << 20);
    let desc = container_disk_image(&mut layout, "v1", "cirros.qcow2", &disk, Comp::Gzip);
    reg.push(&layout, "v1", "demo/cirros", &[]);
    let client = reg.client();

    let out = out_dir();
    let by_tag =
        client.extract_container_disk(&format!("docker://{}/demo/cirros:v1", reg.host), out.path()).unwrap();
    assert_eq!(by_tag, out.path().join("cirros.qcow2"));
    assert!(fs::read(&by_tag).unwrap() == disk, "disk pulled by tag differs");

    let digest = client.resolve_digest(&format!("{}/demo/cirros:v1", reg.host)).unwrap();
    assert_eq!(
        digest.to_string(),
        desc["digest"].as_str().unwrap(),
        "skopeo kept the OCI manifest as written"
    );
    let out2 = out_dir();
    let by_digest =
        client.extract_container_disk(&format!("{}/demo/cirros@{digest}", reg.host), out2.path()).unwrap();
    assert!(fs::read(&by_digest).unwrap() == disk, "disk pulled by digest differs");
    // Nothing but the disk is left in the destination (the staging directory is gone).
    let names: Vec<_> = fs::read_dir(out2.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("cirros.qcow2")]);
    assert_eq!(client.resolve_digest(&format!("{}/demo/cirros@{digest}", reg.host)).unwrap(), digest);
}

#[test]
fn docker_schema2_and_zstd_and_indexes() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();

    // Docker v2 schema 2: skopeo converts the OCI manifest on push.
    let disk = disk_bytes(2, 1 << 20);
    container_disk_image(&mut layout, "v2s2", "d.img", &disk, Comp::Gzip);
    reg.push(&layout, "v2s2", "demo/docker", &["--format", "v2s2"]);
    let m = client.fetch_manifest(&format!("{}/demo/docker:v2s2", reg.host)).unwrap();
    assert_eq!(m.media_type, "application/vnd.docker.distribution.manifest.v2+json");
    let out = out_dir();
    let p = client.extract_container_disk(&format!("{}/demo/docker:v2s2", reg.host), out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk);

    // zstd and plain tar layers.
    for (tag, c) in [("zstd", Comp::Zstd), ("plain", Comp::Plain)] {
        let disk = disk_bytes(3, 1 << 20);
        container_disk_image(&mut layout, tag, "z.raw", &disk, c);
        reg.push(&layout, tag, "demo/comp", &[]);
        let out = out_dir();
        let p = client.extract_container_disk(&format!("{}/demo/comp:{tag}", reg.host), out.path()).unwrap();
        assert!(fs::read(p).unwrap() == disk, "{tag} layer");
    }

    // A multi-platform index: arm64 first, amd64 second; the amd64 disk must come out.
    let arm = disk_bytes(4, 256 << 10);
    let amd = disk_bytes(5, 256 << 10);
    let arm_img = layout.image(&[(tar_of(&[Entry::File("disk/a.img", arm)]), Comp::Gzip)], "arm64");
    let amd_img = layout.image(&[(tar_of(&[Entry::File("disk/a.img", amd.clone())]), Comp::Gzip)], "amd64");
    let index = layout.index(&[arm_img, amd_img.clone()]);
    layout.tag("multi", &index);
    reg.push(&layout, "multi", "demo/multi", &["--all"]);
    let r = format!("{}/demo/multi:multi", reg.host);
    let m = client.fetch_manifest(&r).unwrap();
    assert_eq!(m.digest.to_string(), index["digest"].as_str().unwrap());
    assert_eq!(m.manifest_digest.to_string(), amd_img["digest"].as_str().unwrap());
    assert_eq!(client.resolve_digest(&r).unwrap(), m.digest, "a tag resolves to the index digest");
    let out = out_dir();
    let p = client.extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == amd, "picked the amd64 image from the OCI index");

    // The same as a Docker manifest list.
    reg.push(&layout, "multi", "demo/multi-docker", &["--all", "--format", "v2s2"]);
    let r = format!("{}/demo/multi-docker:multi", reg.host);
    let out = out_dir();
    let p = client.extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == amd, "picked the amd64 image from the manifest list");

    // An index without the wanted platform names what it has.
    let cfg = RegistryConfig { architecture: "s390x".into(), ..RegistryConfig::default() }
        .with_insecure_registry(&reg.host);
    let e = RegistryClient::new(cfg)
        .unwrap()
        .fetch_manifest(&format!("{}/demo/multi:multi", reg.host))
        .unwrap_err();
    assert!(matches!(e, RegistryError::NoPlatform { .. }), "{e}");
    assert!(e.to_string().contains("linux/arm64, linux/amd64"), "{e}");
}

#[test]
fn moving_a_tag_changes_the_resolved_digest() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();
    let r = format!("{}/golden/fedora:latest", reg.host);

    let d1 = container_disk_image(&mut layout, "latest", "f.qcow2", &disk_bytes(10, 64 << 10), Comp::Gzip);
    reg.push(&layout, "latest", "golden/fedora", &[]);
    let first = client.resolve_digest(&r).unwrap();
    assert_eq!(first.to_string(), d1["digest"].as_str().unwrap());
    assert_eq!(client.resolve_digest(&r).unwrap(), first, "stable while the tag does not move");

    let d2 = container_disk_image(&mut layout, "latest", "f.qcow2", &disk_bytes(11, 64 << 10), Comp::Gzip);
    reg.push(&layout, "latest", "golden/fedora", &[]);
    let second = client.resolve_digest(&r).unwrap();
    assert_ne!(first, second);
    assert_eq!(second.to_string(), d2["digest"].as_str().unwrap());
    // The old image is still there by digest.
    let out = out_dir();
    let p =
        client.extract_container_disk(&format!("{}/golden/fedora@{first}", reg.host), out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk_bytes(10, 64 << 10));
}

#[test]
fn missing_image_is_a_clear_404() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();
    container_disk_image(&mut layout, "v1", "c.img", &disk_bytes(20, 4096), Comp::Gzip);
    reg.push(&layout, "v1", "demo/cirros", &[]);

    let e = client.resolve_digest(&format!("{}/demo/cirros:v9", reg.host)).unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { status: 404, .. }), "{e:?}");
    let out = out_dir();
    let e = client.extract_container_disk(&format!("{}/demo/cirros:v9", reg.host), out.path()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "registry {}: image demo/cirros:v9 not found (404 on /v2/demo/cirros/manifests/v9)",
            reg.host
        )
    );
    let small = RegistryConfig { max_manifest_size: 100, ..RegistryConfig::default() }
        .with_insecure_registry(&reg.host);
    let e = RegistryClient::new(small)
        .unwrap()
        .fetch_manifest(&format!("{}/demo/cirros:v1", reg.host))
        .unwrap_err();
    assert!(matches!(e, RegistryError::TooLarge { limit: 100, .. }), "{e}");
    assert!(
        e.to_string().contains("manifest (/v2/demo/cirros/manifests/v1) is larger than the 100-byte limit"),
        "{e}"
    );
    let e = client.fetch_manifest(&format!("{}/no/such-repo:v1", reg.host)).unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("image no/such-repo:v1 not found"), "{e}");
}

#[test]
fn images_without_one_disk_are_refused_by_name() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();

    let none = layout.image(&[(tar_of(&[Entry::File("data/x.img", vec![1; 512])]), Comp::Gzip)], "amd64");
    layout.tag("nodisk", &none);
    let two = layout.image(
        &[(
            tar_of(&[Entry::File("disk/a.qcow2", vec![1; 512]), Entry::File("disk/b.raw", vec![2; 512])]),
            Comp::Gzip,
        )],
        "amd64",
    );
    layout.tag("two", &two);
    reg.push(&layout, "nodisk", "demo/bad", &[]);
    reg.push(&layout, "two", "demo/bad", &[]);

    let out = out_dir();
    let e = client.extract_container_disk(&format!("{}/demo/bad:nodisk", reg.host), out.path()).unwrap_err();
    assert!(matches!(e, RegistryError::NoDisk { .. }), "{e}");
    assert!(e.to_string().contains("image demo/bad:nodisk has no disk file under /disk/"), "{e}");
    let e = client.extract_container_disk(&format!("{}/demo/bad:two", reg.host), out.path()).unwrap_err();
    assert!(e.to_string().contains("several files under /disk/: /disk/a.qcow2, /disk/b.raw"), "{e}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "nothing left behind");
}

#[test]
fn kernel_boot_files_with_symlinks_and_whiteouts() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();
    let kernel = disk_bytes(30, 300 << 10);
    let initrd = disk_bytes(31, 200 << 10);
    let lower = tar_of(&[
        Entry::Dir("boot/"),
        Entry::File("boot/vmlinuz-6.1.0", kernel.clone()),
        Entry::File("boot/initrd.img-6.1.0", b"old initrd".to_vec()),
        Entry::File("boot/stale", b"to be whited out".to_vec()),
        Entry::Symlink("boot/vmlinuz", "vmlinuz-6.1.0"),
    ]);
    let upper = tar_of(&[
        Entry::File("boot/initrd.img-6.1.0", initrd.clone()),
        Entry::File("boot/.wh.stale", Vec::new()),
        Entry::Symlink("boot/initrd", "/boot/initrd.img-6.1.0"),
    ]);
    let img = layout.image(&[(lower, Comp::Zstd), (upper, Comp::Gzip)], "amd64");
    layout.tag("6.1", &img);
    reg.push(&layout, "6.1", "kernels/debian", &[]);
    let r = format!("{}/kernels/debian:6.1", reg.host);

    let out = out_dir();
    let files = client.extract_files(&r, &["boot/vmlinuz", "/boot/initrd"], out.path()).unwrap();
    assert_eq!(files, vec![out.path().join("boot/vmlinuz"), out.path().join("boot/initrd")]);
    assert!(fs::read(&files[0]).unwrap() == kernel, "kernel through its symlink");
    assert!(fs::read(&files[1]).unwrap() == initrd, "upper layer's initrd through an absolute symlink");

    let e = client.extract_files(&r, &["boot/stale"], out.path()).unwrap_err();
    assert!(matches!(e, RegistryError::FileNotFound { .. }), "{e}");
    assert!(e.to_string().contains("has no file /boot/stale"), "{e}");
    let e = client.extract_files(&r, &["../etc/passwd"], out.path()).unwrap_err();
    assert!(matches!(e, RegistryError::InvalidReference { .. }), "{e}");
}

#[test]
fn path_traversal_in_layers_is_refused() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();
    let cases = [
        (
            "dotdot",
            tar_of(&[Entry::RawPath("../../evil", b"x".to_vec()), Entry::File("disk/d.img", vec![1; 512])]),
        ),
        (
            "absolute",
            tar_of(&[Entry::RawPath("/etc/evil", b"x".to_vec()), Entry::File("disk/d.img", vec![1; 512])]),
        ),
        ("symlink", tar_of(&[Entry::Symlink("disk/d.img", "../../../../etc/shadow")])),
    ];
    for (tag, tar) in &cases {
        let img = layout.image(&[(tar.clone(), Comp::Gzip)], "amd64");
        layout.tag(tag, &img);
        reg.push(&layout, tag, "demo/evil", &[]);
    }
    for (tag, _) in &cases {
        let out = out_dir();
        let e =
            client.extract_container_disk(&format!("{}/demo/evil:{tag}", reg.host), out.path()).unwrap_err();
        assert!(matches!(e, RegistryError::UnsafePath { .. }), "{tag}: {e}");
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "{tag}: nothing written");
        assert!(!out.path().join("../../evil").exists());
    }
}

#[test]
fn corrupted_blob_is_a_digest_mismatch_naming_the_blob() {
    let reg = Registry::start(RegistryOpts::default());
    let client = reg.client();
    let mut layout = OciLayout::new();
    let disk = disk_bytes(40, 1 << 20);
    let img = container_disk_image(&mut layout, "v1", "c.img", &disk, Comp::Gzip);
    reg.push(&layout, "v1", "demo/corrupt", &[]);

    // The disk layer is the manifest's second layer; flip one byte of it in the registry's storage.
    let manifest: Value = serde_json::from_slice(
        &fs::read(layout.dir.path().join("blobs/sha256").join(&img["digest"].as_str().unwrap()[7..]))
            .unwrap(),
    )
    .unwrap();
    let blob = manifest["layers"][1]["digest"].as_str().unwrap().to_string();
    let hex = &blob[7..];
    let data = reg.storage().join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut bytes = fs::read(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&data, bytes).unwrap();

    let out = out_dir();
    let e = client.extract_container_disk(&format!("{}/demo/corrupt:v1", reg.host), out.path()).unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { what: "blob", .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("blob {blob} has wrong content")), "{e}");
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "no unverified disk left behind");
}

#[test]
fn basic_auth_with_right_wrong_and_no_credentials() {
    let reg = Registry::start(RegistryOpts {
        htpasswd: Some(("cdi".into(), "s3cret-key".into())),
        ..RegistryOpts::default()
    });
    let mut layout = OciLayout::new();
    let disk = disk_bytes(50, 128 << 10);
    container_disk_image(&mut layout, "v1", "p.img", &disk, Comp::Gzip);
    reg.push(&layout, "v1", "private/img", &[]);
    let r = format!("{}/private/img:v1", reg.host);

    let out = out_dir();
    let p = reg.client().extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk);

    let wrong = RegistryClient::new(
        RegistryConfig::default()
            .with_insecure_registry(&reg.host)
            .with_credentials(Credentials::new("cdi", "nope")),
    )
    .unwrap();
    let e = wrong.resolve_digest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("registry {}", reg.host)) && msg.contains("realm \"virt-test-realm\""),
        "{msg}"
    );
    assert!(msg.contains("refused the credentials"), "{msg}");

    let anonymous = RegistryClient::new(RegistryConfig::default().with_insecure_registry(&reg.host)).unwrap();
    let e = anonymous.extract_container_disk(&r, out_dir().path()).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e:?}");
    assert!(e.to_string().contains("wants credentials and none were given"), "{e}");
}

#[test]
fn tls_with_a_custom_ca() {
    let pki = Pki::new();
    let reg = Registry::start(RegistryOpts {
        tls: Some((pki.path("server.crt"), pki.path("server.key"))),
        ..RegistryOpts::default()
    });
    let mut layout = OciLayout::new();
    let disk = disk_bytes(60, 256 << 10);
    container_disk_image(&mut layout, "v1", "t.img", &disk, Comp::Gzip);
    reg.push(&layout, "v1", "secure/img", &[]);
    let r = format!("{}/secure/img:v1", reg.host);

    // Trusting the CA: verified TLS works.
    let ca = fs::read(pki.path("ca.crt")).unwrap();
    let trusted = RegistryClient::new(RegistryConfig::default().with_ca_bundle(ca)).unwrap();
    let out = out_dir();
    let p = trusted.extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk);

    // Without the CA: a TLS error naming the host, never a silent downgrade.
    let e = RegistryClient::new(RegistryConfig::default()).unwrap().resolve_digest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("TLS failure talking to registry {}", reg.host)), "{e}");

    // Another CA does not do either.
    let other = Pki::new();
    let e = RegistryClient::new(
        RegistryConfig::default().with_ca_bundle(fs::read(other.path("ca.crt")).unwrap()),
    )
    .unwrap()
    .resolve_digest(&r)
    .unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");

    // Configured as insecure: unverified TLS is allowed for this registry.
    let insecure = RegistryClient::new(RegistryConfig::default().with_insecure_registry(&reg.host)).unwrap();
    let out = out_dir();
    let p = insecure.extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk);

    // A bundle without certificates is refused up front.
    let e = RegistryClient::new(RegistryConfig::default().with_ca_bundle(b"not pem".to_vec())).unwrap_err();
    assert!(matches!(e, RegistryError::Config(_)), "{e}");
}

#[test]
fn plain_http_registry_needs_to_be_configured_insecure() {
    let reg = Registry::start(RegistryOpts::default());
    let mut layout = OciLayout::new();
    container_disk_image(&mut layout, "v1", "h.img", &disk_bytes(70, 4096), Comp::Gzip);
    reg.push(&layout, "v1", "plain/img", &[]);
    let r = format!("{}/plain/img:v1", reg.host);
    let e = RegistryClient::new(RegistryConfig::default()).unwrap().resolve_digest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains(&reg.host), "{e}");
    assert!(reg.client().resolve_digest(&r).is_ok());
}

#[test]
fn bearer_token_auth_through_the_challenge() {
    let tokens = TokenServer::start("cdi", "token-secret", "private/tok");
    let mut reg = Registry::start(RegistryOpts {
        token: Some((tokens.realm.clone(), TOKEN_SERVICE.into(), TOKEN_ISSUER.into(), tokens.cert.clone())),
        ..RegistryOpts::default()
    });
    reg.creds = Some(("cdi".into(), "token-secret".into()));
    let mut layout = OciLayout::new();
    let disk = disk_bytes(80, 200 << 10);
    container_disk_image(&mut layout, "v1", "b.img", &disk, Comp::Gzip);
    reg.push(&layout, "v1", "private/tok", &[]);
    let r = format!("{}/private/tok:v1", reg.host);

    tokens.queries.lock().unwrap().clear();
    let out = out_dir();
    let p = reg.client().extract_container_disk(&r, out.path()).unwrap();
    assert!(fs::read(p).unwrap() == disk);
    let asked = tokens.queries.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "one token for the manifest and every blob: {asked:?}");
    assert!(asked[0].contains("scope=repository%3Aprivate%2Ftok%3Apull"), "{asked:?}");
    assert!(asked[0].contains(&format!("service={TOKEN_SERVICE}")), "{asked:?}");

    let wrong = RegistryClient::new(
        RegistryConfig::default()
            .with_insecure_registry(&reg.host)
            .with_credentials(Credentials::new("cdi", "nope")),
    )
    .unwrap();
    let e = wrong.resolve_digest(&r).unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { status: 401, .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&format!("realm \"{}\"", tokens.realm)), "{msg}");
    assert!(msg.contains("the token service refused the credentials"), "{msg}");

    // A TLS registry whose token realm is plain HTTP: the credentials are not sent there
    // unless the registry is configured as insecure.
    let pki = Pki::new();
    let tls_reg = Registry::start(RegistryOpts {
        tls: Some((pki.path("server.crt"), pki.path("server.key"))),
        token: Some((tokens.realm.clone(), TOKEN_SERVICE.into(), TOKEN_ISSUER.into(), tokens.cert.clone())),
        ..RegistryOpts::default()
    });
    let r = format!("{}/private/tok:v1", tls_reg.host);
    let creds = Credentials::new("cdi", "token-secret");
    let strict = RegistryClient::new(
        RegistryConfig::default().with_ca_bundle(pki.ca_pem()).with_credentials(creds.clone()),
    )
    .unwrap();
    tokens.queries.lock().unwrap().clear();
    let e = strict.resolve_digest(&r).unwrap_err();
    assert!(e.to_string().contains("token realm is not an https:// URL"), "{e}");
    assert!(tokens.queries.lock().unwrap().is_empty(), "no request reached the plain-HTTP realm");
    let e = RegistryClient::new(
        RegistryConfig::default()
            .with_ca_bundle(pki.ca_pem())
            .with_credentials(creds)
            .with_insecure_registry(&tls_reg.host),
    )
    .unwrap()
    .resolve_digest(&r)
    .unwrap_err();
    assert!(matches!(e, RegistryError::NotFound { .. }), "insecure: token fetched, empty registry: {e}");
}

/// An image whose disk layer is one big uncompressed blob; returns (disk, disk layer digest, size).
fn big_layer_image(reg: &Registry, repo: &str) -> (Vec<u8>, String, u64) {
    let mut layout = OciLayout::new();
    let disk = disk_bytes(70, 4 << 20);
    container_disk_image(&mut layout, "v1", "big.img", &disk, Comp::Plain);
    reg.push(&layout, "v1", repo, &[]);
    // As the registry has it (skopeo may have compressed the layer on the way).
    let m = reg.client().fetch_manifest(&format!("{}/{repo}:v1", reg.host)).unwrap();
    let layer = &m.layers[1];
    (disk, layer.digest.clone(), layer.size)
}

#[test]
fn an_interrupted_layer_resumes_with_a_range_request_and_is_verified_whole() {
    let reg = Registry::start(RegistryOpts::default());
    let (disk, blob, size) = big_layer_image(&reg, "demo/big");
    assert!(size > 2 << 20, "{size}");

    // Two connections are cut 1 MiB into their answers: the layer arrives in three pieces.
    let proxy = FaultProxy::start(&reg.host, Faults { cut_after: 1 << 20, cuts: 2, corrupt_ranged: false });
    let out = out_dir();
    let p =
        proxy.client().extract_container_disk(&format!("{}/demo/big:v1", proxy.host), out.path()).unwrap();
    assert!(fs::read(&p).unwrap() == disk, "the resumed disk differs");

    let blob_reqs = proxy.blob_requests();
    let ranged: Vec<&String> =
        blob_reqs.iter().filter(|r| r.contains(&blob) && r.contains("range=")).collect();
    assert_eq!(ranged.len(), 2, "two resumes with Range: {blob_reqs:#?}");
    for r in &ranged {
        let from: u64 = r.rsplit("bytes=").next().unwrap().trim_end_matches('-').parse().unwrap();
        assert!(from > 0 && from < size, "{r}");
    }
    // Not started over: about one blob's worth went through the proxy, not two or three.
    let down = proxy.down.load(std::sync::atomic::Ordering::SeqCst);
    assert!(down < size + (256 << 10), "{down} bytes for a {size}-byte layer: the download restarted");
}

#[test]
fn a_resumed_layer_with_wrong_bytes_after_the_resume_is_a_digest_mismatch() {
    let reg = Registry::start(RegistryOpts::default());
    let (_disk, blob, _size) = big_layer_image(&reg, "demo/bigbad");
    // One cut, and the answer to the ranged request is tampered with: only the digest of the whole
    // blob (both pieces) can tell.
    let proxy = FaultProxy::start(&reg.host, Faults { cut_after: 1 << 20, cuts: 1, corrupt_ranged: true });
    let out = out_dir();
    let e = proxy
        .client()
        .extract_container_disk(&format!("{}/demo/bigbad:v1", proxy.host), out.path())
        .unwrap_err();
    assert!(matches!(e, RegistryError::DigestMismatch { what: "blob", .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("blob {blob} has wrong content")), "{e}");
    assert!(proxy.blob_requests().iter().any(|r| r.contains(&blob) && r.contains("range=")));
    assert_eq!(fs::read_dir(out.path()).unwrap().count(), 0, "no unverified disk left behind");
}
