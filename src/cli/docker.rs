//! `vidi-operator docker run | recover | build`: the Docker host runtime's front end.
//!
//! Exit codes of `docker run`: 0 the job Succeeded; 1 it Failed (or the job file or Docker was
//! unusable, or a co-tenant could not be seen back: the journal is kept for `docker recover`);
//! 75 another job holds the GPU and --no-wait was given; 129 / 130 / 143 cancelled by SIGHUP /
//! SIGINT / SIGTERM after stopping Vidi and restoring every co-tenant.
//!
//! Output never panics: a closed stderr (the SSH session dropped, `2>&1 | head -1`) or stdout
//! only loses the lines, never the restore.
use std::collections::HashMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use vidi_operator::api::{Phase, VidiJob, VidiJobStatus};
use vidi_operator::docker::build::{BuildRequest, build_image};
use vidi_operator::docker::session::{Options, Recovered, Session};
use vidi_operator::docker::{self, DockerError, GpuMode, jobfile, state_dir};

use super::progress::{ProgressMode, Reporter};
use super::{OutputFormat, print_out, print_value};

/// `--no-wait` and the GPU is taken (EX_TEMPFAIL: try again later).
const EXIT_BUSY: i32 = 75;
const EXIT_SIGHUP: i32 = 129;
const EXIT_SIGINT: i32 = 130;
const EXIT_SIGTERM: i32 = 143;

#[derive(clap::Args)]
pub struct DockerArgs {
    #[command(subcommand)]
    command: DockerCommand,
}

#[derive(clap::Subcommand)]
enum DockerCommand {
    /// Run a VidiJob on this host: stop the GPU's co-tenants, run Vidi, start them again.
    Run(RunArgs),
    /// Finish a job an earlier run left unfinished (crash, kill -9): stop its Vidi container
    /// and restore every co-tenant it stopped.
    Recover(RecoverArgs),
    /// Build an image (the Vidi image by default) from a directory through the Docker engine.
    Build(BuildArgs),
}

#[derive(clap::Args)]
struct LockArgs {
    /// Directory of the lock and the journal, the same for every user of the GPU (created
    /// group-writable for the docker group) [default: /var/lib/vidi-operator].
    #[arg(long, env = "VIDI_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Fail at once (exit 75) instead of waiting while another job holds the GPU.
    #[arg(long)]
    no_wait: bool,
}

impl LockArgs {
    fn dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(state_dir::default_state_dir)
    }

    /// The state directory, with a warning when the default is used and an unfinished journal
    /// is still in the per-user default of earlier builds.
    fn resolve(&self, out: &Reporter) -> PathBuf {
        let dir = self.dir();
        if self.state_dir.is_none()
            && let Some(old) = state_dir::legacy_state_dir().filter(|old| *old != dir)
            && old.join(docker::journal::FILE_NAME).exists()
        {
            out.line(&format!(
                "vidi-operator: warning: an unfinished job's journal is in {}, the per-user state directory of \
                 earlier builds; finish it with `vidi-operator docker recover --state-dir {}`",
                old.display(),
                old.display()
            ));
        }
        dir
    }

    /// Checks (and creates, shared) the state directory before anything else is done, so a
    /// user who cannot use it is told at once which path and what to do.
    fn prepare(&self, out: &Reporter) -> anyhow::Result<PathBuf> {
        let dir = self.resolve(out);
        state_dir::prepare(&dir)?;
        Ok(dir)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Gpus {
    /// Request every GPU (or spec.gpu.device) and wait for free memory first.
    All,
    /// No GPU and no gate: try the plumbing on a machine without a GPU.
    None,
}

#[derive(clap::Args)]
struct RunArgs {
    /// The VidiJob YAML file (`-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: PathBuf,
    #[command(flatten)]
    lock: LockArgs,
    /// Vidi image when spec.model.image is not set.
    #[arg(long, value_name = "IMAGE", default_value = "vidi:latest")]
    vidi_image: String,
    /// GPUs for the Vidi container.
    #[arg(long, value_enum, default_value = "all")]
    gpus: Gpus,
    /// Skip the NVML free-memory gate (with --gpus all), e.g. when NVML is not reachable.
    #[arg(long)]
    no_gate: bool,
    /// How long the gate waits for the GPU memory to become free.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    gate_timeout: Duration,
    /// User (uid:gid) the Vidi container runs as.
    #[arg(long, value_name = "UID:GID", default_value = "1000:1000", value_parser = parse_user)]
    user: String,
    #[command(flatten)]
    timeouts: TimeoutArgs,
    /// Print what would be stopped and run; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The result as a table, or the VidiJob with its final status as YAML; `json` writes
    /// JSON Lines: one event per line as it happens, then `{"event":"result",…}`.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Progress on stderr: a live display in a terminal, else one line per step.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

#[derive(clap::Args)]
struct TimeoutArgs {
    /// How long `docker stop` gives a co-tenant container before killing it (the Docker engine
    /// then kills it; the operator waits that long and more).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    stop_timeout: Duration,
    /// How long a co-tenant container may take to run again (and be healthy, if it has a health
    /// check) before its restore counts as failed and the journal is kept for `docker recover`.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    start_timeout: Duration,
}

#[derive(clap::Args)]
struct RecoverArgs {
    #[command(flatten)]
    lock: LockArgs,
    /// Used only for a journal that does not record the run's own timeouts.
    #[command(flatten)]
    timeouts: TimeoutArgs,
    /// What was recovered, as lines, JSON or YAML.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: OutputFormat,
    /// Progress on stderr: a live display in a terminal, else one line per step.
    #[arg(long, value_enum, default_value = "auto")]
    progress: ProgressMode,
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name and tag of the image.
    #[arg(short = 't', long, default_value = "vidi:latest")]
    tag: String,
    /// A build argument, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE", value_parser = parse_build_arg)]
    build_args: Vec<(String, String)>,
    /// Dockerfile inside the context directory.
    #[arg(long, value_name = "PATH")]
    dockerfile: Option<String>,
    /// Do not use the build cache.
    #[arg(long)]
    no_cache: bool,
    /// The build context directory.
    #[arg(default_value = "docker/vidi")]
    dir: PathBuf,
}

/// `--user`: what `docker run --user` takes (a name or uid, optionally `:group`), never empty
/// (the engine would run Vidi as the image's user, root for most).
fn parse_user(s: &str) -> Result<String, String> {
    let (user, group) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    if user.trim().is_empty() || group.is_some_and(|g| g.trim().is_empty()) {
        return Err(format!(
            "expected UID:GID (such as 1000:1000), a UID or a user name, got {s:?}"
        ));
    }
    Ok(s.to_string())
}

fn parse_build_arg(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

pub async fn run(args: DockerArgs) -> anyhow::Result<()> {
    vidi_operator::telemetry::init_logging_on_request();
    match args.command {
        DockerCommand::Run(a) => {
            let out = Reporter::new(a.progress, a.output == OutputFormat::Json);
            let result = run_job(a, &out).await;
            if let Err(e) = &result {
                // The last JSON line says why there is no result; stderr says it for people.
                out.json_final(
                    "error",
                    serde_json::json!({ "exitCode": 1, "message": super::output::one_line(e) }),
                );
            }
            result
        }
        DockerCommand::Recover(a) => recover(a).await,
        DockerCommand::Build(a) => build(a).await,
    }
}

/// Ends the live display, flushes, exits.
fn exit(out: &Reporter, code: i32) -> ! {
    out.finish();
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Maps "another job holds the GPU" to its own exit code; everything else is an error (1).
fn fail(out: &Reporter) -> impl Fn(DockerError) -> anyhow::Error + '_ {
    move |e| {
        if matches!(e, DockerError::Locked(docker::lock::LockError::Busy { .. })) {
            out.finish();
            out.line(&format!("error: {e}"));
            out.json_final(
                "error",
                serde_json::json!({ "exitCode": EXIT_BUSY, "message": e.to_string() }),
            );
            exit(out, EXIT_BUSY);
        }
        anyhow::Error::new(e)
    }
}

/// Resolves to (exit code, name) on the first SIGINT, SIGTERM or SIGHUP (the terminal or SSH
/// session went away). The handlers are installed when this is called, so a signal from then on
/// is never lost; later ones are ignored while everything is restored.
fn signals() -> anyhow::Result<impl std::future::Future<Output = (i32, &'static str)>> {
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => (EXIT_SIGINT, "SIGINT"),
            _ = term.recv() => (EXIT_SIGTERM, "SIGTERM"),
            _ = hup.recv() => (EXIT_SIGHUP, "SIGHUP"),
        }
    })
}

async fn run_job(a: RunArgs, out: &Arc<Reporter>) -> anyhow::Result<()> {
    let cancel = signals()?;
    let (job, source) = jobfile::read(&a.file)?;
    // A dry run creates nothing, the state directory included.
    let state_dir = if a.dry_run {
        a.lock.resolve(out)
    } else {
        a.lock.prepare(out)?
    };
    let docker = docker::connect().await?;
    let opts = Options {
        state_dir,
        vidi_image: a.vidi_image.clone(),
        gpus: match a.gpus {
            Gpus::All => GpuMode::All,
            Gpus::None => GpuMode::None,
        },
        gate: !a.no_gate,
        gate_timeout: a.gate_timeout,
        gate_interval: Duration::from_secs(1),
        user: a.user.clone(),
        wait_for_lock: !a.lock.no_wait,
        stop_timeout: a.timeouts.stop_timeout,
        start_timeout: a.timeouts.start_timeout,
    };
    let session = Session::new(docker, opts, out.progress());
    // Each preflight problem with where its field is in the job file.
    let refused = |e: DockerError| match e {
        DockerError::Preflight { job, problems } => anyhow::anyhow!(
            "job {job} cannot run, so nothing was stopped:\n  {}",
            problems
                .iter()
                .map(|p| source.describe(p))
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
        other => fail(out)(other),
    };
    if a.dry_run {
        let status = session.dry_run(&job).await.map_err(refused)?;
        out.finish();
        let code = i32::from(status.phase == Phase::Failed);
        match a.output {
            OutputFormat::Table => {}
            OutputFormat::Json => out.json_final(
                "result",
                serde_json::json!({ "exitCode": code, "dryRun": true, "job": with_status(&job, &status) }),
            ),
            OutputFormat::Yaml => print_value(&with_status(&job, &status), OutputFormat::Yaml)?,
        }
        if code != 0 {
            print_failure(out, &status);
            exit(out, code);
        }
        return Ok(());
    }
    let result = session.run(&job, cancel).await.map_err(refused)?;
    out.finish();
    if let Some((code, name)) = result.cancelled {
        // Cancelled while waiting for the GPU lock (or before the first decision): nothing was
        // stopped, so nothing was restored either.
        let untouched = result.status == VidiJobStatus::default();
        out.line(&if untouched {
            format!("vidi-operator: cancelled by {name} before anything was changed")
        } else {
            format!("vidi-operator: cancelled by {name}; Vidi stopped and every co-tenant restored")
        });
        match a.output {
            OutputFormat::Table => {}
            OutputFormat::Json => out.json_final(
                "result",
                serde_json::json!({ "exitCode": code, "cancelledBy": name, "job": with_status(&job, &result.status) }),
            ),
            OutputFormat::Yaml => print_value(&with_status(&job, &result.status), OutputFormat::Yaml)?,
        }
        exit(out, code);
    }
    let status = result.status;
    let code = i32::from(status.phase != Phase::Succeeded);
    match a.output {
        OutputFormat::Table => print_table(&job, &status)?,
        OutputFormat::Json => out.json_final(
            "result",
            serde_json::json!({ "exitCode": code, "job": with_status(&job, &status) }),
        ),
        OutputFormat::Yaml => print_value(&with_status(&job, &status), OutputFormat::Yaml)?,
    }
    match status.phase {
        Phase::Succeeded => Ok(()),
        Phase::Failed => {
            print_failure(out, &status);
            exit(out, 1)
        }
        other => {
            let why = status.message.as_deref().unwrap_or("");
            out.line(&format!("vidi-operator: the job ended {other}: {why}"));
            exit(out, 1)
        }
    }
}

fn print_failure(out: &Reporter, status: &VidiJobStatus) {
    let message = status.message.as_deref().unwrap_or("no message");
    // The generic reason says nothing "Failed" does not: `Failed: …`, `Failed (BadInput): …`.
    match status.reason.map(|r| r.to_string()).filter(|r| r != "Failed") {
        Some(reason) => out.line(&format!("vidi-operator: Failed ({reason}): {message}")),
        None => out.line(&format!("vidi-operator: Failed: {message}")),
    }
}

fn recovered_line(r: &Recovered) -> String {
    docker::events::recovered_text(&r.job, r.pid, &r.restored, &r.stopped)
}

/// The VidiJob with its final status, as `kubectl get -o json|yaml` would show it.
fn with_status(job: &VidiJob, status: &VidiJobStatus) -> VidiJob {
    let mut out = job.clone();
    out.status = Some(status.clone());
    out
}

fn print_table(job: &VidiJob, status: &VidiJobStatus) -> anyhow::Result<()> {
    let mut table = Vec::new();
    write_table(&mut table, job, status)?;
    print_out(|o| o.write_all(&table))
}

fn write_table(out: &mut Vec<u8>, job: &VidiJob, status: &VidiJobStatus) -> std::io::Result<()> {
    let name = job.metadata.name.as_deref().unwrap_or("");
    let precision = status.precision.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "job {name}: {} (precision {precision}, {} attempt{}, took {})",
        status.phase,
        status.attempts,
        if status.attempts == 1 { "" } else { "s" },
        status.duration.as_deref().unwrap_or("-")
    )?;
    let Some(result) = &status.result else {
        return Ok(());
    };
    writeln!(out, "{}", result.summary)?;
    if let Some(preview) = &result.preview {
        writeln!(out, "preview: {preview}")?;
    }
    if result.segments.is_empty() {
        return Ok(());
    }
    let rows: Vec<[String; 4]> = result
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            [
                (i + 1).to_string(),
                clock(s.start_seconds),
                clock(s.end_seconds),
                format!("{:.1}s", s.end_seconds - s.start_seconds),
            ]
        })
        .collect();
    let header = ["#", "START", "END", "DURATION"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let [a, b, c, d] = cells;
        format!(
            "{a:<w0$}  {b:<w1$}  {c:<w2$}  {d}",
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )
    };
    writeln!(out, "{}", line(header))?;
    for r in &rows {
        writeln!(out, "{}", line([&r[0], &r[1], &r[2], &r[3]]))?;
    }
    Ok(())
}

/// `HH:MM:SS`, with tenths when the time has them.
fn clock(seconds: f64) -> String {
    let tenths = (seconds.max(0.0) * 10.0).round() as u64;
    let s = tenths / 10;
    let base = format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60);
    if tenths.is_multiple_of(10) {
        base
    } else {
        format!("{base}.{}", tenths % 10)
    }
}

async fn recover(a: RecoverArgs) -> anyhow::Result<()> {
    let out = Reporter::new(a.progress, false);
    // Creates the state directory, shared, when it is not there: `sudo vidi-operator docker
    // recover` is one way to set it up (docs/docker.md).
    let state_dir = a.lock.prepare(&out)?;
    let docker = docker::connect().await?;
    let opts = Options {
        state_dir,
        vidi_image: String::new(),
        gpus: GpuMode::None,
        gate: false,
        gate_timeout: Duration::ZERO,
        gate_interval: Duration::from_secs(1),
        user: String::new(),
        wait_for_lock: !a.lock.no_wait,
        stop_timeout: a.timeouts.stop_timeout,
        start_timeout: a.timeouts.start_timeout,
    };
    let session = Session::new(docker, opts, out.progress());
    // Signals are left at their defaults: an interrupted recovery is as safe as a crash (the
    // journal keeps what is left), and `recover` can simply be run again.
    let recovered = session.recover().await.map_err(fail(&out))?;
    out.finish();
    say_recovered(&a, recovered.as_ref())
}

/// `docker recover`'s result on stdout: the line, or `{"recovered": …}` as JSON or YAML.
fn say_recovered(a: &RecoverArgs, recovered: Option<&Recovered>) -> anyhow::Result<()> {
    if a.output != OutputFormat::Table {
        let value = match recovered {
            None => serde_json::json!({ "recovered": null }),
            Some(r) => serde_json::json!({
                "recovered": { "job": r.job, "pid": r.pid, "restored": r.restored, "stopped": r.stopped }
            }),
        };
        return print_value(&value, a.output);
    }
    match recovered {
        None => print_out(|o| writeln!(o, "nothing to recover: no unfinished job in {}", a.lock.dir().display())),
        Some(r) => print_out(|o| writeln!(o, "{}", recovered_line(r))),
    }
}

async fn build(a: BuildArgs) -> anyhow::Result<()> {
    let docker = docker::connect().await?;
    let req = BuildRequest {
        tag: a.tag.clone(),
        build_args: a.build_args.into_iter().collect::<HashMap<_, _>>(),
        dockerfile: a.dockerfile,
        no_cache: a.no_cache,
    };
    let out = Reporter::new(ProgressMode::Plain, false);
    let id = build_image(&docker, &a.dir, &req, &|line: &str| {
        out.line(&format!("vidi-operator: {line}"))
    })
    .await?;
    out.line(&format!("vidi-operator: built {} ({id})", a.tag));
    print_out(|o| writeln!(o, "{}", a.tag))?;
    Ok(())
}
