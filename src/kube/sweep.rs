//! The start-up sweep: restores co-tenants whose holders no longer exist or have finished.
use jiff::Timestamp;
use kube::ResourceExt;

use crate::plan::{self, stale_holders};

use super::act::co_tenant_patch;
use super::controller::Context;
use super::observe::{self, job_key};

/// Restores co-tenants whose holders no longer exist or have finished, and removes the
/// pod-deletion-cost marks such jobs left on pods (a crash between marking and scaling down).
pub(super) async fn sweep(ctx: &Context) {
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
            // An in-place hold is resumed first; its marks go only after the call answered.
            if let plan::Action::Resume { hook, call, .. } = &action
                && let Err(e) = super::act::resume_call(target, hook, *call).await
            {
                tracing::warn!(co_tenant = %target, error = %e, "sweep could not resume; the holders' reconciles will retry");
                continue;
            }
            let keda = super::keda::for_workload(&ctx.stores, target)
                .and_then(|so| super::keda::patch(&so, &action, Timestamp::now()).map(|p| (so, p)));
            let result = match keda {
                Some((so, patch)) => super::keda::apply(&ctx.client, &so, &patch).await,
                None => super::act::patch_workload(&ctx.client, target, patch).await,
            };
            if let Err(e) = result {
                tracing::warn!(co_tenant = %target, error = %e, "sweep could not restore; the holders' reconciles will retry");
            }
        }
    }
    for pod in ctx.stores.pods.state() {
        let Some(holder) = pod
            .annotations()
            .get(crate::api::MARKED_BY)
            .and_then(|m| plan::JobKey::parse(m))
        else {
            continue;
        };
        if live(&holder) {
            continue;
        }
        let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
        tracing::info!(pod = %format!("{ns}/{name}"), %holder, "sweep: removing the pod-deletion-cost mark of a job that no longer exists or has finished");
        if ctx.settings.dry_run {
            continue;
        }
        let target = plan::CoTenantId {
            kind: crate::api::WorkloadKind::Deployment,
            namespace: ns,
            name: String::new(),
        };
        if let Err(e) = super::act::unmark_pods(&ctx.client, &target, &[name]).await {
            tracing::warn!(error = %e, "sweep could not remove a pod mark; it is removed when its job is next reconciled or at the next start");
        }
    }
}
