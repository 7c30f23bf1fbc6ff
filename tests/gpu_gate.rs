//! The GPU gate against the fake probe: the cases that end on the first reading, so they
//! need no clock. The cases that wait are in gpu_gate_clock.rs, on tokio's paused clock.
use std::time::Duration;

use vidi_operator::gpu::fake::{FakeProbe, GIB, device, process};
use vidi_operator::gpu::{self, DeviceSelector, GateError, GpuProbe, ProbeError, wait_for_free};

const SEC: Duration = Duration::from_secs(1);

fn gpu0() -> DeviceSelector {
    DeviceSelector::default()
}

#[tokio::test]
async fn passes_at_once_when_memory_is_free() {
    let probe = FakeProbe::one(80 * GIB, 79 * GIB);
    let mut seen = 0;
    let report = wait_for_free(&probe, &gpu0(), 70 * GIB, 60 * SEC, SEC, |_| seen += 1)
        .await
        .expect("gate passes");
    assert_eq!(report.free_bytes, 79 * GIB);
    assert_eq!(report.used_bytes, GIB);
    assert_eq!(report.total_bytes, 80 * GIB);
    assert_eq!(report.min_free_bytes, 70 * GIB);
    assert_eq!(report.waited_millis, 0);
    assert_eq!(report.device.index, 0);
    assert_eq!(probe.reads(), 1);
    assert_eq!(seen, 1);
}

#[tokio::test]
async fn timeout_without_visible_processes_says_so() {
    let probe = FakeProbe::one(24 * GIB, 4 * GIB);
    let err = wait_for_free(&probe, &gpu0(), 20 * GIB, Duration::ZERO, SEC, |_| {})
        .await
        .expect_err("times out");
    assert!(err.to_string().contains("no process listed by the driver"), "{err}");
}

#[tokio::test]
async fn selects_a_device_by_uuid() {
    let probe = FakeProbe::new(vec![device(0, 80 * GIB, GIB), device(1, 80 * GIB, 79 * GIB)]);
    let uuid = probe.readings().expect("readings")[1].device.uuid.clone();
    // UUIDs compare case-insensitively: NVML prints lowercase, people paste either.
    let selector: DeviceSelector = uuid.to_uppercase().parse().expect("uuid");
    let report = wait_for_free(&probe, &selector, 70 * GIB, SEC, SEC, |_| {})
        .await
        .expect("device 1 is free");
    assert_eq!(report.device.index, 1);
    assert_eq!(report.device.uuid, uuid);
}

#[tokio::test]
async fn a_missing_device_fails_at_once_listing_what_there_is() {
    let probe = FakeProbe::one(80 * GIB, 79 * GIB);
    let err = wait_for_free(&probe, &DeviceSelector::Index(3), GIB, 60 * SEC, SEC, |_| {})
        .await
        .expect_err("no GPU 3");
    assert_eq!(err.exit_code(), gpu::EXIT_NO_GPU);
    assert!(matches!(err, GateError::Probe(ProbeError::DeviceNotFound { .. })));
    assert_eq!(
        err.to_string(),
        "no GPU matches 3: found 1: 0 Fake GPU 0 (GPU-00000000-0000-0000-0000-000000000000)"
    );
    assert_eq!(probe.reads(), 1);
}

#[tokio::test]
async fn min_free_above_total_fails_fast() {
    let probe = FakeProbe::one(24 * GIB, 20 * GIB);
    let err = wait_for_free(&probe, &gpu0(), 30 * GIB, 600 * SEC, SEC, |_| {})
        .await
        .expect_err("can never pass");
    // Fails on the first reading instead of waiting out the 10 minutes.
    assert_eq!(probe.reads(), 1);
    assert_eq!(err.exit_code(), gpu::EXIT_BAD_ARGS);
    assert!(matches!(err, GateError::Impossible { .. }));
    assert!(
        err.to_string()
            .starts_with("GPU 0 (Fake GPU 0) has 24.0 GiB in total, so 30.0 GiB free can never be reached"),
        "{err}"
    );
}

#[tokio::test]
async fn no_driver_is_a_clear_error() {
    let probe = FakeProbe::no_driver();
    let err = wait_for_free(&probe, &gpu0(), GIB, SEC, SEC, |_| {})
        .await
        .expect_err("no driver");
    assert_eq!(err.exit_code(), gpu::EXIT_NO_GPU);
    assert!(
        err.to_string()
            .starts_with("no NVIDIA driver found (libnvidia-ml.so.1 could not be loaded)"),
        "{err}"
    );
}

#[test]
fn size_parsing_names_the_flag() {
    assert_eq!(gpu::parse_size("--min-free", "20GiB"), Ok(20 * GIB));
    assert_eq!(gpu::parse_size("--min-free", "18G"), Ok(18_000_000_000));
    assert_eq!(gpu::parse_size("--min-free", "5000MiB"), Ok(5000 << 20));
    assert_eq!(gpu::parse_size("--min-free", "21474836480"), Ok(20 * GIB));
    let err = gpu::parse_size("--min-free", "twenty gigs").expect_err("not a size");
    assert!(
        err.to_string().starts_with("--min-free: \"twenty gigs\" is not a size"),
        "{err}"
    );
}

#[test]
fn report_serde_shape_is_stable() {
    let mut r = device(0, 80 * GIB, 79 * GIB);
    r.processes = vec![process(7, "python3", GIB)];
    let report = r.to_report(70 * GIB, Duration::from_millis(1500));
    let json = serde_json::to_value(&report).expect("json");
    assert_eq!(
        json,
        serde_json::json!({
            "device": {"index": 0, "uuid": "GPU-00000000-0000-0000-0000-000000000000", "name": "Fake GPU 0"},
            "totalBytes": 80 * GIB,
            "usedBytes": GIB,
            "freeBytes": 79 * GIB,
            "minFreeBytes": 70 * GIB,
            "waitedMillis": 1500,
            "processes": [{"pid": 7, "usedBytes": GIB, "name": "python3"}],
        })
    );
}

#[test]
fn nvml_probe_without_a_driver_names_the_library() {
    // Paths that cannot exist: the error must say what was tried, on any machine.
    let err = gpu::NvmlProbe::with_lib_paths(["/nonexistent/libnvidia-ml.so.1"]).expect_err("no such library");
    let msg = err.to_string();
    assert!(
        msg.starts_with("no NVIDIA driver found (libnvidia-ml.so.1 could not be loaded): /nonexistent/libnvidia-ml.so.1: cannot open shared object file"),
        "{msg}"
    );
}

#[tokio::test]
async fn zero_timeout_fails_on_the_first_reading_saying_who_holds_the_memory() {
    let probe = FakeProbe::one(80 * GIB, 58 * GIB);
    probe.set_processes(
        0,
        vec![
            process(4242, "python3", 22 * GIB),
            gpu::GpuProcess {
                pid: 77,
                used_bytes: None,
                name: None,
            },
        ],
    );
    let err = wait_for_free(&probe, &gpu0(), 70 * GIB, Duration::ZERO, SEC, |_| {})
        .await
        .expect_err("not free, no time to wait");
    assert_eq!(probe.reads(), 1);
    assert_eq!(err.exit_code(), gpu::EXIT_GATE_TIMEOUT);
    assert_eq!(
        err.to_string(),
        "timed out after 0s: GPU 0 (Fake GPU 0) has 58.0 GiB free of 80.0 GiB, needs 70.0 GiB; \
         held by pid 4242 python3 (22.0 GiB), pid 77"
    );
}

/// The runtimes keep probes in shared state and run the gate inside spawned tasks.
#[test]
fn probes_errors_and_the_gate_future_cross_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<FakeProbe>();
    send_sync::<gpu::NvmlProbe>();
    send_sync::<std::sync::Arc<dyn GpuProbe>>();
    send_sync::<GateError>();
    send_sync::<ProbeError>();
    let probe = FakeProbe::one(GIB, GIB);
    let selector = gpu0();
    let gate = wait_for_free(&probe, &selector, 0, Duration::ZERO, SEC, |_| {});
    send(&gate);
}
