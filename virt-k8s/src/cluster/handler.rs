//! The node agent (KubeVirt's virt-handler): watches the VMIs placed on its node and gives each
//! launcher pod its machine. The agent prepares the VMI's volumes and writes `spec.json` into the
//! VMI's run directory with the node's own [`LauncherRuntime`] (containerDisk and kernel-boot
//! pulls, cloud-init seeds, emptyDisks: the same code the local node runs); the launcher pod
//! mounts that directory at the same path and runs the same `virt-launcher` on it. The agent then
//! reaches the launcher through its control socket (`Runtime::reattach`, `Runtime::last_exit`)
//! and writes the VMI's phase through `/status`.
//!
//! VMIs with interfaces get them in their launcher pod's network namespace before the spec is
//! written (`cluster::network`: masquerade on the pod network, as KubeVirt binds it).
//!
//! Live migrations of its VMIs ([`migration`]): the agent moves the VM into the target launcher
//! pod virt-controller made, with the node's migration code.
//!
//! Never started twice: the launcher holds `launcher.lock` in the run directory for its life, and
//! the agent only writes a spec where none is; a restarted agent reattaches to what runs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use serde_json::json;
use virt_core::lifecycle::{LaunchError, LaunchStage, Runtime};
use virt_core::machine::{DiskFormat, MachineExit, MachineStatus};
use virt_core::model::{VirtualMachineInstance, VmiPhase};

pub mod incoming;
pub mod migration;

use super::controller::ReconcileError;
use super::kinds::Cr;
use super::network::{PodNetworkError, PodNetworks};
use super::pod::{claims, NODE_NAME_LABEL};
use super::storage::{claim_host_file, disk_mount_dir, DISK_IMG};
use crate::node::LauncherRuntime;

/// What the agent serves.
pub struct Handler {
    /// The API client.
    pub client: Client,
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// Prepares volumes and specs; reaches launchers.
    pub runtime: Arc<LauncherRuntime>,
    /// The VMIs' interfaces in their pods (none: VMIs with interfaces are refused).
    pub networks: Option<Arc<PodNetworks>>,
    /// The local provisioner's directory on this node (`cluster::storage`): volumes of this node
    /// whose claim is gone are deleted from it (none: left alone).
    pub storage_dir: Option<PathBuf>,
    /// VMIs (uid) whose running launcher this process has reached (logged once each).
    attached: Mutex<HashSet<String>>,
    /// Migrations (uid) this agent carries out now.
    flights: Mutex<HashSet<String>>,
    /// VMIs (uid) whose VM moves now: their source's end is not theirs.
    migrating: Mutex<HashSet<String>>,
    /// This node's migration proxy, once it serves (migrations between nodes).
    pub peer: incoming::PeerSlot,
}

impl Handler {
    /// The agent of `node`.
    pub fn new(client: Client, node: String, runtime: Arc<LauncherRuntime>) -> Self {
        Self {
            client,
            node,
            runtime,
            networks: None,
            storage_dir: None,
            attached: Mutex::new(HashSet::new()),
            flights: Mutex::new(HashSet::new()),
            migrating: Mutex::new(HashSet::new()),
            peer: Arc::default(),
        }
    }

    /// Takes part in migrations between nodes with the proxy `slot` gets
    /// ([`incoming::serve`]).
    pub fn with_migration_peer(mut self, slot: incoming::PeerSlot) -> Self {
        self.peer = slot;
        self
    }

    /// Deletes the released volumes of the local provisioner on this node, below `dir`.
    pub fn with_storage_dir(mut self, dir: PathBuf) -> Self {
        self.storage_dir = Some(dir);
        self
    }

    /// Gives VMIs with interfaces their pod network.
    pub fn with_networks(mut self, networks: Arc<PodNetworks>) -> Self {
        self.networks = Some(networks);
        self
    }
}

/// What the agent concluded about one VMI's launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// The launcher pod has not named its network namespace yet: no spec until it has.
    WaitingForPod,
    /// No spec yet: the agent wrote it (the pod's launcher starts on it).
    SpecWritten,
    /// The spec is there; the launcher has not started the machine yet.
    Starting,
    /// The machine runs (paused or not).
    Running {
        /// Paused.
        paused: bool,
    },
    /// The machine ended.
    Ended(MachineExit),
}

/// The VMI phase and reason an observation stands for (`None`: leave the phase as it is).
pub fn phase_of(observed: &Observed) -> Option<(VmiPhase, Option<String>)> {
    match observed {
        Observed::WaitingForPod | Observed::SpecWritten | Observed::Starting => None,
        Observed::Running { .. } => Some((VmiPhase::Running, None)),
        Observed::Ended(MachineExit::Failed(why)) => Some((VmiPhase::Failed, Some(why.clone()))),
        Observed::Ended(_) => Some((VmiPhase::Succeeded, None)),
    }
}

/// The project's VMI with the API server's identity (uid, name, namespace) filled in.
pub(crate) fn model_of(vmi: &Cr<VirtualMachineInstance>) -> VirtualMachineInstance {
    let mut v = vmi.obj.clone();
    v.metadata.uid = vmi.meta.uid.clone();
    v.metadata.name = vmi.meta.name.clone();
    v.metadata.namespace = vmi.meta.namespace.clone();
    v
}

/// The files of `vmi`'s claim volumes as its launcher pod sees them (`disk.img` where the pod
/// mounts the claim), after finding each on this node through its PersistentVolume; the format
/// is the host file's. Fails naming the volume when a claim's disk cannot be found.
pub async fn claim_files(
    client: &Client,
    vmi: &VirtualMachineInstance,
) -> Result<HashMap<String, (PathBuf, DiskFormat)>, LaunchError> {
    let ns = vmi.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut files = HashMap::new();
    for (volume, claim) in claims(vmi) {
        let host = claim_host_file(client, &ns, &claim)
            .await
            .map_err(|e| LaunchError::new(LaunchStage::Volumes, format!("volume {volume}: {e}")))?;
        let checked = host.clone();
        let format = tokio::task::spawn_blocking(move || {
            if !checked.is_file() {
                return Err(format!(
                    "no {DISK_IMG} in the claim's volume ({} is missing)",
                    checked.display()
                ));
            }
            match virt_storage::format::detect::detect_path(&checked) {
                Ok(virt_storage::format::detect::ImageFormat::Qcow2) => Ok(DiskFormat::Qcow2),
                Ok(_) => Ok(DiskFormat::Raw),
                Err(e) => Err(format!("{}: {e}", checked.display())),
            }
        })
        .await
        .unwrap_or_else(|e| Err(format!("the checking task failed: {e}")))
        .map_err(|why| {
            LaunchError::new(
                LaunchStage::Volumes,
                format!("volume {volume} (PersistentVolumeClaim {ns}/{claim}): {why}"),
            )
        })?;
        log::info!(
            "VMI {ns}/{}: volume {volume} is {} on the node",
            vmi.metadata.name.as_deref().unwrap_or("?"),
            host.display()
        );
        files.insert(volume.clone(), (PathBuf::from(disk_mount_dir(&volume)).join(DISK_IMG), format));
    }
    Ok(files)
}

/// Looks at `vmi`'s launcher, writing its spec first if there is none (blocking: pulls images),
/// after its interfaces are made in its pod (`networks`). `claims`: its claim volumes' files
/// ([`claim_files`]).
pub fn observe(
    runtime: &LauncherRuntime,
    networks: Option<&PodNetworks>,
    vmi: &VirtualMachineInstance,
    claims: &HashMap<String, (PathBuf, DiskFormat)>,
) -> Result<Observed, LaunchError> {
    let has_interfaces = !vmi.spec.domain.devices.interfaces.is_empty();
    if let Some(m) = runtime.reattach(vmi) {
        // An agent that restarted serves the running guest's DHCP again.
        if let (Some(n), true) = (networks, has_interfaces) {
            if let Err(e) = n.setup(vmi, &runtime.run_dir(vmi)) {
                log::warn!("VMI {}: its pod network: {e}", uid_or_name(vmi));
            }
        }
        return Ok(match m.status() {
            MachineStatus::Running => Observed::Running { paused: false },
            MachineStatus::Paused => Observed::Running { paused: true },
            MachineStatus::Starting => Observed::Starting,
            MachineStatus::Stopped(exit) => Observed::Ended(exit),
        });
    }
    if let Some(exit) = runtime.last_exit(vmi) {
        return Ok(Observed::Ended(exit));
    }
    if runtime.run_dir(vmi).join("spec.json").is_file() {
        return Ok(Observed::Starting);
    }
    let net = match (networks, has_interfaces) {
        (Some(n), true) => match n.setup(vmi, &runtime.run_dir(vmi)) {
            Ok(net) => net,
            Err(PodNetworkError::NotReady { .. }) => return Ok(Observed::WaitingForPod),
            Err(e) => return Err(LaunchError::new(LaunchStage::Network, e.to_string())),
        },
        (None, true) => {
            return Err(LaunchError::new(
                LaunchStage::Network,
                "this node agent runs without pod networks: the VMI's interfaces cannot be made",
            ))
        }
        _ => None,
    };
    runtime.write_spec(vmi, net.as_ref(), claims)?;
    Ok(Observed::SpecWritten)
}

fn uid_or_name(vmi: &VirtualMachineInstance) -> String {
    format!(
        "{}/{}",
        vmi.metadata.namespace.as_deref().unwrap_or_default(),
        vmi.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn reconcile(vmi: Arc<Cr<VirtualMachineInstance>>, h: Arc<Handler>) -> Result<Action, ReconcileError> {
    let status = vmi.obj.status.clone().unwrap_or_default();
    let phase = status.phase;
    if vmi.meta.deletion_timestamp.is_some() || phase.is_some_and(|p| p.is_final()) {
        // Its DHCP servers and the namespace's name go (the pod takes the rest with it).
        if let Some(n) = h.networks.clone().filter(|_| !vmi.obj.spec.domain.devices.interfaces.is_empty()) {
            let model = model_of(&vmi);
            let _ = tokio::task::spawn_blocking(move || n.teardown(&model)).await;
        }
        return Ok(Action::await_change());
    }
    // The launcher pod runs once the VMI is Scheduled (see `pod::phase_from_pod`).
    if !matches!(phase, Some(VmiPhase::Scheduled) | Some(VmiPhase::Running)) {
        return Ok(Action::await_change());
    }
    // Its VM moved to another node: that node's agent serves it once virt-controller follows
    // the target pod (the launcher here has ended, and must not end the VMI).
    let moved_away = status.migration_state.as_ref().is_some_and(|m| {
        m.completed == Some(true)
            && m.failed != Some(true)
            && m.target_node.as_deref().is_some_and(|n| n != h.node)
    });
    if moved_away {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let uid = vmi.meta.uid.clone().unwrap_or_default();
    if h.migrating.lock().map(|m| m.contains(&uid)).unwrap_or(false) {
        // Its migration's flight reports; the source's end is not the VMI's.
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = vmi.meta.namespace.clone().unwrap_or_default();
    let name = vmi.meta.name.clone().unwrap_or_default();
    let model = model_of(&vmi);
    let rt = h.runtime.clone();
    let nets = h.networks.clone();
    // A claim's disk is looked up only while the spec is still to be written.
    let spec_written = h.runtime.run_dir(&model).join("spec.json").is_file();
    let claim_files = if spec_written || claims(&model).is_empty() {
        Ok(HashMap::new())
    } else {
        claim_files(&h.client, &model).await
    };
    let observed = match claim_files {
        Ok(files) => tokio::task::spawn_blocking(move || observe(&rt, nets.as_deref(), &model, &files))
            .await
            .unwrap_or_else(|e| {
                Err(LaunchError::new(LaunchStage::Process, format!("the observing task failed: {e}")))
            }),
        Err(e) => Err(e),
    };
    let (new_phase, reason, ready) = match &observed {
        Ok(o) => match phase_of(o) {
            Some((p, r)) => (p, r, matches!(o, Observed::Running { paused: false })),
            None => return Ok(Action::requeue(Duration::from_secs(1))),
        },
        // The volumes cannot be prepared (an image that cannot be pulled ...): the VMI fails.
        Err(why) => (VmiPhase::Failed, Some(why.to_string()), false),
    };
    if matches!(observed, Ok(Observed::Running { .. })) {
        let uid = vmi.meta.uid.clone().unwrap_or_default();
        if h.attached.lock().map(|mut a| a.insert(uid)).unwrap_or(false) {
            log::info!("VMI {ns}/{name}: reattached to its running launcher");
        }
    }
    let ready_now =
        status.conditions.iter().any(|c| c.type_ == "Ready" && format!("{:?}", c.status) == "True");
    if phase != Some(new_phase) || ready != ready_now {
        let mut conditions = vec![json!({ "type": "Ready", "status": if ready { "True" } else { "False" } })];
        // KubeVirt's condition for a VMI paused through the `pause` subresource.
        if matches!(observed, Ok(Observed::Running { paused: true })) {
            conditions.push(json!({ "type": "Paused", "status": "True", "reason": "PausedByUser" }));
        }
        let mut s = json!({ "phase": new_phase, "conditions": conditions });
        // KubeVirt's status.interfaces as the local node reports them.
        if let Some(net) = h.networks.as_ref().and_then(|n| n.get(&model_of(&vmi))) {
            s["interfaces"] = json!(net.status());
        }
        if let Some(r) = &reason {
            s["reason"] = json!(if new_phase == VmiPhase::Failed { "Failed" } else { "Succeeded" });
            s["conditions"][0]["message"] = json!(r);
        }
        let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(h.client.clone(), &ns);
        vmis.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": s })))
            .await
            .map_err(|source| ReconcileError::Api {
                what: format!("writing the status of VMI {ns}/{name}"),
                source,
            })?;
        log::info!(
            "VMI {ns}/{name}: {new_phase:?} on {}{}",
            h.node,
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
    Ok(Action::requeue(if new_phase == VmiPhase::Running {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    }))
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(h: Handler, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::all(h.client.clone());
    let selector = format!("{NODE_NAME_LABEL}={}", h.node);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if let Some(dir) = h.storage_dir.clone() {
        let (client, node, mut rx) = (h.client.clone(), h.node.clone(), stop_rx.clone());
        tokio::spawn(async move {
            while !*rx.borrow() {
                if let Err(e) = super::storage::reclaim_released(&client, &node, &dir).await {
                    log::warn!("reclaiming released volumes: {e}");
                }
                let _ = tokio::time::timeout(Duration::from_secs(5), rx.changed()).await;
            }
        });
    }
    let h = Arc::new(h);
    let vmims: Api<Cr<virt_core::model::VirtualMachineInstanceMigration>> = Api::all(h.client.clone());
    let mut stop2 = stop_rx.clone();
    let migrations = Controller::new(vmims, watcher::Config::default())
        .graceful_shutdown_on(async move {
            let _ = stop2.wait_for(|s| *s).await;
        })
        .run(
            migration::reconcile,
            |m, err, _| {
                log::warn!("migration {}: {err}", m.meta.name.as_deref().unwrap_or("?"));
                Action::requeue(Duration::from_secs(2))
            },
            h.clone(),
        )
        .for_each(|_| async {});
    let vmi_ctl = Controller::new(vmis, watcher::Config::default().labels(&selector))
        .graceful_shutdown_on(async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .run(
            reconcile,
            |vmi, err, _| {
                log::warn!("VMI {}: {err}", vmi.meta.name.as_deref().unwrap_or("?"));
                Action::requeue(Duration::from_secs(2))
            },
            h,
        )
        .for_each(|_| async {});
    futures_util::future::join(vmi_ctl, migrations).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_map_to_phases() {
        assert_eq!(phase_of(&Observed::SpecWritten), None);
        assert_eq!(phase_of(&Observed::Starting), None);
        assert_eq!(phase_of(&Observed::Running { paused: true }), Some((VmiPhase::Running, None)));
        assert_eq!(phase_of(&Observed::Ended(MachineExit::PowerOff)), Some((VmiPhase::Succeeded, None)));
        assert_eq!(
            phase_of(&Observed::Ended(MachineExit::Failed("x".into()))),
            Some((VmiPhase::Failed, Some("x".into())))
        );
    }
}
