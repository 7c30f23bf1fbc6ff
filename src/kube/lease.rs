//! Fenced leader election on a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! - A replica leads from a successful Lease write until `renew_deadline` after the moment it
//!   *sent* its latest successful renewal, on its own monotonic clock. It renews every
//!   `retry_period`; if it has not renewed by the deadline it stops leading at once, even while
//!   a renewal is still in flight.
//! - A standby takes the Lease only after it has seen the same Lease record (same
//!   resourceVersion) for the record's `leaseDurationSeconds` on its own clock. It first sees a
//!   record no earlier than the leader sent it, so it takes over no earlier than `duration`
//!   after that send: the old leader stopped `duration - renew_deadline` before.
//! - Every write (create, renew, take over, release) carries the resourceVersion it was planned
//!   from, so a stale or late-delivered write is refused with 409 instead of overwriting a
//!   newer holder. A release is sent only while the replica still leads.
//! - Every request gives up after `request_timeout`, and a renewal also at the renew deadline.
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::observe::MANAGER;

/// Timing and identity of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal, as standbys count it.
    pub duration: Duration,
    /// How long after its latest successful renewal a leader keeps acting.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby looks at the Lease.
    pub retry_period: Duration,
    /// The longest one Lease request may take.
    pub request_timeout: Duration,
}

/// Settings that cannot give the guarantee.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("--lease-duration must be a whole number of seconds, at least 1s (got {0:?})")]
    Duration(Duration),
    #[error("--renew-deadline ({renew:?}) must be shorter than --lease-duration ({duration:?})")]
    RenewDeadline { renew: Duration, duration: Duration },
    #[error("--retry-period ({retry:?}) must be non-zero and shorter than --renew-deadline ({renew:?})")]
    RetryPeriod { retry: Duration, renew: Duration },
    #[error("--request-timeout ({timeout:?}) must be non-zero and shorter than --lease-duration ({duration:?})")]
    RequestTimeout { timeout: Duration, duration: Duration },
}

impl LeaseSettings {
    pub fn check(&self) -> Result<(), LeaseError> {
        if self.duration.as_secs() < 1 || self.duration.subsec_nanos() != 0 {
            return Err(LeaseError::Duration(self.duration));
        }
        if self.renew_deadline >= self.duration {
            return Err(LeaseError::RenewDeadline {
                renew: self.renew_deadline,
                duration: self.duration,
            });
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return Err(LeaseError::RetryPeriod {
                retry: self.retry_period,
                renew: self.renew_deadline,
            });
        }
        if self.request_timeout.is_zero() || self.request_timeout >= self.duration {
            return Err(LeaseError::RequestTimeout {
                timeout: self.request_timeout,
                duration: self.duration,
            });
        }
        Ok(())
    }
}

/// Where this replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Has not read the Lease yet.
    Starting,
    /// Another replica holds a live Lease; this one waits to take over.
    Standby,
    /// Holds the Lease: may act.
    Leading,
    /// Stopped leading (could not renew in time, or saw another holder) and has not yet seen
    /// who leads now.
    Deposed,
}

/// The election, running in its own task.
pub struct Leadership {
    role: watch::Receiver<Role>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Starts campaigning for the Lease.
    pub fn start(client: Client, settings: LeaseSettings) -> Self {
        let (tx, role) = watch::channel(Role::Starting);
        let stop = CancellationToken::new();
        let elector = Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            seen: None,
            own: false,
        };
        let task = tokio::spawn(campaign(elector, tx, stop.clone()));
        Leadership { role, stop, task }
    }

    /// Follows this replica's role.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Stops campaigning. A leader releases the Lease first, if it still leads on its own clock,
    /// so a standby takes over at once.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The Lease record as last read, and when this replica first saw it.
struct Seen {
    version: String,
    duration: Duration,
    since: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    seen: Option<Seen>,
    /// The record last seen is this replica's own write: a leader renews it without reading
    /// first (one request, guarded by that version).
    own: bool,
}

/// The answer of one try to take or renew the Lease.
#[derive(Debug, PartialEq, Eq)]
enum Try {
    /// Written: this replica holds the Lease.
    Won,
    /// Another replica holds a live Lease.
    HeldElsewhere,
    /// Someone wrote the Lease since it was read (409): read again.
    Raced,
}

impl Elector {
    fn duration_secs(&self) -> i32 {
        i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX)
    }

    /// One guarded attempt: read the Lease, then create it, renew it, or take it over if it
    /// expired, with the resourceVersion just read as precondition.
    async fn try_acquire_or_renew(&mut self) -> Result<Try, kube::Error> {
        let me = self.settings.identity.clone();
        let now = MicroTime(Timestamp::now());
        if self.own
            && let Some(seen) = &self.seen
        {
            let patch = json!({
                "metadata": {"resourceVersion": seen.version},
                "spec": {"holderIdentity": me, "leaseDurationSeconds": self.duration_secs(), "renewTime": now},
            });
            return self.write(patch).await;
        }
        let Some(lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease: Lease = serde_json::from_value(json!({
                "metadata": {"name": self.settings.name, "namespace": self.settings.namespace},
                "spec": {
                    "holderIdentity": me,
                    "leaseDurationSeconds": self.duration_secs(),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }))
            .map_err(kube::Error::SerdeError)?;
            let params = PostParams {
                field_manager: Some(MANAGER.into()),
                ..Default::default()
            };
            return match self.api.create(&params, &lease).await {
                Ok(created) => {
                    self.saw(&created);
                    self.own = true;
                    Ok(Try::Won)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Try::Raced),
                Err(e) => Err(e),
            };
        };
        self.saw(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(me.as_str());
        if !mine
            && holder.is_some()
            && let Some(seen) = &self.seen
            && seen.since.elapsed() < seen.duration
        {
            return Ok(Try::HeldElsewhere);
        }
        let Some(version) = lease.resource_version() else {
            return Ok(Try::Raced);
        };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = match (mine, &spec.acquire_time) {
            (true, Some(t)) => t.clone(),
            _ => now.clone(),
        };
        let patch = json!({
            "metadata": {"resourceVersion": version},
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": self.duration_secs(),
                "acquireTime": acquired,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        });
        self.write(patch).await
    }

    /// A merge patch guarded by the resourceVersion it carries.
    async fn write(&mut self, patch: serde_json::Value) -> Result<Try, kube::Error> {
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        // Unless this write lands, the next try reads the Lease first.
        self.own = false;
        match self
            .api
            .patch(&self.settings.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.saw(&written);
                self.own = true;
                Ok(Try::Won)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Try::Raced),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up, guarded by the version of this replica's own latest write.
    async fn release(&mut self) -> Result<Try, kube::Error> {
        let Some(seen) = &self.seen else {
            return Ok(Try::Raced);
        };
        let now = MicroTime(Timestamp::now());
        let patch = json!({
            "metadata": {"resourceVersion": seen.version},
            "spec": {"holderIdentity": null, "leaseDurationSeconds": 1, "renewTime": now},
        });
        self.write(patch).await
    }

    /// Notes the record; the clock starts only when the record changes.
    fn saw(&mut self, lease: &Lease) {
        let version = lease.resource_version().unwrap_or_default();
        if self.seen.as_ref().is_some_and(|s| s.version == version) {
            return;
        }
        let spec = lease.spec.as_ref();
        let duration = spec
            .and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.settings.duration);
        self.seen = Some(Seen {
            version,
            duration,
            since: Instant::now(),
        });
    }

    /// One try, bounded by the request timeout and by `deadline`.
    async fn attempt(&mut self, deadline: Option<Instant>) -> Result<Try, String> {
        let mut limit = Instant::now() + self.settings.request_timeout;
        if let Some(d) = deadline {
            limit = limit.min(d);
        }
        match tokio::time::timeout_at(limit, self.try_acquire_or_renew()).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// What ended one wait of a leader.
enum Step {
    Expired,
    Stop,
    Tried(Instant, Result<Try, String>),
}

async fn campaign(mut elector: Elector, role: watch::Sender<Role>, stop: CancellationToken) {
    let lease = format!("{}/{}", elector.settings.namespace, elector.settings.name);
    let (retry, renew_deadline) = (elector.settings.retry_period, elector.settings.renew_deadline);
    loop {
        // Standing by: try until this replica wins.
        let mut renewed = loop {
            let sent = Instant::now();
            match elector.attempt(None).await {
                Ok(Try::Won) => break sent,
                Ok(Try::HeldElsewhere) => {
                    role.send_if_modified(|r| {
                        let changed = *r != Role::Standby;
                        *r = Role::Standby;
                        changed
                    });
                }
                Ok(Try::Raced) => {}
                Err(e) => tracing::debug!(%lease, error = %e, "could not read or take the Lease"),
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = stop.cancelled() => return,
            }
        };
        tracing::info!(%lease, "took the Lease");
        role.send_replace(Role::Leading);
        // Leading: renew every retry period; stop at the renew deadline on this clock.
        let why = loop {
            let deadline = renewed + renew_deadline;
            let step = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => Step::Expired,
                _ = stop.cancelled() => Step::Stop,
                attempt = async {
                    tokio::time::sleep(retry).await;
                    let sent = Instant::now();
                    (sent, elector.attempt(Some(deadline)).await)
                } => Step::Tried(attempt.0, attempt.1),
            };
            match step {
                Step::Expired => break "could not renew it before the renew deadline",
                Step::Stop => {
                    // Release only while this replica still leads: never after it has lost.
                    role.send_replace(Role::Deposed);
                    if Instant::now() < deadline {
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .min(elector.settings.request_timeout);
                        match tokio::time::timeout(left, elector.release()).await {
                            Ok(Ok(Try::Won)) => tracing::info!(%lease, "released the Lease"),
                            Ok(Ok(_)) => {
                                tracing::warn!(%lease, "did not release the Lease: it changed since this replica last wrote it")
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%lease, error = %e, "could not release the Lease; a standby takes over once it expires")
                            }
                            Err(_) => {
                                tracing::warn!(%lease, "releasing the Lease timed out; a standby takes over once it expires")
                            }
                        }
                    }
                    return;
                }
                Step::Tried(sent, Ok(Try::Won)) => renewed = sent,
                Step::Tried(_, Ok(Try::HeldElsewhere)) => break "another replica holds it",
                Step::Tried(_, Ok(Try::Raced)) => {
                    tracing::warn!(%lease, "the Lease changed under this leader; reading it again")
                }
                Step::Tried(_, Err(e)) => tracing::warn!(%lease, error = %e, "could not renew the Lease"),
            }
        };
        role.send_replace(Role::Deposed);
        tracing::error!(%lease, "stopped leading: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(duration: u64, renew: u64, retry: u64, timeout: u64) -> LeaseSettings {
        LeaseSettings {
            namespace: "ns".into(),
            name: "lease".into(),
            identity: "me".into(),
            duration: Duration::from_secs(duration),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
            request_timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn timings_that_cannot_fence_are_refused() {
        assert!(settings(15, 10, 2, 5).check().is_ok());
        assert!(matches!(
            settings(10, 10, 2, 5).check(),
            Err(LeaseError::RenewDeadline { .. })
        ));
        assert!(matches!(
            settings(15, 10, 10, 5).check(),
            Err(LeaseError::RetryPeriod { .. })
        ));
        assert!(matches!(
            settings(15, 10, 2, 15).check(),
            Err(LeaseError::RequestTimeout { .. })
        ));
        assert!(matches!(settings(0, 0, 0, 0).check(), Err(LeaseError::Duration(_))));
    }
}
