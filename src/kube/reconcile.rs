//! One reconcile: observe (caches) → plan → act → write status, inside kube's finalizer helper.
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action as Requeue;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{Instrument, info_span};

use crate::api::{Phase, VidiJob};
use crate::plan::{self, Decision};
use crate::telemetry::ErrorLabels;

use super::Error;
use super::act::Actor;
use super::controller::{Context, FINALIZER};
use super::observe;
use super::seen::{self, Writes, Wrote};
use super::status::write_status;

/// How soon a reconcile whose status write met a newer version plans again (the watch usually
/// delivers that version first, which triggers it sooner).
const STATUS_CONFLICT_RETRY: Duration = Duration::from_millis(500);

pub(super) async fn reconcile(job: Arc<VidiJob>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let ns = job.namespace().unwrap_or_default();
    let span = info_span!("reconcile", namespace = %ns, name = %job.name_any());
    async move {
        let unsynced = ctx.stores.unsynced();
        if !unsynced.is_empty() {
            tracing::debug!(?unsynced, "caches not listed yet; waiting before planning");
            return Ok(Requeue::requeue(Duration::from_millis(500)));
        }
        ctx.metrics.reconciles.inc();
        tracing::debug!("planning");
        if ctx.settings.dry_run {
            // A dry run writes nothing at all: no finalizer, no status, no Event. It says what it
            // would do in the log.
            return Ok(dry_run(&job, &ctx));
        }
        let jobs: Api<VidiJob> = Api::namespaced(ctx.client.clone(), &ns);
        use kube::runtime::finalizer::Error as F;
        // kube's helper adds a missing finalizer and returns: the next reconcile is the job's
        // next version, which should be the one with the finalizer.
        let adding = (!job.finalizers().iter().any(|f| f == FINALIZER) && job.metadata.deletion_timestamp.is_none())
            .then(|| Wrote::Job {
                job: ObjectRef::from_obj(&*job),
                before: job.metadata.resource_version.clone(),
            });
        let result = finalizer(&jobs, FINALIZER, job, |event| async {
            match event {
                Finalizer::Apply(job) => step(&job, &ctx).await,
                Finalizer::Cleanup(job) => step(&job, &ctx).await,
            }
        })
        .await;
        if let (Some(wrote), Ok(_)) = (adding, &result) {
            let writes = Writes::default();
            writes.push(wrote);
            seen::caught_up(&ctx.stores, &writes).await;
        }
        match result {
            Ok(requeue) => Ok(requeue),
            Err(F::ApplyFailed(e) | F::CleanupFailed(e)) => Err(e),
            // The job went away meanwhile (its finalizer was the last one): nothing left to do.
            Err(F::AddFinalizer(kube::Error::Api(e)) | F::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => {
                tracing::debug!("the job is gone");
                Ok(Requeue::await_change())
            }
            // Added from a view that lagged (kube's patch tests the list it read): plan again.
            Err(F::AddFinalizer(kube::Error::Api(e))) if e.code == 422 || e.code == 409 => Err(Error::Replan),
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
    let writes = Writes::default();
    let actor = Actor {
        client: &ctx.client,
        stores: &ctx.stores,
        recorder: ctx.recorders.of(&ObjectRef::from_obj(job)),
        defaults: &ctx.settings.pods,
        metrics: &ctx.metrics,
        writes: &writes,
    };
    // A Vidi pod is created only once the status that records its attempt (number, precision,
    // pod name) has landed: a plan from a job version that is no longer current must not start
    // an attempt the status does not know of.
    let (starts, rest): (Vec<_>, Vec<_>) = decision
        .actions
        .iter()
        .cloned()
        .partition(|a| matches!(a, plan::Action::StartAttempt { .. }));
    actor.apply(job, &rest, now).await?;
    let old = job.status.clone().unwrap_or_default();
    if decision.status != old {
        if !write_status(ctx, job, &old, &decision.status).await? {
            // The job changed since this plan's view of it. Plan again from the newer version.
            return Err(Error::Replan);
        }
        writes.push(Wrote::Job {
            job: ObjectRef::from_obj(job),
            before: job.metadata.resource_version.clone(),
        });
    }
    if !starts.is_empty() {
        // Another job of the pool may have started from a view this plan did not have yet (its
        // status write was in flight to our cache). Once the cache shows this job's own status
        // write, it also shows every earlier change on the same job watch, that one included:
        // plan again from there, and create the pod only if that plan still starts it.
        if !seen::caught_up(&ctx.stores, &writes).await {
            tracing::debug!("not starting the attempt yet: the cache does not show its status write; planning again");
            return Err(Error::Replan);
        }
        if !still_starts(job, ctx, &starts, now) {
            tracing::debug!("not starting the attempt: a plan from the newer view does not start it; planning again");
            return Err(Error::Replan);
        }
        // The pod is built from the status just written (the node chosen, the deadline's start).
        let mut recorded = job.clone();
        recorded.status = Some(decision.status.clone());
        actor.apply(&recorded, &starts, now).await?;
    }
    // The next plan starts from a view that has these writes.
    seen::caught_up(&ctx.stores, &writes).await;
    if snapshot.job.deleting {
        if decision.released {
            ctx.recorders.forget(&ObjectRef::from_obj(job));
            return Ok(Requeue::await_change());
        }
        return Err(Error::StillReleasing);
    }
    // Ended, or waiting its turn (which can take long, for thousands of jobs): nothing to fold
    // its Events into for now.
    if decision.status.phase.is_terminal() || matches!(decision.status.phase, Phase::Pending | Phase::Queued) {
        ctx.recorders.forget(&ObjectRef::from_obj(job));
    }
    Ok(requeue(&decision))
}

/// Whether a plan from the cache as it is now, with this job's status write in it, still starts
/// the attempts in `starts`.
fn still_starts(job: &VidiJob, ctx: &Context, starts: &[plan::Action], now: Timestamp) -> bool {
    let Some(fresh) = ctx.stores.jobs.get(&ObjectRef::from_obj(job)) else {
        return false;
    };
    // The pod is not there to be read: its attempt was recorded by this very reconcile.
    let again = plan::next(&observe::snapshot(&fresh, &ctx.stores, false, now)).started_attempts();
    starts
        .iter()
        .filter_map(plan::Action::started_attempt)
        .all(|n| again.contains(&n))
}

fn requeue(decision: &Decision) -> Requeue {
    match decision.requeue_after {
        Some(after) => Requeue::requeue(after.max(Duration::from_secs(1))),
        None => Requeue::await_change(),
    }
}

pub(super) fn error_policy(_job: Arc<VidiJob>, error: &Error, ctx: Arc<Context>) -> Requeue {
    match error {
        Error::StillReleasing => Requeue::requeue(Duration::from_secs(2)),
        Error::Replan | Error::Conflict { .. } => {
            tracing::debug!("{error}");
            Requeue::requeue(STATUS_CONFLICT_RETRY)
        }
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
