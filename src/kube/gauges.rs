//! The gauges computed at each scrape from the controller's caches: jobs by phase, how long the
//! oldest waiting job has waited, and the co-tenants held now with how long each has been held.
use std::sync::Arc;

use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::act::HELD_SINCE;
use super::observe::{Stores, holders};
use crate::api::{Phase, VidiJob, WorkloadKind};
use crate::telemetry::{CoTenantLabels, Metrics, Source};

/// Reads `stores` at each scrape.
pub(super) fn source(stores: &Stores) -> Source {
    let stores = stores.clone();
    Arc::new(move |metrics: &Metrics, now: Timestamp| {
        let jobs = stores.jobs.state();
        metrics.set_phases(jobs.iter().map(|j| phase(j)));
        metrics.set_queue(jobs.iter().filter(|j| waiting(j)).map(|j| created(j)), now);
        let deployments = stores.deployments.state();
        let statefulsets = stores.statefulsets.state();
        let held = deployments
            .iter()
            .map(|d| (WorkloadKind::Deployment, &d.metadata))
            .chain(statefulsets.iter().map(|s| (WorkloadKind::StatefulSet, &s.metadata)))
            .filter(|(_, meta)| !holders(meta).is_empty())
            .map(|(kind, meta)| (labels(kind, meta), held_since(meta)));
        metrics.set_held(held, now);
    })
}

/// Zeroes the scrape-time gauges when the controller stops (dropped with it): a replica that
/// stopped leading reports nothing it can no longer see.
pub(super) struct Installed(pub Metrics);

impl Drop for Installed {
    fn drop(&mut self) {
        self.0.set_source(None);
    }
}

fn phase(job: &VidiJob) -> Phase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Waiting for its turn: Pending or Queued, neither suspended nor being deleted.
fn waiting(job: &VidiJob) -> bool {
    matches!(phase(job), Phase::Pending | Phase::Queued)
        && !job.spec.suspend
        && job.metadata.deletion_timestamp.is_none()
}

fn created(job: &VidiJob) -> Timestamp {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn labels(kind: WorkloadKind, meta: &ObjectMeta) -> CoTenantLabels {
    CoTenantLabels {
        kind: kind.to_string(),
        workload_namespace: meta.namespace.clone().unwrap_or_default(),
        workload: meta.name.clone().unwrap_or_default(),
    }
}

fn held_since(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.annotations.as_ref()?.get(HELD_SINCE)?.parse().ok()
}
