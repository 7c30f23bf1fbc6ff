//! `kubectl-vidi`: the `kubectl vidi` plugin (kubectl runs any `kubectl-<name>` on PATH as
//! `kubectl <name>`). A thin command line over `vidi_operator::plugin`.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use kube::config::{KubeConfigOptions, Kubeconfig};
use vidi_operator::plugin::{self, Namespaces};

#[path = "../cli/output.rs"]
mod output;
use output::{OutputFormat, print_as, report};

/// Exit code of `wait` when the timeout passes first (as `gpu gate`'s timeout).
const EXIT_TIMEOUT: u8 = 4;

/// Follow VidiJobs: status, queue and holds; wait for the end; logs; the result.
#[derive(Parser)]
#[command(name = "kubectl-vidi", bin_name = "kubectl vidi", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Like kubectl's own flags.
#[derive(clap::Args)]
struct Global {
    /// The namespace (default: the kube context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Every namespace (`status` only).
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    all_namespaces: bool,
    /// The kubeconfig file (default: KUBECONFIG, else ~/.kube/config, else in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table")]
    output: OutputFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Jobs with their phase, queue position, and the co-tenants each holds and for how long.
    Status {
        /// One job (default: every job in the namespace).
        name: Option<String>,
    },
    /// Wait until a job has finished: exit 0 if it Succeeded, 1 if it Failed, 4 on timeout.
    Wait {
        name: String,
        /// How long to wait, e.g. 90s, 10m, 1h.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The Vidi container's log, every attempt in order (or one).
    Logs {
        name: String,
        /// Only this attempt (1, 2, …).
        #[arg(long)]
        attempt: Option<u32>,
        /// Stream the log as it comes: the latest attempt's and every retry's until the job ends
        /// (waiting for Vidi to start if it has not), or only --attempt's until its container ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// The segments Vidi found (start, end, duration) and where the preview page is.
    Result { name: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    match run(&cli.global, command).await {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

async fn run(g: &Global, command: Command) -> anyhow::Result<ExitCode> {
    let (client, default_ns) = connect(g).await?;
    let one = || -> anyhow::Result<String> {
        if g.all_namespaces {
            anyhow::bail!("-A/--all-namespaces applies to `status` only; name the job's namespace with -n");
        }
        Ok(g.namespace.clone().unwrap_or_else(|| default_ns.clone()))
    };
    match command {
        Command::Status { name } => {
            let namespaces = if g.all_namespaces {
                Namespaces::All
            } else {
                Namespaces::One(one()?)
            };
            let report = plugin::status::status(&client, &namespaces, name.as_deref(), jiff::Timestamp::now()).await?;
            if report.jobs.is_empty() && g.output == OutputFormat::Table {
                // As kubectl: nothing on stdout, a note on stderr, and no error.
                match &namespaces {
                    Namespaces::One(ns) => eprintln!("No VidiJobs found in namespace {ns}."),
                    Namespaces::All => eprintln!("No VidiJobs found."),
                }
            } else {
                print_as(g.output, &report, || report.table())?;
            }
        }
        Command::Wait { name, timeout } => {
            let ns = one()?;
            let done = match plugin::wait::wait(&client, &ns, &name, timeout).await {
                Err(e @ plugin::Error::Timeout { .. }) => {
                    report(&anyhow::Error::new(e));
                    return Ok(ExitCode::from(EXIT_TIMEOUT));
                }
                r => r?,
            };
            print_as(g.output, &done, || done.table())?;
            if !done.succeeded() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Logs { name, attempt, follow } => {
            let ns = one()?;
            if follow {
                if g.output != OutputFormat::Table {
                    anyhow::bail!("--follow streams plain text; -o json|yaml needs no --follow");
                }
                let (mut out, mut progress) = (std::io::stdout(), std::io::stderr());
                plugin::logs::follow(&client, &ns, &name, attempt, &mut out, &mut progress).await?;
            } else {
                let logs = plugin::logs::logs(&client, &ns, &name, attempt).await?;
                print_as(g.output, &logs, || logs.text())?;
            }
        }
        Command::Result { name } => {
            let ns = one()?;
            let result = plugin::result::result(&client, &ns, &name).await?;
            print_as(g.output, &result, || result.table())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A client for `--kubeconfig`/`--context` (else what kubectl would use), and the context's
/// namespace.
async fn connect(g: &Global) -> anyhow::Result<(kube::Client, String)> {
    let options = KubeConfigOptions {
        context: g.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match (&g.kubeconfig, &g.context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .with_context(|| format!("using kubeconfig context {context:?}"))?,
        (None, None) => kube::Config::infer()
            .await
            .context("no usable kube context: set KUBECONFIG or pass --kubeconfig")?,
    };
    let namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).context("building the kube client")?;
    Ok((client, namespace))
}
