//! What the planner tells a runtime adapter to do, in order.
use std::time::Duration;

use crate::api::{Precision, ReleaseHook, ReleaseMark, VidiJobStatus};

use super::snapshot::{CoTenantId, JobKey};

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Normal,
    Warning,
}

/// A Kubernetes Event (Docker: a line on the terminal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub severity: Severity,
    /// CamelCase reason, e.g. `Suspended`.
    pub reason: String,
    pub message: String,
    /// What the notice is about besides the job, so notices about different co-tenants or
    /// attempts stay separate Events.
    pub subject: Option<Subject>,
}

/// The object a notice is about, besides the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    CoTenant(CoTenantId),
    /// The attempt with this number.
    Attempt(u32),
}

/// One write to the world. Each is idempotent: applying it twice changes nothing more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// One write: replicas 0 (unless `scale_to_zero` is false because it already is), holders set
    /// to `holders`, original replicas recorded as `original_replicas` (kept when already held).
    Hold {
        target: CoTenantId,
        holders: Vec<JobKey>,
        original_replicas: i32,
        revision: Option<String>,
    },
    /// A held co-tenant runs again although held: scale it to 0 again, marks unchanged.
    Resuspend {
        target: CoTenantId,
        revision: Option<String>,
    },
    /// Remove a holder; others still hold it, so it stays suspended.
    Release {
        target: CoTenantId,
        holders: Vec<JobKey>,
        revision: Option<String>,
    },
    /// No holder left: one write restores `replicas` and removes both marks.
    Restore {
        target: CoTenantId,
        replicas: i32,
        revision: Option<String>,
    },
    /// Hold without scaling down, before the release call is made: one write sets the holders,
    /// the original replicas and the release mark `mark` (invariant 1 for in-place holds).
    HoldInPlace {
        target: CoTenantId,
        holders: Vec<JobKey>,
        original_replicas: i32,
        mark: ReleaseMark,
        revision: Option<String>,
    },
    /// Make the release call of a co-tenant held in place (its mark says `Requested`), then
    /// record the answer on it: `Released` on a 2xx, else `Refused` with why. The adapter reads
    /// the co-tenant afresh for that write (the hold just changed it).
    CallRelease { target: CoTenantId, hook: ReleaseHook },
    /// The release was refused or did not free the memory: one write scales it to 0 and drops
    /// the release mark; holders and original replicas stay (from here it is an ordinary hold).
    FallBack {
        target: CoTenantId,
        revision: Option<String>,
    },
    /// No holder left of an in-place hold: make the resume call (when `call`), and only after
    /// its 2xx one write removes every mark and sets `replicas` (the original count: unchanged
    /// unless someone scaled it down meanwhile, since it never stopped).
    Resume {
        target: CoTenantId,
        hook: ReleaseHook,
        call: bool,
        replicas: i32,
        revision: Option<String>,
    },
    /// Before a node hold (Kubernetes Deployments): give these pods of `target` a low
    /// `controller.kubernetes.io/pod-deletion-cost` and the mark `vidi.dev/marked-by: holder`,
    /// so the scale-down that follows removes exactly them. Idempotent.
    MarkPods {
        target: CoTenantId,
        pods: Vec<String>,
        holder: JobKey,
    },
    /// Removes the pod-deletion-cost and the mark from these pods of `target` (those that still
    /// exist). Comes before the restore that drops the hold's record of them.
    UnmarkPods { target: CoTenantId, pods: Vec<String> },
    /// One write, like `Hold` but removing only the replicas on `node`: replicas set to
    /// `replicas` (original − removed), holders and original replicas recorded, and with them the
    /// node hold (node, replicas removed, pods marked) that the restore undoes. Written again,
    /// unchanged, when something scales the workload back up while held.
    HoldOnNode {
        target: CoTenantId,
        holders: Vec<JobKey>,
        original_replicas: i32,
        replicas: i32,
        node: String,
        marked_pods: Vec<String>,
        revision: Option<String>,
    },
    /// Create the attempt's pod (or container) named `name`. Creating an existing one is a no-op.
    StartAttempt {
        attempt: u32,
        name: String,
        precision: Precision,
        min_free_bytes: u64,
        /// Some co-tenants are only released in place: the GPU gate waits at most this long
        /// (and at most the operator's gate timeout) for their memory, so a release that frees
        /// nothing falls back to stopping them within it instead of after the whole gate timeout.
        release_wait: Option<std::time::Duration>,
    },
    /// Stop and delete an attempt that is still alive.
    StopAttempt { attempt: u32, name: String },
    /// Publish an Event on the job.
    Notify(Notice),
    /// ttlSecondsAfterFinished has passed: delete the job.
    DeleteJob,
}

/// How a job's last message says that it gave back everything it held (an adapter that learns
/// of a co-tenant it could not restore amends exactly this).
pub const ALL_RESTORED: &str = "every co-tenant restored";

/// How long an attempt's GPU gate waits: `gate_timeout`, or `release_wait` (a
/// `StartAttempt`'s) when that is shorter.
pub fn gate_wait(release_wait: Option<std::time::Duration>, gate_timeout: std::time::Duration) -> std::time::Duration {
    release_wait.map_or(gate_timeout, |w| w.min(gate_timeout))
}

/// The planner's answer: actions to apply in order, then the status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub status: VidiJobStatus,
    /// Look again after this long even if nothing changes (deadlines, TTL, progress).
    pub requeue_after: Option<Duration>,
    /// Deleting, and nothing is held or running any more: the finalizer may go.
    pub released: bool,
}

impl Action {
    /// The attempt a `StartAttempt` starts.
    pub fn started_attempt(&self) -> Option<u32> {
        match self {
            Action::StartAttempt { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }
}

impl Decision {
    /// The attempts this decision starts.
    pub fn started_attempts(&self) -> Vec<u32> {
        self.actions.iter().filter_map(Action::started_attempt).collect()
    }
}
