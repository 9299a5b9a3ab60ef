//! The local node: KubeVirt's objects in a crash-safe store ([`store::RedbStore`]), the lifecycle
//! controller of virt-core, one `virt-launcher` process per VMI ([`runtime::LauncherRuntime`]), and
//! the KubeVirt REST API over a unix socket and, optionally, TCP with a bearer token ([`api`]).
//!
//! The daemon can die at any moment: launchers run in their own process groups and keep their VMs
//! running; a new daemon on the same state directory loads the store and re-attaches to them. Two
//! daemons on one state directory are refused (a lock file).

pub mod api;
pub mod audit;
pub mod auth;
pub mod cdi;
pub mod cdi_api;
pub mod compliance_api;
pub mod core_objects;
pub mod credentials;
pub mod images;
pub mod kube;
pub mod metrics;
pub mod migration_proxy;
pub mod network;
pub mod portforward;
pub mod runtime;
pub mod seed;
pub mod store;
pub mod tls;
pub mod volumes;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virt_core::lifecycle::{Lifecycle, LifecycleOptions};
pub use virt_storage::import::policy::Allowed;
use virt_storage::import::policy::NetPolicy;

pub use runtime::{LauncherConfig, LauncherRuntime, MigrationSettings, TargetLauncher};
pub use store::RedbStore;

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name (VMI `status.nodeName`).
    pub node_name: String,
    /// State directory: `node.redb`, `vmis/<uid>/` run directories, `images/`, `volumes/`.
    pub state_dir: PathBuf,
    /// The API's unix socket.
    pub socket: PathBuf,
    /// Optional TCP listener (bearer token required).
    pub listen: Option<SocketAddr>,
    /// The token for TCP clients: the `admin` user, every namespace.
    pub token: Option<String>,
    /// More TCP users with KubeVirt's roles per namespace ([`auth::Users::load`]).
    pub users_file: Option<PathBuf>,
    /// The TCP listener's certificate and key (PEM); `None`: one made on first start under
    /// `<state>/tls/` ([`tls::ensure`]).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The `virt-launcher` binary.
    pub launcher: PathBuf,
    /// Allow software emulation (KubeVirt's `useEmulation`).
    pub allow_emulation: bool,
    /// Force a machine backend (`native` or `qemu`).
    pub backend: Option<String>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Directories `hostDisk` images may live in (`--host-disk-dir`); empty disables `hostDisk`.
    /// Each must be an existing absolute directory outside the state directory.
    pub host_disk_dirs: Vec<PathBuf>,
    /// Addresses imports and pulls may reach despite the rules of
    /// [`virt_storage::import::policy`] (`--import-allow`): by default the node's own listeners
    /// and link-local addresses are refused.
    pub import_allow: Vec<Allowed>,
    /// How often the controller looks at machines without being woken.
    pub tick: Duration,
    /// Migrations under way at once (`--parallel-migrations-per-cluster`, KubeVirt's default 5).
    pub parallel_migrations_per_cluster: usize,
    /// Migrations under way at once out of this node (`--parallel-outbound-migrations-per-node`,
    /// KubeVirt's default 2).
    pub parallel_outbound_migrations_per_node: usize,
    /// The pod network (`--pod-network`): a network namespace per VMI, masquerade and bridge
    /// bindings, DHCP, MAC pool, NetworkAttachmentDefinitions; `None`: interfaces stay unlinked.
    pub pod_network: Option<network::PodNetworkConfig>,
    /// How VMIs migrate (`--migration-bandwidth`, `--migration-completion-timeout-per-gib`).
    pub migration: runtime::MigrationSettings,
}

/// Errors starting a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A file or socket could not be set up.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Another node daemon holds the state directory.
    #[error("another virt-node already runs on state directory {0}")]
    Locked(String),
    /// The configuration is unusable.
    #[error("{0}")]
    Config(String),
    /// The lifecycle could not load its state.
    #[error(transparent)]
    Lifecycle(#[from] virt_core::lifecycle::LifecycleError),
    /// The TCP listener's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// CDI's store, pool or upload endpoint could not be set up.
    #[error(transparent)]
    Cdi(#[from] cdi::CdiError),
}

fn io<'a>(what: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io { what, path: path.display().to_string(), source }
}

/// The `hostDisk` directories, resolved: each must exist, be a directory, and neither contain nor
/// lie inside the state directory (whose store and run directories are never a guest's disk).
fn host_disk_dirs(cfg: &NodeConfig) -> Result<Vec<PathBuf>, NodeError> {
    let state = std::fs::canonicalize(&cfg.state_dir).map_err(io("resolving", &cfg.state_dir))?;
    let mut out = Vec::new();
    for d in &cfg.host_disk_dirs {
        let real = std::fs::canonicalize(d).map_err(io("resolving the --host-disk-dir", d))?;
        if !real.is_dir() {
            return Err(NodeError::Config(format!("--host-disk-dir {}: not a directory", d.display())));
        }
        if real == std::path::Path::new("/") || state.starts_with(&real) || real.starts_with(&state) {
            return Err(NodeError::Config(format!(
                "--host-disk-dir {}: must not be / nor contain or lie inside the state directory {}",
                d.display(),
                state.display()
            )));
        }
        out.push(real);
    }
    Ok(out)
}

/// Writes `<state>/node-effective.json`, the configuration the node runs with, for the compliance
/// scan ([`crate::compliance`]).
fn write_effective(cfg: &NodeConfig, audit_log: &std::path::Path) -> Result<(), NodeError> {
    let eff = crate::compliance::facts::EffectiveConfig {
        node_name: cfg.node_name.clone(),
        listen: cfg.listen.map(|a| a.to_string()),
        tls: cfg.listen.is_some(),
        token_required: cfg.listen.is_some(),
        socket: cfg.socket.clone(),
        allow_emulation: cfg.allow_emulation,
        host_disk_dirs: cfg.host_disk_dirs.clone(),
        import_allow: cfg
            .import_allow
            .iter()
            .map(|a| match a.port {
                Some(p) => std::net::SocketAddr::new(a.ip, p).to_string(),
                None => a.ip.to_string(),
            })
            .collect(),
        audit_log: Some(audit_log.to_path_buf()),
    };
    let path = crate::compliance::facts::effective_config_path(&cfg.state_dir);
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(&eff).map_err(|e| NodeError::Config(e.to_string()))?;
    std::fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing", &path))
}

/// A node: its lifecycle, launchers and API.
pub struct Node {
    cfg: NodeConfig,
    users: Arc<auth::Users>,
    audit: Arc<audit::AuditLog>,
    lifecycle: Arc<Lifecycle>,
    runtime: Arc<LauncherRuntime>,
    cdi: Arc<cdi::Cdi>,
    store: Arc<RedbStore>,
    /// Where each running VMI's guest is reached (port-forward, ssh): the pod network's
    /// manager, or [`network::NoNetwork`].
    endpoints: Arc<dyn virt_net::endpoint::EndpointLookup>,
    /// The `portforward` subresource: [`Self::endpoints`] and the dialer into VMI namespaces.
    portforward: portforward::PortForwarding,
    objects: Arc<core_objects::CoreObjects>,
    _lock: std::fs::File,
}

impl Node {
    /// Opens the node's state (taking its lock), loads the store and re-attaches to running
    /// launchers.
    pub fn open(cfg: NodeConfig) -> Result<Self, NodeError> {
        let mut users = match &cfg.users_file {
            Some(p) => auth::Users::load(p).map_err(|e| NodeError::Config(e.to_string()))?,
            None => auth::Users::new(),
        };
        if let Some(t) = cfg.token.as_deref().filter(|t| !t.is_empty()) {
            users = users.with(auth::User::new("admin", t, auth::Role::Admin, vec!["*".into()]));
        }
        if cfg.listen.is_some() && users.is_empty() {
            return Err(NodeError::Config(
                "a TCP listener needs a bearer token (--token-file) or users (--users-file)".into(),
            ));
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(io("creating", &cfg.state_dir))?;
        let host_disk_dirs = host_disk_dirs(&cfg)?;
        let mut policy = NetPolicy::new();
        if let Some(addr) = cfg.listen {
            policy = policy.protect(addr);
        }
        for a in &cfg.import_allow {
            policy = policy.allow(*a);
        }
        let net_policy = Arc::new(policy);
        let lock_path = cfg.state_dir.join("node.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        // SAFETY: flock on a descriptor `lock` owns; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(NodeError::Locked(cfg.state_dir.display().to_string()));
        }
        // One store for every kind (an earlier node's cdi.redb is moved into it).
        let store = Arc::new(
            RedbStore::open_state_dir(&cfg.state_dir).map_err(|e| NodeError::Config(e.to_string()))?,
        );
        let runtime = Arc::new(LauncherRuntime::new(LauncherConfig {
            launcher: cfg.launcher.clone(),
            state_dir: cfg.state_dir.clone(),
            allow_emulation: cfg.allow_emulation,
            backend: cfg.backend.clone(),
            insecure_registries: cfg.insecure_registries.clone(),
            registry_ca: None,
            start_timeout: Duration::from_secs(60),
            host_disk_dirs: host_disk_dirs.clone(),
            net_policy: Some(net_policy.clone()),
            migration: cfg.migration.clone(),
        }));
        let endpoints: Arc<dyn virt_net::endpoint::EndpointLookup> = match &cfg.pod_network {
            Some(pn) => {
                let vmis = cfg.state_dir.join("vmis");
                let alive = |n: &virt_net::pod::VmiNet| {
                    virt_core::machine::remote::launcher_running(&vmis.join(&n.uid))
                };
                let net = network::NodeNetwork::open(&cfg.state_dir, pn, store.clone(), &alive)
                    .map_err(|e| NodeError::Config(format!("pod network: {e}")))?;
                let net = Arc::new(net);
                runtime.set_network(net.clone());
                net
            }
            None => Arc::new(network::NoNetwork),
        };
        // CDI: DataVolumes fill `volumes/`; VMIs wait for theirs (docs/node.md, "CDI on the node").
        let cdi = cdi::Cdi::open_with_store(&cfg.state_dir, store.clone(), cfg.insecure_registries.clone())?;
        runtime.set_claims(cdi.clone());
        cdi.set_net_policy(net_policy);
        let mut opts = LifecycleOptions {
            node_name: cfg.node_name.clone(),
            tick: cfg.tick,
            parallel_migrations_per_cluster: cfg.parallel_migrations_per_cluster,
            parallel_outbound_migrations_per_node: cfg.parallel_outbound_migrations_per_node,
            ..LifecycleOptions::default()
        };
        opts.support.host_disk_dirs = host_disk_dirs;
        // Multus networks resolve to the node's NetworkAttachmentDefinitions.
        opts.support.multus = cfg.pod_network.is_some();
        let lifecycle = Arc::new(Lifecycle::new(store.clone(), runtime.clone(), opts)?);
        cdi.attach(lifecycle.clone());
        // Secrets and ConfigMaps: cloud-init and accessCredentials (launches), secretRef and
        // certConfigMap (imports).
        let objects = Arc::new(core_objects::CoreObjects::new(store.clone(), lifecycle.clone()));
        cdi.set_objects(objects.clone());
        runtime.set_objects(objects.clone());
        // The DataVolumes VMs own, for deletions with a propagation policy (held weakly: the CDI
        // controller holds the lifecycle).
        let weak = Arc::downgrade(&cdi);
        let dependents: std::sync::Weak<dyn virt_core::lifecycle::Dependents> = weak;
        lifecycle.set_dependents(dependents);
        let audit_path = cfg.state_dir.join("audit.log");
        let audit = audit::AuditLog::open(&audit_path).map_err(io("opening the audit log", &audit_path))?;
        write_effective(&cfg, audit.path())?;
        let portforward = portforward::PortForwarding::new(endpoints.clone());
        Ok(Self {
            cfg,
            users: Arc::new(users),
            audit,
            lifecycle,
            runtime,
            cdi,
            store,
            endpoints,
            portforward,
            objects,
            _lock: lock,
        })
    }

    /// The lifecycle (for embedders that add their own API).
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// Where running VMIs' guests are reached (the pod network's [`virt_net::endpoint::EndpointLookup`]).
    pub fn endpoints(&self) -> &Arc<dyn virt_net::endpoint::EndpointLookup> {
        &self.endpoints
    }

    /// Replaces where `portforward` finds each VMI's guest (embedders with their own network).
    pub fn with_endpoints(mut self, endpoints: Arc<dyn virt_net::endpoint::EndpointLookup>) -> Self {
        self.portforward.endpoints = endpoints.clone();
        self.endpoints = endpoints;
        self
    }

    /// The CDI controller (DataVolumes, DataSources, DataImportCrons, uploads).
    pub fn cdi(&self) -> &Arc<cdi::Cdi> {
        &self.cdi
    }

    /// Writes `<state>/kubeconfig` (mode 0600): the TCP listener at `bound`, its CA, the token,
    /// a context named for the node. kubectl and virtctl both read it (`--kubeconfig`).
    fn write_kubeconfig(
        &self,
        bound: SocketAddr,
        files: &tls::TlsFiles,
        token: &str,
    ) -> Result<(), NodeError> {
        let ca = std::fs::read(&files.ca).map_err(io("reading", &files.ca))?;
        let text = tls::kubeconfig(&self.cfg.node_name, &tls::server_url(bound), &ca, token);
        tls::write_private(&self.cfg.state_dir.join("kubeconfig"), text.as_bytes())?;
        Ok(())
    }

    /// Serves the API and runs the controller until `shutdown` resolves. Running VMs are left
    /// running: a node that stops (or dies) does not take its VMs down.
    pub fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io("starting the async runtime for", &self.cfg.socket))?;
        let stop = Arc::new(AtomicBool::new(false));
        let controller = {
            let lc = self.lifecycle.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("controller".into())
                .spawn(move || lc.run(&stop))
                .map_err(io("starting the controller for", &self.cfg.state_dir))?
        };
        let cdi_controller = {
            let (cdi, stop) = (self.cdi.clone(), stop.clone());
            std::thread::Builder::new()
                .name("cdi".into())
                .spawn(move || cdi.run(&stop))
                .map_err(io("starting the CDI controller for", &self.cfg.state_dir))?
        };
        let credentials = {
            let (lc, rt, stop) = (self.lifecycle.clone(), self.runtime.clone(), stop.clone());
            std::thread::Builder::new()
                .name("credentials".into())
                .spawn(move || credentials::run(&lc, &rt, &stop))
                .map_err(io("starting the access-credentials watcher for", &self.cfg.state_dir))?
        };
        let cdi_routes = cdi_api::router(self.cdi.clone(), self.lifecycle.clone())
            .merge(network::router(self.store.clone()))
            .merge(core_objects::router(self.objects.clone()))
            .merge(compliance_api::router(self.cfg.state_dir.clone()));
        let changes = self.lifecycle.changes().clone();
        let state = api::ApiState {
            lifecycle: self.lifecycle.clone(),
            runtime: self.runtime.clone(),
            portforward: self.portforward.clone(),
            node_name: self.cfg.node_name.as_str().into(),
        };
        let result = rt.block_on(async {
            if let Some(dir) = self.cfg.socket.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            let _ = std::fs::remove_file(&self.cfg.socket);
            let unix = tokio::net::UnixListener::bind(&self.cfg.socket)
                .map_err(io("listening on", &self.cfg.socket))?;
            log::info!("virt-node: serving on unix://{}", self.cfg.socket.display());
            let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
            let mut tasks = Vec::new();
            {
                let mut rx = tx.subscribe();
                let app = self.audit.layer(
                    kube::layer(api::router(state.clone()).merge(cdi_routes.clone()), Some(changes.clone())),
                    audit::Listener::Unix,
                );
                let app = virt_console::mount(app);
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(unix, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.recv().await;
                        })
                        .await;
                }));
            }
            if let Some(addr) = self.cfg.listen {
                let files =
                    tls::ensure(&self.cfg.state_dir, &self.cfg.node_name, addr, self.cfg.tls.clone())?;
                let acceptor = tls::acceptor(&files)?;
                let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Io {
                    what: "listening on",
                    path: addr.to_string(),
                    source,
                })?;
                let bound = tcp.local_addr().map_err(|source| NodeError::Io {
                    what: "listening on",
                    path: addr.to_string(),
                    source,
                })?;
                // The kubeconfig carries the admin token (--token-file); users of --users-file
                // write their own from it.
                if let Some(token) = self.cfg.token.as_deref().filter(|t| !t.is_empty()) {
                    self.write_kubeconfig(bound, &files, token)?;
                }
                let tcp = tls::TlsListener::new(tcp, acceptor).map_err(|source| NodeError::Io {
                    what: "listening on",
                    path: addr.to_string(),
                    source,
                })?;
                log::info!("virt-node: serving on https://{bound} (bearer token required)");
                let mut rx = tx.subscribe();
                // Audited outside the authorisation, so refused requests are recorded too.
                let app = self.audit.layer(
                    auth::layer(
                        self.users.clone(),
                        kube::layer(api::router(state.clone()).merge(cdi_routes), Some(changes.clone())),
                    ),
                    audit::Listener::Tcp,
                );
                // Uploads from the web console's origin; the upload token authorises them.
                let app = virt_console::mount(app).merge(self.cdi.upload_router());
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(tcp, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.recv().await;
                        })
                        .await;
                }));
            }
            {
                let mut rx = tx.subscribe();
                let done = async move {
                    let _ = rx.recv().await;
                };
                tasks.push(self.cdi.serve_uploads(self.cfg.listen, done).await?);
            }
            shutdown.await;
            let _ = tx.send(());
            for t in tasks {
                let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
            }
            Ok::<(), NodeError>(())
        });
        stop.store(true, Ordering::Relaxed);
        self.lifecycle.wake();
        self.cdi.wake();
        let _ = controller.join();
        let _ = cdi_controller.join();
        let _ = credentials.join();
        let _ = std::fs::remove_file(&self.cfg.socket);
        result
    }
}
