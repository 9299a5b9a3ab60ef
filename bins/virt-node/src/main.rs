//! `virt-node`: the local node daemon. Parsing and wiring only; the node is `virt_k8s::node`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use virt_k8s::node::{Allowed, MigrationSettings, Node, NodeConfig};

/// Serves KubeVirt's API for the VMs of this machine, each run by its own virt-launcher.
///
/// Stopping or killing the daemon leaves running VMs running; a restarted daemon finds them again.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// State directory (object store, VM run directories, image cache).
    #[arg(long, env = "VIRT_NODE_STATE", default_value = "/var/lib/virt-node")]
    state_dir: PathBuf,
    /// The API's unix socket.
    #[arg(long, env = "VIRT_NODE_SOCKET", default_value = "/run/virt-node/node.sock")]
    socket: PathBuf,
    /// Also serve HTTPS on this TCP address (needs --token-file); writes <state-dir>/kubeconfig.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// File holding the bearer token TCP clients must send (the user `admin`, every namespace).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// TCP users with KubeVirt's roles per namespace (YAML: users: [{name, token | tokenSha256,
    /// role: view|edit|admin, namespaces: [..]}]); see docs/security.md.
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// The TCP listener's TLS certificate (PEM; with --tls-key). Without it the node makes a CA and
    /// a certificate under <state-dir>/tls/ on first start.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The TCP listener's TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The virt-launcher binary (default: next to this one, else on PATH).
    #[arg(long)]
    launcher: Option<PathBuf>,
    /// Allow software emulation where hardware KVM is missing (KubeVirt's useEmulation).
    #[arg(long, env = "VIRT_NODE_ALLOW_EMULATION")]
    allow_emulation: bool,
    /// Force the machine backend for every VM.
    #[arg(long, value_parser = ["native", "qemu"])]
    backend: Option<String>,
    /// A registry reached over plain HTTP (repeatable), e.g. 127.0.0.1:5000.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Node name shown in VMI status.
    #[arg(long, default_value = "localhost")]
    node_name: String,
    /// Allow hostDisk volumes whose image files lie under DIR (repeatable). Without it hostDisk is
    /// refused, as KubeVirt refuses it while its HostDisk feature gate is off: a host path in a
    /// manifest lets whoever can create VMs read and write that file as root.
    #[arg(long = "host-disk-dir", value_name = "DIR")]
    host_disk_dirs: Vec<PathBuf>,
    /// Let imports and pulls reach IP or IP:PORT (repeatable), which the node otherwise refuses
    /// when it is link-local (e.g. 169.254.169.254) or one of the node's own listeners.
    #[arg(long = "import-allow", value_name = "IP[:PORT]")]
    import_allow: Vec<Allowed>,
    /// Live migrations under way at once (KubeVirt's parallelMigrationsPerCluster); more wait in
    /// Pending, oldest first.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    parallel_migrations_per_cluster: u16,
    /// Live migrations under way at once out of this node (KubeVirt's
    /// parallelOutboundMigrationsPerNode); on one node the smaller of the two limits binds.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    parallel_outbound_migrations_per_node: u16,
    /// The most bytes per second a live migration sends while the guest runs (KubeVirt's
    /// bandwidthPerMigration), e.g. 64Mi; 0: unlimited.
    #[arg(long = "migration-bandwidth", value_name = "QUANTITY", default_value = "0")]
    migration_bandwidth: virt_core::api::Quantity,
    /// Cancel a live migration still copying after this many seconds per GiB of guest memory
    /// (KubeVirt's completionTimeoutPerGiB); the source runs on. 0: no timeout.
    #[arg(long = "migration-completion-timeout-per-gib", value_name = "SECONDS", default_value_t = 150)]
    migration_completion_timeout_per_gib: u64,
    /// Let live migrations throttle the guest's vCPUs when pre-copy does not converge (KubeVirt's
    /// allowAutoConverge; QEMU's auto-converge, the native VMM's vCPU throttle). A
    /// MigrationPolicy matching a VMI overrides these three settings for its migrations.
    #[arg(long = "migration-allow-auto-converge")]
    migration_allow_auto_converge: bool,
    /// At a live migration's completion timeout switch to post-copy instead of cancelling
    /// (KubeVirt's allowPostCopy; QEMU backend: the guest runs on the destination, which fetches
    /// the pages it lacks; a broken stream then loses the guest).
    #[arg(long = "migration-allow-post-copy")]
    migration_allow_post_copy: bool,
    /// At a live migration's completion timeout do not cancel: switch to post-copy if allowed,
    /// else pause the guest to complete (KubeVirt's allowWorkloadDisruption). Default: the value
    /// of --migration-allow-post-copy.
    #[arg(long = "migration-allow-workload-disruption", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    migration_allow_workload_disruption: Option<bool>,
    /// Abort a live migration whose data left to send has not decreased for this many seconds
    /// (KubeVirt's progressTimeout); the source runs on. 0: never.
    #[arg(long = "migration-progress-timeout", value_name = "SECONDS", default_value_t = 150)]
    migration_progress_timeout: u64,
    /// Give VMIs the pod network: a network namespace per VMI joined to the node bridge
    /// `virt-pods` (10.244.0.0/16), masquerade and bridge bindings with a DHCP server per
    /// interface, NetworkAttachmentDefinitions for Multus networks, MACs from the pool. Without
    /// it interfaces are not linked to anything.
    #[arg(long)]
    pod_network: bool,
    /// Put the node side of the pod network (its bridge, the pods' veths) in this network
    /// namespace instead of the node's own (tests, or a node that keeps VMs off its host network).
    #[arg(long, value_name = "NAME", requires = "pod_network")]
    pod_netns: Option<String>,
    /// The MAC pool's range, FIRST-LAST (default 02:00:00:00:00:00-02:00:00:ff:ff:ff).
    #[arg(long, value_name = "FIRST-LAST", requires = "pod_network")]
    mac_range: Option<String>,
}

/// A `--mac-range` that is not `FIRST-LAST` of two MAC addresses.
#[derive(Debug, thiserror::Error)]
enum MacRangeError {
    /// No `-` between two addresses.
    #[error("--mac-range {0:?}: expected FIRST-LAST")]
    Shape(String),
    /// One end is not a MAC address (the error names it).
    #[error("--mac-range: {0}")]
    Mac(#[from] virt_core::net::MacParseError),
}

fn mac_range(s: &str) -> Result<(virt_core::net::MacAddr, virt_core::net::MacAddr), MacRangeError> {
    let (a, b) =
        s.split_once('-').filter(|_| s.contains(':')).ok_or_else(|| MacRangeError::Shape(s.into()))?;
    Ok((a.parse()?, b.parse()?))
}

fn default_launcher() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("virt-launcher")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("virt-launcher"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let a = Args::parse();
    let token = match &a.token_file {
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) => {
                eprintln!("virt-node: reading the token file {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let pod_network = if a.pod_network {
        let mut pn =
            virt_k8s::node::network::PodNetworkConfig { node_netns: a.pod_netns, ..Default::default() };
        if let Some(r) = &a.mac_range {
            match mac_range(r) {
                Ok(r) => pn.mac_range = r,
                Err(e) => {
                    eprintln!("virt-node: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Some(pn)
    } else {
        None
    };
    let cfg = NodeConfig {
        node_name: a.node_name,
        state_dir: a.state_dir,
        socket: a.socket,
        listen: a.listen,
        token,
        users_file: a.users_file,
        tls: a.tls_cert.zip(a.tls_key),
        launcher: a.launcher.unwrap_or_else(default_launcher),
        allow_emulation: a.allow_emulation,
        backend: a.backend,
        insecure_registries: a.insecure_registries,
        host_disk_dirs: a.host_disk_dirs,
        import_allow: a.import_allow,
        parallel_migrations_per_cluster: a.parallel_migrations_per_cluster.into(),
        parallel_outbound_migrations_per_node: a.parallel_outbound_migrations_per_node.into(),
        migration: MigrationSettings {
            bandwidth_per_migration: Some(a.migration_bandwidth),
            completion_timeout_per_gib: a.migration_completion_timeout_per_gib,
            allow_auto_converge: a.migration_allow_auto_converge,
            progress_timeout: a.migration_progress_timeout,
            allow_post_copy: a.migration_allow_post_copy,
            allow_workload_disruption: a
                .migration_allow_workload_disruption
                .unwrap_or(a.migration_allow_post_copy),
        },
        tick: Duration::from_millis(500),
        pod_network,
    };
    let node = match Node::open(cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("virt-node: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = async {
        virt_k8s::shutdown_signal().await;
        log::info!("virt-node: shutting down; running VMs keep running");
    };
    match node.run(shutdown) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virt-node: {e}");
            ExitCode::FAILURE
        }
    }
}
