//! `kubectl vidi logs NAME [--attempt N] [-f]`: the Vidi container's log, attempt by attempt
//! (each attempt is its own pod, labelled `vidi.dev/job` and `vidi.dev/attempt`).
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
        return Err(Error::NoPod {
            namespace,
            name,
            phase: job.status.as_ref().map(|s| s.phase).unwrap_or_default().to_string(),
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

/// Follows the log of attempt `attempt` (default: the latest) until its container ends, writing
/// each line to `out` as it comes.
pub async fn follow(
    client: &Client,
    namespace: &str,
    name: &str,
    attempt: Option<u32>,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Error> {
    let job = get_job(client, namespace, name).await?;
    let Some((_, pod)) = chosen(client, &job, attempt).await?.pop() else {
        return Ok(());
    };
    let pod_name = pod.name_any();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = LogParams {
        container: Some(VIDI_CONTAINER.into()),
        follow: true,
        ..LogParams::default()
    };
    let io_error = |source| Error::Log {
        namespace: namespace.into(),
        pod: pod_name.clone(),
        source,
    };
    let stream = api.log_stream(&pod_name, &params).await.map_err(|source| Error::Api {
        what: format!("following the log of pod {namespace}/{pod_name}"),
        source,
    })?;
    let mut lines = stream.lines();
    while let Some(line) = lines.try_next().await.map_err(io_error)? {
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            r => r.map_err(io_error)?,
        }
    }
    Ok(())
}
