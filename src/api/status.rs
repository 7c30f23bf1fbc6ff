//! `VidiJob.status`: what the operator observed and decided.
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::{Precision, WorkloadKind};
use crate::gpu::GateReport;

/// Where a job is in its life.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Accepted, not yet validated or queued (also: suspended by `spec.suspend`).
    #[default]
    Pending,
    /// Waiting for another job on the same GPU pool.
    Queued,
    /// Suspending co-tenants and waiting for their pods to be gone.
    Suspending,
    /// Vidi is running (or its GPU gate is waiting for free memory).
    Running,
    /// Vidi has ended; co-tenants are being restored.
    Restoring,
    /// Vidi answered and every co-tenant was restored.
    Succeeded,
    /// The job failed and every co-tenant was restored.
    Failed,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// Holds the GPU pool: no other job of the pool may start.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Suspending | Phase::Running | Phase::Restoring)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Queued => "Queued",
            Phase::Suspending => "Suspending",
            Phase::Running => "Running",
            Phase::Restoring => "Restoring",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed (also the reason of its `Failed` condition and Event).
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The spec is invalid; nothing was suspended.
    InvalidSpec,
    /// Vidi exited 2: the video is missing or unreadable, or the query is empty.
    BadInput,
    /// Vidi exited 3: CUDA out of memory at the lowest precision allowed.
    OutOfGpuMemory,
    /// The container was killed for host RAM; raise spec.resources.memory.
    OOMKilled,
    /// Vidi exited 1 (or another code) more often than backoffLimit allows.
    Failed,
    /// activeDeadlineSeconds passed.
    DeadlineExceeded,
    /// The GPU gate timed out: memory never became free after suspending the co-tenants.
    GpuMemoryUnavailable,
    /// No usable GPU: no NVIDIA driver or runtime, or the device was not found.
    NoGpu,
    /// Vidi exited 0 but its result could not be read.
    ResultUnreadable,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::InvalidSpec => "InvalidSpec",
            FailureReason::BadInput => "BadInput",
            FailureReason::OutOfGpuMemory => "OutOfGpuMemory",
            FailureReason::OOMKilled => "OOMKilled",
            FailureReason::Failed => "Failed",
            FailureReason::DeadlineExceeded => "DeadlineExceeded",
            FailureReason::GpuMemoryUnavailable => "GpuMemoryUnavailable",
            FailureReason::NoGpu => "NoGpu",
            FailureReason::ResultUnreadable => "ResultUnreadable",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the job's work ended, recorded on entering Restoring so the restore knows where to go.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    /// `spec.suspend` was set: back to Pending once restored.
    Suspended,
}

/// A co-tenant this job holds suspended.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SuspendedCoTenant {
    pub kind: WorkloadKind,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// Replicas it had before the first holder suspended it (for containers and commands: 1 if
    /// it was running, 0 if not).
    pub original_replicas: i32,
    /// Held in place through its release hook (still running, its GPU memory released), not
    /// scaled down or stopped; it is resumed at the end.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released_in_place: bool,
}

/// Where the job runs and why.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodeChoice {
    /// The node the Vidi pod is pinned to.
    pub node: String,
    /// Why this node: what yields there (or that nothing has to), its cost and the candidates.
    pub reason: String,
}

/// One matching moment, in seconds from the start of the video.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    pub start_seconds: f64,
    pub end_seconds: f64,
}

/// What Vidi found.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VidiResult {
    /// Matching segments, in order.
    pub segments: Vec<Segment>,
    /// One line, e.g. `2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04`.
    pub summary: String,
    /// Precision the answer was computed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Length of the video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video_seconds: Option<f64>,
    /// Peak GPU memory Vidi used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_vram_bytes: Option<u64>,
    /// The preview page (the query, the segments on a timeline, a thumbnail each), a file in
    /// the job's output folder: `spec.output.volume` on Kubernetes, the output directory on a
    /// Docker host. Absent when the job keeps no output folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

/// What the operator observed and decided.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VidiJobStatus {
    /// Pending, Queued, Suspending, Running, Restoring, Succeeded or Failed.
    #[serde(default)]
    pub phase: Phase,
    /// Ready, Reconciling, Stalled (kstatus), Complete and Failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Co-tenants this job holds suspended, with the replicas they will be restored to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suspended: Vec<SuspendedCoTenant>,
    /// Node of the latest Vidi pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Name of the latest Vidi pod (or container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Precision of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// Failed attempts that count against backoffLimit.
    #[serde(default)]
    pub failures: u32,
    /// When the job left the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// completionTime - startTime, e.g. `4m12s` (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// What Vidi found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<VidiResult>,
    /// What the GPU gate measured before Vidi started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GateReport>,
    /// Set while Restoring and after: how the work ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Why the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// A human-readable line about the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The GPU pool (resourceName and nodeSelector) the job took when it left the queue; it keeps
    /// that pool while active even if spec.gpu is edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// The job this one waits for while Queued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// How co-tenants yield in this run: the spec's policy when the job left the queue, `All`
    /// once a CUDA out-of-memory under `Minimal` made every co-tenant yield.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<super::spec::CoTenantPolicy>,
    /// The node the job's Vidi pod is pinned to and why (Kubernetes, a GPU pool whose nodes are
    /// known): chosen when the job leaves the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_choice: Option<NodeChoice>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
