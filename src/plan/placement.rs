//! Node choice: where in a GPU pool of several nodes a job disrupts least. Pure.
//!
//! The adapter observes the pool's nodes (their GPU memory) and the co-tenants' pods on each
//! node; `choose` ranks the nodes and says, for the best one, which co-tenants yield there and
//! how (only their replicas on that node, or the whole workload when removing only those is not
//! safe). Ranking, best first:
//! 1. the cost of what yields there (replicas removed × `vidi.dev/yield-priority`); a node where
//!    nothing needs to yield costs 0 and so wins outright;
//! 2. the expected restore: the longest `vidi.dev/restore-seconds` among the co-tenants yielding
//!    there (default 60 s each);
//! 3. a node whose GPU memory is known before one whose memory is unknown;
//! 4. more GPU memory left free after the yields;
//! 5. the node name (so the choice is deterministic).
//!
//! A node whose GPU memory is known but too small for the job (even with every co-tenant on it
//! yielded) is never chosen. A node whose memory is unknown is a candidate only under policy
//! `All`, where every co-tenant on it yields (the GPU gate then confirms the memory).
use std::collections::BTreeMap;

use crate::api::CoTenantPolicy;

use super::snapshot::{CoTenantId, JobKey};
use super::yielding::{self, Candidate};

/// Default `vidi.dev/restore-seconds`: how long one replica takes to be back, when not declared.
pub const DEFAULT_RESTORE_SECONDS: u32 = 60;

/// What the adapter observed about where things run (Kubernetes). Empty on a Docker host, where
/// there is one GPU and nothing to place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The nodes of the job's GPU pool (matching `spec.gpu.nodeSelector` and offering
    /// `spec.gpu.resourceName`). Empty: no node choice (the pod goes wherever it is scheduled).
    pub nodes: Vec<GpuNode>,
    /// The live pods (terminating ones included) of every co-tenant in the snapshot.
    pub pods: Vec<CoTenantPod>,
    /// Holds that removed only one node's replicas, as recorded on the co-tenants.
    pub node_holds: Vec<NodeHold>,
    /// Co-tenants whose replica count an autoscaler manages.
    pub autoscaled: Vec<Autoscaled>,
}

/// One node of the GPU pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuNode {
    pub name: String,
    /// Memory of its GPU: `spec.gpu.memory`, else the `nvidia.com/gpu.memory` label (MiB) that
    /// NVIDIA GPU Feature Discovery sets; `None` when neither says.
    pub gpu_memory_bytes: Option<u64>,
}

/// A live pod of a co-tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoTenantPod {
    pub co_tenant: CoTenantId,
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// The StatefulSet ordinal (the number after the last `-` of its name), for StatefulSets.
    pub ordinal: Option<u32>,
    /// Declared GPU memory of one replica (`vidi.dev/gpu-memory`), when known.
    pub gpu_memory_bytes: Option<u64>,
    /// Its workload's `vidi.dev/restore-seconds` (default `DEFAULT_RESTORE_SECONDS`).
    pub restore_seconds: u32,
    /// Being deleted.
    pub terminating: bool,
    /// The job that set a pod-deletion-cost on it (`vidi.dev/marked-by`).
    pub marked_by: Option<JobKey>,
}

/// A hold that removed only the replicas on `node` (Kubernetes annotations on the workload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeHold {
    pub co_tenant: CoTenantId,
    pub node: String,
    /// Replicas removed: the workload runs `original − removed` while held.
    pub removed: i32,
    /// Pods that were given a low pod-deletion-cost before the scale-down.
    pub marked_pods: Vec<String>,
}

/// Which autoscaler manages a co-tenant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autoscaled {
    pub co_tenant: CoTenantId,
    /// e.g. `HorizontalPodAutoscaler media/cosyvoice`.
    pub by: String,
}

/// One co-tenant as a candidate for yielding, with its pods on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Replicas now.
    pub replicas: i32,
    pub yield_priority: u32,
    pub restore_seconds: u32,
    /// Nodes where removing only its replicas there is not safe (a StatefulSet whose pods on the
    /// node are not its highest ordinals, an autoscaler that would scale it back), with why: on
    /// those it yields whole, and costs all its replicas.
    pub whole_on: BTreeMap<String, String>,
    /// Its (non-terminating) pods per node.
    pub pods_on: BTreeMap<String, u32>,
    /// Declared GPU memory of one replica.
    pub memory_per_pod: Option<u64>,
}

/// How one co-tenant yields on the chosen node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Yield {
    /// Index into the tenants given to `choose`.
    pub tenant: usize,
    /// Replicas removed (all of them when `whole`).
    pub removed: i32,
    /// Why it yields whole instead of only its replicas on the node.
    pub whole: Option<String>,
}

/// The chosen node and what yields there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeChoice {
    pub node: String,
    pub yields: Vec<Yield>,
    pub cost: u64,
    pub restore_seconds: u32,
    /// GPU memory of the node, when known.
    pub gpu_memory_bytes: Option<u64>,
    /// Memory left free once the yields are done (known memory only).
    pub free_after_bytes: Option<u64>,
    /// How many nodes were candidates.
    pub candidates: usize,
}

/// Ranks the nodes for a job needing `need_bytes` under `policy`; `None` when no node can take
/// the job (every node's known memory is too small).
pub fn choose(nodes: &[GpuNode], tenants: &[Tenant], need_bytes: u64, policy: CoTenantPolicy) -> Option<NodeChoice> {
    let options: Vec<NodeChoice> = nodes
        .iter()
        .filter_map(|n| on_node(n, tenants, need_bytes, policy))
        .collect();
    let count = options.len();
    options
        .into_iter()
        .min_by(|a, b| rank(a).cmp(&rank(b)))
        .map(|c| NodeChoice { candidates: count, ..c })
}

/// The ranking key (smaller is better).
fn rank(c: &NodeChoice) -> (u64, u32, bool, std::cmp::Reverse<u64>, String) {
    (
        c.cost,
        c.restore_seconds,
        c.gpu_memory_bytes.is_none(),
        std::cmp::Reverse(c.free_after_bytes.unwrap_or(0)),
        c.node.clone(),
    )
}

fn cost_of(t: &Tenant, removed: i32) -> u64 {
    u64::try_from(removed.max(0)).unwrap_or(0) * u64::from(t.yield_priority)
}

/// What yielding on `node` takes, under `policy`; `None` when the node cannot take the job.
fn on_node(node: &GpuNode, tenants: &[Tenant], need: u64, policy: CoTenantPolicy) -> Option<NodeChoice> {
    // Co-tenants with pods on this node, each as the yield it would make.
    let present: Vec<Yield> = tenants
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let here = *t.pods_on.get(&node.name)?;
            (here > 0).then(|| {
                let whole = t.whole_on.get(&node.name).cloned();
                let removed = if whole.is_some() {
                    t.replicas.max(here as i32)
                } else {
                    here as i32
                };
                Yield {
                    tenant: i,
                    removed,
                    whole,
                }
            })
        })
        .collect();
    let memory_here = |y: &Yield| {
        let t = &tenants[y.tenant];
        t.memory_per_pod
            .map(|m| m.saturating_mul(u64::from(t.pods_on.get(&node.name).copied().unwrap_or(0))))
    };
    let chosen: Vec<Yield> = match (node.gpu_memory_bytes, policy) {
        (Some(total), _) if total < need => return None,
        (None, CoTenantPolicy::Minimal) => return None,
        (None, CoTenantPolicy::All) => present.clone(),
        (Some(_), CoTenantPolicy::All) => present.clone(),
        (Some(total), CoTenantPolicy::Minimal) => {
            let used: u64 = present.iter().filter_map(memory_here).sum();
            // What must be freed: declared use beyond what leaves `need` free (declarations
            // may add up to more than the GPU has).
            let deficit = need.saturating_add(used).saturating_sub(total);
            let candidates: Vec<Candidate> = present
                .iter()
                .map(|y| Candidate {
                    memory_bytes: memory_here(y),
                    cost: cost_of(&tenants[y.tenant], y.removed),
                })
                .collect();
            let pick = yielding::cheapest(&candidates, deficit)?;
            pick.yield_.iter().map(|&k| present[k].clone()).collect()
        }
    };
    let cost = chosen.iter().map(|y| cost_of(&tenants[y.tenant], y.removed)).sum();
    let restore_seconds = chosen
        .iter()
        .map(|y| tenants[y.tenant].restore_seconds)
        .max()
        .unwrap_or(0);
    let free_after = node.gpu_memory_bytes.map(|total| {
        let staying: u64 = present
            .iter()
            .filter(|y| !chosen.iter().any(|c| c.tenant == y.tenant))
            .filter_map(memory_here)
            .sum();
        total.saturating_sub(staying)
    });
    Some(NodeChoice {
        node: node.name.clone(),
        yields: chosen,
        cost,
        restore_seconds,
        gpu_memory_bytes: node.gpu_memory_bytes,
        free_after_bytes: free_after,
        candidates: 0,
    })
}

/// Whether a StatefulSet with `replicas` loses exactly `ordinals` (its pods on a node) when scaled
/// down by their number: they must be its highest ordinals.
pub fn highest_ordinals(replicas: i32, ordinals: &[u32]) -> bool {
    let k = ordinals.len() as i64;
    let mut sorted = ordinals.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted.len() as i64 == k
        && sorted
            .iter()
            .enumerate()
            .all(|(i, &o)| i64::from(o) == i64::from(replicas) - k + i as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 30;

    fn node(name: &str, gib: Option<u64>) -> GpuNode {
        GpuNode {
            name: name.into(),
            gpu_memory_bytes: gib.map(|g| g * GIB),
        }
    }

    fn tenant(pods: &[(&str, u32)], gib_per_pod: Option<u64>, priority: u32) -> Tenant {
        Tenant {
            replicas: pods.iter().map(|(_, n)| *n as i32).sum(),
            yield_priority: priority,
            restore_seconds: DEFAULT_RESTORE_SECONDS,
            whole_on: BTreeMap::new(),
            pods_on: pods.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            memory_per_pod: gib_per_pod.map(|g| g * GIB),
        }
    }

    #[test]
    fn a_free_node_wins_outright() {
        let nodes = [node("a", Some(24)), node("b", Some(24)), node("c", Some(24))];
        let tenants = [tenant(&[("a", 1), ("b", 1)], Some(4), 1)];
        for policy in [CoTenantPolicy::All, CoTenantPolicy::Minimal] {
            let c = choose(&nodes, &tenants, 20 * GIB, policy).unwrap();
            assert_eq!((c.node.as_str(), c.cost, c.yields.len()), ("c", 0, 0), "{policy}");
            assert_eq!(c.candidates, 3);
        }
    }

    #[test]
    fn the_cheapest_node_is_chosen_and_only_its_replicas_go() {
        let nodes = [node("a", Some(24)), node("b", Some(24))];
        // Two replicas of a cheap service on a, one replica of a precious one on b.
        let tenants = [tenant(&[("a", 2)], Some(6), 1), tenant(&[("b", 1)], Some(6), 5)];
        let c = choose(&nodes, &tenants, 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.node, "a");
        assert_eq!(
            c.yields,
            vec![Yield {
                tenant: 0,
                removed: 2,
                whole: None
            }]
        );
        assert_eq!(c.cost, 2);
    }

    #[test]
    fn minimal_on_a_node_yields_only_what_makes_room() {
        let nodes = [node("a", Some(24))];
        // 3 GiB + 8 GiB on a 24 GiB GPU: 13 free; 20 needed: the 8 GiB one goes (cost 1).
        let tenants = [tenant(&[("a", 1)], Some(3), 1), tenant(&[("a", 1)], Some(8), 1)];
        let c = choose(&nodes, &tenants, 20 * GIB, CoTenantPolicy::Minimal).unwrap();
        assert_eq!(c.yields.iter().map(|y| y.tenant).collect::<Vec<_>>(), vec![1]);
        assert_eq!(c.free_after_bytes, Some(21 * GIB));
        // Under All both go.
        let c = choose(&nodes, &tenants, 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.yields.len(), 2);
    }

    #[test]
    fn declarations_adding_up_to_more_than_the_gpu_still_make_room() {
        // 3 + 6 GiB declared on an 8 GiB GPU; 6 needed: freeing the 6 leaves 5, so both go.
        let nodes = [node("n0", Some(8))];
        let tenants = [tenant(&[("n0", 1)], Some(3), 1), tenant(&[("n0", 1)], Some(6), 1)];
        let c = choose(&nodes, &tenants, 6 * GIB, CoTenantPolicy::Minimal).unwrap();
        assert_eq!((c.cost, c.yields.len()), (2, 2));
    }

    #[test]
    fn too_small_and_unknown_nodes() {
        let tenants = [tenant(&[("big", 1)], Some(2), 1)];
        // A 16 GiB node never takes a 20 GiB job.
        let nodes = [node("small", Some(16)), node("big", Some(24))];
        assert_eq!(
            choose(&nodes, &tenants, 20 * GIB, CoTenantPolicy::All).unwrap().node,
            "big"
        );
        assert_eq!(choose(&nodes[..1], &tenants, 20 * GIB, CoTenantPolicy::All), None);
        // Unknown memory: a candidate under All only, and after a known node of equal cost.
        let nodes = [node("unknown", None), node("known", Some(24))];
        let empty: [Tenant; 0] = [];
        assert_eq!(
            choose(&nodes, &empty, 20 * GIB, CoTenantPolicy::All).unwrap().node,
            "known"
        );
        assert_eq!(
            choose(&nodes[..1], &empty, 20 * GIB, CoTenantPolicy::All).unwrap().node,
            "unknown"
        );
        assert_eq!(choose(&nodes[..1], &empty, 20 * GIB, CoTenantPolicy::Minimal), None);
    }

    #[test]
    fn ties_go_to_the_shorter_restore_then_more_free_memory_then_the_name() {
        let mut slow = tenant(&[("a", 1)], Some(4), 1);
        slow.restore_seconds = 300;
        let fast = tenant(&[("b", 1)], Some(4), 1);
        let nodes = [node("a", Some(24)), node("b", Some(24))];
        let c = choose(&nodes, &[slow, fast.clone()], 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.node, "b");
        // Same cost and restore: the node with more memory left.
        let nodes = [node("a", Some(24)), node("b", Some(48))];
        let other = tenant(&[("a", 1)], Some(4), 1);
        let c = choose(&nodes, &[other.clone(), fast.clone()], 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.node, "b");
        // Everything equal: the name.
        let nodes = [node("b", Some(24)), node("a", Some(24))];
        let c = choose(&nodes, &[other, fast], 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.node, "a");
    }

    #[test]
    fn a_whole_yield_costs_every_replica() {
        let nodes = [node("a", Some(24)), node("b", Some(24))];
        // 3 replicas, one on a; removing it alone is unsafe: all 3 go (cost 3). 2 on b, fine (2).
        let mut sts = tenant(&[("a", 1), ("c", 2)], Some(2), 1);
        sts.whole_on.insert("a".into(), "not the highest ordinals".into());
        let other = tenant(&[("b", 2)], Some(2), 1);
        let c = choose(&nodes, &[sts.clone(), other], 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!((c.node.as_str(), c.cost), ("b", 2));
        let c = choose(&nodes[..1], &[sts], 20 * GIB, CoTenantPolicy::All).unwrap();
        assert_eq!(c.yields[0].removed, 3);
        assert!(c.yields[0].whole.is_some());
    }

    #[test]
    fn statefulset_ordinals() {
        assert!(highest_ordinals(3, &[2]));
        assert!(highest_ordinals(3, &[1, 2]));
        assert!(!highest_ordinals(3, &[0]));
        assert!(!highest_ordinals(3, &[0, 2]));
        assert!(highest_ordinals(3, &[]));
    }

    /// Brute force over every node and every subset of its co-tenants.
    fn brute(nodes: &[GpuNode], tenants: &[Tenant], need: u64, policy: CoTenantPolicy) -> Option<u64> {
        nodes
            .iter()
            .filter_map(|n| {
                let present: Vec<usize> = (0..tenants.len())
                    .filter(|&i| tenants[i].pods_on.get(&n.name).copied().unwrap_or(0) > 0)
                    .collect();
                let total = n.gpu_memory_bytes;
                if total.is_some_and(|t| t < need) || (total.is_none() && policy == CoTenantPolicy::Minimal) {
                    return None;
                }
                let mem = |i: usize| {
                    tenants[i]
                        .memory_per_pod
                        .map(|m| m * u64::from(tenants[i].pods_on[&n.name]))
                };
                let cost = |i: usize| u64::from(tenants[i].pods_on[&n.name]) * u64::from(tenants[i].yield_priority);
                if policy == CoTenantPolicy::All {
                    return Some(present.iter().map(|&i| cost(i)).sum());
                }
                let total = total.unwrap_or(0);
                (0u32..(1 << present.len()))
                    .filter_map(|mask| {
                        let yields = |k: usize| mask & (1 << k) != 0;
                        let mut staying = 0u64;
                        let mut c = 0u64;
                        for (k, &i) in present.iter().enumerate() {
                            match (yields(k), mem(i)) {
                                (true, _) => c += cost(i),
                                (false, None) => return None,
                                (false, Some(m)) => staying += m,
                            }
                        }
                        (total.saturating_sub(staying) >= need).then_some(c)
                    })
                    .min()
            })
            .min()
    }

    fn arb_scene() -> impl Strategy<Value = (Vec<GpuNode>, Vec<Tenant>, u64)> {
        let nodes = prop::collection::vec(prop::option::weighted(0.9, 8u64..48), 1..4);
        let tenants = prop::collection::vec(
            (
                prop::collection::vec(0u32..3, 3),
                prop::option::weighted(0.85, 1u64..12),
                1u32..4,
            ),
            0..5,
        );
        (nodes, tenants, 4u64..30).prop_map(|(nodes, tenants, need)| {
            let names = ["n0", "n1", "n2"];
            let nodes: Vec<GpuNode> = nodes
                .into_iter()
                .enumerate()
                .map(|(i, gib)| GpuNode {
                    name: names[i].into(),
                    gpu_memory_bytes: gib.map(|g| g * GIB),
                })
                .collect();
            let tenants = tenants
                .into_iter()
                .map(|(counts, gib, priority)| {
                    let pods: Vec<(&str, u32)> = names.iter().copied().zip(counts).collect();
                    tenant(&pods, gib, priority)
                })
                .collect();
            (nodes, tenants, need * GIB)
        })
    }

    proptest! {
        #[test]
        fn the_cheapest_node_is_chosen((nodes, tenants, need) in arb_scene(), minimal in any::<bool>()) {
            let policy = if minimal { CoTenantPolicy::Minimal } else { CoTenantPolicy::All };
            let got = choose(&nodes, &tenants, need, policy);
            prop_assert_eq!(got.as_ref().map(|c| c.cost), brute(&nodes, &tenants, need, policy));
            if let Some(c) = got {
                let n = nodes.iter().find(|n| n.name == c.node).unwrap();
                // The yields are pods on that node, and they make room where memory is known.
                for y in &c.yields {
                    prop_assert!(tenants[y.tenant].pods_on.get(&c.node).copied().unwrap_or(0) > 0);
                }
                if let (Some(total), Some(free)) = (n.gpu_memory_bytes, c.free_after_bytes) {
                    prop_assert!(free <= total);
                    prop_assert!(free >= need);
                }
                // A node with nothing to yield and room enough is taken whenever one exists.
                let free_node = nodes.iter().any(|n| n.gpu_memory_bytes.is_some_and(|t| t >= need)
                    && !tenants.iter().any(|t| t.pods_on.get(&n.name).copied().unwrap_or(0) > 0));
                if free_node {
                    prop_assert_eq!(c.cost, 0);
                    prop_assert!(c.yields.is_empty());
                }
            }
        }
    }
}
