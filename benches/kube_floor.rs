//! The floor under the controller's CPU per job lifecycle: what kube-rs itself (client, watcher,
//! reflector, Event recorder; the crates the operator is built on) costs per request and per
//! watched change on this machine, with no planning, no indexes and no mappers.
//!
//! One client thread runs a current-thread tokio runtime, as `vidi-operator run` does; the API
//! stand-in runs on other threads. The client thread's own CPU time (`/proc/thread-self/schedstat`,
//! nanoseconds) is measured around:
//! 1. `patch`: a merge patch of one Deployment through `Api::patch`, awaited until the watch has
//!    put the new version into a reflector store (one request, one decoded watch event: what each
//!    co-tenant write, status write or pod creation costs the operator at least);
//! 2. `event`: one Event published through kube-runtime's `Recorder` (a request, no watch);
//! 3. `watched`: a change made by someone else (the stand-in itself), seen by the watch only.
//!
//! `cargo bench --bench kube_floor`. `benches/controller.rs` prints how many of each a lifecycle
//! takes; their sum at these prices is the least CPU a lifecycle can cost with these crates.
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube_standin::{Gvr, Standin};
use serde_json::json;

const NS: &str = "floor";
const N: u64 = 2000;

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("kube floor benchmark: run it with `cargo bench --bench kube_floor`");
        return;
    }
    let server = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("tokio runtime: {e}"),
    };
    let api = server.block_on(Standin::start());
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    };
    let setup = || -> Result<(), kube_standin::ApiError> {
        api.create_namespace(NS)?;
        api.create(&Gvr::deployments(), NS, deployment("mine"))?;
        api.create(&Gvr::deployments(), NS, deployment("theirs"))?;
        Ok(())
    };
    if let Err(e) = setup() {
        panic!("setting up: {e:?}");
    }
    let client_thread = std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("tokio runtime: {e}"),
        };
        rt.block_on(measure(api))
    });
    let (patch, event, watched) = match client_thread.join() {
        Ok(r) => r,
        Err(_) => panic!("the client thread panicked"),
    };
    println!();
    println!("kube-rs floor on this machine (client thread CPU, {N} of each):");
    println!("  patch + its watch event into a store   {:>8.1} µs", patch);
    println!("  Event published (Recorder)             {:>8.1} µs", event);
    println!("  someone else's change, watched          {:>8.1} µs", watched);
}

fn per(ns: u64) -> f64 {
    ns as f64 / N as f64 / 1000.0
}

async fn measure(api: Standin) -> (f64, f64, f64) {
    let client = api.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let (store, writer) = reflector::store();
    // As the operator's caches do: a counter bumped after each change the store applied.
    let (applied, _) = tokio::sync::watch::channel(0u64);
    let applied = std::sync::Arc::new(applied);
    let bump = applied.clone();
    let watch = reflector::reflector(writer, watcher(deployments.clone(), watcher::Config::default()))
        .applied_objects()
        .for_each(move |_| {
            bump.send_modify(|n| *n += 1);
            futures::future::ready(())
        });
    tokio::spawn(watch);
    if store.wait_until_ready().await.is_err() {
        panic!("the watch never listed");
    }
    let version = |name: &str| {
        store
            .get(&ObjectRef::new(name).within(NS))
            .and_then(|d| d.metadata.resource_version.clone())
    };
    let seen_after = |name: &'static str, before: Option<String>| {
        let store = store.clone();
        let mut changed = applied.subscribe();
        async move {
            loop {
                let now = store
                    .get(&ObjectRef::new(name).within(NS))
                    .and_then(|d| d.metadata.resource_version.clone());
                if now != before {
                    return;
                }
                match tokio::time::timeout(Duration::from_secs(10), changed.changed()).await {
                    Ok(Ok(())) => {}
                    _ => panic!("the watch never showed the change of {name}"),
                }
            }
        }
    };

    // 1. Our own patches, each awaited until the watch has it.
    let params = PatchParams::default();
    let mut patch_ns = 0;
    for i in 0..N + 100 {
        let before = version("mine");
        let start = thread_cpu_ns();
        let patch = json!({"metadata": {"annotations": {"vidi.dev/n": i.to_string()}}});
        if let Err(e) = deployments.patch("mine", &params, &Patch::Merge(&patch)).await {
            panic!("patch: {e}");
        }
        seen_after("mine", before).await;
        if i >= 100 {
            patch_ns += thread_cpu_ns() - start;
        }
    }

    // 2. Events through kube-runtime's Recorder, each about a different object (no folding).
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kube-floor".into(),
            instance: None,
        },
    );
    let mut event_ns = 0;
    for i in 0..N {
        let about = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(format!("d-{i}")),
            namespace: Some(NS.into()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "Measured".into(),
            note: Some(format!("event {i}")),
            action: "Measure".into(),
            secondary: None,
        };
        let start = thread_cpu_ns();
        if let Err(e) = recorder.publish(&event, &about).await {
            panic!("event: {e}");
        }
        event_ns += thread_cpu_ns() - start;
    }

    // 3. Changes someone else makes: only the watch works.
    let mut watched_ns = 0;
    for i in 0..N {
        let before = version("theirs");
        let patch = json!({"metadata": {"annotations": {"vidi.dev/n": i.to_string()}}});
        // The stand-in's write runs on this thread (it is a function call): measured from its
        // return, when the change waits in the stand-in for the watch to carry it.
        if let Err(e) = api.patch_as("someone", &Gvr::deployments(), NS, "theirs", patch) {
            panic!("stand-in patch: {e:?}");
        }
        let start = thread_cpu_ns();
        seen_after("theirs", before).await;
        watched_ns += thread_cpu_ns() - start;
    }
    (per(patch_ns), per(event_ns), per(watched_ns))
}
