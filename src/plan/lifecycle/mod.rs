//! The job's life: Pending → Queued → Suspending → Running → Restoring → Succeeded | Failed.
//! `next` is pure: it reads a snapshot and returns the writes to make and the status to record.
use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::{
    CoTenantPolicy, FailureReason, FieldError, Outcome, Phase, Precision, Runtime, SuspendedCoTenant, VidiJobStatus,
    YIELD_LABEL, validate,
};

use super::action::{Action, Decision, Notice, Severity, Subject};
use super::outcome::{AttemptEnd, Retry, classify};
use super::precision;
use super::queue::{Turn, turn};
use super::snapshot::{Attempt, AttemptState, CoTenant, CoTenantId, JobKey, Selection, Snapshot};
use super::{conditions, names};

mod attempts;
mod ending;
mod holds;
mod in_place;
mod minimal;
mod nodes;
mod queueing;
mod running;

/// A look again while a job is active, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(300);
/// How long after leaving the queue the "waiting for" message stays as first written (see
/// `suspending`).
const WAIT_NEWS_AFTER: Duration = Duration::from_secs(5);
/// The look again after Running is recorded while an attempt of the current number still exists.
const START_DELAY: Duration = Duration::from_secs(1);
/// The look again before a deleted job lets go, when its status lists a hold the view lacks.
const RELEASE_RECHECK: Duration = Duration::from_secs(2);

/// Plans the next step of the job in `snapshot`.
pub fn next(snapshot: &Snapshot) -> Decision {
    let mut plan = Plan::new(snapshot);
    plan.run();
    plan.finish()
}

/// Why the job in `snapshot` may not run as it stands (the snapshot's problems, co-tenants it
/// may not suspend, a selection that matches nothing), each naming its field: what the planner
/// would fail it with (`InvalidSpec`). Lets an adapter refuse a job before anything is done, the
/// same way as its own checks.
pub fn admission_errors(snapshot: &Snapshot) -> Vec<crate::api::FieldError> {
    Plan::new(snapshot).admission_errors()
}

struct Plan<'a> {
    s: &'a Snapshot,
    me: &'a JobKey,
    st: VidiJobStatus,
    actions: Vec<Action>,
    /// Co-tenants as they will be once `actions` are applied.
    view: Vec<CoTenant>,
    requeue: Option<Duration>,
    released: bool,
    /// Under `policy: Minimal`, the co-tenants chosen to yield in this decision (indices into
    /// `view`); later decisions take the holds as the choice.
    chosen: Option<Vec<usize>>,
    /// Holds that removed one node's replicas: as observed, then as this decision leaves them.
    node_holds: Vec<crate::plan::placement::NodeHold>,
}

impl<'a> Plan<'a> {
    fn new(s: &'a Snapshot) -> Self {
        let mut st = s.job.status.clone();
        st.observed_generation = s.job.generation;
        Plan {
            s,
            me: &s.job.key,
            st,
            actions: Vec::new(),
            view: s.co_tenants.clone(),
            requeue: None,
            released: false,
            chosen: None,
            node_holds: s.placement.node_holds.clone(),
        }
    }

    fn finish(mut self) -> Decision {
        self.unmark_stale();
        self.st.suspended = self.held_list();
        if let (Some(start), Some(end)) = (&self.st.start_time, &self.st.completion_time) {
            let secs = end.0.duration_since(start.0).as_secs().max(0) as u64;
            self.st.duration = Some(humantime::format_duration(Duration::from_secs(secs)).to_string());
        }
        conditions::refresh(&mut self.st, self.s.job.generation, self.s.now);
        Decision {
            actions: self.actions,
            status: self.st,
            requeue_after: self.requeue,
            released: self.released,
        }
    }

    fn run(&mut self) {
        if self.s.job.deleting {
            return self.delete();
        }
        // Each arm either settles (returns) or moves the phase forward and goes round again.
        for _ in 0..8 {
            let before = self.st.phase;
            match before {
                Phase::Succeeded | Phase::Failed => return self.finished(),
                Phase::Restoring => return self.restoring(),
                _ if self.invalid() => return,
                _ if self.s.job.spec.suspend && !self.answered() => return self.suspended(),
                Phase::Pending | Phase::Queued => self.waiting(),
                // Suspending settles: it stays, fails, or records Running (see `suspending`).
                Phase::Suspending => return self.suspending(),
                Phase::Running => self.running(),
            }
            // Restoring and the end states were handled inline by the transition into them.
            if self.st.phase == before || self.st.phase.is_terminal() || self.st.phase == Phase::Restoring {
                return;
            }
        }
    }

    fn notify(&mut self, severity: Severity, reason: &str, message: String) {
        self.notify_about(severity, reason, message, None);
    }

    fn notify_about(&mut self, severity: Severity, reason: &str, message: String, subject: Option<Subject>) {
        self.actions.push(Action::Notify(Notice {
            severity,
            reason: reason.to_string(),
            message,
            subject,
        }));
    }
}

fn list(holders: &BTreeSet<JobKey>) -> String {
    holders.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
}
