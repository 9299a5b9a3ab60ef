//! The routes of `subresources.kubevirt.io/v1`: discovery, the VMI subresources served for the
//! VMIs of this node, and the VM verbs ([`vm_verbs`]). Every refusal is a Kubernetes `Status`
//! naming the object; paths not served answer the API server's generic 404 (on which `virtctl`
//! carries VM verbs out itself, for a cluster without this API).

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use kube::Api;
use serde_json::json;
use std::sync::Arc;
use virt_core::agent::ShutdownMode;
use virt_core::lifecycle::Runtime;
use virt_core::machine::{Machine, MachineError, MachineStatus};
use virt_core::model::{VirtualMachineInstance, VmiPhase};

use super::{vm_verbs, Server, GROUP_VERSION};
use crate::cluster::handler::model_of;
use crate::cluster::kinds::Cr;
use crate::node::api::consoles::bridge;
use crate::node::api::status_response;

pub(super) type Refusal = Box<Response>;

pub(super) fn refuse(code: StatusCode, reason: &str, message: String) -> Refusal {
    Box::new(status_response(code, reason, &message))
}

/// The subresources of a VMI this server serves, with their verbs.
const VMI_SUBRESOURCES: &[(&str, &str)] = &[
    ("console", "get"),
    ("vnc", "get"),
    ("portforward", "get"),
    ("pause", "update"),
    ("unpause", "update"),
    ("softreboot", "update"),
    ("guestosinfo", "get"),
];

/// The router.
pub fn router(server: Server) -> Router {
    let at = |what: &str| {
        format!("/apis/{GROUP_VERSION}/namespaces/{{ns}}/virtualmachineinstances/{{name}}/{what}")
    };
    let vm_at =
        |what: &str| format!("/apis/{GROUP_VERSION}/namespaces/{{ns}}/virtualmachines/{{name}}/{what}");
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/apis/subresources.kubevirt.io", get(group))
        .route(&format!("/apis/{GROUP_VERSION}"), get(resources))
        .route(&at("console"), get(console))
        .route(&at("vnc"), get(vnc))
        .route(&at("portforward/{port}"), get(portforward))
        .route(&at("portforward/{port}/{protocol}"), get(portforward_protocol))
        .route(&at("pause"), put(pause))
        .route(&at("unpause"), put(unpause))
        .route(&at("softreboot"), put(softreboot))
        .route(&at("guestosinfo"), get(guestosinfo))
        .route(&vm_at("start"), put(vm_verbs::start))
        .route(&vm_at("stop"), put(vm_verbs::stop))
        .route(&vm_at("restart"), put(vm_verbs::restart))
        .route(&vm_at("migrate"), put(migrate))
        .fallback(|| async {
            status_response(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            )
        })
        .with_state(server)
}

async fn group() -> Json<serde_json::Value> {
    let v = json!({ "groupVersion": GROUP_VERSION, "version": "v1" });
    Json(json!({
        "kind": "APIGroup", "apiVersion": "v1", "name": "subresources.kubevirt.io",
        "versions": [v], "preferredVersion": v,
    }))
}

/// The `APIResourceList` (kubectl api-resources, the API server's discovery and availability).
async fn resources() -> Json<serde_json::Value> {
    let of = |plural: &str, kind: &str, subs: &[(&str, &str)]| -> Vec<serde_json::Value> {
        subs.iter()
            .map(|(sub, verb)| {
                json!({
                    "name": format!("{plural}/{sub}"), "singularName": "", "namespaced": true,
                    "kind": kind, "verbs": [verb],
                })
            })
            .collect()
    };
    let mut resources = of("virtualmachineinstances", "VirtualMachineInstance", VMI_SUBRESOURCES);
    resources.extend(of("virtualmachines", "VirtualMachine", vm_verbs::VM_SUBRESOURCES));
    resources.extend(of("virtualmachines", "VirtualMachine", &[("migrate", "update")]));
    Json(
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION, "resources": resources }),
    )
}

/// The running VMI `ns/name` of this node, as the project's model (the launcher's run directory is
/// found by its uid).
async fn running_vmi(
    s: &Server,
    headers: &HeaderMap,
    ns: &str,
    name: &str,
    sub: &str,
) -> Result<VirtualMachineInstance, Refusal> {
    let user = headers.get("x-remote-user").and_then(|v| v.to_str().ok()).unwrap_or("?");
    log::info!("subresource {sub} of VMI {ns}/{name} for {user}");
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(s.client.clone(), ns);
    let vmi = match vmis.get_opt(name).await {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("virtualmachineinstances.kubevirt.io \"{name}\" not found in namespace {ns}"),
            ))
        }
        Err(e) => {
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("reading VMI {ns}/{name}: {e}"),
            ))
        }
    };
    let status = vmi.obj.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(VmiPhase::Pending);
    if phase != VmiPhase::Running {
        return Err(refuse(
            StatusCode::CONFLICT,
            "Conflict",
            format!("VirtualMachineInstance {ns}/{name} is not running (phase {})", phase.as_str()),
        ));
    }
    let node = status.node_name.unwrap_or_default();
    if node != s.node {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "VirtualMachineInstance {ns}/{name} runs on node {node}; this virt-handler serves node {} \
                 (one node per subresources endpoint)",
                s.node
            ),
        ));
    }
    Ok(model_of(&vmi))
}

/// Runs `f` on the launcher of `vmi` (blocking: the control socket).
async fn on_machine<T: Send + 'static>(
    s: &Server,
    vmi: VirtualMachineInstance,
    what: &'static str,
    f: impl FnOnce(&dyn Machine) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let rt = s.runtime.clone();
    let key = format!(
        "{}/{}",
        vmi.metadata.namespace.as_deref().unwrap_or_default(),
        vmi.metadata.name.as_deref().unwrap_or_default()
    );
    let k = key.clone();
    let joined = tokio::task::spawn_blocking(move || match rt.reattach(&vmi) {
        Some(m) => f(m.as_ref()),
        None => Err(refuse(
            StatusCode::CONFLICT,
            "Conflict",
            format!("{what} of VirtualMachineInstance {k}: its launcher does not answer"),
        )),
    })
    .await;
    joined.unwrap_or_else(|e| {
        Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", format!("{what} of {key}: {e}")))
    })
}

fn machine_err(what: &'static str, e: MachineError) -> Refusal {
    refuse(StatusCode::CONFLICT, "Conflict", format!("{what}: {e}"))
}

pub(super) fn done(r: Result<(), Refusal>) -> Response {
    match r {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => *e,
    }
}

async fn pause(State(s): State<Server>, h: HeaderMap, Path((ns, name)): Path<(String, String)>) -> Response {
    let r = async {
        let vmi = running_vmi(&s, &h, &ns, &name, "pause").await?;
        on_machine(&s, vmi, "pause", |m| {
            if m.status() == MachineStatus::Paused {
                return Err(refuse(StatusCode::CONFLICT, "Conflict", "the VMI is already paused".into()));
            }
            m.pause().map_err(|e| machine_err("pause", e))
        })
        .await
    };
    done(r.await)
}

async fn unpause(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let r = async {
        let vmi = running_vmi(&s, &h, &ns, &name, "unpause").await?;
        on_machine(&s, vmi, "unpause", |m| {
            if m.status() != MachineStatus::Paused {
                return Err(refuse(StatusCode::CONFLICT, "Conflict", "the VMI is not paused".into()));
            }
            m.resume().map_err(|e| machine_err("unpause", e))
        })
        .await
    };
    done(r.await)
}

/// Through the guest agent (a reboot in place). Without one the local node presses the ACPI power
/// button and starts the machine again; a launcher pod ends with its machine, so here that is
/// refused.
async fn softreboot(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let r = async {
        let vmi = running_vmi(&s, &h, &ns, &name, "softreboot").await?;
        on_machine(&s, vmi, "softreboot", |m| {
            if m.status() == MachineStatus::Paused {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "the VMI is paused; unpause it first".into(),
                ));
            }
            m.guest_shutdown(ShutdownMode::Reboot).map_err(|e| match e {
                MachineError::Agent { absent: true, .. } => refuse(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "soft reboot on a cluster needs the guest agent (none is connected)".into(),
                ),
                e => machine_err("softreboot", e),
            })
        })
        .await
    };
    done(r.await)
}

/// `PUT .../virtualmachines/NAME/migrate` (KubeVirt's `virtctl migrate`): a
/// VirtualMachineInstanceMigration of the VM's instance, named `kubevirt-migrate-vm-<random>`,
/// which virt-controller admits and carries out with this node's agent. Refused when the VM does
/// not exist or has no running instance.
async fn migrate(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let user = h.get("x-remote-user").and_then(|v| v.to_str().ok()).unwrap_or("?");
    log::info!("subresource migrate of VM {ns}/{name} for {user}");
    let internal = |what: String, e: kube::Error| {
        status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &format!("{what}: {e}"))
    };
    let vms: Api<Cr<virt_core::model::VirtualMachine>> = Api::namespaced(s.client.clone(), &ns);
    match vms.get_opt(&name).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            let msg = format!("virtualmachines.kubevirt.io \"{name}\" not found");
            return status_response(StatusCode::NOT_FOUND, "NotFound", &msg);
        }
        Err(e) => return internal(format!("reading VM {ns}/{name}"), e),
    }
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(s.client.clone(), &ns);
    let running = match vmis.get_opt(&name).await {
        Ok(v) => v.and_then(|v| v.obj.status).and_then(|st| st.phase) == Some(VmiPhase::Running),
        Err(e) => return internal(format!("reading VMI {ns}/{name}"), e),
    };
    if !running {
        return status_response(StatusCode::CONFLICT, "Conflict", "VM is not running");
    }
    let object = json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": { "generateName": "kubevirt-migrate-vm-", "namespace": ns },
        "spec": { "vmiName": name },
    });
    let migration: Cr<virt_core::model::VirtualMachineInstanceMigration> =
        match serde_json::from_value(object) {
            Ok(m) => m,
            Err(e) => {
                let msg = format!("the migration of VM {ns}/{name}: {e}");
                return status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", &msg);
            }
        };
    let vmims: Api<Cr<virt_core::model::VirtualMachineInstanceMigration>> =
        Api::namespaced(s.client.clone(), &ns);
    match vmims.create(&kube::api::PostParams::default(), &migration).await {
        Ok(m) => {
            log::info!("VM {ns}/{name}: migration {} created", m.meta.name.as_deref().unwrap_or("?"));
            StatusCode::ACCEPTED.into_response()
        }
        Err(kube::Error::Api(r)) => {
            let code = StatusCode::from_u16(r.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            status_response(code, &r.reason, &r.message)
        }
        Err(e) => internal(format!("creating a migration of VM {ns}/{name}"), e),
    }
}

async fn guestosinfo(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let r = async {
        let vmi = running_vmi(&s, &h, &ns, &name, "guestosinfo").await?;
        on_machine(&s, vmi, "guestosinfo", |m| {
            m.guest_agent().ok_or_else(|| {
                refuse(StatusCode::CONFLICT, "Conflict", "guestosinfo: no guest agent is connected".into())
            })
        })
        .await
    };
    match r.await {
        Ok(report) => Json(crate::node::api::agent::guest_os_info(&report)).into_response(),
        Err(e) => *e,
    }
}

/// The serial console: checked before the upgrade (a refusal is a `Status`), then bridged to the
/// launcher's console socket.
async fn console(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let vmi = match running_vmi(&s, &h, &ns, &name, "console").await {
        Ok(v) => v,
        Err(e) => return *e,
    };
    let rt = s.runtime.clone();
    let key = format!("{ns}/{name}");
    let opened = tokio::task::spawn_blocking(move || rt.console(&vmi)).await;
    let stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return *refuse(StatusCode::CONFLICT, "Conflict", format!("console of {key}: {e}")),
        Err(e) => {
            return *refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("console of {key}: {e}"),
            )
        }
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let stream = match stream.set_nonblocking(true).and_then(|()| tokio::net::UnixStream::from_std(stream)) {
        Ok(s) => s,
        Err(e) => {
            return *refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                format!("console of {key}: {e}"),
            )
        }
    };
    ws.protocols(["plain.kubevirt.io"]).on_upgrade(move |socket| bridge(socket, stream))
}

/// The VNC display: QEMU's VNC server on a unix socket in the VMI's run directory (the agent sees
/// the pod's run directory at the same path), checked before the upgrade, then bridged as the
/// local node's API bridges it.
async fn vnc(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name)): Path<(String, String)>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let vmi = match running_vmi(&s, &h, &ns, &name, "vnc").await {
        Ok(v) => v,
        Err(e) => return *e,
    };
    let key = format!("{ns}/{name}");
    let k = key.clone();
    let socket = on_machine(&s, vmi, "vnc", move |m| {
        m.vnc_socket().ok_or_else(|| {
            refuse(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "VirtualMachineInstance {k} has no VNC display (autoattachGraphicsDevice: false, or it \
                     runs on the native microVM, which has none)"
                ),
            )
        })
    })
    .await;
    let socket = match socket {
        Ok(p) => p,
        Err(e) => return *e,
    };
    let display = match tokio::net::UnixStream::connect(&socket).await {
        Ok(d) => d,
        Err(e) => {
            return *refuse(
                StatusCode::CONFLICT,
                "Conflict",
                format!("the VNC display of {key} at {} does not answer: {e}", socket.display()),
            )
        }
    };
    match ws {
        Ok(ws) => ws.protocols(["plain.kubevirt.io"]).on_upgrade(move |socket| bridge(socket, display)),
        Err(rejection) => rejection.into_response(),
    }
}

async fn portforward(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name, port)): Path<(String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    forward(s, h, ns, name, port, None, ws).await
}

async fn portforward_protocol(
    State(s): State<Server>,
    h: HeaderMap,
    Path((ns, name, port, protocol)): Path<(String, String, String, String)>,
    ws: WebSocketUpgrade,
) -> Response {
    forward(s, h, ns, name, port, Some(protocol), ws).await
}

/// A guest port through the VMI's pod: the guest's address in the pod's namespace, dialled there
/// by the local node's dialer and carried as the local node carries it (`node::portforward`).
async fn forward(
    s: Server,
    h: HeaderMap,
    ns: String,
    name: String,
    port: String,
    protocol: Option<String>,
    ws: WebSocketUpgrade,
) -> Response {
    use crate::node::portforward::{self as pf, Target};
    let (port, protocol) = match pf::port_and_protocol(&port, protocol.as_deref()) {
        Ok(p) => p,
        Err(refusal) => return *refusal,
    };
    let vmi = match running_vmi(&s, &h, &ns, &name, "portforward").await {
        Ok(v) => v,
        Err(e) => return *e,
    };
    let endpoint = s.networks.as_ref().and_then(|n| n.get(&vmi)).map(|net| net.endpoint());
    let Some(endpoint) = endpoint else {
        return *refuse(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "VirtualMachineInstance {ns}/{name} has no network the node can reach (no masquerade \
                 interface on the pod network, or it is not set up yet)"
            ),
        );
    };
    let dialer: Arc<dyn virt_net::dial::Dialer> = Arc::new(virt_net::dial::NetnsDialer::default());
    let target = Target { endpoint, namespace: ns, name, port, protocol };
    pf::forward(dialer, pf::KEEPALIVE, target, ws).await
}
