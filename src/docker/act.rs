//! Act: the planner's co-tenant writes as journal writes plus `docker stop`/`start` or the
//! user's shell commands. The journal write always comes first when suspending (so a crash
//! right after the stop still knows how to undo it) and last when restoring (so a crash right
//! before the start still knows it must be done).
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{StartContainerOptions, StopContainerOptionsBuilder};

use crate::api::WorkloadKind;
use crate::plan::{CoTenantId, JobKey};

use super::journal::{Hold, Journal};
use super::{DockerError, commands, engine_message, status_code};

/// Where the co-tenant writes go.
pub struct CoTenantActor<'a> {
    pub docker: &'a Docker,
    pub state_dir: &'a Path,
    /// How long `docker stop` waits for a co-tenant before killing it.
    pub stop_timeout: Duration,
    pub progress: &'a (dyn Fn(&str) + Send + Sync),
}

impl CoTenantActor<'_> {
    /// Invariant 1: record holder and original state, then stop.
    pub async fn hold(
        &self,
        journal: &mut Journal,
        target: &CoTenantId,
        holders: &[JobKey],
        original_replicas: i32,
    ) -> Result<(), DockerError> {
        let command = match target.kind {
            WorkloadKind::Command => journal
                .spec
                .co_tenants
                .commands
                .iter()
                .find(|c| c.name == target.name)
                .cloned()
                .or_else(|| journal.hold(target.kind, &target.name).and_then(|h| h.command.clone())),
            _ => None,
        };
        journal.set_hold(Hold {
            kind: target.kind,
            name: target.name.clone(),
            holders: holders.iter().map(ToString::to_string).collect(),
            original_replicas,
            command,
        });
        journal.save(self.state_dir)?;
        // A co-tenant that was not running needs only the record (restored to 0 = left alone).
        if original_replicas > 0 {
            self.stop(journal, target).await?;
        }
        Ok(())
    }

    /// Stops a co-tenant (again).
    pub async fn stop(&self, journal: &Journal, target: &CoTenantId) -> Result<(), DockerError> {
        match target.kind {
            WorkloadKind::Command => {
                let Some(cmd) = journal.hold(target.kind, &target.name).and_then(|h| h.command.clone()) else {
                    return Err(DockerError::Command {
                        name: target.name.clone(),
                        message: "the journal has no stop command for it".into(),
                    });
                };
                (self.progress)(&format!("stopping {}: {}", target, cmd.stop));
                commands::run(&cmd.name, "stop", &cmd.stop).await
            }
            _ => {
                (self.progress)(&format!("stopping {target}"));
                let secs = i32::try_from(self.stop_timeout.as_secs()).unwrap_or(i32::MAX);
                let opts = StopContainerOptionsBuilder::default().t(secs).build();
                match self.docker.stop_container(&target.name, Some(opts)).await {
                    Ok(()) => Ok(()),
                    // 304: already stopped; 404: gone. Either way it no longer runs.
                    Err(e) if matches!(status_code(&e), Some(304 | 404)) => Ok(()),
                    Err(e) => Err(DockerError::api(format!("stopping {target}"), e)),
                }
            }
        }
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

    /// Invariant 2: start it again (if it ran before), then drop the record.
    pub async fn restore(&self, journal: &mut Journal, target: &CoTenantId, replicas: i32) -> Result<(), DockerError> {
        if replicas > 0 {
            match target.kind {
                WorkloadKind::Command => {
                    let hold = journal.hold(target.kind, &target.name);
                    let cmd = hold.and_then(|h| h.command.clone()).or_else(|| {
                        journal
                            .spec
                            .co_tenants
                            .commands
                            .iter()
                            .find(|c| c.name == target.name)
                            .cloned()
                    });
                    match cmd {
                        Some(cmd) => {
                            (self.progress)(&format!("starting {}: {}", target, cmd.start));
                            commands::run(&cmd.name, "start", &cmd.start).await?;
                        }
                        None => (self.progress)(&format!(
                            "warning: no start command recorded for {target}; start it by hand"
                        )),
                    }
                }
                _ => match self
                    .docker
                    .start_container(&target.name, None::<StartContainerOptions>)
                    .await
                {
                    Ok(()) => (self.progress)(&format!("started {target} again")),
                    Err(e) if status_code(&e) == Some(304) => {}
                    // Removed while held: nothing left to start; keeping the hold would only
                    // make every later run fail on it.
                    Err(e) if status_code(&e) == Some(404) => (self.progress)(&format!(
                        "warning: {target} no longer exists, so it cannot be started again ({})",
                        engine_message(&e)
                    )),
                    Err(e) => return Err(DockerError::api(format!("starting {target} again"), e)),
                },
            }
        }
        journal.drop_hold(target.kind, &target.name);
        journal.save(self.state_dir)
    }
}
