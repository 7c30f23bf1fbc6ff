//! The controller's watch feed (`kube::cache::feed`: one reflector per kind, its changes as `Arc`s
//! for kube-runtime's shared-stream Controller API) against the API stand-in: every subscriber hears every
//! change, deletions included, once the cache and its index have it; a subscriber that stops
//! reading holds the watch back instead of growing a queue (bounded memory).
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::reflector::ObjectRef;
use kube_standin::{Gvr, Standin};
use serde_json::json;
use tokio::task::JoinHandle;
use vidi_operator::kube::Scope;
use vidi_operator::kube::cache::{Cache, SUBSCRIBER_BUFFER, Subscriptions, feed, trim_managed_fields};
use vidi_operator::kube::observe::{label_key, pod_keys};

const NS: &str = "media";
const WAIT: Duration = Duration::from_secs(20);

fn pod(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": "cosyvoice"}},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
}

async fn standin() -> Standin {
    let api = Standin::start().await;
    api.kubelet().set_enabled(false);
    if let Err(e) = api.create_namespace(NS) {
        panic!("namespace: {e:?}");
    }
    api
}

/// A feed of the namespace's pods with `subscribers` subscriptions, once it has listed.
async fn pod_feed(api: &Standin, subscribers: usize) -> (Cache<Pod>, Subscriptions<Pod>, Vec<JoinHandle<()>>) {
    let client = api.client();
    let mut tasks = Vec::new();
    let (cache, subs) = feed(
        |_| Api::<Pod>::namespaced(client.clone(), NS),
        &Scope::Namespaces(vec![NS.into()]),
        subscribers,
        trim_managed_fields,
        pod_keys,
        &mut tasks,
    );
    assert!(
        tokio::time::timeout(WAIT, cache.listed()).await.unwrap_or(false),
        "never listed"
    );
    (cache, subs, tasks)
}

#[tokio::test]
async fn every_subscriber_hears_applies_and_deletions_after_the_cache_and_index_have_them() {
    let api = standin().await;
    let (cache, mut subs, tasks) = pod_feed(&api, 2).await;
    let mut a = subs[0][0].take().unwrap_or_else(|| panic!("first subscription"));
    let mut b = subs[0][1].take().unwrap_or_else(|| panic!("second subscription"));
    if let Err(e) = api.create(&Gvr::pods(), NS, pod("p1")) {
        panic!("create: {e:?}");
    }
    let key = label_key(NS, "app", "cosyvoice");
    for sub in [&mut a, &mut b] {
        let seen = tokio::time::timeout(WAIT, sub.next()).await.ok().flatten();
        assert_eq!(seen.map(|p| p.metadata.name.clone()), Some(Some("p1".to_string())));
        // Heard only after the store and the side index have it.
        assert!(cache.get(&ObjectRef::new("p1").within(NS)).is_some());
        assert_eq!(cache.indexed(&key).len(), 1);
    }
    if let Err(e) = api.delete(&Gvr::pods(), NS, "p1") {
        panic!("delete: {e:?}");
    }
    for sub in [&mut a, &mut b] {
        let gone = tokio::time::timeout(WAIT, sub.next()).await.ok().flatten();
        assert_eq!(gone.map(|p| p.metadata.name.clone()), Some(Some("p1".to_string())));
        assert!(cache.get(&ObjectRef::new("p1").within(NS)).is_none());
        assert!(cache.indexed(&key).is_empty(), "the index still has the deleted pod");
    }
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn a_stalled_subscriber_holds_the_watch_back_instead_of_queueing() {
    let api = standin().await;
    let (cache, mut subs, tasks) = pod_feed(&api, 1).await;
    let mut stalled = subs[0][0].take().unwrap_or_else(|| panic!("subscription"));
    let total = 4 * SUBSCRIBER_BUFFER;
    for i in 0..total {
        if let Err(e) = api.create(&Gvr::pods(), NS, pod(&format!("p{i}"))) {
            panic!("create: {e:?}");
        }
    }
    // Nobody reads: the feed stops taking changes once the buffer is full (plus the one it
    // holds while waiting), so what is kept for the subscriber is bounded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cached = cache.state().len();
    assert!(
        cached <= SUBSCRIBER_BUFFER + 1,
        "{cached} of {total} changes taken while the subscriber read none (buffer {SUBSCRIBER_BUFFER})"
    );
    // Reading again releases the watch: every change arrives, in order, and the cache catches up.
    let mut heard = 0;
    while heard < total {
        match tokio::time::timeout(WAIT, stalled.next()).await {
            Ok(Some(p)) => {
                assert_eq!(p.metadata.name.as_deref(), Some(format!("p{heard}").as_str()));
                heard += 1;
            }
            other => panic!("after {heard} of {total}: {other:?}"),
        }
    }
    assert_eq!(cache.state().len(), total);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn seen_waits_for_a_change_the_cache_applies_and_gives_up_at_its_limit() {
    let api = standin().await;
    let (cache, _subs, tasks) = pod_feed(&api, 0).await;
    let key = ObjectRef::<Pod>::new("p").within(NS);
    // Not there, nothing coming: false once the limit has passed, not before.
    let started = std::time::Instant::now();
    assert!(!cache.seen(&key, |p| p.is_some(), Duration::from_millis(300)).await);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Created while waiting: seen as soon as the watch delivers it.
    let waiting = {
        let cache = cache.clone();
        let key = key.clone();
        tokio::spawn(async move { cache.seen(&key, |p| p.is_some(), WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let created = match api.create(&Gvr::pods(), NS, pod("p")) {
        Ok(p) => p,
        Err(e) => panic!("create: {e:?}"),
    };
    let started = std::time::Instant::now();
    assert!(matches!(waiting.await, Ok(true)), "the creation was never seen");
    assert!(
        started.elapsed() < WAIT / 2,
        "seen only at the limit: {:?}",
        started.elapsed()
    );
    let before = created["metadata"]["resourceVersion"].as_str().map(String::from);
    assert_eq!(
        cache.get(&key).and_then(|p| p.metadata.resource_version.clone()),
        before
    );
    // A later version: what a guarded write waits for.
    if let Err(e) = api.patch_as(
        "someone",
        &Gvr::pods(),
        NS,
        "p",
        json!({"metadata": {"labels": {"x": "1"}}}),
    ) {
        panic!("patch: {e:?}");
    }
    let changed = |p: Option<&Pod>| p.is_none_or(|p| p.metadata.resource_version != before);
    assert!(cache.seen(&key, changed, WAIT).await);
    assert_eq!(
        cache
            .get(&key)
            .and_then(|p| p.metadata.labels.clone())
            .unwrap_or_default()["x"],
        "1"
    );
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn seen_gives_up_at_once_while_the_watch_fails_and_waits_again_once_it_is_back() {
    let api = standin().await;
    let (cache, _subs, tasks) = pod_feed(&api, 0).await;
    let key = ObjectRef::<Pod>::new("p").within(NS);
    // A waiter that is already waiting when the watch breaks.
    let waiting = {
        let cache = cache.clone();
        let key = key.clone();
        tokio::spawn(async move { cache.seen(&key, |p| p.is_some(), WAIT).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!cache.watch_failing());
    // The connection drops and the next three watch requests fail (500; kube's client retries a
    // 503 inside the call): kube's watcher retries with backoff, a few seconds in all.
    for _ in 0..3 {
        api.fail_next("watch", "pods", 500);
    }
    api.drop_watches();
    let started = std::time::Instant::now();
    assert!(
        matches!(waiting.await, Ok(false)),
        "the waiter saw a pod that does not exist"
    );
    assert!(
        started.elapsed() < WAIT / 2,
        "the waiter sat out its limit while the watch failed: {:?}",
        started.elapsed()
    );
    assert!(cache.watch_failing());
    // A new waiter does not wait at all.
    let started = std::time::Instant::now();
    assert!(!cache.seen(&key, |p| p.is_some(), WAIT).await);
    assert!(started.elapsed() < WAIT / 2, "{:?}", started.elapsed());
    // Once the watch delivers again, it waits for the change as before.
    if let Err(e) = api.create(&Gvr::pods(), NS, pod("p")) {
        panic!("create: {e:?}");
    }
    let mut seen = false;
    let deadline = std::time::Instant::now() + WAIT;
    while !seen && std::time::Instant::now() < deadline {
        seen = cache.seen(&key, |p| p.is_some(), WAIT).await;
        if !seen {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(seen, "the pod created after the outage was never seen");
    assert!(!cache.watch_failing());
    for t in tasks {
        t.abort();
    }
}
