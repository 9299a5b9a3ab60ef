//! The node agent's part of a live migration (KubeVirt's virt-handler on the source): once
//! virt-controller has the migration `Scheduled` (its target launcher pod runs), the agent of the
//! VMI's node moves the VM with the node's own code (`LauncherRuntime::migrate_vmi` with
//! [`TargetLauncher::External`]: the spec written into the target pod's run directory, whose entry
//! script starts `virt-launcher --incoming`; the target's `migrate.sock` connected; the stream
//! handed to the source launcher's `migrateOut`), and writes the migration's phases
//! (`TargetReady`, `Running`, `Succeeded`/`Failed`) and the VMI's `status.migrationState` with
//! the lifecycle's functions. A migration deleted while under way is aborted (the source runs on).
//!
//! A target pod on another node: that node's agent readies it and publishes its migration
//! proxy's address ([`super::incoming`]); this agent connects there
//! (`LauncherRuntime::migrate_vmi_away`) and the VM leaves this node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_core::lifecycle::{
    migration_failed, migration_final, migration_step, migration_succeeded, phase_of_migration,
    MigrationError, MigrationStep, MigrationTicket, Runtime,
};
use virt_core::model::{
    MigrationPolicy, MigrationState, VirtualMachineInstance, VirtualMachineInstanceMigration,
};

use super::{model_of, Handler};
use crate::cluster::controller::migration::{set_phase, write_migration_state};
use crate::cluster::controller::ReconcileError;
use crate::cluster::kinds::Cr;
use crate::node::TargetLauncher;

pub(super) type Vmim = Cr<VirtualMachineInstanceMigration>;

/// How long the source waits for the target node's agent to publish its proxy's address once
/// the target pod runs.
const TARGET_ADDRESS_TIMEOUT: Duration = Duration::from_secs(120);

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// One reconcile of a migration on this node.
pub(super) async fn reconcile(m: Arc<Vmim>, h: Arc<Handler>) -> Result<Action, ReconcileError> {
    let uid = m.meta.uid.clone().unwrap_or_default();
    if migration_final(&m.obj) {
        super::incoming::ended(&h, &uid, phase_of_migration(&m.obj) == "Succeeded").await;
        return Ok(Action::await_change());
    }
    if h.flights.lock().map(|f| f.contains(&uid)).unwrap_or(false) {
        // Its flight watches for a cancel itself.
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let phase = phase_of_migration(&m.obj).to_string();
    let cut_short = matches!(phase.as_str(), "TargetReady" | "Running");
    if !cut_short && (phase != "Scheduled" || m.meta.deletion_timestamp.is_some()) {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let vmi_name = m.obj.spec.vmi_name.clone().unwrap_or_default();
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(h.client.clone(), &ns);
    let Some(vmi) = vmis.get_opt(&vmi_name).await.map_err(api_err(format!("reading VMI {ns}/{vmi_name}")))?
    else {
        set_phase(
            &h.client,
            &ns,
            &name,
            "Failed",
            json!({ "reason": format!("the VMI {vmi_name} is gone") }),
        )
        .await?;
        return Ok(Action::await_change());
    };
    let status = vmi.obj.status.clone().unwrap_or_default();
    let Some(state) = status.migration_state.clone().filter(|s| s.migration_uid.as_deref() == Some(&uid))
    else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let target_node = state.target_node.clone().unwrap_or_default();
    // The source's agent carries it out; the target's, on another node, readies it.
    if status.node_name.as_deref() != Some(h.node.as_str()) {
        if target_node == h.node {
            return super::incoming::receive(&h, &m, &vmi, state, &phase).await;
        }
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    if cut_short {
        return interrupted(&h, &m, &vmi, state).await;
    }
    let target_pod = state.target_pod.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), &ns);
    let pod_status = pods
        .get_opt(&target_pod)
        .await
        .map_err(api_err(format!("reading pod {ns}/{target_pod}")))?
        .and_then(|p| p.status)
        .unwrap_or_default();
    if pod_status.phase.as_deref() != Some("Running") {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Between nodes: the target's agent says where its proxy listens once the target is ready.
    let away = if target_node == h.node {
        None
    } else {
        let why = match (h.peer.get(), state.target_node_address.as_deref().map(str::parse)) {
            (None, _) => Some(format!(
                "the target pod runs on node {target_node}, and this virt-handler serves no \
                 migrations between nodes (no --migration-listen, or its Secret is missing)"
            )),
            (Some(_), Some(Ok(addr))) => return start(h, m, &vmi, state, Some(addr)).await,
            (Some(_), Some(Err(e))) => Some(format!(
                "the target node {target_node}'s proxy address {:?}: {e}",
                state.target_node_address.as_deref().unwrap_or_default()
            )),
            (Some(_), None) => {
                let waited = pod_status.start_time.map(|t| {
                    let secs = k8s_openapi::jiff::Timestamp::now().as_second() - t.0.as_second();
                    Duration::from_secs(u64::try_from(secs).unwrap_or_default())
                });
                if waited.unwrap_or_default() < TARGET_ADDRESS_TIMEOUT {
                    return Ok(Action::requeue(Duration::from_secs(1)));
                }
                Some(format!(
                    "the target node {target_node}'s virt-handler did not ready the target within \
                     {TARGET_ADDRESS_TIMEOUT:?}"
                ))
            }
        };
        why
    };
    if let Some(why) = away {
        let mut s = state;
        migration_failed(&mut s, &why, false);
        write_migration_state(&h.client, &ns, &vmi_name, &s).await?;
        set_phase(&h.client, &ns, &name, "Failed", json!({ "reason": why, "migrationState": s })).await?;
        return Ok(Action::await_change());
    }
    start(h, m, &vmi, state, None).await
}

/// Starts the flight of migration `m` of `vmi` (to the proxy at `away` on another node, else on
/// this node).
async fn start(
    h: Arc<Handler>,
    m: Arc<Vmim>,
    vmi: &Cr<VirtualMachineInstance>,
    state: MigrationState,
    away: Option<SocketAddr>,
) -> Result<Action, ReconcileError> {
    let uid = m.meta.uid.clone().unwrap_or_default();
    let policy = policy_of(&h, &state).await?;
    if let Ok(mut f) = h.flights.lock() {
        f.insert(uid.clone());
    }
    if let Ok(mut v) = h.migrating.lock() {
        v.insert(vmi.meta.uid.clone().unwrap_or_default());
    }
    let model = model_of(vmi);
    tokio::spawn(fly(h.clone(), m.clone(), model, state, policy, away));
    Ok(Action::requeue(Duration::from_secs(2)))
}

/// The MigrationPolicy virt-controller matched when the migration of `state` started, if any.
pub(super) async fn policy_of(
    h: &Handler,
    state: &MigrationState,
) -> Result<Option<MigrationPolicy>, ReconcileError> {
    let Some(p) = state.migration_policy_name.as_deref() else { return Ok(None) };
    let policies: Api<Cr<MigrationPolicy>> = Api::all(h.client.clone());
    let found = policies.get_opt(p).await.map_err(api_err(format!("reading MigrationPolicy {p}")))?;
    Ok(found.map(|c| {
        let mut m = c.obj;
        m.metadata.name = c.meta.name;
        m
    }))
}

/// A migration this agent was carrying out when it restarted (its flight is gone): the VM is
/// wherever the node's records say (`Runtime::reattach` completes a move that had committed).
/// Moved: `Succeeded`, without the source's measurements; else `Failed`, the source runs on.
async fn interrupted(
    h: &Arc<Handler>,
    m: &Vmim,
    vmi: &Cr<VirtualMachineInstance>,
    mut state: MigrationState,
) -> Result<Action, ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let vmi_name = vmi.meta.name.clone().unwrap_or_default();
    // The watch's copy may predate the end a flight of this process just wrote.
    let api: Api<Vmim> = Api::namespaced(h.client.clone(), &ns);
    let now = api.get_opt(&name).await.map_err(api_err(format!("reading migration {ns}/{name}")))?;
    if now.is_none_or(|n| migration_final(&n.obj)) || state.completed == Some(true) {
        return Ok(Action::await_change());
    }
    let model = model_of(vmi);
    let rt = h.runtime.clone();
    let target = crate::node::runtime::target_dir_name(
        vmi.meta.uid.as_deref().unwrap_or_default(),
        m.meta.uid.as_deref().unwrap_or_default(),
    );
    let moved = tokio::task::spawn_blocking(move || {
        let running = rt.reattach(&model).is_some();
        running && rt.run_dir(&model).file_name().and_then(|n| n.to_str()) == Some(target.as_str())
    })
    .await
    .unwrap_or(false);
    let (phase, reason) = if moved {
        let source = state.source_pod.clone().unwrap_or_default();
        let target = state.target_pod.clone().unwrap_or_default();
        migration_succeeded(&mut state, &Default::default(), source, target, false);
        ("Succeeded", None)
    } else {
        let why = "virt-handler restarted during the migration; the source runs on".to_string();
        migration_failed(&mut state, &why, false);
        ("Failed", Some(why))
    };
    log::warn!("migration {ns}/{name}: cut short by a restart of this agent: {phase}");
    finish(h, &ns, &name, &vmi_name, phase, reason, &state).await?;
    Ok(Action::await_change())
}

/// Carries migration `m` of `vmi` out; records its steps and end.
async fn fly(
    h: Arc<Handler>,
    m: Arc<Vmim>,
    vmi: VirtualMachineInstance,
    state: MigrationState,
    policy: Option<MigrationPolicy>,
    away: Option<SocketAddr>,
) {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let uid = m.meta.uid.clone().unwrap_or_default();
    let vmi_name = vmi.metadata.name.clone().unwrap_or_default();
    let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
    let ticket = MigrationTicket {
        uid: uid.clone(),
        name: name.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
        policy,
    };
    log::info!(
        "migration {ns}/{name}: moving VMI {vmi_name} into pod {}",
        state.target_pod.as_deref().unwrap_or("?")
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (rt, t, v, hh) = (h.runtime.clone(), ticket.clone(), vmi.clone(), h.clone());
    let target_pod = state.target_pod.clone().unwrap_or_default();
    let mut work = tokio::task::spawn_blocking(move || {
        let step = |s: MigrationStep| {
            let _ = tx.send(s);
        };
        match (away, hh.peer.get()) {
            (Some(addr), Some(peer)) => {
                let connect = || peer.connect(addr, &t.uid);
                rt.migrate_vmi_away(&v, &t, &target_pod, &connect, &step)
                    .map(|d| (d.report, d.source, target_pod.clone()))
            }
            (Some(addr), None) => Err(MigrationError::Failed(format!(
                "no migration proxy on this node to reach the target at {addr}"
            ))),
            (None, _) => rt
                .migrate_vmi(&v, &t, TargetLauncher::External, &step)
                .map(|d| (d.report, d.source, d.target)),
        }
    });
    let mut state = state;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r.unwrap_or_else(|e| Err(MigrationError::Failed(format!("the migrating task failed: {e}")))),
            Some(step) = rx.recv() => {
                let phase = migration_step(&mut state, &step);
                if let MigrationStep::Running { not_honoured, .. } = &step {
                    for n in not_honoured {
                        log::warn!("migration {ns}/{name}: {n}");
                    }
                }
                if let Err(e) = record(&h, &ns, &name, &vmi_name, phase, &state).await {
                    log::warn!("migration {ns}/{name}: {e}");
                }
            }
            _ = tick.tick() => {
                if !ticket.cancelled() && deleted(&h, &ns, &name).await {
                    log::info!("migration {ns}/{name} deleted or failed: aborting it");
                    ticket.cancel.store(true, Ordering::SeqCst);
                    state.abort_requested = Some(true);
                    state.abort_status = Some("Aborting".into());
                }
                if ticket.cancelled() {
                    // Again until it ended: a cancel that came before the source began is repeated.
                    let (rt, v) = (h.runtime.clone(), vmi.clone());
                    let _ = tokio::task::spawn_blocking(move || rt.cancel_migration(&v)).await;
                }
            }
        }
    };
    // Steps sent just before the end.
    while let Ok(step) = rx.try_recv() {
        migration_step(&mut state, &step);
    }
    let aborting = ticket.cancelled();
    let (phase, reason) = match &outcome {
        Ok((report, done_source, done_target)) => {
            let source = state.source_pod.clone().unwrap_or_else(|| done_source.clone());
            let target = state.target_pod.clone().unwrap_or_else(|| done_target.clone());
            migration_succeeded(&mut state, report, source, target, aborting);
            log::info!(
                "migration {ns}/{name}: VMI {vmi_name} moved in {:.1} ms (downtime {:.1} ms){}",
                report.total_us as f64 / 1000.0,
                report.downtime_us as f64 / 1000.0,
                away.map(|a| format!(" to node {} through {a}", state.target_node.as_deref().unwrap_or("?")))
                    .unwrap_or_default()
            );
            ("Succeeded", None)
        }
        Err(e) => {
            let cancelled = aborting || matches!(e, MigrationError::Cancelled);
            migration_failed(&mut state, &e.to_string(), cancelled);
            log::warn!("migration {ns}/{name}: {e}");
            ("Failed", Some(e.to_string()))
        }
    };
    // The VMI's state first: the controller follows the target pod once it says the VM moved.
    for _ in 0..5 {
        match finish(&h, &ns, &name, &vmi_name, phase, reason.clone(), &state).await {
            Ok(()) => break,
            Err(e) => {
                log::warn!("migration {ns}/{name}: recording its end: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    if let Ok(mut f) = h.flights.lock() {
        f.remove(&uid);
    }
    if let Ok(mut v) = h.migrating.lock() {
        v.remove(&vmi_uid);
    }
}

/// Whether migration `ns/name` is to be abandoned: deleted (`virtctl migrate-cancel`), or failed
/// by virt-controller (its target pod ended before the target listened).
async fn deleted(h: &Handler, ns: &str, name: &str) -> bool {
    let api: Api<Vmim> = Api::namespaced(h.client.clone(), ns);
    match api.get_opt(name).await {
        Ok(Some(m)) => m.meta.deletion_timestamp.is_some() || phase_of_migration(&m.obj) == "Failed",
        Ok(None) => true,
        Err(_) => false,
    }
}

async fn record(
    h: &Handler,
    ns: &str,
    name: &str,
    vmi_name: &str,
    phase: &str,
    state: &MigrationState,
) -> Result<(), ReconcileError> {
    write_migration_state(&h.client, ns, vmi_name, state).await?;
    set_phase(&h.client, ns, name, phase, json!({ "migrationState": state })).await
}

async fn finish(
    h: &Handler,
    ns: &str,
    name: &str,
    vmi_name: &str,
    phase: &str,
    reason: Option<String>,
    state: &MigrationState,
) -> Result<(), ReconcileError> {
    write_migration_state(&h.client, ns, vmi_name, state).await?;
    let mut extra = json!({ "migrationState": state });
    if let Some(r) = reason {
        extra["reason"] = json!(r);
    }
    set_phase(&h.client, ns, name, phase, extra).await
}
