//! Leader election on a `coordination.k8s.io` Lease, so that one controller replica writes to
//! the cluster while every replica serves the table.
//!
//! The algorithm is client-go's: read the Lease; renew it when we hold it, take it when it is
//! free or its holder has not renewed it for `leaseDurationSeconds`, judged by when *this*
//! replica saw it change (so clock skew between nodes does not matter); every write carries the
//! resourceVersion read, so of two replicas racing for it one gets a 409 and stays a follower.
//! A leader that cannot renew within the renew deadline (shorter than the lease) stops leading
//! before anyone else may take over. On shutdown the leader gives the Lease up, so a rolling
//! update hands over at the next retry rather than after the lease duration.
//!
//! Written here rather than taken from a crate: `kube-leader-election` needs kube 4, and
//! `kube-lease-manager` (kube 5) relies on server-side-apply field ownership conflicts.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// How this replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease.
    pub name: String,
    /// Namespace of the Lease (the mesh namespace).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays held without renewal (`leaseDurationSeconds`, whole seconds).
    pub duration: Duration,
    /// A leader that has not renewed for this long stops leading; below `duration`.
    pub renew_deadline: Duration,
    /// How often the Lease is read and renewed or tried.
    pub retry: Duration,
}

impl LeaseConfig {
    /// Defaults (`--lease-duration 8`): a follower takes over at most `duration + 2 * retry`
    /// (12 s) after the leader stopped renewing.
    pub fn new(name: &str, namespace: &str, identity: &str) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(8),
            renew_deadline: Duration::from_secs(5),
            retry: Duration::from_secs(2),
        }
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

/// One replica's elector.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The resourceVersion last read, and when this replica first saw it.
    observed: Option<(String, Instant)>,
    /// When we last renewed, while we lead.
    renewed: Option<Instant>,
}

impl Elector {
    /// An elector using `client`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            renewed: None,
        }
    }

    fn leading(&self) -> bool {
        self.renewed
            .is_some_and(|t| t.elapsed() < self.config.renew_deadline)
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = now();
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One round: creates, renews or takes the Lease when it should. Returns whether this
    /// replica leads now.
    pub async fn try_acquire_or_renew(&mut self) -> bool {
        let lease = match self.api.get_opt(&self.config.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        self.renewed = Some(Instant::now());
                        true
                    }
                    Err(err) => {
                        tracing::debug!(%err, "Lease creation lost or failed");
                        self.leading()
                    }
                };
            }
            Err(err) => {
                tracing::warn!(lease = %self.config.name, %err, "Cannot read the leader Lease");
                return self.leading();
            }
        };
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(seen, _)| *seen != rv) {
            self.observed = Some((rv, Instant::now()));
        }
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = holder(&lease) == Some(self.config.identity.as_str());
        if !ours {
            self.renewed = None;
            let held_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
            let seen_at = self
                .observed
                .as_ref()
                .map(|(_, t)| *t)
                .unwrap_or_else(Instant::now);
            if holder(&lease).is_some() && seen_at.elapsed() < held_for {
                return false;
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mut updated = lease.clone();
        updated.spec = Some(if ours {
            self.spec(transitions, spec.acquire_time.clone())
        } else {
            self.spec(transitions + 1, None)
        });
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                if !ours {
                    tracing::info!(identity = %self.config.identity, previous = holder(&lease).unwrap_or(""), "Took the leader Lease");
                }
                self.renewed = Some(Instant::now());
                true
            }
            Err(err) => {
                tracing::debug!(%err, "Lease update lost or failed");
                ours && self.leading()
            }
        }
    }

    /// Gives the Lease up if we hold it.
    async fn release(&mut self) {
        let Ok(Some(lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        if holder(&lease) != Some(self.config.identity.as_str()) {
            return;
        }
        let mut updated = lease.clone();
        if let Some(spec) = updated.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now());
        }
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => tracing::info!("Gave the leader Lease up"),
            Err(err) => {
                tracing::warn!(%err, "Could not give the leader Lease up; it expires by itself")
            }
        }
    }

    /// Runs the election until `shutdown`, publishing whether this replica leads; gives the
    /// Lease up at the end.
    pub async fn run(mut self, tx: watch::Sender<bool>, shutdown: CancellationToken) {
        loop {
            let leading = self.try_acquire_or_renew().await;
            tx.send_if_modified(|cur| {
                let changed = *cur != leading;
                if changed {
                    tracing::info!(identity = %self.config.identity, leading, "Leadership changed");
                }
                *cur = leading;
                changed
            });
            metrics::register().leader.set(i64::from(leading));
            // Sleep until the next round, but stop leading at the renew deadline if the renewal
            // has not come through by then.
            let deadline = self
                .renewed
                .map(|t| t + self.config.renew_deadline)
                .filter(|_| leading);
            let step_down = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.config.retry) => {}
                _ = step_down => {}
            }
        }
        tx.send_replace(false);
        metrics::register().leader.set(0);
        self.release().await;
    }
}

/// Starts the election; the receiver says whether this replica leads.
pub fn spawn(
    client: Client,
    config: LeaseConfig,
    shutdown: CancellationToken,
) -> (watch::Receiver<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(Elector::new(client, config).run(tx, shutdown));
    (rx, task)
}

#[cfg(test)]
mod tests;
