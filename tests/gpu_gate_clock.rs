//! The GPU gate waiting, against the fake probe on tokio's paused clock: the clock jumps
//! to each poll, so no test really sleeps and every time below is exact.
//! (`start_paused` needs tokio's `test-util` feature, a dev-dependency.)

use std::time::Duration;

use vidi_operator::gpu::fake::{FakeProbe, GIB, device, process};
use vidi_operator::gpu::{self, DeviceSelector, GateError, ProbeError, Reading, wait_for_free};

const SEC: Duration = Duration::from_secs(1);

fn gpu0() -> DeviceSelector {
    DeviceSelector::default()
}

#[tokio::test(start_paused = true)]
async fn waits_then_passes_when_free_memory_rises() {
    let probe = FakeProbe::one(80 * GIB, 10 * GIB);
    probe.set_processes(0, vec![process(1234, "python3", 68 * GIB)]);
    let handle = probe.clone();
    // The co-tenant lets go after 6.5 s, as a stopped container's CUDA context would (off
    // the 1 s poll grid, so which of two wakers at the same instant runs first cannot matter).
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(6_500)).await;
        handle.set_free(0, 78 * GIB);
        handle.set_processes(0, Vec::new());
    });
    let mut frees = Vec::new();
    let report = wait_for_free(&probe, &gpu0(), 70 * GIB, 60 * SEC, SEC, |r: &Reading| {
        frees.push(r.free_bytes / GIB)
    })
    .await
    .expect("gate passes once memory is free");
    release.await.expect("release task");
    // Polled at 0..=7 s: seven readings at 10 GiB (0-6 s), then the passing one at 7 s.
    assert_eq!(frees, [10, 10, 10, 10, 10, 10, 10, 78]);
    assert_eq!(report.waited_millis, 7_000);
    assert_eq!(report.free_bytes, 78 * GIB);
    assert!(report.processes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn scripted_sequence_is_read_in_order() {
    let probe = FakeProbe::one(24 * GIB, 2 * GIB);
    probe
        .then(vec![device(0, 24 * GIB, 2 * GIB)])
        .then(vec![device(0, 24 * GIB, 12 * GIB)])
        .then(vec![device(0, 24 * GIB, 21 * GIB)]);
    let report = wait_for_free(&probe, &gpu0(), 20 * GIB, 60 * SEC, 2 * SEC, |_| {})
        .await
        .expect("passes on the third reading");
    assert_eq!(report.waited_millis, 4_000);
    assert_eq!(probe.reads(), 3);
}

#[tokio::test(start_paused = true)]
async fn times_out_saying_who_holds_the_memory() {
    let probe = FakeProbe::one(80 * GIB, 58 * GIB);
    probe.set_processes(0, vec![process(4242, "python3", 22 * GIB)]);
    let started = tokio::time::Instant::now();
    let err = wait_for_free(&probe, &gpu0(), 70 * GIB, 5 * SEC, 2 * SEC, |_| {})
        .await
        .expect_err("memory never frees");
    // Polled at 0, 2, 4 and at the deadline (5 s), not past it.
    assert_eq!(started.elapsed(), 5 * SEC);
    assert_eq!(probe.reads(), 4);
    assert_eq!(err.exit_code(), gpu::EXIT_GATE_TIMEOUT);
    let GateError::Timeout {
        waited,
        min_free_bytes,
        ref last,
    } = err
    else {
        panic!("expected a timeout, got {err:?}");
    };
    assert_eq!(waited, 5 * SEC);
    assert_eq!(min_free_bytes, 70 * GIB);
    assert_eq!(last.free_bytes, 58 * GIB);
    let msg = err.to_string();
    assert_eq!(
        msg,
        "timed out after 5s: GPU 0 (Fake GPU 0) has 58.0 GiB free of 80.0 GiB, needs 70.0 GiB; \
         held by pid 4242 python3 (22.0 GiB)"
    );
}

#[tokio::test(start_paused = true)]
async fn release_at_the_deadline_still_passes() {
    let probe = FakeProbe::one(24 * GIB, 4 * GIB);
    let handle = probe.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        handle.set_free(0, 23 * GIB);
    });
    // Interval 2 s, timeout 3 s: reads at 0, 2 and 3 s; the last one sees the release.
    let report = wait_for_free(&probe, &gpu0(), 20 * GIB, 3 * SEC, 2 * SEC, |_| {})
        .await
        .expect("passes on the deadline reading");
    assert_eq!(report.waited_millis, 3_000);
}

#[tokio::test(start_paused = true)]
async fn probe_failure_mid_wait_is_reported() {
    let probe = FakeProbe::one(80 * GIB, GIB);
    probe
        .then(vec![device(0, 80 * GIB, GIB)])
        .then_fail(ProbeError::Other("GPU fell off the bus".to_owned()));
    let err = wait_for_free(&probe, &gpu0(), 70 * GIB, 60 * SEC, SEC, |_| {})
        .await
        .expect_err("probe fails");
    assert_eq!(err.exit_code(), gpu::EXIT_NO_GPU);
    assert_eq!(err.to_string(), "GPU fell off the bus");
}
