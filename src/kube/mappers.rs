//! Which jobs care about a change: the mappers the controller's watches use.
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::SelectorExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::{JOB_LABEL, Phase, VidiJob};
use crate::plan;

use super::observe::{self, Stores, job_key};

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

/// Jobs that hold this workload or may select it (unfinished ones).
pub(super) fn interested_jobs(
    stores: &Stores,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<ObjectRef<VidiJob>> {
    let held = observe::holders(meta);
    let ns = meta.namespace.clone().unwrap_or_default();
    let empty = Default::default();
    let labels = meta.labels.as_ref().unwrap_or(&empty);
    stores
        .jobs
        .state()
        .iter()
        .filter(|job| {
            if held.contains(&job_key(job)) {
                return true;
            }
            let unfinished = job.status.as_ref().is_none_or(|s| !s.phase.is_terminal());
            unfinished
                && observe::co_tenant_namespaces(job).contains(&ns)
                && observe::co_tenant_selector(job).is_some_and(|s| s.matches(labels))
        })
        .map(|job| ObjectRef::from_obj(&**job))
        .collect()
}

/// A Vidi pod changed: wake its job. A co-tenant pod came or went: wake the jobs suspending in
/// its namespace.
pub(super) fn jobs_waiting_on_pod(stores: &Stores, pod: &Pod) -> Vec<ObjectRef<VidiJob>> {
    if pod.labels().contains_key(JOB_LABEL) {
        let ns = pod.namespace().unwrap_or_default();
        return pod
            .owner_references()
            .iter()
            .filter(|o| o.kind == "VidiJob" && o.api_version.starts_with("vidi.dev/"))
            .map(|o| ObjectRef::new(&o.name).within(&ns))
            .collect();
    }
    let ns = pod.namespace().unwrap_or_default();
    stores
        .jobs
        .state()
        .iter()
        .filter(|job| job.status.as_ref().is_some_and(|s| s.phase == Phase::Suspending))
        .filter(|job| observe::co_tenant_namespaces(job).contains(&ns) || job.namespace().as_deref() == Some(&ns))
        .map(|job| ObjectRef::from_obj(&**job))
        .collect()
}

/// A job changed: the waiting jobs of its pool may go now (or must keep waiting).
pub(super) fn waiting_peers(stores: &Stores, job: &VidiJob) -> Vec<ObjectRef<VidiJob>> {
    let pool = plan::queue::job_pool(&job.spec, &job.status.clone().unwrap_or_default());
    stores
        .jobs
        .state()
        .iter()
        .filter(|other| other.metadata.uid != job.metadata.uid)
        .filter(|other| {
            other
                .status
                .as_ref()
                .is_none_or(|s| matches!(s.phase, Phase::Pending | Phase::Queued))
        })
        .filter(|other| plan::queue::job_pool(&other.spec, &other.status.clone().unwrap_or_default()) == pool)
        .map(|other| ObjectRef::from_obj(&**other))
        .collect()
}
