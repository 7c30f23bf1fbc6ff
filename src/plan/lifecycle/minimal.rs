//! `coTenants.policy: Minimal`: choosing whom to yield, and yielding everything when that was
//! not enough.
use super::*;

impl<'a> Plan<'a> {
    /// `policy: Minimal`: chooses the cheapest set of selected co-tenants whose GPU memory
    /// covers what Vidi needs beyond what is free (`yielding::cheapest`); co-tenants already at 0
    /// are held too (a record only: if something starts one, it is suspended again). Without a
    /// reading of the free memory, or when even everything would not be enough, every selected
    /// co-tenant yields, and the status says why.
    pub(super) fn choose_minimal(&mut self) {
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
        let candidates: Vec<crate::plan::yielding::Candidate> = running
            .iter()
            .map(|&i| {
                let c = &self.view[i];
                crate::plan::yielding::Candidate {
                    memory_bytes: c.gpu_memory_bytes,
                    cost: u64::try_from(c.replicas.max(0)).unwrap_or(0) * u64::from(c.yield_priority),
                }
            })
            .collect();
        let Some(choice) = crate::plan::yielding::cheapest(&candidates, deficit) else {
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

    pub(super) fn yield_all_because(&mut self, message: String) {
        self.st.policy = Some(CoTenantPolicy::All);
        self.notify(Severity::Normal, "YieldingAll", message);
    }

    /// Vidi ran out of GPU memory (or the gate timed out) with only some co-tenants yielded:
    /// the next attempt runs at the same precision with every selected co-tenant yielded, and
    /// only a failure after that lowers the precision.
    pub(super) fn yield_all_instead(&mut self, number: u32, why: &str) {
        self.st.policy = Some(CoTenantPolicy::All);
        self.st.attempts = self.st.attempts.max(number + 1);
        self.st.phase = Phase::Suspending;
        let message =
            format!("attempt {number}: {why}; yielding every co-tenant (policy Minimal) before lowering the precision");
        self.notify(Severity::Warning, "YieldingAll", message.clone());
        self.st.message = Some(message);
    }
}
