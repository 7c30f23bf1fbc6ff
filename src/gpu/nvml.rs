//! The real probe: NVML through nvml-wrapper, loaded at run time.
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;

use super::probe::{GpuProbe, ProbeError, Reading, not_found};
use super::report::{GpuDevice, GpuProcess};
use super::select::DeviceSelector;

/// Where libnvidia-ml is looked for, in order. The first is the dynamic loader's own
/// search; the rest are where containers and distributions put it when the loader's path
/// does not include it (the NVIDIA container toolkit and GPU operators mount the driver
/// under /usr/local/nvidia/lib64, for example).
pub const NVML_LIB_PATHS: &[&str] = &[
    "libnvidia-ml.so.1",
    "/usr/local/nvidia/lib64/libnvidia-ml.so.1",
    "/usr/local/nvidia/lib/libnvidia-ml.so.1",
    "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib/aarch64-linux-gnu/libnvidia-ml.so.1",
    "/usr/lib64/libnvidia-ml.so.1",
    "/usr/lib/wsl/lib/libnvidia-ml.so.1",
    "/run/nvidia/driver/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
];

/// Reads GPUs through NVML. Holding it keeps NVML initialised; dropping it shuts NVML down.
pub struct NvmlProbe {
    nvml: Nvml,
    lib_path: String,
}

impl std::fmt::Debug for NvmlProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmlProbe")
            .field("lib_path", &self.lib_path)
            .finish_non_exhaustive()
    }
}

/// Failures that mean "this file is not a usable libnvidia-ml", so the next path may work.
/// Anything else (driver not loaded, no permission) comes from a library that did load,
/// and another copy of it would say the same.
fn is_load_failure(e: &NvmlError) -> bool {
    matches!(
        e,
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) | NvmlError::LibraryNotFound
    )
}

impl NvmlProbe {
    /// Loads NVML from the first of [`NVML_LIB_PATHS`] that loads, and initialises it.
    pub fn new() -> Result<Self, ProbeError> {
        Self::with_lib_paths(NVML_LIB_PATHS.iter().copied())
    }

    /// Like [`NvmlProbe::new`], trying the given paths in order.
    pub fn with_lib_paths<'a>(paths: impl IntoIterator<Item = &'a str>) -> Result<Self, ProbeError> {
        // The first failure is the loader's own (it names the search it did); later paths
        // mostly do not exist, so list those briefly and give details only for files that
        // exist but would not load (wrong architecture, missing symbols).
        let mut first: Option<String> = None;
        let mut missing: Vec<&str> = Vec::new();
        let mut broken: Vec<String> = Vec::new();
        for path in paths {
            match Nvml::builder().lib_path(OsStr::new(path)).init() {
                Ok(nvml) => {
                    tracing::debug!(lib_path = path, "NVML initialised");
                    return Ok(NvmlProbe {
                        nvml,
                        lib_path: path.to_owned(),
                    });
                }
                Err(e) if is_load_failure(&e) => {
                    tracing::debug!(lib_path = path, error = %e, "NVML library did not load");
                    let text = match &e {
                        NvmlError::LibloadingError(inner) => inner.to_string(),
                        other => format!("{path}: {other}"),
                    };
                    if first.is_none() {
                        first = Some(text);
                    } else if std::path::Path::new(path).exists() {
                        broken.push(text);
                    } else {
                        missing.push(path);
                    }
                }
                Err(e) => {
                    return Err(ProbeError::Nvml {
                        what: format!("init (library {path})"),
                        source: Arc::new(e),
                    });
                }
            }
        }
        let mut detail = first.unwrap_or_else(|| "no library paths to try".to_owned());
        if !missing.is_empty() {
            detail.push_str(&format!("; not at {} either", missing.join(", ")));
        }
        for b in broken {
            detail.push_str("; ");
            detail.push_str(&b);
        }
        detail.push_str(
            "; is the NVIDIA driver installed, and does this container run with the NVIDIA \
             runtime (docker --gpus, a nvidia.com/gpu resource in Kubernetes)?",
        );
        Err(ProbeError::NoDriver { detail })
    }

    /// The library file that loaded.
    pub fn lib_path(&self) -> &str {
        &self.lib_path
    }

    fn read_device(&self, index: u32) -> Result<Reading, ProbeError> {
        let fail = |what: &str| {
            let what = format!("{what} of GPU {index}");
            move |e: NvmlError| ProbeError::Nvml {
                what,
                source: Arc::new(e),
            }
        };
        let dev = self.nvml.device_by_index(index).map_err(fail("device_by_index"))?;
        let name = dev.name().map_err(fail("name"))?;
        let uuid = dev.uuid().map_err(fail("uuid"))?;
        let mem = dev.memory_info().map_err(fail("memory_info"))?;

        // The process lists are what makes a timeout message useful ("held by pid …"), but
        // the gate decides on memory alone: a device or driver that cannot list processes
        // (NotSupported on some vGPU/MIG setups) must not stop the gate.
        let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
        let lists = [
            ("compute", dev.running_compute_processes()),
            ("graphics", dev.running_graphics_processes()),
        ];
        for (kind, list) in lists {
            match list {
                Ok(list) => {
                    for ProcessInfo {
                        pid, used_gpu_memory, ..
                    } in list
                    {
                        let used = match used_gpu_memory {
                            UsedGpuMemory::Used(b) => Some(b),
                            UsedGpuMemory::Unavailable => None,
                        };
                        // A process with both a compute and a graphics context is listed
                        // twice with the same total; keep one entry, the larger figure.
                        let entry = by_pid.entry(pid).or_insert(None);
                        *entry = (*entry).max(used);
                    }
                }
                Err(e) => {
                    tracing::debug!(gpu = index, kind, error = %e, "cannot list GPU processes");
                }
            }
        }
        let mut processes: Vec<GpuProcess> = by_pid
            .into_iter()
            .map(|(pid, used_bytes)| GpuProcess {
                pid,
                used_bytes,
                // Fails for pids outside our PID namespace; the pid alone still helps.
                name: self.nvml.sys_process_name(pid, 256).ok().filter(|n| !n.is_empty()),
            })
            .collect();
        processes.sort_by(|a, b| b.used_bytes.cmp(&a.used_bytes).then(a.pid.cmp(&b.pid)));

        Ok(Reading {
            device: GpuDevice { index, uuid, name },
            total_bytes: mem.total,
            used_bytes: mem.used,
            free_bytes: mem.free,
            processes,
        })
    }
}

impl GpuProbe for NvmlProbe {
    fn readings(&self) -> Result<Vec<Reading>, ProbeError> {
        let count = self.nvml.device_count().map_err(|e| ProbeError::Nvml {
            what: "device_count".to_owned(),
            source: Arc::new(e),
        })?;
        (0..count).map(|i| self.read_device(i)).collect()
    }

    // Reads only the selected device, so a fault on another GPU of the host (GpuLost, say)
    // does not fail a gate that does not care about it.
    fn reading(&self, selector: &DeviceSelector) -> Result<Reading, ProbeError> {
        let count = self.nvml.device_count().map_err(|e| ProbeError::Nvml {
            what: "device_count".to_owned(),
            source: Arc::new(e),
        })?;
        for i in 0..count {
            let selected = match selector {
                DeviceSelector::Index(n) => *n == i,
                DeviceSelector::Uuid(u) => self
                    .nvml
                    .device_by_index(i)
                    .and_then(|d| d.uuid())
                    .is_ok_and(|uuid| uuid.eq_ignore_ascii_case(u)),
            };
            if selected {
                return self.read_device(i);
            }
        }
        Err(not_found(selector, &self.readings()?))
    }

    fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }
}
