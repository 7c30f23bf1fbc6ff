//! The controller's wiring: caches, change feeds and one kube Controller per watched namespace.
//! A reconcile is in `reconcile`, the mappers from changes to jobs in `mappers`, status writes in
//! `status`, the start-up sweep in `sweep`.
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::runtime::Controller;
use kube::runtime::events::Reporter;
use kube::{Api, Client};

use crate::api::VidiJob;
use crate::telemetry::{Health, Metrics};

use super::Error;
use super::cache::{Cache, Scope, feed, trim_deployment, trim_managed_fields, trim_node, trim_pod, trim_statefulset};
use super::events::Recorders;
use super::mappers::{interested_jobs, jobs_waiting_on_pod, waiting_peers, within};
use super::observe::{self, MANAGER, Stores};
use super::pod::PodDefaults;
use super::reconcile::{error_policy, reconcile};
use super::sweep::sweep;

/// Reconciles in flight at once per job controller: bounds the memory of a burst (a restart with
/// a thousand jobs) without slowing single hand-offs.
const RECONCILE_CONCURRENCY: u16 = 16;

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
    pub recorders: Recorders,
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
        observe::job_keys,
        &mut tasks.0,
    );
    let (deployments, mut deployment_subs) = feed(
        scoped::<Deployment>(&watch),
        &scope,
        controllers,
        trim_deployment,
        observe::deployment_keys,
        &mut tasks.0,
    );
    let (statefulsets, mut statefulset_subs) = feed(
        scoped::<StatefulSet>(&watch),
        &scope,
        controllers,
        trim_statefulset,
        observe::statefulset_keys,
        &mut tasks.0,
    );
    let (pods, mut pod_subs) = feed(
        scoped::<Pod>(&watch),
        &scope,
        controllers,
        trim_pod,
        observe::pod_keys,
        &mut tasks.0,
    );
    let (claims, _) = feed(
        scoped::<PersistentVolumeClaim>(&watch),
        &scope,
        0,
        trim_managed_fields,
        observe::no_keys,
        &mut tasks.0,
    );
    // Nodes (cluster-scoped) and autoscalers: read when a job chooses its node, never a trigger.
    let (nodes, _) = feed(
        |_| Api::<Node>::all(watch.clone()),
        &Scope::All,
        0,
        trim_node,
        super::placement::node_keys,
        &mut tasks.0,
    );
    let (autoscalers, _) = feed(
        scoped::<HorizontalPodAutoscaler>(&watch),
        &scope,
        0,
        trim_managed_fields,
        observe::autoscaler_keys,
        &mut tasks.0,
    );
    // KEDA's ScaledObjects, only where the API server serves them.
    let scaled_objects = if super::keda::served(&client).await {
        tracing::info!("KEDA's API is served: ScaledObject targets yield through KEDA's pause");
        Some(
            feed(
                scoped::<super::keda::ScaledObject>(&watch),
                &scope,
                0,
                trim_managed_fields,
                super::keda::keys,
                &mut tasks.0,
            )
            .0,
        )
    } else {
        None
    };
    let stores = Stores {
        jobs,
        deployments,
        statefulsets,
        pods,
        claims,
        nodes,
        autoscalers,
        scaled_objects,
    };
    if let Ok(mut slot) = jobs_cache.lock() {
        *slot = Some(stores.jobs.clone());
    }
    metrics.set_source(Some(super::gauges::source(&stores)));
    for error in Error::METRIC_LABELS {
        let _ = metrics
            .errors
            .get_or_create(&crate::telemetry::ErrorLabels { error: error.into() });
    }
    let _gauges = super::gauges::Installed(metrics.clone());
    let recorders = Recorders::new(
        client.clone(),
        Reporter {
            controller: MANAGER.into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        stores: stores.clone(),
        recorders,
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
                    && s.nodes.listed().await
                    && s.autoscalers.listed().await
                    && match &s.scaled_objects {
                        Some(c) => c.listed().await,
                        None => true,
                    }
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

    // Each controller runs as a task of its own, not inside the caller's future: on the
    // current-thread runtime, waking the future that `block_on` drives writes the runtime's
    // eventfd and costs a spare turn of the I/O driver (about 15 per job lifecycle), and polls
    // everything else that future holds. A JoinSet stops them all when dropped.
    let mut runs = tokio::task::JoinSet::new();
    let shutdown = shutdown.shared();
    for (c, namespace) in namespaces.iter().enumerate() {
        let own = namespace.clone();
        let Some(own_jobs) = job_subs[c][0].take() else {
            continue;
        };
        let Some(store) = stores.jobs.store(c) else { continue };
        let mut controller = Controller::for_shared_stream(own_jobs, store);
        for s in 0..namespaces.len() {
            if let Some(peers) = job_subs[s][1 + c].take() {
                let mapper = {
                    let (stores, own) = (stores.clone(), own.clone());
                    move |job: Arc<VidiJob>| within(&own, waiting_peers(&stores, &job))
                };
                controller = controller.watches_shared_stream(peers, mapper);
            }
            if let Some(events) = deployment_subs[s][c].take() {
                let mapper = {
                    let (stores, own) = (stores.clone(), own.clone());
                    move |d: Arc<Deployment>| within(&own, interested_jobs(&stores, &d.metadata))
                };
                controller = controller.watches_shared_stream(events, mapper);
            }
            if let Some(events) = statefulset_subs[s][c].take() {
                let mapper = {
                    let (stores, own) = (stores.clone(), own.clone());
                    move |d: Arc<StatefulSet>| within(&own, interested_jobs(&stores, &d.metadata))
                };
                controller = controller.watches_shared_stream(events, mapper);
            }
            if let Some(events) = pod_subs[s][c].take() {
                let mapper = {
                    let (stores, own) = (stores.clone(), own.clone());
                    move |p: Arc<Pod>| within(&own, jobs_waiting_on_pod(&stores, &p))
                };
                controller = controller.watches_shared_stream(events, mapper);
            }
        }
        let run = controller
            .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|_| futures::future::ready(()));
        runs.spawn(run);
    }
    while let Some(ended) = runs.join_next().await {
        // A controller that panicked takes the process down, as it did when it ran inline.
        if let Err(e) = ended
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
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
