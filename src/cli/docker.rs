//! `vidi-operator docker ...`
#[derive(clap::Args)]
pub struct DockerArgs {}

pub async fn run(_args: DockerArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
