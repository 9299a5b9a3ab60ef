//! virt-controller: KubeVirt's controller for a Kubernetes cluster. Parsing and wiring only; the
//! logic is in `virt_k8s::cluster`.
//!
//! ```text
//! virt-controller install-crds [--kubeconfig F]    apply the CRDs (server-side apply; idempotent)
//! virt-controller print-crds                       the CRDs as a JSON List (kubectl apply -f -)
//! virt-controller run [--kubeconfig F] [--launcher-image I] [--kvm privileged|device-plugin]
//!                    [--node-state-dir D]
//! ```

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use virt_k8s::cluster::{self, crd, pod};

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
    /// Run the VM and VMI controllers until SIGINT or SIGTERM.
    Run {
        /// The kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// The launcher pods' image (imported into the nodes' containerd; never pulled).
        #[arg(long, default_value = "localhost/virt-launcher:dev")]
        launcher_image: String,
        /// How launchers get /dev/kvm.
        #[arg(long, value_enum, default_value_t = Kvm::Privileged)]
        kvm: Kvm,
        /// The node agents' state directory (virt-handler --state-dir), mounted into launcher pods.
        #[arg(long, default_value = "/var/lib/virt-rs-handler")]
        node_state_dir: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Kvm {
    Privileged,
    DevicePlugin,
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    match cli.command {
        Command::PrintCrds => {
            let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": crd::all_crds() });
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        Command::InstallCrds { kubeconfig } => {
            let client = cluster::client(kubeconfig.as_deref()).await?;
            for name in crd::install_crds(&client, Duration::from_secs(120)).await? {
                println!("customresourcedefinition.apiextensions.k8s.io/{name} applied");
            }
        }
        Command::Run { kubeconfig, launcher_image, kvm, node_state_dir } => {
            let client = cluster::client(kubeconfig.as_deref()).await?;
            let kvm = match kvm {
                Kvm::Privileged => pod::KvmAccess::Privileged,
                Kvm::DevicePlugin => pod::KvmAccess::DevicePlugin,
            };
            log::info!("virt-controller: watching VirtualMachines and VirtualMachineInstances");
            cluster::controller::run(
                client,
                pod::LauncherConfig { image: launcher_image, kvm, node_state_dir },
                shutdown_signal(),
            )
            .await;
        }
    }
    Ok(())
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
