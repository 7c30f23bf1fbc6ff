//! The README's quickstart, run as the README says (`examples/quickstart/quickstart.sh`), with
//! this build's binary: a real job on the real engine stops two co-tenant containers and a
//! process, runs the stand-in Vidi, restores them, and the script leaves nothing behind.
mod docker_support;

use bollard::query_parameters::ListContainersOptionsBuilder;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_runs_a_job_and_cleans_up() {
    let Some(docker) = docker_support::engine().await else {
        return;
    };
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/quickstart.sh");
    let out = tokio::process::Command::new("bash")
        .arg(&script)
        .env("VIDI_OPERATOR", docker_support::BIN)
        .output()
        .await
        .expect("run the quickstart");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "would suspend Container vidi-quickstart-",
        "suspended Command comfyui (was running)",
        "restored Command comfyui (running again)",
        "finished; every co-tenant restored",
        "job quickstart: Succeeded",
        "comfyui (pid ",
    ] {
        assert!(text.contains(line), "missing {line:?}:\n{text}");
    }
    // Each container is seen back (with the time it took), then its hold is released.
    assert_eq!(
        text.lines()
            .zip(text.lines().skip(1))
            .filter(|(seen, restored)| seen.contains(" again after ")
                && restored.starts_with("vidi-operator: restored Container"))
            .count(),
        2,
        "{text}"
    );
    let left = docker
        .list_containers(Some(ListContainersOptionsBuilder::default().all(true).build()))
        .await
        .expect("list containers");
    let ours: Vec<_> = left
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .is_some_and(|l| l.get("vidi-quickstart").is_some_and(|v| v.ends_with(&out_pid(&text))))
        })
        .collect();
    assert!(ours.is_empty(), "the quickstart left containers: {ours:?}");
}

/// The quickstart's tag suffix (its pid), read from a container name it printed.
fn out_pid(text: &str) -> String {
    text.split("vidi-quickstart-")
        .nth(1)
        .and_then(|rest| rest.split('-').next())
        .unwrap_or("none")
        .to_string()
}
