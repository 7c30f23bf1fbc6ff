//! Suspending and Running: waiting for the co-tenants to be down, the attempts, and what a
//! failed attempt leads to (retry, lower precision, or the end).
use super::*;

impl<'a> Plan<'a> {
    pub(super) fn suspending(&mut self) {
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
            .filter(|&i| self.pods_in_the_way(i) > 0 && self.view[i].released.is_none())
            .map(|i| {
                let c = &self.view[i];
                let live = self.pods_in_the_way(i);
                let noun = if c.id.kind == crate::api::WorkloadKind::Command {
                    "process"
                } else {
                    "pod"
                };
                let on = self.node_hold(i).map(|h| format!(" on {}", h.node)).unwrap_or_default();
                format!("{live} {noun}{} of {}{on}", if live == 1 { "" } else { "s" }, c.id)
            })
            .collect();
        let releasing = self.releases_pending();
        if !waiting.is_empty() || !releasing.is_empty() {
            let mut parts = Vec::new();
            if !waiting.is_empty() {
                parts.push(format!("{} to stop", waiting.join(", ")));
            }
            if !releasing.is_empty() {
                parts.push(format!("{} to answer its release call", releasing.join(", ")));
            }
            let message = format!("waiting for {}", parts.join(" and "));
            // Right after leaving the queue, each pod that stops is no news worth a status write
            // of its own (most stop within a second): the first "waiting for" message stands
            // until WAIT_NEWS_AFTER has passed, then follows every change again.
            let since = self
                .st
                .start_time
                .as_ref()
                .map(|t| self.s.now.as_second() - t.0.as_second());
            let quiet = since.filter(|&s| s >= 0 && s < WAIT_NEWS_AFTER.as_secs() as i64);
            match quiet {
                Some(s)
                    if self
                        .st
                        .message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("waiting for ")) =>
                {
                    let left = Duration::from_secs((WAIT_NEWS_AFTER.as_secs() as i64 - s).max(1) as u64);
                    self.requeue = Some(self.requeue.map_or(left, |r| r.min(left)));
                }
                _ => self.st.message = Some(message),
            }
            self.requeue_for_deadline();
            return;
        }
        // Running and the first attempt are recorded in one status write. The adapters create
        // the Vidi pod only once that status has landed (`StartAttempt` runs after the status
        // write), so a Vidi pod exists only while the persisted phase tells rivals that the pool
        // is taken: a crash in between leaves a Running job without its pod, which `running`
        // creates (invariant 3).
        self.st.phase = Phase::Running;
        self.st.precision = Some(precision::first(
            self.s.job.spec.model.precision,
            self.s.gpu_total_bytes,
        ));
        self.st.message = Some("co-tenants suspended; starting Vidi".into());
        let number = self.current_number().max(1);
        if self.s.attempts.iter().any(|a| a.number == number) {
            // An attempt of this number exists already (a view that lags, or a resumed job's
            // old pod): `running` looks at it on the next pass, never in a decision that may
            // have written holds already.
            self.requeue = Some(START_DELAY);
            return;
        }
        let precision = self.st.precision.unwrap_or(Precision::Fp16);
        self.start_attempt(number, precision);
    }

    pub(super) fn running(&mut self) {
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
        // The node is recorded once Vidi runs there (or is held up there): a pod merely scheduled
        // is no news worth a status write of its own.
        if attempt.node.is_some() && !matches!(attempt.state, AttemptState::Pending { waiting: None }) {
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
                    // As `start_attempt` said: a pod that is simply starting changes nothing.
                    None => format!("starting Vidi attempt {number} at {precision}"),
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
    pub(super) fn answered(&self) -> bool {
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

    pub(super) fn after_failure(
        &mut self,
        number: u32,
        precision: Precision,
        reason: FailureReason,
        message: String,
        retry: Retry,
    ) {
        // Released in place and still short of memory: stop those first, at the same precision.
        if retry == Retry::LowerPrecision && self.fall_back_released(number, &message) {
            return;
        }
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

    pub(super) fn start_attempt(&mut self, number: u32, precision: Precision) {
        self.keep_suspended();
        let name = names::attempt(&self.me.name, number);
        let min_free_bytes = precision::min_free_bytes(&self.s.job.spec, precision);
        let new = self.st.attempts < number;
        self.st.attempts = self.st.attempts.max(number);
        self.st.precision = Some(precision);
        self.st.pod_name = Some(name.clone());
        self.st.message = Some(format!("starting Vidi attempt {number} at {precision}"));
        let release_wait = self.release_wait();
        self.actions.push(Action::StartAttempt {
            attempt: number,
            name: name.clone(),
            precision,
            min_free_bytes,
            release_wait,
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
}
