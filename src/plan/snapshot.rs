//! What a runtime adapter observed: the planner's only input.
use std::collections::BTreeSet;
use std::fmt;

use jiff::Timestamp;

use crate::api::{Phase, Runtime, VidiJobSpec, VidiJobStatus, WorkloadKind};

/// A job's identity in holder marks and messages: `namespace/name` (Docker: `docker/name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobKey {
    pub namespace: String,
    pub name: String,
}

impl JobKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        JobKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses a `namespace/name` holder mark.
    pub fn parse(mark: &str) -> Option<Self> {
        let (ns, name) = mark.trim().split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| JobKey::new(ns, name))
    }
}

impl fmt::Display for JobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A co-tenant's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CoTenantId {
    pub kind: WorkloadKind,
    /// Empty on a Docker host.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for CoTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Why the adapter listed a co-tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Matched `spec.coTenants.selector` (or the default selector) in a watched namespace.
    Selector,
    /// Named in `spec.coTenants.refs[i]` or `spec.coTenants.commands[i]`.
    Ref(usize),
    /// Not selected by this job, but listed because this job holds it.
    HeldOnly,
}

/// A workload that shares the GPU, as the adapter sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoTenant {
    pub id: CoTenantId,
    /// Desired replicas now (containers and commands: 1 running, 0 stopped).
    pub replicas: i32,
    /// Pods (or processes) still alive, terminating ones included.
    pub live_pods: u32,
    /// Jobs holding it suspended (`vidi.dev/held-by`).
    pub holders: BTreeSet<JobKey>,
    /// `vidi.dev/original-replicas`, when held.
    pub original_replicas: Option<i32>,
    /// Carries `vidi.dev/yield-gpu=true`.
    pub opted_in: bool,
    pub selection: Selection,
    /// Who last changed its replicas (Kubernetes managedFields manager), for fight warnings.
    pub last_scaled_by: Option<String>,
    /// Opaque version for optimistic concurrency (Kubernetes resourceVersion).
    pub revision: Option<String>,
    /// GPU memory it frees by yielding (all its replicas), when known: declared
    /// (`vidi.dev/gpu-memory` per replica, a command's `gpuMemory`) or measured (NVML, Docker).
    pub gpu_memory_bytes: Option<u64>,
    /// `vidi.dev/yield-priority` (default 1): the cost of yielding one replica.
    pub yield_priority: u32,
    /// The in-place release hook it offers (`release:` in the job, else `vidi.dev/release*`
    /// annotations or labels), tried before scaling it down.
    pub release_hook: Option<crate::api::ReleaseHook>,
    /// Held in place: the release mark recorded with the hold (`vidi.dev/released`, or the
    /// Docker journal's hold): the hook and how far the release got.
    pub released: Option<crate::api::ReleaseMark>,
}

/// One Termination: how a container ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Termination {
    pub exit_code: i32,
    /// Runtime reason, e.g. `OOMKilled`, `Error`, `Completed`.
    pub reason: Option<String>,
    /// Termination message (the Vidi contract's compact JSON, or the gate's report).
    pub message: Option<String>,
}

/// Where one attempt (a pod or container running Vidi) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptState {
    /// Created; the GPU gate or Vidi has not started yet. `waiting` says why when the runtime
    /// knows (e.g. `ImagePullBackOff: …`).
    Pending { waiting: Option<String> },
    /// Vidi (or its gate) is running.
    Running,
    /// Being deleted but not gone yet.
    Terminating,
    /// Ended. `gate` is the GPU gate's termination (when it ran), `main` Vidi's (absent when the
    /// gate failed), `reason` a pod-level reason such as `DeadlineExceeded` or `Evicted`.
    Finished {
        gate: Option<Termination>,
        main: Option<Termination>,
        reason: Option<String>,
    },
}

/// One attempt of this job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub number: u32,
    pub name: String,
    pub node: Option<String>,
    /// The precision it was started at (from its environment), when known.
    pub precision: Option<crate::api::Precision>,
    /// The gate's report once it passed (Kubernetes: the init container's termination message).
    pub gate_report: Option<String>,
    pub state: AttemptState,
}

/// Another job of the same GPU pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rival {
    pub key: JobKey,
    pub created: Timestamp,
    /// `spec.priority`: higher leaves the queue first.
    pub priority: i32,
    pub phase: Phase,
    pub suspended: bool,
    pub deleting: bool,
}

/// The job being planned.
#[derive(Clone, Debug, PartialEq)]
pub struct JobView {
    pub key: JobKey,
    pub generation: Option<i64>,
    pub created: Timestamp,
    pub spec: VidiJobSpec,
    pub status: VidiJobStatus,
    /// Deletion requested (Kubernetes deletionTimestamp; Docker: cancelled or recovering).
    pub deleting: bool,
}

/// Everything the planner may look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub runtime: Runtime,
    pub job: JobView,
    /// Selected co-tenants plus every co-tenant this job holds.
    pub co_tenants: Vec<CoTenant>,
    /// This job's attempts (all of them, any state).
    pub attempts: Vec<Attempt>,
    /// Other unfinished jobs of the same GPU pool.
    pub rivals: Vec<Rival>,
    /// Problems found by looking up what the spec points at (a missing claim, …).
    pub problems: Vec<crate::api::FieldError>,
    /// Total memory of the GPU, when the runtime can measure it before starting (Docker).
    pub gpu_total_bytes: Option<u64>,
    /// Free memory of the GPU now, when the runtime can measure it (Docker, through NVML):
    /// what `coTenants.policy: Minimal` makes up the rest of.
    pub gpu_free_bytes: Option<u64>,
    /// Nodes of the GPU pool and where the co-tenants' pods run (Kubernetes); empty on a Docker
    /// host.
    pub placement: super::placement::Placement,
    /// Report what would happen; change nothing.
    pub dry_run: bool,
    pub now: Timestamp,
}
