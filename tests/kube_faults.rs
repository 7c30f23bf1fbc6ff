//! The real controller against the API stand-in while the API misbehaves: a 409 on every first
//! write, 503s on every write for 10 s, every open watch ended with 410 Gone, every open watch
//! dropped, a slow API (200 ms per call). Each fault starts at each point of a job's life (just
//! created, suspending, running (where someone scales a held co-tenant back up), finishing); the
//! job must still succeed, both co-tenants must come back exactly as they were, and every write
//! to them must keep invariants 1 and 2 (and Vidi start only once every co-tenant is at 0).
use std::time::Duration;

mod kube_support;
use kube_standin::{Change, Gvr, PodOutcome, Standin};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};

/// Generous: the controller retries failed writes after 5 s and a job goes through several.
const WAIT: Duration = Duration::from_secs(60);
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600,"peakVramBytes":19000000000}"#;
const CO_TENANTS: [(&str, i64); 2] = [("cosyvoice", 1), ("comfyui", 2)];

#[derive(Clone, Copy, Debug)]
enum Fault {
    ConflictFirstWrites,
    Unavailable,
    WatchesGone,
    WatchesDropped,
    Slow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    Created,
    Suspending,
    Running,
    Finishing,
}

const POINTS: [Point; 4] = [Point::Created, Point::Suspending, Point::Running, Point::Finishing];

/// Every committed write, gathered before a compaction drops the stand-in's history.
#[derive(Default)]
struct History {
    changes: Vec<Change>,
    seen: u64,
    /// How many requests the stand-in had answered when the fault began.
    injected_at: usize,
}

impl History {
    fn gather(&mut self, api: &Standin) {
        let new = api.changes_since(self.seen);
        if let Some(last) = new.last() {
            self.seen = last.resource_version;
        }
        self.changes.extend(new);
    }
}

fn inject(api: &Standin, fault: Fault, history: &mut History) {
    history.injected_at = api.access_records().len();
    match fault {
        Fault::ConflictFirstWrites => api.conflict_first_writes(true),
        Fault::Unavailable => api.fail_writes_for(503, Duration::from_secs(10)),
        Fault::WatchesGone => {
            history.gather(api);
            api.compact();
        }
        Fault::WatchesDropped => api.drop_watches(),
        Fault::Slow => api.set_latency(Duration::from_millis(200)),
    }
}

fn phase(api: &Standin, job: &str) -> String {
    api.get(&Gvr::vidijobs(), NS, job)
        .and_then(|j| j["status"]["phase"].as_str().map(String::from))
        .unwrap_or_default()
}

/// One job through its life with `fault` starting at `point`.
async fn scenario(fault: Fault, point: Point) {
    let what = format!("{fault:?} at {point:?}");
    let api = standin_with_claims(&["videos", "weights"]).await;
    // Co-tenant pods take a moment to go, so the job stays a while in Suspending.
    api.set_pod_termination(Duration::from_millis(500));
    for (name, replicas) in CO_TENANTS {
        api.create(&Gvr::deployments(), NS, deployment(name, NS, replicas as i32, true))
            .expect("co-tenant");
    }
    api.kubelet().on_pod(|_| None);
    api.wait_for(|v| v.list(&Gvr::pods(), Some(NS)).len() == 3, WAIT)
        .await
        .expect("co-tenant pods");
    let start = api.resource_version();
    let mut history = History {
        seen: start,
        ..Default::default()
    };
    let _op = Operator::start(&api);
    api.create(
        &Gvr::vidijobs(),
        NS,
        json!({
            "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
            "metadata": {"name": "j", "namespace": NS},
            "spec": {
                "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
                "query": "a speaker holds up a phone",
                "model": {"weights": {"claimName": "weights"}},
            }
        }),
    )
    .expect("job");
    if point == Point::Created {
        inject(&api, fault, &mut history);
    }
    if point == Point::Suspending {
        api.wait_for(
            |v| {
                v.get(&Gvr::vidijobs(), NS, "j")
                    .is_some_and(|j| j["status"]["phase"] == "Suspending")
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: never suspending: {}", phase(&api, "j")));
        inject(&api, fault, &mut history);
    }
    let pod = api
        .wait_until(
            |v| {
                let job = v.get(&Gvr::vidijobs(), NS, "j")?;
                let pod = job["status"]["podName"].as_str()?.to_string();
                let running = v.get(&Gvr::pods(), NS, &pod)?["status"]["phase"] == "Running";
                (job["status"]["phase"] == "Running" && running).then_some(pod)
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: Vidi never ran: {:?}", api.get(&Gvr::vidijobs(), NS, "j")));
    if point == Point::Running {
        // While Vidi runs, someone scales a held co-tenant back up: the operator must suspend it
        // again through the fault.
        inject(&api, fault, &mut history);
        api.patch_as(
            "argocd",
            &Gvr::deployments(),
            NS,
            "comfyui",
            json!({"spec": {"replicas": 3}}),
        )
        .expect("scaled up");
        api.wait_for(
            |v| {
                v.get(&Gvr::deployments(), NS, "comfyui")
                    .is_some_and(|d| d["spec"]["replicas"] == 0)
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: comfyui never suspended again"));
    }
    if point == Point::Finishing {
        inject(&api, fault, &mut history);
    }
    api.kubelet()
        .finish(NS, &pod, PodOutcome::succeed().with_message(RESULT))
        .expect("pod finished");

    // Every job finishes, and every co-tenant is back as it was.
    let done = api
        .wait_for(
            |v| {
                let succeeded = v
                    .get(&Gvr::vidijobs(), NS, "j")
                    .is_some_and(|j| j["status"]["phase"] == "Succeeded");
                succeeded
                    && CO_TENANTS.iter().all(|(name, replicas)| {
                        v.get(&Gvr::deployments(), NS, name)
                            .is_some_and(|d| d["spec"]["replicas"] == *replicas && unmarked(&d))
                    })
            },
            WAIT,
        )
        .await;
    if done.is_err() {
        panic!(
            "{what}: the job did not finish with its co-tenants restored: {:?}\n{:?}",
            api.get(&Gvr::vidijobs(), NS, "j"),
            CO_TENANTS.map(|(n, _)| api.get(&Gvr::deployments(), NS, n))
        );
    }
    history.gather(&api);
    check_invariants(&what, &history.changes);

    // The fault really met the operator. A watch ended late in the job's life may be opened
    // again only after the job is done (the watcher backs off after an error), so that evidence
    // is waited for.
    let met = |records: &[kube_standin::AccessRecord]| {
        let after = &records[history.injected_at.min(records.len())..];
        match fault {
            Fault::ConflictFirstWrites => after.iter().any(|r| r.code == 409),
            Fault::Unavailable => after.iter().any(|r| r.code == 503),
            Fault::WatchesGone | Fault::WatchesDropped => after.iter().any(|r| r.access.verb == "watch"),
            Fault::Slow => !after.is_empty(),
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !met(&api.access_records()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(met(&api.access_records()), "{what}: the operator never met the fault");
}

fn unmarked(d: &Value) -> bool {
    let a = &d["metadata"]["annotations"];
    ["vidi.dev/held-by", "vidi.dev/original-replicas", "vidi.dev/held-since"]
        .iter()
        .all(|k| a.get(*k).is_none())
}

/// Invariants 1 and 2 over every committed write to a co-tenant, and that Vidi started only
/// once every co-tenant was at 0.
fn check_invariants(what: &str, changes: &[Change]) {
    let mut replicas: std::collections::BTreeMap<String, i64> =
        CO_TENANTS.iter().map(|(n, r)| (n.to_string(), *r)).collect();
    let mut suspended_ever = false;
    for c in changes {
        if c.resource == "deployments" {
            let name = c.name().to_string();
            let Some(&original) = CO_TENANTS.iter().find(|(n, _)| *n == name).map(|(_, r)| r) else {
                continue;
            };
            let now = c.object["spec"]["replicas"].as_i64().unwrap_or(1);
            let before = replicas.insert(name.clone(), now).unwrap_or(original);
            let a = &c.object["metadata"]["annotations"];
            if before > 0 && now == 0 {
                suspended_ever = true;
                assert!(
                    a["vidi.dev/held-by"] == "media/j"
                        && a["vidi.dev/original-replicas"].as_str() == Some(original.to_string().as_str()),
                    "{what}: invariant 1: {name} scaled to 0 without its marks in the same write: {}",
                    c.object
                );
            }
            // A scale-up that keeps the marks is someone else's (the fight of the Running point);
            // the operator's restores remove them in the same write.
            if before == 0 && now > 0 && a.get("vidi.dev/held-by").is_none() {
                assert_eq!(now, original, "{what}: {name} restored to the wrong count");
                assert!(
                    unmarked(&c.object),
                    "{what}: invariant 2: {name} restored without removing its marks in the same write: {}",
                    c.object
                );
            }
            if let Some(recorded) = a.get("vidi.dev/original-replicas") {
                assert_eq!(recorded, &json!(original.to_string()), "{what}: recorded count changed");
            }
        }
        if c.resource == "pods" && c.event == "ADDED" && c.object["metadata"]["labels"]["vidi.dev/job"] == "j" {
            assert!(
                replicas.values().all(|r| *r == 0),
                "{what}: Vidi started before every co-tenant was suspended: {replicas:?}"
            );
        }
    }
    assert!(suspended_ever, "{what}: the co-tenants were never suspended");
}

async fn every_point(fault: Fault) {
    for point in POINTS {
        scenario(fault, point).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_on_every_first_write() {
    every_point(Fault::ConflictFirstWrites).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_fails_with_503_for_10_seconds() {
    every_point(Fault::Unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_watch_ends_with_410_gone() {
    every_point(Fault::WatchesGone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_open_watch_is_dropped() {
    every_point(Fault::WatchesDropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_200_ms_per_call() {
    every_point(Fault::Slow).await;
}
