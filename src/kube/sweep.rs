//! The start-up sweep: restores co-tenants whose holders no longer exist or have finished.
use jiff::Timestamp;

use crate::plan::{self, stale_holders};

use super::act::co_tenant_patch;
use super::controller::Context;
use super::observe::{self, job_key};

/// Restores co-tenants whose holders no longer exist or have finished.
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
            let result = super::act::patch_workload(&ctx.client, target, patch).await;
            if let Err(e) = result {
                tracing::warn!(co_tenant = %target, error = %e, "sweep could not restore; the holders' reconciles will retry");
            }
        }
    }
}
