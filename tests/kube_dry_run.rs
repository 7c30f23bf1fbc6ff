//! `--dry-run`: the real controller against the API stand-in reports what a job would suspend
//! and run (in its log) and writes nothing at all: no co-tenant is scaled or marked, no pod is
//! created or deleted, and the job gets no finalizer, no status and no Event.
use std::sync::Arc;
use std::time::Duration;

mod kube_support;
use kube_standin::{Gvr, PodOutcome, View};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// Every Deployment as (namespace/name, replicas, annotations), and every pod name: what a dry
/// run must leave exactly as it was.
fn world(v: &View<'_>) -> (Vec<(String, Value, Value)>, Vec<String>) {
    let mut deployments: Vec<_> = v
        .list(&Gvr::deployments(), None)
        .into_iter()
        .map(|d| {
            (
                format!("{}/{}", d["metadata"]["namespace"], d["metadata"]["name"]),
                d["spec"]["replicas"].clone(),
                d["metadata"]["annotations"].clone(),
            )
        })
        .collect();
    deployments.sort_by(|a, b| a.0.cmp(&b.0));
    let mut pods: Vec<String> = v
        .list(&Gvr::pods(), None)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
        .collect();
    pods.sort();
    (deployments, pods)
}

/// The operator's log, captured from the global tracing subscriber.
#[derive(Clone, Default)]
struct Log(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut log) = self.0.lock() {
            log.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
    type Writer = Log;
    fn make_writer(&'a self) -> Log {
        self.clone()
    }
}

impl Log {
    fn capture() -> Self {
        let log = Log::default();
        tracing_subscriber::fmt()
            .with_writer(log.clone())
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("vidi_operator=info"))
            .init();
        log
    }

    /// Waits for a log line that contains every one of `parts`; returns it.
    async fn line(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self
                .0
                .lock()
                .map(|l| String::from_utf8_lossy(&l).to_string())
                .unwrap_or_default();
            if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_reports_what_would_be_suspended_and_changes_nothing() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    for (name, ns, replicas, opt_in) in [
        ("cosyvoice", NS, 1, true),
        ("comfyui", NS, 2, true),
        ("unrelated", NS, 1, false),
        ("painter", "art", 1, true),
        ("private", "art", 1, false),
    ] {
        api.create(&Gvr::deployments(), ns, deployment(name, ns, replicas, opt_in))
            .expect("co-tenant");
    }
    // A kubelet that would finish any Vidi pod at once: a dry run must never get that far.
    api.kubelet().on_pod(|_| Some(PodOutcome::succeed()));
    if api
        .wait_for(|v| v.list(&Gvr::pods(), None).len() == 6, WAIT)
        .await
        .is_err()
    {
        panic!("co-tenant pods never started");
    }
    let before = api.wait_until(|v| Some(world(v)), WAIT).await.expect("a view");
    let log = Log::capture();
    let _op = Operator::dry_run(&api);
    api.create(
        &Gvr::vidijobs(),
        NS,
        json!({
            "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
            "metadata": {"name": "preview", "namespace": NS},
            "spec": {
                "video": {"volume": {"claimName": "videos", "path": "talks/keynote.mp4"}},
                "query": "a speaker holds up a phone",
                "model": {"weights": {"claimName": "weights"}, "precision": "int8"},
                "coTenants": {"namespaces": [NS, "art"]},
            }
        }),
    )
    .expect("job created");

    // The log says what would happen, naming each co-tenant with its replicas.
    let reported = log.line(&["dry run", "would suspend "]).await;
    for would in [
        "Deployment media/comfyui (2 replicas)",
        "Deployment media/cosyvoice (1 replica)",
        "Deployment art/painter (1 replica)",
        "would run Vidi at int8",
    ] {
        assert!(reported.contains(would), "{would:?} missing from {reported:?}");
    }
    for left_alone in ["unrelated", "private"] {
        assert!(
            !reported.contains(left_alone),
            "{left_alone} is not opted in: {reported}"
        );
    }

    // A co-tenant changes: the report follows it.
    api.patch_json(&Gvr::deployments(), NS, "comfyui", json!({"spec": {"replicas": 3}}))
        .expect("scaled");
    log.line(&["dry run", "media/comfyui (3 replicas)"]).await;

    // Nothing was written to the job: no finalizer, no status, no Event.
    let job = api.get(&Gvr::vidijobs(), NS, "preview").expect("job");
    assert!(job["metadata"]["finalizers"].is_null(), "{job}");
    assert!(job["status"].is_null() || job["status"] == json!({}), "{job}");
    assert_eq!(api.list(&Gvr::events(), Some(NS)), Vec::<Value>::new());

    // Deleting the job releases it (the finalizer has nothing to restore).
    api.delete(&Gvr::vidijobs(), NS, "preview").expect("deleted");
    if api
        .wait_for(|v| v.get(&Gvr::vidijobs(), NS, "preview").is_none(), WAIT)
        .await
        .is_err()
    {
        panic!(
            "the job was never released: {:?}",
            api.get(&Gvr::vidijobs(), NS, "preview")
        );
    }

    // Nothing changed but our own scale-up (and the pod it started).
    let (deployments, pods) = api.wait_until(|v| Some(world(v)), WAIT).await.expect("a view");
    let mut expected_deployments = before.0.clone();
    for d in &mut expected_deployments {
        if d.0 == "\"media\"/\"comfyui\"" {
            d.1 = json!(3);
        }
    }
    assert_eq!(deployments, expected_deployments, "no co-tenant was scaled or marked");
    assert_eq!(
        pods.len(),
        before.1.len() + 1,
        "only the scale-up's pod was added: {pods:?}"
    );
    assert!(
        before.1.iter().all(|p| pods.contains(p)),
        "no pod was deleted: {pods:?}"
    );
    let vidi_pods = api
        .list(&Gvr::pods(), None)
        .into_iter()
        .filter(|p| !p["metadata"]["labels"]["vidi.dev/job"].is_null())
        .count();
    assert_eq!(vidi_pods, 0, "no Vidi pod was created: {pods:?}");

    // The operator's own calls: reads only.
    let writes: Vec<String> = api
        .access_records()
        .into_iter()
        .filter(|r| r.is_write())
        .map(|r| r.to_string())
        .collect();
    assert!(writes.is_empty(), "a dry run wrote: {writes:?}");
}
