//! The probe abstraction: what one look at the GPUs returns, and how it fails.
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::{GateReport, GpuDevice, GpuProcess};
use super::select::DeviceSelector;
use super::size::format_bytes;

/// One GPU's memory and the processes holding it, as read at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    /// Which device this is.
    pub device: GpuDevice,
    /// Total memory, in bytes.
    pub total_bytes: u64,
    /// Memory allocated, in bytes (NVML's `used`; excludes the driver's reserved part).
    pub used_bytes: u64,
    /// Memory free for a new process, in bytes (what the gate compares).
    pub free_bytes: u64,
    /// Compute and graphics processes on the device, largest first.
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

impl Reading {
    /// `GPU 0 (NVIDIA H100 80GB HBM3)`: how messages name the device.
    pub fn label(&self) -> String {
        if self.device.name.is_empty() {
            format!("GPU {}", self.device.index)
        } else {
            format!("GPU {} ({})", self.device.index, self.device.name)
        }
    }

    /// Who holds memory, for messages: `held by pid 1234 python3 (22.1 GiB), pid 99`, or a
    /// note that the driver listed nobody (processes in other PID namespaces, e.g. other
    /// containers, are often invisible to NVML).
    pub fn holders(&self) -> String {
        if self.processes.is_empty() {
            return "no process listed by the driver (it may be in another container)".to_owned();
        }
        let mut out = String::from("held by ");
        for (i, p) in self.processes.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            let _ = write!(out, "pid {}", p.pid);
            if let Some(name) = &p.name {
                let _ = write!(out, " {name}");
            }
            if let Some(bytes) = p.used_bytes {
                let _ = write!(out, " ({})", format_bytes(bytes));
            }
        }
        out
    }

    /// The report the gate returns when this reading let it pass.
    pub fn to_report(&self, min_free_bytes: u64, waited: Duration) -> GateReport {
        GateReport {
            device: self.device.clone(),
            total_bytes: self.total_bytes,
            used_bytes: self.used_bytes,
            free_bytes: self.free_bytes,
            min_free_bytes,
            waited_millis: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
            processes: self.processes.clone(),
        }
    }
}

/// Why the GPUs could not be read. Cloneable so fakes can replay a failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProbeError {
    /// The NVML library could not be loaded at all: no NVIDIA driver on this machine (or
    /// not mounted into this container).
    #[error("no NVIDIA driver found (libnvidia-ml.so.1 could not be loaded): {detail}")]
    NoDriver {
        /// Every path tried and why each failed.
        detail: String,
    },
    /// The library loaded but an NVML call failed (driver not running, GPU lost, …).
    #[error("NVML {what} failed: {source}")]
    Nvml {
        /// The call that failed, e.g. `init` or `memory_info of GPU 0`.
        what: String,
        /// NVML's own error.
        #[source]
        source: Arc<nvml_wrapper::error::NvmlError>,
    },
    /// No device matches the selector.
    #[error("no GPU matches {selector}: {found}")]
    DeviceNotFound {
        /// What was asked for.
        selector: DeviceSelector,
        /// The devices there are, e.g. `found 1: 0 NVIDIA H100 (GPU-…)`.
        found: String,
    },
    /// Any other failure (fakes use it to script errors).
    #[error("{0}")]
    Other(String),
}

/// Reads the GPUs of this machine. Synchronous: NVML calls take microseconds.
pub trait GpuProbe: Send + Sync {
    /// Every GPU NVML sees, in index order.
    fn readings(&self) -> Result<Vec<Reading>, ProbeError>;

    /// The driver's version, where the probe knows it (shown by `gpu status`).
    fn driver_version(&self) -> Option<String> {
        None
    }

    /// The one GPU `selector` names.
    fn reading(&self, selector: &DeviceSelector) -> Result<Reading, ProbeError> {
        let all = self.readings()?;
        match all.iter().find(|r| selector.matches(r.device.index, &r.device.uuid)) {
            Some(r) => Ok(r.clone()),
            None => Err(not_found(selector, &all)),
        }
    }
}

/// The error for a selector that matches none of `all`, listing what there is.
pub(crate) fn not_found(selector: &DeviceSelector, all: &[Reading]) -> ProbeError {
    let found = if all.is_empty() {
        "the driver lists no GPUs".to_owned()
    } else {
        let list: Vec<String> = all
            .iter()
            .map(|r| format!("{} {} ({})", r.device.index, r.device.name, r.device.uuid))
            .collect();
        format!("found {}: {}", all.len(), list.join(", "))
    };
    ProbeError::DeviceNotFound {
        selector: selector.clone(),
        found,
    }
}

impl<P: GpuProbe + ?Sized> GpuProbe for &P {
    fn readings(&self) -> Result<Vec<Reading>, ProbeError> {
        (**self).readings()
    }
    fn driver_version(&self) -> Option<String> {
        (**self).driver_version()
    }
    fn reading(&self, selector: &DeviceSelector) -> Result<Reading, ProbeError> {
        (**self).reading(selector)
    }
}

impl<P: GpuProbe + ?Sized> GpuProbe for Arc<P> {
    fn readings(&self) -> Result<Vec<Reading>, ProbeError> {
        (**self).readings()
    }
    fn driver_version(&self) -> Option<String> {
        (**self).driver_version()
    }
    fn reading(&self, selector: &DeviceSelector) -> Result<Reading, ProbeError> {
        (**self).reading(selector)
    }
}
