//! CDI on the node, end to end against a real `virt-node` process: DataVolumes (blank, HTTP from a
//! server in this test, a bad URL), `virtctl image-upload` with node-issued tokens, a
//! DataImportCron on a real `docker-registry` filling a DataSource in `os-images`, a VM whose
//! `dataVolumeTemplates` clone that golden image and whose VMI waits for it, and a daemon killed
//! with SIGKILL in the middle of an import.
//!
//! The golden-image test needs docker-registry, skopeo and qemu-system-x86_64 (skipped with the
//! reason otherwise; scripts/install-deps.sh installs them). virtctl is run from the target
//! directory (`cargo test --workspace` builds it).

#[path = "support/node.rs"]
mod node;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::{bin, NodeProc};
use registry::{Comp, OciLayout, Registry, RegistryOpts};
use serde_json::{json, Value};
use virt_k8s::client::{Endpoint, NodeClient};
use virt_storage::cdi::{DataVolume, DataVolumePhase};

const TIMEOUT: Duration = Duration::from_secs(120);

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

impl NodeProc {
    fn client(&self) -> NodeClient {
        NodeClient::new(Endpoint::Unix(self.socket.clone()), None).unwrap()
    }

    fn dv(&self, ns: &str, name: &str) -> Option<DataVolume> {
        match self.client().get_data_volume(ns, name) {
            Ok(dv) => Some(dv),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("GET DataVolume {ns}/{name}: {e}"),
        }
    }

    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(t.elapsed() < TIMEOUT, "never {what}\nnode log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_phase(&self, ns: &str, name: &str, phase: DataVolumePhase) -> DataVolume {
        self.wait(&format!("DataVolume {ns}/{name} {phase:?}"), || {
            self.dv(ns, name).filter(|d| phase_of(d) == Some(phase))
        })
    }

    fn volume_file(&self, ns: &str, name: &str) -> Option<PathBuf> {
        ["img", "qcow2"]
            .iter()
            .map(|ext| self.state.join("volumes").join(ns).join(format!("{name}.{ext}")))
            .find(|p| p.is_file())
    }
}

fn phase_of(dv: &DataVolume) -> Option<DataVolumePhase> {
    dv.status.as_ref().and_then(|s| s.phase)
}

fn condition_message(dv: &DataVolume, type_: &str) -> String {
    dv.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
        .and_then(|c| c.message.clone())
        .unwrap_or_default()
}

/// A state directory with a short path (unix socket paths are limited to 107 bytes).
fn state_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("vc").tempdir_in("/tmp").unwrap()
}

/// An HTTP/1.1 server for disk images; `slow` throttles bodies to about 4 MiB/s.
struct Server {
    port: u16,
    objects: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    slow: Arc<AtomicBool>,
}

impl Server {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let objects: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let slow = Arc::new(AtomicBool::new(false));
        let (o, s) = (objects.clone(), slow.clone());
        std::thread::spawn(move || {
            for stream in l.incoming().flatten() {
                let (o, s) = (o.clone(), s.clone());
                std::thread::spawn(move || serve(stream, &o, &s));
            }
        });
        Self { port, objects, slow }
    }

    fn put(&self, path: &str, data: Vec<u8>) -> String {
        self.objects.lock().unwrap().insert(path.to_string(), data);
        self.url(path)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(s: TcpStream, objects: &Mutex<HashMap<String, Vec<u8>>>, slow: &AtomicBool) {
    let mut rd = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    if rd.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    loop {
        let mut h = String::new();
        if rd.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let Some(data) = objects.lock().unwrap().get(&path).cloned() else {
        let _ = w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: \
         close\r\n\r\n",
        data.len()
    );
    if w.write_all(head.as_bytes()).is_err() {
        return;
    }
    for chunk in data.chunks(64 << 10) {
        if slow.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(16));
        }
        if w.write_all(chunk).is_err() {
            return;
        }
    }
}

fn dv_json(name: &str, source: Value, size: &str) -> Value {
    json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataVolume",
        "metadata": { "name": name },
        "spec": { "source": source, "storage": { "resources": { "requests": { "storage": size } } } },
    })
}

fn create_dv(node: &NodeProc, ns: &str, dv: &Value) -> DataVolume {
    node.client().cdi_create("datavolumes", ns, dv).unwrap_or_else(|e| panic!("creating {dv}: {e}"))
}

fn read_prefix(path: &Path, n: usize) -> Vec<u8> {
    let mut b = std::fs::read(path).unwrap();
    b.truncate(n);
    b
}

#[test]
fn blank_and_http_datavolumes_failures_and_the_rest_of_the_api() {
    let state = state_dir();
    let node = NodeProc::start(state.path(), None);
    let c = node.client();

    // blank: Succeeded, and the file the launcher takes `dataVolume` volumes from exists.
    create_dv(&node, "default", &dv_json("scratch", json!({ "blank": {} }), "16Mi"));
    node.wait_phase("default", "scratch", DataVolumePhase::Succeeded);
    let f = node.volume_file("default", "scratch").expect("the blank volume's file");
    assert_eq!(f, state.path().join("volumes/default/scratch.img"));
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 16 << 20);

    // http: the image lands in the volume, grown to the request.
    let server = Server::start();
    let data = registry::disk_bytes(7, 3 << 20);
    let url = server.put("/images/disk.img", data.clone());
    create_dv(&node, "default", &dv_json("web", json!({ "http": { "url": url } }), "8Mi"));
    let dv = node.wait_phase("default", "web", DataVolumePhase::Succeeded);
    assert_eq!(dv.status.as_ref().unwrap().progress.as_ref().unwrap().0, "100.0%");
    let f = node.volume_file("default", "web").unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 8 << 20);
    assert!(read_prefix(&f, data.len()) == data, "the imported bytes differ");

    // A bad URL: Failed, with the reason.
    let missing = server.url("/images/missing.img");
    create_dv(&node, "default", &dv_json("broken", json!({ "http": { "url": missing } }), "8Mi"));
    let dv = node.wait_phase("default", "broken", DataVolumePhase::Failed);
    let msg = condition_message(&dv, "Ready");
    assert!(msg.contains("HTTP 404") && msg.contains("/images/missing.img"), "{msg}");
    assert!(node.volume_file("default", "broken").is_none());
    // kubectl's table (before the failed import is retried, 10 s later).
    let out = node.ok(&["get", "dv"]);
    assert!(out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .eq(["NAME", "PHASE", "PROGRESS", "RESTARTS", "AGE"]));
    assert!(
        out.lines().any(|l| l.starts_with("web ") && l.contains("Succeeded") && l.contains("100.0%")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("broken ") && l.contains("Failed")), "{out}");

    // Strict bodies, namespaces, kinds.
    let mut bad = dv_json("typo", json!({ "blank": {} }), "1Mi");
    bad["spec"]["storage"]["resourcez"] = json!({});
    let e = c.cdi_create::<_, Value>("datavolumes", "default", &bad).unwrap_err();
    let st = e.status().expect("a Status");
    assert_eq!((st.code, st.reason.as_str()), (422, "Invalid"), "{e}");
    assert!(st.message.contains("spec.storage.resourcez: unknown field"), "{e}");
    let e = c.cdi_create::<_, Value>("datavolumes", "nowhere", &dv_json("x", json!({"blank": {}}), "1Mi"));
    let st = e.unwrap_err();
    assert_eq!(st.status().map(|s| s.code), Some(404), "{st}");
    let e =
        c.cdi_create::<_, Value>("datavolumes", "default", &dv_json("scratch", json!({"blank": {}}), "1Mi"));
    assert_eq!(e.unwrap_err().status().map(|s| s.reason.clone()).as_deref(), Some("AlreadyExists"));
    let e = c.cdi_create::<_, Value>("datasources", "default", &dv_json("x", json!({"blank": {}}), "1Mi"));
    assert_eq!(e.unwrap_err().status().map(|s| s.code), Some(400));
    let e = c.cdi_create::<_, Value>(
        "datavolumes",
        "default",
        &dv_json("two", json!({"blank": {}, "upload": {}}), "1Mi"),
    );
    let e = e.unwrap_err();
    assert_eq!(e.status().map(|s| s.code), Some(422), "{e}");

    // A DataSource pointing at a populated claim is Ready.
    let ds = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataSource",
        "metadata": { "name": "web-source" },
        "spec": { "source": { "pvc": { "namespace": "default", "name": "web" } } },
    });
    c.cdi_create::<_, Value>("datasources", "default", &ds).unwrap();
    node.wait("DataSource Ready", || {
        let v: Value = c.cdi_get("datasources", "default", "web-source").ok()?;
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(())
    });

    // The StorageProfile names the pool's clone strategies.
    let profiles: Vec<Value> = c.cdi_list("storageprofiles", None).unwrap();
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0]["status"]["storageClass"], "local");

    // DELETE takes the volume along.
    c.delete_data_volume("default", "web").unwrap();
    assert!(node.volume_file("default", "web").is_none());
    assert!(node.dv("default", "web").is_none());
}

#[test]
fn image_upload_through_the_node_with_its_tokens() {
    let state = state_dir();
    let node = NodeProc::start(state.path(), None);
    let c = node.client();
    let img = state.path().join("disk.raw");
    let data = registry::disk_bytes(3, 4 << 20);
    std::fs::write(&img, &data).unwrap();
    let img_s = img.to_str().unwrap();

    // virtctl creates the DataVolume, asks for the token, uploads, waits for Succeeded.
    let out =
        node.ok(&["image-upload", "dv", "uploaded", "--size", "16Mi", "--image-path", img_s, "--quiet"]);
    assert!(out.contains("DataVolume default/uploaded created"), "{out}");
    assert!(out.contains("Processing completed successfully"), "{out}");
    let dv = node.dv("default", "uploaded").unwrap();
    assert_eq!(phase_of(&dv), Some(DataVolumePhase::Succeeded));
    let f = node.volume_file("default", "uploaded").unwrap();
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 16 << 20, "grown to the requested size");
    assert!(read_prefix(&f, data.len()) == data, "the uploaded bytes differ");
    let table = node.ok(&["get", "dv", "uploaded"]);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with("uploaded") && l.contains("Succeeded")),
        "{table}"
    );

    // A second upload into a populated DataVolume is refused; so is creating one without a size.
    let o = node.virtctl(&["image-upload", "dv", "uploaded", "--image-path", img_s, "--quiet"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already populated"));
    let o = node.virtctl(&["image-upload", "dv", "other", "--image-path", img_s, "--quiet"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));

    // The upload endpoint wants a token the node issued.
    create_dv(&node, "default", &dv_json("waiting", json!({ "upload": {} }), "8Mi"));
    node.wait_phase("default", "waiting", DataVolumePhase::UploadReady);
    let base = c.upload_proxy_url().unwrap().expect("the node publishes its upload URL");
    let url = format!("{base}/v1beta1/upload");
    let e = virt_storage::upload::upload_file(&url, "not-a-token", &img, false, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("HTTP 401"), "{e}");
    let o = Command::new(bin("virtctl"))
        .args(["image-upload", "dv", "waiting", "--image-path", img_s, "--uploadproxy-url", &base, "--quiet"])
        .env("VIRT_UPLOAD_TOKEN", "forged")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("HTTP 401"));
    assert!(node.volume_file("default", "waiting").is_none());
    assert_eq!(phase_of(&node.dv("default", "waiting").unwrap()), Some(DataVolumePhase::UploadReady));
    // Tokens only for upload DataVolumes.
    create_dv(&node, "default", &dv_json("plain", json!({ "blank": {} }), "1Mi"));
    let e = c.upload_token("default", "plain").unwrap_err();
    assert!(e.to_string().contains("does not take uploads"), "{e}");
    // With a token from the node, the same upload goes through.
    let token = c.upload_token("default", "waiting").unwrap();
    virt_storage::upload::upload_file(&url, &token, &img, false, &mut |_, _| {}).unwrap();
    node.wait_phase("default", "waiting", DataVolumePhase::Succeeded);
}

fn push_golden(reg: &Registry, seed: u64) -> Vec<u8> {
    let disk = registry::disk_bytes(seed, 1 << 20);
    let mut layout = OciLayout::new();
    registry::container_disk_image(&mut layout, "latest", "fedora.img", &disk, Comp::Gzip);
    reg.push(&layout, "latest", "kubevirt/fedora", &[]);
    disk
}

const GOLDEN_VM: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: golden
spec:
  runStrategy: Always
  dataVolumeTemplates:
  - metadata:
      name: golden-root
    spec:
      sourceRef:
        kind: DataSource
        namespace: os-images
        name: fedora
      storage:
        resources:
          requests:
            storage: 2Mi
  template:
    spec:
      terminationGracePeriodSeconds: 0
      domain:
        devices:
          disks:
          - name: root
            disk:
              bus: virtio
        memory:
          guest: 64Mi
      volumes:
      - name: root
        dataVolume:
          name: golden-root
";

fn vmi_condition(vmi: &Value, type_: &str) -> Option<(String, String)> {
    vmi.pointer("/status/conditions")?.as_array()?.iter().find(|c| c["type"] == type_).map(|c| {
        (
            c["status"].as_str().unwrap_or_default().to_string(),
            c["message"].as_str().unwrap_or_default().to_string(),
        )
    })
}

#[test]
fn golden_image_cron_and_a_vm_that_waits_for_its_clone() {
    if let Some(t) = ["docker-registry", "skopeo", "qemu-system-x86_64"].into_iter().find(|t| !have(t)) {
        // CI (scripts/test.sh, after scripts/install-deps.sh) has every tool: a skip there is a failure.
        assert!(
            std::env::var_os("VIRT_TESTS_REQUIRE_TOOLS").is_none(),
            "{t} not installed: skipping (scripts/install-deps.sh installs it)"
        );
        eprintln!("{t} not installed: skipping (scripts/install-deps.sh installs it)");
        return;
    }
    let reg = Registry::start(RegistryOpts::default());
    let golden = push_golden(&reg, 11);
    let state = state_dir();
    let node = NodeProc::start(state.path(), Some(&reg.host));
    let c = node.client();

    // The VM first: its DataVolume is created from the template and waits for the DataSource; the
    // VMI waits Pending for the DataVolume.
    let vm_file = state.path().join("golden.yaml");
    std::fs::write(&vm_file, GOLDEN_VM).unwrap();
    node.ok(&["create", "-f", vm_file.to_str().unwrap()]);
    let dv = node.wait("the template's DataVolume", || node.dv("default", "golden-root"));
    assert_eq!(dv.metadata.owner_references[0].kind, "VirtualMachine");
    assert_eq!(dv.metadata.owner_references[0].name, "golden");
    let vmi = node.wait("a waiting VMI", || {
        let vmi = c.get_vmi("default", "golden").ok()?;
        let v = serde_json::to_value(&vmi).unwrap();
        let (status, msg) = vmi_condition(&v, "DataVolumesReady")?;
        (status == "False" && msg.contains("DataVolume golden-root is not ready")).then_some(v)
    });
    assert_eq!(vmi["status"]["phase"], "Pending", "{vmi}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(phase_of(&node.dv("default", "golden-root").unwrap()), Some(DataVolumePhase::Pending));
    let vm: Value = serde_json::from_str(&node.ok(&["get", "vm", "golden", "-o", "json"])).unwrap();
    assert_eq!(vm["status"]["printableStatus"], "Provisioning");

    // The cron imports the registry's image into os-images and points the DataSource at it.
    let cron = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1",
        "kind": "DataImportCron",
        "metadata": { "name": "fedora-image-cron", "namespace": "os-images" },
        "spec": {
            "template": { "spec": {
                "source": { "registry": { "url": format!("docker://{}/kubevirt/fedora:latest", reg.host) } },
                "storage": { "resources": { "requests": { "storage": "64Mi" } } },
            } },
            "schedule": "30 1 * * 1",
            "garbageCollect": "Outdated",
            "importsToKeep": 2,
            "managedDataSource": "fedora",
        },
    });
    c.cdi_create::<_, Value>("dataimportcrons", "os-images", &cron).unwrap();
    let ds: Value = node.wait("the DataSource Ready", || {
        let v: Value = c.cdi_get("datasources", "os-images", "fedora").ok()?;
        let ready = v["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ready.then_some(v)
    });
    let import = ds["spec"]["source"]["pvc"]["name"].as_str().unwrap().to_string();
    assert!(import.starts_with("fedora-") && import.len() == "fedora-".len() + 12, "{ds}");
    assert_eq!(ds["spec"]["source"]["pvc"]["namespace"], "os-images");
    let imported = node.volume_file("os-images", &import).expect("the golden image's volume");
    assert!(read_prefix(&imported, golden.len()) == golden);
    let record = node.dv("os-images", &import).expect("the import's DataVolume");
    assert_eq!(phase_of(&record), Some(DataVolumePhase::Succeeded));
    let cron_now: Value = c.cdi_get("dataimportcrons", "os-images", "fedora-image-cron").unwrap();
    assert_eq!(cron_now["status"]["lastImportedPVC"]["name"], import.as_str(), "{cron_now}");

    // The VM's DataVolume is a clone of it, with the strategy the pool's profile puts first.
    let dv = node.wait_phase("default", "golden-root", DataVolumePhase::Succeeded);
    let profiles: Vec<Value> = c.cdi_list("storageprofiles", None).unwrap();
    let first = profiles[0]["metadata"]["annotations"]["virt-rs.io/clone-strategies"]
        .as_str()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let clone_type = dv.metadata.annotations.get("cdi.kubevirt.io/cloneType").cloned();
    assert_eq!(clone_type.as_deref(), Some(first.as_str()), "{:?}", dv.metadata.annotations);
    if first != "reflink" {
        assert!(dv.metadata.annotations.contains_key("cdi.kubevirt.io/cloneFallbackReason"));
    }
    let root = node.volume_file("default", "golden-root").expect("the clone's volume");

    // Now the VMI starts.
    let vmi = node.wait("the VMI to start", || {
        let vmi = c.get_vmi("default", "golden").ok()?;
        let v = serde_json::to_value(&vmi).unwrap();
        matches!(v["status"]["phase"].as_str(), Some("Scheduled" | "Running")).then_some(v)
    });
    assert_eq!(vmi_condition(&vmi, "DataVolumesReady").map(|c| c.0).as_deref(), Some("True"), "{vmi}");
    let events = c.events("default").unwrap();
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("NotAllDVsReady")), "{events:?}");

    // Deleting the VM deletes its DataVolume and the clone; the golden image stays.
    node.ok(&["delete", "vm", "golden"]);
    node.wait("the VM gone", || (!node.virtctl(&["get", "vm", "golden"]).status.success()).then_some(()));
    node.wait("the DataVolume gone", || node.dv("default", "golden-root").is_none().then_some(()));
    assert!(!root.exists(), "{} is left", root.display());
    assert!(imported.exists());
}

#[test]
fn a_daemon_killed_during_an_import_imports_again_after_restart() {
    let state = state_dir();
    let mut node = NodeProc::start(state.path(), None);
    let server = Server::start();
    let data = registry::disk_bytes(5, 24 << 20);
    let url = server.put("/big.img", data.clone());
    server.slow.store(true, Ordering::Relaxed);
    create_dv(&node, "default", &dv_json("big", json!({ "http": { "url": url } }), "32Mi"));
    // Bytes are flowing into the staged file.
    let staged = state.path().join("volumes/default/.importing/big.img");
    node.wait("the import under way", || {
        let dv = node.dv("default", "big")?;
        let written = std::fs::metadata(&staged).map(|m| m.len()).unwrap_or(0);
        (phase_of(&dv) == Some(DataVolumePhase::ImportInProgress) && written > 1 << 20).then_some(())
    });

    node.sigkill();
    // Half an image is never a volume.
    assert!(node.volume_file("default", "big").is_none());
    assert!(staged.is_file(), "the staged import is there");

    server.slow.store(false, Ordering::Relaxed);
    node.spawn();
    let dv = node.dv("default", "big").unwrap();
    assert_ne!(phase_of(&dv), Some(DataVolumePhase::Succeeded), "{dv:?}");
    assert!(dv.status.as_ref().unwrap().restart_count.unwrap_or(0) >= 1, "{dv:?}");
    let out = node.ok(&["get", "dv", "big"]);
    assert!(out.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(3) == Some("1")), "{out}");

    let t = Instant::now();
    loop {
        let dv = node.dv("default", "big").unwrap();
        if phase_of(&dv) == Some(DataVolumePhase::Succeeded) {
            // Succeeded means complete.
            let f = node.volume_file("default", "big").unwrap();
            assert_eq!(std::fs::metadata(&f).unwrap().len(), 32 << 20);
            assert!(read_prefix(&f, data.len()) == data, "the volume differs from the image");
            break;
        }
        assert!(t.elapsed() < TIMEOUT, "never Succeeded: {dv:?}\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(node.log().contains("the import was interrupted; importing again"));
}

/// One HTTP/1.1 request on the node's socket (the client has no VolumeSnapshot calls): the status
/// code and the JSON body.
fn http(node: &NodeProc, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    use std::io::Read;
    let mut s = std::os::unix::net::UnixStream::connect(&node.socket).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, serde_json::from_str(rest).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}")))
}

const SNAPS: &str = "/apis/snapshot.storage.k8s.io/v1/namespaces/default/volumesnapshots";

fn snapshot_json(name: &str, claim: &str) -> Value {
    json!({
        "apiVersion": "snapshot.storage.k8s.io/v1",
        "kind": "VolumeSnapshot",
        "metadata": { "name": name },
        "spec": { "volumeSnapshotClassName": "csi-snapclass", "source": { "persistentVolumeClaimName": claim } },
    })
}

fn write_at_start(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, 0).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn volume_snapshots_and_datavolumes_restored_from_them() {
    let state = state_dir();
    let node = NodeProc::start(state.path(), None);

    // A blank DataVolume with a signature written into its file.
    create_dv(&node, "default", &dv_json("origin", json!({ "blank": {} }), "4Mi"));
    node.wait_phase("default", "origin", DataVolumePhase::Succeeded);
    let origin = node.volume_file("default", "origin").unwrap();
    write_at_start(&origin, b"signature one");

    // Its VolumeSnapshot becomes ready to use, with the volume's size as restoreSize.
    let (code, made) = http(&node, "POST", SNAPS, Some(&snapshot_json("snap", "origin")));
    assert_eq!(code, 201, "{made}");
    assert_eq!(made["status"]["readyToUse"], false);
    assert!(made["metadata"]["uid"].is_string());
    let vs = node.wait("VolumeSnapshot readyToUse", || {
        let (_, v) = http(&node, "GET", &format!("{SNAPS}/snap"), None);
        (v["status"]["readyToUse"] == true).then_some(v)
    });
    assert_eq!(vs["status"]["restoreSize"], "4194304", "{vs}");
    assert!(vs["status"]["creationTime"].is_string(), "{vs}");
    assert!(vs["status"].get("error").is_none(), "{vs}");
    let (code, list) = http(&node, "GET", SNAPS, None);
    assert_eq!((code, list["kind"].as_str()), (200, Some("VolumeSnapshotList")));
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // The original changes; a DataVolume from the snapshot has the old bytes.
    write_at_start(&origin, b"signature two");
    let src = json!({ "snapshot": { "namespace": "default", "name": "snap" } });
    create_dv(&node, "default", &dv_json("restored", src.clone(), "8Mi"));
    let dv = node.wait_phase("default", "restored", DataVolumePhase::Succeeded);
    let how = dv.metadata.annotations.get("cdi.kubevirt.io/cloneType").cloned().unwrap_or_default();
    assert!(how == "reflink" || how == "host-assisted", "cloneType {how:?}");
    let restored = node.volume_file("default", "restored").unwrap();
    assert_eq!(read_prefix(&restored, 13), b"signature one");
    assert_eq!(std::fs::metadata(&restored).unwrap().len(), 8 << 20);
    assert_eq!(read_prefix(&origin, 13), b"signature two");

    // Smaller than the restoreSize: a 422 naming the field.
    let e = node
        .client()
        .cdi_create::<_, Value>("datavolumes", "default", &dv_json("small", src.clone(), "1Mi"))
        .unwrap_err();
    let st = e.status().expect("a Status");
    assert_eq!(st.code, 422, "{e}");
    assert!(st.message.contains("spec.storage.resources.requests.storage: Invalid value: 1048576"), "{e}");

    // Deleting the snapshot takes the pool snapshot; the restored volume stays.
    let (code, v) = http(&node, "DELETE", &format!("{SNAPS}/snap"), None);
    assert_eq!(code, 200, "{v}");
    let snaps = state.path().join("volumes/default/.snapshots");
    assert_eq!(std::fs::read_dir(&snaps).unwrap().count(), 0);
    assert_eq!(read_prefix(&restored, 13), b"signature one");
    let (code, v) = http(&node, "GET", &format!("{SNAPS}/snap"), None);
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")), "{v}");
    assert!(v["message"].as_str().unwrap().contains("volumesnapshots.snapshot.storage.k8s.io \"snap\""));

    // A DataVolume naming a missing snapshot waits and says why.
    let gone = json!({ "snapshot": { "namespace": "default", "name": "nope" } });
    create_dv(&node, "default", &dv_json("orphan", gone, "8Mi"));
    let dv = node.wait("the orphan to say why it waits", || {
        node.dv("default", "orphan").filter(|d| condition_message(d, "Ready").contains("not found"))
    });
    assert_eq!(phase_of(&dv), Some(DataVolumePhase::Pending));
    assert_eq!(
        condition_message(&dv, "Ready"),
        "VolumeSnapshot default/nope (spec.source.snapshot) not found; waiting for it to be created"
    );

    // A snapshot of a missing claim is not ready, with the error in its status.
    let (code, _) = http(&node, "POST", SNAPS, Some(&snapshot_json("lost", "no-such-claim")));
    assert_eq!(code, 201);
    let vs = node.wait("the error of a snapshot of a missing claim", || {
        let (_, v) = http(&node, "GET", &format!("{SNAPS}/lost"), None);
        v["status"]["error"]["message"].as_str().map(|_| v.clone())
    });
    assert_eq!(vs["status"]["readyToUse"], false);
    let msg = vs["status"]["error"]["message"].as_str().unwrap();
    assert!(msg.contains("persistentvolumeclaims \"no-such-claim\" not found"), "{msg}");

    // Strict bodies: an unknown field is a 422 with its path; names are checked; wrong kinds are 400.
    let mut typo = snapshot_json("typo", "origin");
    typo["spec"]["source"]["persistentVolumeClaim"] = json!("origin");
    let (code, v) = http(&node, "POST", SNAPS, Some(&typo));
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("spec.source.persistentVolumeClaim: unknown field"),
        "{v}"
    );
    let (code, v) = http(&node, "POST", SNAPS, Some(&snapshot_json("Bad.Name", "origin")));
    assert_eq!(code, 422, "{v}");
    assert!(v["message"].as_str().unwrap().contains("metadata.name: Invalid value: \"Bad.Name\""), "{v}");
    let (code, v) = http(&node, "POST", SNAPS, Some(&dv_json("x", json!({"blank": {}}), "1Mi")));
    assert_eq!(code, 400, "{v}");
    let (code, _) = http(&node, "POST", SNAPS, Some(&snapshot_json("lost", "origin")));
    assert_eq!(code, 409);
    let (code, _) =
        http(&node, "GET", "/apis/snapshot.storage.k8s.io/v1/namespaces/nowhere/volumesnapshots", None);
    assert_eq!(code, 404);
    // Not a CDI kind.
    let (code, _) =
        http(&node, "GET", "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/volumesnapshots", None);
    assert_eq!(code, 404);

    // The store keeps them over a restart.
    drop(node);
    let node = NodeProc::start(state.path(), None);
    let (code, v) = http(&node, "GET", &format!("{SNAPS}/lost"), None);
    assert_eq!((code, v["status"]["readyToUse"].as_bool()), (200, Some(false)), "{v}");
}

/// The `(field, reason)` of each cause of a 422 `Status`.
fn causes(v: &Value) -> Vec<(String, String)> {
    let list = v["details"]["causes"].as_array().unwrap_or_else(|| panic!("no details.causes: {v}"));
    list.iter()
        .map(|c| (c["field"].as_str().unwrap_or("").to_string(), c["reason"].as_str().unwrap().to_string()))
        .collect()
}

/// Refusals answer with Kubernetes' `details.causes` built from the structured errors (field and
/// reason per problem: Required, Forbidden, NotSupported are told apart), for VMs and CDI kinds.
#[test]
fn refusals_name_each_field_with_its_reason() {
    let state = state_dir();
    let node = NodeProc::start(state.path(), None);
    const VMS: &str = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
    const DVS: &str = "/apis/cdi.kubevirt.io/v1beta1/namespaces/default/datavolumes";
    let vm = |meta: Value, spec: Value| json!({ "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "metadata": meta, "spec": spec });
    let template = json!({ "spec": { "domain": { "devices": {}, "memory": { "guest": "64Mi" } } } });

    // Two problems of one VM: two causes, each with its field.
    let bad = vm(
        json!({ "name": "both" }),
        json!({ "running": true, "runStrategy": "Always", "template": template }),
    );
    let (code, v) = http(&node, "POST", VMS, Some(&bad));
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
    assert!(causes(&v).iter().any(|(f, r)| f == "spec.running" && r == "FieldValueInvalid"), "{v}");
    assert_eq!(
        (v["details"]["kind"].as_str(), v["details"]["name"].as_str()),
        (Some("VirtualMachine"), Some("both"))
    );

    // No name: Required; another namespace than the path's: Invalid, both on their field.
    let (code, v) = http(&node, "POST", VMS, Some(&vm(json!({}), json!({ "template": template }))));
    assert_eq!(code, 422, "{v}");
    assert_eq!(causes(&v), [("metadata.name".to_string(), "FieldValueRequired".to_string())], "{v}");
    let elsewhere = vm(json!({ "name": "x", "namespace": "other" }), json!({ "template": template }));
    let (_, v) = http(&node, "POST", VMS, Some(&elsewhere));
    assert_eq!(causes(&v), [("metadata.namespace".to_string(), "FieldValueInvalid".to_string())], "{v}");

    // An unknown field of a DataVolume: its path; an unsupported propagation policy: NotSupported.
    let mut dv = dv_json("typo", json!({ "blank": {} }), "1Mi");
    dv["spec"]["sourcee"] = json!({});
    let (code, v) = http(&node, "POST", DVS, Some(&dv));
    assert_eq!(code, 422, "{v}");
    assert!(causes(&v).iter().any(|(f, _)| f == "spec.sourcee"), "{v}");
    let (code, v) = http(
        &node,
        "POST",
        DVS,
        Some(&json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume", "metadata": { "namespace": "other", "name": "x" },
            "spec": { "source": { "blank": {} }, "storage": { "resources": { "requests": { "storage": "1Mi" } } } },
        })),
    );
    assert_eq!(code, 422, "{v}");
    assert_eq!(causes(&v), [("metadata.namespace".to_string(), "FieldValueInvalid".to_string())], "{v}");
    let good = vm(json!({ "name": "good" }), json!({ "template": template }));
    let (code, v) = http(&node, "POST", VMS, Some(&good));
    assert_eq!(code, 201, "{v}");
    let (code, v) = http(&node, "DELETE", &format!("{VMS}/good?propagationPolicy=Sometimes"), None);
    assert_eq!(code, 422, "{v}");
    assert_eq!(causes(&v), [("propagationPolicy".to_string(), "FieldValueNotSupported".to_string())], "{v}");
}
