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
    let parts = said_once(e);
    let mut text = format!("error: {}\n", parts[0]);
    for cause in &parts[1..] {
        text.push_str(&format!("  caused by: {cause}\n"));
    }
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
    std::process::ExitCode::FAILURE
}

/// The error and its causes on one line, `what: why: why`, each said once (for JSON output).
#[allow(
    dead_code,
    reason = "used by vidi-operator's `docker run -o json`, not by kubectl-vidi"
)]
pub fn one_line(e: &anyhow::Error) -> String {
    said_once(e).join(": ")
}

/// The error, then each cause whose text is not already part of what was said: many libraries'
/// errors (hyper's, bollard's) repeat their source in their own message.
fn said_once(e: &anyhow::Error) -> Vec<String> {
    let mut said = e.to_string();
    let mut parts = vec![said.clone()];
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !said.contains(&c) {
            said.push_str(&c);
            parts.push(c);
        }
    }
    parts
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Repeats(std::io::Error);
    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "client error (Connect): {}", self.0)
        }
    }
    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(Repeats(io)).context("cannot reach the Docker engine");
        assert_eq!(
            one_line(&e),
            "cannot reach the Docker engine: client error (Connect): Connection refused"
        );
        assert_eq!(said_once(&e).len(), 2);
    }
}
