//! Reading one's own writes: a reconcile ends once the watch caches show what it wrote.
//!
//! Every reconcile plans from the caches. Without this wait, the reconcile that follows a write
//! (triggered by anything: an Event, a pod, the job itself) often planned from caches that did
//! not have the write yet, and did it again: a co-tenant patch refused with 409 (its
//! resourceVersion guard), a status write refused with 409, an Event published twice, each a
//! wasted request and a replan. Waiting here costs the reconcile about one watch delivery (a few
//! milliseconds), during which kube's Controller folds every trigger of the job into one later
//! reconcile. Correctness never depends on it: the guards still refuse a stale write, and a wait
//! that times out only means the next plan may be refused and made again.
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use crate::api::{VidiJob, WorkloadKind};
use crate::plan::CoTenantId;

use super::observe::Stores;

/// How long a reconcile waits for the caches to show its writes (a watch delivers in
/// milliseconds; a watch being re-established can take longer, and then the reconcile goes on).
pub const WAIT: Duration = Duration::from_secs(2);

/// One write a reconcile made, and how the caches show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wrote {
    /// A co-tenant patched from `before`, the resourceVersion its cached copy had: any other
    /// version in the cache is this write or later (a guarded write lands only on `before`).
    Workload { target: CoTenantId, before: Option<String> },
    /// The job (its status, or its finalizers), written over version `before`.
    Job {
        job: ObjectRef<VidiJob>,
        before: Option<String>,
    },
    /// A pod created (seen once the cache holds it).
    PodCreated { pod: ObjectRef<Pod> },
}

/// The writes of one reconcile, in order.
#[derive(Default)]
pub struct Writes(Mutex<Vec<Wrote>>);

impl Writes {
    pub fn push(&self, w: Wrote) {
        if let Ok(mut list) = self.0.lock() {
            list.push(w);
        }
    }

    fn take(&self) -> Vec<Wrote> {
        self.0.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default()
    }
}

fn changed<K: Resource>(before: &Option<String>) -> impl Fn(Option<&K>) -> bool + '_ {
    move |obj| obj.is_none_or(|o| o.meta().resource_version != *before)
}

/// Waits (at most [`WAIT`] in all) until the caches show every write in `writes`; whether they
/// all did.
pub async fn caught_up(stores: &Stores, writes: &Writes) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut all = true;
    for w in writes.take() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        all &= match &w {
            Wrote::Workload { target, before } => {
                let (name, ns) = (&target.name, &target.namespace);
                match target.kind {
                    WorkloadKind::Deployment => {
                        let r = ObjectRef::<Deployment>::new(name).within(ns);
                        stores.deployments.seen(&r, changed::<Deployment>(before), left).await
                    }
                    WorkloadKind::StatefulSet => {
                        let r = ObjectRef::<StatefulSet>::new(name).within(ns);
                        stores.statefulsets.seen(&r, changed::<StatefulSet>(before), left).await
                    }
                    WorkloadKind::Container | WorkloadKind::Command => true,
                }
            }
            Wrote::Job { job, before } => stores.jobs.seen(job, changed::<VidiJob>(before), left).await,
            Wrote::PodCreated { pod } => stores.pods.seen(pod, |p| p.is_some(), left).await,
        };
        if !all {
            tracing::debug!(write = ?w, "the caches have not shown this write yet; going on");
            break;
        }
    }
    all
}
