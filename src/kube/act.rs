//! Applies the planner's actions to the cluster, in order. Each co-tenant write is one merge patch
//! carrying the observed resourceVersion, so a stale view fails with 409 and is planned again.
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::{Value, json};

use crate::api::{
    DELETION_COST_BEFORE, HELD_BY, HOLD_NODE, MARKED_BY, MARKED_PODS, ORIGINAL_REPLICAS, POD_DELETION_COST, RELEASED,
    REMOVED_REPLICAS, ReleaseHook, ReleaseMark, ReleaseState, VidiJob, WorkloadKind, YIELD_DELETION_COST,
};
use crate::plan::{Action, CoTenantId, JobKey, Notice, Severity, Subject};
use crate::release::{self, Call};

use super::Error;
use super::observe::MANAGER;
use super::pod::{self, PodDefaults};
use super::seen::{Writes, Wrote};
use super::write;

/// What the actions need besides the job.
pub struct Actor<'a> {
    pub client: &'a Client,
    pub stores: &'a super::observe::Stores,
    pub recorder: Recorder,
    pub defaults: &'a PodDefaults,
    pub metrics: &'a crate::telemetry::Metrics,
    /// What this reconcile wrote, for the wait until the caches show it.
    pub writes: &'a Writes,
}

fn holder_list(holders: &[JobKey]) -> String {
    holders.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(",")
}

/// When the co-tenant's current hold began (RFC 3339), written with the first holder and removed
/// with the marks: `co_tenant_suspended_seconds` measures each co-tenant's own hold.
pub const HELD_SINCE: &str = "vidi.dev/held-since";

/// The merge patch for one co-tenant write.
pub fn co_tenant_patch(action: &Action, now: Timestamp) -> Option<(&CoTenantId, Value)> {
    let with_version = |revision: &Option<String>, mut meta: Value| {
        if let Some(rv) = revision {
            meta["resourceVersion"] = json!(rv);
        }
        meta
    };
    Some(match action {
        Action::Hold {
            target,
            holders,
            original_replicas,
            revision,
        } => {
            let mut annotations = json!({
                HELD_BY: holder_list(holders),
                ORIGINAL_REPLICAS: original_replicas.to_string(),
            });
            // One holder: this write starts the hold (joining a hold keeps its start).
            if holders.len() == 1 {
                annotations[HELD_SINCE] = json!(now.to_string());
            }
            (
                target,
                json!({
                    "metadata": with_version(revision, json!({"annotations": annotations})),
                    "spec": {"replicas": 0},
                }),
            )
        }
        Action::HoldOnNode {
            target,
            holders,
            original_replicas,
            replicas,
            node,
            marked_pods,
            revision,
        } => {
            let mut annotations = json!({
                HELD_BY: holder_list(holders),
                ORIGINAL_REPLICAS: original_replicas.to_string(),
                HOLD_NODE: node,
                REMOVED_REPLICAS: (original_replicas - replicas).to_string(),
                MARKED_PODS: marked_pods.join(","),
            });
            if holders.len() == 1 {
                annotations[HELD_SINCE] = json!(now.to_string());
            }
            (
                target,
                json!({
                    "metadata": with_version(revision, json!({"annotations": annotations})),
                    "spec": {"replicas": replicas},
                }),
            )
        }
        Action::Resuspend { target, revision } => (
            target,
            json!({"metadata": with_version(revision, json!({})), "spec": {"replicas": 0}}),
        ),
        Action::Release {
            target,
            holders,
            revision,
        } => (
            target,
            json!({"metadata": with_version(revision, json!({"annotations": {HELD_BY: holder_list(holders)}}))}),
        ),
        Action::Restore {
            target,
            replicas,
            revision,
        } => (
            target,
            json!({
                "metadata": with_version(revision, json!({"annotations": {HELD_BY: null, ORIGINAL_REPLICAS: null, HELD_SINCE: null, RELEASED: null, HOLD_NODE: null, REMOVED_REPLICAS: null, MARKED_PODS: null}})),
                "spec": {"replicas": replicas},
            }),
        ),
        Action::HoldInPlace {
            target,
            holders,
            original_replicas,
            mark,
            revision,
        } => {
            let mut annotations = json!({
                HELD_BY: holder_list(holders),
                ORIGINAL_REPLICAS: original_replicas.to_string(),
                RELEASED: serde_json::to_string(mark).unwrap_or_default(),
            });
            if holders.len() == 1 {
                annotations[HELD_SINCE] = json!(now.to_string());
            }
            (
                target,
                json!({"metadata": with_version(revision, json!({"annotations": annotations}))}),
            )
        }
        Action::FallBack { target, revision } => (
            target,
            json!({
                "metadata": with_version(revision, json!({"annotations": {RELEASED: null}})),
                "spec": {"replicas": 0},
            }),
        ),
        // Only once the resume call answered 2xx (see `Actor::resume`).
        Action::Resume {
            target,
            replicas,
            revision,
            ..
        } => (
            target,
            json!({
                "metadata": with_version(revision, json!({"annotations": {HELD_BY: null, ORIGINAL_REPLICAS: null, HELD_SINCE: null, RELEASED: null, HOLD_NODE: null, REMOVED_REPLICAS: null, MARKED_PODS: null}})),
                "spec": {"replicas": replicas},
            }),
        ),
        _ => return None,
    })
}

pub(super) async fn patch_workload(client: &Client, target: &CoTenantId, patch: Value) -> Result<(), Error> {
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let merge = Patch::Merge(&patch);
    let (ns, name) = (&target.namespace, &target.name);
    let result = match target.kind {
        WorkloadKind::Deployment => write::patch::<Deployment, _>(client, ns, name, &params, &merge).await,
        WorkloadKind::StatefulSet => write::patch::<StatefulSet, _>(client, ns, name, &params, &merge).await,
        WorkloadKind::Container | WorkloadKind::Command => return Err(Error::Unsupported(target.to_string())),
    };
    result.map_err(|source| match source {
        kube::Error::Api(e) if e.code == 409 => Error::Conflict {
            what: target.to_string(),
        },
        source => Error::Write {
            what: target.to_string(),
            source,
        },
    })
}

/// The resume call of an in-place hold, when there is one to make; an error keeps the marks
/// (the reconcile, or the sweep, tries again).
pub(super) async fn resume_call(target: &CoTenantId, hook: &ReleaseHook, call: bool) -> Result<(), Error> {
    if !call {
        return Ok(());
    }
    release::call(hook, Call::Resume)
        .await
        .map(|_| ())
        .map_err(|e| Error::Hook {
            what: format!("resuming {target}"),
            source: e,
        })
}

/// Gives these pods of `target` the low pod-deletion-cost and `holder`'s mark. The same write
/// records the cost a pod had before (`vidi.dev/deletion-cost-before`), so that removing the mark
/// puts the owner's cost back. A pod already marked keeps the record of its first mark. Each pod
/// is read from the watch cache the plan came from; the patch is guarded by that copy's version,
/// so a cost its owner set since is a conflict (planned again), never overwritten unrecorded.
async fn mark_pods(
    client: &Client,
    stores: &super::observe::Stores,
    target: &CoTenantId,
    pods: &[String],
    holder: &JobKey,
) -> Result<(), Error> {
    for name in pods {
        // Not cached: gone already (a marked pod is meant to go).
        let Some(pod) = stores.pods.get(&ObjectRef::new(name).within(&target.namespace)) else {
            continue;
        };
        let before = pod.annotations();
        let mut marks = serde_json::Map::new();
        marks.insert(POD_DELETION_COST.into(), YIELD_DELETION_COST.to_string().into());
        marks.insert(MARKED_BY.into(), holder.to_string().into());
        if !before.contains_key(MARKED_BY)
            && let Some(cost) = before.get(POD_DELETION_COST)
        {
            marks.insert(DELETION_COST_BEFORE.into(), cost.clone().into());
        }
        patch_pod(client, target, &pod, Value::Object(marks)).await?;
    }
    Ok(())
}

/// Removes the mark from these pods of `target` (in its namespace) and puts back the
/// pod-deletion-cost each had before it (none, if it had none). A pod that is gone or carries no
/// mark is left alone. Each pod is read from the API, not the cache: the mark being undone may
/// have been written a moment ago, and a cache that lags it would leave it behind.
pub(super) async fn unmark_pods(client: &Client, target: &CoTenantId, pods: &[String]) -> Result<(), Error> {
    for name in pods {
        let Some(pod) = read_pod(client, target, name).await? else {
            continue;
        };
        let marks = pod.annotations();
        if !marks.contains_key(MARKED_BY) {
            continue;
        }
        let cost = marks
            .get(DELETION_COST_BEFORE)
            .map_or(Value::Null, |c| c.clone().into());
        let annotations = json!({POD_DELETION_COST: cost, MARKED_BY: null, DELETION_COST_BEFORE: null});
        patch_pod(client, target, &pod, annotations).await?;
    }
    Ok(())
}

/// A co-tenant pod as the API has it now; None once it is gone (a marked pod is meant to go).
async fn read_pod(client: &Client, target: &CoTenantId, name: &str) -> Result<Option<Pod>, Error> {
    Api::<Pod>::namespaced(client.clone(), &target.namespace)
        .get_opt(name)
        .await
        .map_err(|source| Error::Read {
            what: format!("pod {}/{name}", target.namespace),
            source,
        })
}

/// Merge-patches `annotations` onto `pod`, guarded by the version it was read at: a pod changed
/// since (its owner set another cost) is a conflict, and the next plan reads it again.
async fn patch_pod(client: &Client, target: &CoTenantId, pod: &Pod, annotations: Value) -> Result<(), Error> {
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    let name = pod.name_any();
    let patch = json!({"metadata": {"annotations": annotations, "resourceVersion": pod.resource_version()}});
    let what = format!("pod {}/{name}", target.namespace);
    match write::patch::<Pod, _>(client, &target.namespace, &name, &params, &Patch::Merge(&patch)).await {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(Error::Conflict { what }),
        Err(source) => Err(Error::Write { what, source }),
    }
}

impl Actor<'_> {
    /// The release call of a co-tenant held in place, then its answer recorded in the mark:
    /// `Released` or `Refused`. Reads the workload afresh: the mark must still say `Requested`
    /// (else another reconcile already called), and the answer's write carries the read's
    /// resourceVersion.
    async fn call_release(&self, target: &CoTenantId, hook: &ReleaseHook) -> Result<(), Error> {
        let meta = match target.kind {
            WorkloadKind::Deployment => Api::<Deployment>::namespaced(self.client.clone(), &target.namespace)
                .get(&target.name)
                .await
                .map(|d| d.metadata),
            WorkloadKind::StatefulSet => Api::<StatefulSet>::namespaced(self.client.clone(), &target.namespace)
                .get(&target.name)
                .await
                .map(|s| s.metadata),
            WorkloadKind::Container | WorkloadKind::Command => return Err(Error::Unsupported(target.to_string())),
        }
        .map_err(|source| Error::Read {
            what: target.to_string(),
            source,
        })?;
        let Some(mut mark) = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(RELEASED))
            .and_then(|m| serde_json::from_str::<ReleaseMark>(m).ok())
            .filter(|m| m.state == ReleaseState::Requested)
        else {
            return Ok(());
        };
        mark.state = match release::call(hook, Call::Release).await {
            Ok(_) => ReleaseState::Released,
            Err(e) => {
                tracing::warn!(co_tenant = %target, error = %e, "in-place release failed; it will be scaled down");
                ReleaseState::Refused { why: e.to_string() }
            }
        };
        let mut metadata = json!({"annotations": {RELEASED: serde_json::to_string(&mark).unwrap_or_default()}});
        if let Some(rv) = &meta.resource_version {
            metadata["resourceVersion"] = json!(rv);
        }
        patch_workload(self.client, target, json!({ "metadata": metadata })).await
    }

    /// When the co-tenant's current hold began, from its cached `vidi.dev/held-since` mark (on
    /// the ScaledObject, for a Deployment KEDA scales).
    fn held_since(&self, target: &CoTenantId) -> Option<Timestamp> {
        super::keda::for_workload(self.stores, target)
            .and_then(|so| super::gauges::held_since(&so.metadata))
            .or_else(|| self.stores.workload_meta(target, super::gauges::held_since))
    }

    /// The version a co-tenant write lands on: the one it is guarded by, else the cached one.
    fn version_before(&self, target: &CoTenantId, patch: &Value) -> Option<String> {
        if let Some(rv) = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            return Some(rv.to_string());
        }
        self.stores.workload_meta(target, |m| m.resource_version.clone())
    }

    /// Applies `actions` for `job` in order; stops at the first failure.
    pub async fn apply(&self, job: &VidiJob, actions: &[Action], now: Timestamp) -> Result<(), Error> {
        let ns = job.namespace().unwrap_or_default();
        for action in actions {
            match action {
                Action::CallRelease { target, hook } => self.call_release(target, hook).await?,
                Action::Resume { target, hook, call, .. } => {
                    resume_call(target, hook, *call).await?;
                    if let Some((target, patch)) = co_tenant_patch(action, now) {
                        let held_since = self.held_since(target);
                        let before = self.version_before(target, &patch);
                        patch_workload(self.client, target, patch).await?;
                        self.writes.push(Wrote::Workload {
                            target: target.clone(),
                            before,
                        });
                        self.metrics.count_co_tenant_write(action, held_since, now);
                    }
                }
                Action::MarkPods { target, pods, holder } => {
                    mark_pods(self.client, self.stores, target, pods, holder).await?
                }
                Action::UnmarkPods { target, pods } => unmark_pods(self.client, target, pods).await?,
                Action::Hold { .. }
                | Action::HoldInPlace { .. }
                | Action::FallBack { .. }
                | Action::HoldOnNode { .. }
                | Action::Resuspend { .. }
                | Action::Release { .. }
                | Action::Restore { .. } => {
                    if let Some((target, patch)) = co_tenant_patch(action, now) {
                        let held_since = self.held_since(target);
                        // A KEDA-scaled Deployment is paused and resumed through its ScaledObject.
                        match super::keda::for_workload(self.stores, target)
                            .and_then(|so| super::keda::patch(&so, action, now).map(|p| (so, p)))
                        {
                            Some((so, patch)) => super::keda::apply(self.client, &so, &patch).await?,
                            None => {
                                let before = self.version_before(target, &patch);
                                patch_workload(self.client, target, patch).await?;
                                self.writes.push(Wrote::Workload {
                                    target: target.clone(),
                                    before,
                                });
                            }
                        }
                        self.metrics.count_co_tenant_write(action, held_since, now);
                    }
                }
                Action::StartAttempt {
                    attempt,
                    name,
                    precision,
                    min_free_bytes,
                    release_wait,
                } => {
                    let left = deadline_left(job, now);
                    let gate = pod::Gate::new(self.defaults, *min_free_bytes, *release_wait);
                    let mut pod = pod::build(job, self.defaults, name, *attempt, *precision, gate, left);
                    // The node chosen when the job left the queue (recorded in the status before
                    // any attempt is created).
                    if let Some(choice) = job.status.as_ref().and_then(|s| s.node_choice.as_ref()) {
                        pod::pin(&mut pod, &choice.node);
                    }
                    let params = PostParams {
                        field_manager: Some(MANAGER.into()),
                        ..Default::default()
                    };
                    match write::create(self.client, &ns, &params, &pod).await {
                        Ok(_) => self.writes.push(Wrote::PodCreated {
                            pod: ObjectRef::new(name).within(&ns),
                        }),
                        Err(kube::Error::Api(e)) if e.code == 409 => {}
                        Err(source) => {
                            return Err(Error::Write {
                                what: format!("pod {ns}/{name}"),
                                source,
                            });
                        }
                    }
                }
                Action::StopAttempt { name, .. } => {
                    let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                    match pods.delete(name, &DeleteParams::default()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(source) => {
                            return Err(Error::Write {
                                what: format!("pod {ns}/{name}"),
                                source,
                            });
                        }
                    }
                }
                Action::Notify(notice) => {
                    let event = event(job, notice);
                    // An Event that cannot be published must not stop a restore.
                    if let Err(e) = self.recorder.publish(&event, &job.object_ref(&())).await {
                        tracing::warn!(error = %e, reason = %notice.reason, "could not publish event");
                    }
                    tracing::info!(reason = %notice.reason, "{}", notice.message);
                }
                Action::DeleteJob => {
                    let jobs: Api<VidiJob> = Api::namespaced(self.client.clone(), &ns);
                    match jobs.delete(&job.name_any(), &DeleteParams::background()).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(source) => {
                            return Err(Error::Write {
                                what: format!("VidiJob {ns}/{}", job.name_any()),
                                source,
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The Event for a notice. kube-runtime's Recorder folds Events with the same type, reason,
/// action, regarding and related object into one series (keeping the first note), so each
/// co-tenant and each attempt is the `related` object of its own Events.
pub fn event(job: &VidiJob, notice: &Notice) -> Event {
    let ns = job.namespace().unwrap_or_default();
    let secondary = notice.subject.as_ref().map(|subject| match subject {
        Subject::CoTenant(id) => ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(id.kind.to_string()),
            namespace: Some(id.namespace.clone()),
            name: Some(id.name.clone()),
            ..Default::default()
        },
        Subject::Attempt(number) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(ns.clone()),
            name: Some(crate::plan::names::attempt(&job.name_any(), *number)),
            ..Default::default()
        },
    });
    let action = match notice.reason.as_str() {
        "Suspended" | "YieldingWhole" => "Suspend",
        "NodeChosen" => "ChooseNode",
        "CoTenantFought" => "Resuspend",
        "Released" => "Release",
        "Restored" | "OriginalReplicasLost" => "Restore",
        "Retrying" | "PrecisionLowered" => "Retry",
        other => other,
    };
    Event {
        type_: match notice.severity {
            Severity::Normal => EventType::Normal,
            Severity::Warning => EventType::Warning,
        },
        reason: notice.reason.clone(),
        note: Some(truncate(&notice.message, 1000)),
        action: action.into(),
        secondary,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Seconds left of the job's activeDeadlineSeconds, counted from status.startTime.
fn deadline_left(job: &VidiJob, now: Timestamp) -> Option<i64> {
    let limit = job.spec.active_deadline_seconds?;
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    Some(limit - (now.as_second() - start.as_second()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> CoTenantId {
        CoTenantId {
            kind: WorkloadKind::Deployment,
            namespace: "media".into(),
            name: "cosyvoice".into(),
        }
    }

    fn hold(holders: &[&str]) -> Action {
        Action::Hold {
            target: id(),
            holders: holders.iter().map(|h| JobKey::new("media", *h)).collect(),
            original_replicas: 2,
            revision: Some("7".into()),
        }
    }

    #[test]
    fn the_first_holder_starts_the_hold_clock_and_a_restore_stops_it() {
        let now: Timestamp = "2026-11-30T14:00:00Z".parse().unwrap();
        let (_, first) = co_tenant_patch(&hold(&["a"]), now).unwrap();
        assert_eq!(first["metadata"]["annotations"][HELD_SINCE], "2026-11-30T14:00:00Z");
        assert_eq!(first["metadata"]["resourceVersion"], "7");
        let (_, joined) = co_tenant_patch(&hold(&["a", "b"]), now).unwrap();
        assert!(joined["metadata"]["annotations"].get(HELD_SINCE).is_none(), "{joined}");
        let restore = Action::Restore {
            target: id(),
            replicas: 2,
            revision: None,
        };
        let (_, restored) = co_tenant_patch(&restore, now).unwrap();
        assert!(restored["metadata"]["annotations"][HELD_SINCE].is_null());
        assert!(
            restored["metadata"]["annotations"].get(HELD_SINCE).is_some(),
            "removed explicitly"
        );
    }

    #[test]
    fn suspended_seconds_is_the_co_tenants_own_hold() {
        let metrics = crate::telemetry::Metrics::default();
        let since: Timestamp = "2026-11-30T14:00:00Z".parse().unwrap();
        let now: Timestamp = "2026-11-30T14:01:30Z".parse().unwrap();
        let restore = Action::Restore {
            target: id(),
            replicas: 2,
            revision: None,
        };
        metrics.count_co_tenant_write(&restore, Some(since), now);
        let text = metrics.encode();
        assert!(
            text.contains("vidi_operator_co_tenant_suspended_seconds_sum 90.0"),
            "{text}"
        );
    }
}
