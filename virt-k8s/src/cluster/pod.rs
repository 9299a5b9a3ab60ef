//! The launcher pod of a VMI (pure: no API calls), with KubeVirt's labels and the resources the
//! VM needs, and the VMI phase a pod's state stands for.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimVolumeSource, Pod,
    PodAffinityTerm, PodAntiAffinity, PodSpec, ResourceRequirements, SecurityContext, Toleration, Volume,
    VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use virt_core::model::{VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase};

use super::kinds::Cr;
use super::storage::disk_mount_dir;

/// Label on a launcher pod: the uid of the VMI it runs (KubeVirt's `kubevirt.io/created-by`).
pub const CREATED_BY: &str = "kubevirt.io/created-by";
/// Label on a launcher pod (`virt-launcher`), KubeVirt's `kubevirt.io`.
pub const APP_LABEL: &str = "kubevirt.io";
/// Label on a launcher pod: the VMI's name (KubeVirt's `kubevirt.io/domain`).
pub const DOMAIN_LABEL: &str = "kubevirt.io/domain";
/// Label on a launcher pod and a VM's VMI: the VM's name.
pub const VM_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// Label on a VMI once its pod is scheduled: the node.
pub const NODE_NAME_LABEL: &str = "kubevirt.io/nodeName";
/// The label of a migration's target launcher pod: the migration's uid (KubeVirt's).
pub const MIGRATION_JOB_LABEL: &str = "kubevirt.io/migrationJobUID";
/// Set to `1` in a migration's target launcher pod: its entry script starts the launcher with
/// `--incoming` (scripts/k8s/launcher-image.sh).
pub const INCOMING_ENV: &str = "VIRT_INCOMING";

/// Memory the launcher needs beside the guest's RAM: the launcher process, QEMU's or the native
/// VMM's own allocations, page tables and the containerd shim. A fixed 192 MiB plus 8 MiB per
/// vCPU (KubeVirt's estimate is of the same order: ~180 MiB plus per-vCPU and per-device terms).
pub const OVERHEAD_BASE_BYTES: u64 = 192 << 20;
/// Per-vCPU part of the overhead.
pub const OVERHEAD_PER_VCPU_BYTES: u64 = 8 << 20;
/// CPU requested per vCPU, in millicores (KubeVirt's default cpuAllocationRatio of 10).
pub const CPU_MILLIS_PER_VCPU: u64 = 100;
/// Where the launcher's sockets live in its pod (an emptyDir).
pub const SOCKETS_DIR: &str = "/var/run/kubevirt";

/// The extended resource of `/dev/kvm` (virt-handler's device plugin, as KubeVirt names it).
pub const KVM_RESOURCE: &str = "devices.kubevirt.io/kvm";
/// The extended resource of `/dev/net/tun`: launchers of VMIs with interfaces open it (QEMU's tap).
pub const TUN_RESOURCE: &str = "devices.kubevirt.io/tun";
/// Set in an unprivileged launcher's container: the launcher makes no cgroup of its own (the
/// container's cgroup filesystem is read-only; the pod's cgroup, the kubelet's, bounds it).
pub const POD_CGROUP_ENV: &str = "VIRT_LAUNCHER_POD_CGROUP";

/// Capabilities an unprivileged launcher container adds to the runtime's defaults (which hold
/// CHOWN, DAC_OVERRIDE, FOWNER, SETUID, SETGID, SETPCAP, MKNOD, SYS_CHROOT, KILL ...), and why.
/// The launcher drops them all once its jail is set up (docs/confinement.md). Measured on the
/// cluster: without SYS_ADMIN the launcher fails; NET_ADMIN is not needed (the tap virt-handler
/// makes in the pod's namespace has no owner, and the kernel lets any opener of /dev/net/tun
/// attach to such a tap: the guest's NIC on the pod network works without it).
pub const LAUNCHER_CAPABILITIES: &[(&str, &str)] = &[
    // unshare(CLONE_NEWPID, CLONE_NEWNS), the jail's tmpfs root and bind mounts, a fresh /proc
    // of its pid namespace, pivot_root: all need CAP_SYS_ADMIN in the container's namespace.
    ("SYS_ADMIN", "the launcher's jail: pid and mount namespaces, its root's mounts, pivot_root"),
];

/// How the launcher gets `/dev/kvm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmAccess {
    /// A privileged container (works on any node; sees every device).
    Privileged,
    /// The `devices.kubevirt.io/kvm` extended resource a device plugin serves (and
    /// `devices.kubevirt.io/tun` for VMIs with interfaces): an unprivileged container adding only
    /// [`LAUNCHER_CAPABILITIES`].
    DevicePlugin,
}

/// What every launcher pod shares.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    /// The launcher's image (pods use `imagePullPolicy: Never`: images are imported locally).
    pub image: String,
    /// How `/dev/kvm` reaches the launcher.
    pub kvm: KvmAccess,
    /// The node agent's state directory on every node (`virt-handler --state-dir`): the pod
    /// mounts the VMI's run directory (`<dir>/vmis/<uid>`, where the agent writes `spec.json`
    /// and the launcher its sockets and `console.log`) and the image cache (`<dir>/images`,
    /// read-only) at the same paths, so the spec's host paths are valid in the container.
    pub node_state_dir: String,
}

/// The run directory of the VMI with `uid` under a node agent's state directory: the same
/// layout as `node::LauncherRuntime::run_dir`.
pub fn run_dir(node_state_dir: &str, uid: &str) -> String {
    format!("{}/vmis/{uid}", node_state_dir.trim_end_matches('/'))
}

/// Guest RAM of a VMI: `domain.memory.guest`, else `domain.resources.requests.memory`, else
/// 128 MiB (the node's default).
pub fn guest_memory_bytes(vmi: &VirtualMachineInstance) -> u64 {
    let d = &vmi.spec.domain;
    d.memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or_else(|| d.resources.as_ref().and_then(|r| r.requests.get("memory")))
        .map(|q| q.bytes())
        .unwrap_or(128 << 20)
}

/// vCPUs of a VMI (sockets x cores x threads, 1 without a `cpu` section).
pub fn vcpus(vmi: &VirtualMachineInstance) -> u64 {
    vmi.spec.domain.cpu.as_ref().map(|c| c.vcpus()).unwrap_or(1).max(1)
}

/// The launcher pod's memory request: guest RAM plus the overhead.
pub fn memory_request_bytes(vmi: &VirtualMachineInstance) -> u64 {
    guest_memory_bytes(vmi) + OVERHEAD_BASE_BYTES + OVERHEAD_PER_VCPU_BYTES * vcpus(vmi)
}

/// The claims `vmi`'s volumes name, by volume name: `persistentVolumeClaim.claimName`, and
/// `dataVolume.name` (a DataVolume's claim is named as it).
pub fn claims(vmi: &VirtualMachineInstance) -> Vec<(String, String)> {
    vmi.spec
        .volumes
        .iter()
        .filter_map(|v| {
            let claim = v
                .persistent_volume_claim
                .as_ref()
                .map(|p| p.claim_name.clone())
                .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()))?;
            Some((v.name.clone(), claim))
        })
        .collect()
}

/// The launcher pod of `vmi`: owned by it, labelled as KubeVirt labels it; its claims mounted at
/// [`disk_mount_dir`] (filesystem mode: the disk is `disk.img` there).
pub fn launcher_pod(vmi: &Cr<VirtualMachineInstance>, cfg: &LauncherConfig) -> Pod {
    let name = vmi.meta.name.clone().unwrap_or_default();
    let uid = vmi.meta.uid.clone().unwrap_or_default();
    let spec = &vmi.obj.spec;
    let mut labels: BTreeMap<String, String> = vmi.meta.labels.clone().unwrap_or_default();
    labels.remove(NODE_NAME_LABEL);
    labels.insert(APP_LABEL.into(), "virt-launcher".into());
    labels.insert(CREATED_BY.into(), uid.clone());
    labels.insert(DOMAIN_LABEL.into(), name.clone());
    labels.entry(VM_NAME_LABEL.into()).or_insert_with(|| name.clone());
    let mut requests = BTreeMap::new();
    requests.insert("memory".to_string(), KQuantity(memory_request_bytes(&vmi.obj).to_string()));
    requests.insert("cpu".to_string(), KQuantity(format!("{}m", CPU_MILLIS_PER_VCPU * vcpus(&vmi.obj))));
    let mut limits = BTreeMap::new();
    let has_interfaces = !spec.domain.devices.interfaces.is_empty();
    let security_context = match cfg.kvm {
        KvmAccess::Privileged => SecurityContext { privileged: Some(true), ..Default::default() },
        KvmAccess::DevicePlugin => {
            let mut devices = vec![KVM_RESOURCE];
            let caps: Vec<String> = LAUNCHER_CAPABILITIES.iter().map(|(c, _)| c.to_string()).collect();
            if has_interfaces {
                devices.push(TUN_RESOURCE);
            }
            for d in devices {
                requests.insert(d.into(), KQuantity("1".into()));
                limits.insert(d.into(), KQuantity("1".into()));
            }
            SecurityContext {
                privileged: Some(false),
                capabilities: Some(Capabilities { add: Some(caps), drop: None }),
                ..Default::default()
            }
        }
    };
    let run_dir = run_dir(&cfg.node_state_dir, &uid);
    let images = format!("{}/images", cfg.node_state_dir.trim_end_matches('/'));
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    let host_path = |name: &str, path: &str| Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some("DirectoryOrCreate".into()) }),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    let env = |n: &str, v: &str| EnvVar { name: n.into(), value: Some(v.into()), ..Default::default() };
    let mut envs = vec![
        env("VIRT_VMI_NAME", &name),
        env("VIRT_VMI_NAMESPACE", vmi.meta.namespace.as_deref().unwrap_or("default")),
        env("VIRT_VMI_UID", &uid),
        env("VIRT_RUN_DIR", &run_dir),
        env("VIRT_GRACE_PERIOD", &grace.to_string()),
    ];
    if cfg.kvm == KvmAccess::DevicePlugin {
        envs.push(env(POD_CGROUP_ENV, "1"));
    }
    let container = Container {
        name: "compute".into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some("Never".into()),
        env: Some(envs),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: (!limits.is_empty()).then_some(limits),
            ..Default::default()
        }),
        security_context: Some(security_context),
        volume_mounts: Some(
            [
                mount("sockets", SOCKETS_DIR, false),
                mount("run-dir", &run_dir, false),
                mount("images", &images, true),
            ]
            .into_iter()
            .chain(claims(&vmi.obj).iter().map(|(v, _)| mount(&claim_volume(v), &disk_mount_dir(v), false)))
            .collect(),
        ),
        ..Default::default()
    };
    let tolerations: Vec<Toleration> = spec
        .tolerations
        .iter()
        .map(|t| Toleration {
            key: t.key.clone(),
            operator: t.operator.clone(),
            value: t.value.clone(),
            effect: t.effect.clone(),
            toleration_seconds: t.toleration_seconds,
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!("virt-launcher-{name}-")),
            namespace: vmi.meta.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(DOMAIN_LABEL.to_string(), name.clone())])),
            owner_references: Some(vec![OwnerReference {
                api_version: Cr::<VirtualMachineInstance>::api_version(),
                kind: "VirtualMachineInstance".into(),
                name,
                uid,
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            automount_service_account_token: Some(false),
            // The launcher's own grace period (the guest's power-down) plus time to write its exit.
            termination_grace_period_seconds: Some(grace + 5),
            node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
            scheduler_name: spec.scheduler_name.clone(),
            priority_class_name: spec.priority_class_name.clone(),
            hostname: spec.hostname.clone(),
            subdomain: spec.subdomain.clone(),
            tolerations: (!tolerations.is_empty()).then_some(tolerations),
            volumes: Some(
                [
                    Volume {
                        name: "sockets".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                    host_path("run-dir", &run_dir),
                    host_path("images", &images),
                ]
                .into_iter()
                .chain(claims(&vmi.obj).into_iter().map(|(v, claim)| Volume {
                    name: claim_volume(&v),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim,
                        read_only: Some(false),
                    }),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    }
}

/// The run directory of migration `migration_uid`'s target launcher of the VMI with `uid`: beside
/// the VMI's first one, named as the node names it (`node::runtime::target_dir_name`).
pub fn migration_run_dir(node_state_dir: &str, uid: &str, migration_uid: &str) -> String {
    format!(
        "{}/vmis/{}",
        node_state_dir.trim_end_matches('/'),
        crate::node::runtime::target_dir_name(uid, migration_uid)
    )
}

/// The target launcher pod of migration `migration_uid` of `vmi`: the VMI's launcher pod (same
/// owner, labels, resources, claims) labelled [`MIGRATION_JOB_LABEL`], with its own run directory
/// ([`migration_run_dir`]) and the VMI's first one mounted too (the machine spec's volumes are
/// there), started in incoming mode ([`INCOMING_ENV`]); placed away from the VMI's other pods if
/// the scheduler can (a preferred pod anti-affinity by host: one node still gets a target).
pub fn migration_target_pod(
    vmi: &Cr<VirtualMachineInstance>,
    cfg: &LauncherConfig,
    migration_uid: &str,
) -> Pod {
    let mut pod = launcher_pod(vmi, cfg);
    let uid = vmi.meta.uid.clone().unwrap_or_default();
    let name = vmi.meta.name.clone().unwrap_or_default();
    let first = run_dir(&cfg.node_state_dir, &uid);
    let own = migration_run_dir(&cfg.node_state_dir, &uid, migration_uid);
    pod.metadata.generate_name = Some(format!("virt-launcher-{name}-"));
    if let Some(l) = pod.metadata.labels.as_mut() {
        l.insert(MIGRATION_JOB_LABEL.into(), migration_uid.into());
    }
    if let Some(spec) = pod.spec.as_mut() {
        for v in spec.volumes.iter_mut().flatten() {
            if v.name == "run-dir" {
                if let Some(h) = v.host_path.as_mut() {
                    h.path = own.clone();
                }
            }
        }
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "vmi-dir".into(),
            // Made on a target node that never ran the VMI (its agent fills it once the pod runs).
            host_path: Some(HostPathVolumeSource {
                path: first.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        });
        for c in &mut spec.containers {
            for m in c.volume_mounts.iter_mut().flatten() {
                if m.name == "run-dir" {
                    m.mount_path = own.clone();
                }
            }
            c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
                name: "vmi-dir".into(),
                mount_path: first.clone(),
                ..Default::default()
            });
            for e in c.env.iter_mut().flatten() {
                if e.name == "VIRT_RUN_DIR" {
                    e.value = Some(own.clone());
                }
            }
            c.env.get_or_insert_with(Vec::new).push(EnvVar {
                name: INCOMING_ENV.into(),
                value: Some("1".into()),
                ..Default::default()
            });
        }
        let mut selector = BTreeMap::new();
        selector.insert(CREATED_BY.to_string(), uid);
        // Disks that live on the source node and that the guest writes cannot follow it to
        // another node (the move carries memory and devices, not disks): such a VMI moves within
        // its node. (Local claims are kept there by their volume's node affinity.)
        let source_node = vmi.obj.status.as_ref().and_then(|s| s.node_name.clone());
        let pinned =
            source_node.filter(|_| !node_local_disks(&vmi.obj).is_empty()).map(|node| NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: "kubernetes.io/hostname".into(),
                            operator: "In".into(),
                            values: Some(vec![node]),
                        }]),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            });
        spec.affinity = Some(Affinity {
            node_affinity: pinned,
            pod_anti_affinity: Some(PodAntiAffinity {
                preferred_during_scheduling_ignored_during_execution: Some(vec![WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector),
                            ..Default::default()
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..Default::default()
                    },
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    pod
}

/// The volumes of `vmi` whose disk is made on its node and written by the guest (containerDisk,
/// emptyDisk, ephemeral, hostDisk): a migration cannot take them to another node.
pub fn node_local_disks(vmi: &VirtualMachineInstance) -> Vec<String> {
    vmi.spec
        .volumes
        .iter()
        .filter(|v| {
            v.container_disk.is_some()
                || v.empty_disk.is_some()
                || v.ephemeral.is_some()
                || v.host_disk.is_some()
        })
        .map(|v| v.name.clone())
        .collect()
}

/// The pod volume of VMI volume `volume`'s claim (apart from the pod's own volumes).
fn claim_volume(volume: &str) -> String {
    format!("pvc-{volume}")
}

/// Of the launcher pods of a VMI (`pods`), the one that runs its VM (KubeVirt keeps it in
/// `status.activePods`; here `status.migrationState` says it): after a migration that succeeded
/// its target pod, during one or after one that failed its source pod, else the VMI's first pod
/// (not a migration target).
pub fn active_pod<'a>(pods: &'a [Pod], status: &VirtualMachineInstanceStatus) -> Option<&'a Pod> {
    let named = |n: &str| pods.iter().find(|p| p.metadata.name.as_deref() == Some(n));
    if let Some(ms) = &status.migration_state {
        let moved = ms.completed == Some(true) && ms.failed != Some(true);
        let which = if moved { ms.target_pod.as_deref() } else { ms.source_pod.as_deref() };
        if let Some(n) = which {
            return named(n);
        }
    }
    pods.iter().find(|p| p.metadata.labels.as_ref().is_none_or(|l| !l.contains_key(MIGRATION_JOB_LABEL)))
}

/// The VMI phase a launcher pod's state stands for: an unscheduled pod is `Scheduling`, a
/// scheduled or running one `Scheduled` (the node agent reports `Running` once the launcher runs
/// the machine; `current` Running stays Running while the pod runs); a pod that ended ends the
/// VMI the same way.
pub fn phase_from_pod(pod: &Pod, current: Option<VmiPhase>) -> VmiPhase {
    let scheduled = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Running") if current == Some(VmiPhase::Running) => VmiPhase::Running,
        Some("Running") => VmiPhase::Scheduled,
        Some("Succeeded") => VmiPhase::Succeeded,
        Some("Failed") => VmiPhase::Failed,
        Some("Unknown") => VmiPhase::Unknown,
        _ if scheduled => VmiPhase::Scheduled,
        _ => VmiPhase::Scheduling,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vmi() -> Cr<VirtualMachineInstance> {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": { "name": "demo", "namespace": "ns", "uid": "u-9",
                          "labels": { "vm.kubevirt.io/name": "demo", "kubevirt.io/nodeName": "old" } },
            "spec": { "domain": { "cpu": { "cores": 2 }, "memory": { "guest": "1Gi" }, "devices": {} },
                      "volumes": [ { "name": "root", "dataVolume": { "name": "root-dv" } } ] }
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_requests_guest_memory_plus_overhead_and_is_owned() {
        let cfg = LauncherConfig {
            image: "localhost/virt-launcher:1".into(),
            kvm: KvmAccess::Privileged,
            node_state_dir: "/var/lib/virt-rs/".into(),
        };
        let pod = launcher_pod(&vmi(), &cfg);
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        assert_eq!(req["memory"].0, ((1u64 << 30) + (192 << 20) + 2 * (8 << 20)).to_string());
        assert_eq!(req["cpu"].0, "200m");
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[DOMAIN_LABEL], "demo");
        assert_eq!(labels[CREATED_BY], "u-9");
        assert!(!labels.contains_key(NODE_NAME_LABEL));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == "/var/lib/virt-rs/vmis/u-9"), "{mounts:?}");
        let vols = pod.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let run = vols.iter().find(|v| v.name == "run-dir").unwrap();
        assert_eq!(
            run.host_path.as_ref().unwrap().path,
            "/var/lib/virt-rs/vmis/u-9",
            "same path as on the host"
        );
        let claim = vols.iter().find(|v| v.name == "pvc-root").unwrap();
        assert_eq!(claim.persistent_volume_claim.as_ref().unwrap().claim_name, "root-dv");
        assert!(mounts
            .iter()
            .any(|m| m.name == "pvc-root" && m.mount_path == "/var/run/kubevirt-private/vmi-disks/root"));
        let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("VirtualMachineInstance", "u-9", Some(true))
        );
        let plugin = launcher_pod(&vmi(), &LauncherConfig { kvm: KvmAccess::DevicePlugin, ..cfg });
        let c = &plugin.spec.as_ref().unwrap().containers[0];
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["devices.kubevirt.io/kvm"].0, "1");
        assert!(!limits.contains_key(TUN_RESOURCE), "no interfaces, no tun");
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(sc.capabilities.as_ref().unwrap().add.as_deref(), Some(&["SYS_ADMIN".to_string()][..]));
        assert!(c.env.as_ref().unwrap().iter().any(|e| e.name == POD_CGROUP_ENV));
    }

    #[test]
    fn a_migration_target_pod_has_its_own_run_dir_starts_incoming_and_prefers_another_host() {
        let cfg = LauncherConfig {
            image: "localhost/virt-launcher:1".into(),
            kvm: KvmAccess::DevicePlugin,
            node_state_dir: "/var/lib/virt-rs".into(),
        };
        let pod = migration_target_pod(&vmi(), &cfg, "abcd1234-ffff");
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[MIGRATION_JOB_LABEL], "abcd1234-ffff");
        assert_eq!(labels[CREATED_BY], "u-9", "the VMI's pod, as the controller counts them");
        let spec = pod.spec.as_ref().unwrap();
        let vols = spec.volumes.as_ref().unwrap();
        let path =
            |n: &str| vols.iter().find(|v| v.name == n).unwrap().host_path.as_ref().unwrap().path.clone();
        assert_eq!(path("run-dir"), "/var/lib/virt-rs/vmis/u-9-mig-abcd1234");
        assert_eq!(path("vmi-dir"), "/var/lib/virt-rs/vmis/u-9", "the first run dir: the spec's volumes");
        let c = &spec.containers[0];
        let env =
            |n: &str| c.env.as_ref().unwrap().iter().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(env("VIRT_RUN_DIR").as_deref(), Some("/var/lib/virt-rs/vmis/u-9-mig-abcd1234"));
        assert_eq!(env(INCOMING_ENV).as_deref(), Some("1"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.name == "vmi-dir" && m.mount_path == "/var/lib/virt-rs/vmis/u-9"));
        let anti = spec.affinity.as_ref().unwrap().pod_anti_affinity.as_ref().unwrap();
        assert!(anti.required_during_scheduling_ignored_during_execution.is_none(), "one node still fits");
        let term = &anti.preferred_during_scheduling_ignored_during_execution.as_ref().unwrap()[0];
        assert_eq!(term.pod_affinity_term.topology_key, "kubernetes.io/hostname");
        assert!(spec.affinity.as_ref().unwrap().node_affinity.is_none(), "no node-local disk: any node");
    }

    #[test]
    fn a_vmi_with_node_local_disks_moves_within_its_node() {
        let cfg = LauncherConfig {
            image: "localhost/virt-launcher:1".into(),
            kvm: KvmAccess::DevicePlugin,
            node_state_dir: "/var/lib/virt-rs".into(),
        };
        let mut v = vmi();
        let volume = |y: &str| serde_json::from_value(serde_json::from_str(y).unwrap()).unwrap();
        v.obj.spec.volumes.push(volume(r#"{"name": "root", "containerDisk": {"image": "r/i:1"}}"#));
        v.obj.spec.volumes.push(volume(r#"{"name": "seed", "cloudInitNoCloud": {"userData": "x"}}"#));
        v.obj.spec.volumes.push(volume(r#"{"name": "scratch", "emptyDisk": {"capacity": "1Gi"}}"#));
        assert_eq!(node_local_disks(&v.obj), ["root", "scratch"]);
        v.obj.status.get_or_insert_with(Default::default).node_name = Some("node-a".into());
        let pod = migration_target_pod(&v, &cfg, "abcd1234-ffff");
        let aff = pod.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let term = &aff.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms[0];
        let req = &term.match_expressions.as_ref().unwrap()[0];
        assert_eq!((req.key.as_str(), req.operator.as_str()), ("kubernetes.io/hostname", "In"));
        assert_eq!(req.values.as_deref(), Some(&["node-a".to_string()][..]));
    }

    #[test]
    fn the_active_pod_follows_the_migration_state() {
        let named = |n: &str, target: bool| {
            let mut p = Pod::default();
            p.metadata.name = Some(n.into());
            if target {
                p.metadata.labels =
                    Some(BTreeMap::from([(MIGRATION_JOB_LABEL.to_string(), "m".to_string())]));
            }
            p
        };
        let pods = vec![named("target", true), named("first", false)];
        let mut status = VirtualMachineInstanceStatus::default();
        let name =
            |s: &VirtualMachineInstanceStatus| active_pod(&pods, s).and_then(|p| p.metadata.name.clone());
        assert_eq!(name(&status).as_deref(), Some("first"), "no migration: the first pod");
        status.migration_state = Some(virt_core::model::MigrationState {
            source_pod: Some("first".into()),
            target_pod: Some("target".into()),
            completed: Some(false),
            ..Default::default()
        });
        assert_eq!(name(&status).as_deref(), Some("first"), "under way: the source");
        status.migration_state.as_mut().unwrap().completed = Some(true);
        assert_eq!(name(&status).as_deref(), Some("target"), "moved: the target");
        status.migration_state.as_mut().unwrap().failed = Some(true);
        assert_eq!(name(&status).as_deref(), Some("first"), "failed: the source runs on");
    }

    #[test]
    fn pod_states_map_to_vmi_phases() {
        let mut pod = Pod::default();
        assert_eq!(phase_from_pod(&pod, None), VmiPhase::Scheduling);
        pod.spec = Some(PodSpec { node_name: Some("n".into()), ..Default::default() });
        assert_eq!(phase_from_pod(&pod, None), VmiPhase::Scheduled);
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            phase: Some("Running".into()),
            ..Default::default()
        });
        // Running is the node agent's word (the machine runs), not the pod's.
        assert_eq!(phase_from_pod(&pod, Some(VmiPhase::Scheduled)), VmiPhase::Scheduled);
        assert_eq!(phase_from_pod(&pod, Some(VmiPhase::Running)), VmiPhase::Running);
        pod.status.as_mut().unwrap().phase = Some("Failed".into());
        assert_eq!(phase_from_pod(&pod, Some(VmiPhase::Running)), VmiPhase::Failed);
    }
}
