//! The workload controller and the kubelet simulators.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_standin::{Gvr, InitOutcome, PodOutcome};
use serde_json::{Value, json};
use std::time::Duration;

fn workload(kind: &str, name: &str, replicas: i32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "labels": {"vidi.dev/yield-gpu": "true"}},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "main", "image": "cosyvoice"}]}}}})
}

fn pods_of(v: &kube_standin::View<'_>, app: &str) -> Vec<Value> {
    v.list(&Gvr::pods(), Some("ns"))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_scales_with_termination_delay() {
    let api = standin().await;
    let deps: Api<Deployment> = Api::namespaced(api.client(), "ns");
    deps.create(
        &PostParams::default(),
        &serde_json::from_value(workload("Deployment", "tts", 2)).unwrap(),
    )
    .await
    .unwrap();
    api.wait_for(
        |v| {
            let d = v.get(&Gvr::deployments(), "ns", "tts").unwrap();
            pods_of(v, "tts")
                .iter()
                .filter(|p| p["status"]["phase"] == "Running")
                .count()
                == 2
                && d["status"]["readyReplicas"] == 2
                && d["status"]["observedGeneration"] == 1
        },
        T,
    )
    .await
    .unwrap();
    let p = &api.list(&Gvr::pods(), Some("ns"))[0];
    assert_eq!(p["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(p["metadata"]["ownerReferences"][0]["controller"], true);

    let delay = Duration::from_millis(300);
    api.set_pod_termination(delay);
    // Follow the pods through a watch from before the scale-down, so no state is missed.
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    let rv = api.resource_version().to_string();
    let mut events = pods
        .watch(&WatchParams::default().labels("app=tts"), &rv)
        .await
        .unwrap()
        .boxed();
    let scaled_at = tokio::time::Instant::now();
    deps.patch(
        "tts",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    let mut terminating = std::collections::HashSet::new();
    let mut deleted = 0;
    while deleted < 2 {
        let ev = tokio::time::timeout(T, events.try_next())
            .await
            .expect("pod events")
            .unwrap()
            .expect("stream open");
        match ev {
            WatchEvent::Modified(p) if p.metadata.deletion_timestamp.is_some() => {
                terminating.insert(p.metadata.name.unwrap());
            }
            WatchEvent::Deleted(p) => {
                let name = p.metadata.name.unwrap();
                assert!(terminating.contains(&name), "{name} terminating before gone");
                assert!(scaled_at.elapsed() >= delay, "gone only after the termination delay");
                deleted += 1;
            }
            _ => {}
        }
    }
    let d = api.get(&Gvr::deployments(), "ns", "tts").unwrap();
    assert_eq!(d["status"]["replicas"], 0);
    assert_eq!(d["status"]["observedGeneration"], 2);

    deps.patch(
        "tts",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    api.wait_for(
        |v| {
            pods_of(v, "tts").len() == 1
                && v.get(&Gvr::deployments(), "ns", "tts").unwrap()["status"]["readyReplicas"] == 1
        },
        T,
    )
    .await
    .unwrap();

    // Deleting the Deployment garbage-collects its pods.
    api.delete(&Gvr::deployments(), "ns", "tts").unwrap();
    api.wait_for(|v| pods_of(v, "tts").is_empty(), T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_uses_ordinals() {
    let api = standin().await;
    let sts: Api<StatefulSet> = Api::namespaced(api.client(), "ns");
    sts.create(
        &PostParams::default(),
        &serde_json::from_value(workload("StatefulSet", "comfy", 3)).unwrap(),
    )
    .await
    .unwrap();
    api.wait_for(
        |v| v.get(&Gvr::statefulsets(), "ns", "comfy").unwrap()["status"]["readyReplicas"] == 3,
        T,
    )
    .await
    .unwrap();
    sts.patch(
        "comfy",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    api.wait_for(
        |v| {
            let mut names: Vec<String> = pods_of(v, "comfy")
                .iter()
                .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
                .collect();
            names.sort();
            names == ["comfy-0"]
        },
        T,
    )
    .await
    .unwrap();
}

fn phase_of(api: &kube_standin::Standin, name: &str) -> impl FnMut(&kube_standin::View<'_>) -> Option<Value> {
    let _ = api;
    let name = name.to_string();
    move |v| {
        let p = v.get(&Gvr::pods(), "ns", &name)?;
        matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")).then_some(p)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_finishes_job_pods() {
    let api = standin().await;
    let kubelet = api.kubelet();
    kubelet.outcome_for(
        "ns",
        "oom",
        PodOutcome::exit(3)
            .with_reason("OOMKilled")
            .with_message("CUDA out of memory"),
    );
    kubelet.on_pod(|p| {
        (p["metadata"]["labels"]["role"] == "vidi")
            .then(|| PodOutcome::succeed().with_message(r#"{"segments":[[1,2]]}"#))
    });
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod("oom", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let p = api.wait_until(phase_of(&api, "oom"), T).await.unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(p["spec"]["nodeName"], kube_standin::DEFAULT_NODE);
    let t = &p["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(t["exitCode"], 3);
    assert_eq!(t["reason"], "OOMKilled");
    assert_eq!(t["message"], "CUDA out of memory");

    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod("ok", json!({"role": "vidi"}))).unwrap(),
    )
    .await
    .unwrap();
    let p = api.wait_until(phase_of(&api, "ok"), T).await.unwrap();
    assert_eq!(p["status"]["phase"], "Succeeded");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    // Typed view parses.
    let typed = pods.get("ok").await.unwrap();
    assert_eq!(typed.status.unwrap().phase.as_deref(), Some("Succeeded"));

    // A pod without an outcome keeps running until finished by hand.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod("manual", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "manual")
                .is_some_and(|p| p["status"]["phase"] == "Running")
        },
        T,
    )
    .await
    .unwrap();
    kubelet
        .finish("ns", "manual", PodOutcome::exit(2).with_message("bad input"))
        .unwrap();
    let p = api.get(&Gvr::pods(), "ns", "manual").unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_init_failures_and_deadlines() {
    let api = standin().await;
    let kubelet = api.kubelet();
    let mut with_init = pod("init", json!({}));
    with_init["spec"]["initContainers"] = json!([{"name": "fetch", "image": "x"}, {"name": "prep", "image": "y"}]);
    kubelet.outcome_for(
        "ns",
        "init",
        PodOutcome::succeed()
            .with_init(InitOutcome::exit(0, None))
            .with_init(InitOutcome::exit(1, Some("no weights"))),
    );
    api.create(&Gvr::pods(), "ns", with_init).unwrap();
    let p = api.wait_until(phase_of(&api, "init"), T).await.unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(
        p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    assert_eq!(
        p["status"]["initContainerStatuses"][1]["state"]["terminated"]["message"],
        "no weights"
    );
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "PodInitializing"
    );

    let mut slow = pod("slow", json!({}));
    slow["spec"]["activeDeadlineSeconds"] = json!(1);
    kubelet.outcome_for("ns", "slow", PodOutcome::succeed().after(Duration::from_secs(60)));
    api.create(&Gvr::pods(), "ns", slow).unwrap();
    let p = api.wait_until(phase_of(&api, "slow"), T).await.unwrap();
    assert_eq!(p["status"]["phase"], "Failed");
    assert_eq!(p["status"]["reason"], "DeadlineExceeded");

    // Node selection by nodeSelector; no fitting node leaves the pod Pending.
    kubelet.add_node("gpu-1", &[("gpu", "4090")]);
    let mut gpu = pod("gpu", json!({}));
    gpu["spec"]["nodeSelector"] = json!({"gpu": "4090"});
    api.create(&Gvr::pods(), "ns", gpu).unwrap();
    let mut nowhere = pod("nowhere", json!({}));
    nowhere["spec"]["nodeSelector"] = json!({"gpu": "h100"});
    api.create(&Gvr::pods(), "ns", nowhere).unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "gpu")
                .is_some_and(|p| p["spec"]["nodeName"] == "gpu-1" && p["status"]["phase"] == "Running")
        },
        T,
    )
    .await
    .unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "nowhere")
                .is_some_and(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
        },
        T,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_leaves_pods_set_up_as_running_alone() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<kube_standin::Standin>();
    let api = standin().await;
    let mut p = pod("cotenant", json!({"app": "comfy"}));
    p["status"] = json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z"});
    api.create_with_status(&Gvr::pods(), "ns", p).unwrap();
    // A later pod is admitted; by then the kubelet has passed over the first one.
    api.create(&Gvr::pods(), "ns", pod("job", json!({}))).unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "job")
                .is_some_and(|p| p["status"]["phase"] == "Running")
        },
        T,
    )
    .await
    .unwrap();
    let p = api.get(&Gvr::pods(), "ns", "cotenant").unwrap();
    assert_eq!(p["status"]["startTime"], "2026-01-01T00:00:00Z");
    assert!(p["spec"].get("nodeName").is_none());
}

/// The simulators look only at what was written since their last pass; when the history no
/// longer reaches back (compaction, a short history), or after being switched off and on, they
/// look at everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulators_catch_up_after_compaction_and_toggles() {
    let api = standin().await;
    let running = |v: &kube_standin::View<'_>, app: &str| {
        pods_of(v, app)
            .iter()
            .filter(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
            .count()
    };
    api.create(&Gvr::deployments(), "ns", workload("Deployment", "tts", 1))
        .unwrap();
    api.wait_for(|v| running(v, "tts") == 1, T).await.unwrap();

    // Off: a scale-up waits; back on, the pass sees it although nothing is written meanwhile.
    api.set_workloads_enabled(false);
    api.patch_json(&Gvr::deployments(), "ns", "tts", json!({"spec": {"replicas": 2}}))
        .unwrap();
    api.set_history_limit(1);
    api.set_workloads_enabled(true);
    api.wait_for(|v| running(v, "tts") == 2, T).await.unwrap();

    // Kubelet off while a job pod is created, history compacted, kubelet on: the pod runs.
    api.kubelet().set_enabled(false);
    api.create(&Gvr::pods(), "ns", pod("job", json!({}))).unwrap();
    api.compact();
    api.kubelet().set_enabled(true);
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "job")
                .is_some_and(|p| p["status"]["phase"] != "Pending")
        },
        T,
    )
    .await
    .unwrap();

    // A short history: a write the pass never saw in the history still gets handled.
    api.set_history_limit(1);
    api.patch_json(&Gvr::deployments(), "ns", "tts", json!({"spec": {"replicas": 0}}))
        .unwrap();
    api.wait_for(|v| running(v, "tts") == 0, T).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_nodes_spread_replicas_pin_by_affinity_and_scale_down_by_deletion_cost() {
    let api = standin().await;
    let kubelet = api.kubelet();
    for n in ["gpu-1", "gpu-2", "gpu-3"] {
        kubelet.add_gpu_node(n, &[("pool", "a")], 24576).unwrap();
    }
    let node = api.get(&Gvr::nodes(), "", "gpu-2").unwrap();
    assert_eq!(node["metadata"]["labels"]["nvidia.com/gpu.memory"], "24576");
    assert_eq!(node["status"]["allocatable"]["nvidia.com/gpu"], "1");

    // Three replicas: one per node.
    api.create(&Gvr::deployments(), "ns", workload("Deployment", "tts", 3))
        .unwrap();
    let nodes_of = |v: &kube_standin::View<'_>| {
        let mut n: Vec<String> = pods_of(v, "tts")
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| p["spec"]["nodeName"].as_str().unwrap_or_default().to_string())
            .collect();
        n.sort();
        n
    };
    api.wait_for(|v| nodes_of(v) == ["gpu-1", "gpu-2", "gpu-3"], T)
        .await
        .unwrap();

    // The pod a plain scale-down would keep longest (all are equally new: the highest name goes
    // first) gets the lowest deletion cost: a scale-down by one removes it instead.
    let (keep_by_default, node) = api
        .wait_until(
            |v| {
                pods_of(v, "tts")
                    .into_iter()
                    .map(|p| {
                        (
                            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                            p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .min()
            },
            T,
        )
        .await
        .unwrap();
    api.patch_json(
        &Gvr::pods(),
        "ns",
        &keep_by_default,
        json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000"}}}),
    )
    .unwrap();
    api.patch_json(&Gvr::deployments(), "ns", "tts", json!({"spec": {"replicas": 2}}))
        .unwrap();
    api.wait_for(
        |v| {
            let left = nodes_of(v);
            left.len() == 2 && !left.contains(&node)
        },
        T,
    )
    .await
    .unwrap();
    assert!(
        api.get(&Gvr::pods(), "ns", &keep_by_default)
            .is_none_or(|p| !p["metadata"]["deletionTimestamp"].is_null())
    );

    // A pod pinned by required node affinity on the node's name lands there.
    let mut pinned = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned"},
        "spec": {"containers": [{"name": "main", "image": "vidi"}],
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                     {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-3"]}]}]}}}}});
    api.create(&Gvr::pods(), "ns", pinned.clone()).unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "pinned")
                .is_some_and(|p| p["spec"]["nodeName"] == "gpu-3")
        },
        T,
    )
    .await
    .unwrap();
    // No node of that name: unschedulable.
    pinned["metadata"]["name"] = json!("nowhere");
    pinned["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchFields"][0]["values"] = json!(["gpu-9"]);
    api.create(&Gvr::pods(), "ns", pinned).unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::pods(), "ns", "nowhere")
                .is_some_and(|p| p["status"]["conditions"][0]["reason"] == "Unschedulable")
        },
        T,
    )
    .await
    .unwrap();
}
