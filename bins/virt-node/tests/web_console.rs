//! The web console in a real browser: Debian's chromium driven by `playwright-core` (from the
//! console's pinned npm packages, scripts/console-assets.sh) against a real `virt-node` on TCP with
//! a bearer token. The script (tests/web/console.cjs) logs in (a wrong token first), sees a
//! refused YAML's field path marked at its line, creates a VM from YAML, finds it in the list,
//! starts it and sees it reach Running without a reload, then sees the guest's cloud-init line
//! in the serial console (xterm.js over the console websocket), types commands the guest's shell
//! runs (one brings its pod-network NIC up and asks for a DHCP lease), downloads the log, sees a
//! non-blank VNC canvas (noVNC), and uses a console left idle for more than a minute. `/metrics`
//! is parsed with `prometheus-parse`: the VM's CPU time and network counters grew. The Compliance
//! page shows a `virt-compliance` scan of the node: its failure count, failures first, a status
//! filter kept in the URL, and a rule's remediation. The guest is
//! the project's Debian kernel and busybox initramfs under QEMU emulation, from a local registry.
//! Needs root (the pod network's namespaces). Screenshots of each page land in
//! `<target>/tmp/web-console-shots/`.

#[macro_use]
#[path = "../../../virt-core/tests/support/guest.rs"]
mod guest;
#[path = "support/node.rs"]
mod node;
#[path = "../../../virt-storage/tests/support/registry.rs"]
mod registry;
#[path = "support/shell.rs"]
mod shell;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use guest::{boot_lock, have};
use node::NodeProc;
use registry::{Registry, RegistryOpts};
use shell::push_kernel_image;

const BOOT_MARKER: &str = "printed from cloud-init userdata";

fn vm_yaml(name: &str, image: &str, extra_domain: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  namespace: default
spec:
  runStrategy: Halted
  template:
    spec:
      terminationGracePeriodSeconds: 5
      domain:
        firmware:
          kernelBoot:
            container:
              image: {image}
              kernelPath: /boot/vmlinuz
              initrdPath: /boot/initrd.img
            kernelArgs: console=tty0 console=ttyS0 panic=-1
{extra_domain}        devices:
          disks:
          - disk:
              bus: virtio
            name: cloudinitdisk
          interfaces:
          - name: default
            masquerade: {{}}
        memory:
          guest: 256Mi
      networks:
      - name: default
        pod: {{}}
      volumes:
      - cloudInitNoCloud:
          userData: |
            #!/bin/sh

            echo '{BOOT_MARKER}'
        name: cloudinitdisk
"
    )
}

/// A network namespace playing the node's for the pod network (`--pod-netns`), removed on drop.
struct TestNs(String);

impl TestNs {
    fn new() -> Self {
        let n = format!("vweb-{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &n]).status();
        assert!(
            Command::new("ip").args(["netns", "add", &n]).status().unwrap().success(),
            "ip netns add {n}"
        );
        Self(n)
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The console's npm packages (playwright-core among them), fetched once per lockfile.
fn node_modules() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/console-assets.sh");
    let out = Command::new("bash").arg(&script).output().unwrap();
    assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn browser_login_create_start_and_serial_console() {
    for t in ["qemu-system-x86_64", "docker-registry", "skopeo", "chromium", "node"] {
        assert!(have(t), "{t} is not installed: run scripts/install-deps.sh");
    }
    let modules = node_modules();
    let reg = Registry::start(RegistryOpts::default());
    let image = push_kernel_image(&reg);
    let _one = boot_lock();
    let state = tempfile::Builder::new().prefix("vw").tempdir_in("/tmp").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let token = format!("console-{}-{port}", std::process::id());
    let token_file = state.path().join("token");
    std::fs::write(&token_file, &token).unwrap();
    let mut node = NodeProc::start_later(state.path());
    node.registry = Some(reg.host.clone());
    let netns = TestNs::new();
    node.args = vec![
        "--pod-network".into(),
        "--pod-netns".into(),
        netns.0.clone(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        token_file.display().to_string(),
    ];
    node.spawn();
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(30), "the TCP listener did not come up: {}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    }

    // A compliance scan of this node (the project's rules only: OpenSCAP's part is
    // tests/compliance.rs's), whose results the console's Compliance page shows.
    let scan = Command::new(node::bin("virt-compliance"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["--no-openscap", "-o", "json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&scan.stdout)
        .unwrap_or_else(|e| panic!("virt-compliance: {e}: {}", String::from_utf8_lossy(&scan.stderr)));
    let results = report["results"].as_array().expect("results");
    let failed = results.iter().filter(|r| r["status"] == "fail").count();
    let hostdisk_fix = results
        .iter()
        .find(|r| r["id"] == "virt-node-hostdisk-gated")
        .and_then(|r| r["remediation"].as_str())
        .expect("the hostDisk rule")
        .chars()
        .take(24)
        .collect::<String>();

    let name = format!("web{}", std::process::id() % 100000);
    let bad = vm_yaml(&name, &image, "        bogusField: 1\n");
    let bad_line = bad.lines().position(|l| l.contains("bogusField")).unwrap() + 1;
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-console-shots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/console.cjs");
    // The browser trusts exactly the node's certificate (made on first start under <state>/tls/),
    // pinned by the SHA-256 of its public key.
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in {}/tls/tls.crt -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            state.path().display()
        ))
        .output()
        .unwrap();
    assert!(spki.status.success(), "{spki:?}");
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_string();
    let started = Instant::now();
    let out = Command::new("node")
        .arg(&script)
        .env("PLAYWRIGHT_CORE", modules.join("playwright-core"))
        .env("BASE", format!("https://127.0.0.1:{port}"))
        .env("SPKI", &spki)
        .env("TOKEN", &token)
        .env("VM_NAME", &name)
        .env("VM_YAML", vm_yaml(&name, &image, ""))
        .env("BAD_YAML", &bad)
        .env("BAD_FIELD", "bogusField")
        .env("BAD_LINE", bad_line.to_string())
        .env("BOOT_MARKER", BOOT_MARKER)
        .env("CRON_IMAGE", format!("docker://{image}"))
        .env("BULK", "500")
        .env("COMPLIANCE_FAIL", failed.to_string())
        .env("COMPLIANCE_REMEDIATION", &hostdisk_fix)
        .env("SHOTS", &shots)
        .env("PROFILE", state.path().join("chromium-profile"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser script failed after {:?} (screenshots in {}); node log:\n{}",
        started.elapsed(),
        shots.display(),
        node.log()
    );
    assert!(stdout.contains("step: done"), "{stdout}");
    // `/metrics`, scraped twice 4 s apart while the guest ran, parses as Prometheus text and its
    // per-VM CPU time grew.
    let scrape = |n: u32| {
        let text = std::fs::read_to_string(shots.join(format!("metrics-{n}.txt"))).unwrap();
        let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let get = |metric: &str| {
            s.samples
                .iter()
                .filter(|x| x.metric == metric && x.labels.get("name") == Some(name.as_str()))
                .map(|x| match x.value {
                    prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                    _ => f64::NAN,
                })
                .sum::<f64>()
        };
        let running = s
            .samples
            .iter()
            .find(|x| x.metric == "kubevirt_vmi_phase_count" && x.labels.get("phase") == Some("running"))
            .map(|x| x.value.clone());
        let net = [
            "kubevirt_vmi_network_transmit_packets_total",
            "kubevirt_vmi_network_transmit_bytes_total",
            "kubevirt_vmi_network_receive_packets_total",
            "kubevirt_vmi_network_receive_bytes_total",
        ]
        .map(|m| {
            assert!(
                s.samples.iter().any(|x| x.metric == m && x.labels.get("interface") == Some("default")),
                "no {m} for interface default:\n{text}"
            );
            get(m)
        });
        (
            get("kubevirt_vmi_cpu_usage_seconds_total"),
            get("kubevirt_vmi_memory_resident_bytes"),
            running,
            net,
            text,
        )
    };
    let (cpu1, rss1, running, net1, text1) = scrape(1);
    let (cpu2, _, _, net2, text2) = scrape(2);
    eprintln!("metrics: cpu {cpu1:.2} s -> {cpu2:.2} s, resident {rss1} bytes, running {running:?}");
    eprintln!(
        "metrics: guest tx packets/bytes, rx packets/bytes {net1:?} -> {net2:?} (a DHCP exchange between)"
    );
    assert!(rss1 > 0.0, "{text1}");
    assert!(cpu2 > cpu1, "the guest's CPU time did not grow:\n{text1}\n{text2}");
    // The guest brought eth0 up and asked for a lease between the scrapes: it sent packets.
    assert!(
        net2[0] > net1[0] && net2[1] > net1[1],
        "the guest's transmit counters did not grow:\n{text1}\n{text2}"
    );
    assert!(matches!(running, Some(prometheus_parse::Value::Gauge(v)) if v >= 1.0), "{text1}");
    // The console's websocket went through the API's audit as the admin user.
    let audit = std::fs::read_to_string(state.path().join("audit.log")).unwrap();
    assert!(audit.contains(&format!("virtualmachineinstances/{name}/console")), "{audit}");
}
