//! virt-controller: KubeVirt's controller for a Kubernetes cluster. Parsing and wiring only; the
//! logic is in `virt_k8s::cluster`.
//!
//! ```text
//! virt-controller install-crds [--kubeconfig F]    apply the CRDs (server-side apply; idempotent)
//! virt-controller print-crds                       the CRDs as a JSON List (kubectl apply -f -)
//! virt-controller print-manifests [--image I] ...  Deployment, DaemonSet, RBAC (kubectl apply -f -)
//! virt-controller run [--kubeconfig F] [--launcher-image I] [--kvm privileged|device-plugin]
//!                    [--node-state-dir D] [--leader-elect=true|false]
//!                    [--leader-elect-lease NAMESPACE/NAME]
//!                    [--importer-image I] [--insecure-registry HOST:PORT ...]
//!                    [--local-storage-dir D] [--local-storage-node N]
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use virt_k8s::cluster::controller::{ProvisionerConfig, Settings};
use virt_k8s::cluster::importer::ImporterConfig;
use virt_k8s::cluster::{self, crd, deploy, leader, pod};

#[derive(Parser)]
#[command(name = "virt-controller", about = "KubeVirt's controller for a Kubernetes cluster")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the project's CRDs and wait until they are Established.
    InstallCrds {
        /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
    },
    /// Print the CRDs as a JSON List.
    PrintCrds,
    /// Print the components' manifests (namespace kubevirt, RBAC, virt-controller's Deployment,
    /// virt-handler's DaemonSet) as a JSON List, for `kubectl apply -f -`.
    PrintManifests {
        /// The image with /usr/bin/virt-controller and /usr/bin/virt-handler.
        #[arg(long, default_value = "localhost/virt-rs:dev")]
        image: String,
        /// The launcher pods' image.
        #[arg(long, default_value = "localhost/virt-launcher:dev")]
        launcher_image: String,
        /// virt-controller replicas (one leads).
        #[arg(long, default_value_t = 2)]
        replicas: u32,
        /// Let launchers use software emulation where KVM is unusable.
        #[arg(long)]
        allow_emulation: bool,
        /// The kubelet's device-plugins directory on the nodes (`<kubelet --root-dir>/device-plugins`),
        /// mounted into virt-handler.
        #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
        device_plugins_dir: String,
    },
    /// Run the VM and VMI controllers until SIGINT or SIGTERM.
    Run {
        /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The launcher pods' image (imported into the nodes' containerd; never pulled).
        #[arg(long, default_value = "localhost/virt-launcher:dev")]
        launcher_image: String,
        /// How launchers get /dev/kvm: a privileged container, or an unprivileged one requesting
        /// devices.kubevirt.io/kvm (and /tun) from virt-handler's device plugins.
        #[arg(long, value_enum, default_value_t = Kvm::DevicePlugin)]
        kvm: Kvm,
        /// The node agents' state directory (virt-handler --state-dir), mounted into launcher pods.
        #[arg(long, default_value = "/var/lib/virt-rs-handler")]
        node_state_dir: String,
        /// Run the controllers only while holding the Lease (several replicas are safe).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        leader_elect: bool,
        /// The Lease's namespace and name.
        #[arg(long, default_value = "kube-system/virt-controller")]
        leader_elect_lease: String,
        /// The DataVolume importer pods' image (imported into the nodes' containerd; never
        /// pulled; scripts/k8s/importer-image.sh).
        #[arg(long, default_value = "localhost/virt-importer:dev")]
        importer_image: String,
        /// Registries importer pods reach over plain HTTP (DataVolumes' registry sources).
        #[arg(long = "insecure-registry")]
        insecure_registries: Vec<String>,
        /// Provision claims of StorageClass virt-rs-local as hostPath volumes in this directory
        /// of a node (created as the cluster's default class); empty: no provisioner.
        #[arg(long, default_value = "/var/lib/virt-rs-storage")]
        local_storage_dir: PathBuf,
        /// The node the provisioner puts volumes on (default: the scheduler's choice for
        /// WaitForFirstConsumer claims, else the first node by name).
        #[arg(long)]
        local_storage_node: Option<String>,
        /// The Secret (NAMESPACE/NAME) with the TLS material the node agents' migration proxies
        /// use between nodes: made if missing (virt-handler --migration-secret reads it).
        #[arg(long, default_value = cluster::migration_certs::DEFAULT_SECRET)]
        migration_secret: cluster::migration_certs::SecretRef,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kvm {
    Privileged,
    DevicePlugin,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::PrintCrds => {
            let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": crd::all_crds() });
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Command::PrintManifests { image, launcher_image, replicas, allow_emulation, device_plugins_dir } => {
            let c = deploy::Components {
                image,
                launcher_image,
                controller_replicas: replicas,
                allow_emulation,
                device_plugins_dir,
                ..Default::default()
            };
            let list =
                serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": deploy::manifests(&c) });
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Command::InstallCrds { kubeconfig } => {
            let client = cluster::client_as(kubeconfig.as_deref(), "virt-controller").await?;
            for name in crd::install_crds(&client, Duration::from_secs(120)).await? {
                println!("customresourcedefinition.apiextensions.k8s.io/{name} applied");
            }
        }
        Command::Run {
            kubeconfig,
            launcher_image,
            kvm,
            node_state_dir,
            leader_elect,
            leader_elect_lease,
            importer_image,
            insecure_registries,
            local_storage_dir,
            local_storage_node,
            migration_secret,
        } => {
            let client = cluster::client_as(kubeconfig.as_deref(), "virt-controller").await?;
            let kvm = match kvm {
                Kvm::Privileged => pod::KvmAccess::Privileged,
                Kvm::DevicePlugin => pod::KvmAccess::DevicePlugin,
            };
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                virt_k8s::shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            let stopped = move || {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|s| *s).await;
                }
            };
            let elector = if leader_elect {
                let (ns, name) = leader_elect_lease.split_once('/').ok_or_else(|| {
                    format!("--leader-elect-lease {leader_elect_lease}: expected NAMESPACE/NAME")
                })?;
                let elector = leader::Elector::new(client.clone(), ns, name, identity());
                log::info!("virt-controller {}: waiting for lease {ns}/{name}", elector.identity);
                tokio::select! {
                    r = elector.acquire() => r?,
                    _ = stopped() => return Ok(()),
                }
                Some(elector)
            } else {
                None
            };
            log::info!("virt-controller: watching VirtualMachines and VirtualMachineInstances");
            let settings = Settings {
                launcher: pod::LauncherConfig { image: launcher_image, kvm, node_state_dir },
                importer: Some(ImporterConfig { image: importer_image, insecure_registries }),
                provisioner: (!local_storage_dir.as_os_str().is_empty())
                    .then_some(ProvisionerConfig { dir: local_storage_dir, node: local_storage_node }),
                migration_secret: Some(migration_secret),
            };
            let controllers = cluster::controller::run(client, settings, stopped());
            match elector {
                Some(elector) => tokio::select! {
                    _ = controllers => {}
                    // Leadership lost: stop at once (the controllers are dropped mid-flight; the
                    // next leader reconciles from the cluster's state).
                    e = elector.hold() => return Err(e.into()),
                },
                None => controllers.await,
            }
        }
    }
    Ok(())
}

/// This replica's identity in the Lease: the pod's name (`POD_NAME`, from the Deployment's
/// downward API), else the host name and the process id.
fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME") {
        return pod;
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}_{}", host.trim(), std::process::id())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virt-controller: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virt-controller: {e}");
            ExitCode::FAILURE
        }
    }
}
