//! Node choice against the API stand-in: three GPU nodes labelled by GPU Feature Discovery
//! (24 GiB each), co-tenants spread over them, the real controller in-process.
use std::collections::BTreeMap;
use std::time::Duration;

mod kube_support;
use kube_standin::{Gvr, PodOutcome, Standin, View};
use kube_support::{NS, Operator, deployment, standin_with_claims};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);
const RESULT: &str = r#"{"segments":[[65,72]],"precision":"fp16","videoSeconds":600}"#;
const NODES: [&str; 3] = ["gpu-1", "gpu-2", "gpu-3"];

fn job(name: &str) -> Value {
    json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "metadata": {"name": name, "namespace": NS}, "spec": {
        "video": {"volume": {"claimName": "videos", "path": "talk.mp4"}},
        "query": "a speaker holds up a phone",
        "model": {"weights": {"claimName": "weights"}},
    }})
}

/// A stand-in with the three GPU nodes; Vidi pods keep running until finished by the test.
async fn three_nodes() -> Standin {
    let api = standin_with_claims(&["videos", "weights"]).await;
    for n in NODES {
        api.kubelet().add_gpu_node(n, &[], 24576).expect("node");
    }
    api.kubelet().on_pod(|_| None);
    api
}

/// A Deployment as `kube_support::deployment`, with `annotations` and its pods pinned to `node`.
fn deployment_with(name: &str, replicas: i32, annotations: Value, node: Option<&str>) -> Value {
    let mut d = deployment(name, NS, replicas, true);
    d["metadata"]["annotations"] = annotations;
    if let Some(n) = node {
        d["spec"]["template"]["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    d
}

fn statefulset(name: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": name, "vidi.dev/yield-gpu": "true"}},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": name, "image": name}]}}
        }
    })
}

/// Live (not terminating) pods of workload `app`: name → (node, uid).
fn pods_of(v: &View<'_>, app: &str) -> BTreeMap<String, (String, String)> {
    v.list(&Gvr::pods(), Some(NS))
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
                (
                    p["spec"]["nodeName"].as_str().unwrap_or_default().to_string(),
                    p["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

fn status(v: &View<'_>, name: &str) -> Value {
    v.get(&Gvr::vidijobs(), NS, name)
        .map(|j| j["status"].clone())
        .unwrap_or(Value::Null)
}

/// Everything a failed wait needs to explain itself.
fn dump(api: &Standin) -> String {
    let mut out = String::new();
    for j in api.list(&Gvr::vidijobs(), None) {
        out += &format!(
            "job {}: phase={} message={} nodeChoice={}\n",
            j["metadata"]["name"], j["status"]["phase"], j["status"]["message"], j["status"]["nodeChoice"]
        );
    }
    for gvr in [Gvr::deployments(), Gvr::statefulsets()] {
        for d in api.list(&gvr, None) {
            out += &format!(
                "{} {}: replicas={} annotations={}\n",
                d["kind"], d["metadata"]["name"], d["spec"]["replicas"], d["metadata"]["annotations"]
            );
        }
    }
    for p in api.list(&Gvr::pods(), None) {
        out += &format!(
            "pod {}: node={} phase={} deleting={} annotations={}\n",
            p["metadata"]["name"],
            p["spec"]["nodeName"],
            p["status"]["phase"],
            !p["metadata"]["deletionTimestamp"].is_null(),
            p["metadata"]["annotations"]
        );
    }
    out
}

async fn settle(api: &Standin, what: &str, cond: impl FnMut(&View<'_>) -> bool) {
    if api.wait_for(cond, WAIT).await.is_err() {
        panic!("timed out waiting for {what}\n{}", dump(api));
    }
}

/// The operator's writes to co-tenants (workloads and their pods), as `verb resource name`.
fn co_tenant_writes(api: &Standin) -> Vec<String> {
    api.access_records()
        .into_iter()
        .filter(|r| r.is_accepted_write())
        .filter(|r| {
            matches!(r.access.resource.as_str(), "deployments" | "statefulsets")
                || (r.access.resource == "pods" && r.access.verb == "patch")
        })
        .map(|r| format!("{} {} {}", r.access.verb, r.access.resource, r.name.unwrap_or_default()))
        .collect()
}

fn vidi_pod(v: &View<'_>, job: &str) -> Option<Value> {
    v.get(&Gvr::pods(), NS, &format!("{job}-vidi-1"))
}

/// Waits until `job`'s Vidi pod runs on `node`.
async fn running_on(api: &Standin, job: &str, node: &str) {
    settle(api, &format!("{job}'s Vidi pod running on {node}"), |v| {
        vidi_pod(v, job).is_some_and(|p| p["spec"]["nodeName"] == node && p["status"]["phase"] == "Running")
    })
    .await;
}

/// What the operator writes on workloads.
const OPERATOR_MARKS: [&str; 6] = [
    "vidi.dev/held-by",
    "vidi.dev/original-replicas",
    "vidi.dev/held-since",
    "vidi.dev/hold-node",
    "vidi.dev/removed-replicas",
    "vidi.dev/marked-pods",
];

/// No pod carries a pod-deletion-cost or a mark, and no workload a mark of the operator's.
fn nothing_left_behind(v: &View<'_>) -> bool {
    let pods_clean = v.list(&Gvr::pods(), Some(NS)).iter().all(|p| {
        let a = &p["metadata"]["annotations"];
        a.get("controller.kubernetes.io/pod-deletion-cost").is_none() && a.get("vidi.dev/marked-by").is_none()
    });
    let workloads_clean = [Gvr::deployments(), Gvr::statefulsets()].iter().all(|g| {
        v.list(g, Some(NS)).iter().all(|d| {
            d["metadata"]["annotations"]
                .as_object()
                .is_none_or(|a| !OPERATOR_MARKS.iter().any(|k| a.contains_key(*k)))
        })
    });
    pods_clean && workloads_clean
}

/// The scene of the node-hold tests: tts with one replica on each node, comfy with one on gpu-1,
/// precious (priority 5). gpu-1 costs 1 + 5, gpu-2 and gpu-3 cost 1 each: gpu-2 by name.
async fn tts_everywhere_and_comfy_on_gpu1() -> Standin {
    let api = three_nodes().await;
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 3, true))
        .unwrap();
    api.create(
        &Gvr::deployments(),
        NS,
        deployment_with("comfy", 1, json!({"vidi.dev/yield-priority": "5"}), Some("gpu-1")),
    )
    .unwrap();
    settle(&api, "tts on every node and comfy on gpu-1", |v| {
        pods_of(v, "tts").len() == 3 && pods_of(v, "comfy").len() == 1
    })
    .await;
    api
}

/// tts restored: 3 replicas, 3 live pods, no mark of the operator's anywhere.
fn tts_back_at_3(v: &View<'_>) -> bool {
    v.get(&Gvr::deployments(), NS, "tts")
        .is_some_and(|d| d["spec"]["replicas"] == 3)
        && nothing_left_behind(v)
        && pods_of(v, "tts").len() == 3
}

async fn finish_vidi(api: &Standin, job: &str) {
    api.kubelet()
        .finish(NS, &format!("{job}-vidi-1"), PodOutcome::succeed().with_message(RESULT))
        .expect("finish the Vidi pod");
    settle(api, "the job to succeed", |v| status(v, job)["phase"] == "Succeeded").await;
}

fn events(api: &Standin) -> Vec<(String, String)> {
    api.list(&Gvr::events(), Some(NS))
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_free_node_takes_the_job_without_a_single_write_to_a_co_tenant() {
    let api = three_nodes().await;
    // Two replicas spread over gpu-1 and gpu-2; gpu-3 is free.
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 2, true))
        .unwrap();
    settle(&api, "tts on gpu-1 and gpu-2", |v| {
        let nodes: Vec<String> = pods_of(v, "tts").into_values().map(|(n, _)| n).collect();
        nodes.len() == 2 && nodes.contains(&"gpu-1".into()) && nodes.contains(&"gpu-2".into())
    })
    .await;
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    running_on(&api, "a", "gpu-3").await;
    let pod = api.get(&Gvr::pods(), NS, "a-vidi-1").unwrap();
    assert_eq!(
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchFields"][0],
        json!({"key": "metadata.name", "operator": "In", "values": ["gpu-3"]})
    );
    let st = api.get(&Gvr::vidijobs(), NS, "a").unwrap()["status"].clone();
    assert_eq!(st["nodeChoice"]["node"], "gpu-3");
    assert!(
        st["nodeChoice"]["reason"]
            .as_str()
            .unwrap()
            .contains("nothing has to yield"),
        "{st}"
    );
    assert!(
        events(&api)
            .iter()
            .any(|(r, n)| r == "NodeChosen" && n.contains("gpu-3"))
    );
    finish_vidi(&api, "a").await;
    assert_eq!(co_tenant_writes(&api), Vec::<String>::new(), "{}", dump(&api));
    assert_eq!(api.get(&Gvr::deployments(), NS, "tts").unwrap()["spec"]["replicas"], 2);
}

#[tokio::test]
async fn only_the_chosen_nodes_replicas_go_and_restore_removes_every_annotation() {
    let api = tts_everywhere_and_comfy_on_gpu1().await;
    let before = api.wait_until(|v| Some(pods_of(v, "tts")), WAIT).await.unwrap();
    let comfy_before = api.wait_until(|v| Some(pods_of(v, "comfy")), WAIT).await.unwrap();
    let on = |node: &str| {
        before
            .iter()
            .find(|(_, (n, _))| n == node)
            .map(|(name, _)| name.clone())
            .unwrap()
    };
    let (gone, stays) = (on("gpu-2"), [on("gpu-1"), on("gpu-3")]);

    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    // gpu-1 costs 1 + 5, gpu-2 and gpu-3 cost 1 each: gpu-2 by name.
    running_on(&api, "a", "gpu-2").await;
    let d = api.get(&Gvr::deployments(), NS, "tts").unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    let a = &d["metadata"]["annotations"];
    assert_eq!(a["vidi.dev/held-by"], "media/a");
    assert_eq!(a["vidi.dev/original-replicas"], "3");
    assert_eq!(a["vidi.dev/hold-node"], "gpu-2");
    assert_eq!(a["vidi.dev/removed-replicas"], "1");
    assert_eq!(a["vidi.dev/marked-pods"], gone.as_str());
    let now = api.wait_until(|v| Some(pods_of(v, "tts")), WAIT).await.unwrap();
    for name in &stays {
        assert_eq!(now.get(name), before.get(name), "{name} keeps its uid\n{}", dump(&api));
    }
    assert!(!now.contains_key(&gone), "{gone} on gpu-2 is gone");
    assert_eq!(
        api.wait_until(|v| Some(pods_of(v, "comfy")), WAIT).await.unwrap(),
        comfy_before,
        "comfy untouched"
    );
    assert_eq!(
        api.get(&Gvr::deployments(), NS, "comfy").unwrap()["spec"]["replicas"],
        1
    );
    // Only the pod on gpu-2 was marked and only tts written (a reconcile planned again from a
    // lagging view may repeat the mark; the scale-down is guarded by its resourceVersion).
    let writes = co_tenant_writes(&api);
    let (mark, scale) = (format!("patch pods {gone}"), "patch deployments tts".to_string());
    assert!(writes.contains(&mark) && writes.contains(&scale), "{writes:?}");
    assert!(writes.iter().all(|w| *w == mark || *w == scale), "{writes:?}");

    finish_vidi(&api, "a").await;
    settle(&api, "tts back at 3 with nothing left behind", tts_back_at_3).await;
    let after = api.wait_until(|v| Some(pods_of(v, "tts")), WAIT).await.unwrap();
    for name in &stays {
        assert_eq!(
            after.get(name),
            before.get(name),
            "{name} kept its uid through the restore"
        );
    }
}

#[tokio::test]
async fn a_statefulset_loses_only_its_highest_ordinal_or_else_goes_whole_and_says_so() {
    // db-0 on gpu-1, db-1 on gpu-2, db-2 on gpu-3: gpu-3 holds its highest ordinal.
    let api = three_nodes().await;
    api.create(&Gvr::statefulsets(), NS, statefulset("db", 3)).unwrap();
    settle(&api, "db spread", |v| pods_of(v, "db").len() == 3).await;
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    running_on(&api, "a", "gpu-3").await;
    let s = api.get(&Gvr::statefulsets(), NS, "db").unwrap();
    assert_eq!(s["spec"]["replicas"], 2, "{}", dump(&api));
    assert_eq!(s["metadata"]["annotations"]["vidi.dev/hold-node"], "gpu-3");
    let left: Vec<String> = api
        .wait_until(|v| Some(pods_of(v, "db").into_keys().collect()), WAIT)
        .await
        .unwrap();
    assert_eq!(left, vec!["db-0".to_string(), "db-1".to_string()]);
    finish_vidi(&api, "a").await;
    settle(&api, "db back at 3", |v| {
        v.get(&Gvr::statefulsets(), NS, "db")
            .is_some_and(|s| s["spec"]["replicas"] == 3)
            && nothing_left_behind(v)
    })
    .await;

    // Now something precious pinned on gpu-3: the job goes to gpu-1, where db-0 is not db's
    // highest ordinal, so the StatefulSet yields whole, and the job says why.
    api.create(
        &Gvr::deployments(),
        NS,
        deployment_with("llm", 1, json!({"vidi.dev/yield-priority": "10"}), Some("gpu-3")),
    )
    .unwrap();
    settle(&api, "llm on gpu-3", |v| pods_of(v, "llm").len() == 1).await;
    api.create(&Gvr::vidijobs(), NS, job("b")).unwrap();
    running_on(&api, "b", "gpu-1").await;
    let s = api.get(&Gvr::statefulsets(), NS, "db").unwrap();
    assert_eq!(s["spec"]["replicas"], 0);
    assert!(s["metadata"]["annotations"].get("vidi.dev/hold-node").is_none());
    let why = events(&api)
        .into_iter()
        .find(|(r, _)| r == "YieldingWhole")
        .map(|(_, n)| n)
        .unwrap_or_default();
    assert!(
        why.contains("StatefulSet media/db") && why.contains("highest ordinals"),
        "{why}"
    );
    let st = api.get(&Gvr::vidijobs(), NS, "b").unwrap()["status"].clone();
    assert!(st["nodeChoice"]["reason"].as_str().unwrap().contains("whole"), "{st}");
    assert_eq!(api.get(&Gvr::deployments(), NS, "llm").unwrap()["spec"]["replicas"], 1);
    finish_vidi(&api, "b").await;
    settle(&api, "db back at 3 again", |v| {
        v.get(&Gvr::statefulsets(), NS, "db")
            .is_some_and(|s| s["spec"]["replicas"] == 3)
            && nothing_left_behind(v)
    })
    .await;
}

#[tokio::test]
async fn an_hpa_managed_deployment_yields_whole_and_comes_back_whole() {
    let api = three_nodes().await;
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 3, true))
        .unwrap();
    api.create(
        &Gvr::hpas(),
        NS,
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "tts", "namespace": NS},
               "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tts"},
                        "minReplicas": 1, "maxReplicas": 5}}),
    )
    .unwrap();
    settle(&api, "tts spread", |v| pods_of(v, "tts").len() == 3).await;
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    settle(&api, "the Vidi pod running", |v| {
        vidi_pod(v, "a").is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .await;
    // At 0 the HPA controller stops scaling it ("ScalingDisabled"); one replica removed would be
    // scaled back up. So: whole.
    let d = api.get(&Gvr::deployments(), NS, "tts").unwrap();
    assert_eq!(d["spec"]["replicas"], 0, "{}", dump(&api));
    assert!(d["metadata"]["annotations"].get("vidi.dev/hold-node").is_none());
    assert!(
        events(&api)
            .iter()
            .any(|(r, n)| r == "YieldingWhole" && n.contains("HorizontalPodAutoscaler media/tts")),
        "{:?}",
        events(&api)
    );
    finish_vidi(&api, "a").await;
    // Back at its count, so the HPA scales it again.
    settle(&api, "tts back at 3", |v| {
        v.get(&Gvr::deployments(), NS, "tts")
            .is_some_and(|d| d["spec"]["replicas"] == 3)
            && nothing_left_behind(v)
    })
    .await;
}

#[tokio::test]
async fn a_scale_down_that_removed_a_pod_elsewhere_yields_the_co_tenant_whole_and_restores_it() {
    // As above: gpu-2 is the cheapest node, where tts loses its one replica.
    let api = tts_everywhere_and_comfy_on_gpu1().await;
    let ready = |p: &Value| {
        p["status"]["phase"] == "Running"
            && p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["ready"] == true))
    };
    settle(&api, "tts ready on every node", |v| {
        let tts: Vec<Value> = v
            .list(&Gvr::pods(), Some(NS))
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == "tts")
            .collect();
        tts.len() == 3 && tts.iter().all(ready)
    })
    .await;
    let before = api.wait_until(|v| Some(pods_of(v, "tts")), WAIT).await.unwrap();
    // tts's pod on gpu-3 is not ready: the ReplicaSet removes it before any pod-deletion-cost.
    let (unready, _) = before.iter().find(|(_, (n, _))| n == "gpu-3").unwrap();
    api.patch_status(
        &Gvr::pods(),
        NS,
        unready,
        json!({"status": {"containerStatuses": [{"name": "tts", "image": "tts", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}}]}}),
    )
    .unwrap();
    settle(&api, "the pod on gpu-3 not ready", |v| {
        v.get(&Gvr::pods(), NS, unready).is_some_and(|p| !ready(&p))
    })
    .await;

    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    running_on(&api, "a", "gpu-2").await;
    let d = api.get(&Gvr::deployments(), NS, "tts").unwrap();
    assert_eq!(d["spec"]["replicas"], 0, "tts yields whole\n{}", dump(&api));
    assert_eq!(d["metadata"]["annotations"]["vidi.dev/original-replicas"], "3");
    let warned = events(&api)
        .into_iter()
        .any(|(reason, note)| reason == "YieldingWhole" && note.contains("kept 1 there"));
    assert!(warned, "{:?}", events(&api));

    finish_vidi(&api, "a").await;
    settle(&api, "tts back at 3 with nothing left behind", tts_back_at_3).await;
}

/// The pod-deletion-cost of each pod of `app` (None where it has none), and whether any pod
/// still carries an annotation of the operator's.
fn costs_and_marks(v: &View<'_>, app: &str) -> (BTreeMap<String, Option<String>>, bool) {
    let pods = v.list(&Gvr::pods(), Some(NS));
    let costs = pods
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .map(|p| {
            let cost = p["metadata"]["annotations"]["controller.kubernetes.io/pod-deletion-cost"]
                .as_str()
                .map(String::from);
            (p["metadata"]["name"].as_str().unwrap_or_default().to_string(), cost)
        })
        .collect();
    let marked = pods.iter().any(|p| {
        p["metadata"]["annotations"]
            .as_object()
            .is_some_and(|a| a.keys().any(|k| k.starts_with("vidi.dev/")))
    });
    (costs, marked)
}

#[tokio::test]
async fn a_crash_between_marking_and_scaling_down_leaves_no_annotation_behind() {
    let api = three_nodes().await;
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 3, true))
        .unwrap();
    settle(&api, "tts spread", |v| pods_of(v, "tts").len() == 3).await;
    // The owner ranks its pods for scale-downs: each has a pod-deletion-cost of its own.
    let owners: BTreeMap<String, Option<String>> = api
        .wait_until(|v| Some(pods_of(v, "tts")), WAIT)
        .await
        .unwrap()
        .into_keys()
        .enumerate()
        .map(|(i, p)| (p, Some((7 + i).to_string())))
        .collect();
    for (pod, cost) in &owners {
        api.patch_json(
            &Gvr::pods(),
            NS,
            pod,
            json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": cost}}}),
        )
        .unwrap();
    }
    // The pods get their marks; the scale-down that should follow fails (as if the operator
    // died between the two writes), and then the job is deleted.
    for _ in 0..200 {
        api.fail_next("patch", "deployments", 500);
    }
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    // The mark records the owner's cost in the same write.
    settle(&api, "a pod marked, its own cost recorded", |v| {
        v.list(&Gvr::pods(), Some(NS)).iter().any(|p| {
            let (name, a) = (
                p["metadata"]["name"].as_str().unwrap_or_default(),
                &p["metadata"]["annotations"],
            );
            a["vidi.dev/marked-by"] == "media/a"
                && a["controller.kubernetes.io/pod-deletion-cost"] == "-1000"
                && a["vidi.dev/deletion-cost-before"].as_str() == owners.get(name).cloned().flatten().as_deref()
        })
    })
    .await;
    api.delete(&Gvr::vidijobs(), NS, "a").unwrap();
    // Every pod as it was: the owner's costs back where they were, no mark.
    settle(&api, "the job gone and every pod as it was", |v| {
        v.get(&Gvr::vidijobs(), NS, "a").is_none() && costs_and_marks(v, "tts") == (owners.clone(), false)
    })
    .await;
    assert_eq!(api.get(&Gvr::deployments(), NS, "tts").unwrap()["spec"]["replicas"], 3);
    assert_eq!(
        api.wait_until(|v| Some(pods_of(v, "tts").len()), WAIT).await.unwrap(),
        3
    );
}

#[tokio::test]
async fn the_start_up_sweep_removes_marks_of_jobs_that_are_gone() {
    let api = three_nodes().await;
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 2, true))
        .unwrap();
    settle(&api, "tts running", |v| pods_of(v, "tts").len() == 2).await;
    let marked_pod = api
        .wait_until(|v| pods_of(v, "tts").into_keys().next(), WAIT)
        .await
        .unwrap();
    api.patch_json(
        &Gvr::pods(),
        NS,
        &marked_pod,
        json!({"metadata": {"annotations": {
            "controller.kubernetes.io/pod-deletion-cost": "-1000",
            "vidi.dev/marked-by": "media/gone",
            "vidi.dev/deletion-cost-before": "3",
        }}}),
    )
    .unwrap();
    let _op = Operator::start(&api);
    settle(
        &api,
        "the mark of the gone job removed and the owner's cost back",
        |v| {
            let (costs, marked) = costs_and_marks(v, "tts");
            !marked
                && costs.get(&marked_pod) == Some(&Some("3".to_string()))
                && costs.values().filter(|c| c.is_some()).count() == 1
        },
    )
    .await;
    assert_eq!(api.get(&Gvr::deployments(), NS, "tts").unwrap()["spec"]["replicas"], 2);
}

fn scaled_objects() -> Gvr {
    Gvr::new("keda.sh", "v1alpha1", "scaledobjects")
}

/// Serves KEDA's ScaledObject (as its CRD does) and creates one scaling `tts`.
fn install_keda(api: &Standin) {
    api.register_crd_json(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {"group": "keda.sh", "scope": "Namespaced",
                 "names": {"plural": "scaledobjects", "singular": "scaledobject", "kind": "ScaledObject"},
                 "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}
    }))
    .expect("KEDA CRD");
    api.create(
        &scaled_objects(),
        NS,
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "tts-scaler", "namespace": NS},
               "spec": {"scaleTargetRef": {"name": "tts"}, "minReplicaCount": 0, "triggers": [{"type": "cron"}]}}),
    )
    .expect("ScaledObject");
}

fn so_annotations(v: &View<'_>) -> Value {
    v.get(&scaled_objects(), NS, "tts-scaler")
        .map(|s| s["metadata"]["annotations"].clone())
        .unwrap_or(Value::Null)
}

/// The operator's metrics once `check` holds (its caches follow the stand-in a little later).
async fn encoded_until(op: &Operator, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = op.metrics.encode();
        if check(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_keda_scaled_deployment_is_paused_through_keda_and_unpaused_on_restore() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    api.kubelet().on_pod(|_| None);
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 2, true))
        .unwrap();
    install_keda(&api);
    settle(&api, "tts running", |v| pods_of(v, "tts").len() == 2).await;
    let op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    // One write on the ScaledObject: the pause and what undoes it.
    settle(&api, "the ScaledObject paused at 0 by the job", |v| {
        let a = so_annotations(v);
        a["autoscaling.keda.sh/paused-replicas"] == "0"
            && a["vidi.dev/held-by"] == "media/a"
            && a["vidi.dev/original-replicas"] == "2"
    })
    .await;
    // The hold is counted, under the Deployment's name, though its marks are on the ScaledObject.
    let held = encoded_until(&op, |t| t.contains("vidi_operator_co_tenants_held 1\n")).await;
    assert!(
        held.contains(&format!(
            r#"vidi_operator_co_tenant_held_seconds{{kind="Deployment",workload_namespace="{NS}",workload="tts"}}"#
        )),
        "{held}"
    );
    // KEDA, paused, scales its target to 0.
    api.patch_as(
        "keda-operator",
        &Gvr::deployments(),
        NS,
        "tts",
        json!({"spec": {"replicas": 0}}),
    )
    .unwrap();
    settle(&api, "Vidi running once tts is down", |v| {
        vidi_pod(v, "a").is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .await;
    finish_vidi(&api, "a").await;
    settle(&api, "the pause and the marks gone", |v| {
        so_annotations(v).as_object().is_none_or(|a| {
            a.keys()
                .all(|k| !k.starts_with("vidi.dev/") && !k.starts_with("autoscaling.keda.sh/"))
        })
    })
    .await;
    // The restore observed how long it was held (from the ScaledObject's held-since), and
    // nothing is counted as held any more.
    encoded_until(&op, |t| {
        t.contains("vidi_operator_co_tenants_held 0\n")
            && t.contains("vidi_operator_co_tenant_suspended_seconds_count 1\n")
    })
    .await;
    // The operator never scaled the Deployment behind KEDA's back, and never saw a fight.
    assert!(
        !co_tenant_writes(&api).iter().any(|w| w.contains("deployments")),
        "{:?}",
        co_tenant_writes(&api)
    );
    assert!(
        api.access_records()
            .iter()
            .any(|r| r.access.group == "keda.sh" && r.access.verb == "patch" && r.is_accepted_write())
    );
    assert!(
        !events(&api).iter().any(|(r, _)| r == "CoTenantFought"),
        "{:?}",
        events(&api)
    );
}

#[tokio::test]
async fn without_keda_nothing_keda_related_is_asked_and_the_deployment_is_scaled_directly() {
    let api = standin_with_claims(&["videos", "weights"]).await;
    api.kubelet().on_pod(|_| None);
    api.create(&Gvr::deployments(), NS, deployment("tts", NS, 2, true))
        .unwrap();
    settle(&api, "tts running", |v| pods_of(v, "tts").len() == 2).await;
    let _op = Operator::start(&api);
    api.create(&Gvr::vidijobs(), NS, job("a")).unwrap();
    settle(&api, "Vidi running", |v| {
        vidi_pod(v, "a").is_some_and(|p| p["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(api.get(&Gvr::deployments(), NS, "tts").unwrap()["spec"]["replicas"], 0);
    finish_vidi(&api, "a").await;
    settle(&api, "tts back", |v| {
        v.get(&Gvr::deployments(), NS, "tts")
            .is_some_and(|d| d["spec"]["replicas"] == 2)
            && nothing_left_behind(v)
    })
    .await;
    assert!(
        !api.access_records().iter().any(|r| r.access.group == "keda.sh"),
        "no request to KEDA's API"
    );
}
