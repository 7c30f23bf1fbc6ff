//! `vidi-operator gpu ...`
#[derive(clap::Args)]
pub struct GpuArgs {}

pub async fn run(_args: GpuArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
