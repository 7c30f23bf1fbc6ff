//! The gauges computed at each scrape from the controller's caches: jobs by phase, how long the
//! oldest waiting job has waited, and the co-tenants held now with how long each has been held.
use std::sync::Arc;

use jiff::Timestamp;
use kube::api::ObjectMeta;

use super::act::HELD_SINCE;
use super::observe::{Stores, created, holders};
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
        let scaled = stores.scaled_objects.as_ref().map(|c| c.state()).unwrap_or_default();
        let held = deployments
            .iter()
            .map(|d| (WorkloadKind::Deployment, &d.metadata))
            .chain(statefulsets.iter().map(|s| (WorkloadKind::StatefulSet, &s.metadata)))
            .filter(|(_, meta)| !holders(meta).is_empty())
            .map(|(kind, meta)| (labels(kind, meta), held_since(meta)))
            // A KEDA-scaled Deployment is held through its ScaledObject, which carries the marks.
            .chain(
                scaled
                    .iter()
                    .filter(|so| !holders(&so.metadata).is_empty())
                    .map(|so| (keda_labels(so), held_since(&so.metadata))),
            );
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

fn labels(kind: WorkloadKind, meta: &ObjectMeta) -> CoTenantLabels {
    CoTenantLabels {
        kind: kind.to_string(),
        workload_namespace: meta.namespace.clone().unwrap_or_default(),
        workload: meta.name.clone().unwrap_or_default(),
    }
}

/// The Deployment a held ScaledObject scales, as the series names it.
fn keda_labels(so: &super::keda::ScaledObject) -> CoTenantLabels {
    CoTenantLabels {
        kind: WorkloadKind::Deployment.to_string(),
        workload_namespace: so.metadata.namespace.clone().unwrap_or_default(),
        workload: so.spec.scale_target_ref.name.clone(),
    }
}

pub(super) fn held_since(meta: &ObjectMeta) -> Option<Timestamp> {
    meta.annotations.as_ref()?.get(HELD_SINCE)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(phase: &str, suspend: bool, deleting: bool) -> VidiJob {
        let mut j: VidiJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
            "metadata": {"name": "j", "namespace": "ns", "creationTimestamp": "2026-11-30T10:00:00Z"},
            "spec": {"video": {"url": "https://x/v.mp4"}, "query": "q", "model": {"weights": {"claimName": "w"}}, "suspend": suspend},
            "status": {"phase": phase},
        }))
        .expect("a job");
        if deleting {
            j.metadata.deletion_timestamp = j.metadata.creation_timestamp.clone();
        }
        j
    }

    #[test]
    fn only_jobs_waiting_for_their_turn_count_as_waiting() {
        assert!(waiting(&job("Pending", false, false)));
        assert!(waiting(&job("Queued", false, false)));
        assert!(!waiting(&job("Pending", true, false)), "suspended by spec.suspend");
        assert!(!waiting(&job("Queued", false, true)), "being deleted");
        for phase in ["Suspending", "Running", "Restoring", "Succeeded", "Failed"] {
            assert!(!waiting(&job(phase, false, false)), "{phase}");
        }
    }

    #[test]
    fn the_queue_gauge_is_the_age_of_the_oldest_and_held_series_of_released_co_tenants_go() {
        let metrics = Metrics::default();
        let at = |s: &str| s.parse::<Timestamp>().expect("time");
        let now = at("2026-11-30T10:10:00Z");
        metrics.set_queue(
            [at("2026-11-30T10:05:00Z"), at("2026-11-30T10:00:00Z")].into_iter(),
            now,
        );
        assert_eq!(metrics.queue_oldest_seconds.get(), 600.0);
        metrics.set_queue(std::iter::empty(), now);
        assert_eq!(metrics.queue_oldest_seconds.get(), 0.0);

        let co = |name: &str| CoTenantLabels {
            kind: "Deployment".into(),
            workload_namespace: "ns".into(),
            workload: name.into(),
        };
        metrics.set_held(
            [(co("a"), Some(at("2026-11-30T10:09:30Z"))), (co("b"), None)].into_iter(),
            now,
        );
        assert_eq!(metrics.co_tenants_held.get(), 2);
        assert_eq!(metrics.co_tenant_held_seconds.get_or_create(&co("a")).get(), 30.0);
        metrics.set_held([(co("b"), None)].into_iter(), now);
        let text = metrics.encode();
        assert!(!text.contains(r#"workload="a""#), "{text}");
        assert_eq!(metrics.co_tenants_held.get(), 1);
    }
}
