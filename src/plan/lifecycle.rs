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
use super::snapshot::{Attempt, AttemptState, CoTenant, JobKey, Selection, Snapshot};
use super::{conditions, names};

/// A look again while a job is active, in case an event was missed.
const RESYNC: Duration = Duration::from_secs(300);
/// The look again that creates the first pod once Running is recorded.
const START_DELAY: Duration = Duration::from_secs(1);
/// The look again before a deleted job lets go, when its status lists a hold the view lacks.
const RELEASE_RECHECK: Duration = Duration::from_secs(2);

/// Plans the next step of the job in `snapshot`.
pub fn next(snapshot: &Snapshot) -> Decision {
    let mut plan = Plan::new(snapshot);
    plan.run();
    plan.finish()
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
        }
    }

    fn finish(mut self) -> Decision {
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

    // ----- phases -----

    fn waiting(&mut self) {
        let errors = self.admission_errors();
        if !errors.is_empty() {
            return self.fail_invalid(errors);
        }
        if self.s.dry_run {
            return self.dry_run();
        }
        match turn(self.place(), &self.s.rivals) {
            Turn::Go => {
                self.st.phase = Phase::Suspending;
                self.st.policy = Some(self.s.job.spec.co_tenants.policy);
                if self.st.policy == Some(CoTenantPolicy::Minimal) {
                    self.choose_minimal();
                }
                self.st.pool = Some(super::queue::pool_key(&self.s.job.spec));
                self.st.waiting_for = None;
                self.st.start_time.get_or_insert(Time(self.s.now));
                self.st.message = Some("suspending co-tenants".into());
                self.notify(
                    Severity::Normal,
                    "Started",
                    "left the queue; suspending the GPU's co-tenants".into(),
                );
            }
            Turn::Next { active } => {
                // Join holds already in place, so the co-tenants stay down between the two jobs.
                let joinable: Vec<usize> = self
                    .targets()
                    .into_iter()
                    .filter(|&i| !self.view[i].holders.is_empty() && !self.holds(i))
                    .collect();
                for i in joinable {
                    self.hold(i);
                }
                self.queue(active, 1, "running");
            }
            Turn::Wait { blocker, position } => {
                for i in self.held() {
                    self.release(i);
                }
                self.queue(blocker, position, "ahead in the queue");
            }
        }
    }

    /// Another job of the pool is active where this one should be alone: it is Running or
    /// Restoring (it may have a Vidi pod), or Suspending and ahead in the queue. In a consistent
    /// view this never happens; it does when two jobs left the queue on views that had not seen
    /// each other yet (a lagging cache, concurrent reconciles, a spec.suspend edit racing).
    fn pool_taken(&self) -> Option<JobKey> {
        let me = self.place();
        self.s
            .rivals
            .iter()
            .filter(|r| r.key != *self.me)
            .find(|r| match r.phase {
                Phase::Running | Phase::Restoring => true,
                Phase::Suspending => super::queue::order(r) < me,
                _ => false,
            })
            .map(|r| r.key.clone())
    }

    /// This job's place in its pool's queue.
    fn place(&self) -> super::queue::Place<'a> {
        super::queue::place(self.me, self.s.job.created, self.s.job.spec.priority)
    }

    /// Invariant 3 before a Vidi pod exists: go back to the queue behind `other`.
    fn back_off(&mut self, other: JobKey) {
        self.notify(
            Severity::Warning,
            "BackedOff",
            format!("VidiJob {other} is active on the same GPU pool; going back to the queue before starting Vidi"),
        );
        self.waiting();
    }

    fn queue(&mut self, blocker: JobKey, position: usize, what: &str) {
        let entering = self.st.phase != Phase::Queued;
        self.st.phase = Phase::Queued;
        let priority = match self.s.job.spec.priority {
            0 => String::new(),
            p => format!(" (priority {p})"),
        };
        let message = format!("waiting for VidiJob {blocker} ({what}); position {position} in the GPU queue{priority}");
        if entering {
            self.notify(Severity::Normal, "Queued", message.clone());
        }
        self.st.waiting_for = Some(blocker.to_string());
        self.st.message = Some(message);
    }

    fn suspending(&mut self) {
        if self.deadline_passed() {
            return;
        }
        let errors = self.admission_errors();
        if !errors.is_empty() {
            return self.fail_invalid(errors);
        }
        if let Some(other) = self.pool_taken() {
            return self.back_off(other);
        }
        self.keep_suspended();
        let waiting: Vec<String> = self
            .targets()
            .into_iter()
            .filter(|&i| self.view[i].live_pods > 0)
            .map(|i| {
                let c = &self.view[i];
                let noun = if c.id.kind == crate::api::WorkloadKind::Command {
                    "process"
                } else {
                    "pod"
                };
                format!(
                    "{} {noun}{} of {}",
                    c.live_pods,
                    if c.live_pods == 1 { "" } else { "s" },
                    c.id
                )
            })
            .collect();
        if !waiting.is_empty() {
            self.st.message = Some(format!("waiting for {} to stop", waiting.join(", ")));
            self.requeue_for_deadline();
            return;
        }
        // Record Running first and create the pod on the next reconcile (`running` creates a
        // missing attempt). A Vidi pod then exists only while the persisted phase tells rivals
        // that the pool is taken: a crash between creating the pod and writing this status can
        // no longer let an older job that was skipped (suspended) start beside it (invariant 3).
        self.st.phase = Phase::Running;
        self.st.precision = Some(precision::first(
            self.s.job.spec.model.precision,
            self.s.gpu_total_bytes,
        ));
        self.st.message = Some("co-tenants suspended; starting Vidi".into());
        self.requeue = Some(START_DELAY);
    }

    fn running(&mut self) {
        if self.deadline_passed() {
            return;
        }
        // Holding and re-suspending happen only while Vidi goes on (here for a live attempt, in
        // `start_attempt` for a new one): doing it before an attempt that has ended would scale a
        // co-tenant to 0 and restore it in the same decision (a flap, and a second write with a
        // stale resourceVersion).
        let number = self.current_number().max(1);
        // A view whose status lags its pods still counts every attempt that exists.
        if self.s.attempts.iter().any(|a| a.number == number) {
            self.st.attempts = self.st.attempts.max(number);
        }
        let Some(attempt) = self.s.attempts.iter().find(|a| a.number == number) else {
            // Never created, or removed by someone: (re)create it under the same name.
            if let Some(other) = self.pool_taken() {
                return self.back_off(other);
            }
            let precision = self
                .st
                .precision
                .unwrap_or_else(|| precision::first(self.s.job.spec.model.precision, self.s.gpu_total_bytes));
            return self.start_attempt(number, precision);
        };
        self.st.pod_name = Some(attempt.name.clone());
        if attempt.node.is_some() {
            self.st.node = attempt.node.clone();
        }
        if let Some(report) = attempt
            .gate_report
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
        {
            self.st.gpu = Some(report);
        }
        let precision = self.attempt_precision(attempt);
        if !matches!(attempt.state, AttemptState::Finished { .. }) {
            self.keep_suspended();
        }
        match &attempt.state {
            AttemptState::Pending { waiting } => {
                self.st.message = Some(match waiting {
                    Some(why) => format!("Vidi attempt {number} is pending: {why}"),
                    None => format!("Vidi attempt {number} is starting ({precision})"),
                });
                self.requeue_for_deadline();
            }
            AttemptState::Running => {
                let on = attempt.node.as_deref().map(|n| format!(" on {n}")).unwrap_or_default();
                self.st.message = Some(format!("Vidi attempt {number} is running{on} at {precision}"));
                self.requeue_for_deadline();
            }
            AttemptState::Terminating => {
                self.st.message = Some(format!("Vidi attempt {number} is being stopped"));
            }
            AttemptState::Finished { gate, main, reason } => {
                match classify(gate.as_ref(), main.as_ref(), reason.as_deref(), precision) {
                    AttemptEnd::Succeeded(mut result) => {
                        // On Kubernetes without spec.output.volume the output folder was the
                        // pod's own, gone with it.
                        if self.s.runtime == Runtime::Kubernetes
                            && self.s.job.spec.output.as_ref().is_none_or(|o| o.volume.is_none())
                        {
                            result.preview = None;
                        }
                        self.notify(
                            Severity::Normal,
                            "Answered",
                            format!("Vidi answered: {}", result.summary),
                        );
                        self.st.message = Some(result.summary.clone());
                        self.st.result = Some(result);
                        self.st.reason = None;
                        self.begin_restore(Outcome::Succeeded);
                    }
                    AttemptEnd::Failed { reason, message, retry } => {
                        self.after_failure(number, precision, reason, message, retry)
                    }
                }
            }
        }
    }

    /// Vidi has already answered (the current attempt succeeded). A spec.suspend that comes
    /// now has nothing left to stop: the job finishes instead of dropping the answer, which a
    /// resume would only read after suspending the co-tenants all over again.
    fn answered(&self) -> bool {
        let number = self.current_number().max(1);
        self.st.phase == Phase::Running
            && self.s.attempts.iter().any(|a| {
                a.number == number
                    && matches!(&a.state, AttemptState::Finished { gate, main, reason }
                    if matches!(
                        classify(gate.as_ref(), main.as_ref(), reason.as_deref(), Precision::Fp16),
                        AttemptEnd::Succeeded(_)
                    ))
            })
    }

    fn after_failure(
        &mut self,
        number: u32,
        precision: Precision,
        reason: FailureReason,
        message: String,
        retry: Retry,
    ) {
        let spec = &self.s.job.spec;
        if retry == Retry::LowerPrecision && self.st.policy == Some(CoTenantPolicy::Minimal) {
            return self.yield_all_instead(number, &message);
        }
        match retry {
            // A fixed minFreeMemory would make a lower precision wait for the same memory again.
            Retry::LowerPrecision
                if !(reason == FailureReason::GpuMemoryUnavailable && spec.gpu.min_free_memory.is_some()) =>
            {
                if let Some(lower) = precision::after_out_of_memory(spec.model.precision, precision) {
                    self.notify_about(
                        Severity::Warning,
                        "PrecisionLowered",
                        format!("attempt {number}: {message}; retrying at {lower}"),
                        Some(Subject::Attempt(number)),
                    );
                    return self.start_attempt(number + 1, lower);
                }
            }
            Retry::Backoff => {
                self.st.failures = (self.st.failures + 1).max(self.failures_seen());
                if self.st.failures <= spec.backoff_limit.max(0) as u32 {
                    self.notify_about(
                        Severity::Warning,
                        "Retrying",
                        format!(
                            "attempt {number} failed ({message}); retry {} of {}",
                            self.st.failures, spec.backoff_limit
                        ),
                        Some(Subject::Attempt(number)),
                    );
                    return self.start_attempt(number + 1, precision);
                }
            }
            Retry::LowerPrecision | Retry::Never => {}
        }
        self.fail(reason, message);
    }

    fn restoring(&mut self) {
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
                self.notify(
                    Severity::Normal,
                    "Succeeded",
                    "finished; every co-tenant restored".into(),
                );
            }
            Outcome::Failed => {
                self.st.phase = Phase::Failed;
                self.st.completion_time = Some(Time(self.s.now));
                let why = self.st.message.clone().unwrap_or_default();
                self.notify(
                    Severity::Warning,
                    "Failed",
                    format!("failed: {why}; every co-tenant restored"),
                );
            }
            Outcome::Suspended => {
                self.st.phase = Phase::Pending;
                self.st.outcome = None;
                // A resumed job chooses whom to yield afresh.
                self.st.policy = None;
                // activeDeadlineSeconds counts "from leaving the queue": a resumed job leaves it
                // again with a fresh clock (as a resumed Kubernetes Job resets its startTime),
                // instead of failing at once for the time it spent suspended.
                self.st.start_time = None;
                self.st.message = Some("suspended (spec.suspend is true); every co-tenant restored".into());
            }
        }
        self.finished_ttl();
    }

    fn finished(&mut self) {
        // A finished job holds nothing; release anything a crash left behind.
        self.stop_alive_attempts();
        for i in self.held() {
            self.release(i);
        }
        self.finished_ttl();
    }

    fn finished_ttl(&mut self) {
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

    fn suspended(&mut self) {
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

    fn delete(&mut self) {
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
        self.st.message = Some("deleted; every co-tenant restored".into());
        self.released = true;
    }

    fn dry_run(&mut self) {
        if self.s.job.spec.co_tenants.policy == CoTenantPolicy::Minimal {
            self.st.policy = Some(CoTenantPolicy::Minimal);
            self.choose_minimal();
        }
        let targets = self.targets();
        let list: Vec<String> = targets
            .iter()
            .map(|&i| {
                let c = &self.view[i];
                format!("{} ({} replicas)", c.id, c.replicas)
            })
            .collect();
        let p = precision::first(self.s.job.spec.model.precision, self.s.gpu_total_bytes);
        let need = precision::min_free_bytes(&self.s.job.spec, p);
        let message = format!(
            "dry run: would suspend {}; would run Vidi at {p} once {} of GPU memory is free",
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.join(", ")
            },
            bytesize::ByteSize::b(need).display().iec()
        );
        if self.st.message.as_deref() != Some(message.as_str()) {
            self.notify(Severity::Normal, "DryRun", message.clone());
        }
        self.st.phase = Phase::Pending;
        self.st.policy = None;
        self.st.message = Some(message);
    }

    // ----- transitions -----

    fn start_attempt(&mut self, number: u32, precision: Precision) {
        self.keep_suspended();
        let name = names::attempt(&self.me.name, number);
        let min_free_bytes = precision::min_free_bytes(&self.s.job.spec, precision);
        let new = self.st.attempts < number;
        self.st.attempts = self.st.attempts.max(number);
        self.st.precision = Some(precision);
        self.st.pod_name = Some(name.clone());
        self.st.message = Some(format!("starting Vidi attempt {number} at {precision}"));
        self.actions.push(Action::StartAttempt {
            attempt: number,
            name: name.clone(),
            precision,
            min_free_bytes,
        });
        if new {
            self.notify(
                Severity::Normal,
                "Starting",
                format!("starting Vidi attempt {number} ({name}) at {precision}"),
            );
        }
        self.requeue_for_deadline();
    }

    fn begin_restore(&mut self, outcome: Outcome) {
        self.st.phase = Phase::Restoring;
        self.st.outcome = Some(outcome);
        self.restoring();
    }

    fn fail(&mut self, reason: FailureReason, message: String) {
        self.st.reason = Some(reason);
        self.st.message = Some(message);
        self.begin_restore(Outcome::Failed);
    }

    fn fail_invalid(&mut self, errors: Vec<FieldError>) {
        let message = errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        self.notify(Severity::Warning, "InvalidSpec", message.clone());
        self.st.waiting_for = None;
        self.fail(FailureReason::InvalidSpec, message);
    }

    /// Checks the spec again whenever the job is not finished: a spec changed mid-run is caught.
    fn invalid(&mut self) -> bool {
        let errors = validate(&self.s.job.spec, self.s.runtime);
        if errors.is_empty() {
            return false;
        }
        self.fail_invalid(errors);
        true
    }

    fn deadline_passed(&mut self) -> bool {
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

    fn requeue_for_deadline(&mut self) {
        let mut after = RESYNC;
        if let (Some(limit), Some(start)) = (self.s.job.spec.active_deadline_seconds, &self.st.start_time) {
            let left = start.0.as_second().saturating_add(limit) - self.s.now.as_second();
            after = after.min(Duration::from_secs(left.max(1) as u64));
        }
        self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
    }

    // ----- co-tenants -----

    /// Problems that keep a job from leaving the queue or suspending: the spec, the objects it
    /// points at, and whom it may suspend.
    fn admission_errors(&self) -> Vec<FieldError> {
        let mut errors = self.s.problems.clone();
        let co = &self.s.job.spec.co_tenants;
        let mut skipped = 0;
        for c in &self.s.co_tenants {
            if self.allowed(c) {
                continue;
            }
            match c.selection {
                Selection::Ref(i) => errors.push(FieldError::new(
                    format!("spec.coTenants.refs[{i}]"),
                    format!(
                        "{} is outside the job's namespace {:?} and lacks the label {YIELD_LABEL}=true, so this job may not suspend it",
                        c.id, self.me.namespace
                    ),
                )),
                Selection::Selector => skipped += 1,
                Selection::HeldOnly => {}
            }
        }
        let wants_some = !co.allow_none && self.st.phase != Phase::Suspending;
        if wants_some && self.targets().is_empty() && errors.is_empty() {
            let where_ = match self.s.runtime {
                Runtime::Kubernetes => {
                    let ns = if co.namespaces.is_empty() {
                        vec![self.me.namespace.clone()]
                    } else {
                        co.namespaces.clone()
                    };
                    format!("no Deployment or StatefulSet in namespaces {ns:?}")
                }
                Runtime::Docker => "no container on this host".to_string(),
            };
            let note = if skipped > 0 {
                format!(" ({skipped} in other namespaces were skipped for lacking {YIELD_LABEL}=true)")
            } else {
                String::new()
            };
            errors.push(FieldError::new(
                "spec.coTenants",
                format!("the selector matches {where_}{note}; fix the selector or refs, or set allowNone: true to run without suspending anything"),
            ));
        }
        errors
    }

    fn allowed(&self, c: &CoTenant) -> bool {
        self.s.runtime == Runtime::Docker || c.id.namespace == self.me.namespace || c.opted_in
    }

    /// Indices of the co-tenants this job selects (and may suspend).
    fn selected(&self) -> Vec<usize> {
        (0..self.view.len())
            .filter(|&i| self.view[i].selection != Selection::HeldOnly && self.allowed(&self.view[i]))
            .collect()
    }

    /// Indices of the co-tenants this job should hold while active: every selected one, or under
    /// `policy: Minimal` the chosen ones (this decision's choice, else the holds in place).
    fn targets(&self) -> Vec<usize> {
        let selected = self.selected();
        if self.st.policy != Some(CoTenantPolicy::Minimal) {
            return selected;
        }
        match &self.chosen {
            Some(chosen) => selected.into_iter().filter(|i| chosen.contains(i)).collect(),
            None => selected.into_iter().filter(|&i| self.holds(i)).collect(),
        }
    }

    /// `policy: Minimal`: chooses the cheapest set of selected co-tenants whose GPU memory
    /// covers what Vidi needs beyond what is free (`yielding::cheapest`); co-tenants already at 0
    /// are held too (a record only: if something starts one, it is suspended again). Without a
    /// reading of the free memory, or when even everything would not be enough, every selected
    /// co-tenant yields, and the status says why.
    fn choose_minimal(&mut self) {
        let selected = self.selected();
        let spec = &self.s.job.spec;
        let precision = precision::first(spec.model.precision, self.s.gpu_total_bytes);
        let need = precision::min_free_bytes(spec, precision);
        let size = |b: u64| bytesize::ByteSize::b(b).display().iec().to_string();
        let Some(free) = self.s.gpu_free_bytes else {
            return self.yield_all_because(
                "policy Minimal: the GPU's free memory cannot be measured here (on Kubernetes, node GPU memory is not read yet); every selected co-tenant yields".into(),
            );
        };
        let deficit = need.saturating_sub(free);
        let running: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|&i| self.view[i].replicas > 0)
            .collect();
        let candidates: Vec<super::yielding::Candidate> = running
            .iter()
            .map(|&i| {
                let c = &self.view[i];
                super::yielding::Candidate {
                    memory_bytes: c.gpu_memory_bytes,
                    cost: u64::try_from(c.replicas.max(0)).unwrap_or(0) * u64::from(c.yield_priority),
                }
            })
            .collect();
        let Some(choice) = super::yielding::cheapest(&candidates, deficit) else {
            return self.yield_all_because(format!(
                "policy Minimal: {} free and {} needed at {precision}, and the co-tenants' known GPU memory does not cover the difference; every selected co-tenant yields",
                size(free),
                size(need)
            ));
        };
        let yielding: Vec<usize> = choice.yield_.iter().map(|&k| running[k]).collect();
        let names = |list: &[usize]| {
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.iter()
                    .map(|&i| self.view[i].id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let staying: Vec<usize> = running.iter().copied().filter(|i| !yielding.contains(i)).collect();
        let message = format!(
            "policy Minimal: {} free, {} needed at {precision}; yielding {} (cost {}), leaving {} running",
            size(free),
            size(need),
            names(&yielding),
            choice.cost,
            names(&staying)
        );
        self.notify(Severity::Normal, "YieldingMinimal", message);
        let mut chosen = yielding;
        chosen.extend(selected.iter().copied().filter(|&i| self.view[i].replicas <= 0));
        self.chosen = Some(chosen);
    }

    fn yield_all_because(&mut self, message: String) {
        self.st.policy = Some(CoTenantPolicy::All);
        self.notify(Severity::Normal, "YieldingAll", message);
    }

    /// Vidi ran out of GPU memory (or the gate timed out) with only some co-tenants yielded:
    /// the next attempt runs at the same precision with every selected co-tenant yielded, and
    /// only a failure after that lowers the precision.
    fn yield_all_instead(&mut self, number: u32, why: &str) {
        self.st.policy = Some(CoTenantPolicy::All);
        self.st.attempts = self.st.attempts.max(number + 1);
        self.st.phase = Phase::Suspending;
        let message =
            format!("attempt {number}: {why}; yielding every co-tenant (policy Minimal) before lowering the precision");
        self.notify(Severity::Warning, "YieldingAll", message.clone());
        self.st.message = Some(message);
    }

    fn holds(&self, i: usize) -> bool {
        self.view[i].holders.contains(self.me)
    }

    fn held(&self) -> Vec<usize> {
        (0..self.view.len()).filter(|&i| self.holds(i)).collect()
    }

    fn held_list(&self) -> Vec<SuspendedCoTenant> {
        self.held()
            .into_iter()
            .map(|i| {
                let c = &self.view[i];
                SuspendedCoTenant {
                    kind: c.id.kind,
                    namespace: c.id.namespace.clone(),
                    name: c.id.name.clone(),
                    original_replicas: c.original_replicas.unwrap_or(c.replicas),
                }
            })
            .collect()
    }

    /// Holds every target, and suspends again any held one that something scaled back up.
    fn keep_suspended(&mut self) {
        for i in self.targets() {
            if !self.holds(i) {
                self.hold(i);
            }
        }
        for i in self.held() {
            let c = &self.view[i];
            if c.replicas > 0 {
                let by = c.last_scaled_by.as_deref().unwrap_or("something else");
                let message = format!(
                    "{} was scaled to {} by {by} while VidiJob {} holds it; suspending it again (it will be restored to {})",
                    c.id,
                    c.replicas,
                    self.me,
                    c.original_replicas.unwrap_or(0)
                );
                let id = c.id.clone();
                self.actions.push(Action::Resuspend {
                    target: id.clone(),
                    revision: c.revision.clone(),
                });
                self.notify_about(
                    Severity::Warning,
                    "CoTenantFought",
                    message,
                    Some(Subject::CoTenant(id)),
                );
                self.view[i].replicas = 0;
            }
        }
    }

    /// Invariant 1: scale to 0, record holder and original replicas, in one write.
    fn hold(&mut self, i: usize) {
        let c = &self.view[i];
        let original = match (c.holders.is_empty(), c.original_replicas) {
            (false, Some(recorded)) => recorded,
            _ => c.replicas,
        };
        let mut holders = c.holders.clone();
        holders.insert(self.me.clone());
        let joined = !c.holders.is_empty();
        self.actions.push(Action::Hold {
            target: c.id.clone(),
            holders: holders.iter().cloned().collect(),
            original_replicas: original,
            revision: c.revision.clone(),
        });
        let message = if joined {
            format!(
                "holding {} (already suspended by {}; will be restored to {original})",
                c.id,
                list(&c.holders)
            )
        } else {
            format!("suspended {} (was {original} replicas)", c.id)
        };
        let id = c.id.clone();
        self.notify_about(Severity::Normal, "Suspended", message, Some(Subject::CoTenant(id)));
        let c = &mut self.view[i];
        c.holders = holders;
        c.original_replicas = Some(original);
        c.replicas = 0;
    }

    /// Invariant 2: restore only when no job holds it, in one write with the marks removed.
    fn release(&mut self, i: usize) {
        let c = &self.view[i];
        let mut holders = c.holders.clone();
        holders.remove(self.me);
        if holders.is_empty() {
            let replicas = match c.original_replicas {
                Some(r) => r,
                None => {
                    let (id, now) = (c.id.to_string(), c.replicas);
                    let message = format!(
                        "{id} lost its {} annotation; leaving it at {now} replicas",
                        crate::api::ORIGINAL_REPLICAS
                    );
                    let id = c.id.clone();
                    self.notify_about(
                        Severity::Warning,
                        "OriginalReplicasLost",
                        message,
                        Some(Subject::CoTenant(id)),
                    );
                    now
                }
            };
            let c = &self.view[i];
            self.actions.push(Action::Restore {
                target: c.id.clone(),
                replicas,
                revision: c.revision.clone(),
            });
            let id = c.id.clone();
            self.notify_about(
                Severity::Normal,
                "Restored",
                format!("restored {id} to {replicas} replicas"),
                Some(Subject::CoTenant(id.clone())),
            );
            let c = &mut self.view[i];
            c.replicas = replicas;
            c.original_replicas = None;
        } else {
            let message = format!("released {}; still held by {}", c.id, list(&holders));
            self.actions.push(Action::Release {
                target: c.id.clone(),
                holders: holders.iter().cloned().collect(),
                revision: c.revision.clone(),
            });
            let id = c.id.clone();
            self.notify_about(Severity::Normal, "Released", message, Some(Subject::CoTenant(id)));
        }
        self.view[i].holders = holders;
    }

    // ----- attempts -----

    fn current_number(&self) -> u32 {
        let seen = self.s.attempts.iter().map(|a| a.number).max().unwrap_or(0);
        self.st.attempts.max(seen)
    }

    fn attempt_precision(&self, attempt: &Attempt) -> Precision {
        attempt.precision.or(self.st.precision).unwrap_or(Precision::Fp16)
    }

    /// Failed attempts that count against backoffLimit, as far as the world still shows them.
    fn failures_seen(&self) -> u32 {
        self.s
            .attempts
            .iter()
            .filter(|a| match &a.state {
                AttemptState::Finished { gate, main, reason } => matches!(
                    classify(gate.as_ref(), main.as_ref(), reason.as_deref(), Precision::Fp16),
                    AttemptEnd::Failed {
                        retry: Retry::Backoff,
                        ..
                    }
                ),
                _ => false,
            })
            .count() as u32
    }

    /// Stops every attempt still alive; returns how many are alive (terminating ones included).
    fn stop_alive_attempts(&mut self) -> usize {
        let mut alive = 0;
        for a in &self.s.attempts {
            match a.state {
                AttemptState::Finished { .. } => {}
                AttemptState::Terminating => alive += 1,
                AttemptState::Pending { .. } | AttemptState::Running => {
                    alive += 1;
                    self.actions.push(Action::StopAttempt {
                        attempt: a.number,
                        name: a.name.clone(),
                    });
                }
            }
        }
        alive
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
