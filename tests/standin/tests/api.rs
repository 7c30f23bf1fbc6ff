//! REST semantics through real kube::Api calls.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube_standin::{Access, Gvr, Standin};
use serde_json::json;

fn code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn reason(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn vidijobs(api: &Standin) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("vidi.dev", "v1alpha1", "VidiJob"), "vidijobs");
    Api::namespaced_with(api.client(), "ns", &ar)
}

fn dyn_obj(v: serde_json::Value) -> DynamicObject {
    serde_json::from_value(v).expect("object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_conflicts() {
    let api = standin().await;
    api.kubelet().set_enabled(false); // no concurrent status writes on the pods under test
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    let p: Pod = serde_json::from_value(pod("a", json!({"app": "web"}))).unwrap();
    let created = pods.create(&PostParams::default(), &p).await.unwrap();
    let meta = &created.metadata;
    assert_eq!(meta.namespace.as_deref(), Some("ns"));
    assert_eq!(meta.generation, Some(1));
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some() && meta.resource_version.is_some());

    assert_eq!(
        reason(pods.create(&PostParams::default(), &p).await.unwrap_err()),
        (409, "AlreadyExists".into())
    );

    // PUT with the current rv works, with a stale one is 409 Conflict, without one 422.
    let mut fresh = pods.get("a").await.unwrap();
    let stale = fresh.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    let updated = pods.replace("a", &PostParams::default(), &fresh).await.unwrap();
    assert_ne!(updated.metadata.resource_version, stale.metadata.resource_version);
    let mut stale2 = stale.clone();
    stale2
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "3".into());
    assert_eq!(
        reason(pods.replace("a", &PostParams::default(), &stale2).await.unwrap_err()),
        (409, "Conflict".into())
    );
    let mut no_rv = updated.clone();
    no_rv.metadata.resource_version = None;
    assert_eq!(
        reason(pods.replace("a", &PostParams::default(), &no_rv).await.unwrap_err()),
        (422, "Invalid".into())
    );

    // Names: missing, invalid, generateName.
    let mut bad: Pod = serde_json::from_value(pod("Bad_Name", json!({}))).unwrap();
    assert_eq!(code(pods.create(&PostParams::default(), &bad).await.unwrap_err()), 422);
    bad.metadata.name = None;
    assert_eq!(code(pods.create(&PostParams::default(), &bad).await.unwrap_err()), 422);
    bad.metadata.generate_name = Some("gen-".into());
    let g = pods.create(&PostParams::default(), &bad).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    // Namespace in the body must match the path.
    let mut other: Pod = serde_json::from_value(pod("b", json!({}))).unwrap();
    other.metadata.namespace = Some("elsewhere".into());
    assert_eq!(
        reason(pods.create(&PostParams::default(), &other).await.unwrap_err()),
        (400, "BadRequest".into())
    );

    // Delete, then 404.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(reason(pods.get("a").await.unwrap_err()), (404, "NotFound".into()));
    assert_eq!(code(pods.delete("a", &DeleteParams::default()).await.unwrap_err()), 404);

    // Delete preconditions.
    let c = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(pod("c", json!({}))).unwrap(),
        )
        .await
        .unwrap();
    let wrong = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(code(pods.delete("c", &wrong).await.unwrap_err()), 409);
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: c.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    pods.delete("c", &right).await.unwrap();

    // A resource the server does not serve: 404 with a Status body.
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("example.com", "v1", "Foo"), "foos");
    let foos: Api<DynamicObject> = Api::namespaced_with(api.client(), "ns", &ar);
    assert_eq!(
        reason(foos.list(&ListParams::default()).await.unwrap_err()),
        (404, "NotFound".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches() {
    let api = standin().await;
    let jobs = vidijobs(&api);
    jobs.create(&PostParams::default(), &dyn_obj(vidijob("j")))
        .await
        .unwrap();

    let merged = jobs
        .patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}, "spec": {"query": "a cat"}})),
        )
        .await
        .unwrap();
    assert_eq!(merged.data["spec"]["query"], "a cat");
    assert_eq!(merged.data["spec"]["video"]["url"], "http://x/v.mp4");
    assert_eq!(merged.metadata.generation, Some(2));

    // Merge patch carrying a stale resourceVersion: 409.
    let stale = Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "spec": {"query": "x"}}));
    assert_eq!(
        code(jobs.patch("j", &PatchParams::default(), &stale).await.unwrap_err()),
        409
    );

    // JSON patch; a failing `test` is 422.
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/spec/query", "value": "a cat"},
        {"op": "replace", "path": "/spec/query", "value": "a bird"}
    ]))
    .unwrap();
    let j = jobs
        .patch("j", &PatchParams::default(), &Patch::<()>::Json(ops.clone()))
        .await
        .unwrap();
    assert_eq!(j.data["spec"]["query"], "a bird");
    assert_eq!(
        reason(
            jobs.patch("j", &PatchParams::default(), &Patch::<()>::Json(ops))
                .await
                .unwrap_err()
        ),
        (422, "Invalid".into())
    );

    // Server-side apply (merge semantics) creates and updates.
    let pp = PatchParams::apply("tests");
    let k = jobs.patch("k", &pp, &Patch::Apply(vidijob("k"))).await.unwrap();
    assert_eq!(k.data["spec"]["query"], "a dog");
    let k = jobs
        .patch(
            "k",
            &pp,
            &Patch::Apply(json!({"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "spec": {"query": "q2"}})),
        )
        .await
        .unwrap();
    assert_eq!(k.data["spec"]["query"], "q2");

    // Strategic merge patch is refused for custom resources, accepted for built-ins.
    assert_eq!(
        code(
            jobs.patch("k", &PatchParams::default(), &Patch::Strategic(json!({"spec": {}})))
                .await
                .unwrap_err()
        ),
        415
    );
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}})).unwrap(),
    )
    .await
    .unwrap();
    let c = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(c.data.unwrap().len(), 2);

    // Patching a missing object is 404.
    assert_eq!(
        code(
            jobs.patch("missing", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        ),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_subresource_is_isolated() {
    let api = standin().await;
    let jobs = vidijobs(&api);
    let mut j = vidijob("j");
    j["status"] = json!({"phase": "Succeeded"});
    let created = jobs.create(&PostParams::default(), &dyn_obj(j)).await.unwrap();
    assert!(created.data.get("status").is_none(), "status is dropped on create");

    let s = jobs
        .patch_status(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Queued"}, "spec": {"query": "ignored"}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["phase"], "Queued");
    assert_eq!(s.data["spec"]["query"], "a dog");
    assert_eq!(s.metadata.generation, Some(1), "status writes do not bump generation");

    let m = jobs
        .patch(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}, "spec": {"query": "new"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        m.data["status"]["phase"], "Queued",
        "main resource writes keep the old status"
    );
    assert_eq!(m.data["spec"]["query"], "new");
    assert_eq!(m.metadata.generation, Some(2));

    let mut obj = jobs.get_status("j").await.unwrap();
    obj.data["status"]["phase"] = json!("Running");
    let r = jobs.replace_status("j", &PostParams::default(), &obj).await.unwrap();
    assert_eq!(r.data["status"]["phase"], "Running");

    // Resources without a status subresource have no /status.
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    assert_eq!(code(cms.get_status("x").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalizers_hold_deletion() {
    let api = standin().await;
    let jobs = vidijobs(&api);
    let mut j = vidijob("j");
    j["metadata"]["finalizers"] = json!(["vidi.dev/restore"]);
    jobs.create(&PostParams::default(), &dyn_obj(j)).await.unwrap();
    jobs.delete("j", &DeleteParams::default()).await.unwrap();
    let held = jobs.get("j").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());

    let add = Patch::Merge(json!({"metadata": {"finalizers": ["vidi.dev/restore", "other"]}}));
    assert_eq!(
        reason(jobs.patch("j", &PatchParams::default(), &add).await.unwrap_err()),
        (422, "Invalid".into())
    );

    // kube-runtime's finalizer helper removes with a JSON patch guarded by `test`.
    let remove: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers/0", "value": "vidi.dev/restore"},
        {"op": "remove", "path": "/metadata/finalizers/0"}
    ]))
    .unwrap();
    jobs.patch("j", &PatchParams::default(), &Patch::<()>::Json(remove))
        .await
        .unwrap();
    assert_eq!(code(jobs.get("j").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_collection_is_recursive() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let owner = api.create(&Gvr::vidijobs(), "ns", vidijob("owner")).unwrap();
    let owner_ref = |o: &serde_json::Value, kind: &str| json!([{"apiVersion": o["apiVersion"], "kind": kind, "name": o["metadata"]["name"], "uid": o["metadata"]["uid"], "controller": true}]);
    let mut p = pod("p", json!({}));
    p["metadata"]["ownerReferences"] = owner_ref(&owner, "VidiJob");
    let p = api.create(&Gvr::pods(), "ns", p).unwrap();
    let cm = json!({"metadata": {"name": "cm", "ownerReferences": owner_ref(&p, "Pod")}});
    api.create(&Gvr::new("", "v1", "configmaps"), "ns", cm).unwrap();
    let keep = json!({"metadata": {"name": "keep"}});
    api.create(&Gvr::new("", "v1", "configmaps"), "ns", keep).unwrap();

    vidijobs(&api).delete("owner", &DeleteParams::default()).await.unwrap();
    api.wait_for(
        |v| v.get(&Gvr::pods(), "ns", "p").is_none() && v.get(&Gvr::new("", "v1", "configmaps"), "ns", "cm").is_none(),
        T,
    )
    .await
    .unwrap();
    assert!(api.get(&Gvr::new("", "v1", "configmaps"), "ns", "keep").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_filter_lists() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    for (n, labels) in [
        ("a", json!({"app": "web", "vidi.dev/yield-gpu": "true"})),
        ("b", json!({"app": "db"})),
        ("c", json!({"app": "cache", "vidi.dev/yield-gpu": "false"})),
    ] {
        api.create(&Gvr::pods(), "ns", pod(n, labels)).unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    let names = |l: Vec<Pod>| l.into_iter().map(|p| p.metadata.name.unwrap()).collect::<Vec<_>>();
    let list = |sel: &'static str| {
        let pods = pods.clone();
        async move { names(pods.list(&ListParams::default().labels(sel)).await.unwrap().items) }
    };
    assert_eq!(list("vidi.dev/yield-gpu=true").await, ["a"]);
    assert_eq!(list("app!=web").await, ["b", "c"]);
    assert_eq!(list("app in (web,db)").await, ["a", "b"]);
    assert_eq!(list("app notin (web,db)").await, ["c"]);
    assert_eq!(list("vidi.dev/yield-gpu").await, ["a", "c"]);
    assert_eq!(list("!vidi.dev/yield-gpu,app==db").await, ["b"]);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(names(by_name.items), ["b"]);
    let rv: u64 = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rv, api.resource_version());
    assert_eq!(
        code(pods.list(&ListParams::default().labels("a in b c")).await.unwrap_err()),
        400
    );
    assert_eq!(
        code(
            pods.list(&ListParams::default().fields("spec.bogus=1"))
                .await
                .unwrap_err()
        ),
        400
    );

    let all: Api<Pod> = Api::all(api.client());
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_and_injected_faults() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    api.clear_access_log();
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    api.fail_next("get", "pods", 500);
    assert_eq!(code(pods.get("nope").await.unwrap_err()), 500);
    assert_eq!(code(pods.get("nope").await.unwrap_err()), 404);
    api.fail_next("create", "pods", 409);
    let p: Pod = serde_json::from_value(pod("x", json!({}))).unwrap();
    assert_eq!(code(pods.create(&PostParams::default(), &p).await.unwrap_err()), 409);
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.patch_status(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    let jobs = vidijobs(&api);
    jobs.list(&ListParams::default()).await.unwrap();

    let log = api.access_log();
    let expected = [
        Access::new("get", "", "pods", ""),
        Access::new("create", "", "pods", ""),
        Access::new("patch", "", "pods", "status"),
        Access::new("list", "vidi.dev", "vidijobs", ""),
    ];
    assert_eq!(log, expected.into_iter().collect());
    let recs = api.access_records();
    assert_eq!(
        recs.iter().map(|r| r.code).collect::<Vec<_>>(),
        [500, 404, 409, 201, 200, 200]
    );
    assert_eq!(recs[0].name.as_deref(), Some("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_works_for_another_client() {
    let api = standin().await;
    let dir = std::env::temp_dir().join(format!("standin-kc-{}", std::process::id()));
    api.write_kubeconfig(&dir).unwrap();
    let kc = kube::config::Kubeconfig::read_from(&dir).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let ns: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
    assert_eq!(
        ns.get("ns").await.unwrap().status.unwrap().phase.as_deref(),
        Some("Active")
    );
    let _ = std::fs::remove_file(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crd_schema_prunes_and_validates() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api = Standin::start().await;
    api.create_namespace("ns").unwrap();
    let mut crd = vidijob_crd();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"] = json!({"type": "object", "properties": {
        "spec": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "minLength": 1},
            "precision": {"type": "string", "enum": ["auto", "fp16", "int8", "int4"]}}},
        "status": {"type": "object", "properties": {"phase": {"type": "string"}}}}});
    let typed: CustomResourceDefinition = serde_json::from_value(crd).unwrap();
    api.register_crd(&typed).unwrap();
    let jobs = vidijobs(&api);
    let mut j = vidijob("j");
    j["spec"]["unknownField"] = json!(1);
    let created = jobs.create(&PostParams::default(), &dyn_obj(j)).await.unwrap();
    assert!(
        created.data["spec"].get("unknownField").is_none(),
        "unknown fields are pruned"
    );
    assert!(created.data["spec"].get("video").is_none());

    let s = jobs
        .patch_status(
            "j",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Queued", "notInSchema": 1}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"], json!({"phase": "Queued"}));

    let mut bad = vidijob("bad");
    bad["spec"] = json!({"precision": "fp64"});
    let e = jobs.create(&PostParams::default(), &dyn_obj(bad)).await.unwrap_err();
    let kube::Error::Api(status) = e else {
        panic!("api error expected")
    };
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.query: Required value"),
        "{}",
        status.message
    );
    assert!(
        status.message.contains("spec.precision: Unsupported value"),
        "{}",
        status.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests_refused_like_a_real_server() {
    let api = standin().await;
    let client = api.client();
    let send = |method: &str, uri: &str, ctype: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", ctype)
            .body(body.as_bytes().to_vec())
            .unwrap();
        let client = client.clone();
        async move { client.request_text(req).await }
    };
    api.create(&Gvr::vidijobs(), "ns", vidijob("j")).unwrap();
    let path = "/apis/vidi.dev/v1alpha1/namespaces/ns/vidijobs/j";
    let apply = r#"{"apiVersion":"vidi.dev/v1alpha1","kind":"VidiJob","spec":{"query":"x"}}"#;
    assert_eq!(
        reason(
            send("PATCH", path, "application/apply-patch+yaml", apply)
                .await
                .unwrap_err()
        ),
        (400, "BadRequest".into())
    );
    send(
        "PATCH",
        &format!("{path}?fieldManager=t"),
        "application/apply-patch+yaml",
        apply,
    )
    .await
    .unwrap();
    let yaml = "apiVersion: vidi.dev/v1alpha1\nkind: VidiJob\nspec:\n  query: from-yaml\n";
    send(
        "PATCH",
        &format!("{path}?fieldManager=t"),
        "application/apply-patch+yaml",
        yaml,
    )
    .await
    .unwrap();
    assert_eq!(
        api.get(&Gvr::vidijobs(), "ns", "j").unwrap()["spec"]["query"],
        "from-yaml"
    );
    assert_eq!(
        reason(send("PATCH", path, "text/plain", "{}").await.unwrap_err()),
        (415, "UnsupportedMediaType".into())
    );
    assert_eq!(
        reason(send("POST", path, "application/json", "{}").await.unwrap_err()),
        (405, "MethodNotAllowed".into())
    );
    assert_eq!(
        code(
            send("GET", "/apis/vidi.dev/v1alpha1/namespaces/ns/vidijobs/j/scale", "", "")
                .await
                .unwrap_err()
        ),
        404
    );
    assert_eq!(
        code(
            send("GET", "/api/v1/namespaces/ns/namespaces", "", "")
                .await
                .unwrap_err()
        ),
        404
    );
    let body = send(
        "POST",
        "/apis/vidi.dev/v1alpha1/namespaces/ns/vidijobs",
        "application/json",
        "{not json",
    )
    .await
    .unwrap_err();
    assert_eq!(code(body), 400);
    let wrong_kind = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#;
    assert_eq!(
        code(
            send(
                "POST",
                "/apis/vidi.dev/v1alpha1/namespaces/ns/vidijobs",
                "application/json",
                wrong_kind
            )
            .await
            .unwrap_err()
        ),
        400
    );
    let with_rv = r#"{"metadata":{"name":"q","resourceVersion":"5"},"spec":{}}"#;
    assert_eq!(
        code(
            send(
                "POST",
                "/apis/vidi.dev/v1alpha1/namespaces/ns/vidijobs",
                "application/json",
                with_rv
            )
            .await
            .unwrap_err()
        ),
        500
    );

    // Discovery and metadata-only reads.
    let v = send("GET", "/version", "", "").await.unwrap();
    assert!(v.contains("gitVersion"));
    let rl = send("GET", "/apis/vidi.dev/v1alpha1", "", "").await.unwrap();
    assert!(rl.contains("vidijobs/status"));
    let jobs = vidijobs(&api);
    let meta = jobs.list_metadata(&ListParams::default()).await.unwrap();
    assert_eq!(meta.items.len(), 1);
    assert_eq!(meta.items[0].metadata.name.as_deref(), Some("j"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_recorder_and_leases_work() {
    use k8s_openapi::api::coordination::v1::Lease;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let api = standin().await;
    let obj = api.create(&Gvr::vidijobs(), "ns", vidijob("j")).unwrap();
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("vidi.dev/v1alpha1".into()),
        kind: Some("VidiJob".into()),
        name: Some("j".into()),
        namespace: Some("ns".into()),
        uid: obj["metadata"]["uid"].as_str().map(String::from),
        ..Default::default()
    };
    let recorder = Recorder::new(
        api.client(),
        Reporter {
            controller: "vidi-operator".into(),
            instance: None,
        },
    );
    let ev = Event {
        type_: EventType::Warning,
        reason: "Fought".into(),
        note: Some("hpa scaled tts back up".into()),
        action: "Suspend".into(),
        secondary: None,
    };
    recorder.publish(&ev, &reference).await.unwrap();
    recorder.publish(&ev, &reference).await.unwrap();
    let events = api.list(&Gvr::events(), Some("ns"));
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "Fought");

    let leases: Api<Lease> = Api::namespaced(api.client(), "ns");
    let lease: Lease =
        serde_json::from_value(json!({"metadata": {"name": "leader"}, "spec": {"holderIdentity": "a"}})).unwrap();
    leases.create(&PostParams::default(), &lease).await.unwrap();
    let p = leases
        .patch(
            "leader",
            &PatchParams::apply("b").force(),
            &Patch::Apply(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "spec": {"holderIdentity": "b"}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.spec.unwrap().holder_identity.as_deref(), Some("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_runtime_finalizer_helper_round_trip() {
    use kube::runtime::controller::Action;
    use kube::runtime::finalizer::{Event, finalizer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let api = standin().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let cleanups = std::sync::Arc::new(AtomicUsize::new(0));
    let run = |obj: ConfigMap| {
        let cms = cms.clone();
        let cleanups = cleanups.clone();
        async move {
            finalizer(&cms, "vidi.dev/test", std::sync::Arc::new(obj), |ev| async move {
                if let Event::Cleanup(_) = ev {
                    cleanups.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, std::convert::Infallible>(Action::await_change())
            })
            .await
        }
    };
    run(cms.get("c").await.unwrap()).await.unwrap(); // adds the finalizer (test null + add)
    assert_eq!(
        cms.get("c").await.unwrap().metadata.finalizers,
        Some(vec!["vidi.dev/test".to_string()])
    );
    run(cms.get("c").await.unwrap()).await.unwrap(); // apply
    cms.delete("c", &DeleteParams::default()).await.unwrap();
    run(cms.get("c").await.unwrap()).await.unwrap(); // cleanup, removes the finalizer
    assert_eq!(cleanups.load(Ordering::SeqCst), 1);
    assert_eq!(code(cms.get("c").await.unwrap_err()), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immutable_fields_of_builtins() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    api.set_workloads_enabled(false);
    let pods: Api<Pod> = Api::namespaced(api.client(), "ns");
    api.create(&Gvr::pods(), "ns", pod("p", json!({}))).unwrap();
    let image = Patch::Merge(json!({"spec": {"containers": [{"name": "main", "image": "busybox:2"}]}}));
    pods.patch("p", &PatchParams::default(), &image).await.unwrap();
    let env = Patch::Merge(json!({"spec": {"containers": [{"name": "main", "image": "busybox:2", "env": []}]}}));
    assert_eq!(
        reason(pods.patch("p", &PatchParams::default(), &env).await.unwrap_err()),
        (422, "Invalid".into())
    );

    let dep = json!({"metadata": {"name": "d"}, "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}},
        "template": {"metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    api.create(&Gvr::deployments(), "ns", dep).unwrap();
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(api.client(), "ns");
    let sel = Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "e"}}}}));
    assert_eq!(
        code(deps.patch("d", &PatchParams::default(), &sel).await.unwrap_err()),
        422
    );
    let scale = Patch::Merge(
        json!({"spec": {"replicas": 0}, "metadata": {"annotations": {"vidi.dev/original-replicas": "1"}}}),
    );
    let d = deps.patch("d", &PatchParams::default(), &scale).await.unwrap();
    assert_eq!(d.spec.replicas, Some(0));
    assert_eq!(d.metadata.generation, Some(2));
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    use futures::TryStreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    let rv = api.resource_version().to_string();
    let mut w = Box::pin(cms.watch(&WatchParams::default(), &rv).await.unwrap());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}})).unwrap(),
    )
    .await
    .unwrap();
    match w.try_next().await.unwrap() {
        Some(WatchEvent::Added(c)) => assert_eq!(c.metadata.name.as_deref(), Some("c")),
        other => panic!("expected ADDED, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletecollection_orphans_and_namespace_cascade() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let cm = Gvr::new("", "v1", "configmaps");
    for (n, l) in [("a", "x"), ("b", "x"), ("c", "y")] {
        api.create(&cm, "ns", json!({"metadata": {"name": n, "labels": {"l": l}}}))
            .unwrap();
    }
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "ns");
    cms.delete_collection(&DeleteParams::default(), &ListParams::default().labels("l=x"))
        .await
        .unwrap();
    assert_eq!(api.list(&cm, Some("ns")).len(), 1);

    // Orphan: the dependent survives its owner.
    let owner = api.create(&Gvr::vidijobs(), "ns", vidijob("o")).unwrap();
    let refs =
        json!([{"apiVersion": "vidi.dev/v1alpha1", "kind": "VidiJob", "name": "o", "uid": owner["metadata"]["uid"]}]);
    api.create(&cm, "ns", json!({"metadata": {"name": "dep", "ownerReferences": refs}}))
        .unwrap();
    vidijobs(&api).delete("o", &DeleteParams::orphan()).await.unwrap();
    assert!(api.get(&cm, "ns", "dep").is_some());

    // Deleting a namespace deletes what is in it.
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(api.client());
    nss.delete("ns", &DeleteParams::default()).await.unwrap();
    assert!(api.list(&cm, Some("ns")).is_empty());
    assert!(api.get(&Gvr::namespaces(), "", "ns").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_carry_commit_times_in_order() {
    let api = standin().await;
    api.kubelet().set_enabled(false);
    let start = api.resource_version();
    let before = std::time::Instant::now();
    let cm = |name: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
    api.create(&Gvr::new("", "v1", "configmaps"), "ns", cm("a")).unwrap();
    api.patch_json(
        &Gvr::new("", "v1", "configmaps"),
        "ns",
        "a",
        json!({"data": {"k": "v"}}),
    )
    .unwrap();
    api.delete(&Gvr::new("", "v1", "configmaps"), "ns", "a").unwrap();
    let after = std::time::Instant::now();

    let changes = api.changes_since(start);
    let seen: Vec<_> = changes
        .iter()
        .map(|c| (c.event, c.resource.as_str(), c.name()))
        .collect();
    assert_eq!(
        seen,
        [
            ("ADDED", "configmaps", "a"),
            ("MODIFIED", "configmaps", "a"),
            ("DELETED", "configmaps", "a")
        ]
    );
    assert!(changes.iter().all(|c| c.namespace == "ns" && c.group.is_empty()));
    assert_eq!(changes[1].object["data"]["k"], "v");
    assert!(
        changes
            .windows(2)
            .all(|w| w[0].at <= w[1].at && w[0].resource_version < w[1].resource_version)
    );
    assert!(changes[0].at >= before && changes[2].at <= after);
    // From a later resourceVersion only the later writes.
    assert_eq!(api.changes_since(changes[1].resource_version).len(), 1);
    assert!(api.changes_since(api.resource_version()).is_empty());
}
