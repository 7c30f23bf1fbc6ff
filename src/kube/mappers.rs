//! Which jobs care about a change: the mappers the controller's watches use.
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::SelectorExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::{JOB_LABEL, VidiJob};
use crate::plan;

use super::observe::{self, Stores};

/// Keeps the jobs a controller of namespace `own` (or of all namespaces) reconciles.
pub(super) fn within(own: &Option<String>, refs: Vec<ObjectRef<VidiJob>>) -> Vec<ObjectRef<VidiJob>> {
    match own {
        None => refs,
        Some(ns) => refs
            .into_iter()
            .filter(|r| r.namespace.as_deref() == Some(ns.as_str()))
            .collect(),
    }
}

/// Jobs that hold this workload (its `held-by` mark) or may select it: unfinished jobs that look
/// for co-tenants in its namespace, found in the jobs' index under one of the workload's own
/// labels (or under the namespace, for selectors that require no label). Cost: the jobs of
/// those keys, not every job of the namespace.
pub(super) fn interested_jobs(
    stores: &Stores,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<ObjectRef<VidiJob>> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let empty = Default::default();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    let mut jobs: Vec<ObjectRef<VidiJob>> = observe::holders(meta)
        .into_iter()
        .map(|k| ObjectRef::new(&k.name).within(&k.namespace))
        .collect();
    let keys = std::iter::once(observe::selecting_key(&ns))
        .chain(labels.iter().map(|(k, v)| observe::selecting_label_key(&ns, k, v)));
    for key in keys {
        for job in stores.jobs.indexed(&key) {
            let r = ObjectRef::from_obj(&*job);
            if !jobs.contains(&r) && observe::co_tenant_selector(&job).is_some_and(|s| s.matches(labels)) {
                jobs.push(r);
            }
        }
    }
    jobs
}

/// A Vidi pod changed: wake its job. A co-tenant pod came or went: wake the jobs holding its
/// workload (found through the workloads' pod-selector index). A job waits on pods only while
/// it holds their workloads (Suspending, Restoring), so no other job needs to hear of them.
pub(super) fn jobs_waiting_on_pod(stores: &Stores, pod: &Pod) -> Vec<ObjectRef<VidiJob>> {
    let ns = pod.namespace().unwrap_or_default();
    if pod.labels().contains_key(JOB_LABEL) {
        return pod
            .owner_references()
            .iter()
            .filter(|o| o.kind == "VidiJob" && o.api_version.starts_with("vidi.dev/"))
            .map(|o| ObjectRef::new(&o.name).within(&ns))
            .collect();
    }
    observe::holders_of_pod(stores, pod)
}

/// A job changed: the waiting jobs of its pool may go now (or must keep waiting).
pub(super) fn waiting_peers(stores: &Stores, job: &VidiJob) -> Vec<ObjectRef<VidiJob>> {
    let pool = plan::queue::job_pool(&job.spec, &job.status.clone().unwrap_or_default());
    let me = ObjectRef::from_obj(job);
    stores
        .jobs
        .index()
        .get(&observe::waiting_key(&pool))
        .into_iter()
        .filter(|r| *r != me)
        .collect()
}
