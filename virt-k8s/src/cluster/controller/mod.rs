//! The cluster's controllers, on kube's `Controller` runtime: [`vm`] keeps each VirtualMachine's
//! instance as its run strategy says (virt-core's `lifecycle::strategy`, the same pure functions
//! the local node runs), [`vmi`] gives each VirtualMachineInstance a launcher pod and writes the
//! VMI's phase from the pod's through `/status`; [`dv`] fills each DataVolume's claim with an
//! importer pod (or clones another claim into it with a clone pod), and the provisioner gives
//! pending claims of the project's StorageClass a volume (`cluster::storage`); [`evacuation`]
//! keeps the disruption budget of each VMI whose `evictionStrategy` migrates it and starts the
//! migration a refused eviction asked for; [`migration`] admits each
//! VirtualMachineInstanceMigration and gives it its target launcher pod. Failed reconciles back
//! off per object.

pub mod dv;
pub mod evacuation;
pub mod migration;
pub mod vm;
pub mod vmi;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::runtime::controller::Action;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client};
use virt_core::model::{VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration};
use virt_storage::cdi::DataVolume;

use super::importer::ImporterConfig;
use super::kinds::Cr;
use super::pod::{LauncherConfig, APP_LABEL};
use super::storage::StorageError;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// An API request failed.
    #[error("{what}: {source}")]
    Api {
        /// The request, with the object it was about.
        what: String,
        /// The client's or API server's error.
        #[source]
        source: kube::Error,
    },
    /// The instancetype or preference a VM names is missing or does not fit its template.
    #[error("{what}: {source}")]
    Resolve {
        /// The VM.
        what: String,
        /// What resolving found.
        #[source]
        source: virt_core::model::ResolveError,
    },
    /// An object could not be converted between the project's and kube's types.
    #[error("{what}: {source}")]
    Convert {
        /// The object.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Provisioning a volume, or looking at a claim, failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A VM's `dataVolumeTemplates` entry does not make a valid DataVolume.
    #[error("{what}: {source}")]
    Template {
        /// The template and its VM.
        what: String,
        /// What the local node's CDI found.
        #[source]
        source: Box<crate::node::cdi::CdiError>,
    },
}

/// The provisioner of the project's StorageClass (`cluster::storage`).
#[derive(Debug, Clone)]
pub struct ProvisionerConfig {
    /// The directory on the nodes volumes are made in (`<dir>/<pv name>`).
    pub dir: PathBuf,
    /// The node to put volumes on when the scheduler selected none (default: the first node).
    pub node: Option<String>,
}

/// What the controllers run with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How launcher pods are made.
    pub launcher: LauncherConfig,
    /// How importer pods are made (none: DataVolumes are left alone).
    pub importer: Option<ImporterConfig>,
    /// The local provisioner (none: claims wait for another provisioner or static volumes).
    pub provisioner: Option<ProvisionerConfig>,
    /// The Secret with the migration proxy's TLS material (`cluster::migration_certs`), made if
    /// missing (none: left to whoever installs the agents).
    pub migration_secret: Option<super::migration_certs::SecretRef>,
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// How launcher pods are made.
    pub launcher: LauncherConfig,
    /// How importer pods are made.
    pub importer: Option<ImporterConfig>,
    /// The local provisioner.
    pub provisioner: Option<ProvisionerConfig>,
    /// Consecutive failures per object (`namespace/name` of a kind), for the back-off.
    failures: Mutex<HashMap<String, u32>>,
    /// The launcher pods as a watch reflects them (read instead of a list per reconcile; a pod
    /// the cache lacks is looked up with a list before one is created).
    pods: Option<kube::runtime::reflector::Store<Pod>>,
}

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, launcher: LauncherConfig) -> Self {
        Self {
            client,
            launcher,
            importer: None,
            provisioner: None,
            failures: Mutex::new(HashMap::new()),
            pods: None,
        }
    }

    /// Forgets `key`'s failures after a successful reconcile.
    fn succeeded(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// The delay before retrying `key` after its n-th consecutive failure: 1 s doubling up to
    /// 5 min.
    fn backoff(&self, key: &str) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        backoff_delay(n)
    }
}

/// 1 s after the first failure, doubling, at most 5 minutes.
pub fn backoff_delay(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

fn key(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!("{kind}/{}/{}", meta.namespace.as_deref().unwrap_or(""), meta.name.as_deref().unwrap_or(""))
}

fn error_policy<K: kube::Resource>(
    kind: &'static str,
) -> impl Fn(Arc<K>, &ReconcileError, Arc<Context>) -> Action {
    move |obj, err, ctx| {
        let k = key(kind, obj.meta());
        let delay = ctx.backoff(&k);
        log::warn!("reconcile of {k} failed (retry in {delay:?}): {err}");
        Action::requeue(delay)
    }
}

/// Gives a pending claim of the project's StorageClass its volume.
async fn provision(pvc: Arc<PersistentVolumeClaim>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let Some(p) = ctx.provisioner.as_ref() else { return Ok(Action::await_change()) };
    super::storage::provision(&ctx.client, &pvc, p.node.as_deref(), &p.dir).await?;
    ctx.succeeded(&key("PersistentVolumeClaim", &pvc.metadata));
    Ok(Action::await_change())
}

/// Runs the VM, VMI, migration and DataVolume controllers and the provisioner until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Settings { launcher, importer, provisioner, migration_secret } = settings;
    if let Some(secret) = migration_secret {
        // The agents wait for it before they take part in migrations between nodes.
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                match super::migration_certs::ensure(&client, &secret).await {
                    Ok(_) => break,
                    Err(e) => log::warn!("the migration certificates: {e}"),
                }
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    if provisioner.is_some() {
        if let Err(e) = super::storage::ensure_storage_class(&client).await {
            log::warn!("the local provisioner's StorageClass: {e}");
        }
    }
    let vms: Api<Cr<VirtualMachine>> = Api::all(client.clone());
    let vmis: Api<Cr<VirtualMachineInstance>> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let launchers = watcher::Config::default().labels(&format!("{APP_LABEL}=virt-launcher"));
    let (store, writer) = kube::runtime::reflector::store();
    let reflected = kube::runtime::reflector(writer, watcher(pods.clone(), launchers.clone()));
    tokio::spawn(reflected.for_each(|_| async {}));
    let mut ctx = Context::new(client.clone(), launcher);
    ctx.pods = Some(store);
    ctx.importer = importer;
    ctx.provisioner = provisioner;
    let ctx = Arc::new(ctx);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let vm_ctl = Controller::new(vms, watcher::Config::default())
        .owns(vmis.clone(), watcher::Config::default())
        .owns(Api::<Cr<DataVolume>>::all(client.clone()), watcher::Config::default())
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(vm::reconcile, error_policy::<Cr<VirtualMachine>>("VirtualMachine"), ctx.clone())
        .for_each(|r| async move {
            if let Ok((obj, _)) = r {
                log::debug!("reconciled VirtualMachine {}", obj.name);
            }
        });
    let evacuation_ctl = Controller::new(vmis.clone(), watcher::Config::default())
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            evacuation::reconcile,
            error_policy::<Cr<VirtualMachineInstance>>("Evacuation of VirtualMachineInstance"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let vmi_ctl = Controller::new(vmis, watcher::Config::default())
        .owns(pods.clone(), launchers)
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            vmi::reconcile,
            error_policy::<Cr<VirtualMachineInstance>>("VirtualMachineInstance"),
            ctx.clone(),
        )
        .for_each(|r| async move {
            if let Ok((obj, _)) = r {
                log::debug!("reconciled VirtualMachineInstance {}", obj.name);
            }
        });
    let vmims: Api<Cr<VirtualMachineInstanceMigration>> = Api::all(client.clone());
    let mig_ctl = Controller::new(vmims, watcher::Config::default())
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            migration::reconcile,
            error_policy::<Cr<VirtualMachineInstanceMigration>>("VirtualMachineInstanceMigration"),
            ctx.clone(),
        )
        .for_each(|_| async {});
    let claims: Api<PersistentVolumeClaim> = Api::all(client.clone());
    let storage = async {
        if ctx.importer.is_none() && ctx.provisioner.is_none() {
            return;
        }
        let dvs: Api<Cr<DataVolume>> = Api::all(client.clone());
        let importers =
            watcher::Config::default().labels(&format!("app={}", super::importer::APP_LABEL_VALUE));
        let dv_ctl = Controller::new(dvs, watcher::Config::default())
            .owns(pods, importers)
            .owns(claims.clone(), watcher::Config::default())
            .graceful_shutdown_on(stopped(stop_rx.clone()))
            .run(dv::reconcile, error_policy::<Cr<DataVolume>>("DataVolume"), ctx.clone())
            .for_each(|_| async {});
        let pvc_ctl = Controller::new(claims, watcher::Config::default())
            .graceful_shutdown_on(stopped(stop_rx.clone()))
            .run(provision, error_policy::<PersistentVolumeClaim>("PersistentVolumeClaim"), ctx.clone())
            .for_each(|_| async {});
        futures_util::future::join(dv_ctl, pvc_ctl).await;
    };
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    futures_util::future::join5(vm_ctl, vmi_ctl, evacuation_ctl, mig_ctl, storage).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff_delay(1), Duration::from_secs(1));
        assert_eq!(backoff_delay(2), Duration::from_secs(2));
        assert_eq!(backoff_delay(5), Duration::from_secs(16));
        assert_eq!(backoff_delay(40), Duration::from_secs(300));
    }
}
