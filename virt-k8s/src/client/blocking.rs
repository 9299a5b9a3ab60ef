//! [`NodeClient`]: the node's API blocking, on a one-worker tokio runtime of its own.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;
use virt_core::model::{VirtualMachine, VirtualMachineInstance};
use virt_storage::cdi::DataVolume;

use super::console;
use super::vnc;
use super::ApplyOutcome;
use super::AsyncNodeClient;
use super::AttachEnd;
use super::ClientError;
use super::ConsoleStream;
use super::Endpoint;
use super::Event;
use super::Kind;
use super::Namespace;
use super::Version;

/// The node's API, blocking: [`AsyncNodeClient`] on a one-worker tokio runtime of its own.
/// Do not call it from async code (it blocks the calling thread); use [`NodeClient::asynchronous`].
#[derive(Debug, Clone)]
pub struct NodeClient {
    pub(super) runtime: Arc<tokio::runtime::Runtime>,
    pub(super) inner: AsyncNodeClient,
}

impl NodeClient {
    /// A client of the node at `endpoint`, with an optional bearer token.
    pub fn new(endpoint: Endpoint, token: Option<String>) -> Result<Self, ClientError> {
        Self::with_client(AsyncNodeClient::new(endpoint, token))
    }

    /// A client from `--server`/`VIRT_NODE`/the default socket and `--token`/`VIRT_TOKEN`.
    pub fn from_env(server: Option<&str>, token: Option<&str>) -> Result<Self, ClientError> {
        Self::with_client(AsyncNodeClient::from_env(server, token)?)
    }

    /// Wraps an async client.
    pub fn with_client(inner: AsyncNodeClient) -> Result<Self, ClientError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("virt-node-client")
            .enable_all()
            .build()
            .map_err(ClientError::Runtime)?;
        Ok(Self { runtime: Arc::new(runtime), inner })
    }

    /// Sets how long one request may take.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.inner = self.inner.with_timeout(timeout);
        self
    }

    /// The async client inside.
    pub fn asynchronous(&self) -> &AsyncNodeClient {
        &self.inner
    }

    /// The node's endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        self.inner.endpoint()
    }

    pub(super) fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// See [`AsyncNodeClient::version`].
    pub fn version(&self) -> Result<Version, ClientError> {
        self.block(self.inner.version())
    }

    /// See [`AsyncNodeClient::create`].
    pub fn create(&self, object: &Value, namespace: &str) -> Result<Value, ClientError> {
        self.block(self.inner.create(object, namespace))
    }

    /// See [`AsyncNodeClient::apply`].
    pub fn apply(&self, object: &Value, namespace: &str) -> Result<ApplyOutcome, ClientError> {
        self.block(self.inner.apply(object, namespace))
    }

    /// See [`AsyncNodeClient::get_vm`].
    pub fn get_vm(&self, namespace: &str, name: &str) -> Result<VirtualMachine, ClientError> {
        self.block(self.inner.get_vm(namespace, name))
    }

    /// See [`AsyncNodeClient::list_vms`].
    pub fn list_vms(&self, namespace: Option<&str>) -> Result<Vec<VirtualMachine>, ClientError> {
        self.block(self.inner.list_vms(namespace))
    }

    /// See [`AsyncNodeClient::get_vmi`].
    pub fn get_vmi(&self, namespace: &str, name: &str) -> Result<VirtualMachineInstance, ClientError> {
        self.block(self.inner.get_vmi(namespace, name))
    }

    /// See [`AsyncNodeClient::list_vmis`].
    pub fn list_vmis(&self, namespace: Option<&str>) -> Result<Vec<VirtualMachineInstance>, ClientError> {
        self.block(self.inner.list_vmis(namespace))
    }

    /// See [`AsyncNodeClient::delete`].
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.delete(kind, namespace, name))
    }

    /// See [`AsyncNodeClient::namespaces`].
    pub fn namespaces(&self) -> Result<Vec<Namespace>, ClientError> {
        self.block(self.inner.namespaces())
    }

    /// See [`AsyncNodeClient::events`].
    pub fn events(&self, namespace: &str) -> Result<Vec<Event>, ClientError> {
        self.block(self.inner.events(namespace))
    }

    /// See [`AsyncNodeClient::cdi_list`].
    pub fn cdi_list<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        self.block(self.inner.cdi_list(plural, namespace))
    }

    /// See [`AsyncNodeClient::cdi_get`].
    pub fn cdi_get<T: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        name: &str,
    ) -> Result<T, ClientError> {
        self.block(self.inner.cdi_get(plural, namespace, name))
    }

    /// See [`AsyncNodeClient::cdi_create`].
    pub fn cdi_create<T: serde::Serialize, R: DeserializeOwned>(
        &self,
        plural: &str,
        namespace: &str,
        object: &T,
    ) -> Result<R, ClientError> {
        self.block(self.inner.cdi_create(plural, namespace, object))
    }

    /// See [`AsyncNodeClient::cdi_delete`].
    pub fn cdi_delete(&self, plural: &str, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.cdi_delete(plural, namespace, name))
    }

    /// See [`AsyncNodeClient::get_data_volume`].
    pub fn get_data_volume(&self, namespace: &str, name: &str) -> Result<DataVolume, ClientError> {
        self.block(self.inner.get_data_volume(namespace, name))
    }

    /// See [`AsyncNodeClient::list_data_volumes`].
    pub fn list_data_volumes(&self, namespace: Option<&str>) -> Result<Vec<DataVolume>, ClientError> {
        self.block(self.inner.list_data_volumes(namespace))
    }

    /// See [`AsyncNodeClient::create_data_volume`].
    pub fn create_data_volume(&self, namespace: &str, dv: &DataVolume) -> Result<DataVolume, ClientError> {
        self.block(self.inner.create_data_volume(namespace, dv))
    }

    /// See [`AsyncNodeClient::delete_data_volume`].
    pub fn delete_data_volume(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.delete_data_volume(namespace, name))
    }

    /// See [`AsyncNodeClient::upload_token`].
    pub fn upload_token(&self, namespace: &str, claim: &str) -> Result<String, ClientError> {
        self.block(self.inner.upload_token(namespace, claim))
    }

    /// See [`AsyncNodeClient::upload_proxy_url`].
    pub fn upload_proxy_url(&self) -> Result<Option<String>, ClientError> {
        self.block(self.inner.upload_proxy_url())
    }

    /// See [`AsyncNodeClient::start`].
    pub fn start(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.start(namespace, name))
    }

    /// See [`AsyncNodeClient::stop`].
    pub fn stop(&self, namespace: &str, name: &str, grace_period: Option<u64>) -> Result<(), ClientError> {
        self.block(self.inner.stop(namespace, name, grace_period))
    }

    /// See [`AsyncNodeClient::restart`].
    pub fn restart(&self, namespace: &str, name: &str, grace_period: Option<u64>) -> Result<(), ClientError> {
        self.block(self.inner.restart(namespace, name, grace_period))
    }

    /// See [`AsyncNodeClient::pause`].
    pub fn pause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.pause(namespace, name))
    }

    /// See [`AsyncNodeClient::unpause`].
    pub fn unpause(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.unpause(namespace, name))
    }

    /// See [`AsyncNodeClient::soft_reboot`].
    pub fn soft_reboot(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        self.block(self.inner.soft_reboot(namespace, name))
    }

    /// The serial console as a blocking byte stream (`Read` + `Write`, or split into halves for
    /// two threads). See [`AsyncNodeClient::console`].
    pub fn console(&self, namespace: &str, name: &str) -> Result<ConsoleStream, ClientError> {
        let console = self.block(self.inner.console(namespace, name))?;
        Ok(ConsoleStream::new(console, self.runtime.clone()))
    }

    /// Serves a local VNC port for `namespace/name`'s display (see [`vnc::proxy`]): binds
    /// `address:port` (0 for a free port), calls `listening` with the bound address, then serves
    /// viewers until the process ends (with `once`, until the first viewer leaves).
    pub fn vnc_proxy(
        &self,
        namespace: &str,
        name: &str,
        address: std::net::IpAddr,
        port: u16,
        once: bool,
        listening: impl FnOnce(std::net::SocketAddr),
    ) -> Result<(), ClientError> {
        let inner = self.inner.clone();
        let (ns, n) = (namespace.to_string(), name.to_string());
        self.block(async move {
            let (listener, addr) = vnc::listen(address, port).await?;
            // Check the display before announcing the port.
            let probe = inner.vnc(&ns, &n).await?;
            drop(probe);
            listening(addr);
            vnc::proxy(inner, ns, n, listener, once).await
        })
    }

    /// Attaches this process's terminal to a VMI's serial console until `^]`, the end of standard
    /// input, the node closing the console, or SIGTERM/SIGHUP/SIGINT; see [`console::attach`].
    pub fn attach_console(&self, namespace: &str, name: &str) -> Result<AttachEnd, ClientError> {
        self.block(async {
            let console = self.inner.console(namespace, name).await?;
            Ok(console::attach(console, name).await?)
        })
    }
}
