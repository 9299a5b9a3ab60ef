//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it,
//! so several virt-controller replicas are safe: one holds the Lease and runs the controllers, the
//! others wait. The holder renews the Lease every `renew_every`; a candidate takes the Lease over
//! once its record has not changed for `lease_duration` as the candidate observed it (its own
//! clock measures the silence, so clock skew between replicas does not matter). Every write is a
//! replace with the `resourceVersion` read, so two candidates cannot both win: the loser gets a
//! 409 Conflict. A holder that cannot renew within `lease_duration` stops leading (the caller
//! exits, as KubeVirt's virt-controller does), before any other replica can take over.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The Lease could not be read or written (other than losing a race).
    #[error("{what} lease {namespace}/{name}: {source}")]
    Api {
        /// Reading, creating or renewing.
        what: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// Another replica holds the Lease now, or it could not be renewed in time.
    #[error("lost the lease {namespace}/{name}: {why}")]
    Lost {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Why.
        why: String,
    },
}

/// One candidate.
pub struct Elector {
    api: Api<Lease>,
    namespace: String,
    name: String,
    /// This replica's identity (the Lease's `holderIdentity`).
    pub identity: String,
    /// How long a Lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and a candidate retries.
    pub renew_every: Duration,
}

/// What a candidate last saw of the Lease.
struct Observed {
    resource_version: Option<String>,
    holder: Option<String>,
    renew: Option<MicroTime>,
    since: Instant,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl Elector {
    /// A candidate for Lease `namespace/name` as `identity` (15 s lease, renewed every 2 s: the
    /// Kubernetes components' defaults are 15 s and 10 s; 2 s lets a standby notice sooner).
    pub fn new(client: Client, namespace: &str, name: &str, identity: String) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }

    fn api_err(&self, what: &'static str) -> impl FnOnce(kube::Error) -> LeaderError + '_ {
        move |source| LeaderError::Api {
            what,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            source,
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        let mut seen: Option<Observed> = None;
        loop {
            if self.try_acquire(&mut seen).await? {
                log::info!("leader election: {} holds lease {}/{}", self.identity, self.namespace, self.name);
                return Ok(());
            }
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// One attempt: true when this candidate holds the Lease afterwards.
    async fn try_acquire(&self, seen: &mut Option<Observed>) -> Result<bool, LeaderError> {
        let current = self.api.get_opt(&self.name).await.map_err(self.api_err("reading"))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(self.api_err("creating")(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let changed = match seen {
            Some(o) => {
                o.resource_version != lease.metadata.resource_version
                    || o.holder != holder
                    || o.renew != spec.renew_time
            }
            None => true,
        };
        if changed {
            *seen = Some(Observed {
                resource_version: lease.metadata.resource_version.clone(),
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                since: Instant::now(),
            });
        }
        let duration = spec
            .lease_duration_seconds
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(self.lease_duration);
        let expired = seen.as_ref().is_some_and(|o| o.since.elapsed() >= duration);
        let mine = holder.as_deref() == Some(self.identity.as_str());
        if !(holder.is_none() || mine || expired) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time.clone() } else { None };
        let mut next = lease;
        next.spec = Some(self.spec(transitions, acquired));
        match self.api.replace(&self.name, &PostParams::default(), &next).await {
            Ok(_) => {
                if !mine {
                    log::info!(
                        "leader election: {} took lease {}/{} over from {}",
                        self.identity,
                        self.namespace,
                        self.name,
                        holder.as_deref().unwrap_or("nobody")
                    );
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(self.api_err("taking")(e)),
        }
    }

    /// Renews the Lease until it cannot: returns why leadership ended (another holder, or no
    /// successful renewal for a lease duration). The caller stops leading.
    pub async fn hold(&self) -> LeaderError {
        let mut last_renew = Instant::now();
        loop {
            tokio::time::sleep(self.renew_every).await;
            match self.renew().await {
                Ok(()) => last_renew = Instant::now(),
                Err(e @ LeaderError::Lost { .. }) => return e,
                Err(e) => log::warn!("leader election: renewing: {e}"),
            }
            // Stop before a standby could see the lease expire (it waits a full duration).
            if last_renew.elapsed() + self.renew_every >= self.lease_duration {
                return LeaderError::Lost {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    why: format!("not renewed for {:?}", last_renew.elapsed()),
                };
            }
        }
    }

    async fn renew(&self) -> Result<(), LeaderError> {
        let lost = |why: String| LeaderError::Lost {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            why,
        };
        let lease = self.api.get_opt(&self.name).await.map_err(self.api_err("reading"))?;
        let Some(mut lease) = lease else { return Err(lost("the lease was deleted".into())) };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Err(lost(format!("{} holds it", spec.holder_identity.unwrap_or_default())));
        }
        lease.spec = Some(self.spec(spec.lease_transitions.unwrap_or(0), spec.acquire_time));
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            // A conflict: someone wrote it since the read; the next round reads who holds it.
            Err(e) => Err(self.api_err("renewing")(e)),
        }
    }
}
