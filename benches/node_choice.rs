//! Co-tenant replica-seconds suspended per job, before and after node choice (issue 9): not a
//! timing benchmark, a measure of disruption. The real controller runs in-process against the API
//! stand-in; the numbers come from the stand-in's write history (`Standin::changes_since`): for
//! every co-tenant Deployment, the integral over time of (its replicas before the jobs − its
//! `spec.replicas`), summed, divided by the number of jobs.
//!
//! Scene: 3 GPU nodes of 24 GiB (`nvidia.com/gpu.memory: 24576`), co-tenants spread over them:
//! - `tts`: 3 replicas, one per node, 4 GiB each (`vidi.dev/gpu-memory: 4Gi`), priority 1;
//! - `comfy`: 1 replica on gpu-1, 512 MiB, priority 1;
//! - `embed`: 1 replica on gpu-2, 6 GiB, priority 2;
//! - `llm`: 1 replica on gpu-3, 12 GiB, priority 3.
//!
//! `JOBS` VidiJobs (fp16: 20 GiB needed) are created at once and run one at a time; each Vidi pod
//! runs `VIDI_RUN`. Three runs of the same scene:
//! 1. before: main's behaviour, `policy: All`, no Node objects (no node choice): every selected
//!    co-tenant is scaled to 0 for every job;
//! 2. node choice, `policy: All`: the cheapest node's co-tenants yield, only their replicas there;
//! 3. node choice, `policy: Minimal`: on that node, only what makes room.
//!
//! `cargo bench --bench node_choice`; JSON in `target/bench-node-choice.json`.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::CustomResourceExt;
use kube_standin::{Gvr, PodOutcome, Standin};
use serde_json::{Value, json};
use vidi_operator::api::VidiJob;
use vidi_operator::kube::{PodDefaults, Scope, Settings};
use vidi_operator::telemetry::{Health, Metrics};

const NS: &str = "media";
const JOBS: usize = 5;
const VIDI_RUN: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(120);
const NODES: [&str; 3] = ["gpu-1", "gpu-2", "gpu-3"];
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600}"#;

/// (name, replicas, GPU memory per replica, yield priority, pinned node)
const CO_TENANTS: [(&str, i64, &str, u32, Option<&str>); 4] = [
    ("tts", 3, "4Gi", 1, None),
    ("comfy", 1, "512Mi", 1, Some("gpu-1")),
    ("embed", 1, "6Gi", 2, Some("gpu-2")),
    ("llm", 1, "12Gi", 3, Some("gpu-3")),
];

#[derive(Clone, Copy, Debug)]
enum Run {
    Before,
    NodesAll,
    NodesMinimal,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Before => "before: policy All, whole scale-down, no node choice",
            Run::NodesAll => "after: node choice, per-node replicas, policy All",
            Run::NodesMinimal => "after: node choice, per-node replicas, policy Minimal",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Run::Before => "before",
            Run::NodesAll => "node_choice_all",
            Run::NodesMinimal => "node_choice_minimal",
        }
    }
}

fn deployment(name: &str, replicas: i64, memory: &str, priority: u32, node: Option<&str>) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name, "vidi.dev/yield-gpu": "true"},
                     "annotations": {"vidi.dev/gpu-memory": memory, "vidi.dev/yield-priority": priority.to_string()}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": name}]}}
        }
    });
    if let Some(n) = node {
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    d
}

fn job(name: &str, policy: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": {
        "video": {"volume": {"claimName": "videos", "path": "talk.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}, "precision": "fp16"},
        "coTenants": {"policy": policy},
    }})
}

struct Measured {
    replica_seconds: f64,
    per_job: f64,
    pods_deleted: usize,
    co_tenant_writes: usize,
    wall: Duration,
}

async fn run(which: Run) -> Measured {
    let api = Standin::start().await;
    api.register_crd(&VidiJob::crd()).expect("CRD");
    api.create_namespace(NS).expect("namespace");
    for claim in ["videos", "weights"] {
        api.create(
            &Gvr::pvcs(),
            NS,
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim}}),
        )
        .expect("claim");
    }
    for n in NODES {
        match which {
            // Before: the scheduler's nodes exist, but no Node object tells the operator about them.
            Run::Before => api.kubelet().add_node(n, &[("kubernetes.io/hostname", n)]),
            Run::NodesAll | Run::NodesMinimal => {
                api.kubelet().add_gpu_node(n, &[], 24576).expect("node");
            }
        }
    }
    api.kubelet()
        .on_pod(|_| Some(PodOutcome::succeed().with_message(RESULT).after(VIDI_RUN)));
    for (name, replicas, memory, priority, node) in CO_TENANTS {
        api.create(
            &Gvr::deployments(),
            NS,
            deployment(name, replicas, memory, priority, node),
        )
        .expect("deployment");
    }
    let total: i64 = CO_TENANTS.iter().map(|c| c.1).sum();
    api.wait_for(
        |v| {
            v.list(&Gvr::pods(), Some(NS))
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count() as i64
                == total
        },
        TIMEOUT,
    )
    .await
    .expect("co-tenants running");

    let settings = Settings {
        scope: Scope::All,
        dry_run: false,
        pods: PodDefaults {
            vidi_image: "vidi:bench".into(),
            gate_image: "vidi-operator:bench".into(),
            gate_timeout: Duration::from_secs(60),
        },
        instance: "bench".into(),
    };
    let client = api.client();
    let operator = tokio::spawn(async move {
        let _ = vidi_operator::kube::run(
            client,
            settings,
            Metrics::default(),
            Health::default(),
            Arc::default(),
            std::future::pending(),
        )
        .await;
    });

    let rv0 = api.resource_version();
    let started = Instant::now();
    let policy = match which {
        Run::NodesMinimal => "Minimal",
        _ => "All",
    };
    for i in 0..JOBS {
        api.create(&Gvr::vidijobs(), NS, job(&format!("job-{i}"), policy))
            .expect("job");
    }
    let baseline: BTreeMap<&str, i64> = CO_TENANTS.iter().map(|c| (c.0, c.1)).collect();
    api.wait_for(
        |v| {
            let done = (0..JOBS).all(|i| {
                v.get(&Gvr::vidijobs(), NS, &format!("job-{i}"))
                    .is_some_and(|j| j["status"]["phase"] == "Succeeded")
            });
            let restored = baseline.iter().all(|(name, r)| {
                v.get(&Gvr::deployments(), NS, name)
                    .is_some_and(|d| d["spec"]["replicas"].as_i64() == Some(*r))
            });
            done && restored
        },
        TIMEOUT,
    )
    .await
    .expect("every job succeeded and every co-tenant is back");
    let wall = started.elapsed();
    operator.abort();

    // Integrate (baseline − spec.replicas) over each co-tenant's write history.
    let changes = api.changes_since(rv0);
    let mut current: BTreeMap<String, (i64, Instant)> = BTreeMap::new();
    let mut replica_seconds = 0.0;
    let mut pods_deleted = 0;
    for c in &changes {
        if c.resource == "pods" && c.event == "DELETED" && c.object["metadata"]["labels"]["app"].is_string() {
            pods_deleted += 1;
        }
        if c.resource != "deployments" {
            continue;
        }
        let name = c.name().to_string();
        let Some(base) = baseline.get(name.as_str()) else {
            continue;
        };
        let replicas = c.object["spec"]["replicas"].as_i64().unwrap_or(*base);
        if let Some((before, since)) = current.get(&name) {
            replica_seconds += (base - before).max(0) as f64 * c.at.duration_since(*since).as_secs_f64();
        }
        current.insert(name, (replicas, c.at));
    }
    let co_tenant_writes = api
        .access_records()
        .iter()
        .filter(|r| r.is_accepted_write())
        .filter(|r| r.access.resource == "deployments" || (r.access.resource == "pods" && r.access.verb == "patch"))
        .count();
    Measured {
        replica_seconds,
        per_job: replica_seconds / JOBS as f64,
        pods_deleted,
        co_tenant_writes,
        wall,
    }
}

fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let mut report = serde_json::Map::new();
    println!(
        "scene: 3 GPU nodes (24 GiB), co-tenants tts 3x4Gi (spread), comfy 512Mi@gpu-1, embed 6Gi@gpu-2 (priority 2), llm 12Gi@gpu-3 (priority 3); {JOBS} jobs at fp16 (20 GiB), Vidi runs {VIDI_RUN:?} each"
    );
    for which in [Run::Before, Run::NodesAll, Run::NodesMinimal] {
        let m = runtime.block_on(run(which));
        println!(
            "{:<58} {:>7.2} replica-s per job ({:.2} total), {} co-tenant pods deleted, {} co-tenant writes, {:.1}s wall",
            which.name(),
            m.per_job,
            m.replica_seconds,
            m.pods_deleted,
            m.co_tenant_writes,
            m.wall.as_secs_f64()
        );
        report.insert(
            which.key().into(),
            json!({
                "replicaSecondsPerJob": m.per_job,
                "replicaSecondsTotal": m.replica_seconds,
                "coTenantPodsDeleted": m.pods_deleted,
                "coTenantWrites": m.co_tenant_writes,
                "wallSeconds": m.wall.as_secs_f64(),
                "jobs": JOBS,
                "vidiRunSeconds": VIDI_RUN.as_secs_f64(),
            }),
        );
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-node-choice.json");
    if let Err(e) = std::fs::write(&path, Value::Object(report).to_string()) {
        eprintln!("could not write {}: {e}", path.display());
    }
}
