//! The controller: one reconcile = observe (caches) → plan → act → write status.
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Patch, PatchParams};
use kube::core::SelectorExt;
use kube::runtime::Controller;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info_span};

use crate::api::{JOB_LABEL, Phase, VidiJob, VidiJobStatus};
use crate::plan::{self, Decision, stale_holders};
use crate::telemetry::{ErrorLabels, Health, Metrics};

use super::Error;
use super::act::{Actor, co_tenant_patch};
use super::cache::{Cache, Scope, feed, trim_managed_fields, trim_to_replica_managers};
use super::observe::{self, MANAGER, Stores, job_key};
use super::pod::PodDefaults;

/// Reconciles in flight at once per job controller: bounds the memory of a burst (a restart with
/// a thousand jobs) without slowing single hand-offs.
const RECONCILE_CONCURRENCY: u16 = 16;

/// How soon a reconcile whose status write met a newer version plans again (the watch usually
/// delivers that version first, which triggers it sooner).
const STATUS_CONFLICT_RETRY: Duration = Duration::from_millis(500);

/// The finalizer that guarantees a restore before a job goes away.
pub const FINALIZER: &str = "vidi.dev/restore-co-tenants";

/// Operator settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespaces watched for jobs, co-tenants, pods and claims.
    pub scope: Scope,
    pub dry_run: bool,
    pub pods: PodDefaults,
    /// Name this replica publishes Events as.
    pub instance: String,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub recorder: Recorder,
    pub settings: Settings,
    pub metrics: Metrics,
}

/// The clients the controller talks through: watches stream for long, every other request is
/// bounded by a timeout shorter than the Lease.
#[derive(Clone)]
pub struct Clients {
    pub watch: Client,
    pub api: Client,
}

impl From<Client> for Clients {
    fn from(client: Client) -> Self {
        Clients {
            watch: client.clone(),
            api: client,
        }
    }
}

/// Tasks that end with their owner: a controller dropped when its replica stops leading takes
/// its watches and its sweep with it.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Runs the controller until `shutdown` resolves, or until the returned future is dropped
/// (which stops every task it started at once).
pub async fn run(
    clients: impl Into<Clients>,
    settings: Settings,
    metrics: Metrics,
    health: Health,
    jobs_cache: Arc<std::sync::Mutex<Option<Cache<VidiJob>>>>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let Clients { watch, api: client } = clients.into();
    let scope = settings.scope.clone();
    let namespaces: Vec<Option<String>> = match &scope {
        Scope::All => vec![None],
        Scope::Namespaces(list) => list.iter().cloned().map(Some).collect(),
    };
    // One job controller per watched namespace (a kube Controller reads one store).
    let controllers = namespaces.len();
    let mut tasks = Tasks(Vec::new());
    let (jobs, mut job_subs) = feed(
        scoped::<VidiJob>(&watch),
        &scope,
        1 + controllers,
        trim_managed_fields,
        &mut tasks.0,
    );
    let (deployments, mut deployment_subs) = feed(
        scoped::<Deployment>(&watch),
        &scope,
        controllers,
        trim_to_replica_managers,
        &mut tasks.0,
    );
    let (statefulsets, mut statefulset_subs) = feed(
        scoped::<StatefulSet>(&watch),
        &scope,
        controllers,
        trim_to_replica_managers,
        &mut tasks.0,
    );
    let (pods, mut pod_subs) = feed(
        scoped::<Pod>(&watch),
        &scope,
        controllers,
        trim_managed_fields,
        &mut tasks.0,
    );
    let (claims, _) = feed(
        scoped::<PersistentVolumeClaim>(&watch),
        &scope,
        0,
        trim_managed_fields,
        &mut tasks.0,
    );
    let stores = Stores {
        jobs,
        deployments,
        statefulsets,
        pods,
        claims,
    };
    if let Ok(mut slot) = jobs_cache.lock() {
        *slot = Some(stores.jobs.clone());
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        recorder,
        settings,
        metrics,
    });

    // Readiness for /readyz, then the start-up sweep: once every cache has listed.
    {
        let ctx = ctx.clone();
        tasks.0.push(tokio::spawn(async move {
            let s = &ctx.stores;
            let all = async {
                s.jobs.listed().await
                    && s.deployments.listed().await
                    && s.statefulsets.listed().await
                    && s.pods.listed().await
                    && s.claims.listed().await
            };
            tokio::pin!(all);
            // Say which caches a slow start waits for, every few seconds.
            let listed = loop {
                match tokio::time::timeout(Duration::from_secs(5), &mut all).await {
                    Ok(listed) => break listed,
                    Err(_) => tracing::warn!(unsynced = ?s.unsynced(), "caches have not listed yet"),
                }
            };
            if listed {
                health.set_ready(true);
                tracing::info!("caches synced");
                sweep(&ctx).await;
            }
        }));
    }

    let mut runs = Vec::new();
    let shutdown = shutdown.shared();
    for (c, namespace) in namespaces.iter().enumerate() {
        let own = namespace.clone();
        let Some(events) = job_subs[c][0].take() else { continue };
        let Some(store) = stores.jobs.store(c) else { continue };
        let mut controller = Controller::for_stream(events.map(Ok), store);
        for s in 0..namespaces.len() {
            if let Some(peers) = job_subs[s][1 + c].take() {
                let (stores, own) = (stores.clone(), own.clone());
                controller = controller.watches_stream(peers.map(Ok), move |job: VidiJob| {
                    within(&own, waiting_peers(&stores, &job))
                });
            }
            if let Some(events) = deployment_subs[s][c].take() {
                let (stores, own) = (stores.clone(), own.clone());
                controller = controller.watches_stream(events.map(Ok), move |d: Deployment| {
                    within(&own, interested_jobs(&stores, &d.metadata))
                });
            }
            if let Some(events) = statefulset_subs[s][c].take() {
                let (stores, own) = (stores.clone(), own.clone());
                controller = controller.watches_stream(events.map(Ok), move |d: StatefulSet| {
                    within(&own, interested_jobs(&stores, &d.metadata))
                });
            }
            if let Some(events) = pod_subs[s][c].take() {
                let (stores, own) = (stores.clone(), own.clone());
                controller = controller.watches_stream(events.map(Ok), move |p: Pod| {
                    within(&own, jobs_waiting_on_pod(&stores, &p))
                });
            }
        }
        let run = controller
            .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));
        runs.push(run);
    }
    futures::future::join_all(runs).await;
    drop(tasks);
    Ok(())
}

/// An `Api` for one namespace, or for all of them.
fn scoped<K>(client: &Client) -> impl Fn(Option<&str>) -> Api<K> + '_
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    move |ns| match ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    }
}

/// Keeps the jobs a controller of namespace `own` (or of all namespaces) reconciles.
fn within(own: &Option<String>, refs: Vec<ObjectRef<VidiJob>>) -> Vec<ObjectRef<VidiJob>> {
    match own {
        None => refs,
        Some(ns) => refs
            .into_iter()
            .filter(|r| r.namespace.as_deref() == Some(ns.as_str()))
            .collect(),
    }
}

/// Jobs that hold this workload or may select it (unfinished ones).
fn interested_jobs(
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
fn jobs_waiting_on_pod(stores: &Stores, pod: &Pod) -> Vec<ObjectRef<VidiJob>> {
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

async fn reconcile(job: Arc<VidiJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = job.namespace().unwrap_or_default();
    let span = info_span!("reconcile", namespace = %ns, name = %job.name_any());
    async move {
        let unsynced = ctx.stores.unsynced();
        if !unsynced.is_empty() {
            tracing::debug!(?unsynced, "caches not listed yet; waiting before planning");
            return Ok(Requeue::requeue(Duration::from_millis(500)));
        }
        ctx.metrics.reconciles.inc();
        if ctx.settings.dry_run {
            // A dry run writes nothing at all: no finalizer, no status, no Event. It says what it
            // would do in the log.
            return Ok(dry_run(&job, &ctx));
        }
        let jobs: Api<VidiJob> = Api::namespaced(ctx.client.clone(), &ns);
        use kube::runtime::finalizer::Error as F;
        match finalizer(&jobs, FINALIZER, job, |event| async {
            match event {
                Finalizer::Apply(job) => step(&job, &ctx).await,
                Finalizer::Cleanup(job) => step(&job, &ctx).await,
            }
        })
        .await
        {
            Ok(requeue) => Ok(requeue),
            Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
            // The job went away meanwhile (its finalizer was the last one): nothing left to do.
            Err(F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
                tracing::debug!("the job is gone");
                Ok(Requeue::await_change())
            }
            Err(other) => Err(Error::Finalizer(Box::new(other))),
        }
    }
    .instrument(span)
    .await
}

/// The pod of the latest attempt may be missing from the cache only because it was created a
/// moment ago. Planning as if it did not exist would release the co-tenants while Vidi starts, so
/// in that one case the pod is read from the API.
async fn recent_pod(job: &VidiJob, ctx: &Context, snapshot: &mut plan::Snapshot) -> Result<(), Error> {
    let Some(name) = job.status.as_ref().and_then(|s| s.pod_name.clone()) else {
        return Ok(());
    };
    if snapshot.attempts.iter().any(|a| a.name == name) {
        return Ok(());
    }
    let ns = job.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pods.get_opt(&name).await.map_err(|source| Error::Read {
        what: format!("pod {ns}/{name}"),
        source,
    })?;
    if let Some(pod) = pod.filter(|p| {
        p.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == job.metadata.uid.as_ref())
    }) && let Some(attempt) = observe::attempt(&pod)
    {
        snapshot.attempts.push(attempt);
    }
    Ok(())
}

/// A dry run's pass: observe → plan → log what would be done.
fn dry_run(job: &VidiJob, ctx: &Context) -> Requeue {
    let snapshot = observe::snapshot(job, &ctx.stores, true, Timestamp::now());
    let decision = plan::next(&snapshot);
    for action in &decision.actions {
        match action {
            plan::Action::Notify(notice) => tracing::info!(reason = %notice.reason, "{}", notice.message),
            other => tracing::warn!(action = ?other, "dry run: not applying"),
        }
    }
    requeue(&decision)
}

/// One pass: observe → plan → act → status.
async fn step(job: &VidiJob, ctx: &Context) -> Result<Requeue, Error> {
    let now = Timestamp::now();
    let mut snapshot = observe::snapshot(job, &ctx.stores, false, now);
    recent_pod(job, ctx, &mut snapshot).await?;
    let decision = plan::next(&snapshot);
    {
        let actor = Actor {
            client: &ctx.client,
            stores: &ctx.stores,
            recorder: &ctx.recorder,
            defaults: &ctx.settings.pods,
            metrics: &ctx.metrics,
        };
        actor.apply(job, &decision.actions, now).await?;
    }
    let old = job.status.clone().unwrap_or_default();
    if decision.status != old && !write_status(ctx, job, &old, &decision.status).await? {
        // The job changed since this plan's view of it (often: the cache has not caught up with
        // the previous status write yet). Plan again from the newer version.
        tracing::debug!("status changed since it was read; planning again");
        return Ok(Requeue::requeue(STATUS_CONFLICT_RETRY));
    }
    if snapshot.job.deleting {
        if decision.released {
            return Ok(Requeue::await_change());
        }
        return Err(Error::StillReleasing);
    }
    Ok(requeue(&decision))
}

fn requeue(decision: &Decision) -> Requeue {
    match decision.requeue_after {
        Some(after) => Requeue::requeue(after.max(Duration::from_secs(1))),
        None => Requeue::await_change(),
    }
}

/// Writes the status with a merge patch guarded by the resourceVersion the plan was made from;
/// fields the new status drops are removed explicitly. `Ok(false)`: the job changed since (409),
/// nothing was written.
async fn write_status(ctx: &Context, job: &VidiJob, old: &VidiJobStatus, new: &VidiJobStatus) -> Result<bool, Error> {
    let mut body = serde_json::to_value(new).map_err(Error::Serialize)?;
    if let (Value::Object(map), Ok(Value::Object(before))) = (&mut body, serde_json::to_value(old)) {
        for key in before.keys() {
            map.entry(key.clone()).or_insert(Value::Null);
        }
    }
    let ns = job.namespace().unwrap_or_default();
    let jobs: Api<VidiJob> = Api::namespaced(ctx.client.clone(), &ns);
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let patch = json!({
        "metadata": {"resourceVersion": job.metadata.resource_version},
        "status": body,
    });
    match jobs.patch_status(&job.name_any(), &params, &Patch::Merge(patch)).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(source) => Err(Error::Write {
            what: format!("VidiJob {ns}/{} status", job.name_any()),
            source,
        }),
    }
}

/// A job changed: the waiting jobs of its pool may go now (or must keep waiting).
fn waiting_peers(stores: &Stores, job: &VidiJob) -> Vec<ObjectRef<VidiJob>> {
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

fn error_policy(_job: Arc<VidiJob>, error: &Error, ctx: Arc<Context>) -> Requeue {
    match error {
        Error::StillReleasing => Requeue::requeue(Duration::from_secs(2)),
        other => {
            ctx.metrics
                .errors
                .get_or_create(&ErrorLabels {
                    error: other.metric_label().into(),
                })
                .inc();
            tracing::warn!(error = %other, "reconcile failed; retrying");
            Requeue::requeue(Duration::from_secs(5))
        }
    }
}

/// Restores co-tenants whose holders no longer exist or have finished.
async fn sweep(ctx: &Context) {
    let jobs = ctx.stores.jobs.state();
    let live = |key: &plan::JobKey| {
        // A holder outside the watched namespace is not ours to judge.
        let foreign = !ctx.settings.scope.covers(&key.namespace);
        foreign
            || jobs
                .iter()
                .any(|j| job_key(j) == *key && j.status.as_ref().is_none_or(|s| !s.phase.is_terminal()))
    };
    for co in observe::held_co_tenants(&ctx.stores) {
        if let Some(action) = stale_holders(&co, live)
            && let Some((target, patch)) = co_tenant_patch(&action, Timestamp::now())
        {
            tracing::info!(co_tenant = %target, "sweep: releasing holders that no longer exist or have finished");
            if ctx.settings.dry_run {
                continue;
            }
            let result = super::act::patch_workload(&ctx.client, target, patch).await;
            if let Err(e) = result {
                tracing::warn!(co_tenant = %target, error = %e, "sweep could not restore; the holders' reconciles will retry");
            }
        }
    }
}
