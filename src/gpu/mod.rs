//! GPU probe (NVML) and the gate that waits until enough memory is free.
mod report;

pub use report::{GateReport, GpuDevice, GpuProcess};
