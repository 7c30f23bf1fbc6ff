//! GPU probe (NVML) and the gate that waits until enough memory is free.
//!
//! The operator suspends GPU co-tenants and then must not start Vidi until the driver
//! really reports the memory as free: a stopped container's CUDA context can take seconds
//! to go away. [`wait_for_free`] polls a [`GpuProbe`] until the selected device has enough
//! free memory and returns the measured numbers as a [`GateReport`].
//!
//! - [`NvmlProbe`] reads the real driver through NVML (loaded at run time).
//! - [`fake::FakeProbe`] is scripted by tests (the gate's and the runtimes').
//!
//! `vidi-operator gpu gate` exits with the codes below; the planner classifies the gate's
//! init-container exit with the same constants, so keep them here, in one place.
mod gate;
mod nvml;
mod probe;
mod report;
mod select;
mod size;

pub mod fake;

pub use gate::{GateError, wait_for_free};
pub use nvml::{NVML_LIB_PATHS, NvmlProbe};
pub use probe::{GpuProbe, ProbeError, Reading};
pub use report::{GateReport, GpuDevice, GpuProcess};
pub use select::{DeviceSelector, SelectorParseError};
pub use size::{SizeParseError, format_bytes, parse_size};

/// `gpu gate` passed: the memory is free; the report is on stdout (and the termination log).
pub const EXIT_OK: i32 = 0;
/// Bad arguments (clap's own code), or a `--min-free` the device can never satisfy
/// (larger than its total memory): retrying the same gate cannot help.
pub const EXIT_BAD_ARGS: i32 = 2;
/// The gate timed out: the memory never became free (something still holds it).
pub const EXIT_GATE_TIMEOUT: i32 = 4;
/// No GPU: no NVIDIA driver / NVML error / the selected device does not exist.
pub const EXIT_NO_GPU: i32 = 5;

/// The Kubernetes limit on one container's termination message, in bytes.
pub const TERMINATION_MESSAGE_MAX_BYTES: usize = 4096;
