//! virt-handler: the node agent on a Kubernetes node (KubeVirt's virt-handler; a DaemonSet in a
//! cluster, with hostPath access to its state directory). Parsing and wiring only; the logic is
//! in `virt_k8s::cluster::handler`.
//!
//! ```text
//! virt-handler --node NAME [--kubeconfig F] [--state-dir D] [--allow-emulation]
//!              [--insecure-registry HOST:PORT ...]
//!              [--subresources-listen ADDR [--subresources-advertise IP]]
//!              [--device-plugins-dir D | --no-device-plugins] [--local-storage-dir D]
//!              [--migration-listen ADDR [--migration-advertise IP]] [--migration-secret NS/NAME]
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use virt_k8s::cluster::{self, device_plugin, handler, subresources};
use virt_k8s::node::{LauncherConfig, LauncherRuntime};

#[derive(Parser)]
#[command(name = "virt-handler", about = "KubeVirt's node agent for a Kubernetes node")]
struct Cli {
    /// This node's name (the pods' spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Run directories (`vmis/<uid>`) and the image cache (`images/`); virt-controller's
    /// --node-state-dir.
    #[arg(long, default_value = "/var/lib/virt-rs-handler")]
    state_dir: PathBuf,
    /// Let the launchers use software emulation where KVM is unusable (KubeVirt's useEmulation).
    #[arg(long)]
    allow_emulation: bool,
    /// Registries reached over plain HTTP (containerDisk and kernel-boot pulls).
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Serve `subresources.kubevirt.io/v1` (console, pause, ...) on this address and register it
    /// with the API server as an aggregated API (port 0: any free port).
    #[arg(long)]
    subresources_listen: Option<SocketAddr>,
    /// The address the API server reaches the subresources API at (default: the listen address's).
    #[arg(long, requires = "subresources_listen")]
    subresources_advertise: Option<IpAddr>,
    /// The kubelet's device-plugins directory (`<kubelet --root-dir>/device-plugins`): the
    /// `devices.kubevirt.io/kvm` and `devices.kubevirt.io/tun` device plugins are served and
    /// registered there (virt-controller --kvm device-plugin requests them).
    #[arg(long, default_value = device_plugin::DEFAULT_DIR)]
    device_plugins_dir: PathBuf,
    /// Serve no device plugins (launcher pods then need virt-controller --kvm privileged).
    #[arg(long, conflicts_with = "device_plugins_dir")]
    no_device_plugins: bool,
    /// virt-controller's --local-storage-dir: the volumes of this node whose claim is gone are
    /// deleted from it (directory and PersistentVolume); empty: none are.
    #[arg(long, default_value = "/var/lib/virt-rs-storage")]
    local_storage_dir: PathBuf,
    /// Take part in live migrations between nodes: the migration proxy listens here (port 0:
    /// any free port) for other nodes' agents sending VMs to this node.
    #[arg(long)]
    migration_listen: Option<SocketAddr>,
    /// The IP other nodes reach the migration proxy at (default: the listen address's).
    #[arg(long, requires = "migration_listen")]
    migration_advertise: Option<IpAddr>,
    /// The Secret (NAMESPACE/NAME) with the migration proxy's TLS material (virt-controller
    /// --migration-secret makes it).
    #[arg(long, default_value = cluster::migration_certs::DEFAULT_SECRET)]
    migration_secret: cluster::migration_certs::SecretRef,
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let client = cluster::client_as(cli.kubeconfig.as_deref(), "virt-handler").await?;
    let runtime = LauncherRuntime::new(LauncherConfig {
        // The launcher runs in the VMI's pod; this one is never spawned by the agent.
        launcher: PathBuf::from("/usr/bin/virt-launcher"),
        state_dir: cli.state_dir.clone(),
        allow_emulation: cli.allow_emulation,
        backend: None,
        insecure_registries: cli.insecure_registries,
        registry_ca: None,
        start_timeout: Duration::from_secs(5),
        host_disk_dirs: Vec::new(),
        net_policy: None,
        migration: Default::default(),
    });
    log::info!("virt-handler: serving the VMIs of node {}", cli.node);
    let runtime = Arc::new(runtime);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // VMIs' interfaces in their launcher pods (masquerade on the pod network).
    let networks = Arc::new(cluster::network::PodNetworks::open(&cli.state_dir)?);
    // This agent's identity towards other nodes' agents (migrations, forwarded subresources).
    let peer = handler::incoming::PeerSlot::default();
    let server = subresources::Server {
        client: client.clone(),
        node: cli.node.clone(),
        runtime: runtime.clone(),
        networks: Some(networks.clone()),
        peers: peer.clone(),
    };
    let api = match cli.subresources_listen {
        Some(listen) => {
            let server = server.clone();
            let advertise = cli.subresources_advertise.unwrap_or(listen.ip());
            let mut rx = stop_rx.clone();
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            Some(subresources::start(server, listen, advertise, stopped).await?)
        }
        None => None,
    };
    // /dev/kvm and /dev/net/tun for unprivileged launcher pods (KubeVirt's device plugins).
    let plugins = (!cli.no_device_plugins).then(|| {
        let mut rx = stop_rx.clone();
        device_plugin::start(
            vec![device_plugin::DeviceResource::kvm(), device_plugin::DeviceResource::tun()],
            device_plugin::Options::new(&cli.device_plugins_dir),
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        )
    });
    let mut h = handler::Handler::new(client.clone(), cli.node, runtime).with_networks(networks);
    if let Some(listen) = cli.migration_listen {
        let secret = cli.migration_secret;
        handler::incoming::serve(client, secret, listen, cli.migration_advertise, peer.clone(), Some(server))
            .await?;
        h = h.with_migration_peer(peer);
    }
    if !cli.local_storage_dir.as_os_str().is_empty() {
        h = h.with_storage_dir(cli.local_storage_dir);
    }
    handler::run(h, virt_k8s::shutdown_signal()).await;
    let _ = stop_tx.send(true);
    if let Some(p) = plugins {
        let _ = tokio::time::timeout(Duration::from_secs(10), p).await;
    }
    if let Some(api) = api {
        // Open console sessions hold a graceful shutdown: they get a few seconds.
        let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virt-handler: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virt-handler: {e}");
            ExitCode::FAILURE
        }
    }
}
