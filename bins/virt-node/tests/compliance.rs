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
