//! The in-process GPU gate of `docker run`, driven through the library with a scripted
//! `FakeProbe` (no GPU here) and the real Docker engine for the co-tenants: the gate runs after
//! the co-tenants are stopped, reports free vs needed, and a gate that never passes fails the
//! attempt like `gpu gate` would, with `precision: auto` stepping down first.
mod docker_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use docker_support::Fixture;
use vidi_operator::api::FailureReason;
use vidi_operator::docker::session::{Options, Session};
use vidi_operator::docker::{GpuMode, jobfile};
use vidi_operator::gpu::fake::{FakeProbe, GIB, device};

fn session(fx: &Fixture, probe: FakeProbe, lines: Arc<Mutex<Vec<String>>>) -> Session {
    let opts = Options {
        state_dir: fx.path("state"),
        vidi_image: docker_support::IMAGE.into(),
        gpus: GpuMode::All,
        gate: true,
        gate_timeout: Duration::from_millis(600),
        gate_interval: Duration::from_millis(20),
        user: "1000:1000".into(),
        wait_for_lock: false,
        stop_timeout: Duration::from_secs(10),
        start_timeout: Duration::from_secs(30),
    };
    let progress = Arc::new(move |line: &str| lines.lock().unwrap_or_else(|p| p.into_inner()).push(line.to_string()));
    // The engine here has no NVIDIA runtime; the gate is what these tests are about.
    Session::new(fx.docker.clone(), opts, progress)
        .with_probe(Arc::new(probe))
        .without_gpu_runtime_check()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_that_never_passes_steps_precision_down_then_fails_and_restores() {
    let Some(fx) = Fixture::new("gate").await else { return };
    let tts = fx.cotenant("tts", true).await;
    let job = jobfile::load(std::path::Path::new(&fx.job_file(&fx.job("a"), "find", "", ""))).expect("job");
    // A 24 GiB card with only 3 GiB free: something outside the co-tenants holds the rest.
    let probe = FakeProbe::one(24 * GIB, 3 * GIB);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let result = session(&fx, probe, lines.clone())
        .run(&job, std::future::pending::<()>())
        .await
        .expect("run");
    let said = lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    let st = result.status;
    assert_eq!(st.reason, Some(FailureReason::GpuMemoryUnavailable), "{said}");
    assert_eq!(st.attempts, 3, "fp16, int8 and int4 were each tried:\n{said}");
    assert!(said.contains("3.0 GiB free, 20.0 GiB needed"), "{said}");
    assert!(said.contains("3.0 GiB free, 7.0 GiB needed"), "{said}");
    assert!(said.contains("GPU gate failed: timed out"), "{said}");
    assert_eq!(fx.running(&tts).await, Some(true), "restored after the gate failed");
    assert!(!fx.journal_exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_waits_for_free_memory_then_lets_vidi_start() {
    let Some(fx) = Fixture::new("gatepass").await else {
        return;
    };
    let tts = fx.cotenant("tts", true).await;
    let job = jobfile::load(std::path::Path::new(&fx.job_file(&fx.job("a"), "find", "", ""))).expect("job");
    // The co-tenant's memory is released a few reads after it stopped.
    // (One read goes to sizing `precision: auto`; the last step stays.)
    let probe = FakeProbe::one(24 * GIB, 4 * GIB);
    probe
        .then(vec![device(0, 24 * GIB, 4 * GIB)])
        .then(vec![device(0, 24 * GIB, 4 * GIB)])
        .then(vec![device(0, 24 * GIB, 22 * GIB)]);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let result = session(&fx, probe, lines.clone())
        .run(&job, std::future::pending::<()>())
        .await
        .expect("run");
    let said = lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    assert!(said.contains("waiting until 20.0 GiB of GPU memory is free"), "{said}");
    assert!(said.contains("22.0 GiB free >= 20.0 GiB needed"), "{said}");
    let gpu = result.status.gpu.as_ref().expect("the gate's report is in the status");
    assert_eq!(gpu.free_bytes, 22 * GIB);
    // Past the gate the engine gets the GPU request: without the NVIDIA runtime it refuses
    // it (NoGpu); with it, the fake Vidi simply answers.
    match result.status.reason {
        Some(FailureReason::NoGpu) => assert!(said.contains("Docker has no NVIDIA runtime"), "{said}"),
        other => assert_eq!(other, None, "{said}"),
    }
    assert_eq!(fx.running(&tts).await, Some(true));
}
