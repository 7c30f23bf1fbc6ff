//! One `docker run` (or `docker recover`): take the host lock, finish any unfinished journal,
//! then observe → `plan::next` → act until the job is finished, restoring everything on the
//! way out — also when cancelled (Ctrl-C, SIGTERM) or when an action fails.
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt as _;
use jiff::Timestamp;
use tokio::task::JoinHandle;

use crate::api::{JOB_LABEL, Phase, VidiJob, VidiJobStatus, WorkloadKind};
use crate::gpu::{DeviceSelector, GpuProbe, NvmlProbe, ProbeError};
use crate::plan::{self, Action, Decision, Severity, names, precision};

use super::act::CoTenantActor;
use super::container::VidiContainer;
use super::journal::Journal;
use super::lock::HostLock;
use super::observe::{self, Look};
use super::{DockerError, GpuMode, state_dir, status_code};

pub use super::events::Progress;
use super::events::{Event, UnwindCause};

/// How often to look again while nothing signals a change (co-tenant commands stopping).
const POLL: Duration = Duration::from_millis(300);
/// The longest wait on a running Vidi container before looking at the world again.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// How often a held command co-tenant's `check` runs while Vidi runs (containers are watched
/// through the engine's events instead).
const COMMAND_RECHECK: Duration = Duration::from_secs(1);
/// How long a restore keeps retrying what fails (an engine restarting, a co-tenant slow to come
/// back) before it gives up and leaves the journal for `docker recover`.
const UNWIND_PATIENCE: Duration = Duration::from_secs(300);
/// Added to twice the stop timeout for the engine client's request timeout.
const CLIENT_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// How `docker run` behaves (the CLI's flags).
#[derive(Clone, Debug)]
pub struct Options {
    pub state_dir: PathBuf,
    /// Image when `spec.model.image` is not set.
    pub vidi_image: String,
    pub gpus: GpuMode,
    /// Run the NVML gate before starting Vidi (with `GpuMode::All`).
    pub gate: bool,
    pub gate_timeout: Duration,
    /// How often the gate reads the GPU.
    pub gate_interval: Duration,
    /// `uid:gid` the Vidi container runs as.
    pub user: String,
    /// Wait for another job's lock (else fail at once).
    pub wait_for_lock: bool,
    /// `docker stop` timeout for co-tenant containers.
    pub stop_timeout: Duration,
    /// How long a restarted co-tenant container may take to run (and be healthy).
    pub start_timeout: Duration,
}

/// What a finished `docker run` reports.
#[derive(Debug)]
pub struct RunResult<C> {
    pub status: VidiJobStatus,
    /// Set when the run was cancelled (everything was restored first).
    pub cancelled: Option<C>,
}

/// What finishing an unfinished journal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub job: String,
    pub pid: u32,
    /// Co-tenants started again (or left stopped, if they were stopped before), e.g.
    /// `Container tts`.
    pub restored: Vec<String>,
    /// Vidi containers that were stopped.
    pub stopped: Vec<String>,
}

pub struct Session {
    pub(super) docker: Docker,
    pub(super) opts: Options,
    pub(super) progress: Progress,
    /// The GPU probe; NVML (opened when needed) unless a test gives a fake.
    probe: Option<Arc<dyn GpuProbe>>,
    /// Preflight starts a throwaway container with the GPU request (see `preflight`).
    pub(super) check_gpu_runtime: bool,
}

impl Session {
    pub fn new(docker: Docker, mut opts: Options, progress: Progress) -> Self {
        // The output dir under it is bind-mounted, and Docker takes only absolute sources.
        if let Ok(abs) = std::path::absolute(&opts.state_dir) {
            opts.state_dir = abs;
        }
        // A `docker stop` call lasts as long as the stop timeout: the client must not give up on
        // it first (bollard's default is 120 s), or "stopped" would be reported while the
        // engine is still stopping.
        let timeout = docker
            .timeout()
            .max(opts.stop_timeout.saturating_mul(2) + CLIENT_TIMEOUT_MARGIN);
        Session {
            docker: docker.with_timeout(timeout),
            opts,
            progress,
            probe: None,
            check_gpu_runtime: true,
        }
    }

    /// Skips preflight's trial of the engine's NVIDIA runtime: for tests that drive the GPU path
    /// with a fake probe on an engine without one.
    pub fn without_gpu_runtime_check(mut self) -> Self {
        self.check_gpu_runtime = false;
        self
    }

    /// Uses `probe` instead of NVML (tests: `gpu::fake::FakeProbe`).
    pub fn with_probe(mut self, probe: Arc<dyn GpuProbe>) -> Self {
        self.probe = Some(probe);
        self
    }

    pub(super) fn open_probe(&self) -> Result<Arc<dyn GpuProbe>, ProbeError> {
        match &self.probe {
            Some(p) => Ok(p.clone()),
            None => Ok(Arc::new(NvmlProbe::new()?)),
        }
    }

    pub(super) fn say(&self, event: Event) {
        (self.progress)(&event)
    }

    fn ensure_state_dir(&self) -> Result<(), DockerError> {
        Ok(state_dir::prepare(&self.opts.state_dir)?)
    }

    async fn lock(&self, job: &str) -> Result<HostLock, DockerError> {
        self.ensure_state_dir()?;
        let progress = self.progress.clone();
        let lock = HostLock::acquire(&self.opts.state_dir, job, self.opts.wait_for_lock, |owner| {
            progress(&Event::WaitingForLock {
                owner: owner.map(ToString::to_string),
            })
        })
        .await?;
        Ok(lock)
    }

    /// `docker recover`: finishes an unfinished journal, if any, and says what it restored.
    #[tracing::instrument(skip_all, fields(state_dir = %self.opts.state_dir.display()))]
    pub async fn recover(&self) -> Result<Option<Recovered>, DockerError> {
        let _lock = self.lock("recover").await?;
        self.finish_unfinished(false).await
    }

    /// Finishes an unfinished journal; `announce`: say what it did as an event (in `docker run`,
    /// before the new job's own lines; `docker recover` prints it as its result).
    async fn finish_unfinished(&self, announce: bool) -> Result<Option<Recovered>, DockerError> {
        let Some(journal) = Journal::load(&self.opts.state_dir)? else {
            return Ok(None);
        };
        self.say(Event::Recovering {
            job: journal.job.clone(),
            pid: journal.pid,
            started: journal.created,
        });
        let mut run = Run::new(self, journal, None);
        let (restored, stopped) = run.unwind().await?;
        let recovered = Recovered {
            job: run.journal.job.clone(),
            pid: run.journal.pid,
            restored,
            stopped,
        };
        if announce {
            self.say(Event::Recovered {
                job: recovered.job.clone(),
                pid: recovered.pid,
                restored: recovered.restored.clone(),
                stopped: recovered.stopped.clone(),
            });
        }
        Ok(Some(recovered))
    }

    /// `docker run --dry-run`: what would be stopped and run; changes nothing (no lock, no
    /// journal, no container).
    pub async fn dry_run(&self, job: &VidiJob) -> Result<VidiJobStatus, DockerError> {
        let name = job_name(job)?;
        if let Some(j) = Journal::load(&self.opts.state_dir)? {
            let held: Vec<String> = j.holds.iter().map(|h| format!("{} {}", h.kind, h.name)).collect();
            self.say(Event::Planned {
                line: format!(
                    "dry run: the unfinished job {} would be recovered first (it holds: {})",
                    j.job,
                    if held.is_empty() {
                        "nothing".into()
                    } else {
                        held.join(", ")
                    }
                ),
            });
        }
        let output_dir = self.output_dir_path(name, job);
        let journal = Journal::new(name, job.spec.clone(), output_dir.clone(), Timestamp::now());
        let gpu_total = self.gpu_total(job);
        let mut snap = observe::snapshot(Look {
            docker: &self.docker,
            journal: &journal,
            gpu_total_bytes: gpu_total,
            gpu: match job.spec.co_tenants.policy {
                crate::api::CoTenantPolicy::Minimal => self.gpu_reading(&job.spec),
                crate::api::CoTenantPolicy::All => None,
            },
            dry_run: true,
            deleting: false,
        })
        .await?;
        // The same preflight as a real run, so every problem is listed at once, and refused the
        // same way: once, as an error.
        let preflight = super::preflight::check(self, job, name).await;
        let admission = plan::admission_errors(&snap);
        add_new_fields(&mut snap.problems, preflight);
        add_new_fields(&mut snap.problems, admission);
        if !snap.problems.is_empty() {
            return Err(DockerError::Preflight {
                job: name.to_string(),
                problems: std::mem::take(&mut snap.problems),
            });
        }
        let decision = plan::next(&snap);
        for a in &decision.actions {
            if let Action::Notify(n) = a {
                self.say(notice(n.severity, &n.message));
            }
        }
        if decision.status.phase != Phase::Failed {
            let p = precision::first(job.spec.model.precision, gpu_total);
            let container_name = names::attempt(name, 1);
            let c = VidiContainer {
                job: name,
                attempt: 1,
                name: &container_name,
                image: self.image(job),
                precision: p,
                spec: &job.spec,
                output_dir: &output_dir,
                gpus: &self.opts.gpus,
                user: &self.opts.user,
            };
            for line in c.describe() {
                self.say(Event::Planned { line });
            }
            let gate = match (&self.opts.gpus, self.opts.gate) {
                (GpuMode::None, _) => None,
                (_, false) => {
                    Some("  gate: none (--no-gate): Vidi starts as soon as the co-tenants are stopped".into())
                }
                (_, true) => Some(format!(
                    "  gate: Vidi starts once {} of GPU memory is free (waits up to {}, --gate-timeout)",
                    crate::gpu::format_bytes(precision::min_free_bytes(&job.spec, p)),
                    humantime::format_duration(self.opts.gate_timeout)
                )),
            };
            if let Some(line) = gate {
                self.say(Event::Planned { line });
            }
        }
        Ok(decision.status)
    }

    /// `docker run`: runs the job to its end. `cancel` resolving (a signal) stops Vidi, restores
    /// every co-tenant and returns with `cancelled` set.
    #[tracing::instrument(skip_all, fields(job = job.metadata.name.as_deref().unwrap_or_default()))]
    pub async fn run<C>(&self, job: &VidiJob, cancel: impl Future<Output = C>) -> Result<RunResult<C>, DockerError> {
        let name = job_name(job)?;
        tokio::pin!(cancel);
        let lock = tokio::select! {
            lock = self.lock(name) => lock?,
            c = &mut cancel => return Ok(RunResult { status: VidiJobStatus::default(), cancelled: Some(c) }),
        };
        // Holding the lock proves whoever wrote a journal is dead: finish its work first.
        self.finish_unfinished(true).await?;
        // Anything that would make the job fail for sure is found before anything is stopped:
        // preflight's checks, and what the planner's first look would refuse (host paths that
        // are not there, refs to no container), so the job is refused once, with every problem.
        let mut problems = super::preflight::check(self, job, name).await;
        let unsaved = Journal::new(
            name,
            job.spec.clone(),
            self.output_dir_path(name, job),
            Timestamp::now(),
        );
        let first_look = observe::snapshot(Look {
            docker: &self.docker,
            journal: &unsaved,
            gpu_total_bytes: None,
            gpu: None,
            dry_run: true,
            deleting: false,
        })
        .await?;
        // What the planner would refuse it for (a selection that matches nothing, too), so it is
        // refused here once, with the rest, rather than failed after a first decision.
        add_new_fields(&mut problems, plan::admission_errors(&first_look));
        if !problems.is_empty() {
            return Err(DockerError::Preflight {
                job: name.to_string(),
                problems,
            });
        }
        // Containers of an earlier run of the same job would clash with this run's names.
        remove_job_containers(&self.docker, name).await?;
        // Only the path for now: the directory is prepared (and an earlier result removed) just
        // before a Vidi container starts, so a job that never gets that far touches nothing.
        let output_dir = self.output_dir_path(name, job);
        let gpu_total = self.gpu_total(job);
        let mut journal = Journal::new(name, job.spec.clone(), output_dir, Timestamp::now());
        journal.status.message = Some("accepted".into());
        journal.stop_timeout_seconds = Some(self.opts.stop_timeout.as_secs());
        journal.start_timeout_seconds = Some(self.opts.start_timeout.as_secs());
        journal.save(&self.opts.state_dir)?;
        let mut run = Run::new(self, journal, gpu_total);
        let outcome = {
            let drive = run.drive();
            tokio::pin!(drive);
            tokio::select! {
                r = &mut drive => Ok(r),
                c = &mut cancel => Err(c),
            }
        };
        let result = match outcome {
            Ok(Ok(mut status)) => {
                run.cleanup().await?;
                // On a host the preview is a file the user opens: give its full path.
                if let Some(r) = status.result.as_mut()
                    && let Some(name) = r.preview.take()
                {
                    r.preview = Some(run.journal.output_dir.join(name).display().to_string());
                }
                Ok(RunResult {
                    status,
                    cancelled: None,
                })
            }
            Ok(Err(e)) => {
                // The error itself is printed once, by the caller, when everything is restored.
                self.say(Event::Unwinding {
                    cause: UnwindCause::Failure,
                });
                if let Err(e2) = run.unwind().await {
                    self.say(Event::RestoreFailed { error: e2.to_string() });
                }
                Err(e)
            }
            Err(c) => {
                self.say(Event::Unwinding {
                    cause: UnwindCause::Cancelled,
                });
                run.unwind().await?;
                Ok(RunResult {
                    status: run.journal.status.clone(),
                    cancelled: Some(c),
                })
            }
        };
        drop(lock);
        result
    }

    pub(super) fn image<'a>(&'a self, job: &'a VidiJob) -> &'a str {
        job.spec.model.image.as_deref().unwrap_or(&self.opts.vidi_image)
    }

    pub(super) fn gpu_selector(job_spec: &crate::api::VidiJobSpec) -> DeviceSelector {
        // jobfile::parse has checked it; a bad one falls back to GPU 0 rather than panicking.
        job_spec
            .gpu
            .device
            .as_deref()
            .and_then(|d| d.parse().ok())
            .unwrap_or_default()
    }

    /// A reading of the job's GPU, with `--gpus all` and a working probe.
    fn gpu_reading(&self, spec: &crate::api::VidiJobSpec) -> Option<crate::gpu::Reading> {
        if self.opts.gpus == GpuMode::None {
            return None;
        }
        self.open_probe().ok()?.reading(&Self::gpu_selector(spec)).ok()
    }

    /// The GPU's total memory, so `precision: auto` starts at what fits. Absent without NVML.
    fn gpu_total(&self, job: &VidiJob) -> Option<u64> {
        if self.opts.gpus == GpuMode::None {
            return None;
        }
        let probe = self.open_probe().ok()?;
        probe
            .reading(&Self::gpu_selector(&job.spec))
            .ok()
            .map(|r| r.total_bytes)
    }

    pub(super) fn output_dir_path(&self, name: &str, job: &VidiJob) -> PathBuf {
        match job.spec.output.as_ref().and_then(|o| o.host_path.as_ref()) {
            Some(p) => PathBuf::from(p),
            None => self.opts.state_dir.join("jobs").join(name).join("output"),
        }
    }

    /// Creates the output dir; one the operator creates is made writable for the container's
    /// user. A `result.json` left by an earlier run or attempt is removed so it cannot pass for
    /// this one's, and so is the termination message.
    pub(super) fn prepare_output_dir(&self, dir: &Path) -> Result<(), DockerError> {
        let existed = dir.exists();
        // The default one, in the state directory, is shared like the rest of it.
        if dir.starts_with(&self.opts.state_dir) {
            state_dir::create_shared(dir)
        } else {
            std::fs::create_dir_all(dir)
        }
        .map_err(|e| DockerError::io("creating the output directory", dir, e))?;
        if !existed {
            make_writable_for(dir, &self.opts.user, state_dir::sudo_invoker())?;
        }
        let stale = dir.join(observe::RESULT_FILE);
        match std::fs::remove_file(&stale) {
            Ok(()) => self.say(Event::OldResultRemoved {
                path: stale.display().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DockerError::io("removing the earlier result", stale, e)),
        }
        remove_termination_log(dir)
    }
}

/// Adds the problems of another check whose fields `problems` does not name yet (two checks of
/// one field say the same thing twice); one check's own problems of a field are all kept (the
/// gate and the NVIDIA runtime are both `--gpus`).
fn add_new_fields(problems: &mut Vec<crate::api::FieldError>, more: Vec<crate::api::FieldError>) {
    let known: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
    problems.extend(more.into_iter().filter(|p| !known.contains(&p.field)));
}

/// The job's name (`jobfile::parse` guarantees one).
fn job_name(job: &VidiJob) -> Result<&str, DockerError> {
    job.metadata
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| DockerError::Other("metadata.name: expected the job's name; it is missing".into()))
}

/// The container runs as `user` (default 1000:1000), not as the operator's user: the new output
/// directory must be writable by it.
/// - Run through sudo (`invoker`: the uid and gid that ran it), the directory goes to that user
///   and is opened up for the container's: they can read and remove what Vidi wrote there
///   (removing needs the directory, not the files).
/// - Root without sudo hands it to the container's user.
/// - Anyone else opens it up.
fn make_writable_for(dir: &Path, user: &str, invoker: Option<(u32, u32)>) -> Result<(), DockerError> {
    use std::os::unix::fs::PermissionsExt as _;
    let ids = user.split_once(':').map_or((user, None), |(u, g)| (u, Some(g)));
    let uid = ids.0.parse::<u32>().ok();
    let gid = ids.1.and_then(|g| g.parse::<u32>().ok());
    let open_up = || {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(|e| DockerError::io("opening up the output directory", dir, e))
    };
    let hand_to = |owner: Option<u32>, group: Option<u32>| {
        std::os::unix::fs::chown(dir, owner, group)
            .map_err(|e| DockerError::io("handing over the output directory", dir, e))
    };
    match invoker {
        Some((u, g)) if state_dir::is_root() => {
            hand_to(Some(u), Some(g))?;
            if uid == Some(u) { Ok(()) } else { open_up() }
        }
        None if state_dir::is_root() && uid.is_some() => hand_to(uid, gid),
        _ if uid != Some(state_dir::effective_uid()) => open_up(),
        _ => Ok(()),
    }
}

pub(super) fn remove_termination_log(dir: &Path) -> Result<(), DockerError> {
    let path = dir.join(super::container::TERMINATION_LOG_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DockerError::io("removing the earlier termination message", path, e)),
    }
}

/// Removes every container of job `name` (stopping it first if it runs).
async fn remove_job_containers(docker: &Docker, name: &str) -> Result<Vec<String>, DockerError> {
    let filters: HashMap<String, Vec<String>> = [("label".to_string(), vec![format!("{JOB_LABEL}={name}")])].into();
    let list = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .map_err(|e| DockerError::api("listing Vidi containers", e))?;
    let mut removed = Vec::new();
    for c in list {
        let Some(id) = c.id else { continue };
        let cname = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_else(|| id.clone());
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        match docker.remove_container(&id, Some(opts)).await {
            Ok(()) => removed.push(cname),
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(DockerError::api(format!("removing container {cname}"), e)),
        }
    }
    Ok(removed)
}

fn notice(severity: Severity, message: &str) -> Event {
    Event::Notice {
        warning: severity == Severity::Warning,
        message: message.to_string(),
    }
}

/// The state of one job being driven.
pub(super) struct Run<'s> {
    pub(super) s: &'s Session,
    pub(super) journal: Journal,
    gpu_total: Option<u64>,
    /// Log streams of started Vidi containers, to drain before reading how they ended.
    pub(super) logs: Vec<(String, JoinHandle<()>)>,
    /// When the last look began (events from then on can change what it saw).
    looked_at: Timestamp,
    /// When `activeDeadlineSeconds` runs out, once the job has started (for the progress).
    pub(super) deadline: Option<Timestamp>,
    /// When each attempt's container was started by this run (for the progress).
    pub(super) vidi_started: HashMap<u32, std::time::Instant>,
    /// Held containers found removed when they were to be restored: their records went, but
    /// nothing was restored, and nothing may say it was.
    gone: Vec<plan::CoTenantId>,
    /// The job's closing notice ("finished; every co-tenant restored; …"), held back while a
    /// restore of that decision failed: said once the retried restores are seen done.
    held_back: Option<(Severity, String)>,
}

impl<'s> Run<'s> {
    fn new(s: &'s Session, journal: Journal, gpu_total: Option<u64>) -> Self {
        Run {
            s,
            journal,
            gpu_total,
            logs: Vec::new(),
            looked_at: Timestamp::now(),
            deadline: None,
            vidi_started: HashMap::new(),
            gone: Vec::new(),
            held_back: None,
        }
    }

    /// The planner's words, unless a held container was found removed: then "every co-tenant
    /// restored" names what could not be.
    fn tell(&self, message: &str) -> String {
        if self.gone.is_empty() {
            return message.to_string();
        }
        let gone: Vec<String> = self.gone.iter().map(ToString::to_string).collect();
        message.replace(
            plan::ALL_RESTORED,
            &format!("{} except {} (removed while held)", plan::ALL_RESTORED, gone.join(", ")),
        )
    }

    /// The planner's status, its message told as [`Run::tell`] says.
    fn told(&self, st: &VidiJobStatus) -> VidiJobStatus {
        let mut st = st.clone();
        st.message = st.message.as_deref().map(|m| self.tell(m));
        st
    }

    /// The journal keeps the timeouts the job was run with, so `docker recover` waits as long
    /// as the run would have.
    fn actor(&self) -> CoTenantActor<'s> {
        let secs = |s: Option<u64>, default: Duration| s.map_or(default, Duration::from_secs);
        CoTenantActor {
            docker: &self.s.docker,
            state_dir: &self.s.opts.state_dir,
            stop_timeout: secs(self.journal.stop_timeout_seconds, self.s.opts.stop_timeout),
            start_timeout: secs(self.journal.start_timeout_seconds, self.s.opts.start_timeout),
            progress: &*self.s.progress,
        }
    }

    pub(super) fn save(&self) -> Result<(), DockerError> {
        self.journal.save(&self.s.opts.state_dir)
    }

    async fn look(&mut self, deleting: bool) -> Result<Decision, DockerError> {
        // Let the log stream of an ended container finish first, so its last lines are printed
        // before the outcome.
        let mut still = Vec::new();
        for (name, handle) in std::mem::take(&mut self.logs) {
            if handle.is_finished() || !matches!(observe::container_running(&self.s.docker, &name).await?, Some(true)) {
                let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
            } else {
                still.push((name, handle));
            }
        }
        self.logs = still;
        self.looked_at = Timestamp::now();
        let running: Vec<u32> = self
            .journal
            .attempts
            .iter()
            .filter(|a| a.end.is_none())
            .map(|a| a.number)
            .collect();
        if observe::record_ends(&self.s.docker, &mut self.journal).await? {
            self.save()?;
            for a in self.journal.attempts.iter().filter(|a| running.contains(&a.number)) {
                if let Some(main) = a.end.as_ref().and_then(|e| e.main.as_ref()) {
                    self.s.say(Event::VidiExited {
                        container: a.name.clone(),
                        exit_code: main.exit_code,
                        elapsed_seconds: self.vidi_started.get(&a.number).map(|t| t.elapsed().as_secs_f64()),
                    });
                }
            }
        }
        let snap = observe::snapshot(Look {
            docker: &self.s.docker,
            journal: &self.journal,
            gpu_total_bytes: self.gpu_total,
            // Read only while the job may still choose whom to yield.
            gpu: match self.journal.status.phase {
                Phase::Pending | Phase::Queued
                    if !deleting && self.journal.spec.co_tenants.policy == crate::api::CoTenantPolicy::Minimal =>
                {
                    self.s.gpu_reading(&self.journal.spec)
                }
                _ => None,
            },
            dry_run: false,
            deleting,
        })
        .await?;
        Ok(plan::next(&snap))
    }

    /// Observe → plan → act until the job is finished (or stays Pending because of
    /// `spec.suspend`).
    async fn drive(&mut self) -> Result<VidiJobStatus, DockerError> {
        let mut said: Option<String> = None;
        // Restores that failed (a port taken, the engine away, a `start` that failed): tried
        // again, as the unwind would, for up to UNWIND_PATIENCE; the job keeps its own outcome.
        let mut failing_since: Option<std::time::Instant> = None;
        let mut pause = Duration::from_millis(500);
        loop {
            let decision = self.look(false).await?;
            let mut errors = Vec::new();
            let acted = self.apply(&decision, &mut errors).await?;
            if acted || self.journal.status != self.told(&decision.status) {
                self.journal.status = self.told(&decision.status);
                self.save()?;
            }
            tracing::info!(phase = %decision.status.phase, message = decision.status.message.as_deref().unwrap_or_default(), "planned");
            if !errors.is_empty() {
                let since = *failing_since.get_or_insert_with(std::time::Instant::now);
                let error = errors.remove(0);
                if since.elapsed() >= UNWIND_PATIENCE {
                    // The caller unwinds once more, then keeps the journal for `recover`.
                    return Err(error);
                }
                self.s.say(Event::RestoreRetrying {
                    error: error.to_string(),
                    retry_in_seconds: pause.as_secs_f64(),
                });
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
            failing_since = None;
            pause = Duration::from_millis(500);
            if let Some((severity, message)) = self.held_back.take() {
                self.s.say(notice(severity, &message));
            }
            let st = &decision.status;
            // Lines the notices do not cover: still waiting for a co-tenant to stop. In the
            // decision that stops them the planner cannot know `docker stop` already waited.
            let stopped_now = decision.actions.iter().any(|a| {
                matches!(
                    a,
                    Action::Hold { .. } | Action::Resuspend { .. } | Action::FallBack { .. }
                )
            });
            if st.phase == Phase::Suspending && st.message != said && !stopped_now {
                if let Some(m) = &st.message {
                    self.s.say(Event::Waiting { message: m.clone() });
                }
                said = st.message.clone();
            }
            if st.phase.is_terminal() || (self.journal.spec.suspend && st.phase == Phase::Pending) {
                return Ok(self.told(&decision.status));
            }
            if !acted {
                self.wait(decision.requeue_after).await;
            }
        }
    }

    /// Stops Vidi and restores everything the journal holds (the planner with `deleting`),
    /// then removes the journal. Returns the co-tenants restored and Vidi containers stopped.
    /// What fails (the engine away, a co-tenant slow to come back) is tried again for up to
    /// [`UNWIND_PATIENCE`]; after that the journal is kept and the error says to run `recover`.
    async fn unwind(&mut self) -> Result<(Vec<String>, Vec<String>), DockerError> {
        tracing::info!(job = %self.journal.job, holds = self.journal.holds.len(), "unwinding: stopping Vidi, restoring co-tenants");
        let mut restored = Vec::new();
        let mut stopped = Vec::new();
        let since = std::time::Instant::now();
        let mut pause = Duration::from_millis(500);
        loop {
            let round = self.unwind_round(&mut restored, &mut stopped).await;
            let error = match round {
                Ok(true) => {
                    // Everything is back; what is left (Vidi's containers, the journal) is
                    // still named by the journal, which stays until this succeeds.
                    if let Err(e) = self.cleanup().await {
                        return Err(self.journal_kept(format!("cleaning up after job {}: {e}", self.journal.job)));
                    }
                    return Ok((restored, stopped));
                }
                Ok(false) if since.elapsed() < UNWIND_PATIENCE => {
                    tokio::time::sleep(POLL).await;
                    continue;
                }
                Ok(false) => DockerError::Other(
                    self.journal
                        .status
                        .message
                        .clone()
                        .unwrap_or_else(|| "still not done".into()),
                ),
                Err(e) => e,
            };
            if since.elapsed() >= UNWIND_PATIENCE {
                return Err(self.journal_kept(format!(
                    "could not finish restoring job {} within {} ({error})",
                    self.journal.job,
                    humantime::format_duration(UNWIND_PATIENCE),
                )));
            }
            self.s.say(Event::RestoreRetrying {
                error: error.to_string(),
                retry_in_seconds: pause.as_secs_f64(),
            });
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// An unwind that could not finish: `what` happened, the journal stays, and what to do.
    fn journal_kept(&self, what: String) -> DockerError {
        DockerError::Other(format!(
            "{what}; the journal {} is kept: run `vidi-operator docker recover` once the cause is fixed",
            Journal::path(&self.s.opts.state_dir).display()
        ))
    }

    /// One look and its actions while unwinding: `Ok(true)` once nothing is held or running.
    async fn unwind_round(
        &mut self,
        restored: &mut Vec<String>,
        stopped: &mut Vec<String>,
    ) -> Result<bool, DockerError> {
        let decision = self.look(true).await?;
        let mut errors = Vec::new();
        self.apply(&decision, &mut errors).await?;
        for a in &decision.actions {
            match a {
                Action::Restore { target, .. } | Action::Resume { target, .. }
                    if self.journal.hold(target.kind, &target.name).is_none()
                        && !self.gone.contains(target)
                        && !restored.contains(&target.to_string()) =>
                {
                    restored.push(target.to_string())
                }
                Action::StopAttempt { name, .. } if !stopped.contains(name) => stopped.push(name.clone()),
                _ => {}
            }
        }
        self.journal.status = self.told(&decision.status);
        self.save()?;
        if let Some(e) = errors.pop() {
            return Err(e);
        }
        Ok(decision.released)
    }

    /// The job is over: its containers go, then the journal (nothing is held any more).
    async fn cleanup(&mut self) -> Result<(), DockerError> {
        for (_, handle) in std::mem::take(&mut self.logs) {
            let _ = tokio::time::timeout(Duration::from_secs(3), handle).await;
        }
        remove_job_containers(&self.s.docker, &self.journal.job).await?;
        Journal::remove(&self.s.opts.state_dir)
    }

    /// Applies the planner's actions in order. Restore failures are collected in `errors` (so
    /// the other co-tenants are still restored); anything else stops at the first error. Returns
    /// whether anything besides a notice was done.
    async fn apply(&mut self, decision: &Decision, errors: &mut Vec<DockerError>) -> Result<bool, DockerError> {
        let mut acted = false;
        let mut said_early = None;
        // Co-tenants whose restore or resume failed in this decision: nothing may say they are back.
        let mut failed: Vec<plan::CoTenantId> = Vec::new();
        if let (Some(limit), Some(start)) = (self.journal.spec.active_deadline_seconds, &decision.status.start_time) {
            self.deadline = Timestamp::from_second(start.0.as_second().saturating_add(limit)).ok();
        }
        // A co-tenant resumed through its hook is reported by the actor once the call answered
        // (`coTenantResumed`); the planner's notice of it would say the same again.
        let resumed: Vec<&plan::CoTenantId> = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Resume { target, call: true, .. } => Some(target),
                _ => None,
            })
            .collect();
        for (i, action) in decision.actions.iter().enumerate() {
            acted |= !matches!(action, Action::Notify(_) | Action::DeleteJob);
            // The planner announces an attempt right after asking for it; say it before the
            // gate and the container's output instead.
            if let (Action::StartAttempt { .. }, Some(Action::Notify(n))) = (action, decision.actions.get(i + 1)) {
                self.s.say(notice(n.severity, &n.message));
                said_early = Some(i + 1);
            }
            tracing::debug!(?action, "applying");
            match action {
                Action::Notify(_) if said_early == Some(i) => {}
                Action::Notify(n)
                    if n.reason == "Restored"
                        && matches!(&n.subject, Some(plan::Subject::CoTenant(id)) if failed.contains(id)) => {}
                // "finished; every co-tenant restored": not yet, when one of them failed.
                Action::Notify(n) if !failed.is_empty() && matches!(n.reason.as_str(), "Succeeded" | "Failed") => {
                    self.held_back = Some((n.severity, self.tell(&n.message)));
                }
                Action::Notify(n)
                    if n.reason == "Restored"
                        && matches!(&n.subject, Some(plan::Subject::CoTenant(id)) if resumed.contains(&id)) => {}
                Action::Notify(n)
                    if n.reason == "Restored"
                        && matches!(&n.subject, Some(plan::Subject::CoTenant(id)) if self.gone.contains(id)) =>
                {
                    if let Some(plan::Subject::CoTenant(id)) = &n.subject {
                        self.s.say(notice(
                            Severity::Warning,
                            &format!("could not restore {id}: it was removed while held"),
                        ));
                    }
                }
                Action::Notify(n) => self.s.say(notice(n.severity, &self.tell(&n.message))),
                Action::Hold {
                    target,
                    holders,
                    original_replicas,
                    ..
                } => {
                    self.actor()
                        .hold(&mut self.journal, target, holders, *original_replicas)
                        .await?
                }
                Action::HoldInPlace {
                    target,
                    holders,
                    original_replicas,
                    mark,
                    ..
                } => self
                    .actor()
                    .hold_in_place(&mut self.journal, target, holders, *original_replicas, mark)?,
                Action::CallRelease { target, hook } => {
                    self.actor().call_release(&mut self.journal, target, hook).await?
                }
                Action::FallBack { target, .. } => self.actor().fall_back(&mut self.journal, target).await?,
                Action::Resume {
                    target,
                    hook,
                    call,
                    replicas,
                    ..
                } => {
                    if let Err(e) = self
                        .actor()
                        .resume(&mut self.journal, target, hook, *call, *replicas)
                        .await
                    {
                        failed.push(target.clone());
                        errors.push(e);
                    }
                }
                Action::Resuspend { target, .. } => self.actor().stop(&mut self.journal, target).await?,
                Action::Release { target, holders, .. } => self.actor().release(&mut self.journal, target, holders)?,
                Action::Restore { target, replicas, .. } => {
                    match self.actor().restore(&mut self.journal, target, *replicas).await {
                        Ok(true) => {}
                        Ok(false) => self.gone.push(target.clone()),
                        Err(e) => {
                            failed.push(target.clone());
                            errors.push(e);
                        }
                    }
                }
                Action::StartAttempt {
                    attempt,
                    name,
                    precision,
                    min_free_bytes,
                    release_wait,
                } => {
                    // As on Kubernetes, an attempt starts once the status that records it (and
                    // Running) is saved.
                    if self.journal.status != decision.status {
                        self.journal.status = decision.status.clone();
                        self.save()?;
                    }
                    // Co-tenants only released in place get their own, shorter wait.
                    let gate_timeout = crate::plan::gate_wait(*release_wait, self.s.opts.gate_timeout);
                    self.start_attempt(*attempt, name, *precision, *min_free_bytes, gate_timeout)
                        .await?
                }
                Action::StopAttempt { name, .. } => self.stop_attempt(name).await?,
                // No TTL on a Docker host: the job object is the file, which is the user's.
                Action::DeleteJob => {}
                // A Docker host has one GPU and no nodes: the planner never places (its
                // snapshot has no placement), so these never come.
                Action::MarkPods { target, .. }
                | Action::UnmarkPods { target, .. }
                | Action::HoldOnNode { target, .. } => {
                    return Err(DockerError::Other(format!(
                        "a per-node hold of {target} is not a Docker host action"
                    )));
                }
            }
        }
        Ok(acted)
    }

    /// Sleeps until something may have changed: the running Vidi container exits, someone
    /// starts a held co-tenant container (the engine's event stream), a held command co-tenant
    /// may have been started (its `check` is run again every [`COMMAND_RECHECK`]), or the
    /// planner's requeue time comes. With no Vidi container to wait on, a short poll interval.
    async fn wait(&self, requeue_after: Option<Duration>) {
        let running = self
            .journal
            .attempts
            .iter()
            .rev()
            .find(|a| a.end.is_none())
            .map(|a| a.name.clone());
        let Some(name) = running else {
            tokio::time::sleep(POLL).await;
            return;
        };
        let mut limit = requeue_after.unwrap_or(MAX_WAIT).min(MAX_WAIT).max(POLL);
        let held = |kind: WorkloadKind| self.journal.holds.iter().filter(move |h| h.kind == kind && h.stopped);
        if held(WorkloadKind::Command).next().is_some() {
            limit = limit.min(COMMAND_RECHECK);
        }
        let containers: Vec<String> = held(WorkloadKind::Container).map(|h| h.name.clone()).collect();
        let opts = WaitContainerOptionsBuilder::default().condition("not-running").build();
        let mut exited = self.s.docker.wait_container(&name, Some(opts));
        tokio::select! {
            r = exited.next() => {
                // An error here (e.g. the container is gone) needs a fresh look too; avoid
                // spinning on a persistent one.
                if matches!(r, Some(Err(ref e)) if !matches!(e, bollard::errors::Error::DockerContainerWaitError { .. })) {
                    tokio::time::sleep(POLL).await;
                }
            }
            _ = started_since(&self.s.docker, &containers, self.looked_at) => {}
            _ = tokio::time::sleep(limit) => {}
        }
    }
}

/// Resolves when the engine reports a `start` of one of `names` at or after `since` (never, for
/// no names). Events from before the subscription are replayed from `since`, so a start between
/// the last look and this call is not missed. A broken stream resolves too: the next look finds
/// out what is wrong.
async fn started_since(docker: &Docker, names: &[String], since: Timestamp) {
    if names.is_empty() {
        return std::future::pending().await;
    }
    let filters: HashMap<String, Vec<String>> = [
        ("type".to_string(), vec!["container".to_string()]),
        ("event".to_string(), vec!["start".to_string()]),
        ("container".to_string(), names.to_vec()),
    ]
    .into();
    let opts = EventsOptionsBuilder::default()
        .since(&since.as_second().to_string())
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(opts));
    let since_nanos = since.as_nanosecond();
    while let Some(event) = events.next().await {
        match event {
            Ok(e) if e.time_nano.is_some_and(|t| i128::from(t) < since_nanos) => continue,
            Ok(e) => {
                let who = e.actor.and_then(|a| a.attributes).and_then(|a| a.get("name").cloned());
                tracing::info!(
                    container = who.as_deref().unwrap_or("?"),
                    "a held co-tenant was started"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the engine's event stream failed");
                tokio::time::sleep(POLL).await;
                return;
            }
        }
    }
    tokio::time::sleep(POLL).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(stop_timeout: Duration) -> Options {
        Options {
            state_dir: PathBuf::from("/tmp/vidi-test-state"),
            vidi_image: "vidi:latest".into(),
            gpus: GpuMode::None,
            gate: false,
            gate_timeout: Duration::ZERO,
            gate_interval: Duration::from_secs(1),
            user: "1000:1000".into(),
            wait_for_lock: false,
            stop_timeout,
            start_timeout: Duration::from_secs(120),
        }
    }

    #[test]
    fn a_new_output_dir_goes_to_whoever_ran_sudo_open_to_the_container_user() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        if !state_dir::is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "handing a directory over needs root (CI runs as root)"
            );
            return;
        }
        let base = std::env::temp_dir().join(format!("vidi-outdir-{}", std::process::id()));
        let owner = |d: &Path| {
            let m = std::fs::metadata(d).unwrap();
            (m.uid(), m.gid(), m.permissions().mode() & 0o777)
        };
        // sudo by uid 4321: theirs, and the container's user (1000) may write.
        let sudo = base.join("sudo");
        std::fs::create_dir_all(&sudo).unwrap();
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_writable_for(&sudo, "1000:1000", Some((4321, 4322))).unwrap();
        assert_eq!(owner(&sudo), (4321, 4322, 0o777));
        // sudo by the container's own user: theirs, nothing to open up.
        let same = base.join("same");
        std::fs::create_dir_all(&same).unwrap();
        std::fs::set_permissions(&same, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_writable_for(&same, "1000:1000", Some((1000, 1000))).unwrap();
        assert_eq!(owner(&same), (1000, 1000, 0o755));
        // Root itself: the container's user.
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        make_writable_for(&root, "1000:1000", None).unwrap();
        assert_eq!(owner(&root), (1000, 1000, 0o755));
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_engine_client_outlasts_the_longest_stop() {
        // An HTTP client opens nothing until the first request.
        let docker = Docker::connect_with_http("http://127.0.0.1:9", 120, bollard::API_DEFAULT_VERSION).unwrap();
        let quiet: Progress = Arc::new(|_: &Event| {});
        // A 130 s stop used to hit bollard's fixed 120 s request timeout mid-stop.
        let s = Session::new(docker.clone(), options(Duration::from_secs(130)), quiet.clone());
        assert!(
            s.docker.timeout() >= Duration::from_secs(130 * 2 + 60),
            "{:?}",
            s.docker.timeout()
        );
        // Short stops keep the default.
        let s = Session::new(docker, options(Duration::from_secs(10)), quiet);
        assert_eq!(s.docker.timeout(), Duration::from_secs(120));
    }
}
