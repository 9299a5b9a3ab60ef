//! VirtualMachine -> VirtualMachineInstance, by virt-core's run-strategy functions
//! (`lifecycle::strategy::sync`, `printable_status_with_volumes`): the controller only carries
//! out the answer.
//!
//! A VM's `dataVolumeTemplates` become DataVolumes first, as KubeVirt's: each named as its
//! template, owned by the VM (controller reference, `blockOwnerDeletion`: deleting the VM
//! deletes them), made by the local node's own `node::cdi::dv_from_template`. The VMI is created
//! only once all of them succeeded; until then the VM is `Provisioning`, or `DataVolumeError`
//! when one failed.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::{Api, Resource};
use serde_json::{json, Value};
use virt_core::lifecycle::strategy::{self, InstanceView, StateChange, VmView, VolumesView};
use virt_core::model::{
    self, Catalog, InstancetypeKind, PreferenceKind, VirtualMachine, VirtualMachineClusterInstancetype,
    VirtualMachineClusterPreference, VirtualMachineInstance, VirtualMachineInstancetype,
    VirtualMachinePreference, VmiPhase,
};
use virt_storage::cdi::{DataVolume, DataVolumePhase};

use super::{key, Context, ReconcileError};
use crate::cluster::kinds::Cr;
use crate::cluster::pod::VM_NAME_LABEL;

fn api_err(what: String) -> impl FnOnce(kube::Error) -> ReconcileError {
    move |source| ReconcileError::Api { what, source }
}

/// The VMI a VM would create now: its template with the instancetype and preference it names
/// applied (`catalog` holds them: [`catalog_for`]), as the local node does, named as the VM,
/// owned by it.
pub fn vmi_for(
    vm: &Cr<VirtualMachine>,
    catalog: &Catalog,
) -> Result<Cr<VirtualMachineInstance>, ReconcileError> {
    let name = vm.meta.name.clone().unwrap_or_default();
    let mut named = vm.obj.clone();
    named.metadata.namespace = vm.meta.namespace.clone();
    let tmpl = &model::resolve(&named, catalog)
        .map_err(|source| ReconcileError::Resolve { what: format!("VM {name}"), source })?;
    let vmi = VirtualMachineInstance {
        api_version: Cr::<VirtualMachineInstance>::api_version(),
        kind: "VirtualMachineInstance".into(),
        metadata: tmpl.metadata.as_deref().cloned().unwrap_or_default(),
        spec: tmpl.spec.clone(),
        status: None,
    };
    let mut cr = Cr::new(vmi)
        .map_err(|source| ReconcileError::Convert { what: format!("VMI of VM {name}"), source })?;
    cr.meta.name = Some(name.clone());
    cr.meta.generate_name = None;
    cr.meta.namespace = vm.meta.namespace.clone();
    cr.meta.labels.get_or_insert_with(Default::default).insert(VM_NAME_LABEL.into(), name);
    cr.meta.owner_references = vm.controller_owner_ref(&()).map(|o| {
        vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            block_owner_deletion: Some(true),
            ..o
        }]
    });
    Ok(cr)
}

/// One object's content (`obj`), or `None` when the API server has none named `name`.
async fn fetch<K>(api: Api<Cr<K>>, name: &str, what: &str) -> Result<Option<K>, ReconcileError>
where
    Cr<K>: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    <Cr<K> as Resource>::DynamicType: Default,
{
    Ok(api.get_opt(name).await.map_err(api_err(format!("reading {what} {name}")))?.map(|o| o.obj))
}

/// How the spec is taken out of a cluster-wide (`C`) and a namespaced (`N`) object.
type Specs<C, N, S> = (fn(C) -> S, fn(N) -> S);

/// The spec of the cluster-wide (`C`) or namespaced (`N`, in `ns`) object `name`.
async fn spec_of<C, N, S>(
    client: &kube::Client,
    cluster: bool,
    ns: &str,
    name: &str,
    what: &str,
    specs: Specs<C, N, S>,
) -> Result<Option<S>, ReconcileError>
where
    Cr<C>: Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <Cr<C> as Resource>::DynamicType: Default,
    Cr<N>: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    <Cr<N> as Resource>::DynamicType: Default,
{
    Ok(if cluster {
        fetch(Api::<Cr<C>>::all(client.clone()), name, &format!("cluster {what}")).await?.map(specs.0)
    } else {
        fetch(Api::<Cr<N>>::namespaced(client.clone(), ns), name, what).await?.map(specs.1)
    })
}

/// The instancetype and preference `vm` (in `ns`) names, read from the API server: the catalog
/// [`vmi_for`] resolves against. One that does not exist (or a kind that is none) is left out,
/// and resolving names it.
pub async fn catalog_for(
    client: &kube::Client,
    vm: &VirtualMachine,
    ns: &str,
) -> Result<Catalog, ReconcileError> {
    let mut catalog = Catalog::new();
    let named =
        |m: Option<(&Option<String>, &Option<String>)>| m.and_then(|(n, k)| Some((n.clone()?, k.clone())));
    let it = named(vm.spec.instancetype.as_ref().map(|m| (&m.name, &m.kind)));
    if let Some((n, Some(k))) = it.map(|(n, k)| (n, InstancetypeKind::from_matcher(k.as_deref()))) {
        let cluster = k == InstancetypeKind::Cluster;
        let specs: Specs<VirtualMachineClusterInstancetype, VirtualMachineInstancetype, _> =
            (|o| o.spec, |o| o.spec);
        if let Some(spec) = spec_of(client, cluster, ns, &n, "instancetype", specs).await? {
            catalog.add_instancetype(k, (!cluster).then_some(ns), &n, spec);
        }
    }
    let pref = named(vm.spec.preference.as_ref().map(|m| (&m.name, &m.kind)));
    if let Some((n, Some(k))) = pref.map(|(n, k)| (n, PreferenceKind::from_matcher(k.as_deref()))) {
        let cluster = k == PreferenceKind::Cluster;
        let specs: Specs<VirtualMachineClusterPreference, VirtualMachinePreference, _> =
            (|o| o.spec, |o| o.spec);
        if let Some(spec) = spec_of(client, cluster, ns, &n, "preference", specs).await? {
            catalog.add_preference(k, (!cluster).then_some(ns), &n, spec);
        }
    }
    Ok(catalog)
}

/// The DataVolume of `vm`'s template `i` as the API server takes it: the local node's
/// [`dv_from_template`](crate::node::cdi::dv_from_template) (strict decoding, validation, owner
/// reference), without what the API server sets itself.
pub fn template_dv(vm: &Cr<VirtualMachine>, i: usize) -> Result<Cr<DataVolume>, ReconcileError> {
    let mut named = vm.obj.clone();
    named.metadata.name = vm.meta.name.clone();
    named.metadata.namespace = vm.meta.namespace.clone();
    named.metadata.uid = vm.meta.uid.clone();
    let what = || {
        format!(
            "spec.dataVolumeTemplates[{i}] of VM {}/{}",
            vm.meta.namespace.as_deref().unwrap_or_default(),
            vm.meta.name.as_deref().unwrap_or_default()
        )
    };
    let mut dv = crate::node::cdi::dv_from_template(&named, i)
        .map_err(|source| ReconcileError::Template { what: what(), source: Box::new(source) })?;
    dv.status = None;
    let mut cr = Cr::new(dv).map_err(|source| ReconcileError::Convert { what: what(), source })?;
    cr.meta.uid = None;
    cr.meta.creation_timestamp = None;
    cr.meta.resource_version = None;
    cr.meta.generation = None;
    cr.meta.self_link = None;
    Ok(cr)
}

/// Creates the DataVolumes of `vm`'s `dataVolumeTemplates` that do not exist, and says whether
/// all of them succeeded.
async fn sync_data_volumes(
    client: &kube::Client,
    vm: &Cr<VirtualMachine>,
    ns: &str,
) -> Result<VolumesView, ReconcileError> {
    if vm.obj.spec.data_volume_templates.is_empty() {
        return Ok(VolumesView::Ready);
    }
    let dvs: Api<Cr<DataVolume>> = Api::namespaced(client.clone(), ns);
    let mut states = Vec::new();
    for (i, t) in vm.obj.spec.data_volume_templates.iter().enumerate() {
        let Some(dv_name) = t.metadata.name.as_deref() else { continue };
        let phase = match dvs
            .get_opt(dv_name)
            .await
            .map_err(api_err(format!("reading DataVolume {ns}/{dv_name}")))?
        {
            Some(d) => d.obj.status.and_then(|s| s.phase),
            None => {
                match dvs.create(&PostParams::default(), &template_dv(vm, i)?).await {
                    Ok(_) => log::info!(
                        "VirtualMachine/{ns}/{}: created DataVolume {dv_name} from its dataVolumeTemplates",
                        vm.meta.name.as_deref().unwrap_or_default()
                    ),
                    Err(kube::Error::Api(r)) if r.code == 409 => {}
                    Err(e) => {
                        return Err(ReconcileError::Api {
                            what: format!(
                                "creating DataVolume {ns}/{dv_name} of spec.dataVolumeTemplates[{i}]"
                            ),
                            source: e,
                        })
                    }
                }
                None
            }
        };
        states.push(match phase {
            Some(DataVolumePhase::Succeeded) => Some(true),
            Some(DataVolumePhase::Failed) => Some(false),
            _ => None,
        });
    }
    Ok(VolumesView::of(states))
}

fn next_request(vm: &VirtualMachine) -> Option<StateChange> {
    let first = vm.status.as_ref()?.state_change_requests.first()?;
    StateChange::parse(first.get("action")?.as_str()?)
}

pub(crate) fn owned_by(vmi: &Cr<VirtualMachineInstance>, uid: Option<&str>) -> bool {
    vmi.meta
        .owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid && o.controller == Some(true))
}

/// One reconcile of a VirtualMachine.
pub async fn reconcile(vm: Arc<Cr<VirtualMachine>>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let k = key("VirtualMachine", &vm.meta);
    if vm.meta.deletion_timestamp.is_some() {
        // The garbage collector removes the VMI (owner reference, blockOwnerDeletion).
        return Ok(Action::await_change());
    }
    let ns = vm.meta.namespace.clone().unwrap_or_default();
    let name = vm.meta.name.clone().unwrap_or_default();
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::namespaced(ctx.client.clone(), &ns);
    let vmi = vmis
        .get_opt(&name)
        .await
        .map_err(api_err(format!("reading VMI {ns}/{name}")))?
        .filter(|v| owned_by(v, vm.meta.uid.as_deref()));
    let view_of = |v: &Cr<VirtualMachineInstance>| InstanceView {
        phase: v.obj.status.as_ref().and_then(|s| s.phase).unwrap_or(VmiPhase::Pending),
        deleting: v.meta.deletion_timestamp.is_some(),
    };
    let strategy = vm.obj.spec.effective_run_strategy();
    let status = vm.obj.status.clone().unwrap_or_default();
    let view = VmView {
        strategy,
        strategy_applied: status.observed_generation.is_some()
            && status.observed_generation == vm.meta.generation,
        vmi: vmi.as_ref().map(view_of),
        next_request: next_request(&vm.obj),
        backing_off: false,
    };
    let mut action = strategy::sync(&view);
    let volumes = sync_data_volumes(&ctx.client, &vm, &ns).await?;
    // KubeVirt's order: the DataVolumes first, the VMI once all of them succeeded (the VM's
    // observedGeneration is not advanced meanwhile: a Once VM still starts afterwards).
    let deferred = action == strategy::Action::Create && volumes != VolumesView::Ready;
    if deferred {
        action = strategy::Action::Wait;
    }
    let mut requests: Vec<Value> = status.state_change_requests.clone();
    let mut vmi_now = vmi.as_ref().map(view_of);
    let delete =
        DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    match action {
        strategy::Action::Create => {
            let catalog = catalog_for(&ctx.client, &vm.obj, &ns).await?;
            vmis.create(&PostParams::default(), &vmi_for(&vm, &catalog)?)
                .await
                .map_err(api_err(format!("creating VMI {ns}/{name}")))?;
            log::info!("{k}: created its VMI ({strategy:?})");
            vmi_now = Some(InstanceView { phase: VmiPhase::Pending, deleting: false });
            if view.next_request == Some(StateChange::Start) {
                requests.remove(0);
            }
        }
        strategy::Action::Replace | strategy::Action::Stop | strategy::Action::DeleteFinished => {
            vmis.delete(&name, &delete).await.map_err(api_err(format!("deleting VMI {ns}/{name}")))?;
            log::info!("{k}: deleting its VMI ({action:?})");
            vmi_now = vmi_now.map(|v| InstanceView { deleting: true, ..v });
            if action == strategy::Action::Stop && view.next_request == Some(StateChange::Stop) {
                requests.remove(0);
            }
        }
        strategy::Action::Dequeue => {
            requests.remove(0);
        }
        strategy::Action::None | strategy::Action::Wait => {}
    }
    let phase = vmi_now.map(|v| v.phase);
    let deleting = vmi_now.is_some_and(|v| v.deleting);
    let printable = strategy::printable_status_with_volumes(phase, deleting, false, false, volumes);
    let ready = phase == Some(VmiPhase::Running) && !deleting;
    let desired = json!({
        "printableStatus": printable,
        "created": vmi_now.is_some(),
        "ready": ready,
        "observedGeneration": if deferred { status.observed_generation } else { vm.meta.generation },
        "stateChangeRequests": requests,
    });
    let current = json!({
        "printableStatus": status.printable_status,
        "created": status.created.unwrap_or(false),
        "ready": status.ready.unwrap_or(false),
        "observedGeneration": status.observed_generation,
        "stateChangeRequests": status.state_change_requests,
    });
    if desired != current {
        let vms: Api<Cr<VirtualMachine>> = Api::namespaced(ctx.client.clone(), &ns);
        // Under the resourceVersion read: a state change queued meanwhile (the `start`/`stop`
        // subresources append to the list) makes this a conflict, retried, never lost.
        let patch = json!({ "metadata": { "resourceVersion": vm.meta.resource_version }, "status": desired });
        vms.patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(api_err(format!("writing the status of VM {ns}/{name}")))?;
    }
    ctx.succeeded(&k);
    Ok(match action {
        // Carry on with the next step (a replace creates once the old VMI is gone).
        strategy::Action::Replace | strategy::Action::Dequeue => Action::requeue(Duration::from_millis(500)),
        // The DataVolumes it owns wake it too; this is the fallback.
        _ if volumes != VolumesView::Ready => Action::requeue(Duration::from_secs(5)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(yaml: &str) -> Cr<VirtualMachine> {
        let mut cr = Cr::new(model::from_yaml::<VirtualMachine>(yaml).unwrap()).unwrap();
        cr.meta.namespace = Some("team".into());
        cr.meta.uid = Some("vm-uid".into());
        cr
    }

    const WITH_TYPE: &str = "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: typed
spec:
  runStrategy: Always
  instancetype:
    name: u1.small
  preference:
    kind: VirtualMachinePreference
    name: virtio
  template:
    spec:
      domain:
        devices:
          disks:
          - name: root
            disk: {}
      volumes:
      - name: root
        containerDisk:
          image: registry.example/os:1
";

    #[test]
    fn the_vmi_gets_the_instancetype_and_preference_as_on_the_local_node() {
        let it: model::VirtualMachineClusterInstancetype = model::from_yaml(
            "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachineClusterInstancetype\nmetadata:\n  name: u1.small\nspec:\n  cpu:\n    guest: 2\n  memory:\n    guest: 384Mi\n",
        )
        .unwrap();
        let pref: model::VirtualMachinePreference = model::from_yaml(
            "apiVersion: instancetype.kubevirt.io/v1beta1\nkind: VirtualMachinePreference\nmetadata:\n  name: virtio\n  namespace: team\nspec:\n  devices:\n    preferredDiskBus: virtio\n",
        )
        .unwrap();
        let mut catalog = Catalog::new();
        catalog.add_instancetype(InstancetypeKind::Cluster, None, "u1.small", it.spec);
        catalog.add_preference(PreferenceKind::Namespaced, Some("team"), "virtio", pref.spec);
        let vmi = vmi_for(&vm(WITH_TYPE), &catalog).unwrap();
        let domain = &vmi.obj.spec.domain;
        assert_eq!(
            domain.memory.as_ref().and_then(|m| m.guest.as_ref()).map(|q| q.to_string()),
            Some("384Mi".into())
        );
        assert_eq!(domain.cpu.as_ref().and_then(|c| c.sockets.or(c.cores)), Some(2), "{domain:?}");
        let bus = domain.devices.disks[0].disk.as_ref().and_then(|d| d.bus);
        assert_eq!(bus.map(|b| format!("{b:?}").to_lowercase()), Some("virtio".into()));
        assert_eq!(vmi.meta.name.as_deref(), Some("typed"));
        assert_eq!(vmi.meta.owner_references.as_ref().map(|o| o[0].uid.as_str()), Some("vm-uid"));

        // A dataVolumeTemplates entry: the DataVolume named as it, owned by the VM, nothing the
        // API server sets; a bad one named by its path.
        let with_dv = WITH_TYPE.replace(
            "  runStrategy: Always\n",
            "  runStrategy: Always\n  dataVolumeTemplates:\n  - metadata:\n      name: root-dv\n    spec:\n      source:\n        pvc:\n          namespace: team\n          name: golden\n      storage: {}\n",
        );
        let dv = template_dv(&vm(&with_dv), 0).unwrap();
        assert_eq!((dv.meta.name.as_deref(), dv.meta.namespace.as_deref()), (Some("root-dv"), Some("team")));
        let owner = &dv.meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VirtualMachine", "vm-uid", Some(true))
        );
        assert_eq!(
            (dv.meta.uid.as_ref(), dv.meta.creation_timestamp.as_ref(), dv.obj.status.as_ref()),
            (None, None, None)
        );
        assert_eq!(
            dv.obj.spec.source.as_ref().and_then(|s| s.pvc.as_ref()).map(|p| p.name.as_str()),
            Some("golden")
        );
        let bad = with_dv.replace("          name: golden\n", "          name: golden\n          extra: 1\n");
        let e = template_dv(&vm(&bad), 0).unwrap_err().to_string();
        assert!(e.contains("spec.dataVolumeTemplates[0]"), "{e}");

        // Missing from the catalog (not on the API server): refused naming the field.
        let e = vmi_for(&vm(WITH_TYPE), &Catalog::new()).unwrap_err().to_string();
        assert!(e.contains("spec.instancetype") && e.contains("u1.small"), "{e}");
    }
}
