//! The kube-rs floor, shared by `kube_floor` (on its own) and `controller` (measured after
//! the controller's run, so its CPU per lifecycle comes with the prices of the moment): what a
//! merge patch awaited through a watch, an Event through kube-runtime's `Recorder`, and someone
//! else's change seen by a watch cost the client thread, on one current-thread runtime as
//! `vidi-operator run` uses, with nothing of the operator's.
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

/// Client-thread CPU per item, in µs.
#[derive(Clone, Copy, Debug)]
pub struct Prices {
    /// A merge patch through `Api::patch`, awaited until its watch event is in a store.
    pub patch_us: f64,
    /// An Event published through `Recorder`.
    pub event_us: f64,
    /// A change made by someone else, until the watch has put it in the store.
    pub watched_us: f64,
}

impl Prices {
    /// The least CPU, in ms, of `echoed` writes that come back through a watch, `events`
    /// Events and `others` changes made by someone else.
    pub fn lifecycle_ms(&self, echoed: f64, events: f64, others: f64) -> f64 {
        (echoed * self.patch_us + events * self.event_us + others * self.watched_us) / 1000.0
    }
}

/// Measures `n` of each in namespace `ns` (created here, with two Deployments), on a thread of
/// its own; `api` keeps serving from the caller's runtime.
pub fn measure(api: &Standin, ns: &str, n: u64) -> Prices {
    let deployment = |name: &str| {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": ns},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})
    };
    let setup = || -> Result<(), kube_standin::ApiError> {
        api.create_namespace(ns)?;
        api.create(&Gvr::deployments(), ns, deployment("mine"))?;
        api.create(&Gvr::deployments(), ns, deployment("theirs"))?;
        Ok(())
    };
    if let Err(e) = setup() {
        panic!("setting up the floor's namespace {ns}: {e:?}");
    }
    std::thread::scope(|s| {
        let client_thread = s.spawn(|| {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => panic!("tokio runtime: {e}"),
            };
            rt.block_on(prices(api, ns, n))
        });
        match client_thread.join() {
            Ok(p) => p,
            Err(_) => panic!("the floor's client thread panicked"),
        }
    })
}

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn per(ns: u64, n: u64) -> f64 {
    ns as f64 / n as f64 / 1000.0
}

async fn prices(api: &Standin, ns: &str, n: u64) -> Prices {
    let client = api.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
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
            .get(&ObjectRef::new(name).within(ns))
            .and_then(|d| d.metadata.resource_version.clone())
    };
    let seen_after = |name: &'static str, before: Option<String>| {
        let store = store.clone();
        let mut changed = applied.subscribe();
        async move {
            loop {
                let now = store
                    .get(&ObjectRef::new(name).within(ns))
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
    for i in 0..n + 100 {
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
    for i in 0..n {
        let about = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some(format!("d-{i}")),
            namespace: Some(ns.into()),
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
    for i in 0..n {
        let before = version("theirs");
        let patch = json!({"metadata": {"annotations": {"vidi.dev/n": i.to_string()}}});
        // The stand-in's write runs on this thread (it is a function call): measured from its
        // return, when the change waits in the stand-in for the watch to carry it.
        if let Err(e) = api.patch_as("someone", &Gvr::deployments(), ns, "theirs", patch) {
            panic!("stand-in patch: {e:?}");
        }
        let start = thread_cpu_ns();
        seen_after("theirs", before).await;
        watched_ns += thread_cpu_ns() - start;
    }
    Prices {
        patch_us: per(patch_ns, n),
        event_us: per(event_ns, n),
        watched_us: per(watched_ns, n),
    }
}
