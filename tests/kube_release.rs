//! In-place release hooks on Kubernetes: the real controller against the API stand-in, with a
//! real HTTP server as the co-tenant's hooks. A Deployment annotated `vidi.dev/release: vllm`
//! is released (`/sleep`) instead of scaled down and resumed (`/wake_up`) at the end; a refused
//! release, or a gate that times out after a release, falls back to a scale-down; an
//! operator that crashes while holding it in place still resumes it.
use std::time::Duration;

mod hook_server;
mod kube_support;
use hook_server::{Answer, HookServer};
use kube_standin::{Gvr, InitOutcome, PodOutcome, Standin};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600,"peakVramBytes":19000000000}"#;
const GATE_OK: &str = r#"{"device":{"index":0,"uuid":"GPU-1","name":"H200"},"totalBytes":150000000000,"usedBytes":1000,"freeBytes":149999999000,"minFreeBytes":21474836480,"waitedMillis":12}"#;

fn job(name: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": {
        "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}},
    }})
}

/// A 1-replica vLLM Deployment whose hooks are `server`'s.
fn vllm(server: &HookServer) -> Value {
    let mut d = deployment("vllm", NS, 1, true);
    d["metadata"]["annotations"] = json!({
        "vidi.dev/release": "vllm",
        "vidi.dev/release-url": server.url("/sleep?level=1"),
        "vidi.dev/resume-url": server.url("/wake_up"),
        "vidi.dev/release-timeout-seconds": "2",
        "vidi.dev/release-free-within-seconds": "15",
    });
    d
}

fn deploy(api: &Standin, name: &str) -> Value {
    api.get(&Gvr::deployments(), NS, name).unwrap_or(Value::Null)
}

fn vllm_pod_uids(api: &Standin) -> Vec<String> {
    api.list(&Gvr::pods(), Some(NS))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "vllm")
        .map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn phase(api: &Standin, name: &str) -> Value {
    api.get(&Gvr::vidijobs(), NS, name)
        .map(|j| j["status"]["phase"].clone())
        .unwrap_or(Value::Null)
}

async fn wait_phase(api: &Standin, name: &str, want: &str) {
    if api
        .wait_for(
            |v| {
                v.get(&Gvr::vidijobs(), NS, name)
                    .is_some_and(|j| j["status"]["phase"] == want)
            },
            WAIT,
        )
        .await
        .is_err()
    {
        panic!(
            "{name} never reached {want}: {}\n{}",
            api.get(&Gvr::vidijobs(), NS, name).unwrap_or_default()["status"],
            deploy(api, "vllm")
        );
    }
}

fn no_marks(d: &Value) -> bool {
    let a = &d["metadata"]["annotations"];
    ["vidi.dev/held-by", "vidi.dev/original-replicas", "vidi.dev/released"]
        .iter()
        .all(|k| a.get(*k).is_none())
}

async fn with_vllm(server: &HookServer) -> Standin {
    let api = standin_with_claims(&["videos", "weights"]).await;
    api.set_pod_termination(Duration::from_millis(200));
    api.create(&Gvr::deployments(), NS, vllm(server)).unwrap();
    if api
        .wait_for(|v| v.list(&Gvr::pods(), Some(NS)).len() == 1, WAIT)
        .await
        .is_err()
    {
        panic!("the vllm pod never came up");
    }
    api
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_in_place_and_resumed_without_a_scale_down() {
    let server = HookServer::start();
    let api = with_vllm(&server).await;
    let uids = vllm_pod_uids(&api);
    api.kubelet().on_pod(|_| {
        Some(
            PodOutcome::succeed()
                .with_message(RESULT)
                .with_init(InitOutcome::exit(0, Some(GATE_OK)))
                .after(Duration::from_millis(300)),
        )
    });
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find")).unwrap();

    // Held in place: the mark with the hook, written before the call; replicas untouched.
    let held = api
        .wait_until(
            |v| {
                let d = v.get(&Gvr::deployments(), NS, "vllm")?;
                d["metadata"]["annotations"]["vidi.dev/released"]
                    .as_str()
                    .filter(|m| m.contains("released"))
                    .map(|_| d.clone())
            },
            WAIT,
        )
        .await
        .expect("a released mark");
    assert_eq!(held["metadata"]["annotations"]["vidi.dev/held-by"], "media/find");
    assert_eq!(held["spec"]["replicas"], 1);
    // The status says so.
    if api
        .wait_for(
            |v| {
                v.get(&Gvr::vidijobs(), NS, "find")
                    .is_some_and(|j| j["status"]["suspended"][0]["releasedInPlace"] == true)
            },
            WAIT,
        )
        .await
        .is_err()
    {
        panic!("status.suspended never said releasedInPlace");
    }
    wait_phase(&api, "find", "Succeeded").await;
    assert_eq!(server.lines(), ["POST /sleep?level=1", "POST /wake_up"]);
    let d = deploy(&api, "vllm");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(no_marks(&d), "{}", d["metadata"]["annotations"]);
    assert_eq!(vllm_pod_uids(&api), uids, "its pod was never replaced");
    let writes_to_zero = api
        .access_records()
        .iter()
        .filter(|r| r.access.verb == "patch" && r.access.resource == "deployments" && r.code < 300)
        .count();
    // Hold in place, the answer, the resume's mark removal: no scale writes.
    assert_eq!(writes_to_zero, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_release_scales_down_instead() {
    let server = HookServer::start();
    server.answer("/sleep", Answer::Refuse);
    let api = with_vllm(&server).await;
    api.kubelet().on_pod(|_| {
        Some(
            PodOutcome::succeed()
                .with_message(RESULT)
                .with_init(InitOutcome::exit(0, Some(GATE_OK)))
                .after(Duration::from_millis(300)),
        )
    });
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find")).unwrap();
    if api
        .wait_for(
            |v| {
                v.get(&Gvr::deployments(), NS, "vllm")
                    .is_some_and(|d| d["spec"]["replicas"] == 0)
            },
            WAIT,
        )
        .await
        .is_err()
    {
        panic!("never scaled down: {}", deploy(&api, "vllm"));
    }
    wait_phase(&api, "find", "Succeeded").await;
    assert_eq!(server.lines(), ["POST /sleep?level=1"], "tried once, never resumed");
    let d = deploy(&api, "vllm");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(no_marks(&d), "{}", d["metadata"]["annotations"]);
    let fell_back = api
        .list(&Gvr::events(), Some(NS))
        .into_iter()
        .any(|e| e["reason"] == "ReleaseFellBack" && e["note"].as_str().unwrap_or_default().contains("HTTP 500"));
    assert!(fell_back, "a ReleaseFellBack Warning");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_timeout_after_a_release_scales_down_and_retries() {
    let server = HookServer::start();
    let api = with_vllm(&server).await;
    // The first attempt's gate times out (the memory never went free); the second passes.
    api.kubelet().on_pod(|pod| {
        let first = pod["metadata"]["labels"]["vidi.dev/attempt"] == "1";
        Some(if first {
            PodOutcome::succeed()
                .with_init(InitOutcome::exit(
                    4,
                    Some("timed out after 1m: 3 GiB free, needs 20 GiB"),
                ))
                .after(Duration::from_millis(100))
        } else {
            PodOutcome::succeed()
                .with_message(RESULT)
                .with_init(InitOutcome::exit(0, Some(GATE_OK)))
                .after(Duration::from_millis(300))
        })
    });
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find")).unwrap();
    wait_phase(&api, "find", "Succeeded").await;
    let j = api.get(&Gvr::vidijobs(), NS, "find").unwrap();
    assert_eq!(j["status"]["attempts"], 2, "{}", j["status"]);
    assert_eq!(j["status"]["precision"], "fp16", "same precision: {}", j["status"]);
    assert_eq!(server.lines(), ["POST /sleep?level=1"]);
    let scaled_to_zero = api
        .access_records()
        .iter()
        .filter(|r| r.access.verb == "patch" && r.access.resource == "deployments" && r.code < 300)
        .count();
    assert!(scaled_to_zero >= 4, "hold, answer, fall back, restore");
    let d = deploy(&api, "vllm");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(no_marks(&d));
    assert_eq!(phase(&api, "find"), "Succeeded");
    // Attempt 1's gate waited only the hook's freeWithinSeconds for the released memory;
    // attempt 2, with vllm scaled down, the operator's whole gate timeout (60 s in these tests).
    for (attempt, timeout) in [(1, "--timeout=15s"), (2, "--timeout=60s")] {
        let pod = api
            .get(&Gvr::pods(), NS, &format!("find-vidi-{attempt}"))
            .unwrap_or_default();
        let args = &pod["spec"]["initContainers"][0]["args"];
        assert!(
            args.as_array().is_some_and(|a| a.iter().any(|x| x == timeout)),
            "attempt {attempt}: {args}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_crash_while_held_in_place_still_resumes() {
    let server = HookServer::start();
    let api = with_vllm(&server).await;
    // Vidi runs until the job is deleted.
    api.kubelet().on_pod(|_| {
        Some(
            PodOutcome::succeed()
                .with_message(RESULT)
                .with_init(InitOutcome::exit(0, Some(GATE_OK)))
                .after(Duration::from_secs(3600)),
        )
    });
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find")).unwrap();
    wait_phase(&api, "find", "Running").await;
    assert!(server.wait_for("POST /sleep?level=1", WAIT));
    op.crash().await;
    // While no operator runs, the job goes away; a new operator's sweep (or the job's own
    // finalizer) resumes the co-tenant.
    api.delete(&Gvr::vidijobs(), NS, "find").unwrap();
    let _op = Operator::start(&api);
    assert!(server.wait_for("POST /wake_up", WAIT), "{:?}", server.lines());
    if api
        .wait_for(
            |v| v.get(&Gvr::deployments(), NS, "vllm").is_some_and(|d| no_marks(&d)),
            WAIT,
        )
        .await
        .is_err()
    {
        panic!("marks left: {}", deploy(&api, "vllm"));
    }
    assert_eq!(deploy(&api, "vllm")["spec"]["replicas"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_release_annotations_refuse_the_job_and_touch_nothing() {
    let server = HookServer::start();
    let api = standin_with_claims(&["videos", "weights"]).await;
    let mut d = vllm(&server);
    d["metadata"]["annotations"]["vidi.dev/release"] = json!("grpc");
    api.create(&Gvr::deployments(), NS, d).unwrap();
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("find")).unwrap();
    wait_phase(&api, "find", "Failed").await;
    let st = api.get(&Gvr::vidijobs(), NS, "find").unwrap()["status"].clone();
    assert_eq!(st["reason"], "InvalidSpec", "{st}");
    let message = st["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("Deployment media/vllm: annotation vidi.dev/release") && message.contains("grpc"),
        "{message}"
    );
    let d = deploy(&api, "vllm");
    assert_eq!(d["spec"]["replicas"], 1);
    assert!(no_marks(&d));
    assert!(server.lines().is_empty());
}
