//! Migrations between nodes, the node agents' part (KubeVirt's migration proxies between
//! virt-handlers): every agent runs a [`MigrationPeer`], the proxy listener of its node with the
//! cluster's migration TLS (`cluster::migration_certs`).
//!
//! The target node's agent, once virt-controller has the migration `Scheduled` with its target
//! pod running on this node ([`receive`]): prepares the VMI's volumes here and the target
//! launcher's spec (`LauncherRuntime::prepare_incoming`; the pod's entry script starts
//! `virt-launcher --incoming`), expects the migration's uid for that launcher's `migrate.sock`,
//! and writes its proxy's address into the VMI's `status.migrationState.targetNodeAddress`. The
//! source node's agent then connects to that address (`migration::reconcile`) and hands the
//! stream to the source launcher. When the migration ends the route is withdrawn; a migration that
//! failed leaves nothing of the VMI on this node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_core::lifecycle::migration_failed;
use virt_core::machine::supervisor::migration::MIGRATE_SOCKET;
use virt_core::model::{MigrationState, VirtualMachineInstance};

use super::migration::Vmim;
use super::{claim_files, model_of, Handler};
use crate::cluster::controller::migration::{set_phase, write_migration_state};
use crate::cluster::controller::ReconcileError;
use crate::cluster::kinds::Cr;
use crate::cluster::migration_certs::{self, SecretRef};
use crate::node::migration_proxy::{self, ProxyError, ProxyListener, ProxyTls, Route};

/// This node's end of migrations between nodes.
pub struct MigrationPeer {
    tls: ProxyTls,
    listener: ProxyListener,
    advertise: SocketAddr,
    /// Migrations (uid) this node expects: their route, and the VMI's model.
    expected: Mutex<HashMap<String, (Route, VirtualMachineInstance)>>,
}

impl MigrationPeer {
    /// The address other nodes' agents reach this one's proxy at.
    pub fn address(&self) -> SocketAddr {
        self.advertise
    }

    /// The agents' TLS (also their identity towards each other's subresources: `subresources::peers`).
    pub fn tls(&self) -> &ProxyTls {
        &self.tls
    }

    /// Connects to the proxy at `addr` for migration `key` (the source's side).
    pub fn connect(&self, addr: SocketAddr, key: &str) -> Result<std::os::unix::net::UnixStream, ProxyError> {
        migration_proxy::connect(addr, &self.tls, key)
    }
}

/// Where a handler's [`MigrationPeer`] appears once it serves (empty until then, or for good
/// when the agent serves no migrations between nodes).
pub type PeerSlot = Arc<OnceLock<MigrationPeer>>;

/// Errors of starting the migration proxy.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The listen address is unspecified and no address to advertise was given.
    #[error(
        "--migration-listen {0}: other nodes cannot reach an unspecified address; give \
         --migration-advertise IP"
    )]
    NoAdvertise(SocketAddr),
}

/// Serves migrations between nodes on `listen` (advertised with `advertise`'s IP, else the
/// listen address's) once virt-controller's Secret `secret` is there: waits for it (logged once),
/// then fills `slot`; with `subresources`, also serves the subresource routes to other nodes'
/// agents on the same IP (`subresources::peers`). Returns at once; the waiting runs on a task,
/// which logs what fails (unusable material, an address that cannot be bound).
pub async fn serve(
    client: kube::Client,
    secret: SecretRef,
    listen: SocketAddr,
    advertise: Option<std::net::IpAddr>,
    slot: PeerSlot,
    subresources: Option<crate::cluster::subresources::Server>,
) -> Result<(), PeerError> {
    let ip = advertise.unwrap_or(listen.ip());
    if ip.is_unspecified() {
        return Err(PeerError::NoAdvertise(listen));
    }
    tokio::spawn(async move {
        let mut said = false;
        let material = loop {
            match migration_certs::load(&client, &secret).await {
                Ok(Some(m)) => break m,
                Ok(None) if !said => {
                    log::info!("migration proxy: waiting for Secret {secret} (virt-controller makes it)");
                    said = true;
                }
                Ok(None) => {}
                Err(e) => log::warn!("migration proxy: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let started = material.tls().and_then(|tls| Ok((ProxyListener::bind(listen, &tls)?, tls)));
        match started {
            Ok((listener, tls)) => {
                let advertise = SocketAddr::new(ip, listener.local_addr().port());
                log::info!(
                    "migration proxy: listening on {}, advertised as {advertise}",
                    listener.local_addr()
                );
                if let Some(server) = subresources {
                    if let Err(e) = crate::cluster::subresources::peers::serve(server, ip, &tls).await {
                        log::error!("subresources for other nodes' agents: {e}");
                    }
                }
                let _ = slot.set(MigrationPeer { tls, listener, advertise, expected: Mutex::default() });
            }
            Err(e) => log::error!("migration proxy: {e}; migrations between nodes stay off"),
        }
    });
    Ok(())
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// On the target node: readies this node for migration `m` of `vmi` (see the module's
/// documentation).
pub(super) async fn receive(
    h: &Arc<Handler>,
    m: &Vmim,
    vmi: &Cr<VirtualMachineInstance>,
    state: MigrationState,
    phase: &str,
) -> Result<Action, ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let uid = m.meta.uid.clone().unwrap_or_default();
    let vmi_name = vmi.meta.name.clone().unwrap_or_default();
    let Some(peer) = h.peer.get() else {
        let why = format!(
            "the target node {}'s virt-handler serves no migrations between nodes (no \
             --migration-listen, or its Secret is missing)",
            h.node
        );
        return fail(h, &ns, &name, &vmi_name, state, why).await;
    };
    let known = peer.expected.lock().map(|e| e.contains_key(&uid)).unwrap_or(false);
    if phase != "Scheduled" || (known && state.target_node_address.is_some()) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let target_pod = state.target_pod.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &ns);
    let pod = pods.get_opt(&target_pod).await.map_err(api_err(format!("reading pod {ns}/{target_pod}")))?;
    let running = pod.and_then(|p| p.status.and_then(|s| s.phase)).is_some_and(|p| p == "Running");
    if !running {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let model = model_of(vmi);
    let policy = super::migration::policy_of(h, &state).await?;
    let prepared = match claim_files(&h.client, &model).await {
        Ok(claims) => {
            let (rt, v, key) = (h.runtime.clone(), model.clone(), uid.clone());
            tokio::task::spawn_blocking(move || {
                let post_copy = rt.incoming_post_copy(policy.as_ref());
                rt.prepare_incoming(&v, &key, &claims, post_copy)
            })
            .await
            .unwrap_or_else(|e| {
                Err(virt_core::lifecycle::LaunchError::new(
                    virt_core::lifecycle::LaunchStage::Process,
                    format!("the preparing task failed: {e}"),
                ))
            })
        }
        Err(e) => Err(e),
    };
    let target: PathBuf = match prepared {
        Ok(t) => t,
        Err(e) => {
            let why = format!("preparing the target on node {}: {e}", h.node);
            return fail(h, &ns, &name, &vmi_name, state, why).await;
        }
    };
    if !known {
        let route = match peer.listener.expect(&uid, target.join(MIGRATE_SOCKET)) {
            Ok(r) => r,
            Err(e) => return fail(h, &ns, &name, &vmi_name, state, e.to_string()).await,
        };
        if let Ok(mut e) = peer.expected.lock() {
            e.insert(uid.clone(), (route, model));
        }
    }
    let mut s = state;
    s.target_node_address = Some(peer.address().to_string());
    write_migration_state(&h.client, &ns, &vmi_name, &s).await?;
    log::info!(
        "migration {ns}/{name}: VMI {vmi_name} expected on this node in {} (proxy {})",
        target.display(),
        peer.address()
    );
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// Migration `uid` ended (`succeeded` or not): its route goes; after a failure, what this node
/// prepared for the VMI goes too (unless its VM runs here).
pub(super) async fn ended(h: &Arc<Handler>, uid: &str, succeeded: bool) {
    let Some(peer) = h.peer.get() else { return };
    let Some((route, vmi)) = peer.expected.lock().ok().and_then(|mut e| e.remove(uid)) else { return };
    drop(route);
    if !succeeded {
        let rt = h.runtime.clone();
        let _ = tokio::task::spawn_blocking(move || rt.abandon_incoming(&vmi)).await;
    }
}

async fn fail(
    h: &Handler,
    ns: &str,
    name: &str,
    vmi_name: &str,
    mut state: MigrationState,
    why: String,
) -> Result<Action, ReconcileError> {
    log::warn!("migration {ns}/{name}: {why}");
    migration_failed(&mut state, &why, false);
    write_migration_state(&h.client, ns, vmi_name, &state).await?;
    set_phase(&h.client, ns, name, "Failed", json!({ "reason": why, "migrationState": state })).await?;
    Ok(Action::await_change())
}
