//! In-place holds: a co-tenant that offers a release hook frees its GPU memory on a call
//! instead of being scaled down or stopped. Decisions only; the adapters make the calls.
//!
//! - The hold is recorded (holders, original replicas, release mark `Requested` with the hook)
//!   in one write *before* the call, so a crash at any point leaves a mark that leads to a
//!   resume.
//! - The adapter records the call's answer on the co-tenant: `Released` (2xx) or `Refused`. A
//!   refused release falls back to scaling down (one write: replicas 0, mark dropped, holders
//!   and original replicas kept: an ordinary hold from then on).
//! - A released co-tenant counts as yielded only when the GPU gate sees the memory free: a gate
//!   timeout (or a CUDA out-of-memory) with in-place holds falls back to stopping them and
//!   retries at the same precision, before any precision is lowered.
//! - Restore of an in-place hold is a resume call, then one write that drops every mark.
use crate::api::{ReleaseMark, ReleaseState};

use super::*;

impl<'a> Plan<'a> {
    /// Holds `i` in place, when it offers a release hook (or is held in place already); false
    /// when it is to be scaled down instead.
    pub(super) fn hold_in_place(&mut self, i: usize) -> bool {
        let c = &self.view[i];
        let mut holders = c.holders.clone();
        holders.insert(self.me.clone());
        let id = c.id.clone();
        let (mark, original, message) = match (&c.released, &c.release_hook) {
            // Another job released it in place: join that hold.
            (Some(mark), _) => {
                let original = c.original_replicas.unwrap_or(c.replicas);
                let message = format!(
                    "holding {id} (released in place by {}; will be resumed)",
                    list(&c.holders)
                );
                (mark.clone(), original, message)
            }
            // A release URL reaches one replica (through its Service): more are scaled down.
            (None, Some(hook)) if c.holders.is_empty() && c.replicas == 1 => {
                let mark = ReleaseMark {
                    state: ReleaseState::Requested,
                    hook: hook.clone(),
                };
                let message = format!(
                    "releasing {id} in place (POST {}) instead of stopping it; it is stopped after all if that fails or its GPU memory does not go free",
                    hook.url
                );
                (mark, c.replicas, message)
            }
            _ => return false,
        };
        let call = mark.state == ReleaseState::Requested && c.released.is_none();
        self.actions.push(Action::HoldInPlace {
            target: id.clone(),
            holders: holders.iter().cloned().collect(),
            original_replicas: original,
            mark: mark.clone(),
            revision: c.revision.clone(),
        });
        if call {
            self.actions.push(Action::CallRelease {
                target: id.clone(),
                hook: mark.hook.clone(),
            });
        }
        self.notify_about(Severity::Normal, "Suspended", message, Some(Subject::CoTenant(id)));
        let c = &mut self.view[i];
        c.holders = holders;
        c.original_replicas = Some(original);
        c.released = Some(mark);
        true
    }

    /// For co-tenants this job holds in place: a release recorded but never answered (the
    /// operator died around the call) is called again; a refused one falls back to a scale-down.
    pub(super) fn keep_released(&mut self) {
        for i in self.held() {
            let Some(mark) = self.view[i].released.clone() else {
                continue;
            };
            let c = &self.view[i];
            let id = c.id.clone();
            // One write per co-tenant per decision (the next would carry a stale
            // resourceVersion): a hold joined just now is looked at in the next decision.
            if self.writes_to(&id) {
                continue;
            }
            // Scaled up by someone while held in place: the new replicas take GPU memory again.
            if c.original_replicas.is_some_and(|o| c.replicas > o) {
                let by = c.last_scaled_by.as_deref().unwrap_or("something else");
                let why = format!("it was scaled to {} by {by} while released in place", c.replicas);
                self.fall_back(i, &why);
                continue;
            }
            match &mark.state {
                ReleaseState::Requested => {
                    let recorded = self.s.co_tenants[i]
                        .released
                        .as_ref()
                        .is_some_and(|m| m.state == ReleaseState::Requested);
                    let asked = self
                        .actions
                        .iter()
                        .any(|a| matches!(a, Action::CallRelease { target, .. } if *target == id));
                    if recorded && !asked {
                        self.actions.push(Action::CallRelease {
                            target: id,
                            hook: mark.hook.clone(),
                        });
                    }
                }
                ReleaseState::Released => {}
                ReleaseState::Refused { why } => {
                    let why = format!("its release call failed ({why})");
                    self.fall_back(i, &why);
                }
            }
        }
    }

    /// Whether this decision already writes co-tenant `id`.
    fn writes_to(&self, id: &crate::plan::CoTenantId) -> bool {
        self.actions.iter().any(|a| match a {
            Action::Hold { target, .. }
            | Action::HoldInPlace { target, .. }
            | Action::FallBack { target, .. }
            | Action::Resume { target, .. }
            | Action::Resuspend { target, .. }
            | Action::Release { target, .. }
            | Action::Restore { target, .. } => target == id,
            _ => false,
        })
    }

    /// Co-tenants held in place whose release call has not been answered yet: Vidi starts only
    /// once each answered (or fell back).
    pub(super) fn releases_pending(&self) -> Vec<String> {
        self.targets()
            .into_iter()
            .filter(|&i| self.holds(i) && self.view[i].released.is_some())
            .filter(|&i| {
                !self.s.co_tenants[i]
                    .released
                    .as_ref()
                    .is_some_and(|m| m.state == ReleaseState::Released)
            })
            .map(|i| self.view[i].id.to_string())
            .collect()
    }

    /// One write: scale to 0 and drop the release mark (holders and original replicas stay).
    pub(super) fn fall_back(&mut self, i: usize, why: &str) {
        let c = &self.view[i];
        let id = c.id.clone();
        let original = c.original_replicas.unwrap_or(c.replicas);
        self.actions.push(Action::FallBack {
            target: id.clone(),
            revision: c.revision.clone(),
        });
        self.notify_about(
            Severity::Warning,
            "ReleaseFellBack",
            format!("{id}: {why}; stopping it instead (it will be restored to {original})"),
            Some(Subject::CoTenant(id)),
        );
        let c = &mut self.view[i];
        c.released = None;
        c.replicas = 0;
    }

    /// The attempt could not get its GPU memory (gate timeout, CUDA out of memory) while some
    /// co-tenants were only released in place: stop those and try again at the same precision.
    /// False when nothing is held in place.
    pub(super) fn fall_back_released(&mut self, number: u32, why: &str) -> bool {
        let in_place: Vec<usize> = self
            .held()
            .into_iter()
            .filter(|&i| self.view[i].released.is_some())
            .collect();
        if in_place.is_empty() {
            return false;
        }
        // A spec edited meanwhile into one this job may not run ends it here, resuming what it
        // released: falling back first would write those co-tenants twice in this decision (to 0,
        // then back), and skip the resume call.
        let errors = self.admission_errors();
        if !errors.is_empty() {
            self.fail_invalid(errors);
            return true;
        }
        let reason = format!("attempt {number} did not get its GPU memory after an in-place release ({why})");
        for &i in &in_place {
            self.fall_back(i, &reason);
        }
        self.st.attempts = self.st.attempts.max(number + 1);
        self.st.phase = Phase::Suspending;
        self.st.message = Some(format!(
            "{reason}; stopping {} and trying again at the same precision",
            in_place
                .iter()
                .map(|&i| self.view[i].id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        true
    }

    /// How long the GPU gate of an attempt starting now may wait for memory: the longest
    /// `freeWithinSeconds` of the co-tenants this job holds in place, or none when it holds none
    /// in place (the operator's gate timeout applies).
    pub(super) fn release_wait(&self) -> Option<std::time::Duration> {
        self.held()
            .into_iter()
            .filter_map(|i| self.view[i].released.as_ref())
            .map(|mark| mark.hook.free_within())
            .max()
    }

    /// Restores an in-place hold that no other job holds: the resume call, then the marks go.
    /// False when it is not held in place or others still hold it.
    pub(super) fn resume_in_place(&mut self, i: usize) -> bool {
        let c = &self.view[i];
        let Some(mark) = c.released.clone() else {
            return false;
        };
        let mut holders = c.holders.clone();
        holders.remove(self.me);
        if !holders.is_empty() {
            return false;
        }
        let id = c.id.clone();
        // Nothing runs to take the call (someone scaled it to 0 meanwhile): the write brings
        // the original replicas back instead.
        let call = c.replicas > 0 && mark.hook.resume_url.is_some();
        let replicas = c.original_replicas.unwrap_or(c.replicas);
        self.actions.push(Action::Resume {
            target: id.clone(),
            hook: mark.hook.clone(),
            call,
            replicas,
            revision: c.revision.clone(),
        });
        let message = match (&mark.hook.resume_url, call) {
            (Some(url), true) => format!("resumed {id} in place (POST {url})"),
            (None, _) => format!("let go of {id} (released in place; it reloads on its own, no resumeUrl)"),
            (Some(_), false) => format!("let go of {id} (released in place; it no longer runs, nothing to resume)"),
        };
        self.notify_about(Severity::Normal, "Restored", message, Some(Subject::CoTenant(id)));
        let c = &mut self.view[i];
        c.holders = holders;
        c.original_replicas = None;
        c.released = None;
        c.replicas = replicas;
        true
    }
}
