//! Node choice on a GPU pool of several nodes (`placement::choose`), and holds that remove only
//! the chosen node's replicas: pods marked with a low pod-deletion-cost, then one write that
//! scales down by their number and records what undoes it.
use std::collections::{BTreeMap, BTreeSet};

use crate::api::{NodeChoice, WorkloadKind};
use crate::plan::placement::{self, CoTenantPod, NodeHold, Tenant};

use super::*;

impl<'a> Plan<'a> {
    /// The node this job's pod is pinned to, once chosen.
    pub(super) fn chosen_node(&self) -> Option<&str> {
        self.st.node_choice.as_ref().map(|c| c.node.as_str())
    }

    /// Live pods of co-tenant `i` (terminating ones included).
    fn pods_of(&self, i: usize) -> impl Iterator<Item = &'a CoTenantPod> + '_ {
        let id = self.view[i].id.clone();
        self.s.placement.pods.iter().filter(move |p| p.co_tenant == id)
    }

    /// The node hold recorded for co-tenant `i` (in the world, or written in this decision).
    pub(super) fn node_hold(&self, i: usize) -> Option<&NodeHold> {
        let id = &self.view[i].id;
        self.node_holds.iter().find(|h| &h.co_tenant == id)
    }

    /// The replicas a held co-tenant runs while held: 0, or `original − removed` for a node hold.
    pub(super) fn held_floor(&self, i: usize) -> i32 {
        match (self.node_hold(i), self.view[i].original_replicas) {
            (Some(h), Some(original)) => (original - h.removed).max(0),
            _ => 0,
        }
    }

    /// Pods of target `i` the job waits for before starting Vidi: for a node hold, its pods on
    /// that node; else all of them.
    pub(super) fn pods_in_the_way(&self, i: usize) -> u32 {
        match self.node_hold(i) {
            Some(h) => self.pods_of(i).filter(|p| p.node == h.node).count() as u32,
            None => self.view[i].live_pods,
        }
    }

    /// Why co-tenant `i` cannot lose only its replicas on `node`, if it cannot.
    fn whole_reason(&self, i: usize, node: &str) -> Option<String> {
        let c = &self.view[i];
        if !c.holders.is_empty() && !self.holds(i) {
            return Some(format!("it is already held by {}", list(&c.holders)));
        }
        if let Some(a) = self.s.placement.autoscaled.iter().find(|a| a.co_tenant == c.id) {
            return Some(format!(
                "{} manages its replicas and would scale a partial scale-down back up",
                a.by
            ));
        }
        if c.id.kind == WorkloadKind::StatefulSet {
            let ordinals: Vec<u32> = self
                .pods_of(i)
                .filter(|p| p.node == node && !p.terminating)
                .filter_map(|p| p.ordinal)
                .collect();
            if !placement::highest_ordinals(c.replicas, &ordinals) {
                return Some(format!(
                    "a StatefulSet removes its highest ordinals first, and its pods on {node} are not those"
                ));
            }
        }
        None
    }

    /// Co-tenant `i` as a candidate for `placement::choose`.
    fn tenant(&self, i: usize) -> Tenant {
        let c = &self.view[i];
        let mut pods_on: BTreeMap<String, u32> = BTreeMap::new();
        let mut memory_per_pod = None;
        let mut restore_seconds = placement::DEFAULT_RESTORE_SECONDS;
        for p in self.pods_of(i).filter(|p| !p.terminating) {
            *pods_on.entry(p.node.clone()).or_default() += 1;
            memory_per_pod = memory_per_pod.or(p.gpu_memory_bytes);
            restore_seconds = p.restore_seconds;
        }
        let whole_on = pods_on
            .keys()
            .filter_map(|n| self.whole_reason(i, n).map(|r| (n.clone(), r)))
            .collect();
        Tenant {
            replicas: c.replicas,
            yield_priority: c.yield_priority,
            restore_seconds,
            whole_on,
            pods_on,
            memory_per_pod,
        }
    }

    /// Chooses the node (when the pool's nodes are known) and whom to yield there. Returns false
    /// when there is nothing to choose from, so the caller goes on as without nodes.
    pub(super) fn choose_node(&mut self) -> bool {
        if self.s.placement.nodes.is_empty() {
            return false;
        }
        let spec = &self.s.job.spec;
        let precision = precision::first(spec.model.precision, self.s.gpu_total_bytes);
        let need = precision::min_free_bytes(spec, precision);
        let candidates: Vec<usize> = self
            .selected()
            .into_iter()
            .filter(|&i| self.view[i].replicas > 0)
            .collect();
        let tenants: Vec<Tenant> = candidates.iter().map(|&i| self.tenant(i)).collect();
        let policy = self.st.policy.unwrap_or_default();
        let size = |b: u64| bytesize::ByteSize::b(b).display().iec().to_string();
        let mut choice = placement::choose(&self.s.placement.nodes, &tenants, need, policy);
        let mut note = String::new();
        if choice.is_none() && policy == CoTenantPolicy::Minimal {
            choice = placement::choose(&self.s.placement.nodes, &tenants, need, CoTenantPolicy::All);
            if choice.is_some() {
                self.st.policy = Some(CoTenantPolicy::All);
                note =
                    "; policy Minimal found no node whose known GPU memory makes room, so every co-tenant on it yields"
                        .into();
            }
        }
        let Some(choice) = choice else {
            let message = format!(
                "no node of the GPU pool ({} node{}) has the {} of GPU memory Vidi needs at {precision}; every selected co-tenant yields and the pod is not pinned",
                self.s.placement.nodes.len(),
                if self.s.placement.nodes.len() == 1 { "" } else { "s" },
                size(need)
            );
            self.yield_all_because(message);
            return true;
        };
        let what: Vec<String> = choice
            .yields
            .iter()
            .map(|y| {
                let c = &self.view[candidates[y.tenant]];
                match &y.whole {
                    Some(why) => format!("{} whole ({}: {why})", c.id, c.id.kind.amount(y.removed)),
                    None => format!(
                        "{} ({} replica{} there)",
                        c.id,
                        y.removed,
                        if y.removed == 1 { "" } else { "s" }
                    ),
                }
            })
            .collect();
        let memory = match (choice.gpu_memory_bytes, choice.free_after_bytes) {
            (Some(total), Some(free)) => format!(
                "{} GPU, {} free after yielding, {} needed",
                size(total),
                size(free),
                size(need)
            ),
            _ => format!("GPU memory unknown, {} needed", size(need)),
        };
        let reason = if what.is_empty() {
            format!(
                "node {}: nothing has to yield there ({memory}; {} candidate node{}){note}",
                choice.node,
                choice.candidates,
                if choice.candidates == 1 { "" } else { "s" }
            )
        } else {
            format!(
                "node {}: yielding {} (cost {}, expected restore {}s; {memory}; {} candidate node{}){note}",
                choice.node,
                what.join(", "),
                choice.cost,
                choice.restore_seconds,
                choice.candidates,
                if choice.candidates == 1 { "" } else { "s" }
            )
        };
        for y in &choice.yields {
            if let Some(why) = &y.whole {
                let id = self.view[candidates[y.tenant]].id.clone();
                self.notify_about(
                    Severity::Normal,
                    "YieldingWhole",
                    format!("{id} yields all its replicas, not only those on {}: {why}", choice.node),
                    Some(Subject::CoTenant(id.clone())),
                );
            }
        }
        self.notify(Severity::Normal, "NodeChosen", reason.clone());
        self.st.node = Some(choice.node.clone());
        self.st.node_choice = Some(NodeChoice {
            node: choice.node,
            reason,
        });
        self.chosen = Some(choice.yields.iter().map(|y| candidates[y.tenant]).collect());
        true
    }

    /// Holds target `i`: on a chosen node, only its replicas there where that is safe; else
    /// the whole workload.
    pub(super) fn hold_target(&mut self, i: usize) {
        let Some(node) = self.chosen_node().map(String::from) else {
            return self.hold(i);
        };
        let c = &self.view[i];
        let here: Vec<&CoTenantPod> = self.pods_of(i).filter(|p| p.node == node && !p.terminating).collect();
        if here.is_empty() || self.whole_reason(i, &node).is_some() || c.original_replicas.is_some() {
            return self.hold(i);
        }
        let removed = here.len() as i32;
        let original = c.replicas;
        let replicas = (original - removed).max(0);
        let marked: Vec<String> = if c.id.kind == WorkloadKind::Deployment {
            here.iter().map(|p| p.name.clone()).collect()
        } else {
            Vec::new()
        };
        let mut holders = c.holders.clone();
        holders.insert(self.me.clone());
        let id = c.id.clone();
        if !marked.is_empty() {
            self.actions.push(Action::MarkPods {
                target: id.clone(),
                pods: marked.clone(),
                holder: self.me.clone(),
            });
        }
        self.actions.push(Action::HoldOnNode {
            target: id.clone(),
            holders: holders.iter().cloned().collect(),
            original_replicas: original,
            replicas,
            node: node.clone(),
            marked_pods: marked.clone(),
            revision: c.revision.clone(),
        });
        self.notify_about(
            Severity::Normal,
            "Suspended",
            format!(
                "suspended {id}'s {} on {node} (was {}, now {replicas})",
                id.kind.amount(removed),
                id.kind.amount(original)
            ),
            Some(Subject::CoTenant(id.clone())),
        );
        self.node_holds.retain(|h| h.co_tenant != id);
        self.node_holds.push(NodeHold {
            co_tenant: id,
            node,
            removed,
            marked_pods: marked,
        });
        let c = &mut self.view[i];
        c.holders = holders;
        c.original_replicas = Some(original);
        c.replicas = replicas;
    }

    /// A node hold scaled back up by something else: the same write again.
    pub(super) fn rehold_on_node(&mut self, i: usize) {
        let Some(h) = self.node_hold(i).cloned() else { return };
        let c = &self.view[i];
        let original = c.original_replicas.unwrap_or(c.replicas);
        self.actions.push(Action::HoldOnNode {
            target: c.id.clone(),
            holders: c.holders.iter().cloned().collect(),
            original_replicas: original,
            replicas: (original - h.removed).max(0),
            node: h.node,
            marked_pods: h.marked_pods,
            revision: c.revision.clone(),
        });
    }

    /// Pod marks that nothing justifies any more (a hold that ended, a crash between marking
    /// and scaling down, a node chosen afresh): removed before anything else in this decision.
    pub(super) fn unmark_stale(&mut self) {
        let marking: BTreeSet<(CoTenantId, String)> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::MarkPods { target, pods, .. } => Some(pods.iter().map(|p| (target.clone(), p.clone()))),
                _ => None,
            })
            .flatten()
            .collect();
        let kept: BTreeSet<(CoTenantId, String)> = (0..self.view.len())
            .filter(|&i| self.holds(i))
            .filter_map(|i| self.node_hold(i))
            .flat_map(|h| h.marked_pods.iter().map(|p| (h.co_tenant.clone(), p.clone())))
            .collect();
        // Pods named by a hold record this decision restores, and pods carrying this job's mark.
        let restored: BTreeSet<(CoTenantId, String)> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Restore { target, .. } => self
                    .s
                    .placement
                    .node_holds
                    .iter()
                    .find(|h| &h.co_tenant == target)
                    .map(|h| {
                        h.marked_pods
                            .iter()
                            .map(|p| (target.clone(), p.clone()))
                            .collect::<Vec<_>>()
                    }),
                _ => None,
            })
            .flatten()
            .collect();
        // While the job runs on its node, its marks there stay even when no hold is seen: a view
        // that lags the job's own scale-down would otherwise unmark pods the ReplicaSet
        // controller has yet to remove. They go when the job ends.
        let active_on = match self.st.phase {
            Phase::Suspending | Phase::Running => self.chosen_node().map(String::from),
            _ => None,
        };
        let mut stale: BTreeMap<CoTenantId, Vec<String>> = BTreeMap::new();
        for p in &self.s.placement.pods {
            let key = (p.co_tenant.clone(), p.name.clone());
            let mine = p.marked_by.as_ref() == Some(self.me) || restored.contains(&key);
            let running_here = active_on.as_deref() == Some(p.node.as_str()) && !restored.contains(&key);
            if mine && !running_here && !marking.contains(&key) && !kept.contains(&key) {
                stale.entry(p.co_tenant.clone()).or_default().push(p.name.clone());
            }
        }
        let unmarks: Vec<Action> = stale
            .into_iter()
            .map(|(target, pods)| Action::UnmarkPods { target, pods })
            .collect();
        self.actions.splice(0..0, unmarks);
    }

    /// How target `i` would yield on the chosen node, for the dry run: `3 replicas` without a
    /// node, `1 of 3 replicas, on gpu-2`, or `all 3 replicas: <why>`.
    pub(super) fn yield_summary(&self, i: usize) -> String {
        let c = &self.view[i];
        let Some(node) = self.chosen_node() else {
            return c.id.kind.amount(c.replicas);
        };
        if let Some(why) = self.whole_reason(i, node) {
            return format!("all {}: {why}", c.id.kind.amount(c.replicas));
        }
        let here = self.pods_of(i).filter(|p| p.node == node && !p.terminating).count();
        format!("{here} of {}, on {node}", c.id.kind.amount(c.replicas))
    }

    /// Whether co-tenant `i` is held on one node only (a queued job does not join such a hold:
    /// it chooses its own node when its turn comes).
    pub(super) fn is_node_hold(&self, i: usize) -> bool {
        self.node_hold(i).is_some()
    }

    /// A node hold whose scale-down is done while a pod on the node still runs: the ReplicaSet
    /// controller removes unscheduled, pending and not-ready pods before it looks at
    /// pod-deletion-cost, so it may have removed a pod elsewhere and kept the marked one. The
    /// job would wait for that pod forever; the co-tenant yields whole instead (scaled to 0,
    /// restored to its original count like any hold), with a Warning that says why.
    pub(super) fn yield_whole_where_the_scale_down_missed(&mut self) {
        if self.st.phase != Phase::Suspending {
            return;
        }
        for i in self.held() {
            let Some(h) = self.node_hold(i) else { continue };
            let floor = self.held_floor(i);
            let c = &self.view[i];
            if floor == 0 || c.replicas != floor || c.released.is_some() {
                continue;
            }
            let live: Vec<&CoTenantPod> = self.pods_of(i).filter(|p| !p.terminating).collect();
            let here = live.iter().filter(|p| p.node == h.node).count();
            if here == 0 || live.len() > floor as usize {
                continue;
            }
            let (id, node) = (c.id.clone(), h.node.clone());
            self.actions.push(Action::Resuspend {
                target: id.clone(),
                revision: c.revision.clone(),
            });
            self.notify_about(
                Severity::Warning,
                "YieldingWhole",
                format!(
                    "{id} yields all its replicas, not only those on {node}: its scale-down removed pods elsewhere and kept {here} there (a ReplicaSet removes pods that are not ready before it weighs pod-deletion-cost)"
                ),
                Some(Subject::CoTenant(id)),
            );
            self.view[i].replicas = 0;
        }
    }
}
