//! Command co-tenants: bare processes (a ComfyUI started from a shell) stopped, started and
//! checked by the user's shell commands, run with `sh -c`.
use std::os::fd::AsFd as _;
use std::process::Stdio;
use std::time::Duration;

use super::DockerError;

/// How long a stop or start command may take before it counts as failed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// A check must answer quickly: it runs on every look at the world.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a `stop` or `start` command; its output goes to the operator's stderr (stdout is kept
/// for the result).
pub async fn run(name: &str, what: &str, script: &str) -> Result<(), DockerError> {
    let stderr = || {
        std::io::stderr()
            .as_fd()
            .try_clone_to_owned()
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    };
    let status = exec(name, what, script, stderr(), stderr(), COMMAND_TIMEOUT).await?;
    if status.success() {
        Ok(())
    } else {
        Err(DockerError::Command {
            name: name.to_string(),
            message: format!("`{what}` command {script:?} failed ({status})"),
        })
    }
}

/// Runs a `check` command: `true` when it exits 0 (the process runs).
pub async fn check(name: &str, script: &str) -> Result<bool, DockerError> {
    let status = exec(name, "check", script, Stdio::null(), Stdio::null(), CHECK_TIMEOUT).await?;
    Ok(status.success())
}

async fn exec(
    name: &str,
    what: &str,
    script: &str,
    stdout: Stdio,
    stderr: Stdio,
    timeout: Duration,
) -> Result<std::process::ExitStatus, DockerError> {
    let fail = |message: String| DockerError::Command {
        name: name.to_string(),
        message,
    };
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        // Its own process group: a Ctrl-C meant for the operator must not also kill a `start`
        // half-way (the operator restores on Ctrl-C, and needs that start to finish), nor a
        // co-tenant it started in the background.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| fail(format!("cannot run `{what}` command with sh -c: {e}")))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(status),
        Ok(Err(e)) => Err(fail(format!("waiting for the `{what}` command: {e}"))),
        Err(_) => Err(fail(format!(
            "the `{what}` command {script:?} did not finish within {}",
            humantime::format_duration(timeout)
        ))),
    }
}
