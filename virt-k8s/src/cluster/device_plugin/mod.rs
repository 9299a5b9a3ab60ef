//! The node agent's kubelet device plugins (KubeVirt's virt-handler serves the same): the extended
//! resources `devices.kubevirt.io/kvm` and `devices.kubevirt.io/tun`, so launcher pods get
//! `/dev/kvm` and `/dev/net/tun` without running privileged.
//!
//! Each resource is one plugin speaking the kubelet's device plugin API v1beta1 ([`api`], gRPC
//! over a unix socket in the kubelet's `device-plugins` directory, `<kubelet --root-dir>/
//! device-plugins/`): it serves `DevicePlugin` on `kubevirt-<name>.sock`, then registers that
//! endpoint and its resource name with the kubelet's `Registration` service on `kubelet.sock`.
//! The kubelet then lists the devices (`ListAndWatch`: a fixed pool of [`DEVICE_COUNT`] devices,
//! as KubeVirt: one device node shared by every pod, the count only caps the pods per node),
//! advertises them in the node's capacity, and calls `Allocate` for each container that requests
//! one: the answer is a `DeviceSpec` putting the host's node into the container with the
//! permissions the devices cgroup grants.
//!
//! Health: the devices are Healthy while the host's node exists, all Unhealthy once it is gone
//! (checked every [`Options::health_interval`]); `ListAndWatch` sends the new list.
//!
//! The kubelet's gRPC-Go (before 1.26) sends the socket's path as HTTP/2 `:authority`, which h2
//! refuses: the served connections go through [`authority`]'s relay, which puts `localhost` there.
//!
//! Kubelet restarts: a starting kubelet removes every socket in the directory, then listens
//! again. The plugin watches its own socket (same inode) and, once it is gone, serves a new one
//! and registers again; a registration that fails (no kubelet yet) is retried.

pub mod api;
mod authority;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Response, Status};

use api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use api::registration_client::RegistrationClient;
use api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse, ContainerPreferredAllocationResponse,
    Device, DevicePluginOptions, DeviceSpec, Empty, ListAndWatchResponse, PreStartContainerRequest,
    PreStartContainerResponse, PreferredAllocationRequest, PreferredAllocationResponse, RegisterRequest,
};

/// The kubelet's registration socket, in the device-plugins directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The kubelet's device-plugins directory below its default `--root-dir` (/var/lib/kubelet).
pub const DEFAULT_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Devices each resource advertises (KubeVirt's count: the launcher pods one node may run).
pub const DEVICE_COUNT: usize = 1000;
/// The KVM resource (KubeVirt's name).
pub const KVM_RESOURCE: &str = "devices.kubevirt.io/kvm";
/// The tun resource (KubeVirt's name): launchers whose VMI has interfaces open `/dev/net/tun`.
pub const TUN_RESOURCE: &str = "devices.kubevirt.io/tun";

/// Errors of a plugin's serving or registration.
#[derive(Debug, thiserror::Error)]
pub enum DevicePluginError {
    /// The plugin's socket could not be made.
    #[error("serving the device plugin on {path}: {source}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet's registration socket did not answer.
    #[error("connecting to the kubelet at {path}: {source}")]
    Connect {
        /// `kubelet.sock`.
        path: PathBuf,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The kubelet refused the registration (or the call failed).
    #[error("registering {resource} with the kubelet: {source}")]
    Register {
        /// The resource name.
        resource: String,
        /// The kubelet's answer.
        #[source]
        source: Box<Status>,
    },
    /// The gRPC server stopped with an error.
    #[error("the device plugin server of {resource}: {source}")]
    Serve {
        /// The resource name.
        resource: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
}

/// One extended resource backed by one host device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceResource {
    /// The resource name pods request (`devices.kubevirt.io/kvm`).
    pub resource: String,
    /// The device node on the host.
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// The devices cgroup permissions the container gets: `rw`. (The launcher's jail makes its
    /// own node of each device, `mknod`: the runtime's default rules already allow `m` on every
    /// device, as measured on the cluster; opening the node is what this grants.)
    pub permissions: String,
    /// The plugin's socket name in the device-plugins directory.
    pub socket: String,
    /// Devices advertised.
    pub count: usize,
    /// The prefix of the devices' ids (`kvm` gives `kvm0` ...).
    pub id_prefix: String,
}

impl DeviceResource {
    fn node(name: &str, resource: &str, path: &str) -> Self {
        Self {
            resource: resource.into(),
            host_path: path.into(),
            container_path: path.into(),
            permissions: "rw".into(),
            socket: format!("kubevirt-{name}.sock"),
            count: DEVICE_COUNT,
            id_prefix: name.into(),
        }
    }

    /// `devices.kubevirt.io/kvm`: `/dev/kvm`.
    pub fn kvm() -> Self {
        Self::node("kvm", KVM_RESOURCE, "/dev/kvm")
    }

    /// `devices.kubevirt.io/tun`: `/dev/net/tun` (the guest's tap in the pod's namespace).
    pub fn tun() -> Self {
        Self::node("tun", TUN_RESOURCE, "/dev/net/tun")
    }

    /// The device list with every device `healthy` or not.
    pub fn devices(&self, healthy: bool) -> Vec<Device> {
        let health = if healthy { api::HEALTHY } else { api::UNHEALTHY };
        (0..self.count)
            .map(|i| Device { id: format!("{}{i}", self.id_prefix), health: health.into(), topology: None })
            .collect()
    }

    fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            container_path: self.container_path.clone(),
            host_path: self.host_path.display().to_string(),
            permissions: self.permissions.clone(),
        }
    }
}

/// Where and how often the plugins work.
#[derive(Debug, Clone)]
pub struct Options {
    /// The kubelet's device-plugins directory (`<kubelet --root-dir>/device-plugins`).
    pub dir: PathBuf,
    /// How often a device's node is checked.
    pub health_interval: Duration,
    /// How often a plugin checks that its socket is still there (the kubelet restarted).
    pub socket_interval: Duration,
    /// The wait before a failed registration is tried again.
    pub retry: Duration,
}

impl Options {
    /// The defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            health_interval: Duration::from_secs(2),
            socket_interval: Duration::from_secs(1),
            retry: Duration::from_secs(3),
        }
    }
}

/// The `DevicePlugin` service of one resource.
#[derive(Clone)]
pub struct Plugin {
    res: Arc<DeviceResource>,
    health: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Plugin {
    /// The service of `res` with the device's health from `health`; its `ListAndWatch` streams
    /// end once `stop` turns true (a server's graceful shutdown waits for open streams).
    pub fn new(res: DeviceResource, health: watch::Receiver<bool>, stop: watch::Receiver<bool>) -> Self {
        Self { res: Arc::new(res), health, stop }
    }
}

/// The stream `ListAndWatch` answers with.
pub type DeviceListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = DeviceListStream;

    async fn list_and_watch(&self, _: Request<Empty>) -> Result<Response<DeviceListStream>, Status> {
        let res = self.res.clone();
        let mut stop = self.stop.clone();
        let stopped = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        // The current health first, then each change.
        let s = WatchStream::new(self.health.clone())
            .map(move |healthy| Ok(ListAndWatchResponse { devices: res.devices(healthy) }))
            .take_until(stopped);
        Ok(Response::new(Box::pin(s)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        // The devices are interchangeable: the ones that must be in, then the first available.
        let container_responses = req
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| {
                let mut ids = c.must_include_device_ids;
                let size = usize::try_from(c.allocation_size).unwrap_or(0);
                for id in c.available_device_ids {
                    if ids.len() >= size {
                        break;
                    }
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ContainerPreferredAllocationResponse { device_ids: ids }
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse { container_responses }))
    }

    async fn allocate(&self, req: Request<AllocateRequest>) -> Result<Response<AllocateResponse>, Status> {
        if !*self.health.borrow() {
            return Err(Status::unavailable(format!(
                "{} is missing: {} cannot be allocated",
                self.res.host_path.display(),
                self.res.resource
            )));
        }
        let container_responses = req
            .into_inner()
            .container_requests
            .iter()
            .map(|_| ContainerAllocateResponse { devices: vec![self.res.spec()], ..Default::default() })
            .collect();
        Ok(Response::new(AllocateResponse { container_responses }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// The options registered (KubeVirt's: neither pre-start calls nor preferred allocations are
/// needed; both are still answered).
fn options() -> DevicePluginOptions {
    DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: false }
}

/// A gRPC channel over the unix socket at `path` (the authority is a placeholder).
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Registers `res` (served on `res.socket`) with the kubelet listening at `kubelet`.
pub async fn register(kubelet: &Path, res: &DeviceResource) -> Result<(), DevicePluginError> {
    let channel = connect_unix(kubelet)
        .await
        .map_err(|source| DevicePluginError::Connect { path: kubelet.to_path_buf(), source })?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: api::VERSION.into(),
            endpoint: res.socket.clone(),
            resource_name: res.resource.clone(),
            options: Some(options()),
        })
        .await
        .map_err(|s| DevicePluginError::Register { resource: res.resource.clone(), source: Box::new(s) })?;
    Ok(())
}

/// Whether `path` exists; sent on the returned channel whenever it changes (checked every
/// `interval` until every receiver is gone).
pub fn watch_node(path: PathBuf, interval: Duration) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(path.exists());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => return,
            }
            let now = path.exists();
            tx.send_if_modified(|h| {
                let changed = *h != now;
                if changed {
                    log::warn!(
                        "device plugin: {} {}",
                        path.display(),
                        if now { "is back" } else { "is gone" }
                    );
                }
                *h = now;
                changed
            });
        }
    });
    rx
}

/// The inode of the socket at `path` (None: gone).
fn inode(path: &Path) -> Option<u64> {
    std::fs::symlink_metadata(path).ok().map(|m| m.ino())
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Why one serving of a plugin ended.
enum Ended {
    /// Its socket was removed (the kubelet restarted): serve again.
    SocketGone,
    /// The agent stops.
    Shutdown,
}

/// Serves `res` on a fresh socket and registers it; returns once the socket is removed or
/// `shutdown` turns true.
async fn serve_once(
    res: &DeviceResource,
    opts: &Options,
    health: &watch::Receiver<bool>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Ended, DevicePluginError> {
    let path = opts.dir.join(&res.socket);
    let bind_err = |source| DevicePluginError::Bind { path: path.clone(), source };
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(&path).map_err(bind_err)?;
    let ino = inode(&path);
    let (stop_tx, stop_rx) = watch::channel(false);
    let service = DevicePluginServer::new(Plugin {
        res: Arc::new(res.clone()),
        health: health.clone(),
        stop: stop_rx.clone(),
    });
    let mut server = tokio::spawn(
        Server::builder()
            .add_service(service)
            // The kubelet's :authority is its socket's path: see `authority`.
            .serve_with_incoming_shutdown(authority::incoming(listener), stopped(stop_rx)),
    );
    let kubelet = opts.dir.join(KUBELET_SOCKET);
    let mut registered = false;
    let mut warned = false;
    let mut shutdown = shutdown.clone();
    let ended = loop {
        if !registered {
            match register(&kubelet, res).await {
                Ok(()) => {
                    registered = true;
                    log::info!(
                        "device plugin: {} registered with the kubelet ({} devices on {})",
                        res.resource,
                        res.count,
                        path.display()
                    );
                }
                Err(e) if !warned => {
                    warned = true;
                    log::warn!("device plugin: {e} (retrying every {:?})", opts.retry);
                }
                Err(_) => {}
            }
        }
        let wait = if registered { opts.socket_interval } else { opts.retry };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break Ok(Ended::Shutdown),
            r = &mut server => {
                break match r {
                    Ok(Err(source)) => Err(DevicePluginError::Serve { resource: res.resource.clone(), source }),
                    // Ended without an error before it was asked to: serve again.
                    _ => Ok(Ended::SocketGone),
                };
            }
        }
        if inode(&path) != ino {
            log::info!(
                "device plugin: {} was removed (the kubelet restarted): serving and registering {} again",
                path.display(),
                res.resource
            );
            break Ok(Ended::SocketGone);
        }
    };
    let _ = stop_tx.send(true);
    if !server.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    if matches!(ended, Ok(Ended::Shutdown)) && inode(&path) == ino {
        let _ = std::fs::remove_file(&path);
    }
    ended
}

/// Serves and registers `res` until `shutdown` turns true, again after each kubelet restart.
pub async fn serve(res: DeviceResource, opts: Options, shutdown: watch::Receiver<bool>) {
    let health = watch_node(res.host_path.clone(), opts.health_interval);
    if !*health.borrow() {
        log::warn!(
            "device plugin: {} is missing: {} starts Unhealthy",
            res.host_path.display(),
            res.resource
        );
    }
    let mut stop = shutdown.clone();
    loop {
        match serve_once(&res, &opts, &health, &shutdown).await {
            Ok(Ended::Shutdown) => return,
            Ok(Ended::SocketGone) => {}
            Err(e) => {
                log::warn!("device plugin: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(opts.retry) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        }
    }
}

/// Serves each of `resources` (see [`serve`]) until `shutdown` resolves.
pub fn start(
    resources: Vec<DeviceResource>,
    opts: Options,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = watch::channel(false);
    let tasks: Vec<_> =
        resources.into_iter().map(|r| tokio::spawn(serve(r, opts.clone(), rx.clone()))).collect();
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
        for t in tasks {
            let _ = t.await;
        }
    })
}
