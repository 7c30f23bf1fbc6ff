//! Unit tests of the pure planner, one or more per transition: each asserts the phase, the exact
//! writes (Hold/Release/Restore/StartAttempt/…), the Events and the counts it records.
mod support;

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vidi_operator::api::{FailureReason, Outcome, Phase, Precision, WorkloadKind, WorkloadRef};
use vidi_operator::plan::{self, Action, AttemptState, Selection, Severity};

use support::world::World;
use support::*;

/// A world with `ns/cosy` (2 replicas) and `ns/comfy` (1), both opted in, and job `a`.
fn two_co_tenants(spec: vidi_operator::api::VidiJobSpec) -> World {
    let mut w = World::new();
    w.add_co(NS, "cosy", 2, true)
        .add_co(NS, "comfy", 1, true)
        .add_job("a", 1, spec);
    w
}

/// Drives job `name` from Pending to a created, running Vidi pod.
fn start(w: &mut World, name: &str) {
    w.reconcile(name);
    w.drain();
    w.reconcile(name);
    w.reconcile(name);
    w.run_pod(name);
    assert_eq!(w.phase(name), Phase::Running);
    assert!(w.job(name).alive(), "{name} has a live attempt");
}

// ----- happy path -----

#[test]
fn happy_path_goes_through_every_phase_and_restores_exactly() {
    let mut w = two_co_tenants(spec());

    // Pending -> Suspending: one Hold per co-tenant, recording holder and original replicas.
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d),
        ["hold ns/cosy orig=2 by=ns/a", "hold ns/comfy orig=1 by=ns/a"]
    );
    assert_eq!(d.status.phase, Phase::Suspending);
    assert!(d.status.start_time.is_some());
    assert_eq!(d.status.suspended.len(), 2);
    assert_eq!(d.status.suspended[0].original_replicas, 2);
    assert!(
        notice(&d, "Started").is_none(),
        "a job that never waited starts with its Suspended Events"
    );
    assert_eq!(notice(&d, "Suspended").map(|n| n.0), Some(Severity::Normal));
    assert_eq!(w.co("ns/cosy").replicas, 0);
    assert_eq!(w.co("ns/cosy").original_replicas, Some(2));

    // Pods not gone yet: still Suspending, nothing started.
    let d = w.reconcile("a");
    assert!(writes(&d).is_empty(), "{:?}", writes(&d));
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 2 pods of Deployment ns/cosy, 1 pod of Deployment ns/comfy to stop")
    );

    // Pods gone: Running and the first attempt are recorded in one status; the adapter creates
    // the pod once that status has landed.
    w.drain();
    let d = w.reconcile("a");
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(d.status.precision, Some(Precision::Fp16));
    assert!(d.requeue_after.is_some());
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"]);
    assert_eq!(d.status.attempts, 1);
    assert_eq!(d.status.pod_name.as_deref(), Some("a-vidi-1"));
    assert!(notice(&d, "Starting").is_some());
    let Some(Action::StartAttempt { min_free_bytes, .. }) =
        d.actions.iter().find(|a| matches!(a, Action::StartAttempt { .. }))
    else {
        panic!("no StartAttempt")
    };
    assert_eq!(*min_free_bytes, 20 << 30);

    w.run_pod("a");
    let d = w.reconcile("a");
    assert!(writes(&d).is_empty());
    assert_eq!(
        d.status.message.as_deref(),
        Some("Vidi attempt 1 is running on gpu-node at fp16")
    );
    assert_eq!(d.status.node.as_deref(), Some("gpu-node"));
    assert_eq!(cond(&d.status, "Reconciling"), "True");

    // Vidi answers: restore both (each to its original, marks removed), Succeeded.
    assert!(w.finish("a", finished(0)));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=2", "restore ns/comfy to=1"]);
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert_eq!(d.status.outcome, Some(Outcome::Succeeded));
    assert_eq!(d.status.reason, None);
    assert!(d.status.suspended.is_empty());
    assert!(d.status.completion_time.is_some());
    let result = d.status.result.as_ref().expect("result");
    assert_eq!(result.segments.len(), 2);
    assert_eq!(result.summary, "2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04");
    assert_eq!(result.precision, Some(Precision::Fp16));
    // The answer and the end, in one Event when they come in one decision.
    assert!(notice(&d, "Answered").is_none());
    assert_eq!(
        notice(&d, "Succeeded").map(|n| n.1),
        Some(
            "finished; every co-tenant restored; Vidi answered: 2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04"
                .to_string()
        )
    );
    assert_eq!(cond(&d.status, "Complete"), "True");
    assert_eq!(cond(&d.status, "Ready"), "True");
    assert_eq!(cond(&d.status, "Failed"), "False");
    assert_eq!(cond(&d.status, "Stalled"), "False");
    assert_eq!(cond(&d.status, "Reconciling"), "False");
    for c in ["ns/cosy", "ns/comfy"] {
        let co = w.co(c);
        assert!(co.holders.is_empty() && co.original_replicas.is_none(), "{co:?}");
    }
    assert_eq!((w.co("ns/cosy").replicas, w.co("ns/comfy").replicas), (2, 1));
    w.check_all_restored();

    // Finished and settled: nothing more to do.
    let d = w.reconcile("a");
    assert!(writes(&d).is_empty());
    assert_eq!(d.status.phase, Phase::Succeeded);
}

#[test]
fn the_first_waiting_message_stands_for_five_seconds_then_follows_each_pod() {
    // Left the queue at t=10, waiting for two co-tenants' pods.
    let first = "waiting for 1 pod of Deployment ns/cosy, 1 pod of Deployment ns/comfy to stop";
    let waiting = || {
        job("a")
            .suspending()
            .status(|st| st.message = Some(first.into()))
            .co(deploy("cosy").held(&["a"], 1).pods(1))
            .co(deploy("comfy").held(&["a"], 1))
    };
    // comfy's pod stopped 2 s in: no status change for it, and a look again at the 5 s mark.
    let d = waiting().now(12).plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(
        d.status.message.as_deref(),
        Some(first),
        "no write for a pod that stopped at once"
    );
    assert_eq!(d.requeue_after, Some(std::time::Duration::from_secs(3)));
    // Still waiting at 5 s: the message says exactly what is left.
    let d = waiting().now(15).plan();
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 1 pod of Deployment ns/cosy to stop")
    );
    // The first message of a wait is always written (here: none yet).
    let d = waiting().status(|st| st.message = None).now(11).plan();
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 1 pod of Deployment ns/cosy to stop")
    );
}

#[test]
fn waits_for_co_tenant_pods_before_starting() {
    let s = job("a").suspending().co(deploy("cosy").held(&["a"], 1).pods(1));
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert!(writes(&d).is_empty(), "{:?}", writes(&d));
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 1 pod of Deployment ns/cosy to stop")
    );
    assert!(d.requeue_after.is_some());

    // One co-tenant gone, another with a pod left: still waiting, and no Vidi pod.
    let d = s.clone().co(deploy("comfy").held(&["a"], 1)).plan();
    assert_eq!(d.status.phase, Phase::Suspending, "one pod left still blocks");
    assert!(!d.actions.iter().any(|a| matches!(a, Action::StartAttempt { .. })));

    let s = job("a").suspending().co(deploy("cosy").held(&["a"], 1));
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(
        d.status.attempts, 1,
        "the attempt is recorded with Running, before the pod exists"
    );
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"]);
    // A crash after that status, before the pod: the next look creates it.
    let d = job("a").running().co(deploy("cosy").held(&["a"], 1)).plan();
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"]);
}

#[test]
fn queued_behind_an_active_job_joins_its_holds() {
    let s = job("b")
        .created(5)
        .co(deploy("cosy").held(&["a"], 2))
        .rival("a", 1, Phase::Running);
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Queued);
    assert_eq!(d.status.waiting_for.as_deref(), Some("ns/a"));
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for VidiJob ns/a (running); position 1 in the GPU queue")
    );
    // Next in line joins the hold, keeping the recorded original.
    assert_eq!(writes(&d), ["hold ns/cosy orig=2 by=ns/a,ns/b"]);
    assert!(notice(&d, "Queued").is_some());
}

#[test]
fn a_higher_priority_job_overtakes_older_waiting_ones_but_not_the_running_one() {
    let mut older = rival_of("old", 1, Phase::Queued);
    older.priority = 0;
    // The urgent job is younger, but goes before the older waiting one: next behind the runner.
    let d = job("urgent")
        .created(50)
        .with_spec(|s| s.priority = 5)
        .co(deploy("cosy"))
        .rival("run", 0, Phase::Running)
        .plan_with_rival(older.clone());
    assert_eq!(d.status.phase, Phase::Queued);
    assert_eq!(d.status.waiting_for.as_deref(), Some("ns/run"));
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for VidiJob ns/run (running); position 1 in the GPU queue (priority 5)")
    );
    // The older one now waits behind the urgent one.
    let mut urgent = rival_of("urgent", 50, Phase::Queued);
    urgent.priority = 5;
    let d = job("old")
        .created(1)
        .co(deploy("cosy"))
        .rival("run", 0, Phase::Running)
        .plan_with_rival(urgent);
    assert_eq!(
        d.status.waiting_for.as_deref(),
        Some("ns/urgent"),
        "{:?}",
        d.status.message
    );
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for VidiJob ns/urgent (ahead in the queue); position 2 in the GPU queue")
    );
}

// ----- failures and retries -----

#[test]
fn exit_1_is_retried_up_to_backoff_limit_counting_failures() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec_from(serde_json::json!({"backoffLimit": 2})));
    start(&mut w, "a");

    w.finish("a", finished(1));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["start 2 a-vidi-2 fp16"]);
    assert_eq!(
        (d.status.phase, d.status.failures, d.status.attempts),
        (Phase::Running, 1, 2)
    );
    let (sev, msg) = notice(&d, "Retrying").expect("Retrying event");
    assert_eq!(sev, Severity::Warning);
    assert!(msg.contains("retry 1 of 2"), "{msg}");

    w.finish("a", finished(1));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["start 3 a-vidi-3 fp16"]);
    assert_eq!((d.status.failures, d.status.attempts), (2, 3));

    w.finish("a", finished(1));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::Failed));
    assert_eq!((d.status.failures, d.status.attempts), (3, 3));
    assert_eq!(d.status.message.as_deref(), Some("Vidi exited 1"));
    w.check_all_restored();
}

#[test]
fn a_crash_after_starting_a_retry_grants_no_extra_retry() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec_from(serde_json::json!({"backoffLimit": 1})));
    start(&mut w, "a");
    w.finish("a", finished(1));
    // The retry's pod exists while the status still says failures=0 (the adapters write the
    // status before creating the pod; a status that lags, or one restored from a backup, can
    // still show this).
    let k = key("a");
    let before = w.job("a").status.clone();
    let d = plan::next(&w.snapshot(&k));
    assert_eq!(writes(&d), ["start 2 a-vidi-2 fp16"]);
    w.apply(&k, &d, None);
    w.job_mut("a").status = before;
    assert_eq!(w.job("a").status.failures, 0);
    w.finish("a", finished(1));
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d),
        ["restore ns/cosy to=1"],
        "both failures are seen on the pods"
    );
    assert_eq!((d.status.phase, d.status.failures), (Phase::Failed, 2));
}

#[test]
fn exit_2_is_bad_input_and_never_retried() {
    let d = job("a")
        .running()
        .with_spec(|s| s.backoff_limit = 5)
        .co(deploy("cosy").held(&["a"], 3))
        .attempt(1, finished(2))
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=3"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::BadInput));
    assert_eq!(d.status.failures, 0);
    assert_eq!(d.status.attempts, 1);
}

#[test]
fn exit_3_steps_auto_precision_down_then_fails_out_of_gpu_memory() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true).add_job("a", 1, spec());
    start(&mut w, "a");
    let mut seen = Vec::new();
    for (next, precision) in [(2, "int8"), (3, "int4")] {
        w.finish("a", finished(3));
        let d = w.reconcile("a");
        assert_eq!(writes(&d), [format!("start {next} a-vidi-{next} {precision}")]);
        let (sev, msg) = notice(&d, "PrecisionLowered").expect("PrecisionLowered event");
        assert_eq!(sev, Severity::Warning);
        assert!(msg.contains(&format!("retrying at {precision}")), "{msg}");
        assert_eq!(
            d.status.failures, 0,
            "out of memory does not count against backoffLimit"
        );
        seen.push(d.status.precision);
    }
    assert_eq!(seen, [Some(Precision::Int8), Some(Precision::Int4)]);
    w.finish("a", finished(3));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::OutOfGpuMemory));
    assert!(d.status.message.as_deref().unwrap_or("").contains("at int4"));
    assert_eq!(d.status.attempts, 3);
}

#[test]
fn exit_3_with_a_fixed_precision_fails_at_once() {
    let d = job("a")
        .running()
        .with_spec(|s| s.model.precision = Precision::Int8)
        .co(deploy("cosy").held(&["a"], 1))
        .attempt_at(1, Precision::Int8, finished(3))
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::OutOfGpuMemory));
    assert!(notice(&d, "PrecisionLowered").is_none());
}

#[test]
fn oom_killed_fails_and_points_at_spec_resources_memory() {
    let d = job("a")
        .running()
        .with_spec(|s| s.backoff_limit = 3)
        .co(deploy("cosy").held(&["a"], 1))
        .attempt(1, oom_killed())
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::OOMKilled));
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(
        msg.contains("spec.resources.memory") && msg.contains("OOMKilled"),
        "{msg}"
    );
    let (sev, event) = notice(&d, "Failed").expect("Failed event");
    assert_eq!(sev, Severity::Warning);
    assert!(event.contains("spec.resources.memory"), "{event}");
}

#[test]
fn gate_timeout_lowers_auto_precision_and_fails_a_fixed_one() {
    let d = job("a")
        .running()
        .co(deploy("cosy").held(&["a"], 1))
        .attempt(1, gate_timeout())
        .plan();
    assert_eq!(writes(&d), ["start 2 a-vidi-2 int8"]);
    assert_eq!(d.status.failures, 0);

    let d = job("a")
        .running()
        .with_spec(|s| s.model.precision = Precision::Fp16)
        .co(deploy("cosy").held(&["a"], 1))
        .attempt(1, gate_timeout())
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.reason, Some(FailureReason::GpuMemoryUnavailable));
    assert!(d.status.message.as_deref().unwrap_or("").contains("12 GiB free"));
}

#[test]
fn gate_timeout_with_a_fixed_threshold_does_not_retry_lower() {
    // A lower precision would wait for the same minFreeMemory again.
    let d = job("a")
        .running()
        .with_spec(|s| {
            s.gpu.min_free_memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity("20Gi".into()))
        })
        .co(deploy("cosy").held(&["a"], 1))
        .attempt(1, gate_timeout())
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.reason, Some(FailureReason::GpuMemoryUnavailable));
}

#[test]
fn a_job_keeps_the_pool_it_took_when_its_spec_gpu_changes() {
    let d = job("a").co(deploy("cosy")).plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    let pool = d
        .status
        .pool
        .clone()
        .expect("the pool is recorded on leaving the queue");
    assert_eq!(pool, "nvidia.com/gpu|");
    let mut moved = spec();
    moved.gpu.node_selector = [("gpu".to_string(), "b".to_string())].into();
    assert_eq!(
        vidi_operator::plan::queue::job_pool(&moved, &d.status),
        pool,
        "active: the recorded pool"
    );
    let mut done = d.status.clone();
    done.phase = Phase::Succeeded;
    assert_eq!(
        vidi_operator::plan::queue::job_pool(&moved, &done),
        "nvidia.com/gpu|gpu=b",
        "finished: the spec's"
    );
}

// ----- deletion, deadlines -----

#[test]
fn deletion_mid_run_stops_vidi_first_and_restores_once_the_pod_is_gone() {
    let mut w = two_co_tenants(spec());
    start(&mut w, "a");
    w.delete("a");

    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["stop 1 a-vidi-1"]);
    assert_eq!(d.status.phase, Phase::Restoring);
    assert!(!d.released);
    assert_eq!(
        w.co("ns/cosy").replicas,
        0,
        "nothing restored while Vidi may still use the GPU"
    );

    let d = w.reconcile("a");
    assert!(writes(&d).is_empty(), "terminating: wait, {:?}", writes(&d));
    assert!(!d.released);

    w.settle_pods();
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=2", "restore ns/comfy to=1"]);
    assert!(d.released);
    assert!(!w.exists("a"));
    w.check_all_restored();
}

#[test]
fn deleting_a_job_that_shares_a_hold_only_releases_it() {
    let d = job("b")
        .phase(Phase::Queued)
        .deleting()
        .co(deploy("cosy").held(&["a", "b"], 2))
        .plan();
    assert_eq!(writes(&d), ["release ns/cosy by=ns/a"]);
    assert!(d.released);
}

#[test]
fn deadline_exceeded_while_suspending_fails_and_restores() {
    let d = job("a")
        .suspending()
        .with_spec(|s| s.active_deadline_seconds = Some(60))
        .co(deploy("cosy").held(&["a"], 2).pods(2))
        .now(100)
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=2"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::DeadlineExceeded));
    assert_eq!(
        d.status.message.as_deref(),
        Some("activeDeadlineSeconds (60s) passed in phase Suspending")
    );
}

#[test]
fn deadline_exceeded_while_running_stops_then_restores_keeping_the_reason() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec_from(serde_json::json!({"activeDeadlineSeconds": 300})));
    start(&mut w, "a");
    let d = w.reconcile("a");
    let left = d.requeue_after.expect("requeue before the deadline");
    assert!(left <= Duration::from_secs(300), "{left:?}");

    w.advance(301);
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["stop 1 a-vidi-1"]);
    assert_eq!(d.status.phase, Phase::Restoring);
    assert_eq!(d.status.reason, Some(FailureReason::DeadlineExceeded));

    let d = w.reconcile("a");
    assert!(writes(&d).is_empty());
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("activeDeadlineSeconds")
    );

    w.settle_pods();
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::DeadlineExceeded));
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(msg.contains("activeDeadlineSeconds (300s) passed"), "{msg}");
    let (_, event) = notice(&d, "Failed").expect("Failed event");
    assert!(event.contains("activeDeadlineSeconds"), "{event}");
    w.check_all_restored();
}

// ----- the queue -----

#[test]
fn three_jobs_for_one_gpu_run_oldest_first_and_restore_once_after_the_last() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 2, true);
    for (name, created) in [("a", 1), ("b", 2), ("c", 3)] {
        w.add_job(name, created, spec());
    }
    // Newest first: each waits for the oldest.
    let d = w.reconcile("c");
    assert_eq!(d.status.phase, Phase::Queued);
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for VidiJob ns/a (ahead in the queue); position 2 in the GPU queue")
    );
    let d = w.reconcile("b");
    assert_eq!(
        (d.status.phase, d.status.waiting_for.as_deref()),
        (Phase::Queued, Some("ns/a"))
    );
    assert!(!has_hold(&d));

    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["hold ns/cosy orig=2 by=ns/a"]);
    // b is next: it joins the hold; c still waits behind b.
    let d = w.reconcile("b");
    assert_eq!(writes(&d), ["hold ns/cosy orig=2 by=ns/a,ns/b"]);
    assert_eq!(d.status.phase, Phase::Queued);
    let d = w.reconcile("c");
    assert!(writes(&d).is_empty());
    assert_eq!(d.status.waiting_for.as_deref(), Some("ns/b"));

    let mut restores = 0;
    let mut order = Vec::new();
    for (name, next) in [("a", Some("b")), ("b", Some("c")), ("c", None)] {
        w.drain();
        w.reconcile(name);
        w.reconcile(name);
        assert!(w.job(name).alive(), "{name} runs");
        order.push(name);
        w.check_one_per_pool();
        for other in ["a", "b", "c"] {
            if other != name && w.exists(other) && !w.phase(other).is_terminal() {
                let d = w.reconcile(other);
                assert!(!d.actions.iter().any(|a| matches!(a, Action::StartAttempt { .. })));
            }
        }
        w.finish(name, finished(0));
        let d = w.reconcile(name);
        restores += d.actions.iter().filter(|a| matches!(a, Action::Restore { .. })).count();
        match next {
            Some(n) => {
                assert_eq!(writes(&d), [format!("release ns/cosy by=ns/{n}")]);
                assert_eq!(w.co("ns/cosy").replicas, 0, "stays down between jobs");
                let d = w.reconcile(n);
                assert_eq!(
                    notice(&d, "Started").map(|n| n.0),
                    Some(Severity::Normal),
                    "{n} left the queue"
                );
            }
            None => assert_eq!(writes(&d), ["restore ns/cosy to=2"]),
        }
        assert_eq!(w.phase(name), Phase::Succeeded);
    }
    assert_eq!(order, ["a", "b", "c"]);
    assert_eq!(restores, 1);
    w.check_all_restored();
}

#[test]
fn a_crash_before_the_status_write_cannot_put_two_jobs_on_one_gpu() {
    // b is older but suspended, so a (newer) goes first. Its co-tenant is already at 0, so its
    // first decision takes it from Pending all the way to Running; the operator dies after that
    // decision's writes, before its status is written. Then b is resumed.
    let mut w = World::new();
    w.add_co(NS, "cosy", 0, true)
        .add_job("b", 1, spec_from(serde_json::json!({"suspend": true})))
        .add_job("a", 2, spec());
    w.reconcile("b");
    let k = key("a");
    for _ in 0..2 {
        let d = plan::next(&w.snapshot(&k));
        assert!(d.status.phase.is_active(), "{:?}", d.status.phase);
        w.apply(&k, &d, Some(d.actions.len()));
        w.check_one_per_pool();
    }
    assert_eq!(w.phase("a"), Phase::Pending, "nothing of a's status was written");
    w.edit("b", |s| s.suspend = false);
    for _ in 0..3 {
        w.reconcile("b");
        w.reconcile("a");
        w.drain();
        w.check_one_per_pool();
    }
    let alive: Vec<&str> = ["a", "b"].into_iter().filter(|n| w.job(n).alive()).collect();
    assert_eq!(alive, ["b"], "b (older) runs; a waits");
    assert_eq!(w.phase("a"), Phase::Queued);
}

#[test]
fn jobs_that_left_the_queue_on_views_that_missed_each_other_back_off_before_vidi_starts() {
    // b went Go while its view still showed a (older) waiting or suspended: a is ahead.
    let d = job("b")
        .created(5)
        .suspending()
        .co(deploy("cosy").held(&["a", "b"], 1))
        .rival("a", 1, Phase::Suspending)
        .plan();
    assert_eq!(d.status.phase, Phase::Queued);
    assert_eq!(d.status.waiting_for.as_deref(), Some("ns/a"));
    assert!(writes(&d).is_empty(), "{:?}", writes(&d));
    assert_eq!(notice(&d, "BackedOff").map(|n| n.0), Some(Severity::Warning));
    // a, older, goes on.
    let d = job("a")
        .created(1)
        .suspending()
        .co(deploy("cosy").held(&["a", "b"], 1))
        .rival("b", 5, Phase::Suspending)
        .plan();
    assert_eq!(d.status.phase, Phase::Running);
    // Running without a pod yet while another job of the pool is Running: no pod, back to the queue.
    let d = job("a")
        .created(1)
        .running()
        .co(deploy("cosy").held(&["a", "b"], 1))
        .rival("b", 5, Phase::Running)
        .plan();
    assert_eq!(d.status.phase, Phase::Queued);
    assert!(!d.actions.iter().any(|a| matches!(a, Action::StartAttempt { .. })));
    // A job whose Vidi pod already runs is not disturbed.
    let d = job("a")
        .created(1)
        .running()
        .attempt(1, AttemptState::Running)
        .co(deploy("cosy").held(&["a"], 1))
        .rival("b", 5, Phase::Running)
        .plan();
    assert_eq!(d.status.phase, Phase::Running);
}

#[test]
fn a_deleted_job_does_not_let_go_of_a_hold_its_view_has_not_caught_up_with() {
    let listed = vidi_operator::api::SuspendedCoTenant {
        kind: WorkloadKind::Deployment,
        namespace: NS.into(),
        name: "cosy".into(),
        original_replicas: 1,
        released_in_place: false,
    };
    // The status (written after the Hold) lists cosy; the cache does not show the hold yet.
    let lagging = job("a")
        .suspending()
        .deleting()
        .status(|st| st.suspended = vec![listed.clone()])
        .co(deploy("cosy"))
        .plan();
    assert!(!lagging.released);
    assert!(writes(&lagging).is_empty());
    assert_eq!(lagging.requeue_after, Some(Duration::from_secs(2)));
    assert!(
        lagging
            .status
            .message
            .as_deref()
            .unwrap_or("")
            .contains("Deployment ns/cosy")
    );
    // Next look, the hold is visible: restored, then let go.
    let d = job("a")
        .suspending()
        .deleting()
        .status(|st| *st = lagging.status.clone())
        .co(deploy("cosy").held(&["a"], 1))
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=1"]);
    assert!(d.released);
    // A view that is right (the restore's status write was lost) costs one more look only.
    let d = job("a")
        .suspending()
        .deleting()
        .status(|st| *st = lagging.status.clone())
        .co(deploy("cosy"))
        .plan();
    assert!(d.released && writes(&d).is_empty());
}

// ----- co-tenants -----

#[test]
fn co_tenant_scaled_up_mid_job_is_suspended_again_with_a_warning() {
    let d = job("a")
        .running()
        .co(deploy("cosy")
            .held(&["a"], 2)
            .replicas(3)
            .pods(3)
            .scaled_by("hpa-controller"))
        .attempt(1, AttemptState::Running)
        .plan();
    assert_eq!(writes(&d), ["resuspend ns/cosy"]);
    let (sev, msg) = notice(&d, "CoTenantFought").expect("CoTenantFought event");
    assert_eq!(sev, Severity::Warning);
    assert!(msg.contains("hpa-controller") && msg.contains("ns/a"), "{msg}");
    assert!(msg.contains("restored to 2"), "{msg}");
    assert_eq!(d.status.suspended[0].original_replicas, 2, "original kept");

    // In the world: the recorded original survives the fight and is what comes back.
    let mut w = World::new();
    w.add_co(NS, "cosy", 2, true).add_job("a", 1, spec());
    start(&mut w, "a");
    w.scale(0, 5, "argocd");
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["resuspend ns/cosy"]);
    assert!(notice(&d, "CoTenantFought").unwrap().1.contains("argocd"));
    assert_eq!(
        (w.co("ns/cosy").replicas, w.co("ns/cosy").original_replicas),
        (0, Some(2))
    );
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=2"]);
}

#[test]
fn an_attempt_that_ends_does_not_suspend_anything_on_its_way_out() {
    // A co-tenant that appeared (or was scaled up) while Vidi ran: the ending restores, it does
    // not first hold/resuspend and then restore in the same decision.
    let d = job("a")
        .running()
        .co(deploy("cosy").held(&["a"], 2).replicas(2).pods(2))
        .co(deploy("newcomer"))
        .attempt(1, finished(0))
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=2"]);
    assert_eq!(d.status.phase, Phase::Succeeded);
}

#[test]
fn a_crash_half_way_through_restoring_does_not_suspend_again() {
    let mut w = two_co_tenants(spec());
    start(&mut w, "a");
    w.finish("a", finished(0));
    let k = key("a");
    let d = plan::next(&w.snapshot(&k));
    let first_restore = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Restore { .. }))
        .expect("a Restore");
    w.apply(&k, &d, Some(first_restore + 1));
    assert_eq!((w.co("ns/cosy").replicas, w.phase("a")), (2, Phase::Running));
    // Restarted: only the rest is restored; cosy is not scaled to 0 and back.
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/comfy to=1"]);
    assert_eq!(d.status.phase, Phase::Succeeded);
    w.check_all_restored();
}

#[test]
fn co_tenant_at_zero_before_the_job_is_restored_to_zero() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 0, true)
        .add_co(NS, "comfy", 1, true)
        .add_job("a", 1, spec());
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d),
        ["hold ns/cosy orig=0 by=ns/a", "hold ns/comfy orig=1 by=ns/a"]
    );
    start(&mut w, "a");
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=0", "restore ns/comfy to=1"]);
    assert_eq!(w.co("ns/cosy").replicas, 0);
    w.check_all_restored();
}

#[test]
fn cross_namespace_ref_needs_the_opt_in_label() {
    let r = WorkloadRef {
        kind: WorkloadKind::Deployment,
        name: "cosy".into(),
        namespace: Some("other".into()),
        release: None,
    };
    let base = job("a").with_spec(|s| s.co_tenants.refs = vec![r.clone()]);
    let d = base
        .clone()
        .co(deploy("cosy").ns("other").opted_in(false).selection(Selection::Ref(0)))
        .plan();
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::InvalidSpec));
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with("spec.coTenants.refs[0]: Deployment other/cosy"),
        "{msg}"
    );
    assert!(msg.contains("vidi.dev/yield-gpu=true"), "{msg}");
    assert!(!has_hold(&d));

    let d = base.co(deploy("cosy").ns("other").selection(Selection::Ref(0))).plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(writes(&d), ["hold other/cosy orig=1 by=ns/a"]);
}

#[test]
fn cross_namespace_selector_match_without_the_label_is_skipped() {
    let everything = serde_json::json!({"coTenants": {"selector": {"matchLabels": {}}, "namespaces": ["ns", "other"]}});
    let mut w = World::new();
    w.add_co(NS, "local", 1, false)
        .add_co("other", "cosy", 1, false)
        .add_co("other", "comfy", 1, true)
        .add_job("a", 1, spec_from(everything.clone()));
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d),
        ["hold ns/local orig=1 by=ns/a", "hold other/comfy orig=1 by=ns/a"]
    );
    assert_eq!(w.co("other/cosy").replicas, 1);

    // Only unlabelled workloads elsewhere: nothing to suspend, and the message says why.
    let mut w = World::new();
    w.add_co("other", "cosy", 1, false)
        .add_job("a", 1, spec_from(everything));
    let d = w.reconcile("a");
    assert_eq!(d.status.reason, Some(FailureReason::InvalidSpec));
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with("spec.coTenants:") && msg.contains("1 in other namespaces were skipped"),
        "{msg}"
    );
    assert!(!has_hold(&d));
}

// ----- invalid specs -----

#[test]
fn invalid_specs_fail_naming_the_field_and_suspend_nothing() {
    let cases: Vec<(&str, vidi_operator::api::VidiJobSpec, bool)> = vec![
        ("spec.query", spec_from(serde_json::json!({"query": "  "})), true),
        (
            "spec.video",
            spec_from(
                serde_json::json!({"video": {"url": "https://x/v.mp4", "volume": {"claimName": "v", "path": "a.mp4"}}}),
            ),
            true,
        ),
        (
            "spec.video.hostPath",
            spec_from(serde_json::json!({"video": {"hostPath": "/data/v.mp4"}})),
            true,
        ),
        ("spec.coTenants", spec(), false),
    ];
    for (field, spec, with_co_tenant) in cases {
        let mut s = job("a").spec(spec);
        if with_co_tenant {
            s = s.co(deploy("cosy"));
        }
        let d = s.plan();
        assert_eq!(d.status.phase, Phase::Failed, "{field}");
        assert_eq!(d.status.reason, Some(FailureReason::InvalidSpec), "{field}");
        let msg = d.status.message.clone().unwrap_or_default();
        assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
        assert!(writes(&d).is_empty(), "{field}: {:?}", writes(&d));
        let (sev, event) = notice(&d, "InvalidSpec").expect("InvalidSpec event");
        assert_eq!(sev, Severity::Warning);
        assert!(event.contains(field));
        assert_eq!(cond(&d.status, "Failed"), "True");
        assert_eq!(cond(&d.status, "Stalled"), "True");
        let failed = plan::conditions::find(&d.status, "Failed").unwrap();
        assert_eq!(failed.reason, "InvalidSpec");
    }
    // allowNone: a selector that matches nothing is fine.
    let d = job("a").with_spec(|s| s.co_tenants.allow_none = true).plan();
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"]);
    // A problem the adapter found (a missing claim) is reported the same way.
    let mut s = job("a").co(deploy("cosy"));
    s.0.problems.push(vidi_operator::api::FieldError::new(
        "spec.model.weights.claimName",
        "PersistentVolumeClaim ns/vidi-weights not found",
    ));
    let d = s.plan();
    assert_eq!(d.status.reason, Some(FailureReason::InvalidSpec));
    assert!(
        d.status
            .message
            .clone()
            .unwrap_or_default()
            .starts_with("spec.model.weights.claimName")
    );
    assert!(!has_hold(&d));
}

#[test]
fn host_paths_are_fine_on_docker() {
    let d = job("a")
        .docker()
        .spec(spec_from(serde_json::json!({
            "video": {"hostPath": "/data/v.mp4"},
            "model": {"weights": {"hostPath": "/models/vidi"}},
        })))
        .co(deploy("cosy").ns(""))
        .plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(writes(&d), ["hold cosy orig=1 by=ns/a"]);
}

#[test]
fn docker_waits_for_processes_and_has_no_namespace_rule() {
    let comfy = vidi_operator::plan::CoTenant {
        id: vidi_operator::plan::CoTenantId {
            kind: WorkloadKind::Command,
            namespace: String::new(),
            name: "comfyui".into(),
        },
        ..deploy("comfyui")
    };
    let cosy = deploy("cosyvoice").ns("").opted_in(false);
    let s = job("a").docker().co(cosy).co(comfy);
    let d = s.plan();
    assert_eq!(
        writes(&d),
        ["hold cosyvoice orig=1 by=ns/a", "hold comfyui orig=1 by=ns/a"]
    );
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 1 pod of Deployment cosyvoice, 1 process of Command comfyui to stop")
    );
}

#[test]
fn auto_precision_fits_the_gpu_when_its_size_is_known() {
    // A 16 GiB GPU: fp16 (20 GiB with headroom) cannot fit, int8 (12 GiB) can.
    let mut snap = job("a").suspending().co(deploy("cosy").held(&["a"], 1)).build();
    snap.gpu_total_bytes = Some(16 << 30);
    let d = plan::next(&snap);
    assert_eq!(
        (d.status.phase, d.status.precision),
        (Phase::Running, Some(Precision::Int8))
    );

    let mut snap = job("a")
        .status(|st| *st = d.status.clone())
        .co(deploy("cosy").held(&["a"], 1))
        .build();
    snap.gpu_total_bytes = Some(16 << 30);
    let d = plan::next(&snap);
    assert_eq!(writes(&d), ["start 1 a-vidi-1 int8"]);
    let Some(Action::StartAttempt { min_free_bytes, .. }) =
        d.actions.iter().find(|a| matches!(a, Action::StartAttempt { .. }))
    else {
        panic!("no StartAttempt")
    };
    assert_eq!(*min_free_bytes, 12 << 30, "int8 weights plus headroom");
}

#[test]
fn spec_made_invalid_mid_run_stops_restores_and_fails() {
    let mut w = two_co_tenants(spec());
    start(&mut w, "a");
    w.edit("a", |s| s.query = String::new());
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["stop 1 a-vidi-1"]);
    assert_eq!(
        (d.status.phase, d.status.reason),
        (Phase::Restoring, Some(FailureReason::InvalidSpec))
    );
    w.settle_pods();
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=2", "restore ns/comfy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.status.message.unwrap_or_default().starts_with("spec.query: "));
    assert_eq!(d.status.observed_generation, Some(2));
    w.check_all_restored();
}

#[test]
fn the_preview_is_reported_only_where_the_output_folder_outlives_the_pod() {
    let answer = term(
        0,
        Some("Completed"),
        Some(r#"{"segments":[[1,2]],"precision":"fp16","preview":"/output/preview.html"}"#),
    );
    let done = AttemptState::Finished {
        gate: None,
        main: Some(answer),
        reason: None,
    };
    let held = || deploy("cosy").held(&["a"], 1).replicas(0).pods(0);
    // An emptyDir output folder is gone with the pod.
    let d = job("a").running().co(held()).attempt(1, done.clone()).plan();
    assert_eq!(d.status.result.as_ref().map(|r| r.preview.clone()), Some(None));
    // On a claim it stays: the preview is named by its file in that folder.
    let d = job("a")
        .with_spec(|s| {
            s.output = Some(
                serde_json::from_value(serde_json::json!({"volume": {"claimName": "out", "path": "jobs/a"}})).unwrap(),
            )
        })
        .running()
        .co(held())
        .attempt(1, done)
        .plan();
    assert_eq!(d.status.result.and_then(|r| r.preview).as_deref(), Some("preview.html"));
}

// ----- policy: Minimal -----

fn minimal() -> Snap {
    job("a").with_spec(|s| s.co_tenants.policy = vidi_operator::api::CoTenantPolicy::Minimal)
}

fn with_memory(mut c: vidi_operator::plan::CoTenant, gib: Option<u64>, priority: u32) -> vidi_operator::plan::CoTenant {
    c.gpu_memory_bytes = gib.map(|g| g << 30);
    c.yield_priority = priority;
    c
}

#[test]
fn minimal_yields_the_cheapest_set_that_covers_the_need() {
    // 24 GiB card, 12 GiB free, fp16 needs 20: 8 GiB short. tts (6 GiB, priority 1, 2 replicas:
    // cost 2) + comfy (3 GiB, cost 1) = cost 3 beat big (10 GiB, priority 5: cost 5); idle is at
    // 0 and is held as a record only.
    let mut s = minimal()
        .co(with_memory(deploy("tts").replicas(2).pods(2), Some(6), 1))
        .co(with_memory(deploy("comfy"), Some(3), 1))
        .co(with_memory(deploy("big"), Some(10), 5))
        .co(with_memory(deploy("idle").replicas(0).pods(0), None, 1));
    s.0.gpu_total_bytes = Some(24 << 30);
    s.0.gpu_free_bytes = Some(12 << 30);
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(d.status.policy, Some(vidi_operator::api::CoTenantPolicy::Minimal));
    assert_eq!(
        writes(&d),
        [
            "hold ns/tts orig=2 by=ns/a",
            "hold ns/comfy orig=1 by=ns/a",
            "hold ns/idle orig=0 by=ns/a"
        ]
    );
    let (_, message) = notice(&d, "YieldingMinimal").expect("the choice is explained");
    assert_eq!(
        message,
        "policy Minimal: 12.0 GiB free, 20.0 GiB needed at fp16; yielding Deployment ns/tts, Deployment ns/comfy (cost 3), leaving Deployment ns/big running"
    );
    // The next look takes the holds as the choice: big stays out of it.
    let d = minimal()
        .status(|st| st.policy = Some(vidi_operator::api::CoTenantPolicy::Minimal))
        .suspending()
        .co(deploy("tts").held(&["a"], 2).replicas(0).pods(0))
        .co(deploy("comfy").held(&["a"], 1).replicas(0).pods(0))
        .co(with_memory(deploy("big"), Some(10), 5))
        .plan();
    assert_eq!(d.status.phase, Phase::Running, "{:?}", d.status.message);
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"], "nothing else yields");
}

#[test]
fn minimal_without_a_reading_or_memory_yields_everything_and_says_why() {
    // Kubernetes: the node's free GPU memory is not read, so every selected co-tenant yields.
    let d = minimal()
        .co(with_memory(deploy("tts"), Some(6), 1))
        .co(deploy("comfy"))
        .plan();
    assert_eq!(
        writes(&d),
        ["hold ns/tts orig=1 by=ns/a", "hold ns/comfy orig=1 by=ns/a"]
    );
    assert_eq!(d.status.policy, Some(vidi_operator::api::CoTenantPolicy::All));
    let (_, why) = notice(&d, "YieldingAll").expect("says why");
    assert!(why.contains("free memory cannot be measured"), "{why}");
    // Unknown memory must yield even when the known ones would cover the need.
    let mut s = minimal()
        .co(with_memory(deploy("tts"), Some(9), 1))
        .co(with_memory(deploy("mystery"), None, 1));
    s.0.gpu_free_bytes = Some(12 << 30);
    let d = s.plan();
    assert_eq!(
        writes(&d),
        ["hold ns/tts orig=1 by=ns/a", "hold ns/mystery orig=1 by=ns/a"]
    );
}

#[test]
fn out_of_memory_under_minimal_yields_everything_before_lowering_the_precision() {
    let oom = finished(3);
    let d = minimal()
        .with_spec(|s| s.model.precision = vidi_operator::api::Precision::Auto)
        .status(|st| st.policy = Some(vidi_operator::api::CoTenantPolicy::Minimal))
        .running()
        .co(deploy("tts").held(&["a"], 1).replicas(0).pods(0))
        .co(with_memory(deploy("big"), Some(10), 5))
        .attempt(1, oom.clone())
        .plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(d.status.policy, Some(vidi_operator::api::CoTenantPolicy::All));
    assert_eq!(d.status.attempts, 2);
    assert_eq!(
        writes(&d),
        ["hold ns/big orig=1 by=ns/a"],
        "no new attempt before big is down"
    );
    let (severity, message) = notice(&d, "YieldingAll").expect("warned");
    assert_eq!(severity, vidi_operator::plan::Severity::Warning);
    assert!(message.starts_with("attempt 1: CUDA out of memory"), "{message}");
    // Once big is down, attempt 2 runs at the same precision.
    let d = minimal()
        .with_spec(|s| s.model.precision = vidi_operator::api::Precision::Auto)
        .status(|st| {
            st.policy = Some(vidi_operator::api::CoTenantPolicy::All);
            st.attempts = 2;
        })
        .running()
        .co(deploy("tts").held(&["a"], 1).replicas(0).pods(0))
        .co(deploy("big").held(&["a"], 1).replicas(0).pods(0))
        .attempt(1, oom.clone())
        .plan();
    assert_eq!(writes(&d), ["start 2 a-vidi-2 fp16"]);
    // A second out-of-memory, now with everything yielded, lowers the precision.
    let d = minimal()
        .with_spec(|s| s.model.precision = vidi_operator::api::Precision::Auto)
        .status(|st| st.policy = Some(vidi_operator::api::CoTenantPolicy::All))
        .running()
        .co(deploy("tts").held(&["a"], 1).replicas(0).pods(0))
        .co(deploy("big").held(&["a"], 1).replicas(0).pods(0))
        .attempt(1, oom.clone())
        .attempt(2, oom)
        .plan();
    assert_eq!(writes(&d), ["start 3 a-vidi-3 int8"]);
}

// ----- spec.suspend, dry run -----

#[test]
fn suspend_before_start_holds_nothing() {
    let d = job("a").with_spec(|s| s.suspend = true).co(deploy("cosy")).plan();
    assert_eq!(d.status.phase, Phase::Pending);
    assert!(writes(&d).is_empty());
    assert_eq!(d.status.message.as_deref(), Some("suspended (spec.suspend is true)"));
    // A queued job that had joined a hold lets go of it.
    let d = job("b")
        .phase(Phase::Queued)
        .with_spec(|s| s.suspend = true)
        .co(deploy("cosy").held(&["a", "b"], 1))
        .plan();
    assert_eq!(writes(&d), ["release ns/cosy by=ns/a"]);
    assert_eq!(d.status.phase, Phase::Pending);
}

#[test]
fn suspend_mid_run_stops_restores_and_returns_to_pending() {
    let mut w = two_co_tenants(spec());
    start(&mut w, "a");
    w.edit("a", |s| s.suspend = true);
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["stop 1 a-vidi-1"]);
    assert_eq!(
        (d.status.phase, d.status.outcome),
        (Phase::Restoring, Some(Outcome::Suspended))
    );
    w.settle_pods();
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=2", "restore ns/comfy to=1"]);
    assert_eq!((d.status.phase, d.status.outcome), (Phase::Pending, None));
    assert!(d.status.completion_time.is_none());
    w.check_all_restored();
    // Resumed: suspends again and runs a new pod.
    w.edit("a", |s| s.suspend = false);
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d),
        ["hold ns/cosy orig=2 by=ns/a", "hold ns/comfy orig=1 by=ns/a"]
    );
    w.drain();
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["start 1 a-vidi-1 fp16"]);
}

#[test]
fn suspend_after_vidi_already_answered_keeps_the_answer() {
    // Vidi answered just before spec.suspend was set: there is nothing left to stop, and going
    // back to Pending would drop the answer until a resume suspends the co-tenants again.
    let d = job("a")
        .running()
        .with_spec(|s| s.suspend = true)
        .co(deploy("cosy").held(&["a"], 2))
        .attempt(1, finished(0))
        .plan();
    assert_eq!(writes(&d), ["restore ns/cosy to=2"]);
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert!(d.status.result.is_some());
    // Still running: suspend stops it.
    let d = job("a")
        .running()
        .with_spec(|s| s.suspend = true)
        .co(deploy("cosy").held(&["a"], 2))
        .attempt(1, AttemptState::Running)
        .plan();
    assert_eq!(writes(&d), ["stop 1 a-vidi-1"]);
    assert_eq!(
        (d.status.phase, d.status.outcome),
        (Phase::Restoring, Some(Outcome::Suspended))
    );
}

#[test]
fn resuming_a_suspended_job_restarts_its_deadline() {
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec_from(serde_json::json!({"activeDeadlineSeconds": 600})));
    start(&mut w, "a");
    w.advance(300);
    w.edit("a", |s| s.suspend = true);
    w.reconcile("a");
    w.settle_pods();
    let d = w.reconcile("a");
    assert_eq!(d.status.phase, Phase::Pending);
    assert_eq!(d.status.start_time, None, "the clock stops while suspended");
    // An hour later the job is resumed: it leaves the queue again with a fresh deadline.
    w.advance(3_600);
    w.edit("a", |s| s.suspend = false);
    let d = w.reconcile("a");
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(d.status.start_time.as_ref().map(|t| t.0), Some(w.now));
    assert_eq!(writes(&d), ["hold ns/cosy orig=1 by=ns/a"]);
}

#[test]
fn dry_run_suspends_nothing_and_lists_what_it_would() {
    let s = job("a").dry_run().co(deploy("cosy").replicas(2)).co(deploy("comfy"));
    let d = s.plan();
    assert!(writes(&d).is_empty());
    assert_eq!(d.status.phase, Phase::Pending);
    let msg = d.status.message.clone().unwrap_or_default();
    assert!(
        msg.starts_with("dry run: would suspend Deployment ns/cosy (2 replicas), Deployment ns/comfy (1 replica)"),
        "{msg}"
    );
    assert!(msg.contains("at fp16"), "{msg}");
    assert!(notice(&d, "DryRun").is_some());
    // Same again: no second Event.
    let again = s.status(|st| *st = d.status.clone()).plan();
    assert!(notice(&again, "DryRun").is_none());
}

// ----- after the end -----

#[test]
fn ttl_after_finished_deletes_when_due_and_requeues_before() {
    let done = |now: i64| {
        job("a")
            .phase(Phase::Succeeded)
            .with_spec(|s| s.ttl_seconds_after_finished = Some(100))
            .status(|st| st.completion_time = Some(Time(t(50))))
            .now(now)
            .plan()
    };
    let d = done(100);
    assert!(writes(&d).is_empty());
    assert_eq!(d.requeue_after, Some(Duration::from_secs(50)));
    let d = done(150);
    assert_eq!(writes(&d), ["delete"]);

    // ttl 0: restored, then deleted in the same decision.
    let mut w = World::new();
    w.add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec_from(serde_json::json!({"ttlSecondsAfterFinished": 0})));
    start(&mut w, "a");
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["restore ns/cosy to=1", "delete"]);
    assert!(w.job("a").deleting);
    let d = w.reconcile("a");
    assert!(d.released && writes(&d).is_empty());
    assert!(!w.exists("a"));
}

#[test]
fn a_finished_job_that_still_holds_something_releases_it() {
    let d = job("a")
        .phase(Phase::Failed)
        .co(deploy("cosy").held(&["a", "b"], 2).selection(Selection::HeldOnly))
        .co(deploy("comfy").held(&["a"], 1).selection(Selection::HeldOnly))
        .plan();
    assert_eq!(writes(&d), ["release ns/cosy by=ns/b", "restore ns/comfy to=1"]);
    assert_eq!(d.status.phase, Phase::Failed);
    assert!(d.status.suspended.is_empty());
}

#[test]
fn stale_holders_sweep_releases_and_restores() {
    let co = deploy("cosy").held(&["a", "gone"], 3);
    assert_eq!(plan::stale_holders(&co, |_| true), None);
    match plan::stale_holders(&co, |k| k.name == "a") {
        Some(Action::Release { holders, .. }) => assert_eq!(holders, vec![key("a")]),
        other => panic!("expected Release, got {other:?}"),
    }
    match plan::stale_holders(&co, |_| false) {
        Some(Action::Restore { replicas, target, .. }) => {
            assert_eq!(replicas, 3);
            assert_eq!(target.name, "cosy");
        }
        other => panic!("expected Restore, got {other:?}"),
    }
    let unheld = deploy("x");
    assert_eq!(plan::stale_holders(&unheld, |_| false), None);
}

#[test]
fn conditions_follow_the_phase_and_keep_their_transition_time() {
    let d1 = job("a").co(deploy("cosy")).now(100).plan();
    assert_eq!(cond(&d1.status, "Reconciling"), "True");
    assert_eq!(cond(&d1.status, "Ready"), "False");
    let d2 = job("a")
        .co(deploy("cosy").held(&["a"], 1).pods(1))
        .status(|st| *st = d1.status.clone())
        .now(200)
        .plan();
    let since = |d: &vidi_operator::plan::Decision, kind: &str| {
        plan::conditions::find(&d.status, kind)
            .unwrap()
            .last_transition_time
            .0
            .as_second()
    };
    assert_eq!(since(&d2, "Reconciling"), 100, "unchanged condition keeps its time");
    let failed = job("a")
        .status(|st| *st = d2.status.clone())
        .running()
        .co(deploy("cosy").held(&["a"], 1))
        .attempt(1, finished(2))
        .now(300)
        .plan();
    assert_eq!(failed.status.phase, Phase::Failed);
    assert_eq!(cond(&failed.status, "Failed"), "True");
    assert_eq!(cond(&failed.status, "Stalled"), "True");
    assert_eq!(cond(&failed.status, "Complete"), "False");
    assert_eq!(cond(&failed.status, "Reconciling"), "False");
    assert_eq!(since(&failed, "Failed"), 300);
    assert_eq!(since(&failed, "Complete"), 100, "Complete stayed False");
    assert_eq!(
        plan::conditions::find(&failed.status, "Stalled").unwrap().reason,
        "BadInput"
    );
}

#[test]
fn notices_about_a_co_tenant_or_an_attempt_name_it_as_their_subject() {
    use vidi_operator::plan::{Notice, Subject};
    let subjects = |d: &plan::Decision, reason: &str| -> Vec<Option<Subject>> {
        d.actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify(Notice { reason: r, subject, .. }) if r == reason => Some(subject.clone()),
                _ => None,
            })
            .collect()
    };
    let mut w = two_co_tenants(spec());
    let d = w.reconcile("a");
    let cosy = w.co("ns/cosy").id.clone();
    let comfy = w.co("ns/comfy").id.clone();
    assert_eq!(
        subjects(&d, "Suspended"),
        [Some(Subject::CoTenant(cosy)), Some(Subject::CoTenant(comfy))]
    );
    w.drain();
    let d = w.reconcile("a");
    assert_eq!(
        subjects(&d, "Starting"),
        [None],
        "a notice about the job alone has no subject"
    );
    w.reconcile("a");
    w.run_pod("a");
    w.finish("a", finished(1));
    let d = w.reconcile("a");
    assert_eq!(subjects(&d, "Retrying"), [Some(Subject::Attempt(1))]);
}
