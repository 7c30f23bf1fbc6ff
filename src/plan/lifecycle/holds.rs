//! Holds: whom a job selects and may suspend, and the writes that keep invariants 1 (suspend
//! and record in one write), 2 (restore only when no job holds it, in one write) and 5 (a
//! co-tenant scaled back up while held is suspended again).
use super::*;

impl<'a> Plan<'a> {
    /// Problems that keep a job from leaving the queue or suspending: the spec, the objects it
    /// points at, and whom it may suspend.
    pub(super) fn admission_errors(&self) -> Vec<FieldError> {
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

    pub(super) fn allowed(&self, c: &CoTenant) -> bool {
        self.s.runtime == Runtime::Docker || c.id.namespace == self.me.namespace || c.opted_in
    }

    /// Indices of the co-tenants this job selects (and may suspend).
    pub(super) fn selected(&self) -> Vec<usize> {
        (0..self.view.len())
            .filter(|&i| self.view[i].selection != Selection::HeldOnly && self.allowed(&self.view[i]))
            .collect()
    }

    /// Indices of the co-tenants this job should hold while active: every selected one, or under
    /// `policy: Minimal` the chosen ones (this decision's choice, else the holds in place).
    pub(super) fn targets(&self) -> Vec<usize> {
        let selected = self.selected();
        if let Some(node) = self.chosen_node() {
            // On a chosen node: this decision's choice, else the holds in place, and under `All`
            // also whatever runs on that node now.
            let all = self.st.policy != Some(CoTenantPolicy::Minimal);
            let on_node = |i: usize| {
                let id = &self.view[i].id;
                all && self
                    .s
                    .placement
                    .pods
                    .iter()
                    .any(|p| &p.co_tenant == id && p.node == node && !p.terminating)
            };
            return match &self.chosen {
                Some(chosen) => selected.into_iter().filter(|i| chosen.contains(i)).collect(),
                None => selected.into_iter().filter(|&i| self.holds(i) || on_node(i)).collect(),
            };
        }
        if self.st.policy != Some(CoTenantPolicy::Minimal) {
            return selected;
        }
        match &self.chosen {
            Some(chosen) => selected.into_iter().filter(|i| chosen.contains(i)).collect(),
            None => selected.into_iter().filter(|&i| self.holds(i)).collect(),
        }
    }

    pub(super) fn holds(&self, i: usize) -> bool {
        self.view[i].holders.contains(self.me)
    }

    pub(super) fn held(&self) -> Vec<usize> {
        (0..self.view.len()).filter(|&i| self.holds(i)).collect()
    }

    pub(super) fn held_list(&self) -> Vec<SuspendedCoTenant> {
        self.held()
            .into_iter()
            .map(|i| {
                let c = &self.view[i];
                SuspendedCoTenant {
                    kind: c.id.kind,
                    namespace: c.id.namespace.clone(),
                    name: c.id.name.clone(),
                    original_replicas: c.original_replicas.unwrap_or(c.replicas),
                    released_in_place: c.released.is_some(),
                }
            })
            .collect()
    }

    /// Holds every target, and suspends again any held one that something scaled back up.
    pub(super) fn keep_suspended(&mut self) {
        for i in self.targets() {
            if !self.holds(i) {
                self.hold_target(i);
            }
        }
        self.keep_released();
        for i in self.held() {
            let c = &self.view[i];
            // Held in place: it keeps running by design.
            let floor = self.held_floor(i);
            if c.replicas > floor && c.released.is_none() {
                let by = c.last_scaled_by.as_deref().unwrap_or("something else");
                let message = format!(
                    "{} was scaled to {} by {by} while VidiJob {} holds it; suspending it again (it will be restored to {})",
                    c.id,
                    c.replicas,
                    self.me,
                    c.original_replicas.unwrap_or(0)
                );
                let id = c.id.clone();
                if self.is_node_hold(i) {
                    self.rehold_on_node(i);
                } else {
                    self.actions.push(Action::Resuspend {
                        target: id.clone(),
                        revision: c.revision.clone(),
                    });
                }
                self.notify_about(
                    Severity::Warning,
                    "CoTenantFought",
                    message,
                    Some(Subject::CoTenant(id)),
                );
                self.view[i].replicas = floor;
            }
        }
        self.yield_whole_where_the_scale_down_missed();
    }

    /// Invariant 1: scale to 0, record holder and original replicas, in one write.
    pub(super) fn hold(&mut self, i: usize) {
        if self.hold_in_place(i) {
            return;
        }
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
                "holding {} (already suspended by {}; will be restored to {})",
                c.id,
                list(&c.holders),
                c.id.kind.amount(original)
            )
        } else {
            format!("suspended {} (was {})", c.id, c.id.kind.amount(original))
        };
        let id = c.id.clone();
        self.notify_about(Severity::Normal, "Suspended", message, Some(Subject::CoTenant(id)));
        let c = &mut self.view[i];
        c.holders = holders;
        c.original_replicas = Some(original);
        c.replicas = 0;
    }

    /// Invariant 2: restore only when no job holds it, in one write with the marks removed.
    pub(super) fn release(&mut self, i: usize) {
        if self.resume_in_place(i) {
            return;
        }
        let c = &self.view[i];
        let mut holders = c.holders.clone();
        holders.remove(self.me);
        if holders.is_empty() {
            let replicas = match c.original_replicas {
                Some(r) => r,
                None => {
                    let (id, now) = (c.id.to_string(), c.replicas);
                    let message = format!(
                        "{id} lost its {} annotation; leaving it at {}",
                        crate::api::ORIGINAL_REPLICAS,
                        c.id.kind.amount(now)
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
                restored_message(&id, replicas),
                Some(Subject::CoTenant(id.clone())),
            );
            let c = &mut self.view[i];
            c.replicas = replicas;
            c.original_replicas = None;
            let id = c.id.clone();
            self.node_holds.retain(|h| h.co_tenant != id);
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
}

/// `restored Deployment ns/tts to 2 replicas`; a container or a command is started again (or
/// left stopped, when it was stopped before the job).
fn restored_message(id: &crate::plan::CoTenantId, replicas: i32) -> String {
    use crate::api::WorkloadKind::{Command, Container};
    match id.kind {
        Container | Command if replicas > 0 => format!("restored {id} (running again)"),
        Container | Command => format!("restored {id} (stopped, as it was before the job)"),
        _ => format!("restored {id} to {}", id.kind.amount(replicas)),
    }
}
