//! A scripted [`GpuProbe`] for tests: the gate's here, and the runtimes' (a Docker test can
//! raise free memory when it stops a co-tenant).
//!
//! Clones share state, so a test keeps one handle and gives another to the code under test:
//! ```
//! use vidi_operator::gpu::{GpuProbe, fake::{FakeProbe, GIB}};
//! let probe = FakeProbe::one(80 * GIB, 10 * GIB);
//! let handle = probe.clone();
//! handle.set_free(0, 75 * GIB);
//! assert_eq!(probe.readings().unwrap()[0].free_bytes, 75 * GIB);
//! ```
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::probe::{GpuProbe, ProbeError, Reading};
use super::report::{GpuDevice, GpuProcess};

/// One gibibyte, for writing fake sizes.
pub const GIB: u64 = 1 << 30;

type Step = Result<Vec<Reading>, ProbeError>;

#[derive(Debug)]
struct State {
    /// What every read returns once `script` is used up.
    current: Step,
    /// Steps to return one per read, before `current`; each becomes `current` when read.
    script: VecDeque<Step>,
    driver_version: Option<String>,
    reads: usize,
}

/// A probe whose readings the test decides. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
pub struct FakeProbe {
    state: Arc<Mutex<State>>,
}

/// A fake device: index, name `Fake GPU {index}`, UUID `GPU-0000…{index}`, no processes.
pub fn device(index: u32, total_bytes: u64, free_bytes: u64) -> Reading {
    Reading {
        device: GpuDevice {
            index,
            uuid: format!("GPU-00000000-0000-0000-0000-{index:012x}"),
            name: format!("Fake GPU {index}"),
        },
        total_bytes,
        used_bytes: total_bytes.saturating_sub(free_bytes),
        free_bytes,
        processes: Vec::new(),
    }
}

/// A fake process holding `used_bytes`.
pub fn process(pid: u32, name: &str, used_bytes: u64) -> GpuProcess {
    GpuProcess {
        pid,
        used_bytes: Some(used_bytes),
        name: Some(name.to_owned()),
    }
}

impl FakeProbe {
    /// A probe that reports these devices until told otherwise.
    pub fn new(devices: Vec<Reading>) -> Self {
        FakeProbe {
            state: Arc::new(Mutex::new(State {
                current: Ok(devices),
                script: VecDeque::new(),
                driver_version: Some("000.00.00-fake".to_owned()),
                reads: 0,
            })),
        }
    }

    /// One device (index 0) with this much memory and this much of it free.
    pub fn one(total_bytes: u64, free_bytes: u64) -> Self {
        Self::new(vec![device(0, total_bytes, free_bytes)])
    }

    /// A probe that fails like a machine without an NVIDIA driver.
    pub fn no_driver() -> Self {
        let probe = Self::new(Vec::new());
        probe.fail_always(ProbeError::NoDriver {
            detail: "fake probe without a driver".to_owned(),
        });
        probe
    }

    // A test that panicked while holding the lock poisons it; the state is still usable
    // for the other assertions, so recover it instead of cascading panics.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the devices every later read returns (after any queued steps).
    pub fn set_devices(&self, devices: Vec<Reading>) {
        self.lock().current = Ok(devices);
    }

    /// Changes one device in place (after any queued steps); no-op if it does not exist.
    pub fn update(&self, index: u32, f: impl FnOnce(&mut Reading)) {
        if let Ok(devices) = &mut self.lock().current
            && let Some(r) = devices.iter_mut().find(|r| r.device.index == index)
        {
            f(r);
        }
    }

    /// Sets a device's free memory (used = total − free).
    pub fn set_free(&self, index: u32, free_bytes: u64) {
        self.update(index, |r| {
            r.free_bytes = free_bytes.min(r.total_bytes);
            r.used_bytes = r.total_bytes - r.free_bytes;
        });
    }

    /// Sets the processes a device lists.
    pub fn set_processes(&self, index: u32, processes: Vec<GpuProcess>) {
        self.update(index, |r| r.processes = processes);
    }

    /// Queues readings to return, one step per read, before the current state; the last
    /// step read stays the current state.
    pub fn then(&self, devices: Vec<Reading>) -> &Self {
        self.lock().script.push_back(Ok(devices));
        self
    }

    /// Queues one failed read.
    pub fn then_fail(&self, error: ProbeError) -> &Self {
        self.lock().script.push_back(Err(error));
        self
    }

    /// Makes every later read fail (after any queued steps).
    pub fn fail_always(&self, error: ProbeError) {
        self.lock().current = Err(error);
    }

    /// Sets what [`GpuProbe::driver_version`] returns.
    pub fn set_driver_version(&self, version: Option<String>) {
        self.lock().driver_version = version;
    }

    /// How many times the GPUs were read.
    pub fn reads(&self) -> usize {
        self.lock().reads
    }
}

impl GpuProbe for FakeProbe {
    fn readings(&self) -> Result<Vec<Reading>, ProbeError> {
        let mut s = self.lock();
        s.reads += 1;
        if let Some(step) = s.script.pop_front() {
            s.current = step;
        }
        s.current.clone()
    }

    fn driver_version(&self) -> Option<String> {
        self.lock().driver_version.clone()
    }
}
