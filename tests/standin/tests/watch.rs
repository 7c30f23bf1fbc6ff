//! Watches: kube-runtime's watcher + reflector, 410 recovery, bookmarks, timeouts.

mod common;

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_standin::Gvr;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn reflector_follows(config: watcher::Config) {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    api.create(&Gvr::pods(), "ns", pod("before", json!({"app": "x"})))
        .unwrap();

    let (reader, writer) = reflector::store::<Pod>();
    // Drive the reflector from the test: every condition is re-checked after each event.
    let mut stream = reflector(writer, watcher(pods.clone(), config))
        .default_backoff()
        .boxed();
    let mut errors = Vec::<String>::new();
    let mut until = async |errors: &mut Vec<String>, f: &dyn Fn(&[Arc<Pod>]) -> bool| {
        let deadline = tokio::time::Instant::now() + T;
        while !f(&reader.state()) {
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(Err(e))) => errors.push(e.to_string()),
                Ok(Some(Ok(_))) => {}
                Ok(None) => panic!("watch stream ended"),
                Err(_) => panic!("reflector condition not met in {T:?}"),
            }
        }
    };
    let has = |name: &'static str| move |ps: &[Arc<Pod>]| ps.iter().any(|p| p.metadata.name.as_deref() == Some(name));
    until(&mut errors, &has("before")).await;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod("a", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    until(&mut errors, &has("a")).await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}})),
    )
    .await
    .unwrap();
    until(&mut errors, &|ps: &[Arc<Pod>]| {
        ps.iter()
            .any(|p| p.metadata.labels.as_ref().and_then(|l| l.get("m")).is_some())
    })
    .await;
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    until(&mut errors, &|ps: &[Arc<Pod>]| !has("a")(ps)).await;

    // Compaction: the open watch ends with 410, the watcher re-lists and carries on.
    api.compact();
    api.create(&Gvr::pods(), "ns", pod("after", json!({}))).unwrap();
    until(&mut errors, &|ps: &[Arc<Pod>]| has("after")(ps) && has("before")(ps)).await;
    let seen_410 = errors.iter().any(|e| e.contains("410") || e.contains("too old"));
    assert!(seen_410, "watcher reported the 410: {errors:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_with_default_config() {
    reflector_follows(watcher::Config::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_with_streaming_list() {
    reflector_follows(watcher::Config::default().streaming_lists()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_watch_events_selectors_and_410() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    let rv = api.resource_version().to_string();
    let wp = WatchParams::default().labels("app=web").timeout(2);
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    api.create(&Gvr::pods(), "ns", pod("other", json!({"app": "db"})))
        .unwrap();
    api.create(&Gvr::pods(), "ns", pod("w", json!({"app": "web"}))).unwrap();
    api.patch_json(
        &Gvr::pods(),
        "ns",
        "w",
        json!({"metadata": {"labels": {"app": "gone"}}}),
    )
    .unwrap();
    let mut kinds = Vec::new();
    while let Some(ev) = stream.try_next().await.unwrap() {
        match ev {
            WatchEvent::Added(p) => kinds.push(format!("ADDED {}", p.metadata.name.unwrap())),
            WatchEvent::Modified(p) => kinds.push(format!("MODIFIED {}", p.metadata.name.unwrap())),
            WatchEvent::Deleted(p) => kinds.push(format!("DELETED {}", p.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("unexpected {e:?}"),
        }
        if kinds.len() == 2 {
            break;
        }
    }
    assert_eq!(kinds, ["ADDED w", "DELETED w"], "leaving the selector reads as DELETED");

    // A resourceVersion older than the retained history: ERROR event with 410.
    api.set_history_limit(1);
    let mut stream = pods.watch(&WatchParams::default(), "2").await.unwrap().boxed();
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_and_timeout() {
    let api = standin().await;
    api.set_bookmark_interval(Duration::from_millis(50));
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    let rv = api.resource_version().to_string();
    let wp = WatchParams::default().timeout(1);
    let started = tokio::time::Instant::now();
    let events: Vec<_> = pods.watch(&wp, &rv).await.unwrap().try_collect().await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, WatchEvent::Bookmark(b) if b.metadata.resource_version == rv))
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stream closed after timeoutSeconds: {took:?}"
    );
}
