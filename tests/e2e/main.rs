//! End-to-end: the operator binary against the real cluster in `KUBECONFIG`.
//!
//! Needs a real cluster, so every test is `#[ignore]`d with the reason; run them with
//! `VIDI_E2E=1 KUBECONFIG=… cargo test --test e2e -- --ignored`. Asked to run without
//! `VIDI_E2E=1`, a test fails saying why: it never passes without having run. Each scenario gets its own namespace (deleted at the end) and its own
//! operator process watching only that namespace. How to run it on kind or k3d, and the
//! `VIDI_E2E_*` settings: docs/testing.md, "End-to-end suite against a real cluster".
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};
use vidi_operator::api::VidiJob;
use vidi_operator::kube::pod::{GATE_CONTAINER, VIDI_CONTAINER};

/// How long one expectation may take on a real cluster (image pulls, pod start-up).
const WAIT: Duration = Duration::from_secs(300);
const STUB_IMAGE: &str = "vidi-e2e/stub:0.1";
/// The co-tenants every scenario starts with: (name, replicas).
const CO_TENANTS: [(&str, i32); 2] = [("tts", 1), ("comfy", 2)];

/// The suite's settings, from the environment.
#[derive(Clone, Debug)]
struct Config {
    vidi_image: String,
    gate_image: String,
    cotenant_image: String,
    gpu_resource: String,
    /// Complete the Vidi pod by patching its status (clusters that cannot run it).
    complete_pods: bool,
}

impl Config {
    /// The settings, or why the suite is skipped.
    fn from_env() -> Result<Self, String> {
        let var = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
        if std::env::var("VIDI_E2E").as_deref() != Ok("1") {
            return Err("VIDI_E2E=1 is not set (see docs/testing.md to run against kind or k3d)".into());
        }
        if std::env::var_os("KUBECONFIG").is_none() {
            return Err("KUBECONFIG is not set; it must name the test cluster explicitly".into());
        }
        Ok(Config {
            vidi_image: var("VIDI_E2E_VIDI_IMAGE", STUB_IMAGE),
            gate_image: var("VIDI_E2E_GATE_IMAGE", STUB_IMAGE),
            cotenant_image: var("VIDI_E2E_COTENANT_IMAGE", "registry.k8s.io/pause:3.10"),
            gpu_resource: var("VIDI_E2E_GPU_RESOURCE", "nvidia.com/gpu"),
            complete_pods: std::env::var("VIDI_E2E_COMPLETE_PODS").as_deref() == Ok("1"),
        })
    }
}

/// Scenarios share the cluster's GPU (and the CRD): one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One scenario's world: a namespace with co-tenants, an operator watching it, and a record of
/// every state the co-tenants and pods went through. Dropping it deletes the jobs (while the
/// operator still runs, so it restores), stops the operator and deletes the namespace.
struct Suite {
    config: Config,
    client: Client,
    ns: String,
    operator: Child,
    log: std::path::PathBuf,
    seen: Arc<Mutex<Vec<Value>>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Suite {
    /// Sets up a scenario; fails (never passes) when no cluster is configured.
    async fn start(scenario: &str) -> Option<Suite> {
        let config = match Config::from_env() {
            Ok(c) => c,
            Err(why) => panic!("e2e {scenario} cannot run: {why}"),
        };
        let serial = SERIAL.lock().await;
        let client = Client::try_default().await.expect("a client for KUBECONFIG");
        apply_crd(&client).await;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let ns = format!("vidi-e2e-{scenario}-{}-{nanos:x}", std::process::id());
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns, "labels": {"vidi.dev/e2e": "true"}}}))
                    .expect("namespace"),
            )
            .await
            .expect("test namespace created");
        eprintln!("e2e {scenario}: namespace {ns}");

        let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
        let watches = vec![
            record(Api::<Deployment>::namespaced(client.clone(), &ns), seen.clone()),
            record(Api::<Pod>::namespaced(client.clone(), &ns), seen.clone()),
        ];
        let log = std::env::temp_dir().join(format!("{ns}.operator.log"));
        let operator = Command::new(env!("CARGO_BIN_EXE_vidi-operator"))
            .args(["run", &format!("--watch-namespaces={ns}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            .args(["--vidi-image", &config.vidi_image, "--gate-image", &config.gate_image])
            .args(["--gate-timeout", "60s"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("operator log file"))
            .spawn()
            .expect("the operator binary starts");
        eprintln!("e2e {scenario}: operator log {}", log.display());
        let suite = Suite {
            config,
            client,
            ns,
            operator,
            log,
            seen,
            watches,
            _serial: serial,
        };
        suite.setup().await;
        Some(suite)
    }

    /// The claim the job's weights come from, and the co-tenants, all running.
    async fn setup(&self) {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), &self.ns);
        let claim = json!({
            "metadata": {"name": "weights"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}}
        });
        claims
            .create(&PostParams::default(), &serde_json::from_value(claim).expect("claim"))
            .await
            .expect("weights claim created");
        let deployments = self.deployments();
        for (name, replicas) in CO_TENANTS {
            let d = json!({
                "metadata": {"name": name, "labels": {"app": name, "vidi.dev/yield-gpu": "true"}},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [{"name": name, "image": self.config.cotenant_image}]
                        }
                    }
                }
            });
            deployments
                .create(&PostParams::default(), &serde_json::from_value(d).expect("deployment"))
                .await
                .expect("co-tenant created");
        }
        // Only where pods really run: co-tenants are up before the job starts.
        if !self.config.complete_pods {
            for (name, replicas) in CO_TENANTS {
                self.until(&format!("{name} has {replicas} ready replicas"), || async move {
                    let d = self.deployments().get(name).await.ok()?;
                    (d.status?.ready_replicas.unwrap_or(0) == replicas).then_some(())
                })
                .await;
            }
        }
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn jobs(&self) -> Api<VidiJob> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies a VidiJob whose query tells the stub Vidi what to do (`exit=N`, `sleep=N`).
    async fn apply_job(&self, name: &str, query: &str) {
        let job = json!({
            "apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob",
            "metadata": {"name": name},
            "spec": {
                "video": {"url": "https://example.invalid/talks/keynote.mp4"},
                "query": query,
                "model": {"weights": {"claimName": "weights"}, "precision": "int8"},
                "gpu": {"resourceName": self.config.gpu_resource},
                "backoffLimit": 0,
            }
        });
        self.jobs()
            .create(&PostParams::default(), &serde_json::from_value(job).expect("job"))
            .await
            .expect("job created");
    }

    /// Waits until `check` returns Some, polling the cluster, or fails naming `what`.
    async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for: {what}\n{}", self.explain().await);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Every co-tenant was, at some point, scaled to 0 with the marks of `job`.
    async fn expect_held(&self, job: &str) {
        let holder = format!("{}/{job}", self.ns);
        for (name, replicas) in CO_TENANTS {
            let seen = self.seen.clone();
            let holder = holder.clone();
            self.until(&format!("{name} held by {holder}"), || {
                let found = seen.lock().is_ok_and(|s| {
                    s.iter().any(|o| {
                        let a = &o["metadata"]["annotations"];
                        o["kind"] == "Deployment"
                            && o["metadata"]["name"] == name
                            && o["spec"]["replicas"] == 0
                            && a["vidi.dev/held-by"] == holder.as_str()
                            && a["vidi.dev/original-replicas"] == replicas.to_string().as_str()
                    })
                });
                std::future::ready(found.then_some(()))
            })
            .await;
        }
    }

    /// The first Vidi pod of `job`, as created (checked against what the job asked for).
    async fn expect_vidi_pod(&self, job: &str) -> Value {
        let seen = self.seen.clone();
        let pod = self
            .until(&format!("a Vidi pod for {job}"), || {
                let pod = seen.lock().ok().and_then(|s| {
                    s.iter()
                        .find(|o| o["kind"] == "Pod" && o["metadata"]["labels"]["vidi.dev/job"] == job)
                        .cloned()
                });
                std::future::ready(pod)
            })
            .await;
        let spec = &pod["spec"];
        let vidi = &spec["containers"][0];
        assert_eq!(spec["restartPolicy"], "Never", "{pod}");
        assert_eq!(vidi["name"], VIDI_CONTAINER);
        assert_eq!(vidi["image"], self.config.vidi_image.as_str());
        assert_eq!(vidi["resources"]["limits"][&self.config.gpu_resource], "1", "{pod}");
        assert_eq!(spec["initContainers"][0]["name"], GATE_CONTAINER);
        assert_eq!(spec["initContainers"][0]["image"], self.config.gate_image.as_str());
        let env: BTreeMap<String, String> = vidi["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().into(),
                    e["value"].as_str().unwrap_or_default().into(),
                )
            })
            .collect();
        assert_eq!(env.get("HF_HUB_OFFLINE").map(String::as_str), Some("1"), "{env:?}");
        assert_eq!(env.get("VIDI_PRECISION").map(String::as_str), Some("int8"), "{env:?}");
        assert_eq!(
            env.get("VIDI_VIDEO").map(String::as_str),
            Some("https://example.invalid/talks/keynote.mp4")
        );
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "VidiJob");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["name"], job);
        pod
    }

    /// With VIDI_E2E_COMPLETE_PODS=1, finishes the Vidi pod of `job` as the kubelet would:
    /// the container exits with `exit_code` and leaves `message` as its termination message.
    async fn finish_pod(&self, job: &str, exit_code: i32, message: &str) {
        if !self.config.complete_pods {
            return;
        }
        let pod = self.expect_vidi_pod(job).await;
        let name = pod["metadata"]["name"].as_str().expect("pod name").to_string();
        let terminated = |code: i32, message: &str| {
            json!({"terminated": {
                "exitCode": code,
                "reason": if code == 0 { "Completed" } else { "Error" },
                "message": message,
            }})
        };
        let status = json!({"status": {
            "phase": if exit_code == 0 { "Succeeded" } else { "Failed" },
            "initContainerStatuses": [{
                "name": GATE_CONTAINER, "image": self.config.gate_image, "imageID": "",
                "ready": false, "restartCount": 0, "state": terminated(0, ""),
            }],
            "containerStatuses": [{
                "name": VIDI_CONTAINER, "image": self.config.vidi_image, "imageID": "",
                "ready": false, "restartCount": 0, "state": terminated(exit_code, message),
            }],
        }});
        self.pods()
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
            .await
            .expect("Vidi pod status patched");
    }

    async fn status(&self, job: &str) -> Value {
        match self.jobs().get_opt(job).await {
            Ok(Some(j)) => serde_json::to_value(j.status).unwrap_or_default(),
            _ => Value::Null,
        }
    }

    /// Waits for the job to end in `phase` and returns its status.
    async fn expect_phase(&self, job: &str, phase: &str) -> Value {
        self.until(&format!("{job} in phase {phase}"), || async move {
            let st = self.status(job).await;
            (st["phase"] == phase).then_some(st)
        })
        .await
    }

    /// Every co-tenant back at its original replicas, without marks.
    async fn expect_restored(&self) {
        for (name, replicas) in CO_TENANTS {
            self.until(&format!("{name} restored to {replicas}"), || async move {
                let d = self.deployments().get(name).await.ok()?;
                let marks = d.metadata.annotations.unwrap_or_default();
                let restored = d.spec.replicas == Some(replicas)
                    && !marks.contains_key("vidi.dev/held-by")
                    && !marks.contains_key("vidi.dev/original-replicas");
                restored.then_some(())
            })
            .await;
        }
    }

    /// What a failed expectation prints: jobs, co-tenants, pods and the operator's last words.
    async fn explain(&self) -> String {
        let mut out = String::new();
        if let Ok(jobs) = self.jobs().list(&ListParams::default()).await {
            for j in jobs {
                out += &format!(
                    "job {}: {}\n",
                    j.metadata.name.unwrap_or_default(),
                    serde_json::to_string(&j.status).unwrap_or_default()
                );
            }
        }
        if let Ok(ds) = self.deployments().list(&ListParams::default()).await {
            for d in ds {
                out += &format!(
                    "deployment {}: replicas={:?} annotations={:?}\n",
                    d.metadata.name.unwrap_or_default(),
                    d.spec.replicas,
                    d.metadata.annotations
                );
            }
        }
        if let Ok(pods) = self.pods().list(&ListParams::default()).await {
            for p in pods {
                out += &format!(
                    "pod {}: {:?}\n",
                    p.metadata.name.unwrap_or_default(),
                    p.status.and_then(|s| s.phase)
                );
            }
        }
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        out += "operator log (last lines):\n";
        for line in tail.into_iter().rev() {
            out += line;
            out.push('\n');
        }
        out
    }

    /// Deletes the jobs while the operator still runs (so their finalizer restores), then
    /// strips finalizers left over, so the namespace can go.
    async fn cleanup(&self) {
        let jobs = self.jobs();
        let _ = jobs
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            match jobs.list(&ListParams::default()).await {
                Ok(list) if list.items.is_empty() => return,
                Err(_) => return,
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        if let Ok(list) = jobs.list(&ListParams::default()).await {
            for j in list {
                let name = j.metadata.name.unwrap_or_default();
                eprintln!("e2e: job {name} still has finalizers after 60s; removing them");
                let _ = jobs
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await;
            }
        }
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: failed in namespace {}; operator log: {}",
                self.ns,
                self.log.display()
            );
        }
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(self.cleanup()));
        let _ = self.operator.kill();
        let _ = self.operator.wait();
        for w in &self.watches {
            w.abort();
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns = self.ns.clone();
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                if let Err(e) = namespaces.delete(&ns, &DeleteParams::background()).await {
                    eprintln!("e2e: could not delete namespace {ns}: {e}");
                }
            })
        });
    }
}

/// Creates or updates the VidiJob CRD from crds/vidijob.yaml and waits until it is Established.
async fn apply_crd(client: &Client) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/vidijob.yaml");
    let yaml = std::fs::read_to_string(path).expect("crds/vidijob.yaml");
    let crd: CustomResourceDefinition = serde_saphyr::from_str(&yaml).expect("crds/vidijob.yaml is a CRD");
    let name = crd.metadata.name.clone().expect("CRD name");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("vidi-operator-e2e").force();
    crds.patch(&name, &params, &Patch::Apply(&crd))
        .await
        .expect("CRD applied");
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .expect("CRD Established within 60s")
        .expect("CRD watch");
}

/// Records every state of `api`'s objects (as JSON with kind) into `seen`.
fn record<K>(api: Api<K>, seen: Arc<Mutex<Vec<Value>>>) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(next) = stream.next().await {
            if let Ok(obj) = next
                && let Ok(mut v) = serde_json::to_value(&obj)
            {
                v["kind"] = json!(K::kind(&()));
                if let Ok(mut s) = seen.lock() {
                    s.push(v);
                }
            }
        }
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

const RESULT: &str = r#"{"segments":[[65,72.5],[180,184]],"precision":"int8","videoSeconds":600,"peakVramBytes":0}"#;

// ----- scenarios: apply → expect -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: VIDI_E2E=1 KUBECONFIG=... cargo test --test e2e -- --ignored"]
async fn happy_path_suspends_runs_and_restores() {
    let Some(e2e) = Suite::start("happy").await else { return };
    e2e.apply_job("find", "a speaker holds up a phone").await;
    e2e.expect_held("find").await;
    e2e.expect_vidi_pod("find").await;
    e2e.finish_pod("find", 0, RESULT).await;
    let done = e2e.expect_phase("find", "Succeeded").await;
    assert_eq!(done["result"]["segments"].as_array().map(Vec::len), Some(2), "{done}");
    let complete = done["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Complete" && c["status"] == "True");
    assert!(complete, "kubectl wait --for=condition=Complete works: {done}");
    e2e.expect_restored().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: VIDI_E2E=1 KUBECONFIG=... cargo test --test e2e -- --ignored"]
async fn deleting_a_running_job_restores_the_co_tenants() {
    let Some(e2e) = Suite::start("delete").await else {
        return;
    };
    e2e.apply_job("long", "a speaker holds up a phone sleep=600").await;
    e2e.expect_held("long").await;
    let pod = e2e.expect_vidi_pod("long").await;
    if !e2e.config.complete_pods {
        e2e.expect_phase("long", "Running").await;
    }
    e2e.jobs()
        .delete("long", &DeleteParams::default())
        .await
        .expect("job deleted");
    e2e.until("the deleted job to go away", || async {
        matches!(e2e.jobs().get_opt("long").await, Ok(None)).then_some(())
    })
    .await;
    e2e.expect_restored().await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default().to_string();
    e2e.until("the Vidi pod to go away", || async {
        matches!(e2e.pods().get_opt(&pod_name).await, Ok(None)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: VIDI_E2E=1 KUBECONFIG=... cargo test --test e2e -- --ignored"]
async fn exit_2_fails_as_bad_input_and_restores() {
    let Some(e2e) = Suite::start("badinput").await else {
        return;
    };
    e2e.apply_job("bad", "a speaker holds up a phone exit=2").await;
    e2e.expect_held("bad").await;
    e2e.expect_vidi_pod("bad").await;
    e2e.finish_pod("bad", 2, "bad input: VIDI_VIDEO is not a video").await;
    let failed = e2e.expect_phase("bad", "Failed").await;
    assert_eq!(failed["reason"], "BadInput", "{failed}");
    assert_eq!(failed["attempts"], 1, "bad input is never retried: {failed}");
    e2e.expect_restored().await;
}
