//! Pending and Queued: validation, the GPU queue, backing off, and the dry run.
use super::*;

impl<'a> Plan<'a> {
    pub(super) fn waiting(&mut self) {
        let errors = self.admission_errors();
        if !errors.is_empty() {
            return self.fail_invalid(errors);
        }
        if self.s.dry_run {
            return self.dry_run();
        }
        match turn(self.place(), &self.s.rivals) {
            Turn::Go => {
                let was_queued = self.st.phase == Phase::Queued;
                self.st.phase = Phase::Suspending;
                self.st.policy = Some(self.s.job.spec.co_tenants.policy);
                if !self.choose_node() && self.st.policy == Some(CoTenantPolicy::Minimal) {
                    self.choose_minimal();
                }
                self.st.pool = Some(crate::plan::queue::pool_key(&self.s.job.spec));
                self.st.waiting_for = None;
                self.st.start_time.get_or_insert(Time(self.s.now));
                self.st.message = Some("suspending co-tenants".into());
                // A job that never waited says it started with its first Suspended (or
                // Starting) Event.
                if was_queued {
                    self.notify(
                        Severity::Normal,
                        "Started",
                        "left the queue; suspending the GPU's co-tenants".into(),
                    );
                }
            }
            Turn::Next { active } => {
                // Join holds already in place, so the co-tenants stay down between the two jobs.
                let joinable: Vec<usize> = self
                    .targets()
                    .into_iter()
                    .filter(|&i| !self.view[i].holders.is_empty() && !self.holds(i) && !self.is_node_hold(i))
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
    pub(super) fn pool_taken(&self) -> Option<JobKey> {
        let me = self.place();
        self.s
            .rivals
            .iter()
            .filter(|r| r.key != *self.me)
            .find(|r| match r.phase {
                Phase::Running | Phase::Restoring => true,
                Phase::Suspending => crate::plan::queue::order(r) < me,
                _ => false,
            })
            .map(|r| r.key.clone())
    }

    /// This job's place in its pool's queue.
    pub(super) fn place(&self) -> crate::plan::queue::Place<'a> {
        crate::plan::queue::place(self.me, self.s.job.created, self.s.job.spec.priority)
    }

    /// Invariant 3 before a Vidi pod exists: go back to the queue behind `other`.
    pub(super) fn back_off(&mut self, other: JobKey) {
        self.notify(
            Severity::Warning,
            "BackedOff",
            format!("VidiJob {other} is active on the same GPU pool; going back to the queue before starting Vidi"),
        );
        self.waiting();
    }

    pub(super) fn queue(&mut self, blocker: JobKey, position: usize, what: &str) {
        let entering = self.st.phase != Phase::Queued;
        self.st.phase = Phase::Queued;
        // The node is chosen when the job leaves the queue.
        self.st.node_choice = None;
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

    pub(super) fn dry_run(&mut self) {
        self.st.policy = Some(self.s.job.spec.co_tenants.policy);
        if !self.choose_node() && self.st.policy == Some(CoTenantPolicy::Minimal) {
            self.choose_minimal();
        }
        let list: Vec<String> = self
            .targets()
            .into_iter()
            .map(|i| {
                let c = &self.view[i];
                match &c.release_hook {
                    // As `hold_in_place` would: one replica, not held scaled down already.
                    Some(hook) if c.replicas == 1 && (c.holders.is_empty() || c.released.is_some()) => {
                        format!("{} (1 replica, released in place: POST {})", c.id, hook.url)
                    }
                    _ => format!("{} ({})", c.id, self.yield_summary(i)),
                }
            })
            .collect();
        // A dry run records no choice.
        let on = self
            .st
            .node_choice
            .take()
            .map(|c| format!(" on node {}", c.node))
            .unwrap_or_default();
        self.st.node = None;
        let p = precision::first(self.s.job.spec.model.precision, self.s.gpu_total_bytes);
        let need = precision::min_free_bytes(&self.s.job.spec, p);
        let message = format!(
            "dry run: would suspend {}; would run Vidi{on} at {p}, which needs {} of free GPU memory",
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
}
