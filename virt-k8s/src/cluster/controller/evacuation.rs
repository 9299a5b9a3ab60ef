//! Evacuation: KubeVirt's `evictionStrategy: LiveMigrate` on the cluster. A VMI that should move
//! rather than stop when its node is drained gets:
//!
//! - a PodDisruptionBudget (`kubevirt-disruption-budget-<vmi>`, `minAvailable: 1` over its launcher
//!   pods, owned by the VMI), so the eviction API refuses to evict its launcher (429) even while
//!   the eviction webhook is down;
//! - through the eviction webhook (`cluster::subresources::eviction`), `status.evacuationNodeName`
//!   set to the node a refused eviction wanted it off;
//! - from this controller, for such a VMI, a `VirtualMachineInstanceMigration`
//!   (`kubevirt-evacuation-xxxxx`, annotation `kubevirt.io/evacuationMigration: <node>`), one at a
//!   time, the next after a back-off when one failed ([`retry_after`]); once the VMI runs elsewhere,
//!   ends, or an evacuation migration succeeded, the mark is cleared (the migrations it brought
//!   annotated [`HANDLED_ANNOTATION`], so a later evacuation counts its own only).
//!
//! `LiveMigrateIfPossible` behaves as `LiveMigrate` when the VMI's `LiveMigratable` condition is
//! True, else as `None` (no budget: the drain stops it). The cluster runs on Kubernetes 1.20, whose
//! PodDisruptionBudget is `policy/v1beta1`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::Api;
use serde_json::json;
use virt_core::model::{EvictionStrategy, VirtualMachineInstance, VirtualMachineInstanceMigration};

use super::{key, Context, ReconcileError};
use crate::cluster::kinds::Cr;

/// The annotation naming the node an evacuation migration moves a VMI off (KubeVirt's).
pub const EVACUATION_ANNOTATION: &str = "kubevirt.io/evacuationMigration";
/// The wait after a failed evacuation migration before the next (doubling with each failure,
/// [`retry_after`]).
pub const RETRY: Duration = Duration::from_secs(30);
/// Set on the evacuation migrations a clearing of the mark accounted for (a later evacuation of
/// the same VMI looks at its own only).
pub const HANDLED_ANNOTATION: &str = "virt-rs.io/evacuation-handled";

/// The wait after the `failed`-th failed evacuation migration in a row: 30 s doubling, at most
/// 8 minutes.
pub fn retry_after(failed: usize) -> Duration {
    RETRY * (1u32 << failed.saturating_sub(1).min(4))
}
/// The field manager of what this controller applies.
const MANAGER: &str = "virt-controller-evacuation";

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// The name of the VMI's disruption budget.
pub fn budget_name(vmi: &str) -> String {
    format!("kubevirt-disruption-budget-{vmi}")
}

/// Whether draining the VMI's node should migrate it rather than stop it.
pub fn migrates_on_eviction(vmi: &VirtualMachineInstance) -> bool {
    match vmi.spec.eviction_strategy {
        Some(EvictionStrategy::LiveMigrate) => true,
        Some(EvictionStrategy::LiveMigrateIfPossible) => vmi.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "LiveMigratable" && c.status == virt_core::api::ConditionStatus::True)
        }),
        _ => false,
    }
}

fn pdb_resource() -> ApiResource {
    ApiResource {
        group: "policy".into(),
        version: "v1beta1".into(),
        api_version: "policy/v1beta1".into(),
        kind: "PodDisruptionBudget".into(),
        plural: "poddisruptionbudgets".into(),
    }
}

/// The budget keeping one launcher pod of `vmi` up.
pub fn budget(vmi: &Cr<VirtualMachineInstance>) -> serde_json::Value {
    let name = vmi.meta.name.clone().unwrap_or_default();
    let uid = vmi.meta.uid.clone().unwrap_or_default();
    json!({
        "apiVersion": "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": budget_name(&name),
            "namespace": vmi.meta.namespace,
            "labels": { "kubevirt.io/created-by": uid },
            "ownerReferences": [{
                "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance", "name": name,
                "uid": uid, "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "minAvailable": 1,
            "selector": { "matchLabels": { "kubevirt.io/created-by": uid } },
        },
    })
}

/// One reconcile of a VMI's evacuation.
pub async fn reconcile(
    vmi: Arc<Cr<VirtualMachineInstance>>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    // Its own back-off key: the VMI controller's failures are not this one's.
    let k = key("Evacuation of VirtualMachineInstance", &vmi.meta);
    let ns = vmi.meta.namespace.clone().unwrap_or_default();
    let name = vmi.meta.name.clone().unwrap_or_default();
    let status = vmi.obj.status.clone().unwrap_or_default();
    let ending = vmi.meta.deletion_timestamp.is_some() || status.phase.is_some_and(|p| p.is_final());
    let pdbs: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &pdb_resource());
    let budget_name = budget_name(&name);
    if migrates_on_eviction(&vmi.obj) && !ending {
        let pp = PatchParams::apply(MANAGER).force();
        pdbs.patch(&budget_name, &pp, &Patch::Apply(budget(&vmi)))
            .await
            .map_err(api_err(format!("applying PodDisruptionBudget {ns}/{budget_name}")))?;
    } else if pdbs
        .get_opt(&budget_name)
        .await
        .map_err(api_err(format!("reading {ns}/{budget_name}")))?
        .is_some()
    {
        // A VMI that ends, or no longer asks to migrate, does not hold its node's drain.
        match pdbs.delete(&budget_name, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("deleting {ns}/{budget_name}"))(e)),
        }
    }
    let Some(evacuating) = status.evacuation_node_name.clone() else {
        ctx.succeeded(&k);
        return Ok(Action::await_change());
    };
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
    let migrations: Api<Cr<VirtualMachineInstanceMigration>> = Api::namespaced(ctx.client.clone(), &ns);
    // This VMI's evacuation migrations not yet accounted for by an earlier clearing of the mark.
    let open: Vec<_> = migrations
        .list(&ListParams::default())
        .await
        .map_err(api_err(format!("listing the migrations of namespace {ns}")))?
        .items
        .into_iter()
        .filter(|m| m.obj.spec.vmi_name.as_deref() == Some(name.as_str()))
        .filter(|m| m.meta.annotations.as_ref().is_some_and(|a| a.contains_key(EVACUATION_ANNOTATION)))
        .filter(|m| !m.meta.annotations.as_ref().is_some_and(|a| a.contains_key(HANDLED_ANNOTATION)))
        .collect();
    let phase = |m: &Cr<VirtualMachineInstanceMigration>| {
        m.obj.status.as_ref().and_then(|s| s["phase"].as_str()).unwrap_or_default().to_string()
    };
    if open.iter().any(|m| !matches!(phase(m).as_str(), "Succeeded" | "Failed")) {
        // One under way: its end brings this back (the VMI's status changes).
        ctx.succeeded(&k);
        return Ok(Action::requeue(RETRY));
    }
    let moved = status.node_name.as_deref() != Some(evacuating.as_str());
    if ending || moved || open.iter().any(|m| phase(m) == "Succeeded") {
        // Moved off, ending, or an evacuation migration succeeded (the scheduler chose; if the
        // node is drained, a new eviction marks the VMI again): the mark has done its work. The
        // migrations it brought are accounted for first, so that a crash in between costs at
        // most one more migration, never a loop.
        for m in &open {
            let patch =
                Patch::Merge(json!({ "metadata": { "annotations": { HANDLED_ANNOTATION: "true" } } }));
            let mname = m.meta.name.clone().unwrap_or_default();
            migrations
                .patch(&mname, &PatchParams::default(), &patch)
                .await
                .map_err(api_err(format!("marking migration {ns}/{mname} handled")))?;
        }
        let patch = Patch::Merge(json!({ "status": { "evacuationNodeName": null } }));
        vmis.patch_status(&name, &PatchParams::default(), &patch)
            .await
            .map_err(api_err(format!("clearing the evacuation of VMI {ns}/{name}")))?;
        log::info!("{k}: evacuation off {evacuating} done (moved: {moved}, ending: {ending})");
        ctx.succeeded(&k);
        return Ok(Action::await_change());
    }
    // Only failures so far: the next after a back-off that doubles with each.
    let failed = open.len();
    let last_failed = open.iter().filter_map(|m| m.meta.creation_timestamp.as_ref().map(|t| t.0)).max();
    if let Some(t) = last_failed {
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(t);
        let wait = retry_after(failed).saturating_sub(Duration::try_from(since).unwrap_or(Duration::ZERO));
        if !wait.is_zero() {
            ctx.succeeded(&k);
            return Ok(Action::requeue(wait));
        }
    }
    let migration: VirtualMachineInstanceMigration = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {
            "generateName": "kubevirt-evacuation-",
            "namespace": ns,
            "labels": { "kubevirt.io/vmi-name": name },
            "annotations": { EVACUATION_ANNOTATION: evacuating },
        },
        "spec": { "vmiName": name },
    }))
    .map_err(|source| ReconcileError::Convert { what: format!("the evacuation migration of {k}"), source })?;
    let migration = Cr::new(migration).map_err(|source| ReconcileError::Convert {
        what: format!("the evacuation migration of {k}"),
        source,
    })?;
    let made = migrations
        .create(&PostParams::default(), &migration)
        .await
        .map_err(api_err(format!("creating an evacuation migration of VMI {ns}/{name}")))?;
    log::info!(
        "{k}: evacuating off {evacuating} with migration {}",
        made.meta.name.as_deref().unwrap_or_default()
    );
    ctx.succeeded(&k);
    Ok(Action::requeue(RETRY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vmi(yaml: &str) -> VirtualMachineInstance {
        virt_core::model::from_yaml(yaml).unwrap()
    }

    const BASE: &str = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: v, namespace: ns, uid: u1}\nspec:\n  domain: {devices: {}, memory: {guest: 64Mi}}\n";

    #[test]
    fn which_strategies_migrate_on_eviction() {
        assert!(!migrates_on_eviction(&vmi(BASE)));
        assert!(migrates_on_eviction(&vmi(&format!("{BASE}  evictionStrategy: LiveMigrate\n"))));
        assert!(!migrates_on_eviction(&vmi(&format!("{BASE}  evictionStrategy: None\n"))));
        assert!(!migrates_on_eviction(&vmi(&format!("{BASE}  evictionStrategy: External\n"))));
        let maybe = format!("{BASE}  evictionStrategy: LiveMigrateIfPossible\n");
        assert!(!migrates_on_eviction(&vmi(&maybe)), "not known to be migratable");
        let yes = format!("{maybe}status:\n  conditions:\n  - {{type: LiveMigratable, status: \"True\"}}\n");
        assert!(migrates_on_eviction(&vmi(&yes)));
        let no = format!("{maybe}status:\n  conditions:\n  - {{type: LiveMigratable, status: \"False\"}}\n");
        assert!(!migrates_on_eviction(&vmi(&no)));
    }

    #[test]
    fn failed_evacuations_back_off_doubling_to_eight_minutes() {
        let secs: Vec<u64> = (0..8).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(secs, [30, 30, 60, 120, 240, 480, 480, 480]);
    }

    #[test]
    fn the_budget_keeps_one_launcher_of_the_vmi_and_is_owned_by_it() {
        let v = Cr::new(vmi(&format!("{BASE}  evictionStrategy: LiveMigrate\n"))).unwrap();
        let b = budget(&v);
        assert_eq!(b["metadata"]["name"], "kubevirt-disruption-budget-v");
        assert_eq!(b["apiVersion"], "policy/v1beta1");
        assert_eq!(b["spec"]["minAvailable"], 1);
        assert_eq!(b["spec"]["selector"]["matchLabels"]["kubevirt.io/created-by"], "u1");
        assert_eq!(b["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(b["metadata"]["ownerReferences"][0]["controller"], true);
    }
}
