//! The planner's in-place release (issue 9 item 4), on the world model: release before
//! scale-down, fall back when refused or when the GPU memory did not go free, resume on restore,
//! and a crash between recording and calling.
mod support;

use std::time::Duration;
use vidi_operator::api::{
    FailureReason, Phase, Precision, ReleaseHook, ReleasePreset, ReleaseState, WorkloadKind, WorkloadRef,
};

use vidi_operator::plan::{Action, Severity, gate_wait};

use support::world::{Applied, World};
use support::*;

fn hook() -> ReleaseHook {
    ReleaseHook {
        preset: ReleasePreset::Vllm,
        url: "http://vllm:8000/sleep?level=1".into(),
        resume_url: Some("http://vllm:8000/wake_up".into()),
        body: None,
        timeout_seconds: 10,
        free_within_seconds: 45,
    }
}

/// `ns/vllm` (1 replica, offers a release hook) and `ns/cosy` (1 replica, none), job `a`.
fn world() -> World {
    let mut w = World::new();
    w.add_co(NS, "vllm", 1, true)
        .add_co(NS, "cosy", 1, true)
        .add_job("a", 1, spec());
    let i = w.co_index("ns/vllm");
    w.cos[i].co.release_hook = Some(hook());
    w
}

/// Runs `a` from Pending until its first attempt runs.
fn to_running(w: &mut World) {
    for _ in 0..6 {
        w.reconcile("a");
        w.drain();
        if w.job("a").alive() {
            break;
        }
    }
    w.run_pod("a");
    assert_eq!(w.phase("a"), Phase::Running);
}

#[test]
fn release_in_place_instead_of_scaling_down_and_resume_on_restore() {
    let mut w = world();
    let d = w.reconcile("a");
    // Recorded before the call, in one write; the other co-tenant is scaled down as before.
    assert_eq!(
        writes(&d),
        [
            "hold-in-place ns/vllm orig=1 by=ns/a",
            "call-release ns/vllm",
            "hold ns/cosy orig=1 by=ns/a"
        ]
    );
    assert_eq!(w.calls, ["release vllm"]);
    assert_eq!(w.co("ns/vllm").replicas, 1, "released in place, not scaled");
    assert_eq!(
        w.co("ns/vllm").released.as_ref().map(|m| m.state.clone()),
        Some(ReleaseState::Released)
    );
    to_running(&mut w);
    // Its pod still runs: nothing waited for it, and it was never stopped.
    assert_eq!(w.co("ns/vllm").live_pods, 1);
    let listed: Vec<(String, bool)> = w
        .job("a")
        .status
        .suspended
        .iter()
        .map(|s| (s.name.clone(), s.released_in_place))
        .collect();
    assert_eq!(listed, [("vllm".to_string(), true), ("cosy".to_string(), false)]);
    w.check();

    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert!(
        writes(&d).contains(&"resume ns/vllm call=true".to_string()),
        "{:?}",
        writes(&d)
    );
    assert!(writes(&d).contains(&"restore ns/cosy to=1".to_string()));
    assert_eq!(w.phase("a"), Phase::Succeeded);
    assert_eq!(w.calls, ["release vllm", "resume vllm"]);
    w.check_all_restored();
}

#[test]
fn a_refused_release_falls_back_to_a_scale_down() {
    let mut w = world();
    let i = w.co_index("ns/vllm");
    w.cos[i].refuses_release = true;
    w.reconcile("a");
    assert!(matches!(
        w.co("ns/vllm").released.as_ref().map(|m| &m.state),
        Some(ReleaseState::Refused { .. })
    ));
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["fall-back ns/vllm"]);
    let (severity, message) = notice(&d, "ReleaseFellBack").expect("a ReleaseFellBack event");
    assert_eq!(severity, Severity::Warning);
    assert!(message.contains("HTTP 500"), "{message}");
    assert_eq!(w.co("ns/vllm").replicas, 0);
    // Vidi waits for its pod to go, like any scaled-down co-tenant.
    assert_eq!(d.status.phase, Phase::Suspending);
    assert!(
        d.status.message.as_deref().unwrap_or_default().contains("vllm"),
        "{:?}",
        d.status.message
    );
    to_running(&mut w);
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    // An ordinary hold now: restored by scaling up, no resume call.
    assert!(
        writes(&d).contains(&"restore ns/vllm to=1".to_string()),
        "{:?}",
        writes(&d)
    );
    assert_eq!(w.calls, ["release vllm"]);
    w.check_all_restored();
}

#[test]
fn memory_not_freed_falls_back_and_retries_at_the_same_precision() {
    let mut w = world();
    to_running(&mut w);
    let precision = w.job("a").status.precision;
    assert_eq!(precision, Some(Precision::Fp16));
    w.finish("a", gate_timeout());
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["fall-back ns/vllm"]);
    assert!(notice(&d, "PrecisionLowered").is_none());
    assert!(notice(&d, "ReleaseFellBack").is_some());
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(d.status.attempts, 2);
    w.drain();
    let d = w.reconcile("a");
    assert!(writes(&d).iter().any(|l| l.starts_with("start 2 ")), "{:?}", writes(&d));
    assert_eq!(w.job("a").status.precision, precision, "same precision");
    // A second timeout, with nothing released in place any more, lowers the precision as before.
    w.run_pod("a");
    w.finish("a", gate_timeout());
    let d = w.reconcile("a");
    assert!(notice(&d, "PrecisionLowered").is_some(), "{:?}", notices(&d));
    assert!(notice(&d, "ReleaseFellBack").is_none());
}

/// The attempts a decision starts, with how long their GPU gate may wait for released memory.
fn starts(d: &vidi_operator::plan::Decision) -> Vec<(u32, Option<Duration>)> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::StartAttempt {
                attempt, release_wait, ..
            } => Some((*attempt, *release_wait)),
            _ => None,
        })
        .collect()
}

/// Reconciles `a` until it starts an attempt; that decision's starts.
fn start_of(w: &mut World) -> Vec<(u32, Option<Duration>)> {
    for _ in 0..6 {
        let d = w.reconcile("a");
        w.drain();
        if !starts(&d).is_empty() {
            return starts(&d);
        }
    }
    panic!("no attempt started: {:?}", w.job("a").status);
}

#[test]
fn the_gate_waits_for_released_memory_as_long_as_the_hooks_say_then_the_whole_timeout() {
    let mut w = world();
    // vllm is released in place (freeWithinSeconds 45); cosy is scaled down.
    assert_eq!(start_of(&mut w), [(1, Some(Duration::from_secs(45)))]);
    w.run_pod("a");
    w.finish("a", gate_timeout());
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["fall-back ns/vllm"]);
    w.drain();
    // Nothing is released in place any more: attempt 2's gate gets the operator's whole timeout.
    assert_eq!(start_of(&mut w), [(2, None)]);

    // Two co-tenants released in place: the longer of their waits.
    let mut w = world();
    let i = w.co_index("ns/cosy");
    w.cos[i].co.release_hook = Some(ReleaseHook {
        free_within_seconds: 120,
        ..hook()
    });
    assert_eq!(start_of(&mut w), [(1, Some(Duration::from_secs(120)))]);
    // Scaled down only: no release wait at all.
    let mut w = world();
    let i = w.co_index("ns/vllm");
    w.cos[i].co.release_hook = None;
    assert_eq!(start_of(&mut w), [(1, None)]);

    // What the adapters give the gate: never more than the operator's gate timeout.
    let minute = Duration::from_secs(60);
    assert_eq!(
        gate_wait(Some(Duration::from_secs(45)), minute),
        Duration::from_secs(45)
    );
    assert_eq!(gate_wait(Some(Duration::from_secs(120)), minute), minute);
    assert_eq!(gate_wait(None, minute), minute);
}

#[test]
fn memory_not_freed_after_an_edit_the_job_may_not_run_fails_and_resumes_without_falling_back() {
    let mut w = world();
    w.add_co("other", "private", 1, false);
    to_running(&mut w);
    // The job is edited to name a workload of another namespace that has not opted in.
    w.edit("a", |s| {
        s.co_tenants.refs = vec![WorkloadRef {
            kind: WorkloadKind::Deployment,
            name: "private".into(),
            namespace: Some("other".into()),
            release: None,
        }]
    });
    w.finish("a", gate_timeout());
    let d = w.reconcile("a");
    // One write per co-tenant: vllm resumed (the call, then its marks), never scaled to 0 first.
    assert!(
        !writes(&d).iter().any(|l| l.starts_with("fall-back")),
        "{:?}",
        writes(&d)
    );
    assert_eq!(d.status.phase, Phase::Failed);
    assert_eq!(d.status.reason, Some(FailureReason::InvalidSpec));
    w.drain();
    w.settle_all(10);
    assert_eq!(w.calls.last().map(String::as_str), Some("resume vllm"));
    w.check_all_restored();
}

#[test]
fn a_crash_between_recording_and_calling_calls_once_the_mark_is_seen() {
    let mut w = world();
    let k = key("a");
    let d = vidi_operator::plan::next(&w.snapshot(&k));
    // The record lands; the operator dies before the call.
    let recorded = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::HoldInPlace { .. }))
        .expect("an in-place hold");
    assert!(matches!(d.actions[recorded + 1], Action::CallRelease { .. }));
    assert_eq!(w.apply(&k, &d, Some(recorded + 1)), Applied::Crashed);
    assert!(w.calls.is_empty());
    assert_eq!(
        w.co("ns/vllm").released.as_ref().map(|m| m.state.clone()),
        Some(ReleaseState::Requested)
    );
    w.check();
    let d = w.reconcile("a");
    assert_eq!(
        writes(&d).iter().filter(|l| *l == "call-release ns/vllm").count(),
        1,
        "{:?}",
        writes(&d)
    );
    assert_eq!(w.calls, ["release vllm"]);
}

#[test]
fn deleted_mid_release_resumes_and_the_sweep_resumes_orphans() {
    let mut w = world();
    w.reconcile("a");
    w.delete("a");
    w.reconcile("a");
    assert!(!w.exists("a"), "released and gone");
    assert_eq!(w.calls, ["release vllm", "resume vllm"]);
    w.check_all_restored();

    // A hold in place whose job is gone (finished while the operator was down): the sweep
    // resumes it rather than "restoring" replicas it never lost.
    let mut w = world();
    w.reconcile("a");
    w.job_mut("a").status.phase = Phase::Failed;
    w.job_mut("a").status.reason = Some(FailureReason::DeadlineExceeded);
    w.restart_sweep();
    assert_eq!(w.calls, ["release vllm", "resume vllm"]);
    assert!(w.co("ns/vllm").holders.is_empty() && w.co("ns/vllm").released.is_none());
}

#[test]
fn several_replicas_are_scaled_down_even_with_a_hook() {
    let mut w = World::new();
    w.add_co(NS, "vllm", 2, true).add_job("a", 1, spec());
    w.cos[0].co.release_hook = Some(hook());
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["hold ns/vllm orig=2 by=ns/a"]);
    assert!(w.calls.is_empty());
}

#[test]
fn scaled_up_while_released_in_place_falls_back_and_ends_at_the_original() {
    let mut w = world();
    w.reconcile("a");
    let i = w.co_index("ns/vllm");
    w.scale(i, 3, "hpa");
    let d = w.reconcile("a");
    assert_eq!(writes(&d), ["fall-back ns/vllm"]);
    let (_, message) = notice(&d, "ReleaseFellBack").expect("ReleaseFellBack");
    assert!(message.contains("scaled to 3 by hpa"), "{message}");
    to_running(&mut w);
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert!(
        writes(&d).contains(&"restore ns/vllm to=1".to_string()),
        "{:?}",
        writes(&d)
    );
    w.check_all_restored();
}

#[test]
fn scaled_to_zero_while_released_in_place_is_not_called_but_scaled_back() {
    let mut w = world();
    to_running(&mut w);
    let i = w.co_index("ns/vllm");
    w.scale(i, 0, "someone");
    w.finish("a", finished(0));
    let d = w.reconcile("a");
    assert!(
        writes(&d).contains(&"resume ns/vllm call=false".to_string()),
        "{:?}",
        writes(&d)
    );
    assert_eq!(w.calls, ["release vllm"], "nothing runs to take a resume call");
    assert_eq!(w.co("ns/vllm").replicas, 1, "back at the original count");
    w.check_all_restored();
}

#[test]
fn a_dry_run_says_who_would_be_released_in_place() {
    let w = world();
    let mut snap = w.snapshot(&key("a"));
    snap.dry_run = true;
    let d = vidi_operator::plan::next(&snap);
    assert!(writes(&d).is_empty(), "{:?}", writes(&d));
    let message = d.status.message.unwrap_or_default();
    assert!(
        message.contains("Deployment ns/vllm (1 replica, released in place: POST http://vllm:8000/sleep?level=1)")
            && message.contains("Deployment ns/cosy (1 replica)"),
        "{message}"
    );
}
