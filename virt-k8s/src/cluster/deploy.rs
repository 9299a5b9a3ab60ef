//! The manifests that run the project's components in a cluster, as KubeVirt's operator deploys
//! them: namespace `kubevirt`, service accounts and RBAC, virt-controller as a Deployment (two
//! replicas; one leads through the Lease, see [`super::leader`]) and virt-handler as a DaemonSet
//! (one per node, privileged, host network and the node's state directory as a hostPath, serving
//! the subresources API at the node's address and the kubelet device plugins for `/dev/kvm` and
//! `/dev/net/tun` in the kubelet's device-plugins directory, a hostPath too; launcher pods are
//! unprivileged and request those resources). `virt-controller print-manifests` prints them
//! as a JSON List for `kubectl apply -f -`.

use serde_json::{json, Value};

/// What the manifests vary on.
#[derive(Debug, Clone)]
pub struct Components {
    /// The image holding `virt-controller` and `virt-handler` at `/usr/bin`.
    pub image: String,
    /// The launcher pods' image.
    pub launcher_image: String,
    /// virt-handler's state directory on every node (mounted into launcher pods).
    pub node_state_dir: String,
    /// virt-controller replicas.
    pub controller_replicas: u32,
    /// The port virt-handler serves `subresources.kubevirt.io` on (host network).
    pub subresources_port: u16,
    /// The port virt-handler's migration proxy listens on (host network; migrations between
    /// nodes).
    pub migration_port: u16,
    /// Launchers may use software emulation where KVM is unusable.
    pub allow_emulation: bool,
    /// The kubelet's device-plugins directory on every node (`<kubelet --root-dir>/device-plugins`).
    pub device_plugins_dir: String,
}

impl Default for Components {
    fn default() -> Self {
        Self {
            image: "localhost/virt-rs:dev".into(),
            launcher_image: "localhost/virt-launcher:dev".into(),
            node_state_dir: "/var/lib/virt-rs-handler".into(),
            controller_replicas: 2,
            subresources_port: 8186,
            migration_port: 8187,
            allow_emulation: false,
            device_plugins_dir: super::device_plugin::DEFAULT_DIR.into(),
        }
    }
}

/// The namespace of the components.
pub const NAMESPACE: &str = "kubevirt";
/// The Secret with the migration proxy's TLS material, in [`NAMESPACE`].
pub const MIGRATION_SECRET: &str = "virt-rs-migration-certs";

fn rbac(name: &str, rules: Value) -> [Value; 3] {
    [
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": { "name": name, "namespace": NAMESPACE } }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": { "name": format!("kubevirt-{name}") }, "rules": rules,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": { "name": format!("kubevirt-{name}") },
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("kubevirt-{name}") },
            "subjects": [{ "kind": "ServiceAccount", "name": name, "namespace": NAMESPACE }],
        }),
    ]
}

fn env(name: &str, field: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field } } })
}

/// The manifests, in the order they apply.
pub fn manifests(c: &Components) -> Vec<Value> {
    let all = json!(["get", "list", "watch", "create", "update", "patch", "delete"]);
    let read = json!(["get", "list", "watch"]);
    let mut out = vec![json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": NAMESPACE } })];
    out.extend(rbac(
        "virt-controller",
        json!([
            { "apiGroups": ["kubevirt.io"], "resources": ["*"], "verbs": all },
            { "apiGroups": ["cdi.kubevirt.io", "instancetype.kubevirt.io"], "resources": ["*"], "verbs": all },
            { "apiGroups": ["migrations.kubevirt.io"], "resources": ["migrationpolicies"], "verbs": read },
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": read },
            { "apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "persistentvolumes"], "verbs": all },
            // The importer pods' progress lines.
            { "apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"] },
            // The local provisioner: its StorageClass, the node of a new volume.
            { "apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "create"] },
            { "apiGroups": [""], "resources": ["nodes"], "verbs": read },
            { "apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all },
            // Evacuation: the disruption budgets of VMIs that migrate on eviction.
            { "apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": all },
            { "apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": all },
            // The migration proxy's TLS material (cluster::migration_certs), made if missing.
            { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] },
            { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [MIGRATION_SECRET], "verbs": ["get"] },
        ]),
    ));
    out.extend(rbac(
        "virt-handler",
        json!([
            { "apiGroups": ["kubevirt.io"], "resources": ["virtualmachineinstances", "virtualmachineinstances/status"],
              "verbs": ["get", "list", "watch", "update", "patch"] },
            // The VM verbs of the subresources API (start, stop, restart; migrate reads the VM).
            { "apiGroups": ["kubevirt.io"], "resources": ["virtualmachines", "virtualmachines/status"],
              "verbs": ["get", "update"] },
            // Live migrations: carried out (their status), and created by the `migrate` subresource.
            { "apiGroups": ["kubevirt.io"],
              "resources": ["virtualmachineinstancemigrations", "virtualmachineinstancemigrations/status"],
              "verbs": ["get", "list", "watch", "create", "update", "patch"] },
            { "apiGroups": ["migrations.kubevirt.io"], "resources": ["migrationpolicies"], "verbs": read },
            // The eviction webhook reads the pod an eviction is for.
            { "apiGroups": [""], "resources": ["pods"], "verbs": read },
            { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["extension-apiserver-authentication"],
              "verbs": ["get"] },
            { "apiGroups": [""], "resources": ["namespaces", "services", "endpoints"], "verbs": all },
            { "apiGroups": ["apiregistration.k8s.io"], "resources": ["apiservices"], "verbs": all },
            { "apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"],
              "verbs": all },
            // Its Node's annotation with the address other agents forward subresources to.
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"] },
            // A claim's disk on the node; the local provisioner's released volumes.
            { "apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": read },
            { "apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "watch", "delete"] },
            // The migration proxy's TLS material.
            { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [MIGRATION_SECRET], "verbs": ["get"] },
        ]),
    ));
    let labels = |app: &str| json!({ "kubevirt.io": app });
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "virt-controller", "namespace": NAMESPACE, "labels": labels("virt-controller") },
        "spec": {
            "replicas": c.controller_replicas,
            "selector": { "matchLabels": labels("virt-controller") },
            "template": {
                "metadata": { "labels": labels("virt-controller") },
                "spec": {
                    "serviceAccountName": "virt-controller",
                    "containers": [{
                        "name": "virt-controller", "image": c.image, "imagePullPolicy": "IfNotPresent",
                        "command": ["/usr/bin/virt-controller", "run",
                            "--launcher-image", c.launcher_image,
                            "--node-state-dir", c.node_state_dir,
                            "--kvm", "device-plugin",
                            "--leader-elect-lease", format!("{NAMESPACE}/virt-controller"),
                            "--migration-secret", format!("{NAMESPACE}/{MIGRATION_SECRET}")],
                        "env": [env("POD_NAME", "metadata.name")],
                        "resources": { "requests": { "cpu": "10m", "memory": "64Mi" } },
                    }],
                },
            },
        },
    }));
    let mut handler_cmd = vec![
        json!("/usr/bin/virt-handler"),
        json!("--state-dir"),
        json!(c.node_state_dir),
        json!("--subresources-listen"),
        json!(format!("0.0.0.0:{}", c.subresources_port)),
        json!("--subresources-advertise"),
        json!("$(HOST_IP)"),
        json!("--device-plugins-dir"),
        json!(c.device_plugins_dir),
        // Live migrations between nodes: the agents' migration proxy.
        json!("--migration-listen"),
        json!(format!("0.0.0.0:{}", c.migration_port)),
        json!("--migration-advertise"),
        json!("$(HOST_IP)"),
        json!("--migration-secret"),
        json!(format!("{NAMESPACE}/{MIGRATION_SECRET}")),
    ];
    if c.allow_emulation {
        handler_cmd.push(json!("--allow-emulation"));
    }
    out.push(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": { "name": "virt-handler", "namespace": NAMESPACE, "labels": labels("virt-handler") },
        "spec": {
            "selector": { "matchLabels": labels("virt-handler") },
            "template": {
                "metadata": { "labels": labels("virt-handler") },
                "spec": {
                    "serviceAccountName": "virt-handler",
                    "hostNetwork": true,
                    "hostPID": true,
                    "containers": [{
                        "name": "virt-handler", "image": c.image, "imagePullPolicy": "IfNotPresent",
                        "command": handler_cmd,
                        "env": [env("NODE_NAME", "spec.nodeName"), env("HOST_IP", "status.hostIP")],
                        "securityContext": { "privileged": true },
                        "volumeMounts": [
                            { "name": "state", "mountPath": c.node_state_dir, "mountPropagation": "Bidirectional" },
                            // The kubelet's registration socket and the plugins' sockets.
                            { "name": "device-plugins", "mountPath": c.device_plugins_dir },
                            // The local provisioner's volumes (claims' disk.img, released ones removed).
                            { "name": "local-storage", "mountPath": LOCAL_STORAGE_DIR },
                        ],
                        "resources": { "requests": { "cpu": "10m", "memory": "64Mi" } },
                    }],
                    "volumes": [
                        { "name": "state", "hostPath": { "path": c.node_state_dir, "type": "DirectoryOrCreate" } },
                        { "name": "device-plugins", "hostPath": { "path": c.device_plugins_dir, "type": "DirectoryOrCreate" } },
                        { "name": "local-storage", "hostPath": { "path": LOCAL_STORAGE_DIR, "type": "DirectoryOrCreate" } },
                    ],
                },
            },
        },
    }));
    out
}

/// The local provisioner's directory on the nodes (both components' `--local-storage-dir` default).
pub const LOCAL_STORAGE_DIR: &str = "/var/lib/virt-rs-storage";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handler_runs_on_every_node_with_its_state_dir_and_the_controller_elects_a_leader() {
        let m = manifests(&Components::default());
        let ds = m.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
        let pod = &ds["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][0]["hostPath"]["path"], "/var/lib/virt-rs-handler");
        assert_eq!(pod["containers"][0]["volumeMounts"][0]["mountPath"], "/var/lib/virt-rs-handler");
        let cmd = pod["containers"][0]["command"].to_string();
        assert!(cmd.contains("--subresources-advertise") && cmd.contains("$(HOST_IP)"), "{cmd}");
        assert!(
            cmd.contains(r#""--migration-listen","0.0.0.0:8187","--migration-advertise","$(HOST_IP)""#),
            "{cmd}"
        );
        assert!(cmd.contains(r#""--migration-secret","kubevirt/virt-rs-migration-certs""#), "{cmd}");
        assert!(cmd.contains(r#""--device-plugins-dir","/var/lib/kubelet/device-plugins""#), "{cmd}");
        assert_eq!(pod["volumes"][1]["hostPath"]["path"], "/var/lib/kubelet/device-plugins");
        assert_eq!(pod["containers"][0]["volumeMounts"][1]["mountPath"], "/var/lib/kubelet/device-plugins");
        let dep = m.iter().find(|o| o["kind"] == "Deployment").unwrap();
        assert_eq!(dep["spec"]["replicas"], 2);
        assert!(dep["spec"]["template"]["spec"]["containers"][0]["command"]
            .to_string()
            .contains("kubevirt/virt-controller"));
        assert!(dep["spec"]["template"]["spec"]["containers"][0]["command"]
            .to_string()
            .contains("device-plugin"));
        // Every namespaced object is in the components' namespace.
        for o in &m {
            if let Some(ns) = o["metadata"]["namespace"].as_str() {
                assert_eq!(ns, NAMESPACE, "{o}");
            }
        }
    }
}
