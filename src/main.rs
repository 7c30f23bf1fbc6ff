mod cli;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// Lets a heavy GPU job (Vidi 1.5 9B) borrow a shared GPU safely.
#[derive(Parser)]
#[command(name = "vidi-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the GPUs on this machine, or wait until enough memory is free.
    Gpu(cli::gpu::GpuArgs),
    /// Run the Kubernetes controller against the current kube context.
    Run(cli::run::RunArgs),
    /// Run a VidiJob on this Docker host, recover after a crash, or build the Vidi image.
    Docker(cli::docker::DockerArgs),
    /// Print the RBAC rules the controller needs (charts/vidi-operator/files/rbac-rules.yaml).
    Rbac(PrintArgs),
    /// Print the VidiJob CustomResourceDefinition (crds/vidijob.yaml is the YAML output).
    Crd(PrintArgs),
}

#[derive(clap::Args)]
struct PrintArgs {
    /// YAML (what the repository commits) or JSON.
    #[arg(short = 'o', long, value_enum, default_value = "yaml")]
    output: cli::OutputFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // Like kubectl, helm and docker: no arguments shows what there is, and is no error.
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    // The controller runs on one thread: its work is short reconciles between API round trips,
    // and on a multi-threaded runtime waking idle workers for each of them (futex and scheduler
    // switches) cost more CPU than the reconciles themselves (benches/controller.rs). The Docker
    // host and GPU commands keep the multi-threaded runtime (NVML and engine calls).
    let runtime = if matches!(command, Command::Run(_)) {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Runtime::new()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => return cli::report(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::report(&e),
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Gpu(args) => cli::gpu::run(args).await,
        Command::Run(args) => cli::run::run(args).await,
        Command::Docker(args) => cli::docker::run(args).await,
        Command::Rbac(a) => match a.output {
            cli::OutputFormat::Json => cli::print_value(&vidi_operator::kube::rbac::rules(), a.output),
            _ => {
                let text = vidi_operator::kube::rbac::rules_yaml()?;
                cli::print_out(|o| o.write_all(text.as_bytes()))
            }
        },
        Command::Crd(a) => match a.output {
            cli::OutputFormat::Json => {
                use kube::CustomResourceExt as _;
                cli::print_value(&vidi_operator::api::VidiJob::crd(), a.output)
            }
            _ => {
                let text = vidi_operator::api::crd_yaml()?;
                cli::print_out(|o| o.write_all(text.as_bytes()))
            }
        },
    }
}
