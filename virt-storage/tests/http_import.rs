//! HTTP imports against a real HTTP/1.1 server on 127.0.0.1 that this test runs: Range requests,
//! basic auth, dropped connections, lying lengths, HTML answers. Images are made with real qemu-img.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virt_storage::import::http::{HttpOptions, HttpSource};
use virt_storage::import::{import, ImportError, ImportOptions, Progress};
use virt_storage::volume::{DirPool, VolumeFormat, VolumeId, VolumeProvider};

#[derive(Clone, Default)]
struct Object {
    data: Vec<u8>,
    content_type: Option<&'static str>,
    /// "user:pass" required.
    auth: Option<&'static str>,
    /// Close the connection after this many body bytes, for the first `drops` requests.
    drop_after: Option<usize>,
    drops: usize,
    /// Ignore Range headers (always answer 200 with the whole body).
    no_ranges: bool,
    /// Never send bytes past this offset of the object (a server that always breaks at one spot).
    stall_at: Option<usize>,
}

struct Server {
    port: u16,
    objects: Arc<Mutex<HashMap<String, Object>>>,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let objects: Arc<Mutex<HashMap<String, Object>>> = Arc::default();
        let requests = Arc::new(AtomicUsize::new(0));
        let (o, r) = (objects.clone(), requests.clone());
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (o, r) = (o.clone(), r.clone());
                std::thread::spawn(move || serve(s, &o, &r));
            }
        });
        Self { port, objects, requests }
    }
    fn put(&self, path: &str, obj: Object) -> String {
        self.objects.lock().unwrap().insert(path.to_string(), obj);
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(s: TcpStream, objects: &Mutex<HashMap<String, Object>>, requests: &AtomicUsize) {
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    loop {
        let mut line = String::new();
        if rd.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if rd.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let mut objs = objects.lock().unwrap();
        let Some(obj) = objs.get_mut(&path) else {
            let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        if let Some(a) = obj.auth {
            let want = format!("Basic {}", b64(a.as_bytes()));
            if headers.get("authorization") != Some(&want) {
                let _ = w.write_all(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"t\"\r\nContent-Length: 0\r\n\r\n");
                continue;
            }
        }
        let total = obj.data.len();
        let start = match headers.get("range") {
            Some(r) if !obj.no_ranges => {
                r.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap_or(0)
            }
            _ => 0,
        };
        let ct = obj.content_type.unwrap_or("application/octet-stream");
        let head = if start > 0 {
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{total}\r\n\r\n",
                total - start,
                total - 1
            )
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nAccept-Ranges: bytes\r\nContent-Length: {total}\r\n\r\n")
        };
        let end = obj.stall_at.unwrap_or(total).max(start);
        let body = obj.data[start..end].to_vec();
        let stalls = obj.stall_at.is_some();
        let cut = if obj.drops > 0 {
            obj.drops -= 1;
            obj.drop_after
        } else {
            None
        };
        drop(objs);
        if w.write_all(head.as_bytes()).is_err() {
            return;
        }
        match cut {
            Some(n) => {
                let _ = w.write_all(&body[..n.min(body.len())]);
                let _ = w.flush();
                return; // drop the connection mid-body
            }
            None => {
                if w.write_all(&body).is_err() || stalls {
                    return;
                }
            }
        }
    }
}

fn b64(d: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    d.chunks(3)
        .flat_map(|c| {
            let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            (0..4)
                .map(move |i| if i <= c.len() { T[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' })
        })
        .collect()
}

/// A 4 MiB raw disk with data, zeros and a pattern.
fn disk() -> Vec<u8> {
    let mut d = vec![0u8; 4 << 20];
    for (i, b) in d[..1 << 20].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    d[3 << 20..(3 << 20) + 4096].fill(0x77);
    d
}

fn sha256(d: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x");
    std::fs::write(&p, d).unwrap();
    let out = Command::new("sha256sum").arg(&p).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn pool() -> (tempfile::TempDir, DirPool) {
    let d = tempfile::tempdir().unwrap();
    let p = DirPool::new(d.path().join("pool")).unwrap();
    (d, p)
}

fn run(
    pool: &DirPool,
    name: &str,
    url: &str,
    http: HttpOptions,
    opts: ImportOptions,
) -> (Result<virt_storage::import::ImportOutcome, ImportError>, Vec<Progress>) {
    let mut seen = Vec::new();
    let src = match HttpSource::new(url, http) {
        Ok(s) => s,
        Err(e) => return (Err(e), seen),
    };
    let r = import(pool, &VolumeId::new("default", name), Box::new(src), &opts, &mut |p| seen.push(p));
    (r, seen)
}

fn contents(pool: &DirPool, name: &str) -> Vec<u8> {
    let v = pool.open(&VolumeId::new("default", name), true).unwrap();
    let mut b = vec![0u8; v.size() as usize];
    v.read_at(0, &mut b).unwrap();
    b
}

fn compress(cmd: &str, data: &[u8]) -> Vec<u8> {
    let mut c = Command::new(cmd)
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = c.stdin.take().unwrap();
    let d = data.to_vec();
    let t = std::thread::spawn(move || stdin.write_all(&d).unwrap());
    let mut out = Vec::new();
    c.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    t.join().unwrap();
    assert!(c.wait().unwrap().success());
    out
}

#[test]
fn raw_gzip_xz_and_qcow2_images_import_byte_for_byte() {
    let srv = Server::start();
    let (_d, pool) = pool();
    let raw = disk();
    let url = srv.put("/disk.img", Object { data: raw.clone(), ..Default::default() });
    let (r, seen) = run(
        &pool,
        "raw",
        &url,
        HttpOptions::default(),
        ImportOptions { sha256: Some(sha256(&raw)), ..Default::default() },
    );
    let out = r.unwrap();
    assert_eq!((out.bytes_received, out.resumes, out.used_scratch), (raw.len() as u64, 0, false));
    assert_eq!(contents(&pool, "raw"), raw);
    assert_eq!(seen.last().unwrap().percent(), "100.00%");

    for (tool, name) in [("gzip", "gz"), ("xz", "xz")] {
        let url = srv
            .put(&format!("/disk.img.{name}"), Object { data: compress(tool, &raw), ..Default::default() });
        let out = run(&pool, name, &url, HttpOptions::default(), ImportOptions::default()).0.unwrap();
        assert!(out.compression.is_some());
        assert_eq!(contents(&pool, name), raw, "{tool}");
    }

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.raw"), &raw).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(dir.path().join("d.raw"))
        .arg(dir.path().join("d.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    let url = srv.put(
        "/disk.qcow2",
        Object { data: std::fs::read(dir.path().join("d.qcow2")).unwrap(), ..Default::default() },
    );
    let out = run(
        &pool,
        "fromqcow2",
        &url,
        HttpOptions::default(),
        ImportOptions { format: VolumeFormat::Qcow2, ..Default::default() },
    )
    .0
    .unwrap();
    assert!(out.used_scratch);
    assert_eq!(out.volume.format, VolumeFormat::Qcow2);
    assert_eq!(contents(&pool, "fromqcow2"), raw);
}

#[test]
fn a_dropped_connection_resumes_with_a_range_request() {
    let srv = Server::start();
    let (_d, pool) = pool();
    let raw = disk();
    let url = srv.put(
        "/flaky.img",
        Object { data: raw.clone(), drop_after: Some(1 << 20), drops: 2, ..Default::default() },
    );
    let out = run(
        &pool,
        "flaky",
        &url,
        HttpOptions::default(),
        ImportOptions { sha256: Some(sha256(&raw)), ..Default::default() },
    )
    .0
    .unwrap();
    assert_eq!(out.resumes, 2);
    assert_eq!(contents(&pool, "flaky"), raw);
    assert_eq!(srv.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn failures_leave_no_volume_and_say_why() {
    let srv = Server::start();
    let (_d, pool) = pool();
    let raw = disk();
    let check = |name: &str, r: Result<virt_storage::import::ImportOutcome, ImportError>, want: &str| {
        let e = r.err().unwrap_or_else(|| panic!("{name}: import should fail"));
        assert!(e.to_string().contains(want), "{name}: {e}");
        assert!(
            pool.get(&VolumeId::new("default", name)).unwrap().is_none(),
            "{name}: a failed import left a volume"
        );
    };
    let url = format!("http://127.0.0.1:{}/missing.img", srv.port);
    check(
        "notfound",
        run(&pool, "notfound", &url, HttpOptions::default(), ImportOptions::default()).0,
        "HTTP 404",
    );

    let url = srv.put("/sum.img", Object { data: raw.clone(), ..Default::default() });
    check(
        "badsum",
        run(
            &pool,
            "badsum",
            &url,
            HttpOptions::default(),
            ImportOptions { sha256: Some("00".repeat(32)), ..Default::default() },
        )
        .0,
        "checksum mismatch",
    );

    // The server always breaks at the same byte: after the retries the import fails, nothing is kept.
    let url =
        srv.put("/trunc.img", Object { data: raw.clone(), stall_at: Some(3 << 20), ..Default::default() });
    check(
        "trunc",
        run(
            &pool,
            "trunc",
            &url,
            HttpOptions::default(),
            ImportOptions { max_retries: 2, ..Default::default() },
        )
        .0,
        "after 2 retries",
    );

    // A server without ranges cannot resume.
    let url = srv.put(
        "/norange.img",
        Object {
            data: raw.clone(),
            drop_after: Some(1 << 20),
            drops: 1,
            no_ranges: true,
            ..Default::default()
        },
    );
    check(
        "norange",
        run(&pool, "norange", &url, HttpOptions::default(), ImportOptions::default()).0,
        "cannot resume",
    );

    let url = srv.put(
        "/page",
        Object {
            data: b"<!DOCTYPE html><html>login</html>".to_vec(),
            content_type: Some("text/html"),
            ..Default::default()
        },
    );
    check("html", run(&pool, "html", &url, HttpOptions::default(), ImportOptions::default()).0, "HTML");
    let url = srv.put(
        "/text",
        Object {
            data: b"just some words\n".to_vec(),
            content_type: Some("text/plain"),
            ..Default::default()
        },
    );
    check(
        "text",
        run(&pool, "text", &url, HttpOptions::default(), ImportOptions::default()).0,
        "not a whole number of 512-byte sectors",
    );
    let mut vmdk = vec![0u8; 4096];
    vmdk[..4].copy_from_slice(b"KDMV");
    let url = srv.put("/d.vmdk", Object { data: vmdk, ..Default::default() });
    check("vmdk", run(&pool, "vmdk", &url, HttpOptions::default(), ImportOptions::default()).0, "vmdk");
    check(
        "badurl",
        run(&pool, "badurl", "ftp://example/x", HttpOptions::default(), ImportOptions::default()).0,
        "not http or https",
    );
}

#[test]
fn basic_auth_credentials_are_sent_and_checked() {
    let srv = Server::start();
    let (_d, pool) = pool();
    let raw = disk();
    let url = srv
        .put("/secret.img", Object { data: raw.clone(), auth: Some("alice:s3cret"), ..Default::default() });
    let e = run(&pool, "noauth", &url, HttpOptions::default(), ImportOptions::default()).0.err().unwrap();
    assert!(matches!(e, ImportError::Http { status: 401, .. }), "{e}");
    let bad = HttpOptions { basic_auth: Some(("alice".into(), "wrong".into())), ..Default::default() };
    assert!(run(&pool, "badauth", &url, bad, ImportOptions::default()).0.is_err());
    let good = HttpOptions { basic_auth: Some(("alice".into(), "s3cret".into())), ..Default::default() };
    run(&pool, "auth", &url, good, ImportOptions::default()).0.unwrap();
    assert_eq!(contents(&pool, "auth"), raw);
}

/// busybox's httpd (from busybox-static): a server this project did not write, with Range support.
#[test]
fn imports_and_resumes_against_busybox_httpd() {
    use virt_storage::import::ByteSource;
    let dir = tempfile::tempdir().unwrap();
    let raw = disk();
    std::fs::write(dir.path().join("disk.img"), &raw).unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(
        Command::new("busybox")
            .args(["httpd", "-f", "-p", &format!("127.0.0.1:{port}"), "-h"])
            .arg(dir.path())
            .spawn()
            .expect("busybox (package busybox-static, scripts/install-deps.sh) is needed"),
    );
    let url = format!("http://127.0.0.1:{port}/disk.img");
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_d, pool) = pool();
    let out = run(
        &pool,
        "bb",
        &url,
        HttpOptions::default(),
        ImportOptions { sha256: Some(sha256(&raw)), ..Default::default() },
    )
    .0
    .unwrap();
    assert_eq!(out.bytes_received, raw.len() as u64);
    assert_eq!(contents(&pool, "bb"), raw);
    // A resume is a Range request: busybox answers 206 with the rest.
    let mut src = HttpSource::new(&url, HttpOptions::default()).unwrap();
    let mut o = src.open(3 << 20).unwrap();
    assert_eq!(o.total, Some(raw.len() as u64));
    let mut rest = Vec::new();
    o.reader.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, raw[3 << 20..]);
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI at test time.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .current_dir(d)
                .args(args)
                .output()
                .expect("openssl (package openssl, scripts/install-deps.sh) is needed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=virt-storage import test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
        openssl(&csr);
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
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
        ]);
        Pki { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }
}

/// `openssl s_server -WWW`: a real TLS server (OpenSSL's, not rustls) serving files from `dir` as
/// HTTP/1.0; killed when dropped.
struct TlsServer {
    child: std::process::Child,
    port: u16,
}

impl TlsServer {
    fn start(pki: &Pki, dir: &std::path::Path) -> TlsServer {
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new("openssl")
                .current_dir(dir)
                .args(["s_server", "-quiet", "-WWW", "-accept", &format!("127.0.0.1:{port}")])
                .arg("-cert")
                .arg(pki.path("server.crt"))
                .arg("-key")
                .arg(pki.path("server.key"))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl is needed");
            for _ in 0..200 {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsServer { child, port };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken: try another
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("openssl s_server did not start");
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HTTPS with a private CA, as CDI's `certConfigMap` gives it: trusted, the import works; without
/// it (or with another CA) the import fails with a certificate error and leaves no volume, and the
/// DataVolume fails instead of succeeding; verification is skipped only when asked.
#[test]
fn https_with_a_custom_ca_from_cert_config_map() {
    use std::collections::BTreeMap;
    use virt_storage::cdi::{self, DataSource, DataVolume, DataVolumePhase};
    use virt_storage::datavolume::{reconcile_data_volume, DvEnv, DvRun, ObjectLookup};
    use virt_storage::golden::StorageClasses;

    let pki = Pki::new();
    let www = tempfile::tempdir().unwrap();
    let raw = disk();
    std::fs::write(www.path().join("disk.img"), &raw).unwrap();
    let srv = TlsServer::start(&pki, www.path());
    let url = format!("https://127.0.0.1:{}/disk.img", srv.port);
    let ca = std::fs::read(pki.path("ca.crt")).unwrap();
    let (_d, pool) = pool();

    // The CA trusted: verified TLS, byte for byte.
    let trusted = HttpOptions { ca_pem: Some(ca.clone()), ..Default::default() };
    let out =
        run(&pool, "tls", &url, trusted, ImportOptions { sha256: Some(sha256(&raw)), ..Default::default() })
            .0
            .unwrap();
    assert_eq!(out.bytes_received, raw.len() as u64);
    assert_eq!(contents(&pool, "tls"), raw);

    // Without it: a certificate error naming the URL and what to do, and no volume.
    let e = run(&pool, "untrusted", &url, HttpOptions::default(), ImportOptions::default()).0.unwrap_err();
    assert!(matches!(e, ImportError::Tls { .. }), "{e:?}");
    let msg = e.to_string();
    eprintln!("without the CA: {msg}");
    assert!(msg.contains(&format!("TLS failure talking to {url}")), "{msg}");
    assert!(msg.contains("certificate not trusted") && msg.contains("certConfigMap"), "{msg}");
    assert!(pool.get(&VolumeId::new("default", "untrusted")).unwrap().is_none());

    // Another CA is no better.
    let other = Pki::new();
    let wrong =
        HttpOptions { ca_pem: Some(std::fs::read(other.path("ca.crt")).unwrap()), ..Default::default() };
    let e = run(&pool, "otherca", &url, wrong, ImportOptions::default()).0.unwrap_err();
    assert!(matches!(e, ImportError::Tls { .. }), "{e:?}");
    assert!(e.to_string().contains("does not chain to the CA bundle"), "{e}");
    assert!(pool.get(&VolumeId::new("default", "otherca")).unwrap().is_none());

    // Skipping verification works, but only because it was asked for.
    let skip = HttpOptions { insecure_skip_verify: true, ..Default::default() };
    run(&pool, "skipverify", &url, skip, ImportOptions::default()).0.unwrap();
    assert_eq!(contents(&pool, "skipverify"), raw);

    // Through a DataVolume: certConfigMap's content is the CA bundle.
    struct Objects(BTreeMap<String, String>);
    impl ObjectLookup for Objects {
        fn secret(&self, _: &str, _: &str) -> Option<BTreeMap<String, Vec<u8>>> {
            None
        }
        fn config_map(&self, _: &str, name: &str) -> Option<BTreeMap<String, String>> {
            (name == "import-ca").then(|| self.0.clone())
        }
        fn data_source(&self, _: &str, _: &str) -> Option<DataSource> {
            None
        }
    }
    let objects = Objects(BTreeMap::from([("ca.pem".to_string(), String::from_utf8(ca).unwrap())]));
    let classes = StorageClasses {
        classes: BTreeMap::from([("local".to_string(), &pool as &dyn VolumeProvider)]),
        default_class: "local".into(),
    };
    let env = DvEnv { classes: &classes, objects: &objects, insecure_registries: vec![], net_policy: None };
    let dv_yaml = |name: &str, cm: &str| {
        format!(
            "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata:\n  name: {name}\nspec:\n  \
             source:\n    http:\n      url: \"{url}\"\n{cm}  storage:\n    resources:\n      requests:\n        \
             storage: 8Mi\n"
        )
    };
    let mut dv: DataVolume = cdi::from_yaml(&dv_yaml("with-ca", "      certConfigMap: import-ca\n")).unwrap();
    let r = reconcile_data_volume(&mut dv, &env, &mut |_: &cdi::DataVolumeStatus| {});
    assert_eq!(r, DvRun::Populated, "{:?}", dv.status);
    assert_eq!(dv.status.as_ref().unwrap().phase, Some(DataVolumePhase::Succeeded));
    assert_eq!(&contents(&pool, "with-ca")[..raw.len()], &raw[..]);

    let mut dv: DataVolume = cdi::from_yaml(&dv_yaml("without-ca", "")).unwrap();
    let mut phases = Vec::new();
    let r = reconcile_data_volume(&mut dv, &env, &mut |st: &cdi::DataVolumeStatus| phases.push(st.phase));
    assert!(matches!(&r, DvRun::Failed(m) if m.contains("certificate not trusted")), "{r:?}");
    assert_eq!(dv.status.as_ref().unwrap().phase, Some(DataVolumePhase::Failed));
    assert!(!phases.contains(&Some(DataVolumePhase::Succeeded)), "{phases:?}");
    assert!(pool.get(&VolumeId::new("default", "without-ca")).unwrap().is_none());
}

/// A qcow2 served with its length is converted while it downloads (not spooled first); a drop in
/// the middle resumes under the running conversion, and a wrong checksum still fails the import
/// after the conversion, leaving no volume.
#[test]
fn a_qcow2_converts_while_it_downloads_resuming_after_drops() {
    let srv = Server::start();
    let (_d, pool) = pool();
    // 24 MiB with data at both ends and a hole between, so there is something to wait for.
    let mut raw = vec![0u8; 24 << 20];
    for (i, b) in raw[..6 << 20].iter_mut().enumerate() {
        *b = (i % 249) as u8 | 1;
    }
    raw[20 << 20..21 << 20].fill(0x5c);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("d.raw"), &raw).unwrap();
    let st = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(dir.path().join("d.raw"))
        .arg(dir.path().join("d.qcow2"))
        .status()
        .unwrap();
    assert!(st.success());
    let q = std::fs::read(dir.path().join("d.qcow2")).unwrap();
    let url = srv.put(
        "/flaky.qcow2",
        Object { data: q.clone(), drop_after: Some(2 << 20), drops: 2, ..Default::default() },
    );
    let out = run(
        &pool,
        "fromqcow2",
        &url,
        HttpOptions::default(),
        ImportOptions { sha256: Some(sha256(&q)), ..Default::default() },
    )
    .0
    .unwrap();
    assert_eq!((out.resumes, out.used_scratch, out.bytes_received), (2, true, q.len() as u64));
    assert_eq!(contents(&pool, "fromqcow2"), raw);

    let url = srv.put("/sum.qcow2", Object { data: q.clone(), ..Default::default() });
    let e = run(
        &pool,
        "badsum",
        &url,
        HttpOptions::default(),
        ImportOptions { sha256: Some("00".repeat(32)), ..Default::default() },
    )
    .0
    .unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    assert!(pool.get(&VolumeId::new("default", "badsum")).unwrap().is_none());

    // Cut short for good (the server always stops at 3 MiB): the conversion waiting for the rest
    // fails with the download's error, nothing is kept.
    let url = srv.put("/short.qcow2", Object { data: q, stall_at: Some(3 << 20), ..Default::default() });
    let e = run(
        &pool,
        "short",
        &url,
        HttpOptions::default(),
        ImportOptions { max_retries: 1, ..Default::default() },
    )
    .0
    .unwrap_err();
    assert!(e.to_string().contains("after 1 retries"), "{e}");
    assert!(pool.get(&VolumeId::new("default", "short")).unwrap().is_none());
}
