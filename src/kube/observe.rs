//! Turns the watch caches into the planner's `Snapshot`. Reads only reflector stores, through
//! their side indexes (workloads and pods by namespace, label and holder; jobs by pool): no API
//! call and no scan of a whole cache per reconcile.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ManagedFieldsEntry, ObjectMeta};
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;

use crate::api::{
    ATTEMPT_LABEL, FieldError, HELD_BY, JOB_LABEL, ORIGINAL_REPLICAS, Phase, Precision, Runtime, VidiJob, WorkloadKind,
    YIELD_LABEL,
};
use crate::plan::{
    Attempt, AttemptState, CoTenant, CoTenantId, JobKey, JobView, Rival, Selection, Snapshot, Termination, queue,
};

use super::cache::Cache;
use super::pod::{GATE_CONTAINER, PRECISION_LABEL, VIDI_CONTAINER};

/// The field manager the operator writes with; changes by any other manager are "someone else".
pub const MANAGER: &str = "vidi-operator";

/// The watch caches the controller keeps.
#[derive(Clone)]
pub struct Stores {
    pub jobs: Cache<VidiJob>,
    pub deployments: Cache<Deployment>,
    pub statefulsets: Cache<StatefulSet>,
    pub pods: Cache<Pod>,
    pub claims: Cache<PersistentVolumeClaim>,
    /// Nodes, for choosing where a job runs (cluster-wide).
    pub nodes: Cache<Node>,
    /// HorizontalPodAutoscalers, to know which co-tenants an autoscaler manages.
    pub autoscalers: Cache<HorizontalPodAutoscaler>,
    /// KEDA ScaledObjects, when the API server serves them (`None`: no KEDA handling at all).
    pub scaled_objects: Option<Cache<super::keda::ScaledObject>>,
}

impl Stores {
    /// The caches that have not listed yet. Planning before every cache has listed would see
    /// co-tenants, pods and claims as missing (a restarted operator would fail jobs whose claims
    /// simply were not listed yet).
    pub fn unsynced(&self) -> Vec<&'static str> {
        let listed = [
            ("vidijobs", self.jobs.is_listed()),
            ("deployments", self.deployments.is_listed()),
            ("statefulsets", self.statefulsets.is_listed()),
            ("pods", self.pods.is_listed()),
            ("persistentvolumeclaims", self.claims.is_listed()),
            ("nodes", self.nodes.is_listed()),
            ("horizontalpodautoscalers", self.autoscalers.is_listed()),
            (
                "scaledobjects",
                self.scaled_objects.as_ref().is_none_or(|c| c.is_listed()),
            ),
        ];
        listed.into_iter().filter(|(_, ok)| !ok).map(|(name, _)| name).collect()
    }

    /// `read` of the cached metadata of a Deployment or StatefulSet co-tenant (None for other
    /// kinds, or when it is not cached).
    pub fn workload_meta<R>(&self, target: &CoTenantId, read: impl FnOnce(&ObjectMeta) -> Option<R>) -> Option<R> {
        let (name, ns) = (&target.name, &target.namespace);
        match target.kind {
            WorkloadKind::Deployment => read(&self.deployments.get(&ObjectRef::new(name).within(ns))?.metadata),
            WorkloadKind::StatefulSet => read(&self.statefulsets.get(&ObjectRef::new(name).within(ns))?.metadata),
            WorkloadKind::Container | WorkloadKind::Command => None,
        }
    }
}

/// Index key: every object of a namespace.
pub fn namespace_key(ns: &str) -> String {
    format!("ns:{ns}")
}

/// Index key: objects of a namespace with this label.
pub fn label_key(ns: &str, k: &str, v: &str) -> String {
    format!("label:{ns}/{k}={v}")
}

/// Index key: workloads held by this job.
pub fn held_key(job: &JobKey) -> String {
    format!("held:{job}")
}

/// Index key: unfinished jobs that look for co-tenants in this namespace with a selector that
/// requires no label (only expressions): every change there may concern them.
pub fn selecting_key(ns: &str) -> String {
    format!("selecting:{ns}")
}

/// Index key: unfinished jobs that look for co-tenants in this namespace with a selector that
/// requires `k=v`. A change of a workload wakes only the jobs under its own labels' keys.
pub fn selecting_label_key(ns: &str, k: &str, v: &str) -> String {
    format!("selecting:{ns}/{k}={v}")
}

/// The one key a job is found under for co-tenants of `ns`: one label its selector requires
/// (any one will do, since a workload it matches carries them all), preferring one other than
/// the opt-in label, which every co-tenant carries; else the namespace-wide key.
fn selecting_keys_of(job: &VidiJob, ns: &str) -> String {
    let selector = crate::api::selection::effective(job.spec.co_tenants.selector.as_ref());
    let required = selector.match_labels.unwrap_or_default();
    let pair = required
        .iter()
        .find(|(k, _)| k.as_str() != YIELD_LABEL)
        .or_else(|| required.iter().next());
    match pair {
        Some((k, v)) => selecting_label_key(ns, k, v),
        None => selecting_key(ns),
    }
}

/// Index key: jobs waiting (Pending, Queued) in this GPU pool.
pub fn waiting_key(pool: &str) -> String {
    format!("waiting:{pool}")
}

/// Index key: unfinished jobs of this GPU pool (the rivals of a job).
pub fn unfinished_key(pool: &str) -> String {
    format!("unfinished:{pool}")
}

fn meta_keys(meta: &ObjectMeta) -> Vec<String> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let mut keys = vec![namespace_key(&ns)];
    for (k, v) in meta.labels.iter().flatten() {
        keys.push(label_key(&ns, k, v));
    }
    keys
}

/// Pods are indexed by namespace and label.
pub fn pod_keys(pod: &Pod) -> Vec<String> {
    meta_keys(&pod.metadata)
}

/// Index key: workloads whose pod selector requires this label.
pub fn pod_selector_key(ns: &str, k: &str, v: &str) -> String {
    format!("podsel:{ns}/{k}={v}")
}

/// Workloads are indexed by namespace, label, holder and the labels their pod selector requires.
fn workload_keys(meta: &ObjectMeta, pod_selector: &LabelSelector) -> Vec<String> {
    let ns = meta.namespace.clone().unwrap_or_default();
    let mut keys = meta_keys(meta);
    keys.extend(holders(meta).iter().map(held_key));
    for (k, v) in pod_selector.match_labels.iter().flatten() {
        keys.push(pod_selector_key(&ns, k, v));
    }
    keys
}

pub fn deployment_keys(d: &Deployment) -> Vec<String> {
    workload_keys(&d.metadata, &d.spec.selector)
}

pub fn statefulset_keys(s: &StatefulSet) -> Vec<String> {
    workload_keys(&s.metadata, &s.spec.selector)
}

/// The jobs holding the workloads whose pods `pod` may be (by their pod selectors).
pub fn holders_of_pod(stores: &Stores, pod: &Pod) -> Vec<ObjectRef<VidiJob>> {
    let ns = pod.namespace().unwrap_or_default();
    let mut jobs: Vec<ObjectRef<VidiJob>> = Vec::new();
    let mut add = |meta: &ObjectMeta, selector: &LabelSelector| {
        let selects = Selector::try_from(selector.clone()).is_ok_and(|s| !s.selects_all() && s.matches(pod.labels()));
        if selects {
            for k in holders(meta) {
                let r = ObjectRef::new(&k.name).within(&k.namespace);
                if !jobs.contains(&r) {
                    jobs.push(r);
                }
            }
        }
    };
    for (k, v) in pod.labels() {
        let key = pod_selector_key(&ns, k, v);
        for d in stores.deployments.indexed(&key) {
            add(&d.metadata, &d.spec.selector);
        }
        for s in stores.statefulsets.indexed(&key) {
            add(&s.metadata, &s.spec.selector);
        }
    }
    jobs
}

/// HorizontalPodAutoscalers are indexed by namespace.
pub fn autoscaler_keys(hpa: &HorizontalPodAutoscaler) -> Vec<String> {
    vec![namespace_key(&hpa.namespace().unwrap_or_default())]
}

/// Claims are looked up by name only.
pub fn no_keys<K>(_: &K) -> Vec<String> {
    Vec::new()
}

/// Jobs are indexed by what the mappers and the snapshot ask: the namespaces an unfinished job
/// selects in, the pool a job waits in or competes in.
pub fn job_keys(job: &VidiJob) -> Vec<String> {
    let status = job.status.clone().unwrap_or_default();
    let phase = job.status.as_ref().map(|s| s.phase).unwrap_or(Phase::Pending);
    let pool = queue::job_pool(&job.spec, &status);
    let mut keys = Vec::new();
    if phase.is_terminal() {
        return keys;
    }
    let namespaces = co_tenant_namespaces(job);
    keys.extend(namespaces.iter().map(|ns| selecting_keys_of(job, ns)));
    keys.push(unfinished_key(&pool));
    if matches!(phase, Phase::Pending | Phase::Queued) {
        keys.push(waiting_key(&pool));
    }
    keys
}

/// The key a job is known by in holder marks.
pub fn job_key(job: &VidiJob) -> JobKey {
    JobKey::new(job.namespace().unwrap_or_default(), job.name_any())
}

/// Parses `vidi.dev/held-by`.
pub fn holders(meta: &ObjectMeta) -> BTreeSet<JobKey> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(HELD_BY))
        .map(|v| v.split(',').filter_map(JobKey::parse).collect())
        .unwrap_or_default()
}

fn original_replicas(meta: &ObjectMeta) -> Option<i32> {
    meta.annotations.as_ref()?.get(ORIGINAL_REPLICAS)?.trim().parse().ok()
}

/// The selector a job uses for co-tenants (default: the opt-in label).
pub fn co_tenant_selector(job: &VidiJob) -> Option<Selector> {
    crate::api::selection::compile(job.spec.co_tenants.selector.as_ref())
}

/// Namespaces a job looks for co-tenants in.
pub fn co_tenant_namespaces(job: &VidiJob) -> Vec<String> {
    if job.spec.co_tenants.namespaces.is_empty() {
        vec![job.namespace().unwrap_or_default()]
    } else {
        job.spec.co_tenants.namespaces.clone()
    }
}

/// One workload, whatever its kind.
pub(super) struct Workload<'a> {
    pub(super) kind: WorkloadKind,
    pub(super) meta: &'a ObjectMeta,
    pub(super) replicas: i32,
    pub(super) pod_selector: Option<&'a LabelSelector>,
}

fn workloads<'a>(
    deployments: &'a [std::sync::Arc<Deployment>],
    sets: &'a [std::sync::Arc<StatefulSet>],
) -> Vec<Workload<'a>> {
    let d = deployments.iter().map(|d| Workload {
        kind: WorkloadKind::Deployment,
        meta: &d.metadata,
        replicas: d.spec.replicas.unwrap_or(1),
        pod_selector: Some(&d.spec.selector),
    });
    let s = sets.iter().map(|s| Workload {
        kind: WorkloadKind::StatefulSet,
        meta: &s.metadata,
        replicas: s.spec.replicas.unwrap_or(1),
        pod_selector: Some(&s.spec.selector),
    });
    d.chain(s).collect()
}

/// A managedFields entry that owns `spec.replicas` of the object itself: the status
/// subresource's `status.replicas` (the workload controller's, after every scale) does not count.
pub fn sets_spec_replicas(entry: &ManagedFieldsEntry) -> bool {
    entry.subresource.as_deref().is_none_or(str::is_empty)
        && entry
            .fields_v1
            .as_ref()
            .is_some_and(|v| v.0.get("f:spec").and_then(|s| s.get("f:replicas")).is_some())
}

/// Who last changed `spec.replicas`, other than the operator (from managedFields).
fn last_scaled_by(meta: &ObjectMeta) -> Option<String> {
    meta.managed_fields
        .as_ref()?
        .iter()
        .filter(|f| f.manager.as_deref() != Some(MANAGER))
        .filter(|f| sets_spec_replicas(f))
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .and_then(|f| f.manager.clone())
}

/// The cached objects of `ns` that may match `selector`: those under its rarest matchLabels pair,
/// else the whole namespace. The caller still applies the whole selector.
pub(super) fn candidates<K>(cache: &Cache<K>, ns: &str, selector: Option<&LabelSelector>) -> Vec<Arc<K>>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let rarest = selector
        .and_then(|s| s.match_labels.as_ref())
        .into_iter()
        .flatten()
        .map(|(k, v)| label_key(ns, k, v))
        .min_by_key(|key| cache.index().count(key));
    cache.indexed(&rarest.unwrap_or_else(|| namespace_key(ns)))
}

fn live_pods(pods: &Cache<Pod>, namespace: &str, selector: Option<&LabelSelector>) -> u32 {
    let Some(parsed) = selector.cloned().and_then(|s| Selector::try_from(s).ok()) else {
        return 0;
    };
    if parsed.selects_all() {
        return 0;
    }
    candidates(pods, namespace, selector)
        .iter()
        .filter(|p| parsed.matches(p.labels()))
        .filter(|p| !matches!(pod_phase(p), Some("Succeeded" | "Failed")))
        .count() as u32
}

pub(super) fn pod_phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref()?.phase.as_deref()
}

/// The workloads of one kind a job may care about: named by its refs, possibly matched by its
/// selector in its namespaces, or held by it.
fn relevant<K>(
    cache: &Cache<K>,
    job: &VidiJob,
    namespaces: &[String],
    selector: &LabelSelector,
    key: &JobKey,
    kind: WorkloadKind,
) -> Vec<Arc<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    let mut found: Vec<Arc<K>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut add = |objects: Vec<Arc<K>>| {
        for o in objects {
            if seen.insert((o.meta().namespace.clone(), o.meta().name.clone())) {
                found.push(o);
            }
        }
    };
    for r in job.spec.co_tenants.refs.iter().filter(|r| r.kind == kind) {
        let ns = r.namespace.clone().unwrap_or_else(|| key.namespace.clone());
        add(cache.get(&ObjectRef::new(&r.name).within(&ns)).into_iter().collect());
    }
    for ns in namespaces {
        add(candidates(cache, ns, Some(selector)));
    }
    add(cache.indexed(&held_key(key)));
    found
}

/// Builds the snapshot for `job`.
pub fn snapshot(job: &VidiJob, stores: &Stores, dry_run: bool, now: Timestamp) -> Snapshot {
    let key = job_key(job);
    let namespace = key.namespace.clone();
    let selector = co_tenant_selector(job);
    let namespaces = co_tenant_namespaces(job);
    // Only the workloads this job can care about, from the indexes: those its refs name, those
    // its selector may match in its namespaces, and those it holds.
    let label_selector = job.spec.co_tenants.selector.clone().unwrap_or_else(|| LabelSelector {
        match_labels: Some([(YIELD_LABEL.to_string(), "true".to_string())].into()),
        match_expressions: None,
    });
    let deployments = relevant(
        &stores.deployments,
        job,
        &namespaces,
        &label_selector,
        &key,
        WorkloadKind::Deployment,
    );
    let sets = relevant(
        &stores.statefulsets,
        job,
        &namespaces,
        &label_selector,
        &key,
        WorkloadKind::StatefulSet,
    );
    let pods = &stores.pods;
    let all = workloads(&deployments, &sets);
    let mut problems = Vec::new();

    let mut co_tenants = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in job.spec.co_tenants.refs.iter().enumerate() {
        let ns = r.namespace.clone().unwrap_or_else(|| namespace.clone());
        match all.iter().find(|w| {
            w.kind == r.kind && w.meta.name.as_deref() == Some(&r.name) && w.meta.namespace.as_deref() == Some(&ns)
        }) {
            Some(w) => {
                seen.insert((w.kind, ns.clone(), r.name.clone()));
                let mut co = co_tenant(w, Selection::Ref(i), pods);
                match &r.release {
                    Some(hook) => co.release_hook = Some(hook.clone()),
                    None => problems.extend(release_problems(w)),
                }
                co_tenants.push(co);
            }
            None => problems.push(FieldError::new(
                format!("spec.coTenants.refs[{i}]"),
                format!("{} {ns}/{} not found", r.kind, r.name),
            )),
        }
    }
    for w in &all {
        let ns = w.meta.namespace.clone().unwrap_or_default();
        let name = w.meta.name.clone().unwrap_or_default();
        if seen.contains(&(w.kind, ns.clone(), name.clone())) {
            continue;
        }
        let empty = BTreeMap::new();
        let labels = w.meta.labels.as_ref().unwrap_or(&empty);
        let selected = namespaces.contains(&ns) && selector.as_ref().is_some_and(|s| s.matches(labels));
        let held = holders(w.meta).contains(&key);
        if selected || held {
            let selection = if selected {
                problems.extend(release_problems(w));
                Selection::Selector
            } else {
                Selection::HeldOnly
            };
            co_tenants.push(co_tenant(w, selection, pods));
        }
    }
    if job.spec.co_tenants.selector.is_some() && selector.is_none() {
        problems.push(FieldError::new(
            "spec.coTenants.selector",
            "is not a valid label selector",
        ));
    }
    problems.extend(missing_claims(job, &stores.claims));

    let attempts = pods
        .indexed(&label_key(&namespace, JOB_LABEL, &key.name))
        .iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| Some(&o.uid) == job.metadata.uid.as_ref())
        })
        .filter_map(|p| attempt(p))
        .collect();

    let status = job.status.clone().unwrap_or_default();
    let pool = queue::job_pool(&job.spec, &status);
    let rivals = stores
        .jobs
        .indexed(&unfinished_key(&pool))
        .iter()
        .filter(|other| other.metadata.uid != job.metadata.uid && job_key(other) != key)
        .filter(|other| other.status.as_ref().is_none_or(|s| !s.phase.is_terminal()))
        .filter(|other| queue::job_pool(&other.spec, &other.status.clone().unwrap_or_default()) == pool)
        .map(|other| rival(other))
        .collect();

    super::keda::overlay(stores, &mut co_tenants);
    let placement = super::placement::observe(job, stores, &all, &co_tenants);
    Snapshot {
        runtime: Runtime::Kubernetes,
        job: JobView {
            key,
            generation: job.metadata.generation,
            created: created(job),
            spec: job.spec.clone(),
            status: job.status.clone().unwrap_or_default(),
            deleting: job.metadata.deletion_timestamp.is_some(),
        },
        co_tenants,
        attempts,
        rivals,
        problems,
        gpu_total_bytes: None,
        gpu_free_bytes: None,
        placement,
        dry_run,
        now,
    }
}

/// Every co-tenant that carries holder marks, for the start-up sweep.
pub fn held_co_tenants(stores: &Stores) -> Vec<CoTenant> {
    let deployments = stores.deployments.state();
    let sets = stores.statefulsets.state();
    let mut all: Vec<CoTenant> = workloads(&deployments, &sets)
        .iter()
        .map(|w| co_tenant(w, Selection::HeldOnly, &stores.pods))
        .collect();
    // KEDA-scaled ones carry their marks on their ScaledObject.
    super::keda::overlay(stores, &mut all);
    all.retain(|c| !c.holders.is_empty());
    all
}

/// Another job of the same pool, as the queue sees it.
pub fn rival(other: &VidiJob) -> Rival {
    Rival {
        key: job_key(other),
        created: created(other),
        priority: other.spec.priority,
        phase: other.status.as_ref().map(|s| s.phase).unwrap_or(Phase::Pending),
        suspended: other.spec.suspend,
        deleting: other.metadata.deletion_timestamp.is_some(),
    }
}

/// When the job was created (its queue age).
pub fn created(job: &VidiJob) -> Timestamp {
    job.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn co_tenant(w: &Workload<'_>, selection: Selection, pods: &Cache<Pod>) -> CoTenant {
    let ns = w.meta.namespace.clone().unwrap_or_default();
    CoTenant {
        id: CoTenantId {
            kind: w.kind,
            namespace: ns.clone(),
            name: w.meta.name.clone().unwrap_or_default(),
        },
        replicas: w.replicas,
        live_pods: live_pods(pods, &ns, w.pod_selector),
        holders: holders(w.meta),
        original_replicas: original_replicas(w.meta),
        opted_in: w
            .meta
            .labels
            .as_ref()
            .and_then(|l| l.get(YIELD_LABEL))
            .is_some_and(|v| v == "true"),
        selection,
        last_scaled_by: last_scaled_by(w.meta),
        revision: w.meta.resource_version.clone(),
        gpu_memory_bytes: crate::api::selection::declared_gpu_memory(
            w.meta.annotations.as_ref(),
            w.meta.labels.as_ref(),
            w.replicas,
        ),
        yield_priority: crate::api::selection::yield_priority(w.meta.annotations.as_ref(), w.meta.labels.as_ref()),
        // Bad release annotations are the job's problem (`release_problems`); here, no hook.
        release_hook: w
            .meta
            .annotations
            .as_ref()
            .and_then(|a| crate::api::release::from_marks(a, "annotation").ok().flatten()),
        released: w
            .meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(crate::api::RELEASED))
            .and_then(|m| serde_json::from_str(m).ok()),
    }
}

/// Release annotations on a selected workload that do not parse: refused before anything is
/// suspended, naming the workload and the annotation.
fn release_problems(w: &Workload<'_>) -> Vec<FieldError> {
    let Some(annotations) = w.meta.annotations.as_ref() else {
        return Vec::new();
    };
    match crate::api::release::from_marks(annotations, "annotation") {
        Ok(_) => Vec::new(),
        Err(errors) => errors
            .into_iter()
            .map(|e| {
                FieldError::new(
                    format!(
                        "{} {}/{}: {}",
                        w.kind,
                        w.meta.namespace.as_deref().unwrap_or_default(),
                        w.meta.name.as_deref().unwrap_or_default(),
                        e.field
                    ),
                    e.message,
                )
            })
            .collect(),
    }
}

/// PersistentVolumeClaims the spec names that do not exist.
fn missing_claims(job: &VidiJob, claims: &Cache<PersistentVolumeClaim>) -> Vec<FieldError> {
    let ns = job.namespace().unwrap_or_default();
    let spec = &job.spec;
    let named = [
        (
            "spec.video.volume.claimName",
            spec.video.volume.as_ref().map(|v| &v.claim_name),
        ),
        ("spec.model.weights.claimName", spec.model.weights.claim_name.as_ref()),
        (
            "spec.model.hfCache.claimName",
            spec.model.hf_cache.as_ref().and_then(|c| c.claim_name.as_ref()),
        ),
        (
            "spec.output.volume.claimName",
            spec.output
                .as_ref()
                .and_then(|o| o.volume.as_ref())
                .map(|v| &v.claim_name),
        ),
    ];
    named
        .into_iter()
        .filter_map(|(field, claim)| {
            let claim = claim?;
            let exists = claims.get(&ObjectRef::new(claim).within(&ns)).is_some();
            (!exists).then(|| {
                FieldError::new(
                    field,
                    format!("PersistentVolumeClaim {claim:?} not found in namespace {ns:?}"),
                )
            })
        })
        .collect()
}

fn termination(status: Option<&ContainerStatus>) -> Option<Termination> {
    let t = status?.state.as_ref()?.terminated.as_ref()?;
    Some(Termination {
        exit_code: t.exit_code,
        reason: t.reason.clone(),
        message: t.message.clone(),
    })
}

/// One Vidi pod as the planner's `Attempt`.
pub fn attempt(pod: &Pod) -> Option<Attempt> {
    let number: u32 = pod.labels().get(ATTEMPT_LABEL)?.parse().ok()?;
    let precision = pod.labels().get(PRECISION_LABEL).and_then(|p| match p.as_str() {
        "fp16" => Some(Precision::Fp16),
        "int8" => Some(Precision::Int8),
        "int4" => Some(Precision::Int4),
        _ => None,
    });
    let status = pod.status.as_ref();
    let gate_status = status.and_then(|s| {
        s.init_container_statuses
            .as_ref()?
            .iter()
            .find(|c| c.name == GATE_CONTAINER)
    });
    let main_status = status.and_then(|s| s.container_statuses.as_ref()?.iter().find(|c| c.name == VIDI_CONTAINER));
    let gate = termination(gate_status);
    let main = termination(main_status);
    let gate_report = gate
        .as_ref()
        .filter(|g| g.exit_code == 0)
        .and_then(|g| g.message.clone());
    let state = match pod_phase(pod) {
        Some("Succeeded" | "Failed") => AttemptState::Finished {
            gate: gate.clone(),
            main,
            reason: status.and_then(|s| s.reason.clone()),
        },
        _ if pod.metadata.deletion_timestamp.is_some() => AttemptState::Terminating,
        Some("Running") => AttemptState::Running,
        _ => AttemptState::Pending {
            waiting: waiting_reason(pod),
        },
    };
    Some(Attempt {
        number,
        name: pod.name_any(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        precision,
        gate_report,
        state,
    })
}

/// Why a pod is not running yet: a container waiting (image pull, …) or the scheduler's word.
fn waiting_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for c in containers {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref())
            && let Some(reason) = &w.reason
            && reason != "PodInitializing"
            && reason != "ContainerCreating"
        {
            return Some(match &w.message {
                Some(m) => format!("{} {reason}: {m}", c.name),
                None => format!("{} {reason}", c.name),
            });
        }
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            format!(
                "unschedulable: {}",
                c.message
                    .clone()
                    .unwrap_or_else(|| c.reason.clone().unwrap_or_default())
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(selector: serde_json::Value) -> VidiJob {
        let mut spec = serde_json::json!({
            "video": {"url": "https://x/v.mp4"}, "query": "q", "model": {"weights": {"claimName": "w"}},
        });
        if !selector.is_null() {
            spec["coTenants"] = serde_json::json!({"selector": selector});
        }
        match serde_json::from_value(serde_json::json!({
            "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
            "metadata": {"name": "j", "namespace": "media"}, "spec": spec,
        })) {
            Ok(j) => j,
            Err(e) => panic!("a job: {e}"),
        }
    }

    #[test]
    fn a_job_is_found_under_one_label_its_selector_requires_preferring_one_not_every_co_tenant_has() {
        assert_eq!(
            selecting_keys_of(&job(serde_json::Value::Null), "media"),
            selecting_label_key("media", YIELD_LABEL, "true")
        );
        let pool = serde_json::json!({"matchLabels": {YIELD_LABEL: "true", "gpu-node": "node-7"}});
        assert_eq!(
            selecting_keys_of(&job(pool), "media"),
            selecting_label_key("media", "gpu-node", "node-7")
        );
        let expressions = serde_json::json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]});
        assert_eq!(selecting_keys_of(&job(expressions), "media"), selecting_key("media"));
        // Every unfinished job has its key per namespace it selects in.
        assert!(job_keys(&job(serde_json::Value::Null)).contains(&selecting_label_key("media", YIELD_LABEL, "true")));
    }
}
