//! `VidiJob.spec`: what the user asks for.
// kube-derive takes one `printcolumn(...)` per column; clippy reads the repeats as duplicates.
#![allow(clippy::duplicated_attributes)]
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::status::VidiJobStatus;

/// Find the moments of a video that match a text query with Vidi 1.5 9B, borrowing a shared GPU:
/// the operator suspends the GPU's co-tenants, runs Vidi alone, and restores every co-tenant.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vidi.dev",
    version = "v1alpha1",
    kind = "VidiJob",
    namespaced,
    shortname = "vj",
    category = "vidi",
    status = "VidiJobStatus",
    derive = "PartialEq",
    doc = "A VidiJob finds the moments of a video that match a text query with Vidi 1.5 9B, suspending the GPU's co-tenants while it runs and restoring them afterwards.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Precision", type_ = "string", json_path = ".status.precision"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".status.duration"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message", priority = "1")
)]
#[serde(rename_all = "camelCase")]
pub struct VidiJobSpec {
    /// The video to search: exactly one of `url`, `volume` or `hostPath`.
    pub video: VideoSource,

    /// The text to find in the video, e.g. "a dog catches a frisbee".
    #[schemars(length(min = 1, max = 2000))]
    #[x_kube(validation = Rule::new("self.trim() != ''").message("must not be blank"))]
    pub query: String,

    /// The Vidi image, weights, Hugging Face cache and precision.
    pub model: ModelSpec,

    /// Which GPU to borrow and how much free memory to wait for.
    #[serde(default)]
    pub gpu: GpuSpec,

    /// The workloads that yield the GPU while the job runs.
    #[serde(default)]
    pub co_tenants: CoTenantSpec,

    /// Where the full result JSON is written. Without it only the compact result in
    /// `status.result` is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<OutputSpec>,

    /// Host RAM and CPU for the Vidi container. Loading fp16 shards before quantizing needs far
    /// more RAM than the model's VRAM; a container killed for RAM fails with reason OOMKilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceSpec>,

    /// Seconds the job may take from leaving the queue (suspension, Vidi, all attempts) before it
    /// is stopped and fails with reason DeadlineExceeded. The co-tenants are restored either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// How many times a failed Vidi run (exit 1) is retried, each in a new pod. Bad input
    /// (exit 2) is never retried; out-of-GPU-memory with `precision: auto` retries at the next
    /// lower precision without counting against this limit.
    #[serde(default = "default_backoff_limit")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,

    /// Seconds after the job finished (and restored its co-tenants) before it is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// While true the job does not start; setting it on a running job stops Vidi, restores the
    /// co-tenants and returns the job to Pending.
    #[serde(default)]
    pub suspend: bool,

    /// Queue order among the jobs waiting for the same GPU pool: higher goes first, then the
    /// oldest. A job already running is never interrupted for a higher one. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn default_backoff_limit() -> i32 {
    1
}

/// A path inside a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumePath {
    /// Name of a PersistentVolumeClaim in the job's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Path relative to the claim's root, e.g. `videos/talk.mp4`.
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = Rule::new("!self.startsWith('/')").message("path must be relative to the claim's root"))]
    pub path: String,
}

/// Where the video comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.url) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) == 1").message("exactly one of url, volume or hostPath must be set"))]
pub struct VideoSource {
    /// An http(s) URL, downloaded before Vidi starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must start with http:// or https://"))]
    pub url: Option<String>,
    /// A file on a PersistentVolumeClaim, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumePath>,
    /// An absolute path on the host. Docker runtime only; refused on Kubernetes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

/// Numeric precision Vidi loads the model in.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The highest precision that fits; a CUDA out-of-memory retries one step lower.
    #[default]
    Auto,
    /// Half precision, about 18 GB of VRAM.
    Fp16,
    /// 8-bit (bitsandbytes), about 10 GB of VRAM.
    Int8,
    /// 4-bit (bitsandbytes), about 5 GB of VRAM.
    Int4,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A directory of model files: on a PersistentVolumeClaim, or (Docker runtime only) on the host.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.claimName) != has(self.hostPath)").message("exactly one of claimName or hostPath must be set"))]
pub struct ModelFiles {
    /// Name of a PersistentVolumeClaim in the job's namespace, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
    /// Directory inside the claim (default: its root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An absolute directory on the host, mounted read-only. Docker runtime only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

/// The model to run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The Vidi image (docker/vidi). Default: the operator's `--vidi-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Vidi 1.5 9B weights, mounted read-only (never baked into the image).
    pub weights: ModelFiles,
    /// A pre-filled Hugging Face cache with the vision and audio towers
    /// (siglip2-so400m-patch14-384, whisper-large-v3); the job runs with HF_HUB_OFFLINE=1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hf_cache: Option<ModelFiles>,
    /// auto (default), fp16, int8 or int4.
    #[serde(default)]
    pub precision: Precision,
    /// GPU memory Vidi needs at each precision, model plus headroom (defaults: fp16 20Gi, int8
    /// 12Gi, int4 7Gi). What the GPU gate waits for, and what `coTenants.policy: Minimal`
    /// makes room for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ModelMemory>,
}

/// GPU memory Vidi needs, per precision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ModelMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp16: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Quantity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int4: Option<Quantity>,
}

/// How many co-tenants yield the GPU.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CoTenantPolicy {
    /// Every selected co-tenant yields (the safe default).
    #[default]
    All,
    /// Only the cheapest set (replicas × `vidi.dev/yield-priority`) whose GPU memory covers
    /// what Vidi needs beyond what is free; a co-tenant whose memory is unknown always yields. A
    /// CUDA out-of-memory then retries with every co-tenant yielded before any precision is
    /// lowered.
    Minimal,
}

impl std::fmt::Display for CoTenantPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CoTenantPolicy::All => "All",
            CoTenantPolicy::Minimal => "Minimal",
        })
    }
}

/// Which GPU the job borrows.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// Extended resource the Vidi pod requests one of.
    #[serde(default = "default_gpu_resource")]
    #[schemars(length(min = 1, max = 253))]
    pub resource_name: String,
    /// Node labels the Vidi pod must match. Jobs with the same resourceName and nodeSelector
    /// share one queue: one of them runs at a time.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations for the Vidi pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Free GPU memory to wait for before Vidi starts, e.g. `20Gi`. Default: from the
    /// precision (fp16 20Gi, int8 12Gi, int4 7Gi: the model plus 2Gi headroom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_free_memory: Option<Quantity>,
    /// Docker runtime only: the GPU index or UUID (default: GPU 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Kubernetes: the memory of the GPU on each node of the pool, e.g. `24Gi`, for choosing
    /// the node where the job disrupts least. Default: each node's `nvidia.com/gpu.memory` label
    /// (MiB, set by NVIDIA GPU Feature Discovery); a node with neither is taken only under
    /// `coTenants.policy: All`, after the nodes whose memory is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

fn default_gpu_resource() -> String {
    "nvidia.com/gpu".to_string()
}

impl Default for GpuSpec {
    fn default() -> Self {
        GpuSpec {
            resource_name: default_gpu_resource(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            min_free_memory: None,
            device: None,
            memory: None,
        }
    }
}

/// The label a workload carries to opt in to being suspended by VidiJobs.
pub const YIELD_LABEL: &str = "vidi.dev/yield-gpu";

/// Kinds of workload that can yield the GPU.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// apps/v1 Deployment (Kubernetes).
    Deployment,
    /// apps/v1 StatefulSet (Kubernetes).
    StatefulSet,
    /// A container (Docker runtime).
    Container,
    /// A bare process stopped and started by commands (Docker runtime).
    Command,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::Container => "Container",
            WorkloadKind::Command => "Command",
        })
    }
}

impl WorkloadKind {
    /// How much of it runs, in its own terms: `1 replica`, `3 replicas`; a container or a command
    /// runs or does not (`running`, `stopped`).
    pub fn amount(self, replicas: i32) -> String {
        match self {
            WorkloadKind::Deployment | WorkloadKind::StatefulSet if replicas == 1 => "1 replica".into(),
            WorkloadKind::Deployment | WorkloadKind::StatefulSet => format!("{replicas} replicas"),
            WorkloadKind::Container | WorkloadKind::Command if replicas > 0 => "running".into(),
            WorkloadKind::Container | WorkloadKind::Command => "stopped".into(),
        }
    }
}

/// One workload named explicitly.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Deployment or StatefulSet (Kubernetes), Container (Docker).
    #[x_kube(validation = Rule::new("self != 'Command'").message("use coTenants.commands for bare processes"))]
    pub kind: WorkloadKind,
    /// The workload's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Its namespace (default: the job's). A workload in another namespace must carry the label
    /// vidi.dev/yield-gpu=true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Frees its GPU memory in place instead of being scaled down or stopped (overrides the
    /// workload's `vidi.dev/release*` annotations or labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<super::release::ReleaseHook>,
}

/// A bare process on a Docker host, stopped and started by shell commands (run with `sh -c`).
///
/// The operator trusts only what `check` shows: after `stop` it waits until `check` fails (the
/// process is really gone), and a restore counts only once `check` passes again after `start`.
/// `stop` must be safe to run again on a process that is already shutting down (a restore after
/// a crash repeats it when the process still runs).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CommandCoTenant {
    /// A name for messages and the journal, e.g. `comfyui`; unique among the commands.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.trim() != ''").message("name must not be blank"))]
    pub name: String,
    /// Stops the process, e.g. `pkill -f 'python3 main.py'`.
    #[schemars(length(min = 1))]
    pub stop: String,
    /// Starts it again, e.g. `cd /opt/ComfyUI && nohup python3 main.py >/tmp/comfy.log 2>&1 &`.
    #[schemars(length(min = 1))]
    pub start: String,
    /// Exits 0 while the process runs and non-zero once it is gone, e.g.
    /// `pgrep -f '[p]ython3 main.py'` or `curl -sf localhost:8188/`.
    #[schemars(length(min = 1))]
    pub check: String,
    /// How long the process may take to be gone after `stop` (default 30).
    #[serde(default = "default_stop_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub stop_timeout_seconds: i64,
    /// How long `check` may take to pass after `start` before the restore counts as failed
    /// (default 120).
    #[serde(default = "default_start_timeout_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub start_timeout_seconds: i64,
    /// GPU memory the process holds, e.g. `400Mi`, for `policy: Minimal` (unknown: it always
    /// yields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory: Option<Quantity>,
    /// Frees its GPU memory in place (e.g. ComfyUI's `POST /free`) instead of being stopped;
    /// `stop` is the fallback when that fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<super::release::ReleaseHook>,
}

fn default_stop_timeout_seconds() -> i64 {
    30
}

fn default_start_timeout_seconds() -> i64 {
    120
}

impl CommandCoTenant {
    pub fn stop_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.stop_timeout_seconds.clamp(1, 3600) as u64)
    }

    pub fn start_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.start_timeout_seconds.clamp(1, 3600) as u64)
    }
}

/// Which workloads yield the GPU while the job runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CoTenantSpec {
    /// Label selector for Deployments/StatefulSets (Kubernetes) or containers (Docker).
    /// Default: vidi.dev/yield-gpu=true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Namespaces the selector looks in (default: the job's own). Workloads outside the job's
    /// namespace are suspended only if they carry vidi.dev/yield-gpu=true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Workloads named explicitly, in addition to those the selector finds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<WorkloadRef>,
    /// Docker runtime only: bare processes stopped and started by commands.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("command names must be unique"))]
    pub commands: Vec<CommandCoTenant>,
    /// Run even when no co-tenant is found. By default a job whose co-tenants match nothing
    /// fails with InvalidSpec, since that is almost always a typo in the selector.
    #[serde(default)]
    pub allow_none: bool,
    /// `All` (default): every selected co-tenant yields. `Minimal`: only as many as the GPU
    /// memory needs.
    #[serde(default)]
    pub policy: CoTenantPolicy,
}

/// Where the full result is written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.volume) != has(self.hostPath)").message("exactly one of volume or hostPath must be set"))]
pub struct OutputSpec {
    /// A directory inside a PersistentVolumeClaim; result.json is written there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumePath>,
    /// An absolute host directory. Docker runtime only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
}

/// Host resources for the Vidi container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    /// Host RAM request and limit, e.g. `32Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPU request, e.g. `4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Shared memory (/dev/shm) size, e.g. `8Gi` (default 2Gi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,
}
