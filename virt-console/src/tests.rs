//! The console's routes without a browser: files, page routes, redirects, websocket forwarding.

use axum::body::Body;
use axum::extract::{Path, Request};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

/// A stand-in API: echoes the path and the `Authorization` it was given.
fn api() -> Router {
    let echo = |req: Request| async move {
        let auth = req.headers().get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or("").to_string());
        format!("api {} auth={}", req.uri(), auth.unwrap_or_default()).into_response()
    };
    // Path parameters as the node's console handler takes them: the console's own routing must
    // leave none behind.
    let console = move |Path((ns, name)): Path<(String, String)>, req: Request| async move {
        assert_eq!((ns.as_str(), name.as_str()), ("d", "x"));
        echo(req).await
    };
    Router::new()
        .route(
            "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/console",
            get(console),
        )
        .route("/apis/kubevirt.io/v1/virtualmachines", get(echo))
}

async fn call(req: Request) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = mount(api()).oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, String::from_utf8_lossy(&bytes).into_owned())
}

fn get_req(uri: &str) -> Request {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn root_redirects_to_the_console() {
    for p in ["/", "/console"] {
        let (code, h, _) = call(get_req(p)).await;
        assert!(code.is_redirection(), "{p}: {code}");
        assert_eq!(h[header::LOCATION], "/console/");
    }
}

#[tokio::test]
async fn pages_are_the_application_with_a_strict_policy() {
    for p in [
        "/console/",
        "/console/vms",
        "/console/vms/default/demo",
        "/console/create",
        "/console/bootsources",
        "/console/instancetypes",
        "/console/compliance",
    ] {
        let (code, h, body) = call(get_req(p)).await;
        assert_eq!(code, StatusCode::OK, "{p}");
        assert_eq!(h[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = h[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'self'"), "{csp}");
        assert!(body.contains("<title>"), "{body}");
        // No CDN: every script and stylesheet is the console's own.
        assert!(!body.contains("http://") && !body.contains("https://"), "{body}");
    }
}

#[tokio::test]
async fn vendored_libraries_are_embedded() {
    for (p, ty) in [
        ("/console/vendor/xterm/xterm.mjs", "text/javascript; charset=utf-8"),
        ("/console/vendor/xterm/xterm.css", "text/css; charset=utf-8"),
        ("/console/vendor/novnc/core/rfb.js", "text/javascript; charset=utf-8"),
        ("/console/js/app.js", "text/javascript; charset=utf-8"),
    ] {
        let (code, h, body) = call(get_req(p)).await;
        assert_eq!(code, StatusCode::OK, "{p}");
        assert_eq!(h[header::CONTENT_TYPE], ty, "{p}");
        assert!(body.len() > 100, "{p}: {} bytes", body.len());
    }
    let (code, _, body) = call(get_req("/console/vendor/nothing.js")).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("vendor/nothing.js"), "{body}");
    // Every relative import of the embedded modules resolves to an embedded file.
    for name in assets::names().filter(|n| n.ends_with(".js") || n.ends_with(".mjs")) {
        let (_, bytes) = assets::find(name).unwrap();
        let text = String::from_utf8_lossy(bytes);
        for line in text.lines().filter(|l| l.trim_start().starts_with("import ")) {
            let Some(spec) = line.split(['"', '\'']).nth(1).filter(|s| s.starts_with('.')) else { continue };
            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
            let mut parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
            for seg in spec.split('/') {
                match seg {
                    "." => {}
                    ".." => {
                        parts.pop();
                    }
                    s => parts.push(s),
                }
            }
            let target = parts.join("/");
            assert!(assets::find(&target).is_some(), "{name} imports {spec}: {target} is not embedded");
        }
    }
}

#[tokio::test]
async fn files_are_read_only() {
    let req = Request::post("/console/js/app.js").body(Body::empty()).unwrap();
    let (code, _, _) = call(req).await;
    assert_eq!(code, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn other_paths_reach_the_api() {
    let (code, _, body) = call(get_req("/apis/kubevirt.io/v1/virtualmachines")).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body, "api /apis/kubevirt.io/v1/virtualmachines auth=");
}

const WS: &str =
    "/console/ws/apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/console";

#[tokio::test]
async fn websockets_carry_the_cookie_token_to_the_api() {
    let req = Request::get(format!("{WS}?q=1"))
        .header(header::HOST, "node:8443")
        .header(header::ORIGIN, "https://node:8443")
        .header(header::COOKIE, "virt-console-token=tok%20en")
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = call(req).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        "api /apis/subresources.kubevirt.io/v1/namespaces/d/virtualmachineinstances/x/console?q=1 auth=Bearer tok en"
    );
}

#[tokio::test]
async fn websockets_from_other_sites_are_refused() {
    let req = Request::get(WS)
        .header(header::HOST, "node:8443")
        .header(header::ORIGIN, "https://evil.example")
        .header(header::COOKIE, "virt-console-token=tok")
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = call(req).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert!(body.contains("evil.example"), "{body}");
}

#[tokio::test]
async fn only_console_subresources_are_forwarded() {
    let req = get_req("/console/ws/apis/kubevirt.io/v1/virtualmachines");
    let (code, _, body) = call(req).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(body.contains("/apis/kubevirt.io/v1/virtualmachines"), "{body}");
}

#[tokio::test]
async fn every_page_is_in_the_navigation_and_routed() {
    let (_, _, index) = call(get_req("/console/")).await;
    let (_, _, app) = call(get_req("/console/js/app.js")).await;
    for page in ["vms", "create", "bootsources", "instancetypes", "compliance"] {
        assert!(index.contains(&format!("href=\"/console/{page}\"")), "index.html has no link to {page}");
        assert!(app.contains(&format!("\\/console\\/{page}\\/?$")), "app.js does not route {page}");
    }
}

/// The pages' pure logic (the form's YAML and commands, the metrics parser) run by node, the same
/// modules the browser loads.
#[test]
fn page_logic_runs_in_node() {
    let web = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web/js");
    let script = format!(
        r#"
import {{ vmYaml, vmCommands }} from '{web}/pages/wizard.js';
import {{ parseMetrics }} from '{web}/charts.js';
import {{ migrationRequest, liveMigratable, migrating, activeMigration, migrationSummary, dataSourceReadiness }} from '{web}/pages/common.js';
import {{ complianceRows, complianceSummary }} from '{web}/pages/compliance.js';
const fail = (m) => {{ console.error(m); process.exit(1); }};
const v = {{ name: 'a', namespace: 'ns', instancetype: {{ kind: 'VirtualMachineClusterInstancetype', name: 'u1.small' }},
  preference: {{ kind: 'VirtualMachinePreference', name: 'fedora' }}, source: {{ name: 'fedora', namespace: 'os-images' }},
  size: '10Gi', sshKey: 'ssh-ed25519 KEY me', userData: '#cloud-config', start: false }};
const y = vmYaml(v);
for (const want of ['runStrategy: Halted', 'kind: VirtualMachineClusterInstancetype', 'name: u1.small', 'kind: VirtualMachinePreference',
  'sourceRef:', 'namespace: os-images', 'storage: 10Gi', '            ssh_authorized_keys:', '              - ssh-ed25519 KEY me', 'name: a-rootdisk'])
  if (!y.includes(want)) fail(`yaml lacks ${{want}}:\n${{y}}`);
const c = vmCommands(v);
for (const want of ['virtctl create vm', '--instancetype u1.small', '--preference virtualmachinepreference/fedora',
  'src:os-images/fedora,size:10Gi', 'kubectl create -n ns -f -', 'virtctl start a -n ns'])
  if (!c.includes(want)) fail(`command lacks ${{want}}:\n${{c}}`);
const m = parseMetrics('# HELP x y\n# TYPE x gauge\nkubevirt_vmi_vcpu_seconds_total{{name="a",namespace="n\\"s",id="0"}} 1.5\nup 1\n');
if (m.length !== 2 || m[0].value !== 1.5 || m[0].labels.namespace !== 'n"s' || m[0].labels.id !== '0') fail(JSON.stringify(m));
// Migrate: KubeVirt's request (a migration named by the API server), the condition's reason shown
// instead of a button that fails later, the last migration kept on the VMI.
const r = migrationRequest('ns', 'a');
if (r.path !== '/apis/kubevirt.io/v1/namespaces/ns/virtualmachineinstancemigrations' || r.body.kind !== 'VirtualMachineInstanceMigration'
  || r.body.metadata.generateName !== 'kubevirt-migrate-vm-' || r.body.spec.vmiName !== 'a') fail(JSON.stringify(r));
const tapped = {{ status: {{ conditions: [{{ type: 'LiveMigratable', status: 'False', reason: 'InterfaceNotLiveMigratable', message: 'interface default is a tap' }}] }} }};
const lm = liveMigratable(tapped);
if (lm.can || lm.why !== 'InterfaceNotLiveMigratable: interface default is a tap') fail(JSON.stringify(lm));
if (!liveMigratable({{ status: {{}} }}).can) fail('no condition: migratable');
const moved = {{ status: {{ migrationState: {{ completed: true, failed: false, sourceNode: 'n', targetNode: 'n', sourcePod: 'a', targetPod: 'a-mig-1',
  startTimestamp: 't0', endTimestamp: 't1', migrationStats: {{ downtimeUs: 1500, totalUs: 650000, bytesSent: 2097152 }} }} }} }};
if (migrating(moved) || !migrating({{ status: {{ migrationState: {{ completed: false }} }} }})) fail('migrating');
const rows = Object.fromEntries(migrationSummary(moved));
if (rows.Outcome !== 'succeeded' || rows.Downtime !== '1.5 ms' || rows.Target !== 'n / a-mig-1' || rows.Sent !== '2.0 MiB') fail(JSON.stringify(rows));
const failed = Object.fromEntries(migrationSummary({{ status: {{ migrationState: {{ completed: true, failed: true, failureReason: 'target refused', abortStatus: 'Succeeded' }} }} }}));
if (failed.Outcome !== 'failed: target refused (abort succeeded)') fail(JSON.stringify(failed));
const items = [{{ metadata: {{ name: 'old' }}, spec: {{ vmiName: 'a' }}, status: {{ phase: 'Succeeded' }} }}, {{ metadata: {{ name: 'now' }}, spec: {{ vmiName: 'a' }}, status: {{ phase: 'Running' }} }}];
if (activeMigration(items, 'a')?.metadata.name !== 'now' || activeMigration(items, 'b')) fail('activeMigration');
// Boot sources on the Overview: ready, not ready with the reason, unknown.
const dsr = (conds) => dataSourceReadiness({{ status: {{ conditions: conds }} }});
if (dsr([{{ type: 'Ready', status: 'True' }}]).text !== 'Ready') fail('ready');
const nr = dsr([{{ type: 'Ready', status: 'False', reason: 'NotFound', message: 'PVC os-images/x not found' }}]);
if (nr.ready !== false || nr.text !== 'Not ready (NotFound: PVC os-images/x not found)') fail(JSON.stringify(nr));
if (dsr(undefined).ready !== null) fail('unknown');
// Compliance: failures first, then by severity; filters by status, scan and text; counts per status.
const ccr = (name, status, severity, scan, t) => ({{ metadata: {{ name, creationTimestamp: t || '2026-12-05T10:00:00Z',
  labels: {{ 'compliance.openshift.io/scan-name': scan }} }}, id: name, status, severity, description: `title of ${{name}}` }});
const results = [ccr('virt-node-api-tls', 'PASS', 'high', 'virt-node'), ccr('debian-a', 'FAIL', 'low', 'debian'),
  ccr('virt-node-hostdisk-gated', 'FAIL', 'high', 'virt-node', '2026-12-05T11:00:00Z'), ccr('debian-b', 'NOT-APPLICABLE', 'medium', 'debian')];
const order = complianceRows(results).map((o) => o.metadata.name).join(',');
if (order !== 'virt-node-hostdisk-gated,debian-a,virt-node-api-tls,debian-b') fail(`compliance order ${{order}}`);
if (complianceRows(results, {{ status: 'FAIL', scan: 'debian' }}).map((o) => o.metadata.name).join() !== 'debian-a') fail('compliance filter');
if (complianceRows(results, {{ search: 'HOSTDISK' }}).length !== 1) fail('compliance search');
const sum = complianceSummary(results);
if (sum.counts.FAIL !== 2 || sum.counts.PASS !== 1 || sum.counts.ERROR !== 0 || sum.scans.join() !== 'debian,virt-node'
  || sum.scanned !== '2026-12-05T11:00:00Z') fail(JSON.stringify(sum));
console.log('ok');
"#,
        web = web.display()
    );
    let dir = tempfile_dir();
    let file = dir.join("logic.mjs");
    std::fs::write(&file, script).unwrap();
    let out =
        std::process::Command::new("node").arg(&file).output().expect("node runs (scripts/install-deps.sh)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("virt-console-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
