//! Prometheus metrics: reconciles, errors by kind, jobs by phase, suspends, restores, and the
//! seconds co-tenants spent suspended.
use std::sync::Arc;

use jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::Phase;
use crate::plan::Action;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: String,
}

/// The operator's metrics, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub suspends: Counter,
    pub restores: Counter,
    pub suspended_seconds: Histogram,
    pub registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("vidi_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let jobs = Family::<PhaseLabels, Gauge>::default();
        let suspends = Counter::default();
        let restores = Counter::default();
        let buckets = [10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0];
        let suspended_seconds = Histogram::new(buckets);
        registry.register("reconciles", "Reconciles of VidiJobs", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error kind",
            errors.clone(),
        );
        registry.register("jobs", "VidiJobs by phase", jobs.clone());
        registry.register("suspends", "Co-tenant suspensions written", suspends.clone());
        registry.register("restores", "Co-tenant restores written", restores.clone());
        registry.register(
            "co_tenant_suspended_seconds",
            "Seconds a co-tenant stayed suspended, observed at restore",
            suspended_seconds.clone(),
        );
        Metrics {
            reconciles,
            errors,
            jobs,
            suspends,
            restores,
            suspended_seconds,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a co-tenant write; a restore also observes how long that co-tenant was held
    /// (`held_since`: when its current hold began, if known).
    pub fn count_co_tenant_write(&self, action: &Action, held_since: Option<Timestamp>, now: Timestamp) {
        match action {
            Action::Hold { .. } | Action::HoldOnNode { .. } => {
                self.suspends.inc();
            }
            Action::Restore { .. } => {
                self.restores.inc();
                if let Some(start) = held_since {
                    let secs = (now.as_millisecond() - start.as_millisecond()).max(0) as f64 / 1000.0;
                    self.suspended_seconds.observe(secs);
                }
            }
            _ => {}
        }
    }

    /// Sets the jobs-by-phase gauge from the job cache.
    pub fn set_phases(&self, phases: impl Iterator<Item = Phase>) {
        let all = [
            Phase::Pending,
            Phase::Queued,
            Phase::Suspending,
            Phase::Running,
            Phase::Restoring,
            Phase::Succeeded,
            Phase::Failed,
        ];
        let mut counts = [0i64; 7];
        for p in phases {
            if let Some(i) = all.iter().position(|x| *x == p) {
                counts[i] += 1;
            }
        }
        for (p, n) in all.iter().zip(counts) {
            self.jobs.get_or_create(&PhaseLabels { phase: p.to_string() }).set(n);
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
