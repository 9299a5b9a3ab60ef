//! The registry client against a real registry: Debian's `docker-registry` (distribution 2.x)
//! started per test on a free 127.0.0.1 port with a temporary config and storage, images built
//! here as OCI layouts and pushed with `skopeo copy`. Needs the packages docker-registry,
//! skopeo and openssl (scripts/install-deps.sh installs them).

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use virt_storage::registry::{Credentials, RegistryClient, RegistryConfig, RegistryError};

mod support;
use support::registry::*;

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

/// A CA and a server certificate for 127.0.0.1 made with the openssl CLI.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let openssl = require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        run(Command::new(&openssl).current_dir(d).args(["req", "-x509"]).args(ec).args([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=virt-storage test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]));
        run(Command::new(&openssl).current_dir(d).arg("req").args(ec).args([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]));
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(Command::new(&openssl).current_dir(d).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_pem(&self) -> Vec<u8> {
        fs::read(self.path("ca.crt")).unwrap()
    }
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

/// A minimal token service for the registry's bearer auth: checks HTTP basic credentials and
/// hands out one JWT (RS256, signed with the openssl CLI, its certificate in `x5c`) that grants
/// pull and push on one repository. Records the query strings it was asked.
struct TokenServer {
    realm: String,
    cert: PathBuf,
    queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: TempDir,
}

const TOKEN_SERVICE: &str = "virt-test-registry";
const TOKEN_ISSUER: &str = "virt-test-issuer";

impl TokenServer {
    fn start(user: &str, pass: &str, repo: &str) -> TokenServer {
        use base64::Engine as _;
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let b64 = base64::engine::general_purpose::STANDARD;

        let openssl = require("openssl", "openssl");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        run(Command::new(&openssl).current_dir(d).args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "tok.key",
            "-out",
            "tok.crt",
            "-days",
            "2",
            "-subj",
            "/CN=virt-storage token signer",
        ]));
        run(Command::new(&openssl)
            .current_dir(d)
            .args(["x509", "-in", "tok.crt", "-outform", "DER", "-out", "tok.der"]));
        let der = fs::read(d.join("tok.der")).unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [b64.encode(&der)]});
        let claims = json!({
            "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
            "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "virt-test-1",
            "access": [{"type": "repository", "name": repo, "actions": ["pull", "push"]}],
        });
        let signing_input = format!(
            "{}.{}",
            b64url.encode(serde_json::to_vec(&header).unwrap()),
            b64url.encode(serde_json::to_vec(&claims).unwrap())
        );
        fs::write(d.join("input"), &signing_input).unwrap();
        run(Command::new(&openssl)
            .current_dir(d)
            .args(["dgst", "-sha256", "-sign", "tok.key", "-out", "sig", "input"]));
        let token = format!("{signing_input}.{}", b64url.encode(fs::read(d.join("sig")).unwrap()));

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let expected_auth = format!("Basic {}", b64.encode(format!("{user}:{pass}")));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, st) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 10 minutes, and it stops when the test drops the server.
            let deadline = Instant::now() + Duration::from_secs(600);
            while !st.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (stream, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            auth = v.trim().to_string();
                        }
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("").to_string();
                q.lock()
                    .unwrap()
                    .push(target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default());
                let (status, body) = if auth == expected_auth {
                    ("200 OK", json!({"token": token, "expires_in": 3600}).to_string())
                } else {
                    (
                        "401 Unauthorized",
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#.into(),
                    )
                };
                let mut s = stream;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer { realm, cert: d.join("tok.crt"), queries, stop, thread: Some(thread), _dir: dir }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

// ---------------------------------------------------------------------------------------------
// Interrupted blob downloads: a fault-injecting TCP proxy in front of the registry
// ---------------------------------------------------------------------------------------------

/// What the proxy breaks.
#[derive(Clone, Copy)]
struct Faults {
    /// Cut a connection (both ways) once this many response bytes went through it...
    cut_after: u64,
    /// ...for this many connections.
    cuts: usize,
    /// Flip one byte of the response to every request carrying a `Range` header.
    corrupt_ranged: bool,
}

/// A TCP proxy on 127.0.0.1 in front of the registry: logs every request head (`METHOD path` and
/// its `Range` header), counts the response bytes it forwards and injects `Faults`. Stops when
/// dropped (and after 10 minutes at most).
struct FaultProxy {
    host: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    fn start(upstream: &str, faults: Faults) -> FaultProxy {
        use std::io::Read;
        use std::net::{Shutdown, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let cuts_left = Arc::new(AtomicUsize::new(faults.cuts));
        let upstream = upstream.to_string();
        let (log, down2, stop2) = (requests.clone(), down.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(&upstream) else { continue };
                for s in [&client, &server] {
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                }
                // Set by the request direction when a ranged request went up: the response bytes
                // forwarded on this connection so far (the ranged answer starts after them).
                let ranged_at = Arc::new(Mutex::new(None::<u64>));
                // Requests: client -> registry, heads logged.
                let (mut c, mut s) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (log, ranged, conn_down) = (log.clone(), ranged_at.clone(), Arc::new(AtomicU64::new(0)));
                let conn_down2 = conn_down.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut text = String::new();
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        text.push_str(&String::from_utf8_lossy(&buf[..n]));
                        while let Some(end) = text.find("\r\n\r\n") {
                            let head: String = text.drain(..end + 4).collect();
                            let line = head.lines().next().unwrap_or("").to_string();
                            let range = head
                                .lines()
                                .find(|l| l.to_ascii_lowercase().starts_with("range:"))
                                .map(|l| l[6..].trim().to_string());
                            if let Some(r) = &range {
                                *ranged.lock().unwrap() = Some(conn_down2.load(Ordering::SeqCst));
                                log.lock().unwrap().push(format!("{line} range={r}"));
                            } else {
                                log.lock().unwrap().push(line);
                            }
                        }
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
                // Responses: registry -> client, counted, cut or corrupted.
                let (mut c, mut s) = (client, server);
                let (down, cuts_left) = (down2.clone(), cuts_left.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut corrupted = false;
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let before = conn_down.load(Ordering::SeqCst);
                        let chunk = &mut buf[..n];
                        if faults.corrupt_ranged && !corrupted {
                            // 4 KiB into the ranged answer: well past its headers.
                            if let Some(at) = *ranged_at.lock().unwrap() {
                                let target = at + 4096;
                                if target >= before && target < before + n as u64 {
                                    chunk[(target - before) as usize] ^= 0x5a;
                                    corrupted = true;
                                }
                            }
                        }
                        let over = before + n as u64 > faults.cut_after;
                        if over
                            && cuts_left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                                .is_ok()
                        {
                            let keep = faults.cut_after.saturating_sub(before) as usize;
                            let _ = c.write_all(&chunk[..keep]);
                            down.fetch_add(keep as u64, Ordering::SeqCst);
                            break;
                        }
                        if c.write_all(chunk).is_err() {
                            break;
                        }
                        conn_down.fetch_add(n as u64, Ordering::SeqCst);
                        down.fetch_add(n as u64, Ordering::SeqCst);
                    }
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = s.shutdown(Shutdown::Both);
                });
            }
        });
        FaultProxy { host, requests, down, stop, thread: Some(thread) }
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(RegistryConfig::default().with_insecure_registry(&self.host)).unwrap()
    }

    fn blob_requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|r| r.contains("/blobs/")).cloned().collect()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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
