//! Observe: the Docker host and the journal as a planner [`Snapshot`].
//!
//! Containers map to co-tenants with replicas 1 (running) or 0 (stopped); holders and original
//! replicas come from the journal, which plays the part of Kubernetes' annotations. Attempts are
//! the journal's records, with the state their containers show now.
use std::collections::HashMap;
use std::path::Path;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerStateStatusEnum, ContainerSummaryStateEnum};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt as _;
use jiff::Timestamp;

use crate::api::{FieldError, JOB_LABEL, Runtime, WorkloadKind, release, selection};
use crate::plan::{Attempt, AttemptState, CoTenant, CoTenantId, JobKey, JobView, Selection, Snapshot};

use super::journal::{AttemptEnd, Exit, Journal};
use super::{DockerError, JOB_NAMESPACE, commands, status_code};

pub use crate::api::contract::RESULT_FILE;
/// The contract's compact result is at most this big (Kubernetes' termination-message limit).
const COMPACT_MAX: usize = 4096;

pub fn job_key(name: &str) -> JobKey {
    JobKey::new(JOB_NAMESPACE, name)
}

/// A container as the planner needs it.
#[derive(Clone, Debug)]
struct Seen {
    id: String,
    name: String,
    labels: HashMap<String, String>,
    running: bool,
}

fn summary_running(state: Option<ContainerSummaryStateEnum>) -> bool {
    // A paused or restarting container still holds its CUDA context.
    matches!(
        state,
        Some(
            ContainerSummaryStateEnum::RUNNING
                | ContainerSummaryStateEnum::PAUSED
                | ContainerSummaryStateEnum::RESTARTING
        )
    )
}

async fn list_containers(docker: &Docker) -> Result<Vec<Seen>, DockerError> {
    let list = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).build()))
        .await
        .map_err(|e| DockerError::api("listing containers", e))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let name = c.names?.into_iter().next()?.trim_start_matches('/').to_string();
            Some(Seen {
                id: c.id.unwrap_or_default(),
                name,
                labels: c.labels.unwrap_or_default(),
                running: summary_running(c.state),
            })
        })
        .collect())
}

/// Whether the container `name` runs; `None` when it does not exist.
pub async fn container_running(docker: &Docker, name: &str) -> Result<Option<bool>, DockerError> {
    match docker.inspect_container(name, None::<InspectContainerOptions>).await {
        Ok(c) => {
            let state = c.state.unwrap_or_default();
            Ok(Some(
                state.running.unwrap_or(false) || state.paused.unwrap_or(false) || state.restarting.unwrap_or(false),
            ))
        }
        Err(e) if status_code(&e) == Some(404) => Ok(None),
        Err(e) => Err(DockerError::api(format!("inspecting container {name}"), e)),
    }
}

/// Inputs of one look at the world.
pub struct Look<'a> {
    pub docker: &'a Docker,
    pub journal: &'a Journal,
    pub gpu_total_bytes: Option<u64>,
    /// A reading of the job's GPU now (with `--gpus all`): its free memory, and the processes
    /// whose memory is counted to their containers for `policy: Minimal`.
    pub gpu: Option<crate::gpu::Reading>,
    pub dry_run: bool,
    /// Cancelled or recovering: only what the journal holds matters.
    pub deleting: bool,
}

/// Builds the planner's snapshot.
pub async fn snapshot(look: Look<'_>) -> Result<Snapshot, DockerError> {
    let Look {
        docker,
        journal,
        gpu_total_bytes,
        gpu,
        dry_run,
        deleting,
    } = look;
    let measured = gpu.as_ref().map(super::gpu_usage::per_container).unwrap_or_default();
    let me = job_key(&journal.job);
    let spec = &journal.spec;
    let mut problems: Vec<FieldError> = Vec::new();
    let mut co_tenants: Vec<CoTenant> = Vec::new();

    let container = |name: &str, running: bool, selection: Selection, opted_in: bool| {
        held_co_tenant(journal, WorkloadKind::Container, name, running, selection, opted_in)
    };

    if !deleting {
        let all = list_containers(docker).await?;
        let sel = selection::compile(spec.co_tenants.selector.as_ref());
        let mut picked: Vec<(usize, Selection)> = Vec::new();
        for (i, r) in spec.co_tenants.refs.iter().enumerate() {
            match all.iter().position(|c| c.name == r.name) {
                Some(at) if all[at].labels.contains_key(JOB_LABEL) => problems.push(FieldError::new(
                    format!("spec.coTenants.refs[{i}].name"),
                    format!(
                        "{} is a Vidi container of job {}, not a co-tenant",
                        r.name, all[at].labels[JOB_LABEL]
                    ),
                )),
                Some(at) => picked.push((at, Selection::Ref(i))),
                None => problems.push(FieldError::new(
                    format!("spec.coTenants.refs[{i}].name"),
                    format!("no container named {:?} on this host (see `docker ps -a`)", r.name),
                )),
            }
        }
        for (at, c) in all.iter().enumerate() {
            // Vidi's own containers are never co-tenants, whatever their labels say.
            if c.labels.contains_key(JOB_LABEL) || picked.iter().any(|(p, _)| *p == at) {
                continue;
            }
            if sel.as_ref().is_some_and(|s| selection::matches(s, &c.labels)) {
                picked.push((at, Selection::Selector));
            }
        }
        for (at, selection) in picked {
            let c = &all[at];
            let opted_in = c.labels.get(crate::api::YIELD_LABEL).is_some_and(|v| v == "true");
            let mut co = container(&c.name, c.running, selection, opted_in);
            // What the driver shows it holding, else what its label declares, else unknown.
            co.gpu_memory_bytes = measured
                .get(&c.id)
                .copied()
                .filter(|b| *b > 0)
                .or_else(|| selection::declared_gpu_memory(None, Some(&c.labels), co.replicas));
            co.yield_priority = selection::yield_priority(None, Some(&c.labels));
            let declared = match selection {
                Selection::Ref(i) => spec.co_tenants.refs[i].release.clone(),
                _ => None,
            };
            co.release_hook = match declared {
                Some(hook) => Some(hook),
                None => {
                    let labels: std::collections::BTreeMap<String, String> =
                        c.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                    release::from_marks(&labels, "label").unwrap_or_else(|errors| {
                        problems.extend(
                            errors
                                .into_iter()
                                .map(|e| FieldError::new(format!("container {}: {}", c.name, e.field), e.message)),
                        );
                        None
                    })
                }
            };
            co_tenants.push(co);
        }
        for (i, cmd) in spec.co_tenants.commands.iter().enumerate() {
            match command(journal, &cmd.name, Some(&cmd.check), Selection::Ref(i)).await {
                Ok(mut c) => {
                    c.gpu_memory_bytes = cmd
                        .gpu_memory
                        .as_ref()
                        .and_then(crate::api::parse_quantity_bytes)
                        .map(|b| b * u64::try_from(c.replicas.max(0)).unwrap_or(0));
                    c.release_hook = cmd.release.clone();
                    co_tenants.push(c)
                }
                // Not held yet: a check that cannot run is the job's problem, refused like any
                // other before anything is stopped. Once held, it is an error to retry.
                Err(DockerError::Command { message, .. })
                    if journal.hold(WorkloadKind::Command, &cmd.name).is_none() =>
                {
                    problems.push(FieldError::new(format!("spec.coTenants.commands[{i}].check"), message))
                }
                Err(e) => return Err(e),
            }
        }
        problems.extend(host_path_problems(journal));
    }
    // Everything the journal holds, even if the spec no longer selects it.
    for h in &journal.holds {
        let listed = co_tenants.iter().any(|c| c.id.kind == h.kind && c.id.name == h.name);
        if listed {
            continue;
        }
        match h.kind {
            WorkloadKind::Command => {
                let check = h.command.as_ref().map(|c| c.check.as_str());
                co_tenants.push(command(journal, &h.name, check, Selection::HeldOnly).await?);
            }
            _ => {
                // A held container someone removed shows as stopped; restoring it then fails
                // with a clear message and the hold is dropped.
                let running = container_running(docker, &h.name).await?.unwrap_or(false);
                co_tenants.push(container(&h.name, running, Selection::HeldOnly, false));
            }
        }
    }

    let attempts = attempts(docker, journal).await?;
    Ok(Snapshot {
        runtime: Runtime::Docker,
        job: JobView {
            key: me,
            generation: None,
            created: journal.created,
            spec: spec.clone(),
            status: journal.status.clone(),
            deleting,
        },
        co_tenants,
        attempts,
        rivals: Vec::new(),
        problems,
        gpu_total_bytes,
        gpu_free_bytes: gpu.as_ref().map(|r| r.free_bytes),
        placement: Default::default(),
        dry_run,
        now: Timestamp::now(),
    })
}

/// A co-tenant as the planner sees it: replicas 1 while it runs, except while this job's stop
/// of it has not been seen done yet (it is on its way down: "scaled to 0", still live). Once the
/// stop was seen done, running again means someone else started it: the planner suspends it
/// again and says so.
fn held_co_tenant(
    journal: &Journal,
    kind: WorkloadKind,
    name: &str,
    running: bool,
    selection: Selection,
    opted_in: bool,
) -> CoTenant {
    let hold = journal.hold(kind, name);
    let stopping = hold.is_some_and(|h| !h.stopped);
    CoTenant {
        id: CoTenantId {
            kind,
            namespace: String::new(),
            name: name.to_string(),
        },
        replicas: if stopping { 0 } else { i32::from(running) },
        live_pods: u32::from(running),
        holders: hold
            .map(|h| h.holders.iter().filter_map(|k| JobKey::parse(k)).collect())
            .unwrap_or_default(),
        original_replicas: hold.map(|h| h.original_replicas),
        opted_in,
        selection,
        last_scaled_by: None,
        revision: None,
        gpu_memory_bytes: None,
        yield_priority: 1,
        release_hook: None,
        released: hold.and_then(|h| h.released.clone()),
    }
}

/// A command co-tenant, running while its `check` passes.
async fn command(
    journal: &Journal,
    name: &str,
    check: Option<&str>,
    selection: Selection,
) -> Result<CoTenant, DockerError> {
    let running = match check.filter(|c| !c.trim().is_empty()) {
        Some(script) => commands::check(name, script).await?,
        // Only a journal from before `check` was required: taken to run unless held.
        None => journal.hold(WorkloadKind::Command, name).is_none(),
    };
    Ok(held_co_tenant(
        journal,
        WorkloadKind::Command,
        name,
        running,
        selection,
        true,
    ))
}

/// Host paths that do not exist: Docker would create an empty root-owned directory in their
/// place and Vidi would fail much later with a confusing error.
fn host_path_problems(journal: &Journal) -> Vec<FieldError> {
    let spec = &journal.spec;
    let mut problems = Vec::new();
    let mut need = |field: &str, path: Option<&String>, dir: bool| {
        let Some(path) = path else { return };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() == dir => {}
            Ok(_) => problems.push(FieldError::new(
                field,
                format!("{path} is not a {}", if dir { "directory" } else { "file" }),
            )),
            Err(e) => problems.push(FieldError::new(field, format!("{path}: {e}"))),
        }
    };
    need("spec.video.hostPath", spec.video.host_path.as_ref(), false);
    need(
        "spec.model.weights.hostPath",
        spec.model.weights.host_path.as_ref(),
        true,
    );
    need(
        "spec.model.hfCache.hostPath",
        spec.model.hf_cache.as_ref().and_then(|c| c.host_path.as_ref()),
        true,
    );
    if let Some(path) = spec.output.as_ref().and_then(|o| o.host_path.as_ref()) {
        problems
            .extend(output_problem(std::path::Path::new(path)).map(|why| FieldError::new("spec.output.hostPath", why)));
    }
    problems
}

/// Why the output directory could not be used (it is created only when Vidi starts, after the
/// co-tenants were stopped): a file in its place, or a file where one of its parents would be.
/// None when it is a directory or the nearest existing parent is one.
fn output_problem(path: &std::path::Path) -> Option<String> {
    for at in path.ancestors() {
        match std::fs::metadata(at) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) if at == path => return Some(format!("{} is a file, not a directory", path.display())),
            Ok(_) => {
                return Some(format!(
                    "{} cannot be created: {} is a file, not a directory",
                    path.display(),
                    at.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Some(format!("{}: {e}", at.display())),
        }
    }
    None
}

async fn attempts(docker: &Docker, journal: &Journal) -> Result<Vec<Attempt>, DockerError> {
    let mut out = Vec::new();
    for rec in &journal.attempts {
        let state = match &rec.end {
            Some(end) => finished(end),
            None => match docker
                .inspect_container(&rec.name, None::<InspectContainerOptions>)
                .await
            {
                // A container of that name that vidi-operator did not create is not this
                // attempt: as if it had never been created (the new one will fail on its name).
                Ok(c) if !is_ours(&c, &journal.job) => continue,
                Ok(c) => match c.state.and_then(|s| s.status) {
                    Some(ContainerStateStatusEnum::CREATED) | None => AttemptState::Pending { waiting: None },
                    Some(ContainerStateStatusEnum::REMOVING) => AttemptState::Terminating,
                    // Exited ones get their end recorded by `record_ends` before a look.
                    Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD) => {
                        AttemptState::Terminating
                    }
                    Some(_) => AttemptState::Running,
                },
                // Recorded but never created (crash in between): the planner creates it again.
                Err(e) if status_code(&e) == Some(404) => continue,
                Err(e) => return Err(DockerError::api(format!("inspecting container {}", rec.name), e)),
            },
        };
        out.push(Attempt {
            number: rec.number,
            name: rec.name.clone(),
            node: None,
            precision: Some(rec.precision),
            gate_report: rec.gate_report.clone(),
            state,
        });
    }
    Ok(out)
}

fn finished(end: &AttemptEnd) -> AttemptState {
    AttemptState::Finished {
        gate: end.gate.as_ref().map(Into::into),
        main: end.main.as_ref().map(Into::into),
        reason: end.reason.clone(),
    }
}

/// Records in the journal how each exited attempt ended (exit code, OOMKilled, its result or
/// last log line), so the answer survives the container's removal. Returns whether any changed.
pub async fn record_ends(docker: &Docker, journal: &mut Journal) -> Result<bool, DockerError> {
    let mut changed = false;
    let output_dir = journal.output_dir.clone();
    for rec in journal.attempts.iter_mut().filter(|r| r.end.is_none()) {
        let c = match docker
            .inspect_container(&rec.name, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) if !is_ours(&c, &journal.job) => continue,
            Ok(c) => c,
            Err(e) if status_code(&e) == Some(404) => continue,
            Err(e) => return Err(DockerError::api(format!("inspecting container {}", rec.name), e)),
        };
        let state = c.state.unwrap_or_default();
        if !matches!(
            state.status,
            Some(ContainerStateStatusEnum::EXITED | ContainerStateStatusEnum::DEAD)
        ) {
            continue;
        }
        let exit_code = state.exit_code.unwrap_or(-1) as i32;
        let oom = state.oom_killed.unwrap_or(false);
        // The wrapper's termination message first (as Kubernetes would read it); without one,
        // result.json for a success and the last line on stderr for a failure.
        let message = match termination_log(&output_dir) {
            Some(m) => Some(m),
            None if exit_code == 0 => compact_result(&output_dir),
            None => last_log_line(docker, &rec.name).await,
        };
        rec.end = Some(AttemptEnd {
            gate: None,
            main: Some(Exit {
                exit_code,
                reason: Some(
                    if oom {
                        "OOMKilled"
                    } else if exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                ),
                message,
            }),
            reason: None,
        });
        changed = true;
    }
    Ok(changed)
}

/// Whether vidi-operator created this container for `job` (its `vidi.dev/job` label): only those
/// are ever stopped or removed as a job's attempts, whatever their name.
pub fn is_ours(c: &bollard::models::ContainerInspectResponse, job: &str) -> bool {
    c.config
        .as_ref()
        .and_then(|c| c.labels.as_ref())
        .and_then(|l| l.get(crate::api::JOB_LABEL))
        .is_some_and(|j| j == job)
}

/// The termination message the attempt left in the output dir, if any.
pub fn termination_log(output_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(output_dir.join(super::container::TERMINATION_LOG_FILE)).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.chars().take(COMPACT_MAX).collect())
}

/// The contract's compact result from `result.json`: the same shape, reduced to the fields the
/// planner reads so it stays within the 4 KiB a termination message may have.
pub fn compact_result(output_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(output_dir.join(RESULT_FILE)).ok()?;
    let Ok(serde_json::Value::Object(full)) = serde_json::from_str::<serde_json::Value>(&text) else {
        // Hand the raw text on: the planner reports it as unreadable, with serde's reason.
        return Some(text.chars().take(COMPACT_MAX).collect());
    };
    let keep: serde_json::Map<String, serde_json::Value> = full
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "segments" | "precision" | "videoSeconds" | "peakVramBytes" | "preview"
            )
        })
        .collect();
    serde_json::to_string(&keep).ok()
}

/// The last non-empty line Vidi printed on stderr (usually the exception that ended it), else
/// on stdout. The two streams are kept apart: Docker does not keep their relative order.
async fn last_log_line(docker: &Docker, name: &str) -> Option<String> {
    let opts = LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut logs = docker.logs(name, Some(opts));
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(Ok(chunk)) = logs.next().await {
        let to = if matches!(chunk, LogOutput::StdErr { .. }) {
            &mut err
        } else {
            &mut out
        };
        to.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    let last = |text: &str| -> Option<String> {
        text.lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .map(|l| l.chars().take(500).collect())
    };
    last(&err).or_else(|| last(&out))
}
