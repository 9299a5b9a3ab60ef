//! The plugin's gRPC service through an in-process client on a temporary unix socket, and its
//! registration with a test double of the kubelet's `Registration` service (a small tonic
//! server), also after a kubelet restart removed every socket.

use super::api::device_plugin_client::DevicePluginClient;
use super::api::registration_server::{Registration, RegistrationServer};
use super::api::{AllocateRequest, ContainerAllocateRequest, ContainerPreferredAllocationRequest};
use super::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;

fn fast(dir: &Path) -> Options {
    Options {
        dir: dir.to_path_buf(),
        health_interval: Duration::from_millis(50),
        socket_interval: Duration::from_millis(50),
        retry: Duration::from_millis(100),
    }
}

/// `/dev/kvm` stood in for by a file of the test (removable).
fn kvm_at(node: &Path) -> DeviceResource {
    DeviceResource { host_path: node.to_path_buf(), ..DeviceResource::kvm() }
}

async fn client(path: &Path) -> DevicePluginClient<Channel> {
    DevicePluginClient::new(connect_unix(path).await.unwrap())
}

#[tokio::test]
async fn list_and_watch_lists_the_pool_and_its_health_and_allocate_gives_dev_kvm() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("kvm-node");
    std::fs::write(&node, b"").unwrap();
    let health = watch_node(node.clone(), Duration::from_millis(50));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sock = dir.path().join("plugin.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(
        Server::builder()
            .add_service(DevicePluginServer::new(Plugin::new(kvm_at(&node), health, stop_rx.clone())))
            // Through the relay the kubelet's connections take (see `authority`).
            .serve_with_incoming_shutdown(super::authority::incoming(listener), stopped(stop_rx)),
    );
    let mut c = client(&sock).await;

    let o = c.get_device_plugin_options(Empty {}).await.unwrap().into_inner();
    assert!(!o.pre_start_required && !o.get_preferred_allocation_available);

    let mut devices = c.list_and_watch(Empty {}).await.unwrap().into_inner();
    let first = devices.message().await.unwrap().unwrap().devices;
    assert_eq!(first.len(), DEVICE_COUNT);
    assert_eq!((first[0].id.as_str(), first[999].id.as_str()), ("kvm0", "kvm999"));
    assert!(first.iter().all(|d| d.health == "Healthy"), "{:?}", first[0]);

    let a = c
        .allocate(AllocateRequest {
            container_requests: vec![
                ContainerAllocateRequest { devices_ids: vec!["kvm3".into()] },
                ContainerAllocateRequest { devices_ids: vec!["kvm7".into()] },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.container_responses.len(), 2, "one answer per container");
    for r in &a.container_responses {
        assert_eq!(r.devices.len(), 1);
        let d = &r.devices[0];
        assert_eq!(d.container_path, "/dev/kvm");
        assert_eq!(d.host_path, node.display().to_string());
        assert!(d.permissions.contains('r') && d.permissions.contains('w'), "{}", d.permissions);
        assert!(r.mounts.is_empty() && r.envs.is_empty());
    }
    assert_eq!(DeviceResource::kvm().spec().host_path, "/dev/kvm");

    let p = c
        .get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_ids: vec!["kvm1".into(), "kvm2".into(), "kvm5".into()],
                must_include_device_ids: vec!["kvm2".into()],
                allocation_size: 2,
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.container_responses[0].device_ids, ["kvm2", "kvm1"]);
    c.pre_start_container(PreStartContainerRequest { devices_ids: vec!["kvm1".into()] }).await.unwrap();

    // The node goes: the stream sends the pool again, Unhealthy, and nothing is allocated.
    std::fs::remove_file(&node).unwrap();
    let next =
        tokio::time::timeout(Duration::from_secs(5), devices.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(next.devices.len(), DEVICE_COUNT);
    assert!(next.devices.iter().all(|d| d.health == "Unhealthy"));
    let refused = c
        .allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: vec!["kvm1".into()] }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    // It comes back.
    std::fs::write(&node, b"").unwrap();
    let back =
        tokio::time::timeout(Duration::from_secs(5), devices.message()).await.unwrap().unwrap().unwrap();
    assert!(back.devices.iter().all(|d| d.health == "Healthy"));

    // Stopping ends the open stream, so the server's graceful shutdown completes.
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
    assert!(tokio::time::timeout(Duration::from_secs(5), devices.message())
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

/// The kubelet's `Registration` service: records each request, then dials the plugin back and
/// reads its first device list, as the kubelet does.
struct FakeKubelet {
    dir: PathBuf,
    seen: mpsc::UnboundedSender<(RegisterRequest, usize)>,
}

#[tonic::async_trait]
impl Registration for FakeKubelet {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let req = req.into_inner();
        if req.version != api::VERSION {
            return Err(Status::invalid_argument(format!("unsupported version {}", req.version)));
        }
        let mut c = client(&self.dir.join(&req.endpoint)).await;
        let mut s = c.list_and_watch(Empty {}).await?.into_inner();
        let n = s.message().await?.map(|l| l.devices.len()).unwrap_or(0);
        let _ = self.seen.send((req, n));
        Ok(Response::new(Empty {}))
    }
}

/// Starts the fake kubelet on `<dir>/kubelet.sock`; stops it when the sender is dropped.
fn start_kubelet(
    dir: &Path,
    seen: mpsc::UnboundedSender<(RegisterRequest, usize)>,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = UnixListener::bind(dir.join(KUBELET_SOCKET)).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let svc = RegistrationServer::new(FakeKubelet { dir: dir.to_path_buf(), seen });
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (tx, task)
}

async fn next(seen: &mut mpsc::UnboundedReceiver<(RegisterRequest, usize)>) -> (RegisterRequest, usize) {
    tokio::time::timeout(Duration::from_secs(10), seen.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn registers_with_the_kubelet_and_again_after_the_kubelet_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("kvm-node");
    std::fs::write(&node, b"").unwrap();
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The plugin starts before the kubelet listens: it retries.
    let plugin = tokio::spawn(serve(kvm_at(&node), fast(dir.path()), shutdown_rx));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stop_kubelet, kubelet) = start_kubelet(dir.path(), seen_tx.clone());
    let (req, listed) = next(&mut seen).await;
    assert_eq!(req.version, "v1beta1");
    assert_eq!(req.endpoint, "kubevirt-kvm.sock");
    assert_eq!(req.resource_name, "devices.kubevirt.io/kvm");
    assert_eq!(listed, DEVICE_COUNT, "the kubelet reached the registered endpoint");

    // A kubelet restart: it stops, removes every socket of the directory (its own and the
    // plugin's), and listens again.
    stop_kubelet.send(()).unwrap();
    kubelet.await.unwrap();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "sock") {
            std::fs::remove_file(p).unwrap();
        }
    }
    let (stop_kubelet, kubelet) = start_kubelet(dir.path(), seen_tx);
    let (req, listed) = next(&mut seen).await;
    assert_eq!((req.endpoint.as_str(), req.resource_name.as_str()), ("kubevirt-kvm.sock", KVM_RESOURCE));
    assert_eq!(listed, DEVICE_COUNT, "the new socket serves");
    // (A new socket: the old one was removed above; its inode number may be reused.)
    assert!(dir.path().join("kubevirt-kvm.sock").exists());

    // Shutdown: the plugin's socket goes, nothing registers again.
    shutdown_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), plugin).await.unwrap().unwrap();
    assert!(!dir.path().join("kubevirt-kvm.sock").exists());
    stop_kubelet.send(()).unwrap();
    kubelet.await.unwrap();
    assert!(seen.try_recv().is_err());
}
