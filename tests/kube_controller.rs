//! The real controller (watches, finalizer, events) against the stateful API stand-in, over HTTP.
//! Each test starts its own stand-in and operator, drives a scenario and asserts the objects.
use std::sync::Arc;
use std::time::Duration;

mod kube_support;
use kube_standin::{Gvr, InitOutcome, PodOutcome, Standin, View};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};
use vidi_operator::kube::Scope;

const WAIT: Duration = Duration::from_secs(20);
const RESULT: &str =
    r#"{"segments":[[65,72],[180,184]],"precision":"fp16","videoSeconds":600,"peakVramBytes":19000000000}"#;

fn job(name: &str, extra: Value) -> Value {
    let mut spec = json!({
        "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}, "hfCache": {"claimName": "hf-cache"}},
    });
    if let (Value::Object(s), Value::Object(e)) = (&mut spec, extra) {
        s.extend(e);
    }
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": spec})
}

/// Reading objects, from a wait condition's view or straight from the stand-in.
trait Objects {
    fn object(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value>;
}

impl Objects for View<'_> {
    fn object(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        self.get(gvr, ns, name)
    }
}

impl Objects for Standin {
    fn object(&self, gvr: &Gvr, ns: &str, name: &str) -> Option<Value> {
        self.get(gvr, ns, name)
    }
}

fn status(v: &impl Objects, name: &str) -> Value {
    v.object(&Gvr::vidijobs(), NS, name)
        .map(|j| j["status"].clone())
        .unwrap_or(Value::Null)
}

fn replicas(v: &impl Objects, ns: &str, name: &str) -> Option<i64> {
    v.object(&Gvr::deployments(), ns, name)?["spec"]["replicas"].as_i64()
}

fn annotations(v: &impl Objects, ns: &str, name: &str) -> Value {
    v.object(&Gvr::deployments(), ns, name)
        .map(|d| d["metadata"]["annotations"].clone())
        .unwrap_or(Value::Null)
}

fn no_marks(v: &impl Objects, ns: &str, name: &str) -> bool {
    let a = annotations(v, ns, name);
    a.get("vidi.dev/held-by").is_none() && a.get("vidi.dev/original-replicas").is_none()
}

async fn wait_phase(api: &Standin, name: &str, phase: &str) -> Value {
    match api
        .wait_until(|v| Some(status(v, name)).filter(|s| s["phase"] == phase), WAIT)
        .await
    {
        Ok(s) => s,
        Err(_) => panic!(
            "{name} never reached {phase}; status: {}\n{}",
            status(api, name),
            dump(api)
        ),
    }
}

/// Everything a failed wait needs to explain itself.
fn dump(api: &Standin) -> String {
    let mut out = String::new();
    for j in api.list(&Gvr::vidijobs(), None) {
        out += &format!(
            "job {}: phase={} message={}\n",
            j["metadata"]["name"], j["status"]["phase"], j["status"]["message"]
        );
    }
    for d in api.list(&Gvr::deployments(), None) {
        out += &format!(
            "deployment {}/{}: replicas={} annotations={}\n",
            d["metadata"]["namespace"], d["metadata"]["name"], d["spec"]["replicas"], d["metadata"]["annotations"]
        );
    }
    for p in api.list(&Gvr::pods(), None) {
        out += &format!(
            "pod {}: phase={} deleting={}\n",
            p["metadata"]["name"],
            p["status"]["phase"],
            !p["metadata"]["deletionTimestamp"].is_null()
        );
    }
    let records = api.access_records();
    for r in records.iter().rev().take(30).rev() {
        out += &format!("call {r}\n");
    }
    out
}

/// Waits for `cond`, or fails with a dump of the stand-in.
async fn settle(api: &Standin, what: &str, timeout: Duration, cond: impl FnMut(&View<'_>) -> bool) {
    if api.wait_for(cond, timeout).await.is_err() {
        panic!("timed out waiting for {what}\n{}", dump(api));
    }
}

fn condition(status: &Value, kind: &str) -> String {
    status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn events(api: &Standin) -> Vec<(String, String, String)> {
    api.list(&Gvr::events(), Some(NS))
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn vidi_pods(v: &View<'_>) -> Vec<Value> {
    v.list(&Gvr::pods(), Some(NS))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["vidi.dev/job"].is_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_suspends_runs_and_restores() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.set_pod_termination(Duration::from_millis(300));
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.create(&Gvr::deployments(), NS, deployment("comfyui", NS, 2, true))
        .unwrap();
    api.create(&Gvr::deployments(), NS, deployment("unrelated", NS, 1, false))
        .unwrap();
    settle(&api, "a condition", WAIT, |v| v.list(&Gvr::pods(), Some(NS)).len() == 4).await;
    api.kubelet().on_pod(|_| Some(PodOutcome::succeed().with_message(RESULT).with_init(InitOutcome::exit(0, Some(r#"{"device":{"index":0,"uuid":"GPU-1","name":"RTX 4090"},"totalBytes":25757220864,"usedBytes":1000,"freeBytes":25757219864,"minFreeBytes":21474836480,"waitedMillis":12}"#))).after(Duration::from_millis(200))));
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find", json!({}))).unwrap();

    // Suspended with the marks in the same object, before the Vidi pod exists.
    settle(&api, "a condition", WAIT, |v| {
        replicas(v, NS, "cosyvoice") == Some(0) && replicas(v, NS, "comfyui") == Some(0)
    })
    .await;
    settle(&api, "marks on comfyui", WAIT, |v| {
        let a = annotations(v, NS, "comfyui");
        a["vidi.dev/held-by"] == "media/find" && a["vidi.dev/original-replicas"] == "2"
    })
    .await;
    assert_eq!(
        replicas(&api, NS, "unrelated"),
        Some(1),
        "a workload without the opt-in label is left alone"
    );

    // The Vidi pod appears only once the co-tenants' pods are gone.
    let pod = api.wait_until(|v| vidi_pods(v).into_iter().next(), WAIT).await.unwrap();
    let co_pods_left = api
        .list(&Gvr::pods(), Some(NS))
        .iter()
        .filter(|p| {
            let app = p["metadata"]["labels"]["app"].as_str().unwrap_or_default();
            (app == "cosyvoice" || app == "comfyui") && p["metadata"]["deletionTimestamp"].is_null()
        })
        .count();
    assert_eq!(co_pods_left, 0, "co-tenant pods must be gone before Vidi starts");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["initContainers"][0]["args"][1], "gate");
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["value"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        env.contains(&("VIDI_VIDEO".into(), "/input/talks/keynote.mp4".into())),
        "{env:?}"
    );
    assert!(env.contains(&("HF_HUB_OFFLINE".into(), "1".into())));
    assert!(env.contains(&("VIDI_PRECISION".into(), "fp16".into())));
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "VidiJob");

    let done = wait_phase(&api, "find", "Succeeded").await;
    assert_eq!(done["result"]["segments"].as_array().unwrap().len(), 2);
    assert_eq!(
        done["result"]["summary"],
        "2 segments: 00:01:05-00:01:12, 00:03:00-00:03:04"
    );
    assert_eq!(done["gpu"]["device"]["name"], "RTX 4090");
    assert_eq!(condition(&done, "Complete"), "True");
    assert_eq!(condition(&done, "Ready"), "True");
    assert_eq!(condition(&done, "Failed"), "False");
    assert!(done["suspended"].is_null() || done["suspended"].as_array().unwrap().is_empty());
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1));
    assert_eq!(replicas(&api, NS, "comfyui"), Some(2));
    assert!(no_marks(&api, NS, "cosyvoice") && no_marks(&api, NS, "comfyui"));
    let reasons: Vec<String> = events(&api).into_iter().map(|e| e.1).collect();
    for r in ["Suspended", "Starting", "Restored", "Succeeded"] {
        assert!(reasons.iter().any(|x| x == r), "missing event {r}: {reasons:?}");
    }
    // Never queued: no "left the queue"; the answer is told with the end.
    for r in ["Started", "Answered"] {
        assert!(!reasons.iter().any(|x| x == r), "event {r}: {reasons:?}");
    }
    // One Event per co-tenant for each suspend and restore, each naming its co-tenant (the
    // Recorder would fold Events with the same reason and related object into one).
    for (reason, note) in [
        ("Suspended", "suspended Deployment media/cosyvoice (was 1 replica)"),
        ("Suspended", "suspended Deployment media/comfyui (was 2 replicas)"),
        ("Restored", "restored Deployment media/cosyvoice to 1 replica"),
        ("Restored", "restored Deployment media/comfyui to 2 replicas"),
    ] {
        let found: Vec<Value> = api
            .list(&Gvr::events(), Some(NS))
            .into_iter()
            .filter(|e| e["reason"] == reason && e["note"] == note)
            .collect();
        assert_eq!(found.len(), 1, "one {reason} Event {note:?}: {:?}", events(&api));
        let co_tenant = note.split('/').nth(1).and_then(|n| n.split(' ').next()).unwrap();
        assert_eq!(found[0]["related"]["name"], co_tenant, "{}", found[0]);
        assert_eq!(found[0]["related"]["kind"], "Deployment");
    }

    // Each write once: the reconcile after a write plans from caches that have it (`kube::seen`),
    // so nothing is refused as stale and nothing is written twice.
    let writes = |verb: &str, resource: &str, subresource: &str| {
        api.access_records()
            .iter()
            .filter(|r| r.is_write() && r.access.verb == verb && r.access.resource == resource)
            .filter(|r| r.access.subresource == subresource)
            .map(|r| r.code)
            .collect::<Vec<u16>>()
    };
    let refused: Vec<String> = api
        .access_records()
        .iter()
        .filter(|r| r.is_write() && r.code == 409)
        .map(|r| r.to_string())
        .collect();
    assert!(refused.is_empty(), "writes refused as stale: {refused:?}");
    assert_eq!(
        writes("patch", "deployments", ""),
        [200; 4],
        "suspend and restore each co-tenant once"
    );
    assert_eq!(writes("create", "pods", ""), [201], "one Vidi pod");
    assert_eq!(writes("patch", "vidijobs", ""), [200], "the finalizer, once");
    // Suspending; Running with attempt 1; running on its node (skipped when the reconcile only
    // sees the pod after it has ended); Succeeded.
    let status_writes = writes("patch", "vidijobs", "status");
    assert!(
        (3..=4).contains(&status_writes.len()) && status_writes.iter().all(|c| *c == 200),
        "status writes: {status_writes:?}"
    );

    // Every call the controller made is granted by the chart's RBAC rules, and every rule is used.
    let granted: std::collections::BTreeSet<(String, String, String)> = vidi_operator::kube::rbac::rules()
        .iter()
        .flat_map(|r| {
            r.resources.iter().flat_map(move |res| {
                r.verbs
                    .iter()
                    .map(move |v| (r.api_groups[0].to_string(), res.to_string(), v.to_string()))
            })
        })
        .collect();
    let used: std::collections::BTreeSet<(String, String, String)> = api
        .access_log()
        .into_iter()
        .map(|a| {
            let res = if a.subresource.is_empty() {
                a.resource.clone()
            } else {
                format!("{}/{}", a.resource, a.subresource)
            };
            (a.group, res, a.verb)
        })
        .filter(|(g, res, _)| !(g == "apiextensions.k8s.io" || res == "namespaces"))
        .collect();
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "calls without an RBAC rule: {ungranted:?}");
    op.crash().await;
}

/// Runs one job against one co-tenant with the kubelet answering `outcome` for every attempt
/// chosen by `answer(attempt)`, and returns the final status.
async fn run_to_end(
    extra: Value,
    answer: impl Fn(u32) -> PodOutcome + Send + Sync + 'static,
    end: &str,
) -> (Standin, Value) {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.kubelet().on_pod(move |pod| {
        let attempt: u32 = pod["metadata"]["labels"]["vidi.dev/attempt"].as_str()?.parse().ok()?;
        Some(answer(attempt))
    });
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("j", extra)).unwrap();
    let st = wait_phase(&api, "j", end).await;
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1), "restored after {end}");
    assert!(no_marks(&api, NS, "cosyvoice"));
    op.crash().await;
    (api, st)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_1_retries_up_to_backoff_limit_then_fails() {
    let (api, st) = run_to_end(
        json!({"backoffLimit": 1}),
        |_| PodOutcome::exit(1).with_message("Traceback: boom"),
        "Failed",
    )
    .await;
    assert_eq!(st["reason"], "Failed");
    assert_eq!(st["attempts"], 2);
    assert_eq!(st["failures"], 2);
    assert!(st["message"].as_str().unwrap().contains("boom"), "{st}");
    assert_eq!(condition(&st, "Failed"), "True");
    assert_eq!(condition(&st, "Stalled"), "True");
    assert_eq!(
        api.list(&Gvr::pods(), Some(NS))
            .iter()
            .filter(|p| p["metadata"]["labels"]["vidi.dev/job"] == "j")
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_2_is_bad_input_and_never_retried() {
    let (_api, st) = run_to_end(
        json!({"backoffLimit": 3}),
        |_| PodOutcome::exit(2).with_message("video not found"),
        "Failed",
    )
    .await;
    assert_eq!(st["reason"], "BadInput");
    assert_eq!(st["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_with_auto_precision_steps_down_and_succeeds() {
    let (api, st) = run_to_end(
        json!({}),
        |attempt| {
            if attempt < 3 {
                PodOutcome::exit(3)
            } else {
                PodOutcome::succeed().with_message(RESULT)
            }
        },
        "Succeeded",
    )
    .await;
    assert_eq!(st["attempts"], 3);
    assert_eq!(st["precision"], "int4");
    let precisions: Vec<String> = {
        let mut pods = api.list(&Gvr::pods(), Some(NS));
        pods.sort_by_key(|p| p["metadata"]["name"].as_str().unwrap_or_default().to_string());
        pods.iter()
            .filter_map(|p| p["metadata"]["labels"]["vidi.dev/precision"].as_str().map(String::from))
            .collect()
    };
    assert_eq!(precisions, ["fp16", "int8", "int4"]);
    assert!(
        events(&api)
            .iter()
            .any(|e| e.0 == "Warning" && e.1 == "PrecisionLowered")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_3_at_fixed_precision_fails_out_of_gpu_memory() {
    let mut extra = json!({});
    extra["model"] = json!({"weights": {"claimName": "weights"}, "precision": "int8"});
    let (_api, st) = run_to_end(extra, |_| PodOutcome::exit(3), "Failed").await;
    assert_eq!(st["reason"], "OutOfGpuMemory");
    assert_eq!(st["attempts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_killed_is_reported_with_advice() {
    let (_api, st) = run_to_end(json!({}), |_| PodOutcome::exit(137).with_reason("OOMKilled"), "Failed").await;
    assert_eq!(st["reason"], "OOMKilled");
    assert!(st["message"].as_str().unwrap().contains("spec.resources.memory"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_timeout_fails_the_attempt_with_its_reason() {
    let mut extra = json!({});
    extra["model"] = json!({"weights": {"claimName": "weights"}, "precision": "fp16"});
    let (_api, st) = run_to_end(
        extra,
        |_| {
            PodOutcome::exit(0).with_init(InitOutcome::exit(
                4,
                Some("3.1 GiB free of 20 GiB needed; held by pid 42"),
            ))
        },
        "Failed",
    )
    .await;
    assert_eq!(st["reason"], "GpuMemoryUnavailable");
    assert!(st["message"].as_str().unwrap().contains("held by pid 42"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_job_stops_vidi_then_restores() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.set_pod_termination(Duration::from_millis(300));
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.kubelet().on_pod(|_| None); // Vidi runs until stopped.
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("j", json!({}))).unwrap();
    wait_phase(&api, "j", "Running").await;
    settle(&api, "a condition", WAIT, |v| {
        vidi_pods(v).iter().any(|p| p["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(0));
    api.delete(&Gvr::vidijobs(), NS, "j").unwrap();
    // The co-tenant stays down while the Vidi pod is still terminating.
    settle(&api, "a condition", WAIT, |v| {
        vidi_pods(v)
            .iter()
            .all(|p| !p["metadata"]["deletionTimestamp"].is_null())
            || vidi_pods(v).is_empty()
    })
    .await;
    settle(&api, "job goes once restored", WAIT, |v| {
        v.get(&Gvr::vidijobs(), NS, "j").is_none()
    })
    .await;
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1));
    assert!(no_marks(&api, NS, "cosyvoice"));
    assert!(
        api.list(&Gvr::pods(), Some(NS))
            .iter()
            .all(|p| p["metadata"]["labels"]["vidi.dev/job"].is_null())
    );
    // Removing the finalizer of a job that is already gone is not a failure.
    let metrics = op.metrics.encode();
    assert!(
        metrics.contains("vidi_operator_reconcile_errors_total{error=\"Finalizer\"} 0\n"),
        "{metrics}"
    );
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_restores_and_fails() {
    let (_api, st) = run_to_end(
        json!({"activeDeadlineSeconds": 2}),
        |_| PodOutcome::succeed().after(Duration::from_secs(30)),
        "Failed",
    )
    .await;
    assert_eq!(st["reason"], "DeadlineExceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_jobs_for_one_gpu_run_one_at_a_time_and_restore_once() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.kubelet().on_pod(|_| {
        Some(
            PodOutcome::succeed()
                .with_message(RESULT)
                .after(Duration::from_millis(300)),
        )
    });
    // Record every replica count the co-tenant ever had.
    let history = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let running_at_once = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let op = Operator::start(&api);
    for name in ["a", "b", "c"] {
        api.create(&Gvr::vidijobs(), NS, job(name, json!({}))).unwrap();
    }
    let h = history.clone();
    let r = running_at_once.clone();
    api.wait_for(
        move |v| {
            if let Some(n) = replicas(v, NS, "cosyvoice") {
                let mut h = h.lock().unwrap();
                if h.last() != Some(&n) {
                    h.push(n);
                }
            }
            let live = vidi_pods(v)
                .iter()
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .count();
            r.fetch_max(live, std::sync::atomic::Ordering::SeqCst);
            ["a", "b", "c"].iter().all(|n| status(v, n)["phase"] == "Succeeded")
        },
        Duration::from_secs(40),
    )
    .await
    .unwrap_or_else(|_| panic!("all three should succeed\n{}", dump(&api)));
    assert_eq!(
        running_at_once.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one Vidi pod at a time"
    );
    assert_eq!(
        *history.lock().unwrap(),
        vec![1, 0, 1],
        "suspended once, restored once after the last job"
    );
    assert!(no_marks(&api, NS, "cosyvoice"));
    let starts: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| status(&api, n)["startTime"].as_str().unwrap().to_string())
        .collect();
    assert!(
        starts[0] <= starts[1] && starts[1] <= starts[2],
        "oldest first: {starts:?}"
    );
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restart_in_every_phase_still_restores() {
    // A second job waits in Queued meanwhile, so every crash also hits a queued job.
    for phase in ["Suspending", "Running"] {
        let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
        api.set_pod_termination(Duration::from_millis(500));
        api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 2, true))
            .unwrap();
        api.kubelet().on_pod(|_| {
            Some(
                PodOutcome::succeed()
                    .with_message(RESULT)
                    .after(Duration::from_millis(700)),
            )
        });
        let op = Operator::start(&api);
        api.create(&Gvr::vidijobs(), NS, job("j", json!({}))).unwrap();
        wait_phase(&api, "j", phase).await;
        api.create(&Gvr::vidijobs(), NS, job("k", json!({}))).unwrap();
        wait_phase(&api, "k", "Queued").await;
        op.crash().await;
        let op = Operator::start(&api);
        for name in ["j", "k"] {
            let st = wait_phase(&api, name, "Succeeded").await;
            assert_eq!(
                st["result"]["segments"].as_array().map(Vec::len),
                Some(2),
                "{name} after a crash in {phase}"
            );
        }
        assert_eq!(replicas(&api, NS, "cosyvoice"), Some(2), "after a crash in {phase}");
        assert!(no_marks(&api, NS, "cosyvoice"));
        op.crash().await;
    }
    // Restoring persists while a deleted job's Vidi pod is still terminating: crash there.
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.set_pod_termination(Duration::from_secs(2));
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 2, true))
        .unwrap();
    api.kubelet().on_pod(|_| None);
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("j", json!({}))).unwrap();
    settle(&api, "a condition", WAIT, |v| {
        vidi_pods(v).iter().any(|p| p["status"]["phase"] == "Running")
    })
    .await;
    api.delete(&Gvr::vidijobs(), NS, "j").unwrap();
    wait_phase(&api, "j", "Restoring").await;
    op.crash().await;
    assert_eq!(
        replicas(&api, NS, "cosyvoice"),
        Some(0),
        "still held while Vidi terminates"
    );
    let op = Operator::start(&api);
    settle(&api, "deleted job goes once restored", WAIT, |v| {
        v.get(&Gvr::vidijobs(), NS, "j").is_none()
    })
    .await;
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(2));
    assert!(no_marks(&api, NS, "cosyvoice"));
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_tenant_scaled_up_mid_job_is_suspended_again_with_a_warning() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    api.kubelet().on_pod(|_| None);
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("j", json!({}))).unwrap();
    settle(&api, "the Vidi pod", WAIT, |v| !vidi_pods(v).is_empty()).await;
    // Someone (a GitOps sync, a person) scales it back up; the workload controller then
    // updates the status subresource, which must not be blamed.
    api.patch_as(
        "argocd",
        &Gvr::deployments(),
        NS,
        "cosyvoice",
        json!({"spec": {"replicas": 3}}),
    )
    .unwrap();
    settle(&api, "suspended again", WAIT, |v| {
        replicas(v, NS, "cosyvoice") == Some(0)
    })
    .await;
    assert_eq!(
        annotations(&api, NS, "cosyvoice")["vidi.dev/original-replicas"],
        "1",
        "original kept"
    );
    api.wait_for(
        |v| {
            v.list(&Gvr::events(), Some(NS)).iter().any(|e| {
                e["type"] == "Warning"
                    && e["reason"] == "CoTenantFought"
                    && e["note"].as_str().is_some_and(|n| n.contains("scaled to 3 by argocd"))
            })
        },
        WAIT,
    )
    .await
    .unwrap_or_else(|_| panic!("no CoTenantFought warning: {:?}", events(&api)));
    let pod = api
        .wait_until(
            |v| {
                vidi_pods(v)
                    .first()
                    .and_then(|p| p["metadata"]["name"].as_str().map(String::from))
            },
            WAIT,
        )
        .await
        .expect("the Vidi pod");
    api.kubelet()
        .finish(NS, &pod, PodOutcome::succeed().with_message(RESULT))
        .unwrap();
    wait_phase(&api, "j", "Succeeded").await;
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1));
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_tenant_at_zero_beforehand_is_restored_to_zero() {
    let (api, _st) = {
        let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
        api.create(&Gvr::deployments(), NS, deployment("idle", NS, 0, true))
            .unwrap();
        api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
            .unwrap();
        api.kubelet()
            .on_pod(|_| Some(PodOutcome::succeed().with_message(RESULT)));
        let op = Operator::start(&api);
        api.create(&Gvr::vidijobs(), NS, job("j", json!({}))).unwrap();
        let st = wait_phase(&api, "j", "Succeeded").await;
        op.crash().await;
        (api, st)
    };
    assert_eq!(replicas(&api, NS, "idle"), Some(0));
    assert!(no_marks(&api, NS, "idle"));
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_tenants_in_other_namespaces_need_the_opt_in_label() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), "tts", deployment("cosyvoice", "tts", 1, true))
        .unwrap();
    api.create(&Gvr::deployments(), "art", deployment("comfyui", "art", 1, false))
        .unwrap();
    api.kubelet()
        .on_pod(|_| Some(PodOutcome::succeed().with_message(RESULT)));
    let op = Operator::start(&api);
    // Selector across namespaces: the labelled one is suspended.
    api.create(
        &Gvr::vidijobs(),
        NS,
        job("ok", json!({"coTenants": {"namespaces": ["tts", "art"]}})),
    )
    .unwrap();
    settle(&api, "a condition", WAIT, |v| {
        annotations(v, "tts", "cosyvoice")["vidi.dev/held-by"] == "media/ok"
    })
    .await;
    assert_eq!(replicas(&api, "art", "comfyui"), Some(1));
    wait_phase(&api, "ok", "Succeeded").await;
    // An explicit ref to an unlabelled workload elsewhere is refused, naming the field.
    api.create(
        &Gvr::vidijobs(),
        NS,
        job(
            "bad",
            json!({"coTenants": {"refs": [{"kind": "Deployment", "name": "comfyui", "namespace": "art"}]}}),
        ),
    )
    .unwrap();
    let st = wait_phase(&api, "bad", "Failed").await;
    assert_eq!(st["reason"], "InvalidSpec");
    assert!(
        st["message"].as_str().unwrap().contains("spec.coTenants.refs[0]"),
        "{st}"
    );
    assert_eq!(replicas(&api, "art", "comfyui"), Some(1));
    assert!(no_marks(&api, "art", "comfyui"));
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_fail_naming_the_field_and_suspend_nothing() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    let op = Operator::start(&api);
    let cases = [
        (
            "no-claim",
            json!({"video": {"volume": {"claimName": "missing", "path": "a.mp4"}}}),
            "spec.video.volume.claimName",
        ),
        (
            "no-match",
            json!({"coTenants": {"selector": {"matchLabels": {"app": "nope"}}}}),
            "spec.coTenants",
        ),
        (
            "host-path",
            json!({"video": {"hostPath": "/data/a.mp4"}}),
            "spec.video.hostPath",
        ),
    ];
    for (name, extra, _) in &cases {
        api.create(&Gvr::vidijobs(), NS, job(name, extra.clone())).unwrap();
    }
    for (name, _, field) in &cases {
        let st = wait_phase(&api, name, "Failed").await;
        assert_eq!(st["reason"], "InvalidSpec", "{name}");
        assert!(st["message"].as_str().unwrap().contains(field), "{name}: {st}");
        assert_eq!(condition(&st, "Failed"), "True");
    }
    assert_eq!(replicas(&api, NS, "cosyvoice"), Some(1));
    assert!(no_marks(&api, NS, "cosyvoice"));
    assert!(events(&api).iter().any(|e| e.0 == "Warning" && e.1 == "InvalidSpec"));
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_namespaces_limit_what_the_operator_touches() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), "tts", deployment("cosyvoice", "tts", 1, true))
        .unwrap();
    api.create(
        &Gvr::deployments(),
        "elsewhere",
        deployment("other", "elsewhere", 1, true),
    )
    .unwrap();
    api.kubelet()
        .on_pod(|_| Some(PodOutcome::succeed().with_message(RESULT)));
    let op = Operator::watching(&api, Scope::Namespaces(vec![NS.into(), "tts".into()]));
    api.create(
        &Gvr::vidijobs(),
        NS,
        job("j", json!({"coTenants": {"namespaces": ["tts"]}})),
    )
    .unwrap();
    let mut ignored = job("ignored", json!({}));
    ignored["metadata"]["namespace"] = json!("elsewhere");
    api.create(&Gvr::vidijobs(), "elsewhere", ignored).unwrap();
    settle(&api, "cosyvoice suspended", WAIT, |v| {
        replicas(v, "tts", "cosyvoice") == Some(0)
    })
    .await;
    wait_phase(&api, "j", "Succeeded").await;
    assert_eq!(replicas(&api, "tts", "cosyvoice"), Some(1));
    assert!(no_marks(&api, "tts", "cosyvoice"));
    let outside = api.get(&Gvr::vidijobs(), "elsewhere", "ignored").expect("job");
    assert!(
        outside["status"].is_null(),
        "a job outside the watched namespaces is left alone: {outside}"
    );
    assert_eq!(replicas(&api, "elsewhere", "other"), Some(1));
    assert!(
        api.access_records()
            .iter()
            .all(|r| r.namespace.as_deref().is_none_or(|n| n == NS || n == "tts")),
        "every call stays inside the watched namespaces"
    );
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_sweep_restores_co_tenants_whose_holder_is_gone() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    // Left behind by a job that was force-deleted (finalizer removed by hand) while it held it.
    let mut held = deployment("cosyvoice", NS, 0, true);
    held["metadata"]["annotations"] = json!({"vidi.dev/held-by": "media/gone", "vidi.dev/original-replicas": "2"});
    api.create(&Gvr::deployments(), NS, held).unwrap();
    // Held by a gone job and a live one: only the gone holder is dropped.
    let mut shared = deployment("comfyui", NS, 0, true);
    shared["metadata"]["annotations"] =
        json!({"vidi.dev/held-by": "media/gone,media/live", "vidi.dev/original-replicas": "1"});
    api.create(&Gvr::deployments(), NS, shared).unwrap();
    api.kubelet().on_pod(|_| None);
    let mut live = job(
        "live",
        json!({"coTenants": {"selector": {"matchLabels": {"app": "comfyui"}}}}),
    );
    live["status"] = json!({"phase": "Running"});
    api.create_with_status(&Gvr::vidijobs(), NS, live).unwrap();
    let op = Operator::start(&api);
    settle(&api, "cosyvoice restored by the sweep", WAIT, |v| {
        replicas(v, NS, "cosyvoice") == Some(2) && no_marks(v, NS, "cosyvoice")
    })
    .await;
    settle(&api, "the gone holder dropped from comfyui", WAIT, |v| {
        annotations(v, NS, "comfyui")["vidi.dev/held-by"] == "media/live"
    })
    .await;
    assert_eq!(replicas(&api, NS, "comfyui"), Some(0), "still held by the live job");
    assert_eq!(annotations(&api, NS, "comfyui")["vidi.dev/original-replicas"], "1");
    op.crash().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_starts_are_ready_as_soon_as_the_caches_have_listed() {
    let api = standin_with_claims(&["videos", "weights", "hf-cache"]).await;
    api.create(&Gvr::deployments(), NS, deployment("cosyvoice", NS, 1, true))
        .unwrap();
    // The readiness task used to miss the caches' wake-up and resume only on its 5 s timeout.
    let limit = Duration::from_secs(4);
    for start in 0..20 {
        let op = Operator::start(&api);
        let began = tokio::time::Instant::now();
        while !op.health.ready.load(std::sync::atomic::Ordering::SeqCst) {
            assert!(began.elapsed() < limit, "start {start} was not ready within {limit:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        op.crash().await;
    }
}
