//! Start-up sweep: a co-tenant held by jobs that no longer exist (or have finished) is released,
//! and restored when no live holder remains.
use super::action::Action;
use super::snapshot::{CoTenant, JobKey};

/// The write that drops `co`'s stale holders, if it has any. `live` says whether a holder is a job
/// that exists and has not finished.
pub fn stale_holders(co: &CoTenant, live: impl Fn(&JobKey) -> bool) -> Option<Action> {
    if co.holders.iter().all(&live) {
        return None;
    }
    let remaining: Vec<JobKey> = co.holders.iter().filter(|k| live(k)).cloned().collect();
    Some(if let (true, Some(mark)) = (remaining.is_empty(), &co.released) {
        // Held in place: resumed, not scaled.
        Action::Resume {
            target: co.id.clone(),
            hook: mark.hook.clone(),
            call: co.replicas > 0 && mark.hook.resume_url.is_some(),
            replicas: co.original_replicas.unwrap_or(co.replicas),
            revision: co.revision.clone(),
        }
    } else if remaining.is_empty() {
        Action::Restore {
            target: co.id.clone(),
            replicas: co.original_replicas.unwrap_or(co.replicas),
            revision: co.revision.clone(),
        }
    } else {
        Action::Release {
            target: co.id.clone(),
            holders: remaining,
            revision: co.revision.clone(),
        }
    })
}
