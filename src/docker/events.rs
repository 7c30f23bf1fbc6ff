//! What a Docker run reports while it works, as typed events: the runtime says what happened,
//! the front end chooses how to show it (a live display in a terminal, one plain line per step
//! in a log, JSON Lines for programs; see `cli::progress`).
//!
//! `Display` is the plain line each event has always printed as, so a log reads the same
//! whichever front end wrote it. The serialized form (`{"event":"coTenantStopped",…}`) is the
//! JSON Lines format documented in docs/docker.md; renaming a variant or a field breaks it.
use std::fmt;
use std::sync::Arc;

use jiff::Timestamp;
use serde::Serialize;

use crate::api::Precision;
use crate::gpu::format_bytes;

/// Where a run's events go (the CLI renders them; tests collect them).
pub type Progress = Arc<dyn Fn(&Event) + Send + Sync>;

/// Why a run is restoring everything before its job ended normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum UnwindCause {
    /// An action failed; the error is reported once everything is restored.
    Failure,
    /// A signal (Ctrl-C, SIGTERM, SIGHUP).
    Cancelled,
}

/// `recovered the unfinished job a (pid 7): restored Container tts; stopped a-vidi-1`.
pub fn recovered_text(job: &str, pid: u32, restored: &[String], stopped: &[String]) -> String {
    let restored = if restored.is_empty() {
        "nothing to restore".to_string()
    } else {
        format!("restored {}", restored.join(", "))
    };
    let stopped = if stopped.is_empty() {
        String::new()
    } else {
        format!("; stopped {}", stopped.join(", "))
    };
    format!("recovered the unfinished job {job} (pid {pid}): {restored}{stopped}")
}

/// One step of a `docker run`, `docker recover` or `--dry-run`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Event {
    /// Another job holds this host's lock; the run waits for it.
    WaitingForLock {
        /// `job X (pid N)`, when the lock file says.
        owner: Option<String>,
    },
    /// An earlier run's unfinished journal is finished first.
    Recovering { job: String, pid: u32, started: Timestamp },
    /// That journal is finished: the co-tenants it restored and the Vidi containers it stopped
    /// (before the new job starts).
    Recovered {
        job: String,
        pid: u32,
        restored: Vec<String>,
        stopped: Vec<String>,
    },
    /// A planner notice: the same text the controller puts in a Kubernetes Event.
    Notice { warning: bool, message: String },
    /// What the job waits for while co-tenants stop (the planner's status message).
    Waiting { message: String },
    /// A co-tenant is being stopped: a container (`timeout_seconds` before the engine kills
    /// it) or a command co-tenant (its `stop` command).
    CoTenantStopping {
        co_tenant: String,
        timeout_seconds: Option<u64>,
        command: Option<String>,
    },
    /// The world shows the co-tenant down.
    CoTenantStopped { co_tenant: String, elapsed_seconds: f64 },
    /// A co-tenant is being brought back (its `start` command, for a command co-tenant).
    CoTenantStarting { co_tenant: String, command: Option<String> },
    /// The world shows the co-tenant back: started by the restore, or `already_running`
    /// because something else started it while it was held.
    CoTenantStarted {
        co_tenant: String,
        elapsed_seconds: f64,
        already_running: bool,
        healthy: bool,
    },
    /// A co-tenant is asked to free its GPU memory in place (its release hook).
    CoTenantReleasing { co_tenant: String, url: String },
    /// The release hook answered; the GPU gate checks that the memory really went free.
    CoTenantReleased { co_tenant: String },
    /// The release hook failed or refused: the co-tenant is stopped instead.
    CoTenantReleaseRefused { co_tenant: String, error: String },
    /// A co-tenant released in place was asked to resume (its resume hook) and answered.
    CoTenantResumed { co_tenant: String, url: Option<String> },
    /// A co-tenant still ran although its stop was not seen done: it is stopped fully first.
    CoTenantStopUnfinished { co_tenant: String },
    /// A command co-tenant whose stop failed still runs: it never stopped, and is left as it was.
    CoTenantNeverStopped { co_tenant: String },
    /// A container that was paused before the job is paused again after its restart.
    CoTenantPausedAgain { co_tenant: String },
    /// A held co-tenant was removed, so it cannot be started again.
    CoTenantGone { co_tenant: String, detail: Option<String> },
    /// The GPU gate begins: Vidi starts once this much GPU memory is free.
    GateWaiting { needed_bytes: u64 },
    /// One reading of the GPU while the gate waits (every poll; renderers choose what to show).
    GateReading {
        gpu: String,
        free_bytes: u64,
        needed_bytes: u64,
        holders: String,
    },
    /// Enough GPU memory is free.
    GatePassed {
        gpu: String,
        free_bytes: u64,
        needed_bytes: u64,
    },
    /// The gate gave up (timeout, no GPU); the attempt fails like `gpu gate` would.
    GateFailed { message: String },
    /// A result an earlier run left in the output directory was removed.
    OldResultRemoved { path: String },
    /// A Vidi container runs.
    VidiStarted {
        container: String,
        image: String,
        attempt: u32,
        precision: Precision,
        /// When `activeDeadlineSeconds` runs out, if the job has one.
        deadline: Option<Timestamp>,
    },
    /// A line Vidi printed.
    VidiOutput { container: String, line: String },
    /// A Vidi container exited (the planner's notice says what that means for the job).
    VidiExited {
        container: String,
        exit_code: i32,
        elapsed_seconds: Option<f64>,
    },
    /// A Vidi container could not be created or started.
    VidiStartFailed { attempt: u32, message: String },
    /// A Vidi container is being stopped (deadline, cancel, failure, recovery).
    VidiStopping { container: String },
    /// Everything is being restored before the job ended normally.
    Unwinding { cause: UnwindCause },
    /// A restore step failed; it is tried again.
    RestoreRetrying { error: String, retry_in_seconds: f64 },
    /// Restoring after a failure failed too; the journal is kept for `docker recover`.
    RestoreFailed { error: String },
    /// `--dry-run`: one line of what would be done.
    Planned { line: String },
}

impl Event {
    /// Whether the event says something went wrong or needs attention.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Event::Notice { warning: true, .. }
                | Event::CoTenantGone { .. }
                | Event::GateFailed { .. }
                | Event::VidiStartFailed { .. }
                | Event::RestoreRetrying { .. }
                | Event::RestoreFailed { .. }
        )
    }
}

fn secs(s: f64) -> String {
    format!("{s:.1}s")
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::WaitingForLock { owner } => write!(
                f,
                "waiting for {} to finish (one job per GPU host)",
                owner.as_deref().unwrap_or("another job")
            ),
            Event::Recovered {
                job,
                pid,
                restored,
                stopped,
            } => f.write_str(&recovered_text(job, *pid, restored, stopped)),
            Event::Recovering { job, pid, started } => write!(
                f,
                "found the unfinished job {job} (pid {pid}, started {started}); stopping its Vidi container and restoring what it holds"
            ),
            Event::Notice {
                warning: false,
                message,
            }
            | Event::Waiting { message } => f.write_str(message),
            Event::Notice { warning: true, message } => write!(f, "warning: {message}"),
            Event::CoTenantStopping {
                co_tenant,
                command: Some(script),
                ..
            } => write!(f, "stopping {co_tenant}: {script}"),
            Event::CoTenantStopping {
                co_tenant,
                timeout_seconds,
                command: None,
            } => match timeout_seconds {
                Some(t) => write!(
                    f,
                    "stopping {co_tenant} (up to {} before it is killed)",
                    humantime::format_duration(std::time::Duration::from_secs(*t))
                ),
                None => write!(f, "stopping {co_tenant}"),
            },
            Event::CoTenantStopped {
                co_tenant,
                elapsed_seconds,
            } => write!(f, "stopped {co_tenant} after {}", secs(*elapsed_seconds)),
            Event::CoTenantStarting {
                co_tenant,
                command: Some(script),
            } => write!(f, "starting {co_tenant}: {script}"),
            Event::CoTenantStarting {
                co_tenant,
                command: None,
            } => write!(f, "starting {co_tenant} again"),
            Event::CoTenantStarted {
                co_tenant,
                elapsed_seconds,
                already_running,
                healthy,
            } => write!(
                f,
                "{} {co_tenant} again{} after {}",
                if *already_running { "found" } else { "started" },
                if *healthy { " (healthy)" } else { "" },
                secs(*elapsed_seconds)
            ),
            Event::CoTenantReleasing { co_tenant, url } => write!(f, "releasing {co_tenant} in place: POST {url}"),
            Event::CoTenantReleased { co_tenant } => {
                write!(f, "{co_tenant} released its GPU memory (the gate checks it)")
            }
            Event::CoTenantReleaseRefused { co_tenant, error } => {
                write!(f, "{co_tenant} did not release ({error}); stopping it instead")
            }
            Event::CoTenantResumed { co_tenant, url } => match url {
                Some(url) => write!(f, "resumed {co_tenant} in place (POST {url})"),
                None => write!(f, "resumed {co_tenant} in place"),
            },
            Event::CoTenantPausedAgain { co_tenant } => write!(f, "paused {co_tenant} again, as it was before the job"),
            Event::CoTenantNeverStopped { co_tenant } => write!(
                f,
                "{co_tenant} still runs: its stop failed, so it never stopped; left running as it was"
            ),
            Event::CoTenantStopUnfinished { co_tenant } => write!(
                f,
                "{co_tenant} still runs and its stop was not seen done; stopping it fully before starting it again"
            ),
            Event::CoTenantGone { co_tenant, detail } => {
                write!(
                    f,
                    "warning: {co_tenant} no longer exists, so it cannot be started again"
                )?;
                match detail {
                    Some(d) => write!(f, " ({d})"),
                    None => Ok(()),
                }
            }
            Event::GateWaiting { needed_bytes } => {
                write!(f, "waiting until {} of GPU memory is free", format_bytes(*needed_bytes))
            }
            Event::GateReading {
                gpu,
                free_bytes,
                needed_bytes,
                holders,
            } => write!(
                f,
                "{gpu}: {} free, {} needed; {holders}",
                format_bytes(*free_bytes),
                format_bytes(*needed_bytes)
            ),
            Event::GatePassed {
                gpu,
                free_bytes,
                needed_bytes,
            } => write!(
                f,
                "{gpu}: {} free >= {} needed",
                format_bytes(*free_bytes),
                format_bytes(*needed_bytes)
            ),
            Event::GateFailed { message } => write!(f, "GPU gate failed: {message}"),
            Event::OldResultRemoved { path } => write!(f, "removed the earlier {path}"),
            Event::VidiStarted {
                container,
                image,
                deadline,
                ..
            } => {
                write!(f, "started {container} from {image}")?;
                match deadline {
                    Some(d) => write!(f, " (activeDeadlineSeconds ends at {d})"),
                    None => Ok(()),
                }
            }
            Event::VidiOutput { container, line } => write!(f, "[{container}] {line}"),
            Event::VidiExited {
                container,
                exit_code,
                elapsed_seconds,
            } => {
                write!(f, "{container} exited with code {exit_code}")?;
                match elapsed_seconds {
                    Some(s) => write!(f, " after {}", secs(*s)),
                    None => Ok(()),
                }
            }
            Event::VidiStartFailed { attempt, message } => {
                write!(f, "could not start Vidi attempt {attempt}: {message}")
            }
            Event::VidiStopping { container } => write!(f, "stopping the Vidi container {container}"),
            Event::Unwinding {
                cause: UnwindCause::Failure,
            } => f.write_str("something failed; restoring the co-tenants before giving up"),
            Event::Unwinding {
                cause: UnwindCause::Cancelled,
            } => f.write_str("cancelled: stopping Vidi and restoring the co-tenants"),
            Event::RestoreRetrying {
                error,
                retry_in_seconds,
            } => write!(
                f,
                "error: {error}; trying again in {}",
                humantime::format_duration(std::time::Duration::from_secs_f64(*retry_in_seconds))
            ),
            // Every error an unwind returns says that the journal is kept and what to do.
            Event::RestoreFailed { error } => write!(f, "error: restoring failed too: {error}"),
            Event::Planned { line } => f.write_str(line),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_tagged_camel_case_objects() {
        let e = Event::CoTenantStopped {
            co_tenant: "Container tts".into(),
            elapsed_seconds: 2.5,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "coTenantStopped", "coTenant": "Container tts", "elapsedSeconds": 2.5})
        );
        let e = Event::Unwinding {
            cause: UnwindCause::Cancelled,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"event": "unwinding", "cause": "cancelled"})
        );
    }

    #[test]
    fn plain_lines_read_as_before() {
        let stop = Event::CoTenantStopping {
            co_tenant: "Container tts".into(),
            timeout_seconds: Some(30),
            command: None,
        };
        assert_eq!(
            stop.to_string(),
            "stopping Container tts (up to 30s before it is killed)"
        );
        let reading = Event::GateReading {
            gpu: "GPU 0".into(),
            free_bytes: 3 << 30,
            needed_bytes: 20 << 30,
            holders: "held by pid 7".into(),
        };
        assert_eq!(
            reading.to_string(),
            "GPU 0: 3.0 GiB free, 20.0 GiB needed; held by pid 7"
        );
        assert!(
            Event::Notice {
                warning: true,
                message: "x".into()
            }
            .is_warning()
        );
    }
}
