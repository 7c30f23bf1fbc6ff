//! Restoring and the end states: stopping Vidi, releasing every hold, spec.suspend, deletion,
//! deadlines and invalid specs found late, and the TTL.
use super::*;
use crate::plan::ALL_RESTORED;

impl<'a> Plan<'a> {
    pub(super) fn restoring(&mut self) {
        let alive = self.stop_alive_attempts();
        if alive > 0 {
            // A failure's message says why it failed (and ends up in the Failed Event and
            // conditions); keep it rather than replace it with this progress note.
            if self.st.outcome != Some(Outcome::Failed) {
                self.st.message = Some("stopping Vidi before restoring the co-tenants".into());
            }
            return;
        }
        for i in self.held() {
            self.release(i);
        }
        let outcome = self.st.outcome.unwrap_or(Outcome::Failed);
        match outcome {
            Outcome::Succeeded => {
                self.st.phase = Phase::Succeeded;
                self.st.completion_time = Some(Time(self.s.now));
                // Vidi's answer, when it came in this same decision, is told with the end: one
                // Event rather than two a few milliseconds apart.
                let answered = self
                    .actions
                    .iter()
                    .position(|a| matches!(a, Action::Notify(n) if n.reason == "Answered"));
                let message = match answered.map(|i| self.actions.remove(i)) {
                    Some(Action::Notify(n)) => format!("finished; {ALL_RESTORED}; {}", n.message),
                    _ => format!("finished; {ALL_RESTORED}"),
                };
                self.notify(Severity::Normal, "Succeeded", message);
            }
            Outcome::Failed => {
                self.st.phase = Phase::Failed;
                self.st.completion_time = Some(Time(self.s.now));
                let why = self.st.message.clone().unwrap_or_default();
                self.notify(Severity::Warning, "Failed", format!("failed: {why}; {ALL_RESTORED}"));
            }
            Outcome::Suspended => {
                self.st.phase = Phase::Pending;
                self.st.outcome = None;
                // A resumed job chooses whom to yield, and where, afresh.
                self.st.policy = None;
                self.st.node_choice = None;
                // activeDeadlineSeconds counts "from leaving the queue": a resumed job leaves it
                // again with a fresh clock (as a resumed Kubernetes Job resets its startTime),
                // instead of failing at once for the time it spent suspended.
                self.st.start_time = None;
                self.st.message = Some(format!("suspended (spec.suspend is true); {ALL_RESTORED}"));
            }
        }
        self.finished_ttl();
    }

    pub(super) fn finished(&mut self) {
        // A finished job holds nothing; release anything a crash left behind.
        self.stop_alive_attempts();
        for i in self.held() {
            self.release(i);
        }
        self.finished_ttl();
    }

    pub(super) fn finished_ttl(&mut self) {
        if !self.st.phase.is_terminal() {
            return;
        }
        let (Some(ttl), Some(done)) = (self.s.job.spec.ttl_seconds_after_finished, &self.st.completion_time) else {
            return;
        };
        let due = done.0.as_second().saturating_add(ttl);
        let left = due - self.s.now.as_second();
        if left <= 0 {
            self.actions.push(Action::DeleteJob);
        } else {
            self.requeue = Some(Duration::from_secs(left as u64));
        }
    }

    pub(super) fn suspended(&mut self) {
        match self.st.phase {
            Phase::Suspending | Phase::Running => self.begin_restore(Outcome::Suspended),
            _ => {
                for i in self.held() {
                    self.release(i);
                }
                self.st.phase = Phase::Pending;
                self.st.waiting_for = None;
                self.st.message = Some("suspended (spec.suspend is true)".into());
            }
        }
    }

    pub(super) fn delete(&mut self) {
        let alive = self.stop_alive_attempts();
        if !self.st.phase.is_terminal() {
            self.st.phase = Phase::Restoring;
            self.st.outcome.get_or_insert(Outcome::Failed);
        }
        if alive > 0 {
            self.st.message = Some("deleted: stopping Vidi before restoring the co-tenants".into());
            return;
        }
        for i in self.held() {
            self.release(i);
        }
        // The recorded status says this job holds co-tenants that the snapshot does not show as
        // held by it: the adapter's view may lag behind the job's own Hold (a cache that has not
        // seen the write yet). Letting the job go now would leave that hold with no holder to
        // restore it; write the status from this view and look again first. (Where the view is
        // right, e.g. a restore whose status write was lost, this costs one more look.)
        let unseen: Vec<String> = self
            .s
            .job
            .status
            .suspended
            .iter()
            .filter(|s| {
                !self.s.co_tenants.iter().any(|c| {
                    c.id.kind == s.kind
                        && c.id.namespace == s.namespace
                        && c.id.name == s.name
                        && c.holders.contains(self.me)
                })
            })
            .map(|s| {
                format!(
                    "{} {}",
                    s.kind,
                    if s.namespace.is_empty() {
                        s.name.clone()
                    } else {
                        format!("{}/{}", s.namespace, s.name)
                    }
                )
            })
            .collect();
        if !unseen.is_empty() {
            self.st.message = Some(format!(
                "deleted: the status still lists {} as held; looking again before letting go",
                unseen.join(", ")
            ));
            self.requeue = Some(RELEASE_RECHECK);
            return;
        }
        self.st.message = Some(format!("deleted; {ALL_RESTORED}"));
        self.released = true;
    }

    pub(super) fn begin_restore(&mut self, outcome: Outcome) {
        self.st.phase = Phase::Restoring;
        self.st.outcome = Some(outcome);
        self.restoring();
    }

    pub(super) fn fail(&mut self, reason: FailureReason, message: String) {
        self.st.reason = Some(reason);
        self.st.message = Some(message);
        self.begin_restore(Outcome::Failed);
    }

    pub(super) fn fail_invalid(&mut self, errors: Vec<FieldError>) {
        let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        self.notify(Severity::Warning, "InvalidSpec", message.clone());
        self.st.waiting_for = None;
        self.fail(FailureReason::InvalidSpec, message);
    }

    /// Checks the spec again whenever the job is not finished: a spec changed mid-run is caught.
    pub(super) fn invalid(&mut self) -> bool {
        let errors = validate(&self.s.job.spec, self.s.runtime);
        if errors.is_empty() {
            return false;
        }
        self.fail_invalid(errors);
        true
    }

    pub(super) fn deadline_passed(&mut self) -> bool {
        let (Some(limit), Some(start)) = (self.s.job.spec.active_deadline_seconds, &self.st.start_time) else {
            return false;
        };
        if self.s.now.as_second() < start.0.as_second().saturating_add(limit) {
            return false;
        }
        self.fail(
            FailureReason::DeadlineExceeded,
            format!("activeDeadlineSeconds ({limit}s) passed in phase {}", self.st.phase),
        );
        true
    }

    pub(super) fn requeue_for_deadline(&mut self) {
        let mut after = RESYNC;
        if let (Some(limit), Some(start)) = (self.s.job.spec.active_deadline_seconds, &self.st.start_time) {
            let left = start.0.as_second().saturating_add(limit) - self.s.now.as_second();
            after = after.min(Duration::from_secs(left.max(1) as u64));
        }
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }
}
