//! Observes where things run for node choice: the GPU pool's nodes with their GPU memory, the
//! co-tenants' pods per node, the node holds recorded on co-tenants, and which co-tenants an
//! autoscaler manages. Reads the watch caches only.
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};

use crate::api::{
    GFD_MEMORY_LABEL, HOLD_NODE, MARKED_BY, MARKED_PODS, REMOVED_REPLICAS, VidiJob, WorkloadKind, parse_quantity_bytes,
};
use crate::plan::placement::{Autoscaled, CoTenantPod, GpuNode, NodeHold, Placement};
use crate::plan::{CoTenant, CoTenantId, JobKey};

use super::observe::{Stores, Workload, candidates, namespace_key, pod_phase};

const MIB: u64 = 1 << 20;

/// Index key: nodes offering this extended resource (e.g. `nvidia.com/gpu`).
pub fn offers_key(resource: &str) -> String {
    format!("offers:{resource}")
}

/// Nodes are indexed by the extended resources they offer, so a job looks only at its pool's
/// GPU nodes, never at every node of the cluster.
pub fn node_keys(node: &Node) -> Vec<String> {
    let status = node.status.as_ref();
    let mut keys: Vec<String> = [
        status.and_then(|s| s.allocatable.as_ref()),
        status.and_then(|s| s.capacity.as_ref()),
    ]
    .into_iter()
    .flatten()
    .flat_map(|m| m.iter())
    .filter(|(name, q)| name.contains('/') && crate::api::parse_quantity(q).is_some_and(|v| v > 0.0))
    .map(|(name, _)| offers_key(name))
    .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The placement for `job`: empty when no node of its pool is known.
pub(super) fn observe(job: &VidiJob, stores: &Stores, all: &[Workload<'_>], co_tenants: &[CoTenant]) -> Placement {
    let nodes = pool_nodes(job, &stores.nodes.indexed(&offers_key(&job.spec.gpu.resource_name)));
    if nodes.is_empty() {
        return Placement::default();
    }
    let mut placement = Placement {
        nodes,
        ..Default::default()
    };
    for w in all {
        let id = CoTenantId {
            kind: w.kind,
            namespace: w.meta.namespace.clone().unwrap_or_default(),
            name: w.meta.name.clone().unwrap_or_default(),
        };
        if !co_tenants.iter().any(|c| c.id == id) {
            continue;
        }
        placement.pods.extend(pods_of(w, &id, stores));
        if let Some(hold) = node_hold(w, &id) {
            placement.node_holds.push(hold);
        }
        let keda = super::keda::for_workload(stores, &id).map(|so| super::keda::describe(&so));
        if let Some(by) = keda.or_else(|| autoscaler_of(w, &id, stores)) {
            placement.autoscaled.push(Autoscaled { co_tenant: id, by });
        }
    }
    placement
}

/// The nodes of the job's GPU pool: schedulable, matching `spec.gpu.nodeSelector`, offering
/// `spec.gpu.resourceName`.
fn pool_nodes(job: &VidiJob, nodes: &[std::sync::Arc<Node>]) -> Vec<GpuNode> {
    let gpu = &job.spec.gpu;
    let declared = gpu.memory.as_ref().and_then(parse_quantity_bytes);
    let mut pool: Vec<GpuNode> = nodes
        .iter()
        .filter(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
        .filter(|n| {
            let labels = n.labels();
            gpu.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .filter(|n| {
            let status = n.status.as_ref();
            let offered = |m: Option<
                &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >| {
                m.and_then(|m| m.get(&gpu.resource_name))
                    .and_then(crate::api::parse_quantity)
                    .is_some_and(|v| v > 0.0)
            };
            offered(status.and_then(|s| s.allocatable.as_ref())) || offered(status.and_then(|s| s.capacity.as_ref()))
        })
        .map(|n| GpuNode {
            name: n.name_any(),
            gpu_memory_bytes: declared.or_else(|| {
                n.labels()
                    .get(GFD_MEMORY_LABEL)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|mib| mib.saturating_mul(MIB))
            }),
        })
        .collect();
    pool.sort_by(|a, b| a.name.cmp(&b.name));
    pool
}

/// The live pods of one workload that run on a node.
fn pods_of(w: &Workload<'_>, id: &CoTenantId, stores: &Stores) -> Vec<CoTenantPod> {
    let Some(selector) = w.pod_selector else {
        return Vec::new();
    };
    let Some(parsed) = Selector::try_from(selector.clone()).ok().filter(|s| !s.selects_all()) else {
        return Vec::new();
    };
    let memory = crate::api::selection::declared_gpu_memory(w.meta.annotations.as_ref(), w.meta.labels.as_ref(), 1);
    let restore = crate::api::selection::restore_seconds(w.meta.annotations.as_ref(), w.meta.labels.as_ref());
    candidates(&stores.pods, &id.namespace, Some(selector))
        .iter()
        .filter(|p| parsed.matches(p.labels()))
        .filter(|p| !matches!(pod_phase(p), Some("Succeeded" | "Failed")))
        .filter_map(|p| {
            let node = p.spec.as_ref()?.node_name.clone()?;
            let name = p.name_any();
            Some(CoTenantPod {
                co_tenant: id.clone(),
                ordinal: (w.kind == WorkloadKind::StatefulSet)
                    .then(|| name.rsplit_once('-').and_then(|(_, o)| o.parse().ok()))
                    .flatten(),
                name,
                node,
                gpu_memory_bytes: memory,
                restore_seconds: restore,
                terminating: p.metadata.deletion_timestamp.is_some(),
                marked_by: p.annotations().get(MARKED_BY).and_then(|m| JobKey::parse(m)),
            })
        })
        .collect()
}

/// The node hold recorded on a workload, if any.
fn node_hold(w: &Workload<'_>, id: &CoTenantId) -> Option<NodeHold> {
    let a = w.meta.annotations.as_ref()?;
    Some(NodeHold {
        co_tenant: id.clone(),
        node: a.get(HOLD_NODE)?.clone(),
        removed: a.get(REMOVED_REPLICAS)?.trim().parse().ok()?,
        marked_pods: a
            .get(MARKED_PODS)
            .map(|v| v.split(',').filter(|p| !p.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    })
}

/// The HorizontalPodAutoscaler that targets a workload, as `HorizontalPodAutoscaler ns/name`.
fn autoscaler_of(w: &Workload<'_>, id: &CoTenantId, stores: &Stores) -> Option<String> {
    stores
        .autoscalers
        .indexed(&namespace_key(&id.namespace))
        .iter()
        .find(|h| {
            let t = &h.spec.scale_target_ref;
            t.kind == w.kind.to_string() && t.name == id.name
        })
        .map(|h| format!("HorizontalPodAutoscaler {}/{}", id.namespace, h.name_any()))
}
