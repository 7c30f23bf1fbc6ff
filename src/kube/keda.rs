//! KEDA: a Deployment targeted by a ScaledObject (`keda.sh/v1alpha1`) yields through KEDA, not
//! behind its back. Holding it writes, in one patch on the ScaledObject,
//! `autoscaling.keda.sh/paused-replicas: "0"` (KEDA scales the target to 0 and stops scaling it)
//! together with the holder marks and what undoes it; the restore removes the pause (or puts back
//! a pause that was there before) and the marks, and KEDA scales the target again. Only when the
//! API server serves `keda.sh/v1alpha1` scaledobjects (API discovery at start-up); otherwise
//! nothing here runs.
use kube::CustomResource;
use kube::Resource;
use kube::ResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::{HELD_BY, ORIGINAL_REPLICAS, WorkloadKind};
use crate::plan::{Action, CoTenantId};

use super::observe::{Stores, namespace_key};

/// KEDA's pause annotation: the target is scaled to this many replicas and autoscaling stops.
pub const PAUSED_REPLICAS: &str = "autoscaling.keda.sh/paused-replicas";
/// On a ScaledObject held by a job: the `paused-replicas` value it had before (restored after).
pub const PAUSED_BEFORE: &str = "vidi.dev/keda-paused-before";

/// The part of a KEDA ScaledObject the operator reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "keda.sh", version = "v1alpha1", kind = "ScaledObject", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct ScaledObjectSpec {
    pub scale_target_ref: ScaleTargetRef,
}

/// What a ScaledObject scales.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    pub name: String,
    /// Default `Deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// Whether the API server serves KEDA's ScaledObjects.
pub async fn served(client: &kube::Client) -> bool {
    match client.list_api_group_resources("keda.sh/v1alpha1").await {
        Ok(list) => list.resources.iter().any(|r| r.name == "scaledobjects"),
        Err(e) => {
            tracing::debug!(error = %e, "KEDA's API (keda.sh/v1alpha1) is not served; no KEDA handling");
            false
        }
    }
}

/// ScaledObjects are indexed by namespace.
pub fn keys(so: &ScaledObject) -> Vec<String> {
    vec![namespace_key(&so.namespace().unwrap_or_default())]
}

/// The ScaledObject that scales this workload, when KEDA is served and one does.
pub fn for_workload(stores: &Stores, target: &CoTenantId) -> Option<std::sync::Arc<ScaledObject>> {
    if target.kind != WorkloadKind::Deployment {
        return None;
    }
    let cache = stores.scaled_objects.as_ref()?;
    cache.indexed(&namespace_key(&target.namespace)).into_iter().find(|so| {
        let t = &so.spec.scale_target_ref;
        t.name == target.name && t.kind.as_deref().is_none_or(|k| k == "Deployment")
    })
}

/// The merge patch on `so` that carries out `action` on the Deployment it scales (`None` for
/// actions that are not co-tenant writes). Guarded by the ScaledObject's resourceVersion, which
/// is the co-tenant's revision in the snapshot.
pub fn patch(so: &ScaledObject, action: &Action, now: jiff::Timestamp) -> Option<Value> {
    let annotations = so.annotations();
    let held_since = super::act::HELD_SINCE;
    let (revision, marks) = match action {
        Action::Hold {
            holders,
            original_replicas,
            revision,
            ..
        } => {
            let mut marks = json!({
                HELD_BY: holders.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(","),
                ORIGINAL_REPLICAS: original_replicas.to_string(),
                PAUSED_REPLICAS: "0",
            });
            if holders.len() == 1 {
                marks[held_since] = json!(now.to_string());
                // A pause someone else set is put back by the restore.
                if let Some(before) = annotations.get(PAUSED_REPLICAS)
                    && !annotations.contains_key(HELD_BY)
                {
                    marks[PAUSED_BEFORE] = json!(before);
                }
            }
            (revision, marks)
        }
        Action::Resuspend { revision, .. } => (revision, json!({PAUSED_REPLICAS: "0"})),
        Action::Release { holders, revision, .. } => (
            revision,
            json!({HELD_BY: holders.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")}),
        ),
        Action::Restore { revision, .. } => (
            revision,
            json!({
                HELD_BY: null, ORIGINAL_REPLICAS: null, held_since: null, PAUSED_BEFORE: null,
                PAUSED_REPLICAS: annotations.get(PAUSED_BEFORE),
            }),
        ),
        _ => return None,
    };
    let mut meta = json!({"annotations": marks});
    if let Some(rv) = revision {
        meta["resourceVersion"] = json!(rv);
    }
    Some(json!({"metadata": meta}))
}

/// Applies a co-tenant write through KEDA.
pub async fn apply(client: &kube::Client, so: &ScaledObject, patch: &Value) -> Result<(), super::Error> {
    let ns = so.namespace().unwrap_or_default();
    let api: kube::Api<ScaledObject> = kube::Api::namespaced(client.clone(), &ns);
    let params = kube::api::PatchParams {
        field_manager: Some(super::observe::MANAGER.into()),
        ..Default::default()
    };
    api.patch(&so.name_any(), &params, &kube::api::Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|source| super::Error::Write {
            what: format!("ScaledObject {ns}/{}", so.name_any()),
            source,
        })
}

/// The ScaledObject's identity for messages.
pub fn describe(so: &ScaledObject) -> String {
    format!("ScaledObject {}/{}", so.namespace().unwrap_or_default(), so.name_any())
}

/// Reads a KEDA-scaled co-tenant from its ScaledObject: the holder marks live there, the
/// revision that guards the next write is the ScaledObject's, and while a job holds it paused at
/// 0 its desired replicas are 0 (KEDA scales the Deployment down and keeps it there; its pods
/// still count until they are gone). Without the pause (someone removed it) the Deployment's own
/// count shows, so the planner sees the fight and pauses it again.
pub fn overlay(stores: &Stores, co_tenants: &mut [crate::plan::CoTenant]) {
    for c in co_tenants.iter_mut() {
        let Some(so) = for_workload(stores, &c.id) else {
            continue;
        };
        let meta = so.meta();
        c.holders = super::observe::holders(meta);
        c.original_replicas = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(ORIGINAL_REPLICAS))
            .and_then(|v| v.trim().parse().ok());
        c.revision = meta.resource_version.clone();
        let paused_at_zero = so.annotations().get(PAUSED_REPLICAS).is_some_and(|v| v.trim() == "0");
        if !c.holders.is_empty() && paused_at_zero {
            c.replicas = 0;
        }
    }
}
