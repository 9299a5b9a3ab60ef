//! The compliance scan against a real node: the project's rules see the node's configuration
//! as it runs, OpenSCAP runs Debian's content on this machine, failures carry their remediation,
//! and the exit status tells scripts.

#[path = "support/node.rs"]
mod node;

use std::process::Command;

use node::NodeProc;
use serde_json::Value;

fn scan(state: &std::path::Path, extra: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(node::bin("virt-compliance"))
        .arg("--state-dir")
        .arg(state)
        .args(["-o", "json"])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), report)
}

fn status<'a>(report: &'a Value, id: &str) -> &'a str {
    report["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .and_then(|r| r["status"].as_str())
        .unwrap_or_else(|| panic!("no rule {id} in {report}"))
}

#[test]
fn the_scan_reports_the_nodes_rules_and_openscap() {
    let t = tempfile::Builder::new().prefix("vc").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let mut n = NodeProc::start(&state, None);
    // A request that changes something is audited.
    let vm = "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {name: audited}\nspec:\n  runStrategy: Halted\n  template:\n    spec:\n      domain:\n        devices: {}\n        memory: {guest: 64Mi}\n";
    std::fs::write(t.path().join("vm.yaml"), vm).unwrap();
    n.ok(&["create", "-f", &t.path().join("vm.yaml").display().to_string()]);
    let audit = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let line: Value = serde_json::from_str(audit.lines().last().unwrap()).unwrap();
    assert_eq!((line["verb"].as_str(), line["code"].as_u64()), (Some("POST"), Some(201)), "{audit}");
    assert!(line["path"].as_str().unwrap().ends_with("/virtualmachines"), "{audit}");

    // The test node allows emulation: that rule fails, so the scan exits 1.
    let (code, r) = scan(&state, &[]);
    assert_eq!(code, Some(1), "{r}");
    assert_eq!(status(&r, "virt-node-emulation-gated"), "fail");
    assert_eq!(status(&r, "virt-node-api-tls"), "not-applicable");
    for id in [
        "virt-node-api-no-anonymous",
        "virt-node-state-dir-private",
        "virt-node-hostdisk-gated",
        "virt-node-imports-limited",
        "virt-node-requests-audited",
    ] {
        assert_eq!(status(&r, id), "pass", "{id}: {r}");
    }
    let fail =
        r["results"].as_array().unwrap().iter().find(|x| x["id"] == "virt-node-emulation-gated").unwrap();
    assert!(fail["remediation"].as_str().unwrap().contains("--allow-emulation"), "{fail}");
    // OpenSCAP ran Debian's content on this machine: real rule ids, some evaluated.
    assert!(r["profile"].as_str().unwrap().contains("anssi_np_nt28_average"), "{}", r["profile"]);
    let scap: Vec<&Value> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["id"].as_str().unwrap().starts_with("xccdf_org.ssgproject.content_rule_"))
        .collect();
    assert!(scap.len() > 10, "{} OpenSCAP results", scap.len());
    assert!(scap.iter().any(|x| x["status"] == "pass"), "no OpenSCAP rule evaluated: {scap:?}");

    // hostDisk allowed under /etc fails, with what was seen; the TCP listener (TLS) passes.
    n.sigkill();
    std::fs::write(t.path().join("token"), "tok\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    n.args = vec![
        "--host-disk-dir".into(),
        "/etc".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--token-file".into(),
        t.path().join("token").display().to_string(),
    ];
    n.spawn();
    let (code, r) = scan(&state, &["--no-openscap"]);
    assert_eq!(code, Some(1));
    assert_eq!(status(&r, "virt-node-hostdisk-gated"), "fail");
    assert_eq!(status(&r, "virt-node-api-tls"), "pass", "the TCP listener speaks TLS");
    assert!(r["profile"].is_null());
    // The text form names each rule and its fix.
    let out = Command::new(node::bin("virt-compliance"))
        .arg("--state-dir")
        .arg(&state)
        .arg("--no-openscap")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("FAIL   high     virt-node-hostdisk-gated"), "{text}");
    assert!(text.contains("fix:  drop --host-disk-dir"), "{text}");
    // No node on a directory: a clear error, exit 2.
    let out = Command::new(node::bin("virt-compliance"))
        .arg("--state-dir")
        .arg(t.path().join("none"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has a virt-node started on this state directory?"));
}

/// Debian's kubectl, fetched by the project's script (never skipped: the script fails loudly).
fn kubectl_binary() -> std::path::PathBuf {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kubectl.sh");
    let out = Command::new("bash").arg(script).output().unwrap();
    assert!(out.status.success(), "scripts/kubectl.sh failed: {}", String::from_utf8_lossy(&out.stderr));
    std::path::PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

#[test]
fn the_scan_results_are_compliance_check_results_kubectl_lists() {
    let kubectl = kubectl_binary();
    let t = tempfile::Builder::new().prefix("vcr").tempdir_in("/tmp").unwrap();
    let state = t.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(t.path().join("token"), "ccr-token\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let token = t.path().join("token").display().to_string();
    let n = NodeProc::start_with(&state, None, &["--listen", &listen, "--token-file", &token]);
    let kubeconfig = state.join("kubeconfig");
    let t0 = std::time::Instant::now();
    while !kubeconfig.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "no kubeconfig: {}", n.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let k = |args: &[&str]| {
        let o = Command::new(&kubectl)
            .args(["--request-timeout", "60s"])
            .args(args)
            .env("HOME", t.path())
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "kubectl {args:?}: {out}{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            n.log()
        );
        out
    };
    // Before any scan: none.
    let none = k(&["get", "compliancecheckresults", "-n", "openshift-compliance", "-o", "json"]);
    assert_eq!(serde_json::from_str::<Value>(&none).unwrap()["items"], serde_json::json!([]));

    // The whole scan (the node's rules and OpenSCAP's); every result becomes an object.
    let (code, report) = scan(&state, &[]);
    assert_eq!(code, Some(1), "emulation is allowed on the test node: {report}");
    let results = report["results"].as_array().unwrap();
    let list: Value =
        serde_json::from_str(&k(&["get", "ccr", "-n", "openshift-compliance", "-o", "json"])).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), results.len(), "one object per rule");
    for i in items {
        assert_eq!(i["kind"], "ComplianceCheckResult");
        assert_eq!(i["apiVersion"], "compliance.openshift.io/v1alpha1");
        let r = results.iter().find(|r| r["id"] == i["id"]).unwrap_or_else(|| panic!("no result for {i}"));
        let word = match r["status"].as_str().unwrap() {
            "pass" => "PASS",
            "fail" => "FAIL",
            "not-applicable" => "NOT-APPLICABLE",
            _ => "ERROR",
        };
        assert_eq!(i["status"], word, "{i}");
        assert_eq!(i["metadata"]["labels"]["compliance.openshift.io/check-status"], word);
        assert_eq!(i["severity"], r["severity"]);
        assert_eq!(i["remediation"], r["remediation"]);
    }
    assert!(
        items.iter().any(|i| i["metadata"]["name"].as_str().unwrap().starts_with("debian-")),
        "OpenSCAP's rules"
    );

    // As on OpenShift: the failures by label, a table with the operator's columns, one by name.
    let failed = k(&[
        "get",
        "compliancecheckresults",
        "-n",
        "openshift-compliance",
        "-l",
        "compliance.openshift.io/check-status=FAIL,compliance.openshift.io/scan-name=virt-node",
        "-o",
        "name",
    ]);
    assert_eq!(failed.trim(), "compliancecheckresult.compliance.openshift.io/virt-node-emulation-gated");
    let table = k(&["get", "ccr", "-n", "openshift-compliance", "virt-node-api-tls"]);
    let mut lines = table.lines();
    assert_eq!(lines.next().unwrap().split_whitespace().collect::<Vec<_>>(), ["NAME", "STATUS", "SEVERITY"]);
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["virt-node-api-tls", "PASS", "high"]
    );
    let one: Value = serde_json::from_str(&k(&[
        "get",
        "compliancecheckresult",
        "-n",
        "openshift-compliance",
        "virt-node-emulation-gated",
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(one["remediation"].as_str().unwrap().contains("--allow-emulation"), "{one}");
    // Read-only, as the operator's results are to users.
    let o = Command::new(&kubectl)
        .args(["delete", "ccr", "-n", "openshift-compliance", "virt-node-api-tls"])
        .env("HOME", t.path())
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    assert!(!o.status.success(), "delete of a check result is refused");
}
