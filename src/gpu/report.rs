//! What the gate measured: printed by `gpu gate` as JSON and copied into `VidiJob.status.gpu`.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One GPU as NVML names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuDevice {
    /// NVML index of the device on its host.
    pub index: u32,
    /// Stable identifier, e.g. `GPU-5f0c…`.
    pub uuid: String,
    /// Marketing name, e.g. `NVIDIA GeForce RTX 4090`.
    pub name: String,
}

/// A process holding GPU memory, where the driver reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuProcess {
    /// Process id as the host sees it.
    pub pid: u32,
    /// Bytes of GPU memory it holds; absent when the driver does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_bytes: Option<u64>,
    /// Process name as the driver reports it (e.g. `python3`); absent when unknown, e.g. for
    /// a process in another PID namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The numbers the GPU gate measured when it let the job through.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateReport {
    /// The device that was measured.
    pub device: GpuDevice,
    /// Total memory of the device, in bytes.
    pub total_bytes: u64,
    /// Memory in use when the gate passed, in bytes.
    pub used_bytes: u64,
    /// Memory free when the gate passed, in bytes.
    pub free_bytes: u64,
    /// The threshold the gate waited for, in bytes.
    pub min_free_bytes: u64,
    /// How long the gate waited, in milliseconds.
    pub waited_millis: u64,
    /// Processes on the device when the gate passed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<GpuProcess>,
}
