//! VirtualMachineInstanceMigration -> target launcher pod (KubeVirt's migration controller): a new
//! migration is admitted with the node's checks (`lifecycle::MigrationAdmission`: the VMI exists,
//! runs, can move, has no other migration under way), gets its target pod
//! (`pod::migration_target_pod`) and goes `Pending` -> `Scheduling` -> `Scheduled` once that pod
//! runs; the node agent of the VMI's node carries it out from there (`TargetReady`, `Running`,
//! `Succeeded`/`Failed`, `cluster::handler`). A migration that failed, or was deleted before the
//! VM moved, takes its target pod with it; the source runs on. The finalizer keeps a deleted
//! migration until its target pod is gone and the agent finished with it.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Api, Client};
use serde_json::{json, Value};
use virt_core::lifecycle::policies::{select_policy, NAMESPACE_NAME_LABEL};
use virt_core::lifecycle::{
    migration_failed, migration_final, migration_started, phase_of_migration, set_migration_phase,
    MigrationAdmission, NotMigratable,
};
use virt_core::model::{
    MigrationPolicy, MigrationState, VirtualMachineInstance, VirtualMachineInstanceMigration, VmiPhase,
};

use super::{key, Context, ReconcileError};
use crate::cluster::kinds::Cr;
use crate::cluster::pod::{active_pod, migration_target_pod, CREATED_BY, MIGRATION_JOB_LABEL};

/// Kept on a migration that has not finished (KubeVirt's).
pub const FINALIZER: &str = "kubevirt.io/migrationJobFinalize";

type Vmim = Cr<VirtualMachineInstanceMigration>;

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// Whether the cluster can move `vmi` (KubeVirt's `LiveMigratable`): an interface is a tap its
/// launcher holds in the pod (`cluster::network`), which a second launcher cannot open.
pub fn live_migratable(vmi: &VirtualMachineInstance) -> Result<(), NotMigratable> {
    match vmi.spec.domain.devices.interfaces.first() {
        Some(i) => Err(crate::node::runtime::tap_not_migratable(&i.name)),
        None => Ok(()),
    }
}

/// Sets migration `ns/name`'s phase (with its transition time) and merges `extra` into its
/// status, through `/status`. A migration already finished keeps its phase.
pub async fn set_phase(
    client: &Client,
    ns: &str,
    name: &str,
    phase: &str,
    extra: Value,
) -> Result<(), ReconcileError> {
    let api: Api<Vmim> = Api::namespaced(client.clone(), ns);
    let Some(mut m) = api.get_opt(name).await.map_err(api_err(format!("reading migration {ns}/{name}")))?
    else {
        return Ok(());
    };
    if !migration_final(&m.obj) {
        set_migration_phase(&mut m.obj, phase);
    }
    let mut status = m.obj.status.clone().unwrap_or_else(|| json!({}));
    if let (Some(s), Some(e)) = (status.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(api_err(format!("writing the status of migration {ns}/{name}")))?;
    log::info!("migration {ns}/{name}: {}", phase_of_migration(&m.obj));
    Ok(())
}

/// Replaces VMI `ns/name`'s `status.migrationState` with `state` (fields it no longer has are
/// removed).
pub async fn write_migration_state(
    client: &Client,
    ns: &str,
    name: &str,
    state: &MigrationState,
) -> Result<(), ReconcileError> {
    let api: Api<Cr<VirtualMachineInstance>> = Api::namespaced(client.clone(), ns);
    let old = api
        .get_opt(name)
        .await
        .map_err(api_err(format!("reading VMI {ns}/{name}")))?
        .and_then(|v| v.obj.status.and_then(|s| s.migration_state))
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let mut new = serde_json::to_value(state).map_err(|source| ReconcileError::Convert {
        what: format!("migrationState of VMI {ns}/{name}"),
        source,
    })?;
    if let (Some(o), Some(n)) = (old.as_object(), new.as_object_mut()) {
        for k in o.keys() {
            n.entry(k.clone()).or_insert(Value::Null);
        }
    }
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": { "migrationState": new } })),
    )
    .await
    .map_err(api_err(format!("writing the migrationState of VMI {ns}/{name}")))?;
    Ok(())
}

/// Fails migration `m` (`why`): its VMI's `migrationState`, if it is this migration's and has not
/// ended, says so too (the source runs on).
async fn fail(ctx: &Context, m: &Vmim, why: String) -> Result<Action, ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    log::warn!("migration {ns}/{name} failed: {why}");
    end_vmi_state(ctx, m, &why, false).await?;
    set_phase(&ctx.client, &ns, &name, "Failed", json!({ "reason": why })).await?;
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// Records in `m`'s VMI that the migration ended without the VM moving, if its
/// `migrationState` is `m`'s and still open.
async fn end_vmi_state(ctx: &Context, m: &Vmim, why: &str, cancelled: bool) -> Result<(), ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let vmi_name = m.obj.spec.vmi_name.clone().unwrap_or_default();
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
    let vmi = vmis.get_opt(&vmi_name).await.map_err(api_err(format!("reading VMI {ns}/{vmi_name}")))?;
    let state = vmi
        .and_then(|v| v.obj.status)
        .and_then(|s| s.migration_state)
        .filter(|s| s.migration_uid.is_some() && s.migration_uid == m.meta.uid && s.completed != Some(true));
    if let Some(mut s) = state {
        migration_failed(&mut s, why, cancelled);
        write_migration_state(&ctx.client, &ns, &vmi_name, &s).await?;
    }
    Ok(())
}

async fn target_pods(ctx: &Context, ns: &str, uid: &str) -> Result<Vec<Pod>, ReconcileError> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(&format!("{MIGRATION_JOB_LABEL}={uid}")))
        .await
        .map_err(api_err(format!("listing the target pods of migration {uid}")))?
        .items)
}

async fn delete_targets(ctx: &Context, ns: &str, uid: &str) -> Result<(), ReconcileError> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for p in target_pods(ctx, ns, uid).await? {
        let n = p.metadata.name.unwrap_or_default();
        if p.metadata.deletion_timestamp.is_none() {
            log::info!("migration {uid}: deleting its target pod {ns}/{n}");
            // A target that did not get the VM holds nothing: no grace (its entry script may
            // not have set its TERM trap yet, and would sit out the VMI's whole grace period).
            let now = DeleteParams { grace_period_seconds: Some(1), ..DeleteParams::default() };
            match pods.delete(&n, &now).await {
                Ok(_) => {}
                Err(kube::Error::Api(r)) if r.code == 404 => {}
                Err(source) => {
                    return Err(ReconcileError::Api { what: format!("deleting pod {ns}/{n}"), source })
                }
            }
        }
    }
    Ok(())
}

async fn set_finalizer(ctx: &Context, m: &Vmim, on: bool) -> Result<(), ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let mut finalizers = m.meta.finalizers.clone().unwrap_or_default();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    if has == on {
        return Ok(());
    }
    if on {
        finalizers.push(FINALIZER.into());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    let api: Api<Vmim> = Api::namespaced(ctx.client.clone(), &ns);
    let rv = m.meta.resource_version.clone();
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": rv } });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map_err(api_err(format!("setting the finalizer of migration {ns}/{name}")))?;
    Ok(())
}

/// One reconcile of a VirtualMachineInstanceMigration.
pub async fn reconcile(m: Arc<Vmim>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let k = key("VirtualMachineInstanceMigration", &m.meta);
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let uid = m.meta.uid.clone().unwrap_or_default();
    let phase = phase_of_migration(&m.obj).to_string();
    let done = migration_final(&m.obj);
    if m.meta.deletion_timestamp.is_some() {
        // Under way on the node: its agent aborts it (it sees the deletion) and records the end.
        if !done && matches!(phase.as_str(), "TargetReady" | "Running") {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        if phase != "Succeeded" {
            delete_targets(&ctx, &ns, &uid).await?;
            if !done {
                end_vmi_state(&ctx, &m, "cancelled: the migration was deleted before the VM moved", true)
                    .await?;
            }
        }
        set_finalizer(&ctx, &m, false).await?;
        ctx.succeeded(&k);
        return Ok(Action::await_change());
    }
    if done {
        if phase == "Failed" {
            delete_targets(&ctx, &ns, &uid).await?;
        }
        set_finalizer(&ctx, &m, false).await?;
        ctx.succeeded(&k);
        return Ok(Action::await_change());
    }
    let vmi_name = m.obj.spec.vmi_name.clone().unwrap_or_default();
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
    let vmi = vmis.get_opt(&vmi_name).await.map_err(api_err(format!("reading VMI {ns}/{vmi_name}")))?;
    let action = match phase.as_str() {
        "Pending" => begin(&ctx, &m, vmi.as_ref()).await?,
        "Scheduling" | "Scheduled" => {
            let targets = target_pods(&ctx, &ns, &uid).await?;
            let Some(pod) = targets.into_iter().next() else {
                return fail(&ctx, &m, "the target pod is gone".into()).await;
            };
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let pod_phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
            if matches!(pod_phase.as_str(), "Failed" | "Succeeded") {
                let why = pod.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_default();
                return fail(&ctx, &m, format!("the target pod {pod_name} ended ({pod_phase}) {why}")).await;
            }
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let ("Scheduling", "Running", Some(node)) = (phase.as_str(), pod_phase.as_str(), node) {
                if let Some(mut state) = vmi.and_then(|v| v.obj.status).and_then(|s| s.migration_state) {
                    state.target_node = Some(node.clone());
                    state.target_pod = Some(pod_name.clone());
                    write_migration_state(&ctx.client, &ns, &vmi_name, &state).await?;
                }
                let extra = json!({ "migrationState": { "targetNode": node, "targetPod": pod_name } });
                set_phase(&ctx.client, &ns, &name, "Scheduled", extra).await?;
            }
            Action::requeue(Duration::from_secs(1))
        }
        // The node agent's phases: looked at again until they end.
        _ => Action::requeue(Duration::from_secs(2)),
    };
    ctx.succeeded(&k);
    Ok(action)
}

/// The MigrationPolicy `vmi` migrates with now (`lifecycle::policies::select_policy`, as the
/// node: matched once, when the migration starts), by name.
async fn policy_for(
    ctx: &Context,
    vmi: &Cr<VirtualMachineInstance>,
) -> Result<Option<String>, ReconcileError> {
    let ns = vmi.meta.namespace.clone().unwrap_or_default();
    let policies: Api<Cr<MigrationPolicy>> = Api::all(ctx.client.clone());
    let all =
        policies.list(&ListParams::default()).await.map_err(api_err("listing MigrationPolicies".into()))?;
    if all.items.is_empty() {
        return Ok(None);
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let mut ns_labels = namespaces
        .get_opt(&ns)
        .await
        .map_err(api_err(format!("reading namespace {ns}")))?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    ns_labels.insert(NAMESPACE_NAME_LABEL.into(), ns);
    let models: Vec<MigrationPolicy> = all
        .items
        .into_iter()
        .map(|p| {
            let mut m = p.obj;
            m.metadata.name = p.meta.name;
            m
        })
        .collect();
    let vmi_labels = vmi.meta.labels.clone().unwrap_or_default();
    Ok(select_policy(&models, &vmi_labels, &ns_labels).and_then(|p| p.metadata.name.clone()))
}

/// A new migration: admitted or failed; admitted, it gets its finalizer, its target pod and the
/// VMI its `migrationState`, and goes to `Scheduling`.
async fn begin(
    ctx: &Context,
    m: &Vmim,
    vmi: Option<&Cr<VirtualMachineInstance>>,
) -> Result<Action, ReconcileError> {
    let ns = m.meta.namespace.clone().unwrap_or_default();
    let name = m.meta.name.clone().unwrap_or_default();
    let uid = m.meta.uid.clone().unwrap_or_default();
    let vmi_name = m.obj.spec.vmi_name.clone().unwrap_or_default();
    let api: Api<Vmim> = Api::namespaced(ctx.client.clone(), &ns);
    let all =
        api.list(&ListParams::default()).await.map_err(api_err(format!("listing migrations in {ns}")))?;
    let created = |o: &Vmim| o.meta.creation_timestamp.as_ref().map(|t| t.0);
    // Another one of the VMI that has not finished and came first (or is past Pending).
    let in_flight = all
        .items
        .iter()
        .filter(|o| o.meta.uid.as_deref() != Some(uid.as_str()))
        .filter(|o| o.obj.spec.vmi_name.as_deref() == Some(vmi_name.as_str()) && !migration_final(&o.obj))
        .find(|o| {
            phase_of_migration(&o.obj) != "Pending"
                || (created(o), o.meta.name.clone()) < (created(m), m.meta.name.clone())
        })
        .and_then(|o| o.meta.name.clone());
    let model = vmi.map(crate::cluster::handler::model_of);
    let status = model.as_ref().and_then(|v| v.status.clone()).unwrap_or_default();
    let check = MigrationAdmission {
        vmi_name: &vmi_name,
        vmi: model.as_ref(),
        running: status.phase == Some(VmiPhase::Running),
        deleting: vmi.is_some_and(|v| v.meta.deletion_timestamp.is_some()),
        migratable: model.as_ref().map_or(Ok(()), live_migratable),
        in_flight: in_flight.as_deref(),
    };
    if let Some(why) = check.refusal() {
        return fail(ctx, m, why).await;
    }
    let Some(vmi) = vmi else { return Ok(Action::requeue(Duration::from_secs(1))) };
    set_finalizer(ctx, m, true).await?;
    let vmi_uid = vmi.meta.uid.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let all_pods = pods
        .list(&ListParams::default().labels(&format!("{CREATED_BY}={vmi_uid}")))
        .await
        .map_err(api_err(format!("listing the pods of VMI {ns}/{vmi_name}")))?
        .items;
    let source = active_pod(&all_pods, &status);
    let source_pod = source.and_then(|p| p.metadata.name.clone());
    let source_node = status.node_name.clone().unwrap_or_default();
    let target = match all_pods
        .iter()
        .find(|p| p.metadata.labels.as_ref().and_then(|l| l.get(MIGRATION_JOB_LABEL)) == Some(&uid))
    {
        Some(p) => p.clone(),
        None => pods
            .create(&PostParams::default(), &migration_target_pod(vmi, &ctx.launcher, &uid))
            .await
            .map_err(api_err(format!("creating the target pod of migration {ns}/{name}")))?,
    };
    let target_pod = target.metadata.name.clone().unwrap_or_default();
    log::info!("migration {ns}/{name} of VMI {vmi_name}: from pod {source_pod:?}, target pod {target_pod}");
    // The target node is the scheduler's choice: known once the target pod is scheduled.
    let policy = policy_for(ctx, vmi).await?;
    let mut state = migration_started(&uid, &source_node, "", policy);
    state.target_node = None;
    state.source_pod = source_pod;
    state.target_pod = Some(target_pod.clone());
    write_migration_state(&ctx.client, &ns, &vmi_name, &state).await?;
    // Pending is recorded before Scheduling (both transition times).
    let api: Api<Vmim> = Api::namespaced(ctx.client.clone(), &ns);
    let mut obj = m.obj.clone();
    set_migration_phase(&mut obj, "Pending");
    set_migration_phase(&mut obj, "Scheduling");
    let mut st = obj.status.unwrap_or_else(|| json!({}));
    st["migrationState"] = serde_json::to_value(&state).unwrap_or_default();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(json!({ "status": st })))
        .await
        .map_err(api_err(format!("writing the status of migration {ns}/{name}")))?;
    Ok(Action::requeue(Duration::from_secs(1)))
}
