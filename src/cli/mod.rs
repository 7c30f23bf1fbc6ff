//! Command-line front ends: thin layers over the library (anyhow lives only here).
pub mod docker;
pub mod gpu;
pub mod progress;
pub mod run;

use std::io::Write as _;

use anyhow::Context as _;

/// `-o table|json|yaml`, kubectl style, on every command that prints something.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// For people: aligned columns or lines.
    Table,
    Json,
    Yaml,
}

/// Writes to stdout; a reader that went away (`| head -1`) is not an error.
pub fn print_out(write: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<()>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match write(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// Prints `value` as JSON or YAML (`table` is each command's own).
pub fn print_value(value: &impl serde::Serialize, format: OutputFormat) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Yaml => serde_saphyr::to_string(value).context("encoding YAML")?,
        OutputFormat::Json | OutputFormat::Table => {
            serde_json::to_string_pretty(value).context("encoding JSON")? + "\n"
        }
    };
    print_out(|o| o.write_all(text.as_bytes()))
}
