//! The local node: KubeVirt's objects in a crash-safe store ([`store::RedbStore`]), the lifecycle
//! controller of virt-core, one `virt-launcher` process per VMI ([`runtime::LauncherRuntime`]), and
//! the KubeVirt REST API over a unix socket and, optionally, TCP with a bearer token ([`api`]).
//!
//! The daemon can die at any moment: launchers run in their own process groups and keep their VMs
//! running; a new daemon on the same state directory loads the store and re-attaches to them. Two
//! daemons on one state directory are refused (a lock file).

pub mod api;
pub mod cdi;
pub mod cdi_api;
pub mod runtime;
pub mod store;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use virt_core::lifecycle::{Lifecycle, LifecycleOptions};

pub use runtime::{LauncherConfig, LauncherRuntime};
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
    /// The token for TCP clients.
    pub token: Option<String>,
    /// The `virt-launcher` binary.
    pub launcher: PathBuf,
    /// Allow software emulation (KubeVirt's `useEmulation`).
    pub allow_emulation: bool,
    /// Force a machine backend (`native` or `qemu`).
    pub backend: Option<String>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How often the controller looks at machines without being woken.
    pub tick: Duration,
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
    /// CDI's store, pool or upload endpoint could not be set up.
    #[error(transparent)]
    Cdi(#[from] cdi::CdiError),
}

fn io<'a>(what: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> NodeError + 'a {
    move |source| NodeError::Io { what, path: path.display().to_string(), source }
}

/// A node: its lifecycle, launchers and API.
pub struct Node {
    cfg: NodeConfig,
    lifecycle: Arc<Lifecycle>,
    runtime: Arc<LauncherRuntime>,
    cdi: Arc<cdi::Cdi>,
    _lock: std::fs::File,
}

impl Node {
    /// Opens the node's state (taking its lock), loads the store and re-attaches to running
    /// launchers.
    pub fn open(cfg: NodeConfig) -> Result<Self, NodeError> {
        if cfg.listen.is_some() && cfg.token.as_deref().is_none_or(str::is_empty) {
            return Err(NodeError::Config("a TCP listener needs a bearer token (--token-file)".into()));
        }
        std::fs::create_dir_all(&cfg.state_dir).map_err(io("creating", &cfg.state_dir))?;
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
        }));
        // CDI: DataVolumes fill `volumes/`; VMIs wait for theirs (docs/node.md, "CDI on the node").
        let cdi = cdi::Cdi::open_with_store(&cfg.state_dir, store.clone(), cfg.insecure_registries.clone())?;
        runtime.set_claims(cdi.clone());
        let opts = LifecycleOptions {
            node_name: cfg.node_name.clone(),
            tick: cfg.tick,
            ..LifecycleOptions::default()
        };
        let lifecycle = Arc::new(Lifecycle::new(store, runtime.clone(), opts)?);
        cdi.attach(lifecycle.clone());
        Ok(Self { cfg, lifecycle, runtime, cdi, _lock: lock })
    }

    /// The lifecycle (for embedders that add their own API).
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// The CDI controller (DataVolumes, DataSources, DataImportCrons, uploads).
    pub fn cdi(&self) -> &Arc<cdi::Cdi> {
        &self.cdi
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
        let cdi_routes = cdi_api::router(self.cdi.clone(), self.lifecycle.clone());
        let state = api::ApiState { lifecycle: self.lifecycle.clone(), runtime: self.runtime.clone() };
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
                let app = api::router(state.clone()).merge(cdi_routes.clone());
                tasks.push(tokio::spawn(async move {
                    let _ = axum::serve(unix, app)
                        .with_graceful_shutdown(async move {
                            let _ = rx.recv().await;
                        })
                        .await;
                }));
            }
            if let (Some(addr), Some(token)) = (self.cfg.listen, self.cfg.token.clone()) {
                let tcp = tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Io {
                    what: "listening on",
                    path: addr.to_string(),
                    source,
                })?;
                log::info!("virt-node: serving on http://{addr} (bearer token required)");
                let mut rx = tx.subscribe();
                let app = api::with_token(api::router(state.clone()).merge(cdi_routes), Arc::new(token));
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
        let _ = std::fs::remove_file(&self.cfg.socket);
        result
    }
}
