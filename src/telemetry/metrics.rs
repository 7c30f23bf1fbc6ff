//! Prometheus metrics: reconciles, errors by kind, jobs by phase, suspends, restores, the
//! seconds co-tenants spent suspended; and, computed at each scrape from the controller's caches,
//! the co-tenants held now and for how long, how long the oldest job has waited, and whether this
//! replica leads.
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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

/// A co-tenant held suspended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CoTenantLabels {
    pub kind: String,
    /// Not `namespace`: a scrape's target labels (`namespace`, `pod`) would rename it.
    pub workload_namespace: String,
    pub workload: String,
}

/// What the gauges computed at scrape time are computed from (the controller's caches).
pub type Source = Arc<dyn Fn(&Metrics, Timestamp) + Send + Sync>;

/// The operator's metrics, registered once.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub jobs: Family<PhaseLabels, Gauge>,
    pub suspends: Counter,
    pub restores: Counter,
    pub suspended_seconds: Histogram,
    /// 1 while this replica acts: it holds the Lease, or runs without leader election.
    pub leader: Gauge,
    /// Co-tenants whose `vidi.dev/held-by` names a job, now.
    pub co_tenants_held: Gauge,
    /// Seconds since each held co-tenant's hold began (`vidi.dev/held-since`).
    pub co_tenant_held_seconds: Family<CoTenantLabels, Gauge<f64, AtomicU64>>,
    /// Seconds the longest-waiting job (Pending or Queued, not suspended) has existed; 0: none.
    pub queue_oldest_seconds: Gauge<f64, AtomicU64>,
    source: Arc<Mutex<Option<Source>>>,
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
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica acts (holds the Lease, or runs without leader election)",
            leader.clone(),
        );
        let co_tenants_held = Gauge::default();
        registry.register(
            "co_tenants_held",
            "Co-tenants held suspended now (vidi.dev/held-by names a job)",
            co_tenants_held.clone(),
        );
        let co_tenant_held_seconds = Family::<CoTenantLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "co_tenant_held_seconds",
            "Seconds since each held co-tenant's hold began",
            co_tenant_held_seconds.clone(),
        );
        let queue_oldest_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "queue_oldest_seconds",
            "Seconds the longest-waiting VidiJob (Pending or Queued, not suspended) has existed; 0 when none waits",
            queue_oldest_seconds.clone(),
        );
        Metrics {
            reconciles,
            errors,
            jobs,
            suspends,
            restores,
            suspended_seconds,
            leader,
            co_tenants_held,
            co_tenant_held_seconds,
            queue_oldest_seconds,
            source: Arc::default(),
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// Counts a co-tenant write; a restore also observes how long that co-tenant was held
    /// (`held_since`: when its current hold began, if known).
    pub fn count_co_tenant_write(&self, action: &Action, held_since: Option<Timestamp>, now: Timestamp) {
        match action {
            Action::Hold { .. } | Action::HoldInPlace { .. } | Action::HoldOnNode { .. } => {
                self.suspends.inc();
            }
            Action::Restore { .. } | Action::Resume { .. } => {
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

    /// Computes the scrape-time gauges from `source` from now on (`None`: the controller has
    /// stopped; they are zeroed).
    pub fn set_source(&self, source: Option<Source>) {
        let stopped = source.is_none();
        if let Ok(mut slot) = self.source.lock() {
            *slot = source;
        }
        if stopped {
            self.set_phases(std::iter::empty());
            self.set_held(std::iter::empty(), Timestamp::now());
            self.queue_oldest_seconds.set(0.0);
        }
    }

    /// Sets the held co-tenant gauges: each held co-tenant with when its hold began (if known).
    pub fn set_held(&self, held: impl Iterator<Item = (CoTenantLabels, Option<Timestamp>)>, now: Timestamp) {
        self.co_tenant_held_seconds.clear();
        let mut count = 0;
        for (labels, since) in held {
            count += 1;
            let secs = since
                .map(|s| (now.as_millisecond() - s.as_millisecond()).max(0) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.co_tenant_held_seconds.get_or_create(&labels).set(secs);
        }
        self.co_tenants_held.set(count);
    }

    /// Sets the oldest waiting job's age from the creation times of the waiting jobs.
    pub fn set_queue(&self, waiting: impl Iterator<Item = Timestamp>, now: Timestamp) {
        let oldest = waiting.min();
        let secs = oldest
            .map(|t| (now.as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        self.queue_oldest_seconds.set(secs);
    }

    /// The Prometheus text exposition, with the scrape-time gauges computed first.
    pub fn encode(&self) -> String {
        let source = self.source.lock().ok().and_then(|s| s.clone());
        if let Some(source) = source {
            source(self, Timestamp::now());
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
