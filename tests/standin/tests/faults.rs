//! Fault injection and attribution: named clients cut off alone, late delivery of held requests,
//! injected conflicts and failures, managedFields.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube_standin::{Cut, Gvr};
use serde_json::json;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "ns"}, "data": {"k": "v"}})).unwrap()
}

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_client_is_served_late_and_others_are_not_held() {
    let api = standin().await;
    let hung: Api<ConfigMap> = Api::namespaced(api.client_for("a"), "ns");
    let other: Api<ConfigMap> = Api::namespaced(api.client_for("b"), "ns");
    api.cut_off("a", Cut::Hang);
    let request = tokio::spawn(async move { hung.create(&PostParams::default(), &config_map("late")).await });
    api.wait_for(|v| v.held_requests("a") == 1, Duration::from_secs(5))
        .await
        .expect("held");
    other
        .create(&PostParams::default(), &config_map("now"))
        .await
        .expect("b is not cut off");
    assert!(api.get(&Gvr::new("", "v1", "configmaps"), "ns", "late").is_none());
    api.heal("a");
    request.await.unwrap().expect("served once healed");
    let record = api
        .access_records()
        .into_iter()
        .find(|r| r.name.is_none() && r.client.as_deref() == Some("a") && r.is_write())
        .expect("recorded with its client");
    assert!(record.is_accepted_write());
    assert!(api.get(&Gvr::new("", "v1", "configmaps"), "ns", "late").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_writes_of_one_client_fail() {
    let api = standin().await;
    // Without kube's own retries of 503, which would wait out the cut.
    let mut config = kube::Config::new(api.url_for("a").parse().unwrap());
    config.default_retry = false;
    let client = kube::Client::try_from(config).unwrap();
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(client, "ns");
    let lease = serde_json::from_value(json!({"metadata": {"name": "l", "namespace": "ns"}, "spec": {}})).unwrap();
    api.cut_off("a", Cut::LeaseWritesFail);
    assert_eq!(
        code(leases.create(&PostParams::default(), &lease).await.unwrap_err()),
        503
    );
    let theirs: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(api.client_for("b"), "ns");
    theirs
        .create(&PostParams::default(), &lease)
        .await
        .expect("b writes Leases");
    leases.get("l").await.expect("a still reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_write_of_each_object_conflicts_and_writes_can_fail_for_a_while() {
    let api = standin().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    cms.create(&PostParams::default(), &config_map("c")).await.unwrap();
    api.conflict_first_writes(true);
    let patch = Patch::Merge(json!({"data": {"k": "w"}}));
    assert_eq!(
        code(cms.patch("c", &PatchParams::default(), &patch).await.unwrap_err()),
        409
    );
    cms.patch("c", &PatchParams::default(), &patch)
        .await
        .expect("the retry lands");
    api.conflict_first_writes(false);
    // 500, not 503: kube's client retries 429/503/504 by itself.
    api.fail_writes_for(500, Duration::from_secs(60));
    assert_eq!(
        code(cms.patch("c", &PatchParams::default(), &patch).await.unwrap_err()),
        500
    );
    cms.get("c").await.expect("reads still work");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_fields_name_who_changed_spec_replicas_and_who_wrote_status() {
    let api = standin().await;
    api.create(
        &Gvr::deployments(),
        "ns",
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
                     "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "d", "image": "d"}]}}}
        }),
    )
    .unwrap();
    api.patch_as(
        "argocd",
        &Gvr::deployments(),
        "ns",
        "d",
        json!({"spec": {"replicas": 3}}),
    )
    .unwrap();
    api.wait_for(
        |v| {
            v.get(&Gvr::deployments(), "ns", "d")
                .is_some_and(|d| d["status"]["replicas"] == 3)
        },
        Duration::from_secs(5),
    )
    .await
    .expect("the workload controller caught up");
    let d = api.get(&Gvr::deployments(), "ns", "d").unwrap();
    let entries = d["metadata"]["managedFields"].as_array().unwrap();
    let argocd = entries
        .iter()
        .find(|e| e["manager"] == "argocd")
        .expect("argocd's entry");
    assert_eq!(argocd["fieldsV1"]["f:spec"]["f:replicas"], json!({}));
    assert!(argocd.get("subresource").is_none());
    let kcm = entries
        .iter()
        .find(|e| e["manager"] == "kube-controller-manager")
        .expect("the workload controller's entry");
    assert_eq!(kcm["subresource"], "status");
    assert!(kcm["fieldsV1"]["f:status"].get("f:replicas").is_some(), "{kcm}");
}
