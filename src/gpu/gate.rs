//! The gate: wait until a GPU has enough free memory, or say why it never did.
use std::time::Duration;

use tokio::time::Instant;

use super::probe::{GpuProbe, ProbeError, Reading};
use super::report::GateReport;
use super::select::DeviceSelector;
use super::size::format_bytes;
use super::{EXIT_BAD_ARGS, EXIT_GATE_TIMEOUT, EXIT_NO_GPU};

/// Why the gate did not pass.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GateError {
    /// The GPU could not be read (no driver, NVML failure, no such device).
    #[error(transparent)]
    Probe(#[from] ProbeError),
    /// The memory did not become free in time. Carries the last reading, so the message says
    /// who still holds the memory.
    #[error(
        "timed out after {}: {} has {} free of {}, needs {}; {}",
        humantime::format_duration(for_humans(*waited)),
        last.label(),
        format_bytes(last.free_bytes),
        format_bytes(last.total_bytes),
        format_bytes(*min_free_bytes),
        last.holders()
    )]
    Timeout {
        /// How long the gate waited.
        waited: Duration,
        /// The threshold.
        min_free_bytes: u64,
        /// The last reading of the device.
        last: Box<Reading>,
    },
    /// The threshold is larger than the device: waiting can never succeed.
    #[error(
        "{} has {} in total, so {} free can never be reached; lower the minimum free memory \
         (or use a lower precision)",
        reading.label(),
        format_bytes(reading.total_bytes),
        format_bytes(*min_free_bytes)
    )]
    Impossible {
        /// The threshold.
        min_free_bytes: u64,
        /// The reading that showed the device's total.
        reading: Box<Reading>,
    },
}

impl GateError {
    /// The exit code `gpu gate` uses for this error (see [`super::EXIT_GATE_TIMEOUT`] etc.).
    pub fn exit_code(&self) -> i32 {
        match self {
            GateError::Probe(_) => EXIT_NO_GPU,
            GateError::Timeout { .. } => EXIT_GATE_TIMEOUT,
            GateError::Impossible { .. } => EXIT_BAD_ARGS,
        }
    }
}

/// Rounds a wait to what a person wants to read: whole seconds, or tenths below 10 s.
fn for_humans(d: Duration) -> Duration {
    if d >= Duration::from_secs(10) {
        Duration::from_secs(d.as_secs())
    } else {
        Duration::from_millis(d.as_millis() as u64 / 100 * 100)
    }
}

/// The shortest pause between polls: a zero interval would spin on the driver.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Polls `probe` until the selected device has at least `min_free_bytes` free, calling
/// `on_progress` with every reading (the caller decides how often to tell the user).
///
/// Returns the report of the reading that passed, with how long it waited. Fails at once if
/// the probe fails or `min_free_bytes` exceeds the device's total; fails with the last
/// reading once `timeout` has passed without enough free memory. The last poll happens at
/// the deadline, so a release just before it still passes.
pub async fn wait_for_free<P: GpuProbe + ?Sized>(
    probe: &P,
    selector: &DeviceSelector,
    min_free_bytes: u64,
    timeout: Duration,
    poll_interval: Duration,
    mut on_progress: impl FnMut(&Reading),
) -> Result<GateReport, GateError> {
    let interval = poll_interval.max(MIN_POLL_INTERVAL);
    let start = Instant::now();
    let deadline = start.checked_add(timeout);
    loop {
        let reading = probe.reading(selector)?;
        if min_free_bytes > reading.total_bytes {
            return Err(GateError::Impossible {
                min_free_bytes,
                reading: Box::new(reading),
            });
        }
        on_progress(&reading);
        let now = Instant::now();
        let waited = now - start;
        if reading.free_bytes >= min_free_bytes {
            tracing::info!(
                gpu = reading.device.index,
                free_bytes = reading.free_bytes,
                min_free_bytes,
                waited_millis = waited.as_millis() as u64,
                "GPU gate passed"
            );
            return Ok(reading.to_report(min_free_bytes, waited));
        }
        let sleep_for = match deadline {
            Some(d) if now >= d => {
                tracing::warn!(
                    gpu = reading.device.index,
                    free_bytes = reading.free_bytes,
                    min_free_bytes,
                    "GPU gate timed out"
                );
                return Err(GateError::Timeout {
                    waited,
                    min_free_bytes,
                    last: Box::new(reading),
                });
            }
            Some(d) => interval.min(d - now),
            // A timeout too large to add to the clock is as good as none.
            None => interval,
        };
        tracing::debug!(
            gpu = reading.device.index,
            free_bytes = reading.free_bytes,
            min_free_bytes,
            "GPU gate waiting"
        );
        tokio::time::sleep(sleep_for).await;
    }
}
