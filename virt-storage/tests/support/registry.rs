//! Test support: a real docker-registry per test, OCI layouts pushed with skopeo, tar layers.
//! Shared by the registry client tests and the tests that import containerDisks.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tempfile::TempDir;
use virt_storage::registry::{Credentials, RegistryClient, RegistryConfig};

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

pub fn require(bin: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"] {
        let p = Path::new(dir).join(bin);
        if p.exists() {
            return p;
        }
    }
    panic!("{bin} not found: install the Debian package {package} (bash scripts/install-deps.sh)");
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes with a zero run in the middle (a hole to keep sparse).
pub fn disk_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    let (a, b) = (len / 3, len / 3 + (len / 4));
    v[a..b].fill(0);
    v
}

// ---------------------------------------------------------------------------------------------
// The registry process
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct RegistryOpts {
    /// (user, password) for an htpasswd-protected registry.
    pub htpasswd: Option<(String, String)>,
    /// (certificate, key) PEM files to serve TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Bearer-token auth: (realm URL, service, issuer, token-signing certificate).
    pub token: Option<(String, String, String, PathBuf)>,
}

/// A docker-registry process; killed when dropped.
pub struct Registry {
    pub child: Child,
    pub dir: TempDir,
    pub host: String,
    pub tls: bool,
    pub creds: Option<(String, String)>,
}

impl Registry {
    pub fn start(opts: RegistryOpts) -> Registry {
        let bin = require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        fs::create_dir(&storage).unwrap();
        let htpasswd = dir.path().join("htpasswd");
        if let Some((user, pass)) = &opts.htpasswd {
            let hash = bcrypt::hash(pass, 5).unwrap();
            fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
        }
        // Ask the kernel for a free port, then hand it to the registry (retried if taken). One
        // start at a time in this process: a port picked (and released) by one test must not be
        // picked by another before the first registry bound it; the second registry would fail to
        // bind, and wait_ready would take the first one's answer for its own (seen in CI: the
        // second test then talked to a registry that went away with the first test).
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let host = format!("127.0.0.1:{port}");
            let mut cfg = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                storage.display()
            );
            if let Some((cert, key)) = &opts.tls {
                cfg.push_str(&format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            if let Some((realm, service, issuer, cert)) = &opts.token {
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    \
                     rootcertbundle: {}\n",
                    cert.display()
                ));
            }
            if opts.htpasswd.is_some() {
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: virt-test-realm\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let cfg_path = dir.path().join("config.yml");
            fs::write(&cfg_path, cfg).unwrap();
            let log_path = dir.path().join("registry.log");
            let log = fs::File::create(&log_path).unwrap();
            let mut child = Command::new(&bin)
                .arg("serve")
                .arg(&cfg_path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
            if wait_ready(&mut child, &host) {
                return Registry { child, dir, host, tls: opts.tls.is_some(), creds: opts.htpasswd.clone() };
            }
            let _ = child.kill();
            let _ = child.wait();
            let log = fs::read_to_string(&log_path).unwrap_or_default();
            eprintln!("registry attempt {attempt} on {host} did not come up:\n{log}");
        }
        panic!("docker-registry did not start (see the logs above)");
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Pushes `layout:tag` to `repo:tag` with skopeo.
    pub fn push(&self, layout: &OciLayout, tag: &str, repo: &str, extra: &[&str]) {
        let skopeo = require("skopeo", "skopeo");
        let mut cmd = Command::new(skopeo);
        cmd.args(["--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.creds {
            cmd.arg("--dest-creds").arg(format!("{u}:{p}"));
        }
        cmd.args(extra);
        cmd.arg(format!("oci:{}:{tag}", layout.dir.path().display()));
        cmd.arg(format!("docker://{}/{repo}:{tag}", self.host));
        run(&mut cmd);
    }

    /// A client configured for this registry (insecure when it serves plain HTTP).
    pub fn client(&self) -> RegistryClient {
        let mut cfg = RegistryConfig::default();
        if !self.tls {
            cfg = cfg.with_insecure_registry(&self.host);
        }
        if let Some((u, p)) = &self.creds {
            cfg = cfg.with_credentials(Credentials::new(u, p));
        }
        RegistryClient::new(cfg).unwrap()
    }
}

pub fn wait_ready(child: &mut Child, host: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(host).is_ok() {
            // Someone answers; ours, unless it exits at once (it could not bind: the port is
            // another's).
            std::thread::sleep(Duration::from_millis(100));
            return matches!(child.try_wait(), Ok(None));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// OCI layouts built by hand
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
pub enum Comp {
    Gzip,
    Zstd,
    Plain,
}

pub enum Entry<'a> {
    File(&'a str, Vec<u8>),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    /// A path written raw into the header, bypassing the tar crate's checks.
    RawPath(&'a str, Vec<u8>),
}

pub fn tar_of(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, data.as_slice()).unwrap();
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::RawPath(p, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                let name = &mut h.as_old_mut().name;
                name.fill(0);
                name[..p.len()].copy_from_slice(p.as_bytes());
                h.set_cksum();
                b.append(&h, data.as_slice()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(tar).unwrap();
            (e.finish().unwrap(), "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        Comp::Zstd => (zstd::encode_all(tar, 3).unwrap(), "application/vnd.oci.image.layer.v1.tar+zstd"),
        Comp::Plain => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
    }
}

/// An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`).
pub struct OciLayout {
    pub dir: TempDir,
    pub tags: Vec<Value>,
}

impl OciLayout {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(dir.path().join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let l = OciLayout { dir, tags: Vec::new() };
        l.write_index();
        l
    }

    pub fn blob(&self, data: &[u8], media_type: &str) -> Value {
        let hex = sha256_hex(data);
        fs::write(self.dir.path().join("blobs/sha256").join(&hex), data).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
    }

    /// Writes an image of `layers` (tar bytes, lowest first) and returns its manifest descriptor.
    pub fn image(&self, layers: &[(Vec<u8>, Comp)], arch: &str) -> Value {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, c) in layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            let (blob, mt) = compress(tar, *c);
            descs.push(self.blob(&blob, mt));
        }
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}
        });
        let config =
            self.blob(&serde_json::to_vec(&config).unwrap(), "application/vnd.oci.image.config.v1+json");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": descs,
        });
        let mut d =
            self.blob(&serde_json::to_vec(&manifest).unwrap(), "application/vnd.oci.image.manifest.v1+json");
        d["platform"] = json!({"architecture": arch, "os": "linux"});
        d
    }

    /// Writes an index of `manifests` and returns its descriptor.
    pub fn index(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.blob(&serde_json::to_vec(&index).unwrap(), "application/vnd.oci.image.index.v1+json")
    }

    pub fn tag(&mut self, tag: &str, desc: &Value) {
        let mut d = desc.clone();
        d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        self.tags.retain(|t| t["annotations"]["org.opencontainers.image.ref.name"] != tag);
        self.tags.push(d);
        self.write_index();
    }

    pub fn write_index(&self) {
        let index = json!({"schemaVersion": 2, "manifests": self.tags});
        fs::write(self.dir.path().join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }
}

/// A containerDisk-style image: a base layer with some files, the disk in its own layer.
pub fn container_disk_image(
    layout: &mut OciLayout,
    tag: &str,
    disk_name: &str,
    disk: &[u8],
    c: Comp,
) -> Value {
    let base = tar_of(&[
        Entry::Dir("etc/"),
        Entry::File("etc/os-release", b"ID=test\n".to_vec()),
        Entry::File("README", b"containerDisk test image\n".to_vec()),
    ]);
    let disk_layer = tar_of(&[Entry::Dir("disk/"), Entry::File(&format!("disk/{disk_name}"), disk.to_vec())]);
    let desc = layout.image(&[(base, c), (disk_layer, c)], "amd64");
    layout.tag(tag, &desc);
    desc
}
