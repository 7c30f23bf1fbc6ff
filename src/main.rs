mod cli;

use clap::{Parser, Subcommand};

/// Lets a heavy GPU job (Vidi 1.5 9B) borrow a shared GPU safely.
#[derive(Parser)]
#[command(name = "vidi-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    Rbac,
    /// Print the VidiJob CustomResourceDefinition as YAML (crds/vidijob.yaml is this output).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gpu(args) => cli::gpu::run(args).await,
        Command::Run(args) => cli::run::run(args).await,
        Command::Docker(args) => cli::docker::run(args).await,
        Command::Rbac => {
            print!("{}", vidi_operator::kube::rbac::rules_yaml()?);
            Ok(())
        }
        Command::Crd => {
            print!("{}", vidi_operator::api::crd_yaml()?);
            Ok(())
        }
    }
}
