//! Command co-tenants: bare processes (a ComfyUI started from a shell) stopped, started and
//! checked by the user's shell commands, run with `sh -c`.
//!
//! What counts is what `check` shows, never that a command returned: [`wait_gone`] after a stop,
//! [`wait_up`] after a start.
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::DockerError;

/// How long a `stop` or `start` command itself may run before it counts as failed (the process
/// it stops or starts has its own timeouts, `stopTimeoutSeconds` and `startTimeoutSeconds`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// A check must answer quickly: it runs on every look at the world.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `check` is run while waiting for a process to go or come back.
pub const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Lines of a failed command's output quoted in its error.
const TAIL_LINES: usize = 5;

/// Where the output of a co-tenant's commands goes: `<state dir>/commands/<name>.log`.
/// A file rather than the operator's stderr: a process started in the background keeps the
/// file open, and must not die of a broken pipe when the operator's terminal goes away.
pub fn log_path(state_dir: &Path, name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    state_dir.join("commands").join(format!("{safe}.log"))
}

/// Runs a `stop` or `start` command, its output appended to `log`.
pub async fn run(name: &str, what: &str, script: &str, log: &Path) -> Result<(), DockerError> {
    let fail = |message: String| DockerError::Command {
        name: name.to_string(),
        message,
    };
    if let Some(dir) = log.parent() {
        super::state_dir::create_shared(dir)
            .map_err(|e| DockerError::io("creating the command log directory", dir, e))?;
    }
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| DockerError::io("opening the command log", log, e))
    };
    let (out, err) = (open()?, open()?);
    // Another user of the state directory may run this co-tenant's commands next.
    super::state_dir::share(log, super::state_dir::FILE_MODE)
        .map_err(|e| DockerError::io("sharing the command log", log, e))?;
    let before = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
    let status = exec(name, what, script, Stdio::from(out), Stdio::from(err), COMMAND_TIMEOUT).await?;
    if status.success() {
        return Ok(());
    }
    let tail = log_tail(log, before);
    Err(fail(format!(
        "`{what}` command {script:?} failed ({status}){}",
        if tail.is_empty() {
            format!("; its output is in {}", log.display())
        } else {
            format!("; it said: {tail} (all output: {})", log.display())
        }
    )))
}

/// The last lines written to `log` since offset `from`, joined with " | ".
fn log_tail(log: &Path, from: u64) -> String {
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let text = String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join(" | ")
}

/// Runs a `check` command: `true` when it exits 0 (the process runs), `false` for any other
/// exit. Exit 126 or 127 (the shell could not run it) or a signal is an error: a broken check
/// would otherwise read as "the process is gone".
pub async fn check(name: &str, script: &str) -> Result<bool, DockerError> {
    let status = exec(name, "check", script, Stdio::null(), Stdio::null(), CHECK_TIMEOUT).await?;
    match status.code() {
        Some(0) => Ok(true),
        Some(126 | 127) | None => Err(DockerError::Command {
            name: name.to_string(),
            message: format!(
                "the `check` command {script:?} cannot be run ({status}); fix it so it exits 0 while the process runs"
            ),
        }),
        Some(_) => Ok(false),
    }
}

/// Waits until `check` fails (the process is gone), for at most `timeout`.
pub async fn wait_gone(name: &str, script: &str, timeout: Duration) -> Result<(), DockerError> {
    let start = Instant::now();
    loop {
        if !check(name, script).await? {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(DockerError::Command {
                name: name.to_string(),
                message: format!(
                    "still running {} after its stop (`check` {script:?} still passes; stopTimeoutSeconds is {})",
                    humantime::format_duration(round(start.elapsed())),
                    timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Waits until `check` passes twice in a row (a process that dies at once is not "back"),
/// for at most `timeout`.
pub async fn wait_up(name: &str, script: &str, timeout: Duration) -> Result<(), DockerError> {
    let start = Instant::now();
    let mut passes = 0;
    loop {
        if check(name, script).await? {
            passes += 1;
            if passes >= 2 {
                return Ok(());
            }
        } else {
            passes = 0;
        }
        if start.elapsed() >= timeout {
            return Err(DockerError::Command {
                name: name.to_string(),
                message: format!(
                    "did not come back: `check` {script:?} {} within startTimeoutSeconds ({}s) of its start",
                    if passes > 0 { "passed only once" } else { "never passed" },
                    timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64 / 100 * 100)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn check_reads_exit_codes_and_refuses_a_broken_check() {
        assert!(check("p", "exit 0").await.unwrap());
        assert!(!check("p", "exit 1").await.unwrap());
        assert!(!check("p", "exit 7").await.unwrap(), "curl's connection refused");
        let e = check("p", "no-such-command-here").await.unwrap_err().to_string();
        assert!(e.contains("cannot be run") && e.contains("exit status: 127"), "{e}");
    }

    #[tokio::test]
    async fn a_failed_command_quotes_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_path(dir.path(), "comfy ui");
        assert!(log.ends_with("commands/comfy_ui.log"));
        run("comfy", "start", "echo first run", &log).await.unwrap();
        let e = run("comfy", "start", "echo port 8188 in use >&2; exit 3", &log)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("it said: port 8188 in use"), "{e}");
        assert!(!e.contains("first run"), "only this run's output: {e}");
        let all = std::fs::read_to_string(&log).unwrap();
        assert_eq!(all, "first run\nport 8188 in use\n");
    }

    #[tokio::test]
    async fn wait_up_needs_two_passes_and_wait_gone_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("up");
        // Passes once, then the "process" is gone: not back.
        let once = format!("test -f {0} && rm {0}", marker.display());
        std::fs::write(&marker, b"").unwrap();
        let e = wait_up("p", &once, Duration::from_millis(600))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("passed only once") || e.contains("never passed"), "{e}");
        std::fs::write(&marker, b"").unwrap();
        wait_up("p", &format!("test -f {}", marker.display()), Duration::from_secs(5))
            .await
            .unwrap();
        let e = wait_gone("p", "true", Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("still running") && e.contains("stopTimeoutSeconds is 0"),
            "{e}"
        );
        wait_gone("p", "false", Duration::from_secs(5)).await.unwrap();
    }
}
