//! `kubectl vidi logs NAME [--attempt N] [-f]`: the Vidi container's log, attempt by attempt
//! (each attempt is its own pod, labelled `vidi.dev/job` and `vidi.dev/attempt`).
use std::time::Duration;

use futures::{AsyncBufReadExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::{Api, Client, ResourceExt as _};
use serde::Serialize;

use super::{Error, get_job};
use crate::api::{ATTEMPT_LABEL, JOB_LABEL, VidiJob};
use crate::kube::pod::VIDI_CONTAINER;

/// The logs of a job's attempts, oldest first.
#[derive(Clone, Debug, Serialize)]
pub struct Logs {
    pub namespace: String,
    pub name: String,
    pub attempts: Vec<AttemptLog>,
}

/// One attempt's Vidi log, or why there is none.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttemptLog {
    pub attempt: u32,
    pub pod: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    /// Why the log could not be read (e.g. the container has not started: the GPU gate is
    /// still waiting for free memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

impl Logs {
    /// The logs as text, each attempt under a `==> attempt N (pod P) <==` line when there are
    /// several.
    pub fn text(&self) -> String {
        let headed = self.attempts.len() > 1;
        let mut out = String::new();
        for a in &self.attempts {
            if headed {
                out.push_str(&format!("==> attempt {} (pod {}) <==\n", a.attempt, a.pod));
            }
            match (&a.log, &a.unavailable) {
                (Some(log), _) => {
                    out.push_str(log);
                    if !log.is_empty() && !log.ends_with('\n') {
                        out.push('\n');
                    }
                }
                (None, Some(why)) => out.push_str(&format!("(no log: {why})\n")),
                (None, None) => {}
            }
        }
        out
    }
}

/// The attempt pods of a job, by attempt number (only pods the job owns).
pub async fn attempt_pods(client: &Client, job: &VidiJob) -> Result<Vec<(u32, Pod)>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{JOB_LABEL}={name}")))
        .await
        .map_err(|source| Error::Api {
            what: format!("listing the pods of VidiJob {namespace}/{name}"),
            source,
        })?;
    let mut pods: Vec<(u32, Pod)> = list
        .items
        .into_iter()
        .filter(|p| {
            job.metadata.uid.is_none()
                || p.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == job.metadata.uid.as_ref())
        })
        .filter_map(|p| {
            let n = p.labels().get(ATTEMPT_LABEL)?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    pods.sort_by_key(|(n, _)| *n);
    Ok(pods)
}

/// Picks attempt `attempt` (all of them when `None`).
async fn chosen(client: &Client, job: &VidiJob, attempt: Option<u32>) -> Result<Vec<(u32, Pod)>, Error> {
    let namespace = job.namespace().unwrap_or_default();
    let name = job.name_any();
    let pods = attempt_pods(client, job).await?;
    if pods.is_empty() {
        let phase = job.status.as_ref().map(|s| s.phase).unwrap_or_default();
        return Err(Error::NoPod {
            namespace,
            name,
            phase: phase.to_string(),
            ended: phase.is_terminal(),
        });
    }
    match attempt {
        None => Ok(pods),
        Some(n) => {
            let found = format!(
                "its pods are attempts {}",
                pods.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>().join(", ")
            );
            let one: Vec<_> = pods.into_iter().filter(|(k, _)| *k == n).collect();
            if one.is_empty() {
                return Err(Error::NoAttempt {
                    namespace,
                    name,
                    attempt: n,
                    found,
                });
            }
            Ok(one)
        }
    }
}

/// Reads the logs of one attempt, or of every attempt.
pub async fn logs(client: &Client, namespace: &str, name: &str, attempt: Option<u32>) -> Result<Logs, Error> {
    let job = get_job(client, namespace, name).await?;
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(VIDI_CONTAINER.into()),
        ..LogParams::default()
    };
    let mut attempts = Vec::new();
    for (n, pod) in chosen(client, &job, attempt).await? {
        let pod_name = pod.name_any();
        let (log, unavailable) = match api.logs(&pod_name, &params).await {
            Ok(text) => (Some(text), None),
            Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => (None, Some(s.message)),
            Err(source) => {
                return Err(Error::Api {
                    what: format!("reading the log of pod {namespace}/{pod_name}"),
                    source,
                });
            }
        };
        attempts.push(AttemptLog {
            attempt: n,
            pod: pod_name,
            log,
            unavailable,
        });
    }
    Ok(Logs {
        namespace: namespace.into(),
        name: name.into(),
        attempts,
    })
}

/// How long `follow` waits for a change of the job before it reads the job again anyway.
const FOLLOW_RECHECK: Duration = Duration::from_secs(30);
/// How soon `follow` looks again at a container that has not started, or for a pod that the job's
/// status already names.
const FOLLOW_RETRY: Duration = Duration::from_secs(1);

/// Follows the Vidi log, writing each line to `out` as it comes and what it waits for to
/// `progress` (one line per change).
///
/// With `attempt`, only that attempt, until its container ends. Without, the latest attempt, then
/// every later one (a retry is a new pod, headed `==> attempt N (pod P) <==`), until the job
/// has ended: a job still queued or suspending its co-tenants is waited for, as is a container
/// whose GPU gate still waits for free memory.
pub async fn follow(
    client: &Client,
    namespace: &str,
    name: &str,
    attempt: Option<u32>,
    out: &mut (dyn std::io::Write + Send),
    progress: &mut (dyn std::io::Write + Send),
) -> Result<(), Error> {
    let mut followed: Option<u32> = None;
    let mut told = String::new();
    loop {
        let job = get_job(client, namespace, name).await?;
        let next = match attempt {
            Some(_) if followed.is_some() => return Ok(()),
            Some(n) => chosen(client, &job, Some(n)).await?.pop(),
            // The latest attempt first; after it, each later one in turn (none skipped).
            None => {
                let mut pods = attempt_pods(client, &job).await?.into_iter();
                match followed {
                    None => pods.next_back(),
                    Some(f) => pods.find(|(n, _)| *n > f),
                }
            }
        };
        if let Some((n, pod)) = next {
            if followed.is_some() {
                write_line(
                    out,
                    &format!("==> attempt {n} (pod {}) <==", pod.name_any()),
                    namespace,
                    &pod,
                )?;
            }
            stream_attempt(client, &job, n, &pod, out, progress, &mut told).await?;
            followed = Some(n);
            continue;
        }
        let status = job.status.clone().unwrap_or_default();
        if status.phase.is_terminal() {
            return match followed {
                Some(_) => Ok(()),
                None => Err(Error::NoPod {
                    namespace: namespace.into(),
                    name: name.into(),
                    phase: status.phase.to_string(),
                    ended: true,
                }),
            };
        }
        let message = status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        tell(
            progress,
            &mut told,
            format!(
                "waiting for VidiJob {namespace}/{name} to start Vidi: {}{message}",
                status.phase
            ),
        );
        let started = move |j: &VidiJob| {
            j.status
                .as_ref()
                .is_some_and(|s| s.phase.is_terminal() || s.attempts > followed.unwrap_or(0))
        };
        if started(&job) {
            // The status names an attempt whose pod is not created yet, or not yet listed.
            tokio::time::sleep(FOLLOW_RETRY).await;
        } else {
            let api: Api<VidiJob> = Api::namespaced(client.clone(), namespace);
            let changed = kube::runtime::wait::await_condition(api, name, move |j: Option<&VidiJob>| {
                j.is_none_or(|j| started(j) || j.status != job.status)
            });
            if let Ok(Err(_)) = tokio::time::timeout(FOLLOW_RECHECK, changed).await {
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
        }
    }
}

/// Streams one attempt's log until its container ends. A container that has not started yet is
/// waited for; one that never will (its pod ended or is gone) is said so in place of its log.
async fn stream_attempt(
    client: &Client,
    job: &VidiJob,
    attempt: u32,
    pod: &Pod,
    out: &mut (dyn std::io::Write + Send),
    progress: &mut (dyn std::io::Write + Send),
    told: &mut String,
) -> Result<(), Error> {
    let namespace = &job.namespace().unwrap_or_default();
    let pod_name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(VIDI_CONTAINER.into()),
        follow: true,
        ..LogParams::default()
    };
    let stream = loop {
        match api.log_stream(&pod_name, &params).await {
            Ok(stream) => break stream,
            Err(kube::Error::Api(s)) if s.code == 400 || s.code == 404 => {
                // Read as the job's pods (a `list`, as the rest of this command reads pods).
                let now = attempt_pods(client, job)
                    .await?
                    .into_iter()
                    .find(|(_, p)| p.name_any() == pod_name);
                let ended = now
                    .as_ref()
                    .and_then(|(_, p)| p.status.as_ref()?.phase.as_deref())
                    .is_none_or(|phase| phase == "Succeeded" || phase == "Failed");
                if ended {
                    return write_line(out, &format!("(no log: {})", s.message), namespace, pod);
                }
                tell(
                    progress,
                    told,
                    format!(
                        "waiting for attempt {attempt}'s container to start (pod {pod_name}): {}",
                        s.message
                    ),
                );
                tokio::time::sleep(FOLLOW_RETRY).await;
            }
            Err(source) => {
                return Err(Error::Api {
                    what: format!("following the log of pod {namespace}/{pod_name}"),
                    source,
                });
            }
        }
    };
    let mut lines = stream.lines();
    while let Some(line) = lines
        .try_next()
        .await
        .map_err(|source| log_error(namespace, pod, source))?
    {
        write_line(out, &line, namespace, pod)?;
    }
    Ok(())
}

/// Writes one line and flushes it; a reader that went away (`| head`) ends the follow quietly.
fn write_line(out: &mut (dyn std::io::Write + Send), line: &str, namespace: &str, pod: &Pod) -> Result<(), Error> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|source| log_error(namespace, pod, source)),
    }
}

fn log_error(namespace: &str, pod: &Pod, source: std::io::Error) -> Error {
    Error::Log {
        namespace: namespace.into(),
        pod: pod.name_any(),
        source,
    }
}

/// Writes `line` to `progress` unless it is what was told last.
fn tell(progress: &mut (dyn std::io::Write + Send), told: &mut String, line: String) {
    if *told != line {
        let _ = writeln!(progress, "{line}");
        *told = line;
    }
}
