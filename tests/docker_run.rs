//! `vidi-operator docker run` against the real Docker engine, with the fake Vidi image
//! (tests/images/fake-vidi) and `--gpus none`. Each test uses its own names, label and state
//! dir, and removes its containers even when it fails.
mod docker_support;

use docker_support::{Fixture, eventually, status_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cotenant_containers_and_commands_are_stopped_and_started_again() {
    let Some(fx) = Fixture::new("cot").await else { return };
    let tts = fx.cotenant("tts", true).await;
    // Stopped before the job: held (original 0) and left stopped afterwards (invariant 6).
    let idle = fx.cotenant("idle", false).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find wait=go", &fx.command_yaml(), "");
    let mut run = fx.run(&file, &[]);

    // While Vidi runs, every co-tenant is down and the journal records how to undo it.
    fx.vidi_running(&job).await;
    assert_eq!(
        fx.running(&tts).await,
        Some(false),
        "{tts} should be stopped while Vidi runs"
    );
    assert!(
        !fx.command_running(),
        "the command co-tenant should be stopped while Vidi runs"
    );
    let journal = std::fs::read_to_string(fx.path("state/journal.json")).expect("journal while running");
    assert!(journal.contains(&tts) && journal.contains("\"comfy\""), "{journal}");
    fx.release_vidi(&job);

    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert_eq!(fx.running(&tts).await, Some(true), "{tts} must run again");
    assert_eq!(
        fx.running(&idle).await,
        Some(false),
        "{idle} was stopped before, so stays stopped"
    );
    assert!(fx.command_running());
    assert_eq!(fx.command_log(), "stop\nstart\n");
    assert!(
        err.contains(&format!("suspended Container {tts} (was running)")),
        "{err}"
    );
    assert!(
        err.contains(&format!("restored Container {tts} (running again)")),
        "{err}"
    );
    assert!(
        err.contains(&format!("[{job}-vidi-1] fake vidi: precision=fp16")),
        "Vidi's output is streamed:\n{err}"
    );
    // The result table on stdout.
    let out = run.stdout();
    assert!(
        out.contains("Succeeded") && out.contains("00:01:05") && out.contains("00:01:12.5"),
        "{out}"
    );
    // Where the preview page is, as a host path.
    let preview = fx.path(&format!("state/jobs/{job}/output/preview.html"));
    assert!(out.contains(&format!("preview: {}", preview.display())), "{out}");
    assert!(preview.exists());
    // Nothing is left behind: no journal, no Vidi container.
    assert!(!fx.journal_exists());
    assert!(fx.vidi_containers(&job).await.is_empty());
}

/// Runs one job to its end with `--output json`; returns (exit code, status, stderr).
async fn outcome(
    fx: &Fixture,
    suffix: &str,
    query: &str,
    extra: &str,
    precision: Option<&str>,
) -> (Option<i32>, serde_json::Value, String) {
    let job = fx.job(suffix);
    let file = fx.job_file(&job, query, "", extra);
    if let Some(p) = precision {
        let text = std::fs::read_to_string(&file).expect("job file");
        std::fs::write(&file, text.replace("precision: auto", &format!("precision: {p}"))).expect("job file");
    }
    let mut run = fx.run(&file, &["--output", "json"]);
    let code = run.wait().await;
    let (out, err) = (run.stdout(), run.stderr());
    assert!(
        !out.trim().is_empty(),
        "no JSON on stdout (exit {code:?}); stderr:\n{err}"
    );
    (code, status_json(&out), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_reported_per_the_contract() {
    let Some(fx) = Fixture::new("exit").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let no_retry = "  backoffLimit: 0";

    let (code, st, err) = outcome(&fx, "ok", "find exit=0", "", None).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(st["phase"], "Succeeded");
    assert_eq!(st["result"]["segments"][0]["startSeconds"], 65.0);
    assert_eq!(st["result"]["segments"][1]["endSeconds"], 184.0);
    assert_eq!(st["result"]["precision"], "fp16");

    let (code, st, err) = outcome(&fx, "crash", "find exit=1", no_retry, None).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        (st["phase"].as_str(), st["reason"].as_str()),
        (Some("Failed"), Some("Failed"))
    );
    assert!(
        err.contains("vidi-operator: Failed: Vidi exited 1: Traceback: something broke"),
        "{err}"
    );

    let (code, st, err) = outcome(&fx, "bad", "find exit=2", "", None).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(st["reason"], "BadInput");
    assert_eq!(st["attempts"], 1, "bad input is never retried");
    // The message is the wrapper's termination log (as on Kubernetes), not its last log line.
    assert!(
        err.contains("Failed (BadInput)")
            && err.contains("rejected its input (exit 2: video missing or unreadable, or empty query): bad input: VIDI_VIDEO: /input/video.mp4 is not a video"),
        "{err}"
    );

    // A fixed precision does not step down: CUDA OOM is final.
    let (code, st, err) = outcome(&fx, "oom", "find exit=3", "", Some("int8")).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(st["reason"], "OutOfGpuMemory");
    assert_eq!(st["precision"], "int8");

    // Every ending restored the co-tenant.
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_precision_steps_down_after_cuda_oom() {
    let Some(fx) = Fixture::new("auto").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let (code, st, err) = outcome(&fx, "a", "find oom-above=int4", "", None).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(st["attempts"], 3, "{st}");
    assert_eq!(st["precision"], "int4");
    assert_eq!(st["result"]["precision"], "int4");
    assert!(
        err.contains("CUDA out of memory at fp16 (exit 3)") && err.contains("retrying at int8"),
        "{err}"
    );
    assert!(err.contains("retrying at int4"), "{err}");
    assert_eq!(fx.running(&tts).await, Some(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_run_is_refused_before_anything_stops() {
    let Some(fx) = Fixture::new("gpu").await else { return };
    let info = fx.docker.info().await.expect("docker info");
    let tts = fx.cotenant("tts", true).await;
    let cmd = fx.command_yaml();
    let started = fx.started_at(&tts).await;

    if info.runtimes.unwrap_or_default().contains_key("nvidia") {
        eprintln!("NOTE: this engine has the NVIDIA runtime; the no-runtime refusal cannot be shown here");
    } else {
        // The engine cannot attach a GPU (the gate is skipped, as when NVML is elsewhere).
        let file = fx.job_file(&fx.job("rt"), "find", &cmd, "");
        let mut run = fx.run(&file, &["--gpus", "all", "--no-gate"]);
        let code = run.wait().await;
        let err = run.stderr();
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("cannot run, so nothing was stopped"), "{err}");
        assert!(
            err.contains("--gpus: the Docker engine cannot give a container the GPU: install nvidia-container-toolkit"),
            "{err}"
        );
        // With the gate (the default) on a machine without a driver, both problems at once.
        if !std::path::Path::new("/proc/driver/nvidia").exists() {
            let mut run = fx.run(&file, &["--gpus", "all"]);
            let code = run.wait().await;
            let err = run.stderr();
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("--gpus: no usable NVIDIA driver"), "{err}");
            assert!(err.contains("cannot give a container the GPU"), "{err}");
            // The dry run lists the same two (two problems of one flag are not one).
            let mut run = fx.run(&file, &["--gpus", "all", "--dry-run"]);
            let code = run.wait().await;
            let err = run.stderr();
            assert_eq!(code, Some(1), "{err}");
            assert!(err.contains("--gpus: no usable NVIDIA driver"), "{err}");
            assert!(err.contains("cannot give a container the GPU"), "{err}");
        }
    }

    // An image that is not there and a check that cannot run: refused up front, both named.
    let broken = cmd.replace("check: \"test -f", "check: \"no-such-checker");
    assert_ne!(broken, cmd);
    let file = fx.job_file(&fx.job("img"), "find", &broken, "");
    let text = std::fs::read_to_string(&file).expect("job file");
    std::fs::write(&file, text.replace(docker_support::IMAGE, "vidi-test/absent:1")).expect("job file");
    let mut run = fx.run(&file, &[]);
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("spec.model.image: image vidi-test/absent:1 is not on the Docker engine"),
        "{err}"
    );
    assert!(
        err.contains("spec.coTenants.commands[0].check: the `check` command"),
        "{err}"
    );
    // --dry-run lists the same problems (and the planner's) at once.
    let mut dry = fx.run(&file, &["--dry-run"]);
    let code = dry.wait().await;
    let err = dry.stderr();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("spec.model.image") && err.contains("spec.coTenants.commands[0].check"),
        "{err}"
    );
    // Once, as an error, each with its place in the job file; nothing claims a restore.
    assert_eq!(err.matches("spec.model.image:").count(), 1, "{err}");
    assert!(err.starts_with("error: job "), "{err}");
    assert!(
        err.lines()
            .any(|l| l.trim_start().starts_with(&format!("{file}:")) && l.contains(": spec.model.image: image")),
        "{err}"
    );
    assert!(!err.contains("restored"), "{err}");

    // Nothing was touched by any of it.
    assert_eq!(fx.started_at(&tts).await, started, "the co-tenant was never stopped");
    assert_eq!(fx.command_log(), "", "the command co-tenant was never stopped");
    assert!(!fx.journal_exists());
    assert!(
        fx.vidi_containers(&fx.job("rt")).await.is_empty(),
        "no preflight container is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_touches_nothing() {
    let Some(fx) = Fixture::new("dry").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find", &fx.command_yaml(), "");
    let mut run = fx.run(&file, &["--dry-run"]);
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "would suspend Container {tts} (running), Command comfy (running)"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("would run container {job}-vidi-1")), "{err}");
    // Without a GPU there is no gate to wait at: the plan says what Vidi needs, not that it
    // would wait for it.
    assert!(err.contains("which needs 20.0 GiB of free GPU memory"), "{err}");
    assert!(!err.contains("GPU memory is free") && !err.contains("gate:"), "{err}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(fx.command_running());
    assert_eq!(fx.command_log(), "");
    assert!(!fx.path("state").exists(), "a dry run creates no state");
}

#[test]
fn an_invalid_job_file_names_the_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("job.yaml");
    std::fs::write(
        &file,
        "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nmetadata: {name: j}\nspec:\n  video: {hostPath: /v.mp4}\n  query: q\n  model: {weights: {hostPath: /w}}\n  coTenant: {}\n",
    )
    .expect("write");
    let out = std::process::Command::new(docker_support::BIN)
        .args(["docker", "run", "--gpus", "none", "-f"])
        .arg(&file)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("spec.coTenant: unknown field"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_stops_vidi_and_restores() {
    let Some(fx) = Fixture::new("deadline").await else {
        return;
    };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let (code, st, err) = outcome(&fx, "a", "find wait=never", "  activeDeadlineSeconds: 2", None).await;
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(st["reason"], "DeadlineExceeded", "{err}");
    assert!(
        err.contains(&format!("stopping the Vidi container {job}-vidi-1")),
        "{err}"
    );
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(fx.vidi_containers(&job).await.is_empty());
    assert!(!fx.journal_exists());
}

/// Someone starts held co-tenants while Vidi runs: each is stopped again at once (the engine's
/// events for the container, a check every second for the command), with a warning naming it,
/// and restored exactly once at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_co_tenant_started_while_held_is_stopped_again_and_restored_once() {
    let Some(fx) = Fixture::new("fight").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find wait=go", &fx.command_yaml(), "");
    let mut run = fx.run(&file, &[]);
    fx.vidi_running(&job).await;
    assert_eq!(fx.running(&tts).await, Some(false));

    // Someone starts the container again by hand.
    let restarted = std::time::Instant::now();
    fx.docker
        .start_container(&tts, None::<bollard::query_parameters::StartContainerOptions>)
        .await
        .expect("start the held co-tenant");
    eventually("the held container to be stopped again", || async {
        fx.running(&tts).await == Some(false)
    })
    .await;
    eprintln!(
        "a held container started by hand was stopped again after {:.2}s",
        restarted.elapsed().as_secs_f64()
    );
    // And the command co-tenant.
    let restarted = std::time::Instant::now();
    std::fs::write(fx.path("comfy.running"), b"").expect("start the process by hand");
    eventually("the held process to be stopped again", || async {
        !fx.command_running()
    })
    .await;
    eprintln!(
        "a held process started by hand was stopped again after {:.2}s",
        restarted.elapsed().as_secs_f64()
    );

    // Let Vidi finish.
    std::fs::write(fx.path(&format!("state/jobs/{job}/output/go")), b"").expect("signal the fake Vidi");
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    for who in [format!("Container {tts}"), "Command comfy".to_string()] {
        assert!(
            err.contains(&format!("warning: {who} was scaled to 1 by something else while VidiJob docker/{job} holds it; suspending it again")),
            "{who}:\n{err}"
        );
        assert_eq!(
            err.matches(&format!("restored {who} (running again)")).count(),
            1,
            "{who} is restored once:\n{err}"
        );
    }
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(fx.command_running());
    // Stopped when held, stopped again after the hand start, started once.
    assert_eq!(fx.command_log(), "stop\nstop\nstart\n");
    assert!(!fx.journal_exists());
}

/// `-o json`: stdout is JSON Lines, one event per step as it happens (each with `"event"` and
/// `"time"`), in the order the run did them, then `{"event":"result",…}` with the exit code and
/// the VidiJob. Stderr (not a terminal here) still has the plain lines, one per step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_tell_each_step_then_the_result() {
    let Some(fx) = Fixture::new("jsonl").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find exit=0", &fx.command_yaml(), "  activeDeadlineSeconds: 600");
    let mut run = fx.run(&file, &["-o", "json"]);
    let code = run.wait().await;
    let (out, err) = (run.stdout(), run.stderr());
    assert_eq!(code, Some(0), "{err}");
    let lines = docker_support::json_lines(&out);
    for l in &lines {
        assert!(
            l["time"].as_str().is_some_and(|t| t.parse::<jiff::Timestamp>().is_ok()),
            "{l}"
        );
    }
    let container = format!("Container {tts}");
    let vidi = format!("{job}-vidi-1");
    // The order of the steps that matter, each found after the one before.
    let steps: Vec<(&str, &str, &str)> = vec![
        ("coTenantStopping", "coTenant", &container),
        ("coTenantStopped", "coTenant", &container),
        ("coTenantStopping", "coTenant", "Command comfy"),
        ("coTenantStopped", "coTenant", "Command comfy"),
        ("vidiStarted", "container", &vidi),
        ("vidiOutput", "container", &vidi),
        ("vidiExited", "container", &vidi),
        ("coTenantStarting", "coTenant", &container),
        ("coTenantStarted", "coTenant", &container),
        ("coTenantStarted", "coTenant", "Command comfy"),
        ("result", "", ""),
    ];
    let mut at = 0;
    for (event, key, value) in &steps {
        let found = lines[at..]
            .iter()
            .position(|l| l["event"] == *event && (key.is_empty() || l[*key] == *value))
            .unwrap_or_else(|| panic!("no {event} {value} after line {at}:\n{out}"));
        at += found + 1;
    }
    assert_eq!(at, lines.len(), "the result is the last line:\n{out}");
    let stopped = lines
        .iter()
        .find(|l| l["event"] == "coTenantStopped" && l["coTenant"] == container.as_str())
        .expect("stopped");
    assert!(
        stopped["elapsedSeconds"].as_f64().is_some_and(|s| s >= 0.0),
        "{stopped}"
    );
    let started = lines.iter().find(|l| l["event"] == "vidiStarted").expect("vidiStarted");
    assert_eq!(started["precision"], "fp16");
    assert!(
        started["deadline"].as_str().is_some(),
        "activeDeadlineSeconds gives a deadline: {started}"
    );
    let exited = lines.iter().find(|l| l["event"] == "vidiExited").expect("vidiExited");
    assert_eq!(exited["exitCode"], 0);
    let result = lines.last().expect("a result");
    assert_eq!(result["exitCode"], 0);
    assert_eq!(result["job"]["kind"], "VidiJob");
    assert_eq!(result["job"]["status"]["phase"], "Succeeded");
    // The planner's notices are events too.
    assert!(
        lines.iter().any(|l| l["event"] == "notice"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("suspended {container}")))),
        "{out}"
    );

    // Stderr: plain lines, one per step, no terminal control codes.
    assert!(
        !err.contains('\u{1b}'),
        "no escape codes when stderr is not a terminal:\n{err}"
    );
    assert!(
        err.contains(&format!("vidi-operator: stopped {container} after ")),
        "{err}"
    );
    assert!(
        err.contains(&format!("vidi-operator: {vidi} exited with code 0 after ")),
        "{err}"
    );
    assert_eq!(
        err.matches(&format!("vidi-operator: stopping {container} (up to"))
            .count(),
        1,
        "one line per step, not per tick:\n{err}"
    );
}

/// `--dry-run -o json`: what would be done as events, then the planned status as the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_in_json_prints_the_plan_and_the_planned_status() {
    let Some(fx) = Fixture::new("dryjson").await else {
        return;
    };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find", "", "");
    let mut run = fx.run(&file, &["--dry-run", "-o", "json"]);
    let code = run.wait().await;
    let out = run.stdout();
    assert_eq!(code, Some(0), "{}", run.stderr());
    let lines = docker_support::json_lines(&out);
    assert!(
        lines.iter().any(|l| l["event"] == "notice"
            && l["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("would suspend Container {tts}")))),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l["event"] == "planned"
            && l["line"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("would run container {job}-vidi-1")))),
        "{out}"
    );
    let result = lines.last().expect("a result");
    assert_eq!(
        (result["event"].as_str(), result["dryRun"].as_bool()),
        (Some("result"), Some(true)),
        "{out}"
    );
    assert_eq!(result["job"]["metadata"]["name"], job.as_str());
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(!fx.path("state").exists(), "a dry run creates no state");
}

/// A command co-tenant whose `stop` fails (an error, or a stop that never brings it down): the
/// job fails at once, and the process, which never stopped, counts as restored as it is. It is
/// not stopped again and again until the restore gives up and leaves the journal behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_stop_fails_is_left_running_and_the_job_fails_at_once() {
    let Some(fx) = Fixture::new("stopfail").await else {
        return;
    };
    let d = fx.dir.path().display().to_string();
    for (case, stop, extra) in [
        ("exits 3", "echo oops >&2; exit 3", ""),
        ("never brings it down", "true", "\n        stopTimeoutSeconds: 1"),
    ] {
        std::fs::write(fx.path("comfy.running"), b"").expect("marker");
        let _ = std::fs::remove_file(fx.path("comfy.log"));
        let co = format!(
            r#"
    commands:
      - name: comfy
        stop: "echo stop >> {d}/comfy.log; {stop}"
        start: "touch {d}/comfy.running && echo start >> {d}/comfy.log"
        check: "test -f {d}/comfy.running"{extra}"#
        );
        let job = fx.job("a");
        let file = fx.job_file(&job, "find", &co, "");
        let started = std::time::Instant::now();
        let mut run = fx.run(&file, &[]);
        let code = run.wait().await;
        let err = run.stderr();
        assert_eq!(code, Some(1), "{case}: {err}");
        assert!(
            err.contains("Command comfy still runs: its stop failed, so it never stopped"),
            "{case}: {err}"
        );
        // Stopped once, never stopped again by the restore, never started.
        assert_eq!(fx.command_log(), "stop\n", "{case}: {err}");
        assert!(fx.command_running(), "{case}");
        assert!(!fx.journal_exists(), "{case}: the journal was left behind: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{case}: the restore kept retrying ({:?})",
            started.elapsed()
        );
    }
}

/// A held container removed while Vidi runs cannot be started again: the run still finishes,
/// but nothing says it was restored. The warning names it, and so does the final message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_container_removed_while_held_is_not_reported_restored() {
    let Some(fx) = Fixture::new("gone").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let keep = fx.cotenant("keep", true).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find wait=go", "", "");
    let mut run = fx.run(&file, &[]);
    fx.vidi_running(&job).await;
    let removed = fx
        .docker
        .remove_container(
            &tts,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await;
    assert!(removed.is_ok(), "{removed:?}");
    fx.release_vidi(&job);
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("Container {tts} no longer exists")), "{err}");
    assert!(
        err.contains(&format!("could not restore Container {tts}: it was removed while held")),
        "{err}"
    );
    assert!(
        !err.contains(&format!("restored Container {tts} to")),
        "said it restored what is gone: {err}"
    );
    assert!(
        err.contains(&format!("restored Container {keep} (running again)")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "every co-tenant restored except Container {tts} (removed while held)"
        )),
        "{err}"
    );
    assert_eq!(fx.running(&keep).await, Some(true));
    assert!(!fx.journal_exists());
}

/// A selector that matches no container (the commonest first mistake) is refused like every
/// other problem before anything is done: once, with its place in the job file, in a dry run
/// and a real one alike, and as the `error` line of `-o json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing_is_refused_before_anything_is_done() {
    let Some(fx) = Fixture::new("none").await else { return };
    // No container carries the fixture's label.
    let job = fx.job("a");
    let file = fx.job_file(&job, "find", "", "");
    for args in [&["--dry-run"][..], &[][..]] {
        let mut run = fx.run(&file, args);
        let code = run.wait().await;
        let err = run.stderr();
        assert_eq!(code, Some(1), "{args:?}: {err}");
        let what = "spec.coTenants: the selector matches no container on this host";
        assert_eq!(err.matches(what).count(), 1, "{args:?}: said once: {err}");
        assert!(err.contains("cannot run, so nothing was stopped"), "{args:?}: {err}");
        assert!(
            err.contains(&format!("{file}:")),
            "{args:?}: its place in the file: {err}"
        );
        assert!(!fx.journal_exists());
    }
    let mut run = fx.run(&file, &["--dry-run", "-o", "json"]);
    assert_eq!(run.wait().await, Some(1));
    let out = run.stdout();
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains(r#""event":"error""#), "{out}");
    assert!(last.contains("the selector matches no container"), "{out}");
}

/// Ctrl-C while a second job waits for the GPU lock: nothing was stopped, and it says so
/// (not "every co-tenant restored"); the first job goes on untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_waiting_for_the_lock_says_nothing_was_changed() {
    let Some(fx) = Fixture::new("lockint").await else {
        return;
    };
    let tts = fx.cotenant("tts", true).await;
    let first = fx.job("a");
    let mut a = fx.run(&fx.job_file(&first, "find wait=go", "", ""), &[]);
    fx.vidi_running(&first).await;
    let second = fx.job("b");
    let mut b = fx.run(&fx.job_file(&second, "find", "", ""), &[]);
    eventually("the second job to wait for the lock", || async {
        b.stderr().contains("to finish (one job per GPU host)")
    })
    .await;
    b.signal("INT");
    let code = b.wait().await;
    let err = b.stderr();
    assert_eq!(code, Some(130), "{err}");
    assert!(err.contains("cancelled by SIGINT before anything was changed"), "{err}");
    assert!(!err.contains("every co-tenant restored"), "{err}");
    assert_eq!(fx.running(&tts).await, Some(false), "still held by the first job");
    fx.release_vidi(&first);
    assert_eq!(a.wait().await, Some(0), "{}", a.stderr());
    assert_eq!(fx.running(&tts).await, Some(true));
}

/// A co-tenant paused before the job (it still holds its GPU memory) is stopped like a running
/// one, and ends paused again, as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_co_tenant_ends_paused_as_it_was() {
    let Some(fx) = Fixture::new("paused").await else {
        return;
    };
    let tts = fx.cotenant("tts", true).await;
    let paused = fx.docker.pause_container(&tts).await;
    assert!(paused.is_ok(), "{paused:?}");
    let job = fx.job("a");
    let mut run = fx.run(&fx.job_file(&job, "find", "", ""), &[]);
    let code = run.wait().await;
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(&format!("stopped Container {tts}")), "{err}");
    assert!(err.contains(&format!("paused Container {tts} again")), "{err}");
    let state = fx
        .docker
        .inspect_container(&tts, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state);
    assert_eq!(state.as_ref().and_then(|s| s.paused), Some(true), "{state:?}: {err}");
    let _ = fx.docker.unpause_container(&tts).await;
    assert!(!fx.journal_exists());
}

/// A container the user made, named like one of the job's Vidi containers: the job is refused
/// before anything stops (the dry run too), and that container is never stopped or removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_named_like_a_vidi_attempt_is_never_touched() {
    let Some(fx) = Fixture::new("clash").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    let theirs = format!("{job}-vidi-1");
    // Cleaned up with the fixture, and not selected as a co-tenant.
    let label = format!("{}-theirs", fx.name);
    fx.container(&theirs, &[(docker_support::TEST_LABEL, &label)], true)
        .await;
    let (theirs_before, tts_before) = (fx.started_at(&theirs).await, fx.started_at(&tts).await);
    let file = fx.job_file(&job, "find", "", "");
    for args in [&["--dry-run"][..], &[][..]] {
        let mut run = fx.run(&file, args);
        let code = run.wait().await;
        let err = run.stderr();
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot run, so nothing was stopped"), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "metadata.name: a container named {theirs} exists that vidi-operator did not create"
            )),
            "{args:?}: {err}"
        );
        assert_eq!(
            fx.started_at(&theirs).await,
            theirs_before,
            "{args:?}: theirs was touched"
        );
        assert_eq!(fx.running(&theirs).await, Some(true), "{args:?}");
        assert_eq!(
            fx.started_at(&tts).await,
            tts_before,
            "{args:?}: the co-tenant was touched"
        );
        assert!(!fx.journal_exists());
    }
}

/// A restore that fails (here a command co-tenant's `start`, until the cause goes away) is tried
/// again: nothing says it is back before it is, and once it is, the job ends with its own
/// outcome (Succeeded, exit 0, its result), not with the stale error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_then_works_ends_with_the_jobs_own_outcome() {
    let Some(fx) = Fixture::new("retry").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let d = fx.dir.path().display().to_string();
    let block = fx.path("block");
    let _ = fx.command_yaml(); // the command co-tenant "runs"
    let cmd = format!(
        r#"
    commands:
      - name: comfy
        stop: "rm -f {d}/comfy.running"
        start: "test ! -e {d}/block && touch {d}/comfy.running"
        check: "test -f {d}/comfy.running""#
    );
    let job = fx.job("a");
    // Vidi waits for the go file, so the block is in place before anything is restored.
    let file = fx.job_file(&job, "find wait=go", &cmd, "");
    let mut run = fx.run(&file, &["-o", "json"]);
    fx.vidi_running(&job).await;
    std::fs::write(&block, b"").expect("block the start");
    fx.release_vidi(&job);
    eventually("the restore retried", || async {
        run.stdout().contains(r#""event":"restoreRetrying""#)
    })
    .await;
    assert!(!fx.command_running(), "the start is blocked");
    std::fs::remove_file(&block).expect("unblock the start");
    let code = run.wait().await;
    let (out, err) = (run.stdout(), run.stderr());
    assert_eq!(code, Some(0), "{err}");
    assert!(fx.command_running(), "comfy is back: {err}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert_eq!(status_json(&out)["phase"], "Succeeded", "{out}");
    // No line says comfy is back before the start that worked.
    let lines: Vec<&str> = err.lines().collect();
    let retried = lines
        .iter()
        .position(|l| l.contains("trying again"))
        .expect("a retry line");
    let claimed = lines
        .iter()
        .position(|l| l.contains("restored Command comfy"))
        .expect("a restored line");
    assert!(claimed > retried, "said restored before it was:\n{err}");
    assert_eq!(err.matches("finished; every co-tenant restored").count(), 1, "{err}");
    assert!(!fx.journal_exists());
}
