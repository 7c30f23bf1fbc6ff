//! The planner on a GPU pool of several nodes: where the job goes, which replicas yield there,
//! StatefulSets and autoscaled workloads yielding whole, and undoing every pod mark.
mod support;

use vidi_operator::api::{CoTenantPolicy, NodeChoice, Phase, WorkloadKind};
use vidi_operator::plan::placement::{Autoscaled, CoTenantPod, GpuNode, NodeHold, Placement};
use vidi_operator::plan::{AttemptState, CoTenant, JobKey, Severity};

use support::*;

const GIB: u64 = 1 << 30;

fn nodes() -> Vec<GpuNode> {
    ["gpu-1", "gpu-2", "gpu-3"]
        .into_iter()
        .map(|n| GpuNode {
            name: n.into(),
            gpu_memory_bytes: Some(24 * GIB),
        })
        .collect()
}

fn pod(c: &CoTenant, name: &str, node: &str, gib: u64) -> CoTenantPod {
    CoTenantPod {
        co_tenant: c.id.clone(),
        name: name.into(),
        node: node.into(),
        ordinal: name.rsplit_once('-').and_then(|(_, o)| o.parse().ok()),
        gpu_memory_bytes: Some(gib * GIB),
        restore_seconds: 60,
        terminating: false,
        marked_by: None,
    }
}

fn sts(name: &str) -> CoTenant {
    let mut c = deploy(name);
    c.id.kind = WorkloadKind::StatefulSet;
    c
}

/// `tts` (3 replicas: 2 on gpu-1, 1 on gpu-2) and `comfy` (1 on gpu-3, priority 5).
fn spread() -> (Snap, CoTenant, CoTenant) {
    let tts = deploy("tts").replicas(3).pods(3);
    let mut comfy = deploy("comfy");
    comfy.yield_priority = 5;
    let placement = Placement {
        nodes: nodes(),
        pods: vec![
            pod(&tts, "tts-a", "gpu-1", 4),
            pod(&tts, "tts-b", "gpu-1", 4),
            pod(&tts, "tts-c", "gpu-2", 4),
            pod(&comfy, "comfy-a", "gpu-3", 4),
        ],
        ..Default::default()
    };
    let mut s = job("a").co(tts.clone()).co(comfy.clone());
    s.0.placement = placement;
    (s, tts, comfy)
}

fn chosen(d: &vidi_operator::plan::Decision) -> Option<String> {
    d.status.node_choice.as_ref().map(|c| c.node.clone())
}

#[test]
fn a_free_node_means_no_write_to_any_co_tenant() {
    let (mut s, tts, _) = spread();
    s.0.placement.pods.retain(|p| p.node != "gpu-2");
    let mut tts = tts;
    tts.replicas = 2;
    s.0.co_tenants[0] = tts;
    let d = s.plan();
    // Nothing to suspend and nothing to wait for: straight to Running and the first attempt.
    assert_eq!(d.status.phase, Phase::Running);
    assert_eq!(chosen(&d).as_deref(), Some("gpu-2"));
    assert_eq!(d.status.node.as_deref(), Some("gpu-2"));
    assert_eq!(writes(&d), vec!["start 1 a-vidi-1 fp16".to_string()], "nothing yields");
    let (sev, msg) = notice(&d, "NodeChosen").expect("a NodeChosen event");
    assert_eq!(sev, Severity::Normal);
    assert!(msg.contains("nothing has to yield"), "{msg}");
    // A crash before the pod was created: the next look creates it, still without touching a
    // co-tenant.
    let next = s.status(|st| *st = d.status.clone()).plan();
    assert_eq!(writes(&next), vec!["start 1 a-vidi-1 fp16".to_string()]);
}

#[test]
fn only_the_cheapest_nodes_replicas_go() {
    let (s, _, _) = spread();
    let d = s.plan();
    // gpu-1 costs 2 (two tts replicas), gpu-2 costs 1 (one), gpu-3 costs 5 (comfy, priority 5).
    assert_eq!(chosen(&d).as_deref(), Some("gpu-2"));
    assert_eq!(
        writes(&d),
        vec![
            "mark ns/tts [tts-c]".to_string(),
            "hold ns/tts on gpu-2 orig=3 to=2 marked=[tts-c] by=ns/a".to_string(),
        ]
    );
    let reason = &d.status.node_choice.as_ref().unwrap().reason;
    assert!(
        reason.contains("cost 1") && reason.contains("3 candidate nodes"),
        "{reason}"
    );
}

#[test]
fn suspending_waits_only_for_the_pods_on_the_chosen_node() {
    let (s, tts, _) = spread();
    let first = s.plan();
    let held = tts.clone().replicas(2).pods(3);
    let mut held = held;
    held.holders = [key("a")].into();
    held.original_replicas = Some(3);
    let hold = NodeHold {
        co_tenant: tts.id.clone(),
        node: "gpu-2".into(),
        removed: 1,
        marked_pods: vec!["tts-c".into()],
    };
    let mut s = s.status(|st| *st = first.status.clone());
    s.0.co_tenants[0] = held;
    s.0.placement.node_holds = vec![hold];
    for p in s.0.placement.pods.iter_mut().filter(|p| p.name == "tts-c") {
        p.terminating = true;
        p.marked_by = Some(key("a"));
    }
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(
        d.status.message.as_deref(),
        Some("waiting for 1 pod of Deployment ns/tts on gpu-2 to stop")
    );
    assert_eq!(writes(&d), Vec::<String>::new(), "the mark stays while the hold does");
    // Gone: Vidi may start, although tts still runs 2 pods elsewhere.
    s.0.placement.pods.retain(|p| p.name != "tts-c");
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Running);
}

#[test]
fn a_scale_down_that_kept_the_marked_pod_yields_the_co_tenant_whole() {
    let (s, tts, _) = spread();
    let first = s.plan();
    let mut held = tts.clone().replicas(2).pods(2);
    held.holders = [key("a")].into();
    held.original_replicas = Some(3);
    let mut s = s.status(|st| *st = first.status.clone());
    s.0.co_tenants[0] = held;
    s.0.placement.node_holds = vec![NodeHold {
        co_tenant: tts.id.clone(),
        node: "gpu-2".into(),
        removed: 1,
        marked_pods: vec!["tts-c".into()],
    }];
    for p in s.0.placement.pods.iter_mut().filter(|p| p.name == "tts-c") {
        p.marked_by = Some(key("a"));
    }
    // The ReplicaSet is still to act: 3 pods live for 2 replicas. Waiting is right.
    let d = s.plan();
    assert_eq!(writes(&d), Vec::<String>::new());
    assert!(notice(&d, "YieldingWhole").is_none());
    // It removed tts-a on gpu-1 (not ready, so first in its order) and kept the marked tts-c.
    s.0.placement.pods.retain(|p| p.name != "tts-a");
    let d = s.plan();
    assert_eq!(d.status.phase, Phase::Suspending);
    assert_eq!(writes(&d), vec!["resuspend ns/tts".to_string()]);
    let (sev, msg) = notice(&d, "YieldingWhole").unwrap();
    assert_eq!(sev, Severity::Warning);
    assert!(
        msg.contains("not only those on gpu-2") && msg.contains("kept 1 there"),
        "{msg}"
    );
    // At 0 while tts-c stops, nothing more is written; once it is gone Vidi starts.
    s.0.co_tenants[0].replicas = 0;
    for p in s.0.placement.pods.iter_mut() {
        p.terminating = true;
    }
    let d = s.plan();
    assert_eq!(writes(&d), Vec::<String>::new());
    assert!(notice(&d, "YieldingWhole").is_none());
    s.0.placement.pods.retain(|p| p.co_tenant != tts.id);
    assert_eq!(s.plan().status.phase, Phase::Running);
}

/// `s` with job `a` Running (policy All) on gpu-2 with attempt 1 `attempt`, holding `held` (tts as
/// the view shows it, originally 3) there: one replica removed, tts-c marked.
fn holding_tts_on_gpu2(s: Snap, held: CoTenant, attempt: AttemptState) -> Snap {
    let id = held.id.clone();
    let mut held = held;
    held.holders = [key("a")].into();
    held.original_replicas = Some(3);
    let mut s = s.running().attempt(1, attempt).status(|st| {
        st.policy = Some(CoTenantPolicy::All);
        st.node_choice = Some(NodeChoice {
            node: "gpu-2".into(),
            reason: "test".into(),
        });
    });
    s.0.co_tenants[0] = held;
    s.0.placement.node_holds = vec![NodeHold {
        co_tenant: id,
        node: "gpu-2".into(),
        removed: 1,
        marked_pods: vec!["tts-c".into()],
    }];
    s
}

/// `s` with job `a` holding `tts` on gpu-2 (3 → 2), tts-c marked, Vidi finished with `code`.
fn held_and_finished(code: i32, tts_c_survived: bool) -> Snap {
    let (s, tts, _) = spread();
    let mut s = holding_tts_on_gpu2(s, tts.replicas(2).pods(2), finished(code));
    if tts_c_survived {
        for p in s.0.placement.pods.iter_mut().filter(|p| p.name == "tts-c") {
            p.marked_by = Some(key("a"));
        }
    } else {
        s.0.placement.pods.retain(|p| p.name != "tts-c");
    }
    s
}

#[test]
fn restore_puts_the_count_back_and_removes_every_mark_first() {
    let d = held_and_finished(0, true).plan();
    assert_eq!(d.status.phase, Phase::Succeeded);
    assert_eq!(
        writes(&d),
        vec!["unmark ns/tts [tts-c]".to_string(), "restore ns/tts to=3".to_string()],
        "the marks go before the record of them"
    );
    // The usual case: the marked pod went with the scale-down; nothing to unmark.
    let d = held_and_finished(0, false).plan();
    assert_eq!(writes(&d), vec!["restore ns/tts to=3".to_string()]);
}

#[test]
fn a_crash_between_marking_and_scaling_down_leaves_no_mark_behind() {
    // Job a marked tts-c and crashed before the scale-down; since then gpu-2 became free of tts
    // (its pod moved to gpu-3... here: the node choice now prefers a node with nothing on it).
    let (mut s, _, _) = spread();
    for p in s.0.placement.pods.iter_mut().filter(|p| p.name == "tts-c") {
        p.marked_by = Some(key("a"));
    }
    s.0.placement.nodes.push(GpuNode {
        name: "gpu-4".into(),
        gpu_memory_bytes: Some(24 * GIB),
    });
    let d = s.plan();
    assert_eq!(chosen(&d).as_deref(), Some("gpu-4"));
    assert_eq!(
        writes(&d),
        vec!["unmark ns/tts [tts-c]".to_string(), "start 1 a-vidi-1 fp16".to_string()]
    );
    // The same node chosen again: the mark is reused, not removed.
    s.0.placement.nodes.pop();
    let d = s.plan();
    assert_eq!(
        writes(&d),
        vec![
            "mark ns/tts [tts-c]".to_string(),
            "hold ns/tts on gpu-2 orig=3 to=2 marked=[tts-c] by=ns/a".to_string(),
        ]
    );
    // A job that ends (deleted) unmarks what it marked, even without a hold.
    let d = s.clone().deleting().plan();
    assert_eq!(writes(&d), vec!["unmark ns/tts [tts-c]".to_string()]);
    assert!(d.released);
    // Another job's marks are not this job's to remove.
    for p in s.0.placement.pods.iter_mut() {
        p.marked_by = Some(JobKey::new(NS, "other"));
    }
    let d = s.deleting().plan();
    assert_eq!(writes(&d), Vec::<String>::new());
}

#[test]
fn a_statefulset_whose_pods_there_are_not_its_highest_ordinals_yields_whole() {
    let db = sts("db").replicas(3).pods(3);
    let mut s = job("a").co(db.clone());
    s.0.placement = Placement {
        nodes: nodes()[..2].to_vec(),
        pods: vec![
            pod(&db, "db-0", "gpu-1", 2),
            pod(&db, "db-1", "gpu-2", 2),
            pod(&db, "db-2", "gpu-2", 2),
        ],
        ..Default::default()
    };
    // gpu-2 holds db-1 and db-2, its highest ordinals: scaling down by 2 removes exactly them.
    let d = s.plan();
    assert_eq!(chosen(&d).as_deref(), Some("gpu-2"), "{:?}", d.status.node_choice);
    assert_eq!(
        writes(&d),
        vec!["hold ns/db on gpu-2 orig=3 to=1 marked=[] by=ns/a".to_string()]
    );
    // Only gpu-1 (db-0): not the highest ordinal, so the whole StatefulSet goes, and it says so.
    s.0.placement.nodes.remove(1);
    let d = s.plan();
    assert_eq!(chosen(&d).as_deref(), Some("gpu-1"));
    assert_eq!(writes(&d), vec!["hold ns/db orig=3 by=ns/a".to_string()]);
    let (_, msg) = notice(&d, "YieldingWhole").expect("a YieldingWhole event");
    assert!(msg.contains("highest ordinals"), "{msg}");
    assert!(d.status.node_choice.unwrap().reason.contains("whole"));
}

#[test]
fn an_autoscaled_deployment_yields_whole() {
    let (mut s, tts, _) = spread();
    s.0.placement.autoscaled.push(Autoscaled {
        co_tenant: tts.id.clone(),
        by: "HorizontalPodAutoscaler ns/tts".into(),
    });
    // tts on gpu-2 would now cost all 3 replicas, gpu-1 too; comfy's node costs 5.
    let d = s.plan();
    assert_eq!(
        chosen(&d).as_deref(),
        Some("gpu-1"),
        "3 < 5; gpu-1 and gpu-2 tie, and the name decides"
    );
    assert_eq!(writes(&d), vec!["hold ns/tts orig=3 by=ns/a".to_string()]);
    let (_, msg) = notice(&d, "YieldingWhole").unwrap();
    assert!(msg.contains("HorizontalPodAutoscaler ns/tts"), "{msg}");
}

#[test]
fn a_node_hold_scaled_back_up_is_scaled_down_to_its_floor_again() {
    let (s, tts, _) = spread();
    let mut s = holding_tts_on_gpu2(s, tts.replicas(3).pods(2).scaled_by("argocd"), pending());
    s.0.placement.pods.retain(|p| p.name != "tts-c");
    let d = s.plan();
    assert_eq!(
        writes(&d),
        vec!["hold ns/tts on gpu-2 orig=3 to=2 marked=[tts-c] by=ns/a".to_string()]
    );
    let (sev, msg) = notice(&d, "CoTenantFought").unwrap();
    assert_eq!(sev, Severity::Warning);
    assert!(msg.contains("argocd"), "{msg}");
    // At its floor (2 of 3), nothing is written.
    s.0.co_tenants[0].replicas = 2;
    assert_eq!(writes(&s.plan()), Vec::<String>::new());
}

#[test]
fn minimal_yields_per_node_only_what_makes_room() {
    // Each node: a 3 GiB and a 10 GiB co-tenant on a 24 GiB GPU (11 GiB free, 20 needed):
    // yielding the 10 GiB one suffices. On gpu-1 it has priority 3, on gpu-2 priority 1.
    let mut big1 = deploy("big1");
    big1.yield_priority = 3;
    let big2 = deploy("big2");
    let small1 = deploy("small1");
    let small2 = deploy("small2");
    let mut s = job("a")
        .with_spec(|sp| sp.co_tenants.policy = CoTenantPolicy::Minimal)
        .co(big1.clone())
        .co(big2.clone())
        .co(small1.clone())
        .co(small2.clone());
    s.0.placement = Placement {
        nodes: nodes()[..2].to_vec(),
        pods: vec![
            pod(&big1, "big1-a", "gpu-1", 10),
            pod(&small1, "small1-a", "gpu-1", 3),
            pod(&big2, "big2-a", "gpu-2", 10),
            pod(&small2, "small2-a", "gpu-2", 3),
        ],
        ..Default::default()
    };
    let d = s.plan();
    assert_eq!(chosen(&d).as_deref(), Some("gpu-2"));
    assert_eq!(
        writes(&d),
        vec![
            "mark ns/big2 [big2-a]".to_string(),
            "hold ns/big2 on gpu-2 orig=1 to=0 marked=[big2-a] by=ns/a".to_string(),
        ]
    );
    assert_eq!(d.status.policy, Some(CoTenantPolicy::Minimal));
}

#[test]
fn no_node_big_enough_falls_back_to_yielding_everything_unpinned() {
    let (mut s, _, _) = spread();
    for n in &mut s.0.placement.nodes {
        n.gpu_memory_bytes = Some(16 * GIB);
    }
    let d = s.plan();
    assert_eq!(chosen(&d), None);
    assert_eq!(
        writes(&d),
        vec![
            "hold ns/tts orig=3 by=ns/a".to_string(),
            "hold ns/comfy orig=1 by=ns/a".to_string()
        ]
    );
    let (_, msg) = notice(&d, "YieldingAll").unwrap();
    assert!(msg.contains("no node of the GPU pool (3 nodes)"), "{msg}");
}

#[test]
fn a_view_lagging_the_jobs_own_scale_down_keeps_the_marks_on_its_node() {
    // Minimal, Suspending on gpu-2: tts-c carries the job's mark, but the view does not show the
    // hold on tts yet (the Deployment's cache lags the write). The mark must stay: the ReplicaSet
    // controller may not have removed the pod yet.
    let (s, _, _) = spread();
    let mut s = s
        .suspending()
        .with_spec(|sp| sp.co_tenants.policy = CoTenantPolicy::Minimal)
        .status(|st| {
            st.policy = Some(CoTenantPolicy::Minimal);
            st.node_choice = Some(NodeChoice {
                node: "gpu-2".into(),
                reason: "test".into(),
            });
        });
    for p in s.0.placement.pods.iter_mut().filter(|p| p.name == "tts-c") {
        p.marked_by = Some(key("a"));
    }
    let d = s.plan();
    assert!(!writes(&d).iter().any(|w| w.starts_with("unmark")), "{:?}", writes(&d));
    // Once the job ends, the mark goes.
    let d = s.status(|st| st.phase = Phase::Restoring).plan();
    assert_eq!(writes(&d)[0], "unmark ns/tts [tts-c]");
}

#[test]
fn a_dry_run_names_the_node_and_only_what_would_yield_there() {
    let (s, _, _) = spread();
    let d = s.dry_run().plan();
    assert_eq!(writes(&d), Vec::<String>::new());
    assert_eq!(
        d.status.message.as_deref(),
        Some(
            "dry run: would suspend Deployment ns/tts (1 of 3 replicas, on gpu-2); would run Vidi on node gpu-2 at fp16, which needs 20.0 GiB of free GPU memory"
        )
    );
    assert_eq!(d.status.node_choice, None);
}
