//! In-place release hooks on a Docker host, against the real engine and a real HTTP server
//! standing in for the co-tenants' hooks: release instead of stop and resume instead of start;
//! a refused or hanging release falls back to stop/start; GPU memory that does not go free
//! (fake NVML) falls back too; and `kill -9` between release and resume is resumed by
//! `docker recover`.
mod docker_support;
mod hook_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use docker_support::{Fixture, Proc};
use hook_server::{Answer, HookServer};
use vidi_operator::api::{FailureReason, Phase};
use vidi_operator::docker::events::Event;
use vidi_operator::docker::session::{Options, Session};
use vidi_operator::docker::{GpuMode, jobfile};
use vidi_operator::gpu::fake::{FakeProbe, GIB};

/// `refs:` naming `container` with a vLLM-style hook on `server`.
fn vllm_ref(container: &str, server: &HookServer, timeout: u32) -> String {
    format!(
        r#"
    refs:
      - kind: Container
        name: {container}
        release:
          preset: vllm
          url: "{}"
          resumeUrl: "{}"
          timeoutSeconds: {timeout}"#,
        server.url("/sleep?level=1"),
        server.url("/wake_up")
    )
}

/// The fixture's command co-tenant with a ComfyUI-style hook (no resume URL) on `server`.
fn comfy_command(fx: &Fixture, server: &HookServer, timeout: u32) -> String {
    format!(
        r#"{}
        release: {{preset: comfyui, url: "{}", timeoutSeconds: {timeout}}}"#,
        fx.command_yaml(),
        server.url("/free")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_in_place_and_resumed_never_stopped() {
    let Some(fx) = Fixture::new("relok").await else { return };
    let server = HookServer::start();
    let tts = fx.cotenant("tts", true).await;
    let before = fx.started_at(&tts).await;
    let job = fx.job("a");
    let co = format!("{}{}", vllm_ref(&tts, &server, 5), comfy_command(&fx, &server, 5));
    let file = fx.job_file(&job, "find", &co, "");
    let mut run = fx.run(&file, &[]);
    let code = run.wait().await;
    let said = format!("{}\n{}", run.stdout(), run.stderr());
    assert_eq!(code, Some(0), "{said}");
    let mut lines = server.lines();
    lines.sort();
    assert_eq!(lines, ["POST /free", "POST /sleep?level=1", "POST /wake_up"], "{said}");
    let free = server
        .requests()
        .into_iter()
        .find(|r| r.line == "POST /free")
        .expect("/free");
    assert_eq!(free.body, r#"{"unload_models": true, "free_memory": true}"#);
    // Never stopped: the same start, and no stop/start command ran.
    assert_eq!(fx.started_at(&tts).await, before, "{said}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert_eq!(fx.command_log(), "", "{said}");
    assert!(fx.command_running());
    assert!(said.contains("releasing") && said.contains("in place"), "{said}");
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_hanging_releases_fall_back_to_stop_and_start() {
    let Some(fx) = Fixture::new("relno").await else { return };
    let server = HookServer::start();
    server.answer("/sleep", Answer::Refuse);
    server.answer("/free", Answer::Hang);
    let tts = fx.cotenant("tts", true).await;
    let before = fx.started_at(&tts).await;
    let job = fx.job("a");
    let co = format!("{}{}", vllm_ref(&tts, &server, 5), comfy_command(&fx, &server, 1));
    let file = fx.job_file(&job, "find", &co, "");
    let started = std::time::Instant::now();
    let mut run = fx.run(&file, &[]);
    let code = run.wait().await;
    let said = format!("{}\n{}", run.stdout(), run.stderr());
    assert_eq!(code, Some(0), "{said}");
    // Tried once each; neither is resumed (they were stopped and started instead).
    let mut lines = server.lines();
    lines.sort();
    assert_eq!(lines, ["POST /free", "POST /sleep?level=1"], "{said}");
    assert!(said.contains("HTTP 500"), "{said}");
    assert!(said.contains("no answer within 1s"), "{said}");
    assert!(said.contains("stopping it instead"), "{said}");
    assert_ne!(fx.started_at(&tts).await, before, "stopped and started again: {said}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert_eq!(fx.command_log(), "stop\nstart\n", "{said}");
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "the hang was cut by the timeout"
    );
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_that_does_not_go_free_falls_back_to_stopping() {
    let Some(fx) = Fixture::new("relmem").await else { return };
    let server = HookServer::start();
    let tts = fx.cotenant("tts", true).await;
    let job = fx.job("a");
    // The gate waits 1 s for the released memory (freeWithinSeconds), not its whole minute.
    let co = format!("{}\n          freeWithinSeconds: 1", vllm_ref(&tts, &server, 5));
    let file = fx.job_file(&job, "find", &co, "");
    let job = jobfile::load(std::path::Path::new(&file)).expect("job");
    // 24 GiB card, 3 GiB free: the hook answers 200 but frees nothing. Once the container is
    // stopped, its memory goes free.
    let probe = FakeProbe::one(24 * GIB, 3 * GIB);
    let handle = probe.clone();
    let watcher = {
        let docker = fx.docker.clone();
        let tts = tts.clone();
        tokio::spawn(async move {
            loop {
                let running = vidi_operator::docker::observe::container_running(&docker, &tts).await;
                if running.ok().flatten() == Some(false) {
                    handle.set_free(0, 22 * GIB);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let opts = Options {
        state_dir: fx.path("state"),
        vidi_image: docker_support::IMAGE.into(),
        gpus: GpuMode::All,
        gate: true,
        gate_timeout: Duration::from_secs(60),
        gate_interval: Duration::from_millis(20),
        user: "1000:1000".into(),
        wait_for_lock: false,
        stop_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(30),
    };
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let progress = Arc::new(move |e: &Event| sink.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()));
    let result = Session::new(fx.docker.clone(), opts, progress)
        .with_probe(Arc::new(probe))
        .without_gpu_runtime_check()
        .run(&job, std::future::pending::<()>())
        .await
        .expect("run");
    watcher.abort();
    let said = lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    let st = result.status;
    assert_eq!(st.attempts, 2, "{said}");
    // The second attempt's gate passed once the container was stopped. Past the gate the engine
    // gets the GPU request: without the NVIDIA runtime it refuses it (NoGpu); with it, the fake
    // Vidi simply answers.
    assert!(said.contains("22.0 GiB free >= 20.0 GiB needed"), "{said}");
    match st.reason {
        Some(FailureReason::NoGpu) => assert!(said.contains("Docker has no NVIDIA runtime"), "{said}"),
        other => assert_eq!((other, st.phase), (None, Phase::Succeeded), "{said}"),
    }
    assert_eq!(
        st.precision,
        Some(vidi_operator::api::Precision::Fp16),
        "same precision: {said}"
    );
    assert!(
        said.contains("did not get its GPU memory after an in-place release"),
        "{said}"
    );
    assert!(said.contains("timed out after 1s"), "{said}");
    assert!(said.contains("stopped Container"), "{said}");
    // Released once, then stopped and started: no resume.
    assert_eq!(server.lines(), ["POST /sleep?level=1"], "{said}");
    assert_eq!(fx.running(&tts).await, Some(true));
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_release_and_resume_then_recover_resumes() {
    let Some(fx) = Fixture::new("relkill").await else {
        return;
    };
    let server = HookServer::start();
    let tts = fx.cotenant("tts", true).await;
    let before = fx.started_at(&tts).await;
    let job = fx.job("a");
    let file = fx.job_file(&job, "find wait=never", &vllm_ref(&tts, &server, 5), "");
    let mut run = fx.run(&file, &[]);
    fx.vidi_running(&job).await;
    assert_eq!(server.lines(), ["POST /sleep?level=1"]);
    run.signal("KILL");
    assert_eq!(run.wait().await, None, "killed by a signal");
    assert!(fx.journal_exists());
    let journal = std::fs::read_to_string(fx.path("state/journal.json")).expect("journal");
    assert!(
        journal.contains("\"released\"") && journal.contains("/wake_up"),
        "{journal}"
    );

    let mut recover = Proc::spawn(&["docker", "recover", "--state-dir", &fx.state_dir()]);
    let code = recover.wait().await;
    let said = format!("{}\n{}", recover.stdout(), recover.stderr());
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(server.lines(), ["POST /sleep?level=1", "POST /wake_up"], "{said}");
    assert!(said.contains("resumed"), "{said}");
    // Said once: the actor reports the call that answered, the planner's notice is not repeated.
    assert_eq!(said.matches("resumed Container").count(), 1, "{said}");
    assert_eq!(fx.started_at(&tts).await, before, "never stopped: {said}");
    assert!(fx.vidi_containers(&job).await.is_empty());
    assert!(!fx.journal_exists());
}
