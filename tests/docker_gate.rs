//! The in-process GPU gate of `docker run`, driven through the library with a scripted
//! `FakeProbe` (no GPU here) and the real Docker engine for the co-tenants: the gate runs after
//! the co-tenants are stopped, reports free vs needed, and a gate that never passes fails the
//! attempt like `gpu gate` would, with `precision: auto` stepping down first.
mod docker_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use docker_support::Fixture;
use vidi_operator::api::FailureReason;
use vidi_operator::docker::events::Event;
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
    let progress = Arc::new(move |e: &Event| lines.lock().unwrap_or_else(|p| p.into_inner()).push(e.to_string()));
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

/// `coTenants.policy: Minimal` on a 24 GiB card with 14 GiB free and fp16 needing 20 GiB: of a
/// container declaring 4 GiB (label), one whose 8 GiB the driver shows held by its process (the
/// fake reading lists the real container's pid, mapped to it through its cgroup), and one whose
/// memory is unknown, only the 8 GiB one and the unknown one yield. When the GPU still does not
/// free up, the next attempt yields everything before any precision is lowered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_policy_yields_the_cheapest_set_then_everything() {
    use bollard::query_parameters::InspectContainerOptions;
    let Some(fx) = Fixture::new("minimal").await else {
        return;
    };
    let declared = format!("{}-declared", fx.name);
    fx.container(
        &declared,
        &[(docker_support::TEST_LABEL, &fx.name), ("vidi.dev/gpu-memory", "4Gi")],
        true,
    )
    .await;
    let measured = fx.cotenant("measured", true).await;
    let unknown = fx.cotenant("unknown", true).await;
    let pid = fx
        .docker
        .inspect_container(&measured, None::<InspectContainerOptions>)
        .await
        .expect("inspect")
        .state
        .and_then(|s| s.pid)
        .expect("a running container has a pid") as u32;
    let declared_started = fx.started_at(&declared).await;

    let file = fx.job_file(&fx.job("a"), "find", "", "");
    let text = std::fs::read_to_string(&file).expect("job file");
    std::fs::write(
        &file,
        text.replace("  coTenants:\n", "  coTenants:\n    policy: Minimal\n"),
    )
    .expect("job file");
    let job = jobfile::load(std::path::Path::new(&file)).expect("job");
    let mut reading = device(0, 24 * GIB, 14 * GIB);
    reading.processes = vec![vidi_operator::gpu::fake::process(pid, "python3", 8 * GIB)];
    let probe = FakeProbe::new(vec![reading]);
    let lines = Arc::new(Mutex::new(Vec::new()));
    let result = session(&fx, probe, lines.clone())
        .run(&job, std::future::pending::<()>())
        .await
        .expect("run");
    let said = lines.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
    let choice = said
        .lines()
        .find(|l| l.starts_with("policy Minimal: 14.0 GiB free, 20.0 GiB needed at fp16; yielding "))
        .unwrap_or_else(|| panic!("no choice line:\n{said}"));
    assert!(
        choice.contains(&format!("Container {measured}"))
            && choice.contains(&format!("Container {unknown}"))
            && choice.ends_with(&format!("(cost 2), leaving Container {declared} running")),
        "{choice}"
    );
    assert!(
        said.contains("yielding every co-tenant (policy Minimal) before lowering the precision"),
        "{said}"
    );
    // The first attempt ran with the declared one untouched; the second made everyone yield.
    let first_gate = said.find("GPU gate failed").expect("the first gate failed");
    let declared_stopped = said
        .find(&format!("stopping Container {declared}"))
        .expect("the declared one yields in the end");
    assert!(declared_stopped > first_gate, "{said}");
    assert!(
        said.contains("14.0 GiB free, 12.0 GiB needed") || said.contains("14.0 GiB free >= 12.0 GiB needed"),
        "then int8: {said}"
    );
    assert_eq!(result.status.attempts, 3, "fp16 minimal, fp16 all, int8:\n{said}");
    for c in [&declared, &measured, &unknown] {
        assert_eq!(fx.running(c).await, Some(true), "{c} restored");
    }
    assert_ne!(fx.started_at(&declared).await, declared_started);
    assert!(!fx.journal_exists());
}
