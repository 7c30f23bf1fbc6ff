//! `kubectl vidi status [NAME]`: each job's phase, its place in its GPU pool's queue (the
//! planner's own order, `plan::queue`), and the co-tenants it holds and for how long (read from
//! the co-tenants' own `vidi.dev/held-by` and `vidi.dev/held-since` marks).
use std::collections::BTreeSet;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{ListParams, ObjectMeta};
use kube::{Api, Client, ResourceExt as _};
use serde::Serialize;

use super::{Error, Namespaces, Table, get_job, human, seconds_between};
use crate::api::{ORIGINAL_REPLICAS, Phase, VidiJob, WorkloadKind};
use crate::kube::HELD_SINCE;
use crate::kube::observe::{co_tenant_namespaces, created, holders, job_key, rival};
use crate::plan::Rival;
use crate::plan::queue::{self, Turn};

/// What `status` prints.
#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub jobs: Vec<JobStatus>,
    /// Whether the NAMESPACE column is shown (`-A`).
    #[serde(skip)]
    pub all_namespaces: bool,
}

/// One job.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub namespace: String,
    pub name: String,
    pub phase: Phase,
    /// The GPU pool it competes in (resource name and node selector).
    pub pool: String,
    /// While it waits (Pending or Queued): how many jobs of its pool go before it, the active
    /// one included; the number the operator's `Queued` message gives. 0: it goes next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// The job it waits for, when another one goes first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// Co-tenants whose `vidi.dev/held-by` names this job.
    pub holds: Vec<Hold>,
    pub attempts: u32,
    pub age_seconds: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A co-tenant a job holds suspended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hold {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    /// Replicas it goes back to once no job holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_replicas: Option<i32>,
    /// When its current hold began (the first holder's write).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_since: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<i64>,
    /// Other jobs holding it too (back-to-back jobs share holds).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<String>,
    /// The user may not list this co-tenant's kind in its namespace: the hold is the job's own
    /// record (`status.suspended`), and when it began is unknown.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unreadable: bool,
}

/// Gathers the report: one job (`name`) or every job in `namespaces`.
pub async fn status(
    client: &Client,
    namespaces: &Namespaces,
    name: Option<&str>,
    now: Timestamp,
) -> Result<StatusReport, Error> {
    let shown: Vec<VidiJob> = match (name, namespaces) {
        (Some(name), Namespaces::One(ns)) => vec![get_job(client, ns, name).await?],
        (Some(name), Namespaces::All) => {
            let all = list_jobs(client, &Namespaces::All).await?;
            let found: Vec<VidiJob> = all.into_iter().filter(|j| j.name_any() == name).collect();
            if found.is_empty() {
                return Err(Error::NotFoundAnywhere { name: name.into() });
            }
            found
        }
        (None, ns) => list_jobs(client, ns).await?,
    };
    // A pool is cluster-wide: the queue needs every job; a user who may only list their own
    // namespace gets the queue as far as they can see it.
    let everyone = match (namespaces, name) {
        (Namespaces::All, None) => shown.clone(),
        _ => match list_jobs(client, &Namespaces::All).await {
            Ok(all) => all,
            Err(Error::Api { source, .. }) if forbidden(&source) => match namespaces {
                Namespaces::One(ns) => list_jobs(client, &Namespaces::One(ns.clone())).await?,
                Namespaces::All => shown.clone(),
            },
            Err(e) => return Err(e),
        },
    };
    let seen = held_workloads(client, namespaces, &shown).await?;

    let mut jobs: Vec<JobStatus> = shown.iter().map(|job| job_status(job, &everyone, &seen, now)).collect();
    jobs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(StatusReport {
        jobs,
        all_namespaces: *namespaces == Namespaces::All,
    })
}

fn forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}

async fn list_jobs(client: &Client, namespaces: &Namespaces) -> Result<Vec<VidiJob>, Error> {
    let (api, what): (Api<VidiJob>, String) = match namespaces {
        Namespaces::One(ns) => (Api::namespaced(client.clone(), ns), format!("listing VidiJobs in {ns}")),
        Namespaces::All => (Api::all(client.clone()), "listing VidiJobs in all namespaces".into()),
    };
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| Error::Api { what, source })
}

/// A Deployment or StatefulSet carrying holder marks.
struct Workload {
    kind: WorkloadKind,
    meta: ObjectMeta,
}

/// What could be read of the co-tenants: the marked workloads, and the (kind, namespace) scopes
/// the user may not list (`None`: every namespace).
#[derive(Default)]
struct Seen {
    workloads: Vec<Workload>,
    hidden: Vec<(WorkloadKind, Option<String>)>,
}

impl Seen {
    fn hidden(&self, kind: WorkloadKind, namespace: &str) -> bool {
        self.hidden
            .iter()
            .any(|(k, ns)| *k == kind && ns.as_deref().is_none_or(|n| n == namespace))
    }
}

/// The marked workloads where the shown jobs may hold something: their co-tenant namespaces and
/// the namespaces in their `status.suspended` (every namespace with `-A`).
/// Where listing is forbidden, the scope is noted as hidden rather than failing the command.
async fn held_workloads(client: &Client, namespaces: &Namespaces, jobs: &[VidiJob]) -> Result<Seen, Error> {
    let scopes: Vec<Option<String>> = match namespaces {
        Namespaces::All => vec![None],
        Namespaces::One(_) => {
            let mut set = BTreeSet::new();
            for job in jobs {
                let own = job.namespace().unwrap_or_default();
                set.extend(co_tenant_namespaces(job));
                for s in job.status.iter().flat_map(|s| &s.suspended) {
                    set.insert(if s.namespace.is_empty() {
                        own.clone()
                    } else {
                        s.namespace.clone()
                    });
                }
            }
            set.into_iter().map(Some).collect()
        }
    };
    let mut seen = Seen::default();
    for scope in scopes {
        for (kind, found) in [
            (
                WorkloadKind::Deployment,
                marked::<Deployment>(client, scope.as_deref(), WorkloadKind::Deployment).await,
            ),
            (
                WorkloadKind::StatefulSet,
                marked::<StatefulSet>(client, scope.as_deref(), WorkloadKind::StatefulSet).await,
            ),
        ] {
            match found {
                Ok(w) => seen.workloads.extend(w),
                Err(Error::Api { source, .. }) if forbidden(&source) => seen.hidden.push((kind, scope.clone())),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(seen)
}

async fn marked<K>(client: &Client, namespace: Option<&str>, kind: WorkloadKind) -> Result<Vec<Workload>, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let list = api
        .list_metadata(&ListParams::default())
        .await
        .map_err(|source| Error::Api {
            what: format!("listing {kind}s in {}", namespace.unwrap_or("all namespaces")),
            source,
        })?;
    Ok(list
        .items
        .into_iter()
        .filter(|m| !holders(&m.metadata).is_empty())
        .map(|m| Workload { kind, meta: m.metadata })
        .collect())
}

fn job_status(job: &VidiJob, everyone: &[VidiJob], seen: &Seen, now: Timestamp) -> JobStatus {
    let key = job_key(job);
    let status = job.status.clone().unwrap_or_default();
    let pool = queue::job_pool(&job.spec, &status);
    let created = created(job);
    let waits = matches!(status.phase, Phase::Pending | Phase::Queued)
        && !job.spec.suspend
        && job.metadata.deletion_timestamp.is_none();
    let (queue_position, waiting_for) = if waits {
        let rivals: Vec<Rival> = everyone
            .iter()
            .filter(|other| job_key(other) != key)
            .filter(|other| other.status.as_ref().is_none_or(|s| !s.phase.is_terminal()))
            .filter(|other| queue::job_pool(&other.spec, &other.status.clone().unwrap_or_default()) == pool)
            .map(rival)
            .collect();
        match queue::turn(queue::place(&key, created, job.spec.priority), &rivals) {
            Turn::Go => (Some(0), None),
            Turn::Next { active } => (Some(1), Some(active.to_string())),
            Turn::Wait { blocker, position } => (Some(position), Some(blocker.to_string())),
        }
    } else {
        (None, None)
    };
    JobStatus {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        phase: status.phase,
        pool,
        queue_position,
        waiting_for,
        holds: holds_of(job, seen, now),
        attempts: status.attempts,
        age_seconds: seconds_between(created, now),
        message: status.message.clone(),
    }
}

/// The co-tenants whose marks name the job; where the user may not list co-tenants, the job's
/// own record of what it holds (`status.suspended`, without the hold's start).
fn holds_of(job: &VidiJob, seen: &Seen, now: Timestamp) -> Vec<Hold> {
    let key = &job_key(job);
    let mut holds: Vec<Hold> = seen
        .workloads
        .iter()
        .filter_map(|w| {
            let by = holders(&w.meta);
            if !by.contains(key) {
                return None;
            }
            let annotations = w.meta.annotations.as_ref();
            let held_since: Option<Timestamp> =
                annotations.and_then(|a| a.get(HELD_SINCE)).and_then(|s| s.parse().ok());
            Some(Hold {
                kind: w.kind,
                namespace: w.meta.namespace.clone().unwrap_or_default(),
                name: w.meta.name.clone().unwrap_or_default(),
                original_replicas: annotations
                    .and_then(|a| a.get(ORIGINAL_REPLICAS))
                    .and_then(|s| s.trim().parse().ok()),
                held_since,
                held_seconds: held_since.map(|s| seconds_between(s, now)),
                shared_with: by.iter().filter(|k| *k != key).map(|k| k.to_string()).collect(),
                unreadable: false,
            })
        })
        .collect();
    let own = job.namespace().unwrap_or_default();
    for s in job.status.iter().flat_map(|s| &s.suspended) {
        let namespace = if s.namespace.is_empty() {
            own.clone()
        } else {
            s.namespace.clone()
        };
        if seen.hidden(s.kind, &namespace) {
            holds.push(Hold {
                kind: s.kind,
                namespace,
                name: s.name.clone(),
                original_replicas: Some(s.original_replicas),
                held_since: None,
                held_seconds: None,
                shared_with: Vec::new(),
                unreadable: true,
            });
        }
    }
    holds.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    holds
}

impl StatusReport {
    /// `NAME PHASE QUEUE ATTEMPTS AGE HOLDS` (NAMESPACE first with `-A`); HOLDS lists each held
    /// co-tenant as `namespace/name (for 4m12s)`.
    pub fn table(&self) -> String {
        let mut headers = vec!["NAME", "PHASE", "QUEUE", "ATTEMPTS", "AGE", "HOLDS"];
        if self.all_namespaces {
            headers.insert(0, "NAMESPACE");
        }
        let mut t = Table::new(&headers);
        for j in &self.jobs {
            let queue = match (j.queue_position, &j.waiting_for) {
                (Some(0), _) => "next".to_string(),
                (Some(n), Some(w)) => format!("{n} (behind {w})"),
                (Some(n), None) => n.to_string(),
                (None, _) => "-".to_string(),
            };
            let holds = if j.holds.is_empty() {
                "-".to_string()
            } else {
                j.holds
                    .iter()
                    .map(|h| match (h.held_seconds, h.unreadable) {
                        (Some(s), _) => format!("{}/{} (for {})", h.namespace, h.name, human(s)),
                        (None, true) => format!("{}/{} (not readable: since when unknown)", h.namespace, h.name),
                        (None, false) => format!("{}/{}", h.namespace, h.name),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut row = vec![
                j.name.clone(),
                j.phase.to_string(),
                queue,
                j.attempts.to_string(),
                human(j.age_seconds),
                holds,
            ];
            if self.all_namespaces {
                row.insert(0, j.namespace.clone());
            }
            t.row(row);
        }
        t.render()
    }
}
