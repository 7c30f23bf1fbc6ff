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
    /// Print the VidiJob CustomResourceDefinition as YAML (crds/vidijob.yaml is this output).
    Crd,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Gpu(args) => cli::gpu::run(args).await,
        Command::Crd => {
            print!("{}", vidi_operator::api::crd_yaml()?);
            Ok(())
        }
    }
}
