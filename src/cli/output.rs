//! Output and errors, shared by both binaries (`vidi-operator` includes it as `cli::output`,
//! `kubectl-vidi` by path): one `-o` convention and one error format.
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

/// Prints an error once, in one format: `error: <what>`, then `  caused by: <why>` for each cause
/// that adds something to what was already said. Never a backtrace: these are the user's errors
/// (`RUST_BACKTRACE` is for panics). Both binaries (`vidi-operator`, `kubectl-vidi`) end this way.
pub fn report(e: &anyhow::Error) -> std::process::ExitCode {
    let mut said = e.to_string();
    let mut text = format!("error: {said}\n");
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !said.contains(&c) {
            text.push_str(&format!("  caused by: {c}\n"));
            said.push_str(&c);
        }
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    std::process::ExitCode::FAILURE
}

/// Prints `value` in `format`: `table` is the command's own rendering.
#[allow(
    dead_code,
    reason = "used by kubectl-vidi; vidi-operator's commands print their tables themselves"
)]
pub fn print_as(
    format: OutputFormat,
    value: &impl serde::Serialize,
    table: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Table => {
            let text = table();
            print_out(|o| o.write_all(text.as_bytes()))
        }
        other => print_value(value, other),
    }
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
