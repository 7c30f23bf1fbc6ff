//! Attempts: which is current, at which precision, how many failures count.
use super::*;

impl<'a> Plan<'a> {
    pub(super) fn current_number(&self) -> u32 {
        let seen = self.s.attempts.iter().map(|a| a.number).max().unwrap_or(0);
        self.st.attempts.max(seen)
    }

    pub(super) fn attempt_precision(&self, attempt: &Attempt) -> Precision {
        attempt.precision.or(self.st.precision).unwrap_or(Precision::Fp16)
    }

    /// Failed attempts that count against backoffLimit, as far as the world still shows them.
    pub(super) fn failures_seen(&self) -> u32 {
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
    pub(super) fn stop_alive_attempts(&mut self) -> usize {
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
}
