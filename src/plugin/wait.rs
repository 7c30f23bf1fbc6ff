//! `kubectl vidi wait NAME`: returns once the job has finished, whichever way: Succeeded (the
//! `Complete` condition) or Failed. Unlike `kubectl wait --for=condition=Complete`, a failed job
//! ends the wait at once. Follows the job with a watch, not by polling.
use std::time::Duration;

use futures::StreamExt as _;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use serde::Serialize;

use super::{Error, get_job};
use crate::api::{FailureReason, Phase, VidiJob};

/// How the job ended.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finished {
    pub namespace: String,
    pub name: String,
    /// Succeeded or Failed.
    pub phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The result's one-line summary, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

impl Finished {
    pub fn succeeded(&self) -> bool {
        self.phase == Phase::Succeeded
    }

    /// One line: `media/keynote: Succeeded in 4m12s: 2 segments: …` or
    /// `media/keynote: Failed (BadInput): …`.
    pub fn table(&self) -> String {
        let mut line = format!("{}/{}: {}", self.namespace, self.name, self.phase);
        if let Some(r) = self.reason {
            line.push_str(&format!(" ({r})"));
        }
        if let Some(d) = &self.duration {
            line.push_str(&format!(" in {d}"));
        }
        if let Some(s) = self.summary.as_ref().or(self.message.as_ref()) {
            line.push_str(&format!(": {s}"));
        }
        line + "\n"
    }
}

fn finished(job: &VidiJob) -> bool {
    job.status.as_ref().is_some_and(|s| s.phase.is_terminal())
}

/// Waits up to `timeout` for VidiJob `namespace/name` to reach Succeeded or Failed. A watch
/// that breaks is started again with backoff (as the controller's watches are); the error it
/// broke with is told if the timeout then passes.
pub async fn wait(client: &Client, namespace: &str, name: &str, timeout: Duration) -> Result<Finished, Error> {
    // A job that does not exist is an error now, not after the timeout.
    let job = get_job(client, namespace, name).await?;
    let job = if finished(&job) {
        job
    } else {
        let api: Api<VidiJob> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut last_error: Option<watcher::Error> = None;
        let mut listed = false;
        let done = async {
            while let Some(event) = events.next().await {
                match event {
                    Ok(Event::Apply(j) | Event::InitApply(j)) => {
                        listed = true;
                        if finished(&j) {
                            return Some(j);
                        }
                    }
                    Ok(Event::Delete(_)) => return None,
                    Ok(Event::Init) => listed = false,
                    // Listed again and it was not there: deleted while the watch was down.
                    Ok(Event::InitDone) if !listed => return None,
                    Ok(Event::InitDone) => {}
                    Err(e) => last_error = Some(e),
                }
            }
            None
        };
        match tokio::time::timeout(timeout, done).await {
            Ok(Some(job)) => job,
            Ok(None) => {
                return Err(Error::Deleted {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: phase(&job).to_string(),
                });
            }
            Err(_) => {
                let now = get_job(client, namespace, name).await.ok();
                return Err(Error::Timeout {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: now.as_ref().map(phase).unwrap_or(phase(&job)).to_string(),
                    waited: humantime::format_duration(timeout).to_string(),
                    watch: last_error
                        .map(|e| format!("; the watch kept failing: {e}"))
                        .unwrap_or_default(),
                });
            }
        }
    };
    let status = job.status.clone().unwrap_or_default();
    Ok(Finished {
        namespace: namespace.into(),
        name: name.into(),
        phase: status.phase,
        reason: status.reason,
        message: status.message,
        summary: status.result.map(|r| r.summary),
        duration: status.duration,
    })
}

fn phase(job: &VidiJob) -> Phase {
    job.status.as_ref().map(|s| s.phase).unwrap_or_default()
}
