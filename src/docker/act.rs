//! Act: the planner's co-tenant writes as journal writes plus `docker stop`/`start` or the
//! user's shell commands.
//!
//! The journal write comes first when suspending (so a crash right after the stop still knows
//! how to undo it) and last when restoring (so a crash right before the start still knows it
//! must be done). Nothing counts because it was asked for: a stop is done when the engine shows
//! the container not running (or `check` fails), a restore when it shows it running again (and
//! healthy, where it has a health check) or `check` passes. A hold whose stop was not seen done
//! (`Hold::stopped` false: the operator died while stopping) may still have a stop in flight
//! in the engine or a process still shutting down; restoring it first stops it again and waits
//! until it is down, so the late stop cannot land on the restarted co-tenant.
use std::path::Path;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{ContainerState, HealthStatusEnum};
use bollard::query_parameters::{InspectContainerOptions, StartContainerOptions, StopContainerOptionsBuilder};

use crate::api::{CommandCoTenant, ReleaseHook, ReleaseMark, ReleaseState, WorkloadKind};
use crate::plan::{CoTenantId, JobKey};
use crate::release::{self, Call};

use super::events::Event;
use super::journal::{Hold, Journal};
use super::{DockerError, commands, engine_message, status_code};

/// How often the engine is asked again while waiting for a container to go or come back.
const INSPECT_EVERY: Duration = Duration::from_millis(200);
/// After `docker stop` returned, how long the engine may take to show the container down.
const DOWN_GRACE: Duration = Duration::from_secs(10);

/// Where the co-tenant writes go.
pub struct CoTenantActor<'a> {
    pub docker: &'a Docker,
    pub state_dir: &'a Path,
    /// How long `docker stop` waits for a co-tenant container before killing it.
    pub stop_timeout: Duration,
    /// How long a restarted container may take to run (and be healthy) before its restore
    /// counts as failed.
    pub start_timeout: Duration,
    pub progress: &'a (dyn Fn(&Event) + Send + Sync),
}

/// What the engine shows of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shown {
    running: bool,
    /// Frozen by `docker pause` (counted as running: it still holds its GPU memory).
    paused: bool,
    started_at: Option<String>,
    exit_code: Option<i64>,
    /// `None` without a health check.
    health: Option<HealthStatusEnum>,
}

impl Shown {
    fn from(state: ContainerState) -> Self {
        Shown {
            // A paused or restarting container still holds its CUDA context.
            running: state.running.unwrap_or(false)
                || state.paused.unwrap_or(false)
                || state.restarting.unwrap_or(false),
            paused: state.paused.unwrap_or(false),
            started_at: state.started_at,
            exit_code: state.exit_code,
            health: state
                .health
                .and_then(|h| h.status)
                .filter(|s| !matches!(s, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE)),
        }
    }

    /// Running, and healthy where it has a health check.
    fn up(&self) -> bool {
        self.running && self.health.as_ref().is_none_or(|h| *h == HealthStatusEnum::HEALTHY)
    }
}

impl CoTenantActor<'_> {
    /// Invariant 1: record holder and original state, then stop (and see it down).
    pub async fn hold(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        holders: &[JobKey],
        original_replicas: i32,
    ) -> Result<(), DockerError> {
        let command = match target.kind {
            WorkloadKind::Command => Some(self.command(journal, target)?),
            _ => None,
        };
        let existing = journal.hold(target.kind, &target.name);
        // A co-tenant that was not running needs only the record (restored to 0 = left alone).
        let stopped = existing.map_or(original_replicas <= 0, |h| h.stopped);
        // A paused container still holds its GPU memory, so it is stopped like a running one;
        // the record says to pause it again once it is back.
        let paused = match existing {
            Some(h) => h.paused,
            None if target.kind == WorkloadKind::Container && original_replicas > 0 => {
                self.inspect(target).await?.is_some_and(|s| s.paused)
            }
            None => false,
        };
        journal.set_hold(Hold {
            kind: target.kind,
            name: target.name.clone(),
            holders: holders.iter().map(ToString::to_string).collect(),
            original_replicas,
            command,
            stopped,
            stop_failed: false,
            paused,
            released: None,
        });
        journal.save(self.state_dir)?;
        if original_replicas > 0 {
            self.stop(journal, target).await?;
        }
        Ok(())
    }

    /// Stops a held co-tenant (again) and waits until the world shows it down.
    pub async fn stop(&self, journal: &mut Journal, target: &CoTenantId) -> Result<(), DockerError> {
        if journal.hold(target.kind, &target.name).is_some_and(|h| h.stopped) {
            journal.set_stopped(target.kind, &target.name, false);
            journal.save(self.state_dir)?;
        }
        match target.kind {
            WorkloadKind::Command => {
                let cmd = self.command(journal, target)?;
                if let Err(e) = self.stop_command(&cmd).await {
                    journal.set_stop_failed(target.kind, &target.name);
                    journal.save(self.state_dir)?;
                    return Err(e);
                }
            }
            _ => self.stop_container(target).await?,
        }
        journal.set_stopped(target.kind, &target.name, true);
        journal.save(self.state_dir)
    }

    /// An in-place hold: holders, original state and the release mark are recorded (fsync'ed)
    /// before any call is made; nothing is stopped.
    pub fn hold_in_place(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        holders: &[JobKey],
        original_replicas: i32,
        mark: &ReleaseMark,
    ) -> Result<(), DockerError> {
        let command = match target.kind {
            WorkloadKind::Command => Some(self.command(journal, target)?),
            _ => None,
        };
        journal.set_hold(Hold {
            kind: target.kind,
            name: target.name.clone(),
            holders: holders.iter().map(ToString::to_string).collect(),
            original_replicas,
            command,
            // No stop of ours is in flight.
            stopped: true,
            stop_failed: false,
            paused: false,
            released: Some(mark.clone()),
        });
        journal.save(self.state_dir)
    }

    /// Makes the release call of a hold whose mark still says `Requested`, and records the
    /// answer: `Released` on a 2xx, `Refused` (the planner then stops it) on anything else.
    pub async fn call_release(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        hook: &ReleaseHook,
    ) -> Result<(), DockerError> {
        let Some(mut hold) = journal.hold(target.kind, &target.name).cloned() else {
            return Ok(());
        };
        let Some(mark) = hold.released.as_mut().filter(|m| m.state == ReleaseState::Requested) else {
            return Ok(());
        };
        (self.progress)(&Event::CoTenantReleasing {
            co_tenant: target.to_string(),
            url: hook.url.clone(),
        });
        mark.state = match release::call(hook, Call::Release).await {
            Ok(_) => {
                (self.progress)(&Event::CoTenantReleased {
                    co_tenant: target.to_string(),
                });
                ReleaseState::Released
            }
            Err(e) => {
                (self.progress)(&Event::CoTenantReleaseRefused {
                    co_tenant: target.to_string(),
                    error: e.to_string(),
                });
                ReleaseState::Refused { why: e.to_string() }
            }
        };
        journal.set_hold(hold);
        journal.save(self.state_dir)
    }

    /// The in-place release failed or did not free the memory: drop the mark and stop it, as an
    /// ordinary hold (the mark goes in the same journal write that says a stop is under way).
    pub async fn fall_back(&self, journal: &mut Journal, target: &CoTenantId) -> Result<(), DockerError> {
        if let Some(mut hold) = journal.hold(target.kind, &target.name).cloned() {
            hold.released = None;
            hold.stopped = true;
            journal.set_hold(hold);
        }
        self.stop(journal, target).await
    }

    /// Restores an in-place hold: the resume call (when `call`), then the record goes. One that
    /// someone stopped meanwhile (no call) is started like any restored co-tenant. On error the
    /// record stays, for the next round or `docker recover`.
    pub async fn resume(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        hook: &ReleaseHook,
        call: bool,
        replicas: i32,
    ) -> Result<(), DockerError> {
        if !call && replicas > 0 {
            return self.restore(journal, target, replicas).await.map(|_| ());
        }
        if call {
            match release::call(hook, Call::Resume).await {
                Ok(_) => (self.progress)(&Event::CoTenantResumed {
                    co_tenant: target.to_string(),
                    url: hook.resume_url.clone(),
                }),
                Err(e) => return Err(DockerError::Other(format!("resuming {target}: {e}"))),
            }
        }
        journal.drop_hold(target.kind, &target.name);
        journal.save(self.state_dir)
    }

    /// Another job still holds it: only the holder list changes.
    pub fn release(&self, journal: &mut Journal, target: &CoTenantId, holders: &[JobKey]) -> Result<(), DockerError> {
        if let Some(mut h) = journal.hold(target.kind, &target.name).cloned() {
            h.holders = holders.iter().map(ToString::to_string).collect();
            journal.set_hold(h);
            journal.save(self.state_dir)?;
        }
        Ok(())
    }

    /// Invariant 2: bring it back to `replicas` (1 running, 0 stopped), see it so, then drop
    /// the record. On error the record stays, for the next round or `docker recover`. False
    /// when the container was removed while held: the record goes, but nothing was restored.
    pub async fn restore(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        replicas: i32,
    ) -> Result<bool, DockerError> {
        let mut back = true;
        let hold = journal.hold(target.kind, &target.name);
        let stopped = hold.is_none_or(|h| h.stopped);
        let stop_failed = hold.is_some_and(|h| h.stop_failed);
        let paused = hold.is_some_and(|h| h.paused);
        match target.kind {
            WorkloadKind::Command => {
                let cmd = self.command(journal, target)?;
                if replicas > 0 {
                    if let Err(e) = self.start_command(&cmd, stopped, stop_failed).await {
                        // Whatever stop this restore ran has ended: the next try finds none
                        // in flight.
                        if !stopped && !stop_failed {
                            journal.set_stop_failed(target.kind, &target.name);
                            journal.save(self.state_dir)?;
                        }
                        return Err(e);
                    }
                } else if commands::check(&cmd.name, &cmd.check).await? {
                    // It was not running before the job: back to not running.
                    self.stop_command(&cmd).await?
                }
            }
            _ if replicas > 0 => {
                back = self.start_container(target, stopped).await?;
                if back && paused {
                    self.pause_container(target).await?;
                }
            }
            _ => {
                if self.inspect(target).await?.is_some_and(|s| s.running) {
                    self.stop_container(target).await?
                }
            }
        }
        journal.drop_hold(target.kind, &target.name);
        journal.save(self.state_dir)?;
        Ok(back)
    }

    fn command(&self, journal: &Journal, target: &CoTenantId) -> Result<CommandCoTenant, DockerError> {
        journal
            .hold(target.kind, &target.name)
            .and_then(|h| h.command.clone())
            .or_else(|| {
                journal
                    .spec
                    .co_tenants
                    .commands
                    .iter()
                    .find(|c| c.name == target.name)
                    .cloned()
            })
            .ok_or_else(|| DockerError::Command {
                name: target.name.clone(),
                message:
                    "the journal has no commands for it; start it by hand, then run `vidi-operator docker recover`"
                        .into(),
            })
    }

    async fn inspect(&self, target: &CoTenantId) -> Result<Option<Shown>, DockerError> {
        match self
            .docker
            .inspect_container(&target.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => Ok(Some(Shown::from(c.state.unwrap_or_default()))),
            Err(e) if status_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(DockerError::api(format!("inspecting {target}"), e)),
        }
    }

    /// `docker stop`, then wait until the engine shows it not running.
    async fn stop_container(&self, target: &CoTenantId) -> Result<(), DockerError> {
        (self.progress)(&Event::CoTenantStopping {
            co_tenant: target.to_string(),
            timeout_seconds: Some(self.stop_timeout.as_secs()),
            command: None,
        });
        let began = Instant::now();
        let secs = i32::try_from(self.stop_timeout.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(secs).build();
        match self.docker.stop_container(&target.name, Some(opts)).await {
            // 304: already stopped; 404: gone. Either way it no longer runs.
            Ok(()) => {}
            Err(e) if matches!(status_code(&e), Some(304 | 404)) => {}
            Err(e) => return Err(DockerError::api(format!("stopping {target}"), e)),
        }
        let since = Instant::now();
        loop {
            match self.inspect(target).await? {
                None => return Ok(()),
                Some(s) if !s.running => {
                    (self.progress)(&Event::CoTenantStopped {
                        co_tenant: target.to_string(),
                        elapsed_seconds: began.elapsed().as_secs_f64(),
                    });
                    return Ok(());
                }
                Some(_) if since.elapsed() > DOWN_GRACE => {
                    return Err(DockerError::Other(format!(
                        "{target} still runs {} after `docker stop` returned",
                        humantime::format_duration(DOWN_GRACE)
                    )));
                }
                Some(_) => tokio::time::sleep(INSPECT_EVERY).await,
            }
        }
    }

    /// Brings a container back: down first if a stop may still be in flight, then started,
    /// then seen running (and healthy) twice in a row with the same start time. False when it
    /// was removed while held: there is nothing to start.
    async fn start_container(&self, target: &CoTenantId, stop_seen_done: bool) -> Result<bool, DockerError> {
        let Some(shown) = self.inspect(target).await? else {
            // Removed while held: nothing left to start; keeping the hold would only make every
            // later run fail on it.
            (self.progress)(&Event::CoTenantGone {
                co_tenant: target.to_string(),
                detail: None,
            });
            return Ok(false);
        };
        if shown.running && !stop_seen_done {
            // The stop that was interrupted may still be under way in the engine (`docker stop`
            // goes on after its client is gone): let it finish, or finish it, before starting.
            (self.progress)(&Event::CoTenantStopUnfinished {
                co_tenant: target.to_string(),
            });
            self.stop_container(target).await?;
        }
        let began = Instant::now();
        let started = if shown.running && stop_seen_done {
            // Someone started it while it was held; it is back already.
            false
        } else {
            (self.progress)(&Event::CoTenantStarting {
                co_tenant: target.to_string(),
                command: None,
            });
            match self
                .docker
                .start_container(&target.name, None::<StartContainerOptions>)
                .await
            {
                Ok(()) => true,
                Err(e) if status_code(&e) == Some(304) => false,
                Err(e) if status_code(&e) == Some(404) => {
                    (self.progress)(&Event::CoTenantGone {
                        co_tenant: target.to_string(),
                        detail: Some(engine_message(&e)),
                    });
                    return Ok(false);
                }
                Err(e) => return Err(DockerError::api(format!("starting {target} again"), e)),
            }
        };
        self.wait_container_up(target).await?;
        (self.progress)(&Event::CoTenantStarted {
            co_tenant: target.to_string(),
            elapsed_seconds: began.elapsed().as_secs_f64(),
            already_running: !started,
            healthy: shown.health.is_some(),
        });
        Ok(true)
    }

    /// `docker pause` a restored container that was paused before the job, then see it paused.
    async fn pause_container(&self, target: &CoTenantId) -> Result<(), DockerError> {
        match self.docker.pause_container(&target.name).await {
            Ok(()) => {}
            // 409: already paused (someone paused it meanwhile, or a restore before a crash).
            Err(e) if status_code(&e) == Some(409) => {}
            Err(e) => return Err(DockerError::api(format!("pausing {target} again"), e)),
        }
        match self.inspect(target).await? {
            Some(s) if s.paused => {
                (self.progress)(&Event::CoTenantPausedAgain {
                    co_tenant: target.to_string(),
                });
                Ok(())
            }
            _ => Err(DockerError::Other(format!(
                "{target} was paused before the job, but does not show paused after `docker pause`"
            ))),
        }
    }

    async fn wait_container_up(&self, target: &CoTenantId) -> Result<(), DockerError> {
        let since = Instant::now();
        let mut last: Option<Shown> = None;
        loop {
            let Some(now) = self.inspect(target).await? else {
                return Err(DockerError::Other(format!(
                    "{target} was removed while it was being started"
                )));
            };
            if now.up() && last.as_ref().is_some_and(|l| l.up() && l.started_at == now.started_at) {
                return Ok(());
            }
            if since.elapsed() > self.start_timeout {
                let state = if now.running {
                    match &now.health {
                        Some(h) => format!("running but {h}"),
                        None => "running but not steadily".to_string(),
                    }
                } else {
                    format!("exited with code {}", now.exit_code.unwrap_or(-1))
                };
                return Err(DockerError::Other(format!(
                    "{target} did not come back within --start-timeout {}: {state}",
                    humantime::format_duration(self.start_timeout)
                )));
            }
            last = Some(now);
            tokio::time::sleep(INSPECT_EVERY).await;
        }
    }

    /// Runs the co-tenant's `stop` or `start` command (`what`), saying so.
    async fn run_command(&self, cmd: &CommandCoTenant, what: &str) -> Result<(), DockerError> {
        let co_tenant = format!("Command {}", cmd.name);
        (self.progress)(&match what {
            "stop" => Event::CoTenantStopping {
                co_tenant,
                timeout_seconds: None,
                command: Some(cmd.stop.clone()),
            },
            _ => Event::CoTenantStarting {
                co_tenant,
                command: Some(cmd.start.clone()),
            },
        });
        let script = if what == "stop" { &cmd.stop } else { &cmd.start };
        commands::run(&cmd.name, what, script, &commands::log_path(self.state_dir, &cmd.name)).await
    }

    /// Runs `stop` and waits until `check` says the process is gone.
    async fn stop_command(&self, cmd: &CommandCoTenant) -> Result<(), DockerError> {
        if cmd.check.trim().is_empty() {
            return Err(no_check(cmd));
        }
        let began = Instant::now();
        self.run_command(cmd, "stop").await?;
        commands::wait_gone(&cmd.name, &cmd.check, cmd.stop_timeout()).await?;
        (self.progress)(&Event::CoTenantStopped {
            co_tenant: format!("Command {}", cmd.name),
            elapsed_seconds: began.elapsed().as_secs_f64(),
        });
        Ok(())
    }

    /// Brings a process back: if it still runs although its stop was not seen done, stop it
    /// (again) and wait until it is gone, so the new one does not race the old one for its
    /// port; then `start` and wait until `check` passes. If it runs and its latest stop ended
    /// without bringing it down (`stop_failed`), nothing of ours is in flight: it was never
    /// stopped, and is left running as it was.
    async fn start_command(
        &self,
        cmd: &CommandCoTenant,
        stop_seen_done: bool,
        stop_failed: bool,
    ) -> Result<(), DockerError> {
        if cmd.check.trim().is_empty() {
            return Err(no_check(cmd));
        }
        let co_tenant = format!("Command {}", cmd.name);
        let running = commands::check(&cmd.name, &cmd.check).await?;
        let began = Instant::now();
        let started = |already_running: bool| Event::CoTenantStarted {
            co_tenant: co_tenant.clone(),
            elapsed_seconds: began.elapsed().as_secs_f64(),
            already_running,
            healthy: false,
        };
        if running && stop_seen_done {
            // Someone started it while it was held; it is back already.
            commands::wait_up(&cmd.name, &cmd.check, cmd.start_timeout()).await?;
            (self.progress)(&started(true));
            return Ok(());
        }
        if running && stop_failed {
            (self.progress)(&Event::CoTenantNeverStopped { co_tenant });
            return Ok(());
        }
        if running {
            (self.progress)(&Event::CoTenantStopUnfinished {
                co_tenant: co_tenant.clone(),
            });
            self.stop_command(cmd).await?;
        }
        self.run_command(cmd, "start").await?;
        commands::wait_up(&cmd.name, &cmd.check, cmd.start_timeout()).await?;
        (self.progress)(&started(false));
        Ok(())
    }
}

fn no_check(cmd: &CommandCoTenant) -> DockerError {
    DockerError::Command {
        name: cmd.name.clone(),
        message: "has no `check` command (a journal from an older version?), so whether it runs cannot be \
                  seen; bring it back by hand, then remove its entry from the journal"
            .into(),
    }
}
