//! kstatus-compatible conditions (Ready, Reconciling, Stalled) plus Complete and Failed, so
//! `kubectl wait --for=condition=Complete` and GitOps health checks work.
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::api::{Phase, VidiJobStatus};

/// Recomputes `status.conditions` from phase, reason and message, keeping each condition's
/// lastTransitionTime when its status did not change.
pub fn refresh(status: &mut VidiJobStatus, generation: Option<i64>, now: Timestamp) {
    let phase = status.phase;
    let message = status.message.clone().unwrap_or_default();
    let failure = status.reason.map(|r| r.to_string()).unwrap_or_else(|| "Failed".into());
    let (ready, reconciling, stalled, complete, failed): (bool, bool, bool, bool, bool) = match phase {
        Phase::Succeeded => (true, false, false, true, false),
        Phase::Failed => (false, false, true, false, true),
        _ => (false, true, false, false, false),
    };
    let progress_reason = phase.as_str().to_string();
    let wanted = [
        (
            "Ready",
            ready,
            if ready {
                "Succeeded".to_string()
            } else {
                progress_reason.clone()
            },
        ),
        ("Reconciling", reconciling, progress_reason.clone()),
        (
            "Stalled",
            stalled,
            if stalled {
                failure.clone()
            } else {
                progress_reason.clone()
            },
        ),
        (
            "Complete",
            complete,
            if complete {
                "Succeeded".to_string()
            } else {
                progress_reason.clone()
            },
        ),
        ("Failed", failed, if failed { failure.clone() } else { progress_reason }),
    ];
    let old = std::mem::take(&mut status.conditions);
    for (kind, on, reason) in wanted {
        let value = if on { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c.type_ == kind && c.status == value)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        status.conditions.push(Condition {
            type_: kind.to_string(),
            status: value.to_string(),
            reason,
            message: message.clone(),
            last_transition_time: since,
            observed_generation: generation,
        });
    }
}

/// The condition `kind`, if present.
pub fn find<'a>(status: &'a VidiJobStatus, kind: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == kind)
}
